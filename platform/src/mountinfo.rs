//! Pure reading of `/proc/PID/mountinfo` (proc(5)): where a directory lies in its filesystem,
//! and every path under which one mount namespace shows it.
//!
//! A directory is identified across mount namespaces by its filesystem's device (mountinfo's
//! `maj:min`) and its path inside that filesystem ([`FsLocation`]). Another namespace shows it
//! wherever a mount of the same device has a root field (field 4, the directory of the
//! filesystem mounted there) that contains it: at `mount point + (path in fs - root)`; and a
//! mount whose root lies *inside* the directory (a bind mount of one entry) shows that part of
//! it at its mount point. The mount points are relative to the root directory of the process
//! whose mountinfo is read (the kernel skips mounts outside a chroot), which is exactly how
//! that process spells paths in its environment and command line.
//!
//! Compiled on every OS: the main crate calls it with our own mountinfo, which only Linux has.
//! Paths are bytes, fields are unescaped (`\040` space, `\011` tab, `\012` newline, `\134`
//! backslash), and prefixes are compared component by component with [`crate::under_root`],
//! never as text patterns. Malformed lines are skipped, never a panic.

use crate::{under_root, Device, FsLocation};

/// The fields of one mountinfo line this module needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Field 3, `maj:min` in decimal.
    pub device: Device,
    /// Field 4, unescaped, without a trailing slash (empty for the filesystem's root).
    pub root: Vec<u8>,
    /// Field 5, unescaped, without a trailing slash (empty for `/`).
    pub mount_point: Vec<u8>,
    /// Field 6, the per-mount options (`rw,relatime`), as written.
    pub options: Vec<u8>,
}

/// Parses one line. `None` for a line that is not a mount of a directory tree: too few
/// fields, a bad device, a root that is not a path (`net:[4026531840]` for nsfs) or the root
/// of a deleted directory (`/a//deleted`), which cannot hold a live directory.
pub fn parse_line(line: &[u8]) -> Option<Mount> {
    let mut fields = line.split(|&b| b == b' ');
    let _id = fields.next()?;
    let _parent = fields.next()?;
    let dev = fields.next()?;
    let colon = memchr::memchr(b':', dev)?;
    let major = parse_u32(dev.get(..colon)?)?;
    let minor = parse_u32(dev.get(colon + 1..)?)?;
    let root = unescape(fields.next()?);
    let mount_point = unescape(fields.next()?);
    let options = fields.next().unwrap_or_default().to_vec();
    if root.first() != Some(&b'/') || mount_point.first() != Some(&b'/') {
        return None;
    }
    if memchr::memmem::find(&root, b"//").is_some() {
        return None;
    }
    Some(Mount {
        device: Device { major, minor },
        root: trim_slash(&root).to_vec(),
        mount_point: trim_slash(&mount_point).to_vec(),
        options,
    })
}

/// Every parseable line of a mountinfo text.
pub fn mounts(text: &[u8]) -> impl Iterator<Item = Mount> + '_ {
    text.split(|&b| b == b'\n').filter_map(parse_line)
}

/// Where `path` (absolute, canonical, in the namespace `text` describes) lies: the mount it is
/// reached through is the one with the longest mount point containing it, and of several on
/// the same mount point the last (later mounts cover earlier ones). When `stat_dev` is given
/// and some candidate mount has that device, only those count: that skips a mount that is
/// listed but covered by a later one elsewhere. On btrfs no mount has the `st_dev` of a
/// subvolume's directory, so all candidates count.
pub fn locate(text: &[u8], path: &[u8], stat_dev: Option<Device>) -> Option<FsLocation> {
    let path = trim_slash(path);
    let candidates: Vec<Mount> = mounts(text).filter(|m| under_root(path, &m.mount_point)).collect();
    let same_dev = stat_dev.is_some_and(|d| candidates.iter().any(|m| m.device == d));
    let mut best: Option<&Mount> = None;
    for m in &candidates {
        if same_dev && Some(m.device) != stat_dev {
            continue;
        }
        if best.is_none_or(|b| m.mount_point.len() >= b.mount_point.len()) {
            best = Some(m);
        }
    }
    let best = best?;
    let mut path_in_fs = best.root.clone();
    path_in_fs.extend_from_slice(path.get(best.mount_point.len()..)?);
    Some(FsLocation { device: best.device, path_in_fs, path: path.to_vec() })
}

/// A path under which one namespace shows (part of) the located directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spelling {
    /// The path in that namespace, without a trailing slash (empty: its root directory).
    pub prefix: Vec<u8>,
    /// Which part of the directory `prefix` shows: empty for all of it, else a relative path
    /// inside it (a bind mount of one entry).
    pub rel: Vec<u8>,
}

/// Every spelling of `loc` in the namespace `text` describes, deduplicated, in line order.
pub fn spellings(text: &[u8], loc: &FsLocation) -> Vec<Spelling> {
    let fs_path = trim_slash(&loc.path_in_fs);
    let mut out: Vec<Spelling> = Vec::new();
    for m in mounts(text).filter(|m| m.device == loc.device) {
        let spelling = if under_root(fs_path, &m.root) {
            let mut prefix = m.mount_point.clone();
            prefix.extend_from_slice(fs_path.get(m.root.len()..).unwrap_or_default());
            Spelling { prefix, rel: Vec::new() }
        } else if under_root(&m.root, fs_path) {
            let rest = m.root.get(fs_path.len()..).unwrap_or_default();
            Spelling { prefix: m.mount_point.clone(), rel: rest.strip_prefix(b"/").unwrap_or(rest).to_vec() }
        } else {
            continue;
        };
        if !out.contains(&spelling) {
            out.push(spelling);
        }
    }
    out
}

/// Undoes mountinfo's octal escapes (`\040` space, `\011` tab, `\012` newline, `\134`
/// backslash). Anything else, including a backslash not followed by three octal digits that
/// fit a byte, is kept as it is.
pub fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        if b == b'\\' {
            if let Some(d) = s.get(i + 1..i + 4) {
                if d.iter().all(|c| (b'0'..=b'7').contains(c)) {
                    let v = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                    if let Ok(v) = u8::try_from(v) {
                        out.push(v);
                        i += 4;
                        continue;
                    }
                }
            }
        }
        out.push(b);
        i += 1;
    }
    out
}

/// `/` becomes empty (so that joining works); other paths lose a trailing slash.
fn trim_slash(p: &[u8]) -> &[u8] {
    p.strip_suffix(b"/").unwrap_or(p)
}

fn parse_u32(s: &[u8]) -> Option<u32> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: Device = Device { major: 254, minor: 0 };

    fn loc(path_in_fs: &[u8]) -> FsLocation {
        FsLocation { device: DEV, path_in_fs: path_in_fs.to_vec(), path: b"/home/u/.cache/uv".to_vec() }
    }

    fn sp(prefix: &[u8], rel: &[u8]) -> Spelling {
        Spelling { prefix: prefix.to_vec(), rel: rel.to_vec() }
    }

    #[test]
    fn lines() {
        assert_eq!(
            parse_line(b"36 22 254:0 /a\\040b/ /srv/x\\134y rw,relatime shared:1 - ext4 /dev/vda rw"),
            Some(Mount {
                device: DEV,
                root: b"/a b".to_vec(),
                mount_point: b"/srv/x\\y".to_vec(),
                options: b"rw,relatime".to_vec()
            })
        );
        let root = parse_line(b"27 1 254:0 / / rw - ext4 /dev/vda rw").unwrap();
        assert_eq!((root.root.as_slice(), root.mount_point.as_slice()), (&b""[..], &b""[..]));
        for bad in [
            &b""[..],
            b"27 1 254:0 /",
            b"27 1 2540 / / rw",
            b"27 1 x:0 / / rw",
            b"27 1 254:99999999999 / / rw",
            b"40 30 0:4 net:[4026531840] /run/netns/a rw - nsfs nsfs rw",
            b"41 30 254:0 /gone//deleted /mnt/gone rw - ext4 /dev/vda rw",
            b"42 30 254:0 / relative rw - ext4 /dev/vda rw",
        ] {
            assert_eq!(parse_line(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn locate_picks_the_top_mount() {
        let text = b"27 1 254:0 / / rw - ext4 /dev/vda rw\n\
                     50 27 0:50 / /home rw - tmpfs t rw\n\
                     51 27 254:0 /data/home /home rw - ext4 /dev/vda rw\n\
                     52 51 254:0 /data/other /home/x rw - ext4 /dev/vda rw\n";
        // /home is mounted twice: the later bind of /data/home covers the tmpfs.
        let l = locate(text, b"/home/u/.cache/uv", None).unwrap();
        assert_eq!(
            l,
            FsLocation {
                device: DEV,
                path_in_fs: b"/data/home/u/.cache/uv".to_vec(),
                path: b"/home/u/.cache/uv".to_vec()
            }
        );
        // `/home/x` is a sibling's mount, not a prefix of `/home/xy`.
        let l = locate(text, b"/home/xy/", None).unwrap();
        assert_eq!(l.path_in_fs, b"/data/home/xy");
        assert_eq!(l.path, b"/home/xy");
        // The stat device decides between the covered and the covering mount.
        let l = locate(text, b"/home/u", Some(Device { major: 0, minor: 50 })).unwrap();
        assert_eq!((l.device, l.path_in_fs.as_slice()), (Device { major: 0, minor: 50 }, &b"/u"[..]));
        // btrfs: no mount has the subvolume's st_dev; the top mount wins.
        let l = locate(text, b"/home/u", Some(Device { major: 0, minor: 99 })).unwrap();
        assert_eq!(l.path_in_fs, b"/data/home/u");
        // The filesystem's root directory itself.
        let l = locate(text, b"/", None).unwrap();
        assert_eq!(l.path_in_fs, b"");
        assert_eq!(locate(b"garbage\n", b"/x", None), None);
    }

    /// A container's view: the host's `/home/u/.cache/uv` bind-mounted at `/root/.cache/uv`,
    /// one entry bound on its own, a nested bind of a parent, an escaped name, and mounts that
    /// do not contain the cache.
    #[test]
    fn spellings_in_another_namespace() {
        let container = b"600 500 0:90 / / rw - overlay overlay rw\n\
601 600 254:0 /home/u/.cache/uv /root/.cache/uv rw - ext4 /dev/vda rw\n\
602 600 254:0 /home/u/.cache/uv/archive-v0/abc /opt/tool\\040env rw - ext4 /dev/vda rw\n\
603 600 254:0 /home /mnt/h\\012x rw - ext4 /dev/vda rw\n\
604 600 254:0 /home/u/.cache/uvx /mnt/sibling rw - ext4 /dev/vda rw\n\
605 600 254:0 /var /mnt/var rw - ext4 /dev/vda rw\n\
606 600 254:1 /home/u/.cache/uv /mnt/other-fs rw - ext4 /dev/vdb rw\n\
607 600 0:91 / /proc rw - proc proc rw\n";
        let got = spellings(container, &loc(b"/home/u/.cache/uv"));
        assert_eq!(
            got,
            vec![
                sp(b"/root/.cache/uv", b""),
                sp(b"/opt/tool env", b"archive-v0/abc"),
                sp(b"/mnt/h\nx/u/.cache/uv", b""),
            ]
        );
        // The whole filesystem mounted at "/" spells the cache as its own path.
        let host = b"27 1 254:0 / / rw - ext4 /dev/vda rw\n27 1 254:0 / / rw - ext4 /dev/vda rw\n";
        assert_eq!(spellings(host, &loc(b"/home/u/.cache/uv")), vec![sp(b"/home/u/.cache/uv", b"")]);
        // A cache at the root of its filesystem, mounted at "/": every path is inside it.
        assert_eq!(spellings(host, &loc(b"")), vec![sp(b"", b"")]);
        // A second namespace of the same machine sees it elsewhere again.
        let other = b"700 1 0:95 / / rw - tmpfs t rw\n\
701 700 254:0 /home/u /users/u rw - ext4 /dev/vda rw\n";
        assert_eq!(spellings(other, &loc(b"/home/u/.cache/uv")), vec![sp(b"/users/u/.cache/uv", b"")]);
        // A namespace that does not mount the cache's filesystem at all.
        assert_eq!(spellings(b"800 1 0:97 / / rw - tmpfs t rw\n", &loc(b"/home/u/.cache/uv")), vec![]);
    }

    #[test]
    fn octal_unescape() {
        assert_eq!(unescape(b"/a\\040b\\011c\\012d\\134e"), b"/a b\tc\nd\\e");
        assert_eq!(unescape(b"\\9\\01\\"), b"\\9\\01\\");
        assert_eq!(unescape(b"trailing\\04"), b"trailing\\04");
        assert_eq!(unescape(b"\\777"), b"\\777");
    }

    /// Random bytes and every prefix of a real line: no panic.
    #[test]
    fn never_panics() {
        let sample = b"36 22 254:0 /a\\040b /srv/x rw,relatime shared:1 - ext4 /dev/vda rw\n";
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let alphabet = b" /\\0124:7\nab";
        for i in 0..2000usize {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let input: Vec<u8> = if i < sample.len() {
                sample[..i].to_vec()
            } else {
                (0..(state % 60) as usize)
                    .map(|k| alphabet[(state >> (k % 50)) as usize % alphabet.len()])
                    .collect()
            };
            let _ = spellings(&input, &loc(b"/a b"));
            let _ = locate(&input, b"/srv/x/y", Some(DEV));
            let _ = unescape(&input);
        }
    }
}
