//! Expiry: removes the workspaces unused for longer than the TTL (an empty one after an hour:
//! a session-less client that never passes a handle back leaves one per call), safely beside
//! other processes sharing the folder. A workspace goes only when its last-use stamp is old, this process is
//! not using it, and no call anywhere holds its writer's lock; it is renamed away (atomic, so
//! exactly one process removes it), leaves a tombstone so its handle reads "expired" rather
//! than "unknown", and leaves its principal's count.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::{EXPIRED, PRINCIPALS, Shared, TRASH, lock, parse, principal_key};
use crate::principal::Principal;

/// Removes what has expired; returns how many workspaces went.
pub(super) fn sweep(shared: &Shared) -> usize {
    let root = &shared.settings.root;
    let ttl = shared.settings.ttl;
    let now = SystemTime::now();
    let mut removed = 0;
    for entry in fs::read_dir(root).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let home = entry.path();
        if let Some(handle) = parse(&name) {
            if remove_if_unused(shared, handle, &home, now) {
                removed += 1;
            }
        } else if is_legacy_session(&name) && age(&home, now) > ttl {
            // A session folder of a version before handles: no one can name it any more.
            let _ = fs::remove_dir_all(&home);
        }
    }
    for entry in fs::read_dir(root.join(EXPIRED)).into_iter().flatten().flatten() {
        if age(&entry.path(), now) > ttl {
            let _ = fs::remove_file(entry.path());
        }
    }
    // What a process stopped while removing left behind.
    for entry in fs::read_dir(root.join(TRASH)).into_iter().flatten().flatten() {
        if age(&entry.path(), now) > Duration::from_secs(3600) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    removed
}

/// How long an empty workspace is kept unused.
const EMPTY_TTL: Duration = Duration::from_secs(3600);

fn remove_if_unused(shared: &Shared, handle: &str, home: &Path, now: SystemTime) -> bool {
    let root = &shared.settings.root;
    let ttl = || if is_empty(&home.join("files")) { shared.settings.ttl.min(EMPTY_TTL) } else { shared.settings.ttl };
    if last_use(home, now) <= ttl() {
        return false;
    }
    if super::held(&shared.open).get(handle).is_some_and(|space| space.strong_count() > 0) {
        return false;
    }
    let Some(_writer) = lock::try_exclusive(&home.join("lock")) else { return false };
    // Used since the first look (under the lock, no call can be writing it now).
    if last_use(home, now) <= ttl() {
        return false;
    }
    let owner = fs::read_to_string(home.join("owner")).ok().map(Principal::from_record);
    let trash = root.join(TRASH).join(format!("{handle}.{}", uuid::Uuid::new_v4().simple()));
    if fs::rename(home, &trash).is_err() {
        return false; // another process took it first
    }
    let _ = fs::File::create(root.join(EXPIRED).join(handle));
    if let Some(owner) = owner {
        let _ = fs::remove_file(root.join(PRINCIPALS).join(principal_key(&owner)).join(handle));
    }
    if let Some(ledger) = super::held(&shared.dormant).remove(handle) {
        ledger.release();
    }
    if let Err(e) = fs::remove_dir_all(&trash) {
        tracing::warn!("cannot remove the expired workspace {}: {e}", trash.display());
    }
    tracing::debug!(workspace = %handle, "workspace expired");
    true
}

fn is_empty(folder: &Path) -> bool {
    fs::read_dir(folder).map(|mut entries| entries.next().is_none()).unwrap_or(false)
}

/// How long ago the workspace at `home` was used: its stamp, else (being made now) the folder.
fn last_use(home: &Path, now: SystemTime) -> Duration {
    let stamp = home.join("used");
    if stamp.exists() { age(&stamp, now) } else { age(home, now) }
}

fn age(path: &Path, now: SystemTime) -> Duration {
    fs::symlink_metadata(path)
        .and_then(|meta| meta.modified())
        .map_or(Duration::ZERO, |modified| now.duration_since(modified).unwrap_or_default())
}

/// A session folder as versions before handles named it: 32 hex digits.
fn is_legacy_session(name: &str) -> bool {
    name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit())
}
