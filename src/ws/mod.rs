//! WebSockets (RFC 6455) over HTTP/1.1 upgrades.
//!
//! The protocol engine is yawc (framing, masking, fragments, UTF-8 checks,
//! control frames and permessage-deflate), used only in this module so it
//! can be replaced without touching the ASGI side; which permessage-deflate
//! offer to accept is decided in [`deflate`]. The ASGI side talks to a
//! connection through its [`WsSession`].

pub(crate) mod deflate;
mod guard;
mod message;
mod progress;
pub(crate) mod session;

use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use base64ct::{Base64, Encoding};
use bytes::Bytes;
use futures_util::SinkExt;
use http::header::{self, HeaderMap, HeaderValue};
use http::Method;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use sha1::{Digest, Sha1};
use tokio::sync::watch;
use yawc::close::CloseCode;
use yawc::{
    CompressionLevel, DeflatePool, Frame, OpCode, Options, Role, WebSocket,
    WebSocketError as WsError,
};

use deflate::Agreement;
use guard::{Breaches, GuardedIo};
use message::{Assembler, AssemblyError};
use progress::{ProgressIo, Stalled, WriteProgress};
pub(crate) use session::WsSession;
use session::{AppEvent, AppMessage};

/// How long to wait for the peer's close frame after sending ours.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long to wait for it after the 1012 of a shutdown, which waits for
/// the connection: a client gone quiet held every stop for 5 s (or the
/// whole grace period, when shorter), where uvicorn waits for none.
const SHUTDOWN_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A ping sent later than this after it was due (the loop was busy) puts
/// the next one an interval from when it went out; one on time, an interval
/// from when it was due, so pings do not drift by the timer's millisecond.
/// (tokio's `Interval` with `MissedTickBehavior::Delay` does the same.)
const PING_LATE: Duration = Duration::from_millis(5);

/// Close codes the server sends (RFC 6455 §7.4.1).
pub(crate) mod code {
    pub const NORMAL: u16 = 1000;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const NO_STATUS: u16 = 1005;
    pub const ABNORMAL: u16 = 1006;
    pub const INVALID_DATA: u16 = 1007;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL_ERROR: u16 = 1011;
    pub const SERVICE_RESTART: u16 = 1012;
}

/// WebSocket settings from the command line.
#[derive(Debug, Clone)]
pub(crate) struct WsSettings {
    pub max_size: usize,
    pub max_queue: usize,
    /// `None` disables keep-alive pings.
    pub ping_interval: Option<Duration>,
    pub ping_timeout: Duration,
    /// Accept permessage-deflate (RFC 7692) when the client offers it.
    pub per_message_deflate: bool,
    /// How long after the close the app's `send()` drops its message quietly
    /// instead of raising `ClientDisconnected`.
    pub closed_send_grace: Duration,
}

/// Open connections, so shutdown can wait for them and then close them.
#[derive(Default)]
pub(crate) struct Registry {
    open: AtomicUsize,
    closing: watch::Sender<bool>,
}

impl Registry {
    pub(crate) fn open_count(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Tells every open connection to close with 1012 (service restart).
    pub(crate) fn close_all(&self) {
        self.closing.send_replace(true);
    }
}

struct Registered<'a>(&'a Registry);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// True when the request asks to open a WebSocket (RFC 6455 §4.2.1).
pub(crate) fn is_upgrade(method: &Method, headers: &HeaderMap) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value
                .to_str()
                .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    method == Method::GET
        && has_token(header::CONNECTION, "upgrade")
        && has_token(header::UPGRADE, "websocket")
}

/// Whether `request` opens a WebSocket over HTTP/2: an extended CONNECT
/// with `:protocol websocket` (RFC 8441 §4).
pub(crate) fn is_extended_connect<B>(request: &http::Request<B>) -> bool {
    request.version() == http::Version::HTTP_2
        && request.method() == Method::CONNECT
        && request
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|protocol| protocol.as_str().eq_ignore_ascii_case("websocket"))
}

/// Checks the fields of a handshake that both HTTP versions have: the
/// version, and the subprotocols offered. RFC 8441's handshake has no key
/// to answer, so for it that is the whole check.
pub(crate) fn check_handshake(headers: &HeaderMap) -> Result<(), BadHandshake> {
    // Sent once, as the key is (RFC 6455 §4.1, §11.3.5); a second field
    // would otherwise go unread.
    if headers
        .get_all(header::SEC_WEBSOCKET_VERSION)
        .iter()
        .count()
        > 1
    {
        return Err(BadHandshake::Invalid(
            "more than one Sec-WebSocket-Version field",
        ));
    }
    match headers.get(header::SEC_WEBSOCKET_VERSION) {
        None => return Err(BadHandshake::Invalid("missing Sec-WebSocket-Version")),
        Some(version) if version.as_bytes() != VERSION.as_bytes() => {
            return Err(BadHandshake::UnsupportedVersion)
        }
        Some(_) => {}
    }
    // RFC 6455 §4.1: each subprotocol is a token. The app would be given
    // "a b" for `a b, c`, and accepting it raises; the websockets library
    // (uvicorn's) answers 400 too.
    let offers = headers.get_all(header::SEC_WEBSOCKET_PROTOCOL).iter();
    for value in offers {
        let tokens = value
            .to_str()
            .is_ok_and(|value| subprotocol_list(value).all(is_token));
        if !tokens {
            return Err(BadHandshake::Invalid(
                "Sec-WebSocket-Protocol offers a subprotocol that is not a token",
            ));
        }
    }
    Ok(())
}

/// The elements of a `Sec-WebSocket-Protocol` list, less the empty ones a
/// recipient ignores (RFC 9110 §5.6.1).
fn subprotocol_list(value: &str) -> impl Iterator<Item = &str> {
    value
        .split(',')
        .map(str::trim)
        .filter(|proto| !proto.is_empty())
}

/// An RFC 9110 §5.6.2 token, which a subprotocol name is.
pub(crate) fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The one WebSocket protocol version there is (RFC 6455 §4.1).
pub(crate) const VERSION: &str = "13";

/// Why an upgrade request is not a handshake we can complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadHandshake {
    /// A version other than 13: answer 426 naming ours (RFC 6455 §4.2.2).
    UnsupportedVersion,
    /// A malformed handshake: answer 400.
    Invalid(&'static str),
}

/// Checks the handshake headers; returns the `Sec-WebSocket-Accept` value.
pub(crate) fn accept_key(headers: &HeaderMap) -> Result<HeaderValue, BadHandshake> {
    check_handshake(headers)?;
    let mut keys = headers.get_all(header::SEC_WEBSOCKET_KEY).iter();
    let key = keys
        .next()
        .ok_or(BadHandshake::Invalid("missing Sec-WebSocket-Key"))?;
    if keys.next().is_some() {
        return Err(BadHandshake::Invalid("more than one Sec-WebSocket-Key"));
    }
    // RFC 6455 §4.1: a random 16-byte value in base64.
    let mut decoded = [0u8; 18];
    if Base64::decode(key.as_bytes(), &mut decoded).map(<[u8]>::len) != Ok(16) {
        return Err(BadHandshake::Invalid(
            "Sec-WebSocket-Key is not 16 bytes in base64",
        ));
    }
    // RFC 6455 §4.2.2: base64 of the SHA-1 of the key and this GUID.
    let mut sha1 = Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = Base64::encode_string(&sha1.finalize());
    HeaderValue::from_str(&accept).map_err(|_| BadHandshake::Invalid("invalid Sec-WebSocket-Key"))
}

/// The subprotocols a client offers, in its order of preference (all
/// tokens, once [`check_handshake`] has passed).
pub(crate) fn offered_subprotocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(subprotocol_list)
        .map(str::to_string)
        .collect()
}

/// The close code a read error ends the connection with (the one the
/// engine sends the peer), and the reason logged.
fn close_code_of(error: &WsError) -> (u16, &'static str) {
    match error {
        WsError::FrameTooLarge => (code::TOO_BIG, "message too big"),
        // In a text message, or in a close frame's reason.
        WsError::InvalidUTF8 => (
            code::INVALID_DATA,
            "invalid UTF-8 in a text message or close reason",
        ),
        WsError::InvalidOpCode(_) => (code::UNSUPPORTED_DATA, "unknown opcode"),
        WsError::ReservedBitsNotZero
        | WsError::ControlFrameFragmented
        | WsError::PingFrameTooLarge
        | WsError::InvalidFragment
        | WsError::InvalidCloseFrame
        | WsError::InvalidCloseCode
        | WsError::FragmentTimeout
        | WsError::InvalidContinuationFrame
        | WsError::CompressionNotSupported => (code::PROTOCOL_ERROR, "protocol error"),
        // The engine reports a corrupt deflate stream as invalid input: a
        // client that compressed badly, or kept its context against the
        // agreed client_no_context_takeover. The engine answers those with
        // 1011, as for any error it does not name.
        WsError::IoError(error) if error.kind() == std::io::ErrorKind::InvalidInput => {
            (code::INTERNAL_ERROR, "undecodable compressed message")
        }
        // The peer dropped the TCP connection without a close frame.
        _ => (code::ABNORMAL, ""),
    }
}

/// Logs a message refused for its size, naming the setting to raise
/// (`received`: how much of it had come, when known). The client's close
/// frame says only that it was too big: for a frame over the limit, the
/// engine writes it ("Frame too large").
fn log_too_big(path: &str, received: Option<usize>, max_size: usize) {
    let received = received.map_or(String::new(), |size| format!(" ({size} bytes so far)"));
    tracing::info!(
        "closing websocket {path} with {}: a message{received} over --ws-max-size {max_size} \
         bytes; raise --ws-max-size if the app expects messages this large",
        code::TOO_BIG
    );
}

/// Lets the worker's other connections run, in the middle of a long stretch
/// of compression work. The reactor signals the Python thread about queued
/// events only when it runs out of work and parks, and a task that yields
/// keeps it from running out (tokio's yield checks for I/O without parking):
/// so the events go over before the yield, for what the others queued
/// earlier, and after it, for what they queued while they ran.
async fn yield_to_others(session: &WsSession) {
    session.hand_over_events();
    tokio::task::yield_now().await;
    session.hand_over_events();
}

/// Adds a text or binary message to `frames`: one frame, or fragments of
/// `fragment` bytes when that is set and the message is longer (a text
/// message may be cut inside a character: UTF-8 is checked on the whole
/// message, RFC 6455 §5.6).
fn push_data(frames: &mut Vec<Frame>, opcode: OpCode, payload: Bytes, fragment: Option<usize>) {
    let whole = |payload: Bytes| match opcode {
        OpCode::Text => Frame::text(payload),
        _ => Frame::binary(payload),
    };
    let size = match fragment {
        Some(size) if payload.len() > size => size,
        _ => {
            frames.push(whole(payload));
            return;
        }
    };
    let mut rest = payload;
    let mut first = true;
    while !rest.is_empty() {
        let chunk = rest.split_to(size.min(rest.len()));
        let last = rest.is_empty();
        let frame = if first {
            whole(chunk)
        } else {
            Frame::continuation(chunk)
        };
        frames.push(frame.with_fin(last));
        first = false;
    }
}

/// The frames of what the app sent, in order. Its `websocket.close`, if
/// among them, is the connection's outcome, and sets `close_sent_at`.
fn frames_of(
    messages: Vec<AppMessage>,
    fragment: Option<usize>,
    ending: &mut Ending,
    close_sent_at: &mut Option<tokio::time::Instant>,
) -> Vec<Frame> {
    let mut frames = Vec::with_capacity(messages.len());
    for message in messages {
        match message {
            AppMessage::Text(text) => {
                push_data(&mut frames, OpCode::Text, text.into(), fragment);
            }
            AppMessage::Binary(data) => {
                push_data(&mut frames, OpCode::Binary, data, fragment);
            }
            AppMessage::Close(code, reason) => {
                ending.outcome.get_or_insert((code, reason.clone()));
                ending.by.get_or_insert(ClosedBy::App);
                *close_sent_at = Some(tokio::time::Instant::now());
                frames.push(close_frame(code, &reason));
            }
        }
    }
    frames
}

fn close_frame(code: u16, reason: &str) -> Frame {
    Frame::close(CloseCode::from(code), reason)
}

/// How long a write may make no progress when `--ws-ping-timeout` is 0.
const DEFAULT_STALL_LIMIT: Duration = Duration::from_secs(20);

/// Why a write did not go through.
enum WriteFailed {
    /// The peer read nothing for the stall limit.
    Stalled,
    /// The connection is gone.
    Closed,
}

/// Whether a bounded write went through.
fn written<E>(result: Result<Result<(), E>, Stalled>) -> Result<(), WriteFailed> {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(WriteFailed::Closed),
        Err(Stalled) => Err(WriteFailed::Stalled),
    }
}

/// Who ended a WebSocket connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClosedBy {
    /// The client sent a close frame, or its connection went away (1006).
    Client,
    /// The app sent `websocket.close`, or returned (1000) or raised (1011).
    App,
    /// The server: a protocol violation (1002, 1007, 1009), a missed ping
    /// (1011), shutdown (1012), or a client that stopped reading (1006).
    Server,
}

impl ClosedBy {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ClosedBy::Client => "client",
            ClosedBy::App => "app",
            ClosedBy::Server => "server",
        }
    }
}

/// How a WebSocket connection ended: the close code the app saw, who
/// closed it first, and whether its client had stopped reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed {
    pub code: u16,
    pub by: ClosedBy,
    /// A write was given up on because the client read nothing for the
    /// stall limit: what it wrote may still be held, unsent (over HTTP/2,
    /// by hyper, until the stream is reset).
    pub stalled: bool,
}

/// Reports a connection's end to its app (`websocket.disconnect`) and to
/// `report` (its closing access line), however its future ends: returned
/// from, or dropped, as the end of a stop drops the connections still open.
/// Dropped before the connection loop knew how it ended, the app hears 1006.
pub(crate) struct Ending {
    session: Arc<WsSession>,
    /// The close code and reason the app sees, once known.
    outcome: Option<(u16, String)>,
    /// Who closed first, once known.
    by: Option<ClosedBy>,
    stalled: bool,
    report: Option<Box<dyn FnOnce(Closed) + Send>>,
}

impl Ending {
    pub(crate) fn new(
        session: Arc<WsSession>,
        report: impl FnOnce(Closed) + Send + 'static,
    ) -> Ending {
        Ending {
            session,
            outcome: None,
            by: None,
            stalled: false,
            report: Some(Box::new(report)),
        }
    }

    /// The connection never opened: the upgrade failed, its client gone.
    pub(crate) fn client_left(&mut self) {
        self.by.get_or_insert(ClosedBy::Client);
    }

    /// Hands the app its `websocket.disconnect` (the first code it is given
    /// is the one it sees).
    fn tell_app(&self) {
        let (code, reason) = match &self.outcome {
            Some((code, reason)) => (*code, reason.as_str()),
            None => (code::ABNORMAL, ""),
        };
        self.session.finish(code, reason);
    }

    /// Tells the app and the log; `by` when nobody is known to have closed.
    fn end(&mut self, by: ClosedBy) {
        let Some(report) = self.report.take() else {
            return;
        };
        self.tell_app();
        report(Closed {
            code: self
                .outcome
                .as_ref()
                .map_or(code::ABNORMAL, |(code, _)| *code),
            by: self.by.unwrap_or(by),
            stalled: self.stalled,
        });
    }
}

impl Drop for Ending {
    fn drop(&mut self) {
        // Returned from, it has ended already; dropped, the server cut the
        // connection off (the end of a stop drops the tasks still running).
        self.end(ClosedBy::Server);
    }
}

/// The deflate level the server compresses with: the fastest, since the
/// reactor thread does the work (see [`serve`]).
const COMPRESSION_LEVEL: u32 = 1;

/// The largest window the server compresses with, whatever the client allows:
/// 4 KiB instead of 32 KiB keeps zlib's window buffers small (the `websockets`
/// library also uses 12; its memory level, which flate2 does not expose, is
/// the rest of the compressor's state). A smaller window than agreed is
/// always valid: the client's decompressor reads any.
const ENGINE_SERVER_WINDOW_BITS: u8 = 12;

/// Messages shorter than this go out uncompressed (RSV1 is per message, so a
/// client reads either): deflate's block header and the sync flush's four
/// bytes leave little or nothing saved on a short message, for the CPU spent.
const COMPRESSION_THRESHOLD: usize = 128;

/// Idle compressors and decompressors kept for reuse, per window size. Only
/// a message part way through holds one: one being sent in fragments (its
/// connection yields between them, so a few may be under way at once) or one
/// still arriving in fragments. More are built when needed and dropped when
/// returned to a full pool.
const DEFLATE_POOL_CAPACITY: usize = 8;

/// With permessage-deflate, a message over this size goes out in fragments
/// of this size, and its connection yields to the others whenever it has fed
/// the engine this much since it last did: the engine compresses a frame as
/// it takes it, on the reactor thread, so a message of many megabytes
/// compressed in one go would hold every other connection of the worker for
/// that long. 16 KiB take about a quarter of a millisecond here at the
/// fastest level, text that compresses poorly (`benches/ws_stall.py`: with
/// 64 KiB the other connections waited 1 ms at the median, with 16 KiB
/// 0.45 ms, and the large message took 8% longer).
const DEFLATE_FRAGMENT: usize = 16 * 1024;

/// On a compressed connection, the connection yields to the others after
/// reading a data frame that decompressed to at least this much.
const YIELD_AFTER: usize = 16 * 1024;

/// The worker's deflate state between messages. Neither side keeps context
/// (the server resets after each message on its own side, and imposes
/// `client_no_context_takeover` on the client's, see [`deflate`]), so a
/// connection borrows zlib's state for one message at a time and an idle
/// compressed connection holds none: about 150 KiB of compressor and 40 KiB
/// of decompressor would otherwise stay with each one.
static DEFLATE_POOL: LazyLock<DeflatePool> =
    LazyLock::new(|| DeflatePool::new(DEFLATE_POOL_CAPACITY));

/// The engine's settings for one connection: the size limit of a frame,
/// and compression when the handshake agreed on it (with the terms the
/// engine applies).
fn engine_options(settings: &WsSettings, deflate: Option<&Agreement>) -> (Options, Option<String>) {
    // The engine's limits are exclusive; ours is inclusive.
    let limit = settings.max_size.saturating_add(1);
    let options = Options::default().with_limits(limit, limit);
    match deflate {
        None => (options.without_compression(), None),
        Some(agreement) => {
            let engine_terms = Agreement {
                // Each message compressed on its own, which any client can
                // read, so the compressor goes back to the pool between
                // messages.
                server_no_context_takeover: true,
                server_max_window_bits: Some(
                    agreement
                        .server_max_window_bits
                        .map_or(ENGINE_SERVER_WINDOW_BITS, |bits| {
                            bits.min(ENGINE_SERVER_WINDOW_BITS)
                        }),
                ),
                ..*agreement
            };
            (
                options
                    .with_compression_level(CompressionLevel::new(COMPRESSION_LEVEL))
                    .with_compression_threshold(COMPRESSION_THRESHOLD)
                    .with_deflate_pool(DEFLATE_POOL.clone()),
                Some(engine_terms.header_value()),
            )
        }
    }
}

/// Runs an upgraded connection until it closes; `ending` says how it ended.
///
/// `deflate` holds the permessage-deflate terms the handshake answered with.
/// Compression and decompression run here, on the reactor thread, at the
/// fastest level: moving a message to another thread costs more than
/// compressing the small messages WebSockets mostly carry, and a large one is
/// bounded by `--ws-max-size` in both directions (decompression stops at the
/// limit, so a small compressed message cannot grow past it).
pub(crate) async fn serve(
    upgraded: Upgraded,
    mut ending: Ending,
    settings: WsSettings,
    deflate: Option<Agreement>,
    registry: Arc<Registry>,
) {
    let session = Arc::clone(&ending.session);
    registry.open.fetch_add(1, Ordering::Relaxed);
    let _registered = Registered(&registry);
    let mut closing = registry.closing.subscribe();
    // Made once and polled on each turn of the loop below: made anew per
    // turn, it joined and left the watch's list of waiters for every
    // message. Never polled again once it is ready, as the close it starts
    // sets `close_sent_at` for good.
    let shutdown = async move { closing.wait_for(|closing| *closing).await.map(drop) };
    tokio::pin!(shutdown);
    let progress = WriteProgress::new();
    // A peer that reads nothing for this long while we write is dropped.
    let stall_limit = if settings.ping_timeout.is_zero() {
        DEFAULT_STALL_LIMIT
    } else {
        settings.ping_timeout
    };
    let breaches = Breaches::default();
    let io = GuardedIo::new(
        ProgressIo::new(TokioIo::new(upgraded), Arc::clone(&progress)),
        breaches.clone(),
    );
    let (options, extensions) = engine_options(&settings, deflate.as_ref());
    // The engine's streaming layer: frames one by one (control frames
    // answered, data frames decompressed), joined into messages here.
    let mut ws = match WebSocket::from_stream_with_extensions(
        io,
        Role::Server,
        extensions.as_deref(),
        options,
    ) {
        Ok(ws) => ws.into_streaming(),
        Err(error) => {
            tracing::error!("websocket {}: {error}", session.path);
            ending.outcome = Some((code::INTERNAL_ERROR, String::new()));
            ending.by = Some(ClosedBy::Server);
            return;
        }
    };

    // When the next ping is due: --ws-ping-interval after the last one was
    // (or after it went out, when that was late: see PING_LATE).
    let mut next_ping = settings
        .ping_interval
        .map(|every| tokio::time::Instant::now() + every);
    // One timer for whichever comes first of the next ping, the pong's
    // deadline and the end of the wait for the peer's close: reset only when
    // that moment changes, it stays registered from turn to turn of the loop
    // (timers made anew per turn cost more than the rest of a small message).
    let timer = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(timer);
    let mut assembler = Assembler::new(settings.max_size);
    // Compressed messages over this size go out in fragments of it.
    let fragment = deflate.is_some().then_some(DEFLATE_FRAGMENT);
    // When the first unanswered ping went out, moved later by the time reads
    // were paused since: the pong deadline runs only while the server reads.
    let mut awaiting_pong: Option<Instant> = None;
    // Set while the server does not read because the app's queue is full:
    // the client's pong may wait in the socket behind its messages, so a slow
    // app must not get a live client closed for a missed ping.
    let mut reads_paused_at: Option<Instant> = None;
    // Set once we sent a close frame: wait (bounded) for the peer's reply.
    let mut close_sent_at: Option<tokio::time::Instant> = None;
    let mut close_timeout = CLOSE_TIMEOUT;
    // Set when nothing more may be written: the peer stopped reading, or
    // broke the protocol in a way the engine would answer wrongly.
    let mut abandoned = false;

    loop {
        let room = close_sent_at.is_none() && session.has_room();
        let read_wanted = room || close_sent_at.is_some();
        match (read_wanted, reads_paused_at) {
            (false, None) => reads_paused_at = Some(Instant::now()),
            (true, Some(paused_at)) => {
                if let Some(sent) = awaiting_pong.as_mut() {
                    *sent += paused_at.elapsed();
                }
                reads_paused_at = None;
            }
            _ => {}
        }
        let close_deadline = close_sent_at.map(|at| at + close_timeout);
        // The pong is due --ws-ping-timeout after the ping (plus the time
        // reads were paused), not at the next ping: with a timeout shorter
        // than the interval, a dead client was closed an interval late.
        let pong_due = match (awaiting_pong, reads_paused_at) {
            (Some(sent), None) if !settings.ping_timeout.is_zero() => {
                Some(tokio::time::Instant::from_std(sent + settings.ping_timeout))
            }
            _ => None,
        };
        let wake_at = close_deadline.or_else(|| next_ping.into_iter().chain(pong_due).min());
        if let Some(at) = wake_at {
            if timer.deadline() != at {
                timer.as_mut().reset(at);
            }
        }
        let mut inflated = false;
        // Every write below goes through `progress.bounded`: a write that
        // makes no progress for `stall_limit` ends the connection.
        let result: Result<(), WriteFailed> = tokio::select! {
            event = poll_fn(|cx| session.poll_app(cx, !room)), if close_sent_at.is_none() => {
                match event {
                    AppEvent::Room => Ok(()),
                    AppEvent::Send(messages) => {
                        let frames = frames_of(messages, fragment, &mut ending, &mut close_sent_at);
                        let send_all = async {
                            let mut fed = 0;
                            for frame in frames {
                                fed += frame.payload().len();
                                ws.feed(frame).await?;
                                if fragment.is_some_and(|size| fed >= size) {
                                    // What was fed was compressed as it was
                                    // taken: let the other connections run.
                                    yield_to_others(&session).await;
                                    fed = 0;
                                }
                            }
                            ws.flush().await
                        };
                        written(progress.bounded(stall_limit, send_all).await)
                    }
                }
            }
            frame = poll_fn(|cx| ws.poll_next_frame(cx)), if read_wanted => match frame {
                Ok(frame) => match frame.opcode() {
                    OpCode::Text | OpCode::Binary | OpCode::Continuation
                        if close_sent_at.is_some() =>
                    {
                        // We sent our close (the app's, or shutdown's) and read on
                        // only to see the peer's reply: data it sends meanwhile
                        // (RFC 6455 §5.5.1 lets it finish a message first) is
                        // dropped. Queued, it went past --ws-max-queue, and a peer
                        // that ignored our close filled memory until the timeout.
                        inflated = fragment.is_some() && frame.payload().len() >= YIELD_AFTER;
                        Ok(())
                    }
                    OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                        inflated = fragment.is_some() && frame.payload().len() >= YIELD_AFTER;
                        match assembler.push(frame) {
                            Ok(Some(message)) => {
                                session.push_incoming(message);
                                Ok(())
                            }
                            Ok(None) => Ok(()),
                            Err(error) => {
                                let (code, reason) = error.close_code();
                                if let AssemblyError::TooBig { received } = error {
                                    log_too_big(&session.path, Some(received), settings.max_size);
                                } else {
                                    tracing::info!(
                                        "closing websocket {} with {code}: {reason}",
                                        session.path
                                    );
                                }
                                let close = ws.send(close_frame(code, reason));
                                let _ = progress.bounded(stall_limit, close).await;
                                ending.outcome.get_or_insert((code, reason.to_string()));
                                ending.by.get_or_insert(ClosedBy::Server);
                                break;
                            }
                        }
                    }
                    OpCode::Pong => {
                        awaiting_pong = None;
                        Ok(())
                    }
                    OpCode::Close => {
                        let (code, reason) = match frame.close_code() {
                            Some(code) => (
                                u16::from(code),
                                frame.close_reason().ok().flatten().unwrap_or("").to_string(),
                            ),
                            None => (code::NO_STATUS, String::new()),
                        };
                        ending.outcome.get_or_insert((code, reason));
                        ending.by.get_or_insert(ClosedBy::Client);
                        if close_sent_at.is_none() {
                            // The engine queued the close reply; reading once
                            // more sends it and reports the end.
                            let reply = poll_fn(|cx| ws.poll_next_frame(cx));
                            let _ = progress.bounded(stall_limit, reply).await;
                        }
                        break;
                    }
                    // The engine queued the pong, and would write it only
                    // once a read finds nothing: a client that sends pings
                    // without a pause, and reads nothing, grew that queue
                    // without bound. It goes out now, or the connection ends
                    // as one whose client stopped reading.
                    OpCode::Ping => {
                        let flushed = poll_fn(|cx| ws.poll_ready_unpin(cx));
                        // After our close, the wait for the reply bounds it.
                        let limit = close_deadline.map_or(stall_limit, |deadline| {
                            stall_limit.min(
                                deadline.saturating_duration_since(tokio::time::Instant::now()),
                            )
                        });
                        written(progress.bounded(limit, flushed).await)
                    }
                },
                Err(error) => {
                    let (code, mut reason) = close_code_of(&error);
                    // A frame the guard marked for the engine to refuse.
                    let breach = breaches
                        .first()
                        .filter(|_| matches!(error, WsError::ReservedBitsNotZero));
                    if let Some(breach) = breach {
                        reason = breach.reason();
                    }
                    if code != code::ABNORMAL && close_sent_at.is_none() {
                        if matches!(error, WsError::FrameTooLarge) {
                            // The engine does not say how large the frame
                            // was (or what it decompressed to, so far).
                            log_too_big(&session.path, None, settings.max_size);
                        } else if breach.is_some() {
                            tracing::info!("closing websocket {} with {code}: {reason}", session.path);
                        } else {
                            tracing::info!(
                                "closing websocket {} with {code}: {error}",
                                session.path
                            );
                        }
                        // The engine queued its close frame; reading once
                        // more sends it.
                        let close = poll_fn(|cx| ws.poll_next_frame(cx));
                        let _ = progress.bounded(stall_limit, close).await;
                    }
                    ending.outcome.get_or_insert((code, reason.to_string()));
                    ending.by.get_or_insert(if code == code::ABNORMAL {
                        ClosedBy::Client
                    } else {
                        ClosedBy::Server
                    });
                    break;
                }
            },
            () = &mut timer, if wake_at.is_some() => {
                if close_sent_at.is_some() {
                    // The peer did not answer our close in time.
                    break;
                }
                let now = tokio::time::Instant::now();
                let pong_overdue = reads_paused_at.is_none()
                    && awaiting_pong.is_some_and(|sent| sent.elapsed() >= settings.ping_timeout);
                if pong_overdue || pong_due.is_some_and(|due| due <= now) {
                    tracing::info!(
                        "websocket {} sent no pong for {}s of reading after a ping (--ws-ping-timeout); closing with 1011",
                        session.path,
                        settings.ping_timeout.as_secs_f64()
                    );
                    let reason = "keepalive ping timeout";
                    let close = ws.send(close_frame(code::INTERNAL_ERROR, reason));
                    let _ = progress.bounded(stall_limit, close).await;
                    ending.outcome.get_or_insert((code::INTERNAL_ERROR, reason.to_string()));
                    ending.by.get_or_insert(ClosedBy::Server);
                    break;
                }
                match (next_ping, settings.ping_interval) {
                    (Some(due), Some(every)) if due <= now => {
                        next_ping = Some(ping_after(due, now, every));
                        if awaiting_pong.is_none() {
                            awaiting_pong = Some(Instant::now());
                        }
                        written(progress.bounded(stall_limit, ws.send(Frame::ping(Bytes::new()))).await)
                    }
                    _ => Ok(()),
                }
            }
            _ = &mut shutdown, if close_sent_at.is_none() => {
                let reason = "server shutting down";
                close_timeout = SHUTDOWN_CLOSE_TIMEOUT;
                // The app hears of it now, not once the client answers (or
                // the wait for its answer ends): its clean-up gets the rest
                // of the grace period, and does not depend on the client.
                // From here its sends are dropped.
                session.finish(code::SERVICE_RESTART, reason);
                // What it sent before goes out first, its own close included:
                // nothing may follow a close frame (RFC 6455 §5.5.1).
                let mut frames =
                    frames_of(session.take_outgoing(), fragment, &mut ending, &mut close_sent_at);
                if close_sent_at.is_none() {
                    ending.outcome.get_or_insert((code::SERVICE_RESTART, reason.to_string()));
                    ending.by.get_or_insert(ClosedBy::Server);
                    close_sent_at = Some(tokio::time::Instant::now());
                    frames.push(close_frame(code::SERVICE_RESTART, reason));
                }
                let send_all = async {
                    for frame in frames {
                        ws.feed(frame).await?;
                    }
                    ws.flush().await
                };
                written(progress.bounded(stall_limit, send_all).await)
            }
        };
        if let Err(failed) = result {
            match failed {
                WriteFailed::Stalled => {
                    tracing::info!(
                        "websocket {} closed: the client read nothing for {}s while the server was sending",
                        session.path,
                        stall_limit.as_secs_f64()
                    );
                    ending.by = Some(ClosedBy::Server);
                }
                WriteFailed::Closed => {
                    ending.by.get_or_insert(ClosedBy::Client);
                }
            }
            ending.outcome = Some((code::ABNORMAL, String::new()));
            abandoned = true;
            break;
        }
        if inflated {
            // The engine decompressed a large frame here; the next may be in
            // its buffer already, and reading it would not yield: let the
            // other connections run first.
            yield_to_others(&session).await;
        }
    }
    ending.tell_app();
    if !abandoned {
        let _ = progress.bounded(stall_limit, ws.close()).await;
    }
    ending.stalled = progress.stalled();
    ending.end(ClosedBy::Client);
}

/// When the ping after one due at `due` and sent at `now` is due (see
/// [`PING_LATE`]).
fn ping_after(
    due: tokio::time::Instant,
    now: tokio::time::Instant,
    every: Duration,
) -> tokio::time::Instant {
    if now > due + PING_LATE {
        now + every
    } else {
        due + every
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_sent_on_time_keep_their_rhythm_and_a_late_one_moves_the_rest() {
        let start = tokio::time::Instant::now();
        let every = Duration::from_secs(20);
        // The timer woke a millisecond or two after the ping was due: the
        // next is still due an interval after this one was, not after the wake.
        let on_time = ping_after(start, start + Duration::from_millis(2), every);
        assert_eq!(on_time, start + every);
        // Late past PING_LATE (the loop was busy): an interval from when it went out.
        let sent = start + Duration::from_millis(50);
        assert_eq!(ping_after(start, sent, every), sent + every);
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn upgrade_needs_get_and_both_tokens() {
        let h = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ]);
        assert!(is_upgrade(&Method::GET, &h));
        assert!(!is_upgrade(&Method::POST, &h));
        assert!(!is_upgrade(
            &Method::GET,
            &headers(&[("upgrade", "websocket")])
        ));
        assert!(!is_upgrade(
            &Method::GET,
            &headers(&[("connection", "upgrade"), ("upgrade", "h2c")])
        ));
    }

    #[test]
    fn accept_key_is_rfc6455s() {
        // The example from RFC 6455 §1.3.
        let h = headers(&[
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-version", "13"),
        ]);
        assert_eq!(accept_key(&h).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let old = headers(&[
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-version", "8"),
        ]);
        assert_eq!(accept_key(&old), Err(BadHandshake::UnsupportedVersion));
        assert!(matches!(
            accept_key(&headers(&[("sec-websocket-version", "13")])),
            Err(BadHandshake::Invalid(_))
        ));
        // Not 16 bytes in base64, or two of them.
        for key in [
            &["x"][..],
            &["not base64 at all!"],
            &["AAAAAAAAAAA="],
            &["dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQ=="],
        ] {
            let mut fields: Vec<_> = key.iter().map(|k| ("sec-websocket-key", *k)).collect();
            fields.push(("sec-websocket-version", "13"));
            assert!(
                matches!(accept_key(&headers(&fields)), Err(BadHandshake::Invalid(_))),
                "{key:?}"
            );
        }
    }

    #[test]
    fn subprotocols_keep_the_clients_order() {
        let h = headers(&[
            ("sec-websocket-protocol", "chat, superchat"),
            ("sec-websocket-protocol", " ,v2,,"),
            ("sec-websocket-version", "13"),
        ]);
        assert_eq!(check_handshake(&h), Ok(()));
        assert_eq!(offered_subprotocols(&h), ["chat", "superchat", "v2"]);
    }

    #[test]
    fn a_subprotocol_that_is_not_a_token_is_a_bad_handshake() {
        for offer in ["a b, c", "x\"y", "chat, v2/json", "chat;v=2"] {
            let h = headers(&[
                ("sec-websocket-protocol", "fine"),
                ("sec-websocket-protocol", offer),
                ("sec-websocket-version", "13"),
            ]);
            assert!(
                matches!(check_handshake(&h), Err(BadHandshake::Invalid(_))),
                "{offer:?}"
            );
        }
        let mut h = headers(&[("sec-websocket-version", "13")]);
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        assert!(matches!(check_handshake(&h), Err(BadHandshake::Invalid(_))));
    }

    #[test]
    fn errors_map_to_close_codes() {
        assert_eq!(close_code_of(&WsError::FrameTooLarge).0, code::TOO_BIG);
        assert_eq!(close_code_of(&WsError::InvalidUTF8).0, code::INVALID_DATA);
        assert_eq!(close_code_of(&WsError::ConnectionClosed).0, code::ABNORMAL);
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(close_code_of(&WsError::IoError(reset)).0, code::ABNORMAL);
        let corrupt = std::io::Error::from(std::io::ErrorKind::InvalidInput);
        assert_eq!(
            close_code_of(&WsError::IoError(corrupt)).0,
            code::INTERNAL_ERROR
        );
        assert_eq!(
            close_code_of(&WsError::ReservedBitsNotZero).0,
            code::PROTOCOL_ERROR
        );
    }

    #[test]
    fn large_compressed_messages_go_out_in_fragments() {
        let shape = |frames: &[Frame]| {
            frames
                .iter()
                .map(|f| (f.opcode(), f.payload().len(), f.is_fin()))
                .collect::<Vec<_>>()
        };
        let mut frames = Vec::new();
        push_data(
            &mut frames,
            OpCode::Binary,
            Bytes::from(vec![7; 10]),
            Some(4),
        );
        assert_eq!(
            shape(&frames),
            [
                (OpCode::Binary, 4, false),
                (OpCode::Continuation, 4, false),
                (OpCode::Continuation, 2, true),
            ]
        );
        let joined: Vec<u8> = frames.iter().flat_map(|f| f.payload().to_vec()).collect();
        assert_eq!(joined, vec![7; 10]);

        // Exactly one fragment's size, or no fragmenting: one frame.
        for fragment in [Some(5), None] {
            let mut frames = Vec::new();
            push_data(&mut frames, OpCode::Text, Bytes::from("hello"), fragment);
            assert_eq!(shape(&frames), [(OpCode::Text, 5, true)]);
        }
        let mut frames = Vec::new();
        push_data(&mut frames, OpCode::Text, Bytes::from("abcdef"), Some(3));
        assert_eq!(
            shape(&frames),
            [(OpCode::Text, 3, false), (OpCode::Continuation, 3, true)]
        );
    }

    #[test]
    fn the_engine_compresses_each_message_alone_with_at_most_a_4k_window() {
        let settings = WsSettings {
            max_size: 1024,
            max_queue: 1,
            ping_interval: None,
            ping_timeout: Duration::ZERO,
            per_message_deflate: true,
            closed_send_grace: Duration::ZERO,
        };
        assert_eq!(engine_options(&settings, None).1, None);
        let plain = Agreement::default();
        assert_eq!(
            engine_options(&settings, Some(&plain)).1.as_deref(),
            Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=12")
        );
        let small = Agreement {
            server_max_window_bits: Some(10),
            client_no_context_takeover: true,
            ..Agreement::default()
        };
        assert_eq!(
            engine_options(&settings, Some(&small)).1.as_deref(),
            Some(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
                 server_max_window_bits=10"
            )
        );
    }
}
