//! `safe-prune clean PACKAGE` reads the `metadata.msgpack` of every source-distribution
//! revision built from a URL, a path or git to learn its package. A FIFO under that name (no
//! writer: reading it waits forever) or a link to `/dev/zero` (endless) must not hang the
//! clean or exhaust its memory: the clean finishes, removes the package's real entries, says
//! so, and leaves the odd files alone.

use std::os::unix::fs::{symlink, FileTypeExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn clean_package_skips_fifo_and_endless_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().canonicalize().unwrap().join("cache");
    write(&cache.join("CACHEDIR.TAG"), b"Signature: 8a477f597d28d172789f06886806bc55\n");
    // A path-built sdist of `localpkg` (uv's layout: the name first in a msgpack array) and the
    // archive its built wheel links to.
    write(&cache.join("sdists-v10/path/p1/rev1/metadata.msgpack"), b"\x92\xa8localpkg\xa31.0");
    write(&cache.join("archive-v0/local/localpkg/__init__.py"), b"");
    symlink("../../../../archive-v0/local", cache.join("sdists-v10/path/p1/rev1/localpkg-1.0")).unwrap();
    // The odd ones, sorted before and after it.
    let fifo = cache.join("sdists-v10/path/a-fifo/rev/metadata.msgpack");
    std::fs::create_dir_all(fifo.parent().unwrap()).unwrap();
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let zero = cache.join("sdists-v10/path/z-zero/rev/metadata.msgpack");
    std::fs::create_dir_all(zero.parent().unwrap()).unwrap();
    symlink("/dev/zero", &zero).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_safe-prune"))
        .args(["clean", "localpkg", "--cache-dir"])
        .arg(&cache)
        .env_remove("UV_CACHE_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A bound on waiting, not on speed: without the guard the clean never finishes.
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("safe-prune clean did not finish (blocked on the FIFO?)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.starts_with("Removed 3 files"), "{text}");
    assert!(!text.contains("error"), "{text}");

    assert!(!cache.join("sdists-v10/path/p1").exists(), "{text}");
    assert!(!cache.join("archive-v0/local").exists(), "{text}");
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    assert_eq!(std::fs::read_link(&zero).unwrap(), Path::new("/dev/zero"));
}
