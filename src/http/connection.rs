//! One client connection from accept to close: hyper's HTTP/1 or HTTP/2
//! connection plus the deadlines hyper does not enforce by itself.
//!
//! * A new connection must complete its first request head within
//!   `--timeout-request-header`. hyper-util's version sniff (HTTP/1 or the
//!   HTTP/2 preface?) waits for bytes with no deadline, so a client that
//!   connects and sends nothing would otherwise hold the connection forever.
//! * A connection with no request in flight is closed after
//!   `--timeout-keep-alive`, on HTTP/1 and HTTP/2 alike (HTTP/2 with a
//!   GOAWAY), so an idle peer cannot hold it either.
//! * A response the client takes no bytes of for `--timeout-send` (hyper
//!   holds its head or its last chunk and does not ask for more: the client
//!   stopped reading, or an HTTP/2 peer keeps its window shut while it
//!   answers PINGs), or one so stalled past `--timeout-request`, is cut:
//!   its HTTP/2 stream is reset (see [`StreamExecutor`]), an HTTP/1
//!   connection closed. hyper polls a response body only when it can send,
//!   so the body alone cannot notice. A WebSocket over HTTP/2 whose client
//!   stopped reading has its stream reset the same way
//!   ([`ActiveRequest::reset_stream`]).
//! * A response is done for the app once hyper has taken its last bytes,
//!   but hyper may still hold them, unsent, for a client that reads slowly
//!   (a body sent in one message is handed over whole). The connection is
//!   busy, not idle, until the socket has taken them ([`WatchedIo`]), and a
//!   client that takes none of them for `--timeout-send` is closed.
//! * On shutdown each connection is asked to finish gracefully: HTTP/1 closes
//!   after the response in flight, HTTP/2 sends GOAWAY and finishes its
//!   streams. One with nothing in flight first gets a moment to start the
//!   request its client may already have sent.
//!
//! The deadlines are checked lazily: requests only record when they start
//! and end and when their response waits for the client ([`Activity`]), and
//! one timer per connection wakes when a deadline could have passed, so the
//! per-request cost is a few uncontended locks.

use std::cell::RefCell;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use slab::Slab;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::access_log;
use crate::clock::coarse_now;
use crate::exchange::Exchange;
use crate::supervisor::balance::{HeldConnection, WorkerSeat};

/// How long a connection asked to close (idle, or the server draining) may
/// take to finish by itself before it is dropped, when no request is in
/// flight on it: enough for an HTTP/2 GOAWAY to reach the peer.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// When the server starts draining, how long a connection with no request in
/// flight gets to start one before it is closed. A client may have sent a
/// request that is in the socket but not read yet (on a new connection, or
/// the next one on a kept-alive connection); closing at once would drop it
/// unanswered. Such a request is served, with `Connection: close`.
pub(super) const DRAIN_REQUEST_WAIT: Duration = Duration::from_millis(500);

/// How often a draining connection looks for a request that started.
const DRAIN_POLL: Duration = Duration::from_millis(5);

/// The shortest re-check of a deadline while requests are in flight, so a
/// zero keep-alive timeout cannot make the timer spin.
const MIN_RECHECK: Duration = Duration::from_millis(100);

/// The deadlines one connection is held to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadlines {
    /// The first request head must be complete this long after accept.
    pub request_header: Duration,
    /// With no request in flight, the connection closes after this long.
    pub keep_alive: Duration,
    /// A response the client takes nothing of for this long is cut
    /// (`--timeout-send`; `None`: never).
    pub send: Option<Duration>,
    /// `--timeout-request`, for responses stalled on the client.
    pub request: Option<Duration>,
}

impl Deadlines {
    /// How often the timer of a busy connection looks again: a request that
    /// starts while it sleeps is checked no later than this.
    fn recheck(&self) -> Duration {
        [self.send, self.request]
            .into_iter()
            .flatten()
            .fold(self.keep_alive, Duration::min)
            .max(MIN_RECHECK)
    }
}

/// Why the timer ends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Close {
    /// No complete request head arrived within `--timeout-request-header`.
    NoRequest,
    /// No new request arrived within `--timeout-keep-alive`.
    KeepAlive,
    /// An HTTP/1 response was cut: the connection goes with it.
    Cut(Cut),
    /// With no request in flight, the client took none of the output hyper
    /// still held for `--timeout-send`.
    Unsent(Duration),
}

/// Why the timer cut a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cut {
    /// The client took none of it for this long (`--timeout-send`).
    Stalled(Duration),
    /// It was still waiting for the client at `--timeout-request`.
    TimedOut,
}

/// What the timer watches of one request in flight.
struct Watched {
    /// Since when hyper has held the response's head or last chunk without
    /// asking for more; `None` while hyper waits for the app, or asks.
    waiting_since: Option<Instant>,
    /// `--timeout-request`: when the response must be done.
    deadline: Option<Instant>,
    /// The app's exchange: once the app has returned, the deadline is over
    /// (what hyper still holds is a slow client's, for `--timeout-send`).
    app: Option<Arc<Exchange>>,
    /// Resets the request's HTTP/2 stream; `None` on HTTP/1.
    stream: Option<Arc<StreamCut>>,
    /// Set once the timer has cut the response.
    cut: Option<Cut>,
    /// Whether the request was whole as its head came (no body), which
    /// says until it has an exchange, or when it has none (a static file,
    /// a refusal answered by the server).
    whole: bool,
    /// The request's exchange with an app (HTTP/1), for
    /// [`Activity::half_closed`].
    exchange: Option<Arc<Exchange>>,
}

impl Watched {
    /// When the timer must cut this response, and why, as things stand.
    fn due(&self, deadlines: Deadlines) -> Option<(Instant, Cut)> {
        if self.cut.is_some() {
            return None;
        }
        let since = self.waiting_since?;
        let stalled = deadlines
            .send
            .map(|limit| (since + limit, Cut::Stalled(limit)));
        let timed_out = self
            .deadline
            .filter(|_| !self.app.as_ref().is_some_and(|app| app.app_finished()))
            .map(|deadline| (deadline.max(since), Cut::TimedOut));
        match (stalled, timed_out) {
            (Some(a), Some(b)) => Some(if b.0 <= a.0 { b } else { a }),
            (a, b) => a.or(b),
        }
    }
}

struct ActivityState {
    /// The requests in flight.
    watched: Slab<Watched>,
    requests: u64,
    /// When the connection last had no request in flight (or was accepted),
    /// and no output left to send.
    idle_since: Instant,
    /// Since when the socket has taken none of the output hyper holds;
    /// `None` when it took the last write (see [`WatchedIo`]).
    unsent_since: Option<Instant>,
    /// hyper's read, put off by a half-close (see [`WatchedIo`]): woken
    /// once no request is in flight, for hyper to find the end of input
    /// and close.
    read_after_half_close: Option<Waker>,
    /// A half-close was looked at once with a body incomplete (see
    /// [`Activity::half_closed`]).
    half_close_looked: bool,
    /// The client half-closed: an exchange that comes after is told at once.
    half_closed: bool,
    /// The end of input came with a body not yet the app's, and is looked
    /// at again once it is (see [`Activity::half_closed`]).
    end_with_body: bool,
    /// When the last request head arrived (coarse): hyper parses pipelined
    /// heads from its buffer, long after the read that brought them if the
    /// requests before take long.
    last_begin: Instant,
}

/// The requests in flight on one connection, and since when it is idle.
pub(crate) struct Activity {
    state: Mutex<ActivityState>,
    /// App tasks of this connection still running, whether or not their
    /// request is: an HTTP/2 stream the client reset leaves its task behind.
    app_tasks: AtomicUsize,
    /// Wakes [`Activity::watch`] when the last request in flight ends, if
    /// `wake_on_idle`.
    went_idle: Notify,
    /// Whether `unsent_since` is set, read on every write without the lock.
    output_blocked: AtomicBool,
    /// WebSocket handshakes over HTTP/1 waiting for the app's answer, which
    /// a drain lets through before it closes the connection (see [`drive`]).
    handshakes: AtomicUsize,
    /// Whether the watcher must be woken when the connection goes idle.
    /// It never sleeps longer than a recheck, so when the recheck is no
    /// longer than the keep-alive timeout it wakes by the keep-alive
    /// deadline anyway: a connection going idle then costs nothing, where a
    /// wake would poll the whole connection task again after each request.
    wake_on_idle: bool,
}

impl Activity {
    pub(crate) fn new(deadlines: &Deadlines) -> Arc<Activity> {
        Arc::new(Activity {
            state: Mutex::new(ActivityState {
                watched: Slab::new(),
                requests: 0,
                idle_since: Instant::now(),
                unsent_since: None,
                read_after_half_close: None,
                half_close_looked: false,
                half_closed: false,
                end_with_body: false,
                last_begin: Instant::now(),
            }),
            app_tasks: AtomicUsize::new(0),
            handshakes: AtomicUsize::new(0),
            output_blocked: AtomicBool::new(false),
            went_idle: Notify::new(),
            wake_on_idle: deadlines.recheck() > deadlines.keep_alive,
        })
    }

    /// A request head arrived; the returned guard ends the request when
    /// dropped (when its response body is done). `deadline`: when
    /// `--timeout-request` says it must be done; `whole`: whether the head
    /// is all of it (no body to come).
    pub(crate) fn begin(self: &Arc<Self>, deadline: Option<Instant>, whole: bool) -> ActiveRequest {
        let mut st = self.state.lock();
        st.requests += 1;
        st.last_begin = coarse_now();
        let key = st.watched.insert(Watched {
            waiting_since: None,
            deadline,
            app: None,
            stream: None,
            cut: None,
            whole,
            exchange: None,
        });
        ActiveRequest {
            activity: Arc::clone(self),
            key,
        }
    }

    fn in_flight(&self) -> usize {
        self.state.lock().watched.len()
    }

    /// The client's side of an HTTP/1 connection ended (hyper's read found
    /// the end of input): whether that is a half-close, the client saying
    /// it has sent all it will and waits for its answers (`nc -N`, `printf
    /// ... | ncat`, health checks; RFC 9112 §9.6), rather than a client that
    /// left. It is taken for one when requests are in flight, each whole,
    /// and hyper took in the client's last bytes less than
    /// [`HALF_CLOSE_WITHIN`] before: such a client sends its end with its
    /// request, a client that gives up on a slow answer later. Taken in:
    /// read from the socket (`last_input`, the last read that brought
    /// bytes), or, later, parsed as a request head or decoded as a piece of
    /// a body from hyper's buffer. (hyper reads no further ahead of an app
    /// than a body's high-water mark, and parses and decodes from its
    /// buffer only as the requests before and the app's reads let it, so
    /// the last of a request and the end of input after it are taken in
    /// together however late.) Then the apps' `receive()` listeners hear
    /// `http.disconnect` (as they would of a client that left), their
    /// responses are still written however long they take, and `waker`
    /// (hyper's read) is woken once none is in flight, to find the end of
    /// input again and close. Otherwise the end of input ends the
    /// connection, as it did.
    ///
    /// hyper decodes a body into a channel that the body's own task empties
    /// into the exchange as the app reads: a body whose last bytes came
    /// with the end of input may not be the exchange's yet. It was cut
    /// short if that task has taken all hyper had of it and waits for
    /// more; otherwise the end of input is kept from hyper until the body
    /// is whole, or that task finds it needs more or ends without it (the
    /// app finished without reading it all, or the body was refused: the
    /// body no longer matters, and the response is written), and looked at
    /// again then.
    pub(crate) fn half_closed(&self, waker: &Waker, last_input: Instant) -> bool {
        let exchanges: Vec<Arc<Exchange>> = {
            let mut st = self.state.lock();
            if st.half_closed {
                // Settled at the first look: the requests in flight, and any
                // pipelined behind them, are answered however long they take.
                if st.watched.is_empty() {
                    return false;
                }
                st.read_after_half_close = Some(waker.clone());
                return true;
            }
            // The client's last bytes, as far as hyper has taken them in:
            // read from the socket, parsed as a head from its buffer, or
            // decoded as a piece of a body.
            let last_taken = st
                .watched
                .iter()
                .filter_map(|(_, watched)| watched.exchange.as_ref()?.decoded_at())
                .fold(last_input.max(st.last_begin), Instant::max);
            // Once judged a half-close with a body still to become the
            // app's, the looks that follow wait on that body alone, however
            // long the app takes to read it.
            let recent = !st.watched.is_empty()
                && (st.end_with_body
                    || coarse_now().saturating_duration_since(last_taken) < HALF_CLOSE_WITHIN);
            if !recent {
                return false;
            }
            // A body not yet the exchange's: cut short if its task waits
            // for input hyper has not had; else (it waits for the app to
            // read, or has a frame to take) looked at again once it is
            // whole, or that task finds it needs more or abandons it.
            let mut incomplete = false;
            for (_, watched) in st.watched.iter() {
                match &watched.exchange {
                    Some(app) if !app.request_whole() => {
                        if app.body_cut_by_end_of_input() {
                            return false;
                        }
                        app.wake_when_whole(waker);
                        incomplete = true;
                    }
                    Some(_) => {}
                    None if watched.whole => {}
                    // No exchange yet to ask: looked at again once the
                    // request's future has run, once.
                    None => {
                        if std::mem::replace(&mut st.half_close_looked, true) {
                            return false;
                        }
                        waker.wake_by_ref();
                        return true;
                    }
                }
            }
            if incomplete {
                st.end_with_body = true;
                return true;
            }
            st.read_after_half_close = Some(waker.clone());
            st.half_closed = true;
            st.watched
                .iter()
                .filter_map(|(_, watched)| watched.exchange.clone())
                .collect()
        };
        for exchange in exchanges {
            exchange.client_done_sending();
        }
        true
    }

    /// Whether hyper holds output the socket has not taken.
    fn output_unsent(&self) -> bool {
        self.output_blocked.load(Ordering::Acquire)
    }

    /// The socket would take none of a write: hyper holds output for a
    /// client that is not reading (now).
    fn output_refused(&self) {
        if !self.output_blocked.load(Ordering::Relaxed) {
            let mut st = self.state.lock();
            st.unsent_since.get_or_insert_with(coarse_now);
            self.output_blocked.store(true, Ordering::Release);
        }
    }

    /// The socket took a write (or failed, and the connection ends): the
    /// output is moving again. A connection with no request in flight is
    /// idle from now.
    fn output_taken(&self) {
        if self.output_blocked.load(Ordering::Relaxed) {
            let mut st = self.state.lock();
            st.unsent_since = None;
            self.output_blocked.store(false, Ordering::Release);
            if st.watched.is_empty() {
                st.idle_since = coarse_now();
                drop(st);
                if self.wake_on_idle {
                    self.went_idle.notify_one();
                }
            }
        }
    }

    fn requests(&self) -> u64 {
        self.state.lock().requests
    }

    /// When the connection will have been idle too long, and which deadline
    /// that is; `None` while requests are in flight.
    fn deadline(&self, deadlines: Deadlines) -> Option<(Instant, Close)> {
        let st = self.state.lock();
        if !st.watched.is_empty() || st.unsent_since.is_some() {
            return None;
        }
        Some(if st.requests == 0 {
            (st.idle_since + deadlines.request_header, Close::NoRequest)
        } else {
            (st.idle_since + deadlines.keep_alive, Close::KeepAlive)
        })
    }

    /// Cuts the responses that are due (HTTP/2 streams are reset here; an
    /// HTTP/1 one is returned, for the connection to be closed), and says
    /// until when nothing else is. With no request in flight, output the
    /// client has left unsent for `--timeout-send` closes the connection.
    fn cut_due(&self, deadlines: Deadlines, now: Instant) -> Result<Instant, Close> {
        let mut next = now + deadlines.recheck();
        let mut st = self.state.lock();
        if let (true, Some(since), Some(limit)) =
            (st.watched.is_empty(), st.unsent_since, deadlines.send)
        {
            if since + limit <= now {
                return Err(Close::Unsent(limit));
            }
            next = next.min(since + limit);
        }
        for (_, watched) in st.watched.iter_mut() {
            match watched.due(deadlines) {
                Some((at, why)) if at <= now => {
                    watched.cut = Some(why);
                    match &watched.stream {
                        Some(stream) => stream.cut(),
                        None => return Err(Close::Cut(why)),
                    }
                }
                Some((at, _)) => next = next.min(at),
                None => {}
            }
        }
        Ok(next)
    }

    /// Completes once the connection must be closed: idle past its
    /// deadline, or an HTTP/1 response cut. Resets HTTP/2 streams whose
    /// responses are due to be cut as it goes.
    pub(crate) async fn watch(&self, deadlines: Deadlines) -> Close {
        self.watch_for(deadlines, true).await
    }

    /// [`Activity::watch`] for a connection already closing: its responses
    /// are still cut when due (a client that stops reading must not hold a
    /// drain for all of `--timeout-graceful-shutdown`), but it is not idle
    /// for closing again.
    pub(crate) async fn watch_cuts(&self, deadlines: Deadlines) -> Close {
        self.watch_for(deadlines, false).await
    }

    async fn watch_for(&self, deadlines: Deadlines, idle_too: bool) -> Close {
        loop {
            let now = Instant::now();
            let idle = if idle_too {
                self.deadline(deadlines)
            } else {
                None
            };
            let until = match idle {
                Some((deadline, why)) if deadline <= now => return why,
                // A request that starts meanwhile is looked at by the recheck.
                Some((deadline, _)) => deadline.min(now + deadlines.recheck()),
                None => match self.cut_due(deadlines, now) {
                    Ok(next) => next,
                    Err(close) => return close,
                },
            };
            if self.wake_on_idle {
                tokio::select! {
                    biased;
                    _ = self.went_idle.notified() => {}
                    _ = tokio::time::sleep_until(until) => {}
                }
            } else {
                tokio::time::sleep_until(until).await;
            }
        }
    }
}

/// One request in flight on a connection; see [`Activity::begin`].
pub(crate) struct ActiveRequest {
    activity: Arc<Activity>,
    key: usize,
}

impl ActiveRequest {
    /// App tasks of this connection still running.
    pub(crate) fn app_tasks(&self) -> usize {
        // Acquire, with AppTask's Release: a count seen to fall comes with
        // the release of the place under --limit-concurrency that the same
        // exchange dropped before it (see service::place_after_predecessor).
        self.activity.app_tasks.load(Ordering::Acquire)
    }

    /// Counts an app task of this connection until the guard is dropped
    /// (with the request's exchange, once the app is done with it).
    pub(crate) fn app_task(&self) -> AppTask {
        self.activity.app_tasks.fetch_add(1, Ordering::Relaxed);
        AppTask(Arc::clone(&self.activity))
    }

    /// Counts a WebSocket handshake over HTTP/1 until the guard is dropped,
    /// as its answer goes to hyper.
    pub(crate) fn answering_handshake(&self) -> AnsweringHandshake {
        self.activity.handshakes.fetch_add(1, Ordering::Relaxed);
        AnsweringHandshake(Arc::clone(&self.activity))
    }

    /// Keeps the connection busy until the guard is dropped, with no
    /// deadline of a request's: for a WebSocket over an HTTP/2 stream, which
    /// lives on after its request's (empty) response is done. The connection
    /// is then not idle (no keep-alive close under it) and a drain waits for
    /// it, as it waits for a request.
    ///
    /// The guard still knows the stream, for [`ActiveRequest::reset_stream`],
    /// and the stream shares its handle with the task hyper starts to send
    /// on it once upgraded (see [`StreamExecutor`]).
    pub(crate) fn keep_busy(&self) -> ActiveRequest {
        let mut st = self.activity.state.lock();
        let stream = st
            .watched
            .get(self.key)
            .and_then(|watched| watched.stream.clone());
        if let Some(stream) = &stream {
            stream.upgrading.store(true, Ordering::Relaxed);
        }
        // With no deadline and never waiting, the timer never cuts it.
        let key = st.watched.insert(Watched {
            waiting_since: None,
            deadline: None,
            app: None,
            stream,
            cut: None,
            whole: false,
            exchange: None,
        });
        drop(st);
        ActiveRequest {
            activity: Arc::clone(&self.activity),
            key,
        }
    }

    /// Ties the request to the HTTP/2 stream whose task is being polled, so
    /// the timer can reset it; nothing on HTTP/1. Call from the request's
    /// service future, on its first poll.
    pub(crate) fn attach_stream(&self) {
        if let Some(stream) = POLLED_STREAM.with_borrow(Option::clone) {
            if let Some(watched) = self.activity.state.lock().watched.get_mut(self.key) {
                watched.stream = Some(stream);
            }
        }
    }

    /// Records whether hyper now holds part of the response (its head or a
    /// chunk) and waits to send it: `true` starts the `--timeout-send`
    /// clock, `false` (hyper asked for more, or the app has nothing yet)
    /// stops it.
    pub(crate) fn waiting(&self, waiting: bool) {
        let since = waiting.then(coarse_now);
        if let Some(watched) = self.activity.state.lock().watched.get_mut(self.key) {
            watched.waiting_since = since;
        }
    }

    /// The response is the app's of `exchange`: `--timeout-request` holds
    /// only while that app works on it.
    pub(crate) fn for_app(&self, exchange: Arc<Exchange>) {
        if let Some(watched) = self.activity.state.lock().watched.get_mut(self.key) {
            watched.app = Some(exchange);
        }
    }

    /// The request goes to an app through `exchange` (HTTP/1): see
    /// [`Activity::half_closed`].
    pub(crate) fn to_app(&self, exchange: Arc<Exchange>) {
        let mut st = self.activity.state.lock();
        // hyper may find the end of input before the request's future has
        // made its exchange.
        let half_closed = st.half_closed.then(|| Arc::clone(&exchange));
        if let Some(watched) = st.watched.get_mut(self.key) {
            watched.exchange = Some(exchange);
        }
        drop(st);
        if let Some(exchange) = half_closed {
            exchange.client_done_sending();
        }
    }

    /// Resets the request's HTTP/2 stream now, ending its tasks (hyper's
    /// send task of an upgraded stream too: see [`StreamExecutor`]), which
    /// frees what hyper holds for it and its place under
    /// `--http2-max-concurrent-streams`; nothing on HTTP/1.
    pub(crate) fn reset_stream(&self) {
        let st = self.activity.state.lock();
        if let Some(stream) = st.watched.get(self.key).and_then(|w| w.stream.as_ref()) {
            stream.cut();
        }
    }

    /// Whether the timer cut this response, and why.
    pub(crate) fn cut(&self) -> Option<Cut> {
        let st = self.activity.state.lock();
        st.watched.get(self.key).and_then(|watched| watched.cut)
    }
}

/// A WebSocket handshake of a connection waiting for its answer, counted
/// until dropped.
pub(crate) struct AnsweringHandshake(Arc<Activity>);

impl Drop for AnsweringHandshake {
    fn drop(&mut self) {
        self.0.handshakes.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One app task of a connection, counted until dropped.
pub(crate) struct AppTask(Arc<Activity>);

impl Drop for AppTask {
    fn drop(&mut self) {
        self.0.app_tasks.fetch_sub(1, Ordering::Release);
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        let mut st = self.activity.state.lock();
        st.watched.try_remove(self.key);
        if st.watched.is_empty() {
            st.idle_since = coarse_now();
            let read = st.read_after_half_close.take();
            drop(st);
            if let Some(read) = read {
                read.wake();
            }
            if self.activity.wake_on_idle {
                self.activity.went_idle.notify_one();
            }
        }
    }
}

thread_local! {
    /// The HTTP/2 stream whose task is being polled on this thread, in its
    /// first poll (and every poll, once it may be upgraded).
    static POLLED_STREAM: RefCell<Option<Arc<StreamCut>>> = const { RefCell::new(None) };
}

/// Resets one HTTP/2 stream from outside its task: the task ends, and h2
/// answers the dropped stream with RST_STREAM(CANCEL).
#[derive(Default)]
pub(crate) struct StreamCut {
    cut: AtomicBool,
    task: AtomicWaker,
    /// Its response may upgrade it (an HTTP/2 WebSocket); set by its own
    /// task, in its first poll.
    upgrading: AtomicBool,
}

impl StreamCut {
    fn cut(&self) {
        self.cut.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// hyper's executor for HTTP/2 streams. A stream hyper starts while
/// [`drive`] polls its connection runs in the connection's own task, beside
/// it (see [`WithStreams`]); one started elsewhere is a tokio task of its own,
/// as with `TokioExecutor`. Either way its [`StreamCut`] can end it, and its
/// service future finds the handle with [`ActiveRequest::attach_stream`].
///
/// A task started from a stream's task is that stream's, and shares its
/// handle: hyper starts one for an upgraded stream (an HTTP/2 WebSocket),
/// once its response is sent, and that task holds the stream's sending
/// half. Dropped, the stream's last handle with the upgraded connection's,
/// it makes h2 reset the stream. (The stream's own task ends as it starts
/// that one, so the two never wait on the handle at once.)
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StreamExecutor;

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        let task = Cuttable {
            stream,
            cut: POLLED_STREAM.with_borrow(Option::clone).unwrap_or_default(),
            started: false,
        };
        let spawned = SPAWNED.with_borrow_mut(|spawned| match spawned {
            Some(spawned) => {
                spawned.push(Box::pin(task));
                None
            }
            None => Some(task),
        });
        if let Some(task) = spawned {
            tokio::spawn(task);
        }
    }
}

/// A stream's future, run by its connection's task.
type StreamTask = Pin<Box<dyn Future<Output = ()> + Send>>;

thread_local! {
    /// The streams hyper has started during the connection poll under way
    /// on this thread, for [`WithStreams`] to take over.
    static SPAWNED: RefCell<Option<Vec<StreamTask>>> = const { RefCell::new(None) };
}

/// Takes back the streams started during a connection poll, and ends the
/// collecting even if the poll panics.
struct Collecting<'a>(&'a mut Vec<StreamTask>);

impl Drop for Collecting<'_> {
    fn drop(&mut self) {
        if let Some(spawned) = SPAWNED.take() {
            *self.0 = spawned;
        }
    }
}

/// A connection polled together with its HTTP/2 streams, in one task.
///
/// hyper starts a task per stream; here the streams run in the connection's
/// task instead, in a `FuturesUnordered` that polls only those that were
/// woken. That saves spawning, scheduling and freeing a tokio task for every
/// request, and a response's frames reach the connection without waking
/// another task. The streams end with the connection: by then their client
/// is gone (hyper finishes a connection only once its streams are closed, or
/// when it is broken), and dropping a stream tells its app so.
struct WithStreams<'a, C> {
    connection: Pin<&'a mut C>,
    /// Created for the first stream: an HTTP/1 connection never has one.
    streams: &'a mut Option<FuturesUnordered<StreamTask>>,
    /// Reused between polls, to collect new streams without allocating.
    spawned: &'a mut Vec<StreamTask>,
}

impl<C: Future> Future for WithStreams<'_, C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = self.get_mut();
        let polled = {
            let collecting = Collecting(this.spawned);
            SPAWNED.set(Some(std::mem::take(collecting.0)));
            this.connection.as_mut().poll(cx)
        };
        if polled.is_ready() {
            return polled;
        }
        if !this.spawned.is_empty() {
            let streams = this.streams.get_or_insert_with(FuturesUnordered::new);
            streams.extend(this.spawned.drain(..));
        }
        if let Some(streams) = this.streams {
            // Polls the woken streams (new ones are woken); Pending once none
            // is left to poll, or after a round if they keep waking (it then
            // wakes this task again, as a yield).
            while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
        }
        Poll::Pending
    }
}

pin_project_lite::pin_project! {
    /// A stream's task, ended early once its [`StreamCut`] says so.
    struct Cuttable<F> {
        #[pin]
        stream: F,
        cut: Arc<StreamCut>,
        started: bool,
    }
}

impl<F: Future<Output = ()>> Future for Cuttable<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        this.cut.task.register(cx.waker());
        if this.cut.cut.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        // The first poll, for the service future to find the handle; every
        // poll of a stream that may be upgraded, since hyper starts its send
        // task from whichever poll sends the response.
        let first = !std::mem::replace(this.started, true);
        let shared = first || this.cut.upgrading.load(Ordering::Relaxed);
        if shared {
            POLLED_STREAM.set(Some(Arc::clone(this.cut)));
        }
        // A panic (a bug) ends this stream alone, as it would a task of its
        // own, rather than the connection task it shares with its siblings;
        // the stream is dropped, which resets it.
        let mut stream = this.stream;
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| stream.as_mut().poll(cx)));
        if shared {
            POLLED_STREAM.set(None);
        }
        polled.unwrap_or_else(|_| {
            tracing::error!(
                "an HTTP/2 stream's task panicked; the stream is reset, its connection carries on"
            );
            Poll::Ready(())
        })
    }
}

/// How soon after the client's last bytes the end of its input is taken
/// for a half-close rather than for a client that left (see
/// [`Activity::half_closed`]). A client that gives up on a slow answer
/// does so later than this, and its request, still queued for a WSGI
/// thread, is dropped unrun as before, unless hyper had yet to read the
/// end of its body (a body larger than the read-ahead): then the two
/// cannot be told apart, and the request is answered.
const HALF_CLOSE_WITHIN: Duration = Duration::from_secs(1);

/// A connection's socket, telling its [`Activity`] whether the output hyper
/// holds is moving: hyper finishes a response (and the request stops being
/// in flight) once it holds all of it, which is not once the client has it.
///
/// On HTTP/1 it also keeps a half-close from hyper while requests are in
/// flight: hyper reads once a request is whole, to notice a client that
/// left, and takes the end of input for one, dropping the requests
/// unanswered; see [`Activity::half_closed`].
pub(crate) struct WatchedIo<I> {
    io: I,
    activity: Arc<Activity>,
    http1: bool,
    /// When a read last brought bytes (HTTP/1; coarse).
    last_input: Instant,
}

impl<I> WatchedIo<I> {
    pub(crate) fn new(io: I, activity: Arc<Activity>, http1: bool) -> WatchedIo<I> {
        WatchedIo {
            io,
            activity,
            http1,
            last_input: coarse_now(),
        }
    }

    fn note<T>(&self, polled: Poll<T>) -> Poll<T> {
        match polled {
            Poll::Pending => self.activity.output_refused(),
            Poll::Ready(_) => self.activity.output_taken(),
        }
        polled
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WatchedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if !self.http1 || !matches!(polled, Poll::Ready(Ok(()))) {
            return polled;
        }
        if buf.filled().len() > before {
            self.last_input = coarse_now();
        } else if buf.remaining() > 0 && self.activity.half_closed(cx.waker(), self.last_input) {
            return Poll::Pending;
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WatchedIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.note(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.note(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.note(polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // A client that already reset the connection has nothing left to be
        // told: its end is done. Failing here would hide the error the
        // connection really ended with (hyper shuts down after answering a
        // head it refused, then reports why).
        Pin::new(&mut self.io)
            .poll_shutdown(cx)
            .map(|done| match done {
                Err(err) if peer_gone(&err) => Ok(()),
                other => other,
            })
    }
}

/// Whether `err` says the peer has already closed or reset the connection.
fn peer_gone(err: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        err.kind(),
        ErrorKind::NotConnected | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
    )
}

/// The connections of a worker that are still open, so shutdown can wait
/// for the last one.
#[derive(Default)]
pub(crate) struct OpenConnections {
    count: AtomicUsize,
    changed: tokio::sync::Notify,
    /// Under a supervisor, where the connections are counted for the other
    /// workers too.
    seat: Option<Arc<WorkerSeat>>,
}

impl OpenConnections {
    pub(crate) fn new(seat: Option<Arc<WorkerSeat>>) -> OpenConnections {
        OpenConnections {
            seat,
            ..OpenConnections::default()
        }
    }

    pub(crate) fn open(self: &Arc<Self>) -> OpenConnection {
        self.count.fetch_add(1, Ordering::Relaxed);
        OpenConnection {
            open: Arc::clone(self),
            _held: self.seat.as_ref().map(WorkerSeat::hold),
        }
    }

    /// How many are open.
    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Completes when no connection is open.
    pub(crate) async fn all_closed(&self) {
        loop {
            let notified = self.changed.notified();
            if self.count.load(Ordering::Relaxed) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Counts one open connection until dropped.
pub(crate) struct OpenConnection {
    open: Arc<OpenConnections>,
    /// Its count in the worker's seat, let go of with it.
    _held: Option<HeldConnection>,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        if self.open.count.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.open.changed.notify_waiters();
        }
    }
}

/// Drives `connection` to its end, closing it (with `graceful_shutdown`)
/// when it is idle past its deadline or when `draining` says the server is
/// shutting down. `None` when it was dropped rather than finished.
///
/// The connection comes boxed: an async fn keeps its arguments beside its
/// own state, so an unboxed hyper connection would be held twice in every
/// idle connection's task (and the callers' futures would hold this one
/// twice again: 11.9 KB a connection where the box makes it about 2 KB).
pub(crate) async fn drive<C>(
    mut connection: Pin<Box<C>>,
    graceful_shutdown: impl Fn(Pin<&mut C>),
    activity: Arc<Activity>,
    deadlines: Deadlines,
    mut draining: watch::Receiver<Option<Duration>>,
) -> Option<C::Output>
where
    C: Future,
{
    let mut closing = false;
    // Draining, what the connection waits for before it is asked to close.
    let mut drain_wait: Option<DrainWait> = None;
    let mut streams = Streams(None);
    let mut spawned = Vec::new();
    let watchers_woken = Arc::new(Woken::default());
    let mut registered = None;
    loop {
        let (was_closing, drain_waiting) = (closing, drain_wait.is_some());
        let next = {
            let watchers = async {
                tokio::select! {
                    biased;
                    why = activity.watch(deadlines), if !was_closing => Woke::Deadline(why),
                    why = activity.watch_cuts(deadlines), if was_closing => Woke::Deadline(why),
                    _ = draining.wait_for(Option::is_some), if !was_closing && !drain_waiting => {
                        Woke::Draining
                    }
                    _ = tokio::time::sleep(DRAIN_POLL), if !was_closing && drain_waiting => {
                        Woke::DrainPoll
                    }
                    _ = tokio::time::sleep(CLOSE_GRACE), if was_closing => Woke::CloseGrace,
                }
            };
            // Unconstrained by tokio's budget: the connection and its streams,
            // polled first, may have spent it, and the watchers would then be
            // put off to the next poll, where the same could happen again.
            let mut watchers = std::pin::pin!(tokio::task::unconstrained(watchers));
            let watchers_waker = futures_util::task::waker(Arc::clone(&watchers_woken));
            watchers_woken.woken.store(true, Ordering::Relaxed);
            // The connection is polled on every wake of this task, which it causes
            // almost always; the deadline and shutdown watchers only when one of
            // them was woken, with a waker of their own.
            std::future::poll_fn(|cx| {
                let polled = Pin::new(&mut WithStreams {
                    connection: connection.as_mut(),
                    streams: &mut streams.0,
                    spawned: &mut spawned,
                })
                .poll(cx);
                if let Poll::Ready(result) = polled {
                    return Poll::Ready(Err(result));
                }
                watchers_woken.register(&mut registered, cx.waker());
                if watchers_woken.take_woken() {
                    let mut watchers_cx = Context::from_waker(&watchers_waker);
                    if let Poll::Ready(woke) = watchers.as_mut().poll(&mut watchers_cx) {
                        return Poll::Ready(Ok(woke));
                    }
                }
                Poll::Pending
            })
            .await
        };
        match next {
            Err(result) => return Some(result),
            Ok(Woke::Deadline(why)) => {
                match why {
                    Close::NoRequest => tracing::debug!(
                        "closing a connection that sent no complete request head within --timeout-request-header {}s",
                        deadlines.request_header.as_secs_f64()
                    ),
                    Close::KeepAlive => tracing::trace!("closing an idle keep-alive connection"),
                    // Its response says why, as it is dropped with the connection.
                    Close::Cut(_) => return None,
                    Close::Unsent(limit) => {
                        tracing::info!(
                            "closed a connection whose client took no bytes of the end of its \
                             last response for --timeout-send {}s (it stopped reading); the \
                             response is cut short",
                            limit.as_secs_f64()
                        );
                        return None;
                    }
                }
                graceful_shutdown(connection.as_mut());
                closing = true;
            }
            Ok(Woke::Draining) => {
                drain_wait = if activity.handshakes.load(Ordering::Relaxed) > 0 {
                    Some(DrainWait::Handshake)
                } else if activity.in_flight() > 0 {
                    graceful_shutdown(connection.as_mut());
                    closing = true;
                    None
                } else {
                    Some(DrainWait::NextRequest {
                        requests: activity.requests(),
                        until: Instant::now() + DRAIN_REQUEST_WAIT,
                    })
                };
            }
            Ok(Woke::DrainPoll) => {
                // A request that began meanwhile may be a handshake too.
                let wait = match drain_wait {
                    _ if activity.handshakes.load(Ordering::Relaxed) > 0 => true,
                    Some(DrainWait::NextRequest { requests, until }) => {
                        activity.requests() == requests && Instant::now() < until
                    }
                    Some(DrainWait::Handshake) | None => false,
                };
                if !wait {
                    graceful_shutdown(connection.as_mut());
                    closing = true;
                }
            }
            Ok(Woke::CloseGrace) => {
                // A graceful close waits for the peer on a connection still
                // reading its first head; with nothing in flight, end it,
                // unless hyper is still sending the end of a response (the
                // timer closes it if the client takes none of it for
                // --timeout-send).
                if activity.in_flight() == 0 && !activity.output_unsent() {
                    return None;
                }
            }
        }
    }
}

/// The HTTP/2 streams [`drive`] runs beside its connection, which end with
/// it: a request of theirs still without a response is logged as left with
/// the connection, not as a stream the client reset.
struct Streams(Option<FuturesUnordered<StreamTask>>);

impl Drop for Streams {
    fn drop(&mut self) {
        if let Some(streams) = self.0.take() {
            access_log::connection_ended(|| drop(streams));
        }
    }
}

/// What a draining connection waits for before it is asked to close.
#[derive(Clone, Copy)]
enum DrainWait {
    /// With nothing in flight, a request already sent: one more than
    /// `requests` begun, or `until` passed.
    NextRequest { requests: u64, until: Instant },
    /// A WebSocket handshake's answer. Asked to close, hyper turns off the
    /// connection's keep-alive, and then adds `close` to the `Connection`
    /// header of every response, a 101's too, which must say `Upgrade`
    /// only (RFC 9110 §7.8): the close waits until the answer is written.
    /// A 101 ends the connection's HTTP; another answer says `close` by
    /// itself, or is the app's, after which the connection is idle.
    Handshake,
}

/// What woke [`drive`] other than its connection.
enum Woke {
    /// A deadline of the connection's passed.
    Deadline(Close),
    /// The server began shutting down.
    Draining,
    /// Time to look again whether a request started while draining.
    DrainPoll,
    /// A closing connection has had its grace.
    CloseGrace,
}

/// The waker [`drive`] gives its watchers: it notes that one of them was
/// woken, then wakes the connection's task.
///
/// The task's waker stays in the slot (a wake uses it, never takes it), so
/// `drive`, which checks on every poll, several a request, registers it once
/// and again only if the task's waker changes: an `AtomicWaker` would cost two
/// locked instructions each time. The lock is taken on the watchers' wakes,
/// which are rare (a deadline, a shutdown), and by such a change.
#[derive(Default)]
struct Woken {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Woken {
    /// Puts `waker` in the slot, unless `registered` (what this poller put
    /// there last) wakes the same task.
    fn register(&self, registered: &mut Option<Waker>, waker: &Waker) {
        if registered
            .as_ref()
            .is_some_and(|last| last.will_wake(waker))
        {
            return;
        }
        *self.task.lock() = Some(waker.clone());
        *registered = Some(waker.clone());
    }

    /// Whether a watcher was woken since the last call. After `register`: a
    /// wake that this misses wakes the registered task, which looks again.
    fn take_woken(&self) -> bool {
        // A plain load first: most polls come from the connection, not the
        // watchers, and a swap is a locked instruction.
        self.woken.load(Ordering::Acquire) && self.woken.swap(false, Ordering::AcqRel)
    }
}

impl futures_util::task::ArcWake for Woken {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.woken.store(true, Ordering::Release);
        if let Some(task) = &*arc_self.task.lock() {
            task.wake_by_ref();
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::Method;

    use super::*;

    /// Counts the wakes of a task.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl futures_util::task::ArcWake for Wakes {
        fn wake_by_ref(arc_self: &Arc<Self>) {
            arc_self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn watchers_wake_the_task_every_time_though_it_registers_once() {
        let wakes = Arc::new(Wakes::default());
        let task = futures_util::task::waker(Arc::clone(&wakes));
        let woken = Arc::new(Woken::default());
        let watchers = futures_util::task::waker(Arc::clone(&woken));
        let count = || wakes.0.load(Ordering::SeqCst);
        // A poll: register, then look.
        let mut registered = None;
        let mut poll = |waker: &Waker| {
            woken.register(&mut registered, waker);
            woken.take_woken()
        };
        assert!(!poll(&task));
        watchers.wake_by_ref();
        assert_eq!(count(), 1);
        assert!(poll(&task));
        watchers.wake_by_ref();
        assert_eq!(count(), 2);
        assert!(poll(&task));
        // Polls with no wake between them see none.
        assert!(!poll(&task));
        assert!(!poll(&task));
        // Two wakes before a poll: one look.
        watchers.wake_by_ref();
        watchers.wake_by_ref();
        assert_eq!(count(), 4);
        assert!(poll(&task));
        assert!(!poll(&task));
        // Another task's waker takes the place of the first.
        let others = Arc::new(Wakes::default());
        assert!(!poll(&futures_util::task::waker(Arc::clone(&others))));
        watchers.wake_by_ref();
        assert_eq!((count(), others.0.load(Ordering::SeqCst)), (4, 1));
    }

    #[test]
    fn a_wake_from_another_thread_during_a_poll_is_never_lost() {
        // Each round: a thread wakes the watchers while this one polls; after
        // the poll either it saw the wake, or the wake reached the task.
        let wakes = Arc::new(Wakes::default());
        let task = futures_util::task::waker(Arc::clone(&wakes));
        let woken = Arc::new(Woken::default());
        let mut registered = None;
        for round in 0..2000 {
            let before = wakes.0.load(Ordering::SeqCst);
            let watchers = futures_util::task::waker(Arc::clone(&woken));
            let waker = std::thread::spawn(move || watchers.wake_by_ref());
            woken.register(&mut registered, &task);
            let seen = woken.take_woken();
            waker.join().unwrap();
            let reached = wakes.0.load(Ordering::SeqCst) > before;
            assert!(seen || reached, "round {round}: the wake was lost");
            // What the woken task's next poll does.
            woken.take_woken();
        }
    }

    /// Runs `activity.watch(deadlines)` as a task of its own.
    fn spawn_watch(
        activity: &Arc<Activity>,
        deadlines: Deadlines,
    ) -> tokio::task::JoinHandle<Close> {
        let activity = Arc::clone(activity);
        tokio::spawn(async move { activity.watch(deadlines).await })
    }

    const DEADLINES: Deadlines = Deadlines {
        request_header: Duration::from_secs(10),
        keep_alive: Duration::from_secs(5),
        send: Some(Duration::from_secs(60)),
        request: None,
    };

    #[tokio::test(start_paused = true)]
    async fn output_left_unsent_keeps_the_connection_busy_up_to_the_send_timeout() {
        // The response is done for the app and hyper holds its end, which
        // the client does not take: not idle at 5 s, closed at 60 s.
        let activity = Activity::new(&DEADLINES);
        let started = Instant::now();
        drop(activity.begin(None, false));
        activity.output_refused();
        let waiting = spawn_watch(&activity, DEADLINES);
        assert_eq!(
            waiting.await.unwrap(),
            Close::Unsent(Duration::from_secs(60))
        );
        assert_eq!(started.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_from_when_the_client_took_its_output() {
        let activity = Activity::new(&DEADLINES);
        drop(activity.begin(None, false));
        activity.output_refused();
        let waiting = spawn_watch(&activity, DEADLINES);
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert!(!waiting.is_finished());
        // Refused again and taken: only the last take counts.
        activity.output_taken();
        activity.output_refused();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let taken = Instant::now();
        activity.output_taken();
        assert_eq!(waiting.await.unwrap(), Close::KeepAlive);
        assert_eq!(taken.elapsed(), DEADLINES.keep_alive);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_ends_brings_the_keep_alive_deadline_forward() {
        // The wait began before the first request (towards the request-header
        // deadline, 10 s); the request ends at 1 s, so the connection is idle
        // at 1 + 5 s, not at 10 s.
        let activity = Activity::new(&DEADLINES);
        let started = Instant::now();
        let waiting = spawn_watch(&activity, DEADLINES);
        tokio::task::yield_now().await;
        let request = activity.begin(None, false);
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(request);
        assert_eq!(waiting.await.unwrap(), Close::KeepAlive);
        assert_eq!(started.elapsed(), Duration::from_secs(6));
    }

    #[tokio::test(start_paused = true)]
    async fn a_keep_alive_shorter_than_a_recheck_counts_from_the_end_of_the_request() {
        // The watcher sleeps at most a recheck (100 ms) at a time; a 20 ms
        // keep-alive needs it woken when the request ends, not at its next
        // recheck.
        let deadlines = Deadlines {
            keep_alive: Duration::from_millis(20),
            ..DEADLINES
        };
        let activity = Activity::new(&deadlines);
        let waiting = spawn_watch(&activity, deadlines);
        tokio::task::yield_now().await;
        let request = activity.begin(None, false);
        tokio::time::sleep(Duration::from_millis(1050)).await;
        drop(request);
        let ended = Instant::now();
        assert_eq!(waiting.await.unwrap(), Close::KeepAlive);
        assert_eq!(ended.elapsed(), deadlines.keep_alive);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_idle_after_the_request_header_timeout() {
        let activity = Activity::new(&DEADLINES);
        let started = Instant::now();
        assert_eq!(activity.watch(DEADLINES).await, Close::NoRequest);
        assert_eq!(started.elapsed(), DEADLINES.request_header);
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alive_counts_from_the_end_of_the_last_request() {
        let activity = Activity::new(&DEADLINES);
        let request = activity.begin(None, false);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(activity.deadline(DEADLINES).is_none(), "busy, not idle");
        drop(request);
        let ended = Instant::now();
        assert_eq!(activity.watch(DEADLINES).await, Close::KeepAlive);
        assert_eq!(ended.elapsed(), DEADLINES.keep_alive);
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_request_is_never_idle() {
        let activity = Activity::new(&DEADLINES);
        let _request = activity.begin(None, false);
        let idle = tokio::time::timeout(Duration::from_secs(3600), activity.watch(DEADLINES)).await;
        assert!(idle.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_the_client_takes_nothing_of_is_cut_after_the_send_timeout() {
        let activity = Activity::new(&DEADLINES);
        let request = activity.begin(None, false);
        tokio::time::sleep(Duration::from_secs(100)).await;
        // Waiting on the app costs nothing; waiting on the client is timed.
        request.waiting(true);
        let started = Instant::now();
        let closed = activity.watch(DEADLINES).await;
        assert_eq!(closed, Close::Cut(Cut::Stalled(Duration::from_secs(60))));
        assert_eq!(request.cut(), Some(Cut::Stalled(Duration::from_secs(60))));
        // Within a recheck (the keep-alive timeout) of the deadline.
        assert!(started.elapsed() >= Duration::from_secs(60));
        assert!(started.elapsed() <= Duration::from_secs(65));
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_that_makes_progress_is_never_cut() {
        let activity = Activity::new(&DEADLINES);
        let request = activity.begin(None, false);
        let watching = spawn_watch(&activity, DEADLINES);
        for _ in 0..100 {
            request.waiting(true);
            tokio::time::sleep(Duration::from_secs(59)).await;
            request.waiting(false);
        }
        assert!(!watching.is_finished());
        assert_eq!(request.cut(), None);
        drop(request);
        assert_eq!(watching.await.unwrap(), Close::KeepAlive);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_response_is_cut_at_the_request_deadline() {
        let deadlines = Deadlines {
            request: Some(Duration::from_secs(2)),
            ..DEADLINES
        };
        let activity = Activity::new(&DEADLINES);
        let started = Instant::now();
        let request = activity.begin(Some(started + Duration::from_secs(2)), false);
        request.waiting(true);
        assert_eq!(activity.watch(deadlines).await, Close::Cut(Cut::TimedOut));
        assert!(started.elapsed() >= Duration::from_secs(2));
        assert!(started.elapsed() <= Duration::from_secs(4));
    }

    /// Polls `connection` with its streams `times` times, with a waker that
    /// does nothing, and returns what each poll gave.
    fn poll_with_streams<C: Future>(
        connection: Pin<&mut C>,
        streams: &mut Option<FuturesUnordered<StreamTask>>,
        times: usize,
    ) -> Vec<Poll<C::Output>> {
        let mut spawned = Vec::new();
        let mut with_streams = WithStreams {
            connection,
            streams,
            spawned: &mut spawned,
        };
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        (0..times)
            .map(|_| Pin::new(&mut with_streams).poll(&mut cx))
            .collect()
    }

    #[tokio::test]
    async fn streams_started_in_a_connection_poll_run_in_its_task_and_end_with_it() {
        use hyper::rt::Executor;
        let stream_ran = Arc::new(AtomicBool::new(false));
        let (held, dropped) = tokio::sync::oneshot::channel::<()>();
        let mut held = Some(held);
        let mut polls = 0;
        let connection = {
            let stream_ran = Arc::clone(&stream_ran);
            std::future::poll_fn(move |_cx| {
                polls += 1;
                if let Some(held) = held.take() {
                    // What hyper does for a new stream, from inside the poll.
                    let stream_ran = Arc::clone(&stream_ran);
                    StreamExecutor.execute(async move {
                        let _held = held;
                        stream_ran.store(true, Ordering::SeqCst);
                        std::future::pending::<()>().await;
                    });
                    return Poll::Pending;
                }
                // The stream ran in the same task poll, right after this one.
                assert!(stream_ran.load(Ordering::SeqCst));
                Poll::Ready(polls)
            })
        };
        tokio::pin!(connection);
        let mut streams = None;
        let polls = poll_with_streams(connection.as_mut(), &mut streams, 2);
        assert_eq!(polls, [Poll::Pending, Poll::Ready(2)]);
        // The stream is the connection's: it ends when the connection's task lets go.
        assert_eq!(streams.as_ref().map(FuturesUnordered::len), Some(1));
        drop(streams);
        assert!(dropped.await.is_err());
    }

    #[tokio::test]
    async fn a_stream_that_panics_ends_alone_not_its_connection_or_siblings() {
        use hyper::rt::Executor;
        let sibling_ran = Arc::new(AtomicUsize::new(0));
        let mut started = false;
        let connection = {
            let sibling_ran = Arc::clone(&sibling_ran);
            std::future::poll_fn(move |_cx| {
                if !std::mem::replace(&mut started, true) {
                    StreamExecutor.execute(async { panic!("a bug in a stream") });
                    let sibling_ran = Arc::clone(&sibling_ran);
                    StreamExecutor.execute(async move {
                        sibling_ran.fetch_add(1, Ordering::SeqCst);
                        std::future::pending::<()>().await;
                    });
                }
                Poll::<()>::Pending
            })
        };
        tokio::pin!(connection);
        let mut streams = None;
        let polls = poll_with_streams(connection.as_mut(), &mut streams, 2);
        assert_eq!(polls, [Poll::Pending, Poll::Pending]);
        assert_eq!(sibling_ran.load(Ordering::SeqCst), 1);
        // The panicked stream is gone; its sibling is still there.
        assert_eq!(streams.as_ref().map(FuturesUnordered::len), Some(1));
        // And the next stream's first poll does not see the dead one's handle.
        assert!(POLLED_STREAM.with_borrow(Option::is_none));
    }

    #[tokio::test]
    async fn a_stream_started_outside_a_connection_poll_is_a_task_of_its_own() {
        use hyper::rt::Executor;
        let (done, finished) = tokio::sync::oneshot::channel();
        StreamExecutor.execute(async move {
            done.send(()).unwrap();
        });
        finished.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_stream_is_reset_and_the_connection_goes_on() {
        use hyper::rt::Executor;
        let activity = Activity::new(&DEADLINES);
        let (attached, attached_rx) = tokio::sync::oneshot::channel();
        let (ended, ended_rx) = tokio::sync::oneshot::channel::<()>();
        {
            let activity = Arc::clone(&activity);
            // What hyper hands the executor: the stream's service future and
            // response; it holds `ended` until the task is dropped.
            StreamExecutor.execute(async move {
                let _ended = ended;
                let request = activity.begin(None, false);
                request.attach_stream();
                request.waiting(true);
                let _ = attached.send(());
                std::future::pending::<()>().await;
                drop(request);
            });
        }
        attached_rx.await.unwrap();
        let watching = spawn_watch(&activity, DEADLINES);
        // The stream's task ends (dropping what it held) once cut, and the
        // connection, idle then, closes at the keep-alive deadline.
        assert!(ended_rx.await.is_err());
        let cut_at = Instant::now();
        assert_eq!(watching.await.unwrap(), Close::KeepAlive);
        assert_eq!(cut_at.elapsed(), DEADLINES.keep_alive);
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_a_stream_starts_is_reset_with_that_stream_alone() {
        use hyper::rt::Executor;
        use tokio::sync::oneshot;
        let activity = Activity::new(&DEADLINES);
        let (answer, answered) = oneshot::channel::<()>();
        let (busy_tx, busy_rx) = oneshot::channel();
        let (upgrading, upgrading_rx) = oneshot::channel::<()>();
        let (sent, sent_rx) = oneshot::channel::<()>();
        let (sibling, sibling_rx) = oneshot::channel::<()>();
        {
            let activity = Arc::clone(&activity);
            // hyper's task for an extended CONNECT: the service takes it for
            // a WebSocket in its first poll and answers in a later one; the
            // task then starts the upgraded stream's send task (which holds
            // `sent`) and ends.
            StreamExecutor.execute(async move {
                let request = activity.begin(None, false);
                request.attach_stream();
                let busy = request.keep_busy();
                let _ = upgrading.send(());
                let _ = answered.await;
                let _ = busy_tx.send(busy);
                drop(request);
                StreamExecutor.execute(async move {
                    let _sent = sent;
                    std::future::pending::<()>().await;
                });
            });
        }
        StreamExecutor.execute(async move {
            let _sibling = sibling;
            std::future::pending::<()>().await;
        });
        upgrading_rx.await.unwrap();
        answer.send(()).unwrap();
        let busy = busy_rx.await.unwrap();
        busy.reset_stream();
        let ended = tokio::time::timeout(Duration::from_secs(1), sent_rx).await;
        assert!(matches!(ended, Ok(Err(_))), "the send task was not ended");
        let sibling = tokio::time::timeout(Duration::from_secs(1), sibling_rx).await;
        assert!(sibling.is_err(), "another stream's task was ended");
    }

    #[tokio::test]
    async fn all_closed_waits_for_the_last_connection() {
        let open = Arc::new(OpenConnections::default());
        open.all_closed().await;
        let first = open.open();
        let second = open.open();
        drop(first);
        let waiter = {
            let open = Arc::clone(&open);
            tokio::spawn(async move { open.all_closed().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(second);
        waiter.await.unwrap();
    }

    /// A request with a body still to come, its exchange, and a waker
    /// counting hyper's read's wakes.
    fn half_close_setup() -> (
        Arc<Activity>,
        ActiveRequest,
        Arc<Exchange>,
        Arc<Wakes>,
        Waker,
    ) {
        let activity = Activity::new(&DEADLINES);
        let request = activity.begin(None, false);
        let (exchange, _) = Exchange::for_test(Method::POST, "/", false, false);
        request.to_app(Arc::clone(&exchange));
        let wakes = Arc::new(Wakes::default());
        let read = futures_util::task::waker(Arc::clone(&wakes));
        (activity, request, exchange, wakes, read)
    }

    #[test]
    fn an_end_of_input_right_after_the_last_bytes_waits_for_the_body_then_is_a_half_close() {
        let (activity, request, exchange, wakes, read) = half_close_setup();
        let now = coarse_now();
        // The body's last frame is in hyper's channel: looked at again once whole.
        assert!(activity.half_closed(&read, now));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
        exchange.push_body(Bytes::from_static(b"end"), true);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        // However much later the app read it: a half-close, until the request ends.
        assert!(activity.half_closed(&read, now - Duration::from_secs(5)));
        assert!(activity.half_closed(&read, now));
        drop(request);
        assert!(
            wakes.0.load(Ordering::SeqCst) >= 2,
            "hyper's read is woken to close"
        );
        assert!(!activity.half_closed(&read, now));
    }

    #[tokio::test(start_paused = true)]
    async fn an_end_of_input_long_after_the_last_bytes_is_a_client_that_left() {
        let (activity, _request, exchange, _wakes, read) = half_close_setup();
        let read_at = coarse_now();
        exchange.body_decoded();
        exchange.push_body(Bytes::new(), true);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!activity.half_closed(&read, read_at));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pipelined_head_parsed_late_counts_from_when_it_was() {
        // Both heads came in one read; the second was parsed once the
        // first's slow answer was done.
        let activity = Activity::new(&DEADLINES);
        let read_at = coarse_now();
        drop(activity.begin(None, true));
        tokio::time::advance(Duration::from_secs(3)).await;
        let _second = activity.begin(None, true);
        let read = futures_util::task::waker(Arc::new(Wakes::default()));
        assert!(activity.half_closed(&read, read_at));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_decoded_late_counts_from_its_last_piece() {
        // hyper decodes a chunked body's end from its buffer as the app
        // reads, here 3 s after the read that brought it.
        let (activity, _request, exchange, wakes, read) = half_close_setup();
        let read_at = coarse_now();
        tokio::time::advance(Duration::from_secs(3)).await;
        exchange.body_decoded();
        assert!(activity.half_closed(&read, read_at));
        exchange.push_body(Bytes::new(), true);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert!(activity.half_closed(&read, read_at));
    }

    #[test]
    fn an_end_of_input_while_the_body_waits_for_more_cuts_it_short() {
        let (activity, _request, exchange, _wakes, read) = half_close_setup();
        exchange.body_needs_input();
        assert!(!activity.half_closed(&read, coarse_now()));
    }

    #[test]
    fn a_body_found_to_need_more_after_the_look_cuts_it_short_at_the_next() {
        let (activity, _request, exchange, wakes, read) = half_close_setup();
        assert!(activity.half_closed(&read, coarse_now()));
        // The body's task took the frame there was and found no more.
        exchange.body_needs_input();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert!(!activity.half_closed(&read, coarse_now()));
    }

    #[test]
    fn a_body_abandoned_after_the_look_is_a_half_close() {
        let (activity, _request, exchange, wakes, read) = half_close_setup();
        assert!(activity.half_closed(&read, coarse_now()));
        exchange.body_abandoned();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert!(activity.half_closed(&read, coarse_now() - Duration::from_secs(5)));
    }

    #[test]
    fn a_look_after_the_request_ended_closes_though_its_body_was_awaited() {
        let (activity, request, _exchange, _wakes, read) = half_close_setup();
        assert!(activity.half_closed(&read, coarse_now()));
        // The response went out before the body became whole.
        drop(request);
        assert!(!activity.half_closed(&read, coarse_now()));
    }
}
