"""HTTP/1.x protocol behaviour seen from real clients: framing, HEAD, HTTP/1.0, keep-alive,
pipelining, 100-continue, default response headers, limits, and the ways of binding (--port 0,
--fd). Timeouts are in test_timeouts.py, --uds in test_unix_socket.py. Framing is tested for
an ASGI app (tests/apps/proto_http.py, the app of every other test here) and a WSGI one.
"""

from __future__ import annotations

import email.utils
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
from apps.proto_length import BODY
from apps.proto_raw import RawConn, request, wait_for_file
from conftest import wait_for, wait_for_log

APP = "proto_http:app"
APPS = Path(__file__).parent / "apps"
DATE_RE = re.compile(
    r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
    r"\d{4} \d\d:\d\d:\d\d GMT$"
)


@pytest.fixture
def server(run_rsasgi):
    return run_rsasgi(APP)


def raw(server) -> RawConn:
    return RawConn(server.connect())


def get(server, path: str, **kw) -> httpx.Response:
    return httpx.get(f"{server.url}{path}", timeout=10, **kw)


# --- HEAD ------------------------------------------------------------------------------------


def test_head_via_httpx(server):
    r = httpx.head(f"{server.url}/", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-length"] == "11"
    assert r.content == b""


# --- the status line -------------------------------------------------------------------------


def test_a_status_without_a_standard_reason_has_an_empty_one(server):
    """ASGI sends no reason phrase; for a code hyper knows none for, it wrote "<none>" (the
    line "HTTP/1.1 420 <none>"). uvicorn leaves it empty, as RFC 9112 allows;
    a code with a standard reason keeps it."""
    conn = raw(server)
    for code, line in [
        (420, b"HTTP/1.1 420 "),
        (299, b"HTTP/1.1 299 "),
        (599, b"HTTP/1.1 599 "),
        (418, b"HTTP/1.1 418 I'm a teapot"),
        (200, b"HTTP/1.1 200 OK"),
    ]:
        conn.send(request("GET", f"/status?code={code}"))
        response = conn.read_response("GET")
        assert response.status_line == line
        assert response.body == b"status %d" % code


def test_a_wsgi_status_without_a_reason_has_an_empty_one(run_rsasgi):
    """A WSGI app's "420" (no reason, which start_response takes) likewise."""
    conn = raw(run_rsasgi("wsgi_env:app"))
    for status, line in [("420", b"HTTP/1.1 420 "), ("599+", b"HTTP/1.1 599 ")]:
        conn.send(request("GET", f"/status?s={status}"))
        assert conn.read_response("GET").status_line == line


# --- a Content-Length the body disagrees with --------------------------------------------------


#: What each app is told of a body that goes past its Content-Length: an ASGI app's send()
#: raises, as uvicorn's does; a WSGI app's iterable is not asked for more (PEP 3333), and the
#: cut is logged.
PAST_LENGTH = {
    "proto_length:app": "RuntimeError: response body longer than its Content-Length: 12 bytes",
    "proto_length:wsgi": "the app's Content-Length is 5 but its body 12 bytes; sent the first 5",
}


def cut_to_five_then_next(server, path: str) -> None:
    """GET `path` (Content-Length 5, a longer body) then GET / on one connection: the first
    response is the five bytes, and the second follows whole."""
    conn = raw(server)
    conn.send(request("GET", path) + request("GET", "/"))
    head = conn.read_head()
    assert (head.status, head.header("content-length")) == (200, "5")
    assert conn.read_exact(5) == b"hello"
    head = conn.read_head()
    assert (head.status, head.header("content-length")) == (200, "2"), head.status_line
    assert conn.read_exact(2) == b"ok"


@pytest.mark.parametrize("app", ["proto_length:app", "proto_length:wsgi"], ids=["asgi", "wsgi"])
def test_a_body_longer_than_its_content_length_is_cut_to_it(run_rsasgi, app):
    """The declared length frames the response (PEP 3333, RFC 9112 6.3): the extra bytes are
    not sent, so the next response on the keep-alive connection is whole."""
    server = run_rsasgi(app)
    cut_to_five_then_next(server, "/long")
    wait_for_log(server, PAST_LENGTH[app])


def outcome(server, path: str) -> str:
    """What proto_length's app recorded of its sends for `path`."""
    return get(server, f"/outcome?{path}").text


@pytest.mark.parametrize("app", ["proto_length:app", "proto_length:wsgi"], ids=["asgi", "wsgi"])
@pytest.mark.parametrize("path", ["/long", "/long-stream"])
def test_over_http2_a_body_longer_than_its_content_length_is_cut_to_it(run_rsasgi, app, path):
    """hyper's HTTP/2 side writes what it is given: the server cuts the body itself, or the
    client, seeing more DATA than the header said, fails the stream (curl: PROTOCOL_ERROR;
    httpx: InvalidBodyLengthError). The connection serves on."""
    server = run_rsasgi(app)
    with httpx.Client(http1=False, http2=True, timeout=10) as client:
        response = client.get(f"{server.url}{path}")
        assert (response.http_version, response.status_code) == ("HTTP/2", 200)
        assert (response.headers["content-length"], response.content) == ("5", b"hello")
        assert client.get(f"{server.url}/").text == "ok"
    if path == "/long":
        wait_for_log(server, PAST_LENGTH[app])


@pytest.mark.parametrize("app", ["proto_length:app", "proto_length:wsgi"], ids=["asgi", "wsgi"])
def test_a_streamed_body_longer_than_its_content_length_is_cut_and_the_app_told(run_rsasgi, app):
    """Sent in pieces, the body is cut inside the piece that goes past the length, and the app
    hears of it at once: the ASGI send() that carried it raises RuntimeError (not the
    ClientDisconnected of a client that left: this one is still there); the WSGI iterable is
    not asked for its next piece."""
    server = run_rsasgi(app)
    cut_to_five_then_next(server, "/long-stream")
    if app == "proto_length:app":
        assert outcome(server, "/long-stream") == (
            "RuntimeError after 1: response body longer than its Content-Length: 8 bytes sent "
            "so far against Content-Length 5; the first 5 were sent and the response ended there"
        )
    else:
        assert outcome(server, "/long-stream") == "stopped after 1"
        wait_for_log(server, "Content-Length is 5 but its body at least 8 bytes; sent the first 5")


@pytest.mark.parametrize(
    ("path", "body", "pieces"),
    [
        ("/exact-stream", BODY, 2),
        # One piece over the buffer's high-water mark: the send waits for the reactor,
        # which ends the response as it takes the last byte.
        ("/big-exact", b"b" * 300_000, 1),
        # An empty piece that says more is coming, after the length went out.
        ("/exact-then-empty", BODY, 2),
    ],
)
@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
@pytest.mark.parametrize("app", ["proto_length:app", "proto_length:wsgi"], ids=["asgi", "wsgi"])
def test_a_streamed_body_of_its_content_length_ends_well(
    run_rsasgi, app, http2, path, body, pieces
):
    """hyper ends a response once its Content-Length is sent, before the app's last (empty)
    message: that message must not fail as if the client had left (a Starlette FileResponse
    of a file that is a whole number of chunks sends one; its background tasks would never
    run), and the access log must not call the response incomplete."""
    server = run_rsasgi(app)
    with httpx.Client(http1=not http2, http2=http2, timeout=10) as client:
        response = client.get(f"{server.url}{path}")
    assert (response.status_code, response.content) == (200, body)
    expected = f"all {pieces} sent" if app == "proto_length:app" else f"all {pieces} given"
    # The app goes on a moment after the client has the whole body.
    done = wait_for(lambda: outcome(server, path).replace("none", ""), message="the app done")
    assert done == expected
    line = wait_for_log(server, f'"GET {path} HTTP/')
    line = next(x for x in line.splitlines() if f'"GET {path} HTTP/' in x)
    assert f" 200 {len(body)} " in line and "incomplete" not in line, line


def test_an_empty_body_short_of_its_content_length_is_not_sent_as_complete(run_rsasgi):
    """The app's header stays, no bytes follow, and the connection closes: the client sees
    the response is short (it was sent as a whole empty response, Content-Length: 0)."""
    server = run_rsasgi("proto_length:app")
    conn = raw(server)
    conn.send(request("GET", "/empty-short"))
    head = conn.read_head()
    assert (head.status, head.header("content-length")) == (200, "10")
    assert conn.read_until_closed() == b""
    wait_for_log(server, "the app's Content-Length is 10 but its body only 0 bytes")


def test_wsgi_write_past_the_content_length_or_to_head_is_dropped_without_an_error(run_rsasgi):
    """write() past the length is cut and logged, as gunicorn drops it, rather than raising
    into the app (which would skip its code after the write); to a HEAD request, whose body
    is never sent, write() is no error either."""
    server = run_rsasgi("proto_length:wsgi")
    response = get(server, "/write-long")
    assert (response.headers["content-length"], response.content) == ("5", b"hello")
    assert outcome(server, "/write-long") == "all 3 written"
    wait_for_log(server, '"GET /write-long HTTP/1.1": the app\'s Content-Length is 5 but')
    response = httpx.head(f"{server.url}/write-head", timeout=10)
    assert (response.status_code, response.headers["content-length"]) == (200, "12")
    assert outcome(server, "/write-head") == "all 2 written"
    # Over the buffer's high-water mark, write() waits for the reactor, which ends the
    # response as it takes the last byte: no client gone.
    response = get(server, "/write-big")
    assert (response.status_code, len(response.content)) == (200, 300_000)
    assert outcome(server, "/write-big") == "all 1 written"


@pytest.mark.parametrize("app", ["proto_length:app", "proto_length:wsgi"], ids=["asgi", "wsgi"])
def test_a_body_shorter_than_its_content_length_closes_the_connection(run_rsasgi, app):
    """The client must be able to tell the response is short: it gets what there is, then
    the connection closes, rather than waiting for bytes that never come."""
    server = run_rsasgi(app)
    conn = raw(server)
    conn.send(request("GET", "/short"))
    head = conn.read_head()
    assert (head.status, head.header("content-length")) == (200, "20")
    assert conn.read_until_closed() == b"hello world!"
    wait_for_log(server, "the app's Content-Length is 20 but its body only 12 bytes")
    # The worker carries on.
    assert get(server, "/").text == "ok"


@pytest.mark.parametrize("app", ["proto_length:app", "proto_length:wsgi"], ids=["asgi", "wsgi"])
@pytest.mark.parametrize("path", ["/cl-conflict", "/cl-text"])
def test_a_content_length_that_is_not_one_number_is_the_app_s_error(run_rsasgi, app, path):
    """Sent as written, it would frame the response wrongly and the client would read the
    next response into this one: the app gets an error (a 500), the connection goes on."""
    server = run_rsasgi(app)
    conn = raw(server)
    conn.send(request("GET", path) + request("GET", "/"))
    head = conn.read_head()
    assert head.status == 500, head.status_line
    conn.read_exact(int(head.header("content-length")))
    head = conn.read_head()
    assert (head.status, head.header("content-length")) == (200, "2"), head.status_line
    assert conn.read_exact(2) == b"ok"
    wait_for_log(server, "Content-Length")


@pytest.mark.parametrize("app", ["proto_length:app", "proto_length:wsgi"], ids=["asgi", "wsgi"])
@pytest.mark.parametrize("path", ["/cl-twice", "/cl-space"])
def test_a_repeated_or_padded_content_length_goes_out_once(run_rsasgi, app, path):
    server = run_rsasgi(app)
    conn = raw(server)
    conn.send(request("GET", path))
    head = conn.read_head()
    assert head.status == 200, head.status_line
    assert head.header_all("content-length") == ["12"]
    assert conn.read_exact(12) == BODY


@pytest.mark.parametrize("app", ["proto_length:app", "proto_length:wsgi"], ids=["asgi", "wsgi"])
def test_the_app_s_hop_by_hop_headers_are_the_server_s(run_rsasgi, app):
    """PEP 3333 forbids an app hop-by-hop headers: a Transfer-Encoding next to a length (which
    hyper refuses to send: the client got nothing), Keep-Alive and TE are dropped;
    Connection: close is honoured; Upgrade stays (a 426 must carry it)."""
    server = run_rsasgi(app)
    conn = raw(server)
    conn.send(request("GET", "/te-cl") + request("GET", "/hop"))
    head = conn.read_head()
    assert head.status == 200, head.status_line
    assert head.header("transfer-encoding") is None
    assert head.header("content-length") == "12"
    assert conn.read_exact(12) == BODY
    head = conn.read_head()
    assert head.status == 200, head.status_line
    for name in ("keep-alive", "te", "transfer-encoding"):
        assert head.header(name) is None, name
    assert head.header("upgrade") == "h2c"
    assert head.header("connection") == "close"
    assert conn.read_until_closed() == BODY


@pytest.mark.parametrize("app", ["proto_length:app", "proto_length:wsgi"], ids=["asgi", "wsgi"])
def test_an_http10_keep_alive_does_not_override_the_app_s_close(run_rsasgi, app):
    """An HTTP/1.0 client asking for keep-alive got `Connection: keep-alive` even when the app
    said close, and the connection carried its next request. The app's close stands, as it
    does over HTTP/1.1 (RFC 9112 §9.6)."""
    server = run_rsasgi(app)
    conn = raw(server)
    ka = [("Connection", "keep-alive")]
    conn.send(
        request("GET", "/hop", headers=ka, version="HTTP/1.0", host=False)
        + request("GET", "/", headers=ka, version="HTTP/1.0", host=False)
    )
    head = conn.read_head()
    assert head.status == 200, head.status_line
    assert head.header_all("connection") == ["close"], head.headers
    assert conn.read_until_closed() == BODY


# --- HTTP/1.0 --------------------------------------------------------------------------------


def test_http10_with_content_length_closes(server):
    conn = raw(server)
    conn.send(request("GET", "/", version="HTTP/1.0", host=False))
    resp = conn.read_response()
    assert resp.status == 200
    assert resp.header("content-length") == "11"
    assert resp.body == b"hello world"
    assert conn.is_closed_by_peer(5), "HTTP/1.0 connection without keep-alive stayed open"


def test_http10_keep_alive_with_content_length(server):
    """HTTP/1.0 clients such as ApacheBench -k ask for keep-alive explicitly."""
    conn = raw(server)
    ka = [("Connection", "keep-alive")]
    conn.send(request("GET", "/", headers=ka, version="HTTP/1.0", host=False))
    first = conn.read_response()
    assert first.body == b"hello world"
    assert (first.header("connection") or "").lower() == "keep-alive", first.headers
    conn.send(request("GET", "/", headers=ka, version="HTTP/1.0", host=False))
    assert conn.read_response().body == b"hello world"


def test_http10_keep_alive_without_length_does_not_claim_keep_alive(server):
    """A close-delimited body ends the connection, so the response must not promise keep-alive."""
    conn = raw(server)
    ka = [("Connection", "keep-alive")]
    conn.send(request("GET", "/nolength", headers=ka, version="HTTP/1.0", host=False))
    resp = conn.read_head()
    assert resp.header("transfer-encoding") is None, resp.headers
    body = b"".join(conn.iter_body(resp))
    assert body == b"hello world"
    if resp.header("content-length") is None:
        tokens = {t.strip().lower() for v in resp.header_all("connection") for t in v.split(",")}
        assert "keep-alive" not in tokens, (
            f"close-delimited HTTP/1.0 response announces keep-alive: {resp.headers}"
        )
        assert conn.is_closed_by_peer(5)
    else:
        conn.send(request("GET", "/", headers=ka, version="HTTP/1.0", host=False))
        assert conn.read_response().body == b"hello world"


def test_http10_post_body(server):
    conn = raw(server)
    conn.send(request("POST", "/echo", body=b"ten-bytes!", version="HTTP/1.0", host=False))
    resp = conn.read_response()
    assert resp.status == 200
    assert resp.body == b"ten-bytes!"
    assert conn.is_closed_by_peer(5)


# --- keep-alive and pipelining ---------------------------------------------------------------


def test_keep_alive_reuses_the_connection(server):
    conn = raw(server)
    conn.send(request("GET", "/"))
    first = conn.read_response()
    assert first.status == 200 and first.body == b"hello world"
    assert (first.header("connection") or "").lower() != "close"
    conn.send(request("POST", "/echo", body=b"second body"))
    second = conn.read_response()
    assert second.status == 200 and second.body == b"second body"
    conn.send(request("GET", "/nolength"))
    third = conn.read_response()
    assert third.status == 200 and third.body == b"hello world"
    conn.send(request("GET", "/length-parts"))
    fourth = conn.read_response()
    assert fourth.body == b"hello world"


def test_keep_alive_with_httpx_client(server):
    with httpx.Client(base_url=server.url, timeout=10) as client:
        bodies = [client.get("/").content for _ in range(5)]
    assert bodies == [b"hello world"] * 5


def test_connection_close_is_honoured(server):
    conn = raw(server)
    conn.send(request("GET", "/", headers=[("Connection", "close")]))
    resp = conn.read_response()
    assert resp.status == 200
    assert resp.body == b"hello world"
    assert conn.is_closed_by_peer(5)


def test_pipelined_requests_answered_in_order(server):
    conn = raw(server)
    conn.send(
        request("GET", "/sleep?ms=400&tag=first")
        + request("GET", "/sleep?ms=0&tag=second")
        + request("POST", "/echo", body=b"third")
    )
    responses = [conn.read_response() for _ in range(3)]
    assert [r.status for r in responses] == [200, 200, 200]
    assert [r.body for r in responses] == [b"first", b"second", b"third"]
    # and the connection is still usable
    conn.send(request("GET", "/"))
    assert conn.read_response().body == b"hello world"


def test_pipelined_head_and_chunked(server):
    conn = raw(server)
    conn.send(request("HEAD", "/nolength") + request("GET", "/nolength") + request("GET", "/"))
    head = conn.read_response("HEAD")
    chunked = conn.read_response()
    plain = conn.read_response()
    assert head.status == 200
    assert chunked.body == b"hello world"
    assert plain.body == b"hello world"


# --- Expect: 100-continue --------------------------------------------------------------------


def test_expect_100_continue(server):
    conn = raw(server)
    conn.send(
        b"POST /echo HTTP/1.1\r\nHost: testserver\r\nContent-Length: 5\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    interim = conn.read_head()
    assert interim.status_line == b"HTTP/1.1 100 Continue", interim.status_line
    conn.send(b"hello")
    resp = conn.read_response()
    assert resp.status == 200
    assert resp.body == b"hello"
    assert resp.header("connection") != "close", resp.headers
    # keep-alive still works afterwards
    conn.send(request("GET", "/"))
    assert conn.read_response().body == b"hello world"


def test_expect_100_continue_for_a_body_the_app_never_asks_for(server):
    """The app answers without reading the body: no 100 Continue is sent, and the connection
    closes after the response, since the client, never asked for its body, may not send it
    (or may send its next request in its place: it must not be read as this body). The
    response says so (RFC 9110 §10.1.1): without `Connection: close` a client would send its
    next request on a connection about to close."""
    conn = raw(server)
    conn.send(
        b"POST /noread HTTP/1.1\r\nHost: testserver\r\nContent-Length: 20\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    resp = conn.read_response()
    assert resp.status == 200, resp.status_line
    assert resp.body == b"not read"
    assert resp.header("connection") == "close", resp.headers
    # The next request in place of the body: not answered on this connection.
    conn.send(request("GET", "/"))
    assert conn.read_until_closed(timeout=10) == b""


def test_an_http10_expect_100_continue_is_ignored(server):
    """RFC 9110 §10.1.1: a server MUST ignore a 100-continue expectation in an HTTP/1.0
    request. rsasgi held such a body back as if never asked for, and closed a keep-alive
    connection whose app did not read it although the body was all there. It is read ahead
    now like any other, so the connection carries the next request."""
    conn = raw(server)
    conn.send(
        b"POST /noread HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 5\r\n"
        b"Expect: 100-continue\r\n\r\nhello"
        + request(
            "GET", "/", headers=[("Connection", "keep-alive")], version="HTTP/1.0", host=False
        )
    )
    resp = conn.read_response()
    assert (resp.status, resp.body) == (200, b"not read"), resp.status_line
    assert resp.header("connection") == "keep-alive", resp.headers
    assert conn.read_response().body == b"hello world"


# The request body to come after the app's answer (a 413 on an upload it judged by its
# headers), and a whole one followed by a pipelined GET, by Content-Length and chunked.
UNREAD_BODIES = {
    "length": (
        b"Content-Length: 20000000\r\n\r\n" + b"x" * 100_000,
        b"/noread", b"Content-Length: 500000\r\n\r\n" + b"x" * 500_000, b"not read",
    ),
    "chunked": (
        b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (65536, b"x" * 65536),
        b"/echo", b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", b"hello",
    ),
}  # fmt: skip


@pytest.mark.parametrize("framing", sorted(UNREAD_BODIES))
def test_a_response_before_more_body_than_is_drained_says_the_connection_closes(server, framing):
    """The app answers with more of the body still to come than the server reads and throws
    away to keep the connection (1 MiB): the connection closes after the response, and the
    response now says so (RFC 9112 §9.6). nginx kept such a connection for its next request,
    which then failed (a 502 for a POST). A chunked body tells how much of it is left only at
    its end: a response before the end of one the app has not begun to read says so too
    (nginx sends chunked bodies upstream with `proxy_request_buffering off`); a full-duplex
    echo's does not (test_streaming.py). A body within what is drained, or whole before the
    answer, leaves the connection to carry the next request, and the response says nothing."""
    partial, path, whole, answer = UNREAD_BODIES[framing]
    head = b"POST %s HTTP/1.1\r\nHost: testserver\r\n"
    conn = raw(server)
    conn.send(head % b"/noread" + partial)
    resp = conn.read_response()
    assert (resp.status, resp.body) == (200, b"not read"), resp.status_line
    assert resp.header("connection") == "close", resp.headers
    conn = raw(server)
    conn.send(head % path + whole + request("GET", "/"))
    resp = conn.read_response()
    assert (resp.status, resp.body) == (200, answer), resp.status_line
    assert resp.header("connection") is None, resp.headers
    assert conn.read_response().body == b"hello world"


def test_a_body_left_unread_by_a_response_complete_by_its_length_is_drained(server):
    """The app sent all of its Content-Length but its last message only later: the response
    was complete when hyper ended it, yet the request body still to come was not read and
    thrown away (the server judged the response unfinished), so the connection closed under
    the client's next request. The body is drained and the next request answered."""
    conn = raw(server)
    conn.send(b"POST /late-end HTTP/1.1\r\nHost: testserver\r\nContent-Length: 200000\r\n\r\n")
    conn.send(b"x" * 1000)
    resp = conn.read_response()
    assert (resp.status, resp.body) == (200, b"hello"), resp.status_line
    assert resp.header("connection") is None, resp.headers
    conn.send(b"x" * 199_000 + request("GET", "/"))
    assert conn.read_response().body == b"hello world"


@pytest.mark.parametrize(
    "app, path",
    [("proto_http:app", "/status?code=205"), ("wsgi_env:app", "/status?s=205%20Reset%20Content")],
    ids=["asgi", "wsgi"],
)
def test_a_205_goes_out_without_the_app_s_body(run_rsasgi, app, path):
    """RFC 9110 §15.3.6: a server must not send content in a 205. hyper strips 204 and 304
    bodies itself; a 205 went out with the app's body. The connection goes on."""
    server = run_rsasgi(app)
    conn = raw(server)
    conn.send(request("GET", path) + request("GET", path))
    for _ in range(2):
        response = conn.read_response()
        assert (response.status, response.body) == (205, b""), response
        assert response.header("content-length") == "0", response.headers


# --- framing chosen from the app's headers ---------------------------------------------------

# The same framing rules hold for an ASGI app (tests/apps/proto_http.py) and a WSGI app
# (tests/apps/wsgi_env.py); each names its route for a response with a Content-Length of 11,
# one streamed without a length, and an empty one. All bodies are "hello world" or empty.
FRAMING_APPS = {
    "asgi": (
        "proto_http:app",
        {"length": "/length-parts", "no-length": "/nolength", "empty": "/empty"},
    ),
    "wsgi": (
        "wsgi_env:app",
        {"length": "/framing/cl", "no-length": "/framing/nolength", "empty": "/framing/empty"},
    ),
}


@pytest.fixture(params=sorted(FRAMING_APPS))
def framing(request, run_rsasgi):
    """(server, routes) for the ASGI and then the WSGI app."""
    app, routes = FRAMING_APPS[request.param]
    return run_rsasgi(app), routes


def test_content_length_kept_when_the_app_sets_it(framing):
    server, routes = framing
    conn = raw(server)
    conn.send(request("GET", routes["length"]))
    resp = conn.read_response()
    assert resp.header("content-length") == "11"
    assert resp.header("transfer-encoding") is None
    assert resp.body == b"hello world"


def test_chunked_when_the_app_sets_no_length(framing):
    server, routes = framing
    conn = raw(server)
    conn.send(request("GET", routes["no-length"]))
    resp = conn.read_response()
    assert resp.header("transfer-encoding") == "chunked", resp.headers
    assert resp.header("content-length") is None
    assert resp.chunked
    assert resp.body == b"hello world"
    conn.send(request("GET", routes["length"]))
    assert conn.read_response().body == b"hello world"


def test_empty_body_with_content_length_zero(framing):
    server, routes = framing
    conn = raw(server)
    conn.send(request("GET", routes["empty"]))
    resp = conn.read_response()
    assert resp.status == 200
    assert resp.header("content-length") == "0"
    assert resp.body == b""
    conn.send(request("GET", routes["length"]))
    assert conn.read_response().body == b"hello world"


@pytest.mark.parametrize("kind", ["length", "no-length", "empty"])
def test_head_sends_no_body(framing, kind):
    """HEAD gets the GET's head without its body, even when the app writes one. Had the server
    leaked the body, the pipelined GET's response would not parse (its status line would
    start with "hello world")."""
    server, routes = framing
    conn = raw(server)
    conn.send(request("HEAD", routes[kind]) + request("GET", routes["length"]))
    head = conn.read_response("HEAD")
    assert head.status == 200
    assert head.header("content-length") == {"length": "11", "no-length": None, "empty": "0"}[kind]
    after = conn.read_response()
    assert after.status_line.startswith(b"HTTP/1.1 200"), after.status_line
    assert after.body == b"hello world"


def test_http10_response_without_length_is_not_chunked_and_closes(framing):
    server, routes = framing
    conn = raw(server)
    conn.send(request("GET", routes["no-length"], version="HTTP/1.0", host=False))
    resp = conn.read_head()
    assert resp.status == 200
    assert resp.version == "HTTP/1.0"
    assert resp.header("transfer-encoding") is None, resp.headers
    # No length is known when the head leaves, so the body ends where the connection does.
    assert resp.header("content-length") is None, resp.headers
    assert conn.read_until_closed() == b"hello world"


def test_length_computed_when_app_finished_before_the_head_was_written(server):
    """A response the app completed at once is sent with Content-Length, not chunked."""
    conn = raw(server)
    conn.send(request("GET", "/nolength-fast"))
    resp = conn.read_response()
    assert resp.header("transfer-encoding") is None
    assert resp.header("content-length") == "11"
    assert resp.body == b"hello world"
    conn.send(request("GET", "/"))
    assert conn.read_response().body == b"hello world"


def test_response_headers_may_be_lists(server):
    response = httpx.get(f"{server.url}/list-headers")
    assert response.status_code == 200
    assert response.text == "lists"
    assert response.headers.get_list("x-list") == ["1", "2"]


# --- default and extra response headers ------------------------------------------------------


def test_server_and_date_headers_by_default(server):
    r = get(server, "/")
    assert r.headers.get_list("server") and "rsasgi" in r.headers["server"].lower()
    assert len(r.headers.get_list("date")) == 1
    date = r.headers["date"]
    assert DATE_RE.match(date), date
    sent = email.utils.parsedate_to_datetime(date)
    assert abs((datetime.now(timezone.utc) - sent).total_seconds()) < 10


def test_no_server_header(run_rsasgi):
    server = run_rsasgi("--no-server-header", APP)
    r = get(server, "/")
    assert "server" not in r.headers
    assert "date" in r.headers
    r = get(server, "/app-server")
    assert r.headers.get_list("server") == ["custom-app"]


def test_server_header_explicit_flag(run_rsasgi):
    server = run_rsasgi("--server-header", APP)
    assert "rsasgi" in get(server, "/").headers["server"].lower()


def test_no_date_header(run_rsasgi):
    server = run_rsasgi("--no-date-header", APP)
    r = get(server, "/")
    assert "date" not in r.headers
    assert "server" in r.headers
    # hyper's HTTP/2 side adds its own Date unless told not to.
    with httpx.Client(http1=False, http2=True, timeout=10) as client:
        r = client.get(f"{server.url}/")
    assert (r.http_version, r.status_code) == ("HTTP/2", 200)
    assert "date" not in r.headers
    assert "server" in r.headers


def test_date_header_explicit_flag(run_rsasgi):
    server = run_rsasgi("--date-header", APP)
    assert DATE_RE.match(get(server, "/").headers["date"])


def test_a_server_header_given_with_header_replaces_ours(run_rsasgi):
    """RFC 9110 §10.2.4 has one Server field: --header "Server: ..." names the server in
    place of rsasgi's own (it went out as a second field); the app's own still wins."""
    server = run_rsasgi("--header", "Server: acme", APP)
    assert get(server, "/").headers.get_list("server") == ["acme"]
    assert get(server, "/missing").headers.get_list("server") == ["acme"]
    assert get(server, "/app-server").headers.get_list("server") == ["custom-app"]


def test_extra_headers_on_every_response(run_rsasgi):
    server = run_rsasgi("--header", "X-Foo:bar", "--header", "X-Other: two words", APP)
    for path in ("/", "/nolength", "/missing"):
        r = get(server, path)
        assert r.headers.get_list("x-foo") == ["bar"], (path, r.headers)
        assert r.headers.get_list("x-other") == ["two words"], (path, r.headers)
    assert get(server, "/missing").status_code == 404


# --- limits ----------------------------------------------------------------------------------


def _hold_the_only_place(run_rsasgi, tmp_path, ms: int):
    """A server with --limit-concurrency 1 whose one place a request sleeping `ms` holds;
    returns the server and that request's connection."""
    markers = tmp_path / "markers"
    markers.mkdir()
    server = run_rsasgi("--limit-concurrency", "1", APP, env={"PROTO_MARKER_DIR": str(markers)})
    slow = raw(server)
    slow.send(request("GET", f"/sleep?ms={ms}&tag=slow"))
    wait_for_file(markers / "slow.started")
    return server, slow


def test_limit_concurrency_answers_503_beyond_the_limit(run_rsasgi, tmp_path):
    server, slow = _hold_the_only_place(run_rsasgi, tmp_path, 2500)
    r = get(server, "/")
    assert r.status_code == 503, (r.status_code, r.text)
    resp = slow.read_response()
    assert resp.status == 200 and resp.body == b"slow"

    # the slot is free again
    def answered():
        response = get(server, "/")
        return response if response.status_code == 200 else None

    assert wait_for(answered, message="the slot to be free").content == b"hello world"


def test_a_503_at_the_limit_before_the_request_body_says_the_connection_closes(
    run_rsasgi, tmp_path
):
    """The server's own answers leave a request body unread, and hyper closes the connection
    after them unless all of the body was already in its buffer. A 503 from
    --limit-concurrency went out to a POST whose body had not come yet without saying so,
    and the client's body then met a closed connection. It says `Connection: close` now."""
    server, slow = _hold_the_only_place(run_rsasgi, tmp_path, 2500)
    conn = raw(server)
    conn.send(b"POST /echo HTTP/1.1\r\nHost: testserver\r\nContent-Length: 5\r\n\r\n")
    resp = conn.read_response()
    assert resp.status == 503, resp.status_line
    assert resp.header("connection") == "close", resp.headers
    # A bodiless request keeps its connection.
    conn = raw(server)
    conn.send(request("GET", "/"))
    resp = conn.read_response()
    assert resp.status == 503 and resp.header("connection") is None, resp.headers
    assert slow.read_response().body == b"slow"


def test_limit_concurrency_logs_a_burst_of_503s_once(run_rsasgi, tmp_path):
    """Over the limit every request gets 503 and its access line, but the warning comes
    once for the burst (then a count every 10 s while it lasts), not once per request: an
    overloaded worker would otherwise write thousands of them a second."""
    server, slow = _hold_the_only_place(run_rsasgi, tmp_path, 3000)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        statuses = [client.get(f"/?n={n}").status_code for n in range(30)]
    assert statuses == [503] * 30
    log = wait_for_log(server, '"GET /?n=29 HTTP/1.1" 503')
    assert log.count("more than --limit-concurrency 1 requests in flight") == 1, log
    assert slow.read_response().status == 200


@pytest.mark.parametrize(
    "app", ["proto_slow_return:app", "proto_slow_return:wsgi"], ids=["asgi", "wsgi"]
)
def test_limit_concurrency_lets_a_keep_alive_request_wait_for_its_own_predecessor(run_rsasgi, app):
    """--limit-concurrency 1, one keep-alive connection, each response complete 20 ms before
    its app returns (a WSGI close(), an ASGI app's last steps): the connection's next
    request, sent at once, is not refused for its own predecessor's place. It waits for
    that app to return."""
    server = run_rsasgi(app, "--limit-concurrency", "1")
    conn = raw(server)
    for _ in range(5):
        conn.send(request("GET", "/?after=20"))
        resp = conn.read_response()
        assert (resp.status, resp.body) == (200, b"done"), resp
    assert "more than --limit-concurrency" not in server.output()


@pytest.mark.parametrize(
    "app", ["proto_slow_return:app", "proto_slow_return:wsgi"], ids=["asgi", "wsgi"]
)
def test_limit_concurrency_still_counts_an_app_that_works_on_after_its_response(run_rsasgi, app):
    """The wait for the predecessor is short: an app that goes on for seconds after its
    response (a background task) keeps its place, and the next request on its connection
    gets 503 meanwhile, as does one on another connection; its connection is served after it."""
    server = run_rsasgi(app, "--limit-concurrency", "1")
    conn = raw(server)
    conn.send(request("GET", "/?after=3000"))
    assert conn.read_response().status == 200
    conn.send(request("GET", "/"))
    assert conn.read_response().status == 503
    assert get(server, "/").status_code == 503

    def served():
        conn.send(request("GET", "/"))
        resp = conn.read_response()
        return resp if resp.status == 200 else None

    assert wait_for(served, message="the place to be free", server=server).body == b"done"
    conn.send(request("GET", "/"))
    assert conn.read_response().status == 200


def test_limit_request_body(run_rsasgi):
    server = run_rsasgi("--limit-request-body", "100", APP)
    ok = httpx.post(f"{server.url}/echo", content=b"a" * 100, timeout=10)
    assert ok.status_code == 200 and ok.content == b"a" * 100
    too_big = httpx.post(f"{server.url}/echo", content=b"a" * 101, timeout=10)
    assert too_big.status_code == 413

    def chunks():
        for _ in range(4):
            yield b"b" * 50

    chunked = httpx.post(f"{server.url}/echo", content=chunks(), timeout=10)
    assert chunked.status_code == 413
    # the server keeps serving
    assert get(server, "/").content == b"hello world"


def test_default_keep_alive_outlives_two_seconds(server):
    conn = raw(server)
    conn.send(request("GET", "/"))
    assert conn.read_response().body == b"hello world"
    assert not conn.is_closed_by_peer(2), "closed before the default 5 s keep-alive timeout"
    conn.sock.settimeout(10)
    conn.send(request("GET", "/"))
    assert conn.read_response().body == b"hello world"


# --- binding ---------------------------------------------------------------------------------


def test_port_zero_logs_the_real_port(server):
    assert server.port and server.port != 0
    assert f"Listening on http://127.0.0.1:{server.port}" in server.output()
    assert "127.0.0.1:0 " not in server.output()
    r = get(server, "/port")
    assert r.content == str(server.port).encode()


def test_explicit_port(run_rsasgi):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = run_rsasgi("--port", str(port), APP)
    assert server.port == port
    assert get(server, "/port").content == str(port).encode()


def test_fd(tmp_path):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    fd = listener.fileno()
    log_path = tmp_path / "fd-server.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rsasgi", "--fd", str(fd), "--app-dir", str(APPS), APP],
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            pass_fds=[fd],
        )
    listener.close()  # the child holds its own copy
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, log_path.read_text(errors="replace")
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/port", timeout=2)
                break
            except (httpx.ConnectError, httpx.ReadTimeout, httpx.RemoteProtocolError):
                assert time.monotonic() < deadline, log_path.read_text(errors="replace")
                time.sleep(0.05)
        assert r.status_code == 200
        assert r.content == str(port).encode()
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).content == b"hello world"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_many_concurrent_keep_alive_clients(server):
    errors = []

    def worker(n):
        try:
            conn = raw(server)
            for i in range(20):
                body = f"{n}-{i}".encode()
                conn.send(request("POST", "/echo", body=body))
                resp = conn.read_response()
                assert resp.body == body, (resp.body, body)
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []


def test_a_304_keeps_the_content_length_of_what_it_stands_for(run_rsasgi):
    """RFC 9110 8.6: a 304 may carry the Content-Length of the representation it validates;
    it has no body, so that is no wrong length: no warning, and the connection goes on."""
    server = run_rsasgi("proto_send_edges:app")
    conn = raw(server)
    conn.send(request("GET", "/not-modified-length") + request("GET", "/"))
    assert conn.read_head().status == 304
    head = conn.read_head()
    assert (head.status, head.header("content-length")) == (200, "2"), head.status_line
    assert conn.read_exact(2) == b"ok"
    assert "the app's Content-Length is" not in server.output()
