//! Documents the ORIGINAL BUG (astral-sh/uv#11694) with the real uv, so we know the test
//! setup reproduces it: `uv cache prune` deletes the cached environment of a tool that is
//! still running, and the tool's next import fails with `ModuleNotFoundError`. These tests
//! assert uv's *broken* behaviour (and its lock, which only protects while the uv parent
//! lives); the safe-prune counterparts live next to them and assert the fix.
//!
//! The tool is `sleepy` (see `tests/common/packages.rs`): `uv tool run` spawns Python as
//! its child; the test probes it by asking it to import `sleepy.lazy` now.

mod common;

use std::time::Duration;

use common::process::{alive, become_subreaper, parent_of};
use common::{show, stderr, TestEnv};

/// Starts `sleepy` 0.1 under `uv tool run` and checks the probe works before any prune.
fn running_sleepy(env: &TestEnv, uv: &std::path::Path) -> common::RunningTool {
    let tool = env.spawn_tool(uv, "sleepy==0.1", "sleepy");
    assert_eq!(tool.probe(), "ok sleepy 0.1", "control probe before pruning");
    let environment = tool.environment();
    assert!(
        environment.starts_with(env.cache.join("archive-v0")),
        "tool runs from {environment:?}, not from the cache's archive-v0"
    );
    tool
}

#[test]
fn uv_prune_breaks_running_tool() {
    become_subreaper();
    let env = TestEnv::new();
    let mut tool = running_sleepy(&env, &common::uv());
    let environment = tool.environment();

    // Kill the uv parent: its shared lock on <cache>/.lock goes with it, the Python child
    // lives on (reparented, here to this test process as subreaper).
    let uv_pid = tool.uv.id();
    tool.kill_uv();
    assert!(alive(tool.pid()), "the tool died with its uv parent");
    assert_ne!(parent_of(tool.pid()), Some(uv_pid));

    let mut prune = env.uv_cmd();
    prune.args(["cache", "prune", "-v"]).env("UV_LOCK_TIMEOUT", "20");
    let out = prune.output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert!(stderr(&out).contains("Removing cached environment"), "{}", show(&out));
    assert!(!environment.exists(), "uv kept the running tool's environment");
    assert!(alive(tool.pid()));

    let answer = tool.probe();
    assert!(
        answer.starts_with("ModuleNotFoundError"),
        "expected the running tool to be broken, it answered {answer:?}"
    );
}

/// `uv run --with`: the tool runs from an overlay in `builds-v0` that extends a cached
/// environment in `archive-v0`. With its uv parent gone, `uv cache prune` removes both (the
/// overlay as a temporary build, the base as unreferenced once its link goes), and the tool's
/// next import fails. `tests/inuse.rs` has safe-prune's side of it.
#[test]
fn uv_prune_breaks_a_uv_run_with_overlay() {
    become_subreaper();
    let env = TestEnv::new();
    let mut tool = env.spawn_run_with("sleepy==0.1", "sleepy");
    let overlay = tool.environment();
    assert!(overlay.starts_with(env.cache.join("builds-v0")), "{overlay:?} is no overlay in builds-v0");
    assert!(overlay.join("pyvenv.cfg").is_file(), "{overlay:?} is no overlay venv");
    tool.kill_uv();
    assert!(alive(tool.pid()), "the tool died with its uv parent");

    let out = env.uv_cmd().args(["cache", "prune", "-v"]).env("UV_LOCK_TIMEOUT", "20").output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert!(!overlay.exists(), "uv kept the running overlay {overlay:?}\n{}", show(&out));
    let answer = tool.probe();
    assert!(answer.starts_with("ModuleNotFoundError"), "expected a broken tool, it answered {answer:?}");
}

#[test]
fn uv_prune_waits_for_the_lock_while_uv_runs_the_tool() {
    // While the uv parent lives it holds a shared flock on <cache>/.lock, so a plain prune
    // waits (here: times out after 1 s, exit 2) and removes nothing.
    let env = TestEnv::new();
    let tool = running_sleepy(&env, &common::uv());
    let before = common::snapshot(&env.cache);

    let mut prune = env.uv_cmd();
    prune.args(["cache", "prune"]).env("UV_LOCK_TIMEOUT", "1");
    let out = prune.output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(stderr(&out).contains("Timeout"), "{}", show(&out));
    common::assert_same_tree(&before, &common::snapshot(&env.cache), "after timed-out prune");
    assert_eq!(tool.probe(), "ok sleepy 0.1");
}

#[test]
fn uv_prune_force_breaks_running_tool() {
    // `--force` skips the lock and deletes the environment under the live uv parent.
    let env = TestEnv::new();
    let tool = running_sleepy(&env, &common::uv());
    let environment = tool.environment();

    let out = env.uv_cmd().args(["cache", "prune", "--force"]).output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert!(!environment.exists(), "uv --force kept the running tool's environment");
    let answer = tool.probe();
    assert!(answer.starts_with("ModuleNotFoundError"), "{answer:?}");
}

#[test]
fn uv_0_6_2_prune_breaks_running_tool() {
    // The version of the original report: no cache lock at all, so the prune deletes the
    // environment of a tool whose uv parent is alive and well.
    let env = TestEnv::new();
    let uv062 = common::uv062();
    let mut tool = running_sleepy(&env, &uv062);
    let environment = tool.environment();

    let out = env.uv062_cmd().args(["cache", "prune"]).output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert!(!environment.exists(), "uv 0.6.2 kept the running tool's environment");
    assert!(
        tool.uv.wait_timeout(Duration::from_millis(0)).is_none(),
        "the uv parent was expected to still run"
    );
    let answer = tool.probe();
    assert!(answer.starts_with("ModuleNotFoundError"), "{answer:?}");
    tool.kill_uv();
}

/// uv 0.6.2 takes no cache lock, so holding the lock exclusively does not keep it out: with a
/// uv 0.6.2 command using the cache, safe-prune prunes as beside running uv (an entry younger
/// than the grace period may be one it is writing), where uv's own prune would not look.
#[test]
fn a_running_uv_without_a_lock_is_pruned_beside() {
    let env = TestEnv::new();
    let uv062 = common::uv062();
    let mut tool = running_sleepy(&env, &uv062);
    let environment = tool.environment();
    // What an install by that uv leaves for a moment: an archive not linked yet.
    let fresh = env.cache.join("archive-v0/fresh-from-old-uv");
    std::fs::create_dir_all(fresh.join("lib")).unwrap();

    let out = env.run_safe_prune(&["-v", "--format", "json"]);
    assert!(out.status.success(), "{}", show(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["lock"], "concurrent", "{report:#}");
    let dry = env.run_safe_prune(&["-v", "--dry-run"]);
    assert!(stderr(&dry).contains("take no cache lock (uv < 0.8.19)"), "{}", show(&dry));
    assert!(fresh.exists(), "the fresh archive was removed beside uv 0.6.2: {report:#}");
    assert!(environment.exists(), "the running tool's environment was removed: {report:#}");
    assert_eq!(tool.probe(), "ok sleepy 0.1");
    tool.kill_uv();
}
