//! A first start's compile, in a child process: building a snapshot and compiling CPython to
//! native code takes about 2 GB that the allocator keeps once freed, so a server that did it
//! in process would hold that for the rest of its life. The child fills the cache and exits;
//! the server then loads from the cache as on any warm start.

use std::io::Read;
use std::process::{ExitCode, Stdio};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::config::Settings;
use crate::progress::Progress;
use crate::runtime::{Cache, InstalledRuntime};
use crate::sandbox::{self, SandboxConfig};

/// What the child prepares.
#[derive(Serialize, Deserialize)]
struct Request {
    sandbox: SandboxConfig,
    runtimes: Vec<String>,
}

/// The named runtimes, ready to start: when the cache lacks anything `Sandbox::start` would
/// build or compile for them (or a runtime is not fetched yet), `toolhost prepare` fills it
/// first, in a child process.
pub fn in_child_if_cold(settings: &Settings, names: &[String]) -> Result<Vec<InstalledRuntime>> {
    let cache = Cache::new(&settings.cache_dir);
    // Not fetched yet, or damaged: the child fetches it.
    if let Ok(installed) = super::ensure_runtimes(settings, names, &Progress::quiet())
        && sandbox::is_warm(&settings.sandbox, &installed, &cache)?
    {
        return Ok(installed);
    }
    spawn(settings, names)?;
    super::ensure_runtimes(settings, names, &Progress::log())
}

fn spawn(settings: &Settings, names: &[String]) -> Result<()> {
    tracing::info!("first start: preparing the {} runtime in a child process", names.join(", "));
    let request = serde_json::to_vec(&Request { sandbox: settings.sandbox.clone(), runtimes: names.to_vec() })?;
    let exe = std::env::current_exe().context("cannot find the toolhost binary to prepare the runtime")?;
    let mut child = std::process::Command::new(exe)
        .arg("--cache-dir")
        .arg(&settings.cache_dir)
        .arg("--log")
        .arg(&settings.log_filter)
        .arg("--log-format")
        .arg(settings.log_format.as_str())
        .arg("prepare")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start the child process that prepares the runtime")?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().context("the child has no stdin")?;
        stdin.write_all(&request).context("cannot hand the settings to the child")?;
    }
    let status = child.wait().context("the child process that prepares the runtime was lost")?;
    if !status.success() {
        bail!("preparing the runtime failed ({status}); its log above says why");
    }
    Ok(())
}

/// `toolhost prepare`: the child's side.
pub fn child(settings: Settings) -> Result<ExitCode> {
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input).context("cannot read the settings on stdin")?;
    let request: Request = serde_json::from_slice(&input).context("the settings on stdin are not valid")?;
    // Filling the cache needs no worker processes.
    let settings = Settings { sandbox: SandboxConfig { worker_processes: false, ..request.sandbox }, ..settings };
    super::start_sandbox(&settings, &request.runtimes, &Progress::log())?;
    Ok(ExitCode::SUCCESS)
}
