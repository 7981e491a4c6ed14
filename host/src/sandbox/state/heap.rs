//! The guest's free heap memory: whole pages inside chunks that wasi-libc's allocator (dlmalloc,
//! which CPython's `malloc` and numpy's buffers use) holds free. The program reads nothing there
//! before writing it, so a saved state leaves those pages out and a restore leaves them as the
//! snapshot has them. A 32 MB array freed after pandas copied it is 32 MB a state need not keep.
//!
//! The allocator's state (`_gm_`) is static data at one address in every instance of a module.
//! It is found once, in a fresh instance's memory, as the one candidate whose chunks, walked
//! from its lowest address, end exactly at its top chunk. A save then reads only the large free
//! chunks (dlmalloc's tree bins), the designated victim and the top chunk, each checked against
//! its footer and its neighbour's header. The guest can write all of this: what it gains by
//! forging it is the loss of its own state's pages, and the reading is bounded.

use std::ops::Range;

use super::super::pagemap::PAGE;

// Offsets in wasm32 dlmalloc's `struct malloc_state` (4-byte `size_t` and pointers).
const TREEMAP: u32 = 4;
const DVSIZE: u32 = 8;
const TOPSIZE: u32 = 12;
const LEAST_ADDR: u32 = 16;
const DV: u32 = 20;
const TOP: u32 = 24;
/// `treebins[32]`, after the small bins' 66 pointers.
const TREEBINS: u32 = 40 + 66 * 4;
const NTREEBINS: u32 = 32;

// Offsets in a chunk: `prev_foot`, `head` (size | PINUSE 1 | CINUSE 2), then for a free tree
// chunk `fd`, `bk`, `child[2]`, `parent`, `index`: its first 32 bytes are the allocator's.
const HEAD: u32 = 4;
const FD: u32 = 8;
const CHILD: [u32; 2] = [16, 20];
const KEPT: u32 = 32;
const PINUSE: u32 = 1;
const CINUSE: u32 = 2;
const SIZE_MASK: u32 = !7;
const MIN_CHUNK: u32 = 16;
/// What the allocator reserves after its top chunk (wasm32, 16-byte alignment).
const TOP_FOOT: u32 = 56;

/// Where the allocator keeps its state in every instance of one module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocator {
    state: u32,
}

fn word(memory: &[u8], at: u32) -> Option<u32> {
    let at = at as usize;
    memory.get(at..at.checked_add(4)?).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

impl Allocator {
    /// Finds the allocator's state in a fresh instance's `memory`: `None` unless exactly one
    /// place holds a state whose heap, walked chunk by chunk, is whole and ends at its top
    /// chunk, which ends where the memory does (less the allocator's footer), as it does when
    /// the allocator alone grew the memory.
    pub fn find(memory: &[u8]) -> Option<Allocator> {
        let len = u32::try_from(memory.len()).ok()?;
        let end = len.checked_sub(TOP_FOOT)?;
        // One pass over the words: a state's `top` (word 6) and `topsize` (word 3) add up to
        // `end` (about 20 ms for CPython's 100 MB).
        let mut found = None;
        let as_word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let pairs = memory[TOP as usize..].chunks_exact(4).zip(memory[TOPSIZE as usize..].chunks_exact(4));
        for (i, (top, topsize)) in pairs.enumerate() {
            let (top, topsize) = (as_word(top), as_word(topsize));
            if top == 0 || top.wrapping_add(topsize) != end {
                continue;
            }
            let candidate = Allocator { state: i as u32 * 4 };
            let Some((least, top, _)) = candidate.bounds(memory) else { continue };
            if least > candidate.state
                && walks_to_top(memory, least, top) == Some(true)
                && found.replace(candidate).is_some()
            {
                return None;
            }
        }
        found
    }

    /// The heap's lowest address, its top chunk and the top chunk's size, if they are plausible.
    fn bounds(&self, memory: &[u8]) -> Option<(u32, u32, u32)> {
        let least = word(memory, self.state + LEAST_ADDR)?;
        let top = word(memory, self.state + TOP)?;
        let topsize = word(memory, self.state + TOPSIZE)?;
        let plausible = least > 0
            && least < top
            && (top as usize).checked_add(topsize as usize)? <= memory.len()
            && word(memory, top + HEAD)? & SIZE_MASK == topsize;
        plausible.then_some((least, top, topsize))
    }

    /// The pages of `memory` that lie wholly inside free chunks, as sorted, disjoint ranges of
    /// page numbers; none when the allocator's state does not hold together.
    pub fn free_pages(&self, memory: &[u8]) -> Vec<Range<u32>> {
        let Some((least, top, topsize)) = self.bounds(memory) else { return Vec::new() };
        let free = |chunk: u32| free_chunk(memory, chunk, least, top);
        let mut chunks = vec![(top, topsize)];
        if let (Some(dv), Some(dvsize)) = (word(memory, self.state + DV), word(memory, self.state + DVSIZE))
            && dvsize as usize > PAGE
            && free(dv) == Some(dvsize)
        {
            chunks.push((dv, dvsize));
        }
        // A tree bin is a trie of free chunks (`child`), each heading a ring of chunks of its
        // size (`fd`). Every visit is counted: a forged tree ends the walk, with nothing freed.
        let treemap = word(memory, self.state + TREEMAP).unwrap_or(0);
        let mut budget = memory.len() / MIN_CHUNK as usize;
        let mut stack: Vec<u32> = (0..NTREEBINS)
            .filter(|bin| treemap & (1 << bin) != 0)
            .filter_map(|bin| word(memory, self.state + TREEBINS + bin * 4))
            .filter(|&root| root != 0)
            .collect();
        while let Some(node) = stack.pop() {
            let mut chunk = node;
            loop {
                budget = match budget.checked_sub(1) {
                    Some(left) => left,
                    None => return Vec::new(),
                };
                let Some(size) = free(chunk) else { return Vec::new() };
                if size as usize > PAGE {
                    chunks.push((chunk, size));
                }
                match word(memory, chunk + FD) {
                    Some(next) if next == node => break,
                    Some(next) => chunk = next,
                    None => return Vec::new(),
                }
            }
            stack.extend(CHILD.iter().filter_map(|&child| word(memory, node + child)).filter(|&c| c != 0));
        }
        let mut pages: Vec<Range<u32>> = chunks
            .into_iter()
            .map(|(chunk, size)| {
                let first = (chunk as usize + KEPT as usize).div_ceil(PAGE) as u32;
                let end = ((chunk as usize + size as usize) / PAGE) as u32;
                first..end
            })
            .filter(|range| !range.is_empty())
            .collect();
        pages.sort_by_key(|range| range.start);
        pages
    }
}

/// The size of the free chunk at `chunk`, between `least` and `top`, if its header, its footer
/// and its neighbour's header all say it is free.
fn free_chunk(memory: &[u8], chunk: u32, least: u32, top: u32) -> Option<u32> {
    if chunk < least || chunk >= top {
        return None;
    }
    let head = word(memory, chunk + HEAD)?;
    let size = head & SIZE_MASK;
    let next = chunk.checked_add(size)?;
    let holds = head & CINUSE == 0
        && size >= MIN_CHUNK
        && next <= top
        && word(memory, next)? == size
        && word(memory, next + HEAD)? & PINUSE == 0;
    holds.then_some(size)
}

/// Whether the chunks from `least` (aligned as dlmalloc aligns its first chunk) follow one
/// another, each header agreeing with the one before on whether it is in use, up to `top`.
fn walks_to_top(memory: &[u8], least: u32, top: u32) -> Option<bool> {
    // A chunk's payload (8 bytes in) is 16-byte aligned.
    let mut chunk = least + (16 - ((least + 8) & 15)) % 16;
    let mut before_in_use = PINUSE;
    while chunk < top {
        let head = word(memory, chunk + HEAD)?;
        let size = head & SIZE_MASK;
        if size < MIN_CHUNK || head & PINUSE != before_in_use {
            return Some(false);
        }
        before_in_use = (head & CINUSE) >> 1;
        chunk = chunk.checked_add(size)?;
    }
    Some(chunk == top && word(memory, top + HEAD)? & PINUSE == before_in_use)
}

/// Whether `page` is in one of the sorted, disjoint `ranges`.
pub fn contains(ranges: &[Range<u32>], page: u32) -> bool {
    let after = ranges.partition_point(|range| range.start <= page);
    after > 0 && ranges[after - 1].contains(&page)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A memory laid out as wasm32 dlmalloc lays it out: its state at 64, then chunks from 1024
    /// (its payload 16-aligned) to a top chunk at the end. `chunks` are (size, in use).
    fn heap(chunks: &[(u32, bool)], top_size: u32) -> (Vec<u8>, u32) {
        let state = 64u32;
        let least = 1016u32;
        let total: u32 = chunks.iter().map(|c| c.0).sum::<u32>() + top_size + TOP_FOOT;
        let mut memory = vec![0u8; (least + total) as usize];
        let mut chunk = least;
        let mut before_in_use = true;
        for &(size, in_use) in chunks {
            put(&mut memory, chunk + HEAD, size | u32::from(before_in_use) | if in_use { CINUSE } else { 0 });
            if !in_use {
                put(&mut memory, chunk + size, size);
            }
            before_in_use = in_use;
            chunk += size;
        }
        put(&mut memory, chunk + HEAD, top_size | u32::from(before_in_use));
        put(&mut memory, state + LEAST_ADDR, least);
        put(&mut memory, state + TOP, chunk);
        put(&mut memory, state + TOPSIZE, top_size);
        (memory, state)
    }

    fn put(memory: &mut [u8], at: u32, value: u32) {
        memory[at as usize..at as usize + 4].copy_from_slice(&value.to_le_bytes());
    }

    #[test]
    fn free_chunks_in_the_tree_and_the_top_give_their_whole_pages() {
        let big = 10 * PAGE as u32;
        let (mut memory, state) = heap(&[(48, true), (big, false), (64, true)], 3 * PAGE as u32);
        let allocator = Allocator::find(&memory).expect("the allocator's state is found");
        assert_eq!(allocator, Allocator { state });
        // Not in a tree bin yet: only the top chunk's inside is free.
        let top = word(&memory, state + TOP).expect("top");
        let top_pages = (top + KEPT).div_ceil(PAGE as u32)..(top + 3 * PAGE as u32) / PAGE as u32;
        assert_eq!(allocator.free_pages(&memory), vec![top_pages.clone()]);
        // In a tree bin, alone in its ring: its pages past its 32-byte header are free too.
        let chunk = 1016 + 48;
        put(&mut memory, state + TREEMAP, 1 << 31);
        put(&mut memory, state + TREEBINS + 31 * 4, chunk);
        put(&mut memory, chunk + FD, chunk);
        let inside = (chunk + KEPT).div_ceil(PAGE as u32)..(chunk + big) / PAGE as u32;
        assert_eq!(allocator.free_pages(&memory), vec![inside.clone(), top_pages.clone()]);
        for page in inside.clone() {
            assert!(contains(&allocator.free_pages(&memory), page));
        }
        assert!(!contains(&allocator.free_pages(&memory), inside.start - 1));
        // A ring that leads to what is not a free chunk, or a chunk the tree names but whose
        // header says in use, frees nothing at all.
        put(&mut memory, chunk + FD, chunk + 16);
        assert_eq!(allocator.free_pages(&memory), Vec::<Range<u32>>::new());
        put(&mut memory, chunk + FD, chunk);
        let head = word(&memory, chunk + HEAD).expect("head");
        put(&mut memory, chunk + HEAD, head | CINUSE);
        assert_eq!(allocator.free_pages(&memory), Vec::<Range<u32>>::new());
    }

    #[test]
    fn no_state_is_found_in_memory_that_does_not_hold_one() {
        assert_eq!(Allocator::find(&vec![0u8; 64 * 1024]), None);
        // A heap whose chunks do not reach its top.
        let (mut memory, _) = heap(&[(48, true), (64, true)], PAGE as u32);
        put(&mut memory, 1016 + 48 + HEAD, 32 | PINUSE | CINUSE);
        assert_eq!(Allocator::find(&memory), None);
    }
}
