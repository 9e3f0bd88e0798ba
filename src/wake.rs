//! Waking reactor tasks from the app's threads, in batches.
//!
//! `send()` stores response parts in an exchange and wakes the reactor task
//! waiting there. The reactor and the Python thread usually share a core,
//! and a wake-up makes the kernel switch threads at once, so waking per call
//! would ping-pong between them for every request instead of handing over a
//! batch. On the asyncio loop's thread, wakes are collected and delivered
//! together by one `loop.call_soon` callback, after the tasks that are ready
//! in this loop iteration ran. WSGI pool threads hand each wake over at once
//! (see [`wake`] for why they do not hold them).
//!
//! A batch crosses to the reactor as one wake-up ([`WakeQueue`]): tokio
//! writes its driver's eventfd for every task woken from another thread, so
//! the batch goes into a queue and one reactor task, woken once, wakes the
//! batch's tasks from the reactor thread, where a wake is a push onto the
//! run queue.

use std::cell::{Cell, RefCell};
use std::task::Waker;

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use tokio::sync::Notify;

thread_local! {
    static ON_LOOP: Cell<bool> = const { Cell::new(false) };
    static ON_POOL: Cell<bool> = const { Cell::new(false) };
    static DEFERRED_WAKES: RefCell<Vec<Waker>> = const { RefCell::new(Vec::new()) };
}

/// The wakes the app's threads hand to this worker's reactor.
pub(crate) static REACTOR_WAKES: WakeQueue = WakeQueue::new();

/// `loop.call_soon` and the callback that delivers deferred wakes.
pub(crate) static CALL_SOON: PyOnceLock<(Py<PyAny>, Py<PyAny>)> = PyOnceLock::new();

/// Marks the current thread as the one running the asyncio loop.
pub(crate) fn mark_loop_thread() {
    ON_LOOP.set(true);
}

/// Marks the current thread as a WSGI pool thread.
pub(crate) fn mark_pool_thread() {
    ON_POOL.set(true);
}

/// Wakes a reactor task. On the asyncio loop's thread the wake is deferred to
/// a `call_soon` callback shared by every wake of this loop iteration (so
/// never call this under a lock the reactor takes: it may run Python code).
/// On a WSGI pool thread it goes through [`REACTOR_WAKES`] at once: wakes
/// that arrive while the reactor has yet to take the last ones cost no extra
/// wake-up of its thread. A pool thread does not hold wakes back to batch
/// them: the next request it runs may block for as long as the app likes,
/// and a finished response must not wait for it (nor can a thread that
/// waits for the reactor hold the wake the reactor needs). Measured with
/// the WSGI hello benchmark, holding them saved no context switches either;
/// holding them while requests are queued, with a 1 ms timer on the reactor
/// as the bound, served 8-20% less (benches/README.md, "Profile-guided
/// builds").
/// On the reactor itself a wake is a push onto its run queue.
pub(crate) fn wake(waker: Waker) {
    if ON_POOL.get() {
        REACTOR_WAKES.hand_over_one(waker);
        return;
    }
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

/// Delivers the wakes deferred on this thread (the `call_soon` callback):
/// hands them to the reactor in one batch.
#[pyfunction]
pub(crate) fn deliver_wakes() {
    DEFERRED_WAKES.with_borrow_mut(|wakes| REACTOR_WAKES.hand_over(wakes));
}

/// Wakes handed from other threads to a tokio current-thread runtime, which
/// wakes them from its own thread ([`WakeQueue::deliver`]).
pub(crate) struct WakeQueue {
    wakers: Mutex<Vec<Waker>>,
    /// Wakes [`WakeQueue::deliver`]; a notification sent while it is not
    /// waiting is kept for its next wait, so none is lost between taking the
    /// queue and waiting again.
    ready: Notify,
}

impl WakeQueue {
    pub(crate) const fn new() -> WakeQueue {
        WakeQueue {
            wakers: Mutex::new(Vec::new()),
            ready: Notify::const_new(),
        }
    }

    /// Moves `batch` into the queue (leaving it empty, its capacity kept)
    /// and wakes [`WakeQueue::deliver`]: one cross-thread wake-up for the batch.
    pub(crate) fn hand_over(&self, batch: &mut Vec<Waker>) {
        if batch.is_empty() {
            return;
        }
        self.wakers.lock().append(batch);
        self.ready.notify_one();
    }

    /// [`WakeQueue::hand_over`] for a single wake.
    pub(crate) fn hand_over_one(&self, waker: Waker) {
        self.wakers.lock().push(waker);
        self.ready.notify_one();
    }

    /// Wakes each handed-over waker until the runtime drops this task; spawn
    /// it on the runtime whose tasks the wakers belong to, so that every wake
    /// is local. Wakes handed over after that stay queued, unneeded: their
    /// tasks went with the runtime.
    pub(crate) async fn deliver(&self) {
        let mut batch = Vec::new();
        loop {
            self.ready.notified().await;
            std::mem::swap(&mut batch, &mut *self.wakers.lock());
            for waker in batch.drain(..) {
                waker.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;
    use std::thread::ThreadId;
    use std::time::Duration;

    /// A waker that counts its wakes and remembers the thread of the last one.
    #[derive(Default)]
    struct Recorder {
        wakes: AtomicUsize,
        thread: Mutex<Option<ThreadId>>,
    }

    impl Wake for Recorder {
        fn wake(self: Arc<Self>) {
            *self.thread.lock() = Some(std::thread::current().id());
            self.wakes.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Runs the runtime until `done`, or fails after a deadline.
    fn run_until(runtime: &tokio::runtime::Runtime, done: impl Fn() -> bool) {
        runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), async {
                while !done() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
            .await
            .expect("every handed-over wake is delivered");
        });
    }

    #[test]
    fn a_batch_from_another_thread_is_woken_on_the_runtime_thread() {
        let queue = Arc::new(WakeQueue::new());
        let runtime = runtime();
        let delivering = Arc::clone(&queue);
        runtime.spawn(async move { delivering.deliver().await });
        let recorders: Vec<Arc<Recorder>> = (0..3).map(|_| Arc::default()).collect();
        let mut batch: Vec<Waker> = recorders
            .iter()
            .map(|r| Waker::from(Arc::clone(r)))
            .collect();
        std::thread::scope(|scope| {
            scope.spawn(|| queue.hand_over(&mut batch));
        });
        assert!(batch.is_empty(), "the batch moved into the queue");
        run_until(&runtime, || {
            recorders
                .iter()
                .all(|r| r.wakes.load(Ordering::SeqCst) == 1)
        });
        let here = Some(std::thread::current().id());
        assert!(recorders.iter().all(|r| *r.thread.lock() == here));
    }

    /// A waker that, when woken, hands `next` to `queue`: a batch that
    /// arrives while the delivery is between taking the queue and waiting again.
    struct HandsOver {
        queue: Arc<WakeQueue>,
        next: Mutex<Option<Waker>>,
    }

    impl Wake for HandsOver {
        fn wake(self: Arc<Self>) {
            let mut batch: Vec<Waker> = self.next.lock().take().into_iter().collect();
            self.queue.hand_over(&mut batch);
        }
    }

    #[test]
    fn a_batch_handed_over_during_a_delivery_is_not_lost() {
        let queue = Arc::new(WakeQueue::new());
        let runtime = runtime();
        let delivering = Arc::clone(&queue);
        runtime.spawn(async move { delivering.deliver().await });
        let last = Arc::new(Recorder::default());
        let first = Arc::new(HandsOver {
            queue: Arc::clone(&queue),
            next: Mutex::new(Some(Waker::from(Arc::clone(&last)))),
        });
        // Let the delivery wait first, so the second batch finds it busy.
        runtime.block_on(tokio::task::yield_now());
        queue.hand_over(&mut vec![Waker::from(first)]);
        run_until(&runtime, || last.wakes.load(Ordering::SeqCst) == 1);
    }
}
