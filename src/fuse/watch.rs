//! Keeping the kernel's caches true while they are long: changes the backing store reports
//! become FUSE invalidations.
//!
//! The kernel may keep attributes and names for a long time (`WatchOptions`) only because
//! every backing directory it holds a node for is watched (src/backing/watch.rs), and
//! every change this mount did not make itself is turned, here, into the invalidation that
//! makes the kernel ask again: a name that appeared, went away or now stands for another
//! file (`inval_entry`, which also drops a remembered miss), a file whose contents changed
//! (`inval_inode` with its pages) or whose attributes did (`inval_inode`, attributes only).
//! What a backing name means is the core's judgement (src/fs/watch.rs); this module maps
//! watches to node ids and sends the notifications.
//!
//! Bounds: one watch per directory node the kernel holds (dropped when the kernel forgets
//! the node), at most `limit` of them. When the limit, the kernel's own per-user limit
//! (`fs.inotify.max_user_watches`) or any other failure stops a directory from being
//! watched, the mount *degrades*: one warning in the log, `envfs status` says why, and
//! every reply from then on carries the short timeouts, as if nothing were watched.
//! Directories already watched stay watched, so what the kernel cached under them stays
//! correct; if the watcher itself fails, everything the kernel holds is invalidated.

use super::inodes::{Inodes, ROOT};
use crate::backing::watch::{Event, EventKind, WatchId};
use crate::fs::Fs;
use fuser::{INodeNo, Notifier};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The default cap on watched directories (`-o watch_limit=N`). The kernel's memory per
/// watch is about 1 KiB, ours about 100 bytes: 64 MiB at most between them.
pub const DEFAULT_WATCH_LIMIT: usize = 65536;

/// While changes keep coming, how long to let more queue before handling them: the kernel
/// merges identical events, so a file written many times in this interval costs one
/// invalidation. Short, since it adds to how soon an outside change is seen.
const SETTLE: Duration = Duration::from_millis(2);

/// Changes are "coming" when more than `BURST_BATCHES` batches were handled in the last
/// `BURST`. One file changed after a quiet spell (a sync client replacing it, another mount
/// creating a name this one just found missing) is a few batches (create, write, close) and
/// each is handled the moment it is reported; only a burst of many waits `SETTLE` to merge.
const BURST: Duration = Duration::from_millis(50);
const BURST_BATCHES: u32 = 8;

/// How long one wait for events lasts: the bound on noticing that the session ended.
const POLL: Duration = Duration::from_millis(250);

/// What is watched, what it led to, and whether the mount had to give up long timeouts.
/// Shared by the adapter (which adds watches as the kernel learns of directories), the
/// watcher thread and `envfs status`.
#[derive(Debug)]
pub struct WatchState {
    limit: usize,
    degraded: AtomicBool,
    why_degraded: Mutex<Option<String>>,
    maps: Mutex<Maps>,
    stop: AtomicBool,
    events: AtomicU64,
    invalidations: AtomicU64,
    overflows: AtomicU64,
}

#[derive(Debug, Default)]
struct Maps {
    by_node: HashMap<u64, WatchId>,
    by_watch: HashMap<WatchId, u64>,
}

/// What `envfs status` shows of the watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchReport {
    pub watched_dirs: usize,
    pub limit: usize,
    /// Why the mount runs on short timeouts although it watches, if it does.
    pub degraded: Option<String>,
    pub events: u64,
    pub invalidations: u64,
    pub overflows: u64,
}

impl WatchState {
    pub fn new(limit: usize) -> Arc<WatchState> {
        Arc::new(WatchState {
            limit,
            degraded: AtomicBool::new(false),
            why_degraded: Mutex::new(None),
            maps: Mutex::default(),
            stop: AtomicBool::new(false),
            events: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            overflows: AtomicU64::new(0),
        })
    }

    /// Whether replies must carry the short timeouts: some directory the kernel knows may
    /// change without the mount hearing of it.
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Acquire)
    }

    pub fn report(&self) -> WatchReport {
        WatchReport {
            watched_dirs: self.maps.lock().unwrap().by_node.len(),
            limit: self.limit,
            degraded: self.why_degraded.lock().unwrap().clone(),
            events: self.events.load(Ordering::Relaxed),
            invalidations: self.invalidations.load(Ordering::Relaxed),
            overflows: self.overflows.load(Ordering::Relaxed),
        }
    }

    /// Give up long timeouts for the rest of the mount's life, saying why once. `why`
    /// names no path: it reaches the log.
    fn degrade(&self, why: String) {
        let mut slot = self.why_degraded.lock().unwrap();
        if slot.is_none() {
            tracing::warn!(
                "{why}: kernel caches fall back to the short timeouts for the rest of this \
                 mount (docs/OPERATIONS.md \"Change notification\")"
            );
            *slot = Some(why);
        }
        self.degraded.store(true, Ordering::Release);
    }

    /// Whether `node` needs a watch still: asked before its path is resolved, so a listing
    /// of directories already watched costs one map lookup each.
    pub(super) fn wants(&self, node: u64) -> bool {
        !self.is_degraded() && !self.maps.lock().unwrap().by_node.contains_key(&node)
    }

    /// Watch directory node `node`, at plaintext `path`, unless it is watched already.
    /// Called before the node's entry reaches the kernel, so nothing is cached under it
    /// before its watch exists.
    pub(super) fn watch(&self, fs: &Fs, node: u64, path: &Path) {
        let mut maps = self.maps.lock().unwrap();
        if maps.by_node.contains_key(&node) || self.is_degraded() {
            return;
        }
        if maps.by_node.len() >= self.limit {
            drop(maps);
            self.degrade(format!(
                "the watch limit of {} directories is reached (-o watch_limit)",
                self.limit
            ));
            return;
        }
        match fs.watch_dir(path) {
            Ok(wd) => {
                // A directory the kernel knew under another node id (it was forgotten and
                // looked up again) keeps its watch descriptor.
                if let Some(old) = maps.by_watch.insert(wd, node) {
                    maps.by_node.remove(&old);
                }
                maps.by_node.insert(node, wd);
            }
            // Gone already: nothing can be looked up beneath it.
            Err(e) if e.errno() == libc::ENOENT => {}
            Err(e) => {
                drop(maps);
                let errno = e.errno();
                self.degrade(if errno == libc::ENOSPC {
                    "the kernel's inotify watch limit is reached (fs.inotify.max_user_watches)"
                        .to_string()
                } else {
                    format!(
                        "a backing directory cannot be watched ({})",
                        std::io::Error::from_raw_os_error(errno)
                    )
                });
            }
        }
    }

    /// The kernel forgot node `node`: stop watching it if it is a watched directory.
    pub(super) fn forgotten(&self, fs: &Fs, node: u64) {
        let mut maps = self.maps.lock().unwrap();
        if let Some(wd) = maps.by_node.remove(&node) {
            maps.by_watch.remove(&wd);
            drop(maps);
            fs.unwatch(wd);
        }
    }

    fn node_of(&self, wd: WatchId) -> Option<u64> {
        self.maps.lock().unwrap().by_watch.get(&wd).copied()
    }

    fn watch_ended(&self, wd: WatchId) {
        let mut maps = self.maps.lock().unwrap();
        if let Some(node) = maps.by_watch.remove(&wd) {
            maps.by_node.remove(&node);
        }
    }
}

/// The running watcher: stopped and joined when the session ends.
pub struct Watcher {
    state: Arc<WatchState>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    pub fn stop(mut self) {
        self.state.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Start watching: the root directory now, the thread that turns events into
/// invalidations. `None` (degraded, with the reason logged) when the kernel gives no
/// inotify instance.
pub(super) fn start(
    notifier: Notifier,
    fs: Arc<Fs>,
    inodes: Arc<Inodes>,
    state: Arc<WatchState>,
) -> Option<Watcher> {
    if let Err(e) = fs.start_watching() {
        state.degrade(format!(
            "the backing store cannot be watched ({})",
            std::io::Error::from_raw_os_error(e.errno())
        ));
        return None;
    }
    state.watch(&fs, ROOT, Path::new(""));
    let thread_state = state.clone();
    let thread = std::thread::Builder::new()
        .name("envfs-watch".into())
        .spawn(move || {
            let invalidator = Invalidator {
                notifier,
                fs,
                inodes,
                state: thread_state,
            };
            invalidator.run();
        });
    match thread {
        Ok(thread) => Some(Watcher {
            state,
            thread: Some(thread),
        }),
        Err(e) => {
            state.degrade(format!("the watcher thread cannot start ({e})"));
            None
        }
    }
}

struct Invalidator {
    notifier: Notifier,
    fs: Arc<Fs>,
    inodes: Arc<Inodes>,
    state: Arc<WatchState>,
}

/// The notification could not be sent because the session is gone.
struct Unmounted;

impl Invalidator {
    /// Until the session stops (checked every `POLL`) or the kernel connection goes away.
    fn run(&self) {
        // The batches handled since `window` began, a new window every `BURST`.
        let (mut window, mut batches) = (std::time::Instant::now(), 0u32);
        while !self.state.stop.load(Ordering::Acquire) {
            let events = self
                .fs
                .wait_for_changes(POLL, Duration::ZERO)
                .and_then(|mut events| {
                    if events.is_empty() {
                        return Ok(events);
                    }
                    // Judged when the events arrive, not when the wait began.
                    if window.elapsed() >= BURST {
                        (window, batches) = (std::time::Instant::now(), 0);
                    }
                    batches += 1;
                    if batches > BURST_BATCHES {
                        std::thread::sleep(SETTLE);
                        events.extend(self.fs.wait_for_changes(Duration::ZERO, Duration::ZERO)?);
                    }
                    Ok(events)
                });
            let events = match events {
                Ok(events) => events,
                Err(e) => {
                    self.state.degrade(format!(
                        "reading backing-store changes failed ({})",
                        std::io::Error::from_raw_os_error(e.errno())
                    ));
                    let _ = self.everything();
                    return;
                }
            };
            for event in &events {
                self.state.events.fetch_add(1, Ordering::Relaxed);
                if self.handle(event).is_err() {
                    return;
                }
            }
        }
    }

    fn handle(&self, event: &Event) -> Result<(), Unmounted> {
        match event.kind {
            EventKind::Overflow => {
                self.state.overflows.fetch_add(1, Ordering::Relaxed);
                return self.everything();
            }
            EventKind::WatchEnded => {
                self.state.watch_ended(event.watch);
                return Ok(());
            }
            _ => {}
        }
        let Some(dir) = self.state.node_of(event.watch) else {
            return Ok(());
        };
        let Some(dir_path) = self.inodes.path(dir) else {
            return Ok(());
        };
        let change = match self.fs.judge_change(&dir_path, event) {
            Ok(change) => change,
            // The directory cannot be read now: whatever the kernel holds in it may be
            // stale.
            Err(_) => return self.names_in(dir),
        };
        if change.unreadable {
            return self.names_in(dir);
        }
        let now = change
            .now
            .and_then(|(dev, ino)| self.inodes.existing_id(dev, ino));
        for name in &change.names {
            match event.kind {
                EventKind::Appeared | EventKind::Gone => {
                    // A request of this mount is making or removing this very name: its
                    // reply tells the kernel. Looked at before the inode table, which the
                    // request updates before it stops marking the name.
                    if self.inodes.is_changing(dir, name) {
                        continue;
                    }
                    let known = self.inodes.link_target(dir, name);
                    // This mount's own create, rename or unlink: the kernel learned of it
                    // from the reply. Or the name still holds the file the kernel knows.
                    if known.is_some() && known == now {
                        continue;
                    }
                    // A name that went away was never cached if the kernel knows no node
                    // by it (a remembered miss is still right).
                    if event.kind == EventKind::Gone && known.is_none() {
                        continue;
                    }
                    self.entry(dir, name)?;
                    // The directory's own times and link count changed with it.
                    self.attributes(dir)?;
                }
                EventKind::Modified if !change.ours => {
                    if let Some(node) = now {
                        self.contents(node)?;
                    }
                }
                EventKind::Attrib if !change.ours => {
                    if let Some(node) = now {
                        self.attributes(node)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Invalidate every name the kernel knows in directory `dir`.
    fn names_in(&self, dir: u64) -> Result<(), Unmounted> {
        for name in self.inodes.names_in(dir) {
            self.entry(dir, &name)?;
        }
        self.attributes(dir)
    }

    /// Invalidate everything the kernel holds: events were lost.
    fn everything(&self) -> Result<(), Unmounted> {
        let (links, nodes) = self.inodes.everything();
        for (parent, name) in links {
            self.entry(parent, &name)?;
        }
        for node in nodes.into_iter().chain([ROOT]) {
            self.contents(node)?;
        }
        Ok(())
    }

    fn entry(&self, parent: u64, name: &OsStr) -> Result<(), Unmounted> {
        self.sent(self.notifier.inval_entry(INodeNo(parent), name))
    }

    fn attributes(&self, node: u64) -> Result<(), Unmounted> {
        // A negative offset: attributes only, the cached pages stay.
        self.sent(self.notifier.inval_inode(INodeNo(node), -1, 0))
    }

    fn contents(&self, node: u64) -> Result<(), Unmounted> {
        // Offset 0, length 0: attributes and every cached page.
        self.sent(self.notifier.inval_inode(INodeNo(node), 0, 0))
    }

    fn sent(&self, result: std::io::Result<()>) -> Result<(), Unmounted> {
        match result {
            Ok(()) => {
                self.state.invalidations.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            // The kernel holds nothing by that name or node: nothing to invalidate.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENODEV) | Some(libc::EBADF)) => {
                Err(Unmounted)
            }
            Err(e) => {
                tracing::debug!("invalidation not sent: {e}");
                Ok(())
            }
        }
    }
}
