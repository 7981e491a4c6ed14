//! The running service's shared state: the sandbox (once its runtime is ready), the tool
//! registry, the sessions and the read-only resource roots. One `App` serves every transport.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::config::{AppSettings, RootSetting};
use crate::sandbox::{Limits, ReadOnlyRoot, Sandbox};
use crate::sessions::Sessions;
use crate::tools::{Registry, ToolError};
use crate::workspace::{Quota, Workspace};

/// A configured read-only folder: listed and readable as `file:///<name>/...`, mounted in the
/// sandbox at `/<name>`.
pub struct Root {
    pub name: String,
    pub folder: Workspace,
}

/// Whether the sandbox can take calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    Preparing,
    Failed(String),
}

pub struct App {
    pub registry: Registry,
    pub sessions: Arc<Sessions>,
    pub roots: Vec<Root>,
    /// Image content for every client (`--inline-images`), not only those asking with
    /// `?images=inline`.
    pub inline_images: bool,
    pub limits: Limits,
    sandbox: OnceLock<Sandbox>,
    failure: Mutex<Option<String>>,
    /// Woken when the sandbox is ready or has failed.
    settled: tokio::sync::Notify,
    shutting_down: AtomicBool,
}

/// How long a call waits for a runtime that is still being prepared.
const PATIENCE: Duration = Duration::from_secs(60);

/// Guest paths a root may not take.
const RESERVED: &[&str] = &["workspace", "tmp", "usr", "dev", "proc"];

impl App {
    pub fn new(settings: &AppSettings, limits: Limits, registry: Registry) -> Result<App> {
        let quota = Quota { bytes: limits.workspace_bytes, files: limits.workspace_files };
        let sessions = Sessions::new(&settings.workspaces_dir, quota, settings.workspace_linger)
            .with_context(|| format!("cannot use {} for session workspaces", settings.workspaces_dir.display()))?;
        let roots = settings.roots.iter().map(open_root).collect::<Result<Vec<_>>>()?;
        Ok(App {
            registry,
            sessions: Arc::new(sessions),
            roots,
            inline_images: settings.inline_images,
            limits,
            sandbox: OnceLock::new(),
            failure: Mutex::new(None),
            settled: tokio::sync::Notify::new(),
            shutting_down: AtomicBool::new(false),
        })
    }

    /// The sandbox, or why there is none yet.
    pub fn sandbox(&self) -> Result<&Sandbox, ToolError> {
        match self.readiness() {
            Readiness::Ready => self.sandbox.get().ok_or_else(|| ToolError::NotReady("no sandbox".into())),
            Readiness::Preparing => Err(ToolError::NotReady(
                "toolhost is still preparing its Python runtime (the first start downloads and compiles it, \
                 about 2 minutes); retry shortly"
                    .into(),
            )),
            Readiness::Failed(why) => {
                Err(ToolError::NotReady(format!("the Python runtime could not be prepared: {why}")))
            }
        }
    }

    /// The sandbox, waiting up to a minute while the runtime is still being prepared (a warm
    /// start takes milliseconds; a first start compiles for minutes and answers "retry").
    pub async fn ready_sandbox(&self) -> Result<&Sandbox, ToolError> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let settled = self.settled.notified();
            if self.readiness() != Readiness::Preparing {
                return self.sandbox();
            }
            if tokio::time::timeout_at(deadline, settled).await.is_err() {
                return self.sandbox();
            }
        }
    }

    pub fn set_sandbox(&self, sandbox: Sandbox) {
        let _ = self.sandbox.set(sandbox);
        self.settled.notify_waiters();
    }

    pub fn set_failed(&self, why: String) {
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        self.settled.notify_waiters();
    }

    pub fn readiness(&self) -> Readiness {
        if self.sandbox.get().is_some() {
            return Readiness::Ready;
        }
        match self.failure.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            Some(why) => Readiness::Failed(why),
            None => Readiness::Preparing,
        }
    }

    /// Calls running or waiting in the sandbox.
    pub fn running_calls(&self) -> usize {
        self.sandbox.get().map_or(0, |sandbox| {
            let stats = sandbox.stats();
            stats.running + stats.waiting
        })
    }

    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// The roots as the sandbox mounts them.
    pub fn roots_for_sandbox(&self) -> Vec<ReadOnlyRoot> {
        self.roots
            .iter()
            .map(|r| ReadOnlyRoot { name: r.name.clone(), host: r.folder.host_path().to_path_buf() })
            .collect()
    }

    pub fn root(&self, name: &str) -> Option<&Root> {
        self.roots.iter().find(|r| r.name == name)
    }
}

fn open_root(setting: &RootSetting) -> Result<Root> {
    let name = &setting.name;
    let valid = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid {
        bail!("resource root name {name:?} must be lowercase letters, digits, '-' or '_'");
    }
    if RESERVED.contains(&name.as_str()) {
        bail!("resource root name {name:?} is reserved (the guest already has /{name})");
    }
    let folder = Workspace::open_read_only(&setting.path)
        .with_context(|| format!("resource root {name}: cannot open {}", setting.path.display()))?;
    Ok(Root { name: name.clone(), folder })
}
