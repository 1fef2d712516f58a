//! What the user sees: uv's stderr lines (byte-for-byte where uv prints them), our additions
//! about kept entries, and the JSON document on stdout.

use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::names::Label;
use crate::plan::{KeepReason, Reason};
use crate::remove::Counts;
use crate::usage::{Holder, ProcessSummary};

/// uv's `human_readable_bytes` with `{:.1}` (uv-console `lib.rs`): `0B`, `1023B`, `1.0KiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    // uv rounds with a margin of half the last printed digit, so 1023.96KiB prints 1.0MiB.
    let margin = 0.05;
    let mut quantity = bytes as f64;
    let mut unit = UNITS[0];
    for next in &UNITS[1..] {
        if 1024.0 - quantity > margin {
            break;
        }
        quantity /= 1024.0;
        unit = next;
    }
    format!("{quantity:.1}{unit}")
}

/// uv's `user_display`: an absolute path below the working directory is shown relative to
/// it; control characters are escaped so a hostile name cannot rewrite the terminal.
pub fn user_display(path: &Path, cwd: &Path) -> String {
    let shown = if path.is_absolute() && cwd.parent().is_some() {
        match path.strip_prefix(cwd) {
            Ok(rest) if rest.as_os_str().is_empty() => Path::new("."),
            Ok(rest) => rest,
            Err(_) => path,
        }
    } else {
        path
    };
    escape(shown)
}

/// A path for a terminal: lossy UTF-8, control characters as `\n`, `\x1b`, ...
pub fn escape(path: &Path) -> String {
    let text = path.to_string_lossy();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// uv's `print_removal_summary` line.
pub fn summary_line(counts: &Counts, empty: &str, verb: &str) -> String {
    let head = match (counts.files, counts.dirs) {
        (0, 0) => return empty.to_string(),
        (0, 1) => format!("{verb} 1 directory"),
        (0, dirs) => format!("{verb} {dirs} directories"),
        (1, _) => format!("{verb} 1 file"),
        (files, _) => format!("{verb} {files} files"),
    };
    format!("{head} ({})", human_bytes(counts.bytes))
}

/// A path relative to the cache root, for JSON: a string when UTF-8, else `{"bytes": b64}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct JsonPath(pub PathBuf);

impl Serialize for JsonPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.to_str() {
            Some(text) => s.serialize_str(text),
            None => {
                let mut map = s.serialize_map(Some(1))?;
                let b64 = base64::engine::general_purpose::STANDARD.encode(self.0.as_os_str().as_bytes());
                map.serialize_entry("bytes", &b64)?;
                map.end()
            }
        }
    }
}

/// One removed (or, in a dry run, removable) entry.
#[derive(Debug, Clone, Serialize)]
pub struct RemovedEntry {
    pub path: JsonPath,
    pub reason: Reason,
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    /// What it is: `name`, `kind`, `python`, `distributions` (see `names`).
    #[serde(flatten)]
    pub label: Label,
}

/// One entry kept because it is in use.
#[derive(Debug, Clone, Serialize)]
pub struct KeptEntry {
    pub path: JsonPath,
    pub holders: Vec<Holder>,
    /// For an entry kept only because an in-use entry needs it (a link to it, the base of an
    /// overlay), the in-use entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<JsonPath>,
    #[serde(flatten)]
    pub label: Label,
}

/// An entry kept for another reason.
#[derive(Debug, Clone, Serialize)]
pub struct KeptOther {
    pub path: JsonPath,
    pub reason: KeepReason,
    #[serde(flatten)]
    pub label: Label,
}

/// A failure that did not stop the run.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorEntry {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<JsonPath>,
    pub message: String,
}

/// Totals of the removal.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Totals {
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
}

/// Everything a prune run reports.
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub cache_dir: JsonPath,
    pub dry_run: bool,
    pub removed: Totals,
    pub removed_entries: Vec<RemovedEntry>,
    pub kept_in_use: Vec<KeptEntry>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<KeptOther>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processes: Option<ProcessSummary>,
    /// How the run coexisted with uv: `exclusive` (held uv's lock), `concurrent`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock: Option<String>,
    pub errors: Vec<ErrorEntry>,
    /// With `--max-size`: the cache's size after the run, in allocated bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_after: Option<u64>,
    /// With `--registry`: every host sharing the cache, live, stale or expired.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Vec<crate::registry::HostReport>>,
}

impl PruneReport {
    /// Totals as uv's `Removal` counts.
    pub fn counts(&self) -> Counts {
        Counts { files: self.removed.files, dirs: self.removed.dirs, bytes: self.removed.bytes }
    }
}

/// The lines printed after uv's summary: what was kept in use, and why (with `-v`, who).
pub fn kept_lines(report: &PruneReport, verbose: u8) -> String {
    let mut out = String::new();
    let n = report.kept_in_use.len();
    if n > 0 {
        let entries = if n == 1 { "entry" } else { "entries" };
        let verb = if report.dry_run { "Would keep" } else { "Kept" };
        // An entry kept for another's sake carries that entry's holders: count them too.
        let pids: std::collections::BTreeSet<(Option<&str>, u32)> = report
            .kept_in_use
            .iter()
            .flat_map(|k| k.holders.iter().map(|h| (h.host.as_deref(), h.pid)))
            .collect();
        let _ = writeln!(
            out,
            "{verb} {n} {entries} in use by {} running process{}",
            pids.len(),
            if pids.len() == 1 { "" } else { "es" }
        );
        if verbose > 0 {
            for k in &report.kept_in_use {
                let _ = writeln!(out, "  {}", escape(&k.path.0));
                let what = k.label.describe();
                if !what.is_empty() {
                    let _ = writeln!(out, "    {what}");
                }
                if let Some(via) = &k.via {
                    let _ = writeln!(out, "    needed by {}", escape(&via.0));
                    continue;
                }
                for h in &k.holders {
                    let host = h.host.as_deref().map(|h| format!(" on {h}")).unwrap_or_default();
                    let this = if h.is_self { ", this process" } else { "" };
                    let _ = writeln!(
                        out,
                        "    pid {} ({}{this}, user {}{host}): {} {}",
                        h.pid,
                        h.command,
                        h.user,
                        h.evidence,
                        escape(Path::new(&h.detail))
                    );
                }
            }
        }
    }
    if verbose > 0 {
        for k in &report.kept {
            let why = match k.reason {
                KeepReason::InUse => "in use",
                KeepReason::Young => "younger than the grace period",
                KeepReason::Locked => "its lock is held by a uv process",
                KeepReason::NewerBucket => "written by a newer uv",
                KeepReason::NewestTool => "the newest environment of its tool (--keep-tools)",
                KeepReason::Recent => "used within --older-than",
                KeepReason::Deferred => {
                    "its last link went this run, beside running uv: removed by the next run"
                }
            };
            let what = k.label.describe();
            let what = if what.is_empty() { what } else { format!("  {what}") };
            let _ = writeln!(out, "Kept {}: {why}{what}", escape(&k.path.0));
        }
    }
    if let Some(hosts) = &report.hosts {
        out.push_str(&crate::registry::host_lines(hosts, verbose));
    }
    if let Some(size) = report.size_after {
        let verb = if report.dry_run { "would be" } else { "is" };
        let _ = writeln!(out, "Cache size {verb} {}", human_bytes(size));
    }
    out
}

/// The warning about processes that could not be inspected.
pub fn uninspectable_lines(summary: &ProcessSummary) -> String {
    let mut out = String::new();
    if let Some(hidden) = &summary.hidden {
        let _ = writeln!(out, "warning: {hidden}");
    }
    let n = summary.uninspectable.len();
    if n == 0 {
        return out;
    }
    let names: Vec<String> =
        summary.uninspectable.iter().take(5).map(|u| format!("{} ({})", u.pid, u.command)).collect();
    let more = if n > 5 { format!(", and {} more", n - 5) } else { String::new() };
    let _ = writeln!(
        out,
        "warning: {n} process{} could not be inspected ({}{more}); entries only they use cannot be seen. Run as root to include other users' processes, or pass --strict to remove nothing in that case",
        if n == 1 { "" } else { "es" },
        names.join(", ")
    );
    out
}

/// How many kept entries and errors a step summary lists before "and N more".
const SUMMARY_LIST_LIMIT: usize = 20;

/// Inline code for Markdown: a fence longer than any run of backticks in the text, so a hostile
/// name cannot break out of it (CommonMark code spans).
fn md_code(text: &str) -> String {
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest + 1);
    let pad = if text.starts_with('`') || text.ends_with('`') { " " } else { "" };
    format!("{fence}{pad}{}{pad}{fence}", text.replace(['\n', '\r'], " "))
}

/// A short Markdown report of one run for a CI job's summary page (GitHub Actions'
/// `$GITHUB_STEP_SUMMARY`): what was removed, what was kept in use and by whom, and errors.
pub fn step_summary(title: &str, report: &PruneReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "### {title}\n");
    let _ = writeln!(out, "Cache: {}\n", md_code(&escape(&report.cache_dir.0)));
    let verb = if report.dry_run { "Would remove" } else { "Removed" };
    let _ = writeln!(out, "| | entries | files | size |\n|---|---:|---:|---:|");
    let r = &report.removed;
    let _ = writeln!(out, "| {verb} | {} | {} | {} |", r.entries, r.files, human_bytes(r.bytes));
    let _ = writeln!(out, "| Kept in use | {} | | |", report.kept_in_use.len());
    let _ = writeln!(out, "| Errors | {} | | |\n", report.errors.len());
    if !report.kept_in_use.is_empty() {
        let _ = writeln!(out, "Kept in use:\n");
        for k in report.kept_in_use.iter().take(SUMMARY_LIST_LIMIT) {
            let why = match &k.via {
                Some(via) => format!("needed by {}", md_code(&escape(&via.0))),
                None => k
                    .holders
                    .iter()
                    .map(|h| {
                        format!("pid {} ({}, user {}, {})", h.pid, md_code(&h.command), h.user, h.evidence)
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
            };
            let _ = writeln!(out, "- {}: {why}", md_code(&escape(&k.path.0)));
        }
        more(&mut out, report.kept_in_use.len());
    }
    if !report.errors.is_empty() {
        let _ = writeln!(out, "Errors:\n");
        for e in report.errors.iter().take(SUMMARY_LIST_LIMIT) {
            match &e.path {
                Some(p) => {
                    let _ = writeln!(out, "- {}: {}", md_code(&escape(&p.0)), md_code(&e.message));
                }
                None => {
                    let _ = writeln!(out, "- {}", md_code(&e.message));
                }
            }
        }
        more(&mut out, report.errors.len());
    }
    out
}

fn more(out: &mut String, n: usize) {
    if n > SUMMARY_LIST_LIMIT {
        let _ = writeln!(out, "- and {} more", n - SUMMARY_LIST_LIMIT);
    }
    out.push('\n');
}

/// The step summary when there is no cache directory.
pub fn step_summary_no_cache(title: &str, display: &str) -> String {
    format!("### {title}\n\nNo cache found at: {}\n\n", md_code(display))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_like_uv() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(1023), "1023B");
        assert_eq!(human_bytes(1024), "1.0KiB");
        assert_eq!(human_bytes(8192), "8.0KiB");
        assert_eq!(human_bytes(69_632), "68.0KiB");
        assert_eq!(human_bytes(465 * 1024 * 1024 + 600 * 1024), "465.6MiB");
        // Just below 1 MiB rounds up into the next unit, as uv's margin does.
        assert_eq!(human_bytes(1024 * 1024 - 10), "1.0MiB");
    }

    #[test]
    fn summary_lines_like_uv() {
        let c = |files, dirs, bytes| Counts { files, dirs, bytes };
        assert_eq!(
            summary_line(&c(0, 0, 0), "No unused entries found", "Removed"),
            "No unused entries found"
        );
        assert_eq!(summary_line(&c(0, 1, 0), "", "Removed"), "Removed 1 directory (0B)");
        assert_eq!(summary_line(&c(0, 3, 0), "", "Removed"), "Removed 3 directories (0B)");
        assert_eq!(summary_line(&c(1, 5, 8192), "", "Removed"), "Removed 1 file (8.0KiB)");
        assert_eq!(summary_line(&c(91, 5, 204_800), "", "Removed"), "Removed 91 files (200.0KiB)");
    }

    #[test]
    fn display_relative_to_cwd() {
        let cwd = Path::new("/tmp/lab");
        assert_eq!(user_display(Path::new("/tmp/lab/lk1"), cwd), "lk1");
        assert_eq!(user_display(Path::new("/tmp/lab"), cwd), ".");
        assert_eq!(user_display(Path::new("/other/c"), cwd), "/other/c");
        assert_eq!(user_display(Path::new("./rel2"), cwd), "./rel2");
        assert_eq!(user_display(Path::new("/tmp/a\nb"), cwd), "/tmp/a\\nb");
        assert_eq!(user_display(Path::new("/x/y"), Path::new("/")), "/x/y");
    }

    #[test]
    fn step_summary_lists_removed_kept_and_errors() {
        let holder = Holder {
            pid: 42,
            command: "python".into(),
            user: "runner".into(),
            evidence: "environ",
            detail: "PATH=/c/archive-v0/a/bin".into(),
            host: None,
            is_self: false,
        };
        let report = PruneReport {
            cache_dir: JsonPath("/home/runner/.cache/uv".into()),
            dry_run: false,
            removed: Totals { entries: 3, files: 91, dirs: 5, bytes: 204_800 },
            removed_entries: Vec::new(),
            kept_in_use: vec![
                KeptEntry {
                    path: JsonPath("archive-v0/a".into()),
                    holders: vec![holder],
                    via: None,
                    label: Label::default(),
                },
                KeptEntry {
                    path: JsonPath("environments-v2/x/y".into()),
                    holders: Vec::new(),
                    via: Some(JsonPath("archive-v0/a".into())),
                    label: Label::default(),
                },
            ],
            kept: Vec::new(),
            processes: None,
            lock: None,
            errors: vec![ErrorEntry {
                path: Some(JsonPath("wheels-v7/a`b".into())),
                message: "denied".into(),
            }],
            size_after: None,
            hosts: None,
        };
        let md = step_summary("safe-prune --ci", &report);
        assert!(md.starts_with("### safe-prune --ci\n\nCache: `/home/runner/.cache/uv`\n"), "{md}");
        assert!(md.contains("| Removed | 3 | 91 | 200.0KiB |"), "{md}");
        assert!(md.contains("| Kept in use | 2 | | |"), "{md}");
        assert!(md.contains("- `archive-v0/a`: pid 42 (`python`, user runner, environ)"), "{md}");
        assert!(md.contains("- `environments-v2/x/y`: needed by `archive-v0/a`"), "{md}");
        assert!(md.contains("- ``wheels-v7/a`b``: `denied`"), "{md}");
    }

    #[test]
    fn markdown_code_spans_cannot_be_escaped() {
        assert_eq!(md_code("plain"), "`plain`");
        assert_eq!(md_code("a``b"), "```a``b```");
        assert_eq!(md_code("`x"), "`` `x ``");
        assert_eq!(md_code("a\nb"), "`a b`");
    }

    #[test]
    fn non_utf8_paths_round_trip_as_base64() {
        use std::ffi::OsStr;
        let p = JsonPath(PathBuf::from(OsStr::from_bytes(b"archive-v0/\xff")));
        assert_eq!(serde_json::to_string(&p).unwrap(), r#"{"bytes":"YXJjaGl2ZS12MC//"}"#);
        let p = JsonPath(PathBuf::from("archive-v0/x"));
        assert_eq!(serde_json::to_string(&p).unwrap(), r#""archive-v0/x""#);
    }
}
