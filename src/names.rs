//! Human names for cache entries, read from the cache itself (never the network): which
//! distributions an environment holds, which wheel an archive unpacks, which package a wheel
//! or sdist pointer belongs to, and the Python version of an environment.
//!
//! - An environment (`archive-v0/<id>` or `builds-v0/<tmp>` with a `pyvenv.cfg`, a script venv
//!   in `environments-v2`, or an `environments-v2/<digest>/<hash>` link to one) is named by its
//!   *top-level* distributions: those with a `REQUESTED` marker that no other installed
//!   distribution requires. uv 0.13.8 writes `REQUESTED` into every distribution it installs,
//!   so the marker alone names the dependencies too; the `Requires-Dist` headers separate them.
//!   Every distribution is listed (`distributions`), top-level ones first.
//! - An unpacked wheel (an archive without `pyvenv.cfg`, with a single `*.dist-info` at its
//!   top) is named by that distribution.
//! - Wheel and sdist entries are named by their path (`wheels-v*/<kind>/[<digest>/]<package>`,
//!   `sdists-v*/pypi/<name>/<version>`), Simple-API files by their file name, binaries by
//!   `binaries-v0/<name>/<version>`.
//!
//! Only `Name`, `Version` and `Requires-Dist` are read from the header of `METADATA` (at most
//! 64 KiB), and `version_info` / `version` from `pyvenv.cfg`. A value that cannot be read or
//! does not look like a name or version leaves the name absent: nothing is guessed. Nothing
//! here follows a symlink out of the cache: paths are examined with `symlink_metadata`, files
//! are opened with `O_NOFOLLOW`, and a link (an `environments-v2` link, a symlink-mode venv's
//! `METADATA`) is resolved only when its canonical target lies inside the cache root. Files are
//! opened with `O_NOATIME` where allowed, so naming an entry never counts as using it
//! (`--older-than` reads access times).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use crate::concurrent::normalize_name;
use crate::layout::{self, Family, TopLevel};

/// The most bytes read from one `METADATA` or `pyvenv.cfg`.
const READ_LIMIT: usize = 64 * 1024;
/// The most `*.dist-info` directories examined in one environment.
const MAX_DISTRIBUTIONS: usize = 5_000;
/// How many names an aggregate (a directory of several entries) lists before "+N more".
const LIST_LIMIT: usize = 3;

/// What kind of data an entry holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A cached environment: `uvx` / `uv tool run` / `uv run --with`, a script's venv, or its
    /// `environments-v2` link.
    ToolEnv,
    /// A wheel: its unpacked archive, or its pointers in `wheels-v*`.
    UnpackedWheel,
    /// A temporary build or overlay environment (`builds-v0`).
    BuildEnv,
    /// A source distribution, its build and its built wheel (`sdists-v*`, `git-v*`).
    SdistBuild,
    /// Index responses (`simple-v*`, `flat-index-v*`, `osv-v*`).
    IndexMetadata,
    /// Interpreter and Python-download metadata (`interpreter-v*`, `python-v*`).
    Python,
    /// Downloaded tool binaries (`binaries-v*`).
    Binary,
    /// Anything else.
    #[default]
    Other,
}

impl Kind {
    /// The words used in human output (empty for `Other`).
    pub fn words(self) -> &'static str {
        match self {
            Kind::ToolEnv => "tool env",
            Kind::UnpackedWheel => "wheel",
            Kind::BuildEnv => "build env",
            Kind::SdistBuild => "sdist build",
            Kind::IndexMetadata => "index metadata",
            Kind::Python => "python",
            Kind::Binary => "binary",
            Kind::Other => "",
        }
    }
}

/// What an entry is, for people. Serialized flattened into each entry object of the JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Label {
    /// `httpx 0.28.1`, `tinylib 1.0`, `sleepy 0.1; dozy 1.0`; absent when it cannot be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub kind: Kind,
    /// An environment's Python version (`3.12.3`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub python: Option<String>,
    /// An environment's distributions (`name version`), top-level ones first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub distributions: Vec<String>,
    /// Normalized names of the packages the entry belongs to (for grouping).
    #[serde(skip)]
    pub packages: Vec<String>,
    /// The entry itself is a virtual environment (not a link to one).
    #[serde(skip)]
    pub venv: bool,
    /// How many of `distributions` are dependencies (not top-level).
    #[serde(skip)]
    pub dependencies: usize,
}

impl Label {
    fn kind(kind: Kind) -> Label {
        Label { kind, ..Label::default() }
    }

    /// `httpx 0.28.1 (tool env, python 3.12, +5 dependencies)`; `(wheel)` without a name;
    /// empty when there is nothing to say.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if !self.kind.words().is_empty() {
            parts.push(self.kind.words().to_string());
        }
        if let Some(python) = &self.python {
            parts.push(format!("python {}", major_minor(python)));
        }
        if self.dependencies > 0 && self.name.is_some() {
            let s = if self.dependencies == 1 { "dependency" } else { "dependencies" };
            parts.push(format!("+{} {s}", self.dependencies));
        }
        let details = if parts.is_empty() { String::new() } else { format!("({})", parts.join(", ")) };
        match &self.name {
            Some(name) if details.is_empty() => name.clone(),
            Some(name) => format!("{name} {details}"),
            None => details,
        }
    }
}

/// `3.12` of `3.12.3`.
fn major_minor(version: &str) -> String {
    version.split('.').take(2).collect::<Vec<_>>().join(".")
}

/// How much to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// The kind only (and whether it is a venv): a few `lstat`s and at most one listing.
    Kind,
    /// Names, versions, Python version, distributions.
    Full,
}

/// Labels for many entries (relative to the canonical cache `root`), in parallel when there
/// are many. The result is in the order of `rels`.
pub fn label_all(root: &Path, rels: &[PathBuf], detail: Detail) -> Vec<Label> {
    if rels.len() >= 16 {
        rels.par_iter().map(|rel| label(root, rel, detail)).collect()
    } else {
        rels.iter().map(|rel| label(root, rel, detail)).collect()
    }
}

/// Labels keyed by path, for attaching to report entries.
pub fn label_map(root: &Path, rels: BTreeSet<PathBuf>, detail: Detail) -> BTreeMap<PathBuf, Label> {
    let rels: Vec<PathBuf> = rels.into_iter().collect();
    let labels = label_all(root, &rels, detail);
    rels.into_iter().zip(labels).collect()
}

/// Labels for everything a plan reports: its targets at `detail` (none with `None`), and the
/// entries it keeps, always in full (they are few, and the summary names them).
pub fn for_plan(root: &Path, plan: &crate::plan::Plan, detail: Option<Detail>) -> BTreeMap<PathBuf, Label> {
    let Some(detail) = detail else { return BTreeMap::new() };
    let kept: BTreeSet<PathBuf> = plan.kept.keys().cloned().collect();
    let targets: BTreeSet<PathBuf> =
        plan.targets.iter().map(|t| t.rel.clone()).filter(|rel| !kept.contains(rel)).collect();
    let mut labels = label_map(root, kept, Detail::Full);
    labels.extend(label_map(root, targets, detail));
    labels
}

/// The label of one path relative to the canonical cache `root` (an entry, a part of one, or
/// a directory of entries).
pub fn label(root: &Path, rel: &Path, detail: Detail) -> Label {
    let comps: Vec<&OsStr> = rel.components().map(|c| c.as_os_str()).collect();
    let Some(top) = comps.first() else { return Label::default() };
    let family = match layout::classify(top) {
        TopLevel::Current(f) | TopLevel::Older(f, _) | TopLevel::Newer(f, _) => f,
        _ => return Label::default(),
    };
    let part = |i: usize| comps.get(i).and_then(|c| c.to_str());
    match family {
        Family::Archive => match comps.get(1) {
            Some(id) => archive(root, &Path::new(top).join(id), detail),
            None => Label::kind(Kind::Other),
        },
        Family::Environments => environment(root, &comps, detail),
        Family::Builds => match comps.get(1) {
            Some(tmp) => {
                let mut l = venv_at(root, &Path::new(top).join(tmp), detail).unwrap_or_default();
                l.kind = Kind::BuildEnv;
                l
            }
            None => Label::kind(Kind::BuildEnv),
        },
        Family::Wheels => wheels(root, rel, &comps, detail),
        Family::SourceDistributions | Family::RetiredBuiltWheels => sdists(root, rel, &comps, detail),
        Family::Git => Label::kind(Kind::SdistBuild),
        Family::Simple => {
            // `pypi/<name>.rkyv`, `index/<digest>/<name>.rkyv`.
            let at = if part(1) == Some("pypi") { 2 } else { 3 };
            let mut l = Label::kind(Kind::IndexMetadata);
            if let Some(file) = part(at) {
                let stem = file.strip_suffix(".rkyv").unwrap_or(file);
                if let Some(name) = valid_name(stem) {
                    l.packages = vec![normalize_name(name.as_bytes())];
                    l.name = Some(name.to_string());
                }
            }
            l
        }
        Family::FlatIndex | Family::Osv => Label::kind(Kind::IndexMetadata),
        Family::Interpreter | Family::Python => Label::kind(Kind::Python),
        Family::Binaries => {
            let mut l = Label::kind(Kind::Binary);
            if let Some(name) = part(1).and_then(valid_name) {
                l.packages = vec![normalize_name(name.as_bytes())];
                l.name = Some(match part(2).and_then(valid_version) {
                    Some(version) => format!("{name} {version}"),
                    None => name.to_string(),
                });
            }
            l
        }
        Family::Files => Label::kind(Kind::Other),
    }
}

/// `archive-v0/<id>`: an environment, an unpacked wheel, or something else.
fn archive(root: &Path, rel: &Path, detail: Detail) -> Label {
    let abs = root.join(rel);
    let Ok(meta) = fs::symlink_metadata(&abs) else { return Label::kind(Kind::Other) };
    if !meta.is_dir() {
        return Label::kind(Kind::Other);
    }
    if let Some(mut l) = venv_at(root, rel, detail) {
        l.kind = Kind::ToolEnv;
        return l;
    }
    // An unpacked wheel: exactly one `*.dist-info` directory at the top.
    let Ok(entries) = fs::read_dir(&abs) else { return Label::kind(Kind::Other) };
    let mut dist_infos = Vec::new();
    for entry in entries.flatten().take(10_000) {
        let name = entry.file_name();
        if name.as_bytes().ends_with(b".dist-info") && entry.file_type().is_ok_and(|t| t.is_dir()) {
            dist_infos.push(name);
            if dist_infos.len() > 1 {
                return Label::kind(Kind::Other);
            }
        }
    }
    let Some(dist_info) = dist_infos.pop() else { return Label::kind(Kind::Other) };
    let mut l = Label::kind(Kind::UnpackedWheel);
    if detail == Detail::Full {
        if let Some(meta) = read_metadata(root, &abs.join(&dist_info).join("METADATA")) {
            l.packages = vec![meta.key()];
            l.name = Some(meta.display());
        }
    }
    l
}

/// `environments-v2/...`: a script venv, a link to an archive venv, a link's `.lock`, or the
/// `<digest>` directory of several links.
fn environment(root: &Path, comps: &[&OsStr], detail: Detail) -> Label {
    let base = || Label::kind(Kind::ToolEnv);
    let Some(second) = comps.get(1) else { return base() };
    let dir = Path::new(comps[0]).join(second);
    if let Some(mut l) = venv_at(root, &dir, detail) {
        l.kind = Kind::ToolEnv;
        return l;
    }
    match comps.get(2) {
        Some(name) => {
            // `<hash>.lock` is named after `<hash>`.
            let target = match name.as_bytes().strip_suffix(b".lock") {
                Some(stem) if !stem.is_empty() => dir.join(OsStr::from_bytes(stem)),
                _ => dir.join(name),
            };
            linked_environment(root, &target, detail).unwrap_or_else(base)
        }
        None => {
            if detail == Detail::Kind {
                return base();
            }
            // A `<digest>` directory: the environments its links name.
            let mut labels = Vec::new();
            let Ok(entries) = fs::read_dir(root.join(&dir)) else { return base() };
            let mut links: Vec<PathBuf> = entries
                .flatten()
                .take(10_000)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_symlink()))
                .map(|e| dir.join(e.file_name()))
                .collect();
            links.sort();
            for link in links {
                if let Some(l) = linked_environment(root, &link, detail) {
                    labels.push(l);
                }
            }
            aggregate(Kind::ToolEnv, labels)
        }
    }
}

/// The label of the archive venv an `environments-v2` link points to, when its canonical
/// target is a venv inside the cache.
fn linked_environment(root: &Path, link: &Path, detail: Detail) -> Option<Label> {
    let abs = root.join(link);
    if !fs::symlink_metadata(&abs).ok()?.file_type().is_symlink() {
        return None;
    }
    let target = fs::canonicalize(&abs).ok()?;
    let inside = target.strip_prefix(root).ok()?.to_path_buf();
    if inside.as_os_str().is_empty() {
        return None;
    }
    let mut l = venv_at(root, &inside, detail)?;
    l.kind = Kind::ToolEnv;
    l.venv = false;
    Some(l)
}

/// One label for several entries: their names joined (`a 1.0; b 2.0; +3 more`).
fn aggregate(kind: Kind, labels: Vec<Label>) -> Label {
    let mut names: Vec<String> = Vec::new();
    let mut packages = BTreeSet::new();
    for l in labels {
        packages.extend(l.packages);
        if let Some(name) = l.name {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    let mut out = Label::kind(kind);
    out.packages = packages.into_iter().collect();
    if !names.is_empty() {
        let more = names.len().saturating_sub(LIST_LIMIT);
        names.truncate(LIST_LIMIT);
        let mut name = names.join("; ");
        if more > 0 {
            name.push_str(&format!("; +{more} more"));
        }
        out.name = Some(name);
    }
    out
}

/// `wheels-v*/<kind>/[<digest>/]<package>[/<key>...]`.
fn wheels(root: &Path, rel: &Path, comps: &[&OsStr], detail: Detail) -> Label {
    let mut l = Label::kind(Kind::UnpackedWheel);
    let Some(kind) = comps.get(1) else { return l };
    let at = if *kind == "pypi" { 2 } else { 3 };
    match comps.get(at).and_then(|c| c.to_str()) {
        Some(package) => {
            let Some(package) = valid_name(package) else { return l };
            l.packages = vec![normalize_name(package.as_bytes())];
            let versions: BTreeSet<String> = match comps.get(at + 1) {
                Some(key) => wheel_key_version(key).into_iter().collect(),
                None if detail == Detail::Full => {
                    let dir = comps[..=at].iter().collect::<PathBuf>();
                    list_names(root, &dir).iter().filter_map(|n| wheel_key_version(n)).collect()
                }
                None => BTreeSet::new(),
            };
            l.name = Some(with_versions(package, &versions));
        }
        None if comps.len() == at && detail == Detail::Full => {
            // A directory of packages (`wheels-v7/pypi`, removed whole by `--ci`).
            let names: Vec<String> = list_names(root, rel)
                .iter()
                .filter_map(|n| n.to_str().and_then(valid_name))
                .map(String::from)
                .collect();
            return aggregate_names(Kind::UnpackedWheel, names);
        }
        None => {}
    }
    l
}

/// `sdists-v*/pypi/<name>/<version>`, `sdists-v*/index/<digest>/<name>/<version>`; other
/// layouts (`url`, `path`, `git`) by the built wheel's file name inside.
fn sdists(root: &Path, rel: &Path, comps: &[&OsStr], detail: Detail) -> Label {
    let mut l = Label::kind(Kind::SdistBuild);
    let Some(kind) = comps.get(1).and_then(|c| c.to_str()) else { return l };
    let at = match kind {
        "pypi" => Some(2),
        "index" => Some(3),
        _ => None,
    };
    if let Some(at) = at {
        match comps.get(at).and_then(|c| c.to_str()).and_then(valid_name) {
            Some(name) => {
                l.packages = vec![normalize_name(name.as_bytes())];
                let versions: BTreeSet<String> = match comps.get(at + 1) {
                    Some(v) => v.to_str().and_then(valid_version).map(String::from).into_iter().collect(),
                    None if detail == Detail::Full => {
                        let dir = comps[..=at].iter().collect::<PathBuf>();
                        list_names(root, &dir)
                            .iter()
                            .filter_map(|n| n.to_str().and_then(valid_version).map(String::from))
                            .collect()
                    }
                    None => BTreeSet::new(),
                };
                l.name = Some(with_versions(name, &versions));
            }
            None if comps.len() == at && detail == Detail::Full => {
                let names: Vec<String> = list_names(root, rel)
                    .iter()
                    .filter_map(|n| n.to_str().and_then(valid_name))
                    .map(String::from)
                    .collect();
                return aggregate_names(Kind::SdistBuild, names);
            }
            None => {}
        }
        return l;
    }
    // `url/<digest>/...`, `path/<digest>/...`, `git/<digest>/<sha>/...`: the built wheel's
    // file name (`<name>-<version>-<tags>.whl`) a few levels down.
    if detail == Detail::Full && comps.len() >= 3 {
        if let Some((name, version)) = find_built_wheel(root, rel) {
            l.packages = vec![normalize_name(name.as_bytes())];
            l.name = Some(format!("{name} {version}"));
        }
    }
    l
}

fn aggregate_names(kind: Kind, mut names: Vec<String>) -> Label {
    names.sort();
    names.dedup();
    let labels = names
        .into_iter()
        .map(|n| Label { packages: vec![normalize_name(n.as_bytes())], name: Some(n), ..Label::default() })
        .collect();
    aggregate(kind, labels)
}

/// `tinylib 1.0`, `tinylib 1.0, 1.1`, `tinylib`.
fn with_versions(name: &str, versions: &BTreeSet<String>) -> String {
    if versions.is_empty() {
        name.to_string()
    } else {
        format!("{name} {}", versions.iter().cloned().collect::<Vec<_>>().join(", "))
    }
}

/// The version in a wheel cache key: `1.0-py3-none-any` (uv ≥ 0.6.4), or the full stem
/// `name-1.0-py3-none-any` (older), with pointer extensions stripped.
fn wheel_key_version(key: &OsStr) -> Option<String> {
    let key = key.to_str()?;
    let stem = [".http", ".rev", ".msgpack", ".lock"].iter().find_map(|e| key.strip_suffix(e)).unwrap_or(key);
    let mut fields = stem.split('-');
    let first = fields.next()?;
    let version = if first.starts_with(|c: char| c.is_ascii_digit()) { first } else { fields.next()? };
    valid_version(version).filter(|v| v.starts_with(|c: char| c.is_ascii_digit())).map(String::from)
}

/// Names in a directory (not following links), sorted; at most 10,000.
fn list_names(root: &Path, rel: &Path) -> Vec<std::ffi::OsString> {
    let abs = root.join(rel);
    if !fs::symlink_metadata(&abs).is_ok_and(|m| m.is_dir()) {
        return Vec::new();
    }
    let mut names: Vec<_> =
        fs::read_dir(abs).into_iter().flatten().flatten().take(10_000).map(|e| e.file_name()).collect();
    names.sort();
    names
}

/// `<name>-<version>-...whl` below `rel` (at most three levels, a bounded number of names).
fn find_built_wheel(root: &Path, rel: &Path) -> Option<(String, String)> {
    let mut budget = 2_000usize;
    let mut stack = vec![(root.join(rel), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            budget = budget.checked_sub(1)?;
            let name = entry.file_name();
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_file() {
                if let Some(found) = name.to_str().and_then(parse_wheel_filename) {
                    return Some(found);
                }
            } else if kind.is_dir() && depth < 3 && name != "src" {
                stack.push((entry.path(), depth + 1));
            }
        }
    }
    None
}

/// `srclib-1.0-py3-none-any.whl` → (`srclib`, `1.0`).
fn parse_wheel_filename(file: &str) -> Option<(String, String)> {
    let stem = file.strip_suffix(".whl")?;
    let mut fields = stem.split('-');
    let name = valid_name(fields.next()?)?;
    let version = valid_version(fields.next()?)?;
    Some((name.to_string(), version.to_string()))
}

// ---------------------------------------------------------------------------------------
// Virtual environments
// ---------------------------------------------------------------------------------------

/// One installed distribution.
#[derive(Debug, Clone)]
struct Distribution {
    name: String,
    version: String,
    requires: Vec<String>,
    requested: bool,
}

impl Distribution {
    fn key(&self) -> String {
        normalize_name(self.name.as_bytes())
    }

    fn display(&self) -> String {
        format!("{} {}", self.name, self.version)
    }
}

/// The label of the venv at `rel` (a real directory with a regular `pyvenv.cfg`), else None.
fn venv_at(root: &Path, rel: &Path, detail: Detail) -> Option<Label> {
    let abs = root.join(rel);
    if !fs::symlink_metadata(&abs).ok()?.is_dir() {
        return None;
    }
    let cfg_path = abs.join("pyvenv.cfg");
    if !fs::symlink_metadata(&cfg_path).ok()?.is_file() {
        return None;
    }
    let mut l = Label { venv: true, ..Label::default() };
    if detail == Detail::Kind {
        return Some(l);
    }
    l.python = read_bounded(root, &cfg_path, READ_LIMIT, |_| false).and_then(|cfg| python_version(&cfg));
    let dists = installed(root, &abs);
    let top = top_level(&dists);
    let top_keys: BTreeSet<String> = top.iter().map(|d| d.key()).collect();
    let mut ordered: Vec<&Distribution> = top.clone();
    ordered.extend(dists.iter().filter(|d| !top_keys.contains(&d.key())));
    l.distributions = ordered.iter().map(|d| d.display()).collect();
    if top.is_empty() {
        // No markers at all (a build environment): list what is there.
        let names: Vec<String> = ordered.iter().map(|d| d.display()).collect();
        if !names.is_empty() {
            let more = names.len().saturating_sub(LIST_LIMIT);
            let mut name = names[..names.len().min(LIST_LIMIT)].join(", ");
            if more > 0 {
                name.push_str(&format!(", +{more} more"));
            }
            l.name = Some(name);
        }
    } else {
        l.name = Some(top.iter().map(|d| d.display()).collect::<Vec<_>>().join(", "));
        l.packages = top.iter().map(|d| d.key()).collect();
        l.dependencies = ordered.len() - top.len();
    }
    Some(l)
}

/// Top-level distributions: requested, and required by no other installed distribution. uv
/// marks every distribution it installs `REQUESTED`, so the dependency headers decide; when
/// they leave nothing (a dependency cycle), every requested one counts.
fn top_level(dists: &[Distribution]) -> Vec<&Distribution> {
    let required: BTreeSet<String> = dists
        .iter()
        .flat_map(|d| {
            let key = d.key();
            d.requires.iter().filter(move |r| **r != key).cloned()
        })
        .collect();
    let top: Vec<&Distribution> =
        dists.iter().filter(|d| d.requested && !required.contains(&d.key())).collect();
    if top.is_empty() {
        dists.iter().filter(|d| d.requested).collect()
    } else {
        top
    }
}

/// The distributions the venv at `venv` (inside the cache at `root`) was asked for, as
/// (normalized name, version): what a tool environment is a tool *of*.
pub fn tool_distributions(root: &Path, venv: &Path) -> Vec<(String, String)> {
    top_level(&installed(root, venv)).into_iter().map(|d| (d.key(), d.version.clone())).collect()
}

/// Every distribution in `lib/*/site-packages` of the venv at `venv` (sorted by name).
fn installed(root: &Path, venv: &Path) -> Vec<Distribution> {
    let mut out: Vec<Distribution> = Vec::new();
    let lib = venv.join("lib");
    if !fs::symlink_metadata(&lib).is_ok_and(|m| m.is_dir()) {
        return out;
    }
    let Ok(pythons) = fs::read_dir(&lib) else { return out };
    for python in pythons.flatten() {
        if !python.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let site = python.path().join("site-packages");
        if !fs::symlink_metadata(&site).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        let Ok(entries) = fs::read_dir(&site) else { continue };
        for entry in entries.flatten() {
            if out.len() >= MAX_DISTRIBUTIONS {
                break;
            }
            if !entry.file_name().as_bytes().ends_with(b".dist-info")
                || !entry.file_type().is_ok_and(|t| t.is_dir())
            {
                continue;
            }
            let dir = entry.path();
            let Some(meta) = read_metadata(root, &dir.join("METADATA")) else { continue };
            let requested = fs::symlink_metadata(dir.join("REQUESTED")).is_ok();
            out.push(Distribution {
                name: meta.name,
                version: meta.version,
                requires: meta.requires,
                requested,
            });
        }
    }
    out.sort_by_key(|d| d.key());
    out.dedup_by(|a, b| a.key() == b.key() && a.version == b.version);
    out
}

/// The header fields of a `METADATA` file that naming needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Metadata {
    name: String,
    version: String,
    /// Normalized names of `Requires-Dist` (extras and markers ignored).
    requires: Vec<String>,
}

impl Metadata {
    fn key(&self) -> String {
        normalize_name(self.name.as_bytes())
    }

    fn display(&self) -> String {
        format!("{} {}", self.name, self.version)
    }
}

/// `Name`, `Version` and `Requires-Dist` from the header of a `METADATA` file.
fn read_metadata(root: &Path, path: &Path) -> Option<Metadata> {
    let bytes = read_bounded(root, path, READ_LIMIT, |buf| memchr::memmem::find(buf, b"\n\n").is_some())?;
    parse_metadata(&bytes)
}

/// Parse the header (RFC 822 style, up to the first empty line) of a `METADATA` file.
fn parse_metadata(bytes: &[u8]) -> Option<Metadata> {
    let mut name = None;
    let mut version = None;
    let mut requires = Vec::new();
    for line in bytes.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            continue; // A continuation line.
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (key, value) = (&line[..colon], trim_ascii(&line[colon + 1..]));
        let Ok(value) = std::str::from_utf8(value) else { continue };
        if key.eq_ignore_ascii_case(b"Name") && name.is_none() {
            name = Some(valid_name(value)?.to_string());
        } else if key.eq_ignore_ascii_case(b"Version") && version.is_none() {
            version = Some(valid_version(value)?.to_string());
        } else if key.eq_ignore_ascii_case(b"Requires-Dist") && !only_for_extra(value) {
            let end = value
                .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
                .unwrap_or(value.len());
            if let Some(dep) = valid_name(&value[..end]) {
                requires.push(normalize_name(dep.as_bytes()));
            }
        }
    }
    Some(Metadata { name: name?, version: version?, requires })
}

/// True for a requirement that applies only with an extra (`aiohttp; extra == "d"`): the
/// distribution needs it only when the extra was asked for, so it does not make a requested
/// distribution a dependency (`uvx --with aiohttp black` asks for both). A marker that tests
/// `extra ==` anywhere counts, even under an `or`: erring that way splits tools apart (keeps
/// more under `--keep-tools`), never merges two.
fn only_for_extra(requirement: &str) -> bool {
    let Some((_, marker)) = requirement.split_once(';') else { return false };
    let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    marker.match_indices("extra").any(|(at, m)| {
        let (before, after) = (&marker[..at], &marker[at + m.len()..]);
        !word(before.chars().next_back())
            && !word(after.chars().next())
            && (after.trim_start().starts_with("==") || before.trim_end().ends_with("=="))
    })
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &b[start..end.max(start)]
}

/// A distribution name as PEP 508 allows it: ASCII letters, digits, `-_.`, starting and
/// ending with a letter or digit, at most 200 characters.
fn valid_name(name: &str) -> Option<&str> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    ok.then_some(name)
}

/// A version: printable ASCII without spaces, at most 100 characters, containing a digit.
fn valid_version(version: &str) -> Option<&str> {
    let ok = !version.is_empty()
        && version.len() <= 100
        && version.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'\\' | b'"'))
        && version.bytes().any(|b| b.is_ascii_digit());
    ok.then_some(version)
}

/// `version_info` (uv) or `version` (virtualenv, venv) of a `pyvenv.cfg`.
fn python_version(cfg: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(cfg).ok()?;
    let value = |wanted: &str| {
        text.lines().find_map(|line| {
            let (k, v) = line.split_once('=')?;
            (k.trim() == wanted).then(|| v.trim())
        })
    };
    let version = value("version_info").or_else(|| value("version"))?;
    let ok = !version.is_empty()
        && version.len() <= 32
        && version.starts_with(|c: char| c.is_ascii_digit())
        && version.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+'));
    ok.then(|| version.to_string())
}

/// Read at most `limit` bytes of the regular file `path` (stopping early once `done` says so),
/// without following a symlink out of the cache `root` and without updating its access time
/// where the kernel allows. None when it is not a regular file inside the cache, or unreadable.
fn read_bounded(root: &Path, path: &Path, limit: usize, done: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
    let meta = fs::symlink_metadata(path).ok()?;
    let path = if meta.file_type().is_symlink() {
        // A symlink-mode venv links its files into wheel archives: follow only into the cache.
        let target = fs::canonicalize(path).ok()?;
        if !target.starts_with(root) {
            return None;
        }
        target
    } else if meta.is_file() {
        path.to_path_buf()
    } else {
        return None;
    };
    let file = open_quietly(&path).ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut file = file.take(limit as u64);
    loop {
        let n = file.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&chunk[..n]);
        if done(&out) {
            break;
        }
    }
    Some(out)
}

/// Up to `limit` bytes of the file at `path` (following links: a venv's own files), never
/// blocking on a FIFO and without updating its access time where the kernel allows: reading
/// an environment to protect or name it must not count as using it (`--older-than`).
pub fn read_quietly(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
    let open = |extra: i32| fs::OpenOptions::new().read(true).custom_flags(flags | extra).open(path);
    #[cfg(target_os = "linux")]
    let file = match open(libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(0)?,
        other => other?,
    };
    #[cfg(not(target_os = "linux"))]
    let file = open(0)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut out = Vec::new();
    file.take(limit).read_to_end(&mut out)?;
    Ok(out)
}

/// Open for reading: never through a symlink, never blocking on a FIFO, without touching the
/// access time where allowed (`O_NOATIME` is refused for other users' files: then normally).
pub(crate) fn open_quietly(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
    #[cfg(target_os = "linux")]
    {
        match fs::OpenOptions::new().read(true).custom_flags(flags | libc::O_NOATIME).open(path) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
            other => return other,
        }
    }
    fs::OpenOptions::new().read(true).custom_flags(flags).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    fn dist(site: &Path, name: &str, version: &str, requires: &[&str], requested: bool) {
        let dir = site.join(format!("{name}-{version}.dist-info"));
        let mut meta = format!("Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n");
        for r in requires {
            meta.push_str(&format!("Requires-Dist: {r}\n"));
        }
        meta.push_str("\nLong description\nName: wrong\n");
        write(&dir.join("METADATA"), &meta);
        if requested {
            write(&dir.join("REQUESTED"), "");
        }
    }

    fn venv(root: &Path, rel: &str) -> PathBuf {
        let abs = root.join(rel);
        write(&abs.join("pyvenv.cfg"), "home = /usr/bin\nversion_info = 3.12.3\n");
        abs.join("lib/python3.12/site-packages")
    }

    fn cache() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(tmp.path()).unwrap();
        (tmp, root)
    }

    #[test]
    fn metadata_header_only() {
        let m = parse_metadata(
            b"Metadata-Version: 2.1\r\nName: My_Pkg\r\nVersion: 1.0.post1\r\nRequires-Dist: Dep.A[x] (>=1); python_version >= '3'\r\nRequires-Dist: opt; extra == 'x'\r\n\r\nName: other\n",
        )
        .unwrap();
        assert_eq!((m.name.as_str(), m.version.as_str()), ("My_Pkg", "1.0.post1"));
        assert_eq!(m.requires, ["dep-a"]);
        assert_eq!(parse_metadata(b"Name: x\n\nVersion: 1\n"), None);
        assert_eq!(parse_metadata(b"Name: \x1b[31mx\nVersion: 1\n"), None);
        assert_eq!(parse_metadata(b"Name: x\nVersion: 1 2\n"), None);
        assert_eq!(parse_metadata(b"\xff\xfe\x00"), None);
        assert_eq!(parse_metadata(b""), None);
    }

    #[test]
    fn environment_names_top_level_first() {
        let (_tmp, root) = cache();
        let site = venv(&root, "archive-v0/env");
        dist(&site, "tinylib", "1.0", &[], true);
        dist(&site, "zzztool", "2.0", &["tinylib>=1"], true);
        let l = label(&root, Path::new("archive-v0/env"), Detail::Full);
        assert_eq!(l.kind, Kind::ToolEnv);
        assert_eq!(l.name.as_deref(), Some("zzztool 2.0"));
        assert_eq!(l.distributions, ["zzztool 2.0", "tinylib 1.0"]);
        assert_eq!(l.python.as_deref(), Some("3.12.3"));
        assert_eq!(l.packages, ["zzztool"]);
        assert_eq!(l.describe(), "zzztool 2.0 (tool env, python 3.12, +1 dependency)");
        let k = label(&root, Path::new("archive-v0/env"), Detail::Kind);
        assert_eq!((k.kind, k.venv, k.name), (Kind::ToolEnv, true, None));
        // A link to it, and the link's lock, carry its name; a digest directory lists them.
        fs::create_dir_all(root.join("environments-v2/d")).unwrap();
        symlink("../../archive-v0/env", root.join("environments-v2/d/h")).unwrap();
        write(&root.join("environments-v2/d/h.lock"), "");
        assert!(!label(&root, Path::new("environments-v2/d/h"), Detail::Kind).venv);
        for rel in ["environments-v2/d/h", "environments-v2/d/h.lock", "environments-v2/d"] {
            assert_eq!(
                label(&root, Path::new(rel), Detail::Full).name.as_deref(),
                Some("zzztool 2.0"),
                "{rel}"
            );
        }
    }

    /// `uvx --with aiohttp black`: black wants aiohttp only with its `d` extra, so both are
    /// what the environment was asked for.
    #[test]
    fn a_dependency_only_for_an_extra_stays_top_level() {
        let (_tmp, root) = cache();
        let site = venv(&root, "archive-v0/env");
        dist(&site, "black", "24.1", &["click>=8", "aiohttp>=3.7; extra == \"d\""], true);
        dist(&site, "aiohttp", "3.9", &[], true);
        dist(&site, "click", "8.1", &[], true);
        let l = label(&root, Path::new("archive-v0/env"), Detail::Full);
        assert_eq!(l.packages, ["aiohttp", "black"]);
        assert!(only_for_extra("x; python_version < \"3.8\" and extra=='d'"));
        assert!(only_for_extra("x ; 'd' == extra"));
        assert!(!only_for_extra("x; python_version >= \"3.8\""));
        assert!(!only_for_extra("extras-helper>=1"));
        assert!(!only_for_extra("x; platform_extra == 'y'"));
        assert!(!only_for_extra("x; extra != 'd'"));
    }

    #[test]
    fn unpacked_wheels_and_pointers() {
        let (_tmp, root) = cache();
        dist(&root.join("archive-v0/w"), "tinylib", "1.0", &[], false);
        write(&root.join("archive-v0/w/tinylib/__init__.py"), "");
        let l = label(&root, Path::new("archive-v0/w"), Detail::Full);
        assert_eq!((l.kind, l.name.as_deref()), (Kind::UnpackedWheel, Some("tinylib 1.0")));
        write(&root.join("wheels-v7/pypi/tinylib/1.0-py3-none-any.http"), "");
        write(&root.join("wheels-v7/pypi/tinylib/1.1-py3-none-any.http"), "");
        let l = label(&root, Path::new("wheels-v7/pypi/tinylib"), Detail::Full);
        assert_eq!(l.name.as_deref(), Some("tinylib 1.0, 1.1"));
        let l = label(&root, Path::new("wheels-v7/index/abc/tinylib/1.0-py3-none-any"), Detail::Kind);
        assert_eq!(l.name.as_deref(), Some("tinylib 1.0"));
        let l =
            label(&root, Path::new("wheels-v4/pypi/iniconfig/iniconfig-2.0.0-py3-none-any"), Detail::Full);
        assert_eq!(l.name.as_deref(), Some("iniconfig 2.0.0"));
        let l = label(&root, Path::new("wheels-v7/pypi"), Detail::Full);
        assert_eq!(l.name.as_deref(), Some("tinylib"));
        let l = label(&root, Path::new("sdists-v10/pypi/srclib/1.0/rev"), Detail::Full);
        assert_eq!((l.kind, l.name.as_deref()), (Kind::SdistBuild, Some("srclib 1.0")));
        let l = label(&root, Path::new("sdists-v10/index/d/srclib/1.0"), Detail::Full);
        assert_eq!(l.name.as_deref(), Some("srclib 1.0"));
        write(&root.join("sdists-v10/git/d/sha/rev/gitpkg-0.1.0-py3-none-any.whl"), "");
        let l = label(&root, Path::new("sdists-v10/git/d/sha"), Detail::Full);
        assert_eq!(l.name.as_deref(), Some("gitpkg 0.1.0"));
        let l = label(&root, Path::new("simple-v27/pypi/tinylib.rkyv"), Detail::Full);
        assert_eq!((l.kind, l.name.as_deref()), (Kind::IndexMetadata, Some("tinylib")));
        let l = label(&root, Path::new("binaries-v0/ruff/0.9.1"), Detail::Full);
        assert_eq!((l.kind, l.name.as_deref()), (Kind::Binary, Some("ruff 0.9.1")));
        assert_eq!(label(&root, Path::new(".tmpX"), Detail::Full), Label::default());
        assert_eq!(label(&root, Path::new("interpreter-v5/x"), Detail::Full).kind, Kind::Python);
    }

    #[test]
    fn unreadable_metadata_gives_no_name() {
        let (_tmp, root) = cache();
        // Corrupt METADATA, an empty dist-info, a METADATA that is a directory or a FIFO.
        write(&root.join("archive-v0/a/x-1.dist-info/METADATA"), "\u{0}\u{1}garbage without colon");
        fs::create_dir_all(root.join("archive-v0/b/x-1.dist-info")).unwrap();
        fs::create_dir_all(root.join("archive-v0/c/x-1.dist-info/METADATA")).unwrap();
        fs::create_dir_all(root.join("archive-v0/d/x-1.dist-info")).unwrap();
        // mkfifo(1): rustix has no `mkfifoat` on macOS.
        let fifo = root.join("archive-v0/d/x-1.dist-info/METADATA");
        assert!(std::process::Command::new("mkfifo").arg(fifo).status().unwrap().success());
        for id in ["a", "b", "c", "d"] {
            let l = label(&root, &Path::new("archive-v0").join(id), Detail::Full);
            assert_eq!((l.kind, l.name), (Kind::UnpackedWheel, None), "{id}");
        }
        // A METADATA linking out of the cache is not read.
        let outside = tempfile::tempdir().unwrap();
        write(&outside.path().join("METADATA"), "Name: secret\nVersion: 1\n");
        fs::create_dir_all(root.join("archive-v0/e/x-1.dist-info")).unwrap();
        symlink(outside.path().join("METADATA"), root.join("archive-v0/e/x-1.dist-info/METADATA")).unwrap();
        assert_eq!(label(&root, Path::new("archive-v0/e"), Detail::Full).name, None);
        // Symlink loops: an archive, an environment link, a pyvenv.cfg.
        symlink("loop", root.join("archive-v0/loop")).unwrap();
        assert_eq!(label(&root, Path::new("archive-v0/loop"), Detail::Full), Label::kind(Kind::Other));
        fs::create_dir_all(root.join("environments-v2/d")).unwrap();
        symlink("l2", root.join("environments-v2/d/l1")).unwrap();
        symlink("l1", root.join("environments-v2/d/l2")).unwrap();
        let l = label(&root, Path::new("environments-v2/d/l1"), Detail::Full);
        assert_eq!((l.kind, l.name), (Kind::ToolEnv, None));
        // An environment link pointing out of the cache is not followed.
        let site = venv(outside.path(), "venv");
        dist(&site, "secret", "1.0", &[], true);
        symlink(outside.path().join("venv"), root.join("environments-v2/d/out")).unwrap();
        assert_eq!(label(&root, Path::new("environments-v2/d/out"), Detail::Full).name, None);
        assert_eq!(label(&root, Path::new("environments-v2/d"), Detail::Full).name, None);
    }

    #[test]
    fn python_versions() {
        assert_eq!(python_version(b"home = /x\nversion_info = 3.12.3\n").as_deref(), Some("3.12.3"));
        assert_eq!(python_version(b"version = 3.11.2\n").as_deref(), Some("3.11.2"));
        assert_eq!(python_version(b"version_info = 3.13.0rc1\nversion = 3\n").as_deref(), Some("3.13.0rc1"));
        assert_eq!(python_version(b"version_info = \x1b]0;x\n"), None);
        assert_eq!(python_version(b"home = /x\n"), None);
    }

    #[test]
    fn wheel_keys() {
        let v = |k: &str| wheel_key_version(OsStr::new(k));
        assert_eq!(v("2.3.1-py3-none-any").as_deref(), Some("2.3.1"));
        assert_eq!(v("2.3.1-py3-none-any.http").as_deref(), Some("2.3.1"));
        assert_eq!(v("iniconfig-2.3.1-py3-none-any").as_deref(), Some("2.3.1"));
        assert_eq!(v("garbage"), None);
    }
}
