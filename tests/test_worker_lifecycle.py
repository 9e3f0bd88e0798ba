"""The worker's life around the requests: request tasks that nothing else holds, a second
signal that forces the shutdown, what the log shows when the app cannot be loaded, and the
started app's objects frozen out of garbage collection (--gc-freeze).

Apps: tests/apps/life_*.py. Events go to the file named by $LIFE_EVENTS.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import traceback

import httpx
import pytest
from apps.proto_raw import recv_until_closed
from conftest import Server, wait_for

APP = "life_app:app"
SHUTTING_DOWN = "shutting down gracefully"
FORCED = "again: forcing the shutdown"


def events(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def wait_for_event(path, event: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if event in events(path):
            return
        time.sleep(0.02)
    raise AssertionError(f"{event!r} not recorded in {timeout}s: {events(path)}")


def wait_for_log(server, needle: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in server.output():
            return
        time.sleep(0.02)
    raise AssertionError(f"{needle!r} not logged in {timeout}s:\n{server.output()}")


def exit_code(server, timeout: float = 10.0) -> int:
    """The exit code, or a failure naming what the process logged if it is still running."""
    try:
        return server.wait_exit(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running {timeout}s later:\n{server.output()}") from None


def test_request_task_survives_garbage_collection(run_rsasgi):
    """The worker holds each request task, so a task waiting on a future that only it
    references is not collected mid-request."""
    server = run_rsasgi(APP)
    response = httpx.get(server.url + "/unreferenced", timeout=10)
    assert (response.status_code, response.content) == (200, b"resumed"), server.output()
    assert "Task was destroyed" not in server.output()


# The second signal here arrives while the reactor is still inside its 60 s grace period:
# these need the reactor to honour a second `shutdown(0.0)` at once.
@pytest.mark.parametrize(
    "app, expected_events",
    [(APP, ["startup", "request-start"]), ("life_wsgi:app", ["request-start"])],
    ids=["asgi", "wsgi"],
)
def test_second_signal_closes_requests_in_flight(run_rsasgi, tmp_path, app, expected_events):
    """The client sees its connection closed, the worker exits 0 without waiting for the
    request, and the lifespan shutdown is skipped."""
    record = tmp_path / "events.txt"
    server = run_rsasgi(app, "--timeout-graceful-shutdown", "60", env={"LIFE_EVENTS": str(record)})
    client = server.connect()
    client.sendall(b"GET /sleep HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_for_event(record, "request-start")

    server.proc.send_signal(signal.SIGTERM)
    wait_for_log(server, SHUTTING_DOWN)
    server.proc.send_signal(signal.SIGTERM)

    assert exit_code(server) == 0, server.output()
    assert recv_until_closed(client) == b""
    client.close()
    assert events(record) == expected_events
    assert server.output().count(FORCED) == 1, server.output()


def test_second_signal_during_lifespan_shutdown_ends_the_process(run_rsasgi, tmp_path):
    record = tmp_path / "events.txt"
    server = run_rsasgi(APP, env={"LIFE_EVENTS": str(record), "LIFE_SHUTDOWN_HANGS": "1"})
    server.proc.send_signal(signal.SIGTERM)
    wait_for_event(record, "shutdown-start")
    server.proc.send_signal(signal.SIGTERM)

    assert exit_code(server) == 0, server.output()
    assert server.output().count(FORCED) == 1, server.output()
    assert events(record) == ["startup", "shutdown-start"]


def test_second_signal_while_cancelling_a_stubborn_request(run_rsasgi, tmp_path):
    """A request that ignores its cancellation does not hold up a forced shutdown, and the
    lifespan shutdown (which would hang) is skipped."""
    record = tmp_path / "events.txt"
    server = run_rsasgi(
        APP,
        "--timeout-graceful-shutdown",
        "0",
        env={"LIFE_EVENTS": str(record), "LIFE_SHUTDOWN_HANGS": "1"},
    )
    client = server.connect()
    client.sendall(b"GET /stubborn HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_for_event(record, "request-start")

    server.proc.send_signal(signal.SIGTERM)
    assert recv_until_closed(client) == b""
    client.close()
    wait_for_event(record, "cancel-ignored")
    server.proc.send_signal(signal.SIGTERM)

    assert exit_code(server) == 0, server.output()
    assert server.output().count(FORCED) == 1, server.output()
    assert "shutdown-start" not in events(record)


def log_lines_after(output: str, first: str) -> list[str]:
    """The log from the line containing `first` on; fails if no line contains it."""
    lines = output.splitlines()
    starts = [i for i, line in enumerate(lines) if first in line]
    assert len(starts) == 1, output
    return lines[starts[0] :]


def assert_only_user_frames(lines: list[str], output: str) -> None:
    frames = [line for line in lines if line.lstrip().startswith("File ")]
    assert frames, output
    for frame in frames:
        assert "importlib" not in frame, output
        assert "rsasgi" not in frame, output


def test_import_error_shows_the_error_then_the_user_frames(run_rsasgi):
    server = run_rsasgi("life_import_raises:app", wait=False)
    assert server.wait_exit() == 3
    output = server.output()
    lines = log_lines_after(
        output,
        'Error while importing module "life_import_raises": ZeroDivisionError: division by zero',
    )
    assert lines[1] == "Traceback (most recent call last):", output
    assert_only_user_frames(lines, output)
    assert [line.split(", in ")[-1] for line in lines if ", in " in line] == [
        "<module>",
        "_configure",
        "_ratio",
    ], output
    assert lines[-1] == "ZeroDivisionError: division by zero", output
    assert "Listening on" not in output


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["alone", "supervised"])
def test_a_module_that_exits_while_imported_fails_to_load(run_rsasgi, tmp_path, workers):
    """sys.exit() at import is a failure to load like any other: exit 3 with a line saying so,
    not a silent exit that a supervisor would restart again and again."""
    (tmp_path / "life_exits.py").write_text("import sys\n\nsys.exit(4)\n")
    server = run_rsasgi("life_exits:app", "--app-dir", str(tmp_path), *workers, wait=False)
    assert server.wait_exit() == 3
    assert 'Module "life_exits" called sys.exit(4) while being imported.' in server.output()


def start_importing(run_rsasgi, tmp_path, module: str, rest_of_import: str):
    """Starts one process on module `module`, whose import marks that it began and then runs
    `rest_of_import` (which does not return soon), with --pid and --uds; returns the server
    and the two files, once the import has begun."""
    marker = tmp_path / "importing"
    (tmp_path / f"{module}.py").write_text(
        f"import pathlib\n\npathlib.Path({str(marker)!r}).touch()\n{rest_of_import}"
    )
    pid_file, socket_file = tmp_path / "rsasgi.pid", tmp_path / "rsasgi.sock"
    server = run_rsasgi(
        f"{module}:app", "--app-dir", str(tmp_path), "--pid", str(pid_file),
        "--uds", str(socket_file), wait=False,
    )  # fmt: skip
    wait_for(marker.exists, message="the import to begin", server=server)
    assert pid_file.exists() and socket_file.exists()
    return server, pid_file, socket_file


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP], ids=lambda s: s.name
)
def test_a_stop_signal_while_the_app_is_imported_stops_without_a_traceback(
    run_rsasgi, tmp_path, sig
):
    """A single process stopped while it imports a slow app: one line and exit 0, as a
    stop during the lifespan startup, not the app's code in a KeyboardInterrupt traceback;
    its --pid and --uds files are removed. The others killed it silently, leaving both
    behind, and SIGINT left the socket file."""
    server, pid_file, socket_file = start_importing(
        run_rsasgi, tmp_path, "life_slow", "import time\n\ntime.sleep(30)\n"
    )
    server.proc.send_signal(sig)
    assert server.wait_exit() == 0
    output = server.output()
    assert f"Stopped by {sig.name} while importing life_slow:app, before serving" in output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output
    assert not pid_file.exists()
    assert not socket_file.exists()


def main_thread_cpu_seconds(pid: int) -> float:
    """The CPU time the main thread of process `pid` has used."""
    with open(f"/proc/{pid}/task/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime, fields 14 and 15 of stat(5), counted after the ")" from field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_stop_signal_while_the_import_is_in_c_code_ends_the_process(run_rsasgi, tmp_path, sig):
    """Python acts on a signal only between two bytecodes: an import inside a long call into
    C code (a key derivation here, a C database driver's connect elsewhere) ignored the
    stop until the call returned (a minute here). The process now leaves 5 s after the
    signal, saying why, with its --pid and --uds files removed."""
    server, pid_file, socket_file = start_importing(
        run_rsasgi,
        tmp_path,
        "life_c_import",
        'import hashlib\n\nhashlib.pbkdf2_hmac("sha256", b"secret", b"salt", 300_000_000)\n',
    )
    # Sent before the key derivation begins, the signal is acted on by Python at once:
    # only the derivation makes the main thread use CPU time for long after the marker.
    begun = main_thread_cpu_seconds(server.proc.pid)
    wait_for(
        lambda: main_thread_cpu_seconds(server.proc.pid) > begun + 0.2,
        message="the key derivation to run",
        server=server,
    )
    server.proc.send_signal(sig)
    assert server.wait_exit(timeout=20) == 0, server.output()
    output = server.output()
    assert (
        f"Stopped by {sig.name} while importing life_c_import:app, before serving: the import "
        "had not returned 5s after the signal"
    ) in output
    assert not pid_file.exists()
    assert not socket_file.exists()


@pytest.mark.parametrize("step", ["import", "startup"])
def test_one_process_past_its_boot_deadline_logs_its_stacks_and_exits(run_rsasgi, tmp_path, step):
    """--timeout-worker-boot given to one process: an import or a lifespan startup that
    does not end is ended at the deadline, with the Python stacks of its threads (where it
    is stuck) and exit code 3, for systemd or Kubernetes to start it again. It was only
    warned of, and the process hung for ever."""
    module = tmp_path / "life_boot_hangs.py"
    if step == "import":
        module.write_text("import time\n\ntime.sleep(3600)\n")
    else:
        module.write_text(
            "import time\n\n\n"
            "async def app(scope, receive, send):\n"
            "    await receive()\n"
            "    time.sleep(3600)\n"
        )
    pid_file, socket_file = tmp_path / "rsasgi.pid", tmp_path / "rsasgi.sock"
    server = run_rsasgi(
        "life_boot_hangs:app", "--app-dir", str(tmp_path), "--timeout-worker-boot", "1",
        "--pid", str(pid_file), "--uds", str(socket_file), wait=False,
    )  # fmt: skip
    assert exit_code(server, timeout=20) == 3
    output = server.output()
    assert (
        "after it started (--timeout-worker-boot 1s): its import or lifespan startup does not "
        "end; the Python stack of each of its threads follows, then it exits with code 3"
    ) in output
    stacks = log_lines_after(output, "Python stacks of this worker's threads:")
    assert any(f'File "{module}", line' in line for line in stacks), output
    assert "does nothing without --workers" not in output
    assert not pid_file.exists()
    assert not socket_file.exists()


CHURN_BOOT = """\
import threading


def leaf(n):
    return n + 1


def churn():
    n = 0
    while True:
        n = (leaf(n) + leaf(n)) % 1000


for _ in range(3):
    threading.Thread(target=churn, daemon=True).start()
churn()
"""


def test_a_boot_deadline_reads_the_stacks_holding_the_gil(run_rsasgi, tmp_path):
    """faulthandler reads every thread's frames without a lock, so a thread running Python
    meanwhile can free a frame under it: CI saw a worker die of a segmentation fault,
    stacks unlogged, at a boot deadline that came as the import ended. The stacks are now
    read by a thread holding the GIL, while the app's threads (four, calling functions as
    fast as they can here) wait at a safe point; that thread's own frameless entry is left
    out of the dump."""
    (tmp_path / "churn_boot.py").write_text(CHURN_BOOT)
    server = run_rsasgi(
        "churn_boot:app", "--app-dir", str(tmp_path), "--lifespan", "off",
        "--timeout-worker-boot", "1", "--log-level", "debug", wait=False,
    )  # fmt: skip
    assert exit_code(server, timeout=20) == 3, server.output()
    output = server.output()
    assert "Python stacks taken holding the GIL" in output
    assert "The GIL was not free" not in output
    stacks = log_lines_after(output, "Python stacks of this worker's threads:")
    assert sum('churn_boot.py", line' in line and "in leaf" not in line for line in stacks) >= 4
    assert "<no Python frame>" not in "\n".join(stacks), output


def test_a_boot_deadline_with_the_gil_held_still_logs_the_stacks(run_rsasgi, tmp_path):
    """An import that holds the GIL in C (a long sum over a range here; a C extension's
    call, in life) keeps the GIL from the thread that would read the stacks: after a second
    they are read without it, as before, and the log says why."""
    (tmp_path / "hog_boot.py").write_text("total = sum(range(3 * 10**8))\n")
    server = run_rsasgi(
        "hog_boot:app", "--app-dir", str(tmp_path), "--lifespan", "off",
        "--timeout-worker-boot", "1", wait=False,
    )  # fmt: skip
    assert exit_code(server, timeout=20) == 3, server.output()
    output = server.output()
    assert "The GIL was not free within 1.0s: a thread holds it" in output
    stacks = log_lines_after(output, "Python stacks of this worker's threads:")
    assert any('hog_boot.py", line 1 in <module>' in line for line in stacks), output
    assert "<no Python frame>" not in "\n".join(stacks), output


def test_a_boot_ending_as_its_deadline_passes_with_log_config_does_not_deadlock(
    run_rsasgi, tmp_path
):
    """The deadline's thread held the boot's lock while it waited for the GIL to write the
    log through --log-config's handlers (slow ones here); the main thread, its import just
    over, held the GIL while it waited for that lock. Neither moved again, and SIGTERM did
    nothing: only SIGKILL ended the process. Either end is fine, serving or exit 3."""
    (tmp_path / "slow_log.py").write_text(
        "import logging, time\n\n\n"
        "class SlowHandler(logging.StreamHandler):\n"
        "    def emit(self, record):\n"
        "        time.sleep(0.2)\n"
        "        super().emit(record)\n"
    )
    (tmp_path / "boot_at_deadline.py").write_text(
        "import time\n\ntime.sleep(1)\n\n\n"
        "async def app(scope, receive, send):\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': b'ok'})\n"
    )
    log_config = tmp_path / "logging.json"
    log_config.write_text(
        json.dumps(
            {
                "version": 1,
                "handlers": {"slow": {"()": "slow_log.SlowHandler", "stream": "ext://sys.stderr"}},
                "root": {"handlers": ["slow"], "level": "INFO"},
            }
        )
    )
    server = run_rsasgi(
        "boot_at_deadline:app", "--app-dir", str(tmp_path), "--lifespan", "off",
        "--timeout-worker-boot", "1", "--log-config", str(log_config), wait=False,
        env={"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])},
    )  # fmt: skip
    time.sleep(3)  # past the deadline and the end of the import, whichever came first
    server.proc.send_signal(signal.SIGTERM)
    assert exit_code(server, timeout=20) in (0, 3), server.output()


def test_an_attribute_that_raises_fails_to_load(run_rsasgi, tmp_path):
    (tmp_path / "life_prop.py").write_text(
        "class Holder:\n"
        "    @property\n"
        "    def app(self):\n"
        "        raise RuntimeError('no app configured')\n\n\n"
        "holder = Holder()\n"
    )
    server = run_rsasgi("life_prop:holder.app", "--app-dir", str(tmp_path), wait=False)
    assert server.wait_exit() == 3
    assert (
        'Error while getting "holder.app" from module "life_prop": RuntimeError: no app configured'
    ) in server.output()


def test_pep_3333_application_class_is_detected_as_wsgi(run_rsasgi, tmp_path):
    """PEP 3333's own example: a class whose instances, built with environ and
    start_response, are the iterable; an ASGI 2 class whose constructor takes an option
    besides the scope stays ASGI 2, and is told so in scope["asgi"]["version"]."""
    (tmp_path / "life_pep_class.py").write_text(
        "class AppClass:\n"
        "    def __init__(self, environ, start_response):\n"
        "        self.start = start_response\n\n"
        "    def __iter__(self):\n"
        "        self.start('200 OK', [('Content-Type', 'text/plain')])\n"
        "        yield b'Hello world!\\n'\n\n\n"
        "class Asgi2WithOption:\n"
        "    def __init__(self, scope, config=None):\n"
        "        self.scope = scope\n\n"
        "    async def __call__(self, receive, send):\n"
        "        await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "        version = self.scope['asgi']['version'].encode()\n"
        "        await send({'type': 'http.response.body', 'body': b'asgi ' + version})\n"
    )
    for target, body in [("AppClass", "Hello world!\n"), ("Asgi2WithOption", "asgi 2.0")]:
        server = run_rsasgi(
            f"life_pep_class:{target}", "--app-dir", str(tmp_path), "--lifespan", "off"
        )
        response = httpx.get(server.url + "/", timeout=10)
        assert (response.status_code, response.text) == (200, body), server.output()
        server.stop()


def test_syntax_error_shows_file_line_and_caret(run_rsasgi, tmp_path):
    source = tmp_path / "life_syntax.py"
    source.write_text("async def app(scope, receive, send):\n    pass\n\n\nx = ]\n")
    with pytest.raises(SyntaxError) as raised:
        compile(source.read_text(), str(source), "exec")
    as_python_prints_it = "".join(traceback.format_exception_only(raised.value)).splitlines()
    server = run_rsasgi("life_syntax:app", "--app-dir", str(tmp_path), wait=False)
    assert server.wait_exit() == 3
    output = server.output()
    lines = log_lines_after(
        output,
        'Error while importing module "life_syntax": '
        "SyntaxError: unmatched ']' (life_syntax.py, line 5)",
    )
    assert lines[1:] == as_python_prints_it, output
    assert f'  File "{source}", line 5' in as_python_prints_it


def test_missing_dependency_shows_the_users_import_line(run_rsasgi):
    server = run_rsasgi("err_cli_nested_import:app", wait=False)
    assert server.wait_exit() == 3
    output = server.output()
    lines = log_lines_after(
        output,
        'Error while importing module "err_cli_nested_import": ModuleNotFoundError: '
        "No module named 'err_no_such_dependency_xyz'",
    )
    assert_only_user_frames(lines, output)
    assert "    import err_no_such_dependency_xyz  # noqa: F401" in lines, output


def assert_names_directory_searched(server, searched) -> None:
    assert server.wait_exit() == 3
    message = f'Could not import module "life_mian" from {searched} (--app-dir); is the name right?'
    lines = [line for line in server.output().splitlines() if "life_mian" in line]
    assert len(lines) == 1 and lines[0].endswith(message), server.output()


def test_module_not_found_names_the_app_dir_searched(run_rsasgi, tmp_path):
    (tmp_path / "srv").mkdir()
    server = run_rsasgi("life_mian:app", "--app-dir", "srv", wait=False, cwd=tmp_path)
    assert_names_directory_searched(server, tmp_path / "srv")


def test_module_not_found_names_the_current_directory_by_default(tmp_path):
    server = Server(["life_mian:app", "--port", "0"], tmp_path, tmp_path / "server.log", None)
    try:
        assert_names_directory_searched(server, tmp_path)
    finally:
        server.kill()


def test_factory_error_shows_the_error_then_the_user_frames(run_rsasgi):
    server = run_rsasgi("life_factory:make_app", "--factory", wait=False)
    assert server.wait_exit() == 3
    output = server.output()
    lines = log_lines_after(
        output, "--factory: calling \"life_factory:make_app\" raised KeyError: 'database_url'"
    )
    assert lines[1] == "Traceback (most recent call last):", output
    assert_only_user_frames(lines, output)
    assert [line.split(", in ")[-1] for line in lines if ", in " in line] == ["make_app"], output
    assert lines[-1] == "KeyError: 'database_url'", output


def test_a_factory_called_with_too_few_arguments_is_told_once(run_rsasgi):
    """The call itself raised: no frame of the user's to show, so the error is the one
    line (it was repeated under it as a traceback of nothing)."""
    server = run_rsasgi("life_factory:make_app_for", "--factory", wait=False)
    assert server.wait_exit() == 3
    output = server.output()
    lines = log_lines_after(
        output, '--factory: calling "life_factory:make_app_for" raised TypeError'
    )
    assert lines[0].endswith(
        "missing 1 required positional argument: 'settings'. --factory calls APP with no "
        'arguments to make the application; if "life_factory:make_app_for" is the '
        "application itself, leave out --factory"
    ), output
    assert not any("TypeError" in line for line in lines[1:]), output


@pytest.mark.parametrize("target", ["life_gc:app", "life_gc:wsgi_app"])
def test_objects_of_the_started_app_are_frozen_out_of_garbage_collection(run_rsasgi, target):
    """By default what the app holds once started (at import, in the lifespan startup)
    is moved out of the collector's reach; garbage cycles made by requests are still
    collected."""
    server = run_rsasgi(target, "--log-level", "debug")
    report = httpx.get(server.url + "/", timeout=10).json()
    assert report["freeze_count"] > 0, server.output()
    assert report["startup_frozen"], report
    assert report["request_cycle_collected"], report
    assert "out of garbage collection (gc.freeze" in server.output()


def test_gc_freeze_false_leaves_every_object_to_the_collector(run_rsasgi):
    server = run_rsasgi("life_gc:app", "--gc-freeze", "false")
    report = httpx.get(server.url + "/", timeout=10).json()
    assert report == {
        "freeze_count": 0,
        "startup_frozen": False,
        "request_cycle_collected": True,
    }
