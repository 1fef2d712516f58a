//! The Python packages the tests install with uv, built from Rust so the tests need no
//! index and no build tools: [`Wheel`] writes a pure-Python wheel, [`Sdist`] writes a
//! source distribution whose in-tree PEP 517 backend (stdlib only) builds the wheel, so uv
//! can build it offline and make real `sdists-v*` entries.
//!
//! The console scripts of the "tool" packages print `ready pid=<pid>` and then wait; a test
//! probes them by creating a trigger file, which makes the process import its
//! `<pkg>.lazy` module *now* (it is not imported at startup) and write the outcome next
//! to the trigger. A process whose environment was pruned answers
//! `ModuleNotFoundError: ...` instead of `ok ...`.

use std::path::{Path, PathBuf};

use super::archive::{b64_urlsafe_nopad, sha256, tar_gz, ZipWriter};

/// Environment variable naming the trigger file of a waiting tool (or pass `--trigger PATH`).
pub const TRIGGER_ENV: &str = "SAFE_PRUNE_TRIGGER";

/// The console-script module of the tool packages. `PKG` is derived from `__name__`.
const TOOL_CLI: &str = r#""""Console script of a safe-prune test package.

Prints "ready pid=<pid>" (flushed), then exits if --once was given; otherwise it polls
every 0.1 s for a trigger file (argv `--trigger PATH` or env SAFE_PRUNE_TRIGGER). When the
trigger appears it imports <pkg>.lazy afresh and writes "ok <VALUE>" or
"<ExceptionType>: <message>" to PATH.result, then deletes the trigger. Runs until killed.
"""
import importlib
import os
import sys
import time

PKG = __name__.split(".")[0]


def probe():
    sys.modules.pop(PKG + ".lazy", None)
    importlib.invalidate_caches()
    try:
        return "ok " + importlib.import_module(PKG + ".lazy").VALUE
    except BaseException as e:
        return "%s: %s" % (type(e).__name__, e)


def main():
    args = sys.argv[1:]
    print("ready pid=%d" % os.getpid(), flush=True)
    if "--once" in args:
        return 0
    trigger = os.environ.get("SAFE_PRUNE_TRIGGER")
    if "--trigger" in args:
        trigger = args[args.index("--trigger") + 1]
    while True:
        if trigger and os.path.exists(trigger):
            result = probe()
            with open(trigger + ".result.tmp", "w") as f:
                f.write(result)
            os.rename(trigger + ".result.tmp", trigger + ".result")
            os.remove(trigger)
        time.sleep(0.1)
"#;

/// A pure-Python `py3-none-any` wheel.
#[derive(Clone, Debug)]
pub struct Wheel {
    name: String,
    version: String,
    files: Vec<(String, Vec<u8>)>,
    scripts: Vec<(String, String)>,
}

impl Wheel {
    /// A wheel with no files yet. `name` must already be a valid wheel name part (`[a-z0-9_]`).
    pub fn new(name: &str, version: &str) -> Self {
        Wheel { name: name.to_string(), version: version.to_string(), files: Vec::new(), scripts: Vec::new() }
    }

    /// Adds a file at `path` inside the wheel (e.g. `pkg/__init__.py`).
    pub fn module(mut self, path: &str, contents: &str) -> Self {
        self.files.push((path.to_string(), contents.as_bytes().to_vec()));
        self
    }

    /// Adds a `[console_scripts]` entry point, `target` as `module:function`.
    pub fn console_script(mut self, name: &str, target: &str) -> Self {
        self.scripts.push((name.to_string(), target.to_string()));
        self
    }

    /// `{name}-{version}-py3-none-any.whl`.
    pub fn filename(&self) -> String {
        format!("{}-{}-py3-none-any.whl", self.name, self.version)
    }

    /// Writes the wheel into `dir`; returns its path.
    pub fn build(&self, dir: &Path) -> PathBuf {
        let dist_info = format!("{}-{}.dist-info", self.name, self.version);
        let mut files = self.files.clone();
        files.push((
            format!("{dist_info}/METADATA"),
            format!("Metadata-Version: 2.1\nName: {}\nVersion: {}\n", self.name, self.version).into_bytes(),
        ));
        files.push((
            format!("{dist_info}/WHEEL"),
            b"Wheel-Version: 1.0\nGenerator: safe-prune-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
                .to_vec(),
        ));
        let mut entry_points = String::from("[console_scripts]\n");
        for (name, target) in &self.scripts {
            entry_points.push_str(&format!("{name} = {target}\n"));
        }
        files.push((format!("{dist_info}/entry_points.txt"), entry_points.into_bytes()));
        files.push((format!("{dist_info}/RECORD"), record(&files, &dist_info)));

        let mut zip = ZipWriter::default();
        for (path, data) in &files {
            zip.file(path, data);
        }
        let path = dir.join(self.filename());
        std::fs::write(&path, zip.finish()).unwrap();
        path
    }
}

/// A wheel's RECORD for `files` (which must not yet contain RECORD itself).
fn record(files: &[(String, Vec<u8>)], dist_info: &str) -> Vec<u8> {
    let mut out = String::new();
    for (path, data) in files {
        let digest = b64_urlsafe_nopad(&sha256(data));
        out.push_str(&format!("{path},sha256={digest},{}\n", data.len()));
    }
    out.push_str(&format!("{dist_info}/RECORD,,\n"));
    out.into_bytes()
}

/// A source distribution `{name}-{version}.tar.gz` with an in-tree build backend
/// (`backend-path = ["."]`, no build requirements) that writes a wheel containing
/// `{name}/__init__.py` with `VALUE = "{name} {version}"`.
pub struct Sdist {
    name: String,
    version: String,
}

impl Sdist {
    /// An sdist for `name` (`[a-z0-9_]`) at `version`.
    pub fn new(name: &str, version: &str) -> Self {
        Sdist { name: name.to_string(), version: version.to_string() }
    }

    /// Writes the sdist into `dir`; returns its path.
    pub fn build(&self, dir: &Path) -> PathBuf {
        let (name, version) = (&self.name, &self.version);
        let metadata = format!("Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n");
        let pyproject = format!(
            "[build-system]\nrequires = []\nbuild-backend = \"backend\"\nbackend-path = [\".\"]\n\n\
             [project]\nname = \"{name}\"\nversion = \"{version}\"\n"
        );
        let backend = SDIST_BACKEND.replace("@NAME@", name).replace("@VERSION@", version);
        let top = format!("{name}-{version}");
        let files = vec![
            (format!("{top}/PKG-INFO"), metadata.into_bytes()),
            (format!("{top}/pyproject.toml"), pyproject.into_bytes()),
            (format!("{top}/backend.py"), backend.into_bytes()),
        ];
        let path = dir.join(format!("{top}.tar.gz"));
        std::fs::write(&path, tar_gz(&files)).unwrap();
        path
    }
}

const SDIST_BACKEND: &str = r#""""Minimal PEP 517 backend (stdlib only) for safe-prune's test sdists."""
import base64
import hashlib
import os
import zipfile

NAME, VERSION = "@NAME@", "@VERSION@"
DIST_INFO = "%s-%s.dist-info" % (NAME, VERSION)
METADATA = "Metadata-Version: 2.1\nName: %s\nVersion: %s\n" % (NAME, VERSION)


def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    os.makedirs(os.path.join(metadata_directory, DIST_INFO), exist_ok=True)
    with open(os.path.join(metadata_directory, DIST_INFO, "METADATA"), "w") as f:
        f.write(METADATA)
    return DIST_INFO


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    files = {
        NAME + "/__init__.py": 'VALUE = "%s %s"\n' % (NAME, VERSION),
        DIST_INFO + "/METADATA": METADATA,
        DIST_INFO + "/WHEEL": "Wheel-Version: 1.0\nGenerator: backend\n"
        "Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = hashlib.sha256(text.encode()).digest()
        b64 = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        record.append("%s,sha256=%s,%d" % (path, b64, len(text.encode())))
    record.append(DIST_INFO + "/RECORD,,")
    files[DIST_INFO + "/RECORD"] = "\n".join(record) + "\n"
    filename = "%s-%s-py3-none-any.whl" % (NAME, VERSION)
    with zipfile.ZipFile(os.path.join(wheel_directory, filename), "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return filename
"#;

/// A "tool" package: `{name}/__init__.py`, `{name}/cli.py` (console script `{name}`, see
/// module docs) and `{name}/lazy.py` (imported only when probed).
pub fn tool_wheel(name: &str, version: &str) -> Wheel {
    Wheel::new(name, version)
        .module(&format!("{name}/__init__.py"), &format!("__version__ = \"{version}\"\n"))
        .module(&format!("{name}/cli.py"), TOOL_CLI)
        .module(&format!("{name}/lazy.py"), &format!("VALUE = \"{name} {version}\"\n"))
        .console_script(name, &format!("{name}.cli:main"))
}

/// The standard package set, written into one `--find-links` directory:
/// tools `sleepy` 0.1 and 0.2 and `dozy` 1.0, library `tinylib` 1.0, sdist `srclib` 1.0.
pub fn test_wheels(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    tool_wheel("sleepy", "0.1").build(dir);
    tool_wheel("sleepy", "0.2").build(dir);
    tool_wheel("dozy", "1.0").build(dir);
    Wheel::new("tinylib", "1.0").module("tinylib/__init__.py", "VALUE = \"tinylib 1.0\"\n").build(dir);
    Sdist::new("srclib", "1.0").build(dir);
    dir.to_path_buf()
}
