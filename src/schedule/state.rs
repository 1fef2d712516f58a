//! The state folder (`$XDG_STATE_HOME/safe-prune`, else `~/.local/state/safe-prune`; never
//! inside the cache): the run log every scheduled run appends to, and the `archive-v0` counts
//! `--if-grown` compares against.
//!
//! - `runs.jsonl`: one JSON object per scheduled run, appended with `O_APPEND` in one write;
//!   past [`RUN_LOG_CAP`] it is renamed to `runs.jsonl.1` (replacing the previous one) first.
//! - `grown.json`: `{"caches": {"<canonical cache path>": {"archives": N, "unix": T}}}`, the
//!   number of `archive-v0` entries after the last completed `--if-grown` run of each cache,
//!   replaced atomically (temporary file + rename).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use crate::prune::{Fatal, Outcome, Settings};
use crate::report::{self, JsonPath};

/// The run log's file name in the state folder.
pub const RUN_LOG: &str = "runs.jsonl";
/// Size past which the run log is rotated to `runs.jsonl.1` (about 2,000 runs).
pub const RUN_LOG_CAP: u64 = 1 << 20;
/// The `--if-grown` record's file name in the state folder.
pub const GROWN: &str = "grown.json";
/// At most this many caches are remembered in `grown.json` (the least recent go first).
const GROWN_CACHES: usize = 64;
/// A run-log line lists at most this many kept and failed entries (and says how many more).
const LIST_CAP: usize = 20;

/// The scheduled-run options of one prune: `--scheduled` and `--if-grown N`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Started by a schedule: append a line to the run log; never prompt, no progress bar.
    pub scheduled: bool,
    /// Skip the run unless `archive-v0` gained at least this many entries since the last
    /// completed run.
    pub if_grown: Option<u64>,
}

/// A run skipped by `--if-grown`: the cache has not grown enough.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    pub cache: PathBuf,
    /// Entries in `archive-v0` now.
    pub archives: u64,
    /// Entries in `archive-v0` after the last completed run.
    pub baseline: u64,
    /// The `--if-grown` threshold.
    pub if_grown: u64,
}

impl Skip {
    /// The human line (stderr).
    pub fn message(&self) -> String {
        format!(
            "Cache has not grown: archive-v0 holds {} entries, {} after the last run (--if-grown {} waits for {}); nothing to do",
            self.archives,
            self.baseline,
            self.if_grown,
            self.baseline.saturating_add(self.if_grown)
        )
    }

    /// The fields a skipped run adds to JSON output and to its run-log line.
    pub fn fields(&self) -> serde_json::Map<String, Value> {
        let mut map = serde_json::Map::new();
        map.insert("cache_dir".into(), json!(JsonPath(self.cache.clone())));
        map.insert("skipped".into(), json!("not grown"));
        map.insert("archives".into(), json!(self.archives));
        map.insert("archives_after_last_run".into(), json!(self.baseline));
        map.insert("if_grown".into(), json!(self.if_grown));
        map
    }
}

/// Where state goes: `$XDG_STATE_HOME` (absolute values only, as the XDG spec says), else
/// `$HOME/.local/state`.
pub fn state_home(xdg_state_home: Option<&Path>, home: Option<&Path>) -> Option<PathBuf> {
    if let Some(dir) = xdg_state_home.filter(|d| d.is_absolute()) {
        return Some(dir.to_path_buf());
    }
    home.filter(|h| h.is_absolute()).map(|h| h.join(".local/state"))
}

/// The state folder of this process (`<state home>/safe-prune`).
pub fn state_dir_from_process() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    state_home(var("XDG_STATE_HOME").as_deref(), var("HOME").as_deref()).map(|d| d.join("safe-prune"))
}

// ---------------------------------------------------------------------------------------
// --if-grown

/// The hook at the start of a run (cache found, nothing locked or scanned yet): with
/// `--if-grown N`, `Some` when the run should stop here. Costs one read of `grown.json` and
/// one directory read of `archive-v0`. Anything unreadable means "run".
pub fn skip_unless_grown(options: &RunOptions, cache: &Path) -> Option<Skip> {
    let if_grown = options.if_grown?;
    let dir = state_dir_from_process()?;
    let baseline = read_grown(&dir, cache)?;
    let archives = count_archives(cache)?;
    if archives >= baseline.saturating_add(if_grown) {
        return None;
    }
    Some(Skip { cache: cache.to_path_buf(), archives, baseline, if_grown })
}

/// The hook after a completed run that removed (not a dry run, not interrupted): with
/// `--if-grown`, remember how many entries `archive-v0` holds now. A failure only warns.
pub fn record_grown(options: &RunOptions, cache: &Path) {
    if options.if_grown.is_none() {
        return;
    }
    let Some(dir) = state_dir_from_process() else {
        eprintln!("warning: --if-grown: neither XDG_STATE_HOME nor HOME is set; nothing recorded");
        return;
    };
    let Some(archives) = count_archives(cache) else { return };
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    if let Err(e) = write_grown(&dir, cache, archives, now) {
        eprintln!("warning: --if-grown: cannot record the cache size in {}: {e}", dir.join(GROWN).display());
    }
}

/// Entries in `<cache>/archive-v0` (0 when it does not exist); `None` when unreadable.
pub fn count_archives(cache: &Path) -> Option<u64> {
    match std::fs::read_dir(cache.join("archive-v0")) {
        Ok(entries) => {
            let mut n = 0u64;
            for entry in entries {
                entry.ok()?;
                n += 1;
            }
            Some(n)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(0),
        Err(_) => None,
    }
}

/// The key of a cache in `grown.json`: its path, or `base64:<bytes>` when not UTF-8.
fn cache_key(cache: &Path) -> String {
    use base64::Engine as _;
    use std::os::unix::ffi::OsStrExt as _;
    match cache.to_str() {
        Some(text) => text.to_string(),
        None => format!(
            "base64:{}",
            base64::engine::general_purpose::STANDARD.encode(cache.as_os_str().as_bytes())
        ),
    }
}

fn read_grown_doc(dir: &Path) -> Option<Value> {
    let bytes = std::fs::read(dir.join(GROWN)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The recorded count for `cache`, if any.
pub fn read_grown(dir: &Path, cache: &Path) -> Option<u64> {
    read_grown_doc(dir)?.get("caches")?.get(cache_key(cache))?.get("archives")?.as_u64()
}

/// Record `archives` for `cache` at time `unix`, keeping the other caches' records.
pub fn write_grown(dir: &Path, cache: &Path, archives: u64, unix: u64) -> std::io::Result<()> {
    let mut caches = read_grown_doc(dir)
        .and_then(|doc| doc.get("caches").and_then(Value::as_object).cloned())
        .unwrap_or_default();
    caches.insert(cache_key(cache), json!({"archives": archives, "unix": unix}));
    while caches.len() > GROWN_CACHES {
        let oldest = caches
            .iter()
            .min_by_key(|(_, v)| v.get("unix").and_then(Value::as_u64).unwrap_or(0))
            .map(|(k, _)| k.clone());
        match oldest {
            Some(key) => caches.remove(&key),
            None => break,
        };
    }
    let doc = json!({"version": 1, "caches": caches});
    let mut text = serde_json::to_vec_pretty(&doc).map_err(std::io::Error::other)?;
    text.push(b'\n');
    std::fs::create_dir_all(dir)?;
    super::write_replacing(&dir.join(GROWN), &text, 0o644)
}

// ---------------------------------------------------------------------------------------
// The run log

/// The exit code `main` gives `result` (kept in step with `main::execute`).
pub fn exit_code(result: &Result<Outcome, Fatal>) -> u8 {
    match result {
        Ok(Outcome::Done(report)) if !report.errors.is_empty() => crate::exit::PARTIAL,
        Ok(_) => crate::exit::OK,
        Err(Fatal::Strict(_)) => crate::exit::PARTIAL,
        Err(_) => crate::exit::FATAL,
    }
}

/// After a `--scheduled` run: append its line to the run log. A failure only warns.
pub fn log_run(settings: &Settings, result: &Result<Outcome, Fatal>, started: Instant) {
    if !settings.schedule.scheduled {
        return;
    }
    let Some(dir) = state_dir_from_process() else {
        eprintln!("warning: --scheduled: neither XDG_STATE_HOME nor HOME is set; the run is not logged");
        return;
    };
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let line = run_line(now, started.elapsed(), settings.locate.cache_dir.as_deref(), result);
    if let Err(e) = append(&dir, &line) {
        eprintln!("warning: cannot append to the run log {}: {e}", dir.join(RUN_LOG).display());
    }
}

/// One run as a JSON object: when, how long, the exit code, and what happened (skipped; no
/// cache; a fatal error; or what was removed, kept in use, and failed).
pub fn run_line(
    now: Duration,
    elapsed: Duration,
    pinned: Option<&Path>,
    result: &Result<Outcome, Fatal>,
) -> Value {
    let mut line = serde_json::Map::new();
    line.insert("time".into(), json!(utc(now.as_secs())));
    line.insert("unix".into(), json!(now.as_secs()));
    line.insert("version".into(), json!(env!("CARGO_PKG_VERSION")));
    line.insert("pid".into(), json!(std::process::id()));
    line.insert("exit".into(), json!(exit_code(result)));
    line.insert("duration_ms".into(), json!(elapsed.as_millis() as u64));
    if let Some(cache) = pinned {
        line.insert("cache_dir".into(), json!(JsonPath(cache.to_path_buf())));
    }
    match result {
        Err(e) => {
            line.insert("fatal".into(), json!(e.to_string()));
        }
        Ok(Outcome::NoCache(display)) => {
            line.insert("no_cache".into(), json!(display));
        }
        Ok(Outcome::Skipped(skip)) => line.extend(skip.fields()),
        Ok(Outcome::Done(report)) => {
            line.insert("cache_dir".into(), json!(report.cache_dir));
            line.insert("dry_run".into(), json!(report.dry_run));
            line.insert("removed".into(), json!(report.removed));
            let kept: Vec<&JsonPath> = report.kept_in_use.iter().map(|k| &k.path).collect();
            line.insert(
                "kept_in_use".into(),
                json!({"entries": kept.len(), "paths": &kept[..kept.len().min(LIST_CAP)]}),
            );
            if let Some(processes) = &report.processes {
                line.insert(
                    "processes".into(),
                    json!({"scanned": processes.scanned, "uninspectable": processes.uninspectable.len()}),
                );
            }
            if let Some(lock) = &report.lock {
                line.insert("lock".into(), json!(lock));
            }
            if let Some(size) = report.size_after {
                line.insert("size_after".into(), json!(size));
            }
            line.insert("errors".into(), json!(&report.errors[..report.errors.len().min(LIST_CAP)]));
            if report.errors.len() > LIST_CAP {
                line.insert("errors_omitted".into(), json!(report.errors.len() - LIST_CAP));
            }
        }
    }
    Value::Object(line)
}

/// Append `line` to `<dir>/runs.jsonl` in one write (`O_APPEND`), rotating it first when it
/// has grown past [`RUN_LOG_CAP`].
pub fn append(dir: &Path, line: &Value) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(RUN_LOG);
    if std::fs::metadata(&path).is_ok_and(|m| m.len() > RUN_LOG_CAP) {
        std::fs::rename(&path, dir.join(format!("{RUN_LOG}.1")))?;
    }
    let mut text = serde_json::to_vec(line).map_err(std::io::Error::other)?;
    text.push(b'\n');
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)?;
    file.write_all(&text)
}

/// The last `n` runs, oldest first (from `runs.jsonl.1` too when needed); lines that are not
/// JSON objects (a torn write, a hand edit) are counted, not shown.
pub fn read_runs(dir: &Path, n: usize) -> (Vec<Value>, usize) {
    let mut runs = Vec::new();
    let mut bad = 0;
    for name in [format!("{RUN_LOG}.1"), RUN_LOG.to_string()] {
        let Ok(text) = std::fs::read(dir.join(name)) else { continue };
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice::<Value>(line) {
                Ok(v) if v.is_object() => runs.push(v),
                _ => bad += 1,
            }
        }
    }
    let skip = runs.len().saturating_sub(n);
    (runs.split_off(skip), bad)
}

/// One run-log line for people.
pub fn describe_run(run: &Value) -> String {
    let time = run.get("time").and_then(Value::as_str).unwrap_or("?");
    let exit = run.get("exit").and_then(Value::as_u64).map_or("?".to_string(), |e| e.to_string());
    let took =
        run.get("duration_ms").and_then(Value::as_u64).map(|ms| format!(", {:.1}s", ms as f64 / 1000.0));
    let took = took.unwrap_or_default();
    let mut out = format!("{time}  exit {exit}  ");
    if let Some(skipped) = run.get("skipped").and_then(Value::as_str) {
        let n = |k: &str| run.get(k).and_then(Value::as_u64).unwrap_or(0);
        out.push_str(&format!(
            "skipped: {skipped} (archive-v0: {} entries, {} after the last run, --if-grown {}){took}",
            n("archives"),
            n("archives_after_last_run"),
            n("if_grown")
        ));
    } else if let Some(fatal) = run.get("fatal").and_then(Value::as_str) {
        out.push_str(&format!("error: {fatal}{took}"));
    } else if let Some(display) = run.get("no_cache").and_then(Value::as_str) {
        out.push_str(&format!("no cache found at {display}{took}"));
    } else {
        let removed = &run["removed"];
        let entries = removed.get("entries").and_then(Value::as_u64).unwrap_or(0);
        let bytes = removed.get("bytes").and_then(Value::as_u64).unwrap_or(0);
        let kept = run["kept_in_use"].get("entries").and_then(Value::as_u64).unwrap_or(0);
        let errors = run.get("errors").and_then(Value::as_array).map_or(0, Vec::len)
            + run.get("errors_omitted").and_then(Value::as_u64).unwrap_or(0) as usize;
        let verb = if run.get("dry_run").and_then(Value::as_bool) == Some(true) {
            "would remove"
        } else {
            "removed"
        };
        out.push_str(&format!(
            "{verb} {entries} {} ({}), kept {kept} in use, {errors} error{}{took}",
            if entries == 1 { "entry" } else { "entries" },
            report::human_bytes(bytes),
            if errors == 1 { "" } else { "s" },
        ));
        for e in run.get("errors").and_then(Value::as_array).into_iter().flatten().take(5) {
            let message = e.get("message").and_then(Value::as_str).unwrap_or("?");
            match e.get("path").and_then(Value::as_str) {
                Some(path) => out.push_str(&format!("\n    error: {path}: {message}")),
                None => out.push_str(&format!("\n    error: {message}")),
            }
        }
    }
    out
}

/// `2026-11-25T04:05:06Z` for seconds since the epoch (UTC, proleptic Gregorian).
pub fn utc(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", secs / 3_600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_764_043_506), "2025-11-25T04:05:06Z");
        assert_eq!(utc(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn state_home_follows_xdg() {
        let home = Path::new("/home/me");
        assert_eq!(state_home(Some(Path::new("/s")), Some(home)), Some(PathBuf::from("/s")));
        // A relative XDG_STATE_HOME is invalid (XDG spec): ignored.
        assert_eq!(state_home(Some(Path::new("rel")), Some(home)), Some(home.join(".local/state")));
        assert_eq!(state_home(None, None), None);
    }

    #[test]
    fn grown_record_round_trips_per_cache() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        assert_eq!(read_grown(&state, Path::new("/c1")), None);
        write_grown(&state, Path::new("/c1"), 10, 1).unwrap();
        write_grown(&state, Path::new("/c2"), 20, 2).unwrap();
        write_grown(&state, Path::new("/c1"), 11, 3).unwrap();
        assert_eq!(read_grown(&state, Path::new("/c1")), Some(11));
        assert_eq!(read_grown(&state, Path::new("/c2")), Some(20));
        for i in 0..(GROWN_CACHES as u64 + 5) {
            write_grown(&state, Path::new(&format!("/many/{i}")), i, 100 + i).unwrap();
        }
        // The least recently recorded caches were dropped, the newest kept.
        assert_eq!(read_grown(&state, Path::new("/c1")), None);
        assert_eq!(read_grown(&state, Path::new(&format!("/many/{}", GROWN_CACHES + 4))), Some(68));
        // Garbage in the file: treated as no record, then replaced.
        std::fs::write(state.join(GROWN), b"{not json").unwrap();
        assert_eq!(read_grown(&state, Path::new("/c1")), None);
        write_grown(&state, Path::new("/c1"), 5, 1).unwrap();
        assert_eq!(read_grown(&state, Path::new("/c1")), Some(5));
    }

    #[test]
    fn run_log_appends_rotates_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        for i in 0..3 {
            append(&state, &json!({"time": "t", "exit": 0, "n": i})).unwrap();
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(state.join(RUN_LOG))
            .unwrap()
            .write_all(b"torn line\n")
            .unwrap();
        let (runs, bad) = read_runs(&state, 2);
        assert_eq!(bad, 1);
        assert_eq!(runs.iter().map(|r| r["n"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 2]);
        // Past the cap, the log moves to runs.jsonl.1 and a new one starts; both are read.
        let file = std::fs::OpenOptions::new().append(true).open(state.join(RUN_LOG)).unwrap();
        file.set_len(RUN_LOG_CAP + 1).unwrap();
        append(&state, &json!({"exit": 0, "n": 3})).unwrap();
        assert_eq!(std::fs::read_to_string(state.join(RUN_LOG)).unwrap(), "{\"exit\":0,\"n\":3}\n");
        assert!(state.join(format!("{RUN_LOG}.1")).exists());
        let (runs, _) = read_runs(&state, 1);
        assert_eq!(runs[0]["n"], 3);
    }

    #[test]
    fn skip_lines_describe_themselves() {
        let skip = Skip { cache: "/c".into(), archives: 2000, baseline: 1990, if_grown: 50 };
        let result: Result<Outcome, Fatal> = Ok(Outcome::Skipped(skip.clone()));
        let line = run_line(Duration::from_secs(0), Duration::from_millis(3), Some(Path::new("/c")), &result);
        assert_eq!(line["skipped"], "not grown");
        assert_eq!(line["exit"], 0);
        assert!(line.get("processes").is_none());
        let text = describe_run(&line);
        assert!(
            text.contains(
                "skipped: not grown (archive-v0: 2000 entries, 1990 after the last run, --if-grown 50)"
            ),
            "{text}"
        );
        assert!(skip.message().contains("waits for 2040"), "{}", skip.message());
        let fatal: Result<Outcome, Fatal> = Err(Fatal::Strict("refused".into()));
        let line = run_line(Duration::ZERO, Duration::ZERO, None, &fatal);
        assert_eq!(line["exit"], 1);
        assert!(describe_run(&line).contains("error: refused"));
    }
}
