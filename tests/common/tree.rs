//! Directory trees as data: copy a cache without following links, take a snapshot of
//! everything under a root, and compare two snapshots with a readable diff.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What a snapshot records for one path.
#[derive(Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file: length, permission bits and CRC32 of the content.
    File { len: u64, mode: u32, crc: u32 },
    /// A symlink and its target, byte for byte, except that an absolute target inside
    /// the snapshot root is written `$ROOT/...` so copies at other places compare equal.
    Symlink(Vec<u8>),
    /// Anything else (fifo, socket, device).
    Other,
}

impl fmt::Debug for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Dir => write!(f, "dir"),
            Kind::File { len, mode, crc } => write!(f, "file len={len} mode={mode:o} crc={crc:08x}"),
            Kind::Symlink(t) => write!(f, "symlink -> {:?}", OsString::from_vec(t.clone())),
            Kind::Other => write!(f, "other"),
        }
    }
}

/// Every path under a root (relative to it; the root itself is not included).
pub type Tree = BTreeMap<PathBuf, Kind>;

/// Snapshot of everything under `root`, never following symlinks. Panics if `root` is
/// not a directory.
pub fn snapshot(root: &Path) -> Tree {
    assert!(
        root.symlink_metadata().map(|m| m.is_dir()).unwrap_or(false),
        "snapshot: {} is not a directory",
        root.display()
    );
    let mut tree = Tree::new();
    walk(root, root, &mut tree);
    tree
}

fn walk(root: &Path, dir: &Path, tree: &mut Tree) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let meta = path.symlink_metadata().unwrap();
        let rel = path.strip_prefix(root).unwrap().to_path_buf();
        let ft = meta.file_type();
        if ft.is_dir() {
            tree.insert(rel, Kind::Dir);
            walk(root, &path, tree);
        } else if ft.is_file() {
            let data = std::fs::read(&path).unwrap();
            let crc = super::archive::crc32(&data);
            let mode = meta.permissions().mode() & 0o7777;
            tree.insert(rel, Kind::File { len: meta.len(), mode, crc });
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path).unwrap();
            let target = match target.strip_prefix(root) {
                Ok(inside) if target.is_absolute() => {
                    let mut t = b"$ROOT/".to_vec();
                    t.extend_from_slice(inside.as_os_str().as_bytes());
                    t
                }
                _ => target.into_os_string().into_vec(),
            };
            tree.insert(rel, Kind::Symlink(target));
        } else {
            tree.insert(rel, Kind::Other);
        }
    }
}

/// Copies `src` to `dst` (which must not exist): symlinks are recreated verbatim (never
/// followed), hard links between files inside `src` stay hard links, permission bits are
/// kept.
pub fn copy_tree(src: &Path, dst: &Path) {
    copy_inner(src, dst, &mut HashMap::new(), None);
}

/// Like [`copy_tree`], but an absolute symlink target inside `src` is rewritten to the same
/// place inside `dst` (uv < 0.11.17 wrote absolute links to its own cache; a moved copy must
/// point into itself to behave like the original).
pub fn copy_cache(src: &Path, dst: &Path) {
    copy_inner(src, dst, &mut HashMap::new(), Some((src, dst)));
}

fn copy_inner(
    src: &Path,
    dst: &Path,
    inodes: &mut HashMap<(u64, u64), PathBuf>,
    relocate: Option<(&Path, &Path)>,
) {
    let meta = src.symlink_metadata().unwrap();
    let ft = meta.file_type();
    if ft.is_dir() {
        std::fs::create_dir(dst).unwrap_or_else(|e| panic!("mkdir {}: {e}", dst.display()));
        for entry in std::fs::read_dir(src).unwrap() {
            let entry = entry.unwrap();
            copy_inner(&entry.path(), &dst.join(entry.file_name()), inodes, relocate);
        }
        std::fs::set_permissions(dst, meta.permissions()).unwrap();
    } else if ft.is_symlink() {
        let mut target = std::fs::read_link(src).unwrap();
        if let Some((from, to)) = relocate {
            if let Ok(inside) = target.strip_prefix(from) {
                target = to.join(inside);
            }
        }
        std::os::unix::fs::symlink(&target, dst).unwrap();
    } else if ft.is_file() {
        let key = (meta.dev(), meta.ino());
        if meta.nlink() > 1 {
            if let Some(first) = inodes.get(&key) {
                std::fs::hard_link(first, dst).unwrap();
                return;
            }
            inodes.insert(key, dst.to_path_buf());
        }
        std::fs::copy(src, dst).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
    } else {
        panic!("copy_tree: unsupported file type at {}", src.display());
    }
}

/// Lines describing how `actual` differs from `expected` (empty when equal). A directory
/// present on one side only is one line with the number of entries inside it.
pub fn tree_diff(expected: &Tree, actual: &Tree) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    // (side, directory, entries inside) of the one-sided directory being collapsed.
    let mut open: Option<(char, PathBuf, usize, String)> = None;
    let keys: std::collections::BTreeSet<&PathBuf> = expected.keys().chain(actual.keys()).collect();
    let flush = |open: &mut Option<(char, PathBuf, usize, String)>, lines: &mut Vec<String>| {
        if let Some((side, dir, inside, what)) = open.take() {
            let n = if inside > 0 { format!(", {inside} entries inside") } else { String::new() };
            lines.push(format!("{side} {dir:?}  (dir{n})  {what}"));
        }
    };
    for key in keys {
        let (e, a) = (expected.get(key), actual.get(key));
        let side = match (e, a) {
            (Some(_), None) => '-',
            (None, Some(_)) => '+',
            _ => ' ',
        };
        if let Some((open_side, dir, inside, _)) = open.as_mut() {
            if *open_side == side && key.starts_with(&*dir) {
                *inside += 1;
                continue;
            }
        }
        flush(&mut open, &mut lines);
        match (e, a) {
            (Some(Kind::Dir), None) => open = Some(('-', key.clone(), 0, "missing from actual".into())),
            (None, Some(Kind::Dir)) => open = Some(('+', key.clone(), 0, "not in expected".into())),
            (Some(e), None) => lines.push(format!("- {key:?}  ({e:?})  missing from actual")),
            (None, Some(a)) => lines.push(format!("+ {key:?}  ({a:?})  not in expected")),
            (Some(e), Some(a)) if e != a => lines.push(format!("~ {key:?}  expected {e:?}, actual {a:?}")),
            _ => {}
        }
    }
    flush(&mut open, &mut lines);
    lines
}

/// Panics with a readable diff if the trees differ. `what` names the comparison, e.g.
/// `"uv cache prune (expected) vs safe-prune (actual)"`.
pub fn assert_same_tree(expected: &Tree, actual: &Tree, what: &str) {
    let diff = tree_diff(expected, actual);
    if diff.is_empty() {
        return;
    }
    const MAX: usize = 150;
    let mut msg = format!(
        "trees differ: {what}\n  {} paths expected, {} actual; differences \
         ('-' only in expected, '+' only in actual, '~' changed):\n",
        expected.len(),
        actual.len(),
    );
    for line in diff.iter().take(MAX) {
        msg.push_str("  ");
        msg.push_str(line);
        msg.push('\n');
    }
    if diff.len() > MAX {
        msg.push_str(&format!("  ... and {} more\n", diff.len() - MAX));
    }
    panic!("{msg}");
}

/// Paths of a tree, one per line, for messages.
pub fn render(tree: &Tree) -> String {
    tree.iter().map(|(p, k)| format!("  {:?}  {k:?}\n", p)).collect()
}

/// Joins a relative path made of raw bytes (non-UTF-8 names in fixtures).
pub fn bytes_path(dir: &Path, name: &[u8]) -> PathBuf {
    dir.join(std::ffi::OsStr::from_bytes(name))
}
