"""Serving on a Unix domain socket (--uds): the socket file's life and permissions, and what
the app and the access log say about addresses that have no host and port.

On a Unix socket the WSGI environ follows gunicorn (gunicorn/http/wsgi.py `create`): the peer
address Python's accept() gives for an unnamed client socket is "", so REMOTE_ADDR is "" and
there is no REMOTE_PORT; SERVER_NAME and SERVER_PORT come from the Host header (port 80 for
http when it names none), and without a Host header they are the socket path and "".
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import sys
import tempfile
from pathlib import Path

import httpx
import pytest
from apps.proto_raw import RawConn, request
from conftest import APPS, access_log, cli, wait_for, wait_for_log
from test_supervisor import exit_code

WORKERS = [[], ["--workers", "1"]]
WORKER_IDS = ["one-process", "supervised"]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="--user and --group need root")


@pytest.fixture
def uds(run_rsasgi, tmp_path):
    """Start rsasgi on tmp_path/rsasgi.sock with the given arguments; returns (server, path)
    once it says it listens there."""

    def start(*args: str, env: dict | None = None):
        path = tmp_path / "rsasgi.sock"
        server = run_rsasgi("--uds", str(path), *args, env=env, wait=False)
        wait_for(
            lambda: f"Listening on unix:{path}" in server.output() or server.proc.poll(),
            timeout=20,
            message=f"rsasgi to listen on {path}",
            server=server,
        )
        assert server.proc.poll() is None, server.output()
        return server, path

    return start


def uds_client(path: Path) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), timeout=10)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_requests_over_a_unix_socket(uds):
    _, path = uds("proto_http:app")
    with uds_client(path) as client:
        response = client.get("http://localhost/")
        assert response.status_code == 200
        assert response.content == b"hello world"
        response = client.post("http://localhost/echo", content=b"over a unix socket")
        assert response.content == b"over a unix socket"


def test_socket_file_is_read_write_for_everyone_by_default(uds):
    """Like uvicorn and granian: the web server in front usually runs as another user."""
    _, path = uds("proto_http:app")
    assert mode(path) == 0o666


def test_uds_permissions_sets_the_socket_file_mode(uds):
    _, path = uds("proto_http:app", "--uds-permissions", "600")
    assert mode(path) == 0o600


def test_socket_file_is_removed_on_sigterm(uds):
    server, path = uds("proto_http:app")
    assert server.stop(signal.SIGTERM) == 0, server.output()
    assert not path.exists()


def test_a_second_server_does_not_take_the_socket_of_one_that_listens(uds, run_rsasgi):
    """A socket file nobody listens on is stale and replaced; one a server listens on is
    not: a second instance started by mistake would leave the first unreachable."""
    first, path = uds("proto_http:app")
    second = run_rsasgi("proto_http:app", "--uds", str(path), wait=False)
    assert second.wait_exit() == 1
    assert f"Cannot bind --uds {path}: a server is listening on it" in second.output()
    with uds_client(path) as client:
        assert client.get("http://localhost/").content == b"hello world"
    first.proc.kill()  # no clean-up: the socket file is left behind
    first.proc.wait()
    assert path.exists()
    third = run_rsasgi("proto_http:app", "--uds", str(path), wait=False)
    wait_for(
        lambda: f"Listening on unix:{path}" in third.output(),
        message="the stale socket replaced",
        server=third,
    )
    with uds_client(path) as client:
        assert client.get("http://localhost/").content == b"hello world"


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=WORKER_IDS)
def test_a_socket_is_bound_with_sigchld_ignored(run_rsasgi, tmp_path, workers):
    """SIGCHLD ignored is inherited across exec (a shell's `trap '' CHLD`, some init
    scripts): the kernel then reaps children by itself. The process that binds the socket
    file says how it went on a pipe, so the start does not take the reaped child for a
    failed bind (it said "No child processes" and left the file)."""
    path = tmp_path / "rsasgi.sock"
    ignoring = (
        "import os, signal, sys; signal.signal(signal.SIGCHLD, signal.SIG_IGN); "
        "os.execv(sys.executable, [sys.executable, '-m', 'rsasgi', *sys.argv[1:]])"
    )
    server = run_rsasgi(
        "proto_http:app",
        "--uds",
        str(path),
        *workers,
        wait=False,
        command=[sys.executable, "-c", ignoring],
    )
    wait_for(
        lambda: f"Listening on unix:{path}" in server.output() or server.proc.poll(),
        timeout=20,
        message=f"rsasgi to listen on {path}",
        server=server,
    )
    assert server.proc.poll() is None, server.output()
    with uds_client(path) as client:
        assert client.get("http://rsasgi/").status_code == 200
    assert server.stop(signal.SIGTERM) == 0
    assert not path.exists()


def test_asgi_scope_server_is_the_socket_path_and_client_is_none(uds):
    """ASGI: `server` is [path, None] for a Unix socket; `client` is None when unknown."""
    _, path = uds("proto_scope:app")
    with uds_client(path) as client:
        scope = client.get("http://localhost/").json()["scope"]
    assert scope["server"] == [str(path), None]
    assert scope["client"] is None


@pytest.mark.parametrize(
    "host, server_name, server_port",
    [
        pytest.param("rsasgi.test", "rsasgi.test", "80", id="host"),
        pytest.param("rsasgi.test:8080", "rsasgi.test", "8080", id="host-and-port"),
        pytest.param(None, "SOCKET", "", id="no-host"),
    ],
)
def test_wsgi_environ_addresses_are_gunicorns(uds, host, server_name, server_port):
    _, path = uds("wsgi_env:app")
    headers = [("Host", host)] if host else []
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(path))
        conn = RawConn(sock)
        conn.send(request("GET", "/env", headers, version="HTTP/1.0", host=False))
        response = conn.read_response()
    assert response.status == 200, response
    environ = json.loads(response.body)["environ"]
    assert environ["REMOTE_ADDR"] == ""
    assert "REMOTE_PORT" not in environ
    assert environ["SERVER_NAME"] == (str(path) if server_name == "SOCKET" else server_name)
    assert environ["SERVER_PORT"] == server_port


def test_access_log_names_the_unix_socket_as_the_client(uds):
    server, path = uds("proto_http:app")
    with uds_client(path) as client:
        assert client.get("http://localhost/").status_code == 200
    lines = wait_for(
        lambda: access_log(server.output(), "/"), message="the access log line", server=server
    )
    assert [line["client"][: len("unix:")] for line in lines] == ["unix:"], server.output()


@pytest.fixture
def public_dir():
    """A directory of root's that every account may enter (tmp_path is root's alone), and
    none but root may write."""
    directory = Path(tempfile.mkdtemp(prefix="rsasgi-uds-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory)


def connects_as(uid: int, gid: int, path: Path) -> int:
    """Connects to the socket at `path` from a child process running as uid:gid alone (no
    other group), as nginx's workers would; returns 0, or the errno of the failure."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(str(path))
            code = 0
        except OSError as error:
            code = error.errno or 1
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@needs_root
@pytest.mark.parametrize("workers", WORKERS, ids=WORKER_IDS)
def test_with_group_the_socket_file_is_that_groups(run_rsasgi, public_dir, workers):
    """`--uds-permissions 660 --group www-data` is how nginx's www-data alone may connect:
    the file must be in that group (gunicorn chowns it to the workers' account). It stayed
    root:root, and nginx got 502 (EACCES). --group alone keeps the process root, which may
    run this interpreter; test_operations.py's --user tests need one the user can run."""
    try:
        www = pwd.getpwnam("www-data")
    except KeyError:
        pytest.skip("no www-data account here")
    path = public_dir / "rsasgi.sock"
    server = run_rsasgi(
        "proto_http:app", "--uds", str(path), "--uds-permissions", "660",
        "--group", "www-data", *workers, wait=False,
    )  # fmt: skip
    wait_for_log(server, f"Listening on unix:{path}", timeout=20)
    meta = path.lstat()
    assert (meta.st_uid, meta.st_gid) == (0, grp.getgrnam("www-data").gr_gid)
    assert stat.S_IMODE(meta.st_mode) == 0o660
    assert connects_as(www.pw_uid, www.pw_gid, path) == 0
    assert connects_as(65534, 65534, path) == 13  # EACCES: in neither group nor owner
    assert server.stop() == 0
    assert not path.exists()


def without_dac_override() -> list[str]:
    """A command prefix that runs root without the capabilities that override file modes,
    as a container that drops them does; skips the test when no tool here can."""
    if shutil.which("setpriv"):  # util-linux, in every Debian
        dropped = "-dac_override,-dac_read_search"
        return ["setpriv", f"--bounding-set={dropped}", f"--inh-caps={dropped}"]
    if shutil.which("capsh"):
        drop = "--drop=cap_dac_override,cap_dac_read_search"
        return ["capsh", drop, "--", "-c", 'exec "$0" "$@"']
    pytest.skip("neither setpriv nor capsh to drop CAP_DAC_OVERRIDE with")


@pytest.fixture
def importing_app(public_dir):
    """An app whose import never ends, as an account with no access to the interpreter's
    own library can run it: its process stays up, its socket bound, until killed."""
    (public_dir / "importing.py").write_text("import time\n\ntime.sleep(600)\n")
    (public_dir / "importing.py").chmod(0o644)
    return ["importing:app", "--app-dir", str(public_dir)]


def listening(path: Path) -> bool:
    """Whether a connection to `path` is accepted or queued."""
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def bound_as_nobody(run_rsasgi, app: list[str], path: Path, *args: str, prefix=None):
    """Starts rsasgi with --uds `path` --user nobody; returns it once it listens there."""
    server = run_rsasgi(
        *app, "--uds", str(path), "--user", "nobody", *args, prefix=prefix, wait=False
    )
    wait_for(
        lambda: listening(path) or server.proc.poll() is not None,
        timeout=20,
        message=f"rsasgi to listen on {path}",
        server=server,
    )
    assert server.proc.poll() is None, server.output()
    return server


@needs_root
@pytest.mark.parametrize(
    "directory_mode, args",
    [
        pytest.param(0o700, [], id="private-directory"),
        pytest.param(0o755, ["--uds-permissions", "600"], id="private-socket"),
    ],
)
def test_a_stale_socket_of_the_user_is_replaced_without_cap_dac_override(
    run_rsasgi, public_dir, importing_app, directory_mode, args
):
    """A server killed with -9 leaves its socket file, the --user account's. Root without
    CAP_DAC_OVERRIDE (a container that drops it) may neither connect to it nor remove it
    when the directory or the file is that account's alone, and the next start failed
    ("Address already in use", or "cannot tell whether a server listens on it"). The
    account, which binds the socket, probes and removes it too."""
    nobody = pwd.getpwnam("nobody")
    directory = public_dir / "run"
    directory.mkdir()
    os.chown(directory, nobody.pw_uid, nobody.pw_gid)
    directory.chmod(directory_mode)
    path = directory / "rsasgi.sock"
    killed = bound_as_nobody(run_rsasgi, importing_app, path, *args)
    killed.proc.kill()
    killed.wait_exit()
    assert path.exists() and not listening(path)
    server = bound_as_nobody(run_rsasgi, importing_app, path, *args, prefix=without_dac_override())
    assert path.lstat().st_uid == nobody.pw_uid
    server.kill()


@needs_root
def test_a_supervisor_without_cap_dac_override_removes_the_socket_of_the_user(
    run_rsasgi, public_dir
):
    """The supervisor keeps root's rights to remove the socket file at its stop; without
    CAP_DAC_OVERRIDE those no longer reach into the --user account's own directory, and the
    file was left behind without a word. The account removes it, as it created it. (Whether
    the stop is asked for, or comes when the workers cannot run as the user.)"""
    nobody = pwd.getpwnam("nobody")
    directory = public_dir / "run"
    directory.mkdir()
    os.chown(directory, nobody.pw_uid, nobody.pw_gid)
    directory.chmod(0o700)
    path = directory / "rsasgi.sock"
    server = run_rsasgi(
        "proto_http:app", "--uds", str(path), "--user", "nobody", "--workers", "1",
        prefix=without_dac_override(), wait=False,
    )  # fmt: skip
    wait_for_log(server, f"Listening on unix:{path}", timeout=20)
    server.stop()
    assert not path.exists(), server.output()


@needs_root
@pytest.mark.parametrize("account", ["--user", "--group"])
def test_in_a_setgid_directory_the_socket_file_is_in_the_accounts_group(
    run_rsasgi, public_dir, importing_app, account
):
    """A directory with the setgid bit gives a new file its own group, not the creator's:
    the socket was in root's group there, not that of --group or --user's, so that
    `--uds-permissions 660` shut out the proxy it was meant for."""
    nobody = pwd.getpwnam("nobody")
    nogroup = grp.getgrgid(nobody.pw_gid)
    directory = public_dir / "run"
    directory.mkdir()
    os.chown(directory, nobody.pw_uid, 0)
    directory.chmod(0o2770)
    path = directory / "rsasgi.sock"
    server = run_rsasgi(
        *importing_app, "--uds", str(path), account, "nobody" if account == "--user" else
        nogroup.gr_name, wait=False,
    )  # fmt: skip
    wait_for(
        lambda: listening(path) or server.proc.poll() is not None,
        timeout=20,
        message=f"rsasgi to listen on {path}",
        server=server,
    )
    assert server.proc.poll() is None, server.output()
    owner = nobody.pw_uid if account == "--user" else 0
    meta = path.lstat()
    assert (meta.st_uid, meta.st_gid) == (owner, nogroup.gr_gid)
    assert "is in group" not in server.output()
    server.kill()


def test_a_live_socket_it_may_not_connect_to_is_left_alone(run_rsasgi, tmp_path):
    """A socket that refuses this process the connection (another account's, mode 600) may
    have a server behind it: it was taken for a stale file, removed and replaced, and the
    server listening there became unreachable. Here the socket's mode is 000 and, as root,
    rsasgi runs without the capability that overrides file modes."""
    path = tmp_path / "rsasgi.sock"
    live = socket.socket(socket.AF_UNIX)
    live.bind(str(path))
    live.listen()
    path.chmod(0)
    inode = path.lstat().st_ino
    prefix = without_dac_override() if os.geteuid() == 0 else []
    server = run_rsasgi("proto_http:app", "--uds", str(path), prefix=prefix, wait=False)
    assert exit_code(server) == 1, server.output()
    assert (
        f"Cannot bind --uds {path}: cannot tell whether a server listens on it (connecting "
        "to it: Permission denied"
    ) in server.output()
    assert path.lstat().st_ino == inode
    path.chmod(0o600)
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(path))
        live.accept()[0].close()
    live.close()


def test_relative_paths_are_removed_after_the_app_changes_directory(run_rsasgi, tmp_path):
    """Relative --uds and --pid paths name files in the directory rsasgi started in: an app
    that changes directory as it is imported left both behind after a clean stop."""
    (tmp_path / "moving.py").write_text(
        f"import os\nimport sys\n\nos.chdir('/')\nsys.path.insert(0, {str(APPS)!r})\n\n"
        "from proto_http import app  # noqa: E402, F401\n"
    )
    server = run_rsasgi(
        "moving:app", "--app-dir", str(tmp_path), "--uds", "rsasgi.sock", "--pid", "rsasgi.pid",
        cwd=tmp_path, wait=False,
    )  # fmt: skip
    socket_file, pid_file = tmp_path / "rsasgi.sock", tmp_path / "rsasgi.pid"
    wait_for_log(server, "Listening on unix:", timeout=20)
    assert pid_file.exists()
    with uds_client(socket_file) as client:
        assert client.get("http://localhost/").content == b"hello world"
    assert server.stop() == 0, server.output()
    assert not socket_file.exists()
    assert not pid_file.exists()


@pytest.mark.parametrize("workers", WORKERS, ids=WORKER_IDS)
def test_a_start_refused_by_its_pid_file_leaves_no_socket_file(run_rsasgi, tmp_path, workers):
    """The --pid check comes after the sockets are bound: the socket file a second instance
    made was left behind when the first one's pid file stopped it."""
    pid_file, path = tmp_path / "rsasgi.pid", tmp_path / "second.sock"
    run_rsasgi("proto_http:app", "--pid", str(pid_file))
    second = run_rsasgi(
        "proto_http:app", "--uds", str(path), "--pid", str(pid_file), *workers, wait=False
    )
    assert second.wait_exit() == 1, second.output()
    assert "rsasgi is already running as pid" in second.output()
    assert not path.exists()


@needs_root
def test_a_socket_file_one_process_cannot_remove_says_why(run_rsasgi, public_dir):
    """One process with --user drops root's rights to the socket's directory before it
    stops: the warning that it cannot remove the file says what to change, as the pid
    file's does. (Whether the user may run this interpreter and serve, then is stopped, or
    the app's import fails as the user, the process tries to remove the file as the user.)"""
    path = public_dir / "rsasgi.sock"
    server = run_rsasgi("proto_http:app", "--uds", str(path), "--user", "nobody", wait=False)
    wait_for(
        lambda: server.proc.poll() is not None or "Listening on" in server.output(),
        timeout=20,
        message="the app to serve, or its import to fail",
        server=server,
    )
    server.stop()
    assert (
        f"Could not remove --uds {path}: Permission denied (os error 13); the next start "
        "replaces it, or remove it by hand (with --user, run with --workers, whose supervisor "
        "keeps root's rights, or keep the socket in a directory that user may write)"
    ) in server.output()


@needs_root
@pytest.mark.parametrize("owner", ["root", "nobody", "root-private"])
def test_a_pid_file_only_root_may_read_is_removed_or_said_to_stay(run_rsasgi, public_dir, owner):
    """With --umask 077 the pid file is root's alone to read: one process running as --user
    took it for another process's, and left it without a word. It is the file it wrote, so
    it is removed where that user may (a directory it owns), else a warning says it stays,
    also when the user may not even look into the directory (root's, mode 700)."""
    if owner == "nobody":
        nobody = pwd.getpwnam("nobody")
        os.chown(public_dir, nobody.pw_uid, nobody.pw_gid)
    elif owner == "root-private":
        public_dir.chmod(0o700)
    pid_file = public_dir / "rsasgi.pid"
    server = run_rsasgi(
        "proto_http:app",
        *("--pid", str(pid_file), "--user", "nobody", "--umask", "077"),
        wait=False,
    )
    wait_for(
        lambda: server.proc.poll() is not None or "Listening on" in server.output(),
        timeout=20,
        message="the app to serve, or its import to fail",
        server=server,
    )
    server.stop()
    if owner == "nobody":
        assert not pid_file.exists(), server.output()
        assert "Could not remove" not in server.output()
    elif owner == "root-private":
        assert pid_file.exists()
        assert (
            f"Could not remove --pid {pid_file}: cannot look into its directory (Permission "
            "denied (os error 13)); it stays, remove it by hand"
        ) in server.output()
    else:
        assert pid_file.stat().st_mode & 0o777 == 0o600
        assert (
            f"Could not remove --pid {pid_file}: Permission denied (os error 13); it stays, "
            "remove it by hand (with --user, one process gives up root's rights before it "
            "exits: run with --workers, whose supervisor keeps them, or keep the file in a "
            "directory that user owns)"
        ) in server.output()


def test_check_config_refuses_a_socket_path_start_would_refuse(tmp_path):
    """Too long for sun_path (107 bytes), or in a directory that does not exist: start
    fails on both, and --check-config said "configuration OK"."""
    long = tmp_path / ("x" * (108 - len(str(tmp_path))))
    result = cli("proto_http:app", "--app-dir", str(APPS), "--uds", str(long), "--check-config")
    assert result.returncode == 1, result.stdout
    assert f"--uds {long} is {len(str(long))} bytes long" in result.stderr
    missing = tmp_path / "missing" / "rsasgi.sock"
    result = cli("proto_http:app", "--app-dir", str(APPS), "--uds", str(missing), "--check-config")
    assert result.returncode == 1, result.stdout
    assert (
        f"Cannot bind --uds {missing}: its directory {missing.parent} does not exist"
    ) in result.stderr


def test_a_path_given_twice_says_so(run_rsasgi, tmp_path):
    path = tmp_path / "rsasgi.sock"
    server = run_rsasgi("proto_http:app", "--uds", str(path), "--bind", f"unix:{path}", wait=False)
    assert server.wait_exit() == 1, server.output()
    assert f"Cannot bind unix:{path}: it is given twice" in server.output()
    assert not path.exists()
