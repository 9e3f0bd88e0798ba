//! A short-lived child process that makes a few system calls with
//! credentials of its own and reports a few integers back: `--uds` binds its
//! socket file this way under the account's filesystem ids and a umask, and
//! `--user` checks what that account may read. Credentials changed in a
//! child change nothing in this process, whose umask and ids every thread
//! shares.

use std::io;

/// Forks, runs `steps` in the child, and returns the integers it reported.
///
/// They come back on a close-on-exec pipe, not as an exit status: with
/// SIGCHLD ignored (inherited so across exec: a shell's `trap '' CHLD`),
/// the kernel reaps the child by itself and waitpid finds none.
///
/// # Safety
///
/// This process runs other threads (the runtime's, the log writers', any a
/// site hook of the interpreter started), and the child inherits their
/// locks as they were, maybe held. `steps` must make only async-signal-safe
/// calls (raw system calls: no allocation, no lock, no formatting, no
/// panic), on memory prepared before this call or on its own stack.
pub(crate) unsafe fn run<const N: usize>(steps: impl FnOnce() -> [i64; N]) -> io::Result<[i64; N]> {
    // One write of at most PIPE_BUF bytes is atomic, and into an empty pipe
    // it never blocks, so it cannot be interrupted half done.
    const { assert!(N * size_of::<i64>() <= libc::PIPE_BUF) };
    let mut pipe = [0; 2];
    // SAFETY: pipe2 fills two descriptors into a live array.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let [read_end, write_end] = pipe;
    // SAFETY: the child runs `steps` (async-signal-safe, as the caller
    // promised), writes from its own stack, and leaves with _exit, which
    // neither unwinds nor runs destructors or atexit handlers.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let report = steps();
        unsafe {
            libc::write(write_end, report.as_ptr().cast(), size_of_val(&report));
            libc::_exit(0)
        }
    }
    let forked = io::Error::last_os_error();
    // SAFETY: closing our copy of the child's end, which we own.
    unsafe { libc::close(write_end) };
    if pid < 0 {
        // SAFETY: the read end is ours, and unused.
        unsafe { libc::close(read_end) };
        return Err(forked);
    }
    let mut report = [0i64; N];
    let size = size_of_val(&report);
    let mut got = 0;
    while got < size {
        // SAFETY: reading into the rest of a live array, of which any bytes
        // make integers.
        let read = unsafe {
            libc::read(
                read_end,
                report.as_mut_ptr().cast::<u8>().add(got).cast(),
                size - got,
            )
        };
        match read {
            n if n > 0 => got += n as usize,
            0 => break,
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
            _ => break,
        }
    }
    // SAFETY: the read end is ours.
    unsafe { libc::close(read_end) };
    let mut status = 0;
    // SAFETY: waiting for the child just forked, into a live integer. It
    // may be gone already (SIGCHLD ignored): ECHILD then, which is fine.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
        && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
    {}
    if got < size {
        return Err(io::Error::other(
            "the process doing it ended without saying how it went",
        ));
    }
    Ok(report)
}

/// The error number the last failed system call left, for a child's report.
pub(crate) fn errno() -> i64 {
    // SAFETY: errno is this thread's, always readable.
    i64::from(unsafe { *libc::__errno_location() })
}

/// The error a child reported by its number.
pub(crate) fn error(errno: i64) -> io::Error {
    i32::try_from(errno).map_or_else(
        |_| io::Error::other(format!("error number {errno}")),
        io::Error::from_raw_os_error,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_child_reports_what_it_found() {
        // SAFETY: getpid is a system call, and the rest is arithmetic.
        let [pid, answer] = unsafe { run(|| [i64::from(libc::getpid()), 42]) }.unwrap();
        assert_ne!(pid, i64::from(std::process::id()), "ran in another process");
        assert_eq!(answer, 42);
    }

    #[test]
    fn a_child_that_dies_before_reporting_is_an_error() {
        // SAFETY: _exit is async-signal-safe.
        let err = unsafe { run::<1>(|| libc::_exit(3)) }.unwrap_err();
        assert!(err.to_string().contains("without saying"), "{err}");
    }
}
