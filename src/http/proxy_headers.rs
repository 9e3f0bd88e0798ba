//! Proxy headers: who the client really is and which scheme it used, as a
//! trusted reverse proxy (nginx, a load balancer) reports them.
//!
//! Only a peer in `--forwarded-allow-ips` is believed. From it, RFC 7239
//! `Forwarded` (when present) or else `X-Forwarded-For` and
//! `X-Forwarded-Proto` replace the connection's client address and scheme
//! for the request, so the ASGI scope, the WSGI environ and the access log
//! all see the real client. The address lists are walked from the right
//! (the hop nearest to us) past every trusted proxy: the first address not
//! trusted is the client, since anything left of it came from the client and
//! may be forged. A value that does not parse ends the walk, and a request
//! whose headers say nothing usable keeps the peer's address: proxy headers
//! never fail a request.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use http::header::{HeaderName, HeaderValue, HOST};
use http::HeaderMap;
use ipnet::IpNet;

use crate::net::{ConnectionInfo, Scheme};

/// The word `--forwarded-allow-ips` uses for peers on a Unix socket, which
/// have no address (uWSGI and gunicorn trust them by default too).
const UNIX_PEERS: &str = "unix";

/// uvicorn's and gunicorn's default: proxies on the same host.
pub(crate) const DEFAULT_FORWARDED_ALLOW_IPS: &str = "127.0.0.1,::1,unix";

static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The peers whose proxy headers are believed (`--forwarded-allow-ips`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TrustedProxies {
    /// `*`: every peer.
    any: bool,
    /// Peers on a Unix socket.
    unix: bool,
    networks: Vec<IpNet>,
}

impl TrustedProxies {
    /// Parses a comma-separated list of addresses, CIDR networks, `*` and
    /// `unix`.
    pub(crate) fn parse(raw: &str) -> Result<TrustedProxies, String> {
        let mut trusted = TrustedProxies {
            any: false,
            unix: false,
            networks: Vec::new(),
        };
        for item in raw
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
        {
            if item == "*" {
                trusted.any = true;
            } else if item.eq_ignore_ascii_case(UNIX_PEERS) {
                trusted.unix = true;
            } else if let Ok(network) = item.parse::<IpNet>() {
                trusted.networks.push(network.trunc());
            } else if let Ok(address) = item.parse::<IpAddr>() {
                trusted.networks.push(IpNet::from(address));
            } else {
                return Err(format!(
                    "{item:?} is not an IP address, a network (10.0.0.0/8), '*' or '{UNIX_PEERS}'"
                ));
            }
        }
        Ok(trusted)
    }

    /// Whether `peer` (`None`: a Unix-socket peer) is a trusted proxy.
    fn trusts(&self, peer: Option<IpAddr>) -> bool {
        match peer {
            _ if self.any => true,
            None => self.unix,
            Some(address) => {
                let address = address.to_canonical();
                self.networks
                    .iter()
                    .any(|network| network.contains(&address))
            }
        }
    }

    /// Applies what a trusted peer's headers say to `info` (the client and
    /// the scheme) and to the request's `Host` (RFC 7239 `host=`).
    pub(crate) fn apply(&self, info: &mut ConnectionInfo, headers: &mut HeaderMap) {
        // Most requests carry none: one pass over the names (no hashing)
        // settles that before any lookup.
        let mentioned = headers.keys().any(|name| {
            let name = name.as_str();
            name == "forwarded" || name.starts_with("x-forwarded-")
        });
        if !mentioned || !self.trusts(info.client.map(|client| client.ip())) {
            return;
        }
        let said = match headers.get(&FORWARDED) {
            Some(_) => self.read_forwarded(headers),
            None => self.read_x_forwarded(headers),
        };
        if let Some(client) = said.client {
            info.client = Some(client);
        }
        if let Some(scheme) = said.scheme {
            info.scheme = scheme;
        }
        if let Some(host) = said.host {
            headers.insert(HOST, host);
        }
    }

    /// `X-Forwarded-For` and `X-Forwarded-Proto`; a proto list as long as
    /// the address list is read at the client's position, else its last value.
    fn read_x_forwarded(&self, headers: &HeaderMap) -> Said {
        let mut said = Said::default();
        let hops: Vec<&str> = list(headers, &X_FORWARDED_FOR);
        let mut position = None;
        for (index, hop) in hops.iter().enumerate().rev() {
            let Some(address) = parse_node(hop) else {
                break;
            };
            position = Some(index);
            said.client = Some(address);
            if !self.trusts(Some(address.ip())) {
                break;
            }
        }
        let protos = list(headers, &X_FORWARDED_PROTO);
        let proto = match position {
            Some(index) if protos.len() == hops.len() => protos.get(index),
            _ => protos.last(),
        };
        said.scheme = proto.and_then(|proto| parse_scheme(proto));
        said
    }

    /// RFC 7239 `Forwarded`: one element per hop, each `for=`, `proto=`,
    /// `host=` pairs; the element of the first untrusted hop is the client's.
    fn read_forwarded(&self, headers: &HeaderMap) -> Said {
        let mut said = Said::default();
        let elements: Vec<&str> = headers
            .get_all(&FORWARDED)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(split_outside_quotes(','))
            .collect();
        for element in elements.iter().rev() {
            let pairs = parse_element(element);
            let Some(address) = pairs.for_.as_deref().and_then(parse_node) else {
                break;
            };
            said.client = Some(address);
            said.scheme = pairs.proto.as_deref().and_then(parse_scheme);
            said.host = pairs
                .host
                .as_deref()
                .and_then(|host| HeaderValue::from_str(host).ok());
            if !self.trusts(Some(address.ip())) {
                break;
            }
        }
        said
    }
}

/// What the headers of a trusted peer say.
#[derive(Debug, Default)]
struct Said {
    client: Option<SocketAddr>,
    scheme: Option<Scheme>,
    host: Option<HeaderValue>,
}

/// The comma-separated items of every `name` header, trimmed.
fn list<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .collect()
}

/// The pairs of one `Forwarded` element that matter here.
#[derive(Debug, Default, PartialEq, Eq)]
struct Element {
    for_: Option<String>,
    proto: Option<String>,
    host: Option<String>,
}

fn parse_element(element: &str) -> Element {
    let mut parsed = Element::default();
    for pair in split_outside_quotes(';')(element) {
        let Some((name, value)) = pair.split_once('=') else {
            continue;
        };
        let value = unquote(value.trim());
        match name.trim().to_ascii_lowercase().as_str() {
            "for" => parsed.for_ = Some(value),
            "proto" => parsed.proto = Some(value),
            "host" => parsed.host = Some(value),
            _ => {}
        }
    }
    parsed
}

/// Splits on `separator` except inside a quoted string (RFC 7230 quoting,
/// which `Forwarded` uses for IPv6 addresses and ports).
fn split_outside_quotes(separator: char) -> impl Fn(&str) -> Vec<&str> {
    move |text: &str| {
        let mut parts = Vec::new();
        let (mut start, mut quoted, mut escaped) = (0, false, false);
        for (index, c) in text.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                c if c == separator && !quoted => {
                    parts.push(text[start..index].trim());
                    start = index + c.len_utf8();
                }
                _ => {}
            }
        }
        parts.push(text[start..].trim());
        parts.retain(|part| !part.is_empty());
        parts
    }
}

fn unquote(value: &str) -> String {
    match value
        .strip_prefix('"')
        .and_then(|inner| inner.strip_suffix('"'))
    {
        Some(inner) => {
            let mut unescaped = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                unescaped.push(if c == '\\' {
                    chars.next().unwrap_or(c)
                } else {
                    c
                });
            }
            unescaped
        }
        None => value.to_string(),
    }
}

/// A hop's address: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:4711`; port 0 when none is given (as
/// uvicorn reports it). `unknown` and obfuscated names (`_hidden`) are None.
fn parse_node(node: &str) -> Option<SocketAddr> {
    let node = node.trim();
    if let Ok(address) = node.parse::<IpAddr>() {
        return Some(SocketAddr::new(address.to_canonical(), 0));
    }
    if let Ok(address) = node.parse::<SocketAddr>() {
        return Some(SocketAddr::new(address.ip().to_canonical(), address.port()));
    }
    let inner = node.strip_prefix('[')?.strip_suffix(']')?;
    inner
        .parse::<Ipv6Addr>()
        .ok()
        .map(|address| SocketAddr::new(IpAddr::V6(address).to_canonical(), 0))
}

fn parse_scheme(proto: &str) -> Option<Scheme> {
    match proto.trim().to_ascii_lowercase().as_str() {
        "https" | "wss" => Some(Scheme::Https),
        "http" | "ws" => Some(Scheme::Http),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::ServerAddr;
    use std::net::Ipv4Addr;

    /// The proxy's own address, which the client keeps when nothing is forwarded.
    const PEER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 50_000);

    fn info(client: Option<SocketAddr>) -> ConnectionInfo {
        ConnectionInfo {
            scheme: Scheme::Http,
            client,
            server: ServerAddr::Tcp("127.0.0.1:8000".parse().unwrap()),
            tls: None,
        }
    }

    fn applied(
        trusted: &str,
        client: Option<SocketAddr>,
        headers: &[(&str, &str)],
    ) -> (ConnectionInfo, HeaderMap) {
        let trusted = TrustedProxies::parse(trusted).unwrap();
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let mut info = info(client);
        trusted.apply(&mut info, &mut map);
        (info, map)
    }

    fn client_of(info: &ConnectionInfo) -> String {
        info.client.map(|c| c.to_string()).unwrap_or_default()
    }

    #[test]
    fn the_list_takes_addresses_networks_star_and_unix() {
        let trusted = TrustedProxies::parse("10.0.0.0/8, 192.168.1.7 ,::1,unix").unwrap();
        assert!(trusted.trusts(Some("10.2.3.4".parse().unwrap())));
        assert!(trusted.trusts(Some("192.168.1.7".parse().unwrap())));
        assert!(!trusted.trusts(Some("192.168.1.8".parse().unwrap())));
        assert!(trusted.trusts(Some("::1".parse().unwrap())));
        assert!(trusted.trusts(None));
        assert!(
            trusted.trusts(Some("::ffff:10.0.0.1".parse().unwrap())),
            "IPv4-mapped"
        );
        let all = TrustedProxies::parse("*").unwrap();
        assert!(all.trusts(Some("8.8.8.8".parse().unwrap())) && all.trusts(None));
        assert!(!TrustedProxies::parse("127.0.0.1").unwrap().trusts(None));
        let err = TrustedProxies::parse("10.0.0.0/33").unwrap_err();
        assert!(
            err.contains("\"10.0.0.0/33\" is not an IP address"),
            "{err}"
        );
        assert!(TrustedProxies::parse("nginx").is_err());
    }

    #[test]
    fn x_forwarded_for_is_walked_from_the_right_past_trusted_hops() {
        let headers = [
            ("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.0.0.2"),
            ("x-forwarded-proto", "https"),
        ];
        let (info, _) = applied("127.0.0.1,10.0.0.0/8", Some(PEER), &headers);
        assert_eq!(client_of(&info), "203.0.113.9:0");
        assert_eq!(info.scheme, Scheme::Https);
        // Every hop trusted: the leftmost is the client.
        let (info, _) = applied(
            "*",
            Some(PEER),
            &[("x-forwarded-for", "10.0.0.3, 10.0.0.2")],
        );
        assert_eq!(client_of(&info), "10.0.0.3:0");
        // Split over two header lines, as HTTP allows.
        let (info, _) = applied(
            "127.0.0.1",
            Some(PEER),
            &[
                ("x-forwarded-for", "198.51.100.1"),
                ("x-forwarded-for", "203.0.113.9"),
            ],
        );
        assert_eq!(client_of(&info), "203.0.113.9:0");
    }

    #[test]
    fn an_untrusted_peer_changes_nothing() {
        let headers = [
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=1.2.3.4;host=evil"),
        ];
        let (info, map) = applied("10.0.0.1", Some(PEER), &headers);
        assert_eq!(client_of(&info), PEER.to_string());
        assert_eq!(info.scheme, Scheme::Http);
        assert!(map.get(HOST).is_none());
        // A Unix-socket peer is trusted by the default list.
        let (info, _) = applied(DEFAULT_FORWARDED_ALLOW_IPS, None, &headers[..2]);
        assert_eq!(client_of(&info), "203.0.113.9:0");
    }

    #[test]
    fn malformed_values_are_ignored() {
        for value in ["not-an-ip", "unknown", "", " , ", "999.1.1.1", "[::1"] {
            let (info, _) = applied(
                "127.0.0.1",
                Some(PEER),
                &[("x-forwarded-for", value), ("x-forwarded-proto", "gopher")],
            );
            assert_eq!(client_of(&info), PEER.to_string(), "{value:?}");
            assert_eq!(info.scheme, Scheme::Http, "{value:?}");
        }
        // A garbage hop stops the walk at the last good one.
        let (info, _) = applied(
            "*",
            Some(PEER),
            &[("x-forwarded-for", "1.1.1.1, bogus, 10.0.0.2")],
        );
        assert_eq!(client_of(&info), "10.0.0.2:0");
    }

    #[test]
    fn forwarded_wins_and_reads_quoted_ipv6_ports_and_host() {
        let headers = [
            ("x-forwarded-for", "198.51.100.1"),
            (
                "forwarded",
                r#"for="[2001:db8:cafe::17]:4711";proto=https;host="example.com:8443", for=10.0.0.2;proto=http"#,
            ),
        ];
        let (info, map) = applied("127.0.0.1,10.0.0.0/8", Some(PEER), &headers);
        assert_eq!(client_of(&info), "[2001:db8:cafe::17]:4711");
        assert_eq!(info.scheme, Scheme::Https);
        assert_eq!(map.get(HOST).unwrap(), "example.com:8443");
        let (info, _) = applied(
            "127.0.0.1",
            Some(PEER),
            &[("forwarded", "For=192.0.2.60;Proto=HTTPS;by=203.0.113.43")],
        );
        assert_eq!(client_of(&info), "192.0.2.60:0");
        assert_eq!(info.scheme, Scheme::Https);
        // An obfuscated or unknown hop tells nothing: the peer stays.
        let (info, _) = applied(
            "127.0.0.1",
            Some(PEER),
            &[("forwarded", "for=_hidden;proto=https")],
        );
        assert_eq!(client_of(&info), PEER.to_string());
        assert_eq!(info.scheme, Scheme::Http);
    }

    #[test]
    fn proto_lists_align_with_the_address_list() {
        let headers = [
            ("x-forwarded-for", "203.0.113.9, 10.0.0.2"),
            ("x-forwarded-proto", "https, http"),
        ];
        let (info, _) = applied("127.0.0.1,10.0.0.0/8", Some(PEER), &headers);
        assert_eq!(info.scheme, Scheme::Https);
        let (info, _) = applied("127.0.0.1", Some(PEER), &[("x-forwarded-proto", "wss")]);
        assert_eq!(
            info.scheme,
            Scheme::Https,
            "wss means a secure connection too"
        );
    }
}
