//! Property tests over the `/proc` parsers and the matcher: no input makes them panic, what
//! the kernel prints round-trips, and a path under a root is never missed in free text.

use proptest::prelude::*;

use super::matcher::Matcher;
use super::parse::*;

/// Path bytes as they appear in the tree: anything but NUL and `/`-free components are not
/// required; a backslash is excluded because maps' `\012` escape is ambiguous with it.
fn path_bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        any::<u8>().prop_filter("no NUL or backslash", |b| *b != 0 && *b != b'\\'),
        1..40,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse_stat(&bytes);
        let _ = parse_status_uid(&bytes);
        let _ = parse_maps_line(&bytes);
        let _ = parse_locks(&bytes);
        let _ = crate::mountinfo::unescape(&bytes);
        let _ = crate::mountinfo::spellings(&bytes, &crate::FsLocation { device: crate::Device { major: 0, minor: 1 }, path_in_fs: b"/c".to_vec(), path: b"/c".to_vec() });
        let _ = hidepid_from_mountinfo(&bytes, b"/proc");
        let mut out = Vec::new();
        unescape_maps_path(&bytes, &mut out);
        let _ = split_nul(&bytes).count();
        let m = Matcher::new(&[b"/c".to_vec(), bytes.clone()], &[]);
        let mut hits = Vec::new();
        m.token_paths(&bytes, &mut hits);
    }

    #[test]
    fn maps_lines_round_trip(suffix in path_bytes(), major in 0u32..4096, minor in 0u32..1_048_576, inode in any::<u64>(), deleted in any::<bool>()) {
        let mut path = b"/cache/".to_vec();
        path.extend_from_slice(&suffix);
        // The kernel escapes only the newline.
        let mut printed = Vec::new();
        for &b in &path {
            if b == b'\n' { printed.extend_from_slice(b"\\012") } else { printed.push(b) }
        }
        if deleted { printed.extend_from_slice(b" (deleted)") }
        let mut line = format!("7f0000000000-7f0000001000 r--p 00000000 {major:02x}:{minor:02x} {inode}                      ").into_bytes();
        line.extend_from_slice(&printed);
        let parsed = parse_maps_line(&line).expect("a well-formed line parses");
        prop_assert_eq!(parsed.inode, Some(inode));
        prop_assert_eq!(parsed.dev, Some(crate::Device { major, minor }));
        let mut out = Vec::new();
        unescape_maps_path(strip_deleted(parsed.path), &mut out);
        // A name that itself ends in " (deleted)" loses that suffix: still the same entry.
        let expected = if deleted { path.clone() } else { strip_deleted(&path).to_vec() };
        prop_assert!(out == expected || out == path, "{:?} vs {:?}", out, path);
    }

    #[test]
    fn nul_blocks_keep_empty_strings(parts in proptest::collection::vec(proptest::collection::vec(1u8..=255, 0..8), 1..8)) {
        let mut blob = Vec::new();
        for p in &parts {
            blob.extend_from_slice(p);
            blob.push(0);
        }
        let split: Vec<&[u8]> = split_nul(&blob).collect();
        let expected: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
        prop_assert_eq!(split, expected);
    }

    #[test]
    fn a_path_under_the_root_in_a_path_list_is_found(before in "[a-z/]{0,12}", suffix in path_bytes(), after in "[a-z/]{0,12}") {
        let suffix: Vec<u8> = suffix.into_iter().filter(|b| *b != b':').collect();
        let root = b"/home/u/.cache/uv".to_vec();
        let m = Matcher::new(std::slice::from_ref(&root), &[]);
        let mut value = format!("{before}:").into_bytes();
        value.extend_from_slice(&root);
        value.push(b'/');
        value.extend_from_slice(&suffix);
        value.extend_from_slice(format!(":{after}").as_bytes());
        let mut hits = Vec::new();
        m.token_paths(&value, &mut hits);
        prop_assert!(!hits.is_empty());
        prop_assert!(hits.iter().all(|h| crate::under_root(h, &root)));
        let mut full = root.clone();
        full.push(b'/');
        full.extend_from_slice(&suffix);
        prop_assert!(hits.contains(&full), "{:?} not in {:?}", full, hits);
    }
}
