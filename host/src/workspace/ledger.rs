//! What a folder tree holds against its quota, kept in memory and drawn on before anything
//! grows. The guest's writes (through the WASI layer), the file tools and the org tools all take
//! from the one ledger of a workspace, and from the ledger of a call's `/tmp`, so a quota holds
//! while a call runs: a write past it fails with `ENOSPC` and the folder is never over.

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
}

impl Ledger {
    pub fn new(quota: Quota, bytes: u64, entries: u64) -> Arc<Ledger> {
        Arc::new(Ledger { quota, held: Mutex::new(Held { bytes, entries, ..Held::default() }) })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `bytes` and `entries` when both fit under the quota; else takes nothing.
    pub fn take(&self, bytes: u64, entries: u64) -> Result<(), Refused> {
        let mut held = self.held();
        let after_bytes = held.bytes.saturating_add(bytes);
        let after_entries = held.entries.saturating_add(entries);
        if bytes > 0 && after_bytes > self.quota.bytes {
            held.refused += 1;
            return Err(Refused {
                what: format!("{after_bytes} bytes"),
                limit: format!("{} bytes", self.quota.bytes),
            });
        }
        if entries > 0 && after_entries > self.quota.files {
            held.refused += 1;
            return Err(Refused {
                what: format!("{after_entries} files and folders"),
                limit: format!("{} files and folders", self.quota.files),
            });
        }
        held.bytes = after_bytes;
        held.entries = after_entries;
        Ok(())
    }

    /// Gives back what was taken, or what a removal freed.
    pub fn give(&self, bytes: u64, entries: u64) {
        let mut held = self.held();
        held.bytes = held.bytes.saturating_sub(bytes);
        held.entries = held.entries.saturating_sub(entries);
    }

    /// Bytes and entries held now.
    pub fn used(&self) -> (u64, u64) {
        let held = self.held();
        (held.bytes, held.entries)
    }

    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// Changes refused since the ledger was made.
    pub fn refusals(&self) -> u64 {
        self.held().refused
    }

    /// Starts a use (a call, a write) that lasts as long as the returned guard. When nothing else
    /// is under way, `measured` (a fresh walk of the tree, if the caller has one) replaces what
    /// the ledger holds: overlapping writes to one file are counted high while they run, and the
    /// tree may have changed from outside.
    pub fn enter(self: &Arc<Self>, measured: Option<(u64, u64)>) -> InUse {
        let mut held = self.held();
        if held.users == 0
            && let Some((bytes, entries)) = measured
        {
            held.bytes = bytes;
            held.entries = entries;
        }
        held.users += 1;
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
}
