//! Shared test fixtures: one sandbox per test binary with both runtimes, and helpers that run
//! code in a fresh workspace.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use toolhost::cli::{GlobalArgs, LimitArgs};
use toolhost::config::{FileConfig, Settings};
use toolhost::progress::Progress;
use toolhost::sandbox::{Call, Limits, Outcome, Sandbox};
use toolhost::workspace::{Quota, Workspace};

pub const PYTHON: &str = "python";
pub const LITE: &str = "python-lite";

/// Settings as a user gets them with no flags, but for the cache (the test environment's).
pub fn settings() -> Settings {
    let global = GlobalArgs { config: None, cache_dir: None, log_format: None, log: None };
    let flags = LimitArgs { max_concurrency: Some(2), ..LimitArgs::default() };
    Settings::merge(&global, &flags, FileConfig::default()).expect("default settings")
}

/// The test binary's sandbox, started once (fetching and compiling on a fresh machine).
pub fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        let names = vec![PYTHON.to_string(), LITE.to_string()];
        toolhost::commands::start_sandbox(&settings(), &names, &Progress::log()).expect("the sandbox starts")
    })
}

/// A fresh workspace in a temp folder, removed when the guard drops.
pub fn workspace() -> (tempfile::TempDir, Workspace) {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = Limits::default();
    let ws = Workspace::open(
        dir.path().join("workspace"),
        Quota { bytes: limits.workspace_bytes, files: limits.workspace_files },
    )
    .expect("workspace");
    (dir, ws)
}

/// Runs `code` on `runtime` in `workspace` with `limits`.
pub async fn run_with(code: &str, runtime: &str, workspace: &Workspace, limits: Limits) -> Outcome {
    sandbox()
        .run(Call {
            code: code.to_string(),
            runtime: Some(runtime),
            stdin: Vec::new(),
            workspace,
            limits,
            roots: Vec::new(),
            cancel: CancellationToken::new(),
        })
        .await
        .expect("the call runs")
}

/// Runs `code` on the default runtime in a fresh workspace with the default limits.
pub async fn run(code: &str) -> Outcome {
    let (_dir, ws) = workspace();
    run_with(code, PYTHON, &ws, Limits::default()).await
}

/// The default limits with another timeout.
pub fn with_timeout(seconds: f64) -> Limits {
    Limits { timeout: Duration::from_secs_f64(seconds), ..Limits::default() }
}

/// The built `toolhost` binary.
pub fn toolhost_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_toolhost"))
}

/// Asserts the outcome is ok, showing it whole when it is not.
#[track_caller]
pub fn assert_ok(outcome: &Outcome) {
    assert!(outcome.is_ok(), "expected ok, got {}", serde_json::to_string_pretty(outcome).unwrap_or_default());
}
