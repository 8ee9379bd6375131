//! The daemon's global allocator: the system allocator, with transparent
//! huge pages asked for on large blocks.
//!
//! The big in-memory tables (the FGA store's indexes, the risk engine's
//! sketches) are read at random: with 4 KiB pages nearly every lookup in a
//! table of a hundred megabytes also misses the TLB. Debian's default THP
//! mode is `madvise`, so a process gets huge pages only where it asks:
//! every allocation of [`HUGE_MIN`] bytes or more is advised
//! `MADV_HUGEPAGE` (its 2 MiB-aligned inside). Small allocations, the vast
//! majority, are untouched, and under THP `never` the advice does nothing.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations from this size on are advised.
pub const HUGE_MIN: usize = 4 << 20;
const HUGE_PAGE: usize = 2 << 20;

/// See the module documentation.
pub struct ZtagAlloc;

fn advise(p: *mut u8, len: usize) {
    let start = (p as usize).next_multiple_of(HUGE_PAGE);
    let end = (p as usize + len) & !(HUGE_PAGE - 1);
    if end > start {
        // SAFETY: [start, end) lies inside the block just allocated; the
        // advice changes no contents. Errors (THP off) are ignored.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

// SAFETY: every call forwards to `System` with the caller's arguments; the
// advice does not change what the memory holds.
unsafe impl GlobalAlloc for ZtagAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        let p = unsafe { System.alloc(layout) };
        if layout.size() >= HUGE_MIN && !p.is_null() {
            advise(p, layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        let p = unsafe { System.alloc_zeroed(layout) };
        if layout.size() >= HUGE_MIN && !p.is_null() {
            advise(p, layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if new_size >= HUGE_MIN && !p.is_null() {
            advise(p, new_size);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_blocks_work_and_keep_their_contents() {
        let a = ZtagAlloc;
        let layout = Layout::from_size_align(HUGE_MIN + 12345, 64).unwrap();
        // SAFETY: a valid, non-zero layout; the block is freed below.
        unsafe {
            let p = a.alloc_zeroed(layout);
            assert!(!p.is_null());
            assert!((0..layout.size()).step_by(4096).all(|i| *p.add(i) == 0));
            *p.add(layout.size() - 1) = 7;
            let q = a.realloc(p, layout, 2 * HUGE_MIN);
            assert!(!q.is_null());
            assert_eq!(*q.add(layout.size() - 1), 7);
            a.dealloc(q, Layout::from_size_align(2 * HUGE_MIN, 64).unwrap());
        }
    }
}
