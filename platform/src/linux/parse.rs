//! Pure parsers for the `/proc` text formats the Linux backend reads: `stat`, `status`, `maps`,
//! NUL-separated `cmdline`/`environ` blocks, `/proc/locks` and `mountinfo`.
//!
//! Everything here works on raw bytes and never panics: paths are not UTF-8 in general, and a
//! parse failure must never turn into "this process uses nothing". Functions return `None` for
//! input they cannot read so the caller can decide to be conservative.

use crate::{Device, FileLock};
use memchr::{memchr, memmem, memrchr};

/// `PF_KTHREAD` in the `flags` field of `/proc/PID/stat` (include/linux/sched.h).
pub(crate) const PF_KTHREAD: u64 = 0x0020_0000;

/// The fields of `/proc/PID/stat` the scan needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StatInfo {
    /// `comm`, raw bytes (it may contain spaces, parentheses and non-UTF-8).
    pub comm: Vec<u8>,
    /// One-letter state (`R`, `S`, `Z`, ...).
    pub state: u8,
    pub ppid: u32,
    pub flags: u64,
    pub num_threads: u64,
}

impl StatInfo {
    pub(crate) fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }

    /// Zombie or dead: the kernel has released files and cwd already. A zombie *leader* may
    /// still have live threads; the caller checks `task/` for that.
    pub(crate) fn is_zombie(&self) -> bool {
        matches!(self.state, b'Z' | b'X' | b'x')
    }
}

/// Parses `/proc/PID/stat`. `comm` is everything between the first `(` and the *last* `)`,
/// because the command name itself may contain `)` and spaces.
pub(crate) fn parse_stat(buf: &[u8]) -> Option<StatInfo> {
    let open = memchr(b'(', buf)?;
    let close = memrchr(b')', buf)?;
    if close <= open {
        return None;
    }
    let comm = buf.get(open + 1..close)?.to_vec();
    let rest = buf.get(close + 1..)?;
    let mut fields = rest.split(|b| *b == b' ' || *b == b'\n').filter(|f| !f.is_empty());
    // Field numbers as in proc(5): 3 state, 4 ppid, 9 flags, 20 num_threads.
    let state = *fields.next()?.first()?;
    let ppid = u32::try_from(parse_dec(fields.next()?)?).ok()?;
    let flags = parse_dec(fields.nth(4)?)?;
    let num_threads = parse_dec(fields.nth(10)?)?;
    Some(StatInfo { comm, state, ppid, flags, num_threads })
}

/// The real uid from `/proc/PID/status` (`Uid:\treal\teffective\tsaved\tfs`).
pub(crate) fn parse_status_uid(buf: &[u8]) -> Option<u32> {
    for line in buf.split(|b| *b == b'\n') {
        if let Some(rest) = line.strip_prefix(b"Uid:") {
            let real = rest.split(|b| *b == b'\t' || *b == b' ').find(|f| !f.is_empty())?;
            return u32::try_from(parse_dec(real)?).ok();
        }
    }
    None
}

/// Unsigned decimal, no sign, no spaces; `None` on anything else or on overflow.
pub(crate) fn parse_dec(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

/// Unsigned hexadecimal (as in `maj:min` columns); `None` on anything else or on overflow.
fn parse_hex(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return None,
        };
        v = (v << 4) | u64::from(d);
    }
    Some(v)
}

/// `maj:min` in hex, as `maps` and `/proc/locks` print a device.
pub(crate) fn parse_dev_hex(s: &[u8]) -> Option<Device> {
    let colon = memchr(b':', s)?;
    let major = u32::try_from(parse_hex(s.get(..colon)?)?).ok()?;
    let minor = u32::try_from(parse_hex(s.get(colon + 1..)?)?).ok()?;
    Some(Device { major, minor })
}

/// The kernel appends this to `d_path` output for unlinked files.
const DELETED: &[u8] = b" (deleted)";

/// Strips one trailing ` (deleted)`. A file really named `x (deleted)` loses its suffix too,
/// which is harmless: it is still inside the same cache entry.
pub(crate) fn strip_deleted(p: &[u8]) -> &[u8] {
    p.strip_suffix(DELETED).unwrap_or(p)
}

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MapsLine<'a> {
    /// `start-end`, hex.
    pub range: &'a [u8],
    /// `None` when the column is not a readable `maj:min` (the path is still usable).
    pub dev: Option<Device>,
    pub inode: Option<u64>,
    /// The pathname column as printed: `\012`-escaped, maybe with ` (deleted)`, maybe empty
    /// (anonymous mapping) or a pseudo name (`[heap]`, `anon_inode:...`).
    pub path: &'a [u8],
}

/// Splits one maps line (without its `\n`): five space-separated fields, then everything after
/// the padding spaces is the pathname, spaces and non-UTF-8 bytes included. `None` when the
/// line has fewer than five fields.
pub(crate) fn parse_maps_line(line: &[u8]) -> Option<MapsLine<'_>> {
    let mut fields: [&[u8]; 5] = [&[]; 5];
    let mut i = 0;
    for field in fields.iter_mut() {
        while line.get(i) == Some(&b' ') {
            i += 1;
        }
        let start = i;
        while matches!(line.get(i), Some(b) if *b != b' ') {
            i += 1;
        }
        if start == i {
            return None;
        }
        *field = line.get(start..i)?;
    }
    // d_path output always starts with '/' or a pseudo-name, never with a space, so trimming
    // the padding is lossless. Trailing spaces belong to the name and are kept.
    while line.get(i) == Some(&b' ') {
        i += 1;
    }
    let path = line.get(i..).unwrap_or(&[]);
    let [range, _perms, _offset, dev, inode] = fields;
    Some(MapsLine { range, dev: parse_dev_hex(dev), inode: parse_dec(inode), path })
}

/// Undoes maps' only escape: the kernel prints a newline in a path as `\012`
/// (`seq_file_path(m, file, "\n")`). Writes the result to `out` (cleared first).
pub(crate) fn unescape_maps_path(path: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let mut rest = path;
    while let Some(pos) = memmem::find(rest, b"\\012") {
        out.extend_from_slice(rest.get(..pos).unwrap_or(&[]));
        out.push(b'\n');
        rest = rest.get(pos + 4..).unwrap_or(&[]);
    }
    out.extend_from_slice(rest);
}

/// Splits a NUL-separated block (`cmdline`, `environ`) into its strings. The terminating NUL
/// of the last string is not an extra empty string, but every other empty string is kept:
/// `a\0\0b\0` is `["a", "", "b"]` (dropping empty arguments shifts `argv[i]` and was a real
/// bug in Lix). A block without a final NUL (rewritten by setproctitle) keeps its last part.
pub(crate) fn split_nul(blob: &[u8]) -> impl Iterator<Item = &[u8]> {
    let body = match blob.split_last() {
        None => None,
        Some((0, head)) => Some(head),
        Some(_) => Some(blob),
    };
    body.into_iter().flat_map(|b| b.split(|c| *c == 0))
}

/// The base name of `argv[0]`: the bytes after its last `/`.
pub(crate) fn argv0_base(argv0: &[u8]) -> &[u8] {
    match memrchr(b'/', argv0) {
        Some(i) => argv0.get(i + 1..).unwrap_or(&[]),
        None => argv0,
    }
}

/// Parses the kernel lock table (`/proc/locks`). Lines of blocked waiters (`->`) are skipped,
/// as are lease and delegation lines; unreadable lines are skipped one by one.
pub(crate) fn parse_locks(text: &[u8]) -> Vec<FileLock> {
    text.split(|b| *b == b'\n').filter_map(parse_lock_line).collect()
}

fn parse_lock_line(line: &[u8]) -> Option<FileLock> {
    let mut tok = line.split(|b| *b == b' ' || *b == b'\t').filter(|t| !t.is_empty());
    let _ordinal = tok.next()?;
    let kind = match tok.next()? {
        b"FLOCK" => "flock",
        b"POSIX" => "posix",
        b"OFDLCK" => "ofd",
        _ => return None, // "->" waiter, LEASE, DELEG, ...
    };
    let _advisory = tok.next()?;
    let exclusive = match tok.next()? {
        b"WRITE" => true,
        b"READ" => false,
        _ => return None,
    };
    // Some kernels print -1 for OFD locks, which have no owning pid: keep the lock (it still
    // says the file is in use) with pid 0.
    let pid_tok = tok.next()?;
    let pid = if pid_tok.first() == Some(&b'-') {
        parse_dec(pid_tok.get(1..)?)?;
        0
    } else {
        u32::try_from(parse_dec(pid_tok)?).ok()?
    };
    let id = tok.next()?;
    let last = memrchr(b':', id)?;
    let device = parse_dev_hex(id.get(..last)?)?;
    let inode = parse_dec(id.get(last + 1..)?)?;
    Some(FileLock { pid, kind: kind.to_string(), exclusive, device, inode })
}

/// Looks at the procfs mounted at `mountpoint` (the last mountinfo line for it wins, as later
/// mounts cover earlier ones) and describes how `hidepid` hides processes, if it does.
/// `subset=pid` alone hides no process, so it is not reported.
pub(crate) fn hidepid_from_mountinfo(text: &[u8], mountpoint: &[u8]) -> Option<String> {
    let mut found: Option<(&[u8], &[u8], &[u8])> = None;
    for line in text.split(|b| *b == b'\n') {
        let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
        let (Some(mp), Some(opts)) = (fields.get(4), fields.get(5)) else {
            continue;
        };
        if crate::mountinfo::unescape(mp) != mountpoint {
            continue;
        }
        let Some(sep) = fields.iter().position(|f| *f == b"-") else {
            continue;
        };
        let fstype = fields.get(sep + 1).copied().unwrap_or(b"");
        let super_opts = fields.get(sep + 3).copied().unwrap_or(b"");
        found = Some((fstype, opts, super_opts));
    }
    let (fstype, opts, super_opts) = found?;
    if fstype != b"proc" {
        return None;
    }
    let value = super_opts
        .split(|b| *b == b',')
        .chain(opts.split(|b| *b == b','))
        .find_map(|o| o.strip_prefix(b"hidepid="))?;
    let what = match value {
        b"0" | b"off" => return None,
        b"1" | b"noaccess" => "other users' processes cannot be read",
        b"2" | b"invisible" => "other users' processes are hidden",
        b"4" | b"ptraceable" => "processes we may not trace are hidden",
        _ => "some processes may be hidden",
    };
    Some(format!(
        "{} is mounted with hidepid={}: {what}",
        String::from_utf8_lossy(mountpoint),
        String::from_utf8_lossy(value)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(major: u32, minor: u32) -> Device {
        Device { major, minor }
    }

    #[test]
    fn stat_plain() {
        let s = b"1234 (sleep) S 1 1234 1234 0 -1 4194304 100 0 0 0 0 0 0 0 20 0 1 0 5000 \
                  8192 100 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        let st = parse_stat(s).unwrap();
        assert_eq!(st.comm, b"sleep");
        assert_eq!(st.state, b'S');
        assert_eq!(st.ppid, 1);
        assert_eq!(st.flags, 4194304);
        assert_eq!(st.num_threads, 1);
        assert!(!st.is_kernel_thread());
        assert!(!st.is_zombie());
    }

    #[test]
    fn stat_comm_with_spaces_and_parens() {
        let s = b"77 (a) b (c)) Z 5 0 0 0 -1 4227084 0 0 0 0 0 0 0 0 20 0 3 0 1 0 0\n";
        let st = parse_stat(s).unwrap();
        assert_eq!(st.comm, b"a) b (c)");
        assert_eq!(st.state, b'Z');
        assert_eq!(st.ppid, 5);
        assert_eq!(st.num_threads, 3);
        assert!(st.is_zombie());
    }

    #[test]
    fn stat_kernel_thread_and_non_utf8_comm() {
        let s = b"2 (kthr\xffeadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 1 0 0\n";
        let st = parse_stat(s).unwrap();
        assert_eq!(st.comm, b"kthr\xffeadd");
        assert!(st.is_kernel_thread());
    }

    #[test]
    fn stat_garbage_is_none() {
        for s in [
            &b""[..],
            b"12",
            b"12 (x",
            b"12 x) (",
            b"12 (x) S",
            b"12 (x) S notanumber 1 1 0 -1 1 0 0 0 0 0 0 0 0 20 0 1",
            b"12 (x) S 1 1 1 0 -1 1 0 0 0",
            b"12 (x) S 99999999999 1 1 0 -1 1 0 0 0 0 0 0 0 0 20 0 1 0",
        ] {
            assert_eq!(parse_stat(s), None, "{:?}", String::from_utf8_lossy(s));
        }
    }

    #[test]
    fn status_uid() {
        let s = b"Name:\tsleep\nState:\tS (sleeping)\nUid:\t1000\t0\t0\t0\nGid:\t5\t5\t5\t5\n";
        assert_eq!(parse_status_uid(s), Some(1000));
        assert_eq!(parse_status_uid(b"Name:\tx\n"), None);
        assert_eq!(parse_status_uid(b"Uid:\t\n"), None);
        assert_eq!(parse_status_uid(b"Uid:\tabc\n"), None);
    }

    #[test]
    fn maps_file_line() {
        let l = b"7f3a1c000000-7f3a1c021000 r--p 00000000 fe:01 1234567                    /usr/lib/x86_64-linux-gnu/libc.so.6";
        let m = parse_maps_line(l).unwrap();
        assert_eq!(m.range, b"7f3a1c000000-7f3a1c021000");
        assert_eq!(m.dev, Some(dev(0xfe, 1)));
        assert_eq!(m.inode, Some(1234567));
        assert_eq!(m.path, b"/usr/lib/x86_64-linux-gnu/libc.so.6");
    }

    #[test]
    fn maps_spaces_newline_deleted_non_utf8() {
        let l = b"7f00-7f01 r--s 00000000 00:2a 42    /cache/has space/new\\012line.bin (deleted)";
        let m = parse_maps_line(l).unwrap();
        assert_eq!(m.dev, Some(dev(0, 0x2a)));
        assert_eq!(m.path, b"/cache/has space/new\\012line.bin (deleted)");
        let mut out = Vec::new();
        unescape_maps_path(m.path, &mut out);
        assert_eq!(strip_deleted(&out), b"/cache/has space/new\nline.bin");

        let l = b"7f00-7f01 r--p 00000000 103:1a3 9 /cache/x\xff\xfe y ";
        let m = parse_maps_line(l).unwrap();
        assert_eq!(m.dev, Some(dev(0x103, 0x1a3)));
        // A trailing space is part of the name.
        assert_eq!(m.path, b"/cache/x\xff\xfe y ");
    }

    #[test]
    fn maps_pseudo_and_anonymous() {
        let heap =
            parse_maps_line(b"55d0-55d1 rw-p 00000000 00:00 0                          [heap]").unwrap();
        assert_eq!(heap.path, b"[heap]");
        assert_eq!(heap.inode, Some(0));
        let vdso = parse_maps_line(b"7ffc-7ffd r-xp 00000000 00:00 0  [vdso]").unwrap();
        assert_eq!(vdso.path, b"[vdso]");
        let anon = parse_maps_line(b"7f00-7f01 rw-p 00000000 00:00 0 ").unwrap();
        assert_eq!(anon.path, b"");
        let anon2 = parse_maps_line(b"7f00-7f01 rw-p 00000000 00:00 0").unwrap();
        assert_eq!(anon2.path, b"");
        let memfd = parse_maps_line(b"7f00-7f01 rw-s 00000000 00:01 2049 /memfd:x (deleted)").unwrap();
        assert_eq!(strip_deleted(memfd.path), b"/memfd:x");
        let ev = parse_maps_line(b"7f00-7f01 rw-p 00000000 00:0e 17 anon_inode:[eventfd]").unwrap();
        assert_eq!(ev.path, b"anon_inode:[eventfd]");
    }

    #[test]
    fn maps_bad_columns_keep_the_path() {
        assert_eq!(parse_maps_line(b""), None);
        assert_eq!(parse_maps_line(b"7f00-7f01 r--p 0 fe:01"), None);
        let m = parse_maps_line(b"7f00-7f01 r--p 0 zz:01 notnum /cache/a").unwrap();
        assert_eq!(m.dev, None);
        assert_eq!(m.inode, None);
        assert_eq!(m.path, b"/cache/a");
    }

    #[test]
    fn unescape_variants() {
        let mut out = Vec::new();
        unescape_maps_path(b"\\012\\012a\\01", &mut out);
        assert_eq!(out, b"\n\na\\01");
        unescape_maps_path(b"", &mut out);
        assert_eq!(out, b"");
        assert_eq!(strip_deleted(b"/x (deleted) (deleted)"), b"/x (deleted)");
        assert_eq!(strip_deleted(b" (deleted)"), b"");
    }

    #[test]
    fn nul_blocks_keep_empty_strings() {
        let v: Vec<&[u8]> = split_nul(b"python\0\0-c\0\0").collect();
        assert_eq!(v, vec![&b"python"[..], b"", b"-c", b""]);
        let v: Vec<&[u8]> = split_nul(b"\0").collect();
        assert_eq!(v, vec![&b""[..]]);
        assert_eq!(split_nul(b"").count(), 0);
        // setproctitle-style: no final NUL.
        let v: Vec<&[u8]> = split_nul(b"nginx: worker").collect();
        assert_eq!(v, vec![&b"nginx: worker"[..]]);
        let env: Vec<&[u8]> = split_nul(b"PATH=/a:/b\0NOEQUALS\0EMPTY=\0").collect();
        assert_eq!(env, vec![&b"PATH=/a:/b"[..], b"NOEQUALS", b"EMPTY="]);
    }

    #[test]
    fn argv0_base_names() {
        assert_eq!(argv0_base(b"/usr/bin/uv"), b"uv");
        assert_eq!(argv0_base(b"uvx"), b"uvx");
        assert_eq!(argv0_base(b"/trailing/"), b"");
        assert_eq!(argv0_base(b""), b"");
    }

    #[test]
    fn locks_table() {
        let t = b"1: FLOCK  ADVISORY  READ 29112 fe:00:1234 0 EOF\n\
                  1: -> FLOCK  ADVISORY  WRITE 29113 fe:00:1234 0 EOF\n\
                  2: POSIX  ADVISORY  WRITE 123 08:01:55 0 EOF\n\
                  3: OFDLCK ADVISORY  READ -1 00:1f:99 0 100\n\
                  4: LEASE  ACTIVE    READ 77 08:01:56 0 EOF\n\
                  5: DELEG  ACTIVE    READ 77 08:01:57 0 EOF\n\
                  6: POSIX  ADVISORY  WRITE 1 103:1a3:7 0 EOF\n\
                  garbage\n\
                  7: POSIX ADVISORY WRITE x 08:01:1 0 EOF\n\n";
        let l = parse_locks(t);
        assert_eq!(
            l,
            vec![
                FileLock {
                    pid: 29112,
                    kind: "flock".into(),
                    exclusive: false,
                    device: dev(0xfe, 0),
                    inode: 1234
                },
                FileLock { pid: 123, kind: "posix".into(), exclusive: true, device: dev(8, 1), inode: 55 },
                FileLock { pid: 0, kind: "ofd".into(), exclusive: false, device: dev(0, 0x1f), inode: 99 },
                FileLock {
                    pid: 1,
                    kind: "posix".into(),
                    exclusive: true,
                    device: dev(0x103, 0x1a3),
                    inode: 7
                },
            ]
        );
    }

    #[test]
    fn mountinfo_hidepid() {
        let mi = b"22 27 0:21 / /proc rw,relatime - proc proc rw,hidepid=invisible\n\
                   23 27 0:22 / /sys rw - sysfs sysfs rw\n";
        let h = hidepid_from_mountinfo(mi, b"/proc").unwrap();
        assert!(h.contains("hidepid=invisible"), "{h}");
        assert!(h.contains("hidden"), "{h}");
        assert_eq!(hidepid_from_mountinfo(mi, b"/sys"), None);

        let mi = b"22 27 0:21 / /proc rw,relatime shared:12 - proc proc rw,hidepid=2,gid=5\n";
        assert!(hidepid_from_mountinfo(mi, b"/proc").unwrap().contains("hidepid=2"));
        let mi = b"22 27 0:21 / /proc rw - proc proc rw,hidepid=noaccess\n";
        assert!(hidepid_from_mountinfo(mi, b"/proc").unwrap().contains("cannot be read"));
        // hidepid=0, absent, or only subset=pid: nothing is hidden.
        let mi = b"22 27 0:21 / /proc rw - proc proc rw,hidepid=0\n";
        assert_eq!(hidepid_from_mountinfo(mi, b"/proc"), None);
        let mi = b"22 27 0:21 / /proc rw,relatime - proc proc rw\n";
        assert_eq!(hidepid_from_mountinfo(mi, b"/proc"), None);
        let mi = b"22 27 0:21 / /proc rw - proc proc rw,subset=pid\n";
        assert_eq!(hidepid_from_mountinfo(mi, b"/proc"), None);
        // The last mount on a mount point covers the earlier ones.
        let mi = b"22 27 0:21 / /proc rw - proc proc rw,hidepid=2\n\
                   90 22 0:55 / /proc rw - proc proc rw\n";
        assert_eq!(hidepid_from_mountinfo(mi, b"/proc"), None);
        // Escaped mount point.
        let mi = b"30 27 0:60 / /my\\040proc rw - proc proc rw,hidepid=1\n";
        assert!(hidepid_from_mountinfo(mi, b"/my proc").is_some());
        // Not procfs.
        let mi = b"30 27 0:60 / /proc rw - tmpfs tmpfs rw,hidepid=1\n";
        assert_eq!(hidepid_from_mountinfo(mi, b"/proc"), None);
        assert_eq!(hidepid_from_mountinfo(b"garbage\n\n- - -", b"/proc"), None);
    }

    /// Every parser on random bytes and on every prefix of real-looking text: no panic.
    #[test]
    fn parsers_never_panic() {
        let samples: [&[u8]; 4] = [
            b"1234 (a) b)) S 1 1 1 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 1 0 1 0 0\n",
            b"7f00-7f01 r--s 00000000 fe:01 42    /c/has space\\012x (deleted)\n",
            b"1: FLOCK  ADVISORY  READ 29112 fe:00:1234 0 EOF\n",
            b"22 27 0:21 / /proc rw - proc proc rw,hidepid=2\n",
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b" ()-:/\\0123456789abcdefSZ\n\0=>\xff";
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        for s in samples {
            for i in 0..=s.len() {
                inputs.push(s[..i].to_vec());
            }
        }
        for _ in 0..3000 {
            let len = (next() % 80) as usize;
            inputs.push((0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect());
        }
        let mut out = Vec::new();
        for input in &inputs {
            let _ = parse_stat(input);
            let _ = parse_status_uid(input);
            for line in input.split(|b| *b == b'\n') {
                if let Some(m) = parse_maps_line(line) {
                    unescape_maps_path(m.path, &mut out);
                    let _ = strip_deleted(&out);
                }
            }
            let _ = parse_locks(input);
            let _ = hidepid_from_mountinfo(input, b"/proc");
            let _ = split_nul(input).count();
            let _ = parse_dev_hex(input);
        }
    }
}
