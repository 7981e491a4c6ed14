//! The catalog: the tools on offer now (the built-ins and the org tools of the tools dir),
//! swapped whole when the tools dir changes, with a generation number that wakes whoever
//! tells clients about the list. A folder's problem is said once, not at every reload.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Result;
use tokio::sync::watch;

use super::{Registry, Tool, org};
use crate::sandbox::Limits;

pub struct Catalog {
    registry: RwLock<Arc<Registry>>,
    /// Bumped whenever the tool list changes.
    generation: watch::Sender<u64>,
    dir: PathBuf,
    limits: Limits,
    /// The configured resource roots, by name (an org tool may need one).
    root_names: Vec<String>,
    /// The tools code may call, as configured (`None`: the defaults).
    code_mode: Option<Vec<String>>,
    /// Whether code_interpreter keeps Python state (its description says so).
    python_state: bool,
    /// Problems already reported, so that a reload repeats none of them.
    said: Mutex<BTreeSet<String>>,
    /// Reloads the tools when their folder changes, while set.
    watcher: Mutex<Option<org::watch::ToolsWatcher>>,
}

impl Catalog {
    /// The built-in tools and the org tools of `dir`, loaded now.
    pub fn load(
        dir: &Path,
        limits: Limits,
        root_names: Vec<String>,
        code_mode: Option<Vec<String>>,
        python_state: bool,
    ) -> Catalog {
        let catalog = Catalog {
            registry: RwLock::new(Arc::new(Registry::default())),
            generation: watch::Sender::new(0),
            dir: dir.to_path_buf(),
            limits,
            root_names,
            code_mode,
            python_state,
            said: Mutex::new(BTreeSet::new()),
            watcher: Mutex::new(None),
        };
        catalog.reload();
        catalog
    }

    /// The tools as they are now.
    pub fn current(&self) -> Arc<Registry> {
        self.registry.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Where the org tools are loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Wakes when the tool list changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Loads the org tools again (reporting each folder that does not load, once), swaps them
    /// in and, when the tool list differs, bumps the generation. Returns whether it changed.
    pub fn reload(&self) -> bool {
        let loaded = org::load_dir(&self.dir, &self.limits, &self.root_names);
        self.say_new_problems(&loaded);
        let org = loaded.tools.into_iter().map(|tool| Arc::new(tool) as Arc<dyn Tool>).collect();
        let registry = Registry::build(&self.limits, org, self.code_mode.as_deref(), self.python_state);
        let mut current = self.registry.write().unwrap_or_else(|p| p.into_inner());
        // Swapped even when the list looks the same: a tool's limits, roots or folder may differ.
        let changed = !current.definitions().eq(registry.definitions())
            || current.callable_from_code() != registry.callable_from_code();
        *current = Arc::new(registry);
        drop(current);
        if changed {
            tracing::info!(tools = %self.current().names().join(", "), "tools loaded");
            self.generation.send_modify(|generation| *generation += 1);
        }
        changed
    }

    /// Reloads the tools whenever something under the tools dir changes, from now on (a missing
    /// tools dir is only logged).
    pub fn watch(self: &Arc<Self>) -> Result<()> {
        let catalog = Arc::downgrade(self);
        let watcher = org::watch::watch(&self.dir, move || {
            if let Some(catalog) = catalog.upgrade()
                && catalog.reload()
            {
                tracing::info!("the org tools changed; sessions were told");
            }
        })?;
        *self.watcher.lock().unwrap_or_else(|p| p.into_inner()) = watcher;
        Ok(())
    }

    /// Logs each problem not logged before; forgets those that are gone, so that one that
    /// comes back is said again.
    fn say_new_problems(&self, loaded: &org::Loaded) {
        let mut said = self.said.lock().unwrap_or_else(|p| p.into_inner());
        let mut now = BTreeSet::new();
        for problem in &loaded.problems {
            let key = format!("skip {problem}");
            if !said.contains(&key) {
                tracing::warn!(file = %problem.path.display(), "skipping a tool: {}", problem.reason);
            }
            now.insert(key);
        }
        for unavailable in &loaded.unavailable {
            let key = format!("unavailable {unavailable}");
            if !said.contains(&key) {
                tracing::info!(file = %unavailable.path.display(), "not offering a tool: {}", unavailable.reason);
            }
            now.insert(key);
        }
        *said = now;
    }
}
