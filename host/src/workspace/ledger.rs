//! What a folder tree holds against its quota, kept in memory and drawn on before anything
//! grows. The guest's writes (through the WASI layer), the file tools and the org tools all take
//! from the one ledger of a workspace, and from the ledger of a call's `/tmp`, so a quota holds
//! while a call runs: a write past it fails with `ENOSPC` and the folder is never over. A
//! workspace's ledger may have a parent, the principal's, which every take and give passes
//! through too, so one principal's workspaces together stay within its own quota.

use std::sync::{Arc, Mutex};

use super::Quota;

/// A quota refused a change: what it would have come to, and the limit.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{what} (limit {limit})")]
pub struct Refused {
    pub what: String,
    pub limit: String,
}

#[derive(Debug, Default)]
struct Held {
    bytes: u64,
    entries: u64,
    /// Calls and writes under way; the first after an idle spell measures the tree afresh.
    users: usize,
    /// Changes refused so far.
    refused: u64,
}

/// Bytes (file lengths) and entries (files, folders, links at any depth) held, and the quota.
#[derive(Debug)]
pub struct Ledger {
    quota: Quota,
    held: Mutex<Held>,
    /// What this ledger holds is held in the parent as well.
    parent: Option<Arc<Ledger>>,
    /// What a refusal says the bytes are held in, when it is not one folder.
    scope: Option<&'static str>,
}

impl Ledger {
    pub fn new(quota: Quota, bytes: u64, entries: u64) -> Arc<Ledger> {
        Ledger::under(quota, bytes, entries, None)
    }

    /// A ledger whose holdings count in `parent` too (which takes what is already held).
    pub fn under(quota: Quota, bytes: u64, entries: u64, parent: Option<Arc<Ledger>>) -> Arc<Ledger> {
        if let Some(parent) = &parent {
            parent.add(bytes, entries);
        }
        let held = Mutex::new(Held { bytes, entries, ..Held::default() });
        Arc::new(Ledger { quota, held, parent, scope: None })
    }

    /// A principal's ledger: the parent of each of its workspaces', bounding their bytes together.
    pub fn principal(bytes: u64) -> Arc<Ledger> {
        let quota = Quota { bytes, files: u64::MAX };
        Arc::new(Ledger { quota, held: Mutex::default(), parent: None, scope: Some("across all your workspaces") })
    }

    /// Counts what is already there, over the quota or not.
    fn add(&self, bytes: u64, entries: u64) {
        let mut held = self.held();
        held.bytes = held.bytes.saturating_add(bytes);
        held.entries = held.entries.saturating_add(entries);
        drop(held);
        if let Some(parent) = &self.parent {
            parent.add(bytes, entries);
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `bytes` and `entries` when both fit under the quota (and the parent's); else takes
    /// nothing.
    pub fn take(&self, bytes: u64, entries: u64) -> Result<(), Refused> {
        let mut held = self.held();
        let after_bytes = held.bytes.saturating_add(bytes);
        let after_entries = held.entries.saturating_add(entries);
        if bytes > 0 && after_bytes > self.quota.bytes {
            held.refused += 1;
            let scope = self.scope.map(|s| format!(" {s}")).unwrap_or_default();
            return Err(Refused {
                what: format!("{after_bytes} bytes{scope}"),
                limit: format!("{} bytes{scope}", self.quota.bytes),
            });
        }
        if entries > 0 && after_entries > self.quota.files {
            held.refused += 1;
            return Err(Refused {
                what: format!("{after_entries} files and folders"),
                limit: format!("{} files and folders", self.quota.files),
            });
        }
        // Always this ledger's lock, then the parent's: never the other way round.
        if let Some(parent) = &self.parent
            && let Err(refused) = parent.take(bytes, entries)
        {
            held.refused += 1;
            return Err(refused);
        }
        held.bytes = after_bytes;
        held.entries = after_entries;
        Ok(())
    }

    /// Gives back what was taken, or what a removal freed.
    pub fn give(&self, bytes: u64, entries: u64) {
        let mut held = self.held();
        let (bytes, entries) = (bytes.min(held.bytes), entries.min(held.entries));
        held.bytes -= bytes;
        held.entries -= entries;
        drop(held);
        if let Some(parent) = &self.parent {
            parent.give(bytes, entries);
        }
    }

    /// Gives back everything held (the folder is being removed).
    pub fn release(&self) {
        let (bytes, entries) = self.used();
        self.give(bytes, entries);
    }

    /// Bytes and entries held now.
    pub fn used(&self) -> (u64, u64) {
        let held = self.held();
        (held.bytes, held.entries)
    }

    /// Changes refused since the ledger was made (by it or its parent).
    pub fn refusals(&self) -> u64 {
        self.held().refused
    }

    /// Changes the parent refused since it was made (0 without one).
    pub fn parent_refusals(&self) -> u64 {
        self.parent.as_ref().map_or(0, |p| p.refusals())
    }

    /// Starts a use (a call, a write) that lasts as long as the returned guard. When nothing else
    /// is under way, `measured` (a fresh walk of the tree, if the caller has one) replaces what
    /// the ledger holds: overlapping writes to one file are counted high while they run, and the
    /// tree may have changed from outside.
    pub fn enter(self: &Arc<Self>, measured: Option<(u64, u64)>) -> InUse {
        let mut held = self.held();
        let mut change = None;
        if held.users == 0
            && let Some((bytes, entries)) = measured
        {
            change = Some(((held.bytes, held.entries), (bytes, entries)));
            held.bytes = bytes;
            held.entries = entries;
        }
        held.users += 1;
        drop(held);
        if let (Some(parent), Some(((old_bytes, old_entries), (bytes, entries)))) = (&self.parent, change) {
            parent.add(bytes.saturating_sub(old_bytes), entries.saturating_sub(old_entries));
            parent.give(old_bytes.saturating_sub(bytes), old_entries.saturating_sub(entries));
        }
        InUse(self.clone())
    }
}

/// A use of a ledger under way; see [`Ledger::enter`].
#[derive(Debug)]
pub struct InUse(Arc<Ledger>);

impl Drop for InUse {
    fn drop(&mut self) {
        let mut held = self.0.held();
        held.users = held.users.saturating_sub(1);
    }
}

impl wasmtime_wasi::filesystem::Budget for Ledger {
    fn take(&self, bytes: u64, entries: u64) -> bool {
        Ledger::take(self, bytes, entries).is_ok()
    }

    fn give(&self, bytes: u64, entries: u64) {
        Ledger::give(self, bytes, entries);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_only_what_fits_and_counts_refusals() {
        let ledger = Ledger::new(Quota { bytes: 100, files: 2 }, 40, 1);
        ledger.take(60, 1).expect("exactly full");
        assert!(ledger.take(1, 0).is_err() && ledger.take(0, 1).is_err());
        ledger.take(0, 0).expect("nothing always fits");
        assert_eq!((ledger.used(), ledger.refusals()), ((100, 2), 2));
        ledger.give(50, 1);
        ledger.take(50, 1).expect("room again");
    }

    #[test]
    fn a_fresh_measure_applies_only_when_idle() {
        let ledger = Ledger::new(Quota { bytes: 100, files: 10 }, 0, 0);
        let first = ledger.enter(Some((30, 3)));
        assert_eq!(ledger.used(), (30, 3));
        let second = ledger.enter(Some((99, 9)));
        assert_eq!(ledger.used(), (30, 3), "a use under way keeps its takings");
        drop((first, second));
        let _third = ledger.enter(Some((5, 1)));
        assert_eq!(ledger.used(), (5, 1));
    }

    #[test]
    fn a_parent_holds_what_its_children_hold_and_bounds_them_together() {
        let principal = Ledger::principal(100);
        let quota = Quota { bytes: 80, files: 10 };
        let a = Ledger::under(quota, 10, 1, Some(principal.clone()));
        let b = Ledger::under(quota, 0, 0, Some(principal.clone()));
        a.take(50, 1).expect("within both");
        let refused = b.take(50, 1).expect_err("within b's quota, past the principal's");
        assert!(refused.limit.contains("100 bytes across all your workspaces"), "{refused}");
        assert_eq!(b.used(), (0, 0), "a refusal takes nothing from the child either");
        b.take(40, 1).expect("what is left");
        assert_eq!(principal.used(), (100, 3));
        let _use = a.enter(Some((20, 1)));
        assert_eq!(principal.used(), (60, 2), "a fresh measure moves the parent too");
        a.release();
        assert_eq!(principal.used(), (40, 1));
    }
}
