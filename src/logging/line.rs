//! `--log-format text`: one line per event, for people and `grep`.

use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;

use super::clock::Clock;
use super::{logger_name, ACCESS};

/// One log line: time, level, the process's label when there is one, logger,
/// message. tracing-subscriber's own format has no place for a label, and
/// with several workers writing to one stream every line must say whose it is.
///
/// Access lines show their message only: their fields are for JSON. With an
/// `--access-log-format` the line is nothing but that message, as gunicorn
/// writes its access log, so log analysers can read it.
pub(super) struct LineFormat {
    /// "worker 2 pid 1234" in a supervised worker.
    pub label: Option<String>,
    /// Access lines are the access format's alone.
    pub bare_access_lines: bool,
    /// Access lines go to their own file (`--access-logfile`): no colours there
    /// even when stderr is a terminal.
    pub access_apart: bool,
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        // Records of the `log` crate (rustls's) carry their own target.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let access = meta.target() == ACCESS;
        if access && self.bare_access_lines {
            write_message(&mut writer, event)?;
            return writeln!(writer);
        }
        let ansi = writer.has_ansi_escapes() && !(access && self.access_apart);
        Clock.format_time(&mut writer)?;
        let level = *meta.level();
        if ansi {
            let color = match level {
                Level::ERROR => "31",
                Level::WARN => "33",
                Level::INFO => "32",
                Level::DEBUG => "34",
                Level::TRACE => "35",
            };
            write!(writer, " \x1b[{color}m{level:>5}\x1b[0m ")?;
        } else {
            write!(writer, " {level:>5} ")?;
        }
        if let Some(label) = &self.label {
            write!(writer, "[{label}] ")?;
        }
        let logger = logger_name(meta.target());
        if ansi {
            write!(writer, "\x1b[2m{logger}:\x1b[0m ")?;
        } else {
            write!(writer, "{logger}: ")?;
        }
        if access {
            write_message(&mut writer, event)?;
        } else {
            ctx.field_format().format_fields(writer.by_ref(), event)?;
        }
        writeln!(writer)
    }
}

/// Writes an event's message, without its other fields.
fn write_message(writer: &mut Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
    struct Message<'a, 'w> {
        writer: &'a mut Writer<'w>,
        result: std::fmt::Result,
    }
    impl Visit for Message<'_, '_> {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.result = write!(self.writer, "{value:?}");
            }
        }
    }
    let mut message = Message {
        writer,
        result: Ok(()),
    };
    event.record(&mut message);
    message.result
}

impl LineFormat {
    /// The note written when lines were dropped, as a text line.
    pub(super) fn dropped_note(&self, count: usize) -> String {
        self.note(format_args!(
            "{count} log line(s) dropped because the process reading this log was not keeping up"
        ))
    }

    /// The same, in the server log, for the lines of an access log in a
    /// format of the operator's (`--access-log-format`).
    pub(super) fn access_dropped_note(&self, count: usize) -> String {
        self.note(format_args!(
            "{count} access log line(s) dropped because the process reading the access log \
             was not keeping up"
        ))
    }

    fn note(&self, message: std::fmt::Arguments<'_>) -> String {
        let mut line = String::new();
        let _ = Clock.format_time(&mut Writer::new(&mut line));
        line.push_str("  WARN ");
        if let Some(label) = &self.label {
            let _ = write!(line, "[{label}] ");
        }
        let _ = writeln!(line, "{}: {message}", super::SERVER);
        line
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::capture;
    use super::*;

    fn format(bare_access_lines: bool) -> LineFormat {
        LineFormat {
            label: Some("worker 2 pid 7".into()),
            bare_access_lines,
            access_apart: false,
        }
    }

    /// The line without its timestamp.
    fn untimed(line: &str) -> &str {
        line.split_once(' ').map_or(line, |(_, rest)| rest)
    }

    #[test]
    fn a_line_has_level_label_logger_and_fields() {
        let out = capture(format(false), || {
            tracing::warn!(target: "rsasgi::worker", client = 3, "slow {}", "down");
        });
        assert_eq!(
            untimed(&out),
            " WARN [worker 2 pid 7] rsasgi.error: slow down client=3\n"
        );
    }

    #[test]
    fn access_lines_show_their_message_only() {
        let access = || tracing::info!(target: ACCESS, status = 200, path = "/", "the line");
        let out = capture(format(false), access);
        assert_eq!(
            untimed(&out),
            " INFO [worker 2 pid 7] rsasgi.access: the line\n"
        );
        assert_eq!(capture(format(true), access), "the line\n");
    }

    #[test]
    fn a_record_of_the_log_crate_keeps_its_target() {
        let out = capture(format(false), || {
            let record = log::Record::builder()
                .args(format_args!("handshake done"))
                .level(log::Level::Warn)
                .target("rustls::server::hs")
                .build();
            tracing_log::format_trace(&record).unwrap();
        });
        assert_eq!(
            untimed(&out),
            " WARN [worker 2 pid 7] rustls::server::hs: handshake done\n"
        );
    }

    #[test]
    fn the_dropped_note_is_a_warning() {
        let note = format(false).dropped_note(3);
        assert!(
            untimed(&note)
                .starts_with(" WARN [worker 2 pid 7] rsasgi.error: 3 log line(s) dropped"),
            "{note}"
        );
        assert!(note.ends_with('\n'));
    }
}
