//! Shared harness of safe-prune's integration tests (`mod common;` in every test file).
//!
//! - where the tools are: [`uv`] (pinned 0.13.8), [`uv062`] (old cache layouts),
//!   [`python`] (a base interpreter), [`bin`] (the safe-prune binary). `scripts/test`
//!   provides the first three; a test that needs uv fails (never skips) without them;
//! - the test packages ([`packages`]), built in Rust so everything runs offline;
//! - [`TestEnv`]: a temp dir with `cache/`, `home/`, `wheels/`, `work/`, and commands
//!   (uv, safe-prune) isolated from the user's cache, config, tools and Pythons;
//! - trees ([`tree`]): copy without following links, snapshot, diff;
//! - processes ([`process`]): kill-on-drop guards and process-table helpers (/proc on
//!   Linux, `ps` and `sysctl` on macOS).
#![allow(dead_code, unused_imports)]

pub mod archive;
pub mod packages;
pub mod process;
pub mod tree;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

pub use packages::{test_wheels, tool_wheel, Sdist, Wheel, TRIGGER_ENV};
pub use process::{alive, children_of, Child, PidGuard};
pub use tree::{assert_same_tree, copy_cache, copy_tree, snapshot, tree_diff, Kind, Tree};

/// The uv version safe-prune mirrors.
pub const UV_VERSION: &str = "0.13.8";
/// The old uv used to make caches with old bucket versions and absolute symlinks.
pub const UV_OLD_VERSION: &str = "0.6.2";

/// Path to uv 0.13.8 (`SAFE_PRUNE_TEST_UV`). Panics if unset or the wrong version.
pub fn uv() -> PathBuf {
    tool_from_env("SAFE_PRUNE_TEST_UV", UV_VERSION)
}

/// Path to uv 0.6.2 (`SAFE_PRUNE_TEST_UV_062`). Panics if unset or the wrong version:
/// this returns a plain path, not an `Option`, because a missing old uv is never a reason
/// to skip a test.
pub fn uv062() -> PathBuf {
    tool_from_env("SAFE_PRUNE_TEST_UV_062", UV_OLD_VERSION)
}

fn tool_from_env(var: &str, version: &str) -> PathBuf {
    let path = match std::env::var_os(var) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ if std::env::var("CI").as_deref() == Ok("true") => panic!(
            "{var} is not set, and CI=true: tests that need uv {version} must run in CI. \
             Run the suite with scripts/test, which installs uv and sets {var}."
        ),
        _ => panic!(
            "{var} is not set. Run the tests with scripts/test: it installs uv {version} \
             into target/test-tools/ and sets {var} (extra arguments go to cargo test)."
        ),
    };
    // Check each tool's version once per test binary: a differential test against the
    // wrong uv would prove nothing.
    static CHECKED: OnceLock<Mutex<HashMap<PathBuf, String>>> = OnceLock::new();
    let mut checked = CHECKED.get_or_init(Default::default).lock().unwrap();
    let got = checked.entry(path.clone()).or_insert_with(|| {
        let out = Command::new(&path)
            .arg("--version")
            .output()
            .unwrap_or_else(|e| panic!("{var}={}: cannot run: {e}", path.display()));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    });
    assert!(
        got.split_whitespace().nth(1) == Some(version),
        "{var}={} reports {got:?}, expected uv {version}; rerun scripts/test",
        path.display()
    );
    path
}

/// A base (non-venv) Python interpreter: `SAFE_PRUNE_TEST_PYTHON`, else `python3` on PATH.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("SAFE_PRUNE_TEST_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("python3"))
        .find(|p| p.is_file())
        .expect("no python3 on PATH and SAFE_PRUNE_TEST_PYTHON unset; run scripts/test")
}

/// The safe-prune binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_safe-prune"))
}

/// Everything a test needs in one temp dir, deleted on drop:
/// `cache/` (not created: uv creates it on first use), `home/` (HOME and XDG dirs, uv's
/// tool and Python dirs), `wheels/` (the [`test_wheels`] set, the `--find-links` dir),
/// `work/` (cwd of every command), `bin/uv` (a link to [`uv`], first on PATH).
pub struct TestEnv {
    _tmp: tempfile::TempDir,
    /// The temp dir (canonical).
    pub root: PathBuf,
    /// The default cache (`UV_CACHE_DIR`).
    pub cache: PathBuf,
    /// HOME.
    pub home: PathBuf,
    /// The `--find-links` directory with the test packages.
    pub wheels: PathBuf,
    /// Working directory of every command.
    pub work: PathBuf,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl TestEnv {
    /// A fresh environment with the test packages built into `wheels/`.
    pub fn new() -> Self {
        let tmp = tempfile::Builder::new().prefix("safe-prune-test-").tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let env = TestEnv {
            cache: root.join("cache"),
            home: root.join("home"),
            wheels: root.join("wheels"),
            work: root.join("work"),
            root,
            _tmp: tmp,
        };
        for dir in [&env.home, &env.work, &env.root.join("bin")] {
            std::fs::create_dir_all(dir).unwrap();
        }
        test_wheels(&env.wheels);
        std::os::unix::fs::symlink(uv(), env.root.join("bin/uv")).unwrap();
        env
    }

    /// `root/<name>`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// A name unique within this test binary (for venvs, trigger files).
    pub fn unique(&self, prefix: &str) -> String {
        format!("{prefix}-{}", COUNTER.fetch_add(1, Ordering::Relaxed))
    }

    /// Applies the isolating environment (and cwd `work/`) to `cmd`: no inherited `UV_*`,
    /// virtualenv or Python path variables; the cache, home, XDG, tool and Python-install
    /// dirs inside this env; offline; no config files; no Python downloads;
    /// `UV_PYTHON=<python()>`; `bin/` (with `uv`) first on PATH.
    pub fn isolate(&self, cmd: &mut Command) {
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("UV_") || k == "UV" {
                cmd.env_remove(&key);
            }
        }
        for key in ["VIRTUAL_ENV", "CONDA_PREFIX", "PYTHONPATH", "PYTHONHOME", "XDG_CONFIG_DIRS"] {
            cmd.env_remove(key);
        }
        let home = &self.home;
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![self.root.join("bin")];
        paths.extend(std::env::split_paths(&path));
        cmd.current_dir(&self.work)
            .env("PATH", std::env::join_paths(paths).unwrap())
            .env("HOME", home)
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .env("XDG_STATE_HOME", home.join(".local/state"))
            .env("XDG_BIN_HOME", home.join(".local/bin"))
            .env("UV_CACHE_DIR", &self.cache)
            .env("UV_OFFLINE", "1")
            .env("UV_NO_CONFIG", "1")
            .env("UV_PYTHON_DOWNLOADS", "never")
            .env("UV_PYTHON", python())
            .env("UV_TOOL_DIR", home.join("uv-tools"))
            .env("UV_TOOL_BIN_DIR", home.join("uv-tool-bin"))
            .env("UV_PYTHON_INSTALL_DIR", home.join("uv-python"))
            .env("UV_NO_PROGRESS", "1")
            .env("NO_COLOR", "1");
    }

    /// An isolated command for the program `program`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        self.isolate(&mut cmd);
        cmd
    }

    /// An isolated uv 0.13.8 command.
    pub fn uv_cmd(&self) -> Command {
        self.command(uv())
    }

    /// An isolated uv 0.6.2 command.
    pub fn uv062_cmd(&self) -> Command {
        self.command(uv062())
    }

    /// `uv tool run --offline --find-links wheels/ --from <from> <script> <args...>` with
    /// the given uv, as a command (not run yet).
    pub fn tool_run_cmd(&self, uv: &Path, from: &str, script: &str, args: &[&str]) -> Command {
        let mut cmd = self.command(uv);
        cmd.args(["tool", "run", "--offline", "--find-links"])
            .arg(&self.wheels)
            .args(["--from", from, script])
            .args(args);
        cmd
    }

    /// Runs a short-lived tool (`--once`) with uv 0.13.8; asserts it printed "ready".
    pub fn tool_run(&self, from: &str, script: &str) -> Output {
        self.tool_run_with(&uv(), from, script)
    }

    /// Runs a short-lived tool (`--once`) with the given uv; asserts it printed "ready".
    pub fn tool_run_with(&self, uv: &Path, from: &str, script: &str) -> Output {
        let out = run_ok(&mut self.tool_run_cmd(uv, from, script, &["--once"]));
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with("ready"),
            "{from}: no ready line\n{}",
            show(&out)
        );
        out
    }

    /// Fills `self.cache` with uv 0.13.8; see [`TestEnv::populate_cache_with`].
    pub fn populate_cache(&self) {
        self.populate_cache_with(&uv());
    }

    /// Fills `self.cache` the way real use does, with the given uv (0.13.8 or 0.6.2):
    /// `uv venv` + `uv pip install tinylib srclib` (a wheel and a built sdist), three
    /// `uv tool run`s (sleepy 0.1, sleepy 0.2, dozy: cached environments), `uv run
    /// --with tinylib` and a PEP 723 script (its real venv in `environments-v2`), then a
    /// reinstall of srclib after its sdist changed, which leaves a stale sdist revision.
    /// Result: `archive-v0`, `wheels-v*`, `sdists-v*` (two revisions), `environments-v2`,
    /// `interpreter-v*`, `builds-v0`.
    pub fn populate_cache_with(&self, uv: &Path) {
        let venv = self.work.join(self.unique("venv"));
        let find_links = ["--offline".as_ref(), "--find-links".as_ref(), self.wheels.as_os_str()];
        run_ok(self.command(uv).arg("venv").arg(&venv));
        run_ok(
            self.command(uv)
                .args(["pip", "install", "--python"])
                .arg(&venv)
                .args(find_links)
                .args(["tinylib", "srclib"]),
        );
        self.tool_run_with(uv, "sleepy==0.1", "sleepy");
        self.tool_run_with(uv, "sleepy==0.2", "sleepy");
        self.tool_run_with(uv, "dozy", "dozy");
        run_ok(self.command(uv).arg("run").args(find_links).args([
            "--no-project",
            "--with",
            "tinylib",
            "python",
            "-c",
            "import tinylib",
        ]));
        let script = self.work.join(format!("{}.py", self.unique("script")));
        std::fs::write(
            &script,
            "# /// script\n# dependencies = [\"tinylib\"]\n# ///\nimport tinylib\nprint(tinylib.VALUE)\n",
        )
        .unwrap();
        run_ok(self.command(uv).arg("run").args(find_links).arg(&script));

        // A changed sdist (new ctime) makes uv build a new revision; the old one stays
        // behind until a prune ("Removing dangling source revision").
        let sdist = self.wheels.join("srclib-1.0.tar.gz");
        let day_ago = SystemTime::now() - Duration::from_secs(86_400);
        std::fs::File::options().write(true).open(&sdist).unwrap().set_modified(day_ago).unwrap();
        run_ok(
            self.command(uv)
                .args(["pip", "install", "--reinstall", "--python"])
                .arg(&venv)
                .args(find_links)
                .arg("srclib"),
        );
    }

    /// Runs safe-prune with the isolated environment and `args`.
    pub fn run_safe_prune<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        self.command(bin()).args(args).output().unwrap()
    }

    /// Runs `safe-prune <args...> --cache-dir <cache>` with the isolated environment.
    pub fn safe_prune_on(&self, cache: &Path, args: &[&str]) -> Output {
        self.command(bin()).args(args).arg("--cache-dir").arg(cache).output().unwrap()
    }

    /// Runs `<uv> cache prune --cache-dir <cache> <extra...>`.
    pub fn uv_prune(&self, uv: &Path, cache: &Path, extra: &[&str]) -> Output {
        self.command(uv).args(["cache", "prune", "--cache-dir"]).arg(cache).args(extra).output().unwrap()
    }

    /// Starts a long-running tool via `uv tool run` (uv 0.13.8 unless `uv` is given) and
    /// waits for its "ready" line; see [`RunningTool`].
    pub fn spawn_tool(&self, uv: &Path, from: &str, script: &str) -> RunningTool {
        self.spawn_tool_with_env(uv, from, script, &[])
    }

    /// [`TestEnv::spawn_tool`] with extra environment variables for uv (`UV_LINK_MODE`, ...).
    pub fn spawn_tool_with_env(
        &self,
        uv: &Path,
        from: &str,
        script: &str,
        vars: &[(&str, &str)],
    ) -> RunningTool {
        let mut cmd = self.tool_run_cmd(uv, from, script, &[]);
        cmd.envs(vars.iter().copied());
        self.spawn_probed(cmd, from)
    }

    /// Starts `uv run --no-project --with <with> <script>` (uv 0.13.8): the script runs
    /// from an overlay environment in `builds-v0` on top of a cached one in `archive-v0`;
    /// [`RunningTool::environment`] is the overlay.
    pub fn spawn_run_with(&self, with: &str, script: &str) -> RunningTool {
        let mut cmd = self.command(uv());
        cmd.args(["run", "--offline", "--find-links"]).arg(&self.wheels).args([
            "--no-project",
            "--with",
            with,
            script,
        ]);
        self.spawn_probed(cmd, with)
    }

    /// Runs `cmd` (a uv command starting a test console script) with `--trigger`, and waits
    /// for the script's "ready" line.
    fn spawn_probed(&self, mut cmd: Command, what: &str) -> RunningTool {
        let trigger = self.root.join(self.unique("trigger"));
        let stderr_path = self.root.join(self.unique("tool-stderr"));
        cmd.arg("--trigger")
            .arg(&trigger)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap());
        let mut uv_child = Child(cmd.spawn().unwrap());
        let lines = process::line_reader(uv_child.0.stdout.take().unwrap());
        let ready = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            process::wait_for_line(&lines, "ready", Duration::from_secs(60))
        }))
        .unwrap_or_else(|_| {
            panic!(
                "{what} did not become ready; uv stderr:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            )
        });
        let pid: u32 = ready
            .strip_prefix("ready pid=")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("bad ready line {ready:?}"));
        let python = PidGuard(pid);
        // The tool runs as a direct child of uv (uv spawns, it does not exec).
        let uv_pid = uv_child.id();
        assert!(
            process::wait_until(Duration::from_secs(5), || children_of(uv_pid).contains(&pid)),
            "python pid {pid} is not a child of uv pid {uv_pid}: {:?}",
            children_of(uv_pid)
        );
        RunningTool { python, uv: uv_child, trigger, stderr_path, lines }
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

/// A tool started by [`TestEnv::spawn_tool`]: the uv parent and its Python child, both
/// killed when this is dropped.
pub struct RunningTool {
    /// The Python process running the console script (uv's child). Declared first so it
    /// is killed first, while uv can still reap it.
    pub python: PidGuard,
    /// The `uv tool run` process.
    pub uv: Child,
    trigger: PathBuf,
    stderr_path: PathBuf,
    /// Further stdout lines of the tool.
    pub lines: std::sync::mpsc::Receiver<String>,
}

impl RunningTool {
    /// Pid of the Python process.
    pub fn pid(&self) -> u32 {
        self.python.0
    }

    /// The cached environment the tool runs in: the first `PATH` entry of the Python
    /// process is `<cache>/archive-v0/<id>/bin` (uv prepends the environment's `bin`).
    pub fn environment(&self) -> PathBuf {
        let path = process::environ_var(self.pid(), "PATH").expect("tool has no PATH");
        let first = std::env::split_paths(&path).next().expect("empty PATH");
        assert!(first.ends_with("bin"), "unexpected first PATH entry {first:?}");
        first.parent().unwrap().to_path_buf()
    }

    /// SIGKILLs the uv parent (the Python child lives on, reparented).
    pub fn kill_uv(&mut self) {
        self.uv.kill();
    }

    /// Makes the running tool import its `lazy` module now; returns its answer:
    /// `"ok <name> <version>"` or `"<ExceptionType>: <message>"`.
    pub fn probe(&self) -> String {
        let result = PathBuf::from(format!("{}.result", self.trigger.display()));
        let _ = std::fs::remove_file(&result);
        assert!(alive(self.pid()), "tool process {} is not running", self.pid());
        std::fs::write(&self.trigger, b"").unwrap();
        let got = process::wait_until(Duration::from_secs(20), || result.exists());
        assert!(
            got,
            "tool {} did not answer the probe; stderr:\n{}",
            self.pid(),
            std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
        );
        std::fs::read_to_string(&result).unwrap()
    }
}

/// Runs `cmd`, panics with its output unless it exits 0.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "command failed: {cmd:?}\n{}", show(&out));
    out
}

/// A command's status, stdout and stderr, for failure messages.
pub fn show(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The command's stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
