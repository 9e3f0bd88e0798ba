//! One worker: the reactor thread plus the Python side that runs the app.
//!
//! The worker's lifetime (load the app, run lifespan, serve until a signal,
//! shut down) is driven from `python/rsasgi/_worker.py`, which calls into the
//! [`Worker`] object below. A supervisor that runs several workers only has
//! to start several processes, each building its own `Worker`.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use tokio::sync::watch;

use crate::asgi::http::{format_error, resolve_waiter, HttpReceive, HttpSend, CREATE_FUTURE};
use crate::asgi::scope::{http_scope, websocket_scope, ScopeContext};
use crate::asgi::websocket::{resolve_ws_waiter, WebSocketReceive, WebSocketSend};
use crate::asgi::{Event, EventBridge};
use crate::bridge::mark_reactor_thread;
use crate::config::{Config, EventLoop, Interface, Lifespan};
use crate::exchange::{Exchange, RequestStart};
use crate::http::{serve, ServerState};
use crate::net::Listener;
use crate::wake::{deliver_wakes, mark_loop_thread, CALL_SOON};
use crate::ws::session::WsStart;
use crate::wsgi::{Pool, THREADS_WARNING};

/// Python objects the drain needs, set once the loop is running.
struct PythonSide {
    spawn: Option<Py<PyAny>>,
    scope: ScopeContext,
    stopped: Option<Py<PyAny>>,
}

#[pyclass(module = "rsasgi", frozen)]
pub(crate) struct Worker {
    config: Arc<Config>,
    bridge: Arc<EventBridge>,
    listener: Mutex<Option<Listener>>,
    shutdown: watch::Sender<Option<Duration>>,
    reactor: Mutex<Option<JoinHandle<()>>>,
    wsgi_pool: Mutex<Option<Arc<Pool>>>,
    python: Mutex<Option<PythonSide>>,
}

impl Worker {
    pub(crate) fn new(config: Config, listener: Listener) -> std::io::Result<Worker> {
        Ok(Worker {
            config: Arc::new(config),
            bridge: Arc::new(EventBridge::new()?),
            listener: Mutex::new(Some(listener)),
            shutdown: watch::channel(None).0,
            reactor: Mutex::new(None),
            wsgi_pool: Mutex::new(None),
            python: Mutex::new(None),
        })
    }

    /// Builds the scope and starts the app's task for one request.
    fn start_request(&self, py: Python<'_>, start: &RequestStart) -> PyResult<()> {
        let (scope, spawn) = {
            let guard = self.python.lock();
            let side = guard.as_ref().ok_or_else(not_started)?;
            let spawn = side.spawn.as_ref().ok_or_else(not_started)?.clone_ref(py);
            let scope = http_scope(py, &side.scope, &start.exchange, &start.head.headers)?;
            (scope, spawn)
        };
        let receive = Py::new(py, HttpReceive::new(Arc::clone(&start.exchange)))?;
        let send = Py::new(py, HttpSend::new(Arc::clone(&start.exchange)))?;
        spawn.call1(py, (scope, receive, send))?;
        Ok(())
    }

    /// Builds the scope and starts the app's task for one WebSocket.
    fn start_websocket(&self, py: Python<'_>, start: &WsStart) -> PyResult<()> {
        let (scope, spawn) = {
            let guard = self.python.lock();
            let side = guard.as_ref().ok_or_else(not_started)?;
            let spawn = side.spawn.as_ref().ok_or_else(not_started)?.clone_ref(py);
            (websocket_scope(py, &side.scope, start)?, spawn)
        };
        let receive = Py::new(py, WebSocketReceive::new(Arc::clone(&start.session)))?;
        let send = Py::new(py, WebSocketSend::new(Arc::clone(&start.session)))?;
        spawn.call1(py, (scope, receive, send))?;
        Ok(())
    }

    fn handle(&self, py: Python<'_>, event: Event) -> PyResult<()> {
        match event {
            Event::Request(start) => {
                if let Err(err) = self.start_request(py, &start) {
                    let exchange: &Arc<Exchange> = &start.exchange;
                    tracing::error!(
                        "Could not start the application for \"{}\" (sent 500)\n{}",
                        exchange.request_line(),
                        format_error(py, &err)
                    );
                    exchange.abort();
                    exchange.finish_app();
                }
            }
            Event::WebSocket(start) => {
                if let Err(err) = self.start_websocket(py, &start) {
                    tracing::error!(
                        "Could not start the application for websocket \"{}\" (sent 500)\n{}",
                        start.session.path,
                        format_error(py, &err)
                    );
                    start.session.fail_handshake();
                }
            }
            Event::Resolve(waiter) => resolve_waiter(py, waiter)?,
            Event::WsResolve(waiter) => resolve_ws_waiter(py, waiter)?,
            Event::Stopped => {
                let stopped = self
                    .python
                    .lock()
                    .as_mut()
                    .and_then(|side| side.stopped.take());
                if let Some(stopped) = stopped {
                    let stopped = stopped.bind(py);
                    if !stopped.call_method0(intern!(py, "done"))?.is_truthy()? {
                        stopped.call_method1(intern!(py, "set_result"), (py.None(),))?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn not_started() -> PyErr {
    PyRuntimeError::new_err("the worker's Python side is not running")
}

fn name_of<T: clap::ValueEnum>(value: T) -> String {
    value
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}

#[pymethods]
impl Worker {
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

    /// Starts the reactor thread. For an ASGI app, `spawn(scope, receive,
    /// send)` is called on this thread for each request and `state` is the
    /// lifespan state; a WSGI app (`wsgi_app`) runs on its own thread pool.
    /// `stopped` (an asyncio future) completes when the reactor has exited.
    /// Returns the eventfd the loop must watch and call `drain()` on.
    #[pyo3(signature = (event_loop, stopped, spawn=None, state=None, wsgi_app=None))]
    fn start(
        &self,
        py: Python<'_>,
        event_loop: &Bound<'_, PyAny>,
        stopped: Py<PyAny>,
        spawn: Option<Py<PyAny>>,
        state: Option<Bound<'_, PyDict>>,
        wsgi_app: Option<Bound<'_, PyAny>>,
    ) -> PyResult<i32> {
        let listener = self
            .listener
            .lock()
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("the worker is already started"))?;
        let create_future = event_loop.getattr(intern!(py, "create_future"))?.unbind();
        let _ = CREATE_FUTURE.set(py, create_future);
        let call_soon = event_loop.getattr(intern!(py, "call_soon"))?.unbind();
        let deliver = wrap_pyfunction!(deliver_wakes, py)?.into_any().unbind();
        let _ = CALL_SOON.set(py, (call_soon, deliver));
        mark_loop_thread();
        *self.python.lock() = Some(PythonSide {
            spawn,
            scope: ScopeContext {
                root_path: self.config.root_path.clone(),
                state: match state {
                    Some(state) => state.unbind(),
                    None => PyDict::new(py).unbind(),
                },
            },
            stopped: Some(stopped),
        });

        let address = listener.describe();
        let config = Arc::clone(&self.config);
        let bridge = Arc::clone(&self.bridge);
        let jobs = match wsgi_app {
            Some(app) => {
                if config.threads > THREADS_WARNING {
                    tracing::warn!(
                        "--threads {} is a lot for one worker: the GIL lets one run Python at a time, \
                         and each may hold a database connection; consider more workers instead",
                        config.threads
                    );
                }
                let pool = Pool::start(py, &app, config.threads, config.root_path.clone())
                    .map_err(|err| {
                        PyRuntimeError::new_err(format!("cannot start a WSGI thread: {err}"))
                    })?;
                *self.wsgi_pool.lock() = Some(Arc::clone(&pool));
                Some(pool)
            }
            None => None,
        };
        let state = Arc::new(ServerState::new(&config, Arc::clone(&bridge), jobs));
        let shutdown = self.shutdown.subscribe();
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
                runtime.block_on(serve(listener, config, state, shutdown));
                // Dropping the runtime drops every connection still open, which
                // closes their exchanges before Python hears that we stopped.
                drop(runtime);
                bridge.push(Event::Stopped);
                bridge.flush();
            })
            .map_err(|err| PyRuntimeError::new_err(format!("cannot start the reactor: {err}")))?;
        *self.reactor.lock() = Some(handle);
        tracing::info!(
            "Listening on {address} (pid {}; press CTRL+C to quit)",
            std::process::id()
        );
        Ok(self.bridge.fileno())
    }

    /// Handles every event the reactor queued; the loop calls this when the
    /// eventfd is readable.
    fn drain(&self, py: Python<'_>) {
        self.bridge.drain(|event| {
            if let Err(err) = self.handle(py, event) {
                tracing::error!("rsasgi internal error while dispatching an event: {err}");
            }
        });
    }

    /// Stops accepting, lets requests run up to `grace` seconds, then closes
    /// every connection; the `stopped` future given to `start` completes after that.
    fn shutdown(&self, grace: f64) {
        let grace = Duration::try_from_secs_f64(grace).unwrap_or_default();
        self.shutdown.send_replace(Some(grace));
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
