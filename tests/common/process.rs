//! Live processes for the tests: guards that SIGKILL what a test started (even when the
//! test panics), a line reader with a timeout for "ready" handshakes, and process-table
//! lookups for the Python child that `uv tool run` spawns: /proc on Linux; `ps`, `kill(pid,
//! 0)` and `sysctl(KERN_PROCARGS2)` on macOS, which has no /proc.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{ChildStdout, ExitStatus};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// A spawned process that is SIGKILLed and reaped when dropped.
pub struct Child(pub std::process::Child);

impl Child {
    /// The process id.
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// SIGKILLs the process and reaps it; returns its exit status.
    pub fn kill(&mut self) -> ExitStatus {
        let _ = self.0.kill();
        self.0.wait().unwrap()
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process known only by pid (e.g. an orphan reparented away from us) that is SIGKILLed
/// when dropped. If it is our child (see [`become_subreaper`]) it is also reaped.
pub struct PidGuard(pub u32);

impl Drop for PidGuard {
    fn drop(&mut self) {
        kill9(self.0);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            // SAFETY: waitpid with a null status pointer only reaps; ECHILD (not our child)
            // or the pid (reaped) ends the loop.
            let r = unsafe { libc::waitpid(self.0 as i32, std::ptr::null_mut(), libc::WNOHANG) };
            if r != 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Sends SIGKILL to `pid` (errors ignored: it may be gone already).
pub fn kill9(pid: u32) {
    // pid 0 or -1 would signal our own process group or everything we may signal.
    assert!(pid > 1, "refusing to kill pid {pid}");
    // SAFETY: kill(2) has no memory effects on this process.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
}

/// Makes this test process the reaper of orphaned descendants, so a tool's Python child
/// that outlives its killed uv parent is reparented to us and can be reaped (no zombies
/// left behind, no dependence on PID 1 reaping).
#[cfg(target_os = "linux")]
pub fn become_subreaper() {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag; no pointers are passed.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0, "prctl(PR_SET_CHILD_SUBREAPER) failed");
}

/// Nothing to do where there are no subreapers (macOS): an orphan goes to launchd, which
/// reaps it as soon as [`PidGuard`] kills it.
#[cfg(not(target_os = "linux"))]
pub fn become_subreaper() {}

/// True if `pid` exists and is not a zombie.
#[cfg(target_os = "linux")]
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some(Some('Z')) | Some(Some('X')))
        }
        Err(_) => false,
    }
}

/// True if `pid` exists and is not a zombie: `kill(pid, 0)`, then `ps` for the state (a
/// zombie still answers `kill`).
#[cfg(not(target_os = "linux"))]
pub fn alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else { return false };
    if raw <= 0 {
        return false;
    }
    // SAFETY: signal 0 sends nothing; kill(2) only checks that the process exists.
    let r = unsafe { libc::kill(raw, 0) };
    if r != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
        return false;
    }
    // Gone in between: ps prints nothing.
    ps_field(pid, "stat").is_some_and(|state| !state.starts_with('Z'))
}

/// One `ps -o FIELD=` column of `pid`, trimmed; `None` if there is no such process.
fn ps_field(pid: u32, field: &str) -> Option<String> {
    let out = std::process::Command::new("ps")
        .args(["-o", &format!("{field}="), "-p", &pid.to_string()])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run ps: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// The direct children of `pid`, from the parent pid of every process (`ps -A`).
#[cfg(not(target_os = "linux"))]
pub fn children_of(pid: u32) -> Vec<u32> {
    let out = std::process::Command::new("ps")
        .args(["-A", "-o", "pid=,ppid="])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run ps: {e}"));
    assert!(out.status.success(), "ps -A failed: {}", String::from_utf8_lossy(&out.stderr));
    let mut children: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let child: u32 = fields.next()?.parse().ok()?;
            let parent: u32 = fields.next()?.parse().ok()?;
            (parent == pid).then_some(child)
        })
        .collect();
    children.sort_unstable();
    children
}

/// The parent pid of `pid` (`ps -o ppid=`).
#[cfg(not(target_os = "linux"))]
pub fn parent_of(pid: u32) -> Option<u32> {
    ps_field(pid, "ppid")?.parse().ok()
}

/// The direct children of `pid`: from `/proc/PID/task/*/children`, or by scanning the
/// parent pid of every process if that file is unavailable.
#[cfg(target_os = "linux")]
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut found_file = false;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(task.path().join("children")) {
                found_file = true;
                out.extend(s.split_whitespace().filter_map(|x| x.parse::<u32>().ok()));
            }
        }
    }
    if !found_file {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if parent_of(child) == Some(pid) {
                out.push(child);
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The parent pid of `pid`, from `/proc/PID/stat`.
#[cfg(target_os = "linux")]
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Reads lines of a child's stdout on a thread; the receiver yields them as they come.
pub fn line_reader(stdout: ChildStdout) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits up to `timeout` for a line starting with `prefix`; returns it, or panics with
/// everything that was read.
pub fn wait_for_line(rx: &Receiver<String>, prefix: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with(prefix) => return line,
            Ok(line) => seen.push(line),
            Err(RecvTimeoutError::Timeout) => {
                panic!("no line starting with {prefix:?} within {timeout:?}; got {seen:?}")
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!("stdout closed before a line starting with {prefix:?}; got {seen:?}")
            }
        }
    }
}

/// Polls until `cond` is true or `timeout` passes; returns whether it became true.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads a pipe to the end on a thread (so a child that fills its stderr cannot block).
pub fn drain<R: Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

/// The value of `name` in the initial environment of `pid` (`/proc/PID/environ`).
#[cfg(target_os = "linux")]
pub fn environ_var(pid: u32, name: &str) -> Option<std::ffi::OsString> {
    use std::os::unix::ffi::OsStrExt;
    let data = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{name}=");
    data.split(|&b| b == 0)
        .find_map(|kv| kv.strip_prefix(prefix.as_bytes()))
        .map(|v| std::ffi::OsStr::from_bytes(v).to_os_string())
}

/// The value of `name` in the initial environment of `pid` (`sysctl(KERN_PROCARGS2)`, read
/// with the platform crate's parser).
#[cfg(target_os = "macos")]
pub fn environ_var(pid: u32, name: &str) -> Option<std::ffi::OsString> {
    use std::os::unix::ffi::OsStrExt;
    let mut mib = [libc::CTL_KERN, libc::KERN_PROCARGS2, i32::try_from(pid).ok()?];
    // Larger than any argument area (`kern.argmax` is 1 MiB): the kernel copies the whole area
    // and reports a shorter length. A buffer smaller than the area would get only its tail.
    let mut buf = vec![0u8; 4 << 20];
    let mut len: libc::size_t = buf.len();
    // SAFETY: `mib` holds 3 ints; `buf` has `len` writable bytes and `len` says so; the kernel
    // writes at most that many and stores the count back in `len`; no new value is set.
    let r = unsafe {
        libc::sysctl(mib.as_mut_ptr(), 3, buf.as_mut_ptr().cast(), &mut len, std::ptr::null_mut(), 0)
    };
    if r != 0 || len >= buf.len() {
        return None;
    }
    let args = platform::procargs::parse(&buf[..len]);
    let prefix = format!("{name}=");
    args.env
        .iter()
        .find_map(|kv| kv.strip_prefix(prefix.as_bytes()))
        .map(|v| std::ffi::OsStr::from_bytes(v).to_os_string())
}

/// True if `path` is a directory entry (of any type) without following a symlink.
pub fn exists_no_follow(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}
