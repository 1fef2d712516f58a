//! Everything in the macOS backend that is a decision rather than a system call: errno
//! classification, buffer growth, region-walk arithmetic, device numbers, path / environment /
//! command-line matching, and turning one process's observations into a [`ProcessRecord`] and
//! [`Uninspectable`].
//!
//! Pure and compiled on every OS so that it is unit-tested on Linux too; `crate::macos` only
//! makes the calls and feeds the results in here. Errno values are Darwin's
//! (`crate::darwin_abi`), never the host's.
#![cfg_attr(not(target_os = "macos"), allow(dead_code))]

use crate::darwin_abi::{EACCES, EBADF, EINVAL, ENOENT, EPERM, ESRCH};
use crate::procargs::ProcArgs;
use crate::{under_root, Device, Evidence, ProcessRecord, ScanRequest, Source, Uninspectable};
use memchr::memmem;

/// Pseudo-errno: the call succeeded but returned a size other than the structure's.
pub(crate) const E_SHORT_REPLY: i32 = -1;
/// Pseudo-errno: a list or buffer kept growing past our limit.
pub(crate) const E_TOO_LARGE: i32 = -2;

/// Stop a region walk after this many regions and report maps as unreadable: a real process
/// has a few thousand vnode-backed regions; this only guards against a walk that never ends.
pub(crate) const MAX_REGIONS: usize = 1 << 20;

/// The reason string for sources refused by the kernel (EPERM/EACCES).
pub(crate) const PERMISSION_DENIED: &str = "permission denied";
/// The reason string when `KERN_PROCARGS2` gives the arguments but withholds the environment.
pub(crate) const ENVIRONMENT_UNAVAILABLE: &str = "environment unavailable";

/// What an errno from a per-process call means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrClass {
    /// The process (or the object) no longer exists: ESRCH, ENOENT.
    Gone,
    /// The kernel refused: EPERM, EACCES.
    Denied,
    /// Anything else; the source counts as unreadable.
    Other(i32),
}

pub(crate) fn classify_errno(errno: i32) -> ErrClass {
    match errno {
        ESRCH | ENOENT => ErrClass::Gone,
        EPERM | EACCES => ErrClass::Denied,
        e => ErrClass::Other(e),
    }
}

/// Human text for an unexpected errno (numbers, not `strerror`, so the text is the same
/// whatever OS renders it).
pub(crate) fn describe_errno(what: &str, errno: i32) -> String {
    match errno {
        E_SHORT_REPLY => format!("{what}: unexpected reply size"),
        E_TOO_LARGE => format!("{what}: too large to read"),
        0 => format!("{what}: failed without an error code"),
        e => format!("{what}: errno {e}"),
    }
}

/// What to do after a per-source call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The whole process exited: count it as gone, drop what was collected.
    ProcessGone,
    /// Mark the source(s) unreadable with this reason.
    Deny(String),
}

/// Classify a failed per-source call. ESRCH/ENOENT from a secondary call may mean the process
/// exited, or that only the object vanished (a recycled cwd vnode, a deleted executable); so
/// `alive` is asked (a cheap privilege-free call) before the process is written off. An alive
/// process never loses a source silently: it is denied instead.
pub(crate) fn source_failure(what: &str, errno: i32, alive: impl FnOnce() -> bool) -> Failure {
    match classify_errno(errno) {
        ErrClass::Gone if !alive() => Failure::ProcessGone,
        ErrClass::Gone => Failure::Deny(describe_errno(what, errno)),
        ErrClass::Denied => Failure::Deny(PERMISSION_DENIED.to_string()),
        ErrClass::Other(e) => Failure::Deny(describe_errno(what, e)),
    }
}

/// A failed `proc_pidpath`. The kernel answers ESRCH/ENOENT for a live process whose
/// executable was deleted or whose volume is going away (`proc_pidpathinfo_internal`); there
/// is then no path to match, and the text mapping still carries the file's dev/inode for the
/// map walk, so that case is not a denial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ExeFailure {
    ProcessGone,
    NoPath,
    Deny(String),
}

pub(crate) fn exe_failure(errno: i32, alive: impl FnOnce() -> bool) -> ExeFailure {
    match classify_errno(errno) {
        ErrClass::Gone if !alive() => ExeFailure::ProcessGone,
        ErrClass::Gone => ExeFailure::NoPath,
        ErrClass::Denied => ExeFailure::Deny(PERMISSION_DENIED.to_string()),
        ErrClass::Other(e) => ExeFailure::Deny(describe_errno("executable path", e)),
    }
}

/// A failed `KERN_PROCARGS2` sysctl. The kernel uses EINVAL for "no such process", for
/// "another user's process and you are not root", and for a process without a user stack or
/// with a dying task (`sysctl_procargsx`), so EINVAL is resolved with liveness and uids.
pub(crate) fn procargs_failure(
    errno: i32,
    alive: impl FnOnce() -> bool,
    target_euid: Option<u32>,
    our_euid: u32,
) -> Failure {
    match errno {
        EINVAL | ESRCH | ENOENT => {
            if !alive() {
                Failure::ProcessGone
            } else if errno == EINVAL && our_euid != 0 && target_euid != Some(our_euid) {
                Failure::Deny(PERMISSION_DENIED.to_string())
            } else {
                Failure::Deny(describe_errno("arguments", errno))
            }
        }
        EPERM | EACCES => Failure::Deny(PERMISSION_DENIED.to_string()),
        e => Failure::Deny(describe_errno("arguments", e)),
    }
}

/// What one failed `proc_pidfdinfo(PROC_PIDFDVNODEPATHINFO)` means for the fd walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FdStep {
    /// EBADF: closed (or no longer a vnode) since the listing. ENOENT: the vnode was recycled
    /// (revoked / forced unmount); nothing live to protect.
    SkipFd,
    /// ESRCH: the process may be gone (check liveness).
    MaybeGone,
    Denied,
    Other(i32),
}

pub(crate) fn fd_error(errno: i32) -> FdStep {
    match errno {
        EBADF | ENOENT => FdStep::SkipFd,
        ESRCH => FdStep::MaybeGone,
        EPERM | EACCES => FdStep::Denied,
        e => FdStep::Other(e),
    }
}

/// What one failed `PROC_PIDTHREADPATHINFO` means for the thread walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ThreadStep {
    /// ESRCH/EINVAL: the thread exited after the listing. Skip that thread only; Lix dropped
    /// the whole process here.
    SkipThread,
    Denied,
    Other(i32),
}

pub(crate) fn thread_error(errno: i32) -> ThreadStep {
    match errno {
        ESRCH | EINVAL => ThreadStep::SkipThread,
        EPERM | EACCES => ThreadStep::Denied,
        e => ThreadStep::Other(e),
    }
}

/// What a failed region query means for the region walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RegionStop {
    /// EINVAL: no (vnode-backed) region at or after the address: the walk is complete.
    End,
    /// ESRCH: the process may be gone.
    MaybeGone,
    Denied,
    Other(i32),
}

pub(crate) fn region_error(errno: i32) -> RegionStop {
    match errno {
        EINVAL => RegionStop::End,
        ESRCH => RegionStop::MaybeGone,
        EPERM | EACCES => RegionStop::Denied,
        e => RegionStop::Other(e),
    }
}

/// Where the region walk goes after the kernel described `[pri_address, pri_address+pri_size)`
/// for a query at `queried`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RegionStep {
    Next(u64),
    /// The region reaches the top of the address space.
    Done,
}

/// `addr = pri_address + pri_size`, with an overflow check, and always strictly forward so a
/// zero-sized or out-of-order answer cannot loop forever.
pub(crate) fn next_region_address(queried: u64, pri_address: u64, pri_size: u64) -> RegionStep {
    let Some(end) = pri_address.checked_add(pri_size) else {
        return RegionStep::Done;
    };
    let Some(min_next) = queried.checked_add(1) else {
        return RegionStep::Done;
    };
    RegionStep::Next(end.max(min_next))
}

/// Which region flavor the startup probe (on our own pid) allows.
pub(crate) fn choose_region_flavor(private_ok: bool, documented_ok: bool) -> Option<i32> {
    if private_ok {
        Some(crate::darwin_abi::PROC_PIDREGIONPATHINFO2)
    } else if documented_ok {
        Some(crate::darwin_abi::PROC_PIDREGIONPATHINFO)
    } else {
        None
    }
}

/// One step of a "fill a buffer, grow if it came back full" loop (pids, fds, threads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListStep {
    /// Fewer items than slots: the list is complete.
    Complete(usize),
    /// Every slot used: the list may have been cut; retry with this capacity.
    Grow(usize),
    /// Full at the largest capacity we allow.
    TooLarge,
}

/// The kernel truncates these lists silently to the buffer (`proc_listpids` even drops the
/// *oldest* processes first, since `allproc` is newest-first), so a full buffer is never
/// trusted.
pub(crate) fn list_step(returned: usize, capacity: usize, max_capacity: usize) -> ListStep {
    if returned < capacity {
        ListStep::Complete(returned)
    } else if capacity >= max_capacity {
        ListStep::TooLarge
    } else {
        ListStep::Grow(capacity.saturating_mul(2).clamp(capacity + 1, max_capacity))
    }
}

/// Slack added to the `KERN_PROCARGS2` size hint (the arguments can change by exec between
/// the two calls).
pub(crate) const PROCARGS_SLACK: usize = 4096;

/// First buffer length for `KERN_PROCARGS2`, from the NULL-buffer size query. At most `cap`
/// (`kern.argmax`; the kernel rejects larger buffers with EINVAL).
pub(crate) fn procargs_initial_len(hint: usize, cap: usize) -> usize {
    hint.saturating_add(PROCARGS_SLACK).min(cap).max(8)
}

/// After a `KERN_PROCARGS2` read of `got` bytes into `len`: when the buffer is too small the
/// kernel returns the *tail* of the argument area (`sysctl_procargsx`), which would misparse,
/// so a full buffer is retried larger.
pub(crate) fn procargs_step(len: usize, got: usize, cap: usize) -> ListStep {
    list_step(got, len, cap)
}

/// `major`/`minor` of a Darwin `dev_t` (32-bit: 8-bit major, 24-bit minor), as `<sys/types.h>`
/// and `libc::major`/`libc::minor` split it.
pub(crate) fn split_dev(dev: u32) -> Device {
    Device { major: (dev >> 24) & 0xff, minor: dev & 0x00ff_ffff }
}

/// The command name from a fixed `comm` field, lossy UTF-8.
pub(crate) fn command_name(comm: &[u8]) -> String {
    String::from_utf8_lossy(crate::darwin_abi::c_bytes(comm)).into_owned()
}

/// The request, prepared for matching.
pub(crate) struct Matcher {
    roots: Vec<Vec<u8>>,
    finders: Vec<memmem::Finder<'static>>,
    devices: Vec<Device>,
    argv_of: Vec<Vec<u8>>,
}

impl Matcher {
    pub(crate) fn new(request: &ScanRequest) -> Self {
        // An empty root would be "/" spelled without its slash; under_root handles it for
        // paths, but as a search needle it would match everywhere, so it is not searched for
        // inside strings.
        let finders = request
            .roots
            .iter()
            .filter(|r| !r.is_empty())
            .map(|r| memmem::Finder::new(r).into_owned())
            .collect();
        Self {
            roots: request.roots.clone(),
            finders,
            devices: request.devices.clone(),
            argv_of: request.argv_of.clone(),
        }
    }

    /// Does a path (with the device/inode the kernel gave for it) hit? `Some(true)`: the path
    /// is under a root. `Some(false)`: only the device is one of the requested devices (only
    /// when devices were requested). `None`: no hit.
    pub(crate) fn path_hit(&self, path: &[u8], dev_ino: Option<(Device, u64)>) -> Option<bool> {
        if !path.is_empty() && self.roots.iter().any(|r| under_root(path, r)) {
            return Some(true);
        }
        match dev_ino {
            Some((dev, _)) if self.devices.contains(&dev) => Some(false),
            _ => None,
        }
    }

    /// The path-like pieces of `value` (one environment value or argument) that lie under a
    /// root. Liberal on purpose: a false positive only keeps an entry, a miss could delete one
    /// in use. An occurrence of a root counts whatever precedes it (`-L`, `--x=`, a quote) and
    /// when it is followed by the end, `:`, NUL or a delimiter (space, quote, `;`, `,` ...) it
    /// yields the root itself; followed by `/` it yields the text up to the next `:` (one
    /// element of a `PATH`-style list), and also that text cut at its first delimiter, so
    /// `"/r/a /r/b"` gives `/r/a` too. Every piece satisfies [`crate::under_root`]. The same
    /// rules as the Linux backend's matcher, so both platforms see the same evidence.
    pub(crate) fn tokens<'v>(&self, value: &'v [u8]) -> Vec<&'v [u8]> {
        let mut out: Vec<&'v [u8]> = Vec::new();
        let mut push = |p: &'v [u8]| {
            if !out.contains(&p) {
                out.push(p);
            }
        };
        for finder in &self.finders {
            let root_len = finder.needle().len();
            for start in finder.find_iter(value) {
                let after = start + root_len;
                match value.get(after) {
                    None | Some(b':') | Some(0) => push(&value[start..after]),
                    Some(b'/') => {
                        let rest = &value[after..];
                        let end = after + memchr::memchr(b':', rest).unwrap_or(rest.len());
                        push(&value[start..end]);
                        if let Some(cut) = value[after..end].iter().position(|&b| is_soft_delimiter(b)) {
                            push(&value[start..after + cut]);
                        }
                    }
                    Some(&b) if is_soft_delimiter(b) => push(&value[start..after]),
                    // `/root2`: a sibling of the root, not below it.
                    Some(_) => {}
                }
            }
        }
        if self.roots.iter().any(|r| r.is_empty()) {
            // Root "/" (spelled empty): every absolute element of a PATH-style list is under it.
            for piece in value.split(|&b| b == b':') {
                if let Some(i) = memchr::memchr(b'/', piece) {
                    push(&piece[i..]);
                }
            }
        }
        out
    }

    /// Whether `argv[0]`'s base name is one of the requested names (`uv`, `uvx`, ...).
    pub(crate) fn wants_argv(&self, argv0: &[u8]) -> bool {
        let base = match memchr::memrchr(b'/', argv0) {
            Some(i) => &argv0[i + 1..],
            None => argv0,
        };
        self.argv_of.iter().any(|n| n.as_slice() == base)
    }
}

/// Bytes that end a path inside free text even though a path may contain them. Cutting there
/// only adds candidates: the uncut piece is reported as well.
fn is_soft_delimiter(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b';' | b',' | b'"' | b'\'' | b'=' | b')' | b']' | b'}' | b'>')
}

/// Everything learned about one process, turned into report data by [`ProcessScan::finish`].
#[derive(Debug)]
pub(crate) struct ProcessScan {
    pid: u32,
    ppid: u32,
    uid: Option<u32>,
    command: String,
    argv: Vec<Vec<u8>>,
    keep_argv: bool,
    evidence: Vec<Evidence>,
    denied: Vec<Source>,
    reasons: Vec<String>,
}

impl ProcessScan {
    pub(crate) fn new(pid: u32) -> Self {
        Self {
            pid,
            ppid: 0,
            uid: None,
            command: String::new(),
            argv: Vec::new(),
            keep_argv: false,
            evidence: Vec::new(),
            denied: Vec::new(),
            reasons: Vec::new(),
        }
    }

    /// Parent pid, real uid and the `comm` field.
    pub(crate) fn identity(&mut self, ppid: u32, ruid: u32, comm: &[u8]) {
        self.ppid = ppid;
        self.uid = Some(ruid);
        self.command = command_name(comm);
    }

    fn push(&mut self, e: Evidence) {
        let dup = self.evidence.iter().any(|o| {
            o.source == e.source
                && o.path == e.path
                && o.dev_ino == e.dev_ino
                // Map: one record per mapped file, not per segment (text, data, linkedit).
                && (e.source == Source::Map || o.detail == e.detail)
        });
        if !dup {
            self.evidence.push(e);
        }
    }

    /// A vnode the kernel described (`dev`/`ino` from `vinfo_stat`; `dev == 0 && ino == 0`
    /// means the kernel gave none). `detail` is only formatted on a hit.
    pub(crate) fn vnode(
        &mut self,
        m: &Matcher,
        source: Source,
        path: &[u8],
        dev: u32,
        ino: u64,
        detail: impl FnOnce() -> String,
    ) {
        let dev_ino = (dev != 0 || ino != 0).then(|| (split_dev(dev), ino));
        self.path(m, source, path, dev_ino, detail);
    }

    /// A path with optional device/inode.
    pub(crate) fn path(
        &mut self,
        m: &Matcher,
        source: Source,
        path: &[u8],
        dev_ino: Option<(Device, u64)>,
        detail: impl FnOnce() -> String,
    ) {
        if let Some(by_path) = m.path_hit(path, dev_ino) {
            self.push(Evidence {
                source,
                path: path.to_vec(),
                detail: detail(),
                dev_ino,
                by_path,
                original: None,
            });
        }
    }

    /// Arguments and environment from `KERN_PROCARGS2`. Records `argv` (always kept when
    /// there is evidence; kept alone when `argv[0]` is wanted), matches `exec_path`, every
    /// argument and every environment value, and denies what the buffer did not deliver.
    pub(crate) fn procargs(&mut self, m: &Matcher, args: &ProcArgs<'_>) {
        self.argv = args.argv.iter().map(|a| a.to_vec()).collect();
        if let Some(argv0) = args.argv.first() {
            self.keep_argv = m.wants_argv(argv0);
        }
        // The path handed to execve: for `PATH=<venv>/bin python`, the venv's bin/python,
        // which neither exe (the resolved base interpreter) nor argv[0] ("python") shows.
        for token in m.tokens(args.exec_path) {
            self.push(Evidence {
                source: Source::Cmdline,
                path: token.to_vec(),
                detail: "exec_path".to_string(),
                dev_ino: None,
                by_path: true,
                original: None,
            });
        }
        for (i, arg) in args.argv.iter().enumerate() {
            for token in m.tokens(arg) {
                self.push(Evidence {
                    source: Source::Cmdline,
                    path: token.to_vec(),
                    detail: format!("argv[{i}]"),
                    dev_ino: None,
                    by_path: true,
                    original: None,
                });
            }
        }
        for var in &args.env {
            let (name, value) = match memchr::memchr(b'=', var) {
                Some(i) => (&var[..i], &var[i + 1..]),
                None => (&var[..0], &var[..]),
            };
            for token in m.tokens(value) {
                self.push(Evidence {
                    source: Source::Environ,
                    path: token.to_vec(),
                    detail: String::from_utf8_lossy(name).into_owned(),
                    dev_ino: None,
                    by_path: true,
                    original: None,
                });
            }
        }
        if args.truncated {
            self.deny(&[Source::Cmdline, Source::Environ], "arguments truncated");
        } else if args.env_omitted {
            self.deny(&[Source::Environ], ENVIRONMENT_UNAVAILABLE);
        }
    }

    /// Mark sources unreadable, with a reason for the report.
    pub(crate) fn deny(&mut self, sources: &[Source], reason: &str) {
        for s in sources {
            if !self.denied.contains(s) {
                self.denied.push(*s);
            }
        }
        if !self.reasons.iter().any(|r| r == reason) {
            self.reasons.push(reason.to_string());
        }
    }

    /// The report entries for this process: a record when it shows evidence or its argv was
    /// asked for, and an uninspectable entry when any source could not be read.
    pub(crate) fn finish(mut self) -> (Option<ProcessRecord>, Option<Uninspectable>) {
        self.denied.sort();
        self.evidence.sort_by_key(|e| e.source);
        let uninspectable = (!self.denied.is_empty()).then(|| Uninspectable {
            pid: self.pid,
            uid: self.uid,
            command: self.command.clone(),
            reason: self.reasons.join("; "),
            denied: self.denied.clone(),
        });
        let record = (!self.evidence.is_empty() || self.keep_argv).then(|| ProcessRecord {
            pid: self.pid,
            ppid: self.ppid,
            // The record type has no "unknown uid"; it is known for every process except
            // one that even PROC_PIDT_SHORTBSDINFO refused (a MAC policy), and such a record
            // is listed as uninspectable with `uid: None` as well.
            uid: self.uid.unwrap_or(u32::MAX),
            command: self.command,
            argv: self.argv,
            evidence: self.evidence,
            denied: self.denied,
        });
        (record, uninspectable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::darwin_abi::{EBADF, EIO};

    fn request() -> ScanRequest {
        ScanRequest {
            roots: vec![b"/Users/me/.cache/uv".to_vec(), b"/private/var/cache/uv".to_vec()],
            devices: vec![Device { major: 1, minor: 4 }],
            argv_of: vec![b"uv".to_vec(), b"uvx".to_vec()],
            ..ScanRequest::default()
        }
    }

    #[test]
    fn errno_classes() {
        assert_eq!(classify_errno(ESRCH), ErrClass::Gone);
        assert_eq!(classify_errno(ENOENT), ErrClass::Gone);
        assert_eq!(classify_errno(EPERM), ErrClass::Denied);
        assert_eq!(classify_errno(EACCES), ErrClass::Denied);
        assert_eq!(classify_errno(EIO), ErrClass::Other(EIO));
        assert_eq!(classify_errno(0), ErrClass::Other(0));
    }

    #[test]
    fn source_failures_check_liveness() {
        assert_eq!(source_failure("cwd", ESRCH, || false), Failure::ProcessGone);
        assert_eq!(source_failure("cwd", ENOENT, || true), Failure::Deny("cwd: errno 2".into()));
        assert_eq!(
            source_failure("fds", EPERM, || panic!("not asked")),
            Failure::Deny(PERMISSION_DENIED.into())
        );
        assert_eq!(
            source_failure("fds", E_SHORT_REPLY, || panic!("not asked")),
            Failure::Deny("fds: unexpected reply size".into())
        );
    }

    #[test]
    fn exe_failures() {
        assert_eq!(exe_failure(ESRCH, || false), ExeFailure::ProcessGone);
        assert_eq!(exe_failure(ESRCH, || true), ExeFailure::NoPath);
        assert_eq!(exe_failure(ENOENT, || true), ExeFailure::NoPath);
        assert_eq!(exe_failure(EACCES, || true), ExeFailure::Deny(PERMISSION_DENIED.into()));
        assert!(matches!(exe_failure(EIO, || true), ExeFailure::Deny(_)));
    }

    #[test]
    fn procargs_failures() {
        // Gone.
        assert_eq!(procargs_failure(EINVAL, || false, Some(501), 501), Failure::ProcessGone);
        // Other user's process, we are not root: EINVAL means denied.
        assert_eq!(procargs_failure(EINVAL, || true, Some(0), 501), Failure::Deny(PERMISSION_DENIED.into()));
        assert_eq!(procargs_failure(EINVAL, || true, None, 501), Failure::Deny(PERMISSION_DENIED.into()));
        // Same user (or root): EINVAL is "no user stack / dying task".
        assert_eq!(
            procargs_failure(EINVAL, || true, Some(501), 501),
            Failure::Deny("arguments: errno 22".into())
        );
        assert_eq!(
            procargs_failure(EINVAL, || true, Some(501), 0),
            Failure::Deny("arguments: errno 22".into())
        );
        assert_eq!(
            procargs_failure(EPERM, || panic!("not asked"), Some(1), 501),
            Failure::Deny(PERMISSION_DENIED.into())
        );
        assert_eq!(
            procargs_failure(EIO, || panic!("not asked"), Some(501), 501),
            Failure::Deny("arguments: errno 5".into())
        );
    }

    #[test]
    fn per_item_errors() {
        assert_eq!(fd_error(EBADF), FdStep::SkipFd);
        assert_eq!(fd_error(ENOENT), FdStep::SkipFd);
        assert_eq!(fd_error(ESRCH), FdStep::MaybeGone);
        assert_eq!(fd_error(EPERM), FdStep::Denied);
        assert_eq!(fd_error(EIO), FdStep::Other(EIO));
        assert_eq!(thread_error(ESRCH), ThreadStep::SkipThread);
        assert_eq!(thread_error(EINVAL), ThreadStep::SkipThread);
        assert_eq!(thread_error(EACCES), ThreadStep::Denied);
        assert_eq!(thread_error(EIO), ThreadStep::Other(EIO));
        assert_eq!(region_error(EINVAL), RegionStop::End);
        assert_eq!(region_error(ESRCH), RegionStop::MaybeGone);
        assert_eq!(region_error(EPERM), RegionStop::Denied);
        assert_eq!(region_error(EIO), RegionStop::Other(EIO));
    }

    #[test]
    fn region_stepping() {
        assert_eq!(next_region_address(0, 0x1000, 0x2000), RegionStep::Next(0x3000));
        // Query inside a region: continue after it.
        assert_eq!(next_region_address(0x1800, 0x1000, 0x2000), RegionStep::Next(0x3000));
        // Region ending one byte below 2^64: the next query is u64::MAX.
        assert_eq!(next_region_address(0x10, u64::MAX - 0x1000, 0x1000), RegionStep::Next(u64::MAX));
        // Region ending exactly at 2^64: nothing can follow.
        assert_eq!(next_region_address(0x10, u64::MAX - 0xfff, 0x1000), RegionStep::Done);
        // Overflow: done.
        assert_eq!(next_region_address(0x10, u64::MAX - 0xfff, 0x2000), RegionStep::Done);
        assert_eq!(next_region_address(u64::MAX, u64::MAX, 0), RegionStep::Done);
        // Zero-sized or out-of-order answers still move forward.
        assert_eq!(next_region_address(0x5000, 0x5000, 0), RegionStep::Next(0x5001));
        assert_eq!(next_region_address(0x5000, 0x1000, 0x10), RegionStep::Next(0x5001));
    }

    #[test]
    fn region_walk_simulation_terminates() {
        // Drive the arithmetic the way macos::walk_regions does over a fake region table.
        let regions = [(0x1000u64, 0x1000u64), (0x4000, 0), (0x8000, 0x4000)];
        let lookup = |addr: u64| regions.iter().copied().find(|(a, s)| a + s > addr || *a >= addr);
        let mut addr = 0;
        let mut seen = Vec::new();
        for _ in 0..MAX_REGIONS {
            let Some((a, s)) = lookup(addr) else { break };
            seen.push(a);
            match next_region_address(addr, a, s) {
                RegionStep::Next(n) => addr = n,
                RegionStep::Done => break,
            }
        }
        // The zero-sized region is answered twice (once for the query before it, once for
        // its own address) and then passed; the Map dedup in ProcessScan absorbs the repeat.
        assert_eq!(seen, vec![0x1000, 0x4000, 0x4000, 0x8000]);
    }

    #[test]
    fn flavor_choice() {
        use crate::darwin_abi::{PROC_PIDREGIONPATHINFO, PROC_PIDREGIONPATHINFO2};
        assert_eq!(choose_region_flavor(true, true), Some(PROC_PIDREGIONPATHINFO2));
        assert_eq!(choose_region_flavor(false, true), Some(PROC_PIDREGIONPATHINFO));
        assert_eq!(choose_region_flavor(false, false), None);
    }

    #[test]
    fn list_growth() {
        assert_eq!(list_step(3, 10, 100), ListStep::Complete(3));
        assert_eq!(list_step(0, 10, 100), ListStep::Complete(0));
        assert_eq!(list_step(10, 10, 100), ListStep::Grow(20));
        assert_eq!(list_step(80, 80, 100), ListStep::Grow(100));
        assert_eq!(list_step(100, 100, 100), ListStep::TooLarge);
        assert_eq!(list_step(0, 0, 100), ListStep::Grow(1));
        // Always terminates.
        let mut cap = 1;
        let mut rounds = 0;
        while let ListStep::Grow(c) = list_step(cap, cap, 1 << 20) {
            assert!(c > cap);
            cap = c;
            rounds += 1;
        }
        assert!(rounds <= 21);
    }

    #[test]
    fn procargs_sizing() {
        assert_eq!(procargs_initial_len(1000, 1 << 20), 1000 + PROCARGS_SLACK);
        assert_eq!(procargs_initial_len(usize::MAX, 1 << 20), 1 << 20);
        assert_eq!(procargs_initial_len(0, 4), 8);
        assert_eq!(procargs_step(5096, 1004, 1 << 20), ListStep::Complete(1004));
        assert_eq!(procargs_step(5096, 5096, 1 << 20), ListStep::Grow(10192));
        assert_eq!(procargs_step(1 << 20, 1 << 20, 1 << 20), ListStep::TooLarge);
    }

    #[test]
    fn device_split() {
        assert_eq!(split_dev(0x0100_0004), Device { major: 1, minor: 4 });
        assert_eq!(split_dev(0xff12_3456), Device { major: 0xff, minor: 0x12_3456 });
        assert_eq!(split_dev(0), Device { major: 0, minor: 0 });
    }

    #[test]
    fn path_matching() {
        let m = Matcher::new(&request());
        let dev = Some((Device { major: 1, minor: 4 }, 77));
        let other = Some((Device { major: 1, minor: 5 }, 77));
        assert_eq!(m.path_hit(b"/Users/me/.cache/uv", None), Some(true));
        assert_eq!(m.path_hit(b"/Users/me/.cache/uv/x/y", other), Some(true));
        assert_eq!(m.path_hit(b"/Users/me/.cache/uvx", None), None);
        assert_eq!(m.path_hit(b"/Users/me/.cache/uvx", dev), Some(false));
        assert_eq!(m.path_hit(b"", dev), Some(false));
        assert_eq!(m.path_hit(b"/elsewhere", other), None);
        // No devices requested: never a device-only hit.
        let m = Matcher::new(&ScanRequest { devices: Vec::new(), ..request() });
        assert_eq!(m.path_hit(b"/Users/me/.cache/uvx", dev), None);
    }

    #[test]
    fn token_extraction() {
        let m = Matcher::new(&request());
        assert_eq!(
            m.tokens(b"/usr/bin:/Users/me/.cache/uv/a/bin:/bin"),
            vec![&b"/Users/me/.cache/uv/a/bin"[..]]
        );
        assert_eq!(
            m.tokens(b"--python=/Users/me/.cache/uv/p/bin/python3"),
            vec![&b"/Users/me/.cache/uv/p/bin/python3"[..]]
        );
        assert_eq!(m.tokens(b"-L/private/var/cache/uv/lib"), vec![&b"/private/var/cache/uv/lib"[..]]);
        assert_eq!(m.tokens(b"/Users/me/.cache/uv"), vec![&b"/Users/me/.cache/uv"[..]]);
        assert!(m.tokens(b"/Users/me/.cache/uvx/a").is_empty());
        assert!(m.tokens(b"").is_empty());
        // Both roots, several times, deduplicated.
        let v = b"/Users/me/.cache/uv/a:/private/var/cache/uv/b:/Users/me/.cache/uv/a";
        assert_eq!(m.tokens(v), vec![&b"/Users/me/.cache/uv/a"[..], &b"/private/var/cache/uv/b"[..]]);
        // Quoted and delimited.
        assert_eq!(m.tokens(b"'/Users/me/.cache/uv'"), vec![&b"/Users/me/.cache/uv"[..]]);
        assert_eq!(
            m.tokens(b"\"/Users/me/.cache/uv/a /Users/me/.cache/uv/b\""),
            vec![
                &b"/Users/me/.cache/uv/a /Users/me/.cache/uv/b\""[..],
                &b"/Users/me/.cache/uv/a"[..],
                &b"/Users/me/.cache/uv/b\""[..],
                &b"/Users/me/.cache/uv/b"[..],
            ]
        );
        assert_eq!(m.tokens(b"/Users/me/.cache/uv:/bin"), vec![&b"/Users/me/.cache/uv"[..]]);
        for t in m.tokens(b"x=/Users/me/.cache/uv/a b;/Users/me/.cache/uv,/Users/me/.cache/uv/z") {
            assert!(m.path_hit(t, None) == Some(true), "{}", String::from_utf8_lossy(t));
        }
        // A root containing ':' still matches (the cut is after the root).
        let m =
            Matcher::new(&ScanRequest { roots: vec![b"/Volumes/a:b/uv".to_vec()], ..ScanRequest::default() });
        assert_eq!(m.tokens(b"/x:/Volumes/a:b/uv/e:/y"), vec![&b"/Volumes/a:b/uv/e"[..]]);
    }

    #[test]
    fn empty_root_matches_every_absolute_element() {
        let m = Matcher::new(&ScanRequest { roots: vec![Vec::new()], ..ScanRequest::default() });
        assert_eq!(m.path_hit(b"/usr/bin", None), Some(true));
        assert_eq!(m.tokens(b"a:/b:c/d"), vec![&b"/b"[..], &b"/d"[..]]);
    }

    #[test]
    fn argv_wanted_by_base_name() {
        let m = Matcher::new(&request());
        assert!(m.wants_argv(b"uv"));
        assert!(m.wants_argv(b"/opt/homebrew/bin/uvx"));
        assert!(!m.wants_argv(b"/opt/uv/python"));
        assert!(!m.wants_argv(b""));
    }

    fn sample_args() -> Vec<u8> {
        let mut b = 3i32.to_ne_bytes().to_vec();
        let path = b"/Users/me/.cache/uv/archive-v0/e1/bin/python";
        b.extend_from_slice(path);
        b.push(0);
        while (b.len() - 4) % 8 != 0 {
            b.push(0);
        }
        for s in [
            &b"python"[..],
            b"",
            b"/Users/me/.cache/uv/archive-v0/e2/script.py",
            b"PATH=/usr/bin:/Users/me/.cache/uv/archive-v0/e3/bin",
            b"",
            b"VIRTUAL_ENV=/Users/me/.cache/uv/archive-v0/e4",
            b"HOME=/Users/me",
        ] {
            b.extend_from_slice(s);
            b.push(0);
        }
        b
    }

    #[test]
    fn procargs_evidence() {
        let m = Matcher::new(&request());
        let buf = sample_args();
        let args = crate::procargs::parse(&buf);
        let mut ps = ProcessScan::new(42);
        ps.identity(1, 501, b"python3.12\0\0\0\0\0\0");
        ps.procargs(&m, &args);
        let (rec, un) = ps.finish();
        assert!(un.is_none());
        let rec = rec.unwrap();
        assert_eq!(rec.command, "python3.12");
        assert_eq!(rec.uid, 501);
        assert_eq!(rec.argv.len(), 3);
        assert_eq!(rec.argv[1], b"");
        let got: Vec<(Source, &str, &[u8])> =
            rec.evidence.iter().map(|e| (e.source, e.detail.as_str(), e.path.as_slice())).collect();
        assert_eq!(
            got,
            vec![
                (Source::Environ, "PATH", &b"/Users/me/.cache/uv/archive-v0/e3/bin"[..]),
                (Source::Environ, "VIRTUAL_ENV", &b"/Users/me/.cache/uv/archive-v0/e4"[..]),
                (Source::Cmdline, "exec_path", &b"/Users/me/.cache/uv/archive-v0/e1/bin/python"[..]),
                (Source::Cmdline, "argv[2]", &b"/Users/me/.cache/uv/archive-v0/e2/script.py"[..]),
            ]
        );
        assert!(rec.evidence.iter().all(|e| e.by_path && e.dev_ino.is_none()));
    }

    #[test]
    fn omitted_environment_is_uninspectable_but_keeps_evidence() {
        let m = Matcher::new(&request());
        let mut b = 2i32.to_ne_bytes().to_vec();
        b.extend_from_slice(b"/bin/cat\0\0\0\0\0\0\0\0");
        b.extend_from_slice(b"cat\0/Users/me/.cache/uv/f\0");
        let args = crate::procargs::parse(&b);
        assert!(args.env_omitted);
        let mut ps = ProcessScan::new(7);
        ps.identity(1, 501, b"cat");
        ps.procargs(&m, &args);
        let (rec, un) = ps.finish();
        let rec = rec.unwrap();
        assert_eq!(rec.evidence.len(), 1);
        assert_eq!(rec.denied, vec![Source::Environ]);
        let un = un.unwrap();
        assert_eq!(un.reason, ENVIRONMENT_UNAVAILABLE);
        assert_eq!(un.denied, vec![Source::Environ]);
        assert_eq!(un.uid, Some(501));
    }

    #[test]
    fn truncated_arguments_deny_both() {
        let m = Matcher::new(&request());
        let buf = sample_args();
        let args = crate::procargs::parse(&buf[..30]);
        let mut ps = ProcessScan::new(7);
        ps.procargs(&m, &args);
        let (_, un) = ps.finish();
        assert_eq!(un.unwrap().denied, vec![Source::Environ, Source::Cmdline]);
    }

    #[test]
    fn vnode_evidence_and_device_hits() {
        let m = Matcher::new(&request());
        let mut ps = ProcessScan::new(9);
        ps.identity(1, 501, b"python");
        ps.vnode(&m, Source::Cwd, b"/Users/me/.cache/uv/w", 0x0100_0004, 10, String::new);
        ps.vnode(&m, Source::Fd, b"/etc/hosts", 0x0100_0005, 11, || panic!("detail formatted for a miss"));
        // Same volume, path does not match (e.g. a hard link elsewhere): device-only hit.
        ps.vnode(&m, Source::Fd, b"/Users/me/elsewhere", 0x0100_0004, 12, || "fd 5".into());
        // Three segments of one mapped file: one Map record.
        for range in ["1000-2000", "2000-3000", "3000-4000"] {
            ps.vnode(&m, Source::Map, b"/Users/me/.cache/uv/lib.so", 0x0100_0004, 13, || range.to_string());
        }
        ps.vnode(&m, Source::Exe, b"", 0, 0, || unreachable!());
        let (rec, un) = ps.finish();
        assert!(un.is_none());
        let rec = rec.unwrap();
        assert_eq!(rec.evidence.len(), 3);
        assert_eq!(rec.evidence[0].source, Source::Cwd);
        assert_eq!(rec.evidence[0].dev_ino, Some((Device { major: 1, minor: 4 }, 10)));
        assert!(rec.evidence[0].by_path);
        assert_eq!(rec.evidence[1].source, Source::Fd);
        assert!(!rec.evidence[1].by_path);
        assert_eq!(rec.evidence[1].detail, "fd 5");
        assert_eq!(rec.evidence[2].source, Source::Map);
        assert_eq!(rec.evidence[2].detail, "1000-2000");
    }

    #[test]
    fn denied_only_process_is_uninspectable_without_record() {
        let mut ps = ProcessScan::new(3);
        ps.identity(1, 0, b"launchd");
        ps.deny(&[Source::Fd, Source::Cwd, Source::Root], PERMISSION_DENIED);
        ps.deny(&[Source::Environ, Source::Cmdline], PERMISSION_DENIED);
        ps.deny(&[Source::Map], "memory regions: errno 5");
        let (rec, un) = ps.finish();
        assert!(rec.is_none());
        let un = un.unwrap();
        assert_eq!(un.reason, "permission denied; memory regions: errno 5");
        assert_eq!(
            un.denied,
            vec![Source::Cwd, Source::Root, Source::Fd, Source::Map, Source::Environ, Source::Cmdline]
        );
        assert_eq!(un.command, "launchd");
    }

    #[test]
    fn wanted_argv_without_evidence() {
        let m = Matcher::new(&request());
        let mut b = 2i32.to_ne_bytes().to_vec();
        b.extend_from_slice(b"/opt/homebrew/bin/uv\0\0\0\0");
        b.extend_from_slice(b"uv\0cache\0HOME=/Users/me\0");
        let args = crate::procargs::parse(&b);
        let mut ps = ProcessScan::new(11);
        ps.identity(1, 501, b"uv");
        ps.procargs(&m, &args);
        let (rec, un) = ps.finish();
        assert!(un.is_none());
        let rec = rec.unwrap();
        assert!(rec.evidence.is_empty());
        assert_eq!(rec.argv, vec![b"uv".to_vec(), b"cache".to_vec()]);
    }

    #[test]
    fn nothing_found_nothing_reported() {
        let m = Matcher::new(&request());
        let mut ps = ProcessScan::new(12);
        ps.vnode(&m, Source::Cwd, b"/tmp", 0x0100_0009, 1, String::new);
        assert_eq!(ps.finish(), (None, None));
    }
}
