//! WebSockets (RFC 6455) over HTTP/1.1 upgrades.
//!
//! The protocol engine is tokio-tungstenite, used only in this module so it
//! can be replaced (or extended with permessage-deflate, or WebSockets over
//! HTTP/2) without touching the ASGI side. The ASGI side talks to a
//! connection through its [`WsSession`].

mod progress;
pub(crate) mod session;

use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderMap, HeaderValue};
use http::Method;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use progress::{ProgressIo, Stalled, WriteProgress};
pub(crate) use session::WsSession;
use session::{AppEvent, AppMessage, PeerMessage};

/// How long to wait for the peer's close frame after sending ours.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Close codes the server sends (RFC 6455 §7.4.1).
pub(crate) mod code {
    pub const NORMAL: u16 = 1000;
    pub const PROTOCOL_ERROR: u16 = 1002;
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

/// Checks an RFC 8441 handshake, which has no key to answer: only the
/// version matters.
pub(crate) fn check_version(headers: &HeaderMap) -> Result<(), BadHandshake> {
    match headers.get(header::SEC_WEBSOCKET_VERSION) {
        None => Err(BadHandshake::Invalid("missing Sec-WebSocket-Version")),
        Some(version) if version.as_bytes() != VERSION.as_bytes() => {
            Err(BadHandshake::UnsupportedVersion)
        }
        Some(_) => Ok(()),
    }
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
    check_version(headers)?;
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(BadHandshake::Invalid("missing Sec-WebSocket-Key"))?;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    HeaderValue::from_str(&accept).map_err(|_| BadHandshake::Invalid("invalid Sec-WebSocket-Key"))
}

/// The subprotocols a client offers, in its order of preference.
pub(crate) fn offered_subprotocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|proto| proto.trim().to_string())
        .filter(|proto| !proto.is_empty())
        .collect()
}

fn close_code_of(error: &WsError) -> (u16, &'static str) {
    match error {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
            (code::TOO_BIG, "message too big")
        }
        WsError::Capacity(_) => (code::TOO_BIG, "frame too big"),
        WsError::Utf8(_) => (code::INVALID_DATA, "invalid UTF-8 in text message"),
        // The peer dropped the TCP connection without a close frame.
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => (code::ABNORMAL, ""),
        WsError::Protocol(_) | WsError::AttackAttempt => (code::PROTOCOL_ERROR, "protocol error"),
        _ => (code::ABNORMAL, ""),
    }
}

fn close_message(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_string().into(),
    }))
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

/// How a WebSocket connection ended: the close code the app saw, and who
/// closed it first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed {
    pub code: u16,
    pub by: ClosedBy,
}

/// Runs an upgraded connection until it closes; says how it ended.
pub(crate) async fn serve(
    upgraded: Upgraded,
    session: Arc<WsSession>,
    settings: WsSettings,
    registry: Arc<Registry>,
) -> Closed {
    registry.open.fetch_add(1, Ordering::Relaxed);
    let _registered = Registered(&registry);
    let mut closing = registry.closing.subscribe();
    let config = WebSocketConfig::default()
        .max_message_size(Some(settings.max_size))
        .max_frame_size(Some(settings.max_size));
    let progress = WriteProgress::new();
    // A peer that reads nothing for this long while we write is dropped.
    let stall_limit = if settings.ping_timeout.is_zero() {
        DEFAULT_STALL_LIMIT
    } else {
        settings.ping_timeout
    };
    let io = ProgressIo::new(TokioIo::new(upgraded), Arc::clone(&progress));
    let stream = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    let (mut sink, mut stream) = stream.split();

    let mut ping = settings.ping_interval.map(|every| {
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    let mut awaiting_pong: Option<Instant> = None;
    // The close code and reason the app will see, and who closed first.
    let mut outcome: Option<(u16, String)> = None;
    let mut closed_by: Option<ClosedBy> = None;
    // Set once we sent a close frame: wait (bounded) for the peer's reply.
    let mut close_sent_at: Option<tokio::time::Instant> = None;
    // Set when the peer stopped reading: nothing more can be written.
    let mut stalled = false;

    loop {
        let room = close_sent_at.is_none() && session.has_room();
        let read_wanted = room || close_sent_at.is_some();
        let close_deadline = close_sent_at.map(|at| at + CLOSE_TIMEOUT);
        // Every write below goes through `progress.bounded`: a write that
        // makes no progress for `stall_limit` ends the connection.
        let result: Result<(), WriteFailed> = tokio::select! {
            event = poll_fn(|cx| session.poll_app(cx, !room)), if close_sent_at.is_none() => {
                match event {
                    AppEvent::Room => Ok(()),
                    AppEvent::Send(messages) => {
                        let mut frames = Vec::with_capacity(messages.len());
                        for message in messages {
                            frames.push(match message {
                                AppMessage::Text(text) => Message::text(text),
                                AppMessage::Binary(data) => Message::binary(data),
                                AppMessage::Close(code, reason) => {
                                    outcome.get_or_insert((code, reason.clone()));
                                    closed_by.get_or_insert(ClosedBy::App);
                                    close_sent_at = Some(tokio::time::Instant::now());
                                    close_message(code, &reason)
                                }
                            });
                        }
                        let send_all = async {
                            for frame in frames {
                                sink.feed(frame).await?;
                            }
                            sink.flush().await
                        };
                        written(progress.bounded(stall_limit, send_all).await)
                    }
                }
            }
            message = stream.next(), if read_wanted => match message {
                Some(Ok(Message::Text(text))) => {
                    session.push_incoming(PeerMessage::Text(text.as_str().to_string()));
                    Ok(())
                }
                Some(Ok(Message::Binary(data))) => {
                    session.push_incoming(PeerMessage::Binary(data));
                    Ok(())
                }
                Some(Ok(Message::Pong(_))) => {
                    awaiting_pong = None;
                    Ok(())
                }
                // tungstenite queued the pong; send it now.
                Some(Ok(Message::Ping(_))) => written(progress.bounded(stall_limit, sink.flush()).await),
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = match &frame {
                        Some(frame) => (u16::from(frame.code), frame.reason.as_str().to_string()),
                        None => (code::NO_STATUS, String::new()),
                    };
                    outcome.get_or_insert((code, reason));
                    closed_by.get_or_insert(ClosedBy::Client);
                    // Send tungstenite's queued close reply.
                    let _ = progress.bounded(stall_limit, sink.flush()).await;
                    break;
                }
                Some(Ok(Message::Frame(_))) => Ok(()),
                Some(Err(error)) => {
                    let (code, reason) = close_code_of(&error);
                    if code != code::ABNORMAL && close_sent_at.is_none() {
                        tracing::info!(
                            "closing websocket {} with {code}: {error}",
                            session.path
                        );
                        let close = sink.send(close_message(code, reason));
                        let _ = progress.bounded(stall_limit, close).await;
                    }
                    outcome.get_or_insert((code, reason.to_string()));
                    closed_by.get_or_insert(if code == code::ABNORMAL {
                        ClosedBy::Client
                    } else {
                        ClosedBy::Server
                    });
                    break;
                }
                None => {
                    outcome.get_or_insert((code::ABNORMAL, String::new()));
                    closed_by.get_or_insert(ClosedBy::Client);
                    break;
                }
            },
            _ = async {
                match ping.as_mut() {
                    Some(interval) => { interval.tick().await; }
                    None => std::future::pending::<()>().await,
                }
            }, if close_sent_at.is_none() => {
                if awaiting_pong.is_some_and(|sent| sent.elapsed() >= settings.ping_timeout) {
                    tracing::info!("websocket {} did not answer a ping; closing", session.path);
                    let reason = "keepalive ping timeout";
                    let close = sink.send(close_message(code::INTERNAL_ERROR, reason));
                    let _ = progress.bounded(stall_limit, close).await;
                    outcome.get_or_insert((code::INTERNAL_ERROR, reason.to_string()));
                    closed_by.get_or_insert(ClosedBy::Server);
                    break;
                }
                if awaiting_pong.is_none() {
                    awaiting_pong = Some(Instant::now());
                }
                written(progress.bounded(stall_limit, sink.send(Message::Ping(Bytes::new()))).await)
            }
            _ = async { closing.wait_for(|closing| *closing).await.map(drop) }, if close_sent_at.is_none() => {
                let reason = "server shutting down";
                outcome.get_or_insert((code::SERVICE_RESTART, reason.to_string()));
                closed_by.get_or_insert(ClosedBy::Server);
                close_sent_at = Some(tokio::time::Instant::now());
                let close = sink.send(close_message(code::SERVICE_RESTART, reason));
                written(progress.bounded(stall_limit, close).await)
            }
            _ = async {
                match close_deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending::<()>().await,
                }
            } => break,
        };
        if let Err(failed) = result {
            match failed {
                WriteFailed::Stalled => {
                    tracing::info!(
                        "websocket {} closed: the client read nothing for {}s while the server was sending",
                        session.path,
                        stall_limit.as_secs_f64()
                    );
                    closed_by = Some(ClosedBy::Server);
                }
                WriteFailed::Closed => {
                    closed_by.get_or_insert(ClosedBy::Client);
                }
            }
            outcome = Some((code::ABNORMAL, String::new()));
            stalled = true;
            break;
        }
    }
    let (code, reason) = outcome.unwrap_or((code::ABNORMAL, String::new()));
    session.finish(code, &reason);
    if !stalled {
        let _ = progress.bounded(stall_limit, sink.close()).await;
    }
    Closed {
        code,
        by: closed_by.unwrap_or(ClosedBy::Client),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[test]
    fn subprotocols_keep_the_clients_order() {
        let h = headers(&[
            ("sec-websocket-protocol", "chat, superchat"),
            ("sec-websocket-protocol", "v2"),
        ]);
        assert_eq!(offered_subprotocols(&h), ["chat", "superchat", "v2"]);
    }

    #[test]
    fn errors_map_to_close_codes() {
        let too_big = WsError::Capacity(CapacityError::MessageTooLong {
            size: 2,
            max_size: 1,
        });
        assert_eq!(close_code_of(&too_big).0, code::TOO_BIG);
        assert_eq!(
            close_code_of(&WsError::Utf8(String::new())).0,
            code::INVALID_DATA
        );
        let reset = WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake);
        assert_eq!(close_code_of(&reset).0, code::ABNORMAL);
        let bad = WsError::Protocol(ProtocolError::NonZeroReservedBits);
        assert_eq!(close_code_of(&bad).0, code::PROTOCOL_ERROR);
    }
}
