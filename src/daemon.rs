//! `--daemon`: detaching from the terminal, with the command the shell ran
//! waiting until the server serves.
//!
//! A daemon that exits 0 as soon as it forks tells an init script or a
//! `Type=forking` unit that the server started when it may be about to fail
//! on a taken port or an app that does not import. Instead the first process
//! waits on a pipe: the daemon writes to it once it serves (when it would
//! send systemd `READY=1`), and a daemon that exits before that closes it.
//! The command then exits 0 or 1 accordingly, as `Type=forking` expects.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use pyo3::prelude::*;

/// After this long without news the waiting command says it is still waiting.
const PATIENCE: Duration = Duration::from_secs(10);

/// The daemon's end of the pipe to the waiting command, until it serves
/// (-1: none). A raw descriptor, so that a process the app forks can close
/// its copy in an at-fork handler, where nothing may lock or allocate: a
/// copy kept open there would keep the command waiting after the daemon
/// failed, for as long as that process lives.
static WAITING: AtomicI32 = AtomicI32::new(-1);

/// Detaches the classic way: fork (the first process waits for the server to
/// start, then exits), start a session, fork again (so no terminal can be
/// acquired), and put `/dev/null` on the standard descriptors. Python's own
/// `os.fork` keeps the interpreter's state consistent in the child. Call it
/// before any thread starts: a fork keeps only the thread that calls it.
pub(crate) fn daemonize(py: Python<'_>, log_file: Option<&Path>) -> PyResult<()> {
    let os = py.import("os")?;
    let fork = || -> PyResult<bool> { Ok(os.call_method0("fork")?.extract::<i32>()? > 0) };
    let (started, waiting) = pipe()?;
    if fork()? {
        drop(waiting);
        leave(wait_for_start(started, log_file));
    }
    drop(started);
    os.call_method0("setsid")?;
    if fork()? {
        leave(0);
    }
    WAITING.store(waiting.into_raw_fd(), Ordering::SeqCst);
    // SAFETY: registers a handler that only closes a descriptor, which is
    // async-signal-safe, as a child of fork(2) requires.
    unsafe { libc::pthread_atfork(None, None, Some(close_in_child)) };
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for fd in [libc::STDIN_FILENO, libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: dup2 onto the standard descriptors; `null` is open.
        if unsafe { libc::dup2(null.as_raw_fd(), fd) } < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
    }
    Ok(())
}

/// In a child the daemon forks: its copy of the pipe must not keep the
/// command waiting.
extern "C" fn close_in_child() {
    let fd = WAITING.swap(-1, Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: the child's own copy of the descriptor, owned by no one else.
        unsafe { libc::close(fd) };
    }
}

/// Takes the daemon's end of the pipe, once.
fn take_pipe() -> Option<File> {
    let fd: RawFd = WAITING.swap(-1, Ordering::SeqCst);
    // SAFETY: the descriptor was ours, and the swap made this its only owner.
    (fd >= 0).then(|| File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Ends a process of the fork at once, as `os._exit`: without the
/// interpreter's finalization, which belongs to the daemon.
fn leave(code: i32) -> ! {
    // SAFETY: _exit ends the process; nothing runs after it.
    unsafe { libc::_exit(code) }
}

/// The server serves: lets the waiting command exit 0. Later calls (a
/// reload's) and calls without `--daemon` do nothing.
pub(crate) fn started() {
    if let Some(mut waiting) = take_pipe() {
        // The command may have been killed meanwhile: nothing to tell then.
        let _ = waiting.write_all(b"1");
    }
}

/// The server could not start, though the process goes on (`--reload`
/// waits for the files to change): lets the waiting command exit 1.
pub(crate) fn failed() {
    drop(take_pipe());
}

/// A pipe whose ends no worker inherits: (read, write).
fn pipe() -> std::io::Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills both descriptors on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both are new descriptors that nothing else owns.
    let [read, write] = fds.map(|fd| File::from(unsafe { OwnedFd::from_raw_fd(fd) }));
    Ok((read, write))
}

/// In the first process: waits for the daemon's word, and returns the exit
/// code for the shell.
fn wait_for_start(mut started: File, log_file: Option<&Path>) -> i32 {
    // CTRL+C ends the wait (the daemon, in a session of its own, goes on):
    // Python's handler would only interrupt the calls below, and the
    // command would carry on waiting.
    // SAFETY: restores the default action; no handler of ours is involved.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
    let where_to_look = match log_file {
        Some(path) => format!("its log is in {}", path.display()),
        None => "run it without --daemon, or with --log-file, to see why".to_owned(),
    };
    let mut said_waiting = false;
    loop {
        if !said_waiting && !readable_within(&started, PATIENCE) {
            said_waiting = true;
            let _ = writeln!(
                std::io::stderr(),
                "rsasgi: waiting for the server to start (--daemon)"
            );
            continue;
        }
        let mut word = [0u8; 1];
        match started.read(&mut word) {
            Ok(1) => return 0,
            Ok(_) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "rsasgi: the server did not start; {where_to_look}"
                );
                return 1;
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "rsasgi: cannot tell whether the server started ({err}); {where_to_look}"
                );
                return 1;
            }
        }
    }
}

/// Whether `file` has something to read (or its writers are gone) within `wait`.
fn readable_within(file: &File, wait: Duration) -> bool {
    let mut poll = libc::pollfd {
        fd: file.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd; an interrupted poll reads as "not yet".
    unsafe { libc::poll(&mut poll, 1, millis) > 0 }
}
