//! Process introspection for safe-prune: the only crate that reads `/proc` or calls libproc.
//!
//! Every backend answers one question: *which running processes show a path under one of
//! these roots (or a file on one of these devices), and which processes could not be looked
//! at?* The answer is plain data ([`ScanReport`]); mapping paths to cache entries is the main
//! crate's job. Backends search raw bytes (paths are not UTF-8 in general), never build regexes
//! from paths, and classify every process as inspected, gone or uninspectable: a process that
//! cannot be read is never reported as "using nothing".
#![deny(unsafe_code)]

use std::path::PathBuf;

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "macos")]
mod macos;

pub mod mountinfo;
pub mod procargs;

// Pure helpers of the macOS backend, compiled (and tested) on every OS.
mod darwin_abi;
mod darwin_logic;

/// Where a piece of evidence was found. The names are the ones safe-prune's JSON uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// The process's executable (`/proc/PID/exe`, `proc_pidpath`).
    Exe,
    /// The process's working directory.
    Cwd,
    /// The process's root directory (chroot).
    Root,
    /// The working directory of one thread that unshared its filesystem state.
    ThreadCwd,
    /// An open file descriptor.
    Fd,
    /// A memory-mapped file.
    Map,
    /// A value in the initial environment block.
    Environ,
    /// An argument of the command line.
    Cmdline,
}

impl Source {
    /// The stable lower-case name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Exe => "exe",
            Source::Cwd => "cwd",
            Source::Root => "root",
            Source::ThreadCwd => "thread-cwd",
            Source::Fd => "fd",
            Source::Map => "map",
            Source::Environ => "environ",
            Source::Cmdline => "cmdline",
        }
    }

    /// Every source, in report order.
    pub const ALL: [Source; 8] = [
        Source::Exe,
        Source::Cwd,
        Source::Root,
        Source::ThreadCwd,
        Source::Fd,
        Source::Map,
        Source::Environ,
        Source::Cmdline,
    ];
}

/// A device number as the kernel reports it (`st_dev`), with its major and minor parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Device {
    pub major: u32,
    pub minor: u32,
}

/// One observation that a process uses a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    pub source: Source,
    /// The path as the process shows it: raw bytes, ` (deleted)` stripped, maps' `\012`
    /// unescaped. For `Environ` and `Cmdline` it is the path-like token that matched a root
    /// (one element of a `PATH`-style list, or the part of an argument starting at the root).
    pub path: Vec<u8>,
    /// What names the place: the variable name (`PATH`), the argument index (`argv[2]`), the fd
    /// number (`fd 7`), the thread id (`tid 1234`), the mapped range; may be empty.
    pub detail: String,
    /// Device and inode of the object, when the backend knows them (maps columns, `stat`
    /// through the process's own link). Used to catch paths seen through another mount
    /// namespace or a bind mount.
    pub dev_ino: Option<(Device, u64)>,
    /// True when `path` starts with one of the requested roots. False when the evidence was
    /// caught only by its device (the path may mean nothing in our mount namespace).
    pub by_path: bool,
    /// The path as the process spells it, when that spelling is not ours: a process in another
    /// mount namespace (a container) or below a chroot names the directory of interest by
    /// another path. `path` is then that path rewritten to our spelling of the same place
    /// ([`FsLocation::path`], or the root the chroot sees it through), so it maps like any
    /// other hit; this keeps the original text for the user. `None` on macOS.
    pub original: Option<Vec<u8>>,
}

/// Where the directory of interest lies in its filesystem, read from our own
/// `/proc/self/mountinfo` ([`mountinfo::locate`]). With it the Linux scan finds the directory's
/// spellings in every other mount namespace from that namespace's own mountinfo: the same
/// filesystem (device) mounted from a directory that contains it (or lies inside it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsLocation {
    /// The device as mountinfo prints it (`maj:min` of the superblock). On btrfs this is not
    /// the `st_dev` of the directory (a subvolume has its own anonymous device).
    pub device: Device,
    /// The directory's path inside that filesystem, without a trailing slash (empty for the
    /// filesystem's root directory).
    pub path_in_fs: Vec<u8>,
    /// The directory's path in our namespace (canonical): what evidence found through another
    /// namespace's spelling is rewritten to.
    pub path: Vec<u8>,
}

/// A process that showed evidence (or whose command line was asked for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessRecord {
    pub pid: u32,
    pub ppid: u32,
    /// Real uid.
    pub uid: u32,
    /// The kernel's short command name (`comm`), lossy UTF-8.
    pub command: String,
    /// The command line, raw bytes, empty arguments kept. Filled for every process that has
    /// evidence and for every process whose `argv[0]` base name is in
    /// [`ScanRequest::argv_of`].
    pub argv: Vec<Vec<u8>>,
    pub evidence: Vec<Evidence>,
    /// Sources that could not be read for this otherwise inspected process (for example a
    /// thread's cwd denied). Non-empty means the process is also listed as uninspectable.
    pub denied: Vec<Source>,
}

/// Why a process could not be (fully) inspected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uninspectable {
    pub pid: u32,
    /// The uid when it could be read (it usually can, from `status`).
    pub uid: Option<u32>,
    pub command: String,
    /// Human reason: "permission denied", "hidden by hidepid", "environment unavailable", ...
    pub reason: String,
    /// The sources that could not be read.
    pub denied: Vec<Source>,
}

/// What to look for.
#[derive(Debug, Clone)]
pub struct ScanRequest {
    /// Absolute path spellings of the directory of interest, as bytes, without a trailing
    /// slash (configured, canonical, bind-mount aliases). A path matches when it equals a
    /// root or starts with a root followed by `/`.
    pub roots: Vec<Vec<u8>>,
    /// Devices holding the directory of interest. For processes whose paths cannot be trusted
    /// (another mount namespace, another root), links are `stat`ed and maps' dev:inode columns
    /// compared against these; hits come back with `by_path: false` and `dev_ino` set.
    pub devices: Vec<Device>,
    /// procfs mount point (Linux; tests point it elsewhere). Ignored on macOS.
    pub proc_root: PathBuf,
    /// Processes not to report. safe-prune passes none: its own process is evidence like any
    /// other (`uvx safe-prune` runs from the cache it prunes).
    pub skip_pids: Vec<u32>,
    /// Keep `argv` of processes whose `argv[0]` base name is one of these (e.g. `uv`, `uvx`),
    /// even when they show no evidence.
    pub argv_of: Vec<Vec<u8>>,
    /// Worker threads; 0 picks a default.
    pub threads: usize,
    /// Where the directory lies in its filesystem (Linux). When set, every process's mount
    /// namespace is checked (one `readlink` each) and the environment and command line of a
    /// process in another namespace are also matched against that namespace's spellings of
    /// the directory. `None`: only `roots` (and their chroot-relative forms) are searched.
    pub location: Option<FsLocation>,
}

impl Default for ScanRequest {
    fn default() -> Self {
        Self {
            roots: Vec::new(),
            devices: Vec::new(),
            proc_root: PathBuf::from("/proc"),
            skip_pids: Vec::new(),
            argv_of: Vec::new(),
            threads: 0,
            location: None,
        }
    }
}

/// The outcome of one scan of every process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Processes with evidence, or whose argv was asked for.
    pub processes: Vec<ProcessRecord>,
    /// How many processes were looked at (not counting kernel threads and zombies).
    pub scanned: usize,
    /// Processes that exited while being scanned.
    pub gone: usize,
    /// Processes that could not be read, completely or in part.
    pub uninspectable: Vec<Uninspectable>,
    /// A system-wide reason some processes may be invisible altogether (e.g. `/proc` mounted
    /// with `hidepid`), when detected.
    pub hidden: Option<String>,
}

/// A lock held on a file, from the kernel's lock table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileLock {
    pub pid: u32,
    /// `flock`, `posix`, `ofd`.
    pub kind: String,
    /// True for an exclusive (write) lock.
    pub exclusive: bool,
    pub device: Device,
    pub inode: u64,
}

/// A failure of the scan as a whole (not of one process).
#[derive(Debug)]
pub enum ScanError {
    /// The process table itself could not be listed.
    ListProcesses { path: PathBuf, source: std::io::Error },
    /// This operating system has no backend.
    Unsupported(&'static str),
}

impl std::fmt::Display for ScanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScanError::ListProcesses { path, source } => {
                write!(f, "cannot list processes in {}: {source}", path.display())
            }
            ScanError::Unsupported(os) => {
                write!(f, "process scanning is not supported on {os}; safe-prune supports Linux and macOS")
            }
        }
    }
}

impl std::error::Error for ScanError {}

/// Scan every process once.
pub fn scan(request: &ScanRequest) -> Result<ScanReport, ScanError> {
    #[cfg(target_os = "linux")]
    {
        linux::scan(request)
    }
    #[cfg(target_os = "macos")]
    {
        macos::scan(request)
    }
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    {
        let _ = request;
        Err(ScanError::Unsupported(std::env::consts::OS))
    }
}

/// The kernel's table of file locks (Linux `/proc/locks`); empty where unsupported.
pub fn file_locks(request: &ScanRequest) -> Vec<FileLock> {
    #[cfg(target_os = "linux")]
    {
        linux::file_locks(&request.proc_root)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = request;
        Vec::new()
    }
}

/// True when `path` equals `root` or lies below it (`root` then `/`). Byte-exact.
pub fn under_root(path: &[u8], root: &[u8]) -> bool {
    path.starts_with(root) && (path.len() == root.len() || path[root.len()] == b'/')
}
