//! `clean`: what `uv cache clean [PACKAGE...]` (uv 0.13.8) removes, minus every entry in use.
//!
//! Without packages uv removes everything below the cache root except the root's own `.lock`
//! (uv-cache `Cache::clear`). With packages it removes, per package (uv-cache
//! `CacheBucket::remove`): wheels `pypi/<name>`, `index/*/<name>`, `url/*/<name>`; sdists
//! `pypi/<name>`, `index/*/<name>`, and the `url/*`, `path/*` and `git/*/*` entries whose
//! built metadata names the package; Simple-API `pypi/<name>.rkyv` and `index/*/<name>.rkyv`;
//! the whole flat-index bucket (uv cannot tell which packages it covers); then every archive
//! whose references were all among the removed paths; then `files-v0` objects left with a
//! single link (research `uv-cache.md` §3.2–3.3).
//!
//! Planning goes through [`Planner::consider`], so an entry in use (and its closure) is split
//! out of any removal unit exactly as in a prune, and targets carry phases: links first, then
//! archives, then file objects, so a run killed midway never leaves a link into a removed
//! archive.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use rmpv::Value;

use crate::layout::{self, Family, TopLevel};
use crate::plan::{Phase, Plan, Planner, Protect, Reason, Target};
use crate::prune::{self, Fatal, Outcome, Settings};

/// Run a clean of `packages` (normalized names), or of everything when empty.
pub fn run(
    settings: &Settings,
    packages: &[String],
    stop: &AtomicBool,
    say: &mut dyn FnMut(&str),
) -> Result<Outcome, Fatal> {
    // uv prints the header only for a full clean (`cache_clean.rs`).
    let header = packages.is_empty().then_some("Clearing cache at");
    prune::run_planned(settings, stop, say, header, &|root, protect, beside_uv| {
        plan(root, packages, protect, beside_uv)
    })
}

/// The clean plan for the cache at `root` (absolute, canonical); `beside_uv`: other uv
/// processes hold the cache lock (see [`plan_everything`]).
pub fn plan(root: &Path, packages: &[String], protect: &Protect, beside_uv: bool) -> Plan {
    if packages.is_empty() {
        plan_everything(root, protect, beside_uv)
    } else {
        plan_packages(root, packages, protect)
    }
}

/// `CACHEDIR.TAG` and `.gitignore`: removed only when nothing else stays (see below).
const TAGS: [&str; 2] = ["CACHEDIR.TAG", ".gitignore"];

/// Everything but the root's `.lock` and the root itself, as uv 0.13.8 does.
///
/// Alone, each top-level entry is one target. Beside running uv, a bucket is never a target:
/// uv may rename a new archive into `archive-v0` while the other buckets are being removed,
/// and a bucket-sized target would take it along unjudged. Each child of a bucket is a target
/// instead (an archive, a build, an environment digest, a wheel or sdist index), judged as it
/// is listed (see [`crate::concurrent`]); the empty buckets stay, as uv would recreate them.
fn plan_everything(root: &Path, protect: &Protect, beside_uv: bool) -> Plan {
    let mut planner = Planner::new(root, protect);
    let names = list(root, Path::new(""));
    for name in &names {
        if name == ".lock" || TAGS.iter().any(|t| name == t) {
            continue;
        }
        let family = match layout::classify(name) {
            TopLevel::Current(f) | TopLevel::Older(f, _) | TopLevel::Newer(f, _) => Some(f),
            _ => None,
        };
        let phase = match family {
            Some(Family::Archive) => Phase::Archives,
            Some(Family::Files) => Phase::Files,
            _ => Phase::References,
        };
        let is_dir = fs::symlink_metadata(root.join(name)).is_ok_and(|m| m.is_dir());
        if beside_uv && family.is_some() && is_dir {
            for child in list(root, Path::new(name)) {
                planner.consider(Path::new(name).join(child), Reason::Cleaned, phase);
            }
        } else {
            planner.consider(PathBuf::from(name), Reason::Cleaned, phase);
        }
    }
    let mut plan = planner.finish();
    // When anything stays (an entry in use, or one a running uv is writing), the tag stays
    // too: without it the next safe-prune would refuse the directory as "not a uv cache".
    if plan.kept.is_empty() && plan.errors.is_empty() && !beside_uv {
        for tag in TAGS {
            if names.iter().any(|n| n == tag) {
                plan.targets.push(Target { rel: tag.into(), reason: Reason::Cleaned, phase: Phase::Files });
            }
        }
    }
    plan
}

/// The entries of `packages` and what only they referenced.
fn plan_packages(root: &Path, packages: &[String], protect: &Protect) -> Plan {
    let name_of = |family: Family| family.current_name().map(PathBuf::from).unwrap_or_default();
    let wheels = name_of(Family::Wheels);
    let sdists = name_of(Family::SourceDistributions);
    let simple = name_of(Family::Simple);
    let flat_index = name_of(Family::FlatIndex);
    // uv collects the references before removing anything.
    let references = archive_references(root, &[sdists.clone(), wheels.clone()]);

    let mut planner = Planner::new(root, protect);
    // Several packages (or spellings of one) can name the same path: plan it once.
    let consider = |planner: &mut Planner<'_>, rel: PathBuf| {
        if !planner.is_doomed(&rel) && fs::symlink_metadata(root.join(&rel)).is_ok() {
            planner.consider(rel, Reason::PackageEntry, Phase::References);
        }
    };
    for name in packages {
        let rkyv = format!("{name}.rkyv");
        consider(&mut planner, wheels.join("pypi").join(name));
        for dir in directories(root, &wheels.join("index")).chain(directories(root, &wheels.join("url"))) {
            consider(&mut planner, dir.join(name));
        }
        consider(&mut planner, sdists.join("pypi").join(name));
        for dir in directories(root, &sdists.join("index")) {
            consider(&mut planner, dir.join(name));
        }
        for kind in ["url", "path"] {
            for source in directories(root, &sdists.join(kind)) {
                if directories(root, &source).any(|revision| built_for(root, &revision, name)) {
                    consider(&mut planner, source);
                }
            }
        }
        for repository in directories(root, &sdists.join("git")) {
            for sha in directories(root, &repository) {
                if built_for(root, &sha, name) {
                    consider(&mut planner, sha);
                }
            }
        }
        consider(&mut planner, simple.join("pypi").join(&rkyv));
        for dir in directories(root, &simple.join("index")) {
            consider(&mut planner, dir.join(&rkyv));
        }
        consider(&mut planner, flat_index.clone());
    }

    // Archives all of whose references are going (uv: "Removing dangling cache entry").
    // Only targets inside the archive bucket: a link may point anywhere.
    let archive_bucket = name_of(Family::Archive);
    let mut dangling: Vec<PathBuf> = references
        .iter()
        .filter(|(target, links)| {
            target.starts_with(&archive_bucket)
                && *target != &archive_bucket
                && links.iter().all(|link| planner.is_doomed(link))
        })
        .map(|(target, _)| target.clone())
        .collect();
    dangling.sort();
    for target in dangling {
        planner.consider(target, Reason::DanglingArchive, Phase::Archives);
    }
    let mut plan = planner.finish();
    orphan_files(root, protect, &mut plan);
    plan
}

/// Real directories (never links) directly below `rel`, sorted; none when it is missing.
fn directories(root: &Path, rel: &Path) -> std::vec::IntoIter<PathBuf> {
    let mut out: Vec<PathBuf> = match fs::read_dir(root.join(rel)) {
        Ok(entries) => entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| rel.join(e.file_name()))
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out.into_iter()
}

/// Names in `root/rel`, sorted.
fn list(root: &Path, rel: &Path) -> Vec<std::ffi::OsString> {
    let mut names: Vec<_> = match fs::read_dir(root.join(rel)) {
        Ok(entries) => entries.flatten().map(|e| e.file_name()).collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// uv's `is_match`: a `metadata.msgpack` in the revision `rel` or one directory below it
/// (build-settings shards), never inside `src`, names `package`.
fn built_for(root: &Path, rel: &Path, package: &str) -> bool {
    let dir = root.join(rel);
    let mut candidates = vec![dir.join("metadata.msgpack")];
    if let Ok(entries) = fs::read_dir(&dir) {
        for entry in entries.flatten() {
            if entry.file_name() != "src" && entry.file_type().is_ok_and(|t| t.is_dir()) {
                candidates.push(entry.path().join("metadata.msgpack"));
            }
        }
    }
    candidates.iter().any(|file| {
        read_metadata(file).and_then(|bytes| metadata_name(&bytes)).is_some_and(|name| name == package)
    })
}

/// Upper bound on a `metadata.msgpack` (uv's hold one distribution's core metadata: KiBs).
const MAX_METADATA: u64 = 8 << 20;

/// A `metadata.msgpack` read the way the planner reads files in the cache: never through a
/// symlink, never blocking on a FIFO, regular files only, at most [`MAX_METADATA`] bytes, so a
/// FIFO or a link to `/dev/zero` under that name cannot hang a clean or exhaust its memory
/// (uv itself follows links and reads whole files). Anything else, or a larger file, names no
/// package: its revision is not one of the package's entries, and stays.
fn read_metadata(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    let file = crate::names::open_quietly(path).ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    file.take(MAX_METADATA + 1).read_to_end(&mut bytes).ok()?;
    (bytes.len() as u64 <= MAX_METADATA).then_some(bytes)
}

/// The normalized package name in a `metadata.msgpack` (uv's `ResolutionMetadata`, written
/// by `rmp_serde` as an array whose first element is the name; a map with `name` is
/// accepted too).
pub fn metadata_name(bytes: &[u8]) -> Option<String> {
    let mut reader = bytes;
    let value = rmpv::decode::read_value(&mut reader).ok()?;
    let name = match value {
        Value::Array(items) => items.into_iter().next()?,
        Value::Map(pairs) => pairs.into_iter().find(|(k, _)| k.as_str() == Some("name"))?.1,
        _ => return None,
    };
    normalize_package_name(name.as_str()?)
}

/// Canonical archive targets (relative to the root) of every link in `buckets`, each with
/// the links (relative) that reference it, walked with uv's `find_archive_references` filter.
fn archive_references(root: &Path, buckets: &[PathBuf]) -> HashMap<PathBuf, Vec<PathBuf>> {
    let mut refs: HashMap<PathBuf, Vec<PathBuf>> = HashMap::new();
    let mut stack: Vec<PathBuf> = buckets.iter().filter(|b| root.join(b).is_dir()).cloned().collect();
    while let Some(dir) = stack.pop() {
        for name in list(root, &dir) {
            if skipped_by_reference_walk(&name) {
                continue;
            }
            let rel = dir.join(&name);
            let Ok(meta) = fs::symlink_metadata(root.join(&rel)) else { continue };
            if meta.file_type().is_symlink() {
                // A dangling link references nothing.
                let Ok(target) = fs::canonicalize(root.join(&rel)) else { continue };
                if let Ok(target) = target.strip_prefix(root) {
                    refs.entry(target.to_path_buf()).or_default().push(rel);
                }
            } else if meta.is_dir() {
                stack.push(rel);
            }
        }
    }
    refs
}

/// uv's reference-walk filter: `src`, `.lock`, `.gitignore`, and `*.lock`, `*.whl`, `*.http`,
/// `*.rev`, `*.msgpack` are not walked.
fn skipped_by_reference_walk(name: &std::ffi::OsStr) -> bool {
    if name == "src" || name == ".lock" || name == ".gitignore" {
        return true;
    }
    Path::new(name).extension().is_some_and(|ext| {
        ["lock", "whl", "http", "rev", "msgpack"].iter().any(|e| ext.eq_ignore_ascii_case(e))
    })
}

/// uv's `prune_archive_files` after the removal: `files-v0` objects whose only remaining link
/// is their own, counting links inside planned targets as gone, and directories left empty.
fn orphan_files(root: &Path, protect: &Protect, plan: &mut Plan) {
    let Some(files) = Family::Files.current_name().map(PathBuf::from) else { return };
    if !root.join(&files).is_dir() {
        return;
    }
    let going = links_inside(root, plan.targets.iter().map(|t| t.rel.as_path()));
    let mut planner = Planner::new(root, protect);
    orphans_in(root, &files, true, &going, &mut planner);
    let found = planner.finish();
    plan.targets.extend(found.targets);
    plan.kept.extend(found.kept);
    plan.errors.extend(found.errors);
}

/// Returns true when everything in `dir` goes, so the caller removes `dir` whole.
fn orphans_in(
    root: &Path,
    dir: &Path,
    is_bucket: bool,
    going: &HashMap<(u64, u64), u64>,
    planner: &mut Planner<'_>,
) -> bool {
    let mut all = true;
    let mut units = Vec::new();
    for name in list(root, dir) {
        let rel = dir.join(name);
        match fs::symlink_metadata(root.join(&rel)) {
            Ok(m) if m.is_file() => {
                let gone = going.get(&(m.dev(), m.ino())).copied().unwrap_or(0);
                if m.nlink().saturating_sub(gone) <= 1 {
                    units.push(rel);
                } else {
                    all = false;
                }
            }
            Ok(m) if m.is_dir() => {
                if orphans_in(root, &rel, false, going, planner) {
                    units.push(rel);
                } else {
                    all = false;
                }
            }
            _ => all = false,
        }
    }
    if all && !is_bucket {
        return true;
    }
    for rel in units {
        planner.consider(rel, Reason::OrphanFile, Phase::Files);
    }
    false
}

/// For every multiply-linked regular file inside the given targets (never through a link),
/// how many of its links are there.
fn links_inside<'a>(root: &Path, targets: impl Iterator<Item = &'a Path>) -> HashMap<(u64, u64), u64> {
    let mut counts = HashMap::new();
    let mut seen_dirs = HashSet::new();
    let mut stack: Vec<PathBuf> = targets.map(|t| root.join(t)).collect();
    while let Some(path) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&path) else { continue };
        if meta.is_file() && meta.nlink() > 1 {
            *counts.entry((meta.dev(), meta.ino())).or_insert(0) += 1;
        } else if meta.is_dir() && seen_dirs.insert((meta.dev(), meta.ino())) {
            if let Ok(entries) = fs::read_dir(&path) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    counts
}

/// PEP 503 normalization as uv's `PackageName` does it: ASCII letters, digits and `-_.` only,
/// starting and ending with a letter or digit; lower-cased, runs of `-_.` become one `-`.
pub fn normalize_package_name(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let is_sep = |b: u8| matches!(b, b'-' | b'_' | b'.');
    if bytes.is_empty() || is_sep(bytes[0]) || is_sep(bytes[bytes.len() - 1]) {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut last_sep = false;
    for &b in bytes {
        if b.is_ascii_alphanumeric() {
            out.push(b.to_ascii_lowercase() as char);
            last_sep = false;
        } else if is_sep(b) {
            if !last_sep {
                out.push('-');
            }
            last_sep = true;
        } else {
            return None;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::KeepReason;
    use std::os::unix::fs::{symlink, FileTypeExt};

    fn rels(plan: &Plan) -> Vec<String> {
        plan.targets.iter().map(|t| t.rel.display().to_string()).collect()
    }

    fn encode(value: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, value).unwrap();
        out
    }

    #[test]
    fn names_normalize_like_uv() {
        assert_eq!(normalize_package_name("Foo_Bar.baz").as_deref(), Some("foo-bar-baz"));
        assert_eq!(normalize_package_name("a--__b").as_deref(), Some("a-b"));
        assert_eq!(normalize_package_name("x").as_deref(), Some("x"));
        for bad in ["", "-a", "a-", "_a", "a.", "a b", "Bad!", "é"] {
            assert_eq!(normalize_package_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn metadata_name_from_uv_array_layout() {
        // Bytes of a real uv 0.13.8 `metadata.msgpack`.
        let real = b"\x96\xa6srclib\xa31.0\x90\xc0\x90\xc2";
        assert_eq!(metadata_name(real).as_deref(), Some("srclib"));
        let map = Value::Map(vec![(Value::from("name"), Value::from("My_Pkg"))]);
        assert_eq!(metadata_name(&encode(&map)).as_deref(), Some("my-pkg"));
        for garbage in [&b""[..], b"\xc1", b"\x91\x01", b"\x90"] {
            assert_eq!(metadata_name(garbage), None);
        }
    }

    /// A cache with two packages' wheels, an sdist built from a local path, a Simple-API
    /// file and a flat index, and archives they link to.
    fn cache() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(tmp.path()).unwrap();
        for d in [
            "archive-v0/tiny",
            "archive-v0/other",
            "archive-v0/shared",
            "archive-v0/local",
            "wheels-v7/pypi/tinylib",
            "wheels-v7/index/abc/tinylib",
            "wheels-v7/index/abc/other",
            "sdists-v10/path/p1/rev1",
            "sdists-v10/path/p2/rev2/src",
            "simple-v27/pypi",
            "flat-index-v7/html",
            "environments-v2/d",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(root.join("CACHEDIR.TAG"), "Signature: 8a477f597d28d172789f06886806bc55").unwrap();
        fs::write(root.join(".lock"), "").unwrap();
        fs::write(root.join("simple-v27/pypi/tinylib.rkyv"), "x").unwrap();
        fs::write(root.join("simple-v27/pypi/other.rkyv"), "x").unwrap();
        fs::write(root.join("flat-index-v7/html/x.msgpack"), "x").unwrap();
        symlink("../../../archive-v0/tiny", root.join("wheels-v7/pypi/tinylib/1.0-py3-none-any")).unwrap();
        symlink("../../../../archive-v0/tiny", root.join("wheels-v7/index/abc/tinylib/1.0-py3-none-any"))
            .unwrap();
        symlink("../../../../archive-v0/other", root.join("wheels-v7/index/abc/other/2.0-py3-none-any"))
            .unwrap();
        // `shared` is linked from tinylib's and other's entries: it must stay.
        symlink("../../../../archive-v0/shared", root.join("wheels-v7/index/abc/tinylib/x")).unwrap();
        symlink("../../../../archive-v0/shared", root.join("wheels-v7/index/abc/other/x")).unwrap();
        let meta = |name: &str| encode(&Value::Array(vec![Value::from(name), Value::from("1.0")]));
        fs::write(root.join("sdists-v10/path/p1/rev1/metadata.msgpack"), meta("localpkg")).unwrap();
        symlink("../../../../archive-v0/local", root.join("sdists-v10/path/p1/rev1/localpkg-1.0")).unwrap();
        // Metadata inside `src` is not a match.
        fs::write(root.join("sdists-v10/path/p2/rev2/src/metadata.msgpack"), meta("localpkg")).unwrap();
        symlink("../../archive-v0/tiny", root.join("environments-v2/d/r")).unwrap();
        (tmp, root)
    }

    #[test]
    fn package_clean_follows_uv_bucket_rules() {
        let (_tmp, root) = cache();
        let p = plan(&root, &["tinylib".into()], &Protect::default(), false);
        assert_eq!(
            rels(&p),
            [
                "wheels-v7/pypi/tinylib",
                "wheels-v7/index/abc/tinylib",
                "simple-v27/pypi/tinylib.rkyv",
                "flat-index-v7",
                // Referenced by the environments-v2 link too, but uv only counts wheels and
                // sdists as references.
                "archive-v0/tiny",
            ]
        );
        assert_eq!(p.targets.last().unwrap().phase, Phase::Archives);
        let p = plan(&root, &["localpkg".into()], &Protect::default(), false);
        assert_eq!(rels(&p), ["sdists-v10/path/p1", "flat-index-v7", "archive-v0/local"]);
    }

    #[test]
    fn package_clean_keeps_what_is_in_use() {
        let (_tmp, root) = cache();
        let mut protect = Protect::default();
        protect.add("archive-v0/tiny".into(), KeepReason::InUse);
        let p = plan(&root, &["tinylib".into()], &protect, false);
        assert!(!rels(&p).contains(&"archive-v0/tiny".to_string()));
        assert_eq!(p.kept.get(Path::new("archive-v0/tiny")), Some(&KeepReason::InUse));
        // A protected link inside a package entry splits the entry, and keeps its archive
        // referenced, so the archive is not even a candidate.
        let mut protect = Protect::default();
        protect.add("wheels-v7/pypi/tinylib/1.0-py3-none-any".into(), KeepReason::InUse);
        let p = plan(&root, &["tinylib".into()], &protect, false);
        assert!(!rels(&p).iter().any(|r| r == "archive-v0/tiny" || r == "wheels-v7/pypi/tinylib"));
        assert!(p.kept.contains_key(Path::new("wheels-v7/pypi/tinylib/1.0-py3-none-any")));
        assert!(rels(&p).contains(&"wheels-v7/index/abc/tinylib".to_string()));
    }

    /// A FIFO, a link to `/dev/zero` and an oversized file named `metadata.msgpack` name no
    /// package (and do not hang the plan or fill memory); a real one beside them still counts.
    #[test]
    fn unreadable_metadata_names_no_package() {
        let (_tmp, root) = cache();
        for rev in ["sdists-v10/path/fifo/rev", "sdists-v10/path/zero/rev", "sdists-v10/git/repo/big"] {
            fs::create_dir_all(root.join(rev)).unwrap();
        }
        let fifo = root.join("sdists-v10/path/fifo/rev/metadata.msgpack");
        let status = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(status.success());
        symlink("/dev/zero", root.join("sdists-v10/path/zero/rev/metadata.msgpack")).unwrap();
        // A valid name followed by padding up to one byte over the bound.
        let mut big = encode(&Value::Array(vec![Value::from("localpkg"), Value::from("1.0")]));
        big.resize(usize::try_from(MAX_METADATA).unwrap() + 1, 0);
        fs::write(root.join("sdists-v10/git/repo/big/metadata.msgpack"), &big).unwrap();

        let (tx, rx) = std::sync::mpsc::channel();
        let planned = root.clone();
        std::thread::spawn(move || {
            let _ = tx.send(plan(&planned, &["localpkg".into()], &Protect::default(), false));
        });
        let p = rx.recv_timeout(std::time::Duration::from_secs(120)).expect("the plan hangs on a FIFO");
        assert_eq!(rels(&p), ["sdists-v10/path/p1", "flat-index-v7", "archive-v0/local"]);
        assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());

        // At the bound exactly, the file is read.
        big.truncate(usize::try_from(MAX_METADATA).unwrap());
        fs::write(root.join("sdists-v10/git/repo/big/metadata.msgpack"), &big).unwrap();
        let p = plan(&root, &["localpkg".into()], &Protect::default(), false);
        assert!(rels(&p).contains(&"sdists-v10/git/repo/big".to_string()), "{:?}", rels(&p));
    }

    #[test]
    fn full_clean_leaves_only_the_lock_or_keeps_tag_with_kept_entries() {
        let (_tmp, root) = cache();
        let p = plan(&root, &[], &Protect::default(), false);
        let all = rels(&p);
        assert!(!all.contains(&".lock".to_string()));
        assert!(all.contains(&"CACHEDIR.TAG".to_string()));
        assert_eq!(all.len(), 7, "{all:?}");
        let phase = |r: &str| p.targets.iter().find(|t| t.rel == Path::new(r)).unwrap().phase;
        assert_eq!(phase("archive-v0"), Phase::Archives);
        assert_eq!(phase("wheels-v7"), Phase::References);

        let mut protect = Protect::default();
        protect.add("archive-v0/tiny".into(), KeepReason::InUse);
        let p = plan(&root, &[], &protect, false);
        let all = rels(&p);
        assert!(!all.contains(&"CACHEDIR.TAG".to_string()), "{all:?}");
        assert!(all.contains(&"archive-v0/other".to_string()));
        assert!(!all.iter().any(|r| r.starts_with("archive-v0/tiny")));
    }

    /// Beside running uv no bucket is a target (uv may add an archive to it mid-run): each
    /// child is, and the buckets and the tag stay.
    #[test]
    fn full_clean_beside_uv_targets_entries_never_buckets() {
        let (_tmp, root) = cache();
        fs::create_dir_all(root.join(".tmpAbCdEf/python")).unwrap();
        let p = plan(&root, &[], &Protect::default(), true);
        let all = rels(&p);
        for bucket in ["archive-v0", "wheels-v7", "sdists-v10", "environments-v2", "CACHEDIR.TAG", ".lock"] {
            assert!(!all.iter().any(|r| r == bucket), "{bucket} is a target: {all:?}");
        }
        for entry in
            ["archive-v0/tiny", "archive-v0/other", "wheels-v7/pypi", "environments-v2/d", ".tmpAbCdEf"]
        {
            assert!(all.iter().any(|r| r == entry), "{entry} is not a target: {all:?}");
        }
        let phase = |r: &str| p.targets.iter().find(|t| t.rel == Path::new(r)).unwrap().phase;
        assert_eq!(phase("archive-v0/tiny"), Phase::Archives);
        assert_eq!(phase("wheels-v7/pypi"), Phase::References);
    }

    #[test]
    fn orphan_files_count_links_in_removed_archives() {
        let (_tmp, root) = cache();
        fs::create_dir_all(root.join("files-v0/ab")).unwrap();
        fs::create_dir_all(root.join("files-v0/cd")).unwrap();
        fs::write(root.join("files-v0/ab/obj1"), "1").unwrap();
        fs::hard_link(root.join("files-v0/ab/obj1"), root.join("archive-v0/tiny/f")).unwrap();
        fs::write(root.join("files-v0/cd/obj2"), "2").unwrap();
        fs::hard_link(root.join("files-v0/cd/obj2"), root.join("archive-v0/other/f")).unwrap();
        let p = plan(&root, &["tinylib".into()], &Protect::default(), false);
        let all = rels(&p);
        assert!(all.contains(&"files-v0/ab".to_string()), "{all:?}");
        assert!(!all.iter().any(|r| r.starts_with("files-v0/cd")), "{all:?}");
    }
}
