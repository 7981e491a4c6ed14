//! Worker processes: guests run in `toolhost worker` children, one per core, each with its own
//! address space, engine and pool, so concurrent guests never share an mmap lock, page tables or
//! an allocator. The pool here hands each job to a free worker and answers what the worker asks
//! back (room in a ledger, a `host.call`); a worker that exits or is killed fails only the jobs
//! it held, and a fresh one takes its place.

mod serve;
mod wire;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, mpsc, oneshot};

pub use serve::serve;

use super::SandboxConfig;
use super::door::Frame;
use super::job::{Done, Job, JobIo};
use super::outcome::Ending;
use super::output::Captured;
use wire::{FromWorker, ToWorker, Tree};

/// How long after a job's deadline its worker may stay silent before it is killed.
const GRACE: Duration = Duration::from_secs(5);
/// How long a worker may take to load runtimes that are already in the cache.
const READY_WAIT: Duration = Duration::from_secs(300);
/// The environment variables a worker keeps (with every `RUST_*`).
const INHERITED_ENV: &[&str] =
    &["PATH", "HOME", "TMPDIR", "LANG", "TOOLHOST_LOG", "TOOLHOST_LOG_FORMAT", "TOOLHOST_PYTHON"];
/// Workspaces whose last worker is remembered (so their next call finds its state in memory).
const AFFINITY: usize = 4096;

tokio::task_local! {
    /// The worker whose guest is asking, while the pool answers its `host.call`: a nested call
    /// runs there, beside its caller.
    static CALLER: usize;
}

/// What starts a worker.
#[derive(Clone)]
pub(super) struct Launch {
    pub exe: PathBuf,
    pub config: SandboxConfig,
    pub runtimes: Vec<String>,
    pub cache_dir: PathBuf,
}

pub(super) struct Pool {
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

struct Shared {
    launch: Launch,
    slots: Mutex<Vec<Slot>>,
    /// A worker became free or came back.
    freed: Notify,
    next_job: AtomicU64,
    jobs: Mutex<HashMap<u64, Pending>>,
    affinity: Mutex<HashMap<PathBuf, usize>>,
    handle: tokio::runtime::Handle,
}

#[derive(Default)]
struct Slot {
    /// `None` while the worker is starting (or cannot start).
    link: Option<Link>,
    busy: bool,
}

#[derive(Clone)]
struct Link {
    pid: u32,
    /// Frames to the worker, written in order by its writer task.
    send: mpsc::UnboundedSender<Vec<u8>>,
    /// Which start of this slot the link is: a late message from a dead worker is ignored.
    generation: u64,
}

/// A job handed to a worker.
struct Pending {
    worker: usize,
    generation: u64,
    /// The job took the worker (a nested job runs beside its caller, which holds it).
    holds_worker: bool,
    io: JobIo,
    deadline: tokio::time::Instant,
    /// Where the caller runs: the tools answer there.
    caller: tokio::runtime::Handle,
    done: Option<oneshot::Sender<Result<Done>>>,
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Pool {
    /// Starts `config.max_concurrency` workers: the first alone (it may build the cache the
    /// others load), then the rest together; returns when all are ready.
    pub fn start(launch: Launch) -> Result<Pool> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("toolhost-workers")
            .enable_all()
            .build()
            .context("cannot start the thread that talks to the worker processes")?;
        let count = launch.config.max_concurrency.max(1);
        let shared = Arc::new(Shared {
            launch,
            slots: Mutex::new((0..count).map(|_| Slot::default()).collect()),
            freed: Notify::new(),
            next_job: AtomicU64::new(1),
            jobs: Mutex::default(),
            affinity: Mutex::default(),
            handle: runtime.handle().clone(),
        });
        let (started, wait) = std::sync::mpsc::channel();
        let starting = shared.clone();
        runtime.spawn(async move {
            let first = start_worker(&starting, 0, 0).await;
            let all = match first {
                Ok(()) => {
                    let rest = (1..count).map(|slot| start_worker(&starting, slot, 0));
                    futures::future::join_all(rest).await.into_iter().collect::<Result<Vec<()>>>().map(drop)
                }
                Err(e) => Err(e),
            };
            let _ = started.send(all);
        });
        wait.recv().context("the worker pool stopped while starting")??;
        Ok(Pool { shared, runtime: Some(runtime) })
    }

    /// The workers' process ids, by slot (0 while one is starting).
    pub fn pids(&self) -> Vec<u32> {
        lock(&self.shared.slots).iter().map(|slot| slot.link.as_ref().map_or(0, |link| link.pid)).collect()
    }

    /// Runs a job in a worker: a free one (the one that ran this workspace last, if free), or
    /// for a nested job its caller's. Cancelling `io.cancel`, or dropping the future, stops the
    /// guest; a worker silent past the deadline is killed.
    pub async fn run(&self, job: Job, io: JobIo) -> Result<Done> {
        let shared = &self.shared;
        let deadline = tokio::time::Instant::now() + job.time_left;
        let nested = job.nested.then(|| CALLER.try_with(|caller| *caller).ok()).flatten();
        let (worker, link) = match nested {
            Some(worker) => {
                let link = lock(&shared.slots)[worker].link.clone();
                (worker, link.context("the worker process running the calling code is gone")?)
            }
            None => tokio::time::timeout_at(deadline, shared.take_worker(&job.workspace))
                .await
                .map_err(|_| anyhow!("no worker process became free before the call's deadline"))?,
        };
        let id = shared.next_job.fetch_add(1, Ordering::Relaxed);
        let cancel = io.cancel.clone();
        let (done, result) = oneshot::channel();
        lock(&shared.jobs).insert(
            id,
            Pending {
                worker,
                generation: link.generation,
                holds_worker: nested.is_none(),
                io,
                deadline,
                caller: tokio::runtime::Handle::current(),
                done: Some(done),
            },
        );
        let mut job = job;
        let stdin = std::mem::take(&mut job.stdin);
        // Unless the job's end arrives, leaving stops its guest (cancelled, dropped, or killed).
        let mut guard = StopOnDrop { link: Some(link.clone()), job: id };
        let _ = link.send.send(wire::frame(&ToWorker::Start { job: id, spec: job }, &stdin));
        tokio::select! {
            ended = result => {
                guard.link = None;
                ended.unwrap_or_else(|_| Err(anyhow!("the worker pool dropped the call")))
            }
            () = cancel.cancelled() => Ok(Done::interrupted(Ending::Cancelled)),
            () = tokio::time::sleep_until(deadline + GRACE) => {
                tracing::warn!(worker, pid = link.pid, "a worker process did not end a call at its deadline; killing it");
                kill(link.pid);
                Ok(Done::interrupted(Ending::Timeout))
            }
        }
    }
}

/// Stops a job's guest when the caller stops waiting for it.
struct StopOnDrop {
    link: Option<Link>,
    job: u64,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(link) = self.link.take() {
            let _ = link.send.send(wire::frame(&ToWorker::Cancel { job: self.job }, &[]));
        }
    }
}

impl Shared {
    /// A free worker, marked busy: the one that ran `workspace` last if it is free.
    async fn take_worker(&self, workspace: &Path) -> (usize, Link) {
        loop {
            let freed = self.freed.notified();
            {
                let preferred = lock(&self.affinity).get(workspace).copied();
                let mut slots = lock(&self.slots);
                let free = |i: &usize| slots[*i].link.is_some() && !slots[*i].busy;
                let pick = preferred.filter(free).or_else(|| (0..slots.len()).find(free));
                if let Some(i) = pick {
                    slots[i].busy = true;
                    let link = slots[i].link.clone().expect("a free slot has a worker");
                    drop(slots);
                    let mut affinity = lock(&self.affinity);
                    if affinity.len() >= AFFINITY {
                        affinity.clear();
                    }
                    affinity.insert(workspace.to_path_buf(), i);
                    return (i, link);
                }
            }
            freed.await;
        }
    }

    /// Lets the slot take the next job.
    fn release(&self, worker: usize, generation: u64) {
        let mut slots = lock(&self.slots);
        if slots[worker].link.as_ref().is_some_and(|link| link.generation == generation) {
            slots[worker].busy = false;
        }
        drop(slots);
        self.freed.notify_waiters();
    }

    /// The jobs a dead worker held fail; the slot starts a new worker.
    fn lost(self: &Arc<Self>, worker: usize, generation: u64, why: &str) {
        {
            let mut slots = lock(&self.slots);
            if slots[worker].link.as_ref().is_none_or(|link| link.generation != generation) {
                return;
            }
            slots[worker] = Slot::default();
        }
        let lost: Vec<Pending> = {
            let mut jobs = lock(&self.jobs);
            let ids: Vec<u64> = jobs
                .iter()
                .filter(|(_, p)| p.worker == worker && p.generation == generation)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter().filter_map(|id| jobs.remove(&id)).collect()
        };
        tracing::warn!(worker, calls = lost.len(), "a worker process ended ({why}); starting another");
        for mut pending in lost {
            if let Some(done) = pending.done.take() {
                let _ = done.send(Err(anyhow!(
                    "the worker process running this call ended ({why}); the call was lost: retry it"
                )));
            }
        }
        metrics::gauge!("toolhost_worker_resident_bytes", "worker" => worker.to_string()).set(0.0);
        let shared = self.clone();
        self.handle.spawn(async move {
            let mut wait = Duration::from_millis(100);
            while let Err(e) = start_worker(&shared, worker, generation + 1).await {
                tracing::error!(worker, "cannot start a worker process: {e:#}; trying again in {wait:?}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        });
    }

    /// Handles one message of worker `worker`.
    fn received(self: &Arc<Self>, worker: usize, link: &Link, message: FromWorker, blob: Vec<u8>) {
        match message {
            FromWorker::Ready { .. } => {}
            FromWorker::Failed { job: None, error } => tracing::error!(worker, "worker process: {error}"),
            FromWorker::Failed { job: Some(job), error } => {
                self.finish(job, Err(anyhow!("the worker process could not run this call: {error}")));
            }
            FromWorker::Take { job, request, tree, bytes, entries } => {
                let granted = self.with_job(job, |p| budget(&p.io, tree).take(bytes, entries)).unwrap_or(false);
                let _ = link.send.send(wire::frame(&ToWorker::Granted { request, granted }, &[]));
            }
            FromWorker::Give { job, tree, bytes, entries } => {
                self.with_job(job, |p| budget(&p.io, tree).give(bytes, entries));
            }
            FromWorker::Call { job, request, too_long } => {
                let asked = self.with_job(job, |p| (p.io.host_tools.clone(), p.deadline, p.caller.clone()));
                let send = link.send.clone();
                let frame = match too_long {
                    Some(n) => Frame::TooLong(n),
                    None => Frame::Bytes(blob),
                };
                let Some((Some(tools), deadline, caller)) = asked else {
                    let _ = send.send(wire::frame(&ToWorker::Answer { request }, &[]));
                    return;
                };
                caller.spawn(CALLER.scope(worker, async move {
                    let answer = tools.answer(frame, deadline.into_std()).await;
                    let _ = send.send(wire::frame(&ToWorker::Answer { request }, &answer));
                }));
            }
            FromWorker::Done { job, mut done, stdout_len, stdout_dropped, stderr_dropped, resident_bytes } => {
                let mut stdout = blob;
                let stderr = stdout.split_off(stdout_len.min(stdout.len()));
                done.stdout = Captured { data: stdout, dropped: stdout_dropped };
                done.stderr = Captured { data: stderr, dropped: stderr_dropped };
                metrics::gauge!("toolhost_worker_resident_bytes", "worker" => worker.to_string())
                    .set(resident_bytes as f64);
                self.finish(job, Ok(done));
            }
        }
    }

    fn with_job<T>(&self, job: u64, f: impl FnOnce(&Pending) -> T) -> Option<T> {
        lock(&self.jobs).get(&job).map(f)
    }

    /// A job ended: its caller hears, and its worker is free again.
    fn finish(&self, job: u64, result: Result<Done>) {
        let Some(mut pending) = lock(&self.jobs).remove(&job) else { return };
        if let Some(done) = pending.done.take() {
            let _ = done.send(result);
        }
        if pending.holds_worker {
            self.release(pending.worker, pending.generation);
        }
    }
}

fn budget(io: &JobIo, tree: Tree) -> &dyn wasmtime_wasi::filesystem::Budget {
    match tree {
        Tree::Workspace => &*io.workspace_budget,
        Tree::Scratch => &*io.scratch_budget,
    }
}

/// Starts the worker of slot `worker` and waits until it has loaded the runtimes.
async fn start_worker(shared: &Arc<Shared>, worker: usize, generation: u64) -> Result<()> {
    let launch = &shared.launch;
    let (front, child_end) = std::os::unix::net::UnixStream::pair().context("cannot make a socket pair")?;
    let mut command = tokio::process::Command::new(&launch.exe);
    // A worker gets none of the server's secrets (tokens, OAuth settings): only what logging,
    // temporary files and a runtime check need.
    command.env_clear();
    for (name, value) in std::env::vars_os() {
        if name.to_str().is_some_and(|name| INHERITED_ENV.contains(&name) || name.starts_with("RUST_")) {
            command.env(name, value);
        }
    }
    let mut child = command
        .arg("worker")
        .stdin(Stdio::from(OwnedFd::from(child_end)))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start a worker process ({})", launch.exe.display()))?;
    front.set_nonblocking(true)?;
    let (mut reader, mut writer) = tokio::net::UnixStream::from_std(front)?.into_split();
    let init = ToWorker::Init {
        config: launch.config.clone(),
        runtimes: launch.runtimes.clone(),
        cache_dir: launch.cache_dir.clone(),
    };
    writer.write_all(&wire::frame(&init, &[])).await?;
    let pid = match tokio::time::timeout(READY_WAIT, wire::read::<FromWorker>(&mut reader)).await {
        Ok(Ok(Some((FromWorker::Ready { pid }, _)))) => pid,
        Ok(Ok(Some((FromWorker::Failed { error, .. }, _)))) => bail!("the worker process cannot load: {error}"),
        Ok(Ok(_)) => bail!("the worker process exited while loading; its log above says why"),
        Ok(Err(e)) => return Err(e.context("the worker process sent nothing readable")),
        Err(_) => bail!("the worker process did not load within {READY_WAIT:?}"),
    };
    let (send, mut outbox) = mpsc::unbounded_channel::<Vec<u8>>();
    let link = Link { pid, send, generation };
    tokio::spawn(async move {
        while let Some(frame) = outbox.recv().await {
            if writer.write_all(&frame).await.is_err() {
                break;
            }
        }
    });
    let listening = shared.clone();
    let mine = link.clone();
    tokio::spawn(async move {
        let why = loop {
            match wire::read::<FromWorker>(&mut reader).await {
                Ok(Some((message, blob))) => listening.received(worker, &mine, message, blob),
                Ok(None) => break "it exited".to_string(),
                Err(e) => break format!("{e:#}"),
            }
        };
        let status = child.wait().await.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
        listening.lost(worker, generation, &format!("{why}: {status}"));
    });
    let mut slots = lock(&shared.slots);
    slots[worker] = Slot { link: Some(link), busy: false };
    drop(slots);
    shared.freed.notify_waiters();
    tracing::debug!(worker, pid, "worker process ready");
    Ok(())
}

fn kill(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
