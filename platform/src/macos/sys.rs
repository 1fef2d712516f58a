//! The only `unsafe` of the crate: thin, safe wrappers around `libproc` (`proc_listallpids`,
//! `proc_pidinfo`, `proc_pidfdinfo`, `proc_pidpath`) and `sysctl`, called through the `libc`
//! crate. Each returns the Darwin errno on failure so the caller can classify it; nothing here
//! decides what an error means (that is `crate::darwin_logic`).
//!
//! Why not the `libproc` crate: its `pidpath`/`pidinfo`/`listpidinfo` return `Result<_, String>`
//! (errno is lost, so "gone" cannot be told from "denied"), `pidpath` fails on non-UTF-8
//! paths, and its pid listing cannot tell a truncated list from a complete one. The libproc
//! wrappers in libSystem all share one convention, which these functions handle once: they
//! return 0 on failure with `errno` set, and 0 with `errno` untouched when there was simply
//! nothing to return (the "0 fds" quirk Lix works around, FB14695751). So `errno` is cleared
//! before every call.
#![allow(unsafe_code)]

use crate::darwin_abi::{PlainData, CTL_KERN, ENOMEM, KERN_ARGMAX, KERN_PROCARGS2, PROC_PIDPATHINFO_MAXSIZE};
use crate::darwin_logic::{
    list_step, procargs_initial_len, procargs_step, ListStep, E_SHORT_REPLY, E_TOO_LARGE,
};
use libc::{c_int, c_uint, c_void};
use std::mem::size_of;
use std::ptr;

/// The calling thread's errno.
pub(super) fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn clear_errno() {
    // SAFETY: `__error()` returns a valid pointer to the calling thread's errno.
    unsafe { *libc::__error() = 0 };
}

/// errno after a failed call; never 0, so a failure is never mistaken for success.
fn failure() -> i32 {
    match errno() {
        0 => E_SHORT_REPLY,
        e => e,
    }
}

pub(super) fn geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Byte length of `n` items of `T` as the `c_int` the libproc calls take. Callers cap `n`
/// (`MAX_*` in `macos/mod.rs`) far below `c_int::MAX / size_of::<T>()`.
fn byte_len<T>(n: usize) -> c_int {
    c_int::try_from(n.saturating_mul(size_of::<T>())).unwrap_or(c_int::MAX)
}

/// `proc_pidinfo` for a flavor that returns one fixed-size structure.
pub(super) fn pidinfo<T: PlainData>(pid: i32, flavor: i32, arg: u64, out: &mut T) -> Result<(), i32> {
    let size = size_of::<T>();
    clear_errno();
    // SAFETY: `out` is an exclusively borrowed, initialized `T` of `size` bytes and we pass
    // that size, so the kernel writes at most `size` bytes into it; `T: PlainData` (integers
    // only, `#[repr(C)]`) makes any bytes written a valid `T`.
    let ret =
        unsafe { libc::proc_pidinfo(pid, flavor, arg, (out as *mut T).cast::<c_void>(), byte_len::<T>(1)) };
    match usize::try_from(ret) {
        Ok(n) if n == size => Ok(()),
        Ok(0) | Err(_) => Err(failure()),
        Ok(_) => Err(E_SHORT_REPLY),
    }
}

/// `proc_pidinfo(pid, flavor, 0, NULL, 0)`: the kernel's size hint in bytes for a list
/// flavor (`PROC_PIDLISTFDS` answers `(table size + 20) * sizeof(proc_fdinfo)`).
pub(super) fn list_hint(pid: i32, flavor: i32) -> Result<usize, i32> {
    clear_errno();
    // SAFETY: a NULL buffer with size 0 is the documented size query; nothing is written.
    let ret = unsafe { libc::proc_pidinfo(pid, flavor, 0, ptr::null_mut(), 0) };
    match usize::try_from(ret) {
        Ok(0) => match errno() {
            0 => Ok(0),
            e => Err(e),
        },
        Ok(n) => Ok(n),
        Err(_) => Err(failure()),
    }
}

/// `proc_pidinfo` for a list flavor (`PROC_PIDLISTFDS`, `PROC_PIDLISTTHREADS`): fill `out`,
/// growing the buffer while the kernel fills it completely (it truncates silently).
pub(super) fn pidinfo_list<T: PlainData + Copy + Default>(
    pid: i32,
    flavor: i32,
    out: &mut Vec<T>,
    start_capacity: usize,
    max_capacity: usize,
) -> Result<(), i32> {
    let mut capacity = start_capacity.clamp(1, max_capacity);
    loop {
        out.clear();
        out.resize(capacity, T::default());
        clear_errno();
        // SAFETY: `out` holds `capacity` initialized `T`s, exactly the byte length passed,
        // so the kernel writes inside the allocation; `T: PlainData` makes the bytes valid.
        let ret = unsafe {
            libc::proc_pidinfo(pid, flavor, 0, out.as_mut_ptr().cast::<c_void>(), byte_len::<T>(capacity))
        };
        let bytes = match usize::try_from(ret) {
            // 0 with errno untouched: an empty list, not an error.
            Ok(0) => match errno() {
                0 => {
                    out.clear();
                    return Ok(());
                }
                e => return Err(e),
            },
            Ok(n) => n,
            Err(_) => return Err(failure()),
        };
        match list_step(bytes / size_of::<T>(), capacity, max_capacity) {
            ListStep::Complete(n) => {
                out.truncate(n);
                return Ok(());
            }
            ListStep::Grow(c) => capacity = c,
            ListStep::TooLarge => return Err(E_TOO_LARGE),
        }
    }
}

/// `proc_pidfdinfo` for a flavor that returns one fixed-size structure.
pub(super) fn pidfdinfo<T: PlainData>(pid: i32, fd: i32, flavor: i32, out: &mut T) -> Result<(), i32> {
    let size = size_of::<T>();
    clear_errno();
    // SAFETY: as in `pidinfo`: `out` is an exclusively borrowed `T` of the size passed, and
    // any bytes are a valid `T`.
    let ret =
        unsafe { libc::proc_pidfdinfo(pid, fd, flavor, (out as *mut T).cast::<c_void>(), byte_len::<T>(1)) };
    match usize::try_from(ret) {
        Ok(n) if n == size => Ok(()),
        Ok(0) | Err(_) => Err(failure()),
        Ok(_) => Err(E_SHORT_REPLY),
    }
}

/// `proc_pidpath`: the executable's path as raw bytes (empty when the kernel has none).
pub(super) fn pidpath(pid: i32, buf: &mut [u8; PROC_PIDPATHINFO_MAXSIZE]) -> Result<&[u8], i32> {
    clear_errno();
    // SAFETY: `buf` is PROC_PIDPATHINFO_MAXSIZE writable bytes, the largest size the call
    // accepts (it rejects sizes outside [MAXPATHLEN, 4 * MAXPATHLEN]), and we pass that size.
    let ret = unsafe {
        libc::proc_pidpath(pid, buf.as_mut_ptr().cast::<c_void>(), PROC_PIDPATHINFO_MAXSIZE as u32)
    };
    if ret > 0 {
        // The kernel copies out a zero-filled, NUL-terminated buffer; `ret` is its strlen.
        Ok(crate::darwin_abi::c_bytes(&buf[..]))
    } else {
        match errno() {
            0 => Ok(&[]),
            e => Err(e),
        }
    }
}

/// Every pid (`proc_listallpids`), retried larger while the kernel fills the buffer:
/// `proc_listpids` walks `allproc` newest first, so a cut list would silently lose the
/// *oldest* processes.
pub(super) fn list_pids(out: &mut Vec<i32>, max_pids: usize) -> Result<(), i32> {
    clear_errno();
    // SAFETY: a NULL buffer with size 0 asks for the count (nprocs + 20); nothing is written.
    let hint = unsafe { libc::proc_listallpids(ptr::null_mut(), 0) };
    let hint = match usize::try_from(hint) {
        Ok(n) if n > 0 => n,
        _ => return Err(failure()),
    };
    let mut capacity = hint.saturating_add(64).min(max_pids);
    loop {
        out.clear();
        out.resize(capacity, 0);
        clear_errno();
        // SAFETY: `out` holds `capacity` initialized `i32`s, exactly the byte length passed.
        let n =
            unsafe { libc::proc_listallpids(out.as_mut_ptr().cast::<c_void>(), byte_len::<i32>(capacity)) };
        // Returns a count of pids, 0 on error (we always exist, so 0 is never a real answer).
        let n = match usize::try_from(n) {
            Ok(n) if n > 0 => n,
            _ => return Err(failure()),
        };
        match list_step(n, capacity, max_pids) {
            ListStep::Complete(n) => {
                out.truncate(n);
                return Ok(());
            }
            ListStep::Grow(c) => capacity = c,
            ListStep::TooLarge => return Err(E_TOO_LARGE),
        }
    }
}

/// `kern.argmax`: the largest `KERN_PROCARGS2` buffer the kernel accepts.
pub(super) fn argmax() -> Option<usize> {
    let mut mib: [c_int; 2] = [CTL_KERN, KERN_ARGMAX];
    let mut value: c_int = 0;
    let mut len: libc::size_t = size_of::<c_int>();
    // SAFETY: `mib` is 2 valid ints; `value`/`len` describe a writable c_int; no new value.
    let r = unsafe {
        libc::sysctl(
            mib.as_mut_ptr(),
            mib.len() as c_uint,
            (&mut value as *mut c_int).cast::<c_void>(),
            &mut len,
            ptr::null_mut(),
            0,
        )
    };
    if r == 0 && len == size_of::<c_int>() {
        usize::try_from(value).ok().filter(|&v| v > 0)
    } else {
        None
    }
}

/// `sysctl({CTL_KERN, KERN_PROCARGS2, pid})` into `buf`: size query with a NULL buffer first,
/// then reads until the answer is shorter than the buffer (a full buffer may hold only the
/// *tail* of the argument area, see `darwin_logic::procargs_step`). Returns the byte count;
/// `buf` is truncated to it.
pub(super) fn procargs(pid: i32, buf: &mut Vec<u8>, cap: usize) -> Result<usize, i32> {
    let mut mib: [c_int; 3] = [CTL_KERN, KERN_PROCARGS2, pid];
    let mut hint: libc::size_t = 0;
    // SAFETY: `mib` is 3 valid ints; a NULL `oldp` with a valid `oldlenp` is the size query,
    // nothing but `hint` is written; no new value.
    let r = unsafe {
        libc::sysctl(mib.as_mut_ptr(), mib.len() as c_uint, ptr::null_mut(), &mut hint, ptr::null_mut(), 0)
    };
    if r != 0 {
        return Err(failure());
    }
    let mut len = procargs_initial_len(hint, cap);
    loop {
        buf.clear();
        buf.resize(len, 0);
        let mut got: libc::size_t = len;
        // SAFETY: `buf` has `len` initialized, writable bytes and `got` tells the kernel so;
        // it writes at most that many and stores the count back in `got`.
        let r = unsafe {
            libc::sysctl(
                mib.as_mut_ptr(),
                mib.len() as c_uint,
                buf.as_mut_ptr().cast::<c_void>(),
                &mut got,
                ptr::null_mut(),
                0,
            )
        };
        if r != 0 {
            let e = failure();
            if e == ENOMEM && len < cap {
                len = len.saturating_mul(2).min(cap);
                continue;
            }
            return Err(e);
        }
        match procargs_step(len, got, cap) {
            ListStep::Complete(n) => {
                buf.truncate(n);
                return Ok(n);
            }
            ListStep::Grow(n) => len = n,
            ListStep::TooLarge => return Err(E_TOO_LARGE),
        }
    }
}
