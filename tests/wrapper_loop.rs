//! Two different safe-prune builds installed as `uv` on one PATH: each is "the next `uv` that
//! is not me" for the other. Handing a command on marks the binary in
//! `SAFE_PRUNE_WRAPPER_VISITED`, so they skip each other and the real uv runs (seeing nothing
//! else changed); with no real uv the command fails with a clear error instead of the two
//! exec'ing each other forever. A loop through a script named `uv` ends with an error after
//! 32 hand-offs. Every command runs under a timeout: a loop fails the test rather than
//! hanging it.

mod common;

use std::ffi::OsString;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::process::{drain, Child};
use common::{run_ok, show, stderr};

const MARKER: &str = "SAFE_PRUNE_WRAPPER_VISITED";

/// Runs `cmd` with its output captured; panics if it has not finished after two minutes
/// (an exec loop keeps one pid busy forever).
fn run_bounded(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = Child(cmd.spawn().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}")));
    let stdout = drain(child.0.stdout.take().unwrap());
    let stderr = drain(child.0.stderr.take().unwrap());
    let Some(status) = child.wait_timeout(Duration::from_secs(120)) else {
        child.kill();
        panic!("{cmd:?} did not finish: the shims exec each other in a loop?");
    };
    Output { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
}

/// `dir/uv`: a copy of safe-prune that is another build (other bytes, so the binary cannot
/// recognise it as a copy of itself). Written by child processes only: a file this test
/// process had open for writing could be inherited by a child another test forks at that
/// moment, and exec'ing it would fail with ETXTBSY.
fn other_build(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let copy = dir.join("uv");
    run_ok(Command::new("cp").arg(common::bin()).arg(&copy));
    if cfg!(target_os = "macos") {
        // Appended bytes would break the code signature arm64 requires; a signature with
        // another identifier changes the bytes and stays valid.
        run_ok(
            Command::new("codesign")
                .args(["--force", "--sign", "-", "--identifier", "io.github.safe-prune.other-build"])
                .arg(&copy),
        );
    } else {
        run_ok(
            Command::new("sh")
                .args(["-c", "printf '\\nanother safe-prune build\\n' >> \"$1\"", "sh"])
                .arg(&copy),
        );
    }
    assert_ne!(std::fs::read(&copy).unwrap(), std::fs::read(common::bin()).unwrap(), "not another build");
    copy
}

/// An executable file `path` holding `content`, written by a child process (see
/// [`other_build`]).
fn write_executable(path: &Path, content: &str) {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"]).arg(path).stdin(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), content.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "cannot write {}", path.display());
}

/// `dir/uv` -> `target`.
fn link_uv(dir: &Path, target: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let uv = dir.join("uv");
    symlink(target, &uv).unwrap();
    uv
}

/// A command for `program` with exactly `PATH=dirs` (nothing else inherited but `HOME`).
fn with_path<P: AsRef<std::ffi::OsStr>>(program: &Path, dirs: &[P]) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear().env("PATH", std::env::join_paths(dirs).unwrap());
    if let Some(home) = std::env::var_os("HOME") {
        cmd.env("HOME", home);
    }
    cmd
}

#[test]
fn two_builds_as_uv_reach_the_real_uv() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let (one, two, real) = (root.join("one"), root.join("two"), root.join("real"));
    let first = link_uv(&one, &common::bin());
    let second = other_build(&two);
    link_uv(&real, &common::uv());

    let want = run_bounded(with_path(&common::uv(), &[&real]).arg("--version"));
    assert!(want.status.success() && want.stdout.starts_with(b"uv 0.13.8"), "{}", show(&want));
    // Either build first on PATH: each hands on to the other, which hands on to the real uv.
    for (program, dirs) in [(&first, [&one, &two, &real]), (&second, [&two, &one, &real])] {
        let out = run_bounded(with_path(program, &dirs).arg("--version"));
        assert_eq!(out.status.code(), Some(0), "{}", show(&out));
        assert_eq!(out.stdout, want.stdout, "{}", show(&out));
        assert_eq!(out.stderr, want.stderr, "{}", show(&out));
    }
}

#[test]
fn two_builds_as_uv_without_a_real_uv_fail_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let (one, two) = (root.join("one"), root.join("two"));
    let first = link_uv(&one, &common::bin());
    other_build(&two);

    let out = run_bounded(with_path(&first, &[&one, &two]).args(["pip", "install", "tinylib"]));
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(out.stdout.is_empty(), "{}", show(&out));
    let text = stderr(&out);
    assert!(text.contains("no real uv is on PATH"), "{text}");
    assert!(text.contains("safe-prune builds that already handed this command on"), "{text}");
    assert!(text.contains(MARKER), "{text}");
}

#[test]
fn the_real_uv_sees_only_the_marker_added() {
    // A stand-in for the real uv that prints its environment and arguments.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let (one, two, real) = (root.join("one"), root.join("two"), root.join("real"));
    std::fs::create_dir_all(&real).unwrap();
    let fake = real.join("uv");
    write_executable(&fake, "#!/bin/sh\n/usr/bin/env | LC_ALL=C /usr/bin/sort\nprintf '[%s]\\n' \"$@\"\n");
    let first = link_uv(&one, &common::bin());
    other_build(&two);

    let args: Vec<OsString> = ["pip", "install", "a b", "", "--", "-q"].map(OsString::from).to_vec();
    let run = |program: &Path| {
        let out = run_bounded(
            with_path(program, &[&one, &two, &real])
                .env("CANARY", "kept as is: a=b  c")
                .args(&args)
                .current_dir(&root),
        );
        assert_eq!(out.status.code(), Some(0), "{}", show(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let direct = run(&fake);
    let through = run(&first);
    let added: Vec<&str> = through.lines().filter(|l| !direct.lines().any(|d| d == *l)).collect();
    let removed: Vec<&str> = direct.lines().filter(|l| !through.lines().any(|t| t == *l)).collect();
    assert!(removed.is_empty(), "lost on the way: {removed:?}\n{through}");
    assert_eq!(added.len(), 1, "{added:?}\n{through}");
    let marker = added[0].strip_prefix(&format!("{MARKER}=")).unwrap_or_else(|| panic!("{added:?}"));
    // Both builds handed it on, each once.
    assert_eq!(marker.split(' ').count(), 2, "{marker}");
    assert!(direct.contains("[a b]\n[]\n[--]\n[-q]\n"), "{direct}");
}

#[test]
fn a_loop_through_a_script_ends_with_an_error() {
    // `uv` scripts that run the shim again are not safe-prune binaries, so the marker cannot
    // skip them; the number of hand-offs it records ends the loop.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let (one, script_dir) = (root.join("one"), root.join("script"));
    let first = link_uv(&one, &common::bin());
    std::fs::create_dir_all(&script_dir).unwrap();
    write_executable(&script_dir.join("uv"), &format!("#!/bin/sh\nexec '{}' \"$@\"\n", first.display()));

    let out = run_bounded(with_path(&first, &[&one, &script_dir]).arg("--version"));
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(stderr(&out).contains("was handed on 32 times"), "{}", show(&out));
}
