"""Fixtures that start a real rsasgi process and talk to it over the network."""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")

APPS = Path(__file__).parent / "apps"
LISTENING = re.compile(r"Listening on https?://([\d.]+|\[[0-9a-f:]+\]):(\d+)")
# One access log line (src/http/access_log.rs): client - "METHOD TARGET VERSION" STATUS BYTES ...
ACCESS_LINE = re.compile(
    r'rsasgi\.access: (?P<client>\S+) - "(?P<method>\S+) (?P<target>\S+) (?P<version>[^"]+)" '
    r"(?P<status>\d{3}) (?P<bytes>\d+)"
)


def access_log(output: str, target: str | None = None) -> list[dict[str, str]]:
    """The access log lines in `output` (for request target `target` only, when given)."""
    records = [m.groupdict() for m in map(ACCESS_LINE.search, output.splitlines()) if m]
    return [r for r in records if target is None or r["target"] == target]


def kill_process_group(proc: subprocess.Popen) -> None:
    """SIGKILL every process in `proc`'s group (it was started with start_new_session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def cli(*args: str, cwd=None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m rsasgi ARGS` for a command that must exit by itself."""
    return subprocess.run(
        [sys.executable, "-m", "rsasgi", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


def resets_on_close(sock: socket.socket) -> socket.socket:
    """Make `sock`'s close a reset (RST), a client that left beyond doubt: a plain close
    soon after a request is taken for a half-close, a client done sending that still reads
    its answer (tests/test_half_close.py)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return sock


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(
    condition: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "condition",
    server: Server | None = None,
) -> T:
    """Call `condition` until it returns something truthy, and return that.

    Raises AssertionError naming `message` (and showing the server's log when `server` is
    given) if it is still falsy after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            log = f"\n--- server log ---\n{server.output()}" if server is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {message}{log}")
        time.sleep(interval)


def wait_for_log(server: Server, *needles: str, timeout: float = 10.0) -> str:
    """Wait until the server's log holds every one of `needles`; return the log."""

    def found() -> str:
        log = server.output()
        return log if all(needle in log for needle in needles) else ""

    return wait_for(found, timeout, message=f"{list(needles)!r} in the log", server=server)


#: Where a log event starts: its timestamp (the lines of a multi-line message have none).
LOG_EVENT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", re.M)


def log_event(log: str, start: str) -> str:
    """The first log event whose message begins with `start`: its line and the lines after
    it, up to the next event. A line of another event written into its middle ends it."""
    at = log.index(start)
    begin = log.rfind("\n", 0, at) + 1
    after = LOG_EVENT.search(log, at)
    return log[begin : after.start() if after else len(log)]


def freeze(pid: int) -> None:
    """Stop process `pid` with SIGSTOP and wait until every one of its threads has stopped.

    kill() returns once the signal is queued: one thread takes it and only then tells the
    others to stop, so a worker's reactor thread can still accept a connection or two in
    between. A test that opens connections right after kill() raced that."""
    os.kill(pid, signal.SIGSTOP)

    def stopped() -> bool:
        tasks = Path(f"/proc/{pid}/task")
        assert tasks.exists(), f"pid {pid} is gone"
        for task in tasks.iterdir():
            try:
                stat = (task / "stat").read_text()
            except OSError:  # the thread ended meanwhile (ENOENT or ESRCH)
                continue
            # The state follows the command name, which is in parentheses.
            if stat.rpartition(")")[2].split()[0] not in ("T", "t"):
                return False
        return True

    wait_for(stopped, 10, 0.001, f"every thread of pid {pid} to stop")


class Server:
    """One rsasgi process; its combined stdout/stderr goes to a log file.

    The process leads its own session, so `kill()` can end it together with any worker
    processes it starts; `stop()` signals the main process only, as an operator would.
    """

    def __init__(
        self,
        args: list[str],
        cwd: Path,
        log_path: Path,
        env: dict | None,
        prefix: list[str] | None = None,
        command: list[str] | None = None,
    ):
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "wb")
        full_env = dict(os.environ)
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        if env:
            full_env.update(env)
        self.proc = subprocess.Popen(
            [*(prefix or []), *(command or [sys.executable, "-m", "rsasgi"]), *args],
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            start_new_session=True,
        )
        self.host = "127.0.0.1"
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_listening(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = LISTENING.search(self.output())
            if match:
                self.port = int(match.group(2))
                return
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"rsasgi exited with {self.proc.returncode} before listening:\n{self.output()}"
                )
            time.sleep(0.02)
        raise RuntimeError(f"rsasgi did not start listening in {timeout}s:\n{self.output()}")

    def wait_exit(self, timeout: float = 20.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait_exit(timeout)

    def kill(self) -> None:
        """End the whole process group (the server and any workers it started)."""
        kill_process_group(self.proc)
        self._log.close()

    def connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=10)
        return sock


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report carries the output of every rsasgi it started (the tail of
    each log), so a failure seen only in CI can be read from the CI log alone."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for server in getattr(item, "rsasgi_servers", ()):
            try:
                text = server.output()
            except OSError as error:
                text = f"(log unreadable: {error})"
            if len(text) > 20_000:
                text = "[... earlier output cut ...]\n" + text[-20_000:]
            report.sections.append((f"rsasgi output ({server.log_path.name})", text))


@pytest.fixture
def run_rsasgi(tmp_path, request):
    """Start rsasgi with the given arguments; returns a `Server`.

    `wait=True` waits for the "Listening on" line. The app directory defaults to
    tests/apps so `run_rsasgi("scope_app:app")` finds tests/apps/scope_app.py. `prefix`
    is a command that runs rsasgi (e.g. `["taskset", "-c", "0"]`); `command` is rsasgi's
    own (default `python -m rsasgi`).
    """
    servers: list[Server] = []
    request.node.rsasgi_servers = servers

    def start(
        *args: str,
        env: dict | None = None,
        wait: bool = True,
        cwd: Path | None = None,
        prefix: list[str] | None = None,
        command: list[str] | None = None,
    ):
        argv = list(args)
        if "--app-dir" not in argv:
            argv += ["--app-dir", str(APPS)]
        if not any(arg in argv for arg in ("--port", "--uds", "--fd", "--bind", "-b")):
            argv += ["--port", "0"]
        log_path = tmp_path / f"server-{len(servers)}.log"
        server = Server(argv, cwd or tmp_path, log_path, env, prefix, command)
        servers.append(server)
        if wait:
            server.wait_listening()
        return server

    yield start
    for server in servers:
        server.kill()


@pytest.fixture
def markers(tmp_path) -> Path:
    """An empty directory where apps leave marker files for the test to wait for."""
    path = tmp_path / "markers"
    path.mkdir()
    return path


def read_response(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Read from `sock` until the peer closes it."""
    sock.settimeout(timeout)
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)
