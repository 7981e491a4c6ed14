//! The writer's lock of one workspace, so that calls writing it run one after another: an async
//! mutex for the calls of this process, then an exclusive `flock` on `ws_…/lock` for those of
//! other processes sharing the folder (local filesystems and CephFS lock natively; Linux's NFS
//! client turns it into a whole-file lock on the server). Waiting is bounded: past the timeout
//! the call is refused with a message that says why and what to do.

use std::fs::{File, TryLockError};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, OwnedMutexGuard};

/// Held while a call writes a workspace; dropping it (closing the file) lets the next one in.
#[derive(Debug)]
pub struct Writing {
    _gate: OwnedMutexGuard<()>,
    _file: Option<File>,
}

/// The lock could not be had.
#[derive(Debug, thiserror::Error)]
#[error("the workspace {handle} {reason}")]
pub struct Busy {
    handle: String,
    reason: String,
}

/// Longest pause between two tries of another process's lock.
const MAX_PAUSE: Duration = Duration::from_millis(200);

/// Waits for the workspace `handle` (its lock file at `path`; none for a folder outside the
/// store) until `timeout` has passed.
pub async fn acquire(
    handle: &str,
    gate: &Arc<Mutex<()>>,
    path: Option<&Path>,
    timeout: Duration,
) -> Result<Writing, Busy> {
    let busy = |reason: String| Busy { handle: handle.to_string(), reason };
    let waited = |started: Instant| {
        busy(format!(
            "is busy: another call has been writing it for {}s (--workspace-lock-timeout); retry when it is done",
            started.elapsed().as_secs()
        ))
    };
    let started = Instant::now();
    let gate = tokio::time::timeout(timeout, gate.clone().lock_owned()).await.map_err(|_| waited(started))?;
    let Some(path) = path else { return Ok(Writing { _gate: gate, _file: None }) };
    let file = File::options()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| busy(format!("cannot be locked ({}: {e}); it may have expired", path.display())))?;
    let mut pause = Duration::from_millis(2);
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) if started.elapsed() < timeout => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
            Err(TryLockError::WouldBlock) => return Err(waited(started)),
            Err(TryLockError::Error(e)) => return Err(busy(format!("cannot be locked ({}: {e})", path.display()))),
        }
    }
    // Expiry removes a workspace only under this lock: if it went while we waited, say so.
    if !path.exists() {
        return Err(busy("expired while this call waited for it; omit `workspace` to start a new one".into()));
    }
    Ok(Writing { _gate: gate, _file: Some(file) })
}

/// An exclusive lock on `path` (made if missing), held until the file is dropped; blocks.
pub fn exclusive(path: &Path) -> std::io::Result<File> {
    let file = File::options().create(true).truncate(false).write(true).open(path)?;
    file.lock()?;
    Ok(file)
}

/// The lock on `path` if no one holds it now; `None` if someone does or it is gone.
pub fn try_exclusive(path: &Path) -> Option<File> {
    let file = File::options().write(true).open(path).ok()?;
    file.try_lock().ok()?;
    Some(file)
}
