//! What the kernel says about each page of a guest's linear memory (`/proc/self/pagemap`, one
//! 64-bit entry per page): whether it is present, swapped, or still the file's page. A page
//! that is private (not the file's) was written since it was mapped from the module's
//! copy-on-write image, or kept resident by the pool after an earlier instance. Linux only;
//! elsewhere every query fails and callers fall back to doing without.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

/// The page size entries are counted in.
pub const PAGE: usize = 4096;

/// One page's entry.
#[derive(Debug, Clone, Copy)]
pub struct Entry(u64);

impl Entry {
    pub fn present(self) -> bool {
        self.0 & (1 << 63) != 0
    }

    pub fn swapped(self) -> bool {
        self.0 & (1 << 62) != 0
    }

    /// Backed by a file (here: still the module's image) or shared.
    pub fn file_or_shared(self) -> bool {
        self.0 & (1 << 61) != 0
    }

    /// May hold something other than the image: a private page, in memory or swapped out.
    pub fn private(self) -> bool {
        (self.present() && !self.file_or_shared()) || self.swapped()
    }
}

/// The entries of the pages of `len` bytes at `base` (page-aligned, in this process).
pub fn entries(base: *const u8, len: usize) -> std::io::Result<Vec<Entry>> {
    let first_page = base as usize / PAGE;
    let pages = len / PAGE;
    let mut pagemap = File::open("/proc/self/pagemap")?;
    pagemap.seek(SeekFrom::Start((first_page * 8) as u64))?;
    let mut bytes = vec![0u8; pages * 8];
    pagemap.read_exact(&mut bytes)?;
    Ok(bytes.chunks_exact(8).map(|entry| Entry(u64::from_le_bytes(entry.try_into().unwrap_or_default()))).collect())
}

/// Drops the pages of `memory` (a fresh instance's, holding the module's image everywhere) from
/// this process: the image's pages are mapped from its file again if touched, the rest read as
/// zeros, as they held.
#[allow(unsafe_code)]
pub fn release(memory: &mut [u8]) {
    // SAFETY: `memory` is borrowed mutably (wasm is not using it). MADV_DONTNEED on a private
    // file mapping that was only read drops the mapped pages; the next access maps the file's
    // page again, so no byte changes. A failure only leaves the pages mapped.
    let _ = unsafe { rustix::mm::madvise(memory.as_mut_ptr().cast(), memory.len(), rustix::mm::Advice::LinuxDontNeed) };
}

/// Asks for transparent huge pages in `memory` (page-aligned): a restore that fills many pages
/// there then takes one fault and one clear per 2 MiB instead of per 4 KiB (64 MB: about 9 ms
/// instead of 30). Advice only: where huge pages are off, nothing changes.
#[allow(unsafe_code)]
pub fn huge(memory: &mut [u8]) {
    // SAFETY: `memory` is borrowed mutably (wasm is not using it); MADV_HUGEPAGE changes no byte.
    let _ = unsafe { rustix::mm::madvise(memory.as_mut_ptr().cast(), memory.len(), rustix::mm::Advice::LinuxHugepage) };
}
