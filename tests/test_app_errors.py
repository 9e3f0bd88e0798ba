"""An app that fails, in every way the ASGI spec allows, never takes the worker down."""

from __future__ import annotations

import threading

import httpx
import pytest
from apps.proto_raw import recv_until_closed
from conftest import wait_for, wait_for_log

APP = "err_app:app"


def assert_worker_alive(server) -> None:
    assert server.proc.poll() is None, server.output()
    response = httpx.get(server.url + "/ok", timeout=10)
    assert response.status_code == 200
    assert response.text == "ok"


def test_raise_before_start_gives_500_and_logs_traceback(run_rsasgi):
    server = run_rsasgi(APP, "--no-access-log")
    response = httpx.get(server.url + "/raise-before", timeout=10)
    assert response.status_code == 500
    assert response.text == "Internal Server Error"
    assert response.headers["content-type"].startswith("text/plain")
    log = wait_for_log(server, "ValueError: err-boom-before-start")
    assert "Exception in ASGI application" in log
    # Access log is off, so the request line can only come from the error report.
    assert any("GET" in line and "/raise-before" in line for line in log.splitlines()), log
    assert "Traceback (most recent call last)" in log
    assert "ValueError: err-boom-before-start" in log
    assert_worker_alive(server)


def test_a_quote_in_the_path_cannot_end_the_error_lines_quoted_field(run_rsasgi):
    """The request line in a server-log line is escaped as in the access log: a `"` in the
    path (which HTTP parsers take) is written \\x22, so it cannot close the quoted field."""
    server = run_rsasgi(APP, "--no-access-log")
    with server.connect() as sock:
        sock.sendall(
            b'GET /raise-quoted"x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n'
        )
        data = recv_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 500"), data
    log = wait_for_log(server, "ValueError: err-boom-quoted-path")
    assert 'while handling "GET /raise-quoted\\x22x HTTP/1.1" (sent 500)' in log, log
    assert_worker_alive(server)


def test_raise_after_start_aborts_chunked_response(run_rsasgi):
    server = run_rsasgi(APP)
    with server.connect() as sock:
        sock.sendall(b"GET /raise-after HTTP/1.1\r\nHost: localhost\r\n\r\n")
        data = recv_until_closed(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data
    assert b"transfer-encoding: chunked" in head.lower(), data
    assert b"partial-body" in body, data
    # The terminating zero-length chunk must never be sent: the client has to see
    # a truncated response, not a complete one.
    assert not body.endswith(b"0\r\n\r\n"), data
    assert b"\r\n0\r\n\r\n" not in body, data
    log = wait_for_log(server, "RuntimeError: err-boom-after-start")
    assert "Exception in ASGI application" in log
    assert "RuntimeError: err-boom-after-start" in log
    assert_worker_alive(server)


def test_sys_exit_in_a_view_is_an_error_of_that_request_only(run_rsasgi):
    """SystemExit from a view gives a 500 and a traceback, as any exception (uvicorn does the
    same): the request beside it is answered, and the worker serves on. It used to end the
    worker, dropping the other request."""
    server = run_rsasgi(APP)
    slow: dict = {}
    thread = threading.Thread(
        target=lambda: slow.update(r=httpx.get(server.url + "/slow", timeout=10)), daemon=True
    )
    thread.start()
    wait_for(lambda: "/slow" in httpx.get(server.url + "/observed", timeout=10).json())
    response = httpx.get(server.url + "/exit", timeout=10)
    assert response.status_code == 500
    thread.join(10)
    assert slow["r"].text == "slow-done"
    log = wait_for_log(server, "SystemExit: err-exit-in-a-view")
    assert 'Exception in ASGI application while handling "GET /exit HTTP/1.1" (sent 500)' in log
    assert_worker_alive(server)


def test_a_cancelled_error_the_app_raises_is_its_error(run_rsasgi):
    """A CancelledError out of a view when nothing cancelled it is the app's error, with its
    traceback, as uvicorn reports it: it was logged as a request "cancelled at shutdown"."""
    server = run_rsasgi(APP)
    response = httpx.get(server.url + "/cancel", timeout=10)
    assert response.status_code == 500
    log = wait_for_log(server, "CancelledError: err-cancelled-by-the-app")
    assert 'Exception in ASGI application while handling "GET /cancel HTTP/1.1" (sent 500)' in log
    assert "shutdown" not in log
    assert_worker_alive(server)


def test_an_oserror_after_a_complete_response_is_logged(run_rsasgi):
    """A background task's FileNotFoundError once the response is complete is the app's
    error, not a client that left: logged with its traceback (it was a debug line)."""
    server = run_rsasgi(APP)
    assert httpx.get(server.url + "/oserror-after-response", timeout=10).text == "done"
    log = wait_for_log(server, "FileNotFoundError")
    assert "(response was already complete)" in log
    assert "err-background-file" in log
    assert_worker_alive(server)


def test_an_app_that_sent_its_whole_length_ended_no_connection(run_rsasgi):
    """All of its Content-Length sent, the app returned (or raised) without its last message:
    the response is complete by its length and the connection carries the next request, but
    the log said "connection aborted". It logs nothing for the return, and "response was
    already complete" for the error."""
    server = run_rsasgi(APP)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for path in ("/whole-length-then-return", "/whole-length-then-raise"):
            response = client.get(path)
            assert (response.status_code, response.text) == (200, "hello"), path
        assert client.get("/oserror-after-response").text == "done"
    log = wait_for_log(server, "err-after-the-whole-length")
    assert (
        'Exception in ASGI application while handling "GET /whole-length-then-raise HTTP/1.1" '
        "(response was already complete)" in log
    ), log
    assert "connection aborted" not in log, log
    assert "returned without completing the response" not in log, log
    assert_worker_alive(server)


def test_a_body_after_a_complete_response_raises_runtime_error_either_way(run_rsasgi):
    """Whether or not the reactor has taken the last body yet, one more is a RuntimeError:
    the second used to be a ClientDisconnected, as if the client had left."""
    server = run_rsasgi(APP)
    assert httpx.get(server.url + "/send-after-response", timeout=10).text == "done"

    def errors() -> list | None:
        return httpx.get(server.url + "/observed", timeout=10).json().get("/send-after-response")

    wait_for(lambda: errors() is not None and len(errors()) == 2)
    for error in errors():
        assert error.startswith("RuntimeError: unexpected ASGI message 'http.response.body'"), (
            errors()
        )


def test_return_without_response_gives_500(run_rsasgi):
    server = run_rsasgi(APP)
    response = httpx.get(server.url + "/no-response", timeout=10)
    assert response.status_code == 500
    assert response.text == "Internal Server Error"
    assert_worker_alive(server)


# path -> (the exception send() raises, words its message must contain, case-insensitively):
# TypeError for a value of the wrong type, ValueError for a wrong value of the right type,
# RuntimeError for a message out of order.
INVALID_CASES = {
    "/bad-type": ("RuntimeError", ["http.response.bogus"]),
    "/status-str": ("TypeError", ["status"]),
    "/status-1000": ("ValueError", ["status"]),
    "/headers-str": ("TypeError", ["header"]),
    "/header-crlf": ("ValueError", ["header"]),
    "/body-before-start": ("RuntimeError", ["start"]),
}


@pytest.mark.parametrize("path", list(INVALID_CASES))
def test_invalid_message_raises_in_send_gives_500_and_is_logged(run_rsasgi, path):
    server = run_rsasgi(APP)
    response = httpx.get(server.url + path, timeout=10)
    assert response.status_code == 500
    assert response.text == "Internal Server Error"
    assert "x-injected" not in response.headers

    observed = httpx.get(server.url + "/observed", timeout=10).json()
    error = observed.get(path)
    assert error is not None and error != "NO-EXCEPTION", f"send() did not raise: {observed}"
    exc_type, _, message = error.partition(": ")
    expected_type, words = INVALID_CASES[path]
    assert exc_type == expected_type, error
    for word in words:
        assert word in message.lower(), error

    log = wait_for_log(server, error)
    assert "Exception in ASGI application" in log
    assert_worker_alive(server)


def test_errors_do_not_disturb_a_concurrent_request(run_rsasgi):
    server = run_rsasgi(APP)
    result: dict = {}

    def slow_request():
        try:
            response = httpx.get(server.url + "/slow", timeout=20)
            result["status"] = response.status_code
            result["text"] = response.text
        except Exception as exc:  # reported by the assertion below
            result["error"] = repr(exc)

    thread = threading.Thread(target=slow_request)
    thread.start()
    wait_for(
        lambda: "/slow" in httpx.get(server.url + "/observed", timeout=10).json(),
        message="the app to start /slow",
        server=server,
    )
    with httpx.Client(timeout=10) as client:
        for path in ["/raise-before", "/no-response", *INVALID_CASES]:
            assert client.get(server.url + path).status_code == 500, path
    with server.connect() as sock:
        sock.sendall(b"GET /raise-after HTTP/1.1\r\nHost: localhost\r\n\r\n")
        recv_until_closed(sock)
    thread.join(20)
    assert result == {"status": 200, "text": "slow-done"}
    assert_worker_alive(server)


@pytest.mark.parametrize("app", ["err_cycle:app", "err_cycle:wsgi"], ids=["asgi", "wsgi"])
def test_a_failed_request_held_in_a_reference_cycle_gives_back_its_place(run_rsasgi, app):
    """The 500 ends the request for --limit-concurrency once the app is done, even though
    the app's objects (and so the request's) live on in a cycle the collector never frees."""
    server = run_rsasgi(app, "--limit-concurrency", "1")

    def status_once_free(client, path):
        # A request counts until its app has returned, which may be a moment after its client
        # had the last byte (a WSGI app's close() comes after it): the next request on the
        # connection waits 100 ms at most for it, and on a loaded machine may still find the
        # place taken, and get 503. A place never given back stays taken.
        status = client.get(path).status_code
        return None if status == 503 else status

    with httpx.Client(base_url=server.url, timeout=10) as client:
        for _ in range(3):
            assert wait_for(lambda: status_once_free(client, "/raise"), server=server) == 500
            assert wait_for(lambda: status_once_free(client, "/"), server=server) == 200
