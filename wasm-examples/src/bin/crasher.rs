//! Prints a line and exits with `EXIT_CODE` (default 3): a container that fails.
fn main() {
    let code = std::env::var("EXIT_CODE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    println!("crasher: exiting with {code}");
    eprintln!("crasher: something went wrong");
    std::process::exit(code);
}
