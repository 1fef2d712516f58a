//! Command-line types (clap) and nothing else: `main` turns them into plain settings.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Prune the uv cache without deleting what running processes still use.
///
/// Removes exactly what `uv cache prune` removes, except every cache entry that a running
/// process uses (found by scanning every process: executable, working directory, open files,
/// memory maps, environment and command line), which is kept and explained.
#[derive(Debug, Parser)]
#[command(name = "safe-prune", version = crate::version::LONG, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Prune options when no subcommand is given (`safe-prune` = `safe-prune prune`).
    #[command(flatten)]
    pub prune: PruneArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Remove unused cache entries, keeping every entry a running process uses (default).
    Prune(PruneArgs),
    /// List the cache entries running processes use, and who uses them; removes nothing.
    InUse(InUseArgs),
    /// Show where the cache's space goes, per bucket, package and entry, and what a prune,
    /// `--keep-tools` and `--ci` would free; removes nothing.
    Du(DuArgs),
    /// Clear the cache like `uv cache clean [PACKAGE...]`, keeping every entry in use.
    Clean(CleanArgs),
    /// Install or remove a `uv` link to safe-prune, so `uv cache prune`/`clean` are safe.
    Shim(ShimArgs),
    /// Prune on a schedule (systemd timer, launchd agent or cron): install, status, uninstall.
    Schedule(ScheduleArgs),
    /// Print a shell completion script for safe-prune.
    Completions(CompletionsArgs),
    /// Print safe-prune's man page (roff) on stdout.
    Man,
    /// Run on every host sharing the cache: publish what this host's processes use into a
    /// registry folder, and answer prunes' announcements (see `--registry`).
    Agent(AgentArgs),
}

/// Output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// uv's messages on stderr.
    #[default]
    Human,
    /// One JSON object on stdout.
    Json,
}

/// Options shared by every command that reads a cache.
#[derive(Debug, Clone, Args, Default)]
pub struct CacheArgs {
    /// Path to the cache directory (default: as uv finds it).
    #[arg(long, env = "UV_CACHE_DIR", value_name = "DIR", global = true)]
    pub cache_dir: Option<PathBuf>,

    /// Ignore uv configuration files when looking for the cache directory.
    #[arg(long, global = true)]
    pub no_config: bool,

    /// Read the cache directory from this uv configuration file.
    #[arg(long, env = "UV_CONFIG_FILE", value_name = "FILE", global = true)]
    pub config_file: Option<PathBuf>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Human, global = true)]
    pub format: Format,

    /// Print nothing but errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// Explain each entry removed or kept (repeat for more).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

#[derive(Debug, Clone, Args, Default)]
pub struct PruneArgs {
    #[command(flatten)]
    pub cache: CacheArgs,

    /// Also remove pre-built wheels and unpacked source distributions, like `uv cache prune --ci`.
    #[arg(long)]
    pub ci: bool,

    #[command(flatten)]
    pub removal: RemovalArgs,

    /// Keep the newest N (default 1) cached environments of each tool (uvx, uv tool run,
    /// uv run --with), so its next run starts without installing.
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "1", require_equals = true)]
    pub keep_tools: Option<u32>,

    /// Remove only entries last used longer ago than DURATION (30d, 12h, ...).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub older_than: Option<Duration>,

    /// Then, while the cache is larger than SIZE (10GiB, 500MB, 1.5G), remove the least
    /// recently used wheels, unpacked sdists and index entries.
    #[arg(long, value_name = "SIZE", value_parser = crate::retention::parse_size)]
    pub max_size: Option<u64>,

    /// Do nothing (one directory read) unless `archive-v0` holds at least N more entries than
    /// after the last completed run with --if-grown (the count is kept in the state folder).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub if_grown: Option<u64>,

    /// Run as scheduled by `safe-prune schedule install`: log the run to the state folder.
    #[arg(long, hide = true)]
    pub scheduled: bool,

    #[command(flatten)]
    pub shared: RegistryArgs,
}

/// How a removing command (prune, clean) treats uv's lock and what it may not see.
#[derive(Debug, Clone, Args, Default)]
pub struct RemovalArgs {
    /// Show what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Remove nothing while a process that could use the cache cannot be inspected.
    #[arg(long)]
    pub strict: bool,

    /// Do not wait for uv's cache lock; accepted for compatibility with `uv cache prune|clean`.
    #[arg(long)]
    pub force: bool,

    /// Wait for uv's cache lock (up to DURATION, default 5m) instead of running beside uv.
    #[arg(long, value_name = "DURATION", num_args = 0..=1, default_missing_value = "5m", value_parser = parse_duration)]
    pub wait: Option<Duration>,

    /// While other uv processes run, keep entries younger than this.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub grace: Duration,
}

/// One cache, many hosts: what every host's `safe-prune agent` publishes is kept too.
#[derive(Debug, Clone, Args, Default)]
pub struct RegistryArgs {
    /// Also keep what other hosts' processes use, as their `safe-prune agent --registry DIR`
    /// publish it (DIR on the shared filesystem, not inside the cache).
    #[arg(long, env = "SAFE_PRUNE_REGISTRY", value_name = "DIR")]
    pub registry: Option<PathBuf>,

    /// With --registry: wait at most this long for the hosts' answers before removing.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub registry_timeout: Duration,

    /// With --registry: ignore a host's record after this long without a heartbeat.
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = parse_duration)]
    pub host_expiry: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub cache: CacheArgs,

    /// The registry folder, on the filesystem the hosts share (not inside the cache).
    #[arg(long, env = "SAFE_PRUNE_REGISTRY", value_name = "DIR")]
    pub registry: PathBuf,

    /// Republish this often (the host turns stale after three intervals without one).
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = parse_duration)]
    pub interval: Duration,

    /// Publish once and exit (no answers to announcements).
    #[arg(long)]
    pub once: bool,
}

#[derive(Debug, Clone, Args)]
pub struct InUseArgs {
    #[command(flatten)]
    pub cache: CacheArgs,
}

#[derive(Debug, Clone, Args)]
pub struct DuArgs {
    #[command(flatten)]
    pub cache: CacheArgs,

    /// Show at most N packages (and, with -v, entries); 0 shows all.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,
}

#[derive(Debug, Clone, Args)]
pub struct CleanArgs {
    #[command(flatten)]
    pub cache: CacheArgs,

    /// Remove only these packages' entries (like `uv cache clean PACKAGE...`).
    #[arg(value_name = "PACKAGE", value_parser = parse_package_name)]
    pub packages: Vec<String>,

    #[command(flatten)]
    pub removal: RemovalArgs,

    #[command(flatten)]
    pub shared: RegistryArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ShimArgs {
    #[command(subcommand)]
    pub action: ShimAction,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ShimAction {
    /// Link DIR/uv to this safe-prune (DIR must come before the real uv on PATH).
    Install(ShimDirArgs),
    /// Remove DIR/uv if it is a link to safe-prune.
    Uninstall(ShimDirArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ShimDirArgs {
    /// Directory of the `uv` link (default: ~/.local/bin).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell to generate completions for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Clone, Args)]
pub struct ScheduleArgs {
    #[command(subcommand)]
    pub action: ScheduleAction,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ScheduleAction {
    /// Prune every DURATION: a systemd timer (Linux), a LaunchAgent (macOS) or a crontab line
    /// (printed), running this safe-prune on the cache found now.
    Install(ScheduleInstallArgs),
    /// Show the installed schedule and the last runs.
    Status(ScheduleWhereArgs),
    /// Disable the schedule and remove the files `install` wrote (only those).
    Uninstall(ScheduleWhereArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ScheduleInstallArgs {
    /// How often to prune (15m, 6h, 1d, 1w).
    #[arg(long, value_name = "DURATION", default_value = "1d", value_parser = parse_duration)]
    pub every: Duration,

    /// A system unit in /etc/systemd/system (runs as root), not a user unit.
    #[arg(long)]
    pub system: bool,

    /// Write the files, but do not enable or load them.
    #[arg(long)]
    pub no_enable: bool,

    /// Print a crontab line instead (safe-prune never edits a crontab).
    #[arg(long, conflicts_with = "backend")]
    pub cron: bool,

    /// The scheduler (default: launchd on macOS, systemd where it runs, else cron).
    #[arg(long, value_enum, hide = true)]
    pub backend: Option<ScheduleBackend>,

    /// Options for the scheduled `safe-prune prune` (default: --keep-tools), checked now.
    #[arg(last = true, value_name = "PRUNE-OPTIONS", allow_hyphen_values = true)]
    pub prune_options: Vec<std::ffi::OsString>,

    /// Install `safe-prune agent` as a service that runs all the time instead (one cache, many
    /// hosts): it publishes this host's in-use entries to --registry every --interval.
    #[arg(long, requires = "registry", conflicts_with_all = ["every", "prune_options"])]
    pub agent: bool,

    /// With --agent: the registry folder on the shared filesystem (next to the cache).
    #[arg(long, value_name = "DIR", requires = "agent")]
    pub registry: Option<PathBuf>,

    /// With --agent: how often the agent republishes.
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = parse_duration)]
    pub interval: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct ScheduleWhereArgs {
    /// The system unit in /etc/systemd/system, not the user unit.
    #[arg(long)]
    pub system: bool,

    /// The agent's service (`schedule install --agent`), not the prune schedule.
    #[arg(long)]
    pub agent: bool,

    /// The scheduler (default: launchd on macOS, systemd where it runs, else cron).
    #[arg(long, value_enum, hide = true)]
    pub backend: Option<ScheduleBackend>,
}

/// Where a schedule lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScheduleBackend {
    Systemd,
    Launchd,
    Cron,
}

/// A package name as uv accepts it (PEP 503 normalized: lower case, runs of `-_.` → `-`).
pub fn parse_package_name(text: &str) -> Result<String, String> {
    crate::clean::normalize_package_name(text).ok_or_else(|| {
        format!(
            "Not a valid package or extra name: \"{text}\". Names must start and end with a letter or digit and may only contain -, _, ., and alphanumeric characters."
        )
    })
}

/// Parse `30s`, `5m`, `12h`, `30d`, `1w`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| {
        format!("invalid duration `{text}`: expected a number with a unit, like 30s, 5m, 12h, 30d")
    })?;
    let scale = match unit {
        "" | "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("invalid duration unit in `{text}`: use s, m, h, d or w")),
    };
    number
        .checked_mul(scale)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("duration `{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("99999999999999999999w").is_err());
    }

    #[test]
    fn clap_definition_is_valid() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
