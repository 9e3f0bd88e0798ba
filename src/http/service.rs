//! The hyper service: checks a request against the server's limits, hands it
//! to the app through the bridge, and turns the app's response into hyper's.

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use parking_lot::Mutex;

use super::access_log::{AccessLog, AccessRecord};
use super::body::{read_cached, FileStream, ResponseBody, Source};
use super::connection::{ActiveRequest, AppTask};
use super::refusals;
use super::request_id;
use super::server::ServerState;
use super::static_files::{Lookup, CHUNK};
use crate::asgi::Event;
use crate::exchange::{BodyRoom, Exchange, Refusal, RequestStart, ThreadStage, MAX_BODY_DRAIN};
use crate::metrics::meter::{RequestMeter, WebSocketOpen};
use crate::net::ConnectionInfo;
use crate::supervisor::balance::WorkerSeat;
use crate::ws::session::{Handshake, WsSession, WsStart};
use crate::ws::{self, BadHandshake, WsSettings};

/// Closes the exchange if hyper drops the service future before the response
/// head is ready: the client went away while the app was working, or while
/// its request waited for a WSGI thread, which the access line it holds
/// meanwhile then says.
struct CloseOnDrop {
    exchange: Option<Arc<Exchange>>,
    log: Option<AccessRecord>,
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if let Some(exchange) = self.exchange.take() {
            exchange.close();
            exchange.release_response();
            if let Some(log) = &mut self.log {
                log.never_ran = exchange.waits_for_thread();
            }
        }
    }
}

/// Counts a request in flight for `--limit-concurrency`, from its arrival
/// until its response body is done.
pub(crate) struct InFlight(Arc<ServerState>);

impl InFlight {
    fn acquire(state: &Arc<ServerState>) -> Option<InFlight> {
        let now = state.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        let guard = InFlight(Arc::clone(state));
        match state.limit_concurrency {
            Some(limit) if now > limit => None,
            _ => Some(guard),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The longest an HTTP/1 request that found no place under
/// `--limit-concurrency` waits for the app of the request before it on the
/// same connection to return, and how soon it first looks again (then twice
/// as long each time: a predecessor that is only returning is done within a
/// millisecond or two, and one that works on is not polled a hundred times).
const PREDECESSOR_WAIT: Duration = Duration::from_millis(100);
const PREDECESSOR_POLL: Duration = Duration::from_millis(1);

/// A place under `--limit-concurrency` for an HTTP/1 request that found
/// none while the app of its connection's previous request still holds one.
/// That response is complete (the client sent this request after it), and
/// its app is returning: a WSGI app's `close()`, an ASGI app's last steps
/// after its last `send()`. The client cannot know, so rather than refuse it
/// for its own predecessor the request waits for that app to return, for
/// [`PREDECESSOR_WAIT`] at most (a background task after the response still
/// counts, and then the limit holds). `None`: no place.
async fn place_after_predecessor(
    state: Arc<ServerState>,
    active: &ActiveRequest,
) -> Option<InFlight> {
    let until = tokio::time::Instant::now() + PREDECESSOR_WAIT;
    let mut pause = PREDECESSOR_POLL;
    loop {
        // Read before the attempt: a predecessor that returns between the two
        // gives its place back before the attempt, and is then not waited for.
        let predecessor_running = active.app_tasks() > 0;
        if let Some(place) = InFlight::acquire(&state) {
            return Some(place);
        }
        let now = tokio::time::Instant::now();
        if !predecessor_running || now >= until {
            return None;
        }
        tokio::time::sleep_until((now + pause).min(until)).await;
        pause *= 2;
    }
}

/// Logs a 503 of `--limit-concurrency`: the first of a burst at once, the
/// rest summed up every [`refusals::SUMMARY_EVERY`] by a task that ends with
/// the burst (see [`refusals`]).
fn log_refusal(state: &ServerState) {
    if !state.refusals.refused() {
        return;
    }
    let limit = state.limit_concurrency.unwrap_or_default();
    tracing::warn!(
        "503: more than --limit-concurrency {limit} requests in flight; the next ones are \
         counted, and logged every {}s while they go on",
        refusals::SUMMARY_EVERY.as_secs()
    );
    let refusals = Arc::clone(&state.refusals);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(refusals::SUMMARY_EVERY).await;
            let Some(count) = refusals.period_ended() else {
                break;
            };
            tracing::warn!(
                "503: {count} more requests over --limit-concurrency {limit} in the last {}s",
                refusals::SUMMARY_EVERY.as_secs()
            );
        }
    });
}

/// Answers one request; `active` marks its connection busy until the
/// response body is done (see `connection`).
pub(crate) fn handle(
    mut request: Request<Incoming>,
    mut info: ConnectionInfo,
    state: Arc<ServerState>,
    active: ActiveRequest,
) -> impl Future<Output = Result<Response<ResponseBody>, Infallible>> {
    // Not an async fn: its future would keep the arguments twice, as passed
    // and as its body's locals, for its whole life (hyper moves the future
    // whole, and every byte of it is copied each time). One labelled block
    // rather than an inner async fn: a nested future would be moved once
    // more per request.
    // Read only for what uses it (a vDSO clock read is some 0.2% of a hello
    // world's request): the access log, in µs; the metrics; the deadline of
    // --timeout-request. A use the condition misses reads the clock then.
    let started_at =
        (state.access_log.is_some() || state.metrics.is_some() || state.timeout_request.is_some())
            .then(std::time::Instant::now);
    let started_at = move || started_at.unwrap_or_else(std::time::Instant::now);
    async move {
        // On the first poll, not when hyper calls the service: an HTTP/2
        // stream is known to its connection's watcher only while the
        // executor first polls it.
        active.attach_stream();
        let over_http2 = request.version() == Version::HTTP_2;
        let meter = state
            .metrics
            .as_ref()
            .map(|slot| RequestMeter::start(slot, request.method(), started_at()));
        let mut client_left = false;
        let mut response = 'respond: {
            if let Some(slot) = &state.slot {
                slot.count_request();
            }
            // RFC 9113 §8.2.1 and §8.3.1: what makes an HTTP/2 request malformed
            // that the h2 crate lets through (and a `host` made from `:authority`).
            let http2_malformed = if request.version() == Version::HTTP_2 {
                check_http2_fields(&mut request)
            } else {
                None
            };
            join_cookies(request.headers_mut());
            // RFC 9112 §3.2: an HTTP/1 request carries at most one Host
            // header, and an HTTP/1.1 one exactly one. Counted before a
            // proxy's `host` may replace them all.
            let hosts =
                (!over_http2).then(|| request.headers().get_all(header::HOST).iter().count());
            let host_is_valid = request
                .headers()
                .get(header::HOST)
                .is_none_or(|host| valid_host(host.as_bytes()));
            // Before a proxy's `host` may stand in for the target's.
            let bad_target = if over_http2 {
                check_http2_target(&request)
            } else {
                check_http1_target(&mut request)
            };
            if let Some(trusted) = &state.proxy {
                trusted.apply(&mut info, request.headers_mut());
            }
            if let Some(name) = &state.request_id {
                request_id::ensure(request.headers_mut(), name);
            }
            // The access log record of this request, before a response is chosen.
            let pending = || {
                state.access_log.map(|log| {
                    AccessRecord::new(
                        log,
                        info.client_for_log(),
                        request.method(),
                        request.uri(),
                        request.version(),
                        request.headers(),
                        started_at(),
                    )
                })
            };
            let record = |status| pending().map(|log| log.with_status(status));

            if let Some(hosts) = hosts {
                let reason = match hosts {
                    0 if request.version() == Version::HTTP_11 => Some("missing Host header"),
                    0 | 1 => None,
                    _ => Some("more than one Host header"),
                };
                if let Some(reason) = reason {
                    tracing::debug!(client = %info.client_for_log(), "400 Bad Request: {reason}");
                    let status = StatusCode::BAD_REQUEST;
                    break 'respond state.error_response(status, record(status), true);
                }
            }
            // RFC 9112 §3.2: a Host that is not `host[:port]` is a 400 (a
            // space, a path, userinfo: an app would build links from it).
            // Checked as the client sent it, before a proxy's may stand in.
            if !host_is_valid {
                tracing::debug!(client = %info.client_for_log(), "400 Bad Request: invalid Host header");
                let status = StatusCode::BAD_REQUEST;
                break 'respond state.error_response(status, record(status), true);
            }
            if let Some(reason) = http2_malformed {
                tracing::debug!(client = %info.client_for_log(), "400 Bad Request: {reason}");
                let status = StatusCode::BAD_REQUEST;
                break 'respond state.error_response(status, record(status), true);
            }

            if let Some(form) = bad_target {
                // As the client sent it: HTTP/2's `:path` (hyper's URI
                // also holds `:scheme` and `:authority`), HTTP/1's target.
                let target = match request.uri().path_and_query() {
                    Some(path) if over_http2 => path.as_str().to_owned(),
                    _ => request.uri().to_string(),
                };
                tracing::info!(
                    client = %info.client_for_log(),
                    "400: the target \"{}\" of a {} request is in {form} (RFC 9112 §3.2, RFC \
                     9113 §8.3.1: a path, or an absolute URL); the app is not called",
                    super::access_format::Escaped(target.as_bytes()),
                    request.method()
                );
                let status = StatusCode::BAD_REQUEST;
                break 'respond state.error_response(status, record(status), true);
            }

            // RFC 9110 §9.3.6: CONNECT asks for a tunnel, which rsasgi does
            // not make, and an app could not: a 2xx to it makes hyper hand
            // the connection over as a tunnel no one serves (the client saw
            // it close), and an HTTP/1 CONNECT's target, an authority, is no
            // path to route. Only RFC 8441's extended CONNECT, a WebSocket
            // over HTTP/2, goes on (to the WebSocket handshake below).
            if request.method() == Method::CONNECT
                && !(state.ws.is_some() && ws::is_extended_connect(&request))
            {
                tracing::info!(
                    client = %info.client_for_log(),
                    "501: CONNECT {} asks for a tunnel, which rsasgi does not make",
                    super::access_format::Escaped(request.uri().to_string().as_bytes())
                );
                let status = StatusCode::NOT_IMPLEMENTED;
                break 'respond state.error_response(status, record(status), true);
            }

            // RFC 9110 §9.3.7: `OPTIONS *` asks about the server, not a resource, and
            // its asterisk is no path an app could route (nor a valid PEP 3333
            // PATH_INFO), so the server answers it. Over HTTP/2 (`:path` "*")
            // hyper puts the scheme and authority in front, so the path is
            // what tells; no origin-form path is "*".
            if request.method() == Method::OPTIONS
                && request.uri().path() == "*"
                && request.uri().query().is_none()
            {
                let status = StatusCode::OK;
                let close = leaves_body_unread(&request);
                break 'respond state.options_asterisk_response(record(status), close);
            }

            // Only a chunked body (no exact length) has a Transfer-Encoding
            // hyper let through: one test for the rest.
            if !over_http2 && request.body().size_hint().exact().is_none() {
                if let Some(problem) = transfer_coding_problem(request.headers()) {
                    tracing::info!(
                        client = %info.client_for_log(),
                        "{}: the body of {} {} {problem}",
                        problem.status().as_u16(),
                        request.method(),
                        super::access_format::Escaped(request.uri().path().as_bytes())
                    );
                    let status = problem.status();
                    break 'respond state.error_response(status, record(status), true);
                }
            }

            if let Some(settings) = &state.ws {
                if ws::is_upgrade(request.method(), request.headers())
                    || ws::is_extended_connect(&request)
                {
                    let log = pending();
                    let settings = settings.clone();
                    let http2 = request.version() == Version::HTTP_2;
                    if http2 && active.app_tasks() >= state.http2_max_streams {
                        break 'respond too_many_app_tasks(&state, &info, &active, record);
                    }
                    // Over HTTP/2 the WebSocket is one stream of a connection
                    // that must not count as idle while it is open, and its app
                    // counts against the connection as a request's does.
                    let busy = http2.then(|| (active.keep_busy(), active.app_task()));
                    // Until the answer goes to hyper, a drain leaves the
                    // connection's keep-alive alone (see `DrainWait`).
                    let _answering = (!http2).then(|| active.answering_handshake());
                    // Boxed: the handshake's future is large, and inline it would
                    // make every request's future as large, copied whole each
                    // time hyper or tokio moves it.
                    let opening = Box::pin(open_websocket(
                        request,
                        info,
                        Arc::clone(&state),
                        settings,
                        log,
                        busy,
                    ));
                    break 'respond opening.await;
                }
            }

            // Read before the attempt, as in place_after_predecessor: a
            // predecessor that returns in between has given its place back.
            // Only with a limit, the one case an attempt can fail.
            let predecessor_running = state.limit_concurrency.is_some()
                && request.version() < Version::HTTP_2
                && active.app_tasks() > 0;
            let mut in_flight = InFlight::acquire(&state);
            if in_flight.is_none() && predecessor_running {
                // Boxed: a rare path, whose timer would otherwise enlarge every
                // request's future.
                in_flight = Box::pin(place_after_predecessor(Arc::clone(&state), &active)).await;
            }
            let Some(in_flight) = in_flight else {
                log_refusal(&state);
                let status = StatusCode::SERVICE_UNAVAILABLE;
                let close = leaves_body_unread(&request);
                break 'respond state.error_response(status, record(status), close);
            };

            if let Some(files) = &state.static_files {
                let lookup =
                    files.lookup(request.method(), request.uri().path(), request.headers());
                if !matches!(lookup, Lookup::App) {
                    let log = pending();
                    break 'respond state.static_response(lookup, &request, log, in_flight);
                }
            }

            // A client that resets its HTTP/2 streams once their heads arrive frees
            // its stream slots while the app goes on working for them: a paced
            // rapid reset. Such a connection gets no more app tasks than it may
            // have streams.
            if request.version() == Version::HTTP_2 && active.app_tasks() >= state.http2_max_streams
            {
                break 'respond too_many_app_tasks(&state, &info, &active, record);
            }

            let body_limit = state.limit_request_body;
            if let (Some(limit), Some(length)) = (body_limit, request.body().size_hint().exact()) {
                if length > limit {
                    tracing::info!(
                        client = %info.client_for_log(),
                        "413: request body of {length} bytes is over --limit-request-body {limit}"
                    );
                    let status = StatusCode::PAYLOAD_TOO_LARGE;
                    break 'respond state.error_response(status, record(status), true);
                }
            }

            // The head and body end in this block: moved out, their slots would
            // still take room in the future across its awaits.
            let (exchange, mut log, is_head, http2, http10, awaits_continue, body_length) = {
                let (head, body) = request.into_parts();
                let body_length = body.size_hint().exact();
                let body_complete = body.is_end_stream();
                let log = state.access_log.map(|access_log| {
                    AccessRecord::new(
                        access_log,
                        info.client_for_log(),
                        &head.method,
                        &head.uri,
                        head.version,
                        &head.headers,
                        started_at(),
                    )
                });
                let exchange = Exchange::new(
                    Arc::clone(&state.bridge),
                    &head,
                    info,
                    body_complete,
                    state.wsgi.is_some(),
                );
                // Both count until the app is done, not only until the response is:
                // the app may work on after its client has gone.
                exchange.hold((in_flight, active.app_task()));
                if head.version != Version::HTTP_2 {
                    // For a half-close to be told from a client that left.
                    active.to_app(Arc::clone(&exchange));
                }
                // RFC 9110 §10.1.1: a 100-continue in an HTTP/1.0 request is
                // ignored (hyper sends no 100 for one): its body is read ahead.
                let expects_continue = !body_complete
                    && head.version >= Version::HTTP_11
                    && head.headers.get(header::EXPECT).is_some_and(|value| {
                        value.as_bytes().eq_ignore_ascii_case(b"100-continue")
                    });
                if !body_complete {
                    if !expects_continue {
                        // Read ahead so the app's first receive() finds the body waiting;
                        // with 100-continue, wait until the app asks for it.
                        exchange.want_body();
                    }
                    let http2 = head.version == Version::HTTP_2;
                    let pump = Pump {
                        limit: body_limit,
                        timeout: state.timeout_request_body,
                        http2,
                        starvable: http2 && state.http2_streams_can_starve,
                        awaits_continue: http2 && expects_continue,
                    };
                    tokio::spawn(pump_body(body, Arc::clone(&exchange), pump));
                }
                let is_head = head.method == Method::HEAD;
                let http2 = head.version == Version::HTTP_2;
                let http10 = Http10::of(head.version, &head.headers);
                let start = Box::new(RequestStart {
                    exchange: Arc::clone(&exchange),
                    head,
                });
                match &state.wsgi {
                    Some(pool) => {
                        if pool.dispatch(start).is_err() {
                            let status = StatusCode::SERVICE_UNAVAILABLE;
                            break 'respond state.error_response(
                                status,
                                log.map(|l| l.with_status(status)),
                                true,
                            );
                        }
                    }
                    None => state.bridge.push(Event::Request(start)),
                }
                (
                    exchange,
                    log,
                    is_head,
                    http2,
                    http10,
                    expects_continue,
                    body_length,
                )
            };

            let deadline = state
                .timeout_request
                .map(|limit| tokio::time::Instant::from_std(started_at() + limit));
            let mut closer = CloseOnDrop {
                exchange: Some(Arc::clone(&exchange)),
                log: log.take(),
            };
            let response_start = poll_fn(|cx| exchange.poll_response_start(cx));
            let start = match deadline {
                None => response_start.await,
                Some(deadline) => match tokio::time::timeout_at(deadline, response_start).await {
                    Ok(start) => start,
                    Err(_elapsed) => {
                        request_timed_out(&state, &exchange, false);
                        let status = StatusCode::GATEWAY_TIMEOUT;
                        let log = closer.log.take().map(|log| log.with_status(status));
                        break 'respond state.error_response(status, log, true);
                    }
                },
            };
            closer.exchange = None;
            let mut log = closer.log.take();
            if start.is_err() {
                // No response of the app's will be sent: its place under
                // --limit-concurrency goes as soon as the app is done too, not
                // when Python lets go of the exchange (a reference cycle in the
                // app may hold it until the garbage collector runs).
                exchange.release_response();
            }
            // A body never asked for under `Expect: 100-continue` is not read after
            // the response (the client was not told to send it), nor more of one
            // still to come than is read and thrown away to keep the connection
            // (a 413 for an upload the app looked at only by its headers): the
            // connection closes then, so say so (RFC 9110 §10.1.1, RFC 9112 §9.6),
            // or a client (nginx, keeping the upstream connection) would send its
            // next request on it. A chunked body tells how much of it is left
            // only at its end: one still to come, that the app has not begun to
            // read, may be more than is drained. (One the app reads as it
            // answers is left to it: should it stop reading past what is
            // drained, the connection closes unannounced.)
            let unread_body_closes = || {
                (awaits_continue && exchange.body_never_asked())
                    || match body_length {
                        // No lock for a body that is drained whole at most.
                        Some(length) => {
                            length > MAX_BODY_DRAIN
                                && exchange.body_to_come(length) > MAX_BODY_DRAIN
                        }
                        None => exchange.body_to_come_untouched(),
                    }
            };
            let start = match start {
                Ok(start) => start,
                Err(Refusal::Status(status)) => {
                    let close = status != StatusCode::INTERNAL_SERVER_ERROR
                        || (!http2 && unread_body_closes());
                    log = log.map(|log| log.with_status(status));
                    break 'respond state.error_response(status, log, close);
                }
                Err(Refusal::Closed) => {
                    // The client left before the response (in the middle of
                    // its body, or it reset the stream): its line says 499 and
                    // the metrics count no status. Something must still be
                    // returned to hyper. Mostly it has nowhere to send it, but
                    // a client that only shut its sending side mid-body still
                    // reads: it is told its request was incomplete, not that
                    // the server is overloaded (503 invites a retry).
                    if let Some(log) = &mut log {
                        log.never_ran = exchange.waits_for_thread();
                    }
                    drop(log);
                    client_left = true;
                    let status = StatusCode::BAD_REQUEST;
                    break 'respond state.error_response(status, None, true);
                }
            };

            // A response the app finished before its head is written goes out with a
            // Content-Length (see ResponseBody::size_hint).
            let complete_len = exchange.complete_body_len();
            let body_len_known = complete_len.is_some();
            // The app's own Content-Length (HEAD, 204 and 304 send no body,
            // whatever their Content-Length). A body longer than it was cut to
            // it as the app sent it (Exchange::send_body): one it finished
            // shorter goes out as it is, and then the connection closes
            // (HTTP/1; an HTTP/2 stream's end says where its body ends), so
            // the client sees the response is short.
            // RFC 9110 §15.3.6: a 205 has no content. hyper strips the body of
            // a 204 or 304 itself; a 205's is dropped here, as for HEAD, and
            // the response says it has none (Content-Length: 0).
            let reset_content = start.status == StatusCode::RESET_CONTENT;
            // Responses whose app body is dropped here, not sent.
            let dropped_body = is_head || reset_content;
            let bodiless = dropped_body || matches!(start.status.as_u16(), 204 | 304);
            let declared = start.content_length.filter(|_| !bodiless);
            let short = complete_len
                .zip(declared)
                .filter(|&(actual, declared)| actual < declared);
            if let Some((actual, declared)) = short {
                let request = exchange.request_line();
                let after = if http2 {
                    "reset the stream after it"
                } else {
                    "closed the connection after it"
                };
                tracing::warn!(
                    "\"{request}\": the app's Content-Length is {declared} but its body only {actual} bytes; \
                     {after}, so the client sees the response is short"
                );
            }
            let close_after = !http2 && (short.is_some() || unread_body_closes());
            let log = log.map(|log| log.with_status(start.status));
            let mut body = if dropped_body {
                exchange.release_response();
                let mut body = ResponseBody::new(Source::Head, log);
                body.closes_with_head(exchange);
                body
            } else {
                ResponseBody::new(Source::App(exchange), log)
            };
            if let Some(declared) = declared {
                body.framed_by_header(declared, short.is_some());
            }
            if let Some(deadline) = deadline {
                body = body.until(deadline, Arc::clone(&state));
            }
            let mut response = Response::new(body);
            *response.status_mut() = start.status;
            if let Some(reason) = start.reason {
                response.extensions_mut().insert(reason);
            }
            let headers = response.headers_mut();
            *headers = start.headers;
            // RFC 9110 §8.6 forbids a Content-Length in a 1xx or 204 response,
            // and HTTP/2 clients refuse one (curl: PROTOCOL_ERROR). HEAD and
            // 304 keep theirs: it is the length a GET would get.
            if start.status == StatusCode::NO_CONTENT || start.status.is_informational() {
                headers.remove(header::CONTENT_LENGTH);
            }
            if reset_content {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            }
            state.add_server_headers(headers);
            if let Some(http10) = http10 {
                http10.answer(&mut response, body_len_known || dropped_body);
            }
            if close_after {
                let close = HeaderValue::from_static("close");
                response.headers_mut().insert(header::CONNECTION, close);
            }
            response
        };
        // While the worker drains, the connection closes after this response:
        // say so (RFC 9112 §9.6), the server's own answers too (a static
        // file, a 404). Left to the connection's own drain, a fast response
        // could go out keep-alive before it noticed, and the connection then
        // close under the client's next request (a 502 behind nginx). Not a
        // 101, whose connection goes on as a WebSocket.
        if !over_http2
            && response.status() != StatusCode::SWITCHING_PROTOCOLS
            && state.draining.borrow().is_some()
        {
            let close = HeaderValue::from_static("close");
            response.headers_mut().insert(header::CONNECTION, close);
        }
        if state
            .access_log
            .is_some_and(AccessLog::shows_response_headers)
        {
            let (head, mut body) = response.into_parts();
            body.keep_response_headers(&head.headers);
            response = Response::from_parts(head, body);
        }
        if let Some(mut meter) = meter {
            if !client_left {
                meter.answered(response.status());
            }
            response = response.map(|body| body.metered(meter));
        }
        Ok(response.map(|body| body.tracking(active).in_pieces(over_http2)))
    }
}

/// A 503 for a request on an HTTP/2 connection that has as many app tasks
/// running as it may have streams: a client that resets its streams once
/// their heads arrive frees its stream slots while the app goes on working
/// for them (a paced rapid reset).
fn too_many_app_tasks(
    state: &ServerState,
    info: &ConnectionInfo,
    active: &ActiveRequest,
    record: impl Fn(StatusCode) -> Option<AccessRecord>,
) -> Response<ResponseBody> {
    tracing::debug!(
        client = %info.client_for_log(),
        "503: {} app tasks of this HTTP/2 connection are still running \
         (streams reset while the app worked on them)",
        active.app_tasks()
    );
    let status = StatusCode::SERVICE_UNAVAILABLE;
    state.error_response(status, record(status), false)
}

/// Whether an answer of the server's own to `request` leaves a body unread
/// on an HTTP/1 connection: hyper then closes the connection after it
/// unless all of the body was already in its buffer, so the answer says so
/// (RFC 9112 §9.6), or a client would send its next request on it.
fn leaves_body_unread(request: &Request<Incoming>) -> bool {
    request.version() < Version::HTTP_2 && !request.body().is_end_stream()
}

/// An HTTP/1.0 request: whether it asked to keep the connection alive.
#[derive(Clone, Copy)]
struct Http10 {
    keep_alive: bool,
}

impl Http10 {
    fn of(version: Version, headers: &http::HeaderMap) -> Option<Http10> {
        (version == Version::HTTP_10).then(|| Http10 {
            keep_alive: headers
                .get_all(header::CONNECTION)
                .iter()
                .any(|value| value.as_bytes().eq_ignore_ascii_case(b"keep-alive")),
        })
    }

    /// Answers in the client's version: hyper then closes the connection
    /// after the response unless it says keep-alive, which it may only do
    /// when the body has a length (`length_known`, or a Content-Length), and
    /// not when the app said `Connection: close` (the one Connection value
    /// an app's response keeps, see `ResponseStart::check_framing`).
    fn answer(self, response: &mut Response<ResponseBody>, length_known: bool) {
        let headers = response.headers_mut();
        let has_length = length_known || headers.contains_key(header::CONTENT_LENGTH);
        if self.keep_alive && has_length && !headers.contains_key(header::CONNECTION) {
            headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        }
        *response.version_mut() = Version::HTTP_10;
    }
}

/// A request outlived `--timeout-request`: end it (504 when `started` is
/// false, else the connection is cut) and cancel the ASGI task.
///
/// A WSGI thread cannot be stopped: one that has run the request for the
/// whole limit is logged with every thread's stack and, under a supervisor,
/// its worker replaced gracefully (see [`wsgi_thread_stuck`]). The limit
/// counts from the request's arrival for its client, who waited all of it,
/// but from when a thread took it for that thread: time the request spent
/// queued behind busy threads says nothing of the thread that runs it. So a
/// request still queued is answered and never run, and a thread that took
/// one late is judged at its own deadline (see [`thread_wait_timed_out`]).
pub(super) fn request_timed_out(state: &Arc<ServerState>, exchange: &Arc<Exchange>, started: bool) {
    let stage = exchange.time_out();
    let limit = state.timeout_request.unwrap_or_default();
    let Some(pool) = &state.wsgi else {
        let answered = if started {
            "its response is cut"
        } else {
            "sent 504"
        };
        tracing::error!(
            "\"{}\" ran longer than --timeout-request {}s; {answered} and the app's task cancelled",
            exchange.request_line(),
            limit.as_secs_f64()
        );
        return;
    };
    match stage {
        ThreadStage::Queued => {
            thread_wait_timed_out(state, exchange, None, false, pool.busy_threads());
        }
        ThreadStage::Taken(Some(taken)) if taken + limit > Instant::now() => {
            // Before the thread's own deadline, by as long as the request
            // waited for it.
            let thread_deadline = taken + limit;
            let waited = thread_deadline - Instant::now();
            if waited < QUEUED_NOTABLY && exchange.thread_waits_for_client() {
                // Taken at once (the hand-over, not a queue) and held by its
                // client now: the cut frees the thread before its own
                // deadline, which would then blame a wait of 0.0s for a
                // thread rather than the client that does not read.
                thread_held_or_stuck(state, exchange, started, waited);
                return;
            }
            // The threads busy now are what it waited for.
            let busy = pool.busy_threads();
            let state = Arc::clone(state);
            let exchange = Arc::clone(exchange);
            tokio::spawn(async move {
                tokio::time::sleep_until(thread_deadline.into()).await;
                if exchange.app_finished() {
                    thread_wait_timed_out(&state, &exchange, Some(waited), started, busy);
                } else {
                    thread_held_or_stuck(&state, &exchange, started, waited);
                }
            });
        }
        _ => thread_held_or_stuck(state, exchange, started, Duration::ZERO),
    }
}

/// How long a WSGI thread that waited for its client is given, once its
/// response is cut, to come out of the app (its write raises, the iterable
/// is closed) before it is taken for stuck.
const HELD_BY_CLIENT_RECHECK: Duration = Duration::from_secs(1);

/// A WSGI request past `--timeout-request` whose thread is still busy: in
/// the app, it is stuck ([`wsgi_thread_stuck`]); waiting in the server for
/// room in the response, which a client that reads nothing never makes, it
/// is the client's time, not the app's, and the cut frees it. That is
/// checked a moment later rather than taken on trust: an iterable's
/// `close()` may itself block.
fn thread_held_or_stuck(
    state: &Arc<ServerState>,
    exchange: &Arc<Exchange>,
    started: bool,
    waited: Duration,
) {
    if !exchange.thread_waits_for_client() {
        wsgi_thread_stuck(state, exchange, started, waited);
        return;
    }
    let state = Arc::clone(state);
    let exchange = Arc::clone(exchange);
    tokio::spawn(async move {
        tokio::time::sleep(HELD_BY_CLIENT_RECHECK).await;
        if !exchange.app_finished() {
            wsgi_thread_stuck(&state, &exchange, started, waited);
            return;
        }
        // Not the app's time: no stacks, no replacement; a slow client
        // must not recycle a worker.
        tracing::info!(
            "\"{}\" ran longer than --timeout-request {}s while its client took too little of \
             the response for the app's thread to go on; the response is cut and the thread \
             freed",
            exchange.request_line(),
            state.timeout_request.unwrap_or_default().as_secs_f64()
        );
    });
}

/// Below this, the time a request waited for its thread is left out of the
/// stuck thread's line: the hand-over, not a queue.
const QUEUED_NOTABLY: Duration = Duration::from_millis(10);

/// A WSGI thread has run its request for the whole `--timeout-request`
/// (whose client was answered at its own deadline, `waited` before): every
/// thread's stack is logged, and under a supervisor the worker replaced
/// gracefully.
fn wsgi_thread_stuck(
    state: &ServerState,
    exchange: &Arc<Exchange>,
    started: bool,
    waited: Duration,
) {
    let limit = state.timeout_request.unwrap_or_default().as_secs_f64();
    let request = exchange.request_line();
    let next = if state.slot.is_some() {
        "this worker is replaced gracefully"
    } else {
        "the thread stays busy until the app returns (run with --workers to have such a worker replaced)"
    };
    if waited < QUEUED_NOTABLY {
        let answered = if started {
            "its response is cut"
        } else {
            "sent 504"
        };
        tracing::error!(
            "\"{request}\" ran longer than --timeout-request {limit}s; {answered}. A WSGI thread cannot \
             be stopped: the Python stack of each thread follows, and {next}"
        );
    } else {
        let answered = if started {
            "its response was cut"
        } else {
            "it was sent 504"
        };
        tracing::error!(
            "\"{request}\" ran longer than --timeout-request {limit}s on its WSGI thread, which took it \
             after it waited {:.1}s for one ({answered} then, at the limit counted from its arrival). A \
             WSGI thread cannot be stopped: the Python stack of each thread follows, and {next}",
            waited.as_secs_f64()
        );
    }
    // faulthandler is registered for SIGUSR2 whenever --timeout-request is
    // set. On the reactor: the GIL is waited for briefly (a running Python
    // thread gives it up within the switch interval, 5 ms).
    crate::stacks::log_this_process(state.stacks.as_deref(), Duration::from_millis(200));
    if let Some(pool) = &state.wsgi {
        pool.mark_stuck(exchange);
    }
    if let Some(slot) = &state.slot {
        slot.request_retirement();
    }
}

/// A WSGI request reached `--timeout-request` for time it spent waiting for
/// a thread: still queued (`waited` is `None`: it is never run), or taken
/// `waited` before the limit by a thread that returned within the limit of
/// taking it. No thread is stuck, so no stacks and no replacement: a warning
/// for the first of a burst, then a count every
/// [`refusals::SUMMARY_EVERY`] while they go on, as for the 503s of
/// `--limit-concurrency`.
fn thread_wait_timed_out(
    state: &ServerState,
    exchange: &Exchange,
    waited: Option<Duration>,
    started: bool,
    (busy, threads): (usize, usize),
) {
    if !state.thread_waits.refused() {
        return;
    }
    let limit = state.timeout_request.unwrap_or_default().as_secs_f64();
    let request = exchange.request_line();
    let every = refusals::SUMMARY_EVERY.as_secs();
    // A response already under way is cut where it stands, not a 504.
    let answered = if started {
        format!("\"{request}\" had its response cut")
    } else {
        format!("504 for \"{request}\"")
    };
    match waited {
        None => tracing::warn!(
            "{answered}: it waited --timeout-request {limit}s for a WSGI thread ({busy} of \
             --threads {threads} busy) and is not run; the next such 504s are counted, and logged \
             every {every}s while they go on"
        ),
        Some(waited) => tracing::warn!(
            "{answered}: it waited {:.1}s for a WSGI thread ({busy} of --threads {threads} \
             busy), and so ran past --timeout-request {limit}s counted from its arrival, though its \
             thread returned within {limit}s of taking it (no thread is stuck); the next such \
             requests are counted, and logged every {every}s while they go on",
            waited.as_secs_f64()
        ),
    }
    let waits = Arc::clone(&state.thread_waits);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(refusals::SUMMARY_EVERY).await;
            let Some(count) = waits.period_ended() else {
                break;
            };
            tracing::warn!(
                "504: {count} more requests reached --timeout-request {limit}s waiting for a WSGI thread \
                 in the last {every}s (not run, or run by a thread within the limit: none is stuck)"
            );
        }
    });
}

/// Marks a WebSocket session over if hyper drops the handshake (the client left).
struct FinishOnDrop(Option<Arc<WsSession>>);

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        if let Some(session) = self.0.take() {
            session.finish(ws::code::ABNORMAL, "");
        }
    }
}

/// Hands a WebSocket handshake to the app and answers it as the app says:
/// 101 and the connection loop, 403, or the app's own HTTP response.
async fn open_websocket(
    request: Request<Incoming>,
    info: ConnectionInfo,
    state: Arc<ServerState>,
    settings: WsSettings,
    log: Option<AccessRecord>,
    busy: Option<(ActiveRequest, AppTask)>,
) -> Response<ResponseBody> {
    // RFC 8441: over HTTP/2 there is no key to answer, and success is a 200.
    let http2 = request.version() == Version::HTTP_2;
    let accept = if http2 {
        ws::check_handshake(request.headers()).map(|()| None)
    } else if request.version() != Version::HTTP_11 {
        // RFC 6455 §4.1: the handshake is HTTP/1.1; hyper has no upgrade
        // for an HTTP/1.0 request, so the app must not be started for one.
        Err(BadHandshake::Invalid("not HTTP/1.1"))
    } else {
        ws::accept_key(request.headers()).map(Some)
    };
    let accept = match accept {
        Ok(accept) => accept,
        Err(BadHandshake::UnsupportedVersion) => {
            tracing::debug!(client = %info.client_for_log(), "426 Upgrade Required: websocket version is not 13");
            let status = StatusCode::UPGRADE_REQUIRED;
            let mut response =
                state.error_response(status, log.map(|l| l.with_status(status)), true);
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static(ws::VERSION),
            );
            return response;
        }
        Err(BadHandshake::Invalid(reason)) => {
            tracing::debug!(client = %info.client_for_log(), "400 Bad Request: websocket handshake: {reason}");
            let status = StatusCode::BAD_REQUEST;
            let why = format!("websocket handshake: {reason}");
            return state.error_response_saying(
                status,
                &why,
                log.map(|l| l.with_status(status)),
                true,
            );
        }
    };
    let deflate = if settings.per_message_deflate {
        ws::deflate::negotiate(request.headers())
    } else {
        None
    };
    let (mut head, _body) = request.into_parts();
    let offered = ws::offered_subprotocols(&head.headers);
    let on_upgrade = head.extensions.remove::<hyper::upgrade::OnUpgrade>();
    // For log lines only, escaped as the access log's: a `"` must not end a quoted field.
    let target = head.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let path = super::access_format::Escaped(target.as_bytes()).to_string();
    let session = Arc::new(WsSession::new(
        Arc::clone(&state.bridge),
        settings.max_queue,
        settings.closed_send_grace,
        path,
        info,
    ));
    // Held before the app can start, so that it is let go when the app ends.
    let busy = busy.map(|(busy, app_task)| {
        session.hold(app_task);
        busy
    });
    state.bridge.push(Event::WebSocket(Box::new(WsStart {
        session: Arc::clone(&session),
        head,
    })));
    let mut finisher = FinishOnDrop(Some(Arc::clone(&session)));
    let handshake = poll_fn(|cx| session.poll_handshake(cx)).await;
    finisher.0 = None;
    match handshake {
        Some(Handshake::Accept {
            subprotocol,
            headers,
        }) => {
            let Some(on_upgrade) = on_upgrade else {
                session.finish(ws::code::ABNORMAL, "");
                let status = StatusCode::INTERNAL_SERVER_ERROR;
                return state.error_response(status, log.map(|l| l.with_status(status)), true);
            };
            let status = match accept {
                Some(_) => StatusCode::SWITCHING_PROTOCOLS,
                None => StatusCode::OK,
            };
            let log = log.map(|l| l.with_status(status));
            let closing_line = log.as_ref().map(|log| log.websocket());
            let mut response = Response::new(ResponseBody::new(Source::Fixed(None), log));
            *response.status_mut() = status;
            let response_headers = response.headers_mut();
            *response_headers = headers;
            if let Some(accept) = accept {
                response_headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                response_headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
                response_headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
            }
            if let Some(chosen) = subprotocol
                .as_deref()
                .filter(|p| !offered.iter().any(|o| o == p))
            {
                not_offered(&session.path, chosen, &offered);
            }
            if let Some(protocol) = subprotocol.and_then(|p| HeaderValue::from_str(&p).ok()) {
                response_headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
            }
            // The server answers extensions itself: an app's own header would
            // promise what the engine does not do.
            response_headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
            if let Some(agreement) = &deflate {
                if let Ok(value) = HeaderValue::from_str(&agreement.header_value()) {
                    response_headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, value);
                }
            }
            state.add_server_headers(response_headers);
            let registry = Arc::clone(&state.websockets);
            let metrics = state.metrics.clone();
            let seat = state.seat.clone();
            // Created before the first await, so that the app hears of the
            // end and the closing line is written however the task ends.
            let mut ending = ws::Ending::new(session, move |closed| {
                // hyper would hold what the server last wrote, and the
                // stream's place on its connection, until the client opens
                // its window or the connection ends.
                if let Some(busy) = busy.as_ref().filter(|_| closed.stalled) {
                    busy.reset_stream();
                }
                if let Some(line) = closing_line {
                    line.closed(closed);
                }
            });
            tokio::spawn(async move {
                match on_upgrade.await {
                    Ok(upgraded) => {
                        let _open = metrics.as_ref().map(|slot| WebSocketOpen::new(slot, http2));
                        // Over HTTP/1.1 hyper has let go of the connection:
                        // the WebSocket counts for the spreading of
                        // connections instead. An HTTP/2 connection stays
                        // open under its WebSockets and counts already.
                        let _held = seat.as_ref().filter(|_| !http2).map(WorkerSeat::hold);
                        ws::serve(upgraded, ending, settings, deflate, registry).await;
                    }
                    Err(err) => {
                        tracing::debug!("websocket upgrade failed: {err}");
                        ending.client_left();
                    }
                }
            });
            response
        }
        Some(Handshake::Reject(status)) => {
            state.error_response(status, log.map(|l| l.with_status(status)), true)
        }
        Some(Handshake::Respond(mut start, mut body)) => {
            // The whole body is known: it goes out framed by its own length,
            // never by a Content-Length of the app's that disagrees (hyper
            // would write both, and the client read the rest of the body as
            // the next response, or the next response as the rest of this
            // one). A body longer than the header is cut to it, as an HTTP
            // response's is; for a shorter one the header is put right.
            let actual = body.len() as u64;
            if let Some(declared) = start.content_length.filter(|&declared| declared != actual) {
                if declared < actual {
                    // Shorter than the body, so within usize.
                    body.truncate(declared as usize);
                } else {
                    start.headers.remove(header::CONTENT_LENGTH);
                }
                tracing::warn!(
                    "the app's websocket.http.response has Content-Length {declared} but a body of {actual} bytes; sent {} bytes",
                    body.len()
                );
            }
            let mut response = Response::new(ResponseBody::new(
                Source::Fixed(Some(body)),
                log.map(|l| l.with_status(start.status)),
            ));
            *response.status_mut() = start.status;
            *response.headers_mut() = start.headers;
            state.add_server_headers(response.headers_mut());
            // The spec's denial response ends the connection ("send a HTTP
            // response and then close the connection"), as uvicorn's does. An
            // HTTP/2 stream ends by itself, and the connection carries others.
            if !http2 {
                let close = HeaderValue::from_static("close");
                response.headers_mut().insert(header::CONNECTION, close);
            }
            response
        }
        None => {
            let status = StatusCode::SERVICE_UNAVAILABLE;
            state.error_response(status, log.map(|l| l.with_status(status)), true)
        }
    }
}

/// How a request body is read: `--limit-request-body`,
/// `--timeout-request-body`, and whether it comes over HTTP/2.
struct Pump {
    limit: Option<u64>,
    timeout: Option<Duration>,
    http2: bool,
    /// Over HTTP/2, whether other streams' unread bodies can shut the
    /// connection's window on this one, so that a body stalls through no
    /// fault of its client's (`--http2-initial-connection-window-size` set
    /// below every stream's window together).
    starvable: bool,
    /// An HTTP/2 request with `Expect: 100-continue`, which hyper cannot
    /// answer with a `100` (hyperium/hyper#2743): a client that waits for
    /// one sends no body.
    awaits_continue: bool,
}

/// Reads the request body into the exchange as the app consumes it, never
/// more than a high-water mark ahead.
/// The body's next frame; `Err` when the app has waited for it for `limit`.
async fn body_within(
    body: &mut Incoming,
    watch: &BodyWatch,
    limit: Duration,
) -> Result<Option<Result<http_body::Frame<Bytes>, hyper::Error>>, tokio::time::error::Elapsed> {
    let exchange = &*watch.state.exchange;
    let mut frame = std::pin::pin!(watch.frame(body));
    loop {
        tokio::select! {
            biased;
            frame = &mut frame => return Ok(frame),
            () = poll_fn(|cx| exchange.poll_body_awaited(cx, true)) => {}
        }
        let timed = tokio::time::timeout(limit, async {
            tokio::select! {
                biased;
                frame = &mut frame => Some(frame),
                () = poll_fn(|cx| exchange.poll_body_awaited(cx, false)) => None,
            }
        });
        match timed.await {
            Ok(Some(frame)) => return Ok(frame),
            // The app stopped waiting: the clock stops too.
            Ok(None) => {}
            Err(elapsed) if exchange.body_still_awaited() => return Err(elapsed),
            // Only receive() calls it had cancelled were left.
            Err(_) => {}
        }
    }
}

async fn pump_body(mut body: Incoming, exchange: Arc<Exchange>, pump: Pump) {
    let Pump {
        limit,
        timeout,
        http2,
        starvable,
        awaits_continue,
    } = pump;
    let mut received: u64 = 0;
    let mut drained: u64 = 0;
    let watch = BodyWatch::new(&exchange);
    loop {
        let room = poll_fn(|cx| exchange.poll_body_room(cx)).await;
        if matches!(room, BodyRoom::Stop) || drained > MAX_BODY_DRAIN {
            return;
        }
        // The clock runs only while the app waits for body the client has
        // not sent: not while the app takes its time reading it, nor while
        // it does something else (streams its response) and the body is
        // read ahead for it.
        let frame = match timeout {
            None => watch.frame(&mut body).await,
            Some(limit) => match body_within(&mut body, &watch, limit).await {
                Ok(frame) => frame,
                Err(_elapsed) if exchange.progress().complete => {
                    // The response is complete (the app answered without
                    // reading the whole body): the rest is read only so the
                    // connection could carry the next request. No 408 can go
                    // out, and no app waits for it.
                    tracing::info!(
                        client = %exchange.connection.client_for_log(),
                        "the rest of the request body of {} did not come for \
                         --timeout-request-body {}s after its complete response; closing the \
                         connection",
                        exchange.request_line(),
                        limit.as_secs_f64()
                    );
                    exchange.refuse_body(StatusCode::REQUEST_TIMEOUT);
                    return;
                }
                Err(_elapsed) => {
                    // Where the server may be the one holding the body back,
                    // say so: the client is not always at fault.
                    let why = if awaits_continue {
                        " (the client asked for a 100 Continue first, which rsasgi cannot send \
                         over HTTP/2)"
                    } else if starvable {
                        // Only an operator's small connection window lets that
                        // happen (see `Pump::starvable`).
                        " (or the server's own window held it back: other streams' bodies, \
                         unread, filled the connection's window, which \
                         --http2-initial-connection-window-size sets below \
                         --http2-max-concurrent-streams × --http2-initial-stream-window-size)"
                    } else {
                        ""
                    };
                    tracing::info!(
                        client = %exchange.connection.client_for_log(),
                        "408: no bytes of the request body of {} came for --timeout-request-body \
                         {}s{why}; the app sees a disconnect if its response has started",
                        exchange.request_line(),
                        limit.as_secs_f64()
                    );
                    exchange.refuse_body(StatusCode::REQUEST_TIMEOUT);
                    return;
                }
            },
        };
        match frame {
            // hyper ends an HTTP/2 body the same way when the stream is reset
            // with NO_ERROR (by the client, or by hyper's own shutdown) as
            // when END_STREAM arrives; only the latter is the whole body.
            None if http2 && !body.is_end_stream() => {
                tracing::debug!(
                    "the stream of {} ended before its body did",
                    exchange.request_line()
                );
                exchange.close();
                return;
            }
            None => {
                exchange.push_body(Bytes::new(), true);
                return;
            }
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue; // trailers: not part of the ASGI http scope
                };
                if matches!(room, BodyRoom::Drain) {
                    drained += data.len() as u64;
                    continue;
                }
                received += data.len() as u64;
                if let Some(limit) = limit.filter(|&limit| received > limit) {
                    tracing::info!(
                        client = %exchange.connection.client_for_log(),
                        "413: request body of {} is over --limit-request-body {limit}",
                        exchange.request_line()
                    );
                    exchange.refuse_body(StatusCode::PAYLOAD_TOO_LARGE);
                    return;
                }
                let last = body.is_end_stream();
                exchange.push_body(data, last);
                if last {
                    return;
                }
            }
            Some(Err(err)) => {
                if is_disconnect(&err) {
                    tracing::debug!(
                        "client disconnected during the request body of {}",
                        exchange.request_line()
                    );
                    exchange.close();
                } else {
                    tracing::info!(
                        client = %exchange.connection.client_for_log(),
                        "400: malformed body in {}: {}",
                        exchange.request_line(),
                        WithCauses(&err)
                    );
                    exchange.refuse_body(StatusCode::BAD_REQUEST);
                }
                return;
            }
        }
    }
}

/// Tells the exchange whether its body can become whole without more of
/// the client's input, for a half-close (see `Activity::half_closed`).
///
/// hyper reads the socket again once it has put the last frame of a body
/// in its channel, before the body's task takes that frame: an end of input
/// found then is a half-close after the whole body. One found as the task
/// waits on an empty channel cut the body short. The body's frames are
/// polled with a waker of this watch's own, which hyper wakes as it puts a
/// frame in the channel (or ends it), so the exchange knows which. That
/// holds because hyper and this task run on the one reactor thread: no
/// wake-up can come between the poll that finds the channel empty and the
/// mark it sets.
struct BodyWatch {
    state: Arc<WatchState>,
    waker: Waker,
}

struct WatchState {
    exchange: Arc<Exchange>,
    /// The body's task, to be woken in turn.
    task: Mutex<Option<Waker>>,
}

impl Wake for WatchState {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.exchange.body_decoded();
        if let Some(task) = &*self.task.lock() {
            task.wake_by_ref();
        }
    }
}

impl BodyWatch {
    fn new(exchange: &Arc<Exchange>) -> BodyWatch {
        let state = Arc::new(WatchState {
            exchange: Arc::clone(exchange),
            task: Mutex::new(None),
        });
        BodyWatch {
            waker: Waker::from(Arc::clone(&state)),
            state,
        }
    }

    /// The body's next frame from hyper.
    fn frame<'a>(
        &'a self,
        body: &'a mut Incoming,
    ) -> impl Future<Output = Option<Result<http_body::Frame<Bytes>, hyper::Error>>> + 'a {
        poll_fn(move |cx| {
            {
                let mut task = self.state.task.lock();
                if !task.as_ref().is_some_and(|task| task.will_wake(cx.waker())) {
                    *task = Some(cx.waker().clone());
                }
            }
            let polled = Pin::new(&mut *body).poll_frame(&mut Context::from_waker(&self.waker));
            match polled {
                Poll::Pending => self.state.exchange.body_needs_input(),
                Poll::Ready(_) => self.state.exchange.body_frame_ready(),
            }
            polled
        })
    }
}

impl Drop for BodyWatch {
    fn drop(&mut self) {
        if !self.state.exchange.request_whole() {
            self.state.exchange.body_abandoned();
        }
    }
}

/// Checks an HTTP/1 request's target against the forms RFC 9112 §3.2
/// allows it; returns the form of one that is refused (a 400).
///
/// Origin-form (`/path?query`), the common case, is settled by its missing
/// authority. An absolute-form target (`http://host/path`, as sent to a
/// proxy) names the host the request is for: RFC 9112 §3.2.2 says the
/// server must use it and ignore the Host header, so the app, which reads
/// `host` (ASGI) or `HTTP_HOST` (WSGI), sees the target's. hyper parses an
/// authority-form (`host:port`, CONNECT's alone) and a lone `*` (`OPTIONS
/// *`'s alone) into URIs an app would be handed as `/` or `*`.
fn check_http1_target(request: &mut Request<Incoming>) -> Option<&'static str> {
    let uri = request.uri();
    let Some(authority) = uri.authority() else {
        let asterisk = uri.path() == "*" && request.method() != Method::OPTIONS;
        return asterisk.then_some("asterisk-form, which only OPTIONS may use");
    };
    if request.method() == Method::CONNECT {
        // Answered 501 whatever its target.
        return None;
    }
    if uri.scheme().is_none() {
        return Some("authority-form, which only CONNECT may use");
    }
    // host[:port], without a userinfo (RFC 9110 §4.2.4 deprecates it).
    let host = match authority.port() {
        Some(port) => HeaderValue::from_str(&format!("{}:{port}", authority.host())),
        None => HeaderValue::from_str(authority.host()),
    };
    if let Ok(host) = host {
        request.headers_mut().insert(header::HOST, host);
    }
    None
}

/// An HTTP/2 request's `:path` in a form RFC 9113 §8.3.1 does not allow:
/// `*` is for OPTIONS only, as over HTTP/1, and anything else must be an
/// absolute path (`?x=1` reached the app as `/` with a query). h2 refuses
/// an empty `:path` itself; a CONNECT has none.
fn check_http2_target(request: &Request<Incoming>) -> Option<&'static str> {
    let path = request.uri().path_and_query()?.as_str();
    if path == "*" {
        return (request.method() != Method::OPTIONS)
            .then_some("asterisk-form, which only OPTIONS may use");
    }
    (!path.starts_with('/')).then_some("a form no :path may have (it must start with \"/\")")
}

/// HTTP/2 carries the host in the `:authority` pseudo-header, which hyper
/// keeps in the URI; ASGI apps (Django, Starlette) and WSGI's `HTTP_HOST`
/// expect a `host` header, which the ASGI spec says servers should add.
///
/// Returns false when the request also has `host` fields that do not name
/// the `:authority`'s host and port, or more than one: RFC 9113 §8.3.1 says
/// treat that as malformed, and an app (or its allow-list) reading `host`
/// would otherwise act on another name than the one the client asked for.
fn add_host_from_authority(request: &mut Request<Incoming>) -> bool {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    if let Some(host) = hosts.next() {
        if hosts.next().is_some() {
            return false;
        }
        let default_port: &[u8] = match request.uri().scheme_str() {
            Some("https") => b"443",
            _ => b"80",
        };
        return request.uri().authority().is_none_or(|authority| {
            same_host(host.as_bytes(), authority.as_str().as_bytes(), default_port)
        });
    }
    let host = request
        .uri()
        .authority()
        .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok());
    if let Some(host) = host {
        request.headers_mut().insert(header::HOST, host);
    }
    true
}

/// Why an HTTP/2 request is malformed in ways the h2 crate lets through, if
/// it is; on the way, the `host` made from `:authority` (see
/// [`add_host_from_authority`]) and repeated equal `content-length` fields
/// made one, as HTTP/1 has them (a WSGI app read `CONTENT_LENGTH` "5, 5").
fn check_http2_fields(request: &mut Request<Incoming>) -> Option<&'static str> {
    // RFC 9113 §8.3.1: an http or https request names its authority.
    if request.uri().authority().is_none() && !request.headers().contains_key(header::HOST) {
        return Some("an HTTP/2 request with neither :authority nor host");
    }
    if !add_host_from_authority(request) {
        return Some("the host header does not match :authority");
    }
    // RFC 9113 §8.2.1: a field value must not begin or end with a space or a tab.
    let padded = |value: &HeaderValue| {
        let bytes = value.as_bytes();
        matches!(bytes.first(), Some(b' ' | b'\t')) || matches!(bytes.last(), Some(b' ' | b'\t'))
    };
    if request.headers().values().any(padded) {
        return Some("a header value begins or ends with whitespace (RFC 9113 §8.2.1)");
    }
    // RFC 9110 §8.6: several content-length fields of one value are that
    // value; differing ones make the message invalid.
    let mut lengths = request.headers().get_all(header::CONTENT_LENGTH).iter();
    if let (Some(first), Some(_)) = (lengths.next(), lengths.next()) {
        let first = first.clone();
        if request
            .headers()
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .any(|other| *other != first)
        {
            return Some("content-length fields that disagree");
        }
        request.headers_mut().insert(header::CONTENT_LENGTH, first);
    }
    None
}

/// Whether two `host[:port]` values name the same host (in any case) and
/// port, a missing port being the scheme's `default_port` (RFC 3986 §6.2.3:
/// `example.com` and `example.com:443` are one authority over https).
fn same_host(a: &[u8], b: &[u8], default_port: &[u8]) -> bool {
    fn split(value: &[u8]) -> (&[u8], Option<&[u8]>) {
        // After an IP literal's `]`, or at the last colon of a name.
        let start = value.iter().rposition(|&b| b == b']').unwrap_or(0);
        match value[start..].iter().rposition(|&b| b == b':') {
            Some(colon) => (&value[..start + colon], Some(&value[start + colon + 1..])),
            None => (value, None),
        }
    }
    let ((host_a, port_a), (host_b, port_b)) = (split(a), split(b));
    let or_default = |port: Option<&[u8]>| match port {
        Some(port) if !port.is_empty() => port == default_port,
        _ => true,
    };
    let same_port = match (
        port_a.filter(|p| !p.is_empty()),
        port_b.filter(|p| !p.is_empty()),
    ) {
        (Some(port_a), Some(port_b)) => port_a == port_b,
        (one, other) => or_default(one) && or_default(other),
    };
    host_a.eq_ignore_ascii_case(host_b) && same_port
}

/// HTTP/2 clients may split the `cookie` header into one field per cookie
/// (RFC 9113 §8.2.3, for better header compression); before an HTTP/1.1
/// application sees them they are joined with "; ", as that section says.
/// Over HTTP/1.1 several Cookie lines come from proxies that translated such
/// a request without joining them. Django, Flask and Starlette read one
/// cookie header (and WSGI would otherwise join them with ", ", which breaks
/// cookie parsing).
fn join_cookies(headers: &mut http::HeaderMap) {
    // No name with two values (almost every request): settled without a lookup.
    if headers.len() == headers.keys_len() {
        return;
    }
    let mut cookies = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (cookies.next(), cookies.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for cookie in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(cookie.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// An error with its causes, as "error: cause: its cause": hyper's own text
/// says only where it failed ("error reading a body from connection"), its
/// source what was wrong ("Invalid chunk size line").
struct WithCauses<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for WithCauses<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// What is wrong with the transfer codings of a chunked HTTP/1 request.
#[derive(Debug, PartialEq, Eq)]
enum CodingProblem {
    /// A coding other than `chunked`, as the log shows it. hyper reads any
    /// body whose last coding is `chunked` (`gzip, chunked`) and hands it on
    /// with the others still applied, which the app (the ASGI and WSGI specs
    /// know of no transfer coding) would take for the body: RFC 9112 §6.1
    /// has a server answer 501 to a coding it does not decode. `identity` is
    /// none (RFC 9112 dropped it).
    Unknown(String),
    /// `chunked` more than once (`chunked, chunked`), which a sender must
    /// not apply (RFC 9112 §6.1): hyper would decode the outer one only.
    ChunkedTwice,
}

impl CodingProblem {
    fn status(&self) -> StatusCode {
        match self {
            CodingProblem::Unknown(_) => StatusCode::NOT_IMPLEMENTED,
            CodingProblem::ChunkedTwice => StatusCode::BAD_REQUEST,
        }
    }
}

impl std::fmt::Display for CodingProblem {
    /// What the log says of the body, after "the body of METHOD PATH".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodingProblem::Unknown(coding) => write!(
                f,
                "has the transfer coding \"{coding}\", which rsasgi does not decode (only chunked)"
            ),
            CodingProblem::ChunkedTwice => f.write_str(
                "is declared chunked more than once (Transfer-Encoding), which RFC 9112 §6.1 \
                 forbids",
            ),
        }
    }
}

fn transfer_coding_problem(headers: &http::HeaderMap) -> Option<CodingProblem> {
    let mut chunked = 0;
    for coding in headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
    {
        if coding.eq_ignore_ascii_case(b"chunked") {
            chunked += 1;
        } else if !coding.is_empty() {
            // RFC 9110 §5.6.1: empty list elements are no codings.
            let coding = super::access_format::Escaped(coding).to_string();
            return Some(CodingProblem::Unknown(coding));
        }
    }
    (chunked > 1).then_some(CodingProblem::ChunkedTwice)
}

/// Whether a body read failed because the client went away (closed or reset
/// its connection mid-body) rather than because the body was malformed.
fn is_disconnect(err: &hyper::Error) -> bool {
    if err.is_incomplete_message() || err.is_canceled() || err.is_closed() {
        return true;
    }
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        // An HTTP/2 stream the client reset, or a connection it ended.
        if let Some(h2) = cause.downcast_ref::<h2::Error>() {
            return h2.is_reset() || h2.is_go_away() || h2.is_io();
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            );
        }
        source = cause.source();
    }
    false
}

impl ServerState {
    /// The answer to a request `--static-map` took: a file, or a status of
    /// the server's own (304, 403, 404, 412, 416).
    fn static_response(
        &self,
        lookup: Lookup,
        request: &Request<Incoming>,
        log: Option<AccessRecord>,
        in_flight: InFlight,
    ) -> Response<ResponseBody> {
        let is_head = request.method() == Method::HEAD;
        let mut response = match lookup {
            Lookup::App => unreachable!("the app answers"),
            Lookup::Status(status, headers) if status == StatusCode::NOT_MODIFIED => {
                let log = log.map(|log| log.with_status(status));
                let mut response = Response::new(ResponseBody::new(Source::Fixed(None), log));
                *response.status_mut() = status;
                *response.headers_mut() = headers;
                self.add_server_headers(response.headers_mut());
                response
            }
            Lookup::Status(status, headers) => {
                let mut response =
                    self.error_response(status, log.map(|log| log.with_status(status)), false);
                response.headers_mut().extend(headers);
                response
            }
            Lookup::File(served) => {
                let source = if is_head {
                    Source::Head
                } else if served.len <= CHUNK as u64 {
                    // Small, and in the page cache: sent with the head. Else
                    // read on the blocking pool as a large file is: a read
                    // on the reactor that a slow disk or a hung filesystem
                    // held froze every connection of the worker.
                    match read_cached(&served.file, served.offset, served.len as usize) {
                        Some(body) => Source::Fixed(Some(body)),
                        None => {
                            Source::File(FileStream::new(served.file, served.offset, served.len))
                        }
                    }
                } else {
                    Source::File(FileStream::new(served.file, served.offset, served.len))
                };
                let log = log.map(|log| log.with_status(served.status));
                let mut response = Response::new(ResponseBody::new(source, log).holding(in_flight));
                *response.status_mut() = served.status;
                *response.headers_mut() = served.headers;
                self.add_server_headers(response.headers_mut());
                response
            }
        };
        if leaves_body_unread(request) {
            let close = HeaderValue::from_static("close");
            response.headers_mut().insert(header::CONNECTION, close);
        }
        if let Some(http10) = Http10::of(request.version(), request.headers()) {
            http10.answer(&mut response, true);
        }
        response
    }

    /// The server's own answer to `OPTIONS *`: 200 with no body.
    /// `close`: the request has a body this answer leaves unread.
    fn options_asterisk_response(
        &self,
        log: Option<AccessRecord>,
        close: bool,
    ) -> Response<ResponseBody> {
        let mut response = Response::new(ResponseBody::new(Source::Fixed(None), log));
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        if close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        self.add_server_headers(headers);
        response
    }

    /// A short plain-text response written by the server itself.
    pub(crate) fn error_response(
        &self,
        status: StatusCode,
        log: Option<AccessRecord>,
        close: bool,
    ) -> Response<ResponseBody> {
        let reason = status.canonical_reason().unwrap_or("Error");
        self.explained_error_response(status, Bytes::from(reason), log, close)
    }

    /// One whose body says what was wrong after the status's reason: for a
    /// client's developer, who has no access to the server's log.
    pub(crate) fn error_response_saying(
        &self,
        status: StatusCode,
        why: &str,
        log: Option<AccessRecord>,
        close: bool,
    ) -> Response<ResponseBody> {
        let reason = status.canonical_reason().unwrap_or("Error");
        let body = Bytes::from(format!("{reason}: {why}"));
        self.explained_error_response(status, body, log, close)
    }

    fn explained_error_response(
        &self,
        status: StatusCode,
        body: Bytes,
        log: Option<AccessRecord>,
        close: bool,
    ) -> Response<ResponseBody> {
        let length = body.len();
        let mut response = Response::new(ResponseBody::new(Source::Fixed(Some(body)), log));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        if close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        self.add_server_headers(headers);
        response
    }

    fn add_server_headers(&self, headers: &mut http::HeaderMap) {
        for (name, value) in self.extra_headers.iter() {
            if name == header::SERVER {
                // `--header "Server: ..."` names the server in place of our
                // own (RFC 9110 §10.2.4 has one Server field); the app's
                // own still wins, as over the default.
                headers.entry(header::SERVER).or_insert(value.clone());
            } else {
                headers.append(name.clone(), value.clone());
            }
        }
        if self.server_header {
            // One lookup: kept when the app (or --header) named its own.
            headers
                .entry(header::SERVER)
                .or_insert(HeaderValue::from_static("rsasgi"));
        }
    }
}

/// Whether `value` is RFC 9110 §7.2's `uri-host [ ":" port ]` (RFC 3986: a
/// reg-name or IPv4 address, or an IP literal in brackets; empty is allowed).
fn valid_host(value: &[u8]) -> bool {
    let (host, port) = match value.strip_prefix(b"[") {
        Some(literal) => {
            let Some(end) = literal.iter().position(|&b| b == b']') else {
                return false;
            };
            let inside = &literal[..end];
            let literal_char =
                |b: &u8| b.is_ascii_alphanumeric() || b":.-_~!$&'()*+,;=".contains(b);
            if inside.is_empty() || !inside.iter().all(literal_char) {
                return false;
            }
            (&[][..], &literal[end + 1..])
        }
        None => match value.iter().position(|&b| b == b':') {
            Some(colon) => (&value[..colon], &value[colon..]),
            None => (value, &[][..]),
        },
    };
    let name_char = |b: &u8| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(b);
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    host.iter().all(name_char) && port_ok
}

/// An app accepted a WebSocket with a subprotocol its client did not offer:
/// it goes out in the 101 as the app asked (as uvicorn sends it), but RFC
/// 6455 §4.2.2 has the server choose among the client's, and a client that
/// keeps to §4.1 then fails the connection. Logged once per worker, as a
/// warning; then at debug.
fn not_offered(path: &str, chosen: &str, offered: &[String]) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let offers = if offered.is_empty() {
        "none".to_string()
    } else {
        offered.join(", ")
    };
    let line = format!(
        "websocket {path}: the app accepted with subprotocol {chosen:?}, which the client did not \
         offer (it offered {offers}); a client that keeps to RFC 6455 fails such a connection"
    );
    if WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::debug!("{line}");
    } else {
        tracing::warn!("{line} (said once per worker; later ones at debug)");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn transfer_codings_other_than_one_chunked_are_found() {
        use super::CodingProblem::{ChunkedTwice, Unknown};
        let problem = |values: &[&str]| {
            let mut headers = http::HeaderMap::new();
            for value in values {
                headers.append(
                    http::header::TRANSFER_ENCODING,
                    http::HeaderValue::from_str(value).unwrap(),
                );
            }
            super::transfer_coding_problem(&headers)
        };
        assert_eq!(problem(&["chunked"]), None);
        assert_eq!(problem(&["Chunked"]), None);
        assert_eq!(problem(&[", chunked,"]), None);
        assert_eq!(problem(&["chunked, chunked"]), Some(ChunkedTwice));
        assert_eq!(problem(&["chunked", "CHUNKED"]), Some(ChunkedTwice));
        assert_eq!(problem(&["gzip, chunked"]), Some(Unknown("gzip".into())));
        assert_eq!(
            problem(&["chunked, chunked", "br"]),
            Some(Unknown("br".into()))
        );
    }

    #[test]
    fn hosts_are_the_same_in_any_case_and_with_the_default_port_left_out() {
        for (a, b) in [
            (&b"example.com"[..], &b"EXAMPLE.com"[..]),
            (b"example.com:8443", b"example.com:8443"),
            (b"example.com", b"example.com:443"),
            (b"example.com:", b"example.com"),
            (b"[::1]:443", b"[::1]"),
            (b"[::1]", b"[::1]"),
        ] {
            assert!(super::same_host(a, b, b"443"), "{a:?} {b:?}");
            assert!(super::same_host(b, a, b"443"), "{b:?} {a:?}");
        }
        for (a, b) in [
            (&b"example.com"[..], &b"evil.example"[..]),
            (b"example.com:8443", b"example.com:443"),
            (b"example.com", b"example.com:8443"),
            (b"[::1]:80", b"[::1]"),
            (b"[::1]:443", b"[::2]:443"),
            (b"", b"example.com"),
        ] {
            assert!(!super::same_host(a, b, b"443"), "{a:?} {b:?}");
            assert!(!super::same_host(b, a, b"443"), "{b:?} {a:?}");
        }
    }

    #[test]
    fn hosts_are_host_and_port() {
        for good in [
            &b"example.com"[..],
            b"example.com:8000",
            b"my_host.local",
            b"127.0.0.1:80",
            b"[::1]",
            b"[::1]:8000",
            b"example.com:",
            b"",
        ] {
            assert!(
                super::valid_host(good),
                "{:?}",
                String::from_utf8_lossy(good)
            );
        }
        for bad in [
            &b"a b"[..],
            b"evil.com/x?y",
            b"a@b",
            b"[::1",
            b"[::1]x",
            b"host:80:80",
            b"host:http",
            b"[]",
            b"h\xc3\xa9",
        ] {
            assert!(
                !super::valid_host(bad),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn split_cookies_are_joined() {
        let mut headers = http::HeaderMap::new();
        super::join_cookies(&mut headers);
        assert!(headers.is_empty());
        headers.append(http::header::COOKIE, "a=1".parse().unwrap());
        super::join_cookies(&mut headers);
        assert_eq!(headers[http::header::COOKIE], "a=1");
        headers.append(http::header::COOKIE, "b=2".parse().unwrap());
        headers.append(http::header::COOKIE, "c=3".parse().unwrap());
        super::join_cookies(&mut headers);
        let all: Vec<_> = headers.get_all(http::header::COOKIE).iter().collect();
        assert_eq!(all, ["a=1; b=2; c=3"]);
    }
}
