//! Hot reload: watches the tools dir and reloads the tools a quarter second after the last
//! change under it (add, edit, remove), so an editor's burst of writes reloads once.

use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::{Context, Result};
use notify_debouncer_mini::notify::{RecommendedWatcher, RecursiveMode};
use notify_debouncer_mini::{DebounceEventResult, Debouncer, new_debouncer};

use crate::app::App;

/// How long the folder must be quiet before a reload.
const QUIET: Duration = Duration::from_millis(250);

/// Watching stops when this is dropped.
pub struct ToolsWatcher {
    _debouncer: Debouncer<RecommendedWatcher>,
}

/// Starts watching the app's tools dir; `None` when there is no such folder.
pub fn watch(app: &Arc<App>) -> Result<Option<ToolsWatcher>> {
    let dir = app.tools_dir().to_path_buf();
    if !dir.is_dir() {
        tracing::info!(dir = %dir.display(), "no org tools: create this folder (one subfolder per tool) and restart");
        return Ok(None);
    }
    let app: Weak<App> = Arc::downgrade(app);
    let mut debouncer = new_debouncer(QUIET, move |events: DebounceEventResult| {
        let Some(app) = app.upgrade() else { return };
        match events {
            Ok(_) => {
                if app.reload_tools() {
                    tracing::info!("the org tools changed; sessions were told");
                }
            }
            Err(e) => tracing::warn!("watching the tools dir failed: {e}"),
        }
    })
    .context("cannot watch the tools dir")?;
    debouncer
        .watcher()
        .watch(&dir, RecursiveMode::Recursive)
        .with_context(|| format!("cannot watch {}", dir.display()))?;
    tracing::info!(dir = %dir.display(), "watching the org tools for changes");
    Ok(Some(ToolsWatcher { _debouncer: debouncer }))
}
