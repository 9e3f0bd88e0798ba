//! A connection's socket that hyper writes with `send(2)` or `sendmsg(2)`.
//!
//! hyper writes a response as a head and body buffers in one vectored write.
//! tokio's streams make that `writev(2)`, which goes through the file layer
//! on its way to the socket: the file lookup and its checks, the read/write
//! permission hooks, an fsnotify event. None of it applies to a socket; in
//! a profile of the WSGI hello world it was about 3% of the server core's
//! samples. `sendmsg` hands the same buffers to the socket directly, and a
//! small response is copied into one buffer and sent with `send`, which is
//! cheaper still. Reads are left alone: tokio already reads a socket with
//! `recv`.

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// A tokio stream socket whose readiness can be polled and used directly.
pub(crate) trait StreamSocket: AsyncRead + AsyncWrite + AsFd + Unpin {
    fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Runs `send` if the socket was last seen writable (else WouldBlock);
    /// a WouldBlock from `send` clears the readiness, as tokio's own writes do.
    fn try_send<R>(&self, send: impl FnOnce() -> io::Result<R>) -> io::Result<R>;
}

impl StreamSocket for tokio::net::TcpStream {
    fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_write_ready(cx)
    }

    fn try_send<R>(&self, send: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        self.try_io(Interest::WRITABLE, send)
    }
}

impl StreamSocket for tokio::net::UnixStream {
    fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_write_ready(cx)
    }

    fn try_send<R>(&self, send: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        self.try_io(Interest::WRITABLE, send)
    }
}

/// The most buffers one `sendmsg` takes (Linux's IOV_MAX); past it the call
/// fails with EMSGSIZE, where `writev` callers cap the count and write part.
const MAX_BUFS: usize = 1024;

/// Vectored writes of at most this many bytes in all are copied together
/// and go out with one `send(2)`. `sendmsg` copies in its message header and
/// the iovec array and walks them, a fixed cost per call: in the profile of
/// the WSGI hello world about 2% of the server core more than a `send`,
/// against some 50 ns for copying 16 KiB.
const COALESCE: usize = 16 * 1024;

/// `socket`, with vectored writes made by `send` or `sendmsg`.
pub(crate) struct Sending<S>(S);

impl<S> Sending<S> {
    pub(crate) fn new(socket: S) -> Sending<S> {
        Sending(socket)
    }
}

impl<S: StreamSocket> AsyncRead for Sending<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: StreamSocket> AsyncWrite for Sending<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // tokio's single-buffer write is already a send(2).
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let socket = &self.get_mut().0;
        let bufs = &bufs[..bufs.len().min(MAX_BUFS)];
        let total = bufs
            .iter()
            .try_fold(0, |sum: usize, buf| sum.checked_add(buf.len()));
        if bufs.len() > 1 && total.is_some_and(|total| total <= COALESCE) {
            return poll_send_joined(socket, cx, bufs);
        }
        // MSG_NOSIGNAL: a peer gone away is an EPIPE error, never a signal.
        poll_send(socket, cx, || {
            SockRef::from(socket).send_vectored_with_flags(bufs, libc::MSG_NOSIGNAL)
        })
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Sends with `send` once the socket is writable, as tokio's own writes do.
fn poll_send<S: StreamSocket>(
    socket: &S,
    cx: &mut Context<'_>,
    send: impl Fn() -> io::Result<usize>,
) -> Poll<io::Result<usize>> {
    loop {
        ready!(socket.poll_send_ready(cx))?;
        match socket.try_send(&send) {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            sent => return Poll::Ready(sent),
        }
    }
}

/// `bufs` (at most [`COALESCE`] bytes in all) copied together and sent with
/// one `send`. Out of line: its frame holds the room for them, whose stack
/// probes an inlining caller would pay on every call.
#[inline(never)]
fn poll_send_joined<S: StreamSocket>(
    socket: &S,
    cx: &mut Context<'_>,
    bufs: &[IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    ready!(socket.poll_send_ready(cx))?;
    let mut room = [MaybeUninit::<u8>::uninit(); COALESCE];
    let Some(joined) = join(bufs, &mut room) else {
        // Not reached: the caller checked that they fit.
        return poll_send(socket, cx, || {
            SockRef::from(socket).send_vectored_with_flags(bufs, libc::MSG_NOSIGNAL)
        });
    };
    poll_send(socket, cx, || {
        SockRef::from(socket).send_with_flags(joined, libc::MSG_NOSIGNAL)
    })
}

/// `bufs` copied one after the other into `room`, if they fit.
fn join<'a>(bufs: &[IoSlice<'_>], room: &'a mut [MaybeUninit<u8>]) -> Option<&'a [u8]> {
    let mut len = 0;
    for buf in bufs {
        let end = len + buf.len();
        let to = room.get_mut(len..end)?;
        // SAFETY: `to` is `buf.len()` bytes of `room`, which `buf` (borrowed
        // from elsewhere) does not overlap.
        unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), to.as_mut_ptr().cast(), buf.len()) };
        len = end;
    }
    // SAFETY: the first `len` bytes were written just above.
    Some(unsafe { std::slice::from_raw_parts(room.as_ptr().cast::<u8>(), len) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_vectored_write_arrives_whole_and_in_order() {
        let (ours, mut theirs) = tokio::net::UnixStream::pair().unwrap();
        let mut ours = Sending::new(ours);
        let bufs = [
            IoSlice::new(b"HTTP/1.1 200 OK\r\n\r\n"),
            IoSlice::new(b"hello"),
        ];
        let sent = ours.write_vectored(&bufs).await.unwrap();
        assert_eq!(sent, 24);
        let mut got = [0; 24];
        theirs.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"HTTP/1.1 200 OK\r\n\r\nhello");
    }

    #[test]
    fn buffers_are_joined_when_they_fit() {
        let mut room = [MaybeUninit::uninit(); 8];
        let head = IoSlice::new(b"head");
        let body = IoSlice::new(b"body");
        assert_eq!(join(&[head, body], &mut room), Some(&b"headbody"[..]));
        assert_eq!(
            join(&[head, IoSlice::new(b""), body], &mut room),
            Some(&b"headbody"[..])
        );
        assert_eq!(join(&[head, body, IoSlice::new(b"!")], &mut room), None);
    }

    #[tokio::test]
    async fn a_full_socket_waits_for_room_then_sends_the_rest() {
        let (ours, mut theirs) = tokio::net::UnixStream::pair().unwrap();
        let mut ours = Sending::new(ours);
        let chunk = vec![7u8; 64 * 1024];
        let total = 4 * 1024 * 1024;
        let writer = async {
            let mut left = total;
            // Large writes (sendmsg) and small ones (joined, send) in turn.
            let mut sizes = [chunk.len(), 3000].into_iter().cycle();
            while left > 0 {
                let part = &chunk[..left.min(sizes.next().unwrap())];
                let (head, tail) = part.split_at(part.len().min(10));
                let sent = ours
                    .write_vectored(&[IoSlice::new(head), IoSlice::new(tail)])
                    .await
                    .unwrap();
                assert!(sent > 0);
                left -= sent;
            }
            ours.shutdown().await.unwrap();
        };
        let reader = async {
            let mut got = Vec::new();
            theirs.read_to_end(&mut got).await.unwrap();
            got
        };
        let ((), got) = tokio::join!(writer, reader);
        assert_eq!(got.len(), total);
        assert!(got.iter().all(|&b| b == 7));
    }

    #[tokio::test]
    async fn more_buffers_than_one_call_takes_are_sent_in_part_not_refused() {
        let (ours, mut theirs) = tokio::net::UnixStream::pair().unwrap();
        let mut ours = Sending::new(ours);
        let bufs = vec![IoSlice::new(b"x"); MAX_BUFS + 500];
        let sent = ours.write_vectored(&bufs).await.unwrap();
        assert_eq!(sent, MAX_BUFS);
        let mut got = vec![0; MAX_BUFS];
        theirs.read_exact(&mut got).await.unwrap();
        assert!(got.iter().all(|&b| b == b'x'));
    }

    #[tokio::test]
    async fn writing_to_a_closed_peer_is_an_error() {
        let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        drop(theirs);
        let mut ours = Sending::new(ours);
        let err = ours
            .write_vectored(&[IoSlice::new(b"a"), IoSlice::new(b"b")])
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
