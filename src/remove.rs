//! Removing planned paths without ever following a symlink or leaving the cache.
//!
//! Every operation is relative to a directory handle held open: the cache root is opened
//! once, each parent of a target is reached one component at a time with `O_NOFOLLOW`, and
//! contents are deleted with `unlinkat` relative to their directory's handle. A path is
//! never re-resolved from the root, so swapping a directory for a symlink mid-run cannot
//! redirect a deletion outside the cache (the classic `rm -rf` race), and a symlink is only
//! ever removed as a link.
//!
//! A directory is first renamed into a trash folder inside the cache (one atomic `renameat`),
//! then emptied. Killed at any moment, the cache therefore holds each entry either whole or
//! not at all; the trash is an unknown top-level entry that the next prune (ours or uv's)
//! removes. Each run makes a trash folder of its own, never reusing one that exists: a killed
//! run's trash can carry the very pid of the next run (containers restarted on a persistent
//! cache volume), and it is one of that run's targets. Only where renaming cannot work by
//! nature (another filesystem, a mount point) is a directory deleted in place. Directories are
//! emptied in parallel: files first, then each directory once its contents are gone, counting
//! files and bytes on the way (no second walk).
//!
//! Removal runs on its own rayon pool with more threads than cores ([`default_threads`]):
//! an `unlink` mostly waits on the filesystem (journal, block freeing, and on a filesystem
//! mounted with `discard` one synchronous discard per freed extent), so keeping several in
//! flight is what makes it fast; the CPU part of each is small.
//! Counting follows uv (`removal.rs`): links and files are files, a file's bytes are
//! `st_blocks * 512` when its link count is 1 and 0 otherwise, every directory counts once.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use rayon::prelude::*;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
#[cfg(target_os = "linux")]
use rustix::fs::RawDir;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, RawMode};
use rustix::io::Errno;

/// What a removal took away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Self) {
        self.files += other.files;
        self.dirs += other.dirs;
        self.bytes += other.bytes;
    }
}

/// Live counters for a progress display, updated as files go.
#[derive(Debug, Default)]
pub struct Progress {
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    pub entries: AtomicU64,
}

/// Why a target could not be (fully) removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoveError {
    pub message: String,
}

/// Removes (or, in a dry run, measures) paths below one cache root.
pub struct Remover {
    root: OwnedFd,
    dry_run: bool,
    trash: std::sync::Mutex<Option<Trash>>,
    progress: Option<std::sync::Arc<Progress>>,
    /// Names for this run's trash folder, one per attempt ([`trash_name`]; tests make them
    /// collide).
    trash_name: fn(u32) -> CString,
    counter: AtomicU64,
    /// The removal pool, made on first use; `None` inside when it could not be built (the
    /// global pool is used then).
    pool: std::sync::OnceLock<Option<rayon::ThreadPool>>,
}

/// Removal threads: an unlink waits on the filesystem far more than it computes, so several
/// per core. Measured on ext4 (`discard`) with 2 cores, ~66k files: 2 threads 8.5-11 s (like a
/// serial `rm -rf`), 4 threads 3-6 s, 8 threads 2.1-2.7 s, 16-32 threads 1.6 s. Overridden by
/// `SAFE_PRUNE_THREADS`.
pub fn default_threads() -> usize {
    if let Some(n) = std::env::var("SAFE_PRUNE_THREADS").ok().and_then(|v| v.parse::<usize>().ok()) {
        return n.clamp(1, 256);
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    (cores * 8).clamp(16, 64)
}

/// `getdents64` buffer per directory read; small directories take one call.
#[cfg(target_os = "linux")]
const DIR_BUF: usize = 8 * 1024;

struct Trash {
    name: CString,
    fd: Arc<OwnedFd>,
}

/// The prefix of trash folders; the planner treats them as unknown top-level entries.
pub const TRASH_PREFIX: &str = ".safe-prune-trash-";

/// Names tried for a trash folder, and renames tried into it, before giving up.
const ATTEMPTS: u32 = 16;

/// A trash folder name for this run: the pid (whose it is, for a reader) and the time in
/// nanoseconds, so that a run whose pid a killed run had (a container's fixed pids) still
/// gets a name of its own; `attempt` makes every retry a new name.
fn trash_name(attempt: u32) -> CString {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let name = format!("{TRASH_PREFIX}{}-{nanos:x}-{attempt}", std::process::id());
    CString::new(name).expect("no NUL in a formatted name")
}

/// Where [`Remover::to_trash`] left a directory.
enum Moved {
    /// Renamed into the trash folder (its handle) under this name.
    Trash(Arc<OwnedFd>, CString),
    /// It was gone already.
    Vanished,
    /// Renaming cannot work here (another filesystem, a mount point, a cache root we may not
    /// write): delete it where it is.
    InPlace,
}

/// Why a directory could not be moved into the trash (it is left where it was).
enum TrashError {
    Create(Errno),
    Move(Errno),
}

impl TrashError {
    fn message(&self) -> String {
        match self {
            TrashError::Create(e) => format!("cannot make a trash folder to remove it: {}", errno_msg(*e)),
            TrashError::Move(e) => format!("cannot move it into the trash folder: {}", errno_msg(*e)),
        }
    }
}

/// A failure while emptying a directory: what failed, on which path below the entry being
/// removed (empty: the entry itself), and why. The report names the entry beside the message,
/// so the message names only what lies below it.
#[derive(Debug)]
struct Failure {
    what: &'static str,
    inner: PathBuf,
    cause: String,
}

impl Failure {
    /// `what` failed on the directory being emptied itself.
    fn here(what: &'static str, e: rustix::io::Errno) -> Self {
        Failure { what, inner: PathBuf::new(), cause: errno_msg(e) }
    }

    /// `what` failed on `child` of the directory being emptied.
    fn at(what: &'static str, child: &CStr, e: rustix::io::Errno) -> Self {
        Failure { what, inner: PathBuf::from(OsStr::from_bytes(child.to_bytes())), cause: errno_msg(e) }
    }

    /// The same failure seen from the parent of `dir`.
    fn below(mut self, dir: &CStr) -> Self {
        self.inner = Path::new(OsStr::from_bytes(dir.to_bytes())).join(&self.inner);
        self
    }

    fn into_error(self) -> RemoveError {
        let message = if self.inner.as_os_str().is_empty() {
            format!("{}: {}", self.what, self.cause)
        } else {
            format!("{} {}: {}", self.what, self.inner.display(), self.cause)
        };
        RemoveError { message }
    }
}

fn errno_msg(err: rustix::io::Errno) -> String {
    io::Error::from(err).to_string()
}

fn open_dir(at: BorrowedFd<'_>, name: &CStr) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        at,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

fn cstring(name: &OsStr) -> Result<CString, RemoveError> {
    CString::new(name.as_bytes()).map_err(|_| RemoveError { message: "name contains a NUL byte".into() })
}

impl Remover {
    /// Open the cache root (an absolute, canonical directory path).
    pub fn new(root: &Path, dry_run: bool) -> io::Result<Self> {
        let root =
            rustix::fs::open(root, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        Ok(Self {
            root,
            dry_run,
            trash: std::sync::Mutex::new(None),
            trash_name,
            progress: None,
            counter: AtomicU64::new(0),
            pool: std::sync::OnceLock::new(),
        })
    }

    /// Report progress into these counters.
    pub fn with_progress(mut self, progress: std::sync::Arc<Progress>) -> Self {
        self.progress = Some(progress);
        self
    }

    /// Remove (or measure) every target of one phase in parallel, stopping between targets
    /// when `stop` is set. Returns one result per target, `None` for targets not started.
    pub fn remove_all(
        &self,
        rels: &[&Path],
        stop: &AtomicBool,
    ) -> Vec<Option<Result<Counts, (Counts, RemoveError)>>> {
        if rels.is_empty() {
            return Vec::new();
        }
        let pool = self.pool.get_or_init(|| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(default_threads())
                .thread_name(|i| format!("remove-{i}"))
                .build()
                .ok()
        });
        match pool {
            Some(pool) => pool.install(|| self.remove_each(rels, stop)),
            None => self.remove_each(rels, stop),
        }
    }

    fn remove_each(
        &self,
        rels: &[&Path],
        stop: &AtomicBool,
    ) -> Vec<Option<Result<Counts, (Counts, RemoveError)>>> {
        rels.par_iter()
            .map(|rel| {
                if stop.load(Ordering::Relaxed) {
                    return None;
                }
                let result = self.remove(rel);
                if let Some(p) = &self.progress {
                    p.entries.fetch_add(1, Ordering::Relaxed);
                }
                Some(result)
            })
            .collect()
    }

    /// Remove (or measure) one path relative to the root.
    pub fn remove(&self, rel: &Path) -> Result<Counts, (Counts, RemoveError)> {
        let fail = |message: String| (Counts::default(), RemoveError { message });
        let mut names = Vec::new();
        for component in rel.components() {
            match component {
                Component::Normal(name) => names.push(cstring(name).map_err(|e| fail(e.message))?),
                // Planned paths are plain relative names; anything else would be a bug, and a
                // bug must not turn into a deletion outside the cache.
                _ => return Err(fail(format!("refusing non-plain path {}", rel.display()))),
            }
        }
        let Some((leaf, parents)) = names.split_last() else {
            return Err(fail("refusing to remove the cache root".into()));
        };
        // Walk down to the parent, never through a link.
        let mut parent: Option<OwnedFd> = None;
        for name in parents {
            let at = parent.as_ref().map_or(self.root.as_fd(), |fd| fd.as_fd());
            match open_dir(at, name) {
                Ok(fd) => parent = Some(fd),
                Err(rustix::io::Errno::NOENT) => return Ok(Counts::default()),
                Err(e) => return Err(fail(format!("cannot open its parent directory: {}", errno_msg(e)))),
            }
        }
        let parent_fd = parent.as_ref().map_or(self.root.as_fd(), |fd| fd.as_fd());
        let stat = match rustix::fs::statat(parent_fd, leaf.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(rustix::io::Errno::NOENT) => return Ok(Counts::default()),
            Err(e) => return Err(fail(format!("cannot stat: {}", errno_msg(e)))),
        };
        if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
            let counts = file_counts(&stat);
            if !self.dry_run {
                match rustix::fs::unlinkat(parent_fd, leaf.as_c_str(), AtFlags::empty()) {
                    Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                    Err(e) => return Err(fail(format!("cannot remove: {}", errno_msg(e)))),
                }
            }
            self.tick(&counts);
            return Ok(counts);
        }
        if self.dry_run {
            return self.empty_dir(parent_fd, leaf, true).map_err(|(c, e)| (c, e.into_error()));
        }
        // Move the directory out of the way in one atomic step, then empty it from the trash.
        let (dir_at, dir_name) = match self.to_trash(parent_fd, leaf, stat.st_mode) {
            Ok(Moved::Trash(trash, name)) => (Some(trash), name),
            Ok(Moved::Vanished) => return Ok(Counts::default()),
            Ok(Moved::InPlace) => (None, leaf.clone()),
            // Left whole where it was: deleting it in place could leave half an entry behind.
            Err(e) => return Err(fail(e.message())),
        };
        let at = dir_at.as_ref().map_or(parent_fd, |t| t.as_fd());
        self.empty_dir(at, &dir_name, false).map_err(|(c, e)| (c, e.into_error()))
    }

    /// Rename directory `parent/leaf` (of mode `mode`) into this run's trash folder.
    fn to_trash(&self, parent: BorrowedFd<'_>, leaf: &CStr, mode: RawMode) -> Result<Moved, TrashError> {
        let mut made_writable = false;
        let mut new_trash = false;
        for _ in 0..ATTEMPTS {
            let (trash, trash_name) = match self.trash() {
                Ok(trash) => trash,
                // A cache root we may not write to: no trash can be made, deleting in place
                // (as uv does) is all that works.
                Err(Errno::ACCESS | Errno::PERM) => return Ok(Moved::InPlace),
                Err(errno) => return Err(TrashError::Create(errno)),
            };
            let n = self.counter.fetch_add(1, Ordering::Relaxed);
            let name = CString::new(n.to_string()).expect("digits have no NUL");
            match rustix::fs::renameat(parent, leaf, &*trash, name.as_c_str()) {
                Ok(()) => return Ok(Moved::Trash(trash, name)),
                // Only this run writes into its trash; a taken name is someone else's doing,
                // and the next number is free.
                Err(Errno::EXIST | Errno::NOTEMPTY | Errno::NOTDIR) => {}
                // Either the directory is gone, or the trash folder is (removed under us, say
                // by hand): look at the directory to tell which. A gone trash is replaced once.
                Err(Errno::NOENT) => match rustix::fs::statat(parent, leaf, AtFlags::SYMLINK_NOFOLLOW) {
                    Err(Errno::NOENT) => return Ok(Moved::Vanished),
                    Ok(_) if !new_trash => {
                        new_trash = true;
                        self.forget_trash(&trash_name);
                    }
                    Ok(_) => return Err(TrashError::Move(Errno::NOENT)),
                    Err(errno) => return Err(TrashError::Move(errno)),
                },
                // Moving a directory to another parent rewrites its `..`, which takes write
                // permission on it; uv makes such directories writable to delete them, so do we.
                Err(Errno::ACCESS) if !made_writable && mode & 0o200 == 0 => {
                    made_writable = true;
                    chmod_dir_nofollow(parent, leaf, Mode::from_raw_mode(0o700)).map_err(TrashError::Move)?;
                }
                // Renaming cannot work across filesystems or for a mount point; deleting in place can.
                Err(Errno::XDEV | Errno::BUSY) => return Ok(Moved::InPlace),
                Err(errno) => return Err(TrashError::Move(errno)),
            }
        }
        Err(TrashError::Move(Errno::EXIST))
    }

    /// This run's trash folder (made on first use): its handle and its name.
    fn trash(&self) -> rustix::io::Result<(Arc<OwnedFd>, CString)> {
        let mut trash = self.trash.lock().unwrap_or_else(|p| p.into_inner());
        let trash = match &mut *trash {
            Some(trash) => trash,
            empty => empty.insert(self.make_trash()?),
        };
        Ok((trash.fd.clone(), trash.name.clone()))
    }

    /// Make a trash folder under a name nobody used: a folder that exists is never reused. It
    /// may be a killed run's trash, planned as a target of this run: renaming it into itself
    /// fails, and its numbered children take the names this run moves entries to.
    fn make_trash(&self) -> rustix::io::Result<Trash> {
        for attempt in 0..ATTEMPTS {
            let name = (self.trash_name)(attempt);
            match rustix::fs::mkdirat(&self.root, name.as_c_str(), Mode::from_raw_mode(0o700)) {
                Ok(()) => {}
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(e),
            }
            let fd = open_dir(self.root.as_fd(), &name)?;
            return Ok(Trash { name, fd: Arc::new(fd) });
        }
        Err(Errno::EXIST)
    }

    /// Drop the trash folder named `name` (it was removed under us); the next move makes another.
    fn forget_trash(&self, name: &CStr) {
        let mut trash = self.trash.lock().unwrap_or_else(|p| p.into_inner());
        if trash.as_ref().is_some_and(|t| t.name.as_c_str() == name) {
            *trash = None;
        }
    }

    /// Remove the (now empty) trash folder, if this run made one.
    pub fn finish(&self) {
        let trash = self.trash.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(Trash { name, fd }) = trash {
            drop(fd);
            let _ = rustix::fs::unlinkat(&self.root, name.as_c_str(), AtFlags::REMOVEDIR);
        }
    }

    fn tick(&self, counts: &Counts) {
        if let Some(p) = &self.progress {
            p.files.fetch_add(counts.files, Ordering::Relaxed);
            p.bytes.fetch_add(counts.bytes, Ordering::Relaxed);
        }
    }

    /// Empty and remove directory `at/name` (or only measure it).
    // The `readdir` stream used off Linux is an iterator; the loop below serves both.
    #[cfg_attr(not(target_os = "linux"), allow(clippy::while_let_on_iterator))]
    fn empty_dir(&self, at: BorrowedFd<'_>, name: &CStr, measure: bool) -> Result<Counts, (Counts, Failure)> {
        let fail =
            |counts: Counts, what: &'static str, e: rustix::io::Errno| (counts, Failure::here(what, e));
        let fd = match open_dir(at, name) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(Counts::default()),
            Err(rustix::io::Errno::ACCESS) if !measure => {
                // uv makes an unreadable directory readable and retries; so do we, without
                // following a link the directory may have been swapped for.
                let _ = chmod_dir_nofollow(at, name, Mode::from_raw_mode(0o700));
                match open_dir(at, name) {
                    Ok(fd) => fd,
                    Err(e) => return Err(fail(Counts::default(), "cannot open", e)),
                }
            }
            Err(e) => return Err(fail(Counts::default(), "cannot open", e)),
        };
        let mut counts = Counts::default();
        let mut subdirs: Vec<CString> = Vec::new();
        let mut first_error: Option<Failure> = None;
        // Read through the handle itself (no `dup`): it is read once, from the start.
        #[cfg(target_os = "linux")]
        let mut buf: Vec<u8> = Vec::with_capacity(DIR_BUF);
        #[cfg(target_os = "linux")]
        let mut dir = RawDir::new(fd.as_fd(), buf.spare_capacity_mut());
        // Elsewhere (macOS) there is no `getdents64`: a `readdir` stream on a second handle to
        // the same directory (`openat(fd, ".")`, which cannot be a link).
        #[cfg(not(target_os = "linux"))]
        let mut dir = match rustix::fs::Dir::read_from(&fd) {
            Ok(dir) => dir,
            Err(e) => return Err(fail(Counts::default(), "cannot open", e)),
        };
        while let Some(entry) = dir.next() {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    first_error.get_or_insert(Failure::here("cannot read", e));
                    break;
                }
            };
            let child = entry.file_name();
            if child == c"." || child == c".." {
                continue;
            }
            let mut kind = entry.file_type();
            let mut stat = None;
            // A directory needs no stat; anything else does, for uv's byte count (link count
            // and blocks), and an unknown type to learn what it is.
            if kind != FileType::Directory {
                match rustix::fs::statat(&fd, child, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(s) => {
                        kind = FileType::from_raw_mode(s.st_mode);
                        stat = Some(s);
                    }
                    Err(rustix::io::Errno::NOENT) => continue,
                    Err(e) => {
                        first_error.get_or_insert(Failure::at("cannot stat", child, e));
                        continue;
                    }
                }
            }
            if kind == FileType::Directory {
                subdirs.push(child.to_owned());
                continue;
            }
            let file = stat.as_ref().map(file_counts).unwrap_or(Counts { files: 1, dirs: 0, bytes: 0 });
            if !measure {
                match rustix::fs::unlinkat(&fd, child, AtFlags::empty()) {
                    Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                    Err(e) => {
                        first_error.get_or_insert(Failure::at("cannot remove", child, e));
                        continue;
                    }
                }
            }
            self.tick(&file);
            counts += file;
        }
        // The listing is done (its buffer, or its stream and handle, go with it) before
        // descending.
        #[cfg(target_os = "linux")]
        drop(buf);
        #[cfg(not(target_os = "linux"))]
        drop(dir);
        // Subdirectories in parallel: rayon's work stealing spreads a deep or wide tree
        // across threads without oversubscribing them.
        let results: Vec<_> = if subdirs.len() > 1 {
            subdirs.par_iter().map(|sub| self.empty_dir(fd.as_fd(), sub, measure)).collect()
        } else {
            subdirs.iter().map(|sub| self.empty_dir(fd.as_fd(), sub, measure)).collect()
        };
        for (sub, result) in subdirs.iter().zip(results) {
            match result {
                Ok(c) => counts += c,
                Err((c, e)) => {
                    counts += c;
                    first_error.get_or_insert(e.below(sub));
                }
            }
        }
        if let Some(e) = first_error {
            return Err((counts, e));
        }
        drop(fd);
        if !measure {
            match rustix::fs::unlinkat(at, name, AtFlags::REMOVEDIR) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                Err(e) => return Err(fail(counts, "cannot remove directory", e)),
            }
        }
        counts.dirs += 1;
        Ok(counts)
    }
}

/// uv's accounting for one non-directory.
fn file_counts(stat: &rustix::fs::Stat) -> Counts {
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    let bytes = if stat.st_nlink as u64 == 1 { (stat.st_blocks as u64).saturating_mul(512) } else { 0 };
    Counts { files: 1, dirs: 0, bytes }
}

/// Set the mode of directory `at/name`, never through a symlink: the name may have been
/// swapped for a link to a directory outside the cache since it was read, and plain `chmod`
/// (`fchmodat` without flags) follows links.
fn chmod_dir_nofollow(at: BorrowedFd<'_>, name: &CStr, mode: Mode) -> rustix::io::Result<()> {
    match rustix::fs::chmodat(at, name, mode, AtFlags::SYMLINK_NOFOLLOW) {
        // Linux's `fchmodat` takes no flags (`fchmodat2` is Linux 6.6+, unused by rustix), so
        // rustix refuses `SYMLINK_NOFOLLOW` there; the BSDs and macOS honour it.
        Err(Errno::OPNOTSUPP) => chmod_dir_by_handle(at, name, mode),
        other => other,
    }
}

/// Linux: an `O_PATH` handle needs no permission on the directory (a mode-000 directory opens),
/// `O_NOFOLLOW | O_DIRECTORY` make it the directory itself or an error (a link opens as the
/// link, which `O_DIRECTORY` refuses), and `/proc/self/fd/N` is resolved by the kernel to that
/// open handle's inode, never by name, so no later swap can redirect it. (`fchmod` refuses
/// `O_PATH` handles; this is how glibc implements `fchmodat(AT_SYMLINK_NOFOLLOW)`.)
#[cfg(any(target_os = "linux", target_os = "android"))]
fn chmod_dir_by_handle(at: BorrowedFd<'_>, name: &CStr, mode: Mode) -> rustix::io::Result<()> {
    use std::os::fd::AsRawFd;
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(at, name, flags, Mode::empty())?;
    rustix::fs::chmod(format!("/proc/self/fd/{}", fd.as_raw_fd()), mode)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn chmod_dir_by_handle(_at: BorrowedFd<'_>, _name: &CStr, _mode: Mode) -> rustix::io::Result<()> {
    Err(Errno::OPNOTSUPP)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    #[test]
    fn removes_tree_without_following_links() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("cache");
        let victim = tmp.path().join("victim");
        fs::create_dir_all(root.join("a/b/c")).unwrap();
        fs::create_dir_all(&victim).unwrap();
        fs::write(victim.join("precious"), "x").unwrap();
        fs::write(root.join("a/b/c/f"), vec![1u8; 5000]).unwrap();
        fs::write(root.join("a/g"), "y").unwrap();
        symlink(&victim, root.join("a/b/out")).unwrap();
        symlink(&victim, root.join("top-link")).unwrap();
        let remover = Remover::new(&root, false).unwrap();
        let counts = remover.remove(Path::new("a")).unwrap();
        assert_eq!((counts.files, counts.dirs), (3, 3));
        assert_eq!(counts.bytes, 8192 + 4096);
        let counts = remover.remove(Path::new("top-link")).unwrap();
        assert_eq!((counts.files, counts.dirs), (1, 0));
        remover.finish();
        assert!(victim.join("precious").exists());
        assert_eq!(fs::read_dir(&root).unwrap().count(), 0, "trash folder removed too");
    }

    #[test]
    fn parent_symlink_is_never_traversed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("cache");
        let victim = tmp.path().join("victim");
        fs::create_dir_all(victim.join("entry")).unwrap();
        fs::write(victim.join("entry/precious"), "x").unwrap();
        fs::create_dir_all(&root).unwrap();
        symlink(&victim, root.join("bucket")).unwrap();
        let remover = Remover::new(&root, false).unwrap();
        assert!(remover.remove(Path::new("bucket/entry")).is_err());
        assert!(victim.join("entry/precious").exists());
        assert!(remover.remove(Path::new("../victim")).is_err());
        assert!(remover.remove(Path::new("/etc")).is_err());
        assert!(remover.remove(Path::new("")).is_err());
    }

    #[test]
    fn dry_run_measures_only_and_missing_is_success() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("d/e")).unwrap();
        fs::write(tmp.path().join("d/e/f"), "z").unwrap();
        let remover = Remover::new(tmp.path(), true).unwrap();
        let counts = remover.remove(Path::new("d")).unwrap();
        assert_eq!((counts.files, counts.dirs), (1, 2));
        assert!(tmp.path().join("d/e/f").exists());
        assert_eq!(remover.remove(Path::new("nope")).unwrap(), Counts::default());
    }

    /// The trash folders in `root`.
    fn trash_folders(root: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(TRASH_PREFIX))
            .collect();
        names.sort();
        names
    }

    /// The old trash name: the pid alone.
    fn pid_trash_name() -> String {
        format!("{TRASH_PREFIX}{}", std::process::id())
    }

    #[test]
    fn a_trash_folder_that_exists_is_never_reused_and_goes_as_a_target() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        // A killed run's trash under the name this run tries first (a container restarted with
        // the same pid), holding the numbered entries it had moved there.
        let leftover = root.join(pid_trash_name());
        fs::create_dir_all(leftover.join("0/lib")).unwrap();
        fs::write(leftover.join("0/lib/f"), "x").unwrap();
        fs::create_dir_all(leftover.join("1")).unwrap();
        for entry in ["a", "b"] {
            fs::create_dir_all(root.join(entry).join("sub")).unwrap();
            fs::write(root.join(entry).join("sub/f"), "y").unwrap();
        }
        let mut remover = Remover::new(root, false).unwrap();
        remover.trash_name = |attempt| {
            let name = if attempt == 0 { pid_trash_name() } else { format!("{TRASH_PREFIX}fresh-{attempt}") };
            CString::new(name).unwrap()
        };
        // Moved atomically, into a folder of its own: the leftover is left as it was.
        let Ok(Moved::Trash(trash, name)) = remover.to_trash(remover.root.as_fd(), c"a", 0o755) else {
            panic!("`a` was not renamed into a trash folder");
        };
        let fresh = root.join(format!("{TRASH_PREFIX}fresh-1"));
        assert!(fresh.join(name.to_str().unwrap()).join("sub/f").exists());
        let mut left: Vec<_> = fs::read_dir(&leftover).unwrap().map(|e| e.unwrap().file_name()).collect();
        left.sort();
        assert_eq!(left, ["0", "1"]);
        remover.empty_dir(trash.as_fd(), &name, false).unwrap();
        // The leftover is an ordinary target: moved into this run's trash and emptied, beside
        // other targets.
        let stop = AtomicBool::new(false);
        let targets = [Path::new(&pid_trash_name()).to_path_buf(), "b".into()];
        let rels: Vec<&Path> = targets.iter().map(|p| p.as_path()).collect();
        for result in remover.remove_all(&rels, &stop) {
            assert!(matches!(result, Some(Ok(_))), "{result:?}");
        }
        remover.finish();
        assert_eq!(fs::read_dir(root).unwrap().count(), 0, "everything, the trash folders too, is gone");
    }

    #[test]
    fn a_trash_folder_removed_under_us_is_replaced_not_read_as_a_vanished_target() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for entry in ["a", "b"] {
            fs::create_dir_all(root.join(entry).join("sub")).unwrap();
        }
        let remover = Remover::new(root, false).unwrap();
        remover.remove(Path::new("a")).unwrap();
        let first = trash_folders(root);
        assert_eq!(first.len(), 1, "{first:?}");
        fs::remove_dir(root.join(&first[0])).unwrap();
        // Renaming into the removed folder fails with ENOENT although `b` is there.
        remover.remove(Path::new("b")).unwrap();
        assert!(!root.join("b").exists(), "`b` was reported removed but stayed");
        remover.finish();
        assert_eq!(fs::read_dir(root).unwrap().count(), 0);
    }

    #[test]
    fn a_directory_that_cannot_be_renamed_is_left_whole_and_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for entry in ["a", "b"] {
            fs::create_dir_all(root.join(entry).join("sub")).unwrap();
            fs::write(root.join(entry).join("sub/f"), "y").unwrap();
        }
        let remover = Remover::new(root, false).unwrap();
        remover.remove(Path::new("a")).unwrap();
        let trash = trash_folders(root);
        fs::create_dir(root.join(&trash[0]).join("kept")).unwrap();
        // Never planned (it is made after planning), but were this run's trash a target:
        // renaming it into itself fails (EINVAL), and it must not be deleted in place instead.
        let (_, e) = remover.remove(Path::new(&trash[0])).unwrap_err();
        assert!(e.message.contains("cannot move"), "{e:?}");
        assert!(root.join(&trash[0]).join("kept").exists(), "deleted in place");
        // The trash still works for the other targets.
        remover.remove(Path::new("b")).unwrap();
        assert!(!root.join("b").exists());
    }

    #[test]
    fn no_trash_folder_can_be_made_is_an_error_and_nothing_goes() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join("a/sub")).unwrap();
        fs::write(root.join("a/sub/f"), "y").unwrap();
        let mut remover = Remover::new(root, false).unwrap();
        // Every name tried is taken (by a file): no trash folder, and no deletion in place.
        remover.trash_name = |_| CString::new(format!("{TRASH_PREFIX}taken")).unwrap();
        fs::write(root.join(format!("{TRASH_PREFIX}taken")), "").unwrap();
        let (_, e) = remover.remove(Path::new("a")).unwrap_err();
        assert!(e.message.contains("cannot make a trash folder"), "{e:?}");
        assert!(root.join("a/sub/f").exists(), "deleted in place");
    }

    #[test]
    fn chmod_never_follows_a_swapped_in_link() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("cache");
        let victim = tmp.path().join("victim");
        fs::create_dir_all(root.join("locked")).unwrap();
        fs::create_dir_all(&victim).unwrap();
        fs::set_permissions(root.join("locked"), fs::Permissions::from_mode(0o000)).unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o750)).unwrap();
        symlink(&victim, root.join("swapped")).unwrap();
        let remover = Remover::new(&root, false).unwrap();
        let mode = |p: &Path| fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
        chmod_dir_nofollow(remover.root.as_fd(), c"locked", Mode::from_raw_mode(0o700)).unwrap();
        assert_eq!(mode(&root.join("locked")), 0o700);
        assert!(chmod_dir_nofollow(remover.root.as_fd(), c"swapped", Mode::from_raw_mode(0o700)).is_err());
        assert_eq!(mode(&victim), 0o750, "the link was followed");
    }

    #[test]
    fn hardlinked_files_count_zero_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("d")).unwrap();
        fs::write(tmp.path().join("outside"), vec![0u8; 9000]).unwrap();
        fs::hard_link(tmp.path().join("outside"), tmp.path().join("d/linked")).unwrap();
        let remover = Remover::new(tmp.path(), false).unwrap();
        let counts = remover.remove(Path::new("d")).unwrap();
        assert_eq!((counts.files, counts.bytes), (1, 0));
        assert!(tmp.path().join("outside").exists());
    }
}
