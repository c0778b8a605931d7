//! The inode table: FUSE node ids ↔ mount-relative plaintext paths.
//!
//! Node ids are the backing inode numbers (the root is 1), so they survive remounts and hard
//! links share one id. Each node remembers the (parent, name) links it is known by, not full
//! paths, so renaming a directory moves its whole subtree by updating one entry. A hard-linked
//! file keeps every name it was looked up by, and unlinking one name leaves the others: an
//! operation on the node must never land on whatever new file later takes a removed name.
//! Lookup counts follow the FUSE protocol (every entry reply is one lookup; `forget` gives
//! them back) so the table stays bounded by what the kernel caches.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::sync::{Mutex, RwLock};

pub const ROOT: u64 = 1;

struct Node {
    /// Known links, most recent last.
    links: Vec<(u64, OsString)>,
    lookups: u64,
}

pub struct Inodes {
    root_dev: u64,
    root_ino: u64,
    nodes: RwLock<Table>,
    /// Links this mount is making, removing or renaming right now, and how many requests
    /// are at each: the watch reports the backing change before the reply has told the
    /// kernel, and must not invalidate what the reply is about to say (fuse/watch.rs).
    changing: Mutex<HashMap<(u64, OsString), usize>>,
}

/// A link being changed by a request (`Inodes::changing`); done when dropped, which must
/// come after the inode table is updated.
pub struct Changing<'a> {
    inodes: &'a Inodes,
    links: Vec<(u64, OsString)>,
}

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        let mut changing = self.inodes.changing.lock().unwrap();
        for link in &self.links {
            if let Some(n) = changing.get_mut(link) {
                *n -= 1;
                if *n == 0 {
                    changing.remove(link);
                }
            }
        }
    }
}

struct Table {
    nodes: HashMap<u64, Node>,
    /// Which node each known (parent, name) link belongs to: keeps every update O(1) —
    /// `rm -rf` of a large tree must not scan the whole table per entry.
    by_link: HashMap<(u64, OsString), u64>,
    /// Ids for backing inodes that cannot use their own number (another device, or the
    /// numbers 0 and 1 that FUSE reserves), keyed by (dev, ino).
    foreign: HashMap<(u64, u64), u64>,
    next_foreign: u64,
}

impl Table {
    /// Forget the link `parent/name` wherever it is recorded (it was removed or replaced).
    fn drop_link(&mut self, parent: u64, name: &OsStr) {
        if let Some(id) = self.by_link.remove(&(parent, name.to_os_string()))
            && let Some(node) = self.nodes.get_mut(&id)
        {
            node.links.retain(|(p, n)| !(*p == parent && n == name));
        }
    }

    /// Record `parent/name` as a link of `id` (taking it from any node that had it).
    fn add_link(&mut self, id: u64, parent: u64, name: &OsStr) {
        let key = (parent, name.to_os_string());
        if self.by_link.get(&key).is_some_and(|&owner| owner != id) {
            self.drop_link(parent, name);
        }
        if let Some(node) = self.nodes.get_mut(&id) {
            node.links.retain(|(p, n)| !(*p == parent && n == name));
            node.links.push(key.clone());
        }
        self.by_link.insert(key, id);
    }
}

impl Inodes {
    pub fn new(root_dev: u64, root_ino: u64) -> Inodes {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                links: Vec::new(),
                lookups: 1,
            },
        );
        Inodes {
            root_dev,
            root_ino,
            nodes: RwLock::new(Table {
                nodes,
                by_link: HashMap::new(),
                foreign: HashMap::new(),
                next_foreign: 1 << 63,
            }),
            changing: Mutex::new(HashMap::new()),
        }
    }

    /// Mark links `parent/name` as being changed by this mount until the guard drops.
    pub fn changing(&self, links: &[(u64, &OsStr)]) -> Changing<'_> {
        let links: Vec<(u64, OsString)> =
            links.iter().map(|(p, n)| (*p, n.to_os_string())).collect();
        let mut changing = self.changing.lock().unwrap();
        for link in &links {
            *changing.entry(link.clone()).or_default() += 1;
        }
        drop(changing);
        Changing {
            inodes: self,
            links,
        }
    }

    /// Whether a request of this mount is changing link `parent/name` right now.
    pub fn is_changing(&self, parent: u64, name: &OsStr) -> bool {
        self.changing
            .lock()
            .unwrap()
            .contains_key(&(parent, name.to_os_string()))
    }

    /// The node id for a backing inode (without registering it).
    pub fn id_for(&self, dev: u64, ino: u64) -> u64 {
        if dev == self.root_dev && ino == self.root_ino {
            return ROOT;
        }
        if dev == self.root_dev && ino > 1 && ino < 1 << 63 {
            return ino;
        }
        let mut t = self.nodes.write().unwrap();
        if let Some(&id) = t.foreign.get(&(dev, ino)) {
            return id;
        }
        let id = t.next_foreign;
        t.next_foreign += 1;
        t.foreign.insert((dev, ino), id);
        id
    }

    /// Record one lookup of `id` as `parent/name`.
    pub fn remember(&self, id: u64, parent: u64, name: &OsStr) {
        if id == ROOT {
            return;
        }
        let mut t = self.nodes.write().unwrap();
        t.nodes.entry(id).or_insert_with(|| Node {
            links: Vec::new(),
            lookups: 0,
        });
        // A name belongs to one node at a time: if another node still claims it, that
        // node's file was replaced behind our back.
        t.add_link(id, parent, name);
        t.nodes.get_mut(&id).expect("inserted above").lookups += 1;
    }

    /// The kernel dropped `n` lookups of `id`. True when that was the last: the node is
    /// gone from the table (and the kernel holds nothing of it).
    pub fn forget(&self, id: u64, n: u64) -> bool {
        if id == ROOT {
            return false;
        }
        let mut t = self.nodes.write().unwrap();
        let Some(node) = t.nodes.get_mut(&id) else {
            return false;
        };
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups > 0 {
            return false;
        }
        let node = t.nodes.remove(&id).expect("present");
        for link in node.links {
            if t.by_link.get(&link) == Some(&id) {
                t.by_link.remove(&link);
            }
        }
        true
    }

    /// The node id of a backing inode the kernel holds a node for, if it does: unlike
    /// `id_for`, never hands out a new id.
    pub fn existing_id(&self, dev: u64, ino: u64) -> Option<u64> {
        if dev == self.root_dev && ino == self.root_ino {
            return Some(ROOT);
        }
        let t = self.nodes.read().unwrap();
        let id = if dev == self.root_dev && ino > 1 && ino < 1 << 63 {
            ino
        } else {
            *t.foreign.get(&(dev, ino))?
        };
        t.nodes.contains_key(&id).then_some(id)
    }

    /// The node the kernel knows as `parent/name`, if any.
    pub fn link_target(&self, parent: u64, name: &OsStr) -> Option<u64> {
        let t = self.nodes.read().unwrap();
        t.by_link.get(&(parent, name.to_os_string())).copied()
    }

    /// Every name the kernel knows under `parent`. A scan of the whole table: for the rare
    /// event that cannot be narrowed to one name.
    pub fn names_in(&self, parent: u64) -> Vec<OsString> {
        let t = self.nodes.read().unwrap();
        (t.by_link.keys())
            .filter(|(p, _)| *p == parent)
            .map(|(_, name)| name.clone())
            .collect()
    }

    /// Every (parent, name) link and every node id the kernel holds, for invalidating all
    /// of them.
    pub fn everything(&self) -> (Vec<(u64, OsString)>, Vec<u64>) {
        let t = self.nodes.read().unwrap();
        (
            t.by_link.keys().cloned().collect(),
            t.nodes.keys().copied().collect(),
        )
    }

    /// `parent/name` was unlinked or removed.
    pub fn unlinked(&self, parent: u64, name: &OsStr) {
        self.nodes.write().unwrap().drop_link(parent, name);
    }

    /// A node was renamed from `parent/name` to `new_parent/new_name` (replacing whatever
    /// was there).
    pub fn renamed(&self, parent: u64, name: &OsStr, new_parent: u64, new_name: &OsStr) {
        let mut t = self.nodes.write().unwrap();
        t.drop_link(new_parent, new_name);
        if let Some(id) = t.by_link.get(&(parent, name.to_os_string())).copied() {
            t.drop_link(parent, name);
            t.add_link(id, new_parent, new_name);
        }
    }

    /// Two names were exchanged (RENAME_EXCHANGE).
    pub fn exchanged(&self, a: (u64, &OsStr), b: (u64, &OsStr)) {
        let mut t = self.nodes.write().unwrap();
        let id_a = t.by_link.get(&(a.0, a.1.to_os_string())).copied();
        let id_b = t.by_link.get(&(b.0, b.1.to_os_string())).copied();
        t.drop_link(a.0, a.1);
        t.drop_link(b.0, b.1);
        if let Some(id) = id_a {
            t.add_link(id, b.0, b.1);
        }
        if let Some(id) = id_b {
            t.add_link(id, a.0, a.1);
        }
    }

    /// The mount-relative plaintext path of a node, or `None` if no link of it is known
    /// (the kernel asks about a node whose every name was removed).
    pub fn path(&self, id: u64) -> Option<PathBuf> {
        let t = self.nodes.read().unwrap();
        Self::resolve(&t, id, 0)
    }

    /// Newest link first, falling back to older ones whose parents still resolve (a hard
    /// link whose directory the kernel has forgotten must not make the file unreachable).
    fn resolve(t: &Table, id: u64, depth: usize) -> Option<PathBuf> {
        if id == ROOT {
            return Some(PathBuf::new());
        }
        if depth > 4096 {
            return None;
        }
        let node = t.nodes.get(&id)?;
        node.links
            .iter()
            .rev()
            .find_map(|(parent, name)| Self::resolve(t, *parent, depth + 1).map(|p| p.join(name)))
    }

    /// `parent`'s path joined with `name`.
    pub fn child_path(&self, parent: u64, name: &OsStr) -> Option<PathBuf> {
        self.path(parent).map(|p| p.join(name))
    }

    pub fn len(&self) -> usize {
        self.nodes.read().unwrap().nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_renames_and_forgets_free_nodes() {
        let t = Inodes::new(5, 2);
        assert_eq!(t.id_for(5, 2), ROOT);
        assert_eq!(t.id_for(5, 100), 100);
        let foreign = t.id_for(6, 100);
        assert!(foreign >= 1 << 63);
        assert_eq!(t.id_for(6, 100), foreign);
        t.remember(100, ROOT, OsStr::new("dir"));
        t.remember(101, 100, OsStr::new("file"));
        assert_eq!(t.path(101).unwrap(), PathBuf::from("dir/file"));
        t.renamed(ROOT, OsStr::new("dir"), ROOT, OsStr::new("moved"));
        assert_eq!(t.path(101).unwrap(), PathBuf::from("moved/file"));
        assert_eq!(t.existing_id(5, 101), Some(101));
        assert_eq!(t.existing_id(5, 2), Some(ROOT));
        assert_eq!(t.existing_id(5, 102), None, "never looked up");
        assert_eq!(t.existing_id(6, 100), None, "an id, but no node");
        assert_eq!(t.link_target(100, OsStr::new("file")), Some(101));
        assert_eq!(t.names_in(100), vec![OsString::from("file")]);
        assert!(t.forget(101, 1));
        assert!(!t.forget(101, 1), "already gone");
        assert!(t.path(101).is_none());
        assert_eq!(t.existing_id(5, 101), None);
        assert_eq!(t.link_target(100, OsStr::new("file")), None);
        assert_eq!(t.path(ROOT).unwrap(), PathBuf::new());
    }

    #[test]
    fn hard_links_survive_unlinking_one_name_and_never_alias_a_new_file() {
        let t = Inodes::new(5, 2);
        t.remember(10, ROOT, OsStr::new("f"));
        t.remember(10, ROOT, OsStr::new("g"));
        t.unlinked(ROOT, OsStr::new("g"));
        assert_eq!(t.path(10).unwrap(), PathBuf::from("f"));
        // A new file takes the name g: node 10 must not reach it.
        t.remember(11, ROOT, OsStr::new("g"));
        assert_eq!(t.path(10).unwrap(), PathBuf::from("f"));
        assert_eq!(t.path(11).unwrap(), PathBuf::from("g"));
        // Renaming over an existing name drops the replaced node's link.
        t.remember(12, ROOT, OsStr::new("h"));
        t.renamed(ROOT, OsStr::new("g"), ROOT, OsStr::new("h"));
        assert_eq!(t.path(11).unwrap(), PathBuf::from("h"));
        assert!(t.path(12).is_none());
        t.unlinked(ROOT, OsStr::new("f"));
        assert!(t.path(10).is_none());
    }

    #[test]
    fn a_link_through_a_forgotten_directory_falls_back_to_another() {
        let t = Inodes::new(5, 2);
        t.remember(20, ROOT, OsStr::new("a"));
        t.remember(21, ROOT, OsStr::new("b"));
        t.remember(30, 20, OsStr::new("f"));
        t.remember(30, 21, OsStr::new("f"));
        t.forget(21, 1);
        assert_eq!(t.path(30).unwrap(), PathBuf::from("a/f"));
    }
}
