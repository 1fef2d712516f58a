//! Tests of the whole Linux scan: real child processes that each hold a temporary directory
//! by one kind of evidence, a fabricated procfs tree with broken entries, a permission test
//! run as `nobody`, and a timing print-out on this machine.
//!
//! Every child is killed and reaped by the [`Children`] guard, even when an assertion fails.

use super::scan;
use crate::{Device, Evidence, ProcessRecord, ScanReport, ScanRequest, Source};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills and reaps every child on drop (they are our own unreaped children, so their pids
/// cannot have been reused).
struct Children(Vec<Child>);

impl Children {
    fn new() -> Self {
        Self(Vec::new())
    }

    fn add(&mut self, child: Child) -> u32 {
        let pid = child.id();
        self.0.push(child);
        pid
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A temporary directory and its canonical spelling as a root.
fn temp_root() -> (tempfile::TempDir, Vec<u8>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let canon = std::fs::canonicalize(dir.path()).expect("canonicalize");
    let root = canon.as_os_str().as_bytes().to_vec();
    (dir, root)
}

fn path_of(root: &[u8], rest: &str) -> PathBuf {
    let mut p = root.to_vec();
    p.extend_from_slice(rest.as_bytes());
    PathBuf::from(std::ffi::OsStr::from_bytes(&p))
}

fn request(root: &[u8]) -> ScanRequest {
    ScanRequest { roots: vec![root.to_vec()], skip_pids: vec![std::process::id()], ..ScanRequest::default() }
}

/// A command with an empty environment except a system PATH, run in `/`, so that nothing but
/// what the test sets up points into the temporary root.
fn clean(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new(program);
    c.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    c
}

/// The real python3 binary (pyenv shims need their environment, which `clean` removes).
fn python() -> Option<PathBuf> {
    let out = Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output().ok()?;
    let p = String::from_utf8(out.stdout).ok()?;
    let p = PathBuf::from(p.trim());
    p.is_file().then_some(p)
}

/// Spawns `cmd` with piped stdin/stdout, writes `input`, and waits for a `ready` line.
fn spawn_ready(children: &mut Children, mut cmd: Command, input: &[u8]) -> u32 {
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn child");
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let pid = children.add(child);
    if let Some(mut stdin) = stdin {
        stdin.write_all(input).expect("write to child");
    }
    let mut line = String::new();
    if let Some(out) = stdout {
        BufReader::new(out).read_line(&mut line).expect("read ready");
    }
    assert_eq!(line.trim(), "ready", "child {pid} did not get ready");
    pid
}

fn scan_ok(req: &ScanRequest) -> ScanReport {
    scan(req).expect("scan")
}

fn find(report: &ScanReport, pid: u32) -> Option<&ProcessRecord> {
    report.processes.iter().find(|p| p.pid == pid)
}

fn sources(rec: &ProcessRecord) -> BTreeSet<Source> {
    rec.evidence.iter().map(|e| e.source).collect()
}

fn expect_record(report: &ScanReport, pid: u32) -> &ProcessRecord {
    find(report, pid).unwrap_or_else(|| panic!("pid {pid} not reported: {report:#?}"))
}

fn ev(rec: &ProcessRecord, source: Source) -> Vec<&Evidence> {
    rec.evidence.iter().filter(|e| e.source == source).collect()
}

#[test]
fn cwd_only() {
    let (_dir, root) = temp_root();
    std::fs::create_dir(path_of(&root, "/work")).unwrap();
    let mut kids = Children::new();
    let mut cmd = clean("sleep");
    cmd.arg("30").current_dir(path_of(&root, "/work"));
    let pid = kids.add(cmd.spawn().unwrap());

    let report = scan_ok(&request(&root));
    let rec = expect_record(&report, pid);
    assert_eq!(sources(rec), BTreeSet::from([Source::Cwd]), "{rec:#?}");
    let cwd = ev(rec, Source::Cwd);
    assert_eq!(cwd[0].path, path_of(&root, "/work").as_os_str().as_bytes());
    assert!(cwd[0].by_path);
    assert_eq!(rec.argv, vec![b"sleep".to_vec(), b"30".to_vec()]);
    assert_eq!(rec.command, "sleep");
    assert_eq!(rec.uid, rustix::process::getuid().as_raw());
    assert_eq!(rec.ppid, std::process::id());
    assert!(!report.uninspectable.iter().any(|u| u.pid == pid));
    assert!(report.scanned > 0);
}

#[test]
fn open_fd_only() {
    let (_dir, root) = temp_root();
    let file = path_of(&root, "/held.txt");
    std::fs::write(&file, b"x").unwrap();
    let mut kids = Children::new();
    // The path comes through stdin, so it is in no argument or variable.
    let mut cmd = clean("sh");
    cmd.args(["-c", "read p; exec 3<\"$p\"; echo ready; exec sleep 30"]);
    let mut input = file.as_os_str().as_bytes().to_vec();
    input.push(b'\n');
    let pid = spawn_ready(&mut kids, cmd, &input);

    let report = scan_ok(&request(&root));
    let rec = expect_record(&report, pid);
    assert_eq!(sources(rec), BTreeSet::from([Source::Fd]), "{rec:#?}");
    let fd = ev(rec, Source::Fd);
    assert_eq!(fd[0].path, file.as_os_str().as_bytes());
    assert_eq!(fd[0].detail, "fd 3");
}

/// mmap through ctypes, because Python's mmap module keeps a dup of the fd.
const MMAP_PY: &str = r#"
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
def map_file(p):
    fd = os.open(p, os.O_RDONLY)
    addr = libc.mmap(None, 4096, 1, 1, fd, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap")
    return fd
"#;

#[test]
fn mmap_with_fd_closed() {
    let Some(py) = python() else {
        eprintln!("skipped: no python3");
        return;
    };
    let (_dir, root) = temp_root();
    let file = path_of(&root, "/lib.so");
    std::fs::write(&file, vec![7u8; 8192]).unwrap();
    let mut kids = Children::new();
    let script = format!(
        "{MMAP_PY}\np = sys.stdin.readline().rstrip('\\n')\nos.close(map_file(p))\n\
         print('ready', flush=True)\ntime.sleep(30)\n"
    );
    let mut cmd = clean(&py);
    cmd.args(["-c", &script]);
    let mut input = file.as_os_str().as_bytes().to_vec();
    input.push(b'\n');
    let pid = spawn_ready(&mut kids, cmd, &input);

    let report = scan_ok(&request(&root));
    let rec = expect_record(&report, pid);
    assert_eq!(sources(rec), BTreeSet::from([Source::Map]), "{rec:#?}");
    let map = ev(rec, Source::Map);
    assert_eq!(map.len(), 1, "one evidence per mapped file: {map:#?}");
    assert_eq!(map[0].path, file.as_os_str().as_bytes());
    let meta = std::fs::metadata(&file).unwrap();
    let (dev, ino) = map[0].dev_ino.expect("maps columns give dev/ino");
    assert_eq!(ino, meta.ino());
    // maps prints the superblock's device; stat may differ on btrfs/overlayfs, so only the
    // inode is compared strictly.
    let _ = dev;
}

#[test]
fn environ_path_list() {
    let (_dir, root) = temp_root();
    let mut kids = Children::new();
    let bin = path_of(&root, "/venv/bin");
    let mut path_var = bin.as_os_str().as_bytes().to_vec();
    path_var.extend_from_slice(b":/usr/bin:/bin");
    let mut cmd = clean("/usr/bin/sleep");
    cmd.arg("30")
        .env("PATH", std::ffi::OsStr::from_bytes(&path_var))
        .env("EMPTY", "")
        .env("OTHER", "/usr/share");
    let pid = kids.add(cmd.spawn().unwrap());

    let report = scan_ok(&request(&root));
    let rec = expect_record(&report, pid);
    assert_eq!(sources(rec), BTreeSet::from([Source::Environ]), "{rec:#?}");
    let env = ev(rec, Source::Environ);
    assert_eq!(env.len(), 1, "{env:#?}");
    assert_eq!(env[0].detail, "PATH");
    assert_eq!(env[0].path, bin.as_os_str().as_bytes());
}

#[test]
fn argv_with_empty_argument() {
    let Some(py) = python() else {
        eprintln!("skipped: no python3");
        return;
    };
    let (_dir, root) = temp_root();
    let mut kids = Children::new();
    let arg = path_of(&root, "/arg/x");
    let mut cmd = clean(&py);
    cmd.args(["-c", "import time; print('ready', flush=True); time.sleep(30)", ""]).arg(&arg);
    let pid = spawn_ready(&mut kids, cmd, b"");

    let report = scan_ok(&request(&root));
    let rec = expect_record(&report, pid);
    assert_eq!(sources(rec), BTreeSet::from([Source::Cmdline]), "{rec:#?}");
    let cl = ev(rec, Source::Cmdline);
    assert_eq!(cl.len(), 1);
    // argv[3] is the empty argument; dropping it would shift the index.
    assert_eq!(cl[0].detail, "argv[4]");
    assert_eq!(cl[0].path, arg.as_os_str().as_bytes());
    assert_eq!(rec.argv.len(), 5);
    assert_eq!(rec.argv[3], b"");
}

#[test]
fn exe_copied_into_root() {
    let (_dir, root) = temp_root();
    std::fs::create_dir(path_of(&root, "/bin")).unwrap();
    let exe = path_of(&root, "/bin/sleep");
    std::fs::copy("/usr/bin/sleep", &exe).unwrap();
    let mut kids = Children::new();
    let mut attempt = 0;
    let pid = loop {
        let mut cmd = clean(&exe);
        cmd.arg0("sleep").arg("30");
        match cmd.spawn() {
            Ok(child) => break kids.add(child),
            // Another test thread forked while our copy's write handle was open.
            Err(e) if e.raw_os_error() == Some(26) && attempt < 50 => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("spawn {exe:?}: {e}"),
        }
    };

    let report = scan_ok(&request(&root));
    let rec = expect_record(&report, pid);
    let src = sources(rec);
    assert!(src.contains(&Source::Exe), "{rec:#?}");
    assert!(src.is_subset(&BTreeSet::from([Source::Exe, Source::Map])), "{rec:#?}");
    assert_eq!(ev(rec, Source::Exe)[0].path, exe.as_os_str().as_bytes());
}

#[test]
fn thread_with_own_cwd() {
    let Some(py) = python() else {
        eprintln!("skipped: no python3");
        return;
    };
    let (_dir, root) = temp_root();
    let mut kids = Children::new();
    let script = r#"
import ctypes, os, sys, threading, time
p = sys.stdin.readline().rstrip('\n')
libc = ctypes.CDLL(None, use_errno=True)
ready = threading.Event()
def t():
    if libc.unshare(0x200) != 0:
        raise OSError(ctypes.get_errno(), "unshare")
    os.chdir(p)
    ready.set()
    time.sleep(30)
threading.Thread(target=t, daemon=True).start()
ready.wait()
print('ready', flush=True)
time.sleep(30)
"#;
    let mut cmd = clean(&py);
    cmd.args(["-c", script]);
    let mut input = root.clone();
    input.push(b'\n');
    let pid = spawn_ready(&mut kids, cmd, &input);

    let report = scan_ok(&request(&root));
    let rec = expect_record(&report, pid);
    assert_eq!(sources(rec), BTreeSet::from([Source::ThreadCwd]), "{rec:#?}");
    let tc = ev(rec, Source::ThreadCwd);
    assert_eq!(tc[0].path, root);
    assert!(tc[0].detail.starts_with("tid "), "{tc:#?}");
    assert_ne!(tc[0].detail, format!("tid {pid}"));
}

#[test]
fn odd_names_mapped_and_deleted() {
    let Some(py) = python() else {
        eprintln!("skipped: no python3");
        return;
    };
    let (_dir, root) = temp_root();
    let mut kids = Children::new();
    let script = format!(
        r#"{MMAP_PY}
root = sys.stdin.buffer.readline().rstrip(b'\n')
a = os.path.join(root, b'a\nb (deleted)')
b = os.path.join(root, b'x\xff y')
for p in (a, b):
    with open(p, 'wb') as f:
        f.write(b'z' * 4096)
os.close(map_file(a))
os.unlink(a)
keep = map_file(b)
print('ready', flush=True)
time.sleep(30)
"#
    );
    let mut cmd = clean(&py);
    cmd.args(["-c", &script]);
    let mut input = root.clone();
    input.push(b'\n');
    let pid = spawn_ready(&mut kids, cmd, &input);

    let report = scan_ok(&request(&root));
    let rec = expect_record(&report, pid);
    let mut deleted = root.clone();
    deleted.extend_from_slice(b"/a\nb (deleted)");
    let mut odd = root.clone();
    odd.extend_from_slice(b"/x\xff y");
    let map_paths: BTreeSet<&[u8]> = ev(rec, Source::Map).iter().map(|e| &e.path[..]).collect();
    assert_eq!(map_paths, BTreeSet::from([&deleted[..], &odd[..]]), "{rec:#?}");
    let fd_paths: Vec<&[u8]> = ev(rec, Source::Fd).iter().map(|e| &e.path[..]).collect();
    assert_eq!(fd_paths, vec![&odd[..]]);
}

#[test]
fn leader_exited_threads_alive() {
    let Some(py) = python() else {
        eprintln!("skipped: no python3");
        return;
    };
    let (_dir, root) = temp_root();
    let mut kids = Children::new();
    let script = r#"
import ctypes, os, sys, threading, time
os.chdir(sys.stdin.readline().rstrip('\n'))
threading.Thread(target=time.sleep, args=(30,)).start()
print('ready', flush=True)
ctypes.CDLL(None).pthread_exit(None)
"#;
    let mut cmd = clean(&py);
    cmd.args(["-c", script]);
    let mut input = root.clone();
    input.push(b'\n');
    let pid = spawn_ready(&mut kids, cmd, &input);

    // Wait until the leader has really exited (its stat shows Z).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stat = std::fs::read(format!("/proc/{pid}/stat")).unwrap_or_default();
        if super::parse::parse_stat(&stat).is_some_and(|s| s.is_zombie()) {
            break;
        }
        assert!(Instant::now() < deadline, "leader of {pid} did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }

    let report = scan_ok(&request(&root));
    let rec = expect_record(&report, pid);
    assert_eq!(sources(rec), BTreeSet::from([Source::Cwd]), "{rec:#?}");
    assert!(!rec.argv.is_empty(), "argv read through the live thread");
    assert!(!report.uninspectable.iter().any(|u| u.pid == pid));
}

#[test]
fn gone_process_is_not_reported() {
    let (_dir, root) = temp_root();
    let mut cmd = clean("sleep");
    cmd.arg("30").current_dir(path_of(&root, ""));
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    child.kill().unwrap();
    child.wait().unwrap();

    let report = scan_ok(&request(&root));
    assert!(find(&report, pid).is_none());
    assert!(!report.uninspectable.iter().any(|u| u.pid == pid));
}

#[test]
fn argv_of_and_skip_pids() {
    let (_dir, root) = temp_root();
    let mut kids = Children::new();
    let mut cmd = clean("sleep");
    cmd.arg0("/opt/tools/uvfaketool").arg("30");
    let wanted = kids.add(cmd.spawn().unwrap());
    let mut cmd = clean("sleep");
    cmd.arg("30").current_dir(path_of(&root, ""));
    let skipped = kids.add(cmd.spawn().unwrap());

    let mut req = request(&root);
    req.argv_of = vec![b"uvfaketool".to_vec()];
    req.skip_pids.push(skipped);
    req.threads = 1;
    let report = scan_ok(&req);
    let rec = expect_record(&report, wanted);
    assert!(rec.evidence.is_empty());
    assert_eq!(rec.argv, vec![b"/opt/tools/uvfaketool".to_vec(), b"30".to_vec()]);
    assert!(find(&report, skipped).is_none());

    // Without the skip it is found.
    req.skip_pids.pop();
    assert!(find(&scan_ok(&req), skipped).is_some());
}

/// Spawns `cmd` (a shell in a new mount namespace that reads its paths from stdin and says
/// `ready` once its mounts are in place), feeding it `lines`; `None` when it could not mount.
fn spawn_mounting(kids: &mut Children, mut cmd: Command, lines: &[&[u8]]) -> Option<u32> {
    let mut input = Vec::new();
    for line in lines {
        input.extend_from_slice(line);
        input.push(b'\n');
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = cmd.spawn().ok()?;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let pid = kids.add(child);
    if let Some(mut s) = stdin {
        s.write_all(&input).ok()?;
    }
    let mut line = String::new();
    if let Some(out) = stdout {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    (line.trim() == "ready").then_some(pid)
}

/// A process in another mount namespace sees the root through a bind mount elsewhere: its
/// cwd path means nothing here and only the device catches it. Needs root and `unshare`.
#[test]
fn other_mount_namespace_by_device() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (_dir, root) = temp_root();
    let elsewhere = tempfile::tempdir().unwrap();
    let mut kids = Children::new();
    let mut cmd = clean("unshare");
    cmd.args([
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        "read p; read q; mount --bind \"$p\" \"$q\" && cd \"$q\" && echo ready && exec sleep 30",
    ]);
    let Some(pid) = spawn_mounting(&mut kids, cmd, &[&root, elsewhere.path().as_os_str().as_bytes()]) else {
        eprintln!("skipped: cannot bind-mount in a new mount namespace here");
        return;
    };

    let meta = std::fs::metadata(std::ffi::OsStr::from_bytes(&root)).unwrap();
    let device = Device { major: rustix::fs::major(meta.dev()), minor: rustix::fs::minor(meta.dev()) };

    // By path alone the process is invisible.
    let report = scan_ok(&request(&root));
    assert!(find(&report, pid).is_none(), "{:#?}", find(&report, pid));

    let mut req = request(&root);
    req.devices = vec![device];
    let report = scan_ok(&req);
    let rec = expect_record(&report, pid);
    let cwd = ev(rec, Source::Cwd);
    assert_eq!(cwd.len(), 1, "{rec:#?}");
    assert!(!cwd[0].by_path);
    assert_eq!(cwd[0].dev_ino, Some((device, meta.ino())));
    assert_eq!(cwd[0].path, elsewhere.path().as_os_str().as_bytes());
}

/// Where `root` lies in its filesystem, from our own mountinfo (as the main crate finds it).
fn location_of(root: &[u8]) -> crate::FsLocation {
    let text = std::fs::read("/proc/self/mountinfo").expect("our mountinfo");
    let meta = std::fs::metadata(std::ffi::OsStr::from_bytes(root)).unwrap();
    let dev = Device { major: rustix::fs::major(meta.dev()), minor: rustix::fs::minor(meta.dev()) };
    crate::mountinfo::locate(&text, root, Some(dev)).expect("the root's mount")
}

/// The original bug in a container: a process in another mount namespace sees the root only
/// below a tmpfs that exists in its namespace alone, and names it only in `PATH`. Its
/// mountinfo gives that spelling; the hit comes back rewritten to ours, its text kept.
/// Needs root and `unshare`.
#[test]
fn other_mount_namespace_environ() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (_dir, root) = temp_root();
    std::fs::create_dir_all(path_of(&root, "/archive-v0/held/bin")).unwrap();
    let ns_only = tempfile::tempdir().unwrap();
    let ns_only = std::fs::canonicalize(ns_only.path()).unwrap();
    let mut kids = Children::new();
    let mut cmd = clean("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        "read p; read d; mount -t tmpfs none \"$d\" && mkdir \"$d/inner\" && mount --bind \"$p\" \"$d/inner\" \
         && echo ready && exec env -i PATH=\"$d/inner/archive-v0/held/bin:/usr/bin:/bin\" sleep 30",
    ]);
    let Some(pid) = spawn_mounting(&mut kids, cmd, &[&root, ns_only.as_os_str().as_bytes()]) else {
        eprintln!("skipped: cannot mount in a new mount namespace here");
        return;
    };
    let mut theirs = ns_only.as_os_str().as_bytes().to_vec();
    theirs.extend_from_slice(b"/inner/archive-v0/held/bin");
    // Wait for the exec: the new environment is the one to read.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|e| memchr::memmem::find(&e, &theirs).is_some())
    {
        assert!(Instant::now() < deadline, "child {pid} did not exec");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Our spellings alone miss it: that path does not exist in our namespace.
    let report = scan_ok(&request(&root));
    assert!(
        find(&report, pid).is_none_or(|r| ev(r, Source::Environ).is_empty()),
        "{:#?}",
        find(&report, pid)
    );

    let mut req = request(&root);
    req.location = Some(location_of(&root));
    let report = scan_ok(&req);
    let rec = expect_record(&report, pid);
    let env = ev(rec, Source::Environ);
    assert_eq!(env.len(), 1, "{rec:#?}");
    assert_eq!(env[0].detail, "PATH");
    assert_eq!(env[0].path, path_of(&root, "/archive-v0/held/bin").as_os_str().as_bytes());
    assert_eq!(env[0].original.as_deref(), Some(theirs.as_slice()));
    assert!(env[0].by_path);
    assert!(!report.uninspectable.iter().any(|u| u.pid == pid), "{report:#?}");
}

/// Fabricated processes that spell the root their own way: one in another mount namespace
/// (environment, command line and maps, through its mountinfo, an escaped mount point and an
/// entry bound on its own), one chrooted in ours, and two whose view cannot be read, which are
/// uninspectable rather than idle.
#[test]
fn fake_other_namespace_and_chroot() {
    let proc_dir = tempfile::tempdir().unwrap();
    let p = proc_dir.path();
    let mk = |rel: &str, data: &[u8]| {
        let f = p.join(rel);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, data).unwrap();
    };
    let link = |target: &[u8], at: &str| {
        std::fs::create_dir_all(p.join(at).parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), p.join(at)).unwrap();
    };
    let process = |pid: u32, ns: Option<&[u8]>, root: &[u8], cmdline: &[u8], environ: &[u8], maps: &[u8]| {
        mk(
            &format!("{pid}/stat"),
            format!("{pid} (fake) S 1 1 1 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 1 0 1 0 0\n").as_bytes(),
        );
        mk(&format!("{pid}/status"), b"Name:\tfake\nUid:\t1000\t1000\t1000\t1000\n");
        mk(&format!("{pid}/cmdline"), cmdline);
        mk(&format!("{pid}/environ"), environ);
        mk(&format!("{pid}/maps"), maps);
        std::fs::create_dir_all(p.join(format!("{pid}/fd"))).unwrap();
        link(b"/usr/bin/python3", &format!("{pid}/exe"));
        link(b"/", &format!("{pid}/cwd"));
        link(root, &format!("{pid}/root"));
        if let Some(ns) = ns {
            link(ns, &format!("{pid}/ns/mnt"));
        }
    };
    link(b"mnt:[1]", "self/ns/mnt");
    process(
        400,
        Some(b"mnt:[2]"),
        b"/",
        b"python3\0/root/.cache/uv/archive-v0/a/bin/tool\0",
        b"PATH=/root/.cache/uv/archive-v0/b/bin:/usr/bin\0VIRTUAL_ENV=/opt/tool env\0HOME=/root\0",
        b"7f00-7f01 r--p 00000000 00:2f 77 /root/.cache/uv/archive-v0/c/x.so\n",
    );
    mk(
        "400/mountinfo",
        b"600 500 0:90 / / rw - overlay overlay rw\n\
601 600 254:0 /home/u/.cache/uv /root/.cache/uv rw - ext4 /dev/vda rw\n\
602 600 254:0 /home/u/.cache/uv/archive-v0/def /opt/tool\\040env rw - ext4 /dev/vda rw\n\
603 600 254:0 /var/lib /var/lib rw - ext4 /dev/vda rw\n",
    );
    process(500, Some(b"mnt:[1]"), b"/srv/jail", b"sh\0", b"PATH=/cache/uv/archive-v0/d/bin\0", b"");
    process(600, Some(b"mnt:[3]"), b"/", b"sh\0", b"PATH=/x\0", b""); // no mountinfo
    process(700, None, b"/", b"sh\0", b"PATH=/x\0", b""); // no ns/mnt

    let mut req = request(b"/home/u/.cache/uv");
    req.roots.push(b"/srv/jail/cache/uv".to_vec());
    req.proc_root = p.to_path_buf();
    req.location = Some(crate::FsLocation {
        device: Device { major: 254, minor: 0 },
        path_in_fs: b"/home/u/.cache/uv".to_vec(),
        path: b"/home/u/.cache/uv".to_vec(),
    });
    let report = scan_ok(&req);

    type Hit = (Source, String, Vec<u8>, Option<Vec<u8>>);
    let hits = |pid: u32| -> BTreeSet<Hit> {
        expect_record(&report, pid)
            .evidence
            .iter()
            .map(|e| (e.source, e.detail.clone(), e.path.clone(), e.original.clone()))
            .collect()
    };
    let hit = |source, detail: &str, ours: &[u8], theirs: &[u8]| -> Hit {
        (source, detail.to_string(), ours.to_vec(), Some(theirs.to_vec()))
    };
    assert_eq!(
        hits(400),
        BTreeSet::from([
            hit(
                Source::Cmdline,
                "argv[1]",
                b"/home/u/.cache/uv/archive-v0/a/bin/tool",
                b"/root/.cache/uv/archive-v0/a/bin/tool"
            ),
            hit(
                Source::Environ,
                "PATH",
                b"/home/u/.cache/uv/archive-v0/b/bin",
                b"/root/.cache/uv/archive-v0/b/bin"
            ),
            hit(Source::Environ, "VIRTUAL_ENV", b"/home/u/.cache/uv/archive-v0/def", b"/opt/tool env"),
            hit(
                Source::Map,
                "7f00-7f01",
                b"/home/u/.cache/uv/archive-v0/c/x.so",
                b"/root/.cache/uv/archive-v0/c/x.so"
            ),
        ]),
        "{report:#?}"
    );
    assert_eq!(
        hits(500),
        BTreeSet::from([hit(
            Source::Environ,
            "PATH",
            b"/srv/jail/cache/uv/archive-v0/d/bin",
            b"/cache/uv/archive-v0/d/bin"
        )]),
        "{report:#?}"
    );
    let un: Vec<(u32, &str)> = report.uninspectable.iter().map(|u| (u.pid, u.reason.as_str())).collect();
    assert_eq!(un.len(), 2, "{report:#?}");
    assert!(un[0].0 == 600 && un[0].1.contains("mountinfo"), "{un:?}");
    assert!(un[1].0 == 700 && un[1].1.contains("ns/mnt"), "{un:?}");
}

/// A fabricated procfs: garbage, missing and odd entries become uninspectable or gone, never a
/// panic; a well-formed fake process is read through symlinks and files like a real one.
#[test]
fn fake_proc_tree() {
    let (_dir, root) = temp_root();
    let proc_dir = tempfile::tempdir().unwrap();
    let p = proc_dir.path();
    let mk = |rel: &str, data: &[u8]| {
        let f = p.join(rel);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, data).unwrap();
    };
    let stat = |pid: u32, state: &str, flags: u64, threads: u32| {
        format!("{pid} (fa) ke) {state} 1 1 1 0 -1 {flags} 0 0 0 0 0 0 0 0 20 0 {threads} 0 1 0 0\n")
    };
    // 100: garbage stat, nothing else.
    mk("100/stat", b"\xff\xfe garbage");
    // 200: empty directory (the process went away).
    std::fs::create_dir(p.join("200")).unwrap();
    // 300: not a directory.
    mk("300", b"");
    // 400: a complete fake process using the root in every way a fake tree allows.
    mk("400/stat", stat(400, "S", 4194304, 1).as_bytes());
    mk("400/status", b"Name:\tfa\nUid:\t1234\t1234\t1234\t1234\n");
    let mut cmdline = b"uv\0\0--cache-dir=".to_vec();
    cmdline.extend_from_slice(&root);
    cmdline.push(0);
    mk("400/cmdline", &cmdline);
    let mut environ = b"NOEQUALS\0PATH=/usr/bin:".to_vec();
    environ.extend_from_slice(&root);
    environ.extend_from_slice(b"/env/bin\0");
    mk("400/environ", &environ);
    let mut maps = b"55d0-55d1 rw-p 00000000 00:00 0    [heap]\nnot a maps line ".to_vec();
    maps.extend_from_slice(&root);
    maps.extend_from_slice(b"/weird\n7f00-7f01 r--p 00000000 fe:01 77   ");
    maps.extend_from_slice(&root);
    maps.extend_from_slice(b"/m\\012n.so (deleted)\n");
    mk("400/maps", &maps);
    std::fs::create_dir_all(p.join("400/fd")).unwrap();
    let link = |target: &[u8], at: &str| {
        std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), p.join(at)).unwrap();
    };
    let mut held = root.clone();
    held.extend_from_slice(b"/held (deleted)");
    link(&held, "400/fd/3");
    link(b"socket:[123]", "400/fd/4");
    link(b"/memfd:x (deleted)", "400/fd/5");
    link(&root, "400/cwd");
    link(b"/", "400/root");
    link(b"/usr/bin/uv", "400/exe");
    // 500: kernel thread; 600: zombie without threads; 700: stat says alive but the other
    // files are missing.
    mk("500/stat", stat(500, "S", 0x0020_0040, 1).as_bytes());
    mk("600/stat", stat(600, "Z", 4194304, 1).as_bytes());
    std::fs::create_dir_all(p.join("600/task/600")).unwrap();
    mk("700/stat", stat(700, "S", 4194304, 1).as_bytes());
    mk("abc/stat", b"not a pid");

    let mut req = request(&root);
    req.proc_root = p.to_path_buf();
    req.argv_of = vec![b"uv".to_vec()];
    let report = scan_ok(&req);

    let un: Vec<u32> = report.uninspectable.iter().map(|u| u.pid).collect();
    assert_eq!(un, vec![100, 300, 700], "{report:#?}");
    assert_eq!(report.gone, 1, "{report:#?}"); // 200
    assert_eq!(report.scanned, 4, "{report:#?}"); // 100 300 400 700
    let rec = expect_record(&report, 400);
    assert_eq!(rec.uid, 1234);
    assert_eq!(rec.command, "fa) ke");
    assert_eq!(rec.argv.len(), 3);
    let got: BTreeSet<(Source, String, Vec<u8>)> =
        rec.evidence.iter().map(|e| (e.source, e.detail.clone(), e.path.clone())).collect();
    let with = |s: &str| {
        let mut v = root.clone();
        v.extend_from_slice(s.as_bytes());
        v
    };
    let expected = BTreeSet::from([
        (Source::Cmdline, "argv[2]".to_string(), root.clone()),
        (Source::Environ, "PATH".to_string(), with("/env/bin")),
        (Source::Cwd, String::new(), root.clone()),
        (Source::Fd, "fd 3".to_string(), with("/held")),
        (Source::Map, "unparsed line".to_string(), with("/weird")),
        (Source::Map, "7f00-7f01".to_string(), with("/m\nn.so")),
    ]);
    assert_eq!(got, expected, "{rec:#?}");
    let m = ev(rec, Source::Map).into_iter().find(|e| e.detail == "7f00-7f01").unwrap();
    assert_eq!(m.dev_ino, Some((Device { major: 0xfe, minor: 1 }, 77)));
    assert!(rec.denied.is_empty());
}

#[test]
fn missing_proc_root_is_an_error() {
    let req = ScanRequest { proc_root: PathBuf::from("/nonexistent/proc/root"), ..ScanRequest::default() };
    assert!(matches!(scan(&req), Err(crate::ScanError::ListProcesses { .. })));
}

#[test]
fn file_locks_live() {
    let (_dir, root) = temp_root();
    let Some(py) = python() else {
        eprintln!("skipped: no python3");
        return;
    };
    let file = path_of(&root, "/lock");
    std::fs::write(&file, b"").unwrap();
    let mut kids = Children::new();
    let mut cmd = clean(&py);
    cmd.args([
        "-c",
        "import fcntl, sys, time\nf = open(sys.stdin.readline().rstrip('\\n'), 'rb')\n\
         fcntl.flock(f, fcntl.LOCK_EX)\nprint('ready', flush=True)\ntime.sleep(30)\n",
    ]);
    let mut input = file.as_os_str().as_bytes().to_vec();
    input.push(b'\n');
    let pid = spawn_ready(&mut kids, cmd, &input);
    let meta = std::fs::metadata(&file).unwrap();
    let locks = super::file_locks(Path::new("/proc"));
    let lock = locks
        .iter()
        .find(|l| l.pid == pid && l.inode == meta.ino())
        .unwrap_or_else(|| panic!("no lock for {pid}: {locks:#?}"));
    assert_eq!(lock.kind, "flock");
    assert!(lock.exclusive);
    assert!(super::file_locks(Path::new("/nonexistent")).is_empty());
}

/// Run as `nobody` against a root-owned child: everything but cmdline is denied, the process
/// is uninspectable, and the evidence cmdline still gives is kept. Needs root and setpriv.
#[test]
fn denied_process_as_nobody() {
    const HELPER_ENV: &str = "SAFE_PRUNE_TEST_NOBODY_SCAN";
    if let Some(spec) = std::env::var_os(HELPER_ENV) {
        // Helper mode: scan and print what was found for the pid.
        let spec = spec.to_string_lossy().into_owned();
        let (pid, root) = spec.split_once(':').expect("pid:root");
        let pid: u32 = pid.parse().unwrap();
        let report = scan_ok(&request(root.as_bytes()));
        let u = report.uninspectable.iter().find(|u| u.pid == pid);
        let r = find(&report, pid);
        println!(
            "RESULT reason={:?} denied={:?} uid={:?} evidence={:?}",
            u.map(|u| u.reason.clone()),
            u.map(|u| u.denied.clone()),
            u.and_then(|u| u.uid),
            r.map(sources),
        );
        return;
    }
    if !rustix::process::geteuid().is_root() || !Path::new("/usr/bin/setpriv").exists() {
        eprintln!("skipped: needs root and setpriv");
        return;
    }
    let (_dir, root) = temp_root();
    let mut kids = Children::new();
    // argv[0] names the root (readable by anyone); the cwd is there too (denied to nobody).
    let mut cmd = clean("sleep");
    cmd.arg0(path_of(&root, "/arg")).arg("30").current_dir(path_of(&root, ""));
    let pid = kids.add(cmd.spawn().unwrap());

    let exe = std::env::current_exe().unwrap();
    let out = Command::new("/usr/bin/setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&exe)
        .args(["--exact", "linux::tests::denied_process_as_nobody", "--nocapture", "--test-threads=1"])
        .env(HELPER_ENV, format!("{pid}:{}", String::from_utf8_lossy(&root)))
        .current_dir("/")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // libtest prints "test <name> ... " before the helper's own output on the same line.
    let Some(line) = stdout.lines().find_map(|l| l.find("RESULT ").map(|i| &l[i..])) else {
        eprintln!("skipped: helper did not run as nobody: {}", String::from_utf8_lossy(&out.stderr));
        return;
    };
    assert!(line.contains("reason=Some(\"permission denied\")"), "{line}");
    assert!(line.contains("denied=Some([Exe, Cwd, Root, Fd, Map, Environ])"), "{line}");
    assert!(line.contains("uid=Some(0)"), "{line}");
    assert!(line.contains("evidence=Some({Cmdline})"), "{line}");
}

/// Prints how long a full scan of this machine takes (no assertion on time).
#[test]
fn measure_scan_time() {
    let fds: usize = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().as_bytes().iter().all(u8::is_ascii_digit))
        .map(|e| std::fs::read_dir(e.path().join("fd")).map(|d| d.count()).unwrap_or(0))
        .sum();
    // SAFE_PRUNE_MEASURE_ROOT lets a benchmark population be matched (hits cost more).
    let root = std::env::var_os("SAFE_PRUNE_MEASURE_ROOT")
        .map_or_else(|| b"/nonexistent/safe-prune-measure".to_vec(), |r| r.as_bytes().to_vec());
    let threads = std::env::var("SAFE_PRUNE_MEASURE_THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(0);
    let req = ScanRequest { roots: vec![root], threads, ..ScanRequest::default() };
    let _ = scan_ok(&req); // warm-up
    let mut times = Vec::new();
    let mut last = ScanReport::default();
    for _ in 0..5 {
        let t = Instant::now();
        last = scan_ok(&req);
        times.push(t.elapsed());
    }
    times.sort();
    let median = times[times.len() / 2];
    let evidence: usize = last.processes.iter().map(|p| p.evidence.len()).sum();
    eprintln!(
        "scan: {} processes ({} gone, {} uninspectable, {} with evidence, {evidence} evidence), \
         ~{} fds, median {:.1} ms (min {:.1} ms) over {} runs, {} threads",
        last.scanned,
        last.gone,
        last.uninspectable.len(),
        last.processes.len(),
        fds,
        median.as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times.len(),
        match threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from).min(8),
            n => n,
        },
    );
    if let Some(h) = &last.hidden {
        eprintln!("  hidden: {h}");
    }
    for u in &last.uninspectable {
        eprintln!("  uninspectable: pid {} {:?}: {} {:?}", u.pid, u.command, u.reason, u.denied);
    }
}
