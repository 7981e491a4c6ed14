//! The running service: its parts wired together (the tool services with the sandbox's
//! readiness and the catalog, the sessions over the workspace store, the read-only resource
//! roots). Each part owns its own state; `App` only holds them. One `App` serves every transport.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};

use crate::config::{AppSettings, RootSetting};
use crate::sandbox::{Limits, ReadOnlyRoot};
use crate::sessions::Sessions;
use crate::tools::{Catalog, Services, org};
use crate::workspace::{Quota, Workspace};
use crate::workspaces::{self, Workspaces};

/// A configured read-only folder: listed and readable as `file:///<name>/...`, mounted in the
/// sandbox at `/<name>`.
pub struct Root {
    pub name: String,
    pub folder: Workspace,
}

/// Plain wiring: each part owns its own state.
pub struct App {
    /// What tool calls use: the sandbox's readiness, the roots as mounted, the tool catalog.
    pub services: Arc<Services>,
    pub sessions: Arc<Sessions>,
    /// The roots as resources.
    pub roots: Vec<Root>,
    /// Image content for every client (`--inline-images`), not only those asking with
    /// `?images=inline`.
    pub inline_images: bool,
    shutting_down: AtomicBool,
}

/// Guest paths a root may not take.
const RESERVED: &[&str] = &["workspace", "workspaces", "tmp", "usr", "dev", "proc", org::TOOL_MOUNT];

impl App {
    /// The service with the built-in tools and the org tools of `settings.tools_dir`; its
    /// sandbox is set on `services.sandbox` once prepared.
    pub fn new(settings: &AppSettings, limits: Limits) -> Result<App> {
        let store = workspaces::Settings {
            root: settings.workspaces_dir.clone(),
            quota: Quota { bytes: limits.workspace_bytes, files: limits.workspace_files },
            principal_bytes: limits.principal_disk_bytes,
            ttl: settings.workspace_ttl,
            max_per_principal: settings.max_workspaces_per_principal,
            lock_timeout: settings.workspace_lock_timeout,
            python_state: settings.python_state,
        };
        let workspaces = Workspaces::new(store)
            .with_context(|| format!("cannot use {} for workspaces", settings.workspaces_dir.display()))?;
        let sessions = Sessions::new(Arc::new(workspaces));
        let roots = settings.roots.iter().map(open_root).collect::<Result<Vec<_>>>()?;
        let root_names = roots.iter().map(|r| r.name.clone()).collect();
        let catalog = Catalog::load(
            &settings.tools_dir,
            limits,
            root_names,
            settings.code_mode_tools.clone(),
            settings.python_state.is_some(),
        );
        let services = Services {
            sandbox: Default::default(),
            roots: roots
                .iter()
                .map(|r| ReadOnlyRoot { name: r.name.clone(), host: r.folder.host_path().to_path_buf() })
                .collect(),
            catalog: Arc::new(catalog),
            code_mode_max_calls: settings.code_mode_max_calls,
        };
        Ok(App {
            services: Arc::new(services),
            sessions: Arc::new(sessions),
            roots,
            inline_images: settings.inline_images,
            shutting_down: AtomicBool::new(false),
        })
    }

    /// The tool catalog.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.services.catalog
    }

    /// Calls running or waiting in the sandbox.
    pub fn running_calls(&self) -> usize {
        self.services.sandbox.get().map_or(0, |sandbox| {
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
