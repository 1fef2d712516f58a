//! Retention rules on top of `uv cache prune`'s: keep the newest cached environment of each
//! tool (`--keep-tools`), keep what was used recently (`--older-than`), and shrink the cache
//! to a budget by evicting the least recently used reconstructible entries (`--max-size`).
//!
//! The first two only *add* protections ([`protect`]): the planner then splits its removal
//! units around them exactly as around entries in use, so an environment link that is kept
//! keeps its `.lock` sibling and its archive (which would otherwise go as unreferenced). The
//! third runs after the plan ([`fit`]) and appends targets: whole wheels (link and pointers in
//! [`Phase::References`], the archive in [`Phase::Archives`] once no surviving link points to
//! it), unpacked sdist `src/` trees and Simple-API `.rkyv` files, never anything protected.
//!
//! # Last use
//!
//! The filesystem records no "last use", so it is read from the entry's timestamps: the maximum
//! over the entry itself and its *key files* of the modification time, the change time, and,
//! for regular files on a mount that records access times (not `noatime`, read from
//! `/proc/self/mountinfo`), the access time. On a `relatime` mount (the Linux default) the
//! kernel records a read only when the recorded access is older than the last change or more
//! than a day old, so a use up to a day after the recorded access leaves no trace: for
//! `--older-than` the access time there counts as a day later (never later than now), which
//! keeps a thing used an hour ago that was also used yesterday. Key files are what uv or
//! Python read on every use, and nothing else reads:
//!
//! | entry | key files |
//! |---|---|
//! | environment link `environments-v2/<digest>/<hash>` | its archive and the archive's `pyvenv.cfg` (Python reads it at every start) |
//! | venv (`archive-v0/<id>`, `environments-v2/script-*`, `builds-v0/*`) | `pyvenv.cfg` |
//! | wheel `wheels-v7/…/<name>/<key>` | `<key>.http`, `<key>.rev` (uv reads the pointer on every cache hit), `<key>.msgpack`, its archive |
//! | sdist revision, `src/` | `metadata.msgpack` |
//! | `.rkyv`, other files | the file |
//!
//! Access times of directories and symlinks are *not* used: every prune (uv's included)
//! resolves each link and lists each directory, so they record pruning, not use. The change
//! time is always used even though `touch -d` cannot set it: it only ever makes an entry
//! younger (a cache restored from an archive counts as new), never older than it is.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::layout::{self, Family, TopLevel};
use crate::plan::{KeepReason, Phase, Plan, Protect, Reason, Target};
use crate::remove::TRASH_PREFIX;
use crate::usage::{self, CacheView};

/// The retention options of one run; all off by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// `--keep-tools[=N]`: keep the newest N environments of each tool.
    pub keep_tools: Option<u32>,
    /// `--older-than`: keep entries used within this duration.
    pub older_than: Option<Duration>,
    /// `--max-size`: evict least recently used reconstructible entries down to this many bytes.
    pub max_size: Option<u64>,
}

/// Add the `--keep-tools` and `--older-than` protections for the cache at `root` (canonical;
/// `configured` is the path as configured, for the closure of kept environments).
pub fn protect(
    root: &Path,
    configured: &Path,
    proc_root: &Path,
    retention: &Retention,
    protect: &mut Protect,
) {
    if retention.keep_tools.is_none_or(|n| n == 0) && retention.older_than.is_none() {
        return;
    }
    let mountinfo = std::fs::read(proc_root.join("self/mountinfo")).ok();
    // Timestamps first: reading the kept environments below must not count as their use.
    let recent = retention
        .older_than
        .map(|age| recent_paths(&Clock::for_older_than(root, mountinfo.as_deref()), age))
        .unwrap_or_default();
    let view = CacheView::new(root, configured, mountinfo.as_deref());
    if let Some(n) = retention.keep_tools.filter(|&n| n > 0) {
        keep_newest_tools(&view, n, protect);
    }
    // A recent venv keeps what it points into (a symlink-mode venv's wheel archives), as a
    // kept tool environment does: else `--ci` or `--max-size` would break what it keeps.
    let venvs: Vec<PathBuf> = recent
        .iter()
        .filter(|rel| {
            let abs = root.join(rel);
            abs.symlink_metadata().is_ok_and(|m| m.is_dir()) && abs.join("pyvenv.cfg").is_file()
        })
        .cloned()
        .collect();
    for rel in recent {
        protect.add(rel, KeepReason::Recent);
    }
    if !venvs.is_empty() {
        for needed in usage::closure(&view, venvs).into_keys() {
            protect.add(needed, KeepReason::Recent);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Timestamps
// ---------------------------------------------------------------------------------------

/// Nanoseconds since the epoch.
type Nanos = i128;

fn nanos(secs: i64, nsec: i64) -> Nanos {
    Nanos::from(secs) * 1_000_000_000 + Nanos::from(nsec)
}

fn now_nanos() -> Nanos {
    match SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as Nanos,
        Err(e) => -(e.duration().as_nanos() as Nanos),
    }
}

/// How the mount holding the cache records access times (`/proc/self/mountinfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtimeMode {
    /// `noatime`: never.
    Never,
    /// `relatime` (the Linux default): only when the recorded access is older than the last
    /// change or than a day.
    Relatime,
    /// `strictatime`, or a mount we could not find: every read.
    Always,
}

/// How long after its recorded access time a file on a `relatime` mount may have been read
/// without the kernel recording it.
const RELATIME_WINDOW: Nanos = 24 * 3600 * 1_000_000_000;

/// Reads "last use" evidence from one cache.
struct Clock<'a> {
    root: &'a Path,
    /// The mount records access times.
    atime: bool,
    /// Added to access times (capped at `now`): what a use may leave unrecorded.
    unrecorded: Nanos,
    now: Nanos,
}

impl<'a> Clock<'a> {
    /// The raw timestamps, for ordering entries by last use (`--max-size`).
    fn new(root: &'a Path, mountinfo: Option<&[u8]>) -> Self {
        let atime = atime_mode(mountinfo, root) != AtimeMode::Never;
        Clock { root, atime, unrecorded: 0, now: now_nanos() }
    }

    /// For `--older-than`, whose "last use" must never be older than the truth: on a
    /// `relatime` mount an access time stands for any time up to a day later.
    fn for_older_than(root: &'a Path, mountinfo: Option<&[u8]>) -> Self {
        let mode = atime_mode(mountinfo, root);
        let unrecorded = if mode == AtimeMode::Relatime { RELATIME_WINDOW } else { 0 };
        Clock { root, atime: mode != AtimeMode::Never, unrecorded, now: now_nanos() }
    }

    /// The youngest evidence of use of one path (not following links), if it exists.
    fn evidence(&self, meta: &Metadata) -> Nanos {
        let mut t = nanos(meta.mtime(), meta.mtime_nsec()).max(nanos(meta.ctime(), meta.ctime_nsec()));
        if self.atime && meta.file_type().is_file() {
            t = t.max(self.accessed(nanos(meta.atime(), meta.atime_nsec())));
        }
        t
    }

    /// The latest use a recorded access time allows for.
    fn accessed(&self, atime: Nanos) -> Nanos {
        atime.saturating_add(self.unrecorded).min(self.now.max(atime))
    }

    /// The last use of a unit: the youngest evidence over `rels` (missing ones skipped).
    fn last_use(&self, rels: &[PathBuf]) -> Option<Nanos> {
        rels.iter()
            .filter_map(|rel| std::fs::symlink_metadata(self.root.join(rel)).ok())
            .map(|meta| self.evidence(&meta))
            .max()
    }
}

/// How the mount holding `root` records access times; [`AtimeMode::Always`] when the mount
/// cannot be found (`strictatime` shows no option in mountinfo).
pub fn atime_mode(mountinfo: Option<&[u8]>, root: &Path) -> AtimeMode {
    let Some(info) = mountinfo else { return AtimeMode::Always };
    let root = root.as_os_str().as_bytes();
    let mut best: Option<(usize, AtimeMode)> = None;
    for mount in platform::mountinfo::mounts(info) {
        let mp = &mount.mount_point;
        // Later lines are mounted over earlier ones at the same point.
        if platform::under_root(root, mp) && best.is_none_or(|(len, _)| mp.len() >= len) {
            let has = |wanted: &[u8]| mount.options.split(|&b| b == b',').any(|o| o == wanted);
            let mode = if has(b"noatime") {
                AtimeMode::Never
            } else if has(b"relatime") {
                AtimeMode::Relatime
            } else {
                AtimeMode::Always
            };
            best = Some((mp.len(), mode));
        }
    }
    best.map_or(AtimeMode::Always, |(_, mode)| mode)
}

// ---------------------------------------------------------------------------------------
// Units: what is kept or evicted together
// ---------------------------------------------------------------------------------------

/// What kind of entry a unit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `environments-v2/<digest>/<hash>` with its `.lock` (and its archive).
    EnvironmentLink,
    /// Any other entry of the buckets uv's prune empties, or a top-level entry.
    Entry,
    /// `wheels-v7/…/<name>/<key>` with its pointers (and its archive).
    Wheel,
    /// An sdist revision directory.
    Revision,
    /// An unpacked sdist (`src/` of a revision).
    SdistSource,
    /// A Simple-API response (`simple-v27/…/<name>.rkyv`).
    SimpleIndex,
}

/// Paths kept or removed together.
#[derive(Debug, Clone)]
struct Unit {
    kind: Kind,
    /// Relative paths, removed in [`Phase::References`].
    members: Vec<PathBuf>,
    /// The member that is a link to `archive`.
    link: Option<PathBuf>,
    /// The archive `link` resolves to.
    archive: Option<PathBuf>,
    /// Where its last use is read (besides the archive's, added by [`Unit::all_stamps`]).
    stamps: Vec<PathBuf>,
}

impl Unit {
    fn simple(kind: Kind, rel: PathBuf, key_file: Option<&str>) -> Self {
        let mut stamps = vec![rel.clone()];
        stamps.extend(key_file.map(|k| rel.join(k)));
        Unit { kind, members: vec![rel], link: None, archive: None, stamps }
    }

    fn all_stamps(&self) -> Vec<PathBuf> {
        let mut stamps = self.stamps.clone();
        if let Some(archive) = &self.archive {
            stamps.push(archive.clone());
            stamps.push(archive.join("pyvenv.cfg"));
        }
        stamps
    }
}

/// The current generation of `family`, when it exists as a directory.
fn bucket(root: &Path, family: Family) -> Option<PathBuf> {
    let name = PathBuf::from(family.current_name()?);
    std::fs::symlink_metadata(root.join(&name)).ok().filter(|m| m.is_dir()).map(|_| name)
}

/// Names and types in a directory, sorted; errors mean empty.
fn list(root: &Path, rel: &Path) -> Vec<(OsString, std::fs::FileType)> {
    let Ok(entries) = std::fs::read_dir(root.join(rel)) else { return Vec::new() };
    let mut out: Vec<_> =
        entries.flatten().filter_map(|e| Some((e.file_name(), e.file_type().ok()?))).collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The `archive-v0/<id>` entry a link resolves to, if it resolves into the archive bucket.
fn archive_of(root: &Path, link: &Path) -> Option<PathBuf> {
    let target = std::fs::canonicalize(root.join(link)).ok()?;
    let rel = target.strip_prefix(root).ok()?;
    let mut comps = rel.components();
    let (Some(Component::Normal(top)), Some(Component::Normal(id))) = (comps.next(), comps.next()) else {
        return None;
    };
    (Some(top.to_string_lossy().into_owned()) == Family::Archive.current_name())
        .then(|| Path::new(top).join(id))
}

/// Every unit whose last use `--older-than` judges: the entries uv's prune may remove
/// (top-level strays and older buckets, environments, builds, archives, sdist revisions,
/// `files-v0` objects) and the wheels `--ci` removes.
fn recency_units(root: &Path) -> Vec<Unit> {
    let mut units = Vec::new();
    for (name, kind) in list(root, Path::new("")) {
        // What the planner removes at the top level (older buckets, strays); never our trash.
        let kept = match layout::classify(&name) {
            TopLevel::Marker => true,
            TopLevel::Current(_) | TopLevel::Newer(..) | TopLevel::UnknownBucket => kind.is_dir(),
            TopLevel::Older(..) => false,
            TopLevel::Other => name.as_bytes().starts_with(TRASH_PREFIX.as_bytes()),
        };
        if !kept {
            units.push(Unit::simple(Kind::Entry, name.into(), None));
        }
    }
    if let Some(envs) = bucket(root, Family::Environments) {
        units.extend(environment_units(root, &envs));
    }
    for family in [Family::Builds, Family::Archive] {
        if let Some(b) = bucket(root, family) {
            for (name, _) in list(root, &b) {
                units.push(Unit::simple(Kind::Entry, b.join(name), Some("pyvenv.cfg")));
            }
        }
    }
    if let Some(sdists) = bucket(root, Family::SourceDistributions) {
        units.extend(sdist_units(root, &sdists).into_iter().filter(|u| u.kind == Kind::Revision));
    }
    if let Some(wheels) = bucket(root, Family::Wheels) {
        units.extend(wheel_units(root, &wheels));
    }
    if let Some(files) = bucket(root, Family::Files) {
        object_units(root, &files, &mut units);
    }
    units
}

/// Units `--max-size` may evict: wheels, unpacked sdists, Simple-API responses.
fn evictable_units(root: &Path) -> Vec<Unit> {
    let mut units = Vec::new();
    if let Some(wheels) = bucket(root, Family::Wheels) {
        // A wheel is its link or its pointer; leftover metadata or locks alone are not.
        units.extend(
            wheel_units(root, &wheels)
                .into_iter()
                .filter(|u| u.archive.is_some() || u.members.iter().any(|m| is_pointer(m))),
        );
    }
    if let Some(sdists) = bucket(root, Family::SourceDistributions) {
        units.extend(sdist_units(root, &sdists).into_iter().filter(|u| u.kind == Kind::SdistSource));
    }
    if let Some(simple) = bucket(root, Family::Simple) {
        simple_units(root, &simple, 0, &mut units);
    }
    units
}

fn is_pointer(rel: &Path) -> bool {
    rel.extension().is_some_and(|e| e == "http" || e == "rev")
}

/// `environments-v2`: each link with its `.lock` and archive; real venvs; anything else.
fn environment_units(root: &Path, envs: &Path) -> Vec<Unit> {
    let mut units = Vec::new();
    for (name, kind) in list(root, envs) {
        let rel = envs.join(&name);
        let is_venv = root.join(&rel).join("pyvenv.cfg").is_file();
        if !kind.is_dir() || is_venv {
            units.push(Unit::simple(Kind::Entry, rel, Some("pyvenv.cfg")));
            continue;
        }
        let children = list(root, &rel);
        let links: HashSet<&OsStr> =
            children.iter().filter(|(_, k)| k.is_symlink()).map(|(n, _)| n.as_os_str()).collect();
        for (child, kind) in &children {
            let child_rel = rel.join(child);
            if kind.is_symlink() {
                let lock = lock_sibling(&child_rel);
                let archive = archive_of(root, &child_rel);
                units.push(Unit {
                    kind: Kind::EnvironmentLink,
                    members: vec![child_rel.clone(), lock],
                    link: Some(child_rel.clone()),
                    archive,
                    stamps: vec![child_rel],
                });
            } else if child
                .as_bytes()
                .strip_suffix(b".lock")
                .is_some_and(|s| links.contains(OsStr::from_bytes(s)))
            {
                // Part of its link's unit.
            } else {
                units.push(Unit::simple(Kind::Entry, child_rel, None));
            }
        }
    }
    units
}

/// `<path>.lock`.
fn lock_sibling(rel: &Path) -> PathBuf {
    let mut s = rel.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// The wheel key a name in a wheel directory belongs to (`1.0-py3-none-any.http` →
/// `1.0-py3-none-any`); hidden names (`.lock`, `.tmp*`) belong to none.
fn wheel_key(name: &OsStr) -> Option<&OsStr> {
    let bytes = name.as_bytes();
    if bytes.starts_with(b".") {
        return None;
    }
    let key = [&b".http"[..], b".rev", b".msgpack", b".lock"]
        .iter()
        .find_map(|suffix| bytes.strip_suffix(*suffix))
        .unwrap_or(bytes);
    (!key.is_empty()).then(|| OsStr::from_bytes(key))
}

/// Every wheel below the wheel bucket: `<key>` link, `<key>.http`, `.rev`, `.msgpack`,
/// `.lock`, and the archive the link resolves to.
fn wheel_units(root: &Path, wheels: &Path) -> Vec<Unit> {
    let mut units = Vec::new();
    let mut stack = vec![(wheels.to_path_buf(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let mut keys: BTreeMap<OsString, Vec<PathBuf>> = BTreeMap::new();
        for (name, kind) in list(root, &dir) {
            if kind.is_dir() {
                if depth < 6 {
                    stack.push((dir.join(&name), depth + 1));
                }
                continue;
            }
            if let Some(key) = wheel_key(&name) {
                keys.entry(key.to_owned()).or_default().push(dir.join(&name));
            }
        }
        for (key, mut members) in keys {
            let link = dir.join(&key);
            let is_link = members.contains(&link)
                && std::fs::symlink_metadata(root.join(&link)).is_ok_and(|m| m.file_type().is_symlink());
            let archive = if is_link { archive_of(root, &link) } else { None };
            members.sort();
            units.push(Unit {
                kind: Kind::Wheel,
                stamps: members.clone(),
                members,
                link: is_link.then_some(link),
                archive,
            });
        }
    }
    units
}

/// Sdist revisions (directories holding `metadata.msgpack`, and the revision directories
/// next to a `revision.http`/`revision.rev` pointer) and their unpacked `src/` trees.
fn sdist_units(root: &Path, sdists: &Path) -> Vec<Unit> {
    let mut units = Vec::new();
    let mut revisions = HashSet::new();
    let mut stack = vec![(sdists.to_path_buf(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let children = list(root, &dir);
        let has = |n: &str| children.iter().any(|(c, _)| c == n);
        if has("metadata.msgpack") && revisions.insert(dir.clone()) {
            units.push(Unit {
                kind: Kind::Revision,
                members: vec![dir.clone()],
                link: None,
                archive: None,
                stamps: vec![dir.clone(), dir.join("metadata.msgpack"), dir.join("src")],
            });
            if children.iter().any(|(c, k)| c == "src" && k.is_dir()) {
                let src = dir.join("src");
                units.push(Unit {
                    kind: Kind::SdistSource,
                    members: vec![src.clone()],
                    link: None,
                    archive: None,
                    stamps: vec![src, dir.join("metadata.msgpack")],
                });
            }
        }
        let pointer = has("revision.http") || has("revision.rev");
        for (name, kind) in &children {
            if !kind.is_dir() || name == "src" {
                continue;
            }
            let child = dir.join(name);
            if pointer
                && !root.join(&child).join("metadata.msgpack").exists()
                && revisions.insert(child.clone())
            {
                units.push(Unit::simple(Kind::Revision, child.clone(), None));
            }
            if depth < 7 {
                stack.push((child, depth + 1));
            }
        }
    }
    units
}

/// `.rkyv` files below the Simple-API bucket.
fn simple_units(root: &Path, dir: &Path, depth: usize, out: &mut Vec<Unit>) {
    for (name, kind) in list(root, dir) {
        let rel = dir.join(&name);
        if kind.is_dir() && depth < 4 {
            simple_units(root, &rel, depth + 1, out);
        } else if kind.is_file() && rel.extension().is_some_and(|e| e == "rkyv") {
            out.push(Unit::simple(Kind::SimpleIndex, rel, None));
        }
    }
}

/// `files-v0` objects no archive links to any more (link count 1), each its own unit.
fn object_units(root: &Path, files: &Path, out: &mut Vec<Unit>) {
    for (shard, kind) in list(root, files) {
        if !kind.is_dir() {
            continue;
        }
        let shard = files.join(shard);
        for (name, kind) in list(root, &shard) {
            let rel = shard.join(name);
            if kind.is_file() && std::fs::symlink_metadata(root.join(&rel)).is_ok_and(|m| m.nlink() == 1) {
                out.push(Unit::simple(Kind::Entry, rel, None));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// --older-than
// ---------------------------------------------------------------------------------------

/// Every path of every unit used within `age` (members and archives).
fn recent_paths(clock: &Clock<'_>, age: Duration) -> Vec<PathBuf> {
    let cutoff = now_nanos().saturating_sub(age.as_nanos().try_into().unwrap_or(Nanos::MAX));
    let mut out = Vec::new();
    for unit in recency_units(clock.root) {
        if clock.last_use(&unit.all_stamps()).is_some_and(|t| t >= cutoff) {
            out.extend(unit.members.iter().cloned());
            out.extend(unit.archive.iter().cloned());
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// --keep-tools
// ---------------------------------------------------------------------------------------

/// What tells tools apart: the interpreter (`<digest>` of its path, and its `major.minor`
/// from `pyvenv.cfg`) and the distributions asked for (`REQUESTED`), sorted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct ToolKey {
    interpreter: OsString,
    python: String,
    requested: Vec<String>,
}

/// One cached tool environment.
#[derive(Debug, Clone)]
struct ToolEnvironment {
    link: PathBuf,
    archive: PathBuf,
    key: ToolKey,
    /// Versions of the requested distributions, in `key.requested` order.
    versions: Vec<Option<Version>>,
    /// The link's modification time (its creation: uv never rewrites a link in place).
    created: Nanos,
}

/// Every `environments-v2/<digest>/<hash>` link to an archive venv with requested
/// distributions.
fn tool_environments(root: &Path) -> Vec<ToolEnvironment> {
    let mut out = Vec::new();
    let Some(envs) = bucket(root, Family::Environments) else { return out };
    for (digest, kind) in list(root, &envs) {
        let dir = envs.join(&digest);
        if !kind.is_dir() || root.join(&dir).join("pyvenv.cfg").exists() {
            continue;
        }
        for (name, kind) in list(root, &dir) {
            let link = dir.join(&name);
            if !kind.is_symlink() {
                continue;
            }
            let Some(archive) = archive_of(root, &link) else { continue };
            let venv = root.join(&archive);
            let Ok(cfg) = read_small(&venv.join("pyvenv.cfg")) else { continue };
            // The tool's own distributions, not its dependencies (uv marks all `REQUESTED`).
            let mut dists = crate::names::tool_distributions(root, &venv);
            if dists.is_empty() {
                continue;
            }
            dists.sort();
            let created = std::fs::symlink_metadata(root.join(&link))
                .map(|m| nanos(m.mtime(), m.mtime_nsec()))
                .unwrap_or(0);
            out.push(ToolEnvironment {
                key: ToolKey {
                    interpreter: digest.clone(),
                    python: python_minor(&cfg),
                    requested: dists.iter().map(|(n, _)| n.clone()).collect(),
                },
                versions: dists.iter().map(|(_, v)| Version::parse(v)).collect(),
                link,
                archive,
                created,
            });
        }
    }
    out
}

/// The newest `n` environments of each tool: highest versions first, then the newest link.
fn newest(mut envs: Vec<ToolEnvironment>, n: usize) -> Vec<ToolEnvironment> {
    envs.sort_by(|a, b| {
        a.key
            .cmp(&b.key)
            .then_with(|| b.versions.cmp(&a.versions))
            .then_with(|| b.created.cmp(&a.created))
            .then_with(|| a.link.cmp(&b.link))
    });
    let mut kept = Vec::new();
    let mut count: HashMap<ToolKey, usize> = HashMap::new();
    for env in envs {
        let seen = count.entry(env.key.clone()).or_default();
        if *seen < n {
            *seen += 1;
            kept.push(env);
        }
    }
    kept
}

/// Protect the newest `n` environments of each tool: link, `.lock`, archive, and what the
/// archive needs (a symlink-mode venv points into wheel archives; [`usage::closure`] finds
/// them, as for environments in use).
fn keep_newest_tools(view: &CacheView<'_>, n: u32, protect: &mut Protect) {
    let kept = newest(tool_environments(view.root), usize::try_from(n).unwrap_or(usize::MAX));
    let mut start = Vec::new();
    for env in kept {
        protect.add(env.link.clone(), KeepReason::NewestTool);
        protect.add(lock_sibling(&env.link), KeepReason::NewestTool);
        protect.add(env.archive.clone(), KeepReason::NewestTool);
        start.push(env.link);
        start.push(env.archive);
    }
    if start.is_empty() {
        return;
    }
    for needed in usage::closure(view, start).into_keys() {
        protect.add(needed, KeepReason::NewestTool);
    }
}

/// Up to 64 KiB of a small file, without marking it accessed where the kernel allows.
fn read_small(path: &Path) -> std::io::Result<Vec<u8>> {
    crate::names::read_quietly(path, 64 * 1024)
}

/// `major.minor` of `version_info` (uv) or `version` (virtualenv) in a `pyvenv.cfg`.
fn python_minor(cfg: &[u8]) -> String {
    let text = String::from_utf8_lossy(cfg);
    let value = |wanted: &str| {
        text.lines().find_map(|line| {
            let (k, v) = line.split_once('=')?;
            (k.trim() == wanted).then(|| v.trim().to_string())
        })
    };
    let full = value("version_info").or_else(|| value("version")).unwrap_or_default();
    full.split('.').take(2).collect::<Vec<_>>().join(".")
}

/// A PEP 440 version, compared as PEP 440 orders them (epoch, release, pre, post, dev; the
/// local part is ignored). Anything unparsable is `None` and sorts below every version.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    epoch: u64,
    /// Trailing zeros removed, so `1.0` == `1`.
    release: Vec<u64>,
    /// (0 = dev-only release, 1 = a, 2 = b, 3 = rc, 4 = final, number).
    pre: (u8, u64),
    /// (0 = none, 1 = post, number).
    post: (u8, u64),
    /// (0 = dev, 1 = none, number).
    dev: (u8, u64),
}

impl Version {
    /// Parse `1.2.3`, `v2!1.0rc1.post2.dev3+local`, ...
    pub fn parse(text: &str) -> Option<Version> {
        let lower = text.trim().to_ascii_lowercase();
        let text = lower.strip_prefix('v').unwrap_or(&lower);
        let text = text.split('+').next().unwrap_or(text);
        let (epoch, rest) = match text.split_once('!') {
            Some((e, r)) => (e.parse().ok()?, r),
            None => (0, text),
        };
        let mut rest = rest;
        let mut release = Vec::new();
        loop {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return None;
            }
            release.push(rest[..digits].parse().ok()?);
            rest = &rest[digits..];
            match rest.strip_prefix('.') {
                Some(r) if r.starts_with(|c: char| c.is_ascii_digit()) => rest = r,
                _ => break,
            }
        }
        while release.len() > 1 && release.last() == Some(&0) {
            release.pop();
        }
        let (mut pre, mut post, mut dev) = (None, None, None);
        while !rest.is_empty() {
            // `1.0-3` is an implicit post release.
            if let Some(r) = rest.strip_prefix('-').filter(|r| r.starts_with(|c: char| c.is_ascii_digit())) {
                let (n, r) = number(r)?;
                post = Some(n);
                rest = r;
                continue;
            }
            let r = rest.trim_start_matches(['.', '-', '_']);
            const WORDS: [(&str, u8); 12] = [
                ("alpha", 1),
                ("a", 1),
                ("beta", 2),
                ("b", 2),
                ("preview", 3),
                ("pre", 3),
                ("rc", 3),
                ("c", 3),
                ("post", 5),
                ("rev", 5),
                ("r", 5),
                ("dev", 6),
            ];
            let (word, kind) = WORDS.iter().find(|(w, _)| r.starts_with(w))?;
            let (n, r) = number(r[word.len()..].trim_start_matches(['.', '-', '_']))?;
            match kind {
                1..=3 if pre.is_none() && post.is_none() && dev.is_none() => pre = Some((*kind, n)),
                5 if post.is_none() && dev.is_none() => post = Some(n),
                6 if dev.is_none() => dev = Some(n),
                _ => return None,
            }
            rest = r;
        }
        let pre = match (pre, post, dev) {
            (Some(p), _, _) => p,
            (None, None, Some(_)) => (0, 0),
            _ => (4, 0),
        };
        Some(Version {
            epoch,
            release,
            pre,
            post: post.map_or((0, 0), |n| (1, n)),
            dev: dev.map_or((1, 0), |n| (0, n)),
        })
    }
}

/// Leading digits as a number (none means 0), and the rest.
fn number(text: &str) -> Option<(u64, &str)> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let n = if digits == 0 { 0 } else { text[..digits].parse().ok()? };
    Some((n, &text[digits..]))
}

// ---------------------------------------------------------------------------------------
// --max-size
// ---------------------------------------------------------------------------------------

/// Parse `10GiB`, `500MB`, `1.5G`, `4096`: `K`/`KiB`, `M`/`MiB`, `G`/`GiB`, `T`/`TiB` are
/// powers of 1024; `KB`, `MB`, `GB`, `TB` powers of 1000 (case-insensitive); a bare number
/// or `B` is bytes. Fractions round down to whole bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let invalid = || format!("invalid size `{text}`: expected a number with a unit, like 10GiB, 500MB, 1.5G");
    let end = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') || fraction.len() > 18 {
        return Err(invalid());
    }
    let scale: u128 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "ki" | "kib" => 1 << 10,
        "m" | "mi" | "mib" => 1 << 20,
        "g" | "gi" | "gib" => 1 << 30,
        "t" | "ti" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "invalid size unit in `{text}`: use B, KiB, MiB, GiB, TiB (or K, M, G, T) or KB, MB, GB, TB"
            ))
        }
    };
    let too_large = || format!("size `{text}` is too large");
    let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| too_large())? };
    let fraction_value: u128 =
        if fraction.is_empty() { 0 } else { fraction.parse().map_err(|_| invalid())? };
    let bytes = whole
        .checked_mul(scale)
        .and_then(|b| b.checked_add(fraction_value * scale / 10u128.pow(fraction.len() as u32)))
        .ok_or_else(too_large)?;
    u64::try_from(bytes).map_err(|_| too_large())
}

/// The cache as it will be after the plan: allocated bytes of every inode counted once.
struct Census {
    total: u64,
    /// Hard-linked inodes, by device and inode.
    shared: HashMap<(u64, u64), Shared>,
    /// Surviving links (outside `archive-v0`) into each archive.
    references: HashMap<PathBuf, u64>,
}

/// One hard-linked inode of the cache.
struct Shared {
    /// Allocated bytes.
    bytes: u64,
    /// How many of its links survive in the cache.
    links: u64,
    /// Its `files-v0` link (content-addressed cache), which uv's prune removes once it is the
    /// only link left.
    object: Option<PathBuf>,
}

fn allocated(meta: &Metadata) -> u64 {
    meta.blocks().saturating_mul(512)
}

impl Census {
    /// Walk the cache (never following links), skipping everything in `doomed`; `files-v0`
    /// objects that `protect` covers are never counted as removable.
    fn take(root: &Path, doomed: &HashSet<PathBuf>, protect: &Protect) -> Census {
        let mut census = Census { total: 0, shared: HashMap::new(), references: HashMap::new() };
        if let Ok(meta) = std::fs::symlink_metadata(root) {
            census.add(&meta);
        }
        let archive_bucket = Family::Archive.current_name().map(PathBuf::from);
        let files_bucket = Family::Files.current_name().map(PathBuf::from);
        let mut stack = vec![PathBuf::new()];
        while let Some(dir) = stack.pop() {
            let in_archive = archive_bucket.as_ref().is_some_and(|a| dir.starts_with(a));
            let in_files = files_bucket.as_ref().is_some_and(|f| dir.starts_with(f));
            let Ok(entries) = std::fs::read_dir(root.join(&dir)) else { continue };
            for entry in entries.flatten() {
                let rel = dir.join(entry.file_name());
                if doomed.contains(&rel) {
                    continue;
                }
                let Ok(meta) = entry.metadata() else { continue };
                census.add(&meta);
                if in_files && meta.is_file() && protect.covering(&rel).is_none() {
                    if let Some(shared) = census.shared.get_mut(&(meta.dev(), meta.ino())) {
                        shared.object = Some(rel.clone());
                    }
                }
                if meta.is_dir() {
                    stack.push(rel);
                } else if meta.file_type().is_symlink() && !in_archive {
                    if let Some(archive) = archive_of(root, &rel) {
                        *census.references.entry(archive).or_default() += 1;
                    }
                }
            }
        }
        census
    }

    fn add(&mut self, meta: &Metadata) {
        if meta.is_dir() || meta.nlink() <= 1 {
            self.total += allocated(meta);
            return;
        }
        let seen = self.shared.entry((meta.dev(), meta.ino())).or_insert(Shared {
            bytes: allocated(meta),
            links: 0,
            object: None,
        });
        if seen.links == 0 {
            self.total += seen.bytes;
        }
        seen.links += 1;
    }

    /// Account for removing `rel` and everything below it. Returns the `files-v0` objects
    /// this leaves with no other link, which go too.
    fn release(&mut self, root: &Path, rel: &Path) -> Vec<PathBuf> {
        let mut orphans = Vec::new();
        let mut stack = vec![root.join(rel)];
        while let Some(path) = stack.pop() {
            let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
            if meta.is_dir() {
                if let Ok(entries) = std::fs::read_dir(&path) {
                    stack.extend(entries.flatten().map(|e| e.path()));
                }
            }
            if meta.is_dir() || meta.nlink() <= 1 {
                self.total = self.total.saturating_sub(allocated(&meta));
            } else if let Some(seen) = self.shared.get_mut(&(meta.dev(), meta.ino())) {
                seen.links = seen.links.saturating_sub(1);
                if seen.links == 1 {
                    if let Some(object) = seen.object.take() {
                        seen.links = 0;
                        orphans.push(object);
                    }
                }
                if seen.links == 0 {
                    self.total = self.total.saturating_sub(seen.bytes);
                    seen.bytes = 0;
                }
            }
        }
        orphans
    }
}

/// Plan the removal of `files-v0` objects left without an archive.
fn objects(plan: &mut Plan, orphans: Vec<PathBuf>) {
    for rel in orphans {
        plan.targets.push(Target { rel, reason: Reason::OverSizeLimit, phase: Phase::Files });
    }
}

/// A unit `--max-size` could evict.
struct Candidate {
    last_use: Nanos,
    unit: Unit,
    /// When another rule keeps it: the protected path and why.
    held: Option<(PathBuf, KeepReason)>,
}

/// The cache's size in allocated bytes, each inode counted once.
pub fn measure(root: &Path) -> u64 {
    Census::take(root, &HashSet::new(), &Protect::default()).total
}

/// `--max-size`: when the cache left by `plan` is larger than the budget, add the least
/// recently used wheels (with their archives), unpacked sdists and Simple-API responses to
/// the plan until it fits. Returns the size the cache will have (None without `--max-size`).
pub fn fit(
    root: &Path,
    proc_root: &Path,
    retention: &Retention,
    protect: &Protect,
    plan: &mut Plan,
) -> Option<u64> {
    let budget = retention.max_size?;
    let doomed: HashSet<PathBuf> = plan.targets.iter().map(|t| t.rel.clone()).collect();
    let mut census = Census::take(root, &doomed, protect);
    if census.total <= budget {
        return Some(census.total);
    }
    let is_doomed = |rel: &Path| rel.ancestors().any(|a| doomed.contains(a));
    let mountinfo = std::fs::read(proc_root.join("self/mountinfo")).ok();
    let clock = Clock::new(root, mountinfo.as_deref());
    let mut candidates: Vec<Candidate> = evictable_units(root)
        .into_iter()
        .filter_map(|mut unit| {
            unit.members.retain(|m| std::fs::symlink_metadata(root.join(m)).is_ok());
            if unit.members.is_empty() || unit.members.iter().any(|m| is_doomed(m)) {
                return None;
            }
            let linked = unit.link.as_ref().is_some_and(|l| unit.members.contains(l));
            if !linked || unit.archive.as_deref().is_some_and(is_doomed) {
                unit.archive = None;
            }
            // Kept for another reason (in use, newest tool, recent, locked): the wheel stays
            // whole, archive and all.
            let mut held = None;
            for rel in unit.members.iter().chain(&unit.archive) {
                if let Some((path, why)) = protect.covering(rel) {
                    held = Some((path.clone(), why.clone()));
                    break;
                }
                if let Some(why) = protect.judge(root, rel) {
                    held = Some((rel.clone(), why));
                    break;
                }
                if protect.has_below(rel) {
                    return None;
                }
            }
            Some(Candidate { last_use: clock.last_use(&unit.all_stamps())?, unit, held })
        })
        .collect();
    candidates.sort_by(|a, b| a.last_use.cmp(&b.last_use).then_with(|| a.unit.members.cmp(&b.unit.members)));
    for Candidate { unit, held, .. } in candidates {
        if census.total <= budget {
            break;
        }
        if let Some((path, why)) = held {
            // It would have gone to make room: report why it did not.
            plan.kept.insert(path, why);
            continue;
        }
        for member in &unit.members {
            let orphans = census.release(root, member);
            objects(plan, orphans);
            plan.targets.push(Target {
                rel: member.clone(),
                reason: Reason::OverSizeLimit,
                phase: Phase::References,
            });
        }
        let Some(archive) = unit.archive else { continue };
        let left = census.references.entry(archive.clone()).or_default();
        *left = left.saturating_sub(1);
        if *left == 0 {
            let orphans = census.release(root, &archive);
            if protect.is_beside_uv() {
                // Beside running uv the link goes now and the archive with the next run
                // (`KeepReason::Deferred`); counted as freed, so no other wheel goes instead.
                plan.kept.insert(archive, KeepReason::Deferred);
                continue;
            }
            objects(plan, orphans);
            plan.targets.push(Target { rel: archive, reason: Reason::OverSizeLimit, phase: Phase::Archives });
        }
    }
    Some(census.total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("10 GiB"), Ok(10 << 30));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert_eq!(parse_size("2K"), Ok(2048));
        assert_eq!(parse_size("2kb"), Ok(2000));
        assert_eq!(parse_size("3MiB"), Ok(3 << 20));
        assert_eq!(parse_size("1TB"), Ok(1_000_000_000_000));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size(".5K"), Ok(512));
        assert_eq!(parse_size("12B"), Ok(12));
        assert_eq!(parse_size("0.0001K"), Ok(0));
        for bad in
            ["", "G", ".", "1..5G", "1.2.3G", "-1G", "10 XB", "1e9", "99999999999999999999999", "20000000TB"]
        {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    fn v(text: &str) -> Version {
        Version::parse(text).unwrap_or_else(|| panic!("{text}"))
    }

    #[test]
    fn versions_order_like_pep_440() {
        let ordered = [
            "1.0.dev1",
            "1.0a1",
            "1.0a2.dev1",
            "1.0a2",
            "1.0b1",
            "1.0rc1",
            "1.0",
            "1.0.post1.dev1",
            "1.0.post1",
            "1.0.1",
            "1.2",
            "1.10",
            "2!0.1",
        ];
        for pair in ordered.windows(2) {
            assert!(v(pair[0]) < v(pair[1]), "{} < {}", pair[0], pair[1]);
        }
        assert_eq!(v("1.0"), v("1"));
        assert_eq!(v("1.0.0+local"), v("1"));
        assert_eq!(v("V1.0-RC1"), v("1.0rc1"));
        assert_eq!(v("1.0-2"), v("1.0.post2"));
        assert!(v("0.10") > v("0.2"));
        for bad in ["", "abc", "1.0x", "1.0rc1a2", ".1", "99999999999999999999999"] {
            assert_eq!(Version::parse(bad), None, "{bad}");
        }
        // Unparsable sorts below everything.
        assert!(Version::parse("junk") < Some(v("0")));
    }

    #[test]
    fn mountinfo_atime() {
        let info = b"22 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
30 22 0:30 / /mnt/no\\040atime rw,noatime - tmpfs tmpfs rw\n\
31 22 0:31 / /srv rw,strictatime - tmpfs tmpfs rw\n\
32 31 0:32 / /srv rw,noatime - tmpfs tmpfs rw\n";
        assert_eq!(atime_mode(Some(info), Path::new("/home/u/.cache/uv")), AtimeMode::Relatime);
        assert_eq!(atime_mode(Some(info), Path::new("/mnt/no atime/uv")), AtimeMode::Never);
        assert_eq!(atime_mode(Some(info), Path::new("/mnt/no")), AtimeMode::Relatime);
        // Mounted over: the later mount wins.
        assert_eq!(atime_mode(Some(info), Path::new("/srv/cache")), AtimeMode::Never);
        assert_eq!(atime_mode(Some(info), Path::new("/srv")), AtimeMode::Never);
        assert_eq!(
            atime_mode(Some(b"31 22 0:31 / /srv rw,strictatime - tmpfs tmpfs rw\n"), Path::new("/srv/x")),
            AtimeMode::Always
        );
        assert_eq!(atime_mode(None, Path::new("/x")), AtimeMode::Always);
        assert_eq!(atime_mode(Some(b"garbage\n"), Path::new("/x")), AtimeMode::Always);
    }

    /// A tool environment: `environments-v2/<digest>/<hash>` → `archive-v0/<id>`, a venv
    /// with `pyvenv.cfg` and `<name>-<version>.dist-info/REQUESTED`.
    fn tool(root: &Path, digest: &str, hash: &str, python: &str, dists: &[(&str, &str)]) {
        let id = format!("{digest}-{hash}");
        let venv = root.join("archive-v0").join(&id);
        let sp = venv.join(format!("lib/python{python}/site-packages"));
        for (name, version) in dists {
            let info = sp.join(format!("{name}-{version}.dist-info"));
            fs::create_dir_all(&info).unwrap();
            fs::write(info.join("REQUESTED"), "").unwrap();
            let meta =
                format!("Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nRequires-Dist: dep\n\n");
            fs::write(info.join("METADATA"), meta).unwrap();
        }
        // A dependency, marked REQUESTED too, as uv 0.13.8 marks every distribution it installs.
        fs::create_dir_all(sp.join("dep-9.0.dist-info")).unwrap();
        fs::write(sp.join("dep-9.0.dist-info/REQUESTED"), "").unwrap();
        fs::write(
            sp.join("dep-9.0.dist-info/METADATA"),
            "Metadata-Version: 2.1\nName: dep\nVersion: 9.0\n\n",
        )
        .unwrap();
        fs::write(venv.join("pyvenv.cfg"), format!("home = /usr/bin\nversion_info = {python}.7\n")).unwrap();
        let dir = root.join("environments-v2").join(digest);
        fs::create_dir_all(&dir).unwrap();
        symlink(format!("../../archive-v0/{id}"), dir.join(hash)).unwrap();
        fs::write(dir.join(format!("{hash}.lock")), "").unwrap();
    }

    fn kept_links(root: &Path, n: usize) -> Vec<String> {
        let mut out: Vec<String> =
            newest(tool_environments(root), n).iter().map(|e| e.link.display().to_string()).collect();
        out.sort();
        out
    }

    #[test]
    fn groups_tools_and_keeps_the_newest() {
        let tmp = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(tmp.path()).unwrap();
        tool(&root, "d1", "s01", "3.11", &[("sleepy", "0.1")]);
        tool(&root, "d1", "s10", "3.11", &[("Sleepy", "0.10")]);
        tool(&root, "d1", "s02", "3.11", &[("sleepy", "0.2")]);
        tool(&root, "d1", "dozy", "3.11", &[("dozy", "1.0")]);
        // Same tool with an extra `--with`: another group.
        tool(&root, "d1", "swith", "3.11", &[("sleepy", "0.1"), ("rich", "13")]);
        // Another interpreter (path digest), another Python version: other groups.
        tool(&root, "d2", "s01", "3.11", &[("sleepy", "0.1")]);
        tool(&root, "d1", "s01py312", "3.12", &[("sleepy", "0.1")]);
        // No REQUESTED marker: not a tool.
        fs::create_dir_all(root.join("archive-v0/plain/lib/python3.11/site-packages/x-1.dist-info")).unwrap();
        fs::write(root.join("archive-v0/plain/pyvenv.cfg"), "version_info = 3.11.7\n").unwrap();
        symlink("../../archive-v0/plain", root.join("environments-v2/d1/plain")).unwrap();

        let envs = tool_environments(&root);
        assert_eq!(envs.len(), 7);
        let s10 = envs.iter().find(|e| e.link.ends_with("s10")).unwrap();
        assert_eq!(s10.key.requested, ["sleepy"]);
        assert_eq!(s10.key.python, "3.11");
        assert_eq!(s10.archive, Path::new("archive-v0/d1-s10"));
        assert_eq!(
            kept_links(&root, 1),
            [
                "environments-v2/d1/dozy",
                "environments-v2/d1/s01py312",
                "environments-v2/d1/s10",
                "environments-v2/d1/swith",
                "environments-v2/d2/s01"
            ]
        );
        assert!(kept_links(&root, 2).contains(&"environments-v2/d1/s02".to_string()));
        assert!(!kept_links(&root, 2).contains(&"environments-v2/d1/s01".to_string()));
    }

    #[test]
    fn same_version_keeps_the_newest_link() {
        let tmp = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(tmp.path()).unwrap();
        tool(&root, "d1", "old", "3.11", &[("sleepy", "0.2")]);
        tool(&root, "d1", "new", "3.11", &[("sleepy", "0.2")]);
        let old = std::process::Command::new("touch")
            .args(["-h", "-d", "2 days ago"])
            .arg(root.join("environments-v2/d1/old"))
            .status()
            .unwrap();
        assert!(old.success());
        assert_eq!(kept_links(&root, 1), ["environments-v2/d1/new"]);
    }

    #[test]
    fn keep_tools_protects_link_lock_and_archive() {
        let tmp = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(tmp.path()).unwrap();
        fs::write(root.join("CACHEDIR.TAG"), "Signature: 8a477f597d28d172789f06886806bc55").unwrap();
        tool(&root, "d1", "s01", "3.11", &[("sleepy", "0.1")]);
        tool(&root, "d1", "s02", "3.11", &[("sleepy", "0.2")]);
        let mut protect = Protect::default();
        let retention = Retention { keep_tools: Some(1), ..Retention::default() };
        super::protect(&root, &root, Path::new("/nonexistent"), &retention, &mut protect);
        let p = crate::plan::plan(&root, crate::plan::Options::default(), &protect);
        let removed: Vec<String> = p.targets.iter().map(|t| t.rel.display().to_string()).collect();
        assert_eq!(removed, ["environments-v2/d1/s01", "environments-v2/d1/s01.lock", "archive-v0/d1-s01"]);
        for kept in ["environments-v2/d1/s02", "environments-v2/d1/s02.lock", "archive-v0/d1-s02"] {
            assert_eq!(p.kept.get(Path::new(kept)), Some(&KeepReason::NewestTool), "{kept}");
        }
    }

    #[test]
    fn wheel_units_group_pointers_with_their_link() {
        let tmp = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(tmp.path()).unwrap();
        let dir = root.join("wheels-v7/index/abc/tinylib");
        fs::create_dir_all(&dir).unwrap();
        fs::create_dir_all(root.join("archive-v0/T")).unwrap();
        symlink("../../../../archive-v0/T", dir.join("1.0-py3-none-any")).unwrap();
        for suffix in ["rev", "lock", "msgpack"] {
            fs::write(dir.join(format!("1.0-py3-none-any.{suffix}")), "x").unwrap();
        }
        fs::write(dir.join("2.0-py3-none-any.msgpack"), "x").unwrap();
        fs::write(dir.join(".lock"), "").unwrap();
        let units = wheel_units(&root, Path::new("wheels-v7"));
        assert_eq!(units.len(), 2);
        let u = &units[0];
        assert_eq!(u.archive.as_deref(), Some(Path::new("archive-v0/T")));
        assert_eq!(u.members.len(), 4);
        // Metadata alone is no wheel to evict.
        let evictable = evictable_units(&root);
        assert_eq!(evictable.len(), 1);
    }

    #[test]
    fn fit_evicts_least_recently_used_whole_wheels() {
        let tmp = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(tmp.path()).unwrap();
        let dir = root.join("wheels-v7/pypi/w");
        fs::create_dir_all(&dir).unwrap();
        for (i, key) in ["1-py3-none-any", "2-py3-none-any", "3-py3-none-any"].iter().enumerate() {
            let archive = root.join(format!("archive-v0/a{i}"));
            fs::create_dir_all(&archive).unwrap();
            fs::write(archive.join("data"), vec![1u8; 64 * 1024]).unwrap();
            symlink(format!("../../../archive-v0/a{i}"), dir.join(key)).unwrap();
            fs::write(dir.join(format!("{key}.http")), "p").unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        // The oldest wheel is in use.
        let mut protect = Protect::default();
        protect.add("archive-v0/a0".into(), KeepReason::InUse);
        let before = measure(&root);
        let retention = Retention { max_size: Some(before - 1), ..Retention::default() };
        let mut plan = Plan::default();
        let after = fit(&root, Path::new("/nonexistent"), &retention, &protect, &mut plan).unwrap();
        let removed: Vec<(String, Phase)> =
            plan.targets.iter().map(|t| (t.rel.display().to_string(), t.phase)).collect();
        assert_eq!(
            removed,
            [
                ("wheels-v7/pypi/w/2-py3-none-any".to_string(), Phase::References),
                ("wheels-v7/pypi/w/2-py3-none-any.http".to_string(), Phase::References),
                ("archive-v0/a1".to_string(), Phase::Archives),
            ]
        );
        assert!(after < before && after >= before - 80 * 1024, "{before} → {after}");
        // A budget already met removes nothing.
        let mut plan = Plan::default();
        let retention = Retention { max_size: Some(before), ..Retention::default() };
        assert_eq!(fit(&root, Path::new("/nonexistent"), &retention, &protect, &mut plan), Some(before));
        assert!(plan.targets.is_empty());
    }

    #[test]
    fn census_counts_hard_links_once() {
        let tmp = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(tmp.path()).unwrap();
        fs::create_dir_all(root.join("archive-v0/a")).unwrap();
        fs::create_dir_all(root.join("archive-v0/b")).unwrap();
        fs::write(root.join("archive-v0/a/f"), vec![1u8; 64 * 1024]).unwrap();
        let one = measure(&root);
        fs::hard_link(root.join("archive-v0/a/f"), root.join("archive-v0/b/f")).unwrap();
        assert_eq!(measure(&root), one);
        let mut census = Census::take(&root, &HashSet::new(), &Protect::default());
        census.release(&root, Path::new("archive-v0/a"));
        // The file survives through b: only a's directory block is gone.
        assert!(census.total >= 64 * 1024, "{}", census.total);
        census.release(&root, Path::new("archive-v0/b"));
        assert!(census.total < 64 * 1024, "{}", census.total);
    }

    #[test]
    fn evicting_an_archive_releases_its_content_addressed_objects() {
        let tmp = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(tmp.path()).unwrap();
        fs::create_dir_all(root.join("archive-v0/a")).unwrap();
        fs::create_dir_all(root.join("files-v0/ab")).unwrap();
        fs::write(root.join("files-v0/ab/obj"), vec![1u8; 64 * 1024]).unwrap();
        fs::hard_link(root.join("files-v0/ab/obj"), root.join("archive-v0/a/f")).unwrap();
        let mut census = Census::take(&root, &HashSet::new(), &Protect::default());
        let before = census.total;
        let orphans = census.release(&root, Path::new("archive-v0/a"));
        assert_eq!(orphans, [PathBuf::from("files-v0/ab/obj")]);
        assert!(census.total + 64 * 1024 <= before, "{before} → {}", census.total);
        // A protected object is never counted as going.
        let mut protect = Protect::default();
        protect.add("files-v0/ab/obj".into(), KeepReason::InUse);
        let mut census = Census::take(&root, &HashSet::new(), &protect);
        assert!(census.release(&root, Path::new("archive-v0/a")).is_empty());
        assert!(census.total >= 64 * 1024);
    }

    /// On a `relatime` mount a read up to a day after the recorded access leaves no trace:
    /// `--older-than` counts the access as that much later (never later than now).
    #[test]
    fn relatime_access_counts_up_to_a_day_later() {
        let root = Path::new("/c");
        let mount = |options: &str| format!("22 1 254:0 / / rw,{options} - ext4 /dev/vda rw\n").into_bytes();
        let hour: Nanos = 3600 * 1_000_000_000;
        let strict = Clock::for_older_than(root, Some(&mount("strictatime")));
        let relatime = Clock::for_older_than(root, Some(&mount("relatime")));
        let noatime = Clock::for_older_than(root, Some(&mount("noatime")));
        let raw = Clock::new(root, Some(&mount("relatime")));
        let now = relatime.now;
        assert!(strict.atime && relatime.atime && !noatime.atime && raw.atime);
        // Accessed 2 hours ago: a read since may have gone unrecorded, up to now.
        assert_eq!(strict.accessed(now - 2 * hour), now - 2 * hour);
        assert_eq!(relatime.accessed(now - 2 * hour), now);
        // Accessed 30 hours ago: any read after 24 hours would have been recorded.
        assert_eq!(relatime.accessed(now - 30 * hour), now - 6 * hour);
        // `--max-size` orders by the raw times; a time in the future stays what it is.
        assert_eq!(raw.accessed(now - 30 * hour), now - 30 * hour);
        assert_eq!(relatime.accessed(now + hour), now + hour);
    }

    #[test]
    fn evidence_ignores_directory_and_link_access_times() {
        let tmp = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(tmp.path()).unwrap();
        fs::create_dir(root.join("d")).unwrap();
        fs::write(root.join("f"), "x").unwrap();
        let clock = Clock { root: &root, atime: true, unrecorded: 0, now: now_nanos() };
        let meta = fs::metadata(root.join("f")).unwrap();
        assert!(clock.evidence(&meta) >= nanos(meta.ctime(), meta.ctime_nsec()));
        let no_atime = Clock { root: &root, atime: false, unrecorded: 0, now: now_nanos() };
        assert!(clock.last_use(&["f".into(), "missing".into()]).is_some());
        assert_eq!(no_atime.last_use(&["missing".into()]), None);
        assert!(python_minor(b"home = /x\nversion_info = 3.12.1\n") == "3.12");
        assert!(python_minor(b"version = 3.9.18\n") == "3.9");
        assert_eq!(wheel_key(OsStr::new("1.0-py3-none-any.http")), Some(OsStr::new("1.0-py3-none-any")));
        assert_eq!(wheel_key(OsStr::new(".lock")), None);
    }
}
