//! rsasgi: an ASGI application server written in Rust.
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
mod wake;
mod worker;
mod ws;
mod wsgi;

use std::io::Write;

use pyo3::prelude::*;

use crate::worker::Worker;

/// Loads `--env-file` into `os.environ` (Python's copy of the environment),
/// leaving variables that are already set alone.
fn load_env_file(py: Python<'_>, path: &std::path::Path) -> Result<(), String> {
    let shown = path.display();
    let entries = dotenvy::from_path_iter(path)
        .map_err(|err| format!("Cannot read --env-file {shown}: {err}"))?;
    let environ = py
        .import("os")
        .and_then(|os| os.getattr("environ"))
        .map_err(|err| err.to_string())?;
    for entry in entries {
        let (key, value) =
            entry.map_err(|err| format!("Cannot parse --env-file {shown}: {err}"))?;
        let present = environ.contains(&key).map_err(|err| err.to_string())?;
        if !present {
            environ
                .set_item(key, value)
                .map_err(|err| err.to_string())?;
        }
    }
    Ok(())
}

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
    let code = serve(py, config);
    logging::flush();
    code
}

/// Binds the socket and runs one worker until it stops; returns the exit code.
fn serve(py: Python<'_>, config: config::Config) -> PyResult<i32> {
    if let Some(path) = &config.env_file {
        if let Err(message) = load_env_file(py, path) {
            tracing::error!("{message}");
            return Ok(1);
        }
    }
    let listener = match net::bind(&config.bind, config.backlog, config.uds_permissions) {
        Ok(listener) => listener,
        Err(message) => {
            tracing::error!("{message}");
            return Ok(1);
        }
    };
    let worker = match Worker::new(config, listener) {
        Ok(worker) => Py::new(py, worker)?,
        Err(err) => {
            tracing::error!("Cannot create the worker's event channel: {err}");
            return Ok(1);
        }
    };
    let run = py.import("rsasgi._worker")?.getattr("run")?;
    run.call1((worker,))?.extract()
}

#[pymodule]
fn _rsasgi(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(main, m)?)?;
    m.add_function(wrap_pyfunction!(logging::log, m)?)?;
    m.add_function(wrap_pyfunction!(logging::flush_logs, m)?)?;
    m.add_class::<Worker>()?;
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
