//! `--log-format json`: one JSON object per line, for log shippers (Loki,
//! Elasticsearch, CloudWatch, Datadog) that index by key.
//!
//! Every line has `timestamp` (RFC 3339, UTC), `level` (Python's names),
//! `logger`, `message`, `worker` (its number, null for the supervisor or a
//! single process) and `pid`; then the event's own fields as keys: an access
//! line's `method`, `path`, `query`, `status`, `bytes`, `duration` (seconds),
//! `client`, `protocol`, `user_agent`, `referer`, `request_id`. A field an
//! event did not record (no `Referer` sent) is left out.

use std::fmt;
use std::io;

use serde::Serialize;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;

use super::clock::Clock;
use super::{logger_name, Process, SERVER};

/// Keys every line has; an event field by one of these names is dropped
/// rather than written twice.
const KEYS: [&str; 6] = ["timestamp", "level", "logger", "message", "worker", "pid"];

pub(super) struct JsonFormat {
    pub process: Process,
}

impl<S, N> FormatEvent<S, N> for JsonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Records of the `log` crate (rustls's) carry their own target.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        self.start(&mut writer, *meta.level(), logger_name(meta.target()))?;
        let mut message = Fields {
            out: Json(&mut writer),
            message: true,
            found: false,
            result: Ok(()),
        };
        event.record(&mut message);
        message.result?;
        if !message.found {
            writer.write_str("null")?;
        }
        self.process_keys(&mut writer)?;
        let mut fields = Fields {
            out: Json(&mut writer),
            message: false,
            found: false,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_str("}\n")
    }
}

impl JsonFormat {
    /// `{"timestamp":…,"level":…,"logger":…` and the `"message":` key.
    fn start(&self, writer: &mut Writer<'_>, level: Level, logger: &str) -> fmt::Result {
        writer.write_str("{\"timestamp\":\"")?;
        Clock.format_time(writer)?;
        write!(writer, "\",\"level\":\"{}\",\"logger\":", level_name(level))?;
        Json(writer).value(logger)?;
        writer.write_str(",\"message\":")
    }

    /// `,"worker":…,"pid":…`
    fn process_keys(&self, writer: &mut Writer<'_>) -> fmt::Result {
        match self.process {
            Process::Worker(number) => write!(writer, ",\"worker\":{number}")?,
            Process::Single | Process::Supervisor => writer.write_str(",\"worker\":null")?,
        }
        write!(writer, ",\"pid\":{}", std::process::id())
    }

    /// The note written when lines were dropped, as a JSON line.
    pub(super) fn dropped_note(&self, count: usize) -> String {
        let mut line = String::new();
        let mut writer = Writer::new(&mut line);
        let _ = self.start(&mut writer, Level::WARN, SERVER);
        let message = format!(
            "{count} log line(s) dropped because the process reading this log was not keeping up"
        );
        let _ = Json(&mut writer).value(message.as_str());
        let _ = self.process_keys(&mut writer);
        line.push_str("}\n");
        line
    }
}

/// Python's names for the levels, as the app's own JSON logs show them.
fn level_name(level: Level) -> &'static str {
    match level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    }
}

/// Writes JSON values (escaped by serde_json) into a fmt writer.
struct Json<'a, 'w>(&'a mut Writer<'w>);

impl Json<'_, '_> {
    fn value(&mut self, value: impl Serialize) -> fmt::Result {
        serde_json::to_writer(&mut *self, &value).map_err(|_| fmt::Error)
    }
}

impl io::Write for Json<'_, '_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        // serde_json writes whole UTF-8 sequences: escapes are ASCII, and it
        // splits text only where one goes.
        let text = std::str::from_utf8(bytes).map_err(io::Error::other)?;
        self.0.write_str(text).map_err(io::Error::other)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes either the message (`message: true`) or every other field as
/// `,"name":value`.
struct Fields<'a, 'w> {
    out: Json<'a, 'w>,
    message: bool,
    /// The message was written.
    found: bool,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    fn field(&mut self, field: &Field, value: impl Serialize) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        self.result = if self.message {
            if name != "message" || self.found {
                return;
            }
            self.found = true;
            self.out.value(value)
        } else {
            // `log.target` and the like: the `log` crate's metadata, used above.
            if KEYS.contains(&name) || name.starts_with("log.") {
                return;
            }
            self.out
                .0
                .write_char(',')
                .and_then(|()| self.out.value(name))
                .and_then(|()| self.out.0.write_char(':'))
                .and_then(|()| self.out.value(value))
        };
    }
}

impl Visit for Fields<'_, '_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, format_args!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // serde_json writes null for the non-finite ones.
        self.field(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, value);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::capture;
    use super::*;
    use crate::logging::ACCESS;

    fn parse(line: &str) -> serde_json::Map<String, serde_json::Value> {
        assert!(
            line.ends_with("}\n") && line.matches('\n').count() == 1,
            "{line:?}"
        );
        match serde_json::from_str(line).unwrap() {
            serde_json::Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn a_server_line_has_the_fixed_keys() {
        let format = JsonFormat {
            process: Process::Worker(3),
        };
        let out = capture(
            format,
            || tracing::warn!(target: "rsasgi::worker", client = ?Some(1), "a \"quoted\"\nline"),
        );
        let line = parse(&out);
        let order = [
            "timestamp",
            "level",
            "logger",
            "message",
            "worker",
            "pid",
            "client",
        ];
        let at: Vec<usize> = order
            .iter()
            .map(|key| out.find(&format!("\"{key}\":")).unwrap())
            .collect();
        assert!(at.is_sorted() && at[0] == 1, "{out}");
        assert_eq!(line.len(), order.len());
        assert_eq!(line["level"], "WARNING");
        assert_eq!(line["logger"], "rsasgi.error");
        assert_eq!(line["message"], "a \"quoted\"\nline");
        assert_eq!(line["worker"], 3);
        assert_eq!(line["pid"], std::process::id());
        assert_eq!(line["client"], "Some(1)");
        let timestamp = line["timestamp"].as_str().unwrap();
        // RFC 3339 in UTC: 2025-01-31T12:34:56.123456Z
        assert!(
            timestamp.len() >= 20 && timestamp.ends_with('Z'),
            "{timestamp}"
        );
        assert_eq!(&timestamp[10..11], "T");
    }

    #[test]
    fn access_fields_are_keys_with_their_types() {
        let format = JsonFormat {
            process: Process::Supervisor,
        };
        let out = capture(format, || {
            tracing::info!(
                target: ACCESS,
                method = "GET",
                path = "/a",
                query = Some("x=1"),
                status = 200u16,
                bytes = 12u64,
                duration = 0.25,
                referer = None::<&str>,
                incomplete = false,
                level = "ignored",
                "the line"
            )
        });
        let line = parse(&out);
        assert_eq!(line["logger"], "rsasgi.access");
        assert_eq!(line["message"], "the line");
        assert_eq!(line["worker"], serde_json::Value::Null);
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["method"], "GET");
        assert_eq!(line["query"], "x=1");
        assert_eq!(line["status"], 200);
        assert_eq!(line["bytes"], 12);
        assert_eq!(line["duration"], 0.25);
        assert_eq!(line["incomplete"], false);
        assert!(!line.contains_key("referer"));
    }

    #[test]
    fn an_event_without_a_message_has_a_null_one() {
        let format = JsonFormat {
            process: Process::Single,
        };
        let line = parse(&capture(
            format,
            || tracing::info!(target: "rsasgi", answer = 42),
        ));
        assert_eq!(line["message"], serde_json::Value::Null);
        assert_eq!(line["answer"], 42);
    }

    #[test]
    fn a_record_of_the_log_crate_keeps_its_target() {
        let format = JsonFormat {
            process: Process::Single,
        };
        let out = capture(format, || {
            let record = log::Record::builder()
                .args(format_args!("handshake done"))
                .level(log::Level::Warn)
                .target("rustls::server::hs")
                .build();
            tracing_log::format_trace(&record).unwrap();
        });
        let line = parse(&out);
        assert_eq!(line["logger"], "rustls::server::hs");
        assert_eq!(line["message"], "handshake done");
        assert!(line.keys().all(|key| !key.starts_with("log.")), "{out}");
    }

    #[test]
    fn the_dropped_note_is_a_json_line() {
        let format = JsonFormat {
            process: Process::Single,
        };
        let line = parse(&format.dropped_note(5));
        assert_eq!(line["level"], "WARNING");
        assert_eq!(line["logger"], "rsasgi.error");
        assert!(line["message"]
            .as_str()
            .unwrap()
            .starts_with("5 log line(s) dropped"));
    }
}
