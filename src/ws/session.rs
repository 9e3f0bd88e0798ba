//! One WebSocket connection's state, shared by the reactor and the app.
//!
//! Like [`Exchange`](crate::exchange::Exchange) for HTTP: the reactor queues
//! messages from the peer and takes the app's messages; the app's
//! `receive()`/`send()` (in `asgi::websocket`) do the opposite. Nothing here
//! needs the GIL.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use parking_lot::Mutex;
use pyo3::prelude::*;

use crate::asgi::{park_future, Event, EventBridge, WaitKind, WsWaiter};
use crate::exchange::ResponseStart;
use crate::net::ConnectionInfo;
use crate::wake::wake;
use crate::ws::code;

/// Bytes of app messages queued for a slow peer before `send()` waits.
pub(crate) const OUTGOING_HIGH_WATER: usize = 256 * 1024;

/// Bytes of peer messages queued for an app that is not reading before the
/// reactor stops reading the socket (as it does at `--ws-max-queue`
/// messages). `--ws-max-queue` alone let a connection hold 32 messages of
/// `--ws-max-size` each: 512 MiB by default, which permessage-deflate lets a
/// client send in well under a megabyte. A message is taken whenever the
/// queue is empty, whatever its size, so a connection queues at most this
/// plus one message of `--ws-max-size`.
pub(crate) const INCOMING_HIGH_WATER: usize = 1024 * 1024;

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
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PeerMessage {
    Text(String),
    Binary(Bytes),
}

impl PeerMessage {
    fn weight(&self) -> usize {
        match self {
            PeerMessage::Text(text) => text.len(),
            PeerMessage::Binary(data) => data.len(),
        }
    }
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
struct WsState {
    connect_delivered: bool,
    handshake: Option<Handshake>,
    /// The app has answered the handshake (accept, close or a response).
    handshake_done: bool,
    accepted: bool,
    /// A `websocket.http.response` being collected.
    denial: Option<(ResponseStart, BytesMut)>,

    incoming: VecDeque<PeerMessage>,
    incoming_bytes: usize,
    /// Set once the connection is over: the close code and reason the app sees.
    disconnect: Option<(u16, String)>,
    /// Every `receive()` waiting (tasks of one app may wait at once).
    receivers: Vec<Py<PyAny>>,

    outgoing: VecDeque<AppMessage>,
    outgoing_bytes: usize,
    /// Every `send()` waiting for the queue to drain.
    senders: Vec<Py<PyAny>>,
    /// The app has sent (or been given) its close: no more sends.
    app_closed: bool,
    /// When the app's close was sent or the connection ended, whichever came
    /// first: the start of [`WsSession::closed_send_grace`].
    closed_at: Option<Instant>,
    reactor: Option<Waker>,
    /// The reactor waits for the app to read before reading the socket.
    reactor_wants_room: bool,
    /// Let go when the app is done (see [`WsSession::hold`]).
    held: Option<Box<dyn Send>>,
}

impl WsState {
    /// Queues a message for the peer; true when the app should now wait for
    /// the queue to drain.
    fn queue(&mut self, message: AppMessage) -> bool {
        self.outgoing_bytes += message.weight();
        self.outgoing.push_back(message);
        self.outgoing_bytes > OUTGOING_HIGH_WATER
    }

    /// Empties the outgoing queue: its messages, and the app's sends that
    /// waited for room in it, to be resolved once the lock is let go.
    fn take_outgoing(&mut self) -> (Vec<AppMessage>, Vec<Py<PyAny>>) {
        self.outgoing_bytes = 0;
        (
            self.outgoing.drain(..).collect(),
            std::mem::take(&mut self.senders),
        )
    }

    /// Whether the incoming queue takes another peer message: under
    /// `max_queue` messages and [`INCOMING_HIGH_WATER`] bytes, or empty.
    fn has_room(&self, max_queue: usize) -> bool {
        self.incoming.is_empty()
            || (self.incoming.len() < max_queue && self.incoming_bytes < INCOMING_HIGH_WATER)
    }

    /// Ends the handshake without a connection: from now on `receive()`
    /// returns `websocket.disconnect` with 1006 (no connection was ever open,
    /// as uvicorn reports it), so an app that waits for the disconnect after
    /// refusing (Starlette's `WebSocketEndpoint`) goes on to its end.
    fn refuse(&mut self, handshake: Handshake) {
        self.handshake = Some(handshake);
        self.handshake_done = true;
        self.app_closed = true;
        self.disconnect
            .get_or_insert((code::ABNORMAL, String::new()));
    }

    /// The next thing `receive()` returns, if it need not wait. Taking a
    /// message makes room in the queue: the reactor, if it stopped reading
    /// at a full queue, may read again (the caller wakes it).
    fn try_receive(&mut self) -> Option<Received> {
        if !self.connect_delivered {
            self.connect_delivered = true;
            return Some(Received::Connect);
        }
        if let Some(message) = self.incoming.pop_front() {
            self.incoming_bytes -= message.weight();
            self.reactor_wants_room = false;
            return Some(Received::Message(message));
        }
        self.disconnect
            .as_ref()
            .map(|(code, reason)| Received::Disconnect(*code, reason.clone()))
    }
}

/// What `receive()` returns.
pub(crate) enum Received {
    Connect,
    Message(PeerMessage),
    Disconnect(u16, String),
}

/// Why the app may not do what it asked; turned into a Python exception by
/// the ASGI side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Misuse {
    /// Accept, close or a denial response after the handshake was answered.
    HandshakeAnswered,
    SendBeforeAccept,
    DenialBodyBeforeStart,
    /// The connection is closed (by the peer, or by the app's own close).
    Closed,
}

/// What became of a `websocket.send`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    Queued,
    /// Queued, and the queue is past [`OUTGOING_HIGH_WATER`]: the app waits
    /// for it to drain ([`WsSession::park_sender`]).
    Full,
    /// Dropped: the connection is closed, and the app is within its grace
    /// for sends after the close.
    Dropped,
}

/// What the reactor hands over when a client asks to open a WebSocket.
pub(crate) struct WsStart {
    pub session: Arc<WsSession>,
    pub head: http::request::Parts,
}

/// One WebSocket connection's state; every step of the protocol is a method.
pub(crate) struct WsSession {
    state: Mutex<WsState>,
    bridge: Arc<EventBridge>,
    max_queue: usize,
    /// How long after the close the app's `send()` drops its message quietly
    /// (`--ws-closed-send-grace`); after it, `send()` raises.
    closed_send_grace: Duration,
    /// The request target, escaped for log lines.
    pub path: String,
    pub connection: ConnectionInfo,
}

impl WsSession {
    pub(crate) fn new(
        bridge: Arc<EventBridge>,
        max_queue: usize,
        closed_send_grace: Duration,
        path: String,
        connection: ConnectionInfo,
    ) -> WsSession {
        WsSession {
            state: Mutex::new(WsState::default()),
            bridge,
            max_queue: max_queue.max(1),
            closed_send_grace,
            path,
            connection,
        }
    }

    /// Signals the Python thread about the events every connection queued.
    /// The reactor signals by itself only when it runs out of work and
    /// parks, so a connection that yields in the middle of a long stretch of
    /// work (see `ws::serve`) calls this around the yield, or the others'
    /// messages would wait for the end of that stretch.
    pub(crate) fn hand_over_events(&self) {
        self.bridge.flush();
    }

    fn resolve(self: &Arc<Self>, futures: Vec<Py<PyAny>>, kind: WaitKind) {
        for future in futures {
            self.bridge.push(Event::WsResolve(WsWaiter {
                future,
                session: Arc::clone(self),
                kind,
            }));
        }
    }

    /// Applies `change` to the state under the lock, then wakes the reactor
    /// if it asked to: a wake on the Python thread schedules a loop callback
    /// (Python code), which must not run under a lock the reactor takes.
    fn update<T>(&self, change: impl FnOnce(&mut WsState) -> (T, bool)) -> T {
        let (result, waker) = {
            let mut st = self.state.lock();
            let (result, wake_reactor) = change(&mut st);
            (
                result,
                if wake_reactor {
                    st.reactor.take()
                } else {
                    None
                },
            )
        };
        if let Some(waker) = waker {
            wake(waker);
        }
        result
    }

    // ---- reactor side -------------------------------------------------

    /// Ready with the app's answer to the opening handshake; `None` when the
    /// connection is already over. A refusal hands the disconnect to every
    /// `receive()` that was waiting when it came (another task of the app).
    pub(crate) fn poll_handshake(
        self: &Arc<Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Handshake>> {
        let (handshake, receivers) = {
            let mut st = self.state.lock();
            match st.handshake.take() {
                Some(handshake) => {
                    let receivers = if st.accepted {
                        Vec::new()
                    } else {
                        std::mem::take(&mut st.receivers)
                    };
                    (Some(handshake), receivers)
                }
                None if st.disconnect.is_some() => (None, Vec::new()),
                None => {
                    st.reactor = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        };
        self.resolve(receivers, WaitKind::Receive);
        Poll::Ready(handshake)
    }

    /// Whether the incoming queue has room for another peer message.
    pub(crate) fn has_room(&self) -> bool {
        self.state.lock().has_room(self.max_queue)
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
                if want_room && st.has_room(self.max_queue) {
                    st.reactor_wants_room = false;
                    return Poll::Ready(AppEvent::Room);
                }
                st.reactor_wants_room = want_room;
                st.reactor = Some(cx.waker().clone());
                return Poll::Pending;
            }
            st.take_outgoing()
        };
        self.resolve(sender, WaitKind::Send);
        Poll::Ready(AppEvent::Send(messages))
    }

    /// What the app has sent that is not written yet, all of it, now: the
    /// shutdown's close frame goes out after it.
    pub(crate) fn take_outgoing(self: &Arc<Self>) -> Vec<AppMessage> {
        let (messages, sender) = self.state.lock().take_outgoing();
        self.resolve(sender, WaitKind::Send);
        messages
    }

    /// A data message arrived from the peer. Once the app has closed it reads
    /// no more messages, so one that arrives after its close is dropped.
    pub(crate) fn push_incoming(self: &Arc<Self>, message: PeerMessage) {
        let receiver = {
            let mut st = self.state.lock();
            if st.app_closed {
                return;
            }
            st.incoming_bytes += message.weight();
            st.incoming.push_back(message);
            std::mem::take(&mut st.receivers)
        };
        self.resolve(receiver, WaitKind::Receive);
    }

    /// The connection is over with `code`: the app's receive() returns
    /// `websocket.disconnect`; its send() drops messages for the grace, then
    /// raises.
    pub(crate) fn finish(self: &Arc<Self>, code: u16, reason: &str) {
        let (receiver, sender) = {
            let mut st = self.state.lock();
            if st.disconnect.is_none() {
                st.disconnect = Some((code, reason.to_string()));
            }
            st.app_closed = true;
            st.closed_at.get_or_insert_with(Instant::now);
            (
                std::mem::take(&mut st.receivers),
                std::mem::take(&mut st.senders),
            )
        };
        self.resolve(receiver, WaitKind::Receive);
        self.resolve(sender, WaitKind::Send);
    }

    /// The app could not be started for this handshake: refuse it with 500.
    pub(crate) fn fail_handshake(&self) {
        self.update(|st| {
            let answer = !st.handshake_done;
            if answer {
                st.refuse(Handshake::Reject(StatusCode::INTERNAL_SERVER_ERROR));
            }
            ((), answer)
        });
    }

    // ---- app side (the Python thread; under the lock it asks parked
    // futures `done()` and nothing else of Python, and releases nothing of
    // Python's) ---------------------------------------------------------

    /// `receive()` without waiting: the next message, or `None` when the app
    /// must wait (then park a future with [`WsSession::park_receiver`]).
    pub(crate) fn try_receive(&self) -> Option<Received> {
        self.update(|st| {
            let wanted_room = st.reactor_wants_room;
            let received = st.try_receive();
            (received, wanted_room && !st.reactor_wants_room)
        })
    }

    /// Parks `future` for the reactor to hand back when a message arrives;
    /// when one arrived meanwhile, returns it with the future instead.
    pub(crate) fn park_receiver(
        &self,
        py: Python<'_>,
        future: Py<PyAny>,
    ) -> Result<(), (Py<PyAny>, Received)> {
        let (result, finished) = self.update(|st| {
            let wanted_room = st.reactor_wants_room;
            let parked = match st.try_receive() {
                Some(received) => (Err((future, received)), Vec::new()),
                None => (Ok(()), park_future(py, &mut st.receivers, future)),
            };
            (parked, wanted_room && !st.reactor_wants_room)
        });
        drop(finished);
        result
    }

    /// Keeps `guard` until the app is done with the connection (or the
    /// session goes): what counts the app's task against its connection.
    pub(crate) fn hold(&self, guard: impl Send + 'static) {
        self.state.lock().held = Some(Box::new(guard));
    }

    /// `websocket.accept`.
    pub(crate) fn accept(
        &self,
        subprotocol: Option<String>,
        headers: HeaderMap,
    ) -> Result<(), Misuse> {
        self.update(|st| {
            // A denial response begun answers the handshake too: accepted
            // now, it would go out as a 101 after all.
            if st.handshake_done || st.denial.is_some() {
                return (Err(Misuse::HandshakeAnswered), false);
            }
            st.handshake = Some(Handshake::Accept {
                subprotocol,
                headers,
            });
            st.handshake_done = true;
            st.accepted = true;
            (Ok(()), true)
        })
    }

    /// Whether the app accepted the handshake: only then does a close it
    /// sends go out as a close frame.
    pub(crate) fn accepted(&self) -> bool {
        self.state.lock().accepted
    }

    /// Whether the connection closed less than `--ws-closed-send-grace` ago.
    fn in_closed_send_grace(&self, st: &WsState) -> bool {
        st.closed_at
            .is_some_and(|at| at.elapsed() < self.closed_send_grace)
    }

    /// `websocket.send`.
    ///
    /// On a closed connection the message is lost. Within the grace after the
    /// close it is dropped quietly: an app busy in a handler when the client
    /// left (a Channels consumer replying to a message, or to a group event)
    /// then gets back to its `receive()`, which returns `websocket.disconnect`
    /// and runs its disconnect handler, which an exception here would have
    /// skipped. After the grace `send()` raises, as ASGI 2.4 asks, so that an
    /// app that only sends, and so never hears of the disconnect, stops.
    pub(crate) fn send(&self, message: AppMessage) -> Result<Sent, Misuse> {
        // Kept out here, so that a message refused is dropped (its data may
        // be the app's bytes) after the lock, not in the closure under it.
        let mut message = Some(message);
        self.update(|st| {
            // Before accept too: after a refused handshake, or a client that
            // left during it, there is no connection to send on.
            if st.app_closed || st.disconnect.is_some() {
                return if st.accepted && self.in_closed_send_grace(st) {
                    (Ok(Sent::Dropped), false)
                } else {
                    (Err(Misuse::Closed), false)
                };
            }
            if !st.accepted {
                return (Err(Misuse::SendBeforeAccept), false);
            }
            let full = message.take().is_some_and(|message| st.queue(message));
            (Ok(if full { Sent::Full } else { Sent::Queued }), true)
        })
    }

    /// `websocket.close`: refuses the handshake (403) before accept, else
    /// queues the close frame. `Ok(Sent::Full)` when the app should wait for
    /// the queue to drain.
    ///
    /// On a connection already closed (by the app, the peer, or a refused
    /// handshake) it returns quietly, whenever it comes, where
    /// `websocket.send` raises once the grace is over: a send there loses its
    /// message, which the app must hear of in the end, while a close asks for
    /// what already holds. Closing in a `finally` after the
    /// disconnect is common (Starlette turns an `OSError` from it into
    /// `WebSocketDisconnect`, which would then escape the app).
    pub(crate) fn close(&self, code: u16, reason: String) -> Result<Sent, Misuse> {
        self.update(|st| {
            if !st.handshake_done {
                st.refuse(Handshake::Reject(StatusCode::FORBIDDEN));
                return (Ok(Sent::Queued), true);
            }
            if st.app_closed || st.disconnect.is_some() {
                // Closing twice, or after the peer left: nothing to send.
                return (Ok(Sent::Queued), false);
            }
            st.app_closed = true;
            st.closed_at = Some(Instant::now());
            let full = st.queue(AppMessage::Close(code, reason));
            (Ok(if full { Sent::Full } else { Sent::Queued }), true)
        })
    }

    /// `websocket.http.response.start` (the denial response extension).
    pub(crate) fn deny_start(&self, start: ResponseStart) -> Result<(), Misuse> {
        self.update(|st| {
            if st.handshake_done || st.denial.is_some() {
                return (Err(Misuse::HandshakeAnswered), false);
            }
            st.denial = Some((start, BytesMut::new()));
            (Ok(()), false)
        })
    }

    /// `websocket.http.response.body`; the last one answers the handshake.
    pub(crate) fn deny_body(&self, body: &[u8], more: bool) -> Result<(), Misuse> {
        self.update(|st| {
            let Some((_, collected)) = st.denial.as_mut() else {
                // After the denial's last body (or an accept or a close), the
                // handshake is answered; before anything, the start is missing.
                let misuse = if st.handshake_done {
                    Misuse::HandshakeAnswered
                } else {
                    Misuse::DenialBodyBeforeStart
                };
                return (Err(misuse), false);
            };
            collected.extend_from_slice(body);
            if more {
                return (Ok(()), false);
            }
            match st.denial.take() {
                Some((start, body)) => {
                    st.refuse(Handshake::Respond(start, body.freeze()));
                    (Ok(()), true)
                }
                None => (Ok(()), false),
            }
        })
    }

    /// Parks `future` until the outgoing queue drains; hands it back when
    /// the app need not wait after all (the connection is over).
    pub(crate) fn park_sender(&self, py: Python<'_>, future: Py<PyAny>) -> Option<Py<PyAny>> {
        let finished = {
            let mut st = self.state.lock();
            if st.disconnect.is_some() || st.outgoing_bytes <= OUTGOING_HIGH_WATER {
                return Some(future);
            }
            park_future(py, &mut st.senders, future)
        };
        drop(finished);
        None
    }

    /// Whether a `send()` that waited for the queue to drain returns: the
    /// connection is open, or closed within the grace for sends after the
    /// close; otherwise it raises.
    pub(crate) fn waiting_send_returns(&self) -> bool {
        let st = self.state.lock();
        st.disconnect.is_none() || self.in_closed_send_grace(&st)
    }

    /// The app returned or raised: answer the handshake (403, or 500 when it
    /// failed) or close the connection (1000, or 1011 when it failed).
    pub(crate) fn finish_app(&self, failed: bool) -> AppEnd {
        self.update(|st| {
            st.held = None;
            if !st.handshake_done {
                // A denial response the app began and did not end is a
                // failure too: it is not the 403 of an app that just closed.
                let unfinished = st.denial.take().is_some();
                if unfinished && !failed {
                    tracing::error!(
                        "ASGI callable returned without finishing its websocket.http.response \
                         (no body message with more_body=False); sent 500"
                    );
                }
                let status = if failed || unfinished {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::FORBIDDEN
                };
                st.refuse(Handshake::Reject(status));
                return (AppEnd::Refused(status), true);
            }
            if !st.accepted {
                return (AppEnd::AnsweredBefore, false);
            }
            if let Some((code, _)) = &st.disconnect {
                return (AppEnd::AlreadyClosed(*code), false);
            }
            if st.app_closed {
                return (AppEnd::ClosedBefore, false);
            }
            let (code, reason) = if failed {
                (code::INTERNAL_ERROR, "internal server error")
            } else {
                (code::NORMAL, "")
            };
            st.app_closed = true;
            st.queue(AppMessage::Close(code, reason.to_string()));
            (AppEnd::Closed(code), true)
        })
    }
}

/// What the app's end did to its WebSocket (see [`WsSession::finish_app`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AppEnd {
    /// The handshake was unanswered: refused with this status.
    Refused(StatusCode),
    /// The handshake was answered already without a connection (a 403,
    /// or the app's own response).
    AnsweredBefore,
    /// The connection was open: closed with this code.
    Closed(u16),
    /// The app had sent its close already.
    ClosedBefore,
    /// The connection had closed already, with this code: the client's,
    /// 1006 when it left, or the server's (1012 at shutdown).
    AlreadyClosed(u16),
}

/// Whether an endpoint may send `code` in a close frame (RFC 6455 §7.4.1,
/// §7.4.2 and IANA's registry): 1004 is reserved, 1005, 1006 and 1015 are
/// for reporting only, 1016-2999 belong to future protocol revisions, and
/// nothing below 1000 or above 4999 is a close code.
pub(crate) fn is_sendable_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// The longest close reason: a control frame carries at most 125 bytes, two
/// of which are the code (RFC 6455 §5.5).
pub(crate) const MAX_CLOSE_REASON: usize = 123;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{Scheme, ServerAddr};

    fn session(max_queue: usize) -> Arc<WsSession> {
        with_grace(max_queue, Duration::ZERO)
    }

    fn with_grace(max_queue: usize, closed_send_grace: Duration) -> Arc<WsSession> {
        Arc::new(WsSession::new(
            Arc::new(EventBridge::new().unwrap()),
            max_queue,
            closed_send_grace,
            "/ws".into(),
            ConnectionInfo {
                scheme: Scheme::Http,
                client: None,
                server: ServerAddr::Tcp("127.0.0.1:80".parse().unwrap()),
                tls: None,
                forwarded_prefix: None,
                relayed: false,
            },
        ))
    }

    #[test]
    fn close_codes_follow_rfc6455() {
        for code in [1000, 1001, 1003, 1007, 1011, 1012, 1014, 3000, 4999] {
            assert!(is_sendable_close_code(code), "{code}");
        }
        for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            assert!(!is_sendable_close_code(code), "{code}");
        }
    }

    #[test]
    fn connect_comes_first_then_messages_then_disconnect() {
        let session = session(4);
        assert!(matches!(session.try_receive(), Some(Received::Connect)));
        assert!(session.try_receive().is_none());
        session.push_incoming(PeerMessage::Text("hi".into()));
        assert!(matches!(
            session.try_receive(),
            Some(Received::Message(PeerMessage::Text(_)))
        ));
        session.finish(code::NORMAL, "bye");
        assert!(matches!(
            session.try_receive(),
            Some(Received::Disconnect(1000, _))
        ));
    }

    #[test]
    fn a_message_after_the_apps_close_is_not_queued() {
        let session = session(4);
        assert!(matches!(session.try_receive(), Some(Received::Connect)));
        session.accept(None, HeaderMap::new()).unwrap();
        session.push_incoming(PeerMessage::Text("before".into()));
        session.close(code::NORMAL, String::new()).unwrap();
        session.push_incoming(PeerMessage::Text("after".into()));
        assert!(matches!(
            session.try_receive(),
            Some(Received::Message(PeerMessage::Text(text))) if text == "before"
        ));
        assert!(session.try_receive().is_none());
    }

    #[test]
    fn the_incoming_queue_is_bounded_in_messages_and_in_bytes() {
        let small = session(2);
        small.push_incoming(PeerMessage::Text("a".into()));
        assert!(small.has_room());
        small.push_incoming(PeerMessage::Text("b".into()));
        assert!(!small.has_room());

        let large = session(32);
        let half = || PeerMessage::Binary(Bytes::from(vec![0; INCOMING_HIGH_WATER / 2]));
        large.push_incoming(half());
        assert!(large.has_room());
        large.push_incoming(half());
        assert!(!large.has_room());
        assert!(matches!(large.try_receive(), Some(Received::Connect)));
        assert!(matches!(large.try_receive(), Some(Received::Message(_))));
        assert!(large.has_room());

        // An empty queue takes a message of any size.
        let huge = session(32);
        assert!(huge.has_room());
        huge.push_incoming(PeerMessage::Binary(Bytes::from(vec![
            0;
            4 * INCOMING_HIGH_WATER
        ])));
        assert!(!huge.has_room());
        assert!(matches!(huge.try_receive(), Some(Received::Connect)));
        assert!(matches!(huge.try_receive(), Some(Received::Message(_))));
        assert!(huge.has_room());
    }

    #[test]
    fn send_needs_accept_and_an_open_connection() {
        let session = session(4);
        assert_eq!(
            session.send(AppMessage::Text("x".into())),
            Err(Misuse::SendBeforeAccept)
        );
        session.accept(None, HeaderMap::new()).unwrap();
        assert_eq!(
            session.accept(None, HeaderMap::new()),
            Err(Misuse::HandshakeAnswered)
        );
        assert_eq!(session.send(AppMessage::Text("x".into())), Ok(Sent::Queued));
        assert_eq!(session.close(code::NORMAL, String::new()), Ok(Sent::Queued));
        assert_eq!(
            session.send(AppMessage::Text("x".into())),
            Err(Misuse::Closed)
        );
    }

    #[test]
    fn a_large_send_asks_the_app_to_wait() {
        let session = session(4);
        session.accept(None, HeaderMap::new()).unwrap();
        let big = Bytes::from(vec![0; OUTGOING_HIGH_WATER + 1]);
        assert_eq!(session.send(AppMessage::Binary(big)), Ok(Sent::Full));
    }

    #[test]
    fn within_the_grace_a_send_after_the_close_is_dropped_quietly() {
        let session = with_grace(4, Duration::from_secs(3600));
        session.accept(None, HeaderMap::new()).unwrap();
        session.finish(code::ABNORMAL, "");
        assert_eq!(
            session.send(AppMessage::Text("late".into())),
            Ok(Sent::Dropped)
        );
        assert!(session.waiting_send_returns());
        assert!(session.state.lock().outgoing.is_empty());
        // The disconnect still reaches receive().
        assert!(matches!(session.try_receive(), Some(Received::Connect)));
        assert!(matches!(
            session.try_receive(),
            Some(Received::Disconnect(code::ABNORMAL, _))
        ));

        // The app's own close starts the grace too: the peer's reply may not
        // have come yet when a handler sends.
        let closing = with_grace(4, Duration::from_secs(3600));
        closing.accept(None, HeaderMap::new()).unwrap();
        closing.close(code::NORMAL, String::new()).unwrap();
        assert_eq!(
            closing.send(AppMessage::Text("late".into())),
            Ok(Sent::Dropped)
        );
    }

    #[test]
    fn after_the_grace_a_send_after_the_close_raises() {
        let session = with_grace(4, Duration::ZERO);
        session.accept(None, HeaderMap::new()).unwrap();
        assert!(session.waiting_send_returns());
        session.finish(code::NORMAL, "");
        assert_eq!(
            session.send(AppMessage::Text("late".into())),
            Err(Misuse::Closed)
        );
        assert!(!session.waiting_send_returns());
    }

    #[test]
    fn a_refused_handshake_has_no_grace() {
        let session = with_grace(4, Duration::from_secs(3600));
        session.close(code::NORMAL, String::new()).unwrap();
        assert_eq!(
            session.send(AppMessage::Text("x".into())),
            Err(Misuse::Closed)
        );
    }

    #[test]
    fn close_before_accept_refuses_the_handshake() {
        let session = session(4);
        assert_eq!(session.close(code::NORMAL, String::new()), Ok(Sent::Queued));
        let st = session.state.lock();
        assert!(matches!(
            st.handshake,
            Some(Handshake::Reject(StatusCode::FORBIDDEN))
        ));
    }

    #[test]
    fn after_a_refusal_receive_is_a_disconnect_and_send_is_closed() {
        let session = session(4);
        assert!(matches!(session.try_receive(), Some(Received::Connect)));
        session.close(code::NORMAL, String::new()).unwrap();
        assert!(matches!(
            session.try_receive(),
            Some(Received::Disconnect(code::ABNORMAL, _))
        ));
        assert_eq!(
            session.send(AppMessage::Text("x".into())),
            Err(Misuse::Closed)
        );
    }

    #[test]
    fn the_app_ending_closes_with_1000_or_1011() {
        let ok = session(4);
        ok.accept(None, HeaderMap::new()).unwrap();
        assert_eq!(ok.finish_app(false), AppEnd::Closed(code::NORMAL));
        assert!(matches!(
            ok.state.lock().outgoing.back(),
            Some(AppMessage::Close(code::NORMAL, _))
        ));
        let failed = session(4);
        failed.accept(None, HeaderMap::new()).unwrap();
        assert_eq!(
            failed.finish_app(true),
            AppEnd::Closed(code::INTERNAL_ERROR)
        );
        assert!(matches!(
            failed.state.lock().outgoing.back(),
            Some(AppMessage::Close(code::INTERNAL_ERROR, _))
        ));
    }

    #[test]
    fn an_app_ending_after_the_close_says_who_closed() {
        let gone = session(4);
        gone.accept(None, HeaderMap::new()).unwrap();
        gone.finish(code::ABNORMAL, "");
        assert_eq!(gone.finish_app(true), AppEnd::AlreadyClosed(code::ABNORMAL));
        assert!(gone.state.lock().outgoing.is_empty());

        let closed = session(4);
        closed.accept(None, HeaderMap::new()).unwrap();
        closed.close(4000, String::new()).unwrap();
        assert_eq!(closed.finish_app(true), AppEnd::ClosedBefore);

        let refused = session(4);
        assert_eq!(
            refused.finish_app(true),
            AppEnd::Refused(StatusCode::INTERNAL_SERVER_ERROR)
        );
        let denied = session(4);
        denied.close(code::NORMAL, String::new()).unwrap();
        assert_eq!(denied.finish_app(true), AppEnd::AnsweredBefore);
    }

    #[test]
    fn denial_response_is_collected_until_the_last_body() {
        let session = session(4);
        assert_eq!(
            session.deny_body(b"x", false),
            Err(Misuse::DenialBodyBeforeStart)
        );
        let start = ResponseStart {
            status: StatusCode::UNAUTHORIZED,
            headers: HeaderMap::new(),
            reason: None,
            content_length: None,
        };
        session.deny_start(start).unwrap();
        assert_eq!(
            session.accept(None, HeaderMap::new()),
            Err(Misuse::HandshakeAnswered),
            "accepted after the denial began"
        );
        session.deny_body(b"no ", true).unwrap();
        session.deny_body(b"entry", false).unwrap();
        match &session.state.lock().handshake {
            Some(Handshake::Respond(start, body)) => {
                assert_eq!(start.status, StatusCode::UNAUTHORIZED);
                assert_eq!(&body[..], b"no entry");
            }
            _ => panic!("expected the denial response"),
        };
        assert_eq!(
            session.deny_body(b"more", false),
            Err(Misuse::HandshakeAnswered),
            "a body after the denial's last one"
        );
    }
}
