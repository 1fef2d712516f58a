//! safe-prune installed as `uv` (a `uv` link to the binary, first on PATH, with the real uv
//! 0.13.8 after it), and `safe-prune clean`, against the real uv:
//! - other commands reach the real uv untouched (output, exit code);
//! - `uv cache prune` keeps a running tool whose uv parent is gone and removes the rest;
//! - uv's global options work before and after `cache`;
//! - `clean [PACKAGE...]` leaves exactly the tree `uv cache clean [PACKAGE...]` leaves on an
//!   idle cache, prints the same lines, and keeps entries in use;
//! - the GitHub Actions step summary; `shim install`; completions and man page.

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::process::{alive, become_subreaper};
use common::{assert_same_tree, copy_cache, show, snapshot, stderr, TestEnv};

/// A command running `uv` from `<root>/shim/uv` (a link to safe-prune), with the shim
/// directory first on PATH and the real uv's directory (`<root>/bin`) right after it.
fn shim_uv(env: &TestEnv) -> Command {
    let shim = env.root.join("shim");
    if !shim.exists() {
        std::fs::create_dir(&shim).unwrap();
        std::os::unix::fs::symlink(common::bin(), shim.join("uv")).unwrap();
    }
    let mut cmd = env.command(shim.join("uv"));
    let inherited = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![shim, env.root.join("bin")];
    dirs.extend(std::env::split_paths(&inherited));
    cmd.env("PATH", std::env::join_paths(dirs).unwrap());
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// stderr without safe-prune's `warning:` lines (processes of other users that cannot be
/// inspected depend on the machine, not on the command).
fn uv_lines(out: &Output) -> String {
    stderr(out).lines().filter(|l| !l.starts_with("warning:")).map(|l| format!("{l}\n")).collect()
}

/// Canonical archive targets of every `environments-v2/<digest>/<hash>` link.
fn environment_archives(cache: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for digest in std::fs::read_dir(cache.join("environments-v2")).into_iter().flatten().flatten() {
        for link in std::fs::read_dir(digest.path()).into_iter().flatten().flatten() {
            if link.file_type().is_ok_and(|t| t.is_symlink()) {
                if let Ok(target) = std::fs::canonicalize(link.path()) {
                    out.push(target);
                }
            }
        }
    }
    out
}

#[test]
fn other_commands_reach_the_real_uv_unchanged() {
    let env = TestEnv::new();
    for args in
        [&["--version"][..], &["cache", "dir"], &["cache", "prune", "--bogus"], &["cache", "clean", "Bad!"]]
    {
        let real = run(env.uv_cmd().args(args));
        let shim = run(shim_uv(&env).args(args));
        assert_eq!(shim.status.code(), real.status.code(), "uv {args:?}\n{}", show(&shim));
        assert_eq!(shim.stdout, real.stdout, "uv {args:?}: stdout differs\n{}", show(&shim));
        assert_eq!(shim.stderr, real.stderr, "uv {args:?}: stderr differs\n{}", show(&shim));
    }
    // A real install through the shim.
    let venv = env.work.join("venv");
    common::run_ok(env.uv_cmd().arg("venv").arg(&venv));
    common::run_ok(
        shim_uv(&env)
            .args(["pip", "install", "--offline", "--python"])
            .arg(&venv)
            .arg("--find-links")
            .arg(&env.wheels)
            .arg("tinylib"),
    );
    let check =
        run(Command::new(venv.join("bin/python")).args(["-c", "import tinylib; print(tinylib.VALUE)"]));
    assert_eq!(String::from_utf8_lossy(&check.stdout).trim(), "tinylib 1.0", "{}", show(&check));
}

#[test]
fn uv_cache_prune_keeps_a_running_tool_and_removes_an_unused_environment() {
    become_subreaper();
    let env = TestEnv::new();
    env.tool_run("dozy", "dozy");
    let mut tool = env.spawn_tool(&common::uv(), "sleepy==0.1", "sleepy");
    assert_eq!(tool.probe(), "ok sleepy 0.1");
    let sleepy = std::fs::canonicalize(tool.environment()).unwrap();
    let dozy: Vec<PathBuf> = environment_archives(&env.cache).into_iter().filter(|a| *a != sleepy).collect();
    assert_eq!(dozy.len(), 1, "dozy's environment: {dozy:?}");

    // While uv runs the tool it holds the cache lock: uv's prune would wait five minutes;
    // through the shim the prune runs beside it and keeps the young environments.
    let out = run(shim_uv(&env).args(["cache", "prune"]));
    assert!(out.status.success(), "{}", show(&out));
    assert!(uv_lines(&out).starts_with("Pruning cache at: "), "{}", show(&out));
    assert!(sleepy.exists() && dozy[0].exists(), "{}", show(&out));

    // The uv parent dies (its lock goes with it); the tool lives on.
    tool.kill_uv();
    assert!(alive(tool.pid()));
    let out = run(shim_uv(&env).args(["cache", "prune"]));
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let text = uv_lines(&out);
    assert!(text.starts_with("Pruning cache at: "), "{}", show(&out));
    assert!(text.contains("Removed "), "{}", show(&out));
    assert!(text.contains("in use by 1 running process"), "{}", show(&out));
    assert!(sleepy.join("bin").is_dir(), "the running tool's environment was removed\n{}", show(&out));
    assert!(!dozy[0].exists(), "the unused environment was kept\n{}", show(&out));
    assert_eq!(tool.probe(), "ok sleepy 0.1");
}

#[test]
fn global_options_before_and_after_cache() {
    let env = TestEnv::new();
    env.tool_run("dozy", "dozy");
    let other = env.path("other-cache");
    copy_cache(&env.cache, &other);

    // `-q` before `cache`: nothing printed, the prune happens.
    let out = run(shim_uv(&env).args(["-q", "cache", "prune"]));
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(uv_lines(&out), "", "{}", show(&out));
    assert!(environment_archives(&env.cache).is_empty());

    // `--cache-dir` between `cache` and `prune`, `-v` after: that cache, explained.
    let out = run(shim_uv(&env).args(["cache", "--cache-dir"]).arg(&other).args(["prune", "-v"]));
    assert!(out.status.success(), "{}", show(&out));
    let text = uv_lines(&out);
    assert!(text.starts_with(&format!("Pruning cache at: {}\n", other.display())), "{}", show(&out));
    assert!(text.contains("Removed environments-v2/"), "{}", show(&out));
    assert!(environment_archives(&other).is_empty());

    // The same with the options in uv's other spellings, on an already pruned cache.
    let out =
        run(shim_uv(&env).arg(format!("--cache-dir={}", other.display())).args(["cache", "prune", "--ci"]));
    assert!(out.status.success(), "{}", show(&out));
    assert!(uv_lines(&out).starts_with(&format!("Pruning cache at: {}\n", other.display())));

    // `--directory`: the cache path is shown relative to it, like uv does.
    let out = run(shim_uv(&env).arg("--directory").arg(&env.root).args([
        "cache",
        "prune",
        "--cache-dir",
        "other-cache",
    ]));
    assert!(out.status.success(), "{}", show(&out));
    assert!(uv_lines(&out).starts_with("Pruning cache at: other-cache\n"), "{}", show(&out));

    // `--no-cache`: uv would prune a fresh temporary cache.
    let out = run(shim_uv(&env).args(["cache", "prune", "-n"]));
    assert!(out.status.success(), "{}", show(&out));
    let text = uv_lines(&out);
    assert!(
        text.starts_with("Pruning cache at: /") && text.ends_with("\nNo unused entries found\n"),
        "{text}"
    );
}

/// Runs the same clean with the real uv on `real` and through the shim on `ours`; asserts
/// the same exit code, the same lines, and the same resulting trees.
fn assert_clean_parity(env: &TestEnv, real: &Path, ours: &Path, args: &[&str]) {
    let mut uv_args: Vec<OsString> = vec!["cache".into(), "clean".into()];
    uv_args.extend(args.iter().map(OsString::from));
    let a = run(env.uv_cmd().args(&uv_args).arg("--cache-dir").arg(real));
    let b = run(shim_uv(env).args(&uv_args).arg("--cache-dir").arg(ours));
    assert_eq!(a.status.code(), Some(0), "uv cache clean {args:?}\n{}", show(&a));
    assert_eq!(b.status.code(), Some(0), "shim cache clean {args:?}\n{}", show(&b));
    let real_lines = uv_lines(&a).replace(&real.display().to_string(), "CACHE");
    let our_lines = uv_lines(&b).replace(&ours.display().to_string(), "CACHE");
    assert_eq!(our_lines, real_lines, "uv cache clean {args:?}: different output");
    assert_same_tree(&snapshot(real), &snapshot(ours), &format!("after uv cache clean {args:?}"));
}

#[test]
fn clean_matches_uv_cache_clean_on_an_idle_cache() {
    let env = TestEnv::new();
    env.populate_cache();
    let (real, ours) = (env.path("real-cache"), env.path("our-cache"));
    copy_cache(&env.cache, &real);
    copy_cache(&env.cache, &ours);
    // One package's entries at a time (a wheel, a built sdist, tools, a name that needs
    // normalizing, and one that is not there), then everything.
    for args in [&["tinylib"][..], &["srclib"], &["Sleepy"], &["dozy", "nonexistent"], &[]] {
        assert_clean_parity(&env, &real, &ours, args);
    }
    let left: Vec<_> = std::fs::read_dir(&ours).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, [".lock"], "a full clean leaves only the lock");
    // `safe-prune clean` (not through the shim) on the emptied cache: uv's empty message.
    let out = env.safe_prune_on(&ours, &["clean"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(uv_lines(&out).ends_with("\nNo cache entries found\n"), "{}", show(&out));
}

#[test]
fn clean_keeps_entries_in_use() {
    become_subreaper();
    let env = TestEnv::new();
    env.populate_cache();
    let mut tool = env.spawn_tool(&common::uv(), "sleepy==0.1", "sleepy");
    let environment = tool.environment();
    tool.kill_uv();

    // The package's wheel entries (and their unzipped wheel) go; the tool runs from its own
    // environment, which uv's clean does not touch either.
    let out = env.run_safe_prune(&["clean", "sleepy"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(!env.cache.join("wheels-v7/index").read_dir().unwrap().any(|d| d
        .unwrap()
        .path()
        .join("sleepy")
        .exists()));
    assert!(environment.join("bin").is_dir());
    assert_eq!(tool.probe(), "ok sleepy 0.1");

    // Everything else goes; the tool's environment (and the tag that keeps this a cache)
    // stay.
    let out = run(shim_uv(&env).args(["cache", "clean"]));
    assert!(out.status.success(), "{}", show(&out));
    let text = uv_lines(&out);
    assert!(text.starts_with("Clearing cache at: "), "{}", show(&out));
    assert!(text.contains("in use by 1 running process"), "{}", show(&out));
    assert!(environment.join("bin").is_dir());
    assert!(env.cache.join("CACHEDIR.TAG").is_file());
    assert!(!env.cache.join("wheels-v7").exists() && !env.cache.join("sdists-v10").exists());
    let archives: Vec<_> = std::fs::read_dir(env.cache.join("archive-v0")).unwrap().collect();
    assert_eq!(archives.len(), 1, "only the running tool's archive stays");
    assert_eq!(tool.probe(), "ok sleepy 0.1");
    // The next prune accepts what is left as a cache.
    let out = env.run_safe_prune(&["prune"]);
    assert!(out.status.success(), "{}", show(&out));
}

#[test]
fn github_step_summary_is_appended() {
    let env = TestEnv::new();
    env.tool_run("dozy", "dozy");
    let summary = env.path("summary.md");
    std::fs::write(&summary, "# earlier step\n").unwrap();
    let out = run(shim_uv(&env).args(["cache", "prune", "--ci"]).env("GITHUB_STEP_SUMMARY", &summary));
    assert!(out.status.success(), "{}", show(&out));
    let out = run(env.command(common::bin()).arg("clean").env("GITHUB_STEP_SUMMARY", &summary));
    assert!(out.status.success(), "{}", show(&out));
    let text = std::fs::read_to_string(&summary).unwrap();
    assert!(text.starts_with("# earlier step\n### safe-prune: uv cache prune --ci\n"), "{text}");
    assert!(text.contains(&format!("Cache: `{}`", env.cache.display())), "{text}");
    assert!(text.contains("| Removed | "), "{text}");
    assert!(text.contains("### safe-prune clean\n"), "{text}");
    // Without the variable nothing is written anywhere.
    let out = env.run_safe_prune(&["prune"]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(std::fs::read_to_string(&summary).unwrap(), text);
}

#[test]
fn shim_install_completions_and_man() {
    let env = TestEnv::new();
    let dir = env.path("local-bin");
    let out =
        env.run_safe_prune(&[OsString::from("shim"), "install".into(), "--dir".into(), dir.clone().into()]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(stderr(&out).contains("Installed"), "{}", show(&out));
    // Not on PATH: the user is told.
    assert!(stderr(&out).contains("is not on PATH"), "{}", show(&out));
    let version = run(env.command(dir.join("uv")).arg("--version"));
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("uv 0.13.8"), "{}", show(&version));
    // The real uv is never replaced or removed.
    let real = env.path("bin");
    let out = env.run_safe_prune(&[
        OsString::from("shim"),
        "uninstall".into(),
        "--dir".into(),
        real.clone().into(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(real.join("uv").exists());
    let out =
        env.run_safe_prune(&[OsString::from("shim"), "uninstall".into(), "--dir".into(), dir.clone().into()]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(dir.join("uv").symlink_metadata().is_err());

    let out = env.run_safe_prune(&["completions", "bash"]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("safe-prune"),
        "{}",
        show(&out)
    );
    let out = env.run_safe_prune(&["man"]);
    assert!(out.status.success() && out.stdout.starts_with(b".ie"), "{}", show(&out));
}

/// Installed as `uvx` too, safe-prune hands every `uvx` command to the real `uvx` (the one
/// beside the real uv): `uvx` is `uv tool run`, never a prune.
#[test]
fn uvx_reaches_the_real_uvx_unchanged() {
    let env = TestEnv::new();
    let real_uvx = common::uv().with_file_name("uvx");
    assert!(real_uvx.is_file(), "no uvx beside {}", common::uv().display());
    std::os::unix::fs::symlink(&real_uvx, env.root.join("bin/uvx")).unwrap();
    let shim = env.root.join("shim-uvx");
    std::fs::create_dir(&shim).unwrap();
    std::os::unix::fs::symlink(common::bin(), shim.join("uvx")).unwrap();
    let through_shim = |args: &[&str]| {
        let mut cmd = env.command(shim.join("uvx"));
        let inherited = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![shim.clone(), env.root.join("bin")];
        dirs.extend(std::env::split_paths(&inherited));
        run(cmd.env("PATH", std::env::join_paths(dirs).unwrap()).args(args))
    };
    for args in [&["--version"][..], &["--help"], &["cache", "prune"]] {
        let real = run(env.command(&real_uvx).args(args));
        let shim = through_shim(args);
        assert_eq!(shim.status.code(), real.status.code(), "uvx {args:?}\n{}", show(&shim));
        assert_eq!(shim.stdout, real.stdout, "uvx {args:?}: stdout differs\n{}", show(&shim));
        assert_eq!(shim.stderr, real.stderr, "uvx {args:?}: stderr differs\n{}", show(&shim));
    }
    // A real tool run through it.
    let wheels = env.wheels.to_string_lossy().into_owned();
    let out =
        through_shim(&["--offline", "--find-links", &wheels, "--from", "sleepy==0.1", "sleepy", "--once"]);
    assert!(out.status.success() && out.stdout.starts_with(b"ready"), "{}", show(&out));
}
