#!/usr/bin/env bash
# Install everything the build and the tests need on a fresh Debian 12 machine.
# Idempotent: a second run installs nothing new.
#
# System packages come from Debian (apt). The test-only Python tools (moto, the local
# KMS-compatible server, and boto3) go into a virtual environment the project owns,
# .venv/ at the top of the repository (ignored by git): Debian's own Python is "externally
# managed" (PEP 668) and refuses `pip install`. The tests find it there (or at
# $ENVFS_TEST_PYTHON).
set -euo pipefail
cd "$(dirname "$0")/.."

# The Rust toolchain the crate needs (Cargo.toml rust-version; edition 2024).
MIN_RUST=1.85
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
apt_install() {
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

need_pkgs=()
# gcc and libc6-dev: the linker and C compiler cargo needs (aws-lc-sys and build scripts).
for pkg in gcc libc6-dev fuse3 rsync sqlite3 git tar attr acl util-linux libcap2-bin python3 python3-venv syncthing curl openssh-server openssh-client sshfs; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$pkg")
done
# systemd-analyze verifies the example mount unit.
command -v systemd-analyze >/dev/null 2>&1 || need_pkgs+=(systemd)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  apt_install "${need_pkgs[@]}"
fi

# Debian's Python (the one a fresh machine has), whatever else is first on PATH.
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
VENV=.venv
if ! "$VENV/bin/python3" -c "import moto.server, boto3, flask" >/dev/null 2>&1; then
  rm -rf "$VENV"
  "$PY" -m venv "$VENV" || { echo "setup: cannot create $VENV (is python3-venv installed?)" >&2; exit 1; }
  "$VENV/bin/python3" -m pip install --quiet --disable-pip-version-check 'moto[server]>=5,<6'
  "$VENV/bin/python3" -c "import moto.server, boto3, flask" || {
    echo "setup: moto[server] did not install into $VENV" >&2
    exit 1
  }
fi

[ -e /dev/fuse ] || { echo "setup: /dev/fuse is missing; the mount tests need FUSE" >&2; exit 1; }
command -v cargo >/dev/null || {
  echo "setup: cargo is missing: install Rust $MIN_RUST or newer with rustup (https://rustup.rs);" \
    "Debian's cargo is too old" >&2
  exit 1
}
have_rust=$(cargo --version | awk '{print $2}')
if [ "$(printf '%s\n%s\n' "$MIN_RUST" "$have_rust" | sort -V | head -1)" != "$MIN_RUST" ]; then
  echo "setup: cargo $have_rust is too old: envfs needs Rust $MIN_RUST or newer" \
    "(rustup update stable, or install rustup; Debian 12's cargo is 1.63)" >&2
  exit 1
fi
echo "setup: ok"
