//! Unwrap ahead: when a program opens the files of a directory one after another (`grep -r`,
//! a backup, `cp -r` out of the mount) and their DEKs sit behind a key service, start the
//! unwrap calls for the files it will open next, concurrently, instead of one round trip
//! after another as each open finds the DEK cache empty (after a remount, say).
//!
//! Like the kernel's readahead it follows what the reader does rather than guessing from a
//! listing: each open of an existing file in a directory after the first lets the window of
//! files unwrapped ahead, in the directory's own order from the file just opened, grow by
//! one, up to the mount's `unwrap_ahead` (its worker count). So a file opened alone costs
//! one call as before, and the calls made ahead never outnumber the other opens in that
//! directory: a program reading every file makes exactly one call per file, only earlier;
//! one that stops early has paid at most one extra call per file it opened after the
//! first, and never more than `unwrap_ahead` extra per directory. A job is dropped, uncalled, when its DEK is cached by then (the file was
//! opened first), when it has waited `STALE`, or when the directory's window was replaced;
//! an open that finds its DEK being unwrapped ahead waits for that call rather than making
//! a second (keys::cache::DekCache::claim).
//!
//! The directory is listed by a worker, never by the open that starts its window (on a NAS
//! a listing is a round trip): opens that come before the listing is in are remembered and
//! replayed on it.
//!
//! A directory whose files need no key-service call (headers wrapped by a local key, or by
//! an intermediate key of the key hierarchy, which the mount holds) gains nothing, and each
//! job would cost a header read: once the files found needing no call outnumber those that
//! needed one, the window queues no more, so such a directory costs a few header reads,
//! not one per file opened.

use crate::backing::Dir;
use crate::vault::{Ahead, Vault};
use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A job that has waited this long is dropped: the reader has moved on.
const STALE: Duration = Duration::from_secs(10);

/// Directories whose reading is followed at once; the least recently opened is forgotten.
const MAX_DIRS: usize = 64;

/// The directory's entries as listed after the first open, and how far ahead of the reader
/// the jobs reach.
struct Window {
    dir: Arc<Dir>,
    /// `false` until a worker has listed the directory; opens meanwhile wait in `early`.
    listed: bool,
    early: Vec<OsString>,
    names: Vec<OsString>,
    /// Where each name is in `names`.
    index: HashMap<OsString, usize>,
    /// What has happened to each name.
    state: Vec<Seen>,
    /// Files of this directory opened so far (each once): the most that may be queued
    /// ahead of the reader at a time.
    opened: usize,
    /// Files queued and not opened yet.
    ahead: usize,
    /// Jobs whose file needed a key-service call (made ahead, or by an open first) and
    /// jobs whose file needed none.
    needed_call: usize,
    needed_none: usize,
    generation: u64,
    used_at: Instant,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Seen {
    Untouched,
    Queued,
    Opened,
}

struct Job {
    dir: Arc<Dir>,
    /// The file whose DEK to unwrap; `None`: list the directory for its window.
    name: Option<OsString>,
    /// The directory window it belongs to, and its generation then.
    rel: PathBuf,
    generation: u64,
    queued_at: Instant,
}

/// What unwrap-ahead did, for `envfs status`.
#[derive(Debug, Default, Clone, Copy)]
pub struct AheadReport {
    pub workers: usize,
    /// Files queued to be unwrapped ahead.
    pub queued: u64,
    /// Key-service calls made ahead of an open.
    pub unwrapped: u64,
    /// Jobs dropped without a call (cached by then, stale, window replaced, not a file).
    pub skipped: u64,
    /// Calls that failed (the open then makes its own and reports).
    pub failed: u64,
}

struct Shared {
    vault: Arc<Vault>,
    header_size: usize,
    workers: usize,
    windows: Mutex<HashMap<PathBuf, Window>>,
    queue: Mutex<VecDeque<Job>>,
    wake: Condvar,
    stop: AtomicBool,
    generations: AtomicU64,
    queued: AtomicU64,
    unwrapped: AtomicU64,
    skipped: AtomicU64,
    failed: AtomicU64,
}

pub struct UnwrapAhead {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl UnwrapAhead {
    /// `workers` concurrent unwrap calls at most, and as many files ahead per directory.
    pub fn start(vault: Arc<Vault>, workers: usize) -> UnwrapAhead {
        let header_size = vault.config.header_size as usize;
        let shared = Arc::new(Shared {
            vault,
            header_size,
            workers,
            windows: Mutex::new(HashMap::new()),
            queue: Mutex::new(VecDeque::new()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            generations: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            unwrapped: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        });
        let threads = (0..workers)
            .filter_map(|i| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("envfs-ahead-{i}"))
                    .spawn(move || shared.work())
                    .ok()
            })
            .collect();
        UnwrapAhead { shared, threads }
    }

    /// An existing file `name` of backing directory `dir` was opened: move its directory's
    /// window on.
    pub fn opened(&self, dir: &Arc<Dir>, name: &OsString) {
        let s = &self.shared;
        let rel = dir.rel().to_path_buf();
        let mut windows = s.windows.lock().unwrap();
        let fresh = match windows.get(&rel) {
            Some(w) => !Arc::ptr_eq(&w.dir, dir) || w.used_at.elapsed() > STALE,
            None => true,
        };
        let mut jobs = Vec::new();
        if fresh {
            if windows.len() >= MAX_DIRS {
                let oldest = windows
                    .iter()
                    .min_by_key(|(_, w)| w.used_at)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    windows.remove(&k);
                }
            }
            let generation = s.generations.fetch_add(1, Ordering::Relaxed);
            windows.insert(
                rel.clone(),
                Window {
                    dir: dir.clone(),
                    listed: false,
                    early: Vec::new(),
                    names: Vec::new(),
                    index: HashMap::new(),
                    state: Vec::new(),
                    opened: 0,
                    ahead: 0,
                    needed_call: 0,
                    needed_none: 0,
                    generation,
                    used_at: Instant::now(),
                },
            );
            jobs.push(Job {
                dir: dir.clone(),
                name: None,
                rel: rel.clone(),
                generation,
                queued_at: Instant::now(),
            });
        }
        let w = windows.get_mut(&rel).expect("inserted");
        w.used_at = Instant::now();
        if w.listed {
            jobs.extend(s.advance(w, &rel, name));
        } else if !w.early.contains(name) {
            // Only the last `workers + 1` opens can matter to the window.
            if w.early.len() > s.workers {
                w.early.remove(0);
            }
            w.early.push(name.clone());
        }
        drop(windows);
        s.enqueue(jobs);
    }

    pub fn report(&self) -> AheadReport {
        let s = &self.shared;
        AheadReport {
            workers: s.workers,
            queued: s.queued.load(Ordering::Relaxed),
            unwrapped: s.unwrapped.load(Ordering::Relaxed),
            skipped: s.skipped.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
        }
    }
}

impl Drop for UnwrapAhead {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Shared {
    /// Queue `jobs` for the workers.
    fn enqueue(&self, jobs: Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        let unwraps = jobs.iter().filter(|j| j.name.is_some()).count();
        self.queued.fetch_add(unwraps as u64, Ordering::Relaxed);
        self.queue.lock().unwrap().extend(jobs);
        self.wake.notify_all();
    }

    /// The first open of `name` in a listed window: mark it, and the jobs that move the
    /// window on from it.
    fn advance(&self, w: &mut Window, rel: &std::path::Path, name: &OsString) -> Vec<Job> {
        // Only a first open counts: reopening a file, or one made since the listing, earns
        // no calls ahead.
        let Some(&at) = w.index.get(name) else {
            return Vec::new();
        };
        match w.state[at] {
            Seen::Opened => return Vec::new(),
            Seen::Queued => w.ahead -= 1,
            Seen::Untouched => {}
        }
        w.state[at] = Seen::Opened;
        w.opened += 1;
        // On from the file just opened, in the directory's order (a reader in another
        // order restarts the window wherever it opens).
        // The first open in a directory earns nothing: one file read alone costs one call.
        // Nor does a directory whose files mostly need no call.
        let room = if w.needed_none > w.needed_call {
            0
        } else {
            (w.opened - 1).min(self.workers).saturating_sub(w.ahead)
        };
        let mut jobs = Vec::new();
        let mut i = at + 1;
        while jobs.len() < room && i < w.names.len() {
            if w.state[i] == Seen::Untouched {
                w.state[i] = Seen::Queued;
                w.ahead += 1;
                jobs.push(Job {
                    dir: w.dir.clone(),
                    name: Some(w.names[i].clone()),
                    rel: rel.to_path_buf(),
                    generation: w.generation,
                    queued_at: Instant::now(),
                });
            }
            i += 1;
        }
        jobs
    }

    /// List a window's directory (a worker's job), then replay the opens that came first.
    fn list(&self, job: &Job) {
        let entries = job.dir.entries();
        let mut windows = self.windows.lock().unwrap();
        let Some(w) = windows
            .get_mut(&job.rel)
            .filter(|w| w.generation == job.generation)
        else {
            return;
        };
        let Ok(entries) = entries else {
            // Unlistable: the window stays empty (listed, no names), so opens queue nothing.
            w.listed = true;
            w.early.clear();
            return;
        };
        w.names = entries
            .into_iter()
            // Regular files only (`entries` stats those the directory records no type
            // for): opening a device node or FIFO could do more than read a header.
            .filter(|e| e.kind == libc::S_IFREG)
            .map(|e| e.name)
            .collect();
        w.index = w
            .names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        w.state = vec![Seen::Untouched; w.names.len()];
        w.listed = true;
        // The opens so far count as opened; the window moves on from the last of them.
        let mut early = std::mem::take(&mut w.early);
        let last = early.pop();
        for name in &early {
            if let Some(&at) = w.index.get(name)
                && w.state[at] == Seen::Untouched
            {
                w.state[at] = Seen::Opened;
                w.opened += 1;
            }
        }
        let jobs = match last {
            Some(name) => self.advance(w, &job.rel, &name),
            None => Vec::new(),
        };
        drop(windows);
        self.enqueue(jobs);
    }

    fn work(&self) {
        loop {
            let job = {
                let mut queue = self.queue.lock().unwrap();
                loop {
                    if self.stop.load(Ordering::Acquire) {
                        return;
                    }
                    if let Some(job) = queue.pop_front() {
                        break job;
                    }
                    // Bounded wait: the stop flag is looked at again at least this often.
                    queue = self
                        .wake
                        .wait_timeout(queue, Duration::from_millis(500))
                        .unwrap()
                        .0;
                }
            };
            if job.name.is_none() {
                self.list(&job);
                continue;
            }
            let result = self.run(&job);
            let counter = match result {
                Some(Ahead::Unwrapped) => &self.unwrapped,
                Some(Ahead::Failed) => &self.failed,
                _ => &self.skipped,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            self.learn(&job, result);
        }
    }

    /// Note in the job's window whether its file needed a key-service call.
    fn learn(&self, job: &Job, result: Option<Ahead>) {
        let needed = match result {
            Some(Ahead::Unwrapped | Ahead::Cached | Ahead::Failed) => true,
            Some(Ahead::NotHeld) => false,
            Some(Ahead::NotAFile) | None => return,
        };
        let mut windows = self.windows.lock().unwrap();
        if let Some(w) = windows
            .get_mut(&job.rel)
            .filter(|w| w.generation == job.generation)
        {
            if needed {
                w.needed_call += 1;
            } else {
                w.needed_none += 1;
            }
        }
    }

    /// `None`: dropped before reading the file.
    fn run(&self, job: &Job) -> Option<Ahead> {
        if job.queued_at.elapsed() > STALE {
            return None;
        }
        let current = self
            .windows
            .lock()
            .unwrap()
            .get(&job.rel)
            .is_some_and(|w| w.generation == job.generation);
        if !current {
            return None;
        }
        // O_NONBLOCK: a FIFO put in a file's place must not hang a worker.
        let file = job
            .dir
            .open_file(job.name.as_ref()?, libc::O_RDONLY | libc::O_NONBLOCK, 0)
            .ok()?;
        let mut header = vec![0u8; self.header_size];
        file.read_exact_at(&mut header, 0).ok()?;
        Some(self.vault.unwrap_ahead(&header))
    }
}
