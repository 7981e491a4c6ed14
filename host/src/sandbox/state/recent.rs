//! The states this process saved last, as plain pages in memory, so that the next call on the
//! same workspace restores them with a copy instead of reading and decompressing every layer.
//! An entry is used only while the workspace's manifest on disk is the one it was made from (a
//! call in another process, or a restart, moves on without it). Bounded in bytes; the entry
//! used longest ago goes first.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::super::pagemap::PAGE;

/// What the entries may hold together, per process that runs guests (each worker process has
/// its own, and the pool sends a workspace's calls to the worker that ran it last).
const BUDGET: usize = 128 << 20;

/// One state's pages.
pub struct Pages {
    /// The fingerprint of the manifest these pages are.
    pub manifest: u64,
    /// Page numbers, ascending, and their contents, `PAGE` bytes each, in the same order.
    pub index: Vec<u32>,
    pub data: Vec<u8>,
}

impl Pages {
    /// Copies `index` from `memory` into `data` (emptied first: a buffer whose pages are
    /// already mapped costs no page faults).
    fn copy(manifest: u64, index: Vec<u32>, memory: &[u8], mut data: Vec<u8>) -> Pages {
        data.clear();
        data.reserve(index.len() * PAGE);
        for &page in &index {
            let start = page as usize * PAGE;
            data.extend_from_slice(&memory[start..start + PAGE]);
        }
        Pages { manifest, index, data }
    }

    /// Copies `changed` (each one of `index`) from `memory` over what is kept for them.
    fn update(&mut self, manifest: u64, memory: &[u8], changed: &[u32]) {
        self.manifest = manifest;
        for &page in changed {
            if let Ok(at) = self.index.binary_search(&page) {
                let start = page as usize * PAGE;
                self.data[at * PAGE..(at + 1) * PAGE].copy_from_slice(&memory[start..start + PAGE]);
            }
        }
    }

    /// Writes the pages into `memory`; `false` (and nothing written) if one lies outside it.
    pub fn write_into(&self, memory: &mut [u8]) -> bool {
        if self.index.last().is_some_and(|&last| (last as usize + 1) * PAGE > memory.len()) {
            return false;
        }
        for (page, content) in self.index.iter().zip(self.data.chunks_exact(PAGE)) {
            let start = *page as usize * PAGE;
            memory[start..start + PAGE].copy_from_slice(content);
        }
        true
    }
}

#[derive(Default)]
pub struct Recent {
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    by_dir: HashMap<PathBuf, (Arc<Pages>, u64)>,
    bytes: usize,
    tick: u64,
}

impl Recent {
    /// The pages of the state in `dir` whose manifest has fingerprint `manifest`, if kept.
    pub fn get(&self, dir: &Path, manifest: u64) -> Option<Arc<Pages>> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.tick += 1;
        let tick = entries.tick;
        let (pages, used) = entries.by_dir.get_mut(dir)?;
        *used = tick;
        (pages.manifest == manifest).then(|| pages.clone())
    }

    /// Keeps a copy of the pages `index` of `memory` as the state in `dir` whose manifest has
    /// fingerprint `manifest` (replacing what was kept for it), unless it alone is over the
    /// budget. When what is kept is the state with fingerprint `base`, with the same pages, and
    /// only `changed` differ from it, only those are copied.
    pub fn put(&self, dir: &Path, manifest: u64, index: Vec<u32>, memory: &[u8], base: Option<u64>, changed: &[u32]) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let old = entries.by_dir.remove(dir).map(|(old, _)| {
            entries.bytes -= old.data.len();
            old
        });
        drop(entries);
        if index.len() * PAGE > BUDGET {
            return;
        }
        let pages = match old.and_then(|old| Arc::try_unwrap(old).ok()) {
            Some(mut old) if Some(old.manifest) == base && old.index == index => {
                old.update(manifest, memory, changed);
                old
            }
            // A buffer whose pages are already mapped costs no page faults.
            old => Pages::copy(manifest, index, memory, old.map(|old| old.data).unwrap_or_default()),
        };
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        while entries.bytes + pages.data.len() > BUDGET {
            let Some(oldest) = entries.by_dir.iter().min_by_key(|(_, (_, used))| *used).map(|(dir, _)| dir.clone())
            else {
                break;
            };
            if let Some((old, _)) = entries.by_dir.remove(&oldest) {
                entries.bytes -= old.data.len();
            }
        }
        entries.tick += 1;
        entries.bytes += pages.data.len();
        let tick = entries.tick;
        entries.by_dir.insert(dir.to_path_buf(), (Arc::new(pages), tick));
    }

    /// Forgets the state in `dir`.
    pub fn forget(&self, dir: &Path) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((old, _)) = entries.by_dir.remove(dir) {
            entries.bytes -= old.data.len();
        }
    }
}
