//! Two real Syncthing instances syncing one folder between two local directories
//! ([`SyncPair`]), for the tests that put a synced directory on each side of envfs (its
//! backing stores). A real Syncthing, not a model of one: what the tests must survive is what
//! it does on disk (temporary files, renames into place, conflict copies, versions), and only
//! the real program shows that.
//!
//! Everything stays on this machine: both instances listen and talk on 127.0.0.1 only, with
//! discovery, relays, NAT, usage and crash reporting and upgrades all off, and each has its
//! own home (keys, config, database, log) in a temp dir that the pair owns. The tests drive
//! Syncthing through its REST API (with `curl`, and a known API key) instead of waiting for
//! its timers: rescans are explicit ([`SyncPair::scan`]; the periodic rescan is an hour),
//! and [`SyncPair::wait_in_sync`] asks both sides whether they agree.
//!
//! Written against Syncthing 1.19 (Debian 12's; scripts/setup.sh installs it). The binary is
//! `syncthing` on PATH, or the one `ENVFS_TEST_SYNCTHING` names. When it is missing, the
//! tests fail (CI installs it): a sync test that skips proves nothing. Each instance's
//! output goes to a log in its home, whose tail failures print; `STTRACE` (e.g.
//! `STTRACE=model,connections cargo test ...`) passes through to add Syncthing's traces.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The folder id both instances share (any id would do; the same on both sides).
pub const FOLDER: &str = "envfs-test";

/// One of the two instances of a [`SyncPair`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

/// Two Syncthing instances ("a" and "b"), each sharing one local directory as the folder
/// [`FOLDER`] with the other. Dropping it stops both (also when a test panics) and removes
/// their homes; the synced directories are the caller's and stay.
pub struct SyncPair {
    // Declared before `_home`: the instances stop before their homes are removed.
    a: Instance,
    b: Instance,
    _home: TempDir,
}

/// A running `syncthing serve`, stopped when dropped: so a pair that fails half-way through
/// [`SyncPair::start`] leaves no process behind either.
struct Instance {
    child: Mutex<Child>,
    id: String,
    api: String,
    key: String,
    log: PathBuf,
}

impl SyncPair {
    /// Sync `dir_a` (instance "a") with `dir_b` (instance "b"), file versioning off. Returns
    /// once both REST APIs answer and the two devices are connected (bounded: panics, with
    /// both logs, after 60 s). Syncthing puts its folder marker `.stfolder` in each
    /// directory; the directories need not be empty.
    pub fn start(dir_a: &Path, dir_b: &Path) -> SyncPair {
        SyncPair::start_with_versioning(dir_a, dir_b, "")
    }

    /// The same, with Syncthing's file versioning of type `versioning` on both sides
    /// ("simple", "trashcan", "staggered"; "" for none), `keep` 10, no cleanout: a file
    /// replaced or deleted by the other side's change is moved into `.stversions/` (which
    /// does not sync), at its relative path, named, with "simple" in 1.19,
    /// `STEM~YYYYMMDD-HHMMSS.EXT` (`sub/x.ext` → `.stversions/sub/x~….ext`, `noext` →
    /// `noext~…`, `.hidden` → `~….hidden`). A conflict's loser is not versioned: it
    /// becomes the conflict copy.
    pub fn start_with_versioning(dir_a: &Path, dir_b: &Path, versioning: &str) -> SyncPair {
        let bin = syncthing_bin();
        let found = Command::new(&bin).arg("--version").output();
        assert!(
            matches!(&found, Ok(out) if out.status.success()),
            "cannot run {bin:?} ({found:?}): the sync tests need a real Syncthing (Debian: \
             apt-get install syncthing, as scripts/setup.sh does; or point ENVFS_TEST_SYNCTHING \
             at one); they fail rather than skip"
        );
        let home = tempfile::tempdir().unwrap();
        let homes = [home.path().join("a"), home.path().join("b")];
        let mut ids = Vec::new();
        for h in &homes {
            let out = super::run(
                Command::new(&bin)
                    .arg("generate")
                    .arg(format!("--home={}", h.display()))
                    .args(["--no-default-folder", "--skip-port-probing"])
                    .env_remove("STTRACE"),
            );
            assert!(
                out.status.success(),
                "syncthing generate: {}",
                super::stderr_text(&out)
            );
            let out = super::ok(super::run(
                Command::new(&bin)
                    .arg("serve")
                    .arg(format!("--home={}", h.display()))
                    .arg("--device-id")
                    .env_remove("STTRACE"),
            ));
            let id = out.lines().last().unwrap_or_default().trim();
            assert_eq!(id.len(), 63, "syncthing --device-id printed {out:?}");
            ids.push(id.to_string());
        }
        // Four distinct free ports: all bound at once, then released for Syncthing.
        let listeners: Vec<TcpListener> = (0..4)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        drop(listeners);
        let dirs = [dir_a, dir_b].map(|d| {
            d.canonicalize()
                .unwrap_or_else(|e| panic!("synced directory {}: {e}", d.display()))
        });
        // b first, and ready (listening) before a starts: a, the side that dials, then
        // connects at its first try (after a refused dial, 1.19 waits 5 s to try again).
        let mut instances = Vec::new();
        for i in [1, 0] {
            let (j, name) = (1 - i, ["a", "b"][i]);
            let key = format!("envfs-test-key-{name}");
            let config = config_xml(&ConfigSpec {
                dir: &dirs[i],
                versioning,
                me: (&ids[i], name),
                listen_port: ports[i],
                peer: (&ids[j], ["a", "b"][j]),
                // Only a dials (b, then, has no address for a): when both dial at once,
                // 1.19 can keep both connections and each side wait on the other's
                // Hello, for its 20 s timeout, before one connection wins.
                peer_address: if i == 0 {
                    format!("tcp://127.0.0.1:{}", ports[1])
                } else {
                    "dynamic".to_string()
                },
                gui_port: ports[2 + i],
                api_key: &key,
            });
            std::fs::write(homes[i].join("config.xml"), config).unwrap();
            let inst = Instance::spawn(
                &bin,
                &homes[i],
                ids[i].clone(),
                format!("http://127.0.0.1:{}", ports[2 + i]),
                key,
            );
            inst.wait_ready(name, Duration::from_secs(60));
            instances.push(inst);
        }
        let a = instances.pop().unwrap();
        let b = instances.pop().unwrap();
        let pair = SyncPair { a, b, _home: home };
        pair.wait_connected(true, Duration::from_secs(60));
        pair
    }

    /// Scan the folder on `side` now, without waiting for the filesystem watcher (returns
    /// when Syncthing has finished the scan).
    pub fn scan(&self, side: Side) {
        let inst = self.side(side);
        if let Err(e) = inst.post(&format!("/rest/db/scan?folder={FOLDER}")) {
            panic!("scan on {side:?}: {e}\n{}", self.log_tails());
        }
    }

    /// Whether both sides agree, within `limit`: after a scan on each side, both connected,
    /// both folders idle needing nothing, each side 100 % complete for the other and holding
    /// the other's whole index (its sequence as the other reports it), the same global
    /// state on both, and all of that unchanged over two consecutive polls (so a change that
    /// one side is still announcing is not missed). On failure, prints both logs' tails and
    /// the last state seen to stderr.
    pub fn wait_in_sync(&self, limit: Duration) -> bool {
        let start = Instant::now();
        self.scan(Side::A);
        self.scan(Side::B);
        let mut last: Option<Vec<serde_json::Value>> = None;
        let mut seen = String::new();
        while start.elapsed() < limit {
            match self.sync_state() {
                Ok((state, agreed)) => {
                    if agreed && last.as_ref() == Some(&state) {
                        return true;
                    }
                    seen = format!("{state:?}");
                    last = agreed.then_some(state);
                }
                Err(e) => {
                    seen = e;
                    last = None;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!(
            "syncthing: not in sync after {limit:?}; last state: {seen}\n{}",
            self.log_tails()
        );
        false
    }

    /// Cut the connection between the two (each side pauses the other device) and wait until
    /// both see it down. Each side keeps scanning its own changes meanwhile, so different
    /// changes to the same file on both sides conflict on [`SyncPair::resume`]: the side
    /// whose version loses (the older modification time) moves its copy aside, and that copy
    /// syncs to the other side too. Syncthing 1.19 names it `STEM.sync-conflict-YYYYMMDD-
    /// HHMMSS-DEVICE.EXT`, EXT being the last extension (`x.tar.gz` gives
    /// `x.tar.sync-conflict-….gz`, `noext` gives `noext.sync-conflict-…`, `.hidden` gives
    /// `.sync-conflict-….hidden`), the time that of the resolution, and DEVICE the first 7
    /// characters of the id of the device whose change *won*. Identical bytes written on
    /// both sides are no conflict: no copy.
    pub fn pause(&self) {
        for side in [Side::A, Side::B] {
            let peer = &self.side(side.other()).id;
            if let Err(e) = self
                .side(side)
                .post(&format!("/rest/system/pause?device={peer}"))
            {
                panic!("pause on {side:?}: {e}\n{}", self.log_tails());
            }
        }
        self.wait_connected(false, Duration::from_secs(30));
    }

    /// Scan both sides (so that what changed while paused is in each side's index before the
    /// other hears of it), then reconnect them and wait until they are connected.
    pub fn resume(&self) {
        self.scan(Side::A);
        self.scan(Side::B);
        // b first: a is the side that dials, and b would turn away a dial that came before.
        for side in [Side::B, Side::A] {
            let peer = &self.side(side.other()).id;
            if let Err(e) = self
                .side(side)
                .post(&format!("/rest/system/resume?device={peer}"))
            {
                panic!("resume on {side:?}: {e}\n{}", self.log_tails());
            }
        }
        self.wait_connected(true, Duration::from_secs(60));
    }

    /// The device id of `side` (conflict copies' names end with the first 7 characters of
    /// one).
    pub fn device_id(&self, side: Side) -> &str {
        &self.side(side).id
    }

    /// The last lines of both instances' logs, for failure messages.
    pub fn log_tails(&self) -> String {
        format!("{}\n{}", self.a.log_tail("a"), self.b.log_tail("b"))
    }

    fn side(&self, side: Side) -> &Instance {
        match side {
            Side::A => &self.a,
            Side::B => &self.b,
        }
    }

    /// The figures [`SyncPair::wait_in_sync`] compares between polls, and whether they show
    /// the two sides in agreement.
    fn sync_state(&self) -> Result<(Vec<serde_json::Value>, bool), String> {
        let mut state = Vec::new();
        let mut agreed = true;
        let mut statuses = Vec::new();
        for side in [Side::A, Side::B] {
            let inst = self.side(side);
            let peer = &self.side(side.other()).id;
            let status = inst.get_json(&format!("/rest/db/status?folder={FOLDER}"))?;
            let done = inst.get_json(&format!(
                "/rest/db/completion?folder={FOLDER}&device={peer}"
            ))?;
            let conns = inst.get_json("/rest/system/connections")?;
            agreed &= conns["connections"][peer]["connected"] == true
                && status["state"] == "idle"
                && status["needTotalItems"] == 0
                && status["needBytes"] == 0
                && status["pullErrors"] == 0
                && done["completion"] == 100
                && done["needItems"] == 0
                && done["needBytes"] == 0
                && done["needDeletes"] == 0;
            for k in [
                "state",
                "sequence",
                "globalTotalItems",
                "globalBytes",
                "localTotalItems",
                "localBytes",
                "needTotalItems",
            ] {
                state.push(status[k].clone());
            }
            for k in ["completion", "sequence", "needItems"] {
                state.push(done[k].clone());
            }
            statuses.push((status, done));
        }
        let (sa, da) = &statuses[0];
        let (sb, db) = &statuses[1];
        // Each side holds the other's whole index, and both see the same global folder.
        agreed &= da["sequence"] == sb["sequence"]
            && db["sequence"] == sa["sequence"]
            && sa["globalTotalItems"] == sb["globalTotalItems"]
            && sa["globalBytes"] == sb["globalBytes"];
        Ok((state, agreed))
    }

    /// Wait until each side sees the other connected (`up`) or not.
    fn wait_connected(&self, up: bool, limit: Duration) {
        let what = if up { "connected" } else { "disconnected" };
        self.wait_for(&format!("the devices to be {what}"), limit, || {
            [Side::A, Side::B].iter().all(|&side| {
                let peer = &self.side(side.other()).id;
                self.side(side)
                    .get_json("/rest/system/connections")
                    .is_ok_and(|c| c["connections"][peer]["connected"] == up)
            })
        });
    }

    /// Poll `cond` until true; past `limit`, or when an instance has exited, panic with both
    /// logs.
    fn wait_for(&self, what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        loop {
            if cond() {
                return;
            }
            for (name, inst) in [("a", &self.a), ("b", &self.b)] {
                if let Some(status) = inst.exited() {
                    panic!(
                        "syncthing {name} exited ({status}) while waiting for {what}\n{}",
                        self.log_tails()
                    );
                }
            }
            assert!(
                start.elapsed() < limit,
                "syncthing: timed out after {limit:?} waiting for {what}\n{}",
                self.log_tails()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Instance {
    /// `syncthing serve` on a home whose config.xml is written, its output to `home/log`.
    fn spawn(bin: &Path, home: &Path, id: String, api: String, key: String) -> Instance {
        let log = home.join("log");
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg(format!("--home={}", home.display()))
            .args([
                "--no-browser",
                "--no-restart",
                "--no-upgrade",
                "--no-default-folder",
            ])
            // One process, not a monitor and a child: the pid we hold is Syncthing itself,
            // so stopping it by that pid stops everything (1.19 forks a monitor otherwise,
            // --no-restart or not).
            .env("STMONITORED", "1")
            .env("STNOUPGRADE", "1")
            // A fixed SHA-256 implementation: no benchmark to choose one, a second saved.
            .env("STHASHING", "standard")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        // If the test binary dies without unwinding (killed by a timeout), Syncthing goes
        // with it rather than living on. (The signal follows the spawning thread; a test
        // keeps its pair in its own thread.)
        // SAFETY: only an async-signal-safe call between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {bin:?} serve: {e}"));
        Instance {
            child: Mutex::new(child),
            id,
            api,
            key,
            log,
        }
    }

    /// Wait (bounded) until the REST API answers; panic, with the log, if it does not or
    /// Syncthing exits.
    fn wait_ready(&self, name: &str, limit: Duration) {
        let start = Instant::now();
        while self.get("/rest/system/ping").is_err() {
            if let Some(status) = self.exited() {
                panic!(
                    "syncthing {name} exited ({status})\n{}",
                    self.log_tail(name)
                );
            }
            assert!(
                start.elapsed() < limit,
                "syncthing {name}: no answer from its REST API after {limit:?}\n{}",
                self.log_tail(name)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// How Syncthing ended, if it has.
    fn exited(&self) -> Option<String> {
        match self.child.lock().unwrap().try_wait() {
            Ok(None) => None,
            Ok(Some(status)) => Some(status.to_string()),
            Err(e) => Some(e.to_string()),
        }
    }

    /// The last 40 lines of the log.
    fn log_tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- syncthing {name} log (tail) ---\n{}",
            lines[lines.len().saturating_sub(40)..].join("\n")
        )
    }

    fn get(&self, path: &str) -> Result<String, String> {
        self.request("GET", path)
    }

    fn post(&self, path: &str) -> Result<String, String> {
        self.request("POST", path)
    }

    fn get_json(&self, path: &str) -> Result<serde_json::Value, String> {
        let body = self.get(path)?;
        serde_json::from_str(&body).map_err(|e| format!("GET {path}: {e}: {body}"))
    }

    /// One REST call with curl, bounded (a scan can take as long as a pull in progress).
    fn request(&self, method: &str, path: &str) -> Result<String, String> {
        let out = Command::new("curl")
            .args(["-sS", "--fail-with-body", "--max-time", "120", "-X", method])
            .arg("-H")
            .arg(format!("X-API-Key: {}", self.key))
            .arg(format!("{}{path}", self.api))
            .output()
            .map_err(|e| format!("cannot run curl (apt-get install curl): {e}"))?;
        if out.status.success() {
            Ok(super::stdout_text(&out))
        } else {
            Err(format!(
                "{method} {path}: {}{}",
                super::stderr_text(&out),
                super::stdout_text(&out)
            ))
        }
    }
}

impl Drop for Instance {
    /// SIGTERM (Syncthing closes its database cleanly), up to 10 s, then SIGKILL; always
    /// reaped, by this instance's own pid only.
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Ok(None) = child.try_wait() {
            // SAFETY: kill(2) on our own child, not yet reaped (so the pid is still its).
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if !matches!(child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The Syncthing under test: `ENVFS_TEST_SYNCTHING`, else `syncthing` on PATH.
fn syncthing_bin() -> PathBuf {
    std::env::var_os("ENVFS_TEST_SYNCTHING")
        .map(PathBuf::from)
        .unwrap_or_else(|| "syncthing".into())
}

/// What differs between the two instances' configs.
struct ConfigSpec<'a> {
    dir: &'a Path,
    versioning: &'a str,
    /// Device id and name of this instance, and the port it listens on for its peer.
    me: (&'a str, &'a str),
    listen_port: u16,
    /// Device id and name of its peer, and where to dial it ("dynamic": nowhere, as
    /// discovery is off).
    peer: (&'a str, &'a str),
    peer_address: String,
    gui_port: u16,
    api_key: &'a str,
}

/// A whole config.xml (Syncthing fills in defaults for everything left out). Everything
/// that could reach past this machine is off; the rescan is an hour, as the tests scan
/// explicitly; the watcher reacts within a second; permissions sync; at most 10 conflict
/// copies per file.
fn config_xml(c: &ConfigSpec) -> String {
    let dir = xml_escape(c.dir.to_str().expect("synced directory path is UTF-8"));
    let versioning = xml_escape(c.versioning);
    let device = |(id, name): (&str, &str), address: &str| {
        format!(
            r#"    <device id="{id}" name="{name}" compression="metadata" introducer="false">
        <address>{address}</address>
        <paused>false</paused>
        <autoAcceptFolders>false</autoAcceptFolders>
    </device>
"#
        )
    };
    format!(
        r#"<configuration version="36">
    <folder id="{FOLDER}" label="{FOLDER}" path="{dir}" type="sendreceive" rescanIntervalS="3600" fsWatcherEnabled="true" fsWatcherDelayS="1" ignorePerms="false" autoNormalize="true">
        <filesystemType>basic</filesystemType>
        <device id="{me}"></device>
        <device id="{peer}"></device>
        <versioning type="{versioning}">
            <param key="keep" val="10"></param>
            <param key="cleanoutDays" val="0"></param>
            <cleanupIntervalS>0</cleanupIntervalS>
        </versioning>
        <maxConflicts>10</maxConflicts>
        <paused>false</paused>
    </folder>
{dev_me}{dev_peer}    <gui enabled="true" tls="false" debugging="false">
        <address>127.0.0.1:{gui}</address>
        <apikey>{key}</apikey>
    </gui>
    <options>
        <listenAddress>tcp://127.0.0.1:{port}</listenAddress>
        <globalAnnounceEnabled>false</globalAnnounceEnabled>
        <localAnnounceEnabled>false</localAnnounceEnabled>
        <relaysEnabled>false</relaysEnabled>
        <natEnabled>false</natEnabled>
        <startBrowser>false</startBrowser>
        <urAccepted>-1</urAccepted>
        <autoUpgradeIntervalH>0</autoUpgradeIntervalH>
        <crashReportingEnabled>false</crashReportingEnabled>
        <reconnectionIntervalS>1</reconnectionIntervalS>
        <restartOnWakeup>false</restartOnWakeup>
    </options>
</configuration>
"#,
        me = c.me.0,
        peer = c.peer.0,
        dev_me = device(c.me, "dynamic"),
        dev_peer = device(c.peer, &c.peer_address),
        gui = c.gui_port,
        key = xml_escape(c.api_key),
        port = c.listen_port,
    )
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// One node of a synced directory, as [`tree`] sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// Permission bits.
    Dir(u32),
    /// Permission bits and contents.
    File(u32, Vec<u8>),
    Symlink(PathBuf),
}

/// Every node under `dir` by relative path, leaving out Syncthing's own (`.stfolder`,
/// `.stversions`, `.stignore`, and its `.syncthing.*.tmp` temporaries): what two synced
/// directories must agree on.
pub fn tree(dir: &Path) -> BTreeMap<String, Node> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    for path in super::walk(dir) {
        let rel = path.strip_prefix(dir).unwrap();
        let internal = rel.components().any(|c| {
            let c = c.as_os_str().to_string_lossy();
            [".stfolder", ".stversions", ".stignore"].contains(&c.as_ref())
                || (c.starts_with(".syncthing.") && c.ends_with(".tmp"))
        });
        if internal {
            continue;
        }
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o7777;
        let node = if meta.file_type().is_symlink() {
            Node::Symlink(std::fs::read_link(&path).unwrap())
        } else if meta.is_dir() {
            Node::Dir(mode)
        } else {
            Node::File(mode, std::fs::read(&path).unwrap())
        };
        out.insert(rel.to_string_lossy().into_owned(), node);
    }
    out
}
