//! What `receive()` and `send()` return.
//!
//! `await receive()` and `await send(...)` usually need no waiting: the body is
//! buffered, or there is room for the response. Returning a [`Ready`] avoids
//! creating an asyncio Future and scheduling a loop callback for those calls.
//! Only a real wait creates a future, parked in the exchange (or WebSocket
//! session) until the reactor hands it back as a [`Waiter`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pyo3::exceptions::PyStopIteration;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use crate::exchange::Exchange;
use crate::ws::WsSession;

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

/// Whether an asyncio future is done already (the app cancelled its wait).
pub(crate) fn is_done(py: Python<'_>, future: &Py<PyAny>) -> PyResult<bool> {
    future
        .bind(py)
        .call_method0(intern!(py, "done"))?
        .is_truthy()
}

/// Adds `future` to those waiting, first taking out any already done: a
/// `receive()` cancelled as soon as made (Starlette's `is_disconnected`
/// polls that way) would otherwise pile up for as long as nothing arrives.
/// Every one left is handed back when the wait ends, so a wait made and
/// cancelled meanwhile does not take the place of one still waiting.
///
/// The ones taken out are returned for the caller to drop once it has let
/// go of its lock: ours may be the last reference to a future the app had,
/// and releasing that runs whatever the app hung on it (a weakref callback,
/// a `weakref.finalize`), which may call `receive()` or `send()` again.
#[must_use = "drop the finished futures after letting go of the lock"]
pub(crate) fn park_future(
    py: Python<'_>,
    waiting: &mut Vec<Py<PyAny>>,
    future: Py<PyAny>,
) -> Vec<Py<PyAny>> {
    let finished = waiting
        .extract_if(.., |waiter| is_done(py, waiter).unwrap_or(true))
        .collect();
    waiting.push(future);
    finished
}

/// Completes an asyncio future with `value`.
pub(crate) fn set_result<'py>(
    py: Python<'py>,
    future: &Py<PyAny>,
    value: impl IntoPyObject<'py>,
) -> PyResult<()> {
    future
        .bind(py)
        .call_method1(intern!(py, "set_result"), (value,))?;
    Ok(())
}

/// Completes an asyncio future with the exception of `error`.
pub(crate) fn set_exception(py: Python<'_>, future: &Py<PyAny>, error: PyErr) -> PyResult<()> {
    future
        .bind(py)
        .call_method1(intern!(py, "set_exception"), (error.value(py),))?;
    Ok(())
}

/// What marks `receive` and `send` as coroutine functions, which they act as
/// (each call returns an awaitable): `inspect.iscoroutinefunction` looks for
/// `_is_coroutine_marker` (Python 3.12+), asyncio's and asgiref's on older
/// Pythons for `_is_coroutine`. asgiref's `async_to_sync(send)`, which every
/// Channels sync consumer makes, warned of a "non-async-marked callable"
/// without them. `None` where this Python has no such mark.
pub(crate) fn coroutine_mark(py: Python<'_>, legacy: bool) -> PyResult<Py<PyAny>> {
    static MARK: PyOnceLock<Option<Py<PyAny>>> = PyOnceLock::new();
    static LEGACY_MARK: PyOnceLock<Option<Py<PyAny>>> = PyOnceLock::new();
    let (cell, module, name) = if legacy {
        (&LEGACY_MARK, "asyncio.coroutines", "_is_coroutine")
    } else {
        (&MARK, "inspect", "_is_coroutine_mark")
    };
    let mark = cell.get_or_try_init(py, || -> PyResult<_> {
        Ok(py.import(module)?.getattr(name).ok().map(Bound::unbind))
    })?;
    match mark {
        Some(mark) => Ok(mark.clone_ref(py)),
        None => Err(pyo3::exceptions::PyAttributeError::new_err(name)),
    }
}

/// Completes the first time it is resumed, with `value` as the result of `await`.
///
/// Or the second time, when made by [`Ready::after_a_turn`]: the first time it
/// yields, which gives the event loop a turn (asyncio's bare `yield`: the task
/// is run again on the loop's next turn).
#[pyclass(module = "rsasgi", frozen)]
pub(crate) struct Ready {
    value: Option<Py<PyAny>>,
    turn_first: AtomicBool,
}

static DONE: PyOnceLock<Py<Ready>> = PyOnceLock::new();

impl Ready {
    fn with(value: Option<Py<PyAny>>, turn_first: bool) -> Ready {
        let turn_first = AtomicBool::new(turn_first);
        Ready { value, turn_first }
    }

    pub(crate) fn new(value: Py<PyAny>) -> Ready {
        Ready::with(Some(value), false)
    }

    /// An awaitable whose result is `None`. Nothing in it changes, so one
    /// shared instance serves every `send()`.
    pub(crate) fn none(py: Python<'_>) -> PyResult<Py<PyAny>> {
        let done = DONE.get_or_try_init(py, || Py::new(py, Ready::with(None, false)))?;
        Ok(done.clone_ref(py).into_any())
    }

    /// An awaitable whose result is `None` after the event loop has had a
    /// turn: what a `send()` whose message was dropped (on a closed
    /// connection) returns. Such a send never waits for the socket, so
    /// without the turn an app that sends in a loop and awaits nothing else
    /// would hold the loop, and every other connection of the worker, until
    /// its sends start to raise.
    pub(crate) fn after_a_turn(py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(Py::new(py, Ready::with(None, true))?.into_any())
    }
}

#[pymethods]
impl Ready {
    fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        // Loaded before the swap: the shared instance of `none` is never
        // written.
        if self.turn_first.load(Ordering::Relaxed) && self.turn_first.swap(false, Ordering::Relaxed)
        {
            return Ok(Some(py.None()));
        }
        match &self.value {
            // Exhausting the iterator without an exception object is the
            // cheap way to make `await` evaluate to None.
            None => Ok(None),
            // The value travels in StopIteration's args; wrapping it in a
            // 1-tuple keeps a tuple result from being unpacked into several args.
            Some(value) => Err(PyStopIteration::new_err((value.clone_ref(py),))),
        }
    }

    fn send(&self, py: Python<'_>, _value: Py<PyAny>) -> PyResult<Py<PyAny>> {
        match self.__next__(py)? {
            Some(yielded) => Ok(yielded),
            None => Err(PyStopIteration::new_err(())),
        }
    }

    #[pyo3(signature = (exc, _value=None, _traceback=None))]
    fn throw(
        &self,
        exc: Bound<'_, PyAny>,
        _value: Option<Bound<'_, PyAny>>,
        _traceback: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        Err(PyErr::from_value(exc))
    }

    fn close(&self) {}
}
