//! Running beside uv: uv's lock is honoured (held exclusively when free, never waited on
//! unless asked), a SIGKILL at any moment leaves a cache uv can use, and pruning in a loop
//! while uv installs and runs tools fails no uv command and breaks no import.
#![cfg(target_os = "linux")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::process::Child;
use common::{run_ok, show, TestEnv};

/// Adds `n` unreferenced archives of `files` small files each (what `uv cache prune`
/// removes after tools were upgraded), old enough to be outside any grace period.
fn add_synthetic_archives(cache: &Path, n: usize, files: usize) {
    for i in 0..n {
        let dir = cache.join(format!("archive-v0/synthetic{i:05}/lib/pkg"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..files {
            std::fs::write(dir.join(format!("m{f}.py")), b"x = 1\n").unwrap();
        }
    }
    // Backdate them so concurrent mode's grace period does not apply.
    let status = Command::new("find")
        .arg(cache.join("archive-v0"))
        .args(["-name", "synthetic*", "-prune", "-exec", "touch", "-h", "-d", "2 days ago", "{}", "+"])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Lines of /proc/locks for the cache's `.lock`: (pid, is_write).
fn lock_holders(cache: &Path) -> Vec<(u32, bool)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(cache.join(".lock")).unwrap();
    let inode = meta.ino().to_string();
    std::fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .filter(|l| !l.contains("->"))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dev_ino = f.get(5)?;
            (dev_ino.rsplit(':').next()? == inode).then(|| (f[4].parse().ok(), f[3] == "WRITE"))
        })
        .filter_map(|(pid, w)| pid.map(|p| (p, w)))
        .collect()
}

#[test]
fn holds_uv_lock_exclusively_while_pruning_when_free() {
    let env = TestEnv::new();
    env.populate_cache();
    // Enough work that the prune is still running when the uv command below starts.
    add_synthetic_archives(&env.cache, 1000, 40);
    let mut child = Child(env.command(common::bin()).arg("-q").spawn().unwrap());
    let pid = child.id();
    let mut saw_exclusive = false;
    let mut saw_flock_refused = false;
    let mut uv_said_it_waits = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if lock_holders(&env.cache).contains(&(pid, true)) {
            saw_exclusive = true;
            // Deterministic: a shared lock, which every uv process takes, cannot be had now.
            let shared = Command::new("flock")
                .args(["-s", "-n"])
                .arg(env.cache.join(".lock"))
                .arg("true")
                .status()
                .unwrap();
            saw_flock_refused = !shared.success();
            // And a real uv command started now waits for it (it logs so with -v).
            let out = env
                .uv_cmd()
                .args(["-v", "venv"])
                .arg(env.work.join("started-mid-prune"))
                .env("UV_LOCK_TIMEOUT", "120")
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", show(&out));
            uv_said_it_waits = common::stderr(&out);
            break;
        }
        if child.wait_timeout(Duration::from_millis(1)).is_some() {
            break;
        }
    }
    let status = child.wait_timeout(Duration::from_secs(120)).expect("safe-prune hung");
    assert!(status.success());
    assert!(saw_exclusive, "never saw safe-prune hold uv's lock exclusively");
    assert!(saw_flock_refused, "a shared flock was granted while safe-prune held the lock");
    assert!(
        uv_said_it_waits.contains("Waiting to acquire shared lock"),
        "a uv command started mid-prune did not wait for the lock:\n{uv_said_it_waits}"
    );
    assert!(!env.cache.join("archive-v0/synthetic00000").exists());
}

#[test]
fn a_shared_flock_holder_does_not_make_it_hang_and_wait_waits() {
    let env = TestEnv::new();
    env.populate_cache();
    add_synthetic_archives(&env.cache, 5, 3);
    // ctime cannot be backdated: let the synthetic archives age past a 2 s grace period,
    // then make one fresh environment that must survive it.
    std::thread::sleep(Duration::from_secs(3));
    let fresh = env.cache.join("archive-v0/fresh");
    std::fs::create_dir_all(fresh.join("lib")).unwrap();
    std::fs::write(fresh.join("pyvenv.cfg"), "home = /usr/bin\n").unwrap();
    // `flock -s` is exactly what every uv process holds while it runs.
    let holder = Child(
        Command::new("flock")
            .arg("-s")
            .arg(env.cache.join(".lock"))
            .args(["sleep", "60"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(common::process::wait_until(Duration::from_secs(10), || !lock_holders(&env.cache).is_empty()));

    let started = Instant::now();
    let out = env.run_safe_prune(&["--format", "json", "--grace", "2s"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["lock"], "concurrent");
    // Old unused entries go even beside a running uv; young ones stay.
    assert!(!env.cache.join("archive-v0/synthetic00000").exists(), "{report:#}");
    assert!(fresh.join("pyvenv.cfg").exists(), "a young environment was removed: {report:#}");
    assert!(report["kept"].as_array().unwrap().iter().any(|k| k["reason"] == "young"), "{report:#}");

    let started = Instant::now();
    let out = env.run_safe_prune(&["--wait=2s"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(common::stderr(&out).contains("Timeout"), "{}", show(&out));
    drop(holder);
}

/// Symlinks in the cache that do not resolve (references to a removed archive). The trash
/// folder of a killed run is skipped: a relative link moved into it dangles there, uv never
/// reads it, and the next run empties it (checked after that run).
fn dangling_links(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if dir == root && e.file_name().to_string_lossy().starts_with(".safe-prune-trash") {
                continue;
            }
            let t = e.file_type().unwrap();
            if t.is_symlink() {
                if std::fs::metadata(e.path()).is_err() {
                    out.push(e.path());
                }
            } else if t.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}

#[test]
fn sigkill_at_any_moment_leaves_a_usable_cache() {
    let env = TestEnv::new();
    env.populate_cache();
    for (round, delay_ms) in [5u64, 40, 120, 300].into_iter().enumerate() {
        add_synthetic_archives(&env.cache, 200, 60);
        // The `--ci` prune also removes wheel links: the most references to order right.
        let mut child = Child(env.command(common::bin()).args(["-q", "--ci"]).spawn().unwrap());
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill();
        let dangling = dangling_links(&env.cache);
        assert!(dangling.is_empty(), "round {round}: links into removed archives: {dangling:?}");
        // uv still installs from what is left (offline, with the wheels as fallback).
        let venv = env.work.join(env.unique("venv"));
        run_ok(env.uv_cmd().arg("venv").arg(&venv));
        run_ok(
            env.uv_cmd()
                .args(["pip", "install", "--python"])
                .arg(&venv)
                .args(["--offline", "--find-links"])
                .arg(&env.wheels)
                .arg("tinylib"),
        );
        let out = env.uv_prune(&common::uv(), &env.cache, &[]);
        assert!(out.status.success(), "round {round}: uv cache prune failed\n{}", show(&out));
        add_synthetic_archives(&env.cache, 20, 5);
        let mut child = Child(env.command(common::bin()).arg("-q").spawn().unwrap());
        // Interrupt a second run too, then let a third complete.
        std::thread::sleep(Duration::from_millis(delay_ms / 2));
        child.kill();
        let out = env.run_safe_prune(&["--format", "json"]);
        assert!(out.status.success(), "round {round}: the next safe-prune failed\n{}", show(&out));
        let leftovers: Vec<_> = std::fs::read_dir(&env.cache)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".safe-prune-trash"))
            .collect();
        assert!(leftovers.is_empty(), "round {round}: trash left behind");
        let dangling = dangling_links(&env.cache);
        assert!(
            dangling.is_empty(),
            "round {round}: links into removed archives after a full run: {dangling:?}"
        );
    }
}

#[test]
fn soak_prune_in_a_loop_while_uv_installs_and_runs_tools() {
    let env = TestEnv::new();
    env.populate_cache();
    let venv = env.work.join("soak-venv");
    run_ok(env.uv_cmd().arg("venv").arg(&venv));
    // A long-running tool beside it all, probed after every prune.
    let tool = env.spawn_tool(&common::uv(), "sleepy==0.1", "sleepy");
    let deadline = Instant::now() + Duration::from_secs(25);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let failures = std::sync::Mutex::new(Vec::<String>::new());
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let out =
                    env.tool_run_cmd(&common::uv(), "sleepy==0.2", "sleepy", &["--once"]).output().unwrap();
                if !out.status.success() || !String::from_utf8_lossy(&out.stdout).contains("ready") {
                    failures.lock().unwrap().push(format!("tool run: {}", show(&out)));
                }
            }
        });
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let out = env
                    .uv_cmd()
                    .args(["pip", "install", "--reinstall", "--python"])
                    .arg(&venv)
                    .args(["--offline", "--find-links"])
                    .arg(&env.wheels)
                    .arg("tinylib")
                    .output()
                    .unwrap();
                if !out.status.success() {
                    failures.lock().unwrap().push(format!("pip install: {}", show(&out)));
                }
                let import =
                    Command::new(venv.join("bin/python")).args(["-c", "import tinylib"]).output().unwrap();
                if !import.status.success() {
                    failures.lock().unwrap().push(format!("import: {}", show(&import)));
                }
            }
        });
        let mut runs = 0;
        while Instant::now() < deadline {
            let started = Instant::now();
            // Old garbage for every round, so each prune really removes something.
            add_synthetic_archives(&env.cache, 10, 5);
            let out = env.run_safe_prune(&["-q", "--grace", "5s"]);
            assert!(started.elapsed() < Duration::from_secs(20), "safe-prune hung");
            if !out.status.success() {
                failures.lock().unwrap().push(format!("safe-prune: {}", show(&out)));
            }
            let answer = tool.probe();
            if answer != "ok sleepy 0.1" {
                failures.lock().unwrap().push(format!("running tool import: {answer}"));
            }
            runs += 1;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(runs >= 3, "only {runs} prunes ran");
    });
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{} failures, first:\n{}", failures.len(), failures[0]);
}

#[test]
fn ctrl_c_stops_between_entries_with_a_summary() {
    let env = TestEnv::new();
    env.populate_cache();
    add_synthetic_archives(&env.cache, 800, 40);
    let mut child = Child(
        env.command(common::bin())
            .args(["--format", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Wait until removal has started (the trash folder appears), then interrupt.
    let started = common::process::wait_until(Duration::from_secs(30), || {
        std::fs::read_dir(&env.cache)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".safe-prune-trash"))
    });
    assert!(started, "removal never started");
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out =
        std::mem::replace(&mut child.0, Command::new("true").spawn().unwrap()).wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let removed = report["removed"]["entries"].as_u64().unwrap();
    assert!(removed > 0, "{report:#}");
    assert!(
        report["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["message"].as_str().unwrap().contains("interrupted")),
        "{report:#}"
    );
    let left = std::fs::read_dir(env.cache.join("archive-v0")).unwrap().count();
    assert!(left > 0, "the run was not interrupted before the end");
    assert!(dangling_links(&env.cache).is_empty());
    // The next run finishes the job.
    let out = env.run_safe_prune(&["-q"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(!env.cache.join("archive-v0/synthetic00799").exists());
}

/// uv keeps renaming fresh archives into `archive-v0` (wheel extraction: `.tmpX` then
/// `rename`) while a `prune --ci` or a full `clean` runs beside it, which takes a while here
/// (a wheels bucket of 50,000 files goes first). Every archive that appears during the run
/// must survive; the old ones must go. A `clean` that removed `archive-v0` as one bucket lost
/// each archive renamed in after its plan.
#[test]
fn archives_renamed_in_while_pruning_or_cleaning_beside_uv_survive() {
    // `--ci`, so that the prune too removes the 50,000 wheel files first.
    for (command, extra) in [("prune", Some("--ci")), ("clean", None)] {
        let env = TestEnv::new();
        let cache = env.root.join(format!("busy-cache-{command}"));
        std::fs::create_dir_all(cache.join("archive-v0/old")).unwrap();
        std::fs::write(cache.join("archive-v0/old/f"), "x").unwrap();
        std::fs::write(cache.join("CACHEDIR.TAG"), "Signature: 8a477f597d28d172789f06886806bc55\n").unwrap();
        std::fs::write(cache.join(".lock"), "").unwrap();
        for p in 0..200 {
            let dir = cache.join(format!("wheels-v7/pypi/p{p}"));
            std::fs::create_dir_all(&dir).unwrap();
            for f in 0..250 {
                std::fs::write(dir.join(format!("f{f}")), "").unwrap();
            }
        }
        // A uv process holding the cache lock shared, as every running uv command does.
        let _holder = Child(
            Command::new("flock").arg("-s").arg(cache.join(".lock")).args(["sleep", "120"]).spawn().unwrap(),
        );
        // Ages are whole seconds: after 2.5 s everything above is older than a 2 s grace.
        std::thread::sleep(Duration::from_millis(2500));
        let stop = std::sync::atomic::AtomicBool::new(false);
        let created = std::thread::scope(|s| {
            let writer = s.spawn(|| {
                let mut created = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let tmp = cache.join(format!(".tmpW{}", created.len()));
                    std::fs::create_dir(&tmp).unwrap();
                    std::fs::write(tmp.join("file"), "data").unwrap();
                    let archive = cache.join(format!("archive-v0/new{}", created.len()));
                    std::fs::rename(&tmp, &archive).unwrap();
                    created.push(archive);
                    std::thread::sleep(Duration::from_millis(10));
                }
                created
            });
            let args: Vec<&str> =
                [command, "--grace", "2s", "--format", "json"].into_iter().chain(extra).collect();
            let out = env.safe_prune_on(&cache, &args);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            assert!(out.status.success(), "{command}: {}", show(&out));
            let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(report["lock"], "concurrent", "{report:#}");
            writer.join().unwrap()
        });
        assert!(created.len() >= 3, "{command}: only {} archives appeared during the run", created.len());
        assert!(!cache.join("wheels-v7/pypi/p0").exists(), "{command}: the wheels stayed");
        let lost: Vec<_> = created.iter().filter(|a| !a.join("file").exists()).collect();
        assert!(
            lost.is_empty(),
            "{command}: {} of {} new archives lost: {lost:?}",
            lost.len(),
            created.len()
        );
        assert!(!cache.join("archive-v0/old").exists(), "{command}: the old archive stayed");
    }
}

/// A uv cache made by hand in `dir/cache` (no uv needed): the tag, a bucket, uv's `.lock`, and
/// `n` archives `archive-v0/old<i>` that nothing references (prune removes them).
fn bare_cache(dir: &Path, n: usize) -> PathBuf {
    let cache = dir.join("cache");
    std::fs::create_dir_all(cache.join("wheels-v7")).unwrap();
    std::fs::write(cache.join("CACHEDIR.TAG"), "Signature: 8a477f597d28d172789f06886806bc55\n").unwrap();
    std::fs::write(cache.join(".lock"), "").unwrap();
    for i in 0..n {
        let lib = cache.join(format!("archive-v0/old{i}/lib"));
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::write(lib.join("mod.py"), "x = 1\n").unwrap();
    }
    cache.canonicalize().unwrap()
}

#[test]
fn ctrl_c_while_waiting_for_the_lock_stops_with_nothing_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = bare_cache(tmp.path(), 3);
    let holder = Child(
        Command::new("flock")
            .arg("-s")
            .arg(cache.join(".lock"))
            .args(["sleep", "120"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(common::process::wait_until(Duration::from_secs(10), || !lock_holders(&cache).is_empty()));
    let before = common::snapshot(&cache);
    let log = tmp.path().join("stderr");
    let mut child = Child(
        Command::new(common::bin())
            .args(["--wait=10m", "--cache-dir"])
            .arg(&cache)
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    // Its signal handlers are in place once it says it waits.
    let waiting = common::process::wait_until(Duration::from_secs(60), || {
        std::fs::read_to_string(&log).unwrap_or_default().contains("waiting for other uv processes")
    });
    assert!(waiting, "never waited: {}", std::fs::read_to_string(&log).unwrap_or_default());
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    // Far less than the 10 minutes it would otherwise wait.
    let status =
        child.wait_timeout(Duration::from_secs(60)).expect("still waiting for the lock after Ctrl-C");
    let said = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(2), "{said}");
    assert!(said.contains("interrupted while waiting for the lock"), "{said}");
    common::assert_same_tree(&before, &common::snapshot(&cache), "after a wait ended by Ctrl-C");
    drop(holder);
}

/// `strace` when it can trace here (CI installs it, and then it is required).
fn strace() -> Option<&'static str> {
    let works = Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=none", "true"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        works || std::env::var("CI").as_deref() != Ok("true"),
        "strace is missing or cannot trace, and CI=true (.ci/run installs it)"
    );
    works.then_some("strace")
}

/// In a container restarted on a persistent cache volume, pids repeat: a killed run's trash
/// comes back under the very name this run's pid once gave it (`.safe-prune-trash-1` for a
/// container's first process). The run makes a trash folder of its own, removes the old one
/// as an unknown entry, and still renames every target into its trash in one step (checked on
/// the system calls, under strace).
#[test]
fn a_leftover_trash_named_after_this_runs_pid_is_removed_and_never_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = bare_cache(tmp.path(), 5);
    let leftover = cache.join(".safe-prune-trash-1");
    std::fs::create_dir_all(leftover.join("0/lib")).unwrap();
    std::fs::write(leftover.join("0/lib/mod.py"), "x = 1\n").unwrap();
    std::fs::create_dir_all(leftover.join("1")).unwrap();
    // One file per thread (`-ff`): calls on parallel threads are then never split in two lines.
    let traces = tmp.path().join("trace");
    std::fs::create_dir(&traces).unwrap();
    let strace = strace();
    let mut cmd = match strace {
        Some(strace) => {
            let mut cmd = Command::new(strace);
            cmd.args(["-ff", "-qq", "-y", "-e", "trace=rename,renameat,renameat2", "-o"])
                .arg(traces.join("t"))
                .arg("unshare");
            cmd
        }
        None => Command::new("unshare"),
    };
    // safe-prune is pid 1 of a new pid namespace, like a container's entry point.
    cmd.args(["--pid", "--fork", "--mount-proc"])
        .arg(common::bin())
        .args(["--format", "json", "--cache-dir"])
        .arg(&cache)
        .stdin(Stdio::null());
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["errors"], serde_json::json!([]), "{report:#}");
    let mut targets: Vec<String> = (0..5).map(|i| format!("archive-v0/old{i}")).collect();
    targets.push(".safe-prune-trash-1".into());
    let removed: Vec<&str> =
        report["removed_entries"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
    for target in &targets {
        assert!(removed.contains(&target.as_str()), "{target} not removed: {report:#}");
        assert!(!cache.join(target).exists(), "{target} was reported removed but stayed");
    }
    let names: Vec<String> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with(".safe-prune-trash")), "trash left: {names:?}");
    if strace.is_none() {
        eprintln!("strace cannot trace here: the renames were not checked");
        return;
    }
    // `renameat2(3</cache/archive-v0>, "old0", 5</cache/.safe-prune-trash-1-...>, "0", ...) = 0`
    let trace: String = std::fs::read_dir(&traces)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    let renames: Vec<&str> = trace.lines().filter(|l| l.contains("rename") && l.ends_with(" = 0")).collect();
    for target in &targets {
        let path = cache.join(target);
        let from = format!(
            "<{}>, \"{}\", ",
            path.parent().unwrap().display(),
            path.file_name().unwrap().to_string_lossy()
        );
        let into = format!("<{}/.safe-prune-trash-1-", cache.display());
        assert!(
            renames.iter().any(|l| l.contains(&from) && l.contains(&into)),
            "{target} was not renamed into a new trash folder:\n{}",
            renames.join("\n")
        );
    }
}
