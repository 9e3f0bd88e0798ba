//! A stop signal while one process imports the app.
//!
//! The signals that stop it then (SIGTERM, SIGINT, SIGQUIT, SIGHUP) have
//! Python-level handlers, and CPython runs those between two bytecodes, on
//! the main thread: an import inside a long call into C code (a key
//! derivation, a C database driver's connect) does not see the signal
//! until that call returns, however many come, where the signal's default
//! action used to end the process at once. So the signal is heard here
//! too, at the C level, before CPython's own handler, and a thread ends the
//! process if Python has not acted on it `BLOCKED_STOP_WAIT` later.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use signal_hook_registry::SigId;

/// How long a stop signal may go unanswered while the app blocks Python (its
/// import, or its lifespan startup, in a call that does not return) before
/// the process leaves without it.
pub(crate) const BLOCKED_STOP_WAIT: Duration = Duration::from_secs(5);

/// Watches the stop signals until dropped: the import returned, or Python
/// acted on the signal.
pub(crate) struct LoadingStopWatch {
    ids: Vec<SigId>,
    over: Arc<AtomicBool>,
    /// The end the signal actions write to; written to once more, when the
    /// watch is over, to wake the thread.
    wake: UnixStream,
}

impl LoadingStopWatch {
    /// Starts watching `signals`; `leave` runs on the watch's thread, with
    /// the signal's name, when one has gone unanswered for
    /// `BLOCKED_STOP_WAIT` (it is to end the process).
    pub(crate) fn start(
        signals: &[i32],
        leave: impl FnOnce(&str) + Send + 'static,
    ) -> std::io::Result<LoadingStopWatch> {
        let (wake, mut heard) = UnixStream::pair()?;
        // A burst of signals must never block a handler.
        wake.set_nonblocking(true)?;
        let over = Arc::new(AtomicBool::new(false));
        let fd = wake.as_raw_fd();
        let mut ids = Vec::with_capacity(signals.len());
        for &signal in signals {
            let byte = u8::try_from(signal).unwrap_or(u8::MAX);
            // SAFETY: the action only writes one byte to a socket, which is
            // async-signal-safe; the socket outlives the action (`drop`
            // unregisters it first). signal-hook then calls CPython's own
            // handler, which only notes the signal for Python.
            let registered = unsafe {
                signal_hook_registry::register(signal, move || {
                    libc::write(fd, std::ptr::from_ref(&byte).cast(), 1);
                })
            };
            match registered {
                Ok(id) => ids.push(id),
                Err(err) => {
                    for id in ids {
                        signal_hook_registry::unregister(id);
                    }
                    return Err(err);
                }
            }
        }
        let watching = Arc::clone(&over);
        let watch = move || {
            let mut byte = [0u8];
            if heard.read_exact(&mut byte).is_err() || watching.load(Ordering::SeqCst) {
                return;
            }
            let deadline = Instant::now() + BLOCKED_STOP_WAIT;
            // Later signals (or the end of the watch) wake the read early.
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                if watching.load(Ordering::SeqCst) || left.is_zero() {
                    break;
                }
                if heard.set_read_timeout(Some(left)).is_err() {
                    std::thread::sleep(left);
                    break;
                }
                match heard.read(&mut [0u8]) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(err)
                        if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                    {
                        break
                    }
                    Err(err) if err.kind() == ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
            if !watching.load(Ordering::SeqCst) {
                leave(signal_name(i32::from(byte[0])));
            }
        };
        if let Err(err) = std::thread::Builder::new()
            .name("rsasgi-loading-stop".into())
            .spawn(watch)
        {
            for id in ids {
                signal_hook_registry::unregister(id);
            }
            return Err(err);
        }
        Ok(LoadingStopWatch { ids, over, wake })
    }
}

impl Drop for LoadingStopWatch {
    fn drop(&mut self) {
        self.over.store(true, Ordering::SeqCst);
        for id in self.ids.drain(..) {
            signal_hook_registry::unregister(id);
        }
        let _ = self.wake.write(&[0]);
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGHUP => "SIGHUP",
        _ => "a stop signal",
    }
}
