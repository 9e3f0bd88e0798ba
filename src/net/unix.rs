//! Unix domain sockets rsasgi binds itself (`--uds`, `--bind unix:PATH`):
//! the socket file is created with its mode and owner, a stale one replaced,
//! a live one left alone, and the file removed when the server stops.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
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
    /// The account it was created for, which may remove it where root may
    /// not look.
    owner: Option<SocketOwner>,
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
        let removed = match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) == (created.dev, created.ino) => {
                std::fs::remove_file(&self.path)
            }
            // Root without CAP_DAC_OVERRIDE (a container that drops it) may
            // not look into the account's own directory (mode 700), where
            // the account created the file.
            Err(err) if err.kind() == io::ErrorKind::PermissionDenied => match created.owner {
                Some(owner) => remove_as(owner, &self.path, created),
                None => return,
            },
            _ => return,
        };
        if let Err(err) = removed {
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
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)
        .map_err(|err| format!("Could not create a Unix socket: {err}"))?;
    let addr = SockAddr::unix(&path).map_err(|err| format!("Invalid --uds path {shown}: {err}"))?;
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("Invalid --uds path {shown}: it holds a NUL byte"))?;
    let cannot = |why: String| format!("Cannot bind --uds {shown}: {why}");
    let bound = match bind_as(&socket, &addr, &c_path, mode, owner) {
        Ok(Binding::Bound(bound)) => bound,
        Ok(Binding::NotASocket) => {
            return Err(cannot("a file that is not a socket is there".into()))
        }
        Ok(Binding::Live) => {
            return Err(cannot(
                "a server is listening on it (another rsasgi, or the one this should replace, \
                 still runs); stop it first, or choose another path"
                    .into(),
            ))
        }
        Ok(Binding::CannotTell(err)) => {
            let hint = match err.kind() {
                io::ErrorKind::PermissionDenied => {
                    "; if no server uses it, have its owner or root remove it, else choose \
                     another path"
                }
                _ => "; if no server uses it, remove it, else choose another path",
            };
            return Err(cannot(format!(
                "cannot tell whether a server listens on it (connecting to it: {err}){hint}"
            )));
        }
        Ok(Binding::CannotRemove(err)) => {
            return Err(format!("Could not remove stale socket {shown}: {err}"))
        }
        Ok(Binding::CannotStat(err)) => {
            return Err(format!("Could not stat {shown} after binding it: {err}"))
        }
        Ok(Binding::CannotBind(err)) | Err(err) => {
            return Err(format!("Could not bind to {shown}: {err}"))
        }
    };
    if let Some(owner) = owner {
        if bound.as_root {
            tracing::warn!(
                "--uds {shown} belongs to root (group {}), not to uid {}: that account may not \
                 create files in its directory, and without CAP_DAC_OVERRIDE rsasgi cannot \
                 create it there for that account; its group and --uds-permissions decide who \
                 may connect",
                bound.gid,
                owner.uid
            );
        } else if bound.gid != owner.gid {
            tracing::warn!(
                "--uds {shown} is in group {}, not {}: its directory gave it its own group \
                 (setgid), which could not be changed; that group and --uds-permissions decide \
                 who may connect",
                bound.gid,
                owner.gid
            );
        }
    }
    socket
        .listen(backlog)
        .map_err(|err| format!("Could not listen on {shown}: {err}"))?;
    socket
        .set_nonblocking(true)
        .map_err(|err| format!("Could not configure {shown}: {err}"))?;
    let unix = UnixPath {
        path: Arc::from(path),
        created: Some(Created {
            dev: bound.dev,
            ino: bound.ino,
            by: std::process::id(),
            owner,
        }),
    };
    Ok((socket.into(), unix))
}

/// Removes the socket file `created` at `path` from a child process with
/// `owner`'s filesystem ids, if it is still that file.
fn remove_as(owner: SocketOwner, path: &Path, created: Created) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let path = c_path.as_ptr();
    // SAFETY: setfsgid, setfsuid, capget/capset, lstat and unlink are
    // system calls, made on the path prepared above or the child's stack.
    let [errno] = unsafe {
        crate::forked::run(|| {
            take_ids(owner);
            let mut meta: libc::stat = std::mem::zeroed();
            if libc::lstat(path, &mut meta) != 0 {
                return [crate::forked::errno()];
            }
            let ours = (meta.st_dev as u64, meta.st_ino as u64) == (created.dev, created.ino);
            if ours && libc::unlink(path) != 0 {
                return [crate::forked::errno()];
            }
            [0]
        })
    }?;
    match errno {
        0 => Ok(()),
        errno if errno == i64::from(libc::ENOENT) => Ok(()),
        errno => Err(crate::forked::error(errno)),
    }
}

/// How binding went, as the binding child found.
#[derive(Debug)]
enum Binding {
    Bound(Bound),
    /// Something other than a socket is at the path: not ours to remove.
    NotASocket,
    /// A server listens on the socket there: a connection is accepted or
    /// queued, or the queue is full (a non-blocking connect says so at once
    /// rather than wait for room). A second instance, started by mistake,
    /// would take its address and leave it unreachable while it runs on.
    Live,
    /// Connecting to the socket there failed other than by a refusal: not
    /// allowed to connect (another account's, mode 600), or a socket of
    /// another kind. A server may be behind it.
    CannotTell(io::Error),
    /// The socket there is stale (refused), and could not be removed.
    CannotRemove(io::Error),
    CannotBind(io::Error),
    /// Bound, but the file could not be found afterwards.
    CannotStat(io::Error),
}

/// The socket file made.
#[derive(Debug, Clone, Copy)]
struct Bound {
    /// Created by root, as the owner given may not create it there and
    /// this process lacks the capability to do it for that account.
    as_root: bool,
    dev: u64,
    ino: u64,
    gid: libc::gid_t,
}

/// What the binding child reports first; then an error number, or the
/// file's device, inode and group.
const BOUND: i64 = 0;
const BOUND_AS_ROOT: i64 = 1;
const NOT_A_SOCKET: i64 = 2;
const LIVE: i64 = 3;
const CANNOT_TELL: i64 = 4;
const CANNOT_REMOVE: i64 = 5;
const CANNOT_BIND: i64 = 6;
const CANNOT_STAT: i64 = 7;

/// Binds `socket` to `addr` (`path`) from a child process that makes room
/// there and creates the file as `owner` (its filesystem uid and gid),
/// under the umask that leaves exactly `mode`: the file has its mode and
/// owner from the moment it exists.
///
/// Set afterwards, by path, they would land on whatever the path leads to
/// by then: in a directory another account may write (the app's own), that
/// account can rename a symbolic link over the socket in between, and have
/// root chmod or chown the file it points at. Linux gives the new file the
/// socket inode's mode (0777) under the umask, and the filesystem uid and
/// gid; a child changes those for itself alone. The child shares the
/// socket, so its bind is ours.
///
/// Room is made with the same ids: a socket file left by a killed server
/// in the account's own directory (mode 700) is one root cannot connect to
/// nor remove without CAP_DAC_OVERRIDE, as in a container that drops it,
/// where the account can.
fn bind_as(
    socket: &Socket,
    addr: &SockAddr,
    path: &CStr,
    mode: u32,
    owner: Option<SocketOwner>,
) -> io::Result<Binding> {
    let fd = socket.as_raw_fd();
    let (address, length) = (addr.as_ptr().cast::<libc::sockaddr>(), addr.len());
    let path = path.as_ptr();
    let mask = !mode & 0o777;
    let as_user = owner.is_some_and(|owner| owner.uid != 0);
    // SAFETY: umask, setfsgid, setfsuid, capget/capset, lstat, socket,
    // connect, close, unlink, bind and fchownat are system calls, made on
    // the address and path prepared above or on the child's stack.
    let [outcome, errno, dev, ino, gid] = unsafe {
        crate::forked::run(|| {
            libc::umask(mask);
            if let Some(owner) = owner {
                take_ids(owner);
            }
            let mut outcome = make_room_and_bind(fd, address, length, path);
            let mut as_root = false;
            if as_user
                && outcome.0 != BOUND
                && matches!(outcome.1 as i32, libc::EACCES | libc::EPERM)
            {
                // Back to root's filesystem uid, which gives back what root
                // may do here (its own directory, or stale socket, without
                // CAP_DAC_OVERRIDE).
                libc::setfsuid(0);
                as_root = true;
                outcome = make_room_and_bind(fd, address, length, path);
            }
            if outcome.0 != BOUND {
                return [outcome.0, outcome.1, 0, 0, 0];
            }
            let mut meta: libc::stat = std::mem::zeroed();
            if libc::lstat(path, &mut meta) != 0 {
                return [CANNOT_STAT, crate::forked::errno(), 0, 0, 0];
            }
            // A directory with the setgid bit gives the file its own group,
            // not the filesystem gid. Changed by path, without CAP_CHOWN:
            // the kernel then changes only a file the filesystem uid owns,
            // to a group it is in, so a path another account swapped
            // meanwhile leads at worst to a file the account could put in
            // its group itself. When that uid is root's (--group alone, or
            // a directory the account may not write), fs.protected_hardlinks
            // keeps others from linking in a file of root's they could not
            // already read and write.
            if let Some(owner) = owner.filter(|owner| meta.st_gid != owner.gid) {
                set_capabilities(Capabilities::WithoutChown);
                let unchanged = libc::uid_t::MAX;
                if libc::fchownat(
                    libc::AT_FDCWD,
                    path,
                    unchanged,
                    owner.gid,
                    libc::AT_SYMLINK_NOFOLLOW,
                ) == 0
                {
                    meta.st_gid = owner.gid;
                }
            }
            let created = if as_root { BOUND_AS_ROOT } else { BOUND };
            [
                created,
                0,
                meta.st_dev as i64,
                meta.st_ino as i64,
                i64::from(meta.st_gid),
            ]
        })
    }?;
    let error = || crate::forked::error(errno);
    Ok(match outcome {
        BOUND | BOUND_AS_ROOT => Binding::Bound(Bound {
            as_root: outcome == BOUND_AS_ROOT,
            dev: dev as u64,
            ino: ino as u64,
            gid: gid as libc::gid_t,
        }),
        NOT_A_SOCKET => Binding::NotASocket,
        LIVE => Binding::Live,
        CANNOT_TELL => Binding::CannotTell(error()),
        CANNOT_REMOVE => Binding::CannotRemove(error()),
        CANNOT_STAT => Binding::CannotStat(error()),
        _ => Binding::CannotBind(error()),
    })
}

/// Takes `owner`'s filesystem uid and gid, with the capabilities root had.
/// Raw system calls only: it runs between fork and _exit.
unsafe fn take_ids(owner: SocketOwner) {
    // SAFETY: system calls on plain integers.
    unsafe {
        libc::setfsgid(owner.gid);
        if owner.uid != 0 {
            libc::setfsuid(owner.uid);
            set_capabilities(Capabilities::Permitted);
        }
    }
}

/// Makes room at `path` and binds `fd` there; returns what happened and an
/// error number. A socket file nobody listens on (connecting to it is
/// refused) was left by a server that is gone, and would make bind fail:
/// it is removed. Anything else there is left alone.
///
/// # Safety
///
/// System calls only, on a live address and path: it runs between fork and
/// _exit.
unsafe fn make_room_and_bind(
    fd: libc::c_int,
    address: *const libc::sockaddr,
    length: libc::socklen_t,
    path: *const libc::c_char,
) -> (i64, i64) {
    use crate::forked::errno;
    // SAFETY: as the function's; `meta` is on this stack.
    unsafe {
        let mut meta: libc::stat = std::mem::zeroed();
        if libc::lstat(path, &mut meta) == 0 {
            if meta.st_mode & libc::S_IFMT != libc::S_IFSOCK {
                return (NOT_A_SOCKET, 0);
            }
            let probe = libc::socket(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            );
            if probe < 0 {
                return (CANNOT_TELL, errno());
            }
            let connected = libc::connect(probe, address, length) == 0;
            let refused = errno();
            libc::close(probe);
            match refused as i32 {
                _ if connected => return (LIVE, 0),
                libc::EAGAIN => return (LIVE, 0),
                // Refused: left by a server that is gone; or removed since
                // it was seen.
                libc::ECONNREFUSED | libc::ENOENT => {
                    if libc::unlink(path) != 0 && errno() != i64::from(libc::ENOENT) {
                        return (CANNOT_REMOVE, errno());
                    }
                }
                _ => return (CANNOT_TELL, refused),
            }
        }
        if libc::bind(fd, address, length) == 0 {
            (BOUND, 0)
        } else {
            (CANNOT_BIND, errno())
        }
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

/// Which capabilities the binding child makes effective.
#[derive(Clone, Copy)]
enum Capabilities {
    /// Every permitted one: moving the filesystem uid off root drops those
    /// that let root create a file in any directory (CAP_DAC_OVERRIDE); the
    /// child takes them back, so that it creates the socket for the owner
    /// wherever root could.
    Permitted,
    /// Those there are, less CAP_CHOWN, which lets a chown change any file.
    WithoutChown,
}

/// The bit of CAP_CHOWN in the first of `CapabilitySets`.
const CAP_CHOWN: u32 = 1 << 0;

/// Makes `which` capabilities effective. Raw system calls only: it runs
/// between fork and _exit.
unsafe fn set_capabilities(which: Capabilities) {
    let mut header = CapabilityHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut sets = [CapabilitySets::default(); 2];
    // SAFETY: capget and capset read the header and two sets, all live.
    unsafe {
        if libc::syscall(libc::SYS_capget, &mut header, sets.as_mut_ptr()) == 0 {
            match which {
                Capabilities::Permitted => {
                    for set in &mut sets {
                        set.effective = set.permitted;
                    }
                }
                Capabilities::WithoutChown => sets[0].effective &= !CAP_CHOWN,
            }
            libc::syscall(libc::SYS_capset, &mut header, sets.as_ptr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixStream;

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
            let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
            let binding = bind_as(&socket, &addr, &c_path, mode, None).unwrap();
            assert!(
                matches!(binding, Binding::Bound(Bound { as_root: false, .. })),
                "{binding:?}"
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
    fn in_a_setgid_directory_the_socket_file_is_in_the_owners_group() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        // One the owner may write, so that it creates the file; its group
        // (root's) would be the file's.
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o2777)).unwrap();
        let path = dir.path().join("a.sock");
        let owner = SocketOwner {
            uid: 65_534,
            gid: 65_533,
        };
        let (_listener, _unix) = bind(&path, 16, 0o660, Some(owner)).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65_534, 65_533));
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
        assert!(UnixStream::connect(&path).is_err());
        let (_listener, _unix) = bind(&path, 16, 0o666, None).unwrap();
        UnixStream::connect(&path).unwrap();
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
