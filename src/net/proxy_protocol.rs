//! The PROXY protocol (HAProxy's, versions 1 and 2): a load balancer that
//! passes TCP through (HAProxy in TCP mode, AWS NLB, ...) opens every
//! connection with a header naming the client it accepted and the address
//! that client connected to, since the connection's own peer is the balancer.
//!
//! With `--proxy-protocol`, every connection must begin with one, as the
//! specification requires of a receiver ("must not try to guess whether the
//! header is present"). It is read here before hyper sees a byte; what
//! arrived behind it is handed on in front of the stream ([`Prefixed`]).
//!
//! Either version is accepted whichever `--proxy-protocol` names: the two
//! are told apart by their first bytes (section 2.2 of the specification),
//! as HAProxy's `accept-proxy` and nginx's `proxy_protocol` do, so a proxy
//! moved from `send-proxy` to `send-proxy-v2` keeps working.
//!
//! The parsing itself is the `ppp` crate's; this file decides when a header
//! is complete, bounds its size, and says what it means for a connection.
//!
//! [`Prefixed`]: super::Prefixed

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use ppp::PartialResult;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{ConnectionInfo, Scheme, ServerAddr};

/// `--proxy-protocol`: whether connections begin with a PROXY header, and
/// which version the proxy is set to send (either is accepted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ProxyProtocol {
    /// Connections carry no PROXY header.
    Off,
    /// HAProxy's text header (send-proxy); v2 is accepted too.
    V1,
    /// The binary header (send-proxy-v2, AWS NLB); v1 is accepted too.
    V2,
}

/// The first bytes of a version 1 header.
const V1_SIGNATURE: &[u8] = b"PROXY ";

/// The longest version 1 header, `\r\n` included (section 2.1: 107 bytes
/// hold the longest TCP6 line).
const V1_MAX_LENGTH: usize = 107;

/// A version 2 header's fixed part: signature, version and command, family
/// and protocol, and the length of what follows.
const V2_FIXED_LENGTH: usize = 16;

/// The largest version 2 header accepted. Addresses take at most 216 bytes
/// (two Unix paths) and the TLVs proxies add (TLS details, a unique ID, a
/// cloud endpoint ID) a few hundred more; the bound stops a client that
/// announces 64 KiB from making the connection hold that much before it has
/// said anything.
const V2_MAX_LENGTH: usize = V2_FIXED_LENGTH + 16 * 1024;

/// How many bytes one read asks for while the header is incomplete: a v1
/// line or a usual v2 header fits, and so, often, does the request the proxy
/// sent right behind it.
const READ_CHUNK: usize = 1024;

/// v2's TLV type `PP2_TYPE_SSL`, and the bit of its first byte saying the
/// client spoke TLS to the proxy (`PP2_CLIENT_SSL`, section 2.2.5).
const PP2_TYPE_SSL: u8 = 0x20;
const PP2_CLIENT_SSL: u8 = 0x01;

/// Whom a PROXY header says the connection is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// v2 `LOCAL` (the proxy's own health check): the proxy speaks for
    /// itself, and the socket's own addresses stay.
    Proxy,
    /// A client that connected over TCP from `client` to `server`.
    Tcp {
        client: SocketAddr,
        server: SocketAddr,
    },
    /// A client the header names no address for: one that reached the proxy
    /// through a Unix socket (v2 `AF_UNIX`), or over something the header
    /// has no words for (v1 `UNKNOWN`, which HAProxy sends where v2 says
    /// `AF_UNIX`; v2 `PROXY` with `AF_UNSPEC`). It is not the proxy, so it
    /// is not trusted as one.
    Unnamed,
}

/// What a complete PROXY header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProxyHeader {
    pub source: Source,
    /// v2's SSL TLV says the client connected to the proxy over TLS
    /// (HAProxy's `send-proxy-v2-ssl`): its requests are https ones.
    pub tls: bool,
}

impl ProxyHeader {
    /// The connection as the proxy's client made it: its address, the
    /// address it connected to, and its scheme.
    pub(crate) fn apply(&self, info: &mut ConnectionInfo) {
        match self.source {
            Source::Proxy => {}
            Source::Tcp { client, server } => {
                info.client = Some(client);
                info.server = ServerAddr::Tcp(server);
                info.relayed = true;
            }
            Source::Unnamed => {
                info.client = None;
                info.relayed = true;
            }
        }
        if self.tls {
            info.scheme = Scheme::Https;
        }
    }
}

/// Where the bytes read so far stand.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// A header may still follow from more bytes.
    Incomplete,
    /// A header of `length` bytes.
    Complete { header: ProxyHeader, length: usize },
    /// No more bytes can make this a header; why, for the log.
    Invalid(String),
}

/// Why a connection's PROXY header was not read.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The peer closed the connection first (a TCP health check does that).
    Closed,
    /// Bytes that are not a PROXY header: a client talking to rsasgi
    /// directly, or a proxy not set to send one.
    Invalid(String),
    Io(std::io::Error),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Closed => write!(f, "it closed before sending a complete PROXY header"),
            Refused::Invalid(why) => write!(f, "no PROXY protocol header: {why}"),
            Refused::Io(err) => write!(f, "reading its PROXY header failed: {err}"),
        }
    }
}

/// Reads the PROXY header `io` begins with; returns it and the bytes read
/// past it, which belong to the request that follows.
pub(crate) async fn read_header<I>(io: &mut I) -> Result<(ProxyHeader, Bytes), Refused>
where
    I: AsyncRead + Unpin,
{
    let mut buffer = BytesMut::with_capacity(READ_CHUNK);
    loop {
        if buffer.len() == buffer.capacity() {
            buffer.reserve(READ_CHUNK);
        }
        if io.read_buf(&mut buffer).await.map_err(Refused::Io)? == 0 {
            return Err(Refused::Closed);
        }
        match parse(&buffer) {
            Parsed::Incomplete => {}
            Parsed::Complete { header, length } => {
                let rest = buffer.split_off(length).freeze();
                return Ok((header, rest));
            }
            Parsed::Invalid(why) => return Err(Refused::Invalid(why)),
        }
    }
}

/// Whether `input` is `signature` so far, or begins with all of it.
fn begins_with(input: &[u8], signature: &[u8]) -> bool {
    let common = input.len().min(signature.len());
    input[..common] == signature[..common]
}

fn parse(input: &[u8]) -> Parsed {
    if begins_with(input, ppp::v2::PROTOCOL_PREFIX) {
        parse_v2(input)
    } else if begins_with(input, V1_SIGNATURE) {
        parse_v1(input)
    } else {
        let start = &input[..input.len().min(16)];
        Parsed::Invalid(format!(
            "it begins with {:?}",
            String::from_utf8_lossy(start)
        ))
    }
}

/// A v1 header is one line. It is parsed only once the line is complete:
/// `ppp` calls a line cut just before its last port invalid rather than
/// partial, which would refuse a header that arrives in pieces.
fn parse_v1(input: &[u8]) -> Parsed {
    let searched = &input[..input.len().min(V1_MAX_LENGTH)];
    let Some(end) = searched.iter().position(|&byte| byte == b'\n') else {
        return if input.len() >= V1_MAX_LENGTH {
            Parsed::Invalid(format!("its v1 line is longer than {V1_MAX_LENGTH} bytes"))
        } else {
            Parsed::Incomplete
        };
    };
    match ppp::v1::Header::try_from(&input[..=end]) {
        Ok(header) => {
            let source = match header.addresses {
                ppp::v1::Addresses::Tcp4(ip) => tcp_source(
                    (ip.source_address, ip.source_port),
                    (ip.destination_address, ip.destination_port),
                ),
                ppp::v1::Addresses::Tcp6(ip) => tcp_source(
                    (ip.source_address, ip.source_port),
                    (ip.destination_address, ip.destination_port),
                ),
                ppp::v1::Addresses::Unknown => Source::Unnamed,
            };
            Parsed::Complete {
                header: ProxyHeader { source, tls: false },
                length: header.header.len(),
            }
        }
        Err(err) => Parsed::Invalid(format!("invalid v1 header: {err}")),
    }
}

fn parse_v2(input: &[u8]) -> Parsed {
    let header = match ppp::v2::Header::try_from(input) {
        Ok(header) => header,
        Err(ppp::v2::ParseError::Partial(_, length))
            if V2_FIXED_LENGTH + length > V2_MAX_LENGTH =>
        {
            return Parsed::Invalid(format!(
                "its v2 header announces {} bytes, more than the {V2_MAX_LENGTH} accepted",
                V2_FIXED_LENGTH + length
            ));
        }
        Err(err) if err.is_incomplete() => return Parsed::Incomplete,
        Err(err) => return Parsed::Invalid(format!("invalid v2 header: {err}")),
    };
    let source = match (header.command, header.addresses) {
        (ppp::v2::Command::Local, _) => Source::Proxy,
        (ppp::v2::Command::Proxy, ppp::v2::Addresses::Unspecified) => Source::Unnamed,
        (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv4(ip)) => tcp_source(
            (ip.source_address, ip.source_port),
            (ip.destination_address, ip.destination_port),
        ),
        (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv6(ip)) => tcp_source(
            (ip.source_address, ip.source_port),
            (ip.destination_address, ip.destination_port),
        ),
        (ppp::v2::Command::Proxy, ppp::v2::Addresses::Unix(_)) => Source::Unnamed,
    };
    // Every other TLV is skipped; a malformed one ends the look.
    let tls = header.command == ppp::v2::Command::Proxy
        && header.tlvs().map_while(Result::ok).any(|tlv| {
            tlv.kind == PP2_TYPE_SSL && tlv.value.first().is_some_and(|b| b & PP2_CLIENT_SSL != 0)
        });
    Parsed::Complete {
        header: ProxyHeader { source, tls },
        length: header.len(),
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`, from a dual-stack proxy)
/// as the IPv4 addresses they are, as proxy headers and `--forwarded-allow-ips`
/// see them.
fn tcp_source(client: impl Into<SocketAddr>, server: impl Into<SocketAddr>) -> Source {
    let canonical = |addr: SocketAddr| SocketAddr::new(addr.ip().to_canonical(), addr.port());
    Source::Tcp {
        client: canonical(client.into()),
        server: canonical(server.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppp::v2::{Builder, Command, Protocol, Type, Version};
    use std::path::Path;
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt;

    fn tcp(client: &str, server: &str) -> Source {
        Source::Tcp {
            client: client.parse().unwrap(),
            server: server.parse().unwrap(),
        }
    }

    fn complete(source: Source, length: usize) -> Parsed {
        Parsed::Complete {
            header: ProxyHeader { source, tls: false },
            length,
        }
    }

    fn v2(command: Command, addresses: impl Into<ppp::v2::Addresses>) -> Builder {
        Builder::with_addresses(Version::Two | command, Protocol::Stream, addresses)
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        let line = b"PROXY TCP4 203.0.113.9 192.0.2.1 51234 443\r\n";
        assert_eq!(
            parse(line),
            complete(tcp("203.0.113.9:51234", "192.0.2.1:443"), line.len())
        );
        let line = b"PROXY TCP6 2001:db8::17 2001:db8::1 4711 8443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(line),
            complete(tcp("[2001:db8::17]:4711", "[2001:db8::1]:8443"), 47)
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), complete(Source::Unnamed, 15));
        let unknown = b"PROXY UNKNOWN ffff:: ffff:: 1 2\r\n";
        assert_eq!(parse(unknown), complete(Source::Unnamed, unknown.len()));
    }

    #[test]
    fn a_header_in_pieces_is_incomplete_until_its_end() {
        let line = b"PROXY TCP4 203.0.113.9 192.0.2.1 51234 443\r\n";
        for end in 0..line.len() {
            assert_eq!(parse(&line[..end]), Parsed::Incomplete, "{end}");
        }
        let header = v2(
            Command::Proxy,
            (
                "203.0.113.9:51234".parse::<SocketAddr>().unwrap(),
                "192.0.2.1:443".parse::<SocketAddr>().unwrap(),
            ),
        )
        .write_tlv(Type::NoOp, b"padding")
        .unwrap()
        .build()
        .unwrap();
        for end in 0..header.len() {
            assert_eq!(parse(&header[..end]), Parsed::Incomplete, "{end}");
        }
    }

    #[test]
    fn v2_proxy_ipv4_and_ipv6_with_tlvs() {
        let client: SocketAddr = "203.0.113.9:51234".parse().unwrap();
        let server: SocketAddr = "192.0.2.1:443".parse().unwrap();
        let mut header = v2(Command::Proxy, (client, server))
            .write_tlv(Type::UniqueId, b"abc-123")
            .unwrap()
            .write_tlv(Type::Authority, b"shop.example")
            .unwrap()
            .build()
            .unwrap();
        let length = header.len();
        header.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            parse(&header),
            complete(Source::Tcp { client, server }, length)
        );

        let client: SocketAddr = "[2001:db8::17]:4711".parse().unwrap();
        let server: SocketAddr = "[2001:db8::1]:8443".parse().unwrap();
        let header = v2(Command::Proxy, (client, server)).build().unwrap();
        assert_eq!(
            parse(&header),
            complete(Source::Tcp { client, server }, header.len())
        );
    }

    #[test]
    fn v2_ipv4_mapped_addresses_are_ipv4() {
        let client: SocketAddr = "[::ffff:203.0.113.9]:1".parse().unwrap();
        let server: SocketAddr = "[::ffff:192.0.2.1]:2".parse().unwrap();
        let header = v2(Command::Proxy, (client, server)).build().unwrap();
        assert_eq!(
            parse(&header),
            complete(tcp("203.0.113.9:1", "192.0.2.1:2"), header.len())
        );
    }

    #[test]
    fn v2_local_unspec_and_unix_keep_or_drop_the_address() {
        let client: SocketAddr = "203.0.113.9:51234".parse().unwrap();
        let server: SocketAddr = "192.0.2.1:443".parse().unwrap();
        let local = v2(Command::Local, (client, server)).build().unwrap();
        assert_eq!(parse(&local), complete(Source::Proxy, local.len()));
        let unspec = v2(Command::Proxy, ppp::v2::Addresses::Unspecified)
            .build()
            .unwrap();
        assert_eq!(parse(&unspec), complete(Source::Unnamed, unspec.len()));
        let unix = v2(Command::Proxy, ppp::v2::Unix::new([0; 108], [0; 108]))
            .build()
            .unwrap();
        assert_eq!(parse(&unix), complete(Source::Unnamed, unix.len()));
    }

    #[test]
    fn the_ssl_tlv_with_the_client_bit_means_https() {
        let addresses = (
            "203.0.113.9:51234".parse::<SocketAddr>().unwrap(),
            "192.0.2.1:443".parse::<SocketAddr>().unwrap(),
        );
        // client = PP2_CLIENT_SSL, verify = 0, no sub-TLVs.
        let ssl = v2(Command::Proxy, addresses)
            .write_tlv(Type::SSL, &[0x01, 0, 0, 0, 0])
            .unwrap()
            .build()
            .unwrap();
        let Parsed::Complete { header, .. } = parse(&ssl) else {
            panic!("{:?}", parse(&ssl))
        };
        assert!(header.tls);
        let plain = v2(Command::Proxy, addresses)
            .write_tlv(Type::SSL, &[0x00, 0, 0, 0, 0])
            .unwrap()
            .build()
            .unwrap();
        let Parsed::Complete { header, .. } = parse(&plain) else {
            panic!()
        };
        assert!(!header.tls);
    }

    #[test]
    fn anything_else_is_invalid() {
        for input in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"PRI * HTTP/2.0\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 99999\r\n",
            b"PROXY TCP4 2001:db8::1 5.6.7.8 1111 2222\r\n",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1111 2222\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\n",
            b"proxy TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ] {
            assert!(
                matches!(parse(input), Parsed::Invalid(_)),
                "{:?}: {:?}",
                String::from_utf8_lossy(input),
                parse(input)
            );
        }
        let long = [&b"PROXY UNKNOWN "[..], &[b'x'; 100]].concat();
        assert_eq!(
            parse(&long),
            Parsed::Invalid("its v1 line is longer than 107 bytes".into())
        );
        // Version 1 of the binary header, and a command that does not exist.
        let mut header = v2(Command::Local, ppp::v2::Addresses::Unspecified)
            .build()
            .unwrap();
        header[12] = 0x10;
        assert!(matches!(parse(&header), Parsed::Invalid(_)));
        header[12] = 0x2F;
        assert!(matches!(parse(&header), Parsed::Invalid(_)));
    }

    #[test]
    fn a_v2_header_announcing_too_much_is_refused_at_once() {
        let mut header = ppp::v2::PROTOCOL_PREFIX.to_vec();
        header.extend_from_slice(&[0x21, 0x11, 0xFF, 0xFF]);
        assert_eq!(
            parse(&header),
            Parsed::Invalid(format!(
                "its v2 header announces 65551 bytes, more than the {V2_MAX_LENGTH} accepted"
            ))
        );
    }

    #[tokio::test]
    async fn read_header_hands_back_what_follows() {
        let (mut client, mut server) = tokio::io::duplex(256);
        client
            .write_all(b"PROXY TCP4 203.0.113.9 192.0.2.1 51234 443\r\nGET / HTTP/1.1\r\n")
            .await
            .unwrap();
        let (header, rest) = read_header(&mut server).await.unwrap();
        assert_eq!(header.source, tcp("203.0.113.9:51234", "192.0.2.1:443"));
        assert_eq!(&rest[..], b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn read_header_waits_for_a_header_sent_byte_by_byte() {
        let (mut client, mut server) = tokio::io::duplex(256);
        let header = v2(
            Command::Proxy,
            (
                "203.0.113.9:51234".parse::<SocketAddr>().unwrap(),
                "192.0.2.1:443".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        let reader = tokio::spawn(async move { read_header(&mut server).await });
        for byte in header {
            client.write_all(&[byte]).await.unwrap();
            tokio::task::yield_now().await;
        }
        let (header, rest) = reader.await.unwrap().unwrap();
        assert_eq!(header.source, tcp("203.0.113.9:51234", "192.0.2.1:443"));
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn read_header_refuses_garbage_and_an_early_close() {
        let (mut client, mut server) = tokio::io::duplex(256);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let refused = read_header(&mut server).await.unwrap_err();
        assert_eq!(
            refused.to_string(),
            "no PROXY protocol header: it begins with \"GET / HTTP/1.1\\r\\n\""
        );
        let (mut client, mut server) = tokio::io::duplex(256);
        client.write_all(b"PROXY TCP4 203.0.113.9").await.unwrap();
        drop(client);
        assert!(matches!(
            read_header(&mut server).await,
            Err(Refused::Closed)
        ));
    }

    #[test]
    fn the_header_replaces_the_connection_s_addresses() {
        let socket = ConnectionInfo {
            scheme: Scheme::Http,
            client: Some("127.0.0.1:40000".parse().unwrap()),
            server: ServerAddr::Unix(Arc::from(Path::new("/run/app.sock"))),
            forwarded_prefix: None,
            relayed: false,
            tls: None,
        };
        let mut info = socket.clone();
        ProxyHeader {
            source: tcp("203.0.113.9:51234", "192.0.2.1:443"),
            tls: true,
        }
        .apply(&mut info);
        assert_eq!(info.client, Some("203.0.113.9:51234".parse().unwrap()));
        assert!(matches!(info.server, ServerAddr::Tcp(addr) if addr.port() == 443));
        assert_eq!(info.scheme, Scheme::Https);
        let mut info = socket.clone();
        ProxyHeader {
            source: Source::Proxy,
            tls: false,
        }
        .apply(&mut info);
        assert_eq!(info.client, socket.client);
        assert!(matches!(info.server, ServerAddr::Unix(_)));
        let mut info = socket.clone();
        ProxyHeader {
            source: Source::Unnamed,
            tls: false,
        }
        .apply(&mut info);
        assert_eq!(info.client, None);
    }
}
