//! `start_response`, `write()`, and sending the response iterable.
//!
//! Headers wait until the first non-empty body chunk or the first `write()`
//! call (PEP 3333), so an app may still replace them with `exc_info` until
//! then. Sending waits (with the GIL released) while a slow client has a
//! high-water mark of data buffered.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use parking_lot::Mutex;
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyList, PyString, PyTuple, PyType};

use super::errors::WsgiErrors;
use super::file_wrapper::FileWrapper;
use crate::exchange::{Chunk, Exchange, FileSpan, Overrun, Queued, ResponseStart};

/// What `start_response` recorded, shared with the `write` callable.
#[derive(Default)]
pub(crate) struct ResponseState {
    /// The request being answered; None between requests.
    exchange: Option<Arc<Exchange>>,
    /// Status and headers not yet sent.
    pending: Option<ResponseStart>,
    headers_sent: bool,
    called: bool,
    /// The iterable is exhausted and the end of the response queued: a
    /// `write()` after it (from the iterable's `close()`) has no body left
    /// to add to.
    ended: bool,
    /// The body went past the app's Content-Length (and was cut to it):
    /// logged once, whatever the app sends after.
    overran: bool,
}

pub(crate) type SharedResponse = Arc<Mutex<ResponseState>>;

/// A pool thread's `start_response` (with its `write`) and `wsgi.errors`.
///
/// They are made once and bound to each request in turn: making and
/// freeing three Python objects cost about 4% of a hello-world request's
/// instructions. Reuse is safe only while nothing but the pool holds them: an
/// app that kept `start_response` or `write` (in a global, a leaked frame)
/// could call it during a later request and answer that one. So a request
/// reuses them only if their reference counts show no other holder;
/// otherwise it gets new ones, and the kept ones, unbound, raise.
/// `wsgi.errors` is reused on the same terms, as an app that kept it (with
/// its environ) and wrote from another thread would otherwise run its
/// unfinished records into the next request's; the text left unfinished
/// when a request ends is logged then.
pub(crate) struct Callables {
    state: SharedResponse,
    start_response: Py<StartResponse>,
    /// `start_response.start_response`, the bound method the app is given:
    /// CPython calls a builtin method with its arguments in place
    /// (vectorcall), where calling the object itself (`__call__`, a type
    /// slot) packs them into a tuple first.
    call: Py<PyAny>,
    errors: Py<WsgiErrors>,
}

impl Callables {
    fn new(py: Python<'_>) -> PyResult<Callables> {
        let state = SharedResponse::default();
        let write = Py::new(
            py,
            WsgiWrite {
                state: Arc::clone(&state),
            },
        )?;
        let start_response = Py::new(
            py,
            StartResponse {
                state: Arc::clone(&state),
                write,
                headers_seen: Mutex::default(),
            },
        )?;
        let call = start_response
            .bind(py)
            .getattr(intern!(py, "start_response"))?
            .unbind();
        // `weakly_held` reads it as a builtin method's object.
        // SAFETY: `call` is a live object; the check reads its type only.
        if unsafe { pyo3::ffi::PyCFunction_Check(call.as_ptr()) } == 0 {
            return Err(PyRuntimeError::new_err(
                "start_response is not a builtin method (unexpected on this Python)",
            ));
        }
        Ok(Callables {
            state,
            start_response,
            call,
            errors: Py::new(py, WsgiErrors::default())?,
        })
    }

    /// Whether only the pool holds `start_response` and its `write`: the
    /// bound method only here, and not weakly either (a method can be
    /// referred to weakly: a `WeakKeyDictionary` of per-request context
    /// would then reach the next request's), its object only here and in
    /// the method.
    fn unshared(&self, py: Python<'_>) -> bool {
        let write = &self.start_response.get().write;
        only_ours(py, &self.call)
            && !weakly_held(py, &self.call)
            && refcount(py, &self.start_response) == 2
            && only_ours(py, write)
    }

    /// This thread's callables bound to `exchange`: the kept ones when no
    /// one else holds them, else new ones.
    pub(crate) fn bind<'a>(
        kept: &'a mut Option<Callables>,
        py: Python<'_>,
        exchange: &Arc<Exchange>,
    ) -> PyResult<&'a Callables> {
        let callables = match kept.take() {
            Some(callables) if callables.unshared(py) => kept.insert(callables),
            _ => kept.insert(Callables::new(py)?),
        };
        if only_ours(py, &callables.errors) {
            // Text an app's own thread wrote after the last request ended
            // (and then let the stream go) is logged as its own record, not
            // as the start of this request's first one.
            callables.errors.get().flush();
        } else {
            callables.errors = Py::new(py, WsgiErrors::default())?;
        }
        callables.state.lock().exchange = Some(Arc::clone(exchange));
        Ok(callables)
    }

    /// The `start_response` the app is called with.
    pub(crate) fn start_response<'py>(&self, py: Python<'py>) -> &Bound<'py, PyAny> {
        self.call.bind(py)
    }

    pub(crate) fn errors(&self) -> &Py<WsgiErrors> {
        &self.errors
    }

    pub(crate) fn state(&self) -> &SharedResponse {
        &self.state
    }

    /// Ends the request: unbinds the callables (so one the app kept raises)
    /// and logs what is left of a record written to `wsgi.errors`.
    pub(crate) fn release(&self) {
        // Taken under the lock, dropped (the exchange, a head never sent) after it.
        let finished = std::mem::take(&mut *self.state.lock());
        drop(finished);
        self.errors.get().flush();
    }
}

/// The status code and, when it is not the standard one, the reason phrase.
fn parse_status(status: &Bound<'_, PyAny>) -> PyResult<ParsedStatus> {
    let status = status.cast::<PyString>().map_err(|_| {
        PyTypeError::new_err(format!(
            "start_response() status must be a str like \"200 OK\", got {}",
            status.repr().map(|r| r.to_string()).unwrap_or_default()
        ))
    })?;
    let text = status.to_str()?;
    let code = text
        .get(..3)
        .filter(|code| code.bytes().all(|b| b.is_ascii_digit()));
    // A reason phrase with CR/LF could inject headers: refuse control characters.
    let well_formed = code.is_some()
        && (text.len() == 3 || text.as_bytes()[3] == b' ')
        && !text.chars().any(char::is_control);
    match code
        .filter(|_| well_formed)
        .and_then(|code| code.parse::<u16>().ok())
        .filter(|code| (200..=599).contains(code))
        .and_then(|code| StatusCode::from_u16(code).ok())
    {
        Some(status) => {
            let reason = text.get(4..).unwrap_or("").trim();
            let custom = !reason.is_empty() && Some(reason) != status.canonical_reason();
            if !custom {
                return Ok((status, None));
            }
            // A native string, like the header values: latin-1 on the wire.
            let latin1: Option<Vec<u8>> = reason
                .chars()
                .map(|c| u8::try_from(u32::from(c)).ok())
                .collect();
            let Some(latin1) = latin1 else {
                return Err(PyValueError::new_err(format!(
                    "start_response() status {text:?} has characters outside latin-1 in its reason phrase"
                )));
            };
            Ok((status, hyper::ext::ReasonPhrase::try_from(latin1).ok()))
        }
        None => Err(PyValueError::new_err(format!(
            "start_response() status must be \"NNN Reason\" with NNN from 200 to 599, got {text:?}"
        ))),
    }
}

/// Whether `object` has no holder but the one reference we have.
fn only_ours<T>(py: Python<'_>, object: &Py<T>) -> bool {
    refcount(py, object) == 1
}

/// Whether a weak reference to `method`, a builtin method, is alive.
fn weakly_held(_py: Python<'_>, method: &Py<PyAny>) -> bool {
    // SAFETY: `method` is the bound builtin method made in `Callables::new`
    // (`PyCFunction_Check` holds), so its object is a PyCFunctionObject; the
    // GIL is held (`_py`), so no weak reference is made or dropped meanwhile.
    unsafe {
        let function = method.as_ptr().cast::<pyo3::ffi::PyCFunctionObject>();
        !(*function).m_weakreflist.is_null()
    }
}

/// How many references `object` has.
fn refcount<T>(_py: Python<'_>, object: &Py<T>) -> isize {
    // SAFETY: `object` is a live object we hold a reference to, and with
    // the GIL held (`_py`) no other thread changes its count meanwhile
    // (rsasgi does not support free-threaded CPython builds).
    unsafe { pyo3::ffi::Py_REFCNT(object.as_ptr()) }
}

/// How many header names, and as many values, a pool thread's
/// `start_response` remembers.
const CACHE_SLOTS: usize = 32;

/// The longest str (in code points) the header cache keeps.
const CACHE_MAX_LEN: usize = 128;

/// Response header names and values (and the last status) already checked
/// and converted, found by the identity of the str the app passed. Apps
/// mostly send the same literals ("200 OK", "Content-Type",
/// "text/html; charset=utf-8") on every request, so most skip the
/// conversion. A str never changes, and the cache holds a reference to it,
/// so its address cannot be taken by another object while its entry lives.
/// Direct-mapped: a str the app makes anew each time just replaces an entry.
/// Only plain `str` objects up to [`CACHE_MAX_LEN`] are kept: a subclass may
/// carry more than its text, and a long value would be held on to for
/// nothing.
#[derive(Default)]
pub(crate) struct HeaderCache {
    names: [Option<(Py<PyString>, HeaderName)>; CACHE_SLOTS],
    values: [Option<(Py<PyString>, HeaderValue)>; CACHE_SLOTS],
    /// The last status str and what it parsed to: an app answers most
    /// requests with the same `"200 OK"` literal.
    status: Option<(Py<PyString>, ParsedStatus)>,
}

type ParsedStatus = (StatusCode, Option<hyper::ext::ReasonPhrase>);

fn cache_slot(text: &Bound<'_, PyString>) -> usize {
    // Python objects are 16-byte aligned: the low bits say nothing.
    (text.as_ptr() as usize >> 4) % CACHE_SLOTS
}

fn cacheable(text: &Bound<'_, PyString>) -> bool {
    text.is_exact_instance_of::<PyString>() && text.len().is_ok_and(|len| len <= CACHE_MAX_LEN)
}

impl HeaderCache {
    fn status(&mut self, status: &Bound<'_, PyAny>) -> PyResult<ParsedStatus> {
        match status.cast::<PyString>() {
            Ok(text) => remembered(&mut self.status, text, || parse_status(status)),
            // Not a str: parse_status says so.
            Err(_) => parse_status(status),
        }
    }

    fn name(&mut self, text: &Bound<'_, PyString>) -> PyResult<HeaderName> {
        remembered(&mut self.names[cache_slot(text)], text, || {
            header_name(text)
        })
    }

    fn value(
        &mut self,
        name: &Bound<'_, PyString>,
        text: &Bound<'_, PyString>,
    ) -> PyResult<HeaderValue> {
        remembered(&mut self.values[cache_slot(text)], text, || {
            header_value(name, text)
        })
    }
}

/// What `text` converted to: from `entry` when it holds this very str,
/// else converted now (and kept there, if [`cacheable`]).
fn remembered<T: Clone>(
    entry: &mut Option<(Py<PyString>, T)>,
    text: &Bound<'_, PyString>,
    convert: impl FnOnce() -> PyResult<T>,
) -> PyResult<T> {
    if let Some((seen, converted)) = entry {
        if seen.as_ptr() == text.as_ptr() {
            return Ok(converted.clone());
        }
    }
    let converted = convert()?;
    if cacheable(text) {
        *entry = Some((text.clone().unbind(), converted.clone()));
    }
    Ok(converted)
}

fn header_name(text: &Bound<'_, PyString>) -> PyResult<HeaderName> {
    let name = text.to_str()?;
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| PyValueError::new_err(format!("invalid response header name {name:?}")))
}

fn header_value(name: &Bound<'_, PyString>, text: &Bound<'_, PyString>) -> PyResult<HeaderValue> {
    // The spaces and tabs around a value are not part of it (RFC 9110
    // §5.5), and HTTP/2 clients refuse a field that keeps them (RFC 9113
    // §8.2.1): Django's WSGI handler gives every Set-Cookie a leading space.
    let value = text.to_str()?.trim_matches([' ', '\t']);
    let header_value = if value.is_ascii() {
        // Most values: their text is already their bytes, so no latin-1
        // byte vector is made on the way.
        HeaderValue::from_str(value).ok()
    } else {
        let latin1: Option<Vec<u8>> = value
            .chars()
            .map(|c| u8::try_from(u32::from(c)).ok())
            .collect();
        latin1.and_then(|bytes| HeaderValue::from_bytes(&bytes).ok())
    };
    header_value.ok_or_else(|| {
        PyValueError::new_err(format!(
            "invalid value for response header {:?}: {value:?} (control characters such as CR, LF, NUL, \
             or characters outside latin-1 are not allowed)",
            name.to_str().unwrap_or_default()
        ))
    })
}

fn parse_headers(
    headers: &Bound<'_, PyAny>,
    mut cache: Option<&mut HeaderCache>,
) -> PyResult<HeaderMap> {
    let list = headers.cast::<PyList>().map_err(|_| {
        PyTypeError::new_err("start_response() headers must be a list of (name, value) tuples")
    })?;
    // Room for the `Server` header the reactor adds, so that it does not
    // make the map grow (rehashing) for an app that sends six headers. A
    // list too long to size the map for (tens of thousands of headers)
    // starts small, as it used to, rather than panic.
    let mut map = HeaderMap::try_with_capacity(list.len() + 1).unwrap_or_default();
    for item in list.iter() {
        let pair = item
            .cast::<PyTuple>()
            .ok()
            .filter(|t| t.len() == 2)
            .ok_or_else(|| {
                PyTypeError::new_err(format!(
                    "each response header must be a (name, value) tuple of str, got {}",
                    item.repr().map(|r| r.to_string()).unwrap_or_default()
                ))
            })?;
        let (name, value) = (pair.get_item(0)?, pair.get_item(1)?);
        let (Ok(name), Ok(value)) = (name.cast::<PyString>(), value.cast::<PyString>()) else {
            return Err(PyTypeError::new_err(format!(
                "response header {} must be a pair of str (PEP 3333 native strings), got ({}, {})",
                pair.repr().map(|r| r.to_string()).unwrap_or_default(),
                name.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default(),
                value
                    .get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default(),
            )));
        };
        let (header_name, header_value) = match cache.as_deref_mut() {
            Some(cache) => (cache.name(name)?, cache.value(name, value)?),
            None => (header_name(name)?, header_value(name, value)?),
        };
        map.append(header_name, header_value);
    }
    Ok(map)
}

/// The `start_response` callable of a pool thread (see [`Callables`]).
#[pyclass(module = "rsasgi", frozen)]
pub(crate) struct StartResponse {
    state: SharedResponse,
    write: Py<WsgiWrite>,
    /// Taken with `try_lock`: never waited for, so a header's `__repr__`
    /// (in an error message) calling back in cannot deadlock.
    headers_seen: Mutex<HeaderCache>,
}

#[pymethods]
impl StartResponse {
    #[pyo3(signature = (status, headers, exc_info=None))]
    fn start_response(
        &self,
        py: Python<'_>,
        status: &Bound<'_, PyAny>,
        headers: &Bound<'_, PyAny>,
        exc_info: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<WsgiWrite>> {
        let exc_info = exc_info.filter(|info| !info.is_none());
        // Read under the lock, acted on after it: `exc_info` is the app's
        // object, and indexing it runs the app's code.
        let (headers_sent, called) = {
            let st = self.state.lock();
            if st.exchange.is_none() {
                return Err(PyRuntimeError::new_err(
                    "start_response() called after its request ended",
                ));
            }
            (st.headers_sent, st.called)
        };
        match exc_info {
            Some(info) if headers_sent => {
                // PEP 3333: too late to change anything; re-raise the original error.
                let exc = info.get_item(1)?;
                return Err(PyErr::from_value(exc));
            }
            None if called => {
                return Err(PyRuntimeError::new_err(
                    "start_response() called a second time without exc_info",
                ));
            }
            _ => {}
        }
        let mut seen = self.headers_seen.try_lock();
        let (status, reason) = match seen.as_deref_mut() {
            Some(cache) => cache.status(status)?,
            None => parse_status(status)?,
        };
        let headers = parse_headers(headers, seen.as_deref_mut())?;
        drop(seen);
        let start = ResponseStart::new(status, headers, reason)
            .map_err(|reason| PyValueError::new_err(format!("start_response(): {reason}")))?;
        // The GIL has been held since the check above, so the request cannot
        // have ended (`Callables::release`) in between.
        let mut st = self.state.lock();
        st.called = true;
        st.pending = Some(start);
        drop(st);
        Ok(self.write.clone_ref(py))
    }
}

/// The `write(data)` callable returned by `start_response`.
#[pyclass(module = "rsasgi", frozen)]
pub(crate) struct WsgiWrite {
    state: SharedResponse,
}

#[pymethods]
impl WsgiWrite {
    fn __call__(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let data = bytes_of(data)?;
        let Some(exchange) = self.state.lock().exchange.clone() else {
            return Err(PyRuntimeError::new_err(
                "write() called after its request ended",
            ));
        };
        if self.state.lock().ended {
            // PEP 3333 ends the body with the iterable. Queued, more data
            // would reopen a complete response and leave it cut short.
            return if data.is_empty() {
                Ok(())
            } else {
                Err(PyRuntimeError::new_err(
                    "write() called after the response iterable was exhausted: \
                     the response is complete",
                ))
            };
        }
        match send(py, &exchange, &self.state, data, Source::Write)? {
            Sent::Queued | Sent::PastLength(_) => Ok(()),
            // A HEAD, 204 or 304 response is over once its head is written:
            // the rest of the body goes nowhere, as it would have anyway.
            Sent::Gone
                if exchange.method == http::Method::HEAD || exchange.response_is_bodiless() =>
            {
                Ok(())
            }
            Sent::Gone => Err(crate::asgi::ClientDisconnected::new_err(
                "client disconnected",
            )),
        }
    }
}

fn bytes_of(value: &Bound<'_, PyAny>) -> PyResult<Bytes> {
    crate::asgi::http::bytes_of(value).ok_or_else(|| {
        PyTypeError::new_err(format!(
            "WSGI response data must be bytes, got {}",
            crate::asgi::http::type_name(value)
        ))
    })
}

/// What became of a piece of a WSGI response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Queued,
    /// The client has gone away.
    Gone,
    /// The app's Content-Length was reached: the body was cut to it (and the
    /// cut logged, once), so the app may stop (PEP 3333: "the server should
    /// not transmit more bytes to the client than the header allows, and
    /// should stop iterating over the response when enough data has been
    /// sent"). `write()` past it is dropped quietly, as gunicorn's is.
    PastLength(Overrun),
}

/// Where a piece of the body comes from, which decides when the head goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The data of a `write()` call. The first call sends the head even with
    /// no data (PEP 3333, as gunicorn does): it is how an app gets its
    /// headers to the client before a body that is slow to come.
    Write,
    /// An item of the response iterable: the head waits for the first one
    /// that is not empty, so the app may still replace it with `exc_info`
    /// until then.
    Item,
    /// The last of the body: a one-item list's item, or nothing once the
    /// iterable is exhausted.
    End,
}

/// Sends `data` (and the headers first, if they are still pending and
/// `source` calls for them).
fn send(
    py: Python<'_>,
    exchange: &Arc<Exchange>,
    state: &SharedResponse,
    data: Bytes,
    source: Source,
) -> PyResult<Sent> {
    let more = source != Source::End;
    let start = {
        let mut st = state.lock();
        st.ended |= !more;
        if st.headers_sent {
            None
        } else if data.is_empty() && source == Source::Item {
            return Ok(Sent::Queued);
        } else {
            let start = st.pending.take().ok_or_else(|| {
                PyRuntimeError::new_err(
                    "the WSGI app sent body data before calling start_response()",
                )
            })?;
            st.headers_sent = true;
            Some(start)
        }
    };
    let sent = queue(py, exchange, start, data, more);
    if let Sent::PastLength(overrun) = sent {
        if !std::mem::replace(&mut state.lock().overran, true) {
            let request = exchange.request_line();
            let Overrun { declared, sent } = overrun;
            let body = if more {
                format!("at least {sent} bytes")
            } else {
                format!("{sent} bytes")
            };
            tracing::warn!(
                "\"{request}\": the app's Content-Length is {declared} but its body {body}; sent the first {declared}"
            );
        }
    }
    Ok(sent)
}

/// Hands a response part to the reactor. The GIL stays held: releasing it would hand it
/// to a thread waiting for it (with another request) and switch threads on
/// every response. It is released only to wait while a slow client has too
/// much buffered.
fn queue(
    py: Python<'_>,
    exchange: &Arc<Exchange>,
    start: Option<ResponseStart>,
    data: impl Into<Chunk>,
    more: bool,
) -> Sent {
    match exchange.queue_response(start, data, more) {
        Err(()) => Sent::Gone,
        Ok(Queued {
            overran: Some(overrun),
            ..
        }) => Sent::PastLength(overrun),
        Ok(Queued { full: false, .. }) => Sent::Queued,
        Ok(Queued { full: true, .. }) => {
            let exchange = Arc::clone(exchange);
            match py.detach(move || exchange.wait_for_room()) {
                Ok(()) => Sent::Queued,
                Err(()) => Sent::Gone,
            }
        }
    }
}

/// Sends the app's response iterable, then calls its `close()`.
pub(crate) fn respond(
    py: Python<'_>,
    exchange: &Arc<Exchange>,
    state: &SharedResponse,
    iterable: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let sent = stream(py, exchange, state, iterable);
    // A list or tuple has no close(), and asking costs an AttributeError
    // made and dropped on each request.
    let plain =
        iterable.is_exact_instance_of::<PyList>() || iterable.is_exact_instance_of::<PyTuple>();
    // An error looking for close() (a `__getattr__` that raises) is
    // chained like one from close(), not put in place of the iteration's.
    let closed = if plain {
        Ok(())
    } else {
        iterable
            .hasattr(intern!(py, "close"))
            .and_then(|has_close| {
                if has_close {
                    iterable.call_method0(intern!(py, "close")).map(drop)
                } else {
                    Ok(())
                }
            })
    };
    match (sent, closed) {
        // Both failed: close()'s error, with the iteration's as its context, as
        // Python chains an error raised in a `finally` (gunicorn calls close()
        // in one): the traceback logged shows both.
        (Err(sent), Err(closed)) => {
            closed.set_context(py, Some(sent));
            Err(closed)
        }
        (sent, closed) => sent.and(closed),
    }
}

fn stream(
    py: Python<'_>,
    exchange: &Arc<Exchange>,
    state: &SharedResponse,
    iterable: &Bound<'_, PyAny>,
) -> PyResult<()> {
    if let Ok(wrapper) = iterable.cast::<FileWrapper>() {
        if let Some(done) = send_file(py, exchange, state, wrapper.get())? {
            return done;
        }
    }
    // Not a subclass, whose own `__iter__` must make the body.
    if let Ok(list) = iterable.cast_exact::<PyList>() {
        if list.len() == 1 {
            // The whole body is known: send it with the head, so it goes out
            // with a Content-Length.
            let data = bytes_of(&list.get_item(0)?)?;
            return finish(py, exchange, state, data);
        }
    }
    for item in iterable.try_iter()? {
        let data = bytes_of(&item?)?;
        match send(py, exchange, state, data, Source::Item)? {
            Sent::Queued => {}
            Sent::Gone => {
                tracing::debug!("client went away during {}", exchange.request_line());
                return Ok(());
            }
            // Enough was sent: the rest is not asked for.
            Sent::PastLength(_) => return Ok(()),
        }
    }
    finish(py, exchange, state, Bytes::new())
}

fn finish(
    py: Python<'_>,
    exchange: &Arc<Exchange>,
    state: &SharedResponse,
    data: Bytes,
) -> PyResult<()> {
    if !state.lock().called {
        return Err(PyRuntimeError::new_err(
            "the WSGI app returned without calling start_response()",
        ));
    }
    send(py, exchange, state, data, Source::End)?;
    Ok(())
}

/// Sends a `FileWrapper` around a real file from its descriptor: the reactor
/// reads it as the client takes it (the same code as `--static-map` and
/// ASGI's pathsend), so neither Python nor this thread copies it. `None`
/// when reading the file-like is not reading a descriptor (see
/// [`read_descriptor`]), or the descriptor is not a regular file with bytes
/// left by its size: iterate it instead, as PEP 3333 has it
/// (`iter(lambda: filelike.read(blksize), b"")`).
fn send_file(
    py: Python<'_>,
    exchange: &Arc<Exchange>,
    state: &SharedResponse,
    wrapper: &FileWrapper,
) -> PyResult<Option<PyResult<()>>> {
    if state.lock().headers_sent {
        // write() sent the head and some of the body already (PEP 3333
        // allows it before the iterable): the file follows as an iterable.
        return Ok(None);
    }
    let Some((filelike, fd)) = read_descriptor(py, wrapper.filelike.bind(py))? else {
        return Ok(None);
    };
    if filelike.hasattr(intern!(py, "flush"))? {
        let _ = filelike.call_method0(intern!(py, "flush"));
    }
    let offset: u64 = filelike
        .call_method0(intern!(py, "tell"))
        .and_then(|pos| pos.extract())
        .unwrap_or(0);
    let mut span = match FileSpan::from_descriptor(fd, offset, None) {
        // Files of /proc have a size of 0 whatever they hold; the bytes of
        // an empty file, or past the end, are no more read than sent.
        Ok(span) if span.len > 0 => span,
        _ => return Ok(None),
    };

    let mut start = {
        let mut st = state.lock();
        match st.pending.take() {
            Some(start) if !st.headers_sent => {
                st.headers_sent = true;
                // The file is the whole body (see `WsgiWrite::__call__`).
                st.ended = true;
                start
            }
            _ => {
                return Ok(Some(Err(PyRuntimeError::new_err(
                    "wsgi.file_wrapper returned without calling start_response()",
                ))))
            }
        }
    };
    let declared = start
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.trim().parse::<u64>().ok());
    match declared {
        // The app's length wins when it asks for less than the file has.
        Some(declared) => span.len = span.len.min(declared),
        None => {
            start
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(span.len));
            start.content_length = Some(span.len);
        }
    }
    // The span is within the app's length: nothing to cut.
    queue(py, exchange, Some(start), Chunk::File(span), false);
    Ok(Some(Ok(())))
}

/// The file whose descriptor holds the bytes `filelike.read()` returns, and
/// that descriptor: an `io.FileIO` (`open(path, "rb", buffering=0)`), or an
/// `io.BufferedReader` or `io.BufferedRandom` over one (`open(path, "rb")`,
/// `tempfile.TemporaryFile()`); or the one such a file-like reads through,
/// its `read` being that file's (Django's `File` and `FieldFile`, whose
/// `FileResponse` most media goes out by, and `tempfile`'s named files).
/// Others' `fileno()` may read as something else: a `gzip.open()`,
/// `bz2.open()` or `lzma.open()` file's is the compressed file, a text
/// file's is the bytes before decoding.
fn read_descriptor<'py>(
    py: Python<'py>,
    filelike: &Bound<'py, PyAny>,
) -> PyResult<Option<(Bound<'py, PyAny>, i32)>> {
    let file = if is_binary_file(py, filelike)? {
        filelike.clone()
    } else {
        // The object `read` is bound to, under a wrapper's `__wrapped__`.
        let mut read = match filelike.getattr(intern!(py, "read")) {
            Ok(read) => read,
            Err(_) => return Ok(None),
        };
        while let Ok(wrapped) = read.getattr(intern!(py, "__wrapped__")) {
            read = wrapped;
        }
        match read.getattr(intern!(py, "__self__")) {
            Ok(owner) if is_binary_file(py, &owner)? => owner,
            _ => return Ok(None),
        }
    };
    let fd = file
        .call_method0(intern!(py, "fileno"))
        .and_then(|fd| fd.extract::<i32>())
        .ok();
    Ok(fd.map(|fd| (file, fd)))
}

/// Whether reading `file` reads its descriptor's bytes: an `io.FileIO`, or
/// a `BufferedReader` or `BufferedRandom` whose raw file is one.
fn is_binary_file(py: Python<'_>, file: &Bound<'_, PyAny>) -> PyResult<bool> {
    static FILE_IO: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    static BUFFERED_READER: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    static BUFFERED_RANDOM: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    let file_io = FILE_IO.import(py, "io", "FileIO")?;
    if file.is_instance(file_io)? {
        return Ok(true);
    }
    if file.is_instance(BUFFERED_READER.import(py, "io", "BufferedReader")?)?
        || file.is_instance(BUFFERED_RANDOM.import(py, "io", "BufferedRandom")?)?
    {
        return Ok(file
            .getattr(intern!(py, "raw"))
            .is_ok_and(|raw| raw.is_instance(file_io).unwrap_or(false)));
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval<'py>(py: Python<'py>, code: &str) -> Bound<'py, PyAny> {
        py.eval(&std::ffi::CString::new(code).unwrap(), None, None)
            .unwrap()
    }

    #[test]
    fn only_files_whose_reads_are_their_descriptors_bytes_are_sent_from_it() {
        Python::initialize();
        Python::attach(|py| {
            let path = std::env::temp_dir().join(format!("rsasgi-fd-{}", std::process::id()));
            std::fs::write(&path, b"bytes").unwrap();
            let open = |code: &str| {
                let code = code.replace("PATH", &format!("{:?}", path.to_str().unwrap()));
                eval(py, &code)
            };
            for code in [
                "open(PATH, 'rb')",
                "open(PATH, 'rb', buffering=0)",
                "open(PATH, 'r+b')",
                // Django's File: `read` is its file's.
                "type('File', (), {'file': open(PATH, 'rb'), 'read': property(lambda self: \
                 self.file.read), 'close': lambda self: self.file.close()})()",
                "__import__('tempfile').NamedTemporaryFile()",
            ] {
                let file = open(code);
                assert!(read_descriptor(py, &file).unwrap().is_some(), "{code}");
                file.call_method0("close").unwrap();
            }
            for code in [
                "open(PATH, 'r')",
                "__import__('gzip').GzipFile(fileobj=open(PATH, 'rb'))",
                "__import__('io').BytesIO(b'x')",
                "__import__('io').BufferedReader(__import__('io').BytesIO(b'x'))",
                "__import__('tempfile').SpooledTemporaryFile()",
            ] {
                let file = open(code);
                assert!(read_descriptor(py, &file).unwrap().is_none(), "{code}");
            }
            std::fs::remove_file(&path).unwrap();
        });
    }

    #[test]
    fn status_lines_are_checked_and_custom_reasons_kept() {
        Python::initialize();
        Python::attach(|py| {
            let (status, reason) = parse_status(&eval(py, "'200 OK'")).unwrap();
            assert_eq!(status, StatusCode::OK);
            assert!(reason.is_none(), "the standard phrase needs no override");
            let (status, reason) = parse_status(&eval(py, "\"418 I'M A TEAPOT\"")).unwrap();
            assert_eq!(status.as_u16(), 418);
            assert_eq!(reason.unwrap().as_bytes(), b"I'M A TEAPOT");
            for bad in [
                "b'200 OK'",
                "200",
                "'OK'",
                "'20 OK'",
                "'2000 OK'",
                "'200 OK\\r\\nX: y'",
                "''",
            ] {
                assert!(parse_status(&eval(py, bad)).is_err(), "{bad} accepted");
            }
        });
    }

    #[test]
    fn a_status_is_parsed_once_per_str_and_a_bad_one_never_kept() {
        Python::initialize();
        Python::attach(|py| {
            let mut cache = HeaderCache::default();
            let ok = eval(py, "'200 OK'");
            assert_eq!(cache.status(&ok).unwrap().0, StatusCode::OK);
            let kept = cache.status.as_ref().map(|(text, _)| text.as_ptr());
            assert_eq!(kept, Some(ok.as_ptr()), "the str is kept by identity");
            assert_eq!(cache.status(&ok).unwrap(), (StatusCode::OK, None));
            // Another str, even of the same text, is parsed for itself.
            let teapot = eval(py, "\"418 I'M A TEAPOT\"");
            let (status, reason) = cache.status(&teapot).unwrap();
            assert_eq!(status.as_u16(), 418);
            assert_eq!(reason.unwrap().as_bytes(), b"I'M A TEAPOT");
            let (_, reason) = cache.status(&teapot).unwrap();
            assert_eq!(reason.unwrap().as_bytes(), b"I'M A TEAPOT");
            // A refused status is an error every time, and leaves the last good one.
            let bad = eval(py, "'200 OK\\r\\nX: y'");
            assert!(cache.status(&bad).is_err());
            assert!(cache.status(&bad).is_err());
            let kept = cache.status.as_ref().map(|(text, _)| text.as_ptr());
            assert_eq!(kept, Some(teapot.as_ptr()));
            // A str subclass is parsed but not kept.
            let subclass = eval(py, "type('S', (str,), {})('404 Not Found')");
            assert_eq!(cache.status(&subclass).unwrap().0, StatusCode::NOT_FOUND);
            let kept = cache.status.as_ref().map(|(text, _)| text.as_ptr());
            assert_eq!(kept, Some(teapot.as_ptr()));
        });
    }

    #[test]
    fn the_header_cache_goes_by_identity_and_keeps_no_failure() {
        Python::initialize();
        Python::attach(|py| {
            let mut cache = HeaderCache::default();
            let headers = eval(
                py,
                "[('Content-Type', 'text/plain'), ('X-Caf', 'caf\\xe9')]",
            );
            let first = parse_headers(&headers, Some(&mut cache)).unwrap();
            let pair = headers.get_item(1).unwrap();
            let (name, value) = (pair.get_item(0).unwrap(), pair.get_item(1).unwrap());
            let (name, value) = (
                name.cast::<PyString>().unwrap(),
                value.cast::<PyString>().unwrap(),
            );
            let held = |entry: Option<&Py<PyString>>, text: &Bound<'_, PyString>| {
                entry.is_some_and(|seen| seen.as_ptr() == text.as_ptr())
            };
            let name_entry = cache.names[cache_slot(name)].as_ref().map(|(s, _)| s);
            let value_entry = cache.values[cache_slot(value)].as_ref().map(|(s, _)| s);
            assert!(held(name_entry, name) && held(value_entry, value));
            let again = parse_headers(&headers, Some(&mut cache)).unwrap();
            assert_eq!(first, again);
            assert_eq!(again["x-caf"].as_bytes(), b"caf\xe9");
            // A str subclass or a long value is converted, never kept.
            let odd = eval(
                py,
                "[('X-Sub', type('S', (str,), {})('sub')), ('X-Long', 'v' * 200)]",
            );
            let map = parse_headers(&odd, Some(&mut cache)).unwrap();
            assert_eq!(map["x-sub"], "sub");
            assert_eq!(map["x-long"].len(), 200);
            for index in 0..2 {
                let pair = odd.get_item(index).unwrap();
                let value = pair.get_item(1).unwrap();
                let value = value.cast::<PyString>().unwrap();
                let entry = cache.values[cache_slot(value)].as_ref().map(|(s, _)| s);
                assert!(!held(entry, value), "value {index} kept");
            }
            // A bad header fails each time, and leaves nothing behind.
            let bad = eval(py, "[('X-Bad', 'a\\r\\nb')]");
            let before = cache.values.iter().flatten().count();
            for _ in 0..2 {
                assert!(parse_headers(&bad, Some(&mut cache)).is_err());
            }
            assert_eq!(cache.values.iter().flatten().count(), before);
        });
    }

    #[test]
    fn headers_are_native_string_pairs() {
        Python::initialize();
        Python::attach(|py| {
            let map = parse_headers(
                &eval(
                    py,
                    "[('Content-Type', 'text/plain'), ('X-Caf', 'caf\\xe9')]",
                ),
                None,
            )
            .unwrap();
            assert_eq!(map["content-type"], "text/plain");
            assert_eq!(map["x-caf"].as_bytes(), b"caf\xe9", "latin-1 encoded");
            for bad in [
                "[(b'X', 'v')]",
                "[('X', 5)]",
                "[('Bad Name', 'v')]",
                "[('X', 'a\\r\\nb')]",
                "[('X', '\\u20ac')]",
                "(('X', 'v'),)",
            ] {
                assert!(
                    parse_headers(&eval(py, bad), None).is_err(),
                    "{bad} accepted"
                );
            }
        });
    }
}
