//! Every setting of a worker, its default, and its validation.
//!
//! `cli.rs` turns the command line (and `RSASGI_*` environment variables) into
//! a [`Config`]; the rest of the server only ever reads a `Config`.

use std::fmt::Display;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};

/// Loopback only, as uvicorn does: exposing the app to the network is a choice
/// the user makes with `--host 0.0.0.0`.
pub(crate) const DEFAULT_HOST: &str = "127.0.0.1";

/// The port uvicorn, gunicorn and Django's `runserver` use, so proxy
/// configurations and habits written for them carry over.
pub(crate) const DEFAULT_PORT: u16 = 8000;

/// The current directory, where `python -m` would look for the app too.
pub(crate) const DEFAULT_APP_DIR: &str = ".";

/// uvicorn's and gunicorn's backlog; the kernel lowers it to
/// `net.core.somaxconn` anyway.
pub(crate) const DEFAULT_BACKLOG: u32 = 2048;

/// The largest `--backlog`. `listen(2)` takes an int and Linux silently lowers
/// the value to `net.core.somaxconn` (4096 by default), so anything above the
/// 16-bit range is a typo rather than a plan.
pub(crate) const MAX_BACKLOG: u32 = 65_535;

/// WSGI threads per worker: enough to overlap the I/O waits (database, HTTP
/// calls) of typical Django or Flask views; more mostly adds GIL contention.
pub(crate) const DEFAULT_THREADS: usize = 8;

/// The largest `--threads`. Each thread reserves its own stack and Python
/// thread state; thousands already contend on the GIL far more than they help.
pub(crate) const MAX_THREADS: usize = 4096;

/// The largest `--limit-concurrency`: every request in flight holds a socket,
/// and Linux caps a process at 1,048,576 open files (`fs.nr_open`), so a
/// larger limit could never be reached.
pub(crate) const MAX_CONCURRENCY: usize = 1 << 20;

/// The largest `--limit-request-body`, 1 TiB: a limit is there to refuse
/// something, and above this it refuses nothing a client could upload, so a
/// larger number is a typo.
pub(crate) const MAX_REQUEST_BODY: u64 = 1 << 40;

/// The smallest request-head limit hyper accepts (its read buffer minimum).
pub(crate) const MIN_REQUEST_HEAD: usize = 8192;

/// Room for heavy cookies and tracing headers: twice what nginx accepts by
/// default (4 buffers of 8 KiB), so whatever nginx forwards fits.
pub(crate) const DEFAULT_LIMIT_REQUEST_HEAD: usize = 64 * 1024;

/// The largest `--limit-request-head`, 1 MiB: hyper buffers the whole head in
/// memory for each connection, so a larger limit only lets clients make the
/// server hold more memory.
pub(crate) const MAX_REQUEST_HEAD: usize = 1024 * 1024;

/// uvicorn's idle keep-alive timeout: short enough that idle clients do not
/// pin sockets, long enough for a browser's next request on the same page.
pub(crate) const DEFAULT_TIMEOUT_KEEP_ALIVE: Duration = Duration::from_secs(5);

/// A new connection must send a complete request head within this long, else
/// it is closed. Real clients send a head in one packet even on slow mobile
/// links; only a slowloris-style client needs longer.
pub(crate) const DEFAULT_TIMEOUT_REQUEST_HEADER: Duration = Duration::from_secs(10);

/// `--timeout-send` and `--timeout-request-body`: how long a response or a
/// request body may make no progress on the client's side (nginx's
/// `send_timeout` and `client_body_timeout` are 60 s too).
pub(crate) const DEFAULT_TIMEOUT_SEND: Duration = Duration::from_secs(60);
pub(crate) const DEFAULT_TIMEOUT_REQUEST_BODY: Duration = Duration::from_secs(60);

/// gunicorn's graceful timeout, and how long Kubernetes waits after SIGTERM
/// before it kills a pod by default.
pub(crate) const DEFAULT_TIMEOUT_GRACEFUL_SHUTDOWN: Duration = Duration::from_secs(30);

/// The longest any timeout or interval may be: one day. No server timeout is
/// meaningful beyond that, and the bound keeps every `Instant::now() + timeout`
/// far from overflowing (with 1e19 seconds the first request would panic).
pub(crate) const MAX_SECONDS: Duration = Duration::from_secs(24 * 60 * 60);
/// The longest `--limit-worker-lifetime`.
pub(crate) const MAX_WORKER_LIFETIME: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// uvicorn's (and the `websockets` library's) largest message, 16 MiB.
pub(crate) const DEFAULT_WS_MAX_SIZE: usize = 16 * 1024 * 1024;

/// The largest `--ws-max-size`, 1 GiB: a message is held whole in memory and
/// copied into Python, so beyond this one client could exhaust the worker.
/// It also fits `usize` on 32-bit platforms.
pub(crate) const MAX_WS_MESSAGE_SIZE: usize = 1 << 30;

/// uvicorn's queue of unread WebSocket messages.
pub(crate) const DEFAULT_WS_MAX_QUEUE: usize = 32;

/// The largest `--ws-max-queue`. Each queued message may be `--ws-max-size`
/// bytes; an app thousands of messages behind is not keeping up, and reading
/// the socket further only hides that while memory grows.
pub(crate) const MAX_WS_QUEUE: usize = 4096;

/// uvicorn's ping interval; also well inside nginx's default 60 s
/// `proxy_read_timeout`, so pings keep proxied WebSockets open.
pub(crate) const DEFAULT_WS_PING_INTERVAL: Duration = Duration::from_secs(20);

/// uvicorn's ping timeout: a client that misses it is gone or far too slow.
pub(crate) const DEFAULT_WS_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Daphne's `--application-close-timeout`: how long Channels' own server
/// gives an app after the disconnect (its sends are dropped meanwhile) before
/// it cancels it. A Channels handler has that long to get back to receive().
pub(crate) const DEFAULT_WS_CLOSED_SEND_GRACE: Duration = Duration::from_secs(10);

/// Read and write for everyone, so that nginx running as www-data on the same
/// host can connect to `--uds`; uvicorn also uses 0666. Restrict access with
/// the socket's directory or a tighter mode such as 660.
pub(crate) const DEFAULT_UDS_PERMISSIONS: u32 = 0o666;

/// The largest `--uds-permissions`: read, write and execute for all; the
/// setuid, setgid and sticky bits mean nothing on a socket.
pub(crate) const MAX_UDS_PERMISSIONS: u32 = 0o777;

/// gunicorn's worker timeout: an event loop that has not run for this long
/// is stuck (a blocking call in an async view, an endless loop), and its
/// worker is replaced.
pub(crate) const DEFAULT_TIMEOUT_WORKER_HEALTHCHECK: Duration = Duration::from_secs(30);

/// How long a supervised worker may take to boot (import the app, run the
/// lifespan startup) unless `--timeout-worker-healthcheck` is longer: a
/// lifespan startup that never ends keeps its event loop beating, so only a
/// deadline catches it. hypercorn's `startup_timeout` is 60 s too.
pub(crate) const DEFAULT_TIMEOUT_WORKER_BOOT: Duration = Duration::from_secs(60);

/// The longest gap between two heartbeats of a supervised worker's event loop.
pub(crate) const MAX_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// The largest `--workers`. Each worker is a Python interpreter of tens of
/// megabytes; far beyond the core count they only contend.
pub(crate) const MAX_WORKERS: usize = 1024;

/// The largest `--limit-worker-memory`, 1 TiB in MiB.
pub(crate) const MAX_WORKER_MEMORY_MIB: u64 = 1 << 20;

/// Where the server listens: one `--bind` (or `--host/--port`, `--uds`, `--fd`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Bind {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
    Fd(i32),
}

impl Bind {
    /// Parses `--bind` in gunicorn's forms: `HOST:PORT`, `[IPV6]:PORT`,
    /// `HOST` (port 8000), `unix:PATH` and `fd://N`.
    pub(crate) fn parse(raw: &str) -> Result<Bind, String> {
        if let Some(path) = raw.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a path, as in unix:/run/rsasgi.sock".into());
            }
            return Ok(Bind::Unix(PathBuf::from(path)));
        }
        if let Some(fd) = raw.strip_prefix("fd://") {
            return match fd.parse::<i32>() {
                Ok(fd) if fd >= 0 => Ok(Bind::Fd(fd)),
                _ => Err(format!(
                    "{raw:?}: fd:// needs a descriptor number, as in fd://3"
                )),
            };
        }
        let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
            let (ip, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("{raw:?}: an IPv6 address needs its closing ']'"))?;
            match after {
                "" => (ip, None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (ip, Some(port)),
                    None => return Err(format!("{raw:?}: expected [IPV6]:PORT")),
                },
            }
        } else if raw.matches(':').count() > 1 {
            return Err(format!(
                "{raw:?}: write an IPv6 address in brackets, as in [::1]:8000"
            ));
        } else {
            match raw.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (raw, None),
            }
        };
        if host.is_empty() {
            return Err(format!(
                "{raw:?} names no host; use 0.0.0.0:PORT for every interface"
            ));
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(port) => port
                .parse()
                .map_err(|_| format!("{raw:?}: {port:?} is not a port number (0-65535)"))?,
        };
        Ok(Bind::Tcp {
            host: host.to_string(),
            port,
        })
    }
}

/// `--workers`: a number, or `auto` for the CPUs this process may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Workers {
    Count(usize),
    /// The CPUs the scheduler lets this process use: its affinity mask and
    /// the CPU quota of its cgroup (a container limited to 2 CPUs gets 2).
    Auto,
}

impl Workers {
    pub(crate) fn parse(raw: &str) -> Result<Workers, String> {
        if raw.trim().eq_ignore_ascii_case("auto") {
            return Ok(Workers::Auto);
        }
        parse_count(raw, 1, MAX_WORKERS)
            .map(Workers::Count)
            .map_err(|err| format!("{err}, or auto"))
    }

    /// How many worker processes to run.
    pub(crate) fn resolve(self) -> usize {
        match self {
            Workers::Count(n) => n,
            // std reads both sched_getaffinity and the cgroup (v1 and v2) quota.
            Workers::Auto => std::thread::available_parallelism()
                .map_or(1, usize::from)
                .min(MAX_WORKERS),
        }
    }
}

/// What the supervisor watches and when it replaces a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Supervision {
    /// `None`: no supervisor, this process is the one worker.
    pub workers: Option<Workers>,
    /// `workers` came from `WEB_CONCURRENCY`, not `--workers`.
    pub workers_from_env: bool,
    /// A worker whose event loop has not run for this long is replaced;
    /// `None` (gunicorn's `--timeout 0`): never.
    pub timeout_worker_healthcheck: Option<Duration>,
    /// A worker that does not serve this long after its start is killed;
    /// `None`: it may take as long as it likes.
    pub timeout_worker_boot: Option<Duration>,
    /// A worker is recycled after this many requests, plus up to `jitter`.
    pub max_requests: Option<u64>,
    pub max_requests_jitter: u64,
    /// A worker is recycled after running this long.
    pub worker_lifetime: Option<Duration>,
    /// A worker is recycled when its resident memory exceeds this many MiB.
    pub worker_memory_mib: Option<u64>,
    /// `--reload`: workers are replaced when a watched file changes.
    pub reload: Option<crate::supervisor::reload::ReloadSettings>,
}

impl Supervision {
    /// Seconds between a supervised worker's heartbeats: often enough that a
    /// quarter of the health-check timeout never passes without one.
    pub(crate) fn heartbeat_interval(&self) -> Duration {
        self.timeout_worker_healthcheck
            .map_or(MAX_HEARTBEAT_INTERVAL, |limit| limit / 4)
            .min(MAX_HEARTBEAT_INTERVAL)
    }

    /// Whether a supervisor process runs: asked for with `--workers`, or
    /// needed by an option only a supervisor can carry out.
    pub(crate) fn supervised(&self) -> bool {
        self.workers.is_some()
            || self.reload.is_some()
            || self.max_requests.is_some()
            || self.worker_lifetime.is_some()
            || self.worker_memory_mib.is_some()
    }
}

/// Which calling convention the application uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Interface {
    /// Inspect the callable to tell which of the others it is.
    Auto,
    /// `async def app(scope, receive, send)`; "asgi" is granian's word for it.
    #[value(alias = "asgi")]
    Asgi3,
    /// `app(scope)` returns an instance awaited as `instance(receive, send)`.
    Asgi2,
    /// PEP 3333 `app(environ, start_response)`, run on a thread pool (--threads).
    Wsgi,
}

/// Whether the ASGI lifespan protocol runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Lifespan {
    /// Run it, and carry on without it if the app does not support it.
    Auto,
    /// Run it; an app that fails it stops the server.
    On,
    /// Never send lifespan events.
    Off,
}

/// Which asyncio event loop runs the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum EventLoop {
    /// uvloop when it is importable, asyncio otherwise.
    Auto,
    /// The standard library's loop.
    Asyncio,
    /// uvloop (pip install uvloop); an error when it is not installed.
    Uvloop,
}

/// How much the server logs; Python's level names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogLevel {
    Critical,
    Error,
    /// "warn" as Python's `logging.WARN` and Rust's `tracing` spell it.
    #[value(alias = "warn")]
    Warning,
    Info,
    Debug,
    Trace,
}

/// `--log-format`: how log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// One line of text per event: time, level, process, logger, message.
    Text,
    /// One JSON object per line, with the access line's fields as keys.
    Json,
}

impl LogLevel {
    pub(crate) fn as_tracing(self) -> tracing::Level {
        match self {
            LogLevel::Critical | LogLevel::Error => tracing::Level::ERROR,
            LogLevel::Warning => tracing::Level::WARN,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Trace => tracing::Level::TRACE,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub app: String,
    pub factory: bool,
    pub app_dir: PathBuf,
    /// Every socket to listen on, in the order given.
    pub binds: Vec<Bind>,
    /// `--bind`, `--uds` and `--fd` as given ("--uds /run/app.sock"), each
    /// of them: socket activation serves its own sockets instead.
    pub sockets_given: Vec<String>,
    /// Set SO_REUSEPORT on TCP sockets.
    pub reuse_port: bool,
    /// Where the main process writes its pid.
    pub pid_file: Option<PathBuf>,
    /// Detach from the terminal (`--daemon`).
    pub daemon: bool,
    /// `--error-logfile` (`--log-file`): where stdout and stderr go instead
    /// of the terminal; `None` for stderr.
    pub log_file: Option<PathBuf>,
    /// `--access-logfile`: where access lines go; `None`: with the server log.
    pub access_log_file: Option<crate::logging::AccessDestination>,
    /// The account workers switch to after binding (`--user`, `--group`).
    pub user: Option<String>,
    pub group: Option<String>,
    pub umask: Option<u32>,
    pub supervision: Supervision,
    pub interface: Interface,
    pub lifespan: Lifespan,
    pub event_loop: EventLoop,
    pub root_path: String,
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    /// `--log-config`: Python's logging takes the server's lines.
    pub log_config: Option<PathBuf>,
    pub access_log: bool,
    /// `--request-id`: the header every request's ID travels in (`None`: off).
    pub request_id: Option<HeaderName>,
    /// `--access-log-format`: rsasgi's line, or the user's atoms.
    pub access_log_format: crate::http::access_format::AccessFormat,
    pub server_header: bool,
    /// The peers whose proxy headers are believed; `None` with `--no-proxy-headers`.
    pub proxy: Option<crate::http::proxy_headers::TrustedProxies>,
    /// The HTTP versions served.
    pub http: HttpEngine,
    pub http2: Http2Settings,
    /// HTTPS: the certificate, key and client-certificate settings.
    pub tls: Option<crate::net::tls::TlsSettings>,
    /// `--proxy-header-format`: X-Forwarded-For/-Proto or RFC 7239 Forwarded.
    pub proxy_header_format: crate::http::proxy_headers::ProxyHeaderFormat,
    /// `--forwarded-host-headers`: believe X-Forwarded-Host, -Port and -Prefix too.
    pub forwarded_host_headers: bool,
    /// The peers whose PROXY protocol header is believed (`--forwarded-allow-ips`,
    /// whatever `--proxy-headers` says); `None` with `--proxy-protocol off`.
    pub proxy_protocol: Option<crate::http::proxy_headers::TrustedProxies>,
    /// `--static-map`: directories served without the app.
    pub static_files: Option<crate::http::static_files::StaticSettings>,
    pub date_header: bool,
    /// Added to every response, after the app's own headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// An idle keep-alive connection is closed after this long.
    pub timeout_keep_alive: Duration,
    /// A new connection must send a complete request head within this long,
    /// else it is closed.
    pub timeout_request_header: Duration,
    /// HTTP/2 PING frames are sent this often (`None`: never); a peer that
    /// does not answer one within `http2_keep_alive_timeout` is closed.
    pub http2_keep_alive_interval: Option<Duration>,
    pub http2_keep_alive_timeout: Duration,
    /// A request still running after this long is answered 504 (or its
    /// connection closed) and its app task cancelled.
    pub timeout_request: Option<Duration>,
    /// A response the client takes nothing of for this long is cut (`None`:
    /// never).
    pub timeout_send: Option<Duration>,
    /// A request body that brings nothing for this long while the app waits
    /// for it ends with 408, or a disconnect once the response has started
    /// (`None`: never).
    pub timeout_request_body: Option<Duration>,
    /// How long in-flight requests may run on after SIGTERM/SIGINT.
    pub timeout_graceful_shutdown: Duration,
    /// Requests in flight beyond this get 503.
    pub limit_concurrency: Option<usize>,
    /// Request bodies larger than this get 413.
    pub limit_request_body: Option<u64>,
    /// Request line plus headers larger than this get 431.
    pub limit_request_head: usize,
    pub backlog: u32,
    /// Mode of the `--uds` socket file (e.g. 0o660).
    pub uds_permissions: u32,
    pub env_file: Option<PathBuf>,
    /// Threads per worker running a WSGI app.
    pub threads: usize,
    /// `--threads` was set (command line, environment or file), so an ASGI
    /// app, which has no use for it, is worth a warning.
    pub threads_given: bool,
    /// `--gc-freeze`: `gc.freeze()` once the app has started.
    pub gc_freeze: bool,
    /// WebSocket settings; `None` with `--ws none`.
    pub ws: Option<crate::ws::WsSettings>,
    /// `--metrics-bind`: where `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics_bind: Option<crate::metrics::MetricsBind>,
    /// What a value borrowed from another server (`--ws wsproto`,
    /// `--http h11`) means here, for the debug log.
    pub compat_notes: Vec<String>,
    /// Settings given that the rest of the configuration makes do nothing
    /// (`--static-max-age` without `--static-map`), each a startup warning.
    pub warnings: Vec<String>,
}

impl Config {
    /// For an app found to be ASGI on import: the warning that `--threads`
    /// does nothing, unless an ASGI `--interface` was given (then the
    /// start's configuration warnings said it already).
    pub(crate) fn threads_unused_by_asgi(&self) -> Option<String> {
        (self.threads_given && self.interface == Interface::Auto).then(|| {
            format!(
                "--threads {} does nothing: {} is an ASGI app, and the threads run WSGI apps \
                 only (an ASGI app's sync code runs in threads of its own, such as asgiref's); \
                 drop --threads",
                self.threads, self.app
            )
        })
    }

    /// With `passed` sockets from systemd (socket activation), served instead
    /// of any other: the warning that `--bind`, `--uds` and `--fd` do nothing,
    /// when given. The shipped unit names `--uds`: a `.socket` unit added to
    /// it left the path the proxy uses never created, without a word.
    pub(crate) fn sockets_unused_by_activation(&self, passed: usize) -> Option<String> {
        let (list, verb, them) = match self.sockets_given.as_slice() {
            [] => return None,
            [one] => (one.clone(), "does", "it"),
            [rest @ .., last] => (format!("{} and {last}", rest.join(", ")), "do", "them"),
        };
        Some(format!(
            "{list} {verb} nothing with socket activation: the {passed} socket(s) systemd \
             passed are served instead, and nothing else is bound or created; name {them} in \
             the .socket unit (ListenStream=), or drop {them}"
        ))
    }

    /// For an app found to be WSGI on import: the warning that `--lifespan
    /// on` does nothing, unless `--interface wsgi` was given (then the
    /// start's configuration warnings said it already).
    pub(crate) fn lifespan_unused_by_wsgi(&self) -> Option<String> {
        (self.lifespan == Lifespan::On && self.interface == Interface::Auto).then(|| {
            format!(
                "--lifespan on does nothing: {} is a WSGI app, and WSGI has no lifespan \
                 protocol (no startup or shutdown runs, and none can stop the start); serve \
                 the app's ASGI entry point if it has one, or drop --lifespan on",
                self.app
            )
        })
    }

    /// The scheme the listeners serve, as the startup line shows them.
    pub(crate) fn listening_scheme(&self) -> crate::net::Scheme {
        match self.tls {
            Some(_) => crate::net::Scheme::Https,
            None => crate::net::Scheme::Http,
        }
    }

    /// The protocols TLS offers by ALPN, best first.
    pub(crate) fn alpn_protocols(&self) -> Vec<&'static [u8]> {
        let mut protocols = Vec::new();
        if self.http.serves_http2() {
            protocols.push(crate::net::tls::ALPN_H2);
        }
        if self.http.serves_http1() {
            protocols.push(crate::net::tls::ALPN_HTTP11);
        }
        protocols
    }

    /// How the sockets are bound; Unix socket files are created for
    /// `socket_owner` (the account `--user` and `--group` name).
    pub(crate) fn bind_options(
        &self,
        socket_owner: Option<crate::net::SocketOwner>,
    ) -> crate::net::BindOptions {
        crate::net::BindOptions {
            backlog: self.backlog,
            uds_permissions: self.uds_permissions,
            reuse_port: self.reuse_port,
            socket_owner,
        }
    }
}

/// How often HTTP/2 connections are pinged, and how long an answer may take:
/// a peer that vanished without closing (a laptop put to sleep, a dropped
/// NAT mapping) is found within a minute rather than never.
pub(crate) const DEFAULT_HTTP2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
pub(crate) const DEFAULT_HTTP2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Whether WebSocket upgrades are handled.
///
/// The hidden values name uvicorn's engines; they are accepted so uvicorn
/// command lines work unchanged, and rsasgi serves them with its one engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum WsMode {
    /// Serve WebSockets (RFC 6455) to ASGI apps.
    Auto,
    /// Treat upgrade requests as plain HTTP requests.
    None,
    /// uvicorn's default engine, the `websockets` library.
    #[value(hide = true)]
    Websockets,
    /// uvicorn's engine on the `websockets` library's Sans-I/O core.
    #[value(hide = true)]
    WebsocketsSansio,
    /// uvicorn's engine on the `wsproto` library.
    #[value(hide = true)]
    Wsproto,
}

impl WsMode {
    /// Whether upgrades are served (every value but `none`).
    pub(crate) fn serves(self) -> bool {
        self != WsMode::None
    }

    /// Whether this names another server's WebSocket engine.
    pub(crate) fn is_peer_engine(self) -> bool {
        !matches!(self, WsMode::Auto | WsMode::None)
    }
}

/// `--http`: which HTTP versions are served (granian's spelling). uvicorn's
/// engine names are accepted too and mean `auto`: rsasgi has one engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum HttpEngine {
    /// HTTP/1.1 and HTTP/2 (by ALPN over TLS, by prior knowledge in cleartext).
    Auto,
    /// HTTP/1.1 only.
    #[value(name = "1")]
    Http1,
    /// HTTP/2 only.
    #[value(name = "2")]
    Http2,
    #[value(hide = true)]
    H11,
    #[value(hide = true)]
    Httptools,
}

impl HttpEngine {
    pub(crate) fn serves_http1(self) -> bool {
        self != HttpEngine::Http2
    }

    pub(crate) fn serves_http2(self) -> bool {
        self != HttpEngine::Http1
    }

    /// uvicorn's name for its HTTP implementation.
    pub(crate) fn is_peer_engine(self) -> bool {
        matches!(self, HttpEngine::H11 | HttpEngine::Httptools)
    }
}

/// HTTP/2 settings (granian's option names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Http2Settings {
    pub max_concurrent_streams: u32,
    pub initial_stream_window_size: u32,
    /// `None`: room for every stream's window (see
    /// [`connection_window`](Self::connection_window)).
    pub initial_connection_window_size: Option<u32>,
    pub max_header_list_size: Option<u32>,
}

impl Http2Settings {
    /// The connection's flow-control window.
    ///
    /// Every byte a peer sends counts against its stream's window and the
    /// connection's until the app reads it. A request whose app has not read
    /// its body yet (its ASGI app not there yet, its WSGI request waiting for
    /// a thread) holds up to a stream window unread: were the connection's
    /// window smaller than all the streams' together, a few such streams
    /// would shut it, and the upload the app is reading on another stream
    /// would get nothing more until `--timeout-request-body`. So by default
    /// it has room for every stream's window, as nginx's (which is 2^31-1);
    /// the stream windows bound what one connection can make the server
    /// hold: `--http2-max-concurrent-streams` × the stream window.
    pub(crate) fn connection_window(&self) -> u32 {
        self.initial_connection_window_size
            .unwrap_or_else(|| self.all_stream_windows())
    }

    /// Whether streams whose bodies wait unread can shut the connection's
    /// window on a stream whose app reads (an operator's
    /// `--http2-initial-connection-window-size` below the default).
    pub(crate) fn streams_can_starve(&self) -> bool {
        self.connection_window() < self.all_stream_windows()
    }

    /// Every stream's window together, within HTTP/2's largest window.
    fn all_stream_windows(&self) -> u32 {
        let all =
            u64::from(self.max_concurrent_streams) * u64::from(self.initial_stream_window_size);
        u32::try_from(all.min(u64::from(HTTP2_MAX_WINDOW))).unwrap_or(HTTP2_MAX_WINDOW)
    }
}

/// Streams one HTTP/2 connection may have open at once: RFC 9113 §6.5.2
/// recommends no fewer than 100.
pub(crate) const DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// A stream's flow-control window: how much a peer may send on it before
/// the app reads it. It bounds both what 100 streams whose bodies wait
/// unread make the server hold (25 MiB) and one upload's speed, at most
/// about a window per round trip (one 64 MiB upload: 18 MB/s at 10 ms, 4
/// MB/s at 50 ms; with hyper's default of 1 MiB, 58 and 14 MB/s, for four
/// times the memory).
pub(crate) const DEFAULT_HTTP2_STREAM_WINDOW: u32 = 256 * 1024;
/// The largest HTTP/2 flow-control window (RFC 9113 §6.9.1).
pub(crate) const HTTP2_MAX_WINDOW: u32 = (1 << 31) - 1;

/// Parses `NAME:VALUE` into a response header, as `--header` takes it.
pub(crate) fn parse_header(raw: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = raw
        .split_once(':')
        .ok_or_else(|| format!("expected NAME:VALUE, got {raw:?}"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("{:?} is not a valid header name", name.trim()))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|_| format!("{:?} is not a valid header value", value.trim()))?;
    // These frame each response or the connection: the server sets them per
    // response, and a fixed one would make every response unreadable.
    const FRAMING: &[&str] = &[
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "proxy-connection",
    ];
    if FRAMING.contains(&name.as_str()) {
        return Err(format!(
            "{name} is set by the server for each response and cannot be added to every one"
        ));
    }
    Ok((name, value))
}

/// Validates `--root-path`: empty, or a path starting with `/` and not ending with one.
pub(crate) fn parse_root_path(raw: &str) -> Result<String, String> {
    if raw.is_empty() {
        return Ok(String::new());
    }
    if !raw.starts_with('/') {
        return Err(format!("must start with '/', got {raw:?}"));
    }
    Ok(raw.trim_end_matches('/').to_string())
}

/// Validates the APP argument: `module:attribute`, both parts non-empty.
pub(crate) fn parse_app(raw: &str) -> Result<String, String> {
    match raw.split_once(':') {
        Some((module, attr)) if !module.is_empty() && !attr.is_empty() => Ok(raw.to_string()),
        _ => Err(format!(
            "{raw:?} is not in the form \"module:attribute\" (e.g. \"myproject.asgi:application\")"
        )),
    }
}

/// Parses a duration in seconds (fractions allowed), from 0 to [`MAX_SECONDS`].
pub(crate) fn parse_seconds(raw: &str) -> Result<Duration, String> {
    seconds_from(raw).ok_or_else(|| format!("expected seconds from 0 to {}", MAX_SECONDS.as_secs()))
}

/// Like [`parse_seconds`], but refuses zero: for timeouts where zero would
/// close every connection at once.
pub(crate) fn parse_positive_seconds(raw: &str) -> Result<Duration, String> {
    seconds_from(raw)
        .filter(|duration| !duration.is_zero())
        .ok_or_else(|| format!("expected seconds above 0, up to {}", MAX_SECONDS.as_secs()))
}

/// `--limit-worker-lifetime`: seconds from 0 (never) to
/// [`MAX_WORKER_LIFETIME`]; a week is a reasonable lifetime where a day is
/// a long timeout.
pub(crate) fn parse_lifetime(raw: &str) -> Result<Duration, String> {
    seconds_up_to(raw, MAX_WORKER_LIFETIME).ok_or_else(|| {
        format!(
            "expected seconds from 0 (never) to {} (30 days)",
            MAX_WORKER_LIFETIME.as_secs()
        )
    })
}

fn seconds_from(raw: &str) -> Option<Duration> {
    seconds_up_to(raw, MAX_SECONDS)
}

fn seconds_up_to(raw: &str, max: Duration) -> Option<Duration> {
    let secs: f64 = raw.trim().parse().ok()?;
    // The range check also refuses NaN and the infinities.
    if !(0.0..=max.as_secs_f64()).contains(&secs) {
        return None;
    }
    Duration::try_from_secs_f64(secs).ok()
}

/// Parses a whole number from `min` to `max`, for size and count options.
pub(crate) fn parse_count<T>(raw: &str, min: T, max: T) -> Result<T, String>
where
    T: FromStr + PartialOrd + Display,
{
    match raw.trim().parse::<T>() {
        Ok(n) if min <= n && n <= max => Ok(n),
        _ => Err(format!("expected a whole number from {min} to {max}")),
    }
}

/// Parses a Unix permission mode written in octal, as chmod takes it: "660",
/// "0660" or "0o660", at most [`MAX_UDS_PERMISSIONS`].
pub(crate) fn parse_mode(raw: &str) -> Result<u32, String> {
    let trimmed = raw.trim();
    let digits = trimmed
        .strip_prefix("0o")
        .or_else(|| trimmed.strip_prefix("0O"))
        .unwrap_or(trimmed);
    let octal = !digits.is_empty() && digits.bytes().all(|b| (b'0'..=b'7').contains(&b));
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if octal && mode <= MAX_UDS_PERMISSIONS => Ok(mode),
        _ => Err(format!(
            "expected an octal mode from 0 to {MAX_UDS_PERMISSIONS:o}, like 660"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http2_connection_window_holds_every_streams_window_by_default() {
        let settings = |streams, window, connection| Http2Settings {
            max_concurrent_streams: streams,
            initial_stream_window_size: window,
            initial_connection_window_size: connection,
            max_header_list_size: None,
        };
        let default = settings(
            DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS,
            DEFAULT_HTTP2_STREAM_WINDOW,
            None,
        );
        assert_eq!(default.connection_window(), 100 * 256 * 1024);
        assert!(!default.streams_can_starve());
        let huge = settings(1000, HTTP2_MAX_WINDOW, None);
        assert_eq!(huge.connection_window(), HTTP2_MAX_WINDOW);
        assert!(!huge.streams_can_starve());
        let set = settings(100, 1 << 20, Some(1 << 20));
        assert_eq!(set.connection_window(), 1 << 20);
        assert!(set.streams_can_starve());
    }

    #[test]
    fn bind_takes_gunicorns_forms() {
        let tcp = |host: &str, port| Bind::Tcp {
            host: host.into(),
            port,
        };
        assert_eq!(Bind::parse("0.0.0.0:80"), Ok(tcp("0.0.0.0", 80)));
        assert_eq!(Bind::parse("localhost"), Ok(tcp("localhost", 8000)));
        assert_eq!(Bind::parse("[::1]:9000"), Ok(tcp("::1", 9000)));
        assert_eq!(Bind::parse("[::]"), Ok(tcp("::", 8000)));
        assert_eq!(
            Bind::parse("unix:/run/a.sock"),
            Ok(Bind::Unix("/run/a.sock".into()))
        );
        assert_eq!(Bind::parse("fd://3"), Ok(Bind::Fd(3)));
        for bad in [
            "unix:", "fd://x", "fd://-1", "::1:80", "[::1", "[::1]80", ":8000", "a:99999", "a:",
        ] {
            assert!(Bind::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn workers_are_a_count_or_auto() {
        assert_eq!(Workers::parse("4"), Ok(Workers::Count(4)));
        assert_eq!(Workers::parse("AUTO"), Ok(Workers::Auto));
        assert!(Workers::Auto.resolve() >= 1);
        for bad in ["0", "-1", "many", "1025"] {
            assert!(Workers::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn header_option_splits_on_first_colon() {
        let (name, value) = parse_header("X-Thing: a:b").unwrap();
        assert_eq!(name.as_str(), "x-thing");
        assert_eq!(value, "a:b");
    }

    #[test]
    fn header_option_rejects_bad_input() {
        assert!(parse_header("novalue").is_err());
        assert!(parse_header("bad name:1").is_err());
        assert!(parse_header("x:a\nb").is_err());
        assert!(parse_header("Content-Length: 3").is_err());
        assert!(parse_header("transfer-encoding: chunked").is_err());
        assert!(parse_header("Connection: close").is_err());
    }

    #[test]
    fn root_path_is_normalised() {
        assert_eq!(parse_root_path("").unwrap(), "");
        assert_eq!(parse_root_path("/api/").unwrap(), "/api");
        assert!(parse_root_path("api").is_err());
    }

    #[test]
    fn app_needs_module_and_attribute() {
        assert!(parse_app("pkg.mod:app").is_ok());
        assert!(parse_app("pkg.mod:app.inner").is_ok());
        assert!(parse_app("pkg.mod").is_err());
        assert!(parse_app(":app").is_err());
        assert!(parse_app("mod:").is_err());
    }

    #[test]
    fn seconds_accept_fractions_and_reject_negatives() {
        assert_eq!(parse_seconds("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_seconds("0").unwrap(), Duration::ZERO);
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("soon").is_err());
    }

    #[test]
    fn seconds_stop_at_one_day() {
        assert_eq!(parse_seconds("86400").unwrap(), MAX_SECONDS);
        assert_eq!(
            parse_lifetime("604800").unwrap(),
            Duration::from_secs(604_800)
        );
        assert_eq!(parse_lifetime("2592000").unwrap(), MAX_WORKER_LIFETIME);
        assert_eq!(parse_lifetime("0").unwrap(), Duration::ZERO);
        assert!(parse_lifetime("2592001").is_err());
        assert!(parse_lifetime("-1").is_err());
        for raw in ["86400.5", "1e19", "1e20", "1e400", "inf", "NaN", "-0.5"] {
            assert_eq!(
                parse_seconds(raw).unwrap_err(),
                "expected seconds from 0 to 86400",
                "{raw}"
            );
        }
    }

    #[test]
    fn positive_seconds_refuse_zero() {
        assert_eq!(
            parse_positive_seconds("0.25").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(parse_positive_seconds("86400").unwrap(), MAX_SECONDS);
        for raw in ["0", "0.0", "-0", "86401", "soon"] {
            assert_eq!(
                parse_positive_seconds(raw).unwrap_err(),
                "expected seconds above 0, up to 86400",
                "{raw}"
            );
        }
    }

    #[test]
    fn counts_are_whole_numbers_within_bounds() {
        assert_eq!(parse_count("1", 1, MAX_THREADS), Ok(1));
        assert_eq!(parse_count("4096", 1, MAX_THREADS), Ok(4096));
        for raw in [
            "0",
            "4097",
            "-1",
            "1.5",
            "1e3",
            "99999999999999999999999",
            "",
        ] {
            assert_eq!(
                parse_count(raw, 1, MAX_THREADS).unwrap_err(),
                "expected a whole number from 1 to 4096",
                "{raw}"
            );
        }
    }

    #[test]
    fn modes_are_octal_up_to_0777() {
        assert_eq!(parse_mode("660"), Ok(0o660));
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert_eq!(parse_mode("0o660"), Ok(0o660));
        assert_eq!(parse_mode("777"), Ok(0o777));
        assert_eq!(parse_mode("0"), Ok(0));
        for raw in [
            "1777",
            "8",
            "69",
            "0x1ff",
            "+660",
            "-1",
            "",
            "0o",
            "rw-rw----",
        ] {
            assert_eq!(
                parse_mode(raw).unwrap_err(),
                "expected an octal mode from 0 to 777, like 660",
                "{raw}"
            );
        }
    }
}
