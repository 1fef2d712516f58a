//! Matching of raw bytes against the requested roots and devices (pure, no syscalls).
//!
//! Links, fd targets and maps paths are matched with [`crate::under_root`]. Free text
//! (`environ` values, `cmdline` arguments) is searched with `memmem` for every root spelling;
//! the rules there are deliberately liberal, because a false positive only keeps an entry
//! that could have been pruned, while a false negative could delete something in use.

use crate::{under_root, Device};
use memchr::memmem::Finder;

/// The roots and devices of one scan, with their searchers built once.
pub(crate) struct Matcher {
    roots: Vec<Vec<u8>>,
    /// One finder per non-empty root. An empty root (the root directory `/` written without its
    /// slash) matches every absolute path in `path_matches`, but is useless as a needle.
    finders: Vec<(Vec<u8>, Finder<'static>)>,
    /// The same roots as `maps` prints them (newline escaped as `\012`), to skip parsing maps
    /// that cannot contain a hit.
    maps_finders: Vec<Finder<'static>>,
    devices: Vec<Device>,
}

impl Matcher {
    pub(crate) fn new(roots: &[Vec<u8>], devices: &[Device]) -> Self {
        let finders = roots
            .iter()
            .filter(|r| !r.is_empty())
            .map(|r| (r.clone(), Finder::new(r).into_owned()))
            .collect();
        let maps_finders = roots
            .iter()
            .filter(|r| !r.is_empty())
            .map(|r| {
                let mut escaped = Vec::with_capacity(r.len());
                for &b in r {
                    if b == b'\n' {
                        escaped.extend_from_slice(b"\\012");
                    } else {
                        escaped.push(b);
                    }
                }
                Finder::new(&escaped).into_owned()
            })
            .collect();
        Self { roots: roots.to_vec(), finders, maps_finders, devices: devices.to_vec() }
    }

    /// True when `path` is a root or lies below one.
    pub(crate) fn path_matches(&self, path: &[u8]) -> bool {
        self.roots.iter().any(|r| under_root(path, r))
    }

    pub(crate) fn has_devices(&self) -> bool {
        !self.devices.is_empty()
    }

    pub(crate) fn device_matches(&self, dev: Device) -> bool {
        self.devices.contains(&dev)
    }

    /// True when an empty root is requested: every absolute path matches, so free text must be
    /// searched token by token for absolute paths rather than with a needle.
    fn has_empty_root(&self) -> bool {
        self.roots.iter().any(|r| r.is_empty())
    }

    /// Cheap pre-check for a whole `environ`/`cmdline` block.
    pub(crate) fn text_may_match(&self, blob: &[u8]) -> bool {
        self.has_empty_root() || self.finders.iter().any(|(_, f)| f.find(blob).is_some())
    }

    /// Cheap pre-check for a whole `maps` buffer.
    pub(crate) fn maps_may_match(&self, blob: &[u8]) -> bool {
        self.has_empty_root() || self.maps_finders.iter().any(|f| f.find(blob).is_some())
    }

    /// Appends to `out` the path-like pieces of one `environ` value or `cmdline` argument that
    /// name something under a root, each at most once.
    ///
    /// An occurrence of a root counts whatever precedes it (start, `=`, `:`, `-L`, a quote...)
    /// and when it is followed by the end of the token, `/`, `:` or a delimiter such as a space,
    /// `;`, `,` or a quote. A root followed by `/` yields the text up to the next `:` (one
    /// element of a `PATH`-style list); when that text contains a space or another delimiter,
    /// the piece cut at the delimiter is reported too, so `"/r/a /r/b"` also gives `/r/a`.
    /// Every reported piece satisfies [`crate::under_root`].
    pub(crate) fn token_paths(&self, token: &[u8], out: &mut Vec<Vec<u8>>) {
        let mut push = |p: &[u8]| {
            if !out.iter().any(|q| q.as_slice() == p) {
                out.push(p.to_vec());
            }
        };
        for (root, finder) in &self.finders {
            for pos in finder.find_iter(token) {
                let after = pos + root.len();
                match token.get(after) {
                    None | Some(b':') | Some(0) => push(root),
                    Some(b'/') => {
                        let rest = token.get(after..).unwrap_or(&[]);
                        let end = memchr::memchr(b':', rest).map_or(token.len(), |i| after + i);
                        if let Some(piece) = token.get(pos..end) {
                            push(piece);
                        }
                        let inner = token.get(after..end).unwrap_or(&[]);
                        if let Some(cut) = inner.iter().position(|b| is_soft_delimiter(*b)) {
                            if let Some(piece) = token.get(pos..after + cut) {
                                push(piece);
                            }
                        }
                    }
                    Some(b) if is_soft_delimiter(*b) => push(root),
                    Some(_) => {} // `/root2`: a sibling, not below the root.
                }
            }
        }
        if self.has_empty_root() {
            // Root "/": every absolute path element is under it.
            for piece in token.split(|b| *b == b':') {
                if let Some(start) = piece.iter().position(|b| *b == b'/') {
                    if let Some(p) = piece.get(start..) {
                        push(p);
                    }
                }
            }
        }
    }
}

/// Bytes that end a path inside free text even though a path could contain them. Treating
/// them as ends only adds candidates (the uncut piece is reported as well).
fn is_soft_delimiter(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b';' | b',' | b'"' | b'\'' | b'=' | b')' | b']' | b'}' | b'>')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(roots: &[&[u8]]) -> Matcher {
        let roots: Vec<Vec<u8>> = roots.iter().map(|r| r.to_vec()).collect();
        Matcher::new(&roots, &[])
    }

    fn paths(m: &Matcher, token: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        m.token_paths(token, &mut out);
        out
    }

    #[test]
    fn path_list_elements() {
        let m = m(&[b"/c/uv"]);
        assert_eq!(
            paths(&m, b"/c/uv/envs/a/bin:/usr/bin:/c/uv:/c/uv2/bin"),
            vec![b"/c/uv/envs/a/bin".to_vec(), b"/c/uv".to_vec()]
        );
        assert_eq!(paths(&m, b"/c/uv2/bin:/x/c/uvx"), Vec::<Vec<u8>>::new());
    }

    #[test]
    fn liberal_prefix_and_delimiters() {
        let m = m(&[b"/c/uv"]);
        assert_eq!(paths(&m, b"--cache-dir=/c/uv/x"), vec![b"/c/uv/x".to_vec()]);
        assert_eq!(paths(&m, b"-L/c/uv/lib"), vec![b"/c/uv/lib".to_vec()]);
        assert_eq!(
            paths(&m, b"\"/c/uv/a /c/uv/b\""),
            vec![
                b"/c/uv/a /c/uv/b\"".to_vec(),
                b"/c/uv/a".to_vec(),
                b"/c/uv/b\"".to_vec(),
                b"/c/uv/b".to_vec()
            ]
        );
        assert_eq!(paths(&m, b"'/c/uv'"), vec![b"/c/uv".to_vec()]);
        for p in paths(&m, b"x=/c/uv/a b;/c/uv,/c/uv/z") {
            assert!(m.path_matches(&p), "{:?}", String::from_utf8_lossy(&p));
        }
    }

    #[test]
    fn non_utf8_and_newline_roots() {
        let m = m(&[b"/c/\xffdir", b"/c/new\nline"]);
        assert_eq!(paths(&m, b"/c/\xffdir/a"), vec![b"/c/\xffdir/a".to_vec()]);
        assert!(m.maps_may_match(b"7f-7f r 0 00:01 1 /c/new\\012line/x\n"));
        assert!(!m.maps_may_match(b"7f-7f r 0 00:01 1 /c/new line/x\n"));
    }

    #[test]
    fn empty_root_matches_everything_absolute() {
        let m = m(&[b""]);
        assert!(m.path_matches(b"/usr/bin"));
        assert!(m.text_may_match(b"anything"));
        assert_eq!(paths(&m, b"a:/b:c/d"), vec![b"/b".to_vec(), b"/d".to_vec()]);
    }

    #[test]
    fn no_roots_match_nothing() {
        let m = m(&[]);
        assert!(!m.path_matches(b"/x"));
        assert!(!m.text_may_match(b"/x"));
        assert!(!m.maps_may_match(b"/x"));
        assert!(paths(&m, b"/x").is_empty());
    }
}
