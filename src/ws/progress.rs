//! Write progress on a WebSocket connection, so a peer that stops reading
//! cannot hold it (and the app's pending `send()`) forever.
//!
//! Once the peer's receive window and our socket buffer are full, every
//! write waits, and so would the connection loop, its pings included. The
//! socket is wrapped in [`ProgressIo`], which notes when bytes last went
//! out; [`WriteProgress::bounded`] gives up on a write when none did for the
//! stall limit, however long the write as a whole takes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// A write made no progress for the whole stall limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stalled;

/// When bytes last left through a [`ProgressIo`].
pub(crate) struct WriteProgress {
    origin: Instant,
    /// Nanoseconds after `origin` of the last write that took bytes.
    last: AtomicU64,
    /// Set once a write stalled: what it wrote may be held, unsent.
    stalled: AtomicBool,
}

impl WriteProgress {
    pub(crate) fn new() -> Arc<WriteProgress> {
        Arc::new(WriteProgress {
            origin: Instant::now(),
            last: AtomicU64::new(0),
            stalled: AtomicBool::new(false),
        })
    }

    /// Whether a write was given up on for the peer not reading.
    pub(crate) fn stalled(&self) -> bool {
        self.stalled.load(Ordering::Relaxed)
    }

    fn touch(&self) {
        let nanos = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(nanos, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.origin + Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }

    /// Runs `write` to completion unless no byte goes out for `limit`.
    pub(crate) async fn bounded<F: Future>(
        &self,
        limit: Duration,
        write: F,
    ) -> Result<F::Output, Stalled> {
        // Time spent idle before this write is not a stall.
        self.touch();
        tokio::pin!(write);
        loop {
            let deadline = self.last() + limit;
            // The write first: most complete at once, and then the deadline
            // is never polled, so no timer is registered for them.
            tokio::select! {
                biased;
                output = &mut write => return Ok(output),
                _ = tokio::time::sleep_until(deadline) => {
                    if self.last() + limit <= Instant::now() {
                        self.stalled.store(true, Ordering::Relaxed);
                        return Err(Stalled);
                    }
                }
            }
        }
    }
}

/// An I/O object that records write progress in a [`WriteProgress`].
pub(crate) struct ProgressIo<T> {
    inner: T,
    progress: Arc<WriteProgress>,
}

impl<T> ProgressIo<T> {
    pub(crate) fn new(inner: T, progress: Arc<WriteProgress>) -> ProgressIo<T> {
        ProgressIo { inner, progress }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ProgressIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ProgressIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            self.progress.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const LIMIT: Duration = Duration::from_secs(5);

    #[tokio::test(start_paused = true)]
    async fn a_write_nobody_reads_stalls_after_the_limit() {
        let progress = WriteProgress::new();
        // A pipe with a 16-byte buffer whose other end is never read.
        let (near, _far) = tokio::io::duplex(16);
        let mut io = ProgressIo::new(near, Arc::clone(&progress));
        let started = Instant::now();
        let written = progress.bounded(LIMIT, io.write_all(&[0; 64])).await;
        assert_eq!(written.err(), Some(Stalled));
        assert_eq!(started.elapsed(), LIMIT);
        assert!(progress.stalled());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_reading_never_stalls() {
        let progress = WriteProgress::new();
        let (near, mut far) = tokio::io::duplex(16);
        let mut io = ProgressIo::new(near, Arc::clone(&progress));
        let reader = tokio::spawn(async move {
            let mut buf = [0; 16];
            let mut total = 0;
            while total < 256 {
                tokio::time::sleep(LIMIT / 2).await;
                total += tokio::io::AsyncReadExt::read(&mut far, &mut buf)
                    .await
                    .unwrap();
            }
        });
        let written = progress.bounded(LIMIT, io.write_all(&[0; 256])).await;
        assert!(matches!(written, Ok(Ok(()))));
        assert!(!progress.stalled());
        reader.await.unwrap();
    }
}
