//! The sandbox: the only module that knows wasmtime. One engine, each runtime linked once
//! (`InstancePre`), and per call a fresh `Store` and instance under every limit, run on the
//! sandbox's own threads so guests never stall the server. Calls beyond the concurrency cap
//! wait in a bounded queue; a full queue answers `Busy`.

mod admission;
mod cached;
mod call;
mod dirty;
mod door;
mod engine;
mod guest;
mod job;
mod limits;
mod local;
mod outcome;
mod output;
mod pagemap;
mod prefault;
mod prepare;
pub mod readiness;
mod snapshot;
mod spawn;
mod state;
mod workers;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

pub use cached::{is_compiled, is_warm, prune};
pub use door::{Frame, HostTools, MAX_ANSWER_BYTES, MAX_REQUEST_BYTES};
pub use engine::WASMTIME_VERSION;
pub use guest::is_dotted_name as is_python_module_name;
pub use limits::Limits;
pub use outcome::{ErrorInfo, FileInfo, Outcome, Status};
pub use readiness::{NotReady, Readiness};
pub use state::{PythonState, StateReport};
pub use workers::serve as serve_worker;

use crate::progress::Progress;
use crate::runtime::{Cache, InstalledRuntime};
use crate::workspace::{Ledger, Quota, Workspace};

/// A read-only folder of the host mounted in the guest at `/<name>`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ReadOnlyRoot {
    pub name: String,
    pub host: PathBuf,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SandboxConfig {
    /// The ceiling every call's limits are held to.
    pub limits: Limits,
    /// Guests running at once.
    pub max_concurrency: usize,
    /// Calls waiting for a free slot; one more is refused as busy.
    pub queue_depth: usize,
    /// Calls one principal may have running and waiting at once; one more is refused as busy.
    pub max_calls_per_principal: usize,
    /// The runtime a call gets when it names none.
    pub default_runtime: String,
    /// Run reactor runtimes from a pre-initialized snapshot with `preload` imported.
    pub snapshot: bool,
    /// Modules the snapshot imports, so that calls find them loaded.
    pub preload: Vec<String>,
    /// Run guests in worker processes (one per `max_concurrency`), not on threads here.
    #[serde(default)]
    pub worker_processes: bool,
    /// Write-protect guest memories so the kernel tells which pages a call wrote (`dirty`).
    pub write_protect: bool,
    /// The binary started as `toolhost worker`; `None`: this one (its running image, even if
    /// the file was replaced since).
    #[serde(default)]
    pub worker_exe: Option<PathBuf>,
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
            max_calls_per_principal: 16,
            default_runtime: crate::runtime::manifest::DEFAULT_RUNTIME.to_string(),
            snapshot: true,
            preload: default_preload(),
            worker_processes: true,
            write_protect: true,
            worker_exe: None,
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
    /// Whom the call runs for (a principal): waiting calls are served fairly among shares.
    pub share: String,
    /// The workspace's Python state, restored before the code and saved after; `None`: the
    /// call starts from the clean snapshot and leaves nothing behind.
    pub state: Option<PythonState>,
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
            share: String::new(),
            state: None,
        }
    }
}

/// Every slot is taken and the queue is full.
/// A call refused at admission: the queue is full, or its principal is at its cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy {
    pub running: usize,
    pub waiting: usize,
    /// The principal's cap, when that is what refused the call.
    pub per_principal: Option<usize>,
}

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.per_principal {
            Some(cap) => write!(
                f,
                "you already have {cap} calls running or waiting, the most one principal may have \
                 (max_calls_per_principal); wait for one to finish"
            ),
            None => write!(
                f,
                "the sandbox is busy: {} calls are running and {} are waiting; retry shortly",
                self.running, self.waiting
            ),
        }
    }
}

impl std::error::Error for Busy {}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Busy(#[from] Busy),
    #[error("unknown runtime {name:?}; available: {available}")]
    UnknownRuntime { name: String, available: String },
    #[error("internal sandbox error: {0:#}")]
    Internal(#[from] anyhow::Error),
}

/// Counters for metrics and health.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SandboxStats {
    pub running: usize,
    pub waiting: usize,
}

#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    config: SandboxConfig,
    runtime_names: Vec<String>,
    admission: admission::Admission,
    calls: AtomicU64,
    exec: Exec,
}

/// Where guests run.
enum Exec {
    /// On threads of this process.
    Threads(local::Local),
    /// In worker processes, one guest address space each.
    Workers(workers::Pool),
}

impl Sandbox {
    /// Readies each runtime (a reactor from a pre-initialized snapshot, built once, or the
    /// stock module; a command from its module; each compiled once into the cache, with
    /// progress) and starts what runs guests: worker processes that load them (the first
    /// alone, as it may fill the cache), or this process's threads.
    pub fn start(
        config: SandboxConfig,
        runtimes: &[InstalledRuntime],
        cache: &Cache,
        progress: &Progress,
    ) -> Result<Sandbox> {
        let started = Instant::now();
        let runtime_names: Vec<String> = runtimes.iter().map(|r| r.name().to_string()).collect();
        let exec = if config.worker_processes {
            // This very binary, even once an upgrade replaced the file: a worker must speak
            // the server's wire format.
            let this_binary = PathBuf::from("/proc/self/exe");
            let exe = match &config.worker_exe {
                Some(exe) => exe.clone(),
                None if this_binary.exists() => this_binary,
                None => std::env::current_exe().context("cannot find the toolhost binary to start workers")?,
            };
            Exec::Workers(workers::Pool::start(workers::Launch {
                exe,
                config: config.clone(),
                runtimes: runtime_names.clone(),
                cache_dir: cache.root().to_path_buf(),
            })?)
        } else {
            Exec::Threads(local::Local::start(&config, runtimes, cache, progress)?)
        };
        tracing::info!(
            runtimes = runtime_names.join(","),
            worker_processes = if config.worker_processes { config.max_concurrency.max(1) } else { 0 },
            ms = started.elapsed().as_millis() as u64,
            "sandbox started"
        );
        Ok(Sandbox {
            inner: Arc::new(Inner {
                runtime_names,
                admission: admission::Admission::new(
                    config.max_concurrency,
                    config.queue_depth,
                    config.max_calls_per_principal,
                ),
                config,
                calls: AtomicU64::new(0),
                exec,
            }),
        })
    }

    /// The configured ceiling of every limit.
    pub fn limits(&self) -> Limits {
        self.inner.config.limits
    }

    pub fn runtime_names(&self) -> Vec<String> {
        self.inner.runtime_names.clone()
    }

    pub fn stats(&self) -> SandboxStats {
        self.inner.admission.stats()
    }

    /// The counts, as they change.
    pub fn watch_stats(&self) -> tokio::sync::watch::Receiver<SandboxStats> {
        self.inner.admission.watch()
    }

    /// The worker processes' ids (0 for one that is starting); empty when guests run on
    /// threads of this process.
    pub fn worker_pids(&self) -> Vec<u32> {
        match &self.inner.exec {
            Exec::Workers(pool) => pool.pids(),
            Exec::Threads(_) => Vec::new(),
        }
    }

    /// How many worker processes are ready for calls; `None` when guests run on threads.
    pub fn workers_up(&self) -> Option<usize> {
        match &self.inner.exec {
            Exec::Workers(pool) => Some(pool.pids().iter().filter(|&&pid| pid != 0).count()),
            Exec::Threads(_) => None,
        }
    }

    /// Runs code in a fresh instance and reports how it went. Waits for a slot when all are
    /// busy, or answers `Busy` when the queue is full too. Dropping the returned future stops
    /// the guest.
    pub async fn run(&self, call: Call<'_>) -> Result<Outcome, SandboxError> {
        let inner = &self.inner;
        let name = call.runtime.unwrap_or(&inner.config.default_runtime);
        if !inner.runtime_names.iter().any(|n| n == name) {
            return Err(SandboxError::UnknownRuntime {
                name: name.to_string(),
                available: self.runtime_names().join(", "),
            });
        }

        let _admitted = inner.admission.admit(call.nested, &call.share).await?;
        // Stop the guest if this future is dropped.
        let _stop_on_drop = call.cancel.clone().drop_guard();

        let call_id = self.next_call_id();
        let workspace = call.workspace;
        let before = workspace.index().context("cannot index the workspace")?;
        let _in_use = workspace.ledger().enter(Some((before.bytes(), before.count())));
        let scratch = tempfile::Builder::new()
            .prefix("toolhost-tmp-")
            .tempdir()
            .context("cannot create the call's scratch folder")?;
        let limits = call.limits;
        let tmp_ledger = Ledger::new(Quota { bytes: limits.tmp_bytes, files: limits.workspace_files }, 0, 0);
        let refusals_before = workspace.ledger().refusals();
        let principal_refusals_before = workspace.ledger().parent_refusals();
        let started = Instant::now();
        let job = job::Job {
            runtime: name.to_string(),
            code: call.code,
            call_id: call_id.clone(),
            stdin: call.stdin,
            workspace: workspace.host_path().to_path_buf(),
            workspace_read_only: call.workspace_read_only,
            scratch: scratch.path().to_path_buf(),
            roots: call.roots,
            limits,
            time_left: limits.timeout,
            state: call.state,
            host_tools: call.host_tools.is_some(),
            nested: call.nested,
        };
        let io = job::JobIo {
            workspace_budget: workspace.ledger().clone(),
            scratch_budget: tmp_ledger.clone(),
            host_tools: call.host_tools,
            cancel: call.cancel.clone(),
        };
        let done = match &inner.exec {
            Exec::Threads(local) => local.run(job, io).await?,
            Exec::Workers(pool) => pool.run(job, io).await?,
        };
        let duration = started.elapsed();
        drop(scratch);

        if let Some(fuel) = done.fuel_used {
            metrics::histogram!("toolhost_fuel_used").record(fuel as f64);
        }
        let finished = outcome::Finished {
            call_id: &call_id,
            ran: outcome::Ran { ending: done.ending, fuel_used: done.fuel_used, written: None },
            stdout: done.stdout,
            stderr: done.stderr,
            memory_denied: done.memory_denied,
            duration,
            limits,
            refused: refused_in_words(
                workspace.ledger().refusals() > refusals_before,
                workspace.ledger().parent_refusals() > principal_refusals_before,
                tmp_ledger.refusals() > 0,
                &limits,
            ),
        };
        let mut outcome = finished.into_outcome(workspace, &before);
        outcome.state = done.state;
        if !outcome.state.saved && outcome.state.note.is_none() && outcome.state.bytes > 0 {
            outcome.state.note = Some(rolled_back(&outcome));
        }
        Ok(outcome)
    }

    fn next_call_id(&self) -> String {
        let n = self.inner.calls.fetch_add(1, Ordering::Relaxed);
        let millis = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        format!("call-{millis:x}-{n}")
    }
}

/// Why a call's state was not saved, when it ended before its code was done.
fn rolled_back(outcome: &Outcome) -> String {
    let ended = match outcome.status {
        Status::Ok | Status::Error => match &outcome.error {
            Some(error) if error.kind == "SystemExit" => "called sys.exit()",
            Some(error) if error.kind == "Cancelled" => "was cancelled",
            _ => "trapped",
        },
        Status::Timeout => "timed out",
        Status::OutOfFuel => "ran out of fuel",
        Status::OutOfMemory => "ran out of memory",
    };
    format!(
        "this call {ended}, so its Python state was not saved: the workspace keeps the state it had before this call"
    )
}

/// Which quotas refused a write during a call, as the result says it.
fn refused_in_words(workspace: bool, principal: bool, tmp: bool, limits: &Limits) -> Option<String> {
    let mut said = Vec::new();
    if principal {
        said.push(format!(
            "your workspaces together hold as much as one client may ({} MiB): delete files here or in \
             your other sessions",
            limits.principal_disk_bytes >> 20
        ));
    }
    if workspace && !principal {
        said.push(format!(
            "the workspace quota ({} MiB in {} files and folders) refused a write: delete files, or write less",
            limits.workspace_bytes >> 20,
            limits.workspace_files
        ));
    }
    if tmp {
        said.push(format!("the /tmp quota ({} MiB per call) refused a write", limits.tmp_bytes >> 20));
    }
    (!said.is_empty()).then(|| said.join("; "))
}
