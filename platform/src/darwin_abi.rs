//! `#[repr(C)]` mirrors of the xnu `proc_info` structures and the Darwin constants the macOS
//! backend passes to `proc_pidinfo`, `proc_pidfdinfo` and `sysctl`.
//!
//! Pure data, no FFI and no `unsafe`: it is compiled on every OS so that the layout tests run
//! on Linux as well as on macOS CI. The fields use fixed-width integers only, so the layout is
//! the same on every 64-bit target we build for (x86_64/aarch64, Linux and macOS); the macOS
//! backend additionally compares these sizes with the `libc` crate's own definitions.
//!
//! Source: xnu `bsd/sys/proc_info.h`, `bsd/sys/proc_info_private.h` (apple-oss-distributions/xnu
//! tag xnu-11417.101.15), `bsd/sys/errno.h`, `bsd/sys/sysctl.h`, `bsd/sys/proc.h`. `libc` has
//! some of these but not `vnode_fdinfowithpath`, `proc_regionwithpathinfo`,
//! `proc_threadwithpathinfo`, nor the flavors that go with them, so we declare the whole set
//! ourselves and keep one source of truth.
#![cfg_attr(not(target_os = "macos"), allow(dead_code))]

/// `MAXPATHLEN` (`PATH_MAX`).
pub(crate) const MAXPATHLEN: usize = 1024;
/// `MAXCOMLEN`.
pub(crate) const MAXCOMLEN: usize = 16;
/// `MAXTHREADNAMESIZE`.
pub(crate) const MAXTHREADNAMESIZE: usize = 64;
/// `PROC_PIDPATHINFO_MAXSIZE` (`4 * MAXPATHLEN`): the largest buffer `proc_pidpath` accepts.
pub(crate) const PROC_PIDPATHINFO_MAXSIZE: usize = 4 * MAXPATHLEN;

// proc_pidinfo flavors (proc_info.h, proc_info_private.h).
pub(crate) const PROC_PIDLISTFDS: i32 = 1;
pub(crate) const PROC_PIDTASKALLINFO: i32 = 2;
pub(crate) const PROC_PIDLISTTHREADS: i32 = 6;
/// Documented; walks every region (vnode-backed or not), about 100x slower than flavor 22.
pub(crate) const PROC_PIDREGIONPATHINFO: i32 = 8;
pub(crate) const PROC_PIDVNODEPATHINFO: i32 = 9;
pub(crate) const PROC_PIDTHREADPATHINFO: i32 = 10;
pub(crate) const PROC_PIDT_SHORTBSDINFO: i32 = 13;
/// Private (`proc_info_private.h`): the next *vnode-backed* region at or after the address.
pub(crate) const PROC_PIDREGIONPATHINFO2: i32 = 22;

// proc_pidfdinfo flavors.
pub(crate) const PROC_PIDFDVNODEPATHINFO: i32 = 2;

/// `proc_fdinfo::proc_fdtype` of a vnode.
pub(crate) const PROX_FDTYPE_VNODE: u32 = 1;
/// `pbi_flags`: some thread has its own working directory (`pthread_chdir_np`).
pub(crate) const PROC_FLAG_THCWD: u32 = 0x100;
/// `p_stat` of a zombie (`bsd/sys/proc.h`).
pub(crate) const SZOMB: u32 = 5;

// sysctl names.
pub(crate) const CTL_KERN: i32 = 1;
pub(crate) const KERN_ARGMAX: i32 = 8;
pub(crate) const KERN_PROCARGS2: i32 = 49;

// Darwin errno values (bsd/sys/errno.h). The low ones equal Linux's, but the pure code must
// not depend on the host's numbering, so they are spelled out.
pub(crate) const EPERM: i32 = 1;
pub(crate) const ENOENT: i32 = 2;
pub(crate) const ESRCH: i32 = 3;
/// Only the tests need it (as an "other" errno).
#[cfg(test)]
pub(crate) const EIO: i32 = 5;
pub(crate) const EBADF: i32 = 9;
pub(crate) const ENOMEM: i32 = 12;
pub(crate) const EACCES: i32 = 13;
pub(crate) const EINVAL: i32 = 22;

/// Types whose every bit pattern is a valid value (only fixed-width integers and arrays of
/// them, `#[repr(C)]`), so the kernel may fill them byte by byte. Sealed: it can only be
/// implemented in this module, and is, only for the mirrors below and `u64`.
pub(crate) trait PlainData: sealed::Sealed + Sized + 'static {}

mod sealed {
    pub trait Sealed {}
}

/// The bytes of a fixed, NUL-terminated C string field, up to the first NUL.
pub(crate) fn c_bytes(field: &[u8]) -> &[u8] {
    match memchr::memchr(0, field) {
        Some(n) => &field[..n],
        None => field,
    }
}

/// `struct vinfo_stat`: a copy of `stat64` with fixed-size fields.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct VinfoStat {
    pub vst_dev: u32,
    pub vst_mode: u16,
    pub vst_nlink: u16,
    pub vst_ino: u64,
    pub vst_uid: u32,
    pub vst_gid: u32,
    pub vst_atime: i64,
    pub vst_atimensec: i64,
    pub vst_mtime: i64,
    pub vst_mtimensec: i64,
    pub vst_ctime: i64,
    pub vst_ctimensec: i64,
    pub vst_birthtime: i64,
    pub vst_birthtimensec: i64,
    /// `off_t`, 64-bit on Darwin.
    pub vst_size: i64,
    pub vst_blocks: i64,
    pub vst_blksize: i32,
    pub vst_flags: u32,
    pub vst_gen: u32,
    pub vst_rdev: u32,
    pub vst_qspare: [i64; 2],
}

impl VinfoStat {
    pub(crate) const ZERO: Self = Self {
        vst_dev: 0,
        vst_mode: 0,
        vst_nlink: 0,
        vst_ino: 0,
        vst_uid: 0,
        vst_gid: 0,
        vst_atime: 0,
        vst_atimensec: 0,
        vst_mtime: 0,
        vst_mtimensec: 0,
        vst_ctime: 0,
        vst_ctimensec: 0,
        vst_birthtime: 0,
        vst_birthtimensec: 0,
        vst_size: 0,
        vst_blocks: 0,
        vst_blksize: 0,
        vst_flags: 0,
        vst_gen: 0,
        vst_rdev: 0,
        vst_qspare: [0; 2],
    };
}

/// `struct vnode_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct VnodeInfo {
    pub vi_stat: VinfoStat,
    pub vi_type: i32,
    pub vi_pad: i32,
    /// `fsid_t` (`int32_t val[2]`).
    pub vi_fsid: [i32; 2],
}

impl VnodeInfo {
    pub(crate) const ZERO: Self = Self { vi_stat: VinfoStat::ZERO, vi_type: 0, vi_pad: 0, vi_fsid: [0; 2] };
}

/// `struct vnode_info_path`: vnode attributes plus the path the kernel rebuilt for it.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct VnodeInfoPath {
    pub vip_vi: VnodeInfo,
    pub vip_path: [u8; MAXPATHLEN],
}

impl VnodeInfoPath {
    pub(crate) const ZERO: Self = Self { vip_vi: VnodeInfo::ZERO, vip_path: [0; MAXPATHLEN] };

    /// The path, without its NUL; empty when the kernel had no vnode to describe.
    pub(crate) fn path(&self) -> &[u8] {
        c_bytes(&self.vip_path)
    }

    pub(crate) fn dev(&self) -> u32 {
        self.vip_vi.vi_stat.vst_dev
    }

    pub(crate) fn ino(&self) -> u64 {
        self.vip_vi.vi_stat.vst_ino
    }

    /// Whether the record describes a vnode at all (unused slots are zero-filled).
    pub(crate) fn is_present(&self) -> bool {
        !self.path().is_empty() || self.dev() != 0 || self.ino() != 0
    }
}

/// `struct proc_vnodepathinfo` (`PROC_PIDVNODEPATHINFO`): cwd and root directory.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct ProcVnodePathInfo {
    pub pvi_cdir: VnodeInfoPath,
    pub pvi_rdir: VnodeInfoPath,
}

impl ProcVnodePathInfo {
    pub(crate) const ZERO: Self = Self { pvi_cdir: VnodeInfoPath::ZERO, pvi_rdir: VnodeInfoPath::ZERO };
}

/// `struct proc_fileinfo`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct ProcFileInfo {
    pub fi_openflags: u32,
    pub fi_status: u32,
    /// `off_t`.
    pub fi_offset: i64,
    pub fi_type: i32,
    pub fi_guardflags: u32,
}

impl ProcFileInfo {
    pub(crate) const ZERO: Self =
        Self { fi_openflags: 0, fi_status: 0, fi_offset: 0, fi_type: 0, fi_guardflags: 0 };
}

/// `struct vnode_fdinfowithpath` (`PROC_PIDFDVNODEPATHINFO`).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct VnodeFdInfoWithPath {
    pub pfi: ProcFileInfo,
    pub pvip: VnodeInfoPath,
}

impl VnodeFdInfoWithPath {
    pub(crate) const ZERO: Self = Self { pfi: ProcFileInfo::ZERO, pvip: VnodeInfoPath::ZERO };
}

/// `struct proc_fdinfo` (one entry of `PROC_PIDLISTFDS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcFdInfo {
    pub proc_fd: i32,
    pub proc_fdtype: u32,
}

impl ProcFdInfo {
    pub(crate) const ZERO: Self = Self { proc_fd: 0, proc_fdtype: 0 };
}

impl Default for ProcFdInfo {
    fn default() -> Self {
        Self::ZERO
    }
}

/// `struct proc_regioninfo`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct ProcRegionInfo {
    pub pri_protection: u32,
    pub pri_max_protection: u32,
    pub pri_inheritance: u32,
    pub pri_flags: u32,
    pub pri_offset: u64,
    pub pri_behavior: u32,
    pub pri_user_wired_count: u32,
    pub pri_user_tag: u32,
    pub pri_pages_resident: u32,
    pub pri_pages_shared_now_private: u32,
    pub pri_pages_swapped_out: u32,
    pub pri_pages_dirtied: u32,
    pub pri_ref_count: u32,
    pub pri_shadow_depth: u32,
    pub pri_share_mode: u32,
    pub pri_private_pages_resident: u32,
    pub pri_shared_pages_resident: u32,
    pub pri_obj_id: u32,
    pub pri_depth: u32,
    pub pri_address: u64,
    pub pri_size: u64,
}

impl ProcRegionInfo {
    pub(crate) const ZERO: Self = Self {
        pri_protection: 0,
        pri_max_protection: 0,
        pri_inheritance: 0,
        pri_flags: 0,
        pri_offset: 0,
        pri_behavior: 0,
        pri_user_wired_count: 0,
        pri_user_tag: 0,
        pri_pages_resident: 0,
        pri_pages_shared_now_private: 0,
        pri_pages_swapped_out: 0,
        pri_pages_dirtied: 0,
        pri_ref_count: 0,
        pri_shadow_depth: 0,
        pri_share_mode: 0,
        pri_private_pages_resident: 0,
        pri_shared_pages_resident: 0,
        pri_obj_id: 0,
        pri_depth: 0,
        pri_address: 0,
        pri_size: 0,
    };
}

/// `struct proc_regionwithpathinfo` (`PROC_PIDREGIONPATHINFO`, `PROC_PIDREGIONPATHINFO2`).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct ProcRegionWithPathInfo {
    pub prp_prinfo: ProcRegionInfo,
    pub prp_vip: VnodeInfoPath,
}

impl ProcRegionWithPathInfo {
    pub(crate) const ZERO: Self = Self { prp_prinfo: ProcRegionInfo::ZERO, prp_vip: VnodeInfoPath::ZERO };
}

/// `struct proc_threadinfo`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct ProcThreadInfo {
    pub pth_user_time: u64,
    pub pth_system_time: u64,
    pub pth_cpu_usage: i32,
    pub pth_policy: i32,
    pub pth_run_state: i32,
    pub pth_flags: i32,
    pub pth_sleep_time: i32,
    pub pth_curpri: i32,
    pub pth_priority: i32,
    pub pth_maxpriority: i32,
    pub pth_name: [u8; MAXTHREADNAMESIZE],
}

impl ProcThreadInfo {
    pub(crate) const ZERO: Self = Self {
        pth_user_time: 0,
        pth_system_time: 0,
        pth_cpu_usage: 0,
        pth_policy: 0,
        pth_run_state: 0,
        pth_flags: 0,
        pth_sleep_time: 0,
        pth_curpri: 0,
        pth_priority: 0,
        pth_maxpriority: 0,
        pth_name: [0; MAXTHREADNAMESIZE],
    };
}

/// `struct proc_threadwithpathinfo` (`PROC_PIDTHREADPATHINFO`): a thread's own cwd.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct ProcThreadWithPathInfo {
    pub pt: ProcThreadInfo,
    pub pvip: VnodeInfoPath,
}

impl ProcThreadWithPathInfo {
    pub(crate) const ZERO: Self = Self { pt: ProcThreadInfo::ZERO, pvip: VnodeInfoPath::ZERO };
}

/// `struct proc_bsdinfo`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct ProcBsdInfo {
    pub pbi_flags: u32,
    pub pbi_status: u32,
    pub pbi_xstatus: u32,
    pub pbi_pid: u32,
    pub pbi_ppid: u32,
    pub pbi_uid: u32,
    pub pbi_gid: u32,
    pub pbi_ruid: u32,
    pub pbi_rgid: u32,
    pub pbi_svuid: u32,
    pub pbi_svgid: u32,
    pub rfu_1: u32,
    pub pbi_comm: [u8; MAXCOMLEN],
    pub pbi_name: [u8; 2 * MAXCOMLEN],
    pub pbi_nfiles: u32,
    pub pbi_pgid: u32,
    pub pbi_pjobc: u32,
    pub e_tdev: u32,
    pub e_tpgid: u32,
    pub pbi_nice: i32,
    pub pbi_start_tvsec: u64,
    pub pbi_start_tvusec: u64,
}

impl ProcBsdInfo {
    pub(crate) const ZERO: Self = Self {
        pbi_flags: 0,
        pbi_status: 0,
        pbi_xstatus: 0,
        pbi_pid: 0,
        pbi_ppid: 0,
        pbi_uid: 0,
        pbi_gid: 0,
        pbi_ruid: 0,
        pbi_rgid: 0,
        pbi_svuid: 0,
        pbi_svgid: 0,
        rfu_1: 0,
        pbi_comm: [0; MAXCOMLEN],
        pbi_name: [0; 2 * MAXCOMLEN],
        pbi_nfiles: 0,
        pbi_pgid: 0,
        pbi_pjobc: 0,
        e_tdev: 0,
        e_tpgid: 0,
        pbi_nice: 0,
        pbi_start_tvsec: 0,
        pbi_start_tvusec: 0,
    };
}

/// `struct proc_taskinfo`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct ProcTaskInfo {
    pub pti_virtual_size: u64,
    pub pti_resident_size: u64,
    pub pti_total_user: u64,
    pub pti_total_system: u64,
    pub pti_threads_user: u64,
    pub pti_threads_system: u64,
    pub pti_policy: i32,
    pub pti_faults: i32,
    pub pti_pageins: i32,
    pub pti_cow_faults: i32,
    pub pti_messages_sent: i32,
    pub pti_messages_received: i32,
    pub pti_syscalls_mach: i32,
    pub pti_syscalls_unix: i32,
    pub pti_csw: i32,
    pub pti_threadnum: i32,
    pub pti_numrunning: i32,
    pub pti_priority: i32,
}

impl ProcTaskInfo {
    pub(crate) const ZERO: Self = Self {
        pti_virtual_size: 0,
        pti_resident_size: 0,
        pti_total_user: 0,
        pti_total_system: 0,
        pti_threads_user: 0,
        pti_threads_system: 0,
        pti_policy: 0,
        pti_faults: 0,
        pti_pageins: 0,
        pti_cow_faults: 0,
        pti_messages_sent: 0,
        pti_messages_received: 0,
        pti_syscalls_mach: 0,
        pti_syscalls_unix: 0,
        pti_csw: 0,
        pti_threadnum: 0,
        pti_numrunning: 0,
        pti_priority: 0,
    };
}

/// `struct proc_taskallinfo` (`PROC_PIDTASKALLINFO`): uid, flags, thread count.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct ProcTaskAllInfo {
    pub pbsd: ProcBsdInfo,
    pub ptinfo: ProcTaskInfo,
}

impl ProcTaskAllInfo {
    pub(crate) const ZERO: Self = Self { pbsd: ProcBsdInfo::ZERO, ptinfo: ProcTaskInfo::ZERO };
}

/// `struct proc_bsdshortinfo` (`PROC_PIDT_SHORTBSDINFO`): readable for any process (no
/// same-user check), so it gives identity and liveness when everything else is denied.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct ProcBsdShortInfo {
    pub pbsi_pid: u32,
    pub pbsi_ppid: u32,
    pub pbsi_pgid: u32,
    pub pbsi_status: u32,
    pub pbsi_comm: [u8; MAXCOMLEN],
    pub pbsi_flags: u32,
    pub pbsi_uid: u32,
    pub pbsi_gid: u32,
    pub pbsi_ruid: u32,
    pub pbsi_rgid: u32,
    pub pbsi_svuid: u32,
    pub pbsi_svgid: u32,
    pub pbsi_rfu: u32,
}

impl ProcBsdShortInfo {
    pub(crate) const ZERO: Self = Self {
        pbsi_pid: 0,
        pbsi_ppid: 0,
        pbsi_pgid: 0,
        pbsi_status: 0,
        pbsi_comm: [0; MAXCOMLEN],
        pbsi_flags: 0,
        pbsi_uid: 0,
        pbsi_gid: 0,
        pbsi_ruid: 0,
        pbsi_rgid: 0,
        pbsi_svuid: 0,
        pbsi_svgid: 0,
        pbsi_rfu: 0,
    };
}

macro_rules! plain_data {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl PlainData for $t {}
    )*};
}

plain_data!(
    ProcVnodePathInfo,
    VnodeFdInfoWithPath,
    ProcFdInfo,
    ProcRegionWithPathInfo,
    ProcThreadWithPathInfo,
    ProcTaskAllInfo,
    ProcBsdShortInfo,
    u64
);

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    /// Sizes computed by hand from the C declarations (natural alignment, LP64), so this test
    /// checks the Rust mirrors against the header rather than against themselves. The
    /// `*_SIZE` macros of `proc_info.h` are `sizeof` of these structs; the kernel rejects a
    /// buffer smaller than them with ENOMEM.
    #[test]
    fn sizes_match_xnu_headers() {
        assert_eq!(size_of::<VinfoStat>(), 136);
        assert_eq!(size_of::<VnodeInfo>(), 152);
        assert_eq!(size_of::<VnodeInfoPath>(), 152 + MAXPATHLEN);
        assert_eq!(size_of::<ProcVnodePathInfo>(), 2352);
        assert_eq!(size_of::<ProcFileInfo>(), 24);
        assert_eq!(size_of::<VnodeFdInfoWithPath>(), 1200);
        assert_eq!(size_of::<ProcFdInfo>(), 8);
        assert_eq!(size_of::<ProcRegionInfo>(), 96);
        assert_eq!(size_of::<ProcRegionWithPathInfo>(), 1272);
        assert_eq!(size_of::<ProcThreadInfo>(), 112);
        assert_eq!(size_of::<ProcThreadWithPathInfo>(), 1288);
        assert_eq!(size_of::<ProcBsdInfo>(), 136);
        assert_eq!(size_of::<ProcTaskInfo>(), 96);
        assert_eq!(size_of::<ProcTaskAllInfo>(), 232);
        assert_eq!(size_of::<ProcBsdShortInfo>(), 64);
    }

    #[test]
    fn offsets_match_xnu_headers() {
        assert_eq!(offset_of!(VinfoStat, vst_ino), 8);
        assert_eq!(offset_of!(VinfoStat, vst_size), 88);
        assert_eq!(offset_of!(VinfoStat, vst_qspare), 120);
        assert_eq!(offset_of!(VnodeInfo, vi_fsid), 144);
        assert_eq!(offset_of!(VnodeInfoPath, vip_path), 152);
        assert_eq!(offset_of!(ProcVnodePathInfo, pvi_rdir), 1176);
        assert_eq!(offset_of!(ProcFileInfo, fi_offset), 8);
        assert_eq!(offset_of!(VnodeFdInfoWithPath, pvip), 24);
        assert_eq!(offset_of!(ProcRegionInfo, pri_offset), 16);
        assert_eq!(offset_of!(ProcRegionInfo, pri_address), 80);
        assert_eq!(offset_of!(ProcRegionInfo, pri_size), 88);
        assert_eq!(offset_of!(ProcRegionWithPathInfo, prp_vip), 96);
        assert_eq!(offset_of!(ProcThreadInfo, pth_name), 48);
        assert_eq!(offset_of!(ProcThreadWithPathInfo, pvip), 112);
        assert_eq!(offset_of!(ProcBsdInfo, pbi_ruid), 28);
        assert_eq!(offset_of!(ProcBsdInfo, pbi_comm), 48);
        assert_eq!(offset_of!(ProcBsdInfo, pbi_nfiles), 96);
        assert_eq!(offset_of!(ProcBsdInfo, pbi_start_tvsec), 120);
        assert_eq!(offset_of!(ProcTaskInfo, pti_threadnum), 84);
        assert_eq!(offset_of!(ProcTaskAllInfo, ptinfo), 136);
        assert_eq!(offset_of!(ProcBsdShortInfo, pbsi_comm), 16);
        assert_eq!(offset_of!(ProcBsdShortInfo, pbsi_ruid), 44);
        assert_eq!(align_of::<VnodeInfoPath>(), 8);
    }

    #[test]
    fn c_bytes_stops_at_nul() {
        assert_eq!(c_bytes(b"abc\0def"), b"abc");
        assert_eq!(c_bytes(b"abc"), b"abc");
        assert_eq!(c_bytes(b"\0abc"), b"");
        let mut v = VnodeInfoPath::ZERO;
        assert!(!v.is_present());
        v.vip_path[..4].copy_from_slice(b"/tmp");
        assert_eq!(v.path(), b"/tmp");
        assert!(v.is_present());
    }
}
