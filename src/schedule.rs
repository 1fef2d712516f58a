//! Prune on a schedule: `safe-prune schedule install|status|uninstall`, and the hooks of a
//! scheduled run (`--scheduled`: the run log; `--if-grown N`: skip a cache that has not grown).
//!
//! `install` writes a systemd service and timer (Linux), a LaunchAgent (macOS), or prints a
//! crontab line. Each runs `<this binary> prune --scheduled --cache-dir <cache> OPTIONS`: the
//! binary's canonical path and the cache as resolved at install time are pinned (a service
//! sees neither the user's shell environment nor `UV_CACHE_DIR`), and so is `XDG_STATE_HOME`,
//! where the runs are logged. Every file `install` writes carries [`MARKER`]; `status` and
//! `uninstall` act only on files that have it. Nothing is ever written inside the cache.

mod agent;
mod cron;
mod launchd;
mod state;
mod systemd;

use std::ffi::OsString;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser as _;
use serde_json::{json, Value};

use crate::cli::{
    CacheArgs, Cli, Command as CliCommand, PruneArgs, ScheduleAction, ScheduleBackend, ScheduleInstallArgs,
    ScheduleWhereArgs,
};
use crate::exit;

pub use state::{log_run, record_grown, skip_unless_grown, RunOptions, Skip};

/// The line that marks a file as written by `install` (a comment in units and plists).
pub const MARKER: &str = "Written by safe-prune schedule install; safe-prune schedule uninstall removes it.";

/// Prune options of a schedule installed without any.
const DEFAULT_OPTIONS: &[&str] = &["--keep-tools"];
/// The shortest interval accepted.
const MIN_EVERY: Duration = Duration::from_secs(60);
/// How long `systemctl`/`launchctl` may take before we give up on them.
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);
/// Runs `status` lists.
const STATUS_RUNS: usize = 10;

/// What a schedule runs, and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// This binary: absolute and canonical.
    pub program: String,
    /// `prune --scheduled --cache-dir <cache> OPTIONS...`.
    pub args: Vec<String>,
    /// `XDG_STATE_HOME` of the runs (the run log is `<it>/safe-prune/runs.jsonl`).
    pub state_home: String,
    pub every: Duration,
}

impl Job {
    /// The program and its arguments.
    pub fn argv(&self) -> Vec<&str> {
        std::iter::once(self.program.as_str()).chain(self.args.iter().map(String::as_str)).collect()
    }
}

/// `90s`, `15m`, `6h`, `1d`, `1w`: the largest unit that divides the duration.
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    for (unit, size) in [("w", 7 * 86_400), ("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs >= size && secs % size == 0 {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

/// Write `bytes` to `path` through a temporary file in the same folder and a rename, so a
/// reader sees the old or the new file, never half of one.
pub fn write_replacing(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The environment variables `schedule` reads.
#[derive(Debug, Clone, Default)]
struct Env {
    home: Option<PathBuf>,
    xdg_config_home: Option<PathBuf>,
    xdg_state_home: Option<PathBuf>,
}

impl Env {
    fn from_process() -> Self {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        Env {
            home: var("HOME"),
            xdg_config_home: var("XDG_CONFIG_HOME"),
            xdg_state_home: var("XDG_STATE_HOME"),
        }
    }

    /// The state home of the runs: `/var/lib` for system units, else the XDG one.
    fn state_home(&self, system: bool) -> Option<PathBuf> {
        if system {
            return Some(PathBuf::from("/var/lib"));
        }
        state::state_home(self.xdg_state_home.as_deref(), self.home.as_deref())
    }
}

/// `safe-prune schedule ...`. `global`: the cache options given before or after `schedule`.
pub fn run(action: &ScheduleAction, global: &CacheArgs) -> u8 {
    let json = global.format == crate::cli::Format::Json;
    let result = match action {
        ScheduleAction::Install(args) if args.agent => agent::install(args, global, &Env::from_process()),
        ScheduleAction::Status(args) if args.agent => agent::status_main(args, json),
        ScheduleAction::Uninstall(args) if args.agent => agent::uninstall(args, &Env::from_process()),
        ScheduleAction::Install(args) => install(args, global),
        ScheduleAction::Status(args) => status(args, json),
        ScheduleAction::Uninstall(args) => uninstall(args),
    };
    result.unwrap_or_else(crate::fatal)
}

/// A `--if-grown` skip, as the run's output (uv-style line on stderr, or JSON on stdout).
pub fn print_skipped(skip: &Skip, json: bool, quiet: bool) -> u8 {
    if json {
        println!("{}", Value::Object(skip.fields()));
    } else if !quiet {
        eprintln!("{}", skip.message());
    }
    exit::OK
}

fn backend(explicit: Option<ScheduleBackend>, cron: bool) -> ScheduleBackend {
    if cron {
        return ScheduleBackend::Cron;
    }
    if let Some(b) = explicit {
        return b;
    }
    if cfg!(target_os = "macos") {
        return ScheduleBackend::Launchd;
    }
    let on_path = |name: &str| {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).any(|d| d.join(name).is_file())
    };
    if cfg!(target_os = "linux") && (Path::new("/run/systemd/system").is_dir() || on_path("systemctl")) {
        return ScheduleBackend::Systemd;
    }
    ScheduleBackend::Cron
}

// ---------------------------------------------------------------------------------------
// install

fn install(args: &ScheduleInstallArgs, global: &CacheArgs) -> Result<u8, String> {
    let backend = backend(args.backend, args.cron);
    if args.system && backend != ScheduleBackend::Systemd {
        return Err("--system installs systemd system units; it is not available with cron or launchd".into());
    }
    let env = Env::from_process();
    let job = build_job(args, global, &env)?;
    match backend {
        ScheduleBackend::Systemd => install_systemd(&job, args, &env),
        ScheduleBackend::Launchd => install_launchd(&job, args, &env),
        ScheduleBackend::Cron => print_cron(&job, args.cron || args.backend.is_some()),
    }
}

/// Everything a schedule pins, checked now rather than at 3 am.
fn build_job(args: &ScheduleInstallArgs, global: &CacheArgs, env: &Env) -> Result<Job, String> {
    if args.every < MIN_EVERY {
        return Err(format!("--every {}: the shortest interval is 1m", human_duration(args.every)));
    }
    let exe = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .map_err(|e| format!("cannot find this program's own path: {e}"))?;
    let program = utf8(exe.as_os_str(), "the path of this program")?;
    let raw: Vec<OsString> = if args.prune_options.is_empty() {
        DEFAULT_OPTIONS.iter().map(OsString::from).collect()
    } else {
        args.prune_options.clone()
    };
    let parsed = parse_prune(&raw)?;
    let cache = pinned_cache(global, &parsed, &raw)?;
    if let Some(holder) = exe.ancestors().skip(1).find(|d| is_uv_cache(d)) {
        return Err(format!(
            "this safe-prune runs from inside the uv cache {} ({}), probably through `uvx`: the next prune could remove it, and the schedule would break. Install it first (`uv tool install safe-prune`), then run `safe-prune schedule install` with the installed one",
            holder.display(),
            exe.display()
        ));
    }
    let state_home =
        env.state_home(args.system).ok_or("HOME is not set: cannot tell where to keep the run log")?;
    if absolute_best_effort(&state_home.join("safe-prune")).starts_with(&cache) {
        return Err(format!(
            "the state folder {} is inside the cache {}: a prune would remove it. Set XDG_STATE_HOME elsewhere",
            state_home.join("safe-prune").display(),
            cache.display()
        ));
    }
    let mut job_args: Vec<String> = vec![
        "prune".into(),
        "--scheduled".into(),
        "--cache-dir".into(),
        utf8(cache.as_os_str(), "the cache path")?,
    ];
    for option in strip_cache_options(&raw) {
        job_args.push(utf8(&option, "PRUNE-OPTIONS")?);
    }
    // The exact command the schedule will run must parse, too.
    parse_prune(&job_args[1..].iter().map(OsString::from).collect::<Vec<_>>())?;
    if parsed.removal.dry_run {
        eprintln!("warning: PRUNE-OPTIONS has --dry-run: the scheduled runs will remove nothing");
    }
    Ok(Job {
        program,
        args: job_args,
        state_home: utf8(state_home.as_os_str(), "XDG_STATE_HOME")?,
        every: args.every,
    })
}

fn utf8(text: &std::ffi::OsStr, what: &str) -> Result<String, String> {
    text.to_str().map(str::to_string).ok_or_else(|| {
        format!(
            "{what} ({}) is not UTF-8, which a unit file, plist or crontab cannot hold",
            Path::new(text).display()
        )
    })
}

/// Parse prune options with the real parser: a typo fails at install time.
fn parse_prune(options: &[OsString]) -> Result<PruneArgs, String> {
    let argv =
        [OsString::from("safe-prune"), OsString::from("prune")].into_iter().chain(options.iter().cloned());
    match Cli::try_parse_from(argv) {
        Ok(Cli { command: Some(CliCommand::Prune(args)), .. }) => Ok(args),
        Ok(_) => Err("PRUNE-OPTIONS must be options of `safe-prune prune`".into()),
        Err(e) if e.use_stderr() => {
            let text = e.render().to_string();
            Err(format!("PRUNE-OPTIONS: {}", text.trim_start_matches("error: ").trim_end()))
        }
        Err(_) => Err("PRUNE-OPTIONS cannot contain --help or --version".into()),
    }
}

/// Options that only choose the cache: resolved once at install time, then replaced by the
/// pinned `--cache-dir` (and `--scheduled`, which install adds itself).
const CACHE_OPTIONS: [&str; 2] = ["--cache-dir", "--config-file"];
const CACHE_FLAGS: [&str; 2] = ["--no-config", "--scheduled"];

fn mentions_cache_options(options: &[OsString]) -> bool {
    options.iter().filter_map(|o| o.to_str()).any(|o| {
        CACHE_OPTIONS.iter().any(|c| o == *c || o.starts_with(&format!("{c}="))) || o == "--no-config"
    })
}

fn strip_cache_options(options: &[OsString]) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut iter = options.iter();
    while let Some(option) = iter.next() {
        let text = option.to_str().unwrap_or_default();
        if CACHE_OPTIONS.contains(&text) {
            iter.next();
        } else if !(CACHE_FLAGS.contains(&text)
            || CACHE_OPTIONS.iter().any(|c| text.starts_with(&format!("{c}="))))
        {
            out.push(option.clone());
        }
    }
    out
}

/// The cache a schedule pins: found now exactly as `safe-prune prune PRUNE-OPTIONS` would
/// find it in this shell. Cache options may be given before `--` (`schedule install
/// --cache-dir DIR`) or in PRUNE-OPTIONS; given in both places, they must name the same cache.
fn pinned_cache(global: &CacheArgs, parsed: &PruneArgs, raw: &[OsString]) -> Result<PathBuf, String> {
    if !mentions_cache_options(raw) {
        return resolve_cache(global);
    }
    let chosen = resolve_cache(&parsed.cache)?;
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let install_explicit = global.no_config
        || (global.cache_dir.is_some() && global.cache_dir != var("UV_CACHE_DIR"))
        || (global.config_file.is_some() && global.config_file != var("UV_CONFIG_FILE"));
    if install_explicit {
        let other = resolve_cache(global)?;
        if other != chosen {
            return Err(format!(
                "two caches given: {} (before `--`) and {} (in PRUNE-OPTIONS); give --cache-dir once",
                other.display(),
                chosen.display()
            ));
        }
    }
    Ok(chosen)
}

/// Locate and validate a cache like a prune does; canonical. A cache that does not exist yet
/// is pinned as an absolute path (with a warning): the scheduled runs will say "No cache found"
/// until uv creates it.
fn resolve_cache(args: &CacheArgs) -> Result<PathBuf, String> {
    let inputs = crate::locate_inputs(args);
    match crate::prune::open_cache(&inputs) {
        Ok(Ok(cache)) => Ok(cache.canonical),
        Ok(Err(_)) => {
            let located = crate::locate::locate(&inputs).map_err(|e| e.to_string())?;
            let path = absolute_best_effort(&inputs.cwd.join(located.path));
            eprintln!("warning: no cache at {} yet; pinning it anyway", path.display());
            Ok(path)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// `path` with its longest existing ancestor canonicalized (the rest kept as written).
fn absolute_best_effort(path: &Path) -> PathBuf {
    let mut existing = path;
    let mut rest = Vec::new();
    loop {
        if let Ok(mut found) = existing.canonicalize() {
            found.extend(rest.iter().rev());
            return found;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name);
                existing = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

fn is_uv_cache(dir: &Path) -> bool {
    dir.join("CACHEDIR.TAG").is_file() && crate::layout::check_is_cache(dir).is_ok()
}

/// One of the files `install` writes, as found on disk.
enum Found {
    Absent,
    Ours,
    /// Present without the marker (or unreadable): never touched.
    Foreign,
}

fn find(path: &Path, is_ours: fn(&str) -> bool) -> Found {
    match std::fs::read(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && path.symlink_metadata().is_err() => {
            Found::Absent
        }
        Ok(bytes) if is_ours(&String::from_utf8_lossy(&bytes)) => Found::Ours,
        _ => Found::Foreign,
    }
}

/// Write `files` (all or none checked first: a same-named file without the marker stops the
/// install). Returns whether one of them was there already (a re-install).
fn write_files(files: &[(PathBuf, String)], is_ours: fn(&str) -> bool) -> Result<bool, String> {
    let mut replaced = false;
    for (path, _) in files {
        match find(path, is_ours) {
            Found::Absent => {}
            Found::Ours => replaced = true,
            Found::Foreign => {
                return Err(format!(
                    "{} exists and was not written by `safe-prune schedule install` (it has no marker line); not replacing it. Move it away first",
                    path.display()
                ))
            }
        }
    }
    for (path, text) in files {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        write_replacing(path, text.as_bytes(), 0o644)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        eprintln!("Wrote {}", path.display());
    }
    Ok(replaced)
}

fn describe_when(every: Duration) -> String {
    let timing = match systemd::when(every) {
        systemd::When::Calendar(spec) => format!("OnCalendar={spec}, Persistent=true"),
        systemd::When::Monotonic { boot, every } => format!("OnBootSec={boot}, OnUnitActiveSec={every}"),
    };
    format!("{timing}, RandomizedDelaySec={}", systemd::randomized_delay(every))
}

fn shell_line(argv: &[&str]) -> String {
    argv.iter().map(|w| cron::sh_quote(w)).collect::<Vec<_>>().join(" ")
}

fn systemctl_words(system: bool, rest: &[&str]) -> Vec<String> {
    let mut words = vec!["systemctl".to_string()];
    if !system {
        words.push("--user".into());
    }
    words.extend(rest.iter().map(|w| w.to_string()));
    words
}

fn install_systemd(job: &Job, args: &ScheduleInstallArgs, env: &Env) -> Result<u8, String> {
    let dir = systemd::unit_dir(args.system, env.xdg_config_home.as_deref(), env.home.as_deref())
        .ok_or("HOME is not set: cannot tell where user units go")?;
    let service = dir.join(systemd::SERVICE);
    let timer = dir.join(systemd::TIMER);
    let replaced =
        write_files(&[(service, systemd::service(job)), (timer, systemd::timer(job))], systemd::is_ours)?;
    eprintln!("Every {} ({}), it runs:", human_duration(job.every), describe_when(job.every));
    eprintln!("  {}", shell_line(&job.argv()));
    eprintln!(
        "Each run is logged to {}; `safe-prune schedule status` shows the last ones",
        Path::new(&job.state_home).join("safe-prune").join(state::RUN_LOG).display()
    );
    let mut steps: Vec<Vec<&str>> = vec![vec!["daemon-reload"], vec!["enable", "--now", systemd::TIMER]];
    if replaced {
        steps.push(vec!["restart", systemd::TIMER]);
    }
    let commands: Vec<String> = steps.iter().map(|s| systemctl_words(args.system, s).join(" ")).collect();
    if args.no_enable {
        eprintln!("Not enabled (--no-enable). To enable it:\n  {}", commands.join("\n  "));
        return Ok(exit::OK);
    }
    for (step, command) in steps.iter().zip(&commands) {
        let words = systemctl_words(args.system, step);
        if let Err(why) = run_tool(&words[0], &words[1..]) {
            eprintln!(
                "warning: `{command}` failed ({why}); no systemd {} manager is reachable from here.\nThe files are written. To enable the timer, run in a session that has one:\n  {}",
                if args.system { "system" } else { "user" },
                commands.join("\n  ")
            );
            return Ok(exit::OK);
        }
    }
    eprintln!("Enabled {}", systemd::TIMER);
    if !args.system {
        if let Some(note) = linger_note() {
            eprintln!("{note}");
        }
    }
    Ok(exit::OK)
}

/// User timers run only while the user has a session, unless lingering is enabled.
fn linger_note() -> Option<String> {
    let user = std::env::var("USER").ok().filter(|u| !u.is_empty() && !u.contains('/'))?;
    let dir = Path::new("/var/lib/systemd/linger");
    if !dir.is_dir() || dir.join(&user).exists() {
        return None;
    }
    Some(format!(
        "note: a user timer runs only while {user} is logged in; to run it regardless: loginctl enable-linger {user}"
    ))
}

fn uid() -> u32 {
    rustix::process::getuid().as_raw()
}

fn install_launchd(job: &Job, args: &ScheduleInstallArgs, env: &Env) -> Result<u8, String> {
    let home = env.home.as_deref().filter(|h| h.is_absolute()).ok_or("HOME is not set")?;
    let path = launchd::plist_path(home);
    write_files(&[(path.clone(), launchd::plist(job)?)], launchd::is_ours)?;
    eprintln!("Every {} (StartInterval {}), it runs:", human_duration(job.every), job.every.as_secs());
    eprintln!("  {}", shell_line(&job.argv()));
    let domain = format!("gui/{}", uid());
    let target = format!("{domain}/{}", launchd::LABEL);
    let load = format!(
        "launchctl bootout {target} 2>/dev/null; launchctl bootstrap {domain} {}",
        cron::sh_quote(&path.to_string_lossy())
    );
    if args.no_enable {
        eprintln!("Not loaded (--no-enable). To load it:\n  {load}");
        return Ok(exit::OK);
    }
    if !cfg!(target_os = "macos") {
        eprintln!("warning: launchctl exists on macOS only; not loaded. On the Mac, run:\n  {load}");
        return Ok(exit::OK);
    }
    // A previous version of the agent may be loaded: unload it first (failure = not loaded).
    let _ = run_tool("launchctl", &["bootout".to_string(), target]);
    match run_tool("launchctl", &["bootstrap".to_string(), domain, path.to_string_lossy().into_owned()]) {
        Ok(()) => eprintln!("Loaded {}", launchd::LABEL),
        Err(why) => eprintln!(
            "warning: launchctl bootstrap failed ({why}); the plist is written. To load it:\n  {load}"
        ),
    }
    Ok(exit::OK)
}

fn print_cron(job: &Job, asked: bool) -> Result<u8, String> {
    let seed = cron::fnv1a(format!("{}\0{}\0{}", hostname(), uid(), job.args.join("\0")).as_bytes());
    let line = cron::line(job, seed)?;
    if !asked {
        eprintln!("No systemd or launchd here: use cron.");
    }
    eprintln!("Add this line to your crontab (`crontab -e`); safe-prune never edits a crontab:");
    println!("{line}");
    eprintln!(
        "cron does not make up runs missed while the machine was off (a systemd timer does). Each run is logged to {}",
        Path::new(&job.state_home).join("safe-prune").join(state::RUN_LOG).display()
    );
    Ok(exit::OK)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// Run a service-manager command (stdin closed, at most [`TOOL_TIMEOUT`]); `Err` with the
/// reason when it cannot start, times out or fails.
fn run_tool(program: &str, args: &[String]) -> Result<(), String> {
    let output = tool_output(program, args)?;
    if output.0.success() {
        return Ok(());
    }
    let stderr = output.2.trim();
    // The last line: systemctl reports what it did before what failed.
    Err(if stderr.is_empty() {
        output.0.to_string()
    } else {
        stderr.lines().last().unwrap_or_default().to_string()
    })
}

/// `(status, stdout, stderr)` of a command run with [`TOOL_TIMEOUT`].
fn tool_output(program: &str, args: &[String]) -> Result<(std::process::ExitStatus, String, String), String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!("{program} not found"),
            _ => format!("cannot run {program}: {e}"),
        })?;
    let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let out = read(child.stdout.take().map(|p| Box::new(p) as _));
    let err = read(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + TOOL_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{program} did not answer within {}s", TOOL_TIMEOUT.as_secs()));
            }
            Err(e) => return Err(format!("{program}: {e}")),
        }
    };
    Ok((status, out.join().unwrap_or_default(), err.join().unwrap_or_default()))
}

// ---------------------------------------------------------------------------------------
// status

/// `--cache-dir` and the options from a scheduled command line.
fn cache_and_options(argv: &[String]) -> (Option<String>, Vec<String>) {
    let mut cache = None;
    let mut options = Vec::new();
    let mut iter = argv.iter().skip(1).skip_while(|w| *w == "prune");
    while let Some(word) = iter.next() {
        if word == "--scheduled" {
        } else if word == "--cache-dir" {
            cache = iter.next().cloned();
        } else if let Some(dir) = word.strip_prefix("--cache-dir=") {
            cache = Some(dir.to_string());
        } else {
            options.push(word.clone());
        }
    }
    (cache, options)
}

/// What `status` reports, built as JSON and printed from it.
struct Status {
    doc: serde_json::Map<String, Value>,
    lines: Vec<String>,
    state_home: Option<PathBuf>,
}

impl Status {
    fn field(&mut self, key: &str, label: &str, value: Value, shown: String) {
        self.lines.push(format!("  {label:<9} {shown}"));
        self.doc.insert(key.into(), value);
    }

    /// The program, cache and options of a command line read back from a file.
    fn command(&mut self, argv: &[String]) {
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.field("command", "command:", json!(argv), shell_line(&refs));
        let (cache, options) = cache_and_options(argv);
        if let Some(program) = argv.first() {
            let gone = if Path::new(program).is_file() { "" } else { "  (missing: reinstall the schedule)" };
            self.field("program", "program:", json!(program), format!("{program}{gone}"));
        }
        if let Some(cache) = cache {
            let gone = if Path::new(&cache).is_dir() { "" } else { "  (does not exist)" };
            self.field("cache_dir", "cache:", json!(cache), format!("{cache}{gone}"));
        }
        self.field("options", "options:", json!(options), options.join(" "));
    }
}

fn status(args: &ScheduleWhereArgs, json: bool) -> Result<u8, String> {
    let env = Env::from_process();
    let backend = backend(args.backend, false);
    let mut st = Status { doc: serde_json::Map::new(), lines: Vec::new(), state_home: None };
    match backend {
        ScheduleBackend::Systemd => status_systemd(args.system, &env, &mut st)?,
        ScheduleBackend::Launchd => status_launchd(&env, &mut st)?,
        ScheduleBackend::Cron => {
            st.doc.insert("scheduler".into(), json!("cron"));
            st.doc.insert("installed".into(), json!(null));
            st.lines.push("No systemd or launchd here: a crontab line (`schedule install --cron`) is not tracked; the runs it logged:".into());
        }
    }
    let state_home = st.state_home.clone().or_else(|| env.state_home(args.system));
    let dir = state_home.map(|h| h.join("safe-prune"));
    let (runs, bad) = dir.as_deref().map(|d| state::read_runs(d, STATUS_RUNS)).unwrap_or_default();
    if json {
        st.doc.insert("run_log".into(), json!(dir.as_ref().map(|d| d.join(state::RUN_LOG))));
        st.doc.insert("runs".into(), Value::Array(runs));
        println!("{}", Value::Object(st.doc));
        return Ok(exit::OK);
    }
    let mut out = std::io::stdout().lock();
    for line in &st.lines {
        let _ = writeln!(out, "{line}");
    }
    match &dir {
        Some(dir) => {
            let _ = writeln!(out, "Run log: {}", dir.join(state::RUN_LOG).display());
        }
        None => {
            let _ = writeln!(out, "Run log: unknown (HOME is not set)");
        }
    }
    if runs.is_empty() {
        let _ = writeln!(out, "No runs logged yet");
    } else {
        let _ = writeln!(out, "Last runs (oldest first):");
        for run in &runs {
            let _ = writeln!(out, "  {}", state::describe_run(run));
        }
    }
    if bad > 0 {
        let _ = writeln!(out, "({bad} unreadable lines in the run log skipped)");
    }
    Ok(exit::OK)
}

/// The first word `systemctl <verb> safe-prune.timer` prints (`enabled`, `active`, ...), or
/// why it cannot say.
fn systemctl_state(system: bool, verb: &str) -> Result<String, String> {
    systemctl_state_of(system, verb, systemd::TIMER)
}

/// The same for any unit (the agent's service, too).
fn systemctl_state_of(system: bool, verb: &str, unit: &str) -> Result<String, String> {
    let words = systemctl_words(system, &[verb, unit]);
    let (_, stdout, stderr) = tool_output(&words[0], &words[1..])?;
    match stdout.split_whitespace().next() {
        Some(word) => Ok(word.to_string()),
        None => Err(stderr.lines().next().unwrap_or("no answer").trim().to_string()),
    }
}

fn status_systemd(system: bool, env: &Env, st: &mut Status) -> Result<(), String> {
    let dir = systemd::unit_dir(system, env.xdg_config_home.as_deref(), env.home.as_deref())
        .ok_or("HOME is not set: cannot tell where user units are")?;
    let kind = if system { "systemd system timer" } else { "systemd user timer" };
    st.doc.insert("scheduler".into(), json!("systemd"));
    let service_path = dir.join(systemd::SERVICE);
    let timer_path = dir.join(systemd::TIMER);
    let (service, timer) = (find(&service_path, systemd::is_ours), find(&timer_path, systemd::is_ours));
    if !matches!(service, Found::Ours) || !matches!(timer, Found::Ours) {
        st.doc.insert("installed".into(), json!(false));
        st.lines.push(format!("No schedule installed by safe-prune in {}", dir.display()));
        for (path, found) in [(&service_path, &service), (&timer_path, &timer)] {
            match found {
                Found::Foreign => st.lines.push(format!(
                    "  {} exists but was not written by `safe-prune schedule install`",
                    path.display()
                )),
                Found::Ours => {
                    st.lines.push(format!("  {} is left from an incomplete install", path.display()))
                }
                Found::Absent => {}
            }
        }
        return Ok(());
    }
    st.doc.insert("installed".into(), json!(true));
    st.lines.push(format!("Installed: {kind}"));
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let service_info = systemd::parse_service(&read(&service_path)?)
        .map_err(|e| format!("{}: {e}", service_path.display()))?;
    let timer_info = systemd::parse_timer(&read(&timer_path)?);
    st.field("timer", "timer:", json!(timer_path), timer_path.display().to_string());
    st.field("service", "service:", json!(service_path), service_path.display().to_string());
    let every = timer_info.every.clone().unwrap_or_else(|| "?".into());
    st.field(
        "every",
        "every:",
        json!({"every": timer_info.every, "timer": timer_info.timing}),
        format!("{every} ({})", timer_info.timing.join(", ")),
    );
    st.command(&service_info.argv);
    st.state_home = service_info.state_home.map(PathBuf::from);
    let state = |verb| systemctl_state(system, verb);
    let (enabled, active) = match (state("is-enabled"), state("is-active")) {
        (Ok(e), Ok(a)) => (json!(e), format!("{e}, {a}")),
        (Err(why), _) | (_, Err(why)) => {
            (json!("unknown"), format!("unknown (no systemd manager reachable: {why})"))
        }
    };
    st.field("enabled", "enabled:", enabled, active);
    Ok(())
}

fn status_launchd(env: &Env, st: &mut Status) -> Result<(), String> {
    let home = env.home.as_deref().filter(|h| h.is_absolute()).ok_or("HOME is not set")?;
    let path = launchd::plist_path(home);
    st.doc.insert("scheduler".into(), json!("launchd"));
    match find(&path, launchd::is_ours) {
        Found::Absent => {
            st.doc.insert("installed".into(), json!(false));
            st.lines.push(format!("No schedule installed by safe-prune ({} does not exist)", path.display()));
            return Ok(());
        }
        Found::Foreign => {
            st.doc.insert("installed".into(), json!(false));
            st.lines.push(format!(
                "{} exists but was not written by `safe-prune schedule install`",
                path.display()
            ));
            return Ok(());
        }
        Found::Ours => {}
    }
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let info = launchd::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    st.doc.insert("installed".into(), json!(true));
    st.lines.push("Installed: launchd agent".into());
    st.field("plist", "plist:", json!(path), path.display().to_string());
    let every = info.interval.map(|s| human_duration(Duration::from_secs(s)));
    st.field(
        "every",
        "every:",
        json!({"every": every, "start_interval": info.interval}),
        format!("{} (StartInterval {})", every.clone().unwrap_or("?".into()), info.interval.unwrap_or(0)),
    );
    st.command(&info.argv);
    st.state_home = info.state_home.map(PathBuf::from);
    let loaded = if cfg!(target_os = "macos") {
        match tool_output("launchctl", &["print".into(), format!("gui/{}/{}", uid(), launchd::LABEL)]) {
            Ok((status, _, _)) if status.success() => "loaded".to_string(),
            Ok(_) => "not loaded".to_string(),
            Err(why) => format!("unknown ({why})"),
        }
    } else {
        "unknown (launchctl exists on macOS only)".to_string()
    };
    st.field("loaded", "loaded:", json!(loaded), loaded.clone());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// uninstall

fn uninstall(args: &ScheduleWhereArgs) -> Result<u8, String> {
    let env = Env::from_process();
    match backend(args.backend, false) {
        ScheduleBackend::Systemd => uninstall_systemd(args.system, &env),
        ScheduleBackend::Launchd => {
            let home = env.home.as_deref().filter(|h| h.is_absolute()).ok_or("HOME is not set")?;
            let path = launchd::plist_path(home);
            if matches!(find(&path, launchd::is_ours), Found::Ours) && cfg!(target_os = "macos") {
                let domain = format!("gui/{}", uid());
                if let Err(why) =
                    run_tool("launchctl", &["bootout".into(), domain, path.to_string_lossy().into()])
                {
                    eprintln!("note: launchctl bootout: {why} (it was probably not loaded)");
                }
            }
            remove_ours(&[path], launchd::is_ours);
            Ok(exit::OK)
        }
        ScheduleBackend::Cron => {
            eprintln!("safe-prune never edits a crontab: remove its line with `crontab -e`");
            Ok(exit::OK)
        }
    }
}

/// Remove the files among `paths` that carry the marker; say why the others stay. Returns how
/// many were removed.
fn remove_ours(paths: &[PathBuf], is_ours: fn(&str) -> bool) -> usize {
    let mut removed = 0;
    for path in paths {
        match find(path, is_ours) {
            Found::Absent => {}
            Found::Foreign => eprintln!(
                "Left alone: {} was not written by `safe-prune schedule install` (it has no marker line)",
                path.display()
            ),
            Found::Ours => match std::fs::remove_file(path) {
                Ok(()) => {
                    eprintln!("Removed {}", path.display());
                    removed += 1;
                }
                Err(e) => eprintln!("error: cannot remove {}: {e}", path.display()),
            },
        }
    }
    if removed == 0 && paths.iter().all(|p| matches!(find(p, is_ours), Found::Absent)) {
        eprintln!("No schedule installed by safe-prune here ({} does not exist)", paths[0].display());
    }
    removed
}

fn uninstall_systemd(system: bool, env: &Env) -> Result<u8, String> {
    let dir = systemd::unit_dir(system, env.xdg_config_home.as_deref(), env.home.as_deref())
        .ok_or("HOME is not set: cannot tell where user units are")?;
    let timer = dir.join(systemd::TIMER);
    let service = dir.join(systemd::SERVICE);
    let mut manager = true;
    if matches!(find(&timer, systemd::is_ours), Found::Ours) {
        let words = systemctl_words(system, &["disable", "--now", systemd::TIMER]);
        if let Err(why) = run_tool(&words[0], &words[1..]) {
            manager = false;
            eprintln!("note: `{}` failed ({why}); removing the files anyway", words.join(" "));
        }
    }
    if remove_ours(&[timer.clone(), service], systemd::is_ours) == 0 {
        return Ok(exit::OK);
    }
    if manager {
        let words = systemctl_words(system, &["daemon-reload"]);
        let _ = run_tool(&words[0], &words[1..]);
    } else {
        // `enable` linked the timer into timers.target.wants; without a manager to disable it,
        // remove that link too, but only when it points at the file just removed.
        let link = dir.join("timers.target.wants").join(systemd::TIMER);
        if std::fs::read_link(&link).is_ok_and(|target| dir.join(target) == timer) {
            match std::fs::remove_file(&link) {
                Ok(()) => eprintln!("Removed {}", link.display()),
                Err(e) => eprintln!("error: cannot remove {}: {e}", link.display()),
            }
        }
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    #[test]
    fn durations_for_people() {
        assert_eq!(human_duration(Duration::from_secs(86_400)), "1d");
        assert_eq!(human_duration(Duration::from_secs(7 * 86_400)), "1w");
        assert_eq!(human_duration(Duration::from_secs(90 * 60)), "90m");
        assert_eq!(human_duration(Duration::from_secs(36 * 3600)), "36h");
        assert_eq!(human_duration(Duration::from_secs(61)), "61s");
    }

    #[test]
    fn cache_options_are_stripped_and_the_rest_kept() {
        let raw = os(&[
            "--cache-dir",
            "/c",
            "--keep-tools=2",
            "--config-file=/f",
            "--no-config",
            "--scheduled",
            "--older-than",
            "30d",
        ]);
        assert!(mentions_cache_options(&raw));
        assert_eq!(strip_cache_options(&raw), os(&["--keep-tools=2", "--older-than", "30d"]));
        assert!(!mentions_cache_options(&os(&["--keep-tools", "--if-grown", "5"])));
        assert!(mentions_cache_options(&os(&["--cache-dir=/x"])));
    }

    #[test]
    fn prune_options_are_checked_by_the_real_parser() {
        assert!(parse_prune(&os(&["--keep-tools", "--older-than", "30d", "--if-grown", "20"])).is_ok());
        let typo = parse_prune(&os(&["--keep-tool"])).unwrap_err();
        assert!(typo.contains("--keep-tool"), "{typo}");
        assert!(parse_prune(&os(&["--older-than", "30y"])).is_err());
        assert!(parse_prune(&os(&["--if-grown", "0"])).is_err());
        assert!(parse_prune(&os(&["--help"])).unwrap_err().contains("--help"));
    }

    #[test]
    fn command_lines_read_back() {
        let argv: Vec<String> =
            ["/bin/sp", "prune", "--scheduled", "--cache-dir", "/c", "--keep-tools", "--if-grown", "3"]
                .map(String::from)
                .to_vec();
        let (cache, options) = cache_and_options(&argv);
        assert_eq!(cache.as_deref(), Some("/c"));
        assert_eq!(options, ["--keep-tools", "--if-grown", "3"]);
    }

    #[test]
    fn best_effort_absolute_paths() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap();
        assert_eq!(absolute_best_effort(&dir.path().join("a/b")), real.join("a/b"));
    }
}
