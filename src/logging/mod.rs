//! Server logging through `tracing`: logger names, the process label, text
//! or JSON lines (`line`, `json`), where they go (`output`: never blocking
//! the reactor), reopening on SIGUSR1, and the bridge that lets the Python
//! side of the worker log into the same stream.

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::config::{Config, LogFormat};
use crate::http::access_format::AccessFormat;
use json::JsonFormat;
use line::LineFormat;
pub(crate) use output::AccessDestination;
use output::{DroppedNote, Output, Outputs};

mod clock;
pub(crate) mod digits;
pub(crate) mod forward;
mod json;
mod line;
mod output;

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

static OUTPUTS: OnceLock<Outputs> = OnceLock::new();

/// Installs the subscriber: `--log-level`, `--log-format`, each line marked
/// with the label of `process`, written to stderr, access lines to
/// `--access-logfile` when given. Safe to call more than once. An error when
/// the access log cannot be opened (logging to stderr works then).
pub(crate) fn init(config: &Config, process: Process) -> Result<(), String> {
    let level = LevelFilter::from_level(config.log_level.as_tracing());
    if config.log_config.is_some() {
        // Every line goes to Python's logging (see `forward`), which
        // [`forward::start`] sets up next; until then lines wait in its queue.
        let _ = tracing_subscriber::registry()
            .with(
                forward::ForwardLayer
                    .with_filter(quiet_peers(Targets::new().with_default(level), level)),
            )
            .try_init();
        return Ok(());
    }
    let access_destination = config
        .access_log_file
        .as_ref()
        .filter(|_| config.access_log);
    let text = || LineFormat {
        label: process.label(),
        bare_access_lines: config.access_log_format != AccessFormat::Default,
        access_apart: access_destination.is_some(),
    };
    let note = || -> DroppedNote {
        match config.log_format {
            LogFormat::Text => {
                let text = text();
                Box::new(move |count| text.dropped_note(count))
            }
            LogFormat::Json => {
                let json = JsonFormat { process };
                Box::new(move |count| json.dropped_note(count))
            }
        }
    };
    let mut result = Ok(());
    let outputs = OUTPUTS.get_or_init(|| {
        let server = Output::stderr(note());
        let access =
            access_destination.and_then(|destination| match Output::access(destination, note()) {
                // Lines in the operator's format: the note goes to the
                // server log, saying what it counts.
                Ok(output) if config.log_format == LogFormat::Text && text().bare_access_lines => {
                    let text = text();
                    let note: DroppedNote = Box::new(move |count| text.access_dropped_note(count));
                    Some(output.note_to(&server, note))
                }
                Ok(output) => Some(output),
                Err(err) => {
                    let name = match destination {
                        AccessDestination::File(path) => path.display().to_string(),
                        AccessDestination::Stdout => "-".into(),
                    };
                    result = Err(format!("Cannot open --access-logfile {name}: {err}"));
                    None
                }
            });
        Outputs { server, access }
    });
    // Access lines sent to a destination of their own are what was asked
    // for there, as with gunicorn's --access-logfile: --log-level is the
    // server log's. With the server log, they follow its level, as with
    // uvicorn's.
    let mut filter = quiet_peers(Targets::new().with_default(level), level);
    let mut most_verbose = level;
    if access_destination.is_some() && level < LevelFilter::INFO {
        filter = filter.with_target(ACCESS, LevelFilter::INFO);
        most_verbose = LevelFilter::INFO;
    }
    // Also the level below which tracing's macros skip an event at once.
    let subscriber = tracing_subscriber::fmt()
        .with_writer(outputs)
        .with_max_level(most_verbose)
        .log_internal_errors(false);
    let _ = match config.log_format {
        LogFormat::Text => subscriber
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .event_format(text())
            .finish()
            .with(filter)
            .try_init(),
        LogFormat::Json => subscriber
            .with_ansi(false)
            .event_format(JsonFormat { process })
            .finish()
            .with(filter)
            .try_init(),
    };
    result
}

/// Below `--log-level debug`, nothing of rustls's, h2's or notify's own
/// lines. rustls and h2 warn of what a peer did (an IP address as SNI, a
/// renegotiation, a PING acknowledgement never asked for), so any client
/// could write a warning line per connection, naming neither itself nor
/// anything to do; rsasgi says what matters of a failed handshake or stream
/// itself, at debug. notify (`--reload`'s watcher) warns of its own
/// bookkeeping, a line for each directory of a tree removed; rsasgi says
/// what the operator can act on (a watched directory gone, a limit reached).
fn quiet_peers(filter: Targets, level: LevelFilter) -> Targets {
    if level >= LevelFilter::DEBUG {
        return filter;
    }
    filter
        .with_target("rustls", LevelFilter::OFF)
        .with_target("h2", LevelFilter::OFF)
        .with_target("notify", LevelFilter::OFF)
}

/// Points stderr and stdout at `path`, appending, for `--error-logfile`
/// (`--log-file`): the server's log, the app's prints and the stacks of a
/// stuck worker all go there. Stdout stays as it is when `--access-logfile -`
/// claims it for access lines. Called again on SIGUSR1, after logrotate has
/// moved the file away.
pub(crate) fn redirect_output(path: &Path, config: &Config) -> std::io::Result<()> {
    let file = output::open_appending(path)?;
    if config.access_log_file != Some(AccessDestination::Stdout) {
        output::put_in_place(&file, libc::STDOUT_FILENO)?;
    }
    output::put_in_place(&file, libc::STDERR_FILENO)
}

/// Whether `path` can be opened as `--log-file` (the check of `--daemon`,
/// which must fail before its outputs are gone).
pub(crate) fn check_output(path: &Path) -> std::io::Result<()> {
    output::open_appending(path).map(drop)
}

/// SIGUSR1: opens `--error-logfile` and `--access-logfile` again (logrotate
/// has moved them away), and says so in the log, in the new files.
pub(crate) fn reopen(config: &Config) {
    let mut reopened = Vec::new();
    let mut failed = Vec::new();
    if let Some(path) = &config.log_file {
        match redirect_output(path, config) {
            Ok(()) => reopened.push(format!("--log-file {}", path.display())),
            Err(err) => failed.push(format!("--log-file {}: {err}", path.display())),
        }
    }
    if config.log_config.is_some() {
        let (files, failures) = forward::reopen_files();
        reopened.extend(files);
        failed.extend(failures);
    }
    let access = OUTPUTS.get().and_then(|outputs| outputs.access.as_ref());
    if let Some((path, result)) = access.and_then(Output::reopen) {
        match result {
            Ok(()) => reopened.push(format!("--access-logfile {}", path.display())),
            Err(err) => failed.push(format!("--access-logfile {}: {err}", path.display())),
        }
    }
    if reopened.is_empty() && failed.is_empty() {
        let goes_to = if config.log_config.is_some() {
            "--log-config has no file handler with a file open"
        } else {
            "the log goes to stderr"
        };
        tracing::info!("Received SIGUSR1: no log file to reopen ({goes_to})");
    }
    if !reopened.is_empty() {
        tracing::info!("Received SIGUSR1: reopened {}", reopened.join(" and "));
    }
    for failure in failed {
        tracing::error!(
            "Received SIGUSR1 but cannot reopen {failure}; still writing to the old file"
        );
    }
}

/// Gives the log files to the account the app runs as (`--user`), so that
/// its workers can open them again on SIGUSR1, as gunicorn does. Only a
/// regular file of ours with one name: `/dev/null`, a FIFO, another owner's
/// file or a hard link to one is left as it is.
pub(crate) fn hand_files_to(config: &Config, uid: libc::uid_t, gid: libc::gid_t) {
    if let Some(path) = config
        .log_file
        .as_ref()
        .filter(|_| output::may_hand_over(libc::STDERR_FILENO))
    {
        // SAFETY: fchown on stderr, which --error-logfile made the file.
        if unsafe { libc::fchown(libc::STDERR_FILENO, uid, gid) } != 0 {
            let err = std::io::Error::last_os_error();
            tracing::debug!(
                "cannot give --log-file {} to the app's account: {err}",
                path.display()
            );
        }
    }
    let access = OUTPUTS.get().and_then(|outputs| outputs.access.as_ref());
    if let Some((path, Err(err))) = access.and_then(|access| access.chown(uid, gid)) {
        tracing::debug!(
            "cannot give --access-logfile {} to the app's account: {err}",
            path.display()
        );
    }
}

/// How long [`flush`] waits for the writer threads. Each guard waits up to
/// 1.1 s for its thread; they are dropped at the same time.
const FLUSH_WAIT: Duration = Duration::from_millis(1500);

/// Writes out the lines still queued (waiting at most about a second for a
/// slow reader) and stops the writer threads. Called once, before exiting;
/// later lines are dropped.
///
/// The guards are dropped on threads of their own: when its writer thread
/// does not take the shutdown in time (its reader stalled with the queue
/// full), tracing-appender's guard says so with `println!`, which blocks
/// for good on a stalled stdout and panics on a closed one. The process
/// must leave either way; such a thread is left behind.
pub(crate) fn flush() {
    forward::stop();
    let guards = std::mem::take(&mut *output::GUARDS.lock());
    let (dropped, wait) = std::sync::mpsc::channel();
    let mut waiting = 0;
    for guard in guards {
        let dropped = dropped.clone();
        let spawned = std::thread::Builder::new()
            .name("rsasgi-log-flush".into())
            .spawn(move || {
                drop(guard);
                let _ = dropped.send(());
            });
        // If no thread could start, the guard went with the closure.
        waiting += usize::from(spawned.is_ok());
    }
    let deadline = Instant::now() + FLUSH_WAIT;
    for _ in 0..waiting {
        let left = deadline.saturating_duration_since(Instant::now());
        if wait.recv_timeout(left).is_err() {
            break;
        }
    }
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

    use parking_lot::Mutex;
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
