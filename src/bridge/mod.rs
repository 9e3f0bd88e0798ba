//! The bridge between the reactor thread (tokio + hyper) and the Python thread
//! (the asyncio loop running the app): one lock-free queue and an eventfd.
//! This is the hot path of every request. It knows nothing of what travels
//! on it; the events are the ASGI side's (`asgi::Event`).
//!
//! The reactor pushes an event onto the queue. It writes the eventfd only
//! when the Python side has said it is asleep, and only once it has run out
//! of ready work and is about to park ([`Bridge::flush`], a tokio park hook)
//! or has queued [`SIGNAL_BATCH`] events. Both threads usually share a core,
//! and a wake-up makes the kernel switch threads at once; signalling per
//! event would ping-pong between them for every request instead of handing
//! over a batch. The asyncio loop watches the eventfd with
//! `loop.add_reader` and drains the whole queue in a batch per wake-up
//! ([`Bridge::drain`]). The reactor never takes the GIL: events carry plain
//! Rust data, and Python objects (asyncio futures) only ever travel back to
//! the Python thread inside an event, moved, never cloned or dropped here.
//! The one exception is a large response body, which the reactor writes from
//! the app's `bytes` object in place and then drops (`asgi::http::bytes_of`):
//! pyo3 queues that decref, without the GIL, for the Python thread.
//! The way back (Python to reactor) is a tokio waker: see `crate::wake`.

use std::cell::Cell;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crossbeam_queue::SegQueue;

/// How many events one drain handles before yielding to the asyncio loop, so
/// a flood of requests cannot starve tasks that are already running.
const DRAIN_BATCH_LIMIT: usize = 512;

/// Events the reactor queues before it signals Python without waiting to park,
/// so a reactor that never runs out of work still hands requests over.
const SIGNAL_BATCH: usize = 64;

thread_local! {
    static ON_REACTOR: Cell<bool> = const { Cell::new(false) };
}

/// Marks the current thread as the reactor (called once, when it starts).
pub(crate) fn mark_reactor_thread() {
    ON_REACTOR.set(true);
}

/// The queue and the eventfd shared by the reactor and the Python thread.
pub(crate) struct Bridge<E> {
    queue: SegQueue<E>,
    /// Events pushed by the reactor since it last signalled.
    unsignalled: AtomicUsize,
    eventfd: OwnedFd,
    /// True while the Python side is not draining: the next push must write the eventfd.
    asleep: AtomicBool,
}

impl<E> Bridge<E> {
    pub(crate) fn new() -> std::io::Result<Bridge<E>> {
        // SAFETY: eventfd returns a new descriptor we own, or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Bridge {
            queue: SegQueue::new(),
            unsignalled: AtomicUsize::new(0),
            // SAFETY: fd is a fresh, valid descriptor owned by nobody else.
            eventfd: unsafe { OwnedFd::from_raw_fd(fd) },
            asleep: AtomicBool::new(true),
        })
    }

    /// The descriptor the asyncio loop watches.
    pub(crate) fn fileno(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    /// Queues an event. On the reactor thread the wake-up waits for
    /// [`Bridge::flush`] unless a batch is full; elsewhere it happens now.
    pub(crate) fn push(&self, event: E) {
        self.queue.push(event);
        if ON_REACTOR.get() && self.unsignalled.fetch_add(1, Ordering::Relaxed) + 1 < SIGNAL_BATCH {
            return;
        }
        self.flush();
    }

    /// Wakes the Python side if events wait and it is not draining already.
    pub(crate) fn flush(&self) {
        self.unsignalled.store(0, Ordering::Relaxed);
        if !self.queue.is_empty() && self.asleep.swap(false, Ordering::SeqCst) {
            self.signal();
        }
    }

    fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our own eventfd. A full
        // counter (EAGAIN) still leaves the descriptor readable, which is all we need.
        unsafe {
            libc::write(
                self.eventfd.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            );
        }
    }

    fn clear_signal(&self) {
        let mut count: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64 from our own non-blocking eventfd.
        unsafe {
            libc::read(
                self.eventfd.as_raw_fd(),
                (&mut count as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            );
        }
    }

    /// Hands every queued event to `handle`, then marks the Python side asleep.
    ///
    /// Called on the Python thread when the eventfd is readable. Stops after
    /// [`DRAIN_BATCH_LIMIT`] events and re-signals itself so the asyncio loop
    /// runs other callbacks in between.
    pub(crate) fn drain(&self, mut handle: impl FnMut(E)) {
        self.clear_signal();
        let mut handled = 0;
        loop {
            while let Some(event) = self.queue.pop() {
                handle(event);
                handled += 1;
                if handled >= DRAIN_BATCH_LIMIT {
                    // Still awake (asleep is false): pushes do not signal, so we do.
                    self.signal();
                    return;
                }
            }
            self.asleep.store(true, Ordering::SeqCst);
            if self.queue.is_empty() {
                return;
            }
            // An event arrived after the last pop. If its producer has not yet
            // seen us asleep, take the wake-up back and keep draining; if it
            // has, it signalled the eventfd and we will be called again.
            if !self.asleep.swap(false, Ordering::SeqCst) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests' event: the bridge does not look inside events.
    #[derive(Debug, PartialEq)]
    struct Stopped;

    fn readable<E>(bridge: &Bridge<E>) -> bool {
        let mut pfd = libc::pollfd {
            fd: bridge.fileno(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
    }

    #[test]
    fn a_burst_of_events_signals_once_and_drains_in_order() {
        let bridge = Bridge::<Stopped>::new().unwrap();
        assert!(!readable(&bridge));
        bridge.push(Stopped);
        assert!(readable(&bridge));
        bridge.push(Stopped);
        let mut seen = 0;
        bridge.drain(|event| {
            assert_eq!(event, Stopped);
            seen += 1;
        });
        assert_eq!(seen, 2);
        assert!(!readable(&bridge), "drain clears the eventfd");
        bridge.push(Stopped);
        assert!(
            readable(&bridge),
            "asleep again after a drain, so the next push signals"
        );
    }

    #[test]
    fn the_reactor_signals_at_flush_or_when_a_batch_is_full() {
        let bridge = Bridge::<Stopped>::new().unwrap();
        mark_reactor_thread();
        bridge.push(Stopped);
        assert!(!readable(&bridge), "deferred until the reactor parks");
        bridge.flush();
        assert!(readable(&bridge));
        bridge.drain(|_| {});
        for _ in 0..SIGNAL_BATCH {
            bridge.push(Stopped);
        }
        assert!(readable(&bridge), "a full batch signals without waiting");
        ON_REACTOR.set(false);
    }

    #[test]
    fn a_long_queue_is_drained_in_batches() {
        let bridge = Bridge::<Stopped>::new().unwrap();
        for _ in 0..DRAIN_BATCH_LIMIT + 3 {
            bridge.push(Stopped);
        }
        let mut seen = 0;
        bridge.drain(|_| seen += 1);
        assert_eq!(seen, DRAIN_BATCH_LIMIT);
        assert!(readable(&bridge), "re-signalled for the rest");
        bridge.drain(|_| seen += 1);
        assert_eq!(seen, DRAIN_BATCH_LIMIT + 3);
    }
}
