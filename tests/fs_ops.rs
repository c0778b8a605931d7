//! The rest of the filesystem core's surface: directories, renames (incl. flags and long
//! names), hard links, symlinks, attributes, xattrs, statfs, O_TRUNC, empty files,
//! fallocate, and the ENOSPC / EFBIG checks on growing a file.

mod support;

use envfs::Error;
use envfs::fs::{FileKind, Fs, RENAME_EXCHANGE, RENAME_NOREPLACE, SetAttr, TimeSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::fs_core::{self, CoreVault, read_file, write_file};
use support::pattern;

fn p(s: &str) -> &Path {
    Path::new(s)
}

fn errno<T>(r: envfs::Result<T>) -> i32 {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.errno(),
    }
}

fn listed(fs: &Fs, dir: &str) -> Vec<OsString> {
    let mut v: Vec<OsString> = fs
        .readdir(p(dir))
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    v.sort();
    v
}

fn names(list: &[&str]) -> Vec<OsString> {
    let mut v: Vec<OsString> = list.iter().map(OsString::from).collect();
    v.sort();
    v
}

/// Names of the entries of a backing directory.
fn backing_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn sidecars(dir: &Path) -> Vec<String> {
    backing_entries(dir)
        .into_iter()
        .filter(|n| n.ends_with(".envfs-ln.name"))
        .collect()
}

fn long(c: char) -> String {
    std::iter::repeat_n(c, 200).collect()
}

fn backing_len(path: &Path) -> u64 {
    fs::symlink_metadata(path).unwrap().len()
}

fn file_id(backing: &Path) -> [u8; 16] {
    fs::read(backing).unwrap()[8..24].try_into().unwrap()
}

// ---- directories ------------------------------------------------------------------------

#[test]
fn mkdir_readdir_rmdir() {
    let tv = CoreVault::new(&fs_core::small());
    let fs = &tv.fs;
    let attr = fs.mkdir(p("d"), 0o750, None).unwrap();
    assert_eq!(attr.kind, FileKind::Dir);
    assert_eq!(attr.perm, 0o750);
    fs.mkdir(p("d/e"), 0o755, None).unwrap();
    write_file(fs, "d/f", b"file");
    fs.symlink(OsStr::new("f"), p("d/l"), None).unwrap();
    assert_eq!(listed(fs, ""), names(&["d"]));
    let mut entries = fs.readdir(p("d")).unwrap();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let kinds: Vec<(OsString, FileKind)> = entries.into_iter().map(|e| (e.name, e.kind)).collect();
    assert_eq!(
        kinds,
        vec![
            ("e".into(), FileKind::Dir),
            ("f".into(), FileKind::File),
            ("l".into(), FileKind::Symlink),
        ]
    );
    let plus = fs.readdir_plus(p("d")).unwrap();
    let f_attr = plus.iter().find(|(n, _)| n == "f").unwrap();
    assert_eq!(f_attr.1.size, 4);

    assert_eq!(errno(fs.rmdir(p("d"))), libc::ENOTEMPTY);
    assert_eq!(errno(fs.mkdir(p("d"), 0o755, None)), libc::EEXIST);
    assert_eq!(errno(fs.rmdir(p("d/f"))), libc::ENOTDIR);
    assert_eq!(errno(fs.unlink(p("d/e"))), libc::EISDIR);
    fs.rmdir(p("d/e")).unwrap();
    fs.unlink(p("d/f")).unwrap();
    fs.unlink(p("d/l")).unwrap();
    assert!(listed(fs, "d").is_empty());
    let backing = tv.backing("d");
    fs.rmdir(p("d")).unwrap();
    assert!(!backing.exists());
    assert!(listed(fs, "").is_empty());
    assert_eq!(backing_entries(tv.root()), vec!["envfs.conf".to_string()]);
    assert!(fs.getattr(p("d")).unwrap_err().is_not_found());
    assert_eq!(errno(fs.rmdir(p("d"))), libc::ENOENT);
}

#[test]
fn rmdir_removes_orphan_sidecars() {
    let tv = CoreVault::new(&fs_core::small());
    let fs = &tv.fs;
    fs.mkdir(p("d"), 0o755, None).unwrap();
    let name = format!("d/{}", long('x'));
    write_file(fs, &name, b"long");
    // A crash between removing the entry and its sidecar leaves the sidecar alone.
    fs::remove_file(tv.backing(&name)).unwrap();
    let dir = tv.backing("d");
    assert_eq!(sidecars(&dir).len(), 1);
    assert!(listed(fs, "d").is_empty());
    fs.rmdir(p("d")).unwrap();
    assert!(!dir.exists());

    // A foreign file is not an orphan: the directory is not empty.
    fs.mkdir(p("d2"), 0o755, None).unwrap();
    fs::write(tv.backing("d2").join("foreign.txt"), b"x").unwrap();
    assert_eq!(errno(fs.rmdir(p("d2"))), libc::ENOTEMPTY);
    assert!(tv.backing("d2").join("foreign.txt").exists());
}

#[test]
fn long_named_directories_keep_their_sidecar_until_removed() {
    let tv = CoreVault::new(&fs_core::small());
    let fs = &tv.fs;
    let d = long('d');
    fs.mkdir(p(&d), 0o755, None).unwrap();
    assert_eq!(sidecars(tv.root()).len(), 1);
    write_file(fs, &format!("{d}/inner"), b"inner");
    assert_eq!(listed(fs, ""), names(&[&d]));
    assert_eq!(read_file(fs, &format!("{d}/inner")).unwrap(), b"inner");
    fs.unlink(p(&format!("{d}/inner"))).unwrap();
    fs.rmdir(p(&d)).unwrap();
    assert_eq!(backing_entries(tv.root()), vec!["envfs.conf".to_string()]);
}

#[test]
fn names_just_under_and_over_the_long_name_limit() {
    // 149 bytes + 16 of SIV encode to exactly 220 base64url characters (the default
    // limit): stored as is. One more byte needs 222: a long name with a sidecar.
    let tv = CoreVault::new(&fs_core::small());
    let fs = &tv.fs;
    let (at, over) = ("a".repeat(149), "b".repeat(150));
    write_file(fs, &at, b"at");
    write_file(fs, &over, b"over");
    let at_backing = tv.backing(&at);
    let at_name = at_backing.file_name().unwrap().to_str().unwrap();
    assert_eq!(at_name.len(), 220);
    assert!(!at_name.contains('.'));
    let over_backing = tv.backing(&over);
    let over_name = over_backing.file_name().unwrap().to_str().unwrap();
    assert!(over_name.ends_with(".envfs-ln"), "{over_name}");
    assert_eq!(sidecars(tv.root()), vec![format!("{over_name}.name")]);
    assert_eq!(listed(fs, ""), names(&[&at, &over]));
    assert_eq!(read_file(fs, &at).unwrap(), b"at");
    assert_eq!(read_file(fs, &over).unwrap(), b"over");
}

#[test]
fn names_are_checked() {
    let tv = CoreVault::new(&fs_core::small());
    let fs = &tv.fs;
    let too_long = "n".repeat(256);
    assert!(matches!(
        fs.create(p(&too_long), 0o644, libc::O_RDWR, None),
        Err(Error::NameTooLong)
    ));
    let max = "n".repeat(255);
    write_file(fs, &max, b"max");
    assert_eq!(read_file(fs, &max).unwrap(), b"max");
    assert_eq!(errno(fs.getattr(p("missing"))), libc::ENOENT);
    assert_eq!(errno(fs.open(p("missing"), libc::O_RDONLY)), libc::ENOENT);
    fs.mkdir(p("dir"), 0o755, None).unwrap();
    assert_eq!(errno(fs.open(p("dir"), libc::O_RDONLY)), libc::EISDIR);
    assert_eq!(
        errno(fs.create(p(&max), 0o644, libc::O_RDWR | libc::O_EXCL, None)),
        libc::EEXIST
    );
}

// ---- renames ----------------------------------------------------------------------------

#[test]
fn rename_over_an_existing_file() {
    let tv = CoreVault::new(&fs_core::small());
    let fs = &tv.fs;
    let a = pattern(1, 3000);
    write_file(fs, "a", &a);
    write_file(fs, "b", &pattern(2, 5000));
    fs.rename(p("a"), p("b"), 0).unwrap();
    assert_eq!(read_file(fs, "b").unwrap(), a);
    assert!(fs.getattr(p("a")).unwrap_err().is_not_found());
    assert_eq!(listed(fs, ""), names(&["b"]));
    assert_eq!(backing_entries(tv.root()).len(), 2, "config and b");
    // Renaming a name onto itself is a no-op.
    fs.rename(p("b"), p("b"), 0).unwrap();
    assert_eq!(read_file(fs, "b").unwrap(), a);
}

#[test]
fn rename_across_directories() {
    let tv = CoreVault::new(&fs_core::small());
    let fs = &tv.fs;
    fs.mkdir(p("d1"), 0o755, None).unwrap();
    fs.mkdir(p("d2"), 0o755, None).unwrap();
    fs.mkdir(p("d1/sub"), 0o755, None).unwrap();
    let data = pattern(3, 2500);
    write_file(fs, "d1/f", &data);
    write_file(fs, "d1/sub/g", b"g");
    fs.rename(p("d1/f"), p("d2/renamed"), 0).unwrap();
    assert_eq!(read_file(fs, "d2/renamed").unwrap(), data);
    assert_eq!(listed(fs, "d1"), names(&["sub"]));
    // A whole directory moves with its contents (names are per component).
    fs.rename(p("d1/sub"), p("d2/sub2"), 0).unwrap();
    assert_eq!(read_file(fs, "d2/sub2/g").unwrap(), b"g");
    assert!(listed(fs, "d1").is_empty());
    assert_eq!(listed(fs, "d2"), names(&["renamed", "sub2"]));
}

#[test]
fn rename_with_long_names() {
    let tv = CoreVault::new(&fs_core::small());
    let fs = &tv.fs;
    let (la, lb, lc) = (long('a'), long('b'), long('c'));
    write_file(fs, "short", b"one");
    // short -> long: a sidecar appears.
    fs.rename(p("short"), p(&la), 0).unwrap();
    assert_eq!(listed(fs, ""), names(&[&la]));
    assert_eq!(sidecars(tv.root()).len(), 1);
    // long -> long: the old sidecar goes, the new one comes.
    fs.rename(p(&la), p(&lb), 0).unwrap();
    assert_eq!(listed(fs, ""), names(&[&lb]));
    assert_eq!(sidecars(tv.root()).len(), 1);
    assert_eq!(read_file(fs, &lb).unwrap(), b"one");
    // long over an existing long.
    write_file(fs, &lc, b"two");
    fs.rename(p(&lc), p(&lb), 0).unwrap();
    assert_eq!(listed(fs, ""), names(&[&lb]));
    assert_eq!(read_file(fs, &lb).unwrap(), b"two");
    assert_eq!(sidecars(tv.root()).len(), 1);
    // long -> short, into another directory.
    fs.mkdir(p("d"), 0o755, None).unwrap();
    fs.rename(p(&lb), p("d/short"), 0).unwrap();
    assert!(sidecars(tv.root()).is_empty());
    assert_eq!(read_file(fs, "d/short").unwrap(), b"two");
    assert_eq!(listed(fs, ""), names(&["d"]));
}

#[test]
fn rename_between_hard_links_of_one_file_is_a_no_op() {
    // rename(2): if both names are links to the same file, nothing happens and both stay.
    let tv = CoreVault::new(&fs_core::small());
    let fs = &tv.fs;
    for (a, b) in [("a".to_string(), "b".to_string()), (long('a'), long('b'))] {
        write_file(fs, &a, b"same");
        fs.link(p(&a), p(&b)).unwrap();
        fs.rename(p(&a), p(&b), 0).unwrap();
        assert_eq!(listed(fs, ""), names(&[&a, &b]));
        assert_eq!(read_file(fs, &a).unwrap(), b"same");
        assert_eq!(read_file(fs, &b).unwrap(), b"same");
        fs.unlink(p(&a)).unwrap();
        fs.unlink(p(&b)).unwrap();
    }
    assert_eq!(backing_entries(tv.root()), vec!["envfs.conf".to_string()]);
}

#[test]
fn failed_rename_leaves_no_sidecar() {
    let tv = CoreVault::new(&fs_core::small());
    let fs = &tv.fs;
    let target = long('t');
    assert_eq!(errno(fs.rename(p("missing"), p(&target), 0)), libc::ENOENT);
    assert!(sidecars(tv.root()).is_empty());
    write_file(fs, "f", b"f");
    fs.mkdir(p("d"), 0o755, None).unwrap();
    let into_dir = format!("d/{target}");
    fs.mkdir(p(&into_dir), 0o755, None).unwrap();
    write_file(fs, &format!("{into_dir}/x"), b"x");
    // A file cannot replace a directory.
    assert_eq!(errno(fs.rename(p("f"), p(&into_dir), 0)), libc::EISDIR);
    assert_eq!(listed(fs, "d"), names(&[&target]));
    assert_eq!(sidecars(&tv.backing("d")).len(), 1, "the existing target's");
}

#[test]
fn rename_noreplace_and_exchange() {
    let tv = CoreVault::new(&fs_core::small());
    let fs = &tv.fs;
    let (a, b) = (pattern(10, 1500), pattern(11, 700));
    write_file(fs, "a", &a);
    write_file(fs, "b", &b);
    assert_eq!(
        errno(fs.rename(p("a"), p("b"), RENAME_NOREPLACE)),
        libc::EEXIST
    );
    assert_eq!(read_file(fs, "a").unwrap(), a);
    assert_eq!(read_file(fs, "b").unwrap(), b);
    fs.rename(p("a"), p("c"), RENAME_NOREPLACE).unwrap();
    assert_eq!(read_file(fs, "c").unwrap(), a);
    assert_eq!(listed(fs, ""), names(&["b", "c"]));

    fs.rename(p("b"), p("c"), RENAME_EXCHANGE).unwrap();
    assert_eq!(read_file(fs, "b").unwrap(), a);
    assert_eq!(read_file(fs, "c").unwrap(), b);
    assert_eq!(
        errno(fs.rename(p("b"), p("nothing"), RENAME_EXCHANGE)),
        libc::ENOENT
    );

    // Exchanging a long and a short name: both keep their names (and the long its sidecar).
    let l = long('l');
    write_file(fs, &l, b"long");
    fs.rename(p(&l), p("b"), RENAME_EXCHANGE).unwrap();
    assert_eq!(read_file(fs, &l).unwrap(), a);
    assert_eq!(read_file(fs, "b").unwrap(), b"long");
    assert_eq!(listed(fs, ""), names(&["b", "c", &l]));
    assert_eq!(sidecars(tv.root()).len(), 1);
    let l2 = long('m');
    write_file(fs, &l2, b"long2");
    fs.rename(p(&l), p(&l2), RENAME_EXCHANGE).unwrap();
    assert_eq!(read_file(fs, &l).unwrap(), b"long2");
    assert_eq!(read_file(fs, &l2).unwrap(), a);
    assert_eq!(sidecars(tv.root()).len(), 2);
    // A directory and a file can be exchanged.
    fs.mkdir(p("dir"), 0o755, None).unwrap();
    write_file(fs, "dir/in", b"in");
    fs.rename(p("dir"), p("c"), RENAME_EXCHANGE).unwrap();
    assert_eq!(read_file(fs, "c/in").unwrap(), b"in");
    assert_eq!(read_file(fs, "dir").unwrap(), b);
}

// ---- links ------------------------------------------------------------------------------

#[test]
fn hard_links_share_content() {
    let tv = CoreVault::new(&fs_core::small());
    let fs = &tv.fs;
    write_file(fs, "a", &pattern(20, 2000));
    let attr = fs.link(p("a"), p("b")).unwrap();
    assert_eq!(attr.nlink, 2);
    assert_eq!(fs.getattr(p("a")).unwrap().ino, attr.ino);
    let l = long('h');
    fs.link(p("a"), p(&l)).unwrap();
    assert_eq!(fs.getattr(p("a")).unwrap().nlink, 3);

    let ha = fs.open(p("a"), libc::O_RDWR).unwrap();
    let hb = fs.open(p("b"), libc::O_RDWR).unwrap();
    assert_eq!(ha.backing_id(), hb.backing_id());
    assert_eq!(fs.open_file_count(), 1, "one open file per backing inode");
    fs.write(&ha, 1500, b"through a").unwrap();
    assert_eq!(fs.read(&hb, 1500, 9).unwrap(), b"through a");
    fs.write(&hb, 3000, b"past the end through b").unwrap();
    drop((ha, hb));
    let mut expected = pattern(20, 2000);
    expected[1500..1509].copy_from_slice(b"through a");
    expected.resize(3000, 0);
    expected.extend_from_slice(b"past the end through b");
    for name in ["a", "b", l.as_str()] {
        assert_eq!(read_file(fs, name).unwrap(), expected, "{}", &name[..1]);
    }
    fs.unlink(p("a")).unwrap();
    assert_eq!(read_file(fs, "b").unwrap(), expected);
    assert_eq!(fs.getattr(p("b")).unwrap().nlink, 2);
    assert_eq!(errno(fs.link(p("b"), p(&l))), libc::EEXIST);
}

#[test]
fn symlinks_round_trip_and_report_the_target_length() {
    for opts in [fs_core::small(), fs_core::base32(fs_core::small())] {
        let tv = CoreVault::new(&opts);
        let fs = &tv.fs;
        for len in [1usize, 2, 3, 4, 5, 15, 16, 17, 31, 100, 255, 1000, 2000] {
            let target: String = pattern(len as u64, len)
                .iter()
                .map(|b| (b'a' + b % 26) as char)
                .collect();
            let target = format!("../{target}")[..len].to_string();
            let name = format!("link{len}");
            let attr = fs.symlink(OsStr::new(&target), p(&name), None).unwrap();
            assert_eq!(attr.kind, FileKind::Symlink);
            assert_eq!(attr.size, len as u64, "size of a link to {len} bytes");
            assert_eq!(fs.getattr(p(&name)).unwrap().size, len as u64);
            assert_eq!(fs.readlink(p(&name)).unwrap(), OsStr::new(&target));
            let stored = fs::read_link(tv.backing(&name)).unwrap();
            let stored = stored.as_os_str().as_bytes();
            if len >= 4 {
                assert!(!stored.windows(len).any(|w| w == target.as_bytes()));
            }
        }
        write_file(fs, "file", b"x");
        assert_eq!(errno(fs.readlink(p("file"))), libc::EINVAL);
        assert_eq!(
            errno(fs.symlink(OsStr::new(""), p("empty-target"), None)),
            libc::EINVAL
        );
        assert_eq!(
            errno(fs.symlink(OsStr::new("x"), p("file"), None)),
            libc::EEXIST
        );
        // A link to a directory is not followed by open.
        fs.mkdir(p("dir"), 0o755, None).unwrap();
        write_file(fs, "dir/in", b"in");
        fs.symlink(OsStr::new("dir"), p("dirlink"), None).unwrap();
        assert_eq!(fs.getattr(p("dirlink")).unwrap().kind, FileKind::Symlink);
        assert_eq!(errno(fs.open(p("dirlink"), libc::O_RDONLY)), libc::ELOOP);
    }
}

// ---- attributes -------------------------------------------------------------------------

#[test]
fn chmod_chown_and_utimens() {
    let tv = CoreVault::new(&fs_core::small());
    let fs = &tv.fs;
    write_file(fs, "f", b"data");
    let set = |s: SetAttr| fs.setattr(p("f"), None, &s).unwrap();
    assert_eq!(
        set(SetAttr {
            mode: Some(0o600),
            ..Default::default()
        })
        .perm,
        0o600
    );
    assert_eq!(
        set(SetAttr {
            mode: Some(0o4751),
            ..Default::default()
        })
        .perm,
        0o4751
    );
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let attr = set(SetAttr {
        uid: Some(uid),
        gid: Some(gid),
        ..Default::default()
    });
    assert_eq!((attr.uid, attr.gid), (uid, gid));
    // chown clears setuid, as on any Linux filesystem.
    assert_eq!(attr.perm, 0o751);

    let atime = UNIX_EPOCH + Duration::new(1_500_000_000, 111_111_111);
    let mtime = UNIX_EPOCH + Duration::new(1_600_000_000, 123_456_789);
    let attr = set(SetAttr {
        atime: Some(TimeSet::At(atime)),
        mtime: Some(TimeSet::At(mtime)),
        ..Default::default()
    });
    assert_eq!((attr.atime, attr.mtime), (atime, mtime));
    // Only mtime: atime stays.
    let mtime2 = UNIX_EPOCH + Duration::new(1_700_000_000, 999_999_999);
    let attr = set(SetAttr {
        mtime: Some(TimeSet::At(mtime2)),
        ..Default::default()
    });
    assert_eq!((attr.atime, attr.mtime), (atime, mtime2));
    // Before the epoch, with nanoseconds.
    let old = UNIX_EPOCH - Duration::new(1, 500_000_000);
    let attr = set(SetAttr {
        mtime: Some(TimeSet::At(old)),
        ..Default::default()
    });
    assert_eq!(attr.mtime, old);
    let before = SystemTime::now() - Duration::from_secs(1);
    let attr = set(SetAttr {
        mtime: Some(TimeSet::Now),
        ..Default::default()
    });
    assert!(attr.mtime >= before);
    // Attribute changes do not touch the content.
    assert_eq!(read_file(fs, "f").unwrap(), b"data");

    // A symlink's own times are set, not its target's.
    let target_mtime = fs.getattr(p("f")).unwrap().mtime;
    fs.symlink(OsStr::new("f"), p("l"), None).unwrap();
    let attr = fs
        .setattr(
            p("l"),
            None,
            &SetAttr {
                mtime: Some(TimeSet::At(mtime)),
                mode: Some(0o600),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(attr.mtime, mtime);
    assert_eq!(attr.kind, FileKind::Symlink);
    assert_eq!(fs.getattr(p("f")).unwrap().mtime, target_mtime);
    assert_eq!(fs.getattr(p("f")).unwrap().perm, 0o751);
}

#[test]
fn truncate_through_setattr_without_a_handle() {
    let tv = CoreVault::new(&fs_core::small());
    let fs = &tv.fs;
    let g = fs.vault().geometry;
    let data = pattern(30, 1500);
    write_file(fs, "f", &data);
    let size = |n: u64| {
        fs.setattr(
            p("f"),
            None,
            &SetAttr {
                size: Some(n),
                ..Default::default()
            },
        )
        .unwrap()
        .size
    };
    assert_eq!(size(5000), 5000);
    let mut expected = data.clone();
    expected.resize(5000, 0);
    assert_eq!(read_file(fs, "f").unwrap(), expected);
    assert_eq!(backing_len(&tv.backing("f")), g.backing_size(5000));
    assert_eq!(size(1024), 1024);
    assert_eq!(read_file(fs, "f").unwrap(), &data[..1024]);
    assert_eq!(size(100), 100);
    assert_eq!(read_file(fs, "f").unwrap(), &data[..100]);
    assert_eq!(size(0), 0);
    assert_eq!(backing_len(&tv.backing("f")), 0);
    assert_eq!(fs.open_file_count(), 0);
    // From empty straight to a size: zeros, with a header.
    assert_eq!(size(2049), 2049);
    assert_eq!(read_file(fs, "f").unwrap(), vec![0; 2049]);
    assert_eq!(backing_len(&tv.backing("f")), g.backing_size(2049));
}

#[test]
fn user_xattrs_round_trip_encrypted() {
    let tv = CoreVault::new(&fs_core::small());
    let fs = &tv.fs;
    write_file(fs, "f", b"x");
    fs.mkdir(p("d"), 0o755, None).unwrap();
    for target in ["f", "d"] {
        let path = p(target);
        fs.setxattr(path, OsStr::new("user.secretname"), b"secretvalue", 0)
            .unwrap();
        fs.setxattr(path, OsStr::new("user.empty"), b"", 0).unwrap();
        assert_eq!(
            fs.getxattr(path, OsStr::new("user.secretname")).unwrap(),
            b"secretvalue"
        );
        assert_eq!(fs.getxattr(path, OsStr::new("user.empty")).unwrap(), b"");
        let mut list = fs.listxattr(path).unwrap();
        list.retain(|n| n.as_bytes().starts_with(b"user."));
        list.sort();
        assert_eq!(list, names(&["user.empty", "user.secretname"]));
        assert_eq!(
            errno(fs.setxattr(path, OsStr::new("user.empty"), b"v", libc::XATTR_CREATE)),
            libc::EEXIST
        );
        assert_eq!(
            errno(fs.setxattr(path, OsStr::new("user.none"), b"v", libc::XATTR_REPLACE)),
            libc::ENODATA
        );
        fs.setxattr(
            path,
            OsStr::new("user.empty"),
            b"now set",
            libc::XATTR_REPLACE,
        )
        .unwrap();
        assert_eq!(
            fs.getxattr(path, OsStr::new("user.empty")).unwrap(),
            b"now set"
        );
        // The backing store holds neither the name nor the value.
        let backing = tv.backing(target);
        for stored in
            envfs::backing::sys::listxattr(envfs::backing::sys::XattrOf::Path(&backing)).unwrap()
        {
            let text = String::from_utf8_lossy(&stored).to_string();
            assert!(
                !text.contains("secretname") && !text.contains("empty"),
                "{text}"
            );
            let value = envfs::backing::sys::getxattr(
                envfs::backing::sys::XattrOf::Path(&backing),
                OsStr::from_bytes(&stored),
            )
            .unwrap();
            assert!(!value.windows(11).any(|w| w == b"secretvalue"));
            assert!(!value.windows(7).any(|w| w == b"now set"));
        }
        fs.removexattr(path, OsStr::new("user.secretname")).unwrap();
        assert_eq!(
            errno(fs.getxattr(path, OsStr::new("user.secretname"))),
            libc::ENODATA
        );
        assert_eq!(
            errno(fs.removexattr(path, OsStr::new("user.secretname"))),
            libc::ENODATA
        );
    }
    assert_eq!(
        errno(fs.setxattr(p("f"), OsStr::new("user."), b"v", 0)),
        libc::EINVAL
    );
    assert_eq!(
        errno(fs.setxattr(p("f"), OsStr::new("nonsense.x"), b"v", 0)),
        libc::EOPNOTSUPP
    );
    // SELinux labels are not ours to keep: refused outright, so `ls -l` stops asking.
    let selinux = OsStr::new("security.selinux");
    assert_eq!(errno(fs.getxattr(p("f"), selinux)), libc::EOPNOTSUPP);
    assert_eq!(
        errno(fs.setxattr(p("f"), selinux, b"system_u:object_r:x:s0", 0)),
        libc::EOPNOTSUPP
    );
    assert_eq!(
        errno(fs.getxattr(p("f"), OsStr::new("security.capability"))),
        libc::ENODATA,
        "file capabilities still pass through"
    );
}

#[test]
fn statfs_reports_the_backing_store() {
    let tv = CoreVault::new(&fs_core::small());
    let st = tv.fs.statfs().unwrap();
    assert!(st.blocks > 0 && st.bsize > 0 && st.frsize > 0);
    assert!(st.bavail <= st.bfree && st.bfree <= st.blocks);
    assert!(st.files > 0 && st.ffree <= st.files);
    assert_eq!(st.namelen, 255);
}

// ---- file lifetimes ---------------------------------------------------------------------

#[test]
fn created_files_are_empty_on_the_backing_store() {
    let mut tv = CoreVault::new(&fs_core::small());
    let (h, attr) = tv
        .fs
        .create(p("touched"), 0o640, libc::O_RDWR | libc::O_EXCL, None)
        .unwrap();
    assert_eq!(
        (attr.size, attr.perm, attr.kind),
        (0, 0o640, FileKind::File)
    );
    assert_eq!(tv.fs.read(&h, 0, 100).unwrap(), b"");
    drop(h);
    let attr = tv
        .fs
        .mknod(p("mknodded"), libc::S_IFREG | 0o600, 0, None)
        .unwrap();
    assert_eq!((attr.size, attr.perm), (0, 0o600));
    tv.reopen();
    for name in ["touched", "mknodded"] {
        assert_eq!(backing_len(&tv.backing(name)), 0, "no header for {name}");
        assert_eq!(read_file(&tv.fs, name).unwrap(), b"");
        // Truncating an empty file to 0 writes nothing either.
        let h = tv.fs.open(p(name), libc::O_RDWR | libc::O_TRUNC).unwrap();
        tv.fs.truncate(&h, 0).unwrap();
        tv.fs.write(&h, 0, b"").unwrap();
        assert_eq!(backing_len(&tv.backing(name)), 0);
    }
}

#[test]
fn o_trunc_empties_and_the_next_write_gets_a_new_header() {
    for opts in [fs_core::small(), envfs::vault::InitOptions::default()] {
        let tv = CoreVault::new(&opts);
        let fs = &tv.fs;
        let g = fs.vault().geometry;
        write_file(fs, "f", &pattern(40, 5000));
        let backing = tv.backing("f");
        let old_id = file_id(&backing);
        let h = fs.open(p("f"), libc::O_RDWR | libc::O_TRUNC).unwrap();
        assert_eq!(backing_len(&backing), 0);
        assert_eq!(fs.getattr(p("f")).unwrap().size, 0);
        assert_eq!(fs.read(&h, 0, 10).unwrap(), b"");
        fs.write(&h, 0, b"new content").unwrap();
        let new_id = file_id(&backing);
        assert_ne!(old_id, new_id, "a new file id (and DEK) after O_TRUNC");
        assert_eq!(&fs::read(&backing).unwrap()[..4], b"ENVF");
        assert_eq!(backing_len(&backing), g.backing_size(11));
        drop(h);
        assert_eq!(read_file(fs, "f").unwrap(), b"new content");
        // Truncating to 0 through a handle does the same.
        let h = fs.open(p("f"), libc::O_RDWR).unwrap();
        fs.truncate(&h, 0).unwrap();
        fs.write(&h, 5, b"x").unwrap();
        assert_ne!(file_id(&backing), new_id);
        assert_eq!(fs.read(&h, 0, 100).unwrap(), b"\0\0\0\0\0x");
        // A read-only open leaves the content alone.
        drop(fs.open(p("f"), libc::O_RDONLY).unwrap());
        assert_eq!(read_file(fs, "f").unwrap(), b"\0\0\0\0\0x");
    }
}

#[test]
fn fallocate_grows_with_zeros() {
    let tv = CoreVault::new(&fs_core::small());
    let fs = &tv.fs;
    let g = fs.vault().geometry;
    let data = pattern(50, 100);
    write_file(fs, "f", &data);
    let h = fs.open(p("f"), libc::O_RDWR).unwrap();
    fs.fallocate(&h, 50, 5000, 0).unwrap();
    let mut expected = data.clone();
    expected.resize(5050, 0);
    assert_eq!(fs.getattr(p("f")).unwrap().size, 5050);
    assert_eq!(read_file(fs, "f").unwrap(), expected);
    assert_eq!(backing_len(&tv.backing("f")), g.backing_size(5050));
    // Inside the file: nothing changes.
    fs.fallocate(&h, 0, 10, 0).unwrap();
    assert_eq!(read_file(fs, "f").unwrap(), expected);
    // KEEP_SIZE reserves space but keeps the size and content.
    fs.fallocate(&h, 0, 20_000, libc::FALLOC_FL_KEEP_SIZE)
        .unwrap();
    assert_eq!(fs.getattr(p("f")).unwrap().size, 5050);
    assert_eq!(backing_len(&tv.backing("f")), g.backing_size(5050));
    assert_eq!(read_file(fs, "f").unwrap(), expected);
    // No holes, ever.
    assert_eq!(
        errno(fs.fallocate(
            &h,
            0,
            1024,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        )),
        libc::EOPNOTSUPP
    );
    // On an empty file.
    let (e, _) = fs.create(p("e"), 0o644, libc::O_RDWR, None).unwrap();
    fs.fallocate(&e, 0, 3000, 0).unwrap();
    assert_eq!(read_file(fs, "e").unwrap(), vec![0; 3000]);
}

// ---- limits -----------------------------------------------------------------------------

/// Total and available bytes of the filesystem holding `dir`.
fn disk_space(dir: &Path) -> (u64, u64) {
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    // SAFETY: zeroed statvfs is a valid out-parameter; c is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    (st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize)
}

/// Every way of growing a file to `size` (plaintext bytes), on a file with content and on an
/// empty one; the errors must all be `want`, and nothing may change.
fn assert_growth_refused(size: u64, want: fn(&Error) -> bool, errno: i32) {
    let tv = CoreVault::new(&fs_core::small());
    let fs = &tv.fs;
    let data = pattern(60, 3000);
    write_file(fs, "f", &data);
    let (e, _) = fs.create(p("empty"), 0o644, libc::O_RDWR, None).unwrap();
    let backing = tv.backing("f");
    let before = fs::read(&backing).unwrap();
    let huge = size;
    let h = fs.open(p("f"), libc::O_RDWR).unwrap();
    let attempts: Vec<(&str, envfs::Result<()>)> = vec![
        ("truncate", fs.truncate(&h, huge)),
        (
            "setattr size",
            fs.setattr(
                p("f"),
                None,
                &SetAttr {
                    size: Some(huge),
                    ..Default::default()
                },
            )
            .map(|_| ()),
        ),
        (
            "write far past the end",
            fs.write(&h, huge, b"x").map(|_| ()),
        ),
        ("fallocate", fs.fallocate(&h, 0, huge, 0)),
        ("truncate an empty file", fs.truncate(&e, huge)),
        (
            "write into an empty file",
            fs.write(&e, huge, b"x").map(|_| ()),
        ),
    ];
    for (what, result) in attempts {
        match result {
            Err(err) if want(&err) => assert_eq!(err.errno(), errno, "{what}"),
            other => panic!("{what}: expected errno {errno}, got {other:?}"),
        }
    }
    // Refused by a check before anything is written, not by filling the disk.
    assert_eq!(fs::read(&backing).unwrap(), before);
    assert_eq!(fs.read(&h, 0, 10_000).unwrap(), data);
    assert_eq!(backing_len(&tv.backing("empty")), 0, "no header written");
}

#[test]
fn growing_past_free_space_fails_promptly_and_changes_nothing() {
    // A size whose backing file would fit the filesystem but not its free space.
    let probe = CoreVault::new(&fs_core::small());
    let (total, available) = disk_space(probe.root());
    assert!(
        total - available > 1 << 20,
        "the test needs a filesystem with at least 1 MiB in use or reserved"
    );
    let g = probe.fs.vault().geometry;
    let size = g.plain_size_lossy(available + (total - available) / 2);
    assert_growth_refused(size, |e| matches!(e, Error::NoSpace), libc::ENOSPC);
}

#[test]
fn growing_beyond_the_whole_backing_filesystem_is_too_big() {
    // No file on the backing filesystem can be longer than the filesystem: EFBIG, which
    // POSIX gives for a length over the maximum file size (pjdfstest truncate/12 asks for
    // EFBIG or EINVAL), rather than ENOSPC, which says that freeing space would help.
    let probe = CoreVault::new(&fs_core::small());
    let (total, _) = disk_space(probe.root());
    let size = 1u64 << 50;
    assert!(
        total < size,
        "the test needs a filesystem smaller than 1 PiB"
    );
    assert_growth_refused(size, |e| matches!(e, Error::FileTooBig), libc::EFBIG);
}

#[test]
fn sizes_beyond_the_format_are_too_big() {
    let tv = CoreVault::new(&fs_core::small());
    let fs = &tv.fs;
    let max = fs.vault().geometry.max_plain_size();
    write_file(fs, "f", b"content");
    let h = fs.open(p("f"), libc::O_RDWR).unwrap();
    let attempts: Vec<(&str, envfs::Result<()>)> = vec![
        ("truncate", fs.truncate(&h, max + 1)),
        ("truncate u64::MAX", fs.truncate(&h, u64::MAX)),
        (
            "write ending past the max",
            fs.write(&h, max, b"x").map(|_| ()),
        ),
        (
            "write at u64::MAX",
            fs.write(&h, u64::MAX, b"xy").map(|_| ()),
        ),
        ("fallocate", fs.fallocate(&h, max, 1, 0)),
        ("fallocate overflow", fs.fallocate(&h, u64::MAX, 2, 0)),
        (
            "setattr size",
            fs.setattr(
                p("f"),
                None,
                &SetAttr {
                    size: Some(max + 1),
                    ..Default::default()
                },
            )
            .map(|_| ()),
        ),
    ];
    for (what, result) in attempts {
        match result {
            Err(err @ Error::FileTooBig) => assert_eq!(err.errno(), libc::EFBIG),
            other => panic!("{what}: expected FileTooBig, got {other:?}"),
        }
    }
    assert_eq!(read_file(fs, "f").unwrap(), b"content");
}

#[test]
fn unlinked_open_files_keep_working() {
    let tv = CoreVault::new(&fs_core::small());
    let fs = &tv.fs;
    write_file(fs, "f", &pattern(70, 2000));
    let h = fs.open(p("f"), libc::O_RDWR).unwrap();
    fs.unlink(p("f")).unwrap();
    assert!(fs.getattr(p("f")).unwrap_err().is_not_found());
    fs.write(&h, 1990, b"after unlink").unwrap();
    assert_eq!(fs.getattr_handle(&h).unwrap().size, 2002);
    assert_eq!(fs.read(&h, 1990, 100).unwrap(), b"after unlink");
    // A new file of the same name is another file.
    write_file(fs, "f", b"new");
    assert_eq!(read_file(fs, "f").unwrap(), b"new");
    assert_eq!(fs.read(&h, 0, 3).unwrap(), &pattern(70, 3)[..]);
}

#[test]
fn growing_by_more_than_one_zero_fill_step() {
    // Zero fill runs in 1 MiB steps; cross a few of them from a partial last chunk.
    let tv = CoreVault::new(&envfs::vault::InitOptions::default());
    let fs = &tv.fs;
    let g = fs.vault().geometry;
    let data = pattern(80, 5000);
    write_file(fs, "f", &data);
    let h = fs.open(p("f"), libc::O_RDWR).unwrap();
    let far = (2 << 20) + 12_345;
    fs.write(&h, far, b"tail").unwrap();
    let size = far + 4;
    assert_eq!(fs.getattr(p("f")).unwrap().size, size);
    assert_eq!(backing_len(&tv.backing("f")), g.backing_size(size));
    let got = read_file(fs, "f").unwrap();
    assert!(got[..5000] == data[..]);
    assert!(got[5000..far as usize].iter().all(|&b| b == 0));
    assert_eq!(&got[far as usize..], b"tail");
    fs.truncate(&h, (3 << 20) + 1).unwrap();
    let got = read_file(fs, "f").unwrap();
    assert_eq!(got.len(), (3 << 20) + 1);
    assert_eq!(&got[far as usize..size as usize], b"tail");
    assert!(got[size as usize..].iter().all(|&b| b == 0));
}

#[test]
fn plaintext_names_vault_reserves_its_own_names() {
    let mut opts = fs_core::small();
    opts.plaintext_names = true;
    let tv = CoreVault::new(&opts);
    let fs = &tv.fs;
    for reserved in ["envfs.conf", ".envfs-anything"] {
        assert!(matches!(
            fs.create(p(reserved), 0o644, libc::O_RDWR, None),
            Err(Error::ReservedName)
        ));
    }
    fs.mkdir(p("d"), 0o755, None).unwrap();
    write_file(fs, "d/envfs.conf", b"only the root's is reserved");
    write_file(fs, "visible", b"v");
    assert_eq!(listed(fs, ""), names(&["d", "visible"]));
    assert_eq!(listed(fs, "d"), names(&["envfs.conf"]));
    assert!(tv.root().join("visible").exists(), "names are stored as is");
    fs.symlink(OsStr::new("plain/target"), p("l"), None)
        .unwrap();
    assert_eq!(fs.readlink(p("l")).unwrap(), "plain/target");
    assert_eq!(fs.getattr(p("l")).unwrap().size, 12);
}

/// Changes the backing store reports (inotify) are judged in the mount's terms: the
/// plaintext name, the inode now there, and whether a change of contents is only this
/// core's own last write (open or closed since) or someone else's.
#[test]
fn backing_changes_are_judged_by_name_and_by_who_wrote_them() {
    use envfs::backing::watch::EventKind;
    let v = CoreVault::new(&fs_core::small());
    let fs = &v.fs;
    fs.start_watching().unwrap();
    fs.mkdir(p("d"), 0o755, None).unwrap();
    fs.watch_dir(p("d")).unwrap();
    write_file(fs, "d/mine", b"written through the core");
    let (h, _) = fs
        .create(p("d/open"), 0o644, libc::O_CREAT | libc::O_RDWR, None)
        .unwrap();
    fs.write(&h, 0, b"still open").unwrap();
    // Bounded: events for the writes above arrive at once on a local filesystem.
    let mut events = Vec::new();
    for _ in 0..10 {
        events.extend(
            fs.wait_for_changes(Duration::from_secs(1), Duration::ZERO)
                .unwrap(),
        );
        if events
            .iter()
            .filter(|e| e.kind == EventKind::Modified)
            .count()
            >= 2
        {
            break;
        }
    }
    let mut judged = Vec::new();
    for e in events.iter().filter(|e| e.kind == EventKind::Modified) {
        let c = fs.judge_change(p("d"), e).unwrap();
        assert!(c.now.is_some());
        judged.push((c.names.clone(), c.ours));
    }
    assert!(
        judged.contains(&(vec![OsString::from("mine")], true)),
        "{judged:?}"
    );
    assert!(
        judged.contains(&(vec![OsString::from("open")], true)),
        "{judged:?}"
    );

    // Someone else appends a byte to the backing file: no longer this core's write.
    let backing = fs.backing_path(p("d/mine")).unwrap();
    let mut raw = fs::OpenOptions::new().append(true).open(&backing).unwrap();
    std::io::Write::write_all(&mut raw, b"x").unwrap();
    drop(raw);
    let mut theirs = None;
    for _ in 0..10 {
        let got = fs
            .wait_for_changes(Duration::from_secs(1), Duration::ZERO)
            .unwrap();
        if let Some(e) = got.iter().find(|e| e.kind == EventKind::Modified) {
            theirs = Some(fs.judge_change(p("d"), e).unwrap());
            break;
        }
    }
    let theirs = theirs.expect("a change event for the outside write");
    assert_eq!(theirs.names, vec![OsString::from("mine")]);
    assert!(
        !theirs.ours,
        "a write made behind the core's back is not its own"
    );
    drop(h);
}
