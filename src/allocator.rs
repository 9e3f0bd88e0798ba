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

use std::time::Duration;

use libmimalloc_sys::{mi_collect, mi_option_set, mi_option_t};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
