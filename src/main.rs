//! safe-prune: prune the uv cache without deleting what running processes still use.
//!
//! `main` parses the command line, turns it into plain settings, runs the core, prints, and
//! maps the outcome to an exit code (0 done, 1 some entries could not be removed or `--strict`
//! refused, 2 usage or fatal error).
#![deny(unsafe_code)]

mod agent;
mod clean;
mod cli;
mod concurrent;
mod du;
mod explain;
mod layout;
mod locate;
mod lock;
mod names;
mod plan;
mod pointer;
mod progress;
mod prune;
mod registry;
mod remove;
mod report;
mod retention;
mod schedule;
mod shim;
mod timings;
mod usage;
mod version;
mod wrapper;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser;

use cli::{CacheArgs, CleanArgs, Cli, Command, Format, PruneArgs, RegistryArgs, RemovalArgs, ShimAction};

/// Exit codes, documented in README.
mod exit {
    pub const OK: u8 = 0;
    pub const PARTIAL: u8 = 1;
    pub const FATAL: u8 = 2;
}

fn main() -> ExitCode {
    let start = std::time::Instant::now();
    // Installed as `uv` (or `uvx`): read uv's command line, hand everything but cache
    // prune/clean to the real uv.
    if let Some(invoked) = wrapper::invoked_as(std::env::args_os().next().as_deref()) {
        return ExitCode::from(wrapper::main(invoked));
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::FATAL } else { exit::OK });
        }
    };
    let code = match cli.command {
        None => run_prune(&cli.prune),
        Some(Command::Prune(args)) => run_prune(&args),
        Some(Command::InUse(args)) => run_in_use(&args.cache),
        Some(Command::Du(args)) => run_du(&args),
        Some(Command::Clean(args)) => run_clean(&args),
        Some(Command::Shim(args)) => run_shim(&args.action),
        Some(Command::Schedule(args)) => schedule::run(&args.action, &cli.prune.cache),
        Some(Command::Completions(args)) => run_completions(args.shell),
        Some(Command::Man) => run_man(),
        Some(Command::Agent(args)) => agent::main(&args),
    };
    timings::print(start);
    ExitCode::from(code)
}

fn cwd() -> PathBuf {
    std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"))
}

fn locate_inputs(args: &CacheArgs) -> locate::Inputs {
    let env = locate::Env::from_process();
    locate::Inputs {
        // clap already folded `UV_CACHE_DIR` into `cache_dir` (same precedence as uv).
        cache_dir: args.cache_dir.clone().filter(|p| !p.as_os_str().is_empty()),
        config_file: args.config_file.clone(),
        no_config: args.no_config,
        cwd: cwd(),
        env,
    }
}

fn fatal(message: impl std::fmt::Display) -> u8 {
    eprintln!("error: {message}");
    exit::FATAL
}

/// A run that ends without its report: the message on stderr and, with `--format json`,
/// `{"error": ..., "cache_dir": ...}` on stdout, so that a script always reads one JSON object.
fn fatal_run(json: bool, inputs: &locate::Inputs, message: impl std::fmt::Display, code: u8) -> u8 {
    eprintln!("error: {message}");
    if json {
        let cache_dir = known_cache_dir(inputs).map(report::JsonPath);
        println!("{}", serde_json::json!({"error": message.to_string(), "cache_dir": cache_dir}));
    }
    code
}

/// The cache directory a run was given, absolute (canonical when it exists); `None` when even
/// that could not be found (an unreadable configuration).
fn known_cache_dir(inputs: &locate::Inputs) -> Option<PathBuf> {
    let absolute = inputs.cwd.join(locate::locate(inputs).ok()?.path);
    Some(std::fs::canonicalize(&absolute).unwrap_or(absolute))
}

fn run_prune(args: &PruneArgs) -> u8 {
    let settings = prune_settings(args);
    let title = if args.ci { "safe-prune --ci" } else { "safe-prune" };
    execute(&Operation::Prune, &settings, title)
}

fn prune_settings(args: &PruneArgs) -> prune::Settings {
    prune::Settings {
        ci: args.ci,
        retention: retention::Retention {
            keep_tools: args.keep_tools,
            older_than: args.older_than,
            max_size: args.max_size,
        },
        schedule: schedule::RunOptions { scheduled: args.scheduled, if_grown: args.if_grown },
        ..removal_settings(&args.cache, &args.removal, &args.shared)
    }
}

/// What every removing command shares (no `--ci`, retention or schedule).
fn removal_settings(cache: &CacheArgs, removal: &RemovalArgs, shared: &RegistryArgs) -> prune::Settings {
    prune::Settings {
        locate: locate_inputs(cache),
        ci: false,
        dry_run: removal.dry_run,
        strict: removal.strict,
        force: removal.force,
        wait: removal.wait,
        grace: removal.grace,
        json: cache.format == Format::Json,
        quiet: cache.quiet,
        verbose: cache.verbose,
        proc_root: PathBuf::from("/proc"),
        retention: Default::default(),
        registry: registry::Config::from_args(shared),
        schedule: Default::default(),
    }
}

fn run_clean(args: &CleanArgs) -> u8 {
    let settings = removal_settings(&args.cache, &args.removal, &args.shared);
    let title = if args.packages.is_empty() {
        "safe-prune clean".to_string()
    } else {
        format!("safe-prune clean {}", args.packages.join(" "))
    };
    execute(&Operation::Clean(args.packages.clone()), &settings, &title)
}

/// A command that removes cache entries.
enum Operation {
    /// `uv cache prune` minus what is in use.
    Prune,
    /// `uv cache clean [PACKAGE...]` minus what is in use (normalized names).
    Clean(Vec<String>),
}

/// Run a prune or clean: print uv's lines (or JSON), append the CI step summary, and map the
/// outcome to an exit code. `title` heads the step summary.
fn execute(op: &Operation, settings: &prune::Settings, title: &str) -> u8 {
    // Ctrl-C (or a service manager's SIGTERM) stops between entries, with a summary.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(signal, stop.clone());
    }
    let started = std::time::Instant::now();
    let human = !settings.json && !settings.quiet;
    let mut say = |line: &str| {
        if human {
            eprintln!("{line}");
        }
    };
    let (result, empty) = match op {
        Operation::Prune => (prune::run(settings, &stop, &mut say), "No unused entries found"),
        Operation::Clean(packages) => {
            (clean::run(settings, packages, &stop, &mut say), "No cache entries found")
        }
    };
    schedule::log_run(settings, &result, started);
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(prune::Fatal::Strict(message)) => {
            return fatal_run(settings.json, &settings.locate, message, exit::PARTIAL)
        }
        Err(e) => return fatal_run(settings.json, &settings.locate, e, exit::FATAL),
    };
    let report = match outcome {
        prune::Outcome::NoCache(display) => {
            if settings.json {
                println!("{}", serde_json::json!({"cache_dir": null, "no_cache": display}));
            } else if !settings.quiet {
                eprintln!("No cache found at: {display}");
            }
            append_step_summary(&report::step_summary_no_cache(title, &display));
            return exit::OK;
        }
        prune::Outcome::Skipped(skip) => {
            return schedule::print_skipped(&skip, settings.json, settings.quiet)
        }
        prune::Outcome::Done(report) => report,
    };
    if settings.json {
        print_json(&report);
    } else if !settings.quiet {
        print_human(&report, settings.verbose, empty);
    } else {
        // `-q` prints nothing but errors: an entry that could not be removed is one.
        print_errors(&mut std::io::stderr().lock(), &report.errors);
    }
    append_step_summary(&report::step_summary(title, &report));
    if report.errors.is_empty() {
        exit::OK
    } else {
        exit::PARTIAL
    }
}

/// In a GitHub Actions job (`GITHUB_STEP_SUMMARY` names a file), add `markdown` to the job's
/// summary page. Failing to write it never fails the run.
fn append_step_summary(markdown: &str) {
    let Some(path) = std::env::var_os("GITHUB_STEP_SUMMARY").filter(|p| !p.is_empty()) else { return };
    let written = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .and_then(|mut f| f.write_all(markdown.as_bytes()));
    if let Err(e) = written {
        eprintln!("warning: cannot write the step summary to {}: {e}", Path::new(&path).display());
    }
}

fn run_shim(action: &ShimAction) -> u8 {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return fatal(format!("cannot find the safe-prune executable: {e}")),
    };
    let home = std::env::var_os("HOME");
    let (ShimAction::Install(args) | ShimAction::Uninstall(args)) = action;
    let dir = match shim::default_dir(args.dir.as_deref(), home.as_deref()) {
        Ok(dir) => dir,
        Err(e) => return fatal(e),
    };
    let result = match action {
        ShimAction::Install(_) => {
            shim::install(&dir, &exe, &std::env::var_os("PATH").unwrap_or_default()).map(|l| l.join("\n"))
        }
        ShimAction::Uninstall(_) => shim::uninstall(&dir, &exe),
    };
    match result {
        Ok(text) => {
            eprintln!("{text}");
            exit::OK
        }
        Err(e) => fatal(e),
    }
}

fn run_completions(shell: clap_complete::Shell) -> u8 {
    use clap::CommandFactory;
    // Generated into memory first: clap_complete panics on a write error (`| head`).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "safe-prune", &mut script);
    write_stdout(&script, "the completion script")
}

fn run_man() -> u8 {
    use clap::CommandFactory;
    let mut page = Vec::new();
    match clap_mangen::Man::new(Cli::command()).render(&mut page) {
        Ok(()) => write_stdout(&page, "the man page"),
        Err(e) => fatal(format!("cannot render the man page: {e}")),
    }
}

/// Write generated text to stdout; a closed pipe (`| head`) is not an error.
fn write_stdout(bytes: &[u8], what: &str) -> u8 {
    match std::io::stdout().lock().write_all(bytes) {
        Ok(()) => exit::OK,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => exit::OK,
        Err(e) => fatal(format!("cannot write {what}: {e}")),
    }
}

fn print_human(report: &report::PruneReport, verbose: u8, empty: &str) {
    let mut err = std::io::stderr().lock();
    if verbose > 0 {
        let verb = if report.dry_run { "Would remove" } else { "Removed" };
        for e in &report.removed_entries {
            let what = e.label.describe();
            let _ = writeln!(
                err,
                "{verb} {} ({}, {}){}{what}",
                report::escape(&e.path.0),
                serde_json::to_value(e.reason)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                report::human_bytes(e.bytes),
                if what.is_empty() { "" } else { "  " },
            );
        }
    }
    let verb = if report.dry_run { "Would remove" } else { "Removed" };
    let _ = writeln!(err, "{}", report::summary_line(&report.counts(), empty, verb));
    let _ = write!(err, "{}", report::kept_lines(report, verbose));
    // Standing in for uv (`uv cache prune` through the shim), uv's lines stay uv's alone.
    if verbose > 0 || wrapper::invoked_as(std::env::args_os().next().as_deref()).is_none() {
        let _ = write!(err, "{}", explain::summary_lines(report));
    }
    if let Some(processes) = &report.processes {
        let _ = write!(err, "{}", report::uninspectable_lines(processes));
    }
    print_errors(&mut err, &report.errors);
}

/// One JSON document and a newline on stdout, in one write: stdout is line-buffered, and a
/// report of thousands of entries would otherwise go out in a write per kilobyte.
fn print_json(value: &impl serde::Serialize) {
    let mut text = serde_json::to_vec(value).unwrap_or_default();
    text.push(b'\n');
    let _ = std::io::stdout().lock().write_all(&text);
}

/// One `error:` line per entry that could not be removed (and per run-wide error).
fn print_errors(err: &mut impl Write, errors: &[report::ErrorEntry]) {
    for e in errors {
        match &e.path {
            Some(p) => {
                let _ = writeln!(err, "error: {}: {}", report::escape(&p.0), e.message);
            }
            None => {
                let _ = writeln!(err, "error: {}", e.message);
            }
        }
    }
}

fn run_in_use(args: &CacheArgs) -> u8 {
    let inputs = locate_inputs(args);
    let json = args.format == Format::Json;
    let cache = match prune::open_cache(&inputs) {
        Ok(Ok(cache)) => cache,
        Ok(Err(display)) => {
            if !args.quiet {
                eprintln!("No cache found at: {display}");
            }
            return exit::OK;
        }
        Err(e) => return fatal_run(json, &inputs, e, exit::FATAL),
    };
    let usage = match prune::scan(&cache, Path::new("/proc")) {
        Ok(usage) => usage,
        Err(e) => return fatal_run(json, &inputs, e, exit::FATAL),
    };
    let mut entries: Vec<report::KeptEntry> = usage
        .direct
        .iter()
        .map(|(rel, holders)| report::KeptEntry {
            path: report::JsonPath(rel.clone()),
            holders: holders.clone(),
            via: None,
            label: Default::default(),
        })
        .chain(usage.closure.iter().map(|(rel, via)| report::KeptEntry {
            path: report::JsonPath(rel.clone()),
            holders: usage.direct.get(via).cloned().unwrap_or_default(),
            via: Some(report::JsonPath(via.clone())),
            label: Default::default(),
        }))
        .collect();
    let rels: Vec<PathBuf> = entries.iter().map(|k| k.path.0.clone()).collect();
    let labels = timings::phase("names", || names::label_all(&cache.canonical, &rels, names::Detail::Full));
    for (k, label) in entries.iter_mut().zip(labels) {
        k.label = label;
    }
    if json {
        let doc = serde_json::json!({
            "cache_dir": report::JsonPath(cache.canonical.clone()),
            "in_use": entries,
            "processes": usage.summary,
        });
        print_json(&doc);
        return exit::OK;
    }
    if args.quiet {
        return exit::OK;
    }
    let mut out = std::io::stdout().lock();
    if entries.is_empty() {
        let _ = writeln!(out, "No cache entries in use ({} processes scanned)", usage.summary.scanned);
    }
    for k in &entries {
        let what = k.label.describe();
        let sep = if what.is_empty() { "" } else { "  " };
        let _ = writeln!(out, "{}{sep}{what}", report::escape(&k.path.0));
        if let Some(via) = &k.via {
            let _ = writeln!(out, "  needed by {}", report::escape(&via.0));
            continue;
        }
        for h in &k.holders {
            let _ = writeln!(
                out,
                "  pid {} ({}, user {}): {} {}",
                h.pid,
                h.command,
                h.user,
                h.evidence,
                report::escape(Path::new(&h.detail))
            );
        }
    }
    let _ = write!(std::io::stderr(), "{}", report::uninspectable_lines(&usage.summary));
    exit::OK
}

fn run_du(args: &cli::DuArgs) -> u8 {
    let inputs = locate_inputs(&args.cache);
    let json = args.cache.format == Format::Json;
    let cache = match prune::open_cache(&inputs) {
        Ok(Ok(cache)) => cache,
        Ok(Err(display)) => {
            if json {
                println!("{}", serde_json::json!({"cache_dir": null, "no_cache": display}));
            } else if !args.cache.quiet {
                eprintln!("No cache found at: {display}");
            }
            return exit::OK;
        }
        Err(e) => return fatal_run(json, &inputs, e, exit::FATAL),
    };
    let report = match du::measure(&cache, Path::new("/proc"), args.top) {
        Ok(report) => report,
        Err(e) => return fatal_run(json, &inputs, e, exit::FATAL),
    };
    if json {
        print_json(&report);
    } else if !args.cache.quiet {
        let _ = write!(std::io::stdout().lock(), "{}", du::human(&report, args.cache.verbose));
        let _ = write!(std::io::stderr(), "{}", report::uninspectable_lines(&report.processes));
        for e in &report.errors {
            if let Some(p) = &e.path {
                eprintln!("warning: cannot read {}: {}", report::escape(&p.0), e.message);
            }
        }
    }
    exit::OK
}
