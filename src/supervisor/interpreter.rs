//! The interpreter each worker runs in: the supervisor's own, started the
//! same way (`rsasgi._interpreter` reads how from Python).
//!
//! A worker runs `python OPTIONS -m rsasgi ARGS`, where OPTIONS are the
//! supervisor's interpreter options (`-O`, `-X dev`, `-W error`, `-I`...), as
//! uvicorn's spawned workers get them; and it puts the supervisor's first
//! `sys.path` entry in place of the current directory that `-m` put there.
//! So the app imports and runs in a worker as it does in one process without
//! workers and under `--check-config`, whether the supervisor is the
//! `rsasgi` command (its script's directory first) or `python -m rsasgi`.
//!
//! `-E` and `-I` make Python ignore its own `PYTHON*` variables: what the
//! supervisor hands down (`RSASGI_*`) is read by rsasgi, not by Python, and
//! still arrives.

use std::ffi::OsString;

use pyo3::prelude::*;

/// The variable the supervisor's first `sys.path` entry travels in, absent
/// when it has none (`-I`, `-P`): then the worker has none either.
pub(crate) const PATH_VARIABLE: &str = "RSASGI_WORKER_SYS_PATH0";

/// How the supervisor's interpreter was started, for its workers'.
pub(super) struct Interpreter {
    /// Its command-line options, before `-m rsasgi`.
    pub options: Vec<OsString>,
    /// Its first `sys.path` entry, for [`PATH_VARIABLE`].
    pub path_entry: Option<OsString>,
}

impl Interpreter {
    pub(super) fn of_this_process(py: Python<'_>) -> PyResult<Interpreter> {
        let module = py.import("rsasgi._interpreter")?;
        Ok(Interpreter {
            options: module.call_method0("options")?.extract()?,
            path_entry: module.call_method0("path_entry")?.extract()?,
        })
    }
}

/// Reads and removes [`PATH_VARIABLE`].
pub(crate) fn take_path_entry() -> Option<OsString> {
    let entry = std::env::var_os(PATH_VARIABLE);
    std::env::remove_var(PATH_VARIABLE);
    entry
}

/// In a worker, before anything is imported from `sys.path`: takes the
/// supervisor's first entry (see `rsasgi._interpreter.adopt_path_entry`).
pub(crate) fn adopt_path_entry(py: Python<'_>, entry: OsString) -> PyResult<()> {
    py.import("rsasgi._interpreter")?
        .call_method1("adopt_path_entry", (entry,))?;
    Ok(())
}
