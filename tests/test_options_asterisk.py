"""`OPTIONS * HTTP/1.1` (RFC 9110 9.3.7, RFC 9112 3.2.4) asks about the server, not about a
resource: the server answers it and the app is never called, since an app given a PATH_INFO or
path that does not start with "/" breaks (wsgiref's validator fails the request outright)."""

from __future__ import annotations

import json

import h2.config
import h2.connection
import pytest
from apps.proto_raw import RawConn, request
from conftest import wait_for_log
from h2_support import h2_exchange


@pytest.mark.parametrize(
    "app, calls_path, one_call",
    [
        # validator() returns a `(*args, **kw)` function, which no inspection can tell apart.
        (["wsgi_validated:app", "--interface", "wsgi"], "/calls", ["GET /x"]),
        (["err_count:app"], "/count", {"/x": 1}),
    ],
    ids=["wsgi-validated", "asgi"],
)
def test_options_asterisk_is_answered_by_the_server(run_rsasgi, app, calls_path, one_call):
    server = run_rsasgi(*app)
    with server.connect() as sock:
        conn = RawConn(sock)
        conn.send(request("OPTIONS", "*"))
        response = conn.read_response()
        assert response.status == 200, (response, server.output())
        # The same connection goes on; the app sees the next request and only that one.
        conn.send(request("GET", "/x"))
        assert conn.read_response().status == 200
        conn.send(request("GET", calls_path))
        calls = conn.read_response()
    assert calls.status == 200
    assert json.loads(calls.body) == one_call


def request_headers(method: str, path: str) -> list:
    return [(":method", method), (":path", path), (":scheme", "http"), (":authority", "x")]


def test_options_asterisk_over_http2_is_answered_by_the_server(run_rsasgi):
    """RFC 9113 §8.3.1: `:path` is "*" for OPTIONS * over HTTP/2, which hyper gives as a URI
    with the authority in front: the server still answers it, not the app."""
    server = run_rsasgi("err_count:app")
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()

    with server.connect() as sock:
        assert h2_exchange(conn, sock, 1, request_headers("OPTIONS", "*"))[0] == b"200", (
            server.output()
        )
        status, counts = h2_exchange(conn, sock, 3, request_headers("GET", "/count"))
    # The app was never called for OPTIONS *.
    assert (status, json.loads(counts)) == (b"200", {}), server.output()


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_an_asterisk_path_on_another_method_over_http2_gives_400(run_rsasgi, method):
    """RFC 9113 §8.3.1: only OPTIONS has "*" for `:path`. Another method with it reached the
    app with path "*", where over HTTP/1 it is a 400 (tests/test_bad_input.py); the stream is
    answered 400 and the connection goes on."""
    server = run_rsasgi("err_count:app")
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    with server.connect() as sock:
        status, _ = h2_exchange(conn, sock, 1, request_headers(method, "*"))
        assert status == b"400", server.output()
        status, counts = h2_exchange(conn, sock, 3, request_headers("GET", "/count"))
    assert (status, json.loads(counts)) == (b"200", {}), server.output()
    # The log line is written by the log thread: waited for, not read at once.
    wait_for_log(server, f'400: the target "*" of a {method} request is in asterisk-form')


def test_a_path_that_is_not_absolute_over_http2_gives_400(run_rsasgi):
    """RFC 9113 §8.3.1: `:path` is an absolute path (with a query), or "*". A `:path` of
    "?x=1" reached the app as path "/" with the query; over HTTP/1 `GET ?x=1` is a 400."""
    server = run_rsasgi("err_count:app")
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    with server.connect() as sock:
        status, _ = h2_exchange(conn, sock, 1, request_headers("GET", "?x=1"))
        assert status == b"400", server.output()
        status, counts = h2_exchange(conn, sock, 3, request_headers("GET", "/count"))
    assert (status, json.loads(counts)) == (b"200", {}), server.output()
    assert '400: the target "?x=1" of a GET request is in a form no :path may have' in (
        server.output()
    )
    assert '"GET ?x=1 HTTP/2.0" 400' in server.output()


def test_options_asterisk_with_a_body_still_to_come_says_the_connection_closes(run_rsasgi):
    """The server answers `OPTIONS *` without reading a body: with one still to come, hyper
    closes the connection after the answer, which now says so (RFC 9112 §9.6)."""
    server = run_rsasgi("err_count:app")
    with server.connect() as sock:
        conn = RawConn(sock)
        conn.send(b"OPTIONS * HTTP/1.1\r\nHost: testserver\r\nContent-Length: 5\r\n\r\n")
        response = conn.read_response()
    assert response.status == 200, (response, server.output())
    assert response.header("connection") == "close", response.headers
