//! `toolhost run`: one call in a fresh sandbox, its outcome printed as JSON.

use std::io::Read;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::cli::RunArgs;
use crate::config::Settings;
use crate::progress::Progress;
use crate::sandbox::Call;
use crate::workspace::{Quota, Workspace};

pub fn run(mut settings: Settings, args: RunArgs) -> Result<ExitCode> {
    let code = match (&args.code, &args.file) {
        (Some(code), _) => code.clone(),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut code = String::new();
            std::io::stdin().read_to_string(&mut code).context("cannot read the code from standard input")?;
            code
        }
        (None, Some(path)) => {
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?
        }
        (None, None) => anyhow::bail!("give the code with -c CODE or as a FILE"),
    };
    let runtime = args.runtime.clone().unwrap_or_else(|| settings.sandbox.default_runtime.clone());
    settings.sandbox.max_concurrency = 1;
    // One call: a worker process would only add its start.
    settings.sandbox.worker_processes = false;
    let sandbox = super::start_sandbox(&settings, std::slice::from_ref(&runtime), &Progress::auto())?;

    let temporary;
    let folder = match &args.workspace {
        Some(dir) => dir.clone(),
        None => {
            temporary = tempfile::Builder::new().prefix("toolhost-workspace-").tempdir()?;
            temporary.path().to_path_buf()
        }
    };
    let limits = sandbox.limits();
    let quota = Quota { bytes: limits.workspace_bytes, files: limits.workspace_files };
    let workspace =
        Workspace::open(&folder, quota).with_context(|| format!("cannot open the workspace {}", folder.display()))?;
    let executor = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let outcome =
        executor.block_on(sandbox.run(Call { runtime: Some(&runtime), ..Call::new(code, &workspace, limits) }))?;
    println!("{}", serde_json::to_string_pretty(&outcome)?);
    Ok(if outcome.is_ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
