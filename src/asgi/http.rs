//! The ASGI `receive` and `send` callables of an `http` scope.
//!
//! Both work on the request's [`Exchange`]: they complete at once when the
//! body is buffered or the response buffer has room, and otherwise park an
//! asyncio future there for the reactor to hand back through the bridge.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList, PyString, PyTuple};
use pyo3::{ffi, intern};

use super::ClientDisconnected;
use super::{coroutine_mark, is_done, set_exception, set_result, Ready, WaitKind, Waiter};
use crate::exchange::{
    Chunk, Exchange, FileSpan, Overrun, Progress, Received, ResponseStart, SendMisuse, Sent,
};

/// `loop.create_future` of the worker's event loop, used when an awaitable
/// really has to wait.
pub(crate) static CREATE_FUTURE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Completes a parked future once the reactor says it can proceed.
pub(crate) fn resolve_waiter(py: Python<'_>, waiter: Waiter) -> PyResult<()> {
    let Waiter {
        future,
        exchange,
        kind,
    } = waiter;
    if is_done(py, &future)? {
        // Cancelled meanwhile; nothing was taken for it.
        return Ok(());
    }
    match kind {
        WaitKind::Receive => match exchange.resume_receiver(py, future) {
            Ok(()) => Ok(()),
            Err((future, received)) => set_result(py, &future, received_message(py, received)?),
        },
        // Closed after the reactor took the whole response (hyper ends the
        // body as it takes the last chunk) is not a disconnect.
        WaitKind::Send if exchange.waiting_send_fails() => set_exception(
            py,
            &future,
            ClientDisconnected::new_err("client disconnected"),
        ),
        WaitKind::Send => set_result(py, &future, py.None()),
    }
}

pub(crate) fn new_future(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    let create = CREATE_FUTURE
        .get(py)
        .ok_or_else(|| PyRuntimeError::new_err("rsasgi: no event loop is running"))?;
    create.bind(py).call0()
}

fn received_message(py: Python<'_>, received: Received) -> PyResult<Bound<'_, PyDict>> {
    let message = PyDict::new(py);
    match received {
        Received::Body { data, more } => {
            message.set_item(intern!(py, "type"), intern!(py, "http.request"))?;
            message.set_item(intern!(py, "body"), PyBytes::new(py, &data))?;
            message.set_item(intern!(py, "more_body"), more)?;
        }
        Received::Disconnect => {
            message.set_item(intern!(py, "type"), intern!(py, "http.disconnect"))?;
        }
    }
    Ok(message)
}

/// The `receive` callable of an `http` scope.
#[pyclass(module = "rsasgi", frozen)]
pub(crate) struct HttpReceive {
    exchange: Arc<Exchange>,
}

impl HttpReceive {
    pub(crate) fn new(exchange: Arc<Exchange>) -> HttpReceive {
        HttpReceive { exchange }
    }
}

#[pymethods]
impl HttpReceive {
    /// Marks this callable as a coroutine function (see [`coroutine_mark`]).
    #[getter(_is_coroutine_marker)]
    fn coroutine_marker(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        coroutine_mark(py, false)
    }

    #[getter(_is_coroutine)]
    fn legacy_coroutine_marker(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        coroutine_mark(py, true)
    }

    fn __call__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        if let Some(received) = self.exchange.receive() {
            return ready(py, received);
        }
        let future = new_future(py)?.unbind();
        match self.exchange.park_receiver(py, future.clone_ref(py)) {
            Ok(()) => Ok(future),
            Err((_, received)) => ready(py, received),
        }
    }
}

fn ready(py: Python<'_>, received: Received) -> PyResult<Py<PyAny>> {
    let message = received_message(py, received)?.into_any().unbind();
    Ok(Py::new(py, Ready::new(message))?.into_any())
}

/// One validated `send()` message.
enum Outgoing {
    /// The start, and whether trailers will follow the body.
    Start(ResponseStart, bool),
    Trailers {
        fields: HeaderMap,
        more: bool,
    },
    Body {
        data: Bytes,
        more: bool,
    },
    /// `http.response.pathsend` (always the last) or `http.response.zerocopysend`.
    File {
        span: FileSpan,
        more: bool,
    },
}

fn parse_message(message: &Bound<'_, PyAny>) -> PyResult<Outgoing> {
    let py = message.py();
    let message = message
        .cast::<PyDict>()
        .map_err(|_| PyTypeError::new_err("ASGI messages must be dicts"))?;
    let kind = message
        .get_item(intern!(py, "type"))?
        .ok_or_else(|| PyValueError::new_err("ASGI message has no 'type' key"))?;
    let kind = kind
        .cast::<PyString>()
        .map_err(|_| PyTypeError::new_err("ASGI message 'type' must be a str"))?;
    match kind.to_str()? {
        "http.response.start" => {
            let status = message
                .get_item(intern!(py, "status"))?
                .ok_or_else(|| PyValueError::new_err("http.response.start has no 'status'"))?;
            let status = parse_status(&status, "http.response.start")?;
            let raw = message.get_item(intern!(py, "headers"))?;
            // Sized for a list's headers and the `Server` header the reactor
            // adds, as growing the map rehashes it; other iterables start
            // with the map's first allocation (room for six).
            let listed = raw
                .as_ref()
                .and_then(|raw| raw.cast::<PyList>().ok())
                .map(|list| list.len());
            let mut headers = match listed {
                // Tens of thousands of headers are too many to size for.
                Some(len) => HeaderMap::try_with_capacity(len + 1).unwrap_or_default(),
                None => HeaderMap::new(),
            };
            if let Some(raw) = raw {
                parse_headers(&raw, &mut headers)?;
            }
            let start = ResponseStart::new(status, headers, None).map_err(|reason| {
                PyValueError::new_err(format!("http.response.start: {reason}"))
            })?;
            let trailers = flag(message, intern!(py, "trailers"))?;
            Ok(Outgoing::Start(start, trailers))
        }
        "http.response.body" => {
            let data = match message.get_item(intern!(py, "body"))? {
                None => Bytes::new(),
                Some(body) => buffer_of(&body)?.ok_or_else(|| {
                    PyTypeError::new_err(format!(
                        "http.response.body 'body' must be bytes or another buffer, got {}",
                        type_name(&body)
                    ))
                })?,
            };
            let more = flag(message, intern!(py, "more_body"))?;
            Ok(Outgoing::Body { data, more })
        }
        "http.response.trailers" => {
            let mut fields = HeaderMap::new();
            if let Some(raw) = message.get_item(intern!(py, "headers"))? {
                parse_headers(&raw, &mut fields)?;
            }
            let more = flag(message, intern!(py, "more_trailers"))?;
            Ok(Outgoing::Trailers { fields, more })
        }
        "http.response.pathsend" => {
            let path = message
                .get_item(intern!(py, "path"))?
                .ok_or_else(|| PyValueError::new_err("http.response.pathsend has no 'path'"))?;
            let path: std::path::PathBuf = path.extract().map_err(|_| {
                PyTypeError::new_err(format!(
                    "http.response.pathsend 'path' must be a str, got {}",
                    type_name(&path)
                ))
            })?;
            Ok(Outgoing::File {
                span: open_path(&path)?,
                more: false,
            })
        }
        "http.response.zerocopysend" => {
            let more = flag(message, intern!(py, "more_body"))?;
            Ok(Outgoing::File {
                span: zerocopy_span(message)?,
                more,
            })
        }
        other => Err(PyRuntimeError::new_err(format!(
            "unexpected ASGI message type {other:?} for an http scope (expected \
             'http.response.start', 'http.response.body', 'http.response.trailers', \
             'http.response.pathsend' or 'http.response.zerocopysend')"
        ))),
    }
}

/// The file of an `http.response.pathsend`, whole.
fn open_path(path: &std::path::Path) -> PyResult<FileSpan> {
    if !path.is_absolute() {
        return Err(PyValueError::new_err(format!(
            "http.response.pathsend 'path' must be absolute, got {:?}",
            path.display().to_string()
        )));
    }
    let fail = |err: std::io::Error| os_error(err, path);
    let file = std::fs::File::open(path).map_err(fail)?;
    let meta = file.metadata().map_err(fail)?;
    if !meta.is_file() {
        return Err(fail(std::io::Error::from_raw_os_error(if meta.is_dir() {
            libc::EISDIR
        } else {
            libc::EINVAL
        })));
    }
    Ok(FileSpan {
        file,
        offset: 0,
        len: meta.len(),
    })
}

/// Python's `OSError(errno, strerror, filename)`, which Python turns into
/// the matching subclass (FileNotFoundError, PermissionError…).
fn os_error(err: std::io::Error, path: &std::path::Path) -> PyErr {
    let errno = err.raw_os_error().unwrap_or(libc::EIO);
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    let text = text.split(" (os error").next().unwrap_or(&text).to_owned();
    pyo3::exceptions::PyOSError::new_err((errno, text, path.to_path_buf()))
}

/// The region of an `http.response.zerocopysend`: `file` (a file object with a
/// descriptor), from `offset` (else its current position, which then
/// advances past what is sent, as `os.sendfile` without an offset would),
/// `count` bytes (else to the end).
fn zerocopy_span(message: &Bound<'_, PyDict>) -> PyResult<FileSpan> {
    let py = message.py();
    let file = message
        .get_item(intern!(py, "file"))?
        .ok_or_else(|| PyValueError::new_err("http.response.zerocopysend has no 'file'"))?;
    let fd: i32 = file
        .call_method0(intern!(py, "fileno"))
        .and_then(|fd| fd.extract())
        .map_err(|_| {
            PyTypeError::new_err(format!(
                "http.response.zerocopysend 'file' must be a file object with a descriptor, got {}",
                type_name(&file)
            ))
        })?;
    let number = |key: &Bound<'_, PyString>| -> PyResult<Option<u64>> {
        match message.get_item(key)? {
            Some(value) if !value.is_none() => value.extract().map(Some).map_err(|_| {
                PyValueError::new_err(format!(
                    "http.response.zerocopysend '{key}' must be a non-negative int, got {}",
                    type_name(&value)
                ))
            }),
            _ => Ok(None),
        }
    };
    let offset = number(intern!(py, "offset"))?;
    let count = number(intern!(py, "count"))?;
    // Buffered writes must reach the descriptor first.
    if file.hasattr(intern!(py, "flush"))? {
        let _ = file.call_method0(intern!(py, "flush"));
    }
    let start = match offset {
        Some(offset) => offset,
        None => file.call_method0(intern!(py, "tell"))?.extract()?,
    };
    let span = FileSpan::from_descriptor(fd, start, count).map_err(|err| {
        PyValueError::new_err(format!(
            "http.response.zerocopysend 'file' cannot be sent: {err}"
        ))
    })?;
    if offset.is_none() {
        file.call_method1(intern!(py, "seek"), (span.offset + span.len,))?;
    }
    Ok(span)
}

/// A boolean key of a message (`more_body`, `trailers`…): false when absent.
fn flag(message: &Bound<'_, PyDict>, key: &Bound<'_, PyString>) -> PyResult<bool> {
    match message.get_item(key)? {
        None => Ok(false),
        Some(value) => value.is_truthy(),
    }
}

pub(crate) fn type_name(value: &Bound<'_, PyAny>) -> String {
    value
        .get_type()
        .name()
        .map(|name| name.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Bodies from this size up are lent to the reactor rather than copied (see
/// [`bytes_of`]). Below it a copy costs less than handing the object back:
/// a small copy is a few dozen instructions, a release through pyo3's
/// reference pool takes a lock on each side.
const LEND_FROM: usize = 1024;

/// The data of a `bytes` or `bytearray` the app sent, as `Bytes` the reactor
/// can write from after the GIL is released.
///
/// A `bytes` object is immutable, and its buffer stays where it is for as
/// long as the object lives, so a large one is not copied: the `Bytes` holds
/// a reference to the object (pyo3's `PyBackedBytes`) and reads its buffer
/// in place. The reactor drops that reference once the data is written,
/// without the GIL; pyo3 then queues the decref in its reference pool, and
/// the Python thread applies it the next time it calls into rsasgi (every
/// request and every drain does). A `bytearray` can change under us, so it
/// is always copied.
pub(crate) fn bytes_of(value: &Bound<'_, PyAny>) -> Option<Bytes> {
    if let Ok(bytes) = value.cast::<PyBytes>() {
        let data = bytes.as_bytes();
        if data.len() < LEND_FROM {
            return Some(Bytes::copy_from_slice(data));
        }
        return Some(Bytes::from_owner(PyBackedBytes::from(bytes.clone())));
    }
    if let Ok(array) = value.cast::<PyByteArray>() {
        return Some(Bytes::from(array.to_vec()));
    }
    None
}

/// The data of a body or WebSocket message an ASGI app sent: `bytes` and
/// `bytearray` as [`bytes_of`] takes them, and any other object with the
/// buffer protocol (a `memoryview`, which Starlette's `Response` and
/// `StreamingResponse` pass on; an `array`, a NumPy array) as the bytes
/// `bytes(obj)` gives, which is what uvicorn's transport writes. `None` for
/// an object that is no buffer.
///
/// The memory behind a buffer may belong to something mutable (a
/// `bytearray`, an `mmap`) and change once `send()` returns, so it is
/// copied, as a `bytearray` is.
pub(crate) fn buffer_of(value: &Bound<'_, PyAny>) -> PyResult<Option<Bytes>> {
    if let Some(data) = bytes_of(value) {
        return Ok(Some(data));
    }
    let py = value.py();
    // Checked first: `PyBytes_FromObject` below also takes an iterable of
    // ints (`[104, 105]` is b"hi"), which no app means as a body.
    // SAFETY: `value` is a live object and the GIL is held.
    if unsafe { ffi::PyObject_CheckBuffer(value.as_ptr()) } == 0 {
        return Ok(None);
    }
    // Unsigned bytes, the format of a memoryview of bytes: one copy, in C
    // order when the view is strided.
    if let Ok(buffer) = PyBuffer::<u8>::get(value) {
        return Ok(Some(Bytes::from(buffer.to_vec(py)?)));
    }
    // Wider or signed items (`array('i')`): their memory byte for byte.
    // SAFETY: as above; the call returns a new reference or sets an error.
    let copy =
        unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyBytes_FromObject(value.as_ptr())) }?;
    Ok(bytes_of(&copy))
}

/// The `status` of a response start message, `kind` naming the message
/// (`http.response.start`, `websocket.http.response.start`) in errors.
pub(crate) fn parse_status(status: &Bound<'_, PyAny>, kind: &str) -> PyResult<StatusCode> {
    if status.is_instance_of::<pyo3::types::PyBool>()
        || !status.is_instance_of::<pyo3::types::PyInt>()
    {
        return Err(PyTypeError::new_err(format!(
            "{kind} 'status' must be an int, got {} {}",
            type_name(status),
            status.repr()?
        )));
    }
    let code: i64 = status.extract().unwrap_or(-1);
    match u16::try_from(code)
        .ok()
        .filter(|code| (200..=599).contains(code))
        .and_then(|code| StatusCode::from_u16(code).ok())
    {
        Some(status) => Ok(status),
        None => Err(PyValueError::new_err(format!(
            "{kind} 'status' must be between 200 and 599, got {code}"
        ))),
    }
}

/// The two items of a header pair. Any two-item iterable will do (the
/// spec's examples use lists and tuples); tuples and lists, which apps send,
/// are read without the iterator protocol.
fn header_pair<'py>(pair: &Bound<'py, PyAny>) -> Option<[Bound<'py, PyAny>; 2]> {
    if let Ok(tuple) = pair.cast::<PyTuple>() {
        return match tuple.len() {
            2 => Some([tuple.get_item(0).ok()?, tuple.get_item(1).ok()?]),
            _ => None,
        };
    }
    if let Ok(list) = pair.cast::<PyList>() {
        return match list.len() {
            2 => Some([list.get_item(0).ok()?, list.get_item(1).ok()?]),
            _ => None,
        };
    }
    let items = pair
        .try_iter()
        .ok()?
        .take(3)
        .collect::<PyResult<Vec<_>>>()
        .ok()?;
    <[_; 2]>::try_from(items).ok()
}

/// How many response header names [`header_name`] remembers.
const NAME_SLOTS: usize = 32;

/// The longest name (in bytes) it keeps.
const NAME_MAX_LEN: usize = 64;

/// Response header names already checked and converted, found by the
/// identity of the bytes object the app passed. Starlette, FastAPI and
/// hand-written apps send the same literals (`b"content-type"`) on every
/// response, so they skip the parse; a name made anew each time (Django's
/// ASGI handler encodes its names per response) just replaces its slot.
/// As for WSGI's cache (`wsgi::response::HeaderCache`): a bytes object never
/// changes, and its entry holds a reference to it, so its address cannot be
/// taken by another object while the entry lives; only exact `bytes` are
/// kept, as a subclass may carry more than its bytes. One table for the
/// worker: messages are parsed with the GIL held, so the lock is never
/// contended, and it is held for one slot's look-up only (iterating the
/// app's headers may run its code).
static NAMES: parking_lot::Mutex<[Option<NameEntry>; NAME_SLOTS]> =
    parking_lot::Mutex::new([const { None }; NAME_SLOTS]);

/// A name the app sent, and what it converted to.
type NameEntry = (Py<PyBytes>, HeaderName);

fn name_slot(name: &Bound<'_, PyBytes>) -> usize {
    // Python objects are 16-byte aligned: the low bits say nothing.
    (name.as_ptr() as usize >> 4) % NAME_SLOTS
}

/// The header name `name` holds, from [`NAMES`] when it was seen before.
fn header_name(name: &Bound<'_, PyBytes>) -> PyResult<HeaderName> {
    let slot = name_slot(name);
    if let Some((seen, converted)) = &NAMES.lock()[slot] {
        if seen.as_ptr() == name.as_ptr() {
            return Ok(converted.clone());
        }
    }
    let bytes = name.as_bytes();
    let converted = HeaderName::from_bytes(bytes).map_err(|_| {
        PyValueError::new_err(format!(
            "invalid response header name {:?}",
            String::from_utf8_lossy(bytes)
        ))
    })?;
    if bytes.len() <= NAME_MAX_LEN && name.is_exact_instance_of::<PyBytes>() {
        let entry = Some((name.clone().unbind(), converted.clone()));
        // The entry replaced is dropped once the lock is released.
        let _replaced = std::mem::replace(&mut NAMES.lock()[slot], entry);
    }
    Ok(converted)
}

pub(crate) fn parse_headers(raw: &Bound<'_, PyAny>, headers: &mut HeaderMap) -> PyResult<()> {
    let iter = raw.try_iter().map_err(|_| {
        PyTypeError::new_err("http.response.start 'headers' must be an iterable of [name, value]")
    })?;
    for pair in iter {
        let pair = pair?;
        let Some([name, value]) = header_pair(&pair) else {
            return Err(PyTypeError::new_err(format!(
                "each response header must be a [name, value] pair of bytes, got {}",
                pair.repr().map(|r| r.to_string()).unwrap_or_default()
            )));
        };
        let (Ok(name), Ok(value)) = (name.cast::<PyBytes>(), value.cast::<PyBytes>()) else {
            return Err(PyTypeError::new_err(format!(
                "response header names and values must be bytes, got ({}, {})",
                type_name(&name),
                type_name(&value)
            )));
        };
        let name = header_name(name)?;
        // As for WSGI (see wsgi::response): no spaces or tabs around it.
        let value = value.as_bytes();
        let start = value.iter().position(|b| !matches!(b, b' ' | b'\t'));
        let end = value.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
        let value = match (start, end) {
            (Some(start), Some(end)) => &value[start..=end],
            _ => &[],
        };
        let value = HeaderValue::from_bytes(value).map_err(|_| {
            PyValueError::new_err(format!(
                "invalid value for response header {:?}: control characters (CR, LF, NUL) are not allowed",
                name.as_str()
            ))
        })?;
        headers.append(name, value);
    }
    Ok(())
}

/// The `send` callable of an `http` scope.
#[pyclass(module = "rsasgi", frozen)]
pub(crate) struct HttpSend {
    exchange: Arc<Exchange>,
}

impl HttpSend {
    pub(crate) fn new(exchange: Arc<Exchange>) -> HttpSend {
        HttpSend { exchange }
    }
}

fn misuse_error(misuse: SendMisuse) -> PyErr {
    match misuse {
        SendMisuse::Closed => ClientDisconnected::new_err("client disconnected"),
        SendMisuse::AlreadyStarted => PyRuntimeError::new_err(
            "unexpected ASGI message 'http.response.start': the response has already started",
        ),
        SendMisuse::BodyBeforeStart => PyRuntimeError::new_err(
            "unexpected ASGI message 'http.response.body' before 'http.response.start'",
        ),
        SendMisuse::AlreadyComplete => PyRuntimeError::new_err(
            "unexpected ASGI message 'http.response.body': the response is already complete",
        ),
        SendMisuse::TrailersNotAnnounced => PyRuntimeError::new_err(
            "unexpected ASGI message 'http.response.trailers': 'http.response.start' did not \
             set 'trailers': True",
        ),
        SendMisuse::TrailersBeforeBodyEnd => PyRuntimeError::new_err(
            "unexpected ASGI message 'http.response.trailers' before the last \
             'http.response.body' (more_body=False)",
        ),
        SendMisuse::PastContentLength(Overrun { declared, sent }) => {
            PyRuntimeError::new_err(format!(
                "response body longer than its Content-Length: {sent} bytes sent so far against \
                 Content-Length {declared}; the first {declared} were sent and the response ended there"
            ))
        }
    }
}

#[pymethods]
impl HttpSend {
    /// Marks this callable as a coroutine function (see [`coroutine_mark`]).
    #[getter(_is_coroutine_marker)]
    fn coroutine_marker(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        coroutine_mark(py, false)
    }

    #[getter(_is_coroutine)]
    fn legacy_coroutine_marker(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        coroutine_mark(py, true)
    }

    fn __call__(&self, py: Python<'_>, message: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let exchange = &self.exchange;
        let sent = match parse_message(message)? {
            Outgoing::Start(start, trailers) => exchange.send_start(start).map(|()| {
                // Only for a start that was taken, not for a second one refused.
                if trailers {
                    exchange.expect_trailers();
                }
                Sent::Queued
            }),
            Outgoing::Trailers { fields, more } => {
                exchange.send_trailers(fields, more).map(|()| Sent::Queued)
            }
            Outgoing::Body { data, more } => exchange.send_body(data, more),
            Outgoing::File { span, more } => exchange.send_body(Chunk::File(span), more),
        }
        .map_err(misuse_error)?;
        match sent {
            Sent::Full => {
                let future = new_future(py)?.unbind();
                if exchange.park_sender(py, future.clone_ref(py)).is_none() {
                    return Ok(future);
                }
                Ready::none(py)
            }
            Sent::Queued => Ready::none(py),
            // Sends that go nowhere would otherwise complete at once: an app
            // streaming in a loop that awaits nothing else would hold the
            // event loop, and every other request of the worker.
            Sent::Dropped => Ready::after_a_turn(py),
        }
    }

    /// Called by the task wrapper when the app returns (`exc` is None) or raises
    /// (`shutdown`: a `CancelledError` the shutdown caused). Ends the response the
    /// way the spec asks and logs what went wrong.
    #[pyo3(signature = (exc=None, shutdown=false))]
    fn _finish(
        &self,
        py: Python<'_>,
        exc: Option<Bound<'_, PyAny>>,
        shutdown: bool,
    ) -> PyResult<()> {
        let exchange = &self.exchange;
        let Progress {
            started,
            head_sent,
            complete,
            closed,
        } = exchange.progress();
        // A response left incomplete becomes a 500, or an aborted connection.
        exchange.abort();
        // The app is done with this exchange: release a body reader still waiting for it.
        exchange.finish_app();
        // Formatted only for a log line: most requests end well and log nothing here.
        let request = || exchange.request_line();
        match exc {
            None if !started && !closed => {
                tracing::error!(
                    "ASGI callable returned without starting a response while handling \"{}\"; sent 500",
                    request()
                );
            }
            None if !head_sent && !closed => {
                tracing::error!(
                    "ASGI callable returned after 'http.response.start' without sending the body \
                     of the response to \"{}\"; sent 500",
                    request()
                );
            }
            None if !complete && !closed => {
                tracing::error!(
                    "ASGI callable returned without completing the response to \"{}\"; connection aborted",
                    request()
                );
            }
            None => {}
            Some(exc) => {
                // The client left mid-response: the app's own error for it
                // (an OSError, or a framework's exception raised from our
                // ClientDisconnected) is no bug. After a complete response an
                // OSError is the app's (a background task's file or socket).
                let disconnected = exc.is_instance_of::<ClientDisconnected>()
                    || (closed
                        && !complete
                        && (exc.is_instance_of::<pyo3::exceptions::PyOSError>()
                            || caused_by_disconnect(&exc)));
                // One the app raised itself, with no shutdown and no timeout behind
                // it, is its error like any other (uvicorn logs it so too).
                let cancelled = is_cancelled_error(&exc)?;
                if disconnected && exchange.body_refused() {
                    // The server ended it, and has said why (a 400 or 413 line).
                    tracing::debug!(
                        "the app of \"{}\" ended on the disconnect it saw when the server \
                         refused the request body",
                        request()
                    );
                } else if disconnected {
                    tracing::debug!(
                        "client disconnected while the app handled \"{}\"",
                        request()
                    );
                } else if cancelled && shutdown {
                    tracing::warn!("request \"{}\" was cancelled at shutdown", request());
                } else if cancelled && closed {
                    tracing::debug!("request \"{}\" was cancelled after it ended", request());
                } else {
                    let traceback = format_exception(py, &exc);
                    let outcome = if !head_sent {
                        "sent 500"
                    } else if !complete {
                        "connection aborted"
                    } else {
                        "response was already complete"
                    };
                    tracing::error!(
                        "Exception in ASGI application while handling \"{}\" ({outcome})\n{traceback}",
                        request()
                    );
                }
            }
        }
        Ok(())
    }
}

/// Whether `exc` is an `asyncio.CancelledError`.
pub(crate) fn is_cancelled_error(exc: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = exc.py();
    exc.is_instance(
        &py.import(intern!(py, "asyncio"))?
            .getattr(intern!(py, "CancelledError"))?,
    )
}

/// Whether `exc` was raised while handling (or from) a [`ClientDisconnected`]
/// (Starlette turns it into its own `ClientDisconnect`).
fn caused_by_disconnect(exc: &Bound<'_, PyAny>) -> bool {
    let py = exc.py();
    let mut link = exc.clone();
    // A chain can loop in Python: a few links are enough.
    for _ in 0..8 {
        if link.is_instance_of::<ClientDisconnected>() {
            return true;
        }
        let next = [intern!(py, "__cause__"), intern!(py, "__context__")]
            .into_iter()
            .filter_map(|name| link.getattr(name).ok())
            .find(|value| !value.is_none());
        match next {
            Some(next) => link = next,
            None => return false,
        }
    }
    false
}

/// The traceback of a Rust-side `PyErr` as Python prints it.
pub(crate) fn format_error(py: Python<'_>, err: &PyErr) -> String {
    let value = err.value(py);
    if let Some(traceback) = err.traceback(py) {
        let _ = value.setattr(intern!(py, "__traceback__"), traceback);
    }
    format_exception(py, value.as_any())
}

/// The traceback of `exc` as Python prints it.
pub(crate) fn format_exception(py: Python<'_>, exc: &Bound<'_, PyAny>) -> String {
    let formatted = py
        .import(intern!(py, "traceback"))
        .and_then(|tb| tb.call_method1(intern!(py, "format_exception"), (exc,)))
        .and_then(|lines| {
            let lines: Vec<String> = lines.extract()?;
            Ok(lines.concat())
        });
    match formatted {
        Ok(text) => text.trim_end().to_string(),
        Err(_) => exc
            .repr()
            .map(|r| r.to_string())
            .unwrap_or_else(|_| "<unprintable exception>".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_py<T>(f: impl FnOnce(Python<'_>) -> T) -> T {
        Python::initialize();
        Python::attach(f)
    }

    /// The value of the Python expression `code`.
    fn eval<'py>(py: Python<'py>, code: &str) -> Bound<'py, PyAny> {
        py.eval(&std::ffi::CString::new(code).unwrap(), None, None)
            .unwrap()
    }

    #[test]
    fn status_must_be_an_int_in_range() {
        with_py(|py| {
            let ok = 204i64.into_pyobject(py).unwrap().into_any();
            assert_eq!(
                parse_status(&ok, "http.response.start").unwrap(),
                StatusCode::NO_CONTENT
            );
            for bad in ["'200'", "True", "1000", "99", "101", "200.0"] {
                let value = eval(py, bad);
                assert!(
                    parse_status(&value, "http.response.start").is_err(),
                    "{bad} accepted"
                );
            }
        });
    }

    #[test]
    fn headers_must_be_valid_byte_pairs() {
        with_py(|py| {
            let mut headers = HeaderMap::new();
            parse_headers(&eval(py, "[(b'x-a', b'1'), [b'x-a', b'2']]"), &mut headers).unwrap();
            let values: Vec<_> = headers.get_all("x-a").iter().collect();
            assert_eq!(values, ["1", "2"], "duplicates kept in order");
            for bad in [
                "[('x-a', b'1')]",
                "[(b'x-a', 'v')]",
                "[(b'bad name', b'1')]",
                "[(b'x-a', b'a\\r\\nb: c')]",
                "[(b'x-a', b'a\\x00')]",
                "[(b'x-a',)]",
                "5",
            ] {
                let mut headers = HeaderMap::new();
                assert!(
                    parse_headers(&eval(py, bad), &mut headers).is_err(),
                    "{bad} accepted"
                );
            }
        });
    }

    #[test]
    fn header_names_are_remembered_by_identity() {
        with_py(|py| {
            let held = |name: &Bound<'_, PyBytes>| {
                NAMES.lock()[name_slot(name)]
                    .as_ref()
                    .is_some_and(|(seen, _)| seen.as_ptr() == name.as_ptr())
            };
            let headers = eval(py, "[(b'Content-Type', b'text/plain'), (b'X-Mine', b'1')]");
            let mut first = HeaderMap::new();
            parse_headers(&headers, &mut first).unwrap();
            for index in 0..2 {
                let pair = headers.get_item(index).unwrap();
                let name = pair.get_item(0).unwrap();
                assert!(
                    held(name.cast::<PyBytes>().unwrap()),
                    "name {index} not kept"
                );
            }
            let mut again = HeaderMap::new();
            parse_headers(&headers, &mut again).unwrap();
            assert_eq!(first, again);
            assert_eq!(again["x-mine"], "1");
            // A bytes subclass or a long name is converted, never kept.
            let odd = eval(
                py,
                "[(type('B', (bytes,), {})(b'x-sub'), b'1'), (b'x-' + b'n' * 100, b'2')]",
            );
            let mut map = HeaderMap::new();
            parse_headers(&odd, &mut map).unwrap();
            assert_eq!(map["x-sub"], "1");
            assert_eq!(map.len(), 2);
            for index in 0..2 {
                let pair = odd.get_item(index).unwrap();
                let name = pair.get_item(0).unwrap();
                assert!(!held(name.cast::<PyBytes>().unwrap()), "name {index} kept");
            }
            // A bad name fails each time and is not kept.
            let bad = eval(py, "[(b'bad name', b'1')]");
            for _ in 0..2 {
                assert!(parse_headers(&bad, &mut HeaderMap::new()).is_err());
            }
            let pair = bad.get_item(0).unwrap();
            let name = pair.get_item(0).unwrap();
            assert!(!held(name.cast::<PyBytes>().unwrap()));
        });
    }

    #[test]
    fn messages_are_checked_by_type() {
        with_py(|py| {
            assert!(matches!(
                parse_message(&eval(
                    py,
                    "{'type': 'http.response.body', 'body': b'x', 'more_body': True}"
                ))
                .unwrap(),
                Outgoing::Body { more: true, .. }
            ));
            assert!(parse_message(&eval(py, "{'type': 'http.response.bogus'}")).is_err());
            assert!(
                parse_message(&eval(py, "{'type': 'http.response.body', 'body': 'text'}")).is_err()
            );
            assert!(parse_message(&eval(py, "{'status': 200}")).is_err());
            assert!(parse_message(&eval(py, "[('type', 'http.response.start')]")).is_err());
        });
    }
}
