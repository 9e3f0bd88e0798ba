"""The configuration file: `--config FILE` and `[tool.rsasgi]` in pyproject.toml, its
precedence below the command line and RSASGI_* variables, its errors, `--print-config`
and `--check-config`.

App: tests/apps/err_cli_app.py (`/?name=VAR` answers the app's os.environ[VAR]).
"""

from __future__ import annotations

import re
import shutil
import signal
from pathlib import Path

import httpx
import pytest
from conftest import APPS, Server, cli, free_port, wait_for, wait_for_log

APP = "err_cli_app:app"
STARTED = re.compile(r"Started worker \d+ \(pid (\d+)\)")


@pytest.fixture
def serve(tmp_path):
    """Start rsasgi with exactly the given arguments (no --port or --app-dir added, so
    the file can set them) and wait until it listens."""
    servers: list[Server] = []

    def start(*args: str, cwd: Path | None = None, env: dict | None = None) -> Server:
        log = tmp_path / f"config-{len(servers)}.log"
        server = Server(list(args), cwd or tmp_path, log, env)
        servers.append(server)
        server.wait_listening()
        return server

    yield start
    for server in servers:
        server.kill()


def write_config(tmp_path: Path, text: str, name: str = "rsasgi.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def toml_string(value: object) -> str:
    """`value` as a TOML basic string."""
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def assert_one_line(stderr: str, *needles: str) -> str:
    """stderr is exactly one line, holding every needle; returns it."""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert all(needle in lines[0] for needle in needles), stderr
    assert "Traceback" not in stderr and "panicked" not in stderr, stderr
    return lines[0]


def test_a_config_file_sets_the_port_and_the_response_headers(serve, tmp_path):
    port = free_port()
    config = write_config(
        tmp_path,
        f"app = {toml_string(APP)}\n"
        f"app-dir = {toml_string(APPS)}\n"
        f"port = {port}\n"
        'header = ["X-Frame-Options: DENY", "X-From: file"]\n'
        "server-header = false\n",
    )
    server = serve("--config", str(config))
    assert server.port == port
    response = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
    assert response.status_code == 200
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-from"] == "file"
    assert "server" not in response.headers


def project_with_pyproject(tmp_path: Path, table: str) -> Path:
    """A project directory: the app module and a pyproject.toml with `table` in it."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(APPS / "err_cli_app.py", project / "err_cli_app.py")
    (project / "pyproject.toml").write_text(
        '[project]\nname = "mysite"\nversion = "1.0"\n\n[tool.ruff]\nline-length = 100\n\n'
        f"[tool.rsasgi]\n{table}"
    )
    return project


def test_pyproject_tool_rsasgi_is_found_in_the_current_directory(serve, tmp_path):
    port = free_port()
    project = project_with_pyproject(
        tmp_path, f'app = "{APP}"\nport = {port}\nheader = ["X-From: pyproject"]\n'
    )
    server = serve(cwd=project)
    assert server.port == port
    assert httpx.get(server.url + "/", timeout=10).headers["x-from"] == "pyproject"


def test_pyproject_tool_rsasgi_is_found_in_the_app_dir(serve, tmp_path):
    project = project_with_pyproject(tmp_path, 'header = ["X-From: pyproject"]\n')
    server = serve("--app-dir", str(project), "--port", "0", APP, cwd=tmp_path)
    assert httpx.get(server.url + "/", timeout=10).headers["x-from"] == "pyproject"


def test_pyproject_is_not_read_when_config_names_a_file(serve, tmp_path):
    project = project_with_pyproject(tmp_path, 'header = ["X-From: pyproject"]\n')
    config = write_config(tmp_path, 'header = ["X-From: config"]\n')
    server = serve("--config", str(config), "--port", "0", APP, cwd=project)
    assert httpx.get(server.url + "/", timeout=10).headers["x-from"] == "config"


def test_an_environment_variable_beats_the_file(serve, tmp_path):
    env_port = free_port()
    config = write_config(
        tmp_path,
        f'app = "{APP}"\napp-dir = {toml_string(APPS)}\nport = {free_port()}\n'
        'header = ["X-Source: file", "X-Other: file"]\n',
    )
    server = serve(
        "--config",
        str(config),
        env={"RSASGI_PORT": str(env_port), "RSASGI_HEADER": "X-Source: env"},
    )
    assert server.port == env_port
    headers = httpx.get(server.url + "/", timeout=10).headers
    # The variable's list replaces the file's.
    assert (headers.get_list("x-source"), headers.get("x-other")) == (["env"], None)


def test_the_command_line_beats_the_environment_and_the_file(serve, tmp_path):
    cli_port = free_port()
    config = write_config(
        tmp_path,
        f'app = "{APP}"\napp-dir = {toml_string(APPS)}\nport = {free_port()}\n'
        'header = ["X-Source: file"]\n',
    )
    server = serve(
        "--config",
        str(config),
        "--port",
        str(cli_port),
        "--header",
        "X-Source: command line",
        env={"RSASGI_PORT": str(free_port()), "RSASGI_HEADER": "X-Source: env"},
    )
    assert server.port == cli_port
    headers = httpx.get(server.url + "/", timeout=10).headers
    assert headers.get_list("x-source") == ["command line"]


def test_workers_keep_the_settings_the_supervisor_read(serve, tmp_path):
    """Workers started after the file changed (SIGHUP) still run with what the supervisor
    read, and the app never sees how the settings were handed down."""
    config = write_config(
        tmp_path,
        f'app = "{APP}"\napp-dir = {toml_string(APPS)}\nport = 0\nworkers = 1\n'
        'header = ["X-Version: 1"]\n',
    )
    server = serve("--config", str(config))
    wait_for_log(server, "All 1 worker")
    first = set(STARTED.findall(server.output()))
    config.write_text(config.read_text().replace("X-Version: 1", "X-Version: 2"))
    server.proc.send_signal(signal.SIGHUP)
    wait_for_log(server, "Reload complete")
    wait_for(
        lambda: set(STARTED.findall(server.output())) - first,
        message="a new worker",
        server=server,
    )
    with httpx.Client(base_url=server.url, timeout=10) as client:
        response = client.get("/", params={"name": "RSASGI_WORKER_FILE_SETTINGS"})
    assert (response.headers["x-version"], response.text) == ("1", "<unset>")


def test_an_unknown_key_exits_2_naming_the_closest_valid_key(tmp_path):
    config = write_config(tmp_path, "timeout-keepalive = 5\n")
    result = cli("--config", str(config), "--app-dir", str(APPS), APP)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"rsasgi: unknown key 'timeout-keepalive' in {config}; "
        "did you mean 'timeout-keep-alive'? (see 'rsasgi --help')"
    )


def test_an_unknown_key_in_pyproject_names_the_table(tmp_path):
    project = project_with_pyproject(tmp_path, f'app = "{APP}"\nheaders = ["X-A: 1"]\n')
    result = cli(cwd=project)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"rsasgi: unknown key 'headers' in {project / 'pyproject.toml'} [tool.rsasgi]; "
        "did you mean 'header'? (see 'rsasgi --help')"
    )


@pytest.mark.parametrize("check", [False, True], ids=["serve", "check-config"])
def test_a_pyproject_named_without_a_tool_rsasgi_table_is_an_error(tmp_path, check):
    """Named with --config, a pyproject.toml is meant to hold settings: one whose table is
    misspelt gave a server on the defaults (plain HTTP on 127.0.0.1:8000, whatever TLS and
    bind the file meant), and --check-config said OK."""
    project = tmp_path / "project"
    project.mkdir()
    pyproject = project / "pyproject.toml"
    pyproject.write_text('[tools.rsasgi]\nport = 8443\nssl-certfile = "cert.pem"\n')
    args = ["--check-config"] if check else []
    result = cli("--config", str(pyproject), "--app-dir", str(APPS), *args, APP)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert_one_line(result.stderr, str(pyproject), "no [tool.rsasgi] table")


@pytest.mark.parametrize(
    "line, needles",
    [
        ("port = true", ["key 'port'", "expected a string or a number, got a boolean"]),
        ("reload = 1", ["key 'reload'", "expected true or false, got an integer"]),
        ('header = "X-A: 1"\naccess-log = "no"', ["key 'access-log'", "true or false"]),
        ("umask = 22", ["key 'umask'", 'as a string, like "660"']),
        ('port = "eighty"', ["invalid value 'eighty' for key 'port'"]),
        ("timeout-keep-alive = 1e20", ["key 'timeout-keep-alive'", "86400"]),
    ],
    ids=["port-bool", "flag-int", "switch-string", "octal-int", "port-word", "seconds-range"],
)
def test_a_wrong_type_or_value_exits_2_naming_the_file_and_key(tmp_path, line, needles):
    config = write_config(tmp_path, line + "\n")
    result = cli("--config", str(config), "--app-dir", str(APPS), APP)
    assert result.returncode == 2, result.stderr
    assert_one_line(result.stderr, f"in {config}", *needles)


def test_a_file_that_is_not_toml_exits_2_naming_the_line(tmp_path):
    config = write_config(tmp_path, 'port = 8000\nheader = ["X-A: 1"\n')
    result = cli("--config", str(config), APP)
    assert result.returncode == 2, result.stderr
    assert_one_line(result.stderr, f"{config}, line 2", "not valid TOML")


def test_a_missing_config_file_exits_2(tmp_path):
    result = cli("--config", str(tmp_path / "missing.toml"), APP, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert_one_line(result.stderr, "cannot read", "missing.toml")


def test_print_config_shows_each_setting_and_where_it_comes_from(tmp_path):
    config = write_config(
        tmp_path,
        f'app = "{APP}"\nthreads = 3\nheader = ["X-A: 1"]\n'
        'ssl-certfile = "cert.pem"\nssl-keyfile-password = "s3cret"\n',
    )
    result = cli(
        "--config",
        str(config),
        "--port",
        "9999",
        "--print-config",
        env={"RSASGI_TIMEOUT_KEEP_ALIVE": "7"},
    )
    assert result.returncode == 0, result.stderr
    lines = {
        line.removeprefix("# ").split(" = ")[0]: " ".join(line.split())
        for line in result.stdout.splitlines()
        if " = " in line
    }
    assert lines["app"] == f'app = "{APP}" # file {config}'
    assert lines["threads"] == f"threads = 3 # file {config}"
    assert lines["header"] == f'header = ["X-A: 1"] # file {config}'
    assert lines["timeout-keep-alive"] == (
        "timeout-keep-alive = 7 # environment RSASGI_TIMEOUT_KEEP_ALIVE"
    )
    assert lines["port"] == "port = 9999 # command line"
    # Defaults are commented out, so the listing can serve as a configuration file.
    assert lines["backlog"] == "# backlog = 2048 # default"
    # A default that follows other settings: none for one process, which times its boot
    # only when told to; with workers, 60 s, or the health check's if longer.
    assert "# timeout-worker-boot is not set" in result.stdout
    workers = cli(APP, "--workers", "2", "--print-config").stdout
    assert "# timeout-worker-boot = 60 " in workers
    longer = cli(APP, "-w", "2", "--timeout-worker-healthcheck", "90", "--print-config").stdout
    assert "# timeout-worker-boot = 90 " in longer
    assert (
        "# timeout-worker-boot is not set"
        in cli(APP, "-w", "2", "-t", "0", "--print-config").stdout
    )
    assert "s3cret" not in result.stdout
    assert f"# configuration file: {config}" in result.stdout
    assert "Listening on" not in result.stdout + result.stderr


def test_watchfiles_force_polling_stands_in_for_an_unset_reload_engine(tmp_path):
    """As uvicorn's watcher reads it: set and not "false", it means poll; a --reload-engine
    from any source wins over it."""

    def engine_line(*args: str, polling: str) -> str:
        result = cli(APP, *args, "--print-config", env={"WATCHFILES_FORCE_POLLING": polling})
        assert result.returncode == 0, result.stderr
        (line,) = [line for line in result.stdout.splitlines() if "reload-engine" in line]
        return " ".join(line.split())

    assert engine_line(polling="true") == (
        'reload-engine = "poll" # environment WATCHFILES_FORCE_POLLING'
    )
    assert engine_line(polling="false") == '# reload-engine = "auto" # default'
    config = write_config(tmp_path, 'reload-engine = "inotify"\n')
    assert engine_line("--config", str(config), polling="1") == (
        f'reload-engine = "inotify" # file {config}'
    )


def test_print_config_output_is_a_configuration_file(tmp_path):
    """Fed back with --config, the listing gives the same settings."""
    tomllib = pytest.importorskip("tomllib")
    args = ("--header", "X-A: 1", "--timeout-keep-alive", "2.5", "--workers", "auto", APP)
    result = cli("--print-config", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    settings = tomllib.loads(result.stdout)
    assert (settings["timeout-keep-alive"], settings["header"]) == (2.5, ["X-A: 1"])
    config = write_config(tmp_path, result.stdout)
    again = cli("--config", str(config), "--print-config", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert tomllib.loads(again.stdout) == settings
    assert "timeout-keep-alive = 2.5" in again.stdout
    assert f"# file {config}" in again.stdout


def test_check_config_succeeds_without_binding(tmp_path):
    socket_path = tmp_path / "check.sock"
    config = write_config(
        tmp_path,
        f'app = "{APP}"\napp-dir = {toml_string(APPS)}\nuds = {toml_string(socket_path)}\n',
    )
    result = cli("--config", str(config), "--check-config")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"rsasgi: configuration OK: {APP} (asgi3), settings from {config}"
    )
    assert not socket_path.exists()


def test_check_config_fails_on_a_missing_certificate(tmp_path):
    config = write_config(
        tmp_path, f'app = "{APP}"\napp-dir = {toml_string(APPS)}\nssl-certfile = "nope.pem"\n'
    )
    result = cli("--config", str(config), "--check-config")
    assert result.returncode == 1, result.stderr
    assert_one_line(result.stderr, "--ssl-certfile", "nope.pem")
    assert "configuration OK" not in result.stdout


@pytest.mark.parametrize(
    ("option", "needle"),
    [
        ("--reload-dir", "--reload-dir {missing}: no such directory"),
        ("--log-file", "Cannot open --log-file {missing}/x.log: {missing}: No such file"),
        ("--access-logfile", "Cannot open --access-logfile {missing}/x.log: {missing}: No such"),
        ("--pid", "Cannot write --pid {missing}/x.log: {missing}: No such file"),
    ],
)
def test_check_config_fails_on_a_path_startup_cannot_use(tmp_path, option, needle):
    """It "checks everything startup checks": a watched directory that is not there, or a
    log or pid file whose directory is not, fails here as it would fail the start."""
    missing = tmp_path / "missing"
    value = str(missing) if option == "--reload-dir" else str(missing / "x.log")
    reload = ["--reload"] if option == "--reload-dir" else []
    result = cli("--app-dir", str(APPS), "--check-config", *reload, option, value, APP)
    assert result.returncode == 1, result.stderr
    assert_one_line(result.stderr, needle.format(missing=missing))
    assert "configuration OK" not in result.stdout
    # The same paths in a directory that exists are fine, and nothing is created.
    value = str(tmp_path) if option == "--reload-dir" else str(tmp_path / "x.log")
    result = cli("--app-dir", str(APPS), "--check-config", *reload, option, value, APP)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "x.log").exists()


def test_check_config_fails_on_an_app_that_does_not_load(tmp_path):
    result = cli("--app-dir", str(APPS), "--check-config", "err_cli_app:nope", cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert_one_line(result.stderr, '"nope"', "err_cli_app")
    assert "configuration OK" not in result.stdout


def test_check_config_fails_on_a_bad_setting(tmp_path):
    config = write_config(tmp_path, "threads = 0\n")
    result = cli("--config", str(config), "--app-dir", str(APPS), "--check-config", APP)
    assert result.returncode == 2, result.stderr
    assert_one_line(result.stderr, "key 'threads'", str(config))


def test_settings_that_do_nothing_are_warned_of_once(tmp_path, run_rsasgi):
    """A setting the rest of the configuration turns off (a file's static-max-age
    with no static-map, an environment's forwarded-allow-ips beside
    --no-proxy-headers) used to be taken and ignored without a word."""
    config = write_config(
        tmp_path, f'app = "{APP}"\napp-dir = {toml_string(APPS)}\nstatic-max-age = 60\n'
    )
    env = {"RSASGI_FORWARDED_ALLOW_IPS": "10.0.0.1"}
    result = cli("--config", str(config), "--no-proxy-headers", "--check-config", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "rsasgi: warning: RSASGI_FORWARDED_ALLOW_IPS (--forwarded-allow-ips) does nothing with "
        "--no-proxy-headers and no "
        "--proxy-protocol: every client address comes from the socket; remove "
        "--no-proxy-headers, or drop it",
        "rsasgi: warning: --static-max-age does nothing without --static-map: no static "
        "files are served; add --static-map PREFIX=DIR, or drop it",
    ]
    # Served with workers: said once, by the supervisor, not by each worker.
    server = run_rsasgi(
        "--config", str(config), "--no-proxy-headers", "--workers", "2", "--port", "0", env=env
    )
    wait_for(lambda: len(STARTED.findall(server.output())) == 2, timeout=20)
    assert httpx.get(server.url + "/", timeout=10).status_code == 200
    output = server.output()
    assert output.count("--static-max-age does nothing without --static-map") == 1, output
    assert output.count("RSASGI_FORWARDED_ALLOW_IPS (--forwarded-allow-ips) does nothing") == 1, (
        output
    )
    assert " WARN " in next(
        line for line in output.splitlines() if "--static-max-age does nothing" in line
    )


def switch_lines(*args: str, env: dict | None = None, cwd=None) -> dict[str, str]:
    """The --print-config lines of server-header and no-server-header, spaces squeezed."""
    result = cli(*args, "--print-config", env=env, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return {
        line.removeprefix("# ").split(" = ")[0]: " ".join(line.split())
        for line in result.stdout.splitlines()
        if "server-header = " in line
    }


def test_a_switch_and_its_no_form_follow_the_precedence_of_their_sources(tmp_path, run_rsasgi):
    """RSASGI_NO_SERVER_HEADER=true beat --server-header on the command line, against the
    rule that the command line wins, and --print-config listed both as in effect; both
    forms on the command line gave off whatever their order."""
    env = {"RSASGI_NO_SERVER_HEADER": "true"}
    lines = switch_lines(APP, "--server-header", env=env)
    assert lines["server-header"] == "server-header = true # command line"
    assert lines["no-server-header"] == (
        "# no-server-header = true # environment RSASGI_NO_SERVER_HEADER, overridden by "
        "server-header"
    )
    server = run_rsasgi(APP, "--server-header", env=env)
    assert httpx.get(server.url, timeout=5).headers.get("server") == "rsasgi"

    # On the command line, the last one given.
    last_off = switch_lines(APP, "--server-header", "--no-server-header")
    assert last_off["no-server-header"] == "no-server-header = true # command line"
    assert last_off["server-header"] == (
        "# server-header = true # command line, overridden by no-server-header"
    )
    last_on = switch_lines(APP, "--no-server-header", "--server-header")
    assert last_on["server-header"] == "server-header = true # command line"
    assert last_on["no-server-header"] == (
        "# no-server-header = true # command line, overridden by server-header"
    )
    server = run_rsasgi(APP, "--server-header", "--no-server-header")
    assert "server" not in httpx.get(server.url, timeout=5).headers

    # The environment over the file, in either form.
    config = write_config(tmp_path, "no-server-header = true\n")
    from_env = switch_lines(
        "--config", str(config), APP, env={"RSASGI_SERVER_HEADER": "true"}, cwd=tmp_path
    )
    assert from_env["server-header"] == "server-header = true # environment RSASGI_SERVER_HEADER"
    assert from_env["no-server-header"].startswith("# no-server-header = false # default")
