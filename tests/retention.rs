//! Retention rules with the real uv (offline, test packages from `--find-links`):
//! `--keep-tools` keeps the newest environment of each tool so the next `uv tool run` starts
//! without installing; `--older-than` removes only entries whose last use is older;
//! `--max-size` evicts the least recently used wheels (whole: link, pointers, archive) until
//! the cache fits, never one in use, and the kept wheels still serve installs from the cache.

// Linux only: `touch -d "40 days ago"` is GNU touch; macOS's takes no relative dates.
#![cfg(target_os = "linux")]

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{run_ok, show, stderr, Child, TestEnv};
use serde_json::Value;

/// Runs safe-prune on the test cache with `--format json`; asserts exit 0; returns the JSON.
fn prune_json(env: &TestEnv, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--format", "json"]);
    let out = env.run_safe_prune(&all);
    assert!(out.status.success(), "safe-prune {args:?}\n{}", show(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bad JSON ({e})\n{}", show(&out)))
}

/// `kept` paths with the given reason.
fn kept(json: &Value, reason: &str) -> Vec<String> {
    json["kept"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|k| k["reason"] == reason)
                .filter_map(|k| k["path"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// `removed_entries` as path → reason.
fn removed(json: &Value) -> BTreeMap<String, String> {
    json["removed_entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["path"].as_str().unwrap().to_string(), e["reason"].as_str().unwrap().to_string()))
        .collect()
}

/// One cached tool environment: its link and archive (relative to the cache).
#[derive(Debug, Clone)]
struct ToolEnv {
    link: String,
    archive: String,
}

/// Cached tool environments by requested distribution, `sleepy-0.1`, `dozy-1.0`.
fn tool_envs(cache: &Path) -> BTreeMap<String, ToolEnv> {
    let mut out = BTreeMap::new();
    let Ok(digests) = std::fs::read_dir(cache.join("environments-v2")) else { return out };
    for digest in digests.flatten() {
        let Ok(links) = std::fs::read_dir(digest.path()) else { continue };
        for link in links.flatten() {
            if !link.file_type().unwrap().is_symlink() {
                continue;
            }
            let Ok(archive) = std::fs::canonicalize(link.path()) else { continue };
            for lib in std::fs::read_dir(archive.join("lib")).unwrap().flatten() {
                for dist in std::fs::read_dir(lib.path().join("site-packages")).unwrap().flatten() {
                    let name = dist.file_name().to_string_lossy().into_owned();
                    if let Some(stem) = name.strip_suffix(".dist-info") {
                        if dist.path().join("REQUESTED").exists() {
                            let rel = |p: &Path| p.strip_prefix(cache).unwrap().display().to_string();
                            out.insert(
                                stem.to_string(),
                                ToolEnv { link: rel(&link.path()), archive: rel(&archive) },
                            );
                        }
                    }
                }
            }
        }
    }
    out
}

fn names(envs: &BTreeMap<String, ToolEnv>) -> Vec<&str> {
    envs.keys().map(String::as_str).collect()
}

/// The names in `archive-v0`, sorted.
fn archives(cache: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(cache.join("archive-v0"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

/// Runs the three tools, oldest first: sleepy 0.1, sleepy 0.2, dozy 1.0.
fn run_three_tools(env: &TestEnv) {
    env.tool_run("sleepy==0.1", "sleepy");
    env.tool_run("sleepy==0.2", "sleepy");
    env.tool_run("dozy==1.0", "dozy");
    assert_eq!(names(&tool_envs(&env.cache)), ["dozy-1.0", "sleepy-0.1", "sleepy-0.2"]);
}

/// `uv tool run --offline --find-links W --from <from> <script> --once`: asserts it ran and
/// installed nothing (so it reused its cached environment).
fn assert_reused(env: &TestEnv, from: &str, script: &str) {
    let before = archives(&env.cache);
    let out = run_ok(&mut env.tool_run_cmd(&common::uv(), from, script, &["--once"]));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ready"), "{}", show(&out));
    let err = stderr(&out);
    assert!(!err.contains("Installed") && !err.contains("Prepared"), "{from} was installed again:\n{err}");
    assert_eq!(archives(&env.cache), before, "{from}: archive-v0 changed");
}

#[test]
fn keep_tools_keeps_the_newest_environment_of_each_tool() {
    let env = TestEnv::new();
    run_three_tools(&env);
    let envs = tool_envs(&env.cache);

    let json = prune_json(&env, &["--keep-tools"]);
    let left = tool_envs(&env.cache);
    assert_eq!(names(&left), ["dozy-1.0", "sleepy-0.2"], "{json:#}");
    let gone = &envs["sleepy-0.1"];
    assert!(!env.cache.join(&gone.archive).exists());
    let removed = removed(&json);
    assert_eq!(removed.get(&gone.link).map(String::as_str), Some("cached-environment"), "{json:#}");
    assert_eq!(removed.get(&gone.archive).map(String::as_str), Some("unreferenced-archive"), "{json:#}");
    let newest = kept(&json, "kept-newest-tool");
    for tool in ["sleepy-0.2", "dozy-1.0"] {
        let e = &envs[tool];
        let lock = format!("{}.lock", e.link);
        for path in [&e.link, &lock, &e.archive] {
            assert!(newest.contains(path), "{path} not reported as kept-newest-tool: {json:#}");
            assert!(env.cache.join(path).exists(), "{path} removed");
        }
    }

    // The kept environments are used as they are: nothing is installed or unpacked.
    assert_reused(&env, "sleepy==0.2", "sleepy");
    assert_reused(&env, "dozy==1.0", "dozy");
    // Control: the pruned one is installed again (so the check above means something).
    let out = run_ok(&mut env.tool_run_cmd(&common::uv(), "sleepy==0.1", "sleepy", &["--once"]));
    assert!(stderr(&out).contains("Installed"), "{}", show(&out));
}

#[test]
fn keep_tools_2_keeps_both_versions_and_plain_prune_keeps_none() {
    let env = TestEnv::new();
    run_three_tools(&env);
    let json = prune_json(&env, &["--keep-tools=2", "--dry-run"]);
    assert_eq!(kept(&json, "kept-newest-tool").len(), 9, "3 links, 3 locks, 3 archives: {json:#}");
    prune_json(&env, &["--keep-tools=2"]);
    assert_eq!(names(&tool_envs(&env.cache)), ["dozy-1.0", "sleepy-0.1", "sleepy-0.2"]);
    assert_reused(&env, "sleepy==0.1", "sleepy");
    // `--keep-tools N` needs the `=`: N is never taken for something else.
    let out = env.run_safe_prune(&["--keep-tools", "2", "--dry-run"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    prune_json(&env, &[]);
    assert!(tool_envs(&env.cache).is_empty());
}

/// `touch` with `-h` (the link itself) and an optional date.
fn touch(path: &Path, date: Option<&str>) {
    let mut cmd = Command::new("touch");
    cmd.arg("-h");
    if let Some(date) = date {
        cmd.args(["-d", date]);
    }
    run_ok(cmd.arg(path));
}

#[test]
fn older_than_removes_only_entries_unused_for_that_long() {
    let env = TestEnv::new();
    env.tool_run("sleepy==0.1", "sleepy");
    env.tool_run("dozy==1.0", "dozy");
    let envs = tool_envs(&env.cache);
    let (sleepy, dozy) = (&envs["sleepy-0.1"], &envs["dozy-1.0"]);
    let stale_tmp = env.cache.join(".tmpOldLeak");
    std::fs::create_dir(&stale_tmp).unwrap();

    // Backdated access and modification times alone do not age an entry: its change time
    // (which `touch` cannot set) is younger evidence, and it is never ignored.
    for rel in [&sleepy.link, &format!("{}.lock", sleepy.link), &sleepy.archive] {
        touch(&env.cache.join(rel), Some("40 days ago"));
    }
    touch(&env.cache.join(&sleepy.archive).join("pyvenv.cfg"), Some("40 days ago"));
    let json = prune_json(&env, &["--older-than", "30d", "--dry-run"]);
    assert!(removed(&json).is_empty(), "{json:#}");
    assert!(kept(&json, "recent").contains(&sleepy.link), "{json:#}");

    // Let everything age past 8 seconds, then use dozy again and leave a fresh temp dir.
    std::thread::sleep(Duration::from_secs(9));
    let cfg = env.cache.join(&dozy.archive).join("pyvenv.cfg");
    let atime_before = std::fs::metadata(&cfg).unwrap().atime();
    env.tool_run("dozy==1.0", "dozy");
    if std::fs::metadata(&cfg).unwrap().atime() == atime_before {
        // The mount did not record this read (`noatime`, or `relatime` within a day of the
        // last recorded one, which safe-prune allows for): stand in for Python's read.
        touch(&cfg, None);
    }
    let fresh_tmp = env.cache.join(".tmpFreshLeak");
    std::fs::create_dir(&fresh_tmp).unwrap();

    let json = prune_json(&env, &["--older-than", "8s"]);
    let removed = removed(&json);
    assert_eq!(removed.get(&sleepy.link).map(String::as_str), Some("cached-environment"), "{json:#}");
    assert_eq!(removed.get(&sleepy.archive).map(String::as_str), Some("unreferenced-archive"), "{json:#}");
    assert_eq!(removed.get(".tmpOldLeak").map(String::as_str), Some("unknown-entry"), "{json:#}");
    assert!(!stale_tmp.exists() && fresh_tmp.exists());
    let recent = kept(&json, "recent");
    for path in [&dozy.link, &dozy.archive, &".tmpFreshLeak".to_string()] {
        assert!(recent.contains(path), "{path} not kept as recent: {json:#}");
    }
    // A kept link keeps its archive: dozy still starts from the cache.
    assert_eq!(names(&tool_envs(&env.cache)), ["dozy-1.0"]);
    assert_reused(&env, "dozy==1.0", "dozy");
}

/// Allocated bytes of everything below `paths` (not following links), each inode once.
fn du(paths: &[PathBuf]) -> u64 {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let mut stack: Vec<PathBuf> = paths.to_vec();
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else { continue };
        if seen.insert((meta.dev(), meta.ino())) {
            total += meta.blocks() * 512;
        }
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().flatten().map(|e| e.path()));
        }
    }
    total
}

/// Directories named `name` below `root` (not below one another; links not followed).
fn dirs_named(root: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                if e.file_name() == name {
                    out.push(e.path());
                } else {
                    stack.push(e.path());
                }
            }
        }
    }
    out
}

/// The wheel directory `wheels-v7/<kind>/.../<name>` of a package.
fn wheel_dir(cache: &Path, name: &str) -> PathBuf {
    let dirs = dirs_named(&cache.join("wheels-v7"), name);
    assert_eq!(dirs.len(), 1, "wheel directories of {name}: {dirs:?}");
    dirs[0].clone()
}

/// The link, pointers and archive of one cached wheel.
fn wheel_unit(cache: &Path, name: &str, key: &str) -> Vec<PathBuf> {
    let dir = wheel_dir(cache, name);
    let mut out: Vec<PathBuf> =
        ["", ".http", ".rev", ".msgpack", ".lock"].iter().map(|s| dir.join(format!("{key}{s}"))).collect();
    out.push(std::fs::canonicalize(dir.join(key)).unwrap());
    out
}

#[test]
fn max_size_evicts_least_recently_used_wheels_whole() {
    let env = TestEnv::new();
    let venv = env.work.join("venv");
    let find_links = ["--offline".as_ref(), "--find-links".as_ref(), env.wheels.as_os_str()];
    run_ok(env.uv_cmd().arg("venv").arg(&venv));
    // Oldest first: an sdist (its unpacked src/), three tools, then tinylib, used last.
    run_ok(env.uv_cmd().args(["pip", "install", "--python"]).arg(&venv).args(find_links).arg("srclib"));
    run_three_tools(&env);
    std::thread::sleep(Duration::from_millis(50));
    run_ok(env.uv_cmd().args(["pip", "install", "--python"]).arg(&venv).args(find_links).arg("tinylib"));
    // (Found without reading any file: reading a wheel's pointer file counts as using it.)
    let src = dirs_named(&env.cache.join("sdists-v10"), "src");
    assert_eq!(src.len(), 1, "one unpacked sdist expected");

    // sleepy 0.1's wheel is in use: a process works inside its archive.
    let held = wheel_unit(&env.cache, "sleepy", "0.1-py3-none-any");
    let held_archive = held.last().unwrap().clone();
    let sleeper = Child(
        Command::new("sleep").arg("600").current_dir(&held_archive).stdin(Stdio::null()).spawn().unwrap(),
    );

    // The smallest the cache can get: everything evictable gone (dry run).
    let json = prune_json(&env, &["--max-size", "0", "--dry-run"]);
    let floor = json["size_after"].as_u64().unwrap_or_else(|| panic!("no size_after: {json:#}"));
    let evicted: Vec<String> =
        removed(&json).into_iter().filter(|(_, r)| r == "over-size-limit").map(|(p, _)| p).collect();
    assert!(evicted.iter().any(|p| p.ends_with("/src")), "{json:#}");
    assert!(!evicted.iter().any(|p| held_archive.ends_with(p)), "in-use archive evicted: {json:#}");

    // A budget with room for tinylib's wheel (the most recently used) and nothing more.
    let tinylib = wheel_unit(&env.cache, "tinylib", "1.0-py3-none-any");
    let whole: Vec<PathBuf> = tinylib.iter().chain(&held).filter(|p| p.exists()).cloned().collect();
    assert!(whole.len() >= 6, "link, pointer and archive of two wheels: {whole:?}");
    let budget = floor + du(&tinylib) + 2048;
    let json = prune_json(&env, &["--max-size", &budget.to_string()]);
    let size_after = json["size_after"].as_u64().unwrap();
    assert!(size_after <= budget, "size_after {size_after} > budget {budget} (floor {floor}): {json:#}");
    assert!(du(std::slice::from_ref(&env.cache)) <= budget, "measured cache larger than {budget}");

    // tinylib stays whole, the held wheel stays whole, the other wheels and src/ went whole.
    for path in &whole {
        assert!(path.exists(), "{} removed: {json:#}", path.display());
    }
    for (name, key) in [("sleepy", "0.2-py3-none-any"), ("dozy", "1.0-py3-none-any")] {
        let dir = wheel_dir(&env.cache, name);
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(left.iter().all(|n| !n.to_string_lossy().starts_with(key)), "{name} left {left:?}");
    }
    assert!(!src[0].exists() && src[0].parent().unwrap().join("metadata.msgpack").exists());
    assert!(common::alive(sleeper.id()) && held_archive.is_dir());
    let in_use: Vec<&str> =
        json["kept_in_use"].as_array().unwrap().iter().filter_map(|k| k["path"].as_str()).collect();
    assert!(in_use.iter().any(|p| held_archive.ends_with(p)), "held wheel not reported in use: {json:#}");

    // Every remaining link resolves and every pointer has its link.
    for rel in common::snapshot(&env.cache.join("wheels-v7")).keys() {
        let path = env.cache.join("wheels-v7").join(rel);
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_symlink() {
            assert!(path.canonicalize().is_ok(), "dangling {}", path.display());
        } else if let Some(key) = name.strip_suffix(".rev").or_else(|| name.strip_suffix(".http")) {
            assert!(
                path.with_file_name(key).canonicalize().is_ok(),
                "pointer without wheel: {}",
                path.display()
            );
        }
    }

    // tinylib installs from the cache: nothing downloaded or unpacked.
    let fresh = env.work.join("fresh");
    run_ok(env.uv_cmd().arg("venv").arg(&fresh));
    let out: Output =
        run_ok(env.uv_cmd().args(["pip", "install", "--python"]).arg(&fresh).args(find_links).arg("tinylib"));
    assert!(!stderr(&out).contains("Prepared"), "tinylib was unpacked again:\n{}", show(&out));
    assert!(stderr(&out).contains("Installed 1 package"), "{}", show(&out));
}

#[test]
fn max_size_with_ci_and_budget_already_met() {
    let env = TestEnv::new();
    run_three_tools(&env);
    // A generous budget removes nothing beyond the normal prune and reports the size.
    let json = prune_json(&env, &["--ci", "--max-size", "10GiB"]);
    assert!(removed(&json).values().all(|r| r != "over-size-limit"), "{json:#}");
    let size = json["size_after"].as_u64().unwrap();
    assert!(size > 0 && size <= du(std::slice::from_ref(&env.cache)), "{json:#}");
    // Without --max-size there is no size_after.
    let json = prune_json(&env, &["--dry-run"]);
    assert!(json.get("size_after").is_none(), "{json:#}");
    // Sizes are validated.
    let out = env.run_safe_prune(&["--max-size", "lots"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
}
