"""Malformed or oversized HTTP input is refused with the right status; the server stays up."""

from __future__ import annotations

import base64
import json
import socket
import time

import h2.config
import h2.connection
import httpx
import pytest
from apps.proto_raw import recv_until_closed
from conftest import wait_for_log
from h2_support import h2_exchange

APP = "err_count:app"


def exchange(server, request: bytes) -> bytes:
    """Send raw bytes on a new connection and return everything until the server closes it."""
    with server.connect() as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return recv_until_closed(sock)


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1."), response
    return int(response.split(b" ", 2)[1])


def counts(server) -> dict:
    return httpx.get(server.url + "/count", timeout=10).json()


def assert_server_up(server) -> None:
    assert server.proc.poll() is None, server.output()
    response = httpx.post(server.url + "/after", content=b"abc", timeout=10)
    assert response.status_code == 200
    assert response.text == "/after 3"


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"THIS IS NOT HTTP\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n",
        b"\x00\x01\x02\x03garbage\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
    ],
    ids=["words", "extra-token", "binary", "header-without-colon"],
)
def test_malformed_request_gives_400_and_close(run_rsasgi, request_bytes):
    server = run_rsasgi(APP)
    with server.connect() as sock:
        client = "{}:{}".format(*sock.getsockname())
        sock.sendall(request_bytes)
        response = recv_until_closed(sock)
    assert status_of(response) == 400, response
    assert counts(server) == {}
    assert_server_up(server)
    # hyper answered it, and the access log says so (as nginx logs its 400s).
    wait_for_log(server, f'rsasgi.access: {client} - "-" 400 0 "-" "-" - (request refused: ')


def test_header_over_default_head_limit_gives_431(run_rsasgi):
    server = run_rsasgi(APP)
    big = b"a" * 100_000
    response = exchange(server, b"GET /big HTTP/1.1\r\nHost: x\r\nX-Big: " + big + b"\r\n\r\n")
    assert status_of(response) == 431, response
    assert counts(server) == {}
    assert_server_up(server)
    wait_for_log(
        server,
        '"-" 431 0 "-" "-" - (request refused: message head is too large: over '
        "--limit-request-head 65536 bytes",
    )


def test_a_target_over_hypers_64k_gives_414_and_a_line(run_rsasgi):
    server = run_rsasgi(APP, "--limit-request-head", "1048576")
    target = b"/" + b"a" * 70_000
    response = exchange(server, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(response) == 414, response
    assert counts(server) == {}
    assert_server_up(server)
    wait_for_log(server, '"-" 414 0 "-" "-" - (request refused: URI too long)')


def test_a_refused_head_follows_a_custom_access_log_format(run_rsasgi):
    server = run_rsasgi(APP, "--access-log-format", "%(h)s [%(r)s] %(s)s %(b)s")
    assert status_of(exchange(server, b"THIS IS NOT HTTP\r\n\r\n")) == 400
    # A custom format is written bare, as gunicorn writes it.
    wait_for_log(server, "\n127.0.0.1 [-] 400 -\n")


def test_limit_request_head_option(run_rsasgi):
    server = run_rsasgi(APP, "--limit-request-head", "16384")
    small = (
        b"GET /small HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: "
        + b"a" * 12_000
        + b"\r\n\r\n"
    )
    assert status_of(exchange(server, small)) == 200
    large = (
        b"GET /large HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: "
        + b"a" * 20_000
        + b"\r\n\r\n"
    )
    response = exchange(server, large)
    assert status_of(response) == 431, response
    assert counts(server) == {"/small": 1}
    assert_server_up(server)


def test_http11_without_host_gives_400(run_rsasgi):
    server = run_rsasgi(APP)
    response = exchange(server, b"GET /nohost HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert status_of(response) == 400, response
    assert counts(server) == {}
    assert_server_up(server)


@pytest.mark.parametrize(
    "host",
    [b"a b", b"evil.example/x?y", b"user@evil.example", b"[::1", b"example.com:http"],
    ids=["space", "path", "userinfo", "open-bracket", "named-port"],
)
def test_a_host_that_is_not_host_and_port_gives_400(run_rsasgi, host):
    """RFC 9112 §3.2: a Host field value that is not `host[:port]` is a 400; the app, which
    builds its links from it, never sees the request (it did before)."""
    server = run_rsasgi(APP)
    response = exchange(
        server, b"GET /badhost HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
    )
    assert status_of(response) == 400, response
    assert counts(server) == {}
    response = exchange(
        server, b"GET /goodhost HTTP/1.1\r\nHost: [::1]:8000\r\nConnection: close\r\n\r\n"
    )
    assert status_of(response) == 200, response
    assert_server_up(server)


def test_http10_without_host_is_fine(run_rsasgi):
    server = run_rsasgi(APP)
    response = exchange(server, b"GET /old HTTP/1.0\r\n\r\n")
    assert status_of(response) == 200, response
    assert response.endswith(b"/old 0")


def test_two_host_headers_give_400(run_rsasgi):
    server = run_rsasgi(APP)
    response = exchange(
        server,
        b"GET /twohosts HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert status_of(response) == 400, response
    assert counts(server) == {}
    assert_server_up(server)


@pytest.mark.parametrize(
    "chunked_body",
    [
        b"zz\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloEXTRA-DATA\r\n0\r\n\r\n",
    ],
    ids=["bad-hex-size", "data-longer-than-size"],
)
def test_malformed_chunked_body_gives_400_and_drops_pipelined_request(run_rsasgi, chunked_body):
    server = run_rsasgi(APP)
    request = (
        b"POST /first HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunked_body
        + b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    response = exchange(server, request)
    assert status_of(response) == 400, response
    assert response.count(b"HTTP/1.1 ") == 1, response
    assert b"/second" not in response
    # The connection has closed with one response on it, so /second was never dispatched.
    seen = counts(server)
    assert "/second" not in seen, seen
    assert_server_up(server)


@pytest.mark.parametrize(
    "trailer_end", [b"X-T: 1\n\n", b"\n"], ids=["after-a-field", "without-fields"]
)
def test_a_bare_lf_in_the_trailer_section_gives_400_and_smuggles_nothing(run_rsasgi, trailer_end):
    """A front end that takes a bare LF as a line end sees two requests, /one and /two,
    and /two's body as its body. hyper before 1.13 ended trailer lines at CR LF only, took
    /two's head for trailers and ran its body, GET /admin, as a request of its own."""
    server = run_rsasgi(APP)
    inner = b"GET /admin HTTP/1.1\r\nHost: x\r\n\r\n"
    request = (
        b"POST /one HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"5\r\nhello\r\n0\r\n"
        + trailer_end
        + b"POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(inner)
        + inner
    )
    response = exchange(server, request)
    assert status_of(response) == 400, response
    assert response.count(b"HTTP/1.1 ") == 1, response
    seen = counts(server)
    assert "/admin" not in seen and "/two" not in seen, seen
    assert_server_up(server)


def test_body_over_limit_with_content_length_gives_413(run_rsasgi):
    server = run_rsasgi(APP, "--limit-request-body", "1000")
    at_limit = (
        b"POST /fits HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n"
    )
    response = exchange(server, at_limit + b"x" * 1000)
    assert status_of(response) == 200, response
    assert response.endswith(b"/fits 1000")

    over = b"POST /over HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\nConnection: close\r\n\r\n"
    response = exchange(server, over + b"x" * 1001)
    assert status_of(response) == 413, response
    # The log names the client, as for the other refused requests.
    wait_for_log(server, "413: request body of 1001 bytes is over --limit-request-body 1000")
    (line,) = [line for line in server.output().splitlines() if "413: request body" in line]
    assert "client=127.0.0.1:" in line, line
    assert_server_up(server)


def test_body_over_limit_chunked_gives_413(run_rsasgi):
    server = run_rsasgi(APP, "--limit-request-body", "1000")
    head = (
        b"POST /chunks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n"
    )
    fits = b"1f4\r\n" + b"x" * 500 + b"\r\n" + b"1f4\r\n" + b"y" * 500 + b"\r\n0\r\n\r\n"
    response = exchange(server, head + fits)
    assert status_of(response) == 200, response
    assert response.endswith(b"/chunks 1000")

    over = b"".join(b"1f4\r\n" + b"z" * 500 + b"\r\n" for _ in range(4)) + b"0\r\n\r\n"
    # The app reads the whole body before it starts its response, so a 413 is still possible.
    response = exchange(server, head + over)
    assert status_of(response) == 413, response
    wait_for_log(server, "413: request body of POST /chunks HTTP/1.1 is over --limit-request-body")
    (line,) = [line for line in server.output().splitlines() if "413: request body" in line]
    assert "client=127.0.0.1:" in line, line
    assert_server_up(server)


def test_a_tls_handshake_on_the_plain_port_is_named_once(run_rsasgi):
    """hyper answers it 400 "invalid HTTP method parsed", which does not say that a proxy (or
    a browser) speaks https:// to a plain-HTTP port, the usual cause. The first one is a
    warning that says so; later ones are debug lines (any client can send one)."""
    server = run_rsasgi("proto_scope:app")
    hello = bytes.fromhex("160301002e0100002a0303") + b"\x00" * 40
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(hello)
            assert sock.recv(65536).startswith(b"HTTP/1.1 400")
    wait_for_log(server, "a TLS handshake came to this plain-HTTP port")
    assert server.output().count("a TLS handshake came to this plain-HTTP port") == 1


def padded_head(size: int, target: bytes = b"/pad") -> bytes:
    """A GET whose head (request line through the blank line) is exactly `size` bytes."""
    base = b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: "
    return base + b"a" * (size - len(base) - 4) + b"\r\n\r\n"


@pytest.mark.parametrize(("http", "limit"), [("1", 65_536), ("auto", 70_000)])
def test_limit_request_head_is_exact(run_rsasgi, http, limit):
    """A head of --limit-request-head bytes is served, one byte more is a 431. hyper's bound
    on its read buffer, checked only while the head is partial, let a head over the limit
    through whenever its end came in the read that crossed the limit: with --http 1 at the
    default, and with --http auto (whose HTTP/1 connections read the sniffed preface
    first, then 8 KiB at a time) at a limit that is no multiple of 8 KiB."""
    server = run_rsasgi(APP, "--http", http, "--limit-request-head", str(limit))
    for size in (limit, limit + 1, limit + 536, limit + 7_000, limit + 30_000):
        response = exchange(server, padded_head(size, b"/pad%d" % size))
        assert status_of(response) == (200 if size <= limit else 431), (size, response[:200])
    assert counts(server) == {f"/pad{limit}": 1}
    assert_server_up(server)


@pytest.mark.parametrize(
    ("request_bytes", "target"),
    [
        (b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n", "a.example:443"),
        (b"CONNECT /tunnel HTTP/1.1\r\nHost: x\r\n\r\n", "/tunnel"),
        (b"CONNECT http://a.example:443/ HTTP/1.1\r\nHost: a.example\r\n\r\n", "a.example:443"),
    ],
    ids=["authority-form", "origin-form", "absolute-form"],
)
def test_connect_gets_501_and_never_reaches_the_app(run_rsasgi, request_bytes, target):
    """RFC 9110 §9.3.6: rsasgi makes no tunnels. The app got CONNECT with path "/", and any
    2xx it answered made hyper hand the connection over as a tunnel: the client saw it
    close, with no response."""
    server = run_rsasgi(APP)
    response = exchange(server, request_bytes)
    assert status_of(response) == 501, response
    assert response.count(b"HTTP/1.1 ") == 1, response
    assert counts(server) == {}
    assert_server_up(server)
    wait_for_log(server, "501: CONNECT ", "asks for a tunnel, which rsasgi does not make")
    # The access line names what it asks to reach (it said "/" for an authority).
    wait_for_log(server, f'"CONNECT {target} HTTP/1.1" 501')


@pytest.mark.parametrize(
    ("request_bytes", "target"),
    [
        (b"GET a.example:443 HTTP/1.1\r\nHost: a.example\r\n\r\n", "a.example:443"),
        (b"GET admin HTTP/1.1\r\nHost: a.example\r\n\r\n", "admin"),
        (b"GET * HTTP/1.1\r\nHost: a.example\r\n\r\n", "*"),
        (b"POST * HTTP/1.0\r\nContent-Length: 0\r\n\r\n", "*"),
    ],
    ids=["authority-form", "bare-name", "asterisk", "asterisk-http10"],
)
def test_a_target_neither_a_path_nor_a_url_gives_400(run_rsasgi, request_bytes, target):
    """RFC 9112 §3.2: only CONNECT has an authority-form target, only OPTIONS an asterisk;
    the app was handed them as "/" or "*"."""
    server = run_rsasgi(APP)
    response = exchange(server, request_bytes)
    assert status_of(response) == 400, response
    assert counts(server) == {}
    assert_server_up(server)
    wait_for_log(server, f'400: the target "{target}" of a ')


def test_an_absolute_url_without_a_path_is_logged_with_its_slash(run_rsasgi):
    """RFC 9112 §3.2.2: `GET http://a.example?x=1` asks for `/?x=1`, as the app sees it; the
    access line said `GET ?x=1`."""
    server = run_rsasgi(APP)
    response = exchange(server, b"GET http://a.example?x=1 HTTP/1.1\r\nHost: a.example\r\n\r\n")
    assert status_of(response) == 200, response
    wait_for_log(server, '"GET /?x=1 HTTP/1.1" 200')


def test_two_host_headers_give_400_over_http10_too(run_rsasgi):
    """RFC 9112 §3.2: any request with more than one Host is a 400 (HTTP/1.0 may have none)."""
    server = run_rsasgi(APP)
    response = exchange(
        server, b"GET /twohosts10 HTTP/1.0\r\nHost: a.example\r\nHost: b.example\r\n\r\n"
    )
    assert status_of(response) == 400, response
    assert counts(server) == {}
    assert_server_up(server)


def body_json(response: bytes) -> dict:
    assert status_of(response) == 200, response
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


def test_an_absolute_form_target_names_the_host_over_the_host_header(run_rsasgi):
    """RFC 9112 §3.2.2: with an absolute-form target the server uses its authority and
    ignores Host; the app, whose allow-list and links read Host (ASGI's host, WSGI's
    HTTP_HOST), saw the other name."""
    request = (
        b"GET http://good.example:8080/x?q=1 HTTP/1.1\r\nHost: evil.example\r\n"
        b"Connection: close\r\n\r\n"
    )
    server = run_rsasgi("proto_scope:app")
    scope = body_json(exchange(server, request))["scope"]
    hosts = [
        base64.b64decode(value["b64"])
        for name, value in scope["headers"]
        if base64.b64decode(name["b64"]) == b"host"
    ]
    assert hosts == [b"good.example:8080"], scope["headers"]
    assert scope["path"] == "/x"

    wsgi = run_rsasgi("wsgi_env:app")
    environ = body_json(exchange(wsgi, request))["environ"]
    assert environ["HTTP_HOST"] == "good.example:8080"


@pytest.mark.parametrize(
    "head",
    [
        b"GET /many HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(100)),
        b"POST /huge HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551615\r\n",
    ],
    ids=["101-fields", "content-length-2^64-1"],
)
def test_a_431_line_names_what_may_be_too_large(run_rsasgi, head):
    """hyper refuses more than 100 header fields, and a Content-Length it cannot count, with
    the same 431 as a head over the limit, and its text said only "message head is too
    large": the line names all three, and the option."""
    server = run_rsasgi(APP)
    response = exchange(server, head + b"\r\n")
    assert status_of(response) == 431, response
    assert counts(server) == {}
    wait_for_log(
        server,
        "(request refused: message head is too large: over --limit-request-head 65536 "
        "bytes, over 100 header fields, or a Content-Length over 2^64 - 3)",
    )


def test_a_malformed_chunked_body_is_logged_with_its_cause(run_rsasgi):
    """hyper's error says where ("error reading a body from connection"), its cause what
    ("Invalid chunk size line"); and the app's end on the disconnect it then sees is not
    the client's doing."""
    server = run_rsasgi("wsgi_env:app", "--log-level", "debug")
    with server.connect() as sock:
        sock.sendall(
            b"POST /env HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        )
        # The rest once a thread runs the app (else it is never run: nothing to say then).
        time.sleep(0.5)
        sock.sendall(b"zz\r\nworld\r\n0\r\n\r\n")
        response = recv_until_closed(sock)
    assert status_of(response) == 400, response
    wait_for_log(
        server,
        "400: malformed body in POST /env HTTP/1.1: error reading a body from connection: "
        "Invalid chunk size line",
        "ended on the disconnect it saw when the server refused the request body",
    )
    # Which client sent it, as the other lines of a refused request say.
    (line,) = [line for line in server.output().splitlines() if "malformed body" in line]
    assert "client=127.0.0.1:" in line, line
    assert "client disconnected while the app handled" not in server.output()


@pytest.mark.parametrize(
    "codings, status, log",
    [
        ([b"gzip, chunked"], 501, 'has the transfer coding "gzip"'),
        ([b"gzip", b"chunked"], 501, 'has the transfer coding "gzip"'),
        ([b"identity, chunked"], 501, 'has the transfer coding "identity"'),
        ([b"chunked, chunked"], 400, "is declared chunked more than once"),
        ([b"chunked", b"Chunked"], 400, "is declared chunked more than once"),
    ],
    ids=["one-field", "two-fields", "identity", "chunked-twice", "chunked-in-two-fields"],
)
def test_transfer_codings_other_than_one_chunked_are_refused(run_rsasgi, codings, status, log):
    """RFC 9112 §6.1: hyper reads a body whose last coding is chunked and passed it on with
    the others still applied; the app took gzip bytes for the body (501: a coding the server
    does not decode). A sender must not apply chunked more than once: hyper decoded the outer
    one only and served the request, where nginx, HAProxy and h11 refuse it (400)."""
    server = run_rsasgi(APP)
    fields = b"".join(b"Transfer-Encoding: " + coding + b"\r\n" for coding in codings)
    request = b"POST /gz HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n5\r\nhello\r\n0\r\n\r\n"
    response = exchange(server, request)
    assert status_of(response) == status, response
    assert counts(server) == {}
    assert_server_up(server)
    wait_for_log(server, f"{status}: the body of POST /gz {log}")


def test_connect_over_http2_gets_501_on_its_stream_only(run_rsasgi):
    """A CONNECT without :protocol reached the app as "/", and the app's 200 had hyper reset
    the stream, with no access line. A WebSocket's extended CONNECT is not one of these (see
    test_websocket_http2.py)."""
    server = run_rsasgi(APP)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()

    with server.connect() as sock:
        connect = [(":method", "CONNECT"), (":authority", "a.example:443")]
        assert h2_exchange(conn, sock, 1, connect, end_stream=False)[0] == b"501", server.output()
        get = [(":method", "GET"), (":path", "/count"), (":scheme", "http"), (":authority", "x")]
        status, seen = h2_exchange(conn, sock, 3, get)
    assert (status, json.loads(seen)) == (b"200", {}), server.output()
    wait_for_log(server, "501: CONNECT a.example:443 asks for a tunnel")
