//! envfs: a FUSE filesystem that keeps a backing directory encrypted with per-file data keys
//! wrapped by a key service (envelope encryption).
//!
//! Layers, each usable without the ones above it (see docs/ and design.md §3):
//! `format` (bytes and size arithmetic) → `crypto` → `keys` (key providers) → `vault`
//! (open/init, pinning) → `fs` (filesystem core over the backing directory) → `fuse` (thin
//! fuser adapter) → `cli`.

pub mod backing;
pub mod cli;
pub mod crypto;
pub mod error;
pub mod format;
pub mod fs;
pub mod fsck;
pub mod fuse;
#[doc(hidden)]
pub mod fuzzing;
pub mod keys;
pub mod text;
pub mod vault;

pub use error::{Error, Result};
