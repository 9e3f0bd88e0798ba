//! The command line: clap definitions turned into a [`Config`].
//!
//! Option names follow uvicorn's wherever uvicorn has the same setting, so a
//! user switches servers by changing one word. Every option can also be set
//! through an `RSASGI_<NAME>` environment variable.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use std::collections::HashSet;
use std::path::Path;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{
    Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches, Parser, ValueEnum,
};
use http::header::{HeaderName, HeaderValue};

use crate::config::{
    self, parse_app, parse_count, parse_header, parse_lifetime, parse_mode, parse_positive_seconds,
    parse_root_path, parse_seconds, Bind, Config, EventLoop, Http2Settings, HttpEngine, Interface,
    Lifespan, LogFormat, LogLevel, Supervision, Workers, WsMode,
};
use crate::config_file::{self, ConfigFile, Shown};
use crate::http::access_format::AccessFormat;
use crate::http::proxy_headers::{self, ProxyHeaderFormat, TrustedProxies};
use crate::http::request_id;
use crate::http::static_files::{StaticMount, StaticSettings};
use crate::logging::AccessDestination;
use crate::metrics::MetricsBind;
use crate::net::tls::{ClientCerts, MinVersion, TlsSettings};
use crate::print_config;

use crate::net::proxy_protocol::ProxyProtocol;

/// The longest `--static-max-age`: ten years (a year is the usual maximum).
const MAX_STATIC_MAX_AGE: u64 = 10 * 365 * 24 * 3600;
use crate::supervisor::reload::{self, ReloadEngine, ReloadSettings};
use crate::ws::WsSettings;

/// Shown after the options by `--help`; every line fits 80 columns.
const AFTER_HELP: &str = "\
Examples:
  Django, ASGI   rsasgi myproject.asgi:application
  Django, WSGI   rsasgi myproject.wsgi:application
  Flask          rsasgi app:app
  FastAPI        rsasgi main:app --host 0.0.0.0 --port 8080
  Behind nginx   rsasgi myproject.asgi:application --workers 4 \\
                   --uds /run/rsasgi/rsasgi.sock
                 (deploy/nginx.conf in rsasgi's source: the proxy headers
                 Django needs for its Host, client address and https)

Every option but the --reload-* lists can also be set as an environment
variable named after it: --port as RSASGI_PORT, --timeout-keep-alive as
RSASGI_TIMEOUT_KEEP_ALIVE;
or as a key of a TOML file (--config, else [tool.rsasgi] in pyproject.toml):
port = 8000, header = [\"X-Frame-Options: DENY\"], reload = true.
The command line wins over the environment, and both over the file.";

/// Options of uvicorn, gunicorn, granian and hypercorn that rsasgi does not
/// have, so a user switching servers hears that instead of an unknown option
/// or a clap guess at a similar name (`--reload` is not `--threads`).
const UNSUPPORTED: &[&str] = &[
    // Processes: workers, reloading, daemons, privileges.
    "--reload-extra-file",
    "--reload-paths",
    "--reload-ignore-dirs",
    "--reload-ignore-patterns",
    "--reload-ignore-paths",
    "--reload-tick",
    "--reload-ignore-worker-failure",
    "--worker-class",
    "-k",
    "--worker-connections",
    "--worker-tmp-dir",
    "--workers-kill-timeout",
    "--rss-sample-interval",
    "--rss-samples",
    "--blocking-threads-idle-timeout",
    "--respawn-failed-workers",
    "--respawn-interval",
    "--runtime-threads",
    "--runtime-blocking-threads",
    "--runtime-mode",
    "--task-impl",
    "--threading-mode",
    "--preload",
    "--initgroups",
    "--chdir",
    "--working-dir",
    "--pythonpath",
    "--env",
    "-e",
    "--name",
    "-n",
    "--process-name",
    "--paste",
    "--paster",
    "--paste-global",
    "--spew",
    "--debug",
    // Sockets.
    "--insecure-bind",
    "--quic-bind",
    "--server-name",
    // TLS.
    "--ssl-crl",
    "--suppress-ragged-eofs",
    "--do-handshake-on-connect",
    // HTTP and WebSocket tuning.
    "--http2",
    "--h11-max-incomplete-event-size",
    "--limit-request-line",
    "--limit-request-fields",
    "--limit-request-field_size",
    "--read-timeout",
    "--backpressure",
    "--http1-keep-alive",
    "--no-http1-keep-alive",
    "--http1-pipeline-flush",
    "--http2-adaptive-window",
    "--http2-max-frame-size",
    "--http2-max-send-buffer-size",
    "--reset-contextvars",
    "--static-path-route",
    "--static-path-mount",
    "--static-path-expires",
    "--no-sendfile",
    // Logging.
    "--log-config-dict",
    "--use-colors",
    "--no-use-colors",
    "--access-log-fmt",
    "--log-access-fmt",
    "--error-log",
    "--log",
    "--no-log",
    "--capture-output",
    "--logger-class",
    "--log-syslog",
    "--log-syslog-to",
    "--log-syslog-prefix",
    "--log-syslog-facility",
    "--disable-redirect-access-to-syslog",
    "--enable-stdio-inheritance",
    "-R",
    "--metrics-scrape-interval",
    "--statsd-host",
    "--statsd-prefix",
    "--dogstatsd-tags",
];

/// Options of the same servers that rsasgi has under another name:
/// (theirs, ours).
const RENAMED: &[(&str, &str)] = &[
    ("--keep-alive", "--timeout-keep-alive"),
    ("--http1-header-read-timeout", "--timeout-request-header"),
    ("--http1-buffer-size", "--limit-request-head"),
    ("--websocket-ping-interval", "--ws-ping-interval"),
    ("--url-path-prefix", "--root-path"),
    ("--blocking-threads", "--threads"),
    ("--env-files", "--env-file"),
    ("--no-ws", "--ws none"),
    ("--ssl-certificate", "--ssl-certfile"),
    ("--ssl-ca", "--ssl-ca-certs"),
    ("--ssl-client-verify", "--ssl-cert-reqs"),
    ("--verify-mode", "--ssl-cert-reqs"),
    ("--ssl-protocol-min", "--ssl-min-version"),
    ("--ssl-version", "--ssl-min-version"),
    // gunicorn's peers allowed to send a PROXY header.
    ("--proxy-allow-from", "--forwarded-allow-ips"),
    // gunicorn's JSON logging configuration.
    ("--log-config-json", "--log-config"),
    // granian's metrics listener.
    ("--metrics", "--metrics-bind"),
    ("--metrics-address", "--metrics-bind"),
    ("--metrics-port", "--metrics-bind"),
];

/// A duration as the command line writes it: seconds, fractions allowed.
#[derive(Debug, Clone, Copy)]
struct Seconds(Duration);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.as_secs_f64())
    }
}

fn seconds(raw: &str) -> Result<Seconds, String> {
    parse_seconds(raw).map(Seconds)
}

fn positive_seconds(raw: &str) -> Result<Seconds, String> {
    parse_positive_seconds(raw).map(Seconds)
}

/// A header name for `--request-id-header`.
fn request_id_header(raw: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(raw.trim().as_bytes())
        .map_err(|_| format!("{raw:?} is not a header name"))
}

/// `--log-config`: a file that can be read, made absolute so that every
/// process finds the same one.
fn log_config_file(raw: &str) -> Result<PathBuf, String> {
    let path = std::path::absolute(raw).map_err(|err| format!("{raw}: {err}"))?;
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() => {
            std::fs::File::open(&path).map_err(|err| format!("cannot read {raw}: {err}"))?;
            Ok(path)
        }
        Ok(_) => Err(format!("{raw} is not a file")),
        Err(err) => Err(format!("cannot read {raw}: {err}")),
    }
}

/// A file mode as the command line writes it: octal, like chmod.
#[derive(Debug, Clone, Copy)]
struct Octal(u32);

impl fmt::Display for Octal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:o}", self.0)
    }
}

fn octal(raw: &str) -> Result<Octal, String> {
    parse_mode(raw).map(Octal)
}

#[derive(Debug, Parser)]
#[command(
    name = "rsasgi",
    version,
    about = "Serve ASGI and WSGI apps (Django, FastAPI, Flask, Starlette, ...) over HTTP.",
    long_about = None,
    after_help = AFTER_HELP
)]
struct Args {
    /// The application, as "module:attribute" (e.g. "myproject.asgi:application").
    #[arg(value_name = "APP", env = "RSASGI_APP", value_parser = parse_app)]
    app: String,

    /// Treat APP as a factory: call it with no arguments to get the application.
    #[arg(long, env = "RSASGI_FACTORY")]
    factory: bool,

    /// Directory added to sys.path before importing APP.
    #[arg(long, env = "RSASGI_APP_DIR", value_name = "DIR", default_value = config::DEFAULT_APP_DIR)]
    app_dir: PathBuf,

    // The help text, not a doc link: `[IPV6]` is what the user types.
    #[allow(rustdoc::broken_intra_doc_links)]
    /// Listen on ADDRESS: HOST:PORT, [IPV6]:PORT, unix:PATH or fd://N;
    /// repeat for several sockets (overrides --host and --port).
    #[arg(long, short = 'b', env = "RSASGI_BIND", value_name = "ADDRESS",
          value_parser = Bind::parse, help_heading = "Socket")]
    bind: Vec<Bind>,

    /// Set SO_REUSEPORT on TCP sockets, so another server can bind the same port.
    #[arg(long, env = "RSASGI_REUSE_PORT", help_heading = "Socket")]
    reuse_port: bool,

    /// Address to bind.
    #[arg(long, env = "RSASGI_HOST", default_value = config::DEFAULT_HOST, help_heading = "Socket")]
    host: String,

    /// Port to bind; 0 picks a free port and logs it.
    #[arg(long, env = "RSASGI_PORT", default_value_t = config::DEFAULT_PORT, help_heading = "Socket")]
    port: u16,

    /// Listen on a Unix domain socket at PATH instead of host and port.
    #[arg(long, env = "RSASGI_UDS", value_name = "PATH", help_heading = "Socket")]
    uds: Option<PathBuf>,

    /// Permissions of the --uds socket file, in octal.
    #[arg(long, env = "RSASGI_UDS_PERMISSIONS", value_name = "OCTAL",
          default_value_t = Octal(config::DEFAULT_UDS_PERMISSIONS), value_parser = octal,
          help_heading = "Socket")]
    uds_permissions: Octal,

    /// Serve on an already-listening socket inherited as file descriptor N.
    #[arg(long, env = "RSASGI_FD", value_name = "N",
          value_parser = |raw: &str| parse_count(raw, 0, i32::MAX), help_heading = "Socket")]
    fd: Option<i32>,

    /// Connections the kernel queues before they are accepted.
    #[arg(long, env = "RSASGI_BACKLOG", value_name = "N", default_value_t = config::DEFAULT_BACKLOG,
          value_parser = |raw: &str| parse_count(raw, 0, config::MAX_BACKLOG), help_heading = "Socket")]
    backlog: u32,

    /// Application interface; "auto" inspects the callable.
    #[arg(long, env = "RSASGI_INTERFACE", value_enum, default_value_t = Interface::Auto,
          help_heading = "Application")]
    interface: Interface,

    /// ASGI lifespan protocol; "auto" carries on if the app does not support it.
    #[arg(long, env = "RSASGI_LIFESPAN", value_enum, default_value_t = Lifespan::Auto,
          help_heading = "Application")]
    lifespan: Lifespan,

    /// Event loop for the app; "auto" uses uvloop when it is installed.
    #[arg(long = "loop", env = "RSASGI_LOOP", value_name = "LOOP", value_enum,
          default_value_t = EventLoop::Auto, help_heading = "Application")]
    event_loop: EventLoop,

    /// Sub-path a proxy mounts the app under (ASGI root_path, WSGI SCRIPT_NAME).
    #[arg(long, env = "RSASGI_ROOT_PATH", value_name = "PATH", default_value = "",
          value_parser = parse_root_path, help_heading = "Application")]
    root_path: String,

    /// Load environment variables for the app from this file (KEY=VALUE lines).
    #[arg(
        long,
        env = "RSASGI_ENV_FILE",
        value_name = "PATH",
        help_heading = "Application"
    )]
    env_file: Option<PathBuf>,

    /// Threads per worker that run a WSGI app (requests beyond them wait).
    #[arg(long, env = "RSASGI_THREADS", value_name = "N", default_value_t = config::DEFAULT_THREADS,
          value_parser = |raw: &str| parse_count(raw, 1, config::MAX_THREADS),
          help_heading = "Application")]
    threads: usize,

    /// Once the app has started, move what it holds out of the garbage
    /// collector's reach (gc.freeze): full collections skip it.
    #[arg(long, env = "RSASGI_GC_FREEZE", action = ArgAction::Set, default_value_t = true,
          value_name = "BOOL", hide_possible_values = true, help_heading = "Application")]
    gc_freeze: bool,

    /// Worker processes, or "auto" for the CPUs this process may use (affinity
    /// and container quota); a supervisor restarts any that dies
    /// [default: one process, no supervisor; WEB_CONCURRENCY is honoured].
    #[arg(long, short = 'w', env = "RSASGI_WORKERS", value_name = "N",
          value_parser = Workers::parse, help_heading = "Workers")]
    workers: Option<Workers>,

    /// Replace a worker whose event loop has not run for this many seconds,
    /// logging every thread's Python stack first (0: never, as gunicorn's --timeout 0).
    #[arg(long, visible_alias = "timeout", short_alias = 't', env = "RSASGI_TIMEOUT_WORKER_HEALTHCHECK",
          value_name = "SECONDS", default_value_t = Seconds(config::DEFAULT_TIMEOUT_WORKER_HEALTHCHECK),
          value_parser = seconds, help_heading = "Workers")]
    timeout_worker_healthcheck: Seconds,

    /// Kill a worker still importing or starting the app after this many
    /// seconds (0: never) [default: 60, or the health check's if longer];
    /// one process exits 3 then, only if it is given.
    #[arg(long, env = "RSASGI_TIMEOUT_WORKER_BOOT", value_name = "SECONDS",
          value_parser = seconds, help_heading = "Workers")]
    timeout_worker_boot: Option<Seconds>,

    /// Replace a worker gracefully after it has served this many requests
    /// (0: never, as gunicorn's --max-requests 0).
    #[arg(long, visible_alias = "max-requests", env = "RSASGI_LIMIT_MAX_REQUESTS", value_name = "N",
          value_parser = |raw: &str| parse_count(raw, 0, u64::MAX), help_heading = "Workers")]
    limit_max_requests: Option<u64>,

    /// Add up to this many requests (random per worker) to --limit-max-requests,
    /// so that workers are not all replaced at once.
    #[arg(long, visible_alias = "max-requests-jitter", env = "RSASGI_LIMIT_MAX_REQUESTS_JITTER",
          value_name = "N", default_value_t = 0,
          value_parser = |raw: &str| parse_count(raw, 0, u64::MAX), help_heading = "Workers")]
    limit_max_requests_jitter: u64,

    /// Replace a worker gracefully after this many seconds (0: never).
    #[arg(long, alias = "workers-lifetime", env = "RSASGI_LIMIT_WORKER_LIFETIME",
          value_name = "SECONDS", value_parser = |raw: &str| parse_lifetime(raw).map(Seconds),
          help_heading = "Workers")]
    limit_worker_lifetime: Option<Seconds>,

    /// Replace a worker gracefully once its memory (RSS) passes this many MiB.
    #[arg(long, alias = "workers-max-rss", env = "RSASGI_LIMIT_WORKER_MEMORY", value_name = "MIB",
          value_parser = |raw: &str| parse_count(raw, 1, config::MAX_WORKER_MEMORY_MIB),
          help_heading = "Workers")]
    limit_worker_memory: Option<u64>,

    /// Write the main process's pid to FILE (removed at exit).
    #[arg(
        long = "pid",
        short = 'p',
        visible_alias = "pid-file",
        env = "RSASGI_PID",
        value_name = "FILE",
        help_heading = "Process"
    )]
    pid_file: Option<PathBuf>,

    /// Run the workers as USER (name or uid) once the sockets are bound; needs root.
    #[arg(
        long,
        short = 'u',
        env = "RSASGI_USER",
        value_name = "USER",
        help_heading = "Process"
    )]
    user: Option<String>,

    /// Run the workers with GROUP (name or gid) [default: USER's group]; needs root.
    #[arg(
        long,
        short = 'g',
        env = "RSASGI_GROUP",
        value_name = "GROUP",
        help_heading = "Process"
    )]
    group: Option<String>,

    /// File mode creation mask, in octal (e.g. 027), for the server and the app.
    #[arg(long, short = 'm', env = "RSASGI_UMASK", value_name = "OCTAL", value_parser = octal,
          help_heading = "Process")]
    umask: Option<Octal>,

    /// Detach from the terminal and run in the background (use with --log-file).
    #[arg(long, short = 'D', env = "RSASGI_DAEMON", help_heading = "Process")]
    daemon: bool,

    /// Restart the workers when a watched file changes (for development).
    #[arg(long, env = "RSASGI_RELOAD", help_heading = "Development")]
    reload: bool,

    /// Directory to watch with --reload (repeatable) [default: the current directory].
    #[arg(
        long = "reload-dir",
        value_name = "DIR",
        requires = "reload",
        help_heading = "Development"
    )]
    reload_dirs: Vec<PathBuf>,

    /// Also watch files matching GLOB (repeatable) [default: *.py].
    #[arg(
        long = "reload-include",
        value_name = "GLOB",
        requires = "reload",
        help_heading = "Development"
    )]
    reload_include: Vec<String>,

    // The help text, not a doc link.
    #[allow(rustdoc::broken_intra_doc_links)]
    /// Ignore files and directories matching GLOB (repeatable)
    /// [default: .*, .py[cod], .sw.*, ~*].
    #[arg(
        long = "reload-exclude",
        value_name = "GLOB",
        requires = "reload",
        help_heading = "Development"
    )]
    reload_exclude: Vec<String>,

    /// Seconds to wait for more changes before restarting.
    #[arg(long, env = "RSASGI_RELOAD_DELAY", value_name = "SECONDS",
          default_value_t = Seconds(reload::DEFAULT_DELAY), value_parser = seconds,
          help_heading = "Development")]
    reload_delay: Seconds,

    /// How --reload finds changes: "auto" polls when inotify cannot be set up;
    /// "poll" reads the watched directories every second, for mounts inotify
    /// hears nothing from (Docker Desktop, WSL2's /mnt, NFS)
    /// [default: auto; WATCHFILES_FORCE_POLLING=true means poll].
    #[arg(
        long,
        env = "RSASGI_RELOAD_ENGINE",
        value_name = "ENGINE",
        value_enum,
        help_heading = "Development"
    )]
    reload_engine: Option<ReloadEngine>,

    /// WebSocket support; "none" passes upgrade requests to the app as plain HTTP.
    #[arg(long, env = "RSASGI_WS", value_enum, default_value_t = WsMode::Auto,
          help_heading = "WebSockets")]
    ws: WsMode,

    /// Largest message accepted; a larger one closes the connection with 1009.
    #[arg(long, env = "RSASGI_WS_MAX_SIZE", value_name = "BYTES",
          default_value_t = config::DEFAULT_WS_MAX_SIZE,
          value_parser = |raw: &str| parse_count(raw, 1, config::MAX_WS_MESSAGE_SIZE),
          help_heading = "WebSockets")]
    ws_max_size: usize,

    /// Messages buffered for an app that is not reading; beyond them, or
    /// beyond 1 MiB of them, the server stops reading the socket.
    #[arg(long, env = "RSASGI_WS_MAX_QUEUE", value_name = "N",
          default_value_t = config::DEFAULT_WS_MAX_QUEUE,
          value_parser = |raw: &str| parse_count(raw, 1, config::MAX_WS_QUEUE),
          help_heading = "WebSockets")]
    ws_max_queue: usize,

    /// Compress messages (permessage-deflate, RFC 7692) with clients that offer it.
    #[arg(long, env = "RSASGI_WS_PER_MESSAGE_DEFLATE", action = ArgAction::Set,
          default_value_t = true, value_name = "BOOL", hide_possible_values = true,
          help_heading = "WebSockets")]
    ws_per_message_deflate: bool,

    /// Seconds between pings to clients (0 disables them).
    #[arg(long, env = "RSASGI_WS_PING_INTERVAL", value_name = "SECONDS",
          default_value_t = Seconds(config::DEFAULT_WS_PING_INTERVAL), value_parser = seconds,
          help_heading = "WebSockets")]
    ws_ping_interval: Seconds,

    /// Close (1011) a client that does not answer a ping within this many
    /// seconds (not counting time the server is not reading, its buffer for
    /// the app full).
    #[arg(long, env = "RSASGI_WS_PING_TIMEOUT", value_name = "SECONDS",
          default_value_t = Seconds(config::DEFAULT_WS_PING_TIMEOUT), value_parser = seconds,
          help_heading = "WebSockets")]
    ws_ping_timeout: Seconds,

    /// For this many seconds after a close, send() drops messages quietly
    /// (a busy Channels consumer gets to its disconnect()); then it raises.
    #[arg(long, env = "RSASGI_WS_CLOSED_SEND_GRACE", value_name = "SECONDS",
          default_value_t = Seconds(config::DEFAULT_WS_CLOSED_SEND_GRACE), value_parser = seconds,
          help_heading = "WebSockets")]
    ws_closed_send_grace: Seconds,

    /// Log level (any case; "warn" means warning). Access lines are info:
    /// a higher level drops them too, unless --access-logfile gives them
    /// their own destination. rsasgi logs nothing at critical, so critical
    /// keeps the error lines (what stops the server must stay visible).
    #[arg(long, env = "RSASGI_LOG_LEVEL", value_name = "LEVEL", value_enum, ignore_case = true,
          default_value_t = LogLevel::Info, help_heading = "Logging")]
    log_level: LogLevel,

    /// Log lines as text, or as json: one object per line.
    #[arg(long, env = "RSASGI_LOG_FORMAT", value_name = "FORMAT", value_enum,
          default_value_t = LogFormat::Text, help_heading = "Logging")]
    log_format: LogFormat,

    /// Python logging configuration (JSON, YAML or INI, as uvicorn reads
    /// it), applied in every process: rsasgi's lines (loggers rsasgi.error,
    /// rsasgi.access, wsgi.errors) then go through its handlers, and
    /// --log-format and --access-logfile give way to it.
    #[arg(long, env = "RSASGI_LOG_CONFIG", value_name = "FILE",
          value_parser = log_config_file, help_heading = "Logging")]
    log_config: Option<PathBuf>,

    /// Append the server's log (and the app's output) to FILE instead of
    /// stderr ("-"); SIGUSR1 reopens it, after logrotate has moved it.
    #[arg(
        long,
        visible_alias = "error-logfile",
        env = "RSASGI_LOG_FILE",
        value_name = "FILE",
        help_heading = "Logging"
    )]
    log_file: Option<PathBuf>,

    /// Append access lines to FILE ("-": stdout), whatever --log-level;
    /// SIGUSR1 reopens it [default: with the server's log].
    #[arg(long, env = "RSASGI_ACCESS_LOGFILE", value_name = "FILE",
          value_parser = AccessDestination::parse, help_heading = "Access log")]
    access_logfile: Option<AccessDestination>,

    /// Log one line per request.
    #[arg(long, env = "RSASGI_ACCESS_LOG", action = ArgAction::Set, num_args = 0..=1,
          default_value_t = true, default_missing_value = "true", value_name = "BOOL", require_equals = true,
          hide_possible_values = true, help_heading = "Access log")]
    access_log: bool,

    /// Do not log requests.
    #[arg(long, env = "RSASGI_NO_ACCESS_LOG", help_heading = "Access log")]
    no_access_log: bool,

    /// The line in gunicorn's atoms (%(h)s "%(r)s" %(s)s %({header}i)s ...),
    /// or common, or combined [default: rsasgi's line, with the latency].
    #[arg(long, visible_alias = "access-logformat", env = "RSASGI_ACCESS_LOG_FORMAT",
          value_name = "FORMAT", value_parser = AccessFormat::parse, help_heading = "Access log")]
    access_log_format: Option<AccessFormat>,

    /// Give each request an ID in X-Request-ID: the one sent (up to 200
    /// visible ASCII characters), else a new one.
    #[arg(long, env = "RSASGI_REQUEST_ID", help_heading = "Access log")]
    request_id: bool,

    /// The request ID's header, instead of X-Request-ID (implies --request-id).
    #[arg(long, env = "RSASGI_REQUEST_ID_HEADER", value_name = "NAME",
          value_parser = request_id_header, help_heading = "Access log")]
    request_id_header: Option<HeaderName>,

    /// Believe the client address and scheme --forwarded-allow-ips peers report.
    #[arg(long, env = "RSASGI_PROXY_HEADERS", action = ArgAction::Set, num_args = 0..=1,
          default_value_t = true, default_missing_value = "true", value_name = "BOOL", require_equals = true,
          hide_possible_values = true, help_heading = "Proxy")]
    proxy_headers: bool,

    /// Ignore proxy headers: the client is the peer.
    #[arg(long, env = "RSASGI_NO_PROXY_HEADERS", help_heading = "Proxy")]
    no_proxy_headers: bool,

    /// Peers whose proxy headers are believed: addresses, networks (10.0.0.0/8),
    /// '*', 'unix' [default: 127.0.0.1,::1,unix; FORWARDED_ALLOW_IPS is honoured].
    #[arg(long, env = "RSASGI_FORWARDED_ALLOW_IPS", value_name = "LIST",
          value_parser = TrustedProxies::parse, help_heading = "Proxy")]
    forwarded_allow_ips: Option<TrustedProxies>,

    /// The only proxy headers read: x-forwarded (X-Forwarded-For, -Proto: nginx,
    /// HAProxy, AWS ALB) or forwarded (RFC 7239), whichever your proxy sets.
    #[arg(long, env = "RSASGI_PROXY_HEADER_FORMAT", value_name = "FORMAT", value_enum,
          default_value_t = ProxyHeaderFormat::XForwarded, hide_possible_values = true,
          help_heading = "Proxy")]
    proxy_header_format: ProxyHeaderFormat,

    /// Serve HTTPS with this certificate (PEM; the chain after it).
    #[arg(
        long,
        visible_alias = "certfile",
        env = "RSASGI_SSL_CERTFILE",
        value_name = "FILE",
        help_heading = "TLS"
    )]
    ssl_certfile: Option<PathBuf>,

    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1) [default: in the certificate file].
    #[arg(
        long,
        visible_alias = "keyfile",
        env = "RSASGI_SSL_KEYFILE",
        value_name = "FILE",
        requires = "ssl_certfile",
        help_heading = "TLS"
    )]
    ssl_keyfile: Option<PathBuf>,

    /// The password of an encrypted (PKCS#8) key.
    #[arg(
        long,
        visible_alias = "keyfile-password",
        env = "RSASGI_SSL_KEYFILE_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true,
        requires = "ssl_certfile",
        help_heading = "TLS"
    )]
    ssl_keyfile_password: Option<String>,

    /// CA certificates (PEM) that client certificates must chain to.
    #[arg(
        long,
        visible_alias = "ca-certs",
        env = "RSASGI_SSL_CA_CERTS",
        value_name = "FILE",
        requires = "ssl_certfile",
        help_heading = "TLS"
    )]
    ssl_ca_certs: Option<PathBuf>,

    /// Client certificates: none, optional or required (gunicorn: 0, 1, 2).
    #[arg(long, visible_alias = "cert-reqs", env = "RSASGI_SSL_CERT_REQS", value_name = "WHICH",
          value_parser = ClientCerts::parse, default_value = "none", requires = "ssl_certfile",
          help_heading = "TLS")]
    ssl_cert_reqs: ClientCerts,

    /// Cipher suites to allow, by rustls or OpenSSL name, separated by ':'
    /// [default: rustls's].
    #[arg(
        long,
        visible_alias = "ciphers",
        env = "RSASGI_SSL_CIPHERS",
        value_name = "SUITES",
        requires = "ssl_certfile",
        help_heading = "TLS"
    )]
    ssl_ciphers: Option<String>,

    /// Oldest TLS version accepted: 1.2 or 1.3.
    #[arg(long, env = "RSASGI_SSL_MIN_VERSION", value_name = "VERSION",
          value_parser = MinVersion::parse, default_value = "1.2", requires = "ssl_certfile",
          help_heading = "TLS")]
    ssl_min_version: MinVersion,
    /// Also believe X-Forwarded-Host, -Port and -Prefix: the host, port and path
    /// prefix the client used (instead of Django's USE_X_FORWARDED_HOST and _PORT).
    #[arg(long, env = "RSASGI_FORWARDED_HOST_HEADERS", help_heading = "Proxy")]
    forwarded_host_headers: bool,

    /// Every connection opens with a PROXY protocol header (HAProxy send-proxy,
    /// AWS NLB), v1 or v2 (either is accepted); believed from --forwarded-allow-ips peers.
    #[arg(long, env = "RSASGI_PROXY_PROTOCOL", value_name = "VERSION", value_enum,
          default_value_t = ProxyProtocol::Off, help_heading = "Proxy")]
    proxy_protocol: ProxyProtocol,

    /// Serve the files in DIR under the URL prefix, e.g. /static=/srv/app/static
    /// (repeatable). Missing files and other methods than GET/HEAD go to the app.
    #[arg(long, env = "RSASGI_STATIC_MAP", value_name = "PREFIX=DIR",
          value_parser = StaticMount::parse, value_delimiter = '\n', help_heading = "Static files")]
    static_map: Vec<StaticMount>,

    /// Cache-Control max-age of static files, in seconds.
    #[arg(long, env = "RSASGI_STATIC_MAX_AGE", value_name = "SECONDS", default_value_t = 60,
          value_parser = |raw: &str| parse_count(raw, 0, MAX_STATIC_MAX_AGE), help_heading = "Static files")]
    static_max_age: u64,

    /// Send "server: rsasgi".
    #[arg(long, env = "RSASGI_SERVER_HEADER", action = ArgAction::Set, num_args = 0..=1,
          default_value_t = true, default_missing_value = "true", value_name = "BOOL", require_equals = true,
          hide_possible_values = true, help_heading = "HTTP")]
    server_header: bool,

    /// Do not send a server header.
    #[arg(long, env = "RSASGI_NO_SERVER_HEADER", help_heading = "HTTP")]
    no_server_header: bool,

    /// Send a date header.
    #[arg(long, env = "RSASGI_DATE_HEADER", action = ArgAction::Set, num_args = 0..=1,
          default_value_t = true, default_missing_value = "true", value_name = "BOOL", require_equals = true,
          hide_possible_values = true, help_heading = "HTTP")]
    date_header: bool,

    /// Do not send a date header.
    #[arg(long, env = "RSASGI_NO_DATE_HEADER", help_heading = "HTTP")]
    no_date_header: bool,

    /// Add a header to every response (repeatable), e.g. --header "X-Frame-Options:DENY".
    #[arg(long = "header", env = "RSASGI_HEADER", value_name = "NAME:VALUE",
          value_parser = parse_header, value_delimiter = '\n', help_heading = "HTTP")]
    headers: Vec<(HeaderName, HeaderValue)>,

    /// HTTP versions served: auto (HTTP/1.1 and HTTP/2: by ALPN over TLS, by
    /// prior knowledge in cleartext), 1 or 2.
    #[arg(
        long,
        env = "RSASGI_HTTP",
        value_enum,
        default_value = "auto",
        value_name = "VERSIONS",
        help_heading = "HTTP"
    )]
    http: HttpEngine,

    /// Streams one HTTP/2 connection may have open at once.
    #[arg(long, env = "RSASGI_HTTP2_MAX_CONCURRENT_STREAMS", value_name = "N",
          default_value_t = config::DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS,
          value_parser = |raw: &str| parse_count(raw, 1, u32::MAX), help_heading = "HTTP/2")]
    http2_max_concurrent_streams: u32,

    /// HTTP/2 flow-control window of each stream, in bytes.
    #[arg(long, env = "RSASGI_HTTP2_INITIAL_STREAM_WINDOW_SIZE", value_name = "BYTES",
          default_value_t = config::DEFAULT_HTTP2_STREAM_WINDOW,
          value_parser = |raw: &str| parse_count(raw, 65_535, config::HTTP2_MAX_WINDOW),
          help_heading = "HTTP/2")]
    http2_initial_stream_window_size: u32,

    /// HTTP/2 flow-control window of each connection, in bytes [default:
    /// --http2-max-concurrent-streams × --http2-initial-stream-window-size].
    #[arg(long, env = "RSASGI_HTTP2_INITIAL_CONNECTION_WINDOW_SIZE", value_name = "BYTES",
          value_parser = |raw: &str| parse_count(raw, 65_535, config::HTTP2_MAX_WINDOW),
          help_heading = "HTTP/2")]
    http2_initial_connection_window_size: Option<u32>,

    /// Largest HTTP/2 header block, decoded, in bytes [default: --limit-request-head].
    #[arg(long, visible_alias = "http2-max-headers-size",
          env = "RSASGI_HTTP2_MAX_HEADER_LIST_SIZE", value_name = "BYTES",
          value_parser = |raw: &str| parse_count(raw, 1024, u32::MAX), help_heading = "HTTP/2")]
    http2_max_header_list_size: Option<u32>,

    /// Close idle keep-alive connections after this many seconds.
    #[arg(long, env = "RSASGI_TIMEOUT_KEEP_ALIVE", value_name = "SECONDS",
          default_value_t = Seconds(config::DEFAULT_TIMEOUT_KEEP_ALIVE), value_parser = seconds,
          help_heading = "Timeouts")]
    timeout_keep_alive: Seconds,

    /// Close a new connection whose request head has not fully arrived within
    /// this many seconds.
    #[arg(long, env = "RSASGI_TIMEOUT_REQUEST_HEADER", value_name = "SECONDS",
          default_value_t = Seconds(config::DEFAULT_TIMEOUT_REQUEST_HEADER),
          value_parser = positive_seconds, help_heading = "Timeouts")]
    timeout_request_header: Seconds,

    /// Seconds between PINGs on idle-looking HTTP/2 connections (0: none).
    #[arg(long, env = "RSASGI_HTTP2_KEEP_ALIVE_INTERVAL", value_name = "SECONDS",
          default_value_t = Seconds(config::DEFAULT_HTTP2_KEEP_ALIVE_INTERVAL),
          value_parser = seconds, help_heading = "HTTP/2")]
    http2_keep_alive_interval: Seconds,

    /// Close an HTTP/2 connection whose peer does not answer a PING in time.
    #[arg(long, env = "RSASGI_HTTP2_KEEP_ALIVE_TIMEOUT", value_name = "SECONDS",
          default_value_t = Seconds(config::DEFAULT_HTTP2_KEEP_ALIVE_TIMEOUT),
          value_parser = positive_seconds, help_heading = "HTTP/2")]
    http2_keep_alive_timeout: Seconds,

    /// On SIGTERM/SIGINT, let in-flight requests run this long before closing
    /// them; the clean-up after (cancelled tasks, the lifespan shutdown) may
    /// take up to 13 s more: give a process manager's kill timeout that too.
    #[arg(long, visible_alias = "graceful-timeout", env = "RSASGI_TIMEOUT_GRACEFUL_SHUTDOWN", value_name = "SECONDS",
          default_value_t = Seconds(config::DEFAULT_TIMEOUT_GRACEFUL_SHUTDOWN),
          value_parser = seconds, help_heading = "Timeouts")]
    timeout_graceful_shutdown: Seconds,

    /// Answer 504 to a request still running after this many seconds (cut it
    /// if its response has started) and cancel it (0: never, as uWSGI's
    /// --harakiri 0).
    #[arg(long, alias = "harakiri", env = "RSASGI_TIMEOUT_REQUEST", value_name = "SECONDS",
          value_parser = seconds, help_heading = "Timeouts")]
    timeout_request: Option<Seconds>,

    /// Cut a response the client takes no bytes of for this many seconds (it
    /// stopped reading, or keeps its HTTP/2 window shut): HTTP/1 closes the
    /// connection, HTTP/2 resets the stream (0: never).
    #[arg(long, env = "RSASGI_TIMEOUT_SEND", value_name = "SECONDS",
          default_value_t = Seconds(config::DEFAULT_TIMEOUT_SEND), value_parser = seconds,
          help_heading = "Timeouts")]
    timeout_send: Seconds,

    /// Answer 408 when a request body brings no bytes for this many seconds
    /// while the app waits for it; once the response has started, the app
    /// sees a disconnect instead (0: never).
    #[arg(long, env = "RSASGI_TIMEOUT_REQUEST_BODY", value_name = "SECONDS",
          default_value_t = Seconds(config::DEFAULT_TIMEOUT_REQUEST_BODY), value_parser = seconds,
          help_heading = "Timeouts")]
    timeout_request_body: Seconds,

    /// Answer 503 to requests beyond this many in flight.
    #[arg(long, env = "RSASGI_LIMIT_CONCURRENCY", value_name = "N",
          value_parser = |raw: &str| parse_count(raw, 1, config::MAX_CONCURRENCY),
          help_heading = "Limits")]
    limit_concurrency: Option<usize>,

    /// Answer 413 to request bodies larger than this (0: no limit, as nginx's
    /// client_max_body_size 0) [default: no limit].
    #[arg(long, env = "RSASGI_LIMIT_REQUEST_BODY", value_name = "BYTES",
          value_parser = |raw: &str| parse_count(raw, 0, config::MAX_REQUEST_BODY),
          help_heading = "Limits")]
    limit_request_body: Option<u64>,

    /// Answer 431 to larger request heads (line + headers).
    #[arg(long, env = "RSASGI_LIMIT_REQUEST_HEAD", value_name = "BYTES",
          default_value_t = config::DEFAULT_LIMIT_REQUEST_HEAD,
          value_parser = |raw: &str| parse_count(raw, config::MIN_REQUEST_HEAD, config::MAX_REQUEST_HEAD),
          help_heading = "Limits")]
    limit_request_head: usize,

    /// Serve Prometheus metrics (/metrics) and health probes (/healthz,
    /// /readyz) on HOST:PORT, from the supervisor with --workers [default: off].
    #[arg(long, env = "RSASGI_METRICS_BIND", value_name = "HOST:PORT",
          value_parser = MetricsBind::parse, help_heading = "Metrics")]
    metrics_bind: Option<MetricsBind>,

    /// Read settings from this TOML file: keys are the long options
    /// [default: [tool.rsasgi] in pyproject.toml of --app-dir].
    #[arg(
        long,
        short = 'c',
        env = "RSASGI_CONFIG",
        value_name = "FILE",
        help_heading = "Configuration"
    )]
    config: Option<PathBuf>,

    /// Print the settings in effect and where each comes from, then exit.
    #[arg(long, conflicts_with = "check_config", help_heading = "Configuration")]
    print_config: bool,

    /// Check the settings, the TLS files and that APP loads, then exit.
    #[arg(long, help_heading = "Configuration")]
    check_config: bool,
}

/// The clap command behind [`parse_invocation`], with the presentation settings the
/// derive cannot express.
pub(crate) fn command() -> Command {
    Args::command()
        // `--help` prints the same compact help as `-h`: the long form spends
        // five lines on each option and no group fits a screen.
        .disable_help_flag(true)
        .arg(
            Arg::new("help")
                .short('h')
                .long("help")
                .action(ArgAction::HelpShort)
                .help("Print help"),
        )
        // "--timeout-keep-alive -1" should say that -1 is out of range, not
        // that -1 is an unknown option.
        .mut_args(|arg| {
            let takes_value = arg.get_action().takes_values();
            arg.allow_negative_numbers(takes_value).hide_env(true)
        })
}

/// Where the configuration file's settings come from.
pub(crate) enum FileSettings {
    /// `--config FILE`, else `[tool.rsasgi]` in `pyproject.toml` of `--app-dir`.
    Discover,
    /// A worker's: the words its supervisor read from the file.
    Inherited(Vec<String>),
}

/// What the command line asks rsasgi to do.
#[derive(Debug)]
pub(crate) enum Action {
    Serve,
    /// `--print-config`, with the listing to print.
    PrintConfig(String),
    /// `--check-config`.
    CheckConfig,
}

/// A parsed command line, with what the configuration file added to it.
#[derive(Debug)]
pub(crate) struct Invocation {
    pub config: Config,
    pub action: Action,
    /// The configuration file read, if any.
    pub config_file: Option<PathBuf>,
    /// The file's settings as command-line words, handed to the workers.
    pub file_args: Vec<String>,
}

/// Parses a command line (program name first), and the configuration file
/// it names or implies, into an [`Invocation`].
///
/// Precedence: the command line, then `RSASGI_*` environment variables,
/// then the file, then the defaults. The file's settings become command-line
/// words put before the real ones, without those the command line or the
/// environment sets, so clap reads them all with the same checks.
pub(crate) fn parse_invocation<I, T>(
    argv: I,
    files: FileSettings,
) -> Result<Invocation, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let mut command = command();
    let (file, file_args) = match files {
        FileSettings::Inherited(args) => (None, args),
        FileSettings::Discover => {
            let file = read_config_file(&command, &argv)?;
            let args = file
                .as_ref()
                .map(|file| config_file::args_of(&file.settings))
                .unwrap_or_default();
            (file, args)
        }
    };
    let mut full: Vec<OsString> = argv.iter().take(1).cloned().collect();
    full.extend(file_args.iter().map(OsString::from));
    full.extend(argv.iter().skip(1).cloned());
    let matches = command
        .try_get_matches_from_mut(full)
        .map_err(|err| blame_file(&mut command, err, file.as_ref()))
        .map_err(|err| blame_environment(&mut command, err, &argv, &file_args))
        .map_err(|err| blame_switch_value(&mut command, err, &argv))?;
    let mut args = Args::from_arg_matches(&matches).map_err(|err| err.format(&mut command))?;
    // Each switch as its --no- form and the sources of the two leave it.
    args.access_log = switch_in_effect(&matches, "access_log", "no_access_log");
    args.proxy_headers = switch_in_effect(&matches, "proxy_headers", "no_proxy_headers");
    args.server_header = switch_in_effect(&matches, "server_header", "no_server_header");
    args.date_header = switch_in_effect(&matches, "date_header", "no_date_header");
    (
        args.no_access_log,
        args.no_proxy_headers,
        args.no_server_header,
        args.no_date_header,
    ) = (false, false, false, false);
    let (print_config, check_config) = (args.print_config, args.check_config);
    let mut config = config_of(args, &mut command)?;
    config.threads_given = matches!(
        matches.value_source("threads"),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    );
    config.sockets_given = ["bind", "uds", "fd"]
        .into_iter()
        .flat_map(|id| {
            let values = matches.get_raw(id).into_iter().flatten();
            values.map(move |raw| format!("--{id} {}", raw.to_string_lossy()))
        })
        .collect();
    config.warnings = ineffective_settings(&command, &matches, &config);
    config
        .warnings
        .extend(config.tls.as_ref().and_then(TlsSettings::unused_password));
    let names = std::env::vars_os().filter_map(|(name, _)| name.into_string().ok());
    config.warnings.extend(unknown_variables(&command, names));
    let action = if print_config {
        Action::PrintConfig(print_config::listing(
            &command,
            &matches,
            file.as_ref(),
            &config,
        ))
    } else if check_config {
        Action::CheckConfig
    } else {
        Action::Serve
    };
    Ok(Invocation {
        config,
        action,
        config_file: file.map(|file| file.path),
        file_args,
    })
}

/// The switches that have a `--no-` form, each with it: set in different
/// places, the one of the stronger source decides (the command line, then
/// the environment; the file's settings count as the command line's,
/// before it); on the command line, the last one given. (clap's
/// `overrides_with` would do the last, but takes a variable and an option
/// for a conflict.)
pub(crate) const SWITCH_PAIRS: [(&str, &str); 4] = [
    ("access_log", "no_access_log"),
    ("proxy_headers", "no_proxy_headers"),
    ("server_header", "no_server_header"),
    ("date_header", "no_date_header"),
];

/// How strongly a setting was given: on the command line (or in the file),
/// in the environment, or not at all.
fn strength(matches: &ArgMatches, id: &str) -> u8 {
    match matches.value_source(id) {
        Some(ValueSource::CommandLine) => 2,
        Some(ValueSource::EnvVariable) => 1,
        _ => 0,
    }
}

/// Whether setting `a` decides over `b`, its other form: given more
/// strongly, or both on the command line and `a` last.
fn decides(matches: &ArgMatches, a: &str, b: &str) -> bool {
    match strength(matches, a).cmp(&strength(matches, b)) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal => {
            strength(matches, a) == 2 && matches.index_of(a) > matches.index_of(b)
        }
    }
}

/// Whether the switch `on` is on, given it and its `--no-` form `off`.
fn switch_in_effect(matches: &ArgMatches, on: &str, off: &str) -> bool {
    let on_value = matches.get_one::<bool>(on).copied().unwrap_or(true);
    let off_value = matches.get_flag(off);
    if decides(matches, on, off) {
        on_value
    } else if decides(matches, off, on) {
        !off_value
    } else {
        // Neither given, or both variables set: a contradiction, and off is
        // the safe reading.
        on_value && !off_value
    }
}

/// The id of a switch's other form when that overrides the switch given
/// (`RSASGI_NO_PROXY_HEADERS` under `--proxy-headers`).
pub(crate) fn overridden_switch(matches: &ArgMatches, id: &str) -> Option<&'static str> {
    let (on, off) = SWITCH_PAIRS
        .into_iter()
        .find(|(on, off)| *on == id || *off == id)?;
    let (mine, other) = if on == id { (on, off) } else { (off, on) };
    (strength(matches, mine) > 0 && decides(matches, other, mine)).then_some(other)
}

/// Parses a command line alone, reading no configuration file.
#[cfg(test)]
pub(crate) fn parse<I, T>(argv: I) -> Result<Config, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    parse_invocation(argv, FileSettings::Inherited(Vec::new())).map(|invocation| invocation.config)
}

/// Reads the configuration file `argv` names or implies, keeping only the
/// settings that neither `argv` nor the environment decides.
fn read_config_file(
    command: &Command,
    argv: &[OsString],
) -> Result<Option<ConfigFile>, clap::Error> {
    // A first look at the command line alone, forgiving what the file may
    // still complete (APP, say): which file to read, and what it may set.
    let first = command
        .clone()
        .ignore_errors(true)
        .try_get_matches_from(argv)?;
    let explicit = first.get_one::<PathBuf>("config").map(PathBuf::as_path);
    let app_dir = first
        .get_one::<PathBuf>("app_dir")
        .map_or(Path::new(config::DEFAULT_APP_DIR), PathBuf::as_path);
    let file = config_file::load(command, explicit, app_dir)
        .map_err(|message| command.clone().error(ErrorKind::ValueValidation, message))?;
    let Some(mut file) = file else {
        return Ok(None);
    };
    let decided: HashSet<String> = command
        .get_arguments()
        .filter(|arg| {
            let on_command_line =
                first.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine);
            // clap reads an option's variable whenever it is set, even empty.
            let in_environment = arg
                .get_env()
                .is_some_and(|name| std::env::var_os(name).is_some());
            on_command_line || in_environment
        })
        .map(|arg| arg.get_id().to_string())
        .collect();
    // A switch given in either form decides both of the file's.
    let decided: HashSet<String> = decided
        .iter()
        .flat_map(|id| {
            let partner = SWITCH_PAIRS
                .iter()
                .find_map(|&(on, off)| (on == id).then_some(off).or((off == id).then_some(on)));
            [Some(id.clone()), partner.map(str::to_string)]
        })
        .flatten()
        .collect();
    file.settings = config_file::without_overridden(file.settings, &decided);
    Ok(Some(file))
}

/// clap's error about a value the file gave, reworded to name the file and
/// its key instead of the option; an error about how options go together
/// (`--reload-dir` needs `--reload`) says that the file's settings count.
fn blame_file(command: &mut Command, err: clap::Error, file: Option<&ConfigFile>) -> clap::Error {
    let Some(file) = file.filter(|file| !file.settings.is_empty()) else {
        return err;
    };
    let message = clap_message(&err);
    let culprit = match err.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(culprit)) => Some(culprit),
        _ => None,
    };
    let from_file = file.settings.iter().find(|setting| {
        command
            .get_arguments()
            .any(|arg| arg.get_id() == setting.id.as_str() && culprit == Some(&arg.to_string()))
    });
    let message = match (from_file, culprit) {
        (Some(setting), Some(culprit)) if message.contains(&format!("'{culprit}'")) => {
            let place = format!("key '{}' in {}", setting.key, Shown(&file.path));
            message.replacen(&format!("'{culprit}'"), &place, 1)
        }
        _ if matches!(
            err.kind(),
            ErrorKind::MissingRequiredArgument | ErrorKind::ArgumentConflict
        ) =>
        {
            format!("{message} (with the settings of {})", Shown(&file.path))
        }
        _ => return err,
    };
    command.error(err.kind(), message)
}

/// `--access-log false APP`: a switch takes no value, so clap reads `false`
/// as the APP and then calls the real APP unexpected (or `false` no APP),
/// which says nothing of the switch. Say what was meant instead.
fn blame_switch_value(command: &mut Command, err: clap::Error, argv: &[OsString]) -> clap::Error {
    // Or, when the word cannot be an APP, clap says that.
    let app_refused = err.kind() == ErrorKind::ValueValidation
        && matches!(err.get(ContextKind::InvalidArg), Some(ContextValue::String(arg)) if arg == "<APP>");
    if err.kind() != ErrorKind::UnknownArgument && !app_refused {
        return err;
    }
    let boolean = |word: &str| {
        matches!(
            word.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "0" | "1"
        )
    };
    let found = argv.windows(2).skip(1).find_map(|pair| {
        let (switch, value) = (pair[0].to_str()?, pair[1].to_str()?);
        let long = switch.strip_prefix("--")?;
        let arg = command
            .get_arguments()
            .find(|arg| arg.get_long() == Some(long))?;
        let switch = !arg.get_action().takes_values() || arg.is_require_equals_set();
        (switch && boolean(value)).then(|| (arg, long.to_owned(), value))
    });
    let Some((arg, long, value)) = found else {
        return err;
    };
    // After the APP, the word is an extra argument, not the APP.
    let extra = matches!(
        err.get(ContextKind::InvalidArg),
        Some(ContextValue::String(culprit)) if culprit == value
    );
    let read_as = if extra {
        "taken as an extra argument"
    } else {
        "read as the APP"
    };
    if arg.get_action().takes_values() {
        // `--access-log=false`: the value is optional, so it must be attached.
        let message = format!(
            "--{long} takes its value after '=', so '{value}' was {read_as}; write \
             --{long}={value}"
        );
        return command.error(ErrorKind::UnknownArgument, message);
    }
    let has = |name: &str| {
        command
            .get_arguments()
            .any(|arg| arg.get_long() == Some(name))
    };
    let (on, off) = match long.strip_prefix("no-") {
        Some(positive) if has(positive) => (format!("--{positive}"), Some(format!("--{long}"))),
        Some(_) => (format!("--{long}"), None),
        None => {
            let negative = format!("no-{long}");
            (
                format!("--{long}"),
                has(&negative).then(|| format!("--{negative}")),
            )
        }
    };
    let choice = match off {
        Some(off) => format!("write {on} alone to turn it on, {off} to turn it off"),
        None => format!("write {on} alone, or leave it out"),
    };
    let message =
        format!("--{long} is a switch and takes no value, so '{value}' was {read_as}; {choice}");
    command.error(ErrorKind::UnknownArgument, message)
}

/// A bad value that came from an environment variable names the variable:
/// `RSASGI_PORT=abc` in a unit file or a container's environment is not on
/// the command line the operator is looking at. So does an option that a
/// variable needs and nothing gave (`RSASGI_SSL_KEYFILE` without a
/// certificate).
fn blame_environment(
    command: &mut Command,
    err: clap::Error,
    argv: &[OsString],
    file_args: &[String],
) -> clap::Error {
    if err.kind() == ErrorKind::MissingRequiredArgument {
        return blame_environment_for_missing(command, err, argv, file_args);
    }
    let Some(ContextValue::String(culprit)) = err.get(ContextKind::InvalidArg) else {
        return err;
    };
    let Some(arg) = command
        .get_arguments()
        .find(|arg| arg.to_string() == *culprit && arg.get_env().is_some())
    else {
        return err;
    };
    let (Some(long), Some(variable)) = (arg.get_long(), arg.get_env().and_then(|v| v.to_str()))
    else {
        return err;
    };
    // The command line (and the file, whose settings come as arguments)
    // wins over the variable: then the bad value is one of theirs.
    if written_as_argument(arg, argv, file_args) {
        return err;
    }
    // And only the variable's own value is blamed on it.
    let refused = match err.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(value)) => Some(value.clone()),
        _ => None,
    };
    let from_variable = std::env::var(variable)
        .is_ok_and(|value| refused.as_ref().is_none_or(|refused| *refused == value));
    if !from_variable {
        return err;
    }
    let message = clap_message(&err);
    if !message.contains(&format!("'{culprit}'")) {
        return err;
    }
    let place = format!("the environment variable {variable} (--{long})");
    let message = message.replacen(&format!("'{culprit}'"), &place, 1);
    command.error(err.kind(), message)
}

/// An option required by another (`--ssl-certfile` by `--ssl-keyfile`) is
/// missing: when the one that needs it was set by its variable alone, name
/// the variable, since the command line shows no such option. The APP
/// missing is clap's plain message.
fn blame_environment_for_missing(
    command: &mut Command,
    err: clap::Error,
    argv: &[OsString],
    file_args: &[String],
) -> clap::Error {
    let missing_options = match err.get(ContextKind::InvalidArg) {
        Some(ContextValue::Strings(missing)) => {
            !missing.is_empty() && missing.iter().all(|arg| arg.starts_with('-'))
        }
        _ => false,
    };
    if !missing_options {
        return err;
    }
    let mut full: Vec<OsString> = argv.iter().take(1).cloned().collect();
    full.extend(file_args.iter().map(OsString::from));
    full.extend(argv.iter().skip(1).cloned());
    // clap does not say which option requires the missing one: an option
    // set by its variable alone is named if, without the variable, nothing
    // is missing any more (a rare path: one parse per such option).
    let requires_it = |arg: &Arg| {
        let without_variable = command.clone().mut_arg(arg.get_id(), |arg| arg.env(None));
        without_variable
            .try_get_matches_from(full.clone())
            .err()
            .is_none_or(|err| err.kind() != ErrorKind::MissingRequiredArgument)
    };
    let set_by_variables: Vec<&Arg> = command
        .get_arguments()
        .filter(|arg| !written_as_argument(arg, argv, file_args))
        .filter(|arg| {
            arg.get_env().and_then(std::env::var_os).is_some() && arg.get_long().is_some()
        })
        .collect();
    let named = |arg: &Arg| {
        let variable = arg.get_env().and_then(|v| v.to_str()).unwrap_or_default();
        format!("{variable} (--{})", arg.get_long().unwrap_or_default())
    };
    let mut from_environment: Vec<String> = set_by_variables
        .iter()
        .filter(|arg| requires_it(arg))
        .map(|arg| named(arg))
        .collect();
    if from_environment.is_empty() {
        // Two variables that need the same option (RSASGI_SSL_KEYFILE and
        // its password): neither one's absence explains it. Each that brings
        // the error back alone, the others' variables unread, is named.
        let missing_with_only = |kept: Option<&Arg>| {
            set_by_variables
                .iter()
                .filter(|arg| kept.is_none_or(|kept| arg.get_id() != kept.get_id()))
                .fold(command.clone(), |cmd, arg| {
                    cmd.mut_arg(arg.get_id(), |arg| arg.env(None))
                })
                .try_get_matches_from(full.clone())
                .err()
                .is_some_and(|err| err.kind() == ErrorKind::MissingRequiredArgument)
        };
        // Only if the variables are what the error is about at all (not an
        // option on the command line).
        if !missing_with_only(None) {
            from_environment = set_by_variables
                .iter()
                .filter(|arg| missing_with_only(Some(arg)))
                .map(|arg| named(arg))
                .collect();
        }
    }
    if from_environment.is_empty() {
        return err;
    }
    let message = format!(
        "{} (set by the environment: {})",
        clap_message(&err),
        from_environment.join(", ")
    );
    command.error(err.kind(), message)
}

/// Whether `arg` is on the command line (or in the file, whose settings come
/// as arguments) under any of its names (gunicorn's `--max-requests`, `-t`).
fn written_as_argument(arg: &Arg, argv: &[OsString], file_args: &[String]) -> bool {
    let longs: Vec<&str> = arg
        .get_long()
        .into_iter()
        .chain(arg.get_all_aliases().into_iter().flatten())
        .collect();
    let shorts: Vec<char> = arg
        .get_short()
        .into_iter()
        .chain(arg.get_all_short_aliases().into_iter().flatten())
        .collect();
    let written = |word: &str| {
        let long_form = word.strip_prefix("--").is_some_and(|word| {
            longs.iter().any(|long| {
                word.strip_prefix(long)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('='))
            })
        });
        let short_form = word.strip_prefix('-').is_some_and(|rest| {
            !shorts.is_empty() && !rest.starts_with('-') && rest.starts_with(shorts.as_slice())
        });
        long_form || short_form
    };
    argv.iter()
        .skip(1)
        .any(|word| word.to_str().is_some_and(written))
        || file_args.iter().any(|word| written(word))
}

/// Settings given (on the command line, in the environment or in the
/// configuration file) that the rest of the configuration makes do nothing:
/// each a warning at startup and in `--check-config`, rather than an error,
/// since a variable set for a whole environment may meet a command line
/// that turns its feature off.
fn ineffective_settings(command: &Command, matches: &ArgMatches, config: &Config) -> Vec<String> {
    let given = |id: &str| {
        matches!(
            matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    };
    // As the user wrote it: `--static-max-age`, or `RSASGI_STATIC_MAX_AGE
    // (--static-max-age)` when the environment set it.
    let flag = |id: &str| {
        let arg = command.get_arguments().find(|arg| arg.get_id() == id);
        let long = (arg.and_then(|arg| arg.get_long()))
            .map_or_else(|| id.to_owned(), |long| format!("--{long}"));
        let variable = arg
            .and_then(|arg| arg.get_env())
            .map(|name| name.to_string_lossy());
        match variable {
            Some(name) if matches.value_source(id) == Some(ValueSource::EnvVariable) => {
                format!("{name} ({long})")
            }
            _ => long,
        }
    };
    let mut warnings = Vec::new();
    let mut unused = |ids: &[&str], why: &str, instead: &str| {
        let named: Vec<String> = ids
            .iter()
            .filter(|id| given(id))
            .map(|id| flag(id))
            .collect();
        if !named.is_empty() {
            let (list, verb, them) = match named.as_slice() {
                [one] => (one.clone(), "does", "it"),
                [rest @ .., last] => (format!("{} and {last}", rest.join(", ")), "do", "them"),
                [] => unreachable!(),
            };
            warnings.push(format!(
                "{list} {verb} nothing {why}; {instead}, or drop {them}"
            ));
        }
    };
    if config.proxy.is_none() {
        unused(
            &["proxy_header_format"],
            "with --no-proxy-headers: no proxy header is read",
            "remove --no-proxy-headers",
        );
        if config.proxy_protocol.is_none() {
            unused(
                &["forwarded_allow_ips"],
                "with --no-proxy-headers and no --proxy-protocol: every client address \
                 comes from the socket",
                "remove --no-proxy-headers",
            );
        }
    }
    let unix_or_fd: Vec<&str> = [("bind", "--bind"), ("uds", "--uds"), ("fd", "--fd")]
        .into_iter()
        .filter(|(id, _)| given(id))
        .map(|(_, option)| option)
        .collect();
    if !unix_or_fd.is_empty() {
        unused(
            &["host", "port"],
            &format!(
                "with {}, which names every socket to listen on",
                unix_or_fd.join(" and ")
            ),
            "add --bind HOST:PORT to listen on a TCP port as well",
        );
    }
    if !config
        .binds
        .iter()
        .any(|bind| matches!(bind, Bind::Tcp { .. }))
    {
        unused(
            &["reuse_port"],
            "without a TCP port for rsasgi to bind: SO_REUSEPORT applies to those only",
            "add --bind HOST:PORT",
        );
    }
    if config.static_files.is_none() {
        unused(
            &["static_max_age"],
            "without --static-map: no static files are served",
            "add --static-map PREFIX=DIR",
        );
    }
    if !config
        .binds
        .iter()
        .any(|bind| matches!(bind, Bind::Unix(_)))
    {
        unused(
            &["uds_permissions"],
            "without a Unix socket to listen on",
            "add --uds PATH (or --bind unix:PATH)",
        );
    }
    if config.supervision.reload.is_none() {
        unused(
            &["reload_delay", "reload_engine"],
            "without --reload: no file is watched",
            "add --reload",
        );
    }
    if config.supervision.max_requests.is_none() {
        unused(
            &["limit_max_requests_jitter"],
            "without --limit-max-requests",
            "add --limit-max-requests N",
        );
    }
    if config.ws.is_none() {
        unused(
            &[
                "ws_max_size",
                "ws_max_queue",
                "ws_per_message_deflate",
                "ws_ping_interval",
                "ws_ping_timeout",
                "ws_closed_send_grace",
            ],
            "with --ws none: WebSocket upgrades reach the app as plain HTTP requests",
            "remove --ws none",
        );
    }
    if config
        .tls
        .as_ref()
        .is_some_and(|tls| tls.client_certs == ClientCerts::None)
    {
        unused(
            &["ssl_ca_certs"],
            "with --ssl-cert-reqs none: no client certificate is asked for",
            "add --ssl-cert-reqs required (or optional)",
        );
    }
    if matches!(config.interface, Interface::Asgi3 | Interface::Asgi2) {
        unused(
            &["threads"],
            "with an ASGI --interface: its threads run WSGI apps only",
            "use --interface wsgi if the app is one",
        );
    }
    if config.interface == Interface::Wsgi && config.lifespan == Lifespan::On {
        // `auto` and `off` ask for nothing that a WSGI app lacks; `on` asks
        // for a startup that must succeed.
        unused(
            &["lifespan"],
            "with --interface wsgi: WSGI has no lifespan protocol, so no startup or shutdown \
             runs",
            "use an ASGI --interface if the app is one",
        );
    }
    if !config.access_log {
        unused(
            &["access_log_format", "access_logfile"],
            "with --no-access-log: no access line is written",
            "remove --no-access-log",
        );
    }
    // The default list trusts a peer on a Unix socket, and a list given
    // replaces it: behind nginx on a socket, naming the remote proxies
    // alone stops believing the local one.
    let only_unix = config
        .binds
        .iter()
        .all(|bind| matches!(bind, Bind::Unix(_)));
    let trusted = config.proxy.as_ref();
    if only_unix && config.proxy_protocol.is_none() && trusted.is_some_and(|t| !t.trusts(None)) {
        let (named, list) = match matches.get_raw("forwarded_allow_ips") {
            Some(raw) => (
                flag("forwarded_allow_ips"),
                raw.map(|value| value.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            None => (
                "FORWARDED_ALLOW_IPS".to_owned(),
                std::env::var("FORWARDED_ALLOW_IPS").unwrap_or_default(),
            ),
        };
        let with_unix = match list.trim() {
            "" => "unix".to_owned(),
            list => format!("{list},unix"),
        };
        warnings.push(format!(
            "{named} {list:?} has no 'unix', and every socket here is a Unix socket: the proxy \
             headers of every request are ignored (the client has no address, the scheme is \
             http); add it: --forwarded-allow-ips {with_unix}"
        ));
    }
    if let Some(ciphers) = config.tls.as_ref().and_then(|tls| tls.ciphers.as_deref()) {
        let lacking = crate::net::tls::lacking_suites(ciphers);
        if !lacking.is_empty() {
            warnings.push(format!(
                "--ssl-ciphers: rsasgi (rustls) has no {}: skipped; the other suites named are \
                 used",
                lacking.join(", ")
            ));
        }
    }
    warnings
}

/// Variables named like ours that no setting reads (`RSASGI_WORKER=4`,
/// `RSASGI_KEEPALIVE`): clap passes over them, so a misspelt one changed
/// nothing without a word. Each is a warning, with the variable meant when
/// one is close; not an error, since an environment shared with other tools
/// may hold a name of theirs that happens to start so.
fn unknown_variables(command: &Command, names: impl Iterator<Item = String>) -> Vec<String> {
    // What one rsasgi process hands the next (a worker, the re-executed
    // supervisor), set in the environment on purpose.
    const INTERNAL: [&str; 3] = [
        config_file::INHERITED_VARIABLE,
        crate::supervisor::handoff::VARIABLE,
        crate::supervisor::interpreter::PATH_VARIABLE,
    ];
    let ours: Vec<(String, Option<&str>)> = command
        .get_arguments()
        .filter_map(|arg| {
            let variable = arg.get_env()?.to_str()?;
            Some((variable.to_owned(), arg.get_long()))
        })
        .collect();
    // An option's alias as a variable (RSASGI_TIMEOUT for gunicorn's --timeout):
    // the variable of the option it names, whatever the spelling says.
    let by_alias = |name: &str| {
        let option = name
            .trim_start_matches("RSASGI_")
            .to_ascii_lowercase()
            .replace('_', "-");
        command.get_arguments().find_map(|arg| {
            let aliased = arg.get_all_aliases()?.contains(&option.as_str());
            let variable = arg.get_env()?.to_str()?;
            aliased.then(|| (variable.to_owned(), arg.get_long(), option.clone()))
        })
    };
    let mut unknown: Vec<String> = names
        .filter(|name| name.starts_with("RSASGI_"))
        .filter(|name| !INTERNAL.contains(&name.as_str()))
        .filter(|name| ours.iter().all(|(variable, _)| variable != name))
        .collect();
    unknown.sort();
    let tail = |name: &str| name.trim_start_matches("RSASGI_").to_owned();
    unknown
        .into_iter()
        .map(|name| {
            if let Some((variable, Some(long), alias)) = by_alias(&name) {
                return format!(
                    "{name} is not a variable rsasgi reads, and is ignored; did you mean \
                     {variable} (--{long}, which --{alias} stands for)?"
                );
            }
            let closest = ours
                .iter()
                .map(|(variable, long)| {
                    (strsim::jaro(&tail(&name), &tail(variable)), variable, long)
                })
                // As for a misspelt option: without the shared prefix, which
                // would make every name look like every other.
                .filter(|(similarity, ..)| *similarity > 0.8)
                .max_by(|(a, ..), (b, ..)| a.total_cmp(b));
            match closest {
                Some((_, variable, Some(long))) => format!(
                    "{name} is not a variable rsasgi reads, and is ignored; did you mean \
                     {variable} (--{long})?"
                ),
                Some((_, variable, None)) => format!(
                    "{name} is not a variable rsasgi reads, and is ignored; did you mean \
                     {variable}?"
                ),
                None => format!(
                    "{name} is not a variable rsasgi reads, and is ignored (each option's \
                     variable is RSASGI_ and its long name: --timeout-keep-alive is \
                     RSASGI_TIMEOUT_KEEP_ALIVE)"
                ),
            }
        })
        .collect()
}

/// Turns what clap parsed into a [`Config`], with the checks that span
/// several options.
fn config_of(args: Args, command: &mut Command) -> Result<Config, clap::Error> {
    let mut compat_notes = Vec::new();
    if args.ws.is_peer_engine() {
        compat_notes.push(format!(
            "--ws {}: rsasgi has one WebSocket engine (yawc); using it",
            value_name(args.ws)
        ));
    }
    if args.http.is_peer_engine() {
        compat_notes.push(format!(
            "--http {}: rsasgi has one HTTP engine (hyper); serving HTTP/1.1 and HTTP/2 with it",
            value_name(args.http)
        ));
    }
    let mut binds = args.bind;
    binds.extend(args.uds.map(Bind::Unix));
    binds.extend(args.fd.map(Bind::Fd));
    if binds.is_empty() {
        binds.push(Bind::Tcp {
            host: args.host,
            port: args.port,
        });
    }
    let trusted = match args.forwarded_allow_ips {
        Some(trusted) => trusted,
        None => forwarded_allow_ips(command)?,
    };
    let proxy_headers = args.proxy_headers && !args.no_proxy_headers;
    if args.forwarded_host_headers && !proxy_headers {
        return Err(command.error(
            ErrorKind::ArgumentConflict,
            "--forwarded-host-headers needs the proxy headers, which --no-proxy-headers turns off",
        ));
    }
    for (index, mount) in args.static_map.iter().enumerate() {
        if let Some(first) = args.static_map[..index]
            .iter()
            .find(|earlier| earlier.prefix == mount.prefix)
        {
            let prefix = if mount.prefix.is_empty() {
                "/"
            } else {
                &mount.prefix
            };
            return Err(command.error(
                ErrorKind::ArgumentConflict,
                format!(
                    "--static-map maps {prefix} twice ({} and {}); one prefix serves one \
                     directory",
                    first.dir.display(),
                    mount.dir.display()
                ),
            ));
        }
    }
    let (workers, workers_from_env) = match args.workers {
        Some(workers) => (Some(workers), false),
        None => {
            let workers = web_concurrency(command)?;
            (workers, workers.is_some())
        }
    };
    let ping_interval = args.ws_ping_interval.0;
    let healthcheck = Some(args.timeout_worker_healthcheck.0).filter(|limit| !limit.is_zero());
    let mut supervision = Supervision {
        workers,
        workers_from_env,
        timeout_worker_healthcheck: healthcheck,
        // With no health check (gunicorn's --timeout 0), no boot deadline
        // unless asked for: gunicorn's one timeout covers both.
        timeout_worker_boot: match args.timeout_worker_boot {
            None => healthcheck.map(|limit| config::DEFAULT_TIMEOUT_WORKER_BOOT.max(limit)),
            Some(Seconds(limit)) => (!limit.is_zero()).then_some(limit),
        },
        max_requests: args.limit_max_requests.filter(|&requests| requests > 0),
        max_requests_jitter: args.limit_max_requests_jitter,
        worker_lifetime: args
            .limit_worker_lifetime
            .map(|seconds| seconds.0)
            .filter(|lifetime| !lifetime.is_zero()),
        worker_memory_mib: args.limit_worker_memory,
        reload: args.reload.then(|| {
            let mut settings = ReloadSettings::default();
            if !args.reload_dirs.is_empty() {
                settings.dirs = args.reload_dirs;
            }
            settings.add_patterns(&args.reload_include, &args.reload_exclude);
            settings.delay = args.reload_delay.0;
            settings.engine = args.reload_engine.unwrap_or_else(ReloadEngine::unset);
            settings
        }),
    };
    // A lone process times its own boot only when asked to: the default is
    // a supervisor's, which starts a worker again, where the process would
    // exit (with its service manager, if any, to start it again).
    if args.timeout_worker_boot.is_none() && !supervision.supervised() {
        supervision.timeout_worker_boot = None;
    }
    let tls = args.ssl_certfile.map(|certfile| TlsSettings {
        certfile,
        keyfile: args.ssl_keyfile,
        password: args.ssl_keyfile_password,
        ca_certs: args.ssl_ca_certs,
        client_certs: args.ssl_cert_reqs,
        ciphers: args.ssl_ciphers,
        min_version: args.ssl_min_version,
    });
    // Before any file is read: a setting's error is exit 2, a file's 1.
    if let Some(message) = tls.as_ref().and_then(|tls| tls.check_settings().err()) {
        return Err(command.error(ErrorKind::ArgumentConflict, message));
    }
    Ok(Config {
        app: args.app,
        factory: args.factory,
        app_dir: args.app_dir,
        binds,
        reuse_port: args.reuse_port,
        // Absolute, so that the file is removed at exit after the app changed
        // directory (os.chdir at import).
        pid_file: args
            .pid_file
            .map(|path| std::path::absolute(&path).unwrap_or(path)),
        daemon: args.daemon,
        // gunicorn's "-": stderr, where the log goes anyway. Absolute, so
        // that SIGUSR1 reopens the same file after the app changed directory.
        log_file: args
            .log_file
            .filter(|path| path.as_os_str() != "-")
            .map(|path| std::path::absolute(&path).unwrap_or(path)),
        access_log_file: args.access_logfile.map(|destination| match destination {
            AccessDestination::File(path) => {
                AccessDestination::File(std::path::absolute(&path).unwrap_or(path))
            }
            stdout => stdout,
        }),
        user: args.user,
        group: args.group,
        umask: args.umask.map(|mode| mode.0),
        supervision,
        interface: args.interface,
        lifespan: args.lifespan,
        event_loop: args.event_loop,
        root_path: args.root_path,
        log_level: args.log_level,
        log_format: args.log_format,
        log_config: args.log_config,
        access_log: args.access_log && !args.no_access_log,
        access_log_format: args.access_log_format.unwrap_or(AccessFormat::Default),
        request_id: match args.request_id_header {
            Some(name) => Some(name),
            None => args
                .request_id
                .then(|| HeaderName::from_static(request_id::DEFAULT_HEADER)),
        },
        server_header: args.server_header && !args.no_server_header,
        http: args.http,
        http2: Http2Settings {
            max_concurrent_streams: args.http2_max_concurrent_streams,
            initial_stream_window_size: args.http2_initial_stream_window_size,
            initial_connection_window_size: args.http2_initial_connection_window_size,
            max_header_list_size: args.http2_max_header_list_size,
        },
        tls,
        proxy_protocol: (args.proxy_protocol != ProxyProtocol::Off).then(|| trusted.clone()),
        proxy: proxy_headers.then_some(trusted),
        proxy_header_format: args.proxy_header_format,
        forwarded_host_headers: args.forwarded_host_headers,
        static_files: (!args.static_map.is_empty()).then(|| StaticSettings {
            mounts: args.static_map,
            max_age: Duration::from_secs(args.static_max_age),
        }),
        date_header: args.date_header && !args.no_date_header,
        headers: args.headers,
        timeout_keep_alive: args.timeout_keep_alive.0,
        timeout_request_header: args.timeout_request_header.0,
        timeout_graceful_shutdown: args.timeout_graceful_shutdown.0,
        timeout_request: args
            .timeout_request
            .map(|seconds| seconds.0)
            .filter(|limit| !limit.is_zero()),
        timeout_send: (!args.timeout_send.0.is_zero()).then_some(args.timeout_send.0),
        timeout_request_body: (!args.timeout_request_body.0.is_zero())
            .then_some(args.timeout_request_body.0),
        http2_keep_alive_interval: (!args.http2_keep_alive_interval.0.is_zero())
            .then_some(args.http2_keep_alive_interval.0),
        http2_keep_alive_timeout: args.http2_keep_alive_timeout.0,
        limit_concurrency: args.limit_concurrency,
        limit_request_body: args.limit_request_body.filter(|&bytes| bytes > 0),
        limit_request_head: args.limit_request_head,
        backlog: args.backlog,
        uds_permissions: args.uds_permissions.0,
        env_file: args.env_file,
        threads: args.threads,
        threads_given: false,
        sockets_given: Vec::new(),
        gc_freeze: args.gc_freeze,
        ws: args.ws.serves().then(|| WsSettings {
            max_size: args.ws_max_size,
            max_queue: args.ws_max_queue,
            ping_interval: (!ping_interval.is_zero()).then_some(ping_interval),
            ping_timeout: args.ws_ping_timeout.0,
            per_message_deflate: args.ws_per_message_deflate,
            closed_send_grace: args.ws_closed_send_grace.0,
        }),
        metrics_bind: args.metrics_bind,
        compat_notes,
        warnings: Vec::new(),
    })
}

/// `WEB_CONCURRENCY`, the worker count Heroku and other platforms set, which
/// uvicorn and gunicorn read when no `--workers` is given.
fn web_concurrency(command: &mut Command) -> Result<Option<Workers>, clap::Error> {
    match std::env::var("WEB_CONCURRENCY") {
        Ok(raw) if !raw.trim().is_empty() => Workers::parse(&raw).map(Some).map_err(|err| {
            command.error(
                ErrorKind::ValueValidation,
                format!("invalid value {raw:?} in WEB_CONCURRENCY: {err}"),
            )
        }),
        _ => Ok(None),
    }
}

/// `FORWARDED_ALLOW_IPS`, which uvicorn and gunicorn read when the option is
/// not given, else their default: proxies on this host.
fn forwarded_allow_ips(command: &mut Command) -> Result<TrustedProxies, clap::Error> {
    let raw = std::env::var("FORWARDED_ALLOW_IPS")
        .unwrap_or_else(|_| proxy_headers::DEFAULT_FORWARDED_ALLOW_IPS.into());
    TrustedProxies::parse(&raw).map_err(|err| {
        command.error(
            ErrorKind::ValueValidation,
            format!("invalid value {raw:?} in FORWARDED_ALLOW_IPS: {err}"),
        )
    })
}

/// The name the command line uses for an enum value.
fn value_name(value: impl ValueEnum) -> String {
    value
        .to_possible_value()
        .map(|possible| possible.get_name().to_owned())
        .unwrap_or_default()
}

/// One line for a usage error: "rsasgi: what is wrong (see 'rsasgi --help')".
pub(crate) fn usage_line(err: &clap::Error) -> String {
    let what = match (err.kind(), err.get(ContextKind::InvalidArg)) {
        (ErrorKind::UnknownArgument, Some(ContextValue::String(arg))) if arg.starts_with('-') => {
            unknown_option(arg)
        }
        _ => clap_message(err),
    };
    format!("rsasgi: {what} (see 'rsasgi --help')")
}

/// Names what an unknown option is: another server's, or a misspelling of
/// ours (by the file's measure, `--timeout-keepalive` for
/// `--timeout-keep-alive`), rather than clap's guess at a similar one, which
/// for `--reload` was `--threads`.
fn unknown_option(arg: &str) -> String {
    let name = arg.split_once('=').map_or(arg, |(name, _)| name);
    peer_option(name).unwrap_or_else(|| {
        // Closer than the file asks: a short word is like too many options
        // (`--foo` like `--loop`).
        let closest = name.strip_prefix("--").and_then(|key| {
            config_file::closest_key(&command(), key)
                .filter(|closest| strsim::jaro(&key.replace('_', "-"), closest) > 0.8)
        });
        match closest {
            Some(closest) => format!("unknown option '{name}'; did you mean '--{closest}'?"),
            None => format!("unknown option '{name}'"),
        }
    })
}

/// What another server's option `name` is here: ours under another name, or
/// not supported yet; `None` when no server we know of has it.
pub(crate) fn peer_option(name: &str) -> Option<String> {
    if let Some((_, ours)) = RENAMED.iter().find(|(theirs, _)| *theirs == name) {
        Some(format!("{name} is {ours} in rsasgi"))
    } else if UNSUPPORTED.contains(&name) {
        Some(format!(
            "{name} is not supported yet by this version of rsasgi"
        ))
    } else {
        None
    }
}

/// clap's message on one line, without its usage block and "error:" prefix.
fn clap_message(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    let lines: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more"))
        .filter(|line| !line.is_empty())
        .collect();
    let message = lines.join(" ");
    match message.strip_prefix("error: ") {
        Some(rest) => rest.to_owned(),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_line(args: &[&str]) -> String {
        let argv = ["rsasgi", "main:app"].iter().chain(args);
        usage_line(&parse(argv).unwrap_err())
    }

    #[test]
    fn the_graceful_shutdown_help_gives_the_time_a_stop_may_take_after_it() {
        let command = command();
        let arg = command
            .get_arguments()
            .find(|arg| arg.get_id() == "timeout_graceful_shutdown")
            .unwrap();
        let help = arg.get_help().unwrap().to_string();
        let after = crate::worker::stop_after_grace().as_secs();
        assert!(help.contains(&format!("up to {after} s more")), "{help}");
    }

    #[test]
    fn zero_max_requests_and_body_limit_mean_none() {
        // gunicorn's --max-requests 0 and nginx's client_max_body_size 0.
        let argv = ["rsasgi", "main:app", "--max-requests", "0"];
        let config = parse(argv.into_iter().chain(["--limit-request-body", "0"])).unwrap();
        assert_eq!(config.supervision.max_requests, None);
        assert_eq!(config.limit_request_body, None);
        let argv = ["rsasgi", "main:app", "--max-requests", "7"];
        let config = parse(argv.into_iter().chain(["--limit-request-body", "1"])).unwrap();
        assert_eq!(config.supervision.max_requests, Some(7));
        assert_eq!(config.limit_request_body, Some(1));
    }

    #[test]
    fn defaults_are_uvicorns() {
        let config = parse(["rsasgi", "main:app"]).unwrap();
        assert_eq!(
            config.binds,
            [Bind::Tcp {
                host: "127.0.0.1".into(),
                port: 8000
            }]
        );
        assert!(!config.supervision.supervised());
        assert_eq!(config.timeout_keep_alive, Duration::from_secs(5));
        assert_eq!(config.timeout_request_header, Duration::from_secs(10));
        assert_eq!(config.timeout_graceful_shutdown, Duration::from_secs(30));
        assert_eq!(config.backlog, 2048);
        assert_eq!(config.uds_permissions, 0o666);
        assert!(config.access_log && config.server_header && config.date_header);
        assert_eq!(config.interface, Interface::Auto);
        assert_eq!(config.log_level, LogLevel::Info);
        assert_eq!(config.limit_concurrency, None);
        assert_eq!(config.limit_request_head, 65536);
        assert_eq!(config.threads, 8);
        let ws = config.ws.unwrap();
        assert_eq!(ws.max_size, 16 * 1024 * 1024);
        assert_eq!(ws.max_queue, 32);
        assert_eq!(ws.ping_interval, Some(Duration::from_secs(20)));
        assert_eq!(ws.ping_timeout, Duration::from_secs(20));
        assert!(config.compat_notes.is_empty());
    }

    #[test]
    fn negative_flags_turn_features_off() {
        let config = parse([
            "rsasgi",
            "main:app",
            "--no-access-log",
            "--no-server-header",
            "--no-date-header",
        ])
        .unwrap();
        assert!(!config.access_log && !config.server_header && !config.date_header);
    }

    #[test]
    fn headers_repeat_and_uds_wins_over_tcp() {
        let config = parse([
            "rsasgi", "main:app", "--header", "a:1", "--header", "b: 2", "--uds", "/tmp/s",
        ])
        .unwrap();
        assert_eq!(config.headers.len(), 2);
        assert_eq!(config.binds, [Bind::Unix("/tmp/s".into())]);
    }

    #[test]
    fn booleans_take_a_value_only_with_equals() {
        let config = parse(["rsasgi", "--access-log=false", "main:app"]).unwrap();
        assert!(!config.access_log);
        let config = parse(["rsasgi", "--server-header", "main:app"]).unwrap();
        assert!(config.server_header);
        assert_eq!(config.app, "main:app");
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for argv in [
            vec!["rsasgi"],
            vec!["rsasgi", "main"],
            vec!["rsasgi", "main:app", "--port", "abc"],
            vec!["rsasgi", "main:app", "--interface", "bogus"],
            vec!["rsasgi", "main:app", "--limit-request-head", "100"],
            vec!["rsasgi", "main:app", "--limit-concurrency", "0"],
            vec!["rsasgi", "main:app", "--threads", "0"],
        ] {
            let err = parse(argv.clone()).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{argv:?}");
        }
    }

    #[test]
    fn every_duration_is_at_most_a_day() {
        for option in [
            "--timeout-keep-alive",
            "--timeout-request-header",
            "--timeout-graceful-shutdown",
            "--ws-ping-interval",
            "--ws-ping-timeout",
        ] {
            assert!(
                parse(["rsasgi", "main:app", option, "86400"]).is_ok(),
                "{option}"
            );
            for value in ["86401", "1e19", "1e20", "-1"] {
                let err = parse(["rsasgi", "main:app", option, value]).unwrap_err();
                assert_eq!(err.exit_code(), 2, "{option} {value}");
                let line = usage_line(&err);
                assert!(
                    line.contains(option) && line.contains(value) && line.contains("86400"),
                    "{line}"
                );
            }
        }
    }

    #[test]
    fn a_worker_lifetime_may_be_a_week() {
        let invocation = parse(["rsasgi", "main:app", "--limit-worker-lifetime", "604800"]);
        assert_eq!(
            invocation.unwrap().supervision.worker_lifetime,
            Some(Duration::from_secs(604_800))
        );
        let err = parse(["rsasgi", "main:app", "--limit-worker-lifetime", "2592001"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(usage_line(&err).contains("2592000 (30 days)"), "{err}");
    }

    #[test]
    fn a_request_timeout_or_worker_lifetime_of_0_is_none_as_uwsgis_harakiri_0() {
        let config = parse([
            "rsasgi",
            "main:app",
            "--timeout-request",
            "0",
            "--limit-worker-lifetime",
            "0",
        ])
        .unwrap();
        assert_eq!(config.timeout_request, None);
        assert_eq!(config.supervision.worker_lifetime, None);
        let config = parse([
            "rsasgi",
            "main:app",
            "--timeout-request",
            "2.5",
            "--limit-worker-lifetime",
            "600",
        ])
        .unwrap();
        assert_eq!(config.timeout_request, Some(Duration::from_millis(2500)));
        assert_eq!(
            config.supervision.worker_lifetime,
            Some(Duration::from_secs(600))
        );
    }

    #[test]
    fn the_request_header_timeout_is_set_and_never_zero() {
        let config = parse(["rsasgi", "main:app", "--timeout-request-header", "2.5"]).unwrap();
        assert_eq!(config.timeout_request_header, Duration::from_millis(2500));
        assert_eq!(
            error_line(&["--timeout-request-header", "0"]),
            "rsasgi: invalid value '0' for '--timeout-request-header <SECONDS>': \
             expected seconds above 0, up to 86400 (see 'rsasgi --help')"
        );
    }

    #[test]
    fn every_size_and_count_is_bounded() {
        for (option, largest, too_large) in [
            ("--limit-request-body", "1099511627776", "1099511627777"),
            ("--limit-request-head", "1048576", "1048577"),
            ("--ws-max-size", "1073741824", "18446744073709551616"),
            ("--ws-max-queue", "4096", "4097"),
            ("--backlog", "65535", "4294967295"),
            ("--threads", "4096", "100000"),
            ("--limit-concurrency", "1048576", "1048577"),
        ] {
            assert!(
                parse(["rsasgi", "main:app", option, largest]).is_ok(),
                "{option}"
            );
            let err = parse(["rsasgi", "main:app", option, too_large]).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{option}");
            let line = usage_line(&err);
            assert!(
                line.contains(option) && line.contains(too_large) && line.contains(largest),
                "{line}"
            );
        }
    }

    #[test]
    fn uds_permissions_are_octal() {
        for raw in ["660", "0660", "0o660"] {
            let config = parse(["rsasgi", "main:app", "--uds-permissions", raw]).unwrap();
            assert_eq!(config.uds_permissions, 0o660, "{raw}");
        }
        assert_eq!(
            error_line(&["--uds-permissions", "1777"]),
            "rsasgi: invalid value '1777' for '--uds-permissions <OCTAL>': \
             expected an octal mode from 0 to 777, like 660 (see 'rsasgi --help')"
        );
    }

    #[test]
    fn other_servers_words_are_understood() {
        let config = parse(["rsasgi", "main:app", "--interface", "asgi"]).unwrap();
        assert_eq!(config.interface, Interface::Asgi3);
        for (raw, level) in [
            ("WARNING", LogLevel::Warning),
            ("warn", LogLevel::Warning),
            ("Info", LogLevel::Info),
            ("DEBUG", LogLevel::Debug),
        ] {
            let config = parse(["rsasgi", "main:app", "--log-level", raw]).unwrap();
            assert_eq!(config.log_level, level, "{raw}");
        }
    }

    #[test]
    fn sockets_given_are_warned_of_under_socket_activation() {
        let config = parse([
            "rsasgi",
            "main:app",
            "--uds",
            "/run/a.sock",
            "-b",
            "[::1]:9000",
        ])
        .unwrap();
        assert_eq!(
            config.sockets_unused_by_activation(2).unwrap(),
            "--bind [::1]:9000 and --uds /run/a.sock do nothing with socket activation: the 2 \
             socket(s) systemd passed are served instead, and nothing else is bound or \
             created; name them in the .socket unit (ListenStream=), or drop them"
        );
        let config = parse(["rsasgi", "main:app", "--fd", "3"]).unwrap();
        assert!(config
            .sockets_unused_by_activation(1)
            .unwrap()
            .starts_with("--fd 3 does nothing with socket activation: "));
        // --host and --port name what is bound without activation, and are no news.
        let config = parse(["rsasgi", "main:app", "--port", "9000"]).unwrap();
        assert_eq!(config.sockets_unused_by_activation(1), None);
    }

    #[test]
    fn socket_settings_that_do_nothing_are_warned_of() {
        let warnings = |argv: &[&str]| {
            let mut full = vec!["rsasgi", "main:app"];
            full.extend_from_slice(argv);
            parse(full).unwrap().warnings
        };
        assert_eq!(
            warnings(&["--uds", "/run/a.sock", "--port", "9000"]),
            [
                "--port does nothing with --uds, which names every socket to listen on; add \
              --bind HOST:PORT to listen on a TCP port as well, or drop it"
            ]
        );
        assert_eq!(
            warnings(&["--bind", "127.0.0.1:9000", "--host", "0.0.0.0"]).len(),
            1
        );
        assert!(warnings(&["--port", "9000", "--reuse-port"]).is_empty());
        assert_eq!(
            warnings(&["--uds", "/run/a.sock", "--reuse-port"]),
            [
                "--reuse-port does nothing without a TCP port for rsasgi to bind: SO_REUSEPORT \
              applies to those only; add --bind HOST:PORT, or drop it"
            ]
        );
        let unix = ["--uds", "/run/a.sock", "--forwarded-allow-ips"];
        assert_eq!(
            warnings(&[&unix[..], &["10.0.0.5"]].concat()),
            [
                "--forwarded-allow-ips \"10.0.0.5\" has no 'unix', and every socket here is a \
              Unix socket: the proxy headers of every request are ignored (the client has no \
              address, the scheme is http); add it: --forwarded-allow-ips 10.0.0.5,unix"
            ]
        );
        assert!(warnings(&[&unix[..], &["10.0.0.5,unix"]].concat()).is_empty());
        assert!(warnings(&[&unix[..], &["*"]].concat()).is_empty());
        assert!(
            warnings(&[&unix[..], &["10.0.0.5", "--proxy-protocol", "v2"]].concat()).is_empty()
        );
        assert!(warnings(&[&unix[..], &["10.0.0.5", "--bind", "0.0.0.0:80"]].concat()).is_empty());
    }

    #[test]
    fn settings_the_rest_makes_do_nothing_are_warned_of() {
        let warnings = |argv: &[&str]| {
            let mut full = vec!["rsasgi", "main:app"];
            full.extend_from_slice(argv);
            parse(full).unwrap().warnings
        };
        assert!(warnings(&[]).is_empty());
        assert!(warnings(&["--static-map", "/s=/tmp", "--static-max-age", "60"]).is_empty());
        assert!(warnings(&["--uds", "/run/a.sock", "--uds-permissions", "660"]).is_empty());
        assert!(warnings(&["--bind", "unix:/run/a.sock", "--uds-permissions", "660"]).is_empty());
        assert!(warnings(&[
            "--no-proxy-headers",
            "--proxy-protocol",
            "v1",
            "--forwarded-allow-ips",
            "10.0.0.1"
        ])
        .is_empty());
        assert_eq!(
            warnings(&["--static-max-age", "60"]),
            [
                "--static-max-age does nothing without --static-map: no static files are served; \
              add --static-map PREFIX=DIR, or drop it"
            ]
        );
        assert_eq!(
            warnings(&["--no-proxy-headers", "--forwarded-allow-ips", "10.0.0.1"]),
            [
                "--forwarded-allow-ips does nothing with --no-proxy-headers and no \
              --proxy-protocol: every client address comes from the socket; remove \
              --no-proxy-headers, or drop it"
            ]
        );
        assert_eq!(
            warnings(&[
                "--ws",
                "none",
                "--ws-max-size",
                "100",
                "--ws-ping-interval",
                "3"
            ]),
            [
                "--ws-max-size and --ws-ping-interval do nothing with --ws none: WebSocket \
              upgrades reach the app as plain HTTP requests; remove --ws none, or drop them"
            ]
        );
        assert_eq!(
            warnings(&["--reload-delay", "1"]),
            [
                "--reload-delay does nothing without --reload: no file is watched; add --reload, \
              or drop it"
            ]
        );
        assert!(warnings(&["--reload", "--reload-delay", "1"]).is_empty());
        assert_eq!(warnings(&["--uds-permissions", "600"]).len(), 1);
        assert_eq!(warnings(&["--limit-max-requests-jitter", "5"]).len(), 1);
        assert_eq!(
            warnings(&["--no-proxy-headers", "--proxy-header-format", "forwarded"]).len(),
            1
        );
        assert_eq!(
            warnings(&[
                "--no-access-log",
                "--access-log-format",
                "%(h)s",
                "--access-logfile",
                "-"
            ]),
            [
                "--access-log-format and --access-logfile do nothing with --no-access-log: no \
              access line is written; remove --no-access-log, or drop them"
            ]
        );
        assert_eq!(
            warnings(&["--interface", "wsgi", "--lifespan", "on"]),
            [
                "--lifespan does nothing with --interface wsgi: WSGI has no lifespan protocol, \
              so no startup or shutdown runs; use an ASGI --interface if the app is one, or \
              drop it"
            ]
        );
        assert!(warnings(&["--interface", "wsgi", "--lifespan", "off"]).is_empty());
        assert!(warnings(&["--lifespan", "on"]).is_empty());
        // One process times its own boot (a thread of its own, while its
        // main thread is stuck in the import or the startup).
        assert!(warnings(&["--timeout-worker-boot", "5"]).is_empty());
        assert!(warnings(&["--timeout-worker-boot", "5", "--workers", "1"]).is_empty());
        assert!(warnings(&["--timeout-worker-boot", "5", "--reload"]).is_empty());
        // The defaults (a value clap filled in) are not the user's doing.
        assert!(warnings(&["--ws", "none", "--no-access-log"]).is_empty());
    }

    #[test]
    fn one_process_times_its_boot_only_when_asked() {
        let boot = |args: &[&str]| {
            let argv = ["rsasgi", "main:app"].iter().chain(args);
            parse(argv).unwrap().supervision.timeout_worker_boot
        };
        let default = Some(config::DEFAULT_TIMEOUT_WORKER_BOOT);
        assert_eq!(boot(&[]), None);
        assert_eq!(
            boot(&["--timeout-worker-boot", "2"]),
            Some(Duration::from_secs(2))
        );
        assert_eq!(boot(&["--timeout-worker-boot", "0"]), None);
        assert_eq!(boot(&["--workers", "1"]), default);
        assert_eq!(boot(&["--reload"]), default);
        assert_eq!(boot(&["--limit-max-requests", "100"]), default);
    }

    #[test]
    fn peer_engines_are_served_by_ours_and_noted() {
        for engine in ["websockets", "websockets-sansio", "wsproto"] {
            let config = parse(["rsasgi", "main:app", "--ws", engine]).unwrap();
            assert!(config.ws.is_some(), "{engine}");
            assert_eq!(
                config.compat_notes,
                [format!(
                    "--ws {engine}: rsasgi has one WebSocket engine (yawc); using it"
                )]
            );
        }
        for engine in ["h11", "httptools"] {
            let config = parse(["rsasgi", "main:app", "--http", engine]).unwrap();
            assert!(config.http.serves_http1() && config.http.serves_http2());
            assert_eq!(
                config.compat_notes,
                [format!(
                    "--http {engine}: rsasgi has one HTTP engine (hyper); serving HTTP/1.1 and \
                     HTTP/2 with it"
                )]
            );
        }
        let versions = |http: &str| {
            let config = parse(["rsasgi", "main:app", "--http", http]).unwrap();
            assert!(config.compat_notes.is_empty());
            (config.http.serves_http1(), config.http.serves_http2())
        };
        assert_eq!(versions("auto"), (true, true));
        assert_eq!(versions("1"), (true, false));
        assert_eq!(versions("2"), (false, true));
        let config = parse(["rsasgi", "main:app", "--ws", "none"]).unwrap();
        assert!(config.ws.is_none() && config.compat_notes.is_empty());
        assert_eq!(
            parse(["rsasgi", "main:app", "--loop", "none"])
                .unwrap_err()
                .exit_code(),
            2
        );
    }

    #[test]
    fn peer_options_rsasgi_lacks_say_so() {
        for (args, name) in [
            (&["--reload-paths", "x"][..], "--reload-paths"),
            (&["--chdir=x"], "--chdir"),
            (&["-k", "gthread"], "-k"),
        ] {
            assert_eq!(
                error_line(args),
                format!(
                    "rsasgi: {name} is not supported yet by this version of rsasgi \
                     (see 'rsasgi --help')"
                ),
                "{args:?}"
            );
        }
        for option in ["--reload-tick", "--preload", "--paste", "-k"] {
            assert_eq!(
                error_line(&[option]),
                format!(
                    "rsasgi: {option} is not supported yet by this version of rsasgi \
                     (see 'rsasgi --help')"
                )
            );
        }
    }

    #[test]
    fn workers_binds_and_peer_spellings() {
        let config = parse([
            "rsasgi",
            "main:app",
            "-w",
            "3",
            "-b",
            "0.0.0.0:80",
            "--bind",
            "unix:/tmp/a.sock",
            "--uds",
            "/tmp/b.sock",
            "--max-requests",
            "1000",
            "--max-requests-jitter=50",
            "-t",
            "60",
            "--graceful-timeout",
            "7",
        ])
        .unwrap();
        assert_eq!(
            config.binds,
            [
                Bind::Tcp {
                    host: "0.0.0.0".into(),
                    port: 80
                },
                Bind::Unix("/tmp/a.sock".into()),
                Bind::Unix("/tmp/b.sock".into()),
            ]
        );
        let supervision = &config.supervision;
        assert_eq!(supervision.workers, Some(Workers::Count(3)));
        assert_eq!(supervision.max_requests, Some(1000));
        assert_eq!(supervision.max_requests_jitter, 50);
        assert_eq!(
            supervision.timeout_worker_healthcheck,
            Some(Duration::from_secs(60))
        );
        assert_eq!(config.timeout_graceful_shutdown, Duration::from_secs(7));
        let config = parse(["rsasgi", "main:app", "--limit-max-requests", "5"]).unwrap();
        assert!(config.supervision.supervised());
        assert_eq!(
            error_line(&["--workers", "0"]),
            "rsasgi: invalid value '0' for '--workers <N>': expected a whole number from 1 \
             to 1024, or auto (see 'rsasgi --help')"
        );
    }

    #[test]
    fn renamed_peer_options_point_to_ours() {
        assert_eq!(
            error_line(&["--keep-alive", "5"]),
            "rsasgi: --keep-alive is --timeout-keep-alive in rsasgi (see 'rsasgi --help')"
        );
        assert_eq!(
            error_line(&["--no-ws"]),
            "rsasgi: --no-ws is --ws none in rsasgi (see 'rsasgi --help')"
        );
    }

    #[test]
    fn proxy_protocol_and_host_headers_are_off_unless_asked_for() {
        let config = parse(["rsasgi", "main:app"]).unwrap();
        assert!(config.proxy_protocol.is_none() && !config.forwarded_host_headers);
        let config = parse([
            "rsasgi",
            "main:app",
            "--proxy-protocol",
            "v2",
            "--forwarded-allow-ips",
            "10.0.0.0/8",
            "--no-proxy-headers",
        ])
        .unwrap();
        assert!(config.proxy.is_none(), "--no-proxy-headers");
        assert_eq!(
            config.proxy_protocol,
            Some(TrustedProxies::parse("10.0.0.0/8").unwrap()),
            "the PROXY header is believed from the same peers"
        );
        let config = parse(["rsasgi", "main:app", "--forwarded-host-headers"]).unwrap();
        assert!(config.forwarded_host_headers && config.proxy.is_some());
        assert_eq!(
            error_line(&["--forwarded-host-headers", "--proxy-headers=false"]),
            "rsasgi: --forwarded-host-headers needs the proxy headers, which --no-proxy-headers \
             turns off (see 'rsasgi --help')"
        );
        assert_eq!(
            error_line(&["--proxy-allow-from", "10.0.0.1"]),
            "rsasgi: --proxy-allow-from is --forwarded-allow-ips in rsasgi (see 'rsasgi --help')"
        );
    }

    #[test]
    fn unknown_variables_are_named_with_the_one_meant() {
        let warnings = |names: &[&str]| {
            unknown_variables(&command(), names.iter().map(|name| name.to_string()))
        };
        assert!(warnings(&[
            "RSASGI_WORKERS",
            "RSASGI_TIMEOUT_KEEP_ALIVE",
            "RSASGI_CONFIG",
            "RSASGI_WORKER_HANDOFF",
            "RSASGI_WORKER_FILE_SETTINGS",
            "RSASGI_WORKER_SYS_PATH0",
            "PATH",
            "UVICORN_WORKERS",
        ])
        .is_empty());
        assert_eq!(
            warnings(&[
                "RSASGI_WORKER",
                "RSASGI_TIMEOUT_KEEPALIVE",
                "RSASGI_FROBNICATE",
                "RSASGI_TIMEOUT",
            ]),
            [
                "RSASGI_FROBNICATE is not a variable rsasgi reads, and is ignored (each option's \
                 variable is RSASGI_ and its long name: --timeout-keep-alive is \
                 RSASGI_TIMEOUT_KEEP_ALIVE)",
                // gunicorn's --timeout, an alias: not RSASGI_TIMEOUT_SEND, the closest spelling.
                "RSASGI_TIMEOUT is not a variable rsasgi reads, and is ignored; did you mean \
                 RSASGI_TIMEOUT_WORKER_HEALTHCHECK (--timeout-worker-healthcheck, which \
                 --timeout stands for)?",
                "RSASGI_TIMEOUT_KEEPALIVE is not a variable rsasgi reads, and is ignored; did \
                 you mean RSASGI_TIMEOUT_KEEP_ALIVE (--timeout-keep-alive)?",
                "RSASGI_WORKER is not a variable rsasgi reads, and is ignored; did you mean \
                 RSASGI_WORKERS (--workers)?",
            ]
        );
    }

    #[test]
    fn unknown_options_get_the_closest_one_or_none() {
        for args in [&["--foo"][..], &["--foo=1"], &["--quux-frobnicate", "3"]] {
            let name = args[0].split('=').next().unwrap();
            assert_eq!(
                error_line(args),
                format!("rsasgi: unknown option '{name}' (see 'rsasgi --help')")
            );
        }
        for (args, closest) in [
            (&["--timeout-keep-alivex", "3"][..], "--timeout-keep-alive"),
            (&["--timeout-keepalive=3"], "--timeout-keep-alive"),
            // Not clap's own guess, which was --threads.
            (&["--relaod"], "--reload"),
        ] {
            let name = args[0].split('=').next().unwrap();
            assert_eq!(
                error_line(args),
                format!(
                    "rsasgi: unknown option '{name}'; did you mean '{closest}'? \
                     (see 'rsasgi --help')"
                )
            );
        }
    }

    #[test]
    fn other_errors_keep_clap_message_on_one_line() {
        assert_eq!(
            error_line(&["--port", "abc"]),
            "rsasgi: invalid value 'abc' for '--port <PORT>': invalid digit found in string \
             (see 'rsasgi --help')"
        );
    }

    #[test]
    fn unsupported_and_renamed_options_are_not_ours() {
        let ours: Vec<String> = command()
            .get_arguments()
            .flat_map(|arg| {
                let long = arg.get_long().map(|long| format!("--{long}"));
                let short = arg.get_short().map(|short| format!("-{short}"));
                long.into_iter().chain(short)
            })
            .collect();
        let theirs = UNSUPPORTED
            .iter()
            .chain(RENAMED.iter().map(|(theirs, _)| theirs));
        for option in theirs {
            assert!(
                !ours.contains(&option.to_string()),
                "{option} is an rsasgi option"
            );
        }
    }

    #[test]
    fn an_access_log_format_is_parsed_once_and_checked() {
        let config = parse(["rsasgi", "main:app"]).unwrap();
        assert_eq!(config.access_log_format, AccessFormat::Default);
        let config = parse(["rsasgi", "main:app", "--access-logformat", "%(s)s %(D)s"]).unwrap();
        assert!(
            matches!(config.access_log_format, AccessFormat::Custom(pieces) if pieces.len() == 3)
        );
        assert_eq!(
            error_line(&["--access-log-format", "%(h)s %(x)s"]),
            "rsasgi: invalid value '%(h)s %(x)s' for '--access-log-format <FORMAT>': unknown \
             atom %(x)s; the atoms are h l u t r m U q H s B b f a T D M L p {header}i \
             {header}o {variable}e (see 'rsasgi --help')"
        );
    }

    #[test]
    fn log_files_take_gunicorns_names_and_dash() {
        let config = parse(["rsasgi", "main:app"]).unwrap();
        assert_eq!((config.log_file, config.access_log_file), (None, None));
        assert_eq!(config.log_format, LogFormat::Text);
        let config = parse([
            "rsasgi",
            "main:app",
            "--error-logfile",
            "-",
            "--access-logfile",
            "-",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(config.log_file, None);
        assert_eq!(config.access_log_file, Some(AccessDestination::Stdout));
        assert_eq!(config.log_format, LogFormat::Json);
        let config = parse([
            "rsasgi",
            "main:app",
            "--error-logfile",
            "/var/log/e.log",
            "--access-logfile",
            "/var/log/a.log",
        ])
        .unwrap();
        assert_eq!(config.log_file, Some(PathBuf::from("/var/log/e.log")));
        assert_eq!(
            config.access_log_file,
            Some(AccessDestination::File("/var/log/a.log".into()))
        );
    }

    #[test]
    fn request_ids_are_off_unless_asked_for() {
        let id = |args: &[&str]| {
            let argv = ["rsasgi", "main:app"].iter().chain(args);
            parse(argv).unwrap().request_id
        };
        assert_eq!(id(&[]), None);
        assert_eq!(id(&["--request-id"]).unwrap(), "x-request-id");
        assert_eq!(
            id(&["--request-id-header", "X-Correlation-ID"]).unwrap(),
            "x-correlation-id"
        );
        assert_eq!(
            error_line(&["--request-id-header", "bad name"]),
            "rsasgi: invalid value 'bad name' for '--request-id-header <NAME>': \"bad name\" is \
             not a header name (see 'rsasgi --help')"
        );
    }

    #[test]
    fn the_command_is_well_formed() {
        command().debug_assert();
    }

    /// Parses `args` after `--config` naming a file that holds `toml`.
    fn with_file(toml: &str, args: &[&str]) -> Result<Invocation, clap::Error> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rsasgi.toml");
        std::fs::write(&path, toml).unwrap();
        let mut argv = vec!["rsasgi", "--config", path.to_str().unwrap()];
        argv.extend(args);
        parse_invocation(argv, FileSettings::Discover)
    }

    #[test]
    fn the_file_sets_what_the_command_line_does_not() {
        let invocation = with_file(
            "app = \"main:app\"\nport = 9000\nheader = [\"X-A: 1\"]\nserver-header = false\n",
            &[],
        )
        .unwrap();
        let config = invocation.config;
        assert_eq!(config.app, "main:app");
        assert_eq!(
            config.binds,
            [Bind::Tcp {
                host: "127.0.0.1".into(),
                port: 9000
            }]
        );
        assert_eq!(config.headers.len(), 1);
        assert!(!config.server_header);
        assert!(matches!(invocation.action, Action::Serve));
        assert_eq!(
            invocation.file_args,
            [
                "main:app",
                "--port=9000",
                "--header=X-A: 1",
                "--server-header=false"
            ]
        );
    }

    #[test]
    fn the_command_line_wins_over_the_file() {
        let toml =
            "app = \"main:app\"\nport = 9000\nthreads = 3\nheader = [\"X-A: 1\", \"X-B: 2\"]\n";
        let invocation =
            with_file(toml, &["other:app", "--port", "9001", "--header", "X-C: 3"]).unwrap();
        let config = invocation.config;
        assert_eq!(config.app, "other:app");
        assert_eq!(
            config.binds,
            [Bind::Tcp {
                host: "127.0.0.1".into(),
                port: 9001
            }]
        );
        assert_eq!(
            config.threads, 3,
            "what the command line leaves, the file sets"
        );
        let names: Vec<&str> = config
            .headers
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        assert_eq!(
            names,
            ["x-c"],
            "the command line's list replaces the file's"
        );
        assert_eq!(invocation.file_args, ["--threads=3"]);
    }

    #[test]
    fn a_negation_on_the_command_line_beats_the_files_switch() {
        let config = with_file("access-log = true", &["main:app", "--no-access-log"])
            .unwrap()
            .config;
        assert!(!config.access_log);
        let config = with_file("no-access-log = true", &["main:app", "--access-log=true"])
            .unwrap()
            .config;
        assert!(config.access_log);
    }

    #[test]
    fn a_bad_value_in_the_file_names_its_key_and_the_file() {
        let err = with_file("port = \"abc\"", &["main:app"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let line = usage_line(&err);
        assert!(
            line.starts_with("rsasgi: invalid value 'abc' for key 'port' in /")
                && line
                    .ends_with("rsasgi.toml: invalid digit found in string (see 'rsasgi --help')"),
            "{line}"
        );
        let line = usage_line(&with_file("timeout-keep-alive = 1e20", &["main:app"]).unwrap_err());
        assert!(
            line.contains("key 'timeout-keep-alive' in /") && line.contains("86400"),
            "{line}"
        );
        let line = usage_line(&with_file("app = \"main\"", &[]).unwrap_err());
        assert!(line.contains("key 'app' in /"), "{line}");
    }

    #[test]
    fn a_bad_key_is_a_usage_error() {
        let err = with_file("timeout-keepalive = 5", &["main:app"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let line = usage_line(&err);
        assert!(
            line.starts_with("rsasgi: unknown key 'timeout-keepalive' in /")
                && line.contains("did you mean 'timeout-keep-alive'?"),
            "{line}"
        );
        let err = with_file("port = true", &["main:app"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn a_worker_takes_the_settings_its_supervisor_read() {
        let inherited = FileSettings::Inherited(vec!["main:app".into(), "--threads=5".into()]);
        // The worker's own --config is not read again.
        let invocation =
            parse_invocation(["rsasgi", "--config", "/nonexistent.toml"], inherited).unwrap();
        assert_eq!(invocation.config.app, "main:app");
        assert_eq!(invocation.config.threads, 5);
    }

    #[test]
    fn print_config_lists_every_setting_with_its_source() {
        let toml = "app = \"main:app\"\nthreads = 3\nheader = [\"X-A: 1\"]\n";
        let invocation = with_file(toml, &["--print-config", "--port", "9001"]).unwrap();
        let Action::PrintConfig(listing) = invocation.action else {
            panic!("{:?}", invocation.action);
        };
        let file = invocation.config_file.unwrap();
        let line = |key: &str| {
            listing
                .lines()
                .find(|line| {
                    line.trim_start_matches("# ")
                        .starts_with(&format!("{key} = "))
                })
                .unwrap_or_else(|| panic!("no {key} in {listing}"))
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        let from_file = format!("# file {}", file.display());
        assert_eq!(line("app"), format!("app = \"main:app\" {from_file}"));
        assert_eq!(line("threads"), format!("threads = 3 {from_file}"));
        assert_eq!(line("header"), format!("header = [\"X-A: 1\"] {from_file}"));
        assert_eq!(line("port"), "port = 9001 # command line");
        assert_eq!(line("host"), "# host = \"127.0.0.1\" # default");
        assert_eq!(
            line("timeout-keep-alive"),
            "# timeout-keep-alive = 5 # default"
        );
        assert_eq!(line("reload-delay"), "# reload-delay = 0.25 # default");
        assert_eq!(
            line("uds-permissions"),
            "# uds-permissions = \"666\" # default"
        );
        assert!(listing.contains("\n# uds is not set\n"), "{listing}");
    }

    #[test]
    fn print_config_is_a_configuration_file_itself() {
        let invocation = with_file(
            "app = \"main:app\"\nssl-certfile = \"/c.pem\"\nssl-keyfile-password = \"secret\"\n",
            &[
                "--print-config",
                "--timeout-keep-alive",
                "0.5",
                "--workers",
                "auto",
            ],
        )
        .unwrap();
        let Action::PrintConfig(listing) = invocation.action else {
            panic!("{:?}", invocation.action);
        };
        assert!(!listing.contains("secret"), "{listing}");
        assert!(
            listing.contains("ssl-keyfile-password = \"(hidden)\""),
            "{listing}"
        );
        let table: toml::Table = listing.parse().expect("the listing is TOML");
        config_file::settings(&command(), &table, "listing").expect("every key is valid");
        assert_eq!(table["timeout-keep-alive"].as_float(), Some(0.5));
        assert_eq!(table["workers"].as_str(), Some("auto"));
        assert!(!table.contains_key("reload-delay"), "defaults are comments");
        let again = with_file(&listing, &[]).expect("the listing reads back");
        assert_eq!(again.config.app, "main:app");
        assert_eq!(again.config.timeout_keep_alive, Duration::from_millis(500));
        assert_eq!(again.config.supervision.workers, Some(Workers::Auto));
    }
}
