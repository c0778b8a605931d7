//! The plaintext of the golden vaults (`tests/golden/v1/`, `tests/golden/v2/`): which files,
//! directory and symlink `examples/make_golden.rs` wrote, and the bytes of each file. The
//! example includes this file by path (`#[path]`), the tests through `support`, so the
//! generator and the checks cannot drift apart.
//!
//! Frozen: the vaults were generated from exactly this table and content function. Changing
//! a byte here breaks the golden tests; a new golden vault needs a new table next to this one.

/// One regular file of the golden vault.
pub struct GoldenPlain {
    /// Plaintext path, relative to the vault root.
    pub path: String,
    /// Selects the content stream (see [`content`]).
    pub seed: u64,
    pub len: usize,
}

/// The directory of the golden vault; `docs/nested.txt` is in it.
pub const DIR: &str = "docs";
/// The golden vault's one symlink and its target.
pub const LINK: &str = "link";
pub const LINK_TARGET: &str = "docs/nested.txt";

/// Byte `i` of the golden file with seed `seed`. Not `support::pattern`: these bytes are
/// frozen in the golden vaults and must never change.
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((i * 31 + 7 + seed * 13) % 251) as u8)
        .collect()
}

/// A 200-byte name: over the long-name limit, so it is stored under a hash with a sidecar.
pub fn long_name() -> String {
    format!("long-name-{}.txt", "x".repeat(186))
}

/// Every regular file of the golden vault, in the order the example writes them (files in
/// `DIR` after `DIR` exists).
pub fn golden_plain_files() -> Vec<GoldenPlain> {
    let f = |path: &str, seed, len| GoldenPlain {
        path: path.to_string(),
        seed,
        len,
    };
    vec![
        f("empty.txt", 0, 0),
        f("one-byte.bin", 1, 1),
        f("one-chunk.bin", 2, 4096),
        f("several-chunks.bin", 3, 3 * 4096 + 100),
        f(&long_name(), 4, 300),
        f("docs/nested.txt", 5, 5000),
    ]
}
