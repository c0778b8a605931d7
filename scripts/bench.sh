#!/usr/bin/env bash
# Side-by-side benchmark: envfs against the plain backing directory, a FUSE passthrough
# (bindfs: the floor any FUSE filesystem pays), gocryptfs and securefs, on the same disk, in
# one invocation. Contenders are interleaved within each run so machine drift hits all
# alike; the table reports the median of the runs, and ratios to each peer.
#
#   bash scripts/bench.sh [--runs N] [--size-mb MB] [--files N] [--out FILE] [--only a,b]
#                         [--section NAME] [--kms-latency-ms MS]
#   bash scripts/bench.sh --network [OPTIONS]
#
# --network runs the network-backing section instead (envfs, gocryptfs and plain sshfs over
# one sshfs share at 0 and 5 ms added each way): scripts/bench_nas.sh, which takes every
# option after --network (`bash scripts/bench_nas.sh --help`) and writes the
# "network-backing" section of docs/BENCHMARKS.md.
#
# Contenders: plain, bindfs, gocryptfs, securefs, and envfs variants:
#   envfs          local key file, defaults (4 KiB chunks)
#   envfs-kms      KMS-compatible server (moto) on loopback, DEK cache kept warm: "cold"
#                  steps drop the kernel's caches but keep the daemon (and its DEK cache)
#   envfs-kms10    the same behind scripts/kms_proxy.py adding --kms-latency-ms (10) per call
#   envfs-cNk      local key, N KiB chunks (the chunk-size sweep)
#   envfs-wb       local key, mounted with -o writeback_cache
#   envfs-nowatch  local key, mounted with -o nowatch (short timeouts, no change
#                  notification): runs the freshness step only, to compare with the watched
#                  default
#   envfs-noacl    local key, mounted with -o noacl (no POSIX ACLs): runs the small-file
#                  steps only, to show what ACL support costs a listing
# --only picks some; --section NAME writes the table into the NAME section of --out
# (between <!-- NAME:begin/end --> markers) instead of rewriting the main table.
#
# Needs root (drop_caches, mounts). Installs fio, bindfs, gocryptfs and securefs from
# Debian, and moto (scripts/setup.sh), if missing. Work happens in $BENCH_DIR (default
# /var/tmp/envfs-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

ARGS="$*"
RUNS=3
SIZE_MB=1024
FILES=10000
OUT=docs/BENCHMARKS.md
ONLY=""
SECTION=""
KMS_LATENCY=10
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --size-mb) SIZE_MB=$2; shift 2 ;;
    --files) FILES=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --section) SECTION=$2; shift 2 ;;
    --kms-latency-ms) KMS_LATENCY=$2; shift 2 ;;
    --network) shift; exec bash scripts/bench_nas.sh "$@" ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (drop_caches, mounts)" >&2; exit 1; }
missing=()
for p in fio bindfs gocryptfs securefs fuse3; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cargo build --release -q
ENVFS=$ROOT/target/release/envfs

W=${BENCH_DIR:-/var/tmp/envfs-bench}
rm -rf "$W"; mkdir -p "$W"
RESULTS=$W/results.tsv
: > "$RESULTS"
# envfs's host state (the vaults this host trusts) lives with the run, so a rerun's fresh
# vaults at the same paths are not refused as replaced ones.
export XDG_CONFIG_HOME=$W/config XDG_STATE_HOME=$W/config
CONTENDERS=(plain bindfs gocryptfs securefs envfs envfs-nowatch envfs-noacl envfs-kms envfs-kms10)
FRESH_TRIALS=${FRESH_TRIALS:-20}
if [ -n "$ONLY" ]; then IFS=, read -r -a CONTENDERS <<< "$ONLY"; fi

MOTO_PID=""; PROXY_PID=""
cleanup() {
  for m in "$W"/*-mnt; do mountpoint -q "$m" 2>/dev/null && { fusermount3 -u "$m" 2>/dev/null || umount -l "$m"; }; done
  [ -z "$MOTO_PID" ] || kill "$MOTO_PID" "$PROXY_PID" 2>/dev/null || true
}
trap cleanup EXIT

# --- the KMS-compatible server, when a KMS contender runs -------------------------------------
if printf '%s\n' "${CONTENDERS[@]}" | grep -q '^envfs-kms'; then
  VPY=$ROOT/.venv/bin/python3   # moto lives in the project's venv (scripts/setup.sh)
  "$VPY" -c 'import moto' 2>/dev/null || bash scripts/setup.sh >/dev/null
  free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
  KMS_PORT=$(free_port); PROXY_PORT=$(free_port)
  "$VPY" -m moto.server -H 127.0.0.1 -p "$KMS_PORT" >/dev/null 2>&1 & MOTO_PID=$!
  python3 scripts/kms_proxy.py --listen 127.0.0.1:"$PROXY_PORT" --upstream http://127.0.0.1:"$KMS_PORT" \
    --latency-ms "$KMS_LATENCY" 2>"$W/proxy.log" & PROXY_PID=$!
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$KMS_PORT/" && break; sleep 0.1; done
  export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
  "$VPY" -c "
import boto3
k=boto3.client('kms',endpoint_url='http://127.0.0.1:$KMS_PORT',region_name='us-east-1')
key=k.create_key()['KeyMetadata']; k.create_alias(AliasName='alias/envfs-bench',TargetKeyId=key['KeyId'])"
fi
kms_endpoint() { case $1 in envfs-kms10) echo "http://127.0.0.1:$PROXY_PORT" ;; *) echo "http://127.0.0.1:$KMS_PORT" ;; esac; }

# --- inputs prepared once, on the plain disk ------------------------------------------------
SMALL_SRC=$W/small-src
mkdir -p "$SMALL_SRC"
python3 - "$SMALL_SRC" "$FILES" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rnd = random.Random(1)
for i in range(n):
    d = os.path.join(root, f"d{i % 100:02d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05d}"), "wb") as f:
        f.write(rnd.randbytes(rnd.randint(1024, 16384)))
PY
ARCHIVE=$W/source.tar
CRATES=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/ | head -1)
# A real source tree: the vendored sources of the crates this project builds with.
tar -C "$CRATES" -cf "$ARCHIVE" $(ls "$CRATES" | grep -E '^(libc|syn|proptest|clap_builder|aes|tracing-subscriber)-' )
ARCHIVE_FILES=$(tar -tf "$ARCHIVE" | grep -vc '/$')

# --- contenders ------------------------------------------------------------------------------
# setup NAME: create backing + mountpoint, mount; echo the directory to benchmark in.
mount_contender() {
  local name=$1 b=$W/$1-backing m=$W/$1-mnt
  mkdir -p "$b" "$m"
  case $name in
    plain) echo "$b"; return ;;
    bindfs) bindfs "$b" "$m" ;;
    gocryptfs)
      [ -f "$b/gocryptfs.conf" ] || gocryptfs -q -init -passfile <(echo benchpass) "$b" >/dev/null 2>&1
      gocryptfs -q -passfile <(echo benchpass) "$b" "$m" 2>/dev/null ;;
    securefs)
      [ -f "$b/.securefs.json" ] || securefs create --pass benchpass "$b" >/dev/null 2>&1
      securefs mount -b --pass benchpass "$b" "$m" >/dev/null 2>&1
      for _ in $(seq 50); do mountpoint -q "$m" && break; sleep 0.1; done ;;
    envfs-kms|envfs-kms10)
      # Keep the daemon across "cold" steps: its DEK cache is what this contender measures.
      if ! mountpoint -q "$m"; then
        [ -f "$b/envfs.conf" ] || AWS_ENDPOINT_URL_KMS=$(kms_endpoint "$name") "$ENVFS" init "$b" --kms-key alias/envfs-bench >/dev/null
        AWS_ENDPOINT_URL_KMS=$(kms_endpoint "$name") "$ENVFS" mount "$b" "$m"
      fi ;;
    envfs|envfs-c*k|envfs-wb|envfs-nowatch|envfs-noacl)
      local init_opts=() mount_opts=()
      case $name in
        envfs-c*k) init_opts=(--chunk-size $(( ${name//[^0-9]/} * 1024 ))) ;;
        envfs-wb) mount_opts=(-o writeback_cache) ;;
        envfs-nowatch) mount_opts=(-o nowatch) ;;
        envfs-noacl) mount_opts=(-o noacl) ;;
      esac
      [ -f "$b/envfs.conf" ] || "$ENVFS" init "$b" --key-file "$W/envfs.key" "${init_opts[@]}" >/dev/null
      "$ENVFS" mount "$b" "$m" --key-file "$W/envfs.key" "${mount_opts[@]}" ;;
  esac
  echo "$m"
}

unmount_contender() {
  local name=$1 m=$W/$1-mnt
  [ "$name" = plain ] && return
  if [[ $name == envfs-kms* ]] && [ "${2:-}" != final ]; then return; fi
  for _ in $(seq 50); do
    fusermount3 -u "$m" 2>/dev/null && break
    umount "$m" 2>/dev/null && break
    sleep 0.2
  done
  for _ in $(seq 50); do mountpoint -q "$m" || break; sleep 0.1; done
}

# The freshness step's outside writer: a second view of the same backing store, changing it
# the way a sync client or another host would (for the encrypted contenders, a second
# mount of the same backing directory, so what lands there is valid ciphertext; envfs's
# writer mount is `-o shared`, the mode for a store other writers change).
mount_writer() {
  local name=$1 b=$W/$1-backing m=$W/$1-writer-mnt
  mkdir -p "$m"
  case $name in
    plain|bindfs) echo "$b"; return ;;
    gocryptfs) gocryptfs -q -passfile <(echo benchpass) "$b" "$m" 2>/dev/null ;;
    securefs)
      securefs mount -b --pass benchpass "$b" "$m" >/dev/null 2>&1
      for _ in $(seq 50); do mountpoint -q "$m" && break; sleep 0.1; done ;;
    envfs*) "$ENVFS" mount "$b" "$m" --key-file "$W/envfs.key" -o shared ;;
  esac
  echo "$m"
}

unmount_writer() {
  local m=$W/$1-writer-mnt
  mountpoint -q "$m" || return 0
  for _ in $(seq 50); do fusermount3 -u "$m" 2>/dev/null && break; sleep 0.2; done
}

# Freshness (issue 18): the time from a change behind the mount's back to its new content
# read through the mount, over FRESH_TRIALS trials per kind of change (scripts/bench_freshness.py).
bench_freshness() {
  local name=$1 run=$2 reader writer mode p50 p90 max stale
  reader=$(mount_contender "$name")
  writer=$(mount_writer "$name")
  for mode in replace inplace appear; do
    read -r p50 p90 max stale < <(python3 "$ROOT/scripts/bench_freshness.py" --writer "$writer" --reader "$reader" \
      --mode "$mode" --trials "$FRESH_TRIALS")
    record "$name" "fresh_${mode}_p50_ms" "$run" "$p50"
    record "$name" "fresh_${mode}_p90_ms" "$run" "$p90"
    record "$name" "fresh_${mode}_max_ms" "$run" "$max"
    record "$name" "fresh_${mode}_stale" "$run" "$stale"
  done
  unmount_writer "$name"
  unmount_contender "$name" final
}

cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }

now() { date +%s.%N; }

record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$RESULTS"; }  # contender workload run value

daemon_pid() { pgrep -n -f "envfs mount $W/$1-backing " || true; }

bench_bulk() {
  local name=$1 run=$2 dir t0 t1 pid
  # Sequential write, 1 MiB blocks, fsync at the end.
  dir=$(mount_contender "$name")
  cold
  t0=$(now); dd if=/dev/zero of="$dir/big" bs=1M count="$SIZE_MB" conv=fsync status=none; t1=$(now)
  record "$name" seq_write_MBps "$run" "$(echo "$SIZE_MB / ($t1 - $t0)" | bc -l)"
  if [[ $name == envfs* ]]; then
    pid=$(daemon_pid "$name")
    [ -n "$pid" ] && record "$name" daemon_peak_rss_MiB "$run" "$(awk '/VmHWM/ {print $2/1024}' /proc/"$pid"/status)"
  fi
  unmount_contender "$name"; cold
  # Sequential read with cold caches (remounted).
  dir=$(mount_contender "$name")
  t0=$(now); dd if="$dir/big" of=/dev/null bs=1M status=none; t1=$(now)
  record "$name" seq_read_cold_MBps "$run" "$(echo "$SIZE_MB / ($t1 - $t0)" | bc -l)"
  rm -f "$dir/big"
  # Random 4 KiB reads and writes in a 256 MiB file.
  fio --name=prep --directory="$dir" --filename=rand.bin --size=256M --rw=write --bs=1M --end_fsync=1 --output=/dev/null
  cold
  for rw in randread randwrite; do
    fio --name=$rw --directory="$dir" --filename=rand.bin --size=256M --rw=$rw --bs=4k --ioengine=psync \
        --runtime=10 --time_based --end_fsync=1 --output-format=json --output="$W/fio.json"
    record "$name" "${rw}_4k_IOPS" "$run" "$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1]))["jobs"][0]; print(j["read"]["iops"]+j["write"]["iops"])' "$W/fio.json")"
  done
  rm -f "$dir/rand.bin"
  unmount_contender "$name"; cold
}

bench_small() {
  local name=$1 run=$2 dir t0 t1
  # Small files: create, read back cold, ls -lR, rm -rf.
  dir=$(mount_contender "$name")
  t0=$(now); cp -r "$SMALL_SRC" "$dir/small"; sync -f "$dir/small/d00" 2>/dev/null || true; t1=$(now)
  record "$name" small_create_s "$run" "$(echo "$t1 - $t0" | bc -l)"
  unmount_contender "$name"; cold
  dir=$(mount_contender "$name")
  t0=$(now); find "$dir/small" -type f -exec cat {} + > /dev/null; t1=$(now)
  record "$name" small_read_cold_s "$run" "$(echo "$t1 - $t0" | bc -l)"
  # Listing the tree a program has just read: what the kernel's caches keep of that read.
  t0=$(now); ls -lR "$dir/small" > /dev/null; t1=$(now)
  record "$name" ls_lR_warm_s "$run" "$(echo "$t1 - $t0" | bc -l)"
  unmount_contender "$name"; cold
  dir=$(mount_contender "$name")
  t0=$(now); ls -lR "$dir/small" > /dev/null; t1=$(now)
  record "$name" ls_lR_cold_s "$run" "$(echo "$t1 - $t0" | bc -l)"
  t0=$(now); rm -rf "$dir/small"; t1=$(now)
  record "$name" rm_rf_s "$run" "$(echo "$t1 - $t0" | bc -l)"
  # Untar a real source archive.
  mkdir -p "$dir/untar"
  t0=$(now); tar -C "$dir/untar" -xf "$ARCHIVE"; sync; t1=$(now)
  record "$name" untar_s "$run" "$(echo "$t1 - $t0" | bc -l)"
  rm -rf "$dir/untar"
  unmount_contender "$name" final
}

for run in $(seq "$RUNS"); do
  for c in "${CONTENDERS[@]}"; do
    echo "bench: run $run/$RUNS: $c" >&2
    case $c in
      envfs-nowatch) ;;
      envfs-noacl) bench_small "$c" "$run" ;;
      *) bench_bulk "$c" "$run"; bench_small "$c" "$run" ;;
    esac
    case $c in plain|bindfs|gocryptfs|securefs|envfs|envfs-nowatch) bench_freshness "$c" "$run" ;; esac
  done
done

python3 "$ROOT/scripts/bench_report.py" "$RESULTS" "$OUT" --section "$SECTION" --kms-latency "$KMS_LATENCY" \
  --command "bash scripts/bench.sh${ARGS:+ $ARGS}" --runs "$RUNS" --size-mb "$SIZE_MB" --files "$FILES" --archive-files "$ARCHIVE_FILES" --fresh-trials "$FRESH_TRIALS" \
  --versions "envfs $(git -C "$ROOT" rev-parse --short HEAD); $(gocryptfs -version 2>/dev/null | head -1); securefs $(securefs version 2>/dev/null | head -1 | awk '{print $NF}'); bindfs $(bindfs --version 2>/dev/null | head -1 | awk '{print $NF}'); fio $(fio --version)"
echo "bench: wrote $OUT" >&2
