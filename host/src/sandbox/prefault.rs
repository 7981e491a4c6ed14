//! Pre-faulting a fresh instance's memory. Every call of a snapshot writes to the same few
//! hundred pages of its copy-on-write image (CPython touches reference counts, the allocator,
//! the interpreter state); taking each as a page fault costs a trap per page. The pages are
//! learned once from a typical call (`pagemap`: present and no longer backed by the file means
//! written), merged into a few runs, and populated writable with one
//! `madvise(MADV_POPULATE_WRITE)` per run the first time a pool slot hosts the runtime.
//!
//! After that, the engine keeps them: with `pagemap_scan`, a slot's written pages (up to the
//! engine's `KEEP_RESIDENT`) are reset by copying the image back instead of being unmapped. A
//! call then finds its pages already there.
//! Linux only; elsewhere it does nothing.

use super::pagemap::{self, PAGE};

/// Unwritten pages tolerated inside one range: copying a few extra pages is cheaper than
/// another system call.
const GAP: usize = 8;
/// The most runs the set is merged into: each is one `madvise`. (Measured when wasmtime kept at
/// most 32 runs resident: 16 kept numpy's arrays resident, 8.8 → 6 ms.)
const MAX_RUNS: usize = 16;

/// Byte ranges of linear memory, page-aligned, that a typical call writes.
#[derive(Debug, Clone, Default)]
pub struct WriteSet {
    ranges: Vec<(usize, usize)>,
}

impl WriteSet {
    pub fn pages(&self) -> usize {
        self.ranges.iter().map(|(_, len)| len / PAGE).sum()
    }

    pub fn ranges(&self) -> usize {
        self.ranges.len()
    }

    /// The pages of `memory` (this process's memory, `len` bytes at `base`) that were written
    /// since they were mapped from the image: present, and private rather than file-backed.
    pub fn learn(base: *const u8, len: usize) -> std::io::Result<WriteSet> {
        let entries = pagemap::entries(base, len)?;
        let written =
            entries.iter().enumerate().filter(|(_, e)| e.present() && !e.file_or_shared()).map(|(page, _)| page);
        let mut ranges = WriteSet::runs(written).ranges;
        // Merge across the smallest gaps until few enough runs remain.
        while ranges.len() > MAX_RUNS {
            let Some((i, _)) =
                ranges.windows(2).enumerate().map(|(i, w)| (i, w[1].0 - (w[0].0 + w[0].1))).min_by_key(|(_, gap)| *gap)
            else {
                break;
            };
            let next = ranges.remove(i + 1);
            ranges[i].1 = next.0 + next.1 - ranges[i].0;
        }
        Ok(WriteSet { ranges })
    }

    /// The runs of `pages` (ascending page numbers), joined across small gaps.
    pub fn runs(pages: impl Iterator<Item = usize>) -> WriteSet {
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        for page in pages {
            let start = page * PAGE;
            match ranges.last_mut() {
                Some((begin, length)) if start <= *begin + *length + GAP * PAGE => *length = start + PAGE - *begin,
                _ => ranges.push((start, PAGE)),
            }
        }
        WriteSet { ranges }
    }

    /// Populates the learned pages of a fresh instance's memory, writable.
    #[allow(unsafe_code)]
    pub fn prefault(&self, memory: &mut [u8]) {
        let (base, len) = (memory.as_mut_ptr(), memory.len());
        for &(start, length) in &self.ranges {
            let Some(end) = start.checked_add(length) else { continue };
            if end > len {
                continue;
            }
            // SAFETY: `base..base + len` is `memory`, borrowed mutably for this call (so wasm is
            // not using it); the range lies inside it.
            // MADV_POPULATE_WRITE changes no byte: it faults the pages in as a write would,
            // without writing. A failure (an old kernel) only means the pages fault later.
            let _ =
                unsafe { rustix::mm::madvise(base.add(start).cast(), length, rustix::mm::Advice::LinuxPopulateWrite) };
        }
    }
}
