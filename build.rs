//! Embeds the git commit in `--version` when built from a checkout of this repository.
//!
//! Everywhere else (a crates.io download, an sdist, a wheel built from an unpacked sdist) the
//! version is the crate version alone: no `.git` here means no commit, and a *parent*
//! directory's repository (an sdist unpacked inside some other checkout) is never asked.
use std::path::{Path, PathBuf};
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8(out.stdout).ok()
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let mut commit = String::new();
    // `.git` is a directory in a clone, a file in a worktree or submodule.
    if dir.join(".git").exists() {
        // Rerun when the checked-out commit changes: HEAD moves, or the branch it names does.
        if let Some(dirs) =
            git(&dir, &["rev-parse", "--path-format=absolute", "--git-dir", "--git-common-dir"])
        {
            let mut lines = dirs.lines().map(PathBuf::from);
            let (git_dir, common) = (lines.next(), lines.next());
            let watched = git_dir
                .map(|d| d.join("HEAD"))
                .into_iter()
                .chain(common.into_iter().flat_map(|c| [c.join("refs"), c.join("packed-refs")]));
            for path in watched.filter(|p| p.exists()) {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
        commit = git(&dir, &["rev-parse", "--short=9", "HEAD"])
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .unwrap_or_default();
    }
    println!("cargo:rustc-env=SAFE_PRUNE_COMMIT={commit}");
}
