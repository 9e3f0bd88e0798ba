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
}

impl ConnectionInfo {
    /// The client as an access log line shows it: the peer's address, or the
    /// socket's path on a Unix socket (until proxy headers say who it is).
    pub(crate) fn client_for_log(&self) -> String {
        match (&self.client, &self.server) {
            (Some(client), _) => client.to_string(),
            (None, ServerAddr::Unix(path)) => format!("unix:{}", path.display()),
            (None, ServerAddr::Tcp(_)) => "-".into(),
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
        };
        assert_eq!(tcp.client_for_log(), "127.0.0.1:5000");
        let unix = ConnectionInfo {
            scheme: Scheme::Http,
            client: None,
            server: ServerAddr::Unix(Arc::from(Path::new("/run/app.sock"))),
            tls: None,
        };
        assert_eq!(unix.client_for_log(), "unix:/run/app.sock");
    }
}
