//! WSGI (PEP 3333): sync apps run on a pool of threads per worker.
//!
//! The reactor hands each request to the pool through a channel; a pool
//! thread takes the GIL, builds the environ, calls the app and sends the
//! response iterable chunk by chunk. Waiting for body data or for a slow
//! client releases the GIL, so an app that sleeps or loops ties up one pool
//! thread, never the reactor. Requests beyond the pool wait in the channel,
//! bounded by `--limit-concurrency`.

mod environ;
mod errors;
mod file_wrapper;
mod input;
mod response;

pub(crate) use file_wrapper::FileWrapper;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use pyo3::prelude::*;

use crate::asgi::http::format_error;
use crate::asgi::ClientDisconnected;
use crate::exchange::RequestStart;
use environ::EnvironContext;
use response::{respond, ResponseState, StartResponse};

/// Above this many threads per worker the pool is more likely a mistake
/// (GIL contention, database connections) than a plan.
pub(crate) const THREADS_WARNING: usize = 256;

/// The WSGI thread pool of a worker. Threads are started as requests need
/// them, up to `--threads`, so a large setting costs nothing until used.
pub(crate) struct Pool {
    /// Taken at shutdown: with it gone, idle threads see the channel close.
    sender: Mutex<Option<Sender<Box<RequestStart>>>>,
    receiver: Receiver<Box<RequestStart>>,
    app: Arc<Py<PyAny>>,
    ctx: Arc<EnvironContext>,
    max_threads: usize,
    idle: Arc<AtomicUsize>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Pool {
    /// A pool for `app` with one thread started (so a failure shows at startup).
    pub(crate) fn start(
        py: Python<'_>,
        app: &Bound<'_, PyAny>,
        max_threads: usize,
        script_name: String,
    ) -> std::io::Result<Arc<Pool>> {
        let (sender, receiver) = crossbeam_channel::unbounded();
        let pool = Arc::new(Pool {
            sender: Mutex::new(Some(sender)),
            receiver,
            app: Arc::new(app.clone().unbind()),
            ctx: Arc::new(EnvironContext {
                script_name,
                file_wrapper: py.get_type::<FileWrapper>().into_any().unbind(),
                multiprocess: false,
            }),
            max_threads,
            idle: Arc::new(AtomicUsize::new(0)),
            threads: Mutex::new(Vec::new()),
        });
        pool.spawn_thread()?;
        Ok(pool)
    }

    fn spawn_thread(&self) -> std::io::Result<()> {
        let mut threads = self.threads.lock();
        let index = threads.len();
        let receiver = self.receiver.clone();
        let app = Arc::clone(&self.app);
        let ctx = Arc::clone(&self.ctx);
        let idle = Arc::clone(&self.idle);
        let handle = std::thread::Builder::new()
            .name(format!("rsasgi-wsgi-{index}"))
            .spawn(move || loop {
                idle.fetch_add(1, Ordering::SeqCst);
                let job = receiver.recv();
                idle.fetch_sub(1, Ordering::SeqCst);
                let Ok(job) = job else { return };
                // Keep the GIL for requests already queued: handing it to
                // another pool thread per request costs more than the request.
                Python::attach(|py| {
                    run(py, &app, &ctx, job);
                    while let Ok(job) = receiver.try_recv() {
                        run(py, &app, &ctx, job);
                    }
                });
            })?;
        threads.push(handle);
        Ok(())
    }

    /// Queues a request (from the reactor), starting another thread when
    /// every thread is busy and the pool may grow. Err when the pool is gone.
    pub(crate) fn dispatch(&self, job: Box<RequestStart>) -> Result<(), ()> {
        {
            let sender = self.sender.lock();
            let sender = sender.as_ref().ok_or(())?;
            sender.send(job).map_err(drop)?;
        }
        if self.receiver.len() > self.idle.load(Ordering::SeqCst) {
            let started = self.threads.lock().len();
            if started < self.max_threads {
                if let Err(err) = self.spawn_thread() {
                    tracing::warn!(
                        "cannot start WSGI thread {} of --threads {}: {err}; carrying on with {started}",
                        started + 1,
                        self.max_threads
                    );
                }
            }
        }
        Ok(())
    }

    /// Stops taking requests and waits up to `timeout` for the threads to
    /// finish; false when some are still running.
    pub(crate) fn shutdown(&self, timeout: Duration) -> bool {
        drop(self.sender.lock().take());
        let threads = std::mem::take(&mut *self.threads.lock());
        let deadline = std::time::Instant::now() + timeout;
        while threads.iter().any(|thread| !thread.is_finished()) {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }
}

/// Runs the app for one request on the current (pool) thread.
fn run(py: Python<'_>, app: &Py<PyAny>, ctx: &EnvironContext, job: Box<RequestStart>) {
    let exchange = job.exchange;
    let state = Arc::new(Mutex::new(ResponseState::default()));
    let outcome = environ::build(py, ctx, &exchange, &job.head.headers).and_then(|environ| {
        let start_response = Py::new(
            py,
            StartResponse::new(Arc::clone(&exchange), Arc::clone(&state)),
        )?;
        let iterable = app.bind(py).call1((environ, start_response))?;
        respond(py, &exchange, &state, &iterable)
    });
    if let Err(err) = outcome {
        let request = exchange.request_line();
        if err.is_instance_of::<ClientDisconnected>(py) {
            tracing::debug!("client disconnected while the app handled \"{request}\"");
        } else {
            let started = exchange.lock().started;
            let outcome = if started {
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
    // The app is done with this exchange: release a body reader still waiting for it.
    exchange.finish_app();
}
