//! uv's cache lock: `<cache>/.lock`, a BSD `flock` that every uv process holds shared for
//! its whole life and `uv cache prune`/`clean` take exclusively (research §4).
//!
//! We open it as uv does (`O_RDWR|O_CLOEXEC`, created 0666 through a temporary file and an
//! atomic no-replace rename, never deleted or replaced: replacing it would split future
//! lockers onto a new inode) and try `LOCK_EX` without blocking. Free: we hold it for the run,
//! so uv processes that start meanwhile wait, exactly as during uv's own prune. Busy: we do
//! not hang like uv does; the caller prunes beside the running uv processes in concurrent mode,
//! or waits (`--wait`) by polling, which on Linux is equivalent since `flock` has no writer
//! preference anyway, and lets Ctrl-C (or SIGTERM) end the wait with nothing removed.

use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::fs::FlockOperation;

/// The state of uv's lock for this run.
#[derive(Debug)]
pub enum CacheLock {
    /// We hold it exclusively until dropped (the file is kept only for its lock).
    Exclusive(#[allow(dead_code)] std::fs::File),
    /// Other processes hold it (their pids, from the kernel's lock table, when known).
    Busy { holders: Vec<u32> },
    /// No `.lock` exists and we were told not to create one (dry run); no uv ≥ 0.8.19 holds it.
    Absent,
    /// The filesystem does not support `flock` (some network filesystems); uv then runs
    /// without a lock too.
    Unsupported,
}

impl CacheLock {
    /// A short name for reports: `exclusive`, `concurrent`, ...
    pub fn mode(&self) -> &'static str {
        match self {
            CacheLock::Exclusive(_) | CacheLock::Absent => "exclusive",
            CacheLock::Busy { .. } | CacheLock::Unsupported => "concurrent",
        }
    }

    /// True when other uv processes may be writing the cache meanwhile.
    pub fn concurrent(&self) -> bool {
        matches!(self, CacheLock::Busy { .. } | CacheLock::Unsupported)
    }
}

/// Open (creating it like uv if missing and `create`) and try to lock `<root>/.lock`.
/// With `wait`, poll until the lock is free or the time is up.
pub fn acquire(
    root: &Path,
    create: bool,
    wait: Option<Duration>,
    on_wait: impl FnOnce(),
) -> io::Result<CacheLock> {
    acquire_unless_stopped(root, create, wait, &AtomicBool::new(false), on_wait)
}

/// [`acquire`], whose wait ends with an [`io::ErrorKind::Interrupted`] error once `stop` is set
/// (the Ctrl-C and SIGTERM flag).
pub fn acquire_unless_stopped(
    root: &Path,
    create: bool,
    wait: Option<Duration>,
    stop: &AtomicBool,
    on_wait: impl FnOnce(),
) -> io::Result<CacheLock> {
    let path = root.join(".lock");
    let file =
        match std::fs::OpenOptions::new().read(true).write(true).custom_flags(libc::O_CLOEXEC).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => create_lock_file(root)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(CacheLock::Absent),
            // A read-only cache (or one owned by another user): a shared look is all we can do.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => std::fs::File::open(&path)?,
            Err(e) => return Err(e),
        };
    match try_exclusive(&file) {
        Ok(true) => return Ok(CacheLock::Exclusive(file)),
        Ok(false) => {}
        Err(e) if e.kind() == io::ErrorKind::Unsupported => return Ok(CacheLock::Unsupported),
        Err(e) => return Err(e),
    }
    if let Some(limit) = wait {
        on_wait();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            if stop.load(Ordering::Relaxed) {
                return Err(io::Error::new(
                    io::ErrorKind::Interrupted,
                    format!(
                        "interrupted while waiting for the lock on `{}`; nothing was removed",
                        path.display()
                    ),
                ));
            }
            if try_exclusive(&file)? {
                return Ok(CacheLock::Exclusive(file));
            }
        }
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "Timeout ({}s) when waiting for lock on `{}` at `{}`, is another uv process running?",
                limit.as_secs(),
                root.display(),
                path.display()
            ),
        ));
    }
    Ok(CacheLock::Busy { holders: holders(&file) })
}

fn try_exclusive(file: &std::fs::File) -> io::Result<bool> {
    match rustix::fs::flock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
        Err(rustix::io::Errno::NOSYS) | Err(rustix::io::Errno::OPNOTSUPP) => {
            Err(io::Error::new(io::ErrorKind::Unsupported, "flock is not supported here"))
        }
        Err(e) => Err(e.into()),
    }
}

/// Try to take a shared lock on a per-entry `.lock` file: false when a uv process holds it
/// exclusively (it is writing that entry right now).
pub fn entry_lock_free(path: &Path) -> bool {
    // Never block on a FIFO or follow a link planted under a `.lock` name.
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(file) =
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW).open(path)
    else {
        return true;
    };
    match rustix::fs::flock(&file, FlockOperation::NonBlockingLockShared) {
        Ok(()) => {
            let _ = rustix::fs::flock(&file, FlockOperation::Unlock);
            true
        }
        Err(rustix::io::Errno::WOULDBLOCK) => false,
        Err(_) => true,
    }
}

/// Pids holding a lock on the same file, from the kernel's lock table.
fn holders(file: &std::fs::File) -> Vec<u32> {
    let Ok(meta) = file.metadata() else { return Vec::new() };
    let device = crate::usage::device_of(meta.dev());
    let request = platform::ScanRequest::default();
    let mut pids: Vec<u32> = platform::file_locks(&request)
        .into_iter()
        .filter(|l| l.device == device && l.inode == meta.ino())
        .map(|l| l.pid)
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Create `.lock` the way uv does: a temporary file made 0666, renamed into place without
/// replacing one that appeared meanwhile.
fn create_lock_file(root: &Path) -> io::Result<std::fs::File> {
    let temp = root.join(format!(".tmp-safe-prune-lock-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_CLOEXEC)
        .mode(0o666)
        .open(&temp)?;
    // The umask trims the mode given at creation; uv sets the permissions explicitly.
    file.set_permissions(std::fs::Permissions::from_mode(0o666))?;
    let cwd = rustix::fs::CWD;
    let renamed =
        rustix::fs::renameat_with(cwd, &temp, cwd, root.join(".lock"), rustix::fs::RenameFlags::NOREPLACE);
    match renamed {
        Ok(()) => Ok(file),
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            if e == rustix::io::Errno::EXIST {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(root.join(".lock"))
            } else {
                Err(e.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_then_busy_then_free() {
        let tmp = tempfile::tempdir().unwrap();
        let first = acquire(tmp.path(), true, None, || {}).unwrap();
        assert!(matches!(first, CacheLock::Exclusive(_)));
        let mode = std::fs::metadata(tmp.path().join(".lock")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o666);
        let inode = std::fs::metadata(tmp.path().join(".lock")).unwrap().ino();
        let second = acquire(tmp.path(), true, None, || {}).unwrap();
        match &second {
            CacheLock::Busy { holders } => assert!(holders.contains(&std::process::id()), "{holders:?}"),
            other => panic!("expected busy, got {other:?}"),
        }
        let timed_out = acquire(tmp.path(), true, Some(Duration::from_millis(250)), || {});
        assert_eq!(timed_out.unwrap_err().kind(), io::ErrorKind::TimedOut);
        drop(first);
        assert!(matches!(acquire(tmp.path(), true, None, || {}).unwrap(), CacheLock::Exclusive(_)));
        // Never replaced.
        assert_eq!(std::fs::metadata(tmp.path().join(".lock")).unwrap().ino(), inode);
        let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [".lock"]);
    }

    #[test]
    fn a_stop_ends_the_wait() {
        let tmp = tempfile::tempdir().unwrap();
        let _held = acquire(tmp.path(), true, None, || {}).unwrap();
        let stop = AtomicBool::new(false);
        let waited = acquire_unless_stopped(tmp.path(), true, Some(Duration::from_secs(600)), &stop, || {
            stop.store(true, Ordering::Relaxed)
        });
        let e = waited.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Interrupted);
        assert!(e.to_string().contains("interrupted while waiting for the lock"), "{e}");
    }

    #[test]
    fn dry_run_creates_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(acquire(tmp.path(), false, None, || {}).unwrap(), CacheLock::Absent));
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
}
