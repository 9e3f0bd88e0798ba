//! The Python thread's handling of what the reactor sends: start the app for
//! a request or a WebSocket, complete the futures it waits on, and note that
//! the reactor stopped.

use std::sync::Arc;

use parking_lot::Mutex;
use pyo3::intern;
use pyo3::prelude::*;

use super::http::{format_error, resolve_waiter, HttpReceive, HttpSend};
use super::scope::{http_scope, websocket_scope, ScopeContext};
use super::websocket::{resolve_ws_waiter, WebSocketReceive, WebSocketSend};
use super::{is_done, set_result, Event};
use crate::exchange::RequestStart;
use crate::ws::session::WsStart;

/// Handles bridge events on the Python thread, once the loop is running.
pub(crate) struct Dispatcher {
    /// `spawn(scope, receive, send)` starts the app's task; `None` for a
    /// WSGI app, whose requests go to its thread pool instead.
    spawn: Option<Py<PyAny>>,
    scope: ScopeContext,
    /// The asyncio future completed when the reactor has stopped.
    stopped: Mutex<Option<Py<PyAny>>>,
    /// Whether each request's task is kept on its exchange (for
    /// `--timeout-request`, which cancels it).
    keep_tasks: bool,
}

impl Dispatcher {
    pub(crate) fn new(
        spawn: Option<Py<PyAny>>,
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

    fn spawn(&self) -> PyResult<&Py<PyAny>> {
        self.spawn.as_ref().ok_or_else(|| {
            pyo3::exceptions::PyRuntimeError::new_err("no ASGI application is running")
        })
    }

    /// Builds the scope and starts the app's task for one request.
    fn start_request(&self, py: Python<'_>, start: &RequestStart) -> PyResult<()> {
        let scope = http_scope(py, &self.scope, &start.exchange, &start.head.headers)?;
        let receive = Py::new(py, HttpReceive::new(Arc::clone(&start.exchange)))?;
        let send = Py::new(py, HttpSend::new(Arc::clone(&start.exchange)))?;
        let task = self.spawn()?.call1(py, (scope, receive, send))?;
        if self.keep_tasks {
            start.exchange.keep_task(task);
        }
        Ok(())
    }

    /// Builds the scope and starts the app's task for one WebSocket.
    fn start_websocket(&self, py: Python<'_>, start: &WsStart) -> PyResult<()> {
        let scope = websocket_scope(py, &self.scope, start)?;
        let receive = Py::new(py, WebSocketReceive::new(Arc::clone(&start.session)))?;
        let send = Py::new(py, WebSocketSend::new(Arc::clone(&start.session)))?;
        self.spawn()?.call1(py, (scope, receive, send))?;
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
                    task.call_method0(py, intern!(py, "cancel"))?;
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
