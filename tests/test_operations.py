"""What an operator runs rsasgi with, seen from outside: `--reload`, `--pid`, `--user`,
`--umask`, `--daemon` with `--log-file`, systemd socket activation and notifications,
`--limit-worker-lifetime` and `--reuse-port`.

App: tests/apps/ops_app.py (GET / answers "VERSION PID"). Load is a few clients on
127.0.0.1 for a few seconds at most.
"""

from __future__ import annotations

import functools
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import APPS, Server, access_log, free_port, wait_for, wait_for_log
from test_supervisor import Load, alive, exit_code, failed, get, started_workers, wait_gone

APP = "ops_app:app"
WORKERS = [[], ["--workers", "2"]]
WORKER_IDS = ["one-process", "supervisor"]


def answer(server: Server) -> tuple[int, int]:
    """(VERSION, PID) of the process that answers GET / over a new connection."""
    response = get(server.url + "/")
    assert response.status_code == 200, server.output()
    version, pid = map(int, response.text.split())
    return version, pid


def run_to_exit(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Runs `python -m rsasgi ARGS` to its end; stdout and stderr together."""
    return subprocess.run(
        [sys.executable, "-m", "rsasgi", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
    )


def wait_all_serving(server: Server, workers: list[str]) -> None:
    """With `--workers N` in `workers`, waits until all N serve."""
    if workers:
        wait_for_log(server, f"All {workers[-1]} workers serving")


# --reload: a change to a watched file replaces the worker with one running the new code.


def reloadable_app(tmp_path) -> Path:
    """A copy of ops_app.py (VERSION = 1) in a directory of its own, to rewrite."""
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    module = app_dir / "ops_app.py"
    shutil.copy(APPS / "ops_app.py", module)
    return module.resolve()


def set_version(module: Path, version: int) -> None:
    module.write_text(
        (APPS / "ops_app.py").read_text().replace("VERSION = 1", f"VERSION = {version}")
    )


def start_reloading(
    run_rsasgi, module: Path, *args: str, env: dict | None = None, **kwargs
) -> Server:
    """rsasgi --reload watching (and importing from) the module's directory."""
    # A rewrite that keeps the file's size within its mtime second would leave a
    # cached .pyc looking fresh.
    return run_rsasgi(
        APP,
        "--reload",
        "--reload-dir",
        str(module.parent),
        "--app-dir",
        str(module.parent),
        *args,
        env={"PYTHONDONTWRITEBYTECODE": "1", **(env or {})},
        **kwargs,
    )


def with_inotify_limit(limit: str, value: int) -> list[str]:
    """A prefix that runs rsasgi in a user namespace of its own, where the inotify `limit`
    (`max_inotify_watches`, `max_inotify_instances`) is `value`: nothing outside it sees
    the limit."""
    if subprocess.run(["unshare", "-U", "-r", "true"], capture_output=True).returncode:
        pytest.skip("no user namespaces here")
    set_limit = f'echo {value} > /proc/sys/user/{limit} && exec "$@"'
    return ["unshare", "-U", "-r", "sh", "-c", set_limit, "sh"]


def changes_lines(log: str) -> list[str]:
    return re.findall(r"Changes in .*; restarting the workers", log)


def wait_version(server: Server, version: int) -> int:
    """Waits until GET / answers `version`; returns the pid that answered."""

    def answered() -> int | None:
        got_version, pid = answer(server)
        return pid if got_version == version else None

    return wait_for(answered, message=f"version {version} to answer", server=server)


def test_reload_serves_the_edited_module_from_a_new_worker(run_rsasgi, tmp_path):
    module = reloadable_app(tmp_path)
    server = start_reloading(run_rsasgi, module)
    wait_for_log(server, "All 1 worker serving")
    assert answer(server)[0] == 1
    first = set(started_workers(server.output()))

    set_version(module, 2)
    wait_for_log(server, f"Changes in {module}; restarting the workers")
    pid = wait_version(server, 2)

    assert pid in set(started_workers(server.output())) - first
    wait_for_log(server, "Reload complete")
    wait_gone(first, server)


def test_reload_with_a_syntax_error_keeps_the_old_code_serving_until_fixed(run_rsasgi, tmp_path):
    module = reloadable_app(tmp_path)
    server = start_reloading(run_rsasgi, module)
    wait_for_log(server, "All 1 worker serving")
    old = answer(server)

    module.write_text("VERSION = (\n")
    log = wait_for_log(server, "Reload failed")
    assert "SyntaxError" in log
    assert "they are replaced at the next change to the files" in log
    assert answer(server) == old

    set_version(module, 3)
    wait_for(
        lambda: len(changes_lines(server.output())) == 2,
        message="the fix to be noticed",
        server=server,
    )
    assert wait_version(server, 3) != old[1]


def test_reload_waits_for_a_fix_when_the_module_is_broken_at_start(run_rsasgi, tmp_path):
    module = reloadable_app(tmp_path)
    module.write_text("VERSION = (\n")
    server = start_reloading(run_rsasgi, module)
    log = wait_for_log(server, "waiting for a change to the files to try again (--reload)")
    assert "SyntaxError" in log
    assert server.proc.poll() is None, log

    set_version(module, 2)
    wait_for_log(server, f"Changes in {module}; restarting the workers", "All 1 worker serving")
    assert answer(server)[0] == 2


def test_sighup_while_reload_waits_for_a_fix_starts_the_workers_again(run_rsasgi, tmp_path):
    """What the app missed at start may be outside the watched files (a setting, a service
    that was down): HUP tries again at once."""
    module = reloadable_app(tmp_path)
    needed = tmp_path / "needed"  # outside the watched directory
    module.write_text(
        (APPS / "ops_app.py").read_text()
        + f"\n\nimport pathlib\n\nassert pathlib.Path({str(needed)!r}).exists(), 'not yet'\n"
    )
    server = start_reloading(run_rsasgi, module)
    wait_for_log(server, "waiting for a change to the files to try again (--reload)")
    needed.touch()
    server.proc.send_signal(signal.SIGHUP)
    wait_for_log(server, "Received SIGHUP: starting the workers again", "All 1 worker serving")
    assert answer(server)[0] == 1
    assert "Reload complete" not in server.output()


#: Appended to the app: the first worker to import it fails its boot (a database not up
#: yet), and the others boot once the file `go` exists, so that one still boots then.
FAILS_ONCE = """

import time
from pathlib import Path

try:
    Path(__file__).with_name("fail_once").unlink()
except FileNotFoundError:
    while not Path(__file__).with_name("go").exists():
        time.sleep(0.02)
else:
    raise RuntimeError("not up yet")
"""


def test_reload_starts_a_worker_that_failed_to_boot_again_once_another_serves(run_rsasgi, tmp_path):
    """The app boots after all: --reload's wait for a change ends, the failed worker is
    started again, and the next change reloads every worker."""
    module = reloadable_app(tmp_path)
    module.write_text(module.read_text() + FAILS_ONCE)
    (module.parent / "fail_once").touch()
    server = start_reloading(run_rsasgi, module, "--workers", "2")
    wait_for_log(server, "could not boot (exited with code 3, the error is above)")
    (module.parent / "go").touch()
    wait_for_log(server, "All 2 workers serving")

    set_version(module, 2)
    wait_for_log(server, "Reload complete")
    with Load(server.url + "/", clients=4) as load:
        load.wait(
            lambda load: len({pid for _, pid in load.answers()}) == 2,
            "both workers to answer",
            server,
        )
    assert {version for version, _ in load.answers()} == {2}


def test_reload_waits_for_a_fix_when_the_module_crashes_at_import(run_rsasgi, tmp_path):
    """A crash rather than an exception (a C extension's segfault): no loop of starts, each
    later than the last, that the fix would have to wait out."""
    module = reloadable_app(tmp_path)
    module.write_text("import ctypes\n\nctypes.string_at(0)\n")
    server = start_reloading(run_rsasgi, module)
    wait_for_log(
        server,
        "was killed by SIGSEGV (a crash in native code) before serving; waiting for a change "
        "to the files to try again (--reload)",
    )

    set_version(module, 2)
    wait_for_log(server, "All 1 worker serving")
    assert answer(server)[0] == 2
    log = server.output()
    assert len(started_workers(log)) == 2, log
    assert "Reload complete" not in log


def test_reload_logs_nothing_of_the_watcher_s_bookkeeping_when_a_tree_is_removed(
    run_rsasgi, tmp_path
):
    """notify warned once for each directory of a tree removed (`rm -rf build`, a `git
    checkout`): its own watches, nothing the operator can act on."""
    module = reloadable_app(tmp_path)
    for name in ("a/b", "a/c", "d"):
        (module.parent / "pkg" / name).mkdir(parents=True)
    server = start_reloading(run_rsasgi, module)
    wait_for_log(server, "All 1 worker serving")

    shutil.rmtree(module.parent / "pkg")
    set_version(module, 2)  # its events come after the removal's
    log = wait_for_log(server, f"Changes in {module}; restarting the workers")
    assert "notify::" not in log


def test_reload_engine_inotify_says_how_many_directories_its_watch_limit_leaves_unwatched(
    run_rsasgi, tmp_path
):
    module = reloadable_app(tmp_path)
    for number in range(10):
        (module.parent / f"d{number}").mkdir()
    prefix = with_inotify_limit("max_inotify_watches", 4)
    server = start_reloading(run_rsasgi, module, "--reload-engine", "inotify", prefix=prefix)
    log = wait_for_log(server, "All 1 worker serving")
    # The directory and 3 of the 10 below it are watched.
    assert (
        f"--reload: the inotify watch limit (fs.inotify.max_user_watches) is reached: "
        f"watching stopped at {module.parent}/d"
    ) in log
    assert f", leaving 7 directories under {module.parent} unwatched, where changes" in log


def test_reload_engine_inotify_without_an_instance_left_names_the_limit(run_rsasgi, tmp_path):
    module = reloadable_app(tmp_path)
    prefix = with_inotify_limit("max_inotify_instances", 0)
    server = start_reloading(
        run_rsasgi, module, "--reload-engine", "inotify", prefix=prefix, wait=False
    )
    assert exit_code(server) == 1
    assert (
        "--reload: cannot start the file watcher: no inotify instance left: this user's "
        "programs hold as many as fs.inotify.max_user_instances allows"
    ) in server.output()


#: The start of the warning of --reload-engine auto when it polls instead of using inotify.
POLLING_INSTEAD = "--reload: cannot watch with inotify, so polling instead: "


def test_reload_polls_when_no_inotify_instance_is_left(run_rsasgi, tmp_path):
    module = reloadable_app(tmp_path)
    prefix = with_inotify_limit("max_inotify_instances", 0)
    server = start_reloading(run_rsasgi, module, prefix=prefix)
    log = wait_for_log(server, "All 1 worker serving")
    assert (
        f"{POLLING_INSTEAD}no inotify instance left: this user's programs hold as many as "
        "fs.inotify.max_user_instances allows"
    ) in log
    assert f"Polling every 1 s for changes in {module.parent} (*.py)" in log

    set_version(module, 2)
    wait_for_log(server, f"Changes in {module}; restarting the workers")
    wait_version(server, 2)


def test_reload_polls_when_the_inotify_watch_limit_is_reached_at_start(run_rsasgi, tmp_path):
    module = reloadable_app(tmp_path)
    for number in range(10):
        (module.parent / f"d{number}").mkdir()
    prefix = with_inotify_limit("max_inotify_watches", 4)
    server = start_reloading(run_rsasgi, module, prefix=prefix)
    log = wait_for_log(server, "All 1 worker serving")
    stopped_at = re.search(
        re.escape(
            f"{POLLING_INSTEAD}the inotify watch limit (fs.inotify.max_user_watches) is "
            f"reached: watching stopped at {module.parent}/"
        )
        + r"(d\d),",
        log,
    )
    assert stopped_at, log
    assert f"Polling every 1 s for changes in {module.parent} (*.py)" in log

    # The first directory inotify had no watch left for.
    new = module.parent / stopped_at[1] / "views.py"
    new.write_text("x = 1\n")
    wait_for_log(server, f"Changes in {new}; restarting the workers")


def test_reload_polls_once_directories_made_at_runtime_use_up_the_inotify_watches(
    run_rsasgi, tmp_path
):
    """What changed in a directory no watch was left for went unseen: the workers restart
    to be safe, and from then on every directory is polled."""
    module = reloadable_app(tmp_path)
    prefix = with_inotify_limit("max_inotify_watches", 2)
    server = start_reloading(run_rsasgi, module, prefix=prefix)
    wait_for_log(server, f"Watching for changes in {module.parent} (*.py)", "All 1 worker serving")

    # The directory and one of the two take the 2 watches.
    for name in ("d0", "d1"):
        (module.parent / name).mkdir()
    log = wait_for_log(
        server,
        f"Polling every 1 s for changes in {module.parent} (*.py)",
        f"Changes in {module.parent}; restarting the workers",
    )
    stopped_at = re.search(
        re.escape(
            f"{POLLING_INSTEAD}the inotify watch limit (fs.inotify.max_user_watches) is "
            f"reached: watching stopped at {module.parent}/"
        )
        + r"(d\d), leaving 1 directory under ",
        log,
    )
    assert stopped_at, log

    late = module.parent / stopped_at[1] / "late.py"
    late.write_text("x = 1\n")
    wait_for_log(server, f"Changes in {late}; restarting the workers")


# --reload-engine poll: the same changes, found by reading the watched directories every
# second, for the mounts inotify hears nothing from (Docker Desktop, WSL2, NFS).


def test_reload_engine_poll_serves_the_edited_module_from_a_new_worker(run_rsasgi, tmp_path):
    module = reloadable_app(tmp_path)
    server = start_reloading(run_rsasgi, module, "--reload-engine", "poll")
    log = wait_for_log(server, "All 1 worker serving")
    assert f"Polling every 1 s for changes in {module.parent} (*.py)" in log
    first = set(started_workers(log))

    set_version(module, 2)
    wait_for_log(server, f"Changes in {module}; restarting the workers")
    assert wait_version(server, 2) in set(started_workers(server.output())) - first


def test_reload_engine_poll_ignores_excluded_files_and_directories(run_rsasgi, tmp_path):
    module = reloadable_app(tmp_path)
    (module.parent / "build").mkdir()
    server = start_reloading(
        run_rsasgi,
        module,
        "--reload-engine",
        "poll",
        "--reload-exclude",
        "build",
        "--reload-exclude",
        "scratch_*.py",
    )
    wait_for_log(server, "All 1 worker serving")

    # Written before the module: were they watched, they would be named in the same
    # restart, or in one before it.
    for excluded in ("build/generated.py", "scratch_1.py", ".hidden.py", "notes.txt"):
        (module.parent / excluded).write_text("x = 1\n")
    set_version(module, 2)
    wait_for(
        lambda: any(str(module) in line for line in changes_lines(server.output())),
        message="the change to the module to be noticed",
        server=server,
    )

    assert changes_lines(server.output()) == [f"Changes in {module}; restarting the workers"]


def test_reload_engine_poll_sees_a_new_file_in_a_watched_directory(run_rsasgi, tmp_path):
    module = reloadable_app(tmp_path)
    (module.parent / "pkg").mkdir()
    server = start_reloading(run_rsasgi, module, "--reload-engine", "poll")
    wait_for_log(server, "All 1 worker serving")
    first = set(started_workers(server.output()))

    new = module.parent / "pkg" / "views.py"
    new.write_text("x = 1\n")
    wait_for_log(server, f"Changes in {new}; restarting the workers", "Reload complete")

    assert answer(server)[1] in set(started_workers(server.output())) - first


def test_watchfiles_force_polling_makes_reload_poll(run_rsasgi, tmp_path):
    """What uvicorn users set in their Docker Compose files already."""
    module = reloadable_app(tmp_path)
    server = start_reloading(run_rsasgi, module, env={"WATCHFILES_FORCE_POLLING": "true"})
    log = wait_for_log(server, "All 1 worker serving")
    assert f"Polling every 1 s for changes in {module.parent} (*.py)" in log

    set_version(module, 2)
    wait_for_log(server, f"Changes in {module}; restarting the workers")
    wait_version(server, 2)


@pytest.mark.parametrize("sig", [signal.SIGTTIN, signal.SIGTTOU])
def test_ttin_to_one_process_is_a_warning_not_a_stopped_server(run_rsasgi, sig):
    """A gunicorn habit sent to rsasgi without --workers: the default action of TTIN and TTOU
    would stop (freeze) the process, every request hanging until SIGCONT."""
    server = run_rsasgi(APP)
    server.proc.send_signal(sig)
    wait_for_log(server, f"Received {sig.name}: changing the number of workers needs --workers")
    assert answer(server)[0] == 1


def test_reload_ignores_files_other_than_python_by_default(run_rsasgi, tmp_path):
    module = reloadable_app(tmp_path)
    server = start_reloading(run_rsasgi, module)
    wait_for_log(server, "All 1 worker serving")

    # Written just before the module: were it watched, it would be named in the same
    # restart, or in one before it.
    (module.parent / "notes.txt").write_text("a note\n")
    set_version(module, 2)
    wait_for(
        lambda: any(str(module) in line for line in changes_lines(server.output())),
        message="the change to the module to be noticed",
        server=server,
    )

    assert changes_lines(server.output()) == [f"Changes in {module}; restarting the workers"]


def test_reload_include_watches_the_files_it_names(run_rsasgi, tmp_path):
    module = reloadable_app(tmp_path)
    server = start_reloading(run_rsasgi, module, "--reload-include", "*.txt")
    wait_for_log(server, "All 1 worker serving")
    first = set(started_workers(server.output()))

    notes = module.parent / "notes.txt"
    notes.write_text("a note\n")
    wait_for_log(server, f"Changes in {notes}; restarting the workers", "Reload complete")

    assert answer(server)[1] in set(started_workers(server.output())) - first


# --pid FILE.


@pytest.mark.parametrize("workers", WORKERS, ids=WORKER_IDS)
def test_pid_file_holds_the_main_pid_and_is_removed_at_exit(run_rsasgi, tmp_path, workers):
    pid_file = tmp_path / "rsasgi.pid"
    server = run_rsasgi(APP, "--pid", str(pid_file), *workers)
    wait_all_serving(server, workers)

    assert pid_file.read_text() == f"{server.proc.pid}\n"
    assert server.stop(signal.SIGTERM) == 0
    assert not pid_file.exists()


@pytest.mark.parametrize("workers", WORKERS, ids=WORKER_IDS)
def test_a_second_server_on_a_live_pid_file_refuses_and_a_stale_one_is_replaced(
    run_rsasgi, tmp_path, workers
):
    """As gunicorn: a second instance started by mistake must not take the pid file of one
    that runs (`kill $(cat FILE)` would then miss it). A file whose process is gone is
    stale, and replaced."""
    pid_file = tmp_path / "rsasgi.pid"
    first = run_rsasgi(APP, "--pid", str(pid_file), *workers)
    wait_all_serving(first, workers)
    result = run_to_exit(
        APP, "--app-dir", str(APPS), "--port", "0", "--pid", str(pid_file), *workers
    )
    assert result.returncode == 1, result.stdout
    assert (
        f"Cannot write --pid {pid_file}: rsasgi is already running as pid {first.proc.pid}"
    ) in result.stdout
    assert pid_file.read_text() == f"{first.proc.pid}\n"
    assert get(first.url + "/").status_code == 200

    first.proc.kill()  # no clean-up: the file is left behind
    first.proc.wait()
    second = run_rsasgi(APP, "--pid", str(pid_file), *workers)
    wait_all_serving(second, workers)
    assert pid_file.read_text() == f"{second.proc.pid}\n"


@pytest.mark.parametrize("workers", WORKERS, ids=WORKER_IDS)
def test_pid_file_is_not_written_through_a_link_planted_beside_it(run_rsasgi, tmp_path, workers):
    """The pid file often sits in a directory the app's user may write, and the server runs
    as root: a link planted where the pid file is first written (its old temporary name
    FILE.partial) must not make rsasgi overwrite the file it points to."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    pid_file = tmp_path / "rsasgi.pid"
    (tmp_path / "rsasgi.pid.partial").symlink_to(victim)
    server = run_rsasgi(APP, "--pid", str(pid_file), *workers)
    wait_all_serving(server, workers)

    assert victim.read_text() == "precious\n"
    assert not pid_file.is_symlink()
    assert pid_file.read_text() == f"{server.proc.pid}\n"
    assert server.stop(signal.SIGTERM) == 0
    assert sorted(path.name for path in tmp_path.iterdir() if "rsasgi.pid" in path.name) == [
        "rsasgi.pid.partial"
    ]


@pytest.mark.parametrize("workers", WORKERS, ids=WORKER_IDS)
def test_sigusr2_is_refused_with_a_warning_and_the_server_serves_on(run_rsasgi, tmp_path, workers):
    """gunicorn re-executes itself on USR2; rsasgi does not, and the signal's default
    action would end it at once, leaving its pid file (and its workers) behind."""
    pid_file = tmp_path / "rsasgi.pid"
    server = run_rsasgi(APP, "--pid", str(pid_file), *workers)
    wait_all_serving(server, workers)

    os.kill(server.proc.pid, signal.SIGUSR2)
    wait_for_log(server, "Received SIGUSR2: ignored, rsasgi does not re-execute itself")
    assert answer(server)[0] == 1
    assert server.stop(signal.SIGTERM) == 0
    assert not pid_file.exists()


@pytest.mark.parametrize("workers", WORKERS, ids=WORKER_IDS)
def test_pid_file_that_cannot_be_written_is_one_line_and_exit_1(tmp_path, workers):
    pid_file = tmp_path / "missing" / "rsasgi.pid"
    result = run_to_exit(
        APP, "--app-dir", str(APPS), "--port", "0", "--pid", str(pid_file), *workers
    )

    assert result.returncode == 1, result.stdout
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    assert f"Cannot write --pid {pid_file}" in lines[0]


# --user: the sockets are bound as root, the app runs as the user.

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="--user needs rsasgi started as root")


@functools.cache
def nobody_can_run_python() -> bool:
    """Whether `nobody` may execute this interpreter (not when it lives under a mode-700
    home directory, as pyenv's does under /root)."""
    result = subprocess.run(
        ["runuser", "-u", "nobody", "--", sys.executable, "-c", "pass"],
        capture_output=True,
        timeout=30,
    )
    return result.returncode == 0


@pytest.fixture
def public_app_dir():
    """A copy of ops_app.py in a directory everyone may read (tmp_path is root's alone)."""
    directory = Path(tempfile.mkdtemp(prefix="rsasgi-ops-"))
    directory.chmod(0o755)
    module = directory / "ops_app.py"
    shutil.copy(APPS / "ops_app.py", module)
    module.chmod(0o644)
    yield directory
    shutil.rmtree(directory)


def uids(pid: int) -> set[int]:
    """The real, effective, saved and filesystem uids of process `pid`."""
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    return set(map(int, line.split()[1:]))


@needs_root
def test_workers_run_as_the_user_and_the_supervisor_stays_root(run_rsasgi, public_app_dir):
    if not nobody_can_run_python():
        pytest.skip(f"nobody cannot run {sys.executable}")
    nobody = pwd.getpwnam("nobody").pw_uid
    server = run_rsasgi(
        APP, "--app-dir", str(public_app_dir), "--user", "nobody", "-w", "2", cwd=public_app_dir
    )
    log = wait_for_log(server, "All 2 workers serving")

    assert "Workers run as nobody:" in log
    assert get(server.url + "/uid").text == f"{nobody} {nobody}"
    for pid in started_workers(log):
        assert uids(pid) == {nobody}
    assert uids(server.proc.pid) == {0}


@needs_root
def test_worker_the_user_cannot_run_stops_the_supervisor_with_exit_1(run_rsasgi, public_app_dir):
    """The worker's exec fails after the switch to the user: privileges were dropped
    before the interpreter ran. The supervisor says so once and stops."""
    if nobody_can_run_python():
        pytest.skip(f"nobody can run {sys.executable}")
    server = run_rsasgi(
        APP,
        "--app-dir",
        str(public_app_dir),
        "--user",
        "nobody",
        "-w",
        "2",
        cwd=public_app_dir,
        wait=False,
    )

    assert exit_code(server) == 1
    log = server.output()
    failures = [line for line in log.splitlines() if "Cannot start worker" in line]
    assert 1 <= len(failures) <= 2, log
    assert "Cannot start worker 1" in failures[0]
    assert "(nobody:" in failures[0] and "must be able to run it" in failures[0]
    assert log.rstrip().endswith("rsasgi.error: Stopped"), log


@needs_root
@pytest.mark.parametrize("workers", WORKERS, ids=WORKER_IDS)
def test_unknown_user_is_a_usage_error(workers):
    result = run_to_exit(APP, "--app-dir", str(APPS), "--user", "no-such-user-xyz", *workers)

    assert result.returncode == 2, result.stdout
    assert "--user no-such-user-xyz: no such user on this system" in result.stdout


@needs_root
def test_a_uid_without_a_passwd_entry_is_taken_as_a_number():
    """Containers run as arbitrary uids that /etc/passwd does not name; --help says "name or
    uid", and gunicorn takes such a number too."""
    if 54321 in {entry.pw_uid for entry in pwd.getpwall()}:
        pytest.skip("uid 54321 is taken on this machine")
    result = run_to_exit(APP, "--app-dir", str(APPS), "--user", "54321", "--check-config")
    assert result.returncode == 0, result.stdout
    assert "no such user" not in result.stdout


@needs_root
def test_one_process_runs_the_app_as_the_user(run_rsasgi, public_app_dir):
    """Without a supervisor, the process binds as root, then switches to the user and
    imports the app."""
    if not nobody_can_run_python():
        pytest.skip(f"nobody cannot run {sys.executable}, so cannot import the app with it")
    nobody = pwd.getpwnam("nobody").pw_uid
    server = run_rsasgi(
        APP, "--app-dir", str(public_app_dir), "--user", "nobody", cwd=public_app_dir
    )

    assert "Running as nobody:" in server.output()
    assert get(server.url + "/uid").text == f"{nobody} {nobody}"
    assert uids(server.proc.pid) == {nobody}


@needs_root
def test_one_process_switches_to_the_user_before_it_imports_the_app(run_rsasgi, public_app_dir):
    """A user who may not read this Python installation cannot import the app (nor the
    modules it needs): the switch came first, so the import fails (exit 3, a boot failure)."""
    if nobody_can_run_python():
        pytest.skip(f"nobody can run {sys.executable}")
    server = run_rsasgi(
        APP,
        "--app-dir",
        str(public_app_dir),
        "--user",
        "nobody",
        cwd=public_app_dir,
        wait=False,
    )

    assert exit_code(server) == 3
    log = server.output()
    assert "Running as nobody:" in log
    assert 'Error while importing module "ops_app"' in log
    assert "Application startup complete" not in log


# --umask.


@pytest.mark.parametrize("umask, mode", [("077", 0o600), ("022", 0o644)])
def test_umask_sets_the_mode_of_files_the_app_creates(run_rsasgi, tmp_path, umask, mode):
    server = run_rsasgi(APP, "--umask", umask)
    created = tmp_path / "created"

    assert get(f"{server.url}/create?{quote(str(created))}").text == "created"
    assert stat.S_IMODE(created.stat().st_mode) == mode


@pytest.mark.parametrize("workers", WORKERS, ids=WORKER_IDS)
def test_umask_sets_the_mode_of_the_log_and_pid_files(run_rsasgi, tmp_path, workers):
    """The files the server creates for the operator are created under the mask too."""
    log, access, pid_file = tmp_path / "error.log", tmp_path / "access.log", tmp_path / "pid"
    server = run_rsasgi(
        APP,
        "--umask",
        "077",
        "--log-file",
        str(log),
        "--access-logfile",
        str(access),
        "--pid",
        str(pid_file),
        *workers,
        wait=False,
    )
    wait_in_file(log, "Listening on")
    wait_for(lambda: read_pid(pid_file), message="the pid file")

    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in (log, access, pid_file)}
    assert modes == {"error.log": 0o600, "access.log": 0o600, "pid": 0o600}
    assert server.stop(signal.SIGTERM) == 0


# --daemon with --log-file and --pid.


def rsasgi_pids_in(text: str) -> set[int]:
    """The pids `text` names that are rsasgi processes now."""
    pids = set()
    for pid in map(int, re.findall(r"pid (\d+)", text)):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"rsasgi" in cmdline:
            pids.add(pid)
    return pids


@pytest.fixture
def daemon_files(tmp_path):
    """(log file, pid file) of a daemon; at the end, its whole process group is killed
    (it left the test's session, so `run_rsasgi` cannot reach it)."""
    log, pid_file = tmp_path / "rsasgi.log", tmp_path / "rsasgi.pid"
    yield log, pid_file
    pids = rsasgi_pids_in(
        "".join(
            path.read_text(errors="replace")
            for path in tmp_path.glob("rsasgi.log*")
            if path.exists()
        )
    )
    if pid_file.exists():
        pids.add(int(pid_file.read_text()))
    for pid in pids:
        try:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text())
    except (FileNotFoundError, ValueError):
        return None


def wait_in_file(path: Path, *needles: str) -> str:
    def found() -> str:
        text = path.read_text(errors="replace") if path.exists() else ""
        return text if all(needle in text for needle in needles) else ""

    return wait_for(found, message=f"{list(needles)!r} in {path}")


def run_daemon(log: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`rsasgi APP --daemon --log-file LOG ARGS` (APP from tests/apps), to its command's end."""
    return run_to_exit(
        APP, "--app-dir", str(APPS), "--daemon", "--log-file", str(log), *args, cwd=cwd
    )


@pytest.mark.parametrize("workers", WORKERS, ids=WORKER_IDS)
def test_daemon_logs_to_its_file_reopens_it_on_usr1_and_stops_on_sigterm(
    tmp_path, daemon_files, workers
):
    log, pid_file = daemon_files
    port = free_port()
    result = run_daemon(log, "--port", str(port), "--pid", str(pid_file), *workers, cwd=tmp_path)
    assert result.returncode == 0, result.stdout
    assert result.stdout == ""
    # The command returned once the daemon served, not as soon as it forked.
    url = f"http://127.0.0.1:{port}/"
    assert get(url).status_code == 200
    pid = read_pid(pid_file)
    assert pid is not None
    text = wait_in_file(log, "Listening on")
    if workers:
        text = wait_in_file(log, "All 2 workers serving")
    processes = {pid, *started_workers(text)}

    for _ in range(2):
        assert get(url).status_code == 200
    wait_for(lambda: len(access_log(log.read_text(), "/")) == 3, message="3 access lines")

    rotated = tmp_path / "rsasgi.log.1"
    log.rename(rotated)
    os.kill(pid, signal.SIGUSR1)
    wait_for(
        lambda: (
            log.exists() and log.read_text().count(f"reopened --log-file {log}") == len(processes)
        ),
        message=f"{len(processes)} processes to reopen the log file",
    )
    for _ in range(2):
        assert get(url).status_code == 200
    wait_for(lambda: len(access_log(log.read_text(), "/")) == 2, message="2 new access lines")
    assert len(access_log(rotated.read_text(), "/")) == 3

    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not pid_file.exists(), message="the pid file to be removed")
    wait_for(
        lambda: not any(alive(p) for p in processes), message="the daemon and its workers to exit"
    )
    assert "Stopped" in log.read_text()


@pytest.mark.parametrize("workers", WORKERS, ids=WORKER_IDS)
def test_a_daemon_that_cannot_start_makes_its_command_exit_1(tmp_path, daemon_files, workers):
    """An init script (or a Type=forking unit) learns of a taken port from the exit code,
    not from a log it does not read."""
    log, pid_file = daemon_files
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_daemon(log, "--port", str(port), *workers, cwd=tmp_path)
    assert result.returncode == 1, result.stdout
    assert result.stdout.strip() == f"rsasgi: the server did not start; its log is in {log}"
    assert f"127.0.0.1:{port}" in log.read_text()


def test_a_daemon_without_a_log_file_that_cannot_start_says_how_to_see_why(tmp_path):
    result = run_to_exit(
        "no_such_module_here:app", "--app-dir", str(APPS), "--port", "0", "--daemon", cwd=tmp_path
    )
    assert result.returncode == 1, result.stdout
    assert result.stdout.splitlines() == [
        "rsasgi: --daemon without --log-file: the log is discarded",
        "rsasgi: the server did not start; run it without --daemon, or with --log-file, to see why",
    ]


def test_a_daemon_whose_log_file_cannot_be_opened_says_why(tmp_path):
    log = tmp_path / "no-such-dir" / "rsasgi.log"
    result = run_to_exit(
        APP, "--app-dir", str(APPS), "--port", "0", "--daemon", "--log-file", str(log)
    )
    assert result.returncode == 1, result.stdout
    assert f"Cannot open --log-file {log}: No such file or directory" in result.stdout, (
        result.stdout
    )


def test_a_daemon_whose_app_forks_a_helper_still_reports_its_failed_start(tmp_path, daemon_files):
    """A process the app forked (multiprocessing, a helper) kept the daemon's end of the
    pipe, and the command waited for as long as it lived."""
    log, _ = daemon_files
    (tmp_path / "forking_app.py").write_text(
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    open('helper.pid', 'w').write(str(os.getpid()))\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "raise RuntimeError('no start today')\n"
    )
    result = run_to_exit(
        "forking_app:app",
        "--app-dir",
        str(tmp_path),
        "--port",
        "0",
        "--daemon",
        "--log-file",
        str(log),
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stdout
    assert "the server did not start" in result.stdout
    helper = wait_for(lambda: read_pid(tmp_path / "helper.pid"), message="the helper's pid")
    os.kill(helper, signal.SIGKILL)


def test_a_daemon_with_reload_that_cannot_boot_makes_its_command_exit_1(tmp_path, daemon_files):
    """--reload waits for the files to change; the command that started it must not."""
    log, _ = daemon_files
    (tmp_path / "broken_app.py").write_text("raise RuntimeError('broken')\n")
    result = run_to_exit(
        "broken_app:app",
        "--app-dir",
        str(tmp_path),
        "--port",
        "0",
        "--daemon",
        "--reload",
        "--reload-dir",
        str(tmp_path),
        "--log-file",
        str(log),
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stdout
    assert "the server did not start" in result.stdout
    wait_in_file(log, "waiting for a change")


SECOND_WORKER_FAILS = {
    "crashes": "    os._exit(1)\n",
    # Killed at --timeout-worker-boot, as a hung import is.
    "hangs": "    import time\n    time.sleep(3600)\n",
}


@pytest.mark.parametrize("fails", sorted(SECOND_WORKER_FAILS))
def test_a_daemon_whose_second_worker_fails_its_boot_returns_once_the_first_serves(
    tmp_path, daemon_files, fails
):
    """One worker crashing at every boot, or hanging there until --timeout-worker-boot, kept
    the command (and systemd's start job) waiting for ever, while the other served."""
    log, pid_file = daemon_files
    (tmp_path / "first_only.py").write_text(
        "import os\n"
        "async def app(scope, receive, send):\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': b'first'})\n"
        "try:\n"
        "    os.close(os.open('served', os.O_CREAT | os.O_EXCL))\n"
        "except FileExistsError:\n" + SECOND_WORKER_FAILS[fails]
    )
    port = free_port()
    result = run_to_exit(
        "first_only:app",
        "--app-dir",
        str(tmp_path),
        "--port",
        str(port),
        "--workers",
        "2",
        "--lifespan",
        "off",
        "--timeout-worker-boot",
        "2",
        "--daemon",
        "--log-file",
        str(log),
        "--pid",
        str(pid_file),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout
    assert get(f"http://127.0.0.1:{port}/").text == "first"
    text = wait_in_file(log, "Serving with 1 of 2 workers: the others failed to boot (see above)")
    assert "All 2 workers serving" not in text


# systemd: socket activation.


def socket_activate(*options: str) -> list[str]:
    """systemd-socket-activate with `options` (-l ADDRESS, --accept, --datagram, -E VAR=VALUE),
    to run rsasgi. It starts its command with an empty environment: PYTHONPATH (the build
    under test) and PYTHONUNBUFFERED are passed on by name."""
    activate = shutil.which("systemd-socket-activate")
    if activate is None:
        pytest.skip("systemd-socket-activate is not installed (Debian package systemd)")
    return [activate, "-E", "PYTHONPATH", "-E", "PYTHONUNBUFFERED", *options]


@pytest.mark.parametrize("workers", WORKERS, ids=WORKER_IDS)
def test_socket_activation_serves_the_socket_systemd_passed(run_rsasgi, workers):
    port = free_port()
    # It passes the listening socket to the command on the first connection; the same
    # --port bound again would fail, so only the passed socket can serve.
    server = run_rsasgi(
        APP,
        *workers,
        "--port",
        str(port),
        prefix=socket_activate("-l", f"127.0.0.1:{port}"),
        wait=False,
    )
    server.port = port
    wait_for_log(server, f"Listening on 127.0.0.1:{port} as 3.")

    version, pid = answer(server)
    log = wait_for_log(server, "Serving the 1 socket(s) systemd passed (socket activation)")
    if workers:
        wait_all_serving(server, workers)
        assert pid in started_workers(log)
    else:
        assert pid == server.proc.pid
    assert {answer(server)[0] for _ in range(4)} == {1}


def test_socket_activation_warns_that_the_sockets_given_are_not_bound(run_rsasgi, tmp_path):
    """The shipped unit listens on --uds: with a .socket unit added, systemd's socket is
    served and the --uds path, the one the proxy uses, is never created. That was said by
    nothing but an info line about --bind/--host/--port."""
    port, bind = free_port(), f"127.0.0.1:{free_port()}"
    uds = tmp_path / "app.sock"
    server = run_rsasgi(
        APP,
        *("--uds", str(uds), "--bind", bind),
        prefix=socket_activate("-l", f"127.0.0.1:{port}"),
        wait=False,
    )
    server.port = port
    wait_for_log(server, f"Listening on 127.0.0.1:{port} as 3.")
    answer(server)
    log = wait_for_log(server, "Listening on http")
    assert (
        f"--bind {bind} and --uds {uds} do nothing with socket "
        "activation: the 1 socket(s) systemd passed are served instead, and nothing else is "
        "bound or created; name them in the .socket unit (ListenStream=), or drop them"
    ) in log
    assert not uds.exists()


def test_socket_activation_of_one_connection_is_refused_naming_accept_no(run_rsasgi, notify_socket):
    """Accept=yes: systemd accepts, and starts the service for each connection with that
    connection as its socket. Taken as a listener, every accept() on it failed, for ever,
    after READY=1."""
    port = free_port()
    server = run_rsasgi(
        APP,
        "--port",
        str(port),
        prefix=socket_activate(
            "--accept", "-l", f"127.0.0.1:{port}", "-E", f"NOTIFY_SOCKET={notify_socket.path}"
        ),
        wait=False,
    )
    wait_for_log(server, f"Listening on 127.0.0.1:{port} as 3.")

    with socket.create_connection(("127.0.0.1", port), timeout=10):
        child = int(re.search(r"as PID (\d+)\.", wait_for_log(server, "Spawned")).group(1))
        log = wait_for_log(server, f"Child {child} died with code 1")
    assert (
        "Socket activation: systemd passed fd 3 as one connection (Accept=yes): "
        "set Accept=no in the .socket unit; rsasgi accepts the connections itself"
    ) in log
    assert "Listening on http" not in log
    assert notify_socket.with_field("READY") == []


def test_socket_activation_of_a_datagram_socket_is_refused_before_workers_start(
    run_rsasgi, notify_socket
):
    port = free_port()
    server = run_rsasgi(
        APP,
        "--workers",
        "2",
        "--port",
        str(port),
        prefix=socket_activate(
            "--datagram", "-l", f"127.0.0.1:{port}", "-E", f"NOTIFY_SOCKET={notify_socket.path}"
        ),
        wait=False,
    )
    wait_for_log(server, f"Listening on 127.0.0.1:{port} as 3.")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.sendto(b"start", ("127.0.0.1", port))

    assert exit_code(server) == 1
    log = server.output()
    assert (
        "Socket activation: systemd passed fd 3 as a datagram socket: rsasgi serves stream "
        "sockets; use ListenStream= in the .socket unit"
    ) in log
    assert started_workers(log) == {}
    assert notify_socket.with_field("READY") == []


#: Runs the command after it with a TCP socket on descriptor 7 that is bound but was never
#: listen()ed on (a launcher's mistake); argv[1] is the port.
WITH_UNLISTENED_SOCKET_ON_FD_7 = (
    "import os, socket, sys; "
    "bound = socket.socket(); bound.bind(('127.0.0.1', int(sys.argv[1]))); "
    "os.dup2(bound.fileno(), 7); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


@pytest.mark.parametrize("workers", WORKERS, ids=WORKER_IDS)
def test_an_fd_not_listening_is_refused_before_serving(run_rsasgi, workers):
    server = run_rsasgi(
        APP,
        *workers,
        "--fd",
        "7",
        prefix=[sys.executable, "-c", WITH_UNLISTENED_SOCKET_ON_FD_7, str(free_port())],
        wait=False,
    )

    assert exit_code(server) == 1
    log = server.output()
    assert "--fd 7 is not listening: call listen() on it before starting rsasgi" in log
    assert "Listening on" not in log


# The app's own programs.

#: Runs the command after it with a listening socket on descriptor 7, inheritable, as a
#: process manager does for `--fd 7`; argv[1] is the port.
WITH_SOCKET_ON_FD_7 = (
    "import os, socket, sys; "
    "listener = socket.create_server(('127.0.0.1', int(sys.argv[1]))); "
    "os.dup2(listener.fileno(), 7); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


@pytest.mark.parametrize("how", ["supervisor", "fd"])
def test_programs_the_app_starts_inherit_no_socket_of_the_server(run_rsasgi, how):
    """A program the app starts in the background (`os.system("... &")`) would hold the
    listening socket open after rsasgi stops, and a worker's slot with it: the worker
    marks what it was handed close-on-exec once it has taken it."""
    port = free_port()
    if how == "supervisor":
        server = run_rsasgi(APP, "--workers", "1", "--port", str(port))
        wait_for_log(server, "All 1 worker serving")
    else:
        server = run_rsasgi(
            APP, "--fd", "7", prefix=[sys.executable, "-c", WITH_SOCKET_ON_FD_7, str(port)]
        )
    server.port = port

    listing = get(server.url + "/fds").text
    assert " 0 -> " in listing, listing
    assert "socket:" not in listing, listing
    assert "memfd:" not in listing, listing
    # Nor do they ignore HUP, TTIN or TTOU because a worker does (it catches them).
    ignored = int(get(server.url + "/sigign").text.split()[1], 16)
    for sig in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
        assert not ignored & (1 << (sig - 1)), (sig.name, hex(ignored))


# systemd: notifications (sd_notify).


class NotifySocket:
    """Stands in for systemd's notification socket: collects each datagram with the pid of
    the process that sent it (SO_PASSCRED)."""

    def __init__(self, path: Path):
        self.path = path
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._socket.bind(str(path))
        self._socket.setblocking(False)
        self._messages: list[tuple[int, dict[str, str]]] = []

    def close(self) -> None:
        self._socket.close()

    def messages(self) -> list[tuple[int, dict[str, str]]]:
        """(sender pid, {KEY: value}) of every datagram so far, in order."""
        credentials = struct.Struct("iII")  # struct ucred: pid, uid, gid
        while True:
            try:
                data, ancillary, _, _ = self._socket.recvmsg(
                    4096, socket.CMSG_SPACE(credentials.size)
                )
            except BlockingIOError:
                return list(self._messages)
            sender = -1
            for level, kind, payload in ancillary:
                if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS):
                    sender = credentials.unpack(payload[: credentials.size])[0]
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if line)
            self._messages.append((sender, fields))

    def with_field(self, key: str, value: str = "1") -> list[tuple[int, dict[str, str]]]:
        return [(pid, fields) for pid, fields in self.messages() if fields.get(key) == value]

    def wait(self, key: str, server: Server, count: int = 1) -> list[tuple[int, dict[str, str]]]:
        """Waits until `count` datagrams have set KEY=1; returns them."""

        def arrived() -> list[tuple[int, dict[str, str]]]:
            got = self.with_field(key)
            return got if len(got) >= count else []

        return wait_for(arrived, message=f"{count} datagram(s) with {key}=1", server=server)

    def keys_in_order(self) -> list[str]:
        """The state changes, in the order they came (status lines and pings left out)."""
        wanted = ("READY", "RELOADING", "STOPPING")
        return [key for _, fields in self.messages() for key in fields if key in wanted]


@pytest.fixture
def notify_socket(tmp_path):
    notify = NotifySocket(tmp_path / "notify.sock")
    yield notify
    notify.close()


def test_sd_notify_with_a_relative_notify_socket_is_a_warning(run_rsasgi):
    """Read before logging starts: a line then was lost, and a Type=notify service was
    stopped at TimeoutStartSec with nothing in the log to say why."""
    server = run_rsasgi(APP, env={"NOTIFY_SOCKET": "notify.sock"})

    (line,) = [line for line in server.output().splitlines() if "NOTIFY_SOCKET" in line]
    assert " WARN " in line, line
    assert (
        'NOTIFY_SOCKET="notify.sock" is neither an absolute path nor an @abstract address; '
        "sd_notify is off: systemd sees neither READY=1 nor watchdog pings"
    ) in line


@pytest.mark.parametrize("workers", WORKERS, ids=WORKER_IDS)
def test_sd_notify_to_a_socket_no_one_reads_is_one_warning(run_rsasgi, tmp_path, workers):
    # The socket file stays when the process that bound it is gone.
    path = tmp_path / "gone.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as gone:
        gone.bind(str(path))
    server = run_rsasgi(APP, *workers, env={"NOTIFY_SOCKET": str(path)})
    wait_all_serving(server, workers)
    wait_for_log(server, "sd_notify: cannot send")

    # STOPPING=1 fails as READY=1 did: the same run of failures, not logged again.
    assert server.stop(signal.SIGTERM) == 0
    (line,) = [line for line in server.output().splitlines() if "NOTIFY_SOCKET" in line]
    assert " WARN " in line, line
    assert (
        f"sd_notify: cannot send to NOTIFY_SOCKET={path}: Connection refused (os error 111); "
        "until a send succeeds, systemd sees neither READY=1 nor watchdog pings"
    ) in line


def test_sd_notify_supervisor_is_ready_reloads_and_stops(run_rsasgi, notify_socket):
    server = run_rsasgi(APP, "-w", "2", env={"NOTIFY_SOCKET": str(notify_socket.path)})
    wait_for_log(server, "All 2 workers serving")
    ((sender, ready),) = notify_socket.wait("READY", server)
    assert "2 of 2 workers serving" in ready["STATUS"]
    assert ready["MAINPID"] == str(server.proc.pid)

    server.proc.send_signal(signal.SIGHUP)
    ((_, reloading),) = notify_socket.wait("RELOADING", server)
    assert int(reloading["MONOTONIC_USEC"]) > 0
    wait_for_log(server, "Reload complete")
    notify_socket.wait("READY", server, count=2)

    assert server.stop(signal.SIGTERM) == 0
    notify_socket.wait("STOPPING", server)
    assert notify_socket.keys_in_order() == ["READY", "RELOADING", "READY", "STOPPING"]
    # The workers were started without NOTIFY_SOCKET: every datagram is the supervisor's.
    assert {pid for pid, _ in notify_socket.messages()} == {server.proc.pid}


def test_sd_notify_one_process_is_ready_once_listening_and_stops(run_rsasgi, notify_socket):
    server = run_rsasgi(APP, env={"NOTIFY_SOCKET": str(notify_socket.path)})
    ((_, ready),) = notify_socket.wait("READY", server)
    assert ready["STATUS"] == f"Serving on {server.url}"
    assert ready["MAINPID"] == str(server.proc.pid)

    assert server.stop(signal.SIGTERM) == 0
    notify_socket.wait("STOPPING", server)
    assert notify_socket.keys_in_order() == ["READY", "STOPPING"]
    assert {pid for pid, _ in notify_socket.messages()} == {server.proc.pid}


@pytest.mark.parametrize("workers", WORKERS, ids=WORKER_IDS)
def test_sd_notify_watchdog_is_fed(run_rsasgi, notify_socket, workers):
    server = run_rsasgi(
        APP,
        *workers,
        env={"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "1000000"},
    )
    notify_socket.wait("WATCHDOG", server, count=4)

    assert {pid for pid, _ in notify_socket.with_field("WATCHDOG")} == {server.proc.pid}


# --limit-worker-lifetime.


def test_workers_past_their_lifetime_are_replaced_without_failing_a_request(run_rsasgi):
    server = run_rsasgi(APP, "--limit-worker-lifetime", "2", "-w", "2")
    wait_for_log(server, "All 2 workers serving")
    first = set(started_workers(server.output()))

    def stopped(pid: int) -> bool:
        return f"(pid {pid}) stopped" in server.output()

    with Load(server.url + "/", clients=2, limit=30) as load:
        wait_for(
            lambda: all(stopped(pid) for pid in first),
            timeout=20,
            message="both first workers to be replaced and stop",
            server=server,
        )
        load.wait(
            lambda load: {pid for _, pid in load.answers()} - first,
            "a replacement to answer",
            server,
        )
    outcomes = load.stop()

    log = server.output()
    for pid in first:
        assert re.search(
            rf"\(pid {pid}\) has run for 2s \(--limit-worker-lifetime\); replacing it", log
        ), log
    failures = failed(outcomes)
    assert failures == [], f"{len(failures)} of {len(outcomes)} requests failed"


# --reuse-port.


def test_reuse_port_lets_two_servers_share_a_port(run_rsasgi):
    first = run_rsasgi(APP, "--reuse-port")
    second = run_rsasgi(APP, "--reuse-port", "--port", str(first.port))
    assert second.port == first.port

    with Load(first.url + "/", clients=4) as load:
        load.wait(
            lambda load: {pid for _, pid in load.answers()} == {first.proc.pid, second.proc.pid},
            "both servers to answer",
            first,
        )
    assert failed(load.outcomes) == []


def test_without_reuse_port_the_second_server_exits_1(run_rsasgi):
    first = run_rsasgi(APP)
    second = run_rsasgi(APP, "--port", str(first.port), wait=False)

    assert exit_code(second) == 1
    assert "another server" in second.output()
    assert answer(first)[1] == first.proc.pid
