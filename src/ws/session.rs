//! One WebSocket connection's state, shared by the reactor and the app.
//!
//! Like [`Exchange`](crate::exchange::Exchange) for HTTP: the reactor queues
//! messages from the peer and takes the app's messages; the app's
//! `receive()`/`send()` (in `asgi::websocket`) do the opposite. Nothing here
//! needs the GIL.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use parking_lot::{Mutex, MutexGuard};
use pyo3::prelude::*;

use crate::bridge::{wake, Bridge, Event, WaitKind, WsWaiter};
use crate::exchange::ResponseStart;

/// Bytes of app messages queued for a slow peer before `send()` waits.
pub(crate) const OUTGOING_HIGH_WATER: usize = 256 * 1024;

/// How the app answered the opening handshake.
pub(crate) enum Handshake {
    Accept {
        subprotocol: Option<String>,
        headers: HeaderMap,
    },
    /// Refuse the upgrade with this status (403 for a close before accept,
    /// 500 when the app failed).
    Reject(StatusCode),
    /// The `websocket.http.response` extension: the app's own response.
    Respond(ResponseStart, Bytes),
}

/// A data message from the peer.
pub(crate) enum PeerMessage {
    Text(String),
    Binary(Bytes),
}

/// Something the app asked the reactor to send.
pub(crate) enum AppMessage {
    Text(String),
    Binary(Bytes),
    Close(u16, String),
}

impl AppMessage {
    fn weight(&self) -> usize {
        match self {
            AppMessage::Text(text) => text.len(),
            AppMessage::Binary(data) => data.len(),
            AppMessage::Close(_, reason) => reason.len(),
        }
    }
}

/// What the reactor's connection loop should do next on the app's behalf.
pub(crate) enum AppEvent {
    Send(Vec<AppMessage>),
    /// The app read messages: there is room to read from the socket again.
    Room,
}

#[derive(Default)]
pub(crate) struct WsState {
    pub connect_delivered: bool,
    pub handshake: Option<Handshake>,
    /// The app has answered the handshake (accept, close or a response).
    pub handshake_done: bool,
    pub accepted: bool,
    /// A `websocket.http.response` being collected.
    pub denial: Option<(ResponseStart, BytesMut)>,

    pub incoming: VecDeque<PeerMessage>,
    /// Set once the connection is over: the close code and reason the app sees.
    pub disconnect: Option<(u16, String)>,
    pub receiver: Option<Py<PyAny>>,

    pub outgoing: VecDeque<AppMessage>,
    pub outgoing_bytes: usize,
    pub sender: Option<Py<PyAny>>,
    /// The app has sent (or been given) its close: no more sends.
    pub app_closed: bool,
    pub reactor: Option<Waker>,
    /// The reactor waits for the app to read before reading the socket.
    pub reactor_wants_room: bool,
}

/// What the reactor hands over when a client asks to open a WebSocket.
pub(crate) struct WsStart {
    pub session: Arc<WsSession>,
    pub head: http::request::Parts,
}

pub(crate) struct WsSession {
    state: Mutex<WsState>,
    bridge: Arc<Bridge>,
    max_queue: usize,
    pub path: String,
    pub client: Option<SocketAddr>,
    pub server: Option<SocketAddr>,
}

impl WsSession {
    pub(crate) fn new(
        bridge: Arc<Bridge>,
        max_queue: usize,
        path: String,
        client: Option<SocketAddr>,
        server: Option<SocketAddr>,
    ) -> WsSession {
        WsSession {
            state: Mutex::new(WsState::default()),
            bridge,
            max_queue: max_queue.max(1),
            path,
            client,
            server,
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, WsState> {
        self.state.lock()
    }

    pub(crate) fn resolve(self: &Arc<Self>, future: Option<Py<PyAny>>, kind: WaitKind) {
        if let Some(future) = future {
            self.bridge.push(Event::WsResolve(WsWaiter {
                future,
                session: Arc::clone(self),
                kind,
            }));
        }
    }

    /// Wakes the reactor's connection loop (from the app side).
    pub(crate) fn wake_reactor(st: &mut WsState) {
        if let Some(waker) = st.reactor.take() {
            wake(waker);
        }
    }

    // ---- reactor side -------------------------------------------------

    /// Ready with the app's answer to the opening handshake; `None` when the
    /// connection is already over.
    pub(crate) fn poll_handshake(&self, cx: &mut Context<'_>) -> Poll<Option<Handshake>> {
        let mut st = self.state.lock();
        if let Some(handshake) = st.handshake.take() {
            return Poll::Ready(Some(handshake));
        }
        if st.disconnect.is_some() {
            return Poll::Ready(None);
        }
        st.reactor = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Whether the incoming queue has room for another peer message.
    pub(crate) fn has_room(&self) -> bool {
        self.state.lock().incoming.len() < self.max_queue
    }

    /// Ready when the app queued messages to send, or (when `want_room`)
    /// when it read from a full incoming queue.
    pub(crate) fn poll_app(
        self: &Arc<Self>,
        cx: &mut Context<'_>,
        want_room: bool,
    ) -> Poll<AppEvent> {
        let (messages, sender) = {
            let mut st = self.state.lock();
            if st.outgoing.is_empty() {
                if want_room && st.incoming.len() < self.max_queue {
                    st.reactor_wants_room = false;
                    return Poll::Ready(AppEvent::Room);
                }
                st.reactor_wants_room = want_room;
                st.reactor = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let messages: Vec<AppMessage> = st.outgoing.drain(..).collect();
            st.outgoing_bytes = 0;
            (messages, st.sender.take())
        };
        self.resolve(sender, WaitKind::Send);
        Poll::Ready(AppEvent::Send(messages))
    }

    /// A data message arrived from the peer.
    pub(crate) fn push_incoming(self: &Arc<Self>, message: PeerMessage) {
        let receiver = {
            let mut st = self.state.lock();
            st.incoming.push_back(message);
            st.receiver.take()
        };
        self.resolve(receiver, WaitKind::Receive);
    }

    /// The connection is over with `code`: the app's receive() returns
    /// `websocket.disconnect`, its send() raises.
    pub(crate) fn finish(self: &Arc<Self>, code: u16, reason: &str) {
        let (receiver, sender) = {
            let mut st = self.state.lock();
            if st.disconnect.is_none() {
                st.disconnect = Some((code, reason.to_string()));
            }
            st.app_closed = true;
            (st.receiver.take(), st.sender.take())
        };
        self.resolve(receiver, WaitKind::Receive);
        self.resolve(sender, WaitKind::Send);
    }

    // ---- app side -------------------------------------------------------

    /// Queues a message for the peer; true when the app should now wait for
    /// the queue to drain.
    pub(crate) fn queue(st: &mut WsState, message: AppMessage) -> bool {
        st.outgoing_bytes += message.weight();
        st.outgoing.push_back(message);
        WsSession::wake_reactor(st);
        st.outgoing_bytes > OUTGOING_HIGH_WATER
    }

    /// Pops the next peer message, waking the reactor if it waits for room.
    pub(crate) fn pop_incoming(&self, st: &mut WsState) -> Option<PeerMessage> {
        let message = st.incoming.pop_front()?;
        if st.reactor_wants_room {
            st.reactor_wants_room = false;
            WsSession::wake_reactor(st);
        }
        Some(message)
    }
}
