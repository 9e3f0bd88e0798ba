//! An awaitable that is already complete.
//!
//! `await receive()` and `await send(...)` usually need no waiting: the body is
//! buffered, or there is room for the response. Returning a `Ready` avoids
//! creating an asyncio Future and scheduling a loop callback for those calls.

use pyo3::exceptions::PyStopIteration;
use pyo3::prelude::*;

/// Completes the first time it is resumed, with `value` as the result of `await`.
#[pyclass(module = "rsasgi", frozen)]
pub(crate) struct Ready {
    value: Py<PyAny>,
}

impl Ready {
    pub(crate) fn new(value: Py<PyAny>) -> Ready {
        Ready { value }
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

    fn __next__(&self, py: Python<'_>) -> PyResult<()> {
        // The value travels in StopIteration's args; wrapping it in a 1-tuple
        // keeps a tuple result from being unpacked into several args.
        Err(PyStopIteration::new_err((self.value.clone_ref(py),)))
    }

    fn send(&self, py: Python<'_>, _value: Py<PyAny>) -> PyResult<()> {
        self.__next__(py)
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
