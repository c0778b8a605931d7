//! The inode table: FUSE node ids ↔ mount-relative plaintext paths.
//!
//! Node ids are the backing inode numbers (the root is 1), so they survive remounts and hard
//! links share one id. Each node remembers its parent and name, not its full path, so renaming
//! a directory moves its whole subtree by updating one entry. Lookup counts follow the FUSE
//! protocol (every entry reply is one lookup; `forget` gives them back) so the table stays
//! bounded by what the kernel caches.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::sync::RwLock;

pub const ROOT: u64 = 1;

struct Node {
    parent: u64,
    name: OsString,
    lookups: u64,
}

pub struct Inodes {
    root_dev: u64,
    root_ino: u64,
    nodes: RwLock<Table>,
}

struct Table {
    nodes: HashMap<u64, Node>,
    /// Ids for backing inodes that cannot use their own number (another device, or the
    /// numbers 0 and 1 that FUSE reserves), keyed by (dev, ino).
    foreign: HashMap<(u64, u64), u64>,
    next_foreign: u64,
}

impl Inodes {
    pub fn new(root_dev: u64, root_ino: u64) -> Inodes {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                parent: ROOT,
                name: OsString::new(),
                lookups: 1,
            },
        );
        Inodes {
            root_dev,
            root_ino,
            nodes: RwLock::new(Table {
                nodes,
                foreign: HashMap::new(),
                next_foreign: 1 << 63,
            }),
        }
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

    /// Record one lookup of `id` as `parent/name` (the most recent name wins for hard links).
    pub fn remember(&self, id: u64, parent: u64, name: &OsStr) {
        if id == ROOT {
            return;
        }
        let mut t = self.nodes.write().unwrap();
        let node = t.nodes.entry(id).or_insert_with(|| Node {
            parent,
            name: name.to_os_string(),
            lookups: 0,
        });
        node.parent = parent;
        node.name = name.to_os_string();
        node.lookups += 1;
    }

    /// The kernel dropped `n` lookups of `id`.
    pub fn forget(&self, id: u64, n: u64) {
        if id == ROOT {
            return;
        }
        let mut t = self.nodes.write().unwrap();
        if let Some(node) = t.nodes.get_mut(&id) {
            node.lookups = node.lookups.saturating_sub(n);
            if node.lookups == 0 {
                t.nodes.remove(&id);
            }
        }
    }

    /// A node was renamed from `parent/name` to `new_parent/new_name`.
    pub fn renamed(&self, parent: u64, name: &OsStr, new_parent: u64, new_name: &OsStr) {
        let mut t = self.nodes.write().unwrap();
        for node in t.nodes.values_mut() {
            if node.parent == parent && node.name == name {
                node.parent = new_parent;
                node.name = new_name.to_os_string();
                break;
            }
        }
    }

    /// Two names were exchanged (RENAME_EXCHANGE).
    pub fn exchanged(&self, a: (u64, &OsStr), b: (u64, &OsStr)) {
        let mut t = self.nodes.write().unwrap();
        for node in t.nodes.values_mut() {
            if node.parent == a.0 && node.name == a.1 {
                node.parent = b.0;
                node.name = b.1.to_os_string();
            } else if node.parent == b.0 && node.name == b.1 {
                node.parent = a.0;
                node.name = a.1.to_os_string();
            }
        }
    }

    /// The mount-relative plaintext path of a node, or `None` if the kernel asks about a
    /// node we no longer know (which it should not).
    pub fn path(&self, id: u64) -> Option<PathBuf> {
        let t = self.nodes.read().unwrap();
        let mut parts = Vec::new();
        let mut current = id;
        while current != ROOT {
            let node = t.nodes.get(&current)?;
            parts.push(node.name.clone());
            current = node.parent;
            if parts.len() > 4096 {
                return None;
            }
        }
        Some(parts.iter().rev().collect())
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
        t.forget(101, 1);
        assert!(t.path(101).is_none());
        assert_eq!(t.path(ROOT).unwrap(), PathBuf::new());
    }
}
