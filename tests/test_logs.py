"""Logs end to end: logger names, --access-log-format with gunicorn's atoms, --log-format json,
--access-logfile and --error-logfile with logrotate's rename + SIGUSR1 (also while the app
loads), --access-logfile and --log-level, a log reader that stalls, request IDs, and the closing
line of a WebSocket; against tests/apps/logs_app.py (ASGI), logs_wsgi.py (WSGI) and
logs_slow_import.py (logs_wsgi, imported when the test says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import pwd
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from conftest import (
    APPS,
    LISTENING,
    cli,
    free_port,
    kill_process_group,
    read_response,
    wait_for,
    wait_for_log,
)
from websockets.asyncio.client import connect

APP = "logs_app:app"
WSGI_APP = "logs_wsgi:app"
SLOW_IMPORT_APP = "logs_slow_import:app"

#: Every atom, separated by bars so that a value cannot run into the next.
EVERY_ATOM = (
    "%(h)s|%(l)s|%(u)s|%(t)s|%(r)s|%(m)s|%(U)s|%(q)s|%(H)s|%(s)s|%(B)s|%(b)s|%(f)s|%(a)s|"
    "%(T)s|%(M)s|%(D)s|%(L)s|%(p)s|%({X-Custom}i)s|%({missing}i)s|%({x-served-by}o)s|"
    "%({content-type}o)s|%({LOGS_TEST_VARIABLE}e)s"
)
#: Gunicorn's %(t)s: [10/Oct/2000:13:55:36 -0700].
CLF_TIME = r"\[\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\]"


def lines_with(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


def logged_line(server, needle: str) -> str:
    """Waits for `needle` in the server's output; the one line that has it."""
    (line,) = lines_with(wait_for_log(server, needle), needle)
    return line


def json_lines(text: str) -> list[dict]:
    """Every line of `text` as JSON; fails on one that is not an object."""
    records = []
    for line in text.splitlines():
        record = json.loads(line)
        assert isinstance(record, dict), line
        records.append(record)
    return records


def wait_for_file(path: Path, needle: str, count: int = 1) -> str:
    def found() -> str:
        text = path.read_text(errors="replace") if path.exists() else ""
        return text if text.count(needle) >= count else ""

    return wait_for(found, message=f"{needle!r} x{count} in {path}")


def get_when_up(url: str, proc: subprocess.Popen, timeout: float = 20.0) -> httpx.Response:
    """GET `url` once the server answers there (for a server whose log does not say when it
    listens)."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"rsasgi exited with {proc.returncode}"
        try:
            return httpx.get(url, timeout=10)
        except httpx.TransportError:
            assert time.monotonic() < deadline, f"no answer from {url} within {timeout}s"
            time.sleep(0.05)


def url_in(log: Path) -> str:
    """The server's URL, from the "Listening on" line in `log` (waited for)."""
    return f"http://127.0.0.1:{LISTENING.search(wait_for_file(log, 'Listening on'))[2]}"


# Logger names and labels.


def test_access_and_server_lines_are_named_as_gunicorns(run_rsasgi):
    server = run_rsasgi(APP)
    assert httpx.get(f"{server.url}/hello").status_code == 200
    access = logged_line(server, '"GET /hello HTTP/1.1"')
    assert re.search(
        r"^\S+\s+INFO rsasgi\.access: 127\.0\.0\.1:\d+ - \"GET /hello HTTP/1\.1\" 200 5 \"-\" "
        r"\"python-httpx/[\d.]+\" \d+\.\d{3}ms$",
        access,
    ), access
    listening = logged_line(server, "Listening on")
    assert re.search(r"^\S+\s+INFO rsasgi\.error: Listening on http://", listening), listening


def test_wsgi_errors_lines_are_named_after_the_key(run_rsasgi):
    server = run_rsasgi(WSGI_APP)
    assert httpx.get(f"{server.url}/errors").text == "logged"
    line = logged_line(server, "a line for wsgi.errors")
    assert re.search(r"^\S+\s+ERROR wsgi\.errors: a line for wsgi\.errors$", line), line


# --access-log-format.


def test_every_atom_of_a_custom_format(run_rsasgi):
    server = run_rsasgi(
        APP,
        "--access-log-format",
        EVERY_ATOM,
        env={"LOGS_TEST_VARIABLE": "from-the-environment"},
    )
    response = httpx.get(
        f"{server.url}/hello?x=1",
        auth=("alice", "secret"),
        headers={"Referer": "https://example.com/", "User-Agent": "logs-test", "X-Custom": "c-1"},
    )
    assert response.status_code == 200
    line = logged_line(server, "|GET /hello?x=1 HTTP/1.1|")
    # The line is the format's alone: no time, level or logger in front.
    match = re.fullmatch(
        rf"127\.0\.0\.1\|-\|alice\|(?P<t>{CLF_TIME})\|GET /hello\?x=1 HTTP/1\.1\|GET\|/hello\|x=1\|"
        rf"HTTP/1\.1\|200\|5\|5\|https://example\.com/\|logs-test\|(?P<T>\d+)\|(?P<M>\d+)\|"
        rf"(?P<D>\d+)\|(?P<L>\d+\.\d{{6}})\|<{server.proc.pid}>\|c-1\|-\|logs-app\|text/plain\|"
        r"from-the-environment",
        line,
    )
    assert match, line
    micros = int(match["D"])
    assert int(match["M"]) == micros // 1000 and int(match["T"]) == micros // 1_000_000
    assert match["L"] == f"{micros // 1_000_000}.{micros % 1_000_000:06d}"
    arrived = datetime.strptime(match["t"], "[%d/%b/%Y:%H:%M:%S %z]")
    assert abs(datetime.now(timezone.utc) - arrived) < timedelta(minutes=5), match["t"]


def test_b_is_a_dash_for_an_empty_body_and_quotes_are_escaped(run_rsasgi):
    server = run_rsasgi(APP, "--access-log-format", '%(U)s %(s)s %(B)s %(b)s "%(a)s"')
    assert httpx.get(f"{server.url}/empty", headers={"User-Agent": 'a "b"'}).status_code == 204
    log = wait_for_log(server, "/empty 204")
    assert lines_with(log, "/empty 204") == [r'/empty 204 0 - "a \x22b\x22"']


def test_combined_format(run_rsasgi):
    server = run_rsasgi(APP, "--access-log-format", "combined")
    headers = {"Referer": "https://example.com/from", "User-Agent": "Mozilla/5.0 (X11)"}
    assert httpx.get(f"{server.url}/hello", headers=headers).status_code == 200
    line = logged_line(server, '"GET /hello HTTP/1.1"')
    assert re.fullmatch(
        rf'127\.0\.0\.1 - - {CLF_TIME} "GET /hello HTTP/1\.1" 200 5 "https://example\.com/from" '
        r'"Mozilla/5\.0 \(X11\)"',
        line,
    ), line


def test_an_unknown_atom_is_one_line_and_exit_2():
    result = cli(APP, "--access-log-format", '%(h)s "%(r)s" %(z)s')
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert "unknown atom %(z)s" in result.stderr, result.stderr


# --log-format json.


def test_json_lines_for_server_and_access(run_rsasgi):
    server = run_rsasgi(APP, "--log-format", "json")
    headers = {"Referer": "https://example.com/", "User-Agent": "logs-test"}
    assert httpx.get(f"{server.url}/hello?x=1", headers=headers).status_code == 200
    wait_for_log(server, '"logger":"rsasgi.access"')
    records = json_lines(server.output())
    (access,) = [r for r in records if r["logger"] == "rsasgi.access"]
    assert {
        key: access[key]
        for key in (
            "level",
            "method",
            "path",
            "query",
            "status",
            "bytes",
            "protocol",
            "user_agent",
            "referer",
            "worker",
            "pid",
        )
    } == {
        "level": "INFO",
        "method": "GET",
        "path": "/hello",
        "query": "x=1",
        "status": 200,
        "bytes": 5,
        "protocol": "HTTP/1.1",
        "user_agent": "logs-test",
        "referer": "https://example.com/",
        "worker": None,
        "pid": server.proc.pid,
    }
    assert isinstance(access["duration"], float) and access["duration"] >= 0
    assert re.fullmatch(r"127\.0\.0\.1:\d+", access["client"]), access
    assert '"GET /hello?x=1 HTTP/1.1" 200 5' in access["message"]
    (listening,) = [r for r in records if r["message"].startswith("Listening on")]
    assert listening["logger"] == "rsasgi.error" and listening["level"] == "INFO"
    for record in records:
        stamp = datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00"))
        assert stamp.tzinfo is not None, record


def test_json_wsgi_errors_line(run_rsasgi):
    server = run_rsasgi(WSGI_APP, "--log-format", "json")
    assert httpx.get(f"{server.url}/errors").text == "logged"
    wait_for_log(server, "a line for wsgi.errors")
    (line,) = [r for r in json_lines(server.output()) if r["logger"] == "wsgi.errors"]
    assert line["level"] == "ERROR" and line["message"] == "a line for wsgi.errors"


def test_json_lines_with_two_workers(run_rsasgi):
    server = run_rsasgi(APP, "--log-format", "json", "--workers", "2")
    wait_for(lambda: server.output().count("Serving on") == 2, server=server, message="2 workers")

    def workers_seen() -> set[int]:
        httpx.get(f"{server.url}/hello")
        records = json_lines(server.output())
        return {r["worker"] for r in records if r["logger"] == "rsasgi.access"} == {1, 2}

    wait_for(workers_seen, timeout=20, server=server, message="access lines from both workers")
    records = json_lines(server.output())
    started = {
        int(match[1]): int(match[2])
        for r in records
        if (match := re.match(r"Started worker (\d+) \(pid (\d+)\)", r["message"]))
    }
    assert set(started) == {1, 2}
    for record in records:
        if record["worker"] is None:
            assert record["pid"] == server.proc.pid, record
            assert record["logger"] == "rsasgi.error", record
        else:
            assert started[record["worker"]] == record["pid"], record


# --access-logfile and --error-logfile.


class SplitServer:
    """rsasgi with stdout and stderr in separate files."""

    def __init__(self, tmp_path: Path, *args: str, port: int = 0):
        self.stdout = tmp_path / "stdout.txt"
        self.stderr = tmp_path / "stderr.txt"
        with open(self.stdout, "wb") as out, open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "rsasgi", APP, "--app-dir", str(APPS)),
                    *("--port", str(port), *args),
                ],
                cwd=tmp_path,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def url(self, log: Path) -> str:
        text = wait_for_file(log, "Listening on")
        return f"http://127.0.0.1:{LISTENING.search(text).group(2)}"


@pytest.fixture
def split_server(tmp_path):
    servers = []

    def start(*args: str, port: int = 0) -> SplitServer:
        servers.append(SplitServer(tmp_path, *args, port=port))
        return servers[-1]

    yield start
    for server in servers:
        kill_process_group(server.proc)


def test_access_log_on_stdout_and_server_log_on_stderr(split_server):
    server = split_server("--access-logfile", "-")
    url = server.url(server.stderr)
    assert httpx.get(f"{url}/hello").status_code == 200
    out = wait_for_file(server.stdout, '"GET /hello HTTP/1.1" 200 5')
    assert "rsasgi.access" in out and "Listening on" not in out
    assert "rsasgi.access" not in server.stderr.read_text()


def test_error_logfile_takes_the_server_log(split_server, tmp_path):
    error_log = tmp_path / "error.log"
    server = split_server("--error-logfile", str(error_log), "--access-logfile", "-")
    url = server.url(error_log)
    assert httpx.get(f"{url}/hello").status_code == 200
    wait_for_file(server.stdout, '"GET /hello HTTP/1.1" 200 5')
    assert "rsasgi.access" not in error_log.read_text()
    assert server.stderr.read_text() == ""


@pytest.mark.parametrize("workers", [None, 2], ids=["single", "workers-2"])
def test_access_logfile_is_reopened_on_usr1_after_a_rename(run_rsasgi, tmp_path, workers):
    access_log = tmp_path / "access.log"
    extra = ["--workers", str(workers)] if workers else []
    server = run_rsasgi(APP, "--access-logfile", str(access_log), *extra)
    processes = 1 + (workers or 0)
    if workers:
        wait_for(lambda: server.output().count("Serving on") == workers, server=server)
    assert httpx.get(f"{server.url}/hello?before").status_code == 200
    wait_for_file(access_log, "GET /hello?before ")
    assert "rsasgi.access" not in server.output()

    rotated = tmp_path / "access.log.1"
    access_log.rename(rotated)
    os.kill(server.proc.pid, signal.SIGUSR1)
    wait_for(
        lambda: server.output().count(f"reopened --access-logfile {access_log}") == processes,
        server=server,
        message=f"{processes} processes to reopen the access log",
    )
    for _ in range(4):
        assert httpx.get(f"{server.url}/hello?after").status_code == 200
    wait_for_file(access_log, "GET /hello?after ", count=4)
    assert "?after" not in rotated.read_text()


def test_an_access_logfile_that_cannot_be_opened_is_one_line(tmp_path):
    result = cli(APP, "--app-dir", str(APPS), "--access-logfile", str(tmp_path / "no" / "a.log"))
    assert result.returncode == 1
    assert "Cannot open --access-logfile" in result.stderr
    assert "No such file or directory" in result.stderr


@pytest.mark.parametrize(
    "level, destination",
    [("warning", "file"), ("error", "-")],
    ids=["warning-file", "error-stdout"],
)
def test_access_logfile_is_written_whatever_the_log_level(
    split_server, tmp_path, level, destination
):
    """--access-logfile is its own destination, as gunicorn's: a --log-level above info
    quiets the server log, not the access lines (they used to be dropped too)."""
    access_log = tmp_path / "access.log" if destination == "file" else None
    port = free_port()
    server = split_server(
        "--log-level", level, "--access-logfile", str(access_log or destination), port=port
    )
    assert get_when_up(f"http://127.0.0.1:{port}/hello", server.proc).status_code == 200
    text = wait_for_file(access_log or server.stdout, '"GET /hello HTTP/1.1" 200 5')
    (line,) = lines_with(text, "/hello")
    assert "rsasgi.access" in line, line
    # The server log still follows --log-level.
    assert "Listening on" not in server.stderr.read_text()
    assert "rsasgi.access" not in server.stderr.read_text()


def test_without_access_logfile_access_lines_follow_the_log_level(run_rsasgi):
    """With the server log, access lines are info lines, as uvicorn's: --log-level warning
    drops them."""
    port = free_port()
    server = run_rsasgi(APP, "--log-level", "warning", "--port", str(port), wait=False)
    assert get_when_up(f"http://127.0.0.1:{port}/hello", server.proc).status_code == 200
    # Every line queued is written before the process exits.
    assert server.stop() == 0
    assert "/hello" not in server.output()


# SIGUSR1 while the app loads: logs_slow_import's import waits for the test.


@pytest.fixture
def slow_import(markers):
    """The environment for logs_slow_import, the function that waits until its import has
    begun, and the one that lets the import finish."""
    importing, go = markers / "importing", markers / "go"
    env = {"LOGS_IMPORTING": str(importing), "LOGS_IMPORT_GO": str(go)}

    def wait_importing() -> None:
        wait_for(importing.exists, timeout=20, message="the app's import to begin")

    return env, wait_importing, go.touch


def test_a_worker_booting_at_usr1_reopens_its_files_once_serving(run_rsasgi, tmp_path, slow_import):
    """logrotate renames the files and sends SIGUSR1 while the worker is still importing the
    app: it opened its files before the rename, and cannot take the signal yet. It is sent it
    once it serves, and its lines go to the new files (it used to keep the rotated ones)."""
    env, wait_importing, finish_import = slow_import
    log_file, access_log = tmp_path / "error.log", tmp_path / "access.log"
    server = run_rsasgi(
        SLOW_IMPORT_APP,
        *("--workers", "1", "--log-file", str(log_file), "--access-logfile", str(access_log)),
        env=env,
        wait=False,
    )
    url = url_in(log_file)
    wait_importing()
    rotated_log, rotated_access = tmp_path / "error.log.1", tmp_path / "access.log.1"
    log_file.rename(rotated_log)
    access_log.rename(rotated_access)
    os.kill(server.proc.pid, signal.SIGUSR1)
    reopened = f"Received SIGUSR1: reopened --log-file {log_file} and --access-logfile {access_log}"
    (supervisor,) = lines_with(wait_for_file(log_file, reopened), reopened)
    assert f"[supervisor pid {server.proc.pid}]" in supervisor, supervisor

    finish_import()
    lines = lines_with(wait_for_file(log_file, reopened, count=2), reopened)
    assert "[worker 1 pid " in lines[1], lines
    assert httpx.get(f"{url}/errors").text == "logged"
    wait_for_file(log_file, "a line for wsgi.errors")
    wait_for_file(access_log, '"GET /errors HTTP/1.1" 200')
    assert "wsgi.errors" not in rotated_log.read_text()
    assert "/errors" not in rotated_access.read_text()


def test_usr1_while_the_app_loads_is_handled_once_serving(run_rsasgi, tmp_path, slow_import):
    """One process, no supervisor: SIGUSR1 (logrotate's postrotate) while the app is still
    being imported is remembered, and the log file reopened once serving. It used to kill the
    process (the default action, with no handler installed yet)."""
    env, wait_importing, finish_import = slow_import
    log_file, rotated = tmp_path / "error.log", tmp_path / "error.log.1"
    server = run_rsasgi(SLOW_IMPORT_APP, "--log-file", str(log_file), env=env, wait=False)
    wait_importing()
    log_file.rename(rotated)
    os.kill(server.proc.pid, signal.SIGUSR1)
    finish_import()

    def listening_or_gone() -> bool:
        text = log_file.read_text(errors="replace") if log_file.exists() else ""
        return "Listening on" in text or server.proc.poll() is not None

    wait_for(listening_or_gone, timeout=20, message=f"'Listening on' in {log_file}")
    assert server.proc.poll() is None, f"rsasgi exited with {server.proc.returncode}"
    assert f"Received SIGUSR1: reopened --log-file {log_file}" in log_file.read_text()
    assert httpx.get(f"{url_in(log_file)}/errors").text == "logged"
    wait_for_file(log_file, "a line for wsgi.errors")
    assert "wsgi.errors" not in rotated.read_text()
    assert server.stop() == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="--group needs rsasgi started as root")
def test_files_reopened_by_the_supervisor_go_to_the_workers_group(run_rsasgi, tmp_path):
    """The files a SIGUSR1 reopen creates are given to the workers' account, as the first ones
    are at start, so that the workers can open them again too (they used to stay root's).
    --group alone: the workers stay root, so they can run this Python (under /root)."""
    gid = pwd.getpwnam("nobody").pw_gid
    assert gid != 0
    log_file, access_log = tmp_path / "error.log", tmp_path / "access.log"
    server = run_rsasgi(
        APP,
        *("--workers", "1", "--group", str(gid)),
        *("--log-file", str(log_file), "--access-logfile", str(access_log)),
        wait=False,
    )
    wait_for_file(log_file, "Serving on")
    assert (log_file.stat().st_gid, access_log.stat().st_gid) == (gid, gid)

    log_file.rename(tmp_path / "error.log.1")
    access_log.rename(tmp_path / "access.log.1")
    os.kill(server.proc.pid, signal.SIGUSR1)
    wait_for_file(log_file, "Received SIGUSR1: reopened", count=2)
    assert (log_file.stat().st_gid, access_log.stat().st_gid) == (gid, gid)
    assert (log_file.stat().st_uid, access_log.stat().st_uid) == (0, 0)


@pytest.mark.skipif(os.geteuid() != 0, reason="the danger is root following the link")
def test_root_does_not_follow_a_link_planted_in_a_directory_another_account_writes(
    run_rsasgi, tmp_path
):
    """A log directory the app's account may write (so that its workers can reopen the files)
    let that account plant a link where logrotate had moved the file away: on SIGUSR1 root
    appended to the link's target, and gave it to the account (CVE-2016-1247's pattern)."""
    nobody = pwd.getpwnam("nobody")
    logs = tmp_path / "logs"
    logs.mkdir()
    os.chown(logs, nobody.pw_uid, nobody.pw_gid)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o600)
    log_file, access_log = logs / "error.log", logs / "access.log"
    # At start: a link is refused with a line that says why.
    log_file.symlink_to(victim)
    result = cli(APP, "--app-dir", str(APPS), "--port", "0", "--log-file", str(log_file))
    assert result.returncode == 1
    assert "goes through a symbolic link, and through a directory other accounts" in (result.stderr)
    log_file.unlink()
    # On SIGUSR1 after a rotation: the old file stays in use.
    server = run_rsasgi(
        APP,
        *("--workers", "1", "--group", str(nobody.pw_gid)),
        *("--log-file", str(log_file), "--access-logfile", str(access_log)),
        wait=False,
    )
    wait_for_file(log_file, "Serving on")
    log_file.rename(logs / "error.log.1")
    log_file.symlink_to(victim)
    access_log.rename(logs / "access.log.1")
    access_log.symlink_to(tmp_path / "made-by-root")
    os.kill(server.proc.pid, signal.SIGUSR1)
    wait_for_file(logs / "error.log.1", "cannot reopen --log-file")
    assert victim.read_text() == "precious\n"
    assert (victim.stat().st_uid, victim.stat().st_gid, victim.stat().st_mode & 0o777) == (
        0,
        0,
        0o600,
    )
    assert not (tmp_path / "made-by-root").exists()
    assert server.proc.poll() is None


@pytest.mark.skipif(os.geteuid() != 0, reason="the danger is root following the link")
def test_root_does_not_follow_a_link_to_a_directory_planted_above_the_log(run_rsasgi, tmp_path):
    """The link at a directory on the way, not at the file: logs/ moved away and replaced by
    a link to a directory of root's, where root then appended to, and gave away, its file."""
    nobody = pwd.getpwnam("nobody")
    app = tmp_path / "app"
    (app / "logs").mkdir(parents=True)
    for path in (app, app / "logs"):
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    roots = tmp_path / "roots"
    roots.mkdir()
    victim = roots / "error.log"
    victim.write_text("precious\n")
    log_file = app / "logs" / "error.log"
    server = run_rsasgi(
        APP,
        *("--workers", "1", "--group", str(nobody.pw_gid), "--log-file", str(log_file)),
        wait=False,
    )
    wait_for_file(log_file, "Serving on")
    (app / "logs").rename(app / "logs.1")
    (app / "logs").symlink_to(roots)
    os.kill(server.proc.pid, signal.SIGUSR1)
    wait_for_file(app / "logs.1" / "error.log", "cannot reopen --log-file")
    assert victim.read_text() == "precious\n"
    assert (victim.stat().st_uid, victim.stat().st_gid) == (0, 0)
    assert server.proc.poll() is None


def test_a_fifo_nobody_reads_is_an_error_not_a_hang(run_rsasgi, tmp_path):
    """Opening a FIFO for writing waits for a reader: at start the server hung without a
    word, and on SIGUSR1 (after the reader left) the event loop that reopens the file stopped
    serving until a reader came back."""
    fifo = tmp_path / "error.fifo"
    os.mkfifo(fifo)
    result = subprocess.run(
        [sys.executable, "-m", "rsasgi", APP, "--app-dir", str(APPS), "--port", "0"]
        + ["--log-file", str(fifo)],
        capture_output=True,
        text=True,
        timeout=20,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1
    assert "a FIFO with no process reading it" in result.stderr
    # The access log on a FIFO whose reader leaves, then SIGUSR1: still serving.
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    server = run_rsasgi(APP, "--access-logfile", str(fifo))
    assert httpx.get(f"{server.url}/hello").status_code == 200
    os.close(reader)
    os.kill(server.proc.pid, signal.SIGUSR1)
    wait_for_log(server, "cannot reopen --access-logfile")
    assert httpx.get(f"{server.url}/hello", timeout=5).status_code == 200


def test_relative_log_files_are_reopened_where_they_were_after_the_app_moved(run_rsasgi, tmp_path):
    """The app changed directory at import: SIGUSR1 reopened `--log-file err.log` relative to
    the app's directory, so the lines went to another file than the one rotated."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "moving_app.py").write_text(
        "import os\n"
        "os.chdir(os.path.join(os.path.dirname(__file__), 'elsewhere'))\n"
        "async def app(scope, receive, send):\n"
        "    if scope['type'] != 'http':\n"
        "        return\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': b'ok'})\n"
    )
    server = run_rsasgi(
        "moving_app:app",
        *("--app-dir", str(tmp_path), "--log-file", "err.log", "--access-logfile", "access.log"),
        cwd=tmp_path,
        wait=False,
    )
    url = url_in(tmp_path / "err.log")
    (tmp_path / "err.log").rename(tmp_path / "err.log.1")
    (tmp_path / "access.log").rename(tmp_path / "access.log.1")
    os.kill(server.proc.pid, signal.SIGUSR1)
    wait_for_file(tmp_path / "err.log", "Received SIGUSR1: reopened")
    assert httpx.get(f"{url}/after").status_code == 200
    wait_for_file(tmp_path / "access.log", "GET /after")
    assert not (tmp_path / "elsewhere" / "access.log").exists()


# A log reader that stalls: the queue of lines fills up, and later lines are dropped.


def read_log(fd: int, idle: float, timeout: float = 20.0) -> str:
    """Reads the pipe `fd` until nothing came for `idle` seconds, or it closed."""
    deadline = time.monotonic() + timeout
    data = bytearray()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], idle)
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")


def read_log_until(fd: int, needle: str, timeout: float = 20.0) -> str:
    """Reads the pipe `fd` until `needle` came; returns all it read."""
    deadline = time.monotonic() + timeout
    text = ""
    while needle not in text:
        assert time.monotonic() < deadline, f"no {needle!r} within {timeout}s: {text[-2000:]!r}"
        text += read_log(fd, idle=0.1, timeout=1.0)
    return text


@pytest.fixture
def piped_server(tmp_path):
    """rsasgi serving logs_wsgi, its log (stderr, and stdout unless `stdout` is given) going
    into a one-page pipe the test reads only when it says so. `start` returns the process,
    the pipe's reading end and the port, once the server listens."""
    started = []

    def start(stdout: int | None = None) -> tuple[subprocess.Popen, int, int]:
        log, write = os.pipe()
        fcntl.fcntl(write, getattr(fcntl, "F_SETPIPE_SZ", 1031), 4096)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "rsasgi", WSGI_APP, "--app-dir", str(APPS), "--port", "0"],
                cwd=tmp_path,
                stdout=write if stdout is None else stdout,
                stderr=write,
                stdin=subprocess.DEVNULL,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
                start_new_session=True,
            )
        finally:
            os.close(write)
        started.append((proc, log))
        text = read_log_until(log, "Listening on")
        return proc, log, int(LISTENING.search(text)[2])

    yield start
    for proc, log in started:
        kill_process_group(proc)
        os.close(log)


def test_the_process_leaves_on_sigterm_with_the_apps_output_stuck_in_a_full_pipe(tmp_path):
    """The app printed (Python buffers stdout when it is a pipe) and nobody reads the pipe,
    which is full: the exit's flush of that buffer waited for good, and SIGTERM never ended
    the process. Now the flush has a second."""
    (tmp_path / "printing.py").write_text(
        "async def app(scope, receive, send):\n"
        "    if scope['type'] != 'http':\n"
        "        return\n"
        "    print('x' * 100)\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': b'printed'})\n"
    )
    log, write = os.pipe()
    fcntl.fcntl(write, getattr(fcntl, "F_SETPIPE_SZ", 1031), 4096)
    os.set_blocking(write, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write, b"." * 4096)  # full before the server starts
    os.set_blocking(write, True)
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rsasgi", "printing:app", "--app-dir", str(tmp_path)]
        + ["--port", str(port), "--log-level", "warning"],
        stdout=write,
        stderr=write,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    os.close(write)
    try:
        response = get_when_up(f"http://127.0.0.1:{port}/", proc)
        assert response.text == "printed"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        kill_process_group(proc)
        os.close(log)


@pytest.mark.parametrize("stdout", ["with-stderr", "closed"])
def test_the_process_leaves_on_sigterm_with_its_log_queue_full(piped_server, stdout):
    """Nobody reads the log and its queue is full when SIGTERM comes: the process still exits
    with 0. The writer thread cannot take the shutdown, and its guard then printed to stdout:
    that blocked for good with stdout on the stalled pipe, and panicked with stdout a closed
    pipe (the log is read again after a while then, so that the panic comes out)."""
    if stdout == "closed":
        gone, closed = os.pipe()
        os.close(gone)
        try:
            proc, log, port = piped_server(stdout=closed)
        finally:
            os.close(closed)
    else:
        proc, log, port = piped_server()
    # Far more than the queue (16384 lines) and the pipe hold.
    assert httpx.get(f"http://127.0.0.1:{port}/lines?20000", timeout=30).text == "logged"
    proc.send_signal(signal.SIGTERM)
    unread_for = 20 if stdout == "with-stderr" else 5
    try:
        code = proc.wait(unread_for)
    except subprocess.TimeoutExpired:
        code = None
    # Reading the log again lets a process blocked on it go on, and shows what it wrote.
    written = read_log(log, idle=5)
    if code is None and stdout == "closed":
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = proc.wait(20)
    # What it wrote but the app's lines.
    tail = "\n".join(line for line in written.splitlines() if "wsgi.errors line" not in line)
    assert code is not None, f"rsasgi still running {unread_for} s after SIGTERM: {tail}"
    assert "PanicException" not in written and "panicked" not in written, tail
    assert code == 0, tail


def test_the_dropped_note_counts_every_line_dropped(piped_server):
    """Nobody reads the log while a request writes 40,000 lines: the queue keeps what it can
    and drops the rest. Once the log is read again, the note(s) say how many were dropped:
    with the lines that got through, every line is accounted for. (A note that found the
    queue still full was dropped, and counted as a line: the note that got through said 2.)"""
    proc, log, port = piped_server()
    total = 40_000
    assert httpx.get(f"http://127.0.0.1:{port}/lines?{total}", timeout=30).text == "logged"
    # Until the queue is empty, then a line that brings the note.
    text = read_log(log, idle=1.0)
    assert httpx.get(f"http://127.0.0.1:{port}/errors", timeout=10).text == "logged"
    text += read_log_until(log, "a line for wsgi.errors")
    received = len(re.findall(r"wsgi\.errors: wsgi\.errors line \d+$", text, re.MULTILINE))
    notes = re.findall(r"rsasgi\.error: (\d+) log line\(s\) dropped because", text)
    noted = sum(map(int, notes))
    assert received < total, received
    # The access line of /lines was dropped too, and an extra line or two may be counted.
    assert abs(received + noted - total) <= 5, (received, notes)
    proc.send_signal(signal.SIGTERM)
    read_log(log, idle=5)
    assert proc.wait(20) == 0


def test_a_note_about_dropped_access_lines_of_a_custom_format_goes_to_the_server_log(tmp_path):
    """Access lines in the operator's --access-log-format go to a pipe nobody reads, and many
    are dropped: the note saying how many goes to the server log, not among those lines,
    whose parsers it would break."""
    log, write = os.pipe()
    fcntl.fcntl(write, getattr(fcntl, "F_SETPIPE_SZ", 1031), 4096)
    server_log = tmp_path / "stderr.txt"
    with open(server_log, "wb") as err:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "rsasgi", WSGI_APP, "--app-dir", str(APPS)),
                *("--port", "0", "--access-logfile", "-"),
                *("--access-log-format", '%(h)s "%(r)s" %(s)s'),
            ],
            cwd=tmp_path,
            stdout=write,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    os.close(write)
    try:
        port = int(LISTENING.search(wait_for_file(server_log, "Listening on"))[2])
        # More requests than the queue holds (16384 lines), pipelined on one connection.
        total = 20_000
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            answered = 0
            received = b""

            def read_answers() -> None:
                nonlocal answered, received
                while answered < total:
                    chunk = sock.recv(1 << 20)
                    if not chunk:
                        return
                    # A status line split between two reads is counted once: the tail
                    # kept is one byte short of a whole one.
                    received += chunk
                    answered += received.count(b"HTTP/1.1 200 OK")
                    received = received[-(len(b"HTTP/1.1 200 OK") - 1) :]

            reader = threading.Thread(target=read_answers, daemon=True)
            reader.start()
            sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n" * total)
            reader.join(60)
        assert answered == total
        access = read_log(log, idle=1.0)
        # A line that brings the note.
        assert httpx.get(f"http://127.0.0.1:{port}/b", timeout=10).status_code == 200
        access += read_log_until(log, '"GET /b HTTP/1.1" 200')
        notes = re.findall(
            r"rsasgi\.error: (\d+) access log line\(s\) dropped",
            wait_for_file(server_log, "dropped"),
        )
        lines = access.splitlines()
        assert notes, "no note in the server log"
        assert len(lines) < total
        assert all(re.fullmatch(r'127\.0\.0\.1 "GET /[ab] HTTP/1\.1" 200', line) for line in lines)
        assert abs(len(lines) - 1 + sum(map(int, notes)) - total) <= 5, (len(lines), notes)
        proc.send_signal(signal.SIGTERM)
        read_log(log, idle=5)
        assert proc.wait(20) == 0
    finally:
        kill_process_group(proc)
        os.close(log)


# The closing line of a WebSocket.


def run(coro, timeout: float = 30.0):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def echo_then_close(url: str) -> None:
    async with connect(url) as ws:
        await ws.send("hi")
        assert await ws.recv() == "hi"


async def app_closes(url: str) -> int | None:
    async with connect(url) as ws:
        await ws.send("bye")
        await ws.wait_closed()
        return ws.close_code


def test_with_a_format_of_the_operators_the_closing_line_goes_to_the_server_log(
    run_rsasgi, tmp_path
):
    """The access file holds lines of the operator's --access-log-format alone, which log
    analysers parse (GoAccess, AWStats); the closing line, in a format of ours, was written
    there too."""
    access = tmp_path / "access.log"
    server = run_rsasgi(APP, "--access-log-format", "combined", "--access-logfile", str(access))
    run(echo_then_close(f"ws://127.0.0.1:{server.port}/ws/echo?room=1"))
    assert httpx.get(f"{server.url}/hello").status_code == 200
    wait_for_log(server, "rsasgi.error: 127.0.0.1:", "WebSocket /ws/echo?room=1 closed by the")
    lines = wait_for_file(access, "GET /hello").splitlines()
    assert len(lines) == 2, lines
    for line in lines:
        assert re.fullmatch(
            r'127\.0\.0\.1 - - \[[^]]+\] "GET [^"]+" \d{3} \S+ "[^"]*" "[^"]*"', line
        )


def test_a_websocket_closed_by_the_client_gets_a_closing_line(run_rsasgi):
    server = run_rsasgi(APP)
    run(echo_then_close(f"ws://127.0.0.1:{server.port}/ws/echo?room=1"))
    log = wait_for_log(server, "WebSocket /ws/echo?room=1 closed")
    (handshake,) = lines_with(log, '"GET /ws/echo?room=1 HTTP/1.1" 101')
    (closing,) = lines_with(log, "WebSocket /ws/echo?room=1 closed")
    assert re.search(
        r"INFO rsasgi\.access: 127\.0\.0\.1:\d+ - WebSocket /ws/echo\?room=1 closed by the "
        r"client with 1000 after \d+\.\d{3}s$",
        closing,
    ), closing
    assert log.index(handshake) < log.index(closing)


def test_a_websocket_closed_by_the_app_says_so_in_json(run_rsasgi):
    server = run_rsasgi(APP, "--log-format", "json")
    assert run(app_closes(f"ws://127.0.0.1:{server.port}/ws/app-close")) == 4001
    wait_for_log(server, '"closed_by":')
    (closing,) = [r for r in json_lines(server.output()) if "closed_by" in r]
    assert closing["logger"] == "rsasgi.access"
    assert (closing["close_code"], closing["closed_by"], closing["path"]) == (
        4001,
        "app",
        "/ws/app-close",
    )
    assert isinstance(closing["duration"], float) and closing["duration"] >= 0
    assert "closed by the app with 4001" in closing["message"]


# Request IDs.

GENERATED_ID = re.compile(r"[0-9a-f]{32}")


def test_request_ids_are_off_by_default(run_rsasgi):
    server = run_rsasgi(APP)
    assert "x-request-id" not in httpx.get(f"{server.url}/headers").json()


def test_a_sound_request_id_is_passed_to_the_app_and_logged(run_rsasgi):
    server = run_rsasgi(
        APP, "--request-id", "--access-log-format", "%({x-request-id}i)s %(U)s %(s)s"
    )
    sent = "proxy-7f3a/2024=+_.~:"
    seen = httpx.get(f"{server.url}/headers", headers={"X-Request-ID": sent}).json()
    assert seen["x-request-id"] == sent
    assert lines_with(wait_for_log(server, "/headers 200"), "/headers 200") == [
        f"{sent} /headers 200"
    ]


@pytest.mark.parametrize(
    "sent",
    [None, "x" * 201, "has space", ""],
    ids=["missing", "too-long", "not-visible-ascii", "empty"],
)
def test_a_request_id_is_generated_when_missing_or_unsound(run_rsasgi, sent):
    server = run_rsasgi(APP, "--request-id", "--log-format", "json")
    headers = {} if sent is None else {"X-Request-ID": sent}
    seen = httpx.get(f"{server.url}/headers", headers=headers).json()["x-request-id"]
    assert GENERATED_ID.fullmatch(seen), seen
    wait_for_log(server, '"logger":"rsasgi.access"')
    (access,) = [r for r in json_lines(server.output()) if r["logger"] == "rsasgi.access"]
    assert access["request_id"] == seen


def test_a_wsgi_app_gets_http_x_request_id_new_for_each_request(run_rsasgi):
    server = run_rsasgi(WSGI_APP, "--request-id")
    ids = {httpx.get(f"{server.url}/request-id").text for _ in range(3)}
    assert len(ids) == 3 and all(GENERATED_ID.fullmatch(i) for i in ids), ids
    kept = httpx.get(f"{server.url}/request-id", headers={"X-Request-ID": "abc"}).text
    assert kept == "abc"


def test_a_custom_request_id_header_reaches_an_asgi_app(run_rsasgi):
    server = run_rsasgi(APP, "--request-id-header", "X-Correlation-ID")
    seen = httpx.get(f"{server.url}/headers").json()
    assert GENERATED_ID.fullmatch(seen["x-correlation-id"]) and "x-request-id" not in seen


def test_long_lines_for_a_stalled_reader_are_bounded_in_bytes(piped_server):
    """The queue for a reader that stalls was bounded in lines (16,384), not bytes, and a
    client chooses how long its access lines are: a 30 KB User-Agent of bytes past ASCII is
    written as 120 KB of escapes. 600 such requests grew the worker by some 70 MiB;
    the queue now holds 8 MiB, and what does not fit is dropped and counted."""
    from apps.proto_raw import rss_kib

    proc, log, port = piped_server()
    agent = b"\x80" * 30_000
    request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nUser-Agent: %s\r\n\r\n" % agent

    def send() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(request)
            assert read_response(sock).startswith(b"HTTP/1.1 200")

    send()
    before = rss_kib(proc.pid)
    for _ in range(600):
        send()
    grown_mib = (rss_kib(proc.pid) - before) / 1024
    assert grown_mib < 32, f"the worker grew by {grown_mib:.0f} MiB"
    # Once read again, the log says what it dropped, in a note or two: not one a line (a short
    # note found room where the long line it reported did not).
    text = read_log(log, idle=1.0)
    send()
    text += read_log_until(log, "log line(s) dropped because the process reading this log")
    text += read_log(log, idle=0.5)
    assert 1 <= text.count("log line(s) dropped") <= 3, text.count("log line(s) dropped")
