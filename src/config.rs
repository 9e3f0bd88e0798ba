//! Every setting of a worker, its default, and its validation.
//!
//! `cli.rs` turns the command line (and `RSASGI_*` environment variables) into
//! a [`Config`]; the rest of the server only ever reads a `Config`.

use std::path::PathBuf;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};

/// Where the worker listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Bind {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
    Fd(i32),
}

/// Which calling convention the application uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Interface {
    /// Inspect the callable to tell which of the others it is.
    Auto,
    /// `async def app(scope, receive, send)`.
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogLevel {
    Critical,
    Error,
    Warning,
    Info,
    Debug,
    Trace,
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

/// The smallest request-head limit hyper accepts (its read buffer minimum).
pub(crate) const MIN_REQUEST_HEAD: usize = 8192;

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub app: String,
    pub factory: bool,
    pub app_dir: PathBuf,
    pub bind: Bind,
    pub interface: Interface,
    pub lifespan: Lifespan,
    pub event_loop: EventLoop,
    pub root_path: String,
    pub log_level: LogLevel,
    pub access_log: bool,
    pub server_header: bool,
    pub date_header: bool,
    /// Added to every response, after the app's own headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// An idle keep-alive connection is closed after this long; a request head
    /// must also arrive within it.
    pub timeout_keep_alive: Duration,
    /// A new connection must complete its first request head within this.
    pub timeout_request_header: Duration,
    /// HTTP/2 PING frames are sent this often (`None`: never); a peer that
    /// does not answer one within `http2_keep_alive_timeout` is closed.
    pub http2_keep_alive_interval: Option<Duration>,
    pub http2_keep_alive_timeout: Duration,
    /// Mode of the socket file `--uds` creates.
    pub uds_permissions: u32,
    /// How long in-flight requests may run on after SIGTERM/SIGINT.
    pub timeout_graceful_shutdown: Duration,
    /// Requests in flight beyond this get 503.
    pub limit_concurrency: Option<usize>,
    /// Request bodies larger than this get 413.
    pub limit_request_body: Option<u64>,
    /// Request line plus headers larger than this get 431.
    pub limit_request_head: usize,
    pub backlog: u32,
    pub env_file: Option<PathBuf>,
    /// Threads per worker running a WSGI app.
    pub threads: usize,
    /// WebSocket settings; `None` with `--ws none`.
    pub ws: Option<crate::ws::WsSettings>,
}

/// How often HTTP/2 connections are pinged, and how long an answer may take:
/// a peer that vanished without closing (a laptop put to sleep, a dropped
/// NAT mapping) is found within a minute rather than never.
pub(crate) const DEFAULT_HTTP2_KEEP_ALIVE_INTERVAL: &str = "20";
pub(crate) const DEFAULT_HTTP2_KEEP_ALIVE_TIMEOUT: &str = "20";

/// Whether WebSocket upgrades are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum WsMode {
    /// Serve WebSockets (RFC 6455) to ASGI apps.
    Auto,
    /// Treat upgrade requests as plain HTTP requests.
    None,
}

/// Parses `NAME:VALUE` into a response header, as `--header` takes it.
pub(crate) fn parse_header(raw: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = raw
        .split_once(':')
        .ok_or_else(|| format!("expected NAME:VALUE, got {raw:?}"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("{:?} is not a valid header name", name.trim()))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|_| format!("{:?} is not a valid header value", value.trim()))?;
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

/// Parses a duration in seconds (fractions allowed).
pub(crate) fn parse_seconds(raw: &str) -> Result<Duration, String> {
    let secs: f64 = raw
        .parse()
        .map_err(|_| format!("{raw:?} is not a number of seconds"))?;
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{raw:?} must be zero or more seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("soon").is_err());
    }
}
