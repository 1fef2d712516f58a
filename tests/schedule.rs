//! `safe-prune schedule`: install writes exactly a service and a timer that systemd accepts
//! (or a plist, or a crontab line, all running the same command), the unit's own command line
//! run with a bare environment prunes the pinned cache while keeping a running tool and logs
//! the run, `--if-grown` skips without scanning, and uninstall removes only what install wrote.
//!
//! No test talks to a real service manager: `systemctl` is a fake first on PATH that records
//! its arguments, `XDG_RUNTIME_DIR` is an empty folder and no D-Bus address is inherited.
//! `launchctl` is never run (on Linux, install and uninstall do not call it).
#![cfg(target_os = "linux")]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::process::become_subreaper;
use common::{show, stderr, TestEnv};
use serde_json::Value;

const MARKER: &str = "# Written by safe-prune schedule install; safe-prune schedule uninstall removes it.";

/// A cache folder name that needs quoting everywhere: space, `%`, `$`, a quote.
const ODD_NAME: &str = "uv cache 100% $HOME it's";

fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// A minimal uv cache at `dir` (tag, a bucket) with `archives` unreferenced archives.
fn synthetic_cache(dir: &Path, archives: usize) -> PathBuf {
    std::fs::create_dir_all(dir.join("wheels-v7")).unwrap();
    std::fs::write(dir.join("CACHEDIR.TAG"), "Signature: 8a477f597d28d172789f06886806bc55").unwrap();
    for i in 0..archives {
        add_archive(dir, &format!("a{i}"));
    }
    dir.canonicalize().unwrap()
}

fn add_archive(cache: &Path, name: &str) {
    let entry = cache.join("archive-v0").join(name);
    std::fs::create_dir_all(&entry).unwrap();
    std::fs::write(entry.join("data.bin"), vec![7u8; 4096]).unwrap();
}

/// `safe-prune <args>` in the isolated environment, with a fake `systemctl` first on PATH
/// (it logs its arguments to `systemctl.log`; it fails like a missing user manager when
/// `FAKE_SYSTEMCTL_FAIL` is set) and no way to reach a real systemd manager.
fn safe_prune(env: &TestEnv, args: &[&str], fail_systemctl: bool) -> Output {
    let fake = env.path("fakebin");
    if !fake.exists() {
        std::fs::create_dir_all(&fake).unwrap();
        let script = fake.join("systemctl");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"$*\" >> '{}'\nif [ -n \"$FAKE_SYSTEMCTL_FAIL\" ]; then echo 'Failed to connect to bus: No such file or directory' >&2; exit 1; fi\ncase \"$2\" in is-enabled) echo enabled;; is-active) echo active;; esac\n",
                env.path("systemctl.log").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let runtime = env.path("runtime");
        std::fs::create_dir_all(&runtime).unwrap();
        std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let mut cmd = env.command(common::bin());
    let path = std::env::join_paths(
        std::iter::once(fake).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .unwrap();
    cmd.args(args)
        .env("PATH", path)
        .env("XDG_RUNTIME_DIR", env.path("runtime"))
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .env_remove("FAKE_SYSTEMCTL_FAIL")
        .stdin(Stdio::null());
    if fail_systemctl {
        cmd.env("FAKE_SYSTEMCTL_FAIL", "1");
    }
    cmd.output().unwrap()
}

fn systemctl_calls(env: &TestEnv) -> Vec<String> {
    std::fs::read_to_string(env.path("systemctl.log")).unwrap_or_default().lines().map(String::from).collect()
}

fn units_dir(env: &TestEnv) -> PathBuf {
    // TestEnv sets XDG_CONFIG_HOME=<home>/.config.
    env.home.join(".config/systemd/user")
}

fn state_dir(env: &TestEnv) -> PathBuf {
    env.home.join(".local/state/safe-prune")
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

/// The last value of `key=` in a unit file.
fn unit_value(text: &str, key: &str) -> String {
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in\n{text}"))
        .to_string()
}

/// Reads a unit-file value the way systemd does (systemd.syntax(7), systemd.service(5)):
/// `%%` is `%` (specifiers are expanded on the whole line first), words are split on
/// whitespace, quotes are removed and C escapes decoded; in `ExecStart=` `$$` is `$`.
/// Written independently of `src/schedule/systemd.rs`, to check it.
fn systemd_words(value: &str, exec: bool) -> Vec<String> {
    let mut line = String::new();
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '%' {
            assert_eq!(chars.next(), Some('%'), "an unexpected specifier in {value:?}");
        }
        line.push(c);
    }
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quote = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' if quote.is_none() => words.extend(word.take()),
            '"' | '\'' if quote.is_none() => {
                quote = Some(c);
                word.get_or_insert_with(String::new);
            }
            c if Some(c) == quote => quote = None,
            '\\' => {
                let e = chars.next().expect("a backslash at the end");
                let decoded = match e {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    's' => ' ',
                    'x' => {
                        let hex: String = chars.by_ref().take(2).collect();
                        char::from(u8::from_str_radix(&hex, 16).unwrap())
                    }
                    other => other,
                };
                word.get_or_insert_with(String::new).push(decoded);
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    assert!(quote.is_none(), "unterminated quote in {value:?}");
    words.extend(word);
    if exec {
        for w in &mut words {
            assert!(!w.replace("$$", "").contains('$'), "an unexpected variable in {w:?}");
            *w = w.replace("$$", "$");
        }
    }
    words
}

/// The command and environment of the written service, as systemd would run them.
fn service_command(env: &TestEnv) -> (Vec<String>, Vec<(String, String)>) {
    let text = std::fs::read_to_string(units_dir(env).join("safe-prune.service")).unwrap();
    let argv = systemd_words(&unit_value(&text, "ExecStart"), true);
    let vars = text
        .lines()
        .filter_map(|l| l.strip_prefix("Environment="))
        .flat_map(|v| systemd_words(v, false))
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    (argv, vars)
}

/// Runs a scheduled command line the way a service manager would: a bare environment (HOME,
/// PATH=/usr/bin:/bin, the unit's Environment=), no UV_CACHE_DIR, no terminal, cwd `/`;
/// under `strace -f -e trace=openat,open` (output in `trace`) when given.
fn run_bare(env: &TestEnv, argv: &[String], vars: &[(String, String)], trace: Option<&Path>) -> Output {
    let mut cmd = match trace {
        Some(file) => {
            let mut cmd = Command::new(strace().unwrap());
            cmd.args(["-f", "-qq", "-e", "trace=openat,open", "-o"]).arg(file).args(argv);
            cmd
        }
        None => {
            let mut cmd = Command::new(&argv[0]);
            cmd.args(&argv[1..]);
            cmd
        }
    };
    cmd.env_clear()
        .env("HOME", &env.home)
        .env("PATH", "/usr/bin:/bin")
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The run log's lines.
fn runs(env: &TestEnv) -> Vec<Value> {
    std::fs::read_to_string(state_dir(env).join("runs.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad run-log line {l:?}: {e}")))
        .collect()
}

fn find_tool(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain(["/usr/bin".into(), "/bin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `systemd-analyze`: required in CI (.ci/run installs Debian's `systemd`), else optional.
fn systemd_analyze() -> Option<PathBuf> {
    let found = find_tool("systemd-analyze");
    assert!(
        found.is_some() || !in_ci(),
        "systemd-analyze is missing and CI=true: the units must be verified in CI (.ci/run installs the `systemd` package)"
    );
    found
}

/// `strace`, if it can trace here (required in CI: .ci/run installs it).
fn strace() -> Option<PathBuf> {
    let found = find_tool("strace").filter(|s| {
        Command::new(s)
            .args(["-f", "-qq", "-e", "trace=none", "true"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    assert!(
        found.is_some() || !in_ci(),
        "strace is missing or cannot trace, and CI=true (.ci/run installs it)"
    );
    found
}

/// Paths a traced run opened.
fn opened(trace: &Path) -> Vec<String> {
    std::fs::read_to_string(trace)
        .unwrap()
        .lines()
        .filter_map(|l| {
            l.split_once('"').and_then(|(_, rest)| rest.split_once('"')).map(|(p, _)| p.to_string())
        })
        .collect()
}

/// What a process scan opens: `/proc` itself, `/proc/<pid>/...`, `/proc/self/mountinfo`.
fn scan_opens(paths: &[String]) -> Vec<&String> {
    paths
        .iter()
        .filter(|p| {
            *p == "/proc"
                || p.strip_prefix("/proc/").is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
                || *p == "/proc/self/mountinfo"
        })
        .collect()
}

#[test]
fn install_writes_one_service_and_timer_systemd_accepts_and_uninstall_removes_only_them() {
    let env = TestEnv::new();
    let cache = synthetic_cache(&env.path(ODD_NAME), 1);
    let dir = units_dir(&env);
    std::fs::create_dir_all(&dir).unwrap();
    let other = "[Unit]\nDescription=someone else's backup\n\n[Service]\nType=oneshot\nExecStart=/bin/true\n";
    std::fs::write(dir.join("backup.service"), other).unwrap();

    let out = safe_prune(
        &env,
        &["schedule", "install", "--no-enable", "--cache-dir", cache.to_str().unwrap()],
        false,
    );
    assert!(out.status.success(), "{}", show(&out));
    assert!(stderr(&out).contains("systemctl --user enable --now safe-prune.timer"), "{}", show(&out));
    assert!(systemctl_calls(&env).is_empty(), "--no-enable ran systemctl: {:?}", systemctl_calls(&env));
    assert_eq!(names_in(&dir), ["backup.service", "safe-prune.service", "safe-prune.timer"]);
    assert!(
        !cache.join("safe-prune").exists() && names_in(&cache) == ["CACHEDIR.TAG", "archive-v0", "wheels-v7"]
    );

    let service = std::fs::read_to_string(dir.join("safe-prune.service")).unwrap();
    let timer = std::fs::read_to_string(dir.join("safe-prune.timer")).unwrap();
    for text in [&service, &timer] {
        assert_eq!(text.lines().next(), Some(MARKER), "{text}");
    }
    for line in ["Type=oneshot", "Nice=19", "IOSchedulingClass=idle", "CPUSchedulingPolicy=batch"] {
        assert!(service.lines().any(|l| l == line), "no {line}:\n{service}");
    }
    for line in
        ["OnCalendar=*-*-* 00:00:00", "Persistent=true", "RandomizedDelaySec=3600", "WantedBy=timers.target"]
    {
        assert!(timer.lines().any(|l| l == line), "no {line}:\n{timer}");
    }
    // The command: this binary (canonical), the cache pinned, the default --keep-tools.
    let (argv, vars) = service_command(&env);
    let program = common::bin().canonicalize().unwrap();
    assert_eq!(
        argv,
        [
            program.to_str().unwrap(),
            "prune",
            "--scheduled",
            "--cache-dir",
            cache.to_str().unwrap(),
            "--keep-tools"
        ]
    );
    assert_eq!(
        vars,
        [("XDG_STATE_HOME".to_string(), env.home.join(".local/state").to_str().unwrap().to_string())]
    );

    if let Some(analyze) = systemd_analyze() {
        let out = Command::new(&analyze)
            .args(["--user", "verify"])
            .arg(dir.join("safe-prune.timer"))
            .arg(dir.join("safe-prune.service"))
            .env("XDG_RUNTIME_DIR", env.path("runtime"))
            .env("XDG_CONFIG_HOME", env.home.join(".config"))
            .env("HOME", &env.home)
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .output()
            .unwrap();
        assert!(out.status.success(), "systemd-analyze verify refused the units:\n{}", show(&out));
        let complaints: Vec<&str> = std::str::from_utf8(&out.stderr)
            .unwrap()
            .lines()
            .filter(|l| l.contains("safe-prune.service") || l.contains("safe-prune.timer"))
            .collect();
        assert!(complaints.is_empty(), "systemd-analyze warned about the units: {complaints:#?}");
    } else {
        eprintln!("systemd-analyze not found (not CI): units not verified");
    }

    // status reads the files back.
    let out = safe_prune(&env, &["schedule", "status"], true);
    assert!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Installed: systemd user timer"), "{text}");
    assert!(
        text.contains("every:    1d (OnCalendar=*-*-* 00:00:00, Persistent=true, RandomizedDelaySec=3600)"),
        "{text}"
    );
    assert!(text.contains(&format!("cache:    {}\n", cache.display())), "{text}");
    assert!(text.contains("options:  --keep-tools\n"), "{text}");
    assert!(
        text.contains("enabled:  unknown (no systemd manager reachable: Failed to connect to bus"),
        "{text}"
    );
    assert!(text.contains("No runs logged yet"), "{text}");

    // A re-install replaces its own files (nothing else appears).
    let out = safe_prune(&env, &["schedule", "install", "--no-enable", "--every", "6h"], false);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(names_in(&dir), ["backup.service", "safe-prune.service", "safe-prune.timer"]);
    let timer = std::fs::read_to_string(dir.join("safe-prune.timer")).unwrap();
    assert!(timer.contains("\nOnCalendar=*-*-* 00/6:00:00\n"), "{timer}");

    let out = safe_prune(&env, &["schedule", "uninstall"], true);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(names_in(&dir), ["backup.service"], "{}", show(&out));
    assert_eq!(std::fs::read_to_string(dir.join("backup.service")).unwrap(), other);

    // A same-named file without the marker: install refuses to replace it, uninstall leaves it.
    let _ = std::fs::remove_file(env.path("systemctl.log"));
    let foreign = "[Timer]\nOnCalendar=weekly\n\n[Install]\nWantedBy=timers.target\n";
    std::fs::write(dir.join("safe-prune.timer"), foreign).unwrap();
    let out = safe_prune(&env, &["schedule", "install", "--no-enable"], false);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(stderr(&out).contains("was not written by `safe-prune schedule install`"), "{}", show(&out));
    assert!(!dir.join("safe-prune.service").exists(), "install wrote half a schedule");
    let out = safe_prune(&env, &["schedule", "uninstall"], false);
    assert!(out.status.success(), "{}", show(&out));
    assert!(stderr(&out).contains("Left alone"), "{}", show(&out));
    assert!(systemctl_calls(&env).iter().all(|c| !c.contains("disable")), "disabled a foreign timer");
    assert_eq!(std::fs::read_to_string(dir.join("safe-prune.timer")).unwrap(), foreign);
}

#[test]
fn install_enables_the_timer_or_says_what_to_run() {
    let env = TestEnv::new();
    let cache = synthetic_cache(&env.cache, 0);
    // A user manager: enabled and started; status asks it; uninstall disables.
    let out = safe_prune(&env, &["schedule", "install", "--every", "15m"], false);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(systemctl_calls(&env), ["--user daemon-reload", "--user enable --now safe-prune.timer"]);
    let timer = std::fs::read_to_string(units_dir(&env).join("safe-prune.timer")).unwrap();
    assert!(
        timer.contains("\nOnCalendar=*-*-* *:00/15:00\nPersistent=true\nRandomizedDelaySec=90\n"),
        "{timer}"
    );
    let out = safe_prune(&env, &["schedule", "--format", "json", "status"], false);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{}", show(&out)));
    assert_eq!(status["installed"], true);
    assert_eq!(status["enabled"], "enabled");
    assert_eq!(status["cache_dir"], cache.to_str().unwrap());
    assert_eq!(status["every"]["every"], "15m");
    // A re-install restarts the timer so the new interval applies now.
    std::fs::remove_file(env.path("systemctl.log")).unwrap();
    let out = safe_prune(&env, &["schedule", "install"], false);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(
        systemctl_calls(&env),
        ["--user daemon-reload", "--user enable --now safe-prune.timer", "--user restart safe-prune.timer"]
    );
    std::fs::remove_file(env.path("systemctl.log")).unwrap();
    let out = safe_prune(&env, &["schedule", "uninstall"], false);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(systemctl_calls(&env), ["--user disable --now safe-prune.timer", "--user daemon-reload"]);
    assert!(names_in(&units_dir(&env)).is_empty());

    // No user manager reachable: the files are written, the commands to run are printed, exit 0.
    let out = safe_prune(&env, &["schedule", "install"], true);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(names_in(&units_dir(&env)), ["safe-prune.service", "safe-prune.timer"]);
    let err = stderr(&out);
    assert!(err.contains("no systemd user manager is reachable"), "{err}");
    assert!(
        err.contains("  systemctl --user daemon-reload\n  systemctl --user enable --now safe-prune.timer"),
        "{err}"
    );
    // ... and uninstall still removes them, and the link `enable` would have made.
    let wants = units_dir(&env).join("timers.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink(units_dir(&env).join("safe-prune.timer"), wants.join("safe-prune.timer"))
        .unwrap();
    let out = safe_prune(&env, &["schedule", "uninstall"], true);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(names_in(&units_dir(&env)), ["timers.target.wants"]);
    assert!(names_in(&wants).is_empty(), "{}", show(&out));
}

#[test]
fn install_checks_everything_now_rather_than_at_3am() {
    let env = TestEnv::new();
    let cache = synthetic_cache(&env.cache, 0);
    let other = synthetic_cache(&env.path("other-cache"), 0);
    let refuse = |args: &[&str], why: &str| {
        let out = safe_prune(&env, args, false);
        assert_eq!(out.status.code(), Some(2), "{args:?}\n{}", show(&out));
        assert!(stderr(&out).contains(why), "{args:?}: expected {why:?}\n{}", show(&out));
        assert!(!units_dir(&env).exists(), "{args:?} wrote units");
    };
    refuse(&["schedule", "install", "--no-enable", "--", "--keep-tool"], "unexpected argument '--keep-tool'");
    refuse(&["schedule", "install", "--no-enable", "--", "--older-than", "30y"], "invalid duration unit");
    refuse(&["schedule", "install", "--no-enable", "--", "--if-grown", "0"], "--if-grown");
    refuse(&["schedule", "install", "--no-enable", "--every", "30s"], "the shortest interval is 1m");
    refuse(
        &[
            "schedule",
            "install",
            "--no-enable",
            "--cache-dir",
            other.to_str().unwrap(),
            "--",
            "--cache-dir",
            cache.to_str().unwrap(),
        ],
        "two caches given",
    );
    refuse(
        &["schedule", "install", "--no-enable", "--", "--cache-dir", env.root.to_str().unwrap()],
        "is not a uv cache",
    );
    refuse(&["schedule", "install", "--cron", "--every", "5d"], "cron cannot repeat every 5d");
    // A binary inside the cache (a `uvx` run) would be pruned away: refused.
    let inside = cache.join("archive-v0/uvx-tool/bin");
    std::fs::create_dir_all(&inside).unwrap();
    std::fs::copy(common::bin(), inside.join("safe-prune")).unwrap();
    let out = env
        .command(inside.join("safe-prune"))
        .args(["schedule", "install", "--no-enable", "--backend", "systemd"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(stderr(&out).contains("runs from inside the uv cache"), "{}", show(&out));
    assert!(!units_dir(&env).exists());
    // A --cache-dir in PRUNE-OPTIONS picks the cache (canonical) and is not repeated.
    let out = safe_prune(
        &env,
        &[
            "schedule",
            "install",
            "--no-enable",
            "--",
            "--cache-dir",
            other.to_str().unwrap(),
            "--older-than",
            "30d",
        ],
        false,
    );
    assert!(out.status.success(), "{}", show(&out));
    let (argv, _) = service_command(&env);
    assert_eq!(
        argv[1..],
        ["prune", "--scheduled", "--cache-dir", other.to_str().unwrap(), "--older-than", "30d"]
    );
}

#[test]
fn the_units_command_in_a_bare_environment_keeps_a_running_tool_and_logs_the_run() {
    become_subreaper();
    let env = TestEnv::new();
    env.populate_cache();
    let mut tool = env.spawn_tool(&common::uv(), "sleepy==0.1", "sleepy");
    assert_eq!(tool.probe(), "ok sleepy 0.1");
    let environment = tool.environment();
    let entry = format!("archive-v0/{}", environment.file_name().unwrap().to_str().unwrap());
    tool.kill_uv();

    // Installed from the user's shell (UV_CACHE_DIR set there), with the default options.
    let out = safe_prune(&env, &["schedule", "install", "--no-enable"], false);
    assert!(out.status.success(), "{}", show(&out));
    let (argv, vars) = service_command(&env);
    let cache = env.cache.canonicalize().unwrap();
    assert_eq!(argv[1..], ["prune", "--scheduled", "--cache-dir", cache.to_str().unwrap(), "--keep-tools"]);

    let out = run_bare(&env, &argv, &vars, None);
    assert!(out.status.success(), "the scheduled run failed:\n{}", show(&out));
    assert!(environment.join("pyvenv.cfg").exists(), "the running tool's environment was removed");
    assert_eq!(tool.probe(), "ok sleepy 0.1", "the running tool broke");
    let log = runs(&env);
    assert_eq!(log.len(), 1, "{log:#?}");
    let run = &log[0];
    assert_eq!(run["exit"], 0, "{run:#}");
    assert_eq!(run["cache_dir"], cache.to_str().unwrap());
    assert!(run["removed"]["entries"].as_u64().unwrap() > 0, "nothing was pruned: {run:#}");
    // sleepy 0.1 is not the newest sleepy (--keep-tools keeps 0.2): only its use kept it.
    let kept: Vec<&str> =
        run["kept_in_use"]["paths"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(kept.contains(&entry.as_str()), "{entry} not reported in use: {run:#}");
    assert!(run["processes"]["scanned"].as_u64().unwrap() > 0);
    assert!(!cache.join("safe-prune").exists(), "state was written into the cache");

    let out = safe_prune(&env, &["schedule", "status"], false);
    assert!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let time = run["time"].as_str().unwrap();
    let line =
        text.lines().find(|l| l.contains(time)).unwrap_or_else(|| panic!("run {time} not shown:\n{text}"));
    assert!(
        line.contains("exit 0  removed ") && line.contains("kept ") && line.contains(" in use, 0 errors"),
        "{line}"
    );
}

#[test]
fn if_grown_skips_a_cache_that_has_not_grown_without_scanning() {
    let env = TestEnv::new();
    let cache = synthetic_cache(&env.cache, 3);
    let out = safe_prune(&env, &["schedule", "install", "--no-enable", "--", "--if-grown", "1"], false);
    assert!(out.status.success(), "{}", show(&out));
    let (argv, vars) = service_command(&env);
    let strace = strace();
    let trace = |n: usize| strace.as_ref().map(|_| env.path(&format!("trace-{n}")));

    // First run: no record yet, so a full run (it scans, removes the 3 unreferenced archives).
    let out = run_bare(&env, &argv, &vars, trace(1).as_deref());
    assert!(out.status.success(), "{}", show(&out));
    assert!(names_in(&cache.join("archive-v0")).is_empty());
    // Second run right after: skipped, exit 0.
    let out = run_bare(&env, &argv, &vars, trace(2).as_deref());
    assert!(out.status.success(), "{}", show(&out));
    assert!(stderr(&out).contains("Cache has not grown"), "{}", show(&out));
    let log = runs(&env);
    assert_eq!(log.len(), 2, "{log:#?}");
    assert!(log[0].get("processes").is_some() && log[0].get("skipped").is_none(), "{:#}", log[0]);
    // How the test knows the second run did no scan: its log line says so and has no
    // "processes" section, and (with strace) it opened nothing under /proc that a scan opens,
    // nor uv's lock, while the first run did.
    assert_eq!(log[1]["skipped"], "not grown", "{:#}", log[1]);
    assert_eq!((log[1]["archives"].as_u64(), log[1]["archives_after_last_run"].as_u64()), (Some(0), Some(0)));
    assert!(log[1].get("processes").is_none() && log[1].get("removed").is_none(), "{:#}", log[1]);
    if let (Some(first), Some(second)) = (trace(1), trace(2)) {
        let (first, second) = (opened(&first), opened(&second));
        assert!(!scan_opens(&first).is_empty(), "the full run opened nothing under /proc?");
        assert!(scan_opens(&second).is_empty(), "the skipped run scanned: {:?}", scan_opens(&second));
        let lock = cache.join(".lock").to_str().unwrap().to_string();
        assert!(first.contains(&lock) && !second.contains(&lock), "the skipped run took uv's lock");
    } else {
        eprintln!("strace unavailable (not CI): relying on the run log alone");
    }
    // The cache grows by one archive: the next run prunes again.
    add_archive(&cache, "new");
    let out = run_bare(&env, &argv, &vars, None);
    assert!(out.status.success(), "{}", show(&out));
    let log = runs(&env);
    assert!(log[2].get("skipped").is_none() && log[2]["removed"]["entries"] == 1, "{:#}", log[2]);
    // The record lives in the state folder, never in the cache.
    assert!(state_dir(&env).join("grown.json").is_file());
    assert_eq!(names_in(&cache), [".lock", "CACHEDIR.TAG", "archive-v0", "wheels-v7"]);
}

#[test]
fn the_plist_and_the_crontab_line_run_the_units_command() {
    let env = TestEnv::new();
    let cache = synthetic_cache(&env.path(ODD_NAME), 2);
    let cache_arg = cache.to_str().unwrap();
    let options = ["--", "--keep-tools=2", "--older-than", "1d"];
    let install = |backend: &[&str]| {
        let mut args = vec!["schedule", "install", "--no-enable", "--every", "6h", "--cache-dir", cache_arg];
        args.extend(backend);
        args.extend(options);
        let out = safe_prune(&env, &args, false);
        assert!(out.status.success(), "{}", show(&out));
        out
    };
    install(&["--backend", "systemd"]);
    let (argv, vars) = service_command(&env);
    let state_home = env.home.join(".local/state").to_str().unwrap().to_string();
    assert_eq!(vars, [("XDG_STATE_HOME".to_string(), state_home.clone())]);

    // The plist: parsed by Python's plistlib.
    install(&["--backend", "launchd"]);
    let plist = env.home.join("Library/LaunchAgents/io.github.safe-prune.schedule.plist");
    let out = Command::new(common::python())
        .args(["-c", "import json, plistlib, sys; print(json.dumps(plistlib.load(open(sys.argv[1], 'rb'))))"])
        .arg(&plist)
        .output()
        .unwrap();
    assert!(out.status.success(), "plistlib cannot read the plist:\n{}", show(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["Label"], "io.github.safe-prune.schedule");
    assert_eq!(doc["ProgramArguments"], serde_json::json!(argv));
    assert_eq!(doc["EnvironmentVariables"]["XDG_STATE_HOME"], state_home.as_str());
    assert_eq!(doc["StartInterval"], 6 * 3600);
    assert_eq!((doc["LowPriorityIO"].as_bool(), doc["Nice"].as_i64()), (Some(true), Some(19)));
    assert_eq!(doc["ProcessType"], "Background");
    assert!(std::fs::read_to_string(&plist)
        .unwrap()
        .contains("<!-- Written by safe-prune schedule install;"));
    let out = safe_prune(&env, &["schedule", "status", "--backend", "launchd"], false);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Installed: launchd agent") && text.contains("every:    6h (StartInterval 21600)"),
        "{text}"
    );

    // The crontab line: cron turns `\%` into `%` and runs the rest with /bin/sh.
    let out = install(&["--cron"]);
    let line = String::from_utf8(out.stdout).unwrap();
    assert_eq!(line.lines().count(), 1, "{line}");
    let fields: Vec<&str> = line.split_whitespace().take(5).collect();
    assert_eq!(fields[2..], ["*", "*", "*"], "{line}");
    assert_eq!(fields[1].split(',').count(), 4, "6h is four hours a day: {line}");
    let command = line.trim_end().splitn(6, ' ').nth(5).unwrap().replace("\\%", "%");
    assert!(!command.contains('%') || line.contains("\\%"), "an unescaped % in {line}");
    let out = Command::new(common::python())
        .args(["-c", "import json, shlex, sys; print(json.dumps(shlex.split(sys.argv[1])))"])
        .arg(&command)
        .output()
        .unwrap();
    let words: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(words[0], format!("XDG_STATE_HOME={state_home}"));
    assert_eq!(words[1..], argv[..]);
    // And /bin/sh runs it: one more logged run of the pinned cache.
    let out = Command::new("/bin/sh")
        .args(["-c", &command])
        .env_clear()
        .env("HOME", &env.home)
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let log = runs(&env);
    assert_eq!((log.len(), &log[0]["cache_dir"]), (1, &Value::from(cache_arg)), "{log:#?}");

    // Uninstalling the agent removes the plist only; the systemd units stay until theirs.
    let out = safe_prune(&env, &["schedule", "uninstall", "--backend", "launchd"], false);
    assert!(out.status.success(), "{}", show(&out));
    assert!(!plist.exists());
    assert_eq!(names_in(&units_dir(&env)), ["safe-prune.service", "safe-prune.timer"]);
}
