//! One cache, many hosts (`--registry DIR`, `safe-prune agent`).
//!
//! A process scan sees one host. When a uv cache is shared (NFS home directories, a volume
//! mounted by many CI runners or pods), every host that uses it runs `safe-prune agent`, which
//! publishes what its processes use into a registry folder on the same shared filesystem, and a
//! prune with `--registry` keeps the union of its own scan and every host's published set.
//! The pruning host's own agent counts like any other (run as root it sees processes that an
//! unprivileged prune cannot inspect); no agent on the pruning host is the plain single-host
//! case. There is no server: the folder is the only channel.
//!
//! Files in the registry (all written atomically: a temporary `.tmp-*` file in the folder,
//! `fsync`, `rename`):
//! - `host-<key>.json`: one per host, rewritten every interval by its agent ([`Record`]);
//! - `announce-<key>-<nonce>.json`: a pruning host's plan, the candidate entries
//!   ([`Announcement`]);
//! - `answer-<nonce>-<key>.json`: an agent's answer to one announcement, from a fresh scan
//!   restricted to the candidates: the ones its host uses (vetoes), or "clear" ([`Answer`]).
//!
//! `<key>` is the host id made into a safe file name ([`file_key`]); the raw id is inside.
//!
//! The announcement closes the heartbeat window: a tool started on host B after B's last
//! heartbeat is caught by B's answer. A host that does not answer within `--registry-timeout`
//! (or whose heartbeat is older than three intervals) is *stale*: its last published entries
//! stay protected and the run names it. After `--host-expiry` a record is ignored (*expired*).
//! A record or answer that cannot be read (torn, garbage, a newer format) never means "uses
//! nothing": if that host does not answer either, nothing is removed. Nor does a prune that
//! cannot write its announcement remove anything while a host may be live (nobody could veto).
//!
//! Ages are measured on the file server's clock: the pruner's "now" is the modification time
//! of the announcement it just wrote, compared with each record's modification time (both set
//! by the server), so clock skew between hosts does not matter. A record is live while that
//! age is at most three intervals plus [`CLOCK_MARGIN`] (timestamp granularity, attribute
//! caching). Registry files are untrusted input: size-limited, never followed through a
//! symlink, every path checked to stay inside the cache.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::plan::Plan;
use crate::prune::{Cache, Fatal};
use crate::report::JsonPath;
use crate::usage::{self, CacheView, Holder, Usage};

/// The format version of every registry file this safe-prune writes and the newest it reads.
pub const FORMAT: u64 = 1;
/// A record is live while younger than this many intervals (plus [`CLOCK_MARGIN`]).
pub const STALE_INTERVALS: u32 = 3;
/// Slack on record ages: file timestamp granularity and NFS attribute caching (`actimeo=1`).
pub const CLOCK_MARGIN: Duration = Duration::from_secs(10);
/// Clocks further apart than this (host vs. file server) are reported.
const SKEW_REPORTED: Duration = Duration::from_secs(10);
/// Announcements, answers and temporary files older than this are garbage.
pub const GC_AGE: Duration = Duration::from_secs(3600);
/// How often a pruner looks for answers.
const ANSWER_POLL: Duration = Duration::from_millis(100);
/// No registry file is read beyond this size.
const MAX_FILE_BYTES: u64 = 64 << 20;
/// Longest host id accepted.
const MAX_HOST_ID: usize = 255;
/// Interval assumed for a record whose own cannot be read.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// Longest interval or age taken from a file (larger values are clamped).
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

const HOST_PREFIX: &str = "host-";
const ANNOUNCE_PREFIX: &str = "announce-";
const ANSWER_PREFIX: &str = "answer-";
const TMP_PREFIX: &str = ".tmp-";
const SUFFIX: &str = ".json";
const NONCE_LEN: usize = 16;

/// `--registry` and its options, for a prune.
#[derive(Debug, Clone)]
pub struct Config {
    pub dir: PathBuf,
    /// The longest wait for answers (`--registry-timeout`).
    pub timeout: Duration,
    /// Records older than this are ignored (`--host-expiry`).
    pub host_expiry: Duration,
}

impl Config {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(7 * 86_400);

    /// `--registry` (or `SAFE_PRUNE_REGISTRY`) and its options, if given.
    pub fn from_args(args: &crate::cli::RegistryArgs) -> Option<Config> {
        let dir = args.registry.clone().filter(|d| !d.as_os_str().is_empty())?;
        Some(Config { dir, timeout: args.registry_timeout, host_expiry: args.host_expiry })
    }

    /// `SAFE_PRUNE_REGISTRY` with default options (for `uv cache prune` through the shim).
    pub fn from_env() -> Option<Config> {
        let dir = std::env::var_os("SAFE_PRUNE_REGISTRY").filter(|v| !v.is_empty())?;
        Some(Config {
            dir: PathBuf::from(dir),
            timeout: Self::DEFAULT_TIMEOUT,
            host_expiry: Self::DEFAULT_EXPIRY,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Identity

/// This host's id: `SAFE_PRUNE_HOST_ID` (containers, tests), else the hostname (of this UTS
/// namespace).
pub fn host_id() -> Result<String, String> {
    if let Some(value) = std::env::var_os("SAFE_PRUNE_HOST_ID") {
        let id = value.to_string_lossy().trim().to_string();
        if !id.is_empty() {
            return check_host_id(id, "SAFE_PRUNE_HOST_ID");
        }
    }
    let from_proc = std::fs::read("/proc/sys/kernel/hostname")
        .ok()
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .filter(|s| !s.is_empty());
    let id = match from_proc {
        Some(id) => id,
        None => rustix::system::uname().nodename().to_string_lossy().trim().to_string(),
    };
    if id.is_empty() {
        return Err("this host has no hostname; set SAFE_PRUNE_HOST_ID to a name unique among the hosts sharing the cache".into());
    }
    check_host_id(id, "the hostname")
}

fn check_host_id(id: String, what: &str) -> Result<String, String> {
    if id.len() > MAX_HOST_ID {
        return Err(format!(
            "{what} is longer than {MAX_HOST_ID} bytes; set SAFE_PRUNE_HOST_ID to a shorter name"
        ));
    }
    Ok(id)
}

/// The kernel's id of this boot, to tell a rebooted host's records apart.
#[cfg(not(target_os = "macos"))]
pub fn boot_id() -> Option<String> {
    let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = text.trim();
    (!id.is_empty() && id.len() <= 64).then(|| id.to_string())
}

/// The kernel's id of this boot (`sysctl kern.bootsessionuuid`), to tell a rebooted host's
/// records apart.
#[cfg(target_os = "macos")]
#[allow(unsafe_code)] // the crate denies it; this one sysctl call has no safe wrapper
pub fn boot_id() -> Option<String> {
    let mut buf = [0u8; 65];
    let mut len: libc::size_t = buf.len();
    // SAFETY: a NUL-terminated name, a buffer and its length; the kernel writes at most `len`
    // bytes and sets `len` to what it wrote.
    let rc = unsafe {
        libc::sysctlbyname(
            c"kern.bootsessionuuid".as_ptr(),
            buf.as_mut_ptr().cast(),
            &mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 {
        return None;
    }
    let text = std::str::from_utf8(buf.get(..len)?).ok()?;
    let id = text.trim_end_matches('\0').trim();
    (!id.is_empty() && id.len() <= 64).then(|| id.to_string())
}

/// This process's PID namespace (its inode; Linux). A record or announcement with our host id
/// is "this host" only if it also has our boot id and PID namespace, i.e. if we see the same
/// processes: a prune in a container given its node's id still waits for the node's agent.
#[cfg(not(target_os = "macos"))]
pub fn pid_namespace() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid").ok().map(|m| m.ino())
}

/// macOS has one PID space per boot: 0 stands for it (Linux namespace inodes are never 0).
#[cfg(target_os = "macos")]
pub fn pid_namespace() -> Option<u64> {
    Some(0)
}

/// Who we are: the host id, and what proves that another file describes our own processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub host: String,
    pub key: String,
    pub boot_id: Option<String>,
    pub pid_ns: Option<u64>,
}

impl Identity {
    pub fn here() -> Result<Identity, String> {
        let host = host_id()?;
        Ok(Identity { key: file_key(&host), host, boot_id: boot_id(), pid_ns: pid_namespace() })
    }

    /// True when a file with `key`, `boot_id` and `pid_ns` was written by a process that sees
    /// exactly our processes (unknown values never match).
    pub fn is_us(&self, key: &str, boot_id: Option<&str>, pid_ns: Option<u64>) -> bool {
        key == self.key
            && self.boot_id.is_some()
            && boot_id == self.boot_id.as_deref()
            && self.pid_ns.is_some()
            && pid_ns == self.pid_ns
    }
}

/// A host id as a file-name part: ASCII letters, digits, `.`, `_`, `-` kept, anything else
/// `_`, at most 64 characters; an id that had to change gets a hash of the raw id appended, so
/// two ids never share a file.
pub fn file_key(id: &str) -> String {
    let safe: String = id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .take(64)
        .collect();
    if safe == id && !safe.is_empty() {
        safe
    } else {
        format!("{safe}-{:016x}", fnv1a(id.as_bytes()))
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// 16 hex digits, random (from `/dev/urandom`, else time, pid and a counter).
pub fn nonce() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut bytes = [0u8; 8];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).is_ok();
    let mut value = u64::from_le_bytes(bytes);
    if !random {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        value = fnv1a(&[nanos.to_le_bytes(), u64::from(std::process::id()).to_le_bytes()].concat());
    }
    value ^= COUNTER.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!("{value:016x}")
}

fn is_nonce(text: &str) -> bool {
    text.len() == NONCE_LEN && text.bytes().all(|b| b.is_ascii_hexdigit())
}

pub fn record_name(key: &str) -> String {
    format!("{HOST_PREFIX}{key}{SUFFIX}")
}

fn announce_name(key: &str, nonce: &str) -> String {
    format!("{ANNOUNCE_PREFIX}{key}-{nonce}{SUFFIX}")
}

pub fn answer_name(nonce: &str, key: &str) -> String {
    format!("{ANSWER_PREFIX}{nonce}-{key}{SUFFIX}")
}

/// `announce-<key>-<nonce>.json` → (key, nonce).
pub fn parse_announce_name(name: &str) -> Option<(&str, &str)> {
    let middle = name.strip_prefix(ANNOUNCE_PREFIX)?.strip_suffix(SUFFIX)?;
    let (key, nonce) = middle.rsplit_once('-')?;
    (is_nonce(nonce) && !key.is_empty()).then_some((key, nonce))
}

/// `answer-<nonce>-<key>.json` → (nonce, key).
fn parse_answer_name(name: &str) -> Option<(&str, &str)> {
    let middle = name.strip_prefix(ANSWER_PREFIX)?.strip_suffix(SUFFIX)?;
    let (nonce, key) = middle.split_once('-')?;
    (is_nonce(nonce) && !key.is_empty()).then_some((nonce, key))
}

// ---------------------------------------------------------------------------------------------
// Wire format

/// A cache-relative path in a registry file: a string, or `{"bytes": "<base64>"}` when not
/// UTF-8. Reading checks that it stays inside the cache (no `..`, not absolute, not empty).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RelPath(pub PathBuf);

impl Serialize for RelPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        JsonPath(self.0.clone()).serialize(s)
    }
}

impl<'de> Deserialize<'de> for RelPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Bytes { bytes: String },
        }
        let bytes = match Raw::deserialize(d)? {
            Raw::Text(text) => text.into_bytes(),
            Raw::Bytes { bytes } => base64::engine::general_purpose::STANDARD
                .decode(bytes.as_bytes())
                .map_err(|e| serde::de::Error::custom(format!("bad base64 path: {e}")))?,
        };
        let path = PathBuf::from(OsStr::from_bytes(&bytes));
        if !valid_rel(&path) {
            return Err(serde::de::Error::custom(format!(
                "path {:?} is not a plain path inside the cache",
                path.to_string_lossy()
            )));
        }
        Ok(RelPath(path))
    }
}

/// A relative path of plain components only, spelled canonically (no `.`, `//` or trailing
/// `/`), without NUL, of sane length.
pub fn valid_rel(path: &Path) -> bool {
    let bytes = path.as_os_str().as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 4096
        && !bytes.contains(&0)
        && path.components().all(|c| matches!(c, Component::Normal(_)))
        && path.components().collect::<PathBuf>().as_os_str() == path.as_os_str()
}

/// A process holding an entry, as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireHolder {
    pub pid: u32,
    pub command: String,
    pub user: String,
    pub evidence: String,
    pub detail: String,
}

/// An entry in use on a host: with its holders, or (`via`) needed by an entry in use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEntry {
    pub path: RelPath,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<WireHolder>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<RelPath>,
}

/// `host-<key>.json`: what one host's processes use, republished every interval.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub format: u64,
    /// Always `host`.
    pub kind: String,
    /// The raw host id.
    pub host: String,
    #[serde(default)]
    pub boot_id: Option<String>,
    #[serde(default)]
    pub agent_pid: Option<u32>,
    /// The agent's PID namespace (see [`pid_namespace`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_ns: Option<u64>,
    #[serde(default)]
    pub version: Option<String>,
    /// Unix seconds on the host's clock.
    pub time: u64,
    pub interval_secs: u64,
    /// The cache as that host sees it (informational).
    #[serde(default)]
    pub cache_dir: Option<String>,
    pub entries: Vec<WireEntry>,
    /// Processes that could use the cache but could not be inspected.
    pub uninspectable: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden: Option<String>,
}

/// `announce-<key>-<nonce>.json`: a prune's candidates.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Announcement {
    pub format: u64,
    /// Always `announcement`.
    pub kind: String,
    pub nonce: String,
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_ns: Option<u64>,
    pub pid: u32,
    pub time: u64,
    pub timeout_secs: u64,
    pub candidates: Vec<RelPath>,
}

/// `answer-<nonce>-<key>.json`: one host's verdict on one announcement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    pub format: u64,
    /// Always `answer`.
    pub kind: String,
    pub nonce: String,
    pub host: String,
    #[serde(default)]
    pub boot_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_ns: Option<u64>,
    pub time: u64,
    /// `clear` (uses none of the candidates), `veto` (uses `vetoes`), `error` (could not scan).
    pub status: String,
    #[serde(default)]
    pub vetoes: Vec<WireEntry>,
    #[serde(default)]
    pub uninspectable: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub const KIND_HOST: &str = "host";
pub const KIND_ANNOUNCEMENT: &str = "announcement";
pub const KIND_ANSWER: &str = "answer";

/// Parse a registry file: JSON, a known format version, the expected kind. A torn file, garbage
/// or a newer format is an error naming the problem.
pub fn parse<T: DeserializeOwned>(bytes: &[u8], kind: &str) -> Result<T, String> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| format!("not a complete JSON document (torn or garbage): {e}"))?;
    let format = value.get("format").and_then(serde_json::Value::as_u64).ok_or("no format version")?;
    if format > FORMAT {
        return Err(format!(
            "format {format} is newer than this safe-prune reads ({FORMAT}); upgrade safe-prune"
        ));
    }
    if format == 0 {
        return Err("format 0 is not a safe-prune format".into());
    }
    let got = value.get("kind").and_then(serde_json::Value::as_str);
    if got != Some(kind) {
        return Err(format!(
            "not a {kind} file (kind {})",
            got.map_or("missing".into(), |k| format!("{k:?}"))
        ));
    }
    serde_json::from_value(value).map_err(|e| format!("invalid {kind} file: {e}"))
}

/// Holders as published.
pub fn wire_entries(usage: &Usage) -> Vec<WireEntry> {
    let holders = |list: &[Holder]| -> Vec<WireHolder> {
        list.iter()
            .map(|h| WireHolder {
                pid: h.pid,
                command: h.command.clone(),
                user: h.user.clone(),
                evidence: h.evidence.to_string(),
                detail: h.detail.clone(),
            })
            .collect()
    };
    let mut out: Vec<WireEntry> = usage
        .direct
        .iter()
        .map(|(path, list)| WireEntry { path: RelPath(path.clone()), holders: holders(list), via: None })
        .collect();
    out.extend(usage.closure.iter().filter(|(path, _)| !usage.direct.contains_key(*path)).map(
        |(path, via)| WireEntry {
            path: RelPath(path.clone()),
            holders: Vec::new(),
            via: Some(RelPath(via.clone())),
        },
    ));
    out
}

/// Evidence kinds we know; anything else published by a host reads as `unknown`.
fn evidence_str(text: &str) -> &'static str {
    const KNOWN: [&str; 9] = ["exe", "cwd", "root", "thread-cwd", "fd", "map", "environ", "cmdline", "lock"];
    KNOWN.iter().find(|k| **k == text).copied().unwrap_or("unknown")
}

/// Untrusted text for reports and terminals: control characters escaped, length bounded.
pub fn clean_text(text: &str, max_chars: usize) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i >= max_chars {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Files

/// Write `bytes` to `dir/name` atomically: a new temporary file in `dir`, `fsync`, `rename`,
/// then `fsync` of the folder (best effort). Returns the file's modification time as the file
/// system set it (on NFS: the server's clock).
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<SystemTime> {
    let tmp = dir.join(format!("{TMP_PREFIX}{name}-{}-{}", std::process::id(), nonce()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        file.metadata()?.modified()
    })();
    let result = written.and_then(|mtime| std::fs::rename(&tmp, dir.join(name)).map(|()| mtime));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    } else if let Ok(folder) = std::fs::File::open(dir) {
        let _ = folder.sync_all();
    }
    result
}

/// Read a registry file: never through a symlink, only a regular file, at most
/// [`MAX_FILE_BYTES`]. Returns the bytes and the modification time.
pub fn read_file(path: &Path) -> io::Result<(Vec<u8>, Option<SystemTime>)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(io::Error::other(format!("larger than {MAX_FILE_BYTES} bytes")));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(io::Error::other(format!("larger than {MAX_FILE_BYTES} bytes")));
    }
    Ok((bytes, meta.modified().ok()))
}

/// UTF-8 names in `dir` (others are not ours).
pub fn list(dir: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        if let Ok(name) = entry?.file_name().into_string() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// The file system's clock now, read from the modification time of a file we write (and
/// remove) in `dir`.
pub fn fs_clock(dir: &Path) -> io::Result<SystemTime> {
    let name = format!("{TMP_PREFIX}clock-{}", nonce());
    let mtime = write_atomic(dir, &name, b"")?;
    let _ = std::fs::remove_file(dir.join(&name));
    Ok(mtime)
}

/// Remove announcements, answers and temporary files older than [`GC_AGE`] on the file
/// system's clock `fs_now` (leftovers of killed runs). Host records are never removed.
pub fn collect_garbage(dir: &Path, names: &[String], fs_now: SystemTime) {
    for name in names {
        let ours = name.starts_with(ANNOUNCE_PREFIX)
            || name.starts_with(ANSWER_PREFIX)
            || name.starts_with(TMP_PREFIX);
        if !ours {
            continue;
        }
        let path = dir.join(name);
        let Ok(meta) = path.symlink_metadata() else { continue };
        if meta.modified().is_ok_and(|m| age(fs_now, m) > GC_AGE) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// The registry folder, checked: it exists, is a directory, and is not inside the cache
/// (uv's prune removes unknown entries of the cache, and so do we). Returns its canonical path.
pub fn check_dir(dir: &Path, cache: &Path) -> Result<PathBuf, String> {
    let canonical = std::fs::canonicalize(dir).map_err(|e| {
        format!(
            "registry {}: {e}; create the folder on the filesystem the hosts share (next to the cache, not inside it)",
            dir.display()
        )
    })?;
    if !canonical.is_dir() {
        return Err(format!("registry {} is not a directory", dir.display()));
    }
    let cache_canonical = std::fs::canonicalize(cache).unwrap_or_else(|_| normalize(cache));
    if canonical.starts_with(&cache_canonical) || normalize(dir).starts_with(normalize(cache)) {
        return Err(format!(
            "registry {} is inside the uv cache {}: a prune (uv's or ours) would remove it as an unknown entry. Put it next to the cache, e.g. {}",
            dir.display(),
            cache.display(),
            cache.with_file_name("uv-registry").display()
        ));
    }
    Ok(canonical)
}

/// Lexically absolute and normalized (`.` dropped, `..` applied).
fn normalize(path: &Path) -> PathBuf {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")).join(path)
    };
    crate::usage::normalize(&absolute)
}

pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `later - earlier`, zero when negative.
pub fn age(later: SystemTime, earlier: SystemTime) -> Duration {
    later.duration_since(earlier).unwrap_or(Duration::ZERO)
}

fn secs(value: u64) -> Duration {
    Duration::from_secs(value).min(MAX_DURATION)
}

/// A host with this interval is stale after this long without a heartbeat.
pub fn stale_after(interval: Duration) -> Duration {
    interval.max(Duration::from_secs(1)).saturating_mul(STALE_INTERVALS).saturating_add(CLOCK_MARGIN)
}

// ---------------------------------------------------------------------------------------------
// Reports

/// A host's state in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HostState {
    /// Answered the announcement, or (when nothing was announced) has a fresh heartbeat.
    Live,
    /// Did not answer, or its heartbeat is too old: its last published entries are kept.
    Stale,
    /// Silent for longer than `--host-expiry`: its record is ignored.
    Expired,
}

/// One host in the JSON report (`"hosts"`).
#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    pub host: String,
    pub state: HostState,
    /// The record's file in the registry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    /// When the record was last written (file server's clock, RFC 3339 UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval_secs: Option<u64>,
    /// Entries in its record (kept unless expired).
    pub entries: usize,
    /// Whether it answered this run's announcement (absent when nothing was announced).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answered: Option<bool>,
    /// Candidates (and what they need) it uses, from its answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vetoes: Option<usize>,
    /// Processes on it that could use the cache but could not be inspected.
    pub uninspectable: u64,
    /// Host clock minus file-server clock, when they differ by more than 10 s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock_skew_secs: Option<i64>,
    /// Why it is stale or expired, or what is odd about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The pruning host's own agent (same id, boot and PID namespace): its record and answer
    /// are added to the prune's own scan.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub this_host: bool,
}

/// `2024-05-01T12:00:00Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = unix_secs(t);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// `45s`, `12m`, `3h`, `8d` (exact units when they fit: `1h`, `7d`, `3m10s` stays seconds
/// below two minutes, else is rounded down).
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        _ if s >= 86_400 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        _ if s >= 3600 && s % 3600 == 0 => format!("{}h", s / 3600),
        _ if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        0..=119 => format!("{s}s"),
        120..=7_199 => format!("{}m", s / 60),
        7_200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Lines for the human output: stale and expired hosts always, live ones with `-v`.
pub fn host_lines(hosts: &[HostReport], verbose: u8) -> String {
    let mut out = String::new();
    for h in hosts {
        let seen = h.age_secs.map(|a| format!("last seen {} ago", human_duration(Duration::from_secs(a))));
        match h.state {
            HostState::Stale => {
                let why = [seen, h.reason.clone()].into_iter().flatten().collect::<Vec<_>>().join("; ");
                let _ = writeln!(
                    out,
                    "warning: host {} is stale ({why}): its {} published entr{} kept",
                    h.host,
                    h.entries,
                    if h.entries == 1 { "y is" } else { "ies are" }
                );
            }
            HostState::Expired => {
                let _ = writeln!(
                    out,
                    "warning: host {} expired ({}): its record is ignored{}",
                    h.host,
                    seen.unwrap_or_else(|| "never seen".into()),
                    h.record
                        .as_deref()
                        .map(|r| format!("; delete {r} from the registry if the host is gone"))
                        .unwrap_or_default()
                );
            }
            HostState::Live if verbose > 0 => {
                let mut what = Vec::new();
                if h.this_host {
                    what.push("this host".to_string());
                }
                if let Some(v) = h.vetoes {
                    what.push(format!("uses {v} of the candidates"));
                }
                what.extend(seen);
                if let Some(reason) = &h.reason {
                    what.push(reason.clone());
                }
                let _ = writeln!(out, "Host {} is live ({})", h.host, what.join("; "));
            }
            HostState::Live => {}
        }
        if h.uninspectable > 0 && h.state != HostState::Expired {
            let _ = writeln!(
                out,
                "warning: host {} could not inspect {} process{}; entries only they use cannot be seen there",
                h.host,
                h.uninspectable,
                if h.uninspectable == 1 { "" } else { "es" }
            );
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The pruning side

/// What the other hosts use, to merge into this host's scan before the final plan.
#[derive(Debug, Default)]
pub struct Shared {
    /// Entries other hosts use, with their holders (each naming its host).
    pub direct: BTreeMap<PathBuf, Vec<Holder>>,
    /// Entries needed by those, with the entry that needs them.
    pub closure: BTreeMap<PathBuf, PathBuf>,
    /// The candidates announced (the plan's targets): nothing else may be removed.
    pub announced: BTreeSet<PathBuf>,
    pub hosts: Vec<HostReport>,
    /// This host's name as its agent's holders carry it: their pids are ours.
    pub this_host: Option<String>,
}

impl Shared {
    /// Add the other hosts' entries to `usage` (so they are protected and reported).
    pub fn merge_into(&self, usage: &mut Usage) {
        for (entry, holders) in &self.direct {
            let list = usage.direct.entry(entry.clone()).or_default();
            for h in holders {
                // This host's agent names processes our own scan may have found already.
                let ours = h.host.is_some() && h.host == self.this_host;
                if list.contains(h) || (ours && list.iter().any(|l| l.host.is_none() && l.pid == h.pid)) {
                    continue;
                }
                list.push(h.clone());
            }
        }
        for (entry, via) in &self.closure {
            if !usage.direct.contains_key(entry) {
                usage.closure.entry(entry.clone()).or_insert_with(|| via.clone());
            }
        }
    }

    /// Drop every target that is not inside an announced candidate: only what every live host
    /// was asked about (and cleared) is removed, whatever a re-plan came up with.
    pub fn restrict(&self, plan: &mut Plan) {
        plan.targets.retain(|t| t.rel.ancestors().any(|a| self.announced.contains(a)));
    }
}

/// One `host-*.json` as read.
struct HostFile {
    name: String,
    mtime: Option<SystemTime>,
    record: Result<Record, String>,
}

/// Every `host-*.json` in `dir`, by key.
fn read_records(dir: &Path) -> io::Result<BTreeMap<String, HostFile>> {
    let mut out = BTreeMap::new();
    for name in list(dir)? {
        let Some(key) = name.strip_prefix(HOST_PREFIX).and_then(|n| n.strip_suffix(SUFFIX)) else { continue };
        if key.is_empty() {
            continue;
        }
        // One retry: on NFS a file replaced by rename can fail once with ESTALE.
        let path = dir.join(&name);
        let read = read_file(&path).or_else(|e| match e.kind() {
            io::ErrorKind::NotFound => Err(e),
            _ => {
                std::thread::sleep(Duration::from_millis(50));
                read_file(&path)
            }
        });
        let (record, mtime) = match read {
            Ok((bytes, mtime)) => (parse::<Record>(&bytes, KIND_HOST), mtime),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => (
                Err(format!("cannot read it: {e}")),
                path.symlink_metadata().ok().and_then(|m| m.modified().ok()),
            ),
        };
        out.insert(key.to_string(), HostFile { name: name.clone(), mtime, record });
    }
    Ok(out)
}

/// Answers to `nonce` in `dir` not read yet, into `answers` (by key).
fn read_answers(dir: &Path, nonce: &str, answers: &mut BTreeMap<String, Result<Answer, String>>) {
    let Ok(names) = list(dir) else { return };
    for name in names {
        let Some((n, key)) = parse_answer_name(&name) else { continue };
        if n != nonce || answers.contains_key(key) {
            continue;
        }
        let answer = match read_file(&dir.join(&name)) {
            Ok((bytes, _)) => parse::<Answer>(&bytes, KIND_ANSWER).and_then(|a| {
                if a.nonce != nonce {
                    Err(format!("answer names announcement {:?}", a.nonce))
                } else if file_key(&a.host) != key {
                    Err(format!("answer from {:?} in another host's file", a.host))
                } else {
                    Ok(a)
                }
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => Err(format!("cannot read it: {e}")),
        };
        answers.insert(key.to_string(), answer);
    }
}

/// Ages of a record: `(low, high)`. With the file server's clock both are the record file's
/// age on it. Without (the registry could not be written), the smaller and larger of the age
/// by the file's time and by the host's own timestamp, read against our clock: expiry uses the
/// low one (never expire early), staleness the high one.
fn ages(file: &HostFile, clock: &Clock) -> Option<(Duration, Duration)> {
    if let (Some(fs_now), Some(mtime)) = (clock.fs_now, file.mtime) {
        let a = age(fs_now, mtime);
        return Some((a, a));
    }
    let by_mtime = file.mtime.map(|m| age(clock.local_now, m));
    let by_host = file.record.as_ref().ok().map(|r| age(clock.local_now, UNIX_EPOCH + secs(r.time)));
    match (by_mtime, by_host) {
        (Some(a), Some(b)) => Some((a.min(b), a.max(b))),
        (Some(a), None) | (None, Some(a)) => Some((a, a)),
        (None, None) => None,
    }
}

struct Clock {
    fs_now: Option<SystemTime>,
    local_now: SystemTime,
}

/// Removes a run's announcement and the answers to it, however the run ends.
struct Cleanup<'a> {
    dir: &'a Path,
    announcement: Option<String>,
    nonce: String,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if let Some(name) = &self.announcement {
            let _ = std::fs::remove_file(self.dir.join(name));
        }
        if let Ok(names) = list(self.dir) {
            for name in names {
                if parse_answer_name(&name).is_some_and(|(n, _)| n == self.nonce) {
                    let _ = std::fs::remove_file(self.dir.join(name));
                }
            }
        }
    }
}

/// Coordinate a prune with the other hosts: announce `plan`'s targets, wait (at most
/// `config.timeout`, less once every live host answered) for answers, and gather what every
/// non-expired host uses: its published entries and its vetoes, each with its closure.
///
/// Errors: the registry cannot be read; a host's usage is unknown (its record unreadable and
/// no answer) while there is something to remove; `--strict` while a host is stale or could
/// not inspect every process.
pub fn coordinate(
    config: &Config,
    cache: &Cache,
    plan: &Plan,
    strict: bool,
    proc_root: &Path,
    stop: &AtomicBool,
) -> Result<Shared, Fatal> {
    let me = Identity::here().map_err(Fatal::Registry)?;
    let dir = check_dir(&config.dir, &cache.absolute).map_err(Fatal::Registry)?;
    let candidates: BTreeSet<PathBuf> = plan.targets.iter().map(|t| t.rel.clone()).collect();
    let gathered = gather(config, &dir, &me, &candidates, stop)?;
    let announced = !candidates.is_empty();

    let mut shared = Shared { announced: candidates, ..Shared::default() };
    let mut wire: Vec<(String, WireEntry)> = Vec::new();
    let mut unknown = Vec::new();
    let mut keys: BTreeSet<&String> = gathered.records.keys().collect();
    keys.extend(gathered.answers.keys());
    for key in keys {
        let verdict = assess(config, &gathered, &me, key, announced);
        if verdict.report.this_host {
            shared.this_host = Some(verdict.report.host.clone());
        }
        wire.extend(verdict.entries);
        unknown.extend(verdict.unknown);
        shared.hosts.push(verdict.report);
    }
    if announced && !unknown.is_empty() {
        return Err(Fatal::Registry(format!(
            "registry {}: what other hosts use is unknown, so nothing is removed: {}. A host's agent rewrites its record every interval; fix or delete a file whose host is gone (records expire after --host-expiry)",
            dir.display(),
            unknown.join("; ")
        )));
    }
    if strict && announced {
        strict_check(&shared.hosts)?;
    }

    // Holders name their host; entries bring their closure (as the publishing host computed
    // it, since its paths may be spelled through its own mounts, and on this host's view).
    for (host, entry) in wire {
        let path = entry.path.0;
        match entry.via {
            Some(via) if entry.holders.is_empty() => {
                shared.closure.entry(path).or_insert(via.0);
            }
            _ => {
                // An entry without holders is still in use (never "free").
                let list = shared.direct.entry(path).or_default();
                for h in entry.holders {
                    let holder = Holder {
                        pid: h.pid,
                        command: clean_text(&h.command, 256),
                        user: clean_text(&h.user, 128),
                        evidence: evidence_str(&h.evidence),
                        detail: clean_text(&h.detail, 4096),
                        host: Some(clean_text(&host, 128)),
                        is_self: false,
                    };
                    if !list.contains(&holder) {
                        list.push(holder);
                    }
                }
            }
        }
    }
    shared.closure.retain(|path, _| !shared.direct.contains_key(path));
    if !shared.direct.is_empty() {
        let mountinfo = std::fs::read(proc_root.join("self/mountinfo")).ok();
        let view = CacheView::new(&cache.canonical, &cache.absolute, mountinfo.as_deref());
        for (entry, via) in usage::closure(&view, shared.direct.keys().cloned().collect()) {
            shared.closure.entry(entry).or_insert(via);
        }
    }
    Ok(shared)
}

/// What one run read from the registry.
struct Gathered {
    clock: Clock,
    /// `host-*.json` by key (read before and after waiting, merged).
    records: BTreeMap<String, HostFile>,
    /// Answers to this run's announcement, by key.
    answers: BTreeMap<String, Result<Answer, String>>,
    /// Why the announcement could not be written (then nobody could answer).
    announce_error: Option<String>,
}

/// Announce `candidates` (if any), read the records, wait for the answers of every host with
/// a fresh heartbeat (until `config.timeout`), read the records again, and clean up.
fn gather(
    config: &Config,
    dir: &Path,
    me: &Identity,
    candidates: &BTreeSet<PathBuf>,
    stop: &AtomicBool,
) -> Result<Gathered, Fatal> {
    let nonce = nonce();
    let mut cleanup = Cleanup { dir, announcement: None, nonce: nonce.clone() };

    // Announce first: the announcement's modification time is the file server's "now".
    let local_now = SystemTime::now();
    let mut fs_now = None;
    let mut announce_error = None;
    if !candidates.is_empty() {
        let announcement = Announcement {
            format: FORMAT,
            kind: KIND_ANNOUNCEMENT.into(),
            nonce: nonce.clone(),
            host: me.host.clone(),
            boot_id: me.boot_id.clone(),
            pid_ns: me.pid_ns,
            pid: std::process::id(),
            time: unix_secs(local_now),
            timeout_secs: config.timeout.as_secs(),
            candidates: candidates.iter().cloned().map(RelPath).collect(),
        };
        let name = announce_name(&me.key, &nonce);
        let bytes = serde_json::to_vec(&announcement).map_err(|e| Fatal::Registry(e.to_string()))?;
        match write_atomic(dir, &name, &bytes) {
            Ok(mtime) => {
                fs_now = Some(mtime);
                cleanup.announcement = Some(name);
            }
            Err(e) => announce_error = Some(format!("could not announce in {}: {e}", dir.display())),
        }
    } else {
        fs_now = fs_clock(dir).ok();
    }
    let clock = Clock { fs_now, local_now };
    let deadline = Instant::now() + config.timeout;
    let mut records = read_records(dir).map_err(|e| {
        Fatal::Registry(format!(
            "cannot read the registry {}: {e}; not pruning without it (it says what other hosts use)",
            dir.display()
        ))
    })?;

    if let Some(error) = &announce_error {
        // Nobody can veto what was not announced: a host that may be live (its own agent on
        // this host included) could be running a tool started after its last record.
        // Judged by the younger of the two ages, so a skewed clock errs toward refusing.
        let live: Vec<String> = records
            .iter()
            .filter(|(_, file)| {
                let interval = file.record.as_ref().map_or(DEFAULT_INTERVAL, |r| secs(r.interval_secs));
                ages(file, &clock).is_none_or(|(low, _)| low <= stale_after(interval))
            })
            .map(|(key, file)| {
                let host = file.record.as_ref().map_or(key.as_str(), |r| r.host.as_str());
                let this = if is_us(me, key, file) { " (this host's agent)" } else { "" };
                format!("{}{this}", clean_text(host, 128))
            })
            .collect();
        if !live.is_empty() {
            return Err(Fatal::Registry(format!(
                "{error}, so live host{} {} cannot veto the candidates; nothing is removed. Make {} writable for the user running the prune (uid {}), as it is for the agents",
                if live.len() == 1 { "" } else { "s" },
                live.join(", "),
                dir.display(),
                rustix::process::geteuid().as_raw()
            )));
        }
    }

    // Wait for the hosts with a fresh heartbeat (this host's own agent too: it may see
    // processes this prune cannot inspect); answers from the others count if they come.
    let mut answers: BTreeMap<String, Result<Answer, String>> = BTreeMap::new();
    if cleanup.announcement.is_some() {
        let expected: BTreeSet<String> = records
            .iter()
            .filter(|(_, file)| {
                let interval = file.record.as_ref().map_or(DEFAULT_INTERVAL, |r| secs(r.interval_secs));
                ages(file, &clock).is_none_or(|(_, high)| high <= stale_after(interval))
            })
            .map(|(key, _)| key.clone())
            .collect();
        // Quick first looks (an agent may have answered within milliseconds), then every
        // ANSWER_POLL: one directory read each.
        let mut pause = Duration::from_millis(10);
        loop {
            read_answers(dir, &nonce, &mut answers);
            if expected.iter().all(|k| answers.contains_key(k)) || stop.load(Ordering::Relaxed) {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(pause.min(left));
            pause = (pause * 2).min(ANSWER_POLL);
        }
        // Hosts whose agent started meanwhile: their records count too.
        if let Ok(again) = read_records(dir) {
            for (key, file) in again {
                match records.get_mut(&key) {
                    None => {
                        records.insert(key, file);
                    }
                    Some(old) => merge_record(old, file),
                }
            }
        }
    }
    if let Ok(names) = list(dir) {
        collect_garbage(dir, &names, clock.fs_now.unwrap_or(clock.local_now));
    }
    drop(cleanup);
    Ok(Gathered { clock, records, answers, announce_error })
}

/// A record written by an agent that sees our processes.
fn is_us(me: &Identity, key: &str, file: &HostFile) -> bool {
    file.record.as_ref().is_ok_and(|r| me.is_us(key, r.boot_id.as_deref(), r.pid_ns))
}

/// One host's part in a run.
struct Verdict {
    report: HostReport,
    /// Entries to keep for it (published and vetoed), with its raw id.
    entries: Vec<(String, WireEntry)>,
    /// Set when what it uses cannot be known.
    unknown: Option<String>,
}

/// Decide one host's state and what of it to keep (this host's own agent included: it may
/// see processes this prune cannot inspect, and keeping more is never unsafe):
/// - answered: live; its vetoes and its record's entries are kept;
/// - silent beyond `--host-expiry`: expired, ignored;
/// - otherwise (no answer, or nothing announced and an old heartbeat): stale, its record's
///   entries are kept; without a usable record its usage is unknown.
fn assess(config: &Config, gathered: &Gathered, me: &Identity, key: &str, announced: bool) -> Verdict {
    let file = gathered.records.get(key);
    let answer = gathered.answers.get(key);
    let this_host = match file {
        Some(f) => is_us(me, key, f),
        None => answer
            .and_then(|a| a.as_ref().ok())
            .is_some_and(|a| me.is_us(key, a.boot_id.as_deref(), a.pid_ns)),
    };
    let record = file.and_then(|f| f.record.as_ref().ok());
    let host = record
        .map(|r| r.host.clone())
        .or_else(|| answer.and_then(|a| a.as_ref().ok()).map(|a| a.host.clone()))
        .unwrap_or_else(|| key.to_string());
    let shown = clean_text(&host, 128);
    let ages = file.and_then(|f| ages(f, &gathered.clock));
    let interval = record.map_or(DEFAULT_INTERVAL, |r| secs(r.interval_secs));
    let mut report = HostReport {
        host: shown.clone(),
        state: HostState::Live,
        record: file.map(|f| f.name.clone()),
        last_seen: file.and_then(|f| f.mtime).map(rfc3339),
        age_secs: ages.map(|(low, _)| low.as_secs()),
        interval_secs: record.map(|r| r.interval_secs),
        entries: record.map_or(0, |r| r.entries.len()),
        answered: None,
        vetoes: None,
        uninspectable: record.map_or(0, |r| r.uninspectable),
        clock_skew_secs: None,
        reason: None,
        this_host,
    };
    if let (Some(r), Some(mtime)) = (record, file.and_then(|f| f.mtime)) {
        // The host's clock when it wrote the record, against the file server's.
        let skew = i128::from(r.time) - i128::from(unix_secs(mtime));
        if skew.unsigned_abs() > u128::from(SKEW_REPORTED.as_secs()) {
            report.clock_skew_secs = Some(skew.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64);
        }
    }
    let mut verdict = Verdict { report, entries: Vec::new(), unknown: None };
    let report = &mut verdict.report;
    let expired = ages.is_some_and(|(low, _)| low > config.host_expiry);
    let stale_heartbeat = ages.is_some_and(|(_, high)| high > stale_after(interval));
    let good_answer = match answer {
        Some(Ok(a)) if a.status == "clear" || a.status == "veto" => Some(a),
        _ => None,
    };
    if announced {
        report.answered = Some(good_answer.is_some());
    }
    if key == me.key && !this_host {
        report.reason = Some(if me.boot_id.is_none() || me.pid_ns.is_none() {
            // No boot id or PID namespace here: this host cannot be told apart from another
            // one with the same id, so the record counts as another host's (kept and asked).
            "it has this host's id, and this system gives no boot id or PID namespace to tell whether it is this host: it counts as another host (its entries are kept and its agent is asked)".into()
        } else {
            "it has this host's id but another boot or PID namespace (its processes are not visible here); give each host a unique SAFE_PRUNE_HOST_ID".into()
        });
    }
    if let Some(a) = good_answer {
        report.vetoes = Some(a.vetoes.len());
        report.uninspectable = a.uninspectable;
        if let Some(hidden) = &a.hidden {
            report.reason = Some(clean_text(hidden, 512));
        }
        verdict.entries.extend(a.vetoes.iter().map(|e| (host.clone(), e.clone())));
    }
    if expired && good_answer.is_none() {
        report.state = HostState::Expired;
        report.reason = Some(format!(
            "no heartbeat for {}, longer than --host-expiry {}",
            human_duration(ages.map_or(Duration::ZERO, |(low, _)| low)),
            human_duration(config.host_expiry)
        ));
        return verdict;
    }
    if let Some(r) = record {
        verdict.entries.extend(r.entries.iter().map(|e| (host.clone(), e.clone())));
    }
    if good_answer.is_some() {
        return verdict;
    }
    let record_error = file.and_then(|f| f.record.as_ref().err());
    let stale_for = human_duration(stale_after(interval));
    let mut why: Vec<String> = Vec::new();
    if announced {
        why.push(match (&gathered.announce_error, answer) {
            (Some(e), _) => e.clone(),
            (None, Some(Ok(a))) => format!(
                "its agent could not scan: {}",
                clean_text(a.error.as_deref().unwrap_or("no reason given"), 512)
            ),
            (None, Some(Err(e))) => format!("unreadable answer: {}", clean_text(e, 512)),
            (None, None) if stale_heartbeat => format!("no heartbeat within {stale_for} and no answer"),
            (None, None) => format!("did not answer within {}", human_duration(config.timeout)),
        });
    } else if stale_heartbeat {
        why.push(format!("no heartbeat within {stale_for}"));
    }
    if let Some(e) = record_error {
        why.push(format!("its record cannot be used: {}", clean_text(e, 512)));
    }
    if !why.is_empty() {
        report.state = HostState::Stale;
        why.extend(report.reason.take());
        report.reason = Some(why.join("; "));
    }
    if announced && record.is_none() {
        // Neither a usable answer nor a usable record: what it uses is unknown.
        let what = match record_error {
            Some(e) => clean_text(e, 512),
            None => "its answer cannot be used and it has no record".into(),
        };
        let file_name = file.map_or(String::new(), |f| format!(" ({})", f.name));
        verdict.unknown = Some(format!("host {shown}{file_name}: {what}"));
    }
    verdict
}

/// `--strict`: nothing is removed while a host is stale or cannot inspect every process.
fn strict_check(hosts: &[HostReport]) -> Result<(), Fatal> {
    let stale: Vec<String> = hosts
        .iter()
        .filter(|h| h.state == HostState::Stale)
        .map(|h| format!("{} ({})", h.host, h.reason.as_deref().unwrap_or("stale")))
        .collect();
    if !stale.is_empty() {
        return Err(Fatal::Strict(format!(
            "--strict: not removing anything: host{} {} {} stale; what runs there now cannot be checked",
            if stale.len() == 1 { "" } else { "s" },
            stale.join(", "),
            if stale.len() == 1 { "is" } else { "are" }
        )));
    }
    let blind: Vec<String> = hosts
        .iter()
        .filter(|h| h.state == HostState::Live && h.uninspectable > 0)
        .map(|h| format!("{} ({} processes)", h.host, h.uninspectable))
        .collect();
    if !blind.is_empty() {
        return Err(Fatal::Strict(format!(
            "--strict: not removing anything: processes that could use the cache cannot be inspected on {}; run the agents as root",
            blind.join(", ")
        )));
    }
    Ok(())
}

/// A host's record read twice in one run (before and after waiting): keep every entry of both.
fn merge_record(old: &mut HostFile, new: HostFile) {
    match (&mut old.record, new.record) {
        (Ok(a), Ok(b)) => {
            for e in b.entries {
                if !a.entries.contains(&e) {
                    a.entries.push(e);
                }
            }
            a.uninspectable = a.uninspectable.max(b.uninspectable);
            if b.time > a.time {
                a.time = b.time;
                a.interval_secs = b.interval_secs;
            }
            old.mtime = old.mtime.max(new.mtime);
        }
        // A good record replaces an unreadable one only if the unreadable one is gone.
        (Err(_), Ok(b)) => {
            old.record = Ok(b);
            old.mtime = new.mtime;
        }
        (_, Err(_)) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Phase, Reason, Target};

    #[test]
    fn file_keys_are_safe_and_distinct() {
        assert_eq!(file_key("hostB"), "hostB");
        assert_eq!(file_key("node-1.cluster.local"), "node-1.cluster.local");
        let odd =
            ["a/b", "a_b ", "../etc", "é", "", "a\nb", "x".repeat(100).as_str(), "a:b"].map(String::from);
        let mut seen = BTreeSet::new();
        for id in &odd {
            let key = file_key(id);
            assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)), "{key}");
            assert!(!key.is_empty() && key.len() <= 64 + 17, "{key}");
            assert!(seen.insert(key.clone()), "collision {key}");
            // The name parses back from every file kind.
            let n = nonce();
            assert_eq!(parse_announce_name(&announce_name(&key, &n)), Some((key.as_str(), n.as_str())));
            assert_eq!(parse_answer_name(&answer_name(&n, &key)), Some((n.as_str(), key.as_str())));
        }
        assert_ne!(file_key("a/b"), file_key("a_b"));
    }

    #[test]
    fn nonces_are_hex_and_differ() {
        let a = nonce();
        let b = nonce();
        assert!(is_nonce(&a) && is_nonce(&b));
        assert_ne!(a, b);
    }

    fn record(host: &str, entries: Vec<WireEntry>) -> Record {
        Record {
            format: FORMAT,
            kind: KIND_HOST.into(),
            host: host.into(),
            boot_id: Some("b".into()),
            agent_pid: Some(1),
            pid_ns: None,
            version: None,
            time: unix_secs(SystemTime::now()),
            interval_secs: 3600,
            cache_dir: None,
            entries,
            uninspectable: 0,
            hidden: None,
        }
    }

    fn entry(path: &str, pid: u32) -> WireEntry {
        WireEntry {
            path: RelPath(path.into()),
            holders: vec![WireHolder {
                pid,
                command: "sleep".into(),
                user: "root".into(),
                evidence: "cwd".into(),
                detail: format!("/c/{path}"),
            }],
            via: None,
        }
    }

    #[test]
    fn records_round_trip_and_bad_ones_are_errors() {
        let r = record("h", vec![entry("archive-v0/a", 7)]);
        let text = serde_json::to_string(&r).unwrap();
        let back: Record = parse(text.as_bytes(), KIND_HOST).unwrap();
        assert_eq!(back.entries, r.entries);
        // Torn: every strict prefix is an error, never an empty record.
        for cut in 0..text.len() {
            assert!(parse::<Record>(&text.as_bytes()[..cut], KIND_HOST).is_err(), "prefix {cut} parsed");
        }
        let err = parse::<Record>(b"\x00\xffgarbage", KIND_HOST).unwrap_err();
        assert!(err.contains("torn or garbage"), "{err}");
        let newer = text.replacen("\"format\":1", "\"format\":2", 1);
        let err = parse::<Record>(newer.as_bytes(), KIND_HOST).unwrap_err();
        assert!(err.contains("newer") && err.contains("upgrade"), "{err}");
        let err = parse::<Record>(br#"{"format":1,"kind":"answer"}"#, KIND_HOST).unwrap_err();
        assert!(err.contains("not a host file"), "{err}");
        let err = parse::<Record>(br#"{"kind":"host"}"#, KIND_HOST).unwrap_err();
        assert!(err.contains("format"), "{err}");
        // Missing entries is not "no entries".
        let no_entries = text.replacen("\"entries\"", "\"entriez\"", 1);
        assert!(parse::<Record>(no_entries.as_bytes(), KIND_HOST).is_err());
        // Paths that leave the cache are refused.
        for bad in ["../x", "/etc", "archive-v0/../../x", "", "a/./b", "a//b", "a/", "./a", "a\\u0000b"] {
            let t = text.replacen("archive-v0/a", bad, 1);
            assert!(parse::<Record>(t.as_bytes(), KIND_HOST).is_err(), "{bad:?} accepted");
        }
        // Non-UTF-8 paths travel as base64.
        let mut r2 = r.clone();
        r2.entries[0].path = RelPath(PathBuf::from(OsStr::from_bytes(b"archive-v0/\xff")));
        let text2 = serde_json::to_string(&r2).unwrap();
        assert!(text2.contains("\"bytes\""), "{text2}");
        let back2: Record = parse(text2.as_bytes(), KIND_HOST).unwrap();
        assert_eq!(back2.entries[0].path, r2.entries[0].path);
        // Unknown fields (a later minor addition) are ignored.
        let extra = text.replacen("{", "{\"future_field\":[1,2],", 1);
        assert!(parse::<Record>(extra.as_bytes(), KIND_HOST).is_ok());
    }

    #[test]
    fn untrusted_text_is_escaped() {
        assert_eq!(clean_text("a\x1b[31mb\n", 100), "a\\u{1b}[31mb\\n");
        assert_eq!(clean_text("abcdef", 3), "abc…");
        assert_eq!(evidence_str("cwd"), "cwd");
        assert_eq!(evidence_str("rm -rf"), "unknown");
    }

    #[test]
    fn dates_and_durations() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(1_700_000_000)), "2023-11-14T22:13:20Z");
        assert_eq!(human_duration(Duration::from_secs(45)), "45s");
        assert_eq!(human_duration(Duration::from_secs(600)), "10m");
        assert_eq!(human_duration(Duration::from_secs(8 * 86_400)), "8d");
        assert_eq!(human_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(human_duration(Duration::from_secs(190)), "3m");
        assert_eq!(human_duration(Duration::from_secs(3601)), "60m");
        assert_eq!(stale_after(Duration::from_secs(60)), Duration::from_secs(190));
        assert_eq!(stale_after(Duration::MAX), Duration::MAX);
    }

    /// A synthetic cache with archives `a`, `b`, `c` and a registry next to it.
    fn setup() -> (tempfile::TempDir, Cache, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        let cache_dir = root.join("cache");
        std::fs::create_dir_all(cache_dir.join("wheels-v7")).unwrap();
        std::fs::write(cache_dir.join("CACHEDIR.TAG"), "Signature: 8a477f597d28d172789f06886806bc55")
            .unwrap();
        for a in ["a", "b", "c"] {
            std::fs::create_dir_all(cache_dir.join("archive-v0").join(a)).unwrap();
        }
        let registry = root.join("registry");
        std::fs::create_dir(&registry).unwrap();
        let inputs = crate::locate::Inputs {
            cache_dir: Some(cache_dir.clone()),
            cwd: root.clone(),
            no_config: true,
            ..Default::default()
        };
        let cache = crate::prune::open_cache(&inputs).unwrap().unwrap();
        (tmp, cache, registry)
    }

    fn plan_of(targets: &[&str]) -> Plan {
        Plan {
            targets: targets
                .iter()
                .map(|t| Target {
                    rel: t.into(),
                    reason: Reason::UnreferencedArchive,
                    phase: Phase::Archives,
                })
                .collect(),
            ..Plan::default()
        }
    }

    fn config(dir: &Path) -> Config {
        Config {
            dir: dir.to_path_buf(),
            timeout: Duration::from_millis(300),
            host_expiry: Config::DEFAULT_EXPIRY,
        }
    }

    fn publish(dir: &Path, r: &Record) {
        write_atomic(dir, &record_name(&file_key(&r.host)), &serde_json::to_vec(r).unwrap()).unwrap();
    }

    fn run(cache: &Cache, registry: &Path, targets: &[&str], strict: bool) -> Result<Shared, Fatal> {
        coordinate(
            &config(registry),
            cache,
            &plan_of(targets),
            strict,
            Path::new("/proc"),
            &AtomicBool::new(false),
        )
    }

    #[test]
    fn silent_host_is_stale_and_its_entries_kept() {
        let (_tmp, cache, registry) = setup();
        publish(&registry, &record("other\u{1b}host", vec![entry("archive-v0/a", 9)]));
        let started = Instant::now();
        let shared = run(&cache, &registry, &["archive-v0/a", "archive-v0/b"], false).unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(shared.direct.contains_key(Path::new("archive-v0/a")));
        assert_eq!(shared.direct[Path::new("archive-v0/a")][0].host.as_deref(), Some("other\\u{1b}host"));
        let host = &shared.hosts[0];
        assert_eq!(host.state, HostState::Stale, "{host:?}");
        assert_eq!(host.answered, Some(false));
        assert!(host.reason.as_deref().unwrap().contains("did not answer"), "{host:?}");
        // The announcement and its answers are gone afterwards.
        assert!(list(&registry).unwrap().iter().all(|n| n.starts_with(HOST_PREFIX)), "{:?}", list(&registry));
        // --strict refuses while a host is stale.
        assert!(matches!(run(&cache, &registry, &["archive-v0/b"], true), Err(Fatal::Strict(_))));
        // Nothing to remove: no announcement, no wait, heartbeat decides.
        let shared = run(&cache, &registry, &[], true).unwrap();
        assert_eq!(shared.hosts[0].state, HostState::Live);
        assert_eq!(shared.hosts[0].answered, None);
    }

    #[test]
    fn unreadable_or_newer_records_of_silent_hosts_stop_the_prune() {
        for (name, content) in [
            ("host-torn.json", br#"{"format":1,"kind":"host","host":"torn","ent"#.to_vec()),
            ("host-garbage.json", b"\x7fELF\x00\x00".to_vec()),
            ("host-future.json", br#"{"format":9,"kind":"host","whatever":{}}"#.to_vec()),
        ] {
            let (_tmp, cache, registry) = setup();
            std::fs::write(registry.join(name), content).unwrap();
            match run(&cache, &registry, &["archive-v0/b"], false) {
                Err(Fatal::Registry(message)) => {
                    assert!(message.contains(name) && message.contains("nothing is removed"), "{message}")
                }
                other => panic!("{name}: expected an error, got {:?}", other.map(|s| s.hosts)),
            }
            // With nothing to remove it is only reported: stale, never "free".
            let shared = run(&cache, &registry, &[], false).unwrap();
            assert_eq!(shared.hosts[0].state, HostState::Stale, "{name}");
            assert!(shared.hosts[0].reason.as_deref().unwrap().contains("cannot be used"), "{name}");
        }
    }

    #[test]
    fn symlinks_fifos_and_huge_files_are_not_followed() {
        let (_tmp, cache, registry) = setup();
        std::os::unix::fs::symlink("/dev/zero", registry.join("host-link.json")).unwrap();
        let fifo = registry.join("host-fifo.json");
        // mkfifo(1): rustix has no `mkfifoat` on macOS.
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let err = run(&cache, &registry, &["archive-v0/b"], false).map(|s| s.hosts).expect_err("must refuse");
        let text = err.to_string();
        assert!(text.contains("host-link.json") && text.contains("host-fifo.json"), "{text}");
    }

    /// An answer from `who` (host, boot id, PID namespace) to announcement `nonce`.
    fn answer(nonce: &str, who: (&str, Option<String>, Option<u64>), vetoes: Vec<WireEntry>) -> Answer {
        Answer {
            format: FORMAT,
            kind: KIND_ANSWER.into(),
            nonce: nonce.into(),
            host: who.0.into(),
            boot_id: who.1,
            pid_ns: who.2,
            time: 0,
            status: if vetoes.is_empty() { "clear" } else { "veto" }.into(),
            vetoes,
            uninspectable: 0,
            hidden: None,
            error: None,
        }
    }

    /// Fake agents: answer the first announcement in `dir` with `answers(nonce)`, then stop.
    fn answer_first(
        dir: &Path,
        answers: impl Fn(&str) -> Vec<Answer> + Send + 'static,
    ) -> std::thread::JoinHandle<()> {
        let dir = dir.to_path_buf();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Some((_, n)) = list(&dir).unwrap().iter().find_map(|x| parse_announce_name(x)) {
                    for a in answers(n) {
                        let bytes = serde_json::to_vec(&a).unwrap();
                        write_atomic(&dir, &answer_name(n, &file_key(&a.host)), &bytes).unwrap();
                    }
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    }

    /// A `--strict` run over archives `b` and `c` that waits up to 20 s for `answerer`.
    fn run_answered(cache: &Cache, registry: &Path, answerer: std::thread::JoinHandle<()>) -> Shared {
        let mut cfg = config(registry);
        cfg.timeout = Duration::from_secs(20);
        let shared = coordinate(
            &cfg,
            cache,
            &plan_of(&["archive-v0/b", "archive-v0/c"]),
            true,
            Path::new("/proc"),
            &AtomicBool::new(false),
        )
        .unwrap();
        answerer.join().unwrap();
        shared
    }

    #[test]
    fn answers_veto_and_clear() {
        let (_tmp, cache, registry) = setup();
        publish(&registry, &record("hostB", vec![]));
        publish(&registry, &record("hostC", vec![]));
        let answerer = answer_first(&registry, |n| {
            vec![
                answer(n, ("hostB", None, None), vec![entry("archive-v0/b", 5)]),
                answer(n, ("hostC", None, None), vec![]),
            ]
        });
        let started = Instant::now();
        let shared = run_answered(&cache, &registry, answerer);
        assert!(started.elapsed() < Duration::from_secs(5), "waited although everyone answered");
        assert_eq!(shared.direct.keys().collect::<Vec<_>>(), [Path::new("archive-v0/b")]);
        assert!(shared.hosts.iter().all(|h| h.state == HostState::Live && h.answered == Some(true)));
        let mut plan = plan_of(&["archive-v0/c", "archive-v0/c/x", "archive-v0/zzz"]);
        shared.restrict(&mut plan);
        assert_eq!(plan.targets.len(), 2);
    }

    #[test]
    fn a_record_with_our_id_is_ours_only_if_it_sees_our_processes() {
        let (_tmp, cache, registry) = setup();
        let me = Identity::here().unwrap();
        let mut r = record(&me.host, vec![entry("archive-v0/a", 9)]);
        r.boot_id = me.boot_id.clone();
        r.pid_ns = me.pid_ns;
        publish(&registry, &r);
        let shared = run(&cache, &registry, &["archive-v0/a"], false).unwrap();
        let host = &shared.hosts[0];
        assert!(host.this_host, "{:?}", shared.hosts);
        // Our own agent may see processes we cannot inspect: its entries are kept, named
        // after this host; it was asked (and, not running here, did not answer).
        let holders = &shared.direct[Path::new("archive-v0/a")];
        assert_eq!(holders[0].host.as_deref(), Some(clean_text(&me.host, 128).as_str()));
        assert_eq!((host.state, host.answered), (HostState::Stale, Some(false)), "{host:?}");
        assert!(!host.reason.as_deref().unwrap_or("").contains("unique SAFE_PRUNE_HOST_ID"), "{host:?}");
        // Merged into our own scan, a process both saw is listed once.
        let mut usage = Usage::default();
        usage.direct.insert("archive-v0/a".into(), vec![Holder { host: None, ..holders[0].clone() }]);
        shared.merge_into(&mut usage);
        assert_eq!(usage.direct[Path::new("archive-v0/a")].len(), 1, "{:?}", usage.direct);
        // Same id, another PID namespace (a container given its node's id): another host.
        r.pid_ns = Some(1);
        publish(&registry, &r);
        let shared = run(&cache, &registry, &["archive-v0/a"], false).unwrap();
        assert!(!shared.hosts[0].this_host);
        assert_eq!(shared.hosts[0].state, HostState::Stale);
        assert!(shared.hosts[0].reason.as_deref().unwrap().contains("unique SAFE_PRUNE_HOST_ID"));
        assert!(shared.direct.contains_key(Path::new("archive-v0/a")));
    }

    #[test]
    fn our_own_agents_vetoes_are_kept() {
        let (_tmp, cache, registry) = setup();
        let me = Identity::here().unwrap();
        let mut r = record(&me.host, vec![]);
        r.boot_id = me.boot_id.clone();
        r.pid_ns = me.pid_ns;
        publish(&registry, &r);
        // Our agent (say, root, where we are not) answers: it sees a process on `b`.
        let who = me.clone();
        let answerer = answer_first(&registry, move |n| {
            vec![answer(n, (&who.host, who.boot_id.clone(), who.pid_ns), vec![entry("archive-v0/b", 5)])]
        });
        let shared = run_answered(&cache, &registry, answerer);
        let host = &shared.hosts[0];
        assert!(host.this_host && host.state == HostState::Live && host.answered == Some(true), "{host:?}");
        assert_eq!(shared.direct.keys().collect::<Vec<_>>(), [Path::new("archive-v0/b")]);
    }

    #[test]
    fn expired_records_are_ignored_and_registry_inside_cache_refused() {
        let (_tmp, cache, registry) = setup();
        publish(&registry, &record("old", vec![entry("archive-v0/a", 9)]));
        let week = SystemTime::now() - Duration::from_secs(8 * 86_400);
        std::fs::File::options()
            .write(true)
            .open(registry.join("host-old.json"))
            .unwrap()
            .set_modified(week)
            .unwrap();
        let shared = run(&cache, &registry, &["archive-v0/a"], true).unwrap();
        assert!(shared.direct.is_empty());
        assert_eq!(shared.hosts[0].state, HostState::Expired);
        assert_eq!(shared.hosts[0].answered, Some(false));

        let inside = cache.canonical.join("registry");
        std::fs::create_dir(&inside).unwrap();
        let err = run(&cache, &inside, &["archive-v0/a"], false).err().unwrap().to_string();
        assert!(err.contains("inside the uv cache"), "{err}");
        let err = run(&cache, &cache.canonical.join("missing"), &[], false).err().unwrap().to_string();
        assert!(err.contains("create the folder"), "{err}");
    }
}
