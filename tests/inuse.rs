//! safe-prune keeps every cache entry a running process uses, found with no help from the
//! launcher, and names the holder. Each test holds one entry by exactly one kind of evidence
//! (exec, cwd, open fd, mmap with the fd closed, `PATH`, an argv path, a thread's own cwd, a
//! bind mount, a name with a newline and " (deleted)") with a real child process; the held
//! entry must survive, an unused sibling must go, and the JSON must name the right pid and
//! evidence. The real-uv tests are the fix for the bug `tests/inuse_uv.rs` documents.
#![cfg(target_os = "linux")]

mod common;

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::process::{alive, become_subreaper, Child};
use common::{show, TestEnv};
use serde_json::Value;

/// A minimal uv cache (tag, a bucket) with two unreferenced archives: `held` and `unused`.
fn synthetic_cache(dir: &Path, held: &str) -> PathBuf {
    let cache = dir.join("cache");
    std::fs::create_dir_all(cache.join("wheels-v7")).unwrap();
    std::fs::write(cache.join("CACHEDIR.TAG"), "Signature: 8a477f597d28d172789f06886806bc55").unwrap();
    for name in [held, "unused"] {
        let entry = cache.join("archive-v0").join(name);
        std::fs::create_dir_all(entry.join("bin")).unwrap();
        std::fs::write(entry.join("data.bin"), vec![7u8; 8192]).unwrap();
    }
    cache
}

/// Runs `safe-prune --format json` on `cache`, returns the parsed report.
fn prune_json(cache: &Path, extra: &[&str]) -> Value {
    let out = Command::new(common::bin())
        .args(["--format", "json", "--cache-dir"])
        .arg(cache)
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.code() == Some(0), "{}", show(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {}", show(&out)))
}

/// The holders the report lists for `entry`.
fn holders<'a>(report: &'a Value, entry: &str) -> Vec<&'a Value> {
    report["kept_in_use"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["path"] == entry)
        .flat_map(|k| k["holders"].as_array().unwrap())
        .collect()
}

/// Asserts `held` survived with a holder `pid`/`evidence`, and `unused` was removed.
fn assert_kept_by(cache: &Path, report: &Value, held: &str, pid: u32, evidence: &str) {
    let entry = format!("archive-v0/{held}");
    assert!(cache.join(&entry).join("data.bin").exists(), "{entry} was removed: {report:#}");
    assert!(!cache.join("archive-v0/unused").exists(), "the unused sibling survived: {report:#}");
    let found = holders(report, &entry);
    assert!(
        found.iter().any(|h| h["pid"] == pid && h["evidence"] == evidence),
        "expected pid {pid} by {evidence} for {entry}, got {found:#?}"
    );
}

/// Spawns `cmd` and waits until `ready` says the child has set itself up.
fn spawn_ready(cmd: &mut Command, ready: impl Fn(u32) -> bool) -> Child {
    let child = Child(cmd.stdin(Stdio::null()).spawn().unwrap());
    let pid = child.id();
    let ok = common::process::wait_until(Duration::from_secs(20), || ready(pid));
    assert!(ok, "child {pid} did not get ready");
    child
}

/// Python that maps `argv[1]` with libc's mmap and closes the fd (Python's own `mmap` keeps
/// a dup of the fd open, which would make this an fd test).
macro_rules! map_and_close {
    () => {
        "import ctypes,os,sys,time\n\
         libc=ctypes.CDLL(None,use_errno=True)\n\
         libc.mmap.restype=ctypes.c_void_p\n\
         libc.mmap.argtypes=[ctypes.c_void_p,ctypes.c_size_t,ctypes.c_int,ctypes.c_int,ctypes.c_int,ctypes.c_long]\n\
         fd=os.open(sys.argv[1],os.O_RDONLY)\n\
         addr=libc.mmap(None,4096,1,1,fd,0)\n\
         assert addr not in (None,ctypes.c_void_p(-1).value)\n\
         os.close(fd)\n"
    };
}

fn link_points_into(pid: u32, link: &str, dir: &Path) -> bool {
    std::fs::read_link(format!("/proc/{pid}/{link}")).is_ok_and(|t| t.starts_with(dir))
}

#[test]
fn exec_of_a_binary_inside_an_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = synthetic_cache(tmp.path(), "exe");
    let sleep = cache.join("archive-v0/exe/bin/sleep");
    std::fs::copy("/bin/sleep", &sleep).unwrap();
    let _child =
        spawn_ready(Command::new(&sleep).arg("60").env_clear(), |pid| link_points_into(pid, "exe", &cache));
    let report = prune_json(&cache, &[]);
    assert_kept_by(&cache, &report, "exe", _child.id(), "exe");
}

#[test]
fn working_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = synthetic_cache(tmp.path(), "cwd");
    let dir = cache.join("archive-v0/cwd/bin");
    let child = spawn_ready(Command::new("sleep").arg("60").current_dir(&dir).env_clear(), |pid| {
        link_points_into(pid, "cwd", &cache)
    });
    let report = prune_json(&cache, &[]);
    assert_kept_by(&cache, &report, "cwd", child.id(), "cwd");
}

#[test]
fn open_file_descriptor() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = synthetic_cache(tmp.path(), "fd");
    let file = cache.join("archive-v0/fd/data.bin");
    let child = spawn_ready(
        Command::new("/bin/sh").args(["-c", "exec 3<\"$1\"; exec sleep 60", "sh"]).arg(&file).env_clear(),
        |pid| link_points_into(pid, "fd/3", &cache),
    );
    let report = prune_json(&cache, &[]);
    assert_kept_by(&cache, &report, "fd", child.id(), "fd");
}

#[test]
fn memory_map_with_the_fd_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = synthetic_cache(tmp.path(), "map");
    let file = cache.join("archive-v0/map/data.bin");
    let script = concat!(map_and_close!(), "print('ready',flush=True)\ntime.sleep(60)\n");
    let mut cmd = Command::new(common::python());
    cmd.args(["-c", script]).arg(&file).env_clear().stdout(Stdio::piped());
    let child = spawn_ready(&mut cmd, |pid| {
        std::fs::read(format!("/proc/{pid}/maps"))
            .is_ok_and(|m| memchr::memmem::find(&m, file.as_os_str().as_bytes()).is_some())
    });
    // The fd is closed: only the mapping holds the file.
    let fds: Vec<PathBuf> = std::fs::read_dir(format!("/proc/{}/fd", child.id()))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .collect();
    assert!(!fds.iter().any(|t| t.starts_with(&cache)), "fd still open: {fds:?}");
    let report = prune_json(&cache, &[]);
    assert_kept_by(&cache, &report, "map", child.id(), "map");
}

#[test]
fn path_in_a_clean_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = synthetic_cache(tmp.path(), "env");
    let path = format!("{}:/usr/bin:/bin", cache.join("archive-v0/env/bin").display());
    let child = spawn_ready(Command::new("/bin/sleep").arg("60").env_clear().env("PATH", &path), alive);
    let report = prune_json(&cache, &[]);
    assert_kept_by(&cache, &report, "env", child.id(), "environ");
    let detail = holders(&report, "archive-v0/env")[0]["detail"].as_str().unwrap().to_string();
    assert!(detail.starts_with("PATH="), "{detail}");
}

#[test]
fn path_in_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = synthetic_cache(tmp.path(), "argv");
    let arg = cache.join("archive-v0/argv/bin/tool");
    let child =
        spawn_ready(Command::new("/bin/sh").args(["-c", "sleep 60", "sh"]).arg(&arg).env_clear(), |pid| {
            alive(pid)
        });
    let report = prune_json(&cache, &[]);
    assert_kept_by(&cache, &report, "argv", child.id(), "cmdline");
}

#[test]
fn a_thread_with_its_own_working_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = synthetic_cache(tmp.path(), "thread");
    let dir = cache.join("archive-v0/thread");
    // unshare(CLONE_FS) in a second thread, then chdir: only task/TID/cwd shows the entry.
    let script = "import ctypes,os,sys,threading,time\n\
libc=ctypes.CDLL(None,use_errno=True)\n\
def t():\n    assert libc.unshare(0x200)==0\n    os.chdir(sys.argv[1])\n    print('ready',flush=True)\n    time.sleep(60)\n\
threading.Thread(target=t,daemon=True).start()\ntime.sleep(60)\n";
    let mut cmd = Command::new(common::python());
    cmd.args(["-c", script]).arg(&dir).env_clear().current_dir("/").stdout(Stdio::piped());
    let child = spawn_ready(&mut cmd, |pid| {
        std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|tasks| {
            tasks.flatten().any(|t| std::fs::read_link(t.path().join("cwd")).is_ok_and(|c| c == dir))
        })
    });
    assert!(!link_points_into(child.id(), "cwd", &cache), "the main thread must not be in the cache");
    let report = prune_json(&cache, &[]);
    assert_kept_by(&cache, &report, "thread", child.id(), "thread-cwd");
}

#[test]
fn entry_name_with_newline_and_deleted_suffix_mapped_then_unlinked() {
    let tmp = tempfile::tempdir().unwrap();
    let held = "odd\nname (deleted)";
    let cache = synthetic_cache(tmp.path(), held);
    let file = cache.join("archive-v0").join(held).join("lib (deleted).so");
    std::fs::write(&file, vec![1u8; 4096]).unwrap();
    let script =
        concat!(map_and_close!(), "os.unlink(sys.argv[1])\nprint('ready',flush=True)\ntime.sleep(60)\n");
    let mut cmd = Command::new(common::python());
    cmd.args(["-c", script]).arg(&file).env_clear().stdout(Stdio::piped());
    let child = spawn_ready(&mut cmd, |_| !file.exists());
    let report = prune_json(&cache, &[]);
    assert_kept_by(&cache, &report, held, child.id(), "map");
}

#[test]
fn bind_mount_of_an_entry_in_another_mount_namespace() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = synthetic_cache(tmp.path(), "bound");
    let entry = cache.join("archive-v0/bound");
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    // A private mount namespace: the child sees the entry only as `elsewhere`, a path that
    // means nothing in ours, so only device+inode matching can catch it.
    let probe = Command::new("unshare").args(["-m", "--propagation", "private", "true"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("unshare -m is not permitted here; this test needs CAP_SYS_ADMIN");
        }
        eprintln!("skipping bind-mount test: this user may not create mount namespaces (unshare -m failed)");
        return;
    }
    let script = format!(
        "mount --bind '{}' '{}' && cd '{}' && exec sleep 60",
        entry.display(),
        elsewhere.display(),
        elsewhere.display()
    );
    let child = spawn_ready(
        Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-c", &script]),
        |pid| {
            // The sleep (same pid, exec'd) has its cwd in the bind mount.
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|c| c == elsewhere)
        },
    );
    let report = prune_json(&cache, &[]);
    assert_kept_by(&cache, &report, "bound", child.id(), "cwd");
}

/// The original bug in a container: a process in another mount namespace sees the cache only
/// under a path that exists in its namespace alone (a tmpfs of its own with the cache bound
/// below it, like a host cache bound at `/root/.cache/uv`) and names the entry only in
/// `PATH`. Nothing else of it is in the cache, so only that namespace's mountinfo tells
/// what the path means.
#[test]
fn path_spelled_by_another_mount_namespace() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = synthetic_cache(tmp.path(), "nsenv");
    let ns_only = tmp.path().join("ns-only");
    std::fs::create_dir(&ns_only).unwrap();
    let system_path = "/usr/sbin:/usr/bin:/sbin:/bin";
    let probe = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "mount", "-t", "tmpfs", "none"])
        .arg(&ns_only)
        .env_clear()
        .env("PATH", system_path)
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("unshare --mount plus a tmpfs mount is not permitted here; this test needs CAP_SYS_ADMIN");
        }
        eprintln!("skipping: this user may not mount in a new mount namespace (unshare --mount failed)");
        return;
    }
    let inner = ns_only.join("inner");
    let path = format!("{}:/usr/bin:/bin", inner.join("archive-v0/nsenv/bin").display());
    let script = "mount -t tmpfs none \"$1\" && mkdir \"$1/inner\" && mount --bind \"$2\" \"$1/inner\" \
                  && exec env -i PATH=\"$3\" sleep 600";
    let child = spawn_ready(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", script, "sh"])
            .arg(&ns_only)
            .arg(&cache)
            .arg(&path)
            .env_clear()
            .env("PATH", system_path),
        |pid| common::process::environ_var(pid, "PATH").is_some_and(|p| p == path.as_str()),
    );
    assert!(!inner.exists(), "the namespace's mounts are visible here: the test proves nothing");

    let report = prune_json(&cache, &[]);
    assert_kept_by(&cache, &report, "nsenv", child.id(), "environ");
    // The user sees the path as the process wrote it.
    let found = holders(&report, "archive-v0/nsenv");
    let detail = found.iter().find(|h| h["pid"] == child.id()).unwrap()["detail"].as_str().unwrap();
    assert!(detail.starts_with(&format!("PATH={}", inner.display())), "{detail}");
}

#[test]
fn dry_run_deletes_nothing_and_in_use_lists_holders() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = synthetic_cache(tmp.path(), "dry");
    let before = common::snapshot(&cache);
    let child = spawn_ready(
        Command::new("sleep").arg("60").current_dir(cache.join("archive-v0/dry")).env_clear(),
        |pid| link_points_into(pid, "cwd", &cache),
    );
    let report = prune_json(&cache, &["--dry-run"]);
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["removed_entries"][0]["path"], "archive-v0/unused", "{report:#}");
    common::assert_same_tree(&before, &common::snapshot(&cache), "after a dry run");

    let out = Command::new(common::bin())
        .args(["in-use", "--format", "json", "--cache-dir"])
        .arg(&cache)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let listing: Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = listing["in_use"].as_array().unwrap();
    assert!(
        entries.iter().any(|e| e["path"] == "archive-v0/dry"
            && e["holders"].as_array().unwrap().iter().any(|h| h["pid"] == child.id())),
        "{listing:#}"
    );
    common::assert_same_tree(&before, &common::snapshot(&cache), "after in-use");
}

// ---- the original bug, with the real uv: the fix -------------------------------------

/// Starts `sleepy` 0.1 with `uv tool run`, with an unused `dozy` environment beside it.
fn running_tool_beside_unused(env: &TestEnv) -> common::RunningTool {
    env.tool_run("dozy", "dozy");
    let tool = env.spawn_tool(&common::uv(), "sleepy==0.1", "sleepy");
    assert_eq!(tool.probe(), "ok sleepy 0.1");
    tool
}

/// The environments-v2 links and their archives, as (link, target) pairs.
fn environment_links(cache: &Path) -> Vec<(PathBuf, PathBuf)> {
    let mut out = Vec::new();
    for digest in std::fs::read_dir(cache.join("environments-v2")).into_iter().flatten().flatten() {
        for link in std::fs::read_dir(digest.path()).into_iter().flatten().flatten() {
            if !link.file_type().is_ok_and(|t| t.is_symlink()) {
                continue;
            }
            if let Ok(target) = std::fs::canonicalize(link.path()) {
                out.push((link.path(), target));
            }
        }
    }
    out
}

#[test]
fn keeps_a_running_tool_whose_uv_parent_was_killed() {
    become_subreaper();
    let env = TestEnv::new();
    let mut tool = running_tool_beside_unused(&env);
    let environment = tool.environment();
    let unused: Vec<PathBuf> =
        environment_links(&env.cache).into_iter().map(|(_, t)| t).filter(|t| *t != environment).collect();
    assert_eq!(unused.len(), 1, "expected exactly the dozy environment beside the tool");
    tool.kill_uv();
    assert!(alive(tool.pid()));

    let out = env.run_safe_prune(&["--format", "json"]);
    assert!(out.status.success(), "{}", show(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["lock"], "exclusive", "the uv parent is dead, its lock gone: {report:#}");
    assert!(environment.join("pyvenv.cfg").exists(), "the running tool's environment was removed");
    assert!(!unused[0].exists(), "the unused dozy environment survived");
    let entry = format!("archive-v0/{}", environment.file_name().unwrap().to_str().unwrap());
    let found = holders(&report, &entry);
    assert!(found.iter().any(|h| h["pid"] == tool.pid() && h["evidence"] == "environ"), "{report:#}");
    // The link to the running environment is kept too: `uvx sleepy==0.1` reuses it.
    assert!(
        environment_links(&env.cache).iter().any(|(_, t)| *t == environment),
        "the environments-v2 link to the running tool was removed"
    );
    assert_eq!(tool.probe(), "ok sleepy 0.1", "the running tool is broken after safe-prune");

    // And uv can still use the cache afterwards.
    let out = env.uv_prune(&common::uv(), &env.cache, &[]);
    assert!(out.status.success(), "{}", show(&out));
}

#[test]
fn keeps_a_running_tool_beside_its_live_uv_parent_without_waiting() {
    let env = TestEnv::new();
    let tool = running_tool_beside_unused(&env);
    let environment = tool.environment();
    let started = std::time::Instant::now();
    // The uv parent holds the shared lock: safe-prune must not wait (uv would, 5 minutes).
    // `--grace 0s` so the minutes-old test environments count as old.
    let out = env.run_safe_prune(&["--format", "json", "--grace", "0s"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["lock"], "concurrent", "{report:#}");
    assert!(environment.join("pyvenv.cfg").exists());
    assert_eq!(environment_links(&env.cache).len(), 1, "only the running tool's link stays: {report:#}");
    assert_eq!(tool.probe(), "ok sleepy 0.1");
    // The unused environment's archive lost its link in this run: beside running uv it waits
    // for the next run (a uvx may have resolved that link a moment ago), which removes it.
    let deferred: Vec<&Value> =
        report["kept"].as_array().unwrap().iter().filter(|k| k["reason"] == "deferred").collect();
    assert_eq!(deferred.len(), 1, "{report:#}");
    let archive = env.cache.join(deferred[0]["path"].as_str().unwrap());
    assert!(archive.join("pyvenv.cfg").exists(), "{report:#}");
    let out = env.run_safe_prune(&["--format", "json", "--grace", "0s"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(!archive.exists(), "the next run kept the unlinked archive: {}", show(&out));
    assert!(environment.join("pyvenv.cfg").exists());
    assert_eq!(tool.probe(), "ok sleepy 0.1");
}

#[test]
fn keeps_a_uv_run_with_overlay_and_its_base() {
    become_subreaper();
    let env = TestEnv::new();
    let mut tool = env.spawn_run_with("sleepy==0.1", "sleepy");
    let overlay = tool.environment();
    assert!(overlay.starts_with(env.cache.join("builds-v0")), "{overlay:?} is no overlay in builds-v0");
    tool.kill_uv();

    let out = env.run_safe_prune(&["--format", "json"]);
    assert!(out.status.success(), "{}", show(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(overlay.join("pyvenv.cfg").exists(), "the overlay in builds-v0 was removed: {report:#}");
    // The overlay's `.pth` names the cached environment the `--with` packages live in, in
    // archive-v0: kept (the running process also lists it in PATH; the closure alone would
    // keep it too, see usage.rs's tests).
    let pth = glob_one(&overlay, "lib/*/site-packages/_uv_ephemeral_overlay.pth");
    let text = std::fs::read_to_string(&pth).unwrap();
    let archives = env.cache.join("archive-v0");
    let base_id = text
        .split(&format!("{}/", archives.display()))
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no archive-v0 environment in {}:\n{text}", pth.display()));
    let base = archives.join(base_id);
    assert!(
        base.join("pyvenv.cfg").exists(),
        "the base environment {base:?} of the overlay was removed: {report:#}"
    );
    let rel = format!("archive-v0/{base_id}");
    assert!(
        report["kept_in_use"].as_array().unwrap().iter().any(|k| k["path"] == rel.as_str()),
        "{rel} not reported as kept in use: {report:#}"
    );
    assert_eq!(tool.probe(), "ok sleepy 0.1");
}

/// `UV_LINK_MODE=symlink`: the running tool's environment is made of links into the wheel
/// archives, and `--ci` drops the wheel links that reference those archives. Nothing but the
/// closure of the environment in use (the symlinks inside it) keeps them: the process has
/// no file of theirs open or mapped.
#[test]
fn keeps_the_wheel_archives_a_symlink_mode_tool_links_into() {
    become_subreaper();
    let env = TestEnv::new();
    let mut tool =
        env.spawn_tool_with_env(&common::uv(), "sleepy==0.1", "sleepy", &[("UV_LINK_MODE", "symlink")]);
    assert_eq!(tool.probe(), "ok sleepy 0.1");
    let environment = tool.environment();
    let lazy = glob_one(&environment, "lib/*/site-packages/sleepy/lazy.py");
    let target = std::fs::read_link(&lazy).expect("lazy.py is not a symlink: not a symlink-mode venv");
    let archives = env.cache.join("archive-v0");
    let wheel_archive = archives.join(target.strip_prefix(&archives).unwrap().components().next().unwrap());
    assert_ne!(wheel_archive, environment);
    tool.kill_uv();

    let out = env.run_safe_prune(&["--ci", "--format", "json"]);
    assert!(out.status.success(), "{}", show(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(wheel_archive.exists(), "the wheel archive the running tool links into was removed: {report:#}");
    let rel = format!("archive-v0/{}", wheel_archive.file_name().unwrap().to_string_lossy());
    let kept = report["kept_in_use"].as_array().unwrap().iter().find(|k| k["path"] == rel.as_str());
    let via = format!("archive-v0/{}", environment.file_name().unwrap().to_string_lossy());
    assert_eq!(kept.map(|k| &k["via"]), Some(&Value::from(via)), "{report:#}");
    assert_eq!(tool.probe(), "ok sleepy 0.1");

    // The control: uv's own `--ci` prune removes that archive, and the tool breaks.
    let out = env.uv_prune(&common::uv(), &env.cache, &["--ci"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(!wheel_archive.exists(), "uv kept the wheel archive: the test proves nothing");
    assert_ne!(tool.probe(), "ok sleepy 0.1");
}

/// The one path matching `pattern` (`*` matches one component) below `dir`.
fn glob_one(dir: &Path, pattern: &str) -> PathBuf {
    let mut found = vec![dir.to_path_buf()];
    for part in pattern.split('/') {
        found = found
            .iter()
            .flat_map(|d| {
                if part == "*" {
                    std::fs::read_dir(d).into_iter().flatten().flatten().map(|e| e.path()).collect()
                } else {
                    vec![d.join(part)]
                }
            })
            .filter(|p| p.symlink_metadata().is_ok())
            .collect();
    }
    assert_eq!(found.len(), 1, "{pattern} below {dir:?}: {found:?}");
    found.pop().unwrap()
}

#[test]
fn force_is_safe_too() {
    let env = TestEnv::new();
    let tool = running_tool_beside_unused(&env);
    let environment = tool.environment();
    let out = env.run_safe_prune(&["--force", "--grace", "0s"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(environment.join("pyvenv.cfg").exists());
    assert_eq!(tool.probe(), "ok sleepy 0.1");
}

// ---- processes that cannot be inspected ------------------------------------------------

/// Runs safe-prune as `nobody`: root's processes (this test, `sleep` children) are then
/// uninspectable to it, exactly like other users' processes for an unprivileged prune.
fn prune_as_nobody(cache: &Path, extra: &[&str]) -> Option<std::process::Output> {
    let is_root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if !is_root {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("this test must run as root in CI (it switches to nobody)");
        }
        eprintln!("skipping: not root, cannot switch to another user");
        return None;
    }
    let status = Command::new("chown").args(["-R", "65534:65534"]).arg(cache).status().unwrap();
    assert!(status.success());
    // The binary must be reachable by nobody: copy it next to the cache.
    let bin = cache.parent().unwrap().join("safe-prune");
    std::fs::copy(common::bin(), &bin).unwrap();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .args(["--format", "json", "--cache-dir"])
        .arg(cache)
        .args(extra)
        .env_clear();
    Some(cmd.output().unwrap())
}

#[test]
fn uninspectable_processes_are_reported_and_strict_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let cache = synthetic_cache(tmp.path(), "held");
    // A root process holding an entry through its cwd, invisible to nobody.
    let _child = spawn_ready(
        Command::new("sleep").arg("60").current_dir(cache.join("archive-v0/held")).env_clear(),
        |pid| link_points_into(pid, "cwd", &cache),
    );
    let before = common::snapshot(&cache);
    let Some(out) = prune_as_nobody(&cache, &["--strict"]) else { return };
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(common::stderr(&out).contains("--strict"), "{}", show(&out));
    common::assert_same_tree(&before, &common::snapshot(&cache), "after a refused --strict run");

    // Without --strict it prunes, and says which processes it could not see.
    let out = prune_as_nobody(&cache, &[]).unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let uninspectable = report["processes"]["uninspectable"].as_array().unwrap();
    assert!(
        uninspectable.iter().any(|u| u["pid"] == _child.id() && u["reason"] == "permission denied"),
        "{report:#}"
    );
}
