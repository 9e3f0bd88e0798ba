//! The memory a worker shares with its supervisor: its heartbeat, whether it
//! serves yet, how many requests it has taken, and its counters for
//! `--metrics-bind`.
//!
//! The supervisor creates one slot per worker (an anonymous `memfd`, mapped
//! shared) and hands its descriptor down; the worker maps the same pages.
//! Each field has one writer and is a plain atomic, so the request path
//! never takes a lock, a system call or the GIL to update it, and the
//! supervisor reads it whenever it looks, with no message to wait for.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::shared_memory::SharedMemory;
use crate::metrics::Counters;

/// The worker is importing the app or running the lifespan startup.
const BOOTING: u64 = 0;
/// The worker accepts connections.
const SERVING: u64 = 1;

/// The layout both processes map. Only ever grown at the end, and both sides
/// are the same build, so no versioning is needed.
#[repr(C)]
struct Shared {
    /// `CLOCK_MONOTONIC` (the same clock in every process of the machine), in
    /// milliseconds, when the worker's event loop last ran its heartbeat.
    heartbeat_ms: AtomicU64,
    /// [`BOOTING`] or [`SERVING`].
    state: AtomicU64,
    /// Requests the worker has started, HTTP and WebSocket alike.
    requests: AtomicU64,
    /// Non-zero once the worker asks to be replaced (a WSGI thread stuck
    /// past `--timeout-request`).
    retire: AtomicU64,
    /// What `/metrics` shows of this worker.
    counters: Counters,
}

/// One worker's shared slot, as either side sees it.
pub(crate) struct Slot {
    memory: SharedMemory,
}

impl Slot {
    /// Creates a slot for a worker about to be spawned, its heartbeat set to now
    /// (so the health check counts a worker's boot too).
    pub(crate) fn create() -> io::Result<Slot> {
        let memory = SharedMemory::create(c"rsasgi-worker-slot", std::mem::size_of::<Shared>())?;
        let slot = Slot { memory };
        slot.beat();
        Ok(slot)
    }

    /// Maps the slot a supervisor handed down as descriptor `fd`, which this
    /// process then owns.
    pub(crate) fn inherit(fd: RawFd) -> io::Result<Slot> {
        let memory = SharedMemory::inherit(fd, std::mem::size_of::<Shared>(), "worker slot")?;
        Ok(Slot { memory })
    }

    fn shared(&self) -> &Shared {
        // SAFETY: the mapping is at least size_of::<Shared>() bytes (checked
        // or set above), page-aligned, zero-initialised by the kernel (all
        // zeroes is a valid Shared), lives as long as self, and every field
        // is an atomic, so sharing it with another process is sound.
        unsafe { &*(self.memory.as_ptr() as *const Shared) }
    }

    /// The descriptor to hand to the worker.
    pub(crate) fn fd(&self) -> RawFd {
        self.memory.fd()
    }

    /// Worker side: the event loop ran just now.
    pub(crate) fn beat(&self) {
        self.shared()
            .heartbeat_ms
            .store(monotonic_ms(), Ordering::Relaxed);
    }

    /// Supervisor side: how long ago the worker's event loop last ran.
    pub(crate) fn since_beat(&self) -> Duration {
        let last = self.shared().heartbeat_ms.load(Ordering::Relaxed);
        Duration::from_millis(monotonic_ms().saturating_sub(last))
    }

    /// Worker side: the app is loaded and the sockets are being served.
    pub(crate) fn mark_serving(&self) {
        self.shared().state.store(SERVING, Ordering::Release);
    }

    pub(crate) fn is_serving(&self) -> bool {
        self.shared().state.load(Ordering::Acquire) != BOOTING
    }

    /// Worker side: one more request started.
    pub(crate) fn count_request(&self) {
        // One writer (the reactor thread), so a load and a store suffice and
        // no locked read-modify-write is needed.
        let requests = &self.shared().requests;
        requests.store(requests.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    pub(crate) fn requests(&self) -> u64 {
        self.shared().requests.load(Ordering::Relaxed)
    }

    /// Worker side: replace me gracefully.
    pub(crate) fn request_retirement(&self) {
        self.shared().retire.store(1, Ordering::Relaxed);
    }

    pub(crate) fn retirement_requested(&self) -> bool {
        self.shared().retire.load(Ordering::Relaxed) != 0
    }

    /// The worker's metrics: written by the worker, read by the supervisor.
    pub(crate) fn counters(&self) -> &Counters {
        &self.shared().counters
    }
}

/// `CLOCK_MONOTONIC` in milliseconds: unlike `Instant`, comparable between
/// processes, and unlike the wall clock, never set back.
fn monotonic_ms() -> u64 {
    u64::try_from(super::monotonic_now().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_mappings_see_the_same_counters() {
        let supervisor = Slot::create().unwrap();
        // SAFETY: dup returns a new descriptor for the worker side to own.
        let dup = unsafe { libc::dup(supervisor.fd()) };
        let worker = Slot::inherit(dup).unwrap();
        // SAFETY: F_GETFD reads the flags of the descriptor the slot owns.
        let flags = unsafe { libc::fcntl(worker.fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        assert!(!supervisor.is_serving());
        worker.mark_serving();
        worker.count_request();
        worker.count_request();
        assert!(supervisor.is_serving());
        assert_eq!(supervisor.requests(), 2);
        assert!(supervisor.since_beat() < Duration::from_secs(5));
    }

    #[test]
    fn a_stale_heartbeat_shows() {
        let slot = Slot::create().unwrap();
        slot.shared()
            .heartbeat_ms
            .store(monotonic_ms() - 40_000, Ordering::Relaxed);
        assert!(slot.since_beat() >= Duration::from_secs(40));
        slot.beat();
        assert!(slot.since_beat() < Duration::from_secs(5));
    }

    #[test]
    fn a_closed_descriptor_is_refused() {
        assert!(Slot::inherit(987_654).is_err());
    }
}
