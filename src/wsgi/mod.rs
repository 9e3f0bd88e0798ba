//! WSGI (PEP 3333): sync apps run on a pool of threads per worker.
//!
//! The reactor hands each request to the pool through a queue; a pool
//! thread takes the GIL, builds the environ, calls the app and sends the
//! response iterable chunk by chunk. Waiting for body data or for a slow
//! client releases the GIL, so an app that sleeps or loops ties up one pool
//! thread, never the reactor. Requests beyond the pool wait in the queue,
//! bounded by `--limit-concurrency`; the reactor looks at it every second
//! (see `watch_queue`).

mod backlog;
mod environ;
mod errors;
mod file_wrapper;
mod input;
mod queue;
mod response;
mod stall;

pub(crate) use file_wrapper::FileWrapper;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pyo3::intern;
use pyo3::prelude::*;

use crate::asgi::http::format_error;
use crate::asgi::ClientDisconnected;
use crate::exchange::{Exchange, RequestStart};
use crate::supervisor::Slot;
use crate::wake::mark_pool_thread;
use backlog::{Backlog, BacklogWatch};
use environ::{EnvironContext, TextCache};
use queue::Queue;
use response::{respond, Callables};
use stall::{Stall, StallWatch};

/// How often shutdown checks whether the pool's threads have finished.
const SHUTDOWN_POLL: Duration = Duration::from_millis(10);

/// How many times an idle pool thread yields to other threads, checking
/// for new requests, before it parks.
const IDLE_YIELDS: usize = 3;

/// Above this many threads per worker the pool is more likely a mistake
/// (GIL contention, database connections) than a plan.
pub(crate) const THREADS_WARNING: usize = 256;

/// A parked idle pool thread.
struct IdleSlot {
    thread: Thread,
    /// Set by the dispatcher that took this slot off the idle list.
    woken: AtomicBool,
}

/// What the reactor and the pool threads share.
struct Shared {
    jobs: Queue,
    idle: Mutex<Vec<Arc<IdleSlot>>>,
    /// Threads woken (or started) for queued requests that do not hold the
    /// GIL yet, and idle ones still looking for requests before they park.
    /// While one is on its way, new requests wake nobody else.
    searching: AtomicUsize,
    closed: AtomicBool,
    /// Requests the threads have taken from the queue, for the reactor to
    /// see whether they still do (see `stall`).
    taken: AtomicU64,
    /// Requests the threads found closed by their clients leaving, and did
    /// not run, since the reactor last looked (see `backlog`).
    left: AtomicU64,
    /// The reactor watches the queue (from the first request on).
    watched: AtomicBool,
    /// Each request records when a thread takes it: `--timeout-request`
    /// judges a thread stuck by how long it has run the request, not by
    /// how long the request waited for it.
    timed: bool,
    app: Py<PyAny>,
    ctx: EnvironContext,
    max_threads: usize,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// With `--metrics-bind`: where busy threads are counted.
    metrics: Option<Arc<Slot>>,
}

impl Shared {
    /// Makes sure some thread will come for the queued requests: one is
    /// already on its way, an idle one is woken, or the pool grows.
    fn ensure_searcher(self: &Arc<Self>) {
        if self.searching.load(Ordering::SeqCst) > 0 {
            return;
        }
        let mut idle = self.idle.lock();
        if let Some(slot) = idle.pop() {
            // Counted and flagged before the lock is let go: the thread reads
            // its flag under the same lock once off the list, and must see it
            // set whenever it was taken, or it would carry on without taking
            // itself off the count, and no thread would be woken again.
            self.searching.fetch_add(1, Ordering::SeqCst);
            slot.woken.store(true, Ordering::SeqCst);
            drop(idle);
            slot.thread.unpark();
            return;
        }
        drop(idle);
        // Every thread is busy in the app: grow the pool if allowed, counted
        // under the lock so two callers cannot both take the last place, and
        // never once shutting down (shutdown waits for the threads it found).
        let mut threads = self.threads.lock();
        let started = threads.len();
        if started < self.max_threads && !self.closed.load(Ordering::SeqCst) {
            self.searching.fetch_add(1, Ordering::SeqCst);
            if let Err(err) = self.spawn_thread(&mut threads) {
                self.searching.fetch_sub(1, Ordering::SeqCst);
                tracing::warn!(
                    "cannot start WSGI thread {} of --threads {}: {err}; carrying on with {started}",
                    started + 1,
                    self.max_threads
                );
            }
        }
    }

    /// The threads not idle, and `--threads`.
    fn busy_threads(&self) -> (usize, usize) {
        let started = self.threads.lock().len();
        let busy = started.saturating_sub(self.idle.lock().len());
        (busy, self.max_threads)
    }

    /// Starts a thread, which counts as searching until it holds the GIL.
    fn spawn_thread(self: &Arc<Self>, threads: &mut Vec<JoinHandle<()>>) -> std::io::Result<()> {
        let shared = Arc::clone(self);
        let handle = std::thread::Builder::new()
            .name(format!("rsasgi-wsgi-{}", threads.len()))
            .spawn(move || thread_main(&shared))?;
        threads.push(handle);
        Ok(())
    }
}

/// The WSGI thread pool of a worker.
///
/// Requests are taken from the queue only by the thread holding the GIL,
/// which runs them one after another. Another thread is woken only when none
/// is already waiting for the GIL: if the running app releases the GIL (a
/// database query, a sleep), that thread carries on with the queue; if it
/// does not, at most one thread waits. (An idle thread still yielding
/// before it parks counts as that one.) So a CPU-bound app does not have
/// eight threads fighting over the GIL, and an I/O-bound one still gets up
/// to `--threads` requests in flight. Threads are started as needed, so a
/// large `--threads` costs nothing until used.
pub(crate) struct Pool {
    shared: Arc<Shared>,
    /// The requests whose threads were found stuck past `--timeout-request`,
    /// for the stop to say what it waits for.
    stuck: Mutex<Vec<Weak<Exchange>>>,
}

impl Pool {
    /// A pool for `app` with one thread started (so a failure shows at
    /// startup). `timed`: with `--timeout-request`, which needs to know when
    /// a thread took each request.
    pub(crate) fn start(
        py: Python<'_>,
        app: &Bound<'_, PyAny>,
        max_threads: usize,
        script_name: String,
        multiprocess: bool,
        metrics: Option<Arc<Slot>>,
        timed: bool,
    ) -> std::io::Result<Arc<Pool>> {
        let pool = Arc::new(Pool {
            shared: Arc::new(Shared {
                jobs: Queue::default(),
                idle: Mutex::new(Vec::new()),
                searching: AtomicUsize::new(0),
                closed: AtomicBool::new(false),
                taken: AtomicU64::new(0),
                left: AtomicU64::new(0),
                watched: AtomicBool::new(false),
                timed,
                app: app.clone().unbind(),
                ctx: EnvironContext::new(
                    script_name,
                    py.get_type::<FileWrapper>().into_any().unbind(),
                    multiprocess,
                ),
                max_threads,
                threads: Mutex::new(Vec::new()),
                metrics,
            }),
            stuck: Mutex::new(Vec::new()),
        });
        pool.shared.searching.fetch_add(1, Ordering::SeqCst);
        pool.shared.spawn_thread(&mut pool.shared.threads.lock())?;
        Ok(pool)
    }

    /// Queues a request (from the reactor) and makes sure a thread will take
    /// it. Err when the pool has shut down.
    pub(crate) fn dispatch(&self, job: Box<RequestStart>) -> Result<(), ()> {
        let shared = &self.shared;
        if shared.closed.load(Ordering::SeqCst) {
            return Err(());
        }
        shared.jobs.push(job);
        // The push before the read of `searching` in `ensure_searcher`: a
        // thread that stops searching reads the queue after, and one of the
        // two must see the other (see `wait_for_work`).
        std::sync::atomic::fence(Ordering::SeqCst);
        shared.ensure_searcher();
        if !shared.watched.load(Ordering::Relaxed) {
            self.watch_queue();
        }
        Ok(())
    }

    /// Starts watching the queue on the reactor (the caller's runtime), if
    /// nothing does yet; the watch ends with the pool.
    fn watch_queue(&self) {
        let Ok(reactor) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.shared.watched.swap(true, Ordering::Relaxed) {
            return;
        }
        reactor.spawn(watch_queue(Arc::downgrade(&self.shared)));
    }

    /// The threads busy in the app (or on their way to a request), and
    /// `--threads`: for log lines.
    pub(crate) fn busy_threads(&self) -> (usize, usize) {
        self.shared.busy_threads()
    }

    /// How many threads are in the app: running a request, or its
    /// iterable's `close()` after the response (not idle, nor on their way to
    /// the queue).
    pub(crate) fn running(&self) -> usize {
        let idle = self.shared.idle.lock().len();
        let searching = self.shared.searching.load(Ordering::SeqCst);
        let alive = self
            .shared
            .threads
            .lock()
            .iter()
            .filter(|thread| !thread.is_finished())
            .count();
        alive.saturating_sub(idle + searching)
    }

    /// Records that the thread running `exchange` is stuck in the app past
    /// `--timeout-request`.
    pub(crate) fn mark_stuck(&self, exchange: &Arc<Exchange>) {
        let mut stuck = self.stuck.lock();
        stuck.retain(|earlier| earlier.upgrade().is_some_and(|it| !it.app_finished()));
        stuck.push(Arc::downgrade(exchange));
    }

    /// How many of the threads in the app were found stuck past
    /// `--timeout-request` (and are still in it).
    pub(crate) fn stuck(&self) -> usize {
        self.stuck
            .lock()
            .iter()
            .filter(|exchange| exchange.upgrade().is_some_and(|it| !it.app_finished()))
            .count()
    }

    /// Stops taking requests and waits up to `timeout` for the threads to
    /// finish; false when some are still running.
    pub(crate) fn shutdown(&self, timeout: Duration) -> bool {
        self.shared.closed.store(true, Ordering::SeqCst);
        for slot in self.shared.idle.lock().drain(..) {
            slot.thread.unpark();
        }
        let threads = std::mem::take(&mut *self.shared.threads.lock());
        let deadline = std::time::Instant::now() + timeout;
        while threads.iter().any(|thread| !thread.is_finished()) {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(SHUTDOWN_POLL);
        }
        true
    }
}

/// Looks at the queue every [`stall::CHECK_EVERY`] while the pool takes
/// requests: sweeps out the requests closed while they waited (see
/// [`Queue::sweep`]), sets the queue's gauge, and logs what [`StallWatch`]
/// and [`BacklogWatch`] make of it.
async fn watch_queue(shared: Weak<Shared>) {
    let mut every = tokio::time::interval(stall::CHECK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stall = StallWatch::default();
    let mut backlog = BacklogWatch::default();
    loop {
        every.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.closed.load(Ordering::SeqCst) {
            return;
        }
        let now = Instant::now();
        let swept = if shared.jobs.is_empty() {
            queue::Swept::default()
        } else {
            shared.jobs.sweep(now)
        };
        if swept.dropped > 0 {
            tracing::debug!(
                "took {} requests closed while they waited for a thread out of the queue",
                swept.dropped
            );
        }
        if swept.waiting > 0 {
            // Put back: a thread that found the queue empty meanwhile may
            // have gone idle (see `dispatch`).
            std::sync::atomic::fence(Ordering::SeqCst);
            shared.ensure_searcher();
        }
        if let Some(slot) = &shared.metrics {
            slot.counters().set_wsgi_queue_depth(swept.waiting);
        }
        let queued = swept.waiting;
        let taken = shared.taken.load(Ordering::Relaxed);
        let left = shared.left.swap(0, Ordering::Relaxed) + swept.left as u64;
        let waited = swept.oldest_seen.map(|seen| now.duration_since(seen));
        let (busy, threads) = shared.busy_threads();
        match backlog.look(now, queued, waited, taken, left) {
            Some(Backlog::Began { waiting, waited }) => tracing::warn!(
                "WSGI requests wait for a thread: {waiting} queued, the oldest for {}s or more, with \
                 {busy} of --threads {threads} busy in the app. Each waits until a thread is free, and a \
                 client that gives up first gets nothing (its access line says 499, never ran). Raise \
                 --threads (for views that wait on I/O) or --workers, or set --limit-concurrency to \
                 answer 503 at once rather than queue; summed up every {}s while it lasts",
                waited.as_secs_f64().round(),
                backlog::SUMMARY_EVERY.as_secs()
            ),
            Some(Backlog::Lasts {
                most_waiting,
                longest,
                left,
            }) => {
                let gave_up = if left > 0 {
                    format!("; {left} clients gave up first")
                } else {
                    String::new()
                };
                tracing::warn!(
                    "WSGI requests still wait for a thread: up to {most_waiting} queued in the last {}s \
                     (--threads {threads}), the longest for {}s or more{gave_up}",
                    backlog::SUMMARY_EVERY.as_secs(),
                    longest.as_secs_f64().round()
                );
            }
            None => {}
        }
        match stall.look(now, queued, taken, busy >= threads) {
            Some(Stall::Stuck { waited }) => {
                tracing::warn!(
                    "WSGI requests are stuck in the queue: {queued} waiting, and no thread has taken one \
                     for {}s or more ({busy} of --threads {threads} busy in the app). The \
                     health check (--timeout) does not see threads stuck in a view: --timeout-request logs \
                     their stacks and, under a supervisor, replaces the worker; for a pool that is only \
                     slow, raise --threads, or set --limit-concurrency to answer 503 rather than queue",
                    waited.as_secs(),
                );
            }
            Some(Stall::Over { lasted }) => tracing::info!(
                "WSGI threads take requests again, after none was taken for {}s",
                lasted.as_secs()
            ),
            None => {}
        }
    }
}

/// A pool thread: run queued requests while holding the GIL, park (with the
/// GIL released) when there are none. The thread keeps one Python thread
/// state for its whole life rather than creating one per batch.
fn thread_main(shared: &Arc<Shared>) {
    mark_pool_thread();
    Python::attach(|py| {
        if let Err(err) = adopt_thread(py) {
            tracing::warn!(
                "cannot name WSGI thread {} in Python or give it the threading.settrace() hooks: {err}",
                std::thread::current().name().unwrap_or_default(),
            );
        }
        let mut searching = true;
        // start_response, write and wsgi.errors, reused from request to request.
        let mut callables = None;
        let mut texts = TextCache::new();
        loop {
            if !shared.jobs.is_empty() {
                if std::mem::take(&mut searching) {
                    shared.searching.fetch_sub(1, Ordering::SeqCst);
                }
                while let Some(job) = shared.jobs.pop() {
                    shared.taken.fetch_add(1, Ordering::Relaxed);
                    // If this request blocks in the app, the ones behind it
                    // need another thread.
                    if !shared.jobs.is_empty() {
                        shared.ensure_searcher();
                    }
                    let counters = shared.metrics.as_deref().map(Slot::counters);
                    if let Some(counters) = counters {
                        counters.wsgi_thread_busy();
                    }
                    run(py, shared, job, &mut callables, &mut texts);
                    if let Some(counters) = counters {
                        counters.wsgi_thread_idle();
                    }
                }
                continue;
            }
            if std::mem::take(&mut searching) {
                shared.searching.fetch_sub(1, Ordering::SeqCst);
            }
            if shared.closed.load(Ordering::SeqCst) {
                return;
            }
            // Wait without the GIL; true when a dispatcher woke us for work,
            // or we found some before parking (either way counted as
            // searching until we hold the GIL again).
            searching = py.detach(|| wait_for_work(shared));
        }
    });
}

/// Makes this pool thread what Python code expects of a thread, as
/// `threading.Thread` does for the threads it starts: named after the Rust
/// thread (logging's `%(threadName)s` said `Dummy-N`), and running the trace
/// and profile functions set with `threading.settrace()` and
/// `threading.setprofile()`. Coverage.py measures other threads through
/// these (with its default core; its `sys.monitoring` one, on Python 3.12+,
/// needs nothing per thread), as do profilers. A hook set after this thread
/// started does not reach it, as it would not reach a running
/// `threading.Thread`; `threading.settrace_all_threads()` (3.12+) reaches
/// every thread by itself.
fn adopt_thread(py: Python<'_>) -> PyResult<()> {
    let threading = py.import(intern!(py, "threading"))?;
    if let Some(name) = std::thread::current().name() {
        threading
            .call_method0(intern!(py, "current_thread"))?
            .setattr(intern!(py, "name"), name)?;
    }
    let sys = py.import(intern!(py, "sys"))?;
    for (get, set) in [("gettrace", "settrace"), ("getprofile", "setprofile")] {
        let hook = threading.call_method0(get)?;
        if !hook.is_none() {
            sys.call_method1(set, (hook,))?;
        }
    }
    Ok(())
}

/// Parks an idle pool thread until a request may be waiting; true when it
/// leaves counted as searching (see `Shared::searching`).
fn wait_for_work(shared: &Shared) -> bool {
    // Let the reactor run before parking: under load it is about to queue
    // the next requests, and finding them here is cheaper than being
    // unparked for them. Meanwhile this thread is on its way to them, so it
    // counts as searching: a dispatcher then leaves the parked threads be,
    // rather than waking one to wait for the GIL beside this one.
    shared.searching.fetch_add(1, Ordering::SeqCst);
    if (0..IDLE_YIELDS).any(|_| {
        std::thread::yield_now();
        !shared.jobs.is_empty()
    }) {
        return true;
    }
    let slot = Arc::new(IdleSlot {
        thread: std::thread::current(),
        woken: AtomicBool::new(false),
    });
    {
        let mut idle = shared.idle.lock();
        idle.push(Arc::clone(&slot));
        shared.searching.fetch_sub(1, Ordering::SeqCst);
    }
    // A request queued while this thread was counted as searching woke
    // nobody, and one queued before it was on the idle list found no one to
    // wake: either is in the queue now. (The dispatcher queues, fences, then
    // reads `searching`; this thread decrements `searching`, fences, then
    // reads the queue: at least one of the two sees the other.)
    std::sync::atomic::fence(Ordering::SeqCst);
    if shared.jobs.is_empty() && !shared.closed.load(Ordering::SeqCst) {
        std::thread::park();
    }
    // Off the list, and the flag read, under the lock a dispatcher that took
    // this slot held while it set the flag (see `ensure_searcher`).
    let mut idle = shared.idle.lock();
    idle.retain(|other| !Arc::ptr_eq(other, &slot));
    slot.woken.load(Ordering::SeqCst)
}

/// Runs the app for one request on the current (pool) thread. The request
/// comes boxed as the queue carries it (a pointer through the channel), and
/// is unboxed here once.
#[allow(clippy::boxed_local)]
fn run(
    py: Python<'_>,
    shared: &Shared,
    job: Box<RequestStart>,
    kept: &mut Option<Callables>,
    texts: &mut TextCache,
) {
    let RequestStart { exchange, head } = *job;
    // Queued behind busy threads, its client gave up (or the reactor ended
    // the request): no response of the app's could go anywhere. Running it
    // anyway would spend a thread on it while live requests wait, just when
    // the pool is short of them (clients that time out and retry).
    if !exchange.take_for_thread(shared.timed.then(Instant::now)) {
        if exchange.client_left() {
            shared.left.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(
            "not running the app for \"{}\": it was closed while it waited for a thread",
            exchange.request_line()
        );
        exchange.finish_app();
        return;
    }
    let outcome = Callables::bind(kept, py, &exchange).and_then(|callables| {
        let environ = environ::build(
            py,
            &shared.ctx,
            &exchange,
            head.headers,
            callables.errors(),
            texts,
        )?;
        let iterable = shared
            .app
            .bind(py)
            .call1((environ, callables.start_response(py)))?;
        respond(py, &exchange, callables.state(), &iterable)
    });
    if let Err(err) = outcome {
        let request = exchange.request_line();
        if err.is_instance_of::<ClientDisconnected>(py) && exchange.body_refused() {
            // The server ended it, and has said why (a 400 or 413 line).
            tracing::debug!(
                "the app of \"{request}\" ended on the disconnect it saw when the server \
                 refused the request body"
            );
        } else if err.is_instance_of::<ClientDisconnected>(py) {
            tracing::debug!("client disconnected while the app handled \"{request}\"");
        } else {
            // An error from the iterable's close() may come after the whole
            // response went out.
            let progress = exchange.progress();
            let outcome = if progress.complete {
                "after the response was complete"
            } else if progress.head_sent {
                "connection aborted"
            } else {
                "sent 500"
            };
            let traceback = format_error(py, &err);
            tracing::error!(
                "Exception in WSGI application while handling \"{request}\" ({outcome})\n{traceback}"
            );
        }
        exchange.abort();
    }
    if let Some(callables) = kept {
        callables.release();
    }
    // The app is done with this exchange: release a body reader still waiting for it.
    exchange.finish_app();
}
