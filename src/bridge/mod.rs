//! The bridge between the reactor thread (tokio + hyper) and the Python thread
//! (the asyncio loop running the app). This is the hot path of every request.
//!
//! What crosses, and who wakes whom:
//!
//! * **reactor → Python.** The reactor pushes an [`Event`] (a new request, a
//!   waiting future that can now complete, the reactor having stopped) onto one
//!   lock-free queue per worker. It writes the worker's eventfd only when the
//!   Python side has said it is asleep, and only once it has run out of ready
//!   work and is about to park ([`Bridge::flush`], a tokio park hook) or has
//!   queued [`SIGNAL_BATCH`] events. Both threads usually share a core, and a
//!   wake-up makes the kernel switch threads at once; signalling per event
//!   would ping-pong between them for every request instead of handing over a
//!   batch. The asyncio loop watches the eventfd with
//!   `loop.add_reader` and drains the whole queue in a batch per wake-up
//!   ([`Bridge::drain`]). The reactor never takes the GIL: events carry plain
//!   Rust data, and Python objects (asyncio futures) only ever travel back to
//!   the Python thread inside an event, moved, never cloned or dropped here.
//! * **Python → reactor.** `send()` stores response parts in the request's
//!   [`Exchange`](crate::asgi::http::Exchange) and wakes the reactor with the
//!   tokio waker the reactor left there. No GIL is needed on the other side.
//!   For the same reason as above, wakes made on the Python thread are
//!   collected and delivered together by one `loop.call_soon` callback
//!   ([`wake`]), after the tasks that are ready in this loop iteration ran.
//!   WSGI pool threads do the same with the wakes of finished responses
//!   ([`wake_when_idle`]), delivered when their queue of requests is empty.
//! * **Awaitables.** `receive()` and `send()` return a [`Ready`] awaitable that
//!   completes at once when the answer is already there (body buffered, room in
//!   the response buffer). Only a real wait creates an asyncio future, which the
//!   reactor hands back through the queue when it can complete.

mod awaitable;

pub(crate) use awaitable::Ready;

use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Waker;

use crossbeam_queue::SegQueue;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use crate::exchange::{Exchange, RequestStart};
use crate::ws::session::{WsSession, WsStart};

/// How many events one drain handles before yielding to the asyncio loop, so
/// a flood of requests cannot starve tasks that are already running.
const DRAIN_BATCH_LIMIT: usize = 512;

/// Events the reactor queues before it signals Python without waiting to park,
/// so a reactor that never runs out of work still hands requests over.
const SIGNAL_BATCH: usize = 64;

thread_local! {
    static ON_REACTOR: Cell<bool> = const { Cell::new(false) };
    static ON_LOOP: Cell<bool> = const { Cell::new(false) };
    static ON_POOL: Cell<bool> = const { Cell::new(false) };
    static DEFERRED_WAKES: RefCell<Vec<Waker>> = const { RefCell::new(Vec::new()) };
}

/// `loop.call_soon` and the callback that delivers deferred wakes.
pub(crate) static CALL_SOON: PyOnceLock<(Py<PyAny>, Py<PyAny>)> = PyOnceLock::new();

/// Marks the current thread as the reactor (called once, when it starts).
pub(crate) fn mark_reactor_thread() {
    ON_REACTOR.set(true);
}

/// Marks the current thread as the one running the asyncio loop.
pub(crate) fn mark_loop_thread() {
    ON_LOOP.set(true);
}

/// Wakes a reactor task. On the asyncio loop's thread the wake is deferred to
/// a `call_soon` callback shared by every wake of this loop iteration;
/// anywhere else (the reactor, WSGI pool threads) it happens at once.
pub(crate) fn wake(waker: Waker) {
    if !ON_LOOP.get() {
        waker.wake();
        return;
    }
    let first = DEFERRED_WAKES.with_borrow_mut(|wakes| {
        wakes.push(waker);
        wakes.len() == 1
    });
    if first {
        let scheduled = Python::attach(|py| match CALL_SOON.get(py) {
            Some((call_soon, callback)) => call_soon.call1(py, (callback,)).is_ok(),
            None => false,
        });
        if !scheduled {
            deliver_wakes();
        }
    }
}

/// Marks the current thread as a WSGI pool thread.
pub(crate) fn mark_pool_thread() {
    ON_POOL.set(true);
}

/// Wakes the reactor for a response that is complete. A WSGI pool thread
/// holds these until it runs out of queued requests (see `wsgi::Pool`), so a
/// burst of responses costs one switch to the reactor rather than one per
/// response; elsewhere this is [`wake`].
pub(crate) fn wake_when_idle(waker: Waker) {
    if ON_POOL.get() {
        DEFERRED_WAKES.with_borrow_mut(|wakes| wakes.push(waker));
    } else {
        wake(waker);
    }
}

/// Delivers the wakes deferred on this thread (the `call_soon` callback).
#[pyfunction]
pub(crate) fn deliver_wakes() {
    for waker in DEFERRED_WAKES.take() {
        waker.wake();
    }
}

/// Something the reactor tells the Python side.
pub(crate) enum Event {
    /// A request arrived: build its scope and start the app.
    Request(Box<RequestStart>),
    /// A client opened a WebSocket: build its scope and start the app.
    WebSocket(Box<WsStart>),
    /// A future the app awaits (in `receive()` or `send()`) can complete.
    Resolve(Waiter),
    /// The same, for a WebSocket connection.
    WsResolve(WsWaiter),
    /// The reactor has finished: every connection is closed.
    Stopped,
}

/// Which awaitable a parked future belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitKind {
    Receive,
    Send,
}

/// An asyncio future parked in an exchange, on its way back to Python.
pub(crate) struct Waiter {
    pub future: Py<PyAny>,
    pub exchange: Arc<Exchange>,
    pub kind: WaitKind,
}

/// An asyncio future parked in a WebSocket session, on its way back to Python.
pub(crate) struct WsWaiter {
    pub future: Py<PyAny>,
    pub session: Arc<WsSession>,
    pub kind: WaitKind,
}

/// The queue and the eventfd shared by the reactor and the Python thread.
pub(crate) struct Bridge {
    queue: SegQueue<Event>,
    /// Events pushed by the reactor since it last signalled.
    unsignalled: AtomicUsize,
    eventfd: OwnedFd,
    /// True while the Python side is not draining: the next push must write the eventfd.
    asleep: AtomicBool,
}

impl Bridge {
    pub(crate) fn new() -> std::io::Result<Bridge> {
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
    pub(crate) fn push(&self, event: Event) {
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
    pub(crate) fn drain(&self, mut handle: impl FnMut(Event)) {
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

    fn readable(bridge: &Bridge) -> bool {
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
        let bridge = Bridge::new().unwrap();
        assert!(!readable(&bridge));
        bridge.push(Event::Stopped);
        assert!(readable(&bridge));
        bridge.push(Event::Stopped);
        let mut seen = 0;
        bridge.drain(|event| {
            assert!(matches!(event, Event::Stopped));
            seen += 1;
        });
        assert_eq!(seen, 2);
        assert!(!readable(&bridge), "drain clears the eventfd");
        bridge.push(Event::Stopped);
        assert!(
            readable(&bridge),
            "asleep again after a drain, so the next push signals"
        );
    }

    #[test]
    fn the_reactor_signals_at_flush_or_when_a_batch_is_full() {
        let bridge = Bridge::new().unwrap();
        mark_reactor_thread();
        bridge.push(Event::Stopped);
        assert!(!readable(&bridge), "deferred until the reactor parks");
        bridge.flush();
        assert!(readable(&bridge));
        bridge.drain(|_| {});
        for _ in 0..SIGNAL_BATCH {
            bridge.push(Event::Stopped);
        }
        assert!(readable(&bridge), "a full batch signals without waiting");
        ON_REACTOR.set(false);
    }

    #[test]
    fn a_long_queue_is_drained_in_batches() {
        let bridge = Bridge::new().unwrap();
        for _ in 0..DRAIN_BATCH_LIMIT + 3 {
            bridge.push(Event::Stopped);
        }
        let mut seen = 0;
        bridge.drain(|_| seen += 1);
        assert_eq!(seen, DRAIN_BATCH_LIMIT);
        assert!(readable(&bridge), "re-signalled for the rest");
        bridge.drain(|_| seen += 1);
        assert_eq!(seen, DRAIN_BATCH_LIMIT + 3);
    }
}
