"""`--metrics-bind`: Prometheus metrics at /metrics and the probes /healthz and /readyz,
seen from outside: real multi-worker servers, httpx, websockets and HTTP/2 clients, and
`/metrics` read with prometheus_client's own parser.

App: tests/apps/metrics_app.py.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import resource
import signal
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import websockets
from apps.proto_raw import recv_until_closed
from conftest import Server, cli, free_port, resets_on_close, wait_for, wait_for_log
from prometheus_client.parser import text_string_to_metric_families

APP = "metrics_app:app"
STARTED = re.compile(r"Started worker (\d+) \(pid (\d+)\)")


# Starting servers and reading /metrics.


class Metrics:
    """One scrape of /metrics, parsed."""

    def __init__(self, text: str):
        self.families = {family.name: family for family in text_string_to_metric_families(text)}

    def value(self, sample_name: str, **labels: str) -> float:
        """The one sample named `sample_name` whose labels include `labels` (0 if none)."""
        family_name = re.sub(r"_(total|bucket|count|sum)$", "", sample_name)
        family = self.families.get(family_name) or self.families[sample_name]
        values = [
            sample.value
            for sample in family.samples
            if sample.name == sample_name
            and all(sample.labels.get(key) == value for key, value in labels.items())
        ]
        assert len(values) <= 1, f"{sample_name} {labels} matches {len(values)} samples"
        return values[0] if values else 0.0

    def total(self, sample_name: str, **labels: str) -> float:
        """The sum of the samples named `sample_name` whose labels include `labels`."""
        family_name = re.sub(r"_(total|bucket|count|sum)$", "", sample_name)
        family = self.families.get(family_name) or self.families[sample_name]
        return sum(
            sample.value
            for sample in family.samples
            if sample.name == sample_name
            and all(sample.labels.get(key) == value for key, value in labels.items())
        )

    def kind(self, family_name: str) -> str:
        return self.families[family_name].type


def start(run_rsasgi, markers, *args: str, workers: int | None = None) -> tuple[Server, str]:
    """Starts the metrics app with --metrics-bind on a free port; returns the server and
    the base URL of its metrics listener, once every worker serves."""
    metrics_port = free_port()
    argv = [APP, "--metrics-bind", f"127.0.0.1:{metrics_port}", *args]
    if workers is not None:
        argv += ["--workers", str(workers)]
    server = run_rsasgi(*argv, env={"METRICS_MARKERS": str(markers)})
    if workers is not None:
        wait_for_log(server, f"All {workers} worker")
    return server, f"http://127.0.0.1:{metrics_port}"


def scrape(base: str) -> Metrics:
    response = httpx.get(f"{base}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return Metrics(response.text)


def probe(base: str, path: str) -> int:
    return httpx.get(f"{base}{path}", timeout=10).status_code


def wait_for_count(base: str, sample: str, expected: float, **labels: str) -> Metrics:
    """Scrapes until `sample` (summed over `labels`) reaches `expected`; returns that scrape.
    A request is counted when its response body is done, a moment after the client has it."""
    last: list[float] = []

    def reached():
        metrics = scrape(base)
        last[:] = [metrics.total(sample, **labels)]
        return metrics if last[0] == expected else None

    return wait_for(reached, message=f"{sample}{labels} == {expected} (last seen: {last})")


def send_requests(server: Server, plan: dict[tuple[str, str], int]) -> None:
    """Sends each (method, path) as many times as `plan` says, on new connections so that
    every worker gets some."""
    for (method, path), count in plan.items():
        for _ in range(count):
            with httpx.Client(base_url=server.url, timeout=10) as client:
                client.request(method, path)


PLAN = {
    ("GET", "/"): 7,
    ("POST", "/"): 3,
    ("GET", "/missing"): 2,
    ("DELETE", "/error"): 1,
    ("PROPFIND", "/"): 1,
}


def assert_counts_match_plan(metrics: Metrics, times: int = 1) -> None:
    assert metrics.value("rsasgi_requests_total", method="GET", status="2xx") == 7 * times
    assert metrics.value("rsasgi_requests_total", method="POST", status="2xx") == 3 * times
    assert metrics.value("rsasgi_requests_total", method="GET", status="4xx") == 2 * times
    assert metrics.value("rsasgi_requests_total", method="DELETE", status="5xx") == 1 * times
    assert metrics.value("rsasgi_requests_total", method="other", status="2xx") == 1 * times


# Counts.


def test_requests_are_counted_by_method_and_status_over_all_workers(run_rsasgi, markers):
    server, base = start(run_rsasgi, markers, workers=2)
    send_requests(server, PLAN)
    metrics = wait_for_count(base, "rsasgi_requests_total", sum(PLAN.values()))
    assert_counts_match_plan(metrics)
    assert metrics.kind("rsasgi_requests") == "counter"
    assert metrics.kind("rsasgi_request_duration_seconds") == "histogram"
    assert metrics.value("rsasgi_request_duration_seconds_count") == sum(PLAN.values())
    assert metrics.value("rsasgi_request_duration_seconds_bucket", le="+Inf") == sum(PLAN.values())
    assert metrics.value("rsasgi_request_duration_seconds_sum") > 0
    assert metrics.value("rsasgi_workers", state="serving") == 2
    # Each request line and response crossed the wire.
    assert metrics.value("rsasgi_received_bytes_total") >= len(b"GET / HTTP/1.1\r\n") * 14
    assert metrics.value("rsasgi_sent_bytes_total") >= len(b"HTTP/1.1 200 OK\r\n") * 14


def test_request_series_are_shown_at_zero_before_the_first_request(run_rsasgi, markers):
    """rate() and increase() take a series' first sample for its start: a series that
    appeared with the first 5xx would show no increase, and an alert on it would not fire."""
    _, base = start(run_rsasgi, markers)
    family = scrape(base).families["rsasgi_requests"]
    shown = {(sample.labels["method"], sample.labels["status"]) for sample in family.samples}
    methods = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other")
    statuses = ("1xx", "2xx", "3xx", "4xx", "5xx", "none")
    assert shown == {(method, status) for method in methods for status in statuses}
    assert all(sample.value == 0 for sample in family.samples)


def test_heads_hyper_refuses_count_as_other_4xx(run_rsasgi, markers):
    server, base = start(run_rsasgi, markers)
    for request in (
        b"THIS IS NOT HTTP\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
    ):
        with server.connect() as sock:
            try:
                sock.sendall(request)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answers and closes once the head is over its limit
            assert recv_until_closed(sock).startswith(b"HTTP/1.1 4")
    metrics = wait_for_count(base, "rsasgi_requests_total", 2)
    assert metrics.value("rsasgi_requests_total", method="other", status="4xx") == 2
    assert metrics.value("rsasgi_request_duration_seconds_count") == 0


def test_every_worker_shows_with_its_number_and_pid(run_rsasgi, markers):
    server, base = start(run_rsasgi, markers, workers=2)
    pids = {pid for _, pid in STARTED.findall(server.output())}
    metrics = scrape(base)
    family = metrics.families["rsasgi_worker_resident_memory_bytes"]
    assert {sample.labels["pid"] for sample in family.samples} == pids
    assert {sample.labels["worker"] for sample in family.samples} == {"1", "2"}
    assert all(sample.value > 1_000_000 for sample in family.samples)
    in_flight = metrics.families["rsasgi_requests_in_flight"]
    assert {sample.labels["pid"] for sample in in_flight.samples} == pids
    assert metrics.value("process_resident_memory_bytes") > 0
    assert metrics.value("process_open_fds") > 0
    assert metrics.value("process_start_time_seconds") > 1_600_000_000
    assert "process_cpu_seconds" in metrics.families


def test_counts_survive_workers_replaced_at_max_requests(run_rsasgi, markers):
    server, base = start(run_rsasgi, markers, "--limit-max-requests", "4", workers=2)
    send_requests(server, PLAN)
    wait_for(
        # Connections go to whichever worker accepts first: one of them at least has
        # served 4 of the 14 requests.
        lambda: scrape(base).value("rsasgi_worker_restarts_total", reason="max_requests") >= 1,
        message="a worker replaced at --limit-max-requests",
    )
    send_requests(server, PLAN)
    metrics = wait_for_count(base, "rsasgi_requests_total", 2 * sum(PLAN.values()))
    assert_counts_match_plan(metrics, times=2)
    assert metrics.value("rsasgi_request_duration_seconds_count") == 2 * sum(PLAN.values())
    assert metrics.value("rsasgi_worker_restarts_total", reason="crash") == 0


def test_a_killed_worker_is_a_crash_restart_and_its_counts_stay(run_rsasgi, markers):
    server, base = start(run_rsasgi, markers, workers=2)
    send_requests(server, PLAN)
    wait_for_count(base, "rsasgi_requests_total", sum(PLAN.values()))
    victim = int(STARTED.findall(server.output())[0][1])
    os.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: scrape(base).value("rsasgi_worker_restarts_total", reason="crash") == 1,
        message="a crash restart counted",
    )
    wait_for(
        lambda: scrape(base).value("rsasgi_workers", state="serving") == 2,
        message="the replacement serves",
    )
    metrics = scrape(base)
    assert_counts_match_plan(metrics)
    assert str(victim) not in {
        sample.labels["pid"]
        for sample in metrics.families["rsasgi_worker_resident_memory_bytes"].samples
    }


def test_a_hung_worker_is_a_health_check_restart(run_rsasgi, markers):
    server, base = start(run_rsasgi, markers, "--timeout-worker-healthcheck", "1", workers=1)

    def block():
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{server.url}/block", timeout=30)

    blocked = threading.Thread(target=block)
    blocked.start()
    try:
        wait_for(
            lambda: scrape(base).value("rsasgi_worker_restarts_total", reason="health_check") == 1,
            message="a health check restart counted",
        )
    finally:
        blocked.join()
    assert scrape(base).value("rsasgi_worker_restarts_total", reason="crash") == 0


def test_sighup_counts_a_reload_restart_per_worker(run_rsasgi, markers):
    server, base = start(run_rsasgi, markers, workers=2)
    server.proc.send_signal(signal.SIGHUP)
    wait_for_log(server, "Reload complete")
    metrics = scrape(base)
    assert metrics.value("rsasgi_worker_restarts_total", reason="reload") == 2
    assert metrics.value("rsasgi_workers", state="serving") == 2


def start_reloadable(run_rsasgi, tmp_path, *args: str):
    """One worker serving an app from a module the test may break before a HUP; returns
    (server, the module, the metrics port)."""
    module = tmp_path / "metrics_reloaded.py"
    module.write_text(
        "async def app(scope, receive, send):\n"
        "    if scope['type'] != 'http':\n"
        "        return\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': b'ok'})\n"
    )
    metrics_port = free_port()
    server = run_rsasgi(
        "metrics_reloaded:app",
        "--app-dir",
        str(tmp_path),
        "--metrics-bind",
        f"127.0.0.1:{metrics_port}",
        "--workers",
        "1",
        *args,
        env={"PYTHONDONTWRITEBYTECODE": "1"},
    )
    wait_for_log(server, "All 1 worker")
    return server, module, metrics_port


def test_a_failed_reload_counts_no_restart(run_rsasgi, tmp_path):
    """The new worker of a reload fails to import: the old one keeps serving, and nothing was
    restarted."""
    server, module, metrics_port = start_reloadable(run_rsasgi, tmp_path)
    module.write_text("raise RuntimeError('broken deploy')\n")
    server.proc.send_signal(signal.SIGHUP)
    wait_for_log(server, "Reload failed")
    metrics = scrape(f"http://127.0.0.1:{metrics_port}")
    assert metrics.value("rsasgi_worker_restarts_total", reason="reload") == 0


def test_a_reload_whose_new_worker_hangs_booting_counts_no_restart(run_rsasgi, tmp_path):
    """The new worker of a reload never ends its import and is killed at --timeout-worker-boot:
    the old one keeps serving, and no worker was replaced (by the health check or otherwise)."""
    server, module, metrics_port = start_reloadable(
        run_rsasgi, tmp_path, "--timeout-worker-boot", "1"
    )
    module.write_text("import time\n\ntime.sleep(600)\n")
    server.proc.send_signal(signal.SIGHUP)
    wait_for_log(server, "Reload failed")
    metrics = scrape(f"http://127.0.0.1:{metrics_port}")
    assert "is not serving" in server.output()
    for reason in ("health_check", "reload", "crash"):
        assert metrics.value("rsasgi_worker_restarts_total", reason=reason) == 0, reason


# Gauges.


def blocked_loop(server: Server, markers) -> threading.Thread:
    """Starts a request to /block, which blocks the app's event loop until the test creates
    the marker `release`; returns the thread waiting for its answer."""
    blocked = threading.Thread(target=lambda: httpx.get(f"{server.url}/block", timeout=60))
    blocked.start()
    return blocked


def test_the_lag_shows_a_loop_blocked_now(run_rsasgi, markers):
    """The heartbeat measures its lag once the loop runs again, too late for a loop blocked
    until the health check kills it: a scrape shows how long the loop has not run."""
    server, base = start(run_rsasgi, markers, "--timeout-worker-healthcheck", "60", workers=1)
    (pid,) = {pid for _, pid in STARTED.findall(server.output())}
    blocked = blocked_loop(server, markers)
    try:
        wait_for(
            lambda: scrape(base).value("rsasgi_event_loop_lag_seconds", pid=pid) >= 1.5,
            message="a lag of 1.5 s shown while the loop is blocked",
        )
    finally:
        (markers / "release").touch()
        blocked.join()
    assert scrape(base).value("rsasgi_worker_restarts_total", reason="health_check") == 0


def test_requests_in_flight_show_while_the_app_works(run_rsasgi, markers):
    server, base = start(run_rsasgi, markers, workers=2)
    held = threading.Thread(target=lambda: httpx.get(f"{server.url}/hold", timeout=30))
    held.start()
    try:
        wait_for(lambda: (markers / "held").exists(), message="the request reached the app")
        wait_for(
            lambda: scrape(base).total("rsasgi_requests_in_flight") == 1,
            message="one request in flight",
        )
    finally:
        (markers / "release").touch()
        held.join()
    wait_for(
        lambda: scrape(base).total("rsasgi_requests_in_flight") == 0,
        message="no request in flight",
    )


def test_open_websocket_and_h2_connections_are_shown_by_protocol(run_rsasgi, markers):
    server, base = start(run_rsasgi, markers, workers=2)

    def connections(protocol: str) -> float:
        return scrape(base).value("rsasgi_connections_open", protocol=protocol)

    async def with_websocket():
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
            await asyncio.to_thread(
                wait_for, lambda: connections("websocket") == 1, message="one websocket open"
            )
            assert connections("http/1.1") == 0

    asyncio.run(with_websocket())
    wait_for(lambda: connections("websocket") == 0, message="the websocket closed")

    with httpx.Client(base_url=server.url, http1=False, http2=True, timeout=10) as client:
        assert client.get("/").http_version == "HTTP/2"
        wait_for(lambda: connections("h2") == 1, message="one h2 connection open")
    wait_for(lambda: connections("h2") == 0, message="the h2 connection closed")

    with httpx.Client(base_url=server.url, timeout=10) as client:
        client.get("/")
        wait_for(lambda: connections("http/1.1") == 1, message="one HTTP/1.1 connection open")
    wait_for(lambda: connections("http/1.1") == 0, message="the HTTP/1.1 connection closed")
    metrics = scrape(base)
    assert metrics.value("rsasgi_requests_total", method="GET", status="1xx") == 1
    assert metrics.value("rsasgi_requests_total", method="GET", status="2xx") == 2


def test_busy_wsgi_threads_are_shown_per_worker(run_rsasgi, markers):
    metrics_port = free_port()
    base = f"http://127.0.0.1:{metrics_port}"
    server = run_rsasgi(
        "metrics_wsgi:app",
        "--workers",
        "2",
        "--threads",
        "4",
        "--metrics-bind",
        f"127.0.0.1:{metrics_port}",
        env={"METRICS_MARKERS": str(markers)},
    )
    wait_for_log(server, "All 2 worker")
    held = threading.Thread(target=lambda: httpx.get(f"{server.url}/hold", timeout=30))
    held.start()
    try:
        wait_for(lambda: (markers / "held").exists(), message="the request reached the app")
        wait_for(
            lambda: scrape(base).total("rsasgi_wsgi_threads_busy") == 1,
            message="one WSGI thread busy",
        )
    finally:
        (markers / "release").touch()
        held.join()
    metrics = wait_for_count(base, "rsasgi_requests_total", 1)
    assert metrics.total("rsasgi_wsgi_threads_busy") == 0
    assert metrics.value("rsasgi_requests_total", method="GET", status="2xx") == 1


def test_requests_waiting_for_a_wsgi_thread_are_shown_and_leave_with_their_clients(
    run_rsasgi, markers
):
    """The one thread held: two requests wait for it, and a third whose client gave up
    does not count (the queue is looked at once a second, so the gauge follows within it)."""
    metrics_port = free_port()
    base = f"http://127.0.0.1:{metrics_port}"
    server = run_rsasgi(
        "metrics_wsgi:app", "--threads", "1", "--metrics-bind", f"127.0.0.1:{metrics_port}",
        env={"METRICS_MARKERS": str(markers)},
    )  # fmt: skip
    depth = "rsasgi_wsgi_queue_depth"
    with ThreadPoolExecutor(3) as pool:
        held = pool.submit(httpx.get, f"{server.url}/hold", timeout=30)
        try:
            wait_for(lambda: (markers / "held").exists(), message="the request reached the app")
            waiting = [pool.submit(httpx.get, server.url, timeout=30) for _ in range(2)]
            with resets_on_close(server.connect()) as gone:
                gone.sendall(b"GET /?gone HTTP/1.1\r\nHost: x\r\n\r\n")
                wait_for(lambda: scrape(base).total(depth) == 3, message="three waiting")
            wait_for(lambda: scrape(base).total(depth) == 2, message="two waiting")
            assert scrape(base).kind(depth) == "gauge"
        finally:
            (markers / "release").touch()
        assert [r.result().status_code for r in [held, *waiting]] == [200] * 3
    wait_for(lambda: scrape(base).total(depth) == 0, message="none waiting")


# Health and readiness.


def test_probes_answer_while_serving_and_readyz_fails_once_draining(run_rsasgi, markers):
    server, base = start(run_rsasgi, markers, "--timeout-graceful-shutdown", "60", workers=2)
    assert probe(base, "/healthz") == 200
    assert probe(base, "/readyz") == 200
    assert probe(base, "/nothing") == 404
    answers: list[int] = []
    held = threading.Thread(
        target=lambda: answers.append(httpx.get(f"{server.url}/hold", timeout=60).status_code)
    )
    held.start()
    try:
        wait_for(lambda: (markers / "held").exists(), message="the request reached the app")
        server.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: probe(base, "/readyz") == 503, message="/readyz 503 while draining")
        assert "shutting down" in httpx.get(f"{base}/readyz").text
        # A drain is no failure: a liveness probe must not have the drain cut short.
        assert probe(base, "/healthz") == 200
    finally:
        (markers / "release").touch()
        held.join()
    assert answers == [200]
    assert server.wait_exit() == 0


# Without --workers.


def test_a_single_process_serves_its_own_metrics_and_probes(run_rsasgi, markers):
    server, base = start(run_rsasgi, markers, "--timeout-graceful-shutdown", "60")
    send_requests(server, PLAN)
    metrics = wait_for_count(base, "rsasgi_requests_total", sum(PLAN.values()))
    assert_counts_match_plan(metrics)
    assert metrics.value("rsasgi_workers", state="serving") == 1
    family = metrics.families["rsasgi_worker_resident_memory_bytes"]
    assert [sample.labels["pid"] for sample in family.samples] == [str(server.proc.pid)]
    assert metrics.value("rsasgi_event_loop_lag_seconds", worker="1") >= 0
    assert probe(base, "/healthz") == 200
    assert probe(base, "/readyz") == 200
    refused = httpx.post(f"{base}/metrics", timeout=10)
    assert (refused.status_code, refused.headers.get("allow")) == (405, "GET, HEAD")
    held = threading.Thread(target=lambda: httpx.get(f"{server.url}/hold", timeout=60))
    held.start()
    try:
        wait_for(lambda: (markers / "held").exists(), message="the request reached the app")
        server.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: probe(base, "/readyz") == 503, message="/readyz 503 while draining")
        assert probe(base, "/healthz") == 200
    finally:
        (markers / "release").touch()
        held.join()
    assert server.wait_exit() == 0


def test_a_single_process_whose_loop_is_blocked_fails_healthz(run_rsasgi, markers):
    """Without --workers no supervisor replaces a worker whose event loop the app blocks:
    once it has not run for --timeout-worker-healthcheck, /healthz (and /readyz) fail, for
    an orchestrator to restart the process, and the lag shows it; both pass again once the
    loop runs."""
    server, base = start(run_rsasgi, markers, "--timeout-worker-healthcheck", "2")
    blocked = blocked_loop(server, markers)
    try:
        wait_for(lambda: probe(base, "/healthz") == 503, message="/healthz 503")
        why = httpx.get(f"{base}/healthz", timeout=10).text
        assert re.fullmatch(
            r"the event loop has not run for \d+\.\d+s \(--timeout-worker-healthcheck 2s\): "
            r"the app blocks it\n",
            why,
        ), why
        assert probe(base, "/readyz") == 503
        assert scrape(base).value("rsasgi_event_loop_lag_seconds", worker="1") >= 1
    finally:
        (markers / "release").touch()
        blocked.join()
    wait_for(lambda: probe(base, "/healthz") == 200, message="/healthz 200 again")
    assert probe(base, "/readyz") == 200


def test_a_single_process_out_of_descriptors_still_answers_its_probes(run_rsasgi, markers):
    """Client connections have taken every descriptor the process may open (a flood, or a
    low ulimit -n): the probes, served by the same process, still answer, from descriptors
    held in reserve, so that an orchestrator does not restart a server that is serving."""
    server, base = start(run_rsasgi, markers)
    pid = server.proc.pid
    limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    used = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    lowest_free = next(fd for fd in itertools.count() if fd not in used)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (lowest_free, limits[1]))
    try:
        # Client connections the server cannot accept wait in its backlog.
        held = [socket.create_connection((server.host, server.port)) for _ in range(4)]
        assert probe(base, "/healthz") == 200
        assert probe(base, "/readyz") == 200
        assert probe(base, "/healthz") == 200
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
    for sock in held:
        sock.close()
    assert probe(base, "/healthz") == 200


# The listener's own limits.


def test_connections_over_the_cap_are_closed_at_once(run_rsasgi, markers):
    """Clients that keep connections to the metrics port (or never read the answers) hold
    64 of them at most, not every descriptor the supervisor has: one more is closed as
    soon as it is accepted, once logged, and new ones are served again once some close."""
    server, base = start(run_rsasgi, markers, workers=1)
    address = ("127.0.0.1", int(base.rsplit(":", 1)[1]))
    held = [socket.create_connection(address, timeout=10) for _ in range(64)]
    try:
        with socket.create_connection(address, timeout=10) as extra:
            try:
                extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # closed already
            assert recv_until_closed(extra, timeout=5) == b""
        wait_for_log(server, "--metrics-bind: 64 connections are open")
    finally:
        for sock in held:
            sock.close()

    def served() -> bool:
        try:
            return probe(base, "/healthz") == 200
        except httpx.TransportError:  # closed at the cap: not every close is seen yet
            return False

    wait_for(served, message="/healthz served again")
    wait_for_log(server, "--metrics-bind: new connections are served again, after 1 closed")


# The option.


def test_a_taken_metrics_port_is_one_clear_line(run_rsasgi, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for workers in ([], ["--workers", "2"]):
            server = run_rsasgi(APP, "--metrics-bind", f"127.0.0.1:{port}", *workers, wait=False)
            assert server.wait_exit() == 1
            assert f"Cannot listen on --metrics-bind 127.0.0.1:{port}" in server.output()
            assert "Traceback" not in server.output()


def test_the_option_needs_a_port_and_comes_from_env_and_file(tmp_path):
    result = cli("main:app", "--metrics-bind", "127.0.0.1", "--print-config")
    assert result.returncode == 2
    assert "--metrics-bind takes HOST:PORT" in result.stderr

    result = cli("main:app", "--print-config", env={"RSASGI_METRICS_BIND": "127.0.0.1:9100"})
    assert result.returncode == 0, result.stderr
    assert re.search(
        r'^metrics-bind = "127\.0\.0\.1:9100"\s+# environment RSASGI_METRICS_BIND$',
        result.stdout,
        re.MULTILINE,
    )

    config = tmp_path / "rsasgi.toml"
    config.write_text('metrics-bind = "[::1]:9100"\n')
    result = cli("main:app", "--config", str(config), "--print-config")
    assert result.returncode == 0, result.stderr
    assert re.search(r'^metrics-bind = "\[::1\]:9100"\s+# file ', result.stdout, re.MULTILINE)


@pytest.mark.parametrize("option", ["--metrics", "--metrics-port"])
def test_granians_options_point_to_metrics_bind(option):
    result = cli("main:app", option)
    assert result.returncode == 2
    assert f"{option} is --metrics-bind in rsasgi" in result.stderr
