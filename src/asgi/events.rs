//! What the reactor tells the worker's Python thread, through the bridge.

use super::awaitable::{Waiter, WsWaiter};
use crate::bridge::Bridge;
use crate::exchange::RequestStart;
use crate::ws::session::WsStart;

/// Something the reactor tells the Python side.
pub(crate) enum Event {
    /// A request arrived: build its scope and start the app.
    Request(Box<RequestStart>),
    /// A client opened a WebSocket: build its scope and start the app.
    WebSocket(Box<WsStart>),
    /// A future the app awaits (in `receive()` or `send()`) can complete.
    Resolve(Waiter),
    /// The same, for a WebSocket connection.
    WsResolve(WsWaiter),
    /// The request outlived `--timeout-request`: cancel the app's task.
    Cancel(std::sync::Arc<crate::exchange::Exchange>),
    /// The reactor has finished: every connection is closed.
    Stopped,
}

/// The worker's bridge, carrying [`Event`]s.
pub(crate) type EventBridge = Bridge<Event>;
