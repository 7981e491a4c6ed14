//! The running service's shared state: the sandbox (once its runtime is ready), the tool
//! registry (rebuilt when the org tools change), the sessions and the read-only resource
//! roots. One `App` serves every transport.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::config::{AppSettings, RootSetting};
use crate::sandbox::{Limits, ReadOnlyRoot, Sandbox};
use crate::sessions::Sessions;
use crate::tools::{Registry, ToolError, org};
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
    registry: RwLock<Arc<Registry>>,
    /// Bumped whenever the tool list changes.
    tools_changed: tokio::sync::watch::Sender<u64>,
    tools_dir: PathBuf,
    code_mode_tools: Option<Vec<String>>,
    code_mode_max_calls: u32,
    /// Reloads the tools when their folder changes, while set.
    tools_watcher: Mutex<Option<org::watch::ToolsWatcher>>,
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
const RESERVED: &[&str] = &["workspace", "tmp", "usr", "dev", "proc", org::TOOL_MOUNT];

impl App {
    /// The service with the built-in tools and the org tools of `settings.tools_dir`.
    pub fn new(settings: &AppSettings, limits: Limits) -> Result<App> {
        let quota = Quota { bytes: limits.workspace_bytes, files: limits.workspace_files };
        let sessions = Sessions::new(&settings.workspaces_dir, quota, settings.workspace_linger)
            .with_context(|| format!("cannot use {} for session workspaces", settings.workspaces_dir.display()))?;
        let roots = settings.roots.iter().map(open_root).collect::<Result<Vec<_>>>()?;
        let app = App {
            registry: RwLock::new(Arc::new(Registry::default())),
            tools_changed: tokio::sync::watch::Sender::new(0),
            tools_dir: settings.tools_dir.clone(),
            code_mode_tools: settings.code_mode_tools.clone(),
            code_mode_max_calls: settings.code_mode_max_calls,
            tools_watcher: Mutex::new(None),
            sessions: Arc::new(sessions),
            roots,
            inline_images: settings.inline_images,
            limits,
            sandbox: OnceLock::new(),
            failure: Mutex::new(None),
            settled: tokio::sync::Notify::new(),
            shutting_down: AtomicBool::new(false),
        };
        app.reload_tools();
        Ok(app)
    }

    /// The tools as they are now.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Loads the org tools again (reporting each folder that does not load), swaps them in and,
    /// when the tool list differs, tells the sessions. Returns whether the list changed.
    pub fn reload_tools(&self) -> bool {
        let root_names: Vec<String> = self.roots.iter().map(|r| r.name.clone()).collect();
        let loaded = org::load_dir(&self.tools_dir, &self.limits, &root_names);
        for problem in &loaded.problems {
            tracing::warn!(file = %problem.path.display(), "skipping a tool: {}", problem.reason);
        }
        for unavailable in &loaded.unavailable {
            tracing::info!(file = %unavailable.path.display(), "not offering a tool: {}", unavailable.reason);
        }
        let org = loaded.tools.into_iter().map(|tool| Arc::new(tool) as Arc<dyn crate::tools::Tool>).collect();
        let registry = Registry::build(&self.limits, org, self.code_mode_tools.as_deref());
        let mut current = self.registry.write().unwrap_or_else(|p| p.into_inner());
        // Swapped even when the list looks the same: a tool's limits, roots or folder may differ.
        let changed = !current.definitions().eq(registry.definitions())
            || current.callable_from_code() != registry.callable_from_code();
        *current = Arc::new(registry);
        drop(current);
        if changed {
            tracing::info!(tools = %self.registry().names().join(", "), "tools loaded");
            self.tools_changed.send_modify(|generation| *generation += 1);
        }
        changed
    }

    /// Reloads the tools whenever something under the tools dir changes, from now on (a missing
    /// tools dir is only logged).
    pub fn watch_tools(self: &Arc<Self>) -> Result<()> {
        let watcher = org::watch::watch(self)?;
        *self.tools_watcher.lock().unwrap_or_else(|p| p.into_inner()) = watcher;
        Ok(())
    }

    /// Wakes when the tool list changes.
    pub fn tool_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.tools_changed.subscribe()
    }

    /// Where the org tools are loaded from.
    pub fn tools_dir(&self) -> &std::path::Path {
        &self.tools_dir
    }

    /// Tool requests one run of guest code may make.
    pub fn code_mode_max_calls(&self) -> u32 {
        self.code_mode_max_calls
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
