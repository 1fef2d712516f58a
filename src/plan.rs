//! The plan: every path uv 0.13.8's `cache prune` would remove, each with its reason, minus
//! what must be kept (entries in use and their closure, young or locked entries).
//!
//! The order is uv's (`cache_prune.rs`, uv-cache `lib.rs` `prune`): stale source revisions;
//! unknown top-level entries; every cached environment; every temporary build; with `--ci`,
//! pre-built wheels and unpacked sdist contents; archives that no symlink references; orphan
//! `files-v0` objects. Targets carry a [`Phase`] so that references are always removed before
//! the archives they point to: a run killed at any moment never leaves a link into a removed
//! archive.
//!
//! Planning only reads. It never follows a symlink into a directory it plans to remove and
//! resolves links only to compare targets.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::layout::{self, Family, TopLevel};
use crate::pointer::{self, PointerKind};

/// Why a path is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// A source-distribution revision that the `revision.*` pointer no longer names.
    StaleRevision,
    /// A top-level entry that is not a bucket (`.tmp*` staging directories, stray files).
    UnknownEntry,
    /// An older generation of a bucket (`wheels-v4` when uv uses `wheels-v7`).
    StaleBucket,
    /// A cached environment (`environments-v2/*`): uv recreates it on next use.
    CachedEnvironment,
    /// A temporary build or overlay environment (`builds-v0/*`).
    BuildEnvironment,
    /// `--ci`: a pre-built wheel directory (`wheels-v*/<kind>`).
    CiWheel,
    /// `--ci`: unpacked contents of a built sdist (`src/`, the unzipped-wheel link).
    CiBuiltWheel,
    /// An archive no symlink references any more.
    UnreferencedArchive,
    /// A `files-v0` object no archive links to (link count 1), or a shard left empty.
    OrphanFile,
    /// `--max-size`: a least recently used wheel, unpacked sdist or index entry, removed to
    /// bring the cache under the limit.
    OverSizeLimit,
    /// `clean`: any entry of the cache (`uv cache clean` leaves only the root's `.lock`).
    Cleaned,
    /// `clean PACKAGE`: one of the package's wheel, sdist, Simple-API or flat-index entries.
    PackageEntry,
    /// `clean PACKAGE`: an archive that only the removed package entries referenced.
    DanglingArchive,
}

/// Removal phases, run in order; within one phase targets are independent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// Everything that may hold a reference to an archive.
    References,
    /// Archives (referenced only by paths removed in the first phase).
    Archives,
    /// `files-v0` objects, whose link counts drop as archives go.
    Files,
}

/// One path to remove, relative to the cache root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub rel: PathBuf,
    pub reason: Reason,
    pub phase: Phase,
}

/// Why an entry that uv would remove is kept.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeepReason {
    /// A running process uses it (or it is in the closure of one that is).
    InUse,
    /// Modified or created within the grace period while other uv processes were running.
    Young,
    /// Its own `.lock` is held by a uv process.
    Locked,
    /// A newer generation of a bucket, or an unknown bucket: a newer uv's data.
    NewerBucket,
    /// `--keep-tools`: among the newest environments of its tool (with its link and archive).
    #[serde(rename = "kept-newest-tool")]
    NewestTool,
    /// `--older-than`: used more recently than that.
    Recent,
    /// Beside running uv: an archive whose last link this run removes. A uv process may have
    /// resolved that link a moment ago and be about to use the archive (start the tool, link
    /// its files into a venv) without any trace a scan could see yet; the next run removes it.
    Deferred,
}

/// Paths that must survive, each with why. A protected path protects everything below it;
/// a removal unit containing a protected path is split around it.
#[derive(Debug, Clone, Default)]
pub struct Protect {
    paths: BTreeMap<PathBuf, KeepReason>,
    /// Beside running uv processes: the grace period, for judging each candidate when it is
    /// listed (see [`Protect::judge`]).
    beside_uv: Option<std::time::Duration>,
}

impl Protect {
    /// Judge every candidate as it is planned (uv processes are writing the cache meanwhile).
    pub fn set_beside_uv(&mut self, grace: std::time::Duration) {
        self.beside_uv = Some(grace);
    }

    /// True when uv processes hold the cache lock: plan entry by entry, never a shard whole.
    pub fn is_beside_uv(&self) -> bool {
        self.beside_uv.is_some()
    }

    /// Beside running uv: why `rel`, just listed, must stay (young, or locked by uv). The
    /// protections computed before planning cannot know an entry uv created since.
    pub fn judge(&self, root: &Path, rel: &Path) -> Option<KeepReason> {
        self.beside_uv.and_then(|grace| crate::concurrent::judge(root, rel, grace))
    }

    /// Protect `rel` (relative to the cache root). The first reason given wins.
    pub fn add(&mut self, rel: PathBuf, reason: KeepReason) {
        self.paths.entry(rel).or_insert(reason);
    }

    /// The protected path that contains `rel` (itself or an ancestor), if any.
    pub fn covering(&self, rel: &Path) -> Option<(&PathBuf, &KeepReason)> {
        rel.ancestors().filter(|a| !a.as_os_str().is_empty()).find_map(|a| self.paths.get_key_value(a))
    }

    /// True when some protected path lies strictly below `rel`.
    pub fn has_below(&self, rel: &Path) -> bool {
        self.paths
            .range::<Path, _>((std::ops::Bound::Excluded(rel), std::ops::Bound::Unbounded))
            .next()
            .is_some_and(|(p, _)| p.starts_with(rel))
    }
}

/// A problem met while planning. The part of the cache it concerns is left alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanError {
    pub rel: PathBuf,
    pub message: String,
}

/// The full plan.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub targets: Vec<Target>,
    /// Entries uv would have removed that are kept, with why (deduplicated).
    pub kept: BTreeMap<PathBuf, KeepReason>,
    pub errors: Vec<PlanError>,
}

/// Planning options.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    pub ci: bool,
}

/// Build the plan for the cache at `root` (absolute, canonical).
pub fn plan(root: &Path, options: Options, protect: &Protect) -> Plan {
    let mut planner = Planner::new(root, protect);
    planner.run(options);
    planner.finish()
}

/// Builds a plan target by target, splitting removal units around protected paths. Other
/// commands (`clean`) use it to get the same guarantees as prune.
pub struct Planner<'a> {
    root: &'a Path,
    protect: &'a Protect,
    plan: Plan,
    /// Every planned target, for skipping removed subtrees when looking for references.
    doomed: HashSet<PathBuf>,
}

impl<'a> Planner<'a> {
    /// A planner for the cache at `root` (absolute, canonical).
    pub fn new(root: &'a Path, protect: &'a Protect) -> Self {
        Planner { root, protect, plan: Plan::default(), doomed: HashSet::new() }
    }

    /// The finished plan.
    pub fn finish(self) -> Plan {
        self.plan
    }
}

impl Planner<'_> {
    fn run(&mut self, options: Options) {
        let (buckets, going) = self.top_level();
        let current = |family: Family| -> Option<PathBuf> {
            family.current_name().map(PathBuf::from).filter(|n| buckets.contains(n))
        };
        if let Some(sdists) = current(Family::SourceDistributions) {
            self.stale_revisions(&sdists);
        }
        self.remove_top_level(&going);
        if let Some(envs) = current(Family::Environments) {
            self.children(&envs, Reason::CachedEnvironment, |_| true);
        }
        if let Some(builds) = current(Family::Builds) {
            self.children(&builds, Reason::BuildEnvironment, |_| true);
        }
        if options.ci {
            if let Some(wheels) = current(Family::Wheels) {
                // uv's `path.is_dir()` follows links: a link to a directory goes (as a link).
                let root = self.root.to_path_buf();
                if self.protect.is_beside_uv() {
                    // Not `pypi` whole while uv may be adding a wheel to it: entry by entry.
                    for shard in self.list(&wheels) {
                        let shard = wheels.join(shard);
                        if root.join(&shard).is_dir() {
                            self.entries_below(&shard, Family::Wheels, Reason::CiWheel);
                        }
                    }
                } else {
                    self.children(&wheels, Reason::CiWheel, |rel| root.join(rel).is_dir());
                }
            }
            if let Some(sdists) = current(Family::SourceDistributions) {
                self.unpacked_built_wheels(&sdists);
            }
        }
        // References live in the wheel and sdist buckets uv knows, and in newer generations
        // of them, which a newer uv sharing the cache still reads. Beside running uv, the
        // older generations this run removes are walked too: their links defer the archives
        // they reach, which an older uv may have just resolved.
        let mut reference_buckets: Vec<PathBuf> = buckets
            .iter()
            .filter(|name| {
                matches!(
                    layout::classify(name.as_os_str()),
                    TopLevel::Current(Family::Wheels | Family::SourceDistributions)
                        | TopLevel::Newer(Family::Wheels | Family::SourceDistributions, _)
                )
            })
            .cloned()
            .collect();
        if self.protect.is_beside_uv() {
            reference_buckets.extend(
                going
                    .iter()
                    .filter(|(_, class)| {
                        matches!(class, TopLevel::Older(Family::Wheels | Family::SourceDistributions, _))
                    })
                    .map(|(rel, _)| rel.clone()),
            );
        }
        if let Some(archive) = current(Family::Archive) {
            self.unreferenced_archives(&archive, &reference_buckets);
        }
        if let Some(files) = current(Family::Files) {
            self.orphan_files(&files);
        }
    }

    /// True when `rel` or one of its ancestors is already planned for removal.
    pub fn is_doomed(&self, rel: &Path) -> bool {
        rel.ancestors().any(|a| self.doomed.contains(a))
    }

    fn error(&mut self, rel: &Path, err: impl std::fmt::Display) {
        self.plan.errors.push(PlanError { rel: rel.to_path_buf(), message: err.to_string() });
    }

    /// Consider removing `rel`; keep it, or split it around protected paths inside it.
    pub fn consider(&mut self, rel: PathBuf, reason: Reason, phase: Phase) {
        if let Some((kept, why)) = self.protect.covering(&rel) {
            self.plan.kept.insert(kept.clone(), why.clone());
            return;
        }
        if let Some(why) = self.protect.judge(self.root, &rel) {
            self.plan.kept.insert(rel, why);
            return;
        }
        if self.protect.has_below(&rel) {
            // Only a real directory can contain a protected path; `symlink_metadata` never
            // follows, so a link is removed as a link.
            match fs::symlink_metadata(self.root.join(&rel)) {
                Ok(meta) if meta.is_dir() => {
                    for child in self.list(&rel) {
                        self.consider(rel.join(child), reason, phase);
                    }
                    return;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(e) => return self.error(&rel, e),
            }
        }
        self.doomed.insert(rel.clone());
        self.plan.targets.push(Target { rel, reason, phase });
    }

    /// Names in a directory (relative) with their types (`None`: vanished), sorted; the type
    /// comes from the directory listing itself (`d_type`), so no `lstat` per entry.
    fn list_typed(&mut self, rel: &Path) -> Vec<(std::ffi::OsString, Option<fs::FileType>)> {
        match fs::read_dir(self.root.join(rel)) {
            Ok(entries) => {
                let mut names: Vec<_> =
                    entries.filter_map(|e| e.ok()).map(|e| (e.file_name(), e.file_type().ok())).collect();
                names.sort_by(|a, b| a.0.cmp(&b.0));
                names
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                self.error(rel, e);
                Vec::new()
            }
        }
    }

    /// Names in a directory (relative), sorted for a stable plan; errors are recorded.
    fn list(&mut self, rel: &Path) -> Vec<std::ffi::OsString> {
        match fs::read_dir(self.root.join(rel)) {
            Ok(entries) => {
                let mut names: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
                names.sort();
                names
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                self.error(rel, e);
                Vec::new()
            }
        }
    }

    /// Classify the top level: the bucket directories that remain, and what goes (older
    /// generations, strays), for [`Planner::remove_top_level`].
    fn top_level(&mut self) -> (BTreeSet<PathBuf>, Vec<(PathBuf, TopLevel)>) {
        let mut buckets = BTreeSet::new();
        let mut going = Vec::new();
        for name in self.list(Path::new("")) {
            let rel = PathBuf::from(&name);
            let is_dir = fs::symlink_metadata(self.root.join(&rel)).is_ok_and(|m| m.is_dir());
            match layout::classify(&name) {
                TopLevel::Marker => {}
                TopLevel::Current(_) if is_dir => {
                    buckets.insert(rel);
                }
                TopLevel::Newer(..) | TopLevel::UnknownBucket if is_dir => {
                    self.plan.kept.insert(rel.clone(), KeepReason::NewerBucket);
                    buckets.insert(rel);
                }
                older @ TopLevel::Older(..) if is_dir => going.push((rel, older)),
                // Files, links and non-bucket directories (uv: "dangling cache bucket").
                _ => going.push((rel, TopLevel::Other)),
            }
        }
        (buckets, going)
    }

    /// uv's step after stale revisions: older generations and stray top-level entries.
    fn remove_top_level(&mut self, going: &[(PathBuf, TopLevel)]) {
        for (rel, class) in going {
            match *class {
                // Beside running uv, entry by entry: an older uv sharing the cache may be
                // writing into its bucket now, and each entry is judged as it is listed. The
                // emptied bucket itself goes with the next run that holds the lock.
                TopLevel::Older(family, _) if self.protect.is_beside_uv() => {
                    for name in self.list(rel) {
                        self.entries_below(&rel.join(name), family, Reason::StaleBucket);
                    }
                }
                TopLevel::Older(..) => self.consider(rel.clone(), Reason::StaleBucket, Phase::References),
                _ => self.consider(rel.clone(), Reason::UnknownEntry, Phase::References),
            }
        }
    }

    /// Every child of `bucket` that `select` accepts.
    fn children(&mut self, bucket: &Path, reason: Reason, select: impl Fn(&Path) -> bool) {
        for name in self.list(bucket) {
            let rel = bucket.join(name);
            if select(&rel) {
                self.consider(rel, reason, Phase::References);
            }
        }
    }

    /// Consider every entry of `family` below `rel` (a shard directory of its bucket), at the
    /// depth [`layout::entry_depth`] gives; a non-directory met on the way is one entry.
    fn entries_below(&mut self, rel: &Path, family: Family, reason: Reason) {
        let depth = rel.components().count();
        let comps: Vec<&OsStr> = rel.components().map(|c| c.as_os_str()).collect();
        let real_dir = fs::symlink_metadata(self.root.join(rel)).is_ok_and(|m| m.is_dir());
        if !real_dir || layout::entry_depth(Some(family), &comps, || false) <= depth {
            return self.consider(rel.to_path_buf(), reason, Phase::References);
        }
        for name in self.list(rel) {
            self.entries_below(&rel.join(name), family, reason);
        }
    }

    /// Real directories below `rel` (never through a link), depth-first, parents first.
    fn walk_dirs(&mut self, rel: &Path, out: &mut Vec<PathBuf>) {
        for name in self.list(rel) {
            let child = rel.join(name);
            if fs::symlink_metadata(self.root.join(&child)).is_ok_and(|m| m.is_dir()) {
                out.push(child.clone());
                self.walk_dirs(&child, out);
            }
        }
    }

    /// uv-distribution `prune`: in each directory with a `revision.http` or `revision.rev`,
    /// every sibling directory other than the named revision is stale.
    fn stale_revisions(&mut self, sdists: &Path) {
        let mut dirs = vec![sdists.to_path_buf()];
        self.walk_dirs(sdists, &mut dirs);
        for dir in dirs {
            if self.is_doomed(&dir) {
                continue;
            }
            for (file, kind) in [("revision.http", PointerKind::Http), ("revision.rev", PointerKind::Local)] {
                let path = self.root.join(&dir).join(file);
                // `is_file` follows links, as uv's does.
                if !path.is_file() {
                    continue;
                }
                let Some(id) = fs::read(&path).ok().and_then(|b| pointer::revision_id(kind, &b)) else {
                    continue;
                };
                for name in self.list(&dir) {
                    let rel = dir.join(&name);
                    let is_dir = fs::symlink_metadata(self.root.join(&rel)).is_ok_and(|m| m.is_dir());
                    if is_dir && name != OsStr::new(&id) && !self.doomed.contains(&rel) {
                        self.consider(rel, Reason::StaleRevision, Phase::References);
                    }
                }
            }
        }
    }

    /// `--ci`: in every directory holding `metadata.msgpack`, everything but that file, built
    /// `.whl` files, and nested build-settings shards with their own metadata.
    fn unpacked_built_wheels(&mut self, sdists: &Path) {
        let mut dirs = vec![sdists.to_path_buf()];
        self.walk_dirs(sdists, &mut dirs);
        for dir in dirs {
            if self.is_doomed(&dir) {
                continue;
            }
            if !self.root.join(&dir).join("metadata.msgpack").exists() {
                continue;
            }
            for name in self.list(&dir) {
                let rel = dir.join(&name);
                let path = self.root.join(&rel);
                if name == "metadata.msgpack" {
                    continue;
                }
                let is_dir = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
                if name != "src" && is_dir && path.join("metadata.msgpack").exists() {
                    continue;
                }
                if Path::new(&name).extension().is_some_and(|e| e.eq_ignore_ascii_case("whl")) {
                    continue;
                }
                self.consider(rel, Reason::CiBuiltWheel, Phase::References);
            }
        }
    }

    /// Canonical targets of every archive link that survives the earlier steps, following
    /// uv's `find_archive_references` filter. `archives` holds the canonical paths of the
    /// archive entries that are real directories (see [`Planner::link_target`]).
    fn archive_references(&mut self, buckets: &[PathBuf], archives: &HashSet<PathBuf>) -> References {
        let mut refs = References::default();
        // Links inside planned targets reference nothing after this run; beside running uv
        // they are still walked, for deferring their archives (`KeepReason::Deferred`).
        let mut stack: Vec<(PathBuf, bool)> = buckets.iter().map(|b| (b.clone(), false)).collect();
        let beside_uv = self.protect.is_beside_uv();
        while let Some((dir, in_doomed)) = stack.pop() {
            for (name, kind) in self.list_typed(&dir) {
                let rel = dir.join(&name);
                if skipped_by_reference_walk(&name) {
                    continue;
                }
                let doomed = in_doomed || self.doomed.contains(&rel);
                if doomed && !beside_uv {
                    continue;
                }
                let Some(kind) = kind else { continue };
                if kind.is_symlink() {
                    // A dangling link references nothing (uv skips it silently).
                    if let Some(target) = self.link_target(&rel, archives) {
                        if doomed {
                            refs.from_doomed.insert(target)
                        } else {
                            refs.live.insert(target)
                        };
                    }
                } else if kind.is_dir() {
                    stack.push((rel, doomed));
                }
            }
        }
        refs
    }

    /// Beside running uv only: the archives `environments-v2` links reach (uv does not count
    /// them as references; its prune removes the links first). A link this plan removes
    /// defers its archive; a link kept (young, in use) keeps it.
    fn environment_references(&mut self, archives: &HashSet<PathBuf>, refs: &mut References) {
        let Some(envs) = Family::Environments.current_name().map(PathBuf::from) else { return };
        for (digest, kind) in self.list_typed(&envs) {
            let digest = envs.join(digest);
            if !kind.is_some_and(|k| k.is_dir()) {
                continue;
            }
            for (name, kind) in self.list_typed(&digest) {
                let rel = digest.join(name);
                if !kind.is_some_and(|k| k.is_symlink()) {
                    continue;
                }
                if let Some(target) = self.link_target(&rel, archives) {
                    if self.is_doomed(&rel) {
                        refs.from_doomed.insert(target);
                    } else {
                        let why = self.kept_reason(&rel).unwrap_or(KeepReason::Young);
                        refs.kept_environments.entry(target).or_insert(why);
                    }
                }
            }
        }
    }

    /// Why the planner keeps `rel`: a protection covering it, or a judgement recorded for it
    /// or an ancestor while planning.
    fn kept_reason(&self, rel: &Path) -> Option<KeepReason> {
        if let Some((_, why)) = self.protect.covering(rel) {
            return Some(why.clone());
        }
        rel.ancestors().find_map(|a| self.plan.kept.get(a)).cloned()
    }

    /// `fs::canonicalize` of the link at `rel`, with one `readlink` instead of one per path
    /// component in the usual case. A link that uv wrote (`../../../archive-v0/<id>`, or an
    /// absolute path from uv < 0.11.17) resolves lexically to exactly its canonical path when
    /// its `..` steps all come first and the result is an archive entry that is a real
    /// directory: the cache root is canonical, the link's own directory was reached through
    /// real directories only, and every prefix of the result is then the root, the archive
    /// bucket or the entry. Anything else is resolved by the kernel.
    fn link_target(&self, rel: &Path, archives: &HashSet<PathBuf>) -> Option<PathBuf> {
        use std::path::Component;
        let path = self.root.join(rel);
        let target = fs::read_link(&path).ok()?;
        let mut lexical = if target.is_absolute() { PathBuf::new() } else { self.root.join(rel.parent()?) };
        let mut descended = false;
        let mut simple = true;
        for component in target.components() {
            match component {
                Component::RootDir => lexical.push("/"),
                Component::CurDir => {}
                Component::ParentDir if !descended => {
                    lexical.pop();
                }
                Component::Normal(name) => {
                    descended = true;
                    lexical.push(name);
                }
                Component::ParentDir | Component::Prefix(_) => {
                    simple = false;
                    break;
                }
            }
        }
        if simple && archives.contains(&lexical) {
            return Some(lexical);
        }
        fs::canonicalize(&path).ok()
    }

    /// Archives whose canonical path no surviving link resolves to.
    fn unreferenced_archives(&mut self, archive: &Path, reference_buckets: &[PathBuf]) {
        // The root is canonical and the bucket a real directory: an entry that is not a link
        // is its own canonical path; only links need resolving.
        let entries = self.list_typed(archive);
        let real: HashSet<PathBuf> = entries
            .iter()
            .filter(|(_, kind)| kind.is_some_and(|k| k.is_dir()))
            .map(|(name, _)| self.root.join(archive).join(name))
            .collect();
        let mut refs = self.archive_references(reference_buckets, &real);
        if self.protect.is_beside_uv() {
            self.environment_references(&real, &mut refs);
        }
        for (name, kind) in entries {
            let rel = archive.join(name);
            let path = self.root.join(&rel);
            // uv canonicalizes each entry (and aborts the whole prune on a dangling link, after
            // deleting most of the cache). A dangling link here references nothing: it goes.
            let canonical = match kind {
                Some(k) if !k.is_symlink() => Some(path),
                _ => fs::canonicalize(&path).ok(),
            };
            let referenced = |set: &HashSet<PathBuf>| canonical.as_ref().is_some_and(|c| set.contains(c));
            if referenced(&refs.live) {
                continue;
            }
            // uv would remove it with its environment link; the link stays, and so does it,
            // reported with its own protection (in use) or else its link's.
            if let Some(why) = canonical.as_ref().and_then(|c| refs.kept_environments.get(c)) {
                let why = self.kept_reason(&rel).unwrap_or_else(|| why.clone());
                self.plan.kept.insert(rel, why);
                continue;
            }
            if referenced(&refs.from_doomed) && self.protect.covering(&rel).is_none() {
                self.plan.kept.insert(rel, KeepReason::Deferred);
                continue;
            }
            self.consider(rel, Reason::UnreferencedArchive, Phase::Archives);
        }
    }

    /// `files-v0` objects with a link count of one, and shard directories left empty.
    ///
    /// uv counts links *after* it has removed the archives, so an object whose other links
    /// all lie in archives this plan removes is an orphan too: those links are counted here.
    fn orphan_files(&mut self, files: &Path) {
        if self.list(files).is_empty() {
            return;
        }
        let mut doomed_links: HashMap<(u64, u64), u64> = HashMap::new();
        let doomed: Vec<PathBuf> = self.plan.targets.iter().map(|t| t.rel.clone()).collect();
        for rel in doomed {
            count_hard_links(&self.root.join(rel), &mut doomed_links);
        }
        self.orphans_in(files, true, &doomed_links);
    }

    /// Returns true when everything in `dir` goes (so `dir` itself can go too).
    fn orphans_in(&mut self, dir: &Path, is_bucket: bool, doomed_links: &HashMap<(u64, u64), u64>) -> bool {
        let mut all = true;
        let mut files = Vec::new();
        let mut dirs = Vec::new();
        for name in self.list(dir) {
            let rel = dir.join(name);
            match fs::symlink_metadata(self.root.join(&rel)) {
                Ok(m) if m.is_file() && self.protect.covering(&rel).is_none() => {
                    let gone = doomed_links.get(&(m.dev(), m.ino())).copied().unwrap_or(0);
                    if m.nlink().saturating_sub(gone) <= 1 {
                        files.push(rel)
                    } else {
                        all = false;
                    }
                }
                Ok(m) if m.is_dir() => dirs.push(rel),
                _ => all = false,
            }
        }
        let mut empty_dirs = Vec::new();
        for sub in dirs {
            if self.orphans_in(&sub, false, doomed_links) {
                empty_dirs.push(sub);
            } else {
                all = false;
            }
        }
        if all && !is_bucket && self.protect.covering(dir).is_none() {
            // The whole shard goes: one target removes it with its contents, counted alike.
            return true;
        }
        for rel in empty_dirs.into_iter().chain(files) {
            self.consider(rel, Reason::OrphanFile, Phase::Files);
        }
        false
    }
}

/// The archives links reference, by canonical path.
#[derive(Default)]
struct References {
    /// From links that stay.
    live: HashSet<PathBuf>,
    /// Beside running uv only: from links inside this plan's targets.
    from_doomed: HashSet<PathBuf>,
    /// Beside running uv only: from `environments-v2` links the plan keeps, with why.
    kept_environments: HashMap<PathBuf, KeepReason>,
}

/// Count, per (device, inode), the hard links to multiply-linked files below `path`
/// (never following links).
fn count_hard_links(path: &Path, counts: &mut HashMap<(u64, u64), u64>) {
    let Ok(meta) = fs::symlink_metadata(path) else { return };
    if meta.is_file() && meta.nlink() > 1 {
        *counts.entry((meta.dev(), meta.ino())).or_default() += 1;
    } else if meta.is_dir() {
        for entry in fs::read_dir(path).into_iter().flatten().flatten() {
            count_hard_links(&entry.path(), counts);
        }
    }
}

/// uv's `find_archive_references` filter: `src`, `.lock`, `.gitignore`, and files ending in
/// `.lock`, `.whl`, `.http`, `.rev`, `.msgpack` are not walked.
fn skipped_by_reference_walk(name: &OsStr) -> bool {
    if name == "src" || name == ".lock" || name == ".gitignore" {
        return true;
    }
    Path::new(name).extension().is_some_and(|ext| {
        ["lock", "whl", "http", "rev", "msgpack"].iter().any(|e| ext.eq_ignore_ascii_case(e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn cache() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::write(root.join("CACHEDIR.TAG"), "Signature: 8a477f597d28d172789f06886806bc55").unwrap();
        for d in [
            "archive-v0/used",
            "archive-v0/env",
            "archive-v0/orphan",
            "wheels-v7/pypi/a",
            "environments-v2/h",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        symlink("../../../archive-v0/used", root.join("wheels-v7/pypi/a/1-py3-none-any")).unwrap();
        symlink("../../archive-v0/env", root.join("environments-v2/h/r")).unwrap();
        tmp
    }

    fn rels(plan: &Plan) -> Vec<String> {
        plan.targets.iter().map(|t| t.rel.display().to_string()).collect()
    }

    #[test]
    fn removes_envs_then_unreferenced_archives() {
        let tmp = cache();
        let root = fs::canonicalize(tmp.path()).unwrap();
        let p = plan(&root, Options::default(), &Protect::default());
        assert_eq!(rels(&p), ["environments-v2/h", "archive-v0/env", "archive-v0/orphan"]);
        assert_eq!(p.targets[0].phase, Phase::References);
        assert_eq!(p.targets[1].phase, Phase::Archives);
    }

    /// Beside running uv, an archive whose last link this plan removes waits for the next run.
    #[test]
    fn beside_uv_archives_unlinked_by_this_run_are_deferred() {
        let tmp = cache();
        let root = fs::canonicalize(tmp.path()).unwrap();
        let mut protect = Protect::default();
        protect.set_beside_uv(std::time::Duration::ZERO);
        let p = plan(&root, Options::default(), &protect);
        assert_eq!(rels(&p), ["environments-v2/h", "archive-v0/orphan"]);
        assert_eq!(p.kept.get(Path::new("archive-v0/env")), Some(&KeepReason::Deferred));
        // `--ci` unlinks the wheel too: its archive waits as well.
        let p = plan(&root, Options { ci: true }, &protect);
        assert_eq!(rels(&p), ["environments-v2/h", "wheels-v7/pypi/a", "archive-v0/orphan"]);
        assert_eq!(p.kept.get(Path::new("archive-v0/used")), Some(&KeepReason::Deferred));
        // The next run: nothing links to them any more, they go.
        fs::remove_dir_all(root.join("environments-v2/h")).unwrap();
        fs::remove_dir_all(root.join("wheels-v7/pypi/a")).unwrap();
        let p = plan(&root, Options::default(), &protect);
        assert_eq!(rels(&p), ["archive-v0/env", "archive-v0/orphan", "archive-v0/used"]);
    }

    /// Beside running uv, an older generation goes entry by entry, each judged as listed (an
    /// older uv sharing the cache may be writing into it), and the archives its links reach
    /// wait for the next run.
    #[test]
    fn beside_uv_older_buckets_go_entry_by_entry() {
        let tmp = cache();
        let root = fs::canonicalize(tmp.path()).unwrap();
        fs::create_dir_all(root.join("wheels-v5/pypi/old")).unwrap();
        fs::create_dir_all(root.join("wheels-v5/pypi/busy")).unwrap();
        symlink("../../../archive-v0/orphan", root.join("wheels-v5/pypi/old/1-py3-none-any")).unwrap();
        let busy = fs::File::create(root.join("wheels-v5/pypi/busy/1-py3-none-any.lock")).unwrap();
        rustix::fs::flock(&busy, rustix::fs::FlockOperation::LockExclusive).unwrap();
        // Alone, the bucket goes whole with the archive only it links to.
        let p = plan(&root, Options::default(), &Protect::default());
        assert_eq!(rels(&p), ["wheels-v5", "environments-v2/h", "archive-v0/env", "archive-v0/orphan"]);
        let mut protect = Protect::default();
        protect.set_beside_uv(std::time::Duration::ZERO);
        let p = plan(&root, Options::default(), &protect);
        assert_eq!(rels(&p), ["wheels-v5/pypi/old", "environments-v2/h"]);
        assert_eq!(p.kept.get(Path::new("wheels-v5/pypi/busy")), Some(&KeepReason::Locked));
        assert_eq!(p.kept.get(Path::new("archive-v0/orphan")), Some(&KeepReason::Deferred));
    }

    /// Beside running uv, an archive whose environment link stays is reported with the link's
    /// reason (uv would have removed both).
    #[test]
    fn beside_uv_an_archive_kept_by_its_environment_link_is_reported() {
        let tmp = cache();
        let root = fs::canonicalize(tmp.path()).unwrap();
        let mut protect = Protect::default();
        protect.set_beside_uv(std::time::Duration::ZERO);
        protect.add("environments-v2/h/r".into(), KeepReason::NewestTool);
        let p = plan(&root, Options::default(), &protect);
        assert_eq!(rels(&p), ["archive-v0/orphan"]);
        assert_eq!(p.kept.get(Path::new("archive-v0/env")), Some(&KeepReason::NewestTool));
    }

    #[test]
    fn protected_archive_splits_environment_bucket() {
        let tmp = cache();
        let root = fs::canonicalize(tmp.path()).unwrap();
        let mut protect = Protect::default();
        protect.add("archive-v0/env".into(), KeepReason::InUse);
        protect.add("environments-v2/h/r".into(), KeepReason::InUse);
        fs::write(root.join("environments-v2/h/other.lock"), "").unwrap();
        let p = plan(&root, Options::default(), &protect);
        assert_eq!(rels(&p), ["environments-v2/h/other.lock", "archive-v0/orphan"]);
        assert_eq!(p.kept.len(), 2);
    }

    #[test]
    fn ci_drops_wheels_and_their_archives() {
        let tmp = cache();
        let root = fs::canonicalize(tmp.path()).unwrap();
        let p = plan(&root, Options { ci: true }, &Protect::default());
        assert_eq!(
            rels(&p),
            ["environments-v2/h", "wheels-v7/pypi", "archive-v0/env", "archive-v0/orphan", "archive-v0/used"]
        );
    }

    #[test]
    fn newer_and_unknown_buckets_are_kept_older_removed() {
        let tmp = cache();
        let root = fs::canonicalize(tmp.path()).unwrap();
        for d in ["wheels-v99", "wheels-v3", "newthing-v0", ".tmpAbc", "Stuff"] {
            fs::create_dir(root.join(d)).unwrap();
        }
        // A newer uv's link keeps the archive it points to.
        symlink("../archive-v0/orphan", root.join("wheels-v99/x")).unwrap();
        let p = plan(&root, Options::default(), &Protect::default());
        assert_eq!(rels(&p), [".tmpAbc", "Stuff", "wheels-v3", "environments-v2/h", "archive-v0/env"]);
        assert!(p.kept.contains_key(Path::new("wheels-v99")));
        assert!(p.kept.contains_key(Path::new("newthing-v0")));
    }

    #[test]
    fn files_objects_linked_only_from_removed_archives_are_orphans() {
        let tmp = cache();
        let root = fs::canonicalize(tmp.path()).unwrap();
        fs::create_dir_all(root.join("files-v0/ab")).unwrap();
        fs::create_dir_all(root.join("files-v0/cd")).unwrap();
        fs::write(root.join("files-v0/ab/obj1"), "x").unwrap();
        fs::write(root.join("files-v0/cd/obj2"), "y").unwrap();
        // obj1 is linked only from an archive the plan removes; obj2 from a kept one.
        fs::hard_link(root.join("files-v0/ab/obj1"), root.join("archive-v0/orphan/f")).unwrap();
        fs::hard_link(root.join("files-v0/cd/obj2"), root.join("archive-v0/used/f")).unwrap();
        let p = plan(&root, Options::default(), &Protect::default());
        assert!(rels(&p).contains(&"files-v0/ab".to_string()), "{:?}", rels(&p));
        assert!(!rels(&p).iter().any(|r| r.starts_with("files-v0/cd")), "{:?}", rels(&p));
    }

    #[test]
    fn link_targets_resolve_exactly_like_canonicalize() {
        let tmp = cache();
        let root = fs::canonicalize(tmp.path()).unwrap();
        symlink("used", root.join("archive-v0/alias")).unwrap();
        symlink(root.join("archive-v0"), root.join("wheels-v7/arch")).unwrap();
        fs::create_dir_all(root.join("wheels-v7/pypi/b")).unwrap();
        let links = [
            ("rel", PathBuf::from("../../../archive-v0/env")),
            ("abs", root.join("archive-v0/orphan")),
            ("dotted", PathBuf::from(".././../../archive-v0/./used")),
            ("up-down-up", PathBuf::from("../b/../../../archive-v0/used")),
            ("through-a-link", PathBuf::from("../../arch/orphan")),
            ("to-a-linked-archive", PathBuf::from("../../../archive-v0/alias")),
            ("dangling", PathBuf::from("../../../archive-v0/nope")),
            ("inside", PathBuf::from("../../../archive-v0/used/x")),
            ("above-root", PathBuf::from("../../../../../../../../../..")),
        ];
        let real: HashSet<PathBuf> =
            ["env", "orphan", "used"].iter().map(|n| root.join("archive-v0").join(n)).collect();
        let protect = Protect::default();
        let planner = Planner::new(&root, &protect);
        for (name, target) in &links {
            let rel = Path::new("wheels-v7/pypi/b").join(name);
            symlink(target, root.join(&rel)).unwrap();
            let expected = fs::canonicalize(root.join(&rel)).ok();
            assert_eq!(planner.link_target(&rel, &real), expected, "{name}");
        }
    }

    #[test]
    fn reference_walk_filter_matches_uv() {
        for skipped in ["src", ".lock", ".gitignore", "a.lock", "x.WHL", "r.http", "p.rev", "m.msgpack"] {
            assert!(skipped_by_reference_walk(OsStr::new(skipped)), "{skipped}");
        }
        for walked in ["1.0-py3-none-any", "pypi", "lockfile"] {
            assert!(!skipped_by_reference_walk(OsStr::new(walked)), "{walked}");
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Builds a cache from a recipe: archives with files, links to some of them from
        /// `environments-v2` and `wheels-v7`, stray top-level entries, a stale bucket.
        fn build(root: &Path, archives: usize, env_links: &[usize], wheel_links: &[usize], junk: usize) {
            fs::write(root.join("CACHEDIR.TAG"), "Signature: 8a477f597d28d172789f06886806bc55").unwrap();
            for a in 0..archives {
                let dir = root.join(format!("archive-v0/a{a}/lib/pkg"));
                fs::create_dir_all(&dir).unwrap();
                fs::write(dir.join("m.py"), "x").unwrap();
            }
            for (i, a) in env_links.iter().enumerate() {
                let dir = root.join(format!("environments-v2/d{}", i % 2));
                fs::create_dir_all(&dir).unwrap();
                let _ =
                    symlink(format!("../../archive-v0/a{}", a % archives.max(1)), dir.join(format!("r{i}")));
            }
            for (i, a) in wheel_links.iter().enumerate() {
                let dir = root.join(format!("wheels-v7/pypi/p{i}"));
                fs::create_dir_all(&dir).unwrap();
                let _ = symlink(
                    format!("../../../archive-v0/a{}", a % archives.max(1)),
                    dir.join("1.0-py3-none-any"),
                );
            }
            for j in 0..junk {
                fs::create_dir_all(root.join(format!(".tmpjunk{j}/x"))).unwrap();
            }
            fs::create_dir_all(root.join("wheels-v5/pypi/old")).unwrap();
        }

        /// Every path in the tree (relative), links not followed.
        fn all_paths(root: &Path) -> Vec<PathBuf> {
            let mut out = Vec::new();
            let mut stack = vec![PathBuf::new()];
            while let Some(rel) = stack.pop() {
                for e in fs::read_dir(root.join(&rel)).unwrap().flatten() {
                    let child = rel.join(e.file_name());
                    if e.file_type().unwrap().is_dir() {
                        stack.push(child.clone());
                    }
                    out.push(child);
                }
            }
            out.sort();
            out
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

            #[test]
            fn nothing_with_evidence_is_planned_for_removal(
                archives in 1usize..6,
                env_links in proptest::collection::vec(0usize..6, 0..4),
                wheel_links in proptest::collection::vec(0usize..6, 0..4),
                junk in 0usize..3,
                picks in proptest::collection::vec(any::<prop::sample::Index>(), 0..5),
                ci in any::<bool>(),
            ) {
                let tmp = tempfile::tempdir().unwrap();
                let root = fs::canonicalize(tmp.path()).unwrap();
                build(&root, archives, &env_links, &wheel_links, junk);
                let paths = all_paths(&root);
                // Evidence: random paths anywhere in the cache, mapped to their entries the
                // way a scan's hits are, then closed over like a real run.
                let view = crate::usage::CacheView::new(&root, &root, None);
                let direct: Vec<PathBuf> = picks
                    .iter()
                    .filter_map(|i| view.entry_of(&paths[i.index(paths.len())]))
                    .collect();
                let closure = crate::usage::closure(&view, direct.clone());
                let mut protect = Protect::default();
                for e in direct.iter().chain(closure.keys()) {
                    protect.add(e.clone(), KeepReason::InUse);
                }
                let p = plan(&root, Options { ci }, &protect);
                for t in &p.targets {
                    for e in &direct {
                        prop_assert!(!e.starts_with(&t.rel) && !t.rel.starts_with(e),
                            "target {:?} overlaps in-use entry {:?}", t.rel, e);
                    }
                }
                // And what the plan leaves is consistent: every kept environment link of an
                // in-use archive still resolves after removal.
                let remover = crate::remove::Remover::new(&root, false).unwrap();
                for phase in [Phase::References, Phase::Archives, Phase::Files] {
                    for t in p.targets.iter().filter(|t| t.phase == phase) {
                        prop_assert!(remover.remove(&t.rel).is_ok());
                    }
                }
                remover.finish();
                for e in &direct {
                    prop_assert!(root.join(e).symlink_metadata().is_ok(), "{:?} was removed", e);
                }
                for (link, _) in closure.iter().filter(|(l, _)| l.starts_with("environments-v2")) {
                    let path = root.join(link);
                    if path.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
                        prop_assert!(path.exists(), "kept link {:?} dangles", link);
                    }
                }
            }
        }
    }

    #[test]
    fn protect_queries() {
        let mut p = Protect::default();
        p.add("archive-v0/a".into(), KeepReason::InUse);
        assert!(p.has_below(Path::new("archive-v0")));
        assert!(!p.has_below(Path::new("archive-v0/a")));
        assert!(!p.has_below(Path::new("archive-v")));
        assert!(!p.has_below(Path::new("archive-v0/ab")));
        assert!(p.covering(Path::new("archive-v0/a/bin/python")).is_some());
        assert!(p.covering(Path::new("archive-v0/ab")).is_none());
    }
}
