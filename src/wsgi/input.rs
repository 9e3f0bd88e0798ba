//! `wsgi.input`: the request body as a binary file, streamed from the socket.
//!
//! Reads wait for the reactor with the GIL released; at most the bytes a
//! read asks for, plus one chunk, are held here.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyList};

use crate::asgi::ClientDisconnected;
use crate::exchange::{BodyRead, Exchange, REQUEST_BODY_HIGH_WATER};

#[pyclass(module = "rsasgi", frozen)]
pub(crate) struct WsgiInput {
    /// The request whose body this reads; `None` for [`NO_BODY`].
    exchange: Option<Arc<Exchange>>,
    /// Bytes received but not yet returned (after a readline, say).
    leftover: Mutex<Bytes>,
}

/// The `wsgi.input` of every request without a body: reads give `b""`.
static NO_BODY: PyOnceLock<Py<WsgiInput>> = PyOnceLock::new();

impl WsgiInput {
    /// The `wsgi.input` of the request of `exchange`. A request known to
    /// have no body (most GETs: the whole of it arrived with the head, and
    /// it was empty) gets one input shared by all of them, which is never
    /// anything but empty; that saves making and freeing an object for
    /// each.
    pub(crate) fn for_request<'py>(
        py: Python<'py>,
        exchange: &Arc<Exchange>,
    ) -> PyResult<Bound<'py, WsgiInput>> {
        if !exchange.has_no_body() {
            return Bound::new(py, WsgiInput::reading(Some(Arc::clone(exchange))));
        }
        let shared = NO_BODY.get_or_try_init(py, || Py::new(py, WsgiInput::reading(None)))?;
        Ok(shared.bind(py).clone())
    }

    fn reading(exchange: Option<Arc<Exchange>>) -> WsgiInput {
        WsgiInput {
            exchange,
            leftover: Mutex::new(Bytes::new()),
        }
    }

    /// The next piece of body (at most `max` bytes), or an empty `Bytes` at the end.
    fn next_piece(&self, py: Python<'_>, max: usize) -> PyResult<Bytes> {
        {
            let mut leftover = self.leftover.lock();
            if !leftover.is_empty() {
                let take = max.min(leftover.len());
                return Ok(leftover.split_to(take));
            }
        }
        let Some(exchange) = &self.exchange else {
            return Ok(Bytes::new());
        };
        let read = match exchange.try_read_body(max) {
            Some(read) => read,
            None => {
                let exchange = Arc::clone(exchange);
                py.detach(move || exchange.read_body_blocking(max))
            }
        };
        match read {
            BodyRead::Data(data) => Ok(data),
            BodyRead::End => Ok(Bytes::new()),
            BodyRead::Closed => Err(ClientDisconnected::new_err(
                "client disconnected before sending the whole request body",
            )),
        }
    }

    fn unread(&self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        let mut leftover = self.leftover.lock();
        let mut joined = BytesMut::with_capacity(data.len() + leftover.len());
        joined.extend_from_slice(&data);
        joined.extend_from_slice(&leftover);
        *leftover = joined.freeze();
    }

    fn read_bytes(&self, py: Python<'_>, size: Option<isize>) -> PyResult<Vec<u8>> {
        let limit = size.filter(|&n| n >= 0).map(|n| n as usize);
        let mut out = Vec::new();
        loop {
            let want = match limit {
                Some(limit) if out.len() >= limit => break,
                Some(limit) => limit - out.len(),
                None => REQUEST_BODY_HIGH_WATER,
            };
            let piece = self.next_piece(py, want)?;
            if piece.is_empty() {
                break;
            }
            out.extend_from_slice(&piece);
        }
        Ok(out)
    }

    fn read_line(&self, py: Python<'_>, size: Option<isize>) -> PyResult<Vec<u8>> {
        let limit = size.filter(|&n| n >= 0).map(|n| n as usize);
        let mut line = Vec::new();
        loop {
            let want = match limit {
                Some(limit) if line.len() >= limit => break,
                Some(limit) => limit - line.len(),
                None => REQUEST_BODY_HIGH_WATER,
            };
            let piece = self.next_piece(py, want)?;
            if piece.is_empty() {
                break;
            }
            if let Some(newline) = piece.iter().position(|&b| b == b'\n') {
                line.extend_from_slice(&piece[..=newline]);
                self.unread(piece.slice(newline + 1..));
                break;
            }
            line.extend_from_slice(&piece);
        }
        Ok(line)
    }
}

#[pymethods]
impl WsgiInput {
    /// Reads `size` bytes (all that is left when `size` is omitted or negative).
    #[pyo3(signature = (size=None))]
    fn read<'py>(&self, py: Python<'py>, size: Option<isize>) -> PyResult<Bound<'py, PyBytes>> {
        let data = self.read_bytes(py, size)?;
        Ok(PyBytes::new(py, &data))
    }

    /// Reads one line, at most `size` bytes of it.
    #[pyo3(signature = (size=None))]
    fn readline<'py>(&self, py: Python<'py>, size: Option<isize>) -> PyResult<Bound<'py, PyBytes>> {
        let line = self.read_line(py, size)?;
        Ok(PyBytes::new(py, &line))
    }

    /// Reads lines until their total size reaches `hint` (all when omitted).
    #[pyo3(signature = (hint=None))]
    fn readlines<'py>(&self, py: Python<'py>, hint: Option<isize>) -> PyResult<Bound<'py, PyList>> {
        let hint = hint.filter(|&n| n > 0).map(|n| n as usize);
        let lines = PyList::empty(py);
        let mut total = 0;
        loop {
            let line = self.read_line(py, None)?;
            if line.is_empty() {
                break;
            }
            total += line.len();
            lines.append(PyBytes::new(py, &line))?;
            if hint.is_some_and(|hint| total >= hint) {
                break;
            }
        }
        Ok(lines)
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let line = self.read_line(py, None)?;
        Ok((!line.is_empty()).then(|| PyBytes::new(py, &line)))
    }
}
