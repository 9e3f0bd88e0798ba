"""Lifespan protocol: startup/shutdown events, state, failures, and the auto/on/off modes."""

from __future__ import annotations

import re
import signal

import httpx
import pytest
from conftest import wait_for

APP = "err_lifespan:app"


def events(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_startup_and_shutdown_run(run_rsasgi, tmp_path):
    record = tmp_path / "events.txt"
    server = run_rsasgi(APP, env={"ERR_LIFESPAN_FILE": str(record)})
    # "Listening on" is logged only after startup completed.
    assert events(record) == ["startup"]
    response = httpx.get(server.url + "/lifespan-asgi", timeout=10)
    assert response.json()["version"] == "3.0"
    assert events(record) == ["startup"]
    assert server.stop() == 0
    assert events(record) == ["startup", "shutdown"]


def test_state_is_a_shallow_copy_per_request(run_rsasgi):
    server = run_rsasgi(APP)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.get("/state").json() == {
            "has_state": True,
            "state": {"greeting": "hello-from-startup", "shared_list": []},
        }
        assert client.get("/mutate").status_code == 200
        # Rebinding keys in one request's state must not leak into the next request,
        # but the values are shared (shallow copy), so the appended item is visible.
        assert client.get("/state").json() == {
            "has_state": True,
            "state": {"greeting": "hello-from-startup", "shared_list": ["appended"]},
        }


def test_startup_failure_logs_message_and_exits_3(run_rsasgi):
    server = run_rsasgi("err_lifespan_fail:app", wait=False)
    assert server.wait_exit() == 3
    log = server.output()
    lines = [line for line in log.splitlines() if "err-db-unreachable-4711" in line]
    assert len(lines) == 1, log
    assert "Listening on" not in log
    assert "Traceback" not in log
    assert "panicked" not in log


def test_startup_failure_of_an_app_that_then_waits_exits_3_quietly(run_rsasgi):
    """After lifespan.startup.failed the app awaits receive() for a shutdown: its task is
    cancelled, not left for the loop's "Task was destroyed but it is pending!" report."""
    server = run_rsasgi("err_lifespan_fail:app", env={"ERR_LIFESPAN_WAIT": "1"}, wait=False)
    assert server.wait_exit() == 3
    log = server.output()
    assert "err-db-unreachable-4711" in log
    assert "Task was destroyed" not in log
    assert "Traceback" not in log


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["SIGINT", "SIGTERM", "SIGHUP"]
)
def test_a_stop_signal_ends_a_startup_that_hangs(run_rsasgi, tmp_path, sig):
    """CTRL+C while the lifespan startup waits on something that never answers stops the
    server, cancelling the app's lifespan task (its cleanup runs): SIGINT did nothing,
    and SIGTERM killed the process without it."""
    record = tmp_path / "events.txt"
    server = run_rsasgi("life_hang:app", env={"LIFE_HANG_FILE": str(record)}, wait=False)
    wait_for(lambda: events(record) == ["startup"], message="the startup to begin")
    server.proc.send_signal(sig)
    assert server.wait_exit() == 0, server.output()
    assert events(record) == ["startup", "cancelled"]
    log = server.output()
    assert f"Received {sig.name} during the application's startup: stopping" in log
    assert "Application startup cancelled" in log
    assert "Listening on" not in log
    assert "Traceback" not in log


def test_a_stop_signal_ends_a_startup_that_blocks_the_loop(run_rsasgi, tmp_path):
    """A startup stuck in a synchronous call never lets the loop see the signal: the
    process leaves a few seconds later all the same (it used to die at once by SIGTERM's
    default action, and must not now wait for a SIGKILL)."""
    record = tmp_path / "events.txt"
    env = {"LIFE_HANG_FILE": str(record), "LIFE_HANG_MODE": "sync"}
    server = run_rsasgi("life_hang:app", env=env, wait=False)
    wait_for(lambda: events(record) == ["startup"], message="the startup to begin")
    server.proc.send_signal(signal.SIGTERM)
    assert server.wait_exit(timeout=20) == 0, server.output()
    log = server.output()
    assert "The application's startup has not stopped 5s after SIGTERM" in log
    assert "Listening on" not in log


def test_a_stop_signal_ends_a_startup_in_c_code(run_rsasgi, tmp_path):
    """A startup inside a long call into C code (a key derivation here) never lets Python
    run the signal's handler: SIGTERM did nothing until the call returned (minutes here).
    The signal is heard at the C level, and the process leaves 5 s later, with its --pid
    and --uds files removed."""
    record = tmp_path / "events.txt"
    pid_file, socket_file = tmp_path / "rsasgi.pid", tmp_path / "rsasgi.sock"
    env = {"LIFE_HANG_FILE": str(record), "LIFE_HANG_MODE": "c"}
    server = run_rsasgi(
        "life_hang:app", "--pid", str(pid_file), "--uds", str(socket_file), env=env, wait=False
    )
    wait_for(lambda: events(record) == ["startup"], message="the startup to begin", server=server)
    server.proc.send_signal(signal.SIGTERM)
    assert server.wait_exit(timeout=20) == 0, server.output()
    log = server.output()
    assert "The application's startup has not stopped 5s after SIGTERM" in log
    assert "Listening on" not in log
    assert not pid_file.exists()
    assert not socket_file.exists()


def test_a_signal_as_the_startup_completes_leaves_a_started_app_shut_down(run_rsasgi, tmp_path):
    """The app completes its startup just as SIGTERM arrives: its answer stands, so the
    server starts and at once shuts down gracefully, sending the lifespan shutdown (the
    startup must not be cancelled after the app reported it complete)."""
    record = tmp_path / "events.txt"
    env = {"LIFE_HANG_FILE": str(record), "LIFE_HANG_MODE": "signal"}
    server = run_rsasgi("life_hang:app", env=env, wait=False)
    assert server.wait_exit() == 0, server.output()
    assert events(record) == ["startup", "shutdown"], server.output()
    log = server.output()
    assert "Application startup complete" in log
    assert "Application startup cancelled" not in log


def test_app_without_lifespan_support_is_served_in_auto_mode(run_rsasgi):
    server = run_rsasgi("err_lifespan_raise:app")
    response = httpx.get(server.url + "/", timeout=10)
    assert response.status_code == 200
    assert response.text == "ok-no-lifespan"
    assert server.stop() == 0


def test_app_raising_in_lifespan_with_lifespan_on_fails_startup(run_rsasgi):
    server = run_rsasgi("err_lifespan_raise:app", "--lifespan", "on", wait=False)
    assert server.wait_exit() == 3
    log = server.output()
    assert "err-lifespan-unsupported-99" in log
    assert "Listening on" not in log
    assert "panicked" not in log


def test_lifespan_off_never_calls_app_with_lifespan(run_rsasgi, tmp_path):
    record = tmp_path / "events.txt"
    server = run_rsasgi(APP, "--lifespan", "off", env={"ERR_LIFESPAN_FILE": str(record)})
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.get("/other").status_code == 200
        assert client.get("/types").json() == ["http", "http"]
    assert server.stop() == 0
    assert events(record) == []


def test_a_lifespan_shutdown_that_raises_is_reported_as_failed(run_rsasgi):
    server = run_rsasgi("life_app:app", env={"LIFE_SHUTDOWN_RAISES": "1"})
    server.stop()
    log = server.output()
    assert "RuntimeError: the lifespan shutdown raised" in log
    assert "Application shutdown failed: the app raised (traceback above)" in log
    assert "Application shutdown complete" not in log


def test_a_lifespan_shutdown_that_never_answers_is_cancelled(run_rsasgi, tmp_path):
    """One process waited for ever for the app's answer, saying nothing; it now waits as
    long as a supervisor would for a worker's (what the stop's steps left of grace + 13 s,
    less the exit's own), then says so and exits."""
    record = tmp_path / "events.txt"
    server = run_rsasgi(
        "life_app:app",
        "--timeout-graceful-shutdown",
        "0",
        env={"LIFE_EVENTS": str(record), "LIFE_SHUTDOWN_HANGS": "1"},
    )
    server.proc.send_signal(signal.SIGTERM)
    assert server.wait_exit(timeout=30) == 0
    log = server.output()
    assert re.search(
        r"The application's shutdown did not complete within 1\d(\.\d)?s "
        r"\(lifespan.shutdown unanswered\); cancelling it",
        log,
    ), log
    assert "Application shutdown complete" not in log
    assert "Task was destroyed" not in log
    assert log.rstrip().endswith("rsasgi.error: Stopped"), log
    assert events(record) == ["startup", "shutdown-start"]


def test_a_lifespan_shutdown_gets_the_grace_period_left_unused(run_rsasgi, tmp_path):
    """With no connection open, the stop has its whole grace period (30 s) left for the
    lifespan shutdown, as a supervisor's deadline allows: one that takes 7 s completes (it
    was cancelled after 5 s)."""
    record = tmp_path / "events.txt"
    env = {"LIFE_EVENTS": str(record), "LIFE_SHUTDOWN_SECONDS": "7"}
    server = run_rsasgi("life_app:app", env=env)
    server.proc.send_signal(signal.SIGTERM)
    assert server.wait_exit(timeout=30) == 0
    log = server.output()
    assert "Application shutdown complete" in log, log
    assert "did not complete" not in log
    assert events(record) == ["startup", "shutdown-start", "shutdown"]
