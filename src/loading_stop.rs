//! A stop signal while one process boots: imports the app, or runs its
//! lifespan startup.
//!
//! The signals that stop it then (SIGTERM, SIGINT, SIGQUIT, SIGHUP) have
//! Python-level handlers, and CPython runs those between two bytecodes, on
//! the main thread: an import or a startup inside a long call into C code (a
//! key derivation, a C database driver's connect) does not see the signal
//! until that call returns, however many come, where the signal's default
//! action used to end the process at once. So the signal is heard here
//! too, at the C level, before CPython's own handler, and a thread ends the
//! process if Python has not acted on it `BLOCKED_STOP_WAIT` later.
//!
//! The watch puts its own action in front of the one each signal has when
//! it starts (CPython's), and puts that one back when it ends. Not with
//! signal-hook-registry: it installs its handler once for the life of the
//! process, and each `signal.signal()` from Python (the loader putting its
//! handlers back, asyncio's `add_signal_handler`) puts CPython's in its
//! place for good, so the startup's watch, after the import's, heard nothing.

use std::ffi::c_void;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a stop signal may go unanswered while the app blocks Python (its
/// import, or its lifespan startup, in a call that does not return) before
/// the process leaves without it.
pub(crate) const BLOCKED_STOP_WAIT: Duration = Duration::from_secs(5);

/// Linux numbers its signals up to 64.
const SIGNALS: usize = 65;

/// Where [`heard`] writes the number of a signal (-1: no watch).
static HEARD_FD: AtomicI32 = AtomicI32::new(-1);
/// The handler each watched signal had (its address), which [`heard`]
/// calls after noting the signal; set when a watch starts, and left as it
/// is when it ends (the watch's action is gone by then).
static REPLACED: [AtomicUsize; SIGNALS] = [const { AtomicUsize::new(0) }; SIGNALS];
/// Whether that handler takes a `siginfo_t` (`SA_SIGINFO`).
static REPLACED_TAKES_INFO: [AtomicBool; SIGNALS] = [const { AtomicBool::new(false) }; SIGNALS];
/// One watch at a time: the statics above are its.
static WATCHING: AtomicBool = AtomicBool::new(false);

/// Watches the stop signals until dropped: the import or the startup
/// returned, or Python acted on the signal.
pub(crate) struct LoadingStopWatch {
    replaced: Vec<Replaced>,
    over: Arc<AtomicBool>,
    /// The end [`heard`] writes to; written to once more, when the watch is
    /// over, to wake the thread.
    wake: UnixStream,
}

impl LoadingStopWatch {
    /// Starts watching `signals`, those of them that have a handler (one
    /// left to its default action ends the process at once anyway); `leave`
    /// runs on the watch's thread, with the signal's name, when one has gone
    /// unanswered for `wait` (`BLOCKED_STOP_WAIT`: it is to end the process).
    pub(crate) fn start(
        signals: &[i32],
        wait: Duration,
        leave: impl FnOnce(&str) + Send + 'static,
    ) -> std::io::Result<LoadingStopWatch> {
        if WATCHING.swap(true, Ordering::SeqCst) {
            return Err(std::io::Error::other("another watch is running"));
        }
        let (wake, mut heard) = match UnixStream::pair() {
            Ok(pair) => pair,
            Err(err) => {
                WATCHING.store(false, Ordering::SeqCst);
                return Err(err);
            }
        };
        let over = Arc::new(AtomicBool::new(false));
        // From here on, dropping the watch undoes whatever was done.
        let mut watch = LoadingStopWatch {
            replaced: Vec::with_capacity(signals.len()),
            over: Arc::clone(&over),
            wake,
        };
        // A burst of signals must never block the action.
        watch.wake.set_nonblocking(true)?;
        HEARD_FD.store(watch.wake.as_raw_fd(), Ordering::SeqCst);
        for &signal in signals {
            if let Some(replaced) = Replaced::install(signal)? {
                watch.replaced.push(replaced);
            }
        }
        let thread = move || {
            let mut byte = [0u8];
            if heard.read_exact(&mut byte).is_err() || over.load(Ordering::SeqCst) {
                return;
            }
            let deadline = Instant::now() + wait;
            // Later signals (or the end of the watch) wake the read early.
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                if over.load(Ordering::SeqCst) || left.is_zero() {
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
            if !over.load(Ordering::SeqCst) {
                leave(signal_name(i32::from(byte[0])));
            }
        };
        std::thread::Builder::new()
            .name("rsasgi-loading-stop".into())
            .spawn(thread)?;
        Ok(watch)
    }
}

impl Drop for LoadingStopWatch {
    fn drop(&mut self) {
        self.over.store(true, Ordering::SeqCst);
        for replaced in self.replaced.drain(..) {
            replaced.put_back();
        }
        HEARD_FD.store(-1, Ordering::SeqCst);
        let _ = self.wake.write(&[0]);
        WATCHING.store(false, Ordering::SeqCst);
    }
}

/// A signal's action that the watch's replaced.
struct Replaced {
    signal: i32,
    action: libc::sigaction,
}

impl Replaced {
    /// Puts [`heard`] in front of `signal`'s handler; None when it has none
    /// (its default action, or ignored), which is left as it is.
    fn install(signal: i32) -> std::io::Result<Option<Replaced>> {
        let index = usize::try_from(signal)
            .ok()
            .filter(|&index| index < SIGNALS)
            .ok_or_else(|| std::io::Error::from(ErrorKind::InvalidInput))?;
        // SAFETY: sigaction only reads the signal's action into `action`.
        let mut action = unsafe { std::mem::zeroed::<libc::sigaction>() };
        if unsafe { libc::sigaction(signal, std::ptr::null(), &mut action) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if action.sa_sigaction == libc::SIG_DFL || action.sa_sigaction == libc::SIG_IGN {
            return Ok(None);
        }
        REPLACED[index].store(action.sa_sigaction, Ordering::SeqCst);
        REPLACED_TAKES_INFO[index].store(action.sa_flags & libc::SA_SIGINFO != 0, Ordering::SeqCst);
        // The same mask and flags as CPython's, SA_RESTART left out as it
        // leaves it: a blocking call the signal interrupts still returns
        // EINTR, for Python to act on it.
        let mut ours = action;
        ours.sa_sigaction = heard as *const () as usize;
        ours.sa_flags |= libc::SA_SIGINFO;
        // SAFETY: `heard` only makes async-signal-safe calls, then calls
        // the handler it replaced, as the kernel would have.
        if unsafe { libc::sigaction(signal, &ours, std::ptr::null_mut()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Some(Replaced { signal, action }))
    }

    /// Puts the replaced action back, unless Python has put one of its own
    /// since (the app's import set a handler), which stays.
    fn put_back(self) {
        // SAFETY: sigaction reads the current action, then sets the one it
        // replaced, which was the signal's before.
        unsafe {
            let mut now = std::mem::zeroed::<libc::sigaction>();
            if libc::sigaction(self.signal, std::ptr::null(), &mut now) == 0
                && now.sa_sigaction == heard as *const () as usize
            {
                libc::sigaction(self.signal, &self.action, std::ptr::null_mut());
            }
        }
    }
}

/// The watch's action: notes the signal for the watch's thread, then calls
/// the handler it replaced (CPython's, which notes it for Python).
extern "C" fn heard(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
    // SAFETY: errno is this thread's; what the interrupted code read in it
    // is put back before returning.
    let errno = unsafe { *libc::__errno_location() };
    let fd = HEARD_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let byte = u8::try_from(signal).unwrap_or(u8::MAX);
        // SAFETY: write is async-signal-safe; the socket is non-blocking,
        // and open while the watch lasts.
        unsafe { libc::write(fd, std::ptr::from_ref(&byte).cast(), 1) };
    }
    if let Some(index) = usize::try_from(signal)
        .ok()
        .filter(|&index| index < SIGNALS)
    {
        let handler = REPLACED[index].load(Ordering::SeqCst);
        if handler != 0 {
            // SAFETY: `handler` is the address sigaction gave for this
            // signal's handler, of the type its SA_SIGINFO flag says.
            unsafe {
                if REPLACED_TAKES_INFO[index].load(Ordering::SeqCst) {
                    let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut c_void) =
                        std::mem::transmute(handler);
                    handler(signal, info, context);
                } else {
                    let handler: extern "C" fn(libc::c_int) = std::mem::transmute(handler);
                    handler(signal);
                }
            }
        }
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    static CALLED: AtomicUsize = AtomicUsize::new(0);

    extern "C" fn counting(_: libc::c_int) {
        CALLED.fetch_add(1, Ordering::SeqCst);
    }

    fn handler_of(signal: i32) -> usize {
        // SAFETY: sigaction only reads the signal's action.
        unsafe {
            let mut action = std::mem::zeroed::<libc::sigaction>();
            assert_eq!(libc::sigaction(signal, std::ptr::null(), &mut action), 0);
            action.sa_sigaction
        }
    }

    /// SIGWINCH has a handler of its own, as CPython's; SIGURG keeps its
    /// default action. Neither ends the test process when it is not caught.
    #[test]
    fn hears_a_signal_calls_the_handler_it_replaced_and_puts_it_back() {
        // SAFETY: installs a handler that only adds to an atomic counter.
        unsafe {
            let mut action = std::mem::zeroed::<libc::sigaction>();
            action.sa_sigaction = counting as *const () as usize;
            assert_eq!(
                libc::sigaction(libc::SIGWINCH, &action, std::ptr::null_mut()),
                0
            );
        }
        let counting = counting as *const () as usize;
        let (left, leaving) = mpsc::channel();
        let signals = [libc::SIGWINCH, libc::SIGURG];
        let watch = LoadingStopWatch::start(&signals, Duration::from_millis(50), move |name| {
            left.send(name.to_owned()).unwrap();
        })
        .unwrap();
        assert_eq!(handler_of(libc::SIGWINCH), heard as *const () as usize);
        assert_eq!(handler_of(libc::SIGURG), libc::SIG_DFL);
        // SAFETY: to this thread, whose handler runs before the call returns.
        unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGWINCH) };
        assert_eq!(CALLED.load(Ordering::SeqCst), 1);
        let name = leaving.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(name, "a stop signal");
        drop(watch);
        assert_eq!(handler_of(libc::SIGWINCH), counting);
        assert_eq!(handler_of(libc::SIGURG), libc::SIG_DFL);

        // A watch over before its wait is up does not leave.
        let (left, leaving) = mpsc::channel();
        let watch = LoadingStopWatch::start(&signals, Duration::from_secs(5), move |name| {
            left.send(name.to_owned()).unwrap();
        })
        .unwrap();
        // SAFETY: as above.
        unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGWINCH) };
        assert_eq!(CALLED.load(Ordering::SeqCst), 2);
        drop(watch);
        assert!(matches!(
            leaving.recv_timeout(Duration::from_secs(10)),
            Err(mpsc::RecvTimeoutError::Disconnected)
        ));
        assert_eq!(handler_of(libc::SIGWINCH), counting);
    }
}
