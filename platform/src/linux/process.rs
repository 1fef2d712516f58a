//! Inspection of one process through one held `/proc/PID` directory handle.
//!
//! The handle is opened once (`O_PATH|O_DIRECTORY`) and every later read is relative to it, so
//! a pid reused during the scan is never misread: once the process is gone the handle answers
//! `ESRCH`. Each source is read with as few syscalls as possible into per-thread buffers
//! ([`Scratch`]); nothing is allocated per open file except for hits. Every failure is
//! classified: gone (the process exited), denied (`EACCES`/`EPERM`) or another error, and a
//! process that could not be read completely is reported as uninspectable, never as idle.

use super::matcher::Matcher;
use super::namespace::{Aliases, Views};
use super::parse::{
    argv0_base, parse_maps_line, parse_stat, parse_status_uid, split_nul, strip_deleted, unescape_maps_path,
    StatInfo,
};
use crate::{Device, Evidence, ProcessRecord, Source, Uninspectable};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{openat, readlinkat_raw, statat, AtFlags, Mode, OFlags, RawDir};
use rustix::io::Errno;
use std::ffi::CStr;

/// What the scan needs to know besides the pid; shared by all workers.
pub(crate) struct Ctx<'a> {
    pub matcher: &'a Matcher,
    /// The procfs root directory, opened once.
    pub proc_fd: BorrowedFd<'a>,
    /// `readlink /proc/self/ns/mnt`, when known; only read when devices or a location are
    /// requested.
    pub own_mnt_ns: Option<Vec<u8>>,
    /// How processes in other mount namespaces or below a chroot spell the roots.
    pub views: &'a Views,
    pub argv_of: &'a [Vec<u8>],
    /// `/proc` is mounted with `hidepid` and we are not root.
    pub hidepid: bool,
}

/// The result for one pid.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Kernel thread or zombie: never holds user files, not counted.
    Skipped,
    /// Exited before or while being read.
    Gone,
    /// Looked at. `record` is set when there is evidence or argv was asked for;
    /// `uninspectable` when some source could not be read.
    Inspected { record: Option<ProcessRecord>, uninspectable: Option<Uninspectable> },
}

/// Buffers reused across processes by one worker thread.
pub(crate) struct Scratch {
    /// Whole-file reads (`stat`, `status`, `maps`, `mountinfo`).
    file: Vec<u8>,
    /// `environ`, kept until the process's view of paths is known.
    environ: Vec<u8>,
    /// `cmdline`, kept until the end because argv is only built when needed.
    cmdline: Vec<u8>,
    /// One symlink target (`readlinkat`); a page is the kernel's limit for these links.
    link: Vec<u8>,
    /// The process's cwd, to tell thread cwds that differ from it.
    cwd: Vec<u8>,
    /// `getdents64` buffer.
    dirbuf: Vec<u8>,
    /// The unescaped maps path of the current line.
    unescaped: Vec<u8>,
    /// Hits inside one environ value / argument.
    pieces: Vec<Vec<u8>>,
}

impl Scratch {
    pub(crate) fn new() -> Self {
        Self {
            file: Vec::with_capacity(64 * 1024),
            cmdline: Vec::with_capacity(4096),
            environ: Vec::with_capacity(16 * 1024),
            link: vec![0; 4096 + 1],
            cwd: Vec::with_capacity(256),
            dirbuf: Vec::with_capacity(32 * 1024),
            unescaped: Vec::with_capacity(256),
            pieces: Vec::new(),
        }
    }
}

/// How a failed syscall is to be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Gone,
    Denied,
    Other(Errno),
}

fn classify(e: Errno) -> Failure {
    match e {
        Errno::NOENT | Errno::SRCH => Failure::Gone,
        Errno::ACCESS | Errno::PERM => Failure::Denied,
        other => Failure::Other(other),
    }
}

fn errno_text(e: Errno) -> String {
    std::io::Error::from(e).to_string()
}

/// Reads a whole `/proc` file relative to `dir` into `buf` (cleared first).
fn read_at(dir: BorrowedFd<'_>, name: &CStr, buf: &mut Vec<u8>) -> Result<(), Errno> {
    buf.clear();
    let fd = openat(dir, name, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    read_all(fd.as_fd(), buf)
}

/// Like [`read_at`] for single-record files (`stat`, `status`): the kernel formats the whole
/// record and returns all of it to a large enough buffer, so a read that does not fill the
/// buffer is the end and the usual extra `read` that returns 0 is skipped.
fn read_small_at(dir: BorrowedFd<'_>, name: &CStr, buf: &mut Vec<u8>) -> Result<(), Errno> {
    buf.clear();
    let fd = openat(dir, name, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    if buf.capacity() < 16 * 1024 {
        buf.reserve(16 * 1024);
    }
    let room = buf.capacity();
    loop {
        match rustix::io::read(fd.as_fd(), rustix::buffer::spare_capacity(buf)) {
            Ok(n) if n < room => return Ok(()),
            Ok(_) => return read_all(fd.as_fd(), buf),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
}

fn read_all(fd: BorrowedFd<'_>, buf: &mut Vec<u8>) -> Result<(), Errno> {
    loop {
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(buf.capacity().max(16 * 1024));
        }
        match rustix::io::read(fd, rustix::buffer::spare_capacity(buf)) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// `readlinkat` into `buf` (grown when the target might have been truncated); returns the
/// target length.
fn readlink_at(dir: BorrowedFd<'_>, name: &CStr, buf: &mut Vec<u8>) -> Result<usize, Errno> {
    loop {
        if buf.is_empty() {
            buf.resize(4096 + 1, 0);
        }
        let n = readlinkat_raw(dir, name, buf.as_mut_slice())?;
        if n < buf.len() {
            return Ok(n);
        }
        // Links are at most a page long; on larger-page systems grow and retry.
        if buf.len() >= 1 << 20 {
            return Err(Errno::NAMETOOLONG);
        }
        let len = buf.len() * 2;
        buf.resize(len, 0);
    }
}

fn stat_dev_ino(dir: BorrowedFd<'_>, name: &CStr) -> Result<(Device, u64), Errno> {
    // Following the magic link reaches the real object even when its path means nothing in
    // our mount namespace.
    let st = statat(dir, name, AtFlags::empty())?;
    let dev = Device { major: rustix::fs::major(st.st_dev), minor: rustix::fs::minor(st.st_dev) };
    Ok((dev, st.st_ino))
}

/// `"<n>"` or `"<n>/<suffix>"` as a C string in a stack buffer (no allocation).
struct NameBuf {
    buf: [u8; 48],
}

impl NameBuf {
    fn new() -> Self {
        Self { buf: [0; 48] }
    }

    fn with(&mut self, n: u32, suffix: &[u8]) -> Option<&CStr> {
        let mut digits = [0u8; 10];
        let mut i = digits.len();
        let mut v = n;
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        let num = digits.get(i..)?;
        let total = num.len() + suffix.len();
        self.buf.get_mut(..num.len())?.copy_from_slice(num);
        self.buf.get_mut(num.len()..total)?.copy_from_slice(suffix);
        *self.buf.get_mut(total)? = 0;
        CStr::from_bytes_with_nul(self.buf.get(..=total)?).ok()
    }
}

/// Parses a directory entry name that is a decimal pid/tid/fd number.
fn entry_number(name: &CStr) -> Option<u32> {
    super::parse::parse_dec(name.to_bytes()).and_then(|v| u32::try_from(v).ok())
}

/// Everything learned about one process so far.
struct Findings {
    evidence: Vec<Evidence>,
    denied: Vec<Source>,
    /// Failures other than permission, as "source: error" texts.
    errors: Vec<String>,
    /// Some source said ENOENT/ESRCH: either the process is exiting or something is wrong.
    /// Settled by one liveness check at the end; the texts become errors if it is alive.
    gone_hints: Vec<String>,
    stat_denied: bool,
}

impl Findings {
    fn new() -> Self {
        Self {
            evidence: Vec::new(),
            denied: Vec::new(),
            errors: Vec::new(),
            gone_hints: Vec::new(),
            stat_denied: false,
        }
    }

    fn deny(&mut self, source: Source) {
        if !self.denied.contains(&source) {
            self.denied.push(source);
        }
    }

    /// Records a failure of `source` (`what` names the file for messages).
    fn fail(&mut self, source: Source, what: &str, e: Errno) {
        match classify(e) {
            Failure::Gone => self.gone_hints.push(format!("{what}: {}", errno_text(e))),
            Failure::Denied => self.deny(source),
            Failure::Other(e) => self.errors.push(format!("{what}: {}", errno_text(e))),
        }
    }

    /// Records one failure that leaves several sources unread.
    fn fail_all(&mut self, sources: &[Source], what: &str, e: Errno) {
        match classify(e) {
            Failure::Denied => sources.iter().for_each(|s| self.deny(*s)),
            _ => self.fail(sources.first().copied().unwrap_or(Source::Environ), what, e),
        }
    }

    fn add_some(&mut self, ev: Option<Evidence>) {
        if let Some(ev) = ev {
            self.add(ev);
        }
    }

    fn add(&mut self, ev: Evidence) {
        // Maps repeat a file once per segment and text may name a path twice; fds and thread
        // cwds are unique by their detail already.
        let dedupe = matches!(ev.source, Source::Map | Source::Environ | Source::Cmdline);
        if dedupe
            && self.evidence.iter().any(|e| {
                e.source == ev.source
                    && e.path == ev.path
                    && e.dev_ino == ev.dev_ino
                    && (ev.source == Source::Map || e.detail == ev.detail)
            })
        {
            return;
        }
        self.evidence.push(ev);
    }
}

fn by_path(source: Source, path: &[u8], detail: String) -> Evidence {
    Evidence { source, path: path.to_vec(), detail, dev_ino: None, by_path: true, original: None }
}

/// Evidence the process wrote under one of its own spellings (`theirs`), rewritten to ours.
fn aliased(
    aliases: &Aliases,
    source: Source,
    theirs: &[u8],
    detail: String,
    dev_ino: Option<(Device, u64)>,
) -> Option<Evidence> {
    let path = aliases.rewrite(theirs)?;
    Some(Evidence { source, path, detail, dev_ino, by_path: true, original: Some(theirs.to_vec()) })
}

/// The variable name of one `environ` entry (empty when it has no `=`).
fn env_name(entry: &[u8]) -> String {
    let name = memchr::memchr(b'=', entry).and_then(|eq| entry.get(..eq)).unwrap_or(&[]);
    String::from_utf8_lossy(name).into_owned()
}

/// Every path under a root in a NUL-separated block (`cmdline`: one argument per item;
/// `environ`: one variable, PATH-style lists giving one path per element), made into evidence
/// by `evidence(path, detail)`, where the detail names the argument or the variable.
fn match_block(
    matcher: &Matcher,
    source: Source,
    block: &[u8],
    pieces: &mut Vec<Vec<u8>>,
    f: &mut Findings,
    evidence: impl Fn(&[u8], String) -> Option<Evidence>,
) {
    if !matcher.text_may_match(block) {
        return;
    }
    for (i, item) in split_nul(block).enumerate() {
        pieces.clear();
        matcher.token_paths(item, pieces);
        for p in pieces.iter() {
            let detail = if source == Source::Cmdline { format!("argv[{i}]") } else { env_name(item) };
            f.add_some(evidence(p, detail));
        }
    }
}

/// The command line (`s.cmdline`) and, when it was read, the environment (`s.environ`) matched
/// against the process's own spellings of the roots.
fn match_aliased_text(aliases: &Aliases, environ_read: bool, s: &mut Scratch, f: &mut Findings) {
    let Scratch { cmdline, environ, pieces, .. } = s;
    let blocks =
        [(Source::Cmdline, &cmdline[..]), (Source::Environ, if environ_read { &environ[..] } else { &[] })];
    for (source, block) in blocks {
        match_block(&aliases.matcher, source, block, pieces, f, |p, detail| {
            aliased(aliases, source, p, detail, None)
        });
    }
}

/// Inspects one pid. Never panics; every failure becomes part of the outcome.
pub(crate) fn inspect(ctx: &Ctx<'_>, pid: u32, s: &mut Scratch) -> Outcome {
    let mut names = NameBuf::new();
    let Some(pid_name) = names.with(pid, b"") else {
        return Outcome::Gone;
    };
    let pid_dir = match openat(
        ctx.proc_fd,
        pid_name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(e) => {
            return match classify(e) {
                Failure::Gone => Outcome::Gone,
                Failure::Denied => Outcome::Inspected {
                    record: None,
                    uninspectable: Some(Uninspectable {
                        pid,
                        uid: None,
                        command: String::new(),
                        reason: if ctx.hidepid {
                            "hidden by hidepid".into()
                        } else {
                            "permission denied".into()
                        },
                        denied: Source::ALL.to_vec(),
                    }),
                },
                Failure::Other(e) => Outcome::Inspected {
                    record: None,
                    uninspectable: Some(Uninspectable {
                        pid,
                        uid: None,
                        command: String::new(),
                        reason: format!("cannot open the process directory: {}", errno_text(e)),
                        denied: Vec::new(),
                    }),
                },
            };
        }
    };
    let pid_dir = pid_dir.as_fd();
    let mut f = Findings::new();

    // stat: kernel thread? zombie? parent, threads, name.
    let stat: Option<StatInfo> = match read_small_at(pid_dir, c"stat", &mut s.file) {
        Ok(()) => match parse_stat(&s.file) {
            Some(st) => Some(st),
            None => {
                f.errors.push("stat: unreadable contents".into());
                None
            }
        },
        Err(e) => match classify(e) {
            // Nothing is known yet: a missing stat means the process is gone.
            Failure::Gone => return Outcome::Gone,
            Failure::Denied => {
                f.stat_denied = true;
                None
            }
            Failure::Other(e) => {
                f.errors.push(format!("stat: {}", errno_text(e)));
                None
            }
        },
    };
    if let Some(st) = &stat {
        if st.is_kernel_thread() {
            return Outcome::Skipped;
        }
    }

    // A zombie leader may still have live threads (the leader called pthread_exit): the
    // process then runs on, but the leader's links, fds and maps read as empty. Read them
    // through a live thread instead; only a zombie without other threads is skipped.
    let mut task_dir: Option<OwnedFd> = None;
    if stat.as_ref().is_some_and(StatInfo::is_zombie) {
        match live_thread_dir(pid_dir, pid, s) {
            Ok(Some(fd)) => task_dir = Some(fd),
            Ok(None) => return Outcome::Skipped,
            Err(e) => match classify(e) {
                Failure::Gone => return Outcome::Gone,
                _ => f.errors.push(format!("task: {}", errno_text(e))),
            },
        }
    }
    let base = task_dir.as_ref().map_or(pid_dir, |fd| fd.as_fd());

    // cmdline: every argument, empty ones included.
    match read_at(base, c"cmdline", &mut s.cmdline) {
        Ok(()) => {
            match_block(ctx.matcher, Source::Cmdline, &s.cmdline, &mut s.pieces, &mut f, |p, detail| {
                Some(by_path(Source::Cmdline, p, detail))
            })
        }
        Err(e) => f.fail(Source::Cmdline, "cmdline", e),
    }

    // environ: every value; PATH-style lists give one evidence per element under a root.
    let mut environ_read = false;
    match read_at(base, c"environ", &mut s.environ) {
        Ok(()) => {
            environ_read = true;
            match_block(ctx.matcher, Source::Environ, &s.environ, &mut s.pieces, &mut f, |p, detail| {
                Some(by_path(Source::Environ, p, detail))
            });
        }
        Err(e) => f.fail(Source::Environ, "environ", e),
    }

    // exe, cwd, root.
    let mut untrusted = false;
    s.cwd.clear();
    let mut cwd_known = false;
    // The root directory of a chrooted process (our spelling of it).
    let mut root_dir: Option<Vec<u8>> = None;
    for (source, name, what) in
        [(Source::Exe, c"exe", "exe"), (Source::Cwd, c"cwd", "cwd"), (Source::Root, c"root", "root")]
    {
        match readlink_at(base, name, &mut s.link) {
            Ok(n) => {
                let target = strip_deleted(s.link.get(..n).unwrap_or(&[]));
                if source == Source::Cwd {
                    s.cwd.extend_from_slice(target);
                    cwd_known = true;
                }
                if source == Source::Root && target != b"/" {
                    // A chroot: paths are relative to another root.
                    untrusted = true;
                    root_dir = Some(target.to_vec());
                }
                if ctx.matcher.path_matches(target) {
                    f.add(by_path(source, target, String::new()));
                }
            }
            Err(e) => match classify(e) {
                // A live process may have no exe (it was never set, or the mm is being torn
                // down): that is "no link", settled by the liveness check.
                Failure::Gone => f.gone_hints.push(format!("{what}: {}", errno_text(e))),
                _ => f.fail(source, what, e),
            },
        }
    }

    // Another mount namespace: paths may mean nothing here, so compare devices instead, and
    // read its environment and command line with that namespace's spellings of the roots.
    // One readlink per process; through `base`, as a zombie leader has no namespaces.
    let mut foreign_ns: Option<Vec<u8>> = None;
    if ctx.matcher.has_devices() || ctx.views.has_location() {
        match readlink_at(base, c"ns/mnt", &mut s.link) {
            Ok(n) => {
                let ns = s.link.get(..n).unwrap_or(&[]);
                // Our own namespace unknown: every namespace counts as another (its mountinfo
                // is read once; ours yields only the spellings we have).
                if ctx.own_mnt_ns.as_deref() != Some(ns) {
                    foreign_ns = Some(ns.to_vec());
                    untrusted = true;
                }
            }
            Err(e) => {
                // Unknown namespace: do the extra stats rather than miss a bind mount.
                untrusted = true;
                if ctx.views.has_location() {
                    // Its environment and command line may spell the roots in a way we
                    // cannot know: those sources are unread, not empty.
                    f.fail_all(&[Source::Environ, Source::Cmdline], "ns/mnt", e);
                }
            }
        }
    }
    let aliases = match ctx.views.aliases(
        foreign_ns.as_deref(),
        root_dir.as_deref(),
        |buf| read_at(base, c"mountinfo", buf),
        &mut s.file,
    ) {
        Ok(found) => found.filter(|a| !a.is_empty()),
        Err(e) => {
            f.fail_all(&[Source::Environ, Source::Cmdline], "mountinfo", e);
            None
        }
    };
    if let Some(aliases) = &aliases {
        match_aliased_text(aliases, environ_read, s, &mut f);
    }
    // Links, fd targets and maps paths are printed relative to our root, or, for a mount of
    // another namespace, to that namespace's root: the namespace's spellings apply to them
    // only when the process's root is that root (not chrooted).
    let path_aliases = aliases.as_deref().filter(|_| foreign_ns.is_some() && root_dir.is_none());
    if untrusted && ctx.matcher.has_devices() {
        for (source, name) in [(Source::Exe, c"exe"), (Source::Cwd, c"cwd"), (Source::Root, c"root")] {
            if f.evidence.iter().any(|e| e.source == source) {
                continue;
            }
            if let Ok((dev, ino)) = stat_dev_ino(base, name) {
                if ctx.matcher.device_matches(dev) {
                    let n = readlink_at(base, name, &mut s.link).unwrap_or(0);
                    let path = strip_deleted(s.link.get(..n).unwrap_or(&[])).to_vec();
                    f.add(Evidence {
                        source,
                        path,
                        detail: String::new(),
                        dev_ino: Some((dev, ino)),
                        by_path: false,
                        original: None,
                    });
                }
            }
        }
    }

    scan_fds(ctx, base, untrusted, s, &mut f);
    scan_maps(ctx, base, untrusted, path_aliases, s, &mut f);

    // Threads that unshared their filesystem state can have their own cwd.
    let threads = stat.as_ref().map_or(2, |st| st.num_threads);
    if threads > 1 {
        // Lend the cwd buffer out of the scratch (no copy) and put it back.
        let cwd = std::mem::take(&mut s.cwd);
        scan_thread_cwds(ctx, pid_dir, pid, cwd_known.then_some(&cwd[..]), untrusted, s, &mut f);
        s.cwd = cwd;
    }

    // Settle ENOENT/ESRCH: an exited process (or a zombie now) is gone; a live one had a
    // real failure, except for missing links, which a live process may lack.
    if !f.gone_hints.is_empty() {
        // Through `base`: for a zombie leader, the live thread we read from.
        let alive = match read_small_at(base, c"stat", &mut s.file) {
            // A zombie with other threads is a leader that exited mid-scan: still running.
            Ok(()) => parse_stat(&s.file).is_none_or(|st| !st.is_zombie() || st.num_threads > 1),
            Err(e) => classify(e) != Failure::Gone,
        };
        if !alive {
            return Outcome::Gone;
        }
        for hint in std::mem::take(&mut f.gone_hints) {
            let is_link = ["exe:", "cwd:", "root:"].iter().any(|p| hint.starts_with(p));
            if !is_link {
                f.errors.push(hint);
            }
        }
    }

    finish(ctx, pid, stat, pid_dir, s, f)
}

/// For a zombie leader: the directory of a live thread other than the leader, if any.
fn live_thread_dir(pid_dir: BorrowedFd<'_>, pid: u32, s: &mut Scratch) -> Result<Option<OwnedFd>, Errno> {
    let task = openat(pid_dir, c"task", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    s.dirbuf.clear();
    let mut dir = RawDir::new(task.as_fd(), s.dirbuf.spare_capacity_mut());
    while let Some(entry) = dir.next() {
        let entry = entry?;
        let Some(tid) = entry_number(entry.file_name()) else {
            continue;
        };
        if tid == pid {
            continue;
        }
        match openat(
            task.as_fd(),
            entry.file_name(),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => return Ok(Some(fd)),
            Err(Errno::NOENT | Errno::SRCH) => continue, // that thread just exited
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Every `fd/N` link. The fd directory handle is the `readlinkat` base, so no path is built.
fn scan_fds(ctx: &Ctx<'_>, base: BorrowedFd<'_>, untrusted: bool, s: &mut Scratch, f: &mut Findings) {
    let fd_dir =
        match openat(base, c"fd", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()) {
            Ok(fd) => fd,
            Err(e) => return f.fail(Source::Fd, "fd", e),
        };
    let stat_all = untrusted && ctx.matcher.has_devices();
    let Scratch { dirbuf, link, .. } = s;
    dirbuf.clear();
    // RawDir rather than Dir: no allocation per entry, and a getdents error (ESRCH/ENOENT when
    // the process exits) is reported instead of ending the listing silently.
    let mut dir = RawDir::new(fd_dir.as_fd(), dirbuf.spare_capacity_mut());
    while let Some(entry) = dir.next() {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => return f.fail(Source::Fd, "fd", e),
        };
        let name = entry.file_name();
        let Some(fd_num) = entry_number(name) else {
            continue; // "." and ".."
        };
        let n = match readlink_at(fd_dir.as_fd(), name, link) {
            Ok(n) => n,
            // The fd was closed since the listing.
            Err(Errno::NOENT) => continue,
            Err(e) => {
                f.fail(Source::Fd, "fd", e);
                if classify(e) == Failure::Gone {
                    return;
                }
                continue;
            }
        };
        let target = link.get(..n).unwrap_or(&[]);
        // Sockets, pipes and anon inodes ("socket:[N]", ...) are never files in a cache.
        if target.first() != Some(&b'/') {
            continue;
        }
        let target = strip_deleted(target);
        if ctx.matcher.path_matches(target) {
            f.add(by_path(Source::Fd, target, format!("fd {fd_num}")));
        } else if stat_all {
            if let Ok((dev, ino)) = stat_dev_ino(fd_dir.as_fd(), name) {
                if ctx.matcher.device_matches(dev) {
                    f.add(Evidence {
                        source: Source::Fd,
                        path: target.to_vec(),
                        detail: format!("fd {fd_num}"),
                        dev_ino: Some((dev, ino)),
                        by_path: false,
                        original: None,
                    });
                }
            }
        }
    }
}

/// Mapped files, parsed as bytes. A line that cannot be split is searched as free text
/// instead of being dropped.
///
/// `aliases`: the process's own spellings of the roots, which its maps paths use (another
/// mount namespace). On btrfs the maps device (the superblock's) is not the `st_dev` of the
/// cache, so for such a process the path is what catches a mapped cache file.
fn scan_maps(
    ctx: &Ctx<'_>,
    base: BorrowedFd<'_>,
    untrusted: bool,
    aliases: Option<&Aliases>,
    s: &mut Scratch,
    f: &mut Findings,
) {
    if let Err(e) = read_at(base, c"maps", &mut s.file) {
        return f.fail(Source::Map, "maps", e);
    }
    let by_dev = untrusted && ctx.matcher.has_devices();
    if !by_dev
        && !ctx.matcher.maps_may_match(&s.file)
        && !aliases.is_some_and(|a| a.matcher.maps_may_match(&s.file))
    {
        return;
    }
    let Scratch { file, unescaped, pieces, .. } = s;
    for line in file.split(|b| *b == b'\n') {
        if line.is_empty() {
            continue;
        }
        // A line whose columns cannot be read is searched as free text rather than dropped:
        // a misparse must never hide a mapped file.
        let parsed = parse_maps_line(line).filter(|m| m.dev.is_some() && m.inode.is_some());
        let Some(m) = parsed else {
            pieces.clear();
            ctx.matcher.token_paths(line, pieces);
            for p in pieces.iter() {
                f.add(by_path(Source::Map, p, String::from("unparsed line")));
            }
            if let Some(a) = aliases {
                pieces.clear();
                a.matcher.token_paths(line, pieces);
                for p in pieces.iter() {
                    f.add_some(aliased(a, Source::Map, p, String::from("unparsed line"), None));
                }
            }
            continue;
        };
        if m.path.is_empty() {
            continue;
        }
        unescape_maps_path(m.path, unescaped);
        let path = strip_deleted(unescaped);
        let dev_ino = match (m.dev, m.inode) {
            (Some(d), Some(i)) if i != 0 => Some((d, i)),
            _ => None,
        };
        let detail = String::from_utf8_lossy(m.range).into_owned();
        if ctx.matcher.path_matches(path) {
            f.add(Evidence {
                source: Source::Map,
                path: path.to_vec(),
                detail,
                dev_ino,
                by_path: true,
                original: None,
            });
        } else if let Some(ev) = aliases.and_then(|a| aliased(a, Source::Map, path, detail.clone(), dev_ino))
        {
            f.add(ev);
        } else if by_dev {
            if let Some((dev, ino)) = dev_ino {
                if ctx.matcher.device_matches(dev) {
                    f.add(Evidence {
                        source: Source::Map,
                        path: path.to_vec(),
                        detail,
                        dev_ino: Some((dev, ino)),
                        by_path: false,
                        original: None,
                    });
                }
            }
        }
    }
}

/// `task/TID/cwd` of every thread but the leader, reported when it differs from the
/// process's cwd.
fn scan_thread_cwds(
    ctx: &Ctx<'_>,
    pid_dir: BorrowedFd<'_>,
    pid: u32,
    process_cwd: Option<&[u8]>,
    untrusted: bool,
    s: &mut Scratch,
    f: &mut Findings,
) {
    let task =
        match openat(pid_dir, c"task", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()) {
            Ok(fd) => fd,
            Err(e) => return f.fail(Source::ThreadCwd, "task", e),
        };
    let by_dev = untrusted && ctx.matcher.has_devices();
    let Scratch { dirbuf, link, .. } = s;
    dirbuf.clear();
    let mut names = NameBuf::new();
    let mut dir = RawDir::new(task.as_fd(), dirbuf.spare_capacity_mut());
    while let Some(entry) = dir.next() {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => return f.fail(Source::ThreadCwd, "task", e),
        };
        let Some(tid) = entry_number(entry.file_name()) else {
            continue;
        };
        if tid == pid {
            continue;
        }
        let Some(name) = names.with(tid, b"/cwd") else {
            continue;
        };
        let n = match readlink_at(task.as_fd(), name, link) {
            Ok(n) => n,
            // The thread exited (or is exiting); the others are still worth reading.
            Err(Errno::NOENT | Errno::SRCH) => continue,
            Err(e) => {
                f.fail(Source::ThreadCwd, "thread cwd", e);
                continue;
            }
        };
        let target = strip_deleted(link.get(..n).unwrap_or(&[]));
        if process_cwd == Some(target) {
            continue;
        }
        if ctx.matcher.path_matches(target) {
            f.add(by_path(Source::ThreadCwd, target, format!("tid {tid}")));
        } else if by_dev {
            if let Ok((dev, ino)) = stat_dev_ino(task.as_fd(), name) {
                if ctx.matcher.device_matches(dev) {
                    f.add(Evidence {
                        source: Source::ThreadCwd,
                        path: target.to_vec(),
                        detail: format!("tid {tid}"),
                        dev_ino: Some((dev, ino)),
                        by_path: false,
                        original: None,
                    });
                }
            }
        }
    }
}

/// Builds the outcome from what was found.
fn finish(
    ctx: &Ctx<'_>,
    pid: u32,
    stat: Option<StatInfo>,
    pid_dir: BorrowedFd<'_>,
    s: &mut Scratch,
    f: Findings,
) -> Outcome {
    let command = stat.as_ref().map(|st| String::from_utf8_lossy(&st.comm).into_owned()).unwrap_or_default();
    let ppid = stat.as_ref().map_or(0, |st| st.ppid);

    let argv0 = split_nul(&s.cmdline).next().unwrap_or(&[]);
    let wanted = ctx.argv_of.iter().any(|name| name.as_slice() == argv0_base(argv0));
    let uninspected = !f.denied.is_empty() || !f.errors.is_empty() || f.stat_denied;
    if f.evidence.is_empty() && !wanted && !uninspected {
        return Outcome::Inspected { record: None, uninspectable: None };
    }

    // The real uid, from status (readable for every user's processes). Read only for
    // processes that are reported: most are not, and status is costly to generate.
    // A process exiting just now keeps its report: reporting more is the safe side.
    let uid = match read_small_at(pid_dir, c"status", &mut s.file) {
        Ok(()) => parse_status_uid(&s.file),
        Err(_) => None,
    };
    let record = if !f.evidence.is_empty() || wanted {
        Some(ProcessRecord {
            pid,
            ppid,
            // status is readable for everyone; if it was not, the owner of /proc/PID (the
            // effective uid of a dumpable process) is the best remaining answer.
            uid: uid.or_else(|| rustix::fs::fstat(pid_dir).ok().map(|st| st.st_uid)).unwrap_or(u32::MAX),
            command: command.clone(),
            argv: split_nul(&s.cmdline).map(<[u8]>::to_vec).collect(),
            evidence: f.evidence,
            denied: f.denied.clone(),
        })
    } else {
        None
    };

    let uninspectable = if !uninspected {
        None
    } else {
        let denied_reason =
            if ctx.hidepid && f.stat_denied { "hidden by hidepid" } else { "permission denied" };
        let reason = match (f.denied.is_empty() && !f.stat_denied, f.errors.is_empty()) {
            (false, true) => denied_reason.to_string(),
            (false, false) => format!("{denied_reason}; {}", f.errors.join("; ")),
            (true, _) => f.errors.join("; "),
        };
        let mut denied = f.denied;
        denied.sort();
        Some(Uninspectable { pid, uid, command, reason, denied })
    };
    Outcome::Inspected { record, uninspectable }
}
