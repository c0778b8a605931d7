#!/usr/bin/env bash
# The project's test command (README): unit, property, tamper, golden-vector, CLI and
# real-FUSE-mount tests. Needs root (or a user allowed to mount FUSE) and /dev/fuse.
set -euo pipefail
cd "$(dirname "$0")/.."
# Test binaries run one after another; tests inside one run in parallel (every mount test
# works in its own temporary directories).
cargo test "$@"
