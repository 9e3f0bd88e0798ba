//! Listening sockets: TCP, Unix domain sockets, and inherited descriptors,
//! what the server knows of each accepted connection, and the PROXY protocol
//! header a load balancer may open it with.
//!
//! Sockets are bound on the Python thread before the reactor starts, so a
//! taken port is reported as a startup error with a clear message.

mod connection_info;
mod prefixed;
pub(crate) mod proxy_protocol;
mod sending;
pub(crate) mod tls;
mod unix;

pub(crate) use connection_info::{
    ConnectionInfo, ForwardedPrefix, LoggedClient, Scheme, ServerAddr,
};
pub(crate) use prefixed::Prefixed;
pub(crate) use sending::Sending;
pub(crate) use unix::{check_path as check_unix_path, SocketOwner, UnixPath};

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use socket2::{Domain, SockRef, Socket, Type};

use crate::config::Bind;

/// A bound, listening, non-blocking socket not yet handed to the reactor.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, UnixPath),
}

impl Listener {
    /// How a user reaches this socket with `scheme`, for the startup log line.
    pub(crate) fn describe(&self, scheme: Scheme) -> String {
        let scheme = scheme.http();
        match self {
            Listener::Tcp(listener) => match listener.local_addr() {
                Ok(SocketAddr::V6(addr)) => format!("{scheme}://[{}]:{}", addr.ip(), addr.port()),
                Ok(addr) => format!("{scheme}://{addr}"),
                Err(_) => "an unknown TCP address".into(),
            },
            Listener::Unix(_, unix) => format!("unix:{}", unix.path.display()),
        }
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Listener::Tcp(listener) => listener.as_raw_fd(),
            Listener::Unix(listener, _) => listener.as_raw_fd(),
        }
    }
}

/// How the sockets are bound.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BindOptions {
    pub backlog: u32,
    /// Mode of a Unix socket file (see `--uds-permissions`).
    pub uds_permissions: u32,
    /// SO_REUSEPORT on TCP sockets.
    pub reuse_port: bool,
    /// The account Unix socket files are created for (`--user`, `--group`).
    pub socket_owner: Option<SocketOwner>,
}

/// Binds every socket `binds` names, in order, with a one-line error a user
/// can act on. On an error, the sockets already bound are closed and their
/// files removed.
pub(crate) fn bind_all(binds: &[Bind], options: BindOptions) -> Result<Vec<Listener>, String> {
    let mut listeners = Vec::with_capacity(binds.len());
    for bind in binds {
        let listener = self::bind(bind, options)
            .map_err(|err| given_twice(bind, &listeners).unwrap_or(err))?;
        listeners.push(listener);
    }
    Ok(listeners)
}

fn bind(bind: &Bind, options: BindOptions) -> Result<Listener, String> {
    match bind {
        Bind::Tcp { host, port } => bind_tcp(host, *port, options),
        Bind::Unix(path) => unix::bind(
            path,
            backlog_of(options.backlog),
            options.uds_permissions,
            options.socket_owner,
        )
        .map(|(listener, path)| Listener::Unix(listener, path)),
        Bind::Fd(fd) => inherit(*fd),
    }
}

/// Why `bind` failed when one of `listeners`, bound just before, is at its
/// address: the same address given twice, which would otherwise read as
/// another server holding the port, or the socket file.
fn given_twice(bind: &Bind, listeners: &[Listener]) -> Option<String> {
    let address = match bind {
        Bind::Tcp { host, port } if *port != 0 => {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let addr = (host, *port).to_socket_addrs().ok()?.next()?;
            let bound = listeners.iter().any(|listener| {
                matches!(listener, Listener::Tcp(tcp) if tcp.local_addr().ok() == Some(addr))
            });
            bound.then(|| addr.to_string())?
        }
        Bind::Unix(path) => {
            let path = std::path::absolute(path).ok()?;
            let bound = listeners
                .iter()
                .any(|listener| matches!(listener, Listener::Unix(_, unix) if *unix.path == *path));
            bound.then(|| format!("unix:{}", path.display()))?
        }
        _ => return None,
    };
    Some(format!(
        "Cannot bind {address}: it is given twice (by --bind or --uds); drop one"
    ))
}

/// The sockets to serve: those systemd passed (socket activation), else
/// those `binds` name.
pub(crate) fn listen(
    binds: &[Bind],
    options: BindOptions,
    activated: Vec<OwnedFd>,
) -> Result<Vec<Listener>, String> {
    if activated.is_empty() {
        return bind_all(binds, options);
    }
    tracing::info!(
        "Serving the {} socket(s) systemd passed (socket activation) instead of --bind/--host/--port",
        activated.len()
    );
    activated
        .into_iter()
        .map(|fd| inherit(fd.into_raw_fd()))
        .collect()
}

/// Takes over the listening sockets a supervisor handed down, as descriptors.
pub(crate) fn inherit_all(fds: &[RawFd]) -> Result<Vec<Listener>, String> {
    fds.iter().map(|&fd| inherit(fd)).collect()
}

fn bind_tcp(host: &str, port: u16, options: BindOptions) -> Result<Listener, String> {
    let host_for_lookup = host.trim_start_matches('[').trim_end_matches(']');
    let addr = (host_for_lookup, port)
        .to_socket_addrs()
        .map_err(|err| {
            // `--host 0.0.0.0:8000`: a port belongs in --port, or in --bind.
            let hint = match host_for_lookup.rsplit_once(':') {
                Some((name, port))
                    if !name.contains(':')
                        && !port.is_empty()
                        && port.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    format!(
                        " (--host takes no port: --host {name} --port {port}, or --bind {host})"
                    )
                }
                _ => String::new(),
            };
            format!("Cannot resolve --host {host:?}: {err}{hint}")
        })?
        .next()
        .ok_or_else(|| format!("--host {host:?} resolves to no address"))?;
    let fail = |what: &str, err: std::io::Error| {
        let hint = match err.kind() {
            std::io::ErrorKind::AddrInUse => " (is another server running? pick another --port)",
            std::io::ErrorKind::PermissionDenied => " (ports below 1024 need privileges)",
            std::io::ErrorKind::AddrNotAvailable => " (no interface has this address)",
            _ => "",
        };
        format!("Could not {what} {addr}: {err}{hint}")
    };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)
        .map_err(|err| fail("create a socket for", err))?;
    socket
        .set_reuse_address(true)
        .map_err(|err| fail("configure", err))?;
    if options.reuse_port {
        socket
            .set_reuse_port(true)
            .map_err(|err| fail("set SO_REUSEPORT on", err))?;
    }
    if addr.is_ipv6() {
        // "::" serves IPv6 only; use "0.0.0.0" for IPv4.
        let _ = socket.set_only_v6(true);
    }
    socket
        .bind(&addr.into())
        .map_err(|err| fail("bind to", err))?;
    socket
        .listen(backlog_of(options.backlog))
        .map_err(|err| fail("listen on", err))?;
    socket
        .set_nonblocking(true)
        .map_err(|err| fail("configure", err))?;
    Ok(Listener::Tcp(socket.into()))
}

fn backlog_of(backlog: u32) -> i32 {
    i32::try_from(backlog).unwrap_or(i32::MAX)
}

fn inherit(fd: i32) -> Result<Listener, String> {
    // SAFETY: fstat only reads the descriptor's metadata; it fails cleanly
    // (EBADF) when nothing is open there.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    if fd < 0 || unsafe { libc::fstat(fd, &mut stat) } != 0 {
        return Err(format!(
            "--fd {fd}: no open file descriptor with that number"
        ));
    }
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(format!("--fd {fd} is not a socket"));
    }
    // SAFETY: fstat just saw a socket open at fd; it is borrowed for the
    // checks only.
    let role = socket_role(unsafe { BorrowedFd::borrow_raw(fd) })
        .map_err(|err| format!("--fd {fd}: cannot read its socket type: {err}"))?;
    match role {
        SocketRole::Listening => {}
        SocketRole::NotStream(kind) => {
            return Err(format!(
                "--fd {fd} is a {kind} socket: rsasgi serves stream sockets (TCP, or Unix \
                 SOCK_STREAM); pass one of those"
            ))
        }
        SocketRole::Connected => {
            return Err(format!(
                "--fd {fd} is a connected socket (one client's connection): pass the \
                 listening socket instead"
            ))
        }
        SocketRole::Idle => {
            return Err(format!(
                "--fd {fd} is not listening: call listen() on it before starting rsasgi"
            ))
        }
    }
    // The parent cleared close-on-exec to hand it down; a program the app
    // starts (`os.system("... &")`) would otherwise hold the port open after
    // we stop, and accept nothing on it.
    set_cloexec(fd).map_err(|err| format!("--fd {fd}: cannot set close-on-exec: {err}"))?;
    // SAFETY: fd is an open socket that the parent process handed to us to own.
    let socket = unsafe { Socket::from_raw_fd(fd) };
    let local = socket
        .local_addr()
        .map_err(|err| format!("--fd {fd}: cannot read its address: {err}"))?;
    socket
        .set_nonblocking(true)
        .map_err(|err| format!("--fd {fd}: {err}"))?;
    if local.as_socket().is_some() {
        Ok(Listener::Tcp(socket.into()))
    } else {
        let path = local
            .as_pathname()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(format!("fd:{fd}")));
        Ok(Listener::Unix(socket.into(), UnixPath::inherited(path)))
    }
}

/// What an inherited socket is, as far as serving it goes: only a listening
/// one can be accepted from. The others fail every accept(2), so a server
/// that took them would say it serves, and then never serve anyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SocketRole {
    /// A stream socket after listen(2).
    Listening,
    /// A stream socket with a peer: one client's connection (accept(2): EINVAL).
    Connected,
    /// A stream socket neither listening nor connected: bound at most
    /// (accept(2): EINVAL).
    Idle,
    /// Datagram, sequenced-packet or raw: there are no connections to accept
    /// (accept(2): EOPNOTSUPP). Holds the kind, in words.
    NotStream(&'static str),
}

/// Reads what the socket at `fd` is (SO_TYPE, SO_ACCEPTCONN, and whether it
/// has a peer).
pub(crate) fn socket_role(fd: BorrowedFd<'_>) -> std::io::Result<SocketRole> {
    let socket = SockRef::from(&fd);
    let kind = socket.r#type()?;
    if kind != Type::STREAM {
        return Ok(SocketRole::NotStream(match kind {
            Type::DGRAM => "datagram",
            Type::SEQPACKET => "sequenced-packet",
            Type::RAW => "raw",
            _ => "non-stream",
        }));
    }
    if socket.is_listener()? {
        Ok(SocketRole::Listening)
    } else if socket.peer_addr().is_ok() {
        Ok(SocketRole::Connected)
    } else {
        Ok(SocketRole::Idle)
    }
}

/// Marks `fd` close-on-exec: a descriptor this process was handed, now
/// its own, stays out of the programs it starts.
pub(crate) fn set_cloexec(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: F_GETFD and F_SETFD touch only the descriptor flags; a closed
    // fd fails with EBADF.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    const TEST_OPTIONS: BindOptions = BindOptions {
        backlog: 16,
        uds_permissions: 0o666,
        reuse_port: false,
        socket_owner: None,
    };

    #[test]
    fn port_zero_picks_a_free_port() {
        let listener = bind_tcp("127.0.0.1", 0, TEST_OPTIONS).unwrap();
        let described = listener.describe(Scheme::Http);
        assert!(described.starts_with("http://127.0.0.1:"), "{described}");
        assert!(!described.ends_with(":0"));
    }

    #[test]
    fn a_taken_port_says_so() {
        let first = bind_tcp("127.0.0.1", 0, TEST_OPTIONS).unwrap();
        let Listener::Tcp(tcp) = &first else { panic!() };
        let port = tcp.local_addr().unwrap().port();
        let err = bind_tcp("127.0.0.1", port, TEST_OPTIONS).unwrap_err();
        assert!(err.contains("another server"), "{err}");
    }

    #[test]
    fn an_inherited_socket_is_not_passed_on() {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        socket.listen(1).unwrap();
        let fd = socket.into_raw_fd();
        // SAFETY: F_SETFD on the descriptor just made.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        let listener = inherit(fd).unwrap();
        // SAFETY: F_GETFD reads the flags of the descriptor the listener owns.
        let flags = unsafe { libc::fcntl(listener.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    }

    #[test]
    fn socket_role_tells_a_listener_from_the_rest() {
        let role = |socket: &dyn AsFd| socket_role(socket.as_fd()).unwrap();
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0)).into();
        let listening = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        listening.bind(&loopback).unwrap();
        listening.listen(1).unwrap();
        assert_eq!(role(&listening), SocketRole::Listening);
        let bound = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        bound.bind(&loopback).unwrap();
        assert_eq!(role(&bound), SocketRole::Idle);
        let (connected, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(role(&connected), SocketRole::Connected);
        let datagram = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        assert_eq!(role(&datagram), SocketRole::NotStream("datagram"));
        let packets = Socket::new(Domain::UNIX, Type::SEQPACKET, None).unwrap();
        assert_eq!(role(&packets), SocketRole::NotStream("sequenced-packet"));
    }

    #[test]
    fn an_fd_that_cannot_accept_is_refused_with_what_to_change() {
        // Each socket stays owned here: `inherit` takes the fd only when it
        // accepts it.
        let refusal = |socket: &dyn AsRawFd| inherit(socket.as_raw_fd()).unwrap_err();
        let bound = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        bound
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        let fd = bound.as_raw_fd();
        assert_eq!(
            refusal(&bound),
            format!("--fd {fd} is not listening: call listen() on it before starting rsasgi")
        );
        let (connected, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let err = refusal(&connected);
        assert!(err.contains("is a connected socket"), "{err}");
        assert!(err.ends_with("pass the listening socket instead"), "{err}");
        let datagram = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        let err = refusal(&datagram);
        assert!(err.contains("is a datagram socket"), "{err}");
    }

    #[test]
    fn a_bad_fd_is_refused() {
        assert!(inherit(987_654)
            .unwrap_err()
            .contains("no open file descriptor"));
    }
}
