"""A WSGI app that fails in any of the ways PEP 3333 forbids never takes the worker down, never
puts an invalid header on the wire, and gets a 500 while nothing has been sent (an aborted
connection afterwards). Also start_response's exc_info semantics.

App: tests/apps/wsgi_err.py. Markers in $WSGI_MARKER_DIR.
"""

from __future__ import annotations

import httpx
import pytest
from apps.proto_raw import RawConn, request
from apps.wsgi_common import wait_for_line
from conftest import wait_for, wait_for_log

APP = "wsgi_err:app"


@pytest.fixture
def server(run_rsasgi, markers):
    return run_rsasgi(APP, "--no-access-log", env={"WSGI_MARKER_DIR": str(markers)})


def raw(server) -> RawConn:
    return RawConn(server.connect())


def assert_worker_alive(server) -> None:
    assert server.proc.poll() is None, server.output()[-3000:]
    r = httpx.get(f"{server.url}/ok", timeout=10)
    assert (r.status_code, r.content) == (200, b"ok")
    assert "panicked" not in server.output(), server.output()[-3000:]


def get_500(server, path: str):
    """GET `path` over a raw socket; the response must be a complete, well-framed 500."""
    conn = raw(server)
    conn.send(request("GET", path))
    resp = conn.read_response()
    assert resp.status == 500, (resp.status_line, resp.headers, resp.body)
    assert resp.body == b"Internal Server Error"
    assert (resp.header("content-type") or "").startswith("text/plain"), resp.headers
    return resp


def assert_aborted(data: bytes, partial: bytes) -> bytes:
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data
    assert b"transfer-encoding: chunked" in head.lower(), data
    assert partial in body, data
    # the terminating zero-length chunk is never sent: the client sees a truncated response
    assert not body.endswith(b"0\r\n\r\n"), data
    assert b"\r\n0\r\n\r\n" not in body, data
    return body


# --- exceptions ------------------------------------------------------------------------------


def test_raise_before_start_response(server):
    r = httpx.get(f"{server.url}/raise-before", timeout=10)
    assert r.status_code == 500
    assert r.text == "Internal Server Error"
    assert r.headers["content-type"].startswith("text/plain")
    log = wait_for_log(
        server,
        "Exception in WSGI application",
        "Traceback (most recent call last)",
        "ValueError: wsgi-boom-before-start",
    )
    # the access log is off, so the request line can only come from the error report
    assert any("GET" in ln and "/raise-before" in ln for ln in log.splitlines()), log[-3000:]
    assert "wsgi_err.py" in log, "the traceback does not show the app's frame"
    assert_worker_alive(server)


@pytest.mark.parametrize(
    "path, message",
    [
        ("/raise-after-start", "ValueError: wsgi-boom-after-start-response"),
        ("/raise-first-yield", "ValueError: wsgi-boom-first-yield"),
    ],
)
def test_raise_before_anything_was_sent_is_a_500(server, path, message):
    resp = get_500(server, path)
    # the headers of the failed start_response are dropped
    assert resp.header("x-started") is None, resp.headers
    wait_for_log(
        server, "Exception in WSGI application", message, "Traceback (most recent call last)"
    )
    assert_worker_alive(server)


def test_raise_after_the_first_chunk_aborts_the_response(server):
    conn = raw(server)
    conn.send(request("GET", "/raise-midway"))
    data = conn.read_until_closed()
    assert_aborted(data, b"partial-body")
    wait_for_log(server, "Exception in WSGI application", "RuntimeError: wsgi-boom-midway")
    assert_worker_alive(server)


def test_an_error_in_close_after_a_whole_response_is_logged_as_such(server):
    """The client has its whole response; the log must not say the connection was aborted."""
    conn = raw(server)
    conn.send(request("GET", "/close-raises") + request("GET", "/ok"))
    assert conn.read_response().body == b"whole-body"
    assert conn.read_response().body == b"ok"
    wait_for_log(
        server,
        '"GET /close-raises HTTP/1.1" (after the response was complete)',
        "RuntimeError: wsgi-boom-in-close",
    )


@pytest.mark.parametrize(
    "path, iteration_error, close_error",
    [
        (
            "/midway-and-close-raise",
            "RuntimeError: wsgi-boom-midway-before-close",
            "RuntimeError: wsgi-boom-in-close-after-midway",
        ),
        (
            "/midway-and-getattr-raise",
            "RuntimeError: wsgi-boom-midway-before-getattr",
            "ValueError: wsgi-boom-getattr-close",
        ),
    ],
    ids=["close-raises", "getattr-raises"],
)
def test_an_error_in_close_after_an_error_midway_logs_both(
    server, path, iteration_error, close_error
):
    """Iteration raises, then close() raises too: the log shows both, close()'s with the
    iteration's as its context, as Python (and gunicorn, which calls close() in a `finally`)
    chains them. close()'s error was dropped. Likewise when looking close() up raises (a
    `__getattr__`): that error replaced the iteration's, which never reached the log."""
    conn = raw(server)
    conn.send(request("GET", path))
    assert_aborted(conn.read_until_closed(), b"partial-body")
    log = wait_for_log(
        server,
        iteration_error,
        "During handling of the above exception, another exception occurred",
        close_error,
    )
    assert log.index(iteration_error) < log.index(close_error), log[-3000:]
    assert_worker_alive(server)


def test_raise_after_the_first_chunk_via_httpx(server):
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"{server.url}/raise-midway", timeout=10)
    assert_worker_alive(server)


@pytest.mark.parametrize("path", ["/return-none", "/no-start-response", "/yield-str", "/write-str"])
def test_protocol_misuse_is_a_500(server, path):
    get_500(server, path)
    log = wait_for_log(server, path)
    assert f'Exception in WSGI application while handling "GET {path} HTTP/1.1"' in log, log
    assert_worker_alive(server)


def test_head_of_a_failing_app_has_no_body(server):
    conn = raw(server)
    conn.send(request("HEAD", "/raise-before") + request("GET", "/ok"))
    head = conn.read_response("HEAD")
    assert head.status == 500
    if (head.header("connection") or "").lower() == "close":
        assert conn.is_closed_by_peer(5)
        return
    # a body leaked after the HEAD response would break the parse of this one
    after = conn.read_response()
    assert after.status_line.startswith(b"HTTP/1.1 200"), after.status_line
    assert after.body == b"ok"


def test_wsgi_errors_written_before_a_crash_are_logged(server):
    r = httpx.get(f"{server.url}/stderr-line", timeout=10)
    assert r.status_code == 500
    wait_for_log(server, "wsgi-errors-before-raise", "LookupError: wsgi-boom-after-stderr")


def test_worker_survives_many_failures(server):
    paths = ["/raise-before", "/raise-midway", "/header?case=name-space", "/status?case=int"]
    for i in range(25):
        conn = raw(server)
        conn.send(request("GET", paths[i % len(paths)], headers=[("Connection", "close")]))
        conn.read_until_closed()
        conn.sock.close()
    assert_worker_alive(server)


# --- invalid headers and status --------------------------------------------------------------

# case -> the offending header's name, which the log must show (None: an empty name)
HEADER_CASES = {
    "name-space": "Bad Name",
    "name-colon": "X-Colon",
    "name-empty": None,
    "name-newline": "X-New",
    "value-crlf": "X-Evil",
    "value-lf": "X-Evil-Lf",
    "value-cr": "X-Evil-Cr",
    "value-nul": "X-Nul",
    "value-del": "X-Del",
    "value-beyond-latin-1": "X-Beyond",
    "name-bytes": "X-Bytes-Name",
    "value-bytes": "X-Bytes-Value",
    "value-int": "X-Int-Value",
}


@pytest.mark.parametrize("case", sorted(HEADER_CASES))
def test_invalid_response_header_is_a_500_never_sent(server, case):
    conn = raw(server)
    conn.send(request("GET", f"/header?case={case}"))
    head = conn.read_until(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 500"), head
    lowered = head.lower()
    for leaked in (
        b"injected",
        b"bad name",
        b"x-evil",
        b"x-nul",
        b"x-del",
        b"x-beyond",
        b"x-colon",
        b"x-new",
        b"x-bytes",
    ):
        assert leaked not in lowered, f"{leaked!r} reached the wire: {head!r}"
    assert b"x-int-value" not in lowered
    conn.buf[:0] = head
    resp = conn.read_response()
    assert resp.body == b"Internal Server Error"
    name = HEADER_CASES[case]
    wait_for_log(server, f"case={case}", *([name] if name else []))
    assert_worker_alive(server)


def test_a_latin1_response_header_value_goes_out_as_its_bytes(server):
    """PEP 3333: header values are native strings, each character one latin-1 byte."""
    conn = raw(server)
    conn.send(request("GET", "/latin1-header"))
    resp = conn.read_response()
    assert resp.status_line == b"HTTP/1.1 200 OK", resp.status_line
    # The raw client decodes each header byte as latin-1: one character per byte sent.
    assert resp.header("x-latin") == "caf\xe9 \xff", resp.headers
    assert resp.body == b"ok"


@pytest.mark.parametrize(
    "case",
    [
        "bytes",
        "int",
        "no-code",
        "short-code",
        "long-code",
        "letters",
        "empty",
        "crlf",
        "beyond-latin-1",
    ],
)
def test_invalid_status_is_a_500(server, case):
    conn = raw(server)
    conn.send(request("GET", f"/status?case={case}"))
    resp = conn.read_response()
    assert resp.status_line == b"HTTP/1.1 500 Internal Server Error", resp.status_line
    assert resp.body == b"Internal Server Error"
    assert all(n != "injected" for n, _ in resp.headers), resp.headers
    wait_for_log(server, f"/status?case={case}")
    assert_worker_alive(server)


# --- start_response called twice -------------------------------------------------------------


def test_second_start_response_with_exc_info_before_sending_replaces_the_status(server):
    conn = raw(server)
    conn.send(request("GET", "/exc-before"))
    resp = conn.read_response()
    assert resp.status_line == b"HTTP/1.1 500 Internal Server Error", resp.status_line
    assert resp.body == b"error page"
    assert resp.header("x-error-page") == "yes"
    assert resp.header("x-first") is None, resp.headers
    # A one-item list has a known length, so the server frames it with Content-Length.
    assert resp.header("content-length") == "10", resp.headers
    assert resp.header("content-type") == "text/plain"
    conn.send(request("GET", "/ok"))
    assert conn.read_response().body == b"ok"


def test_exc_info_after_an_empty_item_still_replaces_the_status(server):
    # An empty item of the iterable sends nothing, the head included (unlike write(b"")).
    conn = raw(server)
    conn.send(request("GET", "/exc-after-empty"))
    resp = conn.read_response()
    assert resp.status_line == b"HTTP/1.1 500 Internal Server Error", resp.status_line
    assert resp.body == b"error page"
    assert resp.header("x-error-page") == "yes"
    assert resp.header("x-first") is None, resp.headers
    conn.send(request("GET", "/ok"))
    assert conn.read_response().body == b"ok"


def test_exc_info_after_the_first_chunk_is_reraised_and_aborts(server, markers):
    conn = raw(server)
    conn.send(request("GET", "/exc-after?tag=after"))
    data = conn.read_until_closed()
    body = assert_aborted(data, b"partial-body")
    assert b"error page after headers" not in body
    assert wait_for_line(markers / "after.log", "reraised KeyError 'wsgi-exc-after-sent'")
    wait_for_log(server, "wsgi-exc-after-sent")
    assert_worker_alive(server)


def test_exc_info_after_write_is_reraised_and_aborts(server, markers):
    conn = raw(server)
    conn.send(request("GET", "/exc-after-write?tag=w"))
    data = conn.read_until_closed()
    body = assert_aborted(data, b"written-body")
    assert b"error page after write" not in body
    assert wait_for_line(markers / "w.log", "reraised KeyError 'wsgi-exc-after-write'")
    wait_for_log(server, "wsgi-exc-after-write")
    assert_worker_alive(server)


def test_exc_info_whose_indexing_writes_does_not_hang_the_worker(server, markers):
    # Indexing exc_info runs the app's code, which may call back into the server (here
    # write()): the server must not hold its own locks while it does.
    conn = raw(server)
    conn.send(request("GET", "/exc-after-write?tag=re&reenter=1"))
    data = conn.read_until_closed()
    body = assert_aborted(data, b"written-body")
    assert b"-reentered" in body
    assert wait_for_line(markers / "re.log", "reraised KeyError 'wsgi-exc-after-write'")
    assert_worker_alive(server)


def test_a_head_bodys_finaliser_that_calls_the_server_does_not_hang_the_worker(server, markers):
    # For HEAD the server drops the body unsent; dropping the app's (lent) bytes object can
    # run its __del__, which here reads wsgi.input. That must happen outside the server's locks.
    conn = raw(server)
    conn.send(request("HEAD", "/del-reads-input?tag=del"))
    resp = conn.read_response("HEAD")
    assert resp.status == 200, (resp.status_line, resp.headers)
    assert resp.header("content-length") == "2048"
    assert wait_for_line(markers / "del.log", "del read b''")
    assert_worker_alive(server)


def test_start_response_twice_without_exc_info_is_a_500(server, markers):
    resp = get_500(server, "/twice?tag=twice")
    assert resp.status == 500
    log = markers / "twice.log"
    text = wait_for(lambda: log.exists() and log.read_text(), message="the app to write twice.log")
    assert text.startswith("second call raised "), f"second start_response was accepted: {text!r}"
    wait_for_log(server, "/twice")
    assert_worker_alive(server)
