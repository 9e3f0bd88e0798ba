//! What the server knows about one client connection: the scheme it speaks
//! and the two ends, as the ASGI scope, the WSGI environ and the access log
//! report them.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use super::tls::TlsInfo;

/// The URL scheme of requests on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    Http,
    /// TLS, or plain HTTP behind a proxy that terminates TLS and says so.
    Https,
}

impl Scheme {
    /// The scheme of plain HTTP requests (`http` or `https`).
    pub(crate) fn http(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    /// The scheme of WebSocket requests (`ws` or `wss`).
    pub(crate) fn websocket(self) -> &'static str {
        match self {
            Scheme::Http => "ws",
            Scheme::Https => "wss",
        }
    }
}

/// The server's end of a connection.
#[derive(Debug, Clone)]
pub(crate) enum ServerAddr {
    Tcp(SocketAddr),
    /// A Unix domain socket, by the path it is bound to.
    Unix(Arc<Path>),
}

/// One accepted connection, shared by every request on it.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionInfo {
    pub scheme: Scheme,
    /// The peer's address; `None` on a Unix socket, whose peers are unnamed.
    pub client: Option<SocketAddr>,
    pub server: ServerAddr,
    /// What TLS negotiated, on a TLS connection.
    pub tls: Option<Arc<TlsInfo>>,
    /// The path prefix a trusted proxy says the app is mounted under
    /// (`X-Forwarded-Prefix`); set per request, `None` for almost all.
    pub forwarded_prefix: Option<ForwardedPrefix>,
    /// The addresses come from a PROXY protocol header, not the socket: a
    /// `client` of `None` is then a client of the balancer's Unix socket,
    /// not a peer on ours.
    pub relayed: bool,
}

/// A path prefix a trusted proxy says it removed before passing a request
/// on (`X-Forwarded-Prefix`): `/` and plain path characters only, no empty,
/// `.` or `..` segment, no trailing `/`. It goes in front of `--root-path`
/// in the ASGI `root_path` and the WSGI `SCRIPT_NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ForwardedPrefix(Arc<str>);

impl ForwardedPrefix {
    /// `raw` as a prefix, or `None` when it is not a safe one: a value that
    /// could climb out of the mount point (`..`), start a protocol-relative
    /// URL (`//host`) in the links the app builds, or smuggle a query.
    pub(crate) fn parse(raw: &str) -> Option<ForwardedPrefix> {
        let prefix = raw.trim().trim_end_matches('/');
        let plain = |c: char| c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@".contains(c);
        let safe = prefix.starts_with('/')
            && prefix[1..]
                .split('/')
                .all(|segment| !matches!(segment, "" | "." | "..") && segment.chars().all(plain));
        safe.then(|| ForwardedPrefix(Arc::from(prefix)))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// `path` without the prefix when the proxy passed it on after all (it
    /// starts with it, on a segment boundary), else `path` as it is: either
    /// way of mounting an app then gives it the same path.
    pub(crate) fn strip_from<'a>(&self, path: &'a str) -> &'a str {
        match path.strip_prefix(self.as_str()) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
            _ => path,
        }
    }
}

impl ConnectionInfo {
    /// The client as an access log line shows it: the peer's address, or the
    /// socket's path on a Unix socket (until proxy headers say who it is).
    pub(crate) fn client_for_log(&self) -> LoggedClient {
        match (&self.client, &self.server) {
            (Some(client), _) => LoggedClient::Address(*client),
            (None, ServerAddr::Unix(path)) => LoggedClient::Socket(Arc::clone(path)),
            (None, ServerAddr::Tcp(_)) => LoggedClient::Unknown,
        }
    }
}

/// The client of a request as the log shows it; kept as it is (no string
/// made) until a line is written.
#[derive(Debug, Clone)]
pub(crate) enum LoggedClient {
    Address(SocketAddr),
    /// An unnamed peer of the Unix socket at this path.
    Socket(Arc<Path>),
    Unknown,
}

impl LoggedClient {
    /// The client's IP address, when it has one.
    pub(crate) fn ip(&self) -> Option<std::net::IpAddr> {
        match self {
            LoggedClient::Address(address) => Some(address.ip()),
            LoggedClient::Socket(_) | LoggedClient::Unknown => None,
        }
    }
}

impl std::fmt::Display for LoggedClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The address of nearly every access line: written digit by
            // digit, where std's Display (octet by octet through the
            // formatting machinery) took some 1,300 instructions a line.
            LoggedClient::Address(SocketAddr::V4(address))
                if f.width().is_none() && f.precision().is_none() =>
            {
                let mut digits = itoa::Buffer::new();
                for (index, octet) in address.ip().octets().into_iter().enumerate() {
                    if index > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(digits.format(octet))?;
                }
                f.write_str(":")?;
                f.write_str(digits.format(address.port()))
            }
            LoggedClient::Address(address) => address.fmt(f),
            LoggedClient::Socket(path) => write!(f, "unix:{}", path.display()),
            LoggedClient::Unknown => f.write_str("-"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_shows_the_peer_or_the_socket_path() {
        let tcp = ConnectionInfo {
            scheme: Scheme::Http,
            client: Some("127.0.0.1:5000".parse().unwrap()),
            server: ServerAddr::Tcp("127.0.0.1:8000".parse().unwrap()),
            tls: None,
            forwarded_prefix: None,
            relayed: false,
        };
        assert_eq!(tcp.client_for_log().to_string(), "127.0.0.1:5000");
        for address in [
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.20.3.100:80",
            "[::1]:8000",
        ] {
            let client = LoggedClient::Address(address.parse().unwrap());
            assert_eq!(client.to_string(), address);
            assert_eq!(format!("{client:>24}"), format!("{address:>24}"));
        }
        assert_eq!(tcp.client_for_log().ip(), Some([127, 0, 0, 1].into()));
        let unix = ConnectionInfo {
            scheme: Scheme::Http,
            client: None,
            server: ServerAddr::Unix(Arc::from(Path::new("/run/app.sock"))),
            tls: None,
            forwarded_prefix: None,
            relayed: false,
        };
        assert_eq!(unix.client_for_log().to_string(), "unix:/run/app.sock");
        assert_eq!(unix.client_for_log().ip(), None);
    }

    #[test]
    fn a_forwarded_prefix_is_a_plain_path() {
        let prefix = |raw| ForwardedPrefix::parse(raw).map(|p| p.as_str().to_string());
        assert_eq!(prefix("/shop").as_deref(), Some("/shop"));
        assert_eq!(prefix(" /shop/v2/ ").as_deref(), Some("/shop/v2"));
        assert_eq!(prefix("/a-b_c.d~e@f:1").as_deref(), Some("/a-b_c.d~e@f:1"));
        for bad in [
            "",
            "/",
            "shop",
            "//evil.example",
            "/shop//x",
            "/shop/../admin",
            "/..",
            "/./x",
            "/shop?x=1",
            "/shop#x",
            "/caf%C3%A9",
            "/a b",
            "/a\tb",
            "/a\\b",
            "/café",
            "http://x/",
        ] {
            assert_eq!(prefix(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_forwarded_prefix_is_taken_off_a_path_that_still_has_it() {
        let prefix = ForwardedPrefix::parse("/shop").unwrap();
        assert_eq!(prefix.strip_from("/shop/cart"), "/cart");
        assert_eq!(prefix.strip_from("/shop"), "");
        assert_eq!(prefix.strip_from("/cart"), "/cart");
        assert_eq!(prefix.strip_from("/shopping"), "/shopping");
    }
}
