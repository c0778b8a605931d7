#!/usr/bin/env bash
# The layering rules of docs/ARCHITECTURE.md, checked on the source tree:
#
#   bash scripts/check-layering.sh [SRC-DIR]        (default: src/ of this repository)
#
# 1. fuser is used only under src/fuse/.
# 2. The AWS SDK (aws_sdk_kms, aws_config, aws_smithy_*, aws_credential_types) only under
#    src/keys/.
# 3. No upward imports: a module may use `crate::X` only for layers X below its own, in
#    the order error < format, backing < crypto < keys < vault < fs, fsck < fuse < cli.
#    (`fuzzing` is the fuzzers' and property tests' entry into every layer and may use any.)
# 4. Only src/backing/ touches the backing store: the layers that work on it (src/fs/,
#    src/fsck/, src/vault/mod.rs and the FUSE adapter src/fuse/mod.rs) make no libc call
#    (but the process-identity ones: geteuid, getuid, getgid, getpid) and no std path
#    operation (std::fs::read_dir, metadata, rename, File::open, OpenOptions, ...).
#    I/O on descriptors src/backing opened (read_at, write_at, sync_all) is theirs.
#    (src/fuse/session.rs mounts and unmounts: it works on /dev/fuse and the mountpoint,
#    never on the backing store, and is not bound by this rule.)
# Prints every violation with file and line, and exits 1 if there is any. CI runs it, and
# tests/layering.rs shows that it fails on a tree that breaks a rule.
set -euo pipefail
src="${1:-$(dirname "$0")/../src}"
cd "$src"
status=0

# Code lines only: drop comments and string literals, so docs and messages may name crates.
code() {
  sed -e 's|//.*$||' -e 's/"\([^"\\]\|\\.\)*"//g' "$1"
}

violation() {
  echo "layering: $1" >&2
  status=1
}

level() {
  case "$1" in
    error | text) echo 0 ;;
    format | backing) echo 1 ;;
    crypto) echo 2 ;;
    keys) echo 3 ;;
    vault) echo 4 ;;
    fs | fsck) echo 5 ;;
    fuse) echo 6 ;;
    cli) echo 7 ;;
    fuzzing) echo 9 ;;
    *) echo "" ;;
  esac
}

while IFS= read -r -d '' file; do
  rel="${file#./}"
  layer="${rel%%/*}"
  layer="${layer%.rs}"
  own=$(level "$layer")
  # lib.rs and main.rs are the roots; build.rs is Cargo's build script, not a module.
  [ "$layer" = lib ] || [ "$layer" = main ] || [ "$layer" = build ] && continue
  if [ -z "$own" ]; then
    violation "$rel: module '$layer' has no place in the layer order (add it to scripts/check-layering.sh and docs/ARCHITECTURE.md)"
    continue
  fi
  body=$(code "$file")
  if [ "$layer" != fuse ] && grep -nE '(^|[^A-Za-z0-9_])fuser::|use fuser' <<<"$body" >/tmp/layering.$$ 2>/dev/null; then
    while IFS= read -r hit; do violation "$rel:${hit%%:*}: fuser outside src/fuse/"; done </tmp/layering.$$
  fi
  if [ "$layer" != keys ] && grep -nE '(^|[^A-Za-z0-9_])(aws_sdk_kms|aws_config|aws_smithy_[a-z_]+|aws_credential_types)::' <<<"$body" >/tmp/layering.$$ 2>/dev/null; then
    while IFS= read -r hit; do violation "$rel:${hit%%:*}: the AWS SDK outside src/keys/"; done </tmp/layering.$$
  fi
  case "$rel" in
    fs/* | fsck/* | fuse/mod.rs | vault/mod.rs) backing_user=1 ;;
    *) backing_user=0 ;;
  esac
  if [ $backing_user = 1 ] && grep -nE 'libc::[a-z_0-9]+ *\(|(^|[^A-Za-z0-9_])fs::(read_dir|metadata|symlink_metadata|read_link|remove_file|remove_dir|remove_dir_all|rename|hard_link|create_dir|create_dir_all|set_permissions|read|read_to_string|write|copy|canonicalize|File::open|File::create|OpenOptions)([^A-Za-z0-9_]|$)|unix::fs::(fchown|lchown|chown|symlink)([^A-Za-z0-9_]|$)' <<<"$body" |
    grep -vE 'libc::(geteuid|getuid|getgid|getpid) *\(' >/tmp/layering.$$ 2>/dev/null; then
    while IFS= read -r hit; do violation "$rel:${hit%%:*}: a backing-store call outside src/backing/"; done </tmp/layering.$$
  fi
  # Every crate-level module a line reaches: `crate::x` and each item of `crate::{x, y::z}`.
  while IFS=: read -r line used; do
    used_level=$(level "$used")
    [ -n "$used_level" ] || continue
    if [ "$used_level" -gt "$own" ]; then
      violation "$rel:$line: '$layer' uses crate::$used, a layer above it"
    fi
  done < <(
    grep -noE 'crate::(\{[^}]*\}|[a-z_]+)' <<<"$body" |
      sed -E 's/^([0-9]+):crate::/\1:/; s/[{}]//g' |
      awk '{ c = index($0, ":"); ln = substr($0, 1, c - 1); n = split(substr($0, c + 1), items, ","); for (i = 1; i <= n; i++) { gsub(/^[ \t]+/, "", items[i]); split(items[i], parts, "::"); if (parts[1] != "") print ln ":" parts[1] } }'
  )
done < <(find . -name '*.rs' -print0 | sort -z)
rm -f /tmp/layering.$$

if [ $status -eq 0 ]; then
  echo "layering: ok"
fi
exit $status
