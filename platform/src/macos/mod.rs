//! macOS backend: one pass over `proc_listallpids`, every process read through libproc and
//! `KERN_PROCARGS2` (research: `introspection.md` §5.3).
//!
//! Per pid, cheapest and most permissive first:
//!
//! 1. `PROC_PIDTASKALLINFO`: ppid, uid, `comm`, flags, thread count. Needs the same uid (or
//!    root); on EPERM the identity comes from `PROC_PIDT_SHORTBSDINFO`, which has no
//!    same-user check, and the same-user sources are reported as denied.
//! 2. `proc_pidpath` (exe; no same-user check).
//! 3. `KERN_PROCARGS2` (argv, environment, and the path given to `execve`).
//! 4. `PROC_PIDVNODEPATHINFO` (cwd and root directory).
//! 5. `PROC_PIDLISTFDS` + `proc_pidfdinfo(PROC_PIDFDVNODEPATHINFO)` for every vnode fd.
//! 6. Mapped files: `PROC_PIDREGIONPATHINFO2` (private flavor 22, vnode-backed regions only),
//!    or the documented `PROC_PIDREGIONPATHINFO` (8) when a probe on our own pid at startup
//!    shows 22 does not work. If neither works, maps are reported as denied for every process
//!    rather than silently treated as "no regions".
//! 7. When `PROC_FLAG_THCWD` is set: `PROC_PIDLISTTHREADS` + `PROC_PIDTHREADPATHINFO` for
//!    each thread (a thread that exits meanwhile is skipped, not the process).
//!
//! Every vnode record carries `vst_dev`/`vst_ino`, so dev/inode evidence comes with every
//! path. The system calls live in [`sys`]; every decision (errno meaning, growth, matching,
//! the report entries) is in `crate::darwin_logic` and `crate::procargs`, which are tested on
//! every OS.
#![allow(unsafe_code)]

mod sys;

use crate::darwin_abi::{
    ProcBsdShortInfo, ProcFdInfo, ProcRegionWithPathInfo, ProcTaskAllInfo, ProcThreadWithPathInfo,
    ProcVnodePathInfo, VnodeFdInfoWithPath, PROC_FLAG_THCWD, PROC_PIDFDVNODEPATHINFO, PROC_PIDLISTFDS,
    PROC_PIDLISTTHREADS, PROC_PIDPATHINFO_MAXSIZE, PROC_PIDREGIONPATHINFO, PROC_PIDREGIONPATHINFO2,
    PROC_PIDTASKALLINFO, PROC_PIDTHREADPATHINFO, PROC_PIDT_SHORTBSDINFO, PROC_PIDVNODEPATHINFO,
    PROX_FDTYPE_VNODE, SZOMB,
};
use crate::darwin_logic::{
    choose_region_flavor, classify_errno, describe_errno, exe_failure, fd_error, next_region_address,
    procargs_failure, region_error, source_failure, thread_error, ErrClass, ExeFailure, Failure, FdStep,
    Matcher, ProcessScan, RegionStep, RegionStop, ThreadStep, E_TOO_LARGE, MAX_REGIONS, PERMISSION_DENIED,
};
use crate::{procargs, ScanError, ScanReport, ScanRequest, Source};
use rayon::prelude::*;
use std::path::PathBuf;
use std::sync::OnceLock;

/// Upper bounds for the grow-and-retry lists (far above real systems; they only stop a
/// runaway loop and keep byte lengths inside `c_int`).
const MAX_PIDS: usize = 1 << 22;
const MAX_FDS: usize = 1 << 22;
const MAX_THREADS: usize = 1 << 20;
/// `ARG_MAX` of old macOS releases; used only if `kern.argmax` cannot be read. Smaller than
/// today's 1 MiB, so the kernel never rejects the buffer; a longer argument area is then
/// reported as unreadable, not misread.
const FALLBACK_ARGMAX: usize = 256 * 1024;
/// Worker threads when the request says 0.
const MAX_DEFAULT_THREADS: usize = 8;

/// The region flavor, probed once per process lifetime.
static REGION_FLAVOR: OnceLock<Option<i32>> = OnceLock::new();
static ARGMAX: OnceLock<usize> = OnceLock::new();

/// Everything computed once per scan.
struct Ctx {
    matcher: Matcher,
    our_euid: u32,
    region_flavor: Option<i32>,
    argmax: usize,
}

/// Per-worker buffers, reused for every pid (the vnode structures are 1-2 KiB each).
struct Scratch {
    path: Box<[u8; PROC_PIDPATHINFO_MAXSIZE]>,
    vnodes: Box<ProcVnodePathInfo>,
    fds: Vec<ProcFdInfo>,
    fd: Box<VnodeFdInfoWithPath>,
    region: Box<ProcRegionWithPathInfo>,
    threads: Vec<u64>,
    thread: Box<ProcThreadWithPathInfo>,
    args: Vec<u8>,
}

impl Scratch {
    fn new() -> Self {
        Self {
            path: Box::new([0; PROC_PIDPATHINFO_MAXSIZE]),
            vnodes: Box::new(ProcVnodePathInfo::ZERO),
            fds: Vec::new(),
            fd: Box::new(VnodeFdInfoWithPath::ZERO),
            region: Box::new(ProcRegionWithPathInfo::ZERO),
            threads: Vec::new(),
            thread: Box::new(ProcThreadWithPathInfo::ZERO),
            args: Vec::new(),
        }
    }
}

/// How the inspection of one pid ended.
enum Outcome {
    Done(ProcessScan),
    Ended(Ended),
}

/// Why a pid yielded nothing (the small error type of the per-pid steps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Exited before or while being read.
    Gone,
    /// Exited, not yet reaped: nothing to read, not counted.
    Zombie,
}

pub(crate) fn scan(request: &ScanRequest) -> Result<ScanReport, ScanError> {
    let mut pids = Vec::new();
    sys::list_pids(&mut pids, MAX_PIDS).map_err(|e| ScanError::ListProcesses {
        path: PathBuf::from("proc_listallpids"),
        source: if e > 0 {
            std::io::Error::from_raw_os_error(e)
        } else {
            std::io::Error::other(describe_errno("process list", e))
        },
    })?;
    // pid 0 is kernel_task: no user memory, no files of its own. Our own pid stays, as on
    // Linux: a safe-prune run from the cache (`uvx safe-prune` from `archive-v0/<id>`) is
    // evidence for that environment; callers that want it gone say so in `skip_pids`.
    pids.retain(|&p| u32::try_from(p).is_ok_and(|p| p != 0 && !request.skip_pids.contains(&p)));
    pids.sort_unstable();
    pids.dedup();

    let ctx = Ctx {
        matcher: Matcher::new(request),
        our_euid: sys::geteuid(),
        region_flavor: *REGION_FLAVOR.get_or_init(probe_region_flavor),
        argmax: *ARGMAX.get_or_init(|| sys::argmax().unwrap_or(FALLBACK_ARGMAX)),
    };
    let threads = match request.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_DEFAULT_THREADS),
        n => n,
    };
    let outcomes: Vec<Outcome> = match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
        Ok(pool) => {
            pool.install(|| pids.par_iter().map_init(Scratch::new, |s, &pid| inspect(pid, &ctx, s)).collect())
        }
        Err(_) => {
            let mut s = Scratch::new();
            pids.iter().map(|&pid| inspect(pid, &ctx, &mut s)).collect()
        }
    };

    let mut report = ScanReport::default();
    for outcome in outcomes {
        match outcome {
            Outcome::Ended(Ended::Zombie) => {}
            // Like the Linux backend: `scanned` counts processes that stayed to be read.
            Outcome::Ended(Ended::Gone) => report.gone += 1,
            Outcome::Done(ps) => {
                report.scanned += 1;
                let (record, uninspectable) = ps.finish();
                report.processes.extend(record);
                report.uninspectable.extend(uninspectable);
            }
        }
    }
    Ok(report)
}

/// Probe the region flavors on our own pid, which certainly has vnode-backed mappings (our
/// executable, dyld). Flavor 22 must return a full record with a size and a path; else the
/// documented flavor 8 must return a full record.
fn probe_region_flavor() -> Option<i32> {
    let me = i32::try_from(std::process::id()).ok()?;
    let mut r = Box::new(ProcRegionWithPathInfo::ZERO);
    let private_ok = sys::pidinfo(me, PROC_PIDREGIONPATHINFO2, 0, &mut *r).is_ok()
        && r.prp_prinfo.pri_size > 0
        && !r.prp_vip.path().is_empty();
    let documented_ok = !private_ok && {
        let mut r = Box::new(ProcRegionWithPathInfo::ZERO);
        sys::pidinfo(me, PROC_PIDREGIONPATHINFO, 0, &mut *r).is_ok() && r.prp_prinfo.pri_size > 0
    };
    choose_region_flavor(private_ok, documented_ok)
}

/// Whether `pid` still exists (as a live, non-zombie process). Uses the privilege-free short
/// info; an error other than ESRCH/ENOENT counts as alive, so doubt never drops evidence.
fn alive(pid: i32) -> bool {
    let mut info = ProcBsdShortInfo::ZERO;
    match sys::pidinfo(pid, PROC_PIDT_SHORTBSDINFO, 0, &mut info) {
        Ok(()) => info.pbsi_status != SZOMB,
        Err(e) => classify_errno(e) != ErrClass::Gone,
    }
}

/// Zombies are invisible to every flavor except the bsd-info ones with a non-zero `arg`
/// (`findzomb` in `proc_pidinfo_internal`).
fn is_zombie(pid: i32) -> bool {
    let mut info = ProcBsdShortInfo::ZERO;
    sys::pidinfo(pid, PROC_PIDT_SHORTBSDINFO, 1, &mut info).is_ok() && info.pbsi_status == SZOMB
}

fn gone_or_zombie(pid: i32) -> Ended {
    if is_zombie(pid) {
        Ended::Zombie
    } else {
        Ended::Gone
    }
}

fn inspect(pid: i32, ctx: &Ctx, s: &mut Scratch) -> Outcome {
    match inspect_pid(pid, ctx, s) {
        Ok(ps) => Outcome::Done(ps),
        Err(ended) => Outcome::Ended(ended),
    }
}

/// Record a failed source read, or end the pid if it turned out to be gone.
fn failed(ps: &mut ProcessScan, pid: i32, sources: &[Source], what: &str, errno: i32) -> Result<(), Ended> {
    match source_failure(what, errno, || alive(pid)) {
        Failure::ProcessGone => Err(Ended::Gone),
        Failure::Deny(reason) => {
            ps.deny(sources, &reason);
            Ok(())
        }
    }
}

fn inspect_pid(pid: i32, ctx: &Ctx, s: &mut Scratch) -> Result<ProcessScan, Ended> {
    let pid_u32 = u32::try_from(pid).unwrap_or(0);
    let m = &ctx.matcher;
    let mut ps = ProcessScan::new(pid_u32);

    // 1. Identity, flags, thread count.
    let mut all = ProcTaskAllInfo::ZERO;
    let (full, target_euid) = match sys::pidinfo(pid, PROC_PIDTASKALLINFO, 0, &mut all) {
        Ok(()) if all.pbsd.pbi_status == SZOMB => return Err(Ended::Zombie),
        Ok(()) => {
            ps.identity(all.pbsd.pbi_ppid, all.pbsd.pbi_ruid, &all.pbsd.pbi_comm);
            (true, Some(all.pbsd.pbi_uid))
        }
        Err(e) => {
            let class = classify_errno(e);
            if class == ErrClass::Gone {
                return Err(gone_or_zombie(pid));
            }
            let mut short = ProcBsdShortInfo::ZERO;
            let euid = match sys::pidinfo(pid, PROC_PIDT_SHORTBSDINFO, 0, &mut short) {
                Ok(()) => {
                    ps.identity(short.pbsi_ppid, short.pbsi_ruid, &short.pbsi_comm);
                    Some(short.pbsi_uid)
                }
                Err(e2) if classify_errno(e2) == ErrClass::Gone => {
                    return Err(gone_or_zombie(pid));
                }
                Err(_) => None,
            };
            let reason = match class {
                ErrClass::Denied => PERMISSION_DENIED.to_string(),
                _ => describe_errno("process info", e),
            };
            // Everything that needs the same uid; exe and arguments are still tried below.
            ps.deny(&[Source::Cwd, Source::Root, Source::ThreadCwd, Source::Fd, Source::Map], &reason);
            (false, euid)
        }
    };

    // 2. Executable.
    match sys::pidpath(pid, &mut s.path) {
        Ok(path) => ps.path(m, Source::Exe, path, None, String::new),
        Err(e) => match exe_failure(e, || alive(pid)) {
            ExeFailure::ProcessGone => return Err(Ended::Gone),
            ExeFailure::NoPath => {}
            ExeFailure::Deny(reason) => ps.deny(&[Source::Exe], &reason),
        },
    }

    // 3. Arguments and environment.
    match sys::procargs(pid, &mut s.args, ctx.argmax) {
        Ok(n) => {
            let args = procargs::parse(&s.args[..n]);
            ps.procargs(m, &args);
        }
        Err(e) => match procargs_failure(e, || alive(pid), target_euid, ctx.our_euid) {
            Failure::ProcessGone => return Err(Ended::Gone),
            Failure::Deny(reason) => ps.deny(&[Source::Cmdline, Source::Environ], &reason),
        },
    }

    if !full {
        return Ok(ps);
    }

    // 4. cwd and root.
    match sys::pidinfo(pid, PROC_PIDVNODEPATHINFO, 0, &mut *s.vnodes) {
        Ok(()) => {
            let v = &*s.vnodes;
            for (source, vip) in [(Source::Cwd, &v.pvi_cdir), (Source::Root, &v.pvi_rdir)] {
                if vip.is_present() {
                    ps.vnode(m, source, vip.path(), vip.dev(), vip.ino(), String::new);
                }
            }
        }
        Err(e) => failed(&mut ps, pid, &[Source::Cwd, Source::Root], "cwd and root", e)?,
    }

    // 5. Open files.
    walk_fds(pid, m, s, &mut ps)?;

    // 6. Mapped files.
    walk_regions(pid, ctx, s, &mut ps)?;

    // 7. Per-thread working directories.
    if all.pbsd.pbi_flags & PROC_FLAG_THCWD != 0 {
        walk_threads(pid, m, s, &mut ps, all.ptinfo.pti_threadnum)?;
    }

    Ok(ps)
}

fn walk_fds(pid: i32, m: &Matcher, s: &mut Scratch, ps: &mut ProcessScan) -> Result<(), Ended> {
    const WHAT: &str = "open files";
    let hint = match sys::list_hint(pid, PROC_PIDLISTFDS) {
        Ok(h) => h,
        Err(e) => return failed(ps, pid, &[Source::Fd], WHAT, e),
    };
    let start = hint / std::mem::size_of::<ProcFdInfo>() + 16;
    if let Err(e) = sys::pidinfo_list(pid, PROC_PIDLISTFDS, &mut s.fds, start, MAX_FDS) {
        return failed(ps, pid, &[Source::Fd], WHAT, e);
    }
    for fdi in &s.fds {
        if fdi.proc_fdtype != PROX_FDTYPE_VNODE {
            continue;
        }
        let fd = fdi.proc_fd;
        match sys::pidfdinfo(pid, fd, PROC_PIDFDVNODEPATHINFO, &mut *s.fd) {
            Ok(()) => {
                let v = &s.fd.pvip;
                ps.vnode(m, Source::Fd, v.path(), v.dev(), v.ino(), || format!("fd {fd}"));
            }
            Err(e) => match fd_error(e) {
                FdStep::SkipFd => {}
                FdStep::MaybeGone if !alive(pid) => return Err(Ended::Gone),
                FdStep::MaybeGone => ps.deny(&[Source::Fd], &describe_errno(WHAT, e)),
                FdStep::Denied => ps.deny(&[Source::Fd], PERMISSION_DENIED),
                FdStep::Other(e) => ps.deny(&[Source::Fd], &describe_errno(WHAT, e)),
            },
        }
    }
    Ok(())
}

/// Walk the mapped regions from address 0, `addr = pri_address + pri_size`, until EINVAL.
///
/// Residual risk, accepted: flavor 22 also answers EINVAL when the vnode of the next region
/// is being reclaimed at that instant (`proc_pidregionpathinfo2`), which ends the walk early.
/// A mapped file holds its vnode, so that only happens on a forced unmount or revoke.
fn walk_regions(pid: i32, ctx: &Ctx, s: &mut Scratch, ps: &mut ProcessScan) -> Result<(), Ended> {
    const WHAT: &str = "memory regions";
    let Some(flavor) = ctx.region_flavor else {
        ps.deny(&[Source::Map], "memory regions unreadable on this system");
        return Ok(());
    };
    let mut addr: u64 = 0;
    for _ in 0..MAX_REGIONS {
        match sys::pidinfo(pid, flavor, addr, &mut *s.region) {
            Ok(()) => {
                let info = s.region.prp_prinfo;
                let v = &s.region.prp_vip;
                if v.is_present() {
                    let start = info.pri_address;
                    let end = start.saturating_add(info.pri_size);
                    ps.vnode(&ctx.matcher, Source::Map, v.path(), v.dev(), v.ino(), || {
                        format!("{start:x}-{end:x}")
                    });
                }
                match next_region_address(addr, info.pri_address, info.pri_size) {
                    RegionStep::Next(next) => addr = next,
                    RegionStep::Done => return Ok(()),
                }
            }
            Err(e) => {
                match region_error(e) {
                    RegionStop::End => {}
                    RegionStop::MaybeGone if !alive(pid) => return Err(Ended::Gone),
                    RegionStop::MaybeGone => ps.deny(&[Source::Map], &describe_errno(WHAT, e)),
                    RegionStop::Denied => ps.deny(&[Source::Map], PERMISSION_DENIED),
                    RegionStop::Other(e) => ps.deny(&[Source::Map], &describe_errno(WHAT, e)),
                }
                return Ok(());
            }
        }
    }
    ps.deny(&[Source::Map], &describe_errno(WHAT, E_TOO_LARGE));
    Ok(())
}

fn walk_threads(
    pid: i32,
    m: &Matcher,
    s: &mut Scratch,
    ps: &mut ProcessScan,
    thread_count: i32,
) -> Result<(), Ended> {
    let start = usize::try_from(thread_count).unwrap_or(0) + 16;
    if let Err(e) = sys::pidinfo_list(pid, PROC_PIDLISTTHREADS, &mut s.threads, start, MAX_THREADS) {
        return failed(ps, pid, &[Source::ThreadCwd], "thread list", e);
    }
    // The list holds each thread's `cthread_self` (its pthread handle), which is also what
    // PROC_PIDTHREADPATHINFO takes; it is not a thread id, hence "thread 0x...".
    for &thread in &s.threads {
        match sys::pidinfo(pid, PROC_PIDTHREADPATHINFO, thread, &mut *s.thread) {
            Ok(()) => {
                let v = &s.thread.pvip;
                if v.is_present() {
                    ps.vnode(m, Source::ThreadCwd, v.path(), v.dev(), v.ino(), || {
                        format!("thread {thread:#x}")
                    });
                }
            }
            Err(e) => match thread_error(e) {
                ThreadStep::SkipThread => {}
                ThreadStep::Denied => ps.deny(&[Source::ThreadCwd], PERMISSION_DENIED),
                ThreadStep::Other(e) => {
                    ps.deny(&[Source::ThreadCwd], &describe_errno("thread cwd", e));
                }
            },
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
