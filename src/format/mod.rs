//! Byte layouts of everything envfs writes to the backing store, and the size arithmetic
//! that ties plaintext and backing offsets together. Pure: no I/O, no cryptography.
//! docs/FORMAT.md describes the same bytes for humans.

pub mod bytes;
pub mod config;
pub mod geometry;
pub mod header;
pub mod intermediate;
pub mod names;
pub mod slot;
pub mod sync_names;

pub use config::{NameEncoding, VaultConfig};
pub use geometry::Geometry;
pub use header::FileHeader;
pub use slot::{KeySlot, ProviderKind};
