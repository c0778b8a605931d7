#!/usr/bin/env bash
# Install everything the build and the tests need on a fresh Debian 12 machine.
# Idempotent: a second run installs nothing new.
set -euo pipefail

need_pkgs=()
for pkg in fuse3 rsync sqlite3 git tar attr acl util-linux libcap2-bin; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$pkg")
done
# systemd-analyze verifies the example mount unit.
command -v systemd-analyze >/dev/null 2>&1 || need_pkgs+=(systemd)

if [ ${#need_pkgs[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

# The local KMS-compatible server the KMS tests run against (moto, with boto3 to create keys).
if ! python3 -c "import moto.server, boto3, flask" >/dev/null 2>&1; then
  python3 -m pip --version >/dev/null 2>&1 || {
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
  }
  python3 -m pip install --quiet --disable-pip-version-check 'moto[server]>=5,<6' 2>&1 | grep -v "Running pip as the 'root' user" || true
  python3 -c "import moto.server, boto3, flask" || { echo "setup: moto[server] did not install" >&2; exit 1; }
fi

[ -e /dev/fuse ] || { echo "setup: /dev/fuse is missing; the mount tests need FUSE" >&2; exit 1; }
command -v cargo >/dev/null || { echo "setup: cargo is missing (install Rust with rustup)" >&2; exit 1; }
echo "setup: ok"
