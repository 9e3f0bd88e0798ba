//! The ASGI side of a worker: scopes, the `receive`/`send` callables, and the
//! Python-side handling of bridge events.

pub(crate) mod http;
pub(crate) mod scope;
pub(crate) mod websocket;

use pyo3::create_exception;
use pyo3::exceptions::PyOSError;

create_exception!(
    rsasgi,
    ClientDisconnected,
    PyOSError,
    "Raised by send() when the client has gone away (ASGI spec 2.4)."
);
