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

use std::sync::Arc;
use std::thread::JoinHandle;

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

/// Where the reactor sends WSGI requests.
pub(crate) type Jobs = Sender<Box<RequestStart>>;

/// Starts `threads` pool threads running `app`; returns the channel the
/// reactor feeds and the threads (they exit when the channel closes).
pub(crate) fn start_pool(
    py: Python<'_>,
    app: &Bound<'_, PyAny>,
    threads: usize,
    script_name: String,
) -> PyResult<(Jobs, Vec<JoinHandle<()>>)> {
    let (sender, receiver) = crossbeam_channel::unbounded();
    let ctx = Arc::new(EnvironContext {
        script_name,
        file_wrapper: py.get_type::<FileWrapper>().into_any().unbind(),
        multiprocess: false,
    });
    let mut handles = Vec::with_capacity(threads);
    for index in 0..threads {
        let app = app.clone().unbind();
        let ctx = Arc::clone(&ctx);
        let receiver: Receiver<Box<RequestStart>> = receiver.clone();
        let handle = std::thread::Builder::new()
            .name(format!("rsasgi-wsgi-{index}"))
            .spawn(move || {
                while let Ok(job) = receiver.recv() {
                    // Keep the GIL for requests already queued: handing it
                    // to another pool thread per request costs more than
                    // the request.
                    Python::attach(|py| {
                        run(py, &app, &ctx, job);
                        while let Ok(job) = receiver.try_recv() {
                            run(py, &app, &ctx, job);
                        }
                    });
                }
                Python::attach(move |_py| drop((app, ctx)));
            })
            .map_err(|err| {
                pyo3::exceptions::PyRuntimeError::new_err(format!(
                    "cannot start WSGI thread: {err}"
                ))
            })?;
        handles.push(handle);
    }
    Ok((sender, handles))
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
    exchange.close();
}
