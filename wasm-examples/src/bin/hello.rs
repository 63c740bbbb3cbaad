//! Prints a greeting, its arguments and one environment variable, then exits 0.
//! With `WRITE_TO=<path>` it also writes the greeting to that file; with
//! `READ_FROM=<path>` it waits (up to 10 s) for that file and prints what it holds —
//! two containers of one pod sharing a volume.
use std::time::Duration;

fn main() {
    let greeting = std::env::var("GREETING").unwrap_or_else(|_| "hello".to_string());
    let args: Vec<String> = std::env::args().skip(1).collect();
    println!("{greeting} from skiff");
    if !args.is_empty() {
        println!("args: {}", args.join(" "));
    }
    if let Ok(path) = std::env::var("WRITE_TO") {
        if let Err(e) = std::fs::write(&path, format!("{greeting} via {path}\n")) {
            eprintln!("hello: cannot write {path}: {e}");
            std::process::exit(2);
        }
    }
    if let Ok(path) = std::env::var("READ_FROM") {
        let mut waited = 0;
        loop {
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    print!("read: {text}");
                    break;
                }
                Err(_) if waited < 100 => {
                    std::thread::sleep(Duration::from_millis(100));
                    waited += 1;
                }
                Err(e) => {
                    eprintln!("hello: cannot read {path}: {e}");
                    std::process::exit(2);
                }
            }
        }
    }
    eprintln!("hello: done");
}
