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
use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, StatusCode, Uri, Version};
use parking_lot::{Mutex, MutexGuard};
use pyo3::prelude::*;

use crate::asgi::{is_done, park_future, Event, EventBridge, WaitKind, Waiter};
use crate::net::ConnectionInfo;
use crate::wake::wake;

/// Request body buffered ahead of the app before the reactor stops reading
/// the socket: enough for one read, small enough that a large upload is
/// never held whole.
pub(crate) const REQUEST_BODY_HIGH_WATER: usize = 64 * 1024;

/// Response body buffered behind a slow client before `send()` waits.
pub(crate) const RESPONSE_HIGH_WATER: usize = 64 * 1024;

/// `send()` waiting on a full buffer resumes once the buffer drains below this.
pub(crate) const RESPONSE_LOW_WATER: usize = 16 * 1024;

/// How long after a `receive()` that waited for it handed the app
/// `http.disconnect` the app's `send()` calls still do nothing (see
/// [`State::closed_send`]). An app that listens so (Django's ASGI handler,
/// Quart) cancels the task that sends within a few turns of its event loop;
/// this leaves room for a loop that something else holds up. After it,
/// `send()` raises, so that a stream whose app lost the message (a cancel
/// scope that closed around the `receive()` as it was answered) still stops.
pub(crate) const HEARD_DISCONNECT_SEND_GRACE: Duration = Duration::from_secs(10);

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
    /// choose theirs, e.g. Werkzeug's "418 I'M A TEAPOT"), or an empty one
    /// for a code that has none.
    pub reason: Option<hyper::ext::ReasonPhrase>,
    /// The number in the app's `Content-Length`, once checked.
    pub content_length: Option<u64>,
}

impl ResponseStart {
    /// The app's response head, once [`check_framing`](Self::check_framing)
    /// has passed its headers.
    pub(crate) fn new(
        status: StatusCode,
        mut headers: HeaderMap,
        reason: Option<hyper::ext::ReasonPhrase>,
    ) -> Result<Self, String> {
        let content_length = Self::check_framing(&mut headers)?;
        // hyper writes a code it knows no reason for (420, 299, 599) as
        // "420 <none>"; uvicorn leaves the reason empty ("420 "), as RFC
        // 9112 §4 allows. ASGI has no reason, and a WSGI app's "420" or
        // "420 " has none either. A code with a standard reason needs no
        // extension: hyper writes that reason itself.
        let reason = reason.or_else(|| {
            status
                .canonical_reason()
                .is_none()
                .then(|| hyper::ext::ReasonPhrase::from_static(b""))
        });
        Ok(Self {
            status,
            headers,
            reason,
            content_length,
        })
    }

    /// Checks the app's headers that decide how the response is framed,
    /// which the server owns (PEP 3333 forbids an app hop-by-hop headers;
    /// gunicorn drops them too):
    /// - `Content-Length` must be one number (repeats of the same number are
    ///   made one); anything else would go out as written, next to a body of
    ///   another length, and the client would read the rest of this
    ///   response, or part of the next, wrongly.
    /// - `Transfer-Encoding`, `TE`, `Keep-Alive` and `Proxy-Connection` are
    ///   dropped (hyper frames the body itself, and refuses a response that
    ///   has both a length and a transfer coding), and `Connection` is kept
    ///   only as `close`, which hyper honours. `Upgrade` stays: a 426 must
    ///   carry it (RFC 9110 §15.5.22).
    ///
    /// Returns the length the headers declare.
    fn check_framing(headers: &mut HeaderMap) -> Result<Option<u64>, String> {
        use http::header::{CONNECTION, CONTENT_LENGTH, TE, TRANSFER_ENCODING};
        let mut length = None;
        let mut lengths = headers.get_all(CONTENT_LENGTH).iter();
        if let Some(first) = lengths.next() {
            let number = |value: &http::HeaderValue| {
                let digits = value.as_bytes().trim_ascii();
                !digits.is_empty() && digits.len() <= 19 && digits.iter().all(u8::is_ascii_digit)
            };
            let mut repeated = false;
            for other in lengths {
                if other != first {
                    return Err(format!(
                        "the response has two different Content-Length headers, {first:?} and {other:?}"
                    ));
                }
                repeated = true;
            }
            if !number(first) {
                return Err(format!(
                    "the response's Content-Length must be a number of bytes, got {first:?}"
                ));
            }
            let trimmed = first.as_bytes().trim_ascii();
            // At most 19 digits: below u64::MAX.
            length = std::str::from_utf8(trimmed)
                .ok()
                .and_then(|s| s.parse().ok());
            if repeated || trimmed.len() != first.as_bytes().len() {
                // One value, as digits only (which is what the length
                // check against the body reads).
                let value =
                    http::HeaderValue::from_bytes(trimmed).unwrap_or_else(|_| first.clone());
                headers.insert(CONTENT_LENGTH, value);
            }
        }
        // One pass over the names settles almost every response.
        let hop_by_hop = |name: &http::HeaderName| {
            name == TRANSFER_ENCODING
                || name == CONNECTION
                || name == TE
                || name == "keep-alive"
                || name == "proxy-connection"
        };
        if !headers.keys().any(hop_by_hop) {
            return Ok(length);
        }
        let close = headers
            .get_all(CONNECTION)
            .iter()
            .flat_map(|value| value.as_bytes().split(|&b| b == b','))
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"));
        for name in [TRANSFER_ENCODING, CONNECTION, TE] {
            headers.remove(name);
        }
        headers.remove("keep-alive");
        headers.remove("proxy-connection");
        if close {
            headers.insert(CONNECTION, http::HeaderValue::from_static("close"));
        }
        Ok(length)
    }
}

/// Whether a trailer section must not carry `name`: fields that frame the
/// message or the connection (RFC 9113 §8.2.2 forbids them in any HTTP/2
/// field block, and h2 refuses to send trailers with one: the stream is
/// cancelled, the body queued before them lost), and fields a recipient
/// needs before the content, which RFC 9110 §6.5.1 keeps out of trailers
/// (hyper's HTTP/1 encoder drops the same ones). Dropped on both protocols,
/// so that an app sees one behaviour.
fn forbidden_in_trailers(name: &http::HeaderName) -> bool {
    use http::header::*;
    matches!(
        *name,
        CONNECTION
            | TE
            | TRANSFER_ENCODING
            | UPGRADE
            | TRAILER
            | CONTENT_LENGTH
            | CONTENT_ENCODING
            | CONTENT_RANGE
            | CONTENT_TYPE
            | HOST
            | MAX_FORWARDS
            | AUTHORIZATION
            | CACHE_CONTROL
            | SET_COOKIE
    ) || name == "keep-alive"
        || name == "proxy-connection"
}

/// Set once a worker has warned of a trailer field it dropped.
static WARNED_FORBIDDEN_TRAILER: AtomicBool = AtomicBool::new(false);

/// Drops the app's trailer fields that [`forbidden_in_trailers`], naming the
/// first: worth a warning the first time (the app's author expects it to
/// arrive), debug after (an app may send one on every response).
fn drop_forbidden_trailers(fields: &mut HeaderMap, request_line: impl FnOnce() -> String) {
    if !fields.keys().any(forbidden_in_trailers) {
        return;
    }
    let forbidden: Vec<http::HeaderName> = fields
        .keys()
        .filter(|name| forbidden_in_trailers(name))
        .cloned()
        .collect();
    for name in &forbidden {
        fields.remove(name);
    }
    let message = format!(
        "\"{}\": the app's trailers carry {}, which a trailer section must not \
         (RFC 9110 §6.5.1); dropped, the other trailer fields go out",
        request_line(),
        forbidden
            .iter()
            .map(http::HeaderName::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    );
    if WARNED_FORBIDDEN_TRAILER.swap(true, Ordering::Relaxed) {
        tracing::debug!("{message}");
    } else {
        tracing::warn!("{message} (said once per worker; later ones at debug)");
    }
}

/// Why the reactor could not send the app's response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The app failed before starting a response: answer with this status.
    Status(StatusCode),
    /// The client is gone.
    Closed,
}

/// Part of a file the response sends from its descriptor (ASGI
/// `http.response.pathsend` and `http.response.zerocopysend`, WSGI's
/// `wsgi.file_wrapper`): read by the reactor as the client takes it, never
/// copied through Python.
#[derive(Debug)]
pub(crate) struct FileSpan {
    pub file: File,
    pub offset: u64,
    pub len: u64,
}

impl FileSpan {
    /// From `offset`, `count` bytes (else to the end) of the regular file
    /// open as `fd`, through a descriptor of our own: the app may close its
    /// file as soon as it has handed it over.
    pub(crate) fn from_descriptor(
        fd: i32,
        offset: u64,
        count: Option<u64>,
    ) -> std::io::Result<FileSpan> {
        // SAFETY: fcntl has no memory-safety preconditions; on success the
        // new descriptor is ours alone.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `dup` is a fresh descriptor owned by nobody else.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(dup) });
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
        let available = meta.len().saturating_sub(offset);
        Ok(FileSpan {
            file,
            offset,
            len: count.map_or(available, |count| count.min(available)),
        })
    }
}

/// A piece of the response body.
#[derive(Debug)]
pub(crate) enum Chunk {
    Data(Bytes),
    File(FileSpan),
    /// The trailer fields, after the last of the body (ASGI's
    /// `http.response.trailers` extension).
    Trailers(HeaderMap),
}

impl From<Bytes> for Chunk {
    fn from(data: Bytes) -> Chunk {
        Chunk::Data(data)
    }
}

impl Chunk {
    fn len(&self) -> u64 {
        match self {
            Chunk::Data(data) => data.len() as u64,
            Chunk::File(span) => span.len,
            Chunk::Trailers(_) => 0,
        }
    }
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
    /// Bytes of the body that have arrived from the client, in all.
    body_received: u64,
    /// The last body chunk has arrived from the client.
    body_complete: bool,
    /// The app has seen `more_body=False`.
    body_delivered: bool,
    /// The app has called `receive()` at least once (hyper sends
    /// `100 Continue` only once the body is read).
    body_wanted: bool,
    /// WSGI threads blocked in a read of the body (ASGI's waiting
    /// `receive()` calls are in `receivers`).
    body_readers: u32,
    /// The `receive()` futures the app parked after it had the whole body,
    /// when the only message left is `http.disconnect`: while one of them
    /// still waits, the app listens for the client leaving (Django's ASGI
    /// handler does, in a task beside the one that sends), and its `send()`
    /// calls after a disconnect do nothing instead of raising (see
    /// [`State::closed_send`]). One the app cancelled (Starlette's
    /// `is_disconnected`, a listener task stopped) listens no more.
    listeners: Vec<Py<PyAny>>,
    /// When one of the `listeners` was handed `http.disconnect`, woken by
    /// the client leaving: the start of [`HEARD_DISCONNECT_SEND_GRACE`].
    /// Not a `receive()` that the disconnect answered at once: that is how
    /// Starlette's `is_disconnected()` looks, and behind its
    /// `BaseHTTPMiddleware` the answer is thrown away (see
    /// [`State::closed_send`]).
    disconnect_heard: Option<Instant>,
    pump: Option<Waker>,
    /// The `receive()` futures waiting for body or a disconnect: every one
    /// is handed back when something arrives (two tasks may wait at once,
    /// e.g. a disconnect watcher beside Starlette's `is_disconnected`).
    receivers: Vec<Py<PyAny>>,

    // Response: app → reactor.
    start: Option<ResponseStart>,
    started: bool,
    /// The app sent a body message (or its WSGI body began): until then its
    /// head is not sent, so an app that fails between the two gets a 500
    /// (ASGI: nothing goes out before the first `http.response.body`).
    body_began: bool,
    /// A 204 or 304 response: its body is dropped, as for HEAD (an HTTP/2
    /// client takes DATA on such a response for a protocol error).
    bodiless: bool,
    chunks: VecDeque<Chunk>,
    /// The app's `Content-Length` and how much of it is left (none for a bodiless
    /// response or one without the header): the body is cut there, so what
    /// goes out always matches the header, over HTTP/1 (where extra bytes
    /// would pose as the next response) and HTTP/2 (where the client takes
    /// them for a protocol error) alike.
    length: Option<DeclaredLength>,
    /// Bytes of `Data` chunks queued: memory, which backpressure bounds.
    response_buffered: usize,
    /// Bytes of `File` chunks queued: not in memory, so not bounded.
    response_file_bytes: u64,
    /// The app sent `more_body=False` (and, when it announced trailers,
    /// `more_trailers=False`).
    complete: bool,
    /// The app announced trailers (`"trailers": True` in its start).
    trailers_expected: bool,
    /// With trailers announced: the body is over, the trailers are not.
    body_done: bool,
    /// Trailer fields received so far (`more_trailers=True`).
    trailers: HeaderMap,
    /// The app ended before completing its response.
    aborted: bool,
    /// The `send()` futures waiting for room in the buffer.
    senders: Vec<Py<PyAny>>,
    reactor: Option<Waker>,
    /// A WSGI thread waits in [`Exchange::wait_for_room`] for a slow client
    /// to take the response (left set once the exchange closes under it).
    waiting_for_client: bool,
    /// The WSGI threads blocked on this exchange (for body or buffer room):
    /// the app's own threads may read the body in one while another waits
    /// in `write()`, and a wake-up for one must not be lost to the other.
    parked: Vec<Thread>,

    /// The client went away, or the reactor ended the exchange on a bad body.
    closed: bool,
    /// hyper's read put off by a half-close while the body was incomplete,
    /// woken once the whole body has arrived (see
    /// [`Exchange::wake_when_whole`]).
    when_whole: Option<Waker>,
    /// The body's task ended without the whole body (see
    /// [`Exchange::body_abandoned`]).
    body_abandoned: bool,
    /// When hyper last put a piece of the body in its channel, or ended
    /// it (coarse; see [`Exchange::body_decoded`]).
    decoded_at: Option<tokio::time::Instant>,
    /// The client half-closed its connection after the whole request: it
    /// sends nothing more but still reads, so the response is written, and
    /// a `receive()` past the body hears `http.disconnect`, as for a client
    /// that left (see `connection::Activity::half_closed`).
    client_done: bool,
    /// The reactor refused the request body (malformed, too large) before the
    /// response started: answer with this status instead of the app's.
    refused: Option<StatusCode>,
    /// The reactor refused the request body, before the response started
    /// or after: the server ended the exchange, not the client.
    body_refused: bool,
    /// The app's asyncio task, kept only with `--timeout-request`, so that a
    /// request past its deadline can be cancelled.
    task: Option<Py<PyAny>>,
    /// Counted as long as the exchange lives, that is until both the
    /// response is done and the app has let go of it (see [`Exchange::hold`]).
    held: Option<Box<dyn Send>>,
    /// The app has returned (or failed).
    app_finished: bool,
    /// The reactor is done with the response (sent, or the client left).
    response_released: bool,
    /// Where a WSGI request stands with the pool's threads.
    thread: ThreadStage,
}

impl State {
    /// A WSGI app whose response is complete while it still runs (its
    /// iterable's `close()`, a generator's code after its last chunk) may
    /// read the body it left unread: PEP 3333 sets no end to reading
    /// `wsgi.input`, and gunicorn hands the whole body over then. The body
    /// is read for it, not thrown away, until it returns; only a body the
    /// server stopped reading (the client left, or it was refused) makes
    /// such a read fail.
    fn app_reads_after_response(&self) -> bool {
        self.closed
            && self.response_done()
            && !self.aborted
            && !self.app_finished
            && !self.body_abandoned
            && !self.body_refused
            && self.thread != ThreadStage::Unpooled
    }

    /// The app waits for body that has not come (or the exchange is over).
    fn body_awaited(&self) -> bool {
        let waiting = !self.receivers.is_empty() || self.body_readers > 0;
        self.closed || (waiting && self.body.is_empty() && !self.body_complete)
    }

    /// The next thing `receive()` returns, if it need not wait: the buffered
    /// body (joined), the end of it, or a disconnect. `waited`: for a
    /// `receive()` the reactor woke, which, after the whole body, was
    /// listening for the disconnect (see [`State::disconnect_heard`]).
    fn try_receive(&mut self, waited: bool) -> Option<Received> {
        let listening = waited && self.body_delivered;
        let received = self.try_receive_message();
        if listening && matches!(received, Some(Received::Disconnect)) {
            self.disconnect_heard.get_or_insert_with(Instant::now);
        }
        received
    }

    fn try_receive_message(&mut self) -> Option<Received> {
        if self.closed && !self.body_complete {
            return Some(Received::Disconnect);
        }
        if !self.body.is_empty() {
            let data = if self.body.len() == 1 {
                self.body.pop_front().unwrap_or_default()
            } else {
                let mut joined = BytesMut::with_capacity(self.body_buffered);
                for chunk in self.body.drain(..) {
                    joined.extend_from_slice(&chunk);
                }
                joined.freeze()
            };
            self.body_buffered = 0;
            let more = !self.body_complete;
            self.body_delivered = !more;
            return Some(Received::Body { data, more });
        }
        if self.body_complete && !self.body_delivered {
            self.body_delivered = true;
            return Some(Received::Body {
                data: Bytes::new(),
                more: false,
            });
        }
        if self.closed || self.complete || self.client_done {
            return Some(Received::Disconnect);
        }
        None
    }

    /// What a `send()` gets once the client has left: `ClientDisconnected`
    /// (an `OSError`, as ASGI 2.4 asks), so that an app streaming a response
    /// stops; nothing (`None`: the message is dropped) when the app listens
    /// for the disconnect through `receive()`. Django's ASGI handler is such
    /// an app: it stops the view when `receive()` says the client left, but
    /// an `OSError` from a `send()` made meanwhile skips its end of request
    /// (`request_finished`), and the view's database connection was never
    /// given back to Django's pool (four of eight lost in a few seconds of
    /// aborted requests). uvicorn and granian drop such sends too.
    ///
    /// Only while the app is told or will be: a `receive()` of its still
    /// waits for the disconnect, or one that waited was handed it less than
    /// [`HEARD_DISCONNECT_SEND_GRACE`] ago. Not for a `receive()` the app
    /// cancelled, nor for one the disconnect answered at once: Starlette (for
    /// ASGI 2.4) looks so, with `is_disconnected()`, and relies on this error
    /// to stop a streaming response whose client left. Its look is a
    /// `receive()` inside a cancel scope already cancelled, which behind its
    /// `BaseHTTPMiddleware` (FastAPI's `@app.middleware("http")`) throws the
    /// answer away as it closes: the app never hears of the disconnect, and
    /// with its sends dropped the stream would run on for nobody, holding its
    /// place under `--limit-concurrency`, until the app ended it. Django's
    /// listener is answered at once too when the client left before the
    /// view ran; the handler then cancels the view at its first wait (its
    /// database work waits on a thread), before it sends, unless it sends
    /// without having waited for anything.
    fn closed_send(&self) -> Result<(), SendMisuse> {
        let heard = || {
            self.disconnect_heard
                .is_some_and(|at| at.elapsed() < HEARD_DISCONNECT_SEND_GRACE)
        };
        let waiting = || {
            // Only here, after a disconnect: the GIL is held (send() is
            // Python's call), and only a future knows whether it was cancelled.
            Python::attach(|py| {
                self.listeners
                    .iter()
                    .any(|future| !is_done(py, future).unwrap_or(true))
            })
        };
        if heard() || (!self.listeners.is_empty() && waiting()) {
            Ok(())
        } else {
            Err(SendMisuse::Closed)
        }
    }

    /// Whether the app has sent its whole response: its last message, or
    /// as much as its Content-Length says (hyper ends the response there,
    /// and may close the exchange before that last message comes).
    fn response_done(&self) -> bool {
        self.complete || self.delivered().is_some()
    }

    /// Whether the reactor has taken the whole response.
    fn all_taken(&self) -> bool {
        self.response_done() && self.chunks.is_empty()
    }

    /// A chunk of `extra` bytes the app sent once the exchange closed:
    /// `None` when the Content-Length was not all sent (the client left).
    /// Otherwise hyper ended the response on its length, which is no
    /// disconnect: the last message (or bytes past the length) completes
    /// the response, and bytes in it are past the length.
    fn after_delivered(&mut self, extra: u64, more: bool) -> Option<Option<Overrun>> {
        let declared = self.delivered()?;
        if !more || extra > 0 {
            self.complete = true;
            self.body_done = true;
        }
        Some((extra > 0).then_some(Overrun {
            declared,
            sent: declared + extra,
        }))
    }

    /// The app's `Content-Length`, when all of it has been queued: hyper
    /// ends the response there, whatever the app sends after.
    fn delivered(&self) -> Option<u64> {
        self.length
            .filter(|length| length.left == 0)
            .map(|length| length.declared)
    }

    /// What [`Exchange::hold`] kept, once both the app and the reactor are
    /// done (dropped by the caller, outside the lock).
    fn take_held(&mut self) -> Option<Box<dyn Send>> {
        if self.app_finished && self.response_released {
            self.held.take()
        } else {
            None
        }
    }

    /// Records the app's response head; its body is then held to its
    /// `Content-Length` (see [`State::length`]).
    fn start(&mut self, start: ResponseStart, is_head: bool) {
        self.started = true;
        self.bodiless = matches!(start.status.as_u16(), 204 | 304);
        self.length = start
            .content_length
            .filter(|_| !self.bodiless && !is_head)
            .map(|declared| DeclaredLength {
                declared,
                left: declared,
            });
        self.start = Some(start);
    }

    /// Queues a response body chunk. A chunk with nothing to send (empty, or
    /// the body of a HEAD, 204 or 304, which hyper never sends) is handed
    /// back, for the caller to drop once the lock is let go: its data may be
    /// a Python object lent to us, and releasing that with the GIL held can
    /// run the app's code (a `__del__`), which must not run under this lock.
    ///
    /// A chunk that goes past the app's `Content-Length` is cut to it, and
    /// ends the body: [`Pushed::overran`] says so, for the app to be told.
    #[must_use = "drop the unsent chunk after letting go of the lock"]
    fn push_chunk(&mut self, mut chunk: Chunk, more: bool, is_head: bool) -> Pushed {
        self.body_began = true;
        let mut overran = None;
        if let Some(length) = &mut self.length {
            let len = chunk.len();
            if len > length.left {
                overran = Some(Overrun {
                    declared: length.declared,
                    sent: length.declared - length.left + len,
                });
                match &mut chunk {
                    // At most the chunk's length, which is a usize.
                    Chunk::Data(data) => data.truncate(length.left as usize),
                    Chunk::File(span) => span.len = length.left,
                    Chunk::Trailers(_) => {}
                }
            }
            length.left -= chunk.len();
        }
        let keep = match &chunk {
            Chunk::Trailers(_) => true,
            other => other.len() > 0,
        };
        let unsent = if keep && !is_head && !self.bodiless {
            match &chunk {
                Chunk::Data(data) => self.response_buffered += data.len(),
                Chunk::File(span) => self.response_file_bytes += span.len,
                Chunk::Trailers(_) => {}
            }
            self.chunks.push_back(chunk);
            None
        } else {
            Some(chunk)
        };
        if overran.is_some() {
            // Cut short, the response ends here: without the trailers an
            // app may have announced, as the app is told by an error.
            self.body_done = true;
            self.complete = true;
        } else if !more && self.trailers_expected && !self.body_done {
            // The body is over; the response ends with the trailers.
            self.body_done = true;
        } else {
            self.complete = !more;
        }
        Pushed { unsent, overran }
    }
}

#[derive(Debug, Clone, Copy)]
struct DeclaredLength {
    declared: u64,
    left: u64,
}

/// What [`State::push_chunk`] did with a chunk.
struct Pushed {
    /// To be dropped once the lock is let go.
    unsent: Option<Chunk>,
    overran: Option<Overrun>,
}

/// A response body longer than the app's `Content-Length`: cut to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Overrun {
    /// The app's `Content-Length`, which is what was sent.
    pub declared: u64,
    /// What the app had sent by the chunk that went past it: at least this
    /// much was the body it meant.
    pub sent: u64,
}

/// What ASGI `receive()` returns when it does not have to wait.
pub(crate) enum Received {
    Body { data: Bytes, more: bool },
    Disconnect,
}

/// What became of an ASGI `http.response.body`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// Queued for the client.
    Queued,
    /// Queued, and the buffer is over its high-water mark: wait for room.
    Full,
    /// Dropped: the client is gone, and the app listens for that through
    /// `receive()` (see [`State::closed_send`]).
    Dropped,
}

/// What became of a WSGI response chunk ([`Exchange::queue_response`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Queued {
    /// The buffer is over its high-water mark: wait for room.
    pub full: bool,
    /// The chunk went past the app's `Content-Length`, and was cut to it.
    pub overran: Option<Overrun>,
}

/// A `send()` the protocol does not allow at this point of the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendMisuse {
    /// The client is gone.
    Closed,
    AlreadyStarted,
    BodyBeforeStart,
    AlreadyComplete,
    /// `http.response.trailers` without `"trailers": True` in the start.
    TrailersNotAnnounced,
    /// `http.response.trailers` before the body's `more_body=False`.
    TrailersBeforeBodyEnd,
    /// A body longer than the app's `Content-Length`: sent up to it.
    PastContentLength(Overrun),
}

/// How far the app got with its response, for the log line when it ends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Progress {
    /// The app sent its response head (`http.response.start`).
    pub started: bool,
    /// The head went out, or goes out: the app sent a body message too.
    pub head_sent: bool,
    /// The whole response is in: the app's last message, or as much as
    /// its Content-Length says.
    pub complete: bool,
    pub closed: bool,
}

/// Where a request stands with the WSGI pool: `--timeout-request` tells a
/// thread stuck in the app from a request that only waited for one, and a
/// request still waiting when its client leaves is done with at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum ThreadStage {
    /// An ASGI request: no pool thread will take it.
    #[default]
    Unpooled,
    /// Queued for a pool thread, none has taken it yet. Once the exchange
    /// is closed, none will: its app never runs.
    Queued,
    /// A pool thread took it and runs its app; since when, if the pool
    /// records it (with `--timeout-request`).
    Taken(Option<Instant>),
}

/// The state of one request shared between the reactor and the app.
pub(crate) struct Exchange {
    state: Mutex<State>,
    bridge: Arc<EventBridge>,
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub connection: ConnectionInfo,
    /// The body can become whole only with more of the client's input:
    /// its task found hyper's channel empty, and hyper has not put a frame
    /// there since. Were the input to end now, the body would be cut short
    /// (see `connection::Activity::half_closed`).
    body_needs_input: AtomicBool,
}

impl Exchange {
    /// A new exchange, written straight into its `Arc`'s allocation: at
    /// about 700 bytes, an `Exchange` that `Arc::new` took would be copied
    /// twice on the way there, on every request. `pooled`: a WSGI request,
    /// about to be queued for a pool thread.
    pub(crate) fn new(
        bridge: Arc<EventBridge>,
        head: &http::request::Parts,
        connection: ConnectionInfo,
        body_complete: bool,
        pooled: bool,
    ) -> Arc<Exchange> {
        let mut shared = Arc::<Exchange>::new_uninit();
        Arc::get_mut(&mut shared)
            .expect("a new Arc has no other holder")
            .write(Exchange {
                state: Mutex::new(State {
                    body_complete,
                    thread: if pooled {
                        ThreadStage::Queued
                    } else {
                        ThreadStage::Unpooled
                    },
                    ..State::default()
                }),
                bridge,
                method: head.method.clone(),
                uri: head.uri.clone(),
                version: head.version,
                connection,
                body_needs_input: AtomicBool::new(false),
            });
        // SAFETY: the value was written just above.
        unsafe { shared.assume_init() }
    }

    /// "GET /path?q HTTP/1.1", for log lines.
    pub(crate) fn request_line(&self) -> String {
        let target = self
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        // As in the access log: a `"` in the path must not end the quoted field.
        let target = crate::http::access_format::Escaped(target.as_bytes());
        format!("{} {target} {:?}", self.method, self.version)
    }

    /// How far the app got with its response.
    pub(crate) fn progress(&self) -> Progress {
        let st = self.state.lock();
        Progress {
            started: st.started,
            head_sent: st.started && st.body_began,
            // All of the app's Content-Length queued: hyper ends the response
            // there, whether or not the app's last message says so.
            complete: st.response_done(),
            closed: st.closed,
        }
    }

    /// Whether the request has no body: all of it arrived, and none of it
    /// was bytes. Asked before the app runs; once it reads, an emptied
    /// buffer no longer says so.
    pub(crate) fn has_no_body(&self) -> bool {
        let st = self.state.lock();
        st.body_complete && st.body.is_empty()
    }

    /// Whether a `send()` waiting for room, woken by the client leaving,
    /// raises `ClientDisconnected`: not when the reactor took the whole
    /// response first (the client left after it), nor when the app listens
    /// for the disconnect (see [`State::closed_send`]).
    pub(crate) fn waiting_send_fails(&self) -> bool {
        let st = self.state.lock();
        st.closed && !st.all_taken() && st.closed_send().is_err()
    }

    fn resolve(self: &Arc<Self>, futures: impl IntoIterator<Item = Py<PyAny>>, kind: WaitKind) {
        for future in futures {
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
            // Not a body the app never asked for under `Expect:
            // 100-continue`: the client was not told to send it (reading it
            // now would send a late 100 Continue), so it may not come, or
            // come as the next request; hyper then closes the connection
            // after the response (RFC 9110 §10.1.1).
            let drain = st.response_done() && !st.aborted && !st.body_complete && st.body_wanted;
            if drain && st.app_reads_after_response() {
                // Not yet: the app may still read it (see
                // `State::app_reads_after_response`). `finish_app` wakes the
                // pump to drain what it left.
                if st.body_buffered < REQUEST_BODY_HIGH_WATER {
                    return Poll::Ready(BodyRoom::Read);
                }
                st.pump = Some(cx.waker().clone());
                return Poll::Pending;
            }
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

    /// Ready once the app waits for body that has not come: an ASGI
    /// `receive()` or a WSGI read with nothing buffered. Only then does
    /// `--timeout-request-body` run: a client that pauses its body while the
    /// app does something else (streams its response) is not late.
    ///
    /// With `awaited` false, the other way round: ready once the app no
    /// longer waits (its `receive()` was answered, or it stopped waiting).
    pub(crate) fn poll_body_awaited(&self, cx: &mut Context<'_>, awaited: bool) -> Poll<()> {
        let mut st = self.state.lock();
        if st.body_awaited() == awaited {
            return Poll::Ready(());
        }
        st.pump = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Whether the app still waits for body, once `receive()` futures it
    /// cancelled are taken out: the reactor learns of a cancel only from
    /// the future, which takes the GIL, so this is for the rare moment
    /// `--timeout-request-body` runs out, not for every look.
    pub(crate) fn body_still_awaited(&self) -> bool {
        Python::attach(|py| {
            let (awaited, finished) = {
                let mut st = self.state.lock();
                let finished: Vec<Py<PyAny>> = st
                    .receivers
                    .extract_if(.., |waiter| is_done(py, waiter).unwrap_or(true))
                    .collect();
                (st.body_awaited(), finished)
            };
            // After the lock: releasing a future may run the app's code.
            drop(finished);
            awaited
        })
    }

    /// Starts reading the body without waiting for the app's first `receive()`.
    pub(crate) fn want_body(&self) {
        self.state.lock().body_wanted = true;
    }

    /// Of a request body of `length` bytes, how many have not arrived yet
    /// (0 once it is complete).
    pub(crate) fn body_to_come(&self, length: u64) -> u64 {
        let st = self.state.lock();
        if st.body_complete {
            0
        } else {
            length.saturating_sub(st.body_received)
        }
    }

    /// Whether more of the request body is to come that the app will not
    /// read: it has returned, or has taken none of the body nor waits for
    /// it (it answered without looking at the body). Not an app that
    /// streams its response as it reads (a full-duplex echo).
    pub(crate) fn body_to_come_untouched(&self) -> bool {
        let st = self.state.lock();
        // A returned app's buffered body was let go of: its count says nothing.
        let taken = st.body_received > st.body_buffered as u64;
        let waiting = !st.receivers.is_empty() || st.body_readers > 0;
        !st.body_complete && (st.app_finished || (!taken && !waiting))
    }

    /// Whether the body is still to come and was never asked for: a request
    /// with `Expect: 100-continue` that the app answers without reading it.
    /// The client was not told to send the body, so the connection cannot
    /// carry another request after the response (see `poll_body_room`).
    pub(crate) fn body_never_asked(&self) -> bool {
        let st = self.state.lock();
        !st.body_complete && !st.body_wanted
    }

    /// A chunk of request body arrived (`last` when it is the final one).
    pub(crate) fn push_body(self: &Arc<Self>, data: Bytes, last: bool) {
        let (receiver, whole) = {
            let mut st = self.state.lock();
            if !data.is_empty() {
                st.body_buffered += data.len();
                st.body_received += data.len() as u64;
                st.body.push_back(data);
            }
            st.body_complete |= last;
            unpark_all(&mut st.parked);
            let whole = if last { st.when_whole.take() } else { None };
            (std::mem::take(&mut st.receivers), whole)
        };
        if let Some(waker) = whole {
            wake(waker);
        }
        self.resolve(receiver, WaitKind::Receive);
    }

    /// The body's task found no frame of the body in hyper's channel:
    /// what is missing of the body can come only from the client. A
    /// half-close looked at while the body's task had a frame to take is
    /// looked at again, now that the answer is known.
    pub(crate) fn body_needs_input(&self) {
        self.body_needs_input.store(true, Ordering::Relaxed);
        Self::look_again(self.state.lock());
    }

    /// Wakes a half-close look waiting for the body (see
    /// [`Exchange::wake_when_whole`]), once `st` is unlocked.
    fn look_again(mut st: MutexGuard<'_, State>) {
        let look = st.when_whole.take();
        drop(st);
        if let Some(waker) = look {
            wake(waker);
        }
    }

    /// The body's task took a frame of the body.
    pub(crate) fn body_frame_ready(&self) {
        self.body_needs_input.store(false, Ordering::Relaxed);
    }

    /// hyper put a frame of the body in its channel, or ended it: it
    /// decodes a body from its buffer as the app reads, which may be long
    /// after the socket read that brought those bytes, and only then reads
    /// on to the end of the client's input (see
    /// `connection::Activity::half_closed`).
    pub(crate) fn body_decoded(&self) {
        self.body_needs_input.store(false, Ordering::Relaxed);
        self.state.lock().decoded_at = Some(crate::clock::coarse_now());
    }

    /// When hyper last decoded a piece of the body, if it has.
    pub(crate) fn decoded_at(&self) -> Option<tokio::time::Instant> {
        self.state.lock().decoded_at
    }

    /// Whether the end of the client's input now cuts the body short: the
    /// body's task has taken all hyper had of it and waits for more.
    pub(crate) fn body_cut_by_end_of_input(&self) -> bool {
        self.body_needs_input.load(Ordering::Relaxed)
    }

    /// Wakes `waker` once the whole body has arrived (at once if it has).
    pub(crate) fn wake_when_whole(&self, waker: &Waker) {
        let mut st = self.state.lock();
        if st.body_complete {
            drop(st);
            waker.wake_by_ref();
        } else {
            st.when_whole = Some(waker.clone());
        }
    }

    /// The request body was bad (`status` is 400 or 413): the app sees a
    /// disconnect and the client gets `status` if no response started yet.
    pub(crate) fn refuse_body(self: &Arc<Self>, status: StatusCode) {
        {
            let mut st = self.state.lock();
            // Not once the head may have gone out (it goes with the first body).
            if !st.body_began {
                st.refused = Some(status);
            }
            st.body_refused = true;
        }
        self.close();
    }

    /// The app is done with the exchange. A request body it left unread is
    /// read and discarded (up to [`MAX_BODY_DRAIN`]) so the connection can
    /// carry the next request.
    pub(crate) fn finish_app(self: &Arc<Self>) {
        let (held, pump) = {
            let mut st = self.state.lock();
            st.body.clear();
            st.body_buffered = 0;
            st.app_finished = true;
            // Closed already (a complete response), `close` wakes no one:
            // a pump that kept the body for the app drains it now.
            (st.take_held(), st.pump.take())
        };
        drop(held);
        if let Some(waker) = pump {
            wake(waker);
        }
        self.close();
    }

    /// Whether the app's response is a 204 or 304, whose body is dropped.
    pub(crate) fn response_is_bodiless(&self) -> bool {
        self.state.lock().bodiless
    }

    /// Whether the app has returned (or failed): what is left of its
    /// response is the client's to take, no longer the app's to produce.
    pub(crate) fn app_finished(&self) -> bool {
        self.state.lock().app_finished
    }

    /// The reactor is done with the response: what [`Exchange::hold`] keeps
    /// is let go of once the app is done too (else when the exchange is
    /// dropped).
    pub(crate) fn release_response(&self) {
        let held = {
            let mut st = self.state.lock();
            st.response_released = true;
            st.take_held()
        };
        drop(held);
    }

    /// Whether the whole request has arrived, or the body no longer
    /// matters (its task ended without it: the app finished without reading
    /// it all, or it was refused): a half-close now is the client done
    /// sending, not one that left mid-request, and the response is written.
    /// (The exchange may be closed by then, its app done: a client that
    /// reset the connection makes the read fail, not end.)
    pub(crate) fn request_whole(&self) -> bool {
        let st = self.state.lock();
        st.body_complete || st.body_abandoned
    }

    /// The body's task ended without the whole body. hyper may still read
    /// the rest (to keep the connection) and find the end of input after
    /// it: the response the app or the server has for the request is
    /// written all the same. A half-close looked at while the body was to
    /// come is looked at again.
    pub(crate) fn body_abandoned(&self) {
        let mut st = self.state.lock();
        st.body_abandoned = true;
        // A WSGI thread reading after its complete response hears it.
        unpark_all(&mut st.parked);
        Self::look_again(st);
    }

    /// The client half-closed after the whole request: `receive()` calls
    /// waiting past the body hear `http.disconnect`; the response goes on.
    pub(crate) fn client_done_sending(self: &Arc<Self>) {
        let receivers = {
            let mut st = self.state.lock();
            if st.closed || st.client_done {
                return;
            }
            st.client_done = true;
            std::mem::take(&mut st.receivers)
        };
        self.resolve(receivers, WaitKind::Receive);
    }

    /// The client went away or the connection ended: wake everyone waiting.
    pub(crate) fn close(self: &Arc<Self>) {
        self.close_seeing_thread();
    }

    /// [`Exchange::close`], and where the request stood with the WSGI pool
    /// as it closed (a thread takes it only while open: see
    /// [`Exchange::take_for_thread`]).
    fn close_seeing_thread(self: &Arc<Self>) -> ThreadStage {
        let (receiver, sender, reactor, pump, held, stage) = {
            let mut st = self.state.lock();
            let stage = st.thread;
            if st.closed {
                return stage;
            }
            st.closed = true;
            unpark_all(&mut st.parked);
            // Still queued, its app will never run (no thread takes a closed
            // exchange): done with now rather than when a thread, or the
            // queue's sweep, gets to it. Its body read ahead goes (up to
            // REQUEST_BODY_HIGH_WATER, with all threads stuck held for as
            // long), and with what `hold` kept its place under
            // --limit-concurrency.
            let held = if stage == ThreadStage::Queued {
                st.body.clear();
                st.body_buffered = 0;
                st.app_finished = true;
                st.take_held()
            } else {
                None
            };
            (
                std::mem::take(&mut st.receivers),
                std::mem::take(&mut st.senders),
                st.reactor.take(),
                st.pump.take(),
                held,
                stage,
            )
        };
        drop(held);
        self.resolve(receiver, WaitKind::Receive);
        self.resolve(sender, WaitKind::Send);
        if let Some(waker) = reactor {
            wake(waker);
        }
        if let Some(waker) = pump {
            wake(waker);
        }
        stage
    }

    /// A pool thread takes this WSGI request to run its app, `at` the time
    /// if it is recorded: false when the exchange is closed (its client
    /// left, or `--timeout-request` answered it while it waited), and then
    /// its app is never run.
    pub(crate) fn take_for_thread(&self, at: Option<Instant>) -> bool {
        let mut st = self.state.lock();
        if st.closed {
            return false;
        }
        st.thread = ThreadStage::Taken(at);
        true
    }

    /// Whether this is a WSGI request no pool thread has taken: still
    /// waiting, or closed while it waited (then its app never runs).
    pub(crate) fn waits_for_thread(&self) -> bool {
        self.state.lock().thread == ThreadStage::Queued
    }

    /// Whether the reactor refused the request body (malformed, too large,
    /// too slow), which the app sees as a disconnect.
    pub(crate) fn body_refused(&self) -> bool {
        self.state.lock().body_refused
    }

    /// Whether the exchange closed because its client left, not because
    /// the server ended it (`--timeout-request`, a bad body).
    pub(crate) fn client_left(&self) -> bool {
        let st = self.state.lock();
        st.closed && !st.aborted && !st.body_refused
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
        if st.body_began {
            if let Some(start) = st.start.take() {
                return Poll::Ready(Ok(start));
            }
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
    ) -> Poll<Option<Result<Chunk, Aborted>>> {
        let (chunk, sender) = {
            let mut st = self.state.lock();
            match st.chunks.pop_front() {
                Some(Chunk::File(span)) => {
                    st.response_file_bytes -= span.len;
                    return Poll::Ready(Some(Ok(Chunk::File(span))));
                }
                Some(trailers @ Chunk::Trailers(_)) => return Poll::Ready(Some(Ok(trailers))),
                Some(Chunk::Data(chunk)) => {
                    st.response_buffered -= chunk.len();
                    let sender = if st.response_buffered <= RESPONSE_LOW_WATER {
                        unpark_all(&mut st.parked);
                        std::mem::take(&mut st.senders)
                    } else {
                        Vec::new()
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
        Poll::Ready(Some(Ok(Chunk::Data(chunk))))
    }

    /// The length of the whole response body when the app has already sent
    /// all of it, so hyper can send Content-Length instead of chunking.
    pub(crate) fn complete_body_len(&self) -> Option<u64> {
        let st = self.state.lock();
        // Trailers need a chunked (HTTP/1.1) or framed (HTTP/2) body.
        (st.complete && !st.trailers_expected)
            .then_some(st.response_buffered as u64 + st.response_file_bytes)
    }

    /// True once the app has sent its whole response and all of it was
    /// taken: its last message, or as much as its Content-Length says.
    pub(crate) fn response_finished(&self) -> bool {
        self.state.lock().all_taken()
    }

    // ---- ASGI side (the Python thread) ---------------------------------
    //
    // Wakes happen after the lock is released: on the Python thread a wake
    // schedules a loop callback, Python code that must not run under a lock
    // the reactor takes.

    /// `receive()` without waiting; `None` means park a future with
    /// [`Exchange::park_receiver`]. Lets the body pump read on.
    pub(crate) fn receive(&self) -> Option<Received> {
        let (received, pump) = {
            let mut st = self.state.lock();
            let received = st.try_receive(false);
            if received.is_none() {
                st.body_wanted = true;
            }
            (received, st.pump.take())
        };
        if let Some(waker) = pump {
            wake(waker);
        }
        received
    }

    /// Parks `future` for the reactor to hand back when body arrives; when
    /// some arrived meanwhile, returns it with the future instead.
    pub(crate) fn park_receiver(
        &self,
        py: Python<'_>,
        future: Py<PyAny>,
    ) -> Result<(), (Py<PyAny>, Received)> {
        self.receive_or_park(py, future, false)
    }

    /// For a parked `future` the reactor handed back: what arrived, with
    /// the future, or parks it again (another `receive()` took the body).
    pub(crate) fn resume_receiver(
        &self,
        py: Python<'_>,
        future: Py<PyAny>,
    ) -> Result<(), (Py<PyAny>, Received)> {
        self.receive_or_park(py, future, true)
    }

    fn receive_or_park(
        &self,
        py: Python<'_>,
        future: Py<PyAny>,
        waited: bool,
    ) -> Result<(), (Py<PyAny>, Received)> {
        let (result, pump, finished) = {
            let mut st = self.state.lock();
            let (result, finished) = match st.try_receive(waited) {
                Some(received) => (Err((future, received)), Vec::new()),
                None => {
                    st.body_wanted = true;
                    let mut finished = Vec::new();
                    if st.body_delivered {
                        finished = park_future(py, &mut st.listeners, future.clone_ref(py));
                    }
                    finished.extend(park_future(py, &mut st.receivers, future));
                    (Ok(()), finished)
                }
            };
            (result, st.pump.take(), finished)
        };
        // After the lock: releasing a future may run the app's code.
        drop(finished);
        if let Some(waker) = pump {
            wake(waker);
        }
        result
    }

    /// `http.response.start`.
    pub(crate) fn send_start(&self, start: ResponseStart) -> Result<(), SendMisuse> {
        {
            let mut st = self.state.lock();
            // The app's mistake first, whether or not the client is still
            // there: the same send fails the same way (as uvicorn's).
            if st.started {
                return Err(SendMisuse::AlreadyStarted);
            }
            // A head for a client that has left is dropped without a word
            // (so is a last body, below): raising here would skip what the
            // app does once its response is sent, Starlette's (FastAPI's)
            // background tasks among them, which uvicorn runs. Only a body
            // with more to come raises, so that a stream stops.
            if st.closed {
                st.started = true;
                return Ok(());
            }
            st.start(start, self.method == Method::HEAD);
        }
        // The reactor is not woken: it sends the head with the first body
        // message, which wakes it.
        Ok(())
    }

    /// `http.response.body`: whether the app may go on or should wait
    /// ([`Exchange::park_sender`]), or, for a chunk that went past the app's
    /// `Content-Length`, [`SendMisuse::PastContentLength`] (its bytes up to
    /// that length are sent: the response is complete).
    pub(crate) fn send_body(&self, data: impl Into<Chunk>, more: bool) -> Result<Sent, SendMisuse> {
        // Before the lock, so that a chunk not kept is let go of after it.
        let data = data.into();
        let (reactor, full, pushed) = {
            let mut st = self.state.lock();
            // A body after the last one is the app's mistake, whether the
            // reactor has taken the last one (which closes the exchange)
            // or not yet.
            if st.complete || st.body_done {
                return Err(SendMisuse::AlreadyComplete);
            }
            if st.closed {
                // hyper ends a response once it has sent its Content-Length,
                // before the app's last message: that message is no misuse.
                if let Some(overran) = st.after_delivered(data.len(), more) {
                    return match overran {
                        None => Ok(Sent::Queued),
                        Some(overrun) => Err(SendMisuse::PastContentLength(overrun)),
                    };
                }
                // Kept as if sent, so that the app's later mistakes are
                // still told apart (a body after the last one).
                if st.started && !more {
                    if st.trailers_expected {
                        st.body_done = true;
                    } else {
                        st.complete = true;
                    }
                }
                // The last body ends the app's response, and the app goes on
                // to whatever follows it (see `send_start`); only a stream,
                // with more to send, needs telling that nobody reads it.
                if st.started && !more {
                    return Ok(Sent::Dropped);
                }
                return st.closed_send().map(|()| Sent::Dropped);
            }
            if !st.started {
                return Err(SendMisuse::BodyBeforeStart);
            }
            let pushed = st.push_chunk(data, more, self.method == Method::HEAD);
            (
                st.reactor.take(),
                st.response_buffered > RESPONSE_HIGH_WATER,
                pushed,
            )
        };
        drop(pushed.unsent);
        if let Some(waker) = reactor {
            wake(waker);
        }
        match pushed.overran {
            Some(overrun) => Err(SendMisuse::PastContentLength(overrun)),
            None if full => Ok(Sent::Full),
            None => Ok(Sent::Queued),
        }
    }

    /// `"trailers": True` in `http.response.start`: the response ends with
    /// `http.response.trailers`, not with the last body message.
    pub(crate) fn expect_trailers(&self) {
        self.state.lock().trailers_expected = true;
    }

    /// `http.response.trailers`: fields gathered until `more=false`, then
    /// sent after the body.
    pub(crate) fn send_trailers(
        &self,
        mut fields: HeaderMap,
        more: bool,
    ) -> Result<(), SendMisuse> {
        drop_forbidden_trailers(&mut fields, || self.request_line());
        let reactor = {
            let mut st = self.state.lock();
            // The app's mistakes first, whether or not the client is still there.
            if !st.trailers_expected {
                return Err(SendMisuse::TrailersNotAnnounced);
            }
            if st.complete {
                return Err(SendMisuse::AlreadyComplete);
            }
            if st.closed {
                // The body filled its Content-Length and hyper ended the
                // response: no disconnect, but the trailers cannot follow
                // (HTTP/1 sends them only on a chunked body).
                if st.body_done && st.delivered().is_some() {
                    if !more {
                        st.complete = true;
                    }
                    return Ok(());
                }
                // The last trailers end the response, as a last body does.
                if st.body_done && !more {
                    st.complete = true;
                    return Ok(());
                }
                return st.closed_send();
            }
            if !st.body_done {
                return Err(SendMisuse::TrailersBeforeBodyEnd);
            }
            st.trailers.extend(fields);
            if more {
                return Ok(());
            }
            let trailers = std::mem::take(&mut st.trailers);
            let is_head = self.method == Method::HEAD;
            // Trailers are plain Rust data: nothing of Python's to drop later.
            drop(
                st.push_chunk(Chunk::Trailers(trailers), false, is_head)
                    .unsent,
            );
            st.reactor.take()
        };
        if let Some(waker) = reactor {
            wake(waker);
        }
        Ok(())
    }

    /// Parks `future` until the client has read most of the buffer; hands it
    /// back when the app need not wait after all.
    pub(crate) fn park_sender(&self, py: Python<'_>, future: Py<PyAny>) -> Option<Py<PyAny>> {
        let finished = {
            let mut st = self.state.lock();
            if st.closed || st.response_buffered <= RESPONSE_LOW_WATER {
                return Some(future);
            }
            park_future(py, &mut st.senders, future)
        };
        drop(finished);
        None
    }

    // ---- blocking side, for WSGI pool threads (call with the GIL released) --

    /// Parks the current thread until the reactor changes the state.
    fn park(st: MutexGuard<'_, State>) {
        Exchange::park_waking(st, None);
    }

    /// Parks the current thread until the reactor changes the state, first
    /// waking `waker` (outside the lock).
    fn park_waking(mut st: MutexGuard<'_, State>, waker: Option<Waker>) {
        let current = std::thread::current();
        if !st.parked.iter().any(|parked| parked.id() == current.id()) {
            st.parked.push(current);
        }
        drop(st);
        if let Some(waker) = waker {
            wake(waker);
        }
        std::thread::park();
    }

    /// Up to `max` bytes of request body if some is buffered, or the end,
    /// without waiting: `None` means a read would have to wait.
    pub(crate) fn try_read_body(&self, max: usize) -> Option<BodyRead> {
        let mut st = self.state.lock();
        if st.closed && !st.body_complete && !st.app_reads_after_response() {
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
            let mut st = self.state.lock();
            if st.body.is_empty()
                && !st.body_complete
                && (!st.closed || st.app_reads_after_response())
            {
                // Counted while parked: the pump starts
                // --timeout-request-body's clock.
                st.body_readers += 1;
                let pump = st.pump.take();
                Exchange::park_waking(st, pump);
                self.state.lock().body_readers -= 1;
            }
        }
    }

    /// Queues the response head (once) and a body chunk (WSGI). `Err(())`
    /// when the client is gone; else whether the buffer is now over its
    /// high-water mark (then call [`Exchange::wait_for_room`]) and whether
    /// the chunk went past the app's `Content-Length` (cut to it: the
    /// response is complete).
    pub(crate) fn queue_response(
        &self,
        start: Option<ResponseStart>,
        data: impl Into<Chunk>,
        more: bool,
    ) -> Result<Queued, ()> {
        // Before the lock, so that a chunk not kept is let go of after it.
        let data = data.into();
        let (reactor, full, pushed) = {
            let mut st = self.state.lock();
            if st.closed {
                // The whole Content-Length went out, and hyper ended the
                // response there: the app's last chunk is no disconnect.
                return match st.after_delivered(data.len(), more) {
                    Some(overran) => Ok(Queued {
                        full: false,
                        overran,
                    }),
                    None => Err(()),
                };
            }
            let is_head = self.method == Method::HEAD;
            if let Some(start) = start {
                st.start(start, is_head);
            }
            let pushed = st.push_chunk(data, more, is_head);
            (
                st.reactor.take(),
                st.response_buffered > RESPONSE_HIGH_WATER,
                pushed,
            )
        };
        drop(pushed.unsent);
        if let Some(waker) = reactor {
            wake(waker);
        }
        Ok(Queued {
            full,
            overran: pushed.overran,
        })
    }

    /// Waits while a slow client has more than the high-water mark buffered.
    /// `Err(())` means the client is gone.
    pub(crate) fn wait_for_room(&self) -> Result<(), ()> {
        let mut st = self.state.lock();
        loop {
            if st.closed {
                // hyper ends a response once its Content-Length is sent:
                // that is no client gone.
                return if st.all_taken() { Ok(()) } else { Err(()) };
            }
            if st.response_buffered <= RESPONSE_HIGH_WATER {
                st.waiting_for_client = false;
                return Ok(());
            }
            st.waiting_for_client = true;
            Exchange::park(st);
            st = self.state.lock();
        }
    }

    /// Whether the app's thread is held by the client, not by the app: it
    /// waits for room in the response that the client does not make.
    pub(crate) fn thread_waits_for_client(&self) -> bool {
        self.state.lock().waiting_for_client
    }

    /// Keeps `guard` (a count of requests or tasks in flight) until both the
    /// response is done and the app has returned. A client that resets its
    /// stream ends the response early, but the app's work goes on, and
    /// still counts.
    pub(crate) fn hold(&self, guard: impl Send + 'static) {
        let mut st = self.state.lock();
        st.held = Some(match st.held.take() {
            None => Box::new(guard),
            Some(earlier) => Box::new((earlier, guard)),
        });
    }

    /// Keeps the app's task, to cancel it if the request outlives
    /// `--timeout-request`.
    pub(crate) fn keep_task(&self, task: Py<PyAny>) {
        // Any task kept before is let go after the lock (see `park_future`).
        let earlier = self.state.lock().task.replace(task);
        drop(earlier);
    }

    /// The app's task, if kept and not taken yet.
    pub(crate) fn take_task(&self) -> Option<Py<PyAny>> {
        self.state.lock().task.take()
    }

    /// Past `--timeout-request`: the response is ended where it stands (an
    /// aborted connection once it has started), the app's `receive()` and
    /// `send()` see a disconnect, and its task is cancelled on the Python
    /// thread. Returns where a WSGI request stood with the pool: one still
    /// queued is never run.
    pub(crate) fn time_out(self: &Arc<Self>) -> ThreadStage {
        self.abort();
        let stage = self.close_seeing_thread();
        self.bridge.push(Event::Cancel(Arc::clone(self)));
        stage
    }

    /// Ends the response without completing it: a 500 when nothing was sent
    /// yet, an aborted connection otherwise.
    pub(crate) fn abort(self: &Arc<Self>) {
        let reactor = {
            let mut st = self.state.lock();
            // Not a response whose whole Content-Length went out: it ended well.
            if !st.response_done() {
                st.aborted = true;
            }
            st.reactor.take()
        };
        if let Some(waker) = reactor {
            wake(waker);
        }
    }
}

#[cfg(test)]
impl Exchange {
    /// An exchange for `method uri` on a plain connection, and its head;
    /// `pooled` as for [`Exchange::new`].
    pub(crate) fn for_test(
        method: Method,
        uri: &str,
        body_complete: bool,
        pooled: bool,
    ) -> (Arc<Exchange>, http::request::Parts) {
        use crate::net::{Scheme, ServerAddr};
        let (head, ()) = http::Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .expect("a valid test request")
            .into_parts();
        let exchange = Exchange::new(
            Arc::new(EventBridge::new().expect("an event bridge")),
            &head,
            ConnectionInfo {
                scheme: Scheme::Http,
                client: None,
                server: ServerAddr::Tcp(([127, 0, 0, 1], 80).into()),
                tls: None,
                forwarded_prefix: None,
                relayed: false,
            },
            body_complete,
            pooled,
        );
        (exchange, head)
    }
}

/// Wakes every parked WSGI thread; each looks again at what it waits for.
fn unpark_all(parked: &mut Vec<Thread>) {
    for thread in parked.drain(..) {
        thread.unpark();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(method: Method, body_complete: bool) -> Arc<Exchange> {
        exchange_for(method, "/path?q", body_complete)
    }

    fn exchange_for(method: Method, uri: &str, body_complete: bool) -> Arc<Exchange> {
        Exchange::for_test(method, uri, body_complete, false).0
    }

    /// A WSGI request queued for a pool thread, with its body to come.
    fn queued() -> Arc<Exchange> {
        let exchange = Exchange::for_test(Method::POST, "/", false, true).0;
        exchange.want_body();
        exchange
    }

    /// Whether what [`Exchange::hold`] kept is let go of.
    fn held_guard(exchange: &Exchange) -> Arc<()> {
        let guard = Arc::new(());
        exchange.hold(Arc::clone(&guard));
        guard
    }

    #[test]
    fn a_queued_request_closed_lets_go_of_its_body_and_places_and_is_never_taken() {
        let exchange = queued();
        let guard = held_guard(&exchange);
        exchange.push_body(Bytes::from(vec![b'x'; 60_000]), false);
        assert!(exchange.waits_for_thread());
        exchange.close();
        assert!(exchange.state.lock().body.is_empty());
        assert_eq!(exchange.state.lock().body_buffered, 0);
        exchange.release_response();
        assert_eq!(Arc::strong_count(&guard), 1, "its places given back");
        assert!(!exchange.take_for_thread(None));
        assert!(exchange.waits_for_thread(), "never ran");
        assert!(exchange.client_left());
    }

    #[test]
    fn a_taken_request_closed_keeps_its_body_for_the_app_to_finish_with() {
        let exchange = queued();
        let guard = held_guard(&exchange);
        let at = Instant::now();
        assert!(exchange.take_for_thread(Some(at)));
        exchange.push_body(Bytes::from_static(b"abc"), true);
        exchange.close();
        exchange.release_response();
        assert_eq!(exchange.state.lock().body_buffered, 3);
        assert_eq!(Arc::strong_count(&guard), 2, "held while the app runs");
        assert!(!exchange.waits_for_thread());
        exchange.finish_app();
        assert_eq!(Arc::strong_count(&guard), 1);
    }

    #[test]
    fn a_time_out_says_where_the_request_stood_with_the_pool() {
        let waiting = queued();
        assert_eq!(waiting.time_out(), ThreadStage::Queued);
        assert!(!waiting.take_for_thread(None), "not run after its 504");
        assert!(!waiting.client_left(), "the server ended it");
        let running = queued();
        let at = Instant::now();
        running.take_for_thread(Some(at));
        assert_eq!(running.time_out(), ThreadStage::Taken(Some(at)));
        assert_eq!(
            exchange(Method::GET, true).time_out(),
            ThreadStage::Unpooled
        );
    }

    #[test]
    fn trailers_lose_the_fields_a_trailer_section_must_not_carry() {
        let mut fields = HeaderMap::new();
        for (name, value) in [
            ("x-checksum", "abc"),
            ("connection", "close"),
            ("te", "trailers"),
            ("keep-alive", "timeout=5"),
            ("upgrade", "h2c"),
            ("content-length", "4"),
            ("grpc-status", "0"),
        ] {
            fields.append(name, http::HeaderValue::from_static(value));
        }
        drop_forbidden_trailers(&mut fields, || "GET / HTTP/2.0".into());
        let kept: Vec<&str> = fields.keys().map(http::HeaderName::as_str).collect();
        assert_eq!(kept, ["x-checksum", "grpc-status"]);
        let mut clean = fields.clone();
        drop_forbidden_trailers(&mut clean, || unreachable!("nothing to name"));
        assert_eq!(clean, fields);
    }

    #[test]
    fn request_line_escapes_what_would_end_a_quoted_field() {
        assert_eq!(
            exchange(Method::GET, true).request_line(),
            "GET /path?q HTTP/1.1"
        );
        // The http crate takes `"` in a path (not in a query) and `\` in both.
        let line = exchange_for(Method::POST, "/a\"b\\c?d=\\", true).request_line();
        assert_eq!(line, r#"POST /a\x22b\x5Cc?d=\x5C HTTP/1.1"#);
    }

    #[test]
    fn a_request_has_no_body_only_once_all_of_it_came_empty() {
        assert!(exchange(Method::GET, true).has_no_body());
        let posted = exchange(Method::POST, false);
        assert!(!posted.has_no_body(), "its body has yet to come");
        posted.push_body(Bytes::from_static(b"x"), true);
        assert!(!posted.has_no_body(), "one byte came");
        let chunked = exchange(Method::POST, false);
        chunked.push_body(Bytes::new(), true);
        assert!(
            chunked.has_no_body(),
            "an empty last chunk ends an empty body"
        );
    }

    fn ok_start() -> ResponseStart {
        ResponseStart {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            reason: None,
            content_length: None,
        }
    }

    fn poll<T>(f: impl FnOnce(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
        f(&mut Context::from_waker(Waker::noop()))
    }

    fn head(headers: &[(&'static str, &'static str)]) -> Result<ResponseStart, String> {
        let mut map = HeaderMap::new();
        for &(name, value) in headers {
            map.append(name, http::HeaderValue::from_static(value));
        }
        ResponseStart::new(StatusCode::OK, map, None)
    }

    #[test]
    fn the_apps_content_length_is_checked_and_kept_as_one_number() {
        let start = head(&[("content-length", " 12 ")]).unwrap();
        assert_eq!(start.content_length, Some(12));
        assert_eq!(start.headers["content-length"], "12");
        let start = head(&[("content-length", "5"), ("content-length", "5")]).unwrap();
        assert_eq!(start.content_length, Some(5));
        assert_eq!(start.headers.get_all("content-length").iter().count(), 1);
        let start = head(&[("content-length", "9999999999999999999")]).unwrap();
        assert_eq!(start.content_length, Some(9_999_999_999_999_999_999));
        assert_eq!(head(&[("x", "y")]).unwrap().content_length, None);
        for bad in [
            &[("content-length", "5"), ("content-length", "6")][..],
            &[("content-length", "abc")],
            &[("content-length", "")],
            &[("content-length", "-1")],
            &[("content-length", "1 2")],
            &[("content-length", "10000000000000000000")],
        ] {
            assert!(head(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hop_by_hop_headers_from_the_app_are_dropped_but_close_is_kept() {
        let start = head(&[
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("connection", "keep-alive, Close"),
            ("upgrade", "websocket"),
            ("content-length", "3"),
        ])
        .unwrap();
        let mut names: Vec<&str> = start.headers.keys().map(|name| name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["connection", "content-length", "upgrade"]);
        assert_eq!(start.headers["connection"], "close");
        assert_eq!(start.content_length, Some(3));
        let start = head(&[("connection", "keep-alive")]).unwrap();
        assert!(start.headers.is_empty());
    }

    #[test]
    fn a_bodyless_request_receives_one_empty_chunk_then_disconnect() {
        let exchange = exchange(Method::GET, true);
        assert!(matches!(
            exchange.receive(),
            Some(Received::Body { ref data, more: false }) if data.is_empty()
        ));
        assert!(
            exchange.receive().is_none(),
            "waits until the response ends"
        );
        exchange.send_start(ok_start()).unwrap();
        exchange.send_body(Bytes::new(), false).unwrap();
        assert!(matches!(exchange.receive(), Some(Received::Disconnect)));
    }

    #[test]
    fn body_chunks_are_joined_and_the_last_says_no_more() {
        let exchange = exchange(Method::POST, false);
        assert!(exchange.receive().is_none());
        exchange.push_body(Bytes::from_static(b"ab"), false);
        exchange.push_body(Bytes::from_static(b"cd"), false);
        assert!(matches!(
            exchange.receive(),
            Some(Received::Body { ref data, more: true }) if &data[..] == b"abcd"
        ));
        exchange.push_body(Bytes::from_static(b"e"), true);
        assert!(matches!(
            exchange.receive(),
            Some(Received::Body { more: false, .. })
        ));
    }

    #[test]
    fn a_client_leaving_mid_body_is_a_disconnect() {
        let exchange = exchange(Method::POST, false);
        exchange.close();
        assert!(matches!(exchange.receive(), Some(Received::Disconnect)));
        assert_eq!(
            exchange.send_start(ok_start()),
            Ok(()),
            "a head for nobody is dropped: the app goes on to its background tasks"
        );
        assert_eq!(
            exchange.send_body(Bytes::from_static(b"x"), true),
            Err(SendMisuse::Closed),
            "a stream for nobody is told, and stops"
        );
    }

    #[test]
    fn the_messages_that_end_a_response_for_nobody_are_dropped_quietly() {
        let exchange = exchange(Method::GET, true);
        exchange.receive();
        exchange.close();
        assert_eq!(
            exchange.send_body(Bytes::new(), false),
            Err(SendMisuse::Closed),
            "a body before the head is still no response"
        );
        assert_eq!(exchange.send_start(ok_start()), Ok(()));
        assert_eq!(
            exchange.send_body(Bytes::from_static(b"all of it"), false),
            Ok(Sent::Dropped)
        );
        assert_eq!(
            exchange.send_body(Bytes::new(), false),
            Err(SendMisuse::AlreadyComplete),
            "a body after the last one is still the app's mistake"
        );
    }

    #[test]
    fn the_last_trailers_for_nobody_are_dropped_quietly() {
        let exchange = exchange(Method::GET, true);
        exchange.receive();
        exchange.send_start(ok_start()).unwrap();
        exchange.expect_trailers();
        exchange.close();
        assert_eq!(exchange.send_body(Bytes::new(), false), Ok(Sent::Dropped));
        assert_eq!(
            exchange.send_trailers(HeaderMap::new(), true),
            Err(SendMisuse::Closed)
        );
        assert_eq!(exchange.send_trailers(HeaderMap::new(), false), Ok(()));
    }

    /// A future as `receive()` parks one: only its `done()` is asked.
    fn future(py: Python<'_>) -> Py<PyAny> {
        py.import("concurrent.futures")
            .and_then(|module| module.getattr("Future")?.call0())
            .unwrap()
            .unbind()
    }

    #[test]
    fn an_app_listening_for_the_disconnect_sends_into_nothing_after_it() {
        // Django's ASGI handler: the whole body read, then a receive() that
        // waits for http.disconnect, beside a task that sends.
        Python::initialize();
        Python::attach(|py| {
            let exchange = exchange(Method::GET, true);
            assert!(matches!(
                exchange.receive(),
                Some(Received::Body { more: false, .. })
            ));
            let listener = future(py);
            assert!(exchange.park_receiver(py, listener.clone_ref(py)).is_ok());
            exchange.close();
            assert!(
                !exchange.waiting_send_fails(),
                "the waiting receive() is about to tell the app"
            );
            let Err((listener, Received::Disconnect)) = exchange.resume_receiver(py, listener)
            else {
                panic!("the woken receive() is handed the disconnect");
            };
            listener
                .call_method1(py, "set_result", (py.None(),))
                .unwrap();
            assert!(!exchange.waiting_send_fails(), "told, the app listens");
            assert_eq!(exchange.send_start(ok_start()), Ok(()));
            assert_eq!(
                exchange.send_body(Bytes::from_static(b"x"), true),
                Ok(Sent::Dropped)
            );
            assert_eq!(exchange.send_body(Bytes::new(), false), Ok(Sent::Dropped));
            assert_eq!(
                exchange.send_body(Bytes::new(), false),
                Err(SendMisuse::AlreadyComplete),
                "a body after the last one is still the app's mistake"
            );
            assert!(matches!(exchange.receive(), Some(Received::Disconnect)));
        });
    }

    #[test]
    fn sends_after_a_heard_disconnect_raise_once_its_grace_is_over() {
        // The listener's answer was lost (a cancel scope closed around it
        // as it came): the app's stream must still stop.
        Python::initialize();
        Python::attach(|py| {
            let exchange = exchange(Method::GET, true);
            exchange.receive();
            let listener = future(py);
            assert!(exchange.park_receiver(py, listener.clone_ref(py)).is_ok());
            exchange.send_start(ok_start()).unwrap();
            exchange.close();
            let Err((listener, Received::Disconnect)) = exchange.resume_receiver(py, listener)
            else {
                panic!("the woken receive() is handed the disconnect");
            };
            listener.call_method0(py, "cancel").unwrap();
            assert_eq!(
                exchange.send_body(Bytes::from_static(b"x"), true),
                Ok(Sent::Dropped)
            );
            exchange.state.lock().disconnect_heard =
                Instant::now().checked_sub(HEARD_DISCONNECT_SEND_GRACE);
            assert!(exchange.waiting_send_fails());
            assert_eq!(
                exchange.send_body(Bytes::from_static(b"x"), true),
                Err(SendMisuse::Closed)
            );
        });
    }

    #[test]
    fn a_disconnect_answered_at_once_leaves_send_to_say_the_client_left() {
        // Starlette's is_disconnected(): a receive() in a cancel scope
        // already cancelled, whose answer BaseHTTPMiddleware throws away.
        let exchange = exchange(Method::GET, true);
        assert!(matches!(
            exchange.receive(),
            Some(Received::Body { more: false, .. })
        ));
        exchange.send_start(ok_start()).unwrap();
        exchange.close();
        assert!(
            exchange.waiting_send_fails(),
            "a receive() that parked no future is not listening"
        );
        assert!(matches!(exchange.receive(), Some(Received::Disconnect)));
        assert!(exchange.waiting_send_fails());
        assert_eq!(
            exchange.send_body(Bytes::from_static(b"x"), true),
            Err(SendMisuse::Closed)
        );
    }

    #[test]
    fn an_app_not_listening_is_told_by_send_that_the_client_left() {
        // A streaming app that reads its body and never calls receive() again
        // learns from send() (ASGI 2.4's OSError), and stops.
        let exchange = exchange(Method::GET, true);
        assert!(matches!(
            exchange.receive(),
            Some(Received::Body { more: false, .. })
        ));
        assert_eq!(exchange.send_start(ok_start()), Ok(()));
        assert_eq!(
            exchange.send_body(Bytes::from_static(b"x"), true),
            Ok(Sent::Queued)
        );
        exchange.close();
        assert!(exchange.waiting_send_fails());
        assert_eq!(
            exchange.send_body(Bytes::from_static(b"x"), true),
            Err(SendMisuse::Closed)
        );
    }

    #[test]
    fn send_follows_the_asgi_order() {
        let exchange = exchange(Method::GET, true);
        assert_eq!(
            exchange.send_body(Bytes::new(), false),
            Err(SendMisuse::BodyBeforeStart)
        );
        exchange.send_start(ok_start()).unwrap();
        assert_eq!(
            exchange.send_start(ok_start()),
            Err(SendMisuse::AlreadyStarted)
        );
        assert_eq!(
            exchange.send_body(Bytes::from_static(b"x"), false),
            Ok(Sent::Queued)
        );
        assert_eq!(
            exchange.send_body(Bytes::new(), false),
            Err(SendMisuse::AlreadyComplete)
        );
        assert_eq!(exchange.complete_body_len(), Some(1));
    }

    #[test]
    fn a_body_past_its_content_length_is_cut_there_and_ends() {
        let exchange = exchange(Method::GET, true);
        exchange
            .send_start(head(&[("content-length", "5")]).unwrap())
            .unwrap();
        assert_eq!(
            exchange.send_body(Bytes::from_static(b"hel"), true),
            Ok(Sent::Queued)
        );
        assert_eq!(
            exchange.send_body(Bytes::from_static(b"lo wo"), true),
            Err(SendMisuse::PastContentLength(Overrun {
                declared: 5,
                sent: 8
            }))
        );
        assert_eq!(exchange.complete_body_len(), Some(5));
        assert_eq!(
            exchange.send_body(Bytes::from_static(b"rld!"), false),
            Err(SendMisuse::AlreadyComplete)
        );
        let mut sent = Vec::new();
        while let Poll::Ready(Some(Ok(Chunk::Data(data)))) =
            poll(|cx| exchange.poll_response_chunk(cx))
        {
            sent.extend_from_slice(&data);
        }
        assert_eq!(sent, b"hello");
        assert!(exchange.response_finished());
    }

    #[test]
    fn the_last_message_after_the_whole_content_length_went_out_is_no_disconnect() {
        // hyper ends the response once its Content-Length is sent, before
        // the app's last (empty) message.
        let exchange = exchange(Method::GET, true);
        exchange
            .send_start(head(&[("content-length", "2")]).unwrap())
            .unwrap();
        assert_eq!(
            exchange.send_body(Bytes::from_static(b"ok"), true),
            Ok(Sent::Queued)
        );
        assert!(matches!(
            poll(|cx| exchange.poll_response_chunk(cx)),
            Poll::Ready(Some(Ok(Chunk::Data(_))))
        ));
        assert!(exchange.response_finished(), "all of the length was taken");
        exchange.close();
        assert_eq!(exchange.send_body(Bytes::new(), false), Ok(Sent::Queued));
        // A WSGI app's more than the length, after it: cut, not a disconnect.
        let wsgi = self::exchange(Method::GET, true);
        let queued = wsgi.queue_response(
            Some(head(&[("content-length", "2")]).unwrap()),
            Bytes::from_static(b"ok"),
            true,
        );
        assert_eq!(
            queued,
            Ok(Queued {
                full: false,
                overran: None
            })
        );
        wsgi.close();
        assert_eq!(
            wsgi.queue_response(None, Bytes::from_static(b"!"), false),
            Ok(Queued {
                full: false,
                overran: Some(Overrun {
                    declared: 2,
                    sent: 3
                })
            })
        );
        // Short of the length, a closed exchange is a client gone.
        let short = self::exchange(Method::GET, true);
        let queued = short.queue_response(
            Some(head(&[("content-length", "3")]).unwrap()),
            Bytes::from_static(b"ok"),
            true,
        );
        assert!(queued.is_ok());
        short.close();
        assert_eq!(short.queue_response(None, Bytes::new(), false), Err(()));
    }

    #[test]
    fn a_full_length_body_ended_by_the_reactor_is_no_disconnect_for_a_waiting_send() {
        // One chunk over the high-water mark: the send waits for room, and
        // the reactor ends the response as it takes the chunk.
        let exchange = exchange(Method::GET, true);
        exchange
            .send_start(head(&[("content-length", "70000")]).unwrap())
            .unwrap();
        let big = Bytes::from(vec![0; 70_000]);
        assert_eq!(exchange.send_body(big, true), Ok(Sent::Full));
        assert!(matches!(
            poll(|cx| exchange.poll_response_chunk(cx)),
            Poll::Ready(Some(Ok(Chunk::Data(_))))
        ));
        exchange.close();
        assert!(!exchange.waiting_send_fails());
        assert_eq!(exchange.wait_for_room(), Ok(()));
        // An empty piece that says more is coming, then the last one.
        assert_eq!(exchange.send_body(Bytes::new(), true), Ok(Sent::Queued));
        assert_eq!(exchange.send_body(Bytes::new(), false), Ok(Sent::Queued));
        assert_eq!(
            exchange.send_body(Bytes::new(), false),
            Err(SendMisuse::AlreadyComplete)
        );
        // Trailers after such a body have nowhere to go, and are no misuse.
        let trailed = self::exchange(Method::GET, true);
        trailed
            .send_start(head(&[("content-length", "2")]).unwrap())
            .unwrap();
        trailed.expect_trailers();
        assert_eq!(
            trailed.send_body(Bytes::from_static(b"ok"), false),
            Ok(Sent::Queued)
        );
        let _ = poll(|cx| trailed.poll_response_chunk(cx));
        trailed.close();
        assert_eq!(trailed.send_trailers(HeaderMap::new(), false), Ok(()));
    }

    #[test]
    fn a_head_or_bodiless_response_has_no_length_to_hold_its_body_to() {
        // Their bodies are dropped whole: nothing is cut, nothing overruns.
        let head_request = exchange(Method::HEAD, true);
        head_request
            .send_start(head(&[("content-length", "2")]).unwrap())
            .unwrap();
        assert_eq!(
            head_request.send_body(Bytes::from_static(b"a longer body"), false),
            Ok(Sent::Queued)
        );
        let not_modified = exchange(Method::GET, true);
        let mut start = head(&[("content-length", "1234")]).unwrap();
        start.status = StatusCode::NOT_MODIFIED;
        not_modified.send_start(start).unwrap();
        assert_eq!(
            not_modified.send_body(Bytes::from_static(b"null"), false),
            Ok(Sent::Queued)
        );
    }

    /// An exchange whose app started its response and queued more than the
    /// high-water mark of it: its `send()` is told to wait.
    fn past_high_water(method: Method, body_complete: bool) -> Arc<Exchange> {
        let exchange = exchange(method, body_complete);
        exchange.send_start(ok_start()).unwrap();
        let big = Bytes::from(vec![0; RESPONSE_HIGH_WATER + 1]);
        assert_eq!(exchange.send_body(big, true), Ok(Sent::Full));
        exchange
    }

    #[test]
    fn a_full_buffer_asks_the_app_to_wait_until_the_reactor_drains_it() {
        let exchange = past_high_water(Method::GET, true);
        assert!(matches!(
            poll(|cx| exchange.poll_response_start(cx)),
            Poll::Ready(Ok(_))
        ));
        assert!(matches!(
            poll(|cx| exchange.poll_response_chunk(cx)),
            Poll::Ready(Some(Ok(_)))
        ));
        assert!(matches!(
            poll(|cx| exchange.poll_response_chunk(cx)),
            Poll::Pending
        ));
        exchange.send_body(Bytes::new(), false).unwrap();
        assert!(matches!(
            poll(|cx| exchange.poll_response_chunk(cx)),
            Poll::Ready(None)
        ));
        assert!(exchange.response_finished());
    }

    #[test]
    fn head_responses_keep_no_body() {
        let exchange = exchange(Method::HEAD, true);
        exchange.send_start(ok_start()).unwrap();
        exchange
            .send_body(Bytes::from_static(b"ignored"), false)
            .unwrap();
        assert_eq!(exchange.complete_body_len(), Some(0));
    }

    #[test]
    fn an_app_ending_without_a_response_is_a_500() {
        let exchange = exchange(Method::GET, true);
        exchange.abort();
        exchange.finish_app();
        assert!(matches!(
            poll(|cx| exchange.poll_response_start(cx)),
            Poll::Ready(Err(Refusal::Status(StatusCode::INTERNAL_SERVER_ERROR)))
        ));
    }

    #[test]
    fn an_app_ending_mid_response_aborts_it() {
        let exchange = exchange(Method::GET, true);
        exchange.send_start(ok_start()).unwrap();
        exchange
            .send_body(Bytes::from_static(b"part"), true)
            .unwrap();
        exchange.abort();
        assert!(matches!(
            poll(|cx| exchange.poll_response_start(cx)),
            Poll::Ready(Ok(_))
        ));
        assert!(matches!(
            poll(|cx| exchange.poll_response_chunk(cx)),
            Poll::Ready(Some(Ok(_)))
        ));
        assert!(matches!(
            poll(|cx| exchange.poll_response_chunk(cx)),
            Poll::Ready(Some(Err(Aborted)))
        ));
    }

    #[test]
    fn a_refused_body_answers_with_its_status_before_the_response_starts() {
        let exchange = exchange(Method::POST, false);
        exchange.refuse_body(StatusCode::PAYLOAD_TOO_LARGE);
        assert!(matches!(
            poll(|cx| exchange.poll_response_start(cx)),
            Poll::Ready(Err(Refusal::Status(StatusCode::PAYLOAD_TOO_LARGE)))
        ));
    }

    #[test]
    fn wsgi_reads_are_bounded_and_see_the_end() {
        let exchange = exchange(Method::POST, false);
        assert!(exchange.try_read_body(10).is_none());
        exchange.push_body(Bytes::from_static(b"0123456789abc"), true);
        assert!(matches!(exchange.try_read_body(10), Some(BodyRead::Data(d)) if d.len() == 10));
        assert!(matches!(exchange.try_read_body(10), Some(BodyRead::Data(d)) if &d[..] == b"abc"));
        assert!(matches!(exchange.try_read_body(10), Some(BodyRead::End)));
    }

    #[test]
    fn two_wsgi_threads_blocked_on_one_exchange_are_both_woken() {
        // One of the app's threads reads the body while another waits in
        // write() for a slow client: each wake-up reaches its thread.
        let exchange = past_high_water(Method::POST, false);
        let reader = {
            let exchange = Arc::clone(&exchange);
            std::thread::spawn(move || matches!(exchange.read_body_blocking(10), BodyRead::Data(_)))
        };
        let writer = {
            let exchange = Arc::clone(&exchange);
            std::thread::spawn(move || exchange.wait_for_room())
        };
        // Both are parked (or about to be) before the wake-ups come.
        std::thread::sleep(std::time::Duration::from_millis(100));
        // Joined only once done: a lost wake-up fails the test, not hangs it.
        fn finishes<T>(thread: &std::thread::JoinHandle<T>) -> bool {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while !thread.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            thread.is_finished()
        }
        exchange.push_body(Bytes::from_static(b"body"), true);
        assert!(finishes(&reader), "the reader was not woken");
        assert!(reader.join().unwrap());
        assert!(matches!(
            poll(|cx| exchange.poll_response_start(cx)),
            Poll::Ready(Ok(_))
        ));
        assert!(matches!(
            poll(|cx| exchange.poll_response_chunk(cx)),
            Poll::Ready(Some(Ok(_)))
        ));
        assert!(finishes(&writer), "the writer was not woken");
        assert_eq!(writer.join().unwrap(), Ok(()));
    }

    /// What the body pump is told once the app has answered a POST without
    /// reading its body; `asked`: whether the body was wanted (at once, as
    /// without Expect: 100-continue).
    fn body_room_after_the_response(asked: bool) -> Poll<BodyRoom> {
        let exchange = exchange(Method::POST, false);
        if asked {
            exchange.want_body();
        }
        exchange
            .queue_response(Some(ok_start()), Bytes::new(), false)
            .unwrap();
        exchange.finish_app();
        poll(|cx| exchange.poll_body_room(cx))
    }

    #[test]
    fn an_unread_body_is_drained_after_a_complete_response() {
        assert!(matches!(
            body_room_after_the_response(true),
            Poll::Ready(BodyRoom::Drain)
        ));
    }

    #[test]
    fn a_body_never_asked_for_under_expect_continue_is_not_drained() {
        // Expect: 100-continue, and the app answered without receive():
        // the client was never told to send the body.
        assert!(matches!(
            body_room_after_the_response(false),
            Poll::Ready(BodyRoom::Stop)
        ));
    }
}
