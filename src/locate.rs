//! Finding the cache directory exactly the way uv 0.13.8 does (research `uv-cache.md` §6).
//!
//! Precedence: `--cache-dir` > `UV_CACHE_DIR` > `cache-dir` from configuration (`--config-file`
//! alone if given, else the nearest project `uv.toml` / `pyproject.toml [tool.uv]` from the
//! working directory upward, then the user's and the system's `uv.toml`; `--no-config` skips
//! them) > macOS's legacy `~/Library/Caches/uv` when it exists > `$XDG_CACHE_HOME/uv` (absolute
//! values only) > `~/.cache/uv` > `.uv_cache`. A relative `cache-dir` from a config file is
//! relative to the working directory, not to the file: that is what uv does (measured).

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Inputs to the search, gathered once so the search itself is a pure function.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// `--cache-dir`.
    pub cache_dir: Option<PathBuf>,
    /// `--config-file` (or `UV_CONFIG_FILE`).
    pub config_file: Option<PathBuf>,
    /// `--no-config` (or `UV_NO_CONFIG`).
    pub no_config: bool,
    /// The working directory uv would use (`--directory` applied).
    pub cwd: PathBuf,
    /// Environment variables that matter, read by the caller.
    pub env: Env,
}

/// The environment variables the search reads.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub uv_cache_dir: Option<PathBuf>,
    pub uv_config_file: Option<PathBuf>,
    pub uv_no_config: bool,
    pub xdg_cache_home: Option<PathBuf>,
    pub xdg_config_home: Option<PathBuf>,
    pub xdg_config_dirs: Option<String>,
    pub home: Option<PathBuf>,
}

impl Env {
    /// Read the variables from the process environment.
    pub fn from_process() -> Self {
        let path = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        Env {
            uv_cache_dir: path("UV_CACHE_DIR"),
            uv_config_file: path("UV_CONFIG_FILE"),
            uv_no_config: std::env::var("UV_NO_CONFIG").is_ok_and(|v| env_truthy(&v)),
            xdg_cache_home: path("XDG_CACHE_HOME"),
            xdg_config_home: path("XDG_CONFIG_HOME"),
            xdg_config_dirs: std::env::var("XDG_CONFIG_DIRS").ok(),
            // `HOME`, else the password database, as uv's `home_dir` does.
            home: std::env::home_dir().filter(|h| !h.as_os_str().is_empty()),
        }
    }
}

/// uv's reading of a boolean environment variable.
pub fn env_truthy(value: &str) -> bool {
    matches!(value.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "y" | "on" | "t")
}

/// Where the cache directory came from, for `-v` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Flag,
    EnvVar,
    ConfigFile(PathBuf),
    Default,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Flag => f.write_str("--cache-dir"),
            Origin::EnvVar => f.write_str("UV_CACHE_DIR"),
            Origin::ConfigFile(path) => write!(f, "cache-dir in {}", path.display()),
            Origin::Default => f.write_str("uv's default location"),
        }
    }
}

/// The result: the directory as uv would display it, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// Possibly relative (uv keeps `--cache-dir ./rel` relative in its output).
    pub path: PathBuf,
    pub origin: Origin,
}

/// A configuration file that could not be read or parsed.
#[derive(Debug, thiserror::Error)]
#[error("cannot read uv configuration {}: {reason}; fix the file or pass --no-config", path.display())]
pub struct ConfigError {
    pub path: PathBuf,
    pub reason: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct UvOptions {
    cache_dir: Option<PathBuf>,
}

#[derive(Deserialize)]
struct PyProject {
    tool: Option<Tool>,
}

#[derive(Deserialize)]
struct Tool {
    uv: Option<UvOptions>,
}

/// Resolve the cache directory.
pub fn locate(inputs: &Inputs) -> Result<Located, ConfigError> {
    if let Some(dir) = &inputs.cache_dir {
        return Ok(Located { path: dir.clone(), origin: Origin::Flag });
    }
    if let Some(dir) = &inputs.env.uv_cache_dir {
        return Ok(Located { path: dir.clone(), origin: Origin::EnvVar });
    }
    if let Some((dir, file)) = from_config(inputs)? {
        return Ok(Located { path: dir, origin: Origin::ConfigFile(file) });
    }
    Ok(Located { path: default_dir(&inputs.env, &inputs.cwd), origin: Origin::Default })
}

/// `cache-dir` from the configuration files uv would read, with the file it came from.
fn from_config(inputs: &Inputs) -> Result<Option<(PathBuf, PathBuf)>, ConfigError> {
    let explicit = inputs.config_file.clone().or_else(|| inputs.env.uv_config_file.clone());
    if let Some(file) = explicit {
        // An explicit file is used alone (and is read even with --no-config, like uv).
        let file = if file.is_absolute() { file } else { inputs.cwd.join(file) };
        // uv fails on a missing explicit file; a typo must not prune the default cache.
        let Some(options) = read_uv_toml(&file)? else {
            return Err(ConfigError { path: file, reason: "no such file".into() });
        };
        return Ok(options.cache_dir.map(|d| (d, file)));
    }
    if inputs.no_config || inputs.env.uv_no_config {
        return Ok(None);
    }
    // The project's settings take precedence over the user's, which take precedence over the
    // system's; only `cache-dir` matters here, so the first file that sets it wins.
    for file in project_config(&inputs.cwd)?.into_iter().chain(user_configs(&inputs.env)) {
        let options = if file.file_name().is_some_and(|n| n == "pyproject.toml") {
            read_pyproject(&file)?
        } else {
            read_uv_toml(&file)?
        };
        if let Some(dir) = options.and_then(|o| o.cache_dir) {
            return Ok(Some((dir, file)));
        }
    }
    Ok(None)
}

/// The nearest `uv.toml`, or `pyproject.toml` with a `[tool.uv]` table, from `cwd` upward.
fn project_config(cwd: &Path) -> Result<Option<PathBuf>, ConfigError> {
    for dir in cwd.ancestors() {
        let uv_toml = dir.join("uv.toml");
        if uv_toml.is_file() {
            return Ok(Some(uv_toml));
        }
        let pyproject = dir.join("pyproject.toml");
        if pyproject.is_file() {
            // uv skips (with a warning) a pyproject.toml it cannot parse, and one without
            // `[tool.uv]`, and keeps looking upward.
            if let Ok(text) = std::fs::read_to_string(&pyproject) {
                if let Ok(PyProject { tool: Some(Tool { uv: Some(_) }) }) = toml::from_str(&text) {
                    return Ok(Some(pyproject));
                }
            }
        }
    }
    Ok(None)
}

/// The user's `uv.toml`, then the system's.
fn user_configs(env: &Env) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let config_home = env
        .xdg_config_home
        .clone()
        .filter(|p| p.is_absolute())
        .or_else(|| env.home.as_ref().map(|h| h.join(".config")));
    if let Some(dir) = config_home {
        files.push(dir.join("uv").join("uv.toml"));
    }
    files.extend(system_config_candidates(env).into_iter().find(|f| f.is_file()));
    files.retain(|f| f.is_file());
    files
}

/// Where uv looks for the system's `uv.toml`, in order (the first that exists is used):
/// `<dir>/uv/uv.toml` for each absolute dir of `XDG_CONFIG_DIRS` (`/etc/xdg` when unset), then
/// `/etc/uv/uv.toml`.
fn system_config_candidates(env: &Env) -> Vec<PathBuf> {
    let dirs = env.xdg_config_dirs.clone().unwrap_or_else(|| "/etc/xdg".into());
    dirs.split(':')
        .filter(|d| Path::new(d).is_absolute())
        .map(|d| Path::new(d).join("uv").join("uv.toml"))
        .chain([PathBuf::from("/etc/uv/uv.toml")])
        .collect()
}

fn read_text(file: &Path) -> Result<Option<String>, ConfigError> {
    match std::fs::read_to_string(file) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ConfigError { path: file.to_path_buf(), reason: e.to_string() }),
    }
}

fn read_uv_toml(file: &Path) -> Result<Option<UvOptions>, ConfigError> {
    let Some(text) = read_text(file)? else { return Ok(None) };
    // Only `cache-dir` is read; other keys are uv's business, so unknown keys are fine.
    toml::from_str::<UvOptions>(&text)
        .map(Some)
        .map_err(|e| ConfigError { path: file.to_path_buf(), reason: e.message().to_string() })
}

fn read_pyproject(file: &Path) -> Result<Option<UvOptions>, ConfigError> {
    let Some(text) = read_text(file)? else { return Ok(None) };
    Ok(toml::from_str::<PyProject>(&text).ok().and_then(|p| p.tool).and_then(|t| t.uv))
}

/// uv's default when nothing is configured.
fn default_dir(env: &Env, cwd: &Path) -> PathBuf {
    if cfg!(target_os = "macos") {
        if let Some(home) = &env.home {
            let legacy = home.join("Library").join("Caches").join("uv");
            if legacy.is_dir() {
                return legacy;
            }
        }
    }
    if let Some(xdg) = env.xdg_cache_home.as_ref().filter(|p| p.is_absolute()) {
        return xdg.join("uv");
    }
    match &env.home {
        Some(home) => home.join(".cache").join("uv"),
        None => cwd.join(".uv_cache"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(cwd: &Path) -> Inputs {
        Inputs { cwd: cwd.to_path_buf(), ..Inputs::default() }
    }

    #[test]
    fn precedence_flag_env_config_default() {
        let tmp = tempfile::tempdir().unwrap();
        let project = tmp.path().join("proj");
        std::fs::create_dir_all(project.join("sub")).unwrap();
        std::fs::write(project.join("uv.toml"), "cache-dir = \"/from/uvtoml\"\n").unwrap();
        let mut i = inputs(&project.join("sub"));
        i.env.home = Some(tmp.path().join("home"));
        assert_eq!(locate(&i).unwrap().path, PathBuf::from("/from/uvtoml"));
        i.env.uv_cache_dir = Some("relcache".into());
        assert_eq!(locate(&i).unwrap(), Located { path: "relcache".into(), origin: Origin::EnvVar });
        i.cache_dir = Some("./rel2".into());
        assert_eq!(locate(&i).unwrap().path, PathBuf::from("./rel2"));
        i.cache_dir = None;
        i.env.uv_cache_dir = None;
        i.no_config = true;
        assert_eq!(locate(&i).unwrap().path, tmp.path().join("home/.cache/uv"));
    }

    #[test]
    fn pyproject_without_tool_uv_is_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("pyproject.toml"), "[tool.uv]\ncache-dir = \"outer\"\n").unwrap();
        let inner = tmp.path().join("inner");
        std::fs::create_dir(&inner).unwrap();
        std::fs::write(inner.join("pyproject.toml"), "[project]\nname = \"x\"\n").unwrap();
        let mut i = inputs(&inner);
        i.env.home = Some("/nonexistent-home".into());
        let found = locate(&i).unwrap();
        assert_eq!(found.path, PathBuf::from("outer"));
        assert_eq!(found.origin, Origin::ConfigFile(tmp.path().join("pyproject.toml")));
    }

    #[test]
    fn uv_toml_masks_pyproject_in_same_dir() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("pyproject.toml"), "[tool.uv]\ncache-dir = \"py\"\n").unwrap();
        std::fs::write(tmp.path().join("uv.toml"), "python-preference = \"only-system\"\n").unwrap();
        let mut i = inputs(tmp.path());
        i.env.xdg_cache_home = Some("/xdg".into());
        // uv.toml wins the directory; it has no cache-dir, so the default applies.
        assert_eq!(locate(&i).unwrap().path, PathBuf::from("/xdg/uv"));
    }

    #[test]
    fn user_config_and_relative_xdg() {
        let tmp = tempfile::tempdir().unwrap();
        let conf = tmp.path().join("conf");
        std::fs::create_dir_all(conf.join("uv")).unwrap();
        std::fs::write(conf.join("uv/uv.toml"), "cache-dir = \"/user/cache\"\n").unwrap();
        let mut i = inputs(tmp.path());
        i.env.xdg_config_home = Some(conf.clone());
        assert_eq!(locate(&i).unwrap().path, PathBuf::from("/user/cache"));
        i.env.uv_no_config = true;
        i.env.xdg_cache_home = Some("relxdg".into());
        i.env.home = Some("/h".into());
        assert_eq!(locate(&i).unwrap().path, PathBuf::from("/h/.cache/uv"));
    }

    #[test]
    fn broken_uv_toml_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("uv.toml"), "cache-dir = [").unwrap();
        let err = locate(&inputs(tmp.path())).unwrap_err();
        assert!(err.to_string().contains("uv.toml"), "{err}");
        assert!(err.to_string().contains("--no-config"), "{err}");
    }

    #[test]
    fn explicit_config_file_is_used_alone() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("uv.toml"), "cache-dir = \"/project\"\n").unwrap();
        std::fs::write(tmp.path().join("cf.toml"), "cache-dir = \"/explicit\"\n").unwrap();
        let mut i = inputs(tmp.path());
        i.config_file = Some("cf.toml".into());
        assert_eq!(locate(&i).unwrap().path, PathBuf::from("/explicit"));
        // A missing explicit file is an error, as in uv: never the default cache instead.
        i.config_file = Some("typo.toml".into());
        let err = locate(&i).unwrap_err();
        assert!(err.to_string().contains("typo.toml") && err.to_string().contains("no such file"), "{err}");
    }

    /// With `XDG_CONFIG_DIRS` unset uv looks in `/etc/xdg`, then `/etc/uv`.
    #[test]
    fn system_config_defaults_to_etc_xdg() {
        let paths = |dirs: Option<&str>| {
            let env = Env { xdg_config_dirs: dirs.map(String::from), ..Env::default() };
            system_config_candidates(&env)
        };
        assert_eq!(paths(None), [PathBuf::from("/etc/xdg/uv/uv.toml"), PathBuf::from("/etc/uv/uv.toml")]);
        assert_eq!(
            paths(Some("rel:/a:")),
            [PathBuf::from("/a/uv/uv.toml"), PathBuf::from("/etc/uv/uv.toml")]
        );
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("uv")).unwrap();
        std::fs::write(tmp.path().join("uv/uv.toml"), "").unwrap();
        let env =
            Env { xdg_config_dirs: Some(format!("/nonexistent:{}", tmp.path().display())), ..Env::default() };
        assert_eq!(user_configs(&env), [tmp.path().join("uv/uv.toml")]);
    }
}
