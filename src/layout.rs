//! The uv cache's on-disk layout: bucket families, their generations, and what makes a
//! directory a uv cache at all.
//!
//! uv names buckets `<family>-v<N>` and bumps N whenever the format of a bucket changes
//! (`wheels-v4` in uv 0.6.2, `wheels-v7` in 0.13.8). uv's own prune keeps only the exact
//! names it knows and deletes every other top-level entry, which is how uv 0.6.2 destroyed
//! a newer uv's buckets in a shared cache. We match by family instead: an *older* generation
//! is stale and goes, a *newer* one belongs to a newer uv and is never touched.

use std::ffi::OsStr;
use std::io::Read;
use std::path::Path;

/// The bucket families uv has used, with the generation uv 0.13.8 writes.
///
/// Order is uv's `CacheBucket::iter()` order (uv-cache `lib.rs:1457`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Wheels,
    SourceDistributions,
    FlatIndex,
    Git,
    Interpreter,
    Simple,
    Archive,
    Files,
    Builds,
    Environments,
    Python,
    Binaries,
    Osv,
    /// `built-wheels-vN`: the name uv 0.4 used for source builds; every generation is stale.
    RetiredBuiltWheels,
}

impl Family {
    /// Every family, current ones in uv's order first.
    pub const ALL: [Family; 14] = [
        Family::Wheels,
        Family::SourceDistributions,
        Family::FlatIndex,
        Family::Git,
        Family::Interpreter,
        Family::Simple,
        Family::Archive,
        Family::Files,
        Family::Builds,
        Family::Environments,
        Family::Python,
        Family::Binaries,
        Family::Osv,
        Family::RetiredBuiltWheels,
    ];

    /// The name before `-v<N>`.
    pub fn prefix(self) -> &'static str {
        match self {
            Family::Wheels => "wheels",
            Family::SourceDistributions => "sdists",
            Family::FlatIndex => "flat-index",
            Family::Git => "git",
            Family::Interpreter => "interpreter",
            Family::Simple => "simple",
            Family::Archive => "archive",
            Family::Files => "files",
            Family::Builds => "builds",
            Family::Environments => "environments",
            Family::Python => "python",
            Family::Binaries => "binaries",
            Family::Osv => "osv",
            Family::RetiredBuiltWheels => "built-wheels",
        }
    }

    /// The generation uv 0.13.8 uses (`None` for a retired family).
    pub fn current(self) -> Option<u32> {
        Some(match self {
            Family::Wheels => 7,
            Family::SourceDistributions => 10,
            Family::FlatIndex => 7,
            Family::Git => 1,
            Family::Interpreter => 5,
            Family::Simple => 27,
            Family::Archive => 0,
            Family::Files => 0,
            Family::Builds => 0,
            Family::Environments => 2,
            Family::Python => 1,
            Family::Binaries => 0,
            Family::Osv => 1,
            Family::RetiredBuiltWheels => return None,
        })
    }

    /// The directory name of the current generation, e.g. `wheels-v7`.
    pub fn current_name(self) -> Option<String> {
        self.current().map(|v| format!("{}-v{v}", self.prefix()))
    }
}

/// What a top-level name of the cache is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopLevel {
    /// `CACHEDIR.TAG`, `.gitignore`, `.git`, `.lock`: uv never removes these in a prune.
    Marker,
    /// The generation of a family that uv 0.13.8 uses.
    Current(Family),
    /// An older generation: stale, removed like uv does.
    Older(Family, u32),
    /// A newer generation than we know: written by a newer uv sharing the cache; kept.
    Newer(Family, u32),
    /// Looks like a bucket (`<name>-v<N>`) of a family we do not know: most likely a newer
    /// uv's new bucket, so it is kept rather than repeating uv 0.6.2's mistake.
    UnknownBucket,
    /// Anything else (`.tmp*` staging directories, stray files): uv removes these.
    Other,
}

/// Marker files uv's prune keeps at the top level (uv-cache `lib.rs` `prune`, step one).
pub const MARKERS: [&str; 4] = ["CACHEDIR.TAG", ".gitignore", ".git", ".lock"];

/// Split `<prefix>-v<digits>` into its parts.
pub fn split_versioned(name: &str) -> Option<(&str, u32)> {
    let (prefix, version) = name.rsplit_once("-v")?;
    if prefix.is_empty() || version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((prefix, version.parse().ok()?))
}

/// Classify one top-level name.
pub fn classify(name: &OsStr) -> TopLevel {
    let Some(name) = name.to_str() else {
        return TopLevel::Other;
    };
    if MARKERS.contains(&name) {
        return TopLevel::Marker;
    }
    let Some((prefix, version)) = split_versioned(name) else {
        return TopLevel::Other;
    };
    match Family::ALL.iter().find(|f| f.prefix() == prefix) {
        Some(&family) => match family.current() {
            Some(current) if version == current => TopLevel::Current(family),
            Some(current) if version > current => TopLevel::Newer(family, version),
            _ => TopLevel::Older(family, version),
        },
        None if looks_like_bucket(prefix) => TopLevel::UnknownBucket,
        None => TopLevel::Other,
    }
}

/// A bucket family name is lower-case ASCII words joined by `-`.
fn looks_like_bucket(prefix: &str) -> bool {
    !prefix.starts_with('.')
        && prefix.split('-').all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase()))
}

/// The standard `CACHEDIR.TAG` signature (https://bford.info/cachedir/), which uv writes.
const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

/// Why a directory is not accepted as a uv cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotACache {
    /// No `CACHEDIR.TAG`, or one without the signature.
    NoTag,
    /// A tag but no uv bucket: some other tool's cache (a Cargo `target/` has a tag too).
    NoBucket,
}

/// Check that `root` (an existing directory) is a uv cache: a `CACHEDIR.TAG` with the
/// standard signature, and at least one directory named like a uv bucket of any generation.
///
/// uv itself does no check at all and, pointed at an ordinary folder, deletes everything in
/// it but `.git`; this check is why safe-prune refuses instead.
///
/// A directory holding nothing but uv's `.lock` is what `uv cache clean` leaves behind: an
/// empty cache (there is nothing to remove in it, so accepting it risks nothing).
pub fn check_is_cache(root: &Path) -> Result<(), NotACache> {
    let only_lock = std::fs::read_dir(root)
        .is_ok_and(|mut entries| entries.all(|e| e.is_ok_and(|e| e.file_name() == ".lock")));
    if only_lock {
        return Ok(());
    }
    let mut signature = [0u8; CACHEDIR_SIGNATURE.len()];
    let tag_ok =
        std::fs::File::open(root.join("CACHEDIR.TAG")).and_then(|mut f| f.read_exact(&mut signature)).is_ok()
            && signature == CACHEDIR_SIGNATURE;
    if !tag_ok {
        return Err(NotACache::NoTag);
    }
    let has_bucket = std::fs::read_dir(root)
        .map(|entries| {
            entries.flatten().any(|entry| {
                let known = matches!(
                    classify(&entry.file_name()),
                    TopLevel::Current(_) | TopLevel::Older(..) | TopLevel::Newer(..)
                );
                known && entry.file_type().is_ok_and(|t| t.is_dir())
            })
        })
        .unwrap_or(false);
    if has_bucket {
        Ok(())
    } else {
        Err(NotACache::NoBucket)
    }
}

/// How deep below a bucket one cache *entry* lies: the unit that is kept whole when anything
/// inside it is in use. `rel` is relative to the cache root, starting with the bucket name.
///
/// Getting this right matters: keeping only the file a process has open while deleting the
/// rest of its environment would be the original bug again.
pub fn entry_depth(family: Option<Family>, rel: &[&OsStr], is_venv_dir: impl Fn() -> bool) -> usize {
    let second = rel.get(1).and_then(|s| s.to_str()).unwrap_or("");
    match family {
        // One directory per archive, temporary build, or downloaded binary version.
        Some(Family::Archive) | Some(Family::Builds) | Some(Family::Files) => 2,
        Some(Family::Binaries) => 3,
        // `<interpreter digest>/<resolution>` links, or a real venv (`script-*`, centralized
        // project environments) directly below the bucket.
        Some(Family::Environments) => {
            if rel.len() >= 2 && is_venv_dir() {
                2
            } else {
                3
            }
        }
        // `pypi/<name>` or `<kind>/<digest>/<name>`.
        Some(Family::Wheels) => {
            if second == "pypi" {
                3
            } else {
                4
            }
        }
        // `pypi/<name>/<version>`, `git/<digest>/<sha>`, `<kind>/<digest>/<version>`.
        Some(Family::SourceDistributions) | Some(Family::RetiredBuiltWheels) => 4,
        // Small metadata buckets: one child of the bucket is one entry.
        Some(_) => 2,
        // Unknown top-level entries are one entry each.
        None => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_generations_by_family() {
        assert_eq!(classify(OsStr::new("wheels-v7")), TopLevel::Current(Family::Wheels));
        assert_eq!(classify(OsStr::new("wheels-v4")), TopLevel::Older(Family::Wheels, 4));
        assert_eq!(classify(OsStr::new("wheels-v8")), TopLevel::Newer(Family::Wheels, 8));
        assert_eq!(classify(OsStr::new("simple-v100")), TopLevel::Newer(Family::Simple, 100));
        assert_eq!(classify(OsStr::new("built-wheels-v3")), TopLevel::Older(Family::RetiredBuiltWheels, 3));
        assert_eq!(classify(OsStr::new("flat-index-v7")), TopLevel::Current(Family::FlatIndex));
        assert_eq!(classify(OsStr::new("frobs-v0")), TopLevel::UnknownBucket);
        assert_eq!(classify(OsStr::new(".tmpAbC123")), TopLevel::Other);
        assert_eq!(classify(OsStr::new("wheels")), TopLevel::Other);
        assert_eq!(classify(OsStr::new("wheels-v")), TopLevel::Other);
        assert_eq!(classify(OsStr::new("wheels-vx")), TopLevel::Other);
        assert_eq!(classify(OsStr::new("Docs-v1")), TopLevel::Other);
        assert_eq!(classify(OsStr::new(".lock")), TopLevel::Marker);
        assert_eq!(classify(OsStr::new(".git")), TopLevel::Marker);
        // A version too large for u32 is not a bucket name.
        assert_eq!(classify(OsStr::new("wheels-v99999999999")), TopLevel::Other);
    }

    #[test]
    fn current_names_match_uv_0_13_8() {
        let names: Vec<String> = Family::ALL.iter().filter_map(|f| f.current_name()).collect();
        // The bucket strings found concatenated in the 0.13.8 binary's .rodata.
        let rodata = "wheels-v7sdists-v10flat-index-v7git-v1interpreter-v5simple-v27archive-v0builds-v0environments-v2python-v1binaries-v0osv-v1";
        for name in &names {
            assert!(rodata.contains(name.as_str()) || name == "files-v0", "{name}");
        }
        assert_eq!(names.len(), 13);
    }

    #[test]
    fn a_cleaned_cache_is_an_empty_cache() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(check_is_cache(tmp.path()), Ok(()));
        std::fs::write(tmp.path().join(".lock"), "").unwrap();
        assert_eq!(check_is_cache(tmp.path()), Ok(()));
        std::fs::write(tmp.path().join("README"), "").unwrap();
        assert_eq!(check_is_cache(tmp.path()), Err(NotACache::NoTag));
    }
}
