//! The worker side: `toolhost worker` loads the runtimes the front names, then runs the jobs it
//! is sent, one guest address space per worker. The workspace's ledgers and the tools a guest
//! calls stay with the front: a growing write asks it for room, a `host.call` asks it for the
//! answer. The worker ends when the front closes the socket (or dies).

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use wasmtime_wasi::filesystem::Budget;

use super::super::job::JobIo;
use super::super::local::Local;
use super::super::{Frame, HostTools};
use super::wire::{self, FromWorker, ToWorker, Tree};
use crate::progress::Progress;
use crate::runtime::{self, Cache, manifest};

/// How long a budget request waits for the front before the write is refused.
const GRANT_WAIT: Duration = Duration::from_secs(30);

/// The worker's end of the socket, shared by whoever sends, and what waits for answers.
struct Link {
    writer: Mutex<UnixStream>,
    next_request: std::sync::atomic::AtomicU64,
    grants: Mutex<HashMap<u64, mpsc::Sender<bool>>>,
    answers: Mutex<HashMap<u64, tokio::sync::oneshot::Sender<Vec<u8>>>>,
}

impl Link {
    fn send(&self, message: &FromWorker, blob: &[u8]) {
        let frame = wire::frame(message, blob);
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if wire::write_blocking(&mut *writer, &frame).is_err() {
            // The front is gone: nothing this worker does matters any more.
            std::process::exit(0);
        }
    }

    fn request_id(&self) -> u64 {
        self.next_request.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

/// A tree's budget, kept by the front.
struct RemoteBudget {
    link: Arc<Link>,
    job: u64,
    tree: Tree,
}

impl Budget for RemoteBudget {
    fn take(&self, bytes: u64, entries: u64) -> bool {
        if bytes == 0 && entries == 0 {
            return true;
        }
        let request = self.link.request_id();
        let (granted, wait) = mpsc::channel();
        self.link.grants.lock().unwrap_or_else(|p| p.into_inner()).insert(request, granted);
        self.link.send(&FromWorker::Take { job: self.job, request, tree: self.tree, bytes, entries }, &[]);
        let answer = wait.recv_timeout(GRANT_WAIT).unwrap_or(false);
        self.link.grants.lock().unwrap_or_else(|p| p.into_inner()).remove(&request);
        answer
    }

    fn give(&self, bytes: u64, entries: u64) {
        if bytes != 0 || entries != 0 {
            self.link.send(&FromWorker::Give { job: self.job, tree: self.tree, bytes, entries }, &[]);
        }
    }
}

/// The call's tools, answered by the front.
struct RemoteTools {
    link: Arc<Link>,
    job: u64,
}

#[async_trait]
impl HostTools for RemoteTools {
    async fn answer(&self, frame: Frame, _deadline: Instant) -> Vec<u8> {
        let request = self.link.request_id();
        let (answer, wait) = tokio::sync::oneshot::channel();
        self.link.answers.lock().unwrap_or_else(|p| p.into_inner()).insert(request, answer);
        match frame {
            Frame::Bytes(bytes) => self.link.send(&FromWorker::Call { job: self.job, request, too_long: None }, &bytes),
            Frame::TooLong(n) => self.link.send(&FromWorker::Call { job: self.job, request, too_long: Some(n) }, &[]),
        }
        // The guest's deadline is enforced around it; the front answers every request it gets.
        wait.await.unwrap_or_default()
    }
}

/// Serves the front on `stream` until it closes it.
pub fn serve(stream: UnixStream) -> Result<()> {
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    let mut reader = stream.try_clone().context("cannot clone the worker's socket")?;
    let link = Arc::new(Link {
        writer: Mutex::new(stream),
        next_request: Default::default(),
        grants: Mutex::default(),
        answers: Mutex::default(),
    });
    let Some((ToWorker::Init { mut config, runtimes, cache_dir }, _)) = wire::read_blocking(&mut reader)? else {
        anyhow::bail!("the front sent no Init");
    };
    // One guest at a time here (a nested code-mode call runs beside its caller, which waits).
    config.max_concurrency = 1;
    let started = (|| {
        let cache = Cache::new(&cache_dir);
        let progress = Progress::log();
        let installed = runtimes
            .iter()
            .map(|name| {
                let manifest = manifest::find(name).with_context(|| format!("unknown runtime {name:?}"))?;
                runtime::ensure(&manifest, &cache, &progress)
            })
            .collect::<Result<Vec<_>>>()?;
        Local::start(&config, &installed, &cache, &progress)
    })();
    let local = match started {
        Ok(local) => Arc::new(local),
        Err(e) => {
            link.send(&FromWorker::Failed { job: None, error: format!("{e:#}") }, &[]);
            return Err(e);
        }
    };
    link.send(&FromWorker::Ready { pid: std::process::id() }, &[]);

    // Jobs are driven from a small runtime of their own; their guests run on `local`'s threads.
    let driver = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let driver_handle = driver.handle().clone();
    std::thread::Builder::new().name("toolhost-jobs".into()).spawn(move || {
        driver.block_on(std::future::pending::<()>());
    })?;
    let cancels: Arc<Mutex<HashMap<u64, CancellationToken>>> = Arc::default();
    while let Some((message, blob)) = wire::read_blocking::<ToWorker>(&mut reader)? {
        match message {
            ToWorker::Start { job, mut spec } => {
                spec.stdin = blob;
                let cancel = CancellationToken::new();
                cancels.lock().unwrap_or_else(|p| p.into_inner()).insert(job, cancel.clone());
                let io = JobIo {
                    workspace_budget: Arc::new(RemoteBudget { link: link.clone(), job, tree: Tree::Workspace }),
                    scratch_budget: Arc::new(RemoteBudget { link: link.clone(), job, tree: Tree::Scratch }),
                    host_tools: Some(Arc::new(RemoteTools { link: link.clone(), job })),
                    cancel,
                };
                let (local, link, cancels) = (local.clone(), link.clone(), cancels.clone());
                driver_handle.spawn(async move {
                    let ran = local.run(spec, io).await;
                    cancels.lock().unwrap_or_else(|p| p.into_inner()).remove(&job);
                    let done = match ran {
                        Ok(done) => done,
                        Err(e) => {
                            return link.send(&FromWorker::Failed { job: Some(job), error: format!("{e:#}") }, &[]);
                        }
                    };
                    let mut blob = done.stdout.data.clone();
                    blob.extend_from_slice(&done.stderr.data);
                    let message = FromWorker::Done {
                        job,
                        stdout_len: done.stdout.data.len(),
                        stdout_dropped: done.stdout.dropped,
                        stderr_dropped: done.stderr.dropped,
                        resident_bytes: resident_bytes(),
                        done,
                    };
                    link.send(&message, &blob);
                });
            }
            ToWorker::Cancel { job } => {
                if let Some(cancel) = cancels.lock().unwrap_or_else(|p| p.into_inner()).get(&job) {
                    cancel.cancel();
                }
            }
            ToWorker::Granted { request, granted } => {
                if let Some(waiting) = link.grants.lock().unwrap_or_else(|p| p.into_inner()).remove(&request) {
                    let _ = waiting.send(granted);
                }
            }
            ToWorker::Answer { request } => {
                if let Some(waiting) = link.answers.lock().unwrap_or_else(|p| p.into_inner()).remove(&request) {
                    let _ = waiting.send(blob);
                }
            }
            ToWorker::Init { .. } => anyhow::bail!("the front sent Init twice"),
        }
    }
    // The front closed the socket: it is stopping, or it dropped this worker.
    std::process::exit(0);
}

/// This process's resident memory, from `/proc/self/statm`.
pub fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|n| n.parse::<u64>().ok()))
        .map_or(0, |pages| pages * rustix::param::page_size() as u64)
}
