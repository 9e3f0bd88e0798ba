"""--log-config end to end: Python's logging.config (JSON, YAML, INI) applied in every rsasgi
process, rsasgi's own lines (rsasgi.error, rsasgi.access, wsgi.errors) reaching its handlers as
logging records with the access line's fields, bad files refused in one line, and a handler
that blocks never holding up requests. Apps: tests/apps/log_config_app.py.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import termios
from pathlib import Path

import httpx
import pytest
from conftest import APPS, cli, free_port, kill_process_group, wait_for, wait_for_log

APP = "log_config_app:app"
WSGI_APP = "log_config_app:wsgi_app"

#: A console handler on stderr: the tests' Server finds "Listening on" there.
CONSOLE = {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}


def dict_config(server_log: Path, access_log: Path | None = None) -> dict:
    """Server lines (and everything else) to `server_log` as name|levelname|message; access
    lines to `access_log` with their fields, when given."""
    config = {
        "version": 1,
        "formatters": {
            "plain": {"format": "%(name)s|%(levelname)s|%(process)d|%(message)s"},
            "access": {
                "format": "%(name)s|%(method)s|%(path)s|%(query)s|%(status)s|%(bytes)s|"
                "%(protocol)s|%(client)s|%(duration)s|%(message)s"
            },
        },
        "handlers": {
            "console": CONSOLE,
            "file": {
                "class": "logging.FileHandler",
                "filename": str(server_log),
                "formatter": "plain",
            },
        },
        "root": {"handlers": ["console", "file"], "level": "INFO"},
    }
    if access_log is not None:
        config["handlers"]["access"] = {
            "class": "logging.FileHandler",
            "filename": str(access_log),
            "formatter": "access",
        }
        config["loggers"] = {
            "rsasgi.access": {"handlers": ["access"], "level": "INFO", "propagate": False}
        }
    return config


def write_json(path: Path, config: dict) -> Path:
    path.write_text(json.dumps(config))
    return path


def lines_of(path: Path, needle: str, count: int = 1) -> list[str]:
    """Waits until `path` has `count` lines holding `needle`; returns those lines."""

    def found():
        text = path.read_text(errors="replace") if path.exists() else ""
        lines = [line for line in text.splitlines() if needle in line]
        return lines if len(lines) >= count else None

    return wait_for(found, message=f"{count} line(s) with {needle!r} in {path}")


def test_json_config_takes_server_access_and_app_lines(run_rsasgi, tmp_path):
    server_log, access_log = tmp_path / "server.log", tmp_path / "access.log"
    config = write_json(tmp_path / "logging.json", dict_config(server_log, access_log))
    server = run_rsasgi(APP, "--log-config", str(config))
    assert httpx.get(f"{server.url}/hello?x=1").text == "hello"
    assert httpx.get(f"{server.url}/app-log").text == "logged"

    (access,) = lines_of(access_log, "/hello")
    name, method, path, query, status, size, protocol, client, duration, message = access.split("|")
    assert (name, method, path, query, status, size, protocol) == (
        "rsasgi.access",
        "GET",
        "/hello",
        "x=1",
        "200",
        "5",
        "HTTP/1.1",
    ), access
    assert re.fullmatch(r"127\.0\.0\.1(:\d+)?", client), access
    assert float(duration) >= 0, access
    assert '"GET /hello?x=1 HTTP/1.1" 200' in message, access

    pid = server.proc.pid
    (listening,) = lines_of(server_log, "Listening on")
    assert listening.startswith(f"rsasgi.error|INFO|{pid}|Listening on http://127.0.0.1:")
    (app_line,) = lines_of(server_log, "a line from the app")
    assert app_line == f"app|WARNING|{pid}|a line from the app"
    # Access lines went to their own handler only (propagate is false).
    assert "rsasgi.access" not in server_log.read_text()


def test_a_logger_level_in_the_file_filters_rsasgi_lines(run_rsasgi, tmp_path):
    server_log = tmp_path / "server.log"
    config = dict_config(server_log)
    config["loggers"] = {"rsasgi.access": {"level": "WARNING"}}
    server = run_rsasgi(APP, "--log-config", str(write_json(tmp_path / "logging.json", config)))
    assert httpx.get(f"{server.url}/hello").status_code == 200
    assert httpx.get(f"{server.url}/app-log").status_code == 200
    lines_of(server_log, "a line from the app")
    # The access line of /hello came before the app's line, and was filtered out.
    assert "/hello" not in server_log.read_text()


def readme_example() -> dict:
    """The --log-config example of README.md, as the operator copies it."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    after = readme[readme.index("**`--log-config FILE`**") :]
    start = after.index('    {"version": 1,')
    return json.loads(after[start : after.index("\n\n", start)])


@pytest.mark.parametrize("access_level", [None, "WARNING"], ids=["readme", "access-warning"])
def test_loggers_the_file_leaves_be_keep_working(run_rsasgi, tmp_path, access_level):
    """The README's file names only rsasgi.access, with a handler and no level: its lines
    take --log-level's level (they took root's WARNING, so none was written), and
    rsasgi.error, which meets no handler on its way to root, still writes to stderr (its INFO
    lines, "Listening on" among them, met Python's last resort, which writes WARNING and
    above). A level the file gives is kept."""
    config = readme_example()
    if access_level:
        config["loggers"]["rsasgi.access"]["level"] = access_level
    server = run_rsasgi(APP, "--log-config", str(write_json(tmp_path / "logging.json", config)))
    assert httpx.get(f"{server.url}/hello?x=1").status_code == 200
    if access_level is None:
        access = wait_for_log(server, " GET /hello 200 ")
        assert re.search(r"127\.0\.0\.1:\d+ GET /hello 200 \d+\.\d{4}$", access, re.M), access
    assert server.stop() == 0
    log = server.output()
    pid = server.proc.pid
    listening = rf" INFO \[pid {pid}\] rsasgi\.error: Listening on http://127\.0\.0\.1:\d+ "
    assert re.search(listening, log), log
    assert f" INFO [pid {pid}] rsasgi.error: Stopped" in log, log
    assert ("/hello" in log) is (access_level is None), log


APP_CONFIGURING_LOGGING = {
    # Django's LOGGING without disable_existing_loggers: dictConfig's default, true, disables
    # every logger that exists when the app is imported, rsasgi.access (the file made it)
    # among them.
    "django": "import logging.config\n"
    "logging.config.dictConfig({'version': 1, 'handlers': {'console': {'class': "
    "'logging.StreamHandler'}}, 'loggers': {'django': {'handlers': ['console']}}})\n",
    # Flask's quick start: a root handler, added after the file was applied.
    "basic": "import logging, sys\n"
    "logging.basicConfig(stream=sys.stderr, level=logging.INFO, format='APP-ROOT %(message)s')\n",
}


@pytest.mark.parametrize("configures", sorted(APP_CONFIGURING_LOGGING))
def test_an_app_configuring_logging_at_import_neither_silences_nor_doubles_rsasgi_lines(
    run_rsasgi, tmp_path, configures
):
    """With the README's file: the app's dictConfig disabled rsasgi's loggers, and nothing
    of the server's was written again, access lines and tracebacks included; the app's root
    handler came on top of rsasgi's fallback to stderr, and every line was written twice."""
    (tmp_path / "configuring_app.py").write_text(
        APP_CONFIGURING_LOGGING[configures] + "async def app(scope, receive, send):\n"
        "    if scope['path'] == '/boom':\n"
        "        raise RuntimeError('boom from the app')\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': b'hello'})\n"
    )
    config = write_json(tmp_path / "logging.json", readme_example())
    server = run_rsasgi(
        "configuring_app:app", "--app-dir", str(tmp_path), "--lifespan", "off",
        "--log-config", str(config),
    )  # fmt: skip
    assert httpx.get(f"{server.url}/hello").status_code == 200
    assert httpx.get(f"{server.url}/boom").status_code == 500
    wait_for_log(server, " GET /hello 200 ", "RuntimeError: boom from the app")
    assert server.stop() == 0
    log = server.output()
    assert log.count("Listening on http://127.0.0.1:") == 1, log
    assert log.count("Exception in ASGI application") == 1, log
    assert log.count(" GET /hello 200 ") == 1, log


def test_a_logger_the_file_leaves_without_handlers_and_propagation_stays_silent(
    run_rsasgi, tmp_path
):
    """uvicorn's idiom for turning access lines off in a log config: no handlers, no
    propagation. rsasgi's fallback to stderr is for loggers the file does not name."""
    server_log = tmp_path / "server.log"
    config = dict_config(server_log)
    config["loggers"] = {"rsasgi.access": {"handlers": [], "propagate": False}}
    server = run_rsasgi(APP, "--log-config", str(write_json(tmp_path / "logging.json", config)))
    assert httpx.get(f"{server.url}/hello").status_code == 200
    assert httpx.get(f"{server.url}/app-log").status_code == 200
    lines_of(server_log, "a line from the app")
    assert server.stop() == 0
    assert "/hello" not in server.output() + server_log.read_text()


def test_ini_config_in_every_worker_and_the_supervisor(run_rsasgi, tmp_path):
    server_log = tmp_path / "server.log"
    config = tmp_path / "logging.ini"
    config.write_text(
        f"""\
[loggers]
keys = root

[handlers]
keys = console, file

[formatters]
keys = plain

[logger_root]
level = INFO
handlers = console, file

[handler_console]
class = StreamHandler
formatter = plain
args = (sys.stderr,)

[handler_file]
class = FileHandler
formatter = plain
args = ({str(server_log)!r},)

[formatter_plain]
format = %(name)s|%(levelname)s|%(process)d|%(message)s
"""
    )
    server = run_rsasgi(WSGI_APP, "--log-config", str(config), "--workers", "2")
    booted = lines_of(server_log, "Started worker", count=2)
    supervisor_pid = server.proc.pid
    worker_pids = {int(line.split("|")[2]) for line in lines_of(server_log, "Starting rsasgi", 2)}
    assert len(worker_pids) == 2 and supervisor_pid not in worker_pids, worker_pids
    # The supervisor's own lines come from its own process.
    assert all(line.split("|")[2] == str(supervisor_pid) for line in booted), booted

    for _ in range(4):
        assert httpx.get(f"{server.url}/errors").text == "logged"
    errors = lines_of(server_log, "a line for wsgi.errors", count=4)
    assert all(line.startswith("wsgi.errors|ERROR|") for line in errors), errors
    access = lines_of(server_log, "rsasgi.access|INFO|", count=4)
    assert {int(line.split("|")[2]) for line in access} <= worker_pids


def test_yaml_config(run_rsasgi, tmp_path):
    pytest.importorskip("yaml")
    server_log = tmp_path / "server.log"
    config = tmp_path / "logging.yaml"
    config.write_text(
        f"""\
version: 1
formatters:
  plain:
    format: "%(name)s|%(levelname)s|%(message)s"
handlers:
  console: {{class: logging.StreamHandler, formatter: plain, stream: ext://sys.stderr}}
  file: {{class: logging.FileHandler, formatter: plain, filename: {json.dumps(str(server_log))}}}
root:
  level: INFO
  handlers: [console, file]
"""
    )
    server = run_rsasgi(APP, "--log-config", str(config))
    assert httpx.get(f"{server.url}/hello").status_code == 200
    (line,) = lines_of(server_log, '"GET /hello HTTP/1.1" 200')
    assert line.startswith("rsasgi.access|INFO|"), line


@pytest.mark.parametrize("workers", [None, 1], ids=["single", "workers-1"])
def test_usr1_reopens_the_file_handlers_after_a_rename(run_rsasgi, tmp_path, workers):
    """logrotate renames the file a logging.FileHandler writes, then sends SIGUSR1: every
    process opens it again, as gunicorn does (they used to keep writing to the rotated file,
    and the log said there was no file to reopen)."""
    server_log = tmp_path / "server.log"
    config = write_json(tmp_path / "logging.json", dict_config(server_log))
    extra = ["--workers", str(workers)] if workers else []
    server = run_rsasgi(APP, "--log-config", str(config), *extra)
    processes = 1 + (workers or 0)
    assert httpx.get(f"{server.url}/hello?before").status_code == 200
    lines_of(server_log, "/hello?before")

    rotated = tmp_path / "server.log.1"
    server_log.rename(rotated)
    os.kill(server.proc.pid, signal.SIGUSR1)
    lines_of(server_log, f"Received SIGUSR1: reopened {server_log}", count=processes)
    assert httpx.get(f"{server.url}/hello?after").status_code == 200
    (after,) = lines_of(server_log, "/hello?after")
    assert after.startswith("rsasgi.access|INFO|"), after
    assert "?after" not in rotated.read_text()


def test_a_handler_that_blocks_holds_up_no_request(run_rsasgi, tmp_path):
    """The first access record blocks its handler for good, as a handler writing to a
    log reader that stopped reading would: requests are still answered (the app's own logging
    through that handler would block, as in any Python process), and the process still stops
    in time on SIGTERM."""
    stuck_log = tmp_path / "stuck.log"
    config = {
        "version": 1,
        "formatters": {"plain": {"format": "%(name)s|%(levelname)s|%(message)s"}},
        "handlers": {
            "console": CONSOLE,
            "stuck": {
                "()": "log_config_app.StuckOnAccess",
                "filename": str(stuck_log),
                "formatter": "plain",
            },
        },
        "root": {"handlers": ["console", "stuck"], "level": "INFO"},
    }
    # The handler's class is in the app directory, which the log config needs on sys.path.
    server = run_rsasgi(
        APP,
        "--log-config",
        str(write_json(tmp_path / "logging.json", config)),
        env={"PYTHONPATH": str(Path(__file__).parent / "apps")},
    )
    lines_of(stuck_log, "Listening on")
    with httpx.Client(base_url=server.url) as client:
        for _ in range(200):
            assert client.get("/hello").status_code == 200
    assert server.proc.poll() is None
    server.proc.send_signal(signal.SIGTERM)
    assert server.wait_exit(timeout=20) == 0


def test_the_supervisor_exits_when_nobody_reads_its_stderr(tmp_path):
    """A console handler on a pipe nobody reads blocks for good once the pipe is full: on
    SIGTERM every process still leaves (the lines its handlers did not take are dropped,
    and so is the note saying so when stderr takes nothing either)."""
    config = {
        "version": 1,
        "handlers": {"console": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["console"], "level": "INFO"},
    }
    port = free_port()
    unread, stderr = os.pipe()
    # One page: a few lines fill it.
    fcntl.fcntl(stderr, getattr(fcntl, "F_SETPIPE_SZ", 1031), 4096)
    capacity = fcntl.fcntl(stderr, getattr(fcntl, "F_GETPIPE_SZ", 1032))
    try:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "rsasgi", "--app-dir", str(APPS), APP),
                *("--workers", "2", "--port", str(port), "--timeout-graceful-shutdown", "1"),
                *("--log-config", str(write_json(tmp_path / "logging.json", config))),
            ],
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            start_new_session=True,
        )
    finally:
        os.close(stderr)
    try:

        def queued() -> int:
            count = bytearray(4)
            fcntl.ioctl(unread, termios.FIONREAD, count)
            return int.from_bytes(count, sys.byteorder)

        def answered_with_the_pipe_full() -> bool:
            try:
                answered = httpx.get(f"http://127.0.0.1:{port}/hello", timeout=5).status_code
            except httpx.TransportError:
                return False
            # A line longer than what is left of the pipe blocks its writer.
            return answered == 200 and queued() > capacity - 200

        wait_for(answered_with_the_pipe_full, timeout=20, message="the pipe to fill")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        kill_process_group(process)
        os.close(unread)


def test_bad_files_are_one_line_and_exit_2(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"version": 1, "handlers": ')
    unknown_class = write_json(
        tmp_path / "unknown.json",
        {"version": 1, "handlers": {"h": {"class": "logging.NoSuchHandler"}}},
    )
    not_a_mapping = write_json(tmp_path / "list.json", [1, 2])
    cases = [
        (broken, "JSONDecodeError"),
        (unknown_class, "logging.NoSuchHandler"),
        (not_a_mapping, "not a dictConfig mapping"),
    ]
    for path, reason in cases:
        for check in ([], ["--check-config"]):
            result = cli(
                APP,
                "--app-dir",
                str(Path(__file__).parent / "apps"),
                *check,
                "--log-config",
                str(path),
                "--port",
                "0",
            )
            assert result.returncode == 2, (path, check, result.stderr)
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1, result.stderr
            assert lines[0].startswith(f"rsasgi: Cannot apply --log-config {path}: "), lines
            assert reason in lines[0], lines

    missing = cli(APP, "--log-config", str(tmp_path / "missing.json"))
    assert missing.returncode == 2
    assert "--log-config" in missing.stderr and "missing.json" in missing.stderr


def test_check_config_accepts_a_good_file(tmp_path):
    config = write_json(tmp_path / "logging.json", dict_config(tmp_path / "server.log"))
    result = cli(
        APP,
        "--app-dir",
        str(Path(__file__).parent / "apps"),
        "--check-config",
        "--log-config",
        str(config),
    )
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout


def test_lines_logged_just_before_exit_reach_the_handlers(run_rsasgi, tmp_path):
    """The shutdown lines are written before the process leaves (the queue is drained)."""
    server_log = tmp_path / "server.log"
    config = write_json(tmp_path / "logging.json", dict_config(server_log))
    server = run_rsasgi(APP, "--log-config", str(config))
    assert httpx.get(f"{server.url}/hello").status_code == 200
    os.kill(server.proc.pid, signal.SIGTERM)
    assert server.wait_exit(timeout=20) == 0
    text = server_log.read_text()
    assert "shutting down gracefully" in text and text.rstrip().endswith("|Stopped"), text
