//! Running as `uv`: a drop-in replacement for `uv cache prune` and `uv cache clean`.
//!
//! Installed as a `uv` link before the real uv on `PATH` (`safe-prune shim install`), the
//! binary reads uv's command line. `uv cache prune [--ci] [--force]`, `uv cache clean
//! [--force] [PACKAGE...]` and its aliases (`uv cache clear`, `uv clean`), with uv's global
//! options anywhere, run safe-prune's prune and clean with uv's messages and exit codes.
//! Everything else, including anything this parser does not fully understand, is handed to
//! the real uv by `exec`, so arguments, environment, standard streams and exit code stay
//! exactly uv's.
//!
//! Handing a *prune* to the real uv would be the very bug safe-prune exists for, so the
//! parser is strict and hands on only command lines uv itself rejects (unknown or repeated
//! options, missing values, invalid package names, `-q` with `-v`) or that never remove
//! anything (`--help`, `--version`, `--show-settings`, other commands). The option tables
//! below therefore list *every* option uv 0.13.8 accepts for these commands (uv-cli
//! `GlobalArgs`, `TopLevelArgs`, uv-cache `CacheArgs`, `PruneArgs`, `CleanArgs`), hidden
//! ones included: one accepted by uv but missing here would reach the real uv's prune.
//!
//! Parsing is a hand-written pure function over `OsString`s rather than clap, so that an
//! argument this parser does not know is passed on byte for byte instead of being rejected.
//!
//! The real uv is found on `PATH` by skipping this binary (and copies of it). Two *different*
//! safe-prune builds installed as `uv` would still take each other for the real uv and exec
//! each other forever, so every hand-off adds this binary's identity to [`VISITED_VAR`] and a
//! safe-prune skips every binary named there: each one is tried at most once, then the real uv
//! or a clear error. A loop the identities cannot see (a script named `uv` that runs
//! safe-prune) ends with an error after [`MAX_HANDOFFS`] hand-offs. That variable is the only
//! change the real uv sees in its environment.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{locate, prune, report};

/// The name safe-prune was invoked under, when it acts as uv.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invoked {
    Uv,
    Uvx,
}

/// `Some` when argv[0]'s base name is `uv` or `uvx`.
pub fn invoked_as(argv0: Option<&OsStr>) -> Option<Invoked> {
    let base = Path::new(argv0?).file_name()?;
    match base.as_bytes() {
        b"uv" => Some(Invoked::Uv),
        b"uvx" => Some(Invoked::Uvx),
        _ => None,
    }
}

/// uv's global options seen on the command line (and the environment variables uv reads for
/// them that safe-prune does not read elsewhere).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Globals {
    pub quiet: u8,
    pub verbose: u8,
    pub no_cache: bool,
    pub cache_dir: Option<OsString>,
    pub config_file: Option<OsString>,
    pub no_config: bool,
    /// `--isolated`: deprecated in uv; for cache commands it means `--no-config`, with a warning.
    pub isolated: bool,
    pub directory: Option<OsString>,
    pub project: Option<OsString>,
}

/// What to do with a `uv` command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// `uv cache prune`.
    Prune { globals: Globals, ci: bool, force: bool },
    /// `uv cache clean` / `uv cache clear` / `uv clean`; packages normalized.
    Clean { globals: Globals, force: bool, packages: Vec<String> },
    /// Anything else: the real uv runs it.
    PassThrough,
}

/// How an option is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A boolean flag; given twice at one command level is an error in uv.
    Flag,
    /// A counted flag (`-q`, `-vv`).
    Count,
    /// Takes one value; `values` (when not empty) lists the accepted ones.
    Value(&'static [&'static str]),
    /// Takes one value and may be repeated.
    Multi,
    /// Help, version, `--show-settings`: uv prints something and removes nothing.
    Hand,
}

/// One option: its long name (the identity), aliases, short letter, kind.
struct Opt {
    long: &'static str,
    aliases: &'static [&'static str],
    short: Option<u8>,
    kind: Kind,
}

const fn opt(long: &'static str, kind: Kind) -> Opt {
    Opt { long, aliases: &[], short: None, kind }
}

/// uv 0.13.8's global options (`global = true`), valid at every command level.
const GLOBAL: &[Opt] = &[
    // uv-cache `CacheArgs`.
    Opt { long: "no-cache", aliases: &["no-cache-dir"], short: Some(b'n'), kind: Kind::Flag },
    opt("cache-dir", Kind::Value(&[])),
    // uv-cli `TopLevelArgs`.
    opt("config-file", Kind::Value(&[])),
    opt("no-config", Kind::Flag),
    Opt { long: "help", aliases: &[], short: Some(b'h'), kind: Kind::Hand },
    // uv-cli `GlobalArgs`.
    opt("python-preference", Kind::Value(&["only-managed", "managed", "system", "only-system"])),
    opt("managed-python", Kind::Flag),
    opt("no-managed-python", Kind::Flag),
    opt("allow-python-downloads", Kind::Flag),
    opt("no-python-downloads", Kind::Flag),
    opt("python-fetch", Kind::Value(&["automatic", "manual", "never"])),
    Opt { long: "quiet", aliases: &[], short: Some(b'q'), kind: Kind::Count },
    Opt { long: "verbose", aliases: &[], short: Some(b'v'), kind: Kind::Count },
    opt("no-color", Kind::Flag),
    opt("color", Kind::Value(&["auto", "always", "never"])),
    opt("native-tls", Kind::Flag),
    opt("no-native-tls", Kind::Flag),
    opt("system-certs", Kind::Flag),
    opt("no-system-certs", Kind::Flag),
    opt("offline", Kind::Flag),
    opt("no-offline", Kind::Flag),
    Opt { long: "allow-insecure-host", aliases: &["trusted-host"], short: None, kind: Kind::Multi },
    opt("preview", Kind::Flag),
    opt("no-preview", Kind::Flag),
    Opt { long: "preview-features", aliases: &["preview-feature"], short: None, kind: Kind::Multi },
    opt("isolated", Kind::Flag),
    opt("show-settings", Kind::Hand),
    opt("no-progress", Kind::Flag),
    opt("no-installer-metadata", Kind::Flag),
    opt("directory", Kind::Value(&[])),
    opt("project", Kind::Value(&[])),
];

/// `uv --version` / `-V`: top level only in uv, but never harmful to hand on.
const VERSION: Opt = Opt { long: "version", aliases: &[], short: Some(b'V'), kind: Kind::Hand };

/// `uv cache prune`'s own options.
const PRUNE: &[Opt] = &[opt("ci", Kind::Flag), opt("force", Kind::Flag)];
/// `uv cache clean`'s own options.
const CLEAN: &[Opt] = &[opt("force", Kind::Flag)];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Top,
    Cache,
    Prune,
    Clean,
}

/// Parser state: options seen, per command level (uv's global options may be given once
/// per level; a later level overrides an earlier one).
#[derive(Default)]
struct State {
    seen: HashSet<(usize, &'static str)>,
    flags: HashSet<&'static str>,
    values: Vec<(&'static str, OsString)>,
    quiet: u8,
    verbose: u8,
}

impl State {
    fn value(&self, long: &str) -> Option<OsString> {
        self.values.iter().rev().find(|(l, _)| *l == long).map(|(_, v)| v.clone())
    }
}

/// Parse uv's arguments (without argv[0]).
pub fn parse(args: &[OsString]) -> Parsed {
    parse_inner(args).unwrap_or(Parsed::PassThrough)
}

/// `None` means "hand it to the real uv".
fn parse_inner(args: &[OsString]) -> Option<Parsed> {
    let mut stage = Stage::Top;
    let mut level = 0;
    let mut state = State::default();
    let mut packages = Vec::new();
    let mut positional_only = false;
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_bytes();
        i += 1;
        if positional_only || arg == b"-" || !arg.starts_with(b"-") {
            if stage == Stage::Clean {
                packages.push(package_name(arg)?);
                continue;
            }
            stage = match (stage, arg) {
                _ if positional_only => return None,
                (Stage::Top, b"cache") => Stage::Cache,
                (Stage::Top, b"clean") => Stage::Clean,
                (Stage::Cache, b"prune") => Stage::Prune,
                (Stage::Cache, b"clean" | b"clear") => Stage::Clean,
                _ => return None,
            };
            // Each subcommand is a new level for uv's once-per-level options.
            level += 1;
            continue;
        }
        if arg == b"--" {
            // After `--` everything is positional: package names for clean, an error elsewhere.
            positional_only = true;
            continue;
        }
        let local: &[Opt] = match stage {
            Stage::Prune => PRUNE,
            Stage::Clean => CLEAN,
            _ => &[],
        };
        if let Some(long) = arg.strip_prefix(b"--") {
            let (name, inline) = match long.iter().position(|&b| b == b'=') {
                Some(eq) => (&long[..eq], Some(OsStr::from_bytes(&long[eq + 1..]))),
                None => (long, None),
            };
            let option =
                find(local, |o| o.long.as_bytes() == name || o.aliases.iter().any(|a| a.as_bytes() == name))
                    .or_else(|| (name == b"version").then_some(&VERSION))?;
            let value = match option.kind {
                Kind::Value(_) | Kind::Multi => match inline {
                    Some(v) => Some(v.to_os_string()),
                    None => {
                        let next = args.get(i)?;
                        i += 1;
                        // uv (clap) does not take `-x` as a value unless written `--opt=-x`.
                        if next.as_bytes().starts_with(b"-") && next.as_bytes() != b"-" {
                            return None;
                        }
                        Some(next.clone())
                    }
                },
                _ if inline.is_some() => return None,
                _ => None,
            };
            apply(&mut state, level, option, value)?;
        } else {
            // A cluster of short flags: `-q`, `-vv`, `-qn`. No short option takes a value.
            for &letter in &arg[1..] {
                let option = find(local, |o| o.short == Some(letter))
                    .or_else(|| (letter == b'V').then_some(&VERSION))?;
                if matches!(option.kind, Kind::Value(_) | Kind::Multi) {
                    return None;
                }
                apply(&mut state, level, option, None)?;
            }
        }
    }
    // uv: `--quiet` conflicts with `--verbose`, `--color` with `--no-color`.
    if (state.quiet > 0 && state.verbose > 0)
        || (state.flags.contains("no-color") && state.value("color").is_some())
    {
        return None;
    }
    let globals = Globals {
        quiet: state.quiet,
        verbose: state.verbose,
        no_cache: state.flags.contains("no-cache"),
        cache_dir: state.value("cache-dir"),
        config_file: state.value("config-file"),
        no_config: state.flags.contains("no-config"),
        isolated: state.flags.contains("isolated"),
        directory: state.value("directory"),
        project: state.value("project"),
    };
    let force = state.flags.contains("force");
    match stage {
        Stage::Prune => Some(Parsed::Prune { globals, ci: state.flags.contains("ci"), force }),
        Stage::Clean => Some(Parsed::Clean { globals, force, packages }),
        // `uv`, `uv cache`: uv prints help (and exits 2).
        Stage::Top | Stage::Cache => None,
    }
}

/// The option matching `pred`, among the local options of the current command and uv's
/// global ones.
fn find(local: &'static [Opt], pred: impl Fn(&Opt) -> bool) -> Option<&'static Opt> {
    local.iter().chain(GLOBAL.iter()).find(|o| pred(o))
}

/// Record one option; `None` when uv would reject it (or only print something).
fn apply(state: &mut State, level: usize, option: &'static Opt, value: Option<OsString>) -> Option<()> {
    match option.kind {
        Kind::Hand => return None,
        Kind::Count => {
            let counter = if option.long == "quiet" { &mut state.quiet } else { &mut state.verbose };
            *counter = counter.saturating_add(1);
            return Some(());
        }
        Kind::Multi => {}
        Kind::Flag | Kind::Value(_) => {
            if !state.seen.insert((level, option.long)) {
                return None;
            }
        }
    }
    match (option.kind, value) {
        (Kind::Flag, _) => {
            state.flags.insert(option.long);
        }
        (Kind::Value(allowed), Some(value)) => {
            if value.is_empty() {
                return None;
            }
            if !allowed.is_empty() && !allowed.iter().any(|a| a.as_bytes() == value.as_bytes()) {
                return None;
            }
            state.values.push((option.long, value));
        }
        (Kind::Multi, Some(_)) => {}
        _ => return None,
    }
    Some(())
}

/// A package name uv accepts, normalized; `None` (uv rejects it) otherwise.
fn package_name(arg: &[u8]) -> Option<String> {
    crate::clean::normalize_package_name(std::str::from_utf8(arg).ok()?)
}

/// uv's reading of a boolean environment variable (clap's `BoolishValueParser`); `Err` for a
/// value uv rejects.
fn env_bool(value: Option<OsString>) -> Result<bool, ()> {
    let Some(value) = value.filter(|v| !v.is_empty()) else { return Ok(false) };
    match value.to_string_lossy().to_ascii_lowercase().as_str() {
        "y" | "yes" | "t" | "true" | "on" | "1" => Ok(true),
        "n" | "no" | "f" | "false" | "off" | "0" => Ok(false),
        _ => Err(()),
    }
}

/// Entry point when invoked as `uv` or `uvx`: the exit code.
pub fn main(invoked: Invoked) -> u8 {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let parsed = match invoked {
        // `uvx` is `uv tool run`: nothing to do with pruning.
        Invoked::Uvx => Parsed::PassThrough,
        Invoked::Uv => parse(&args),
    };
    // Environment variables uv rejects make uv fail before doing anything: let it say so.
    let no_cache_env = env_bool(std::env::var_os("UV_NO_CACHE"));
    match (parsed, no_cache_env) {
        (Parsed::PassThrough, _) | (_, Err(())) => pass_through(invoked, &args),
        (Parsed::Prune { globals, ci, force }, Ok(env_no_cache)) => {
            let op = crate::Operation::Prune;
            let title = format!("safe-prune: uv cache prune{}", if ci { " --ci" } else { "" });
            run(globals, env_no_cache, &op, ci, force, &title)
        }
        (Parsed::Clean { globals, force, packages }, Ok(env_no_cache)) => {
            let title = if packages.is_empty() {
                "safe-prune: uv cache clean".to_string()
            } else {
                format!("safe-prune: uv cache clean {}", packages.join(" "))
            };
            let op = crate::Operation::Clean(packages);
            run(globals, env_no_cache, &op, false, force, &title)
        }
    }
}

/// The grace period of safe-prune's default (`--grace 1h`), used beside running uv processes.
const GRACE: Duration = Duration::from_secs(3600);

/// Run a prune or clean the way uv would run it with these global options.
fn run(g: Globals, env_no_cache: bool, op: &crate::Operation, ci: bool, force: bool, title: &str) -> u8 {
    let quiet = g.quiet > 0;
    // uv applies `--directory` (or `UV_WORKING_DIR`) first: relative paths, configuration
    // discovery and the displayed cache path all follow it.
    let directory =
        g.directory.clone().or_else(|| std::env::var_os("UV_WORKING_DIR").filter(|v| !v.is_empty()));
    if let Some(dir) = directory {
        if let Err(e) = std::env::set_current_dir(&dir) {
            eprintln!("error: {e}");
            return crate::exit::FATAL;
        }
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    if g.isolated && !quiet {
        eprintln!("warning: The `--isolated` flag is deprecated. Instead, use `--no-config` to prevent uv from discovering configuration files.");
    }
    if g.no_cache || env_no_cache {
        return no_cache(op, &cwd, quiet);
    }
    let env = locate::Env::from_process();
    let config_file = g.config_file.clone().map(PathBuf::from).or_else(|| env.uv_config_file.clone());
    if let Some(file) = &config_file {
        // uv reads an explicit configuration file even when the cache directory is given.
        if let Err(e) = std::fs::File::open(file) {
            eprintln!("error: failed to open file `{}`: {e}", report::user_display(file, &cwd));
            return crate::exit::FATAL;
        }
    }
    let mut inputs = locate::Inputs {
        cache_dir: g.cache_dir.clone().map(PathBuf::from),
        config_file,
        no_config: g.no_config || g.isolated,
        cwd: cwd.clone(),
        env,
    };
    let project = g.project.clone().or_else(|| std::env::var_os("UV_PROJECT").filter(|v| !v.is_empty()));
    if let Some(project) = project {
        match project_dir(Path::new(&project), &cwd) {
            Ok(dir) => {
                // uv discovers configuration from the project; a relative `cache-dir` found
                // there is still relative to the working directory.
                let mut from_project = inputs.clone();
                from_project.cwd = dir;
                match locate::locate(&from_project) {
                    Ok(located) => inputs.cache_dir = Some(located.path),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return crate::exit::FATAL;
                    }
                }
            }
            Err(message) => {
                eprintln!("error: {message}");
                return crate::exit::FATAL;
            }
        }
    }
    let settings = prune::Settings {
        locate: inputs,
        ci,
        dry_run: false,
        strict: false,
        force,
        wait: None,
        grace: GRACE,
        json: false,
        quiet,
        verbose: g.verbose,
        proc_root: PathBuf::from("/proc"),
        retention: Default::default(),
        // `SAFE_PRUNE_REGISTRY`: other hosts' entries are kept through the shim too.
        registry: crate::registry::Config::from_env(),
        schedule: Default::default(),
    };
    match crate::execute(op, &settings, title) {
        // uv has no "partial" status: a failed removal is an error (2).
        crate::exit::PARTIAL => crate::exit::FATAL,
        code => code,
    }
}

/// uv's `--project` handling: absolute, `pyproject.toml` means its directory, must exist.
fn project_dir(project: &Path, cwd: &Path) -> Result<PathBuf, String> {
    let path = if project.is_absolute() { project.to_path_buf() } else { cwd.join(project) };
    let path = if path.file_name().is_some_and(|n| n == "pyproject.toml") && path.is_file() {
        path.parent().map(Path::to_path_buf).unwrap_or(path)
    } else {
        path
    };
    if !path.exists() {
        return Err(format!("Project directory `{}` does not exist", report::user_display(project, cwd)));
    }
    if !path.is_dir() {
        return Err(format!("Project path `{}` is not a directory", report::user_display(project, cwd)));
    }
    Ok(path)
}

/// `--no-cache`: uv works in a fresh temporary cache, which it finds empty. Nothing is created;
/// uv's messages are printed with a name of the shape uv uses.
fn no_cache(op: &crate::Operation, cwd: &Path, quiet: bool) -> u8 {
    if quiet {
        return crate::exit::OK;
    }
    let tmp = std::env::var_os("TMPDIR")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    let shown = report::user_display(&tmp.join(temp_name()), cwd);
    match op {
        crate::Operation::Prune => {
            eprintln!("Pruning cache at: {shown}");
            eprintln!("No unused entries found");
        }
        crate::Operation::Clean(packages) => {
            if packages.is_empty() {
                eprintln!("Clearing cache at: {shown}");
            }
            eprintln!("No cache entries found");
        }
    }
    crate::exit::OK
}

/// `.tmp` and six alphanumerics, like the `tempfile` crate's names.
fn temp_name() -> String {
    use std::hash::{BuildHasher, Hasher};
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let mut bits = hasher.finish();
    let mut name = String::from(".tmp");
    for _ in 0..6 {
        name.push(ALPHABET[(bits % ALPHABET.len() as u64) as usize] as char);
        bits /= ALPHABET.len() as u64;
    }
    name
}

/// The safe-prune binaries that already handed the current command on, as `<st_dev>:<st_ino>`
/// of each file, space-separated, one word per hand-off. Set on the program the wrapper execs
/// (the real uv, or what looked like it); a safe-prune running as `uv` or `uvx` never hands on
/// to a file named here. Identities rather than paths: nothing to escape, and every link to the
/// file matches.
pub const VISITED_VAR: &str = "SAFE_PRUNE_WRAPPER_VISITED";

/// Hand-offs after which a safe-prune refuses to hand on again. Each level of real nesting
/// (`uv run` running a script that runs `uv`) adds one, so only a loop gets this far.
pub const MAX_HANDOFFS: usize = 32;

/// A file's identity, following links.
type FileId = (u64, u64);

fn file_id(path: &Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The identities in a [`VISITED_VAR`] value; malformed words are ignored.
fn parse_visited(value: &OsStr) -> Vec<FileId> {
    value
        .to_string_lossy()
        .split_whitespace()
        .filter_map(|word| {
            let (dev, ino) = word.split_once(':')?;
            Some((dev.parse().ok()?, ino.parse().ok()?))
        })
        .collect()
}

fn format_visited(ids: &[FileId]) -> String {
    ids.iter().map(|(dev, ino)| format!("{dev}:{ino}")).collect::<Vec<_>>().join(" ")
}

/// Replace this process with the real uv (or uvx), same arguments; returns only on failure.
fn pass_through(invoked: Invoked, args: &[OsString]) -> u8 {
    let name = match invoked {
        Invoked::Uv => "uv",
        Invoked::Uvx => "uvx",
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("safe-prune: cannot find my own executable: {e}");
            return crate::exit::FATAL;
        }
    };
    let mut visited = std::env::var_os(VISITED_VAR).map(|v| parse_visited(&v)).unwrap_or_default();
    if visited.len() >= MAX_HANDOFFS {
        eprintln!(
            "safe-prune: `{name}` was handed on {} times without reaching the real {name} ({VISITED_VAR}); a loop of programs named `{name}` on PATH? Set SAFE_PRUNE_REAL_UV to the real uv",
            visited.len()
        );
        return crate::exit::FATAL;
    }
    let handed_on_before = !visited.is_empty();
    // Unidentifiable (cannot happen for a running binary): a placeholder still counts the hop.
    visited.push(file_id(&exe).unwrap_or((0, 0)));
    let real = match find_real(name, &exe, &visited, handed_on_before) {
        Ok(real) => real,
        Err(message) => {
            eprintln!("safe-prune: {message}");
            return crate::exit::FATAL;
        }
    };
    let err = std::process::Command::new(&real)
        .arg0(&real)
        .args(args)
        .env(VISITED_VAR, format_visited(&visited))
        .exec();
    eprintln!("safe-prune: cannot run the real {name} at {}: {err}", real.display());
    crate::exit::FATAL
}

/// The real `uv`/`uvx`: `SAFE_PRUNE_REAL_UV` (or the `uvx` beside it), else the first one on
/// `PATH` that is neither safe-prune itself nor a binary in `visited`.
fn find_real(name: &str, exe: &Path, visited: &[FileId], handed_on_before: bool) -> Result<PathBuf, String> {
    if let Some(real) = std::env::var_os("SAFE_PRUNE_REAL_UV").filter(|v| !v.is_empty()) {
        let real = PathBuf::from(real);
        let real = if name == "uvx" { real.with_file_name("uvx") } else { real };
        if is_same_program(&real, exe) || file_id(&real).is_some_and(|id| visited.contains(&id)) {
            return Err(format!(
                "SAFE_PRUNE_REAL_UV={} is safe-prune itself; point it at the real uv",
                real.display()
            ));
        }
        if real.is_file() {
            return Ok(real);
        }
        if name == "uv" {
            return Err(format!(
                "SAFE_PRUNE_REAL_UV={} does not exist; point it at the real uv",
                real.display()
            ));
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    find_on_path(name, &path, exe, visited).ok_or_else(|| {
        let others = if handed_on_before {
            format!(
                " (the other `{name}` programs on PATH are safe-prune builds that already handed this command on, see {VISITED_VAR})"
            )
        } else {
            String::new()
        };
        format!(
            "running as `{name}`, but no real {name} is on PATH after this shim ({}){others}; install uv, or set SAFE_PRUNE_REAL_UV to the real uv, or remove the shim with `safe-prune shim uninstall`",
            exe.display()
        )
    })
}

/// The first executable `name` in the `PATH` list that is neither `exe` (or a copy of it) nor
/// one of the `skip` files.
pub fn find_on_path(name: &str, path: &OsStr, exe: &Path, skip: &[FileId]) -> Option<PathBuf> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::env::split_paths(path).filter(|dir| !dir.as_os_str().is_empty()).map(|dir| dir.join(name)).find(
        |candidate| {
            candidate.metadata().is_ok_and(|m| {
                m.is_file() && m.permissions().mode() & 0o111 != 0 && !skip.contains(&(m.dev(), m.ino()))
            }) && !is_same_program(candidate, exe)
        },
    )
}

/// True when `candidate` is this very program: the same file through links, or a copy of it
/// (a copy named `uv` would otherwise exec itself forever).
pub fn is_same_program(candidate: &Path, exe: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(a), Ok(b)) = (std::fs::canonicalize(candidate), std::fs::canonicalize(exe)) else {
        return false;
    };
    if a == b {
        return true;
    }
    let (Ok(ma), Ok(mb)) = (std::fs::metadata(&a), std::fs::metadata(&b)) else { return false };
    if (ma.dev(), ma.ino()) == (mb.dev(), mb.ino()) {
        return true;
    }
    ma.len() == mb.len() && matches!((std::fs::read(&a), std::fs::read(&b)), (Ok(x), Ok(y)) if x == y)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &str) -> Parsed {
        let args: Vec<OsString> = args.split_whitespace().map(OsString::from).collect();
        parse(&args)
    }

    fn globals(f: impl FnOnce(&mut Globals)) -> Globals {
        let mut g = Globals::default();
        f(&mut g);
        g
    }

    fn prune(g: Globals, ci: bool, force: bool) -> Parsed {
        Parsed::Prune { globals: g, ci, force }
    }

    #[test]
    fn invoked_names() {
        assert_eq!(invoked_as(Some(OsStr::new("/usr/bin/uv"))), Some(Invoked::Uv));
        assert_eq!(invoked_as(Some(OsStr::new("uvx"))), Some(Invoked::Uvx));
        assert_eq!(invoked_as(Some(OsStr::new("safe-prune"))), None);
        assert_eq!(invoked_as(Some(OsStr::new("uv2"))), None);
        assert_eq!(invoked_as(None), None);
    }

    #[test]
    fn prune_and_clean_with_their_own_flags() {
        assert_eq!(p("cache prune"), prune(Globals::default(), false, false));
        assert_eq!(p("cache prune --ci --force"), prune(Globals::default(), true, true));
        assert_eq!(
            p("cache clean --force Foo_Bar x"),
            Parsed::Clean {
                globals: Globals::default(),
                force: true,
                packages: vec!["foo-bar".into(), "x".into()]
            }
        );
        for alias in ["cache clear", "clean"] {
            assert_eq!(
                p(alias),
                Parsed::Clean { globals: Globals::default(), force: false, packages: vec![] }
            );
        }
        assert_eq!(
            p("cache clean -- pkg"),
            Parsed::Clean { globals: Globals::default(), force: false, packages: vec!["pkg".into()] }
        );
    }

    #[test]
    fn values_in_both_forms_and_options_anywhere() {
        let want = globals(|g| {
            g.cache_dir = Some("X".into());
            g.verbose = 1;
        });
        assert_eq!(p("cache --cache-dir X prune -v"), prune(want.clone(), false, false));
        assert_eq!(p("--cache-dir=X cache prune -v"), prune(want.clone(), false, false));
        assert_eq!(p("-v cache prune --cache-dir X"), prune(want, false, false));
        assert_eq!(p("-q cache prune"), prune(globals(|g| g.quiet = 1), false, false));
        assert_eq!(p("cache prune -vv"), prune(globals(|g| g.verbose = 2), false, false));
        assert_eq!(p("-qn cache clean -q"), {
            Parsed::Clean {
                globals: globals(|g| {
                    g.quiet = 2;
                    g.no_cache = true
                }),
                force: false,
                packages: vec![],
            }
        });
        let all = globals(|g| {
            g.directory = Some("/d".into());
            g.project = Some("p".into());
            g.config_file = Some("c.toml".into());
            g.no_config = true;
        });
        assert_eq!(
            p("--directory /d cache --project=p prune --config-file c.toml --no-config --offline --no-progress --color never --allow-insecure-host h --allow-insecure-host=i --preview-features a,b --python-preference system --managed-python --no-managed-python --native-tls --system-certs --no-python-downloads --preview --no-preview --trusted-host t"),
            prune(all, false, false)
        );
        // A later level overrides an earlier one, as with uv's global options.
        assert_eq!(
            p("--cache-dir A cache prune --cache-dir B"),
            prune(globals(|g| g.cache_dir = Some("B".into())), false, false)
        );
        // `--cache-dir=-x` is a value; `-` alone too.
        assert_eq!(
            p("cache prune --cache-dir=-x"),
            prune(globals(|g| g.cache_dir = Some("-x".into())), false, false)
        );
        assert_eq!(
            p("cache prune --cache-dir -"),
            prune(globals(|g| g.cache_dir = Some("-".into())), false, false)
        );
    }

    #[test]
    fn non_utf8_values_survive() {
        let args = vec![
            OsString::from("cache"),
            OsString::from("prune"),
            OsString::from("--cache-dir"),
            OsStr::from_bytes(b"/tmp/\xff").to_os_string(),
        ];
        assert_eq!(
            parse(&args),
            prune(globals(|g| g.cache_dir = Some(OsStr::from_bytes(b"/tmp/\xff").into())), false, false)
        );
    }

    #[test]
    fn everything_else_passes_through() {
        for line in [
            "",
            "--version",
            "-V",
            "cache",
            "cache dir",
            "cache size",
            "pip install x --offline",
            "tool run foo",
            "help cache prune",
            "cache prune --help",
            "cache prune -h",
            "-h cache prune",
            "cache prune --show-settings",
            // Rejected by uv: unknown, misplaced, repeated, valueless, invalid.
            "cache prune --bogus",
            "cache prune -x",
            "cache prune --ci=true",
            "cache prune --offline=true",
            "--ci cache prune",
            "cache clean --ci",
            "cache prune extra",
            "cache prune --ci --ci",
            "cache prune --force --force",
            "cache prune --offline --offline",
            "cache prune --cache-dir A --cache-dir B",
            "cache prune --cache-dir",
            "cache prune --cache-dir --offline",
            "cache prune --cache-dir=",
            "cache prune -q -v",
            "-vq cache prune",
            "cache prune --color bad",
            "cache prune --color always --no-color",
            "cache prune --python-preference nope",
            "cache clean Bad!",
            "cache clean -- --foo",
            "cache prune -- x",
            "cache -- prune",
            "cache clean -nf",
            "cach prune",
            "cache pru",
        ] {
            assert_eq!(p(line), Parsed::PassThrough, "{line:?}");
        }
    }

    #[test]
    fn env_booleans_like_clap() {
        assert_eq!(env_bool(None), Ok(false));
        assert_eq!(env_bool(Some("".into())), Ok(false));
        assert_eq!(env_bool(Some("YES".into())), Ok(true));
        assert_eq!(env_bool(Some("0".into())), Ok(false));
        assert_eq!(env_bool(Some("maybe".into())), Err(()));
    }

    #[test]
    fn temp_names_look_like_uvs() {
        let name = temp_name();
        assert!(name.starts_with(".tmp") && name.len() == 10, "{name}");
    }

    #[test]
    fn finds_the_next_uv_that_is_not_us() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        let (shim, copy, real) = (root.join("shim"), root.join("copy"), root.join("real"));
        for d in [&shim, &copy, &real] {
            std::fs::create_dir(d).unwrap();
        }
        let exe = root.join("safe-prune");
        std::fs::write(&exe, "me").unwrap();
        std::fs::write(copy.join("uv"), "me").unwrap();
        std::fs::write(real.join("uv"), "real").unwrap();
        for f in [&exe, &copy.join("uv"), &real.join("uv")] {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::os::unix::fs::symlink(&exe, shim.join("uv")).unwrap();
        let path = std::env::join_paths([&shim, &copy, &real]).unwrap();
        assert_eq!(find_on_path("uv", &path, &exe, &[]), Some(real.join("uv")));
        let path = std::env::join_paths([&shim, &copy]).unwrap();
        assert_eq!(find_on_path("uv", &path, &exe, &[]), None);

        // Another build (different bytes) is not recognised as us, only through the marker.
        let other = root.join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("uv"), "another build").unwrap();
        std::fs::set_permissions(other.join("uv"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::join_paths([&shim, &other, &real]).unwrap();
        assert_eq!(find_on_path("uv", &path, &exe, &[]), Some(other.join("uv")));
        let skip = [file_id(&other.join("uv")).unwrap()];
        assert_eq!(find_on_path("uv", &path, &exe, &skip), Some(real.join("uv")));
    }

    #[test]
    fn visited_marker_round_trips_and_ignores_junk() {
        let ids = vec![(2049, 131_073), (0, u64::MAX)];
        let text = format_visited(&ids);
        assert_eq!(text, format!("2049:131073 0:{}", u64::MAX));
        assert_eq!(parse_visited(OsStr::new(&text)), ids);
        assert_eq!(parse_visited(OsStr::new(" x 1:2 3: :4 5:6:7 -1:2 8:9 ")), vec![(1, 2), (8, 9)]);
        assert_eq!(parse_visited(OsStr::new("")), vec![]);
    }
}
