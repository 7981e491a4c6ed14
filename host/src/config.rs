//! Settings: flags (and their `TOOLHOST_*` variables, which clap reads) over `toolhost.toml`
//! over defaults, merged once into one validated `Settings`. Nothing else reads the config
//! file; two things read the environment themselves: the default cache folder
//! (`runtime::cache`: `TOOLHOST_CACHE`, `XDG_CACHE_HOME`, `HOME`) and the Python that fetches
//! runtimes (`runtime::fetch`: `TOOLHOST_PYTHON`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::cli::{AppArgs, GlobalArgs, LimitArgs, LogFormat, ServerArgs};
use crate::runtime::cache;
use crate::sandbox::{Limits, SandboxConfig};

mod reference;
pub use reference::reference;

/// The log filter unless one is given: our own lines at info; the MCP library's per-session
/// lines (opened, initialized, closed) and the protocol errors it answers clients with (e.g.
/// the unsupported version a discover probe on /sse is told) only when asked for.
pub const DEFAULT_LOG_FILTER: &str = "info,rmcp=warn,rmcp::service=error";

/// The config file looked for in the current folder when `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "toolhost.toml";

/// `toolhost.toml`, as written. Every section and key is optional. `docs/configuration.md` is
/// generated from these types and their comments (`toolhost config`).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Where runtimes and compiled modules are kept. Flag `--cache-dir`, env `TOOLHOST_CACHE`.
    /// Default: `$XDG_CACHE_HOME/toolhost`, else `~/.cache/toolhost`.
    pub cache_dir: Option<PathBuf>,
    #[serde(default)]
    pub log: LogFile,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default)]
    pub sandbox: SandboxFile,
    #[serde(default)]
    pub server: ServerFile,
    #[serde(default)]
    pub workspaces: WorkspacesFile,
    #[serde(default)]
    pub resources: ResourcesFile,
    #[serde(default)]
    pub tools: ToolsFile,
    #[serde(default)]
    pub code_mode: CodeModeFile,
}

/// The HTTP listener (`toolhost serve`).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    /// Address to listen on. Flag `--listen`, env `TOOLHOST_LISTEN`. Default `127.0.0.1:8000`.
    #[schemars(with = "Option<String>")]
    pub listen: Option<SocketAddr>,
    /// Bearer tokens clients must send. Env `TOOLHOST_TOKENS` (comma-separated). Default: none,
    /// which is refused beyond loopback unless `allow_unauthenticated`.
    pub tokens: Option<Vec<String>>,
    /// OAuth 2.1: the identity provider whose JWT access tokens are accepted, exactly as in their
    /// `iss`. Flag `--oauth-issuer`, env `TOOLHOST_OAUTH_ISSUER`. Default: none (no OAuth).
    pub oauth_issuer: Option<String>,
    /// OAuth: the audience access tokens must name. Flag `--oauth-audience`, env
    /// `TOOLHOST_OAUTH_AUDIENCE`. Default: `<public_url>/mcp`.
    pub oauth_audience: Option<String>,
    /// OAuth: scopes every access token must carry. Flag `--oauth-scopes`, env
    /// `TOOLHOST_OAUTH_SCOPES` (comma-separated). Default: none.
    pub oauth_scopes: Option<Vec<String>>,
    /// The URL clients reach this server at. Flag `--public-url`, env `TOOLHOST_PUBLIC_URL`.
    /// Default `http://<listen>`.
    pub public_url: Option<String>,
    /// Serve without tokens on a non-loopback address. Flag `--allow-unauthenticated`. Default
    /// false.
    pub allow_unauthenticated: Option<bool>,
    /// Host header values to accept besides loopback names (behind a proxy, in a container).
    /// Flag `--allowed-host`, env `TOOLHOST_ALLOWED_HOSTS`.
    pub allowed_hosts: Option<Vec<String>>,
    /// Browser origins to accept (scheme, host and port, exactly) besides this server's own
    /// (`http://localhost:<port>`) and those of the allowed hosts. Flag `--allowed-origin`.
    pub allowed_origins: Option<Vec<String>>,
    /// The largest request body, in MiB. Flag `--max-body-mb`. Default 16.
    pub max_body_mb: Option<usize>,
    /// Seconds running calls get to finish after SIGTERM/SIGINT. Flag `--shutdown-grace`.
    /// Default 30.
    pub shutdown_grace_s: Option<f64>,
    /// Seconds a streamable HTTP session may stay idle before it is closed. Flag
    /// `--session-idle-timeout`. Default 3600.
    pub session_idle_timeout_s: Option<f64>,
    /// Seconds a session that has sent nothing after its handshake is kept while others are
    /// opened; past that it is closed to make room. Flag `--unused-session-timeout`. Default 60.
    pub unused_session_timeout_s: Option<f64>,
    /// Sessions open at once, all principals together; one more is refused with 429. Flag
    /// `--max-sessions`. Default 1000.
    pub max_sessions: Option<usize>,
    /// Sessions one principal (a token) may have open at once; one more is refused with 429.
    /// Flag `--max-sessions-per-principal`. Default 64.
    pub max_sessions_per_principal: Option<usize>,
}

/// Session workspaces.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspacesFile {
    /// Where workspaces live; several toolhost processes may share it (a ReadWriteMany
    /// volume). Flag `--workspaces-dir`, env `TOOLHOST_WORKSPACES`. Default: the cache folder's
    /// `workspaces/`.
    pub dir: Option<PathBuf>,
    /// A workspace unused this long is removed, e.g. "7d", "12h". Flag `--workspace-ttl`.
    /// Default "7d".
    pub ttl: Option<String>,
    /// Workspaces one principal may own at once. Flag `--max-workspaces-per-principal`.
    /// Default 10000.
    pub max_per_principal: Option<usize>,
    /// Seconds a call that writes a workspace waits while another call writes it, before it is
    /// refused. Flag `--workspace-lock-timeout`. Default 60.
    pub lock_timeout_s: Option<f64>,
    /// Keep Python state (variables, imports, objects) per workspace between calls, restored
    /// into each fresh instance. Flag `--python-state on|off`. Default true.
    pub python_state: Option<bool>,
    /// The most one workspace's saved Python state may take on disk, in MiB. Flag
    /// `--state-mb`. Default 256.
    pub state_mb: Option<u64>,
}

/// Read-only folders offered as resources.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourcesFile {
    /// `[[resources.roots]]`: each folder is listed and readable as `file:///<name>/...` and
    /// mounted read-only in the sandbox at `/<name>`. Flag `--root NAME=PATH`.
    #[serde(default)]
    pub roots: Vec<RootSetting>,
}

/// The tools offered.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolsFile {
    /// Send images as image content to every client, not only those connecting with
    /// `?images=inline`. Flag `--inline-images`. Default false.
    pub inline_images: Option<bool>,
    /// The org tools: one folder per tool with `tool.toml` and `main.py`. Flag `--tools-dir`,
    /// env `TOOLHOST_TOOLS_DIR`. Default `./tools`.
    pub dir: Option<PathBuf>,
    /// Reload the org tools when their folder changes. Flag `--no-watch-tools` turns it off.
    /// Default true.
    pub watch: Option<bool>,
}

/// Guest code calling tools (`from host import tools`).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeModeFile {
    /// The tools guest code may call; `[]` turns code mode off. Flag `--code-mode-tools`.
    /// Default: `calculate_sum`, the file tools and the org tools with `code_mode = true`.
    pub tools: Option<Vec<String>>,
    /// Tool requests one run of guest code may make. Default 1000.
    pub max_calls: Option<u32>,
}

/// A read-only folder offered as resources and mounted in the sandbox.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RootSetting {
    /// Lowercase letters, digits, `-` and `_`; not a path the guest already has.
    pub name: String,
    /// The host folder.
    pub path: PathBuf,
}

/// Logging.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    /// `text` or `json` (one object per line). Flag `--log-format`, env `TOOLHOST_LOG_FORMAT`.
    /// Default `text`.
    pub format: Option<LogFormat>,
    /// In `tracing` syntax, e.g. `info` or `toolhost=debug`. Flag `--log`, env
    /// `TOOLHOST_LOG`. Default `info,rmcp=warn,rmcp::service=error`: the MCP library's
    /// per-session chatter and the errors it answers clients with stay out of the log.
    pub filter: Option<String>,
}

/// What each call may use: the ceiling, a call may ask for less.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Wall-clock seconds per call (at most 3600). Flag `--timeout`. Default 30.
    pub timeout_s: Option<f64>,
    /// Linear memory per call, in MiB (64 to 4096). Flag `--memory-mb`. Default 1024.
    pub memory_mb: Option<u64>,
    /// Instructions (wasmtime fuel) per call. Flag `--fuel`. Default 400000000000.
    pub fuel: Option<u64>,
    /// Bytes the guest may write to each of stdout and stderr; the rest is dropped. Flag
    /// `--output-bytes`. Default 16777216.
    pub output_bytes: Option<usize>,
    /// Bytes of each stream a result carries, head and tail (at most 256 KiB). Flag
    /// `--result-output-bytes`. Default 32768.
    pub result_output_bytes: Option<usize>,
    /// Quota of each workspace, in MiB. Flag `--workspace-mb`. Default 256.
    pub workspace_mb: Option<u64>,
    /// Quota of each workspace, in files and folders. Flag `--workspace-files`. Default 2000.
    pub workspace_files: Option<u64>,
    /// What a call's `/tmp` may hold, in MiB. Flag `--tmp-mb`. Default 128.
    pub tmp_mb: Option<u64>,
    /// What all of one principal's workspaces may hold together, in MiB. Flag
    /// `--principal-disk-mb`. Default 2048.
    pub principal_disk_mb: Option<u64>,
}

/// The sandbox's capacity and runtimes.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxFile {
    /// Guests running at once. Flag `--max-concurrency`. Default: the number of cores.
    pub max_concurrency: Option<usize>,
    /// Calls waiting for a free slot; one more is refused as busy. Flag `--queue-depth`.
    /// Default 64.
    pub queue_depth: Option<usize>,
    /// Calls one principal may have running and waiting at once; one more is refused as busy.
    /// Flag `--max-calls-per-principal`. Default 16.
    pub max_calls_per_principal: Option<usize>,
    /// The runtime calls use: `python` or `python-lite`. Default `python`.
    pub default_runtime: Option<String>,
    /// Run from a pre-initialized snapshot with the preload imported. Flag `--no-snapshot`
    /// turns it off. Default true.
    pub snapshot: Option<bool>,
    /// Modules the snapshot imports. Flag `--preload`. Default numpy, pandas, matplotlib,
    /// matplotlib.pyplot.
    pub preload: Option<Vec<String>>,
    /// Run guests in worker processes, one per `max_concurrency`, each with its own address
    /// space; false runs them on threads of the server. Flag `--worker-processes`. Default true.
    pub worker_processes: Option<bool>,
    /// Write-protect each guest's memory (userfaultfd) so the kernel tells which pages a call
    /// wrote; false finds them by comparing, 1–2 ms slower per call. Flag
    /// `--write-protect`. Default true.
    pub write_protect: Option<bool>,
}

/// Everything toolhost runs with, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub cache_dir: PathBuf,
    pub log_format: LogFormat,
    pub log_filter: String,
    pub sandbox: SandboxConfig,
    pub app: AppSettings,
    pub server: ServerSettings,
}

/// What the MCP service offers (`serve` and `stdio`).
#[derive(Debug, Clone)]
pub struct AppSettings {
    pub workspaces_dir: PathBuf,
    pub workspace_ttl: Duration,
    pub max_workspaces_per_principal: usize,
    pub workspace_lock_timeout: Duration,
    /// The most one workspace's Python state may take on disk; `None`: calls keep no state.
    pub python_state: Option<u64>,
    pub inline_images: bool,
    pub roots: Vec<RootSetting>,
    /// The organisation's tools, one folder each.
    pub tools_dir: PathBuf,
    /// Reload the tools when their folder changes.
    pub watch_tools: bool,
    /// The tools guest code may call; `None`: the built-in default.
    pub code_mode_tools: Option<Vec<String>>,
    /// Tool calls one run of guest code may make.
    pub code_mode_max_calls: u32,
}

/// The tool calls a run of guest code may make unless configured otherwise.
pub const DEFAULT_CODE_MODE_MAX_CALLS: u32 = 1000;

/// The HTTP listener (`serve`).
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub tokens: Vec<String>,
    /// OAuth 2.1 protected resource, when an issuer is configured.
    pub oauth: Option<OAuthSettings>,
    /// The URL clients use; `None`: `http://<listen>`, known once the port is bound.
    pub public_url: Option<String>,
    pub allow_unauthenticated: bool,
    /// Host header values accepted besides loopback names.
    pub allowed_hosts: Vec<String>,
    pub allowed_origins: Vec<String>,
    pub max_body_bytes: usize,
    pub shutdown_grace: Duration,
    pub session_idle_timeout: Duration,
    /// How long a session that has sent nothing after its handshake is kept.
    pub unused_session_timeout: Duration,
    /// Sessions open at once, in all.
    pub max_sessions: usize,
    /// Sessions open at once, per principal.
    pub max_sessions_per_principal: usize,
}

/// Whose access tokens are accepted, and what they must say.
#[derive(Debug, Clone)]
pub struct OAuthSettings {
    /// The issuer URL, exactly as tokens name it (no trailing `/` added or removed).
    pub issuer: String,
    /// The audience tokens must name; `None`: the public URL of `/mcp`.
    pub audience: Option<String>,
    /// Scopes every token must carry.
    pub scopes: Vec<String>,
}

/// The flags of the command being run; commands without a group pass its defaults.
#[derive(Debug, Default)]
pub struct Flags {
    pub limits: LimitArgs,
    pub app: AppArgs,
    pub server: ServerArgs,
}

impl Settings {
    /// Reads the config file (if any) and merges it under the flags.
    pub fn load(global: &GlobalArgs, flags: &Flags) -> Result<Settings> {
        let file = read_file_config(global.config.as_deref())?;
        Settings::merge(global, flags, file)
    }

    pub fn merge(global: &GlobalArgs, all: &Flags, file: FileConfig) -> Result<Settings> {
        let flags = &all.limits;
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
            tmp_bytes: positive("tmp MiB", flags.tmp_mb.or(limits_file.tmp_mb).unwrap_or(defaults.tmp_bytes >> 20))?
                << 20,
            principal_disk_bytes: positive(
                "principal disk MiB",
                flags
                    .principal_disk_mb
                    .or(limits_file.principal_disk_mb)
                    .unwrap_or(defaults.principal_disk_bytes >> 20),
            )? << 20,
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
            max_calls_per_principal: positive(
                "max calls per principal",
                flags
                    .max_calls_per_principal
                    .or(file.sandbox.max_calls_per_principal)
                    .unwrap_or(sandbox_defaults.max_calls_per_principal),
            )?,
            default_runtime: file.sandbox.default_runtime.clone().unwrap_or(sandbox_defaults.default_runtime),
            snapshot: !flags.no_snapshot && file.sandbox.snapshot.unwrap_or(true),
            preload: if flags.preload.is_empty() {
                file.sandbox.preload.clone().unwrap_or(sandbox_defaults.preload)
            } else {
                flags.preload.clone()
            },
            worker_processes: flags
                .worker_processes
                .or(file.sandbox.worker_processes)
                .unwrap_or(sandbox_defaults.worker_processes),
            write_protect: flags.write_protect.or(file.sandbox.write_protect).unwrap_or(sandbox_defaults.write_protect),
            worker_exe: None,
        };
        for module in &sandbox.preload {
            if !crate::sandbox::is_python_module_name(module) {
                bail!("preload entry {module:?} is not a Python module name");
            }
        }
        let cache_dir = global.cache_dir.clone().or_else(|| file.cache_dir.clone()).unwrap_or_else(cache::default_root);
        let app = merge_app(&all.app, &file, &cache_dir)?;
        let server = merge_server(&all.server, &file.server)?;
        Ok(Settings {
            log_format: global.log_format.or(file.log.format).unwrap_or(LogFormat::Text),
            log_filter: global.log.clone().or(file.log.filter).unwrap_or_else(|| DEFAULT_LOG_FILTER.to_string()),
            cache_dir,
            sandbox,
            app,
            server,
        })
    }
}

fn merge_app(flags: &AppArgs, file: &FileConfig, cache_dir: &Path) -> Result<AppSettings> {
    let ttl = match flags.workspace_ttl.clone().or_else(|| file.workspaces.ttl.clone()) {
        Some(text) => humantime::parse_duration(&text)
            .map_err(|e| anyhow::anyhow!("workspace TTL {text:?}: {e} (write it like 7d, 12h or 3600s)"))?,
        None => Duration::from_secs(7 * 24 * 3600),
    };
    if ttl < Duration::from_secs(60) {
        bail!("workspace TTL must be at least a minute, not {}", humantime::format_duration(ttl));
    }
    let lock_timeout = flags.workspace_lock_timeout.or(file.workspaces.lock_timeout_s).unwrap_or(60.0);
    let mut roots = file.resources.roots.clone();
    for (name, path) in &flags.roots {
        roots.retain(|r| &r.name != name);
        roots.push(RootSetting { name: name.clone(), path: path.clone() });
    }
    let code_mode_tools = flags
        .code_mode_tools
        .clone()
        .or_else(|| file.code_mode.tools.clone())
        .map(|names| names.into_iter().map(|n| n.trim().to_string()).filter(|n| !n.is_empty()).collect::<Vec<_>>());
    if code_mode_tools.iter().flatten().any(|name| name == crate::tools::CODE_INTERPRETER) {
        bail!("code mode cannot offer {}: guest code would start guests", crate::tools::CODE_INTERPRETER);
    }
    Ok(AppSettings {
        workspaces_dir: flags
            .workspaces_dir
            .clone()
            .or_else(|| file.workspaces.dir.clone())
            .unwrap_or_else(|| cache_dir.join("workspaces")),
        workspace_ttl: ttl,
        max_workspaces_per_principal: positive(
            "workspaces per principal",
            flags.max_workspaces_per_principal.or(file.workspaces.max_per_principal).unwrap_or(10_000),
        )?,
        workspace_lock_timeout: seconds("workspace lock timeout", lock_timeout, 0.0)?,
        python_state: match flags.python_state.or(file.workspaces.python_state).unwrap_or(true) {
            true => Some(positive("state MiB", flags.state_mb.or(file.workspaces.state_mb).unwrap_or(256))? << 20),
            false => None,
        },
        inline_images: flags.inline_images || file.tools.inline_images.unwrap_or(false),
        roots,
        tools_dir: flags.tools_dir.clone().or_else(|| file.tools.dir.clone()).unwrap_or_else(|| PathBuf::from("tools")),
        watch_tools: !flags.no_watch_tools && file.tools.watch.unwrap_or(true),
        code_mode_tools,
        code_mode_max_calls: positive(
            "code mode max calls",
            file.code_mode.max_calls.unwrap_or(DEFAULT_CODE_MODE_MAX_CALLS),
        )?,
    })
}

fn merge_server(flags: &ServerArgs, file: &ServerFile) -> Result<ServerSettings> {
    let listen = flags.listen.or(file.listen).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8000)));
    let tokens: Vec<String> =
        if flags.tokens.is_empty() { file.tokens.clone().unwrap_or_default() } else { flags.tokens.clone() };
    let tokens: Vec<String> = tokens.into_iter().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect();
    let allow_unauthenticated = flags.allow_unauthenticated || file.allow_unauthenticated.unwrap_or(false);
    let public_url =
        flags.public_url.clone().or_else(|| file.public_url.clone()).map(|url| url.trim_end_matches('/').to_string());
    if let Some(url) = &public_url {
        web_url("--public-url", url)?;
    }
    let oauth = match flags.oauth_issuer.clone().or_else(|| file.oauth_issuer.clone()) {
        None => {
            if flags.oauth_audience.is_some() || file.oauth_audience.is_some() || file.oauth_scopes.is_some() {
                bail!("oauth_audience and oauth_scopes need an issuer: set --oauth-issuer (TOOLHOST_OAUTH_ISSUER)");
            }
            None
        }
        Some(issuer) => {
            web_url("--oauth-issuer", &issuer)?;
            if public_url.is_none() && listen.ip().is_unspecified() {
                bail!(
                    "--oauth-issuer needs --public-url when listening on {listen}: the URL clients reach this \
                     server at (e.g. https://toolhost.example.com), which OAuth metadata and the default \
                     audience name"
                );
            }
            let scopes = if flags.oauth_scopes.is_empty() {
                file.oauth_scopes.clone().unwrap_or_default()
            } else {
                flags.oauth_scopes.clone()
            };
            Some(OAuthSettings {
                issuer,
                audience: flags.oauth_audience.clone().or_else(|| file.oauth_audience.clone()),
                scopes: scopes.into_iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
            })
        }
    };
    let mut allowed_hosts = file.allowed_hosts.clone().unwrap_or_default();
    // The public URL's host is this server's name: accept it without a second flag.
    if let Some(host) = public_url.as_deref().and_then(|url| url.split_once("://")).map(|(_, rest)| rest) {
        allowed_hosts.push(host.split('/').next().unwrap_or(host).to_ascii_lowercase());
    }
    allowed_hosts.extend(flags.allowed_hosts.iter().cloned());
    let mut allowed_origins = file.allowed_origins.clone().unwrap_or_default();
    allowed_origins.extend(flags.allowed_origins.iter().cloned());
    let max_body_mb = positive("max body MiB", flags.max_body_mb.or(file.max_body_mb).unwrap_or(16))?;
    Ok(ServerSettings {
        listen,
        tokens,
        oauth,
        public_url,
        allow_unauthenticated,
        allowed_hosts,
        allowed_origins,
        max_body_bytes: max_body_mb << 20,
        shutdown_grace: seconds("shutdown grace", flags.shutdown_grace.or(file.shutdown_grace_s).unwrap_or(30.0), 0.0)?,
        session_idle_timeout: seconds(
            "session idle timeout",
            flags.session_idle_timeout.or(file.session_idle_timeout_s).unwrap_or(3600.0),
            1.0,
        )?,
        unused_session_timeout: seconds(
            "unused session timeout",
            flags.unused_session_timeout.or(file.unused_session_timeout_s).unwrap_or(60.0),
            0.0,
        )?,
        max_sessions: positive("max sessions", flags.max_sessions.or(file.max_sessions).unwrap_or(1000))?,
        max_sessions_per_principal: positive(
            "max sessions per principal",
            flags.max_sessions_per_principal.or(file.max_sessions_per_principal).unwrap_or(64),
        )?,
    })
}

impl ServerSettings {
    /// Listening beyond loopback without tokens is refused unless explicitly allowed.
    pub fn check_exposure(&self) -> Result<()> {
        if !self.listen.ip().is_loopback()
            && self.tokens.is_empty()
            && self.oauth.is_none()
            && !self.allow_unauthenticated
        {
            bail!(
                "refusing to listen on {} without authentication: anyone who can reach it could run code. \
                 Set TOOLHOST_TOKENS (comma-separated bearer tokens) or --oauth-issuer, or pass \
                 --allow-unauthenticated",
                self.listen
            );
        }
        Ok(())
    }
}

/// An absolute http(s) URL with a host, or a clear error naming the setting.
fn web_url(what: &str, url: &str) -> Result<()> {
    let Some((scheme, rest)) = url.split_once("://") else {
        bail!("{what} must be an absolute URL such as https://host.example, not {url:?}");
    };
    if !matches!(scheme, "http" | "https") || rest.is_empty() || rest.starts_with('/') || url.contains(['?', '#', ' '])
    {
        bail!("{what} must be an http(s) URL with a host and no query, not {url:?}");
    }
    Ok(())
}

fn seconds(what: &str, value: f64, min: f64) -> Result<Duration> {
    if !(value >= min && value <= 31_536_000.0) {
        bail!("{what} must be at least {min} seconds, not {value}");
    }
    Ok(Duration::from_secs_f64(value))
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

    fn limits(limits: LimitArgs) -> Flags {
        Flags { limits, ..Flags::default() }
    }

    #[test]
    fn flags_beat_the_file_which_beats_the_defaults() {
        let file: FileConfig =
            toml::from_str("[limits]\ntimeout_s = 10\nmemory_mb = 512\n[sandbox]\nqueue_depth = 3\n").expect("toml");
        let flags = limits(LimitArgs { timeout: Some(5.0), ..LimitArgs::default() });
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
        let flags = limits(LimitArgs { memory_mb: Some(5), ..LimitArgs::default() });
        let err = Settings::merge(&global(), &flags, FileConfig::default()).expect_err("too small");
        assert!(err.to_string().contains("between 64 and 4096 MiB"), "{err}");
        let flags = limits(LimitArgs { timeout: Some(0.0), ..LimitArgs::default() });
        assert!(Settings::merge(&global(), &flags, FileConfig::default()).is_err());
    }

    #[test]
    fn a_public_listener_needs_tokens_or_an_explicit_flag() {
        let public = |tokens: Vec<String>, allow: bool| {
            let server = ServerArgs {
                listen: Some("0.0.0.0:8000".parse().expect("addr")),
                tokens,
                allow_unauthenticated: allow,
                ..ServerArgs::default()
            };
            let flags = Flags { server, ..Flags::default() };
            Settings::merge(&global(), &flags, FileConfig::default()).expect("settings").server.check_exposure()
        };
        let refused = public(vec![], false).expect_err("refused");
        assert!(refused.to_string().contains("TOOLHOST_TOKENS"), "{refused}");
        public(vec!["secret".into()], false).expect("tokens");
        public(vec![], true).expect("explicitly allowed");
        let loopback = Settings::merge(&global(), &Flags::default(), FileConfig::default()).expect("settings");
        loopback.server.check_exposure().expect("loopback needs no tokens");
    }

    #[test]
    fn oauth_needs_an_issuer_and_on_a_public_address_a_public_url() {
        let merge = |server: ServerArgs, file: &str| {
            let flags = Flags { server, ..Flags::default() };
            Settings::merge(&global(), &flags, toml::from_str(file).expect("toml")).map(|s| s.server)
        };
        let issuer = || Some("https://id.example/realms/acme".to_string());
        let everywhere = Some("0.0.0.0:8000".parse().expect("addr"));
        let err = merge(ServerArgs { oauth_issuer: issuer(), listen: everywhere, ..ServerArgs::default() }, "")
            .expect_err("no public url");
        assert!(err.to_string().contains("--public-url"), "{err}");
        let server = merge(
            ServerArgs {
                oauth_issuer: issuer(),
                listen: everywhere,
                public_url: Some("https://Toolhost.example.com:8443/".into()),
                oauth_scopes: vec![" mcp:tools ".into(), String::new()],
                ..ServerArgs::default()
            },
            "",
        )
        .expect("settings");
        let oauth = server.oauth.as_ref().expect("oauth");
        assert_eq!((oauth.scopes.as_slice(), oauth.audience.as_deref()), (&["mcp:tools".to_string()][..], None));
        assert_eq!(server.public_url.as_deref(), Some("https://Toolhost.example.com:8443"));
        assert!(server.allowed_hosts.contains(&"toolhost.example.com:8443".to_string()), "{:?}", server.allowed_hosts);
        server.check_exposure().expect("OAuth is authentication");
        let err = merge(ServerArgs::default(), "[server]\noauth_scopes = [\"a\"]\n").expect_err("scopes alone");
        assert!(err.to_string().contains("--oauth-issuer"), "{err}");
        for bad in ["id.example", "ftp://id.example", "https://", "https://id.example/?x=1"] {
            let args = ServerArgs { oauth_issuer: Some(bad.into()), ..ServerArgs::default() };
            assert!(merge(args, "").is_err(), "{bad}");
        }
    }

    #[test]
    fn roots_come_from_the_file_and_the_flags() {
        let file: FileConfig =
            toml::from_str("[[resources.roots]]\nname = \"logs\"\npath = \"/var/log\"\n[[resources.roots]]\nname = \"data\"\npath = \"/srv\"\n")
                .expect("toml");
        let app = AppArgs { roots: vec![("data".into(), "/mnt/data".into())], ..AppArgs::default() };
        let settings = Settings::merge(&global(), &Flags { app, ..Flags::default() }, file).expect("settings");
        let roots: Vec<_> =
            settings.app.roots.iter().map(|r| (r.name.as_str(), r.path.to_str().unwrap_or(""))).collect();
        assert_eq!(roots, [("logs", "/var/log"), ("data", "/mnt/data")]);
    }
}
