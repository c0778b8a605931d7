//! `envfs status`: what each envfs mount on this host is doing. Every mount daemon answers
//! on a Unix socket of its own in the runtime directory (next to the pid file `envfs
//! umount` waits on): a connection sends `json` or `text` and a newline, and gets the
//! daemon's status in that form; the command finds the mounts in /proc/self/mountinfo and
//! asks each. The socket is the
//! daemon user's alone (mode 0600) and says nothing secret: paths of the backing store and
//! the mount, ids and counters, never a plaintext name or key material.

use super::exit;
use crate::error::{Error, Result};
use crate::fs::Fs;
use crate::text::json_str;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The most a status document can be; a daemon's is a few hundred bytes.
const MAX_STATUS: u64 = 64 * 1024;

/// What a daemon knows about itself from the start.
pub struct DaemonInfo {
    pub mountpoint: PathBuf,
    pub backing: PathBuf,
    pub vault_id: String,
    /// Shared mode (`-o shared`, or a network store).
    pub shared: bool,
    /// The FUSE requests served so far, by kind.
    pub requests: Arc<crate::fuse::RequestCounts>,
    /// The options the mount runs with, defaults included, key sources by name only.
    pub options: Vec<String>,
    /// The watch of the backing store and its timeouts, or why there is none.
    pub watch: std::result::Result<crate::fuse::WatchOptions, String>,
    /// The attribute, entry and negative timeouts when nothing is watched (or the watch
    /// degraded).
    pub short_timeouts: [Duration; 3],
}

impl DaemonInfo {
    /// The timeouts replies carry now, and whether they are the watched ones.
    fn timeouts(&self) -> ([Duration; 3], bool) {
        match &self.watch {
            Ok(w) if !w.state.is_degraded() => {
                ([w.attr_timeout, w.entry_timeout, w.negative_timeout], true)
            }
            _ => (self.short_timeouts, false),
        }
    }
}

/// A key the daemon holds: its kind, its id (never material) and, for a key service, the
/// calls it made and how many failed.
struct KeyInUse {
    kind: String,
    id: String,
    calls: Option<(Vec<(&'static str, u64)>, u64)>,
}

/// The status socket this daemon bound, to remove when it stops: only while the path is
/// still that socket. A new mount on the same mountpoint (a quick remount, a restarted
/// unit) binds the same path while the old daemon may still be shutting down, and must
/// not lose its socket to the old daemon's cleanup.
pub struct BoundSocket {
    path: PathBuf,
    id: (u64, u64),
}

impl BoundSocket {
    pub fn remove_if_ours(&self) {
        use std::os::unix::fs::MetadataExt;
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Serve status requests for the daemon's whole life on `socket` (replacing a stale one).
/// Failing to serve is logged, never fatal: the mount matters more than its status.
pub fn serve(socket: &Path, fs: Arc<Fs>, info: DaemonInfo) -> Option<BoundSocket> {
    let dir = socket.parent().expect("has a parent");
    let _ = std::fs::create_dir_all(dir);
    // Only in a directory that is ours and that nobody else can write to: in the
    // `/tmp/envfs-<uid>` fallback someone else may have made the directory first, and
    // could then swap the socket for a symlink or a socket of their own.
    if let Err(why) = private_dir(dir) {
        tracing::warn!(dir = %dir.display(), "no status socket: {why}");
        return None;
    }
    let _ = std::fs::remove_file(socket);
    let listener = match UnixListener::bind(socket) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(socket = %socket.display(), "no status socket: {e}");
            return None;
        }
    };
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let _ = std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600));
    let bound = std::fs::symlink_metadata(socket).ok().map(|m| BoundSocket {
        path: socket.to_path_buf(),
        id: (m.dev(), m.ino()),
    });
    let started = (Instant::now(), SystemTime::now());
    std::thread::Builder::new()
        .name("status".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else {
                    // Out of descriptors, say: do not spin on a pending connection.
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
                let mut request = [0u8; 5];
                let json = match stream.read_exact(&mut request) {
                    Ok(()) => &request == b"json\n",
                    Err(_) => continue,
                };
                let status = Status::of(&fs, &info, started);
                let reply = if json { status.json() } else { status.text() };
                let _ = stream.write_all(reply.as_bytes());
            }
        })
        .expect("spawn the status thread");
    bound
}

/// Whether `dir` is a real directory owned by this user that no one else may write to.
fn private_dir(dir: &Path) -> std::result::Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir).map_err(|e| e.to_string())?;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if !meta.is_dir() {
        return Err("not a directory".into());
    }
    if meta.uid() != euid {
        return Err(format!("owned by uid {}, not {euid}", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err("writable by others".into());
    }
    Ok(())
}

/// One daemon's status, as it answers.
struct Status<'a> {
    info: &'a DaemonInfo,
    started: u64,
    uptime_s: u64,
    open_files: usize,
    counts: crate::fs::entry_log::EntryCounts,
    backing_down: bool,
    capabilities: Option<crate::fs::Capabilities>,
    keys: Vec<KeyInUse>,
    /// DEKs cached, the cache's bound, and new-file DEKs ready (with prefetching).
    dek_cache: (usize, crate::keys::cache::CacheLimits, Option<usize>),
    /// What unwrap-ahead did (`None`: off), and how many of its DEKs an open used.
    ahead: Option<(crate::fs::unwrap_ahead::AheadReport, u64)>,
    /// The key hierarchy, when the vault uses one (on, or files wrapped by it).
    hierarchy: Option<crate::vault::hierarchy::HierarchyReport>,
}

impl<'a> Status<'a> {
    fn of(fs: &Fs, info: &'a DaemonInfo, started: (Instant, SystemTime)) -> Status<'a> {
        Status {
            info,
            started: started
                .1
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            uptime_s: started.0.elapsed().as_secs(),
            open_files: fs.open_file_count(),
            counts: fs.entry_counts(),
            backing_down: fs.backing_down(),
            capabilities: fs.capabilities().cloned(),
            keys: fs
                .vault()
                .held_providers()
                .iter()
                .map(|p| KeyInUse {
                    kind: p.kind().name(),
                    id: p.key_id().to_string(),
                    calls: p.calls().map(|c| c.snapshot()),
                })
                .collect(),
            dek_cache: fs.vault().dek_cache_fill(),
            ahead: fs
                .unwrap_ahead_report()
                .map(|r| (r, fs.vault().dek_ahead_used())),
            hierarchy: fs.vault().hierarchy_report(),
        }
    }

    fn json(&self) -> String {
        let mut j = String::from("{\"mountpoint\":");
        json_str(&mut j, &self.info.mountpoint.to_string_lossy());
        j.push_str(",\"backing\":");
        json_str(&mut j, &self.info.backing.to_string_lossy());
        j.push_str(",\"vault_id\":");
        json_str(&mut j, &self.info.vault_id);
        let _ = write!(
            j,
            ",\"version\":\"{}\",\"pid\":{},\"started\":{},\"uptime_s\":{},\"open_files\":{},\
             \"hidden_foreign_entries\":{},\"conflict_copies_shown\":{}}}",
            env!("CARGO_PKG_VERSION"),
            std::process::id(),
            self.started,
            self.uptime_s,
            self.open_files,
            self.counts.foreign_hidden,
            self.counts.copies_shown,
        );
        j.pop();
        let _ = write!(
            j,
            ",\"shared\":{},\"backing_down\":{}",
            self.info.shared, self.backing_down
        );
        if let Some(caps) = &self.capabilities {
            j.push_str(",\"backing_store\":{");
            for (i, (name, value)) in caps.rows().into_iter().enumerate() {
                if i > 0 {
                    j.push(',');
                }
                json_str(&mut j, name);
                j.push(':');
                json_str(&mut j, &value);
            }
            j.push_str("},\"backing_store_lacks\":[");
            for (i, (what, _)) in caps.lacks().into_iter().enumerate() {
                if i > 0 {
                    j.push(',');
                }
                json_str(&mut j, what);
            }
            j.push(']');
        }
        j.push_str(",\"options\":[");
        for (i, option) in self.info.options.iter().enumerate() {
            if i > 0 {
                j.push(',');
            }
            json_str(&mut j, option);
        }
        j.push_str("],\"keys\":[");
        for (i, key) in self.keys.iter().enumerate() {
            if i > 0 {
                j.push(',');
            }
            j.push_str("{\"kind\":");
            json_str(&mut j, &key.kind);
            j.push_str(",\"id\":");
            json_str(&mut j, &key.id);
            if let Some((calls, errors)) = &key.calls {
                j.push_str(",\"calls\":{");
                for (n, (op, count)) in calls.iter().enumerate() {
                    if n > 0 {
                        j.push(',');
                    }
                    json_str(&mut j, op);
                    let _ = write!(j, ":{count}");
                }
                let _ = write!(j, "}},\"call_errors\":{errors}");
            }
            j.push('}');
        }
        let (cached, limits, ready) = &self.dek_cache;
        let _ = write!(
            j,
            "],\"dek_cache\":{{\"entries\":{cached},\"max_entries\":{},\"ttl_s\":{},\"prefetched\":{}",
            limits.max_entries,
            limits.ttl.as_secs(),
            ready.map_or("null".to_string(), |n| n.to_string()),
        );
        j.push_str(",\"unwrap_ahead\":");
        match &self.ahead {
            Some((r, used)) => {
                let _ = write!(
                    j,
                    "{{\"workers\":{},\"queued\":{},\"unwrapped\":{},\"used\":{used},\
                     \"skipped\":{},\"failed\":{}}}",
                    r.workers, r.queued, r.unwrapped, r.skipped, r.failed
                );
            }
            None => j.push_str("null"),
        }
        j.push('}');
        j.push_str(",\"key_hierarchy\":");
        match &self.hierarchy {
            Some(h) => {
                let _ = write!(
                    j,
                    "{{\"lifetime_s\":{},\"current\":",
                    h.lifetime_s.map_or("null".to_string(), |l| l.to_string())
                );
                match &h.current {
                    Some((id, created)) => {
                        json_str(&mut j, id);
                        let _ = write!(j, ",\"current_created\":{created}");
                    }
                    None => j.push_str("null,\"current_created\":null"),
                }
                let _ = write!(
                    j,
                    ",\"known\":{},\"unwrapped\":{},\"made\":{},\"wrapped\":{},\"opened\":{}}}",
                    h.known, h.unwrapped, h.made, h.wrapped, h.opened
                );
            }
            None => j.push_str("null"),
        }
        j.push_str(",\"watch\":{");
        match &self.info.watch {
            Ok(w) => {
                let r = w.state.report();
                let _ = write!(
                    j,
                    "\"watched\":true,\"watched_dirs\":{},\"limit\":{},\"events\":{},\
                     \"invalidations\":{},\"overflows\":{},\"degraded\":",
                    r.watched_dirs, r.limit, r.events, r.invalidations, r.overflows
                );
                match &r.degraded {
                    Some(why) => json_str(&mut j, why),
                    None => j.push_str("null"),
                }
            }
            Err(why) => {
                j.push_str("\"watched\":false,\"why\":");
                json_str(&mut j, why);
            }
        }
        let ([attr, entry, negative], _) = self.info.timeouts();
        let _ = write!(
            j,
            ",\"attr_timeout_s\":{},\"entry_timeout_s\":{},\"negative_timeout_s\":{}}}",
            attr.as_secs_f64(),
            entry.as_secs_f64(),
            negative.as_secs_f64()
        );
        j.push_str(",\"requests\":{");
        for (i, (kind, n)) in self.info.requests.all().into_iter().enumerate() {
            if i > 0 {
                j.push(',');
            }
            json_str(&mut j, kind);
            let _ = write!(j, ":{n}");
        }
        j.push_str("}}");
        j
    }

    /// The lines under the mount's own line in `envfs status`.
    fn text(&self) -> String {
        let mut text = format!(
            "  vault {}, daemon pid {}, up {} s, envfs {}\n  open files {}; hidden foreign \
             entries {}; conflict copies shown {}\n",
            self.info.vault_id,
            std::process::id(),
            self.uptime_s,
            env!("CARGO_PKG_VERSION"),
            self.open_files,
            self.counts.foreign_hidden,
            self.counts.copies_shown,
        );
        if let Some(caps) = &self.capabilities {
            let lacks: Vec<&str> = caps.lacks().into_iter().map(|(what, _)| what).collect();
            let _ = writeln!(
                text,
                "  backing store {} ({}){}{}; lacks: {}",
                caps.fs_type_shown(),
                if caps.network { "network" } else { "local" },
                if self.info.shared {
                    ", shared mode"
                } else {
                    ""
                },
                if self.backing_down { ", DOWN" } else { "" },
                if lacks.is_empty() {
                    "nothing".to_string()
                } else {
                    lacks.join(", ")
                }
            );
        }
        let _ = writeln!(text, "  options: {}", self.info.options.join(","));
        for key in &self.keys {
            let calls = key.calls.as_ref().map_or(String::new(), |(calls, errors)| {
                let each: Vec<String> = calls.iter().map(|(op, n)| format!("{op} {n}")).collect();
                format!("; calls: {}, errors {errors}", each.join(", "))
            });
            let _ = writeln!(text, "  key {} ({}){calls}", key.id, key.kind);
        }
        let (cached, limits, ready) = &self.dek_cache;
        let _ = writeln!(
            text,
            "  DEK cache: {cached} of {} entries (kept {} s){}",
            limits.max_entries,
            limits.ttl.as_secs(),
            ready.map_or(String::new(), |n| format!("; {n} new-file DEKs ready"))
        );
        if let Some((r, used)) = &self.ahead {
            let _ = writeln!(
                text,
                "  unwrap-ahead: {} workers; {} DEKs unwrapped ahead, {used} used by an open; \
                 {} skipped, {} failed",
                r.workers, r.unwrapped, r.skipped, r.failed
            );
        }
        if let Some(h) = &self.hierarchy {
            let _ = writeln!(
                text,
                "  key hierarchy: {}; current intermediate key {}; {} known, {} unwrapped; \
                 {} made here; {} DEKs wrapped, {} opened with them",
                crate::cli::describe_hierarchy(h.lifetime_s.map(|l| l as u32)),
                h.current.as_ref().map_or("none yet", |(id, _)| id.as_str()),
                h.known,
                h.unwrapped,
                h.made,
                h.wrapped,
                h.opened
            );
        }
        let ([attr, entry, negative], watched) = self.info.timeouts();
        let timeouts = format!(
            "timeouts: attributes {} s, entries {} s, misses {} s",
            attr.as_secs_f64(),
            entry.as_secs_f64(),
            negative.as_secs_f64()
        );
        let _ = match &self.info.watch {
            Ok(w) => {
                let r = w.state.report();
                writeln!(
                    text,
                    "  watch: {} of at most {} directories; {} events, {} invalidations, {} \
                     overflows{}; {timeouts}",
                    r.watched_dirs,
                    r.limit,
                    r.events,
                    r.invalidations,
                    r.overflows,
                    match (&r.degraded, watched) {
                        (Some(why), _) => format!("; DEGRADED to short timeouts: {why}"),
                        _ => String::new(),
                    }
                )
            }
            Err(why) => writeln!(text, "  not watched ({why}); {timeouts}"),
        };
        let served: Vec<String> = (self.info.requests.all().into_iter())
            .filter(|(_, n)| *n > 0)
            .map(|(kind, n)| format!("{kind} {n}"))
            .collect();
        let _ = writeln!(
            text,
            "  requests served: {}",
            if served.is_empty() {
                "none".to_string()
            } else {
                served.join(", ")
            }
        );
        text
    }
}

/// One envfs mount of this host, from /proc/self/mountinfo.
struct Listed {
    mountpoint: PathBuf,
    backing: String,
}

fn envfs_mounts() -> Result<Vec<Listed>> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut out = Vec::new();
    for line in table.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut right = right.split(' ');
        let (Some(fstype), Some(source)) = (right.next(), right.next()) else {
            continue;
        };
        if fstype != "fuse.envfs" {
            continue;
        }
        if let Some(mountpoint) = left.split(' ').nth(4) {
            out.push(Listed {
                mountpoint: PathBuf::from(unescape(mountpoint)),
                backing: unescape(source),
            });
        }
    }
    Ok(out)
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Ask the daemon of `mountpoint` for its status, as JSON or text.
fn ask(mountpoint: &Path, json: bool) -> std::result::Result<String, String> {
    let mut last =
        "no status socket (an envfs older than 0.3, or another user's mount)".to_string();
    for socket in super::mount::status_sockets(mountpoint) {
        match UnixStream::connect(&socket) {
            Ok(mut stream) => {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
                let request: &[u8] = if json { b"json\n" } else { b"text\n" };
                if let Err(e) = stream.write_all(request) {
                    return Err(format!("the daemon did not answer: {e}"));
                }
                let mut doc = String::new();
                return match (&mut stream).take(MAX_STATUS).read_to_string(&mut doc) {
                    Ok(_) if !doc.is_empty() => Ok(doc),
                    Ok(_) => Err("the daemon sent no status".into()),
                    Err(e) => Err(format!("the daemon did not answer: {e}")),
                };
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                last = "permission denied (the mount belongs to another user)".into();
            }
            Err(e) => last = format!("cannot reach the daemon: {e}"),
        }
    }
    Err(last)
}

/// The envfs mounts on this host already serving the backing directory `backing` (the same
/// directory, by device and inode, whatever path they were given), each with whether it
/// runs in shared mode (`None` when its daemon does not say: another user's mount) and
/// whether it watches the backing store with its long timeouts in force.
pub fn mounts_of(backing: &Path) -> Vec<(PathBuf, Option<bool>, bool)> {
    use std::os::unix::fs::MetadataExt;
    let Ok(ours) = std::fs::metadata(backing) else {
        return Vec::new();
    };
    // The other mounts' backing directories may be on a share that stopped answering: a
    // stat of one must not hang this mount, so each gets two seconds (and a stat that has
    // not answered by then is taken as another directory).
    let same = |path: &str| {
        let path = PathBuf::from(path);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(std::fs::metadata(&path).map(|m| (m.dev(), m.ino())));
        });
        matches!(rx.recv_timeout(Duration::from_secs(2)), Ok(Ok(id)) if id == (ours.dev(), ours.ino()))
    };
    envfs_mounts()
        .unwrap_or_default()
        .into_iter()
        .filter(|l| same(&l.backing))
        .map(|l| {
            let doc = ask(&l.mountpoint, true).unwrap_or_default();
            // Our own document: `"shared":true` or `"shared":false`.
            let shared = doc
                .contains("\"shared\":true")
                .then_some(true)
                .or(doc.contains("\"shared\":false").then_some(false));
            let watched = doc.contains("\"watched\":true") && doc.contains("\"degraded\":null");
            (l.mountpoint, shared, watched)
        })
        .collect()
}

/// `envfs status [MOUNTPOINT] [--json]`.
pub fn run(mountpoint: Option<&Path>, json: bool) -> Result<()> {
    let mut mounts = envfs_mounts()?;
    if let Some(m) = mountpoint {
        let canonical = m
            .canonicalize()
            .map_err(|e| Error::Mount(format!("{}: {e}", m.display())))?;
        mounts.retain(|l| l.mountpoint == canonical);
        if mounts.is_empty() {
            return Err(Error::Mount(format!(
                "{} is not an envfs mount",
                m.display()
            )));
        }
    }
    let answers: Vec<(Listed, std::result::Result<String, String>)> = mounts
        .into_iter()
        .map(|l| {
            let answer = ask(&l.mountpoint, json);
            (l, answer)
        })
        .collect();
    let mut out = String::new();
    if json {
        out.push_str("{\"mounts\":[");
        for (i, (listed, answer)) in answers.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            match answer {
                Ok(doc) => out.push_str(doc.trim()),
                Err(why) => {
                    out.push_str("{\"mountpoint\":");
                    json_str(&mut out, &listed.mountpoint.to_string_lossy());
                    out.push_str(",\"backing\":");
                    json_str(&mut out, &listed.backing);
                    out.push_str(",\"error\":");
                    json_str(&mut out, why);
                    out.push('}');
                }
            }
        }
        out.push_str("]}\n");
    } else if answers.is_empty() {
        out.push_str("no envfs mounts\n");
    } else {
        for (listed, answer) in &answers {
            let _ = writeln!(
                out,
                "{} (backing {})",
                listed.mountpoint.display(),
                listed.backing
            );
            match answer {
                Ok(text) => out.push_str(text),
                Err(why) => {
                    let _ = writeln!(out, "  status unavailable: {why}");
                }
            }
        }
    }
    std::io::stdout().lock().write_all(out.as_bytes())?;
    let failed = answers.iter().filter(|(_, a)| a.is_err()).count();
    if failed > 0 {
        return Err(Error::Reported(
            exit::FAILURE,
            format!(
                "{} did not report a status",
                crate::text::count(failed, "mount", "mounts")
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_fields_are_unescaped() {
        assert_eq!(unescape(r"/mnt/my\040vault"), "/mnt/my vault");
        assert_eq!(unescape(r"/a\134b"), r"/a\b");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/odd\04"), r"/odd\04");
    }
}
