//! systemd units: a `Type=oneshot` service at low priority and a timer, rendered from a
//! [`Job`], and read back for `schedule status`. Pure functions; `super` does the I/O.
//!
//! Quoting follows systemd.syntax(7) and systemd.service(5) "Command lines": a word with
//! whitespace, quotes, a backslash or a control character is double-quoted with C escapes;
//! `%` (specifiers, expanded on the whole line) is written `%%` everywhere, and `$` (variable
//! expansion, in `ExecStart=` only) `$$`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{human_duration, Job, MARKER};

pub const SERVICE: &str = "safe-prune.service";
pub const TIMER: &str = "safe-prune.timer";
/// The timer key that records `--every` as given (systemd ignores `X-` keys).
const EVERY_KEY: &str = "X-SafePrune-Every";
/// A run that takes longer is sent SIGTERM (it stops between entries and logs the run), so
/// that a hung run cannot block every later one.
const TIMEOUT: &str = "4h";

/// The folder of user units (`$XDG_CONFIG_HOME/systemd/user`, else
/// `~/.config/systemd/user`) or of system units (`/etc/systemd/system`).
pub fn unit_dir(system: bool, xdg_config_home: Option<&Path>, home: Option<&Path>) -> Option<PathBuf> {
    if system {
        return Some(PathBuf::from("/etc/systemd/system"));
    }
    let config = match xdg_config_home.filter(|d| d.is_absolute()) {
        Some(dir) => dir.to_path_buf(),
        None => home.filter(|h| h.is_absolute())?.join(".config"),
    };
    Some(config.join("systemd/user"))
}

/// How the timer fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum When {
    /// `OnCalendar=` + `Persistent=true`: wall-clock times, so a run missed while the machine
    /// was off or asleep is made up at the next boot or wake-up.
    Calendar(String),
    /// `OnBootSec=` + `OnUnitActiveSec=` (seconds): for intervals a calendar cannot express.
    /// Monotonic: no catch-up of missed runs, but a run shortly after each boot.
    Monotonic { boot: u64, every: u64 },
}

/// The timer for an interval: a calendar spec when the interval divides an hour or a day, or
/// is a day or a week; a monotonic timer otherwise.
pub fn when(every: Duration) -> When {
    let secs = every.as_secs();
    let minutes = secs / 60;
    if secs % 60 == 0 && minutes > 0 {
        if minutes < 60 && 60 % minutes == 0 {
            return When::Calendar(format!("*-*-* *:00/{minutes}:00"));
        }
        if minutes % 60 == 0 {
            let hours = minutes / 60;
            if hours == 1 {
                return When::Calendar("*-*-* *:00:00".into());
            }
            if hours < 24 && 24 % hours == 0 {
                return When::Calendar(format!("*-*-* 00/{hours}:00:00"));
            }
            if hours == 24 {
                return When::Calendar("*-*-* 00:00:00".into());
            }
            if hours == 24 * 7 {
                return When::Calendar("Mon *-*-* 00:00:00".into());
            }
        }
    }
    When::Monotonic { boot: secs.min(15 * 60), every: secs }
}

/// `RandomizedDelaySec=`: a tenth of the interval, at most an hour, so that machines (and
/// users) sharing a schedule do not all prune at the same second.
pub fn randomized_delay(every: Duration) -> u64 {
    (every.as_secs() / 10).min(3600)
}

/// Quote one word for a unit file. `exec`: for `ExecStart=` (also escape `$`).
pub fn quote(word: &str, exec: bool) -> String {
    let needs_quotes = word.is_empty()
        || word == ";"
        || word
            .chars()
            .any(|c| c.is_ascii_whitespace() || c.is_ascii_control() || matches!(c, '"' | '\'' | '\\'));
    let mut out = String::with_capacity(word.len() + 2);
    if needs_quotes {
        out.push('"');
    }
    for c in word.chars() {
        match c {
            '%' => out.push_str("%%"),
            '$' if exec => out.push_str("$$"),
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    if needs_quotes {
        out.push('"');
    }
    out
}

/// A command line for `ExecStart=`.
pub fn exec_line(argv: &[&str]) -> String {
    argv.iter().map(|w| quote(w, true)).collect::<Vec<_>>().join(" ")
}

/// Split a unit-file value into words the way systemd does: `%%` → `%` on the line, then
/// words with quotes and C escapes, then (`exec`) `$$` → `$` in each word. Other specifiers
/// and variables are refused: `install` never writes them.
pub fn split(value: &str, exec: bool) -> Result<Vec<String>, String> {
    let mut line = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            line.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => line.push('%'),
            Some(other) => return Err(format!("specifier %{other} is not supported")),
            None => return Err("a lone % at the end".into()),
        }
    }
    let bytes = line.as_bytes();
    let mut words: Vec<Vec<u8>> = Vec::new();
    let mut word: Option<Vec<u8>> = None;
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        i += 1;
        match (quote, b) {
            (None, b' ' | b'\t' | b'\n' | b'\r') => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            (None, b'"' | b'\'') => {
                quote = Some(b);
                word.get_or_insert_with(Vec::new);
            }
            (Some(q), b) if b == q => quote = None,
            (_, b'\\') => {
                let w = word.get_or_insert_with(Vec::new);
                i = unescape(bytes, i, w)?;
            }
            (_, b) => word.get_or_insert_with(Vec::new).push(b),
        }
    }
    if quote.is_some() {
        return Err("unterminated quote".into());
    }
    words.extend(word);
    words
        .into_iter()
        .map(|w| {
            let w = String::from_utf8(w).map_err(|_| "an escape makes invalid UTF-8".to_string())?;
            if !exec {
                return Ok(w);
            }
            let mut out = String::with_capacity(w.len());
            let mut chars = w.chars().peekable();
            while let Some(c) = chars.next() {
                if c == '$' {
                    if chars.peek() == Some(&'$') {
                        chars.next();
                    } else {
                        return Err("variable expansion ($NAME) is not supported".into());
                    }
                }
                out.push(c);
            }
            Ok(out)
        })
        .collect()
}

/// Decode the C escape after a backslash at `bytes[i..]` into `out`; returns the next index.
fn unescape(bytes: &[u8], i: usize, out: &mut Vec<u8>) -> Result<usize, String> {
    let Some(&c) = bytes.get(i) else { return Err("a backslash at the end".into()) };
    let simple = match c {
        b'a' => Some(0x07),
        b'b' => Some(0x08),
        b'f' => Some(0x0c),
        b'n' => Some(b'\n'),
        b'r' => Some(b'\r'),
        b't' => Some(b'\t'),
        b'v' => Some(0x0b),
        b's' => Some(b' '),
        b'\\' | b'"' | b'\'' => Some(c),
        _ => None,
    };
    if let Some(b) = simple {
        out.push(b);
        return Ok(i + 1);
    }
    let digits = |start: usize, len: usize, radix: u32| -> Result<u32, String> {
        let text = bytes.get(start..start + len).ok_or("a short escape")?;
        let text = std::str::from_utf8(text).map_err(|_| "a bad escape")?;
        u32::from_str_radix(text, radix).map_err(|_| format!("a bad escape \\{text}"))
    };
    match c {
        b'x' => {
            out.push(digits(i + 1, 2, 16)? as u8);
            Ok(i + 3)
        }
        b'0'..=b'7' => {
            let v = digits(i, 3, 8)?;
            out.push(u8::try_from(v).map_err(|_| "an octal escape above \\377")?);
            Ok(i + 3)
        }
        b'u' | b'U' => {
            let len = if c == b'u' { 4 } else { 8 };
            let ch = char::from_u32(digits(i + 1, len, 16)?).ok_or("a bad unicode escape")?;
            out.extend_from_slice(ch.to_string().as_bytes());
            Ok(i + 1 + len)
        }
        other => Err(format!("unknown escape \\{}", other as char)),
    }
}

/// The service unit.
pub fn service(job: &Job) -> String {
    let env = quote(&format!("XDG_STATE_HOME={}", job.state_home), false);
    format!(
        "# {MARKER}
# `safe-prune schedule status` shows it and the last runs.
[Unit]
Description=Prune the uv cache, keeping what running processes use (safe-prune)
Documentation=https://github.com/safe-prune/safe-prune#run-it-on-a-schedule

[Service]
Type=oneshot
# The run log and the --if-grown record go to $XDG_STATE_HOME/safe-prune (pinned at install).
Environment={env}
ExecStart={exec}
# Low priority: never in the way of interactive work.
Nice=19
IOSchedulingClass=idle
CPUSchedulingPolicy=batch
TimeoutStartSec={TIMEOUT}
",
        exec = exec_line(&job.argv()),
    )
}

/// The timer unit.
pub fn timer(job: &Job) -> String {
    let every = human_duration(job.every);
    let timing = match when(job.every) {
        When::Calendar(spec) => format!("OnCalendar={spec}\nPersistent=true\n"),
        When::Monotonic { boot, every } => format!("OnBootSec={boot}\nOnUnitActiveSec={every}\n"),
    };
    format!(
        "# {MARKER}
[Unit]
Description=Prune the uv cache every {every} (safe-prune)
Documentation=https://github.com/safe-prune/safe-prune#run-it-on-a-schedule

[Timer]
{timing}RandomizedDelaySec={delay}
AccuracySec=1min
{EVERY_KEY}={every}

[Install]
WantedBy=timers.target
",
        delay = randomized_delay(job.every),
    )
}

/// True when `text` is a unit `install` wrote.
pub fn is_ours(text: &str) -> bool {
    let marker = format!("# {MARKER}");
    text.lines().any(|l| l.trim_end() == marker)
}

/// The values of `key=` in `text` (comments and sections ignored, continuation lines joined).
pub fn values(text: &str, key: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let line = line.trim_start();
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else { continue };
        if k.trim() != key {
            continue;
        }
        let mut value = v.trim().to_string();
        while value.ends_with('\\') {
            value.pop();
            value.push(' ');
            match lines.next() {
                Some(next) => value.push_str(next.trim()),
                None => break,
            }
        }
        out.push(value);
    }
    out
}

/// What `status` reads back from the service: the command and the pinned state home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    pub argv: Vec<String>,
    pub state_home: Option<String>,
}

pub fn parse_service(text: &str) -> Result<ServiceInfo, String> {
    let exec = values(text, "ExecStart").pop().ok_or("no ExecStart=")?;
    let argv = split(&exec, true).map_err(|e| format!("ExecStart=: {e}"))?;
    let mut state_home = None;
    for value in values(text, "Environment") {
        for assignment in split(&value, false).map_err(|e| format!("Environment=: {e}"))? {
            if let Some(v) = assignment.strip_prefix("XDG_STATE_HOME=") {
                state_home = Some(v.to_string());
            }
        }
    }
    Ok(ServiceInfo { argv, state_home })
}

/// What `status` reads back from the timer: `--every` as given, and the timing lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimerInfo {
    pub every: Option<String>,
    pub timing: Vec<String>,
}

pub fn parse_timer(text: &str) -> TimerInfo {
    let every = values(text, EVERY_KEY).pop();
    let timing = ["OnCalendar", "Persistent", "OnBootSec", "OnUnitActiveSec", "RandomizedDelaySec"]
        .iter()
        .flat_map(|k| values(text, k).into_iter().map(move |v| format!("{k}={v}")))
        .collect();
    TimerInfo { every, timing }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn job(every: u64) -> Job {
        Job {
            program: "/opt/my tools/safe-prune".into(),
            args: ["prune", "--scheduled", "--cache-dir", "/home/a b/100% $HOME/uv", "--keep-tools"]
                .map(String::from)
                .to_vec(),
            state_home: "/home/a b/.local/state".into(),
            every: Duration::from_secs(every),
        }
    }

    #[test]
    fn quoting_examples() {
        assert_eq!(quote("/usr/bin/safe-prune", true), "/usr/bin/safe-prune");
        assert_eq!(quote("--older-than=30d", true), "--older-than=30d");
        assert_eq!(quote("a b", true), "\"a b\"");
        assert_eq!(quote("100%", true), "100%%");
        assert_eq!(quote("$HOME", true), "$$HOME");
        assert_eq!(quote("$HOME", false), "$HOME");
        assert_eq!(quote("", true), "\"\"");
        assert_eq!(quote(";", true), "\";\"");
        assert_eq!(quote("say \"hi\"\\\n", true), "\"say \\\"hi\\\"\\\\\\n\"");
        assert_eq!(quote("it's", true), "\"it's\"");
        assert_eq!(quote("bell\x07", true), "\"bell\\x07\"");
    }

    #[test]
    fn splitting_reads_what_systemd_reads() {
        assert_eq!(split("/bin/a 'b c' \"d\\\"e\" f\\sg", true).unwrap(), ["/bin/a", "b c", "d\"e", "f g"]);
        assert_eq!(split("\"%%h$$x\" \\x41\\101\\u00e9", true).unwrap(), ["%h$x", "AAé"]);
        assert!(split("%h", true).is_err());
        assert!(split("$HOME", true).is_err());
        assert_eq!(split("$HOME", false).unwrap(), ["$HOME"]);
        assert!(split("\"open", true).is_err());
        assert!(split("end\\", true).is_err());
    }

    proptest! {
        #[test]
        fn quote_then_split_is_identity(words in proptest::collection::vec("\\PC{0,12}|[ -~\t\n\r\\\\\"'%$;]{0,12}", 1..6)) {
            let refs: Vec<&str> = words.iter().map(String::as_str).collect();
            prop_assert_eq!(split(&exec_line(&refs), true).unwrap(), words.clone());
            let env: Vec<String> = words.iter().map(|w| quote(w, false)).collect();
            prop_assert_eq!(split(&env.join(" "), false).unwrap(), words);
        }
    }

    #[test]
    fn calendar_for_common_intervals() {
        let cal = |s: u64| when(Duration::from_secs(s));
        assert_eq!(cal(15 * 60), When::Calendar("*-*-* *:00/15:00".into()));
        assert_eq!(cal(60), When::Calendar("*-*-* *:00/1:00".into()));
        assert_eq!(cal(3600), When::Calendar("*-*-* *:00:00".into()));
        assert_eq!(cal(6 * 3600), When::Calendar("*-*-* 00/6:00:00".into()));
        assert_eq!(cal(86_400), When::Calendar("*-*-* 00:00:00".into()));
        assert_eq!(cal(7 * 86_400), When::Calendar("Mon *-*-* 00:00:00".into()));
        assert_eq!(cal(90 * 60), When::Monotonic { boot: 900, every: 5400 });
        assert_eq!(cal(5 * 86_400), When::Monotonic { boot: 900, every: 432_000 });
        assert_eq!(cal(7 * 60), When::Monotonic { boot: 420, every: 420 });
        assert_eq!(randomized_delay(Duration::from_secs(86_400)), 3600);
        assert_eq!(randomized_delay(Duration::from_secs(900)), 90);
    }

    #[test]
    fn units_read_back() {
        let j = job(86_400);
        let service = service(&j);
        assert!(is_ours(&service));
        assert!(service.contains("Type=oneshot\n"));
        assert!(service.contains("\nExecStart=\"/opt/my tools/safe-prune\" prune --scheduled --cache-dir \"/home/a b/100%% $$HOME/uv\" --keep-tools\n"), "{service}");
        assert!(service.contains("\nEnvironment=\"XDG_STATE_HOME=/home/a b/.local/state\"\n"), "{service}");
        let info = parse_service(&service).unwrap();
        assert_eq!(info.argv, j.argv());
        assert_eq!(info.state_home.as_deref(), Some("/home/a b/.local/state"));
        let timer = timer(&j);
        assert!(is_ours(&timer));
        let info = parse_timer(&timer);
        assert_eq!(info.every.as_deref(), Some("1d"));
        assert_eq!(info.timing, ["OnCalendar=*-*-* 00:00:00", "Persistent=true", "RandomizedDelaySec=3600"]);
        let timer = super::timer(&job(5 * 86_400));
        assert!(timer.contains("\nOnBootSec=900\nOnUnitActiveSec=432000\n") && !timer.contains("Persistent"));
        assert!(!is_ours("[Unit]\nDescription=# Written by safe-prune\n"));
    }

    #[test]
    fn unit_dirs() {
        let home = Some(Path::new("/home/me"));
        assert_eq!(unit_dir(false, None, home), Some(PathBuf::from("/home/me/.config/systemd/user")));
        assert_eq!(unit_dir(false, Some(Path::new("/x")), home), Some(PathBuf::from("/x/systemd/user")));
        assert_eq!(
            unit_dir(false, Some(Path::new("rel")), home),
            Some(PathBuf::from("/home/me/.config/systemd/user"))
        );
        assert_eq!(unit_dir(true, None, None), Some(PathBuf::from("/etc/systemd/system")));
        assert_eq!(unit_dir(false, None, None), None);
    }
}
