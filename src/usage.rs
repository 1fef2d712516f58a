//! Which cache entries running processes use: from the platform scan's raw evidence to
//! entries, holders and the closure of what those entries need.
//!
//! A path counts when it lies under any *spelling* of the cache root: the path as configured,
//! its canonical form, and every bind-mount alias found in `/proc/self/mountinfo` (a bind
//! mount of the cache, or of one entry, elsewhere). Where the cache lies in its filesystem
//! (from the same mountinfo) goes to the scan, which reads the environment and command line
//! of a process in another mount namespace with that namespace's spellings and hands back
//! such hits rewritten to the canonical root (the process's own text kept for the report).
//! Evidence the scan caught only by device and inode (a process in another mount namespace)
//! is resolved with one walk of the cache. Matching is byte-exact prefix comparison; nothing
//! is parsed as a pattern.
//!
//! An entry in use is kept together with its closure: the `environments-v2` links (and other
//! links) that reach it, so the running tool's environment stays reusable; the environments a
//! `uv run --with` overlay extends (`pyvenv.cfg`, `_uv_ephemeral_overlay.pth`); and every
//! entry a symlink inside it points into (symlink link-mode venvs).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use platform::{Device, Evidence, FsLocation, ScanReport, ScanRequest, Source};
use rayon::prelude::*;
use serde::Serialize;

use crate::layout::{self, Family, TopLevel};

/// One spelling of (a part of) the cache: a path under `prefix` is `rel` joined with the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spelling {
    pub prefix: Vec<u8>,
    pub rel: PathBuf,
}

/// A process holding an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holder {
    pub pid: u32,
    pub command: String,
    pub user: String,
    /// `exe`, `cwd`, `root`, `thread-cwd`, `fd`, `map`, `environ`, `cmdline`.
    pub evidence: &'static str,
    pub detail: String,
    /// The host, for holders published by another host's agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// True for safe-prune's own process (a `uvx safe-prune` run keeps its own environment).
    #[serde(rename = "self", skip_serializing_if = "std::ops::Not::not")]
    pub is_self: bool,
}

/// A process that could not be inspected, for reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UninspectableProcess {
    pub pid: u32,
    pub command: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    pub reason: String,
}

/// The scan's bookkeeping, reported as `"processes"` in JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProcessSummary {
    pub scanned: usize,
    pub gone: usize,
    pub uninspectable: Vec<UninspectableProcess>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hidden: Option<String>,
}

/// What the scan found, mapped to entries.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    /// Entries with direct evidence, with their holders.
    pub direct: BTreeMap<PathBuf, Vec<Holder>>,
    /// Entries needed by an in-use entry, with the in-use entry that needs them.
    pub closure: BTreeMap<PathBuf, PathBuf>,
    pub summary: ProcessSummary,
    /// Command lines of running `uv`/`uvx` processes (pid, argv).
    pub uv_commands: Vec<(u32, Vec<Vec<u8>>)>,
    /// Pids of those that use this cache without holding its `.lock` open: uv older than
    /// 0.8.19, which never locks, so it may be writing the cache even while we hold the lock.
    pub lockless_uv: Vec<u32>,
}

impl Usage {
    /// Every entry to keep (direct and closure).
    pub fn all_entries(&self) -> impl Iterator<Item = &PathBuf> {
        self.direct.keys().chain(self.closure.keys())
    }
}

/// The cache as the scan needs it.
pub struct CacheView<'a> {
    /// Canonical root.
    pub root: &'a Path,
    /// Every spelling, longest prefix first.
    pub spellings: Vec<Spelling>,
    pub device: Option<Device>,
    /// Where the cache lies in its filesystem, from our mountinfo: the scan finds the cache's
    /// spellings in other mount namespaces from it.
    pub location: Option<FsLocation>,
}

impl<'a> CacheView<'a> {
    /// Spellings of `root` (canonical) as `configured` (absolute) and through mounts.
    pub fn new(root: &'a Path, configured: &Path, mountinfo: Option<&[u8]>) -> Self {
        let mut spellings = vec![
            Spelling { prefix: root.as_os_str().as_bytes().to_vec(), rel: PathBuf::new() },
            Spelling { prefix: normalize(configured).as_os_str().as_bytes().to_vec(), rel: PathBuf::new() },
        ];
        let device = std::fs::metadata(root).ok().map(|m| device_of(m.dev()));
        let location =
            mountinfo.and_then(|info| platform::mountinfo::locate(info, root.as_os_str().as_bytes(), device));
        if let (Some(info), Some(location)) = (mountinfo, &location) {
            spellings.extend(mount_aliases(info, location));
        }
        spellings.retain(|s| s.prefix.len() > 1);
        spellings.sort_by(|a, b| b.prefix.len().cmp(&a.prefix.len()).then(a.prefix.cmp(&b.prefix)));
        spellings.dedup();
        Self { root, spellings, device, location }
    }

    /// The cache-relative path of an absolute path, through any spelling (the reference that
    /// [`CacheView::entry_of_path`] is tested against).
    #[cfg(test)]
    pub fn relative(&self, path: &[u8]) -> Option<PathBuf> {
        let s = self.spellings.iter().find(|s| platform::under_root(path, &s.prefix))?;
        let rest = &path[s.prefix.len()..];
        // `a//b` is `a/b` (POSIX): a doubled separator after the prefix is no root.
        let start = rest.iter().position(|&b| b != b'/').unwrap_or(rest.len());
        let rest = Path::new(OsStr::from_bytes(&rest[start..]));
        // `..` in a process's path (argv, environ) must not climb out of an entry, nor make the
        // path count for nothing: the part before it is what the process names for sure.
        let mut rel = s.rel.clone();
        for c in rest.components() {
            match c {
                Component::Normal(n) => rel.push(n),
                Component::CurDir => {}
                _ => break,
            }
        }
        Some(rel)
    }

    /// True when `path` is the cache's own `.lock`, in any spelling.
    pub fn is_cache_lock(&self, path: &[u8]) -> bool {
        self.spellings.iter().any(|s| {
            s.rel.as_os_str().is_empty()
                && platform::under_root(path, &s.prefix)
                && path[s.prefix.len()..]
                    .split(|&b| b == b'/')
                    .filter(|p| !p.is_empty() && *p != b".")
                    .eq([&b".lock"[..]])
        })
    }

    /// The entry containing cache-relative `rel` (None for the root and marker files).
    pub fn entry_of(&self, rel: &Path) -> Option<PathBuf> {
        let comps: Vec<&OsStr> = rel.components().map(|c| c.as_os_str()).collect();
        self.entry_of_components(&comps)
    }

    /// `entry_of(relative(path))`, without building the whole relative path: the scan's
    /// evidence (every open file of every process) goes through here, so it splits bytes
    /// instead of parsing `Path` components, and allocates only the entry.
    pub fn entry_of_path(&self, path: &[u8]) -> Option<PathBuf> {
        let s = self.spellings.iter().find(|s| platform::under_root(path, &s.prefix))?;
        let mut comps: Vec<&OsStr> = s.rel.components().map(|c| c.as_os_str()).collect();
        for part in path[s.prefix.len()..].split(|&b| b == b'/') {
            match part {
                b"" | b"." => {}
                // `..` in a process's path (argv, environ) must not climb out of an entry. It
                // must not hide one either (`<entry>/bin/../lib/x.so` uses the entry): the
                // path counts as the part before the first `..`. Where that part ends above
                // an entry it names its bucket, which then protects everything below it, as
                // a working directory there would.
                b".." => break,
                _ => comps.push(OsStr::from_bytes(part)),
            }
        }
        self.entry_of_components(&comps)
    }

    fn entry_of_components(&self, comps: &[&OsStr]) -> Option<PathBuf> {
        let top = comps.first()?;
        let family = match layout::classify(top) {
            TopLevel::Marker => return None,
            TopLevel::Current(f) | TopLevel::Older(f, _) | TopLevel::Newer(f, _) => Some(f),
            TopLevel::UnknownBucket | TopLevel::Other => None,
        };
        let is_venv =
            || comps.len() >= 2 && self.root.join(comps[0]).join(comps[1]).join("pyvenv.cfg").is_file();
        let depth = layout::entry_depth(family, comps, is_venv).min(comps.len());
        Some(comps[..depth].iter().collect())
    }

    /// The scan request for this cache.
    pub fn request(&self, proc_root: &Path) -> ScanRequest {
        let mut roots: Vec<Vec<u8>> = self.spellings.iter().map(|s| s.prefix.clone()).collect();
        roots.sort();
        roots.dedup();
        ScanRequest {
            roots,
            devices: self.device.into_iter().collect(),
            proc_root: proc_root.to_path_buf(),
            skip_pids: Vec::new(),
            argv_of: vec![b"uv".to_vec(), b"uvx".to_vec()],
            threads: 0,
            location: self.location.clone(),
        }
    }
}

/// `st_dev` split the way the kernel prints it in mountinfo and maps.
pub fn device_of(dev: u64) -> Device {
    #[cfg(target_os = "linux")]
    {
        Device { major: rustix::fs::major(dev), minor: rustix::fs::minor(dev) }
    }
    #[cfg(not(target_os = "linux"))]
    {
        Device { major: ((dev >> 24) & 0xff) as u32, minor: (dev & 0xff_ffff) as u32 }
    }
}

/// Lexically normalize an absolute path (`.` removed, `..` applied).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Aliases of the cache (or of parts of it) through every mount of its filesystem in our
/// namespace, the canonical path among them.
pub fn mount_aliases(mountinfo: &[u8], location: &FsLocation) -> Vec<Spelling> {
    platform::mountinfo::spellings(mountinfo, location)
        .into_iter()
        .map(|s| Spelling { prefix: s.prefix, rel: PathBuf::from(OsStr::from_bytes(&s.rel)) })
        .collect()
}

/// Uid → user name, from `/etc/passwd` (read once).
pub fn user_names() -> HashMap<u32, String> {
    let text = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let uid = f.nth(1)?.parse().ok()?;
            Some((uid, name.to_string()))
        })
        .collect()
}

/// The `detail` text of one piece of evidence. A path the process spells differently (another
/// mount namespace, a chroot) is shown as the process wrote it, then as we see it.
fn detail(ev: &Evidence) -> String {
    let path = match &ev.original {
        Some(theirs) => {
            format!("{} (its view of {})", String::from_utf8_lossy(theirs), String::from_utf8_lossy(&ev.path))
        }
        None => String::from_utf8_lossy(&ev.path).into_owned(),
    };
    match ev.source {
        Source::Environ => format!("{}={path}", ev.detail),
        _ if ev.detail.is_empty() => path,
        _ => format!("{} {path}", ev.detail),
    }
}

/// Map a scan to entries. `inode_index` resolves evidence caught only by device and inode.
pub fn map_scan(view: &CacheView<'_>, report: &ScanReport) -> Usage {
    let users = crate::timings::phase("map_users", user_names);
    let user = |uid: u32| users.get(&uid).cloned().unwrap_or_else(|| uid.to_string());
    let mut usage = Usage {
        summary: ProcessSummary {
            scanned: report.scanned,
            gone: report.gone,
            uninspectable: report
                .uninspectable
                .iter()
                .map(|u| UninspectableProcess {
                    pid: u.pid,
                    command: u.command.clone(),
                    uid: u.uid,
                    reason: u.reason.clone(),
                })
                .collect(),
            hidden: report.hidden.clone(),
        },
        ..Usage::default()
    };
    let wanted_inodes: HashSet<(Device, u64)> = report
        .processes
        .iter()
        .flat_map(|p| p.evidence.iter())
        .filter(|e| !e.by_path)
        .filter_map(|e| e.dev_ino)
        .collect();
    let inodes =
        if wanted_inodes.is_empty() { InodeIndex::default() } else { inode_index(view, &wanted_inodes) };
    let lock = std::fs::metadata(view.root.join(".lock")).ok().map(|m| (device_of(m.dev()), m.ino()));
    for process in &report.processes {
        let is_uv = process
            .argv
            .first()
            .map(|a0| a0.rsplit(|&b| b == b'/').next().unwrap_or(a0))
            .is_some_and(|base| base == b"uv" || base == b"uvx");
        // Only a uv process that shows this cache (every uv >= 0.8.19 holds an fd on its
        // `.lock` for its whole life) asks for *this* cache's environments; a `uvx` working
        // on another cache must not keep anything here. Concurrent mode, the only user of
        // these command lines, happens only while such a lock is held.
        if is_uv && !process.evidence.is_empty() {
            usage.uv_commands.push((process.pid, process.argv.clone()));
            // uv < 0.8.19 takes no cache lock at all: holding ours does not keep it out.
            let holds_lock = process.evidence.iter().any(|e| {
                e.source == Source::Fd
                    && ((e.by_path && view.is_cache_lock(&e.path)) || (lock.is_some() && e.dev_ino == lock))
            });
            if !holds_lock && process.pid != std::process::id() {
                usage.lockless_uv.push(process.pid);
            }
        }
        // A process holds few entries: a list beats a set, and needs no clone per evidence.
        let mut seen: Vec<(PathBuf, Source)> = Vec::new();
        for ev in &process.evidence {
            // An inode on the cache's device that the walk did not find may be inside a
            // directory it could not read: every such directory's entry counts as used.
            let (entry, unreadable): (Option<PathBuf>, &[PathBuf]) = match (ev.by_path, ev.dev_ino) {
                (true, _) => (view.entry_of_path(&ev.path), &[]),
                (false, Some(key)) => match inodes.found.get(&key) {
                    Some(entry) => (Some(entry.clone()), &[]),
                    None => (None, &inodes.unreadable),
                },
                (false, None) => (None, &[]),
            };
            let found = entry.into_iter().map(|e| (e, None));
            for (entry, why) in found.chain(unreadable.iter().map(|e| (e.clone(), Some(e)))) {
                // One line per process, entry and kind of evidence is enough to explain.
                if seen.iter().any(|(e, s)| *e == entry && *s == ev.source) {
                    continue;
                }
                seen.push((entry.clone(), ev.source));
                let mut detail = detail(ev);
                if let Some(dir) = why {
                    detail
                        .push_str(&format!(" (not found in the cache; {} could not be read)", dir.display()));
                }
                usage.direct.entry(entry).or_default().push(Holder {
                    pid: process.pid,
                    command: process.command.clone(),
                    user: user(process.uid),
                    evidence: ev.source.as_str(),
                    detail,
                    host: None,
                    is_self: process.pid == std::process::id(),
                });
            }
        }
    }
    usage.closure =
        crate::timings::phase("map_closure", || closure(view, usage.direct.keys().cloned().collect()));
    usage
}

/// The entries of the inodes evidence named only by device and inode.
#[derive(Default)]
struct InodeIndex {
    found: HashMap<(Device, u64), PathBuf>,
    /// Entries with a directory the walk could not (completely) read: a wanted inode that was
    /// not found may be in there.
    unreadable: Vec<PathBuf>,
}

/// Walk the cache once (never following links) to find the entries of wanted inodes.
fn inode_index(view: &CacheView<'_>, wanted: &HashSet<(Device, u64)>) -> InodeIndex {
    let mut found = HashMap::new();
    let mut unreadable = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut note_unreadable = |rel: &Path| {
            // The cache root itself unreadable names no entry; nothing can be pruned then.
            if let Some(entry) = view.entry_of(rel) {
                if !unreadable.contains(&entry) {
                    unreadable.push(entry);
                }
            }
        };
        let entries = match std::fs::read_dir(view.root.join(&rel)) {
            Ok(entries) => entries,
            // Removed since it was listed: nothing of it is left to protect.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(_) => {
                note_unreadable(&rel);
                continue;
            }
        };
        for entry in entries {
            let Ok(entry) = entry else {
                note_unreadable(&rel);
                continue;
            };
            let child = rel.join(entry.file_name());
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                // Removed since the listing: a file gone from the cache cannot be found anyway.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(_) => {
                    note_unreadable(&child);
                    continue;
                }
            };
            let key = (device_of(meta.dev()), meta.ino());
            if wanted.contains(&key) {
                if let Some(e) = view.entry_of(&child) {
                    found.insert(key, e);
                }
            }
            if meta.is_dir() {
                stack.push(child);
            }
        }
        if found.len() == wanted.len() {
            break;
        }
    }
    InodeIndex { found, unreadable }
}

/// Links below these directories can reference archives.
const LINK_HOLDERS: [&str; 1] = ["environments-v2"];

/// Entries that the given in-use entries need, each with the in-use entry that needs it.
///
/// Breadth-first: each level's entries are read in parallel (reading an entry walks it for
/// symlinks, the dominant cost), then merged serially in a fixed order, so the result (and
/// which in-use entry is named as the reason) does not depend on thread timing.
pub fn closure(view: &CacheView<'_>, start: Vec<PathBuf>) -> BTreeMap<PathBuf, PathBuf> {
    let direct: BTreeSet<PathBuf> = start.iter().cloned().collect();
    let mut out = BTreeMap::new();
    let mut links: Option<LinkIndex> = None;
    let mut done = HashSet::new();
    let mut level: Vec<(PathBuf, PathBuf)> = start.into_iter().map(|e| (e.clone(), e)).collect();
    while !level.is_empty() {
        level.retain(|(entry, _)| done.insert(entry.clone()));
        let links = links.get_or_insert_with(|| LinkIndex::new(view));
        let found: Vec<(Option<PathBuf>, Needs)> = level
            .par_iter()
            .map(|(entry, _)| {
                // Links elsewhere in the cache reach this entry through its canonical path.
                let canonical = if links.is_empty() { None } else { canonical_below(view.root, entry) };
                (canonical, needs(view, entry))
            })
            .collect();
        let mut next = Vec::new();
        for ((entry, origin), (canonical, needed)) in level.iter().zip(found) {
            let mut add = |needed: PathBuf| {
                if needed != *entry && !direct.contains(&needed) && !out.contains_key(&needed) {
                    out.insert(needed.clone(), origin.clone());
                    next.push((needed, origin.clone()));
                }
            };
            for link in canonical.iter().flat_map(|c| links.reaching(c)) {
                if let Some(e) = view.entry_of(link) {
                    add(e);
                }
                let mut lock = link.clone().into_os_string();
                lock.push(".lock");
                add(PathBuf::from(lock));
            }
            if needed.incomplete {
                // Part of the entry could not be read: a symlink or overlay line in there may
                // point into any unpacked archive, so all of them stay for this run.
                for bucket in archive_buckets(view) {
                    add(bucket);
                }
            }
            for n in needed.entries {
                add(n);
            }
        }
        level = next;
    }
    // A `.lock` sibling that does not exist needs no keeping.
    out.retain(|rel, _| view.root.join(rel).symlink_metadata().is_ok());
    out
}

/// The canonical path of `root/rel` (`root` is canonical): `rel` itself unless one of its
/// components is a link, so most entries cost an `lstat` per component, not a `realpath`.
fn canonical_below(root: &Path, rel: &Path) -> Option<PathBuf> {
    let mut path = root.to_path_buf();
    for component in rel.components() {
        path.push(component);
        match path.symlink_metadata() {
            Ok(meta) if meta.file_type().is_symlink() => return std::fs::canonicalize(root.join(rel)).ok(),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    Some(path)
}

/// Every symlink in the link-holding buckets, indexed by each ancestor of its canonical
/// target: the links that reach a path (point at it or into it) are one lookup.
struct LinkIndex {
    by_target: HashMap<PathBuf, Vec<PathBuf>>,
}

impl LinkIndex {
    fn new(view: &CacheView<'_>) -> Self {
        let mut by_target: HashMap<PathBuf, Vec<PathBuf>> = HashMap::new();
        for (link, target) in cache_links(view) {
            for ancestor in target.ancestors() {
                by_target.entry(ancestor.to_path_buf()).or_default().push(link.clone());
            }
        }
        LinkIndex { by_target }
    }

    fn is_empty(&self) -> bool {
        self.by_target.is_empty()
    }

    /// Links whose target is `canonical` or lies below it.
    fn reaching(&self, canonical: &Path) -> &[PathBuf] {
        self.by_target.get(canonical).map_or(&[], |v| v.as_slice())
    }
}

/// Every symlink in the link-holding buckets, with its canonical target.
fn cache_links(view: &CacheView<'_>) -> Vec<(PathBuf, PathBuf)> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = LINK_HOLDERS.iter().map(PathBuf::from).collect();
    while let Some(rel) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(view.root.join(&rel)) else { continue };
        for entry in entries.flatten() {
            let child = rel.join(entry.file_name());
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_symlink() {
                if let Ok(target) = std::fs::canonicalize(view.root.join(&child)) {
                    out.push((child, target));
                }
            } else if kind.is_dir() && child.components().count() < 3 {
                stack.push(child);
            }
        }
    }
    out
}

/// What one entry needs.
struct Needs {
    entries: Vec<PathBuf>,
    /// Some of the entry could not be read (a directory, a link, `pyvenv.cfg`, an overlay
    /// `.pth`), or the walk hit its bound: what it points into is not completely known.
    incomplete: bool,
}

/// True for an error that means "not there" (nothing to read, so nothing hidden).
fn absent(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory)
}

/// Every unpacked-archive bucket (`archive-v0` and older generations) at the top of the cache.
fn archive_buckets(view: &CacheView<'_>) -> Vec<PathBuf> {
    let Ok(top) = std::fs::read_dir(view.root) else { return Vec::new() };
    top.flatten()
        .map(|e| e.file_name())
        .filter(|name| {
            matches!(
                layout::classify(name),
                TopLevel::Current(Family::Archive) | TopLevel::Older(Family::Archive, _)
            )
        })
        .map(PathBuf::from)
        .collect()
}

/// Entries that the entry `rel` points into: `pyvenv.cfg` values, overlay `.pth` lines, the
/// target of the entry itself when it is a link, and symlinks inside it.
///
/// Symlinks into other entries exist only in venvs built with `--link-mode symlink`, so an
/// unpacked wheel in `archive-v0` (no `pyvenv.cfg`; a wheel cannot carry links) is not walked:
/// that walk, a directory read per directory of every entry in use, is most of this cost.
fn needs(view: &CacheView<'_>, rel: &Path) -> Needs {
    let abs = view.root.join(rel);
    let mut paths: Vec<Vec<u8>> = Vec::new();
    let mut complete = true;
    // Gone (or never there, like a `.lock` sibling): it needs nothing.
    let Ok(meta) = abs.symlink_metadata() else { return Needs { entries: Vec::new(), incomplete: false } };
    if meta.file_type().is_symlink() {
        if let Ok(target) = std::fs::canonicalize(&abs) {
            paths.push(target.into_os_string().into_vec());
        }
    } else if meta.is_dir() {
        // Quietly: protecting an environment must not count as its use (`--older-than`).
        let cfg = crate::names::read_quietly(&abs.join("pyvenv.cfg"), 1 << 20);
        match &cfg {
            Ok(cfg) => {
                for line in cfg.split(|&b| b == b'\n') {
                    if let Some(eq) = line.iter().position(|&b| b == b'=') {
                        paths.push(trim(&line[eq + 1..]).to_vec());
                    }
                }
            }
            Err(e) => complete &= absent(e),
        }
        let unpacked_wheel = cfg.is_err()
            && rel.components().next().is_some_and(|top| {
                matches!(
                    layout::classify(top.as_os_str()),
                    TopLevel::Current(Family::Archive) | TopLevel::Older(Family::Archive, _)
                )
            });
        if !unpacked_wheel {
            let (pth_files, listed) = overlay_pth_files(&abs);
            complete &= listed;
            for pth in pth_files {
                match crate::names::read_quietly(&pth, 1 << 20) {
                    Ok(text) => paths.extend(text.split(|&b| b == b'\n').flat_map(pth_paths)),
                    Err(e) => complete &= absent(&e),
                }
            }
            complete &= symlinks_inside(&abs, &mut paths);
        }
    }
    Needs { entries: paths.iter().filter_map(|p| view.entry_of_path(p)).collect(), incomplete: !complete }
}

use std::os::unix::ffi::OsStringExt;

fn trim(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &b[start..end.max(start)]
}

/// The paths one line of a `.pth` file adds: the line itself when it is a path, or, for a
/// line of code (`import site; site.addsitedir(__import__("os").fsdecode(b"/c/archive-v0/x/
/// lib/python3.12/site-packages"))`, what uv 0.13.8 writes), every bytes literal in it, with
/// Python's escapes decoded (a non-UTF-8 path is written with `\xNN`).
fn pth_paths(line: &[u8]) -> Vec<Vec<u8>> {
    let line = trim(line);
    if line.is_empty() || line.starts_with(b"#") {
        return Vec::new();
    }
    if !(line.starts_with(b"import ") || line.starts_with(b"import\t")) {
        return vec![line.to_vec()];
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i + 1 < line.len() {
        let quote = line[i + 1];
        let starts = matches!(line[i], b'b' | b'B')
            && matches!(quote, b'"' | b'\'')
            && (i == 0 || !(line[i - 1].is_ascii_alphanumeric() || line[i - 1] == b'_'));
        if !starts {
            i += 1;
            continue;
        }
        let (value, end) = bytes_literal(line, i + 2, quote);
        out.extend(value);
        i = end;
    }
    out
}

/// The value of a Python bytes literal whose body starts at `start` and ends at `quote`, and
/// where reading stopped; `None` for an unterminated literal.
fn bytes_literal(line: &[u8], start: usize, quote: u8) -> (Option<Vec<u8>>, usize) {
    let mut value = Vec::new();
    let mut i = start;
    while i < line.len() {
        match line[i] {
            b if b == quote => return (Some(value), i + 1),
            b'\\' if i + 1 < line.len() => {
                let e = line[i + 1];
                i += 2;
                let hex = |d: &[u8]| std::str::from_utf8(d).ok().and_then(|d| u8::from_str_radix(d, 16).ok());
                match e {
                    b'x' => match line.get(i..i + 2).and_then(hex) {
                        Some(b) => {
                            value.push(b);
                            i += 2;
                        }
                        None => value.extend_from_slice(b"\\x"),
                    },
                    b'0'..=b'7' => {
                        let digits =
                            line[i - 1..].iter().take(3).take_while(|d| (b'0'..=b'7').contains(d)).count();
                        let n =
                            line[i - 1..i - 1 + digits].iter().fold(0u32, |n, d| n * 8 + u32::from(d - b'0'));
                        value.push(n as u8);
                        i += digits - 1;
                    }
                    b'n' => value.push(b'\n'),
                    b'r' => value.push(b'\r'),
                    b't' => value.push(b'\t'),
                    b'a' => value.push(7),
                    b'b' => value.push(8),
                    b'f' => value.push(12),
                    b'v' => value.push(11),
                    b'\n' => {}
                    b'\\' | b'\'' | b'"' => value.push(e),
                    other => value.extend_from_slice(&[b'\\', other]),
                }
            }
            b => {
                value.push(b);
                i += 1;
            }
        }
    }
    (None, line.len())
}

/// `lib/python*/site-packages/_uv_ephemeral_overlay.pth` (and `Lib/site-packages` layouts),
/// and whether every place one could be was looked at (a `lib` that cannot be listed may hide
/// the `.pth` that names the base environment of a running overlay).
fn overlay_pth_files(venv: &Path) -> (Vec<PathBuf>, bool) {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(venv.join("lib")) {
        Ok(entries) => entries,
        Err(e) => return (out, absent(&e)),
    };
    let mut complete = true;
    for e in entries {
        let Ok(e) = e else {
            complete = false;
            continue;
        };
        let p = e.path().join("site-packages").join("_uv_ephemeral_overlay.pth");
        match std::fs::metadata(&p) {
            Ok(meta) if meta.is_file() => out.push(p),
            Ok(_) => {}
            Err(e) => complete &= absent(&e),
        }
    }
    (out, complete)
}

/// Absolute targets of symlinks inside `dir` (bounded walk, links not followed); false when
/// some of it could not be read or the bound was hit, so a link may have been missed. A
/// directory removed meanwhile hides nothing.
fn symlinks_inside(dir: &Path, out: &mut Vec<Vec<u8>>) -> bool {
    // A venv has a few thousand files; the bound only guards against pathological trees.
    let mut budget = 200_000usize;
    let mut complete = true;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(entries) => entries,
            Err(e) => {
                complete &= absent(&e);
                continue;
            }
        };
        for e in entries {
            let Ok(e) = e else {
                complete = false;
                continue;
            };
            budget = budget.saturating_sub(1);
            if budget == 0 {
                return false;
            }
            let kind = match e.file_type() {
                Ok(kind) => kind,
                Err(e) => {
                    complete &= absent(&e);
                    continue;
                }
            };
            let path = e.path();
            if kind.is_symlink() {
                match std::fs::read_link(&path) {
                    Ok(target) => {
                        let abs = if target.is_absolute() { target } else { d.join(target) };
                        out.push(normalize(&abs).into_os_string().into_vec());
                    }
                    Err(e) => complete &= absent(&e),
                }
            } else if kind.is_dir() {
                stack.push(path);
            }
        }
    }
    complete
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &[u8] = b"22 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
35 22 254:0 /home/u/.cache/uv /mnt/cache rw - ext4 /dev/vda rw\n\
36 22 254:0 /home/u/.cache/uv/archive-v0/abc /srv/tool\\040env rw - ext4 /dev/vda rw\n\
37 22 0:5 / /proc rw - proc proc rw\n";

    /// uv 0.13.8's overlay `.pth` is a line of code naming the base environment's
    /// site-packages in a bytes literal; older ones, and hand-made ones, are plain paths.
    #[test]
    fn overlay_pth_lines() {
        let line = br#"import site; site.addsitedir(__import__("os").fsdecode(b"/c/archive-v0/X/lib/python3.11/site-packages")); site.addsitedir(__import__("os").fsdecode(b"/usr/lib/python3.11/site-packages"))"#;
        assert_eq!(
            pth_paths(line),
            [
                b"/c/archive-v0/X/lib/python3.11/site-packages".to_vec(),
                b"/usr/lib/python3.11/site-packages".to_vec()
            ]
        );
        assert_eq!(
            pth_paths(br#"import site; site.addsitedir(b'/c/a\xff\\q\'\101z')"#),
            [b"/c/a\xff\\q'Az".to_vec()]
        );
        assert_eq!(pth_paths(b"  /c/archive-v0/Y/lib  "), [b"/c/archive-v0/Y/lib".to_vec()]);
        assert!(pth_paths(b"# comment").is_empty() && pth_paths(b"").is_empty());
        // Not a bytes literal: `sub"x"`; unterminated: nothing.
        assert!(pth_paths(br#"import x; sub"/c/a"; f(b"/c/unterminated"#).is_empty());
    }

    /// A running `uv run --with` overlay (`builds-v0/<tmp>`) needs the cached environment its
    /// `.pth` names, even where nothing else of the process shows it.
    #[test]
    fn an_overlay_needs_the_environment_its_pth_names() {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        let base = root.join("archive-v0/BASE/lib/python3.11/site-packages");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::write(root.join("archive-v0/BASE/pyvenv.cfg"), "home = /usr/bin\n").unwrap();
        let site = root.join("builds-v0/.tmpOVL/lib/python3.11/site-packages");
        std::fs::create_dir_all(&site).unwrap();
        std::fs::write(
            root.join("builds-v0/.tmpOVL/pyvenv.cfg"),
            "home = /usr/bin\nextends-environment = /usr\n",
        )
        .unwrap();
        let line = format!(
            "import site; site.addsitedir(__import__(\"os\").fsdecode(b\"{}\")); site.addsitedir(b\"/usr/lib\")\n",
            base.display()
        );
        std::fs::write(site.join("_uv_ephemeral_overlay.pth"), line).unwrap();
        let view = CacheView::new(&root, &root, None);
        let needed = closure(&view, vec![PathBuf::from("builds-v0/.tmpOVL")]);
        assert_eq!(
            needed.get(Path::new("archive-v0/BASE")),
            Some(&PathBuf::from("builds-v0/.tmpOVL")),
            "{needed:?}"
        );
    }

    #[test]
    fn bind_mount_aliases_from_mountinfo() {
        let dev = Device { major: 254, minor: 0 };
        let location = platform::mountinfo::locate(MOUNTINFO, b"/home/u/.cache/uv", Some(dev)).unwrap();
        assert_eq!(location.path_in_fs, b"/home/u/.cache/uv");
        let aliases = mount_aliases(MOUNTINFO, &location);
        assert!(aliases.contains(&Spelling { prefix: b"/home/u/.cache/uv".to_vec(), rel: PathBuf::new() }));
        assert!(aliases.contains(&Spelling { prefix: b"/mnt/cache".to_vec(), rel: PathBuf::new() }));
        assert!(aliases
            .contains(&Spelling { prefix: b"/srv/tool env".to_vec(), rel: PathBuf::from("archive-v0/abc") }));
        assert_eq!(aliases.len(), 3);
    }

    /// A directory of an in-use venv that cannot be listed (here: its path is longer than
    /// PATH_MAX, which even root cannot open by name) may hide a link into any archive: all
    /// archives stay. A venv read completely keeps only what it links into.
    #[test]
    fn an_unreadable_part_of_an_entry_in_use_keeps_every_archive() {
        use rustix::fs::{mkdirat, openat, Mode, OFlags};
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        let venv = root.join("environments-v2/script-x");
        std::fs::create_dir_all(&venv).unwrap();
        std::fs::write(venv.join("pyvenv.cfg"), "home = /usr/bin\n").unwrap();
        for a in ["archive-v0/linked", "archive-v0/other"] {
            std::fs::create_dir_all(root.join(a)).unwrap();
        }
        std::os::unix::fs::symlink(root.join("archive-v0/linked/f.py"), venv.join("f.py")).unwrap();
        let view = CacheView::new(&root, &root, None);
        let start = vec![PathBuf::from("environments-v2/script-x")];
        let kept: Vec<PathBuf> = closure(&view, start.clone()).into_keys().collect();
        assert_eq!(kept, vec![PathBuf::from("archive-v0/linked")]);

        // Directories nested (by handle) past PATH_MAX.
        let name = "d".repeat(200);
        let mut dir =
            openat(rustix::fs::CWD, &venv, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap();
        for _ in 0..25 {
            mkdirat(&dir, name.as_str(), Mode::from_raw_mode(0o755)).unwrap();
            dir = openat(&dir, name.as_str(), OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap();
        }
        let kept: Vec<PathBuf> = closure(&view, start).into_keys().collect();
        assert_eq!(kept, vec![PathBuf::from("archive-v0"), PathBuf::from("archive-v0/linked")]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, ..Default::default() })]
        /// The fast byte-level mapping agrees with the component-by-component one on every
        /// path: other spellings, `.`, `..`, empty and doubled separators, each bucket kind.
        #[test]
        fn entry_of_path_matches_entry_of_relative(
            prefix in 0usize..4,
            parts in proptest::collection::vec(0usize..14, 0..7),
            trailing_slash in proptest::bool::ANY,
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let root = std::fs::canonicalize(tmp.path()).unwrap();
            std::fs::create_dir_all(root.join("environments-v2/script-x")).unwrap();
            std::fs::write(root.join("environments-v2/script-x/pyvenv.cfg"), "").unwrap();
            let mut view = CacheView::new(&root, Path::new("/configured/uv"), None);
            view.spellings.push(Spelling { prefix: b"/srv/tool".to_vec(), rel: PathBuf::from("archive-v0/abc") });
            let prefixes = [root.as_os_str().as_bytes(), b"/configured/uv", b"/srv/tool", b"/configured/uvx"];
            const PARTS: [&str; 14] = [
                "archive-v0", "environments-v2", "script-x", "wheels-v5", "pypi", "x", "..", ".", "",
                "CACHEDIR.TAG", "sdists-v9", "builds-v0", ".tmpAb", "f.py",
            ];
            let mut path = prefixes[prefix].to_vec();
            for &i in &parts {
                path.push(b'/');
                path.extend_from_slice(PARTS[i].as_bytes());
            }
            if trailing_slash {
                path.push(b'/');
            }
            let expected = view.relative(&path).and_then(|rel| view.entry_of(&rel));
            proptest::prop_assert_eq!(view.entry_of_path(&path), expected, "{}", String::from_utf8_lossy(&path));
        }
    }

    #[test]
    fn relative_through_spellings_and_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        std::fs::create_dir_all(root.join("environments-v2/script-x")).unwrap();
        std::fs::write(root.join("environments-v2/script-x/pyvenv.cfg"), "").unwrap();
        let mut view = CacheView::new(&root, Path::new("/configured/uv/."), None);
        view.spellings.push(Spelling { prefix: b"/srv/tool".to_vec(), rel: PathBuf::from("archive-v0/abc") });
        let rel = view.relative(b"/configured/uv/archive-v0/X/bin").unwrap();
        assert_eq!(view.entry_of(&rel), Some(PathBuf::from("archive-v0/X")));
        let rel = view.relative(b"/srv/tool/lib/x.so").unwrap();
        assert_eq!(view.entry_of(&rel), Some(PathBuf::from("archive-v0/abc")));
        assert_eq!(view.relative(b"/configured/uvx/archive-v0/X"), None);
        // `..` ends what a path names for sure: the entry before it counts, nothing above.
        let rel = view.relative(b"/configured/uv/archive-v0/X/../../../etc").unwrap();
        assert_eq!(view.entry_of(&rel), Some(PathBuf::from("archive-v0/X")));
        assert_eq!(
            view.entry_of_path(b"/configured/uv/archive-v0/X/bin/../lib"),
            Some(PathBuf::from("archive-v0/X"))
        );
        assert_eq!(view.entry_of_path(b"/configured/uv/../uv/archive-v0/X"), None);
        let entry = |p: &str| view.entry_of(Path::new(p)).map(|e| e.display().to_string());
        assert_eq!(
            entry("environments-v2/8b0c/f444/bin/python").as_deref(),
            Some("environments-v2/8b0c/f444")
        );
        assert_eq!(entry("environments-v2/script-x/bin/python").as_deref(), Some("environments-v2/script-x"));
        assert_eq!(entry("builds-v0/.tmpAb/lib").as_deref(), Some("builds-v0/.tmpAb"));
        assert_eq!(entry("wheels-v7/pypi/a/1.0-py3-none-any").as_deref(), Some("wheels-v7/pypi/a"));
        assert_eq!(entry("binaries-v0/ruff/0.1/x86/ruff").as_deref(), Some("binaries-v0/ruff/0.1"));
        assert_eq!(entry(".tmpXyz/file").as_deref(), Some(".tmpXyz"));
        assert_eq!(entry(".lock"), None);
        assert_eq!(entry(""), None);
    }
}
