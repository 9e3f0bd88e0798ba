//! The ASGI `websocket` scope's `receive` and `send` callables.
//!
//! They work on the connection's [`WsSession`] the way the `http` callables
//! work on an exchange: complete at once when they can, otherwise park an
//! asyncio future that the reactor hands back through the bridge. Messages
//! are read and checked (Python work) before the session is touched, and the
//! session's methods never call back into Python under its lock.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

use super::http::{
    buffer_of, format_exception, is_cancelled_error, new_future, parse_headers, parse_status,
    type_name,
};
use super::ClientDisconnected;
use super::{coroutine_mark, is_done, set_exception, set_result, Ready, WaitKind, WsWaiter};
use crate::exchange::ResponseStart;
use crate::ws::session::{
    is_sendable_close_code, AppEnd, AppMessage, Misuse, PeerMessage, Received, Sent,
    MAX_CLOSE_REASON,
};
use crate::ws::{code, is_token, WsSession};

fn received_message(py: Python<'_>, received: Received) -> PyResult<Bound<'_, PyDict>> {
    let message = PyDict::new(py);
    let kind = intern!(py, "type");
    match received {
        Received::Connect => message.set_item(kind, intern!(py, "websocket.connect"))?,
        Received::Message(data) => {
            message.set_item(kind, intern!(py, "websocket.receive"))?;
            match data {
                PeerMessage::Text(text) => {
                    message.set_item(intern!(py, "text"), text)?;
                    message.set_item(intern!(py, "bytes"), py.None())?;
                }
                PeerMessage::Binary(data) => {
                    message.set_item(intern!(py, "bytes"), PyBytes::new(py, &data))?;
                    message.set_item(intern!(py, "text"), py.None())?;
                }
            }
        }
        Received::Disconnect(code, reason) => {
            message.set_item(kind, intern!(py, "websocket.disconnect"))?;
            message.set_item(intern!(py, "code"), code)?;
            message.set_item(intern!(py, "reason"), reason)?;
        }
    }
    Ok(message)
}

fn ready(py: Python<'_>, received: Received) -> PyResult<Py<PyAny>> {
    let message = received_message(py, received)?.into_any().unbind();
    Ok(Py::new(py, Ready::new(message))?.into_any())
}

/// Completes a parked future once the reactor says it can proceed.
pub(crate) fn resolve_ws_waiter(py: Python<'_>, waiter: WsWaiter) -> PyResult<()> {
    let WsWaiter {
        future,
        session,
        kind,
    } = waiter;
    if is_done(py, &future)? {
        return Ok(());
    }
    match kind {
        WaitKind::Receive => match session.park_receiver(py, future) {
            Ok(()) => Ok(()),
            Err((future, received)) => set_result(py, &future, received_message(py, received)?),
        },
        WaitKind::Send if session.waiting_send_returns() => set_result(py, &future, py.None()),
        WaitKind::Send => set_exception(
            py,
            &future,
            ClientDisconnected::new_err("websocket connection closed"),
        ),
    }
}

/// The `receive` callable of a `websocket` scope.
#[pyclass(module = "rsasgi", frozen)]
pub(crate) struct WebSocketReceive {
    session: Arc<WsSession>,
}

impl WebSocketReceive {
    pub(crate) fn new(session: Arc<WsSession>) -> WebSocketReceive {
        WebSocketReceive { session }
    }
}

#[pymethods]
impl WebSocketReceive {
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
        if let Some(received) = self.session.try_receive() {
            return ready(py, received);
        }
        let future = new_future(py)?.unbind();
        match self.session.park_receiver(py, future.clone_ref(py)) {
            Ok(()) => Ok(future),
            Err((_, received)) => ready(py, received),
        }
    }
}

/// One checked `send()` message.
enum Outgoing {
    Accept {
        subprotocol: Option<String>,
        headers: HeaderMap,
    },
    Send(AppMessage),
    /// The code and reason, checked: an error matters only after accept
    /// (see [`WebSocketSend::__call__`]).
    Close(PyResult<(u16, String)>),
    DenyStart(ResponseStart),
    DenyBody {
        body: Bytes,
        more: bool,
    },
}

fn optional_str(
    message: &Bound<'_, PyDict>,
    key: &Bound<'_, PyString>,
) -> PyResult<Option<String>> {
    match message.get_item(key)? {
        Some(value) if !value.is_none() => Ok(Some(value.extract::<String>().map_err(|err| {
            if value.is_instance_of::<PyString>() {
                // A str that is no UTF-8 (a lone surrogate): Python's
                // UnicodeEncodeError says which character, and where.
                err
            } else {
                PyTypeError::new_err(format!("websocket message {key} must be a str"))
            }
        })?)),
        _ => Ok(None),
    }
}

fn more_body(message: &Bound<'_, PyDict>) -> PyResult<bool> {
    match message.get_item(intern!(message.py(), "more_body"))? {
        Some(more) => more.is_truthy(),
        None => Ok(false),
    }
}

/// The close code of `websocket.close`, checked against RFC 6455 §7.4.
fn close_code(message: &Bound<'_, PyDict>) -> PyResult<u16> {
    let Some(value) = message
        .get_item(intern!(message.py(), "code"))?
        .filter(|value| !value.is_none())
    else {
        return Ok(code::NORMAL);
    };
    let raw: i64 = value
        .extract()
        .map_err(|_| PyTypeError::new_err("websocket.close 'code' must be an int"))?;
    match u16::try_from(raw) {
        Ok(code) if is_sendable_close_code(code) => Ok(code),
        _ => Err(PyValueError::new_err(format!(
            "websocket.close 'code' {raw} may not be sent: RFC 6455 §7.4 allows 1000-1003, \
             1007-1014 and 3000-4999 (1005, 1006 and 1015 only report a closure, 1004 and \
             1016-2999 are reserved)"
        ))),
    }
}

/// The code and reason of `websocket.close`, checked as a close frame's.
fn close_frame_fields(message: &Bound<'_, PyDict>) -> PyResult<(u16, String)> {
    let code = close_code(message)?;
    let reason = optional_str(message, intern!(message.py(), "reason"))?.unwrap_or_default();
    if reason.len() > MAX_CLOSE_REASON {
        return Err(PyValueError::new_err(format!(
            "websocket.close 'reason' is {} bytes of UTF-8; RFC 6455 §5.5 allows at most \
             {MAX_CLOSE_REASON} in a close frame",
            reason.len()
        )));
    }
    Ok((code, reason))
}

fn parse_message(message: &Bound<'_, PyAny>) -> PyResult<Outgoing> {
    let py = message.py();
    let message = message
        .cast::<PyDict>()
        .map_err(|_| PyTypeError::new_err("ASGI messages must be dicts"))?;
    let kind: String = message
        .get_item(intern!(py, "type"))?
        .ok_or_else(|| PyValueError::new_err("ASGI message has no 'type' key"))?
        .extract()
        .map_err(|_| PyTypeError::new_err("ASGI message 'type' must be a str"))?;
    match kind.as_str() {
        "websocket.accept" => {
            let subprotocol = optional_str(message, intern!(py, "subprotocol"))?;
            if let Some(protocol) = subprotocol.as_deref().filter(|p| !is_token(p)) {
                // Dropped from the 101, the client would see a handshake
                // with no subprotocol and no error anywhere.
                return Err(PyValueError::new_err(format!(
                    "websocket.accept 'subprotocol' must be a token (RFC 6455 §4.1: \
                     letters, digits and !#$%&'*+-.^_`|~), not {protocol:?}"
                )));
            }
            let mut headers = HeaderMap::new();
            if let Some(raw) = message.get_item(intern!(py, "headers"))? {
                parse_headers(&raw, &mut headers)?;
            }
            Ok(Outgoing::Accept {
                subprotocol,
                headers,
            })
        }
        "websocket.send" => {
            let text = optional_str(message, intern!(py, "text"))?;
            let data = match message.get_item(intern!(py, "bytes"))? {
                Some(value) if !value.is_none() => Some(buffer_of(&value)?.ok_or_else(|| {
                    PyTypeError::new_err(format!(
                        "websocket.send 'bytes' must be bytes or another buffer, got {}",
                        type_name(&value)
                    ))
                })?),
                _ => None,
            };
            match (text, data) {
                (Some(text), None) => Ok(Outgoing::Send(AppMessage::Text(text))),
                (None, Some(data)) => Ok(Outgoing::Send(AppMessage::Binary(data))),
                _ => Err(PyValueError::new_err(
                    "websocket.send needs exactly one of 'bytes' and 'text'",
                )),
            }
        }
        "websocket.close" => Ok(Outgoing::Close(close_frame_fields(message))),
        "websocket.http.response.start" => {
            let status = message.get_item(intern!(py, "status"))?.ok_or_else(|| {
                PyValueError::new_err("websocket.http.response.start has no 'status'")
            })?;
            let status = parse_status(&status, "websocket.http.response.start")?;
            let mut headers = HeaderMap::new();
            if let Some(raw) = message.get_item(intern!(py, "headers"))? {
                parse_headers(&raw, &mut headers)?;
            }
            let start = ResponseStart::new(status, headers, None).map_err(|reason| {
                PyValueError::new_err(format!("websocket.http.response.start: {reason}"))
            })?;
            Ok(Outgoing::DenyStart(start))
        }
        "websocket.http.response.body" => {
            let body = match message.get_item(intern!(py, "body"))? {
                Some(body) => buffer_of(&body)?.ok_or_else(|| {
                    PyTypeError::new_err(format!(
                        "websocket.http.response.body 'body' must be bytes or another buffer, got {}",
                        type_name(&body)
                    ))
                })?,
                None => Bytes::new(),
            };
            Ok(Outgoing::DenyBody {
                body,
                more: more_body(message)?,
            })
        }
        other => Err(PyRuntimeError::new_err(format!(
            "unexpected ASGI message type {other:?} for a websocket scope"
        ))),
    }
}

fn misuse_error(misuse: Misuse) -> PyErr {
    match misuse {
        Misuse::HandshakeAnswered => PyRuntimeError::new_err(
            "the websocket handshake was already answered (accept, close or http.response sent)",
        ),
        Misuse::SendBeforeAccept => {
            PyRuntimeError::new_err("websocket.send before websocket.accept")
        }
        Misuse::DenialBodyBeforeStart => PyRuntimeError::new_err(
            "websocket.http.response.body before websocket.http.response.start",
        ),
        Misuse::Closed => ClientDisconnected::new_err("websocket connection closed"),
    }
}

/// The `send` callable of a `websocket` scope.
#[pyclass(module = "rsasgi", frozen)]
pub(crate) struct WebSocketSend {
    session: Arc<WsSession>,
}

impl WebSocketSend {
    pub(crate) fn new(session: Arc<WsSession>) -> WebSocketSend {
        WebSocketSend { session }
    }
}

#[pymethods]
impl WebSocketSend {
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
        let session = &self.session;
        let sent = match parse_message(message)? {
            Outgoing::Accept {
                subprotocol,
                headers,
            } => session.accept(subprotocol, headers).map(|()| Sent::Queued),
            Outgoing::Send(message) => session.send(message),
            Outgoing::Close(Ok((code, reason))) => session.close(code, reason),
            // Before accept the close is a 403, and its code and reason go
            // nowhere: whatever they are, the handshake is refused quietly,
            // as uvicorn does. FastAPI's handler for a WebSocket's
            // validation error closes with a list of errors for the reason.
            Outgoing::Close(Err(err)) if !session.accepted() => {
                tracing::debug!(
                    "websocket {}: websocket.close before accept ({err}); answering 403",
                    session.path
                );
                session.close(code::NORMAL, String::new())
            }
            Outgoing::Close(Err(err)) => return Err(err),
            Outgoing::DenyStart(start) => session.deny_start(start).map(|()| Sent::Queued),
            Outgoing::DenyBody { body, more } => {
                session.deny_body(&body, more).map(|()| Sent::Queued)
            }
        }
        .map_err(misuse_error)?;
        match sent {
            Sent::Queued => {}
            Sent::Full => {
                let future = new_future(py)?.unbind();
                if session.park_sender(py, future.clone_ref(py)).is_none() {
                    return Ok(future);
                }
            }
            Sent::Dropped => return Ready::after_a_turn(py),
        }
        Ready::none(py)
    }

    /// Called by the task wrapper when the app returns (`exc` is None) or
    /// raises (`shutdown`: a `CancelledError` the shutdown caused): answers the
    /// handshake or closes the connection as the spec asks.
    #[pyo3(signature = (exc=None, shutdown=false))]
    fn _finish(
        &self,
        py: Python<'_>,
        exc: Option<Bound<'_, PyAny>>,
        shutdown: bool,
    ) -> PyResult<()> {
        let session = &self.session;
        let ended = session.finish_app(exc.is_some());
        if let Some(exc) = exc {
            let disconnected = exc.is_instance_of::<ClientDisconnected>();
            // A CancelledError the app raised itself is its error like any other.
            let cancelled = is_cancelled_error(&exc)?;
            if disconnected {
                tracing::debug!("websocket {} went away while the app used it", session.path);
            } else if cancelled && shutdown {
                tracing::debug!("websocket {} was cancelled at shutdown", session.path);
            } else {
                let outcome = match ended {
                    AppEnd::Refused(status) => format!("sent {}", status.as_u16()),
                    AppEnd::AnsweredBefore => "after its answer to the handshake".to_string(),
                    AppEnd::Closed(code) => format!("closed with {code}"),
                    AppEnd::ClosedBefore => "after its websocket.close".to_string(),
                    // The app raised at its next receive() or send(), or in
                    // its disconnect handler, long after the end perhaps.
                    AppEnd::AlreadyClosed(code) => {
                        format!("the connection had already closed with {code}")
                    }
                };
                tracing::error!(
                    "Exception in ASGI application on websocket \"{}\" ({outcome})\n{}",
                    session.path,
                    format_exception(py, &exc)
                );
            }
        }
        Ok(())
    }
}
