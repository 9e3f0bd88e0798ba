//! The reactor's HTTP side: the accept loop, hyper connections, the service
//! that turns each request into an ASGI exchange, and the access log.

pub(crate) mod accept_failures;
pub(crate) mod access_format;
mod access_log;
mod body;
mod connection;
mod preface;
pub(crate) mod proxy_headers;
mod refusals;
pub(crate) mod request_id;
mod server;
mod service;
pub(crate) mod static_files;

pub(crate) use body::file_reads_in_flight;
pub(crate) use server::{serve, ServerState, WEBSOCKET_CLOSE_WAIT};
