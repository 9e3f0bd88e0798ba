//! rsasgi: an ASGI and WSGI application server written in Rust.
//!
//! This crate builds the `rsasgi._rsasgi` extension module. Its entry point is
//! [`main`], which the `rsasgi` command calls with `sys.argv`.

mod asgi;
mod bridge;
mod cli;
mod config;
mod exchange;
mod http;
mod logging;
mod net;
mod supervisor;
mod wake;
mod worker;
mod ws;
mod wsgi;

use std::io::Write;

use pyo3::prelude::*;

/// Runs the server with `argv` (default: `sys.argv`); returns the exit code.
#[pyfunction]
#[pyo3(signature = (argv=None))]
fn main(py: Python<'_>, argv: Option<Vec<String>>) -> PyResult<i32> {
    let mut argv = match argv {
        Some(argv) => argv,
        None => py.import("sys")?.getattr("argv")?.extract()?,
    };
    if argv.is_empty() {
        argv.push("rsasgi".into());
    } else {
        argv[0] = "rsasgi".into();
    }
    let config = match cli::parse(argv) {
        Ok(config) => config,
        Err(err) => {
            let code = err.exit_code();
            if err.use_stderr() {
                // A closed stderr must not turn a usage error into a panic.
                let _ = writeln!(std::io::stderr(), "{}", cli::usage_line(&err));
            } else {
                let _ = err.print();
            }
            return Ok(code);
        }
    };
    logging::init(config.log_level);
    for note in &config.compat_notes {
        tracing::debug!("{note}");
    }
    let code = worker::run(py, config);
    logging::flush();
    code
}

#[pymodule]
fn _rsasgi(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(main, m)?)?;
    m.add_function(wrap_pyfunction!(logging::log, m)?)?;
    m.add_function(wrap_pyfunction!(logging::flush_logs, m)?)?;
    m.add_class::<worker::Worker>()?;
    m.add_class::<asgi::http::HttpReceive>()?;
    m.add_class::<asgi::http::HttpSend>()?;
    m.add_class::<asgi::Ready>()?;
    m.add_class::<asgi::websocket::WebSocketReceive>()?;
    m.add_class::<asgi::websocket::WebSocketSend>()?;
    m.add_class::<wsgi::FileWrapper>()?;
    m.add(
        "ClientDisconnected",
        m.py().get_type::<asgi::ClientDisconnected>(),
    )?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
