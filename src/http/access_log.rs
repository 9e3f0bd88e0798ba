//! One log line per response, in a combined-log style with the latency.
//!
//! A request that never got a response still gets a line, with nginx's codes
//! for what happened instead: 499 when the client closed the connection
//! first, 444 when the server closed it at shutdown (the grace period ran
//! out, or a second signal) while the app was still working.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use http::{HeaderMap, Method, StatusCode, Uri, Version};

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

/// What the access log line needs, collected when the request arrives and
/// written when the response body is done (or dropped).
pub(crate) struct AccessRecord {
    client: String,
    method: Method,
    uri: Uri,
    version: Version,
    /// `None` until a response head is chosen.
    status: Option<StatusCode>,
    referer: String,
    user_agent: String,
    started_at: Instant,
    pub bytes: u64,
    /// Set when the response ended before its last byte was sent.
    pub incomplete: bool,
}

impl AccessRecord {
    pub(crate) fn new(
        client: String,
        method: &Method,
        uri: &Uri,
        version: Version,
        request_headers: &HeaderMap,
        started_at: Instant,
    ) -> AccessRecord {
        let header = |name: http::header::HeaderName| {
            request_headers
                .get(name)
                .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
                .unwrap_or_else(|| "-".into())
        };
        AccessRecord {
            client,
            method: method.clone(),
            uri: uri.clone(),
            version,
            status: None,
            referer: header(http::header::REFERER),
            user_agent: header(http::header::USER_AGENT),
            started_at,
            bytes: 0,
            incomplete: false,
        }
    }

    pub(crate) fn with_status(mut self, status: StatusCode) -> AccessRecord {
        self.status = Some(status);
        self
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
            None => (
                CLIENT_CLOSED_REQUEST,
                " (client closed the connection before the response)",
            ),
        }
    }
}

impl Drop for AccessRecord {
    fn drop(&mut self) {
        let target = self
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        let latency_ms = self.started_at.elapsed().as_secs_f64() * 1000.0;
        let (status, note) = self.outcome();
        tracing::info!(
            target: crate::logging::ACCESS,
            "{} - \"{} {target} {:?}\" {status} {} \"{}\" \"{}\" {latency_ms:.3}ms{note}",
            self.client,
            self.method,
            self.version,
            self.bytes,
            self.referer,
            self.user_agent,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AccessRecord {
        AccessRecord::new(
            "127.0.0.1:5000".into(),
            &Method::GET,
            &Uri::from_static("/"),
            Version::HTTP_11,
            &HeaderMap::new(),
            Instant::now(),
        )
    }

    #[test]
    fn a_request_without_a_response_is_499() {
        assert_eq!(record().outcome().0, CLIENT_CLOSED_REQUEST);
        assert_eq!(record().with_status(StatusCode::OK).outcome(), (200, ""));
        let mut cut = record().with_status(StatusCode::OK);
        cut.incomplete = true;
        assert_eq!(cut.outcome(), (200, " (incomplete)"));
    }
}
