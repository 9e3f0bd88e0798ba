//! `--log-config FILE`: the server's lines go to Python's `logging`, through
//! the handlers the file sets up, instead of to the Rust writer.
//!
//! The subscriber turns each event into a [`Record`] and queues it; one Python
//! thread (`rsasgi._logconfig`, named `rsasgi-log`) takes the queue in batches
//! and makes `logging` records of them. So the thread that logs (the reactor,
//! a WSGI pool thread, the supervisor) never takes the GIL or waits for a
//! handler; when the handlers fall behind by [`CAPACITY`] lines, lines are
//! dropped and counted, and a warning says how many.

use std::collections::VecDeque;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyModule};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

use super::{logger_name, SERVER};

/// Lines queued for the Python thread at most.
const CAPACITY: usize = 10_000;

/// Bytes of text queued for the Python thread at most: a client chooses the
/// length of the access records that carry its headers.
const CAPACITY_BYTES: usize = 8 * 1024 * 1024;

/// How long the last flush waits for the handlers to take the queued lines.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// How long the note that a handler was stuck waits for stderr, which may
/// be the very pipe the stuck handler waits on (nobody reads it).
const NOTE_WAIT: Duration = Duration::from_secs(1);

/// One event's value, as Python will see it.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Str(String),
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
}

/// One event, waiting for the Python thread.
#[derive(Debug)]
struct Record {
    /// Seconds since the epoch, as `LogRecord.created`.
    created: f64,
    /// tracing's level as an index of `_logconfig.LEVELS`: TRACE is 0.
    level: u8,
    logger: String,
    message: String,
    fields: Vec<(&'static str, Value)>,
}

impl Record {
    /// The bytes of text it holds.
    fn size(&self) -> usize {
        let fields: usize = self
            .fields
            .iter()
            .map(|(name, value)| match value {
                Value::Str(text) => name.len() + text.len(),
                _ => name.len() + 8,
            })
            .sum();
        self.logger.len() + self.message.len() + fields
    }
}

#[derive(Default)]
struct Queue {
    records: VecDeque<Record>,
    /// The text of `records`, in bytes.
    bytes: usize,
    dropped: u64,
    /// The process is leaving: hand out what is queued, then stop.
    stopping: bool,
    /// The Python thread has taken the last lines and flushed its handlers.
    finished: bool,
}

static QUEUE: Mutex<Queue> = Mutex::new(Queue {
    records: VecDeque::new(),
    bytes: 0,
    dropped: 0,
    stopping: false,
    finished: false,
});
/// Signalled when the queue gets its first line, or stops.
static QUEUED: Condvar = Condvar::new();
/// Signalled when the Python thread has finished.
static FINISHED: Condvar = Condvar::new();
/// The Python thread runs (and the last flush must wait for it).
static RUNNING: AtomicBool = AtomicBool::new(false);
/// The Python thread did not finish within [`FLUSH_WAIT`]: a handler is stuck.
static STUCK: AtomicBool = AtomicBool::new(false);

/// The subscriber's only layer with `--log-config`.
pub(super) struct ForwardLayer;

impl<S: Subscriber> Layer<S> for ForwardLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        // Records of the `log` crate (rustls's) carry their own target.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let mut collect = Collect::default();
        event.record(&mut collect);
        push(Record {
            created: now(),
            level: level_index(*meta.level()),
            logger: logger_name(meta.target()).to_owned(),
            message: collect.message,
            fields: collect.fields,
        });
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

fn level_index(level: Level) -> u8 {
    match level {
        Level::TRACE => 0,
        Level::DEBUG => 1,
        Level::INFO => 2,
        Level::WARN => 3,
        Level::ERROR => 4,
    }
}

fn push(record: Record) {
    let size = record.size();
    let mut queue = QUEUE.lock();
    let first = queue.records.is_empty();
    // A record alone always goes, however long.
    if queue.records.len() >= CAPACITY || (!first && queue.bytes + size > CAPACITY_BYTES) {
        queue.dropped += 1;
        return;
    }
    queue.bytes += size;
    queue.records.push_back(record);
    drop(queue);
    if first {
        QUEUED.notify_one();
    }
}

/// The message and the other fields of an event.
#[derive(Default)]
struct Collect {
    message: String,
    fields: Vec<(&'static str, Value)>,
}

impl Collect {
    fn field(&mut self, field: &Field, value: Value) {
        let name = field.name();
        // `log.target` and the like: the `log` crate's metadata, used above.
        if !name.starts_with("log.") {
            self.fields.push((name, value));
        }
    }
}

impl Visit for Collect {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.field(field, Value::Str(format!("{value:?}")));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            value.clone_into(&mut self.message);
        } else {
            self.field(field, Value::Str(value.to_owned()));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, Value::UInt(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, Value::Int(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.field(field, Value::Float(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, Value::Bool(value));
    }
}

/// Applies the file (`rsasgi._logconfig.configure`) and starts the thread
/// that hands the queued lines to its handlers. The error is one line.
pub(crate) fn start(py: Python<'_>, path: &Path, level: Level) -> Result<(), String> {
    configure(py, path, level)?
        .call_method0("start")
        .map_err(|err| format!("Cannot start the --log-config thread: {err}"))?;
    RUNNING.store(true, Ordering::SeqCst);
    Ok(())
}

/// SIGUSR1 with `--log-config`: the file handlers it configured open their
/// files again (`rsasgi._logconfig.reopen`). Returns the files reopened and
/// those that failed, with why.
pub(crate) fn reopen_files() -> (Vec<String>, Vec<String>) {
    Python::attach(|py| {
        py.import("rsasgi._logconfig")
            .and_then(|module| module.call_method0("reopen"))
            .and_then(|result| result.extract::<(Vec<String>, Vec<String>)>())
            .unwrap_or_else(|err| {
                (
                    Vec::new(),
                    vec![format!("the --log-config handlers: {err}")],
                )
            })
    })
}

/// Applies the file (`--check-config` stops there); returns the module.
/// `level` is `--log-level`'s, which rsasgi's loggers take where the file
/// gives them none.
pub(crate) fn configure<'py>(
    py: Python<'py>,
    path: &Path,
    level: Level,
) -> Result<Bound<'py, PyModule>, String> {
    let module = py
        .import("rsasgi._logconfig")
        .map_err(|err| format!("Cannot load rsasgi._logconfig for --log-config: {err}"))?;
    let python_level = module
        .getattr("LEVELS")
        .and_then(|levels| levels.get_item(level_index(level)))
        .map_err(|err| format!("Cannot load rsasgi._logconfig for --log-config: {err}"))?;
    match module.call_method1("configure", (path.to_string_lossy(), python_level)) {
        Ok(_) => Ok(module),
        // A LogConfigError's message is already one line for the operator.
        Err(err) => Err(format!(
            "Cannot apply --log-config {}: {}",
            path.display(),
            err.value(py)
        )),
    }
}

/// The lines queued since the last call, as `(created, level, logger,
/// message, fields)` tuples, waiting for one if none is; `None` once the
/// process is leaving and every line has been taken.
#[pyfunction]
pub(crate) fn next_log_records(py: Python<'_>) -> PyResult<Option<Bound<'_, PyList>>> {
    let taken = py.detach(|| {
        let mut queue = QUEUE.lock();
        loop {
            if !queue.records.is_empty() || queue.dropped > 0 {
                let dropped = std::mem::take(&mut queue.dropped);
                queue.bytes = 0;
                return Some((std::mem::take(&mut queue.records), dropped));
            }
            if queue.stopping {
                return None;
            }
            QUEUED.wait(&mut queue);
        }
    });
    let Some((records, dropped)) = taken else {
        return Ok(None);
    };
    let batch = PyList::empty(py);
    for record in records {
        let fields = PyList::empty(py);
        for (name, value) in record.fields {
            let value = match value {
                Value::Str(text) => text.into_pyobject(py)?.into_any(),
                Value::Int(number) => number.into_pyobject(py)?.into_any(),
                Value::UInt(number) => number.into_pyobject(py)?.into_any(),
                Value::Float(number) => number.into_pyobject(py)?.into_any(),
                Value::Bool(flag) => flag.into_pyobject(py)?.to_owned().into_any(),
            };
            fields.append((name, value))?;
        }
        batch.append((
            record.created,
            record.level,
            record.logger,
            record.message,
            fields,
        ))?;
    }
    if dropped > 0 {
        batch.append((
            now(),
            level_index(Level::WARN),
            SERVER,
            format!(
                "{dropped} log line(s) dropped because the --log-config handlers were not \
                 keeping up"
            ),
            PyList::empty(py),
        ))?;
    }
    Ok(Some(batch))
}

/// Called by the Python thread when it has handed out the last lines and
/// flushed its handlers.
#[pyfunction]
pub(crate) fn log_records_finished() {
    QUEUE.lock().finished = true;
    FINISHED.notify_all();
}

/// The process is leaving: lets the Python thread take what is queued and
/// flush its handlers, waiting for it at most [`FLUSH_WAIT`].
pub(super) fn stop() {
    if !RUNNING.swap(false, Ordering::SeqCst) {
        return;
    }
    // Ok, or the lines still queued when the wait ended.
    let wait = || {
        let deadline = Instant::now() + FLUSH_WAIT;
        let mut queue = QUEUE.lock();
        queue.stopping = true;
        QUEUED.notify_all();
        while !queue.finished {
            if FINISHED.wait_until(&mut queue, deadline).timed_out() {
                return Err(queue.records.len() as u64 + queue.dropped);
            }
        }
        Ok(())
    };
    // The Python thread needs the GIL, which the caller may hold.
    if let Err(left) = Python::attach(|py| py.detach(wait)) {
        STUCK.store(true, Ordering::SeqCst);
        write_note(format!(
            "rsasgi: the --log-config handlers did not take the last lines within {}s (one \
             of them is stuck); leaving without them ({left} line(s) still queued)\n",
            FLUSH_WAIT.as_secs()
        ));
    }
}

/// Writes `note` to stderr if it can within [`NOTE_WAIT`], else leaves it:
/// a process on its way out must not wait for a reader that reads nothing.
/// The write happens on a thread of its own, which may stay blocked until
/// the process exits; it writes to the descriptor, bypassing std's stderr
/// lock, so nothing else waits behind it.
fn write_note(note: String) {
    let (written, wait) = std::sync::mpsc::channel();
    let writer = std::thread::Builder::new()
        .name("rsasgi-log-note".into())
        .spawn(move || {
            let mut rest = note.as_bytes();
            while !rest.is_empty() {
                // SAFETY: writes from a live buffer to stderr, which stays
                // open for the life of the process.
                let count =
                    unsafe { libc::write(libc::STDERR_FILENO, rest.as_ptr().cast(), rest.len()) };
                if count > 0 {
                    rest = rest.get(count.unsigned_abs()..).unwrap_or_default();
                } else if count == 0
                    || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
                {
                    break;
                }
            }
            let _ = written.send(());
        });
    if writer.is_ok() {
        let _ = wait.recv_timeout(NOTE_WAIT);
    }
}

/// A handler was stuck when the process was leaving.
pub(crate) fn stuck() -> bool {
    STUCK.load(Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The queue is the process's: one test at a time uses it.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn collected(log: impl FnOnce()) -> Vec<Record> {
        let _serial = SERIAL.lock();
        let subscriber = tracing_subscriber::layer::SubscriberExt::with(
            tracing_subscriber::Registry::default(),
            ForwardLayer,
        );
        QUEUE.lock().records.clear();
        tracing::subscriber::with_default(subscriber, log);
        QUEUE.lock().records.drain(..).collect()
    }

    #[test]
    fn an_event_becomes_a_record_with_its_fields() {
        let records = collected(|| {
            tracing::info!(
                target: "rsasgi.access",
                method = "GET",
                status = 200u64,
                duration = 0.25,
                negative = -3i64,
                ok = true,
                "GET / 200"
            );
            tracing::warn!(target: "rsasgi::http::service", client = ?"1.2.3.4", "slow");
        });
        assert_eq!(records.len(), 2);
        let access = &records[0];
        assert_eq!(
            (
                access.level,
                access.logger.as_str(),
                access.message.as_str()
            ),
            (2, "rsasgi.access", "GET / 200")
        );
        assert_eq!(
            access.fields,
            vec![
                ("method", Value::Str("GET".into())),
                ("status", Value::UInt(200)),
                ("duration", Value::Float(0.25)),
                ("negative", Value::Int(-3)),
                ("ok", Value::Bool(true)),
            ]
        );
        let server = &records[1];
        assert_eq!(
            (
                server.level,
                server.logger.as_str(),
                server.message.as_str()
            ),
            (3, "rsasgi.error", "slow")
        );
        assert_eq!(
            server.fields,
            vec![("client", Value::Str("\"1.2.3.4\"".into()))]
        );
    }

    #[test]
    fn lines_past_the_capacity_are_counted_not_queued() {
        let _serial = SERIAL.lock();
        QUEUE.lock().records.clear();
        let record = || Record {
            created: 0.0,
            level: 2,
            logger: SERVER.to_owned(),
            message: String::new(),
            fields: Vec::new(),
        };
        for _ in 0..CAPACITY + 3 {
            push(record());
        }
        let mut queue = QUEUE.lock();
        assert_eq!((queue.records.len(), queue.dropped), (CAPACITY, 3));
        queue.records.clear();
        queue.bytes = 0;
        queue.dropped = 0;
        drop(queue);
        // In bytes too: a long record alone goes, then those that fit.
        let long = |len: usize| Record {
            message: "x".repeat(len),
            ..record()
        };
        push(long(CAPACITY_BYTES * 2));
        push(long(1));
        let mut queue = QUEUE.lock();
        assert_eq!((queue.records.len(), queue.dropped), (1, 1));
        queue.records.clear();
        queue.bytes = 0;
        queue.dropped = 0;
    }
}
