#!/usr/bin/env bash
# Files created per second through an envfs mount whose DEKs come from a KMS-compatible
# server (moto) with injected latency, with and without DEK prefetch, and read back per
# second after a remount, with and without unwrap ahead, and with the key hierarchy on (no
# KMS call per file); KMS calls per file; and the local-key baseline. Writes its table into
# docs/BENCHMARKS.md between the kms markers.
#
# As root, every case of every run gets a freshly made ext4 filesystem (a loop device) for
# its backing directory: on a filesystem that has just seen thousands of files deleted,
# ext4's inode allocator scans past the recently freed inodes (recently_deleted), which
# made creation up to ~25% slower for whichever case came after a deletion. --shared-fs
# puts every case on the disk of $BENCH_DIR instead.
#
#   bash scripts/bench_kms.sh [--files N] [--latency-ms MS] [--runs N] [--shared-fs]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
FILES=500
LATENCY=10
RUNS=3
FRESH_FS=0
[ "$(id -u)" = 0 ] && command -v mkfs.ext4 >/dev/null && FRESH_FS=1
while [ $# -gt 0 ]; do
  case "$1" in
    --files) FILES=$2; shift 2 ;;
    --latency-ms) LATENCY=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --shared-fs) FRESH_FS=0; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
bash scripts/setup.sh >/dev/null
cargo build --release -q
ENVFS=$ROOT/target/release/envfs
W=${BENCH_DIR:-/var/tmp/envfs-bench-kms}
rm -rf "$W"; mkdir -p "$W"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port); PROXY=$(free_port)
VPY=$ROOT/.venv/bin/python3   # moto lives in the project's venv (scripts/setup.sh)
"$VPY" -m moto.server -H 127.0.0.1 -p "$UP" >/dev/null 2>&1 & MOTO=$!
python3 scripts/kms_proxy.py --listen 127.0.0.1:"$PROXY" --upstream http://127.0.0.1:"$UP" --latency-ms "$LATENCY" 2>"$W/proxy.log" & PX=$!
trap 'kill $MOTO $PX 2>/dev/null; for m in "$W"/*-mnt "$W"/fs-*/mnt; do fusermount3 -u "$m" 2>/dev/null || true; done; for d in "$W"/fs-*; do umount "$d" 2>/dev/null || true; done' EXIT
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$UP/" && break; sleep 0.1; done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
export AWS_ENDPOINT_URL_KMS=http://127.0.0.1:$PROXY XDG_CONFIG_HOME=$W/config XDG_STATE_HOME=$W/config
"$VPY" -c "
import boto3
k=boto3.client('kms',endpoint_url='http://127.0.0.1:$UP',region_name='us-east-1')
key=k.create_key()['KeyMetadata']; k.create_alias(AliasName='alias/envfs-bench',TargetKeyId=key['KeyId'])"

# One case: create $FILES small files through a fresh mount, then remount (the DEK cache
# starts empty) and read them all back in directory order. Prints: files/s created, files/s
# read back, GenerateDataKey calls per file created, Decrypt calls per file read.
run_case() {  # label mount-options local|kms|hierarchy run
  local label=$1 opts=$2 kind=$3 run=$4 b=$W/$1-backing m=$W/$1-mnt
  if [ "$FRESH_FS" = 1 ]; then
    # A new vault on a new filesystem (its own path: a host refuses another vault at a
    # path it knows).
    local fs=$W/fs-$label
    mkdir -p "$fs"; rm -f "$W/fs.img"; truncate -s 1G "$W/fs.img"
    mkfs.ext4 -q -F "$W/fs.img"; mount -o loop "$W/fs.img" "$fs"
    b=$fs/backing-$run m=$fs/mnt
  fi
  mkdir -p "$b" "$m"
  if [ ! -f "$b/envfs.conf" ]; then
    if [ "$kind" = local ]; then "$ENVFS" init "$b" --key-file "$W/local.key" >/dev/null
    else "$ENVFS" init "$b" --kms-key alias/envfs-bench >/dev/null; fi
    # The first intermediate key is made here, before anything is timed.
    if [ "$kind" = hierarchy ]; then "$ENVFS" key hierarchy "$b" on >/dev/null; fi
  fi
  local keyopt=(); [ "$kind" = local ] && keyopt=(--key-file "$W/local.key")
  "$ENVFS" mount "$b" "$m" "${keyopt[@]}" -o "$opts"
  sleep 2  # let a prefetch pool fill, as it would on a mount in use
  mkdir -p "$m/run"
  local t0 t1 t2 t3 gdk dec
  local calls0; calls0=$(kms_calls "$m" GenerateDataKey)
  t0=$(date +%s.%N)
  for i in $(seq "$FILES"); do printf 'file %s\n' "$i" > "$m/run/f$i"; done
  t1=$(date +%s.%N)
  gdk=$(( $(kms_calls "$m" GenerateDataKey) - calls0 ))
  unmount "$b" "$m"
  sync; echo 3 > /proc/sys/vm/drop_caches
  "$ENVFS" mount "$b" "$m" "${keyopt[@]}" -o "$opts"
  calls0=$(kms_calls "$m" Decrypt)
  t2=$(date +%s.%N)
  find "$m/run" -type f -exec cat {} + > /dev/null
  t3=$(date +%s.%N)
  dec=$(( $(kms_calls "$m" Decrypt) - calls0 ))
  rm -rf "$m/run"
  unmount "$b" "$m"
  if [ "$FRESH_FS" = 1 ]; then umount "$W/fs-$label"; rm -f "$W/fs.img"; fi
  echo "$(echo "$FILES / ($t1 - $t0)" | bc -l) $(echo "$FILES / ($t3 - $t2)" | bc -l) $(echo "$gdk / $FILES" | bc -l) $(echo "$dec / $FILES" | bc -l)"
}

# Unmount and wait (bounded) for the daemon to exit: until it has, `envfs status` of the
# mountpoint can still reach it and report its counts instead of the next mount's.
unmount() {  # backing mountpoint
  fusermount3 -u "$2"
  for _ in $(seq 100); do pgrep -f -- "mount $1 $2( |$)" >/dev/null || return 0; sleep 0.1; done
}

# Calls of one KMS operation the mount's daemon has made so far (0 for a local key).
kms_calls() {  # mountpoint operation
  "$ENVFS" status "$1" --json | python3 -c 'import json,sys; k=json.load(sys.stdin)["mounts"][0]["keys"][0]; print(k.get("calls",{}).get(sys.argv[1],0))' "$2"
}

declare -A results
CASES=(local noprefetch prefetch noahead hierarchy)
for run in $(seq "$RUNS"); do
  results[local]+="$(run_case local 'prefetch=0' local "$run");"
  results[noprefetch]+="$(run_case kms-noprefetch 'prefetch=0' kms "$run");"
  results[prefetch]+="$(run_case kms-prefetch 'prefetch=32' kms "$run");"
  results[noahead]+="$(run_case kms-noahead 'prefetch=32,unwrap_ahead=0' kms "$run");"
  results[hierarchy]+="$(run_case kms-hierarchy 'prefetch=32' hierarchy "$run");"
done
# The median over runs of field N (1-4) of a case's results.
median() {  # case field
  echo "${results[$1]}" | tr ';' '\n' | grep -v '^$' | awk -v f="$2" '{print $f}' | sort -g \
    | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}
for c in "${CASES[@]}"; do
  for f in 1 2 3 4; do printf -v "M_${c}_$f" '%s' "$(median "$c" "$f")"; done
done
ratio() { printf '%.2f' "$(echo "$1 / $2" | bc -l)"; }
TABLE=$(cat <<MD
<!-- kms:begin -->
## Creating files with a key service ${LATENCY} ms away

\`bash scripts/bench_kms.sh --files $FILES --latency-ms $LATENCY --runs $RUNS\` on $(date -I): each
new file with content needs a DEK from KMS \`GenerateDataKey\` (moto on loopback behind
\`scripts/kms_proxy.py\`, which adds ${LATENCY} ms to every request). Median of $RUNS runs of
creating $FILES small files with a shell loop, then reading them back after a remount.
$( [ "$FRESH_FS" = 1 ] && echo "Every case of every run on a freshly made ext4 filesystem (loop device).")

| envfs configuration | create (files/s) | vs local | read back after remount (files/s) | vs local | GenerateDataKey per file | Decrypt per file read |
|---|---:|---:|---:|---:|---:|---:|
| local key file (no key service) | $(printf '%.0f' "$M_local_1") | 1.00 | $(printf '%.0f' "$M_local_2") | 1.00 | – | – |
| KMS, no prefetch (\`-o prefetch=0\`) | $(printf '%.0f' "$M_noprefetch_1") | $(ratio "$M_noprefetch_1" "$M_local_1") | $(printf '%.0f' "$M_noprefetch_2") | $(ratio "$M_noprefetch_2" "$M_local_2") | $(printf '%.2f' "$M_noprefetch_3") | $(printf '%.2f' "$M_noprefetch_4") |
| KMS, defaults (prefetch 32 DEKs, unwrap ahead 16) | $(printf '%.0f' "$M_prefetch_1") | $(ratio "$M_prefetch_1" "$M_local_1") | $(printf '%.0f' "$M_prefetch_2") | $(ratio "$M_prefetch_2" "$M_local_2") | $(printf '%.2f' "$M_prefetch_3") | $(printf '%.2f' "$M_prefetch_4") |
| KMS, prefetch 32, no unwrap ahead (\`-o unwrap_ahead=0\`) | $(printf '%.0f' "$M_noahead_1") | $(ratio "$M_noahead_1" "$M_local_1") | $(printf '%.0f' "$M_noahead_2") | $(ratio "$M_noahead_2" "$M_local_2") | $(printf '%.2f' "$M_noahead_3") | $(printf '%.2f' "$M_noahead_4") |
| KMS with the key hierarchy (\`envfs key hierarchy on\`) | $(printf '%.0f' "$M_hierarchy_1") | $(ratio "$M_hierarchy_1" "$M_local_1") | $(printf '%.0f' "$M_hierarchy_2") | $(ratio "$M_hierarchy_2" "$M_local_2") | $(printf '%.2f' "$M_hierarchy_3") | $(printf '%.3f' "$M_hierarchy_4") |

Without prefetch every new file waits one KMS round trip; with it, DEKs are generated ahead
by 16 concurrent workers (\`-o prefetch_workers=\`), so creation runs at up to 16 / round trip
files per second sustained, and faster in bursts the pool absorbs. Reading back after a
remount starts with an empty DEK cache: without unwrap ahead each file waits for its own
\`Decrypt\`; with it (\`-o unwrap_ahead=\`, 16 concurrent calls) the DEKs of the files after
the one being read are already on their way. With the key hierarchy a mount makes one
\`Decrypt\` (its intermediate key) for all the files it reads back, and none per file it
creates: new DEKs are wrapped in-process (the intermediate key itself was made by \`key
hierarchy on\`, before the timing). Calls are counted by the daemon
(\`envfs status --json\`); the read-back is \`find run -type f -exec cat {} +\`.
<!-- kms:end -->
MD
)
echo "$TABLE"
python3 - "$ROOT/docs/BENCHMARKS.md" <<PY
import re, sys
path = sys.argv[1]
table = """$TABLE"""
try:
    text = open(path).read()
except FileNotFoundError:
    text = "# Benchmarks\n"
if "<!-- kms:begin -->" in text:
    text = re.sub(r"<!-- kms:begin -->.*<!-- kms:end -->", lambda m: table, text, flags=re.S)
else:
    text = text.rstrip() + "\n\n" + table + "\n"
open(path, "w").write(text)
PY
