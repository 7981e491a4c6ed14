//! Shared test fixtures: one sandbox per test binary with both runtimes, and helpers that run
//! code in a fresh workspace.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use toolhost::cli::{GlobalArgs, LimitArgs};
use toolhost::config::{FileConfig, Flags, Settings};
use toolhost::progress::Progress;
use toolhost::sandbox::{Call, Limits, Outcome, Sandbox};
use toolhost::workspace::{Quota, Workspace};

pub const PYTHON: &str = "python";
pub const LITE: &str = "python-lite";

/// Settings as a user gets them with no flags, but for the cache (the test environment's).
pub fn settings() -> Settings {
    let global = GlobalArgs { config: None, cache_dir: None, log_format: None, log: None };
    let flags = Flags { limits: LimitArgs { max_concurrency: Some(2), ..LimitArgs::default() }, ..Flags::default() };
    let mut settings = Settings::merge(&global, &flags, FileConfig::default()).expect("default settings");
    // Guests run in worker processes, as in a server: the test binary is not toolhost.
    settings.sandbox.worker_exe = Some(toolhost_bin());
    settings
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
        .run(Call { runtime: Some(runtime), ..Call::new(code.to_string(), workspace, limits) })
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

/// Waits (at most 20 s) until the sandbox's counts satisfy `done`; fails the test with `why`.
pub async fn wait_for_stats(sandbox: &Sandbox, done: impl FnMut(&toolhost::sandbox::SandboxStats) -> bool, why: &str) {
    let mut stats = sandbox.watch_stats();
    let waited = tokio::time::timeout(Duration::from_secs(20), stats.wait_for(done)).await;
    assert!(waited.is_ok(), "{why} (running and waiting: {:?})", sandbox.stats());
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

/// A server on 127.0.0.1 (an ephemeral port) sharing the test binary's sandbox, stopped when
/// dropped.
pub struct TestServer {
    pub url: String,
    pub app: std::sync::Arc<toolhost::app::App>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dirs: tempfile::TempDir,
}

impl TestServer {
    /// Stops the server as SIGTERM would, and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server stops cleanly");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts a server with the default settings changed by `configure`.
pub async fn start_server(configure: impl FnOnce(&mut Settings)) -> TestServer {
    let dirs = tempfile::tempdir().expect("tempdir");
    let mut settings = settings();
    settings.app.workspaces_dir = dirs.path().join("workspaces");
    settings.server.listen = "127.0.0.1:0".parse().expect("addr");
    settings.server.shutdown_grace = Duration::from_secs(5);
    configure(&mut settings);
    let limits = settings.sandbox.limits;
    let app = std::sync::Arc::new(toolhost::app::App::new(&settings.app, limits).expect("app"));
    // Its own sandbox, so that its capacity and running calls are its own.
    sandbox();
    let own = toolhost::commands::start_sandbox(&settings, &[PYTHON.to_string()], &Progress::quiet()).expect("sandbox");
    app.services.sandbox.set(own);
    toolhost::server::install_metrics().expect("metrics");
    let listener = tokio::net::TcpListener::bind(settings.server.listen).await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = toolhost::server::Server::new(app.clone(), settings.server.clone());
    let task = tokio::spawn(server.serve(listener, async move {
        let _ = stopped.await;
    }));
    TestServer { url, app, stop: Some(stop), task: Some(task), _dirs: dirs }
}

/// A virtualenv with `tests/python/requirements.txt` installed, made once under the cargo
/// target folder (and again when the requirements change). Returns its python.
pub fn python_venv() -> PathBuf {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/python");
        let requirements = std::fs::read(root.join("requirements.txt")).expect("requirements.txt");
        let stamp = toolhost::runtime::verify::sha256_bytes(&requirements);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("py-venv");
        let python = dir.join("bin/python");
        std::fs::create_dir_all(env!("CARGO_TARGET_TMPDIR")).expect("target tmp");
        let _lock =
            toolhost::runtime::cache::lock(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")), "py-venv").expect("lock");
        if std::fs::read_to_string(dir.join("requirements.sha256")).ok().as_deref() == Some(stamp.as_str())
            && python.exists()
        {
            return python;
        }
        let _ = std::fs::remove_dir_all(&dir);
        let run = |command: &mut std::process::Command| {
            let output = command.output().expect("the command starts");
            assert!(
                output.status.success(),
                "{command:?} failed:\n{}\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        };
        run(std::process::Command::new("python3").args(["-m", "venv"]).arg(&dir));
        run(std::process::Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(root.join("requirements.txt")));
        std::fs::write(dir.join("requirements.sha256"), &stamp).expect("stamp");
        python
    })
    .clone()
}
