//! Waking reactor tasks from the app's threads, in batches.
//!
//! `send()` stores response parts in an exchange and wakes the reactor task
//! waiting there. The reactor and the Python thread usually share a core,
//! and a wake-up makes the kernel switch threads at once, so waking per call
//! would ping-pong between them for every request instead of handing over a
//! batch. On the asyncio loop's thread, wakes are collected and delivered
//! together by one `loop.call_soon` callback, after the tasks that are ready
//! in this loop iteration ran. WSGI pool threads hold the wakes of finished
//! responses until their queue of requests is empty ([`wake_when_idle`]).

use std::cell::{Cell, RefCell};
use std::task::Waker;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

thread_local! {
    static ON_LOOP: Cell<bool> = const { Cell::new(false) };
    static ON_POOL: Cell<bool> = const { Cell::new(false) };
    static DEFERRED_WAKES: RefCell<Vec<Waker>> = const { RefCell::new(Vec::new()) };
}

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
/// never call this under a lock the reactor takes: it may run Python code);
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
