#!/usr/bin/env bash
# The README's path on a clean Debian 12, in a root filesystem built here from Debian's
# packages only (mmdebstrap), with nothing added but this machine's Rust toolchain (bound in
# read-only: Rust is the one thing the README asks the user to bring).
#
#   bash scripts/clean_debian.sh           # the part CI runs (a few minutes)
#   bash scripts/clean_debian.sh --full    # also the README's build and test commands
#   bash scripts/clean_debian.sh --keep    # leave the root in target/clean-debian/root
#
# In the clean root, in this order:
#   1. the Debian package (scripts/package.sh, built here) installs with apt, which pulls
#      in its dependencies, and gives the man pages, completions, the mount helper and the
#      template unit (systemd-analyze verify);
#   2. a vault mounts from an /etc/fstab line with `mount /mnt/secure`, comes up nosuid,nodev,
#      reads back what was written, and unmounts;
#   3. `bash scripts/setup.sh` succeeds on Debian's own Python (PEP 668) and refuses a cargo
#      older than Cargo.toml's rust-version with a message saying what to do;
#   4. (--full) `cargo build --release` and `bash scripts/test.sh`, the README's two commands,
#      and `cargo install --path .`.
# Everything runs in a private mount namespace, so no mount outlives the script, and with
# an empty environment. The one thing copied from this host besides Rust is its local CA
# certificates (/usr/local/share/ca-certificates), so that HTTPS through a site's proxy
# (pip's, cargo's) works in the root as it does here.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

full=0
keep=0
for arg in "$@"; do
  case "$arg" in
    --full) full=1 ;;
    --keep) keep=1 ;;
    *) echo "usage: $0 [--full] [--keep]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "clean_debian: run as root (chroot, mounts)" >&2; exit 1; }
command -v mmdebstrap >/dev/null || {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
}

toolchain=$(dirname "$(dirname "$(rustup which rustc)")")
work=$repo/target/clean-debian
root=$work/root
rm -rf "$root"
mkdir -p "$work"

echo "clean_debian: building the Debian package"
deb=$(bash scripts/package.sh | tail -1)

echo "clean_debian: building a Debian 12 root in $root"
mmdebstrap --quiet --variant=apt --include=ca-certificates bookworm "$root" \
  "deb http://deb.debian.org/debian bookworm main" \
  "deb http://deb.debian.org/debian-security bookworm-security main"

# The sources as committed (what a user clones), and the package.
mkdir -p "$root/src/envfs" "$root$toolchain"
git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$root/src/envfs"
cp "$deb" "$root/src/envfs.deb"
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  chroot "$root" update-ca-certificates >/dev/null 2>&1
fi

cat >"$root/src/inside.sh" <<'INSIDE'
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8
full=$1
toolchain=$2
step() { echo "clean_debian: inside: $*"; }

step "1. apt install the package"
apt-get update -qq
apt-get install -y -qq --no-install-recommends /src/envfs.deb man-db systemd >/dev/null
envfs --version | head -2
test -L /usr/sbin/mount.fuse.envfs
test "$(readlink -f /usr/sbin/mount.fuse.envfs)" = /usr/bin/envfs
man -w envfs envfs-mount envfs-key-list >/dev/null
bash -c '. /usr/share/bash-completion/completions/envfs && complete -p envfs' >/dev/null
test -s /usr/share/zsh/vendor-completions/_envfs
test -s /usr/share/fish/vendor_completions.d/envfs.fish
ln -s /usr/lib/systemd/system/envfs@.service /etc/systemd/system/envfs@mnt-secure.service
systemd-analyze verify /etc/systemd/system/envfs@mnt-secure.service
rm /etc/systemd/system/envfs@mnt-secure.service

step "2. a vault from an fstab line"
mkdir -p /srv/raw /mnt/secure /etc/envfs
envfs init /srv/raw --key-file /etc/envfs/vault.key >/dev/null
echo "/srv/raw /mnt/secure fuse.envfs key_file=/etc/envfs/vault.key,nofail 0 0" >>/etc/fstab
mount /mnt/secure
echo "written in a clean root" >/mnt/secure/hello.txt
options=$(findmnt -n -o OPTIONS /mnt/secure)
case ",$options," in
  *,nosuid,*nodev,* | *,nodev,*nosuid,*) ;;
  *) echo "clean_debian: the fstab mount is not nosuid,nodev: $options" >&2; exit 1 ;;
esac
umount /mnt/secure
test ! -e /mnt/secure/hello.txt
test "$(envfs cat /srv/raw hello.txt --key-file /etc/envfs/vault.key)" = "written in a clean root"
if ls /srv/raw | grep -q hello; then
  echo "clean_debian: a plaintext name reached the backing store" >&2
  exit 1
fi

step "3. scripts/setup.sh on Debian's Python, with Rust from $toolchain"
export PATH=$toolchain/bin:$PATH CARGO_HOME=/root/.cargo
cd /src/envfs
bash scripts/setup.sh
/usr/bin/python3 -c 'import os, sysconfig
raise SystemExit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))' || {
  echo "clean_debian: this root's Python is not externally managed (PEP 668): not a stock Debian" >&2
  exit 1
}
mkdir -p /tmp/old-rust
printf '#!/bin/sh\necho "cargo 1.63.0"\n' >/tmp/old-rust/cargo
chmod +x /tmp/old-rust/cargo
if out=$(PATH=/tmp/old-rust:$PATH bash scripts/setup.sh 2>&1); then
  echo "clean_debian: setup.sh accepted cargo 1.63" >&2
  exit 1
fi
grep -q "cargo 1.63.0 is too old: envfs needs Rust 1.85 or newer" <<<"$out"

if [ "$full" = 1 ]; then
  step "4. the README's commands: build, then test; and cargo install"
  cargo build --release
  cargo install --locked --path . --root /tmp/envfs-install --target-dir target
  /tmp/envfs-install/bin/envfs --version | head -1
  bash scripts/test.sh --no-fail-fast
fi
step "ok"
INSIDE

inside() {
  unshare --mount --propagation private bash -euc '
    root=$1; toolchain=$2; shift 2
    # The root a mount point of its own, as on a real system: tests that make mount
    # namespaces of their own (unshare --propagation private) need "/" to be one.
    mount --bind "$root" "$root"
    mount -t proc proc "$root/proc"
    mount --rbind /sys "$root/sys"
    mount --rbind /dev "$root/dev"
    mount -t tmpfs tmpfs "$root/run"
    mount -t tmpfs tmpfs "$root/tmp"
    mount --bind -o ro "$toolchain" "$root$toolchain"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 chroot "$root" "$@"
  ' bash "$root" "$toolchain" "$@"
}

status=0
inside bash /src/inside.sh "$full" "$toolchain" || status=$?
if [ "$keep" = 0 ]; then
  rm -rf "$root"
fi
[ "$status" = 0 ] && echo "clean_debian: ok" || echo "clean_debian: FAILED ($status)" >&2
exit "$status"
