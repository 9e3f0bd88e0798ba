"""Faults around the server that must not take it down or mislabel what happened: a log pipe
nobody reads any more, a client that leaves before its response, an upload cut short."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

import httpx
import pytest
from conftest import (
    APPS,
    LISTENING,
    access_log,
    free_port,
    kill_process_group,
    resets_on_close,
    wait_for,
    wait_for_log,
)


def read_until_listening(pipe, timeout: float = 20.0) -> int:
    """Read `pipe` (the server's stdout) until the "Listening on" line; return the port."""
    deadline = time.monotonic() + timeout
    output = b""
    while True:
        match = LISTENING.search(output.decode(errors="replace"))
        if match:
            return int(match.group(2))
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no 'Listening on' line within {timeout}s: {output!r}"
        ready, _, _ = select.select([pipe], [], [], remaining)
        if ready:
            data = os.read(pipe.fileno(), 65536)
            assert data, f"the server closed its stdout before listening: {output!r}"
            output += data


@pytest.fixture
def piped_server(tmp_path):
    """rsasgi serving proto_http, its stdout and stderr going into one pipe (the access log
    is on, so every request writes to it); yields (process, port) once it listens."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rsasgi", "proto_http:app", "--app-dir", str(APPS), "--port", "0"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        yield proc, read_until_listening(proc.stdout)
    finally:
        kill_process_group(proc)
        if not proc.stdout.closed:
            proc.stdout.close()


def test_requests_are_served_after_the_log_pipe_breaks(piped_server):
    """Whoever read the log is gone (a crashed log shipper, `rsasgi ... | head`): log lines
    are lost, requests are still answered, and SIGTERM still stops the server cleanly."""
    proc, port = piped_server
    proc.stdout.close()
    for number in range(5):
        response = httpx.get(f"http://127.0.0.1:{port}/?n={number}", timeout=10)
        assert response.status_code == 200, number
        assert response.text == "hello world"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


def test_requests_are_served_while_nobody_reads_the_log(piped_server):
    """Whoever reads the log has stalled (a paused pager, a busy log shipper): the pipe fills
    up, log lines wait or are dropped, and requests are still answered."""
    proc, port = piped_server
    # About 150 bytes of access log each: 2000 requests overfill a 64 KiB pipe many times.
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        for number in range(2000):
            response = client.get(f"/?n={number}")
            assert response.status_code == 200, number
    proc.send_signal(signal.SIGTERM)
    # Reading the log again lets the server write its last lines and exit.
    proc.stdout.read()
    assert proc.wait(20) == 0


def test_closed_standard_streams_get_dev_null_not_the_server_s_descriptors(tmp_path):
    """Started with stdout and stderr closed (`>&- 2>&-`): the descriptors the server opens
    next must not take numbers 1 and 2, or every log line would be written into a listening
    socket or the memory the workers share to spread connections. They get /dev/null."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rsasgi", "proto_http:app", "--app-dir", str(APPS)]
        + ["--port", str(port), "--workers", "2"],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        # Closed in the child, after the pipes' set-up and before exec.
        preexec_fn=lambda: (os.close(1), os.close(2)),
        start_new_session=True,
    )
    try:

        def answers() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(answers, timeout=20, message="the server to answer")
        children = [
            int(pid) for pid in open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()
        ]
        assert len(children) == 2, children
        for pid in [proc.pid, *children]:
            for fd in (1, 2):
                assert os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/null", (pid, fd)
        for number in range(20):
            assert (
                httpx.get(f"http://127.0.0.1:{port}/?n={number}", timeout=10).text == "hello world"
            )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        kill_process_group(proc)


def start_slow_request(server, sock, target: str, events) -> None:
    """Send GET `target` to err_slow on `sock` and wait until the app has started it."""
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: testserver\r\n\r\n".encode())
    wait_for(
        lambda: events.exists() and "request-start" in events.read_text().split(),
        message="the app to start the request",
        server=server,
    )


def test_request_cut_off_at_shutdown_is_logged_as_444(run_rsasgi, tmp_path):
    """nginx's 444: the server closed the connection (the grace period ran out) while the
    app was still working, so no response was sent."""
    events = tmp_path / "events.txt"
    server = run_rsasgi(
        "err_slow:app", "--timeout-graceful-shutdown", "1", env={"ERR_SLOW_FILE": str(events)}
    )
    target = "/sleep?s=30"
    with server.connect() as sock:
        start_slow_request(server, sock, target, events)
        assert server.stop() == 0, server.output()
    lines = access_log(server.output(), target)
    assert [line["status"] for line in lines] == ["444"], server.output()


def test_client_gone_before_the_response_is_logged_as_499(run_rsasgi, tmp_path):
    """nginx's 499: the client closed the connection while the app was still working."""
    events = tmp_path / "events.txt"
    server = run_rsasgi("err_slow:app", env={"ERR_SLOW_FILE": str(events)})
    target = "/sleep?s=2"
    with resets_on_close(server.connect()) as sock:
        start_slow_request(server, sock, target, events)
    lines = wait_for(
        lambda: access_log(server.output(), target),
        timeout=15,
        message=f"an access log line for {target}",
        server=server,
    )
    assert [line["status"] for line in lines] == ["499"], server.output()


@pytest.mark.parametrize(
    "app, target",
    [("proto_stream:app", "/upload"), ("wsgi_env:app", "/sha256?chunk=1000")],
    ids=["asgi", "wsgi"],
)
def test_client_gone_in_the_middle_of_its_body_is_logged_as_499(run_rsasgi, tmp_path, app, target):
    """A client that sends part of its body and leaves was logged as "503 19" (a response
    it never got, with the status operators read as overload) and counted as a 5xx."""
    metrics_port = free_port()
    server = run_rsasgi(
        app,
        "--metrics-bind",
        f"127.0.0.1:{metrics_port}",
        env={"PROTO_MARKER_DIR": str(tmp_path)},
    )
    with server.connect() as sock:
        sock.sendall(
            f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n".encode()
            + b"x" * 5000
        )
        time.sleep(0.5)
    lines = wait_for(
        lambda: access_log(server.output(), target),
        timeout=15,
        message=f"an access log line for {target}",
        server=server,
    )
    assert [line["status"] for line in lines] == ["499"], server.output()
    metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    counted = [line for line in metrics.splitlines() if line.startswith("rsasgi_requests_total")]
    assert any('status="none"' in line and line.endswith(" 1") for line in counted), counted
    assert all(line.endswith(" 0") for line in counted if 'status="5xx"' in line), counted


def test_a_large_body_the_client_left_before_reading_is_logged_incomplete(run_rsasgi):
    """HTTP/1.1: hyper lets go of a body as it takes its last chunk, and a body the app sent in
    one message (Starlette's Response, a WSGI [body]) is one chunk: its access line was written
    at once, complete, and the metrics counted it done in a millisecond, though the client had
    taken a few megabytes of 32 when it left. The last byte now waits until hyper has written
    the rest to the socket."""
    server = run_rsasgi("h2_abuse:app")
    size = 32 * 1024 * 1024
    target = f"/whole?size={size}"
    with server.connect() as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        time.sleep(0.5)  # the socket's buffers fill; the rest waits in the server
    wait_for_log(server, f'"GET {target} HTTP/1.1" 200')
    line = next(line for line in server.output().splitlines() if target in line)
    assert line.endswith("(incomplete)"), line


@pytest.mark.parametrize(
    "app, target, marker",
    [
        ("proto_stream:app", "/wait-disconnect?tag=upload", "upload.begun"),
        ("wsgi_env:app", "/sha256?chunk=1000&tag=upload", "upload.progress"),
    ],
    ids=["asgi", "wsgi"],
)
def test_upload_cut_short_is_a_client_disconnect_not_a_bad_request(
    run_rsasgi, tmp_path, app, target, marker
):
    """Content-Length promises 100000 bytes; the client sends 1000 and closes. That is the
    client leaving, not a malformed request: no 400 in the log, a debug line saying so."""
    markers = {"PROTO_MARKER_DIR": str(tmp_path), "WSGI_MARKER_DIR": str(tmp_path)}
    server = run_rsasgi(app, "--log-level", "debug", env=markers)
    with server.connect() as sock:
        sock.sendall(
            f"POST {target} HTTP/1.1\r\nHost: testserver\r\n".encode()
            + b"Content-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n"
            + b"x" * 1000
        )
        wait_for((tmp_path / marker).exists, message=f"the app to write {marker}", server=server)
    wait_for(
        lambda: "client disconnected" in server.output(),
        message="a log line saying the client disconnected",
        server=server,
    )
    log = server.output()
    assert "malformed body" not in log, log
    assert "400" not in [line["status"] for line in access_log(log)], log
