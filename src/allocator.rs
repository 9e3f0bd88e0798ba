//! The server's memory allocator: mimalloc, set to give memory back.
//!
//! The reactor allocates and frees small buffers, tasks and futures for every
//! request; mimalloc serves them for fewer instructions than glibc's malloc
//! (an ASGI hello world costs about 5% fewer per request, an h2c one 6%).
//! Python's own objects keep pymalloc.
//!
//! Out of the box mimalloc keeps what it has: arenas are committed eagerly,
//! and freed pages are purged (given back to the system) only after a
//! delay and only when the thread that freed them allocates again, which an
//! idle reactor hardly does. So a burst of connections would leave the
//! worker at its peak size for good. Here arenas are committed lazily, so a
//! worker starts as small as with glibc, and the reactor has mimalloc purge
//! what has been free for a while once a second ([`give_back_memory`]), so
//! it returns to its idle size once a burst has closed. Purging sooner
//! (`MIMALLOC_PURGE_DELAY=0`) costs page faults under load.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;
use std::time::Duration;

use libmimalloc_sys::{
    mi_collect, mi_free, mi_malloc, mi_malloc_aligned, mi_option_set, mi_option_t, mi_realloc,
    mi_realloc_aligned, mi_zalloc, mi_zalloc_aligned,
};

#[global_allocator]
static ALLOCATOR: MiMalloc = MiMalloc;

/// The alignment every mimalloc block of at least this size has: on 64-bit
/// targets its size classes are multiples of 16 bytes (`MI_ALIGN2W` in
/// mimalloc's page-queue.c, from `MI_MAX_ALIGN_SIZE` 16), as glibc's are.
const MIN_ALIGN: usize = if cfg!(target_pointer_width = "64") {
    16
} else {
    8
};

/// mimalloc, asked the way the standard library's `System` allocator asks
/// malloc: the plain calls when a block's own alignment is enough (nearly
/// every Rust type), the aligned ones only beyond it. The `mimalloc` crate
/// makes every request an aligned one, whose quick path serves only a block
/// under 1 KiB already on its page's free list; anything else (a read
/// buffer, a first block of a fresh page) went through mimalloc's
/// over-allocating fallback, some 450 instructions where `mi_malloc` takes
/// tens.
struct MiMalloc;

/// Whether a plain (unaligned) call gives a block of `size` bytes the
/// alignment `align` asks.
fn plain(align: usize, size: usize) -> bool {
    align <= MIN_ALIGN && align <= size
}

// SAFETY: every block comes from mimalloc and goes back to it (`mi_free`
// takes aligned blocks too); the plain calls are used only where their
// alignment meets the layout's (see MIN_ALIGN), and null is returned on
// failure, as GlobalAlloc asks.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            mi_malloc(layout.size()).cast()
        } else {
            mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            mi_zalloc(layout.size()).cast()
        } else {
            mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi_free(ptr.cast::<c_void>());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain(layout.align(), new_size) {
            mi_realloc(ptr.cast::<c_void>(), new_size).cast()
        } else {
            mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
        }
    }
}

/// `mi_option_arena_eager_commit` in mimalloc.h's `mi_option_e` (mimalloc
/// v3, the sys crate's default; the sys crate names only some options).
const ARENA_EAGER_COMMIT: mi_option_t = 4;
/// `mi_option_purge_delay`: milliseconds before freed pages go back to the
/// system (mimalloc's default, 1000, is kept).
#[cfg(test)]
const PURGE_DELAY: mi_option_t = 15;

/// How often the reactor has mimalloc purge what its thread freed.
const PURGE_EVERY: Duration = Duration::from_secs(1);

/// Sets mimalloc's options, unless the environment sets them (the
/// `MIMALLOC_*` variables mimalloc documents); call before the server
/// allocates much.
pub(crate) fn configure() {
    if std::env::var_os("MIMALLOC_ARENA_EAGER_COMMIT").is_none() {
        // SAFETY: mi_option_set only stores the value; any option and value
        // is accepted.
        unsafe { mi_option_set(ARENA_EAGER_COMMIT, 0) };
    }
}

/// The size of the block [`settle_python_heap`] allocates and frees.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const HEAP_SETTLING_BLOCK: usize = 1 << 20;

/// Starts glibc malloc's adaptive thresholds where a server's steady state
/// takes them, for the memory Python allocates (its objects over 512 bytes
/// and every buffer the app makes go to malloc, not to mimalloc).
///
/// glibc hands a heap's free top back to the system (`madvise`) once it
/// exceeds the trim threshold, 128 KiB out of the box, and the next
/// allocations fault those pages in again. A worker frees the Python objects
/// the reactor was holding (response bodies it wrote without the GIL) in
/// batches, when a thread next takes the GIL: 64 connections echoing 10 KiB
/// free some 640 KiB at once, so a WSGI thread's heap was trimmed by about
/// 500 KiB every few dozen requests, and each request then paid 1.8 page
/// faults (the kernel's time per request 3 µs above granian's).
///
/// glibc raises its thresholds itself when a block it mapped on its own is
/// freed: the mapping threshold to that block's size and the trim threshold
/// to twice it. Freeing one 1 MiB block here does that at start (mapping
/// threshold 1 MiB, trim threshold 2 MiB), as the first large body would
/// have later, and leaves the adjustment on: a larger body raises both
/// again. An explicit `mallopt` would turn the adjustment off, and a body
/// over the threshold would then be mapped and faulted in anew every time.
/// When the environment sets the thresholds (`MALLOC_TRIM_THRESHOLD_`,
/// `MALLOC_MMAP_THRESHOLD_`, `GLIBC_TUNABLES`), glibc keeps them and the
/// free changes nothing. A heap keeps at most the trim threshold free at
/// its top, so this costs at most 2 MiB of memory per malloc arena.
pub(crate) fn settle_python_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: a plain malloc and the free of what it returned; nothing
        // else sees the block. black_box keeps the pair from being elided.
        unsafe {
            let block = std::hint::black_box(libc::malloc(HEAP_SETTLING_BLOCK));
            libc::free(block);
        }
    }
}

/// Runs on the reactor for as long as it serves: purges the pages of its
/// thread that have been free for the purge delay.
pub(crate) async fn give_back_memory() {
    let mut every = tokio::time::interval(PURGE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        // SAFETY: collects the calling thread's heap; no preconditions.
        unsafe { mi_collect(false) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libmimalloc_sys::{mi_option_get, mi_option_set_default};

    #[test]
    fn blocks_have_the_alignment_their_layout_asks() {
        // Every size up to a few pages, at each alignment the plain calls
        // serve and beyond them, many times over (fresh pages and reused
        // blocks alike), and grown (in place or moved).
        let mut held = Vec::new();
        for size in (1..=9000).step_by(7) {
            for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: layouts of non-zero size; each block is freed below.
                let block = unsafe { ALLOCATOR.alloc(layout) };
                assert!(!block.is_null());
                assert_eq!(block as usize % align, 0, "size {size} align {align}");
                let zeroed = unsafe { ALLOCATOR.alloc_zeroed(layout) };
                assert_eq!(
                    zeroed as usize % align,
                    0,
                    "zeroed size {size} align {align}"
                );
                assert!((0..size).all(|i| unsafe { *zeroed.add(i) } == 0));
                let grown = unsafe { ALLOCATOR.realloc(block, layout, size * 3) };
                assert_eq!(grown as usize % align, 0, "grown size {size} align {align}");
                held.push((grown, Layout::from_size_align(size * 3, align).unwrap()));
                held.push((zeroed, layout));
            }
        }
        for (block, layout) in held {
            // SAFETY: each was allocated above with this layout.
            unsafe { ALLOCATOR.dealloc(block, layout) };
        }
    }

    #[test]
    fn the_option_numbers_are_mimallocs() {
        // Their defaults (options.c of mimalloc v3) tell the two options
        // apart from their neighbours, so a renumbering would show here.
        // SAFETY: reading and setting options has no preconditions.
        unsafe {
            mi_option_set_default(ARENA_EAGER_COMMIT, 2);
            assert_eq!(mi_option_get(PURGE_DELAY), 1000);
            assert_eq!(mi_option_get(ARENA_EAGER_COMMIT), 2);
        }
    }
}
