//! Guests run in this process: one engine, each runtime linked once, and the threads that run
//! guests (a tokio runtime of their own, so guest CPU never delays the server's threads). A
//! worker process runs its jobs here; so does the front when worker processes are off.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};

use super::job::{Done, Job, JobIo};
use super::spawn::spawn_guest;
use super::{SandboxConfig, StateReport, call, engine, output, prepare, state};
use crate::progress::Progress;
use crate::runtime::{Cache, InstalledRuntime};

pub(super) struct Local {
    engine: engine::SandboxEngine,
    runtimes: BTreeMap<String, Arc<call::Prepared>>,
    executor: Executor,
    /// The Python states calls here saved last, kept in memory for the next call.
    recent_states: Arc<state::Recent>,
}

/// The tokio runtime whose worker threads run guests.
struct Executor(Option<tokio::runtime::Runtime>);

impl Drop for Executor {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl Local {
    /// Builds the engine and readies each runtime: a reactor from a pre-initialized snapshot
    /// (built once) or the stock module, a command from its module; each compiled once into
    /// the cache (with progress), then loaded from there and linked.
    pub fn start(
        config: &SandboxConfig,
        runtimes: &[InstalledRuntime],
        cache: &Cache,
        progress: &Progress,
    ) -> Result<Local> {
        let slots = u32::try_from(config.max_concurrency * 2 + 2).unwrap_or(u32::MAX);
        let engine =
            engine::SandboxEngine::new(engine::EngineLimits { slots, max_memory_bytes: config.limits.memory_bytes })?;
        let executor = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.max_concurrency.max(1))
            .thread_name("toolhost-guest")
            .enable_all()
            .build()
            .context("cannot start the sandbox's threads")?;
        let tracker = if config.write_protect { super::dirty::Tracker::start().map(Arc::new) } else { None };
        let mut prepared = BTreeMap::new();
        for runtime in runtimes {
            let loaded = Instant::now();
            let layout = call::Layout::of(runtime);
            let mut ready = prepare::prepare(&engine, executor.handle(), runtime, layout, config, cache, progress)
                .with_context(|| format!("runtime {} cannot be prepared", runtime.name()))?;
            ready.tracker = tracker.clone();
            tracing::debug!(runtime = runtime.name(), ms = loaded.elapsed().as_millis() as u64, "runtime ready");
            prepared.insert(runtime.name().to_string(), Arc::new(ready));
        }
        Ok(Local { engine, runtimes: prepared, executor: Executor(Some(executor)), recent_states: Arc::default() })
    }

    /// Runs a job on this process's guest threads. Dropping the future does not stop the
    /// guest: cancel `io.cancel` for that.
    pub async fn run(&self, job: Job, io: JobIo) -> Result<Done> {
        let prepared = self
            .runtimes
            .get(&job.runtime)
            .cloned()
            .with_context(|| format!("runtime {} is not loaded here", job.runtime))?;
        let limits = job.limits;
        let stdout = output::Capture::new(limits.output_bytes);
        let stderr = output::Capture::new(limits.output_bytes);
        let memory_denied = Arc::new(AtomicBool::new(false));
        let report = Arc::new(std::sync::Mutex::new(StateReport::default()));
        let keeper = match (job.state, &prepared.baseline) {
            (Some(request), Some(baseline)) => {
                Some(state::Keeper::new(request, baseline.clone(), report.clone(), self.recent_states.clone()))
            }
            _ => None,
        };
        let run = call::GuestRun {
            script: call::Script::User(job.code),
            call_id: job.call_id,
            stdin: job.stdin,
            workspace: job.workspace,
            workspace_read_only: job.workspace_read_only,
            workspace_budget: Some(io.workspace_budget),
            scratch: job.scratch,
            scratch_budget: Some(io.scratch_budget),
            roots: job.roots,
            limits,
            deadline: Instant::now() + job.time_left,
            cancel: io.cancel,
            stdout: stdout.clone(),
            stderr: stderr.clone(),
            memory_denied: memory_denied.clone(),
            learn: false,
            host_tools: if job.host_tools { io.host_tools } else { None },
            state: keeper,
        };
        let executor = self.executor.0.as_ref().context("the sandbox is shutting down")?.handle();
        let handle = spawn_guest(executor, prepared, self.engine.engine.clone(), run);
        let ran = handle.await.map_err(|_| anyhow::anyhow!("the guest task ended without a result"))??;
        let state = std::mem::take(&mut *report.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(Done {
            ending: ran.ending,
            fuel_used: ran.fuel_used,
            stdout: stdout.take(),
            stderr: stderr.take(),
            memory_denied: memory_denied.load(Ordering::Relaxed),
            state,
        })
    }
}
