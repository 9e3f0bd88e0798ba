//! Proxy headers: who the client really is and which scheme it used, as a
//! trusted reverse proxy (nginx, a load balancer) reports them.
//!
//! Only a peer in `--forwarded-allow-ips` is believed. From it,
//! `X-Forwarded-For` and `X-Forwarded-Proto`, or RFC 7239 `Forwarded` with
//! `--proxy-header-format forwarded`, replace the connection's client address
//! and scheme for the request, so the ASGI scope, the WSGI environ and the
//! access log all see the real client. One family is read, never both: a
//! proxy sets the one it speaks and passes the other through from the client
//! as it came (nginx, HAProxy and AWS's balancers leave a client's
//! `Forwarded` alone), so reading both would let the client pick. The address lists are walked from the right
//! (the hop nearest to us) past every trusted proxy: the first address not
//! trusted is the client, since anything left of it came from the client and
//! may be forged. A value that does not parse ends the walk, and a request
//! whose headers say nothing usable keeps the peer's address: proxy headers
//! never fail a request.
//!
//! With `--forwarded-host-headers`, `X-Forwarded-Host`, `X-Forwarded-Port` and
//! `X-Forwarded-Prefix` are believed too: the host, port and path prefix the
//! client used, so the links and redirects the app builds point there. They
//! are off by default because, unlike `X-Forwarded-For`, which a proxy
//! appends to, these are only safe when the proxy sets them: one that passes a
//! client's `X-Forwarded-Host` through would let it choose the host of a
//! password-reset link (the reason Django's `USE_X_FORWARDED_HOST` is off).

use std::borrow::Cow;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use http::header::{HeaderName, HeaderValue, HOST};
use http::HeaderMap;
use ipnet::IpNet;

use crate::net::{ConnectionInfo, ForwardedPrefix, Scheme, ServerAddr};

/// The word `--forwarded-allow-ips` uses for peers on a Unix socket, which
/// have no address (uWSGI and gunicorn trust them by default too).
const UNIX_PEERS: &str = "unix";

/// uvicorn's and gunicorn's default: proxies on the same host.
pub(crate) const DEFAULT_FORWARDED_ALLOW_IPS: &str = "127.0.0.1,::1,unix";

static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");

/// `--proxy-header-format`: the headers the trusted proxies set, the only
/// ones read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub(crate) enum ProxyHeaderFormat {
    /// `X-Forwarded-For` and `X-Forwarded-Proto` (nginx, HAProxy's
    /// `forwardfor`, AWS ALB, Traefik, Caddy).
    #[default]
    XForwarded,
    /// RFC 7239 `Forwarded` (`for`, `proto`, `host`).
    Forwarded,
}

/// The proxy headers a worker believes, and from whom.
#[derive(Debug, Clone)]
pub(crate) struct ProxyHeaders {
    trusted: TrustedProxies,
    format: ProxyHeaderFormat,
    /// `--forwarded-host-headers`: `X-Forwarded-Host`, `-Port` and `-Prefix`.
    host_headers: bool,
}

impl ProxyHeaders {
    pub(crate) fn new(
        trusted: TrustedProxies,
        format: ProxyHeaderFormat,
        host_headers: bool,
    ) -> ProxyHeaders {
        ProxyHeaders {
            trusted,
            format,
            host_headers,
        }
    }

    /// Applies what a trusted peer's headers say to `info` (the client, the
    /// scheme, the server port and the path prefix) and to the request's
    /// `Host`.
    pub(crate) fn apply(&self, info: &mut ConnectionInfo, headers: &mut HeaderMap) {
        // Most requests carry none: one pass over the names (no hashing)
        // settles that before any lookup.
        let mentioned = headers.keys().any(|name| {
            let name = name.as_str();
            name == "forwarded" || name.starts_with("x-forwarded-")
        });
        if !mentioned || !self.trusted.trusts_peer(info) {
            return;
        }
        // `Forwarded` has a say on the client, the scheme and the host (with
        // its port), and no word for a prefix.
        let (said, position) = match self.format {
            ProxyHeaderFormat::Forwarded => (self.trusted.read_forwarded(headers), None),
            ProxyHeaderFormat::XForwarded => {
                let (said, position) = self.trusted.read_x_forwarded(headers);
                (said, Some(position))
            }
        };
        if let Some(client) = said.client {
            info.client = Some(client);
        }
        if let Some(scheme) = said.scheme {
            info.scheme = scheme;
        }
        let mut host = said.host;
        if self.host_headers {
            apply_host_headers(headers, position, info, &mut host);
        }
        if let Some(host) = host {
            headers.insert(HOST, host);
        }
    }
}

/// `X-Forwarded-Host` and `X-Forwarded-Port` (unless `Forwarded` was read:
/// `position` is `None` then) and `X-Forwarded-Prefix`, applied to `info`
/// and to `host`, the `Host` the request will carry when it is `Some`.
fn apply_host_headers(
    headers: &HeaderMap,
    position: Option<Position>,
    info: &mut ConnectionInfo,
    host: &mut Option<HeaderValue>,
) {
    if let Some(position) = position {
        let forwarded_host = position.pick(headers, &X_FORWARDED_HOST);
        if let Some(forwarded) = forwarded_host.and_then(parse_host) {
            *host = Some(forwarded);
        }
        let forwarded_port = position.pick(headers, &X_FORWARDED_PORT);
        if let Some(port) = forwarded_port.and_then(parse_port) {
            // On a Unix socket the app reads the port from Host.
            if let ServerAddr::Tcp(server) = &mut info.server {
                server.set_port(port);
            }
            let current = host.take().or_else(|| headers.get(HOST).cloned());
            *host = current.map(|current| with_port(current, port, info.scheme));
        }
    }
    let prefix = position
        .unwrap_or_default()
        .pick(headers, &X_FORWARDED_PREFIX);
    if let Some(prefix) = prefix.and_then(ForwardedPrefix::parse) {
        info.forwarded_prefix = Some(prefix);
    }
}

/// Where the client's entry sits in the `X-Forwarded-*` lists, which a chain
/// of proxies extends hop by hop: a list as long as `X-Forwarded-For` is read
/// at the client's index, any other (a proxy that sets rather than appends)
/// at its last entry.
#[derive(Debug, Clone, Copy, Default)]
struct Position {
    index: Option<usize>,
    hops: usize,
}

impl Position {
    fn pick<'a>(self, headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
        let values = list(headers, name);
        match self.index {
            Some(index) if values.len() == self.hops => values.get(index).copied().flatten(),
            _ => values.last().copied().flatten(),
        }
    }
}

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
                // As Python's ipaddress.ip_network() and gunicorn: an address
                // under a prefix is more likely a slip than a whole network.
                if network.trunc() != network {
                    return Err(format!(
                        "{item:?} has address bits set past its /{} prefix: write the network \
                         as {}, or the one address as {}",
                        network.prefix_len(),
                        network.trunc(),
                        network.addr()
                    ));
                }
                trusted.networks.push(network);
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
    pub(crate) fn trusts(&self, peer: Option<IpAddr>) -> bool {
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

    /// Whether the connection's peer is a trusted proxy. A client a PROXY
    /// header says came over a Unix socket is no peer on ours: only `*`
    /// trusts it.
    fn trusts_peer(&self, info: &ConnectionInfo) -> bool {
        match info.client {
            None if info.relayed => self.any,
            client => self.trusts(client.map(|client| client.ip())),
        }
    }

    /// `X-Forwarded-For` and `X-Forwarded-Proto`, and where the client's
    /// entry is for the other `X-Forwarded-*` lists.
    fn read_x_forwarded(&self, headers: &HeaderMap) -> (Said, Position) {
        let mut said = Said::default();
        let hops = list(headers, &X_FORWARDED_FOR);
        let mut position = Position {
            index: None,
            hops: hops.len(),
        };
        for (index, hop) in hops.iter().enumerate().rev() {
            let Some(address) = hop.and_then(parse_node) else {
                break;
            };
            position.index = Some(index);
            said.client = Some(address);
            if !self.trusts(Some(address.ip())) {
                break;
            }
        }
        let proto = position.pick(headers, &X_FORWARDED_PROTO);
        said.scheme = proto.and_then(parse_scheme);
        (said, position)
    }

    /// RFC 7239 `Forwarded`: one element per hop, each `for=`, `proto=`,
    /// `host=` pairs; the element of the first untrusted hop is the client's.
    /// Each element read was written by a trusted proxy (the walk stops at
    /// the first hop that is not one), so its `proto` and `host` count even
    /// when its `for` hides the client (`for=unknown`, `for=_hidden`), which
    /// then stays the peer.
    fn read_forwarded(&self, headers: &HeaderMap) -> Said {
        let mut said = Said::default();
        // A byte past ASCII turns into U+FFFD, which no pair takes: like
        // `list`, it costs its element and not the line the proxy appended to.
        let lines: Vec<Cow<'_, str>> = headers
            .get_all(&FORWARDED)
            .iter()
            .map(|value| String::from_utf8_lossy(value.as_bytes()))
            .collect();
        let elements: Vec<&str> = lines
            .iter()
            .flat_map(|line| split_outside_quotes(',')(line))
            .collect();
        for element in elements.iter().rev() {
            let pairs = parse_element(element);
            said.scheme = pairs.proto.as_deref().and_then(parse_scheme);
            said.host = pairs.host.as_deref().and_then(parse_host);
            let Some(address) = pairs.for_.as_deref().and_then(parse_node) else {
                break;
            };
            said.client = Some(address);
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

/// The comma-separated items of every `name` header, trimmed; `None` for an
/// item that is not text. Split as bytes, so that one item with a byte past
/// ASCII costs only its own place: a proxy that appends to the client's line
/// (nginx's `$proxy_add_x_forwarded_for`) puts the client's bytes and the
/// address it saw on one line, and dropping the whole line would drop the
/// proxy's entry with the client's.
fn list<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Vec<Option<&'a str>> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&byte| byte == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|item| !item.is_empty())
        .map(|item| std::str::from_utf8(item).ok())
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
///
/// A quote that is never closed holds no separator: the rest of the text is
/// split at every one. A client's `for="` would otherwise swallow the
/// element a proxy appended to its line.
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
        if quoted {
            parts.extend(text[start..].split(separator).map(str::trim));
        } else {
            parts.push(text[start..].trim());
        }
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

/// An `X-Forwarded-Host` value as a `Host` header: `host` or `host:port`,
/// the host a DNS name, an IPv4 address or a bracketed IPv6 one. Anything
/// else (user info, a path, a bad port, spaces) is `None`.
fn parse_host(raw: &str) -> Option<HeaderValue> {
    let (host, port) = split_port(raw);
    let host_ok = match host.strip_prefix('[') {
        Some(inner) => inner
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<Ipv6Addr>().is_ok()),
        None => {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        }
    };
    let port_ok = port.is_none_or(|port| parse_port(port).is_some());
    if host_ok && port_ok {
        HeaderValue::from_str(raw).ok()
    } else {
        None
    }
}

/// `host` and the port after its last colon, unless that colon is inside an
/// IPv6 literal's brackets.
fn split_port(host: &str) -> (&str, Option<&str>) {
    match host.rfind(':') {
        Some(colon) if !host[colon..].contains(']') => (&host[..colon], Some(&host[colon + 1..])),
        _ => (host, None),
    }
}

/// A port number from 1 to 65535, digits only.
fn parse_port(raw: &str) -> Option<u16> {
    if raw.is_empty() || raw.len() > 5 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse().ok().filter(|&port| port != 0)
}

/// `host` with `:port` added when it names no port and `port` is not the
/// scheme's default, as a browser would write the URL (and Django's
/// `get_host()` builds it from `SERVER_PORT`). A port `host` names is the one
/// the client used, and stays.
fn with_port(host: HeaderValue, port: u16, scheme: Scheme) -> HeaderValue {
    let default = match scheme {
        Scheme::Http => 80,
        Scheme::Https => 443,
    };
    let Ok(text) = host.to_str() else {
        return host;
    };
    if port == default || split_port(text).1.is_some() {
        return host;
    }
    HeaderValue::from_str(&format!("{text}:{port}")).unwrap_or(host)
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
    use std::net::Ipv4Addr;
    use std::path::Path;
    use std::sync::Arc;

    /// The proxy's own address, which the client keeps when nothing is forwarded.
    const PEER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 50_000);

    fn info(client: Option<SocketAddr>) -> ConnectionInfo {
        ConnectionInfo {
            scheme: Scheme::Http,
            client,
            server: ServerAddr::Tcp("127.0.0.1:8000".parse().unwrap()),
            tls: None,
            forwarded_prefix: None,
            relayed: false,
        }
    }

    fn header_map(headers: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn applied_as(
        format: ProxyHeaderFormat,
        trusted: &str,
        client: Option<SocketAddr>,
        headers: &[(&str, &str)],
    ) -> (ConnectionInfo, HeaderMap) {
        let proxy = ProxyHeaders::new(TrustedProxies::parse(trusted).unwrap(), format, false);
        let mut map = header_map(headers);
        let mut info = info(client);
        proxy.apply(&mut info, &mut map);
        (info, map)
    }

    /// With the default `--proxy-header-format x-forwarded`.
    fn applied(
        trusted: &str,
        client: Option<SocketAddr>,
        headers: &[(&str, &str)],
    ) -> (ConnectionInfo, HeaderMap) {
        applied_as(ProxyHeaderFormat::XForwarded, trusted, client, headers)
    }

    /// With `--proxy-header-format forwarded`, from a trusted local proxy.
    fn forwarded(headers: &[(&str, &str)]) -> (ConnectionInfo, HeaderMap) {
        applied_as(
            ProxyHeaderFormat::Forwarded,
            "127.0.0.1,10.0.0.0/8",
            Some(PEER),
            headers,
        )
    }

    /// With `--forwarded-host-headers`, from a trusted local proxy.
    fn applied_with_host_headers(headers: &[(&str, &str)]) -> (ConnectionInfo, HeaderMap) {
        host_headers_as(ProxyHeaderFormat::XForwarded, headers)
    }

    fn host_headers_as(
        format: ProxyHeaderFormat,
        headers: &[(&str, &str)],
    ) -> (ConnectionInfo, HeaderMap) {
        let trusted = TrustedProxies::parse("127.0.0.1,10.0.0.0/8").unwrap();
        let proxy = ProxyHeaders::new(trusted, format, true);
        let mut map = header_map(headers);
        let mut info = info(Some(PEER));
        proxy.apply(&mut info, &mut map);
        (info, map)
    }

    fn host_of(map: &HeaderMap) -> &str {
        map.get(HOST)
            .and_then(|host| host.to_str().ok())
            .unwrap_or("")
    }

    fn server_port(info: &ConnectionInfo) -> u16 {
        match info.server {
            ServerAddr::Tcp(addr) => addr.port(),
            ServerAddr::Unix(_) => 0,
        }
    }

    fn prefix_of(info: &ConnectionInfo) -> Option<&str> {
        info.forwarded_prefix.as_ref().map(ForwardedPrefix::as_str)
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
        // It trusted all of 10.0.0.0/8, where one address was more likely meant.
        let err = TrustedProxies::parse("10.1.2.3/8").unwrap_err();
        assert_eq!(
            err,
            "\"10.1.2.3/8\" has address bits set past its /8 prefix: write the network as \
             10.0.0.0/8, or the one address as 10.1.2.3"
        );
        assert!(TrustedProxies::parse("fd00::1/64").is_err());
        assert!(TrustedProxies::parse("10.1.2.3/32,fd00::/64").is_ok());
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

    /// A client's bytes past ASCII in the line a proxy appended to cost only
    /// the client's own item: the proxy's entry after it still counts.
    #[test]
    fn an_item_that_is_not_text_does_not_hide_the_proxys_entry() {
        let proxy = ProxyHeaders::new(
            TrustedProxies::parse("127.0.0.1").unwrap(),
            ProxyHeaderFormat::XForwarded,
            false,
        );
        let mut map = HeaderMap::new();
        map.append(
            X_FORWARDED_FOR.clone(),
            HeaderValue::from_bytes(b"\xff\xfe, 203.0.113.9").unwrap(),
        );
        map.append(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_bytes(b"\xff, https").unwrap(),
        );
        let mut info = info(Some(PEER));
        proxy.apply(&mut info, &mut map);
        assert_eq!(client_of(&info), "203.0.113.9:0");
        assert_eq!(info.scheme, Scheme::Https);
        // The same in the walk: a hop that is not text ends it there.
        let mut map = HeaderMap::new();
        map.append(
            X_FORWARDED_FOR.clone(),
            HeaderValue::from_bytes(b"203.0.113.7, \xff, 127.0.0.1").unwrap(),
        );
        let mut info = self::info(Some(PEER));
        let trusting = ProxyHeaders::new(
            TrustedProxies::parse("*").unwrap(),
            ProxyHeaderFormat::XForwarded,
            false,
        );
        trusting.apply(&mut info, &mut map);
        assert_eq!(client_of(&info), "127.0.0.1:0");

        let forwarded = ProxyHeaders::new(
            TrustedProxies::parse("127.0.0.1").unwrap(),
            ProxyHeaderFormat::Forwarded,
            false,
        );
        let mut map = HeaderMap::new();
        map.append(
            FORWARDED.clone(),
            HeaderValue::from_bytes(b"for=\"\xff\", for=203.0.113.9;proto=https").unwrap(),
        );
        let mut info = self::info(Some(PEER));
        forwarded.apply(&mut info, &mut map);
        assert_eq!(client_of(&info), "203.0.113.9:0");
        assert_eq!(info.scheme, Scheme::Https);
        // A quote the client opened and never closed.
        let mut map = HeaderMap::new();
        map.append(
            FORWARDED.clone(),
            HeaderValue::from_static("for=\"[::1, for=203.0.113.9;proto=https"),
        );
        let mut info = self::info(Some(PEER));
        forwarded.apply(&mut info, &mut map);
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
    fn forwarded_reads_quoted_ipv6_ports_and_host() {
        let headers = [
            ("x-forwarded-for", "198.51.100.1"),
            (
                "forwarded",
                r#"for="[2001:db8:cafe::17]:4711";proto=https;host="example.com:8443", for=10.0.0.2;proto=http"#,
            ),
        ];
        let (info, map) = forwarded(&headers);
        assert_eq!(client_of(&info), "[2001:db8:cafe::17]:4711");
        assert_eq!(info.scheme, Scheme::Https);
        assert_eq!(map.get(HOST).unwrap(), "example.com:8443");
        let (info, _) = forwarded(&[("forwarded", "For=192.0.2.60;Proto=HTTPS;by=203.0.113.43")]);
        assert_eq!(client_of(&info), "192.0.2.60:0");
        assert_eq!(info.scheme, Scheme::Https);
    }

    #[test]
    fn a_hidden_client_keeps_the_peer_but_its_proxy_s_proto_and_host_count() {
        // The element was written by the trusted proxy, which hid the client.
        for hidden in ["_hidden", "unknown"] {
            let value = format!("for={hidden};proto=https;host=shop.example");
            let (info, map) = forwarded(&[("forwarded", &value)]);
            assert_eq!(client_of(&info), PEER.to_string());
            assert_eq!(info.scheme, Scheme::Https);
            assert_eq!(host_of(&map), "shop.example");
        }
    }

    #[test]
    fn only_the_format_the_proxy_speaks_is_read() {
        // nginx sets X-Forwarded-* and passes the client's own Forwarded on.
        let (info, map) = applied(
            DEFAULT_FORWARDED_ALLOW_IPS,
            Some(PEER),
            &[
                ("x-forwarded-for", "203.0.113.50"),
                ("x-forwarded-proto", "http"),
                ("forwarded", "for=1.2.3.4;proto=https;host=evil.example"),
            ],
        );
        assert_eq!(client_of(&info), "203.0.113.50:0");
        assert_eq!(info.scheme, Scheme::Http);
        assert!(map.get(HOST).is_none());
        // Nor can a client hide behind a Forwarded that names no one.
        let (info, _) = applied(
            DEFAULT_FORWARDED_ALLOW_IPS,
            Some(PEER),
            &[
                ("x-forwarded-for", "203.0.113.50"),
                ("x-forwarded-proto", "https"),
                ("forwarded", "for=unknown;proto=http"),
            ],
        );
        assert_eq!(client_of(&info), "203.0.113.50:0");
        assert_eq!(info.scheme, Scheme::Https);
        // A proxy that writes Forwarded, and the client's X-Forwarded-For.
        let (info, _) = forwarded(&[
            ("forwarded", "for=203.0.113.50;proto=https"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "http"),
        ]);
        assert_eq!(client_of(&info), "203.0.113.50:0");
        assert_eq!(info.scheme, Scheme::Https);
    }

    #[test]
    fn a_forwarded_host_must_be_a_host() {
        for bad in [
            "evil.example/reset?x=1 a@b",
            "a b",
            "shop.example:99999",
            "",
        ] {
            let value = format!("for=203.0.113.9;host=\"{bad}\"");
            let (_, map) = forwarded(&[("forwarded", &value)]);
            assert!(map.get(HOST).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn a_client_a_proxy_header_says_came_over_a_unix_socket_is_not_trusted_as_unix() {
        let proxy = ProxyHeaders::new(
            TrustedProxies::parse(DEFAULT_FORWARDED_ALLOW_IPS).unwrap(),
            ProxyHeaderFormat::XForwarded,
            false,
        );
        let mut map = header_map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
        ]);
        let mut info = ConnectionInfo {
            relayed: true,
            ..info(None)
        };
        proxy.apply(&mut info, &mut map);
        assert_eq!(info.client, None);
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

    #[test]
    fn host_headers_are_ignored_unless_asked_for() {
        let headers = [
            ("host", "127.0.0.1:8000"),
            ("x-forwarded-host", "shop.example"),
            ("x-forwarded-port", "8443"),
            ("x-forwarded-prefix", "/shop"),
        ];
        let (untouched, map) = applied("127.0.0.1", Some(PEER), &headers);
        assert_eq!(host_of(&map), "127.0.0.1:8000");
        assert_eq!(server_port(&untouched), 8000);
        assert_eq!(prefix_of(&untouched), None);
        // Asked for, but from an untrusted peer.
        let proxy = ProxyHeaders::new(
            TrustedProxies::parse("10.0.0.1").unwrap(),
            ProxyHeaderFormat::XForwarded,
            true,
        );
        let mut map = header_map(&headers);
        let mut untrusted = info(Some(PEER));
        proxy.apply(&mut untrusted, &mut map);
        assert_eq!(host_of(&map), "127.0.0.1:8000");
        assert_eq!(server_port(&untrusted), 8000);
        assert_eq!(prefix_of(&untrusted), None);
    }

    #[test]
    fn x_forwarded_host_port_and_prefix_tell_the_url_the_client_used() {
        let (info, map) = applied_with_host_headers(&[
            ("host", "127.0.0.1:8000"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "shop.example"),
            ("x-forwarded-port", "8443"),
            ("x-forwarded-prefix", "/shop/"),
        ]);
        assert_eq!(host_of(&map), "shop.example:8443");
        assert_eq!(server_port(&info), 8443);
        assert_eq!(prefix_of(&info), Some("/shop"));
        assert_eq!(info.scheme, Scheme::Https);
    }

    #[test]
    fn the_forwarded_port_joins_host_only_when_it_is_not_the_default() {
        let port_and_host = |proto: &str, host: &str, port: &str| {
            let (info, map) = applied_with_host_headers(&[
                ("host", "127.0.0.1:8000"),
                ("x-forwarded-proto", proto),
                ("x-forwarded-host", host),
                ("x-forwarded-port", port),
            ]);
            (server_port(&info), host_of(&map).to_string())
        };
        assert_eq!(
            port_and_host("https", "shop.example", "443"),
            (443, "shop.example".into())
        );
        assert_eq!(
            port_and_host("http", "shop.example", "80"),
            (80, "shop.example".into())
        );
        assert_eq!(
            port_and_host("http", "shop.example", "443"),
            (443, "shop.example:443".into())
        );
        // A port the host names is the one the client used.
        assert_eq!(
            port_and_host("https", "shop.example:9443", "443"),
            (443, "shop.example:9443".into())
        );
        assert_eq!(
            port_and_host("https", "[2001:db8::1]", "8443"),
            (8443, "[2001:db8::1]:8443".into())
        );
        // Without X-Forwarded-Host the port joins the Host the proxy sent.
        let (info, map) =
            applied_with_host_headers(&[("host", "shop.example"), ("x-forwarded-port", "8080")]);
        assert_eq!(
            (server_port(&info), host_of(&map)),
            (8080, "shop.example:8080")
        );
    }

    #[test]
    fn host_lists_align_with_the_address_list_or_take_the_last() {
        let (_, map) = applied_with_host_headers(&[
            ("x-forwarded-for", "203.0.113.9, 10.0.0.2"),
            ("x-forwarded-proto", "https, http"),
            ("x-forwarded-host", "shop.example, inner.internal"),
            ("x-forwarded-port", "443, 8000"),
        ]);
        assert_eq!(host_of(&map), "shop.example");
        let (info, map) = applied_with_host_headers(&[
            ("x-forwarded-for", "203.0.113.9, 10.0.0.2"),
            (
                "x-forwarded-host",
                "evil.example, shop.example, inner.internal",
            ),
            ("x-forwarded-port", "8443"),
        ]);
        assert_eq!(host_of(&map), "inner.internal:8443");
        assert_eq!(server_port(&info), 8443);
    }

    #[test]
    fn malformed_host_port_and_prefix_are_ignored() {
        for host in [
            "evil.example/path",
            "user@evil.example",
            "evil.example:http",
            "evil.example:99999",
            "evil.example:0",
            "evil example",
            "2001:db8::1",
            "[2001:db8::zz]",
            ":8000",
            "",
        ] {
            let (_, map) = applied_with_host_headers(&[
                ("host", "127.0.0.1:8000"),
                ("x-forwarded-host", host),
            ]);
            assert_eq!(host_of(&map), "127.0.0.1:8000", "{host:?}");
        }
        for port in ["", "http", "-1", "0", "65536", "8443x", "+80", "123456"] {
            let (info, map) =
                applied_with_host_headers(&[("host", "shop.example"), ("x-forwarded-port", port)]);
            assert_eq!(
                (server_port(&info), host_of(&map)),
                (8000, "shop.example"),
                "{port:?}"
            );
        }
        for prefix in [
            "shop",
            "/shop/../admin",
            "//evil.example",
            "/a\tb",
            "/shop?next=x",
        ] {
            let (info, _) = applied_with_host_headers(&[("x-forwarded-prefix", prefix)]);
            assert_eq!(prefix_of(&info), None, "{prefix:?}");
        }
    }

    #[test]
    fn with_forwarded_its_host_counts_and_the_prefix_still_applies() {
        let (info, map) = host_headers_as(
            ProxyHeaderFormat::Forwarded,
            &[
                ("forwarded", "for=203.0.113.9;host=shop.example;proto=https"),
                ("x-forwarded-host", "other.example"),
                ("x-forwarded-port", "8443"),
                ("x-forwarded-prefix", "/shop"),
            ],
        );
        assert_eq!(host_of(&map), "shop.example");
        assert_eq!(server_port(&info), 8000);
        assert_eq!(prefix_of(&info), Some("/shop"));
    }

    #[test]
    fn on_a_unix_socket_the_forwarded_port_reaches_the_app_through_host() {
        let proxy = ProxyHeaders::new(
            TrustedProxies::parse("unix").unwrap(),
            ProxyHeaderFormat::XForwarded,
            true,
        );
        let mut map = header_map(&[("host", "shop.example"), ("x-forwarded-port", "8080")]);
        let mut info = ConnectionInfo {
            server: ServerAddr::Unix(Arc::from(Path::new("/run/app.sock"))),
            ..info(None)
        };
        proxy.apply(&mut info, &mut map);
        assert_eq!(host_of(&map), "shop.example:8080");
        assert!(matches!(info.server, ServerAddr::Unix(_)));
    }
}
