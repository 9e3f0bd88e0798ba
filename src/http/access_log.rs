//! One log line per response, in a combined-log style with the latency.

use std::net::SocketAddr;
use std::time::Instant;

use http::{HeaderMap, Method, StatusCode, Uri, Version};

/// What the access log line needs, collected when the response head is sent
/// and written when the response body is done (or dropped).
pub(crate) struct AccessRecord {
    client: Option<SocketAddr>,
    method: Method,
    uri: Uri,
    version: Version,
    status: StatusCode,
    referer: String,
    user_agent: String,
    started_at: Instant,
    pub bytes: u64,
    /// Set when the response ended before its last byte was sent.
    pub incomplete: bool,
}

impl AccessRecord {
    pub(crate) fn new(
        client: Option<SocketAddr>,
        method: &Method,
        uri: &Uri,
        version: Version,
        request_headers: &HeaderMap,
        status: StatusCode,
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
            status,
            referer: header(http::header::REFERER),
            user_agent: header(http::header::USER_AGENT),
            started_at,
            bytes: 0,
            incomplete: false,
        }
    }
}

impl AccessRecord {
    pub(crate) fn with_status(mut self, status: StatusCode) -> AccessRecord {
        self.status = status;
        self
    }
}

impl Drop for AccessRecord {
    fn drop(&mut self) {
        let client = match self.client {
            Some(addr) => addr.to_string(),
            None => "-".into(),
        };
        let target = self
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        let latency_ms = self.started_at.elapsed().as_secs_f64() * 1000.0;
        let note = if self.incomplete { " (incomplete)" } else { "" };
        tracing::info!(
            target: "rsasgi::access",
            "{client} - \"{} {target} {:?}\" {} {} \"{}\" \"{}\" {latency_ms:.3}ms{note}",
            self.method,
            self.version,
            self.status.as_u16(),
            self.bytes,
            self.referer,
            self.user_agent,
        );
    }
}
