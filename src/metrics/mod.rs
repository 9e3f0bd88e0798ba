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
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::config::Bind;
pub(crate) use counters::Counters;
pub(crate) use exposition::{Report, Restart, WorkerReport};

/// How long a scraper gets to send its request head: the listener is
/// meant for probes and Prometheus, which send theirs at once.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the accept loop pauses after accept() fails (out of descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Health {
    /// At least one worker serves.
    pub alive: bool,
    /// Why traffic should go elsewhere now, if it should.
    pub not_ready: Option<&'static str>,
}

/// Where the listener's answers come from: the supervisor, or the process
/// itself without `--workers`.
pub(crate) trait Scrape: Send + Sync + 'static {
    fn health(&self) -> Health;
    fn report(&self) -> Report;
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
        "/healthz" => match scrape.health().alive {
            true => (StatusCode::OK, TEXT, "ok\n".into()),
            false => (
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                "no worker is serving\n".into(),
            ),
        },
        "/readyz" => match scrape.health().not_ready {
            None => (StatusCode::OK, TEXT, "ready\n".into()),
            Some(why) => (StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{why}\n")),
        },
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
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::warn!("--metrics-bind: accept() failed: {err}");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
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
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!("--metrics-bind connection ended: {err}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Health);

    impl Scrape for Fixed {
        fn health(&self) -> Health {
            self.0
        }
        fn report(&self) -> Report {
            Report::default()
        }
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
        let get = |health: Health, path: &str| answer(&Method::GET, path, &Fixed(health)).0;
        let serving = Health {
            alive: true,
            not_ready: None,
        };
        let draining = Health {
            alive: true,
            not_ready: Some("shutting down"),
        };
        let dead = Health {
            alive: false,
            not_ready: Some("no worker is serving"),
        };
        assert_eq!(get(serving, "/healthz"), StatusCode::OK);
        assert_eq!(get(serving, "/readyz"), StatusCode::OK);
        assert_eq!(get(draining, "/healthz"), StatusCode::OK);
        assert_eq!(get(draining, "/readyz"), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(get(dead, "/healthz"), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(get(serving, "/metrics"), StatusCode::OK);
        assert_eq!(get(serving, "/"), StatusCode::NOT_FOUND);
        assert_eq!(
            answer(&Method::POST, "/metrics", &Fixed(serving)).0,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
