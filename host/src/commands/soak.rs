//! `toolhost bench --soak SECONDS`: a hostile soak over streamable HTTP. One principal (its own
//! token) keeps twice `max_concurrency` calls going that try to hurt the service: guests that
//! block in host calls or spin past their deadline, fill the workspace and `/tmp`, flood their
//! output, allocate up to the memory cap, and open sessions they never use. Another principal
//! makes benign calls meanwhile. The report: hostile calls that ran past their deadline plus
//! 1 s (must be 0), peak and final RSS, disk held against the quotas, and the benign
//! principal's latency and failures (must be 0).

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde::Serialize;

use super::bench::{Latency, local_server, memory_mb};
use crate::config::Settings;
use crate::progress::Progress;
use crate::sandbox::Sandbox;

const HOSTILE: &str = "soak-hostile-token";
const BENIGN: &str = "soak-benign-token";
/// The deadline hostile calls ask for.
const HOSTILE_TIMEOUT_S: f64 = 2.0;

/// What the hostile principal sends, in turn.
const ATTACKS: &[(&str, &str)] = &[
    ("select-blocker", "import select\nselect.select([], [], [], 10**7)"),
    ("poll-blocker", "import select\np = select.poll()\np.poll(10**9)"),
    ("busy-loop", "while True: pass"),
    (
        "workspace-fill",
        "import os\ntry:\n    with open('fill.bin', 'ab') as f:\n        while True: f.write(b'x' * (1 << 20))\n\
         except OSError: pass\ntry:\n    for i in range(10**6): os.makedirs(f'd/{i}')\nexcept OSError: pass",
    ),
    (
        "tmp-fill",
        "try:\n    with open('/tmp/fill', 'wb') as f:\n        while True: f.write(b't' * (1 << 20))\nexcept OSError: pass",
    ),
    ("output-flood", "import sys\nchunk = 'y' * (1 << 20)\nfor _ in range(64): sys.stdout.write(chunk)"),
    ("big-allocation", "xs = []\nwhile True: xs.append(bytearray(64 << 20))"),
];

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub seconds: f64,
    pub hostile_calls: u64,
    /// Hostile calls whose run lasted longer than their deadline plus 1 s.
    pub past_deadline: u64,
    /// Hostile calls refused (busy, a cap, a session cap): expected under a flood.
    pub hostile_refused: u64,
    pub sessions_opened: u64,
    pub benign: Option<Latency>,
    pub benign_failures: u64,
    pub peak_rss_mb: f64,
    pub final_rss_mb: f64,
    pub disk_mb: f64,
    /// The fullest workspace, against the quota each has.
    pub largest_workspace_mb: f64,
    pub quota_mb_per_workspace: f64,
    pub workspaces: usize,
}

pub fn run(settings: Settings, length: Duration, json: bool) -> Result<ExitCode> {
    let runtime = settings.sandbox.default_runtime.clone();
    let sandbox = super::start_sandbox(&settings, std::slice::from_ref(&runtime), &Progress::auto())?;
    let hostile_workers = settings.sandbox.max_concurrency * 2;
    let executor = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = executor.block_on(async move {
        let folders = tempfile::tempdir()?;
        let (url, stop) = local_server(&settings, sandbox.clone(), folders.path(), &[HOSTILE, BENIGN]).await?;
        let end = Instant::now() + length;
        let counts = Arc::new(Counts::default());
        let mut hostile = Vec::new();
        for worker in 0..hostile_workers {
            let (url, counts) = (url.clone(), counts.clone());
            hostile.push(tokio::spawn(async move { attack(&url, worker, end, &counts).await }));
        }
        let sampler = tokio::spawn(sample_rss(end, sandbox.clone()));
        let benign = connect(&url, BENIGN).await?;
        let mut samples = Vec::new();
        let mut benign_failures = 0;
        let started = Instant::now();
        while Instant::now() < end {
            let began = Instant::now();
            match call(&benign, "print(1 + 1)", None).await {
                Ok(result) if result.is_error != Some(true) => samples.push(began.elapsed()),
                _ => benign_failures += 1,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let benign_wall = started.elapsed();
        for worker in hostile {
            worker.await.context("soak worker")??;
        }
        let peak = sampler.await.context("sampler")?;
        let _ = benign.cancel().await;
        let sessions = folders.path().join("sessions");
        let workspaces: Vec<u64> = std::fs::read_dir(&sessions)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| bytes_under(&entry.path()))
            .collect();
        let limits = settings.sandbox.limits;
        let report = Report {
            seconds: length.as_secs_f64(),
            hostile_calls: counts.calls.load(Ordering::Relaxed),
            past_deadline: counts.past_deadline.load(Ordering::Relaxed),
            hostile_refused: counts.refused.load(Ordering::Relaxed),
            sessions_opened: counts.sessions.load(Ordering::Relaxed),
            benign: Some(Latency::of(samples, benign_wall)),
            benign_failures,
            peak_rss_mb: peak,
            final_rss_mb: rss_mb(&sandbox).unwrap_or(0.0),
            disk_mb: workspaces.iter().sum::<u64>() as f64 / 1048576.0,
            largest_workspace_mb: workspaces.iter().max().copied().unwrap_or(0) as f64 / 1048576.0,
            quota_mb_per_workspace: (limits.workspace_bytes >> 20) as f64,
            workspaces: workspaces.len(),
        };
        let _ = stop.send(());
        anyhow::Ok(report)
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    let held = report.past_deadline == 0 && report.benign_failures == 0;
    Ok(if held { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

#[derive(Default)]
struct Counts {
    calls: AtomicU64,
    past_deadline: AtomicU64,
    refused: AtomicU64,
    sessions: AtomicU64,
}

type Client = RunningService<rmcp::RoleClient, ()>;

async fn connect(url: &str, token: &str) -> Result<Client> {
    let config = StreamableHttpClientTransportConfig::with_uri(format!("{url}/mcp")).auth_header(token.to_string());
    ().serve(StreamableHttpClientTransport::from_config(config)).await.context("cannot connect to the local server")
}

async fn call(client: &Client, code: &str, timeout_s: Option<f64>) -> Result<CallToolResult> {
    let mut arguments = serde_json::Map::new();
    arguments.insert("code".into(), code.into());
    if let Some(timeout) = timeout_s {
        arguments.insert("timeout_s".into(), timeout.into());
    }
    Ok(client.call_tool(CallToolRequestParams::new("code_interpreter").with_arguments(arguments)).await?)
}

/// One hostile worker: the attacks in turn until `end`; every eighth round it opens a session
/// it never uses, and every round's call runs in a session of its own now and then (churn).
async fn attack(url: &str, worker: usize, end: Instant, counts: &Counts) -> Result<()> {
    let mut client = connect(url, HOSTILE).await?;
    let mut round = worker;
    while Instant::now() < end {
        let (_, code) = ATTACKS[round % ATTACKS.len()];
        if round % 8 == 7 {
            // Session churn: a session opened and left silent, and a fresh one for the calls.
            counts.sessions.fetch_add(1, Ordering::Relaxed);
            if connect(url, HOSTILE).await.is_err() {
                counts.refused.fetch_add(1, Ordering::Relaxed);
            }
            if let Ok(fresh) = connect(url, HOSTILE).await {
                let _ = std::mem::replace(&mut client, fresh).cancel().await;
            }
        }
        round += 1;
        counts.calls.fetch_add(1, Ordering::Relaxed);
        match call(&client, code, Some(HOSTILE_TIMEOUT_S)).await {
            Ok(result) => {
                let ran_ms = result
                    .structured_content
                    .as_ref()
                    .and_then(|s| s.get("duration_ms"))
                    .and_then(serde_json::Value::as_f64);
                match ran_ms {
                    Some(ms) if ms > (HOSTILE_TIMEOUT_S + 1.0) * 1000.0 => {
                        counts.past_deadline.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(_) => {}
                    None => {
                        counts.refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Err(_) => {
                counts.refused.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let _ = client.cancel().await;
    Ok(())
}

/// Samples the RSS of this process and its workers every 250 ms until `end`; returns the
/// peak, in MB.
async fn sample_rss(end: Instant, sandbox: Sandbox) -> f64 {
    let mut peak: f64 = 0.0;
    while Instant::now() < end {
        peak = peak.max(rss_mb(&sandbox).unwrap_or(0.0));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    peak
}

/// The RSS of this process and its worker processes together, in MB.
fn rss_mb(sandbox: &Sandbox) -> Option<f64> {
    memory_mb(&sandbox.worker_pids(), "VmRSS")
}

/// Bytes under `root` (file lengths).
fn bytes_under(root: &std::path::Path) -> u64 {
    let mut bytes = 0;
    let mut folders = vec![root.to_path_buf()];
    while let Some(dir) = folders.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => folders.push(entry.path()),
                Ok(t) if t.is_file() => bytes += entry.metadata().map_or(0, |m| m.len()),
                _ => {}
            }
        }
    }
    bytes
}

fn print_report(r: &Report) {
    println!("hostile soak, {:.0} s", r.seconds);
    println!(
        "  hostile calls        {} ({} refused as busy or capped), {} sessions churned",
        r.hostile_calls, r.hostile_refused, r.sessions_opened
    );
    println!("  past deadline + 1 s  {}", r.past_deadline);
    if let Some(b) = &r.benign {
        println!(
            "  benign calls         {} ok, {} failed; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            b.calls, r.benign_failures, b.p50_ms, b.p99_ms, b.max_ms
        );
    }
    println!("  RSS                  peak {:.0} MB, final {:.0} MB", r.peak_rss_mb, r.final_rss_mb);
    println!(
        "  disk                 {:.1} MB in {} workspaces, the largest {:.1} MB (quota {:.0} MB each)",
        r.disk_mb, r.workspaces, r.largest_workspace_mb, r.quota_mb_per_workspace
    );
}
