//! A workspace's Python state: the guest's linear memory where it differs from the runtime's
//! snapshot. Every call still runs in a fresh instance; before its code runs, the workspace's
//! saved pages are written into that instance's memory, and after a call that ends at rest
//! (`ok`, or a Python exception) the pages it changed are saved as a new layer
//! (`state/disk.rs`). A call that times out, runs out of memory or fuel, traps or exits leaves
//! the saved state as it was.
//!
//! Only memory is kept: the snapshot's one mutable global, the shadow-stack pointer, is back at
//! its resting value whenever a turn has returned, and the function table never changes. The
//! shadow stack below that pointer is dead between turns and never saved. What refers to the
//! host is renewed in every call: the preopen table (reset after a restore), the descriptors
//! (a fresh WASI context; files the code leaves open are closed at the end of the call), and
//! what the prelude's `begin` renews (environment, argv, cwd, random generators).

mod disk;
mod heap;
mod recent;

pub use recent::Recent;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use wasmtime::{Memory, Store};

use super::dirty::{Restored, Tracker};
use super::pagemap::{self, PAGE};
use disk::{Layer, Manifest};

/// A call's use of its workspace's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PythonState {
    /// Where the state lives: the workspace's own folder beside its files, out of the guest's reach.
    pub dir: PathBuf,
    /// The most the saved state may take on disk.
    pub budget_bytes: u64,
    /// Start from the clean snapshot; this call's state replaces the saved one.
    pub fresh: bool,
}

/// What a call did with the state: `code_interpreter`'s `structuredContent.state`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateReport {
    /// The call started from the workspace's saved state (not from the clean snapshot).
    pub restored: bool,
    /// The state after the call was saved; the next call starts from it.
    pub saved: bool,
    /// What the workspace's saved state takes on disk now.
    pub bytes: u64,
    /// Why a saved state was not used or not saved, when that happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The pages changed since the base may outweigh it this many times before the state is
/// rewritten as one layer.
const COMPACT_RATIO: u64 = 2;
/// The most deltas after the base; a restore from disk reads each.
const DELTAS: usize = 4;

/// What states of one runtime are relative to: its snapshot's memory image.
#[derive(Debug)]
pub struct Baseline {
    /// Names the snapshot: a state saved against another is not used.
    id: String,
    /// The hash of every page of the image.
    image: Vec<u128>,
    /// Pages below the resting shadow-stack pointer: dead between turns.
    stack_pages: usize,
    /// Where the guest's allocator keeps its state, if found: its free pages are not saved.
    allocator: Option<heap::Allocator>,
}

impl Baseline {
    /// From a fresh instance's memory, whose resting shadow-stack pointer is `stack_top`.
    pub fn new(id: String, image: &[u8], stack_top: u32) -> Baseline {
        let image_hashes = image.chunks_exact(PAGE).map(hash).collect();
        // About 35 ms for CPython's 100 MB, once per runtime and process.
        let allocator = heap::Allocator::find(image);
        match allocator {
            Some(allocator) => tracing::debug!(?allocator, "found the guest's allocator"),
            None => tracing::debug!("the guest's allocator was not found in the snapshot: states keep its free pages"),
        }
        Baseline { id, image: image_hashes, stack_pages: stack_top as usize / PAGE, allocator }
    }

    fn image_hash(&self, page: usize) -> u128 {
        self.image.get(page).copied().unwrap_or_else(|| hash(&[0u8; PAGE]))
    }
}

fn hash(page: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(page)
}

/// A state of at least this many pages is write-protected again once restored, so that its
/// save hashes only what the call wrote (protecting costs 0.3–0.9 ms; hashing 64 MB, 17).
const REPROTECT_PAGES: usize = 1024;

/// How a restore went.
pub(super) enum Restore {
    /// The saved state is in the instance; a large one comes with the guard that must live in
    /// the store's data (`Tracker::reprotect`).
    Restored(Option<Restored>),
    /// The instance is untouched: nothing saved, not wanted, or not usable (the report says why).
    Fresh,
    /// The saved state was found damaged after part of it was written: start again in a new
    /// instance (the report says why).
    Spoiled,
}

/// One call's work on its workspace's state: restored before the code runs, saved after.
pub(super) struct Keeper {
    request: PythonState,
    baseline: Arc<Baseline>,
    /// Shared with the caller, who reads it even when the call is stopped mid-way.
    report: Arc<Mutex<StateReport>>,
    /// The saved state as found, if readable: what a save builds on, or replaces.
    found: Option<Manifest>,
    /// Whether `found` is in the instance.
    restored: bool,
    /// The states this process saved last, in memory.
    recent: Arc<Recent>,
    /// What tells the pages the instance writes, when its memory is write-protected (`dirty`).
    tracker: Option<Arc<Tracker>>,
}

impl Keeper {
    pub fn new(
        request: PythonState,
        baseline: Arc<Baseline>,
        report: Arc<Mutex<StateReport>>,
        recent: Arc<Recent>,
    ) -> Keeper {
        Keeper { request, baseline, report, found: None, restored: false, recent, tracker: None }
    }

    /// The instance about to be restored into has its memory write-protected by `tracker`.
    pub fn track(&mut self, tracker: Option<Arc<Tracker>>) {
        self.tracker = tracker;
    }

    fn report(&self) -> std::sync::MutexGuard<'_, StateReport> {
        self.report.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn note(&self, note: String) {
        self.report().note = Some(note);
    }

    /// Writes the saved state into a fresh instance's `memory`, unless there is none, the call
    /// asked for a fresh start, or it cannot be used (then says why). `max_memory` is the call's
    /// memory limit.
    pub fn restore<T>(&mut self, store: &mut Store<T>, memory: Memory, max_memory: u64) -> Restore {
        let started = Instant::now();
        let found = match Manifest::read(&self.request.dir) {
            Ok(found) => found,
            Err(e) => {
                self.note(format!("the saved Python state cannot be used ({e}); this call started fresh"));
                return Restore::Fresh;
            }
        };
        let Some(manifest) = found else { return Restore::Fresh };
        let bytes = manifest.bytes();
        self.report().bytes = bytes;
        self.found = Some(manifest);
        let Some(manifest) = self.found.as_ref().filter(|_| !self.request.fresh) else { return Restore::Fresh };
        let current = memory.data_size(&*store) as u64;
        let refused = refusal(manifest, &self.baseline.id, self.request.budget_bytes, max_memory, current);
        if let Some(why) = refused {
            self.note(format!("the saved Python state was dropped: {why}; this call started fresh"));
            self.found = None;
            return Restore::Fresh;
        }
        let grow = (manifest.memory_bytes - current) / wasmtime_page();
        if grow > 0 && memory.grow(&mut *store, grow).is_err() {
            self.note(
                "the saved Python state was dropped: its memory could not be grown; this call started fresh".into(),
            );
            self.found = None;
            return Restore::Fresh;
        }
        let data = memory.data_mut(&mut *store);
        let dir = &self.request.dir;
        let large = manifest.pages.len() >= REPROTECT_PAGES;
        if large && let Some(grown) = data.get_mut(current as usize..) {
            pagemap::huge(grown);
        }
        // Every page of the state is about to be written: lifting their protection in runs costs
        // less than a fault per page. (Populating them first, as `prefault` does, costs more
        // than it saves: the pages are copied from the image only to be overwritten.) Memory
        // grown for the state was never protected.
        let below = (current as usize / PAGE) as u32;
        if let Some(tracker) = &self.tracker
            && let Err(e) = tracker.unprotect(data, manifest.pages.keys().copied().take_while(|&page| page < below))
        {
            tracing::debug!("cannot lift the write-protection of a state's pages ({e}); they fault instead");
        }
        let kept = self.recent.get(dir, manifest.fingerprint());
        // Pages this process saved are trusted as they are; pages read from disk are checked.
        if !kept.is_some_and(|pages| pages.write_into(data)) {
            let applied = manifest.layers.iter().try_for_each(|layer| disk::apply_layer(dir, layer.id, data));
            let checked = applied.map_err(|e| e.to_string()).and_then(|()| {
                let bad = manifest.pages.iter().find(|&(&page, &expected)| {
                    let start = page as usize * PAGE;
                    data.get(start..start + PAGE).is_none_or(|content| hash(content) != expected)
                });
                bad.map_or(Ok(()), |(page, _)| Err(format!("page {page} does not match its hash")))
            });
            if let Err(why) = checked {
                self.recent.forget(dir);
                self.note(format!(
                    "the saved Python state is damaged ({why}) and was dropped; this call started fresh"
                ));
                self.found = None;
                return Restore::Spoiled;
            }
        }
        let mut guard = None;
        if let Some(tracker) = self.tracker.as_ref().filter(|_| large) {
            let (restored, protected) = tracker.reprotect(data, manifest.pages.keys().copied());
            guard = Some(restored);
            if let Err(e) = protected {
                tracing::debug!(
                    "cannot write-protect a restored state ({e}); its written pages are found by comparing"
                );
                self.tracker = None;
            }
        }
        tracing::debug!(
            pages = manifest.pages.len(),
            bytes,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "state restored"
        );
        self.restored = true;
        self.report().restored = true;
        Restore::Restored(guard)
    }

    /// Saves the instance's state after a call that ended at rest: the pages that changed
    /// since the state it started from, as a new layer, or the whole state as one layer when
    /// the layers have grown past it. Over the budget, nothing is saved and the state from
    /// before the call stays.
    pub fn save<T>(self, store: &Store<T>, memory: Memory) {
        let started = Instant::now();
        let data = memory.data(store);
        let written_pages = self.tracker.as_ref().and_then(|tracker| match tracker.written(data) {
            Ok(pages) => Some(pages),
            Err(e) => {
                tracing::debug!("cannot list the pages a call wrote ({e}); they are found by comparing");
                None
            }
        });
        let base = if self.restored { self.found.as_ref() } else { None };
        // Pages inside the allocator's free chunks hold nothing to keep: they are left out.
        let free = self.baseline.allocator.map(|allocator| allocator.free_pages(data)).unwrap_or_default();
        let mut pages = base.map(|m| m.pages.clone()).unwrap_or_default();
        pages.retain(|&page, _| !heap::contains(&free, page));
        let changed = self.changed_pages(data, &mut pages, written_pages, &free);
        let next_layer = self.found.as_ref().map_or(1, |m| m.next_layer);
        let mut manifest = Manifest::new(&self.baseline.id, data.len() as u64, next_layer);
        manifest.pages = pages;
        let base_layer = base.and_then(|m| m.layers.first().copied());
        if base.is_some_and(|m| changed.is_empty() && m.memory_bytes == data.len() as u64) {
            // Nothing changed: the saved state is this one.
            self.report().saved = true;
            return;
        }
        let mut written_layers = Vec::new();
        let result = std::fs::create_dir_all(&self.request.dir).and_then(|()| {
            // A state is a base and at most DELTAS deltas after it. A save appends the pages it
            // changed as a delta; once there are DELTAS, it replaces them all with one holding
            // every page changed since the base. A call changes much the same pages as the one
            // before (reference counts, the allocator, the interpreter), so that merged delta
            // stays near one call's changes, and the base is rewritten only when the pages
            // changed since it outweigh it.
            let mut deltas = base.map(|m| m.deltas.clone()).unwrap_or_default();
            deltas.retain(|page| manifest.pages.contains_key(page));
            deltas.extend(changed.iter().copied());
            let delta_bytes = (deltas.len() * PAGE) as u64;
            let layers = base.map(|m| m.layers.as_slice()).unwrap_or_default();
            if let Some(base_layer) = base_layer.filter(|base| delta_bytes <= COMPACT_RATIO * base.bytes) {
                manifest.deltas = deltas;
                let merged: Vec<u32>;
                let pages = if layers.len() <= DELTAS {
                    manifest.layers = layers.to_vec();
                    &changed
                } else {
                    manifest.layers = vec![base_layer];
                    merged = manifest.deltas.iter().copied().collect();
                    &merged
                };
                // Deltas are stored as they are: compressing costs more than writing the pages
                // (LZ4 gains about a third on CPython's heap); the base is compressed.
                self.append(&mut manifest, data, pages, false, &mut written_layers)?;
                if manifest.bytes() <= self.request.budget_bytes {
                    return Ok(true);
                }
            }
            // Rewrite as one layer: every page that still differs from the image.
            manifest.pages.retain(|&page, hash| *hash != self.baseline.image_hash(page as usize));
            manifest.layers.clear();
            manifest.deltas.clear();
            let all: Vec<u32> = manifest.pages.keys().copied().collect();
            self.append(&mut manifest, data, &all, true, &mut written_layers)?;
            Ok(manifest.bytes() <= self.request.budget_bytes)
        });
        let mut report = self.report();
        match result {
            Ok(true) => match manifest.commit(&self.request.dir) {
                Ok(()) => {
                    report.saved = true;
                    report.bytes = manifest.bytes();
                    let pages = manifest.pages.keys().copied().collect();
                    let fingerprint = manifest.fingerprint();
                    self.recent.put(
                        &self.request.dir,
                        fingerprint,
                        pages,
                        data,
                        base.map(Manifest::fingerprint),
                        &changed,
                    );
                }
                Err(e) => report.note = Some(format!("the Python state could not be saved ({e})")),
            },
            Ok(false) => {
                report.note = Some(format!(
                    "the Python state after this call takes {} MiB, over the {} MiB budget (--state-mb), so it was \
                     not saved: the workspace keeps the state it had before this call; delete large objects (del \
                     name) before the call ends, or start over with fresh=true",
                    manifest.bytes().div_ceil(1 << 20),
                    self.request.budget_bytes >> 20
                ));
            }
            Err(e) => report.note = Some(format!("the Python state could not be saved ({e})")),
        }
        if !report.saved {
            // The layers written for a save that did not commit.
            for id in written_layers {
                let _ = std::fs::remove_file(self.request.dir.join(format!("layer-{id}")));
            }
        }
        tracing::debug!(
            changed = changed.len(),
            free = free.iter().map(|pages| pages.len()).sum::<usize>(),
            layers = manifest.layers.len(),
            bytes = report.bytes,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "state saved"
        );
    }

    /// Writes `pages` of `data` as the manifest's next layer, compressed if `compress`.
    fn append(
        &self,
        manifest: &mut Manifest,
        data: &[u8],
        pages: &[u32],
        compress: bool,
        written: &mut Vec<u64>,
    ) -> std::io::Result<()> {
        let id = manifest.next_layer;
        written.push(id);
        let bytes = disk::write_layer(&self.request.dir, id, data, pages, compress)?;
        manifest.layers.push(Layer { id, bytes });
        manifest.next_layer = id + 1;
        Ok(())
    }

    /// The pages of `data` that differ from what `pages` (or else the image) says they hold,
    /// sorted; `pages` is updated to their new hashes. Only `written` pages can have changed: a
    /// page not written since the memory was protected holds the image, or, for a large state
    /// protected again after its restore, what `pages` says. Without `written`, the private pages (pagemap) are looked at, and
    /// where that cannot be read, every page. Pages in the allocator's `free` ranges are not.
    fn changed_pages(
        &self,
        data: &[u8],
        pages: &mut std::collections::BTreeMap<u32, u128>,
        written: Option<Vec<u32>>,
        free: &[std::ops::Range<u32>],
    ) -> Vec<u32> {
        let count = data.len() / PAGE;
        let candidates = written.unwrap_or_else(|| match pagemap::entries(data.as_ptr(), data.len()) {
            Ok(entries) => (0..count as u32).filter(|&page| entries[page as usize].private()).collect(),
            Err(_) => (0..count as u32).collect(),
        });
        let mut changed = Vec::new();
        let kept = |&page: &u32| page as usize >= self.baseline.stack_pages && !heap::contains(free, page);
        for page in candidates.into_iter().filter(kept) {
            let Some(content) = data.get(page as usize * PAGE..(page as usize + 1) * PAGE) else { continue };
            let content = hash(content);
            let before = pages.get(&page).copied().unwrap_or_else(|| self.baseline.image_hash(page as usize));
            if content != before {
                pages.insert(page, content);
                changed.push(page);
            }
        }
        changed
    }
}

/// Why a saved state (`manifest`, taking `bytes`) cannot be restored into an instance of the
/// runtime `runtime` whose memory is `current` bytes, under a state budget and a memory limit.
fn refusal(manifest: &Manifest, runtime: &str, budget: u64, max_memory: u64, current: u64) -> Option<String> {
    let bytes = manifest.bytes();
    if manifest.runtime != runtime {
        Some("the runtime was upgraded since it was saved".to_string())
    } else if bytes > budget {
        Some(format!("it takes {} MiB, over the {} MiB budget (--state-mb)", bytes.div_ceil(1 << 20), budget >> 20))
    } else if manifest.memory_bytes > max_memory {
        Some(format!(
            "it needs {} MiB of memory, more than this call's {} MiB",
            manifest.memory_bytes >> 20,
            max_memory >> 20
        ))
    } else if manifest.memory_bytes < current || !manifest.memory_bytes.is_multiple_of(wasmtime_page()) {
        Some("its memory size does not fit the runtime".to_string())
    } else {
        None
    }
}

/// A wasm page.
fn wasmtime_page() -> u64 {
    64 << 10
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_of_another_runtime_or_over_a_limit_is_not_restored() {
        let mut manifest = Manifest::new("snapshot-a", 200 << 20, 1);
        manifest.pages.insert(10, 1);
        let fits = |m: &Manifest| refusal(m, "snapshot-a", 64 << 20, 1 << 30, 100 << 20);
        assert_eq!(fits(&manifest), None);
        let upgraded = refusal(&manifest, "snapshot-b", 64 << 20, 1 << 30, 100 << 20);
        assert!(upgraded.is_some_and(|why| why.contains("upgraded")));
        let over_budget = refusal(&manifest, "snapshot-a", 0, 1 << 30, 100 << 20);
        assert!(over_budget.is_some_and(|why| why.contains("--state-mb")));
        let over_memory = refusal(&manifest, "snapshot-a", 64 << 20, 128 << 20, 100 << 20);
        assert!(over_memory.is_some_and(|why| why.contains("more than this call's 128 MiB")));
        let smaller = refusal(&manifest, "snapshot-a", 64 << 20, 1 << 30, 300 << 20);
        assert!(smaller.is_some_and(|why| why.contains("does not fit")));
    }

    #[test]
    fn changed_pages_are_those_written_or_private_that_differ_from_before() {
        let image = vec![0u8; 8 * PAGE];
        let baseline = Arc::new(Baseline::new("id".into(), &image, PAGE as u32));
        let request = PythonState { dir: PathBuf::from("/nonexistent"), budget_bytes: 1 << 20, fresh: false };
        let keeper = Keeper::new(request, baseline, Arc::default(), Arc::default());
        let mut data = image.clone();
        for page in [0, 3, 5] {
            data[page * PAGE + 7] = 1;
        }
        // Told by the kernel: the pages written (4 was written back to what it held), the
        // shadow stack's page left out.
        let mut pages = std::collections::BTreeMap::new();
        assert_eq!(keeper.changed_pages(&data, &mut pages, Some(vec![0, 3, 4, 5]), &[]), vec![3, 5]);
        assert_eq!(pages.keys().copied().collect::<Vec<_>>(), vec![3, 5]);
        // Found by comparing (every page of this heap buffer is private), against the saved
        // state's hashes: page 3 is as saved, 5 changed since.
        data[5 * PAGE + 8] = 2;
        assert_eq!(keeper.changed_pages(&data, &mut pages, None, &[]), vec![5]);
        // Inside the allocator's free chunks, a page is not looked at.
        data[6 * PAGE] = 3;
        let free = vec![6..7, 8..9];
        assert_eq!(keeper.changed_pages(&data, &mut pages, Some(vec![5, 6]), &free), Vec::<u32>::new());
    }

    #[test]
    fn the_image_and_the_stack_are_known_by_page() {
        let mut image = vec![0u8; 8 * PAGE];
        image[5 * PAGE] = 7;
        let baseline = Baseline::new("id".into(), &image, 2 * PAGE as u32);
        assert_eq!(baseline.stack_pages, 2);
        assert_eq!(baseline.image_hash(0), hash(&[0u8; PAGE]));
        assert_ne!(baseline.image_hash(5), hash(&[0u8; PAGE]));
        assert_eq!(baseline.image_hash(100), hash(&[0u8; PAGE]), "past the image, memory is zero");
    }
}
