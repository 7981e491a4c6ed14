//! Settings: flags (and their `TOOLHOST_*` variables, which clap reads) over `toolhost.toml`
//! over defaults, merged once into one validated `Settings`. Nothing else reads the
//! environment or the config file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::cli::{GlobalArgs, LimitArgs, LogFormat};
use crate::runtime::cache;
use crate::sandbox::{Limits, SandboxConfig};

/// The config file looked for in the current folder when `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "toolhost.toml";

/// `toolhost.toml`, as written. Every section and key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub cache_dir: Option<PathBuf>,
    #[serde(default)]
    pub log: LogFile,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default)]
    pub sandbox: SandboxFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    pub format: Option<LogFormat>,
    pub filter: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub timeout_s: Option<f64>,
    pub memory_mb: Option<u64>,
    pub fuel: Option<u64>,
    pub output_bytes: Option<usize>,
    pub result_output_bytes: Option<usize>,
    pub workspace_mb: Option<u64>,
    pub workspace_files: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxFile {
    pub max_concurrency: Option<usize>,
    pub queue_depth: Option<usize>,
    pub default_runtime: Option<String>,
}

/// Everything toolhost runs with, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub cache_dir: PathBuf,
    pub log_format: LogFormat,
    pub log_filter: String,
    pub sandbox: SandboxConfig,
}

impl Settings {
    /// Reads the config file (if any) and merges it under the flags.
    pub fn load(global: &GlobalArgs, limits: &LimitArgs) -> Result<Settings> {
        let file = read_file_config(global.config.as_deref())?;
        Settings::merge(global, limits, file)
    }

    pub fn merge(global: &GlobalArgs, flags: &LimitArgs, file: FileConfig) -> Result<Settings> {
        let defaults = Limits::default();
        let sandbox_defaults = SandboxConfig::default();
        let limits_file = &file.limits;
        let timeout_s = flags.timeout.or(limits_file.timeout_s).unwrap_or(defaults.timeout.as_secs_f64());
        if !(timeout_s > 0.0 && timeout_s <= 3600.0) {
            bail!("timeout must be between 0 and 3600 seconds, not {timeout_s}");
        }
        let memory_mb = flags.memory_mb.or(limits_file.memory_mb).unwrap_or(defaults.memory_bytes >> 20);
        if !(64..=4096).contains(&memory_mb) {
            bail!("memory must be between 64 and 4096 MiB (wasm32 addresses 4 GiB), not {memory_mb}");
        }
        let limits = Limits {
            timeout: Duration::from_secs_f64(timeout_s),
            fuel: positive("fuel", flags.fuel.or(limits_file.fuel).unwrap_or(defaults.fuel))?,
            memory_bytes: memory_mb << 20,
            output_bytes: positive(
                "output bytes",
                flags.output_bytes.or(limits_file.output_bytes).unwrap_or(defaults.output_bytes),
            )?,
            result_output_bytes: positive(
                "result output bytes",
                flags.result_output_bytes.or(limits_file.result_output_bytes).unwrap_or(defaults.result_output_bytes),
            )?,
            workspace_bytes: positive(
                "workspace MiB",
                flags.workspace_mb.or(limits_file.workspace_mb).unwrap_or(defaults.workspace_bytes >> 20),
            )? << 20,
            workspace_files: positive(
                "workspace files",
                flags.workspace_files.or(limits_file.workspace_files).unwrap_or(defaults.workspace_files),
            )?,
        };
        if limits.result_output_bytes > 256 << 10 {
            bail!("result output bytes must be at most 256 KiB so every result stays under 512 KiB");
        }
        let sandbox = SandboxConfig {
            limits,
            max_concurrency: positive(
                "max concurrency",
                flags.max_concurrency.or(file.sandbox.max_concurrency).unwrap_or(sandbox_defaults.max_concurrency),
            )?,
            queue_depth: flags.queue_depth.or(file.sandbox.queue_depth).unwrap_or(sandbox_defaults.queue_depth),
            default_runtime: file.sandbox.default_runtime.clone().unwrap_or(sandbox_defaults.default_runtime),
        };
        Ok(Settings {
            cache_dir: global.cache_dir.clone().or(file.cache_dir).unwrap_or_else(cache::default_root),
            log_format: global.log_format.or(file.log.format).unwrap_or(LogFormat::Text),
            log_filter: global.log.clone().or(file.log.filter).unwrap_or_else(|| "info".to_string()),
            sandbox,
        })
    }
}

fn positive<T: PartialOrd + Default + std::fmt::Display>(what: &str, value: T) -> Result<T> {
    if value <= T::default() {
        bail!("{what} must be positive, not {value}");
    }
    Ok(value)
}

/// The config file: the one named, or `./toolhost.toml` if present, or none.
pub fn read_file_config(explicit: Option<&Path>) -> Result<FileConfig> {
    let path = match explicit {
        Some(path) => path.to_path_buf(),
        None if Path::new(DEFAULT_CONFIG_FILE).is_file() => PathBuf::from(DEFAULT_CONFIG_FILE),
        None => return Ok(FileConfig::default()),
    };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("cannot read the config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn global() -> GlobalArgs {
        GlobalArgs { config: None, cache_dir: None, log_format: None, log: None }
    }

    #[test]
    fn flags_beat_the_file_which_beats_the_defaults() {
        let file: FileConfig =
            toml::from_str("[limits]\ntimeout_s = 10\nmemory_mb = 512\n[sandbox]\nqueue_depth = 3\n").expect("toml");
        let flags = LimitArgs { timeout: Some(5.0), ..LimitArgs::default() };
        let settings = Settings::merge(&global(), &flags, file).expect("settings");
        assert_eq!(settings.sandbox.limits.timeout, Duration::from_secs(5));
        assert_eq!(settings.sandbox.limits.memory_bytes, 512 << 20);
        assert_eq!(settings.sandbox.queue_depth, 3);
        assert_eq!(settings.sandbox.limits.fuel, Limits::default().fuel);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let unknown = toml::from_str::<FileConfig>("[limits]\ntimeout = 10\n");
        assert!(unknown.is_err(), "timeout_s is the key");
        let flags = LimitArgs { memory_mb: Some(5), ..LimitArgs::default() };
        let err = Settings::merge(&global(), &flags, FileConfig::default()).expect_err("too small");
        assert!(err.to_string().contains("between 64 and 4096 MiB"), "{err}");
        let flags = LimitArgs { timeout: Some(0.0), ..LimitArgs::default() };
        assert!(Settings::merge(&global(), &flags, FileConfig::default()).is_err());
    }
}
