//! `--metrics-bind`: Prometheus metrics at `/metrics` and the probes
//! `/healthz` and `/readyz`, on a listener of their own.
//!
//! Workers count into [`Counters`] in the memory they share with the
//! supervisor; the supervisor (or, without `--workers`, the one process)
//! answers scrapes by reading them. What the listener shows comes from a
//! [`Scrape`], so the same server serves both cases.

pub(crate) mod counters;
pub(crate) mod exposition;
pub(crate) mod meter;
pub(crate) mod process;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;

use crate::config::Bind;
use crate::http::accept_failures::{AcceptFailures, Report as Failures};
pub(crate) use counters::Counters;
pub(crate) use exposition::{Report, Restart, WorkerReport};

/// How long a scraper gets to send its request head, the first one or the
/// next on a kept-alive connection (hyper's timer runs while it waits for
/// one): the listener is meant for probes and Prometheus, which send theirs
/// at once.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the accept loop pauses after accept() fails (out of descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Connections served at once; one more is closed as soon as it is
/// accepted. Prometheus and a probing orchestrator need a few. Without a cap,
/// clients that hold connections took every descriptor the process may open,
/// and a supervisor out of descriptors cannot start a worker.
const MAX_CONNECTIONS: usize = 64;

/// How long a connection may last in all. The header timeout bounds the wait
/// for a request, but nothing bounded a response its client does not read:
/// a client that sent requests and never read the answers held its
/// connection, and the kernel's buffers, for ever. Prometheus reconnects
/// when a kept-alive connection closes.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// After [`CONNECTION_LIFETIME`], how long the response under way, if any,
/// gets to be written before the connection is closed anyway.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// The kernel's buffers for each connection, each way. Requests are a few
/// hundred bytes, and a response larger than this is written in turns;
/// left to grow, the buffers of a client that pipelined requests and read
/// no answer held megabytes each until its connection ended.
const SOCKET_BUFFER: usize = 64 * 1024;

/// How many connections the listener serves at once, and for how long.
#[derive(Debug, Clone, Copy)]
struct Limits {
    connections: usize,
    lifetime: Duration,
    close_wait: Duration,
}

const LIMITS: Limits = Limits {
    connections: MAX_CONNECTIONS,
    lifetime: CONNECTION_LIFETIME,
    close_wait: CLOSE_WAIT,
};

/// Descriptors held in reserve for the probes. Without `--workers` one
/// process serves the clients and `/healthz`, and a flood of client
/// connections can take every descriptor its limit allows: the probes then
/// failed, and an orchestrator restarted a server that was serving. An
/// accept that fails for want of descriptors gives one of these back and
/// takes the probe's connection in its place; the connection's end takes
/// it back.
const RESERVED_DESCRIPTORS: usize = 4;

/// Open descriptors (of `/dev/null`) kept for [`RESERVED_DESCRIPTORS`].
#[derive(Default)]
struct Reserve {
    spare: parking_lot::Mutex<Vec<std::fs::File>>,
}

impl Reserve {
    fn filled() -> Reserve {
        let reserve = Reserve::default();
        reserve.refill();
        reserve
    }

    /// Takes back what it gave, as far as descriptors allow.
    fn refill(&self) {
        let mut spare = self.spare.lock();
        while spare.len() < RESERVED_DESCRIPTORS {
            match std::fs::File::open("/dev/null") {
                Ok(file) => spare.push(file),
                Err(_) => break,
            }
        }
    }

    /// Closes one, for an accept to use; false when none is left.
    fn release_one(&self) -> bool {
        self.spare.lock().pop().is_some()
    }
}

/// `--metrics-bind HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MetricsBind {
    pub host: String,
    pub port: u16,
}

impl MetricsBind {
    /// Parses `HOST:PORT` or `[IPV6]:PORT`; the port is required, so the
    /// listener never lands on the app's default port.
    pub(crate) fn parse(raw: &str) -> Result<MetricsBind, String> {
        let has_port = raw
            .rsplit_once(':')
            .is_some_and(|(_, port)| !port.is_empty() && !port.ends_with(']'));
        match Bind::parse(raw) {
            Ok(Bind::Tcp { host, port }) if has_port => Ok(MetricsBind { host, port }),
            Ok(_) => Err(format!(
                "{raw:?}: --metrics-bind takes HOST:PORT or [IPV6]:PORT, as in 127.0.0.1:9000"
            )),
            Err(message) => Err(message),
        }
    }

    /// Binds the listener, in the caller's thread so a taken port is one
    /// clear line before anything starts.
    pub(crate) fn listen(&self) -> Result<std::net::TcpListener, String> {
        let address = (self.host.as_str(), self.port);
        let listener = std::net::TcpListener::bind(address)
            .and_then(|listener| {
                listener.set_nonblocking(true)?;
                // Set on the listening socket, so that each connection has
                // them from its first byte.
                let socket = socket2::SockRef::from(&listener);
                socket.set_recv_buffer_size(SOCKET_BUFFER)?;
                socket.set_send_buffer_size(SOCKET_BUFFER)?;
                Ok(listener)
            })
            .map_err(|err| format!("Cannot listen on --metrics-bind {}: {err}", self.describe()))?;
        Ok(listener)
    }

    fn describe(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// What the probes answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Health {
    /// Why `/healthz` fails, if it does: no worker serves, or the one
    /// process's event loop is blocked. A graceful drain is no failure.
    pub not_alive: Option<String>,
    /// Why traffic should go elsewhere now (`/readyz` fails), if it should.
    pub not_ready: Option<String>,
}

/// Where the listener's answers come from: the supervisor, or the process
/// itself without `--workers`.
pub(crate) trait Scrape: Send + Sync + 'static {
    fn health(&self) -> Health;
    fn report(&self) -> Report;
}

/// A worker's event loop lag as a scrape shows it, in microseconds: the lag
/// its last heartbeat measured (`measured`), or how long the loop has not
/// run (`silent`, since that beat) beyond the heartbeat `interval`, if more.
/// The heartbeat measures a blocked loop only once it runs again, which is
/// after the health check has replaced the worker.
pub(crate) fn event_loop_lag(measured: u64, silent: Duration, interval: Duration) -> u64 {
    let late = silent.saturating_sub(interval);
    measured.max(u64::try_from(late.as_micros()).unwrap_or(u64::MAX))
}

/// The answer to `GET path`: status, content type and body.
fn answer(method: &Method, path: &str, scrape: &dyn Scrape) -> (StatusCode, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != Method::GET && method != Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, TEXT, "use GET\n".into());
    }
    match path {
        "/metrics" => (
            StatusCode::OK,
            exposition::CONTENT_TYPE,
            exposition::render(&scrape.report()),
        ),
        "/healthz" => match scrape.health().not_alive {
            None => (StatusCode::OK, TEXT, "ok\n".into()),
            Some(why) => (StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{why}\n")),
        },
        "/readyz" => {
            // What cannot live cannot take traffic either.
            let health = scrape.health();
            match health.not_ready.or(health.not_alive) {
                None => (StatusCode::OK, TEXT, "ready\n".into()),
                Some(why) => (StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{why}\n")),
            }
        }
        _ => (
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until the
/// runtime stops; runs as a task of the caller's runtime.
pub(crate) async fn serve(listener: std::net::TcpListener, scrape: Arc<dyn Scrape>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!("Cannot use the --metrics-bind socket: {err}");
            return;
        }
    };
    serve_within(listener, scrape, LIMITS).await;
}

/// The accept loop of [`serve`], its connections held to `limits`.
async fn serve_within(listener: tokio::net::TcpListener, scrape: Arc<dyn Scrape>, limits: Limits) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let open = Arc::new(Semaphore::new(limits.connections));
    // Runs of failed accepts, and of connections closed at the cap, are
    // logged once and then summed up: each can come ten times a second.
    let mut accept_failures = AcceptFailures::default();
    let mut refusals = AcceptFailures::default();
    let reserve = Arc::new(Reserve::filled());
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                if accept_failures.failing() {
                    log_accept_works(accept_failures.succeeded(Instant::now()));
                }
                stream
            }
            // Again at once, with a descriptor given back for it.
            Err(err) if err.raw_os_error() == Some(libc::EMFILE) && reserve.release_one() => {
                tracing::debug!("--metrics-bind: out of descriptors; one held in reserve serves");
                continue;
            }
            Err(err) => {
                log_accept_failure(accept_failures.failed(Instant::now()), &err);
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            log_refusal(refusals.failed(Instant::now()), limits);
            drop(stream);
            continue;
        };
        if refusals.failing() {
            log_refusal(refusals.succeeded(Instant::now()), limits);
        }
        let scrape = Arc::clone(&scrape);
        let service = service_fn(move |request: Request<hyper::body::Incoming>| {
            let (status, content_type, body) =
                answer(request.method(), request.uri().path(), scrape.as_ref());
            let mut response = Response::new(Full::new(Bytes::from(body)));
            *response.status_mut() = status;
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            if status == StatusCode::METHOD_NOT_ALLOWED {
                // RFC 9110 §15.5.6: a 405 says which methods the resource has.
                headers.insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            }
            std::future::ready(Ok::<_, Infallible>(response))
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let reserve = Arc::clone(&reserve);
        tokio::spawn(async move {
            let _permit = permit;
            // The connection's descriptor, closed by then, goes back to the reserve.
            let _refill = refill_on_drop(reserve);
            let mut connection = std::pin::pin!(connection);
            let ended = match tokio::time::timeout(limits.lifetime, connection.as_mut()).await {
                Ok(ended) => ended,
                Err(_) => {
                    // Closed once the response under way, if any, is out.
                    connection.as_mut().graceful_shutdown();
                    match tokio::time::timeout(limits.close_wait, connection).await {
                        Ok(ended) => ended,
                        Err(_) => {
                            tracing::debug!(
                                "--metrics-bind connection closed: its client did not read \
                                 its response"
                            );
                            return;
                        }
                    }
                }
            };
            if let Err(err) = ended {
                tracing::debug!("--metrics-bind connection ended: {err}");
            }
        });
    }
}

/// Refills `reserve` when dropped: at the end of a connection's task, after
/// the connection (declared later, dropped first) has closed its descriptor.
fn refill_on_drop(reserve: Arc<Reserve>) -> impl Drop {
    struct Refill(Arc<Reserve>);
    impl Drop for Refill {
        fn drop(&mut self) {
            self.0.refill();
        }
    }
    Refill(reserve)
}

/// Logs a failed accept, as [`AcceptFailures`] says: the first of a run
/// at once, the rest summed up.
fn log_accept_failure(report: Option<Failures>, err: &std::io::Error) {
    match report {
        Some(Failures::First) => tracing::warn!(
            "--metrics-bind: accept() failed: {err}; retrying every {} ms{}",
            ACCEPT_ERROR_PAUSE.as_millis(),
            match err.raw_os_error() {
                Some(libc::EMFILE) => {
                    "; this process has as many open files as its limit allows: raise the \
                     limit (ulimit -n, or LimitNOFILE= in a systemd unit)"
                }
                Some(libc::ENFILE) => "; the whole system is out of open files (fs.file-max)",
                _ => "",
            }
        ),
        Some(Failures::StillFailing { failures, for_ }) => tracing::warn!(
            "--metrics-bind: accept() failed: {err}; {failures} more failures since the last \
             line, failing for {:.0}s now; still retrying",
            for_.as_secs_f64()
        ),
        _ => {}
    }
}

/// Logs the end of a run of failed accepts.
fn log_accept_works(report: Option<Failures>) {
    if let Some(Failures::Recovered { failures, lasted }) = report {
        tracing::info!(
            "--metrics-bind: accept() works again, after {failures} failed attempts over {:.1}s",
            lasted.as_secs_f64()
        );
    }
}

/// Logs connections closed at the cap, as [`AcceptFailures`] says of a run
/// of failures: the first at once, the rest summed up, and the end.
fn log_refusal(report: Option<Failures>, limits: Limits) {
    let cap = limits.connections;
    match report {
        Some(Failures::First) => tracing::warn!(
            "--metrics-bind: {cap} connections are open, as many as it serves at once; new ones \
             are closed until some end (each within {}s): a client that opens connections and \
             keeps them, or never reads its answers?",
            (limits.lifetime + limits.close_wait).as_secs()
        ),
        Some(Failures::StillFailing { failures, for_ }) => tracing::warn!(
            "--metrics-bind: {failures} more connections closed at the cap of {cap} since the \
             last line, for {:.0}s now",
            for_.as_secs_f64()
        ),
        Some(Failures::Recovered { failures, lasted }) => tracing::info!(
            "--metrics-bind: new connections are served again, after {failures} closed at the \
             cap of {cap} over {:.1}s",
            lasted.as_secs_f64()
        ),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    struct Fixed(Health);

    impl Scrape for Fixed {
        fn health(&self) -> Health {
            self.0.clone()
        }
        fn report(&self) -> Report {
            Report::default()
        }
    }

    /// Serves `listener`'s scrapes within `limits` from a task of this
    /// runtime; returns its address.
    async fn serving(limits: Limits) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(serve_within(
            listener,
            Arc::new(Fixed(Health::default())),
            limits,
        ));
        address
    }

    /// Sends `GET /healthz` on `stream` and reads the status line, if the
    /// server answers within 5 s.
    async fn probe(stream: &mut TcpStream) -> Option<String> {
        let exchange = async {
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .ok()?;
            let mut head = vec![0; 1024];
            let read = stream.read(&mut head).await.ok()?;
            let head = String::from_utf8_lossy(&head[..read]).into_owned();
            head.lines().next().map(str::to_string)
        };
        tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .ok()
            .flatten()
    }

    #[tokio::test]
    async fn a_client_that_never_reads_is_cut_off() {
        let address = serving(Limits {
            connections: 4,
            lifetime: Duration::from_millis(300),
            close_wait: Duration::from_millis(200),
        })
        .await;
        let mut stream = TcpStream::connect(address).await.unwrap();
        // Requests pipelined until both sides' buffers are full, the server
        // stuck writing answers that are never read: only the server's
        // closing the connection (a reset, as requests are left unread)
        // ends the writes.
        let requests = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(100);
        let cut_off = async { while stream.write_all(&requests).await.is_ok() {} };
        assert!(
            tokio::time::timeout(Duration::from_secs(10), cut_off)
                .await
                .is_ok(),
            "the connection is still open"
        );
    }

    #[tokio::test]
    async fn connections_over_the_cap_are_closed_at_once() {
        let address = serving(Limits {
            connections: 2,
            ..LIMITS
        })
        .await;
        let mut first = TcpStream::connect(address).await.unwrap();
        let mut second = TcpStream::connect(address).await.unwrap();
        assert_eq!(probe(&mut first).await.as_deref(), Some("HTTP/1.1 200 OK"));
        assert_eq!(probe(&mut second).await.as_deref(), Some("HTTP/1.1 200 OK"));
        let mut third = TcpStream::connect(address).await.unwrap();
        assert_eq!(probe(&mut third).await, None);
        drop(first);
        // Its permit comes back once its task has seen the close.
        let mut answer = None;
        for _ in 0..100 {
            let mut next = TcpStream::connect(address).await.unwrap();
            answer = probe(&mut next).await;
            if answer.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(answer.as_deref(), Some("HTTP/1.1 200 OK"));
    }

    #[test]
    fn a_loop_blocked_now_shows_as_its_silence_beyond_the_interval() {
        let second = Duration::from_secs(1);
        // Beating on time: the measured lag stands.
        assert_eq!(
            event_loop_lag(2_000, Duration::from_millis(500), second),
            2_000
        );
        assert_eq!(event_loop_lag(0, second, second), 0);
        // Silent for 4.5 s, beating every second: 3.5 s late, and counting.
        assert_eq!(
            event_loop_lag(2_000, Duration::from_millis(4_500), second),
            3_500_000
        );
        // A larger lag measured before still shows.
        assert_eq!(
            event_loop_lag(9_000_000, Duration::from_millis(4_500), second),
            9_000_000
        );
    }

    #[test]
    fn the_port_is_required() {
        assert_eq!(
            MetricsBind::parse("127.0.0.1:9000"),
            Ok(MetricsBind {
                host: "127.0.0.1".into(),
                port: 9000
            })
        );
        assert_eq!(MetricsBind::parse("[::1]:9000").map(|b| b.port), Ok(9000));
        assert!(MetricsBind::parse("127.0.0.1").is_err());
        assert!(MetricsBind::parse("[::1]").is_err());
        assert!(MetricsBind::parse("unix:/run/metrics.sock").is_err());
        assert!(MetricsBind::parse("localhost:http").is_err());
    }

    #[test]
    fn probes_answer_as_health_says() {
        let get = |health: &Health, path: &str| {
            let (status, _, body) = answer(&Method::GET, path, &Fixed(health.clone()));
            (status, body)
        };
        let serving = Health::default();
        let draining = Health {
            not_alive: None,
            not_ready: Some("shutting down".into()),
        };
        let dead = Health {
            not_alive: Some("no worker is serving".into()),
            not_ready: Some("not every worker is serving".into()),
        };
        let blocked = Health {
            not_alive: Some("the event loop has not run for 5.0s".into()),
            not_ready: None,
        };
        let ok = |body: &str| (StatusCode::OK, body.to_string());
        let unavailable = |why: &str| (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"));
        assert_eq!(get(&serving, "/healthz"), ok("ok\n"));
        assert_eq!(get(&serving, "/readyz"), ok("ready\n"));
        assert_eq!(get(&draining, "/healthz"), ok("ok\n"));
        assert_eq!(get(&draining, "/readyz"), unavailable("shutting down"));
        assert_eq!(get(&dead, "/healthz"), unavailable("no worker is serving"));
        assert_eq!(
            get(&dead, "/readyz"),
            unavailable("not every worker is serving")
        );
        assert_eq!(
            get(&blocked, "/healthz"),
            unavailable("the event loop has not run for 5.0s")
        );
        assert_eq!(
            get(&blocked, "/readyz"),
            unavailable("the event loop has not run for 5.0s")
        );
        assert_eq!(get(&serving, "/metrics").0, StatusCode::OK);
        assert_eq!(get(&serving, "/").0, StatusCode::NOT_FOUND);
        assert_eq!(
            answer(&Method::POST, "/metrics", &Fixed(serving)).0,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
