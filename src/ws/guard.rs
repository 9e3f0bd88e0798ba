//! Checks on the client's frame headers that the engine leaves out.
//!
//! - RFC 7692 §6: the "per-message compressed" bit (RSV1) is set only on the
//!   first frame of a data message. The engine refuses RSV2 and RSV3, and
//!   RSV1 without permessage-deflate on data frames, but took RSV1 on a
//!   control frame, and on a continuation frame inflated that fragment on
//!   its own and spliced it into the message (half plain, half inflated).
//! - RFC 6455 §5.5: a control frame carries at most 125 bytes. The engine
//!   refuses a longer ping only; a longer close it would echo back as is.
//!
//! [`GuardedIo`] reads the headers as the bytes pass to the engine and, in
//! the first byte of a frame that breaks either rule, sets RSV2 before the
//! engine sees it: the engine then fails the connection with 1002 as for
//! any reserved bit, its one way to send a close frame for a protocol error,
//! and [`Breaches`] keeps what was wrong, for the log.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const RSV1: u8 = 0x40;
const RSV2: u8 = 0x20;
const CONTROL: u8 = 0x08;
const OPCODE: u8 = 0x0f;
const MASKED: u8 = 0x80;
const LENGTH: u8 = 0x7f;
const MAX_CONTROL_PAYLOAD: u8 = 125;

/// A rule of the frame header the engine does not check, broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Breach {
    CompressedControl = 1,
    CompressedContinuation = 2,
    LongControl = 3,
}

impl Breach {
    /// The words of the log and of the app's `websocket.disconnect`.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Breach::CompressedControl => "compressed bit (RSV1) set on a control frame",
            Breach::CompressedContinuation => "compressed bit (RSV1) set on a continuation frame",
            Breach::LongControl => "control frame over 125 bytes",
        }
    }
}

/// The first breach a connection's [`GuardedIo`] found, shared with the
/// connection's loop.
#[derive(Clone, Default)]
pub(crate) struct Breaches(Arc<AtomicU8>);

impl Breaches {
    pub(crate) fn first(&self) -> Option<Breach> {
        match self.0.load(Ordering::Relaxed) {
            1 => Some(Breach::CompressedControl),
            2 => Some(Breach::CompressedContinuation),
            3 => Some(Breach::LongControl),
            _ => None,
        }
    }

    fn record(&self, breach: Breach) {
        let _ = self
            .0
            .compare_exchange(0, breach as u8, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// Where the reading stands in the client's stream of frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// `have` bytes of a header read: its first byte, and from its second
    /// on how many bytes of extended length follow (0, 2 or 8), whether a
    /// mask does, and the payload length read so far.
    Header {
        have: u8,
        first: u8,
        extended: u8,
        masked: bool,
        length: u64,
    },
    Payload {
        left: u64,
    },
}

const NEXT_HEADER: Scan = Scan::Header {
    have: 0,
    first: 0,
    extended: 0,
    masked: false,
    length: 0,
};

/// Follows frame headers through the bytes read.
#[derive(Debug)]
struct FrameScan {
    scan: Scan,
}

impl FrameScan {
    fn new() -> FrameScan {
        FrameScan { scan: NEXT_HEADER }
    }

    /// Reads `bytes`, the next bytes from the client, marking in place the
    /// frames that break a rule. True when the last byte is the first of a
    /// control frame's header, left unread: it must be held back (and given
    /// again with the next read) until the frame's length is known, since
    /// it is the byte that is marked. `may_hold` false: it is read anyway.
    fn read(&mut self, bytes: &mut [u8], breaches: &Breaches, may_hold: bool) -> bool {
        let mut at = 0;
        while at < bytes.len() {
            match &mut self.scan {
                Scan::Payload { left } => {
                    let skip = (*left).min((bytes.len() - at) as u64);
                    *left -= skip;
                    at += skip as usize;
                    if *left == 0 {
                        self.scan = NEXT_HEADER;
                    }
                }
                Scan::Header {
                    have,
                    first,
                    extended,
                    masked,
                    length,
                } => {
                    let byte = bytes[at];
                    match *have {
                        0 => {
                            let opcode = byte & OPCODE;
                            let control = opcode & CONTROL != 0;
                            if control && at + 1 == bytes.len() && may_hold {
                                return true;
                            }
                            if byte & RSV1 != 0 && (control || opcode == 0) {
                                breaches.record(if control {
                                    Breach::CompressedControl
                                } else {
                                    Breach::CompressedContinuation
                                });
                                bytes[at] |= RSV2;
                            }
                            *first = byte;
                        }
                        1 => {
                            let code = byte & LENGTH;
                            (*extended, *length) = match code {
                                126 => (2, 0),
                                127 => (8, 0),
                                _ => (0, u64::from(code)),
                            };
                            *masked = byte & MASKED != 0;
                            // The first byte is in this read unless it could
                            // not be held back.
                            if *first & CONTROL != 0 && code > MAX_CONTROL_PAYLOAD && at > 0 {
                                breaches.record(Breach::LongControl);
                                bytes[at - 1] |= RSV2;
                            }
                        }
                        n if n < 2 + *extended => *length = (*length << 8) | u64::from(byte),
                        // The mask.
                        _ => {}
                    }
                    *have += 1;
                    at += 1;
                    if *have >= 2 && *have == 2 + *extended + if *masked { 4 } else { 0 } {
                        self.scan = match *length {
                            0 => NEXT_HEADER,
                            left => Scan::Payload { left },
                        };
                    }
                }
            }
        }
        false
    }
}

/// An I/O object whose reads pass through a [`FrameScan`].
pub(crate) struct GuardedIo<T> {
    inner: T,
    scan: FrameScan,
    /// A control frame's first byte, held back from the last read.
    held: Option<u8>,
    breaches: Breaches,
}

impl<T> GuardedIo<T> {
    pub(crate) fn new(inner: T, breaches: Breaches) -> GuardedIo<T> {
        GuardedIo {
            inner,
            scan: FrameScan::new(),
            held: None,
            breaches,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let start = buf.filled().len();
            if let Some(byte) = this.held {
                if buf.remaining() == 0 {
                    return Poll::Ready(Ok(()));
                }
                buf.put_slice(&[byte]);
            }
            // Room for one more byte at least: else the inner read would
            // look like the end of the stream.
            let room = buf.remaining() > 0;
            let before = buf.filled().len();
            if room {
                match Pin::new(&mut this.inner).poll_read(cx, buf) {
                    Poll::Ready(Ok(())) => {}
                    other => {
                        // Taken back: the held byte goes with the next read.
                        buf.set_filled(start);
                        return other;
                    }
                }
            }
            let ended = room && buf.filled().len() == before;
            this.held = None;
            if ended {
                // The client ended the stream inside a header: the engine
                // sees the frame cut short, held byte and all.
                return Poll::Ready(Ok(()));
            }
            let filled = buf.filled().len();
            let hold = this
                .scan
                .read(&mut buf.filled_mut()[start..], &this.breaches, room);
            if !hold {
                return Poll::Ready(Ok(()));
            }
            this.held = Some(buf.filled()[filled - 1]);
            buf.set_filled(filled - 1);
            if filled - 1 > start {
                return Poll::Ready(Ok(()));
            }
            // That byte was all the read had: read on.
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
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
    use tokio::io::AsyncReadExt;

    /// A masked client frame: `first` byte, `payload`.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        match payload.len() {
            len @ 0..=125 => out.push(MASKED | len as u8),
            len @ 126..=0xffff => {
                out.push(MASKED | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.push(MASKED | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&[1, 2, 3, 4]);
        out.extend_from_slice(payload);
        out
    }

    const TEXT: u8 = 0x81;
    const TEXT_FIRST: u8 = 0x01;
    const CONTINUATION_LAST: u8 = 0x80;
    const PING: u8 = 0x89;
    const CLOSE: u8 = 0x88;

    /// The stream after the scan, read in pieces of `piece` bytes (the way
    /// [`GuardedIo`] reads, holding a byte back where asked), and the
    /// breach found.
    fn scanned(stream: &[u8], piece: usize) -> (Vec<u8>, Option<Breach>) {
        let breaches = Breaches::default();
        let mut scan = FrameScan::new();
        let mut out = Vec::new();
        let mut held: Option<u8> = None;
        for chunk in stream.chunks(piece) {
            let mut bytes: Vec<u8> = held
                .take()
                .into_iter()
                .chain(chunk.iter().copied())
                .collect();
            if scan.read(&mut bytes, &breaches, true) {
                held = bytes.pop();
            }
            out.extend_from_slice(&bytes);
        }
        out.extend(held);
        (out, breaches.first())
    }

    #[test]
    fn frames_within_the_rules_pass_unchanged_however_they_are_cut() {
        let mut stream = frame(TEXT | RSV1, b"compressed");
        stream.extend(frame(TEXT_FIRST | RSV1, &[7; 300]));
        stream.extend(frame(PING, &[1; 125]));
        stream.extend(frame(CONTINUATION_LAST, &[9; 70_000]));
        stream.extend(frame(CLOSE, &[3, 232]));
        for piece in [1, 2, 3, 7, 64, 1000, stream.len()] {
            assert_eq!(
                scanned(&stream, piece),
                (stream.clone(), None),
                "piece {piece}"
            );
        }
    }

    #[test]
    fn rsv1_on_a_continuation_or_control_frame_is_marked_as_a_reserved_bit() {
        for (bad, breach) in [
            (
                frame(CONTINUATION_LAST | RSV1, b"xyz"),
                Breach::CompressedContinuation,
            ),
            (frame(PING | RSV1, b"p"), Breach::CompressedControl),
            (frame(CLOSE | RSV1, &[3, 232]), Breach::CompressedControl),
        ] {
            let mut stream = frame(TEXT_FIRST, b"ab");
            let at = stream.len();
            stream.extend(&bad);
            for piece in [1, 2, 5, stream.len()] {
                let (out, found) = scanned(&stream, piece);
                assert_eq!(found, Some(breach), "piece {piece}");
                assert_eq!(out[at], bad[0] | RSV2, "piece {piece}");
                assert_eq!(out[..at], stream[..at]);
                assert_eq!(out[at + 1..], stream[at + 1..]);
            }
        }
    }

    #[test]
    fn a_control_frame_over_125_bytes_is_marked_even_when_its_first_byte_ends_a_read() {
        for first in [CLOSE, 0x8a] {
            let mut stream = frame(TEXT, b"hi");
            let at = stream.len();
            stream.extend(frame(first, &[0; 126]));
            // Cut right after the control frame's first byte, and elsewhere.
            for piece in [1, at + 1, 3, stream.len()] {
                let (out, found) = scanned(&stream, piece);
                assert_eq!(found, Some(Breach::LongControl), "piece {piece}");
                assert_eq!(out[at], first | RSV2, "piece {piece}");
            }
        }
    }

    #[tokio::test]
    async fn the_io_holds_a_control_frames_first_byte_until_its_length_came() {
        let (mut client, server) = tokio::io::duplex(1024);
        let breaches = Breaches::default();
        let mut io = GuardedIo::new(server, breaches.clone());
        let long_close = frame(CLOSE, &[0; 200]);
        tokio::io::AsyncWriteExt::write_all(&mut client, &long_close[..1])
            .await
            .unwrap();
        let mut buf = [0; 512];
        // The one byte is held: nothing to read yet.
        let read = tokio::time::timeout(std::time::Duration::from_millis(50), io.read(&mut buf));
        assert!(read.await.is_err());
        tokio::io::AsyncWriteExt::write_all(&mut client, &long_close[1..])
            .await
            .unwrap();
        let mut got = Vec::new();
        while got.len() < long_close.len() {
            let n = io.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got[0], CLOSE | RSV2);
        assert_eq!(got[1..], long_close[1..]);
        assert_eq!(breaches.first(), Some(Breach::LongControl));
        // The client's end of the stream inside a header gives the held byte.
        tokio::io::AsyncWriteExt::write_all(&mut client, &[PING])
            .await
            .unwrap();
        drop(client);
        assert_eq!(io.read(&mut buf).await.unwrap(), 1);
        assert_eq!(buf[0], PING);
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
    }
}
