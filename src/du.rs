//! `safe-prune du`: where the cache's space goes, per bucket, per package and per entry, and
//! what each kind of prune would free. Read-only.
//!
//! One parallel walk measures everything: the top of the tree is listed down to the entries
//! (`archive-v0/<id>`, `wheels-v7/pypi/<name>`, ..., and `simple-v*/…/<name>.rkyv`), then rayon
//! walks the entries, never following a link. Each directory's own size and that of its
//! singly-linked files is kept per directory; every multiply-linked file is kept as one link
//! record. Hard links are counted once (by device and inode) and credited to the first entry
//! holding one; a file with more links than the cache holds is linked from outside the cache
//! (an environment installed with uv's default hard-link mode), which is reported, never acted
//! on.
//!
//! What a prune would free is the planner's own answer: `plan::plan` in dry-run mode (plain,
//! `--ci`, and with `--keep-tools`' protections), keeping every entry in use, each target
//! measured from the walk's data rather than walked again. Two sizes are given: `bytes`
//! (apparent, `st_size`, each inode once) and `disk` (allocated, `st_blocks * 512`; for a
//! multiply-linked file only when the plan removes every one of its links, since only then
//! does its space come back).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use crate::layout::{self, Family, TopLevel};
use crate::names::{self, Label};
use crate::plan::{self, KeepReason, Protect, Target};
use crate::prune::{self, Cache, Fatal};
use crate::report::{escape, human_bytes, JsonPath};
use crate::retention;
use crate::usage::ProcessSummary;

/// No index (a top-level unit has no parent directory, a container belongs to no unit).
const NONE: u32 = u32::MAX;

/// Apparent and allocated bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Size {
    pub bytes: u64,
    pub disk: u64,
}

impl Size {
    fn of(meta: &fs::Metadata) -> Size {
        Size { bytes: meta.len(), disk: meta.blocks().saturating_mul(512) }
    }
}

impl std::ops::AddAssign for Size {
    fn add_assign(&mut self, o: Size) {
        self.bytes += o.bytes;
        self.disk += o.disk;
    }
}

/// Sizes and counts of a part of the tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Agg {
    size: Size,
    /// Non-directories (every link of a multiply-linked file counts).
    files: u64,
    dirs: u64,
}

impl std::ops::AddAssign for Agg {
    fn add_assign(&mut self, o: Agg) {
        self.size += o.size;
        self.files += o.files;
        self.dirs += o.dirs;
    }
}

/// A directory: a container above the entries, or a directory inside one entry.
struct Dir {
    parent: u32,
    unit: u32,
    bucket: u32,
    /// The directory itself and its singly-linked non-directories.
    own: Agg,
}

/// One link of a multiply-linked file.
#[derive(Debug, Clone, Copy)]
struct Link {
    dev: u64,
    ino: u64,
    size: Size,
    nlink: u64,
    /// The directory holding it (`NONE` when the file is a unit of its own).
    dir: u32,
    unit: u32,
}

/// One entry of the cache (or one top-level name that is not a bucket).
struct Unit {
    rel: PathBuf,
    bucket: u32,
    /// The container directory holding it (`NONE` at the top level).
    parent: u32,
    /// Its directory (`NONE` for a file).
    root_dir: u32,
    /// A singly-linked file unit's own size.
    own_file: Agg,
    /// Everything in it, each inode once (what `du` of this entry alone says).
    total: Agg,
    /// Its share of the cache: as `total`, but a hard-linked file counts only in the first
    /// entry that holds a link to it, so shares add up to the cache's total.
    share: Size,
    max_links: u64,
    linked_elsewhere: bool,
    label: Label,
}

/// What the walk found.
pub struct Walk {
    buckets: Vec<PathBuf>,
    dirs: Vec<Dir>,
    dir_index: HashMap<PathBuf, u32>,
    units: Vec<Unit>,
    unit_index: HashMap<PathBuf, u32>,
    /// Sorted by (dev, ino).
    links: Vec<Link>,
    errors: Vec<(PathBuf, String)>,
}

/// A unit to walk, found while listing the top of the tree.
struct Seed {
    rel: PathBuf,
    bucket: u32,
    parent: u32,
    meta: fs::Metadata,
}

/// One unit's walk, with local directory indices.
struct UnitScan {
    dirs: Vec<(PathBuf, u32, Agg)>,
    links: Vec<Link>,
    own_file: Agg,
    max_links: u64,
    label: Label,
    errors: Vec<(PathBuf, String)>,
}

/// How deep below the root the units of a top-level name lie (`comps` from the bucket on).
fn unit_depth(root: &Path, comps: &[&std::ffi::OsStr]) -> usize {
    let family = match comps.first().map(|c| layout::classify(c)) {
        Some(TopLevel::Current(f) | TopLevel::Older(f, _) | TopLevel::Newer(f, _)) => Some(f),
        _ => None,
    };
    match family {
        // One unit per `<name>.rkyv`, so index responses are counted per package.
        Some(Family::Simple) => {
            if comps.get(1).is_some_and(|c| *c == "pypi") {
                3
            } else {
                4
            }
        }
        f => layout::entry_depth(f, comps, || {
            comps.len() >= 2
                && fs::symlink_metadata(root.join(comps[0]).join(comps[1]).join("pyvenv.cfg"))
                    .is_ok_and(|m| m.is_file())
        }),
    }
}

impl Walk {
    /// Walk the cache at `root` (canonical) once.
    pub fn take(root: &Path) -> Walk {
        let mut walk = Walk {
            buckets: Vec::new(),
            dirs: Vec::new(),
            dir_index: HashMap::new(),
            units: Vec::new(),
            unit_index: HashMap::new(),
            links: Vec::new(),
            errors: Vec::new(),
        };
        // The top of the tree, down to the units, sequentially (a few listings).
        let mut seeds = Vec::new();
        walk.enumerate(root, PathBuf::new(), NONE, NONE, &mut seeds);
        // The units, in parallel.
        let scans: Vec<UnitScan> = seeds.par_iter().map(|seed| scan_unit(root, seed)).collect();
        for (seed, scan) in seeds.into_iter().zip(scans) {
            let u = walk.units.len() as u32;
            let base = walk.dirs.len() as u32;
            let mut total = scan.own_file;
            for (rel, parent, own) in scan.dirs {
                let parent = if parent == NONE { seed.parent } else { base + parent };
                total += own;
                walk.dir_index.insert(rel, walk.dirs.len() as u32);
                walk.dirs.push(Dir { parent, unit: u, bucket: seed.bucket, own });
            }
            let root_dir = if walk.dirs.len() as u32 > base { base } else { NONE };
            walk.links.extend(scan.links.into_iter().map(|mut l| {
                l.dir = if l.dir == NONE { NONE } else { base + l.dir };
                l.unit = u;
                l
            }));
            walk.errors.extend(scan.errors);
            walk.unit_index.insert(seed.rel.clone(), u);
            walk.units.push(Unit {
                rel: seed.rel,
                bucket: seed.bucket,
                parent: seed.parent,
                root_dir,
                own_file: scan.own_file,
                total,
                share: total.size,
                max_links: scan.max_links,
                linked_elsewhere: false,
                label: scan.label,
            });
        }
        // Hard links: each inode once per entry, and once in the shares (in the first entry).
        walk.links.par_sort_unstable_by_key(|l| (l.dev, l.ino, l.unit));
        for group in walk.links.chunk_by(|a, b| (a.dev, a.ino) == (b.dev, b.ino)) {
            let first = group[0];
            let elsewhere = nlink_of(group) > group.len() as u64;
            walk.units[first.unit as usize].share += first.size;
            for (i, l) in group.iter().enumerate() {
                let unit = &mut walk.units[l.unit as usize];
                if i == 0 || group[i - 1].unit != l.unit {
                    unit.total.size += first.size;
                }
                unit.linked_elsewhere |= elsewhere;
            }
        }
        walk
    }

    /// Move each hard-linked inode's share to an entry in use when one holds it: an
    /// environment in use installed by hard links shares its files with a wheel archive,
    /// and "in use" must count them whichever of the two sorts first.
    fn credit_in_use(&mut self, in_use: &[bool]) {
        for group in self.links.chunk_by(|a, b| (a.dev, a.ino) == (b.dev, b.ino)) {
            let first = group[0];
            if in_use[first.unit as usize] {
                continue;
            }
            let Some(used) = group.iter().find(|l| in_use[l.unit as usize]) else { continue };
            let from = &mut self.units[first.unit as usize].share;
            from.bytes = from.bytes.saturating_sub(first.size.bytes);
            from.disk = from.disk.saturating_sub(first.size.disk);
            self.units[used.unit as usize].share += first.size;
        }
    }

    /// List `rel` (a container, or the root), adding containers below it and unit seeds.
    fn enumerate(&mut self, root: &Path, rel: PathBuf, parent: u32, bucket: u32, seeds: &mut Vec<Seed>) {
        let abs = root.join(&rel);
        let entries = match fs::read_dir(&abs) {
            Ok(entries) => entries,
            Err(e) => {
                self.errors.push((rel, e.to_string()));
                return;
            }
        };
        let mut children: Vec<(std::ffi::OsString, fs::Metadata)> = Vec::new();
        for entry in entries {
            match entry.and_then(|e| Ok((e.file_name(), e.metadata()?))) {
                Ok(child) => children.push(child),
                Err(e) => self.errors.push((rel.clone(), e.to_string())),
            }
        }
        children.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, meta) in children {
            let child = rel.join(&name);
            let bucket = if parent == NONE && rel.as_os_str().is_empty() {
                self.buckets.push(PathBuf::from(&name));
                (self.buckets.len() - 1) as u32
            } else {
                bucket
            };
            let comps: Vec<&std::ffi::OsStr> = child.iter().collect();
            if meta.is_dir() && unit_depth(root, &comps) > comps.len() {
                let id = self.dirs.len() as u32;
                let own = Agg { size: Size::of(&meta), files: 0, dirs: 1 };
                self.dirs.push(Dir { parent, unit: NONE, bucket, own });
                self.dir_index.insert(child.clone(), id);
                self.enumerate(root, child, id, bucket, seeds);
            } else {
                seeds.push(Seed { rel: child, bucket, parent, meta });
            }
        }
    }

    /// The cache's totals: everything below the root, each inode once.
    fn total(&self) -> Agg {
        let mut total = Agg::default();
        for d in self.dirs.iter().filter(|d| d.unit == NONE) {
            total += d.own;
        }
        for u in &self.units {
            total += Agg { size: u.share, ..u.total };
        }
        total
    }

    /// What removing `targets` frees: the space that comes back (a hard-linked file only when
    /// every one of its links goes), per unit, plus the containers' own directories per bucket.
    fn evaluate(&self, root: &Path, targets: &[Target]) -> Freed {
        let mut dir_doomed = vec![false; self.dirs.len()];
        let mut unit_doomed = vec![false; self.units.len()];
        let n = self.units.len();
        let mut freed = Freed {
            entry: vec![Size::default(); n],
            share: vec![Size::default(); n],
            buckets: BTreeMap::new(),
        };
        let mut extra_links: HashMap<(u64, u64), (u64, u32)> = HashMap::new();
        for t in targets {
            if let Some(&u) = self.unit_index.get(&t.rel) {
                unit_doomed[u as usize] = true;
                if self.units[u as usize].root_dir != NONE {
                    dir_doomed[self.units[u as usize].root_dir as usize] = true;
                }
            } else if let Some(&d) = self.dir_index.get(&t.rel) {
                dir_doomed[d as usize] = true;
            } else {
                // A file inside an entry (an orphan object, a pointer): one `lstat`, no walk.
                let Some(&d) = t.rel.parent().and_then(|p| self.dir_index.get(p)) else { continue };
                let unit = self.dirs[d as usize].unit;
                let Ok(meta) = fs::symlink_metadata(root.join(&t.rel)) else { continue };
                if unit == NONE || meta.is_dir() {
                    continue;
                }
                if meta.nlink() > 1 {
                    extra_links.entry((meta.dev(), meta.ino())).or_insert((0, unit)).0 += 1;
                } else {
                    freed.add(unit, Size::of(&meta));
                }
            }
        }
        // Parents come before their children.
        for d in 0..self.dirs.len() {
            let parent = self.dirs[d].parent;
            if parent != NONE && dir_doomed[parent as usize] {
                dir_doomed[d] = true;
            }
            if dir_doomed[d] {
                let dir = &self.dirs[d];
                if dir.unit == NONE {
                    *freed.buckets.entry(dir.bucket).or_default() += dir.own.size;
                } else {
                    freed.add(dir.unit, dir.own.size);
                }
            }
        }
        for (u, unit) in self.units.iter().enumerate() {
            if unit.root_dir == NONE {
                if unit.parent != NONE && dir_doomed[unit.parent as usize] {
                    unit_doomed[u] = true;
                }
                if unit_doomed[u] {
                    freed.add(u as u32, unit.own_file.size);
                }
            }
        }
        for group in self.links.chunk_by(|a, b| (a.dev, a.ino) == (b.dev, b.ino)) {
            let doomed_link = |l: &Link| {
                if l.dir == NONE {
                    unit_doomed[l.unit as usize]
                } else {
                    dir_doomed[l.dir as usize]
                }
            };
            let extra = extra_links.get(&(group[0].dev, group[0].ino)).copied();
            let count = group.iter().filter(|l| doomed_link(l)).count() as u64 + extra.map_or(0, |e| e.0);
            if count < nlink_of(group) {
                continue;
            }
            let size = group[0].size;
            freed.share[group[0].unit as usize] += size;
            for (i, l) in group.iter().enumerate() {
                if i == 0 || group[i - 1].unit != l.unit {
                    freed.entry[l.unit as usize] += size;
                }
            }
        }
        freed
    }
}

/// The link count of a hard-linked file (the highest seen, should it change during the walk).
fn nlink_of(group: &[Link]) -> u64 {
    group.iter().map(|l| l.nlink).max().unwrap_or(1)
}

/// What one plan frees.
struct Freed {
    /// Per entry, each inode once in each entry (compare with `Unit::total`).
    entry: Vec<Size>,
    /// Per entry, each inode once in all (compare with `Unit::share`; these add up).
    share: Vec<Size>,
    /// Container directories themselves, per bucket.
    buckets: BTreeMap<u32, Size>,
}

impl Freed {
    fn add(&mut self, unit: u32, size: Size) {
        self.entry[unit as usize] += size;
        self.share[unit as usize] += size;
    }

    fn total(&self) -> Size {
        let mut s = Size::default();
        for x in self.share.iter().chain(self.buckets.values()) {
            s += *x;
        }
        s
    }
}

/// Walk one unit (a directory tree, or a single file), never following links.
fn scan_unit(root: &Path, seed: &Seed) -> UnitScan {
    let mut scan = UnitScan {
        dirs: Vec::new(),
        links: Vec::new(),
        own_file: Agg::default(),
        max_links: 0,
        label: names::label(root, &seed.rel, names::Detail::Full),
        errors: Vec::new(),
    };
    if !seed.meta.is_dir() {
        let nlink = seed.meta.nlink();
        scan.max_links = nlink;
        if nlink > 1 {
            scan.own_file.files = 1;
            scan.links.push(link(&seed.meta, NONE));
        } else {
            scan.own_file = Agg { size: Size::of(&seed.meta), files: 1, dirs: 0 };
        }
        return scan;
    }
    scan.dirs.push((seed.rel.clone(), NONE, Agg { size: Size::of(&seed.meta), files: 0, dirs: 1 }));
    let mut stack = vec![0u32];
    while let Some(i) = stack.pop() {
        let rel = scan.dirs[i as usize].0.clone();
        let entries = match fs::read_dir(root.join(&rel)) {
            Ok(entries) => entries,
            Err(e) => {
                scan.errors.push((rel, e.to_string()));
                continue;
            }
        };
        for entry in entries {
            let (name, meta) = match entry.and_then(|e| Ok((e.file_name(), e.metadata()?))) {
                Ok(x) => x,
                Err(e) => {
                    scan.errors.push((rel.clone(), e.to_string()));
                    continue;
                }
            };
            if meta.is_dir() {
                scan.dirs.push((rel.join(name), i, Agg { size: Size::of(&meta), files: 0, dirs: 1 }));
                stack.push((scan.dirs.len() - 1) as u32);
                continue;
            }
            let nlink = meta.nlink();
            scan.max_links = scan.max_links.max(nlink);
            let own = &mut scan.dirs[i as usize].2;
            own.files += 1;
            if nlink > 1 {
                scan.links.push(link(&meta, i));
            } else {
                own.size += Size::of(&meta);
            }
        }
    }
    scan
}

fn link(meta: &fs::Metadata, dir: u32) -> Link {
    Link { dev: meta.dev(), ino: meta.ino(), size: Size::of(meta), nlink: meta.nlink(), dir, unit: NONE }
}

// ---------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------

/// One row: a bucket or a package.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub name: String,
    pub bytes: u64,
    pub disk: u64,
    pub files: u64,
    pub entries: u64,
    pub in_use: Size,
    pub prune: Size,
    pub keep_tools: Size,
    pub ci: Size,
    /// Entries with a file hard-linked outside the cache.
    pub linked_elsewhere: u64,
}

impl Row {
    fn new(name: String) -> Row {
        Row {
            name,
            bytes: 0,
            disk: 0,
            files: 0,
            entries: 0,
            in_use: Size::default(),
            prune: Size::default(),
            keep_tools: Size::default(),
            ci: Size::default(),
            linked_elsewhere: 0,
        }
    }
}

/// One entry, for `-v` and JSON.
#[derive(Debug, Clone, Serialize)]
pub struct EntryRow {
    pub path: JsonPath,
    #[serde(flatten)]
    pub label: Label,
    pub bytes: u64,
    pub disk: u64,
    pub files: u64,
    /// The highest link count of its files.
    pub links: u64,
    pub linked_elsewhere: bool,
    pub in_use: bool,
    pub prune: Size,
    pub keep_tools: Size,
    pub ci: Size,
}

/// Totals of the whole cache.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Totals {
    pub bytes: u64,
    pub disk: u64,
    pub files: u64,
    pub dirs: u64,
    pub entries: u64,
}

/// Everything `du` reports.
#[derive(Debug, Clone, Serialize)]
pub struct DuReport {
    pub cache_dir: JsonPath,
    /// `shared` (held uv's lock shared), `busy` (a prune or clean holds it: read anyway),
    /// `absent`, `unsupported`.
    pub lock: &'static str,
    pub total: Totals,
    pub in_use: Size,
    pub prune: Size,
    pub keep_tools: Size,
    pub ci: Size,
    pub buckets: Vec<Row>,
    pub packages: Vec<Row>,
    /// Entries that belong to no package (metadata, temporary builds, unnamed archives).
    pub unattributed: Row,
    pub entries: Vec<EntryRow>,
    pub processes: ProcessSummary,
    pub errors: Vec<crate::report::ErrorEntry>,
    /// How long the walk and the plans took, in milliseconds.
    pub elapsed_ms: u64,
}

/// uv's cache lock, shared and without waiting: held while we read when free.
fn shared_lock(root: &Path) -> (Option<fs::File>, &'static str) {
    use std::os::unix::fs::OpenOptionsExt;
    let file = match fs::OpenOptions::new().read(true).custom_flags(libc::O_CLOEXEC).open(root.join(".lock"))
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (None, "absent"),
        Err(_) => return (None, "unsupported"),
    };
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared) {
        Ok(()) => (Some(file), "shared"),
        Err(rustix::io::Errno::WOULDBLOCK) => (None, "busy"),
        Err(_) => (None, "unsupported"),
    }
}

/// Measure the cache: one walk, the process scan, and three dry-run plans.
pub fn measure(cache: &Cache, proc_root: &Path, top: usize) -> Result<DuReport, Fatal> {
    let start = std::time::Instant::now();
    let root = cache.canonical.as_path();
    let (_lock, lock) = shared_lock(root);
    let usage = prune::scan(cache, proc_root)?;
    let mut protect = Protect::default();
    for entry in usage.all_entries() {
        protect.add(entry.clone(), KeepReason::InUse);
    }
    let keep_tools = retention::Retention { keep_tools: Some(1), ..Default::default() };
    let ((walk, plain), (ci, tools)) = rayon::join(
        || rayon::join(|| Walk::take(root), || plan::plan(root, plan::Options { ci: false }, &protect)),
        || {
            rayon::join(
                || plan::plan(root, plan::Options { ci: true }, &protect),
                || {
                    let mut protect = protect.clone();
                    retention::protect(root, &cache.absolute, proc_root, &keep_tools, &mut protect);
                    plan::plan(root, plan::Options { ci: false }, &protect)
                },
            )
        },
    );
    let [plain, ci, tools] = [&plain, &ci, &tools].map(|p| walk.evaluate(root, &p.targets));
    let mut walk = walk;

    // Units in use: an in-use entry, inside one, or containing one.
    let in_use_paths: Vec<&PathBuf> = usage.all_entries().collect();
    let in_use: Vec<bool> = walk
        .units
        .iter()
        .map(|u| in_use_paths.iter().any(|p| u.rel.starts_with(p) || p.starts_with(&u.rel)))
        .collect();
    walk.credit_in_use(&in_use);

    let total = walk.total();
    let mut buckets: Vec<Row> = walk.buckets.iter().map(|b| Row::new(escape(b))).collect();
    for d in walk.dirs.iter().filter(|d| d.unit == NONE) {
        let row = &mut buckets[d.bucket as usize];
        row.bytes += d.own.size.bytes;
        row.disk += d.own.size.disk;
        row.files += d.own.files;
    }
    for (freed, pick) in [(&plain, 0), (&tools, 1), (&ci, 2)] {
        for (b, size) in &freed.buckets {
            *plan_slot(&mut buckets[*b as usize], pick) += *size;
        }
    }
    let mut packages: BTreeMap<String, Row> = BTreeMap::new();
    let mut unattributed = Row::new("(no package)".into());
    let mut entries = Vec::with_capacity(walk.units.len());
    for (u, unit) in walk.units.iter().enumerate() {
        let key = unit.label.packages.join(", ");
        let add = |row: &mut Row| {
            row.bytes += unit.share.bytes;
            row.disk += unit.share.disk;
            row.files += unit.total.files;
            row.entries += 1;
            if in_use[u] {
                row.in_use += unit.share;
            }
            row.prune += plain.share[u];
            row.keep_tools += tools.share[u];
            row.ci += ci.share[u];
            row.linked_elsewhere += u64::from(unit.linked_elsewhere);
        };
        add(&mut buckets[unit.bucket as usize]);
        if key.is_empty() {
            add(&mut unattributed);
        } else {
            add(packages.entry(key.clone()).or_insert_with(|| Row::new(key)));
        }
        entries.push(EntryRow {
            path: JsonPath(unit.rel.clone()),
            label: unit.label.clone(),
            bytes: unit.total.size.bytes,
            disk: unit.total.size.disk,
            files: unit.total.files,
            links: unit.max_links,
            linked_elsewhere: unit.linked_elsewhere,
            in_use: in_use[u],
            prune: plain.entry[u],
            keep_tools: tools.entry[u],
            ci: ci.entry[u],
        });
    }
    let largest =
        |a: &Row, b: &Row| b.disk.cmp(&a.disk).then(b.bytes.cmp(&a.bytes)).then(a.name.cmp(&b.name));
    buckets.sort_by(largest);
    let mut packages: Vec<Row> = packages.into_values().collect();
    packages.sort_by(largest);
    entries.sort_by(|a, b| b.disk.cmp(&a.disk).then(b.bytes.cmp(&a.bytes)).then(a.path.cmp(&b.path)));
    if top > 0 {
        packages.truncate(top);
        entries.truncate(top);
    }
    let in_use_total =
        walk.units.iter().zip(&in_use).filter(|(_, used)| **used).fold(Size::default(), |mut s, (u, _)| {
            s += u.share;
            s
        });
    let errors = walk
        .errors
        .iter()
        .map(|(rel, message)| crate::report::ErrorEntry {
            path: Some(JsonPath(rel.clone())),
            message: message.clone(),
        })
        .collect();
    Ok(DuReport {
        cache_dir: JsonPath(cache.canonical.clone()),
        lock,
        total: Totals {
            bytes: total.size.bytes,
            disk: total.size.disk,
            files: total.files,
            dirs: total.dirs,
            entries: walk.units.len() as u64,
        },
        in_use: in_use_total,
        prune: plain.total(),
        keep_tools: tools.total(),
        ci: ci.total(),
        buckets,
        packages,
        unattributed,
        entries,
        processes: usage.summary,
        errors,
        elapsed_ms: start.elapsed().as_millis() as u64,
    })
}

fn plan_slot(row: &mut Row, pick: usize) -> &mut Size {
    match pick {
        0 => &mut row.prune,
        1 => &mut row.keep_tools,
        _ => &mut row.ci,
    }
}

/// The human tables (stdout). `verbose` adds the largest entries.
pub fn human(report: &DuReport, verbose: u8) -> String {
    let mut out = String::new();
    let t = &report.total;
    let _ = writeln!(
        out,
        "Cache at {}: {} on disk ({} apparent), {} files in {} entries",
        escape(&report.cache_dir.0),
        human_bytes(t.disk),
        human_bytes(t.bytes),
        t.files,
        t.entries
    );
    let _ = writeln!(
        out,
        "In use now: {}. A prune would free {}; with --keep-tools {}; with --ci {} (on disk).",
        human_bytes(report.in_use.disk),
        human_bytes(report.prune.disk),
        human_bytes(report.keep_tools.disk),
        human_bytes(report.ci.disk)
    );
    if report.lock == "busy" {
        let _ = writeln!(out, "warning: a prune or clean holds uv's cache lock; the cache may be changing");
    }
    let header = |first: &str| {
        format!(
            "{first:<40} {:>10} {:>10} {:>8} {:>10} {:>10} {:>10} {:>10} {:>9}",
            "ON DISK", "APPARENT", "FILES", "IN USE", "PRUNE", "KEEP-TOOLS", "CI", "ELSEWHERE"
        )
    };
    let row_line = |r: &Row| {
        format!(
            "{:<40} {:>10} {:>10} {:>8} {:>10} {:>10} {:>10} {:>10} {:>9}",
            clip(&r.name, 40),
            human_bytes(r.disk),
            human_bytes(r.bytes),
            r.files,
            human_bytes(r.in_use.disk),
            human_bytes(r.prune.disk),
            human_bytes(r.keep_tools.disk),
            human_bytes(r.ci.disk),
            format!("{}/{}", r.linked_elsewhere, r.entries)
        )
    };
    let _ = writeln!(out, "\n{}", header("BUCKET"));
    for r in &report.buckets {
        let _ = writeln!(out, "{}", row_line(r));
    }
    let _ = writeln!(out, "\n{}", header("PACKAGE"));
    for r in &report.packages {
        let _ = writeln!(out, "{}", row_line(r));
    }
    if report.unattributed.entries > 0 {
        let _ = writeln!(out, "{}", row_line(&report.unattributed));
    }
    if verbose > 0 {
        let _ = writeln!(
            out,
            "\n{:<40} {:>10} {:>6} {:>9} {:>6} {:>5} {:>10} {:>5}  NAME",
            "ENTRY", "ON DISK", "LINKS", "ELSEWHERE", "IN USE", "PRUNE", "KEEP-TOOLS", "CI"
        );
        let fate = |freed: &Size, e: &EntryRow| {
            if freed.bytes == 0 {
                "-"
            } else if freed.bytes >= e.bytes {
                "yes"
            } else {
                "part"
            }
        };
        for e in &report.entries {
            let _ = writeln!(
                out,
                "{:<40} {:>10} {:>6} {:>9} {:>6} {:>5} {:>10} {:>5}  {}",
                clip(&escape(&e.path.0), 40),
                human_bytes(e.disk),
                e.links,
                if e.linked_elsewhere { "yes" } else { "no" },
                if e.in_use { "yes" } else { "-" },
                fate(&e.prune, e),
                fate(&e.keep_tools, e),
                fate(&e.ci, e),
                e.label.describe()
            );
        }
    }
    let _ = writeln!(
        out,
        "\nPRUNE, KEEP-TOOLS, CI: what `safe-prune`, `--keep-tools` and `--ci` would free now (entries in use kept).\n\
         ELSEWHERE: entries with files hard-linked outside the cache (installed in an environment) / all entries.\n\
         Hard-linked files are counted once. ({} ms)",
        report.elapsed_ms
    );
    out
}

/// At most `width` characters (the end kept: ids and versions are at the end).
fn clip(text: &str, width: usize) -> String {
    let n = text.chars().count();
    if n <= width {
        text.to_string()
    } else {
        let tail: String = text.chars().skip(n - (width - 1)).collect();
        format!("…{tail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn write(path: &Path, len: usize) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, vec![b'x'; len]).unwrap();
    }

    /// Everything below `root`, each inode once: (bytes, disk, files, dirs).
    fn independent(root: &Path) -> (u64, u64, u64, u64) {
        let mut seen = std::collections::HashSet::new();
        let (mut bytes, mut disk, mut files, mut dirs) = (0, 0, 0, 0);
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in fs::read_dir(dir).unwrap().flatten() {
                let m = fs::symlink_metadata(e.path()).unwrap();
                if m.is_dir() {
                    dirs += 1;
                    stack.push(e.path());
                } else {
                    files += 1;
                    if m.nlink() > 1 && !seen.insert((m.dev(), m.ino())) {
                        continue;
                    }
                }
                bytes += m.len();
                disk += m.blocks() * 512;
            }
        }
        (bytes, disk, files, dirs)
    }

    #[test]
    fn walk_totals_and_plans() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("cache")).unwrap();
        let root = fs::canonicalize(tmp.path().join("cache")).unwrap();
        write(&root.join("CACHEDIR.TAG"), 43);
        write(&root.join("archive-v0/a/x.py"), 5000);
        write(&root.join("archive-v0/a/sub/y.py"), 100);
        write(&root.join("archive-v0/b/z.py"), 7000);
        write(&root.join("files-v0/ab/obj"), 9000);
        fs::hard_link(root.join("files-v0/ab/obj"), root.join("archive-v0/a/obj")).unwrap();
        // A link from outside the cache.
        fs::hard_link(root.join("archive-v0/b/z.py"), tmp.path().join("outside")).unwrap();
        write(&root.join("simple-v27/pypi/tinylib.rkyv"), 300);
        fs::create_dir_all(root.join("wheels-v7/pypi/t")).unwrap();
        symlink("../../../archive-v0/a", root.join("wheels-v7/pypi/t/1.0-py3-none-any")).unwrap();
        write(&root.join(".tmpjunk/f"), 10);
        let walk = Walk::take(&root);
        let total = walk.total();
        let (bytes, disk, files, dirs) = independent(&root);
        assert_eq!((total.size.bytes, total.size.disk, total.files, total.dirs), (bytes, disk, files, dirs));
        let unit = |rel: &str| &walk.units[walk.unit_index[Path::new(rel)] as usize];
        assert!(unit("archive-v0/b").linked_elsewhere);
        assert!(!unit("archive-v0/a").linked_elsewhere);
        assert_eq!(unit("archive-v0/a").max_links, 2);
        assert!(walk.unit_index.contains_key(Path::new("simple-v27/pypi/tinylib.rkyv")));
        // The plan: `.tmpjunk` and archive `b` go; `b`'s file has a link outside the cache, so
        // only its directory's space comes back.
        let p = plan::plan(&root, plan::Options::default(), &Protect::default());
        let freed = walk.evaluate(&root, &p.targets);
        let id = |rel: &str| walk.unit_index[Path::new(rel)] as usize;
        let dir_b = Size::of(&fs::symlink_metadata(root.join("archive-v0/b")).unwrap());
        assert_eq!(freed.entry[id("archive-v0/b")], dir_b);
        assert_eq!(freed.entry[id(".tmpjunk")], unit(".tmpjunk").total.size);
        assert_eq!(freed.entry[id("archive-v0/a")], Size::default());
        // Removing `files-v0/ab/obj` alone frees nothing (archive `a` links it too).
        let t = |rel: &str| Target {
            rel: rel.into(),
            reason: plan::Reason::OrphanFile,
            phase: plan::Phase::Files,
        };
        let freed = walk.evaluate(&root, &[t("files-v0/ab/obj")]);
        assert_eq!(freed.total(), Size::default());
        // With the archive, it comes back: in both entries' own numbers, once in the total.
        let freed = walk.evaluate(&root, &[t("files-v0/ab/obj"), t("archive-v0/a")]);
        let obj = Size::of(&fs::symlink_metadata(root.join("files-v0/ab/obj")).unwrap());
        assert_eq!(freed.entry[id("archive-v0/a")], unit("archive-v0/a").total.size);
        assert_eq!(freed.entry[id("files-v0/ab")], obj);
        assert_eq!(freed.total(), unit("archive-v0/a").total.size);
        assert_eq!(unit("archive-v0/a").share, unit("archive-v0/a").total.size);
        assert_eq!(unit("files-v0/ab").share.bytes + obj.bytes, unit("files-v0/ab").total.size.bytes);
    }

    #[test]
    fn clips_from_the_left() {
        assert_eq!(clip("abcdef", 4), "…def");
        assert_eq!(clip("abc", 4), "abc");
    }
}
