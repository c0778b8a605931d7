#!/usr/bin/env bash
# Round-trip profile of a network backing store (issue 16): how many SFTP requests each
# workload costs on plain sshfs, on envfs over sshfs and on gocryptfs over sshfs, by type,
# and the ratio to plain sshfs. Every request a NAS answers is a round trip on a real
# network, so this is the number to cut; it does not depend on the machine's speed.
#
#   bash scripts/nas_roundtrips.sh [--envfs BIN] [--envfs-opts OPTS] [--files N] [--seq-mib N]
#        [--only WORKLOADS] [--contenders LIST] [--sshfs-opts OPTS] [--json FILE] [--keep]
#
# How: an OpenSSH server on 127.0.0.1 (throwaway ed25519 keys, as tests/support/nas.rs)
# whose sftp subsystem is /usr/lib/openssh/sftp-server -e -l DEBUG3, which logs one line
# `request ID: TYPE ...` for every request it serves (the sftp-server of OpenSSH 9.2 logs
# every request type so: open close read write lstat stat fstat setstat fsetstat opendir
# readdir remove mkdir rmdir realpath rename readlink symlink, and the extensions
# posix-rename hardlink fsync statvfs fstatvfs lsetstat limits expand-path copy-data).
# Each workload's requests are the log lines written between its start and the moment the
# whole stack is unmounted and the server's session has ended, so closes and writes the
# kernel or a daemon defers are counted too.
#
# Every workload runs on a freshly mounted stack (sshfs, then the contender on it) after
# dropping the kernel's caches: sshfs keeps its own attribute and directory cache
# (cache_timeout, 20 s) in its process, so remounting only the top layer would leave envfs
# and gocryptfs a warm sshfs cache that plain sshfs does not get.
#
# Workloads (--only picks some; those a picked one needs still run, unreported):
#   mount       mount sshfs, then the contender on it (the vault exists already)
#   cp          cp -a of N small files (1-16 KiB, deterministic content, 100 directories)
#   ls          ls -lR of that tree
#   cat         cat of every file of it, by name (no directory walk)
#   git-commit  git init + add -A + commit of a repository of N files (copied in first, uncounted)
#   git-status  git status in that repository, the first after the commit: sshfs has no
#               stable inode numbers (SFTP has none; libfuse numbers nodes in lookup order),
#               so git finds every entry's inode changed, re-reads every file and rewrites
#               the index
#   git-status-again  git status once more, cold, after the first one refreshed the index
#               (nearer what a user sees day to day)
#   rm          rm -rf of the cp tree
#   seq-write   dd of a 64 MiB file in 1 MiB writes, then fsync (--seq-mib changes the size)
#   seq-read    dd of that file back, cold
#
# Contenders: plain (sshfs itself), envfs (envfs mount SHARE/vault MNT --key-file K) and
# gocryptfs (if installed; gocryptfs -init'ed SHARE/gc). The same sshfs options for all
# (--sshfs-opts, default "reconnect,ServerAliveInterval=15"), plus the fixed ones that reach
# the loopback server (port, key, no host key checks, -F /dev/null).
#
# Needs root (drop_caches, sshd). Work happens in $NAS_DIR (default /var/tmp/envfs-nas-rt).
# All traffic stays on 127.0.0.1; every wait is bounded; everything started is stopped by
# its PID, and everything mounted unmounted, on exit, error or signal.
set -euo pipefail
CALLER=$PWD
cd "$(dirname "$0")/.."
ROOT=$PWD
abspath() { case $1 in /*) echo "$1" ;; *) echo "$CALLER/$1" ;; esac; }

ARGS="$*"
ENVFS=""
ENVFS_OPTS=""
FILES=1000
SEQ_MIB=64
ONLY=""
CONTENDERS_OPT=""
SSHFS_OPTS="reconnect,ServerAliveInterval=15"
JSON=""
KEEP=0
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --envfs) ENVFS=$(abspath "$2"); shift 2 ;;
    --envfs-opts) ENVFS_OPTS=$2; shift 2 ;;
    --files) FILES=$2; shift 2 ;;
    --seq-mib) SEQ_MIB=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --contenders) CONTENDERS_OPT=$2; shift 2 ;;
    --sshfs-opts) SSHFS_OPTS=$2; shift 2 ;;
    --json) JSON=$(abspath "$2"); shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "nas_roundtrips: unknown option $1 (--help)" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "nas_roundtrips: run as root (drop_caches, sshd)" >&2; exit 1; }
[[ $FILES =~ ^[0-9]+$ ]] && [ "$FILES" -gt 0 ] || { echo "nas_roundtrips: --files wants a positive number" >&2; exit 2; }
for tool in /usr/sbin/sshd /usr/lib/openssh/sftp-server sshfs fusermount3 git ssh-keygen; do
  command -v "$tool" >/dev/null || { echo "nas_roundtrips: $tool is missing (apt-get install openssh-server sshfs fuse3 git; scripts/setup.sh installs them)" >&2; exit 1; }
done

ALL_WORKLOADS=(mount cp ls cat git-commit git-status git-status-again rm seq-write seq-read)
WORKLOADS=("${ALL_WORKLOADS[@]}")
if [ -n "$ONLY" ]; then
  IFS=, read -r -a WORKLOADS <<< "$ONLY"
  for w in "${WORKLOADS[@]}"; do
    [[ " ${ALL_WORKLOADS[*]} " == *" $w "* ]] || { echo "nas_roundtrips: unknown workload $w (${ALL_WORKLOADS[*]})" >&2; exit 2; }
  done
fi
wants() { [[ " ${WORKLOADS[*]} " == *" $1 "* ]]; }
if [ -n "$CONTENDERS_OPT" ]; then
  IFS=, read -r -a CONTENDERS <<< "$CONTENDERS_OPT"
else
  CONTENDERS=(plain envfs)
  command -v gocryptfs >/dev/null && CONTENDERS+=(gocryptfs)
fi
for c in "${CONTENDERS[@]}"; do
  case $c in
    plain|envfs) ;;
    gocryptfs) command -v gocryptfs >/dev/null || { echo "nas_roundtrips: gocryptfs is not installed (apt-get install gocryptfs)" >&2; exit 1; } ;;
    *) echo "nas_roundtrips: unknown contender $c (plain, envfs, gocryptfs)" >&2; exit 2 ;;
  esac
done
if [[ " ${CONTENDERS[*]} " == *" envfs "* ]]; then
  if [ -z "$ENVFS" ]; then
    ENVFS=$ROOT/target/release/envfs
    [ -x "$ENVFS" ] || cargo build --release -q
  fi
  [ -x "$ENVFS" ] || { echo "nas_roundtrips: no envfs binary at $ENVFS" >&2; exit 1; }
  ENVFS=$(realpath "$ENVFS")
fi

W=${NAS_DIR:-/var/tmp/envfs-nas-rt}
case $W in /*) ;; *) echo "nas_roundtrips: NAS_DIR must be absolute" >&2; exit 2 ;; esac
# A leftover mount from a killed run would make rm -rf walk into it: refuse instead.
if findmnt -rn -o TARGET | grep -q "^$W/"; then
  echo "nas_roundtrips: something is still mounted under $W (findmnt | grep $W); unmount it first" >&2; exit 1
fi
rm -rf "$W"; mkdir -p "$W"/{etc,export,share,mnt,config}
ETC=$W/etc SHARE=$W/share MNT=$W/mnt LOG=$W/sftp.log
RESULTS=$W/windows.tsv
: > "$RESULTS"; : > "$LOG"
export XDG_CONFIG_HOME=$W/config XDG_STATE_HOME=$W/config   # envfs's known-vaults file stays in the work directory

SSHD_PID="" SSHFS_PID="" TOP_PID=""
# Wait (at most $2 tenths of a second) for process $1 to be gone.
wait_gone() { local i; for ((i = 0; i < $2; i++)); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done; return 1; }
stop_pid() {  # stop_pid PID: TERM, then KILL after 5 s; reap it if it is our child
  [ -n "$1" ] || return 0
  kill -0 "$1" 2>/dev/null || { wait "$1" 2>/dev/null || true; return 0; }
  kill "$1" 2>/dev/null || true
  wait_gone "$1" 50 || kill -9 "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
unmount() {  # unmount MNT: fusermount3 -u, retried for 10 s; lazily at last
  local i
  for ((i = 0; i < 50; i++)); do
    mountpoint -q "$1" 2>/dev/null || return 0
    fusermount3 -u "$1" 2>/dev/null && return 0
    sleep 0.2
  done
  umount -l "$1" 2>/dev/null || true
}
sessions_gone() {  # the server's per-connection processes have exited (their log is complete)
  local i
  for ((i = 0; i < 100; i++)); do
    [ -n "$(pgrep -P "$SSHD_PID" 2>/dev/null)" ] || return 0
    sleep 0.1
  done
  echo "nas_roundtrips: sshd sessions still open after 10 s" >&2
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  unmount "$MNT"; stop_pid "$TOP_PID"
  unmount "$SHARE"; stop_pid "$SSHFS_PID"
  if [ -n "$SSHD_PID" ]; then
    for p in $(pgrep -P "$SSHD_PID" 2>/dev/null); do stop_pid "$p"; done
    stop_pid "$SSHD_PID"
  fi
  [ "$KEEP" = 1 ] || [ $rc -ne 0 ] || rm -rf "$W/export" "$W/small-src" "$W/seq.src"
  [ $rc -eq 0 ] || echo "nas_roundtrips: stopped (exit $rc); logs in $W" >&2
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- the server --------------------------------------------------------------------------------
mkdir -p /run/sshd   # privilege separation directory
for key in host_key user_key; do ssh-keygen -q -t ed25519 -N "" -C nas-roundtrips -f "$ETC/$key"; done
cat > "$ETC/sftp-logged" <<EOF
#!/bin/sh
exec /usr/lib/openssh/sftp-server -e -l DEBUG3 2>>"$LOG"
EOF
chmod 755 "$ETC/sftp-logged"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$ETC/sshd_config" <<EOF
Port $PORT
ListenAddress 127.0.0.1
HostKey $ETC/host_key
AuthorizedKeysFile $ETC/user_key.pub
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp $ETC/sftp-logged
PidFile none
EOF
/usr/sbin/sshd -D -f "$ETC/sshd_config" -E "$ETC/sshd.log" < /dev/null & SSHD_PID=$!
for ((i = 0; i < 100; i++)); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  kill -0 "$SSHD_PID" 2>/dev/null || { echo "nas_roundtrips: sshd exited: $(cat "$ETC/sshd.log")" >&2; exit 1; }
  sleep 0.1
done
[ $i -lt 100 ] || { echo "nas_roundtrips: sshd did not listen within 10 s" >&2; exit 1; }

SSH_FIXED="IdentityFile=$ETC/user_key,StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,BatchMode=yes,LogLevel=ERROR"

# --- inputs, on the local disk ---------------------------------------------------------------------
SRC=$W/small-src
python3 - "$SRC" "$FILES" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rnd = random.Random(1)
for i in range(n):
    d = os.path.join(root, f"d{i % 100:02d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05d}"), "wb") as f:
        f.write(rnd.randbytes(rnd.randint(1024, 16384)))
PY
# Fixed timestamps: cp -a copies them, so no file looks "racily clean" to git.
find "$SRC" -exec touch -h -d 2024-01-01T00:00:00Z {} +
LIST=$W/files.list
(cd "$SRC" && find . -type f | sort) > "$LIST"
printf 'benchpass\n' > "$W/gc.pass"
[[ $SEQ_MIB =~ ^[0-9]+$ ]] && [ "$SEQ_MIB" -gt 0 ] || { echo "nas_roundtrips: --seq-mib wants a positive number" >&2; exit 2; }

# --- the stack ----------------------------------------------------------------------------------
# stack_up NAME: mount the contender's export with sshfs at $SHARE, then the contender at
# $MNT; sets DIR, where its workload runs.
stack_up() {
  local name=$1 i
  mkdir -p "$W/export/$name"
  sshfs -f "root@127.0.0.1:$W/export/$name" "$SHARE" -p "$PORT" -F /dev/null \
    -o "$SSH_FIXED" ${SSHFS_OPTS:+-o "$SSHFS_OPTS"} < /dev/null 2>>"$W/sshfs.log" & SSHFS_PID=$!
  for ((i = 0; i < 200; i++)); do
    mountpoint -q "$SHARE" && break
    kill -0 "$SSHFS_PID" 2>/dev/null || { echo "nas_roundtrips: sshfs exited; see $W/sshfs.log" >&2; exit 1; }
    sleep 0.05
  done
  mountpoint -q "$SHARE" || { echo "nas_roundtrips: sshfs did not mount within 10 s" >&2; exit 1; }
  case $name in
    plain) DIR=$SHARE; return ;;
    envfs)
      if [ ! -e "$SHARE/vault/envfs.conf" ]; then
        mkdir -p "$SHARE/vault"
        "$ENVFS" init "$SHARE/vault" --key-file "$W/envfs.key" > /dev/null
      fi
      "$ENVFS" mount "$SHARE/vault" "$MNT" --key-file "$W/envfs.key" -f ${ENVFS_OPTS:+-o "$ENVFS_OPTS"} \
        < /dev/null 2>>"$W/envfs.log" & TOP_PID=$! ;;
    gocryptfs)
      if [ ! -e "$SHARE/gc/gocryptfs.conf" ]; then
        mkdir -p "$SHARE/gc"
        gocryptfs -init -q -passfile "$W/gc.pass" "$SHARE/gc" > /dev/null 2>>"$W/gocryptfs.log"
      fi
      gocryptfs -fg -q -passfile "$W/gc.pass" "$SHARE/gc" "$MNT" < /dev/null >/dev/null 2>>"$W/gocryptfs.log" & TOP_PID=$! ;;
  esac
  for ((i = 0; i < 400; i++)); do
    mountpoint -q "$MNT" && break
    kill -0 "$TOP_PID" 2>/dev/null || { echo "nas_roundtrips: $name exited before mounting; see $W/$name.log" >&2; exit 1; }
    sleep 0.05
  done
  mountpoint -q "$MNT" || { echo "nas_roundtrips: $name did not mount within 20 s" >&2; exit 1; }
  DIR=$MNT
}
# stack_down: unmount the contender, wait for its daemon to finish (it may still write to the
# share), unmount sshfs, wait until the server's session ended and its log is complete.
stack_down() {
  if [ -n "$TOP_PID" ]; then
    unmount "$MNT"
    wait_gone "$TOP_PID" 300 || echo "nas_roundtrips: daemon $TOP_PID still running 30 s after unmount" >&2
    stop_pid "$TOP_PID"; TOP_PID=""
  fi
  unmount "$SHARE"
  wait_gone "$SSHFS_PID" 100 || true
  stop_pid "$SSHFS_PID"; SSHFS_PID=""
  sessions_gone
}
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
offset() { stat -c %s "$LOG"; }
now() { date +%s.%N; }
# window CONTENDER WORKLOAD START_OFFSET SECONDS: the log from START to now is the workload's.
window() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$(offset)" "$4" >> "$RESULTS"; }
# measure NAME WORKLOAD COMMAND...: on a cold stack, COMMAND (run in $DIR) is the workload.
measure() {
  local name=$1 wl=$2 start t0 t1; shift 2
  cold; stack_up "$name"
  start=$(offset); t0=$(now)
  (cd "$DIR" && "$@")
  t1=$(now)
  stack_down
  window "$name" "$wl" "$start" "$(echo "$t1 - $t0" | bc -l)"
}
GIT=(git -c safe.directory='*' -c user.name=bench -c user.email=bench@localhost -c init.defaultBranch=main
     -c core.fsmonitor=false -c gc.auto=0 -c maintenance.auto=false)
TO=(timeout --foreground -k 10 600)   # any one command of a workload
w_cp() { "${TO[@]}" cp -a "$SRC" small; }
w_ls() { "${TO[@]}" ls -lR small > /dev/null; }
w_cat() { (cd small && "${TO[@]}" xargs -d '\n' cat < "$LIST" > /dev/null); }
w_git_commit() { "${TO[@]}" "${GIT[@]}" init -q repo && cd repo && "${TO[@]}" "${GIT[@]}" add -A && "${TO[@]}" "${GIT[@]}" commit -q -m files; }
w_git_status() { cd repo && "${TO[@]}" "${GIT[@]}" status --porcelain > "$W/git-status.out"; }
w_rm() { "${TO[@]}" rm -rf small; }
w_seq_write() { "${TO[@]}" dd if="$W/seq.src" of=seq bs=1M conv=fsync status=none; }
w_seq_read() { "${TO[@]}" dd if=seq of=/dev/null bs=1M status=none; }

need() {  # the workloads a reported one depends on
  case $1 in
    cp) wants cp || wants ls || wants cat || wants rm ;;
    git-commit) wants git-commit || wants git-status || wants git-status-again ;;
    seq-write) wants seq-write || wants seq-read ;;
    *) wants "$1" ;;
  esac
}

if need seq-write; then
  head -c "$((SEQ_MIB * 1048576))" /dev/urandom > "$W/seq.src"
fi
T_START=$(date +%s)
for name in "${CONTENDERS[@]}"; do
  echo "nas_roundtrips: $name" >&2
  # Create the vault (or the gocryptfs directory): setup, not counted.
  stack_up "$name"; stack_down
  if need cp; then
    cold; start=$(offset); t0=$(now); stack_up "$name"; t1=$(now); window "$name" mount "$start" "$(echo "$t1 - $t0" | bc -l)"
    start=$(offset); t0=$(now); (cd "$DIR" && w_cp); t1=$(now); stack_down
    window "$name" cp "$start" "$(echo "$t1 - $t0" | bc -l)"
  elif wants mount; then
    cold; start=$(offset); t0=$(now); stack_up "$name"; t1=$(now); window "$name" mount "$start" "$(echo "$t1 - $t0" | bc -l)"
    stack_down
  fi
  wants ls && measure "$name" ls w_ls
  wants cat && measure "$name" cat w_cat
  if need git-commit; then
    cold; stack_up "$name"
    "${TO[@]}" cp -a "$SRC" "$DIR/repo"   # the repository's files: uncounted
    start=$(offset); t0=$(now); (cd "$DIR" && w_git_commit); t1=$(now); stack_down
    window "$name" git-commit "$start" "$(echo "$t1 - $t0" | bc -l)"
  fi
  for wl in git-status git-status-again; do
    wants "$wl" || continue
    [ "$wl" = git-status-again ] && ! wants git-status && measure "$name" git-status w_git_status
    measure "$name" "$wl" w_git_status
    [ ! -s "$W/git-status.out" ] || { echo "nas_roundtrips: git status on $name is not clean:" >&2; head -5 "$W/git-status.out" >&2; }
  done
  wants rm && measure "$name" rm w_rm
  need seq-write && measure "$name" seq-write w_seq_write
  wants seq-read && measure "$name" seq-read w_seq_read
done
ELAPSED=$(( $(date +%s) - T_START ))
VERSIONS="$(sshfs --version 2>&1 | grep -m1 '^SSHFS'); $(ssh -V 2>&1 | cut -d, -f1)"
[ -z "$ENVFS" ] || VERSIONS="$VERSIONS; $("$ENVFS" --version 2>/dev/null | head -1), binary of $(date -u -r "$ENVFS" +%Y-%m-%dT%H:%MZ) (tree at $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- src 2>/dev/null || echo ', src/ modified'))"
[[ " ${CONTENDERS[*]} " != *" gocryptfs "* ]] || VERSIONS="$VERSIONS; $(gocryptfs -version 2>/dev/null | cut -d';' -f1)"

python3 - "$RESULTS" "$LOG" "${JSON:-}" "$SSHFS_OPTS" "$FILES" "$ELAPSED" "${WORKLOADS[*]}" "${ENVFS:-}" "$ENVFS_OPTS" "bash scripts/nas_roundtrips.sh${ARGS:+ $ARGS}" "$VERSIONS" "$SEQ_MIB" <<'PY'
import collections, json, re, sys
results, log, json_out, sshfs_opts, files, elapsed, wanted, envfs, envfs_opts, command, versions, seq_mib = sys.argv[1:]
wanted = wanted.split()
data = open(log, "rb").read()
REQ = re.compile(rb"^debug\d: request \d+: ([A-Za-z0-9@._-]+)(.*?)\r?$", re.M)
UNKNOWN = re.compile(rb"Unknown (?:extended request|message)", re.M)
# Column order: the requests every workload makes first, then the rest as met.
ORDER = ["lstat", "stat", "fstat", "open", "read", "write", "close", "opendir", "readdir",
         "setstat", "fsetstat", "lsetstat", "mkdir", "rmdir", "remove", "rename", "posix-rename",
         "hardlink", "symlink", "readlink", "realpath", "fsync", "statvfs", "fstatvfs", "limits",
         "expand-path", "copy-data", "unknown"]
LEN = re.compile(rb" len (\d+)")
windows = collections.OrderedDict()
contenders = []
for line in open(results):
    c, w, start, end, secs = line.rstrip("\n").split("\t")
    if w not in wanted:
        continue
    if c not in contenders:
        contenders.append(c)
    seg = data[int(start):int(end)]
    counts = collections.Counter()
    rbytes = wbytes = 0
    for m in REQ.finditer(seg):
        t = m.group(1).decode()
        if t == "sent":  # the server's replies ("request N: sent status ...")
            continue
        counts[t] += 1
        if t in ("read", "write"):
            n = LEN.findall(m.group(2))
            if n:
                if t == "read":
                    rbytes += int(n[-1])
                else:
                    wbytes += int(n[-1])
    counts["unknown"] += len(UNKNOWN.findall(seg))
    if not counts["unknown"]:
        del counts["unknown"]
    windows[(w, c)] = {"total": sum(counts.values()), "requests": dict(counts),
                       "read_KiB": round(rbytes / 1024, 1), "write_KiB": round(wbytes / 1024, 1),
                       "seconds": round(float(secs), 2)}

LABEL = {"mount": "mount (sshfs, then the contender)", "cp": f"cp -a of {files} files",
         "ls": "ls -lR, cold", "cat": f"cat of {files} files, cold",
         "git-commit": f"git init + add + commit of {files} files", "git-status": "git status, cold, the first after the commit",
         "git-status-again": "git status, cold, again (the index refreshed by the first)",
         "rm": "rm -rf of the tree", "seq-write": f"dd of {seq_mib} MiB in 1 MiB writes + fsync",
         "seq-read": f"dd of the {seq_mib} MiB file back, cold"}
out = []
out.append(f"SFTP requests per workload ({command})")
out.append(f"versions: {versions}")
out.append(f"sshfs options: {sshfs_opts or '(none)'} (plus port, IdentityFile, BatchMode, no host key checks, -F /dev/null)")
if envfs:
    out.append(f"envfs: {envfs}" + (f", mounted with -o {envfs_opts}" if envfs_opts else ", default mount options"))
out.append("Every workload runs on a freshly mounted stack after drop_caches; counts include what the")
out.append("unmount flushes. 'x plain' = total / plain sshfs's total (lower is better; 1.00 = no extra round trips).")
out.append("Seconds are wall time at 0 ms added latency with the server logging every request (indicative only).")
for w in [w for w in ["mount", "cp", "ls", "cat", "git-commit", "git-status", "git-status-again", "rm", "seq-write", "seq-read"] if w in wanted]:
    rows = [(c, windows[(w, c)]) for c in contenders if (w, c) in windows]
    if not rows:
        continue
    types = [t for t in ORDER if any(t in r["requests"] for _, r in rows)]
    types += sorted({t for _, r in rows for t in r["requests"]} - set(types))
    base = windows.get((w, "plain"), {}).get("total")
    head = ["contender", "total", "x plain"] + types + ["KiB read", "KiB written", "s"]
    body = []
    for c, r in rows:
        ratio = f"{r['total'] / base:.2f}" if base else "-"
        body.append([c, str(r["total"]), ratio] + [str(r["requests"].get(t, 0)) for t in types]
                    + [f"{r['read_KiB']:.0f}", f"{r['write_KiB']:.0f}", f"{r['seconds']:.2f}"])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    out.append("")
    out.append(f"== {LABEL[w]}")
    for i, row in enumerate([head] + body):
        out.append("  ".join(x.ljust(widths[j]) if j == 0 else x.rjust(widths[j]) for j, x in enumerate(row)).rstrip())
out.append("")
out.append(f"({elapsed} s in all)")
print("\n".join(out))
if json_out:
    js = {"command": command, "versions": versions, "sshfs_options": sshfs_opts, "files": int(files), "envfs": envfs,
          "envfs_options": envfs_opts, "elapsed_s": int(elapsed),
          "workloads": {w: {c: windows[(w, c)] for c in contenders if (w, c) in windows}
                        for w in wanted}}
    with open(json_out, "w") as f:
        json.dump(js, f, indent=1)
        f.write("\n")
PY
