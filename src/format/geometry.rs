//! Chunk geometry: where each plaintext byte lives in the backing file, and the size of a
//! file in both worlds.
//!
//! `stat`, `ls -l` and `readdir` must never read a header or call a key service, so the
//! plaintext size has to be pure arithmetic on the backing size. That only works because the
//! header has a fixed size per vault and every chunk carries the same overhead. Everything
//! here is integer math with no I/O, so it is tested exhaustively for small sizes.
//!
//! Naming: `plain_*` values are offsets/lengths in the decrypted file the user sees,
//! `backing_*` values are offsets/lengths in the ciphertext file on the backing store.

/// Bytes of nonce stored in front of every chunk.
pub const NONCE_LEN: u64 = 12;
/// Bytes of GCM tag stored after every chunk.
pub const TAG_LEN: u64 = 16;
/// Per-chunk overhead on the backing store.
pub const CHUNK_OVERHEAD: u64 = NONCE_LEN + TAG_LEN;

/// Why a backing size cannot belong to a file envfs wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadLength {
    /// Non-empty but shorter than the fixed header.
    ShortHeader,
    /// The last chunk is too short to hold even a nonce, a tag and one byte.
    ShortChunk,
}

/// The fixed layout parameters of one vault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Plaintext bytes per chunk (every chunk but the last is full).
    pub chunk_size: u64,
    /// Fixed size of every file header in this vault.
    pub header_size: u64,
}

impl Geometry {
    pub fn new(chunk_size: u32, header_size: u32) -> Geometry {
        Geometry {
            chunk_size: chunk_size as u64,
            header_size: header_size as u64,
        }
    }

    /// Bytes one full chunk occupies on the backing store.
    pub fn backing_chunk_size(&self) -> u64 {
        self.chunk_size + CHUNK_OVERHEAD
    }

    /// The largest plaintext size whose backing size still fits in an `i64` `off_t`.
    pub fn max_plain_size(&self) -> u64 {
        let max_backing = i64::MAX as u64 - self.header_size;
        let full = max_backing / self.backing_chunk_size();
        full * self.chunk_size
    }

    /// Number of chunks a file of `plain_size` bytes has.
    pub fn chunk_count(&self, plain_size: u64) -> u64 {
        plain_size.div_ceil(self.chunk_size)
    }

    /// Backing size of a file of `plain_size` bytes. An empty file has no header.
    pub fn backing_size(&self, plain_size: u64) -> u64 {
        if plain_size == 0 {
            return 0;
        }
        self.header_size + plain_size + self.chunk_count(plain_size) * CHUNK_OVERHEAD
    }

    /// Plaintext size of a backing file of `backing_size` bytes, or why no writer could have
    /// produced that length. A header with no chunks is an empty file (a crash between the
    /// header and the first chunk can leave one; the header alone reveals nothing).
    pub fn plain_size(&self, backing_size: u64) -> Result<u64, BadLength> {
        if backing_size == 0 {
            return Ok(0);
        }
        if backing_size < self.header_size {
            return Err(BadLength::ShortHeader);
        }
        let body = backing_size - self.header_size;
        let full = body / self.backing_chunk_size();
        let rest = body % self.backing_chunk_size();
        match rest {
            0 => Ok(full * self.chunk_size),
            r if r <= CHUNK_OVERHEAD => Err(BadLength::ShortChunk),
            r => Ok(full * self.chunk_size + r - CHUNK_OVERHEAD),
        }
    }

    /// The size `stat` reports: exact for valid lengths, and for a damaged file the size of
    /// its whole chunks, so listing a directory never fails because one file is damaged.
    pub fn plain_size_lossy(&self, backing_size: u64) -> u64 {
        match self.plain_size(backing_size) {
            Ok(size) => size,
            Err(BadLength::ShortHeader) => 0,
            Err(BadLength::ShortChunk) => {
                let body = backing_size - self.header_size;
                (body / self.backing_chunk_size()) * self.chunk_size
            }
        }
    }

    /// Index of the chunk holding plaintext byte `plain_offset`.
    pub fn chunk_index(&self, plain_offset: u64) -> u64 {
        plain_offset / self.chunk_size
    }

    /// Plaintext offset of the first byte of chunk `index`.
    pub fn chunk_plain_offset(&self, index: u64) -> u64 {
        index * self.chunk_size
    }

    /// Backing offset of chunk `index` (its nonce).
    pub fn chunk_backing_offset(&self, index: u64) -> u64 {
        self.header_size + index * self.backing_chunk_size()
    }

    /// Plaintext length of chunk `index` in a file of `plain_size` bytes (0 past the end).
    pub fn chunk_plain_len(&self, index: u64, plain_size: u64) -> u64 {
        let start = self.chunk_plain_offset(index);
        if start >= plain_size {
            0
        } else {
            (plain_size - start).min(self.chunk_size)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometries() -> Vec<Geometry> {
        vec![
            Geometry::new(1024, 256),
            Geometry::new(4096, 1024),
            Geometry::new(65536, 512),
        ]
    }

    #[test]
    fn every_size_up_to_three_chunks_plus_one_round_trips() {
        for g in geometries() {
            for plain in 0..=(3 * g.chunk_size + 1) {
                let backing = g.backing_size(plain);
                assert_eq!(g.plain_size(backing), Ok(plain), "plain {plain} {g:?}");
                assert_eq!(g.plain_size_lossy(backing), plain);
                let chunks = g.chunk_count(plain);
                let sum: u64 = (0..chunks).map(|i| g.chunk_plain_len(i, plain)).sum();
                assert_eq!(sum, plain);
                if chunks > 0 {
                    // The last chunk ends exactly at the end of the backing file.
                    let last = chunks - 1;
                    let end = g.chunk_backing_offset(last)
                        + g.chunk_plain_len(last, plain)
                        + CHUNK_OVERHEAD;
                    assert_eq!(end, backing);
                    assert!(g.chunk_plain_len(last, plain) >= 1);
                }
            }
        }
    }

    #[test]
    fn impossible_backing_lengths_are_rejected() {
        let g = Geometry::new(4096, 1024);
        assert_eq!(g.plain_size(1), Err(BadLength::ShortHeader));
        assert_eq!(g.plain_size(1023), Err(BadLength::ShortHeader));
        assert_eq!(g.plain_size(1024), Ok(0));
        for extra in 1..=CHUNK_OVERHEAD {
            assert_eq!(g.plain_size(1024 + extra), Err(BadLength::ShortChunk));
            let after_one = 1024 + g.backing_chunk_size() + extra;
            assert_eq!(g.plain_size(after_one), Err(BadLength::ShortChunk));
            assert_eq!(g.plain_size_lossy(after_one), 4096);
        }
        // Every backing length either maps to a plaintext size that maps back to it, or
        // is rejected: no two backing lengths claim the same plaintext size.
        for backing in 0..(1024 + 3 * g.backing_chunk_size() + 2) {
            match g.plain_size(backing) {
                Ok(0) => assert!(backing == 0 || backing == 1024, "{backing}"),
                Ok(plain) => assert_eq!(g.backing_size(plain), backing),
                Err(_) => {}
            }
        }
    }

    #[test]
    fn worked_sizes_in_format_md() {
        let g = Geometry::new(4096, 1024);
        assert_eq!(g.backing_size(0), 0);
        assert_eq!(g.backing_size(1), 1024 + 1 + 28);
        assert_eq!(g.backing_size(4096), 1024 + 4096 + 28);
        assert_eq!(g.backing_size(4097), 1024 + 4096 + 28 + 1 + 28);
        assert_eq!(g.backing_size(1 << 20), 1024 + (1 << 20) + 256 * 28);
    }

    #[test]
    fn max_plain_size_fits_off_t() {
        for g in geometries() {
            let max = g.max_plain_size();
            assert!(g.backing_size(max) <= i64::MAX as u64);
            assert!(max > 1 << 60);
        }
    }
}
