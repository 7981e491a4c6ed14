//! Hot reload: watches the tools dir and calls back a quarter second after the last real change
//! under it (a file or folder created, written, removed or renamed), so an editor's burst of
//! writes reloads once, and reading the folders (as every reload does) never wakes it.

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use anyhow::{Context, Result};
use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};

/// How long the folder must be quiet before a reload.
const QUIET: Duration = Duration::from_millis(250);

/// Watching stops when this is dropped (and with it the thread that waits for quiet).
pub struct ToolsWatcher {
    _watcher: RecommendedWatcher,
}

/// Starts watching `dir`, calling `on_change` once per burst of changes; `None` when there is
/// no such folder.
pub fn watch(dir: &Path, on_change: impl Fn() + Send + 'static) -> Result<Option<ToolsWatcher>> {
    if !dir.is_dir() {
        tracing::info!(dir = %dir.display(), "no org tools: create this folder (one subfolder per tool) and restart");
        return Ok(None);
    }
    let (changed, changes) = mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<Event>| match event {
        Ok(event) if is_change(&event.kind) => {
            let _ = changed.send(());
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("watching the tools dir failed: {e}"),
    })
    .context("cannot watch the tools dir")?;
    watcher.watch(dir, RecursiveMode::Recursive).with_context(|| format!("cannot watch {}", dir.display()))?;
    std::thread::Builder::new()
        .name("toolhost-tools-watch".into())
        .spawn(move || {
            // Ends when the watcher, and with it the sender, is dropped.
            while changes.recv().is_ok() {
                loop {
                    match changes.recv_timeout(QUIET) {
                        Ok(()) => continue,
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
                on_change();
            }
        })
        .context("cannot start the tools watcher's thread")?;
    tracing::info!(dir = %dir.display(), "watching the org tools for changes");
    Ok(Some(ToolsWatcher { _watcher: watcher }))
}

/// A change that can alter a tool: not an open, a read or a metadata update.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) => true,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Modify(_) => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Any | EventKind::Other => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, mpsc};

    #[test]
    fn reading_the_folder_never_reloads_and_a_write_reloads_once() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::create_dir(dir.path().join("tool")).expect("mkdir");
        std::fs::write(dir.path().join("tool/tool.toml"), "name = 'x'").expect("write");
        let count = Arc::new(AtomicUsize::new(0));
        let (reloaded, reloads) = mpsc::channel();
        let counter = count.clone();
        let _watcher = watch(dir.path(), move || {
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = reloaded.send(());
        })
        .expect("watch")
        .expect("the folder exists");
        std::fs::write(dir.path().join("tool/main.py"), "print(1)").expect("write");
        reloads.recv_timeout(Duration::from_secs(10)).expect("a write reloads");
        // What a reload does, reading every file and folder, must not wake the watcher again.
        for _ in 0..20 {
            std::fs::read_to_string(dir.path().join("tool/tool.toml")).expect("read");
            std::fs::read_dir(dir.path().join("tool")).expect("list").for_each(drop);
        }
        assert!(reloads.recv_timeout(QUIET * 4).is_err(), "reading the folder reloaded the tools");
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }
}
