//! `safe-prune shim install|uninstall`: a `uv` symlink to safe-prune, placed before the real
//! uv on `PATH`, turns every `uv cache prune` / `uv cache clean` (scripts, CI steps such as
//! setup-uv's `prune-cache`) into safe-prune, while all other uv commands run the real uv
//! unchanged (see `wrapper.rs`).
//!
//! Installing never replaces a file that is not already our link, and uninstalling removes
//! only a link to a safe-prune binary: the `uv` in that directory may well be the real one.

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};

/// A refusal or failure, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("{} already exists and is not a link to safe-prune ({what}); not replacing it. Remove it yourself or pass --dir with another directory", .path.display())]
    Occupied { path: PathBuf, what: String },
    #[error("{} is not a link to safe-prune ({what}); leaving it alone", .path.display())]
    NotOurs { path: PathBuf, what: String },
    #[error("no --dir given and HOME is not set; pass --dir DIR")]
    NoHome,
    #[error("cannot find the safe-prune executable: {0}")]
    Exe(io::Error),
    #[error("{} lies inside the uv cache {} (a `uvx` run?): the next prune would remove it and break every `uv` command. Install safe-prune first (`uv tool install safe-prune`), then run `safe-prune shim install`", .exe.display(), .cache.display())]
    InsideCache { exe: PathBuf, cache: PathBuf },
    #[error("{}: {}", .0.display(), .1)]
    Io(PathBuf, io::Error),
}

/// The directory to use: `--dir`, else `~/.local/bin` (where uv's installer puts uv).
pub fn default_dir(dir: Option<&Path>, home: Option<&OsStr>) -> Result<PathBuf, ShimError> {
    match (dir, home) {
        (Some(dir), _) => Ok(dir.to_path_buf()),
        (None, Some(home)) if !home.is_empty() => Ok(Path::new(home).join(".local").join("bin")),
        _ => Err(ShimError::NoHome),
    }
}

/// What a path holds, for messages.
fn describe(path: &Path) -> String {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => match std::fs::read_link(path) {
            Ok(target) => format!("a link to {}", target.display()),
            Err(_) => "a link".into(),
        },
        Ok(m) if m.is_dir() => "a directory".into(),
        Ok(_) => "a file".into(),
        Err(_) => "missing".into(),
    }
}

/// True when `link` is a symlink to a safe-prune binary: it resolves to `exe`, or its target's
/// file name is `safe-prune` (a link left dangling by an uninstalled safe-prune counts too).
pub fn is_our_link(link: &Path, exe: &Path) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(link) else { return false };
    if !meta.file_type().is_symlink() {
        return false;
    }
    let named_safe_prune = |p: &Path| p.file_name().is_some_and(|n| n == "safe-prune");
    let exe = std::fs::canonicalize(exe).unwrap_or_else(|_| exe.to_path_buf());
    match std::fs::canonicalize(link) {
        Ok(target) if target == exe || named_safe_prune(&target) => true,
        _ => std::fs::read_link(link).is_ok_and(|t| named_safe_prune(&t)),
    }
}

/// Create (or refresh) `dir/uv -> exe`. Returns the lines to print: what was done, and
/// warnings about `PATH` (`path_var`) order.
pub fn install(dir: &Path, exe: &Path, path_var: &OsStr) -> Result<Vec<String>, ShimError> {
    let exe = std::fs::canonicalize(exe).map_err(ShimError::Exe)?;
    if let Some(cache) = enclosing_cache(&exe) {
        return Err(ShimError::InsideCache { exe, cache });
    }
    std::fs::create_dir_all(dir).map_err(|e| ShimError::Io(dir.to_path_buf(), e))?;
    let link = dir.join("uv");
    let mut lines = Vec::new();
    let exists = std::fs::symlink_metadata(&link).is_ok();
    if exists && !is_our_link(&link, &exe) {
        return Err(ShimError::Occupied { path: link.clone(), what: describe(&link) });
    }
    if exists && std::fs::canonicalize(&link).is_ok_and(|t| t == exe) {
        lines.push(format!("{} already links to {}", link.display(), exe.display()));
    } else {
        // Build the link beside its final place and rename it over: atomic, and a link of ours
        // pointing to an older safe-prune is replaced in one step.
        let temp = dir.join(format!(".uv.safe-prune-{}", std::process::id()));
        let _ = std::fs::remove_file(&temp);
        std::os::unix::fs::symlink(&exe, &temp).map_err(|e| ShimError::Io(temp.clone(), e))?;
        if let Err(e) = std::fs::rename(&temp, &link) {
            let _ = std::fs::remove_file(&temp);
            return Err(ShimError::Io(link, e));
        }
        lines.push(format!("Installed {} -> {}", link.display(), exe.display()));
    }
    lines.extend(path_warnings(dir, &exe, path_var));
    Ok(lines)
}

/// The uv cache that contains `path`, if any: an ancestor that passes the cache check.
fn enclosing_cache(path: &Path) -> Option<PathBuf> {
    path.ancestors().skip(1).find(|a| crate::layout::check_is_cache(a).is_ok()).map(Path::to_path_buf)
}

/// Remove `dir/uv` if it is a link to safe-prune.
pub fn uninstall(dir: &Path, exe: &Path) -> Result<String, ShimError> {
    let link = dir.join("uv");
    match std::fs::symlink_metadata(&link) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(format!("No shim at {}; nothing to do", link.display()))
        }
        Err(e) => return Err(ShimError::Io(link, e)),
        Ok(_) => {}
    }
    if !is_our_link(&link, exe) {
        return Err(ShimError::NotOurs { path: link.clone(), what: describe(&link) });
    }
    std::fs::remove_file(&link).map_err(|e| ShimError::Io(link.clone(), e))?;
    Ok(format!("Removed {}", link.display()))
}

/// Same directory, compared through symlinks where possible.
fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Warnings when `dir` is not on `PATH`, when a real uv comes first, or when there is no
/// real uv after it for the commands safe-prune hands on.
pub fn path_warnings(dir: &Path, exe: &Path, path_var: &OsStr) -> Vec<String> {
    let entries: Vec<PathBuf> = std::env::split_paths(path_var).collect();
    let ours = entries.iter().position(|p| same_dir(p, dir));
    let real = entries.iter().enumerate().find_map(|(i, p)| {
        let candidate = p.join("uv");
        (candidate.is_file() && !crate::wrapper::is_same_program(&candidate, exe)).then_some((i, candidate))
    });
    let mut out = Vec::new();
    match (ours, &real) {
        (None, _) => out.push(format!(
            "warning: {} is not on PATH: `uv` still runs the real uv. Add it to PATH before the real uv's directory",
            dir.display()
        )),
        (Some(o), Some((r, uv))) if *r < o => out.push(format!(
            "warning: the real uv {} comes before {} on PATH, so `uv` still runs it. Put {} first on PATH",
            uv.display(),
            dir.display(),
            dir.display()
        )),
        _ => {}
    }
    if real.is_none() {
        out.push(
            "warning: no real uv found on PATH: `uv` commands other than `cache prune`/`cache clean` will fail. Install uv or set SAFE_PRUNE_REAL_UV to its path"
                .to_string(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Setup {
        _tmp: tempfile::TempDir,
        exe: PathBuf,
        shim: PathBuf,
        real: PathBuf,
    }

    fn setup() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        let exe = root.join("target/safe-prune");
        let real = root.join("real");
        std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
        std::fs::create_dir_all(&real).unwrap();
        std::fs::write(&exe, "safe-prune binary").unwrap();
        std::fs::write(real.join("uv"), "the real uv").unwrap();
        Setup { exe, shim: root.join("shim"), real, _tmp: tmp }
    }

    fn path(dirs: &[&Path]) -> std::ffi::OsString {
        std::env::join_paths(dirs).unwrap()
    }

    #[test]
    fn install_links_and_is_idempotent() {
        let s = setup();
        let lines = install(&s.shim, &s.exe, &path(&[&s.shim, &s.real])).unwrap();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("Installed"));
        assert_eq!(std::fs::read_link(s.shim.join("uv")).unwrap(), s.exe);
        let lines = install(&s.shim, &s.exe, &path(&[&s.shim, &s.real])).unwrap();
        assert!(lines[0].contains("already links"), "{lines:?}");
        assert_eq!(uninstall(&s.shim, &s.exe).unwrap(), format!("Removed {}", s.shim.join("uv").display()));
        assert!(uninstall(&s.shim, &s.exe).unwrap().starts_with("No shim"));
    }

    #[test]
    fn refuses_a_binary_that_lives_in_a_uv_cache() {
        let s = setup();
        let cache = s.shim.parent().unwrap().join("cache");
        let bin = cache.join("archive-v0/abc/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(cache.join("CACHEDIR.TAG"), "Signature: 8a477f597d28d172789f06886806bc55").unwrap();
        std::fs::copy(&s.exe, bin.join("safe-prune")).unwrap();
        let err = install(&s.shim, &bin.join("safe-prune"), &path(&[&s.shim, &s.real])).unwrap_err();
        assert!(matches!(err, ShimError::InsideCache { .. }), "{err}");
        assert!(std::fs::symlink_metadata(s.shim.join("uv")).is_err());
    }

    #[test]
    fn never_replaces_or_removes_a_real_uv() {
        let s = setup();
        let err = install(&s.real, &s.exe, &path(&[&s.real])).unwrap_err();
        assert!(matches!(err, ShimError::Occupied { .. }), "{err}");
        assert_eq!(std::fs::read(s.real.join("uv")).unwrap(), b"the real uv");
        let err = uninstall(&s.real, &s.exe).unwrap_err();
        assert!(err.to_string().contains("not a link to safe-prune"), "{err}");
        // A link to something else is not ours either.
        std::fs::create_dir_all(&s.shim).unwrap();
        symlink(s.real.join("uv"), s.shim.join("uv")).unwrap();
        assert!(uninstall(&s.shim, &s.exe).is_err());
        assert!(install(&s.shim, &s.exe, &path(&[&s.shim])).is_err());
    }

    #[test]
    fn dangling_link_to_an_old_safe_prune_is_ours() {
        let s = setup();
        std::fs::create_dir_all(&s.shim).unwrap();
        symlink("/gone/bin/safe-prune", s.shim.join("uv")).unwrap();
        assert!(is_our_link(&s.shim.join("uv"), &s.exe));
        install(&s.shim, &s.exe, &path(&[&s.shim, &s.real])).unwrap();
        assert_eq!(std::fs::read_link(s.shim.join("uv")).unwrap(), s.exe);
    }

    #[test]
    fn warns_about_path_order() {
        let s = setup();
        install(&s.shim, &s.exe, &path(&[])).unwrap();
        let w = path_warnings(&s.shim, &s.exe, &path(&[&s.shim, &s.real]));
        assert!(w.is_empty(), "{w:?}");
        let w = path_warnings(&s.shim, &s.exe, &path(&[&s.real, &s.shim]));
        assert!(w[0].contains("comes before"), "{w:?}");
        let w = path_warnings(&s.shim, &s.exe, &path(&[&s.real]));
        assert!(w[0].contains("is not on PATH"), "{w:?}");
        let w = path_warnings(&s.shim, &s.exe, &path(&[&s.shim]));
        assert!(w[0].contains("no real uv"), "{w:?}");
    }
}
