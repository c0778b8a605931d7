//! Cryptographic primitives, with no I/O: chunk sealing, deterministic name encryption, key
//! derivation, and secrets that wipe themselves.

pub mod chunk;
pub mod file_keys;
pub mod fingerprint;
pub mod kdf;
pub mod random;
pub mod secret;
pub mod siv;

pub use chunk::ChunkCipher;
pub use file_keys::FileKeys;
pub use fingerprint::Fingerprint;
pub use secret::Secret32;
pub use siv::SivCipher;
