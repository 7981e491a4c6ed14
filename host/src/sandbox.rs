//! The sandbox: the only module that knows wasmtime. One engine, each runtime linked once
//! (`InstancePre`), and per call a fresh `Store` and instance under every limit, run on the
//! sandbox's own threads so guests never stall the server. Calls beyond the concurrency cap
//! wait in a bounded queue; a full queue answers `Busy`.

mod call;
mod engine;
mod guest;
mod limits;
mod outcome;
mod output;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use engine::WASMTIME_VERSION;
pub use limits::Limits;
pub use outcome::{ErrorInfo, FileInfo, Outcome, Status};

use crate::progress::Progress;
use crate::runtime::{Cache, FileRole, InstalledRuntime};
use crate::workspace::{self, Workspace};

/// How long past its deadline a guest blocked in a host call (e.g. `time.sleep`) may take to
/// notice, before its call is dropped.
const DEADLINE_GRACE: Duration = Duration::from_millis(50);

/// A read-only folder of the host mounted in the guest at `/<name>`.
#[derive(Debug, Clone)]
pub struct ReadOnlyRoot {
    pub name: String,
    pub host: PathBuf,
}

#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The ceiling every call's limits are held to.
    pub limits: Limits,
    /// Guests running at once.
    pub max_concurrency: usize,
    /// Calls waiting for a free slot; one more is refused as busy.
    pub queue_depth: usize,
    /// The runtime a call gets when it names none.
    pub default_runtime: String,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            limits: Limits::default(),
            max_concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
            queue_depth: 64,
            default_runtime: crate::runtime::manifest::DEFAULT_RUNTIME.to_string(),
        }
    }
}

/// One call's request.
pub struct Call<'a> {
    pub code: String,
    /// The runtime by name; `None` is the default.
    pub runtime: Option<&'a str>,
    /// Bytes the guest reads on stdin.
    pub stdin: Vec<u8>,
    pub workspace: &'a Workspace,
    /// The limits for this call, already narrowed from the ceiling (`Limits::narrowed`).
    pub limits: Limits,
    pub roots: Vec<ReadOnlyRoot>,
    /// Set to stop the guest (e.g. the client cancelled the request).
    pub cancel: CancellationToken,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("the sandbox is busy: {running} calls are running and {waiting} are waiting; retry shortly")]
    Busy { running: usize, waiting: usize },
    #[error("unknown runtime {name:?}; available: {available}")]
    UnknownRuntime { name: String, available: String },
    #[error("internal sandbox error: {0:#}")]
    Internal(#[from] anyhow::Error),
}

/// Counters for metrics and health.
#[derive(Debug, Clone, Copy, Default)]
pub struct SandboxStats {
    pub running: usize,
    pub waiting: usize,
}

#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    engine: engine::SandboxEngine,
    runtimes: BTreeMap<String, Arc<call::Prepared>>,
    config: SandboxConfig,
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    running: AtomicUsize,
    calls: AtomicU64,
    executor: Executor,
}

/// The sandbox's own tokio runtime, whose worker threads run guests.
struct Executor(Option<tokio::runtime::Runtime>);

impl Drop for Executor {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl Sandbox {
    /// Builds the engine and readies each runtime: compiled once into the cache (with progress),
    /// then loaded from there and linked.
    pub fn start(
        config: SandboxConfig,
        runtimes: &[InstalledRuntime],
        cache: &Cache,
        progress: &Progress,
    ) -> Result<Sandbox> {
        let slots = u32::try_from(config.max_concurrency * 2 + 2).unwrap_or(u32::MAX);
        let engine =
            engine::SandboxEngine::new(engine::EngineLimits { slots, max_memory_bytes: config.limits.memory_bytes })?;
        let mut prepared = BTreeMap::new();
        for runtime in runtimes {
            let module_path = runtime.path(FileRole::Module).context("runtime has no module")?;
            let sha256 = runtime.sha256(FileRole::Module).context("runtime has no module")?;
            let loaded = Instant::now();
            let module =
                engine.module(&format!("runtime {}", runtime.name()), &module_path, sha256, cache, progress)?;
            let ready = call::Prepared::new(&engine.engine, &module, runtime)?;
            prepared.insert(runtime.name().to_string(), (ready, loaded));
        }
        let executor = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.max_concurrency.max(1))
            .thread_name("toolhost-guest")
            .enable_all()
            .build()
            .context("cannot start the sandbox's threads")?;
        let prepared = prepared
            .into_iter()
            .map(|(name, (mut ready, loaded))| {
                if ready.is_reactor() {
                    let hex = compile_prelude(executor.handle(), &engine.engine, &ready)
                        .with_context(|| format!("runtime {name}: cannot compile the guest prelude"))?;
                    ready.prelude = guest::Prelude::Marshalled(hex);
                }
                tracing::info!(runtime = %name, ms = loaded.elapsed().as_millis() as u64, "runtime ready");
                Ok((name, Arc::new(ready)))
            })
            .collect::<Result<BTreeMap<_, _>>>()?;
        Ok(Sandbox {
            inner: Arc::new(Inner {
                engine,
                runtimes: prepared,
                permits: Arc::new(Semaphore::new(config.max_concurrency.max(1))),
                config,
                waiting: AtomicUsize::new(0),
                running: AtomicUsize::new(0),
                calls: AtomicU64::new(0),
                executor: Executor(Some(executor)),
            }),
        })
    }

    /// The configured ceiling of every limit.
    pub fn limits(&self) -> Limits {
        self.inner.config.limits
    }

    pub fn runtime_names(&self) -> Vec<String> {
        self.inner.runtimes.keys().cloned().collect()
    }

    pub fn stats(&self) -> SandboxStats {
        SandboxStats {
            running: self.inner.running.load(Ordering::Relaxed),
            waiting: self.inner.waiting.load(Ordering::Relaxed),
        }
    }

    /// Runs code in a fresh instance and reports how it went. Waits for a slot when all are
    /// busy, or answers `Busy` when the queue is full too. Dropping the returned future stops
    /// the guest.
    pub async fn run(&self, call: Call<'_>) -> Result<Outcome, SandboxError> {
        let inner = &self.inner;
        let name = call.runtime.unwrap_or(&inner.config.default_runtime);
        let prepared = inner.runtimes.get(name).cloned().ok_or_else(|| SandboxError::UnknownRuntime {
            name: name.to_string(),
            available: self.runtime_names().join(", "),
        })?;

        let _permit = {
            if inner.permits.available_permits() == 0
                && inner.waiting.load(Ordering::Relaxed) >= inner.config.queue_depth
            {
                return Err(SandboxError::Busy { running: self.stats().running, waiting: self.stats().waiting });
            }
            inner.waiting.fetch_add(1, Ordering::Relaxed);
            let waited = Counted(&inner.waiting);
            let permit = inner.permits.clone().acquire_owned().await.map_err(|e| anyhow::anyhow!(e))?;
            drop(waited);
            permit
        };
        inner.running.fetch_add(1, Ordering::Relaxed);
        let _running = Counted(&inner.running);
        // Stop the guest if this future is dropped.
        let _stop_on_drop = call.cancel.clone().drop_guard();

        let call_id = self.next_call_id();
        let workspace = call.workspace;
        let before = workspace.index().context("cannot index the workspace")?;
        let scratch = tempfile::Builder::new()
            .prefix("toolhost-tmp-")
            .tempdir()
            .context("cannot create the call's scratch folder")?;
        let limits = call.limits;
        let stdout = output::Capture::new(limits.output_bytes);
        let stderr = output::Capture::new(limits.output_bytes);
        let memory_denied = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let deadline = started + limits.timeout;
        let guest_run = call::GuestRun {
            script: call::Script::User(call.code),
            stdin: call.stdin,
            workspace: workspace.host_path().to_path_buf(),
            scratch: scratch.path().to_path_buf(),
            roots: call.roots,
            limits,
            deadline,
            cancel: call.cancel.clone(),
            stdout: stdout.clone(),
            stderr: stderr.clone(),
            memory_denied: memory_denied.clone(),
        };
        let executor = inner.executor.0.as_ref().context("the sandbox is shutting down")?.handle();
        let handle = spawn_guest(executor, prepared, inner.engine.engine.clone(), guest_run);
        let ran = handle.await.map_err(|e| anyhow::anyhow!("the guest task failed: {e}"))??;
        let duration = started.elapsed();
        drop(scratch);

        if let Some(fuel) = ran.fuel_used {
            metrics::histogram!("toolhost_fuel_used").record(fuel as f64);
        }
        let stdout = stdout.take();
        let stderr = stderr.take();
        let finished = Finished {
            call_id: &call_id,
            ran,
            stdout,
            stderr,
            memory_denied: memory_denied.load(Ordering::Relaxed),
            duration,
            limits,
        };
        Ok(finished.into_outcome(workspace, &before))
    }

    fn next_call_id(&self) -> String {
        let n = self.inner.calls.fetch_add(1, Ordering::Relaxed);
        let millis = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        format!("call-{millis:x}-{n}")
    }
}

/// Runs a guest on the sandbox's threads. Its deadline and cancellation are checked at every
/// epoch tick while it computes; one blocked in a host call (e.g. `time.sleep`) is dropped at
/// its deadline or cancellation instead.
fn spawn_guest(
    executor: &tokio::runtime::Handle,
    prepared: Arc<call::Prepared>,
    engine: wasmtime::Engine,
    run: call::GuestRun,
) -> tokio::task::JoinHandle<Result<call::Ran>> {
    let deadline = tokio::time::Instant::from_std(run.deadline + DEADLINE_GRACE);
    let cancel = run.cancel.clone();
    executor.spawn(async move {
        tokio::select! {
            ran = call::run(&prepared, &engine, run) => ran,
            () = tokio::time::sleep_until(deadline) => Ok(call::Ran { ending: outcome::Ending::Timeout, fuel_used: None }),
            () = cancel.cancelled() => Ok(call::Ran { ending: outcome::Ending::Cancelled, fuel_used: None }),
        }
    })
}

/// Compiles the prelude with the runtime's own CPython, once per process: the code object,
/// marshalled, as hex. Blocks the calling thread (it may be inside another tokio runtime).
fn compile_prelude(
    executor: &tokio::runtime::Handle,
    engine: &wasmtime::Engine,
    prepared: &call::Prepared,
) -> Result<String> {
    let workspace = tempfile::tempdir()?;
    let scratch = tempfile::tempdir()?;
    let limits = Limits::default();
    let stdout = output::Capture::new(limits.output_bytes);
    let stderr = output::Capture::new(limits.output_bytes);
    let run = call::GuestRun {
        script: call::Script::Bare(guest::compile_prelude_turn()),
        stdin: Vec::new(),
        workspace: workspace.path().to_path_buf(),
        scratch: scratch.path().to_path_buf(),
        roots: Vec::new(),
        limits,
        deadline: Instant::now() + limits.timeout,
        cancel: CancellationToken::new(),
        stdout: stdout.clone(),
        stderr: stderr.clone(),
        memory_denied: Arc::new(AtomicBool::new(false)),
    };
    let prepared = Arc::new(prepared.clone());
    let (done, wait) = std::sync::mpsc::channel();
    let handle = spawn_guest(executor, prepared, engine.clone(), run);
    executor.spawn(async move {
        let _ = done.send(handle.await);
    });
    let ran = wait.recv().context("the prelude compiler stopped")?.context("the prelude compiler panicked")??;
    let hex = String::from_utf8(stdout.take().data)?;
    if ran.ending != outcome::Ending::Exited(0) || hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        anyhow::bail!("{:?}: {}", ran.ending, String::from_utf8_lossy(&stderr.take().data));
    }
    Ok(hex)
}

/// Whether a module with this SHA-256 is compiled in the cache for this configuration.
pub fn is_compiled(config: &SandboxConfig, sha256: &str, cache: &Cache) -> Result<bool> {
    let engine =
        engine::SandboxEngine::new(engine::EngineLimits { slots: 1, max_memory_bytes: config.limits.memory_bytes })?;
    Ok(crate::runtime::cache::is_private_file(&engine.compiled_path(sha256, cache)?))
}

/// Decrements a counter when dropped.
struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A finished run, before it is put into an `Outcome`.
struct Finished<'a> {
    call_id: &'a str,
    ran: call::Ran,
    stdout: output::Captured,
    stderr: output::Captured,
    memory_denied: bool,
    duration: Duration,
    limits: Limits,
}

impl Finished<'_> {
    fn into_outcome(self, workspace: &Workspace, before: &workspace::Index) -> Outcome {
        let stderr_text = guest::tidy_traceback(&String::from_utf8_lossy(&self.stderr.data));
        let stdout_text = String::from_utf8_lossy(&self.stdout.data).into_owned();
        let (mut status, mut error) =
            outcome::classify(&self.ran.ending, &stderr_text, self.memory_denied, &self.limits);

        // The workspace after the run: over quota, the files this run created are removed.
        let mut files = Vec::new();
        match workspace.index() {
            Ok(after) => {
                let quota = workspace.quota();
                if after.bytes() > quota.bytes || after.count() > quota.files {
                    let created = after.created_since(before);
                    workspace.remove_files(&created);
                    status = Status::Error;
                    error = Some(ErrorInfo {
                        kind: "WorkspaceQuotaExceeded".into(),
                        message: format!(
                            "the workspace holds {} bytes in {} entries, over its quota of {} bytes and {} files; \
                             the {} files this call created were removed",
                            after.bytes(),
                            after.count(),
                            quota.bytes,
                            quota.files,
                            created.len()
                        ),
                    });
                } else {
                    files = after
                        .changed_since(before)
                        .into_iter()
                        .map(|(path, entry)| file_info(path, entry.size))
                        .collect();
                }
            }
            Err(e) => tracing::warn!("cannot index the workspace after a call: {e}"),
        }

        let cap = self.limits.result_output_bytes;
        let (stdout, stdout_truncated) =
            self.stream("stdout", &stdout_text, self.stdout.dropped, cap, workspace, &mut files);
        let (stderr, stderr_truncated) =
            self.stream("stderr", &stderr_text, self.stderr.dropped, cap, workspace, &mut files);
        let exit_code = match self.ran.ending {
            outcome::Ending::Exited(code) => Some(code),
            _ => None,
        };
        Outcome {
            status,
            exit_code,
            stdout,
            stderr,
            stdout_truncated,
            stderr_truncated,
            error,
            duration_ms: (self.duration.as_secs_f64() * 1000.0 * 100.0).round() / 100.0,
            fuel_used: self.ran.fuel_used,
            files,
        }
    }

    /// A stream as the result carries it: cut to `cap` bytes (head and tail), and saved whole
    /// in the workspace when cut.
    fn stream(
        &self,
        name: &str,
        text: &str,
        dropped: u64,
        cap: usize,
        workspace: &Workspace,
        files: &mut Vec<FileInfo>,
    ) -> (String, bool) {
        let mut text = text.to_string();
        if dropped > 0 {
            text.push_str(&format!(
                "\n[... {dropped} more bytes were dropped: the guest may write at most {} bytes to {name} ...]\n",
                self.limits.output_bytes
            ));
        }
        if text.len() <= cap {
            return (text, dropped > 0);
        }
        let path = format!(".toolhost/{}.{name}", self.call_id);
        let saved_as = match workspace.write(&path, text.as_bytes()) {
            Ok(size) => {
                files.push(file_info(&path, size));
                format!("/workspace/{path}")
            }
            Err(e) => {
                tracing::warn!("cannot save the whole {name} of {}: {e}", self.call_id);
                format!("(not saved: {e})")
            }
        };
        outcome::cut(&text, cap, &saved_as)
    }
}

fn file_info(path: &str, size: u64) -> FileInfo {
    FileInfo {
        path: path.to_string(),
        size,
        mime_type: mime_guess::from_path(path).first_or_octet_stream().essence_str().to_string(),
        uri: workspace::uri(path),
    }
}
