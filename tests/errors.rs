//! How failures reach the user, and the permission fix-ups uv makes too:
//! - an entry that cannot be removed is reported on stderr even with `-q` (also through the
//!   `uv` shim), listed in the JSON `errors`, makes the exit code 1 (2 through the shim, like
//!   uv), and the other entries still go;
//! - directories without permissions (mode 000), a whole entry or one inside it, are made
//!   accessible and removed. Root bypasses permissions, so these tests run safe-prune as
//!   `nobody` (`setpriv`, as tests/inuse.rs does);
//! - a fatal error with `--format json` still prints one JSON object on stdout.
#![cfg(target_os = "linux")]

mod common;

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{show, stderr};
use serde_json::Value;

const NOBODY: &str = "65534";

/// True when this test can switch to `nobody`; outside CI a non-root run skips.
fn can_switch_user() -> bool {
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if !root {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "this test must run as root in CI (it switches to nobody)"
        );
        eprintln!("skipping: not root, cannot switch to another user");
    }
    root
}

/// A temp dir `nobody` can traverse.
fn open_tempdir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    tmp
}

/// A uv cache in `dir/cache` with archives `names` that nothing references (prune removes
/// them), owned by `nobody`.
fn nobodys_cache(dir: &Path, names: &[&str]) -> PathBuf {
    let cache = dir.join("cache");
    std::fs::create_dir_all(cache.join("wheels-v7")).unwrap();
    std::fs::write(cache.join("CACHEDIR.TAG"), "Signature: 8a477f597d28d172789f06886806bc55").unwrap();
    for name in names {
        let lib = cache.join("archive-v0").join(name).join("lib");
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::write(lib.join("mod.py"), "x = 1\n").unwrap();
    }
    let status =
        Command::new("chown").args(["-R", &format!("{NOBODY}:{NOBODY}")]).arg(&cache).status().unwrap();
    assert!(status.success());
    cache
}

/// Runs a copy of the binary named `name` (`safe-prune`, or `uv` for the shim) as `nobody`
/// with `args` and `--cache-dir <cache>`.
fn as_nobody(cache: &Path, name: &str, args: &[&str]) -> Output {
    // A copy nobody can execute (the build directory may be closed to it).
    let dir = cache.parent().unwrap().join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join(name);
    if !bin.exists() {
        std::fs::copy(common::bin(), &bin).unwrap();
    }
    Command::new("setpriv")
        .args([&format!("--reuid={NOBODY}"), &format!("--regid={NOBODY}"), "--clear-groups"])
        .arg(&bin)
        .args(args)
        .args([OsStr::new("--cache-dir"), cache.as_os_str()])
        .env_clear()
        .env("HOME", cache.parent().unwrap())
        .output()
        .unwrap()
}

/// A cache of `nobody` with archives `free1`, `stuck`, `free2`, where `stuck` holds a
/// root-owned folder with a file: `nobody` cannot delete that file, so `stuck` fails.
fn cache_with_a_stuck_entry(dir: &Path) -> PathBuf {
    let cache = nobodys_cache(dir, &["free1", "stuck", "free2"]);
    let pinned = cache.join("archive-v0/stuck/pinned");
    std::fs::create_dir(&pinned).unwrap();
    std::fs::write(pinned.join("root-owned"), "x").unwrap();
    cache
}

#[test]
fn an_entry_that_cannot_be_removed_is_reported_even_when_quiet() {
    if !can_switch_user() {
        return;
    }
    // `-q`: nothing but the error, exit 1, the other entries gone.
    let tmp = open_tempdir();
    let cache = cache_with_a_stuck_entry(tmp.path());
    let out = as_nobody(&cache, "safe-prune", &["-q"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = stderr(&out);
    // The entry, then the path below it that could not go, each named once.
    assert!(
        err.lines().any(|l| l
            == "error: archive-v0/stuck: cannot remove pinned/root-owned: Permission denied (os error 13)"),
        "{}",
        show(&out)
    );
    assert!(err.lines().all(|l| l.starts_with("error: ")), "-q printed more than errors:\n{err}");
    assert!(out.stdout.is_empty(), "{}", show(&out));
    for free in ["free1", "free2"] {
        assert!(!cache.join("archive-v0").join(free).exists(), "{free} stayed\n{}", show(&out));
    }

    // JSON: the error is listed with its entry; the others are removed.
    let tmp = open_tempdir();
    let cache = cache_with_a_stuck_entry(tmp.path());
    let out = as_nobody(&cache, "safe-prune", &["--format", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", show(&out)));
    let errors = report["errors"].as_array().unwrap();
    assert!(
        errors.iter().any(|e| e["path"] == "archive-v0/stuck"
            && e["message"].as_str().unwrap().contains("Permission denied")),
        "{report:#}"
    );
    let removed: Vec<&str> =
        report["removed_entries"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert!(removed.contains(&"archive-v0/free1") && removed.contains(&"archive-v0/free2"), "{report:#}");

    // Through the shim, `uv -q cache prune`: uv's exit code for a failure (2), and the error.
    let tmp = open_tempdir();
    let cache = cache_with_a_stuck_entry(tmp.path());
    let out = as_nobody(&cache, "uv", &["-q", "cache", "prune"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(stderr(&out).lines().any(|l| l.starts_with("error: archive-v0/stuck")), "{}", show(&out));
    assert!(!cache.join("archive-v0/free1").exists(), "{}", show(&out));
}

#[test]
fn directories_without_permissions_are_made_accessible_and_removed() {
    if !can_switch_user() {
        return;
    }
    let tmp = open_tempdir();
    let cache = nobodys_cache(tmp.path(), &["locked", "inner", "free"]);
    // A whole entry of mode 000 (renaming a directory to another parent takes write
    // permission on it), and a mode-000 directory inside an entry (emptying it takes read
    // and search permission).
    std::fs::set_permissions(cache.join("archive-v0/locked"), std::fs::Permissions::from_mode(0o000))
        .unwrap();
    std::fs::set_permissions(cache.join("archive-v0/inner/lib"), std::fs::Permissions::from_mode(0o000))
        .unwrap();
    let out = as_nobody(&cache, "safe-prune", &["--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", show(&out)));
    assert_eq!(report["errors"], Value::Array(vec![]), "{report:#}");
    let left: Vec<_> =
        std::fs::read_dir(cache.join("archive-v0")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "left: {left:?}\n{report:#}");
    let trash: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".safe-prune-trash"))
        .collect();
    assert!(trash.is_empty(), "{trash:?}");
}

#[test]
fn a_fatal_error_with_json_prints_a_json_error() {
    let tmp = tempfile::tempdir().unwrap();
    let project = tmp.path().join("project");
    std::fs::create_dir_all(project.join(".git")).unwrap();
    std::fs::write(project.join("main.py"), "print('hi')\n").unwrap();
    let before = common::snapshot(&project);
    let out =
        Command::new(common::bin()).args(["--format", "json", "--cache-dir"]).arg(&project).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", show(&out)));
    let message = doc["error"].as_str().unwrap_or_else(|| panic!("no error message: {doc:#}"));
    assert!(message.contains("is not a uv cache"), "{doc:#}");
    assert_eq!(doc["cache_dir"], project.canonicalize().unwrap().to_str().unwrap(), "{doc:#}");
    // The same line on stderr as without JSON, and nothing touched.
    assert!(stderr(&out).contains("is not a uv cache"), "{}", show(&out));
    common::assert_same_tree(&before, &common::snapshot(&project), "after a refused run");

    // An unreadable configuration: no cache directory is known.
    let config = tmp.path().join("broken.toml");
    std::fs::write(&config, "cache-dir = [").unwrap();
    let out = Command::new(common::bin())
        .args(["--format", "json", "--config-file"])
        .arg(&config)
        .env_remove("UV_CACHE_DIR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", show(&out)));
    assert!(doc["error"].as_str().is_some_and(|m| m.contains("broken.toml")), "{doc:#}");
    assert_eq!(doc["cache_dir"], Value::Null, "{doc:#}");
}
