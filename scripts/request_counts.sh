#!/usr/bin/env bash
# FUSE requests per file (issue 18, item 2; docs/BENCHMARKS.md "FUSE requests per file"): how many requests of each kind the kernel sends
# an envfs mount for each of create, write, close, stat, read, rename and unlink, counted by
# the daemon itself (`envfs status --json`, `requests`) rather than timed, so the result does
# not depend on the machine's speed or load. Every request is a round trip between the
# kernel and the daemon (and, on a network store, often one to the server).
#
#   bash scripts/request_counts.sh [--envfs BIN] [--files N] [--opts MOUNT-OPTIONS] [--markdown]
#
# Each step runs over N files (default 1000) in one directory of a fresh vault, with the
# kernel's caches as the step before left them (as a program that creates, then writes,
# then reads would find them); `stat` and `read` run after dropping the page and dentry
# caches (echo 3 > /proc/sys/vm/drop_caches), so they show what a cold pass costs. Output:
# one row per step with the requests per file of every kind that occurred, and the total.
set -euo pipefail
cd "$(dirname "$0")/.."

ENVFS=""
FILES=1000
OPTS=""
MARKDOWN=0
while [ $# -gt 0 ]; do
  case "$1" in
    --envfs) ENVFS=$2; shift 2 ;;
    --files) FILES=$2; shift 2 ;;
    --opts) OPTS=$2; shift 2 ;;
    --markdown) MARKDOWN=1; shift ;;
    *) echo "usage: $0 [--envfs BIN] [--files N] [--opts MOUNT-OPTIONS] [--markdown]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "request_counts: run as root (drop_caches)" >&2; exit 1; }
if [ -z "$ENVFS" ]; then
  cargo build --release --quiet
  ENVFS=$PWD/target/release/envfs
fi

W=$(mktemp -d /var/tmp/envfs-requests.XXXXXX)
export XDG_CONFIG_HOME=$W/config XDG_STATE_HOME=$W/config
MNT=$W/mnt
cleanup() {
  mountpoint -q "$MNT" && "$ENVFS" umount "$MNT" >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT
mkdir -p "$W/backing" "$MNT"
"$ENVFS" init "$W/backing" --key-file "$W/key" >/dev/null
# shellcheck disable=SC2086
"$ENVFS" mount "$W/backing" "$MNT" --key-file "$W/key" ${OPTS:+-o $OPTS}

counts() { "$ENVFS" status "$MNT" --json; }
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3

rows=()
step() {
  local name=$1 script=$2 before after
  before=$(counts)
  (cd "$MNT" && bash -c "$script")
  after=$(counts)
  rows+=("$("$PY" - "$name" "$FILES" "$before" "$after" <<'PY'
import json, sys
name, files = sys.argv[1], int(sys.argv[2])
before = json.loads(sys.argv[3])["mounts"][0]["requests"]
after = json.loads(sys.argv[4])["mounts"][0]["requests"]
delta = {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0) > 0}
total = sum(delta.values())
# Kinds under one per hundred files are the shell's own (its working directory), not the step's.
delta = {k: v for k, v in delta.items() if v * 100 >= files}
kinds = ", ".join(f"{k} {v / files:.2f}" for k, v in sorted(delta.items(), key=lambda kv: -kv[1]))
print(f"{name}\t{total / files:.2f}\t{kinds}")
PY
)")
}

N=$FILES
step "create (touch)" "for i in \$(seq 1 $N); do : > f\$i; done"
step "write 4 KiB + close" "for i in \$(seq 1 $N); do head -c 4096 /dev/zero > f\$i; done"
sync; echo 3 >/proc/sys/vm/drop_caches
step "stat, cold" "for i in \$(seq 1 $N); do stat -c %s f\$i >/dev/null; done"
step "stat, warm" "for i in \$(seq 1 $N); do stat -c %s f\$i >/dev/null; done"
sync; echo 3 >/proc/sys/vm/drop_caches
step "read (cat), cold" "for i in \$(seq 1 $N); do cat f\$i >/dev/null; done"
step "rename" "for i in \$(seq 1 $N); do mv f\$i g\$i; done"
step "unlink" "for i in \$(seq 1 $N); do rm g\$i; done"

if [ "$MARKDOWN" = 1 ]; then
  echo "| Step ($N files) | Requests per file | By kind, per file |"
  echo "|---|---:|---|"
  for r in "${rows[@]}"; do
    IFS=$'\t' read -r name total kinds <<<"$r"
    echo "| $name | $total | $kinds |"
  done
else
  printf '%-22s %8s  %s\n' "step ($N files)" "per file" "by kind, per file"
  for r in "${rows[@]}"; do
    IFS=$'\t' read -r name total kinds <<<"$r"
    printf '%-22s %8s  %s\n' "$name" "$total" "$kinds"
  done
fi
