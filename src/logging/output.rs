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
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tracing::Metadata;
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::MakeWriter;

use super::ACCESS;

/// Log lines queued for a writer thread before new ones are dropped: it
/// absorbs a burst of access-log lines while the reader catches up.
const QUEUED_LINES_LIMIT: usize = 16 * 1024;

/// Bytes queued for a writer thread before new lines are dropped. Lines are
/// some 200 bytes, but a client chooses the length of those that show its
/// headers (a 30 KB `User-Agent` of non-ASCII bytes becomes 120 KB escaped):
/// counted in lines alone, a stalled reader let a client grow the queue to
/// gigabytes.
const QUEUED_BYTES_LIMIT: usize = 8 * 1024 * 1024;

/// What one output's queue holds, reserved by the threads that log before a
/// line is queued and given back by the writer thread once it is written,
/// and the lines dropped for want of room.
#[derive(Default)]
struct Budget {
    lines: AtomicUsize,
    bytes: AtomicUsize,
    dropped: AtomicUsize,
}

impl Budget {
    /// Takes room for a line of `len` bytes; false when there is none. A
    /// line alone in the queue always fits, however long.
    fn reserve(&self, len: usize) -> bool {
        if self.lines.fetch_add(1, Ordering::AcqRel) >= QUEUED_LINES_LIMIT {
            self.lines.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        let before = self.bytes.fetch_add(len, Ordering::AcqRel);
        if before > 0 && before + len > QUEUED_BYTES_LIMIT {
            self.bytes.fetch_sub(len, Ordering::AcqRel);
            self.lines.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Whether the queue holds less than half of what it may.
    fn below_half(&self) -> bool {
        self.lines.load(Ordering::Acquire) < QUEUED_LINES_LIMIT / 2
            && self.bytes.load(Ordering::Acquire) < QUEUED_BYTES_LIMIT / 2
    }

    fn release(&self, len: usize) {
        self.bytes.fetch_sub(len, Ordering::AcqRel);
        self.lines.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A writer for one line: queued for the writer thread if the budget has
/// room for it, else dropped and counted.
pub(super) struct Queued {
    writer: NonBlocking,
    budget: Arc<Budget>,
}

impl Write for Queued {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        if self.budget.reserve(line.len()) {
            // The channel holds at most the lines reserved, so the lossy
            // writer never finds it full and never drops one of them.
            self.writer.write(line)
        } else {
            self.budget.dropped.fetch_add(1, Ordering::Relaxed);
            Ok(line.len())
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush()
    }
}

/// The writer thread's end: gives a line's room back once it is written,
/// or failed to be (a reader that died).
struct Drained<W> {
    sink: W,
    budget: Arc<Budget>,
}

impl<W: Write> Write for Drained<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.sink.write(buf)
    }

    /// The writer thread writes each line with one call to this.
    fn write_all(&mut self, line: &[u8]) -> std::io::Result<()> {
        let written = self.sink.write_all(line);
        self.budget.release(line.len());
        written
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.sink.flush()
    }
}

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
    budget: Arc<Budget>,
    reported: AtomicUsize,
    note: DroppedNote,
    /// Where the note goes when not with the lines it reports: the server
    /// log's writer and its budget (access lines in a format of the
    /// operator's, where a note of ours would break the file's parsers).
    note_elsewhere: Option<(NonBlocking, Arc<Budget>)>,
    /// The file the writer thread appends to, by path and descriptor.
    file: Option<(PathBuf, RawFd)>,
}

impl Output {
    fn new(sink: impl Write + Send + 'static, name: &str, note: DroppedNote) -> Output {
        let budget = Arc::new(Budget::default());
        let sink = Drained {
            sink,
            budget: Arc::clone(&budget),
        };
        let (writer, guard) = NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(QUEUED_LINES_LIMIT)
            .thread_name(name)
            .finish(sink);
        GUARDS.lock().push(guard);
        Output {
            budget,
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
        self.note_elsewhere = Some((server.writer.clone(), Arc::clone(&server.budget)));
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
    fn writer(&self) -> Queued {
        let dropped = self.budget.dropped.load(Ordering::Relaxed);
        let reported = self.reported.load(Ordering::Relaxed);
        // Once the queue has drained to half: while it is about full, a short
        // note would find room where the long lines it reports did not, and
        // each dropped line would get a note of its own.
        if dropped > reported
            && self.budget.below_half()
            && self
                .reported
                .compare_exchange(reported, dropped, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let (writer, budget) = match &self.note_elsewhere {
                Some((writer, budget)) => (writer.clone(), budget),
                None => (self.writer.clone(), &self.budget),
            };
            let before = budget.dropped.load(Ordering::Relaxed);
            let mut writer = Queued {
                writer,
                budget: Arc::clone(budget),
            };
            let _ = writer.write_all((self.note)(dropped - reported).as_bytes());
            // The queue is lossy: a note that found it still full was
            // dropped too, and counted as a line of that queue. Its lines
            // are then reported by a later note, and the note itself is not
            // (when it counted as one of this output's). A line of another
            // thread dropped just now looks the same: if the note got
            // through, the next one repeats its number. The count may then
            // be too high, never too low.
            if budget.dropped.load(Ordering::Relaxed) != before {
                let own = usize::from(self.note_elsewhere.is_none());
                self.reported
                    .fetch_sub(dropped - reported - own, Ordering::Relaxed);
            }
        }
        Queued {
            writer: self.writer.clone(),
            budget: Arc::clone(&self.budget),
        }
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
        if !may_hand_over(*fd) {
            return None;
        }
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
///
/// Without waiting: a FIFO nobody reads is an error at once (opening one for
/// writing otherwise blocks until a reader comes, and SIGUSR1 reopens files
/// on the event loop). As root, through no symbolic link at all when a
/// directory on the way is one another account may write: that directory
/// is often the app's account's (so that its workers can reopen the file),
/// and a link planted there, at the file or at a directory under it, would
/// point root's writes, and the file [handed to that
/// account](super::hand_files_to), at any file. Links in directories only
/// root writes (`/dev/stdout`, `/var/run`) are followed.
pub(super) fn open_appending(path: &Path) -> std::io::Result<File> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;
    // SAFETY: geteuid has no preconditions.
    let as_root = unsafe { libc::geteuid() } == 0;
    let no_links = as_root && !only_root_writes_above(path);
    let flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
    let opened = if no_links {
        let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
        // SAFETY: open_how is plain integers, for which zero is valid.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | flags) as u64;
        how.mode = 0o666;
        how.resolve = libc::RESOLVE_NO_SYMLINKS;
        // SAFETY: openat2 reads a NUL-terminated path and an open_how of
        // the size given; the descriptor it returns is ours to own.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                libc::AT_FDCWD,
                c_path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        match fd {
            // SAFETY: a descriptor openat2 just opened.
            fd if fd >= 0 => Ok(unsafe { File::from_raw_fd(fd as RawFd) }),
            _ => match std::io::Error::last_os_error() {
                // A kernel before 5.6: at least not through a link at the file.
                err if err.raw_os_error() == Some(libc::ENOSYS) => std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .custom_flags(flags | libc::O_NOFOLLOW)
                    .open(path),
                err => Err(err),
            },
        }
    } else {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(flags)
            .open(path)
    };
    let file = opened.map_err(|err| match err.raw_os_error() {
        Some(libc::ENXIO) => std::io::Error::new(
            err.kind(),
            format!("{err} (a FIFO with no process reading it)"),
        ),
        Some(libc::ELOOP | libc::EXDEV) if no_links => std::io::Error::new(
            err.kind(),
            format!(
                "{err}: the path goes through a symbolic link, and through a directory other \
                 accounts may write, where rsasgi running as root follows no link; give the \
                 file's real path"
            ),
        ),
        _ => err,
    })?;
    // Writes block again (the writer thread's, on its own thread).
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor `file` keeps open.
    unsafe {
        let status = libc::fcntl(fd, libc::F_GETFL);
        if status < 0 || libc::fcntl(fd, libc::F_SETFL, status & !libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(file)
}

/// Whether every directory above `path` belongs to root and is written by
/// no other account (so no one else can have planted a link on the way).
fn only_root_writes_above(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(path) = std::path::absolute(path) else {
        return false;
    };
    path.ancestors().skip(1).all(|dir| {
        std::fs::metadata(dir).is_ok_and(|meta| meta.uid() == 0 && meta.mode() & 0o022 == 0)
    })
}

/// Whether the file open at `fd` may be given to another account: a
/// regular file with no other name (a hard link to another file would hand
/// over that one) that this process owns.
pub(super) fn may_hand_over(fd: RawFd) -> bool {
    // SAFETY: fstat fills a zeroed struct for a descriptor kept open.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut stat) } != 0 {
        return false;
    }
    // SAFETY: geteuid has no preconditions.
    stat.st_mode & libc::S_IFMT == libc::S_IFREG
        && stat.st_nlink == 1
        && stat.st_uid == unsafe { libc::geteuid() }
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
    type Writer = Queued;

    fn make_writer(&'a self) -> Queued {
        self.server.writer()
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Queued {
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
    fn the_queue_is_bounded_in_bytes_but_takes_one_long_line() {
        let budget = Budget::default();
        assert!(budget.reserve(QUEUED_BYTES_LIMIT * 2), "alone, it fits");
        assert!(!budget.reserve(1));
        budget.release(QUEUED_BYTES_LIMIT * 2);
        assert!(budget.reserve(QUEUED_BYTES_LIMIT - 10));
        assert!(budget.reserve(10));
        assert!(!budget.reserve(1));
        budget.release(10);
        budget.release(QUEUED_BYTES_LIMIT - 10);
        assert_eq!(budget.bytes.load(Ordering::Relaxed), 0);
        for _ in 0..QUEUED_LINES_LIMIT {
            assert!(budget.reserve(1));
        }
        assert!(!budget.reserve(1));
        assert_eq!(budget.lines.load(Ordering::Relaxed), QUEUED_LINES_LIMIT);
    }

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
