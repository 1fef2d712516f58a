//! Other views of the roots: how a process in another mount namespace (a container, `unshare
//! -m`) or below a chroot spells the directory of interest, and the rewriting of such a
//! spelling to ours.
//!
//! Links, fds and maps are matched by device and inode for such processes ([`super::process`]),
//! but the environment and command line are only text: `PATH=/root/.cache/uv/archive-v0/<id>/bin`
//! in a container whose `/root/.cache/uv` is the host's `/home/u/.cache/uv`. Those texts are
//! matched against [`Aliases`]: pairs of (the process's spelling, our spelling of the same
//! place), computed once per (mount namespace, root directory) and shared by all workers:
//!
//! * Another mount namespace: from that process's own `mountinfo`, whose mount points are
//!   relative to its root directory, the way its own paths are written
//!   ([`crate::mountinfo::spellings`] of the [`FsLocation`] derived from our mountinfo).
//! * A chroot at `R` (as `/proc/PID/root` shows it): every root lying below `R`, with `R`
//!   removed. In our own namespace that is exact (our view of the chroot is `R` + its path).
//!   In another namespace `R` is a path of that namespace, and the pairs are a cheap extra
//!   guess that is exact when the namespace was copied from ours (`unshare -m`); a wrong
//!   guess can only keep more. What a chrooted process in another namespace reaches through
//!   a mount *above* its root is not listed in its mountinfo (the kernel skips mounts outside
//!   the root), so a cache on that same mount, below the chroot, is only found by that guess.

use super::matcher::Matcher;
use crate::mountinfo::spellings;
use crate::{under_root, FsLocation};
use rustix::io::Errno;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The spellings of the roots in one process's view, with a matcher over them.
pub(crate) struct Aliases {
    /// Searches the process-side prefixes (as roots).
    pub matcher: Matcher,
    /// (prefix as the process spells it, our spelling of the same place), longest prefix
    /// first so that a nested mount wins over the mount containing it.
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Aliases {
    /// Pairs whose two sides are equal are dropped: the ordinary roots match them already.
    pub(crate) fn new(mut pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Self {
        pairs.retain(|(theirs, ours)| theirs != ours);
        pairs.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.cmp(b)));
        pairs.dedup();
        let prefixes: Vec<Vec<u8>> = pairs.iter().map(|(theirs, _)| theirs.clone()).collect();
        Self { matcher: Matcher::new(&prefixes, &[]), pairs }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Our spelling of `path`, which the process wrote under one of its prefixes. When
    /// several prefixes cover it, the longest decides (the nested mount is what the process
    /// reaches).
    pub(crate) fn rewrite(&self, path: &[u8]) -> Option<Vec<u8>> {
        let (theirs, ours) = self.pairs.iter().find(|(theirs, _)| under_root(path, theirs))?;
        let mut out = ours.clone();
        out.extend_from_slice(path.get(theirs.len()..)?);
        Some(out)
    }
}

/// Pairs for a process whose root directory is `root_dir` (not `/`): each of our `roots`
/// below it, as the process spells it (without the `root_dir` prefix).
pub(crate) fn chroot_pairs(roots: &[Vec<u8>], root_dir: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let root_dir = root_dir.strip_suffix(b"/").unwrap_or(root_dir);
    roots
        .iter()
        .filter(|r| under_root(r, root_dir))
        .filter_map(|r| Some((r.get(root_dir.len()..)?.to_vec(), r.clone())))
        .collect()
}

/// Pairs from another namespace's `mountinfo`: each spelling of `loc` there, with the part of
/// our `loc.path` it shows.
pub(crate) fn namespace_pairs(mountinfo: &[u8], loc: &FsLocation) -> Vec<(Vec<u8>, Vec<u8>)> {
    spellings(mountinfo, loc)
        .into_iter()
        .map(|s| {
            let mut ours = loc.path.clone();
            if !s.rel.is_empty() {
                ours.push(b'/');
                ours.extend_from_slice(&s.rel);
            }
            (s.prefix, ours)
        })
        .collect()
}

/// Which view: the mount namespace link (`mnt:[4026531841]`; empty for our own namespace) and
/// the root directory as `/proc/PID/root` shows it.
type ViewKey = (Vec<u8>, Vec<u8>);

/// The aliases of every view met during one scan, each computed once.
pub(crate) struct Views {
    location: Option<FsLocation>,
    roots: Vec<Vec<u8>>,
    cache: Mutex<HashMap<ViewKey, Arc<Aliases>>>,
}

impl Views {
    pub(crate) fn new(location: Option<FsLocation>, roots: &[Vec<u8>]) -> Self {
        Self { location, roots: roots.to_vec(), cache: Mutex::new(HashMap::new()) }
    }

    /// True when other namespaces' spellings can be computed (the request located the root).
    pub(crate) fn has_location(&self) -> bool {
        self.location.is_some()
    }

    /// The aliases of a process in namespace `foreign_ns` (`None`: ours) with root directory
    /// `root_dir` (`None`: `/`); `None` for a process that sees paths as we do.
    /// `read_mountinfo` fills the buffer with that process's mountinfo; it is called only for
    /// the first process of a namespace, and a failure is not remembered (the next process of
    /// that namespace tries again).
    ///
    /// The lock is held while a view is computed, so that a namespace's mountinfo is read
    /// once even when several workers meet it at the same time; only processes outside our
    /// view ever wait for it.
    pub(crate) fn aliases(
        &self,
        foreign_ns: Option<&[u8]>,
        root_dir: Option<&[u8]>,
        read_mountinfo: impl FnOnce(&mut Vec<u8>) -> Result<(), Errno>,
        buf: &mut Vec<u8>,
    ) -> Result<Option<Arc<Aliases>>, Errno> {
        if foreign_ns.is_none() && root_dir.is_none() {
            return Ok(None);
        }
        let key: ViewKey = (foreign_ns.unwrap_or_default().to_vec(), root_dir.unwrap_or(b"/").to_vec());
        // A poisoned lock only means another worker panicked mid-insert; the map is still valid.
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = cache.get(&key) {
            return Ok(Some(Arc::clone(found)));
        }
        let mut pairs = root_dir.map(|r| chroot_pairs(&self.roots, r)).unwrap_or_default();
        if let (Some(_), Some(loc)) = (foreign_ns, &self.location) {
            read_mountinfo(buf)?;
            pairs.extend(namespace_pairs(buf, loc));
        }
        let aliases = Arc::new(Aliases::new(pairs));
        cache.insert(key, Arc::clone(&aliases));
        Ok(Some(aliases))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Device;
    use std::cell::Cell;

    fn loc() -> FsLocation {
        FsLocation {
            device: Device { major: 254, minor: 0 },
            path_in_fs: b"/home/u/.cache/uv".to_vec(),
            path: b"/home/u/.cache/uv".to_vec(),
        }
    }

    fn pairs(list: &[(&[u8], &[u8])]) -> Vec<(Vec<u8>, Vec<u8>)> {
        list.iter().map(|(a, b)| (a.to_vec(), b.to_vec())).collect()
    }

    const CONTAINER: &[u8] = b"600 500 0:90 / / rw - overlay overlay rw\n\
601 600 254:0 /home/u/.cache/uv /root/.cache/uv rw - ext4 /dev/vda rw\n\
602 601 254:0 /home/u/.cache/uv/archive-v0/abc /root/.cache/uv/archive-v0/abc rw - ext4 /dev/vda rw\n\
603 600 254:0 /home/u/.cache/uv/archive-v0/def /opt/tool\\040env rw - ext4 /dev/vda rw\n\
604 600 254:0 /srv /srv rw - ext4 /dev/vda rw\n";

    #[test]
    fn container_spellings_rewrite_to_ours() {
        let a = Aliases::new(namespace_pairs(CONTAINER, &loc()));
        let rw = |p: &[u8]| a.rewrite(p).map(|v| String::from_utf8_lossy(&v).into_owned());
        assert_eq!(
            rw(b"/root/.cache/uv/archive-v0/x/bin").as_deref(),
            Some("/home/u/.cache/uv/archive-v0/x/bin")
        );
        // The nested bind of one entry over the same place: the longer prefix decides, and
        // says the same thing.
        assert_eq!(
            rw(b"/root/.cache/uv/archive-v0/abc/lib").as_deref(),
            Some("/home/u/.cache/uv/archive-v0/abc/lib")
        );
        assert_eq!(
            rw(b"/opt/tool env/bin/python").as_deref(),
            Some("/home/u/.cache/uv/archive-v0/def/bin/python")
        );
        assert_eq!(rw(b"/root/.cache/uvx/a"), None);
        assert_eq!(rw(b"/srv/x"), None);
        // Text search finds the container's spelling in a PATH value.
        let mut hits = Vec::new();
        a.matcher.token_paths(b"PATH=/root/.cache/uv/archive-v0/x/bin:/usr/bin", &mut hits);
        assert_eq!(hits, vec![b"/root/.cache/uv/archive-v0/x/bin".to_vec()]);
    }

    #[test]
    fn identity_spellings_are_left_to_the_roots() {
        // `unshare -m` copies our mounts: the same path means the same place.
        let same = b"27 1 254:0 / / rw - ext4 /dev/vda rw\n";
        assert!(Aliases::new(namespace_pairs(same, &loc())).is_empty());
    }

    #[test]
    fn chroot_strips_its_root() {
        let roots =
            pairs(&[(b"/srv/jail/cache/uv", b""), (b"/home/u/.cache/uv", b""), (b"/srv/jailx/uv", b"")])
                .into_iter()
                .map(|(r, _)| r)
                .collect::<Vec<_>>();
        assert_eq!(chroot_pairs(&roots, b"/srv/jail"), pairs(&[(b"/cache/uv", b"/srv/jail/cache/uv")]));
        assert_eq!(chroot_pairs(&roots, b"/srv/jail/"), pairs(&[(b"/cache/uv", b"/srv/jail/cache/uv")]));
        // A chroot at the cache itself: every absolute path the process names is inside it.
        let at_root = chroot_pairs(&roots, b"/home/u/.cache/uv");
        assert_eq!(at_root, pairs(&[(b"", b"/home/u/.cache/uv")]));
        let a = Aliases::new(at_root);
        assert_eq!(a.rewrite(b"/archive-v0/x"), Some(b"/home/u/.cache/uv/archive-v0/x".to_vec()));
        let mut hits = Vec::new();
        a.matcher.token_paths(b"/archive-v0/x/bin:/usr/bin", &mut hits);
        assert!(hits.contains(&b"/archive-v0/x/bin".to_vec()), "{hits:?}");
    }

    /// Several namespaces and roots: each view computed once, a failed read not remembered,
    /// our own unchrooted view never computed.
    #[test]
    fn views_are_computed_once_per_namespace_and_root() {
        let views = Views::new(Some(loc()), &[b"/home/u/.cache/uv".to_vec()]);
        let reads = Cell::new(0);
        let mut buf = Vec::new();
        let mut get = |ns: Option<&[u8]>, root: Option<&[u8]>, text: &'static [u8]| {
            views
                .aliases(
                    ns,
                    root,
                    |b: &mut Vec<u8>| {
                        reads.set(reads.get() + 1);
                        if text.is_empty() {
                            return Err(Errno::SRCH);
                        }
                        b.clear();
                        b.extend_from_slice(text);
                        Ok(())
                    },
                    &mut buf,
                )
                .map(|a| {
                    a.map(|a| a.rewrite(b"/root/.cache/uv/z").is_some() || a.rewrite(b"/w/uv/z").is_some())
                })
        };
        let other =
            b"700 1 0:95 / / rw - tmpfs t rw\n701 700 254:0 /home/u/.cache /w rw - ext4 /dev/vda rw\n";
        assert_eq!(get(None, None, CONTAINER), Ok(None));
        assert_eq!(reads.get(), 0);
        assert_eq!(get(Some(b"mnt:[1]"), None, b""), Err(Errno::SRCH));
        assert_eq!(get(Some(b"mnt:[1]"), None, CONTAINER), Ok(Some(true)));
        assert_eq!(get(Some(b"mnt:[1]"), None, b"garbage that must not be read"), Ok(Some(true)));
        assert_eq!(get(Some(b"mnt:[2]"), None, other), Ok(Some(true)));
        assert_eq!(get(Some(b"mnt:[2]"), None, other), Ok(Some(true)));
        assert_eq!(reads.get(), 3);
        // Same namespace, another root: a view of its own (the mountinfo differs).
        assert_eq!(
            get(Some(b"mnt:[2]"), Some(b"/jail"), b"700 1 0:95 / / rw - tmpfs t rw\n"),
            Ok(Some(false))
        );
        assert_eq!(reads.get(), 4);
        // Our namespace, chrooted: no mountinfo needed.
        assert_eq!(get(None, Some(b"/home/u"), b""), Ok(Some(false)));
        assert_eq!(reads.get(), 4);
    }
}
