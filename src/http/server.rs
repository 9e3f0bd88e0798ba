//! The accept loop, hyper's connection builder, and the worker's shutdown:
//! stop accepting, drain, then close what is left.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::Either;
use futures_util::FutureExt;
use http::{HeaderName, HeaderValue, StatusCode};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use socket2::SockRef;
use std::pin::Pin;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::sync::watch;

use super::accept_failures::{AcceptFailures, Report};
use super::access_log::{self, AccessLog};
use super::connection::{
    self, Activity, Deadlines, OpenConnection, OpenConnections, StreamExecutor, WatchedIo,
};
use super::preface::{self, BadPreface, Protocol};
use super::proxy_headers::{ProxyHeaders, TrustedProxies};
use super::refusals::Refusals;
use super::service::handle;
use super::static_files::StaticFiles;
use crate::asgi::EventBridge;
use crate::config::{Config, HttpEngine};
use crate::metrics::meter::MeteredIo;
use crate::net::proxy_protocol::{self, Refused};
use crate::net::tls::{TlsInfo, TlsServer, ALPN_H2, ALPN_HTTP11};
use crate::net::{ConnectionInfo, Listener, Prefixed, Scheme, Sending, ServerAddr};
use crate::stacks::StackFile;
use crate::supervisor::balance::{WorkerSeat, DEFER_STEP, MAX_DEFER};
use crate::supervisor::Slot;
use crate::ws::{Registry, WsSettings};
use crate::wsgi::Pool;

/// How long the accept loop pauses after an accept error such as running out
/// of file descriptors, so it does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// How often shutdown checks whether the last WebSocket has closed.
const SHUTDOWN_POLL: Duration = Duration::from_millis(20);

/// How long WebSockets whose close handshake (1012, sent as the drain
/// began) is still under way at the end of the grace period get to finish it.
pub(crate) const WEBSOCKET_CLOSE_WAIT: Duration = Duration::from_secs(2);

/// What every connection of a worker shares.
pub(crate) struct ServerState {
    pub bridge: Arc<EventBridge>,
    /// The WSGI pool's queue when the app is WSGI; ASGI requests go to the bridge.
    pub wsgi: Option<Arc<Pool>>,
    /// Some once the worker stops (the grace): from then on an HTTP/1
    /// response says `Connection: close`, since the connection closes
    /// after it. Left to the connection's own drain, a fast response could
    /// go out keep-alive before it noticed, and the connection then close
    /// under the client's next request (a 502 behind nginx).
    pub draining: watch::Receiver<Option<Duration>>,
    pub in_flight: AtomicUsize,
    pub limit_concurrency: Option<usize>,
    /// The 503s of `--limit-concurrency`, for their log lines.
    pub refusals: Arc<Refusals>,
    /// The 504s of `--timeout-request` for WSGI requests that spent their
    /// time waiting for a thread, for their log lines.
    pub thread_waits: Arc<Refusals>,
    pub limit_request_body: Option<u64>,
    /// `--limit-request-head`, for the line of a 431.
    pub limit_request_head: usize,
    /// `None` with `--no-access-log`.
    pub access_log: Option<&'static AccessLog>,
    /// `--request-id`: the header every request's ID travels in.
    pub request_id: Option<HeaderName>,
    pub server_header: bool,
    pub extra_headers: Vec<(HeaderName, HeaderValue)>,
    /// WebSocket settings when upgrades are served (ASGI apps, `--ws auto`).
    pub ws: Option<WsSettings>,
    pub websockets: Arc<Registry>,
    /// The slot shared with the supervisor, which counts requests.
    pub slot: Option<Arc<Slot>>,
    /// With `--metrics-bind`: the slot whose counters this worker keeps (the
    /// supervisor's, or without `--workers` one of its own).
    pub metrics: Option<Arc<Slot>>,
    /// Under a supervisor: this worker's seat in the table the workers
    /// spread connections with.
    pub seat: Option<Arc<WorkerSeat>>,
    pub timeout_request: Option<Duration>,
    /// Where the Python stacks are written for a WSGI thread past
    /// `--timeout-request` (none: to stderr).
    pub stacks: Option<Arc<StackFile>>,
    /// `--timeout-request-body`.
    pub timeout_request_body: Option<Duration>,
    /// Whose proxy headers are believed, and which (`None`: nobody's).
    pub proxy: Option<ProxyHeaders>,
    /// `--proxy-protocol`: whose PROXY header is believed (`None`: connections
    /// carry none).
    pub proxy_protocol: Option<TrustedProxies>,
    /// `--static-map`: files served without the app.
    pub static_files: Option<StaticFiles>,
    /// HTTPS, when a certificate is configured.
    pub tls: Option<TlsServer>,
    /// `--http`: the HTTP versions served.
    pub http: HttpEngine,
    /// App tasks one HTTP/2 connection may have running at once
    /// (`--http2-max-concurrent-streams`).
    pub http2_max_streams: usize,
    /// Whether HTTP/2 streams whose bodies wait unread can shut the
    /// connection's window on one whose app reads (see
    /// [`Http2Settings::connection_window`](crate::config::Http2Settings::connection_window)).
    pub http2_streams_can_starve: bool,
}

impl ServerState {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        config: &Config,
        bridge: Arc<EventBridge>,
        wsgi: Option<Arc<Pool>>,
        slot: Option<Arc<Slot>>,
        metrics: Option<Arc<Slot>>,
        seat: Option<Arc<WorkerSeat>>,
        stacks: Option<Arc<StackFile>>,
        draining: watch::Receiver<Option<Duration>>,
    ) -> std::io::Result<ServerState> {
        let wsgi_is_none = wsgi.is_none();
        let static_files = match &config.static_files {
            Some(settings) => Some(StaticFiles::open(settings)?),
            None => None,
        };
        let tls = match &config.tls {
            Some(settings) => Some(
                settings
                    .load(&config.alpn_protocols())
                    .map_err(std::io::Error::other)?,
            ),
            None => None,
        };
        Ok(ServerState {
            bridge,
            wsgi,
            draining,
            in_flight: AtomicUsize::new(0),
            limit_concurrency: config.limit_concurrency,
            refusals: Arc::default(),
            thread_waits: Arc::default(),
            limit_request_body: config.limit_request_body,
            limit_request_head: config.limit_request_head,
            access_log: config
                .access_log
                .then(|| AccessLog::leak(&config.access_log_format, config.request_id.clone())),
            request_id: config.request_id.clone(),
            server_header: config.server_header,
            extra_headers: config.headers.clone(),
            ws: config.ws.clone().filter(|_| wsgi_is_none),
            websockets: Arc::new(Registry::default()),
            slot,
            metrics,
            seat,
            timeout_request: config.timeout_request,
            stacks,
            timeout_request_body: config.timeout_request_body,
            proxy: config.proxy.clone().map(|trusted| {
                ProxyHeaders::new(
                    trusted,
                    config.proxy_header_format,
                    config.forwarded_host_headers,
                )
            }),
            proxy_protocol: config.proxy_protocol.clone(),
            static_files,
            tls,
            http: config.http,
            http2_max_streams: config.http2.max_concurrent_streams as usize,
            http2_streams_can_starve: config.http2.streams_can_starve(),
        })
    }
}

fn connection_builder(config: &Config) -> auto::Builder<StreamExecutor> {
    let mut builder = auto::Builder::new(StreamExecutor);
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(!config.timeout_keep_alive.is_zero())
        // Our own deadlines (see `connection`) bound a head: the first by
        // --timeout-request-header from accept, later ones by
        // --timeout-keep-alive from the end of the request before, as the
        // connection is idle until a head is whole. hyper's own header timer
        // would only repeat them, at the cost of a timer set and cancelled
        // on every request.
        .header_read_timeout(None)
        .max_buf_size(config.limit_request_head)
        .auto_date_header(config.date_header);
    let http2 = &config.http2;
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(config.http2_keep_alive_interval)
        .keep_alive_timeout(config.http2_keep_alive_timeout)
        .auto_date_header(config.date_header)
        .max_concurrent_streams(http2.max_concurrent_streams)
        // hyper's defaults, pinned so an upgrade cannot loosen them: streams a
        // peer may reset before they are served (rapid reset, CVE-2023-44487),
        // streams it may make us reset ("MadeYouReset", CVE-2025-8671), and
        // the bytes buffered per stream for a peer that does not read.
        .max_pending_accept_reset_streams(Some(HTTP2_MAX_PENDING_ACCEPT_RESETS))
        .max_local_error_reset_streams(Some(HTTP2_MAX_LOCAL_ERROR_RESETS))
        .max_send_buf_size(HTTP2_MAX_SEND_BUFFER)
        // RFC 8441: WebSockets over HTTP/2 (extended CONNECT).
        .enable_connect_protocol()
        .initial_stream_window_size(http2.initial_stream_window_size)
        .initial_connection_window_size(http2.connection_window())
        .max_header_list_size(
            http2
                .max_header_list_size
                .unwrap_or(u32::try_from(config.limit_request_head).unwrap_or(u32::MAX)),
        );
    builder
}

/// Streams an HTTP/2 peer may open and reset before they are served; past it
/// the connection is closed with ENHANCE_YOUR_CALM.
const HTTP2_MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams the server may reset for a peer's errors before it closes the
/// connection.
const HTTP2_MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// Bytes buffered per HTTP/2 stream for a peer that is not reading.
const HTTP2_MAX_SEND_BUFFER: usize = 400 * 1024;

/// hyper's HTTP/1 server alone, configured as the auto builder's, for
/// connections that must not be served HTTP/2 (`--http 1`, or ALPN
/// `http/1.1`): the auto builder would answer an HTTP/2 preface.
fn http1_builder(config: &Config) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(!config.timeout_keep_alive.is_zero())
        .header_read_timeout(None)
        .max_buf_size(config.limit_request_head)
        // max_buf_size bounds the read buffer, not the head: a head over the
        // limit that arrives with the buffer's last read parses, and reaches
        // the app. This measures the parsed head itself, as the limit means.
        .max_header_size(config.limit_request_head)
        .auto_date_header(config.date_header);
    builder
}

/// Which HTTP a connection is served with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Served {
    /// HTTP/1.1, or HTTP/2 when the connection opens with its preface.
    Either,
    Http1,
    /// HTTP/2, its preface checked first.
    Http2,
}

impl Served {
    /// What `--http` allows, narrowed by what ALPN agreed, if anything.
    fn choose(http: HttpEngine, alpn: Option<&[u8]>) -> Served {
        match alpn {
            Some(ALPN_H2) => Served::Http2,
            Some(ALPN_HTTP11) => Served::Http1,
            _ if !http.serves_http2() => Served::Http1,
            _ if !http.serves_http1() => Served::Http2,
            _ => Served::Either,
        }
    }
}

/// A listening socket the accept loop can take connections from.
trait Accept {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// The next connection; with a `seat`, one another worker with fewer
    /// connections does not take first (see [`balance`](crate::supervisor::balance)).
    async fn accept_one(
        &self,
        seat: Option<&WorkerSeat>,
    ) -> std::io::Result<(Self::Io, ConnectionInfo)>;
}

/// Accepts a connection from `listener`, non-blocking and close-on-exec,
/// once one waits; while `seat` says another worker should take it, leaves
/// it to that one, for [`MAX_DEFER`] at most.
async fn accept_from_waiting<L: AsRawFd + AsFd>(
    listener: &AsyncFd<L>,
    seat: Option<&WorkerSeat>,
) -> std::io::Result<(socket2::Socket, socket2::SockAddr)> {
    // Lets the connections' own tasks run between the accepts of a burst (a
    // readiness wait spends no budget by itself). Before the accept, not
    // after it: a select! that drops this future there would drop the
    // connection with it.
    tokio::task::coop::consume_budget().await;
    let mut deferring_since: Option<Instant> = None;
    loop {
        let mut ready = listener.readable().await?;
        // Whether the connection about to be taken was left to the others
        // for MAX_DEFER.
        let mut left_untaken = false;
        if seat.is_some_and(WorkerSeat::should_defer) {
            if !connection_waits(listener.as_raw_fd()) {
                // Another worker took it: wait for the next one.
                ready.clear_ready();
                deferring_since = None;
                continue;
            }
            let since = *deferring_since.get_or_insert_with(Instant::now);
            if since.elapsed() < MAX_DEFER {
                drop(ready);
                tokio::time::sleep(DEFER_STEP).await;
                continue;
            }
            left_untaken = true;
        }
        let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        match ready.try_io(|inner| SockRef::from(inner.get_ref()).accept4(flags)) {
            // Nothing awaited from here on: the connection cannot be lost.
            Ok(Ok(accepted)) => {
                if let Some(seat) = seat {
                    seat.took_connection();
                    if left_untaken {
                        // Nobody took it: the others may be slow to run, or
                        // stuck while they look ready.
                        seat.left_untaken();
                    }
                }
                return Ok(accepted);
            }
            // Not counted as taken: a worker out of file descriptors fails
            // every accept, and must look stuck to the others.
            Ok(Err(err)) => return Err(err),
            // Taken by another worker first; try_io cleared the readiness.
            Err(_would_block) => deferring_since = None,
        }
    }
}

/// Whether a connection waits in the accept queue of listening socket `fd`.
fn connection_waits(fd: RawFd) -> bool {
    let mut waiting = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, and a zero timeout: poll only reads the
    // socket's state.
    let ready = unsafe { libc::poll(&mut waiting, 1, 0) };
    ready > 0 && waiting.revents & libc::POLLIN != 0
}

/// A TCP listening socket.
struct TcpAcceptor(AsyncFd<std::net::TcpListener>);

impl Accept for TcpAcceptor {
    type Io = Sending<tokio::net::TcpStream>;

    async fn accept_one(
        &self,
        seat: Option<&WorkerSeat>,
    ) -> std::io::Result<(Self::Io, ConnectionInfo)> {
        let (socket, client) = accept_from_waiting(&self.0, seat).await?;
        let stream = tokio::net::TcpStream::from_std(socket.into())?;
        let client = client.as_socket().ok_or_else(|| {
            std::io::Error::other("a TCP listener accepted a peer with no IP address")
        })?;
        // Responses are written whole; waiting to coalesce them only adds latency.
        let _ = stream.set_nodelay(true);
        let server = stream.local_addr()?;
        let info = ConnectionInfo {
            scheme: Scheme::Http,
            client: Some(client),
            server: ServerAddr::Tcp(server),
            forwarded_prefix: None,
            relayed: false,
            tls: None,
        };
        Ok((Sending::new(stream), info))
    }
}

/// A Unix listener with the path it is bound to, which the scope reports.
struct UnixAcceptor {
    listener: AsyncFd<std::os::unix::net::UnixListener>,
    path: Arc<std::path::Path>,
}

impl Accept for UnixAcceptor {
    type Io = Sending<tokio::net::UnixStream>;

    async fn accept_one(
        &self,
        seat: Option<&WorkerSeat>,
    ) -> std::io::Result<(Self::Io, ConnectionInfo)> {
        let (socket, _) = accept_from_waiting(&self.listener, seat).await?;
        let stream = tokio::net::UnixStream::from_std(OwnedFd::from(socket).into())?;
        let info = ConnectionInfo {
            scheme: Scheme::Http,
            client: None,
            server: ServerAddr::Unix(Arc::clone(&self.path)),
            forwarded_prefix: None,
            relayed: false,
            tls: None,
        };
        Ok((Sending::new(stream), info))
    }
}

/// Stops a supervised ASGI worker from accepting while its event loop is
/// blocked (a blocking call in async code): connections it accepted then
/// would wait for the loop, while the other workers, which accept from the
/// same socket, can serve them now. Read from the heartbeat the loop writes
/// into the slot it shares with the supervisor.
struct AcceptGate {
    slot: Arc<Slot>,
    /// A loop whose heartbeat is this late is blocked.
    stalled_after: Duration,
    paused: AtomicBool,
}

/// How often a worker whose loop is blocked checks whether it runs again,
/// and how often the accept loop checks the heartbeat while idle.
const ACCEPT_GATE_POLL: Duration = Duration::from_millis(100);

impl AcceptGate {
    /// Whether accepting is paused; logs when that changes (once, whichever
    /// listener notices first).
    fn paused(&self) -> bool {
        let silent = self.slot.since_beat();
        let stalled = silent > self.stalled_after;
        if self.paused.swap(stalled, Ordering::Relaxed) != stalled {
            if stalled {
                tracing::warn!(
                    "The event loop has not run for {:.1}s (a blocking call in async code?); \
                     not accepting new connections until it does, so that other workers take them",
                    silent.as_secs_f64()
                );
            } else {
                tracing::info!("The event loop runs again; accepting connections");
            }
        }
        stalled
    }
}

/// What the accept loop hands every connection it starts.
struct ConnectionContext {
    gate: Option<AcceptGate>,
    builder: auto::Builder<StreamExecutor>,
    deadlines: Deadlines,
    open: Arc<OpenConnections>,
    draining: watch::Receiver<Option<Duration>>,
    state: Arc<ServerState>,
    /// For connections served HTTP/1.1 only.
    http1: http1::Builder,
}

/// Accepts connections until `shutdown` changes.
async fn accept_loop<A: Accept>(
    listener: A,
    context: &Arc<ConnectionContext>,
    shutdown: &mut watch::Receiver<Option<Duration>>,
) {
    let seat = context.state.seat.as_deref();
    let mut failures = AcceptFailures::default();
    let Some(gate) = &context.gate else {
        loop {
            tokio::select! {
                accepted = listener.accept_one(seat) => match accepted {
                    Ok((io, info)) => {
                        accept_works(&mut failures);
                        spawn_connection(context, io, info);
                    }
                    Err(err) => accept_failed(err, seat, &mut failures).await,
                },
                _ = shutdown.changed() => break,
            }
        }
        return;
    };
    let mut poll = tokio::time::interval(ACCEPT_GATE_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let open = !gate.paused();
        if let Some(seat) = seat {
            // The other workers take connections instead of leaving them to us.
            seat.set_accepting(open);
        }
        tokio::select! {
            // Accept is cancel-safe: a tick that wins loses no connection.
            accepted = listener.accept_one(seat), if open => match accepted {
                Ok((io, info)) => {
                    accept_works(&mut failures);
                    spawn_connection(context, io, info);
                }
                Err(err) => accept_failed(err, seat, &mut failures).await,
            },
            _ = poll.tick() => {}
            _ = shutdown.changed() => break,
        }
    }
}

/// Accepts connections until `shutdown` carries a grace period, then lets
/// in-flight requests finish for at most that long; a second change of
/// `shutdown` (a second signal) ends the wait at once. Connections still
/// open when this returns are closed by dropping the runtime.
pub(crate) async fn serve(
    listeners: Vec<Listener>,
    config: Arc<Config>,
    state: Arc<ServerState>,
    mut shutdown: watch::Receiver<Option<Duration>>,
) {
    let gate = match (&state.slot, &state.wsgi) {
        // A WSGI app runs on its own threads; the loop plays no part.
        (Some(slot), None) => Some(AcceptGate {
            slot: Arc::clone(slot),
            stalled_after: config.supervision.heartbeat_interval() * 2,
            paused: AtomicBool::new(false),
        }),
        _ => None,
    };
    let context = Arc::new(ConnectionContext {
        gate,
        builder: connection_builder(&config),
        http1: http1_builder(&config),
        deadlines: Deadlines {
            request_header: config.timeout_request_header,
            keep_alive: config.timeout_keep_alive,
            send: config.timeout_send,
            request: config.timeout_request,
        },
        open: Arc::new(OpenConnections::new(state.seat.clone())),
        draining: shutdown.clone(),
        state: Arc::clone(&state),
    });
    let accepting = listeners.into_iter().map(|listener| {
        let mut shutdown = shutdown.clone();
        let context = &context;
        async move { accept_from(listener, context, &mut shutdown).await }
    });
    {
        let _accepting = state.seat.as_deref().map(Accepting::new);
        futures_util::future::join_all(accepting).await;
    }
    let grace = (*shutdown.borrow_and_update()).unwrap_or_default();
    let websockets = Arc::clone(&state.websockets);
    // As uvicorn does: WebSockets have no end of their own to wait for, so
    // they are closed (1012) as the drain begins, and their apps hear of it
    // at once; what the grace period has left goes to their clean-up (a
    // Channels `disconnect()`), which the worker waits for as for any task
    // still running after its connection closed. One opened during the
    // drain (its handshake was waiting for the app) is closed as it opens.
    websockets.close_all();
    let drained = async {
        context.open.all_closed().await;
        while websockets.open_count() > 0 {
            tokio::time::sleep(SHUTDOWN_POLL).await;
        }
    };
    // A stop forced from the start (SIGQUIT, or a second signal before the
    // drain began) comes with no grace, short of --timeout-graceful-shutdown's:
    // nothing is waited for, and the log must not blame that setting.
    let forced = if grace < config.timeout_graceful_shutdown {
        if context.open.count() > 0 || websockets.open_count() > 0 {
            tracing::warn!(
                "Closing the connections still open: the shutdown is forced (SIGQUIT, or a \
                 second stop signal)"
            );
        }
        true
    } else {
        tokio::select! {
            // With nothing open, a grace of 0 is no wait cut short.
            biased;
            _ = drained => {
                tracing::debug!("all connections closed");
                false
            }
            _ = tokio::time::sleep(grace) => {
                tracing::warn!(
                    "Connections still open after --timeout-graceful-shutdown {}s; closing them",
                    grace.as_secs_f64()
                );
                false
            }
            _ = shutdown.changed() => true,
        }
    };
    // Close handshakes still under way (a client slow to answer, or one
    // opened late in a short grace period) get a bounded while more.
    if !forced && websockets.open_count() > 0 {
        let closed = async {
            while websockets.open_count() > 0 {
                tokio::time::sleep(SHUTDOWN_POLL).await;
            }
        };
        tokio::select! {
            _ = tokio::time::timeout(WEBSOCKET_CLOSE_WAIT, closed) => {}
            _ = shutdown.changed() => {}
        }
    }
    access_log::connections_cut_off();
}

/// Says in the worker's seat that it accepts connections, until dropped.
struct Accepting<'a>(&'a WorkerSeat);

impl<'a> Accepting<'a> {
    fn new(seat: &'a WorkerSeat) -> Accepting<'a> {
        seat.set_accepting(true);
        Accepting(seat)
    }
}

impl Drop for Accepting<'_> {
    fn drop(&mut self) {
        self.0.set_accepting(false);
    }
}

/// Runs the accept loop of one listening socket until `shutdown` changes.
async fn accept_from(
    listener: Listener,
    context: &Arc<ConnectionContext>,
    shutdown: &mut watch::Receiver<Option<Duration>>,
) {
    match listener {
        Listener::Tcp(listener) => match watch_listener(listener) {
            Ok(listener) => accept_loop(TcpAcceptor(listener), context, shutdown).await,
            Err(err) => unusable_listener(err),
        },
        Listener::Unix(listener, unix) => match watch_listener(listener) {
            Ok(listener) => {
                let acceptor = UnixAcceptor {
                    listener,
                    path: Arc::clone(&unix.path),
                };
                accept_loop(acceptor, context, shutdown).await;
                // The listening socket is closed now: nothing can connect
                // through the file any more, which goes as `unix` is dropped.
                drop(unix);
            }
            Err(err) => unusable_listener(err),
        },
    }
}

/// A std listening socket, which owns its descriptor from creation to drop.
trait StdListener: AsRawFd {}

impl StdListener for std::net::TcpListener {}
impl StdListener for std::os::unix::net::UnixListener {}

/// Registers a listening socket with the reactor (every way of getting one,
/// bound or inherited, has made it non-blocking).
fn watch_listener<L: StdListener>(listener: L) -> std::io::Result<AsyncFd<L>> {
    // SAFETY: a std listener owns its descriptor, open and the same until
    // the listener (here, the AsyncFd that takes it) is dropped.
    unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) }
        .map_err(std::io::Error::from)
}

fn unusable_listener(err: std::io::Error) {
    tracing::error!("Cannot use the listening socket: {err}");
}

/// Logs a failed accept (see [`super::accept_failures`]) and pauses before the
/// next. Meanwhile the worker's seat says it does not accept, so that the
/// others take the connections instead of leaving them to it (out of file
/// descriptors, it would fail each one).
async fn accept_failed(
    err: std::io::Error,
    seat: Option<&WorkerSeat>,
    failures: &mut AcceptFailures,
) {
    match failures.failed(Instant::now()) {
        Some(Report::First) => tracing::error!(
            "accept() failed: {err}; retrying every {} ms{}",
            ACCEPT_ERROR_PAUSE.as_millis(),
            accept_error_hint(&err)
        ),
        Some(Report::StillFailing {
            failures: more,
            for_,
        }) => tracing::error!(
            "accept() failed: {err}; {more} more failures since the last line, failing \
             for {:.0}s now; still retrying",
            for_.as_secs_f64()
        ),
        _ => {}
    }
    if let Some(seat) = seat {
        seat.set_accepting(false);
    }
    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
    if let Some(seat) = seat {
        seat.set_accepting(true);
    }
}

/// What an operator can do about an accept error, for the log line.
fn accept_error_hint(err: &std::io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::EMFILE) => {
            "; the worker has as many open files as its limit allows: raise the limit \
             (ulimit -n, or LimitNOFILE= in a systemd unit)"
        }
        Some(libc::ENFILE) => "; the whole system is out of open files (fs.file-max)",
        Some(libc::ENOBUFS | libc::ENOMEM) => "; the system is short of memory for sockets",
        _ => "",
    }
}

/// Logs the end of a run of failed accepts, if the accept that worked
/// ended one.
fn accept_works(failures: &mut AcceptFailures) {
    if !failures.failing() {
        return;
    }
    if let Some(Report::Recovered {
        failures: count,
        lasted,
    }) = failures.succeeded(Instant::now())
    {
        tracing::info!(
            "accept() works again, after {count} failed attempts over {:.1}s",
            lasted.as_secs_f64()
        );
    }
}

fn spawn_connection<I>(context: &Arc<ConnectionContext>, mut io: I, mut info: ConnectionInfo)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let open = context.open.open();
    // Counts from accept: --timeout-request-header bounds a PROXY header and
    // the first request head together.
    let activity = Activity::new(&context.deadlines);
    let state = &context.state;
    let served = Served::choose(state.http, None);
    if state.proxy_protocol.is_none() && state.tls.is_none() && served == Served::Http1 {
        tokio::spawn(serve_connection(context, open, activity, io, info, served));
        return;
    }
    let deadline = tokio::time::Instant::now() + context.deadlines.request_header;
    let context = Arc::clone(context);
    if state.proxy_protocol.is_none() && state.tls.is_none() {
        // Cleartext HTTP/1.1 or HTTP/2: a small task to tell which (without
        // room for a TLS handshake), then the connection's own.
        tokio::spawn(async move {
            serve_as(&context, open, activity, io, info, deadline, served).await;
        });
        return;
    }
    tokio::spawn(async move {
        if context.state.proxy_protocol.is_none() {
            return serve_tls(&context, open, activity, io, info, deadline).await;
        }
        let (header, rest) = match read_proxy_header(&context, &mut io, deadline).await {
            Ok(read) => read,
            Err(why) => return refused_connection(&info, &why),
        };
        let peer = info.client.map(|client| client.ip());
        match &context.state.proxy_protocol {
            Some(trusted) if trusted.trusts(peer) => header.apply(&mut info),
            _ => untrusted_proxy_header(&info),
        }
        // HAProxy sends its header before the TLS ClientHello.
        let io = Prefixed::new(rest, io);
        serve_tls(&context, open, activity, io, info, deadline).await;
    });
}

/// The first byte of a TLS connection: a handshake record (RFC 8446 §5.1).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The answer to plain HTTP sent to a TLS port: a page the user can read
/// (as nginx gives), rather than a TLS alert their browser shows as a
/// garbled download or a protocol error.
const PLAIN_HTTP_TO_TLS: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Length: 74\r\n\
Connection: close\r\n\r\n\
400 Bad Request: this port speaks HTTPS. Use an https:// address instead.\n";

/// Completes the TLS handshake (by `deadline`, which `--timeout-request-header`
/// sets from accept, like a first request head), then serves the connection.
/// A client that fails the handshake or never finishes it costs a debug line;
/// one that speaks plain HTTP is answered 400.
async fn serve_tls<I>(
    context: &ConnectionContext,
    open: OpenConnection,
    activity: Arc<Activity>,
    mut io: I,
    mut info: ConnectionInfo,
    deadline: tokio::time::Instant,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(tls) = &context.state.tls else {
        let served = Served::choose(context.state.http, None);
        return serve_as(context, open, activity, io, info, deadline, served).await;
    };
    let mut first = bytes::BytesMut::with_capacity(4096);
    // Like the other first bytes of a connection: no longer than a request
    // is waited for once the server shuts down.
    match ready_by(context, deadline, io.read_buf(&mut first)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {
            tracing::debug!(client = %info.client_for_log(), "closed before its TLS handshake");
            return;
        }
        Ok(Ok(_)) => {}
        Err(NotReady::TimedOut) => return handshake_timed_out(&info, context),
        Err(NotReady::ShuttingDown) => return shut_before_a_request(&info),
    }
    if first[0] != TLS_HANDSHAKE_RECORD && first[0].is_ascii_uppercase() {
        tracing::debug!(client = %info.client_for_log(), "plain HTTP sent to the TLS port; answered 400");
        let answered = async {
            io.write_all(PLAIN_HTTP_TO_TLS).await?;
            io.shutdown().await
        };
        let _ = tokio::time::timeout_at(deadline, answered).await;
        return;
    }
    let io = Prefixed::new(first.freeze(), io);
    let stream = match ready_by(context, deadline, tls.acceptor.accept(io)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => {
            tracing::debug!(client = %info.client_for_log(), "TLS handshake failed: {err}");
            return;
        }
        Err(NotReady::TimedOut) => return handshake_timed_out(&info, context),
        Err(NotReady::ShuttingDown) => return shut_before_a_request(&info),
    };
    info.scheme = Scheme::Https;
    let session = stream.get_ref().1;
    let served = Served::choose(context.state.http, session.alpn_protocol());
    info.tls = Some(Arc::new(TlsInfo::of(
        session,
        Some(Arc::clone(&tls.server_cert)),
    )));
    serve_as(context, open, activity, stream, info, deadline, served).await;
}

/// The debug line for a client that did not finish its TLS handshake in time.
fn handshake_timed_out(info: &ConnectionInfo, context: &ConnectionContext) {
    tracing::debug!(
        client = %info.client_for_log(),
        "no TLS handshake within --timeout-request-header {}s; closed",
        context.deadlines.request_header.as_secs_f64()
    );
}

/// Serves a connection as `served` says. One that must speak HTTP/2 (ALPN
/// `h2`, or `--http 2`) is served once its preface has arrived (by
/// `deadline`); a wrong one gets GOAWAY(PROTOCOL_ERROR), as RFC 9113 §3.4
/// asks and hyper's HTTP/2 server does not do. One that may speak either is
/// served as its first bytes say.
///
/// The connection is served by a task of its own: the one that got it ready
/// (PROXY header, TLS handshake, preface) ends, and with it the memory its
/// futures held, which an idle keep-alive connection would otherwise keep.
async fn serve_as<I>(
    context: &ConnectionContext,
    open: OpenConnection,
    activity: Arc<Activity>,
    mut io: I,
    info: ConnectionInfo,
    deadline: tokio::time::Instant,
    served: Served,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match served {
        Served::Http1 => {
            tokio::spawn(serve_connection(context, open, activity, io, info, served));
            return;
        }
        Served::Either => {
            match ready_by(context, deadline, preface::sniff(&mut io)).await {
                Ok(Ok((read, protocol))) => {
                    if info.tls.is_none() && read.starts_with(&[TLS_HANDSHAKE_RECORD, 3]) {
                        tls_on_plain_port(&info);
                    }
                    let served = match protocol {
                        Protocol::Http1 => Served::Http1,
                        Protocol::Http2 => Served::Http2,
                    };
                    let io = Prefixed::new(read, io);
                    tokio::spawn(serve_connection(context, open, activity, io, info, served));
                }
                Ok(Err(_)) => {
                    tracing::debug!(client = %info.client_for_log(), "closed before its first request");
                }
                Err(NotReady::TimedOut) => tracing::debug!(
                    client = %info.client_for_log(),
                    "no request within --timeout-request-header {}s; closed",
                    context.deadlines.request_header.as_secs_f64()
                ),
                Err(NotReady::ShuttingDown) => tracing::debug!(
                    client = %info.client_for_log(),
                    "no request yet, and the server is shutting down; closed"
                ),
            }
            return;
        }
        Served::Http2 => {}
    }
    match ready_by(context, deadline, preface::check(&mut io)).await {
        Ok(Ok(read)) => {
            let io = Prefixed::new(read, io);
            tokio::spawn(serve_connection(context, open, activity, io, info, served));
        }
        Ok(Err(BadPreface::Invalid)) => {
            tracing::debug!(client = %info.client_for_log(), "not an HTTP/2 connection preface; sent GOAWAY");
        }
        Ok(Err(BadPreface::Closed)) => {
            tracing::debug!(client = %info.client_for_log(), "closed before its HTTP/2 connection preface");
        }
        Err(NotReady::TimedOut) => tracing::debug!(
            client = %info.client_for_log(),
            "no HTTP/2 connection preface within --timeout-request-header {}s; closed",
            context.deadlines.request_header.as_secs_f64()
        ),
        Err(NotReady::ShuttingDown) => shut_before_a_request(&info),
    }
}

/// The debug line for a connection closed at shutdown before its first request.
fn shut_before_a_request(info: &ConnectionInfo) {
    tracing::debug!(
        client = %info.client_for_log(),
        "no request yet, and the server is shutting down; closed"
    );
}

/// Hands `io` to hyper; the returned future serves it until it closes.
fn serve_connection<I>(
    context: &ConnectionContext,
    open: OpenConnection,
    activity: Arc<Activity>,
    io: I,
    info: ConnectionInfo,
    served: Served,
) -> impl std::future::Future<Output = ()> + Send + 'static
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Each request's future, which the service returns.
    let request = {
        let state = Arc::clone(&context.state);
        let activity = Arc::clone(&activity);
        let info = info.clone();
        move |request: hyper::Request<hyper::body::Incoming>| {
            let deadline = state
                .timeout_request
                .map(|limit| tokio::time::Instant::now() + limit);
            let active = activity.begin(deadline, hyper::body::Body::is_end_stream(request.body()));
            handle(request, info.clone(), Arc::clone(&state), active)
        }
    };
    let deadlines = context.deadlines;
    let draining = context.draining.clone();
    let io = WatchedIo::new(
        MeteredIo::new(io, context.state.metrics.clone()),
        Arc::clone(&activity),
        served == Served::Http1,
    );
    let driven = if served == Served::Http1 {
        let connection = Box::pin(
            context
                .http1
                .serve_connection(TokioIo::new(io), service_fn(request))
                .with_upgrades(),
        );
        Either::Left(async move {
            let graceful = |connection: Pin<&mut _>| {
                hyper::server::conn::http1::UpgradeableConnection::graceful_shutdown(connection)
            };
            connection::drive(connection, graceful, activity, deadlines, draining)
                .await
                .map(|ended| ended.map_err(BoxError::from))
        })
    } else {
        // Boxed here: hyper hands each HTTP/2 stream, which holds the
        // request's future (about 1.7 KB), to the executor (see
        // `connection::WithStreams`) and moves it whole several times on the
        // way; a box moves as a pointer. (HTTP/1 keeps one in-flight future
        // in a box of hyper's own, filled once per request.)
        let service = service_fn(move |head| Box::pin(request(head)));
        let connection = Box::pin(
            context
                .builder
                .serve_connection_with_upgrades(TokioIo::new(io), service)
                .into_owned(),
        );
        Either::Right(async move {
            connection::drive(
                connection,
                |connection| connection.graceful_shutdown(),
                activity,
                deadlines,
                draining,
            )
            .await
        })
    };
    let state = Arc::clone(&context.state);
    // A map rather than an async block awaiting `driven`: that would hold the
    // connection's future twice (as captured, and as awaited), some 1.8 KB
    // more in every open connection's task.
    driven.map(move |driven| {
        let _open = open;
        let Some(Err(err)) = driven else {
            return;
        };
        match refused_head(&*err, state.limit_request_head) {
            Some((status, reason)) => {
                match state.access_log {
                    Some(log) => {
                        access_log::refused_head(log, info.client_for_log(), status, &reason)
                    }
                    None => tracing::debug!(client = %info.client_for_log(), "answered {status}: {reason}"),
                }
                if let Some(slot) = &state.metrics {
                    slot.counters().record_refused(status);
                }
            }
            None => tracing::debug!(client = %info.client_for_log(), "connection ended: {err}"),
        }
    })
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The answer hyper sent on its own to an HTTP/1 request head it refused,
/// and why, from the error the connection ended with: 400 for a head that
/// does not parse, 431 for one over `--limit-request-head`, 414 for a target
/// over hyper's own 64 KiB. `None` when the connection ended some other
/// way, hyper having sent nothing (an HTTP/2 preface on a connection served
/// as HTTP/1 only is one).
///
/// hyper's 431 has three causes it tells apart neither in its error nor in
/// its text, and whose bytes are gone by then: a head over `limit` bytes,
/// more than its fixed 100 header fields, and a Content-Length too large to
/// count (over 2^64 - 3; one too long to be a number at all is a 400). The
/// line names all three, for the operator to know which option to look at.
fn refused_head(
    error: &(dyn std::error::Error + 'static),
    limit: usize,
) -> Option<(StatusCode, String)> {
    let error = error.downcast_ref::<hyper::Error>()?;
    if !error.is_parse() || error.is_parse_version_h2() || error.is_parse_status() {
        return None;
    }
    let reason = error.to_string();
    // hyper's internal parse error is the one it answers nothing to.
    if reason.starts_with("internal error") {
        return None;
    }
    let status = if !error.is_parse_too_large() {
        StatusCode::BAD_REQUEST
    } else if reason == "URI too long" {
        // hyper tells this one from a head over the limit only in its text.
        StatusCode::URI_TOO_LONG
    } else {
        return Some((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "{reason}: over --limit-request-head {limit} bytes, over 100 header fields, or a \
                 Content-Length over 2^64 - 3"
            ),
        ));
    };
    Some((status, reason))
}

/// Why a connection's PROXY header was not read: [`Refused`], or the two
/// deadlines the server sets.
enum NoHeader {
    Refused(Refused),
    /// None within `--timeout-request-header`.
    TimedOut(Duration),
    /// None by the time the server, shutting down, stopped waiting.
    ShuttingDown,
}

impl std::fmt::Display for NoHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoHeader::Refused(refused) => write!(f, "{refused}"),
            NoHeader::TimedOut(limit) => write!(
                f,
                "no PROXY header within --timeout-request-header {}s",
                limit.as_secs_f64()
            ),
            NoHeader::ShuttingDown => {
                write!(f, "no PROXY header yet, and the server is shutting down")
            }
        }
    }
}

/// Reads the PROXY header `io` begins with, by `deadline`; returns it and
/// the bytes that followed it. The server shutting down waits for it as for
/// a request not started yet (see `connection`), not for the whole deadline.
async fn read_proxy_header<I>(
    context: &ConnectionContext,
    io: &mut I,
    deadline: tokio::time::Instant,
) -> Result<(proxy_protocol::ProxyHeader, bytes::Bytes), NoHeader>
where
    I: AsyncRead + Unpin,
{
    match ready_by(context, deadline, proxy_protocol::read_header(io)).await {
        Ok(header) => header.map_err(NoHeader::Refused),
        Err(NotReady::TimedOut) => Err(NoHeader::TimedOut(context.deadlines.request_header)),
        Err(NotReady::ShuttingDown) => Err(NoHeader::ShuttingDown),
    }
}

/// Why a connection's first bytes were not waited for any longer.
enum NotReady {
    /// `--timeout-request-header` ran out.
    TimedOut,
    /// The server is shutting down, and has waited as long for them as it
    /// waits for a new request on an idle connection.
    ShuttingDown,
}

/// `reading`'s output, if it is ready by `deadline` and before the server,
/// shutting down, stops waiting.
async fn ready_by<F: std::future::Future>(
    context: &ConnectionContext,
    deadline: tokio::time::Instant,
    reading: F,
) -> Result<F::Output, NotReady> {
    let mut draining = context.draining.clone();
    let shutting_down = async move {
        // An error means the worker is gone; nothing is left to wait for.
        let _ = draining.wait_for(Option::is_some).await;
        tokio::time::sleep(connection::DRAIN_REQUEST_WAIT).await;
    };
    tokio::select! {
        read = tokio::time::timeout_at(deadline, reading) => read.map_err(|_| NotReady::TimedOut),
        _ = shutting_down => Err(NotReady::ShuttingDown),
    }
}

/// Set once a worker has warned of a TLS handshake on a plain-HTTP port.
static WARNED_TLS_ON_PLAIN: AtomicBool = AtomicBool::new(false);

/// A TLS ClientHello where rsasgi speaks plain HTTP: hyper answers it 400
/// ("invalid HTTP method parsed"), which does not say what went wrong. Most
/// often a proxy sends to an `https://` upstream (or a browser to an
/// `https://` address) that rsasgi serves without --ssl-certfile: worth a
/// warning the first time, debug after (any client can send one).
fn tls_on_plain_port(info: &ConnectionInfo) {
    let message = "a TLS handshake came to this plain-HTTP port and gets a 400: is a proxy's \
                   upstream https:// (proxy_pass https://...) where rsasgi serves http://, or \
                   should rsasgi have --ssl-certfile?";
    if WARNED_TLS_ON_PLAIN.swap(true, Ordering::Relaxed) {
        tracing::debug!(client = %info.client_for_log(), "{message}");
    } else {
        tracing::warn!(client = %info.client_for_log(), "{message} (said once per worker; later ones at debug)");
    }
}

/// Set once a worker has warned that a connection sent no PROXY header, or
/// a header from a peer not trusted: each such warning is a misconfiguration
/// worth one line, and its repeats go to the debug log.
static WARNED_NO_HEADER: AtomicBool = AtomicBool::new(false);
static WARNED_UNTRUSTED: AtomicBool = AtomicBool::new(false);

/// Logs a connection closed for want of a PROXY header. Bytes that are not
/// one are worth a warning the first time (the proxy is likely not set to
/// send it); a peer that closes or stays silent is what health checks and
/// scanners do, and is logged at debug level only.
fn refused_connection(info: &ConnectionInfo, why: &NoHeader) {
    let peer = info.client_for_log();
    match why {
        NoHeader::Refused(Refused::Invalid(_))
            if !WARNED_NO_HEADER.swap(true, Ordering::Relaxed) =>
        {
            tracing::warn!(
                "Closed a connection from {peer}: {why} (--proxy-protocol is on: is the proxy \
                 set to send one, as HAProxy's send-proxy or nginx's proxy_protocol do?); \
                 further ones are logged at debug level"
            );
        }
        _ => tracing::debug!("closing a connection from {peer}: {why}"),
    }
}

/// Logs a PROXY header whose addresses are ignored because the peer that
/// sent it is not in `--forwarded-allow-ips`.
fn untrusted_proxy_header(info: &ConnectionInfo) {
    let peer = info.client_for_log();
    if WARNED_UNTRUSTED.swap(true, Ordering::Relaxed) {
        tracing::debug!(
            "ignoring the PROXY header of {peer}, which is not in --forwarded-allow-ips"
        );
    } else {
        tracing::warn!(
            "Ignoring the PROXY header of {peer}, which is not in --forwarded-allow-ips: its \
             requests are served as coming from it (add the proxy's address to \
             --forwarded-allow-ips); further ones are logged at debug level"
        );
    }
}
