//! One HTTP request/response exchange, shared by the reactor and the app.
//!
//! The reactor fills the request body and drains the response; the app side
//! (ASGI `receive()`/`send()` in `asgi::http`, or a WSGI pool thread in
//! `wsgi`) consumes the body and queues the response. Both meet in
//! [`Exchange`], whose state sits behind a plain mutex that never needs the
//! GIL. Who is waiting is recorded in the state: a tokio waker for the
//! reactor, an asyncio future for an ASGI app (handed back through the
//! bridge), or a parked thread for a WSGI app.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::thread::Thread;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Uri, Version};
use parking_lot::{Mutex, MutexGuard};
use pyo3::prelude::*;

use crate::bridge::{wake, wake_when_idle, Bridge, Event, WaitKind, Waiter};
use crate::net::ConnectionInfo;

/// Request body buffered ahead of the app before the reactor stops reading
/// the socket: enough for one read, small enough that a large upload is
/// never held whole.
pub(crate) const REQUEST_BODY_HIGH_WATER: usize = 64 * 1024;

/// Response body buffered behind a slow client before `send()` waits.
pub(crate) const RESPONSE_HIGH_WATER: usize = 64 * 1024;

/// `send()` waiting on a full buffer resumes once the buffer drains below this.
pub(crate) const RESPONSE_LOW_WATER: usize = 16 * 1024;

/// What the reactor hands over when a request arrives.
pub(crate) struct RequestStart {
    pub exchange: Arc<Exchange>,
    pub head: http::request::Parts,
}

/// The status line and headers the app sent in `http.response.start`.
pub(crate) struct ResponseStart {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// A reason phrase other than the status code's standard one (WSGI apps
    /// choose theirs, e.g. Werkzeug's "418 I'M A TEAPOT").
    pub reason: Option<hyper::ext::ReasonPhrase>,
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
pub(crate) struct State {
    // Request body: reactor → app.
    pub(crate) body: VecDeque<Bytes>,
    pub(crate) body_buffered: usize,
    /// The last body chunk has arrived from the client.
    pub(crate) body_complete: bool,
    /// The app has seen `more_body=False`.
    pub(crate) body_delivered: bool,
    /// The app has called `receive()` at least once (hyper sends
    /// `100 Continue` only once the body is read).
    pub(crate) body_wanted: bool,
    pub(crate) pump: Option<Waker>,
    pub(crate) receiver: Option<Py<PyAny>>,

    // Response: app → reactor.
    pub(crate) start: Option<ResponseStart>,
    pub(crate) started: bool,
    pub(crate) chunks: VecDeque<Bytes>,
    pub(crate) response_buffered: usize,
    /// The app sent `more_body=False`.
    pub(crate) complete: bool,
    /// The app ended before completing its response.
    pub(crate) aborted: bool,
    pub(crate) sender: Option<Py<PyAny>>,
    pub(crate) reactor: Option<Waker>,
    /// A WSGI pool thread blocked on this exchange (for body or buffer room).
    pub(crate) parked: Option<Thread>,

    /// The client went away, or the reactor ended the exchange on a bad body.
    pub(crate) closed: bool,
    /// The reactor refused the request body (malformed, too large) before the
    /// response started: answer with this status instead of the app's.
    pub(crate) refused: Option<StatusCode>,
}

/// The state of one request shared between the reactor and the app.
pub(crate) struct Exchange {
    state: Mutex<State>,
    bridge: Arc<Bridge>,
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub connection: ConnectionInfo,
}

impl Exchange {
    pub(crate) fn new(
        bridge: Arc<Bridge>,
        head: &http::request::Parts,
        connection: ConnectionInfo,
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
            connection,
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

    /// The shared state; held briefly, never across a wait or a Python call.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
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
    /// buffer has room, or the app finished without reading it all.
    pub(crate) fn poll_body_room(&self, cx: &mut Context<'_>) -> Poll<BodyRoom> {
        let mut st = self.state.lock();
        if st.closed {
            // A complete response with the body still unread: read and
            // discard the rest so the connection can carry the next request.
            let drain = st.complete && !st.aborted && !st.body_complete;
            return Poll::Ready(if drain {
                BodyRoom::Drain
            } else {
                BodyRoom::Stop
            });
        }
        if st.body_wanted && st.body_buffered < REQUEST_BODY_HIGH_WATER {
            return Poll::Ready(BodyRoom::Read);
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
            if let Some(thread) = st.parked.take() {
                thread.unpark();
            }
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

    /// The app is done with the exchange. A request body it left unread is
    /// read and discarded (up to [`MAX_BODY_DRAIN`]) so the connection can
    /// carry the next request.
    pub(crate) fn finish_app(self: &Arc<Self>) {
        {
            let mut st = self.state.lock();
            st.body.clear();
            st.body_buffered = 0;
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
            if let Some(thread) = st.parked.take() {
                thread.unpark();
            }
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
                        if let Some(thread) = st.parked.take() {
                            thread.unpark();
                        }
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

    // ---- blocking side, for WSGI pool threads (call with the GIL released) --

    /// Parks the current thread until the reactor changes the state.
    fn park(mut st: MutexGuard<'_, State>) {
        st.parked = Some(std::thread::current());
        drop(st);
        std::thread::park();
    }

    /// Up to `max` bytes of request body if some is buffered, or the end,
    /// without waiting: `None` means a read would have to wait.
    pub(crate) fn try_read_body(&self, max: usize) -> Option<BodyRead> {
        let mut st = self.state.lock();
        if st.closed && !st.body_complete {
            return Some(BodyRead::Closed);
        }
        if let Some(front) = st.body.front_mut() {
            let data = if front.len() <= max {
                st.body.pop_front().unwrap_or_default()
            } else {
                front.split_to(max)
            };
            st.body_buffered -= data.len();
            if let Some(waker) = st.pump.take() {
                drop(st);
                wake(waker);
            }
            return Some(BodyRead::Data(data));
        }
        if st.body_complete {
            return Some(BodyRead::End);
        }
        st.body_wanted = true;
        if let Some(waker) = st.pump.take() {
            drop(st);
            wake(waker);
        }
        None
    }

    /// Up to `max` bytes of request body, waiting for them if needed.
    pub(crate) fn read_body_blocking(&self, max: usize) -> BodyRead {
        loop {
            if let Some(read) = self.try_read_body(max) {
                return read;
            }
            let st = self.state.lock();
            if st.body.is_empty() && !st.body_complete && !st.closed {
                Exchange::park(st);
            }
        }
    }

    /// Queues the response head (once) and a body chunk. Returns whether the
    /// client is still there and whether the buffer is now over its
    /// high-water mark (then call [`Exchange::wait_for_room`]).
    pub(crate) fn queue_response(
        &self,
        start: Option<ResponseStart>,
        data: Bytes,
        more: bool,
    ) -> Result<bool, ()> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(());
        }
        if let Some(start) = start {
            st.started = true;
            st.start = Some(start);
        }
        if !data.is_empty() && self.method != Method::HEAD {
            st.response_buffered += data.len();
            st.chunks.push_back(data);
        }
        st.complete = !more;
        if let Some(waker) = st.reactor.take() {
            if more {
                wake(waker);
            } else {
                wake_when_idle(waker);
            }
        }
        Ok(st.response_buffered > RESPONSE_HIGH_WATER)
    }

    /// Waits while a slow client has more than the high-water mark buffered.
    /// `Err(())` means the client is gone.
    pub(crate) fn wait_for_room(&self) -> Result<(), ()> {
        let mut st = self.state.lock();
        loop {
            if st.closed {
                return Err(());
            }
            if st.response_buffered <= RESPONSE_HIGH_WATER {
                return Ok(());
            }
            Exchange::park(st);
            st = self.state.lock();
        }
    }

    /// [`Exchange::queue_response`], then [`Exchange::wait_for_room`] if needed.
    pub(crate) fn send_blocking(
        &self,
        start: Option<ResponseStart>,
        data: Bytes,
        more: bool,
    ) -> Result<(), ()> {
        if self.queue_response(start, data, more)? {
            self.wait_for_room()?;
        }
        Ok(())
    }

    /// Ends the response without completing it: a 500 when nothing was sent
    /// yet, an aborted connection otherwise.
    pub(crate) fn abort(self: &Arc<Self>) {
        let reactor = {
            let mut st = self.state.lock();
            if !st.complete {
                st.aborted = true;
            }
            st.reactor.take()
        };
        if let Some(waker) = reactor {
            wake(waker);
        }
    }
}

/// What the body pump may do next.
pub(crate) enum BodyRoom {
    /// Read and hand the data to the app.
    Read,
    /// Read and discard: the app is done, the connection may be reused.
    Drain,
    /// Stop reading.
    Stop,
}

/// Request body an app left unread that the server still reads and discards
/// to keep the connection; beyond it, the connection is closed instead.
pub(crate) const MAX_BODY_DRAIN: u64 = 1024 * 1024;

/// What a blocking body read found.
pub(crate) enum BodyRead {
    Data(Bytes),
    /// The whole body has been read.
    End,
    /// The client went away before the end of the body.
    Closed,
}
