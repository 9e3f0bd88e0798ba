//! What `receive()` and `send()` return.
//!
//! `await receive()` and `await send(...)` usually need no waiting: the body is
//! buffered, or there is room for the response. Returning a [`Ready`] avoids
//! creating an asyncio Future and scheduling a loop callback for those calls.
//! Only a real wait creates a future, parked in the exchange (or WebSocket
//! session) until the reactor hands it back as a [`Waiter`].

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

/// Completes the first time it is resumed, with `value` as the result of `await`.
#[pyclass(module = "rsasgi", frozen)]
pub(crate) struct Ready {
    value: Option<Py<PyAny>>,
}

static DONE: PyOnceLock<Py<Ready>> = PyOnceLock::new();

impl Ready {
    pub(crate) fn new(value: Py<PyAny>) -> Ready {
        Ready { value: Some(value) }
    }

    /// An awaitable whose result is `None`. It holds no state, so one shared
    /// instance serves every `send()`.
    pub(crate) fn none(py: Python<'_>) -> PyResult<Py<PyAny>> {
        let done = DONE.get_or_try_init(py, || Py::new(py, Ready { value: None }))?;
        Ok(done.clone_ref(py).into_any())
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

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<()>> {
        match &self.value {
            // Exhausting the iterator without an exception object is the
            // cheap way to make `await` evaluate to None.
            None => Ok(None),
            // The value travels in StopIteration's args; wrapping it in a
            // 1-tuple keeps a tuple result from being unpacked into several args.
            Some(value) => Err(PyStopIteration::new_err((value.clone_ref(py),))),
        }
    }

    fn send(&self, py: Python<'_>, _value: Py<PyAny>) -> PyResult<()> {
        self.__next__(py)?;
        Err(PyStopIteration::new_err(()))
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
