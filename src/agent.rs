//! `safe-prune agent --registry DIR`: runs on every host that shares a uv cache, publishes what
//! this host's processes use into the registry every interval, and answers prunes'
//! announcements with a fresh scan restricted to their candidates (see [`crate::registry`]).
//!
//! The loop: publish (one process scan, one small file written atomically), then poll the
//! registry every 250 ms (one directory read) for announcements; each new one is answered after
//! a scan that starts after it was seen, so a process started after the last heartbeat is
//! still found. Announcements from this host's own prunes are answered too (an unprivileged
//! prune cannot inspect other users' processes; a root agent can). A scan error is never
//! published as "nothing in use": the record is left to age (the host turns stale) and
//! announcements get an `error` answer (the host counts as stale).

use std::collections::{BTreeSet, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::cli::AgentArgs;
use crate::concurrent;
use crate::layout::Family;
use crate::locate;
use crate::prune::{self, Cache, Fatal};
use crate::registry::{self, Announcement, Answer, Record, WireEntry};
use crate::usage::{self, CacheView, Holder, Usage};

/// How often the registry is read for announcements.
pub const POLL: Duration = Duration::from_millis(250);

/// What `safe-prune agent` was asked to do.
#[derive(Debug, Clone)]
pub struct Settings {
    pub locate: locate::Inputs,
    pub registry: PathBuf,
    pub interval: Duration,
    /// Publish once and exit.
    pub once: bool,
    pub verbose: u8,
    pub proc_root: PathBuf,
}

/// `safe-prune agent`: exit code 0 when stopped (SIGINT, SIGTERM) or after `--once`, 2 on a
/// fatal error (no registry, registry inside the cache, not a cache, first scan failed).
pub fn main(args: &AgentArgs) -> u8 {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(signal, stop.clone());
    }
    if args.interval < Duration::from_secs(1) {
        return crate::fatal("--interval must be at least 1s");
    }
    let settings = Settings {
        locate: crate::locate_inputs(&args.cache),
        registry: args.registry.clone(),
        interval: args.interval,
        once: args.once,
        verbose: args.cache.verbose,
        proc_root: PathBuf::from("/proc"),
    };
    let quiet = args.cache.quiet;
    let mut log = |line: &str| {
        if !quiet {
            eprintln!("{line}");
        }
    };
    match run(&settings, &stop, &mut log) {
        Ok(()) => crate::exit::OK,
        Err(e) => crate::fatal(e),
    }
}

/// This host's view of things, kept between cycles.
struct Agent<'a> {
    settings: &'a Settings,
    me: registry::Identity,
    dir: PathBuf,
    /// Announcements already answered (or refused), by file name.
    handled: HashSet<String>,
    /// File server's clock minus ours, from the last publish.
    offset_secs: i128,
    warned_skew: bool,
    published: bool,
}

/// Run the agent until `stop` (or once).
pub fn run(settings: &Settings, stop: &AtomicBool, log: &mut dyn FnMut(&str)) -> Result<(), Fatal> {
    let me = registry::Identity::here().map_err(Fatal::Registry)?;
    let located = locate::locate(&settings.locate)?;
    let cache_path = if located.path.is_absolute() {
        located.path.clone()
    } else {
        settings.locate.cwd.join(&located.path)
    };
    let dir = registry::check_dir(&settings.registry, &cache_path).map_err(Fatal::Registry)?;
    let mut agent = Agent {
        settings,
        me,
        dir,
        handled: HashSet::new(),
        offset_secs: 0,
        warned_skew: false,
        published: false,
    };
    log(&format!(
        "safe-prune agent: host {} publishes the entries its processes use in the uv cache at {} to {} every {}",
        registry::clean_text(&agent.me.host, 128),
        cache_path.display(),
        agent.dir.join(registry::record_name(&agent.me.key)).display(),
        registry::human_duration(settings.interval)
    ));
    let mut next_publish = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() >= next_publish {
            match agent.publish(log) {
                Ok(()) => {}
                // A first failure is a setup problem (not a cache, unreadable /proc): say so.
                Err(e) if !agent.published => return Err(e),
                Err(e) => log(&format!("warning: not published this time (the record ages): {e}")),
            }
            agent.published = true;
            next_publish = Instant::now() + settings.interval;
            if settings.once {
                return Ok(());
            }
        }
        agent.answer_announcements(log);
        // One sleep per poll (a signal ends the run within a poll).
        std::thread::sleep(next_publish.saturating_duration_since(Instant::now()).min(POLL));
    }
    log("safe-prune agent: stopped (the record stays; it turns stale, then expires)");
    Ok(())
}

/// One scan of this host: the entries in use (with closure, and the environments live uv
/// commands ask for), and how many processes that could use the cache were uninspectable.
pub struct HostScan {
    pub usage: Usage,
    pub uninspectable: u64,
}

/// Scan this host's processes for `cache` (device and inode matching included, so a process
/// that sees the share under another path, or in another mount namespace, is found).
pub fn scan_host(cache: &Cache, proc_root: &Path) -> Result<HostScan, Fatal> {
    let mut usage = prune::scan(cache, proc_root)?;
    if add_requested_environments(&cache.canonical, &mut usage) {
        let mountinfo = std::fs::read(proc_root.join("self/mountinfo")).ok();
        let view = CacheView::new(&cache.canonical, &cache.absolute, mountinfo.as_deref());
        usage.closure = usage::closure(&view, usage.direct.keys().cloned().collect());
    }
    let owner = std::fs::metadata(&cache.canonical).map(|m| m.uid()).unwrap_or(0);
    let uninspectable = usage
        .summary
        .uninspectable
        .iter()
        .filter(|u| u.uid.is_none_or(|uid| uid == 0 || uid == owner))
        .count() as u64;
    Ok(HostScan { usage, uninspectable })
}

/// Cached environments (the link and its archive) whose requested distributions a live
/// `uvx` / `uv tool run` / `uv run --with` names: between resolving the link and starting the
/// tool, uv shows no other evidence of them (as in concurrent mode). True if any was added.
fn add_requested_environments(root: &Path, usage: &mut Usage) -> bool {
    let wanted: Vec<(u32, BTreeSet<String>)> = usage
        .uv_commands
        .iter()
        .map(|(pid, argv)| (*pid, concurrent::requested_names(argv)))
        .filter(|(_, names)| !names.is_empty())
        .collect();
    if wanted.is_empty() {
        return false;
    }
    let Some(envs) = Family::Environments.current_name() else { return false };
    let Ok(digests) = std::fs::read_dir(root.join(envs)) else { return false };
    let mut added = false;
    for digest in digests.flatten() {
        let Ok(links) = std::fs::read_dir(digest.path()) else { continue };
        for link in links.flatten() {
            if !link.file_type().is_ok_and(|t| t.is_symlink()) {
                continue;
            }
            let path = link.path();
            let Ok(target) = std::fs::canonicalize(&path) else { continue };
            let requested = concurrent::requested_in_venv(&target);
            let (Ok(rel_link), Ok(rel_target)) = (path.strip_prefix(root), target.strip_prefix(root)) else {
                continue;
            };
            for (pid, names) in &wanted {
                let common: Vec<&String> = requested.intersection(names).collect();
                if common.is_empty() {
                    continue;
                }
                let holder = Holder {
                    pid: *pid,
                    command: "uv".into(),
                    user: String::new(),
                    evidence: "cmdline",
                    detail: format!(
                        "asks for {}",
                        common.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                    host: None,
                    is_self: false,
                };
                for rel in [rel_link, rel_target] {
                    let list = usage.direct.entry(rel.to_path_buf()).or_default();
                    if !list.contains(&holder) {
                        list.push(holder.clone());
                        added = true;
                    }
                }
            }
        }
    }
    added
}

/// The entries (direct and closure) that overlap a candidate: inside one, or containing one.
/// A vetoed closure entry brings the entry that needs it, with its holders.
pub fn vetoes(entries: &[WireEntry], candidates: &BTreeSet<PathBuf>) -> Vec<WireEntry> {
    let overlaps = |p: &Path| {
        p.ancestors().any(|a| candidates.contains(a))
            || candidates
                .range::<Path, _>((std::ops::Bound::Excluded(p), std::ops::Bound::Unbounded))
                .next()
                .is_some_and(|c| c.starts_with(p))
    };
    let mut out: Vec<WireEntry> = entries.iter().filter(|e| overlaps(&e.path.0)).cloned().collect();
    let needed: Vec<PathBuf> = out.iter().filter_map(|e| e.via.as_ref().map(|v| v.0.clone())).collect();
    for via in needed {
        if let Some(d) = entries.iter().find(|d| d.path.0 == via && d.via.is_none()) {
            if !out.contains(d) {
                out.push(d.clone());
            }
        }
    }
    out
}

impl Agent<'_> {
    /// Scan this host, or `None` when there is no cache (yet): then nothing uses it.
    fn scan(&self) -> Result<Option<(Cache, HostScan)>, Fatal> {
        match prune::open_cache(&self.settings.locate)? {
            Err(_) => Ok(None),
            Ok(cache) => {
                let scan = scan_host(&cache, &self.settings.proc_root)?;
                Ok(Some((cache, scan)))
            }
        }
    }

    fn fs_now(&self) -> SystemTime {
        let now = SystemTime::now();
        if self.offset_secs >= 0 {
            now + Duration::from_secs(self.offset_secs.min(i128::from(u32::MAX)) as u64)
        } else {
            now.checked_sub(Duration::from_secs((-self.offset_secs).min(i128::from(u32::MAX)) as u64))
                .unwrap_or(now)
        }
    }

    /// Scan and rewrite `host-<key>.json`.
    fn publish(&mut self, log: &mut dyn FnMut(&str)) -> Result<(), Fatal> {
        let scanned = self.scan()?;
        let name = registry::record_name(&self.me.key);
        let path = self.dir.join(&name);
        // Someone else writing our file means two hosts share an id: say so (both stay safe,
        // but each overwrites the other's entries).
        if self.published {
            if let Ok((bytes, _)) = registry::read_file(&path) {
                if let Ok(other) = registry::parse::<Record>(&bytes, registry::KIND_HOST) {
                    if other.agent_pid != Some(std::process::id()) || other.boot_id != self.me.boot_id {
                        log(&format!(
                            "warning: another agent (pid {}, boot {}) publishes as host {} too; give each host a unique SAFE_PRUNE_HOST_ID",
                            other.agent_pid.map_or("?".into(), |p| p.to_string()),
                            registry::clean_text(other.boot_id.as_deref().unwrap_or("?"), 64),
                            registry::clean_text(&self.me.host, 128)
                        ));
                    }
                }
            }
        }
        let now = SystemTime::now();
        let (entries, uninspectable, hidden, cache_dir, scanned_n) = match &scanned {
            None => (Vec::new(), 0, None, None, 0),
            Some((cache, scan)) => (
                registry::wire_entries(&scan.usage),
                scan.uninspectable,
                scan.usage.summary.hidden.clone(),
                Some(cache.absolute.to_string_lossy().into_owned()),
                scan.usage.summary.scanned,
            ),
        };
        let record = Record {
            format: registry::FORMAT,
            kind: registry::KIND_HOST.into(),
            host: self.me.host.clone(),
            boot_id: self.me.boot_id.clone(),
            agent_pid: Some(std::process::id()),
            pid_ns: self.me.pid_ns,
            version: Some(env!("CARGO_PKG_VERSION").into()),
            time: registry::unix_secs(now),
            interval_secs: self.settings.interval.as_secs(),
            cache_dir,
            entries,
            uninspectable,
            hidden,
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| Fatal::Registry(e.to_string()))?;
        let mtime = registry::write_atomic(&self.dir, &name, &bytes)
            .map_err(|e| Fatal::Registry(format!("cannot write {}: {e}", path.display())))?;
        self.offset_secs = i128::from(registry::unix_secs(mtime)) - i128::from(record.time);
        if self.offset_secs.unsigned_abs() > 10 && !self.warned_skew {
            self.warned_skew = true;
            log(&format!(
                "warning: this host's clock is {}s {} the file server's; ages are measured on the server's clock, so pruning stays correct",
                self.offset_secs.unsigned_abs(),
                if self.offset_secs < 0 { "ahead of" } else { "behind" }
            ));
        }
        if self.settings.verbose > 0 {
            log(&format!(
                "published {} entries in use ({} processes scanned{}) to {name}",
                record.entries.len(),
                scanned_n,
                if uninspectable > 0 { format!(", {uninspectable} uninspectable") } else { String::new() }
            ));
        }
        if let Ok(names) = registry::list(&self.dir) {
            registry::collect_garbage(&self.dir, &names, self.fs_now());
        }
        Ok(())
    }

    /// Answer every announcement not answered yet (one scan for all of them).
    fn answer_announcements(&mut self, log: &mut dyn FnMut(&str)) {
        let Ok(names) = registry::list(&self.dir) else { return };
        let present: HashSet<&String> = names.iter().collect();
        self.handled.retain(|n| present.contains(n));
        let mut pending: Vec<(String, Announcement)> = Vec::new();
        for name in &names {
            let Some((key, nonce)) = registry::parse_announce_name(name) else { continue };
            if self.handled.contains(name) {
                continue;
            }
            self.handled.insert(name.clone());
            let parsed = registry::read_file(&self.dir.join(name)).map_err(|e| e.to_string()).and_then(
                |(bytes, mtime)| {
                    if mtime.is_some_and(|m| registry::age(self.fs_now(), m) > registry::GC_AGE) {
                        return Err("older than an hour".into());
                    }
                    let a: Announcement = registry::parse(&bytes, registry::KIND_ANNOUNCEMENT)?;
                    if a.nonce != nonce {
                        return Err(format!("names nonce {:?}", a.nonce));
                    }
                    if registry::file_key(&a.host) != key {
                        return Err(format!("from {:?} in another host's file", a.host));
                    }
                    Ok(a)
                },
            );
            match parsed {
                // This host's own prunes too: running as another user, they may not be able
                // to inspect processes this agent sees.
                Ok(a) => pending.push((name.clone(), a)),
                Err(e) => {
                    if self.settings.verbose > 0 {
                        log(&format!("warning: ignoring announcement {name}: {e}"));
                    }
                }
            }
        }
        if pending.is_empty() {
            return;
        }
        // The scan starts after every pending announcement was seen.
        let scanned = self.scan();
        for (name, announcement) in pending {
            let candidates: BTreeSet<PathBuf> = announcement.candidates.iter().map(|c| c.0.clone()).collect();
            let mut answer = Answer {
                format: registry::FORMAT,
                kind: registry::KIND_ANSWER.into(),
                nonce: announcement.nonce.clone(),
                host: self.me.host.clone(),
                boot_id: self.me.boot_id.clone(),
                pid_ns: self.me.pid_ns,
                time: registry::unix_secs(SystemTime::now()),
                status: "clear".into(),
                vetoes: Vec::new(),
                uninspectable: 0,
                hidden: None,
                error: None,
            };
            match &scanned {
                Ok(None) => {}
                Ok(Some((_, scan))) => {
                    answer.vetoes = vetoes(&registry::wire_entries(&scan.usage), &candidates);
                    answer.uninspectable = scan.uninspectable;
                    answer.hidden = scan.usage.summary.hidden.clone();
                    if !answer.vetoes.is_empty() {
                        answer.status = "veto".into();
                    }
                }
                Err(e) => {
                    answer.status = "error".into();
                    answer.error = Some(e.to_string());
                }
            }
            let answer_name = registry::answer_name(&announcement.nonce, &self.me.key);
            let written = serde_json::to_vec(&answer)
                .map_err(std::io::Error::other)
                .and_then(|bytes| registry::write_atomic(&self.dir, &answer_name, &bytes));
            match written {
                Err(e) => log(&format!("warning: cannot answer {name}: {e}")),
                Ok(_) if self.settings.verbose > 0 => log(&format!(
                    "answered {} from {}: {} of {} candidates in use",
                    name,
                    registry::clean_text(&announcement.host, 128),
                    answer.vetoes.len(),
                    candidates.len()
                )),
                Ok(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{RelPath, WireHolder};

    fn e(path: &str, via: Option<&str>) -> WireEntry {
        WireEntry {
            path: RelPath(path.into()),
            holders: if via.is_none() {
                vec![WireHolder {
                    pid: 1,
                    command: "x".into(),
                    user: "u".into(),
                    evidence: "cwd".into(),
                    detail: String::new(),
                }]
            } else {
                Vec::new()
            },
            via: via.map(|v| RelPath(v.into())),
        }
    }

    #[test]
    fn vetoes_overlap_both_ways_and_bring_the_needing_entry() {
        let entries = vec![
            e("archive-v0/a", None),
            e("environments-v2/d/r", Some("archive-v0/a")),
            e("files-v0/ab", None),
            e("archive-v0/unrelated", None),
        ];
        let cands: BTreeSet<PathBuf> =
            ["environments-v2/d", "files-v0/ab/obj", "archive-v0/b"].iter().map(PathBuf::from).collect();
        let got: Vec<String> =
            vetoes(&entries, &cands).iter().map(|e| e.path.0.display().to_string()).collect();
        assert_eq!(got, ["environments-v2/d/r", "files-v0/ab", "archive-v0/a"]);
        assert!(vetoes(&entries, &BTreeSet::new()).is_empty());
    }
}
