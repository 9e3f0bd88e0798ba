"""How long the server waits for a client: for the head of a request
(--timeout-request-header) and for the next request on a kept-alive connection
(--timeout-keep-alive), and for a client that stops reading the response (--timeout-send) or
sending its request body (--timeout-request-body). Each test sets the other timeouts high, so
the one under test is the one that acts. Apps: tests/apps/proto_http.py, tests/apps/h2_abuse.py."""

from __future__ import annotations

import signal
import socket
import time

import httpx
import pytest
from apps.proto_raw import RawConn, recv_until_closed, request
from conftest import wait_for_log

APP = "proto_http:app"


def test_silent_connection_is_closed_after_the_request_header_timeout(run_rsasgi):
    """A client that connects and sends nothing (slowloris, a port scanner) is let go."""
    server = run_rsasgi(APP, "--timeout-request-header", "1", "--timeout-keep-alive", "60")
    with server.connect() as sock:
        recv_until_closed(sock, timeout=10)


def test_partial_request_head_is_closed_after_the_request_header_timeout(run_rsasgi):
    server = run_rsasgi(APP, "--timeout-request-header", "1", "--timeout-keep-alive", "60")
    with server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: testserver\r\n")
        recv_until_closed(sock, timeout=10)


def test_prompt_request_is_served_under_a_short_request_header_timeout(run_rsasgi):
    server = run_rsasgi(APP, "--timeout-request-header", "1")
    with server.connect() as sock:
        conn = RawConn(sock)
        conn.send(request("GET", "/"))
        response = conn.read_response()
    assert response.status == 200
    assert response.body == b"hello world"


def test_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(run_rsasgi):
    server = run_rsasgi(APP, "--timeout-keep-alive", "1", "--timeout-request-header", "60")
    with server.connect() as sock:
        conn = RawConn(sock)
        conn.send(request("GET", "/"))
        response = conn.read_response()
        assert response.status == 200
        assert (response.header("connection") or "").lower() != "close", response.headers
        assert conn.read_until_closed(timeout=10) == b""


def test_partial_head_on_a_kept_alive_connection_is_closed_after_the_keep_alive_timeout(
    run_rsasgi,
):
    """After a first request, half of the next head and then silence: the connection is idle
    until a head is whole, so --timeout-keep-alive bounds it (here far below
    --timeout-request-header)."""
    server = run_rsasgi(APP, "--timeout-keep-alive", "1", "--timeout-request-header", "60")
    with server.connect() as sock:
        conn = RawConn(sock)
        conn.send(request("GET", "/"))
        assert conn.read_response().status == 200
        sock.sendall(b"GET / HTTP/1.1\r\nHost: testserver\r\n")
        # Well before the request-header timeout.
        assert conn.read_until_closed(timeout=20) == b""


# ---------------------------------------------------------------------------------------
# A client that stops taking the response (--timeout-send), or stops sending its request
# body (--timeout-request-body). App: tests/apps/h2_abuse.py, whose /stats reports what its
# routes did. HTTP/2's side of both is in tests/test_http2_abuse.py.
# ---------------------------------------------------------------------------------------

COUNTING_APP = "h2_abuse:app"
MIB = 1024 * 1024


def app_stats(server) -> dict:
    return httpx.get(f"{server.url}/stats", timeout=10).json()


def small_receive_buffer(server) -> socket.socket:
    """A connection whose receive buffer is small, so a client that stops reading stops
    the server's writes soon."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.connect(("127.0.0.1", server.port))
    return sock


def test_client_that_stops_reading_is_cut_at_the_send_timeout(run_rsasgi):
    """The response is cut and the connection closed after --timeout-send without progress;
    the app's pending send() fails, so it stops producing; other clients are served."""
    server = run_rsasgi(COUNTING_APP, "--timeout-send", "2")
    with small_receive_buffer(server) as sock:
        conn = RawConn(sock)
        conn.send(request("GET", f"/download?size={50 * MIB}"))
        assert conn.read_head().status == 200
        # Read nothing more: the socket buffers fill and hyper waits to write.
        log = wait_for_log(
            server, "the client took no bytes of the response for --timeout-send 2s", timeout=20
        )
        assert '"GET /download?size=52428800 HTTP/1.1"' in log
        # Everything the kernel still holds, then the end of the connection.
        received = conn.read_until_closed(timeout=20)
        assert len(received) < 10 * MIB
    assert httpx.get(f"{server.url}/", timeout=10).text == "ok"
    sent = app_stats(server)["sent"]
    time.sleep(0.5)
    assert app_stats(server)["sent"] == sent < 10 * MIB, "the app went on sending"


def test_slow_but_steady_reader_is_not_cut(run_rsasgi):
    """A client that reads a little every half second makes progress within every
    --timeout-send window, however long the whole response takes."""
    server = run_rsasgi(COUNTING_APP, "--timeout-send", "2")
    size = 2 * MIB
    with small_receive_buffer(server) as sock:
        conn = RawConn(sock)
        conn.send(request("GET", f"/download?size={size}"))
        response = conn.read_head()
        assert response.status == 200
        body = bytearray()
        started = time.monotonic()
        while True:
            chunk = conn.read_chunk()
            if not chunk:
                break
            body += chunk
            if time.monotonic() - started < 5:
                time.sleep(0.25)
    assert len(body) == size
    assert time.monotonic() - started >= 5, "too fast to show anything"
    assert "--timeout-send" not in server.output()


def read_slowly(sock: socket.socket, size: int, seconds: float) -> bytes:
    """A response read 64 KiB at a time, spread over about `seconds`."""
    sock.settimeout(20)
    pause = seconds / (size / (64 * 1024))
    received = bytearray()
    while True:
        chunk = sock.recv(64 * 1024)
        if not chunk:
            return bytes(received)
        received += chunk
        if b"\r\n\r\n" in received and len(received) >= size + received.index(b"\r\n\r\n") + 4:
            return bytes(received)
        time.sleep(pause)


def test_a_response_sent_whole_reaches_a_slow_reader_past_the_keep_alive_timeout(run_rsasgi):
    """The app sends its body in one message, so the request is done at once while hyper
    still holds most of the body: the connection is busy until the client has it, not idle,
    so --timeout-keep-alive (1 s) does not close it under the download."""
    server = run_rsasgi(COUNTING_APP, "--timeout-keep-alive", "1", "--timeout-send", "60")
    size = 4 * MIB
    with small_receive_buffer(server) as sock:
        sock.sendall(request("GET", f"/whole?size={size}"))
        started = time.monotonic()
        received = read_slowly(sock, size, seconds=4)
        assert time.monotonic() - started > 3, "too fast to show anything"
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert len(body) == size
    assert "--timeout-send" not in server.output()


def test_shutdown_waits_for_a_slow_reader_to_take_a_response_sent_whole(run_rsasgi):
    """SIGTERM while the client still reads the end of a finished response: the worker
    drains it (up to --timeout-graceful-shutdown) instead of closing after a grace second."""
    server = run_rsasgi(COUNTING_APP, "--timeout-send", "60", "--timeout-graceful-shutdown", "30")
    size = 4 * MIB
    with small_receive_buffer(server) as sock:
        sock.sendall(request("GET", f"/whole?size={size}"))
        sock.settimeout(20)
        first = sock.recv(64 * 1024)
        assert first.startswith(b"HTTP/1.1 200"), first[:100]
        server.proc.send_signal(signal.SIGTERM)
        received = first + read_slowly(sock, size, seconds=4)
    assert len(received.partition(b"\r\n\r\n")[2]) == size
    assert server.wait_exit(timeout=30) == 0


def test_a_client_that_stops_taking_a_response_sent_whole_is_closed_at_the_send_timeout(
    run_rsasgi,
):
    """The request is done for the app, which sent its 20 MiB in one message; the client
    takes nothing more: --timeout-send closes the connection, says why, and the access line
    says the response was cut (hyper has all of the body but its last byte, which the body
    keeps until hyper has written the rest)."""
    server = run_rsasgi(COUNTING_APP, "--timeout-send", "2", "--timeout-keep-alive", "60")
    with small_receive_buffer(server) as sock:
        conn = RawConn(sock)
        conn.send(request("GET", f"/whole?size={20 * MIB}"))
        assert conn.read_head().status == 200
        wait_for_log(server, "took no bytes of the response for --timeout-send 2s", timeout=20)
        assert len(conn.read_until_closed(timeout=20)) < 20 * MIB
    wait_for_log(server, f'"GET /whole?size={20 * MIB} HTTP/1.1" 200', "(incomplete)")
    assert httpx.get(f"{server.url}/", timeout=10).text == "ok"


def test_keep_alive_timeout_zero_says_each_connection_closes(run_rsasgi):
    """--timeout-keep-alive 0 turns keep-alive off: each response says Connection: close,
    as gunicorn's keepalive 0 does. The connection closed after each response unannounced,
    and a client's next request on it failed (http.client: 7 of 20 keep-alive POSTs)."""
    server = run_rsasgi("proto_http:app", "--timeout-keep-alive", "0")
    for _ in range(3):
        with server.connect() as sock:
            conn = RawConn(sock)
            conn.send(request("GET", "/"))
            response = conn.read_response()
            assert (response.status, response.body) == (200, b"hello world")
            assert response.header("connection") == "close", response.headers
            assert conn.read_until_closed(timeout=10) == b""


def test_request_body_that_stops_is_answered_408_at_the_request_body_timeout(run_rsasgi):
    """Ten of the hundred promised bytes, then silence: 408 and Connection: close, and the
    app, waiting in receive(), gets http.disconnect."""
    server = run_rsasgi(COUNTING_APP, "--timeout-request-body", "2")
    with server.connect() as sock:
        conn = RawConn(sock)
        conn.send(request("POST", "/hold", [("Content-Length", "100")]) + b"x" * 10)
        response = conn.read_response()
        assert response.status == 408
        assert (response.header("connection") or "").lower() == "close"
        assert conn.read_until_closed(timeout=10) == b""
    assert app_stats(server)["hold"] == ["http.request", "http.disconnect"]
    log = wait_for_log(server, "408: no bytes of the request body of")
    assert "--timeout-request-body 2s" in log


def test_an_unread_body_that_stops_after_the_response_is_not_logged_as_a_408(run_rsasgi):
    """The app answers without reading the body, and the rest of it never comes: the server,
    reading it only so the connection could carry another request, closes the connection at
    the request body timeout. The client had its 200; the log said "408: no bytes of the
    request body came", as if the app had waited for it and the client been told so."""
    server = run_rsasgi("proto_http:app", "--timeout-request-body", "1")
    with server.connect() as sock:
        conn = RawConn(sock)
        conn.send(request("POST", "/noread", [("Content-Length", "100")]) + b"x" * 10)
        response = conn.read_response()
        assert (response.status, response.body) == (200, b"not read")
        assert conn.read_until_closed(timeout=10) == b""
    log = wait_for_log(
        server,
        "the rest of the request body of POST /noread HTTP/1.1 did not come for "
        "--timeout-request-body 1s after its complete response; closing the connection",
    )
    assert "408:" not in log, log


@pytest.mark.parametrize("poll", [False, True], ids=["plain", "cancelled-receive"])
def test_a_body_paused_while_the_app_streams_its_response_is_not_timed(run_rsasgi, poll):
    """The app reads the first piece, then streams its answer for 4 s without asking for
    more, while the client sends the rest of its body only after 3 s. --timeout-request-body
    (1 s) is for an app waiting on its client: the body read ahead for an app that is busy
    elsewhere ran the clock too, and the response was cut with a 408 in the log. With
    `poll`, the app first looks for more with a receive() it cancels after 0.1 s: that it
    waited then does not make it wait still."""
    server = run_rsasgi(COUNTING_APP, "--timeout-request-body", "1")
    path = "/duplex?s=4&poll=1" if poll else "/duplex?s=4"
    with server.connect() as sock:
        conn = RawConn(sock)
        conn.send(request("POST", path, [("Content-Length", "10")]) + b"first")
        head = conn.read_head()
        assert head.status == 200
        time.sleep(3)
        conn.send(b"later")
        body = b"".join(conn.iter_body(head))
    assert body == b"first 0 1 2 3 end"
    # Not a bare "408": a timestamp may hold those digits.
    assert " 408 " not in server.output() and "408:" not in server.output()


def test_wsgi_request_body_that_stops_is_answered_408(run_rsasgi):
    """A WSGI thread blocked reading wsgi.input is an app waiting on its client."""
    server = run_rsasgi("wsgi_env:app", "--timeout-request-body", "1")
    with server.connect() as sock:
        conn = RawConn(sock)
        conn.send(request("POST", "/sha256", [("Content-Length", "100")]) + b"x" * 10)
        response = conn.read_response()
        assert response.status == 408
    wait_for_log(server, "408: no bytes of the request body of POST /sha256")


def test_slow_but_steady_upload_is_not_cut(run_rsasgi):
    """A byte every half second for five seconds: never two seconds without one."""
    server = run_rsasgi(COUNTING_APP, "--timeout-request-body", "2")
    with server.connect() as sock:
        conn = RawConn(sock)
        conn.send(request("POST", "/hold", [("Content-Length", "10")]))
        for _ in range(10):
            time.sleep(0.5)
            conn.send(b"x")
        response = conn.read_response()
    assert (response.status, response.body) == (200, b"done")
    assert "--timeout-request-body" not in server.output()


def test_send_and_request_body_timeouts_of_0_never_cut(run_rsasgi):
    server = run_rsasgi(COUNTING_APP, "--timeout-send", "0", "--timeout-request-body", "0")
    with server.connect() as sock:
        conn = RawConn(sock)
        conn.send(request("POST", "/hold", [("Content-Length", "2")]) + b"x")
        assert not conn.is_closed_by_peer(3)
        conn.send(b"y")
        assert conn.read_response().status == 200
