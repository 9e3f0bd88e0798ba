//! The command line: clap definitions turned into a [`Config`].
//!
//! Option names follow uvicorn's wherever uvicorn has the same setting, so a
//! user switches servers by changing one word. Every option can also be set
//! through an `RSASGI_<NAME>` environment variable.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser};
use http::header::{HeaderName, HeaderValue};

use crate::config::{
    parse_app, parse_header, parse_root_path, parse_seconds, Bind, Config, EventLoop, Interface,
    Lifespan, LogLevel, WsMode, DEFAULT_HTTP2_KEEP_ALIVE_INTERVAL,
    DEFAULT_HTTP2_KEEP_ALIVE_TIMEOUT, MIN_REQUEST_HEAD,
};
use crate::ws::WsSettings;

#[derive(Debug, Parser)]
#[command(
    name = "rsasgi",
    version,
    about = "Serve an ASGI application (Django, Starlette, FastAPI, ...) over HTTP.",
    long_about = None,
    after_help = "Examples:\n  rsasgi myproject.asgi:application\n  rsasgi main:app --host 0.0.0.0 --port 8080\n  rsasgi main:create_app --factory --lifespan on\n\nEvery option can also be set as an environment variable, e.g. RSASGI_PORT=8080."
)]
struct Args {
    /// The application, as "module:attribute" (e.g. "myproject.asgi:application").
    #[arg(value_name = "APP", env = "RSASGI_APP", value_parser = parse_app)]
    app: String,

    /// Treat APP as a factory: call it with no arguments to get the application.
    #[arg(long, env = "RSASGI_FACTORY")]
    factory: bool,

    /// Directory added to sys.path before importing APP.
    #[arg(long, env = "RSASGI_APP_DIR", value_name = "DIR", default_value = ".")]
    app_dir: PathBuf,

    /// Address to bind.
    #[arg(
        long,
        env = "RSASGI_HOST",
        default_value = "127.0.0.1",
        help_heading = "Socket"
    )]
    host: String,

    /// Port to bind; 0 picks a free port and logs it.
    #[arg(
        long,
        env = "RSASGI_PORT",
        default_value_t = 8000,
        help_heading = "Socket"
    )]
    port: u16,

    /// Bind to a Unix domain socket at PATH instead of host and port.
    #[arg(
        long,
        env = "RSASGI_UDS",
        value_name = "PATH",
        conflicts_with = "fd",
        help_heading = "Socket"
    )]
    uds: Option<PathBuf>,

    /// Serve on an already-listening socket inherited as file descriptor N.
    #[arg(long, env = "RSASGI_FD", value_name = "N", help_heading = "Socket")]
    fd: Option<i32>,

    /// Maximum number of connections waiting to be accepted.
    #[arg(
        long,
        env = "RSASGI_BACKLOG",
        default_value_t = 2048,
        help_heading = "Socket"
    )]
    backlog: u32,

    /// Application interface; "auto" inspects the callable.
    #[arg(
        long,
        env = "RSASGI_INTERFACE",
        value_enum,
        default_value = "auto",
        help_heading = "Application"
    )]
    interface: Interface,

    /// ASGI lifespan protocol; "auto" carries on if the app does not support it.
    #[arg(
        long,
        env = "RSASGI_LIFESPAN",
        value_enum,
        default_value = "auto",
        help_heading = "Application"
    )]
    lifespan: Lifespan,

    /// Event loop for the app; "auto" uses uvloop when it is installed.
    #[arg(
        long = "loop",
        env = "RSASGI_LOOP",
        value_enum,
        default_value = "auto",
        help_heading = "Application"
    )]
    event_loop: EventLoop,

    /// ASGI root_path (WSGI SCRIPT_NAME) for apps mounted below a sub-path by a proxy.
    #[arg(long, env = "RSASGI_ROOT_PATH", default_value = "", value_parser = parse_root_path, help_heading = "Application")]
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
    #[arg(long, env = "RSASGI_THREADS", value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u64).range(1..), help_heading = "Application")]
    threads: u64,

    /// WebSocket support; "none" passes upgrade requests to the app as plain HTTP.
    #[arg(
        long,
        env = "RSASGI_WS",
        value_enum,
        default_value = "auto",
        help_heading = "WebSockets"
    )]
    ws: WsMode,

    /// Largest WebSocket message accepted, in bytes; a larger one closes the connection with 1009.
    #[arg(long, env = "RSASGI_WS_MAX_SIZE", value_name = "BYTES", default_value_t = 16 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1..), help_heading = "WebSockets")]
    ws_max_size: u64,

    /// Incoming WebSocket messages buffered for an app that is not reading;
    /// beyond it the server stops reading the socket.
    #[arg(long, env = "RSASGI_WS_MAX_QUEUE", value_name = "N", default_value_t = 32,
          value_parser = clap::value_parser!(u64).range(1..), help_heading = "WebSockets")]
    ws_max_queue: u64,

    /// Seconds between keep-alive pings to WebSocket clients (0 disables them).
    #[arg(long, env = "RSASGI_WS_PING_INTERVAL", value_name = "SECONDS", default_value = "20",
          value_parser = parse_seconds, help_heading = "WebSockets")]
    ws_ping_interval: Duration,

    /// Close a WebSocket (1011) whose client does not answer a ping within this many seconds.
    #[arg(long, env = "RSASGI_WS_PING_TIMEOUT", value_name = "SECONDS", default_value = "20",
          value_parser = parse_seconds, help_heading = "WebSockets")]
    ws_ping_timeout: Duration,

    /// Log level.
    #[arg(
        long,
        env = "RSASGI_LOG_LEVEL",
        value_enum,
        default_value = "info",
        help_heading = "Logging"
    )]
    log_level: LogLevel,

    /// Log one line per request [default].
    #[arg(long, env = "RSASGI_ACCESS_LOG", action = ArgAction::Set, num_args = 0..=1,
          default_value_t = true, default_missing_value = "true", value_name = "BOOL", require_equals = true,
          hide_possible_values = true, help_heading = "Logging")]
    access_log: bool,

    /// Do not log requests.
    #[arg(long, help_heading = "Logging")]
    no_access_log: bool,

    /// Send "server: rsasgi" [default].
    #[arg(long, env = "RSASGI_SERVER_HEADER", action = ArgAction::Set, num_args = 0..=1,
          default_value_t = true, default_missing_value = "true", value_name = "BOOL", require_equals = true,
          help_heading = "HTTP")]
    server_header: bool,

    /// Do not send a server header.
    #[arg(long, help_heading = "HTTP")]
    no_server_header: bool,

    /// Send a date header [default].
    #[arg(long, env = "RSASGI_DATE_HEADER", action = ArgAction::Set, num_args = 0..=1,
          default_value_t = true, default_missing_value = "true", value_name = "BOOL", require_equals = true,
          help_heading = "HTTP")]
    date_header: bool,

    /// Do not send a date header.
    #[arg(long, help_heading = "HTTP")]
    no_date_header: bool,

    /// Add a header to every response (repeatable), e.g. --header "X-Frame-Options:DENY".
    #[arg(long = "header", env = "RSASGI_HEADER", value_name = "NAME:VALUE",
          value_parser = parse_header, value_delimiter = '\n', help_heading = "HTTP")]
    headers: Vec<(HeaderName, HeaderValue)>,

    /// Close idle keep-alive connections after this many seconds; a request's
    /// headers must also arrive within it.
    #[arg(long, env = "RSASGI_TIMEOUT_KEEP_ALIVE", value_name = "SECONDS", default_value = "5",
          value_parser = parse_seconds, help_heading = "Limits")]
    timeout_keep_alive: Duration,

    /// Seconds between PING frames on HTTP/2 connections (0 disables them).
    #[arg(long, env = "RSASGI_HTTP2_KEEP_ALIVE_INTERVAL", value_name = "SECONDS",
          default_value = DEFAULT_HTTP2_KEEP_ALIVE_INTERVAL, value_parser = parse_seconds, help_heading = "Limits")]
    http2_keep_alive_interval: Duration,

    /// Close an HTTP/2 connection whose peer does not answer a PING within this many seconds.
    #[arg(long, env = "RSASGI_HTTP2_KEEP_ALIVE_TIMEOUT", value_name = "SECONDS",
          default_value = DEFAULT_HTTP2_KEEP_ALIVE_TIMEOUT, value_parser = parse_seconds, help_heading = "Limits")]
    http2_keep_alive_timeout: Duration,

    /// On SIGTERM/SIGINT, let in-flight requests run this long before closing them.
    #[arg(long, env = "RSASGI_TIMEOUT_GRACEFUL_SHUTDOWN", value_name = "SECONDS",
          default_value = "30", value_parser = parse_seconds, help_heading = "Limits")]
    timeout_graceful_shutdown: Duration,

    /// Answer 503 to requests beyond this many in flight.
    #[arg(long, env = "RSASGI_LIMIT_CONCURRENCY", value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..), help_heading = "Limits")]
    limit_concurrency: Option<u64>,

    /// Answer 413 to request bodies larger than this many bytes [default: no limit].
    #[arg(
        long,
        env = "RSASGI_LIMIT_REQUEST_BODY",
        value_name = "BYTES",
        help_heading = "Limits"
    )]
    limit_request_body: Option<u64>,

    /// Answer 431 to request lines plus headers larger than this many bytes (at least 8192).
    #[arg(long, env = "RSASGI_LIMIT_REQUEST_HEAD", value_name = "BYTES", default_value_t = 65536,
          value_parser = clap::value_parser!(u64).range(MIN_REQUEST_HEAD as u64..),
          help_heading = "Limits")]
    limit_request_head: u64,
}

/// Parses a command line (program name first) into a [`Config`].
pub(crate) fn parse<I, T>(argv: I) -> Result<Config, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = Args::try_parse_from(argv)?;
    let bind = match (args.uds, args.fd) {
        (Some(path), _) => Bind::Unix(path),
        (None, Some(fd)) => Bind::Fd(fd),
        (None, None) => Bind::Tcp {
            host: args.host,
            port: args.port,
        },
    };
    Ok(Config {
        app: args.app,
        factory: args.factory,
        app_dir: args.app_dir,
        bind,
        interface: args.interface,
        lifespan: args.lifespan,
        event_loop: args.event_loop,
        root_path: args.root_path,
        log_level: args.log_level,
        access_log: args.access_log && !args.no_access_log,
        server_header: args.server_header && !args.no_server_header,
        date_header: args.date_header && !args.no_date_header,
        headers: args.headers,
        timeout_keep_alive: args.timeout_keep_alive,
        timeout_graceful_shutdown: args.timeout_graceful_shutdown,
        timeout_request_header: Duration::from_secs(10),
        uds_permissions: 0o666,
        http2_keep_alive_interval: (!args.http2_keep_alive_interval.is_zero())
            .then_some(args.http2_keep_alive_interval),
        http2_keep_alive_timeout: args.http2_keep_alive_timeout,
        limit_concurrency: args.limit_concurrency.map(|n| n as usize),
        limit_request_body: args.limit_request_body,
        limit_request_head: args.limit_request_head as usize,
        backlog: args.backlog,
        env_file: args.env_file,
        threads: usize::try_from(args.threads).unwrap_or(usize::MAX),
        ws: (args.ws == WsMode::Auto).then(|| WsSettings {
            max_size: usize::try_from(args.ws_max_size).unwrap_or(usize::MAX),
            max_queue: usize::try_from(args.ws_max_queue).unwrap_or(usize::MAX),
            ping_interval: (!args.ws_ping_interval.is_zero()).then_some(args.ws_ping_interval),
            ping_timeout: args.ws_ping_timeout,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_uvicorns() {
        let config = parse(["rsasgi", "main:app"]).unwrap();
        assert_eq!(
            config.bind,
            Bind::Tcp {
                host: "127.0.0.1".into(),
                port: 8000
            }
        );
        assert_eq!(config.timeout_keep_alive, Duration::from_secs(5));
        assert_eq!(config.backlog, 2048);
        assert!(config.access_log && config.server_header && config.date_header);
        assert_eq!(config.interface, Interface::Auto);
        assert_eq!(config.limit_concurrency, None);
        assert_eq!(config.threads, 8);
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
        assert_eq!(config.bind, Bind::Unix("/tmp/s".into()));
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
}
