//! `toolhost bench`: the DESIGN.md section 10 workloads, in process (sandbox only), at each
//! concurrency level: min/p50/p95/p99/max latency per call, calls per second, peak RSS.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::cli::BenchArgs;
use crate::config::Settings;
use crate::progress::Progress;
use crate::sandbox::{Call, Sandbox};
use crate::workspace::{Quota, Workspace};

/// The workloads of DESIGN.md section 10, by name.
pub const WORKLOADS: &[(&str, &str)] = &[
    ("print", "print(1+1)"),
    ("sum-squares", "sum(i*i for i in range(10**6))"),
    ("numpy-sum", "import numpy as np; print(np.arange(10**6).sum())"),
    ("pandas-mean", "import pandas as pd; print(pd.DataFrame({'a': range(1000)}).a.mean())"),
    (
        "matplotlib-png",
        "import matplotlib.pyplot as plt\nplt.plot(range(100), [i * i for i in range(100)])\n\
         plt.savefig('/workspace/plot.png')\nplt.close('all')",
    ),
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
    pub skipped: Option<String>,
}

pub fn run(mut settings: Settings, args: BenchArgs) -> Result<ExitCode> {
    let levels: Vec<usize> = args.concurrency.iter().copied().filter(|&c| c > 0).collect();
    settings.sandbox.max_concurrency = levels.iter().copied().max().unwrap_or(1);
    let runtime = args.runtime.clone().unwrap_or_else(|| settings.sandbox.default_runtime.clone());
    let sandbox = super::start_sandbox(&settings, std::slice::from_ref(&runtime), &Progress::auto())?;
    let executor = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let budget = Duration::from_secs_f64(args.seconds);
    let mut rows = Vec::new();
    for (name, code) in WORKLOADS {
        if args.only.as_deref().is_some_and(|only| !name.contains(only)) {
            continue;
        }
        for &concurrency in &levels {
            let row =
                executor.block_on(measure(&sandbox, &runtime, name, code, concurrency, args.iterations, budget))?;
            if !args.json {
                print_row(&row, rows.is_empty());
            }
            rows.push(row);
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    Ok(ExitCode::SUCCESS)
}

async fn measure(
    sandbox: &Sandbox,
    runtime: &str,
    name: &str,
    code: &str,
    concurrency: usize,
    iterations: usize,
    budget: Duration,
) -> Result<Row> {
    let limits = sandbox.limits();
    let quota = Quota { bytes: limits.workspace_bytes, files: limits.workspace_files };
    let folders: Vec<tempfile::TempDir> = (0..concurrency).map(|_| tempfile::tempdir()).collect::<Result<_, _>>()?;
    let workspaces: Vec<Arc<Workspace>> =
        folders.iter().map(|d| Workspace::open(d.path(), quota).map(Arc::new)).collect::<Result<_, _>>()?;
    let mut row = Row {
        mode: "in-process",
        workload: name.to_string(),
        concurrency,
        latency: None,
        peak_rss_mb: None,
        skipped: None,
    };

    // One warm-up call, which also tells whether the runtime can run this workload.
    let warm = one_call(sandbox, runtime, code, &workspaces[0]).await?;
    if let Err(why) = warm {
        row.skipped = Some(why);
        return Ok(row);
    }
    reset_peak_rss();
    let started = Instant::now();
    let per_worker = iterations.div_ceil(concurrency);
    let mut workers = Vec::new();
    for workspace in &workspaces {
        let sandbox = sandbox.clone();
        let workspace = workspace.clone();
        let runtime = runtime.to_string();
        let code = code.to_string();
        workers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            while samples.len() < per_worker && started.elapsed() < budget {
                let began = Instant::now();
                one_call(&sandbox, &runtime, &code, &workspace).await?.map_err(|e| anyhow::anyhow!(e))?;
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
    row.peak_rss_mb = peak_rss_mb();
    Ok(row)
}

/// One call; `Err` inside when the code did not run cleanly.
async fn one_call(sandbox: &Sandbox, runtime: &str, code: &str, workspace: &Workspace) -> Result<Result<(), String>> {
    let outcome = sandbox
        .run(Call {
            code: code.to_string(),
            runtime: Some(runtime),
            stdin: Vec::new(),
            workspace,
            limits: sandbox.limits(),
            roots: Vec::new(),
            cancel: CancellationToken::new(),
        })
        .await?;
    Ok(if outcome.is_ok() {
        Ok(())
    } else {
        Err(outcome.error.map_or_else(|| outcome.status.as_str().to_string(), |e| format!("{}: {}", e.kind, e.message)))
    })
}

fn print_row(row: &Row, header: bool) {
    if header {
        println!(
            "{:<11} {:<15} {:>4} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9}",
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
            "peak RSS"
        );
    }
    match (&row.latency, &row.skipped) {
        (Some(l), _) => println!(
            "{:<11} {:<15} {:>4} {:>6} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>8.1} {:>6.0} MB",
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
            row.peak_rss_mb.unwrap_or(0.0)
        ),
        (None, Some(why)) => println!("{:<11} {:<15} {:>4} skipped: {why}", row.mode, row.workload, row.concurrency),
        (None, None) => {}
    }
}

/// Resets the kernel's record of this process's peak RSS (VmHWM), so each measurement reports
/// its own peak. Linux only; elsewhere the peak is the process's.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// This process's peak RSS in MB since the last reset, from /proc/self/status.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
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
