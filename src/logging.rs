//! Server logging through `tracing`, and the bridge that lets the Python side
//! of the worker log into the same stream.

use pyo3::prelude::*;
use tracing_subscriber::filter::LevelFilter;

use crate::config::LogLevel;

/// Installs the stderr subscriber at `level`. Safe to call more than once.
pub(crate) fn init(level: LogLevel) {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(LevelFilter::from_level(level.as_tracing()))
        .with_target(true)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Logs `message` at `level` ("debug", "info", "warning", "error") from Python.
#[pyfunction]
pub(crate) fn log(level: &str, message: &str) {
    match level {
        "trace" => tracing::trace!(target: "rsasgi", "{message}"),
        "debug" => tracing::debug!(target: "rsasgi", "{message}"),
        "info" => tracing::info!(target: "rsasgi", "{message}"),
        "warning" => tracing::warn!(target: "rsasgi", "{message}"),
        _ => tracing::error!(target: "rsasgi", "{message}"),
    }
}
