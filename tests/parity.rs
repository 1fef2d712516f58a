//! Differential tests against the real uv: on a real cache (made by uv 0.13.8, by uv
//! 0.6.2, or by both) plus junk and edge cases, `safe-prune` removes exactly what
//! `uv cache prune` (0.13.8) removes, with and without `--ci`. Each test copies one
//! populated cache twice, prunes one copy with uv and the other with safe-prune, and
//! compares the two trees (paths, file sizes, modes, contents, link targets, including the
//! `.lock` both create). No process uses these caches, so "in use" never applies here.
//! Also: `--dry-run` changes nothing, a second prune is a no-op, and a dangling symlink
//! in `archive-v0` (which makes uv fail half-way) does not stop safe-prune.

// Linux only: the junk includes a file name that is not UTF-8, which APFS refuses.
#![cfg(target_os = "linux")]

mod common;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use common::tree::bytes_path;
use common::{assert_same_tree, copy_cache, show, snapshot, stderr, tree_diff, TestEnv, Tree};

/// Writes `contents` at `cache/rel`, creating parent directories.
fn put(cache: &Path, rel: &str, contents: &str) {
    let path = cache.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, contents).unwrap();
}

/// Adds the junk and edge cases every parity test prunes, next to what uv made.
/// Comments say what uv 0.13.8 does with each.
fn add_junk(cache: &Path) {
    // Top level: unknown directories and files go ("dangling cache bucket"), whatever
    // their names; `.git`, `CACHEDIR.TAG`, `.gitignore` and `.lock` stay.
    put(cache, "junk-dir/sub/file.txt", "junk");
    put(cache, "junk-file.txt", "junk");
    put(cache, ".tmpAbC123/tinylib/__init__.py", "leaked wheel extraction");
    put(cache, "junk with spaces", "");
    put(cache, "junk\nwith\nnewlines/x", "");
    std::fs::write(bytes_path(cache, b"junk-\xff\xfe-not-utf8"), b"").unwrap();
    put(cache, ".git/HEAD", "ref: refs/heads/main\n");
    // A file with the name of a current bucket is still not a directory: it goes.
    put(cache, "flat-index-v7", "not a directory");
    // Current buckets that prune never enters: they stay.
    put(cache, "simple-v27/pypi/tinylib.rkyv", "rkyv");
    put(cache, "python-v1/downloads-json/0123456789abcdef.msgpack", "msgpack");
    put(cache, "binaries-v0/ruff/0.9.0/x86_64-unknown-linux-gnu/ruff", "#!/bin/sh\n");
    put(cache, "git-v1/db/0123456789abcdef/.git/HEAD", "ref: refs/heads/main\n");
    put(cache, "osv-v1/vulnerability/PYSEC-0000-0.msgpack", "osv");

    // A stale wheels bucket whose link is the only reference to an archive: the bucket
    // goes first, then the archive is unreferenced and goes too.
    put(cache, "archive-v0/OldV5OnlyReference/old/__init__.py", "");
    put(cache, "wheels-v5/pypi/old/old-1.0-py3-none-any.msgpack", "");
    symlink("../../../archive-v0/OldV5OnlyReference", cache.join("wheels-v5/pypi/old/old-1.0-py3-none-any"))
        .unwrap();
    // An archive nobody references (e.g. uv was killed between rename and link): goes.
    put(cache, "archive-v0/OrphanNoReference/pkg/__init__.py", "");
    // An archive referenced by an *absolute* link (uv < 0.11.17 wrote those): stays
    // (outside --ci). The copy helpers relocate the link into each copy.
    put(cache, "archive-v0/AbsoluteReference/abs/__init__.py", "");
    std::fs::create_dir_all(cache.join("wheels-v7/pypi/abs")).unwrap();
    symlink(cache.join("archive-v0/AbsoluteReference"), cache.join("wheels-v7/pypi/abs/1.0-py3-none-any"))
        .unwrap();
    // A wheel link to an archive that no longer exists: skipped, the link stays
    // (outside --ci).
    std::fs::create_dir_all(cache.join("wheels-v7/pypi/gone")).unwrap();
    symlink("../../../archive-v0/VanishedArchive0", cache.join("wheels-v7/pypi/gone/1.0-py3-none-any"))
        .unwrap();
    // A file directly in wheels-v7 stays even with --ci (which removes directories only).
    put(cache, "wheels-v7/stray-file", "");
    // Everything in environments-v2 and builds-v0 goes.
    put(cache, "environments-v2/stray-file", "");
    put(cache, "builds-v0/.tmpabc/lib/python3.11/site-packages/x.py", "");
    put(cache, "builds-v0/.tmpabc/pyvenv.cfg", "home = /usr/bin\n");
    // Staging directories inside sdists-v10 are not touched.
    put(cache, "sdists-v10/.tmpStage1/srclib-1.0/PKG-INFO", "");

    // files-v0 objects (content-addressed preview): one hard-linked into a kept archive
    // (stays unless its archive goes), one with a single link (goes, and its empty shard
    // directory with it).
    let tinylib = tinylib_archive(cache);
    std::fs::create_dir_all(cache.join("files-v0/ab")).unwrap();
    std::fs::hard_link(
        tinylib.join("tinylib/__init__.py"),
        cache.join(format!("files-v0/ab/{}", "a".repeat(62))),
    )
    .unwrap();
    put(cache, &format!("files-v0/cd/{}", "c".repeat(62)), "unlinked object");
}

/// The archive that uv 0.13.8's `wheels-v7` entry for tinylib 1.0 links to.
fn tinylib_archive(cache: &Path) -> PathBuf {
    let index = cache.join("wheels-v7/index");
    for digest in std::fs::read_dir(&index).expect("wheels-v7/index").flatten() {
        let link = digest.path().join("tinylib/1.0-py3-none-any");
        if link.symlink_metadata().is_ok() {
            return link.canonicalize().unwrap();
        }
    }
    panic!("no tinylib entry under {}", index.display());
}

/// Paths (relative to the cache) that `before` has and `after` lacks.
fn removed(before: &Tree, after: &Tree) -> Vec<String> {
    before.keys().filter(|k| !after.contains_key(*k)).map(|k| k.to_string_lossy().into_owned()).collect()
}

/// Copies `template` twice, prunes one copy with uv 0.13.8 and one with safe-prune (both
/// with `args`), asserts both succeed and leave identical trees, and that a second
/// safe-prune changes nothing. Returns (template snapshot, pruned snapshot).
fn assert_parity(env: &TestEnv, template: &Path, args: &[&str], label: &str) -> (Tree, Tree) {
    let by_uv = env.path(&format!("{label}-uv"));
    let by_sp = env.path(&format!("{label}-safe-prune"));
    copy_cache(template, &by_uv);
    copy_cache(template, &by_sp);
    let before = snapshot(&by_uv);

    let uv_out = env.uv_prune(&common::uv(), &by_uv, args);
    assert!(uv_out.status.success(), "uv cache prune failed:\n{}", show(&uv_out));

    let sp_out = env.safe_prune_on(&by_sp, args);
    assert!(sp_out.status.success(), "safe-prune {args:?} failed on {label}:\n{}", show(&sp_out));

    let expected = snapshot(&by_uv);
    let actual = snapshot(&by_sp);
    assert_same_tree(
        &expected,
        &actual,
        &format!(
            "{label} {args:?}: uv cache prune (expected) vs safe-prune (actual)\n\
             uv said: {}\nsafe-prune said: {}",
            stderr(&uv_out).trim(),
            stderr(&sp_out).trim()
        ),
    );

    // uv's own summary line, word for word: `Removed N files (X)` or `No unused entries found`.
    let summary = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("Removed ") || l.starts_with("No unused entries found"))
            .map(str::to_string)
    };
    let (uv_said, sp_said) = (stderr(&uv_out), stderr(&sp_out));
    assert!(summary(&uv_said).is_some(), "{uv_said}");
    assert_eq!(
        summary(&sp_said),
        summary(&uv_said),
        "{label} {args:?}: uv said\n{uv_said}\nsafe-prune said\n{sp_said}"
    );

    // Pruning a pruned cache changes nothing.
    let again = env.safe_prune_on(&by_sp, args);
    assert!(again.status.success(), "second safe-prune failed:\n{}", show(&again));
    assert_same_tree(&actual, &snapshot(&by_sp), &format!("{label}: second safe-prune"));
    let uv_again = env.uv_prune(&common::uv(), &by_uv, args);
    assert_eq!(summary(&stderr(&again)), summary(&stderr(&uv_again)), "{label}: second prunes");
    assert_eq!(summary(&stderr(&again)).as_deref(), Some("No unused entries found"), "{label}");
    (before, expected)
}

/// A cache made by uv 0.13.8 with junk added, at `env.cache`.
fn realistic_cache(env: &TestEnv) -> PathBuf {
    env.populate_cache();
    add_junk(&env.cache);
    env.cache.clone()
}

/// The prune really had work to do (so parity is not trivially "nothing removed").
fn assert_non_trivial(before: &Tree, after: &Tree, ci: bool) {
    let gone = removed(before, after);
    let any = |pred: &dyn Fn(&str) -> bool| gone.iter().any(|p| pred(p));
    assert!(any(&|p| p.starts_with("environments-v2/")), "no environment removed: {gone:#?}");
    assert!(any(&|p| p.starts_with("archive-v0/")), "no archive removed: {gone:#?}");
    assert!(any(&|p| p.starts_with("builds-v0/")), "builds-v0 untouched: {gone:#?}");
    assert!(any(&|p| p.starts_with("junk-dir")), "junk kept: {gone:#?}");
    // The stale sdist revision: one of srclib's two revision directories went.
    assert!(
        any(&|p| p.starts_with("sdists-v10/") && p.ends_with("/src")),
        "no sdist revision removed: {gone:#?}"
    );
    assert!(after.contains_key(Path::new(".lock")), "no .lock after prune");
    if !ci {
        assert!(
            after.keys().any(|k| k.starts_with("wheels-v7/index")),
            "prune without --ci removed the wheels"
        );
    }
}

#[test]
fn prune_matches_uv_on_realistic_cache() {
    let env = TestEnv::new();
    let template = realistic_cache(&env);
    let (before, after) = assert_parity(&env, &template, &[], "plain");
    assert_non_trivial(&before, &after, false);
}

#[test]
fn prune_ci_matches_uv_on_realistic_cache() {
    let env = TestEnv::new();
    let template = realistic_cache(&env);
    let (before, after) = assert_parity(&env, &template, &["--ci"], "ci");
    assert_non_trivial(&before, &after, true);
    // --ci keeps built wheels but drops pre-built ones and unpacked sources.
    let kept: Vec<_> = after.keys().map(|k| k.to_string_lossy().into_owned()).collect();
    assert!(kept.iter().any(|p| p.ends_with("srclib-1.0-py3-none-any.whl")), "{kept:#?}");
    assert!(!kept.iter().any(|p| p.starts_with("wheels-v7/index")), "{kept:#?}");
}

#[test]
fn prune_subcommand_form_matches_uv() {
    // `safe-prune prune ...` is the same command as `safe-prune ...`.
    let env = TestEnv::new();
    let template = realistic_cache(&env);
    let copy = env.path("sub-safe-prune");
    let by_uv = env.path("sub-uv");
    copy_cache(&template, &copy);
    copy_cache(&template, &by_uv);
    let out = env.safe_prune_on(&copy, &["prune"]);
    assert!(out.status.success(), "{}", show(&out));
    let uv_out = env.uv_prune(&common::uv(), &by_uv, &[]);
    assert!(uv_out.status.success(), "{}", show(&uv_out));
    assert_same_tree(&snapshot(&by_uv), &snapshot(&copy), "uv vs `safe-prune prune`");
}

#[test]
fn prune_matches_uv_on_cache_from_uv_0_6_2() {
    // Old bucket versions (wheels-v4, sdists-v8, interpreter-v4), absolute archive links,
    // no .lock: uv 0.13.8 treats the old buckets as stale and everything they referenced
    // as unreferenced.
    let env = TestEnv::new();
    env.populate_cache_with(&common::uv062());
    assert!(env.cache.join("wheels-v4").is_dir(), "0.6.2 made no wheels-v4");
    assert!(!env.cache.join(".lock").exists(), "0.6.2 is not expected to create .lock");
    add_junk_0_6_2(&env.cache);
    let (before, after) = assert_parity(&env, &env.cache, &[], "old");
    let gone = removed(&before, &after);
    assert!(gone.iter().any(|p| p == "wheels-v4"), "{gone:#?}");
    assert_parity(&env, &env.cache, &["--ci"], "old-ci");
}

#[test]
fn prune_matches_uv_on_cache_used_by_uv_0_6_2_then_0_13_8() {
    // A user upgrading uv: both layouts side by side, archives referenced from the new
    // buckets must stay, those referenced only from the old ones must go.
    let env = TestEnv::new();
    env.populate_cache_with(&common::uv062());
    env.populate_cache();
    add_junk(&env.cache);
    let (before, after) = assert_parity(&env, &env.cache, &[], "mixed");
    assert_non_trivial(&before, &after, false);
    assert_parity(&env, &env.cache, &["--ci"], "mixed-ci");
}

/// Junk for a 0.6.2 cache (no files-v0, no tinylib archive lookup needed).
fn add_junk_0_6_2(cache: &Path) {
    put(cache, "junk-dir/sub/file.txt", "junk");
    put(cache, ".tmpAbC123/x", "");
    put(cache, "builds-v0/.tmpabc/pyvenv.cfg", "");
    put(cache, "archive-v0/OrphanNoReference/pkg/__init__.py", "");
}

#[test]
fn dry_run_changes_nothing() {
    let env = TestEnv::new();
    let cache = realistic_cache(&env);
    let before = snapshot(&cache);
    for args in [
        vec!["--dry-run"],
        vec!["--dry-run", "--ci"],
        vec!["prune", "--dry-run", "--format", "json"],
        vec!["--dry-run", "-v"],
    ] {
        let out = env.safe_prune_on(&cache, &args);
        assert!(out.status.success(), "safe-prune {args:?}:\n{}", show(&out));
        assert_same_tree(&before, &snapshot(&cache), &format!("safe-prune {args:?}"));
    }
    // And the real run afterwards still has work to do (the dry runs really were dry).
    let out = env.safe_prune_on(&cache, &[]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(!tree_diff(&before, &snapshot(&cache)).is_empty(), "prune removed nothing");
}

#[test]
fn dangling_archive_symlink_does_not_stop_the_prune() {
    // uv 0.13.8 canonicalizes every archive-v0 entry and fails half-way on a dangling
    // symlink ("failed to canonicalize path", exit 2). safe-prune must finish the job:
    // the result equals uv's prune of the same cache without that link (the link itself
    // is an unreferenced archive entry, so it goes; removing a link follows nothing).
    let env = TestEnv::new();
    let template = realistic_cache(&env);
    let without = env.path("without-dangling");
    copy_cache(&template, &without);
    symlink("/nonexistent/safe-prune-test", template.join("archive-v0/DanglingLink0000")).unwrap();

    // Document uv's failure.
    let broken = env.path("dangling-uv");
    copy_cache(&template, &broken);
    let out = env.uv_prune(&common::uv(), &broken, &[]);
    assert_eq!(out.status.code(), Some(2), "uv was expected to fail:\n{}", show(&out));
    assert!(stderr(&out).contains("canonicalize"), "{}", show(&out));

    let expected = env.path("dangling-expected");
    copy_cache(&without, &expected);
    let out = env.uv_prune(&common::uv(), &expected, &[]);
    assert!(out.status.success(), "{}", show(&out));

    let actual = env.path("dangling-safe-prune");
    copy_cache(&template, &actual);
    let out = env.safe_prune_on(&actual, &[]);
    assert!(out.status.success(), "{}", show(&out));
    assert_same_tree(
        &snapshot(&expected),
        &snapshot(&actual),
        "uv prune without the dangling link (expected) vs safe-prune with it (actual)",
    );
}

#[test]
fn prune_through_symlinked_cache_root_matches_uv() {
    // `--cache-dir` may be a symlink to the cache (e.g. ~/.cache -> /data/cache): both
    // prune the cache behind it and leave the link itself alone.
    let env = TestEnv::new();
    let template = realistic_cache(&env);
    let (by_uv, by_sp) = (env.path("real-uv"), env.path("real-safe-prune"));
    copy_cache(&template, &by_uv);
    copy_cache(&template, &by_sp);
    let (link_uv, link_sp) = (env.path("link-uv"), env.path("link-safe-prune"));
    symlink(&by_uv, &link_uv).unwrap();
    symlink(&by_sp, &link_sp).unwrap();

    let out = env.uv_prune(&common::uv(), &link_uv, &[]);
    assert!(out.status.success(), "{}", show(&out));
    let out = env.safe_prune_on(&link_sp, &[]);
    assert!(out.status.success(), "{}", show(&out));
    assert_same_tree(&snapshot(&by_uv), &snapshot(&by_sp), "uv vs safe-prune via a symlinked root");
    assert!(link_sp.symlink_metadata().unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_link(&link_sp).unwrap(), by_sp);
}
