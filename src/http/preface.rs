//! The HTTP/2 connection preface on connections known to speak HTTP/2
//! (ALPN `h2`, or `--http 2`): RFC 9113 §3.4 makes a wrong one a connection
//! error, answered with GOAWAY(PROTOCOL_ERROR). hyper's HTTP/2 server closes
//! such a connection without a word, so the preface is checked here first.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What every HTTP/2 client sends first (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// GOAWAY, last stream 0, PROTOCOL_ERROR (RFC 9113 §6.8).
const GOAWAY_PROTOCOL_ERROR: [u8; 17] = [
    0, 0, 8, // length
    7, // type GOAWAY
    0, // flags
    0, 0, 0, 0, // stream 0
    0, 0, 0, 0, // last stream id
    0, 0, 0, 1, // PROTOCOL_ERROR
];

/// Why a connection is not served.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BadPreface {
    /// Bytes that are not the preface: GOAWAY sent.
    Invalid,
    /// The peer closed, or the socket failed, before the preface was whole.
    Closed,
}

/// Reads until the preface is complete (returning every byte read, for
/// hyper) or has gone wrong (after answering GOAWAY).
pub(crate) async fn check<I>(io: &mut I) -> Result<Bytes, BadPreface>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut read = BytesMut::with_capacity(1024);
    loop {
        let seen = read.len().min(PREFACE.len());
        if read[..seen] != PREFACE[..seen] {
            let _ = io.write_all(&GOAWAY_PROTOCOL_ERROR).await;
            let _ = io.shutdown().await;
            return Err(BadPreface::Invalid);
        }
        if seen == PREFACE.len() {
            return Ok(read.freeze());
        }
        match io.read_buf(&mut read).await {
            Ok(0) | Err(_) => return Err(BadPreface::Closed),
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_preface_in_pieces_is_passed_on_whole() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let checking = tokio::spawn(async move { check(&mut server).await });
        client.write_all(&PREFACE[..5]).await.unwrap();
        tokio::task::yield_now().await;
        client.write_all(&PREFACE[5..]).await.unwrap();
        client.write_all(b"\x00\x00\x00\x04").await.unwrap();
        let read = checking.await.unwrap().unwrap();
        assert!(read.starts_with(PREFACE));
    }

    #[tokio::test]
    async fn anything_else_gets_goaway() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client
            .write_all(b"INVALID CONNECTION PREFACE")
            .await
            .unwrap();
        assert_eq!(check(&mut server).await, Err(BadPreface::Invalid));
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, GOAWAY_PROTOCOL_ERROR);
        let (client, mut server) = tokio::io::duplex(1024);
        drop(client);
        assert_eq!(check(&mut server).await, Err(BadPreface::Closed));
    }
}
