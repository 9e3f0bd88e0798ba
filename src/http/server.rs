//! The accept loop and hyper's connection builder, with graceful shutdown.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::service::{handle, Peers};
use crate::bridge::Bridge;
use crate::config::Config;
use crate::net::Listener;
use crate::ws::{Registry, WsSettings};
use crate::wsgi::Pool;

/// How long the accept loop pauses after an accept error such as running out
/// of file descriptors, so it does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// How often shutdown checks whether the last WebSocket has closed.
const SHUTDOWN_POLL: Duration = Duration::from_millis(20);

/// How long WebSockets get to exchange close frames (1012) at shutdown.
const WEBSOCKET_CLOSE_WAIT: Duration = Duration::from_secs(2);

/// What every connection of a worker shares.
pub(crate) struct ServerState {
    pub bridge: Arc<Bridge>,
    /// The WSGI pool's queue when the app is WSGI; ASGI requests go to the bridge.
    pub wsgi: Option<Arc<Pool>>,
    pub in_flight: AtomicUsize,
    pub limit_concurrency: Option<usize>,
    pub limit_request_body: Option<u64>,
    pub access_log: bool,
    pub server_header: bool,
    pub extra_headers: Vec<(HeaderName, HeaderValue)>,
    /// WebSocket settings when upgrades are served (ASGI apps, `--ws auto`).
    pub ws: Option<WsSettings>,
    pub websockets: Arc<Registry>,
}

impl ServerState {
    pub(crate) fn new(
        config: &Config,
        bridge: Arc<Bridge>,
        wsgi: Option<Arc<Pool>>,
    ) -> ServerState {
        let wsgi_is_none = wsgi.is_none();
        ServerState {
            bridge,
            wsgi,
            in_flight: AtomicUsize::new(0),
            limit_concurrency: config.limit_concurrency,
            limit_request_body: config.limit_request_body,
            access_log: config.access_log,
            server_header: config.server_header,
            extra_headers: config.headers.clone(),
            ws: config.ws.clone().filter(|_| wsgi_is_none),
            websockets: Arc::new(Registry::default()),
        }
    }
}

fn connection_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(config.timeout_keep_alive)
        .max_buf_size(config.limit_request_head)
        .auto_date_header(config.date_header);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.limit_request_head).unwrap_or(u32::MAX));
    builder
}

/// A listening socket the accept loop can take connections from.
trait Accept {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    async fn accept_one(&self) -> std::io::Result<(Self::Io, Peers)>;
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;

    async fn accept_one(&self) -> std::io::Result<(Self::Io, Peers)> {
        let (stream, client) = self.accept().await?;
        // Responses are written whole; waiting to coalesce them only adds latency.
        let _ = stream.set_nodelay(true);
        let server = stream.local_addr().ok();
        let peers = Peers {
            client: Some(client),
            server,
        };
        Ok((stream, peers))
    }
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;

    async fn accept_one(&self) -> std::io::Result<(Self::Io, Peers)> {
        let (stream, _) = self.accept().await?;
        let peers = Peers {
            client: None,
            server: None,
        };
        Ok((stream, peers))
    }
}

/// Accepts connections until `shutdown` changes.
async fn accept_loop<A: Accept>(
    listener: A,
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    state: &Arc<ServerState>,
    shutdown: &mut watch::Receiver<Option<Duration>>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept_one() => match accepted {
                Ok((io, peers)) => spawn_connection(builder, graceful, io, peers, state),
                Err(err) => accept_failed(err).await,
            },
            _ = shutdown.changed() => break,
        }
    }
}

/// Accepts connections until `shutdown` carries a grace period, then lets
/// in-flight requests finish for at most that long.
pub(crate) async fn serve(
    listener: Listener,
    config: Arc<Config>,
    state: Arc<ServerState>,
    mut shutdown: watch::Receiver<Option<Duration>>,
) {
    let builder = connection_builder(&config);
    let graceful = GracefulShutdown::new();
    match listener {
        Listener::Tcp(listener) => match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => accept_loop(listener, &builder, &graceful, &state, &mut shutdown).await,
            Err(err) => return unusable_listener(err),
        },
        Listener::Unix(listener, _) => match tokio::net::UnixListener::from_std(listener) {
            Ok(listener) => accept_loop(listener, &builder, &graceful, &state, &mut shutdown).await,
            Err(err) => return unusable_listener(err),
        },
    }
    let grace = (*shutdown.borrow()).unwrap_or_default();
    let websockets = Arc::clone(&state.websockets);
    let drained = async {
        graceful.shutdown().await;
        while websockets.open_count() > 0 {
            tokio::time::sleep(SHUTDOWN_POLL).await;
        }
    };
    tokio::select! {
        _ = drained => tracing::debug!("all connections closed"),
        _ = tokio::time::sleep(grace) => tracing::warn!(
            "Connections still open after --timeout-graceful-shutdown {}s; closing them",
            grace.as_secs_f64()
        ),
    }
    if websockets.open_count() > 0 {
        websockets.close_all();
        let closed = async {
            while websockets.open_count() > 0 {
                tokio::time::sleep(SHUTDOWN_POLL).await;
            }
        };
        let _ = tokio::time::timeout(WEBSOCKET_CLOSE_WAIT, closed).await;
    }
}

fn unusable_listener(err: std::io::Error) {
    tracing::error!("Cannot use the listening socket: {err}");
}

async fn accept_failed(err: std::io::Error) {
    tracing::error!("accept() failed: {err}; retrying (raise the open-file limit if this says 'Too many open files')");
    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
}

fn spawn_connection<I>(
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    io: I,
    peers: Peers,
    state: &Arc<ServerState>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = Arc::clone(state);
    let service = service_fn(move |request| handle(request, peers, Arc::clone(&state)));
    let connection = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .into_owned();
    let connection = graceful.watch(connection);
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(client = ?peers.client, "connection ended: {err}");
        }
    });
}
