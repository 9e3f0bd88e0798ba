"""SIGTERM/SIGINT: stop accepting, finish in-flight requests (bounded), run lifespan shutdown."""

from __future__ import annotations

import signal
import socket
import threading

import httpx
import pytest
from apps.proto_raw import RawConn, request
from conftest import log_event, wait_for, wait_for_log

APP = "err_slow:app"


def events(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def wait_for_event(path, event: str) -> None:
    wait_for(lambda: event in events(path), message=f"{event!r} in {path.name}")


def refused(server) -> bool:
    """True when a new connection to the server is refused."""
    try:
        probe = socket.create_connection((server.host, server.port), timeout=1)
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        # Reached the backlog just as the listener closed; try again.
        return False
    probe.close()
    return False


def start_request(url: str, result: dict) -> threading.Thread:
    def run():
        try:
            response = httpx.get(url, timeout=40)
            result["status"] = response.status_code
            result["text"] = response.text
        except Exception as exc:  # inspected by the test
            result["error"] = repr(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["SIGTERM", "SIGINT", "SIGHUP"]
)
def test_signal_lets_in_flight_request_finish(run_rsasgi, tmp_path, sig):
    """SIGHUP too, to one process (a terminal that closes, a reload from habit): its default
    action would end the process mid-request, with no lifespan shutdown."""
    record = tmp_path / "events.txt"
    server = run_rsasgi(APP, env={"ERR_SLOW_FILE": str(record)})
    result: dict = {}
    thread = start_request(server.url + "/sleep?s=2", result)
    wait_for_event(record, "request-start")

    server.proc.send_signal(sig)
    # The in-flight request keeps the server running for 2 s; within that, the listener closes.
    wait_for(lambda: refused(server), timeout=1.5, message="new connections to be refused")
    assert server.proc.poll() is None, "exited while a request was in flight"

    thread.join(20)
    returncode = server.wait_exit()
    report = f"exit code {returncode}, events {events(record)}\n{server.output()}"
    assert result == {"status": 200, "text": "slept"}, report
    assert returncode == 0, report
    assert events(record) == ["startup", "request-start", "request-done", "shutdown"]
    if sig == signal.SIGHUP:
        assert (
            "Received SIGHUP: one process cannot reload, shutting down gracefully (send it "
            "again to force); run with --workers for a rolling restart on HUP"
        ) in server.output()


def test_with_workers_new_connections_are_refused_while_the_workers_drain(run_rsasgi, tmp_path):
    """The supervisor kept its copies of the listening sockets until it left: the kernel
    took new connections into a backlog no one accepted from, and reset each when the
    supervisor left (a 502 from nginx after the whole drain; half of a --reuse-port
    successor's connections lost)."""
    record = tmp_path / "events.txt"
    server = run_rsasgi(APP, "--workers", "2", env={"ERR_SLOW_FILE": str(record)})
    wait_for(lambda: "All 2 workers" in server.output(), message="both workers serving")
    result: dict = {}
    thread = start_request(server.url + "/sleep?s=3", result)
    wait_for_event(record, "request-start")
    server.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: refused(server), timeout=2, message="new connections to be refused")
    assert server.proc.poll() is None, "exited while a request was in flight"
    thread.join(20)
    assert result == {"status": 200, "text": "slept"}, server.output()
    assert server.wait_exit() == 0


@pytest.mark.parametrize("path", ["/", "/static/a.txt"], ids=["app", "static"])
def test_a_request_on_a_kept_alive_connection_during_the_drain_is_answered_with_close(
    run_rsasgi, tmp_path, path
):
    """A request that reaches an idle kept-alive connection once the drain has begun is
    served, and its response says `Connection: close` (RFC 9112 §9.6), the server's own (a
    static file) too. It used to go out keep-alive when it was made before the connection
    noticed the drain, and the connection then closed under the client's next request (a
    502 behind nginx, a lost POST at every --max-requests recycle)."""
    record = tmp_path / "events.txt"
    static = tmp_path / "static"
    static.mkdir()
    (static / "a.txt").write_text("static")
    server = run_rsasgi(
        APP, "--static-map", f"/static={static}", env={"ERR_SLOW_FILE": str(record)}
    )
    conn = RawConn(server.connect())
    conn.send(request("GET", path))
    assert conn.read_response().header("connection") is None
    # A slow request elsewhere keeps the drain going.
    result: dict = {}
    thread = start_request(server.url + "/sleep?s=3", result)
    started = 2 if path == "/" else 1
    wait_for(lambda: events(record).count("request-start") == started, message="the slow one")
    server.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: refused(server), timeout=2, message="new connections to be refused")
    conn.send(request("GET", path))
    response = conn.read_response()
    assert response.status == 200, server.output()
    assert response.header("connection") == "close", response.headers
    assert conn.is_closed_by_peer(timeout=5)
    thread.join(20)
    assert result.get("status") == 200, result
    assert server.wait_exit() == 0


def test_graceful_shutdown_timeout_bounds_the_wait(run_rsasgi, tmp_path):
    record = tmp_path / "events.txt"
    server = run_rsasgi(APP, "--timeout-graceful-shutdown", "1", env={"ERR_SLOW_FILE": str(record)})
    result: dict = {}
    thread = start_request(server.url + "/sleep?s=30", result)
    wait_for_event(record, "request-start")

    server.proc.send_signal(signal.SIGTERM)
    assert server.wait_exit(timeout=15) == 0
    # It waited for the in-flight request for the grace period, then gave up on it.
    output = server.output()
    assert "Connections still open after --timeout-graceful-shutdown 1s" in output
    # Its task, still asleep, is cancelled, and the request named (it was a debug line,
    # as if the app had been cancelled after its request had ended).
    assert "Cancelling 1 request task(s) still running after shutdown" in output
    assert 'request "GET /sleep?s=30 HTTP/1.1" was cancelled at shutdown' in output
    thread.join(15)
    assert result.get("text") != "slept", result
    assert "request-done" not in events(record)
    assert events(record)[-1] == "shutdown"


def test_a_background_task_after_the_response_runs_to_its_end(run_rsasgi, tmp_path):
    """Work a request's task does after its response (a Starlette or FastAPI
    BackgroundTask) is waited for within --timeout-graceful-shutdown, as uvicorn does: the
    wait ended with the response, and the task was cancelled 1 s later."""
    record = tmp_path / "events.txt"
    server = run_rsasgi("after_response:app", env={"AFTER_RESPONSE_FILE": str(record)})
    assert httpx.get(server.url + "/?s=2", timeout=10).text == "ok"
    wait_for_event(record, "background-start")

    server.proc.send_signal(signal.SIGTERM)
    assert server.wait_exit(timeout=15) == 0
    output = server.output()
    assert events(record) == ["background-start", "background-done", "shutdown"], output
    assert "Waiting for 1 request task(s) still running after their connection closed" in output


def test_a_wsgi_iterable_s_slow_close_runs_to_its_end(run_rsasgi, tmp_path):
    """A WSGI iterable's close() after a complete response is waited for within
    --timeout-graceful-shutdown, as gunicorn does: the thread got 5 s after the
    connection closed, then the process left without it. (It takes 6 s here: less would
    have fitted in those 5 s.)"""
    record = tmp_path / "events.txt"
    server = run_rsasgi("after_response:wsgi_app", env={"AFTER_RESPONSE_FILE": str(record)})
    assert httpx.get(server.url + "/?s=6", timeout=10).text == "ok"
    wait_for_event(record, "close-start")

    server.proc.send_signal(signal.SIGTERM)
    assert server.wait_exit(timeout=20) == 0
    output = server.output()
    assert events(record) == ["close-start", "close-done"], output
    assert "Waiting for 1 WSGI thread(s) still running after their connection closed" in output
    assert "WSGI threads still running after shutdown" not in output


def test_a_forced_stop_during_the_wait_for_wsgi_threads_shows_the_app_s_thread(
    run_rsasgi, tmp_path
):
    """A second SIGTERM while the stop waits for a WSGI iterable's close(): the log showed
    rsasgi's own thread, still joining the pool, as the one still running (and not the
    app's, stuck in close())."""
    record = tmp_path / "events.txt"
    server = run_rsasgi("after_response:wsgi_app", env={"AFTER_RESPONSE_FILE": str(record)})
    assert httpx.get(server.url + "/?s=30", timeout=10).text == "ok"
    wait_for_event(record, "close-start")

    server.proc.send_signal(signal.SIGTERM)
    wait_for_log(server, "Waiting for 1 WSGI thread(s)")
    server.proc.send_signal(signal.SIGTERM)
    assert server.wait_exit(timeout=10) == 0
    output = server.output()
    stuck = log_event(output, "WSGI threads still running after shutdown")
    assert "after_response.py" in stuck and "in close" in stuck, output
    assert "thread(s) still running after shutdown" not in output, output
    assert "concurrent/futures" not in output, output
    assert output.rstrip().endswith("rsasgi.error: Stopped"), output


def test_a_background_task_is_cancelled_when_the_grace_period_ends(run_rsasgi, tmp_path):
    record = tmp_path / "events.txt"
    server = run_rsasgi(
        "after_response:app",
        "--timeout-graceful-shutdown",
        "1",
        env={"AFTER_RESPONSE_FILE": str(record)},
    )
    assert httpx.get(server.url + "/?s=30", timeout=10).text == "ok"
    wait_for_event(record, "background-start")

    server.proc.send_signal(signal.SIGTERM)
    assert server.wait_exit(timeout=15) == 0
    output = server.output()
    assert "Cancelling 1 request task(s) still running after shutdown" in output
    assert events(record) == ["background-start", "background-cancelled", "shutdown"], output


def test_sigquit_as_the_first_signal_says_the_shutdown_is_forced(run_rsasgi, tmp_path):
    """No grace at all, and the log says why: not that --timeout-graceful-shutdown (30 s
    here) ran out after 0 s."""
    record = tmp_path / "events.txt"
    server = run_rsasgi(
        APP, "--timeout-graceful-shutdown", "30", env={"ERR_SLOW_FILE": str(record)}
    )
    result: dict = {}
    thread = start_request(server.url + "/sleep?s=30", result)
    wait_for_event(record, "request-start")

    server.proc.send_signal(signal.SIGQUIT)
    assert server.wait_exit(timeout=15) == 0
    output = server.output()
    assert (
        "Closing the connections still open: the shutdown is forced (SIGQUIT, or a second "
        "stop signal)"
    ) in output, output
    assert "after --timeout-graceful-shutdown" not in output, output
    thread.join(15)
    assert "request-done" not in events(record)


def test_sigquit_to_an_idle_wsgi_server_does_not_report_stuck_threads(run_rsasgi):
    """Its pool threads run no request: they leave as soon as they are told. Judged with no
    time at all, they were reported as "WSGI threads still running after shutdown", with no
    stack to show, and the interpreter exited without finalising (atexit skipped)."""
    server = run_rsasgi("wsgi_env:app")
    assert httpx.get(f"{server.url}/status?name=ok", timeout=10).status_code == 200
    server.proc.send_signal(signal.SIGQUIT)
    assert server.wait_exit(timeout=15) == 0
    output = server.output()
    assert "still running after shutdown" not in output, output
    assert "Stopped" in output, output


#: An app whose request, once cancelled, takes 4.5 s to clean up (it rolls a transaction
#: back, say). Its events go, one per line, to events.txt beside it.
SLOW_CLEANUP = """
import asyncio
from pathlib import Path


def record(event):
    with open(Path(__file__).parent / "events.txt", "a") as f:
        f.write(event + "\\n")


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                record("shutdown")
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    record("request-start")
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        await asyncio.sleep(4.5)
        record("cleaned-up")
        raise
"""


def test_a_supervisor_waits_for_the_worker_s_own_stop_steps_and_lifespan_shutdown(
    run_rsasgi, tmp_path
):
    """After the grace period a worker gives its request tasks 1 s, cancels them and gives
    their clean-up 5 s more, then runs the lifespan shutdown: the supervisor, which kills a
    worker still stopping past its deadline, must not cut those short (it killed the worker
    5 s after the grace period, so its lifespan shutdown never ran)."""
    (tmp_path / "slow_cleanup.py").write_text(SLOW_CLEANUP)
    record = tmp_path / "events.txt"
    server = run_rsasgi(
        "slow_cleanup:app",
        "--app-dir",
        str(tmp_path),
        "--workers",
        "1",
        "--timeout-graceful-shutdown",
        "0",
    )
    wait_for(lambda: "All 1 worker" in server.output(), message="the worker to serve")
    result: dict = {}
    start_request(server.url + "/", result)
    wait_for_event(record, "request-start")

    server.proc.send_signal(signal.SIGTERM)
    assert server.wait_exit(timeout=30) == 0
    output = server.output()
    assert "Cancelling 1 request task(s) still running after shutdown" in output
    assert "Killing worker" not in output
    assert events(record) == ["request-start", "cleaned-up", "shutdown"], output


STUCK_THREADS = "1 thread(s) still running after shutdown"


def test_threads_still_running_after_the_stop_get_what_is_left_of_it(run_rsasgi, tmp_path):
    """A sync view runs on a thread, which cancelling its request's task does not stop
    (Django's, through asgiref; Starlette's, through anyio). Python's exit waited for such
    a thread without bound, after "Stopped": the threads now get what the stop gives
    cancelled requests, then their stacks are logged and the process exits 0 all the same.
    An idle pool thread is not one of them."""
    record = tmp_path / "events.txt"
    server = run_rsasgi(
        "sync_views:app",
        "--timeout-graceful-shutdown",
        "0",
        env={"SYNC_VIEWS_FILE": str(record)},
    )
    assert httpx.get(server.url + "/pool", timeout=10).status_code == 200
    for seconds in ("4", "60"):
        start_request(server.url + f"/sleep?s={seconds}", {})
        wait_for_event(record, f"sleep-start {seconds}")

    server.proc.send_signal(signal.SIGTERM)
    assert server.wait_exit(timeout=20) == 0
    output = server.output()
    assert "Cancelling 2 request task(s) still running after shutdown" in output
    # The lifespan shutdown ran; the 4 s thread ended in time, the 60 s one was left.
    assert "shutdown" in events(record)
    assert "sleep-done 4" in events(record)
    assert "sleep-done 60" not in events(record)
    stacks = log_event(output, STUCK_THREADS)
    assert "in sleep_view\n    time.sleep(float(seconds))" in stacks, output
    assert output.rstrip().endswith("rsasgi.error: Stopped"), output


@pytest.mark.parametrize("twice", [False, True], ids=["SIGQUIT", "SIGTERM-twice"])
def test_a_forced_stop_does_not_wait_for_threads_still_running(run_rsasgi, tmp_path, twice):
    """SIGQUIT, or a second SIGTERM, said "Stopped" at once, and the process then stayed
    until the view's thread was done."""
    record = tmp_path / "events.txt"
    server = run_rsasgi("sync_views:app", env={"SYNC_VIEWS_FILE": str(record)})
    start_request(server.url + "/sleep?s=60", {})
    wait_for_event(record, "sleep-start 60")

    if twice:
        server.proc.send_signal(signal.SIGTERM)
        wait_for_log(server, "shutting down gracefully")
        server.proc.send_signal(signal.SIGTERM)
    else:
        server.proc.send_signal(signal.SIGQUIT)
    assert server.wait_exit(timeout=10) == 0
    output = server.output()
    assert "forcing the shutdown" in output
    assert "in sleep_view" in log_event(output, STUCK_THREADS), output
    assert events(record) == ["sleep-start 60"]
