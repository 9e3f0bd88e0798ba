//! The supervisor: binds the sockets once, runs `--workers` worker processes
//! on them, and keeps that many serving.
//!
//! It never imports the app. It replaces a worker that dies, one whose event
//! loop stops beating (after logging its stacks), and, gracefully, one that
//! reaches `--limit-max-requests`, `--limit-worker-lifetime` or
//! `--limit-worker-memory`; a replacement serves before its predecessor is
//! told to stop, and one that never serves leaves its predecessor serving.
//! A worker told to stop that is still there at its deadline is killed,
//! after logging its stacks too. Signals: TERM/INT stop gracefully (a
//! second one, or QUIT, at once), HUP replaces every worker with fresh code
//! one by one, TTIN and TTOU add or remove a worker, USR1 reopens the log
//! files, USR2 is refused with a warning.
//!
//! What a worker may rely on, and what it owes the supervisor, is in
//! [`handoff`] and [`slot`].

pub(crate) mod balance;
pub(crate) mod handoff;
pub(crate) mod interpreter;
mod metrics;
pub(crate) mod pid_file;
pub(crate) mod privileges;
mod process;
pub(crate) mod reload;
mod shared_memory;
mod slot;
pub(crate) mod systemd;

pub(crate) use handoff::Handoff;
pub(crate) use slot::Slot;

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;

use crate::config::{Config, MAX_WORKERS};
use crate::config_file;
use crate::logging;
use crate::metrics::{MetricsBind, Restart, Scrape};
use crate::net::{self, Listener};
use crate::worker::{self, Own};

pub(crate) use crate::clock::monotonic_now;
use balance::Balance;
use interpreter::Interpreter;
use metrics::Board;
use pid_file::PidFile;
use privileges::Credentials;
use process::{describe_exit, Kill, Retirement, State, WorkerCommand, WorkerProcess};
use reload::ReloadWatcher;
use systemd::Notifier;

/// How often the supervisor looks at its workers' slots: how soon a new
/// worker's readiness or a stalled heartbeat is noticed. A few system calls
/// per worker each time.
const TICK: Duration = Duration::from_millis(50);

/// How often resident memory is read for `--limit-worker-memory`.
const MEMORY_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How long a hung worker gets to write its stacks before they are read
/// and it is killed. faulthandler writes them in a few ms; the rest is for a
/// busy machine, where the worker may wait for a core meanwhile.
const STACK_DUMP_WAIT: Duration = Duration::from_secs(1);

/// After a forced stop (a second signal, SIGQUIT), how long workers get to
/// exit before they are killed.
const FORCED_STOP_WAIT: Duration = Duration::from_secs(5);

/// Crashes counted for the backoff are those within this window.
const CRASH_WINDOW: Duration = Duration::from_secs(60);

/// The first repeated crash waits this long before the next start; each one
/// after doubles it, up to [`MAX_RESPAWN_DELAY`].
const FIRST_RESPAWN_DELAY: Duration = Duration::from_millis(500);
const MAX_RESPAWN_DELAY: Duration = Duration::from_secs(30);

/// A serving worker that exits with code 0 after at least this long stopped
/// gracefully (a SIGTERM sent to it), not crashed: replaced without backoff.
const CLEAN_EXIT_UPTIME: Duration = Duration::from_secs(1);

/// How often the status line systemd shows (`systemctl status`) is updated.
const STATUS_INTERVAL: Duration = Duration::from_secs(5);

/// The exit code of a worker that could not start serving (the app does not
/// import, its lifespan startup failed, a setting it cannot use such as an
/// `--env-file` or TLS key it cannot read), and the supervisor's own exit
/// code then.
pub(crate) const EXIT_BOOT_FAILURE: i32 = 3;

/// What each worker is started with.
pub(crate) struct WorkerArgs {
    /// The supervisor's own command line, program name first.
    pub argv: Vec<std::ffi::OsString>,
    /// The configuration file's settings as command-line words: handed down
    /// in the environment, so a worker runs with what the supervisor read.
    pub file_args: Vec<String>,
}

/// Binds the sockets and supervises workers until stopped; returns the exit code.
/// `own`: the sockets systemd passed (if any) and the account workers run
/// as; `notifier` tells systemd how the service is doing.
pub(crate) fn run(
    py: Python<'_>,
    config: Config,
    worker_args: WorkerArgs,
    own: Own,
    notifier: Notifier,
) -> PyResult<i32> {
    let program: String = py.import("sys")?.getattr("executable")?.extract()?;
    if program.is_empty() {
        tracing::error!("Cannot start workers: Python does not know its own executable (sys.executable is empty)");
        return Ok(1);
    }
    let options = config.bind_options(own.credentials.as_ref().map(Credentials::socket_owner));
    // On a return before the end, the socket files made are removed as
    // the listeners (or `unix_paths`) are dropped.
    let listeners = match net::listen(&config.binds, options, own.activated) {
        Ok(listeners) => listeners,
        Err(message) => {
            tracing::error!("{message}");
            return Ok(1);
        }
    };
    let pid_file = match config.pid_file.as_deref().map(PidFile::write).transpose() {
        Ok(pid_file) => pid_file,
        Err(message) => {
            tracing::error!("{message}");
            return Ok(1);
        }
    };
    if let Some(credentials) = &own.credentials {
        tracing::info!("Workers run as {}", credentials.description);
        logging::hand_files_to(&config, credentials.uid, credentials.gid);
    }
    let interpreter = Interpreter::of_this_process(py)?;
    let mut args = interpreter.options;
    args.extend(["-m".into(), "rsasgi".into()]);
    args.extend(worker_args.argv.into_iter().skip(1));
    let command = WorkerCommand {
        program,
        args,
        path_entry: interpreter.path_entry,
        file_settings: (!worker_args.file_args.is_empty())
            .then(|| config_file::encode_inherited(&worker_args.file_args)),
        listener_fds: listeners.iter().map(AsRawFd::as_raw_fd).collect(),
        credentials: own.credentials,
        balance: match Balance::create() {
            Ok(table) => Some(Arc::new(table)),
            Err(err) => {
                tracing::warn!(
                    "Cannot create the table the workers spread connections with: {err}; \
                     each accepts connections as they come"
                );
                None
            }
        },
    };
    // Python's own SIGINT handler would raise KeyboardInterrupt once we
    // return; the supervisor handles SIGINT itself.
    let signal_module = py.import("signal")?;
    signal_module.call_method1(
        "signal",
        (
            signal_module.getattr("SIGINT")?,
            signal_module.getattr("SIG_DFL")?,
        ),
    )?;
    let addresses: Vec<String> = listeners
        .iter()
        .map(|listener| listener.describe(config.listening_scheme()))
        .collect();
    // The sockets go to the supervisor, which closes its copies when a stop
    // begins; the paths of the Unix ones stay here, removed at the end.
    let mut unix_paths = Vec::new();
    let sockets: Vec<OwnedFd> = listeners
        .into_iter()
        .map(|listener| match listener {
            Listener::Tcp(listener) => OwnedFd::from(listener),
            Listener::Unix(listener, path) => {
                unix_paths.push(path);
                OwnedFd::from(listener)
            }
        })
        .collect();
    let scrapes = match config.metrics_bind.as_ref().map(MetricsBind::listen) {
        None => None,
        Some(Ok(listener)) => Some(listener),
        Some(Err(message)) => {
            tracing::error!("{message}");
            return Ok(1);
        }
    };
    let board = scrapes
        .as_ref()
        .map(|_| Arc::new(Board::new(config.supervision.heartbeat_interval())));
    let config = Arc::new(config);
    let code = py.detach(|| {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(err) => {
                tracing::error!("Cannot start the supervisor's event loop: {err}");
                return 1;
            }
        };
        tracing::info!(
            "Listening on {} (supervisor pid {}; press CTRL+C to quit)",
            addresses.join(", "),
            std::process::id()
        );
        runtime.block_on(async {
            if let (Some(listener), Some(board)) = (scrapes, &board) {
                // A task of this thread: it keeps answering (/readyz 503)
                // while the workers drain, and stops when the loop returns.
                tokio::spawn(crate::metrics::serve(
                    listener,
                    Arc::clone(board) as Arc<dyn Scrape>,
                ));
            }
            Supervisor::new(config, command, notifier, board, sockets)
                .run()
                .await
        })
    });
    drop(unix_paths);
    drop(pid_file);
    Ok(code)
}

/// Runs `watcher` in a task of its own: its debounce must run to the end,
/// which the supervisor's loop, woken every [`TICK`], would keep cutting short.
fn watch_changes(mut watcher: ReloadWatcher) -> mpsc::Receiver<Vec<PathBuf>> {
    let (sender, receiver) = mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            let changed = watcher.changed().await;
            if sender.send(changed).await.is_err() {
                return;
            }
        }
    });
    receiver
}

/// Logs what a hung worker wrote when asked for its stacks, as one event
/// (the other workers' lines cannot land inside it); says how it went, for
/// the line about killing it.
fn log_stacks(worker: &WorkerProcess) -> &'static str {
    let Some(file) = &worker.stacks else {
        return "after writing its stacks to stderr";
    };
    match file.take() {
        Ok(stacks) if !stacks.is_empty() => {
            tracing::error!("Python stacks of {}:\n{stacks}", worker.name());
            "after writing its stacks"
        }
        // Too slow to write them, or unable to use the file it was handed
        // (it warned so when it started), in which case they went to stderr.
        Ok(_) => "no stacks in its stack file in time: look for them in its stderr",
        Err(err) => {
            tracing::warn!("Cannot read the stacks {} wrote: {err}", worker.name());
            "after writing its stacks"
        }
    }
}

/// "14s after it was told to stop (...)": how long a worker that is still
/// there at its stop deadline was given, and why that long.
fn stop_deadline_words(config: &Config, stop: Option<Stop>) -> String {
    // A stop forced while a worker drained (a recycled one) moved its
    // deadline to the forced stop's, so the supervisor's stop says which.
    if stop.is_some_and(|stop| stop.forced) {
        return format!(
            "{}s after it was told to stop at once (SIGQUIT)",
            FORCED_STOP_WAIT.as_secs_f64()
        );
    }
    let grace = config.timeout_graceful_shutdown;
    let rest = worker::stop_after_grace();
    format!(
        "{}s after it was told to stop gracefully (--timeout-graceful-shutdown {}s, then {}s \
         for the rest of its shutdown)",
        (grace + rest).as_secs_f64(),
        grace.as_secs_f64(),
        rest.as_secs_f64()
    )
}

/// Whether a worker ended by the supervisor's hand at its stop deadline: by
/// the SIGKILL then, or by the SIGUSR2 that asked for its stacks first, which
/// a worker far enough into its exit no longer catches (faulthandler lets go
/// of it as the interpreter finalises, and its default action ends the
/// process).
fn killed_at_stop_deadline(state: State, status: ExitStatus) -> bool {
    let signal = std::os::unix::process::ExitStatusExt::signal(&status);
    match state {
        State::Killed(Kill::Overdue) => signal == Some(libc::SIGKILL),
        State::Hung {
            why: Kill::Overdue, ..
        } => signal == Some(libc::SIGUSR2),
        _ => false,
    }
}

/// The wait before retry number `attempt` (from 1) of something that keeps
/// failing: [`FIRST_RESPAWN_DELAY`], doubling up to [`MAX_RESPAWN_DELAY`].
fn backoff(attempt: u32) -> Duration {
    FIRST_RESPAWN_DELAY
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(MAX_RESPAWN_DELAY)
}

/// Whether a worker that could not be started may start on a later try:
/// the supervisor was out of descriptors (clients holding the metrics
/// port's, for one), processes or memory for a moment. Any other failure
/// (the interpreter gone, not executable for --user) would fail again.
fn is_transient(err: &std::io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::EAGAIN | libc::ENOMEM)
    )
}

/// "", " 3 times": how many times a signal came, after its name.
fn times(deliveries: usize) -> String {
    match deliveries {
        1 => String::new(),
        _ => format!(" {deliveries} times"),
    }
}

/// "1 worker", "4 workers".
fn workers(count: usize) -> String {
    match count {
        1 => "1 worker".into(),
        _ => format!("{count} workers"),
    }
}

/// The next batch of changed files, or never without `--reload`.
async fn next_change(changes: &mut Option<mpsc::Receiver<Vec<PathBuf>>>) -> Vec<PathBuf> {
    match changes {
        Some(changes) => match changes.recv().await {
            Some(changed) => changed,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// A stop under way.
#[derive(Debug, Clone, Copy)]
struct Stop {
    forced: bool,
}

struct Supervisor {
    config: Arc<Config>,
    command: WorkerCommand,
    /// The listening sockets the workers inherit (`command.listener_fds`),
    /// until a stop begins.
    sockets: Vec<OwnedFd>,
    /// Workers wanted now (`--workers`, changed by TTIN and TTOU).
    target: usize,
    workers: Vec<WorkerProcess>,
    stop: Option<Stop>,
    exit_code: i32,
    /// Bumped by each SIGHUP; workers of an older generation are replaced.
    generation: u64,
    /// The generation whose worker 1 has served, having said what is said
    /// once (see [`Handoff::speaks_for_all`]): until one serves, each worker
    /// 1 started says it, as a failed boot may not have got that far.
    spoken_for: Option<u64>,
    /// Whether a rolling restart is under way.
    reloading: bool,
    /// `--reload`, and a worker ended before serving while none served:
    /// nothing starts until a file changes, a HUP, or a worker still booting
    /// then serves.
    waiting_for_change: bool,
    /// Recent crashes of serving workers, for the backoff.
    crashes: VecDeque<Instant>,
    /// No worker is started before this (backoff after repeated crashes).
    respawn_at: Option<Instant>,
    /// Whether every worker has served once since startup (for the log).
    all_served_once: bool,
    /// Whether a worker failed its boot before every worker had served once.
    failed_at_start: bool,
    /// Whether the start was reported done short of workers: some serve, and
    /// the others failed their first boot and are being retried.
    started_short: bool,
    next_memory_check: Instant,
    notifier: Notifier,
    next_status: Instant,
    next_watchdog: Instant,
    /// Requests served by workers that have exited, for the status line.
    past_requests: u64,
    /// With `--metrics-bind`: what the metrics listener shows.
    board: Option<Arc<Board>>,
}

/// SIGTTIN and SIGTTOU deliveries not acted on yet, counted in the signal
/// handler itself: tokio's `Signal` wakes the loop once for however many
/// came since it last looked, so three `kill -TTIN` in a row added one
/// worker, where gunicorn adds one for each. The kernel still merges a
/// signal sent again before the first was delivered (standard signals are
/// not queued), which no count can undo.
static TTIN_DELIVERIES: AtomicUsize = AtomicUsize::new(0);
static TTOU_DELIVERIES: AtomicUsize = AtomicUsize::new(0);

/// The signals the supervisor acts on.
struct Signals {
    term: Signal,
    int: Signal,
    quit: Signal,
    hup: Signal,
    ttin: Signal,
    ttou: Signal,
    usr1: Signal,
    /// Caught only to be refused: its default action would end the
    /// supervisor at once, leaving its workers and the pid file behind.
    usr2: Signal,
    child: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        // Registered before tokio's own handlers, so that a delivery is
        // counted before tokio wakes the loop for it.
        for (number, deliveries) in [
            (libc::SIGTTIN, &TTIN_DELIVERIES),
            (libc::SIGTTOU, &TTOU_DELIVERIES),
        ] {
            // SAFETY: the action only adds to an atomic, which is
            // async-signal-safe.
            unsafe {
                signal_hook_registry::register(number, move || {
                    deliveries.fetch_add(1, Ordering::Relaxed);
                })
            }?;
        }
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
            hup: signal(SignalKind::hangup())?,
            ttin: signal(SignalKind::from_raw(libc::SIGTTIN))?,
            ttou: signal(SignalKind::from_raw(libc::SIGTTOU))?,
            usr1: signal(SignalKind::user_defined1())?,
            usr2: signal(SignalKind::user_defined2())?,
            child: signal(SignalKind::child())?,
        })
    }
}

impl Supervisor {
    fn new(
        config: Arc<Config>,
        command: WorkerCommand,
        notifier: Notifier,
        board: Option<Arc<Board>>,
        sockets: Vec<OwnedFd>,
    ) -> Supervisor {
        let target = config
            .supervision
            .workers
            .map_or(1, |workers| workers.resolve());
        Supervisor {
            config,
            command,
            target,
            workers: Vec::new(),
            stop: None,
            exit_code: 0,
            generation: 0,
            spoken_for: None,
            reloading: false,
            waiting_for_change: false,
            crashes: VecDeque::new(),
            respawn_at: None,
            all_served_once: false,
            failed_at_start: false,
            started_short: false,
            next_memory_check: Instant::now(),
            notifier,
            next_status: Instant::now(),
            next_watchdog: Instant::now(),
            past_requests: 0,
            board,
            sockets,
        }
    }

    async fn run(mut self) -> i32 {
        let mut signals = match Signals::install() {
            Ok(signals) => signals,
            Err(err) => {
                tracing::error!("Cannot install the supervisor's signal handlers: {err}");
                return 1;
            }
        };
        let mut changes = match &self.config.supervision.reload {
            Some(settings) => match ReloadWatcher::new(settings) {
                Ok(watcher) => {
                    tracing::info!("{}", watcher.describe());
                    Some(watch_changes(watcher))
                }
                Err(message) => {
                    tracing::error!("{message}");
                    return 1;
                }
            },
            None => None,
        };
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if self.config.supervision.workers_from_env {
            tracing::info!(
                "Starting {} (WEB_CONCURRENCY; --workers overrides it)",
                workers(self.target)
            );
        } else {
            tracing::info!("Starting {}", workers(self.target));
        }
        loop {
            self.reap();
            if self.stop.is_some() && self.workers.is_empty() {
                tracing::info!("Stopped");
                return self.exit_code;
            }
            self.check_workers();
            self.maintain();
            self.notify_systemd();
            if let Some(board) = &self.board {
                board.publish(&self.workers, self.target, self.stop.is_some());
            }
            tokio::select! {
                _ = signals.term.recv() => self.handle_stop("SIGTERM"),
                _ = signals.int.recv() => self.handle_stop("SIGINT"),
                _ = signals.quit.recv() => self.handle_quit(),
                _ = signals.hup.recv() => self.handle_hup(),
                _ = signals.ttin.recv() => {
                    self.handle_ttin(TTIN_DELIVERIES.swap(0, Ordering::Relaxed));
                }
                _ = signals.ttou.recv() => {
                    self.handle_ttou(TTOU_DELIVERIES.swap(0, Ordering::Relaxed));
                }
                _ = signals.usr1.recv() => self.handle_usr1(),
                _ = signals.usr2.recv() => self.handle_usr2(),
                _ = signals.child.recv() => {}
                changed = next_change(&mut changes) => self.handle_change(&changed),
                _ = tick.tick() => {}
            }
        }
    }

    // Signals, one handler each.

    fn handle_stop(&mut self, name: &str) {
        if self.stop.is_some() {
            tracing::warn!("Received {name} again: stopping the workers now");
            self.stop_workers(true);
        } else {
            tracing::info!(
                "Received {name}: stopping the workers gracefully (send it again to force)"
            );
            self.stop_workers(false);
        }
    }

    fn handle_quit(&mut self) {
        tracing::warn!("Received SIGQUIT: stopping the workers now");
        self.stop_workers(true);
    }

    fn handle_hup(&mut self) {
        if self.stop.is_some() {
            return;
        }
        self.try_again();
        if !self.workers.iter().any(WorkerProcess::is_active) {
            // None runs: --reload waits for the files to change after a
            // start that could not load the app, or a crash loop waits out
            // its backoff. HUP tries again now (what was missing may be
            // outside the watched files).
            tracing::info!("Received SIGHUP: starting the workers again");
            return;
        }
        tracing::info!(
            "Received SIGHUP: replacing the workers one by one with fresh ones \
             (each new worker serves before an old one stops)"
        );
        self.restart_all();
    }

    /// `--reload`: a watched file changed.
    fn handle_change(&mut self, paths: &[PathBuf]) {
        if self.stop.is_some() {
            return;
        }
        const SHOWN: usize = 5;
        let mut names: Vec<String> = paths
            .iter()
            .take(SHOWN)
            .map(|path| path.display().to_string())
            .collect();
        if paths.len() > SHOWN {
            names.push(format!("and {} more", paths.len() - SHOWN));
        }
        tracing::info!("Changes in {}; restarting the workers", names.join(", "));
        self.try_again();
        // With none running, the missing ones simply start; a reload would
        // have nothing to replace, and report itself complete at once.
        if self.workers.iter().any(WorkerProcess::is_active) {
            self.restart_all();
        }
    }

    /// Forgets the failures of the code that was there (HUP, or a change
    /// with `--reload`): the wait of `--reload` for a change ends, and so
    /// does a crash loop's backoff, so that missing workers start at once
    /// with the new code.
    fn try_again(&mut self) {
        self.waiting_for_change = false;
        self.respawn_at = None;
        self.crashes.clear();
    }

    /// Replaces every worker, one at a time, with one of a new generation.
    fn restart_all(&mut self) {
        self.generation += 1;
        self.reloading = true;
        self.notifier.reloading();
        // A replacement that failed before does not delay this attempt.
        for worker in &mut self.workers {
            worker.retire_not_before = None;
        }
    }

    /// `deliveries`: how many SIGTTIN came since the last look; one worker more each.
    fn handle_ttin(&mut self, deliveries: usize) {
        if self.stop.is_some() || deliveries == 0 || self.target >= MAX_WORKERS {
            return;
        }
        self.target = self.target.saturating_add(deliveries).min(MAX_WORKERS);
        tracing::info!(
            "Received SIGTTIN{}: now {}",
            times(deliveries),
            workers(self.target)
        );
    }

    /// `deliveries`: how many SIGTTOU came since the last look; one worker
    /// fewer each, never below one.
    fn handle_ttou(&mut self, deliveries: usize) {
        if self.stop.is_some() || deliveries == 0 {
            return;
        }
        if self.target <= 1 {
            tracing::info!(
                "Received SIGTTOU{}: keeping the last worker",
                times(deliveries)
            );
            return;
        }
        self.target = self.target.saturating_sub(deliveries).max(1);
        tracing::info!(
            "Received SIGTTOU{}: now {}",
            times(deliveries),
            workers(self.target)
        );
    }

    fn handle_usr1(&mut self) {
        logging::reopen(&self.config);
        if let Some(credentials) = &self.command.credentials {
            // A file the rotation left for us to create is root's: the
            // workers must be able to open it too.
            logging::hand_files_to(&self.config, credentials.uid, credentials.gid);
        }
        // A worker still booting has no handler yet (SIGUSR1 would kill it),
        // but it has opened its files, or inherited them, before the
        // rotation: it is sent the signal once it serves (check_workers).
        // One that has just marked its slot serving has a handler (it
        // installs it first), even if this loop has not seen it serving yet.
        for worker in &mut self.workers {
            match worker.state {
                State::Serving | State::Retiring(_) => worker.signal(libc::SIGUSR1),
                State::Booting if worker.slot.is_serving() => worker.signal(libc::SIGUSR1),
                State::Booting => worker.reopen_pending = true,
                // About to be killed, or leaving.
                State::Hung { .. } | State::Stopping { .. } | State::Killed(_) => {}
            }
        }
    }

    /// gunicorn's upgrade on the fly (a new master started from the new
    /// binary, sharing the sockets): rsasgi has no such thing, and says what
    /// does the job.
    fn handle_usr2(&self) {
        tracing::warn!(
            "Received SIGUSR2: ignored, rsasgi does not re-execute itself on USR2 as gunicorn \
             does; send SIGHUP for a rolling restart of the workers onto fresh code, or \
             restart the service to run a new version of rsasgi"
        );
    }

    // The workers.

    /// Sends every worker SIGTERM (graceful) or SIGQUIT (`forced`).
    fn stop_workers(&mut self, forced: bool) {
        if self.stop.is_none() {
            self.notifier.stopping();
        }
        // The workers close theirs as they drain. Kept open here, the
        // listening sockets went on taking connections that no one would
        // accept, each reset when the supervisor left (a 502 from nginx, or
        // half of a --reuse-port successor's connections lost); closed, a
        // new connection is refused at once, or with socket activation waits
        // in systemd's copy for the next start. No worker starts after this.
        self.sockets.clear();
        self.command.listener_fds.clear();
        self.stop = Some(Stop { forced });
        self.reloading = false;
        let now = Instant::now();
        let deadline = if forced {
            now + FORCED_STOP_WAIT
        } else {
            self.stop_deadline(now)
        };
        for worker in &mut self.workers {
            // A hung worker is killed within the second, once its stacks are
            // logged; a stop signal would not reach its blocked loop anyway.
            if matches!(worker.state, State::Killed(_) | State::Hung { .. }) {
                continue;
            }
            worker.signal(if forced { libc::SIGQUIT } else { libc::SIGTERM });
            worker.state = State::Stopping { deadline };
        }
    }

    /// When a worker sent SIGTERM at `now` is killed if still there: after
    /// `--timeout-graceful-shutdown` and the bounded steps of its own stop
    /// that follow, so that its lifespan shutdown gets to run.
    fn stop_deadline(&self, now: Instant) -> Instant {
        now + self.config.timeout_graceful_shutdown + worker::stop_after_grace()
    }

    /// Stops everything because the app cannot boot; exits with `code`.
    fn halt(&mut self, code: i32) {
        self.exit_code = code;
        if self.stop.is_none() {
            self.stop_workers(false);
        }
    }

    /// Collects the workers that exited and decides what each exit means.
    fn reap(&mut self) {
        let mut index = 0;
        while index < self.workers.len() {
            match self.workers[index].try_wait() {
                Some(status) => {
                    let worker = self.workers.swap_remove(index);
                    self.exited(worker, status);
                }
                None => index += 1,
            }
        }
    }

    fn exited(&mut self, worker: WorkerProcess, status: ExitStatus) {
        self.past_requests += worker.slot.requests();
        if let Some(board) = &self.board {
            board.exited(&worker);
        }
        let how = describe_exit(status);
        let name = worker.name();
        if matches!(worker.state, State::Hung { .. }) {
            // Gone before it was killed: what it wrote is all there is.
            log_stacks(&worker);
        }
        if killed_at_stop_deadline(worker.state, status) {
            // It was on its way out: nothing replaces it, and the SIGKILL
            // was ours, not the OOM killer's.
            tracing::warn!("{name} was killed at its stop deadline");
            return;
        }
        if let Some(stop) = self.stop {
            // Killed by the stop signal itself: before the worker's handlers
            // were installed (it was booting) or after they were removed.
            let by_stop_signal = matches!(
                std::os::unix::process::ExitStatusExt::signal(&status),
                Some(libc::SIGTERM | libc::SIGINT | libc::SIGQUIT)
            );
            if status.success() || by_stop_signal || (stop.forced && status.code().is_some()) {
                tracing::info!("{name} stopped");
            } else {
                tracing::warn!("{name} {how} while stopping");
            }
            return;
        }
        if self.replacement_ended(&worker, &how) {
            return;
        }
        match worker.state {
            State::Stopping { .. }
            | State::Hung {
                why: Kill::Overdue, ..
            }
            | State::Killed(Kill::Overdue) => {
                if status.success() {
                    tracing::info!("{name} stopped");
                } else {
                    tracing::warn!("{name} {how} while stopping");
                }
            }
            State::Hung {
                why: Kill::Stuck, ..
            }
            | State::Killed(Kill::Stuck) => {
                tracing::warn!("{name} was killed (see above); replacing it");
                if !worker.slot.is_serving() {
                    // Killed before it ever served (the health check or
                    // --timeout-worker-boot while booting): the next start
                    // would most likely end the same way, so it waits, as
                    // after a crash.
                    self.crashed();
                    if !self.all_served_once {
                        self.failed_at_start = true;
                        self.settle_short_start();
                    }
                }
            }
            // Serving already, though the last look at its slot was earlier.
            State::Booting if worker.slot.is_serving() => {
                tracing::error!("{name} {how}; replacing it");
                self.count_restart(Restart::Crash);
                self.crashed();
            }
            State::Booting => self.boot_failed(&worker, status, &how),
            // Stopped gracefully, not by us: a SIGTERM sent to the worker itself
            // (gunicorn's way to restart one worker), or the app ending the process
            // with code 0 (`os._exit(0)`; a view's `sys.exit()` is an error the worker
            // survives). No crash, so no backoff; one that served only briefly still
            // counts, so that a worker exiting as soon as it starts cannot spin.
            State::Serving | State::Retiring(_)
                if status.success() && worker.started.elapsed() >= CLEAN_EXIT_UPTIME =>
            {
                tracing::warn!(
                    "{name} stopped on its own (exit code 0: a stop signal sent to the worker \
                     itself, or the app ended the process); replacing it"
                );
                self.count_restart(Restart::Crash);
            }
            State::Serving | State::Retiring(_) => {
                tracing::error!("{name} {how}; replacing it");
                self.count_restart(Restart::Crash);
                self.crashed();
            }
        }
    }

    /// A replacement ended before it served, whatever ended it: a failed
    /// boot, a crash as it began serving (before this loop saw it serve), the
    /// health check or the boot deadline. Its predecessor, which keeps
    /// serving until its replacement does, would otherwise wait for it for
    /// ever (and a reload with it): it goes back to serving, and its own
    /// replacement is tried again after a backoff, or, for a reload, at the
    /// next one (at once if a newer reload came while `worker` booted).
    /// Returns false when no predecessor waits for `worker`.
    fn replacement_ended(&mut self, worker: &WorkerProcess, how: &str) -> bool {
        let Some(old_pid) = worker.replaces else {
            return false;
        };
        let Some(old) = self
            .workers
            .iter_mut()
            .find(|w| w.pid == old_pid && w.number == worker.number)
        else {
            return false;
        };
        let State::Retiring(reason) = old.state else {
            return false;
        };
        old.state = State::Serving;
        // A newer reload (SIGHUP, or a change with --reload) came while this
        // replacement booted the code of an earlier one: its failure says
        // nothing of the code there now, and the newer reload goes on at
        // once, this worker first.
        let superseded = reason == Retirement::Reload && worker.generation < self.generation;
        let delay = if superseded {
            old.retire_not_before = None;
            Duration::ZERO
        } else {
            old.replacements_failed = old.replacements_failed.saturating_add(1);
            let delay = backoff(old.replacements_failed);
            old.retire_not_before = Some(Instant::now() + delay);
            delay
        };
        let old_name = old.name();
        let name = worker.name();
        let ended = match worker.state {
            State::Killed(_) => "was killed before serving (see above)".to_string(),
            State::Booting if worker.slot.is_serving() => format!("{how} as it began serving"),
            _ => format!("{how} before serving"),
        };
        if worker.state == State::Booting && worker.slot.is_serving() {
            self.count_restart(Restart::Crash);
        }
        if superseded {
            tracing::error!(
                "The new {name} {ended}, with the code of an earlier reload; the latest reload \
                 goes on, and {old_name} keeps serving until its replacement does"
            );
        } else if reason == Retirement::Reload {
            self.reloading = false;
            self.notifier.ready(&self.status());
            let retry = if self.config.supervision.reload.is_some() {
                "they are replaced at the next change to the files"
            } else {
                "fix the app and send SIGHUP again"
            };
            tracing::error!(
                "Reload failed: the new {name} {ended}; the old workers keep serving the code \
                 they loaded ({retry})"
            );
        } else {
            tracing::error!(
                "The new {name} {ended}; {old_name} keeps serving, and a new replacement is \
                 started in {:.1}s",
                delay.as_secs_f64()
            );
        }
        true
    }

    /// A worker exited before it served.
    fn boot_failed(&mut self, worker: &WorkerProcess, status: ExitStatus, how: &str) {
        let name = worker.name();
        let could_not_boot = status.code() == Some(EXIT_BOOT_FAILURE);
        let failed = if could_not_boot {
            format!("could not boot ({how}, the error is above)")
        } else {
            format!("{how} before serving")
        };
        let others_serve = self
            .workers
            .iter()
            .any(|w| matches!(w.state, State::Serving | State::Retiring(_)));
        if !others_serve && self.config.supervision.reload.is_some() {
            // Starting the same code again would fail the same way, a
            // crash (a C extension's segfault at import) over and over,
            // each start later than the last, and the fix would wait out
            // that delay. A worker still booting may yet serve: then the
            // app can boot after all (a failure of one start, such as a
            // database not up yet), and the wait ends (check_workers).
            let others_boot = self.workers.iter().any(|w| w.state == State::Booting);
            let wait = if others_boot {
                "it is started again if a worker still booting serves, else once the files \
                 change (--reload)"
            } else {
                "waiting for a change to the files to try again (--reload)"
            };
            tracing::error!("{name} {failed}; {wait}");
            self.waiting_for_change = true;
            if !others_boot {
                // A --daemon's command waits for the start, which failed.
                crate::daemon::failed();
            }
        } else if could_not_boot && !others_serve {
            tracing::error!("{name} {failed}; stopping (exit code {EXIT_BOOT_FAILURE})");
            self.halt(EXIT_BOOT_FAILURE);
        } else if could_not_boot {
            // The app's files changed under running workers: stopping them
            // would turn one failed start into an outage.
            tracing::error!(
                "{name} {failed}; the other workers keep serving the code they loaded, and it \
                 is retried"
            );
            self.crashed();
        } else {
            tracing::error!("{name} {failed}");
            self.crashed();
        }
        if !self.all_served_once {
            self.failed_at_start = true;
            self.settle_short_start();
        }
    }

    /// Before every worker has served once: if a worker failed its boot and
    /// another serves, the start is over, short of workers. Waiting for all
    /// of them would keep systemd's start job and a `--daemon`'s command
    /// waiting for as long as one crashes at boot (a start that would
    /// then time out and stop the workers that serve), while the server
    /// answers requests.
    fn settle_short_start(&mut self) {
        if self.all_served_once || self.started_short || !self.failed_at_start {
            return;
        }
        let serving = self
            .workers
            .iter()
            .filter(|w| w.state == State::Serving)
            .count();
        if serving == 0 {
            return;
        }
        self.started_short = true;
        tracing::warn!(
            "Serving with {serving} of {}: the others failed to boot (see above) and are \
             started again; the start is reported done (systemd READY=1, --daemon's command \
             returns)",
            workers(self.target)
        );
        self.notifier.ready(&self.status());
    }

    /// Counts a replacement for `/metrics`.
    fn count_restart(&self, reason: Restart) {
        if let Some(board) = &self.board {
            board.restarting(reason);
        }
    }

    /// Counts a crash; repeated crashes delay the next start, doubling. As
    /// many crashes in the window as there are workers are replaced at once:
    /// workers that die together (the OOM killer, `kill -9` of them all)
    /// must not wait one behind the other while none serves. A worker that
    /// crashes again and again uses that allowance up in a few rounds.
    fn crashed(&mut self) {
        self.back_off("worker crashes");
    }

    /// A worker could not be started: counted with the crashes, so that
    /// further tries back off as after them.
    fn start_failed(&mut self) {
        self.back_off("worker crashes and failed starts");
    }

    /// Counts one of `what` (crashes or failed starts) for the backoff of
    /// [`Self::crashed`].
    fn back_off(&mut self, what: &str) {
        let now = Instant::now();
        self.crashes.push_back(now);
        while self
            .crashes
            .front()
            .is_some_and(|at| now.duration_since(*at) > CRASH_WINDOW)
        {
            self.crashes.pop_front();
        }
        let repeated = self.crashes.len().saturating_sub(self.target.max(1));
        if repeated == 0 {
            return;
        }
        let delay = backoff(u32::try_from(repeated).unwrap_or(u32::MAX));
        self.respawn_at = Some(now + delay);
        tracing::warn!(
            "{} {what} in the last {}s; starting the next worker in {:.1}s",
            self.crashes.len(),
            CRASH_WINDOW.as_secs(),
            delay.as_secs_f64()
        );
    }

    /// Looks at each worker's slot and clock: readiness, heartbeat, limits,
    /// and the deadlines of those on their way out.
    fn check_workers(&mut self) {
        let now = Instant::now();
        let check_memory = now >= self.next_memory_check;
        if check_memory {
            self.next_memory_check = now + MEMORY_CHECK_INTERVAL;
        }
        let config = Arc::clone(&self.config);
        let supervision = &config.supervision;
        let stop = self.stop;
        let mut retire = Vec::new();
        let mut serving_now = Vec::new();
        for worker in &mut self.workers {
            match worker.state {
                State::Booting if worker.slot.is_serving() => {
                    worker.state = State::Serving;
                    tracing::info!(
                        "{} is serving (booted in {:.1}s)",
                        worker.name(),
                        worker.age().as_secs_f64()
                    );
                    if std::mem::take(&mut worker.reopen_pending) {
                        worker.signal(libc::SIGUSR1);
                    }
                    if worker.number == 1 && worker.generation == self.generation {
                        self.spoken_for = Some(self.generation);
                    }
                    serving_now.push(worker.replaces.take());
                }
                State::Hung { kill_at, why } if now >= kill_at => {
                    let stacks = log_stacks(worker);
                    tracing::warn!("Killing {} ({stacks})", worker.name());
                    worker.signal(libc::SIGKILL);
                    worker.state = State::Killed(why);
                }
                State::Stopping { deadline } if now >= deadline => {
                    tracing::warn!(
                        "{} is still running {}: the app holds it (an event loop it blocks, \
                         a C call that does not return, an exit handler that waits); the \
                         Python stack of each of its threads follows, then it is killed",
                        worker.name(),
                        stop_deadline_words(&config, stop)
                    );
                    // As for a stuck worker (below): faulthandler writes them
                    // whatever the app does, even while its loop is blocked.
                    worker.ask_for_stacks();
                    worker.state = State::Hung {
                        kill_at: now + STACK_DUMP_WAIT,
                        why: Kill::Overdue,
                    };
                }
                _ => {}
            }
            if worker.is_active() {
                let silent = worker.slot.since_beat();
                let booting = worker.state == State::Booting;
                // A booting worker's event loop does not run while it imports
                // the app: that is --timeout-worker-boot's to judge (an import
                // that loads a large model may take longer than the health
                // check allows a running loop to be silent; 0 lets it take as
                // long as it likes).
                let healthcheck = supervision.timeout_worker_healthcheck.filter(|_| !booting);
                let stuck = if let Some(limit) = healthcheck.filter(|limit| silent > *limit) {
                    Some(format!(
                        "{} is stuck: its event loop has not run for {:.1}s \
                         (--timeout-worker-healthcheck {}s)",
                        worker.name(),
                        silent.as_secs_f64(),
                        limit.as_secs_f64()
                    ))
                } else {
                    // Its loop beats, but its import or lifespan startup
                    // does not end (waiting for a database that never
                    // answers, a startup that loops).
                    supervision
                        .timeout_worker_boot
                        .filter(|limit| booting && worker.age() > *limit)
                        .map(|limit| {
                            format!(
                                "{} is not serving {:.1}s after it started (--timeout-worker-boot \
                                 {}s): its import or lifespan startup does not end",
                                worker.name(),
                                worker.age().as_secs_f64(),
                                limit.as_secs_f64()
                            )
                        })
                };
                if let Some(stuck) = stuck {
                    let then = match worker.replaces {
                        Some(old_pid) => format!(
                            "then it is killed, and worker {} (pid {old_pid}), which it was \
                             to replace, keeps serving",
                            worker.number
                        ),
                        None => "then it is killed and replaced".to_string(),
                    };
                    tracing::error!(
                        "{stuck}; the Python stack of each of its threads follows, {then}"
                    );
                    // A worker that never served is not replaced but started
                    // again (or, for a replacement, given up on: its
                    // predecessor serves on), as after a failed boot.
                    if let (Some(board), false) = (&self.board, booting) {
                        board.restarting(Restart::HealthCheck);
                    }
                    // The worker registered faulthandler for SIGUSR2, which
                    // writes the stacks even while its loop is blocked.
                    worker.ask_for_stacks();
                    worker.state = State::Hung {
                        kill_at: now + STACK_DUMP_WAIT,
                        why: Kill::Stuck,
                    };
                    continue;
                }
            }
            if worker.state != State::Serving
                || worker.retire_not_before.is_some_and(|at| now < at)
                || self.stop.is_some()
            {
                continue;
            }
            let requests = worker.slot.requests();
            let reason = if worker.slot.retirement_requested() {
                Some((
                    Retirement::StuckRequest,
                    "has a WSGI thread stuck past --timeout-request (threads cannot be stopped)"
                        .to_string(),
                ))
            } else if worker.max_requests.is_some_and(|limit| requests >= limit) {
                Some((
                    Retirement::MaxRequests,
                    format!("served {requests} requests (--limit-max-requests)"),
                ))
            } else if let Some(lifetime) = supervision
                .worker_lifetime
                .filter(|lifetime| worker.age() >= *lifetime)
            {
                Some((
                    Retirement::Lifetime,
                    format!(
                        "has run for {}s (--limit-worker-lifetime)",
                        lifetime.as_secs()
                    ),
                ))
            } else if let Some(limit) = supervision.worker_memory_mib.filter(|_| check_memory) {
                worker
                    .resident_bytes()
                    .map(|bytes| bytes / (1024 * 1024))
                    .filter(|mib| *mib > limit)
                    .map(|mib| {
                        (
                            Retirement::Memory,
                            format!("uses {mib} MiB (--limit-worker-memory {limit})"),
                        )
                    })
            } else if self.reloading && worker.generation < self.generation {
                Some((Retirement::Reload, "runs the old code".to_string()))
            } else {
                None
            };
            if let Some((reason, why)) = reason {
                retire.push((worker.pid, reason, why));
            }
        }
        if !serving_now.is_empty() {
            // The app boots: --reload's wait after a failed start, which
            // began while this worker booted, ends with the missing
            // workers started again.
            self.waiting_for_change = false;
        }
        for replaced in serving_now.into_iter().flatten() {
            self.retire_replaced(replaced);
        }
        if !self.all_served_once
            && self.workers.len() >= self.target
            && self.workers.iter().all(|w| w.state == State::Serving)
        {
            self.all_served_once = true;
            tracing::info!("All {} serving", workers(self.workers.len()));
            self.notifier.ready(&self.status());
        }
        self.settle_short_start();
        let reload_in_progress = self
            .workers
            .iter()
            .any(|w| w.state == State::Retiring(Retirement::Reload));
        let mut reload_started = reload_in_progress;
        for (pid, reason, why) in retire {
            if reason == Retirement::Reload {
                // One at a time, so capacity never drops below the target.
                if reload_started {
                    continue;
                }
                reload_started = true;
            }
            self.replace(pid, reason, &why);
        }
        if self.reloading
            && !reload_started
            && self
                .workers
                .iter()
                .all(|w| w.generation == self.generation || !w.is_active())
        {
            self.reloading = false;
            tracing::info!("Reload complete: every worker runs fresh code");
            self.notifier.ready(&self.status());
        }
    }

    /// What `systemctl status` shows: workers serving, requests served.
    fn status(&self) -> String {
        let serving = self
            .workers
            .iter()
            .filter(|w| matches!(w.state, State::Serving | State::Retiring(_)))
            .count();
        let requests: u64 =
            self.past_requests + self.workers.iter().map(|w| w.slot.requests()).sum::<u64>();
        format!(
            "{serving} of {} workers serving; {requests} requests",
            self.target
        )
    }

    /// Keeps systemd's status line current and its watchdog fed (from this
    /// loop, so a stuck supervisor stops feeding it).
    fn notify_systemd(&mut self) {
        let now = Instant::now();
        if now >= self.next_status {
            self.next_status = now + STATUS_INTERVAL;
            self.notifier.status(&self.status());
        }
        if let Some(interval) = self.notifier.watchdog_interval() {
            if now >= self.next_watchdog {
                self.next_watchdog = now + interval / 2;
                self.notifier.watchdog();
            }
        }
    }

    /// Starts a replacement for the serving worker `pid`, which keeps serving
    /// until the replacement does.
    fn replace(&mut self, pid: u32, reason: Retirement, why: &str) {
        let Some(index) = self.workers.iter().position(|w| w.pid == pid) else {
            return;
        };
        let number = self.workers[index].number;
        match self.spawn(number) {
            Ok(mut replacement) => {
                replacement.replaces = Some(pid);
                let old = &mut self.workers[index];
                old.state = State::Retiring(reason);
                tracing::info!(
                    "{} {why}; replacing it with pid {}",
                    old.name(),
                    replacement.pid
                );
                self.workers.push(replacement);
            }
            Err(_) => {
                self.workers[index].retire_not_before = Some(Instant::now() + MAX_RESPAWN_DELAY);
            }
        }
    }

    /// A replacement serves: its predecessor stops gracefully.
    fn retire_replaced(&mut self, pid: u32) {
        let deadline = self.stop_deadline(Instant::now());
        if let Some(old) = self.workers.iter_mut().find(|w| w.pid == pid) {
            // Counted once the replacement serves: one that fails leaves the
            // old worker serving, and nothing was restarted.
            if let (State::Retiring(reason), Some(board)) = (old.state, &self.board) {
                board.retiring(reason);
            }
            if old.is_active() {
                tracing::info!("Stopping {} gracefully: its replacement serves", old.name());
                old.signal(libc::SIGTERM);
                old.state = State::Stopping { deadline };
            }
        }
    }

    /// Starts workers missing from 1..=target, stops those above it.
    fn maintain(&mut self) {
        if self.stop.is_some() || self.waiting_for_change {
            return;
        }
        let now = Instant::now();
        let deadline = self.stop_deadline(now);
        for worker in &mut self.workers {
            if worker.number > self.target && worker.is_active() {
                tracing::info!("Stopping {} gracefully (SIGTTOU)", worker.name());
                worker.signal(libc::SIGTERM);
                worker.state = State::Stopping { deadline };
            }
        }
        if self.respawn_at.is_some_and(|at| now < at) {
            return;
        }
        self.respawn_at = None;
        for number in 1..=self.target {
            // A hung worker is replaced once it is gone.
            let present = self.workers.iter().any(|w| {
                w.number == number
                    && (w.is_active()
                        || matches!(
                            w.state,
                            State::Hung {
                                why: Kill::Stuck,
                                ..
                            } | State::Killed(Kill::Stuck)
                        ))
            });
            if !present {
                match self.spawn(number) {
                    Ok(worker) => self.workers.push(worker),
                    Err(err)
                        if is_transient(&err)
                            || self.workers.iter().any(WorkerProcess::is_active) =>
                    {
                        self.start_failed();
                        return;
                    }
                    Err(_) => {
                        // Nothing serves and nothing can: say so and stop.
                        self.halt(1);
                        return;
                    }
                }
            }
        }
    }

    /// Starts worker `number`; a failure is logged here.
    fn spawn(&mut self, number: usize) -> std::io::Result<WorkerProcess> {
        let supervision = &self.config.supervision;
        let max_requests = supervision
            .max_requests
            .map(|limit| (limit, supervision.max_requests_jitter));
        let speaks_for_all = number == 1 && self.spoken_for != Some(self.generation);
        match WorkerProcess::spawn(
            &self.command,
            number,
            self.target,
            self.generation,
            max_requests,
            speaks_for_all,
        ) {
            Ok(worker) => {
                tracing::info!("Started {}", worker.name());
                Ok(worker)
            }
            Err(err) => {
                let hint = match &self.command.credentials {
                    _ if err.raw_os_error() == Some(libc::EMFILE) => {
                        "; the supervisor has as many open files as its limit allows (raise \
                         it: ulimit -n, or LimitNOFILE= in a systemd unit); trying again"
                            .to_string()
                    }
                    _ if is_transient(&err) => "; trying again".to_string(),
                    Some(credentials) if err.kind() == std::io::ErrorKind::PermissionDenied => {
                        format!(
                            " ({} must be able to run it and read every directory above it)",
                            credentials.description
                        )
                    }
                    _ => String::new(),
                };
                tracing::error!(
                    "Cannot start worker {number} ({} -m rsasgi): {err}{hint}",
                    self.command.program
                );
                Err(err)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_doubling_up_to_the_cap() {
        assert_eq!(backoff(1), FIRST_RESPAWN_DELAY);
        assert_eq!(backoff(2), FIRST_RESPAWN_DELAY * 2);
        assert_eq!(backoff(4), FIRST_RESPAWN_DELAY * 8);
        assert_eq!(backoff(40), MAX_RESPAWN_DELAY);
        assert_eq!(backoff(u32::MAX), MAX_RESPAWN_DELAY);
    }

    #[test]
    fn a_kill_at_the_stop_deadline_is_the_supervisor_s_own() {
        use std::os::unix::process::ExitStatusExt;
        let sigkill = ExitStatus::from_raw(libc::SIGKILL);
        let asked_for_stacks = State::Hung {
            kill_at: Instant::now(),
            why: Kill::Overdue,
        };
        assert!(killed_at_stop_deadline(
            State::Killed(Kill::Overdue),
            sigkill
        ));
        // Too far into its exit to catch the request for its stacks.
        assert!(killed_at_stop_deadline(
            asked_for_stacks,
            ExitStatus::from_raw(libc::SIGUSR2)
        ));
        // It ended by itself meanwhile.
        assert!(!killed_at_stop_deadline(
            asked_for_stacks,
            ExitStatus::from_raw(0)
        ));
        assert!(!killed_at_stop_deadline(
            State::Killed(Kill::Overdue),
            ExitStatus::from_raw(0)
        ));
        // Before its deadline, or stuck: the OOM killer's, kill -9, or the health check's.
        let stopping = State::Stopping {
            deadline: Instant::now(),
        };
        assert!(!killed_at_stop_deadline(stopping, sigkill));
        assert!(!killed_at_stop_deadline(State::Serving, sigkill));
        assert!(!killed_at_stop_deadline(
            State::Killed(Kill::Stuck),
            sigkill
        ));
    }
}
