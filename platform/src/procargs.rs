//! Parser for macOS `KERN_PROCARGS2` buffers (pure; compiled and tested on every OS).
//!
//! `sysctl({CTL_KERN, KERN_PROCARGS2, pid})` returns a copy of the top of the target's initial
//! stack (xnu `bsd/kern/kern_sysctl.c`, `sysctl_procargsx`; layout written by
//! `bsd/kern/kern_exec.c`, `exec_copyout_strings`):
//!
//! ```text
//! i32 argc (native endian)
//! exec_path NUL                      the path given to execve(2)
//! NUL padding                        to an 8-byte boundary (see `argv_start`)
//! argv[0] NUL ... argv[argc-1] NUL   exactly argc strings; EMPTY STRINGS ARE ARGUMENTS
//! env[0] NUL ... env[n-1] NUL        environment
//! apple[0] NUL ...                   "apple" strings (ptr_munge=..., executable_file=...)
//! NUL padding
//! ```
//!
//! Two things this parser does differently from most parsers we read (psutil, sysinfo, Lix):
//!
//! * Arguments are counted, never skipped: `""` is a real argument. Lix skipped empty
//!   arguments, so its argv/env boundary slid and environment variables were missed. Even the
//!   padding after `exec_path` is not skipped greedily: the kernel pads the exec path to an
//!   8-byte boundary, so we know where `argv[0]` starts even when `argv[0]` is empty.
//! * The environment is not cut at the first empty string: `execve(2)` accepts `""` entries in
//!   `envp`, and a variable after one would be missed. Empty strings are skipped instead. The
//!   kernel puts the apple strings right after the environment with no separator, so they
//!   show up in [`ProcArgs::env`] too; every parser that reads "until an empty string" sees
//!   them as well. They are `key=value` strings and harmless for matching.
//!
//! The parser never panics and never allocates more than the buffer can justify: a huge or
//! negative `argc`, a missing NUL or a short buffer give what could be parsed plus
//! [`ProcArgs::truncated`].

/// The exec path is padded to this boundary (pointer size of a 64-bit process).
const PATH_ALIGN_64: usize = 8;
/// Pointer size of a 32-bit process (none on current macOS; kept so old layouts still parse).
const PATH_ALIGN_32: usize = 4;
/// Offset of `exec_path` in the buffer (after `argc`).
const EXEC_PATH_OFFSET: usize = 4;

/// A parsed `KERN_PROCARGS2` buffer. Every slice borrows from the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcArgs<'a> {
    /// `argc` as the kernel wrote it (garbage buffers may hold a negative value).
    pub argc: i32,
    /// The path given to `execve(2)`; for a venv interpreter started through `PATH` this is
    /// the venv's `bin/python` even though the executable itself is the base interpreter.
    pub exec_path: &'a [u8],
    /// The arguments, empty ones included. Shorter than `argc` only when `truncated`.
    pub argv: Vec<&'a [u8]>,
    /// The non-empty strings after the arguments: environment, then apple strings.
    pub env: Vec<&'a [u8]>,
    /// The buffer ended (or was malformed) before `argc` arguments were read, or its last
    /// string had no terminating NUL.
    pub truncated: bool,
    /// The buffer ends exactly where the kernel cuts it when it withholds the environment
    /// (`CS_RESTRICT` targets such as Apple platform binaries, unless SIP is off or the caller
    /// is entitled). A normal buffer always continues with the environment and apple strings,
    /// so "nothing after the arguments" means "environment unavailable", not "empty".
    pub env_omitted: bool,
}

impl ProcArgs<'_> {
    /// The arguments are complete and the environment (as far as the kernel gave one) was read.
    pub fn is_complete(&self) -> bool {
        !self.truncated && !self.env_omitted
    }
}

/// The string starting at `pos`: its bytes and the position after its NUL, or `None` for the
/// end position when the buffer ends without a NUL.
fn next_str(buf: &[u8], pos: usize) -> (&[u8], Option<usize>) {
    let rest = buf.get(pos..).unwrap_or(&[]);
    match memchr::memchr(0, rest) {
        Some(n) => (&rest[..n], Some(pos + n + 1)),
        None => (rest, None),
    }
}

/// Where `argv[0]` starts, given the index of the NUL that ends `exec_path`.
///
/// `exec_save_path` stores `"executable_path=" + path + NUL` and `exec_extract_strings` pads it
/// with NULs until the string area is pointer aligned; the sysctl then strips the 16-byte key
/// (a multiple of 8), so in buffer terms `argv[0]` starts at
/// `EXEC_PATH_OFFSET + round_up(path_len + 1, ptr_size)`. We accept that position only when
/// every byte between the path's NUL and it is NUL; otherwise (some other layout) we fall back
/// to skipping NULs, which is what other parsers do.
fn argv_start(buf: &[u8], path_nul: usize) -> usize {
    let after_nul = path_nul + 1;
    let path_len_with_nul = after_nul - EXEC_PATH_OFFSET;
    for align in [PATH_ALIGN_64, PATH_ALIGN_32] {
        let padded = path_len_with_nul.div_ceil(align) * align;
        let start = EXEC_PATH_OFFSET + padded;
        let zone_end = start.min(buf.len());
        if buf[after_nul..zone_end].iter().all(|&b| b == 0) {
            return start;
        }
    }
    // Unknown layout: skip the padding greedily (cannot tell padding from an empty argv[0]).
    let mut pos = after_nul;
    while pos < buf.len() && buf[pos] == 0 {
        pos += 1;
    }
    pos
}

/// Where the kernel ends the buffer when it omits the environment: it skips the exec path and
/// *all* NULs after it, then `argc` strings (`sysctl_procargsx`, the `omit_env_vars` loop).
/// Note the kernel's greedy skip also swallows empty leading arguments, so in that case it
/// keeps one extra string per empty argument; emulating it exactly keeps `env_omitted` right.
fn kernel_env_cut(buf: &[u8], path_nul: usize, argc: usize) -> usize {
    let mut pos = path_nul + 1;
    while pos < buf.len() && buf[pos] == 0 {
        pos += 1;
    }
    for _ in 0..argc {
        if pos >= buf.len() {
            break;
        }
        match next_str(buf, pos).1 {
            Some(next) => pos = next,
            None => return buf.len(),
        }
    }
    pos
}

/// Parse a `KERN_PROCARGS2` buffer (exactly the bytes the sysctl reported, not the whole
/// allocation).
pub fn parse(buf: &[u8]) -> ProcArgs<'_> {
    let mut out = ProcArgs {
        argc: 0,
        exec_path: &[],
        argv: Vec::new(),
        env: Vec::new(),
        truncated: false,
        env_omitted: false,
    };
    let Some(argc_bytes) = buf.get(..EXEC_PATH_OFFSET) else {
        out.truncated = true;
        return out;
    };
    out.argc = i32::from_ne_bytes([argc_bytes[0], argc_bytes[1], argc_bytes[2], argc_bytes[3]]);
    // A negative count is garbage: read no arguments, but still report the rest as
    // environment-like strings so a caller that matches everything loses nothing.
    let want = usize::try_from(out.argc).unwrap_or_else(|_| {
        out.truncated = true;
        0
    });

    let (exec_path, path_end) = next_str(buf, EXEC_PATH_OFFSET);
    out.exec_path = exec_path;
    let Some(after_path) = path_end else {
        out.truncated = true;
        return out;
    };
    let path_nul = after_path - 1;

    let mut pos = argv_start(buf, path_nul);
    // Never trust argc for capacity: each argument takes at least one byte.
    out.argv.reserve(want.min(buf.len().saturating_sub(pos)));
    while out.argv.len() < want {
        if pos >= buf.len() {
            out.truncated = true;
            break;
        }
        let (arg, next) = next_str(buf, pos);
        out.argv.push(arg);
        match next {
            Some(n) => pos = n,
            None => {
                out.truncated = true;
                pos = buf.len();
                break;
            }
        }
    }

    while pos < buf.len() {
        let (s, next) = next_str(buf, pos);
        if !s.is_empty() {
            out.env.push(s);
        }
        match next {
            Some(n) => pos = n,
            None => {
                out.truncated = true;
                break;
            }
        }
    }

    out.env_omitted = !out.truncated && kernel_env_cut(buf, path_nul, want) >= buf.len();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Build a buffer the way the kernel does: argc, exec path, NUL padding to 8 (relative to
    /// the stripped `executable_path=` key, see `argv_start`), argv, env, apple strings.
    fn kernel_buffer(argc: i32, exec_path: &[u8], strings: &[&[u8]]) -> Vec<u8> {
        let mut b = argc.to_ne_bytes().to_vec();
        b.extend_from_slice(exec_path);
        b.push(0);
        while (b.len() - EXEC_PATH_OFFSET) % 8 != 0 {
            b.push(0);
        }
        for s in strings {
            b.extend_from_slice(s);
            b.push(0);
        }
        b
    }

    fn normal() -> Vec<u8> {
        kernel_buffer(
            3,
            b"/Users/me/.cache/uv/archive-v0/abc/bin/python",
            &[
                b"python",
                b"-c",
                b"print(1)",
                b"PATH=/usr/bin:/Users/me/.cache/uv/archive-v0/abc/bin",
                b"HOME=/Users/me",
                b"ptr_munge=",
                b"executable_file=0x1a01000009,0x2c4a1",
            ],
        )
    }

    #[test]
    fn normal_buffer() {
        let buf = normal();
        let p = parse(&buf);
        assert_eq!(p.argc, 3);
        assert_eq!(p.exec_path, b"/Users/me/.cache/uv/archive-v0/abc/bin/python");
        assert_eq!(p.argv, vec![&b"python"[..], b"-c", b"print(1)"]);
        assert_eq!(p.env.len(), 4);
        assert_eq!(p.env[0], b"PATH=/usr/bin:/Users/me/.cache/uv/archive-v0/abc/bin");
        assert_eq!(p.env[1], b"HOME=/Users/me");
        assert!(!p.truncated);
        assert!(!p.env_omitted);
        assert!(p.is_complete());
    }

    #[test]
    fn trailing_padding_is_not_environment() {
        let mut buf = normal();
        buf.extend_from_slice(&[0, 0, 0, 0, 0]);
        let p = parse(&buf);
        assert_eq!(p.env.len(), 4);
        assert!(p.is_complete());
    }

    #[test]
    fn padding_lengths_zero_to_seven() {
        // Exec paths of every length mod 8, so the padding is 7, 6, ..., 0 bytes.
        for len in 1..=16 {
            let path = vec![b'p'; len];
            let buf = kernel_buffer(1, &path, &[b"arg0", b"K=V"]);
            let p = parse(&buf);
            assert_eq!(p.exec_path, &path[..], "len {len}");
            assert_eq!(p.argv, vec![&b"arg0"[..]], "len {len}");
            assert_eq!(p.env, vec![&b"K=V"[..]], "len {len}");
            assert!(p.is_complete(), "len {len}");
        }
    }

    #[test]
    fn empty_arguments_are_counted() {
        // The Lix bug: "" arguments were skipped, so the first env var became an argument.
        let buf =
            kernel_buffer(4, b"/bin/tool", &[b"tool", b"", b"x", b"", b"VIRTUAL_ENV=/cache/venv", b"A=b"]);
        let p = parse(&buf);
        assert_eq!(p.argv, vec![&b"tool"[..], b"", b"x", b""]);
        assert_eq!(p.env, vec![&b"VIRTUAL_ENV=/cache/venv"[..], b"A=b"]);
        assert!(p.is_complete());
    }

    #[test]
    fn empty_argv0_is_not_padding() {
        for len in 1..=16 {
            let path = vec![b'q'; len];
            let buf = kernel_buffer(2, &path, &[b"", b"", b"PATH=/cache/bin", b"ptr_munge=", b"main_stack="]);
            let p = parse(&buf);
            assert_eq!(p.argv, vec![&b""[..], b""], "len {len}");
            assert_eq!(p.env, vec![&b"PATH=/cache/bin"[..], b"ptr_munge=", b"main_stack="], "len {len}");
            assert!(p.is_complete(), "len {len}");
        }
    }

    #[test]
    fn leading_empty_arguments_with_short_tail_count_as_omitted() {
        // With k empty leading arguments, a withheld environment still leaks k strings (the
        // kernel's greedy cut). A buffer whose tail is no longer than that is indistinguishable
        // from such a cut, so it is reported as omitted: "unknown" is the safe answer. Real
        // buffers end with several apple strings, so this needs k >= env + apple strings.
        let buf = kernel_buffer(2, b"/bin/x", &[b"", b"", b"A=1"]);
        let p = parse(&buf);
        assert_eq!(p.argv, vec![&b""[..], b""]);
        assert_eq!(p.env, vec![&b"A=1"[..]]);
        assert!(p.env_omitted);
    }

    #[test]
    fn empty_environment_entry_does_not_hide_later_ones() {
        let buf = kernel_buffer(1, b"/bin/x", &[b"x", b"A=1", b"", b"UV_CACHE_DIR=/cache"]);
        let p = parse(&buf);
        assert_eq!(p.env, vec![&b"A=1"[..], b"UV_CACHE_DIR=/cache"]);
    }

    #[test]
    fn no_environment_is_reported_as_omitted() {
        // CS_RESTRICT target: the kernel cuts right after the arguments.
        let buf = kernel_buffer(2, b"/bin/sleep", &[b"sleep", b"100"]);
        let p = parse(&buf);
        assert_eq!(p.argv, vec![&b"sleep"[..], b"100"]);
        assert!(p.env.is_empty());
        assert!(!p.truncated);
        assert!(p.env_omitted);
        assert!(!p.is_complete());
    }

    #[test]
    fn omitted_environment_with_empty_leading_argument() {
        // The kernel's own cut skips NULs greedily, so it keeps one extra string (the first
        // env var) when argv[0] is empty. That is still "environment unavailable".
        let full = kernel_buffer(2, b"/bin/sleep", &[b"", b"100", b"LEAKED=1", b"B=2"]);
        let cut = {
            let p = parse(&full);
            assert!(p.is_complete());
            // Emulate the kernel: keep up to the end of "LEAKED=1".
            let end = memchr::memmem::find(&full, b"LEAKED=1").unwrap() + b"LEAKED=1".len() + 1;
            full[..end].to_vec()
        };
        let p = parse(&cut);
        assert_eq!(p.argv, vec![&b""[..], b"100"]);
        assert_eq!(p.env, vec![&b"LEAKED=1"[..]]);
        assert!(p.env_omitted);
    }

    #[test]
    fn argc_zero() {
        let buf = kernel_buffer(0, b"/bin/x", &[b"A=1", b"B=2"]);
        let p = parse(&buf);
        assert!(p.argv.is_empty());
        assert_eq!(p.env, vec![&b"A=1"[..], b"B=2"]);
        assert!(p.is_complete());

        let bare = kernel_buffer(0, b"/bin/x", &[]);
        let p = parse(&bare);
        assert!(p.argv.is_empty() && p.env.is_empty());
        assert!(!p.truncated);
        assert!(p.env_omitted);
    }

    #[test]
    fn argc_huge() {
        let buf = kernel_buffer(i32::MAX, b"/bin/x", &[b"a", b"b"]);
        let p = parse(&buf);
        assert_eq!(p.argv, vec![&b"a"[..], b"b"]);
        assert!(p.env.is_empty());
        assert!(p.truncated);
        assert!(!p.is_complete());
    }

    #[test]
    fn argc_negative() {
        let buf = kernel_buffer(-5, b"/bin/x", &[b"a", b"B=1"]);
        let p = parse(&buf);
        assert_eq!(p.argc, -5);
        assert!(p.argv.is_empty());
        assert_eq!(p.env, vec![&b"a"[..], b"B=1"]);
        assert!(p.truncated);
    }

    #[test]
    fn truncated_in_argc() {
        for n in 0..4 {
            let buf = normal();
            let p = parse(&buf[..n]);
            assert!(p.truncated, "{n}");
            assert!(p.exec_path.is_empty() && p.argv.is_empty() && p.env.is_empty());
        }
    }

    #[test]
    fn truncated_in_exec_path() {
        let buf = normal();
        let p = parse(&buf[..10]);
        assert!(p.truncated);
        assert_eq!(p.exec_path, &buf[4..10]);
        assert!(p.argv.is_empty());
    }

    #[test]
    fn truncated_in_padding() {
        let buf = kernel_buffer(1, b"/b", &[b"arg"]);
        // "/b\0" then 5 bytes of padding; cut in the middle of it.
        let p = parse(&buf[..9]);
        assert_eq!(p.exec_path, b"/b");
        assert!(p.argv.is_empty());
        assert!(p.truncated);
    }

    #[test]
    fn truncated_in_argv() {
        let buf = normal();
        let at = memchr::memmem::find(&buf, b"print(1)").unwrap() + 3;
        let p = parse(&buf[..at]);
        assert_eq!(p.argv, vec![&b"python"[..], b"-c", b"pri"]);
        assert!(p.env.is_empty());
        assert!(p.truncated);
        assert!(!p.env_omitted);
    }

    #[test]
    fn truncated_between_arguments() {
        let buf = normal();
        let at = memchr::memmem::find(&buf, b"-c").unwrap() + 3;
        let p = parse(&buf[..at]);
        assert_eq!(p.argv, vec![&b"python"[..], b"-c"]);
        assert!(p.truncated);
    }

    #[test]
    fn truncated_in_environment() {
        let buf = normal();
        let at = memchr::memmem::find(&buf, b"HOME=").unwrap() + 4;
        let p = parse(&buf[..at]);
        assert_eq!(p.argv.len(), 3);
        assert_eq!(p.env.last().copied(), Some(&b"HOME"[..]));
        assert!(p.truncated);
        assert!(!p.env_omitted);
    }

    #[test]
    fn garbage() {
        let p = parse(b"\x02\0\0\0no-nul-anywhere");
        assert!(p.truncated);
        let p = parse(&[0xff; 64]);
        assert!(p.truncated);
        let p = parse(&[0u8; 64]);
        assert_eq!(p.argc, 0);
        assert!(p.exec_path.is_empty());
        let p = parse(b"");
        assert!(p.truncated);
    }

    #[test]
    fn unknown_padding_layout_falls_back_to_skipping() {
        // Arguments start right after the path's NUL (no padding at all): the aligned start
        // would be inside "abc", so the parser must not use it.
        let mut b = 1i32.to_ne_bytes().to_vec();
        b.extend_from_slice(b"/x\0abc\0K=V\0");
        let p = parse(&b);
        assert_eq!(p.argv, vec![&b"abc"[..]]);
        assert_eq!(p.env, vec![&b"K=V"[..]]);
    }

    /// xorshift64*: deterministic, no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    fn check_invariants(buf: &[u8]) {
        let p = parse(buf);
        let bound = buf.as_ptr_range();
        for s in std::iter::once(&p.exec_path).chain(&p.argv).chain(&p.env) {
            let r = s.as_ptr_range();
            assert!(s.is_empty() || (r.start >= bound.start && r.end <= bound.end));
            assert!(!s.contains(&0));
        }
        assert!(p.env.iter().all(|s| !s.is_empty()));
        if let Ok(want) = usize::try_from(p.argc) {
            assert!(p.argv.len() <= want);
            if !p.truncated {
                assert_eq!(p.argv.len(), want);
            }
        }
        assert!(!(p.truncated && p.env_omitted));
    }

    #[test]
    fn fuzz_random_and_truncated_buffers_never_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let alphabet: &[u8] = b"\0\0\0\0/=:abcPATH";
        for round in 0..4000 {
            let buf: Vec<u8> = match round % 3 {
                // Pure noise with a plausible argc.
                0 => {
                    let len = rng.below(96) as usize;
                    let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                    if b.len() >= 4 && rng.below(2) == 0 {
                        b[..4].copy_from_slice(&(rng.below(6) as i32).to_ne_bytes());
                    }
                    b
                }
                // Noise from a NUL-heavy alphabet.
                1 => {
                    let len = rng.below(128) as usize;
                    let mut b: Vec<u8> =
                        (0..len).map(|_| alphabet[rng.below(alphabet.len() as u64) as usize]).collect();
                    if b.len() >= 4 {
                        let argc = match rng.below(4) {
                            0 => i32::MAX,
                            1 => -1,
                            _ => rng.below(8) as i32,
                        };
                        b[..4].copy_from_slice(&argc.to_ne_bytes());
                    }
                    b
                }
                // A well-formed buffer cut at a random point.
                _ => {
                    let nargs = rng.below(5) as usize;
                    let nenv = rng.below(5) as usize;
                    let strings: Vec<Vec<u8>> = (0..nargs + nenv)
                        .map(|_| {
                            let l = rng.below(6) as usize;
                            (0..l).map(|_| b'a' + rng.below(26) as u8).collect()
                        })
                        .collect();
                    let refs: Vec<&[u8]> = strings.iter().map(Vec::as_slice).collect();
                    let path: Vec<u8> = (0..1 + rng.below(20)).map(|_| b'/').collect();
                    let full = kernel_buffer(nargs as i32, &path, &refs);
                    // The untruncated buffer must parse exactly.
                    let p = parse(&full);
                    assert!(!p.truncated);
                    assert_eq!(p.argv, refs[..nargs].to_vec());
                    let env: Vec<&[u8]> = refs[nargs..].iter().copied().filter(|s| !s.is_empty()).collect();
                    assert_eq!(p.env, env);
                    let cut = rng.below(full.len() as u64 + 1) as usize;
                    full[..cut].to_vec()
                }
            };
            check_invariants(&buf);
            for cut in [0, 1, 3, 4, 5, buf.len() / 2] {
                if cut <= buf.len() {
                    check_invariants(&buf[..cut]);
                }
            }
        }
    }
}
