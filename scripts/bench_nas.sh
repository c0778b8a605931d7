#!/usr/bin/env bash
# Network-backing benchmark (issue 16): envfs over an sshfs share, against plain sshfs and
# gocryptfs over the same share, at the round-trip times of a LAN NAS and a farther one.
# The share is an OpenSSH server on 127.0.0.1 (throwaway keys, internal-sftp) reached
# through scripts/tcp_delay_proxy.py, which adds --latencies milliseconds in each direction.
# Contenders are interleaved within each run, as in scripts/bench.sh; the table reports the
# median of the runs per latency, and envfs's ratio to each peer.
#
#   bash scripts/bench_nas.sh [--runs N] [--latencies MS,MS] [--files N] [--git-files N]
#        [--tar-files N] [--size-mb MB] [--only CONTENDERS] [--workloads LIST]
#        [--sshfs-opts OPTS] [--envfs BIN] [--out FILE] [--section NAME] [--quick]
#
# Contenders (--only picks some): sshfs (the share itself), gocryptfs (gocryptfs over the
# share, defaults), envfs (envfs init/mount on the share, defaults, local key file).
# Workloads (--workloads picks some), each on a stack (sshfs, then the contender) mounted
# afresh after drop_caches where it says cold:
#   seq_write  dd of a --size-mb file, 1 MiB blocks, fsync at the end (MB/s)
#   seq_read   dd of it back, cold (MB/s)
#   cp         cp -a of --files small files (1-16 KiB, 10 per directory) (s)
#   ls         ls -lR of that tree, cold (s)
#   untar      tar x of a generated archive of --tar-files small files (s)
#   git_status git status, cold, in a repository of --git-files files (s); the repository is
#              made once per contender (cp, git add, commit, one untimed status) before the
#              timed runs, at 0 ms added latency
# sshfs has no stable inode numbers (SFTP carries none; libfuse numbers nodes as it meets
# them), so after every remount git sees each entry's inode changed and re-reads every
# file: a cold git status on any sshfs-backed stack costs a read of the whole repository.
#
# Sizes: the issue asks for 1,000 files, a 5,000-file repository and 256 MiB. Over sshfs a
# small-file operation costs one SFTP round trip per request, and cp -a of one file is about
# eleven requests in series, so at +5 ms each way those sizes take over an hour for 3 runs
# on a 2-core machine; the defaults (200 files, a 1,000-file repository, 200-file archive,
# 256 MiB) are scaled so that `--runs 3 --latencies 0,5` takes about 22 minutes (one run at
# +5 ms measured 6.5 minutes, at 0 ms under 1), and the output states the sizes used. --quick: 1 run, tiny sizes, for
# smoke-testing (and it writes no file unless --out is given).
#
# Output: the table on stdout, and into the NAME section (default network-backing) of
# --out, between <!-- NAME:begin --> and <!-- NAME:end --> (a "## ..." heading first in the
# section is kept). Without --out: docs/BENCHMARKS.md if it has the markers, else stdout
# only. An --out file without the markers gets the section appended.
#
# Needs root (drop_caches, mounts, sshd). Installs openssh-server, sshfs, fuse3, gocryptfs,
# git and bc from Debian if missing. Work happens in $BENCH_DIR (default
# /var/tmp/envfs-bench-nas). All traffic stays on 127.0.0.1; every wait is bounded, every
# workload under `timeout`; everything started is stopped by its PID and everything
# mounted is unmounted on exit, error or signal.
set -euo pipefail
CALLER=$PWD
cd "$(dirname "$0")/.."
ROOT=$PWD
abspath() { case $1 in /*) echo "$1" ;; *) echo "$CALLER/$1" ;; esac; }

ARGS="$*"
RUNS=3
LATENCIES=0,5
FILES=200
GIT_FILES=1000
TAR_FILES=200
SIZE_MB=256
ONLY=""
WORKLOADS_OPT=""
SSHFS_OPTS="reconnect,ServerAliveInterval=15"
ENVFS=""
OUT=""
SECTION=network-backing
QUICK=0
set_runs=0 set_files=0 set_git=0 set_tar=0 set_size=0
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; set_runs=1; shift 2 ;;
    --latencies) LATENCIES=$2; shift 2 ;;
    --files) FILES=$2; set_files=1; shift 2 ;;
    --git-files) GIT_FILES=$2; set_git=1; shift 2 ;;
    --tar-files) TAR_FILES=$2; set_tar=1; shift 2 ;;
    --size-mb) SIZE_MB=$2; set_size=1; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --workloads) WORKLOADS_OPT=$2; shift 2 ;;
    --sshfs-opts) SSHFS_OPTS=$2; shift 2 ;;
    --envfs) ENVFS=$(abspath "$2"); shift 2 ;;
    --out) OUT=$(abspath "$2"); shift 2 ;;
    --section) SECTION=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "bench_nas: unknown option $1 (--help)" >&2; exit 2 ;;
  esac
done
if [ "$QUICK" = 1 ]; then  # explicit options still win
  [ $set_runs = 1 ] || RUNS=1
  [ $set_files = 1 ] || FILES=50
  [ $set_git = 1 ] || GIT_FILES=100
  [ $set_tar = 1 ] || TAR_FILES=50
  [ $set_size = 1 ] || SIZE_MB=16
fi
for v in RUNS FILES GIT_FILES TAR_FILES SIZE_MB; do
  [[ ${!v} =~ ^[0-9]+$ ]] && [ "${!v}" -gt 0 ] || { echo "bench_nas: ${v,,} must be a positive number" >&2; exit 2; }
done
IFS=, read -r -a LATS <<< "$LATENCIES"
for l in "${LATS[@]}"; do
  [[ $l =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "bench_nas: bad latency $l (milliseconds, e.g. 0,5)" >&2; exit 2; }
done
ALL_CONTENDERS=(sshfs gocryptfs envfs)
CONTENDERS=("${ALL_CONTENDERS[@]}")
[ -z "$ONLY" ] || IFS=, read -r -a CONTENDERS <<< "$ONLY"
for c in "${CONTENDERS[@]}"; do
  [[ " ${ALL_CONTENDERS[*]} " == *" $c "* ]] || { echo "bench_nas: unknown contender $c (${ALL_CONTENDERS[*]})" >&2; exit 2; }
done
ALL_WORKLOADS=(seq_write seq_read cp ls untar git_status)
WORKLOADS=("${ALL_WORKLOADS[@]}")
[ -z "$WORKLOADS_OPT" ] || IFS=, read -r -a WORKLOADS <<< "$WORKLOADS_OPT"
for w in "${WORKLOADS[@]}"; do
  [[ " ${ALL_WORKLOADS[*]} " == *" $w "* ]] || { echo "bench_nas: unknown workload $w (${ALL_WORKLOADS[*]})" >&2; exit 2; }
done
wants() { [[ " ${WORKLOADS[*]} " == *" $1 "* ]]; }
has() { [[ " ${CONTENDERS[*]} " == *" $1 "* ]]; }

[ "$(id -u)" -eq 0 ] || { echo "bench_nas: run as root (drop_caches, mounts, sshd)" >&2; exit 1; }
missing=()
for p in openssh-server openssh-client sshfs fuse3 git bc $(has gocryptfs && echo gocryptfs); do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if has envfs; then
  if [ -z "$ENVFS" ]; then cargo build --release -q; ENVFS=$ROOT/target/release/envfs; fi
  [ -x "$ENVFS" ] || { echo "bench_nas: no envfs binary at $ENVFS" >&2; exit 1; }
fi

# Where the table goes: see the header.
if [ -z "$OUT" ] && [ "$QUICK" = 0 ] && grep -q "<!-- $SECTION:begin -->" docs/BENCHMARKS.md 2>/dev/null; then
  OUT=$ROOT/docs/BENCHMARKS.md
fi

W=${BENCH_DIR:-/var/tmp/envfs-bench-nas}
case $W in /*) ;; *) echo "bench_nas: BENCH_DIR must be absolute" >&2; exit 2 ;; esac
if findmnt -rn -o TARGET | grep -q "^$W/"; then
  echo "bench_nas: something is still mounted under $W (findmnt | grep $W); unmount it first" >&2; exit 1
fi
rm -rf "$W"; mkdir -p "$W"/{etc,export,share,mnt,config}
ETC=$W/etc SHARE=$W/share MNT=$W/mnt
RESULTS=$W/results.tsv
: > "$RESULTS"
export XDG_CONFIG_HOME=$W/config XDG_STATE_HOME=$W/config   # envfs's known-vaults file stays in the work directory

SSHD_PID="" SSHFS_PID="" TOP_PID="" PROXY_PID=""
wait_gone() { local i; for ((i = 0; i < $2; i++)); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done; return 1; }
stop_pid() {  # TERM, then KILL after 5 s; reap it (our child)
  [ -n "$1" ] || return 0
  kill -0 "$1" 2>/dev/null || { wait "$1" 2>/dev/null || true; return 0; }
  kill "$1" 2>/dev/null || true
  wait_gone "$1" 50 || kill -9 "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
unmount() {
  local i
  for ((i = 0; i < 50; i++)); do
    mountpoint -q "$1" 2>/dev/null || return 0
    fusermount3 -u "$1" 2>/dev/null && return 0
    sleep 0.2
  done
  umount -l "$1" 2>/dev/null || true
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  unmount "$MNT"; stop_pid "$TOP_PID"
  unmount "$SHARE"; stop_pid "$SSHFS_PID"
  stop_pid "$PROXY_PID"
  if [ -n "$SSHD_PID" ]; then
    for p in $(pgrep -P "$SSHD_PID" 2>/dev/null); do stop_pid "$p"; done
    stop_pid "$SSHD_PID"
  fi
  if [ $rc -eq 0 ]; then rm -rf "$W/export" "$W/src"; else echo "bench_nas: stopped (exit $rc); logs in $W" >&2; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- the server, and the delaying link to it ----------------------------------------------------
mkdir -p /run/sshd
for key in host_key user_key; do ssh-keygen -q -t ed25519 -N "" -C bench-nas -f "$ETC/$key"; done
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SSHD_PORT=$(free_port)
cat > "$ETC/sshd_config" <<EOF
Port $SSHD_PORT
ListenAddress 127.0.0.1
HostKey $ETC/host_key
AuthorizedKeysFile $ETC/user_key.pub
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
PidFile none
EOF
/usr/sbin/sshd -D -f "$ETC/sshd_config" -E "$ETC/sshd.log" < /dev/null & SSHD_PID=$!
for ((i = 0; i < 100; i++)); do
  (exec 3<>"/dev/tcp/127.0.0.1/$SSHD_PORT") 2>/dev/null && break
  kill -0 "$SSHD_PID" 2>/dev/null || { echo "bench_nas: sshd exited: $(cat "$ETC/sshd.log")" >&2; exit 1; }
  sleep 0.1
done
[ $i -lt 100 ] || { echo "bench_nas: sshd did not listen within 10 s" >&2; exit 1; }

PROXY_PORT=""
start_proxy() {  # start_proxy MS: the link to the server, adding MS ms each way
  : > "$W/proxy.out"
  python3 "$ROOT/scripts/tcp_delay_proxy.py" --listen 127.0.0.1:0 --upstream "127.0.0.1:$SSHD_PORT" \
    --delay-ms "$1" > "$W/proxy.out" 2>>"$W/proxy.log" & PROXY_PID=$!
  local i
  for ((i = 0; i < 100; i++)); do
    PROXY_PORT=$(sed -n 's/^ready 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$W/proxy.out")
    [ -z "$PROXY_PORT" ] || return 0
    kill -0 "$PROXY_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "bench_nas: the delay proxy did not start; see $W/proxy.log" >&2; exit 1
}
stop_proxy() { stop_pid "$PROXY_PID"; PROXY_PID=""; }

SSH_FIXED="IdentityFile=$ETC/user_key,StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,BatchMode=yes,LogLevel=ERROR"
printf 'benchpass\n' > "$W/gc.pass"

# --- inputs, on the local disk ----------------------------------------------------------------------
gen_tree() {  # gen_tree DIR N SEED: N files of 1-16 KiB, 10 to a directory, fixed mtimes
  python3 - "$1" "$2" "$3" <<'PY'
import os, random, sys
root, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(seed)
dirs = max(1, min(100, (n + 9) // 10)) if n <= 1000 else (n + 49) // 50
for i in range(n):
    d = os.path.join(root, f"d{i % dirs:03d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05d}"), "wb") as f:
        f.write(rnd.randbytes(rnd.randint(1024, 16384)))
PY
  find "$1" -exec touch -h -d 2024-01-01T00:00:00Z {} +
}
SRC=$W/src
gen_tree "$SRC/small" "$FILES" 1
gen_tree "$SRC/repo" "$GIT_FILES" 2
# The archive: a source-tree-like layout (nested directories, mostly small files).
python3 - "$SRC/untar.tar" "$TAR_FILES" <<'PY'
import io, random, sys, tarfile
out, n = sys.argv[1], int(sys.argv[2])
rnd = random.Random(3)
with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as tar:
    made = set()
    for i in range(n):
        parts = [f"m{rnd.randrange(8)}", f"s{rnd.randrange(6)}"][: rnd.randrange(3)]
        path = "/".join(["src"] + parts + [f"file{i:05d}.rs"])
        for k in range(1, len(path.split("/"))):
            d = "/".join(path.split("/")[:k])
            if d not in made:
                made.add(d)
                ti = tarfile.TarInfo(d); ti.type = tarfile.DIRTYPE; ti.mode = 0o755; ti.mtime = 1704067200
                tar.addfile(ti)
        size = min(int(rnd.lognormvariate(8.0, 1.0)), 64 * 1024)
        ti = tarfile.TarInfo(path); ti.size = size; ti.mode = 0o644; ti.mtime = 1704067200
        tar.addfile(ti, io.BytesIO(rnd.randbytes(size)))
PY
ARCHIVE_KIB=$(( $(stat -c %s "$SRC/untar.tar") / 1024 ))

# --- the stack ----------------------------------------------------------------------------------
stack_up() {  # stack_up NAME: sshfs at $SHARE (through the proxy), the contender at $MNT; sets DIR
  local name=$1 i
  mkdir -p "$W/export/$name"
  sshfs -f "root@127.0.0.1:$W/export/$name" "$SHARE" -p "$PROXY_PORT" -F /dev/null \
    -o "$SSH_FIXED" ${SSHFS_OPTS:+-o "$SSHFS_OPTS"} < /dev/null 2>>"$W/sshfs.log" & SSHFS_PID=$!
  for ((i = 0; i < 400; i++)); do
    mountpoint -q "$SHARE" && break
    kill -0 "$SSHFS_PID" 2>/dev/null || { echo "bench_nas: sshfs exited; see $W/sshfs.log" >&2; exit 1; }
    sleep 0.05
  done
  mountpoint -q "$SHARE" || { echo "bench_nas: sshfs did not mount within 20 s" >&2; exit 1; }
  case $name in
    sshfs) DIR=$SHARE; return ;;
    envfs)
      if [ ! -e "$SHARE/vault/envfs.conf" ]; then
        mkdir -p "$SHARE/vault"
        "$ENVFS" init "$SHARE/vault" --key-file "$W/envfs.key" > /dev/null
      fi
      "$ENVFS" mount "$SHARE/vault" "$MNT" --key-file "$W/envfs.key" -f < /dev/null 2>>"$W/envfs.log" & TOP_PID=$! ;;
    gocryptfs)
      if [ ! -e "$SHARE/gc/gocryptfs.conf" ]; then
        mkdir -p "$SHARE/gc"
        gocryptfs -init -q -passfile "$W/gc.pass" "$SHARE/gc" > /dev/null 2>>"$W/gocryptfs.log"
      fi
      gocryptfs -fg -q -passfile "$W/gc.pass" "$SHARE/gc" "$MNT" < /dev/null > /dev/null 2>>"$W/gocryptfs.log" & TOP_PID=$! ;;
  esac
  for ((i = 0; i < 600; i++)); do
    mountpoint -q "$MNT" && break
    kill -0 "$TOP_PID" 2>/dev/null || { echo "bench_nas: $name exited before mounting; see $W/$name.log" >&2; exit 1; }
    sleep 0.05
  done
  mountpoint -q "$MNT" || { echo "bench_nas: $name did not mount within 30 s" >&2; exit 1; }
  DIR=$MNT
}
stack_down() {
  if [ -n "$TOP_PID" ]; then
    unmount "$MNT"
    wait_gone "$TOP_PID" 600 || echo "bench_nas: daemon $TOP_PID still running 60 s after unmount" >&2
    stop_pid "$TOP_PID"; TOP_PID=""
  fi
  unmount "$SHARE"
  wait_gone "$SSHFS_PID" 100 || true
  stop_pid "$SSHFS_PID"; SSHFS_PID=""
}
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >> "$RESULTS"; }  # latency contender workload run value
T=900  # seconds any one workload may take
GIT=(git -c safe.directory='*' -c user.name=bench -c user.email=bench@localhost -c init.defaultBranch=main
     -c core.fsmonitor=false -c gc.auto=0 -c maintenance.auto=false)

# The git repositories, once per contender, at 0 ms: setup, not timed.
setup_contender() {
  local name=$1
  stack_up "$name"
  if wants git_status; then
    timeout --foreground -k 10 $T cp -a "$SRC/repo" "$DIR/repo"
    (cd "$DIR/repo" && timeout --foreground -k 10 $T "${GIT[@]}" init -q && timeout --foreground -k 10 $T "${GIT[@]}" add -A \
      && timeout --foreground -k 10 $T "${GIT[@]}" commit -q -m files && timeout --foreground -k 10 $T "${GIT[@]}" status --porcelain > /dev/null)
  fi
  stack_down
}

bench_one() {  # bench_one LATENCY NAME RUN
  local lat=$1 name=$2 run=$3 t0 t1 tag="l${1}r$3"
  if wants seq_write || wants seq_read; then
    cold; stack_up "$name"
    t0=$(now); timeout --foreground -k 10 $T dd if=/dev/zero of="$DIR/big" bs=1M count="$SIZE_MB" conv=fsync status=none; t1=$(now)
    wants seq_write && record "$lat" "$name" seq_write "$run" "$(echo "$SIZE_MB / ($t1 - $t0)" | bc -l)"
    if wants seq_read; then
      stack_down; cold; stack_up "$name"
      t0=$(now); timeout --foreground -k 10 $T dd if="$DIR/big" of=/dev/null bs=1M status=none; t1=$(now)
      record "$lat" "$name" seq_read "$run" "$(echo "$SIZE_MB / ($t1 - $t0)" | bc -l)"
    fi
    rm -f "$DIR/big"   # untimed
    stack_down
  fi
  if wants cp || wants ls || wants untar; then
    cold; stack_up "$name"
    if wants cp || wants ls; then
      t0=$(now); timeout --foreground -k 10 $T cp -a "$SRC/small" "$DIR/small-$tag"; t1=$(now)
      wants cp && record "$lat" "$name" cp "$run" "$(echo "$t1 - $t0" | bc -l)"
    fi
    if wants ls; then
      stack_down; cold; stack_up "$name"
      t0=$(now); timeout --foreground -k 10 $T ls -lR "$DIR/small-$tag" > /dev/null; t1=$(now)
      record "$lat" "$name" ls "$run" "$(echo "$t1 - $t0" | bc -l)"
    fi
    if wants untar; then
      mkdir -p "$DIR/untar-$tag"
      t0=$(now); timeout --foreground -k 10 $T tar -C "$DIR/untar-$tag" -xf "$SRC/untar.tar"; t1=$(now)
      record "$lat" "$name" untar "$run" "$(echo "$t1 - $t0" | bc -l)"
    fi
    stack_down
  fi
  if wants git_status; then
    cold; stack_up "$name"
    t0=$(now); (cd "$DIR/repo" && timeout --foreground -k 10 $T "${GIT[@]}" status --porcelain > "$W/git-status.out"); t1=$(now)
    record "$lat" "$name" git_status "$run" "$(echo "$t1 - $t0" | bc -l)"
    [ ! -s "$W/git-status.out" ] || { echo "bench_nas: git status on $name is not clean:" >&2; head -3 "$W/git-status.out" >&2; }
    stack_down
  fi
}

T_START=$(date +%s)
start_proxy 0
for c in "${CONTENDERS[@]}"; do
  echo "bench_nas: setup: $c" >&2
  setup_contender "$c"
done
stop_proxy
for lat in "${LATS[@]}"; do
  start_proxy "$lat"
  for run in $(seq "$RUNS"); do
    for c in "${CONTENDERS[@]}"; do
      echo "bench_nas: +$lat ms, run $run/$RUNS: $c ($(( $(date +%s) - T_START )) s)" >&2
      bench_one "$lat" "$c" "$run"
    done
  done
  stop_proxy
done
ELAPSED=$(( $(date +%s) - T_START ))

VERSIONS="$(sshfs --version 2>&1 | grep -m1 '^SSHFS'); $(ssh -V 2>&1 | cut -d, -f1)"
has gocryptfs && VERSIONS="$VERSIONS; $(gocryptfs -version 2>/dev/null | cut -d';' -f1)"
has envfs && VERSIONS="$VERSIONS; $("$ENVFS" --version 2>/dev/null | head -1), binary of $(date -u -r "$ENVFS" +%Y-%m-%dT%H:%MZ) (tree at $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- src 2>/dev/null || echo ', src/ modified'))"
SCALED=""
[ "$FILES" -ge 1000 ] && [ "$GIT_FILES" -ge 5000 ] && [ "$SIZE_MB" -ge 256 ] || \
  SCALED="Sizes are scaled down from the issue's (1,000 small files, a 5,000-file repository, 256 MiB) so that three runs at two latencies fit in about 25 minutes on a 2-core machine; pass --files, --git-files, --tar-files and --size-mb for others."
[ "$QUICK" = 0 ] || SCALED="--quick: one run at tiny sizes, a smoke test; not a measurement."

export NAS_RESULTS="$RESULTS" NAS_OUT="${OUT:-}" NAS_SECTION="$SECTION" NAS_ROOT="$ROOT" NAS_W="$W" NAS_RUNS="$RUNS" \
  NAS_LATENCIES="$LATENCIES" NAS_CONTENDERS="${CONTENDERS[*]}" NAS_ELAPSED="$ELAPSED" NAS_VERSIONS="$VERSIONS" \
  NAS_SCALED="$SCALED" NAS_SSHFS_OPTS="$SSHFS_OPTS" NAS_COMMAND="bash scripts/bench_nas.sh${ARGS:+ $ARGS}" \
  NAS_SIZE_MB="$SIZE_MB" NAS_FILES="$FILES" NAS_TAR_FILES="$TAR_FILES" NAS_ARCHIVE_KIB="$ARCHIVE_KIB" NAS_GIT_FILES="$GIT_FILES"
python3 - <<'PY'
import collections, datetime, os, platform, re, statistics, subprocess, sys
E = os.environ
sys.dont_write_bytecode = True   # no scripts/__pycache__ in the work tree
sys.path.insert(0, os.path.join(E["NAS_ROOT"], "scripts"))
import bench_report as br   # the same table style and ratio orientation as docs/BENCHMARKS.md
order = ["seq_write", "seq_read", "cp", "ls", "untar", "git_status"]
labels = {
    "seq_write": f"sequential write, {E['NAS_SIZE_MB']} MiB, fsync (MB/s)",
    "seq_read": f"sequential read, {E['NAS_SIZE_MB']} MiB, cold (MB/s)",
    "cp": f"cp -a of {E['NAS_FILES']} small files (s)",
    "ls": "ls -lR of them, cold (s)",
    "untar": f"tar x of {E['NAS_TAR_FILES']} files, {E['NAS_ARCHIVE_KIB']} KiB (s)",
    "git_status": f"git status, {E['NAS_GIT_FILES']}-file repository, cold (s)",
}
br.ORDER, br.LABELS, br.HIGHER_IS_BETTER = order, labels, {"seq_write", "seq_read"}
data = collections.defaultdict(list)
for line in open(E["NAS_RESULTS"]):
    lat, c, w, _run, v = line.rstrip("\n").split("\t")
    data[(lat, c, w)].append(float(v))
lats = E["NAS_LATENCIES"].split(",")
contenders = [c for c in ["sshfs", "gocryptfs", "envfs"] if c in E["NAS_CONTENDERS"].split()]
peers = [c for c in contenders if c != "envfs"]
pairs = [("envfs", p) for p in peers] if "envfs" in contenders else []
sh = lambda cmd: subprocess.run(["sh", "-c", cmd], capture_output=True, text=True).stdout.strip()
cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2")
fs = sh(f"df -T {E['NAS_W']} | tail -1 | awk '{{print $2}}'")
runs = E["NAS_RUNS"]
parts = [f"`{E['NAS_COMMAND']}` on {datetime.date.today().isoformat()}: medians of {runs} "
         f"run{'' if runs == '1' else 's'}, contenders interleaved within each run, {E['NAS_ELAPSED']} s in all. "
         "Ratios are envfs relative to each peer, oriented so that **> 1 means envfs is better** "
         "(more MB/s, or fewer seconds).",
         "",
         f"Machine: {platform.machine()}, {cpu}, {sh('nproc')} cores, kernel {platform.release()}; "
         f"the server's export on {fs}. Versions: {E['NAS_VERSIONS']}.",
         "",
         "The share: an OpenSSH server on 127.0.0.1 (internal-sftp), mounted with "
         f"`sshfs -o {E['NAS_SSHFS_OPTS'] or '(defaults)'}` through scripts/tcp_delay_proxy.py, which adds "
         "the stated delay to each direction (the round trip grows by twice that). gocryptfs and envfs "
         "run on that share with their defaults. Cold: the whole stack is remounted (sshfs keeps its "
         "own cache) after dropping the kernel's caches. git status over sshfs re-reads every file "
         "after a remount (SFTP has no inode numbers, so git sees them all changed)."]
if E["NAS_SCALED"]:
    parts += ["", E["NAS_SCALED"]]
for lat in lats:
    med = {(c, w): statistics.median(v) for (l, c, w), v in data.items() if l == lat}
    if not med:
        continue
    parts += ["", f"**+{lat} ms each way** (+{float(lat) * 2:g} ms per round trip):", "",
              br.table(med, contenders, pairs)]
body = "\n".join(parts)
print(body)
out, section = E["NAS_OUT"], E["NAS_SECTION"]
if out:
    try:
        old = open(out).read()
    except FileNotFoundError:
        old = ""
    pattern = re.compile(rf"<!-- {re.escape(section)}:begin -->.*?<!-- {re.escape(section)}:end -->", re.S)
    found = pattern.search(old)
    # A "## ..." heading first in the section survives the rerun; a new section gets one.
    first = found.group(0).split("\n")[1] if found else "## Network backing store (sshfs)"
    heading = first + "\n\n" if first.startswith("#") else ""
    block = f"<!-- {section}:begin -->\n{heading}{body}\n<!-- {section}:end -->"
    new = pattern.sub(lambda _: block, old) if found else (old.rstrip("\n") + "\n\n" if old else "") + block + "\n"
    with open(out, "w") as f:
        f.write(new)
    print(f"bench_nas: wrote the {section} section of {out}", file=sys.stderr)
PY
