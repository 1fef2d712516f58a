//! Packaging (issue 14): safe-prune installs the way uv users install tools.
//!
//! - the wheel maturin builds from this checkout (`pyproject.toml`, `bindings = "bin"`) carries
//!   the binary and nothing else, with the metadata of Cargo.toml, and installs with
//!   `uv tool install` (offline, nothing compiled at install time);
//! - `uvx safe-prune` runs from `<cache>/archive-v0/<id>`, inside the cache it prunes: it keeps
//!   its own environment (its executable is evidence like any other process's) and says so;
//! - safe-prune does not skip its own pid when it scans processes (no uv, no wheel needed);
//! - the release workflow builds every target and uploads what it builds.
//!
//! The wheel is built once per source state with the pinned maturin (`SAFE_PRUNE_TEST_MATURIN`,
//! installed by scripts/test) in the dev profile, into its own target directory
//! (`target/test-tools/maturin-target`: maturin's flags differ from `cargo test`'s, and sharing
//! `target/debug` would rebuild the very binary the other tests run). It is kept under
//! `target/test-tools/wheel-cache/<hash of the sources>/`, so a rerun does not rebuild.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use common::{run_ok, show, TestEnv};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The pinned maturin (`SAFE_PRUNE_TEST_MATURIN`). Panics if unset: a test that needs it never
/// skips, in CI or anywhere else.
fn maturin() -> PathBuf {
    match std::env::var_os("SAFE_PRUNE_TEST_MATURIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ if std::env::var("CI").as_deref() == Ok("true") => panic!(
            "SAFE_PRUNE_TEST_MATURIN is not set, and CI=true: the packaging tests must run in CI. \
             Run the suite with scripts/test, which installs maturin and sets it."
        ),
        _ => panic!(
            "SAFE_PRUNE_TEST_MATURIN is not set. Run the tests with scripts/test: it installs the \
             pinned maturin into target/test-tools/venv and sets SAFE_PRUNE_TEST_MATURIN."
        ),
    }
}

/// Every file that goes into the wheel's build, with its path, in a stable order.
fn wheel_inputs() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = [
        "Cargo.toml",
        "Cargo.lock",
        "pyproject.toml",
        "build.rs",
        "README.md",
        "LICENSE-MIT",
        "LICENSE-APACHE",
        "platform/Cargo.toml",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    let mut dirs = vec![PathBuf::from("src"), PathBuf::from("platform/src")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(repo().join(&dir)) else { continue };
        for entry in entries.flatten() {
            let rel = dir.join(entry.file_name());
            match entry.file_type() {
                Ok(t) if t.is_dir() => dirs.push(rel),
                Ok(t) if t.is_file() => files.push(rel),
                _ => {}
            }
        }
    }
    files.sort();
    files
}

/// A key for the wheel cache: the maturin version and every input file, path and contents.
fn source_key(maturin_version: &str) -> String {
    let mut data = Vec::new();
    data.extend_from_slice(maturin_version.as_bytes());
    for rel in wheel_inputs() {
        let contents = std::fs::read(repo().join(&rel)).unwrap_or_default();
        data.extend_from_slice(rel.to_string_lossy().as_bytes());
        data.push(0);
        data.extend_from_slice(&(contents.len() as u64).to_le_bytes());
        data.extend_from_slice(&contents);
    }
    common::archive::sha256(&data)[..10].iter().map(|b| format!("{b:02x}")).collect()
}

/// The one `safe_prune-*.whl` in `dir`, if any.
fn wheel_in(dir: &Path) -> Option<PathBuf> {
    let mut wheels: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with("safe_prune-") && name.ends_with(".whl")
        })
        .collect();
    (wheels.len() == 1).then(|| wheels.pop().unwrap())
}

/// The wheel of this checkout, built once per source state (see the module docs).
fn wheel() -> &'static Path {
    static WHEEL: OnceLock<PathBuf> = OnceLock::new();
    WHEEL.get_or_init(build_wheel)
}

fn build_wheel() -> PathBuf {
    let maturin = maturin();
    let version = run_ok(Command::new(&maturin).arg("--version"));
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    let tools = repo().join("target/test-tools");
    let cache = tools.join("wheel-cache");
    let dir = cache.join(source_key(&version));
    if let Some(wheel) = wheel_in(&dir) {
        eprintln!("packaging: reusing {}", wheel.display());
        return wheel;
    }
    std::fs::create_dir_all(&cache).unwrap();
    let tmp = tempfile::Builder::new().prefix(".tmp-").tempdir_in(&cache).unwrap();
    let start = Instant::now();
    let mut cmd = Command::new(&maturin);
    cmd.current_dir(repo())
        .args(["build", "--profile", "dev", "--offline", "--target-dir"])
        .arg(tools.join("maturin-target"))
        .arg("--out")
        .arg(tmp.path())
        // What `cargo test` sets for the test must not leak into maturin's own cargo.
        .env_remove("CARGO")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("MATURIN_PEP517_ARGS");
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {}: {e}", maturin.display()));
    assert!(out.status.success(), "maturin build failed:\n{}", show(&out));
    eprintln!("packaging: {version} built the wheel in {:.1}s", start.elapsed().as_secs_f64());
    assert!(wheel_in(tmp.path()).is_some(), "maturin built no single safe_prune wheel:\n{}", show(&out));
    // Publish atomically: a concurrent run that got there first wins, ours is dropped.
    let tmp = tmp.keep();
    if std::fs::rename(&tmp, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    forget_old_wheels(&cache, &dir);
    wheel_in(&dir).expect("wheel cache entry without a wheel")
}

/// Drops wheel-cache entries of other source states older than a day.
fn forget_old_wheels(cache: &Path, keep: &Path) {
    let day_ago = SystemTime::now() - Duration::from_secs(86_400);
    for entry in std::fs::read_dir(cache).into_iter().flatten().flatten() {
        let path = entry.path();
        let old = entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t < day_ago);
        if path != keep && old {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// A `--find-links` directory of this test holding only the wheel.
fn dist(env: &TestEnv) -> PathBuf {
    let wheel = wheel();
    let dist = env.path("dist");
    std::fs::create_dir_all(&dist).unwrap();
    std::fs::copy(wheel, dist.join(wheel.file_name().unwrap())).unwrap();
    dist
}

/// `safe-prune 0.1.0`, or `safe-prune 0.1.0 (<commit>)`.
fn assert_version_line(stdout: &[u8]) {
    let text = String::from_utf8_lossy(stdout);
    let line = text.trim();
    let rest = line.strip_prefix(&format!("safe-prune {VERSION}")).unwrap_or_else(|| {
        panic!("--version printed {line:?}, expected `safe-prune {VERSION}` (the Cargo.toml version)")
    });
    let ok = rest.is_empty()
        || rest
            .strip_prefix(" (")
            .and_then(|r| r.strip_suffix(')'))
            .is_some_and(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(ok, "--version printed {line:?}");
}

/// Lists the wheel's files and reads its METADATA with Python's zipfile.
fn wheel_contents(wheel: &Path) -> (Vec<String>, String) {
    let script = "import sys, zipfile\n\
                  z = zipfile.ZipFile(sys.argv[1])\n\
                  names = z.namelist()\n\
                  meta = [n for n in names if n.endswith('.dist-info/METADATA')]\n\
                  print('\\n'.join(names))\n\
                  print('=====')\n\
                  print(z.read(meta[0]).decode() if len(meta) == 1 else '')\n";
    let out = run_ok(Command::new(common::python()).args(["-c", script]).arg(wheel));
    let text = String::from_utf8(out.stdout).unwrap();
    let (names, meta) = text.split_once("=====\n").unwrap();
    (names.lines().map(String::from).collect(), meta.to_string())
}

#[test]
fn wheel_carries_the_binary_and_the_cargo_metadata() {
    let wheel = wheel();
    let name = wheel.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with(&format!("safe_prune-{VERSION}-")), "{name}");
    // A binary wheel for this platform, not a pure-Python one.
    assert!(name.ends_with(".whl") && !name.contains("-none-any"), "{name}");
    assert!(name.contains("-py3-none-"), "a bin wheel is tagged py3-none-<platform>: {name}");

    let (names, meta) = wheel_contents(wheel);
    let data = format!("safe_prune-{VERSION}.data/");
    let info = format!("safe_prune-{VERSION}.dist-info/");
    assert!(names.contains(&format!("{data}scripts/safe-prune")), "no binary in the wheel: {names:#?}");
    for n in &names {
        assert!(n.starts_with(&data) || n.starts_with(&info), "unexpected file {n} in the wheel: {names:#?}");
    }
    for license in ["LICENSE-MIT", "LICENSE-APACHE"] {
        assert!(
            names.iter().any(|n| n.starts_with(&info) && n.ends_with(license)),
            "{license} not in the wheel: {names:#?}"
        );
    }

    let field = |key: &str| -> Vec<&str> {
        meta.lines().filter_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(": "))).collect()
    };
    assert_eq!(field("Name"), ["safe-prune"], "{meta}");
    assert_eq!(field("Version"), [VERSION], "the version must come from Cargo.toml\n{meta}");
    assert_eq!(field("Summary"), [env!("CARGO_PKG_DESCRIPTION")], "{meta}");
    let license = field("License-Expression").into_iter().chain(field("License")).next();
    assert_eq!(license, Some("MIT OR Apache-2.0"), "{meta}");
    assert_eq!(field("Description-Content-Type"), ["text/markdown; charset=UTF-8; variant=GFM"], "{meta}");
    assert!(meta.contains("\n# safe-prune\n"), "README is not the long description:\n{meta}");
    assert!(field("Classifier").contains(&"Environment :: Console"), "{meta}");
    assert!(field("Project-URL").iter().any(|u| u.starts_with("Repository, https://")), "{meta}");
}

#[test]
fn uv_tool_install_from_the_wheel_runs_offline() {
    let env = TestEnv::new();
    let dist = dist(&env);
    let start = Instant::now();
    run_ok(env.uv_cmd().args(["tool", "install", "--offline", "--find-links"]).arg(&dist).arg("safe-prune"));
    eprintln!("packaging: uv tool install took {:.1}s", start.elapsed().as_secs_f64());

    // The executable uv links into UV_TOOL_BIN_DIR (set by TestEnv), from UV_TOOL_DIR.
    let exe = env.home.join("uv-tool-bin/safe-prune");
    let target = std::fs::canonicalize(&exe).unwrap_or_else(|e| panic!("{}: {e}", exe.display()));
    assert!(target.starts_with(env.home.join("uv-tools/safe-prune")), "{}", target.display());
    let out = run_ok(env.command(&exe).arg("--version"));
    assert_version_line(&out.stdout);

    // It works: a dry run on the test's cache (which `uv tool install` just filled).
    let out = run_ok(env.command(&exe).arg("--dry-run"));
    let cache = format!("Pruning cache at: {}", env.cache.display());
    assert!(common::stderr(&out).contains(&cache), "{}", show(&out));

    let list = run_ok(env.uv_cmd().args(["tool", "list"]));
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(list.contains(&format!("safe-prune v{VERSION}")), "{list}");
}

/// `<cache>/environments-v2/*/*` links and the canonical environment each points to.
fn environment_links(cache: &Path) -> Vec<(PathBuf, PathBuf)> {
    let mut out = Vec::new();
    for digest in std::fs::read_dir(cache.join("environments-v2")).into_iter().flatten().flatten() {
        for link in std::fs::read_dir(digest.path()).into_iter().flatten().flatten() {
            let path = link.path();
            if path.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
                if let Ok(target) = std::fs::canonicalize(&path) {
                    out.push((path, target));
                }
            }
        }
    }
    out
}

#[test]
fn uvx_safe_prune_keeps_its_own_environment_and_removes_an_unused_one() {
    let env = TestEnv::new();
    let dist = dist(&env);
    // An unused tool environment: `sleepy` ran once and exited.
    env.tool_run("sleepy==0.1", "sleepy");
    let before = environment_links(&env.cache);
    assert_eq!(before.len(), 1, "expected sleepy's environment only: {before:?}");
    let (sleepy_link, sleepy_env) = before[0].clone();
    assert!(sleepy_env.starts_with(env.cache.join("archive-v0")), "{}", sleepy_env.display());

    // `uvx safe-prune -v`, offline, from the wheel, on the cache uvx itself uses (UV_CACHE_DIR).
    // The uv parent holds uv's cache lock shared for the whole run, so safe-prune prunes beside
    // it; `--grace 0s` lets it remove the just-created (but unused) sleepy environment, which the
    // default grace period of an hour would keep.
    let mut cmd = env.uv_cmd();
    cmd.args(["tool", "run", "--offline", "--find-links"])
        .arg(&dist)
        .args(["--from", "safe-prune", "safe-prune", "-v", "--grace", "0s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let uv = cmd.spawn().unwrap();
    let uv_pid = uv.id();
    let out = uv.wait_with_output().unwrap();
    eprintln!("packaging: uvx safe-prune took {:.1}s", start.elapsed().as_secs_f64());
    let text = common::stderr(&out);
    assert!(out.status.success(), "{}", show(&out));

    // The unused environment's link is gone; beside its uv parent, safe-prune defers the
    // archive that link reached to the next run, which removes it.
    assert!(!common::process::exists_no_follow(&sleepy_link), "sleepy's link stayed\n{text}");
    assert!(sleepy_env.exists(), "the just-unlinked sleepy archive was not deferred\n{text}");
    let sleepy_rel = sleepy_env.strip_prefix(&env.cache).unwrap().to_string_lossy().into_owned();
    assert!(text.lines().any(|l| l.contains(&sleepy_rel) && l.contains("removed by the next run")), "{text}");
    let again = cmd.output().unwrap();
    assert!(again.status.success(), "{}", show(&again));
    assert!(!sleepy_env.exists(), "the unused sleepy environment stayed\n{}", common::stderr(&again));

    // safe-prune's own environment stays: its link, and the archive holding the binary.
    let after = environment_links(&env.cache);
    let own: Vec<&(PathBuf, PathBuf)> =
        after.iter().filter(|(_, target)| target.join("bin/safe-prune").is_file()).collect();
    assert_eq!(own.len(), 1, "safe-prune's own environment is gone: {after:?}\n{text}");
    let own_env = &own[0].1;
    let own_rel = own_env.strip_prefix(&env.cache).unwrap().to_string_lossy().into_owned();
    assert!(own_rel.starts_with("archive-v0/"), "{own_rel}");

    // It says so: the kept entry, held by safe-prune itself (its executable), not by uv.
    assert!(text.contains("Removed "), "{text}");
    assert!(text.lines().any(|l| l.starts_with("Kept ") && l.contains(" in use by ")), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim() == own_rel)
        .unwrap_or_else(|| panic!("{own_rel} is not listed as kept:\n{text}"));
    let holders: Vec<&str> =
        lines[at + 1..].iter().take_while(|l| l.starts_with("    ")).map(|l| l.trim()).collect();
    let exe = format!("exe {}/bin/safe-prune", own_env.display());
    let own_line = holders
        .iter()
        .find(|h| h.contains("(safe-prune, ") && h.ends_with(&exe))
        .unwrap_or_else(|| panic!("no `(safe-prune, ...): {exe}` holder under {own_rel}:\n{text}"));
    let pid: u32 = own_line
        .strip_prefix("pid ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("bad holder line {own_line:?}"));
    assert_ne!(pid, uv_pid, "the holder is uv, not safe-prune: {own_line}");
}

/// A cache with `CACHEDIR.TAG` and one archive, `archive-v0/<id>/bin/safe-prune`: a copy of
/// the binary under test, as uvx would run it. Returns (cache, entry, binary).
fn cache_with_own_binary(root: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let cache = root.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::write(
        cache.join("CACHEDIR.TAG"),
        "Signature: 8a477f597d28d172789f06886806bc55\n# This file is a cache directory tag.\n",
    )
    .unwrap();
    let entry = cache.join("archive-v0/0123456789abcdefghij0");
    std::fs::create_dir_all(entry.join("bin")).unwrap();
    std::fs::write(entry.join("pyvenv.cfg"), "home = /usr/bin\n").unwrap();
    let exe = entry.join("bin/safe-prune");
    std::fs::copy(common::bin(), &exe).unwrap();
    // Another archive nothing uses or references: it goes, so the prune did run.
    std::fs::create_dir_all(cache.join("archive-v0/unused0000000000000000/bin")).unwrap();
    (cache, entry, exe)
}

#[test]
fn own_process_is_scanned_so_a_binary_in_the_cache_keeps_its_entry() {
    // No uv and no lock held by anyone: an exclusive prune, which removes every archive that
    // nothing references, unless a process uses it. The only user is safe-prune itself.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let (cache, entry, exe) = cache_with_own_binary(&root);
    let run = |args: &[&str]| {
        let mut cmd = Command::new(&exe);
        cmd.args(args).arg("--cache-dir").arg(&cache).env_remove("UV_CACHE_DIR").current_dir(&root);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        // A thread of this test binary that forks while `fs::copy` has the copy open makes the
        // exec fail with ETXTBSY until that child execs: try again.
        let mut tries = 0;
        let child = loop {
            match cmd.spawn() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => break other.unwrap(),
            }
        };
        let pid = child.id();
        (pid, child.wait_with_output().unwrap())
    };

    let (pid, out) = run(&["--format", "json"]);
    assert!(out.status.success(), "{}", show(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(entry.join("bin/safe-prune").is_file(), "safe-prune removed its own entry: {doc:#}");
    assert!(!cache.join("archive-v0/unused0000000000000000").exists(), "{doc:#}");
    let kept = doc["kept_in_use"].as_array().unwrap();
    let own = kept
        .iter()
        .find(|k| k["path"] == "archive-v0/0123456789abcdefghij0")
        .unwrap_or_else(|| panic!("own entry not in kept_in_use: {doc:#}"));
    let holders = own["holders"].as_array().unwrap();
    assert!(
        holders.iter().any(|h| h["pid"] == pid
            && h["command"] == "safe-prune"
            && h["evidence"] == "exe"
            && h["detail"] == exe.to_str().unwrap()),
        "safe-prune (pid {pid}) is not a holder of its own entry: {doc:#}"
    );

    // The human `-v` report names it too.
    let (pid, out) = run(&["--dry-run", "-v"]);
    assert!(out.status.success(), "{}", show(&out));
    let text = common::stderr(&out);
    assert!(text.contains("Would keep 1 entry in use by 1 running process"), "{text}");
    assert!(text.contains("  archive-v0/0123456789abcdefghij0\n"), "{text}");
    assert!(
        text.contains(&format!("    pid {pid} (safe-prune, this process, user "))
            && text.contains(&format!(": exe {}", exe.display())),
        "{text}"
    );
}

/// The workflow as YAML, and one job of it.
fn workflow() -> yaml_rust2::Yaml {
    let text = std::fs::read_to_string(repo().join(".github/workflows/release.yml")).unwrap();
    let mut docs = yaml_rust2::YamlLoader::load_from_str(&text).expect("release.yml is not valid YAML");
    assert_eq!(docs.len(), 1);
    docs.remove(0)
}

/// Every `uses:` of a job's steps.
fn uses(job: &yaml_rust2::Yaml) -> Vec<String> {
    job["steps"].as_vec().unwrap().iter().filter_map(|s| s["uses"].as_str().map(String::from)).collect()
}

#[test]
fn release_workflow_builds_every_target_and_uploads_it() {
    let wf = workflow();
    let tags = wf["on"]["push"]["tags"].as_vec().expect("on.push.tags");
    assert!(tags.iter().any(|t| t.as_str() == Some("v*")), "{tags:?}");
    let jobs = wf["jobs"].as_hash().expect("jobs");

    let mut targets = Vec::new();
    for (name, job) in jobs {
        let name = name.as_str().unwrap();
        let steps = job["steps"].as_vec().unwrap_or_else(|| panic!("job {name} has no steps"));
        assert!(!steps.is_empty(), "job {name}");
        let uses = uses(job);
        // Every action is pinned to a version.
        for u in &uses {
            assert!(u.contains('@'), "job {name}: unpinned action {u}");
        }
        let builds = uses.iter().any(|u| u.starts_with("PyO3/maturin-action@"));
        if !builds {
            continue;
        }
        let uploads = uses.iter().filter(|u| u.starts_with("actions/upload-artifact@")).count();
        assert!(uploads >= 1, "build job {name} uploads nothing");
        let maturin =
            steps.iter().find(|s| s["uses"].as_str().is_some_and(|u| u.starts_with("PyO3/"))).unwrap();
        if maturin["with"]["command"].as_str() == Some("sdist") {
            targets.push("sdist".to_string());
            continue;
        }
        // A wheel job names its target, through its matrix, and archives the binary.
        assert_eq!(
            maturin["with"]["target"].as_str(),
            Some("${{ matrix.platform.target }}"),
            "build job {name} names no target"
        );
        assert!(
            steps.iter().any(|s| s["run"].as_str().is_some_and(|r| r.contains("scripts/release-archive"))),
            "build job {name} makes no archive"
        );
        let matrix = job["strategy"]["matrix"]["platform"].as_vec().expect("matrix.platform");
        for p in matrix {
            let target =
                p["target"].as_str().unwrap_or_else(|| panic!("job {name}: a platform without target"));
            if target.contains("linux") {
                let manylinux = p["manylinux"].as_str().unwrap_or_default();
                let want = if target.ends_with("-musl") { "musllinux_1_2" } else { "2_17" };
                assert_eq!(manylinux, want, "job {name} {target}");
            }
            targets.push(target.to_string());
        }
    }
    targets.sort();
    let mut want = vec![
        "aarch64-apple-darwin",
        "aarch64-unknown-linux-gnu",
        "aarch64-unknown-linux-musl",
        "sdist",
        "x86_64-apple-darwin",
        "x86_64-unknown-linux-gnu",
        "x86_64-unknown-linux-musl",
    ];
    want.sort();
    assert_eq!(targets, want);

    // The release job needs every build, writes the release, and attaches checksums.
    let release = &wf["jobs"]["release"];
    let needs: Vec<&str> = release["needs"].as_vec().unwrap().iter().filter_map(|n| n.as_str()).collect();
    for build in ["sdist", "linux", "macos"] {
        assert!(needs.contains(&build), "release does not need {build}: {needs:?}");
    }
    assert_eq!(release["permissions"]["contents"].as_str(), Some("write"));
    let runs: String = release["steps"].as_vec().unwrap().iter().filter_map(|s| s["run"].as_str()).collect();
    assert!(runs.contains("sha256sum") && runs.contains("SHA256SUMS"), "no checksums");
    assert!(runs.contains("gh release create"), "no release");

    // PyPI: trusted publishing, the only job with an OIDC token, after the release.
    let pypi = &wf["jobs"]["pypi"];
    assert_eq!(pypi["permissions"]["id-token"].as_str(), Some("write"));
    assert!(uses(pypi).iter().any(|u| u.starts_with("pypa/gh-action-pypi-publish@")));
    assert_eq!(pypi["environment"]["name"].as_str(), Some("pypi"));
    for (name, job) in jobs {
        if name.as_str() != Some("pypi") {
            assert!(job["permissions"]["id-token"].is_badvalue(), "{name:?} asks for id-token");
        }
    }
    assert_eq!(wf["permissions"]["contents"].as_str(), Some("read"), "default permissions");
}

#[test]
fn release_archive_script_packs_the_binary_of_a_wheel() {
    // scripts/release-archive, on the wheel built here: the archive holds the wheel's binary.
    let wheel = wheel();
    let tmp = tempfile::tempdir().unwrap();
    let (wheels, out) = (tmp.path().join("dist"), tmp.path().join("archives"));
    std::fs::create_dir_all(&wheels).unwrap();
    std::fs::copy(wheel, wheels.join(wheel.file_name().unwrap())).unwrap();
    let target = "x86_64-unknown-linux-gnu";
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("scripts/release-archive")).args([VERSION, target]).arg(&wheels).arg(&out);
    let path = PathBuf::from(String::from_utf8(run_ok(&mut cmd).stdout).unwrap().trim());
    let name = format!("safe-prune-{VERSION}-{target}");
    assert_eq!(path, out.join(format!("{name}.tar.gz")));
    run_ok(Command::new("tar").arg("-xzf").arg(&path).arg("-C").arg(tmp.path()));
    let dir = tmp.path().join(&name);
    for file in ["safe-prune", "README.md", "CHANGELOG.md", "LICENSE-MIT", "LICENSE-APACHE"] {
        assert!(dir.join(file).is_file(), "{file} not in the archive");
    }
    let out = run_ok(Command::new(dir.join("safe-prune")).arg("--version"));
    assert_version_line(&out.stdout);
}
