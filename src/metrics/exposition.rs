//! `/metrics`: a [`Report`] written in the Prometheus text exposition format
//! (version 0.0.4), which Prometheus, its agents and `prometheus_client`'s
//! parser all read.
//!
//! Written by hand: the format is a few lines per metric, and the values
//! come from shared memory rather than from a client library's registry.

use std::fmt::Write;

use super::counters::{Protocol, Snapshot, DURATION_BUCKETS_MICROS, METHODS, STATUS_CLASSES};
use super::process::ProcessStats;

/// The `Content-Type` of the text format.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why the supervisor replaced a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Restart {
    /// It died while serving (or before, after having served).
    Crash,
    MaxRequests,
    Lifetime,
    Memory,
    /// Its event loop stopped beating (`--timeout-worker-healthcheck`).
    HealthCheck,
    /// SIGHUP or `--reload`.
    Reload,
    /// A WSGI thread stuck past `--timeout-request`.
    RequestTimeout,
}

impl Restart {
    pub(crate) const ALL: [Restart; 7] = [
        Restart::Crash,
        Restart::MaxRequests,
        Restart::Lifetime,
        Restart::Memory,
        Restart::HealthCheck,
        Restart::Reload,
        Restart::RequestTimeout,
    ];

    /// The `reason` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Restart::Crash => "crash",
            Restart::MaxRequests => "max_requests",
            Restart::Lifetime => "lifetime",
            Restart::Memory => "memory",
            Restart::HealthCheck => "health_check",
            Restart::Reload => "reload",
            Restart::RequestTimeout => "request_timeout",
        }
    }
}

/// One worker process as `/metrics` shows it.
#[derive(Debug, Clone)]
pub(crate) struct WorkerReport {
    /// 1 to `--workers` (a replacement shares its predecessor's number).
    pub number: usize,
    pub pid: u32,
    /// "booting", "serving" or "stopping".
    pub state: &'static str,
    pub resident_bytes: Option<u64>,
    pub counters: Snapshot,
}

/// Everything one scrape shows.
#[derive(Debug, Clone, Default)]
pub(crate) struct Report {
    /// The counters of every worker, running or gone.
    pub totals: Snapshot,
    pub workers: Vec<WorkerReport>,
    /// Workers replaced, by reason (indexed like [`Restart::ALL`]).
    pub restarts: [u64; Restart::ALL.len()],
    /// The process that answers the scrape (the supervisor, or the only
    /// process without `--workers`).
    pub process: ProcessStats,
}

/// The methods of `rsasgi_requests_total` shown from the first scrape, at 0
/// for each status class. `rate()` and `increase()` take a series' first
/// sample for its start: a series that appeared with the first 5xx counted
/// would show no increase, and an alert on it would not fire. CONNECT and
/// TRACE, which few apps take, appear with their first request.
const METHODS_SHOWN_AT_ZERO: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other",
];

/// A per-worker gauge's value, or none to leave the worker out.
type WorkerValue = fn(&WorkerReport) -> Option<String>;

/// Writes the HELP and TYPE lines of a metric.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value as the format wants it: backslash, quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `{worker="2",pid="1234"}`.
fn worker_labels(worker: &WorkerReport) -> String {
    format!("{{worker=\"{}\",pid=\"{}\"}}", worker.number, worker.pid)
}

fn seconds(micros: u64) -> f64 {
    micros as f64 / 1e6
}

/// The report in the text format.
pub(crate) fn render(report: &Report) -> String {
    let mut out = String::with_capacity(4096);
    let totals = &report.totals;

    header(
        &mut out,
        "rsasgi_requests_total",
        "counter",
        "Requests finished, by method and status class (none: the client left before a response).",
    );
    for (method, row) in METHODS.iter().zip(&totals.requests) {
        for (status, count) in STATUS_CLASSES.iter().zip(row) {
            if *count > 0 || METHODS_SHOWN_AT_ZERO.contains(method) {
                let _ = writeln!(
                    out,
                    "rsasgi_requests_total{{method=\"{}\",status=\"{status}\"}} {count}",
                    escape(method)
                );
            }
        }
    }

    let name = "rsasgi_request_duration_seconds";
    header(
        &mut out,
        name,
        "histogram",
        "Time from a request's head to the end of its response.",
    );
    let mut cumulative = 0;
    for (index, count) in totals.duration_buckets.iter().enumerate() {
        cumulative += count;
        let bound = match DURATION_BUCKETS_MICROS.get(index) {
            Some(micros) => seconds(*micros).to_string(),
            None => "+Inf".to_string(),
        };
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_sum {}", seconds(totals.duration_sum_micros));
    let _ = writeln!(out, "{name}_count {cumulative}");

    header(
        &mut out,
        "rsasgi_received_bytes_total",
        "counter",
        "Bytes read from clients (after TLS), request heads and WebSocket frames included.",
    );
    let _ = writeln!(out, "rsasgi_received_bytes_total {}", totals.bytes_received);
    header(
        &mut out,
        "rsasgi_sent_bytes_total",
        "counter",
        "Bytes written to clients (before TLS), response heads and WebSocket frames included.",
    );
    let _ = writeln!(out, "rsasgi_sent_bytes_total {}", totals.bytes_sent);

    header(
        &mut out,
        "rsasgi_connections_open",
        "gauge",
        "Client connections open, by the protocol they speak now (websocket: sessions).",
    );
    for protocol in Protocol::ALL {
        let open: u64 = report
            .workers
            .iter()
            .map(|worker| worker.counters.connections_open[protocol as usize])
            .sum();
        let _ = writeln!(
            out,
            "rsasgi_connections_open{{protocol=\"{}\"}} {open}",
            protocol.label()
        );
    }

    let per_worker: [(&str, &str, WorkerValue); 5] = [
        (
            "rsasgi_requests_in_flight",
            "Requests started and not finished, per worker.",
            |w| Some(w.counters.requests_in_flight.to_string()),
        ),
        (
            "rsasgi_wsgi_threads_busy",
            "WSGI threads running the app, per worker.",
            |w| Some(w.counters.wsgi_threads_busy.to_string()),
        ),
        (
            "rsasgi_wsgi_queue_depth",
            "Requests waiting for a WSGI thread, per worker (looked at once a second).",
            |w| Some(w.counters.wsgi_queue_depth.to_string()),
        ),
        (
            "rsasgi_event_loop_lag_seconds",
            "How late the worker's event loop ran its last heartbeat.",
            |w| Some(seconds(w.counters.event_loop_lag_micros).to_string()),
        ),
        (
            "rsasgi_worker_resident_memory_bytes",
            "Resident memory of each worker process.",
            |w| w.resident_bytes.map(|bytes| bytes.to_string()),
        ),
    ];
    for (name, help, value) in per_worker {
        header(&mut out, name, "gauge", help);
        for worker in &report.workers {
            if let Some(value) = value(worker) {
                let _ = writeln!(out, "{name}{} {value}", worker_labels(worker));
            }
        }
    }

    header(
        &mut out,
        "rsasgi_workers",
        "gauge",
        "Worker processes, by state (booting, serving, stopping).",
    );
    for state in ["booting", "serving", "stopping"] {
        let count = report.workers.iter().filter(|w| w.state == state).count();
        let _ = writeln!(out, "rsasgi_workers{{state=\"{state}\"}} {count}");
    }

    header(
        &mut out,
        "rsasgi_worker_restarts_total",
        "counter",
        "Workers replaced, by reason.",
    );
    for (reason, count) in Restart::ALL.iter().zip(&report.restarts) {
        let _ = writeln!(
            out,
            "rsasgi_worker_restarts_total{{reason=\"{}\"}} {count}",
            reason.label()
        );
    }

    let process = &report.process;
    header(
        &mut out,
        "process_cpu_seconds_total",
        "counter",
        "User and system CPU time spent, in seconds.",
    );
    let _ = writeln!(out, "process_cpu_seconds_total {}", process.cpu_seconds);
    header(
        &mut out,
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
    );
    let _ = writeln!(
        out,
        "process_resident_memory_bytes {}",
        process.resident_bytes
    );
    header(
        &mut out,
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
    );
    let _ = writeln!(out, "process_open_fds {}", process.open_fds);
    header(
        &mut out,
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors.",
    );
    let _ = writeln!(out, "process_max_fds {}", process.max_fds);
    header(
        &mut out,
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
    );
    let _ = writeln!(
        out,
        "process_start_time_seconds {}",
        process.start_time_seconds
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, name_and_labels: &str) -> Option<String> {
        text.lines()
            .find_map(|line| line.strip_prefix(name_and_labels)?.strip_prefix(' '))
            .map(str::to_string)
    }

    fn report() -> Report {
        let mut totals = Snapshot::default();
        totals.requests[0][1] = 7; // GET 2xx
        totals.requests[2][4] = 1; // POST 5xx
        totals.duration_buckets[0] = 5;
        totals.duration_buckets[3] = 2;
        totals.duration_buckets[DURATION_BUCKETS_MICROS.len()] = 1;
        totals.duration_sum_micros = 12_500_000;
        let counters = Snapshot {
            connections_open: [2, 1, 0],
            requests_in_flight: 3,
            ..Snapshot::default()
        };
        Report {
            totals,
            workers: vec![
                WorkerReport {
                    number: 1,
                    pid: 100,
                    state: "serving",
                    resident_bytes: Some(4096),
                    counters: counters.clone(),
                },
                WorkerReport {
                    number: 2,
                    pid: 101,
                    state: "booting",
                    resident_bytes: None,
                    counters,
                },
            ],
            restarts: [1, 2, 0, 0, 0, 0, 0],
            process: ProcessStats::default(),
        }
    }

    #[test]
    fn requests_are_shown_by_method_and_status() {
        let text = render(&report());
        let requests = |method: &str, status: &str| {
            let labels =
                format!("rsasgi_requests_total{{method=\"{method}\",status=\"{status}\"}}");
            sample(&text, &labels)
        };
        assert_eq!(requests("GET", "2xx").as_deref(), Some("7"));
        assert_eq!(requests("POST", "5xx").as_deref(), Some("1"));
        // The common methods from the start, for every class.
        for status in STATUS_CLASSES {
            assert_eq!(requests("PUT", status).as_deref(), Some("0"), "{status}");
            assert_eq!(requests("other", status).as_deref(), Some("0"), "{status}");
        }
        assert!(!text.contains(r#"method="CONNECT""#));
        assert!(!text.contains(r#"method="TRACE""#));
    }

    #[test]
    fn connect_and_trace_appear_once_counted() {
        let mut report = report();
        let connect = METHODS.iter().position(|m| *m == "CONNECT").unwrap();
        report.totals.requests[connect][3] = 2; // 4xx
        let text = render(&report);
        assert_eq!(
            sample(
                &text,
                r#"rsasgi_requests_total{method="CONNECT",status="4xx"}"#
            )
            .as_deref(),
            Some("2")
        );
        assert!(!text.contains(r#"method="CONNECT",status="2xx""#));
        assert!(!text.contains(r#"method="TRACE""#));
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_the_count() {
        let text = render(&report());
        let bucket = |le: &str| {
            sample(
                &text,
                &format!("rsasgi_request_duration_seconds_bucket{{le=\"{le}\"}}"),
            )
        };
        assert_eq!(bucket("0.001").as_deref(), Some("5"));
        assert_eq!(bucket("0.0025").as_deref(), Some("5"));
        assert_eq!(bucket("0.01").as_deref(), Some("7"));
        assert_eq!(bucket("10").as_deref(), Some("7"));
        assert_eq!(bucket("+Inf").as_deref(), Some("8"));
        assert_eq!(
            sample(&text, "rsasgi_request_duration_seconds_count").as_deref(),
            Some("8")
        );
        assert_eq!(
            sample(&text, "rsasgi_request_duration_seconds_sum").as_deref(),
            Some("12.5")
        );
    }

    #[test]
    fn gauges_add_up_over_workers_or_carry_their_worker() {
        let text = render(&report());
        assert_eq!(
            sample(&text, r#"rsasgi_connections_open{protocol="http/1.1"}"#).as_deref(),
            Some("4")
        );
        assert_eq!(
            sample(&text, r#"rsasgi_requests_in_flight{worker="2",pid="101"}"#).as_deref(),
            Some("3")
        );
        assert_eq!(
            sample(
                &text,
                r#"rsasgi_worker_resident_memory_bytes{worker="1",pid="100"}"#
            )
            .as_deref(),
            Some("4096")
        );
        assert!(!text.contains(r#"rsasgi_worker_resident_memory_bytes{worker="2""#));
        assert_eq!(
            sample(&text, r#"rsasgi_workers{state="booting"}"#).as_deref(),
            Some("1")
        );
        assert_eq!(
            sample(
                &text,
                r#"rsasgi_worker_restarts_total{reason="max_requests"}"#
            )
            .as_deref(),
            Some("2")
        );
    }

    #[test]
    fn every_metric_has_help_and_type_before_its_samples() {
        let text = render(&report());
        let mut declared = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.push(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(
                    declared.iter().any(|metric| name == metric
                        || ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|suffix| name == format!("{metric}{suffix}"))),
                    "{line} has no TYPE line before it"
                );
            }
        }
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
