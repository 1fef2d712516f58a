//! Proves the test harness itself is right, so a failure elsewhere is about safe-prune:
//! the hand-written SHA-256, CRC32 and base64 match published vectors and Python; the
//! wheels and sdists are archives Python's `zipfile`/`tarfile` accept, with a correct
//! RECORD; copies keep symlinks and hard links; tree comparison catches differences.

// Linux only: it writes a file name that is not UTF-8, which APFS refuses.
#![cfg(target_os = "linux")]

mod common;

use std::os::unix::fs::symlink;
use std::process::Command;

use common::archive::{b64_urlsafe_nopad, crc32, sha256};
use common::tree::{bytes_path, copy_cache, copy_tree, snapshot, tree_diff, Kind};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn digests_match_known_vectors() {
    assert_eq!(hex(&sha256(b"")), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    assert_eq!(hex(&sha256(b"abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_eq!(
        hex(&sha256(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
    );
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(crc32(b""), 0);
    assert_eq!(b64_urlsafe_nopad(b""), "");
    assert_eq!(b64_urlsafe_nopad(b"f"), "Zg");
    assert_eq!(b64_urlsafe_nopad(b"fo"), "Zm8");
    assert_eq!(b64_urlsafe_nopad(b"foo"), "Zm9v");
    assert_eq!(b64_urlsafe_nopad(&[0xfb, 0xff, 0xfe]), "-__-");
}

#[test]
fn digests_match_python_at_block_boundaries() {
    // Lengths around the 55/56/64-byte padding boundaries of SHA-256.
    let lengths: Vec<usize> = (0..=130).collect();
    let ours: Vec<String> = lengths
        .iter()
        .map(|&n| {
            let data: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
            format!("{} {:08x}", b64_urlsafe_nopad(&sha256(&data)), crc32(&data))
        })
        .collect();
    let script = "import base64, hashlib, zlib\n\
        for n in range(131):\n\
        \x20   d = bytes((i * 7 + 3) % 256 for i in range(n))\n\
        \x20   h = base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()\n\
        \x20   print(h, '%08x' % zlib.crc32(d))\n";
    let out = Command::new(common::python()).args(["-c", script]).output().unwrap();
    assert!(out.status.success(), "{}", common::show(&out));
    let theirs: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect();
    assert_eq!(ours, theirs);
}

#[test]
fn packages_are_valid_for_python() {
    let tmp = tempfile::tempdir().unwrap();
    common::test_wheels(tmp.path());
    let script = r#"
import base64, hashlib, os, sys, tarfile, zipfile
d = sys.argv[1]
names = sorted(os.listdir(d))
assert names == ["dozy-1.0-py3-none-any.whl", "sleepy-0.1-py3-none-any.whl",
                 "sleepy-0.2-py3-none-any.whl", "srclib-1.0.tar.gz",
                 "tinylib-1.0-py3-none-any.whl"], names
for n in names:
    p = os.path.join(d, n)
    if n.endswith(".whl"):
        z = zipfile.ZipFile(p)
        assert z.testzip() is None, n
        stem = "-".join(n.split("-")[:2])
        record = z.read(stem + ".dist-info/RECORD").decode().splitlines()
        listed = set()
        for line in record:
            path, h, size = line.rsplit(",", 2)
            listed.add(path)
            if path.endswith("RECORD"):
                assert h == "" and size == "", line
                continue
            data = z.read(path)
            want = "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert h == want and int(size) == len(data), line
        assert listed == set(z.namelist()), (listed, z.namelist())
        meta = z.read(stem + ".dist-info/METADATA").decode()
        assert "Name: " + stem.split("-")[0] in meta, meta
        wheel = z.read(stem + ".dist-info/WHEEL").decode()
        assert "Tag: py3-none-any" in wheel and "Root-Is-Purelib: true" in wheel
        if not n.startswith("tinylib"):
            pkg = stem.split("-")[0]
            assert "%s = %s.cli:main" % (pkg, pkg) in z.read(stem + ".dist-info/entry_points.txt").decode()
            assert pkg + "/lazy.py" in z.namelist()
    else:
        t = tarfile.open(p)
        members = sorted(m.name for m in t.getmembers())
        assert members == ["srclib-1.0/PKG-INFO", "srclib-1.0/backend.py", "srclib-1.0/pyproject.toml"], members
        src = t.extractfile("srclib-1.0/backend.py").read().decode()
        compile(src, "backend.py", "exec")
print("ok")
"#;
    let out = Command::new(common::python()).args(["-c", script]).arg(tmp.path()).output().unwrap();
    assert!(out.status.success(), "{}", common::show(&out));
}

#[test]
fn copies_keep_links_and_snapshots_see_every_change() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let src = root.join("src");
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    std::fs::write(src.join("a/b/file"), b"hello").unwrap();
    std::fs::hard_link(src.join("a/b/file"), src.join("a/hard")).unwrap();
    std::fs::write(bytes_path(&src, b"odd \n\xff name"), b"x").unwrap();
    symlink("b/file", src.join("a/rel")).unwrap();
    symlink(src.join("a/b"), src.join("abs-inside")).unwrap();
    symlink("/nonexistent/target", src.join("dangling")).unwrap();
    symlink(&root, src.join("outside")).unwrap();

    let verbatim = root.join("verbatim");
    copy_tree(&src, &verbatim);
    let relocated = root.join("relocated");
    copy_cache(&src, &relocated);

    let s = snapshot(&src);
    assert_eq!(s.len(), 9, "{}", common::tree::render(&s));
    assert_eq!(s[std::path::Path::new("abs-inside")], Kind::Symlink(b"$ROOT/a/b".to_vec()));
    // The relocated copy points into itself and compares equal to the original.
    assert!(tree_diff(&s, &snapshot(&relocated)).is_empty());
    assert_eq!(std::fs::read_link(relocated.join("abs-inside")).unwrap(), relocated.join("a/b"));
    // The verbatim copy still points into the source: a visible difference.
    let diff = tree_diff(&s, &snapshot(&verbatim));
    assert_eq!(diff.len(), 1, "{diff:?}");
    // Hard links inside the tree stay hard links.
    use std::os::unix::fs::MetadataExt;
    let a = relocated.join("a/hard").metadata().unwrap();
    let b = relocated.join("a/b/file").metadata().unwrap();
    assert_eq!(a.ino(), b.ino());
    // Nothing was followed: the outside link is still a link in the copy.
    assert!(relocated.join("outside").symlink_metadata().unwrap().file_type().is_symlink());

    // Every kind of change is seen: content, link target, addition, removal, mode.
    std::fs::write(relocated.join("a/b/file"), b"hellO").unwrap(); // and its hard link
    std::fs::remove_file(relocated.join("dangling")).unwrap();
    symlink("elsewhere", relocated.join("dangling")).unwrap();
    std::fs::write(relocated.join("extra"), b"").unwrap();
    std::fs::remove_file(bytes_path(&relocated, b"odd \n\xff name")).unwrap();
    let diff = tree_diff(&s, &snapshot(&relocated));
    assert_eq!(diff.len(), 5, "{diff:#?}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::Permissions::from_mode(0o600);
    std::fs::set_permissions(verbatim.join("a/hard"), mode).unwrap();
    let diff = tree_diff(&s, &snapshot(&verbatim));
    assert_eq!(diff.len(), 3, "{diff:#?}"); // abs-inside, a/hard, a/b/file
}

#[test]
#[should_panic(expected = "trees differ")]
fn assert_same_tree_fails_on_difference() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("a")).unwrap();
    std::fs::create_dir(tmp.path().join("b")).unwrap();
    std::fs::write(tmp.path().join("b/x"), b"").unwrap();
    common::assert_same_tree(&snapshot(&tmp.path().join("a")), &snapshot(&tmp.path().join("b")), "a vs b");
}
