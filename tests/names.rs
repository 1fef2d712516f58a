//! Issue 10: every entry safe-prune reports is named from the cache itself (distributions and
//! versions, Python version, kind), and `safe-prune du` shows where the space goes. The caches
//! are made by the pinned uv 0.13.8 from the test packages; the tool environments are
//! `sleepy` 0.1 and 0.2, `dozy` 1.0 and `zzztool` 1.0 (which requires `tinylib`, so its
//! environment has a dependency: uv marks both `REQUESTED`, the name lists `zzztool` first).
#![cfg(target_os = "linux")]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::archive::{b64_urlsafe_nopad, sha256, ZipWriter};
use common::process::Child;
use common::{copy_cache, run_ok, show, TestEnv};
use serde_json::Value;

/// `zzztool` 1.0: a console script that prints "ready" and a `Requires-Dist: tinylib`.
fn zzztool_wheel(dir: &Path) {
    let dist_info = "zzztool-1.0.dist-info";
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("zzztool/__init__.py".into(), b"".to_vec()),
        ("zzztool/cli.py".into(), b"import os\n\ndef main():\n    print('ready pid=%d' % os.getpid(), flush=True)\n".to_vec()),
        (
            format!("{dist_info}/METADATA"),
            b"Metadata-Version: 2.1\nName: zzztool\nVersion: 1.0\nRequires-Dist: tinylib>=1.0\n\nName: not-this\n"
                .to_vec(),
        ),
        (
            format!("{dist_info}/WHEEL"),
            b"Wheel-Version: 1.0\nGenerator: safe-prune-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n".to_vec(),
        ),
        (format!("{dist_info}/entry_points.txt"), b"[console_scripts]\nzzztool = zzztool.cli:main\n".to_vec()),
    ];
    let mut record = String::new();
    for (path, data) in &files {
        record.push_str(&format!("{path},sha256={},{}\n", b64_urlsafe_nopad(&sha256(data)), data.len()));
    }
    record.push_str(&format!("{dist_info}/RECORD,,\n"));
    files.push((format!("{dist_info}/RECORD"), record.into_bytes()));
    let mut zip = ZipWriter::default();
    for (path, data) in &files {
        zip.file(path, data);
    }
    std::fs::write(dir.join("zzztool-1.0-py3-none-any.whl"), zip.finish()).unwrap();
}

/// A real cache: `populate_cache` (sleepy 0.1 and 0.2, dozy, tinylib, srclib twice, `uv run
/// --with tinylib`, a script) and `zzztool`.
fn real_cache() -> TestEnv {
    let env = TestEnv::new();
    zzztool_wheel(&env.wheels);
    env.populate_cache();
    env.tool_run("zzztool", "zzztool");
    env
}

/// `major.minor.micro` of the test interpreter.
fn python_version() -> String {
    let out = run_ok(
        Command::new(common::python()).args(["-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"]),
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn json(out: &Output) -> Value {
    assert!(out.status.success(), "{}", show(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {}", show(out)))
}

fn run_json(env: &TestEnv, cache: &Path, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--format", "json"]);
    json(&env.safe_prune_on(cache, &all))
}

/// Entries of a JSON list, by path.
fn by_path(list: &Value) -> BTreeMap<String, Value> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list:#}"))
        .iter()
        .map(|e| (e["path"].as_str().unwrap_or_else(|| panic!("no path: {e:#}")).to_string(), e.clone()))
        .collect()
}

/// The archive (`archive-v0/<id>`) of the tool environment holding `dist_info`.
fn env_archive(cache: &Path, dist_info: &str) -> String {
    for entry in std::fs::read_dir(cache.join("archive-v0")).unwrap().flatten() {
        let lib = entry.path().join("lib");
        let Ok(pythons) = std::fs::read_dir(&lib) else { continue };
        for python in pythons.flatten() {
            let site = python.path().join("site-packages");
            let only = std::fs::read_dir(&site)
                .map(|d| {
                    d.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".dist-info")).count()
                })
                .unwrap_or(0);
            if site.join(dist_info).is_dir() && (only == 1 || dist_info.starts_with("zzztool")) {
                return format!("archive-v0/{}", entry.file_name().to_string_lossy());
            }
        }
    }
    panic!("no environment with {dist_info} in {}", cache.display());
}

/// The unpacked wheel archive whose top holds `dist_info`.
fn wheel_archive(cache: &Path, dist_info: &str) -> String {
    std::fs::read_dir(cache.join("archive-v0"))
        .unwrap()
        .flatten()
        .find(|e| e.path().join(dist_info).is_dir())
        .map(|e| format!("archive-v0/{}", e.file_name().to_string_lossy()))
        .unwrap_or_else(|| panic!("no unpacked {dist_info}"))
}

fn check_env(entry: &Value, name: &str, python: &str, distributions: &[&str]) {
    assert_eq!(entry["name"], name, "{entry:#}");
    assert_eq!(entry["kind"], "tool-env", "{entry:#}");
    assert_eq!(entry["python"], python, "{entry:#}");
    let dists: Vec<&str> =
        entry["distributions"].as_array().unwrap().iter().map(|d| d.as_str().unwrap()).collect();
    assert_eq!(dists, distributions, "{entry:#}");
}

#[test]
fn names_tool_environments_wheels_and_sdists() {
    let env = real_cache();
    let cache = &env.cache;
    let python = python_version();
    let sleepy1 = env_archive(cache, "sleepy-0.1.dist-info");
    let sleepy2 = env_archive(cache, "sleepy-0.2.dist-info");
    let dozy = env_archive(cache, "dozy-1.0.dist-info");
    let zzz = env_archive(cache, "zzztool-1.0.dist-info");

    let report = run_json(&env, cache, &["--dry-run"]);
    let removed = by_path(&report["removed_entries"]);
    check_env(&removed[&sleepy1], "sleepy 0.1", &python, &["sleepy 0.1"]);
    check_env(&removed[&sleepy2], "sleepy 0.2", &python, &["sleepy 0.2"]);
    check_env(&removed[&dozy], "dozy 1.0", &python, &["dozy 1.0"]);
    // Both are REQUESTED (uv marks every distribution): the one nothing requires comes first.
    check_env(&removed[&zzz], "zzztool 1.0", &python, &["zzztool 1.0", "tinylib 1.0"]);
    // The script's venv and the `uv run --with tinylib` environment are named by tinylib.
    let script = removed
        .iter()
        .find(|(p, _)| p.starts_with("environments-v2/script-"))
        .map(|(_, e)| e)
        .expect("script venv");
    check_env(script, "tinylib 1.0", &python, &["tinylib 1.0"]);
    // The digest directory of the links names the environments it holds.
    let links = removed
        .iter()
        .find(|(p, e)| {
            p.starts_with("environments-v2/")
                && e["reason"] == "cached-environment"
                && e.get("python").is_none()
        })
        .map(|(_, e)| e)
        .expect("environment links");
    // The tool environments (four, plus the cached base of `uv run --with tinylib` where uv
    // puts it in the same digest directory): three named, then how many more.
    let digest = cache.join(links["path"].as_str().unwrap());
    let environments = std::fs::read_dir(&digest)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_symlink()))
        .count();
    assert!(environments >= 4, "{environments} environments in {}", digest.display());
    let name = links["name"].as_str().unwrap();
    let parts: Vec<&str> = name.split("; ").collect();
    assert_eq!(parts.len(), 4, "{links:#}");
    assert_eq!(parts[3], format!("+{} more", environments - 3), "{links:#}");
    for part in &parts[..3] {
        assert!(
            ["sleepy 0.1", "sleepy 0.2", "dozy 1.0", "zzztool 1.0", "tinylib 1.0"].contains(part),
            "{links:#}"
        );
    }
    // The stale revision of srclib is named by its path.
    let stale = removed.values().find(|e| e["reason"] == "stale-revision").expect("stale revision");
    assert_eq!((&stale["name"], &stale["kind"]), (&Value::from("srclib 1.0"), &Value::from("sdist-build")));
    for e in removed.values() {
        assert!(e["kind"].is_string(), "no kind: {e:#}");
    }

    // With --ci the unpacked wheels go too.
    let report = run_json(&env, cache, &["--dry-run", "--ci"]);
    let removed = by_path(&report["removed_entries"]);
    for (dist_info, name) in
        [("tinylib-1.0.dist-info", "tinylib 1.0"), ("srclib-1.0.dist-info", "srclib 1.0")]
    {
        let e = &removed[&wheel_archive(cache, dist_info)];
        assert_eq!((&e["name"], &e["kind"]), (&Value::from(name), &Value::from("unpacked-wheel")), "{e:#}");
        assert!(e.get("python").is_none(), "{e:#}");
    }

    // `du` names the wheel and sdist pointers by their path (and the versions below them).
    let du = run_json(&env, cache, &["du", "--top", "0"]);
    let entries = by_path(&du["entries"]);
    let pointer = |prefix: &str, package: &str| {
        entries
            .iter()
            .find(|(p, _)| p.starts_with(prefix) && p.ends_with(&format!("/{package}")))
            .map(|(_, e)| e.clone())
            .unwrap_or_else(|| panic!("no {prefix}…/{package} in {:#?}", entries.keys()))
    };
    let w = pointer("wheels-v7/", "tinylib");
    assert_eq!(
        (&w["name"], &w["kind"]),
        (&Value::from("tinylib 1.0"), &Value::from("unpacked-wheel")),
        "{w:#}"
    );
    let s = pointer("sdists-v10/", "srclib");
    assert_eq!((&s["name"], &s["kind"]), (&Value::from("srclib 1.0"), &Value::from("sdist-build")), "{s:#}");
    check_env(&entries[&zzz], "zzztool 1.0", &python, &["zzztool 1.0", "tinylib 1.0"]);
    for e in entries.values() {
        assert!(e["kind"].is_string(), "no kind: {e:#}");
    }
    let packages: Vec<&str> =
        du["packages"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    for p in ["sleepy", "dozy", "zzztool", "tinylib", "srclib"] {
        assert!(packages.contains(&p), "no package row {p}: {packages:?}");
    }

    // Human output: uv's line first, then the names (-v) and the summary.
    let out = env.safe_prune_on(cache, &["--dry-run", "-v"]);
    assert!(out.status.success(), "{}", show(&out));
    let text = common::stderr(&out);
    let minor: String = python.split('.').take(2).collect::<Vec<_>>().join(".");
    let line = format!("Would remove {sleepy1} (unreferenced-archive, ");
    let at = text.lines().find(|l| l.starts_with(&line)).unwrap_or_else(|| panic!("no {line}:\n{text}"));
    assert!(at.ends_with(&format!(")  sleepy 0.1 (tool env, python {minor})")), "{at}");
    let zline = text.lines().find(|l| l.contains(&zzz)).unwrap();
    assert!(zline.ends_with(&format!("zzztool 1.0 (tool env, python {minor}, +1 dependency)")), "{zline}");
    let lines: Vec<&str> = text.lines().collect();
    let uv_line =
        lines.iter().position(|l| l.starts_with("Would remove ") && l.contains(" files (")).unwrap();
    let free = lines.iter().position(|l| l.starts_with("Would free: ")).unwrap_or_else(|| panic!("{text}"));
    assert!(uv_line < free, "{text}");
    // Counted once each: archives and the script's venv, not the links to them.
    let venvs = removed_venvs(&run_json(&env, cache, &["--dry-run"]));
    assert_eq!(venvs, environments + 1, "the tool environments and the script's venv");
    assert!(lines[free].contains(&format!("{venvs} old tool environments (")), "{venvs}: {text}");
    assert!(lines[free].contains("stale source build"), "{text}");
}

/// Removed entries that are environments themselves (archives and real venvs, not links).
fn removed_venvs(report: &Value) -> usize {
    by_path(&report["removed_entries"])
        .iter()
        .filter(|(p, e)| {
            e["kind"] == "tool-env"
                && (p.starts_with("archive-v0/") || p.starts_with("environments-v2/script-"))
        })
        .count()
}

#[test]
fn unreadable_metadata_and_link_loops_give_no_name_and_no_error() {
    let env = real_cache();
    let cache = env.path("broken");
    copy_cache(&env.cache, &cache);
    let sleepy1 = env_archive(&cache, "sleepy-0.1.dist-info");
    let sleepy2 = env_archive(&cache, "sleepy-0.2.dist-info");
    let dozy = env_archive(&cache, "dozy-1.0.dist-info");
    let site = |archive: &str| {
        let lib = cache.join(archive).join("lib");
        std::fs::read_dir(&lib).unwrap().flatten().next().unwrap().path().join("site-packages")
    };
    // Corrupt METADATA (a new file: the old one is hard-linked into the wheel archive).
    let meta = site(&sleepy1).join("sleepy-0.1.dist-info/METADATA");
    std::fs::remove_file(&meta).unwrap();
    let mut garbage = b"\xff\xfe\x00Name\x00: \x1b[2J\n".to_vec();
    garbage.extend(std::iter::repeat_n(b'A', 200_000));
    std::fs::write(&meta, garbage).unwrap();
    // An empty dist-info.
    let dist = site(&sleepy2).join("sleepy-0.2.dist-info");
    for f in std::fs::read_dir(&dist).unwrap().flatten() {
        std::fs::remove_file(f.path()).unwrap();
    }
    // METADATA as a symlink loop.
    let meta = site(&dozy).join("dozy-1.0.dist-info/METADATA");
    std::fs::remove_file(&meta).unwrap();
    std::os::unix::fs::symlink("METADATA", &meta).unwrap();
    // An archive and an environment link that are symlink loops.
    std::os::unix::fs::symlink("loop", cache.join("archive-v0/loop")).unwrap();
    let digest = std::fs::read_dir(cache.join("environments-v2"))
        .unwrap()
        .flatten()
        .find(|e| !e.path().join("pyvenv.cfg").exists())
        .unwrap()
        .path();
    std::os::unix::fs::symlink("l2", digest.join("l1")).unwrap();
    std::os::unix::fs::symlink("l1", digest.join("l2")).unwrap();

    for args in [&["--dry-run"][..], &["du", "--top", "0"]] {
        let report = run_json(&env, &cache, args);
        assert_eq!(report["errors"], Value::Array(Vec::new()), "{args:?}: {report:#}");
        let list = if args[0] == "du" { &report["entries"] } else { &report["removed_entries"] };
        let entries = by_path(list);
        for archive in [&sleepy1, &sleepy2, &dozy] {
            let e = &entries[archive.as_str()];
            assert!(e.get("name").is_none(), "{args:?}: a name was guessed: {e:#}");
            assert_eq!(e["kind"], "tool-env", "{e:#}");
            assert!(e["distributions"].is_null(), "{e:#}");
        }
        let e = &entries["archive-v0/loop"];
        assert_eq!((e.get("name"), &e["kind"]), (None, &Value::from("other")), "{e:#}");
    }
    let out = env.safe_prune_on(&cache, &["--dry-run", "-v"]);
    assert!(out.status.success(), "{}", show(&out));
    let out = env.safe_prune_on(&cache, &["du", "-v"]);
    assert!(out.status.success(), "{}", show(&out));
}

/// Every path below `root`, each inode once: (apparent bytes, allocated bytes, non-directories).
fn independent_walk(root: &Path) -> (u64, u64, u64) {
    let mut seen = HashSet::new();
    let (mut bytes, mut disk, mut files) = (0, 0, 0);
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                files += 1;
                if m.nlink() > 1 && !seen.insert((m.dev(), m.ino())) {
                    continue;
                }
            }
            bytes += m.len();
            disk += m.blocks() * 512;
        }
    }
    (bytes, disk, files)
}

#[test]
fn du_totals_hard_links_and_in_use() {
    let env = real_cache();
    let cache = &env.cache;
    // A project venv outside the cache, hard-linked from the tinylib archive (uv's default).
    let venv = env.work.join("outside-venv");
    run_ok(env.uv_cmd().arg("venv").arg(&venv));
    run_ok(
        env.uv_cmd()
            .args(["pip", "install", "--link-mode", "hardlink", "--offline", "--find-links"])
            .arg(&env.wheels)
            .arg("--python")
            .arg(&venv)
            .arg("tinylib"),
    );
    let dozy = env_archive(cache, "dozy-1.0.dist-info");
    let tinylib = wheel_archive(cache, "tinylib-1.0.dist-info");
    let sleepy = env_archive(cache, "sleepy-0.1.dist-info");
    // A live process holding dozy's environment (its working directory).
    let holder = Child(
        Command::new("sleep").arg("60").current_dir(cache.join(&dozy)).stdin(Stdio::null()).spawn().unwrap(),
    );
    let pid = holder.id();
    assert!(common::process::wait_until(Duration::from_secs(10), || std::fs::read_link(format!(
        "/proc/{pid}/cwd"
    ))
    .is_ok_and(|t| t.starts_with(cache))));

    let before = common::snapshot(cache);
    let du = run_json(&env, cache, &["du", "--top", "0"]);
    common::assert_same_tree(&before, &common::snapshot(cache), "du is read-only");

    // Totals equal an independent walk (apparent and allocated, hard links once); the
    // bucket rows add up to them.
    let (bytes, disk, files) = independent_walk(cache);
    assert_eq!(
        (&du["total"]["bytes"], &du["total"]["disk"]),
        (&Value::from(bytes), &Value::from(disk)),
        "{du:#}"
    );
    assert_eq!(du["total"]["files"], files);
    let sum = |rows: &Value, key: &str| -> u64 {
        rows.as_array().unwrap().iter().map(|r| r[key].as_u64().unwrap()).sum()
    };
    assert_eq!(sum(&du["buckets"], "bytes"), bytes);
    assert_eq!(sum(&du["buckets"], "disk"), disk);
    // The package rows (and the entries of no package) add up to it too, with the
    // directories above the entries (`archive-v0`, `wheels-v7/index`, ...).
    let packages = sum(&du["packages"], "disk") + du["unattributed"]["disk"].as_u64().unwrap();
    assert_eq!(packages + container_disk(cache, &du), disk);

    // Each entry's own numbers equal a walk of that entry alone.
    let entries = by_path(&du["entries"]);
    for rel in [&dozy, &tinylib, &sleepy] {
        let (b, d, f) = independent_walk(&cache.join(rel));
        let dir = std::fs::symlink_metadata(cache.join(rel)).unwrap();
        let e = &entries[rel.as_str()];
        assert_eq!(e["bytes"], b + dir.len(), "{rel}: {e:#}");
        assert_eq!(e["disk"], d + dir.blocks() * 512, "{rel}: {e:#}");
        assert_eq!(e["files"], f, "{rel}: {e:#}");
    }
    // Hard links: tinylib's archive is installed in the outside venv; sleepy's environment
    // shares files only with its wheel archive, inside the cache.
    assert_eq!(entries[&tinylib]["linked_elsewhere"], true, "{:#}", entries[&tinylib]);
    assert!(entries[&tinylib]["links"].as_u64().unwrap() >= 2);
    assert_eq!(entries[&sleepy]["linked_elsewhere"], false, "{:#}", entries[&sleepy]);

    // In use: exactly dozy's environment and what it needs (its link and the link's lock).
    let in_use: Vec<&String> = entries.iter().filter(|(_, e)| e["in_use"] == true).map(|(p, _)| p).collect();
    assert!(in_use.contains(&&dozy), "{in_use:?}");
    for p in &in_use {
        let e = &entries[p.as_str()];
        assert!(*p == &dozy || p.starts_with("environments-v2/"), "{p} is not held: {e:#}");
        assert_eq!(e["name"], "dozy 1.0", "{e:#}");
    }
    let held_disk: u64 = in_use.iter().map(|p| entries[p.as_str()]["disk"].as_u64().unwrap()).sum();
    let (_, dozy_disk, _) = independent_walk(&cache.join(&dozy));
    let dozy_dir = std::fs::symlink_metadata(cache.join(&dozy)).unwrap().blocks() * 512;
    assert!(held_disk >= dozy_disk + dozy_dir, "{held_disk} < {dozy_disk}");
    // The total counts each file once (dozy's files are hard links shared with its wheel's
    // archive, whichever sorts first): exactly a walk of the held entries, inodes once.
    let total_in_use = du["in_use"]["disk"].as_u64().unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut union = 0;
    let mut stack: Vec<PathBuf> = in_use.iter().map(|p| cache.join(p)).collect();
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if seen.insert((meta.dev(), meta.ino())) {
            union += meta.blocks() * 512;
        }
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().flatten().map(|e| e.path()));
        }
    }
    assert_eq!(total_in_use, union, "held entries: {in_use:?}");
    assert!(total_in_use <= held_disk, "{total_in_use} vs {held_disk}");
    // A plain prune keeps the held environment: it frees nothing of it.
    assert_eq!(entries[&dozy]["prune"]["disk"], 0, "{:#}", entries[&dozy]);
    assert!(entries[&sleepy]["prune"]["disk"].as_u64().unwrap() > 0, "{:#}", entries[&sleepy]);

    // `in-use` and the prune report name the held entry.
    let listing = run_json(&env, cache, &["in-use"]);
    let listed = by_path(&listing["in_use"]);
    assert_eq!(
        (&listed[&dozy]["name"], &listed[&dozy]["kind"]),
        (&Value::from("dozy 1.0"), &Value::from("tool-env"))
    );
    let report = run_json(&env, cache, &["--dry-run"]);
    let kept = by_path(&report["kept_in_use"]);
    assert_eq!(
        (&kept[&dozy]["name"], &kept[&dozy]["kind"]),
        (&Value::from("dozy 1.0"), &Value::from("tool-env"))
    );
    for e in kept.values() {
        assert!(e["kind"].is_string(), "{e:#}");
    }
    // The summary says so in words.
    let out = env.safe_prune_on(cache, &["--dry-run"]);
    let text = common::stderr(&out);
    assert!(text.lines().any(|l| l.starts_with("Would keep: ") && l.contains("dozy 1.0 (in use)")), "{text}");
    drop(holder);
}

/// Allocated bytes of the directories above the entries (bucket directories and the like).
fn container_disk(cache: &Path, du: &Value) -> u64 {
    let entries: HashSet<PathBuf> = du["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| PathBuf::from(e["path"].as_str().unwrap()))
        .collect();
    let mut total = 0;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(cache.join(&rel)).unwrap().flatten() {
            let child = rel.join(e.file_name());
            if entries.contains(&child) {
                continue;
            }
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            assert!(m.is_dir(), "{} is in no entry", child.display());
            total += m.blocks() * 512;
            stack.push(child);
        }
    }
    total
}
