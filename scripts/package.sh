#!/usr/bin/env bash
# Build the Debian package: target/debian/envfs_VERSION_ARCH.deb (and print its path).
#
#   bash scripts/package.sh
#
# It holds the release binary (/usr/bin/envfs), the mount helper mount(8) looks for
# (/usr/sbin/mount.fuse.envfs, a link to it: `mount -t fuse.envfs` and fstab), man pages
# and bash/zsh/fish completions generated from the binary's own CLI definition, the
# envfs@.service template unit, and the docs with the example units. Built with dpkg-deb,
# which every Debian has, from a tree staged here: nothing beyond Debian and cargo needed.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked
bin=target/release/envfs
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
out=target/debian
stage=$out/stage
rm -rf "$stage"
mkdir -p "$stage/DEBIAN"

install -D -m 0755 "$bin" "$stage/usr/bin/envfs"
strip --strip-unneeded "$stage/usr/bin/envfs"
mkdir -p "$stage/usr/sbin"
ln -s ../bin/envfs "$stage/usr/sbin/mount.fuse.envfs"

man=$stage/usr/share/man/man1
mkdir -p "$man"
"$bin" manpages "$man"
gzip -9n "$man"/*.1

install -d "$stage/usr/share/bash-completion/completions" \
  "$stage/usr/share/zsh/vendor-completions" "$stage/usr/share/fish/vendor_completions.d"
"$bin" completions bash >"$stage/usr/share/bash-completion/completions/envfs"
"$bin" completions zsh >"$stage/usr/share/zsh/vendor-completions/_envfs"
"$bin" completions fish >"$stage/usr/share/fish/vendor_completions.d/envfs.fish"

install -D -m 0644 scripts/systemd/envfs@.service "$stage/usr/lib/systemd/system/envfs@.service"
doc=$stage/usr/share/doc/envfs
install -d "$doc/examples"
install -m 0644 README.md docs/*.md "$doc/"
# The examples name /usr/local/bin/envfs (a cargo install); the package's binary is /usr/bin.
for unit in mnt-secure.mount envfs-secure.service; do
  sed 's|/usr/local/bin/envfs|/usr/bin/envfs|g' "scripts/systemd/$unit" >"$doc/examples/$unit"
  chmod 0644 "$doc/examples/$unit"
done
cat >"$doc/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: envfs
Comment: The envfs sources carry no license file; see the project repository.
COPYRIGHT
find "$stage/usr" -type f -exec chmod go-w {} +

# The newest glibc symbol version the binary uses is the libc6 it needs.
glibc=$(objdump -T "$stage/usr/bin/envfs" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
installed_kb=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat >"$stage/DEBIAN/control" <<CONTROL
Package: envfs
Version: $version
Architecture: $arch
Maintainer: envfs developers <envfs@localhost>
Installed-Size: $installed_kb
Depends: libc6 (>= $glibc), fuse3
Section: utils
Priority: optional
Description: envelope-encrypted FUSE filesystem over a backing directory
 envfs mirrors a backing directory (a NAS share, a synced cloud folder) and
 keeps everything written through the mount encrypted there: each file under its
 own AES-256-GCM data key, wrapped by a local key file, an X25519 recovery key or
 an AWS KMS key. File names, symlink targets and user xattrs are encrypted too.
CONTROL
(cd "$stage" && find usr -type f -exec md5sum {} + | sort -k2 >DEBIAN/md5sums)

deb=$out/envfs_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"
