"""A client that shuts down its sending side after its request (`nc -N`, `printf ... | ncat`,
health-check scripts) is done sending, not gone: it gets its answer (RFC 9112 §9.6), as from
gunicorn and uvicorn. It got none: hyper took the end of input for a client that left."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest
from apps.proto_raw import recv_until_closed
from conftest import wait_for, wait_for_log

APPS = {"asgi": ["half_close:app"], "wsgi": ["half_close:wsgi_app", "--interface", "wsgi"]}
# Longer than any wait below: the server closes because the client's input has ended,
# not because the connection went idle.
KEEP_ALIVE = ["--timeout-keep-alive", "60"]


def half_closed_exchange(server, request: bytes, pause: float = 0.0) -> bytes:
    """Send `request`, shut down the sending side (after `pause`), read until closed."""
    with server.connect() as sock:
        sock.sendall(request)
        time.sleep(pause)
        sock.shutdown(socket.SHUT_WR)
        return recv_until_closed(sock, timeout=20)


def responses(raw: bytes) -> list[bytes]:
    """The bodies of the responses in `raw`, each with a Content-Length."""
    bodies = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), raw
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        bodies.append(rest[:length])
        raw = rest[length:]
    return bodies


def done(server) -> list[str]:
    return json.loads(httpx.get(server.url + "/done", timeout=10).text)


@pytest.mark.parametrize("interface", list(APPS))
def test_a_request_then_a_half_close_is_answered(run_rsasgi, interface):
    server = run_rsasgi(*APPS[interface], *KEEP_ALIVE)
    raw = half_closed_exchange(server, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert responses(raw) == [b"/health 0"]
    wait_for_log(server, '"GET /health HTTP/1.1" 200')


@pytest.mark.parametrize("interface", list(APPS))
def test_a_post_then_a_half_close_is_answered(run_rsasgi, interface):
    server = run_rsasgi(*APPS[interface], *KEEP_ALIVE)
    request = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    assert responses(half_closed_exchange(server, request)) == [b"/echo 5"]


@pytest.mark.parametrize("interface", list(APPS))
def test_a_large_post_then_a_half_close_is_answered(run_rsasgi, interface):
    """A body larger than the server reads ahead (64 KiB) is not the app's yet when the
    end of input comes: it is a half-close all the same once the app has read the rest."""
    server = run_rsasgi(*APPS[interface], *KEEP_ALIVE)
    body = b"x" * 300_000
    head = b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    assert responses(half_closed_exchange(server, head + body)) == [b"/big 300000"]


@pytest.mark.parametrize("interface", list(APPS))
def test_a_large_post_read_late_then_a_half_close_is_answered(run_rsasgi, interface):
    """The app starts reading a body larger than the read-ahead over a second after it all
    came, with the end of input: the server reads the body's last bytes and the end of input
    after them only then, together, and that is a half-close still."""
    server = run_rsasgi(*APPS[interface], *KEEP_ALIVE)
    head = b"POST /late?1.5 HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n\r\n"
    raw = half_closed_exchange(server, head + b"x" * 300_000)
    assert responses(raw) == [b"/late 300000"]


@pytest.mark.parametrize("pause", [0, 0.2])
@pytest.mark.parametrize("interface", list(APPS))
def test_a_slow_upload_then_a_half_close_is_answered(run_rsasgi, interface, pause):
    """The body takes longer than a second to come, and the end of input follows its last
    bytes (with them, or a moment after): it came with the request all the same."""
    server = run_rsasgi(*APPS[interface], *KEEP_ALIVE)
    with server.connect() as sock:
        # The app answers half a second after the body: the end of input comes before.
        sock.sendall(b"POST /slow?0.5 HTTP/1.1\r\nHost: x\r\nContent-Length: 30000\r\n\r\n")
        for _ in range(3):
            time.sleep(0.6)
            sock.sendall(b"x" * 10_000)
        time.sleep(pause)
        sock.shutdown(socket.SHUT_WR)
        raw = recv_until_closed(sock, timeout=20)
    assert responses(raw) == [b"/slow 30000"]


@pytest.mark.parametrize("interface", list(APPS))
def test_a_body_refused_then_a_half_close_is_answered(run_rsasgi, interface):
    """The server refuses a body over --limit-request-body as it comes, and hyper reads the
    rest (its end, here) to keep the connection: the end of input after it is a half-close
    all the same, and the 413 is written."""
    server = run_rsasgi(*APPS[interface], *KEEP_ALIVE, "--limit-request-body", "1000")
    head = b"POST /big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = b"1f4\r\n" + b"x" * 500 + b"\r\n1f5\r\n" + b"y" * 501 + b"\r\n0\r\n\r\n"
    raw = half_closed_exchange(server, head + body)
    assert raw.startswith(b"HTTP/1.1 413 "), raw


@pytest.mark.parametrize("interface", list(APPS))
def test_an_unread_body_then_a_half_close_is_answered(run_rsasgi, interface):
    """The app answers without reading the body: the end of input that follows the whole body
    is a half-close, and the answer is written."""
    server = run_rsasgi(*APPS[interface], *KEEP_ALIVE)
    head = b"POST /unread HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
    assert responses(half_closed_exchange(server, head + b"x" * 100_000)) == [b"/unread"]


@pytest.mark.parametrize("interface", list(APPS))
def test_a_slow_answer_to_a_half_closed_client_is_written(run_rsasgi, interface):
    """The app is still at work when the end of input comes, and answers after it, however
    long after (the server's own wake-ups meanwhile must not take the end of input again, now
    older than a second, for a client that left)."""
    # The connection's watcher wakes its task at least once a keep-alive timeout.
    server = run_rsasgi(*APPS[interface], "--timeout-keep-alive", "1")
    raw = half_closed_exchange(server, b"GET /slow?2.5 HTTP/1.0\r\n\r\n")
    assert raw.startswith(b"HTTP/1.0 200 ") and raw.endswith(b"/slow 0"), raw


@pytest.mark.parametrize("interface", list(APPS))
def test_pipelined_requests_behind_a_slow_one_then_a_half_close_are_all_answered(
    run_rsasgi, interface
):
    """The server parses the second request only once the first's slow answer is done, over a
    second after the one read that brought both and the end of input: it is as recent as that."""
    server = run_rsasgi(*APPS[interface], *KEEP_ALIVE)
    request = b"GET /slow?1.5 HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n"
    assert responses(half_closed_exchange(server, request)) == [b"/slow 0", b"/next 0"]


@pytest.mark.parametrize("interface", list(APPS))
def test_pipelined_requests_then_a_half_close_are_all_answered(run_rsasgi, interface):
    server = run_rsasgi(*APPS[interface], *KEEP_ALIVE)
    request = (
        b"".join(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % n for n in range(3))
        + b"POST /last HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok"
    )
    raw = half_closed_exchange(server, request)
    assert responses(raw) == [b"/0 0", b"/1 0", b"/2 0", b"/last 2"]


def test_a_listening_app_hears_the_half_close_as_a_disconnect(run_rsasgi):
    """Its receive() past the body gets http.disconnect, as for a client that left (uvicorn
    does the same), and what it sends then is still written."""
    server = run_rsasgi(*APPS["asgi"], *KEEP_ALIVE)
    raw = half_closed_exchange(server, b"GET /listen HTTP/1.1\r\nHost: x\r\n\r\n")
    assert responses(raw) == [b"http.disconnect"]


def test_a_listening_app_hears_a_client_that_left(run_rsasgi):
    """A client that closes its socket whole sends the same end of input as one that only
    shuts its sending side: the app listening for a disconnect hears it at once, as before,
    and its answer goes nowhere."""
    server = run_rsasgi(*APPS["asgi"], *KEEP_ALIVE)
    with server.connect() as sock:
        sock.sendall(b"GET /listen HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_for(lambda: "/listen" in done(server), server=server, message="the app's answer")


@pytest.mark.parametrize("interface", list(APPS))
def test_a_body_cut_short_by_the_end_of_input_is_not_a_half_close(run_rsasgi, interface):
    """The end of input before the whole body is a client that left mid-request: nothing
    reaches the app as a complete body, and the connection ends at once. A client that only
    shut its sending side still reads: it is told its request was bad (it was a 503, which
    says the server is overloaded and invites a retry)."""
    server = run_rsasgi(*APPS[interface], *KEEP_ALIVE)
    request = b"POST /cut HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello"
    raw = half_closed_exchange(server, request)
    assert raw.startswith(b"HTTP/1.1 400 "), raw
    assert b"/cut 10" not in raw and b"/cut 5" not in raw, raw
    assert "/cut" not in done(server)


@pytest.mark.parametrize("interface", list(APPS))
def test_a_large_body_cut_short_by_the_end_of_input_is_not_a_half_close(run_rsasgi, interface):
    """As above with a body the server reads in many pieces, the end of input coming after
    some of them: the connection still ends at once, and no complete body reaches the app."""
    server = run_rsasgi(*APPS[interface], *KEEP_ALIVE)
    head = b"POST /cut HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n\r\n"
    raw = half_closed_exchange(server, head + b"x" * 200_000)
    assert b"/cut 300000" not in raw and b"/cut 200000" not in raw, raw
    assert "/cut" not in done(server)


# A body the server reads ahead whole before its app asks (64 KiB), and one that hyper decodes
# to its end as the app's read-ahead fills: either way the server has read all of it.
GIVE_UP_REQUESTS = {
    "get": b"GET /queued HTTP/1.1\r\nHost: x\r\n\r\n",
    "post-30k": b"POST /queued HTTP/1.1\r\nHost: x\r\nContent-Length: 30000\r\n\r\n"
    + b"x" * 30_000,
    "post-100k": b"POST /queued HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
    + b"x" * 100_000,
}


@pytest.mark.parametrize("request_kind", list(GIVE_UP_REQUESTS))
def test_a_wsgi_client_that_gives_up_after_a_while_is_one_that_left(run_rsasgi, request_kind):
    """An end of input that comes a second or more after the client's last bytes is a client
    giving up on a slow answer (nginx closes its upstream connection so): its request, still
    queued behind a busy thread, is dropped unrun as before, not run for no one."""
    server = run_rsasgi(*APPS["wsgi"], "--threads", "1", *KEEP_ALIVE)
    request = GIVE_UP_REQUESTS[request_kind]
    with server.connect() as busy:
        busy.sendall(b"GET /slow?3 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
        raw = half_closed_exchange(server, request, pause=1.5)
        assert raw == b"", raw
        assert responses(recv_until_closed_or(busy)) == [b"/slow 0"]
    method = request.split(b" ", 1)[0].decode()
    wait_for_log(server, f'"{method} /queued HTTP/1.1" 499')
    assert "/queued" not in done(server)


def recv_until_closed_or(sock: socket.socket) -> bytes:
    """One response with a Content-Length, on a connection kept alive."""
    sock.settimeout(20)
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"/slow 0"):
        piece = sock.recv(65536)
        assert piece, data
        data += piece
    return data
