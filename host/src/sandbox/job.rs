//! A job: one guest run as it passes between the front (`Sandbox::run`, which owns admission,
//! the workspace and its ledgers, and the outcome) and whatever runs guests (`local`, in this
//! process, or a worker process through `workers`). Plain data, so it crosses a socket.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use wasmtime_wasi::filesystem::Budget;

use super::outcome::Ending;
use super::output::Captured;
use super::{HostTools, Limits, PythonState, ReadOnlyRoot, StateReport};

/// What to run, and with what.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Job {
    pub runtime: String,
    pub code: String,
    pub call_id: String,
    /// Bytes the guest reads on stdin (sent beside the job, not in it).
    #[serde(skip)]
    pub stdin: Vec<u8>,
    /// The host folder seen as `/workspace`.
    pub workspace: PathBuf,
    pub workspace_read_only: bool,
    /// The host folder seen as `/tmp`, made for this call.
    pub scratch: PathBuf,
    pub roots: Vec<ReadOnlyRoot>,
    pub limits: Limits,
    /// Time left until the call's deadline when the job was handed over.
    pub time_left: Duration,
    pub state: Option<PythonState>,
    /// The call offers tools to the guest's `host.call`.
    pub host_tools: bool,
    /// Made by a guest of another call (code mode): it runs beside that call.
    pub nested: bool,
}

/// What a job draws on while it runs; these stay with the front.
pub(super) struct JobIo {
    /// What every change under `/workspace` draws on.
    pub workspace_budget: Arc<dyn Budget>,
    /// What every change under `/tmp` draws on.
    pub scratch_budget: Arc<dyn Budget>,
    pub host_tools: Option<Arc<dyn HostTools>>,
    pub cancel: CancellationToken,
}

/// How a job ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Done {
    pub ending: Ending,
    pub fuel_used: Option<u64>,
    /// The streams (sent beside the rest, not in it).
    #[serde(skip)]
    pub stdout: Captured,
    #[serde(skip)]
    pub stderr: Captured,
    pub memory_denied: bool,
    pub state: StateReport,
}

impl Done {
    /// A job that ended before its guest did (cancelled, or dropped at its deadline).
    pub fn interrupted(ending: Ending) -> Done {
        Done {
            ending,
            fuel_used: None,
            stdout: Captured::default(),
            stderr: Captured::default(),
            memory_denied: false,
            state: StateReport::default(),
        }
    }
}
