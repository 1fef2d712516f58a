//! cron: the crontab line for a [`Job`] (printed, never installed). Pure functions.
//!
//! The command is POSIX-shell quoted (cron runs it with `/bin/sh`), and every `%` is written
//! `\%`: crontab(5) turns an unescaped `%` into a newline and drops the backslash of `\%`.

use std::time::Duration;

use super::{human_duration, Job};

/// A word for `/bin/sh`: as is when made only of characters the shell never interprets, else
/// in single quotes (a `'` inside as `'\''`).
pub fn sh_quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "@%+=:,./_-".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// The five time fields for `every`. `seed` picks the minute (and, for intervals of several
/// hours, the first hour), so that machines do not all prune at the same minute; a day
/// starts at 00:MM, a week on Monday at 00:MM.
pub fn fields(every: Duration, seed: u64) -> Result<String, String> {
    let secs = every.as_secs();
    let minutes = secs / 60;
    let minute = seed % 60;
    let list = |first: u64, step: u64, end: u64| {
        (0..end / step).map(|k| (first + k * step).to_string()).collect::<Vec<_>>().join(",")
    };
    if secs % 60 == 0 && minutes > 0 {
        if minutes < 60 && 60 % minutes == 0 {
            return Ok(format!("{} * * * *", list(minute % minutes, minutes, 60)));
        }
        if minutes % 60 == 0 {
            let hours = minutes / 60;
            if hours == 1 {
                return Ok(format!("{minute} * * * *"));
            }
            if hours < 24 && 24 % hours == 0 {
                return Ok(format!("{minute} {} * * *", list(seed / 60 % hours, hours, 24)));
            }
            if hours == 24 {
                return Ok(format!("{minute} 0 * * *"));
            }
            if hours == 24 * 7 {
                return Ok(format!("{minute} 0 * * 1"));
            }
        }
    }
    Err(format!(
        "cron cannot repeat every {}: use an interval that divides an hour (15m) or a day (6h), or 1d or 1w",
        human_duration(every)
    ))
}

/// The crontab line: fields, `XDG_STATE_HOME=<pinned>`, and the command.
pub fn line(job: &Job, seed: u64) -> Result<String, String> {
    let mut words = vec![format!("XDG_STATE_HOME={}", sh_quote(&job.state_home))];
    words.extend(job.argv().into_iter().map(sh_quote));
    let command = words.join(" ");
    if command.contains(['\n', '\r']) {
        return Err("a crontab line cannot hold a line break; use paths and options without one".into());
    }
    Ok(format!("{} {}", fields(job.every, seed)?, command.replace('%', "\\%")))
}

/// A stable 64-bit FNV-1a hash (the seed of [`fields`]).
pub fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("/usr/bin/safe-prune"), "/usr/bin/safe-prune");
        assert_eq!(sh_quote("--older-than=30d"), "--older-than=30d");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
        assert_eq!(sh_quote(""), "''");
        assert_eq!(sh_quote("~x"), "'~x'");
        assert_eq!(sh_quote("$HOME"), "'$HOME'");
    }

    #[test]
    fn schedules() {
        let f = |s: u64, seed: u64| fields(Duration::from_secs(s), seed);
        assert_eq!(f(900, 7).unwrap(), "7,22,37,52 * * * *");
        assert_eq!(f(900, 59).unwrap(), "14,29,44,59 * * * *");
        assert_eq!(f(3600, 7).unwrap(), "7 * * * *");
        assert_eq!(f(6 * 3600, 7 + 60 * 3).unwrap(), "7 3,9,15,21 * * *");
        assert_eq!(f(86_400, 7).unwrap(), "7 0 * * *");
        assert_eq!(f(7 * 86_400, 7).unwrap(), "7 0 * * 1");
        assert!(f(90 * 60, 0).is_err());
        assert!(f(5 * 86_400, 0).unwrap_err().contains("every 5d"));
    }

    #[test]
    fn line_escapes_percent() {
        let job = Job {
            program: "/opt/sp/safe-prune".into(),
            args: ["prune", "--scheduled", "--cache-dir", "/c/100% x"].map(String::from).to_vec(),
            state_home: "/home/me/.local/state".into(),
            every: Duration::from_secs(86_400),
        };
        assert_eq!(
            line(&job, 5).unwrap(),
            "5 0 * * * XDG_STATE_HOME=/home/me/.local/state /opt/sp/safe-prune prune --scheduled --cache-dir '/c/100\\% x'"
        );
        let bad = Job { state_home: "/a\nb".into(), ..job };
        assert!(line(&bad, 5).is_err());
    }
}
