//! The HTTP/2 connection preface.
//!
//! On connections known to speak HTTP/2 (ALPN `h2`, or `--http 2`), RFC 9113
//! §3.4 makes a wrong one a connection error, answered with
//! GOAWAY(PROTOCOL_ERROR). hyper's HTTP/2 server closes such a connection
//! without a word, so the preface is checked here first ([`check`]).
//!
//! On cleartext connections that may speak either (`--http auto`), the first
//! bytes tell HTTP/2 by prior knowledge from HTTP/1.1 ([`sniff`]), so that
//! each connection holds only its own protocol's server: hyper-util's auto
//! connection, which holds room for both, cost about 5 KB more for every
//! idle keep-alive connection.

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

/// The protocol a cleartext connection speaks, by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    Http2,
}

/// How much [`sniff`] reads at once: a whole request head usually, which
/// hyper then takes in one copy, rather than a second read.
const SNIFF_READ: usize = 4096;

/// Reads until the bytes are the whole preface or stop being a prefix of it;
/// returns every byte read (for hyper) and the protocol they begin. An error
/// when the peer closes (or the socket fails) first.
pub(crate) async fn sniff<I>(io: &mut I) -> Result<(Bytes, Protocol), BadPreface>
where
    I: AsyncRead + Unpin,
{
    let mut read = BytesMut::with_capacity(SNIFF_READ);
    loop {
        match io.read_buf(&mut read).await {
            Ok(0) | Err(_) => return Err(BadPreface::Closed),
            Ok(_) => {}
        }
        let seen = read.len().min(PREFACE.len());
        if read[..seen] != PREFACE[..seen] {
            return Ok((read.freeze(), Protocol::Http1));
        }
        if seen == PREFACE.len() {
            return Ok((read.freeze(), Protocol::Http2));
        }
        if read.capacity() == read.len() {
            read.reserve(SNIFF_READ);
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
    async fn sniffing_tells_the_protocols_apart() {
        let (mut client, mut server) = tokio::io::duplex(8192);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (read, protocol) = sniff(&mut server).await.unwrap();
        assert_eq!(protocol, Protocol::Http1);
        assert_eq!(&read[..], b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");

        // The preface in pieces, and a piece that only starts like it.
        let (mut client, mut server) = tokio::io::duplex(8192);
        let sniffing = tokio::spawn(async move { sniff(&mut server).await });
        client.write_all(&PREFACE[..3]).await.unwrap();
        tokio::task::yield_now().await;
        client.write_all(&PREFACE[3..]).await.unwrap();
        let (read, protocol) = sniffing.await.unwrap().unwrap();
        assert_eq!((&read[..], protocol), (PREFACE, Protocol::Http2));

        let (mut client, mut server) = tokio::io::duplex(8192);
        client.write_all(b"PRI * HTTP/1.1\r\n").await.unwrap();
        let (_, protocol) = sniff(&mut server).await.unwrap();
        assert_eq!(protocol, Protocol::Http1);

        let (client, mut server) = tokio::io::duplex(8192);
        drop(client);
        assert_eq!(sniff(&mut server).await, Err(BadPreface::Closed));
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
