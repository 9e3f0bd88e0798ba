"""--timeout-request (uWSGI's harakiri): a request that runs too long is answered 504, or its
connection cut when its response has started; an ASGI app's task is cancelled; a WSGI thread,
which cannot be stopped, gets its stack logged and its worker replaced gracefully.

App: tests/apps/timeout_app.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import log_event, read_response, wait_for, wait_for_log


def test_asgi_request_past_the_limit_gets_504_and_its_task_is_cancelled(run_rsasgi, markers):
    server = run_rsasgi(
        "timeout_app:app", "--timeout-request", "1", env={"TIMEOUT_MARKERS": str(markers)}
    )
    response = httpx.get(f"{server.url}/late", timeout=10)
    assert response.status_code == 504
    wait_for(lambda: (markers / "cancelled-late").exists(), message="the task cancelled")
    log = wait_for_log(server, '"GET /late HTTP/1.1" 504')
    assert "ran longer than --timeout-request 1s; sent 504 and the app's task cancelled" in log
    # The worker carries on.
    assert httpx.get(server.url, timeout=5).text.startswith("ok ")


def test_asgi_response_already_started_has_its_connection_cut(run_rsasgi, markers):
    server = run_rsasgi(
        "timeout_app:app", "--timeout-request", "1", env={"TIMEOUT_MARKERS": str(markers)}
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = read_response(sock)
    assert raw.startswith(b"HTTP/1.1 200 OK"), raw
    assert b"first part" in raw
    # Chunked, and cut before the terminating chunk: the client can tell it is incomplete.
    assert not raw.endswith(b"0\r\n\r\n"), raw
    wait_for(lambda: (markers / "cancelled-stream").exists(), message="the task cancelled")
    log = wait_for_log(server, "its response is cut and the app's task cancelled")
    assert '"GET /stream HTTP/1.1" 200' in log and "(incomplete)" in log


def test_a_request_timed_out_before_its_task_ran_gives_back_its_place(run_rsasgi, markers):
    """A request that arrives while the app blocks the event loop, and times out before
    the loop gets to it, is cancelled before its task has run a step: its place under
    --limit-concurrency must still be given back. Twice over, a leak would leave no place."""
    server = run_rsasgi(
        "timeout_app:app",
        "--timeout-request", "1", "--limit-concurrency", "2",
        env={"TIMEOUT_MARKERS": str(markers)},
    )  # fmt: skip
    started = markers / "started-block"
    for _ in range(2):
        started.unlink(missing_ok=True)
        with ThreadPoolExecutor(1) as pool:
            blocking = pool.submit(httpx.get, f"{server.url}/block", timeout=10)
            wait_for(started.exists, message="the app blocking the loop")
            # 503 here would mean no place was left: one leaked in the round before.
            assert httpx.get(server.url, timeout=10).status_code == 504
            assert blocking.result().status_code == 504
        # Once the loop is free again, a request is served.
        wait_for(
            lambda: httpx.get(server.url, timeout=10).status_code == 200,
            message="a request served after the loop was unblocked",
            server=server,
        )


def test_requests_within_the_limit_are_untouched(run_rsasgi):
    server = run_rsasgi("timeout_app:app", "--timeout-request", "5")
    for _ in range(20):
        assert httpx.get(server.url, timeout=5).status_code == 200
    assert "--timeout-request" not in server.output()


@pytest.mark.parametrize("workers", [None, "1"], ids=["alone", "supervised"])
def test_stuck_wsgi_thread_gets_504_its_stack_logged_and_with_workers_a_new_worker(
    run_rsasgi, workers
):
    args = ["timeout_app:wsgi", "--timeout-request", "1"]
    if workers:
        args += ["--workers", workers]
    server = run_rsasgi(*args)
    if workers:
        wait_for_log(server, "All 1 worker serving")
    first = httpx.get(server.url, timeout=5).text
    response = httpx.get(f"{server.url}/stuck", timeout=10)
    assert response.status_code == 504
    log = wait_for_log(
        server, "A WSGI thread cannot be stopped", "Python stacks of this worker's threads:"
    )
    # One event: the line logged next cannot land inside a frame.
    stack = log_event(log, "Python stacks of this worker's threads:")
    assert re.search(r'^  File ".*timeout_app\.py", line \d+ in stuck_in_a_loop$', stack, re.M)
    if workers:
        wait_for_log(server, "has a WSGI thread stuck past --timeout-request")
        old_pid = first.split()[1]
        wait_for(
            lambda: httpx.get(server.url, timeout=5).text.split()[1] != old_pid,
            message="a new worker answering",
            server=server,
        )
        # The old worker's stop says what it waits for: not a close() or a client.
        wait_for_log(
            server,
            "Waiting for 1 WSGI thread(s) still running after their connection closed (1 stuck "
            "in the app past --timeout-request, whose stacks are logged above)",
        )
    else:
        assert "run with --workers to have such a worker replaced" in log
        # The other threads serve on.
        assert httpx.get(server.url, timeout=5).status_code == 200


def stack_file_size(pid: int) -> int:
    """The size of the memory file process `pid`'s faulthandler writes its stacks to."""
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd).startswith("/memfd:rsasgi-stacks"):
                return fd.stat().st_size
        except FileNotFoundError:  # closed meanwhile
            continue
    raise AssertionError(f"pid {pid} has no stack file")


@pytest.mark.parametrize("workers", [None, "1"], ids=["alone", "supervised"])
def test_stacks_written_on_a_sigusr2_from_outside_are_not_in_the_next_dump(run_rsasgi, workers):
    """faulthandler answers a SIGUSR2 from anyone: the stacks it wrote into the stack file
    then came out, stale, inside the next dump asked for, each thread shown once per signal."""
    args = ["timeout_app:wsgi", "--timeout-request", "1"]
    if workers:
        args += ["--workers", workers]
    server = run_rsasgi(*args)
    pid = int(httpx.get(server.url, timeout=5).text.split()[1])
    # One at a time: two pending at once would be delivered as one.
    for _ in range(2):
        before = stack_file_size(pid)
        os.kill(pid, signal.SIGUSR2)
        wait_for(lambda size=before: stack_file_size(pid) > size, message="the stacks written")
    assert httpx.get(f"{server.url}/stuck", timeout=10).status_code == 504
    log = wait_for_log(server, "Python stacks of this worker's threads:")
    stack = log_event(log, "Python stacks of this worker's threads:")
    threads = re.findall(r"^(?:Current thread|Thread) (0x[0-9a-f]+)", stack, re.M)
    assert threads and len(threads) == len(set(threads)), stack


@pytest.mark.parametrize("app", ["timeout_app:app", "timeout_app:wsgi"], ids=["asgi", "wsgi"])
def test_a_slow_client_of_an_app_long_done_is_not_timed_by_the_request_timeout(run_rsasgi, app):
    """The app returned 16 MiB in one message at once, and the client takes them over 3 s:
    the request is the app's no more, so --timeout-request (1 s) leaves it to --timeout-send.
    Since the server holds the body's end until hyper has written the rest, the response was
    cut at 1 s, the app's finished task said cancelled, and for WSGI every thread's stack was
    dumped and, with workers, the worker replaced."""
    server = run_rsasgi(app, "--timeout-request", "1")
    with server.connect() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received = 0
        deadline = time.monotonic() + 3
        while data := sock.recv(64 * 1024):
            received += len(data)
            if time.monotonic() < deadline:
                time.sleep(0.02)
    assert received > 16 << 20, received
    assert "--timeout-request" not in server.output()


def test_a_wsgi_thread_held_by_a_client_that_does_not_read_is_not_called_stuck(run_rsasgi):
    """At --timeout-request the app's thread waits in the server for room in the response,
    which a client that reads nothing never makes: the cut frees it. It was reported stuck,
    with every thread's stack, and the worker replaced: a slow client recycled workers."""
    server = run_rsasgi("timeout_app:wsgi", "--timeout-request", "1", "--workers", "1")
    wait_for_log(server, "is serving")
    with server.connect() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        sock.sendall(b"GET /many HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for_log(server, "while its client took too little of the response", timeout=10)
    assert httpx.get(server.url, timeout=5).text.startswith("ok ")
    output = server.output()
    assert "cannot be stopped" not in output, output
    assert "Python stack" not in output, output
    assert "replaced gracefully" not in output, output


def test_a_wsgi_thread_held_by_a_client_then_stuck_in_its_clean_up_is_called_stuck(run_rsasgi):
    """The cut frees a thread that waited for its client only if the app then lets go: one
    whose iterable's close() blocks is stuck after all, and reported so."""
    server = run_rsasgi("timeout_app:wsgi", "--timeout-request", "1")
    with server.connect() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        sock.sendall(b"GET /many?close=4 HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for_log(server, "A WSGI thread cannot be stopped", timeout=10)
    assert "the thread freed" not in server.output(), server.output()


def test_stuck_wsgi_thread_stacks_are_one_json_record(run_rsasgi):
    """In --log-format json the stacks are a message like any other, not raw text between
    the records."""
    server = run_rsasgi("timeout_app:wsgi", "--timeout-request", "1", "--log-format", "json")
    assert httpx.get(f"{server.url}/stuck", timeout=10).status_code == 504
    wait_for_log(server, "Python stacks of this worker's threads:")
    records = [json.loads(line) for line in server.output().splitlines()]
    (stacks,) = [r for r in records if r["message"].startswith("Python stacks of this worker")]
    assert stacks["level"] == "ERROR"
    assert re.search(r'^  File ".*timeout_app\.py", line \d+ in stuck_in_a_loop$',
                     stacks["message"], re.M)  # fmt: skip


def test_requests_that_only_waited_for_a_wsgi_thread_get_504_without_stacks_and_never_run(
    run_rsasgi, markers
):
    """One thread, stuck past the limit, and three requests queued behind it: each gets its
    504 at the limit, but only the thread that ran its request past it is stuck. Every 504
    dumped every thread's stacks (four dumps, and under a supervisor four replacements asked
    for); the queued ones get one warning saying they waited and were not run, and a thread
    freed later skips them."""
    server = run_rsasgi(
        "timeout_app:wsgi", "--threads", "1", "--timeout-request", "1",
        env={"TIMEOUT_MARKERS": str(markers)},
    )  # fmt: skip
    with ThreadPoolExecutor(4) as pool:
        held = pool.submit(httpx.get, f"{server.url}/hold", timeout=10)
        wait_for(lambda: (markers / "started-hold").exists(), message="the thread held")
        queued = [pool.submit(httpx.get, f"{server.url}/?tag=q{n}", timeout=10) for n in range(3)]
        assert held.result().status_code == 504
        assert [response.result().status_code for response in queued] == [504] * 3
    log = wait_for_log(server, "Python stacks of this worker's threads:", "is not run")
    assert log.count("Python stacks of this worker's threads:") == 1, log
    assert log.count("A WSGI thread cannot be stopped") == 1, log
    warning = next(line for line in log.splitlines() if "is not run" in line)
    assert "WARN" in warning, warning
    assert "waited --timeout-request 1s for a WSGI thread (1 of --threads 1 busy)" in warning
    # Freed, the thread goes through the queue (they are ahead of this request, or swept out
    # already) without running them.
    (markers / "go").touch()
    assert httpx.get(server.url, timeout=10).status_code == 200
    assert not list(markers.glob("ran-q*"))


def test_a_wsgi_thread_that_took_its_request_late_is_judged_from_then(run_rsasgi):
    """One thread and two 1.4 s views at once, under --timeout-request 2: the second waits
    1.4 s for the thread, so its client gets 504 at 2 s while the view runs, but the thread
    runs it for 1.4 s only. It was taken for a stuck thread: stacks logged and the worker
    replaced."""
    server = run_rsasgi(
        "timeout_app:wsgi", "--workers", "1", "--threads", "1", "--timeout-request", "2"
    )
    wait_for_log(server, "All 1 worker serving")
    pid = httpx.get(server.url, timeout=5).text.split()[1]
    with ThreadPoolExecutor(2) as pool:
        naps = [pool.submit(httpx.get, f"{server.url}/nap?s=1.4", timeout=10) for _ in range(2)]
        assert sorted(nap.result().status_code for nap in naps) == [200, 504]
    # Logged once the thread's own deadline has passed with the view long returned.
    log = wait_for_log(server, '504 for "GET /nap?s=1.4 HTTP/1.1": it waited')
    assert "no thread is stuck" in log
    assert "Python stacks" not in log
    assert "stuck past --timeout-request" not in log
    assert httpx.get(server.url, timeout=5).text.split()[1] == pid


def test_a_streamed_response_cut_after_waiting_for_its_thread_is_not_called_a_504(run_rsasgi):
    """A response that waited for the thread, then streamed past the limit from its
    arrival, is cut where it stands: its line says so, not "504"."""
    server = run_rsasgi("timeout_app:wsgi", "--threads", "1", "--timeout-request", "2")
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(httpx.get, f"{server.url}/nap?s=0.8", timeout=10)
        time.sleep(0.2)
        trickle = pool.submit(httpx.get, f"{server.url}/trickle", timeout=10)
        assert first.result().status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            trickle.result()
    log = wait_for_log(server, '"GET /trickle HTTP/1.1" had its response cut: it waited')
    assert '504 for "GET /trickle' not in log, log


def test_a_wsgi_thread_stuck_in_a_request_it_took_late_is_judged_at_its_own_deadline(
    run_rsasgi, markers
):
    """A request that waited about 1.6 s for the thread, and then never returns: its client
    gets 504 at the limit from its arrival, its thread is found stuck at the limit from when
    it took it, and the line says how long it waited first."""
    server = run_rsasgi(
        "timeout_app:wsgi", "--threads", "1", "--timeout-request", "3",
        env={"TIMEOUT_MARKERS": str(markers)},
    )  # fmt: skip
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(httpx.get, f"{server.url}/nap?s=1.6", timeout=10)
        wait_for(lambda: (markers / "started-nap").exists(), message="the thread taken")
        held = pool.submit(httpx.get, f"{server.url}/hold", timeout=10)
        assert first.result().status_code == 200
        assert held.result().status_code == 504
        log = wait_for_log(server, "Python stacks of this worker's threads:")
        (markers / "go").touch()
    line = next(line for line in log.splitlines() if '"GET /hold HTTP/1.1" ran longer' in line)
    # How long it waited depends on when the client's request arrived, on a loaded machine.
    assert re.search(r"on its WSGI thread, which took it after it waited \d", line), line
    assert "it was sent 504 then" in line, line
