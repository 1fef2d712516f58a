//! macOS: a LaunchAgent property list rendered from a [`Job`], and read back for
//! `schedule status`. Pure functions; `super` does the I/O (and `launchctl`, on macOS only).

use std::path::{Path, PathBuf};

use super::{Job, MARKER};

/// The agent's label (and file name, `<LABEL>.plist`).
pub const LABEL: &str = "io.github.safe-prune.schedule";

/// `~/Library/LaunchAgents/<LABEL>.plist`.
pub fn plist_path(home: &Path) -> PathBuf {
    home.join("Library/LaunchAgents").join(format!("{LABEL}.plist"))
}

/// Text for a plist `<string>`: XML-escaped; tab, newline and carriage return as character
/// references (so no parser normalizes them away); other control characters cannot be
/// written in XML 1.0 at all.
fn xml_text(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if c.is_control() && (c as u32) < 0x80 => {
                return Err(format!("{text:?} has a control character, which a plist cannot hold"))
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// The LaunchAgent: `ProgramArguments` every `StartInterval` seconds (launchd runs a missed
/// interval once at wake-up), as a background process at low CPU and I/O priority.
pub fn plist(job: &Job) -> Result<String, String> {
    let mut args = String::new();
    for word in job.argv() {
        args.push_str(&format!("\t\t<string>{}</string>\n", xml_text(word)?));
    }
    Ok(format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<!-- {MARKER} -->
<plist version="1.0">
<dict>
	<key>Label</key>
	<string>{LABEL}</string>
	<key>ProgramArguments</key>
	<array>
{args}	</array>
	<key>EnvironmentVariables</key>
	<dict>
		<key>XDG_STATE_HOME</key>
		<string>{state}</string>
	</dict>
	<key>StartInterval</key>
	<integer>{interval}</integer>
	<key>RunAtLoad</key>
	<false/>
	<key>ProcessType</key>
	<string>Background</string>
	<key>LowPriorityIO</key>
	<true/>
	<key>LowPriorityBackgroundIO</key>
	<true/>
	<key>Nice</key>
	<integer>19</integer>
</dict>
</plist>
"#,
        state = xml_text(&job.state_home)?,
        interval = job.every.as_secs(),
    ))
}

/// True when `text` is a plist `install` wrote.
pub fn is_ours(text: &str) -> bool {
    text.contains(&format!("<!-- {MARKER} -->"))
}

/// What `status` reads back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlistInfo {
    pub argv: Vec<String>,
    pub interval: Option<u64>,
    pub state_home: Option<String>,
}

/// Read back a plist in the layout [`plist`] writes (not a general plist parser).
pub fn parse(text: &str) -> Result<PlistInfo, String> {
    let after = |key: &str| text.split_once(&format!("<key>{key}</key>")).map(|(_, rest)| rest);
    let array = after("ProgramArguments")
        .and_then(|rest| rest.split_once("<array>"))
        .and_then(|(_, rest)| rest.split_once("</array>"))
        .map(|(inner, _)| inner)
        .ok_or("no ProgramArguments array")?;
    let argv = strings(array)?;
    let interval = after("StartInterval")
        .and_then(|rest| rest.split_once("<integer>"))
        .and_then(|(_, rest)| rest.split_once("</integer>"))
        .and_then(|(n, _)| n.trim().parse().ok());
    let state_home = after("XDG_STATE_HOME").map(strings).transpose()?.and_then(|s| s.into_iter().next());
    Ok(PlistInfo { argv, interval, state_home })
}

/// The `<string>` values in `text`, unescaped.
fn strings(mut text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    while let Some((_, rest)) = text.split_once("<string>") {
        let (value, rest) = rest.split_once("</string>").ok_or("an unterminated <string>")?;
        out.push(xml_unescape(value)?);
        text = rest;
    }
    Ok(out)
}

fn xml_unescape(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let (entity, after) = rest[at + 1..].split_once(';').ok_or("an unterminated entity")?;
        let c = match entity {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = match entity.strip_prefix("#x") {
                    Some(hex) => u32::from_str_radix(hex, 16).ok(),
                    None => entity.strip_prefix('#').and_then(|d| d.parse().ok()),
                };
                code.and_then(char::from_u32).ok_or_else(|| format!("unknown entity &{entity};"))?
            }
        };
        out.push(c);
        rest = after;
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn plist_reads_back() {
        let job = Job {
            program: "/Users/me/.local/bin/safe-prune".into(),
            args: ["prune", "--scheduled", "--cache-dir", "/Users/me/a<b>&c\td", "--keep-tools"]
                .map(String::from)
                .to_vec(),
            state_home: "/Users/me/.local/state".into(),
            every: Duration::from_secs(86_400),
        };
        let text = plist(&job).unwrap();
        assert!(is_ours(&text));
        assert!(text.contains("<string>/Users/me/a&lt;b&gt;&amp;c&#9;d</string>"), "{text}");
        let info = parse(&text).unwrap();
        assert_eq!(info.argv, job.argv());
        assert_eq!(info.interval, Some(86_400));
        assert_eq!(info.state_home.as_deref(), Some("/Users/me/.local/state"));
        let bad = Job { state_home: "/x\x01".into(), ..job };
        assert!(plist(&bad).is_err());
    }
}
