//! One worker: the reactor thread plus the Python side that runs the app.
//!
//! The worker's lifetime (load the app, run lifespan, serve until a signal,
//! shut down) is driven from `python/rsasgi/_worker.py`, which calls into the
//! [`Worker`] object below. A supervisor that runs several workers only has
//! to start several processes, each building its own `Worker`.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use tokio::sync::watch;

use crate::asgi::http::CREATE_FUTURE;
use crate::asgi::scope::ScopeContext;
use crate::asgi::{Dispatcher, Event, EventBridge, Spawn};
use crate::bridge::mark_reactor_thread;
use crate::config::{Config, EventLoop, Interface, Lifespan};
use crate::config_file;
use crate::http::{serve, ServerState};
use crate::loading_stop::{LoadingStopWatch, BLOCKED_STOP_WAIT};
use crate::metrics::process::ProcessStats;
use crate::metrics::{self, Health, Report, Scrape, WorkerReport};
use crate::net::{self, Listener};
use crate::stacks::{self, StackFile};
use crate::supervisor::balance::{Balance, WorkerSeat};
use crate::supervisor::pid_file::{self, PidFile};
use crate::supervisor::privileges::Credentials;
use crate::supervisor::systemd::Notifier;
use crate::supervisor::{self, handoff, interpreter, Handoff, Slot};
use crate::wake::{deliver_wakes, mark_loop_thread, CALL_SOON, REACTOR_WAKES};
use crate::wsgi::{Pool, THREADS_WARNING};

// A worker's graceful stop. `--timeout-graceful-shutdown`, counted from the
// signal, covers the connections and the app's work still running once its
// connection has closed (a BackgroundTask after the response, a WSGI
// iterable's `close()`): both are waited for until it ends. The steps after
// it are each bounded (their Python side is `rsasgi._worker`, which takes
// these values from here), and a supervisor waits for all of them before it
// kills a stopping worker.

/// How long the request tasks still running get, at least, once the last
/// connection has closed (those the grace period's end cut off see the
/// disconnect), before they are cancelled; what is left of the grace
/// period, when that is more.
pub(crate) const REQUEST_TASKS_WAIT: Duration = Duration::from_secs(1);

/// How long cancelled request tasks get for their clean-up (an `except
/// CancelledError` that rolls a transaction back) before the worker goes on.
pub(crate) const CANCELLED_TASKS_WAIT: Duration = Duration::from_secs(5);

/// How long the WSGI threads still running get, at least, once the last
/// connection has closed (their clients are gone, so they stop at their
/// next write), before the worker leaves without them; what is left of the
/// grace period, when that is more.
pub(crate) const WSGI_THREADS_WAIT: Duration = Duration::from_secs(5);

/// How long the lifespan shutdown (closing database pools, flushing queues)
/// gets, at least, before the worker cancels it and exits; a supervisor
/// allows it after the bounded steps above, so it gets what those left
/// unused too (all of the grace period, with no connection open).
pub(crate) const LIFESPAN_SHUTDOWN_ALLOWANCE: Duration = Duration::from_secs(5);

/// How long a stopping worker waits, once its connections are closed, for
/// file reads still running on the reactor's blocking pool (their
/// responses are gone): a read from the page cache or a disk ends within
/// it; one on a hung filesystem would never end.
const FILE_READS_WAIT: Duration = Duration::from_secs(1);

/// How long a worker's graceful stop may run beyond
/// `--timeout-graceful-shutdown`: its longest bounded steps (an ASGI app's
/// request tasks, after the reactor's close handshake with the WebSockets
/// still open, or a WSGI app's threads), then the lifespan shutdown. The
/// app's work waited for within the grace period adds nothing: the waits
/// after the last connection closed end at the grace period's end or at
/// these bounds, whichever comes later.
pub(crate) fn stop_after_grace() -> Duration {
    let asgi = crate::http::WEBSOCKET_CLOSE_WAIT + REQUEST_TASKS_WAIT + CANCELLED_TASKS_WAIT;
    asgi.max(WSGI_THREADS_WAIT) + LIFESPAN_SHUTDOWN_ALLOWANCE
}

/// Adds the waits of the stop above to the extension module, in seconds,
/// for `rsasgi._worker`, with their sum `STOP_AFTER_GRACE`: the lifespan
/// shutdown gets what the steps before it left of that.
pub(crate) fn add_stop_waits(module: &Bound<'_, PyModule>) -> PyResult<()> {
    for (name, wait) in [
        ("REQUEST_TASKS_WAIT", REQUEST_TASKS_WAIT),
        ("CANCELLED_TASKS_WAIT", CANCELLED_TASKS_WAIT),
        ("WSGI_THREADS_WAIT", WSGI_THREADS_WAIT),
        ("LIFESPAN_SHUTDOWN_ALLOWANCE", LIFESPAN_SHUTDOWN_ALLOWANCE),
        ("STOP_AFTER_GRACE", stop_after_grace()),
        ("BLOCKED_STOP_WAIT", BLOCKED_STOP_WAIT),
    ] {
        module.add(name, wait.as_secs_f64())?;
    }
    Ok(())
}

/// Loads `--env-file` into `os.environ` (Python's copy of the environment),
/// leaving variables that are already set alone.
pub(crate) fn load_env_file(py: Python<'_>, path: &std::path::Path) -> Result<(), String> {
    let shown = path.display();
    let entries = dotenvy::from_path_iter(path)
        .map_err(|err| format!("Cannot read --env-file {shown}: {err}"))?;
    let environ = py
        .import("os")
        .and_then(|os| os.getattr("environ"))
        .map_err(|err| err.to_string())?;
    for entry in entries {
        let (key, value) = entry.map_err(|err| env_file_error(path, err))?;
        let present = environ.contains(&key).map_err(|err| err.to_string())?;
        if !present {
            environ
                .set_item(key, value)
                .map_err(|err| err.to_string())?;
        }
    }
    Ok(())
}

/// What is wrong with `--env-file`, by its line number. dotenvy gives the
/// rest of the line from where its parsing failed (the value, for
/// `KEY=two words`), and a place within that which reads like a line number.
fn env_file_error(path: &std::path::Path, err: dotenvy::Error) -> String {
    let shown = path.display();
    let dotenvy::Error::LineParse(rest, _) = &err else {
        return format!("Cannot parse --env-file {shown}: {err}");
    };
    let rest = rest.lines().next().unwrap_or_default().trim();
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let Some((index, line)) = text
        .lines()
        .enumerate()
        .find(|(_, line)| !line.trim_start().starts_with('#') && line.contains(rest))
    else {
        return format!("Cannot parse --env-file {shown}: {err}");
    };
    let number = index + 1;
    // `KEY=two words`: python-dotenv, Docker and systemd take it; dotenvy
    // wants the value quoted.
    let unquoted_spaces = line.split_once('=').is_some_and(|(key, value)| {
        let value = value.trim();
        !key.trim().is_empty()
            && !key.trim().contains(char::is_whitespace)
            && !value.starts_with(['"', '\''])
            && value.contains(char::is_whitespace)
    });
    let hint = if unquoted_spaces {
        "a value with spaces must be quoted (KEY=\"two words\")"
    } else {
        "each line must be KEY=VALUE, a comment (#) or blank"
    };
    format!(
        "Cannot parse --env-file {shown}, line {number}: {:?}: {hint}",
        line.trim()
    )
}

/// Where a worker's listening sockets come from.
pub(crate) enum Sockets {
    /// Started by a supervisor: the sockets it inherited.
    Handoff(Handoff),
    /// On its own (or for a supervisor): binds them itself.
    Own(Own),
}

/// What the main process starts with: the sockets systemd passed (if any;
/// else they are bound from the config), and the account to switch to once
/// they are bound.
pub(crate) struct Own {
    pub activated: Vec<OwnedFd>,
    pub credentials: Option<Credentials>,
}

/// Runs one worker until it stops; returns the exit code. `notifier` tells
/// systemd when it serves and stops (it does nothing under a supervisor,
/// whose workers are started without `NOTIFY_SOCKET`).
pub(crate) fn run(
    py: Python<'_>,
    config: Config,
    sockets: Sockets,
    notifier: Notifier,
) -> PyResult<i32> {
    // Python copied the environment at startup; the app must not see what
    // the supervisor handed down, nor a subprocess it starts inherit it.
    let environ = py.import("os")?.getattr("environ")?;
    for variable in [
        handoff::VARIABLE,
        config_file::INHERITED_VARIABLE,
        interpreter::PATH_VARIABLE,
    ] {
        environ.call_method1("pop", (variable, py.None()))?;
    }
    // Whatever stops a worker before it serves (a missing --env-file, a
    // TLS key its --user cannot read) stops the next one the same way: it is
    // a boot failure, which the supervisor does not restart for ever.
    let cannot_start = match sockets {
        Sockets::Handoff(_) => supervisor::EXIT_BOOT_FAILURE,
        Sockets::Own(_) => 1,
    };
    if let Sockets::Handoff(handoff) = &sockets {
        // Before the slot is mapped: its layout is the supervisor's build's.
        // The supervisor stops once no worker serves (a service manager then
        // starts the new build), or keeps the old workers serving.
        if let Err(message) = handoff.check_build() {
            tracing::error!("{message}");
            return Ok(cannot_start);
        }
    }
    if let Some(path) = &config.env_file {
        if let Err(message) = load_env_file(py, path) {
            tracing::error!("{message}");
            return Ok(cannot_start);
        }
    }
    // Imported before --user takes effect: the account the app runs as may
    // not be able to read the interpreter's own files.
    let run = py.import("rsasgi._worker")?.getattr("run")?;
    let mut pid_file = None;
    let mut metrics_listener = None;
    let owner = match &sockets {
        Sockets::Own(own) => own.credentials.as_ref().map(Credentials::socket_owner),
        Sockets::Handoff(_) => None,
    };
    let (listeners, handoff) = match sockets {
        Sockets::Handoff(handoff) => (net::inherit_all(&handoff.listener_fds), Some(handoff)),
        Sockets::Own(own) => (
            net::listen(&config.binds, config.bind_options(owner), own.activated).and_then(
                // On an error, `listeners` are dropped: their files removed.
                |listeners| {
                    if let Some(path) = &config.pid_file {
                        pid_file = Some(PidFile::write(path)?);
                    }
                    // Without --workers this process answers the scrapes;
                    // bound before --user, like the other sockets.
                    if let Some(bind) = &config.metrics_bind {
                        metrics_listener = Some(bind.listen()?);
                    }
                    if let Some(credentials) = &own.credentials {
                        crate::logging::hand_files_to(&config, credentials.uid, credentials.gid);
                        credentials.apply().map_err(|err| {
                            format!(
                                "Cannot switch to --user/--group {}: {err}",
                                credentials.description
                            )
                        })?;
                        tracing::info!("Running as {}", credentials.description);
                    }
                    Ok(listeners)
                },
            ),
            None,
        ),
    };
    let listeners = match listeners {
        Ok(listeners) => listeners,
        Err(message) => {
            tracing::error!("{message}");
            return Ok(cannot_start);
        }
    };
    // Where faulthandler writes the Python stacks, to be logged as one event
    // (by the supervisor when the loop is stuck, by the reactor for a WSGI
    // thread past --timeout-request, by this process when its boot passes
    // its --timeout-worker-boot); without it they go to stderr.
    let stacks = match &handoff {
        Some(handoff) => handoff.stacks.map(StackFile::inherit),
        None if config.timeout_request.is_some()
            || config.supervision.timeout_worker_boot.is_some() =>
        {
            Some(StackFile::create())
        }
        None => None,
    }
    .and_then(|file| {
        file.inspect_err(|err| {
            tracing::warn!("Cannot use a file for Python stack dumps ({err}): they go to stderr");
        })
        .ok()
    })
    .map(Arc::new);
    let supervised = match handoff {
        Some(handoff) => match Slot::inherit(handoff.slot_fd) {
            Ok(slot) => Some(Supervised {
                speaks_for_all: handoff.speaks_for_all,
                slot: Arc::new(slot),
                supervisor: Arc::new(SupervisorLink {
                    pid: handoff.supervisor_pid,
                    gone: AtomicBool::new(false),
                }),
                workers: handoff.workers,
                seat: handoff.balance.and_then(|(fd, index)| {
                    // Serving matters more: without a seat this worker
                    // accepts connections as they come.
                    let table = Balance::inherit(fd)
                        .inspect_err(|err| tracing::warn!("Cannot map the connection table: {err}"))
                        .ok()?;
                    let seat = Arc::new(table).seat(index);
                    if seat.is_none() {
                        tracing::warn!("The connection table has no seat {index}");
                    }
                    seat.map(Arc::new)
                }),
            }),
            Err(err) => {
                tracing::error!("Cannot map the slot the supervisor handed down: {err}");
                return Ok(cannot_start);
            }
        },
        None => None,
    };
    // Under a supervisor the counters go in the slot it reads; on its own
    // this process keeps them in a slot of its own, read by itself.
    let metrics = match &supervised {
        _ if config.metrics_bind.is_none() => None,
        Some(supervised) => Some(Arc::clone(&supervised.slot)),
        None => match Slot::create() {
            Ok(slot) => Some(Arc::new(slot)),
            Err(err) => {
                tracing::error!("Cannot create the memory for --metrics-bind: {err}");
                return Ok(cannot_start);
            }
        },
    };
    let metrics = Metrics {
        slot: metrics,
        listener: Mutex::new(metrics_listener),
        last_beat: Mutex::new(None),
    };
    let worker = match Worker::new(config, listeners, supervised, notifier, metrics, stacks) {
        Ok(worker) => Py::new(py, worker)?,
        Err(err) => {
            tracing::error!("Cannot create the worker's event channel: {err}");
            return Ok(cannot_start);
        }
    };
    let code = run
        .call1((worker.clone_ref(py),))
        .and_then(|code| code.extract());
    // However run() ended: an exception out of it (a stop signal as it
    // returned) leaves the socket files too.
    worker.get().close_unserved_listeners();
    drop(pid_file);
    code
}

/// `--metrics-bind` in a worker.
struct Metrics {
    /// The slot whose counters this worker keeps.
    slot: Option<Arc<Slot>>,
    /// Without `--workers`: the listener this process serves the scrapes
    /// on, until the reactor takes it.
    listener: Mutex<Option<std::net::TcpListener>>,
    /// When the event loop last ran its heartbeat, for its lag.
    last_beat: Mutex<Option<Instant>>,
}

/// What a worker started by a supervisor has beyond its config.
struct Supervised {
    /// See [`Handoff::speaks_for_all`].
    speaks_for_all: bool,
    slot: Arc<Slot>,
    supervisor: Arc<SupervisorLink>,
    workers: usize,
    seat: Option<Arc<WorkerSeat>>,
}

/// The supervisor that started this worker, which is its parent process.
struct SupervisorLink {
    pid: u32,
    /// Set once this worker has noticed that the supervisor is gone.
    gone: AtomicBool,
}

impl SupervisorLink {
    /// Whether the supervisor is gone (killed with -9, it could not stop its
    /// workers): this process then has another parent. Logged once, by
    /// whichever asks first (the event loop at its heartbeat, the reactor).
    fn is_gone(&self) -> bool {
        if self.gone.load(Ordering::Relaxed) {
            return true;
        }
        if std::os::unix::process::parent_id() == self.pid && !main_thread_exited(self.pid) {
            return false;
        }
        if !self.gone.swap(true, Ordering::Relaxed) {
            tracing::warn!("The supervisor (pid {}) is gone; shutting down", self.pid);
        }
        true
    }
}

/// Whether the main thread of process `pid` has exited while another of its
/// threads lives on. The kernel's SIGTERM for the supervisor's death
/// (`PR_SET_PDEATHSIG`) comes as the supervisor's main thread, which started
/// the worker, exits; the worker is then handed to the supervisor's log
/// thread, still ending, so that its parent is still the supervisor's pid for
/// a moment. A live supervisor's main thread is never a zombie.
fn main_thread_exited(pid: u32) -> bool {
    match std::fs::read(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the command's closing parenthesis: "pid (comm) S ...".
            let state = stat
                .iter()
                .rposition(|&byte| byte == b')')
                .and_then(|end| stat.get(end + 2));
            matches!(state, Some(b'Z' | b'X'))
        }
        // Any other failure (out of file descriptors) tells nothing.
        Err(err) => err.kind() == std::io::ErrorKind::NotFound,
    }
}

/// How often the reactor checks that the supervisor is still there.
const SUPERVISOR_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Runs on the reactor of a worker whose supervisor may die with -9. The
/// kernel then sends the worker SIGTERM, and its event loop notices the new
/// parent at its next heartbeat; either stops it gracefully. But both need
/// the loop to run, and an app that blocks it (`time.sleep` in an async
/// view) would keep the worker, and the listening sockets with it, for
/// ever. So the reactor, once it sees the supervisor gone, begins the
/// graceful stop itself (it stops accepting and closes its listeners at
/// once, so that a new server can take the port, then drains), and the
/// process leaves when such a stop would be over (the deadline the
/// supervisor would have set), whether the loop came back or not.
async fn leave_when_orphaned(
    supervisor: Arc<SupervisorLink>,
    shutdown: watch::Sender<Option<Duration>>,
    grace: Duration,
) {
    let mut checks = tokio::time::interval(SUPERVISOR_CHECK_INTERVAL);
    checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        checks.tick().await;
        if supervisor.is_gone() {
            break;
        }
    }
    shutdown.send_if_modified(|stop| {
        let begins = stop.is_none();
        stop.get_or_insert(grace);
        begins
    });
    let deadline = grace + stop_after_grace();
    let leave = move || {
        std::thread::sleep(deadline);
        tracing::error!(
            "Still running {}s after the supervisor died: the app blocks the event loop; exiting",
            deadline.as_secs_f64()
        );
        crate::logging::flush();
        // SAFETY: ends the process at once; nothing is touched after.
        unsafe { libc::_exit(1) }
    };
    // A thread of its own: the reactor ends with the drain.
    if let Err(err) = std::thread::Builder::new()
        .name("rsasgi-orphaned".into())
        .spawn(leave)
    {
        tracing::warn!(
            "Cannot start the thread that ends this worker if its loop stays blocked: {err}"
        );
    }
}

#[pyclass(module = "rsasgi", frozen)]
pub(crate) struct Worker {
    config: Arc<Config>,
    bridge: Arc<EventBridge>,
    listeners: Mutex<Option<Vec<Listener>>>,
    supervised: Option<Supervised>,
    notifier: Notifier,
    /// When the systemd watchdog was last told we are alive.
    watchdog_sent: Mutex<Option<Instant>>,
    shutdown: watch::Sender<Option<Duration>>,
    reactor: Mutex<Option<JoinHandle<()>>>,
    wsgi_pool: Mutex<Option<Arc<Pool>>>,
    /// Set once the loop is running; handles what the reactor sends.
    dispatcher: OnceLock<Dispatcher>,
    metrics: Metrics,
    /// Where faulthandler writes the Python stacks (none: to stderr).
    stacks: Option<Arc<StackFile>>,
    /// While one process imports the app, or runs its lifespan startup:
    /// ends it when a stop signal goes unanswered (a call into C code).
    loading_stop: Mutex<Option<LoadingStopWatch>>,
    /// Until the worker starts serving.
    boot: Arc<Boot>,
}

/// A worker's boot: its import, its event loop's start and its lifespan
/// startup, until it starts serving.
struct Boot {
    started: Instant,
    /// Set once it serves (or fails to), under the lock that a boot past
    /// `--timeout-worker-boot` holds until the process has left.
    over: Mutex<bool>,
    ended: Condvar,
}

impl Worker {
    /// Closes the listening sockets of a worker that never served (stopped
    /// or failed while the app loaded, or during its lifespan startup), and
    /// so removes the socket files it made for `--uds`: the reactor, which
    /// does that as it stops accepting, never ran.
    fn close_unserved_listeners(&self) {
        drop(self.listeners.lock().take());
    }

    /// The heartbeat's interval ([`Worker::heartbeat_interval`]), zero
    /// when nothing listens to it.
    fn beat_interval(&self) -> Duration {
        self.heartbeat_interval()
            .map_or(Duration::ZERO, Duration::from_secs_f64)
    }

    fn new(
        config: Config,
        listeners: Vec<Listener>,
        supervised: Option<Supervised>,
        notifier: Notifier,
        metrics: Metrics,
        stacks: Option<Arc<StackFile>>,
    ) -> std::io::Result<Worker> {
        Ok(Worker {
            config: Arc::new(config),
            bridge: Arc::new(EventBridge::new()?),
            listeners: Mutex::new(Some(listeners)),
            supervised,
            notifier,
            watchdog_sent: Mutex::new(None),
            shutdown: watch::channel(None).0,
            reactor: Mutex::new(None),
            wsgi_pool: Mutex::new(None),
            dispatcher: OnceLock::new(),
            metrics,
            stacks,
            loading_stop: Mutex::new(None),
            boot: Arc::new(Boot {
                started: Instant::now(),
                over: Mutex::new(false),
                ended: Condvar::new(),
            }),
        })
    }

    /// Watches `signals` while Python cannot act on them (see
    /// [`LoadingStopWatch`]): `say` explains, from the watch's thread, why
    /// the process leaves without it.
    fn watch_blocked_stop(
        slf: &Bound<'_, Self>,
        signals: &[i32],
        while_: &str,
        say: impl FnOnce(&Worker, &str) + Send + 'static,
    ) {
        let worker = slf.clone().unbind();
        let leave = move |signal: &str| {
            let worker = worker.get();
            say(worker, signal);
            worker.leave_unserved(0);
        };
        match LoadingStopWatch::start(signals, BLOCKED_STOP_WAIT, leave) {
            Ok(watch) => *slf.get().loading_stop.lock() = Some(watch),
            Err(err) => tracing::warn!(
                "Cannot watch the stop signals while {while_} ({err}): a call into C code \
                 there ignores them until it returns"
            ),
        }
    }

    /// Ends a process that never served, at once, with `code`: its `--uds`
    /// socket files and `--pid` file removed, its log written.
    fn leave_unserved(&self, code: i32) -> ! {
        self.close_unserved_listeners();
        if let Some(path) = &self.config.pid_file {
            pid_file::remove_ours(path);
        }
        crate::logging::flush();
        // SAFETY: ends the process at once; nothing is touched after.
        unsafe { libc::_exit(code) }
    }

    /// `--timeout-worker-boot` when this process must time its own boot:
    /// no supervisor does, and it was given (its default is a supervisor's,
    /// and must not end a single process that boots slowly).
    fn boot_deadline(&self) -> Option<Duration> {
        self.supervised
            .is_none()
            .then_some(self.config.supervision.timeout_worker_boot)
            .flatten()
    }

    /// The boot is over: the worker starts serving, or fails to.
    fn end_boot(&self) {
        *self.boot.over.lock() = true;
        self.boot.ended.notify_all();
    }
}

pub(crate) fn name_of<T: clap::ValueEnum>(value: T) -> String {
    value
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}

#[pymethods]
impl Worker {
    /// Called as one process starts to import the app, with the signals
    /// that stop it then: one that Python has not acted on
    /// `BLOCKED_STOP_WAIT` later (the import is in C code, where Python
    /// handlers wait for the call to return) ends the process, its `--pid`
    /// and `--uds` files removed, as the signal's default action did.
    fn watch_loading_stop(slf: &Bound<'_, Self>, signals: Vec<i32>) {
        Worker::watch_blocked_stop(slf, &signals, "the app is imported", |worker, signal| {
            tracing::warn!(
                "Stopped by {signal} while importing {}, before serving: the import had not \
                 returned {}s after the signal (it is in C code, which Python's signal handlers \
                 wait for); exiting now",
                worker.config.app,
                BLOCKED_STOP_WAIT.as_secs_f64()
            );
        });
    }

    /// Called as one process starts its lifespan startup, once the event
    /// loop has its handlers for `signals`: as for the import, one that the
    /// loop has not acted on `BLOCKED_STOP_WAIT` later (the startup blocks
    /// it, in a call into C code that Python's handlers wait for too) ends
    /// the process. Not in a supervisor's worker, whose stop deadline
    /// bounds it, with its stacks logged.
    fn watch_startup_stop(slf: &Bound<'_, Self>, signals: Vec<i32>) {
        Worker::watch_blocked_stop(slf, &signals, "the application starts", |_, signal| {
            tracing::warn!(
                "The application's startup has not stopped {}s after {signal} (it blocks the \
                 event loop, in a call Python's signal handlers wait for); exiting now",
                BLOCKED_STOP_WAIT.as_secs_f64()
            );
        });
    }

    /// The import or the startup is over (or Python acted on the stop
    /// signal).
    fn end_loading_stop_watch(&self) {
        self.loading_stop.lock().take();
    }

    /// Without a supervisor, with `--timeout-worker-boot` given: a process
    /// not serving that long after it started (its import or lifespan
    /// startup does not end) logs its threads' Python stacks and exits 3,
    /// for its service manager to start it anew, as a supervisor kills such
    /// a worker. Called once faulthandler writes the stacks on SIGUSR2.
    fn watch_boot_deadline(slf: &Bound<'_, Self>) {
        let worker = slf.get();
        let Some(limit) = worker.boot_deadline() else {
            return;
        };
        let boot = Arc::clone(&worker.boot);
        let deadline = boot.started + limit;
        let worker = slf.clone().unbind();
        let watch = move || {
            let mut over = boot.over.lock();
            while !*over {
                if boot.ended.wait_until(&mut over, deadline).timed_out() {
                    break;
                }
            }
            if *over {
                return;
            }
            // The lock stays held until the exit: the worker cannot start
            // serving meanwhile (see `start`).
            let worker = worker.get();
            tracing::error!(
                "rsasgi (pid {}) is not serving {:.1}s after it started (--timeout-worker-boot \
                 {}s): its import or lifespan startup does not end; the Python stack of each of \
                 its threads follows, then it exits with code 3, for its service manager \
                 (systemd, Kubernetes) to start it again; raise --timeout-worker-boot if the \
                 app only boots slowly",
                std::process::id(),
                boot.started.elapsed().as_secs_f64(),
                limit.as_secs_f64()
            );
            stacks::log_this_process(worker.stacks.as_deref(), Duration::from_secs(1));
            worker.leave_unserved(3);
        };
        if let Err(err) = std::thread::Builder::new()
            .name("rsasgi-boot-deadline".into())
            .spawn(watch)
        {
            tracing::warn!(
                "Cannot time the boot ({err}): --timeout-worker-boot {}s is not enforced",
                limit.as_secs_f64()
            );
        }
    }

    #[getter]
    fn app(&self) -> &str {
        &self.config.app
    }

    #[getter]
    fn factory(&self) -> bool {
        self.config.factory
    }

    #[getter]
    fn app_dir(&self) -> String {
        self.config.app_dir.to_string_lossy().into_owned()
    }

    #[getter]
    fn interface(&self) -> String {
        name_of::<Interface>(self.config.interface)
    }

    #[getter]
    fn lifespan(&self) -> String {
        name_of::<Lifespan>(self.config.lifespan)
    }

    #[getter]
    fn event_loop(&self) -> String {
        name_of::<EventLoop>(self.config.event_loop)
    }

    #[getter]
    fn timeout_graceful_shutdown(&self) -> f64 {
        self.config.timeout_graceful_shutdown.as_secs_f64()
    }

    #[getter]
    fn version(&self) -> &'static str {
        env!("CARGO_PKG_VERSION")
    }

    #[getter]
    fn threads(&self) -> usize {
        self.config.threads
    }

    #[getter]
    fn gc_freeze(&self) -> bool {
        self.config.gc_freeze
    }

    /// `--timeout-request` in seconds, or None.
    #[getter]
    fn timeout_request(&self) -> Option<f64> {
        self.config.timeout_request.map(|t| t.as_secs_f64())
    }

    /// The descriptor faulthandler writes the Python stacks to, or None for
    /// stderr.
    #[getter]
    fn stack_dump_fd(&self) -> Option<i32> {
        self.stacks.as_ref().map(|file| file.fd())
    }

    /// Whether this process times its own boot (`--timeout-worker-boot`
    /// given, and no supervisor), writing its stacks when it is over.
    #[getter]
    fn times_own_boot(&self) -> bool {
        self.boot_deadline().is_some()
    }

    /// Whether this process says what is said once for all workers (see
    /// [`Handoff::speaks_for_all`]): a single process always does.
    #[getter]
    fn speaks_for_all(&self) -> bool {
        self.supervised.as_ref().is_none_or(|s| s.speaks_for_all)
    }

    /// The supervisor's pid when a supervisor started this worker, else None.
    #[getter]
    fn supervisor_pid(&self) -> Option<u32> {
        self.supervised.as_ref().map(|s| s.supervisor.pid)
    }

    /// Whether the supervisor that started this worker is gone (killed with
    /// -9); says so in the log the first time. The event loop asks at each
    /// heartbeat.
    fn supervisor_gone(&self) -> bool {
        self.supervised
            .as_ref()
            .is_some_and(|supervised| supervised.supervisor.is_gone())
    }

    /// Seconds between heartbeats of the event loop, or None when nobody
    /// listens to them (no supervisor, no systemd watchdog).
    #[getter]
    fn heartbeat_interval(&self) -> Option<f64> {
        // The supervisor's health check, or this process's own /metrics,
        // which shows the loop's lag.
        let supervisor = (self.supervised.is_some() || self.metrics.slot.is_some())
            .then(|| self.config.supervision.heartbeat_interval());
        // systemd asks for a ping at least every half of its interval.
        let watchdog = self
            .notifier
            .watchdog_interval()
            .map(|interval| interval / 4);
        let interval = match (supervisor, watchdog) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some(interval.as_secs_f64())
    }

    /// Tells the supervisor that the event loop runs; the loop calls this
    /// every `heartbeat_interval` seconds. A loop blocked by the app stops calling
    /// it, which is what the supervisor's health check looks for.
    fn heartbeat(&self) {
        // The supervisor's health check reads the beat in the slot it
        // handed down; without one, this process's own --metrics-bind
        // listener reads it in the slot of its metrics.
        let beats = match &self.supervised {
            Some(supervised) => Some(&supervised.slot),
            None => self.metrics.slot.as_ref(),
        };
        if let Some(slot) = beats {
            slot.beat();
        }
        if let Some(slot) = &self.metrics.slot {
            let now = Instant::now();
            let last = self.metrics.last_beat.lock().replace(now);
            if let Some(last) = last {
                let lag = now
                    .duration_since(last)
                    .saturating_sub(self.beat_interval());
                slot.counters().set_event_loop_lag(lag);
            }
        }
        if let Some(interval) = self.notifier.watchdog_interval() {
            let mut sent = self.watchdog_sent.lock();
            if sent.is_none_or(|at| at.elapsed() >= interval / 2) {
                self.notifier.watchdog();
                *sent = Some(Instant::now());
            }
        }
    }

    /// Starts the reactor thread. For an ASGI app, `spawn(scope, receive,
    /// send)` is called on this thread for each request and `state` is the
    /// lifespan state; a WSGI app (`wsgi_app`) runs on its own thread pool.
    /// `task_parts`, `(Task, run_app, kwargs, held)`, is what `spawn` does
    /// without a task factory, taken apart so that the dispatcher can do it
    /// without a Python frame: when given, it is used instead of `spawn`.
    /// `stopped` (an asyncio future) completes when the reactor has exited.
    /// Returns the eventfd the loop must watch and call `drain()` on.
    #[pyo3(signature = (event_loop, stopped, spawn=None, state=None, wsgi_app=None, task_parts=None))]
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn start(
        &self,
        py: Python<'_>,
        event_loop: &Bound<'_, PyAny>,
        stopped: Py<PyAny>,
        spawn: Option<Py<PyAny>>,
        state: Option<Bound<'_, PyDict>>,
        wsgi_app: Option<Bound<'_, PyAny>>,
        task_parts: Option<(Py<PyAny>, Py<PyAny>, Py<PyDict>, Py<PyDict>)>,
    ) -> PyResult<i32> {
        // Before the listeners are taken: a boot past its deadline that is
        // leaving removes their socket files. Waited for without the GIL:
        // the deadline's thread, holding the boot's lock as it leaves, needs
        // it to write the log (--log-config's handlers are Python's).
        py.detach(|| self.end_boot());
        let listeners = self
            .listeners
            .lock()
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("the worker is already started"))?;
        crate::allocator::settle_python_heap();
        let create_future = event_loop.getattr(intern!(py, "create_future"))?.unbind();
        let _ = CREATE_FUTURE.set(py, create_future);
        let call_soon = event_loop.getattr(intern!(py, "call_soon"))?.unbind();
        let deliver = wrap_pyfunction!(deliver_wakes, py)?.into_any().unbind();
        let _ = CALL_SOON.set(py, (call_soon, deliver));
        mark_loop_thread();
        let scope = ScopeContext::new(
            py,
            self.config.root_path.clone(),
            match state {
                Some(state) => state.unbind(),
                None => PyDict::new(py).unbind(),
            },
        );
        if self
            .dispatcher
            .set(Dispatcher::new(
                match (task_parts, spawn) {
                    (Some((task_type, run_app, kwargs, held)), _) => Spawn::Direct {
                        task_type,
                        run_app,
                        kwargs,
                        held,
                    },
                    (None, Some(spawn)) => Spawn::Call(spawn),
                    (None, None) => Spawn::None,
                },
                scope,
                stopped,
                self.config.timeout_request.is_some(),
            ))
            .is_err()
        {
            return Err(PyRuntimeError::new_err("the worker is already started"));
        }

        let addresses: Vec<String> = listeners
            .iter()
            .map(|listener| listener.describe(self.config.listening_scheme()))
            .collect();
        let config = Arc::clone(&self.config);
        let bridge = Arc::clone(&self.bridge);
        // What is found on import is said by the single process, or once by
        // the workers.
        let first = self.speaks_for_all();
        let jobs = match wsgi_app {
            Some(app) => {
                if let Some(warning) = config.lifespan_unused_by_wsgi().filter(|_| first) {
                    tracing::warn!("{warning}");
                }
                if config.threads > THREADS_WARNING {
                    tracing::warn!(
                        "--threads {} is a lot for one worker: the GIL lets one run Python at a time, \
                         and each may hold a database connection; consider more workers instead",
                        config.threads
                    );
                }
                let multiprocess = self.supervised.as_ref().is_some_and(|s| s.workers > 1);
                let pool = Pool::start(
                    py,
                    &app,
                    config.threads,
                    config.root_path.clone(),
                    multiprocess,
                    self.metrics.slot.clone(),
                    config.timeout_request.is_some(),
                )
                .map_err(|err| {
                    PyRuntimeError::new_err(format!("cannot start a WSGI thread: {err}"))
                })?;
                *self.wsgi_pool.lock() = Some(Arc::clone(&pool));
                Some(pool)
            }
            None => {
                if let Some(warning) = config.threads_unused_by_asgi().filter(|_| first) {
                    tracing::warn!("{warning}");
                }
                None
            }
        };
        let slot = self.supervised.as_ref().map(|s| Arc::clone(&s.slot));
        let state = Arc::new(
            ServerState::new(
                &config,
                Arc::clone(&bridge),
                jobs,
                slot.clone(),
                self.metrics.slot.clone(),
                self.supervised.as_ref().and_then(|s| s.seat.clone()),
                self.stacks.clone(),
                self.shutdown.subscribe(),
            )
            .map_err(|err| PyRuntimeError::new_err(err.to_string()))?,
        );
        let shutdown = self.shutdown.subscribe();
        let scrapes = match (self.metrics.listener.lock().take(), &self.metrics.slot) {
            (Some(listener), Some(slot)) => Some((
                listener,
                Arc::new(SingleProcess {
                    slot: Arc::clone(slot),
                    shutdown: self.shutdown.subscribe(),
                    heartbeat_interval: self.beat_interval(),
                    healthcheck: self.config.supervision.timeout_worker_healthcheck,
                }) as Arc<dyn Scrape>,
            )),
            _ => None,
        };
        let orphan_watch = self.supervised.as_ref().map(|supervised| {
            leave_when_orphaned(
                Arc::clone(&supervised.supervisor),
                self.shutdown.clone(),
                self.config.timeout_graceful_shutdown,
            )
        });
        let park_bridge = Arc::clone(&bridge);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(move || park_bridge.flush())
            .thread_name("rsasgi-reactor")
            .build()
            .map_err(|err| PyRuntimeError::new_err(format!("cannot start the reactor: {err}")))?;
        let handle = std::thread::Builder::new()
            .name("rsasgi-reactor".into())
            .spawn(move || {
                mark_reactor_thread();
                // Polled only inside block_on, on this thread: the wakes it
                // delivers are local to the runtime.
                runtime.spawn(REACTOR_WAKES.deliver());
                if let Some(orphan_watch) = orphan_watch {
                    runtime.spawn(orphan_watch);
                }
                if let Some((listener, scrape)) = scrapes {
                    // Served while the connections drain, so /readyz says 503 then.
                    runtime.spawn(metrics::serve(listener, scrape));
                }
                runtime.block_on(async {
                    tokio::spawn(crate::allocator::give_back_memory());
                    serve(listeners, config, state, shutdown).await;
                });
                // Shutting the runtime down drops every connection still
                // open, which closes their exchanges before Python hears that
                // we stopped. A file read on its blocking pool cannot be
                // cancelled: one stuck on a hung filesystem held the exit for
                // as long as the filesystem did, whatever the grace period.
                runtime.shutdown_timeout(FILE_READS_WAIT);
                let stuck = crate::http::file_reads_in_flight();
                if stuck > 0 {
                    tracing::warn!(
                        "{stuck} file read(s) still blocked {}s after the last connection \
                         closed (a hung filesystem, or a very slow disk?); the worker stops \
                         without them, but the kernel keeps the process from exiting until \
                         the filesystem answers them",
                        FILE_READS_WAIT.as_secs()
                    );
                }
                bridge.push(Event::Stopped);
                bridge.flush();
            })
            .map_err(|err| PyRuntimeError::new_err(format!("cannot start the reactor: {err}")))?;
        *self.reactor.lock() = Some(handle);
        let addresses = addresses.join(", ");
        match &slot {
            Some(slot) => {
                slot.mark_serving();
                tracing::info!("Serving on {addresses}");
            }
            None => {
                tracing::info!(
                    "Listening on {addresses} (pid {}; press CTRL+C to quit)",
                    std::process::id()
                );
                self.notifier.ready(&format!("Serving on {addresses}"));
            }
        }
        Ok(self.bridge.fileno())
    }

    /// Handles every event the reactor queued; the loop calls this when the
    /// eventfd is readable.
    fn drain(&self, py: Python<'_>) {
        let Some(dispatcher) = self.dispatcher.get() else {
            return;
        };
        self.bridge.drain(|event| {
            if let Err(err) = dispatcher.handle(py, event) {
                tracing::error!("rsasgi internal error while dispatching an event: {err}");
            }
        });
    }

    /// SIGUSR1: reopens the log files (after logrotate moved them away).
    fn reopen_log_file(&self) {
        crate::logging::reopen(&self.config);
    }

    /// Stops accepting, lets requests run up to `grace` seconds, then closes
    /// every connection; the `stopped` future given to `start` completes after that.
    /// A graceful stop that the reactor began itself (its supervisor gone)
    /// goes on as it is; a `grace` of 0 cuts any stop short.
    fn shutdown(&self, grace: f64) {
        self.notifier.stopping();
        let grace = Duration::try_from_secs_f64(grace).unwrap_or_default();
        self.shutdown.send_if_modified(|stop| {
            if stop.is_some() && !grace.is_zero() {
                return false;
            }
            *stop = Some(grace);
            true
        });
    }

    /// How many WSGI threads are still in the app (none for an ASGI app).
    fn wsgi_threads_running(&self) -> usize {
        self.wsgi_pool
            .lock()
            .as_ref()
            .map_or(0, |pool| pool.running())
    }

    /// How many of those threads were found stuck past `--timeout-request`.
    fn wsgi_threads_stuck(&self) -> usize {
        self.wsgi_pool
            .lock()
            .as_ref()
            .map_or(0, |pool| pool.stuck())
    }

    /// Waits for the reactor thread to exit (after `stopped` completed), then
    /// up to `timeout` seconds for WSGI threads to finish their requests.
    /// Returns false when some are still running.
    fn join(&self, py: Python<'_>, timeout: f64) -> bool {
        let reactor = self.reactor.lock().take();
        let pool = self.wsgi_pool.lock().take();
        py.detach(|| {
            if let Some(reactor) = reactor {
                let _ = reactor.join();
            }
            let timeout = Duration::try_from_secs_f64(timeout).unwrap_or_default();
            pool.is_none_or(|pool| pool.shutdown(timeout))
        })
    }
}

/// What `--metrics-bind` shows without `--workers`: this process is the
/// only worker, and it serves until its graceful shutdown starts (/readyz
/// fails then, /healthz does not: a drain is no failure, here as under a
/// supervisor). No supervisor replaces it when the app blocks its event
/// loop: /healthz says so instead, for an orchestrator to restart it.
struct SingleProcess {
    /// Holds the counters and the event loop's heartbeat.
    slot: Arc<Slot>,
    shutdown: watch::Receiver<Option<Duration>>,
    heartbeat_interval: Duration,
    /// `--timeout-worker-healthcheck`: how long the loop may not run before
    /// /healthz fails (none: never).
    healthcheck: Option<Duration>,
}

impl Scrape for SingleProcess {
    fn health(&self) -> Health {
        // The listener runs on the reactor, which starts once the app is
        // loaded and stops when the connections have drained.
        let draining = self.shutdown.borrow().is_some();
        let silent = self.slot.since_beat();
        let not_alive = self
            .healthcheck
            .filter(|limit| silent > *limit)
            .map(|limit| {
                format!(
                    "the event loop has not run for {:.1}s (--timeout-worker-healthcheck {}s): \
                     the app blocks it",
                    silent.as_secs_f64(),
                    limit.as_secs_f64()
                )
            });
        Health {
            not_alive,
            not_ready: draining.then(|| "shutting down".to_string()),
        }
    }

    fn report(&self) -> Report {
        let mut counters = self.slot.counters().snapshot();
        let process = ProcessStats::current();
        let draining = self.shutdown.borrow().is_some();
        counters.event_loop_lag_micros = metrics::event_loop_lag(
            counters.event_loop_lag_micros,
            self.slot.since_beat(),
            self.heartbeat_interval,
        );
        Report {
            totals: counters.clone(),
            workers: vec![WorkerReport {
                number: 1,
                pid: std::process::id(),
                state: if draining { "stopping" } else { "serving" },
                resident_bytes: Some(process.resident_bytes),
                counters,
            }],
            restarts: Default::default(),
            process,
        }
    }
}
