//! The ASGI `websocket` scope's `receive` and `send` callables.
//!
//! They work on the connection's [`WsSession`] the way the `http` callables
//! work on an exchange: complete at once when they can, otherwise park an
//! asyncio future that the reactor hands back through the bridge.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

use super::http::{bytes_of, format_exception, new_future, parse_headers, parse_status};
use super::ClientDisconnected;
use crate::bridge::{Ready, WaitKind, WsWaiter};
use crate::exchange::ResponseStart;
use crate::ws::session::{AppMessage, Handshake, PeerMessage, WsState};
use crate::ws::{code, WsSession};

/// What `receive()` returns when it does not have to wait.
enum Received {
    Connect,
    Message(PeerMessage),
    Disconnect(u16, String),
}

fn try_receive(session: &WsSession, st: &mut WsState) -> Option<Received> {
    if !st.connect_delivered {
        st.connect_delivered = true;
        return Some(Received::Connect);
    }
    if let Some(message) = session.pop_incoming(st) {
        return Some(Received::Message(message));
    }
    st.disconnect
        .as_ref()
        .map(|(code, reason)| Received::Disconnect(*code, reason.clone()))
}

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

/// Completes a parked future once the reactor says it can proceed.
pub(crate) fn resolve_ws_waiter(py: Python<'_>, waiter: WsWaiter) -> PyResult<()> {
    let future = waiter.future.bind(py);
    if future.call_method0(intern!(py, "done"))?.is_truthy()? {
        return Ok(());
    }
    let session = &waiter.session;
    match waiter.kind {
        WaitKind::Receive => {
            let received = {
                let mut st = session.lock();
                let received = try_receive(session, &mut st);
                if received.is_none() {
                    st.receiver = Some(waiter.future.clone_ref(py));
                }
                received
            };
            if let Some(received) = received {
                let message = received_message(py, received)?;
                future.call_method1(intern!(py, "set_result"), (message,))?;
            }
        }
        WaitKind::Send => {
            if session.lock().disconnect.is_some() {
                let error = ClientDisconnected::new_err("websocket connection closed");
                future.call_method1(intern!(py, "set_exception"), (error.value(py),))?;
            } else {
                future.call_method1(intern!(py, "set_result"), (py.None(),))?;
            }
        }
    }
    Ok(())
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
    fn __call__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let mut st = self.session.lock();
        if let Some(received) = try_receive(&self.session, &mut st) {
            drop(st);
            let message = received_message(py, received)?.into_any().unbind();
            return Ok(Py::new(py, Ready::new(message))?.into_any());
        }
        let future = new_future(py)?.unbind();
        st.receiver = Some(future.clone_ref(py));
        Ok(future)
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

fn optional_str(
    message: &Bound<'_, PyDict>,
    key: &Bound<'_, PyString>,
) -> PyResult<Option<String>> {
    match message.get_item(key)? {
        Some(value) if !value.is_none() => Ok(Some(value.extract::<String>().map_err(|_| {
            PyTypeError::new_err(format!("websocket message {key} must be a str"))
        })?)),
        _ => Ok(None),
    }
}

fn handshake_answered() -> PyErr {
    PyRuntimeError::new_err(
        "the websocket handshake was already answered (accept, close or http.response sent)",
    )
}

#[pymethods]
impl WebSocketSend {
    fn __call__(&self, py: Python<'_>, message: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let message = message
            .cast::<PyDict>()
            .map_err(|_| PyTypeError::new_err("ASGI messages must be dicts"))?;
        let kind: String = message
            .get_item(intern!(py, "type"))?
            .ok_or_else(|| PyValueError::new_err("ASGI message has no 'type' key"))?
            .extract()
            .map_err(|_| PyTypeError::new_err("ASGI message 'type' must be a str"))?;
        let session = &self.session;
        let mut st = session.lock();
        let wait = match kind.as_str() {
            "websocket.accept" => {
                if st.handshake_done {
                    return Err(handshake_answered());
                }
                let subprotocol = optional_str(message, intern!(py, "subprotocol"))?;
                let mut headers = HeaderMap::new();
                if let Some(raw) = message.get_item(intern!(py, "headers"))? {
                    parse_headers(&raw, &mut headers)?;
                }
                st.handshake = Some(Handshake::Accept {
                    subprotocol,
                    headers,
                });
                st.handshake_done = true;
                st.accepted = true;
                WsSession::wake_reactor(&mut st);
                false
            }
            "websocket.send" => {
                if !st.accepted {
                    return Err(PyRuntimeError::new_err(
                        "websocket.send before websocket.accept",
                    ));
                }
                if st.app_closed || st.disconnect.is_some() {
                    return Err(ClientDisconnected::new_err("websocket connection closed"));
                }
                let text = optional_str(message, intern!(py, "text"))?;
                let data = match message.get_item(intern!(py, "bytes"))? {
                    Some(value) if !value.is_none() => Some(bytes_of(&value).ok_or_else(|| {
                        PyTypeError::new_err("websocket.send 'bytes' must be bytes")
                    })?),
                    _ => None,
                };
                let outgoing = match (text, data) {
                    (Some(text), None) => AppMessage::Text(text),
                    (None, Some(data)) => AppMessage::Binary(data),
                    _ => {
                        return Err(PyValueError::new_err(
                            "websocket.send needs exactly one of 'bytes' and 'text'",
                        ))
                    }
                };
                WsSession::queue(&mut st, outgoing)
            }
            "websocket.close" => {
                let code: u16 = match message.get_item(intern!(py, "code"))? {
                    Some(value) if !value.is_none() => value.extract().map_err(|_| {
                        PyValueError::new_err(
                            "websocket.close 'code' must be an int from 1000 to 4999",
                        )
                    })?,
                    _ => code::NORMAL,
                };
                let reason = optional_str(message, intern!(py, "reason"))?.unwrap_or_default();
                if !st.handshake_done {
                    st.handshake = Some(Handshake::Reject(StatusCode::FORBIDDEN));
                    st.handshake_done = true;
                    st.app_closed = true;
                    WsSession::wake_reactor(&mut st);
                    false
                } else if st.app_closed || st.disconnect.is_some() {
                    // Closing twice, or after the peer left: nothing to send.
                    false
                } else {
                    st.app_closed = true;
                    WsSession::queue(&mut st, AppMessage::Close(code, reason))
                }
            }
            "websocket.http.response.start" => {
                if st.handshake_done || st.denial.is_some() {
                    return Err(handshake_answered());
                }
                let status = message.get_item(intern!(py, "status"))?.ok_or_else(|| {
                    PyValueError::new_err("websocket.http.response.start has no 'status'")
                })?;
                let status = parse_status(&status)?;
                let mut headers = HeaderMap::new();
                if let Some(raw) = message.get_item(intern!(py, "headers"))? {
                    parse_headers(&raw, &mut headers)?;
                }
                let start = ResponseStart {
                    status,
                    headers,
                    reason: None,
                };
                st.denial = Some((start, BytesMut::new()));
                false
            }
            "websocket.http.response.body" => {
                let body = match message.get_item(intern!(py, "body"))? {
                    Some(body) => bytes_of(&body).ok_or_else(|| {
                        PyTypeError::new_err("websocket.http.response.body 'body' must be bytes")
                    })?,
                    None => Bytes::new(),
                };
                let more = match message.get_item(intern!(py, "more_body"))? {
                    Some(more) => more.is_truthy()?,
                    None => false,
                };
                let Some((_, collected)) = st.denial.as_mut() else {
                    return Err(PyRuntimeError::new_err(
                        "websocket.http.response.body before websocket.http.response.start",
                    ));
                };
                collected.extend_from_slice(&body);
                if !more {
                    if let Some((start, body)) = st.denial.take() {
                        st.handshake = Some(Handshake::Respond(start, body.freeze()));
                        st.handshake_done = true;
                        st.app_closed = true;
                        WsSession::wake_reactor(&mut st);
                    }
                }
                false
            }
            other => {
                return Err(PyRuntimeError::new_err(format!(
                    "unexpected ASGI message type {other:?} for a websocket scope"
                )))
            }
        };
        if wait && st.disconnect.is_none() {
            let future = new_future(py)?.unbind();
            st.sender = Some(future.clone_ref(py));
            return Ok(future);
        }
        drop(st);
        Ready::none(py)
    }

    /// Called by the task wrapper when the app returns (`exc` is None) or
    /// raises: answers the handshake or closes the connection as the spec asks.
    #[pyo3(signature = (exc=None))]
    fn _finish(&self, py: Python<'_>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let session = &self.session;
        let failed = exc.is_some();
        let accepted = {
            let mut st = session.lock();
            if !st.handshake_done {
                let status = if failed {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::FORBIDDEN
                };
                st.handshake = Some(Handshake::Reject(status));
                st.handshake_done = true;
                st.app_closed = true;
                WsSession::wake_reactor(&mut st);
            } else if st.accepted && !st.app_closed && st.disconnect.is_none() {
                let (code, reason) = if failed {
                    (code::INTERNAL_ERROR, "internal server error")
                } else {
                    (code::NORMAL, "")
                };
                st.app_closed = true;
                WsSession::queue(&mut st, AppMessage::Close(code, reason.to_string()));
            }
            st.accepted
        };
        if let Some(exc) = exc {
            let disconnected = exc.is_instance_of::<ClientDisconnected>();
            let cancelled = exc.is_instance(
                &py.import(intern!(py, "asyncio"))?
                    .getattr(intern!(py, "CancelledError"))?,
            )?;
            if disconnected {
                tracing::debug!("websocket {} went away while the app used it", session.path);
            } else if !cancelled {
                let outcome = if accepted {
                    "closed with 1011"
                } else {
                    "sent 500"
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
