//! rsasgi: an ASGI and WSGI application server written in Rust.
//!
//! This crate builds the `rsasgi._rsasgi` extension module. Its entry point is
//! `main`, which the `rsasgi` command calls with `sys.argv`.

mod allocator;
mod asgi;
mod bridge;
mod check_config;
mod cli;
mod clock;
mod config;
mod config_file;
mod daemon;
mod exchange;
mod forked;
mod http;
mod loading_stop;
mod logging;
mod metrics;
mod net;
mod print_config;
mod stacks;
mod supervisor;
mod wake;
mod worker;
mod ws;
mod wsgi;

use std::io::Write;

use pyo3::prelude::*;

/// Puts `/dev/null` on any of descriptors 0, 1 and 2 that is closed (a
/// service started with `>&-`, a careless daemonizer), before anything is
/// opened. Otherwise the next descriptors the server opened would take those
/// numbers, and the log, written to descriptor 2, would go into whatever got
/// it: a listening socket, or the memory the workers share to spread
/// connections. gunicorn's daemon mode does the same.
fn open_closed_standard_descriptors() {
    for fd in 0..=2 {
        // SAFETY: F_GETFD reads a descriptor's flags; no memory is involved.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1 {
            continue;
        }
        // The lowest free number, `fd` itself, as the lower ones are open.
        // Inherited by the workers (no O_CLOEXEC): their standard streams too.
        // SAFETY: a NUL-terminated path; the descriptor is the process's,
        // kept open for its whole life as the standard one.
        let null = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        if null >= 0 && null != fd {
            // SAFETY: both descriptors are open; `null` was ours alone.
            unsafe {
                libc::dup2(null, fd);
                libc::close(null);
            }
        }
    }
}

/// Runs the server with `argv` (default: `sys.argv`); returns the exit code.
#[pyfunction]
#[pyo3(signature = (argv=None))]
fn main(py: Python<'_>, argv: Option<Vec<std::ffi::OsString>>) -> PyResult<i32> {
    open_closed_standard_descriptors();
    // As bytes, not text: Python decodes a command line that is not UTF-8
    // with surrogate escapes, which clap then names as a usage error.
    let mut argv = match argv {
        Some(argv) => argv,
        None => py.import("sys")?.getattr("argv")?.extract()?,
    };
    if argv.is_empty() {
        argv.push("rsasgi".into());
    } else {
        argv[0] = "rsasgi".into();
    }
    // Read and cleared before any thread (the log writer is one) starts.
    let handoff = supervisor::Handoff::take_from_env();
    let path_entry = supervisor::interpreter::take_path_entry();
    if handoff.is_some() {
        // First: --log-config's handlers, and the app, import from sys.path.
        if let Some(entry) = path_entry {
            supervisor::interpreter::adopt_path_entry(py, entry)?;
        }
        // Sent to the whole process group (a terminal closed, GNU timeout,
        // `kill -TTIN -PGID`), these reach the workers too: they are the
        // supervisor's to act on (HUP reloads, TTIN and TTOU change the
        // number of workers), not a worker's to die or stop of (TTIN's and
        // TTOU's default action stops the process).
        // Caught by a handler that does nothing rather than ignored: an
        // ignored signal stays ignored across exec, in every program the app
        // starts, while a caught one is reset to its default there.
        for signal in [libc::SIGHUP, libc::SIGTTIN, libc::SIGTTOU] {
            // SAFETY: the action does nothing, which is async-signal-safe.
            if let Err(err) = unsafe { signal_hook_registry::register(signal, || {}) } {
                tracing::warn!("Cannot install the handler of signal {signal}: {err}");
            }
        }
    }
    let inherited = config_file::take_inherited();
    let files = match (&handoff, inherited) {
        (Some(_), inherited) => cli::FileSettings::Inherited(inherited.unwrap_or_default()),
        (None, _) => cli::FileSettings::Discover,
    };
    let invocation = match cli::parse_invocation(argv.clone(), files) {
        Ok(invocation) => invocation,
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
    let config = match invocation.action {
        cli::Action::Serve => invocation.config,
        cli::Action::PrintConfig(listing) => {
            let _ = write!(std::io::stdout(), "{listing}");
            return Ok(0);
        }
        cli::Action::CheckConfig => {
            let file = invocation.config_file.as_deref();
            check_config::run(py, &invocation.config, file)
        }
    };
    if let Some(mask) = config.umask {
        // Before any file is created: --log-file, --access-logfile and --pid
        // are the operator's too.
        // SAFETY: umask has no preconditions.
        unsafe { libc::umask(mask) };
    }
    // These too read and clear their environment variables.
    let activated = supervisor::systemd::listen_fds();
    let (notifier, unusable_notify_socket) = supervisor::systemd::Notifier::from_env();
    if handoff.is_none() {
        if let Err(message) = detach(py, &config) {
            let _ = writeln!(std::io::stderr(), "rsasgi: {message}");
            return Ok(1);
        }
    }
    let process = match &handoff {
        Some(handoff) => logging::Process::Worker(handoff.number),
        None if config.supervision.supervised() => logging::Process::Supervisor,
        None => logging::Process::Single,
    };
    if let Err(message) = logging::init(&config, process) {
        tracing::error!("{message}");
        logging::flush();
        // In a worker, a boot failure: the supervisor opened the file, but
        // the account the worker runs as may not.
        return Ok(if handoff.is_some() { 3 } else { 1 });
    }
    if let Some(path) = &config.log_config {
        if let Err(message) = logging::forward::start(py, path, config.log_level.as_tracing()) {
            let _ = writeln!(std::io::stderr(), "rsasgi: {message}");
            return Ok(if handoff.is_some() {
                supervisor::EXIT_BOOT_FAILURE
            } else {
                2
            });
        }
        if config.log_format == config::LogFormat::Json || config.access_log_file.is_some() {
            tracing::warn!(
                "--log-config decides where and how lines are written: \
                 --log-format and --access-logfile are ignored"
            );
        }
    }
    // Found before logging was set up, when a line would have been lost.
    if let Some(problem) = &unusable_notify_socket {
        tracing::warn!("{problem}");
    }
    for note in &config.compat_notes {
        tracing::debug!("{note}");
    }
    if handoff.is_none() {
        // Once, from the process the operator started, not from each worker.
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
    }
    if let (Some(tls), None) = (&config.tls, &handoff) {
        // Checked once here, so a bad file is one line and exit 1 before
        // anything listens; each worker then loads the files itself.
        if let Err(message) = tls.server_config(&config.alpn_protocols()) {
            tracing::error!("{message}");
            logging::flush();
            return Ok(1);
        }
    }
    let activated: Vec<_> = match activated {
        Ok(activated) => activated
            .into_iter()
            .map(|socket| {
                tracing::debug!(
                    "systemd passed socket {:?} (socket activation)",
                    socket.name
                );
                socket.fd
            })
            .collect(),
        Err(message) => {
            tracing::error!("Socket activation: {message}");
            logging::flush();
            return Ok(1);
        }
    };
    if !activated.is_empty() {
        if let Some(warning) = config.sockets_unused_by_activation(activated.len()) {
            tracing::warn!("{warning}");
        }
    }
    let code = match handoff {
        Some(handoff) => worker::run(py, config, worker::Sockets::Handoff(handoff), notifier),
        None => {
            // A worker inherits its account from the supervisor's spawn.
            let credentials = match supervisor::privileges::Credentials::resolve(
                config.user.as_deref(),
                config.group.as_deref(),
            ) {
                Ok(credentials) => credentials,
                Err(message) => {
                    tracing::error!("{message}");
                    logging::flush();
                    return Ok(2);
                }
            };
            // As root, the checks above read every file: the workers, as
            // --user, may not. Before anything listens.
            if let Some(credentials) = &credentials {
                if let Err(message) = check_config::reachable_as(credentials, &config) {
                    tracing::error!("{message}");
                    logging::flush();
                    return Ok(1);
                }
            }
            let own = worker::Own {
                activated,
                credentials,
            };
            if config.supervision.supervised() {
                let workers = supervisor::WorkerArgs {
                    argv,
                    file_args: invocation.file_args,
                };
                supervisor::run(py, config, workers, own, notifier)
            } else {
                worker::run(py, config, worker::Sockets::Own(own), notifier)
            }
        }
    };
    logging::flush();
    if logging::forward::stuck() {
        // Python's own exit would wait for the stuck handler's lock
        // (logging.shutdown), for ever: leave without it.
        std::process::exit(*code.as_ref().unwrap_or(&1));
    }
    code
}

/// `--daemon` and `--log-file`, before any thread starts: a fork keeps only
/// the thread that calls it.
fn detach(py: Python<'_>, config: &config::Config) -> Result<(), String> {
    if config.daemon {
        if config.log_file.is_none() {
            let _ = writeln!(
                std::io::stderr(),
                "rsasgi: --daemon without --log-file: the log is discarded"
            );
        }
        if let Some(path) = &config.log_file {
            // Tried before the standard outputs go to /dev/null, so that
            // the error can still be seen.
            logging::check_output(path)
                .map_err(|err| format!("Cannot open --log-file {}: {err}", path.display()))?;
        }
        daemon::daemonize(py, config.log_file.as_deref())
            .map_err(|err| format!("Cannot run as a daemon: {err}"))?;
    }
    if let Some(path) = &config.log_file {
        logging::redirect_output(path, config)
            .map_err(|err| format!("Cannot open --log-file {}: {err}", path.display()))?;
    }
    Ok(())
}

#[pymodule]
fn _rsasgi(m: &Bound<'_, PyModule>) -> PyResult<()> {
    allocator::configure();
    m.add_function(wrap_pyfunction!(main, m)?)?;
    m.add_function(wrap_pyfunction!(logging::log, m)?)?;
    m.add_function(wrap_pyfunction!(logging::flush_logs, m)?)?;
    m.add_function(wrap_pyfunction!(logging::forward::next_log_records, m)?)?;
    m.add_function(wrap_pyfunction!(logging::forward::log_records_finished, m)?)?;
    worker::add_stop_waits(m)?;
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
