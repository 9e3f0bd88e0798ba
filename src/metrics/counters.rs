//! The counters one worker keeps for `--metrics-bind`, laid out to live in
//! the memory it shares with its supervisor (see `supervisor::slot`).
//!
//! Every label a metric can take is fixed here (a method list with "other",
//! status classes, histogram buckets, protocols), so each series is one
//! plain atomic at a fixed place: recording a request is a handful of
//! relaxed stores, with no lock, no allocation and no GIL, and the
//! supervisor reads the same words from its own mapping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{Method, StatusCode};

/// The methods counted by name; any other is counted as "other".
pub(crate) const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "other",
];

/// Status labels: classes 1xx to 5xx, and "none" for a request whose client
/// left before a response head was chosen.
pub(crate) const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// The index of [`STATUS_CLASSES`]'s "none".
const NO_STATUS: usize = 5;

/// Upper bounds of the request duration histogram, in microseconds
/// (Prometheus client libraries' default buckets, finer below 5 ms where a
/// fast app's requests fall). A last bucket, +Inf, follows them.
pub(crate) const DURATION_BUCKETS_MICROS: [u64; 13] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];

/// Buckets including +Inf.
const BUCKETS: usize = DURATION_BUCKETS_MICROS.len() + 1;

/// What a connection speaks now, for the open-connections gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1 = 0,
    Http2 = 1,
    WebSocket = 2,
}

impl Protocol {
    pub(crate) const ALL: [Protocol; 3] = [Protocol::Http1, Protocol::Http2, Protocol::WebSocket];

    /// The `protocol` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Protocol::Http1 => "http/1.1",
            Protocol::Http2 => "h2",
            Protocol::WebSocket => "websocket",
        }
    }
}

/// The index of `method` in [`METHODS`].
pub(crate) fn method_index(method: &Method) -> usize {
    METHODS[..METHODS.len() - 1]
        .iter()
        .position(|name| *name == method.as_str())
        .unwrap_or(METHODS.len() - 1)
}

/// The index of `status`'s class in [`STATUS_CLASSES`]; `None` (no response) is "none".
pub(crate) fn status_index(status: Option<StatusCode>) -> usize {
    match status.map(|status| status.as_u16() / 100) {
        Some(class @ 1..=5) => usize::from(class - 1),
        // hyper allows codes up to 999; the classes above 5 are no standard's.
        Some(_) => STATUS_CLASSES.len() - 2,
        None => NO_STATUS,
    }
}

/// The histogram bucket a request of `duration` falls in (the last is +Inf).
pub(crate) fn bucket_index(duration: Duration) -> usize {
    let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
    DURATION_BUCKETS_MICROS.partition_point(|bound| *bound < micros)
}

/// Adds `n` to a counter that only its worker's reactor thread writes: a
/// load and a store, no locked read-modify-write (the supervisor only reads).
fn add(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// The shared layout. All zeroes is the empty state; fields are only ever
/// appended, both processes being the same build.
#[repr(C)]
pub(crate) struct Counters {
    /// Finished requests, by method and status class.
    requests: [[AtomicU64; STATUS_CLASSES.len()]; METHODS.len()],
    /// Request durations, one count per bucket (not cumulative).
    duration_buckets: [AtomicU64; BUCKETS],
    duration_sum_micros: AtomicU64,
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    /// Gauges below, changed with read-modify-writes: a WSGI thread and the
    /// reactor may both move them.
    requests_in_flight: AtomicU64,
    connections_open: [AtomicU64; Protocol::ALL.len()],
    wsgi_threads_busy: AtomicU64,
    /// How late the event loop ran its last heartbeat.
    event_loop_lag_micros: AtomicU64,
    /// Requests waiting for a WSGI thread, as the reactor found them at its
    /// last look (once a second).
    wsgi_queue_depth: AtomicU64,
}

impl Counters {
    /// Reactor thread: a request that started at `started` ended (its
    /// response done, or its client gone).
    pub(crate) fn record_request(
        &self,
        method: usize,
        status: Option<StatusCode>,
        duration: Duration,
    ) {
        add(&self.requests[method][status_index(status)], 1);
        add(&self.duration_buckets[bucket_index(duration)], 1);
        add(
            &self.duration_sum_micros,
            u64::try_from(duration.as_micros()).unwrap_or(u64::MAX),
        );
    }

    /// Reactor thread: a request head hyper refused and answered itself
    /// (400, 414, 431) before any method was read or request began. It
    /// counts under method "other", and not in the duration histogram:
    /// none was measured.
    pub(crate) fn record_refused(&self, status: StatusCode) {
        add(
            &self.requests[METHODS.len() - 1][status_index(Some(status))],
            1,
        );
    }

    /// Reactor thread: bytes read from a client.
    pub(crate) fn received(&self, bytes: usize) {
        add(&self.bytes_received, bytes as u64);
    }

    /// Reactor thread: bytes written to a client.
    pub(crate) fn sent(&self, bytes: usize) {
        add(&self.bytes_sent, bytes as u64);
    }

    pub(crate) fn request_started(&self) {
        self.requests_in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn request_ended(&self) {
        self.requests_in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_opened(&self, protocol: Protocol) {
        self.connections_open[protocol as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_closed(&self, protocol: Protocol) {
        self.connections_open[protocol as usize].fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn wsgi_thread_busy(&self) {
        self.wsgi_threads_busy.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn wsgi_thread_idle(&self) {
        self.wsgi_threads_busy.fetch_sub(1, Ordering::Relaxed);
    }

    /// Reactor thread: the requests waiting for a WSGI thread now.
    pub(crate) fn set_wsgi_queue_depth(&self, depth: usize) {
        self.wsgi_queue_depth.store(depth as u64, Ordering::Relaxed);
    }

    /// Event loop thread: how late its last heartbeat ran.
    pub(crate) fn set_event_loop_lag(&self, lag: Duration) {
        let micros = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX);
        self.event_loop_lag_micros.store(micros, Ordering::Relaxed);
    }

    /// A copy of every value as it is now.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        // A gauge below zero (a decrement without its increment, a bug)
        // would read as 2^64; zero says less that is wrong.
        let gauge = |gauge: &AtomicU64| (load(gauge) as i64).max(0) as u64;
        Snapshot {
            requests: self.requests.each_ref().map(|row| row.each_ref().map(load)),
            duration_buckets: self.duration_buckets.each_ref().map(load),
            duration_sum_micros: load(&self.duration_sum_micros),
            bytes_received: load(&self.bytes_received),
            bytes_sent: load(&self.bytes_sent),
            requests_in_flight: gauge(&self.requests_in_flight),
            connections_open: self.connections_open.each_ref().map(gauge),
            wsgi_threads_busy: gauge(&self.wsgi_threads_busy),
            event_loop_lag_micros: load(&self.event_loop_lag_micros),
            wsgi_queue_depth: load(&self.wsgi_queue_depth),
        }
    }
}

/// [`Counters`] read at one moment, as plain numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub requests: [[u64; STATUS_CLASSES.len()]; METHODS.len()],
    pub duration_buckets: [u64; BUCKETS],
    pub duration_sum_micros: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub requests_in_flight: u64,
    pub connections_open: [u64; Protocol::ALL.len()],
    pub wsgi_threads_busy: u64,
    pub event_loop_lag_micros: u64,
    pub wsgi_queue_depth: u64,
}

impl Snapshot {
    /// Adds `other`'s counters (never its gauges, which say how a process
    /// is now): how a worker that is gone keeps its part of the totals.
    pub(crate) fn add_counters(&mut self, other: &Snapshot) {
        for (row, other_row) in self.requests.iter_mut().zip(&other.requests) {
            for (count, other) in row.iter_mut().zip(other_row) {
                *count += other;
            }
        }
        for (count, other) in self
            .duration_buckets
            .iter_mut()
            .zip(&other.duration_buckets)
        {
            *count += other;
        }
        self.duration_sum_micros += other.duration_sum_micros;
        self.bytes_received += other.bytes_received;
        self.bytes_sent += other.bytes_sent;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters() -> Box<Counters> {
        // SAFETY: all zeroes is a valid Counters (atomics of zero).
        unsafe { Box::new(std::mem::zeroed()) }
    }

    #[test]
    fn methods_outside_the_list_count_as_other() {
        assert_eq!(METHODS[method_index(&Method::GET)], "GET");
        assert_eq!(METHODS[method_index(&Method::PATCH)], "PATCH");
        let propfind = Method::from_bytes(b"PROPFIND").unwrap();
        assert_eq!(METHODS[method_index(&propfind)], "other");
    }

    #[test]
    fn statuses_fall_in_their_class() {
        let class = |code: u16| STATUS_CLASSES[status_index(StatusCode::from_u16(code).ok())];
        assert_eq!(class(101), "1xx");
        assert_eq!(class(200), "2xx");
        assert_eq!(class(304), "3xx");
        assert_eq!(class(404), "4xx");
        assert_eq!(class(599), "5xx");
        assert_eq!(STATUS_CLASSES[status_index(None)], "none");
    }

    #[test]
    fn a_duration_on_a_bound_falls_in_that_bucket() {
        assert_eq!(bucket_index(Duration::ZERO), 0);
        assert_eq!(bucket_index(Duration::from_millis(1)), 0);
        assert_eq!(bucket_index(Duration::from_micros(1_001)), 1);
        assert_eq!(bucket_index(Duration::from_secs(10)), BUCKETS - 2);
        assert_eq!(bucket_index(Duration::from_secs(11)), BUCKETS - 1);
        assert_eq!(bucket_index(Duration::MAX), BUCKETS - 1);
    }

    #[test]
    fn a_recorded_request_shows_in_every_series() {
        let counters = counters();
        counters.record_request(0, StatusCode::from_u16(200).ok(), Duration::from_millis(3));
        counters.record_request(2, None, Duration::from_millis(30));
        counters.received(100);
        counters.sent(250);
        let snapshot = counters.snapshot();
        assert_eq!(snapshot.requests[0][1], 1);
        assert_eq!(snapshot.requests[2][NO_STATUS], 1);
        assert_eq!(snapshot.requests.iter().flatten().sum::<u64>(), 2);
        assert_eq!(snapshot.duration_buckets[2], 1);
        assert_eq!(snapshot.duration_buckets[5], 1);
        assert_eq!(snapshot.duration_sum_micros, 33_000);
        assert_eq!((snapshot.bytes_received, snapshot.bytes_sent), (100, 250));
    }

    #[test]
    fn a_refused_head_counts_as_an_other_request_with_no_duration() {
        let counters = counters();
        counters.record_refused(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let snapshot = counters.snapshot();
        assert_eq!(snapshot.requests[METHODS.len() - 1][3], 1);
        assert_eq!(snapshot.requests.iter().flatten().sum::<u64>(), 1);
        assert_eq!(snapshot.duration_buckets.iter().sum::<u64>(), 0);
    }

    #[test]
    fn folding_adds_counters_and_leaves_gauges() {
        let counters = counters();
        counters.record_request(0, StatusCode::from_u16(500).ok(), Duration::from_secs(1));
        counters.request_started();
        counters.connection_opened(Protocol::Http2);
        let gone = counters.snapshot();
        let mut totals = Snapshot::default();
        totals.add_counters(&gone);
        totals.add_counters(&gone);
        assert_eq!(totals.requests[0][4], 2);
        assert_eq!(totals.duration_sum_micros, 2_000_000);
        assert_eq!(totals.requests_in_flight, 0);
        assert_eq!(totals.connections_open, [0, 0, 0]);
    }

    #[test]
    fn a_gauge_read_below_zero_shows_zero() {
        let counters = counters();
        counters.request_ended();
        assert_eq!(counters.snapshot().requests_in_flight, 0);
        counters.request_started();
        counters.request_started();
        assert_eq!(counters.snapshot().requests_in_flight, 1);
    }
}
