//! Spins forever without yielding or printing: a runaway loop.
fn main() {
    println!("spinner: starting");
    let mut x: u64 = 0;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}
