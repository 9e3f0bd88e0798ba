//! Unix domain sockets rsasgi binds itself (`--uds`, `--bind unix:PATH`):
//! the socket file is created with its mode and owner, a stale one replaced,
//! a live one left alone, and the file removed when the server stops.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use socket2::{Domain, SockAddr, Socket, Type};

/// The longest path a socket can be bound at: Linux's `sun_path` holds 108
/// bytes, the last of them the terminating NUL.
pub(crate) const MAX_PATH_LEN: usize = 107;

/// The account a socket file is created for: `--user` and `--group`, which
/// the app runs as, so that a proxy in that group (nginx's `www-data`)
/// can connect with `--uds-permissions 660`, as with gunicorn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SocketOwner {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

/// The path of a listening Unix socket, and whether it is ours to remove.
/// The file a process created is removed when this is dropped: after its
/// socket is closed (the fields of `Listener::Unix` drop in order), at a
/// stop, or on a return before serving (a refused `--pid`, an app that does
/// not import).
#[derive(Debug)]
pub(crate) struct UnixPath {
    pub path: Arc<Path>,
    created: Option<Created>,
}

/// The socket file a process made with `--uds`.
#[derive(Debug, Clone, Copy)]
struct Created {
    dev: u64,
    ino: u64,
    /// The process that bound it. A child the app forks holds a copy of
    /// this; the file stays its parent's to remove.
    by: u32,
}

impl UnixPath {
    /// A socket someone else bound (`--fd`, socket activation, the
    /// supervisor's): its file is left alone.
    pub(crate) fn inherited(path: PathBuf) -> UnixPath {
        UnixPath {
            path: Arc::from(path),
            created: None,
        }
    }
}

impl Drop for UnixPath {
    /// Removes the socket file we created, unless it is no longer the one we
    /// created (another server may have bound the same path since).
    fn drop(&mut self) {
        let Some(created) = self.created else { return };
        if created.by != std::process::id() {
            return;
        }
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| (meta.dev(), meta.ino()) == (created.dev, created.ino));
        if !ours {
            return;
        }
        if let Err(err) = std::fs::remove_file(&self.path) {
            // In one process with --user, the rights to the directory went
            // with root's; a supervisor keeps them.
            let hint = if err.kind() == io::ErrorKind::PermissionDenied {
                " (with --user, run with --workers, whose supervisor keeps root's rights, or keep \
                 the socket in a directory that user may write)"
            } else {
                ""
            };
            tracing::warn!(
                "Could not remove --uds {}: {err}; the next start replaces it, or remove it by \
                 hand{hint}",
                self.path.display()
            );
        }
    }
}

/// Whether a socket could be bound at `path` as far as the path goes: it
/// fits in `sun_path`, and its directory exists. Startup and
/// `--check-config` both ask.
pub(crate) fn check_path(path: &Path) -> Result<(), String> {
    let shown = path.display();
    let length = path.as_os_str().len();
    if length == 0 {
        return Err("--uds needs a path".into());
    }
    if length > MAX_PATH_LEN {
        return Err(format!(
            "--uds {shown} is {length} bytes long, and a Unix socket's path has at most \
             {MAX_PATH_LEN}: choose a shorter one"
        ));
    }
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let cannot = |why: String| format!("Cannot bind --uds {shown}: {why}");
    match std::fs::metadata(directory) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(cannot(format!(
            "{} is not a directory",
            directory.display()
        ))),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Err(cannot(format!(
            "its directory {} does not exist; create it first (under systemd: \
             RuntimeDirectory=)",
            directory.display()
        ))),
        Err(err) => Err(cannot(format!("{}: {err}", directory.display()))),
    }
}

/// Binds a listening socket at `path`, its file of mode `mode` and, with
/// `owner`, that account's.
pub(crate) fn bind(
    path: &Path,
    backlog: i32,
    mode: u32,
    owner: Option<SocketOwner>,
) -> Result<(UnixListener, UnixPath), String> {
    check_path(path)?;
    // Absolute, so that the file is found at shutdown after the app changed
    // directory (os.chdir at import), and the log and the scope name it
    // whole; as given when only that fits in sun_path (a rare long working
    // directory, where that change would leave the file behind).
    let path = match std::path::absolute(path) {
        Ok(absolute) if absolute.as_os_str().len() <= MAX_PATH_LEN => absolute,
        _ => path.to_path_buf(),
    };
    let shown = path.display();
    remove_stale(&path)?;
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)
        .map_err(|err| format!("Could not create a Unix socket: {err}"))?;
    let addr = SockAddr::unix(&path).map_err(|err| format!("Invalid --uds path {shown}: {err}"))?;
    let created_as = bind_as(&socket, &addr, mode, owner)
        .map_err(|err| format!("Could not bind to {shown}: {err}"))?;
    if let (CreatedAs::Root, Some(owner)) = (created_as, owner) {
        tracing::warn!(
            "--uds {shown} belongs to root (group {}), not to uid {}: that account may not \
             create files in its directory, and without CAP_DAC_OVERRIDE rsasgi cannot create \
             it there for that account; its group and --uds-permissions decide who may connect",
            owner.gid,
            owner.uid
        );
    }
    let meta = std::fs::symlink_metadata(&path)
        .map_err(|err| format!("Could not stat {shown} after binding it: {err}"))?;
    socket
        .listen(backlog)
        .map_err(|err| format!("Could not listen on {shown}: {err}"))?;
    socket
        .set_nonblocking(true)
        .map_err(|err| format!("Could not configure {shown}: {err}"))?;
    let unix = UnixPath {
        path: Arc::from(path),
        created: Some(Created {
            dev: meta.dev(),
            ino: meta.ino(),
            by: std::process::id(),
        }),
    };
    Ok((socket.into(), unix))
}

/// Who is behind a socket file, as a connection to it tells.
#[derive(Debug)]
enum Occupant {
    /// A connection is accepted or queued, or the queue is full (a
    /// non-blocking connect says so at once rather than wait for room).
    Server,
    /// Refused: a socket file left behind by a server that is gone.
    Nobody,
    /// The connection failed otherwise: not allowed to connect (a socket
    /// of another account's, mode 600), or a socket of another kind.
    Unknown(io::Error),
}

fn occupant(path: &Path) -> Occupant {
    let connect = || {
        let addr = SockAddr::unix(path)?;
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
        socket.set_nonblocking(true)?;
        socket.connect(&addr)
    };
    match connect() {
        Ok(()) => Occupant::Server,
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => Occupant::Server,
        Err(err) if err.raw_os_error() == Some(libc::ECONNREFUSED) => Occupant::Nobody,
        // Removed since it was seen.
        Err(err) if err.kind() == io::ErrorKind::NotFound => Occupant::Nobody,
        Err(err) => Occupant::Unknown(err),
    }
}

/// Makes room at `path`: a socket file left by a previous run would make
/// bind fail. Anything else at that path is not ours to remove, nor is the
/// socket of a server that still listens on it (a second instance, started
/// by mistake, would take its address and leave it unreachable while it
/// runs on), nor one we cannot tell about.
fn remove_stale(path: &Path) -> Result<(), String> {
    let shown = path.display();
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(format!(
            "Cannot bind --uds {shown}: a file that is not a socket is there"
        ));
    }
    match occupant(path) {
        Occupant::Server => Err(format!(
            "Cannot bind --uds {shown}: a server is listening on it (another rsasgi, or the one \
             this should replace, still runs); stop it first, or choose another path"
        )),
        Occupant::Unknown(err) => {
            let hint = match err.kind() {
                io::ErrorKind::PermissionDenied => {
                    "; if no server uses it, have its owner or root remove it, else choose \
                     another path"
                }
                _ => "; if no server uses it, remove it, else choose another path",
            };
            Err(format!(
                "Cannot bind --uds {shown}: cannot tell whether a server listens on it \
                 (connecting to it: {err}){hint}"
            ))
        }
        Occupant::Nobody => match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(format!("Could not remove stale socket {shown}: {err}")),
        },
    }
}

/// How the socket file was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CreatedAs {
    /// As asked: by the owner given, or by this process's account.
    Asked,
    /// By root, as the owner given may not create it there and this
    /// process lacks the capability to do it for that account.
    Root,
}

/// The exit status of a binding child that created the file as root.
const BOUND_AS_ROOT: i32 = 255;

/// Binds `socket` to `addr` from a child process that creates the file as
/// `owner` (its filesystem uid and gid), under the umask that leaves exactly
/// `mode`: the file has its mode and owner from the moment it exists.
///
/// Set afterwards, by path, they would land on whatever the path leads to
/// by then: in a directory another account may write (the app's own), that
/// account can rename a symbolic link over the socket in between, and have
/// root chmod or chown the file it points at. Linux gives the new file the
/// socket inode's mode (0777) under the umask, and the filesystem uid and
/// gid; a child changes those for itself alone, where this process's umask
/// is every thread's (the log writers', any a site hook of the interpreter
/// started). The child shares the socket, so its bind is ours.
fn bind_as(
    socket: &Socket,
    addr: &SockAddr,
    mode: u32,
    owner: Option<SocketOwner>,
) -> io::Result<CreatedAs> {
    let fd = socket.as_raw_fd();
    let (address, length) = (addr.as_ptr().cast::<libc::sockaddr>(), addr.len());
    let mask = !mode & 0o777;
    let as_user = owner.is_some_and(|owner| owner.uid != 0);
    // The child says how it went on a pipe, not by its exit status: with
    // SIGCHLD ignored (inherited so across exec), the kernel reaps it by
    // itself and waitpid finds no child.
    let mut pipe = [0; 2];
    // SAFETY: pipe2 fills two descriptors into a live array.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let [read_end, write_end] = pipe;
    // SAFETY: the child makes only system calls, async-signal-safe, on
    // memory prepared before the fork (the address lives in `addr`), then
    // leaves with _exit, without unwinding or running destructors.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        unsafe {
            let report = |outcome: i32| {
                let bytes = outcome.to_ne_bytes();
                libc::write(write_end, bytes.as_ptr().cast(), bytes.len());
                libc::_exit(0)
            };
            libc::umask(mask);
            if let Some(owner) = owner {
                libc::setfsgid(owner.gid);
                if owner.uid != 0 {
                    libc::setfsuid(owner.uid);
                    raise_capabilities();
                }
            }
            if libc::bind(fd, address, length) == 0 {
                report(0);
            }
            let mut errno = *libc::__errno_location();
            if as_user && matches!(errno, libc::EACCES | libc::EPERM) {
                // Back to root's filesystem uid, which gives back what root
                // may do here (its own directory, without CAP_DAC_OVERRIDE).
                libc::setfsuid(0);
                if libc::bind(fd, address, length) == 0 {
                    report(BOUND_AS_ROOT);
                }
                errno = *libc::__errno_location();
            }
            report(errno);
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
    let mut outcome = [0u8; 4];
    let mut got = 0;
    while got < outcome.len() {
        // SAFETY: reading into the rest of a live array.
        let read = unsafe {
            libc::read(
                read_end,
                outcome[got..].as_mut_ptr().cast(),
                outcome.len() - got,
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
    if got < outcome.len() {
        return Err(io::Error::other(
            "the process binding it ended without saying how it went",
        ));
    }
    match i32::from_ne_bytes(outcome) {
        0 => Ok(CreatedAs::Asked),
        BOUND_AS_ROOT => Ok(CreatedAs::Root),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// `struct __user_cap_header_struct` of capget(2).
#[repr(C)]
struct CapabilityHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct` of capget(2): one for capabilities 0-31,
/// one for 32-63.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapabilitySets {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Makes every permitted capability effective again. Moving the filesystem
/// uid off root drops those that let root create a file in any directory
/// (CAP_DAC_OVERRIDE); the binding child takes them back, so that it creates
/// the socket for the owner wherever root could. Raw system calls only: it
/// runs between fork and _exit.
unsafe fn raise_capabilities() {
    let mut header = CapabilityHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut sets = [CapabilitySets::default(); 2];
    // SAFETY: capget and capset read the header and two sets, all live.
    unsafe {
        if libc::syscall(libc::SYS_capget, &mut header, sets.as_mut_ptr()) == 0 {
            for set in &mut sets {
                set.effective = set.permitted;
            }
            libc::syscall(libc::SYS_capset, &mut header, sets.as_ptr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode_of(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn the_socket_file_is_created_with_its_mode() {
        // No chmod after bind(2) (which a link renamed over the socket
        // would redirect): the mode is there from creation, whatever this
        // process's umask (022 makes a socket 0755 without the child's).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        for mode in [0o600, 0o660, 0o666, 0o777] {
            let socket = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
            let addr = SockAddr::unix(&path).unwrap();
            assert_eq!(
                bind_as(&socket, &addr, mode, None).unwrap(),
                CreatedAs::Asked
            );
            assert_eq!(mode_of(&path), mode, "{mode:o}");
            std::fs::remove_file(&path).unwrap();
        }
        let (listener, unix) = bind(&path, 16, 0o640, None).unwrap();
        assert_eq!(mode_of(&path), 0o640);
        drop(listener);
        drop(unix);
        assert!(!path.exists(), "removed when dropped");
    }

    #[test]
    fn the_socket_file_is_created_for_its_owner() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        // Root's alone (tempdir makes it 0700): the owner may not create
        // files there; root creates it for that account.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let owner = SocketOwner {
            uid: 65_534,
            gid: 65_533,
        };
        let (_listener, _unix) = bind(&path, 16, 0o660, Some(owner)).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65_534, 65_533));
        assert_eq!(mode_of(&path), 0o660);
    }

    #[test]
    fn a_link_planted_at_the_path_is_left_alone_with_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        let path = dir.path().join("a.sock");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let err = bind(&path, 16, 0o666, None).unwrap_err();
        assert!(
            err.contains("a file that is not a socket is there"),
            "{err}"
        );
        assert_eq!(mode_of(&victim), 0o600);
        assert!(path.symlink_metadata().unwrap().is_symlink());
    }

    #[test]
    fn a_long_path_or_a_missing_directory_is_named() {
        let long = PathBuf::from(format!("/tmp/{}", "x".repeat(MAX_PATH_LEN)));
        let err = check_path(&long).unwrap_err();
        assert!(err.contains("bytes long"), "{err}");
        assert!(check_path(&PathBuf::from("/tmp/".to_owned() + &"x".repeat(102))).is_ok());
        let err = check_path(Path::new("/no/such/dir/a.sock")).unwrap_err();
        assert_eq!(
            err,
            "Cannot bind --uds /no/such/dir/a.sock: its directory /no/such/dir does not exist; \
             create it first (under systemd: RuntimeDirectory=)"
        );
    }

    #[test]
    fn a_socket_nobody_listens_on_is_stale_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        drop(UnixListener::bind(&path).unwrap());
        assert!(matches!(occupant(&path), Occupant::Nobody));
        let (_listener, _unix) = bind(&path, 16, 0o666, None).unwrap();
        assert!(matches!(occupant(&path), Occupant::Server));
        let err = bind(&path, 16, 0o666, None).unwrap_err();
        assert!(err.contains("a server is listening on it"), "{err}");
    }

    #[test]
    fn a_socket_of_another_kind_is_not_called_stale() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let _datagram = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let err = bind(&path, 16, 0o666, None).unwrap_err();
        assert!(
            err.contains("cannot tell whether a server listens on it"),
            "{err}"
        );
        assert!(path.exists());
    }

    #[test]
    fn a_forked_copy_leaves_the_file_to_its_parent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let (_listener, mut unix) = bind(&path, 16, 0o666, None).unwrap();
        unix.created.as_mut().unwrap().by += 1;
        drop(unix);
        assert!(path.exists());
    }
}
