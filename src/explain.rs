//! The plain-language end of a prune's human output: what was freed, by kind, and what was
//! kept, and why, in two lines (after uv's own `Removed N files (X)` line, which stays first
//! and unchanged). Every entry is listed only with `-v`.

use std::collections::BTreeMap;

use crate::names::Kind;
use crate::plan::{KeepReason, Reason};
use crate::report::{human_bytes, KeptEntry, KeptOther, PruneReport, RemovedEntry};

/// A group of removed entries, in words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Group {
    ToolEnvironments,
    WheelArchives,
    Archives,
    SourceBuilds,
    StaleBuckets,
    TemporaryBuilds,
    Stray,
    CiWheels,
    CiBuilds,
    OrphanFiles,
    LeastRecentlyUsed,
    Cleaned,
    PackageEntries,
    DanglingArchives,
}

impl Group {
    /// (singular, plural); an empty singular means the group is not counted (its entries are
    /// directories of many things, or links that go with an environment counted elsewhere).
    fn words(self) -> (&'static str, &'static str) {
        match self {
            Group::ToolEnvironments => ("old tool environment", "old tool environments"),
            Group::WheelArchives => ("unused wheel archive", "unused wheel archives"),
            Group::Archives => ("unused archive", "unused archives"),
            Group::SourceBuilds => ("stale source build", "stale source builds"),
            Group::StaleBuckets => ("stale bucket from an older uv", "stale buckets from older uv versions"),
            Group::TemporaryBuilds => ("temporary build", "temporary builds"),
            Group::Stray => ("stray top-level entry", "stray top-level entries"),
            Group::CiWheels => ("", "pre-built wheels (--ci)"),
            Group::CiBuilds => ("", "unpacked source builds (--ci)"),
            Group::OrphanFiles => ("orphan file object", "orphan file objects"),
            Group::LeastRecentlyUsed => {
                ("least recently used entry (--max-size)", "least recently used entries (--max-size)")
            }
            Group::Cleaned => ("cache entry", "cache entries"),
            Group::PackageEntries => ("package entry", "package entries"),
            Group::DanglingArchives => ("archive of a removed package", "archives of removed packages"),
        }
    }
}

/// The group of a removed entry, and whether it counts as one of the group.
fn group(e: &RemovedEntry) -> (Group, bool) {
    match e.reason {
        // The links (and their `<digest>` directories) go with the environments they name;
        // a script's venv is an environment itself.
        Reason::CachedEnvironment => (Group::ToolEnvironments, e.label.venv),
        Reason::UnreferencedArchive => match e.label.kind {
            Kind::ToolEnv => (Group::ToolEnvironments, true),
            Kind::UnpackedWheel => (Group::WheelArchives, true),
            _ => (Group::Archives, true),
        },
        Reason::StaleRevision => (Group::SourceBuilds, true),
        Reason::StaleBucket => (Group::StaleBuckets, true),
        Reason::BuildEnvironment => (Group::TemporaryBuilds, true),
        Reason::UnknownEntry => (Group::Stray, true),
        Reason::CiWheel => (Group::CiWheels, false),
        Reason::CiBuiltWheel => (Group::CiBuilds, false),
        Reason::OrphanFile => (Group::OrphanFiles, true),
        Reason::OverSizeLimit => (Group::LeastRecentlyUsed, true),
        Reason::Cleaned => (Group::Cleaned, true),
        Reason::PackageEntry => (Group::PackageEntries, true),
        Reason::DanglingArchive => (Group::DanglingArchives, true),
    }
}

/// `3 old tool environments (1.2MiB)`.
fn phrase(group: Group, count: u64, bytes: u64) -> String {
    let (one, many) = group.words();
    let size = human_bytes(bytes);
    match (one.is_empty(), count) {
        (true, _) | (false, 0) => format!("{many} ({size})"),
        (false, 1) => format!("1 {one} ({size})"),
        (false, n) => format!("{n} {many} ({size})"),
    }
}

/// Up to three names, then "and N more".
fn names_list(names: &[String]) -> String {
    match names.len() {
        0 => String::new(),
        1..=3 => names.join(", "),
        n => format!("{} and {} more", names[..3].join(", "), n - 3),
    }
}

/// The summary lines (each ending in a newline; empty when nothing was removed or kept).
pub fn summary_lines(report: &PruneReport) -> String {
    summarize(report.dry_run, &report.removed_entries, &report.kept_in_use, &report.kept)
}

fn summarize(
    dry_run: bool,
    removed: &[RemovedEntry],
    kept_in_use: &[KeptEntry],
    kept_other: &[KeptOther],
) -> String {
    let mut out = String::new();
    let mut groups: BTreeMap<Group, (u64, u64)> = BTreeMap::new();
    for e in removed {
        let (g, counted) = group(e);
        let slot = groups.entry(g).or_default();
        slot.0 += u64::from(counted);
        slot.1 += e.bytes;
    }
    let mut groups: Vec<(Group, (u64, u64))> = groups.into_iter().collect();
    // Largest first; equal sizes in a fixed order.
    groups.sort_by(|a, b| b.1 .1.cmp(&a.1 .1).then(a.0.cmp(&b.0)));
    if !groups.is_empty() {
        let verb = if dry_run { "Would free" } else { "Freed" };
        let parts: Vec<String> = groups.iter().map(|(g, (n, bytes))| phrase(*g, *n, *bytes)).collect();
        out.push_str(&format!("{verb}: {}\n", parts.join(", ")));
    }

    let mut kept: Vec<String> = Vec::new();
    // In use: the names of the entries processes use directly.
    let mut in_use: Vec<String> = Vec::new();
    let mut unnamed = 0usize;
    for k in kept_in_use.iter().filter(|k| k.via.is_none()) {
        match &k.label.name {
            Some(name) if !in_use.contains(name) => in_use.push(name.clone()),
            Some(_) => {}
            None => unnamed += 1,
        }
    }
    match (in_use.is_empty(), unnamed) {
        (true, 0) => {}
        (true, n) => kept.push(format!("{n} {} in use", if n == 1 { "entry" } else { "entries" })),
        (false, 0) => kept.push(format!("{} (in use)", names_list(&in_use))),
        (false, n) => kept.push(format!(
            "{} and {n} other {} (in use)",
            names_list(&in_use),
            if n == 1 { "entry" } else { "entries" }
        )),
    }
    // Newest tool environments: counted by their archives, named.
    let mut tools: Vec<String> = Vec::new();
    let mut tool_count = 0usize;
    let mut others: BTreeMap<&KeepReason, usize> = BTreeMap::new();
    for k in kept_other {
        if k.reason == KeepReason::NewestTool {
            if k.label.venv && k.path.0.starts_with("archive-v0") {
                tool_count += 1;
                if let Some(name) = &k.label.name {
                    if !tools.contains(name) {
                        tools.push(name.clone());
                    }
                }
            }
            continue;
        }
        *others.entry(&k.reason).or_default() += 1;
    }
    if tool_count > 0 {
        let noun = if tool_count == 1 { "newest tool environment" } else { "newest tool environments" };
        let names = if tools.is_empty() { String::new() } else { format!(": {}", names_list(&tools)) };
        kept.push(format!("{tool_count} {noun} (--keep-tools{names})"));
    }
    for (reason, n) in others {
        let entries = if n == 1 { "entry" } else { "entries" };
        kept.push(match reason {
            KeepReason::Young => format!("{n} {entries} younger than the grace period"),
            KeepReason::Locked => format!("{n} {entries} being written by uv"),
            KeepReason::NewerBucket => {
                format!("{n} {} of a newer uv", if n == 1 { "bucket" } else { "buckets" })
            }
            KeepReason::Recent => format!("{n} {entries} used within --older-than"),
            KeepReason::Deferred => format!("{n} {entries} unlinked this run, removed by the next"),
            KeepReason::InUse => format!("{n} {entries} in use"),
            KeepReason::NewestTool => continue,
        });
    }
    if !kept.is_empty() {
        let verb = if dry_run { "Would keep" } else { "Kept" };
        out.push_str(&format!("{verb}: {}\n", kept.join("; ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::Label;
    use crate::report::JsonPath;

    fn removed(path: &str, reason: Reason, kind: Kind, venv: bool, bytes: u64) -> RemovedEntry {
        RemovedEntry {
            path: JsonPath(path.into()),
            reason,
            files: 1,
            dirs: 0,
            bytes,
            label: Label { kind, venv, ..Label::default() },
        }
    }

    fn named(name: &str, venv: bool) -> Label {
        Label { name: Some(name.into()), kind: Kind::ToolEnv, venv, ..Label::default() }
    }

    #[test]
    fn freed_by_kind_and_kept_by_reason() {
        let removed_entries = vec![
            removed("environments-v2/d", Reason::CachedEnvironment, Kind::ToolEnv, false, 0),
            removed("archive-v0/a", Reason::UnreferencedArchive, Kind::ToolEnv, true, 4096),
            removed("archive-v0/b", Reason::UnreferencedArchive, Kind::ToolEnv, true, 4096),
            removed("archive-v0/w", Reason::UnreferencedArchive, Kind::UnpackedWheel, false, 1024),
            removed("wheels-v4", Reason::StaleBucket, Kind::UnpackedWheel, false, 2048),
            removed("wheels-v7/pypi", Reason::CiWheel, Kind::UnpackedWheel, false, 100),
        ];
        let kept_in_use = vec![KeptEntry {
            path: JsonPath("archive-v0/x".into()),
            holders: Vec::new(),
            via: None,
            label: named("sleepy 0.2", true),
        }];
        let other = |path: &str, reason: KeepReason, label: Label| KeptOther {
            path: JsonPath(path.into()),
            reason,
            label,
        };
        let kept = vec![
            other("archive-v0/t", KeepReason::NewestTool, named("dozy 1.0", true)),
            other("environments-v2/d/t", KeepReason::NewestTool, named("dozy 1.0", false)),
            other("builds-v0/.tmp1", KeepReason::Young, Label::default()),
            other("builds-v0/.tmp2", KeepReason::Young, Label::default()),
        ];
        assert_eq!(
            summarize(false, &removed_entries, &kept_in_use, &kept),
            "Freed: 2 old tool environments (8.0KiB), 1 stale bucket from an older uv (2.0KiB), \
             1 unused wheel archive (1.0KiB), pre-built wheels (--ci) (100B)\n\
             Kept: sleepy 0.2 (in use); 1 newest tool environment (--keep-tools: dozy 1.0); \
             2 entries younger than the grace period\n"
        );
        let dry = summarize(true, &removed_entries[..1], &[], &[]);
        assert_eq!(dry, "Would free: old tool environments (0B)\n");
    }

    #[test]
    fn nothing_to_say() {
        assert_eq!(summarize(true, &[], &[], &[]), "");
    }
}
