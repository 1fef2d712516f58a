//! Proves safe-prune never harms anything outside the cache and refuses what is not a
//! cache:
//! - "victim" directories outside the cache, reached through symlinks planted in every
//!   bucket prune walks (and at the top level, and through a hard link), survive byte for
//!   byte, with and without `--ci`; only the links go, exactly as uv 0.13.8 does it;
//! - a folder that is not a uv cache (a project with `.git`, a cargo target dir with its
//!   own CACHEDIR.TAG) is refused: exit 2, one line on stderr naming it, nothing changed,
//!   not even a `.lock` created (uv 0.13.8 would delete most of it);
//! - a missing cache directory is "No cache found at: ...", exit 0, nothing created;
//! - a regular file as cache directory: exit 2, untouched.

mod common;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use common::{assert_same_tree, copy_cache, copy_tree, show, snapshot, stderr, TestEnv};

/// Creates a victim directory `victims/<name>` with a few files; returns its path.
fn victim(victims: &Path, name: &str) -> PathBuf {
    let dir = victims.join(name);
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("payload.txt"), format!("victim {name}\n")).unwrap();
    std::fs::write(dir.join("sub/nested.txt"), "nested\n").unwrap();
    std::fs::write(dir.join(".hidden"), "hidden\n").unwrap();
    dir
}

/// Links `cache/rel` -> a new victim named after `rel`; creates parents.
fn plant(cache: &Path, victims: &Path, rel: &str) {
    let target = victim(victims, &rel.replace('/', "__"));
    let link = cache.join(rel);
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    symlink(target, link).unwrap();
}

/// The one `sdists-v10/index/<digest>/srclib/1.0` shard of the populated cache.
fn srclib_shard(cache: &Path) -> PathBuf {
    let index = cache.join("sdists-v10/index");
    let digest = std::fs::read_dir(&index).unwrap().next().unwrap().unwrap().path();
    digest.join("srclib/1.0")
}

/// Plants symlinks to victims everywhere prune looks, in a populated cache.
fn plant_victims(cache: &Path, victims: &Path) {
    // Buckets prune empties or walks.
    plant(cache, victims, "archive-v0/EscapeToVictimDir");
    plant(cache, victims, "environments-v2/escape");
    plant(cache, victims, "environments-v2/0000000000000000/ffffffffffffffff");
    plant(cache, victims, "builds-v0/.tmpEscape");
    plant(cache, victims, "wheels-v7/escape");
    plant(cache, victims, "wheels-v7/pypi/escapee/1.0-py3-none-any");
    plant(cache, victims, "sdists-v10/escape");
    // Top level, including names of buckets and temp dirs.
    plant(cache, victims, "escape");
    plant(cache, victims, "simple-v27");
    plant(cache, victims, ".tmpEscape");
    plant(cache, victims, "wheels-v5");
    // A link to a victim *file* among the archives and among files-v0 objects.
    let file = victim(victims, "file-targets").join("payload.txt");
    symlink(&file, cache.join("archive-v0/EscapeToVictimFile")).unwrap();
    std::fs::create_dir_all(cache.join("files-v0/ef")).unwrap();
    symlink(&file, cache.join(format!("files-v0/ef/{}", "e".repeat(62)))).unwrap();
    // A hard link from an orphan archive to a victim file: the archive goes, the
    // victim's content stays.
    let hard = victim(victims, "hardlinked").join("payload.txt");
    std::fs::create_dir_all(cache.join("archive-v0/OrphanWithHardLink")).unwrap();
    std::fs::hard_link(&hard, cache.join("archive-v0/OrphanWithHardLink/payload.txt")).unwrap();

    // A source-dist shard shaped like srclib's (same revision pointer and metadata) whose
    // current revision has `src` and the built-wheel link pointing outside, and whose
    // stale sibling revision is a link to a victim.
    let shard = srclib_shard(cache);
    let fake = shard.parent().unwrap().parent().unwrap().join("escapee/1.0");
    std::fs::create_dir_all(&fake).unwrap();
    std::fs::copy(shard.join("revision.rev"), fake.join("revision.rev")).unwrap();
    let current = std::fs::read_dir(&shard)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("metadata.msgpack").is_file() && p.join("src").is_dir())
        .expect("srclib revision");
    let rev = fake.join(current.file_name().unwrap());
    std::fs::create_dir(&rev).unwrap();
    std::fs::copy(current.join("metadata.msgpack"), rev.join("metadata.msgpack")).unwrap();
    let rel = |p: &Path| p.strip_prefix(cache).unwrap().to_string_lossy().into_owned();
    plant(cache, victims, &rel(&rev.join("src")));
    plant(cache, victims, &rel(&rev.join("escapee-1.0-py3-none-any")));
    plant(cache, victims, &rel(&fake.join("StaleRevisionLink")));
}

fn victims_survive(args: &[&str]) {
    let env = TestEnv::new();
    env.populate_cache();
    let victims = env.path("victims");
    plant_victims(&env.cache, &victims);
    let intact = snapshot(&victims);
    assert!(intact.len() > 50, "too few victims planted");

    // uv 0.13.8 itself follows none of these links (so the comparison below is fair).
    let by_uv = env.path("by-uv");
    copy_cache(&env.cache, &by_uv);
    let out = env.uv_prune(&common::uv(), &by_uv, args);
    assert!(out.status.success(), "{}", show(&out));
    assert_same_tree(&intact, &snapshot(&victims), "victims after uv cache prune");

    let out = env.safe_prune_on(&env.cache, args);
    assert!(out.status.success(), "safe-prune {args:?}:\n{}", show(&out));
    assert_same_tree(&intact, &snapshot(&victims), &format!("victims after safe-prune {args:?}"));
    // Only the links went, the same ones uv removed.
    assert_same_tree(
        &snapshot(&by_uv),
        &snapshot(&env.cache),
        &format!("uv (expected) vs safe-prune (actual) {args:?}, with victim links"),
    );
}

#[test]
fn victims_outside_the_cache_survive() {
    victims_survive(&[]);
}

#[test]
fn victims_outside_the_cache_survive_ci() {
    victims_survive(&["--ci"]);
}

/// A project folder: files, subfolders, an empty folder, `.git`, a link out.
fn project_folder(dir: &Path, victims: &Path) {
    for (rel, text) in [
        ("README.txt", "read me\n"),
        (".hidden", "h\n"),
        ("docs/a.md", "# a\n"),
        ("src/pkg/mod.py", "x = 1\n"),
        (".git/HEAD", "ref: refs/heads/main\n"),
        (".git/objects/ab/cdef", "object"),
    ] {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    std::fs::create_dir_all(dir.join("data")).unwrap();
    symlink(victim(victims, "linked-from-project"), dir.join("linkdir")).unwrap();
}

/// A cargo target directory: it has a CACHEDIR.TAG (cargo's), but no uv bucket.
fn cargo_target_folder(dir: &Path, _victims: &Path) {
    for (rel, text) in [
        (
            "CACHEDIR.TAG",
            "Signature: 8a477f597d28d172789f06886806bc55\n\
             # This file is a cache directory tag created by cargo.\n",
        ),
        (".rustc_info.json", "{}"),
        ("debug/deps/libfoo.rlib", "rlib"),
        ("debug/.fingerprint/foo/output", "x"),
    ] {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
}

fn refuses(make: fn(&Path, &Path), name: &str) {
    let env = TestEnv::new();
    let victims = env.path("victims");
    std::fs::create_dir_all(&victims).unwrap();
    let folder = env.path(name);
    std::fs::create_dir(&folder).unwrap();
    make(&folder, &victims);
    let before = snapshot(&folder);
    let victims_before = snapshot(&victims);

    // Why refusing matters: uv 0.13.8 prunes such a folder without asking.
    let copy = env.path(&format!("{name}-uv"));
    copy_tree(&folder, &copy);
    let out = env.uv_prune(&common::uv(), &copy, &[]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(!common::tree_diff(&before, &snapshot(&copy)).is_empty(), "uv was expected to change {name}");

    for args in [vec![], vec!["--ci"], vec!["--dry-run"], vec!["prune", "--format", "json"]] {
        let out = env.safe_prune_on(&folder, &args);
        assert_eq!(out.status.code(), Some(2), "safe-prune {args:?} on {name}:\n{}", show(&out));
        let err = stderr(&out);
        assert_eq!(err.trim_end().lines().count(), 1, "one stderr line expected:\n{err}");
        assert!(
            err.contains(&folder.display().to_string()),
            "stderr does not name {}:\n{err}",
            folder.display()
        );
        assert_same_tree(&before, &snapshot(&folder), &format!("{name} after safe-prune {args:?}"));
    }
    assert_same_tree(&victims_before, &snapshot(&victims), "victims");
}

#[test]
fn refuses_a_project_folder() {
    refuses(project_folder, "project");
}

#[test]
fn refuses_a_cargo_target_folder() {
    refuses(cargo_target_folder, "cargo-target");
}

#[test]
fn missing_cache_dir_is_not_an_error() {
    let env = TestEnv::new();
    for (i, args) in [vec![], vec!["--ci"], vec!["--dry-run"]].into_iter().enumerate() {
        let missing = env.path(&format!("no-such-parent-{i}/cache"));
        let uv_args: Vec<&str> = args.iter().copied().filter(|a| *a != "--dry-run").collect();
        let uv_out = env.uv_prune(&common::uv(), &missing, &uv_args);
        assert!(uv_out.status.success(), "{}", show(&uv_out));
        let uv_line = stderr(&uv_out).trim().to_string();
        assert_eq!(uv_line, format!("No cache found at: {}", missing.display()));

        let out = env.safe_prune_on(&missing, &args);
        assert!(out.status.success(), "safe-prune {args:?}:\n{}", show(&out));
        assert!(stderr(&out).contains(&uv_line), "expected {uv_line:?}:\n{}", show(&out));
        assert!(!missing.parent().unwrap().exists(), "safe-prune created {}", missing.display());
    }
}

#[test]
fn cache_dir_that_is_a_file_is_refused() {
    let env = TestEnv::new();
    let file = env.path("a-file");
    std::fs::write(&file, "not a cache\n").unwrap();
    let before = snapshot(&env.root);

    let out = env.uv_prune(&common::uv(), &file, &[]);
    assert_eq!(out.status.code(), Some(2), "uv: {}", show(&out));

    for args in [vec![], vec!["--ci"], vec!["--dry-run"]] {
        let out = env.safe_prune_on(&file, &args);
        assert_eq!(out.status.code(), Some(2), "safe-prune {args:?}:\n{}", show(&out));
        assert!(stderr(&out).contains(&file.display().to_string()), "{}", show(&out));
        assert_same_tree(&before, &snapshot(&env.root), &format!("after safe-prune {args:?}"));
    }
}
