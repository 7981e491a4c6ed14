//! `toolhost bench`: the five workloads (README, "Performance") at each concurrency level, in process
//! (the sandbox alone) and end to end (rmcp clients over streamable HTTP to a server on
//! 127.0.0.1): min/p50/p95/p99/max latency per call, calls per second, peak RSS, and two ratios:
//! scaling (calls/s over the same workload's at concurrency 1) and, over HTTP, the share of the
//! in-process throughput at the same concurrency.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use serde::Serialize;

use crate::app::App;
use crate::cli::{BenchArgs, BenchMode};
use crate::config::Settings;
use crate::progress::Progress;
use crate::sandbox::{Call, PythonState, Sandbox};
use crate::server::Server;
use crate::workspace::{Quota, Workspace};

/// A benchmark workload: `code` is what each measured call runs. With a `setup`, each worker's
/// workspace first runs it once, and every measured call starts from the Python state it left
/// (in process and over HTTP alike: the workloads without setup go to a server that keeps no
/// Python state, those with one to a server that does, so each row compares like with like).
pub struct Workload {
    pub name: &'static str,
    pub setup: Option<&'static str>,
    pub code: &'static str,
}

/// The benchmark workloads: print, pure Python, numpy, pandas, a matplotlib PNG; then a call on a
/// small Python state and one on a state holding a 32 MB DataFrame of random floats.
pub const WORKLOADS: &[Workload] = &[
    Workload { name: "print", setup: None, code: "print(1+1)" },
    Workload { name: "sum-squares", setup: None, code: "sum(i*i for i in range(10**6))" },
    Workload { name: "numpy-sum", setup: None, code: "import numpy as np; print(np.arange(10**6).sum())" },
    Workload {
        name: "pandas-mean",
        setup: None,
        code: "import pandas as pd; print(pd.DataFrame({'a': range(1000)}).a.mean())",
    },
    Workload {
        name: "matplotlib-png",
        setup: None,
        code: "import matplotlib.pyplot as plt\nplt.plot(range(100), [i * i for i in range(100)])\n\
               plt.savefig('/workspace/plot.png')\nplt.close('all')",
    },
    Workload { name: "state-small", setup: Some("x = 41\nnames = {'a': [1, 2, 3]}"), code: "print(x + 1)" },
    Workload {
        name: "state-df32",
        setup: Some(
            "import numpy as np, pandas as pd\n\
             df = pd.DataFrame({'a': np.random.default_rng(0).random(4_000_000)})",
        ),
        code: "print(len(df))",
    },
];

/// Latency percentiles of a set of calls.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub calls: usize,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub calls_per_s: f64,
}

impl Latency {
    /// Percentiles by nearest rank over `samples`, and throughput over `wall`.
    pub fn of(mut samples: Vec<Duration>, wall: Duration) -> Latency {
        samples.sort();
        let ms = |d: &Duration| (d.as_secs_f64() * 1000.0 * 100.0).round() / 100.0;
        let at = |q: f64| {
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len().max(1));
            samples.get(rank - 1).map_or(0.0, ms)
        };
        Latency {
            calls: samples.len(),
            min_ms: samples.first().map_or(0.0, ms),
            p50_ms: at(0.50),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
            max_ms: samples.last().map_or(0.0, ms),
            calls_per_s: (samples.len() as f64 / wall.as_secs_f64().max(1e-9) * 10.0).round() / 10.0,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub mode: &'static str,
    pub workload: String,
    pub concurrency: usize,
    #[serde(flatten)]
    pub latency: Option<Latency>,
    pub peak_rss_mb: Option<f64>,
    /// calls/s over this mode and workload's at concurrency 1.
    pub scaling: Option<f64>,
    /// HTTP only: calls/s over the in-process calls/s at the same workload and concurrency.
    pub of_in_process: Option<f64>,
    pub skipped: Option<String>,
}

impl Row {
    fn calls_per_s(&self) -> Option<f64> {
        self.latency.as_ref().map(|l| l.calls_per_s)
    }

    /// Fills the ratios from the rows measured before this one.
    fn compare(&mut self, earlier: &[Row]) {
        let Some(rate) = self.calls_per_s() else { return };
        let find = |mode: &str, concurrency: usize| {
            earlier
                .iter()
                .find(|r| r.mode == mode && r.workload == self.workload && r.concurrency == concurrency)
                .and_then(Row::calls_per_s)
                .filter(|&base| base > 0.0)
        };
        self.scaling = if self.concurrency == 1 { Some(1.0) } else { find(self.mode, 1).map(|base| rate / base) };
        if self.mode == "http" {
            self.of_in_process = find("in-process", self.concurrency).map(|base| rate / base);
        }
    }
}

/// What the calls go to: the sandbox in this process, or an MCP server over HTTP.
enum Target {
    /// Each worker has a workspace, and a folder for its Python state.
    InProcess { sandbox: Sandbox, runtime: String, workspaces: Vec<(Workspace, PathBuf)> },
    /// Clients of a server that keeps no Python state, and of one that does.
    Http { stateless: Vec<RunningService<rmcp::RoleClient, ()>>, stateful: Vec<RunningService<rmcp::RoleClient, ()>> },
}

impl Target {
    fn mode(&self) -> &'static str {
        match self {
            Target::InProcess { .. } => "in-process",
            Target::Http { .. } => "http",
        }
    }

    /// One call by worker `worker`; the inner `Err` says why the code did not run cleanly.
    /// `stateful`: the call restores and saves the worker's Python state.
    async fn call(&self, worker: usize, code: &str, stateful: bool) -> Result<Result<(), String>> {
        match self {
            Target::InProcess { sandbox, runtime, workspaces } => {
                let (workspace, state) = &workspaces[worker];
                let state = stateful.then(|| PythonState { dir: state.clone(), budget_bytes: 1 << 30, fresh: false });
                let outcome = sandbox
                    .run(Call {
                        runtime: Some(runtime),
                        state,
                        ..Call::new(code.to_string(), workspace, sandbox.limits())
                    })
                    .await?;
                Ok(if outcome.is_ok() {
                    Ok(())
                } else {
                    Err(outcome
                        .error
                        .map_or_else(|| outcome.status.as_str().into(), |e| format!("{}: {}", e.kind, e.message)))
                })
            }
            Target::Http { stateless, stateful: kept } => {
                let clients = if stateful { kept } else { stateless };
                let mut arguments = serde_json::Map::new();
                arguments.insert("code".into(), code.into());
                let result = clients[worker]
                    .call_tool(CallToolRequestParams::new("code_interpreter").with_arguments(arguments))
                    .await?;
                Ok(if result.is_error == Some(true) {
                    Err(result.content.first().and_then(|c| c.as_text()).map(|t| t.text.clone()).unwrap_or_default())
                } else {
                    Ok(())
                })
            }
        }
    }
}

pub fn run(settings: Settings, args: BenchArgs) -> Result<ExitCode> {
    let levels: Vec<usize> = args.concurrency.iter().copied().filter(|&c| c > 0).collect();
    let most = levels.iter().copied().max().unwrap_or(1);
    let runtime = args.runtime.clone().unwrap_or_else(|| settings.sandbox.default_runtime.clone());
    let sandbox = super::start_sandbox(&settings, std::slice::from_ref(&runtime), &Progress::auto())?;
    let executor = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let budget = Duration::from_secs_f64(args.seconds);
    executor.block_on(async move {
        let folders = tempfile::tempdir()?;
        let limits = sandbox.limits();
        let quota = Quota { bytes: limits.workspace_bytes, files: limits.workspace_files };
        let mut targets = Vec::new();
        if matches!(args.mode, BenchMode::InProcess | BenchMode::All) {
            let workspaces = (0..most)
                .map(|i| {
                    let workspace = Workspace::open(folders.path().join(format!("w{i}")), quota)?;
                    Ok((workspace, folders.path().join(format!("state-w{i}"))))
                })
                .collect::<std::io::Result<Vec<_>>>()?;
            targets.push(Arc::new(Target::InProcess {
                sandbox: sandbox.clone(),
                runtime: runtime.clone(),
                workspaces,
            }));
        }
        let mut servers = Vec::new();
        if matches!(args.mode, BenchMode::Http | BenchMode::All) {
            let mut sets = Vec::new();
            for python_state in [None, Some(settings.app.python_state.unwrap_or(256 << 20))] {
                let mut settings = settings.clone();
                settings.app.python_state = python_state;
                let scratch = folders.path().join(if python_state.is_some() { "stateful" } else { "stateless" });
                let (url, stop) = local_server(&settings, sandbox.clone(), &scratch, &[]).await?;
                servers.push(stop);
                let mut clients = Vec::new();
                for _ in 0..most {
                    let transport = StreamableHttpClientTransport::from_uri(format!("{url}/mcp"));
                    clients.push(().serve(transport).await.context("cannot connect to the local server")?);
                }
                sets.push(clients);
            }
            let stateful = sets.pop().unwrap_or_default();
            let stateless = sets.pop().unwrap_or_default();
            targets.push(Arc::new(Target::Http { stateless, stateful }));
        }
        let mut rows = Vec::new();
        for target in &targets {
            for workload in WORKLOADS {
                if args.only.as_deref().is_some_and(|only| !workload.name.contains(only)) {
                    continue;
                }
                for &concurrency in &levels {
                    let workers = sandbox.worker_pids();
                    let mut row =
                        measure(target.clone(), workload, concurrency, args.iterations, budget, &workers).await?;
                    row.compare(&rows);
                    if !args.json {
                        print_row(&row, rows.is_empty());
                    }
                    rows.push(row);
                }
            }
        }
        if args.json {
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        for target in targets {
            if let Ok(Target::Http { stateless, stateful }) = Arc::try_unwrap(target) {
                for client in stateless.into_iter().chain(stateful) {
                    let _ = client.cancel().await;
                }
            }
        }
        for stop in servers {
            let _ = stop.send(());
        }
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

/// A server on 127.0.0.1 on the given sandbox, open to `tokens` (none: no token needed);
/// returns its URL and a sender that stops it.
pub(super) async fn local_server(
    settings: &Settings,
    sandbox: Sandbox,
    scratch: &std::path::Path,
    tokens: &[&str],
) -> Result<(String, tokio::sync::oneshot::Sender<()>)> {
    let mut app_settings = settings.app.clone();
    app_settings.workspaces_dir = scratch.join("sessions");
    let limits = settings.sandbox.limits;
    let app = Arc::new(App::new(&app_settings, limits)?);
    app.services.sandbox.set(sandbox);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let mut server_settings = settings.server.clone();
    server_settings.tokens = tokens.iter().map(|t| t.to_string()).collect();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(Server::new(app, server_settings).serve(listener, async move {
        let _ = stopped.await;
    }));
    Ok((url, stop))
}

async fn measure(
    target: Arc<Target>,
    workload: &Workload,
    concurrency: usize,
    iterations: usize,
    budget: Duration,
    worker_pids: &[u32],
) -> Result<Row> {
    let mut row = Row {
        mode: target.mode(),
        workload: workload.name.to_string(),
        concurrency,
        latency: None,
        peak_rss_mb: None,
        scaling: None,
        of_in_process: None,
        skipped: None,
    };
    // Each worker's setup, and one warm-up call, which also tells whether the runtime can run
    // this workload.
    let stateful = workload.setup.is_some();
    for worker in 0..concurrency {
        let setup = workload.setup.map(|setup| (worker, setup));
        for (worker, code) in setup.into_iter().chain((worker == 0).then_some((0, workload.code))) {
            if let Err(why) = target.call(worker, code, stateful).await? {
                row.skipped = Some(why);
                return Ok(row);
            }
        }
    }
    reset_peak_rss(worker_pids);
    let started = Instant::now();
    let per_worker = iterations.div_ceil(concurrency);
    let mut workers = Vec::new();
    for worker in 0..concurrency {
        let target = target.clone();
        let code = workload.code.to_string();
        workers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            while samples.len() < per_worker && started.elapsed() < budget {
                let began = Instant::now();
                target.call(worker, &code, stateful).await?.map_err(|e| anyhow::anyhow!(e))?;
                samples.push(began.elapsed());
            }
            anyhow::Ok(samples)
        }));
    }
    let mut samples = Vec::new();
    for worker in workers {
        samples.extend(worker.await.context("bench worker")??);
    }
    row.latency = Some(Latency::of(samples, started.elapsed()));
    row.peak_rss_mb = peak_rss_mb(worker_pids);
    Ok(row)
}

fn print_row(row: &Row, header: bool) {
    if header {
        println!(
            "{:<11} {:<15} {:>4} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9} {:>6} {:>8}",
            "mode",
            "workload",
            "conc",
            "calls",
            "min ms",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms",
            "calls/s",
            "peak RSS",
            "scale",
            "of in-p"
        );
    }
    match (&row.latency, &row.skipped) {
        (Some(l), _) => println!(
            "{:<11} {:<15} {:>4} {:>6} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>8.1} {:>6.0} MB {:>6} {:>8}",
            row.mode,
            row.workload,
            row.concurrency,
            l.calls,
            l.min_ms,
            l.p50_ms,
            l.p95_ms,
            l.p99_ms,
            l.max_ms,
            l.calls_per_s,
            row.peak_rss_mb.unwrap_or(0.0),
            ratio(row.scaling, "x"),
            ratio(row.of_in_process.map(|r| r * 100.0), "%"),
        ),
        (None, Some(why)) => println!("{:<11} {:<15} {:>4} skipped: {why}", row.mode, row.workload, row.concurrency),
        (None, None) => {}
    }
}

/// A ratio for the table, or `-` when there is nothing to compare with.
fn ratio(value: Option<f64>, unit: &str) -> String {
    match value {
        Some(v) if unit == "%" => format!("{v:.0}%"),
        Some(v) => format!("{v:.2}{unit}"),
        None => "-".into(),
    }
}

/// Resets the kernel's record of the peak RSS (VmHWM) of this process and its worker processes,
/// so each measurement reports its own peak. Linux only; elsewhere the peak is the process's.
pub fn reset_peak_rss(workers: &[u32]) {
    for process in processes(workers) {
        let _ = std::fs::write(format!("/proc/{process}/clear_refs"), "5");
    }
}

/// The peak RSS since the last reset of this process and its worker processes together, in MB.
pub fn peak_rss_mb(workers: &[u32]) -> Option<f64> {
    memory_mb(workers, "VmHWM")
}

/// A memory figure (e.g. `VmRSS`) of this process and its worker processes together, in MB.
pub(super) fn memory_mb(workers: &[u32], field: &str) -> Option<f64> {
    processes(workers).map(|process| status_mb(&process, field)).sum()
}

/// This process (`self`) and the worker processes running.
fn processes(workers: &[u32]) -> impl Iterator<Item = String> + '_ {
    std::iter::once("self".to_string()).chain(workers.iter().filter(|&&pid| pid != 0).map(u32::to_string))
}

/// A memory figure of process `process` (a pid, or `self`) from its /proc status, in MB.
fn status_mb(process: &str, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{process}/status")).ok()?;
    let line = status.lines().find(|l| l.strip_prefix(field).is_some_and(|rest| rest.starts_with(':')))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some((kb / 1024.0 * 10.0).round() / 10.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let l = Latency::of(samples, Duration::from_secs(2));
        assert_eq!((l.min_ms, l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms), (1.0, 50.0, 95.0, 99.0, 100.0));
        assert_eq!(l.calls_per_s, 50.0);
    }
}
