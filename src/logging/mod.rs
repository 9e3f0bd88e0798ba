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
use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, WorkerGuard};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{Config, LogFormat};
use crate::http::access_format::AccessFormat;
use json::JsonFormat;
use line::LineFormat;

mod json;
mod line;

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
    /// The line that says how many were dropped, in the log's format.
    note: Box<dyn Fn(usize) -> String + Send + Sync>,
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
            let _ = writer.write_all((output.note)(dropped - reported).as_bytes());
        }
        output.writer.clone()
    }
}

/// Installs the subscriber that writes to stderr: `--log-level`,
/// `--log-format`, each line marked with the label of `process`. Safe to call
/// more than once.
pub(crate) fn init(config: &Config, process: Process) {
    let text = || LineFormat {
        label: process.label(),
        bare_access_lines: config.access_log_format != AccessFormat::Default,
        access_apart: false,
    };
    let note: Box<dyn Fn(usize) -> String + Send + Sync> = match config.log_format {
        LogFormat::Text => {
            let text = text();
            Box::new(move |count| text.dropped_note(count))
        }
        LogFormat::Json => {
            let json = JsonFormat { process };
            Box::new(move |count| json.dropped_note(count))
        }
    };
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
            note,
        }
    });
    let subscriber = tracing_subscriber::fmt()
        .with_writer(LogWriter)
        .with_max_level(LevelFilter::from_level(config.log_level.as_tracing()))
        .log_internal_errors(false);
    let _ = match config.log_format {
        LogFormat::Text => subscriber
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .event_format(text())
            .try_init(),
        LogFormat::Json => subscriber
            .with_ansi(false)
            .event_format(JsonFormat { process })
            .try_init(),
    };
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
pub(super) mod tests {
    use std::sync::Arc;

    use tracing_subscriber::fmt::format::{DefaultFields, FormatEvent};
    use tracing_subscriber::Registry;

    use super::*;

    /// What `format` writes for the events `log` emits.
    pub(crate) fn capture<F>(format: F, log: impl FnOnce()) -> String
    where
        F: FormatEvent<Registry, DefaultFields> + Send + Sync + 'static,
    {
        #[derive(Clone, Default)]
        struct Captured(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Captured {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .event_format(format)
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let bytes = captured.0.lock().clone();
        String::from_utf8(bytes).unwrap()
    }

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
