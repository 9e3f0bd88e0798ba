//! Messages from data frames (RFC 6455 §5.4): a text or binary frame
//! starts a message, continuation frames extend it, the one with FIN ends it.
//!
//! The engine hands over frames already unmasked and decompressed
//! (permessage-deflate works frame by frame, each frame's output bounded by
//! the size limit); this joins them, enforces `--ws-max-size` on the whole
//! message and checks that text is UTF-8.

use bytes::{Bytes, BytesMut};
use yawc::{Frame, OpCode};

use super::code;
use super::session::PeerMessage;

/// Why a frame cannot be part of a message: the connection fails with the
/// close code of [`AssemblyError::close_code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AssemblyError {
    /// A continuation frame with no message started, or a new message
    /// before the last one ended (§5.4).
    OutOfOrder,
    /// The message is larger than `--ws-max-size`.
    TooBig,
    /// A text message that is not UTF-8 (§8.1).
    InvalidUtf8,
}

impl AssemblyError {
    /// The close code and reason the connection ends with.
    pub(crate) fn close_code(self) -> (u16, &'static str) {
        match self {
            AssemblyError::OutOfOrder => (code::PROTOCOL_ERROR, "unexpected continuation"),
            AssemblyError::TooBig => (code::TOO_BIG, "message too big"),
            AssemblyError::InvalidUtf8 => (code::INVALID_DATA, "invalid UTF-8 in text message"),
        }
    }
}

/// A binary message in one frame shorter than this is copied out of the
/// engine's read buffer rather than sliced from it.
const COPY_BELOW: usize = 64 * 1024;

/// The message being received, frame by frame.
pub(crate) struct Assembler {
    max_size: usize,
    /// The opcode of the message under way, `None` between messages.
    started: Option<OpCode>,
    parts: BytesMut,
}

impl Assembler {
    pub(crate) fn new(max_size: usize) -> Assembler {
        Assembler {
            max_size,
            started: None,
            parts: BytesMut::new(),
        }
    }

    /// Takes a data frame (text, binary or continuation); returns the
    /// message it completes, if it does.
    pub(crate) fn push(&mut self, frame: Frame) -> Result<Option<PeerMessage>, AssemblyError> {
        let (opcode, fin, payload) = frame.into_parts();
        match (opcode, self.started) {
            (OpCode::Text | OpCode::Binary, Some(_)) | (OpCode::Continuation, None) => {
                Err(AssemblyError::OutOfOrder)
            }
            (OpCode::Text | OpCode::Binary, None) => {
                if payload.len() > self.max_size {
                    return Err(AssemblyError::TooBig);
                }
                if fin {
                    // A message in one frame. Small binary is copied out:
                    // as a slice it would keep the engine's whole read
                    // buffer alive while it waits in the queue, which counts
                    // only its own bytes (text is copied into its String
                    // anyway). A large one is most of its buffer.
                    let payload = if opcode == OpCode::Binary && payload.len() < COPY_BELOW {
                        Bytes::copy_from_slice(&payload)
                    } else {
                        payload
                    };
                    return message(opcode, payload).map(Some);
                }
                self.started = Some(opcode);
                self.parts.extend_from_slice(&payload);
                Ok(None)
            }
            (OpCode::Continuation, Some(started)) => {
                if self.parts.len() + payload.len() > self.max_size {
                    return Err(AssemblyError::TooBig);
                }
                self.parts.extend_from_slice(&payload);
                if !fin {
                    return Ok(None);
                }
                self.started = None;
                let whole = std::mem::take(&mut self.parts).freeze();
                message(started, whole).map(Some)
            }
            // Control frames never reach here.
            _ => Ok(None),
        }
    }
}

fn message(opcode: OpCode, payload: Bytes) -> Result<PeerMessage, AssemblyError> {
    if opcode == OpCode::Binary {
        return Ok(PeerMessage::Binary(payload));
    }
    String::from_utf8(Vec::from(payload))
        .map(PeerMessage::Text)
        .map_err(|_| AssemblyError::InvalidUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(message: Option<PeerMessage>) -> String {
        match message {
            Some(PeerMessage::Text(text)) => text,
            _ => panic!("expected a text message"),
        }
    }

    #[test]
    fn a_single_frame_is_a_message() {
        let mut assembler = Assembler::new(16);
        assert_eq!(text(assembler.push(Frame::text("hello")).unwrap()), "hello");
        assert!(matches!(
            assembler.push(Frame::binary(&b"\xff"[..])),
            Ok(Some(PeerMessage::Binary(data))) if &data[..] == b"\xff"
        ));
    }

    /// A small message is not a slice of the buffer its frame was read into
    /// (it would keep all of it alive while queued); a large one is.
    #[test]
    fn a_small_binary_message_is_copied_out_of_the_read_buffer() {
        let mut assembler = Assembler::new(1 << 20);
        let buffer = Bytes::from(vec![7u8; 2 * COPY_BELOW]);
        let small = buffer.slice(..16);
        let Ok(Some(PeerMessage::Binary(data))) = assembler.push(Frame::binary(small.clone()))
        else {
            panic!("expected a binary message");
        };
        assert_eq!(data, small);
        assert_ne!(data.as_ptr(), small.as_ptr());
        let large = buffer.slice(..COPY_BELOW);
        let Ok(Some(PeerMessage::Binary(data))) = assembler.push(Frame::binary(large.clone()))
        else {
            panic!("expected a binary message");
        };
        assert_eq!(data.as_ptr(), large.as_ptr());
    }

    #[test]
    fn fragments_are_joined_and_utf8_is_checked_on_the_whole() {
        let mut assembler = Assembler::new(16);
        // "é" is C3 A9, split between the two frames.
        assert!(assembler
            .push(Frame::text(&b"caf\xc3"[..]).with_fin(false))
            .unwrap()
            .is_none());
        assert_eq!(
            text(assembler.push(Frame::continuation(&b"\xa9"[..])).unwrap()),
            "café"
        );
        assembler
            .push(Frame::text(&b"ok \xc3"[..]).with_fin(false))
            .unwrap();
        assert_eq!(
            assembler.push(Frame::continuation(&b"("[..])),
            Err(AssemblyError::InvalidUtf8)
        );
    }

    #[test]
    fn the_limit_counts_the_whole_message() {
        let mut assembler = Assembler::new(4);
        assert!(assembler.push(Frame::binary(&b"1234"[..])).is_ok());
        assert_eq!(
            assembler.push(Frame::binary(&b"12345"[..])),
            Err(AssemblyError::TooBig)
        );
        let mut assembler = Assembler::new(4);
        assembler
            .push(Frame::binary(&b"123"[..]).with_fin(false))
            .unwrap();
        assert_eq!(
            assembler.push(Frame::continuation(&b"45"[..])),
            Err(AssemblyError::TooBig)
        );
    }

    #[test]
    fn frames_out_of_order_are_a_protocol_error() {
        let mut assembler = Assembler::new(16);
        assert_eq!(
            assembler.push(Frame::continuation(&b"x"[..])),
            Err(AssemblyError::OutOfOrder)
        );
        assembler
            .push(Frame::text(&b"a"[..]).with_fin(false))
            .unwrap();
        assert_eq!(
            assembler.push(Frame::text(&b"b"[..])),
            Err(AssemblyError::OutOfOrder)
        );
        assert_eq!(
            AssemblyError::OutOfOrder.close_code().0,
            code::PROTOCOL_ERROR
        );
    }
}
