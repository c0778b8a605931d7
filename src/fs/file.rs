//! Open files and the chunk engine: reading, writing and resizing one backing file.
//!
//! Every open of the same backing inode shares one `OpenFile` (see `OpenFiles`), so that one
//! lock orders all writers of a file: two writers to neighbouring bytes of one chunk would
//! otherwise both read-modify-write it and one update would be lost. Reads share the lock.
//! The file's keys are loaded from its header on first use and kept while the file is open.
//!
//! Offsets: `plain_*` are offsets in the decrypted file, `backing_*` in the backing file.
//! Nothing here trusts the backing file: sizes are re-read with fstat on every call (another
//! host may have changed the file) and every chunk is authenticated before a byte of it is
//! returned.

use crate::backing::sys::Known;
use crate::crypto::FileKeys;
use crate::error::{Error, IntegrityKind, Result};
use crate::format::Geometry;
use crate::format::geometry::{BadLength, CHUNK_OVERHEAD};
use crate::format::header::FILE_ID_OFFSET;
use crate::vault::Vault;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};

/// Plaintext bytes written per step when a file grows by zero-filling, bounding memory.
const ZERO_FILL_STEP: u64 = 1 << 20;

/// The state behind one backing inode's lock.
pub(crate) struct FileIo {
    fd: Arc<File>,
    writable: bool,
    keys: Option<Arc<FileKeys>>,
    /// The backing length and times this mount's last write through this entry left, as
    /// this host's kernel knows them (`sys::known`). While the file still shows exactly
    /// these, nobody has written it since (on this host; SEMANTICS.md §14 for others): its
    /// file id is the one the cached keys were checked against, so no read of the header
    /// before each write, which on a network store is a round trip behind every write in
    /// flight.
    left: Option<crate::backing::sys::Known>,
    /// The file's last chunk as this mount last wrote it, while the file still shows `left`:
    /// an append reseals that chunk (it loses the last flag, or grows), and with it here the
    /// chunk is not read back from the store. On a network store that read is a round trip
    /// that waits behind every write in flight, once per append.
    tail: Option<Tail>,
}

/// One chunk as written: its index, plaintext and sealed bytes.
struct Tail {
    index: u64,
    plain: zeroize::Zeroizing<Vec<u8>>,
    sealed: Vec<u8>,
}

pub struct OpenFile {
    id: (u64, u64),
    /// Backing path at open time, for log messages only (the file may be renamed since).
    backing_path: Mutex<PathBuf>,
    io: RwLock<FileIo>,
    table: Weak<Table>,
    recent: Weak<RecentWrites>,
}

/// Open files by backing (device, inode); weak, so an entry dies with its last handle.
type Table = Mutex<HashMap<(u64, u64), Weak<OpenFile>>>;

/// How many closed files' last writes `RecentWrites` remembers.
const RECENT_WRITES: usize = 4096;

/// What this mount's last write left on recently closed files (`FileIo::left`), so that
/// the backing store's report of that write, which may arrive after the close, is known
/// for this mount's own (src/fs/watch.rs) and is not mistaken for someone else's. Bounded:
/// the oldest is forgotten first, and a forgotten one costs one needless invalidation.
#[derive(Default)]
struct RecentWrites {
    /// Off until the backing store is watched: nothing else asks, so closes pay nothing.
    on: std::sync::atomic::AtomicBool,
    inner: Mutex<(LeftById, RecordOrder)>,
}

/// What was left on each backing inode, and the order they were recorded in (oldest first).
type LeftById = HashMap<(u64, u64), Known>;
type RecordOrder = VecDeque<(u64, u64)>;

impl RecentWrites {
    fn record(&self, id: (u64, u64), left: Known) {
        if !self.on.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let mut inner = self.inner.lock().unwrap();
        let (by_id, order) = &mut *inner;
        if by_id.insert(id, left).is_none() {
            order.push_back(id);
        }
        while order.len() > RECENT_WRITES {
            if let Some(old) = order.pop_front() {
                by_id.remove(&old);
            }
        }
    }

    fn get(&self, id: (u64, u64)) -> Option<Known> {
        self.inner.lock().unwrap().0.get(&id).copied()
    }
}

impl Drop for OpenFile {
    fn drop(&mut self) {
        if let (Some(recent), Some(left)) = (self.recent.upgrade(), self.io.get_mut().unwrap().left)
        {
            recent.record(self.id, left);
        }
        if let Some(table) = self.table.upgrade() {
            let mut table = table.lock().unwrap();
            if table.get(&self.id).is_some_and(|w| w.strong_count() == 0) {
                table.remove(&self.id);
            }
        }
    }
}

/// The table of open backing inodes, keyed by (device, inode).
#[derive(Default)]
pub struct OpenFiles {
    table: Arc<Table>,
    recent: Arc<RecentWrites>,
}

impl OpenFiles {
    /// The shared `OpenFile` for a freshly opened backing fd. If the inode is already open,
    /// the existing entry is returned and, when the new fd is writable and the old one is
    /// not, the entry switches to the new fd.
    pub fn get_or_insert(
        &self,
        fd: File,
        writable: bool,
        backing_path: &Path,
    ) -> Result<Arc<OpenFile>> {
        use std::os::unix::fs::MetadataExt;
        let meta = fd.metadata()?;
        let id = (meta.dev(), meta.ino());
        let mut table = self.table.lock().unwrap();
        if let Some(existing) = table.get(&id).and_then(Weak::upgrade) {
            // Never wait for one file's lock while holding the table: a long zero-fill or
            // key-service call on that file would stall every open in the mount.
            drop(table);
            if writable {
                let mut io = existing.io.write().unwrap();
                if !io.writable {
                    io.fd = Arc::new(fd);
                    io.writable = true;
                }
            }
            *existing.backing_path.lock().unwrap() = backing_path.to_path_buf();
            return Ok(existing);
        }
        let file = Arc::new(OpenFile {
            id,
            backing_path: Mutex::new(backing_path.to_path_buf()),
            io: RwLock::new(FileIo {
                fd: Arc::new(fd),
                writable,
                keys: None,
                left: None,
                tail: None,
            }),
            table: Arc::downgrade(&self.table),
            recent: Arc::downgrade(&self.recent),
        });
        table.insert(id, Arc::downgrade(&file));
        Ok(file)
    }

    /// The open entry for a backing inode, if any (used to apply a path truncate to it).
    pub fn get(&self, id: (u64, u64)) -> Option<Arc<OpenFile>> {
        self.table.lock().unwrap().get(&id).and_then(Weak::upgrade)
    }

    pub fn len(&self) -> usize {
        self.table
            .lock()
            .unwrap()
            .values()
            .filter(|w| w.strong_count() > 0)
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keep what closed files' last writes left, for `left_by_us` (once the backing store
    /// is watched).
    pub fn remember_recent_writes(&self) {
        self.recent
            .on
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// This mount has just changed the backing inode `st` describes (a setattr, a new
    /// entry's owner and mode): like what a write leaves, what it shows now is the mount's
    /// own doing, and the kernel has it from the reply (`left_by_us`).
    pub fn note_ours(&self, st: &crate::backing::Stat) {
        let id = (st.st_dev, st.st_ino);
        let known = Known::of_stat(st);
        if let Some(file) = self.get(id) {
            file.io.write().unwrap().left = Some(known);
        }
        self.recent.record(id, known);
    }

    /// Whether backing inode `id` showing `now` is exactly what this mount's last write
    /// through it left (open or recently closed): nobody else has written it since.
    pub fn left_by_us(&self, id: (u64, u64), now: Known) -> bool {
        if let Some(file) = self.get(id)
            && file.io.read().unwrap().left == Some(now)
        {
            return true;
        }
        self.recent.get(id) == Some(now)
    }
}

/// Remembers which failures were already logged, so a damaged chunk (or a key service
/// refusing one file) read again and again by the page cache logs one line, not thousands.
/// Integrity failures are keyed by what failed (a backing inode, or the backing path of a
/// name), the chunk and the kind; key failures by file and message, so a different failure
/// of the same file is logged again. Bounded.
/// What one logged integrity failure is about: (device, inode) or a path hash, the chunk,
/// and the kind of failure.
type FailureKey = (u64, u64, Option<u64>, IntegrityKind);

#[derive(Default)]
pub struct IntegrityLog {
    seen: Mutex<HashSet<FailureKey>>,
    key_errors: Mutex<HashSet<(u64, u64, String)>>,
}

impl IntegrityLog {
    const MAX: usize = 100_000;

    /// Log an integrity failure of a backing inode (device, inode) once; other errors are
    /// not integrity failures and are ignored here.
    pub(crate) fn report(&self, file: (u64, u64), err: &Error) {
        if let Error::Integrity { path, chunk, kind } = err {
            let mut seen = self.seen.lock().unwrap();
            if seen.len() >= Self::MAX {
                seen.clear();
            }
            if seen.insert((file.0, file.1, *chunk, *kind)) {
                match chunk {
                    Some(c) => {
                        tracing::error!(backing_path = %path.display(), chunk = c, "integrity failure: {kind}")
                    }
                    None => {
                        tracing::error!(backing_path = %path.display(), "integrity failure: {kind}")
                    }
                }
            }
        }
    }

    /// Log an integrity failure keyed by its backing path (a name, whose entry may have no
    /// inode to speak of: a missing sidecar, say).
    pub(crate) fn report_at_path(&self, err: &Error) {
        if let Error::Integrity { path, .. } = err {
            use std::hash::{BuildHasher, BuildHasherDefault};
            let hash = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
                .hash_one(path);
            self.report((u64::MAX, hash), err);
        }
    }

    /// A file's keys could not be unwrapped (key service down or refusing, no key held).
    fn report_key_error(&self, file: (u64, u64), backing_path: &Path, err: &Error) {
        let message = err.to_string();
        let mut seen = self.key_errors.lock().unwrap();
        if seen.len() >= Self::MAX {
            seen.clear();
        }
        if seen.insert((file.0, file.1, message.clone())) {
            tracing::error!(backing_path = %backing_path.display(), "cannot open file keys: {message}");
        }
    }
}

/// What the chunk engine needs from the filesystem.
pub struct Engine<'a> {
    pub vault: &'a Vault,
    pub log: &'a IntegrityLog,
}

impl<'a> Engine<'a> {
    fn geometry(&self) -> Geometry {
        self.vault.geometry
    }

    fn integrity(&self, file: &OpenFile, chunk: Option<u64>, kind: IntegrityKind) -> Error {
        let err = Error::Integrity {
            path: file.backing_path.lock().unwrap().clone(),
            chunk,
            kind,
        };
        self.log.report(file.id, &err);
        err
    }

    /// Plaintext size of a valid backing length; an integrity error otherwise.
    fn strict_plain_size(&self, file: &OpenFile, backing_size: u64) -> Result<u64> {
        self.geometry()
            .plain_size(backing_size)
            .map_err(|bad| match bad {
                BadLength::ShortHeader => self.integrity(file, None, IntegrityKind::Header),
                BadLength::ShortChunk => {
                    let last =
                        self.geometry().plain_size_lossy(backing_size) / self.geometry().chunk_size;
                    self.integrity(file, Some(last), IntegrityKind::Length)
                }
            })
    }

    /// Refuse a file whose backing length cannot hold a header (cut into the header):
    /// `stat` shows it as empty, so without this check the kernel would never ask for its
    /// bytes and a damaged file would read as an empty one.
    /// `backing_size` is the length the opener just saw (no second fstat on the open path).
    pub fn check_openable(&self, file: &OpenFile, backing_size: u64) -> Result<()> {
        match self.geometry().plain_size(backing_size) {
            Err(BadLength::ShortHeader) => Err(self.integrity(file, None, IntegrityKind::Header)),
            // A header and less than one chunk's overhead: `stat` shows it as empty too, so
            // the same holds (fsck calls it invalid-length at chunk 0).
            Err(BadLength::ShortChunk) if self.geometry().plain_size_lossy(backing_size) == 0 => {
                Err(self.integrity(file, Some(0), IntegrityKind::Length))
            }
            // A damaged tail after whole chunks still leaves the chunks before it readable,
            // and a read reaching the tail fails.
            _ => Ok(()),
        }
    }

    /// Read, unwrap and authenticate the header.
    fn load_keys(&self, file: &OpenFile, fd: &File) -> Result<Arc<FileKeys>> {
        let mut header = vec![0u8; self.geometry().header_size as usize];
        fd.read_exact_at(&mut header, 0)
            .map_err(|_| self.integrity(file, None, IntegrityKind::Header))?;
        let path = file.backing_path.lock().unwrap().clone();
        match self.vault.open_file(&header, &path) {
            Ok(keys) => Ok(Arc::new(keys)),
            Err(e @ Error::Integrity { .. }) => {
                self.log.report(file.id, &e);
                Err(e)
            }
            Err(e) => {
                self.log.report_key_error(file.id, &path, &e);
                Err(e)
            }
        }
    }

    /// The header's file id as it is on disk now.
    fn file_id_on_disk(fd: &File) -> Option<[u8; 16]> {
        let mut id = [0u8; 16];
        fd.read_exact_at(&mut id, FILE_ID_OFFSET as u64).ok()?;
        Some(id)
    }

    /// Read `size` plaintext bytes at `plain_offset` (fewer at end of file).
    ///
    /// The lock is held for the whole read: a writer running between our fstat and pread
    /// would otherwise hand us chunks resealed or cut for a size we never saw (a false EIO).
    pub fn read(&self, file: &OpenFile, plain_offset: u64, size: usize) -> Result<Vec<u8>> {
        {
            let io = file.io.read().unwrap();
            if let Some(cached) = io.keys.clone() {
                let mut keys = Some(cached.clone());
                match self.read_with(file, &io.fd, &mut keys, plain_offset, size) {
                    // A chunk that fails under cached keys may belong to a header rewritten
                    // by another mount since we loaded it (the file was emptied and
                    // rewritten). Reload once, below; a real corruption fails again.
                    Err(Error::Integrity {
                        kind: IntegrityKind::Chunk,
                        ..
                    }) if Self::file_id_on_disk(&io.fd).as_ref() != Some(cached.file_id()) => {}
                    other => return other,
                }
            }
        }
        // No keys yet, or stale ones: (re)load them under the write lock and keep them.
        let mut io = file.io.write().unwrap();
        let on_disk = Self::file_id_on_disk(&io.fd);
        let mut keys = io
            .keys
            .clone()
            .filter(|k| on_disk.as_ref() == Some(k.file_id()));
        let result = self.read_with(file, &io.fd, &mut keys, plain_offset, size);
        if keys.is_some() {
            io.keys = keys;
        }
        result
    }

    fn read_with(
        &self,
        file: &OpenFile,
        fd: &File,
        keys: &mut Option<Arc<FileKeys>>,
        plain_offset: u64,
        size: usize,
    ) -> Result<Vec<u8>> {
        let g = self.geometry();
        let backing_size = fd.metadata()?.len();
        // `readable_end`: a file whose tail is damaged (a length no writer produces) still
        // serves every whole chunk before its last one; only reads reaching the tail fail.
        let (plain_size, readable_end) = match g.plain_size(backing_size) {
            Ok(size) => (size, size),
            Err(BadLength::ShortChunk) => {
                let whole = g.plain_size_lossy(backing_size);
                (whole, whole.saturating_sub(g.chunk_size))
            }
            Err(BadLength::ShortHeader) => {
                return Err(self.integrity(file, None, IntegrityKind::Header));
            }
        };
        if plain_offset >= plain_size || size == 0 {
            return Ok(Vec::new());
        }
        let plain_end = plain_offset.saturating_add(size as u64).min(plain_size);
        if plain_end > readable_end {
            return Err(self.integrity(
                file,
                Some(g.chunk_index(readable_end)),
                IntegrityKind::Length,
            ));
        }
        if keys.is_none() {
            *keys = Some(self.load_keys(file, fd)?);
        }
        let keys = keys.clone().expect("loaded above");
        let chunk_count = g.chunk_count(plain_size);
        let first = g.chunk_index(plain_offset);
        let last = g.chunk_index(plain_end - 1);
        let backing_start = g.chunk_backing_offset(first);
        let backing_end = g.chunk_backing_offset(last + 1).min(backing_size);
        let mut sealed = vec![0u8; (backing_end - backing_start) as usize];
        fd.read_exact_at(&mut sealed, backing_start)
            .map_err(|_| self.integrity(file, Some(last), IntegrityKind::Length))?;
        let mut out = Vec::with_capacity((plain_end - plain_offset) as usize);
        let stride = g.backing_chunk_size() as usize;
        for (n, chunk) in sealed.chunks_mut(stride).enumerate() {
            let index = first + n as u64;
            let is_last = index + 1 == chunk_count;
            let bad_chunk = |_| self.integrity(file, Some(index), IntegrityKind::Chunk);
            let chunk_start = g.chunk_plain_offset(index);
            let from = plain_offset.saturating_sub(chunk_start) as usize;
            let to = (plain_end - chunk_start) as usize;
            let chunk_plain_len = chunk.len().saturating_sub(CHUNK_OVERHEAD as usize);
            if from == 0 && to >= chunk_plain_len {
                // The whole chunk is wanted: decrypt straight into the reply.
                keys.chunks
                    .open_into(index, is_last, chunk, &mut out)
                    .map_err(bad_chunk)?;
            } else {
                let plain = keys
                    .chunks
                    .open_in_place(index, is_last, chunk)
                    .map_err(bad_chunk)?;
                out.extend_from_slice(&plain[from..to.min(plain.len())]);
            }
        }
        Ok(out)
    }

    /// The backing size, and — when the file is empty, so that this write will create its
    /// header — the header lock, with the size read again under it: another mount (or
    /// `envfs rewrap`) on the same backing store may have created the header meanwhile,
    /// and two headers for one file would make one writer's chunks unreadable.
    ///
    /// The size is the one this host's kernel knows (`sys::known`): a file another
    /// host writes while this one does is outside what SEMANTICS.md §14 supports, and
    /// asking the server after every write would cost a round trip each on a network store.
    /// The empty case, where two hosts creating one file must not both write a header, asks
    /// the store itself, under the lock.
    fn size_for_header_creation(
        fd: &File,
    ) -> Result<(Known, Option<crate::backing::sys::HeaderLock<'_>>)> {
        let known = crate::backing::sys::known(fd)?;
        if known.size != 0 {
            return Ok((known, None));
        }
        let lock = crate::backing::sys::HeaderLock::acquire(fd)?;
        Ok((crate::backing::sys::known_fresh(fd)?, Some(lock)))
    }

    /// Keys for writing to a file whose backing size is `backing_size`, under the write lock.
    /// An empty file gets a new header (returned, to be written together with the first
    /// chunk); otherwise the cached keys are checked against the file id on disk, so that we
    /// never write chunks under a DEK that another mount has replaced. `unchanged`: the file
    /// still shows what this mount's last write left (`FileIo::left`), so the check is moot.
    fn keys_for_write(
        &self,
        file: &OpenFile,
        io: &mut FileIo,
        backing_size: u64,
        unchanged: bool,
    ) -> Result<(Arc<FileKeys>, Option<Vec<u8>>)> {
        if backing_size == 0 {
            let (header, keys) = self.vault.new_file()?;
            let keys = Arc::new(keys);
            io.keys = Some(keys.clone());
            return Ok((keys, Some(header)));
        }
        if backing_size < self.geometry().header_size {
            return Err(self.integrity(file, None, IntegrityKind::Header));
        }
        if let Some(keys) = &io.keys
            && (unchanged || Self::file_id_on_disk(&io.fd).as_ref() == Some(keys.file_id()))
        {
            return Ok((keys.clone(), None));
        }
        let keys = self.load_keys(file, &io.fd)?;
        io.keys = Some(keys.clone());
        Ok((keys, None))
    }

    /// Write `data` at `plain_offset` (or at the end of file when `append`). Returns the
    /// plaintext offset written at.
    pub fn write(
        &self,
        file: &OpenFile,
        plain_offset: u64,
        data: &[u8],
        append: bool,
    ) -> Result<u64> {
        let mut io = file.io.write().unwrap();
        if !io.writable {
            return Err(Error::from_errno(libc::EBADF));
        }
        let fd = io.fd.clone();
        let (known, _header_lock) = Self::size_for_header_creation(&fd)?;
        let backing_size = known.size;
        // Nobody has written the file since our last write: its tail and keys are current.
        let unchanged = io.left == Some(known);
        io.left = None;
        let old_plain = if backing_size == 0 {
            0
        } else {
            self.strict_plain_size(file, backing_size)?
        };
        let offset = if append { old_plain } else { plain_offset };
        if data.is_empty() {
            return Ok(offset);
        }
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(Error::FileTooBig)?;
        if end > self.geometry().max_plain_size() {
            return Err(Error::FileTooBig);
        }
        if offset > old_plain {
            self.check_space(&io.fd, backing_size, end)?;
        }
        let (keys, mut header) = self.keys_for_write(file, &mut io, backing_size, unchanged)?;
        let mut old_plain = old_plain;
        let mut tail = io.tail.take().filter(|_| unchanged);
        if offset > old_plain {
            self.zero_fill(file, &fd, &keys, &mut header, &mut tail, old_plain, offset)?;
            old_plain = offset;
        }
        self.write_chunks(file, &fd, &keys, header, &mut tail, old_plain, offset, data)?;
        io.tail = tail;
        io.left = crate::backing::sys::known(&*fd).ok();
        Ok(offset)
    }

    /// Fail with ENOSPC unless the backing store can hold the file grown to `new_plain`.
    /// Checked before growing so that `truncate -s 1P` fails at once instead of filling the
    /// disk with encrypted zeros.
    fn check_space(&self, fd: &File, backing_size: u64, new_plain: u64) -> Result<()> {
        let needed = self
            .geometry()
            .backing_size(new_plain)
            .saturating_sub(backing_size);
        let st = crate::backing::sys::fstatvfs(fd)?;
        let frsize = st.f_frsize as u64;
        // Larger than the whole backing filesystem: no file there can ever be this long
        // (EFBIG, as POSIX has it for a length over the maximum file size), not merely a
        // full disk.
        if self.geometry().backing_size(new_plain) > (st.f_blocks as u64).saturating_mul(frsize) {
            return Err(Error::FileTooBig);
        }
        let available = (st.f_bavail as u64).saturating_mul(frsize);
        if needed > available {
            return Err(Error::NoSpace);
        }
        Ok(())
    }

    /// Grow the file from `from` to `to` with authenticated zero chunks (there are no holes:
    /// an all-zero chunk on disk is corruption), in bounded steps.
    #[allow(clippy::too_many_arguments)]
    fn zero_fill(
        &self,
        file: &OpenFile,
        fd: &File,
        keys: &FileKeys,
        header: &mut Option<Vec<u8>>,
        tail: &mut Option<Tail>,
        from: u64,
        to: u64,
    ) -> Result<()> {
        let zeros = vec![0u8; ZERO_FILL_STEP as usize];
        let mut pos = from;
        while pos < to {
            // Steps end on chunk boundaries so each step rewrites at most one old chunk.
            let step_end = ((pos / ZERO_FILL_STEP + 1) * ZERO_FILL_STEP).min(to);
            let len = (step_end - pos) as usize;
            self.write_chunks(file, fd, keys, header.take(), tail, pos, pos, &zeros[..len])?;
            pos = step_end;
        }
        Ok(())
    }

    /// Decrypt chunk `index` of a file of `plain_size` bytes.
    fn read_chunk(
        &self,
        file: &OpenFile,
        fd: &File,
        keys: &FileKeys,
        index: u64,
        plain_size: u64,
    ) -> Result<Vec<u8>> {
        let g = self.geometry();
        let len = g.chunk_plain_len(index, plain_size);
        let mut sealed = vec![0u8; (len + CHUNK_OVERHEAD) as usize];
        fd.read_exact_at(&mut sealed, g.chunk_backing_offset(index))
            .map_err(|_| self.integrity(file, Some(index), IntegrityKind::Length))?;
        let last = index + 1 == g.chunk_count(plain_size);
        let plain = keys
            .chunks
            .open_in_place(index, last, &mut sealed)
            .map_err(|_| self.integrity(file, Some(index), IntegrityKind::Chunk))?;
        Ok(plain.to_vec())
    }

    /// Write `data` at `offset` into a file of `old_plain` bytes, where `offset <= old_plain`
    /// (gaps are zero-filled by the caller). Chunks only partly covered are read, merged and
    /// resealed; the old last chunk is resealed without its last flag when the file grows
    /// past it. All sealed chunks (and a new file's header) go out in one pwrite.
    #[allow(clippy::too_many_arguments)]
    ///
    /// `tail` is the file's last chunk as this mount last wrote it (or nothing known): used
    /// instead of reading that chunk back, and on success replaced by the new last chunk
    /// when this write wrote it. On failure the caller drops it.
    fn write_chunks(
        &self,
        file: &OpenFile,
        fd: &File,
        keys: &FileKeys,
        header: Option<Vec<u8>>,
        tail: &mut Option<Tail>,
        old_plain: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        debug_assert!(offset <= old_plain && !data.is_empty());
        let g = self.geometry();
        let end = offset + data.len() as u64;
        let new_plain = old_plain.max(end);
        let old_count = g.chunk_count(old_plain);
        let new_count = g.chunk_count(new_plain);
        let first = g.chunk_index(offset);
        let last = g.chunk_index(end - 1);
        // The old last chunk carries the last flag; if the file now extends past it and the
        // write does not touch it, it must be resealed as an inner chunk.
        let start = if old_count > 0 && new_count > old_count && old_count - 1 < first {
            old_count - 1
        } else {
            first
        };
        let creating = header.is_some();
        let (mut out, backing_offset) = match header {
            Some(h) => (h, 0),
            None => (Vec::new(), g.chunk_backing_offset(start)),
        };
        out.reserve(((last - start + 1) * g.backing_chunk_size()) as usize);
        // The plaintext of the chunk this write leaves last in the file, if it writes it.
        let mut new_tail_plain: Option<zeroize::Zeroizing<Vec<u8>>> = None;
        // Fresh random nonces for every chunk of this write, drawn in one syscall.
        let mut nonces = vec![0u8; 12 * (last - start + 1) as usize];
        crate::crypto::random::fill(&mut nonces);
        let mut nonces = nonces
            .chunks_exact(12)
            .map(|n| <[u8; 12]>::try_from(n).expect("12 bytes"));
        for index in start..=last {
            let chunk_start = g.chunk_plain_offset(index);
            let old_len = g.chunk_plain_len(index, old_plain) as usize;
            let new_len = g.chunk_plain_len(index, new_plain) as usize;
            let is_last = index + 1 == new_count;
            let w_from = offset.max(chunk_start) - chunk_start;
            let w_to = end
                .min(chunk_start + g.chunk_size)
                .saturating_sub(chunk_start);
            let touched = w_from < w_to;
            let data_part = if touched {
                &data[(chunk_start + w_from - offset) as usize
                    ..(chunk_start + w_to - offset) as usize]
            } else {
                &[][..]
            };
            if touched && w_from == 0 && w_to as usize >= old_len {
                // The write replaces all this chunk's old bytes: nothing to read.
                let nonce = nonces.next().expect("one nonce per chunk");
                keys.chunks
                    .seal_with_nonce(index, is_last, data_part, nonce, &mut out);
                if is_last {
                    new_tail_plain = Some(zeroize::Zeroizing::new(data_part.to_vec()));
                }
            } else {
                let cached = tail
                    .as_ref()
                    .filter(|t| t.index == index && t.plain.len() == old_len);
                let mut plain = match cached {
                    Some(t) => zeroize::Zeroizing::new(t.plain.to_vec()),
                    None => {
                        zeroize::Zeroizing::new(self.read_chunk(file, fd, keys, index, old_plain)?)
                    }
                };
                plain.resize(new_len, 0);
                if touched {
                    plain[w_from as usize..w_to as usize].copy_from_slice(data_part);
                }
                let nonce = nonces.next().expect("one nonce per chunk");
                keys.chunks
                    .seal_with_nonce(index, is_last, &plain, nonce, &mut out);
                if is_last {
                    new_tail_plain = Some(plain);
                }
            }
        }
        let old_backing = match (creating, old_plain) {
            (true, _) => 0,
            // A header with no chunks yet.
            (false, 0) => g.header_size,
            (false, size) => g.backing_size(size),
        };
        let new_backing = backing_offset + out.len() as u64;
        if new_backing > old_backing {
            // Reserve the blocks first: on a full disk the write then fails before any byte
            // is written, instead of leaving a torn chunk at the end of the file.
            match crate::backing::sys::fallocate(
                fd,
                libc::FALLOC_FL_KEEP_SIZE,
                old_backing,
                new_backing - old_backing,
            ) {
                Ok(()) => {}
                // Filesystems without fallocate: write, and undo below if that fails.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
                    ) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return Err(Error::NoSpace),
                // A quota (EDQUOT) or any other refusal: nothing has been written yet.
                Err(e) => return Err(e.into()),
            }
        }
        // An extending write may also rewrite sealed bytes inside the old file (the old last
        // chunk, resealed): keep them, to put back if the write fails partway.
        let overwritten = if new_backing > old_backing && backing_offset < old_backing {
            let len = (old_backing - backing_offset) as usize;
            // Only the old last chunk lies there: the cached tail has its sealed bytes.
            match tail.as_ref().filter(|t| {
                g.chunk_backing_offset(t.index) == backing_offset && t.sealed.len() == len
            }) {
                Some(t) => Some(t.sealed.clone()),
                None => {
                    let mut old = vec![0u8; len];
                    fd.read_exact_at(&mut old, backing_offset)?;
                    Some(old)
                }
            }
        } else {
            None
        };
        if let Err(e) = fd.write_all_at(&out, backing_offset) {
            if new_backing > old_backing {
                // Back to the file as it was: its old length and its old sealed bytes.
                let _ = fd.set_len(old_backing);
                if let Some(old) = &overwritten {
                    let _ = fd.write_all_at(old, backing_offset);
                }
            }
            return Err(e.into());
        }
        // A write that does not reach the last chunk leaves it (and the tail) as it was.
        if let Some(plain) = new_tail_plain {
            let sealed_len = plain.len() + CHUNK_OVERHEAD as usize;
            *tail = Some(Tail {
                index: new_count - 1,
                sealed: out[out.len() - sealed_len..].to_vec(),
                plain,
            });
        }
        Ok(())
    }

    /// Set the plaintext size (truncate or grow).
    pub fn set_size(&self, file: &OpenFile, new_plain: u64) -> Result<()> {
        self.resize(file, new_plain, false)
    }

    /// Set the plaintext size; with `grow_only`, leave a file that is already at least
    /// that long alone. The size check and the resize happen under one lock, so a
    /// concurrent write that extends the file is never cut back.
    fn resize(&self, file: &OpenFile, new_plain: u64, grow_only: bool) -> Result<()> {
        let g = self.geometry();
        let mut io = file.io.write().unwrap();
        if !io.writable {
            return Err(Error::from_errno(libc::EBADF));
        }
        if new_plain > g.max_plain_size() {
            return Err(Error::FileTooBig);
        }
        io.left = None;
        io.tail = None;
        let fd = io.fd.clone();
        let (known, _header_lock) = Self::size_for_header_creation(&fd)?;
        let backing_size = known.size;
        if grow_only && new_plain <= g.plain_size_lossy(backing_size) {
            return Ok(());
        }
        if new_plain == 0 {
            // An empty file has no header; the next write starts over with a new file id
            // and DEK.
            io.fd.set_len(0)?;
            io.keys = None;
            return Ok(());
        }
        let old_plain = if backing_size == 0 {
            0
        } else {
            self.strict_plain_size(file, backing_size)?
        };
        if new_plain == old_plain {
            // Still update mtime/ctime, as ftruncate does.
            io.fd.set_len(backing_size)?;
            return Ok(());
        }
        if new_plain > old_plain {
            self.check_space(&io.fd, backing_size, new_plain)?;
        }
        let (keys, mut header) = self.keys_for_write(file, &mut io, backing_size, false)?;
        if new_plain > old_plain {
            return self.zero_fill(
                file,
                &fd,
                &keys,
                &mut header,
                &mut None,
                old_plain,
                new_plain,
            );
        }
        // Shrink: reseal the new last chunk (trimmed, with the last flag), then cut.
        let index = g.chunk_index(new_plain - 1);
        let mut plain = self.read_chunk(file, &io.fd, &keys, index, old_plain)?;
        plain.truncate(g.chunk_plain_len(index, new_plain) as usize);
        let mut sealed = Vec::with_capacity(plain.len() + CHUNK_OVERHEAD as usize);
        keys.chunks.seal_into(index, true, &plain, &mut sealed);
        io.fd.write_all_at(&sealed, g.chunk_backing_offset(index))?;
        io.fd.set_len(g.backing_size(new_plain))?;
        Ok(())
    }

    /// Plaintext size of the open file now.
    pub fn size(&self, file: &OpenFile) -> Result<u64> {
        let io = file.io.read().unwrap();
        Ok(self.geometry().plain_size_lossy(io.fd.metadata()?.len()))
    }

    pub fn fsync(&self, file: &OpenFile, datasync: bool) -> Result<()> {
        let fd = file.io.read().unwrap().fd.clone();
        if datasync {
            fd.sync_data()?
        } else {
            fd.sync_all()?
        }
        Ok(())
    }

    /// What a close of the backing file would report: `close` of a duplicate descriptor,
    /// which makes the backing filesystem flush this file (sshfs and NFS report a write
    /// the server refused there, after having acknowledged it).
    pub fn flush(&self, file: &OpenFile) -> Result<()> {
        let fd = file.io.read().unwrap().fd.clone();
        Ok(crate::backing::sys::close_dup(&*fd)?)
    }

    /// Reserve backing space for plaintext range `[offset, offset+len)` without changing
    /// the size (FALLOC_FL_KEEP_SIZE), or grow the file to cover it (mode 0).
    pub fn allocate(&self, file: &OpenFile, offset: u64, len: u64, keep_size: bool) -> Result<()> {
        let end = offset.checked_add(len).ok_or(Error::FileTooBig)?;
        if end > self.geometry().max_plain_size() {
            return Err(Error::FileTooBig);
        }
        if keep_size {
            let io = file.io.read().unwrap();
            let g = self.geometry();
            let backing_end = g.backing_size(end);
            return Ok(crate::backing::sys::fallocate(
                &io.fd,
                libc::FALLOC_FL_KEEP_SIZE,
                0,
                backing_end,
            )?);
        }
        self.resize(file, end, true)
    }
}

impl OpenFile {
    pub fn backing_id(&self) -> (u64, u64) {
        self.id
    }
}

impl OpenFile {
    /// The backing path this file was last opened under (for messages).
    pub fn backing_path(&self) -> PathBuf {
        self.backing_path.lock().unwrap().clone()
    }

    /// The backing file descriptor (for fd-based attribute changes).
    pub fn fd(&self) -> Arc<File> {
        self.io.read().unwrap().fd.clone()
    }

    pub fn metadata(&self) -> std::io::Result<crate::backing::Stat> {
        crate::backing::sys::fstat(&*self.io.read().unwrap().fd)
    }
}
