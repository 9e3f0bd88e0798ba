//! The Python thread's handling of what the reactor sends: start the app for
//! a request or a WebSocket, complete the futures it waits on, and note that
//! the reactor stopped.

use std::sync::Arc;

use parking_lot::Mutex;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::http::{format_error, resolve_waiter, HttpReceive, HttpSend};
use super::scope::{http_scope, websocket_scope, ScopeContext};
use super::websocket::{resolve_ws_waiter, WebSocketReceive, WebSocketSend};
use super::{is_done, set_result, Event};
use crate::exchange::RequestStart;
use crate::wake::CALL_SOON;
use crate::ws::session::WsStart;

/// How the app's task for a request or a WebSocket is started.
pub(crate) enum Spawn {
    /// A WSGI app: its requests go to its thread pool instead.
    None,
    /// `spawn(scope, receive, send)`, a Python function that creates the
    /// task (through the loop's task factory) and holds it.
    Call(Py<PyAny>),
    /// What that function does without a task factory, done here without
    /// its Python frame and with one keyword dict for every task:
    /// `held[send] = task_type(run_app(scope, receive, send), **kwargs)`.
    /// `Task.__init__` only reads the dict, so sharing it is safe.
    Direct {
        task_type: Py<PyAny>,
        run_app: Py<PyAny>,
        kwargs: Py<PyDict>,
        held: Py<PyDict>,
    },
}

impl Spawn {
    /// Starts the app's task; returns it.
    fn start<'py>(
        &self,
        py: Python<'py>,
        scope: Bound<'py, PyDict>,
        receive: Bound<'py, PyAny>,
        send: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        match self {
            Spawn::None => Err(pyo3::exceptions::PyRuntimeError::new_err(
                "no ASGI application is running",
            )),
            Spawn::Call(spawn) => spawn.bind(py).call1((scope, receive, send)),
            Spawn::Direct {
                task_type,
                run_app,
                kwargs,
                held,
            } => {
                let coroutine = run_app.bind(py).call1((scope, receive, &send))?;
                let task = task_type
                    .bind(py)
                    .call((coroutine,), Some(kwargs.bind(py)))?;
                held.bind(py).set_item(send, &task)?;
                Ok(task)
            }
        }
    }
}

/// Handles bridge events on the Python thread, once the loop is running.
pub(crate) struct Dispatcher {
    spawn: Spawn,
    scope: ScopeContext,
    /// The asyncio future completed when the reactor has stopped.
    stopped: Mutex<Option<Py<PyAny>>>,
    /// Whether each request's task is kept on its exchange (for
    /// `--timeout-request`, which cancels it).
    keep_tasks: bool,
}

impl Dispatcher {
    pub(crate) fn new(
        spawn: Spawn,
        scope: ScopeContext,
        stopped: Py<PyAny>,
        keep_tasks: bool,
    ) -> Dispatcher {
        Dispatcher {
            spawn,
            scope,
            stopped: Mutex::new(Some(stopped)),
            keep_tasks,
        }
    }

    /// Builds the scope and starts the app's task for one request.
    fn start_request(&self, py: Python<'_>, start: &RequestStart) -> PyResult<()> {
        let scope = http_scope(py, &self.scope, &start.exchange, &start.head.headers)?;
        let receive = Bound::new(py, HttpReceive::new(Arc::clone(&start.exchange)))?;
        let send = Bound::new(py, HttpSend::new(Arc::clone(&start.exchange)))?;
        let task = self
            .spawn
            .start(py, scope, receive.into_any(), send.into_any())?;
        if self.keep_tasks {
            start.exchange.keep_task(task.unbind());
        }
        Ok(())
    }

    /// Builds the scope and starts the app's task for one WebSocket.
    fn start_websocket(&self, py: Python<'_>, start: &WsStart) -> PyResult<()> {
        let scope = websocket_scope(py, &self.scope, start)?;
        let receive = Bound::new(py, WebSocketReceive::new(Arc::clone(&start.session)))?;
        let send = Bound::new(py, WebSocketSend::new(Arc::clone(&start.session)))?;
        self.spawn
            .start(py, scope, receive.into_any(), send.into_any())?;
        Ok(())
    }

    /// Handles one event. A request whose app cannot be started is answered
    /// with 500 here, so it never hangs.
    pub(crate) fn handle(&self, py: Python<'_>, event: Event) -> PyResult<()> {
        match event {
            Event::Request(start) => {
                if let Err(err) = self.start_request(py, &start) {
                    let exchange = &start.exchange;
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
            Event::Cancel(exchange) => {
                if let Some(task) = exchange.take_task() {
                    // On the loop's next turn, not now: a task started by this
                    // same drain (its request timed out while the loop was
                    // blocked) has not run a step yet, and cancelling it now
                    // would throw into a coroutine that never began, skipping
                    // `run_app`'s `finally`. Its held entry, and with it the
                    // exchange and its place under --limit-concurrency, would
                    // stay for good. The loop runs its callbacks in order, so
                    // the task's first step comes before this.
                    let cancel = task.bind(py).getattr(intern!(py, "cancel"))?;
                    match CALL_SOON.get(py) {
                        Some((call_soon, _)) => call_soon.call1(py, (cancel,))?,
                        None => cancel.call0()?.unbind(),
                    };
                }
            }
            Event::Resolve(waiter) => resolve_waiter(py, waiter)?,
            Event::WsResolve(waiter) => resolve_ws_waiter(py, waiter)?,
            Event::Stopped => {
                let stopped = self.stopped.lock().take();
                if let Some(stopped) = stopped {
                    if !is_done(py, &stopped)? {
                        set_result(py, &stopped, py.None())?;
                    }
                }
            }
        }
        Ok(())
    }
}
