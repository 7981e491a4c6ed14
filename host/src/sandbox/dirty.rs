//! Which pages of a guest's linear memory a call wrote, told by the kernel rather than found by
//! comparing pages. When an instance starts, its memory is the runtime's image everywhere; it is
//! then write-protected with userfaultfd in asynchronous mode (Linux 6.7+): a write to a page
//! clears the page's protection in the kernel, with no handler of ours and no signal, and the
//! `PAGEMAP_SCAN` ioctl later lists exactly the pages written since.
//!
//! Two readers use that list. The pool's reset (vendored wasmtime, `reset_with_pagemap`) copies
//! the image back over the pages reported `WRITTEN`: a page not written since the protection
//! still holds the image. The Python state's save (`state.rs`) looks only at those pages.
//! Where userfaultfd is refused (an older kernel, a seccomp profile without it), or
//! `--write-protect off`, nothing is protected: every private page then reports `WRITTEN`, which
//! is what the reset assumed before, and the save compares pages.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use rustix::ioctl::{Updater, ioctl, opcode};

use super::pagemap::PAGE;

/// `struct uffdio_api`.
#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

/// `struct uffdio_range`.
#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

/// `struct uffdio_writeprotect`.
#[repr(C)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

/// `struct pm_scan_arg`.
#[repr(C)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `struct page_region`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

const UFFD_API: u64 = 0xAA;
const UFFD_USER_MODE_ONLY: u32 = 1;
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
const UFFDIO_API: u32 = opcode::read_write::<UffdioApi>(0xAA, 0x3F);
const UFFDIO_REGISTER: u32 = opcode::read_write::<UffdioRegister>(0xAA, 0x00);
const UFFDIO_WRITEPROTECT: u32 = opcode::read_write::<UffdioWriteprotect>(0xAA, 0x06);
const PAGEMAP_SCAN: u32 = opcode::read_write::<PmScanArg>(b'f', 16);
/// `PAGE_IS_*` categories.
const WRITTEN: u64 = 1 << 1;
const FILE: u64 = 1 << 2;
const PRESENT: u64 = 1 << 3;
const PFNZERO: u64 = 1 << 5;
/// Regions one scan returns before it is resumed.
const REGIONS: usize = 64;

/// A userfaultfd and the process's pagemap, when the kernel offers asynchronous
/// write-protection. Owned by the guests' engine (`local.rs`), shared by its runtimes.
pub struct Tracker {
    uffd: OwnedFd,
    pagemap: File,
}

impl Tracker {
    /// A tracker, or `None` where the kernel refuses one (said in the log).
    pub fn start() -> Option<Tracker> {
        match Tracker::open() {
            Ok(tracker) => Some(tracker),
            Err(e) => {
                tracing::info!(
                    "userfaultfd write-protection is unavailable ({e}): each call's reset copies every page its \
                     slot keeps, and a Python state's save compares every private page (1–2 ms more per call); \
                     allow the userfaultfd system call (seccomp) for faster calls"
                );
                None
            }
        }
    }

    #[allow(unsafe_code)]
    pub fn open() -> std::io::Result<Tracker> {
        use rustix::mm::UserfaultfdFlags;
        let flags = UserfaultfdFlags::CLOEXEC
            | UserfaultfdFlags::NONBLOCK
            | UserfaultfdFlags::from_bits_retain(UFFD_USER_MODE_ONLY);
        // SAFETY: the descriptor only ever registers guest linear memories for asynchronous
        // write-protection, which changes no byte and delivers no fault to us.
        let uffd = unsafe { rustix::mm::userfaultfd(flags) }?;
        let mut api = UffdioApi { api: UFFD_API, features: UFFD_FEATURE_WP_ASYNC, ioctls: 0 };
        // SAFETY: UFFDIO_API takes a `struct uffdio_api`, read and written by the kernel.
        unsafe { ioctl(&uffd, Updater::<UFFDIO_API, _>::new(&mut api)) }?;
        if api.features & UFFD_FEATURE_WP_ASYNC == 0 {
            return Err(std::io::Error::other("the kernel has no asynchronous write-protection"));
        }
        let pagemap = File::open("/proc/self/pagemap")?;
        Ok(Tracker { uffd, pagemap })
    }

    /// Write-protects `memory` (page-aligned, holding the runtime's image everywhere): from now
    /// on `written` lists the pages written after this call. On an error nothing may be
    /// assumed of the protection (and `written` must not be trusted for this instance).
    #[allow(unsafe_code)]
    pub fn protect(&self, memory: &mut [u8]) -> std::io::Result<()> {
        let range = || UffdioRange { start: memory.as_ptr() as u64, len: memory.len() as u64 };
        let mut register = UffdioRegister { range: range(), mode: UFFDIO_REGISTER_MODE_WP, ioctls: 0 };
        // SAFETY: UFFDIO_REGISTER takes a `struct uffdio_register`; the range is the guest's
        // memory, borrowed mutably (wasm is not running). Registering it again is allowed.
        unsafe { ioctl(&self.uffd, Updater::<UFFDIO_REGISTER, _>::new(&mut register)) }?;
        let mut protect = UffdioWriteprotect { range: range(), mode: UFFDIO_WRITEPROTECT_MODE_WP };
        // SAFETY: as above; write-protection in asynchronous mode changes no byte.
        unsafe { ioctl(&self.uffd, Updater::<UFFDIO_WRITEPROTECT, _>::new(&mut protect)) }?;
        Ok(())
    }

    /// Lifts the protection from `pages` of `memory` (ascending page numbers) as if they were
    /// written: they are about to be, all of them, and a write to a protected page costs a fault.
    pub fn unprotect(&self, memory: &mut [u8], pages: impl Iterator<Item = u32>) -> std::io::Result<()> {
        self.lift(memory.as_ptr() as u64, &runs(memory, pages)?)
    }

    /// Lifts the protection from `runs` (first page, count) of the memory at `base`.
    #[allow(unsafe_code)]
    fn lift(&self, base: u64, runs: &[(u32, u32)]) -> std::io::Result<()> {
        for &(first, count) in runs {
            let range =
                UffdioRange { start: base + u64::from(first) * PAGE as u64, len: u64::from(count) * PAGE as u64 };
            let mut unprotect = UffdioWriteprotect { range, mode: 0 };
            // SAFETY: UFFDIO_WRITEPROTECT takes a `struct uffdio_writeprotect`; the range lies in
            // a guest's memory (checked by the callers). Lifting the protection changes no byte.
            unsafe { ioctl(&self.uffd, Updater::<UFFDIO_WRITEPROTECT, _>::new(&mut unprotect)) }?;
        }
        Ok(())
    }

    /// Write-protects `memory` again after a restore wrote `pages` of it (ascending page
    /// numbers) with what the image does not hold, so that `written` then lists only what the
    /// call itself writes. The pool's reset skips pages not reported written, so those pages
    /// must report written again before the slot is reset: the returned guard lifts their
    /// protection when dropped, and it is returned even when protecting failed part-way (then
    /// `written` must not be trusted for this instance). It belongs in the store's data, which
    /// wasmtime drops before it returns the instance's memory to the pool.
    pub fn reprotect(
        self: &Arc<Self>,
        memory: &mut [u8],
        pages: impl Iterator<Item = u32>,
    ) -> (Restored, std::io::Result<()>) {
        let base = memory.as_ptr() as u64;
        match runs(memory, pages) {
            Ok(runs) => (Restored { tracker: self.clone(), base, runs }, self.protect(memory)),
            // Nothing is protected again: the restored pages still report written.
            Err(e) => (Restored { tracker: self.clone(), base, runs: Vec::new() }, Err(e)),
        }
    }

    /// The pages of `memory` written since `protect` (page numbers from its start, ascending):
    /// written and private, neither the zero page nor the image's file page.
    pub fn written(&self, memory: &[u8]) -> std::io::Result<Vec<u32>> {
        self.scan(memory, WRITTEN | PFNZERO | FILE)
    }

    /// The pages of `memory` this process holds privately (present, neither the zero page nor
    /// the image's file page), written in this instance or kept by an earlier one.
    pub fn private(&self, memory: &[u8]) -> std::io::Result<Vec<u32>> {
        self.scan(memory, PRESENT | PFNZERO | FILE)
    }

    /// The pages of `memory` in the categories `mask` selects (each required, except the zero
    /// page and file pages, which are excluded).
    #[allow(unsafe_code)]
    fn scan(&self, memory: &[u8], mask: u64) -> std::io::Result<Vec<u32>> {
        let base = memory.as_ptr() as u64;
        let end = base + memory.len() as u64;
        let mut pages = Vec::new();
        let mut start = base;
        while start < end {
            let mut regions = [PageRegion::default(); REGIONS];
            let mut arg = PmScanArg {
                size: size_of::<PmScanArg>() as u64,
                flags: 0,
                start,
                end,
                walk_end: 0,
                vec: regions.as_mut_ptr() as u64,
                vec_len: REGIONS as u64,
                max_pages: 0,
                category_inverted: PFNZERO | FILE,
                category_mask: mask,
                category_anyof_mask: 0,
                return_mask: 0,
            };
            // SAFETY: PAGEMAP_SCAN takes a `struct pm_scan_arg` and writes at most `vec_len`
            // regions into `vec`, which points at `regions`; it only reads page tables.
            unsafe { ioctl(&self.pagemap, Updater::<PAGEMAP_SCAN, _>::new(&mut arg)) }?;
            for region in regions.iter().take_while(|r| r.end > r.start) {
                pages
                    .extend(((region.start - base) / PAGE as u64..(region.end - base) / PAGE as u64).map(|p| p as u32));
            }
            if arg.walk_end <= start {
                return Err(std::io::Error::other("PAGEMAP_SCAN made no progress"));
            }
            start = arg.walk_end;
        }
        Ok(pages)
    }
}

/// Ascending page numbers of `memory` as runs (first page, count); an error if one lies
/// outside it.
fn runs(memory: &[u8], pages: impl Iterator<Item = u32>) -> std::io::Result<Vec<(u32, u32)>> {
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for page in pages {
        match runs.last_mut() {
            Some((first, count)) if *first + *count == page => *count += 1,
            _ => runs.push((page, 1)),
        }
    }
    if runs.last().is_some_and(|&(first, count)| (first + count) as usize * PAGE > memory.len()) {
        return Err(std::io::Error::other("a page lies outside the memory"));
    }
    Ok(runs)
}

/// Restored pages of a guest's memory that were write-protected again (`Tracker::reprotect`):
/// dropping this lifts their protection, so that the pool's reset sees them as written and
/// gives the next instance the image there.
pub struct Restored {
    tracker: Arc<Tracker>,
    base: u64,
    runs: Vec<(u32, u32)>,
}

impl Drop for Restored {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        let Err(e) = self.tracker.lift(self.base, &self.runs) else { return };
        // Dropping the pages gives the same guarantee: a dropped page reads as the image's
        // file page or as zeros again, which is what the reset would have written.
        for &(first, count) in &self.runs {
            let start = (self.base + u64::from(first) * PAGE as u64) as *mut std::ffi::c_void;
            // SAFETY: the runs lie in a guest's linear memory that is still mapped (the store's
            // data is dropped before its instance) and that nothing runs in any more.
            if unsafe { rustix::mm::madvise(start, count as usize * PAGE, rustix::mm::Advice::LinuxDontNeed) }.is_err()
            {
                tracing::error!("cannot lift the write-protection of restored pages ({e}) nor drop them: stopping");
                std::process::abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pages_written_after_protection_are_listed_and_only_they() {
        let tracker = Tracker::open().expect("userfaultfd write-protection (Linux 6.7+)");
        let mut memory = vec![0u8; 64 * PAGE + PAGE];
        let offset = memory.as_ptr().align_offset(PAGE);
        let memory = &mut memory[offset..offset + 64 * PAGE];
        memory.fill(1);
        tracker.protect(memory).expect("protect");
        assert_eq!(tracker.written(memory).expect("written"), Vec::<u32>::new(), "nothing written yet");
        for page in [3, 4, 40] {
            memory[page * PAGE + 100] = 2;
        }
        let _read: u64 = memory.iter().map(|&b| b as u64).sum();
        // Lifted protection counts as written, without a write.
        tracker.unprotect(memory, [10, 11, 12, 50].into_iter()).expect("unprotect");
        assert_eq!(tracker.written(memory).expect("written"), vec![3, 4, 10, 11, 12, 40, 50]);
        assert!(tracker.unprotect(memory, [64].into_iter()).is_err(), "a page past the end is refused");
        // Protected again, everything is clean again.
        tracker.protect(memory).expect("protect");
        memory[7 * PAGE] = 9;
        assert_eq!(tracker.written(memory).expect("written"), vec![7]);
    }

    #[test]
    fn restored_pages_protected_again_report_written_once_the_guard_is_dropped() {
        let tracker = Arc::new(Tracker::open().expect("userfaultfd write-protection (Linux 6.7+)"));
        let mut memory = vec![0u8; 64 * PAGE + PAGE];
        let offset = memory.as_ptr().align_offset(PAGE);
        let memory = &mut memory[offset..offset + 64 * PAGE];
        tracker.protect(memory).expect("protect");
        // A restore writes pages 20..30 and 33, then protects again: only what comes after counts.
        let restored: Vec<u32> = (20..30).chain([33]).collect();
        tracker.unprotect(memory, restored.iter().copied()).expect("unprotect");
        for &page in &restored {
            memory[page as usize * PAGE] = 5;
        }
        let (guard, protected) = tracker.reprotect(memory, restored.iter().copied());
        protected.expect("protect again");
        assert_eq!(tracker.written(memory).expect("written"), Vec::<u32>::new());
        memory[25 * PAGE + 1] = 6;
        memory[2 * PAGE] = 6;
        assert_eq!(tracker.written(memory).expect("written"), vec![2, 25]);
        // Dropped, every restored page reports written again, for the pool's reset.
        drop(guard);
        assert_eq!(tracker.written(memory).expect("written"), [2].into_iter().chain(restored).collect::<Vec<_>>());
        let (_guard, outside) = tracker.reprotect(memory, [64].into_iter());
        assert!(outside.is_err(), "a page past the end is refused");
    }
}
