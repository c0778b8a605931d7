//! Randomness from the operating system. A failure of the kernel's CSPRNG is not something
//! to recover from: writing with a predictable nonce would be worse than stopping.

pub fn fill(buf: &mut [u8]) {
    getrandom::fill(buf).expect("the operating system's random number generator failed");
}

pub fn array<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    fill(&mut out);
    out
}
