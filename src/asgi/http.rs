//! The ASGI `receive` and `send` callables of an `http` scope.
//!
//! Both work on the request's [`Exchange`]: they complete at once when the
//! body is buffered or the response buffer has room, and otherwise park an
//! asyncio future there for the reactor to hand back through the bridge.

use std::sync::Arc;
use std::task::Waker;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyString};

use super::ClientDisconnected;
use crate::bridge::{wake, Ready, WaitKind, Waiter};
use crate::exchange::{Exchange, ResponseStart, State, RESPONSE_HIGH_WATER, RESPONSE_LOW_WATER};

/// `loop.create_future` of the worker's event loop, used when an awaitable
/// really has to wait.
pub(crate) static CREATE_FUTURE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// What `receive()` returns when it does not have to wait.
enum Received {
    Body { data: Bytes, more: bool },
    Disconnect,
}

fn try_receive(st: &mut State) -> Option<Received> {
    if st.closed && !st.body_complete {
        return Some(Received::Disconnect);
    }
    if !st.body.is_empty() {
        let data = if st.body.len() == 1 {
            st.body.pop_front().unwrap_or_default()
        } else {
            let mut joined = BytesMut::with_capacity(st.body_buffered);
            for chunk in st.body.drain(..) {
                joined.extend_from_slice(&chunk);
            }
            joined.freeze()
        };
        st.body_buffered = 0;
        let more = !st.body_complete;
        st.body_delivered = !more;
        return Some(Received::Body { data, more });
    }
    if st.body_complete && !st.body_delivered {
        st.body_delivered = true;
        return Some(Received::Body {
            data: Bytes::new(),
            more: false,
        });
    }
    if st.closed || st.complete {
        return Some(Received::Disconnect);
    }
    None
}

/// Completes a parked future once the reactor says it can proceed.
pub(crate) fn resolve_waiter(py: Python<'_>, waiter: Waiter) -> PyResult<()> {
    let future = waiter.future.bind(py);
    if future.call_method0(intern!(py, "done"))?.is_truthy()? {
        // Cancelled meanwhile; nothing was taken for it.
        return Ok(());
    }
    let exchange = &waiter.exchange;
    match waiter.kind {
        WaitKind::Receive => {
            let (received, pump) = {
                let mut st = exchange.lock();
                let received = try_receive(&mut st);
                if received.is_none() {
                    st.receiver = Some(waiter.future.clone_ref(py));
                }
                (received, st.pump.take())
            };
            if let Some(waker) = pump {
                wake(waker);
            }
            if let Some(received) = received {
                let message = received_message(py, received)?;
                future.call_method1(intern!(py, "set_result"), (message,))?;
            }
        }
        WaitKind::Send => {
            if exchange.lock().closed {
                let error = ClientDisconnected::new_err("client disconnected");
                future.call_method1(intern!(py, "set_exception"), (error.value(py),))?;
            } else {
                future.call_method1(intern!(py, "set_result"), (py.None(),))?;
            }
        }
    }
    Ok(())
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
    fn __call__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let (received, pump, future) = {
            let mut st = self.exchange.lock();
            match try_receive(&mut st) {
                Some(received) => (Some(received), st.pump.take(), None),
                None => {
                    st.body_wanted = true;
                    let future = new_future(py)?.unbind();
                    st.receiver = Some(future.clone_ref(py));
                    (None, st.pump.take(), Some(future))
                }
            }
        };
        if let Some(waker) = pump {
            wake(waker);
        }
        match (received, future) {
            (Some(received), _) => {
                let message = received_message(py, received)?.into_any().unbind();
                Ok(Py::new(py, Ready::new(message))?.into_any())
            }
            (None, Some(future)) => Ok(future),
            (None, None) => unreachable!("either a message or a future"),
        }
    }
}

/// One validated `send()` message.
enum Outgoing {
    Start(ResponseStart),
    Body { data: Bytes, more: bool },
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
            let status = parse_status(&status)?;
            let mut headers = HeaderMap::new();
            if let Some(raw) = message.get_item(intern!(py, "headers"))? {
                parse_headers(&raw, &mut headers)?;
            }
            Ok(Outgoing::Start(ResponseStart {
                status,
                headers,
                reason: None,
            }))
        }
        "http.response.body" => {
            let data = match message.get_item(intern!(py, "body"))? {
                None => Bytes::new(),
                Some(body) => bytes_of(&body).ok_or_else(|| {
                    PyTypeError::new_err(format!(
                        "http.response.body 'body' must be bytes, got {}",
                        type_name(&body)
                    ))
                })?,
            };
            let more = match message.get_item(intern!(py, "more_body"))? {
                None => false,
                Some(more) => more.is_truthy()?,
            };
            Ok(Outgoing::Body { data, more })
        }
        other => Err(PyRuntimeError::new_err(format!(
            "unexpected ASGI message type {other:?} for an http scope \
             (expected 'http.response.start' or 'http.response.body')"
        ))),
    }
}

fn type_name(value: &Bound<'_, PyAny>) -> String {
    value
        .get_type()
        .name()
        .map(|name| name.to_string())
        .unwrap_or_else(|_| "?".into())
}

pub(crate) fn bytes_of(value: &Bound<'_, PyAny>) -> Option<Bytes> {
    if let Ok(bytes) = value.cast::<PyBytes>() {
        return Some(Bytes::copy_from_slice(bytes.as_bytes()));
    }
    if let Ok(array) = value.cast::<PyByteArray>() {
        return Some(Bytes::from(array.to_vec()));
    }
    None
}

pub(crate) fn parse_status(status: &Bound<'_, PyAny>) -> PyResult<StatusCode> {
    if status.is_instance_of::<pyo3::types::PyBool>()
        || !status.is_instance_of::<pyo3::types::PyInt>()
    {
        return Err(PyTypeError::new_err(format!(
            "http.response.start 'status' must be an int, got {} {}",
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
            "http.response.start 'status' must be between 200 and 599, got {code}"
        ))),
    }
}

pub(crate) fn parse_headers(raw: &Bound<'_, PyAny>, headers: &mut HeaderMap) -> PyResult<()> {
    let iter = raw.try_iter().map_err(|_| {
        PyTypeError::new_err("http.response.start 'headers' must be an iterable of [name, value]")
    })?;
    for pair in iter {
        let pair = pair?;
        // Any two-item iterable will do: the spec's examples use lists and tuples.
        let items: Option<Vec<Bound<'_, PyAny>>> = pair
            .try_iter()
            .ok()
            .and_then(|items| items.take(3).collect::<PyResult<Vec<_>>>().ok());
        let Some([name, value]) = items.and_then(|items| <[_; 2]>::try_from(items).ok()) else {
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
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            PyValueError::new_err(format!(
                "invalid response header name {:?}",
                String::from_utf8_lossy(name.as_bytes())
            ))
        })?;
        let value = HeaderValue::from_bytes(value.as_bytes()).map_err(|_| {
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

    fn wake_reactor(waker: Option<Waker>) {
        if let Some(waker) = waker {
            wake(waker);
        }
    }
}

#[pymethods]
impl HttpSend {
    fn __call__(&self, py: Python<'_>, message: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let outgoing = parse_message(message)?;
        let exchange = &self.exchange;
        let is_head = exchange.method == Method::HEAD;
        let (reactor, wait) = {
            let mut st = exchange.lock();
            if st.closed {
                return Err(ClientDisconnected::new_err("client disconnected"));
            }
            match outgoing {
                Outgoing::Start(start) => {
                    if st.started {
                        return Err(PyRuntimeError::new_err(
                            "unexpected ASGI message 'http.response.start': the response has already started",
                        ));
                    }
                    st.started = true;
                    st.start = Some(start);
                    (st.reactor.take(), false)
                }
                Outgoing::Body { data, more } => {
                    if !st.started {
                        return Err(PyRuntimeError::new_err(
                            "unexpected ASGI message 'http.response.body' before 'http.response.start'",
                        ));
                    }
                    if st.complete {
                        return Err(PyRuntimeError::new_err(
                            "unexpected ASGI message 'http.response.body': the response is already complete",
                        ));
                    }
                    if !data.is_empty() && !is_head {
                        st.response_buffered += data.len();
                        st.chunks.push_back(data);
                    }
                    st.complete = !more;
                    (
                        st.reactor.take(),
                        st.response_buffered > RESPONSE_HIGH_WATER,
                    )
                }
            }
        };
        HttpSend::wake_reactor(reactor);
        if wait {
            let future = new_future(py)?.unbind();
            let mut st = exchange.lock();
            if st.response_buffered > RESPONSE_LOW_WATER && !st.closed {
                st.sender = Some(future.clone_ref(py));
                return Ok(future);
            }
        }
        Ready::none(py)
    }

    /// Called by the task wrapper when the app returns (`exc` is None) or raises.
    /// Ends the response the way the spec asks and logs what went wrong.
    #[pyo3(signature = (exc=None))]
    fn _finish(&self, py: Python<'_>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let exchange = &self.exchange;
        let (started, complete, closed) = {
            let st = exchange.lock();
            (st.started, st.complete, st.closed)
        };
        // A response left incomplete becomes a 500, or an aborted connection.
        exchange.abort();
        // The app is done with this exchange: release a body reader still waiting for it.
        exchange.finish_app();
        let request = exchange.request_line();
        match exc {
            None if !started && !closed => {
                tracing::error!(
                    "ASGI callable returned without starting a response while handling \"{request}\"; sent 500"
                );
            }
            None if !complete && !closed => {
                tracing::error!(
                    "ASGI callable returned without completing the response to \"{request}\"; connection aborted"
                );
            }
            None => {}
            Some(exc) => {
                let disconnected = exc.is_instance_of::<ClientDisconnected>()
                    || (closed && exc.is_instance_of::<pyo3::exceptions::PyOSError>());
                let cancelled = exc.is_instance(
                    &py.import(intern!(py, "asyncio"))?
                        .getattr(intern!(py, "CancelledError"))?,
                )?;
                if disconnected {
                    tracing::debug!("client disconnected while the app handled \"{request}\"");
                } else if cancelled {
                    tracing::warn!("request \"{request}\" was cancelled at shutdown");
                } else {
                    let traceback = format_exception(py, &exc);
                    let outcome = if !started {
                        "sent 500"
                    } else if !complete {
                        "connection aborted"
                    } else {
                        "response was already complete"
                    };
                    tracing::error!(
                        "Exception in ASGI application while handling \"{request}\" ({outcome})\n{traceback}"
                    );
                }
            }
        }
        Ok(())
    }
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

    #[test]
    fn status_must_be_an_int_in_range() {
        with_py(|py| {
            let ok = 204i64.into_pyobject(py).unwrap().into_any();
            assert_eq!(parse_status(&ok).unwrap(), StatusCode::NO_CONTENT);
            for bad in ["'200'", "True", "1000", "99", "101", "200.0"] {
                let value = py
                    .eval(&std::ffi::CString::new(bad).unwrap(), None, None)
                    .unwrap();
                assert!(parse_status(&value).is_err(), "{bad} accepted");
            }
        });
    }

    #[test]
    fn headers_must_be_valid_byte_pairs() {
        with_py(|py| {
            let eval = |code: &str| {
                py.eval(&std::ffi::CString::new(code).unwrap(), None, None)
                    .unwrap()
            };
            let mut headers = HeaderMap::new();
            parse_headers(&eval("[(b'x-a', b'1'), [b'x-a', b'2']]"), &mut headers).unwrap();
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
                    parse_headers(&eval(bad), &mut headers).is_err(),
                    "{bad} accepted"
                );
            }
        });
    }

    #[test]
    fn messages_are_checked_by_type() {
        with_py(|py| {
            let eval = |code: &str| {
                py.eval(&std::ffi::CString::new(code).unwrap(), None, None)
                    .unwrap()
            };
            assert!(matches!(
                parse_message(&eval(
                    "{'type': 'http.response.body', 'body': b'x', 'more_body': True}"
                ))
                .unwrap(),
                Outgoing::Body { more: true, .. }
            ));
            assert!(parse_message(&eval("{'type': 'http.response.bogus'}")).is_err());
            assert!(
                parse_message(&eval("{'type': 'http.response.body', 'body': 'text'}")).is_err()
            );
            assert!(parse_message(&eval("{'status': 200}")).is_err());
            assert!(parse_message(&eval("[('type', 'http.response.start')]")).is_err());
        });
    }
}
