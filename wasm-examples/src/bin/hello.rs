//! Prints a greeting, its arguments and one environment variable, then exits 0.
fn main() {
    let greeting = std::env::var("GREETING").unwrap_or_else(|_| "hello".to_string());
    let args: Vec<String> = std::env::args().skip(1).collect();
    println!("{greeting} from skiff");
    if !args.is_empty() {
        println!("args: {}", args.join(" "));
    }
    eprintln!("hello: done");
}
