//! A wasi:sockets server (preview 2): listens on `LISTEN` (default `<POD_IP>:7000`) and
//! answers each line with `<pod>: <LINE IN UPPER CASE>`; with `CONNECT` set it instead
//! connects there, sends one line and prints the answer. Exits 2 when the runtime
//! refuses the socket (a pod that did not ask for wasi:sockets).
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};

fn main() {
    let pod = std::env::var("POD_NAME").unwrap_or_else(|_| "pod".into());
    if let Ok(target) = std::env::var("CONNECT") {
        let mut stream = TcpStream::connect(&target).unwrap_or_else(|e| fail(&format!("connect {target}: {e}")));
        let _ = writeln!(stream, "hello from {pod}");
        let mut answer = String::new();
        let _ = BufReader::new(stream).read_line(&mut answer);
        println!("answer: {}", answer.trim_end());
        return;
    }
    let address = std::env::var("LISTEN")
        .or_else(|_| std::env::var("POD_IP").map(|ip| format!("{ip}:7000")))
        .unwrap_or_else(|_| "0.0.0.0:7000".into());
    let listener = TcpListener::bind(&address).unwrap_or_else(|e| fail(&format!("bind {address}: {e}")));
    println!("listening on {address}");
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        // Read and write through shared references: WASI sockets cannot be cloned.
        for line in BufReader::new(&stream).lines() {
            let Ok(line) = line else { break };
            if writeln!(&stream, "{pod}: {}", line.to_uppercase()).is_err() {
                break;
            }
        }
    }
}

fn fail(message: &str) -> ! {
    eprintln!("tcp-echo: {message}");
    std::process::exit(2);
}
