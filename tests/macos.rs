//! macOS end to end (issue 8): the libproc backend, through the whole program, keeps the
//! environment of a tool that runs on after its uv parent is gone, with the real uv 0.13.8.
//!
//! `uv tool run` starts `sleepy` (see `tests/common/packages.rs`) from a cached environment;
//! the uv parent is SIGKILLed (its cache lock goes with it, the Python child lives on,
//! reparented to launchd); `safe-prune prune` then runs with uv's lock free, as after a
//! crashed or killed uv. The environment must stay and the tool must still import a module
//! it had not imported before; an environment no process uses must go. `tests/inuse_uv.rs`
//! (also run on macOS) shows that uv's own prune breaks the same tool.
#![cfg(target_os = "macos")]

mod common;

use std::path::Path;
use std::time::Duration;

use common::process::{alive, parent_of, wait_until};
use common::{show, TestEnv};

/// `path` relative to the cache, as safe-prune's JSON names entries.
fn relative(cache: &Path, path: &Path) -> String {
    path.strip_prefix(cache)
        .unwrap_or_else(|_| panic!("{} is not in the cache {}", path.display(), cache.display()))
        .to_string_lossy()
        .into_owned()
}

#[test]
fn a_tool_whose_uv_parent_died_keeps_its_environment_and_an_unused_one_goes() {
    let env = TestEnv::new();
    let archives = env.cache.join("archive-v0");

    // An environment nothing uses any more: dozy ran under uv, then both were killed.
    let (unused, dozy_pid) = {
        let dozy = env.spawn_tool(&common::uv(), "dozy", "dozy");
        (dozy.environment(), dozy.pid())
    };
    assert!(unused.starts_with(&archives), "dozy runs from {unused:?}, not from archive-v0");
    assert!(wait_until(Duration::from_secs(30), || !alive(dozy_pid)), "dozy (pid {dozy_pid}) survived");

    let mut tool = env.spawn_tool(&common::uv(), "sleepy==0.1", "sleepy");
    let environment = tool.environment();
    assert!(environment.starts_with(&archives), "sleepy runs from {environment:?}, not from archive-v0");
    assert_ne!(environment, unused);

    // The uv parent dies; the tool lives on without it. It has not imported `sleepy.lazy` yet.
    let uv_pid = tool.uv.id();
    tool.kill_uv();
    assert!(alive(tool.pid()), "the tool died with its uv parent");
    assert_ne!(parent_of(tool.pid()), Some(uv_pid));

    let out = env.run_safe_prune(&["prune", "--format", "json"]);
    assert!(out.status.success(), "{}", show(&out));
    let doc: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bad JSON ({e})\n{}", show(&out)));
    assert_eq!(doc["lock"], "exclusive", "no uv holds the cache lock any more: {doc:#}");

    // The running tool's environment stays, held by the tool's own process.
    assert!(environment.join("bin").is_dir(), "the running tool's environment was removed: {doc:#}");
    let rel = relative(&env.cache, &environment);
    let kept = doc["kept_in_use"]
        .as_array()
        .and_then(|k| k.iter().find(|k| k["path"] == rel.as_str()))
        .unwrap_or_else(|| panic!("{rel} is not in kept_in_use: {doc:#}"));
    let holders = kept["holders"].as_array().unwrap_or_else(|| panic!("no holders: {kept:#}"));
    assert!(
        holders.iter().any(|h| h["pid"] == tool.pid()),
        "pid {} does not hold {rel}: {kept:#}",
        tool.pid()
    );

    // The unused environment goes.
    assert!(!unused.exists(), "the unused environment {} was kept: {doc:#}", unused.display());

    // The tool imports a module it had not imported before, from the environment that stayed.
    assert_eq!(tool.probe(), "ok sleepy 0.1");
}
