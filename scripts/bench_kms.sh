#!/usr/bin/env bash
# Files created per second through an envfs mount whose DEKs come from a KMS-compatible
# server (moto) with injected latency, with and without DEK prefetch; and the local-key
# baseline. Writes its table into docs/BENCHMARKS.md between the kms markers.
#
#   bash scripts/bench_kms.sh [--files N] [--latency-ms MS] [--runs N]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
FILES=500
LATENCY=10
RUNS=3
while [ $# -gt 0 ]; do
  case "$1" in
    --files) FILES=$2; shift 2 ;;
    --latency-ms) LATENCY=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
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
trap 'kill $MOTO $PX 2>/dev/null; for m in "$W"/*-mnt; do fusermount3 -u "$m" 2>/dev/null || true; done' EXIT
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$UP/" && break; sleep 0.1; done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
export AWS_ENDPOINT_URL_KMS=http://127.0.0.1:$PROXY XDG_CONFIG_HOME=$W/config XDG_STATE_HOME=$W/config
"$VPY" -c "
import boto3
k=boto3.client('kms',endpoint_url='http://127.0.0.1:$UP',region_name='us-east-1')
key=k.create_key()['KeyMetadata']; k.create_alias(AliasName='alias/envfs-bench',TargetKeyId=key['KeyId'])"

create_rate() {  # mount-options label -> files/s
  local label=$1 opts=$2 kind=$3 b=$W/$1-backing m=$W/$1-mnt
  mkdir -p "$b" "$m"
  if [ ! -f "$b/envfs.conf" ]; then
    if [ "$kind" = kms ]; then "$ENVFS" init "$b" --kms-key alias/envfs-bench >/dev/null
    else "$ENVFS" init "$b" --key-file "$W/local.key" >/dev/null; fi
  fi
  local keyopt=(); [ "$kind" = local ] && keyopt=(--key-file "$W/local.key")
  "$ENVFS" mount "$b" "$m" "${keyopt[@]}" -o "$opts"
  sleep 2  # let a prefetch pool fill, as it would on a mount in use
  mkdir -p "$m/run"
  local t0 t1
  t0=$(date +%s.%N)
  for i in $(seq "$FILES"); do printf 'file %s\n' "$i" > "$m/run/f$i"; done
  t1=$(date +%s.%N)
  rm -rf "$m/run"
  fusermount3 -u "$m"
  echo "$FILES / ($t1 - $t0)" | bc -l
}

declare -A results
for run in $(seq "$RUNS"); do
  results[local]+="$(create_rate local 'prefetch=0' local) "
  results[noprefetch]+="$(create_rate kms-noprefetch 'prefetch=0' kms) "
  results[prefetch]+="$(create_rate kms-prefetch 'prefetch=32' kms) "
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
L=$(echo "${results[local]}" | median); N=$(echo "${results[noprefetch]}" | median); P=$(echo "${results[prefetch]}" | median)
TABLE=$(cat <<MD
<!-- kms:begin -->
## Creating files with a key service ${LATENCY} ms away

\`bash scripts/bench_kms.sh --files $FILES --latency-ms $LATENCY --runs $RUNS\` on $(date -I): each
new file with content needs a DEK from KMS \`GenerateDataKey\` (moto on loopback behind
\`scripts/kms_proxy.py\`, which adds ${LATENCY} ms to every request). Median of $RUNS runs of
creating $FILES small files with a shell loop.

| envfs configuration | files/s |
|---|---:|
| local key file (no key service) | $(printf '%.0f' "$L") |
| KMS, ${LATENCY} ms, no prefetch (\`-o prefetch=0\`) | $(printf '%.0f' "$N") |
| KMS, ${LATENCY} ms, prefetch 32 DEKs (default) | $(printf '%.0f' "$P") |

Without prefetch every new file waits one KMS round trip; with it, DEKs are generated ahead
by 16 concurrent workers (\`-o prefetch_workers=\`), so creation runs at up to 16 / round trip
files per second sustained, and faster in bursts the pool absorbs.
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
