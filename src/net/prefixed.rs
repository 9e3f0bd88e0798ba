//! A stream with bytes already read from it put back in front, so that what
//! arrived behind a PROXY protocol header in the same packet reaches hyper.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `inner`, read as `prefix` followed by whatever `inner` yields next.
///
/// Once the prefix is consumed, a read is the inner stream's read: no copy
/// and no buffering of its own. Writes always go straight through.
pub(crate) struct Prefixed<I> {
    prefix: Bytes,
    inner: I,
}

impl<I> Prefixed<I> {
    pub(crate) fn new(prefix: Bytes, inner: I) -> Prefixed<I> {
        Prefixed { prefix, inner }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let taken = this.prefix.len().min(buf.remaining());
        buf.put_slice(&this.prefix[..taken]);
        this.prefix.advance(taken);
        if this.prefix.is_empty() {
            // Let go of the buffer the header was read into.
            this.prefix = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    /// hyper writes a response's head and body in one `writev` when the
    /// stream says it can; the wrapper must not hide that.
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn the_prefix_comes_first_then_the_stream() {
        let (client, mut server) = tokio::io::duplex(64);
        let mut stream = Prefixed::new(Bytes::from_static(b"GET / HT"), client);
        server.write_all(b"TP/1.1\r\n").await.unwrap();
        drop(server);
        let mut read = Vec::new();
        stream.read_to_end(&mut read).await.unwrap();
        assert_eq!(read, b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn a_small_read_buffer_takes_the_prefix_in_pieces() {
        let (client, _server) = tokio::io::duplex(64);
        let mut stream = Prefixed::new(Bytes::from_static(b"abcdef"), client);
        let mut piece = [0u8; 4];
        assert_eq!(stream.read(&mut piece).await.unwrap(), 4);
        assert_eq!(&piece, b"abcd");
        assert_eq!(stream.read(&mut piece).await.unwrap(), 2);
        assert_eq!(&piece[..2], b"ef");
    }

    #[tokio::test]
    async fn writes_go_to_the_stream() {
        let (client, mut server) = tokio::io::duplex(64);
        let mut stream = Prefixed::new(Bytes::from_static(b"unread"), client);
        stream.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        stream.shutdown().await.unwrap();
        let mut written = Vec::new();
        server.read_to_end(&mut written).await.unwrap();
        assert_eq!(written, b"HTTP/1.1 200 OK\r\n");
    }
}
