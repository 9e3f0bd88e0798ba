//! `wsgi.errors`: a text stream whose lines go to the server log.

use parking_lot::Mutex;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyString;

/// Collects writes and logs each complete line at error level.
#[pyclass(module = "rsasgi", frozen)]
#[derive(Default)]
pub(crate) struct WsgiErrors {
    pending: Mutex<String>,
}

fn emit(line: &str) {
    tracing::error!(target: crate::logging::WSGI_ERRORS, "{line}");
}

#[pymethods]
impl WsgiErrors {
    fn write(&self, text: &str) -> usize {
        let mut pending = self.pending.lock();
        pending.push_str(text);
        while let Some(end) = pending.find('\n') {
            let line: String = pending.drain(..=end).collect();
            emit(line.trim_end_matches(['\r', '\n']));
        }
        text.chars().count()
    }

    /// Any iterable of str, as a file's `writelines` takes (a generator,
    /// `map`), but not one str, whose characters it would write one by one.
    fn writelines(&self, lines: &Bound<'_, PyAny>) -> PyResult<()> {
        if lines.is_instance_of::<PyString>() {
            return Err(PyTypeError::new_err(
                "wsgi.errors.writelines() takes an iterable of str, not a str",
            ));
        }
        for line in lines.try_iter()? {
            self.write(line?.cast::<PyString>()?.to_str()?);
        }
        Ok(())
    }

    pub(crate) fn flush(&self) {
        let mut pending = self.pending.lock();
        if !pending.is_empty() {
            emit(&pending);
            pending.clear();
        }
    }
}

impl Drop for WsgiErrors {
    fn drop(&mut self) {
        let pending = self.pending.get_mut();
        if !pending.is_empty() {
            emit(pending);
        }
    }
}
