//! One log line per response: rsasgi's own line with the latency, or the
//! user's `--access-log-format`; its fields are also tracing fields, the
//! keys of `--log-format json`.
//!
//! A request that never got a response still gets a line, with nginx's codes
//! for what happened instead: 499 when the client closed the connection (or
//! reset the HTTP/2 stream) first, 444 when the server closed it at shutdown
//! (the grace period ran out, or a second signal) while the app was still
//! working.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use base64ct::{Base64, Encoding};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Uri, Version};

use super::access_format::{clf_time, write_escaped, AccessFormat, Atom, Escaped, Piece};
use crate::logging::digits::{ascii, zero_padded};
use crate::net::LoggedClient;
use crate::ws::Closed;

/// nginx's "client closed request": the client left before the response.
const CLIENT_CLOSED_REQUEST: u16 = 499;

/// nginx's "connection closed without response", here only at shutdown.
const CLOSED_WITHOUT_RESPONSE: u16 = 444;

/// Set once shutdown stops waiting and drops the connections still open, so
/// their requests are logged as cut off rather than left by the client. One
/// worker serves per process, so this is the process's shutdown.
static CUT_OFF: AtomicBool = AtomicBool::new(false);

/// Shutdown is about to drop every connection still open.
pub(crate) fn connections_cut_off() {
    CUT_OFF.store(true, Ordering::Relaxed);
}

thread_local! {
    /// Set while a connection that ended drops its HTTP/2 streams (see
    /// [`connection_ended`]).
    static CONNECTION_ENDED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `end`, which drops the requests of a connection that has ended, so
/// that those without a response are logged as left with their connection.
/// An HTTP/2 request dropped otherwise, its connection still open, had its
/// stream reset by the client.
pub(crate) fn connection_ended(end: impl FnOnce()) {
    /// Clears the flag even if a drop panics.
    struct Ended;
    impl Drop for Ended {
        fn drop(&mut self) {
            CONNECTION_ENDED.set(false);
        }
    }
    CONNECTION_ENDED.set(true);
    let _ended = Ended;
    end();
}

/// A worker's access log settings: the format, and what a record must keep
/// for it. Made once per worker.
#[derive(Debug)]
pub(crate) struct AccessLog {
    format: AccessFormat,
    /// Request headers the format shows (`{name}i`, `Authorization` for `u`).
    request_headers: Vec<HeaderName>,
    /// Response headers the format shows (`{name}o`).
    response_headers: Vec<HeaderName>,
    /// `--request-id`: the header whose value is the `request_id` field.
    request_id: Option<HeaderName>,
}

impl AccessLog {
    /// The settings for `format` (resolved now: see
    /// [`AccessFormat::resolved`]), kept for the life of the process.
    pub(crate) fn leak(
        format: &AccessFormat,
        request_id: Option<HeaderName>,
    ) -> &'static AccessLog {
        let format = format.resolved();
        let mut request_headers = Vec::new();
        let mut response_headers = Vec::new();
        for atom in format.atoms() {
            let (names, name) = match atom {
                Atom::RequestHeader(name) => (&mut request_headers, name.clone()),
                Atom::User => (&mut request_headers, header::AUTHORIZATION),
                Atom::ResponseHeader(name) => (&mut response_headers, name.clone()),
                _ => continue,
            };
            if !names.contains(&name) {
                names.push(name);
            }
        }
        Box::leak(Box::new(AccessLog {
            format,
            request_headers,
            response_headers,
            request_id,
        }))
    }

    /// Whether a record needs the response's headers ([`Record::keep_response_headers`]).
    pub(crate) fn shows_response_headers(&self) -> bool {
        !self.response_headers.is_empty()
    }
}

/// What the access log line needs, collected when the request arrives and
/// written when the response body is done (or dropped). Header values are
/// kept as hyper parsed them (a reference count, no copy).
///
/// Boxed: a record rides in every request's future and response body, which
/// hyper and tokio move whole; inline its 350 bytes were copied each time,
/// and took that room in every request's future even with the log off.
pub(crate) struct AccessRecord(Box<Record>);

/// The fields of an [`AccessRecord`]; the line is written when it drops.
pub(crate) struct Record {
    log: &'static AccessLog,
    client: LoggedClient,
    method: Method,
    uri: Uri,
    version: Version,
    /// `None` until a response head is chosen.
    status: Option<StatusCode>,
    referer: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
    request_id: Option<HeaderValue>,
    /// The values of `log.request_headers`, in their order.
    request_headers: Vec<Option<HeaderValue>>,
    /// The values of `log.response_headers`, once the response head is known.
    response_headers: Vec<Option<HeaderValue>>,
    started_at: Instant,
    pub bytes: u64,
    /// Set when the response ended before its last byte was sent.
    pub incomplete: bool,
    /// Set when the client left while its request waited for a WSGI
    /// thread: the app never ran.
    pub never_ran: bool,
}

impl AccessRecord {
    pub(crate) fn new(
        log: &'static AccessLog,
        client: LoggedClient,
        method: &Method,
        uri: &Uri,
        version: Version,
        request_headers: &HeaderMap,
        started_at: Instant,
    ) -> AccessRecord {
        AccessRecord(Box::new(Record {
            log,
            client,
            method: method.clone(),
            uri: uri.clone(),
            version,
            status: None,
            referer: request_headers.get(header::REFERER).cloned(),
            user_agent: request_headers.get(header::USER_AGENT).cloned(),
            request_id: log
                .request_id
                .as_ref()
                .and_then(|name| request_headers.get(name).cloned()),
            request_headers: log
                .request_headers
                .iter()
                .map(|name| request_headers.get(name).cloned())
                .collect(),
            response_headers: Vec::new(),
            started_at,
            bytes: 0,
            incomplete: false,
            never_ran: false,
        }))
    }

    pub(crate) fn with_status(mut self, status: StatusCode) -> AccessRecord {
        self.0.status = Some(status);
        self
    }
}

impl std::ops::Deref for AccessRecord {
    type Target = Record;

    fn deref(&self) -> &Record {
        &self.0
    }
}

impl std::ops::DerefMut for AccessRecord {
    fn deref_mut(&mut self) -> &mut Record {
        &mut self.0
    }
}

impl Record {
    /// Keeps the response headers the format shows, from the head about to
    /// be sent.
    pub(crate) fn keep_response_headers(&mut self, headers: &HeaderMap) {
        self.response_headers = self
            .log
            .response_headers
            .iter()
            .map(|name| headers.get(name).cloned())
            .collect();
    }

    /// The status code the line shows, and a note on how the response ended.
    fn outcome(&self) -> (u16, &'static str) {
        match self.status {
            Some(status) if self.incomplete => (status.as_u16(), " (incomplete)"),
            Some(status) => (status.as_u16(), ""),
            None if CUT_OFF.load(Ordering::Relaxed) => (
                CLOSED_WITHOUT_RESPONSE,
                " (closed at shutdown before a response)",
            ),
            None if self.version == Version::HTTP_2 && !CONNECTION_ENDED.get() => (
                CLIENT_CLOSED_REQUEST,
                if self.never_ran {
                    " (client reset the stream before the response; never ran: waited for a WSGI thread)"
                } else {
                    " (client reset the stream before the response)"
                },
            ),
            None => (
                CLIENT_CLOSED_REQUEST,
                if self.never_ran {
                    " (client closed the connection before the response; never ran: waited for a WSGI thread)"
                } else {
                    " (client closed the connection before the response)"
                },
            ),
        }
    }

    /// The request target: the path and query; a plain CONNECT's authority
    /// (`host:port`, what it asks to reach, however it was written: an
    /// HTTP/2 WebSocket's extended CONNECT has a path, which is what it
    /// opens); `/` in front of a bare query of an HTTP/1 absolute URL
    /// (`http://a.example?x=1` asks for `/?x=1`; an HTTP/2 `:path` of `?x=1`
    /// is logged as sent, with the 400 it gets).
    fn target(&self) -> Cow<'_, str> {
        let plain_connect = self.method == Method::CONNECT
            && (self.version != Version::HTTP_2 || self.uri.path_and_query().is_none());
        if plain_connect {
            if let Some(authority) = self.uri.authority() {
                return Cow::Borrowed(authority.as_str());
            }
        }
        match self.uri.path_and_query().map(|pq| pq.as_str()) {
            Some(target) if target.starts_with('?') && self.version != Version::HTTP_2 => {
                Cow::Owned(format!("/{target}"))
            }
            Some(target) => Cow::Borrowed(target),
            None => Cow::Borrowed("/"),
        }
    }

    /// What the closing line of the WebSocket this request opens needs.
    pub(crate) fn websocket(&self) -> WebSocketRecord {
        WebSocketRecord {
            client: self.client.clone(),
            uri: self.uri.clone(),
            request_id: self.request_id.clone(),
            opened_at: Instant::now(),
            in_server_log: !matches!(self.log.format, AccessFormat::Default),
        }
    }
}

/// A WebSocket's second access line, written when it closes: who closed it,
/// with which code, after how long. (The first is its handshake's, 101.)
pub(crate) struct WebSocketRecord {
    client: LoggedClient,
    uri: Uri,
    request_id: Option<HeaderValue>,
    opened_at: Instant,
    /// With `--access-log-format`, the line goes to the server log: the
    /// access log's lines are the format alone, which log analysers parse,
    /// and this one has no request of its own to fill the format with.
    in_server_log: bool,
}

impl WebSocketRecord {
    /// Writes the line: `127.0.0.1:5000 - WebSocket /chat closed by the
    /// client with 1000 after 12.503s`.
    pub(crate) fn closed(self, closed: Closed) {
        let duration = self.opened_at.elapsed().as_secs_f64();
        let request_id = self.request_id.as_ref().map(text);
        let target = self.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let by = closed.by.as_str();
        let code = closed.code;
        if self.in_server_log {
            tracing::info!(
                target: crate::logging::SERVER,
                "{} - WebSocket {} closed by the {by} with {code} after {duration:.3}s",
                self.client,
                Escaped(target.as_bytes()),
            );
            return;
        }
        tracing::info!(
            target: crate::logging::ACCESS,
            path = self.uri.path(),
            query = self.uri.query(),
            client = %self.client,
            close_code = code,
            closed_by = by,
            duration,
            request_id = request_id.as_deref(),
            "{} - WebSocket {} closed by the {by} with {code} after {duration:.3}s",
            self.client,
            Escaped(target.as_bytes()),
        );
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        let duration = self.started_at.elapsed();
        let (status, note) = self.outcome();
        let line = Line {
            record: self,
            status,
            note,
            duration,
        };
        let user_agent = self.user_agent.as_ref().map(text);
        let referer = self.referer.as_ref().map(text);
        let request_id = self.request_id.as_ref().map(text);
        tracing::info!(
            target: crate::logging::ACCESS,
            method = self.method.as_str(),
            path = self.uri.path(),
            query = self.uri.query(),
            status,
            bytes = self.bytes,
            duration = duration.as_secs_f64(),
            client = %self.client,
            protocol = ?self.version,
            user_agent = user_agent.as_deref(),
            referer = referer.as_deref(),
            request_id = request_id.as_deref(),
            incomplete = self.incomplete,
            "{line}"
        );
    }
}

/// Writes the line of a request hyper refused before it had a head (one
/// that did not parse, or a head over `--limit-request-head`): hyper
/// answered `status` itself and closed the connection, so neither the app
/// nor an [`AccessRecord`] saw it. Its request fields show as `-`:
/// `127.0.0.1:5000 - "-" 400 0 "-" "-" - (request refused: invalid URI)`.
pub(crate) fn refused_head(
    log: &AccessLog,
    client: LoggedClient,
    status: StatusCode,
    reason: &str,
) {
    let line = RefusedLine {
        log,
        client: &client,
        status: status.as_u16(),
        reason,
    };
    tracing::info!(
        target: crate::logging::ACCESS,
        status = status.as_u16(),
        bytes = 0u64,
        client = %client,
        error = reason,
        "{line}"
    );
}

/// The line of [`refused_head`].
struct RefusedLine<'a> {
    log: &'a AccessLog,
    client: &'a LoggedClient,
    status: u16,
    reason: &'a str,
}

impl fmt::Display for RefusedLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pieces = match &self.log.format {
            AccessFormat::Default => {
                return write!(
                    f,
                    "{} - \"-\" {} 0 \"-\" \"-\" - (request refused: {})",
                    self.client, self.status, self.reason
                );
            }
            AccessFormat::Custom(pieces) => pieces,
        };
        for piece in pieces {
            match piece {
                Piece::Literal(text) => f.write_str(text)?,
                Piece::Atom(Atom::RemoteAddress) => match self.client.ip() {
                    Some(ip) => write!(f, "{ip}")?,
                    None => f.write_str("-")?,
                },
                Piece::Atom(Atom::Time) => write_clf_time(f, SystemTime::now())?,
                Piece::Atom(Atom::Status) => write!(f, "{}", self.status)?,
                Piece::Atom(Atom::Bytes) => f.write_str("0")?,
                Piece::Atom(Atom::Seconds | Atom::Milliseconds | Atom::Microseconds) => {
                    f.write_str("0")?
                }
                Piece::Atom(Atom::DecimalSeconds) => f.write_str("0.000000")?,
                Piece::Atom(Atom::Query) => {}
                // No request line, method, path, protocol or headers were
                // read; `b` is `-` for no body.
                Piece::Atom(_) => f.write_str("-")?,
            }
        }
        Ok(())
    }
}

/// A header value as text (bytes that are not UTF-8 replaced).
fn text(value: &HeaderValue) -> Cow<'_, str> {
    String::from_utf8_lossy(value.as_bytes())
}

/// `12.345` for 12,345 µs: milliseconds to three places, rounded to the
/// microsecond (half a microsecond up), in integers: a float to three places
/// took some 1,000 instructions a line.
fn write_milliseconds(f: &mut impl fmt::Write, duration: Duration) -> fmt::Result {
    let micros = duration.as_secs() * 1_000_000 + u64::from((duration.subsec_nanos() + 500) / 1000);
    let mut fraction = *b".000";
    zero_padded(&mut fraction[1..], micros % 1000);
    f.write_str(itoa::Buffer::new().format(micros / 1000))?;
    f.write_str(ascii(&fraction)?)
}

/// A header value's bytes, `-` when there is none.
fn header_bytes(value: &Option<HeaderValue>) -> &[u8] {
    value.as_ref().map_or(b"-", HeaderValue::as_bytes)
}

/// One access line, written when the log formats it.
struct Line<'a> {
    record: &'a Record,
    status: u16,
    note: &'static str,
    duration: Duration,
}

impl fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let record = self.record;
        let pieces = match &record.log.format {
            AccessFormat::Default => {
                write!(f, "{} - \"{} ", record.client, record.method)?;
                write_escaped(f, record.target().as_bytes())?;
                write!(
                    f,
                    " {:?}\" {} {} \"",
                    record.version, self.status, record.bytes
                )?;
                write_escaped(f, header_bytes(&record.referer))?;
                f.write_str("\" \"")?;
                write_escaped(f, header_bytes(&record.user_agent))?;
                f.write_str("\" ")?;
                write_milliseconds(f, self.duration)?;
                return write!(f, "ms{}", self.note);
            }
            AccessFormat::Custom(pieces) => pieces,
        };
        for piece in pieces {
            match piece {
                Piece::Literal(text) => f.write_str(text)?,
                Piece::Atom(atom) => self.atom(f, atom)?,
            }
        }
        Ok(())
    }
}

impl Line<'_> {
    fn atom(&self, f: &mut fmt::Formatter<'_>, atom: &Atom) -> fmt::Result {
        let record = self.record;
        let header_or_dash = |f: &mut fmt::Formatter<'_>, value: Option<&HeaderValue>| match value {
            Some(value) => write_escaped(f, value.as_bytes()),
            None => f.write_str("-"),
        };
        let duration = self.duration;
        match atom {
            Atom::RemoteAddress => match record.client.ip() {
                Some(ip) => write!(f, "{ip}"),
                None => f.write_str("-"),
            },
            Atom::Ident => f.write_str("-"),
            Atom::User => {
                let authorization = self.request_header(&header::AUTHORIZATION);
                match authorization.and_then(|value| basic_user(value.as_bytes())) {
                    Some(user) => write_escaped(f, &user),
                    None => f.write_str("-"),
                }
            }
            Atom::Time => {
                let arrived = SystemTime::now()
                    .checked_sub(duration)
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                write_clf_time(f, arrived)
            }
            Atom::RequestLine => {
                write!(f, "{} ", record.method)?;
                write_escaped(f, record.target().as_bytes())?;
                write!(f, " {:?}", record.version)
            }
            Atom::Method => f.write_str(record.method.as_str()),
            Atom::Path => write_escaped(f, record.uri.path().as_bytes()),
            Atom::Query => write_escaped(f, record.uri.query().unwrap_or("").as_bytes()),
            Atom::Protocol => write!(f, "{:?}", record.version),
            Atom::Status => write!(f, "{}", self.status),
            Atom::Bytes => write!(f, "{}", record.bytes),
            Atom::BytesOrDash if record.bytes == 0 => f.write_str("-"),
            Atom::BytesOrDash => write!(f, "{}", record.bytes),
            Atom::Referer => header_or_dash(f, record.referer.as_ref()),
            Atom::UserAgent => header_or_dash(f, record.user_agent.as_ref()),
            Atom::Seconds => write!(f, "{}", duration.as_secs()),
            Atom::Milliseconds => write!(f, "{}", duration.as_millis()),
            Atom::Microseconds => write!(f, "{}", duration.as_micros()),
            Atom::DecimalSeconds => {
                write!(f, "{}.{:06}", duration.as_secs(), duration.subsec_micros())
            }
            Atom::RequestHeader(name) => header_or_dash(f, self.request_header(name)),
            Atom::ResponseHeader(name) => {
                let at = record.log.response_headers.iter().position(|n| n == name);
                let value = at.and_then(|at| record.response_headers.get(at)?.as_ref());
                header_or_dash(f, value)
            }
            // Written in as text when the worker starts (AccessFormat::resolved).
            Atom::ProcessId | Atom::Environment(_) => f.write_str("-"),
        }
    }

    fn request_header(&self, name: &HeaderName) -> Option<&HeaderValue> {
        let record = self.record;
        let at = record.log.request_headers.iter().position(|n| n == name)?;
        record.request_headers.get(at)?.as_ref()
    }
}

/// The user name of HTTP Basic authentication (RFC 7617): what comes before
/// the first ':' of the decoded credentials.
fn basic_user(authorization: &[u8]) -> Option<Vec<u8>> {
    let (scheme, credentials) = authorization.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let credentials = std::str::from_utf8(credentials).ok()?.trim();
    let decoded = Base64::decode_vec(credentials).ok()?;
    let user = decoded.split(|&byte| byte == b':').next()?;
    Some(user.to_vec())
}

thread_local! {
    /// The `%(t)s` text of the last second written, by that second: access
    /// lines come many a second, and local time takes a lock in libc.
    static CLF_TIME: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

fn write_clf_time(f: &mut fmt::Formatter<'_>, at: SystemTime) -> fmt::Result {
    let second = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    CLF_TIME.with_borrow_mut(|(cached, text)| {
        if *cached != second {
            *text = clf_time(second as i64);
            *cached = second;
        }
        f.write_str(text)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_have_three_places() {
        let ms = |nanos: u64| {
            let mut out = String::new();
            write_milliseconds(&mut out, Duration::from_nanos(nanos)).unwrap();
            out
        };
        assert_eq!(ms(0), "0.000");
        assert_eq!(ms(499), "0.000");
        assert_eq!(ms(500), "0.001");
        assert_eq!(ms(5_500), "0.006");
        assert_eq!(ms(12_345_678), "12.346");
        assert_eq!(ms(999_999_600), "1000.000");
        assert_eq!(ms(3_600_000_000_000), "3600000.000");
        for nanos in [1, 1_234, 45_999, 100_000, 7_654_321, 98_765_432_109] {
            assert_eq!(
                ms(nanos),
                format!("{:.3}", nanos as f64 / 1e6),
                "{nanos} ns"
            );
        }
    }

    fn record(log: &'static AccessLog, headers: &[(&'static str, &'static str)]) -> AccessRecord {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(*name, HeaderValue::from_static(value));
        }
        AccessRecord::new(
            log,
            LoggedClient::Address("127.0.0.1:5000".parse().unwrap()),
            &Method::GET,
            &Uri::from_static("/a/b?x=1"),
            Version::HTTP_11,
            &map,
            Instant::now(),
        )
    }

    fn default_log() -> &'static AccessLog {
        AccessLog::leak(&AccessFormat::Default, None)
    }

    fn line(record: &AccessRecord, duration: Duration) -> String {
        let (status, note) = record.outcome();
        Line {
            record,
            status,
            note,
            duration,
        }
        .to_string()
    }

    #[test]
    fn a_request_without_a_response_is_499() {
        let log = default_log();
        assert_eq!(record(log, &[]).outcome().0, CLIENT_CLOSED_REQUEST);
        assert_eq!(
            record(log, &[]).with_status(StatusCode::OK).outcome(),
            (200, "")
        );
        let mut cut = record(log, &[]).with_status(StatusCode::OK);
        cut.incomplete = true;
        assert_eq!(cut.outcome(), (200, " (incomplete)"));
        let mut unrun = record(log, &[]);
        unrun.never_ran = true;
        assert_eq!(
            unrun.outcome(),
            (
                CLIENT_CLOSED_REQUEST,
                " (client closed the connection before the response; never ran: waited for a WSGI thread)"
            )
        );
    }

    #[test]
    fn an_http2_request_without_a_response_had_its_stream_reset_unless_its_connection_ended() {
        let log = default_log();
        let http2 = || {
            AccessRecord::new(
                log,
                LoggedClient::Address("127.0.0.1:5000".parse().unwrap()),
                &Method::GET,
                &Uri::from_static("/"),
                Version::HTTP_2,
                &HeaderMap::new(),
                Instant::now(),
            )
        };
        let reset = (
            CLIENT_CLOSED_REQUEST,
            " (client reset the stream before the response)",
        );
        let closed = (
            CLIENT_CLOSED_REQUEST,
            " (client closed the connection before the response)",
        );
        assert_eq!(http2().outcome(), reset);
        let mut with_connection = None;
        connection_ended(|| with_connection = Some(http2().outcome()));
        assert_eq!(with_connection, Some(closed));
        assert_eq!(
            http2().outcome(),
            reset,
            "only while the connection's streams end"
        );
        assert_eq!(record(log, &[]).outcome(), closed, "HTTP/1");
    }

    #[test]
    fn the_default_line_is_rsasgis() {
        let mut record =
            record(default_log(), &[("user-agent", "curl/8.5.0")]).with_status(StatusCode::OK);
        record.bytes = 12;
        assert_eq!(
            line(&record, Duration::from_micros(412)),
            r#"127.0.0.1:5000 - "GET /a/b?x=1 HTTP/1.1" 200 12 "-" "curl/8.5.0" 0.412ms"#
        );
        let quoted = self::record(default_log(), &[("user-agent", "a \"b\"")]);
        assert!(line(&quoted, Duration::ZERO).contains(r#""a \x22b\x22""#));
    }

    #[test]
    fn every_atom_has_its_value() {
        let format = AccessFormat::parse(
            "%(h)s|%(l)s|%(u)s|%(r)s|%(m)s|%(U)s|%(q)s|%(H)s|%(s)s|%(B)s|%(b)s|%(f)s|%(a)s|\
             %(T)s|%(M)s|%(D)s|%(L)s|%(p)s|%({x-trace}i)s|%({missing}i)s|%({content-type}o)s",
        )
        .unwrap();
        let log = AccessLog::leak(&format, None);
        let mut record = record(
            log,
            &[
                ("referer", "https://example.com/"),
                ("user-agent", "tester"),
                // "alice:secret"
                ("authorization", "Basic YWxpY2U6c2VjcmV0"),
                ("x-trace", "t-1"),
            ],
        )
        .with_status(StatusCode::CREATED);
        record.bytes = 0;
        let mut response = HeaderMap::new();
        response.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        record.keep_response_headers(&response);
        let pid = std::process::id();
        assert_eq!(
            line(&record, Duration::from_micros(2_003_004)),
            format!(
                "127.0.0.1|-|alice|GET /a/b?x=1 HTTP/1.1|GET|/a/b|x=1|HTTP/1.1|201|0|-|\
                 https://example.com/|tester|2|2003|2003004|2.003004|<{pid}>|t-1|-|text/plain"
            )
        );
    }

    #[test]
    fn a_refused_head_shows_dashes_for_what_was_not_read() {
        let refused = |log, status| {
            RefusedLine {
                log,
                client: &LoggedClient::Address("127.0.0.1:5000".parse().unwrap()),
                status,
                reason: "invalid URI",
            }
            .to_string()
        };
        assert_eq!(
            refused(default_log(), 400),
            r#"127.0.0.1:5000 - "-" 400 0 "-" "-" - (request refused: invalid URI)"#
        );
        let format = AccessFormat::parse(
            "%(h)s|%(l)s|%(u)s|%(r)s|%(m)s|%(U)s|%(q)s|%(H)s|%(s)s|%(B)s|%(b)s|%(f)s|%(a)s|\
             %(T)s|%(M)s|%(D)s|%(L)s|%({x-trace}i)s|%({content-type}o)s",
        )
        .unwrap();
        let log = AccessLog::leak(&format, None);
        assert_eq!(
            refused(log, 431),
            "127.0.0.1|-|-|-|-|-||-|431|0|-|-|-|0|0|0|0.000000|-|-"
        );
    }

    #[test]
    fn the_time_atom_is_bracketed_local_time() {
        let log = AccessLog::leak(&AccessFormat::parse("%(t)s").unwrap(), None);
        let text = line(&record(log, &[]), Duration::ZERO);
        assert!(text.starts_with('[') && text.ends_with(']'), "{text}");
        assert_eq!(text.len(), "[10/Oct/2000:13:55:36 -0700]".len(), "{text}");
    }

    #[test]
    fn the_user_comes_from_basic_authentication_only() {
        assert_eq!(
            basic_user(b"Basic YWxpY2U6c2VjcmV0").as_deref(),
            Some(&b"alice"[..])
        );
        assert_eq!(
            basic_user(b"basic  YWxpY2U=").as_deref(),
            Some(&b"alice"[..])
        );
        assert_eq!(basic_user(b"Bearer YWxpY2U6c2VjcmV0"), None);
        assert_eq!(basic_user(b"Basic !!!"), None);
        assert_eq!(basic_user(b"Basic"), None);
    }

    #[test]
    fn a_websocket_close_line_says_who_and_how() {
        use crate::logging::tests::capture;
        use crate::ws::ClosedBy;
        let websocket = record(default_log(), &[]).websocket();
        let format = tracing_subscriber::fmt::format()
            .without_time()
            .with_target(false);
        let out = capture(format, || {
            websocket.closed(Closed {
                code: 1001,
                by: ClosedBy::Client,
                stalled: false,
            })
        });
        assert!(
            out.contains(
                "127.0.0.1:5000 - WebSocket /a/b?x=1 closed by the client with 1001 after 0.0"
            ),
            "{out}"
        );
        assert!(
            out.contains("close_code=1001 closed_by=\"client\""),
            "{out}"
        );
    }

    #[test]
    fn only_the_headers_the_format_shows_are_kept() {
        let format = AccessFormat::parse("%({x-a}i)s %(u)s %({x-b}o)s %({x-a}i)s").unwrap();
        let log = AccessLog::leak(&format, Some(HeaderName::from_static("x-request-id")));
        assert_eq!(log.request_headers, ["x-a", "authorization"]);
        assert_eq!(log.response_headers, ["x-b"]);
        assert!(log.shows_response_headers() && !default_log().shows_response_headers());
        let record = record(log, &[("x-a", "1"), ("x-request-id", "abc"), ("x-c", "no")]);
        assert_eq!(record.request_headers.len(), 2);
        assert_eq!(record.request_id, Some(HeaderValue::from_static("abc")));
    }
}
