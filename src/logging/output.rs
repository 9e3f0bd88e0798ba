//! Where log lines go: the server log on stderr (which `--error-logfile`
//! redirects), and access lines there too or to their own `--access-logfile`.
//!
//! Lines are handed to a writer thread per output (tracing-appender's
//! non-blocking writer) instead of being written where they happen. Whoever
//! reads our stderr can stall (a paused pager, a busy log shipper) or die
//! (`rsasgi app 2>&1 | head`); a write from the reactor would then block
//! every connection, and `eprintln!`-style writes panic on a closed pipe.
//! Here a full queue drops the line and counts it, a failed write is dropped
//! by the writer thread, and neither the reactor nor the Python thread ever
//! waits, whichever file or pipe a line goes to.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use tracing::Metadata;
use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::MakeWriter;

use super::ACCESS;

/// Log lines queued for a writer thread before new ones are dropped. At
/// about 200 bytes a line this bounds the queue near 3 MiB, and it absorbs a
/// burst of access-log lines while the reader catches up.
const QUEUED_LINES_LIMIT: usize = 16 * 1024;

/// Keep the writer threads alive; dropped by [`flush`](super::flush) so that
/// queued lines are written before the process exits.
pub(super) static GUARDS: Mutex<Vec<WorkerGuard>> = Mutex::new(Vec::new());

/// `--access-logfile`: where access lines go when not with the server log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AccessDestination {
    /// `-`: standard output, as gunicorn's `--access-logfile -`.
    Stdout,
    /// A file, appended to, reopened on SIGUSR1.
    File(PathBuf),
}

impl AccessDestination {
    /// `-` or a path, as the command line gives it.
    pub(crate) fn parse(raw: &str) -> Result<AccessDestination, String> {
        match raw {
            "" => Err("expected a file, or - for standard output".into()),
            "-" => Ok(AccessDestination::Stdout),
            path => Ok(AccessDestination::File(PathBuf::from(path))),
        }
    }
}

/// The line that says how many lines were dropped, in the log's format.
pub(super) type DroppedNote = Box<dyn Fn(usize) -> String + Send + Sync>;

/// One non-blocking writer, plus what it takes to report dropped lines once
/// logging gets through again, and to reopen its file.
pub(super) struct Output {
    writer: NonBlocking,
    dropped: ErrorCounter,
    reported: AtomicUsize,
    note: DroppedNote,
    /// Where the note goes when not with the lines it reports: the server
    /// log's writer and its drop counter (access lines in a format of the
    /// operator's, where a note of ours would break the file's parsers).
    note_elsewhere: Option<(NonBlocking, ErrorCounter)>,
    /// The file the writer thread appends to, by path and descriptor.
    file: Option<(PathBuf, RawFd)>,
}

impl Output {
    fn new(sink: impl Write + Send + 'static, name: &str, note: DroppedNote) -> Output {
        let (writer, guard) = NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(QUEUED_LINES_LIMIT)
            .thread_name(name)
            .finish(sink);
        GUARDS.lock().push(guard);
        Output {
            dropped: writer.error_counter(),
            writer,
            reported: AtomicUsize::new(0),
            note,
            note_elsewhere: None,
            file: None,
        }
    }

    /// Sends the note about this output's dropped lines to `server`'s
    /// stream instead of its own.
    pub(super) fn note_to(mut self, server: &Output, note: DroppedNote) -> Output {
        self.note_elsewhere = Some((server.writer.clone(), server.dropped.clone()));
        self.note = note;
        self
    }

    /// The server log: stderr.
    pub(super) fn stderr(note: DroppedNote) -> Output {
        Output::new(std::io::stderr(), "rsasgi-log", note)
    }

    /// Access lines on their own.
    pub(super) fn access(
        destination: &AccessDestination,
        note: DroppedNote,
    ) -> std::io::Result<Output> {
        Ok(match destination {
            AccessDestination::Stdout => Output::new(std::io::stdout(), "rsasgi-access-log", note),
            AccessDestination::File(path) => {
                let file = open_appending(path)?;
                let fd = file.as_raw_fd();
                let mut output = Output::new(file, "rsasgi-access-log", note);
                output.file = Some((path.clone(), fd));
                output
            }
        })
    }

    /// The writer for one line, preceded by a note when lines were dropped
    /// since the last one got through.
    fn writer(&self) -> NonBlocking {
        let dropped = self.dropped.dropped_lines();
        let reported = self.reported.load(Ordering::Relaxed);
        if dropped > reported
            && self
                .reported
                .compare_exchange(reported, dropped, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let (mut writer, counter) = match &self.note_elsewhere {
                Some((writer, counter)) => (writer.clone(), counter),
                None => (self.writer.clone(), &self.dropped),
            };
            let before = counter.dropped_lines();
            let _ = writer.write_all((self.note)(dropped - reported).as_bytes());
            // The queue is lossy: a note that found it still full was
            // dropped too, and counted as a line of that queue. Its lines
            // are then reported by a later note, and the note itself is not
            // (when it counted as one of this output's). A line of another
            // thread dropped just now looks the same: if the note got
            // through, the next one repeats its number. The count may then
            // be too high, never too low.
            if counter.dropped_lines() != before {
                let own = usize::from(self.note_elsewhere.is_none());
                self.reported
                    .fetch_sub(dropped - reported - own, Ordering::Relaxed);
            }
        }
        self.writer.clone()
    }

    /// Opens the file again at its path (logrotate moved the old one away)
    /// and puts it in place of the old one under the writer thread's
    /// descriptor, so no line is lost or written twice. Returns the path;
    /// `None` when this output is no file.
    pub(super) fn reopen(&self) -> Option<(&Path, std::io::Result<()>)> {
        let (path, fd) = self.file.as_ref()?;
        let reopened = open_appending(path).and_then(|file| put_in_place(&file, *fd));
        Some((path, reopened))
    }

    /// Gives the file to the account workers run as, so that they can open
    /// it again on SIGUSR1 (gunicorn does the same).
    pub(super) fn chown(
        &self,
        uid: libc::uid_t,
        gid: libc::gid_t,
    ) -> Option<(&Path, std::io::Result<()>)> {
        let (path, fd) = self.file.as_ref()?;
        // SAFETY: fchown on a descriptor this output keeps open.
        let result = if unsafe { libc::fchown(*fd, uid, gid) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        };
        Some((path, result))
    }
}

/// Opens `path` for appending, creating it when it is not there.
pub(super) fn open_appending(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// Makes descriptor `fd` refer to `file`'s open file (dup2 replaces it in
/// one step).
pub(super) fn put_in_place(file: &File, fd: RawFd) -> std::io::Result<()> {
    // SAFETY: dup2 onto a descriptor this process keeps open; `file` is open.
    if unsafe { libc::dup2(file.as_raw_fd(), fd) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Where the fmt layer writes: the server log, and access lines to theirs
/// when they have one.
pub(super) struct Outputs {
    pub server: Output,
    pub access: Option<Output>,
}

impl<'a> MakeWriter<'a> for &'static Outputs {
    type Writer = NonBlocking;

    fn make_writer(&'a self) -> NonBlocking {
        self.server.writer()
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> NonBlocking {
        match &self.access {
            Some(access) if meta.target() == ACCESS => access.writer(),
            _ => self.server.writer(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dash_is_standard_output() {
        assert_eq!(AccessDestination::parse("-"), Ok(AccessDestination::Stdout));
        assert_eq!(
            AccessDestination::parse("/var/log/access.log"),
            Ok(AccessDestination::File("/var/log/access.log".into()))
        );
        assert!(AccessDestination::parse("").is_err());
    }

    #[test]
    fn a_reopened_file_takes_the_place_of_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let note: DroppedNote = Box::new(|_| String::new());
        let output = Output::access(&AccessDestination::File(path.clone()), note).unwrap();
        let (_, fd) = output.file.clone().unwrap();
        // Written straight to the descriptor the writer thread uses.
        let write = |text: &str| {
            // SAFETY: writing a live buffer to an open descriptor.
            let written = unsafe { libc::write(fd, text.as_ptr().cast(), text.len()) };
            assert_eq!(written, text.len() as isize);
        };
        write("one\n");
        let rotated = dir.path().join("access.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        write("two\n");
        let (reopened, result) = output.reopen().unwrap();
        assert_eq!(reopened, path);
        result.unwrap();
        write("three\n");
        assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "one\ntwo\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "three\n");
    }
}
