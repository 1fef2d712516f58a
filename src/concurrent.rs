//! Protections for pruning *beside* running uv processes (uv's cache lock is held by others).
//!
//! uv's own prune is race-free only because it holds the lock exclusively; while any uv
//! process runs (a `uvx` parent holds it shared for its child's whole life) uv's prune waits up
//! to five minutes. We do not wait; instead nothing a live uv process could be writing or be
//! about to use is removed:
//! - anything younger than the grace period by `max(ctime, mtime)`: `archive-v0/*` (ctime is
//!   the rename into the bucket, research §5), `builds-v0/*`, `environments-v2/*` and its
//!   links, top-level `.tmp*`, and `.tmp*` inside any bucket;
//! - anything whose own `.lock` a uv process holds (it is being built or published);
//! - cached environments whose requested distributions a live `uv tool run`, `uvx` or
//!   `uv run --with` command names: between resolving the environment's link and starting
//!   the tool, uv has no other visible evidence of the environment.
//!
//! These protections come from one listing of the cache and the plan from another, taken a
//! moment later: an entry uv creates in between (a `.tmp*` staging directory, an archive
//! renamed into `archive-v0` before its link exists) would be planned without ever having been
//! judged. So the planner also [`judge`]s every candidate right after listing it, by the same
//! rules; what uv creates after that listing is not in the plan at all.
//!
//! Residual window: an environment uv resolved through a link created more than the grace
//! period ago, for a command line we cannot parse (a package named only inside a
//! requirements file), started in the milliseconds between our last scan and the removal.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::layout::{self, Family, TopLevel};
use crate::lock;
use crate::plan::{KeepReason, Protect};
use crate::usage::Usage;

/// Add every concurrent-mode protection for the cache at `root`.
pub fn protect(root: &Path, usage: &Usage, grace: Duration, protect: &mut Protect) {
    protect.set_beside_uv(grace);
    let now = SystemTime::now();
    let Ok(top) = std::fs::read_dir(root) else { return };
    for entry in top.flatten() {
        let name = PathBuf::from(entry.file_name());
        let family = match layout::classify(name.as_os_str()) {
            TopLevel::Current(f) | TopLevel::Older(f, _) | TopLevel::Newer(f, _) => Some(f),
            _ => None,
        };
        if family.is_none() {
            if is_tmp(name.as_os_str()) && young(&root.join(&name), now, grace) {
                protect.add(name, KeepReason::Young);
            }
            continue;
        }
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let whole_entries = matches!(family, Some(Family::Archive | Family::Builds | Family::Environments));
        scan_bucket(root, &name, whole_entries, now, grace, protect);
    }
    for env in requested_environments(root, &usage.uv_commands) {
        protect.add(env, KeepReason::InUse);
    }
}

/// Why `rel`, a candidate the planner has just listed, must stay beside running uv: the
/// rules of [`protect`], applied to this one path now.
pub fn judge(root: &Path, rel: &Path, grace: Duration) -> Option<KeepReason> {
    let name = rel.file_name()?;
    let top = rel.components().next()?.as_os_str();
    let abs = root.join(rel);
    let now = SystemTime::now();
    let family = match layout::classify(top) {
        TopLevel::Current(f) | TopLevel::Older(f, _) | TopLevel::Newer(f, _) => f,
        _ => {
            return (rel.components().count() == 1 && is_tmp(name) && young(&abs, now, grace))
                .then_some(KeepReason::Young)
        }
    };
    if rel.components().count() == 1 {
        // A whole bucket (an older generation): its contents were judged by `protect`.
        return None;
    }
    // `<x>.lock` guards `<x>`, `.lock` its directory; a held lock file keeps itself.
    let mut sibling = abs.clone().into_os_string();
    sibling.push(".lock");
    let is_lock = Path::new(name).extension().is_some_and(|e| e == "lock") || name == ".lock";
    if (is_lock && !lock::entry_lock_free(&abs))
        || !lock::entry_lock_free(Path::new(&sibling))
        || !lock::entry_lock_free(&abs.join(".lock"))
    {
        return Some(KeepReason::Locked);
    }
    // A wheel entry (`pypi/<name>`) holds `<key>.lock` per wheel, an sdist shard its
    // revisions' locks: one level down.
    let real_dir = abs.symlink_metadata().is_ok_and(|m| m.is_dir());
    if real_dir && matches!(family, Family::Wheels | Family::SourceDistributions) {
        let held = std::fs::read_dir(&abs).into_iter().flatten().flatten().any(|child| {
            let n = child.file_name();
            let is_lock = Path::new(&n).extension().is_some_and(|e| e == "lock") || n == ".lock";
            is_lock && !lock::entry_lock_free(&child.path())
        });
        if held {
            return Some(KeepReason::Locked);
        }
    }
    let whole_entries = matches!(family, Family::Archive | Family::Builds | Family::Environments);
    ((whole_entries || is_tmp(name)) && young(&abs, now, grace)).then_some(KeepReason::Young)
}

/// Young entries and held locks inside one bucket (two levels deep: enough for
/// `environments-v2/<digest>/<resolution>` and `wheels-v7/pypi/<name>` shards).
fn scan_bucket(
    root: &Path,
    bucket: &Path,
    whole_entries: bool,
    now: SystemTime,
    grace: Duration,
    protect: &mut Protect,
) {
    let mut stack = vec![(bucket.to_path_buf(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(children) = std::fs::read_dir(root.join(&dir)) else { continue };
        for child in children.flatten() {
            let name = child.file_name();
            let rel = dir.join(&name);
            let abs = root.join(&rel);
            let is_lock = Path::new(&name).extension().is_some_and(|e| e == "lock") || name == ".lock";
            if is_lock && !lock::entry_lock_free(&abs) {
                // `<x>.lock` guards `<x>`; `.lock` guards its directory.
                let guarded = if name == ".lock" { dir.clone() } else { rel.with_extension("") };
                protect.add(guarded, KeepReason::Locked);
                protect.add(rel, KeepReason::Locked);
                continue;
            }
            if (whole_entries || is_tmp(&name)) && young(&abs, now, grace) {
                protect.add(rel.clone(), KeepReason::Young);
            }
            if depth < 2 && child.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push((rel, depth + 1));
            }
        }
    }
}

fn is_tmp(name: &OsStr) -> bool {
    name.as_bytes().starts_with(b".tmp")
}

/// True when `path` was created or changed within `grace` (or its time is in the future).
fn young(path: &Path, now: SystemTime, grace: Duration) -> bool {
    let Ok(meta) = path.symlink_metadata() else { return false };
    let changed = meta.mtime().max(meta.ctime());
    let changed = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(changed).unwrap_or(0));
    now.duration_since(changed).map_or(true, |age| age < grace)
}

/// Distribution names a uv command line asks for (`uvx X`, `uv tool run --from X`,
/// `--with X`, `uv run --with X`), normalized.
pub fn requested_names(argv: &[Vec<u8>]) -> BTreeSet<String> {
    let args: Vec<&[u8]> = argv.iter().map(|a| a.as_slice()).collect();
    let mut out = BTreeSet::new();
    let Some(first) = args.first() else { return out };
    let invoked_as_uvx = first.rsplit(|&b| b == b'/').next() == Some(b"uvx");
    let mut i = 1;
    // `uvx` re-executes itself as `uv tool uvx ...`.
    let mut tool_run = invoked_as_uvx;
    let mut saw_command = false;
    let mut subcommand: Vec<&[u8]> = Vec::new();
    while i < args.len() {
        let arg = args[i];
        let value_of = |flag: &[u8]| -> Option<&[u8]> {
            if arg == flag {
                args.get(i + 1).copied()
            } else {
                arg.strip_prefix(flag).and_then(|rest| rest.strip_prefix(b"="))
            }
        };
        if let Some(v) = value_of(b"--from").or_else(|| value_of(b"--with")).or_else(|| value_of(b"-w")) {
            out.extend(split_requirements(v));
            i += if arg.contains(&b'=') { 1 } else { 2 };
            continue;
        }
        if arg == b"--" {
            break;
        }
        if takes_separate_value(arg) {
            // `uvx -p 3.12 ruff`: `3.12` is the interpreter, not the tool.
            i += 2;
            continue;
        }
        if !arg.starts_with(b"-") {
            if !tool_run && subcommand.len() < 2 {
                subcommand.push(arg);
                tool_run = matches!(subcommand.as_slice(), [b"tool", b"run"] | [b"tool", b"uvx"] | [b"x"]);
                if subcommand.first() == Some(&&b"run"[..]) {
                    // `uv run`: only `--with` names cached environments.
                    saw_command = true;
                }
            } else if tool_run && !saw_command {
                // The tool itself: `uvx black`, `uvx black@24.1`.
                out.extend(split_requirements(arg));
                saw_command = true;
            }
        }
        i += 1;
    }
    out
}

/// Options of `uv`, `uv tool run`/`uvx` and `uv run` (uv 0.13.8) that take a value, long
/// and short; `--from`/`--with` are read separately.
const VALUE_OPTIONS: &[&[u8]] = &[
    b"--cache-dir",
    b"--config-file",
    b"--color",
    b"--python-preference",
    b"--python-fetch",
    b"--allow-insecure-host",
    b"--trusted-host",
    b"--preview-features",
    b"--preview-feature",
    b"--directory",
    b"--project",
    b"--with-editable",
    b"--with-requirements",
    b"--constraints",
    b"--constraint",
    b"--overrides",
    b"--override",
    b"--build-constraints",
    b"--build-constraint",
    b"--python",
    b"--index",
    b"--default-index",
    b"--index-url",
    b"--extra-index-url",
    b"--find-links",
    b"--index-strategy",
    b"--keyring-provider",
    b"--resolution",
    b"--prerelease",
    b"--fork-strategy",
    b"--exclude-newer",
    b"--exclude-newer-package",
    b"--no-build-package",
    b"--no-binary-package",
    b"--config-setting",
    b"--config-settings",
    b"--config-settings-package",
    b"--no-build-isolation-package",
    b"--link-mode",
    b"--reinstall-package",
    b"--refresh-package",
    b"--upgrade-package",
    b"--torch-backend",
    b"--env-file",
    b"--python-platform",
    b"--extra",
    b"--group",
    b"--only-group",
    b"--no-group",
    b"--package",
    b"--no-sources-package",
    b"-p",
    b"-i",
    b"-f",
    b"-c",
    b"-b",
    b"-C",
    b"-P",
];

/// True when `arg` is an option whose value is the next argument (not `--opt=v`, `-pX`).
fn takes_separate_value(arg: &[u8]) -> bool {
    VALUE_OPTIONS.contains(&arg)
}

/// `a,b==1.0` → `a`, `b`: the names, without versions, extras or markers.
fn split_requirements(value: &[u8]) -> Vec<String> {
    value
        .split(|&b| b == b',')
        .filter_map(|req| {
            let end = req
                .iter()
                .position(|b| matches!(b, b'=' | b'<' | b'>' | b'!' | b'~' | b'[' | b'@' | b';' | b' '))
                .unwrap_or(req.len());
            let name = normalize_name(&req[..end]);
            (!name.is_empty() && !name.contains('/')).then_some(name)
        })
        .collect()
}

/// PEP 503 normalization: lower case, runs of `-_.` become `-`.
pub fn normalize_name(name: &[u8]) -> String {
    let mut out = String::new();
    let mut dash = false;
    for &b in name {
        if matches!(b, b'-' | b'_' | b'.') {
            dash = true;
            continue;
        }
        if dash && !out.is_empty() {
            out.push('-');
        }
        dash = false;
        out.push(char::from(b.to_ascii_lowercase()));
    }
    out
}

/// Requested distributions of a venv: `*.dist-info` with a `REQUESTED` marker.
pub fn requested_in_venv(venv: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Ok(libs) = std::fs::read_dir(venv.join("lib")) else { return out };
    for lib in libs.flatten() {
        let Ok(dists) = std::fs::read_dir(lib.path().join("site-packages")) else { continue };
        for dist in dists.flatten() {
            let name = dist.file_name();
            let Some(stem) = name.as_bytes().strip_suffix(b".dist-info") else { continue };
            if dist.path().join("REQUESTED").is_file() {
                let dist_name = stem.rsplit_once_byte(b'-').map_or(stem, |(n, _)| n);
                out.insert(normalize_name(dist_name));
            }
        }
    }
    out
}

trait RsplitOnce {
    fn rsplit_once_byte(&self, b: u8) -> Option<(&[u8], &[u8])>;
}

impl RsplitOnce for [u8] {
    fn rsplit_once_byte(&self, b: u8) -> Option<(&[u8], &[u8])> {
        let i = self.iter().rposition(|&c| c == b)?;
        Some((&self[..i], &self[i + 1..]))
    }
}

/// Cached environments (links in `environments-v2` and their archives) whose requested
/// distributions a live uv command asks for.
fn requested_environments(root: &Path, commands: &[(u32, Vec<Vec<u8>>)]) -> Vec<PathBuf> {
    let wanted: BTreeSet<String> = commands.iter().flat_map(|(_, argv)| requested_names(argv)).collect();
    if wanted.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let Some(envs) = Family::Environments.current_name() else { return out };
    let Ok(digests) = std::fs::read_dir(root.join(&envs)) else { return out };
    for digest in digests.flatten() {
        let Ok(links) = std::fs::read_dir(digest.path()) else { continue };
        for link in links.flatten() {
            let path = link.path();
            if !link.file_type().is_ok_and(|t| t.is_symlink()) {
                continue;
            }
            let Ok(target) = std::fs::canonicalize(&path) else { continue };
            if requested_in_venv(&target).is_disjoint(&wanted) {
                continue;
            }
            if let (Ok(rel_link), Ok(rel_target)) = (path.strip_prefix(root), target.strip_prefix(root)) {
                out.push(rel_link.to_path_buf());
                out.push(rel_target.to_path_buf());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &str) -> Vec<Vec<u8>> {
        words.split(' ').map(|w| w.as_bytes().to_vec()).collect()
    }

    fn names(words: &str) -> Vec<String> {
        requested_names(&argv(words)).into_iter().collect()
    }

    #[test]
    fn names_from_uv_command_lines() {
        assert_eq!(names("/usr/bin/uv tool uvx --from sleepy==0.1 sleepy"), ["sleepy"]);
        assert_eq!(names("uvx black@24.1 --check ."), ["black"]);
        assert_eq!(names("uv tool run --with Rich,tqdm>=4 My_Tool --flag x"), ["my-tool", "rich", "tqdm"]);
        assert_eq!(names("uv run --with=iniconfig python -c pass"), ["iniconfig"]);
        assert_eq!(names("uv run script.py"), Vec::<String>::new());
        assert_eq!(names("uv pip install numpy"), Vec::<String>::new());
        assert_eq!(names("uv -q x ruff"), ["ruff"]);
        assert_eq!(names("uvx -p 3.12 ruff check"), ["ruff"]);
        assert_eq!(names("uv tool run --python=3.12 --index-url http://x/simple -c c.txt black"), ["black"]);
        assert_eq!(names("uv --cache-dir /c tool run -p3.12 httpie"), ["httpie"]);
        assert_eq!(names("uv run --group dev --with rich python -m x"), ["rich"]);
        assert_eq!(names("uv"), Vec::<String>::new());
    }

    #[test]
    fn normalization() {
        assert_eq!(normalize_name(b"Foo__Bar.baz"), "foo-bar-baz");
        assert_eq!(normalize_name(b"_x"), "x");
    }

    /// uv creates entries between our two listings (protections, then plan): the planner
    /// judges them when it lists them, and keeps them as young.
    #[test]
    fn entries_created_between_protections_and_plan_are_judged() {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        std::fs::write(root.join("CACHEDIR.TAG"), "Signature: 8a477f597d28d172789f06886806bc55").unwrap();
        for d in ["archive-v0/old", ".tmpOLD", "wheels-v5/pypi/x"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        // Ages are whole seconds: after 2.2 s the entries above are older than a 2 s grace.
        std::thread::sleep(Duration::from_millis(2200));
        let grace = Duration::from_secs(2);
        let plan_now = |beside_uv: bool| {
            let mut keep = Protect::default();
            if beside_uv {
                protect(&root, &Usage::default(), grace, &mut keep);
            }
            // uv, between the protections and the plan:
            std::fs::create_dir_all(root.join(".tmpNEW/python")).unwrap();
            std::fs::create_dir_all(root.join("archive-v0/new")).unwrap();
            std::fs::write(root.join("wheels-v5/pypi/x/k.lock"), "").unwrap();
            let plan = crate::plan::plan(&root, crate::plan::Options { ci: true }, &keep);
            let targets: BTreeSet<String> =
                plan.targets.iter().map(|t| t.rel.display().to_string()).collect();
            (plan, targets)
        };
        let (_, alone) = plan_now(false);
        assert!(alone.contains(".tmpNEW") && alone.contains("archive-v0/new"), "{alone:?}");
        std::fs::remove_dir_all(root.join(".tmpNEW")).unwrap();
        std::fs::remove_dir_all(root.join("archive-v0/new")).unwrap();

        // A uv process locks the wheel entry it is writing, after the protections.
        let lock = std::fs::File::create(root.join("wheels-v5/pypi/x/k.lock")).unwrap();
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
        let (plan, beside) = plan_now(true);
        assert!(!beside.contains(".tmpNEW") && !beside.contains("archive-v0/new"), "{beside:?}");
        assert!(beside.contains(".tmpOLD") && beside.contains("archive-v0/old"), "{beside:?}");
        assert_eq!(plan.kept.get(Path::new(".tmpNEW")), Some(&KeepReason::Young));
        assert_eq!(plan.kept.get(Path::new("archive-v0/new")), Some(&KeepReason::Young));
        assert!(!beside.iter().any(|t| t.starts_with("wheels-v5/pypi/x/k")), "{beside:?}");
        assert!(plan.kept.values().any(|k| *k == KeepReason::Locked), "{:?}", plan.kept);
    }

    #[test]
    fn requested_markers() {
        let tmp = tempfile::tempdir().unwrap();
        let sp = tmp.path().join("lib/python3.12/site-packages");
        std::fs::create_dir_all(sp.join("Sleepy_Tool-0.2.dist-info")).unwrap();
        std::fs::write(sp.join("Sleepy_Tool-0.2.dist-info/REQUESTED"), "").unwrap();
        std::fs::create_dir_all(sp.join("dep-1.0.dist-info")).unwrap();
        assert_eq!(requested_in_venv(tmp.path()).into_iter().collect::<Vec<_>>(), ["sleepy-tool"]);
    }
}
