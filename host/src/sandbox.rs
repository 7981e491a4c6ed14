//! The sandbox: the only module that knows wasmtime. One engine, each runtime linked once
//! (`InstancePre`), and per call a fresh `Store` and instance under every limit, run on the
//! sandbox's own threads so guests never stall the server. Calls beyond the concurrency cap
//! wait in a bounded queue; a full queue answers `Busy`.

mod call;
mod door;
mod engine;
mod guest;
mod limits;
mod outcome;
mod output;
mod prefault;
mod snapshot;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use door::{Frame, HostTools, MAX_ANSWER_BYTES, MAX_REQUEST_BYTES};
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
    /// Run reactor runtimes from a pre-initialized snapshot with `preload` imported.
    pub snapshot: bool,
    /// Modules the snapshot imports, so that calls find them loaded.
    pub preload: Vec<String>,
}

/// The modules a snapshot imports unless configured otherwise.
pub fn default_preload() -> Vec<String> {
    ["numpy", "pandas", "matplotlib", "matplotlib.pyplot"].into_iter().map(String::from).collect()
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            limits: Limits::default(),
            max_concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
            queue_depth: 64,
            default_runtime: crate::runtime::manifest::DEFAULT_RUNTIME.to_string(),
            snapshot: true,
            preload: default_preload(),
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
    /// Mount `/workspace` read-only (org tools that only read).
    pub workspace_read_only: bool,
    /// The limits for this call, already narrowed from the ceiling (`Limits::narrowed`).
    pub limits: Limits,
    pub roots: Vec<ReadOnlyRoot>,
    /// Set to stop the guest (e.g. the client cancelled the request).
    pub cancel: CancellationToken,
    /// The tools the guest may call with `from host import tools` (code mode).
    pub host_tools: Option<Arc<dyn HostTools>>,
    /// Made by a guest of another call through its host tools: it runs on that call's slot
    /// (which waits for it) instead of queueing for one, which could deadlock.
    pub nested: bool,
}

impl<'a> Call<'a> {
    /// A call of `code` on `workspace` under `limits`, with nothing else.
    pub fn new(code: String, workspace: &'a Workspace, limits: Limits) -> Self {
        Call {
            code,
            runtime: None,
            stdin: Vec::new(),
            workspace,
            workspace_read_only: false,
            limits,
            roots: Vec::new(),
            cancel: CancellationToken::new(),
            host_tools: None,
            nested: false,
        }
    }
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
    /// Builds the engine and readies each runtime: a reactor from a pre-initialized snapshot
    /// (built once) or the stock module, a command from its module; each compiled once into
    /// the cache (with progress), then loaded from there and linked.
    pub fn start(
        config: SandboxConfig,
        runtimes: &[InstalledRuntime],
        cache: &Cache,
        progress: &Progress,
    ) -> Result<Sandbox> {
        let slots = u32::try_from(config.max_concurrency * 2 + 2).unwrap_or(u32::MAX);
        let engine =
            engine::SandboxEngine::new(engine::EngineLimits { slots, max_memory_bytes: config.limits.memory_bytes })?;
        let executor = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.max_concurrency.max(1))
            .thread_name("toolhost-guest")
            .enable_all()
            .build()
            .context("cannot start the sandbox's threads")?;
        let mut prepared = BTreeMap::new();
        for runtime in runtimes {
            let loaded = Instant::now();
            let layout = call::Layout::of(runtime);
            let ready = prepare(&engine, executor.handle(), runtime, layout, &config, cache, progress)
                .with_context(|| format!("runtime {} cannot be prepared", runtime.name()))?;
            tracing::info!(runtime = runtime.name(), ms = loaded.elapsed().as_millis() as u64, "runtime ready");
            prepared.insert(runtime.name().to_string(), Arc::new(ready));
        }
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

        let _permit = if call.nested {
            None
        } else {
            if inner.permits.available_permits() == 0
                && inner.waiting.load(Ordering::Relaxed) >= inner.config.queue_depth
            {
                return Err(SandboxError::Busy { running: self.stats().running, waiting: self.stats().waiting });
            }
            inner.waiting.fetch_add(1, Ordering::Relaxed);
            let waited = Counted(&inner.waiting);
            let permit = inner.permits.clone().acquire_owned().await.map_err(|e| anyhow::anyhow!(e))?;
            drop(waited);
            Some(permit)
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
            call_id: call_id.clone(),
            stdin: call.stdin,
            workspace: workspace.host_path().to_path_buf(),
            workspace_read_only: call.workspace_read_only,
            scratch: scratch.path().to_path_buf(),
            roots: call.roots,
            limits,
            deadline,
            cancel: call.cancel.clone(),
            stdout: stdout.clone(),
            stderr: stderr.clone(),
            memory_denied: memory_denied.clone(),
            learn: false,
            host_tools: call.host_tools,
        };
        let executor = inner.executor.0.as_ref().context("the sandbox is shutting down")?.handle();
        let handle = spawn_guest(executor, prepared, inner.engine.engine.clone(), guest_run);
        let ran = handle.await.map_err(|_| anyhow::anyhow!("the guest task ended without a result"))??;
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

/// One runtime made ready: which module, how it gets its prelude, checked by a first call.
fn prepare(
    engine: &engine::SandboxEngine,
    executor: &tokio::runtime::Handle,
    runtime: &InstalledRuntime,
    layout: call::Layout,
    config: &SandboxConfig,
    cache: &Cache,
    progress: &Progress,
) -> Result<call::Prepared> {
    let reactor = runtime.manifest.abi.kind == crate::runtime::AbiKind::Reactor;
    let snapshot = if reactor && config.snapshot && runtime.path(FileRole::Reactor).is_some() {
        match snapshot::ensure(engine, executor, runtime, &layout, &config.preload, cache, progress) {
            Ok(found) => Some(found),
            Err(e) => {
                tracing::warn!("cannot build a snapshot of {} ({e:#}); using its stock module", runtime.name());
                None
            }
        }
    } else {
        None
    };
    let (label, path, sha256, prelude) = match snapshot {
        Some((path, sha256)) => (format!("runtime {} (snapshot)", runtime.name()), path, sha256, guest::Prelude::Baked),
        None => (
            format!("runtime {}", runtime.name()),
            runtime.path(FileRole::Module).context("runtime has no module")?,
            runtime.sha256(FileRole::Module).context("runtime has no module")?.to_string(),
            guest::Prelude::Source,
        ),
    };
    let module = engine.module(&label, &path, &sha256, cache, progress)?;
    if let Some(wasmtime::ExternType::Memory(memory)) = module.get_export("memory") {
        let initial = memory.minimum() * memory.page_size();
        if initial > config.limits.memory_bytes {
            anyhow::bail!(
                "{label} starts with {} MiB of memory, more than the {} MiB limit; raise --memory-mb",
                initial >> 20,
                config.limits.memory_bytes >> 20
            );
        }
    }
    let mut ready = call::Prepared::new(&engine.engine, &module, runtime, layout)?;
    ready.prelude = prelude;
    match ready.prelude {
        guest::Prelude::Source if reactor => {
            let hex = compile_prelude(executor, &engine.engine, &ready).context("cannot compile the guest prelude")?;
            ready.prelude = guest::Prelude::Marshalled(hex);
        }
        guest::Prelude::Baked => {
            let written = smoke_test(executor, &engine.engine, &ready).with_context(|| {
                format!(
                    "the snapshot {} is unusable; delete it (or start with --no-snapshot) and start again",
                    path.display()
                )
            })?;
            ready.write_set = written.map(Arc::new);
        }
        _ => {}
    }
    Ok(ready)
}

/// Runs a guest on the sandbox's threads. Its deadline and cancellation are checked at every
/// epoch tick while it computes; one blocked in a host call (e.g. `time.sleep`) is dropped at
/// its deadline or cancellation instead. The result is sent before the spent store is dropped,
/// so the caller does not wait for its memory to be reset.
fn spawn_guest(
    executor: &tokio::runtime::Handle,
    prepared: Arc<call::Prepared>,
    engine: wasmtime::Engine,
    run: call::GuestRun,
) -> tokio::sync::oneshot::Receiver<Result<call::Ran>> {
    let deadline = tokio::time::Instant::from_std(run.deadline + DEADLINE_GRACE);
    let cancel = run.cancel.clone();
    let (result, receiver) = tokio::sync::oneshot::channel();
    executor.spawn(async move {
        let interrupted = |ending| Ok(call::Ran { ending, fuel_used: None, written: None });
        tokio::select! {
            ran = call::run(&prepared, &engine, run) => match ran {
                Ok((ran, store)) => {
                    let _ = result.send(Ok(ran));
                    drop(store);
                }
                Err(e) => {
                    let _ = result.send(Err(e));
                }
            },
            () = tokio::time::sleep_until(deadline) => {
                let _ = result.send(interrupted(outcome::Ending::Timeout));
            }
            () = cancel.cancelled() => {
                let _ = result.send(interrupted(outcome::Ending::Cancelled));
            }
        }
    });
    receiver
}

/// Runs one script outside any call (at start), blocking the calling thread (which may be
/// inside another tokio runtime); returns how it ended and what it printed.
fn run_once(
    executor: &tokio::runtime::Handle,
    engine: &wasmtime::Engine,
    prepared: &call::Prepared,
    script: call::Script,
    learn: bool,
) -> Result<(call::Ran, String, String)> {
    let limits = Limits::default();
    let deadline = Instant::now() + limits.timeout;
    let (run, _folders) = call::GuestRun::offline(script, "startup", limits, deadline, learn)?;
    let (stdout, stderr) = (run.stdout.clone(), run.stderr.clone());
    // Wait on a std channel: this thread may be inside another tokio runtime, where blocking on
    // tokio's channels is refused.
    let handle = spawn_guest(executor, Arc::new(prepared.clone()), engine.clone(), run);
    let (done, wait) = std::sync::mpsc::channel();
    executor.spawn(async move {
        let _ = done.send(handle.await);
    });
    let ran = wait.recv().context("the startup run stopped")?.context("the startup run ended without a result")??;
    let text = |capture: &output::Capture| String::from_utf8_lossy(&capture.take().data).into_owned();
    Ok((ran, text(&stdout), text(&stderr)))
}

/// Compiles the prelude with the runtime's own CPython, once per process: the code object,
/// marshalled, as hex.
fn compile_prelude(
    executor: &tokio::runtime::Handle,
    engine: &wasmtime::Engine,
    prepared: &call::Prepared,
) -> Result<String> {
    let (ran, hex, stderr) =
        run_once(executor, engine, prepared, call::Script::Bare(guest::compile_prelude_turn()), false)?;
    if ran.ending != outcome::Ending::Exited(0) || hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        anyhow::bail!("{:?}: {stderr}", ran.ending);
    }
    Ok(hex)
}

/// Checks that a freshly loaded snapshot runs code as a call would, and learns the pages such
/// a call writes.
fn smoke_test(
    executor: &tokio::runtime::Handle,
    engine: &wasmtime::Engine,
    prepared: &call::Prepared,
) -> Result<Option<prefault::WriteSet>> {
    let (ran, stdout, stderr) = run_once(executor, engine, prepared, call::Script::User("print('ok')".into()), true)?;
    if ran.ending != outcome::Ending::Exited(0) || stdout != "ok\n" {
        anyhow::bail!("the snapshot does not run code ({:?}): {stdout}{stderr}", ran.ending);
    }
    if let Some(written) = &ran.written {
        tracing::debug!(pages = written.pages(), ranges = written.ranges(), "learned the pages a call writes");
    }
    Ok(ran.written)
}

/// Removes from the cache's `compiled/` folder every file this configuration does not use
/// (compiled modules and snapshots of earlier pins, preloads or wasmtime versions); returns the
/// paths removed (or that would be, when `dry_run`) with their sizes.
pub fn prune(
    config: &SandboxConfig,
    runtimes: &[InstalledRuntime],
    cache: &Cache,
    dry_run: bool,
) -> Result<Vec<(PathBuf, u64)>> {
    let engine =
        engine::SandboxEngine::new(engine::EngineLimits { slots: 1, max_memory_bytes: config.limits.memory_bytes })?;
    let mut keep = std::collections::BTreeSet::new();
    let mut keep_compiled = |key: &str| -> Result<()> {
        let path = engine.compiled_path(key, cache)?;
        keep.insert(PathBuf::from(format!("{}.lock", path.display())));
        keep.insert(path);
        Ok(())
    };
    let mut snapshot_files = Vec::new();
    for runtime in runtimes {
        let reactor = runtime.manifest.abi.kind == crate::runtime::AbiKind::Reactor;
        let mut uses_stock = true;
        if reactor && config.snapshot && runtime.path(FileRole::Reactor).is_some() {
            let (files, snapshot_sha, instrumented) =
                snapshot::files_in_use(runtime, &call::Layout::of(runtime), &config.preload, cache)?;
            keep_compiled(&instrumented)?;
            if let Some(sha) = snapshot_sha {
                keep_compiled(&sha)?;
                uses_stock = false;
            }
            snapshot_files.extend(files);
        }
        if uses_stock && let Some(sha) = runtime.sha256(FileRole::Module) {
            keep_compiled(sha)?;
        }
    }
    keep.extend(snapshot_files);
    let compiled = cache.compiled_dir()?;
    let mut removed = Vec::new();
    for dir in [compiled.clone(), compiled.join("snapshots")] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_file() && !keep.contains(&path) {
                let size = entry.metadata().map_or(0, |m| m.len());
                if !dry_run {
                    std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
                }
                removed.push((path, size));
            }
        }
    }
    removed.sort();
    Ok(removed)
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
