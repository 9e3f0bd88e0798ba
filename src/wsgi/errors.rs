//! `wsgi.errors`: a text stream whose writes go to the server log.

use parking_lot::Mutex;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyString;

/// The most text held back for the newline that ends a record: past it,
/// what is there is logged, so an app that writes without newlines cannot
/// grow the buffer without bound.
const MAX_PENDING: usize = 64 * 1024;

/// Logs each complete write as one record at error level.
///
/// Writers hand the stream whole messages: logging's `StreamHandler` (Flask's
/// default handler writes to `wsgi.errors`) writes a record, traceback
/// and all, in one call ending in a newline, and `print(..., file=...)`
/// writes the text, then the newline. So text is held until a write leaves
/// it ending in a newline, and all of it becomes one record, inner newlines
/// kept: split line by line, a traceback became a score of unrelated
/// records, one per line, in a JSON log. `flush()` logs what is held.
#[pyclass(module = "rsasgi", frozen)]
#[derive(Default)]
pub(crate) struct WsgiErrors {
    pending: Mutex<String>,
}

fn emit(record: &str) {
    let record = record.trim_end_matches(['\r', '\n']);
    tracing::error!(target: crate::logging::WSGI_ERRORS, "{record}");
}

impl WsgiErrors {
    /// Adds `text` to what is held, and takes it all as a record to log if
    /// `ends_record` says it is complete or it is past [`MAX_PENDING`].
    /// Logged by the caller, once the lock is released: a log handler may
    /// run Python code, and it must not find the stream locked.
    fn push(&self, text: &str, ends_record: fn(&str) -> bool) -> Option<String> {
        let mut pending = self.pending.lock();
        pending.push_str(text);
        (ends_record(&pending) || pending.len() > MAX_PENDING)
            .then(|| std::mem::take(&mut *pending))
    }
}

fn ends_in_newline(text: &str) -> bool {
    text.ends_with('\n')
}

#[pymethods]
impl WsgiErrors {
    fn write(&self, text: &str) -> usize {
        if let Some(record) = self.push(text, ends_in_newline) {
            emit(&record);
        }
        text.chars().count()
    }

    /// Any iterable of str, as a file's `writelines` takes (a generator,
    /// `map`), but not one str, whose characters it would write one by one.
    /// One call is one write: `writelines(traceback.format_exception(...))`
    /// logs one record.
    fn writelines(&self, lines: &Bound<'_, PyAny>) -> PyResult<()> {
        if lines.is_instance_of::<PyString>() {
            return Err(PyTypeError::new_err(
                "wsgi.errors.writelines() takes an iterable of str, not a str",
            ));
        }
        // Not locked while the iterable runs: a generator may write too.
        for line in lines.try_iter()? {
            if let Some(record) = self.push(line?.cast::<PyString>()?.to_str()?, |_| false) {
                emit(&record);
            }
        }
        if let Some(record) = self.push("", ends_in_newline) {
            emit(&record);
        }
        Ok(())
    }

    pub(crate) fn flush(&self) {
        let record = std::mem::take(&mut *self.pending.lock());
        if !record.is_empty() {
            emit(&record);
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
