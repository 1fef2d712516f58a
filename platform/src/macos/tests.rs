//! Tests of the macOS backend against the running system (they run on macOS CI only): our
//! mirrors against `libc`'s declarations, every wrapper in `sys` on our own process, zombie /
//! gone classification, and an end-to-end scan of a child process that uses a directory in
//! every way the backend can see.

use super::*;
use crate::darwin_abi::{
    ProcBsdInfo, ProcTaskInfo, ProcThreadInfo, VinfoStat, VnodeInfo, VnodeInfoPath, CTL_KERN, EACCES, EBADF,
    EINVAL, ENOENT, ENOMEM, EPERM, ESRCH, KERN_ARGMAX, KERN_PROCARGS2, MAXCOMLEN,
};
use crate::darwin_logic::{self, split_dev};
use crate::{Device, ProcessRecord};
use std::ffi::OsStr;
use std::mem::size_of;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn layouts_and_constants_match_libc() {
    assert_eq!(size_of::<VinfoStat>(), size_of::<libc::vinfo_stat>());
    assert_eq!(size_of::<VnodeInfo>(), size_of::<libc::vnode_info>());
    assert_eq!(size_of::<VnodeInfoPath>(), size_of::<libc::vnode_info_path>());
    assert_eq!(size_of::<ProcVnodePathInfo>(), size_of::<libc::proc_vnodepathinfo>());
    assert_eq!(size_of::<ProcFdInfo>(), size_of::<libc::proc_fdinfo>());
    assert_eq!(size_of::<ProcThreadInfo>(), size_of::<libc::proc_threadinfo>());
    assert_eq!(size_of::<ProcBsdInfo>(), size_of::<libc::proc_bsdinfo>());
    assert_eq!(size_of::<ProcTaskInfo>(), size_of::<libc::proc_taskinfo>());
    assert_eq!(size_of::<ProcTaskAllInfo>(), size_of::<libc::proc_taskallinfo>());
    assert_eq!(size_of::<ProcBsdShortInfo>(), size_of::<libc::proc_bsdshortinfo>());
    // Structures libc lacks: the hand-computed sizes (also asserted on every OS in
    // darwin_abi's tests) are what the kernel checks against.
    assert_eq!(size_of::<VnodeFdInfoWithPath>(), 1200);
    assert_eq!(size_of::<ProcRegionWithPathInfo>(), 1272);
    assert_eq!(size_of::<ProcThreadWithPathInfo>(), 1288);

    assert_eq!(PROC_PIDLISTFDS, libc::PROC_PIDLISTFDS);
    assert_eq!(PROC_PIDTASKALLINFO, libc::PROC_PIDTASKALLINFO);
    assert_eq!(PROC_PIDVNODEPATHINFO, libc::PROC_PIDVNODEPATHINFO);
    assert_eq!(PROC_PIDT_SHORTBSDINFO, libc::PROC_PIDT_SHORTBSDINFO);
    assert_eq!(PROC_PIDPATHINFO_MAXSIZE, usize::try_from(libc::PROC_PIDPATHINFO_MAXSIZE).unwrap());
    assert_eq!(PROX_FDTYPE_VNODE, u32::try_from(libc::PROX_FDTYPE_VNODE).unwrap());
    assert_eq!(CTL_KERN, libc::CTL_KERN);
    assert_eq!(KERN_ARGMAX, libc::KERN_ARGMAX);
    assert_eq!(KERN_PROCARGS2, libc::KERN_PROCARGS2);
    assert_eq!(SZOMB, libc::SZOMB);
    assert_eq!(MAXCOMLEN, libc::MAXCOMLEN);
    for (ours, theirs) in [
        (EPERM, libc::EPERM),
        (ENOENT, libc::ENOENT),
        (ESRCH, libc::ESRCH),
        (EBADF, libc::EBADF),
        (ENOMEM, libc::ENOMEM),
        (EACCES, libc::EACCES),
        (EINVAL, libc::EINVAL),
    ] {
        assert_eq!(ours, theirs);
    }
    // Our split of dev_t is libc's.
    let dev: libc::dev_t = 0x0100_0012;
    assert_eq!(
        split_dev(0x0100_0012),
        Device {
            major: u32::try_from(libc::major(dev)).unwrap(),
            minor: u32::try_from(libc::minor(dev)).unwrap(),
        }
    );
}

#[test]
fn region_flavor_probe_succeeds() {
    let flavor = probe_region_flavor();
    eprintln!("region flavor: {flavor:?}");
    assert!(flavor.is_some(), "neither region flavor works on this macOS");
}

fn canonical_bytes(p: &Path) -> Vec<u8> {
    std::fs::canonicalize(p).unwrap().as_os_str().as_bytes().to_vec()
}

#[test]
fn sys_wrappers_on_our_own_process() {
    let me = i32::try_from(std::process::id()).unwrap();

    let mut pids = Vec::new();
    sys::list_pids(&mut pids, MAX_PIDS).unwrap();
    assert!(pids.contains(&me));
    assert!(pids.contains(&1), "launchd is always listed");

    let mut all = ProcTaskAllInfo::ZERO;
    sys::pidinfo(me, PROC_PIDTASKALLINFO, 0, &mut all).unwrap();
    assert_eq!(i32::try_from(all.pbsd.pbi_pid).unwrap(), me);
    assert_eq!(all.pbsd.pbi_uid, sys::geteuid());
    assert!(all.ptinfo.pti_threadnum >= 1);

    let mut short = ProcBsdShortInfo::ZERO;
    sys::pidinfo(me, PROC_PIDT_SHORTBSDINFO, 0, &mut short).unwrap();
    assert_eq!(short.pbsi_uid, sys::geteuid());
    assert!(alive(me));
    assert!(!is_zombie(me));

    let mut path = Box::new([0u8; PROC_PIDPATHINFO_MAXSIZE]);
    let exe = sys::pidpath(me, &mut path).unwrap();
    assert_eq!(exe, canonical_bytes(&std::env::current_exe().unwrap()));

    let mut args = Vec::new();
    let argmax = sys::argmax().unwrap();
    assert!(argmax >= 256 * 1024);
    let n = sys::procargs(me, &mut args, argmax).unwrap();
    let parsed = procargs::parse(&args[..n]);
    assert!(parsed.is_complete(), "{parsed:?}");
    let ours: Vec<Vec<u8>> = std::env::args_os().map(|a| a.as_bytes().to_vec()).collect();
    let theirs: Vec<Vec<u8>> = parsed.argv.iter().map(|a| a.to_vec()).collect();
    assert_eq!(theirs, ours);
    if let Some(p) = std::env::var_os("PATH") {
        let mut want = b"PATH=".to_vec();
        want.extend_from_slice(p.as_bytes());
        assert!(parsed.env.contains(&want.as_slice()));
    }

    let mut vnodes = Box::new(ProcVnodePathInfo::ZERO);
    sys::pidinfo(me, PROC_PIDVNODEPATHINFO, 0, &mut *vnodes).unwrap();
    assert_eq!(vnodes.pvi_cdir.path(), canonical_bytes(&std::env::current_dir().unwrap()));
    assert_ne!(vnodes.pvi_cdir.dev(), 0);
    assert!(!vnodes.pvi_rdir.is_present(), "tests do not run chrooted");

    // An open file shows up among our fds, with its dev/inode.
    let file = tempfile::NamedTempFile::new().unwrap();
    let want = canonical_bytes(file.path());
    let meta = std::fs::metadata(file.path()).unwrap();
    assert!(sys::list_hint(me, PROC_PIDLISTFDS).unwrap() > 0);
    let mut fds: Vec<ProcFdInfo> = Vec::new();
    sys::pidinfo_list(me, PROC_PIDLISTFDS, &mut fds, 1, MAX_FDS).unwrap();
    let mut info = Box::new(VnodeFdInfoWithPath::ZERO);
    let found = fds.iter().any(|f| {
        f.proc_fdtype == PROX_FDTYPE_VNODE
            && sys::pidfdinfo(me, f.proc_fd, PROC_PIDFDVNODEPATHINFO, &mut *info).is_ok()
            && info.pvip.path() == want.as_slice()
            && info.pvip.ino() == meta.ino()
    });
    assert!(found, "the temp file is not among our vnode fds");
    // A closed fd answers EBADF.
    let bad = fds.iter().map(|f| f.proc_fd).max().unwrap() + 1000;
    assert_eq!(sys::pidfdinfo(me, bad, PROC_PIDFDVNODEPATHINFO, &mut *info), Err(EBADF));

    let mut threads = Vec::new();
    sys::pidinfo_list(me, PROC_PIDLISTTHREADS, &mut threads, 1, MAX_THREADS).unwrap();
    assert!(!threads.is_empty());
    let mut th = Box::new(ProcThreadWithPathInfo::ZERO);
    sys::pidinfo(me, PROC_PIDTHREADPATHINFO, threads[0], &mut *th).unwrap();
    // A thread handle that does not exist is ESRCH (what a thread that exited looks like).
    assert_eq!(sys::pidinfo(me, PROC_PIDTHREADPATHINFO, 0xdead_0000_0000, &mut *th), Err(ESRCH));

    // The region walk sees our own executable.
    let flavor = probe_region_flavor().unwrap();
    let mut region = Box::new(ProcRegionWithPathInfo::ZERO);
    let exe = canonical_bytes(&std::env::current_exe().unwrap());
    let mut addr = 0;
    let mut saw_exe = false;
    for _ in 0..MAX_REGIONS {
        match sys::pidinfo(me, flavor, addr, &mut *region) {
            Ok(()) => {
                saw_exe |= region.prp_vip.path() == exe.as_slice();
                match next_region_address(addr, region.prp_prinfo.pri_address, region.prp_prinfo.pri_size) {
                    RegionStep::Next(a) => addr = a,
                    RegionStep::Done => break,
                }
            }
            Err(e) => {
                assert_eq!(e, EINVAL, "the walk ends with EINVAL");
                break;
            }
        }
    }
    assert!(saw_exe, "our executable is not among our mapped files");
}

/// Kills and reaps a child we started, whatever happens in the test.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Reaped {
    fn pid(&self) -> i32 {
        i32::try_from(self.0.id()).unwrap()
    }
}

#[test]
fn exited_and_zombie_processes_are_classified() {
    let ctx = Ctx {
        matcher: Matcher::new(&ScanRequest::default()),
        our_euid: sys::geteuid(),
        region_flavor: probe_region_flavor(),
        argmax: sys::argmax().unwrap(),
    };
    let mut s = Scratch::new();

    // A child that exited and is not reaped yet: a zombie.
    let mut child = Reaped(Command::new("/usr/bin/true").spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !is_zombie(child.pid()) {
        assert!(Instant::now() < deadline, "child never became a zombie");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(child.pid()));
    assert!(matches!(inspect(child.pid(), &ctx, &mut s), Outcome::Ended(Ended::Zombie)));

    // Reaped: gone.
    child.0.wait().unwrap();
    let pid = child.pid();
    assert!(matches!(inspect(pid, &ctx, &mut s), Outcome::Ended(Ended::Gone)));
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn record_of(report: &ScanReport, pid: i32) -> Option<&ProcessRecord> {
    report.processes.iter().find(|p| i64::from(p.pid) == i64::from(pid))
}

const HELPER_FILE_VAR: &str = "SAFE_PRUNE_MACOS_HELPER_FILE";

/// Not a test: the body of the child process `scan_sees_every_source_of_a_child` starts
/// (a copy of this test binary). It holds a file open until it is killed.
#[test]
#[ignore = "helper process of scan_sees_every_source_of_a_child"]
fn helper_process() {
    let Some(file) = std::env::var_os(HELPER_FILE_VAR) else {
        return;
    };
    let file = Path::new(&file);
    let _held = std::fs::File::open(file).unwrap();
    std::fs::write(file.with_extension("ready"), b"").unwrap();
    std::thread::sleep(Duration::from_secs(120));
}

#[test]
fn scan_sees_every_source_of_a_child() {
    let tmp = tempfile::tempdir().unwrap();
    // /var/folders/... is /private/var/folders/... to the kernel.
    let root = std::fs::canonicalize(tmp.path()).unwrap();
    let root_b = root.as_os_str().as_bytes().to_vec();
    let join = |rest: &str| {
        let mut v = root_b.clone();
        v.extend_from_slice(rest.as_bytes());
        v
    };
    std::fs::create_dir(root.join("bin")).unwrap();
    let helper = root.join("bin/helper");
    std::fs::copy(std::env::current_exe().unwrap(), &helper).unwrap();
    let held = root.join("held.dat");
    std::fs::write(&held, b"x").unwrap();
    let env_value = format!("/usr/bin:{}/venv/bin", root.display());

    let child = Reaped(
        Command::new(&helper)
            .args(["--exact", "macos::tests::helper_process", "--ignored", "--nocapture", "--test-threads=1"])
            // A second test filter that matches nothing: an argument under the root.
            .arg(root.join("arg-marker"))
            .env(HELPER_FILE_VAR, &held)
            .env("SAFE_PRUNE_TEST_PATH", &env_value)
            .current_dir(&root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(&held.with_extension("ready"));

    let dev = split_dev(u32::try_from(std::fs::metadata(&root).unwrap().dev() & 0xffff_ffff).unwrap());
    let request = ScanRequest {
        roots: vec![root_b.clone()],
        devices: vec![dev],
        argv_of: vec![b"helper".to_vec()],
        ..ScanRequest::default()
    };
    // This test process holds a file under the root too: like the Linux backend, the scan
    // reports its own process unless told to skip it (a safe-prune run from the cache is
    // evidence for its own environment).
    let mine = root.join("mine.dat");
    std::fs::write(&mine, b"y").unwrap();
    let _mine = std::fs::File::open(&mine).unwrap();
    let report = crate::scan(&request).unwrap();
    assert!(report.scanned > 1);
    let me = std::process::id();
    let own = record_of(&report, i32::try_from(me).unwrap()).expect("our own process not reported");
    assert!(own.evidence.iter().any(|e| e.source == Source::Fd && e.path == join("/mine.dat")), "{own:#?}");
    let rec = record_of(&report, child.pid()).expect("child not reported");
    eprintln!("{rec:#?}");
    assert!(report.uninspectable.iter().all(|u| u.pid != rec.pid), "our own child must be fully readable");
    assert!(rec.denied.is_empty());
    assert_eq!(rec.argv.first().map(Vec::as_slice), Some(helper.as_os_str().as_bytes()));
    assert_eq!(rec.ppid, me);

    let has = |source: Source, path: &[u8]| {
        rec.evidence.iter().any(|e| e.source == source && e.path == path && e.by_path)
    };
    assert!(has(Source::Exe, &join("/bin/helper")));
    assert!(has(Source::Map, &join("/bin/helper")));
    assert!(has(Source::Cwd, &root_b));
    assert!(has(Source::Fd, &join("/held.dat")));
    assert!(has(Source::Cmdline, &join("/arg-marker")));
    assert!(has(Source::Cmdline, &join("/bin/helper")));
    assert!(rec.evidence.iter().any(|e| e.source == Source::Environ
        && e.detail == "SAFE_PRUNE_TEST_PATH"
        && e.path == join("/venv/bin")));
    // Every vnode-based hit carries the root's device.
    for e in &rec.evidence {
        if matches!(e.source, Source::Cwd | Source::Fd | Source::Map) {
            assert_eq!(e.dev_ino.map(|(d, _)| d), Some(dev), "{e:?}");
        }
    }
    let fd = rec.evidence.iter().find(|e| e.source == Source::Fd).unwrap();
    assert!(fd.detail.starts_with("fd "));
    assert_eq!(fd.dev_ino.map(|(_, ino)| ino), Some(std::fs::metadata(&held).unwrap().ino()));

    // The same volume under a root that does not match: device-only hits.
    let report = crate::scan(&ScanRequest {
        roots: vec![b"/nonexistent/safe-prune-root".to_vec()],
        devices: vec![dev],
        ..ScanRequest::default()
    })
    .unwrap();
    let rec = record_of(&report, child.pid()).expect("child not reported by device");
    assert!(rec.evidence.iter().any(|e| e.source == Source::Cwd && !e.by_path && e.path == root_b));
    assert!(rec.evidence.iter().all(|e| !e.by_path));

    // skip_pids is honoured, for our own pid too.
    let report = crate::scan(&ScanRequest { skip_pids: vec![child.0.id(), me], ..request }).unwrap();
    assert!(record_of(&report, child.pid()).is_none());
    assert!(record_of(&report, i32::try_from(me).unwrap()).is_none());
    assert!(report.uninspectable.iter().all(|u| u.pid != me));
}

#[test]
fn restricted_binary_environment_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(tmp.path()).unwrap();
    let root_b = root.as_os_str().as_bytes().to_vec();
    let child = Reaped(
        Command::new("/bin/sleep")
            .arg("120")
            .current_dir(&root)
            .env("SAFE_PRUNE_TEST_PATH", root.join("venv/bin"))
            .spawn()
            .unwrap(),
    );
    let request = ScanRequest { roots: vec![root_b.clone()], ..ScanRequest::default() };
    // Scan until the child has exec'd sleep (before that it is a copy of us).
    let deadline = Instant::now() + Duration::from_secs(30);
    let report = loop {
        let report = crate::scan(&request).unwrap();
        let ready = record_of(&report, child.pid())
            .is_some_and(|r| r.argv.first().map(Vec::as_slice) == Some(OsStr::new("/bin/sleep").as_bytes()));
        if ready {
            break report;
        }
        assert!(Instant::now() < deadline, "sleep never showed up");
        std::thread::sleep(Duration::from_millis(50));
    };
    let rec = record_of(&report, child.pid()).unwrap();
    eprintln!("{rec:#?}");
    assert!(rec.evidence.iter().any(|e| e.source == Source::Cwd && e.path == root_b));
    let env_hit = rec.evidence.iter().any(|e| e.source == Source::Environ);
    match report.uninspectable.iter().find(|u| u.pid == rec.pid) {
        // SIP on (the normal case): the kernel withholds the environment of platform binaries.
        Some(u) => {
            assert!(u.denied.contains(&Source::Environ), "{u:?}");
            assert!(!u.denied.contains(&Source::Cmdline), "{u:?}");
            assert!(u.reason.contains(darwin_logic::ENVIRONMENT_UNAVAILABLE), "{u:?}");
            assert!(!env_hit);
        }
        // SIP off: the environment is readable and must have been matched.
        None => assert!(env_hit, "environment readable but the variable was not found"),
    }
}

#[test]
fn other_users_processes_are_uninspectable_not_clean() {
    if sys::geteuid() == 0 {
        eprintln!("running as root: every process is readable, nothing to check");
        return;
    }
    let report = crate::scan(&ScanRequest {
        roots: vec![b"/nonexistent/safe-prune-root".to_vec()],
        ..ScanRequest::default()
    })
    .unwrap();
    // launchd (pid 1) belongs to root.
    let launchd =
        report.uninspectable.iter().find(|u| u.pid == 1).expect("launchd must be listed as uninspectable");
    assert_eq!(launchd.uid, Some(0));
    assert!(launchd.reason.contains(darwin_logic::PERMISSION_DENIED));
    for s in [Source::Cwd, Source::Fd, Source::Map, Source::Environ] {
        assert!(launchd.denied.contains(&s), "{launchd:?}");
    }
}
