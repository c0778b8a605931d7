#!/usr/bin/env bash
# The project's test command (README): unit, property, tamper, golden-vector, CLI and
# real-FUSE-mount tests. Needs root (or a user allowed to mount FUSE) and /dev/fuse.
set -euo pipefail
cd "$(dirname "$0")/.."
# Mount tests are serialised inside their own binary; other test binaries run in parallel.
cargo test "$@"
