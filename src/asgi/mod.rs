//! The ASGI side of a worker: scopes, the `receive`/`send` callables and
//! their awaitables, and the events the reactor sends the Python thread.

mod awaitable;
mod dispatch;
mod events;
pub(crate) mod http;
pub(crate) mod scope;
pub(crate) mod websocket;

pub(crate) use awaitable::{
    coroutine_mark, is_done, park_future, set_exception, set_result, Ready, WaitKind, Waiter,
    WsWaiter,
};
pub(crate) use dispatch::{Dispatcher, Spawn};
pub(crate) use events::{Event, EventBridge};

use pyo3::create_exception;
use pyo3::exceptions::PyOSError;

create_exception!(
    rsasgi,
    ClientDisconnected,
    PyOSError,
    "Raised by send() when the client has gone away (ASGI spec 2.4)."
);
