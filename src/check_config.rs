//! `--check-config`: what startup checks, without binding a socket or
//! serving: the options (already parsed), the TLS files, `--user` and
//! `--group`, `--env-file`, `--log-config`, `--reload-dir`, that the log and
//! pid files can be written, that a `--uds` path fits and its directory is
//! there, and that APP loads as a worker would load it (its module is
//! imported, so its top-level code runs, as with gunicorn's
//! `--check-config`).

use std::io::Write;
use std::path::Path;

use pyo3::exceptions::PyKeyboardInterrupt;
use pyo3::prelude::*;

use crate::config::{Bind, Config};
use crate::config_file::Shown;
use crate::logging::AccessDestination;
use crate::supervisor::privileges::Credentials;
use crate::supervisor::EXIT_BOOT_FAILURE;

/// Exit status of a check that failed as startup would fail: the same code
/// the server would exit with.
struct Failure {
    code: i32,
    message: String,
}

/// Runs the checks; prints one "configuration OK" line on stdout, or the
/// error on stderr; then ends the process with its exit code, at once.
pub(crate) fn run(py: Python<'_>, config: &Config, file: Option<&Path>) -> ! {
    for warning in &config.warnings {
        let _ = writeln!(std::io::stderr(), "rsasgi: warning: {warning}");
    }
    let result = check(py, config);
    // What the app printed while it was imported comes before the result.
    flush_python_streams(py);
    let code = match result {
        Ok(app) => {
            for warning in &app.warnings {
                let _ = writeln!(std::io::stderr(), "rsasgi: warning: {warning}");
            }
            // As the first worker would say them.
            let found = if app.interface == "wsgi" {
                config.lifespan_unused_by_wsgi()
            } else {
                config.threads_unused_by_asgi()
            };
            if let Some(warning) = found {
                let _ = writeln!(std::io::stderr(), "rsasgi: warning: {warning}");
            }
            let settings = match file {
                Some(path) => format!("settings from {}", Shown(path)),
                None => "no configuration file".to_owned(),
            };
            let _ = writeln!(
                std::io::stdout(),
                "rsasgi: configuration OK: {} ({}), {settings}",
                config.app,
                app.interface
            );
            0
        }
        Err(failure) => {
            let _ = writeln!(std::io::stderr(), "rsasgi: {}", failure.message);
            failure.code
        }
    };
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // Without finalising Python, as os._exit: a thread the app started at import
    // and that is no daemon (a scheduler) would keep the exit waiting for it for
    // ever, with the result printed.
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Writes what Python's `sys.stdout` and `sys.stderr` hold in their buffers.
fn flush_python_streams(py: Python<'_>) {
    let Ok(sys) = py.import("sys") else {
        return;
    };
    for name in ["stdout", "stderr"] {
        if let Some(stream) = sys.getattr(name).ok().filter(|stream| !stream.is_none()) {
            // A stream that cannot be written is not worth a word: the
            // result below is what the check is for.
            let _ = stream.call_method0("flush");
        }
    }
}

/// What loading APP found.
struct LoadedApp {
    /// "asgi3", "asgi2" or "wsgi".
    interface: String,
    /// What a worker would warn of (an interface guessed from a signature
    /// that does not tell, a factory named without `--factory`).
    warnings: Vec<String>,
}

/// Each check in the order startup makes them; returns what loading the app
/// found.
fn check(py: Python<'_>, config: &Config) -> Result<LoadedApp, Failure> {
    let fail = |code: i32| move |message: String| Failure { code, message };
    if let Some(tls) = &config.tls {
        tls.server_config(&config.alpn_protocols())
            .map_err(fail(1))?;
    }
    let credentials =
        Credentials::resolve(config.user.as_deref(), config.group.as_deref()).map_err(fail(2))?;
    if let Some(credentials) = &credentials {
        reachable_as(credentials, config).map_err(fail(1))?;
    }
    if let Some(path) = &config.log_config {
        crate::logging::forward::configure(py, path, config.log_level.as_tracing())
            .map_err(fail(2))?;
    }
    if let Some(path) = &config.env_file {
        crate::worker::load_env_file(py, path).map_err(fail(1))?;
    }
    if let Some(reload) = &config.supervision.reload {
        reload.check().map_err(fail(1))?;
    }
    if let Some(path) = &config.log_file {
        writable("--log-file", path, "open").map_err(fail(1))?;
    }
    if let Some(AccessDestination::File(path)) = &config.access_log_file {
        writable("--access-logfile", path, "open").map_err(fail(1))?;
    }
    for bind in &config.binds {
        if let Bind::Unix(path) = bind {
            crate::net::check_unix_path(path).map_err(fail(1))?;
        }
    }
    if let Some(path) = &config.pid_file {
        writable("--pid", path, "write").map_err(fail(1))?;
    }
    load_app(py, config)
}

/// Whether the workers, running as `credentials`, can read the files they
/// load: the TLS files and the `--static-map` directories. The checks above
/// run as root, which reads them all.
pub(crate) fn reachable_as(credentials: &Credentials, config: &Config) -> Result<(), String> {
    let mut paths: Vec<(&str, &Path, libc::c_int)> = Vec::new();
    if let Some(tls) = &config.tls {
        paths.push(("--ssl-certfile", &tls.certfile, libc::R_OK));
        if let Some(keyfile) = &tls.keyfile {
            paths.push(("--ssl-keyfile", keyfile, libc::R_OK));
        }
        if let Some(ca_certs) = &tls.ca_certs {
            paths.push(("--ssl-ca-certs", ca_certs, libc::R_OK));
        }
    }
    if let Some(settings) = &config.static_files {
        for mount in &settings.mounts {
            paths.push(("--static-map", &mount.dir, libc::R_OK | libc::X_OK));
        }
    }
    if paths.is_empty() {
        return Ok(());
    }
    let asked: Vec<(&Path, libc::c_int)> =
        paths.iter().map(|&(_, path, mode)| (path, mode)).collect();
    let user = &credentials.description;
    match credentials.unreachable(&asked) {
        Ok(None) => Ok(()),
        Ok(Some((index, err))) => {
            let (option, path, _) = paths[index];
            Err(format!(
                "{option} {}: the workers run as {user} (--user/--group), which cannot read it: \
                 {err}; make it readable by that account (its group, for a key: chgrp and \
                 chmod 640)",
                path.display()
            ))
        }
        Err(err) => Err(format!("cannot check the files as {user}: {err}")),
    }
}

/// Whether startup could open `path` for writing (append or create),
/// without creating it: the file is writable, or its directory is.
fn writable(option: &str, path: &Path, verb: &str) -> Result<(), String> {
    let shown = path.display();
    let cannot = |why: &str| format!("Cannot {verb} {option} {shown}: {why}");
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.is_dir() {
            return Err(cannot("it is a directory"));
        }
        return may_write(path).map_err(|err| cannot(&err.to_string()));
    }
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    match std::fs::metadata(parent) {
        Ok(meta) if meta.is_dir() => may_write(parent).map_err(|err| cannot(&err.to_string())),
        Ok(_) => Err(cannot(&format!("{} is not a directory", parent.display()))),
        Err(err) => Err(cannot(&format!("{}: {err}", parent.display()))),
    }
}

/// `access(2)` with `W_OK`: whether this process may write to `path`.
fn may_write(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: a NUL-terminated path that outlives the call.
    if unsafe { libc::access(path.as_ptr(), libc::W_OK) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Loads APP as a worker does (`rsasgi._worker.check_app`).
fn load_app(py: Python<'_>, config: &Config) -> Result<LoadedApp, Failure> {
    let fail = |message: String| Failure {
        code: EXIT_BOOT_FAILURE,
        message,
    };
    let worker = py
        .import("rsasgi._worker")
        .map_err(|err| fail(format!("cannot import rsasgi._worker: {err}")))?;
    let app_dir = config.app_dir.to_string_lossy().into_owned();
    let interface = crate::worker::name_of(config.interface);
    let event_loop = crate::worker::name_of(config.event_loop);
    let loaded = worker
        .getattr("check_app")
        .and_then(|check| {
            check.call1((
                config.app.as_str(),
                config.factory,
                app_dir,
                interface,
                event_loop,
            ))
        })
        .and_then(|loaded| loaded.extract::<(String, Vec<String>)>());
    match loaded {
        Ok((interface, warnings)) => Ok(LoadedApp {
            interface,
            warnings,
        }),
        Err(err) if err.is_instance_of::<PyKeyboardInterrupt>(py) => Err(Failure {
            code: EXIT_INTERRUPTED,
            message: format!(
                "interrupted (SIGINT) while loading {}: the check did not complete",
                config.app
            ),
        }),
        Err(err) => Err(fail(describe(py, &worker, &err))),
    }
}

/// Exit status of a check stopped by CTRL+C, as a shell reports a command
/// that SIGINT ended: 128 + 2.
const EXIT_INTERRUPTED: i32 = 130;

/// An `AppLoadError`'s message, which says all; for any other exception,
/// `Type: message` (a message alone can be `0` or `'__name__'`).
fn describe(py: Python<'_>, worker: &Bound<'_, PyModule>, err: &PyErr) -> String {
    let value = err.value(py);
    let message = value.to_string();
    let load_error = worker.getattr("AppLoadError");
    if load_error.is_ok_and(|kind| value.is_instance(&kind).unwrap_or(false)) {
        return message;
    }
    let kind = err
        .get_type(py)
        .fully_qualified_name()
        .map_or_else(|_| "exception".to_owned(), |name| name.to_string());
    if message.is_empty() {
        kind
    } else {
        format!("{kind}: {message}")
    }
}
