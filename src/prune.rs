//! One prune run, start to end: find the cache → lock → scan → map → plan → remove → report.
//!
//! The core never sees clap: `main` builds [`Settings`]. Errors that stop the run are
//! [`Fatal`] (exit 2); per-entry failures are collected in the report (exit 1).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crate::concurrent;
use crate::layout::{self, NotACache};
use crate::locate::{self, Located};
use crate::lock::{self, CacheLock};
use crate::names;
use crate::plan::{self, KeepReason, Phase, Protect};
use crate::remove::{Counts, Progress, Remover};
use crate::report::{self, ErrorEntry, JsonPath, KeptEntry, KeptOther, PruneReport, RemovedEntry, Totals};
use crate::retention;
use crate::timings;
use crate::usage::{self, CacheView, Usage};

/// What the user asked for, as plain data.
#[derive(Debug, Clone)]
pub struct Settings {
    pub locate: locate::Inputs,
    pub ci: bool,
    pub dry_run: bool,
    pub strict: bool,
    pub force: bool,
    pub wait: Option<Duration>,
    pub grace: Duration,
    pub json: bool,
    pub quiet: bool,
    pub verbose: u8,
    pub proc_root: PathBuf,
    /// `--keep-tools`, `--older-than`, `--max-size` (all off by default).
    pub retention: retention::Retention,
    /// `--registry`: keep what other hosts sharing the cache use too.
    pub registry: Option<crate::registry::Config>,
    /// `--scheduled`, `--if-grown` (see `schedule`).
    pub schedule: crate::schedule::RunOptions,
}

/// A failure that stops the run before anything is removed.
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    #[error(transparent)]
    Config(#[from] locate::ConfigError),
    #[error("{} is not a directory; pass --cache-dir with the uv cache directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("{} is not a uv cache ({}); refusing to touch it. Pass --cache-dir with the directory `uv cache dir` prints", .0.display(), .1)]
    NotACache(PathBuf, &'static str),
    #[error("cannot read {}: {}", .0.display(), .1)]
    Io(PathBuf, std::io::Error),
    #[error("{0}")]
    Lock(std::io::Error),
    #[error("{0}")]
    Scan(#[from] platform::ScanError),
    #[error("{0}")]
    Strict(String),
    #[error("{0}")]
    Registry(String),
}

/// How a run ended.
pub enum Outcome {
    /// No cache directory: uv's message, exit 0.
    NoCache(String),
    /// `--if-grown`: the cache has not grown; nothing was locked, scanned or removed (exit 0).
    Skipped(crate::schedule::Skip),
    /// The run's report (errors inside mean exit 1).
    Done(Box<PruneReport>),
}

/// A cache directory that exists, is a directory and looks like a uv cache.
pub struct Cache {
    pub located: Located,
    /// Absolute (lexically), as configured.
    pub absolute: PathBuf,
    pub canonical: PathBuf,
    /// As uv would print it.
    pub display: String,
}

/// Find and validate the cache. `Ok(None)` when it does not exist.
pub fn open_cache(inputs: &locate::Inputs) -> Result<Result<Cache, String>, Fatal> {
    let located = locate::locate(inputs)?;
    let absolute =
        if located.path.is_absolute() { located.path.clone() } else { inputs.cwd.join(&located.path) };
    let display = report::user_display(&located.path, &inputs.cwd);
    // Following links, like uv's `exists()`: a dangling link is no cache either.
    match absolute.metadata() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Err(display)),
        Err(e) => return Err(Fatal::Io(absolute, e)),
        Ok(_) => {}
    }
    let canonical = std::fs::canonicalize(&absolute).map_err(|e| Fatal::Io(absolute.clone(), e))?;
    if !canonical.is_dir() {
        return Err(Fatal::NotADirectory(absolute));
    }
    match layout::check_is_cache(&canonical) {
        Ok(()) => {}
        Err(NotACache::NoTag) => {
            return Err(Fatal::NotACache(absolute, "no CACHEDIR.TAG with the cache signature"))
        }
        Err(NotACache::NoBucket) => {
            return Err(Fatal::NotACache(absolute, "it has a CACHEDIR.TAG but no uv bucket"))
        }
    }
    Ok(Ok(Cache { located, absolute, canonical, display }))
}

/// Scan every process and map what they use to entries of `cache`.
pub fn scan(cache: &Cache, proc_root: &Path) -> Result<Usage, Fatal> {
    let mountinfo = std::fs::read(proc_root.join("self/mountinfo")).ok();
    let view = CacheView::new(&cache.canonical, &cache.absolute, mountinfo.as_deref());
    let report = timings::phase("scan", || platform::scan(&view.request(proc_root)))?;
    Ok(timings::phase("map", || usage::map_scan(&view, &report)))
}

/// Run a prune.
pub fn run(settings: &Settings, stop: &AtomicBool, say: &mut dyn FnMut(&str)) -> Result<Outcome, Fatal> {
    let options = plan::Options { ci: settings.ci };
    // The prune plan is entry by entry already, beside uv or not.
    run_planned(settings, stop, say, Some("Pruning cache at"), &|root, protect, _beside_uv| {
        plan::plan(root, options, protect)
    })
}

/// The pipeline every removing command shares (prune, clean): find the cache, lock, print
/// `<header>: <cache>`, scan, protect, `make_plan`, scan again when beside running uv
/// processes, remove in phases, report. `make_plan` is told whether the run is beside running
/// uv processes: then every target must be one cache entry (never a bucket holding entries
/// uv may add later), so that the planner judges each entry as it lists it.
pub fn run_planned(
    settings: &Settings,
    stop: &AtomicBool,
    say: &mut dyn FnMut(&str),
    header: Option<&str>,
    make_plan: &dyn Fn(&Path, &Protect, bool) -> plan::Plan,
) -> Result<Outcome, Fatal> {
    let cache = match open_cache(&settings.locate)? {
        Ok(cache) => cache,
        Err(display) => return Ok(Outcome::NoCache(display)),
    };
    if let Some(skip) = crate::schedule::skip_unless_grown(&settings.schedule, &cache.canonical) {
        return Ok(Outcome::Skipped(skip));
    }
    // `.lock` is not created yet (see below), so that a refused run leaves the cache as it was.
    let mut lock = if settings.force {
        // `--force` in uv means "do not wait": take the lock if free, else run beside uv.
        lock::acquire(&cache.canonical, false, None, || {})
    } else {
        lock::acquire_unless_stopped(&cache.canonical, false, settings.wait, stop, || {
            say("Cache is currently in-use, waiting for other uv processes to finish (use `--force` to override)")
        })
    }
    .map_err(Fatal::Lock)?;
    if let Some(header) = header {
        say(&format!("{header}: {}", cache.display));
    }
    if settings.verbose > 1 {
        say(&format!("Cache directory from {}", cache.located.origin));
    }
    if let CacheLock::Busy { holders } = &lock {
        if settings.verbose > 0 {
            let pids: Vec<String> = holders.iter().map(|p| p.to_string()).collect();
            say(&format!(
                "uv's cache lock is held (pids {}): pruning beside them; entries younger than {}s, entries being written, and environments they asked for are kept",
                if pids.is_empty() { "unknown".into() } else { pids.join(", ") },
                settings.grace.as_secs()
            ));
        }
    }

    let mut usage = scan(&cache, &settings.proc_root)?;
    strict_check(settings, &cache, &usage)?;
    if matches!(lock, CacheLock::Absent) && !settings.dry_run {
        // No `.lock` yet (a cache last used by uv < 0.8.19): create it like uv and hold it,
        // now that this run will remove things.
        lock = lock::acquire(&cache.canonical, true, None, || {}).map_err(Fatal::Lock)?;
    }
    // Protections, then the plan, then `--max-size` fitting; beside running uv the planner
    // judges each candidate as it lists it (see `concurrent`).
    // Beside running uv: uv holds the lock, or uv older than 0.8.19 (which never locks) is
    // using the cache anyway.
    let locked_out = lock.concurrent();
    let beside_uv = |usage: &Usage| locked_out || !usage.lockless_uv.is_empty();
    if !locked_out && !usage.lockless_uv.is_empty() && settings.verbose > 0 {
        let pids: Vec<String> = usage.lockless_uv.iter().map(|p| p.to_string()).collect();
        say(&format!(
            "uv processes that take no cache lock (uv < 0.8.19) use this cache (pids {}): pruning beside them",
            pids.join(", ")
        ));
    }
    let build = |usage: &Usage| {
        let mut protect = protect_from(usage);
        let concurrent = beside_uv(usage);
        if concurrent {
            concurrent::protect(&cache.canonical, usage, settings.grace, &mut protect);
        }
        retention::protect(
            &cache.canonical,
            &cache.absolute,
            &settings.proc_root,
            &settings.retention,
            &mut protect,
        );
        let mut plan = timings::phase("plan", || make_plan(&cache.canonical, &protect, concurrent));
        let size_after =
            retention::fit(&cache.canonical, &settings.proc_root, &settings.retention, &protect, &mut plan);
        (plan, size_after)
    };
    let (mut the_plan, mut size_after) = build(&usage);
    // Other hosts sharing the cache (`--registry`): keep what they published and what they use
    // of this plan (their answers to its announcement); remove only what every live host cleared.
    let mut shared = None;
    if let Some(config) = &settings.registry {
        let answers = crate::registry::coordinate(
            config,
            &cache,
            &the_plan,
            settings.strict,
            &settings.proc_root,
            stop,
        )?;
        answers.merge_into(&mut usage);
        (the_plan, size_after) = build(&usage);
        answers.restrict(&mut the_plan);
        shared = Some(answers);
    }
    if !settings.dry_run && beside_uv(&usage) && !the_plan.targets.is_empty() {
        // Look again right before removing, after planning and any wait for other hosts: a
        // process that started since the first scan (a `uvx` reusing an environment leaves
        // nothing else to see, and its uv parent we cannot lock out) is caught here.
        let again = scan(&cache, &settings.proc_root)?;
        // A process that appeared since and cannot be read counts under `--strict` too.
        strict_check(settings, &cache, &again)?;
        if merge_usage(&mut usage, again) {
            (the_plan, size_after) = build(&usage);
            if let Some(answers) = &shared {
                answers.restrict(&mut the_plan);
            }
        }
    }
    let hosts = shared.map(|answers| answers.hosts);

    // Names are read before anything goes: a removed archive cannot be named afterwards.
    let labels =
        timings::phase("names", || names::for_plan(&cache.canonical, &the_plan, names_detail(settings)));
    let label_of = |rel: &Path| labels.get(rel).cloned().unwrap_or_default();
    let progress = Arc::new(Progress::default());
    let remover = Remover::new(&cache.canonical, settings.dry_run)
        .map_err(|e| Fatal::Io(cache.canonical.clone(), e))?
        .with_progress(progress.clone());
    let bar = crate::progress::Bar::start(
        progress.clone(),
        the_plan.targets.len() as u64,
        settings.dry_run,
        // A scheduled run never draws one, even when someone runs its command in a terminal.
        crate::progress::wanted(settings.json, settings.quiet || settings.schedule.scheduled),
    );
    let mut removed = Vec::new();
    let mut errors: Vec<ErrorEntry> = the_plan
        .errors
        .iter()
        .map(|e| ErrorEntry { path: Some(JsonPath(e.rel.clone())), message: e.message.clone() })
        .collect();
    let mut totals = Totals::default();
    for phase in [Phase::References, Phase::Archives, Phase::Files] {
        let targets: Vec<&plan::Target> = the_plan.targets.iter().filter(|t| t.phase == phase).collect();
        let rels: Vec<&Path> = targets.iter().map(|t| t.rel.as_path()).collect();
        let results = timings::phase("remove", || remover.remove_all(&rels, stop));
        for (target, result) in targets.iter().zip(results) {
            let Some(result) = result else { continue };
            let counts = match result {
                Ok(counts) => counts,
                Err((counts, e)) => {
                    errors.push(ErrorEntry { path: Some(JsonPath(target.rel.clone())), message: e.message });
                    counts
                }
            };
            add_totals(&mut totals, &counts);
            removed.push(RemovedEntry {
                path: JsonPath(target.rel.clone()),
                reason: target.reason,
                files: counts.files,
                dirs: counts.dirs,
                bytes: counts.bytes,
                label: label_of(&target.rel),
            });
        }
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            errors.push(ErrorEntry {
                path: None,
                message: "interrupted: stopped before removing everything planned".into(),
            });
            break;
        }
    }
    bar.finish();
    remover.finish();
    if !settings.dry_run && !stop.load(std::sync::atomic::Ordering::Relaxed) {
        crate::schedule::record_grown(&settings.schedule, &cache.canonical);
    }
    if size_after.is_some() && !settings.dry_run {
        size_after = Some(retention::measure(&cache.canonical));
    }
    let mode = if beside_uv(&usage) { "concurrent" } else { lock.mode() }.to_string();
    drop(lock);

    let mut kept_in_use = kept_in_use(&the_plan.kept, &usage);
    for k in &mut kept_in_use {
        k.label = label_of(&k.path.0);
    }
    let kept = the_plan
        .kept
        .iter()
        .filter(|(_, why)| **why != KeepReason::InUse)
        .map(|(rel, why)| KeptOther {
            path: JsonPath(rel.clone()),
            reason: why.clone(),
            label: label_of(rel),
        })
        .collect();
    Ok(Outcome::Done(Box::new(PruneReport {
        cache_dir: JsonPath(cache.canonical.clone()),
        dry_run: settings.dry_run,
        removed: totals,
        removed_entries: removed,
        kept_in_use,
        kept,
        processes: Some(usage.summary.clone()),
        lock: Some(mode),
        errors,
        size_after,
        hosts,
    })))
}

/// How much naming the output needs: none when nothing is printed, names for JSON and `-v`,
/// else kinds for the summary (kept entries are always named: there are few).
fn names_detail(settings: &Settings) -> Option<names::Detail> {
    if settings.json || settings.verbose > 0 {
        Some(names::Detail::Full)
    } else if settings.quiet {
        None
    } else {
        Some(names::Detail::Kind)
    }
}

fn add_totals(totals: &mut Totals, counts: &Counts) {
    totals.entries += 1;
    totals.files += counts.files;
    totals.dirs += counts.dirs;
    totals.bytes += counts.bytes;
}

/// Every in-use entry and its closure, protected.
fn protect_from(usage: &Usage) -> Protect {
    let mut protect = Protect::default();
    for entry in usage.all_entries() {
        protect.add(entry.clone(), KeepReason::InUse);
    }
    protect
}

/// Add a later scan's findings to an earlier one; true when an entry is newly in use or a
/// new uv command runs (either can change the plan).
fn merge_usage(usage: &mut Usage, again: Usage) -> bool {
    let mut new_entry = false;
    for (entry, holders) in again.direct {
        new_entry |= !usage.direct.contains_key(&entry) && !usage.closure.contains_key(&entry);
        let list = usage.direct.entry(entry).or_default();
        for h in holders {
            if !list.contains(&h) {
                list.push(h);
            }
        }
    }
    for (entry, via) in again.closure {
        new_entry |= !usage.direct.contains_key(&entry) && !usage.closure.contains_key(&entry);
        usage.closure.entry(entry).or_insert(via);
    }
    usage.summary = again.summary;
    for pid in again.lockless_uv {
        if !usage.lockless_uv.contains(&pid) {
            new_entry = true;
            usage.lockless_uv.push(pid);
        }
    }
    // A `uvx` that started since asks for its environment by name (`concurrent::protect`).
    for command in again.uv_commands {
        if !usage.uv_commands.contains(&command) {
            new_entry = true;
            usage.uv_commands.push(command);
        }
    }
    new_entry
}

/// `--strict`: no deletion while a process that could reach the cache is uninspectable.
fn strict_check(settings: &Settings, cache: &Cache, usage: &Usage) -> Result<(), Fatal> {
    if !settings.strict {
        return Ok(());
    }
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(&cache.canonical).map(|m| m.uid()).unwrap_or(0);
    let relevant: Vec<String> = usage
        .summary
        .uninspectable
        .iter()
        .filter(|u| u.uid.is_none_or(|uid| uid == 0 || uid == owner))
        .map(|u| format!("{} ({})", u.pid, u.command))
        .collect();
    if relevant.is_empty() && usage.summary.hidden.is_none() {
        return Ok(());
    }
    let what = if relevant.is_empty() {
        usage.summary.hidden.clone().unwrap_or_default()
    } else {
        relevant.join(", ")
    };
    Err(Fatal::Strict(format!(
        "--strict: not removing anything: processes that could use the cache cannot be inspected: {what}; run as root to inspect them"
    )))
}

/// Entries kept because in use, with their holders (closure entries name the in-use entry).
fn kept_in_use(kept: &std::collections::BTreeMap<PathBuf, KeepReason>, usage: &Usage) -> Vec<KeptEntry> {
    let in_use: BTreeSet<&PathBuf> =
        kept.iter().filter(|(_, w)| **w == KeepReason::InUse).map(|(p, _)| p).collect();
    in_use
        .into_iter()
        .map(|rel| {
            if let Some(holders) = usage.direct.get(rel) {
                KeptEntry {
                    path: JsonPath(rel.clone()),
                    holders: holders.clone(),
                    via: None,
                    label: Default::default(),
                }
            } else {
                let via = usage.closure.get(rel).cloned().unwrap_or_default();
                let holders = usage.direct.get(&via).cloned().unwrap_or_default();
                KeptEntry {
                    path: JsonPath(rel.clone()),
                    holders,
                    via: Some(JsonPath(via)),
                    label: Default::default(),
                }
            }
        })
        .collect()
}
