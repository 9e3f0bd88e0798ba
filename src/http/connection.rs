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
//! * On shutdown each connection is asked to finish gracefully: HTTP/1 closes
//!   after the response in flight, HTTP/2 sends GOAWAY and finishes its
//!   streams. One with nothing in flight first gets a moment to start the
//!   request its client may already have sent.
//!
//! The deadlines are checked lazily: requests only record when they start
//! and end ([`Activity`]), and one timer per connection wakes when a deadline
//! could have passed, so the per-request cost is two uncontended locks.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

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
}

/// Why a connection was closed for being idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Idle {
    /// No complete request head arrived within `--timeout-request-header`.
    NoRequest,
    /// No new request arrived within `--timeout-keep-alive`.
    KeepAlive,
}

struct ActivityState {
    in_flight: usize,
    requests: u64,
    /// When the connection last had no request in flight (or was accepted).
    idle_since: Instant,
}

/// The requests in flight on one connection, and since when it is idle.
pub(crate) struct Activity {
    state: Mutex<ActivityState>,
    /// App tasks of this connection still running, whether or not their
    /// request is: an HTTP/2 stream the client reset leaves its task behind.
    app_tasks: AtomicUsize,
    /// Wakes [`Activity::idle`] when the last request in flight ends: the
    /// deadline it sleeps towards may have been the first request's, and
    /// the keep-alive one is now due sooner.
    went_idle: Notify,
}

impl Activity {
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            state: Mutex::new(ActivityState {
                in_flight: 0,
                requests: 0,
                idle_since: Instant::now(),
            }),
            app_tasks: AtomicUsize::new(0),
            went_idle: Notify::new(),
        })
    }

    /// A request head arrived; the returned guard ends the request when
    /// dropped (when its response body is done).
    pub(crate) fn begin(self: &Arc<Self>) -> ActiveRequest {
        let mut st = self.state.lock();
        st.in_flight += 1;
        st.requests += 1;
        ActiveRequest(Arc::clone(self))
    }

    fn in_flight(&self) -> usize {
        self.state.lock().in_flight
    }

    fn requests(&self) -> u64 {
        self.state.lock().requests
    }

    /// When the connection will have been idle too long, and which deadline
    /// that is; `None` while requests are in flight.
    fn deadline(&self, deadlines: Deadlines) -> Option<(Instant, Idle)> {
        let st = self.state.lock();
        if st.in_flight > 0 {
            return None;
        }
        Some(if st.requests == 0 {
            (st.idle_since + deadlines.request_header, Idle::NoRequest)
        } else {
            (st.idle_since + deadlines.keep_alive, Idle::KeepAlive)
        })
    }

    /// Completes once the connection has been idle past its deadline.
    pub(crate) async fn idle(&self, deadlines: Deadlines) -> Idle {
        loop {
            match self.deadline(deadlines) {
                Some((deadline, why)) if deadline <= Instant::now() => return why,
                Some((deadline, _)) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => {}
                        _ = self.went_idle.notified() => {}
                    }
                }
                None => tokio::time::sleep(deadlines.keep_alive.max(MIN_RECHECK)).await,
            }
        }
    }
}

/// One request in flight on a connection; see [`Activity::begin`].
pub(crate) struct ActiveRequest(Arc<Activity>);

impl ActiveRequest {
    /// App tasks of this connection still running.
    pub(crate) fn app_tasks(&self) -> usize {
        self.0.app_tasks.load(Ordering::Relaxed)
    }

    /// Counts an app task of this connection until the guard is dropped
    /// (with the request's exchange, once the app is done with it).
    pub(crate) fn app_task(&self) -> AppTask {
        self.0.app_tasks.fetch_add(1, Ordering::Relaxed);
        AppTask(Arc::clone(&self.0))
    }
}

/// One app task of a connection, counted until dropped.
pub(crate) struct AppTask(Arc<Activity>);

impl Drop for AppTask {
    fn drop(&mut self) {
        self.0.app_tasks.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        let mut st = self.0.state.lock();
        st.in_flight -= 1;
        if st.in_flight == 0 {
            st.idle_since = Instant::now();
            drop(st);
            self.0.went_idle.notify_one();
        }
    }
}

/// The connections of a worker that are still open, so shutdown can wait
/// for the last one.
#[derive(Default)]
pub(crate) struct OpenConnections {
    count: AtomicUsize,
    changed: tokio::sync::Notify,
}

impl OpenConnections {
    pub(crate) fn open(self: &Arc<Self>) -> OpenConnection {
        self.count.fetch_add(1, Ordering::Relaxed);
        OpenConnection(Arc::clone(self))
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
pub(crate) struct OpenConnection(Arc<OpenConnections>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.changed.notify_waiters();
        }
    }
}

/// Drives `connection` to its end, closing it (with `graceful_shutdown`)
/// when it is idle past its deadline or when `draining` says the server is
/// shutting down. `None` when it was dropped rather than finished.
pub(crate) async fn drive<C>(
    connection: C,
    graceful_shutdown: impl Fn(Pin<&mut C>),
    activity: Arc<Activity>,
    deadlines: Deadlines,
    mut draining: watch::Receiver<Option<Duration>>,
) -> Option<C::Output>
where
    C: Future,
{
    tokio::pin!(connection);
    let mut closing = false;
    // Draining with nothing in flight: the request count then, and until when
    // a new request may still start.
    let mut drain_wait: Option<(u64, Instant)> = None;
    loop {
        tokio::select! {
            // The connection first: it is what wakes this task on almost every poll.
            biased;
            result = connection.as_mut() => return Some(result),
            why = activity.idle(deadlines), if !closing => {
                match why {
                    Idle::NoRequest => tracing::debug!(
                        "closing a connection that sent no complete request head within --timeout-request-header {}s",
                        deadlines.request_header.as_secs_f64()
                    ),
                    Idle::KeepAlive => tracing::trace!("closing an idle keep-alive connection"),
                }
                graceful_shutdown(connection.as_mut());
                closing = true;
            }
            _ = draining.wait_for(Option::is_some), if !closing && drain_wait.is_none() => {
                if activity.in_flight() > 0 {
                    graceful_shutdown(connection.as_mut());
                    closing = true;
                } else {
                    drain_wait = Some((activity.requests(), Instant::now() + DRAIN_REQUEST_WAIT));
                }
            }
            _ = tokio::time::sleep(DRAIN_POLL), if !closing && drain_wait.is_some() => {
                if let Some((requests, until)) = drain_wait {
                    if activity.requests() > requests || Instant::now() >= until {
                        graceful_shutdown(connection.as_mut());
                        closing = true;
                    }
                }
            }
            _ = tokio::time::sleep(CLOSE_GRACE), if closing => {
                // A graceful close waits for the peer on a connection still
                // reading its first head; with nothing in flight, end it.
                if activity.in_flight() == 0 {
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEADLINES: Deadlines = Deadlines {
        request_header: Duration::from_secs(10),
        keep_alive: Duration::from_secs(5),
    };

    #[tokio::test(start_paused = true)]
    async fn a_request_that_ends_brings_the_keep_alive_deadline_forward() {
        // The wait began before the first request (towards the request-header
        // deadline, 10 s); the request ends at 1 s, so the connection is idle
        // at 1 + 5 s, not at 10 s.
        let activity = Activity::new();
        let started = Instant::now();
        let waiting = {
            let activity = Arc::clone(&activity);
            tokio::spawn(async move { activity.idle(DEADLINES).await })
        };
        tokio::task::yield_now().await;
        let request = activity.begin();
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(request);
        assert_eq!(waiting.await.unwrap(), Idle::KeepAlive);
        assert_eq!(started.elapsed(), Duration::from_secs(6));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_idle_after_the_request_header_timeout() {
        let activity = Activity::new();
        let started = Instant::now();
        assert_eq!(activity.idle(DEADLINES).await, Idle::NoRequest);
        assert_eq!(started.elapsed(), DEADLINES.request_header);
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alive_counts_from_the_end_of_the_last_request() {
        let activity = Activity::new();
        let request = activity.begin();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(activity.deadline(DEADLINES).is_none(), "busy, not idle");
        drop(request);
        let ended = Instant::now();
        assert_eq!(activity.idle(DEADLINES).await, Idle::KeepAlive);
        assert_eq!(ended.elapsed(), DEADLINES.keep_alive);
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_request_is_never_idle() {
        let activity = Activity::new();
        let _request = activity.begin();
        let idle = tokio::time::timeout(Duration::from_secs(3600), activity.idle(DEADLINES)).await;
        assert!(idle.is_err());
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
}
