#!/usr/bin/env bash
# Fuzz every parser of untrusted bytes with libFuzzer (the fuzz/ crate, cargo-fuzz):
#
#   bash scripts/fuzz.sh [SECONDS-PER-TARGET] [TARGET…]     (default: 600 s, every target)
#
# Needs a nightly toolchain (`rustup toolchain install nightly`); installs cargo-fuzz from
# crates.io if missing. Seeds each corpus (fuzz/corpus/<target>, kept between runs, not in
# git) from examples/fuzz_seeds.rs, runs each target for its budget with a 1 GiB RSS cap
# and a 10 s per-input timeout, and prints one summary line per target (executions,
# coverage, corpus size). A crash leaves its input in fuzz/artifacts/<target>/: add it to
# the regression cases in tests/parsers.rs before fixing it. CI does not run this; it runs
# the same entry points as property tests on every build.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-600}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(config header slot chunk geometry name sidecar link_target xattr key_file host_record)
fi
rustup toolchain list | grep -q '^nightly' || {
  echo "fuzz: needs a nightly Rust toolchain: rustup toolchain install nightly" >&2
  exit 1
}
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
cargo run --quiet --example fuzz_seeds -- fuzz/corpus >/dev/null
# No sanitizer: envfs' parsers are safe Rust (a memory error would be in a dependency's
# unsafe code, which ASan would not see either without instrumenting its C); panics,
# timeouts and runaway memory are what libFuzzer catches here.
cargo +nightly fuzz build --sanitizer none --release
status=0
for t in "${targets[@]}"; do
  log="fuzz/artifacts/$t.log"
  mkdir -p "fuzz/artifacts/$t"
  if cargo +nightly fuzz run --sanitizer none --release "$t" "fuzz/corpus/$t" -- \
      -max_total_time="$secs" -rss_limit_mb=1024 -timeout=10 -max_len=8192 \
      -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result=FAILED
    status=1
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo '?')
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo '?')
  corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
  printf 'fuzz: %-12s %-6s %ss, %s execs, cov %s, features %s, corpus %s (log %s)\n' \
    "$t" "$result" "$secs" "$execs" "$cov" "$ft" "$corpus" "$log"
done
exit $status
