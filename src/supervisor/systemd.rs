//! systemd integration for the supervisor: socket activation
//! (`sd_listen_fds(3)`) and service notifications (`sd_notify(3)`).
//!
//! Written over `std` and `libc` rather than the `sd-notify` crate: the
//! supervisor keeps notifying after it has removed `NOTIFY_SOCKET` from the
//! environment its workers inherit, and that crate reads the variable anew on
//! every call; it also cannot reach abstract socket addresses.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::Level;

use crate::net::SocketRole;

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START` in `sd-daemon.h`).
const LISTEN_FDS_START: RawFd = 3;

/// The name `sd_listen_fds_with_names(3)` gives each fd when `LISTEN_FDNAMES` is absent.
const UNNAMED_FD: &str = "unknown";

/// The variables systemd sets for socket activation.
const LISTEN_VARS: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// The variables that let a process notify systemd. Workers are started
/// without them: one that saw them could tell systemd it is ready before the
/// supervisor is.
pub(crate) const NOTIFY_VARS: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// One socket passed by systemd.
#[derive(Debug)]
pub(crate) struct ListenFd {
    /// Owned from here on: dropping it closes the socket.
    pub(crate) fd: OwnedFd,
    /// `FileDescriptorName=` (systemd defaults it to the .socket unit's
    /// name), or "unknown" when systemd sent no `LISTEN_FDNAMES`.
    pub(crate) name: String,
}

/// Takes the sockets systemd passed by socket activation, in `LISTEN_FDS` order.
///
/// None when `LISTEN_PID` is absent or names another process (the variables
/// were inherited, not meant for us). Each fd is checked to be a socket and
/// gets `FD_CLOEXEC`, so only what the supervisor hands on reaches a worker.
/// The `LISTEN_*` variables are removed in every case, so children do not
/// misread them and a second call finds nothing: that is what makes owning
/// the descriptors here sound (so do not also name them with `--fd`). Call
/// it once, before any thread starts: changing the environment races with
/// threads that read it.
pub(crate) fn listen_fds() -> Result<Vec<ListenFd>, String> {
    let [pid, count, names] = LISTEN_VARS.map(env_var);
    for name in LISTEN_VARS {
        std::env::remove_var(name);
    }
    let passed = parse_listen_env(
        pid?.as_deref(),
        count?.as_deref(),
        names?.as_deref(),
        std::process::id(),
    )?;
    for (fd, name) in &passed {
        prepare_fd(*fd, name)?;
    }
    let take = |(fd, name)| ListenFd {
        // SAFETY: prepare_fd saw fd open; systemd passed it to this process
        // alone, and with LISTEN_* gone no other call here claims it.
        fd: unsafe { OwnedFd::from_raw_fd(fd) },
        name,
    };
    Ok(passed.into_iter().map(take).collect())
}

/// Applies the `sd_listen_fds(3)` rules to the variables' values: the fds
/// passed to `our_pid` with their names, or none when they are not for us.
fn parse_listen_env(
    pid: Option<&str>,
    count: Option<&str>,
    names: Option<&str>,
    our_pid: u32,
) -> Result<Vec<(RawFd, String)>, String> {
    let Some(pid) = pid else {
        return Ok(Vec::new());
    };
    let pid: u32 = pid
        .parse()
        .map_err(|_| format!("LISTEN_PID={pid:?} is not a process id"))?;
    let Some(count) = count.filter(|_| pid == our_pid) else {
        return Ok(Vec::new());
    };
    let end = count
        .parse::<RawFd>()
        .ok()
        .filter(|n| *n >= 0)
        .and_then(|n| LISTEN_FDS_START.checked_add(n))
        .ok_or_else(|| format!("LISTEN_FDS={count:?} is not a count of file descriptors"))?;
    let fds = LISTEN_FDS_START..end;
    if fds.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<String> = match names {
        Some(names) => names.split(':').map(str::to_owned).collect(),
        None => vec![UNNAMED_FD.to_owned(); fds.len()],
    };
    if names.len() != fds.len() {
        return Err(format!(
            "LISTEN_FDNAMES has {} names for LISTEN_FDS={count}",
            names.len()
        ));
    }
    Ok(fds.zip(names).collect())
}

/// Checks that `fd` is an open socket rsasgi can accept connections from,
/// and marks it close-on-exec. `name` is its `FileDescriptorName=`.
///
/// Checked here, before anything is announced: a socket that cannot accept
/// would otherwise be served, READY=1 sent, and every accept(2) fail.
fn prepare_fd(fd: RawFd, name: &str) -> Result<(), String> {
    // SAFETY: fstat writes only the buffer we pass; a closed fd fails (EBADF).
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut stat) } != 0 {
        let err = io::Error::last_os_error();
        return Err(format!("LISTEN_FDS: fd {fd} is not open: {err}"));
    }
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(format!("LISTEN_FDS: fd {fd} is not a socket"));
    }
    // The unit's name tells which .socket unit to change when there are several.
    let passed = match name {
        UNNAMED_FD | "" => format!("systemd passed fd {fd}"),
        name => format!("systemd passed fd {fd} ({name})"),
    };
    // SAFETY: fstat just saw a socket open at fd; it is borrowed for the
    // checks only.
    let role = crate::net::socket_role(unsafe { BorrowedFd::borrow_raw(fd) })
        .map_err(|err| format!("{passed}, whose socket type cannot be read: {err}"))?;
    match role {
        SocketRole::Listening => {}
        SocketRole::NotStream(kind) => {
            return Err(format!(
                "{passed} as a {kind} socket: rsasgi serves stream sockets; use ListenStream= \
                 in the .socket unit"
            ))
        }
        // Accept=yes: systemd accepts, and starts a service per connection.
        SocketRole::Connected => {
            return Err(format!(
                "{passed} as one connection (Accept=yes): set Accept=no in the .socket unit; \
                 rsasgi accepts the connections itself"
            ))
        }
        SocketRole::Idle => {
            return Err(format!(
                "{passed} as a stream socket that is not listening: use ListenStream= with \
                 Accept=no in the .socket unit"
            ))
        }
    }
    crate::net::set_cloexec(fd)
        .map_err(|err| format!("LISTEN_FDS: fd {fd}: cannot set close-on-exec: {err}"))
}

/// Reads one variable: `None` when absent, an error naming it when not UTF-8.
fn env_var(name: &str) -> Result<Option<String>, String> {
    match std::env::var(name) {
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{name} is not valid UTF-8")),
    }
}

/// What is lost while systemd cannot be told: said with each warning that it cannot.
const UNHEARD: &str = "systemd sees neither READY=1 nor watchdog pings, and stops a \
                       Type=notify service at TimeoutStartSec (or WatchdogSec=)";

/// Sends `sd_notify(3)` state changes to systemd.
///
/// Without `NOTIFY_SOCKET` (not started by systemd) every method does
/// nothing. Sends never block or panic: a message systemd's queue has no room
/// for is dropped, since a late status is worth less than a stalled
/// supervisor. The first failure of the process is a warning, as it may cost
/// the service its start; of each later run of failures only the first is
/// logged, at debug level.
#[derive(Debug)]
pub(crate) struct Notifier {
    /// An unbound socket to send from and systemd's address; `None`: no-op.
    target: Option<(UnixDatagram, SocketAddr)>,
    /// `WATCHDOG_USEC` when it is meant for this process.
    watchdog: Option<Duration>,
    /// Set by a failed send, cleared by a good one.
    failing: AtomicBool,
    /// Set by the first failed send, for good.
    warned: AtomicBool,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`.
    ///
    /// When `NOTIFY_SOCKET` is set but cannot be used, the notifier does
    /// nothing and the message says why, for the caller to log as a warning
    /// once logging is set up: this runs before, when a line would be lost.
    pub(crate) fn from_env() -> (Notifier, Option<String>) {
        let [usec, pid] =
            ["WATCHDOG_USEC", "WATCHDOG_PID"].map(|name| env_var(name).ok().flatten());
        let watchdog = parse_watchdog(usec.as_deref(), pid.as_deref(), std::process::id());
        let Some(value) = std::env::var_os("NOTIFY_SOCKET") else {
            return (Notifier::off(), None);
        };
        let notifier = parse_notify_socket(&value).and_then(|addr| {
            Notifier::open(addr, watchdog).map_err(|err| {
                format!("NOTIFY_SOCKET={value:?}: cannot open a socket to send from: {err}")
            })
        });
        match notifier {
            Ok(notifier) => (notifier, None),
            Err(problem) => (
                Notifier::off(),
                Some(format!("{problem}; sd_notify is off: {UNHEARD}")),
            ),
        }
    }

    /// A notifier that sends to `addr`, from a socket of its own.
    fn open(addr: SocketAddr, watchdog: Option<Duration>) -> io::Result<Notifier> {
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(Notifier {
            target: Some((socket, addr)),
            watchdog,
            ..Notifier::off()
        })
    }

    /// A notifier that does nothing.
    fn off() -> Notifier {
        Notifier {
            target: None,
            watchdog: None,
            failing: AtomicBool::new(false),
            warned: AtomicBool::new(false),
        }
    }

    /// Startup or a reload is complete: `READY=1`, a status line and our pid.
    pub(crate) fn ready(&self, status: &str) {
        // The command that started a --daemon waits for the same moment.
        crate::daemon::started();
        let pid = std::process::id();
        self.send(&format!(
            "READY=1\nSTATUS={}\nMAINPID={pid}",
            one_line(status)
        ));
    }

    /// A reload has begun (`Type=notify-reload`); call [`Self::ready`] when done.
    /// systemd ≥ 253 wants the CLOCK_MONOTONIC time with it to order the two.
    pub(crate) fn reloading(&self) {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    /// Shutdown has begun.
    pub(crate) fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// A free-form status line for `systemctl status`.
    pub(crate) fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }

    /// The watchdog ping: send it only from a loop that is doing its work.
    pub(crate) fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// The full `WatchdogSec=` interval when systemd expects pings from us.
    /// systemd recommends pinging at half of it; halving is the caller's job.
    pub(crate) fn watchdog_interval(&self) -> Option<Duration> {
        self.target.as_ref().and(self.watchdog)
    }

    fn send(&self, message: &str) {
        let Some((socket, addr)) = &self.target else {
            return;
        };
        let Err(err) = socket.send_to_addr(message.as_bytes(), addr) else {
            self.failing.store(false, Ordering::Relaxed);
            return;
        };
        match self.report_failure() {
            Some(Level::WARN) => tracing::warn!(
                "sd_notify: cannot send to NOTIFY_SOCKET={}: {err}; until a send succeeds, \
                 {UNHEARD}",
                shown(addr)
            ),
            Some(_) => tracing::debug!("sd_notify: could not send {message:?}: {err}"),
            None => {}
        }
    }

    /// Records a failed send; returns the level to log it at, or `None` when
    /// it continues a run of failures already logged.
    fn report_failure(&self) -> Option<Level> {
        if self.failing.swap(true, Ordering::Relaxed) {
            None
        } else if self.warned.swap(true, Ordering::Relaxed) {
            Some(Level::DEBUG)
        } else {
            Some(Level::WARN)
        }
    }
}

/// `addr` as `NOTIFY_SOCKET` spells it: a path, or `@name`.
fn shown(addr: &SocketAddr) -> String {
    match (addr.as_pathname(), addr.as_abstract_name()) {
        (Some(path), _) => path.display().to_string(),
        (None, Some(name)) => format!("@{}", String::from_utf8_lossy(name)),
        (None, None) => "(an unnamed address)".into(),
    }
}

/// Parses `NOTIFY_SOCKET`: an absolute path, or `@name` in the abstract namespace.
fn parse_notify_socket(value: &OsStr) -> Result<SocketAddr, String> {
    let bytes = value.as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        SocketAddr::from_abstract_name(name)
    } else if bytes.starts_with(b"/") {
        SocketAddr::from_pathname(value)
    } else {
        return Err(format!(
            "NOTIFY_SOCKET={value:?} is neither an absolute path nor an @abstract address"
        ));
    }
    .map_err(|err| format!("NOTIFY_SOCKET={value:?}: {err}"))
}

/// Applies `sd_watchdog_enabled(3)`: the interval when `WATCHDOG_USEC` is a
/// positive count and `WATCHDOG_PID` is absent or ours.
fn parse_watchdog(usec: Option<&str>, pid: Option<&str>, our_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.parse::<u32>().ok()? != our_pid {
            return None;
        }
    }
    let usec = usec?.parse::<u64>().ok().filter(|usec| *usec > 0)?;
    Some(Duration::from_micros(usec))
}

/// A status on one line: a newline would start another `KEY=value` assignment.
fn one_line(status: &str) -> String {
    status.replace('\n', " ")
}

/// CLOCK_MONOTONIC in microseconds, the clock `MONOTONIC_USEC=` is read on.
fn monotonic_usec() -> u128 {
    super::monotonic_now().as_micros()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::path::PathBuf;

    const PID: u32 = 4242;

    /// A directory under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(test: &str) -> TempDir {
            let name = format!("rsasgi-systemd-{}-{test}", std::process::id());
            let path = std::env::temp_dir().join(name);
            std::fs::create_dir_all(&path).expect("create the temp dir");
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The next datagram on `socket` as text; waits with a deadline, not a sleep.
    fn receive(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 512];
        let len = socket.recv(&mut buf).expect("a datagram");
        String::from_utf8(buf[..len].to_vec()).expect("UTF-8")
    }

    #[test]
    fn listen_env_is_ignored_without_our_pid() {
        assert_eq!(parse_listen_env(None, Some("2"), None, PID), Ok(vec![]));
        let other = parse_listen_env(Some("1"), Some("2"), Some("a:b"), PID);
        assert_eq!(other, Ok(vec![]));
    }

    #[test]
    fn listen_env_counts_fds_from_three() {
        let fds = parse_listen_env(Some("4242"), Some("2"), None, PID);
        let unknown = || UNNAMED_FD.to_owned();
        assert_eq!(fds, Ok(vec![(3, unknown()), (4, unknown())]));
        let named = parse_listen_env(Some("4242"), Some("2"), Some("http:"), PID);
        assert_eq!(named, Ok(vec![(3, "http".into()), (4, String::new())]));
        assert_eq!(parse_listen_env(Some("4242"), None, None, PID), Ok(vec![]));
    }

    #[test]
    fn malformed_listen_env_names_the_variable() {
        let err = |pid, count, names| parse_listen_env(Some(pid), Some(count), names, PID);
        let not_a_pid = "LISTEN_PID=\"x\" is not a process id";
        assert_eq!(err("x", "1", None), Err(not_a_pid.into()));
        let not_a_count = "LISTEN_FDS=\"-1\" is not a count of file descriptors";
        assert_eq!(err("4242", "-1", None), Err(not_a_count.into()));
        let overflow = err("4242", "2147483647", None).expect_err("3 + i32::MAX fds");
        assert!(overflow.starts_with("LISTEN_FDS="), "{overflow}");
        let names = "LISTEN_FDNAMES has 1 names for LISTEN_FDS=2";
        assert_eq!(err("4242", "2", Some("a")), Err(names.into()));
    }

    #[test]
    fn prepare_fd_marks_a_listening_socket_close_on_exec() {
        let dir = TempDir::new("cloexec");
        let socket = UnixListener::bind(dir.0.join("listening")).expect("bind");
        let raw = socket.as_raw_fd();
        // SAFETY: F_SETFD on the descriptor `socket` keeps open.
        unsafe { libc::fcntl(raw, libc::F_SETFD, 0) };
        assert_eq!(prepare_fd(raw, UNNAMED_FD), Ok(()));
        // SAFETY: F_GETFD reads the flags of the fd `socket` keeps open.
        let flags = unsafe { libc::fcntl(raw, libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    }

    #[test]
    fn prepare_fd_says_which_fd_is_not_a_socket() {
        let file = std::fs::File::open("/dev/null").expect("open /dev/null");
        let fd = file.as_raw_fd();
        let expected = format!("LISTEN_FDS: fd {fd} is not a socket");
        assert_eq!(prepare_fd(fd, UNNAMED_FD), Err(expected));
    }

    #[test]
    fn prepare_fd_names_the_setting_that_passed_a_socket_no_one_can_accept_from() {
        // Accept=yes hands over one connection.
        let (connected, _peer) = UnixStream::pair().expect("a pair");
        let fd = connected.as_raw_fd();
        assert_eq!(
            prepare_fd(fd, "web.socket"),
            Err(format!(
                "systemd passed fd {fd} (web.socket) as one connection (Accept=yes): set \
                 Accept=no in the .socket unit; rsasgi accepts the connections itself"
            ))
        );
        // ListenDatagram=.
        let datagram = UnixDatagram::unbound().expect("a socket");
        let fd = datagram.as_raw_fd();
        assert_eq!(
            prepare_fd(fd, UNNAMED_FD),
            Err(format!(
                "systemd passed fd {fd} as a datagram socket: rsasgi serves stream sockets; \
                 use ListenStream= in the .socket unit"
            ))
        );
    }

    #[test]
    fn notify_socket_is_a_path_or_an_abstract_name() {
        let abstract_addr = parse_notify_socket(OsStr::new("@rsasgi/notify")).expect("abstract");
        assert_eq!(
            abstract_addr.as_abstract_name(),
            Some(&b"rsasgi/notify"[..])
        );
        let path = parse_notify_socket(OsStr::new("/run/systemd/notify")).expect("path");
        assert_eq!(path.as_pathname(), Some("/run/systemd/notify".as_ref()));
        for bad in ["", "notify", "vsock:2:1234"] {
            let err = parse_notify_socket(OsStr::new(bad)).expect_err(bad);
            assert!(err.starts_with("NOTIFY_SOCKET="), "{err}");
        }
    }

    #[test]
    fn notifier_sends_the_documented_messages() {
        let dir = TempDir::new("messages");
        let path = dir.0.join("notify");
        let systemd = UnixDatagram::bind(&path).expect("bind");
        let addr = SocketAddr::from_pathname(&path).expect("address");
        let notifier = Notifier::open(addr, None).expect("a socket");
        notifier.ready("serving\n4 workers");
        let pid = std::process::id();
        let expected = format!("READY=1\nSTATUS=serving 4 workers\nMAINPID={pid}");
        assert_eq!(receive(&systemd), expected);
        notifier.status("draining");
        assert_eq!(receive(&systemd), "STATUS=draining");
        notifier.stopping();
        assert_eq!(receive(&systemd), "STOPPING=1");
        notifier.watchdog();
        assert_eq!(receive(&systemd), "WATCHDOG=1");
        let before = monotonic_usec();
        notifier.reloading();
        let after = monotonic_usec();
        let message = receive(&systemd);
        let usec = message.strip_prefix("RELOADING=1\nMONOTONIC_USEC=");
        let usec: u128 = usec.and_then(|v| v.parse().ok()).expect(&message);
        assert!(
            before <= usec && usec <= after,
            "{before} <= {usec} <= {after}"
        );
    }

    #[test]
    fn notifier_reaches_an_abstract_address() {
        let name = format!("rsasgi-systemd-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(&name).expect("address");
        let systemd = UnixDatagram::bind_addr(&addr).expect("bind");
        let notifier = Notifier::open(addr, None).expect("a socket");
        notifier.stopping();
        assert_eq!(receive(&systemd), "STOPPING=1");
    }

    #[test]
    fn notifier_without_a_listener_stays_quiet() {
        let dir = TempDir::new("nobody");
        let addr = SocketAddr::from_pathname(dir.0.join("gone")).expect("address");
        let notifier = Notifier::open(addr, Some(Duration::from_secs(10))).expect("a socket");
        notifier.ready("up");
        notifier.watchdog();
        assert!(notifier.failing.load(Ordering::Relaxed));
        assert!(notifier.warned.load(Ordering::Relaxed));
        let off = Notifier::off();
        off.ready("up");
        assert_eq!(off.watchdog_interval(), None);
    }

    #[test]
    fn only_the_first_failure_of_the_process_is_a_warning() {
        let dir = TempDir::new("failures");
        let path = dir.0.join("notify");
        let addr = SocketAddr::from_pathname(&path).expect("address");
        let notifier = Notifier::open(addr, None).expect("a socket");
        assert_eq!(notifier.report_failure(), Some(Level::WARN));
        assert_eq!(notifier.report_failure(), None);
        // A send that succeeds ends the run of failures.
        let systemd = UnixDatagram::bind(&path).expect("bind");
        notifier.stopping();
        assert_eq!(receive(&systemd), "STOPPING=1");
        assert_eq!(notifier.report_failure(), Some(Level::DEBUG));
        assert_eq!(notifier.report_failure(), None);
    }

    #[test]
    fn watchdog_interval_is_for_our_pid_only() {
        let ten_seconds = Some(Duration::from_secs(10));
        assert_eq!(parse_watchdog(Some("10000000"), None, PID), ten_seconds);
        assert_eq!(
            parse_watchdog(Some("10000000"), Some("4242"), PID),
            ten_seconds
        );
        assert_eq!(parse_watchdog(Some("10000000"), Some("1"), PID), None);
        assert_eq!(parse_watchdog(Some("10000000"), Some("me"), PID), None);
        assert_eq!(parse_watchdog(Some("ten"), None, PID), None);
        assert_eq!(parse_watchdog(Some("0"), None, PID), None);
        assert_eq!(parse_watchdog(None, Some("4242"), PID), None);
    }
}
