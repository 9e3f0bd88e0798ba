"""SIGTERM/SIGINT: stop accepting, finish in-flight requests (bounded), run lifespan shutdown."""

from __future__ import annotations

import signal
import socket
import threading
import time

import httpx
import pytest

APP = "err_slow:app"


def events(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def wait_for_event(path, event: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if event in events(path):
            return
        time.sleep(0.02)
    raise AssertionError(f"{event!r} not recorded in {timeout}s: {events(path)}")


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


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_lets_in_flight_request_finish(run_rsasgi, tmp_path, sig):
    record = tmp_path / "events.txt"
    server = run_rsasgi(APP, env={"ERR_SLOW_FILE": str(record)})
    result: dict = {}
    thread = start_request(server.url + "/sleep?s=2", result)
    wait_for_event(record, "request-start")

    server.proc.send_signal(sig)
    signalled = time.monotonic()
    refused_while_running = False
    while time.monotonic() - signalled < 1.5:
        try:
            probe = socket.create_connection((server.host, server.port), timeout=1)
        except ConnectionRefusedError:
            refused_while_running = server.proc.poll() is None
            break
        except ConnectionResetError:
            # Reached the backlog just as the listener closed; try again.
            time.sleep(0.05)
            continue
        probe.close()
        time.sleep(0.05)
    assert refused_while_running, "new connections still accepted 1.5 s after the signal"

    thread.join(20)
    returncode = server.wait_exit()
    report = f"exit code {returncode}, events {events(record)}\n{server.output()}"
    assert result == {"status": 200, "text": "slept"}, report
    assert returncode == 0, report
    assert events(record) == ["startup", "request-start", "request-done", "shutdown"]


def test_graceful_shutdown_timeout_bounds_the_wait(run_rsasgi, tmp_path):
    record = tmp_path / "events.txt"
    server = run_rsasgi(APP, "--timeout-graceful-shutdown", "1", env={"ERR_SLOW_FILE": str(record)})
    result: dict = {}
    thread = start_request(server.url + "/sleep?s=30", result)
    wait_for_event(record, "request-start")

    signalled = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    returncode = server.wait_exit(timeout=15)
    elapsed = time.monotonic() - signalled
    assert elapsed < 10, elapsed
    # It did wait for the in-flight request before giving up on it.
    assert elapsed >= 0.9, elapsed
    assert returncode == 0
    thread.join(15)
    assert result.get("text") != "slept", result
    assert "request-done" not in events(record)
    assert events(record)[-1] == "shutdown"
