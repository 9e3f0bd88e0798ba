//! One HTTP request/response exchange, shared by the reactor and the app.
//!
//! The reactor fills the request body and drains the response; the app calls
//! `receive()` ([`HttpReceive`]) and `send()` ([`HttpSend`]). Both sides meet
//! in [`Exchange`], whose state sits behind a plain mutex that never needs the
//! GIL. See `bridge` for how each side wakes the other.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version};
use parking_lot::Mutex;
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyString};

use super::ClientDisconnected;
use crate::bridge::{wake, Bridge, Event, Ready, WaitKind, Waiter};

/// Request body buffered ahead of the app before the reactor stops reading
/// the socket: enough for one read, small enough that a large upload is
/// never held whole.
pub(crate) const REQUEST_BODY_HIGH_WATER: usize = 64 * 1024;

/// Response body buffered behind a slow client before `send()` waits.
const RESPONSE_HIGH_WATER: usize = 64 * 1024;

/// `send()` waiting on a full buffer resumes once the buffer drains below this.
const RESPONSE_LOW_WATER: usize = 16 * 1024;

/// `loop.create_future` of the worker's event loop, used when an awaitable
/// really has to wait.
pub(crate) static CREATE_FUTURE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// What the reactor hands over when a request arrives.
pub(crate) struct RequestStart {
    pub exchange: Arc<Exchange>,
    pub head: http::request::Parts,
}

/// The status line and headers the app sent in `http.response.start`.
pub(crate) struct ResponseStart {
    pub status: StatusCode,
    pub headers: HeaderMap,
}

/// Why the reactor could not send the app's response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The app failed before starting a response: answer with this status.
    Status(StatusCode),
    /// The client is gone.
    Closed,
}

/// The response body ended without `more_body=False`: the app failed midway.
#[derive(Debug)]
pub(crate) struct Aborted;

impl std::fmt::Display for Aborted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("response aborted by the application")
    }
}

impl std::error::Error for Aborted {}

#[derive(Default)]
struct State {
    // Request body: reactor → app.
    body: VecDeque<Bytes>,
    body_buffered: usize,
    /// The last body chunk has arrived from the client.
    body_complete: bool,
    /// The app has seen `more_body=False`.
    body_delivered: bool,
    /// The app has called `receive()` at least once (hyper sends
    /// `100 Continue` only once the body is read).
    body_wanted: bool,
    pump: Option<Waker>,
    receiver: Option<Py<PyAny>>,

    // Response: app → reactor.
    start: Option<ResponseStart>,
    started: bool,
    chunks: VecDeque<Bytes>,
    response_buffered: usize,
    /// The app sent `more_body=False`.
    complete: bool,
    /// The app ended before completing its response.
    aborted: bool,
    sender: Option<Py<PyAny>>,
    reactor: Option<Waker>,

    /// The client went away, or the reactor ended the exchange on a bad body.
    closed: bool,
    /// The reactor refused the request body (malformed, too large) before the
    /// response started: answer with this status instead of the app's.
    refused: Option<StatusCode>,
}

/// The state of one request shared between the reactor and the app.
pub(crate) struct Exchange {
    state: Mutex<State>,
    bridge: Arc<Bridge>,
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub client: Option<SocketAddr>,
    pub server: Option<SocketAddr>,
}

/// What `receive()` returns when it does not have to wait.
enum Received {
    Body { data: Bytes, more: bool },
    Disconnect,
}

impl Exchange {
    pub(crate) fn new(
        bridge: Arc<Bridge>,
        head: &http::request::Parts,
        client: Option<SocketAddr>,
        server: Option<SocketAddr>,
        body_complete: bool,
    ) -> Exchange {
        Exchange {
            state: Mutex::new(State {
                body_complete,
                ..State::default()
            }),
            bridge,
            method: head.method.clone(),
            uri: head.uri.clone(),
            version: head.version,
            client,
            server,
        }
    }

    /// "GET /path?q HTTP/1.1", for log lines.
    pub(crate) fn request_line(&self) -> String {
        let target = self
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        format!("{} {} {:?}", self.method, target, self.version)
    }

    fn resolve(self: &Arc<Self>, future: Option<Py<PyAny>>, kind: WaitKind) {
        if let Some(future) = future {
            self.bridge.push(Event::Resolve(Waiter {
                future,
                exchange: Arc::clone(self),
                kind,
            }));
        }
    }

    // ---- reactor side -------------------------------------------------

    /// Ready when the body pump may read more: the app wants the body and the
    /// buffer has room. `false` means stop: the exchange is over.
    pub(crate) fn poll_body_room(&self, cx: &mut Context<'_>) -> Poll<bool> {
        let mut st = self.state.lock();
        if st.closed {
            return Poll::Ready(false);
        }
        if st.body_wanted && st.body_buffered < REQUEST_BODY_HIGH_WATER {
            return Poll::Ready(true);
        }
        st.pump = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Starts reading the body without waiting for the app's first `receive()`.
    pub(crate) fn want_body(&self) {
        self.state.lock().body_wanted = true;
    }

    /// A chunk of request body arrived (`last` when it is the final one).
    pub(crate) fn push_body(self: &Arc<Self>, data: Bytes, last: bool) {
        let receiver = {
            let mut st = self.state.lock();
            if !data.is_empty() {
                st.body_buffered += data.len();
                st.body.push_back(data);
            }
            st.body_complete |= last;
            st.receiver.take()
        };
        self.resolve(receiver, WaitKind::Receive);
    }

    /// The request body was bad (`status` is 400 or 413): the app sees a
    /// disconnect and the client gets `status` if no response started yet.
    pub(crate) fn refuse_body(self: &Arc<Self>, status: StatusCode) {
        {
            let mut st = self.state.lock();
            if !st.started {
                st.refused = Some(status);
            }
        }
        self.close();
    }

    /// The client went away or the connection ended: wake everyone waiting.
    pub(crate) fn close(self: &Arc<Self>) {
        let (receiver, sender, reactor, pump) = {
            let mut st = self.state.lock();
            if st.closed {
                return;
            }
            st.closed = true;
            (
                st.receiver.take(),
                st.sender.take(),
                st.reactor.take(),
                st.pump.take(),
            )
        };
        self.resolve(receiver, WaitKind::Receive);
        self.resolve(sender, WaitKind::Send);
        if let Some(waker) = reactor {
            wake(waker);
        }
        if let Some(waker) = pump {
            wake(waker);
        }
    }

    /// Ready with the app's response head, or with the reason there is none.
    pub(crate) fn poll_response_start(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<ResponseStart, Refusal>> {
        let mut st = self.state.lock();
        if let Some(status) = st.refused {
            return Poll::Ready(Err(Refusal::Status(status)));
        }
        if let Some(start) = st.start.take() {
            return Poll::Ready(Ok(start));
        }
        if st.aborted {
            return Poll::Ready(Err(Refusal::Status(StatusCode::INTERNAL_SERVER_ERROR)));
        }
        if st.closed {
            return Poll::Ready(Err(Refusal::Closed));
        }
        st.reactor = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Ready with the next response chunk, `None` at the end, or an error when
    /// the app ended without finishing its response.
    pub(crate) fn poll_response_chunk(
        self: &Arc<Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Aborted>>> {
        let (chunk, sender) = {
            let mut st = self.state.lock();
            match st.chunks.pop_front() {
                Some(chunk) => {
                    st.response_buffered -= chunk.len();
                    let sender = if st.response_buffered <= RESPONSE_LOW_WATER {
                        st.sender.take()
                    } else {
                        None
                    };
                    (chunk, sender)
                }
                None if st.complete => return Poll::Ready(None),
                None if st.aborted || st.closed => return Poll::Ready(Some(Err(Aborted))),
                None => {
                    st.reactor = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        };
        self.resolve(sender, WaitKind::Send);
        Poll::Ready(Some(Ok(chunk)))
    }

    /// The length of the whole response body when the app has already sent
    /// all of it, so hyper can send Content-Length instead of chunking.
    pub(crate) fn complete_body_len(&self) -> Option<u64> {
        let st = self.state.lock();
        st.complete.then_some(st.response_buffered as u64)
    }

    /// True once the app has sent its whole response and all of it was taken.
    pub(crate) fn response_finished(&self) -> bool {
        let st = self.state.lock();
        st.complete && st.chunks.is_empty()
    }

    // ---- Python side ----------------------------------------------------

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
                    let mut st = exchange.state.lock();
                    let received = Exchange::try_receive(&mut st);
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
                if exchange.state.lock().closed {
                    let error = ClientDisconnected::new_err("client disconnected");
                    future.call_method1(intern!(py, "set_exception"), (error.value(py),))?;
                } else {
                    future.call_method1(intern!(py, "set_result"), (py.None(),))?;
                }
            }
        }
        Ok(())
    }
}

fn new_future(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
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
            let mut st = self.exchange.state.lock();
            match Exchange::try_receive(&mut st) {
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
            Ok(Outgoing::Start(ResponseStart { status, headers }))
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

fn bytes_of(value: &Bound<'_, PyAny>) -> Option<Bytes> {
    if let Ok(bytes) = value.cast::<PyBytes>() {
        return Some(Bytes::copy_from_slice(bytes.as_bytes()));
    }
    if let Ok(array) = value.cast::<PyByteArray>() {
        return Some(Bytes::from(array.to_vec()));
    }
    None
}

fn parse_status(status: &Bound<'_, PyAny>) -> PyResult<StatusCode> {
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

fn parse_headers(raw: &Bound<'_, PyAny>, headers: &mut HeaderMap) -> PyResult<()> {
    let iter = raw.try_iter().map_err(|_| {
        PyTypeError::new_err("http.response.start 'headers' must be an iterable of [name, value]")
    })?;
    for pair in iter {
        let pair = pair?;
        let (name, value): (Bound<'_, PyAny>, Bound<'_, PyAny>) = pair.extract().map_err(|_| {
            PyTypeError::new_err(format!(
                "each response header must be a [name, value] pair of bytes, got {}",
                pair.repr().map(|r| r.to_string()).unwrap_or_default()
            ))
        })?;
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
            let mut st = exchange.state.lock();
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
            let mut st = exchange.state.lock();
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
        let (started, complete, closed, reactor) = {
            let mut st = exchange.state.lock();
            let outcome = (st.started, st.complete, st.closed);
            if !st.complete {
                st.aborted = true;
            }
            (outcome.0, outcome.1, outcome.2, st.reactor.take())
        };
        HttpSend::wake_reactor(reactor);
        // The app is done with this exchange: release a body reader still waiting for it.
        exchange.close();
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
