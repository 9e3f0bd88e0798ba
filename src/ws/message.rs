//! Messages from data frames (RFC 6455 §5.4): a text or binary frame
//! starts a message, continuation frames extend it, the one with FIN ends it.
//!
//! The engine hands over frames already unmasked and decompressed
//! (permessage-deflate works frame by frame, each frame's output bounded by
//! the size limit); this joins them, enforces `--ws-max-size` on the whole
//! message and checks that text is UTF-8.

use bytes::Bytes;
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
    /// The message is larger than `--ws-max-size`: `received` bytes of it
    /// had come when it went past.
    TooBig { received: usize },
    /// A text message that is not UTF-8 (§8.1).
    InvalidUtf8,
}

impl AssemblyError {
    /// The close code and reason the connection ends with.
    pub(crate) fn close_code(self) -> (u16, &'static str) {
        match self {
            AssemblyError::OutOfOrder => (code::PROTOCOL_ERROR, "unexpected continuation"),
            AssemblyError::TooBig { .. } => (code::TOO_BIG, "message too big"),
            AssemblyError::InvalidUtf8 => (code::INVALID_DATA, "invalid UTF-8 in text message"),
        }
    }
}

/// The message being received, frame by frame.
pub(crate) struct Assembler {
    max_size: usize,
    /// The opcode of the message under way, `None` between messages.
    started: Option<OpCode>,
    parts: Vec<u8>,
}

impl Assembler {
    pub(crate) fn new(max_size: usize) -> Assembler {
        Assembler {
            max_size,
            started: None,
            parts: Vec::new(),
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
                    return Err(AssemblyError::TooBig {
                        received: payload.len(),
                    });
                }
                if fin {
                    // Every message is copied into an allocation of its own
                    // size, as the queue counts only its bytes. One in one
                    // frame is a slice of the engine's buffer, which it
                    // would keep whole while queued: the read buffer, grown
                    // by a frame of many megabytes just before (even one
                    // that inflated to nothing), or the decompressor's
                    // output. Python copies it again into its own object,
                    // which the reactor cannot make (about 1.5 µs for
                    // 64 KiB, 22 µs for 1 MiB, some 2% of what an echoed
                    // message costs the server).
                    return message(opcode, payload.to_vec()).map(Some);
                }
                self.started = Some(opcode);
                self.parts.extend_from_slice(&payload);
                Ok(None)
            }
            (OpCode::Continuation, Some(started)) => {
                let received = self.parts.len() + payload.len();
                if received > self.max_size {
                    return Err(AssemblyError::TooBig { received });
                }
                self.parts.extend_from_slice(&payload);
                if !fin {
                    return Ok(None);
                }
                self.started = None;
                // Copied out too, as `parts` grew by doubling: it may be
                // twice the message's size.
                let whole = self.parts.to_vec();
                self.parts = Vec::new();
                message(started, whole).map(Some)
            }
            // Control frames never reach here.
            _ => Ok(None),
        }
    }
}

fn message(opcode: OpCode, payload: Vec<u8>) -> Result<PeerMessage, AssemblyError> {
    if opcode == OpCode::Binary {
        return Ok(PeerMessage::Binary(Bytes::from(payload)));
    }
    String::from_utf8(payload)
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

    /// A message in one frame is not a slice of the buffer its frame was
    /// read into, which it would keep alive while queued, however large.
    #[test]
    fn a_message_in_one_frame_is_copied_out_of_the_read_buffer() {
        let buffer = Bytes::from(vec![b'y'; 4 << 20]);
        let outside = |data: &[u8]| {
            let within = buffer.as_ptr_range();
            !within.contains(&data.as_ptr())
        };
        let mut assembler = Assembler::new(1 << 20);
        for size in [16, 64 * 1024, 1 << 20] {
            let payload = buffer.slice(..size);
            match assembler.push(Frame::binary(payload.clone())) {
                Ok(Some(PeerMessage::Binary(data))) => {
                    assert_eq!(data, payload);
                    assert!(outside(&data), "binary of {size} bytes");
                }
                _ => panic!("expected a binary message"),
            }
            let text = text(assembler.push(Frame::text(payload)).unwrap());
            assert_eq!(text.len(), size);
            assert!(outside(text.as_bytes()), "text of {size} bytes");
        }
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
            Err(AssemblyError::TooBig { received: 5 })
        );
        let mut assembler = Assembler::new(4);
        assembler
            .push(Frame::binary(&b"123"[..]).with_fin(false))
            .unwrap();
        assert_eq!(
            assembler.push(Frame::continuation(&b"45"[..])),
            Err(AssemblyError::TooBig { received: 5 })
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
