//! Where a worker's Python stacks go when it is asked for them (a stuck event
//! loop, a WSGI thread past `--timeout-request`, a boot past
//! `--timeout-worker-boot`): an anonymous `memfd` that
//! `faulthandler` writes into from its signal handler, then read back whole
//! and logged as one event.
//!
//! `faulthandler` writes a frame line in several small `write()`s. Straight to
//! stderr, which the other workers share, their log lines landed inside the
//! frames; and in `--log-format json` the dump was not JSON at all.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use pyo3::Python;

/// The most of a dump that is logged. faulthandler itself stops at 100
/// threads of 100 frames each, well under this.
const MOST: usize = 1 << 20;

pub(crate) struct StackFile {
    file: File,
}

impl StackFile {
    /// A new, empty file, closed on exec (a supervisor hands it down by
    /// clearing that in the child).
    pub(crate) fn create() -> io::Result<StackFile> {
        // SAFETY: memfd_create takes a NUL-terminated name and flags, and
        // returns a new descriptor or -1.
        let fd = unsafe { libc::memfd_create(c"rsasgi-stacks".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just created and is owned by nothing else.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        Ok(StackFile { file })
    }

    /// Worker side: takes descriptor `fd`, handed down by the supervisor
    /// for this process to own.
    pub(crate) fn inherit(fd: RawFd) -> io::Result<StackFile> {
        // Not for the programs the app starts.
        crate::net::set_cloexec(fd)?;
        // SAFETY: fd was handed to this process to own (set_cloexec found it
        // open); nothing else here uses it.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        Ok(StackFile { file })
    }

    /// The descriptor faulthandler writes to, and the supervisor hands down.
    pub(crate) fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Bytes written since the last [`take`](Self::take).
    pub(crate) fn len(&self) -> u64 {
        self.file.metadata().map_or(0, |meta| meta.len())
    }

    /// Empties the file. Call it just before asking for a dump, so that
    /// [`take`](Self::take) then returns that dump alone: faulthandler
    /// answers a SIGUSR2 from anyone (`kill -USR2` from a gunicorn habit),
    /// and what it wrote then would come out inside the next dump asked for.
    pub(crate) fn discard(&self) -> io::Result<()> {
        // faulthandler writes at the descriptor's offset, which every copy
        // of it shares: back to the start, over an empty file.
        self.file.set_len(0)?;
        (&self.file).seek(SeekFrom::Start(0)).map(drop)
    }

    /// What was written since the last call (or [`discard`](Self::discard)),
    /// as text, and empties the file for the next dump. Call it once the
    /// writer is done (or dead): bytes written while it runs may be lost.
    pub(crate) fn take(&self) -> io::Result<String> {
        let len = usize::try_from(self.len()).unwrap_or(usize::MAX);
        let mut dump = vec![0; len.min(MOST)];
        let mut read = 0;
        while read < dump.len() {
            match self.file.read_at(&mut dump[read..], read as u64)? {
                0 => break,
                n => read += n,
            }
        }
        dump.truncate(read);
        self.discard()?;
        let mut text = String::from_utf8_lossy(&dump).trim_end().to_string();
        if len > read {
            text.push_str(&format!("\n… ({} more bytes not shown)", len - read));
        }
        Ok(text)
    }
}

/// Has faulthandler, registered for SIGUSR2 by the worker, write the Python
/// stack of every thread, and logs them from `file` as one event (without
/// it, they went to stderr).
///
/// faulthandler walks every thread's frames without a lock: a thread that
/// runs Python meanwhile may free a frame under it, and the worker dies of
/// a segmentation fault instead of logging (CI saw it once, at a boot
/// deadline that came as the import ended). So the dump is taken by a
/// thread that holds the GIL, while the others wait at a safe point; when
/// the GIL cannot be had within `gil_wait` (C code holding it, which the
/// stacks are then most wanted for), it is taken without, as before.
pub(crate) fn log_this_process(file: Option<&StackFile>, gil_wait: Duration) {
    // Only what this call asks for: stacks a SIGUSR2 from outside had
    // written would otherwise come out here, stale, before them.
    if let Some(file) = file {
        if let Err(err) = file.discard() {
            tracing::warn!(
                "Cannot empty the Python stack file ({err}): stacks written before, on a \
                 SIGUSR2 sent from outside, may precede those that follow"
            );
        }
    }
    let without_gil = match dump_holding_the_gil(gil_wait) {
        GilDump::Done => None,
        GilDump::NotHad => Some(format!(
            "The GIL was not free within {:.1}s: a thread holds it (C code that does not \
             release it, or a long computation), so the stacks that follow are read without it",
            gil_wait.as_secs_f64()
        )),
        GilDump::Unavailable => Some(
            "The stacks that follow are read without the GIL: a thread that waits for it since \
             an earlier dump still does (a thread holds it: C code that does not release it, or \
             a long computation)"
                .to_owned(),
        ),
        GilDump::NoHelper => Some(
            "Cannot start a thread to take the stacks holding the GIL: they are read without it"
                .to_owned(),
        ),
    };
    match without_gil {
        None => tracing::debug!("Python stacks taken holding the GIL"),
        Some(why) => {
            tracing::warn!("{why}");
            raise_dump_signal();
        }
    }
    if let Some(file) = file {
        let helper = HELPER_THREAD.load(Ordering::SeqCst);
        match file.take().map(|stacks| without_helper(&stacks, helper)) {
            Ok(stacks) if !stacks.is_empty() => {
                tracing::error!("Python stacks of this worker's threads:\n{stacks}");
            }
            Ok(_) => tracing::warn!("No Python stacks were written (is faulthandler registered?)"),
            Err(err) => tracing::warn!("Cannot read the Python stacks written: {err}"),
        }
    }
}

/// The dump without the entry of rsasgi's thread that waited for the GIL
/// to take it (`thread`, as faulthandler names threads): it has no Python
/// frame, and would only puzzle.
fn without_helper(stacks: &str, thread: u64) -> String {
    let other = format!("thread 0x{thread:016x} ");
    let current = format!("current {other}");
    let mut kept = String::with_capacity(stacks.len());
    let mut lines = stacks.split_inclusive('\n').peekable();
    while let Some(line) = lines.next() {
        let header = line.to_ascii_lowercase();
        if (header.starts_with(&other) || header.starts_with(&current))
            && lines
                .peek()
                .is_some_and(|next| next.trim() == "<no Python frame>")
        {
            lines.next();
            // And the blank line that ends the entry.
            lines.next_if(|next| next.trim().is_empty());
            continue;
        }
        kept.push_str(line);
    }
    kept
}

/// The thread that last waited for the GIL to take a dump (see
/// [`without_helper`]); 0 before any.
static HELPER_THREAD: AtomicU64 = AtomicU64::new(0);

enum GilDump {
    Done,
    /// The GIL was not had in time.
    NotHad,
    /// A thread still waits for it from an earlier dump.
    Unavailable,
    /// No thread could be started to wait for it.
    NoHelper,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Waiting,
    Dumping,
    Done,
    Abandoned,
}

/// A thread still waiting for the GIL for a dump given up on: the next
/// dump does not start another (one blocked thread at most).
static WAITING_FOR_GIL: AtomicBool = AtomicBool::new(false);

/// Raises the dump signal on a thread that holds the GIL: this one if it
/// does, else a new one, waited for up to `wait`.
fn dump_holding_the_gil(wait: Duration) -> GilDump {
    // SAFETY: reads this thread's own state only.
    if unsafe { pyo3::ffi::PyGILState_Check() } == 1 {
        raise_dump_signal();
        return GilDump::Done;
    }
    if WAITING_FOR_GIL.swap(true, Ordering::SeqCst) {
        return GilDump::Unavailable;
    }
    let shared = Arc::new((Mutex::new(Stage::Waiting), Condvar::new()));
    let theirs = Arc::clone(&shared);
    let spawned = std::thread::Builder::new()
        .name("rsasgi-stacks".into())
        .spawn(move || {
            // SAFETY: pthread_self has no preconditions.
            HELPER_THREAD.store(unsafe { libc::pthread_self() } as u64, Ordering::SeqCst);
            let (stage, changed) = &*theirs;
            Python::attach(|_py| {
                let mut st = stage.lock();
                if *st != Stage::Waiting {
                    return;
                }
                *st = Stage::Dumping;
                drop(st);
                raise_dump_signal();
                *stage.lock() = Stage::Done;
                changed.notify_all();
            });
            WAITING_FOR_GIL.store(false, Ordering::SeqCst);
        });
    if spawned.is_err() {
        WAITING_FOR_GIL.store(false, Ordering::SeqCst);
        return GilDump::NoHelper;
    }
    let (stage, changed) = &*shared;
    let deadline = Instant::now() + wait;
    let mut st = stage.lock();
    loop {
        match *st {
            Stage::Done => return GilDump::Done,
            // It holds the GIL and is writing: a dump takes milliseconds.
            Stage::Dumping => changed.wait(&mut st),
            Stage::Waiting => {
                if changed.wait_until(&mut st, deadline).timed_out() && *st == Stage::Waiting {
                    *st = Stage::Abandoned;
                    return GilDump::NotHad;
                }
            }
            Stage::Abandoned => unreachable!("only this thread abandons"),
        }
    }
}

/// Sent to this very thread, the handler runs before the call returns:
/// the dump is whole here, without waiting on a shutdown that may come
/// first. Unblocked meanwhile, in case the thread that started this one
/// had it blocked (the mask is inherited).
fn raise_dump_signal() {
    // SAFETY: sigset calls on a local set; pthread_sigmask and pthread_kill on
    // the calling thread, with a signal whose handler (faulthandler's) only
    // makes async-signal-safe calls; the old mask is put back.
    unsafe {
        let mut usr2 = std::mem::zeroed::<libc::sigset_t>();
        let mut before = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut usr2);
        libc::sigaddset(&mut usr2, libc::SIGUSR2);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &usr2, &mut before);
        libc::pthread_kill(libc::pthread_self(), libc::SIGUSR2);
        libc::pthread_sigmask(libc::SIG_SETMASK, &before, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Writes through a second descriptor to the same open file, as a
    /// worker's faulthandler does to the supervisor's.
    fn writer(stacks: &StackFile) -> File {
        // SAFETY: dup returns a new descriptor for the same open file, or -1.
        let fd = unsafe { libc::dup(stacks.fd()) };
        assert!(fd >= 0);
        // SAFETY: fd was just created and is owned by nothing else.
        File::from(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    #[test]
    fn the_entry_of_the_helper_thread_is_left_out() {
        let dump = "Thread 0x00007f0000000001 (most recent call first):\n  File \"app.py\", line 3 in <module>\n\n\
                    Current thread 0x00007f0000000002 (most recent call first):\n  <no Python frame>\n\n\
                    Thread 0x00007f0000000003 (most recent call first):\n  <no Python frame>\n";
        assert_eq!(
            without_helper(dump, 0x7f00_0000_0002),
            "Thread 0x00007f0000000001 (most recent call first):\n  File \"app.py\", line 3 in <module>\n\n\
             Thread 0x00007f0000000003 (most recent call first):\n  <no Python frame>\n"
        );
        // Waiting for the GIL, it is not the current thread.
        assert_eq!(
            without_helper(dump, 0x7f00_0000_0003),
            "Thread 0x00007f0000000001 (most recent call first):\n  File \"app.py\", line 3 in <module>\n\n\
             Current thread 0x00007f0000000002 (most recent call first):\n  <no Python frame>\n\n"
        );
        // Another thread's entry stays, even with no frame.
        assert_eq!(without_helper(dump, 0x7f00_0000_0009), dump);
    }

    #[test]
    fn takes_what_was_written_and_starts_over() {
        let stacks = StackFile::create().unwrap();
        assert_eq!(stacks.take().unwrap(), "");
        let mut out = writer(&stacks);
        let lines: [&[u8]; 2] = [
            b"Thread 0x1 (most recent call first):\n",
            b"  File \"a.py\", line 3 in f\n\n",
        ];
        for line in lines {
            out.write_all(line).unwrap();
        }
        assert_eq!(stacks.len(), (lines[0].len() + lines[1].len()) as u64);
        assert_eq!(
            stacks.take().unwrap(),
            "Thread 0x1 (most recent call first):\n  File \"a.py\", line 3 in f"
        );
        assert_eq!(stacks.len(), 0);
        // The shared offset went back too: the next dump starts at 0, with
        // no hole of zeroes before it.
        out.write_all(b"second\n").unwrap();
        assert_eq!(stacks.take().unwrap(), "second");
    }

    #[test]
    fn a_discard_leaves_only_what_is_written_after_it() {
        let stacks = StackFile::create().unwrap();
        let mut out = writer(&stacks);
        out.write_all(b"written unasked\n").unwrap();
        stacks.discard().unwrap();
        assert_eq!(stacks.len(), 0);
        out.write_all(b"asked for\n").unwrap();
        assert_eq!(stacks.take().unwrap(), "asked for");
    }

    #[test]
    fn bytes_that_are_not_utf8_do_not_lose_the_dump() {
        let stacks = StackFile::create().unwrap();
        writer(&stacks)
            .write_all(b"  File \"/srv/caf\xe9.py\", line 1 in f\n")
            .unwrap();
        assert_eq!(
            stacks.take().unwrap(),
            "  File \"/srv/caf\u{fffd}.py\", line 1 in f"
        );
    }

    #[test]
    fn a_huge_dump_is_cut_and_says_so() {
        let stacks = StackFile::create().unwrap();
        writer(&stacks).write_all(&vec![b'x'; MOST + 10]).unwrap();
        let text = stacks.take().unwrap();
        assert!(
            text.ends_with("\n… (10 more bytes not shown)"),
            "{}",
            &text[MOST - 5..]
        );
        assert_eq!(stacks.len(), 0);
    }

    #[test]
    fn is_closed_on_exec_and_inherits() {
        let stacks = StackFile::create().unwrap();
        // SAFETY: F_GETFD on an open descriptor.
        let flags = unsafe { libc::fcntl(stacks.fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        let handed = writer(&stacks);
        // SAFETY: clearing FD_CLOEXEC on an open descriptor, as a spawn does.
        unsafe { libc::fcntl(handed.as_raw_fd(), libc::F_SETFD, 0) };
        let fd = std::os::fd::IntoRawFd::into_raw_fd(handed);
        let inherited = StackFile::inherit(fd).unwrap();
        // SAFETY: F_GETFD on an open descriptor.
        let flags = unsafe { libc::fcntl(inherited.fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        writer(&inherited).write_all(b"x").unwrap();
        assert_eq!(stacks.take().unwrap(), "x");
    }
}
