//! Linux backend: one pass over `/proc`, every read relative to a held `/proc/PID` handle.
//!
//! This module owns the scan as a whole: listing the process table, running the per-process
//! inspection ([`process`]) on a local rayon pool with per-thread buffers, merging the outcomes
//! into a [`ScanReport`], detecting `hidepid`, and reading the kernel lock table. The pure text
//! parsers live in [`parse`], the byte matching against roots and devices in [`matcher`], and
//! the spellings of the roots in other mount namespaces and chroots in [`namespace`].

mod matcher;
mod namespace;
mod parse;
mod process;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use crate::{FileLock, ScanError, ScanReport, ScanRequest};
use matcher::Matcher;
use namespace::Views;
use process::{Ctx, Outcome, Scratch};
use rayon::prelude::*;
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{openat, Mode, OFlags, RawDir, CWD};
use std::cell::RefCell;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Worker threads when the request leaves it open: the cost is syscalls, which scale with
/// cores up to a point, but a cache cleaner should not take over a big machine.
const MAX_DEFAULT_THREADS: usize = 8;

pub(crate) fn scan(request: &ScanRequest) -> Result<ScanReport, ScanError> {
    let list_error = |source: rustix::io::Errno| ScanError::ListProcesses {
        path: request.proc_root.clone(),
        source: source.into(),
    };
    let proc_fd = openat(
        CWD,
        request.proc_root.as_path(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(list_error)?;
    let mut pids = list_pids(&proc_fd).map_err(list_error)?;
    pids.retain(|p| !request.skip_pids.contains(p));

    let hidden =
        if rustix::process::geteuid().is_root() { None } else { hidepid(&proc_fd, &request.proc_root) };
    let matcher = Matcher::new(&request.roots, &request.devices);
    let views = Views::new(request.location.clone(), &request.roots);
    let own_mnt_ns =
        if matcher.has_devices() || views.has_location() { own_mount_namespace(&proc_fd) } else { None };
    let ctx = Ctx {
        matcher: &matcher,
        proc_fd: proc_fd.as_fd(),
        own_mnt_ns,
        views: &views,
        argv_of: &request.argv_of,
        hidepid: hidden.is_some(),
    };

    let threads = match request.threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from).min(MAX_DEFAULT_THREADS),
        n => n,
    };
    let run = || -> Vec<(u32, Outcome)> {
        pids.par_iter().map(|&pid| (pid, with_scratch(|s| process::inspect(&ctx, pid, s)))).collect()
    };
    let outcomes = match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
        Ok(pool) => pool.install(run),
        // No threads to be had: scan on this thread rather than fail.
        Err(_) => pids.iter().map(|&pid| (pid, with_scratch(|s| process::inspect(&ctx, pid, s)))).collect(),
    };

    let mut report = ScanReport { hidden, ..ScanReport::default() };
    for (_, outcome) in outcomes {
        match outcome {
            Outcome::Skipped => {}
            Outcome::Gone => report.gone += 1,
            Outcome::Inspected { record, uninspectable } => {
                report.scanned += 1;
                report.processes.extend(record);
                report.uninspectable.extend(uninspectable);
            }
        }
    }
    report.processes.sort_by_key(|p| p.pid);
    report.uninspectable.sort_by_key(|u| u.pid);
    Ok(report)
}

pub(crate) fn file_locks(proc_root: &Path) -> Vec<FileLock> {
    match std::fs::read(proc_root.join("locks")) {
        Ok(text) => parse::parse_locks(&text),
        Err(_) => Vec::new(),
    }
}

thread_local! {
    /// Per-worker buffers, reused for every process the worker inspects. They are freed when
    /// the scan's pool shuts down.
    static SCRATCH: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut slot) => f(slot.get_or_insert_with(Scratch::new)),
        // Re-entered (cannot happen today): fresh buffers rather than a panic.
        Err(_) => f(&mut Scratch::new()),
    })
}

/// The numeric entries of the procfs root.
fn list_pids(proc_fd: &OwnedFd) -> Result<Vec<u32>, rustix::io::Errno> {
    // Our own handle to the directory, so the listing starts at its beginning.
    let dir_fd = openat(proc_fd, c".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut pids = Vec::with_capacity(1024);
    let mut dir = RawDir::new(dir_fd.as_fd(), buf.spare_capacity_mut());
    while let Some(entry) = dir.next() {
        let entry = entry?;
        if let Some(pid) = parse::parse_dec(entry.file_name().to_bytes()) {
            if let Ok(pid) = u32::try_from(pid) {
                pids.push(pid);
            }
        }
    }
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

/// `readlink self/ns/mnt`, through the scanned procfs and else through `/proc`.
fn own_mount_namespace(proc_fd: &OwnedFd) -> Option<Vec<u8>> {
    rustix::fs::readlinkat(proc_fd, c"self/ns/mnt", Vec::new())
        .or_else(|_| rustix::fs::readlinkat(CWD, c"/proc/self/ns/mnt", Vec::new()))
        .ok()
        .map(|s| s.into_bytes())
}

/// A sentence when the procfs at `proc_root` is mounted with `hidepid`.
fn hidepid(proc_fd: &OwnedFd, proc_root: &Path) -> Option<String> {
    let mut text = Vec::new();
    let read = openat(proc_fd, c"self/mountinfo", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .or_else(|_| openat(CWD, c"/proc/self/mountinfo", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()))
        .and_then(|fd| read_to_end(&fd, &mut text));
    read.ok()?;
    let root = std::fs::canonicalize(proc_root).unwrap_or_else(|_| proc_root.to_path_buf());
    parse::hidepid_from_mountinfo(&text, root.as_os_str().as_bytes())
}

fn read_to_end(fd: &OwnedFd, buf: &mut Vec<u8>) -> Result<(), rustix::io::Errno> {
    loop {
        buf.reserve(16 * 1024);
        match rustix::io::read(fd, rustix::buffer::spare_capacity(buf)) {
            Ok(0) => return Ok(()),
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
}
