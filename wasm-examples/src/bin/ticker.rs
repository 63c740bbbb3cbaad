//! Runs until stopped, printing a numbered tick every `TICK_MS` milliseconds (default 1000).
use std::time::Duration;

fn main() {
    let period = std::env::var("TICK_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000u64);
    for n in 0u64.. {
        println!("tick {n}");
        std::thread::sleep(Duration::from_millis(period));
    }
}
