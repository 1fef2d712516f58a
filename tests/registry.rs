//! One cache, many hosts (`--registry`, `safe-prune agent`). Hosts are simulated on this
//! machine with PID and UTS namespaces (`unshare --pid --fork --uts --mount-proc`): a prune in
//! host A's namespace cannot see host B's processes, exactly like a prune on another machine.
//! The tests check that B's published entries are kept, that a process started on B after B's
//! last heartbeat is kept through the announcement protocol, that a dead B is reported stale
//! (its last entries kept) within the bounded wait, that entries used nowhere go, and that the
//! Kubernetes manifests run the right commands with the right mounts. As root, with other
//! users (`setpriv`): this host's own root agent protects what an unprivileged prune cannot
//! inspect, and a prune that cannot write its announcement removes nothing while a host is live.
#![cfg(target_os = "linux")]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::process::{alive, children_of, wait_until, Child};
use common::show;
use serde_json::{json, Value};

/// A synthetic uv cache with unreferenced archives (all removable by uv's prune) and a
/// registry folder next to it.
struct Shared {
    _tmp: tempfile::TempDir,
    cache: PathBuf,
    registry: PathBuf,
}

impl Shared {
    fn new(archives: &[&str]) -> Shared {
        let tmp = tempfile::Builder::new().prefix("safe-prune-registry-").tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let cache = root.join("cache");
        std::fs::create_dir_all(cache.join("wheels-v7")).unwrap();
        std::fs::write(cache.join("CACHEDIR.TAG"), "Signature: 8a477f597d28d172789f06886806bc55").unwrap();
        let registry = root.join("registry");
        std::fs::create_dir(&registry).unwrap();
        let shared = Shared { _tmp: tmp, cache, registry };
        for a in archives {
            shared.archive(a);
        }
        shared
    }

    fn archive(&self, name: &str) -> PathBuf {
        let dir = self.cache.join("archive-v0").join(name);
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::write(dir.join("data.bin"), vec![7u8; 4096]).unwrap();
        dir
    }

    fn exists(&self, name: &str) -> bool {
        self.cache.join("archive-v0").join(name).exists()
    }

    fn record(&self, host: &str) -> PathBuf {
        self.registry.join(format!("host-{host}.json"))
    }
}

/// A command with none of the caller's safe-prune or uv settings.
fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("UV_") || k.starts_with("SAFE_PRUNE_") {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// `safe-prune <args>` as host `host`: in fresh PID, UTS and mount namespaces (it sees only
/// its own processes), hostname and `SAFE_PRUNE_HOST_ID` set to `host`.
fn on_host(host: &str, args: &[&str]) -> Command {
    let mut cmd = clean_command("unshare");
    cmd.args(["--pid", "--fork", "--uts", "--mount-proc", "--kill-child", "sh", "-c"])
        .arg(r#"hostname "$0" && exec "$@""#)
        .arg(host)
        .arg(common::bin())
        .args(args)
        .env("SAFE_PRUNE_HOST_ID", host)
        .stdin(Stdio::null());
    cmd
}

/// Runs a prune on host A (`--format json`), returns the output and the parsed report.
fn prune_on_a(shared: &Shared, extra: &[&str]) -> (Output, Value, Duration) {
    let mut args = vec!["--format", "json", "--cache-dir", shared.cache.to_str().unwrap()];
    args.extend_from_slice(extra);
    let started = Instant::now();
    let out = on_host("hostA", &args).output().unwrap();
    let took = started.elapsed();
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out, report, took)
}

fn removed(report: &Value) -> BTreeSet<String> {
    report["removed_entries"]
        .as_array()
        .unwrap_or_else(|| panic!("no removed_entries in {report:#}"))
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect()
}

fn holders<'a>(report: &'a Value, entry: &str) -> Vec<&'a Value> {
    report["kept_in_use"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["path"] == entry)
        .flat_map(|k| k["holders"].as_array().unwrap())
        .collect()
}

fn host<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["hosts"]
        .as_array()
        .unwrap_or_else(|| panic!("no hosts in {report:#}"))
        .iter()
        .find(|h| h["host"] == name)
        .unwrap_or_else(|| panic!("host {name} not reported: {report:#}"))
}

/// Host B: its own PID/UTS/mount namespaces running `sleep` with its working directory in
/// `archive-v0/<held>` and then, as the namespace's init, `safe-prune agent --interval 1h`.
struct HostB {
    unshare: Child,
    /// The agent's pid as seen from here (init of B's PID namespace).
    agent: u32,
    _extra: Vec<Child>,
}

impl HostB {
    fn start(shared: &Shared, held: &str) -> HostB {
        let dir = shared.cache.join("archive-v0").join(held);
        let mut cmd = clean_command("unshare");
        cmd.args(["--pid", "--fork", "--uts", "--mount-proc", "--kill-child", "sh", "-c"])
            .arg(
                r#"hostname hostB && (cd "$1" && exec sleep 100000) &
                   until [ "$(cat /proc/$!/comm 2>/dev/null)" = sleep ]; do sleep 0.02; done
                   exec "$0" agent -v --registry "$2" --cache-dir "$3" --interval 1h"#,
            )
            .arg(common::bin())
            .arg(&dir)
            .arg(&shared.registry)
            .arg(&shared.cache)
            .env("SAFE_PRUNE_HOST_ID", "hostB")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(shared.registry.with_file_name("agent-b.log")).unwrap());
        let unshare = Child(cmd.spawn().unwrap());
        let mut agent = 0;
        assert!(
            wait_until(Duration::from_secs(20), || {
                agent = children_of(unshare.id()).first().copied().unwrap_or(0);
                agent != 0
            }),
            "host B's namespace did not start"
        );
        HostB { unshare, agent, _extra: Vec::new() }
    }

    /// Starts `sleep` in B's namespaces with its working directory in `archive-v0/<held>`;
    /// returns its pid as seen from here.
    fn hold(&mut self, shared: &Shared, held: &str) -> u32 {
        let dir = shared.cache.join("archive-v0").join(held);
        let mut cmd = clean_command("nsenter");
        cmd.args([
            "-t",
            &self.agent.to_string(),
            "-p",
            "-u",
            "-m",
            "--",
            "sh",
            "-c",
            r#"cd "$0" && exec sleep 100000"#,
        ])
        .arg(&dir)
        .stdin(Stdio::null());
        let nsenter = Child(cmd.spawn().unwrap());
        let mut pid = 0;
        assert!(
            wait_until(Duration::from_secs(20), || {
                pid = children_of(nsenter.id()).first().copied().unwrap_or(0);
                pid != 0 && std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|c| c == dir)
            }),
            "holder in B did not start"
        );
        self._extra.push(nsenter);
        pid
    }

    /// SIGKILL B's namespace (the agent is its init: everything in it dies).
    fn kill(&mut self) {
        self.unshare.kill();
        assert!(wait_until(Duration::from_secs(10), || !alive(self.agent)), "host B's agent survived");
    }
}

fn agent_log(shared: &Shared) -> String {
    std::fs::read_to_string(shared.registry.with_file_name("agent-b.log")).unwrap_or_default()
}

/// Waits until B's record lists `entry`; returns the record.
fn wait_for_record(shared: &Shared, entry: &str) -> Value {
    let mut record = Value::Null;
    let ok = wait_until(Duration::from_secs(30), || {
        record = std::fs::read(shared.record("hostB"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        record["entries"].as_array().is_some_and(|e| e.iter().any(|e| e["path"] == entry))
    });
    assert!(ok, "host B never published {entry}: {record:#}\nagent log:\n{}", agent_log(shared));
    record
}

#[test]
fn other_hosts_processes_are_kept_and_a_dead_host_is_stale() {
    let shared = Shared::new(&["held1", "held2", "unused"]);
    let mut b = HostB::start(&shared, "held1");
    let record = wait_for_record(&shared, "archive-v0/held1");
    assert_eq!(record["format"], 1);
    assert_eq!(record["kind"], "host");
    assert_eq!(record["host"], "hostB");
    assert_eq!(record["interval_secs"], 3600);
    assert!(record["boot_id"].as_str().is_some_and(|b| !b.is_empty()), "{record:#}");
    let published = record["entries"].as_array().unwrap()[0]["holders"].as_array().unwrap();
    assert!(published.iter().any(|h| h["evidence"] == "cwd" && h["command"] == "sleep"), "{record:#}");

    // After B's last heartbeat (interval 1h), a second process on B starts using held2.
    let holder2 = b.hold(&shared, "held2");
    let text = std::fs::read_to_string(shared.record("hostB")).unwrap();
    assert!(!text.contains("held2"), "B republished early: {text}");

    // Control: host A cannot see B's processes, so without the registry both would go.
    let (out, report, _) = prune_on_a(&shared, &["--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(
        removed(&report),
        ["archive-v0/held1", "archive-v0/held2", "archive-v0/unused"].map(String::from).into(),
        "host A saw B's processes: the namespaces do not separate the hosts\n{report:#}"
    );

    // With the registry: held1 from B's record, held2 from B's answer; unused goes.
    let (out, report, took) = prune_on_a(&shared, &["--registry", shared.registry.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}\nagent log:\n{}", show(&out), agent_log(&shared));
    assert_eq!(removed(&report), ["archive-v0/unused".to_string()].into(), "{report:#}");
    assert!(shared.exists("held1") && shared.exists("held2") && !shared.exists("unused"));
    let h1 = holders(&report, "archive-v0/held1");
    assert!(h1.iter().any(|h| h["host"] == "hostB" && h["evidence"] == "cwd"), "{report:#}");
    let h2 = holders(&report, "archive-v0/held2");
    assert!(h2.iter().any(|h| h["host"] == "hostB" && h["command"] == "sleep"), "{report:#}");
    let b_report = host(&report, "hostB");
    assert_eq!(b_report["state"], "live", "{report:#}");
    assert_eq!(b_report["answered"], true, "{report:#}");
    assert!(b_report["last_seen"].as_str().is_some_and(|t| t.ends_with('Z')), "{report:#}");
    assert!(took < Duration::from_secs(20), "the prune waited for the timeout although B answered: {took:?}");
    // The announcement and its answers are cleaned up; B's record stays.
    let names: Vec<String> = std::fs::read_dir(&shared.registry)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["host-hostB.json"], "leftovers in the registry");
    let _ = holder2;

    // A prune given B's id but running elsewhere (a container given its node's name) is not
    // B: B's agent still answers it, and B's entries are kept.
    let out =
        on_host("hostB", &["--dry-run", "--format", "json", "--cache-dir", shared.cache.to_str().unwrap()])
            .env("SAFE_PRUNE_REGISTRY", &shared.registry)
            .output()
            .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(removed(&report).is_empty(), "{report:#}");
    let b_report = host(&report, "hostB");
    assert_eq!((&b_report["state"], &b_report["answered"]), (&json!("live"), &json!(true)), "{report:#}");
    assert!(b_report["reason"].as_str().unwrap().contains("unique SAFE_PRUNE_HOST_ID"), "{report:#}");

    // B dies (agent and holders). Its last record (held1) stays protected; B is stale, and
    // the prune waited no longer than --registry-timeout.
    b.kill();
    shared.archive("unused2");
    let (out, report, took) =
        prune_on_a(&shared, &["--registry", shared.registry.to_str().unwrap(), "--registry-timeout", "3s"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(shared.exists("held1"), "a dead host's last entries must stay: {report:#}");
    assert!(!shared.exists("held2"), "held2 was used only by a process that died with B: {report:#}");
    assert!(!shared.exists("unused2"));
    assert!(holders(&report, "archive-v0/held1").iter().any(|h| h["host"] == "hostB"), "{report:#}");
    let b_report = host(&report, "hostB");
    assert_eq!(b_report["state"], "stale", "{report:#}");
    assert_eq!(b_report["answered"], false, "{report:#}");
    assert!(b_report["reason"].as_str().unwrap().contains("did not answer"), "{report:#}");
    assert!(took >= Duration::from_secs(3), "did not wait for B: {took:?}");
    assert!(took < Duration::from_secs(3 + 7), "waited far beyond --registry-timeout 3s: {took:?}");
    let stderr = {
        let out = on_host(
            "hostA",
            &["--dry-run", "--cache-dir", shared.cache.to_str().unwrap(), "--registry-timeout", "1s"],
        )
        .env("SAFE_PRUNE_REGISTRY", &shared.registry)
        .output()
        .unwrap();
        common::stderr(&out)
    };
    assert!(stderr.contains("warning: host hostB is stale"), "{stderr}");

    // --strict removes nothing while a host is stale.
    shared.archive("unused3");
    let (out, _, _) = prune_on_a(
        &shared,
        &["--strict", "--registry", shared.registry.to_str().unwrap(), "--registry-timeout", "1s"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(common::stderr(&out).contains("hostB"), "{}", show(&out));
    assert!(shared.exists("unused3"), "--strict removed something while B is stale");
}

/// A record written by hand for host `name`, holding `entries`, with its file's time set
/// `age` into the past.
fn write_record(registry: &Path, name: &str, entries: &[&str], age: Duration) {
    let now = SystemTime::now() - age;
    let secs = now.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    let record = json!({
        "format": 1, "kind": "host", "host": name, "boot_id": "test", "agent_pid": 1,
        "time": secs, "interval_secs": 60, "uninspectable": 0,
        "entries": entries.iter().map(|e| json!({"path": e, "holders": [
            {"pid": 42, "command": "python", "user": "alice", "evidence": "map", "detail": format!("/c/{e}/x.so")}
        ]})).collect::<Vec<_>>(),
    });
    let path = registry.join(format!("host-{name}.json"));
    std::fs::write(&path, serde_json::to_vec(&record).unwrap()).unwrap();
    std::fs::File::options().write(true).open(&path).unwrap().set_modified(now).unwrap();
}

fn prune_here(shared: &Shared, host: &str, extra: &[&str]) -> (Output, Value) {
    let out = clean_command(common::bin())
        .args(["--format", "json", "--cache-dir"])
        .arg(&shared.cache)
        .arg("--registry")
        .arg(&shared.registry)
        .args(extra)
        .env("SAFE_PRUNE_HOST_ID", host)
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out, report)
}

#[test]
fn stale_and_expired_records() {
    let shared = Shared::new(&["stale", "expired", "unused"]);
    // Stale (heartbeat 10 minutes old, interval 1m): not waited for, entries kept.
    write_record(&shared.registry, "old-node", &["archive-v0/stale"], Duration::from_secs(600));
    // Expired (8 days): ignored.
    write_record(&shared.registry, "gone-node", &["archive-v0/expired"], Duration::from_secs(8 * 86_400));
    let started = Instant::now();
    let (out, report) = prune_here(&shared, "pruner", &["--registry-timeout", "20s"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(started.elapsed() < Duration::from_secs(15), "waited for a host whose heartbeat is stale");
    assert!(shared.exists("stale") && !shared.exists("expired") && !shared.exists("unused"), "{report:#}");
    let old = host(&report, "old-node");
    assert_eq!(old["state"], "stale");
    assert_eq!(old["entries"], 1);
    assert!(old["age_secs"].as_u64().is_some_and(|a| (590..700).contains(&a)), "{report:#}");
    assert!(old["reason"].as_str().unwrap().contains("no heartbeat"), "{report:#}");
    let gone = host(&report, "gone-node");
    assert_eq!(gone["state"], "expired");
    assert_eq!(gone["record"], "host-gone-node.json");
    let h = holders(&report, "archive-v0/stale");
    assert!(h.iter().any(|h| h["host"] == "old-node" && h["pid"] == 42), "{report:#}");
    // The human output names both.
    shared.archive("unused");
    let out = clean_command(common::bin())
        .args(["--dry-run", "--cache-dir"])
        .arg(&shared.cache)
        .env("SAFE_PRUNE_REGISTRY", &shared.registry)
        .env("SAFE_PRUNE_HOST_ID", "pruner")
        .output()
        .unwrap();
    let err = common::stderr(&out);
    assert!(
        err.contains("warning: host old-node is stale") && err.contains("its 1 published entry is kept"),
        "{err}"
    );
    assert!(err.contains("warning: host gone-node expired"), "{err}");
    // A shorter --host-expiry expires the stale one too.
    let (out, report) = prune_here(&shared, "pruner", &["--host-expiry", "5m"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(host(&report, "old-node")["state"], "expired");
    assert!(!shared.exists("stale"));
}

#[test]
fn unusable_registry_files_stop_the_prune_and_never_free_entries() {
    let shared = Shared::new(&["a"]);
    let cases: [(&str, &[u8], &str); 3] = [
        ("host-torn.json", br#"{"format":1,"kind":"host","host":"torn","entries":[{"pa"#, "torn or garbage"),
        ("host-future.json", br#"{"format":2,"kind":"host","host":"future","entries":{}}"#, "newer"),
        ("host-odd_-0123456789abcdef.json", b"\x00\x01\x02", "torn or garbage"),
    ];
    for (name, content, why) in cases {
        std::fs::write(shared.registry.join(name), content).unwrap();
        let (out, _) = prune_here(&shared, "pruner", &["--registry-timeout", "1s"]);
        let err = common::stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{name}: {}", show(&out));
        assert!(err.contains(name) && err.contains(why) && err.contains("nothing is removed"), "{err}");
        assert!(shared.exists("a"), "{name}: removed although a host's usage is unknown");
        std::fs::remove_file(shared.registry.join(name)).unwrap();
    }
    // The registry must exist, and not inside the cache (uv's prune would delete it).
    let inside = shared.cache.join("registry");
    std::fs::create_dir(&inside).unwrap();
    for args in [vec!["--registry", inside.to_str().unwrap()], vec!["--registry", "/nonexistent/registry"]] {
        let out =
            clean_command(common::bin()).arg("--cache-dir").arg(&shared.cache).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", show(&out));
        assert!(shared.exists("a"));
        let out = clean_command(common::bin())
            .args(["agent", "--once", "--cache-dir"])
            .arg(&shared.cache)
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    }
    let out = clean_command(common::bin())
        .arg("--cache-dir")
        .arg(&shared.cache)
        .args(["--registry", inside.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(common::stderr(&out).contains("inside the uv cache"), "{}", show(&out));
}

#[test]
fn agent_once_publishes_this_hosts_processes_under_a_safe_name() {
    let shared = Shared::new(&["mine", "free"]);
    let dir = shared.cache.join("archive-v0/mine/bin");
    let _holder = Child(Command::new("sleep").arg("60").current_dir(&dir).spawn().unwrap());
    assert!(wait_until(Duration::from_secs(10), || std::fs::read_link(format!(
        "/proc/{}/cwd",
        _holder.id()
    ))
    .is_ok_and(|c| c == dir)));
    let id = "node 7/ü\u{1b}[31m";
    let out = clean_command(common::bin())
        .args(["agent", "--once", "--cache-dir"])
        .arg(&shared.cache)
        .env("SAFE_PRUNE_REGISTRY", &shared.registry)
        .env("SAFE_PRUNE_HOST_ID", id)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let names: Vec<String> = std::fs::read_dir(&shared.registry)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    let name = &names[0];
    assert!(name.starts_with("host-node_7____31m-") && name.ends_with(".json"), "{name}");
    assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)), "{name}");
    let record: Value = serde_json::from_slice(&std::fs::read(shared.registry.join(name)).unwrap()).unwrap();
    assert_eq!(record["host"], id, "the raw id is kept inside");
    let entries = record["entries"].as_array().unwrap();
    assert!(
        entries.iter().any(|e| e["path"] == "archive-v0/mine"
            && e["holders"].as_array().unwrap().iter().any(|h| h["pid"] == _holder.id())),
        "{record:#}"
    );
    assert!(!entries.iter().any(|e| e["path"] == "archive-v0/free"));
    // A prune on another host keeps it, and prints the odd id escaped.
    let out = clean_command(common::bin())
        .args(["-v", "--cache-dir"])
        .arg(&shared.cache)
        .env("SAFE_PRUNE_REGISTRY", &shared.registry)
        .env("SAFE_PRUNE_HOST_ID", "other")
        .args(["--registry-timeout", "1s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let err = common::stderr(&out);
    assert!(err.contains("node 7/ü\\u{1b}[31m") && !err.contains('\u{1b}'), "{err}");
}

// ---------------------------------------------------------------------------------------------
// This host's own agent, and a prune that cannot write the registry (both need other users)

/// True when this test runs as root (it switches users with `setpriv`). Without root it
/// fails under `CI=true`, else it is skipped with a message.
fn root_or_skip() -> bool {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "this test must run as root in CI (it runs processes as other users)"
    );
    eprintln!("skipping: not root, cannot switch to other users");
    false
}

/// The user an unprivileged prune runs as (`nobody`), and another user whose processes it
/// cannot inspect.
const PRUNER_UID: u32 = 65534;
const OTHER_UID: u32 = 65533;

/// Makes `shared` a group-shared cache as an unprivileged user would prune it: the temp folder
/// traversable, the cache owned by [`PRUNER_UID`], and a copy of the binary it can run.
fn share_with_pruner(shared: &Shared) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let root = shared.registry.parent().unwrap();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{PRUNER_UID}:{PRUNER_UID}"))
        .arg(&shared.cache)
        .status()
        .unwrap();
    assert!(status.success());
    let bin = root.join("safe-prune");
    std::fs::copy(common::bin(), &bin).unwrap();
    bin
}

/// `program` as `uid` (its group too, no supplementary groups), with an empty environment.
fn as_user(uid: u32, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg(program)
        .env_clear()
        .stdin(Stdio::null());
    cmd
}

/// `sleep` as [`OTHER_UID`] with its working directory in `archive-v0/<held>`: visible to a
/// root agent, uninspectable for the pruner.
fn other_users_holder(shared: &Shared, held: &str) -> Child {
    let dir = shared.cache.join("archive-v0").join(held);
    let child = Child(as_user(OTHER_UID, "sleep").arg("100000").current_dir(&dir).spawn().unwrap());
    let pid = child.id();
    assert!(
        wait_until(Duration::from_secs(20), || {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
                && std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|c| c == dir)
        }),
        "the other user's holder did not start"
    );
    child
}

/// A prune (`--format json`) as [`PRUNER_UID`] on host `hostA`.
fn prune_as_pruner(bin: &Path, shared: &Shared, extra: &[&str]) -> (Output, Value) {
    let out = as_user(PRUNER_UID, bin)
        .args(["--format", "json", "--cache-dir"])
        .arg(&shared.cache)
        .args(extra)
        .env("SAFE_PRUNE_HOST_ID", "hostA")
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out, report)
}

#[test]
fn this_hosts_root_agent_protects_what_an_unprivileged_prune_cannot_see() {
    if !root_or_skip() {
        return;
    }
    let shared = Shared::new(&["seen", "late", "unused"]);
    let bin = share_with_pruner(&shared);
    Command::new("chown").arg(format!("{PRUNER_UID}:{PRUNER_UID}")).arg(&shared.registry).status().unwrap();
    let registry = shared.registry.to_str().unwrap();
    let holder = other_users_holder(&shared, "seen");
    // The node's agent, as root, on this host (same id, boot and PID namespace as the prune).
    let log = shared.registry.with_file_name("agent-a.log");
    let _agent = Child(
        clean_command(common::bin())
            .args(["agent", "-v", "--registry", registry, "--interval", "1h", "--cache-dir"])
            .arg(&shared.cache)
            .env("SAFE_PRUNE_HOST_ID", "hostA")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let mut record = Value::Null;
    let published = wait_until(Duration::from_secs(30), || {
        record = std::fs::read(shared.record("hostA"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        record["entries"].as_array().is_some_and(|e| e.iter().any(|e| e["path"] == "archive-v0/seen"))
    });
    let agent_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(published, "the agent never published archive-v0/seen: {record:#}\n{}", agent_log());
    // After the agent's last heartbeat (interval 1h), another of that user's processes starts.
    let late = other_users_holder(&shared, "late");

    // Control: the unprivileged prune cannot see either process.
    let (out, report) = prune_as_pruner(&bin, &shared, &["--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(
        removed(&report),
        ["archive-v0/late", "archive-v0/seen", "archive-v0/unused"].map(String::from).into(),
        "the prune saw the other user's processes: the test proves nothing\n{report:#}"
    );

    // With the registry: `seen` from this host's record, `late` from its agent's answer.
    let (out, report) = prune_as_pruner(&bin, &shared, &["--registry", registry]);
    assert_eq!(out.status.code(), Some(0), "{}\nagent log:\n{}", show(&out), agent_log());
    assert_eq!(removed(&report), ["archive-v0/unused".to_string()].into(), "{report:#}");
    assert!(shared.exists("seen") && shared.exists("late") && !shared.exists("unused"));
    let seen = holders(&report, "archive-v0/seen");
    assert!(seen.iter().any(|h| h["host"] == "hostA" && h["pid"] == holder.id()), "{report:#}");
    let late_holders = holders(&report, "archive-v0/late");
    assert!(late_holders.iter().any(|h| h["host"] == "hostA" && h["pid"] == late.id()), "{report:#}");
    let me = host(&report, "hostA");
    assert_eq!(
        (&me["this_host"], &me["state"], &me["answered"]),
        (&json!(true), &json!("live"), &json!(true)),
        "{report:#}"
    );
}

#[test]
fn a_registry_the_prune_cannot_write_removes_nothing_while_a_host_is_live() {
    use std::os::unix::fs::PermissionsExt;
    if !root_or_skip() {
        return;
    }
    let shared = Shared::new(&["b-uses", "unused"]);
    // uv's lock file exists already (a run that removes things would create it).
    std::fs::write(shared.cache.join(".lock"), "").unwrap();
    let bin = share_with_pruner(&shared);
    let registry = shared.registry.to_str().unwrap();
    // Host B is live (fresh heartbeat): a tool it started after that could use `unused`.
    write_record(&shared.registry, "hostB", &["archive-v0/b-uses"], Duration::ZERO);
    std::fs::set_permissions(&shared.registry, std::fs::Permissions::from_mode(0o555)).unwrap();
    let before = common::snapshot(&shared.cache);
    let (out, _) = prune_as_pruner(&bin, &shared, &["--registry", registry, "--registry-timeout", "5s"]);
    let err = common::stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains(registry)
            && err.contains("hostB")
            && err.contains("nothing is removed")
            && err.contains("writable"),
        "{err}"
    );
    common::assert_same_tree(&before, &common::snapshot(&shared.cache), "after an unannounced prune");
    let names: Vec<String> = std::fs::read_dir(&shared.registry)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["host-hostB.json"]);

    // Once B is stale (no heartbeat for 10 minutes, interval 1m; by its own time and by the
    // file's, as without the file server's clock the younger age counts) nobody could answer
    // anyway: its last entries are kept and the rest goes.
    write_record(&shared.registry, "hostB", &["archive-v0/b-uses"], Duration::from_secs(600));
    let (out, report) = prune_as_pruner(&bin, &shared, &["--registry", registry]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(removed(&report), ["archive-v0/unused".to_string()].into(), "{report:#}");
    assert_eq!(host(&report, "hostB")["state"], "stale", "{report:#}");
}

// ---------------------------------------------------------------------------------------------
// Kubernetes manifests

fn yaml_docs(name: &str) -> Vec<yaml_rust2::Yaml> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kubernetes").join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    yaml_rust2::YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn strings(y: &yaml_rust2::Yaml) -> Vec<String> {
    y.as_vec().map(|v| v.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
}

/// The value after `flag` in `args`.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str)
}

/// (mountPath → (volume, subPath, readOnly)) of a container.
fn mounts(container: &yaml_rust2::Yaml) -> Vec<(String, String, String, bool)> {
    container["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["mountPath"].as_str().unwrap().to_string(),
                m["name"].as_str().unwrap().to_string(),
                m["subPath"].as_str().unwrap_or("").to_string(),
                m["readOnly"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

fn mount<'a>(list: &'a [(String, String, String, bool)], path: &str) -> &'a (String, String, String, bool) {
    list.iter().find(|m| m.0 == path).unwrap_or_else(|| panic!("nothing mounted at {path}: {list:?}"))
}

#[test]
fn kubernetes_manifests_run_the_agent_and_the_prune_on_the_shared_volume() {
    let docs = yaml_docs("safe-prune-agent.yaml");
    let ds = docs.iter().find(|d| d["kind"].as_str() == Some("DaemonSet")).expect("a DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"].as_bool(), Some(true), "the agent must see the node's processes");
    let c = &pod["containers"][0];
    let command = [strings(&c["command"]), strings(&c["args"])].concat();
    assert!(command[0].ends_with("/safe-prune"), "{command:?}");
    assert_eq!(command[1], "agent", "{command:?}");
    let registry = flag(&command, "--registry").expect("--registry");
    let cache = flag(&command, "--cache-dir").expect("--cache-dir");
    assert!(!Path::new(registry).starts_with(cache), "registry inside the cache");
    let m = mounts(c);
    let (_, cache_vol, cache_sub, cache_ro) = mount(&m, cache);
    let (_, reg_vol, reg_sub, reg_ro) = mount(&m, registry);
    assert!(*cache_ro, "the agent's cache mount must be read-only");
    assert!(!*reg_ro, "the agent writes the registry");
    assert_eq!(cache_vol, reg_vol, "registry and cache on the same shared volume");
    assert!(!Path::new(reg_sub).starts_with(cache_sub) && reg_sub != cache_sub, "registry inside the cache");
    let env = c["env"].as_vec().unwrap();
    let host_id = env.iter().find(|e| e["name"].as_str() == Some("SAFE_PRUNE_HOST_ID")).expect("host id");
    assert_eq!(host_id["valueFrom"]["fieldRef"]["fieldPath"].as_str(), Some("spec.nodeName"));
    let caps = strings(&c["securityContext"]["capabilities"]["add"]);
    assert!(caps.contains(&"SYS_PTRACE".to_string()), "{caps:?}");
    let volumes = pod["volumes"].as_vec().unwrap();
    let claim = volumes.iter().find(|v| v["name"].as_str() == Some(cache_vol.as_str())).unwrap();
    let claim = claim["persistentVolumeClaim"]["claimName"].as_str().unwrap().to_string();

    let docs = yaml_docs("safe-prune-cronjob.yaml");
    let cj = docs.iter().find(|d| d["kind"].as_str() == Some("CronJob")).expect("a CronJob");
    assert_eq!(cj["spec"]["concurrencyPolicy"].as_str(), Some("Forbid"));
    let pod = &cj["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let command = [strings(&c["command"]), strings(&c["args"])].concat();
    assert!(command[0].ends_with("/safe-prune") && !command.contains(&"agent".to_string()), "{command:?}");
    let registry2 = flag(&command, "--registry").expect("the prune must use --registry");
    let cache2 = flag(&command, "--cache-dir").expect("--cache-dir");
    let m = mounts(c);
    let (_, vol2, sub2, ro2) = mount(&m, cache2);
    let (_, rvol2, rsub2, rro2) = mount(&m, registry2);
    assert!(!*ro2 && !*rro2, "the prune writes the cache and the registry");
    assert_eq!((sub2, rsub2), (cache_sub, reg_sub), "same folders as the agents");
    assert_eq!(vol2, rvol2);
    let volumes = pod["volumes"].as_vec().unwrap();
    let v = volumes.iter().find(|v| v["name"].as_str() == Some(vol2.as_str())).unwrap();
    assert_eq!(v["persistentVolumeClaim"]["claimName"].as_str(), Some(claim.as_str()));

    let docs = yaml_docs("storage.yaml");
    let pvc = docs.iter().find(|d| d["kind"].as_str() == Some("PersistentVolumeClaim")).unwrap();
    assert_eq!(pvc["metadata"]["name"].as_str(), Some(claim.as_str()));
    assert!(strings(&pvc["spec"]["accessModes"]).contains(&"ReadWriteMany".to_string()));
}

#[test]
fn systemd_unit_runs_the_agent() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/systemd/safe-prune-agent.service"),
    )
    .unwrap();
    let exec = unit.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
    assert!(exec.contains("safe-prune agent"), "{exec}");
    assert!(unit.contains("SAFE_PRUNE_REGISTRY=") && unit.contains("RequiresMountsFor="), "{unit}");
}

// ---------------------------------------------------------------------------------------------
// `safe-prune schedule install --agent`

/// `safe-prune <args>` with HOME and XDG_CONFIG_HOME in `home` and a fake `systemctl` (logging
/// its arguments to `home/systemctl.log`) first on PATH.
fn with_fake_systemctl(home: &Path, args: &[&str]) -> Output {
    use std::os::unix::fs::PermissionsExt;
    let fake = home.join("fakebin");
    if !fake.exists() {
        std::fs::create_dir_all(&fake).unwrap();
        let script = fake.join("systemctl");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"$*\" >> '{}'\ncase \"$2\" in is-enabled) echo enabled;; is-active) echo active;; esac\n",
                home.join("systemctl.log").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = std::env::join_paths(
        std::iter::once(fake).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .unwrap();
    clean_command(common::bin())
        .args(args)
        .env("PATH", path)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("SAFE_PRUNE_HOST_ID", "node-1")
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .output()
        .unwrap()
}

#[test]
fn schedule_install_agent_writes_a_service_that_runs_the_agent() {
    let shared = Shared::new(&["a"]);
    let home = shared.registry.with_file_name("home");
    std::fs::create_dir_all(&home).unwrap();
    let (cache, registry) = (shared.cache.to_str().unwrap(), shared.registry.to_str().unwrap());
    let install = [
        "schedule",
        "install",
        "--agent",
        "--backend",
        "systemd",
        "--cache-dir",
        cache,
        "--registry",
        registry,
    ];
    let out = with_fake_systemctl(&home, &[&install[..], &["--no-enable"]].concat());
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let unit = home.join(".config/systemd/user/safe-prune-agent.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(text.starts_with("# Written by safe-prune schedule install"), "{text}");
    for line in
        ["Type=simple", "Restart=always", "WantedBy=default.target", "Environment=SAFE_PRUNE_HOST_ID=node-1"]
    {
        assert!(text.lines().any(|l| l == line), "no {line}:\n{text}");
    }
    let exec = text.lines().find_map(|l| l.strip_prefix("ExecStart=")).unwrap();
    let argv: Vec<&str> = exec.split(' ').collect();
    let program = common::bin().canonicalize().unwrap();
    assert_eq!(
        argv,
        [
            program.to_str().unwrap(),
            "agent",
            "--cache-dir",
            cache,
            "--registry",
            registry,
            "--interval",
            "1m"
        ]
    );
    assert!(!std::fs::read_to_string(home.join("systemctl.log")).is_ok_and(|l| !l.is_empty()));
    if let Some(analyze) =
        ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"].iter().find(|p| Path::new(p).exists())
    {
        use std::os::unix::fs::PermissionsExt;
        let runtime = home.join("runtime");
        std::fs::create_dir_all(&runtime).unwrap();
        std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
        let out = Command::new(analyze)
            .args(["--user", "verify"])
            .arg(&unit)
            .env("XDG_RUNTIME_DIR", &runtime)
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .output()
            .unwrap();
        let err = common::stderr(&out);
        assert!(out.status.success() && !err.contains("safe-prune-agent"), "systemd-analyze: {}", show(&out));
    }
    // The unit's command works (once, here).
    let out = clean_command(argv[0])
        .args(&argv[1..])
        .arg("--once")
        .env("SAFE_PRUNE_HOST_ID", "node-1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(shared.record("node-1").exists());

    // Enabling goes through systemctl; status and uninstall find the unit.
    let out = with_fake_systemctl(&home, &install);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let calls = std::fs::read_to_string(home.join("systemctl.log")).unwrap();
    assert!(
        calls.contains("--user daemon-reload")
            && calls.contains("--user enable --now safe-prune-agent.service"),
        "{calls}"
    );
    let out = with_fake_systemctl(
        &home,
        &["schedule", "status", "--agent", "--backend", "systemd", "--format", "json"],
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", show(&out)));
    assert_eq!((&doc["installed"], &doc["enabled"]), (&json!(true), &json!("enabled, active")), "{doc:#}");
    let out = with_fake_systemctl(&home, &["schedule", "uninstall", "--agent", "--backend", "systemd"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(!unit.exists());
    assert!(std::fs::read_to_string(home.join("systemctl.log"))
        .unwrap()
        .contains("disable --now safe-prune-agent.service"));

    // Checked at install time: the registry inside the cache, and no registry at all.
    let inside = shared.cache.join("reg");
    std::fs::create_dir(&inside).unwrap();
    let out = with_fake_systemctl(
        &home,
        &[
            "schedule",
            "install",
            "--agent",
            "--no-enable",
            "--cache-dir",
            cache,
            "--registry",
            inside.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(common::stderr(&out).contains("inside the uv cache"), "{}", show(&out));
    let out =
        with_fake_systemctl(&home, &["schedule", "install", "--agent", "--no-enable", "--cache-dir", cache]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(!unit.exists());
}

// ---------------------------------------------------------------------------------------------
// Measurements (`scripts/test --test registry -- --ignored --nocapture --test-threads 1`)

/// Answers every announcement for the given simulated hosts with "clear", until dropped.
struct FakeAgents {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeAgents {
    fn start(registry: &Path, hosts: Vec<String>) -> FakeAgents {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (dir, flag) = (registry.to_path_buf(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut done = BTreeSet::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                for e in std::fs::read_dir(&dir).unwrap().flatten() {
                    let name = e.file_name().into_string().unwrap();
                    let Some(rest) = name.strip_prefix("announce-").and_then(|n| n.strip_suffix(".json"))
                    else {
                        continue;
                    };
                    let nonce = rest.rsplit_once('-').unwrap().1.to_string();
                    if !done.insert(nonce.clone()) {
                        continue;
                    }
                    for h in &hosts {
                        let answer = json!({"format": 1, "kind": "answer", "nonce": nonce, "host": h,
                                            "time": 0, "status": "clear", "vetoes": []});
                        let tmp = dir.join(format!(".tmp-{h}"));
                        std::fs::write(&tmp, serde_json::to_vec(&answer).unwrap()).unwrap();
                        std::fs::rename(&tmp, dir.join(format!("answer-{nonce}-{h}.json"))).unwrap();
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        FakeAgents { stop, thread: Some(thread) }
    }
}

impl Drop for FakeAgents {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn median_run(shared: &Shared, args: &[&str], runs: usize) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            let out = clean_command(common::bin())
                .args(["--dry-run", "-q", "--cache-dir"])
                .arg(&shared.cache)
                .args(args)
                .env("SAFE_PRUNE_HOST_ID", "pruner")
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(0), "{}", show(&out));
            started.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

#[test]
#[ignore = "measurement; run with --ignored --nocapture --test-threads 1"]
fn measure_prune_time_with_many_hosts() {
    let names: Vec<String> = (0..200).map(|i| format!("a{i:03}")).collect();
    let shared = Shared::new(&names.iter().map(String::as_str).collect::<Vec<_>>());
    let registry = shared.registry.to_str().unwrap().to_string();
    let base = median_run(&shared, &[], 7);
    eprintln!("baseline (no registry), 200 removable archives: {base:?}");
    for n in [1usize, 10, 100] {
        for f in std::fs::read_dir(&shared.registry).unwrap().flatten() {
            std::fs::remove_file(f.path()).unwrap();
        }
        let hosts: Vec<String> = (0..n).map(|i| format!("node{i:03}")).collect();
        for (i, h) in hosts.iter().enumerate() {
            // Each host holds 3 entries (90 % of which the plan would otherwise remove).
            let entries: Vec<String> =
                (0..3).map(|k| format!("archive-v0/{}", names[(i * 3 + k) % 200])).collect();
            write_record(
                &shared.registry,
                h,
                &entries.iter().map(String::as_str).collect::<Vec<_>>(),
                Duration::ZERO,
            );
        }
        let answering = {
            let _agents = FakeAgents::start(&shared.registry, hosts.clone());
            median_run(&shared, &["--registry", &registry], 7)
        };
        // The same records, stale (heartbeat 10 min old): read and merged, not waited for.
        for h in &hosts {
            let p = shared.record(h);
            let t = SystemTime::now() - Duration::from_secs(600);
            std::fs::File::options().write(true).open(&p).unwrap().set_modified(t).unwrap();
        }
        let stale = median_run(&shared, &["--registry", &registry], 7);
        eprintln!(
            "{n:>3} hosts: answering {answering:?} (+{:?}), stale records only {stale:?} (+{:?})",
            answering.saturating_sub(base),
            stale.saturating_sub(base)
        );
    }
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
#[ignore = "measurement; run with --ignored --nocapture --test-threads 1"]
fn measure_agent_cpu_per_interval() {
    let shared = Shared::new(&["a", "b"]);
    let ticks = 100.0; // USER_HZ
                       // One publish cycle, whole process (start, locate, scan of every process here, write).
    let mut cpu_once = Vec::new();
    for _ in 0..5 {
        let child = clean_command(common::bin())
            .args(["agent", "--once", "--cache-dir"])
            .arg(&shared.cache)
            .args(["--registry", shared.registry.to_str().unwrap()])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let mut status = 0;
        // SAFETY: rusage is plain data filled by the kernel for our own child.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        assert_eq!(r, pid);
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        cpu_once.push(secs(usage.ru_utime) + secs(usage.ru_stime));
        std::mem::forget(child);
    }
    cpu_once.sort_by(f64::total_cmp);
    let processes = std::fs::read_dir("/proc")
        .unwrap()
        .filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok()))
        .count();
    eprintln!(
        "agent --once (one publish cycle, {processes} processes): median {:.1} ms CPU",
        cpu_once[2] * 1e3
    );
    // Steady state: polling only (interval 1h), then publishing every second.
    for (interval, seconds) in [("1h", 20u64), ("1s", 20)] {
        let child = Child(
            clean_command(common::bin())
                .args(["agent", "--cache-dir"])
                .arg(&shared.cache)
                .args(["--registry", shared.registry.to_str().unwrap(), "--interval", interval])
                .spawn()
                .unwrap(),
        );
        std::thread::sleep(Duration::from_secs(2));
        let before = cpu_ticks(child.id());
        std::thread::sleep(Duration::from_secs(seconds));
        let used = (cpu_ticks(child.id()) - before) as f64 / ticks;
        eprintln!(
            "agent --interval {interval}: {:.1} ms CPU per second of running ({:.1} ms over {seconds}s)",
            used * 1e3 / seconds as f64,
            used * 1e3
        );
    }
}
