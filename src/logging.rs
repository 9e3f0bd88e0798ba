//! Server logging through `tracing`, and the bridge that lets the Python side
//! of the worker log into the same stream.
//!
//! Log lines are handed to a writer thread (tracing-appender's non-blocking
//! writer) instead of being written where they happen. Whoever reads our
//! stderr can stall (a paused pager, a busy log shipper) or die (`rsasgi app
//! 2>&1 | head`); a write from the reactor would then block every connection,
//! and `eprintln!`-style writes panic on a closed pipe. Here a full queue
//! drops the line and counts it, a failed write is dropped by the writer
//! thread, and neither the reactor nor the Python thread ever waits.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use parking_lot::Mutex;
use pyo3::prelude::*;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, WorkerGuard};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogLevel;

/// The access log's logger: one line per response (and per WebSocket).
pub(crate) const ACCESS: &str = "rsasgi.access";

/// The server's own log, as gunicorn's `gunicorn.error` and uvicorn's
/// `uvicorn.error` name it: every line that is not an access line, the
/// supervisor's included (gunicorn's arbiter logs there too).
pub(crate) const SERVER: &str = "rsasgi.error";

/// What WSGI apps write to `environ["wsgi.errors"]`, named after that key.
pub(crate) const WSGI_ERRORS: &str = "wsgi.errors";

/// The logger a line shows for an event's target: rsasgi's module paths
/// (`rsasgi::http::service`) are implementation details, so they all become
/// [`SERVER`]; other crates' events keep their own target.
fn logger_name(target: &str) -> &str {
    match target {
        ACCESS | WSGI_ERRORS => target,
        _ if target == "rsasgi" || target.starts_with("rsasgi::") => SERVER,
        _ => target,
    }
}

/// Which process writes the log, for the label on each line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Process {
    /// The only process: no supervisor, nothing to tell apart.
    Single,
    Supervisor,
    /// A supervised worker, by its number.
    Worker(usize),
}

impl Process {
    /// "worker 2 pid 1234", "supervisor pid 1200"; none for a single process.
    fn label(self) -> Option<String> {
        let pid = std::process::id();
        match self {
            Process::Single => None,
            Process::Supervisor => Some(format!("supervisor pid {pid}")),
            Process::Worker(number) => Some(format!("worker {number} pid {pid}")),
        }
    }
}

/// Log lines queued for the writer thread before new ones are dropped. At
/// about 200 bytes a line this bounds the queue near 3 MiB, and it absorbs a
/// burst of access-log lines while the reader catches up.
const QUEUED_LINES_LIMIT: usize = 16 * 1024;

/// Keeps the writer thread alive; dropped by [`flush`] so that queued lines
/// are written before the process exits.
static GUARD: Mutex<Option<WorkerGuard>> = Mutex::new(None);

/// The non-blocking writer, plus what it takes to report dropped lines once
/// logging gets through again.
struct Output {
    writer: NonBlocking,
    dropped: ErrorCounter,
    reported: AtomicUsize,
}

static OUTPUT: OnceLock<Output> = OnceLock::new();

/// What the fmt layer writes each event into: the shared non-blocking writer,
/// preceded by a note when lines were dropped since the last one got through.
#[derive(Clone, Copy)]
struct LogWriter;

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = NonBlocking;

    fn make_writer(&'a self) -> NonBlocking {
        let Some(output) = OUTPUT.get() else {
            unreachable!("LogWriter is installed only after OUTPUT is set");
        };
        let dropped = output.dropped.dropped_lines();
        let reported = output.reported.load(Ordering::Relaxed);
        if dropped > reported
            && output
                .reported
                .compare_exchange(reported, dropped, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let mut writer = output.writer.clone();
            let _ = writeln!(
                writer,
                "rsasgi: {} log line(s) dropped because the process reading this log was not keeping up",
                dropped - reported
            );
        }
        output.writer.clone()
    }
}

/// One log line: time, level, the process's label when there is one, logger,
/// message. tracing-subscriber's own format has no place for a label, and
/// with several workers writing to one stream every line must say whose it is.
///
/// Access lines show their message only: their fields are for JSON. With an
/// `--access-log-format` the line is nothing but that message, as gunicorn
/// writes its access log, so log analysers can read it.
struct LineFormat {
    /// "worker 2 pid 1234" in a supervised worker.
    label: Option<String>,
    /// Access lines are the access format's alone.
    bare_access_lines: bool,
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
        let meta = event.metadata();
        let access = meta.target() == ACCESS;
        if access && self.bare_access_lines {
            write_message(&mut writer, event)?;
            return writeln!(writer);
        }
        let ansi = writer.has_ansi_escapes();
        SystemTime.format_time(&mut writer)?;
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

/// Installs the stderr subscriber at `level`, each line marked with the
/// label of `process`; `bare_access_lines` with a custom access format.
/// Safe to call more than once.
pub(crate) fn init(level: LogLevel, process: Process, bare_access_lines: bool) {
    OUTPUT.get_or_init(|| {
        let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(QUEUED_LINES_LIMIT)
            .thread_name("rsasgi-log")
            .finish(std::io::stderr());
        *GUARD.lock() = Some(guard);
        Output {
            dropped: writer.error_counter(),
            writer,
            reported: AtomicUsize::new(0),
        }
    });
    let _ = tracing_subscriber::fmt()
        .with_writer(LogWriter)
        .with_max_level(LevelFilter::from_level(level.as_tracing()))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .log_internal_errors(false)
        .event_format(LineFormat {
            label: process.label(),
            bare_access_lines,
        })
        .try_init();
}

/// Points stdout and stderr at `path`, appending, for `--log-file`: the
/// server's log, the app's prints and the stacks of a stuck worker all go
/// there. Called again on SIGUSR1, after logrotate has moved the file away.
pub(crate) fn redirect_output(path: &Path) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    for fd in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: dup2 onto the standard descriptors; `file` is open.
        if unsafe { libc::dup2(file.as_raw_fd(), fd) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Writes out the lines still queued (waiting at most about a second for a
/// slow reader) and stops the writer thread. Called once, before exiting;
/// later lines are dropped.
pub(crate) fn flush() {
    drop(GUARD.lock().take());
}

/// [`flush`], for the Python side before it leaves with `os._exit`.
#[pyfunction]
pub(crate) fn flush_logs(py: Python<'_>) {
    py.detach(flush);
}

/// Logs `message` at `level` ("debug", "info", "warning", "error") from Python.
#[pyfunction]
pub(crate) fn log(level: &str, message: &str) {
    match level {
        "trace" => tracing::trace!(target: SERVER, "{message}"),
        "debug" => tracing::debug!(target: SERVER, "{message}"),
        "info" => tracing::info!(target: SERVER, "{message}"),
        "warning" => tracing::warn!(target: SERVER, "{message}"),
        _ => tracing::error!(target: SERVER, "{message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_paths_become_the_server_logger() {
        assert_eq!(logger_name("rsasgi::http::service"), "rsasgi.error");
        assert_eq!(logger_name("rsasgi::supervisor"), "rsasgi.error");
        assert_eq!(logger_name("rsasgi"), "rsasgi.error");
        assert_eq!(logger_name(ACCESS), "rsasgi.access");
        assert_eq!(logger_name(WSGI_ERRORS), "wsgi.errors");
        assert_eq!(logger_name("rustls::server::hs"), "rustls::server::hs");
        assert_eq!(logger_name("rsasgix"), "rsasgix");
    }

    #[test]
    fn workers_and_the_supervisor_are_labelled() {
        let pid = std::process::id();
        assert_eq!(Process::Single.label(), None);
        assert_eq!(
            Process::Supervisor.label(),
            Some(format!("supervisor pid {pid}"))
        );
        assert_eq!(
            Process::Worker(2).label(),
            Some(format!("worker 2 pid {pid}"))
        );
    }
}
