"""How long the server waits for a client: for the head of a request
(--timeout-request-header) and for the next request on a kept-alive connection
(--timeout-keep-alive). Each test sets the other timeout high, so the one under test is the
one that acts. App: tests/apps/proto_http.py."""

from __future__ import annotations

from apps.proto_raw import RawConn, recv_until_closed, request

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
