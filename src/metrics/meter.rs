//! What the request path holds to count into a worker's [`Counters`]: a
//! guard per request, a wrapper around each connection's socket, a guard per
//! WebSocket session. Each records when it is dropped, so no path (a
//! response done, a client gone, a task cancelled) is missed or counted twice.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Method, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::counters::{method_index, Counters, Protocol};
use crate::supervisor::Slot;

/// The HTTP/2 connection preface starts so (RFC 9113 §3.4); no HTTP/1.1
/// request does, `PRI` being reserved for it.
const HTTP2_PREFACE_START: &[u8] = b"PRI ";

/// One request from its head to the end of its response: in flight while
/// held, counted by method, status and duration when dropped.
pub(crate) struct RequestMeter {
    slot: Arc<Slot>,
    method: usize,
    started: Instant,
    status: Option<StatusCode>,
}

impl RequestMeter {
    pub(crate) fn start(slot: &Arc<Slot>, method: &Method, started: Instant) -> RequestMeter {
        slot.counters().request_started();
        RequestMeter {
            slot: Arc::clone(slot),
            method: method_index(method),
            started,
            status: None,
        }
    }

    /// The response's status, once its head is chosen.
    pub(crate) fn answered(&mut self, status: StatusCode) {
        self.status = Some(status);
    }
}

impl Drop for RequestMeter {
    fn drop(&mut self) {
        let counters = self.slot.counters();
        counters.request_ended();
        counters.record_request(self.method, self.status, self.started.elapsed());
    }
}

/// A client connection's socket, counting the bytes through it and keeping
/// the open-connections gauge of its protocol. The protocol is HTTP/1.1
/// until the first bytes say HTTP/2 (the preface), whichever way the
/// connection was chosen to be served (prior knowledge, ALPN, auto).
pub(crate) struct MeteredIo<I> {
    io: I,
    /// `None` without `--metrics-bind`: the wrapper only passes through.
    slot: Option<Arc<Slot>>,
    protocol: Protocol,
    /// Whether the first bytes have said which protocol this is.
    classified: bool,
    /// How many bytes of the HTTP/2 preface's start the reads so far matched
    /// (a first read may be one byte: "P" starts "PUT" as well as "PRI").
    matched: usize,
}

impl<I> MeteredIo<I> {
    pub(crate) fn new(io: I, slot: Option<Arc<Slot>>) -> MeteredIo<I> {
        if let Some(slot) = &slot {
            slot.counters().connection_opened(Protocol::Http1);
        }
        MeteredIo {
            io,
            slot,
            protocol: Protocol::Http1,
            classified: false,
            matched: 0,
        }
    }

    fn counters(&self) -> Option<&Counters> {
        self.slot.as_deref().map(Slot::counters)
    }

    /// Counts `read` bytes just read; the first ones say the protocol.
    fn count_read(&mut self, read: &[u8]) {
        let Some(counters) = self.slot.as_deref().map(Slot::counters) else {
            return;
        };
        counters.received(read.len());
        if !self.classified && !read.is_empty() {
            let wanted = &HTTP2_PREFACE_START[self.matched..];
            let take = read.len().min(wanted.len());
            if read[..take] != wanted[..take] {
                self.classified = true;
            } else {
                self.matched += take;
                if self.matched == HTTP2_PREFACE_START.len() {
                    self.classified = true;
                    counters.connection_closed(Protocol::Http1);
                    counters.connection_opened(Protocol::Http2);
                    self.protocol = Protocol::Http2;
                }
            }
        }
    }
}

impl<I> Drop for MeteredIo<I> {
    fn drop(&mut self) {
        if let Some(counters) = self.counters() {
            counters.connection_closed(self.protocol);
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for MeteredIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if self.slot.is_some() && matches!(polled, Poll::Ready(Ok(()))) {
            let this = &mut *self;
            this.count_read(&buf.filled()[before..]);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for MeteredIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if let (Poll::Ready(Ok(written)), Some(counters)) = (&polled, self.counters()) {
            counters.sent(*written);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let (Poll::Ready(Ok(written)), Some(counters)) = (&polled, self.counters()) {
            counters.sent(*written);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// An open WebSocket session. Over HTTP/1.1 it takes its connection from
/// the `http/1.1` gauge to the `websocket` one while it lasts; over HTTP/2
/// (RFC 8441) the connection stays an `h2` one and the session adds to
/// `websocket`.
pub(crate) struct WebSocketOpen {
    slot: Arc<Slot>,
    http2: bool,
}

impl WebSocketOpen {
    pub(crate) fn new(slot: &Arc<Slot>, http2: bool) -> WebSocketOpen {
        let counters = slot.counters();
        counters.connection_opened(Protocol::WebSocket);
        if !http2 {
            counters.connection_closed(Protocol::Http1);
        }
        WebSocketOpen {
            slot: Arc::clone(slot),
            http2,
        }
    }
}

impl Drop for WebSocketOpen {
    fn drop(&mut self) {
        let counters = self.slot.counters();
        counters.connection_closed(Protocol::WebSocket);
        if !self.http2 {
            counters.connection_opened(Protocol::Http1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_both_ways_are_counted_and_the_preface_says_h2() {
        let slot = Arc::new(Slot::create().unwrap());
        let (client, server) = tokio::io::duplex(1024);
        let mut server = MeteredIo::new(server, Some(Arc::clone(&slot)));
        let mut client = client;
        assert_eq!(slot.counters().snapshot().connections_open, [1, 0, 0]);
        client
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0; 64];
        let read = server.read(&mut buf).await.unwrap();
        server.write_all(b"hello").await.unwrap();
        let snapshot = slot.counters().snapshot();
        assert_eq!(snapshot.bytes_received, read as u64);
        assert_eq!(snapshot.bytes_sent, 5);
        assert_eq!(snapshot.connections_open, [0, 1, 0]);
        drop(server);
        assert_eq!(slot.counters().snapshot().connections_open, [0, 0, 0]);
    }

    #[tokio::test]
    async fn a_request_line_stays_http1() {
        let slot = Arc::new(Slot::create().unwrap());
        let (mut client, server) = tokio::io::duplex(1024);
        let mut server = MeteredIo::new(server, Some(Arc::clone(&slot)));
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut buf = [0; 16];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(slot.counters().snapshot().connections_open, [1, 0, 0]);
        let websocket = WebSocketOpen::new(&slot, false);
        assert_eq!(slot.counters().snapshot().connections_open, [0, 0, 1]);
        drop(websocket);
        drop(server);
        assert_eq!(slot.counters().snapshot().connections_open, [0, 0, 0]);
    }

    #[tokio::test]
    async fn the_preface_is_told_from_a_method_across_short_reads() {
        for (first, rest, open) in [
            (&b"P"[..], &b"UT / HTTP/1.1\r\n"[..], [1, 0, 0]),
            (b"PR", b"I * HTTP/2.0\r\n", [0, 1, 0]),
        ] {
            let slot = Arc::new(Slot::create().unwrap());
            let (mut client, server) = tokio::io::duplex(1024);
            let mut server = MeteredIo::new(server, Some(Arc::clone(&slot)));
            let mut buf = vec![0; first.len()];
            client.write_all(first).await.unwrap();
            server.read_exact(&mut buf).await.unwrap();
            let mut buf = vec![0; rest.len()];
            client.write_all(rest).await.unwrap();
            server.read_exact(&mut buf).await.unwrap();
            assert_eq!(
                slot.counters().snapshot().connections_open,
                open,
                "{first:?}"
            );
        }
    }

    #[test]
    fn a_request_counts_in_flight_until_dropped() {
        let slot = Arc::new(Slot::create().unwrap());
        let mut meter = RequestMeter::start(&slot, &Method::POST, Instant::now());
        assert_eq!(slot.counters().snapshot().requests_in_flight, 1);
        meter.answered(StatusCode::CREATED);
        drop(meter);
        let snapshot = slot.counters().snapshot();
        assert_eq!(snapshot.requests_in_flight, 0);
        assert_eq!(snapshot.requests[2][1], 1);
        assert_eq!(snapshot.duration_buckets.iter().sum::<u64>(), 1);
    }
}
