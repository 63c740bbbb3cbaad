//! Allocates and touches memory 1 MiB at a time without bound, reporting as it goes.
fn main() {
    let mut held: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; 1 << 20];
        // Touch every page so the memory is really used.
        for i in (0..chunk.len()).step_by(4096) {
            chunk[i] = 1;
        }
        held.push(chunk);
        if held.len() % 8 == 0 {
            println!("memhog: holding {} MiB", held.len());
        }
    }
}
