//! `safe-prune schedule install|status|uninstall --agent`: `safe-prune agent` as a service that
//! runs all the time (one cache, many hosts; see `crate::registry`): a systemd service with
//! `Restart=always` (Linux; `--system` for a root agent that sees every user's processes), a
//! LaunchAgent with `KeepAlive` (macOS), or an `@reboot` crontab line. The binary, the cache,
//! the registry and `SAFE_PRUNE_HOST_ID` (when set) are pinned at install time, like the prune
//! schedule; the files carry the same marker and only those are ever replaced or removed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser as _;
use serde_json::json;

use super::{
    backend, find, human_duration, remove_ours, resolve_cache, run_tool, shell_line, systemctl_state_of,
    systemctl_words, systemd, uid, utf8, write_files, Env, Found, Status, MARKER,
};
use crate::cli::{CacheArgs, Cli, ScheduleBackend, ScheduleInstallArgs, ScheduleWhereArgs};
use crate::exit;

pub const SERVICE: &str = "safe-prune-agent.service";
pub const LAUNCHD_LABEL: &str = "io.github.safe-prune.agent";

/// What the agent service runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentJob {
    /// `<this binary> agent --cache-dir C --registry R --interval I`.
    pub argv: Vec<String>,
    /// `SAFE_PRUNE_HOST_ID`, when set at install time.
    pub host_id: Option<String>,
    /// Paths the service needs mounted first (the cache and the registry).
    pub mounts: Vec<String>,
    pub system: bool,
}

/// Build the job: everything checked now (registry exists and is not inside the cache, the
/// binary is not inside a uv cache, the command parses).
pub fn job(args: &ScheduleInstallArgs, global: &CacheArgs) -> Result<AgentJob, String> {
    let registry =
        args.registry.as_deref().ok_or("--agent needs --registry DIR (the shared registry folder)")?;
    if args.interval < Duration::from_secs(1) {
        return Err("--interval must be at least 1s".into());
    }
    if !args.prune_options.is_empty() {
        return Err("--agent takes no PRUNE-OPTIONS (after `--`)".into());
    }
    let exe = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .map_err(|e| format!("cannot find this program's own path: {e}"))?;
    if let Some(holder) = exe.ancestors().skip(1).find(|d| super::is_uv_cache(d)) {
        return Err(format!(
            "this safe-prune runs from inside the uv cache {}: a prune could remove it. Install it first (`uv tool install safe-prune`) and run the installed one",
            holder.display()
        ));
    }
    let cache = resolve_cache(global)?;
    let registry = crate::registry::check_dir(registry, &cache)?;
    let argv: Vec<String> = vec![
        utf8(exe.as_os_str(), "the path of this program")?,
        "agent".into(),
        "--cache-dir".into(),
        utf8(cache.as_os_str(), "the cache path")?,
        "--registry".into(),
        utf8(registry.as_os_str(), "the registry path")?,
        "--interval".into(),
        human_duration(args.interval),
    ];
    Cli::try_parse_from(&argv).map_err(|e| format!("the agent's command does not parse: {e}"))?;
    let host_id = std::env::var("SAFE_PRUNE_HOST_ID").ok().filter(|h| !h.trim().is_empty());
    let mounts = vec![argv[3].clone(), argv[5].clone()];
    Ok(AgentJob { argv, host_id, mounts, system: args.system })
}

/// The systemd service.
pub fn service(job: &AgentJob) -> String {
    let argv: Vec<&str> = job.argv.iter().map(String::as_str).collect();
    let env = match &job.host_id {
        Some(id) => format!("Environment={}\n", systemd::quote(&format!("SAFE_PRUNE_HOST_ID={id}"), false)),
        None => String::new(),
    };
    // RequiresMountsFor= takes plain space-separated paths: only those that need no quoting.
    let plain: Vec<String> = job
        .mounts
        .iter()
        .filter(|p| !p.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '\\')))
        .map(|p| p.replace('%', "%%"))
        .collect();
    let mounts =
        if plain.is_empty() { String::new() } else { format!("RequiresMountsFor={}\n", plain.join(" ")) };
    let wanted_by = if job.system { "multi-user.target" } else { "default.target" };
    format!(
        "# {MARKER}
# `safe-prune schedule status --agent` shows it.
[Unit]
Description=safe-prune agent: publish the uv cache entries this host's processes use
Documentation=https://github.com/safe-prune/safe-prune#many-hosts
{mounts}After=remote-fs.target

[Service]
Type=simple
{env}ExecStart={exec}
Restart=always
RestartSec=10
Nice=10
IOSchedulingClass=idle
CPUSchedulingPolicy=batch

[Install]
WantedBy={wanted_by}
",
        exec = systemd::exec_line(&argv),
    )
}

/// XML text for a plist `<string>` (control characters other than tab/newline refused).
fn xml(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            c if c.is_control() => return Err(format!("{text:?} has a control character")),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// The LaunchAgent (macOS): started at load, restarted when it exits.
pub fn plist(job: &AgentJob) -> Result<String, String> {
    let mut args = String::new();
    for word in &job.argv {
        args.push_str(&format!("\t\t<string>{}</string>\n", xml(word)?));
    }
    let env = match &job.host_id {
        Some(id) => format!(
            "\t<key>EnvironmentVariables</key>\n\t<dict>\n\t\t<key>SAFE_PRUNE_HOST_ID</key>\n\t\t<string>{}</string>\n\t</dict>\n",
            xml(id)?
        ),
        None => String::new(),
    };
    Ok(format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<!-- {MARKER} -->
<plist version="1.0">
<dict>
	<key>Label</key>
	<string>{LAUNCHD_LABEL}</string>
	<key>ProgramArguments</key>
	<array>
{args}	</array>
{env}	<key>RunAtLoad</key>
	<true/>
	<key>KeepAlive</key>
	<true/>
	<key>ProcessType</key>
	<string>Background</string>
	<key>Nice</key>
	<integer>10</integer>
</dict>
</plist>
"#
    ))
}

fn plist_path(home: &Path) -> PathBuf {
    home.join("Library/LaunchAgents").join(format!("{LAUNCHD_LABEL}.plist"))
}

fn is_ours_plist(text: &str) -> bool {
    text.contains(&format!("<!-- {MARKER} -->"))
}

/// `schedule install --agent`.
pub fn install(args: &ScheduleInstallArgs, global: &CacheArgs, env: &Env) -> Result<u8, String> {
    let backend = backend(args.backend, args.cron);
    if args.system && backend != ScheduleBackend::Systemd {
        return Err(
            "--system installs a systemd system unit; it is not available with cron or launchd".into()
        );
    }
    let job = job(args, global)?;
    let argv: Vec<&str> = job.argv.iter().map(String::as_str).collect();
    match backend {
        ScheduleBackend::Systemd => {
            let dir = systemd::unit_dir(args.system, env.xdg_config_home.as_deref(), env.home.as_deref())
                .ok_or("HOME is not set: cannot tell where user units go")?;
            let replaced = write_files(&[(dir.join(SERVICE), service(&job))], systemd::is_ours)?;
            eprintln!("It runs, restarted whenever it stops:\n  {}", shell_line(&argv));
            if !args.system {
                eprintln!(
                    "note: a user service sees only this user's processes; on a machine others use too, install it as root with --system"
                );
            }
            let mut steps: Vec<Vec<&str>> = vec![vec!["daemon-reload"], vec!["enable", "--now", SERVICE]];
            if replaced {
                steps.push(vec!["restart", SERVICE]);
            }
            let commands: Vec<String> =
                steps.iter().map(|s| systemctl_words(args.system, s).join(" ")).collect();
            if args.no_enable {
                eprintln!("Not enabled (--no-enable). To enable it:\n  {}", commands.join("\n  "));
                return Ok(exit::OK);
            }
            for (step, command) in steps.iter().zip(&commands) {
                let words = systemctl_words(args.system, step);
                if let Err(why) = run_tool(&words[0], &words[1..]) {
                    eprintln!(
                        "warning: `{command}` failed ({why}); the file is written. To enable it, run where a systemd manager is reachable:\n  {}",
                        commands.join("\n  ")
                    );
                    return Ok(exit::OK);
                }
            }
            eprintln!("Enabled {SERVICE}");
            Ok(exit::OK)
        }
        ScheduleBackend::Launchd => {
            let home = env.home.as_deref().filter(|h| h.is_absolute()).ok_or("HOME is not set")?;
            let path = plist_path(home);
            write_files(&[(path.clone(), plist(&job)?)], is_ours_plist)?;
            eprintln!("It runs, restarted whenever it stops:\n  {}", shell_line(&argv));
            let domain = format!("gui/{}", uid());
            let load = format!(
                "launchctl bootout {domain}/{LAUNCHD_LABEL} 2>/dev/null; launchctl bootstrap {domain} {}",
                super::cron::sh_quote(&path.to_string_lossy())
            );
            if args.no_enable || !cfg!(target_os = "macos") {
                eprintln!("Not loaded. To load it:\n  {load}");
                return Ok(exit::OK);
            }
            let _ = run_tool("launchctl", &["bootout".into(), format!("{domain}/{LAUNCHD_LABEL}")]);
            match run_tool("launchctl", &["bootstrap".into(), domain, path.to_string_lossy().into_owned()]) {
                Ok(()) => eprintln!("Loaded {LAUNCHD_LABEL}"),
                Err(why) => eprintln!("warning: launchctl bootstrap failed ({why}). To load it:\n  {load}"),
            }
            Ok(exit::OK)
        }
        ScheduleBackend::Cron => {
            let env = job
                .host_id
                .as_ref()
                .map(|id| format!("SAFE_PRUNE_HOST_ID={} ", super::cron::sh_quote(id)))
                .unwrap_or_default();
            eprintln!("No systemd or launchd here. Add this line to the crontab (`crontab -e`) of root:");
            println!("@reboot {env}{} >/dev/null 2>&1", shell_line(&argv));
            eprintln!(
                "cron starts it at boot but does not restart it if it stops; start it now the same way."
            );
            Ok(exit::OK)
        }
    }
}

/// `schedule status --agent`: printed as text, or one JSON object.
pub fn status_main(args: &ScheduleWhereArgs, json: bool) -> Result<u8, String> {
    let mut st = Status { doc: serde_json::Map::new(), lines: Vec::new(), state_home: None };
    status(args, &Env::from_process(), &mut st)?;
    if json {
        println!("{}", serde_json::Value::Object(st.doc));
    } else {
        for line in &st.lines {
            println!("{line}");
        }
    }
    Ok(exit::OK)
}

fn status(args: &ScheduleWhereArgs, env: &Env, st: &mut Status) -> Result<(), String> {
    st.doc.insert("service".into(), json!("agent"));
    match backend(args.backend, false) {
        ScheduleBackend::Systemd => {
            let dir = systemd::unit_dir(args.system, env.xdg_config_home.as_deref(), env.home.as_deref())
                .ok_or("HOME is not set: cannot tell where user units are")?;
            let path = dir.join(SERVICE);
            st.doc.insert("scheduler".into(), json!("systemd"));
            if !matches!(find(&path, systemd::is_ours), Found::Ours) {
                st.doc.insert("installed".into(), json!(false));
                st.lines.push(format!(
                    "No agent installed by safe-prune ({} absent or not ours)",
                    path.display()
                ));
                return Ok(());
            }
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let info = systemd::parse_service(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            st.doc.insert("installed".into(), json!(true));
            st.lines.push(format!("Installed: safe-prune agent as a systemd {} service", kind(args.system)));
            st.field("unit", "service:", json!(path), path.display().to_string());
            let refs: Vec<&str> = info.argv.iter().map(String::as_str).collect();
            st.field("command", "command:", json!(info.argv), shell_line(&refs));
            let state = |verb| systemctl_state_of(args.system, verb, SERVICE);
            let shown = match (state("is-enabled"), state("is-active")) {
                (Ok(e), Ok(a)) => format!("{e}, {a}"),
                (Err(why), _) | (_, Err(why)) => format!("unknown (no systemd manager reachable: {why})"),
            };
            st.field("enabled", "enabled:", json!(shown), shown.clone());
        }
        ScheduleBackend::Launchd => {
            let home = env.home.as_deref().filter(|h| h.is_absolute()).ok_or("HOME is not set")?;
            let path = plist_path(home);
            st.doc.insert("scheduler".into(), json!("launchd"));
            let ours = matches!(find(&path, is_ours_plist), Found::Ours);
            st.doc.insert("installed".into(), json!(ours));
            st.lines.push(if ours {
                format!("Installed: safe-prune agent as a LaunchAgent ({})", path.display())
            } else {
                format!("No agent installed by safe-prune ({} absent or not ours)", path.display())
            });
        }
        ScheduleBackend::Cron => {
            st.doc.insert("scheduler".into(), json!("cron"));
            st.doc.insert("installed".into(), json!(null));
            st.lines.push("No systemd or launchd here: an @reboot crontab line is not tracked".into());
        }
    }
    Ok(())
}

fn kind(system: bool) -> &'static str {
    if system {
        "system"
    } else {
        "user"
    }
}

/// `schedule uninstall --agent`.
pub fn uninstall(args: &ScheduleWhereArgs, env: &Env) -> Result<u8, String> {
    match backend(args.backend, false) {
        ScheduleBackend::Systemd => {
            let dir = systemd::unit_dir(args.system, env.xdg_config_home.as_deref(), env.home.as_deref())
                .ok_or("HOME is not set: cannot tell where user units are")?;
            let path = dir.join(SERVICE);
            if matches!(find(&path, systemd::is_ours), Found::Ours) {
                let words = systemctl_words(args.system, &["disable", "--now", SERVICE]);
                if let Err(why) = run_tool(&words[0], &words[1..]) {
                    eprintln!("note: `{}` failed ({why}); removing the file anyway", words.join(" "));
                }
            }
            if remove_ours(&[path], systemd::is_ours) > 0 {
                let words = systemctl_words(args.system, &["daemon-reload"]);
                let _ = run_tool(&words[0], &words[1..]);
                eprintln!("The agent's record stays in the registry: it turns stale, then expires (--host-expiry); delete it if this host no longer uses the cache");
            }
            Ok(exit::OK)
        }
        ScheduleBackend::Launchd => {
            let home = env.home.as_deref().filter(|h| h.is_absolute()).ok_or("HOME is not set")?;
            let path = plist_path(home);
            if matches!(find(&path, is_ours_plist), Found::Ours) && cfg!(target_os = "macos") {
                let _ = run_tool("launchctl", &["bootout".into(), format!("gui/{}/{LAUNCHD_LABEL}", uid())]);
            }
            remove_ours(&[path], is_ours_plist);
            Ok(exit::OK)
        }
        ScheduleBackend::Cron => {
            eprintln!("safe-prune never edits a crontab: remove its @reboot line with `crontab -e`");
            Ok(exit::OK)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> AgentJob {
        AgentJob {
            argv: [
                "/opt/sp/safe-prune",
                "agent",
                "--cache-dir",
                "/shared/uv cache",
                "--registry",
                "/shared/reg",
                "--interval",
                "1m",
            ]
            .map(String::from)
            .to_vec(),
            host_id: Some("node 7%".into()),
            mounts: vec!["/shared/uv cache".into(), "/shared/reg".into()],
            system: true,
        }
    }

    #[test]
    fn the_service_runs_the_agent_and_reads_back() {
        let j = job();
        let text = service(&j);
        assert!(systemd::is_ours(&text), "{text}");
        for line in
            ["Type=simple", "Restart=always", "WantedBy=multi-user.target", "RequiresMountsFor=/shared/reg"]
        {
            assert!(text.lines().any(|l| l == line), "no {line}:\n{text}");
        }
        assert!(text.contains("\nEnvironment=\"SAFE_PRUNE_HOST_ID=node 7%%\"\n"), "{text}");
        let info = systemd::parse_service(&text).unwrap();
        assert_eq!(info.argv, j.argv);
        let plist = plist(&j).unwrap();
        assert!(is_ours_plist(&plist) && plist.contains("<key>KeepAlive</key>"), "{plist}");
        assert!(plist.contains("<string>/shared/uv cache</string>"), "{plist}");
    }
}
