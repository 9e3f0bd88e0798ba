"""The command line: options, environment variables, and every startup error."""

from __future__ import annotations

import importlib.metadata
import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from conftest import APPS, Server, cli, free_port, wait_for

APP = "err_cli_app:app"


def assert_one_clear_line(output: str, *needles: str) -> None:
    """Exactly one line mentions all `needles`; no traceback, no Rust panic, never listened."""
    lines = [line for line in output.splitlines() if all(n in line for n in needles)]
    assert len(lines) == 1, output
    assert "Traceback" not in output, output
    assert "panicked" not in output, output
    assert "Listening on" not in output, output


def test_version():
    result = cli("--version")
    assert result.returncode == 0, result.stderr
    assert importlib.metadata.version("rsasgi") in result.stdout
    assert "rsasgi" in result.stdout.lower()


OPTIONS = [
    "--factory",
    "--app-dir",
    "--host",
    "--port",
    "--uds",
    "--uds-permissions",
    "--fd",
    "--interface",
    "--lifespan",
    "--loop",
    "--root-path",
    "--log-level",
    "--access-log",
    "--no-access-log",
    "--server-header",
    "--no-server-header",
    "--date-header",
    "--no-date-header",
    "--header",
    "--timeout-keep-alive",
    "--timeout-request-header",
    "--timeout-graceful-shutdown",
    "--uds-permissions",
    "--http2-keep-alive-interval",
    "--http2-keep-alive-timeout",
    "--limit-concurrency",
    "--limit-request-body",
    "--limit-request-head",
    "--backlog",
    "--env-file",
    "--threads",
    "--gc-freeze",
    "--ws",
    "--ws-max-size",
    "--ws-max-queue",
    "--ws-ping-interval",
    "--ws-ping-timeout",
    "--ws-closed-send-grace",
    "--ws-per-message-deflate",
    "--config",
    "--print-config",
    "--check-config",
    "--version",
    "--help",
]


def test_help_lists_every_option():
    result = cli("--help")
    assert result.returncode == 0, result.stderr
    missing = [
        option
        for option in OPTIONS
        if not re.search(r"(?<![\w-])" + re.escape(option) + r"(?![\w-])", result.stdout)
    ]
    assert missing == [], result.stdout


# What one screen of a terminal holds; each group of `--help` fits in it.
SCREEN_LINES = 24
SCREEN_COLUMNS = 80


def help_groups(text: str) -> dict[str, list[str]]:
    """The lines of each group of `--help` output ("Socket:", "Examples:"...), by name."""
    groups: dict[str, list[str]] = {}
    name = None
    for line in text.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            name = line[:-1]
            groups[name] = []
        if name is not None:
            groups[name].append(line)
    return {name: "\n".join(lines).rstrip().splitlines() for name, lines in groups.items()}


def test_help_groups_each_fit_one_screen():
    result = cli("--help", env={"COLUMNS": str(SCREEN_COLUMNS)})
    assert result.returncode == 0, result.stderr
    groups = help_groups(result.stdout)
    assert {"Options", "Socket", "Application", "WebSockets", "Limits", "Examples"} <= set(groups)
    too_wide = [line for line in result.stdout.splitlines() if len(line) > SCREEN_COLUMNS]
    too_tall = {name: len(lines) for name, lines in groups.items() if len(lines) > SCREEN_LINES}
    assert (too_wide, too_tall) == ([], {}), result.stdout


def test_help_says_asgi_and_wsgi_and_shows_examples_for_real_frameworks():
    result = cli("--help")
    assert result.returncode == 0, result.stderr
    first_line = result.stdout.splitlines()[0]
    assert "ASGI" in first_line and "WSGI" in first_line, first_line
    examples = "\n".join(help_groups(result.stdout)["Examples"])
    for needle in [
        "Django, ASGI",
        "Django, WSGI",
        "Flask",
        "FastAPI",
        "--uds /run/rsasgi/rsasgi.sock",
        "deploy/nginx.conf",
    ]:
        assert needle in examples, examples


def test_missing_app_argument_exits_2():
    result = cli("--port", "0")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() != ""
    assert "Traceback" not in result.stderr
    assert "panicked" not in result.stderr


@pytest.mark.parametrize(
    "args, bad",
    [
        (["--port", "abc"], "abc"),
        (["--interface", "bogus"], "bogus"),
        (["--lifespan", "sometimes"], "sometimes"),
        (["--no-such-option"], "--no-such-option"),
        # Seconds beyond what a timer can count (Duration holds u64 seconds, about 1.8e19;
        # an Instant that far ahead overflows). --port 0: a server that starts anyway must
        # not take port 8000.
        (["--timeout-keep-alive", "1e20", "--port", "0"], "1e20"),
        (["--timeout-keep-alive", "1e19", "--port", "0"], "1e19"),
        (["--ws-ping-timeout", "1e20", "--port", "0"], "1e20"),
        (["--ws-ping-timeout", "1e19", "--port", "0"], "1e19"),
        # Framing is per response: a fixed length would garble every keep-alive connection.
        (["--header", "Content-Length: 3", "--port", "0"], "content-length"),
        (["--header", "Transfer-Encoding: chunked", "--port", "0"], "transfer-encoding"),
        # Bytes that are not UTF-8 (Python hands them on with surrogate escapes).
        (["--header", os.fsdecode(b"X-A: \xff"), "--port", "0"], "invalid UTF-8"),
    ],
    ids=[
        "port",
        "interface",
        "lifespan",
        "unknown-option",
        "keep-alive-1e20",
        "keep-alive-1e19",
        "ws-ping-timeout-1e20",
        "ws-ping-timeout-1e19",
        "header-content-length",
        "header-transfer-encoding",
        "argument-not-utf-8",
    ],
)
def test_bad_option_value_exits_2(args, bad):
    result = cli(*args, "--app-dir", str(APPS), APP)
    assert result.returncode == 2, result.stderr
    assert_one_clear_line(result.stderr, bad)


@pytest.mark.parametrize(
    "option, value, allowed",
    [
        ("--timeout-keep-alive", "1e20", "86400"),
        ("--timeout-keep-alive", "1e19", "86400"),
        ("--timeout-keep-alive", "-1", "86400"),
        ("--timeout-request-header", "0", "86400"),
        ("--timeout-request-header", "1e20", "86400"),
        ("--timeout-graceful-shutdown", "1e20", "86400"),
        ("--ws-ping-interval", "1e20", "86400"),
        ("--ws-ping-timeout", "inf", "86400"),
        ("--limit-request-body", "99999999999999999999", "1099511627776"),
        ("--limit-request-head", "2000000", "1048576"),
        ("--ws-max-size", "18446744073709551616", "1073741824"),
        ("--ws-max-queue", "100000", "4096"),
        ("--backlog", "4294967296", "65535"),
        ("--threads", "100000", "4096"),
        ("--limit-concurrency", "99999999", "1048576"),
        ("--uds-permissions", "1777", "777"),
        ("--uds-permissions", "rw-rw----", "777"),
    ],
)
def test_out_of_range_value_is_a_usage_error_naming_the_range(option, value, allowed):
    result = cli(option, value, "--app-dir", str(APPS), APP)
    assert result.returncode == 2, result.stderr
    assert_one_clear_line(result.stderr, option, f"'{value}'", allowed)


def test_out_of_range_env_var_is_a_usage_error_naming_the_option():
    result = cli("--app-dir", str(APPS), APP, env={"RSASGI_TIMEOUT_KEEP_ALIVE": "1e20"})
    assert result.returncode == 2, result.stderr
    assert_one_clear_line(result.stderr, "--timeout-keep-alive", "1e20", "86400")


def test_largest_allowed_values_start_and_serve(run_rsasgi):
    """No value the range checks let through panics later, on a request."""
    server = run_rsasgi(
        APP,
        *("--timeout-keep-alive", "86400", "--timeout-request-header", "86400"),
        *("--timeout-graceful-shutdown", "86400"),
        *("--ws-ping-interval", "86400", "--ws-ping-timeout", "86400"),
        *("--limit-request-body", "1099511627776", "--limit-request-head", "1048576"),
        *("--ws-max-size", "1073741824", "--ws-max-queue", "4096"),
        *("--backlog", "65535", "--threads", "4096", "--limit-concurrency", "1048576"),
    )
    with httpx.Client(base_url=server.url, timeout=10) as client:
        statuses = [client.get("/", params={"name": "X"}).status_code for _ in range(2)]
    assert statuses == [200, 200], server.output()
    assert "panicked" not in server.output()


def test_request_header_timeout_option_is_accepted(run_rsasgi):
    server = run_rsasgi(APP, "--timeout-request-header", "2.5")
    assert httpx.get(server.url + "/", timeout=10).status_code == 200


def get_over_uds(server: Server, path, timeout: float = 20.0) -> httpx.Response:
    """GET / over the Unix socket at `path` once the server listens there."""
    deadline = time.monotonic() + timeout
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), timeout=10) as client:
        while True:
            assert server.proc.poll() is None, server.output()
            try:
                return client.get("http://localhost/")
            except (httpx.ConnectError, httpx.RemoteProtocolError):
                assert time.monotonic() < deadline, f"no answer on {path}: {server.output()}"
                time.sleep(0.05)


@pytest.mark.parametrize("mode", ["660", "0660", "0o660"])
def test_uds_permissions_are_taken_in_octal(run_rsasgi, tmp_path, mode):
    path = tmp_path / "cli.sock"
    server = run_rsasgi(APP, "--uds", str(path), "--uds-permissions", mode, wait=False)
    assert get_over_uds(server, path).status_code == 200


@pytest.mark.parametrize("level", ["WARNING", "warn"])
def test_log_level_in_any_case_or_as_warn_is_honoured(run_rsasgi, tmp_path, level):
    """Warning level: the server serves, and its info line "Listening on" is not logged."""
    path = tmp_path / "cli.sock"
    server = run_rsasgi(APP, "--uds", str(path), "--log-level", level, wait=False)
    assert get_over_uds(server, path).status_code == 200
    assert "Listening on" not in server.output()


@pytest.mark.parametrize(
    "args",
    [
        ["--interface", "asgi"],
        ["--log-level", "Info"],
        ["--ws", "websockets"],
        ["--ws", "websockets-sansio"],
        ["--ws", "wsproto"],
        ["--http", "auto"],
        ["--http", "h11"],
        ["--http", "httptools"],
    ],
    ids=" ".join,
)
def test_other_servers_values_are_accepted(run_rsasgi, args):
    server = run_rsasgi(APP, *args)
    assert httpx.get(server.url + "/", timeout=10).status_code == 200


@pytest.mark.parametrize(
    "args, name",
    [
        (["--chdir", "/srv"], "--chdir"),
        (["--preload"], "--preload"),
        (["--reload-extra-file", "settings.ini"], "--reload-extra-file"),
        (["--paste", "development.ini"], "--paste"),
        (["--static-path-mount", "/srv/static"], "--static-path-mount"),
        (["--worker-class=gthread"], "--worker-class"),
        (["-k", "uvicorn.workers.UvicornWorker"], "-k"),
        (["--ssl-crl", "crl.pem"], "--ssl-crl"),
    ],
    ids=lambda value: value if isinstance(value, str) else " ".join(value),
)
def test_other_servers_options_rsasgi_lacks_are_named(args, name):
    result = cli(*args, "--app-dir", str(APPS), APP)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"rsasgi: {name} is not supported yet by this version of rsasgi (see 'rsasgi --help')"
    )


def test_other_servers_option_under_another_name_points_to_ours():
    result = cli("--keep-alive", "5", "--app-dir", str(APPS), APP)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        "rsasgi: --keep-alive is --timeout-keep-alive in rsasgi (see 'rsasgi --help')"
    )


@pytest.mark.parametrize(
    "arg, guess",
    [
        ("--timeout-keepalive", "--timeout-keep-alive"),
        ("--worker=2", "--workers"),
        ("--relaod", "--reload"),
    ],
)
def test_a_misspelt_option_gets_the_closest_one(arg, guess):
    """As the configuration file's keys do; clap's own guess (`--threads` for `--reload`)
    was left out, and with it every suggestion."""
    result = cli(arg, "--app-dir", str(APPS), APP)
    assert result.returncode == 2, result.stderr
    name = arg.split("=")[0]
    assert result.stderr.strip() == (
        f"rsasgi: unknown option '{name}'; did you mean '{guess}'? (see 'rsasgi --help')"
    )


@pytest.mark.parametrize("arg", ["--foo", "--foo=1", "--quux-frobnicate"])
def test_unknown_option_gets_no_guess(arg):
    result = cli(arg, "--app-dir", str(APPS), APP)
    assert result.returncode == 2, result.stderr
    name = arg.split("=")[0]
    assert result.stderr.strip() == f"rsasgi: unknown option '{name}' (see 'rsasgi --help')"


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["--no-access-log", "true"],
            "--no-access-log is a switch and takes no value, so 'true' was read as the APP; "
            "write --access-log alone to turn it on, --no-access-log to turn it off",
        ),
        (
            ["--reload", "yes"],
            "--reload is a switch and takes no value, so 'yes' was read as the APP; "
            "write --reload alone, or leave it out",
        ),
        (
            ["--access-log", "false"],
            "--access-log takes its value after '=', so 'false' was read as the APP; "
            "write --access-log=false",
        ),
    ],
)
def test_a_value_after_a_switch_is_named_not_the_app(args, expected):
    """`--access-log false APP` read `false` as the APP and then called the real APP
    unexpected, which said nothing of the switch."""
    result = cli(*args, "--app-dir", str(APPS), APP)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"rsasgi: {expected} (see 'rsasgi --help')"


def test_a_value_after_a_switch_after_the_app_is_an_extra_argument():
    result = cli("--app-dir", str(APPS), APP, "--reload", "yes")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        "rsasgi: --reload is a switch and takes no value, so 'yes' was taken as an extra "
        "argument; write --reload alone, or leave it out (see 'rsasgi --help')"
    )


@pytest.mark.parametrize(
    "args, variable",
    [
        (["--max-requests", "lots"], "RSASGI_LIMIT_MAX_REQUESTS"),
        (["-t", "abc"], "RSASGI_TIMEOUT_WORKER_HEALTHCHECK"),
        (["--timeout", "abc"], "RSASGI_TIMEOUT_WORKER_HEALTHCHECK"),
    ],
)
def test_a_bad_value_under_another_name_is_not_blamed_on_the_variable(args, variable):
    """gunicorn's names for an option are the command line's too, whatever the
    environment holds."""
    result = cli(*args, "--app-dir", str(APPS), APP, env={variable: "30"})
    assert result.returncode == 2, result.stderr
    assert f"'{args[1]}'" in result.stderr, result.stderr
    assert variable not in result.stderr, result.stderr


def test_a_bad_value_from_the_environment_names_the_variable():
    """`RSASGI_PORT=abc` in a unit file is not on the command line the operator reads."""
    result = cli("--app-dir", str(APPS), APP, env={"RSASGI_PORT": "abc"})
    assert result.returncode == 2, result.stderr
    assert_one_clear_line(result.stderr, "'abc'", "the environment variable RSASGI_PORT (--port)")
    # Given on the command line too, the bad value is the command line's.
    result = cli("--port", "x", "--app-dir", str(APPS), APP, env={"RSASGI_PORT": "abc"})
    assert result.returncode == 2, result.stderr
    assert_one_clear_line(result.stderr, "'x'", "'--port <PORT>'")
    assert "RSASGI_PORT" not in result.stderr


def test_an_option_a_variable_needs_names_the_variable():
    """RSASGI_SSL_KEYFILE left in a unit file needs a certificate the command line never
    mentions: the message names the variable that wants it."""
    result = cli("--app-dir", str(APPS), APP, env={"RSASGI_SSL_KEYFILE": "/k.pem"})
    assert result.returncode == 2, result.stderr
    assert_one_clear_line(
        result.stderr,
        "--ssl-certfile",
        "(set by the environment: RSASGI_SSL_KEYFILE (--ssl-keyfile))",
    )
    # Given on the command line, the option's requirement is plain to see, and variables
    # that need nothing (a container's RSASGI_PORT) are not blamed.
    result = cli(
        "--ssl-keyfile", "/k.pem", "--app-dir", str(APPS), APP, env={"RSASGI_PORT": "8001"}
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "--ssl-certfile" in result.stderr and "environment" not in result.stderr
    result = cli(
        "--app-dir", str(APPS), APP, env={"RSASGI_SSL_KEYFILE": "/k.pem", "RSASGI_PORT": "8001"}
    )  # fmt: skip
    assert "(set by the environment: RSASGI_SSL_KEYFILE (--ssl-keyfile))" in result.stderr
    # Two variables that need it: neither alone explains it, both are named.
    both = {"RSASGI_SSL_KEYFILE": "/k.pem", "RSASGI_SSL_KEYFILE_PASSWORD": "x", "RSASGI_PORT": "1"}
    result = cli("--app-dir", str(APPS), APP, env=both)
    assert (
        "(set by the environment: RSASGI_SSL_KEYFILE (--ssl-keyfile), "
        "RSASGI_SSL_KEYFILE_PASSWORD (--ssl-keyfile-password))"
    ) in result.stderr, result.stderr
    # With the key on the command line, its password's variable is not what is missing.
    result = cli("--ssl-keyfile", "/k.pem", "--app-dir", str(APPS), APP, env=both)
    assert "environment" not in result.stderr, result.stderr
    # A missing APP is not blamed on the variables.
    result = cli(env={"RSASGI_PORT": "8001"})
    assert result.returncode == 2, result.stderr
    assert "RSASGI_PORT" not in result.stderr, result.stderr


def test_an_address_given_twice_says_so(run_rsasgi):
    """The second bind of the same address failed as if another server held the port."""
    port = free_port()
    server = run_rsasgi(
        APP, "--bind", f"127.0.0.1:{port}", "--bind", f"localhost:{port}", wait=False
    )
    assert server.wait_exit() == 1, server.output()
    assert_one_clear_line(
        server.output(), f"Cannot bind 127.0.0.1:{port}: it is given twice (by --bind or --uds)"
    )


def test_host_port_and_reuse_port_with_only_a_unix_socket_are_warned_of(tmp_path):
    """--uds names every socket: --port and --reuse-port (TCP only) were ignored silently."""
    uds = str(tmp_path / "rsasgi.sock")
    args = ["--check-config", "--app-dir", str(APPS), APP, "--uds", uds]
    result = cli(*args, "--port", "9000", "--reuse-port")
    assert result.returncode == 0, result.stderr
    assert (
        "--port does nothing with --uds, which names every socket to listen on; add --bind "
        "HOST:PORT to listen on a TCP port as well, or drop it"
    ) in result.stderr, result.stderr
    assert (
        "--reuse-port does nothing without a TCP port for rsasgi to bind: SO_REUSEPORT applies "
        "to those only; add --bind HOST:PORT, or drop it"
    ) in result.stderr, result.stderr


def test_threads_with_an_asgi_interface_is_warned_of():
    result = cli(
        "--threads", "4", "--interface", "asgi3", "--check-config", "--app-dir", str(APPS), APP
    )
    assert result.returncode == 0, result.stderr
    assert "--threads does nothing with an ASGI --interface" in result.stderr, result.stderr


def test_a_reload_delay_from_the_environment_without_reload_is_warned_of():
    """A development setting left in the environment must not keep the server from
    starting; the warning names the variable, which the command line does not show."""
    result = cli("--check-config", "--app-dir", str(APPS), APP, env={"RSASGI_RELOAD_DELAY": "1"})
    assert result.returncode == 0, result.stderr
    assert (
        "RSASGI_RELOAD_DELAY (--reload-delay) does nothing without --reload: no file is "
        "watched; add --reload, or drop it"
    ) in result.stderr, result.stderr


def test_a_misspelt_variable_is_warned_of_with_the_one_meant():
    """clap passes over an RSASGI_ variable no option reads, so a typo changed nothing
    without a word."""
    result = cli("--check-config", "--app-dir", str(APPS), APP, env={"RSASGI_WORKER": "4"})
    assert result.returncode == 0, result.stderr
    assert (
        "RSASGI_WORKER is not a variable rsasgi reads, and is ignored; did you mean "
        "RSASGI_WORKERS (--workers)?"
    ) in result.stderr, result.stderr


def test_an_unknown_variable_is_warned_of_once_by_the_supervisor(run_rsasgi):
    """The supervisor hands its workers variables of its own (RSASGI_WORKER_HANDOFF, ...):
    none of them is warned of, and the operator's is, once."""
    server = run_rsasgi("sup_app:app", "--workers", "2", env={"RSASGI_KEEPALIVE": "5"})
    wait_for(
        lambda: len(re.findall(r"worker \d \(pid \d+\) is serving", server.output())) >= 2,
        server=server,
        message="both workers serving",
    )
    server.stop()
    output = server.output()
    assert output.count("RSASGI_KEEPALIVE is not a variable rsasgi reads") == 1, output
    assert "RSASGI_WORKER_" not in output, output


def test_threads_with_an_app_found_to_be_asgi_is_warned_of_by_check_config():
    result = cli(
        "--check-config", "--app-dir", str(APPS), "sup_app:app", env={"RSASGI_THREADS": "4"}
    )
    assert result.returncode == 0, result.stderr
    assert "--threads 4 does nothing: sup_app:app is an ASGI app" in result.stderr, result.stderr


def test_threads_with_an_app_found_to_be_asgi_is_warned_of_once(run_rsasgi):
    """The interface is found when the app is imported: the first worker 1 says it, not the
    workers that replace it (here after --limit-max-requests)."""
    server = run_rsasgi(
        "sup_app:app", "--threads", "4", "--workers", "2", "--limit-max-requests", "2"
    )  # fmt: skip
    warning = "--threads 4 does nothing: sup_app:app is an ASGI app"
    wait_for(lambda: warning in server.output(), server=server, message="the warning")

    def worker_1_replaced():
        # A fresh connection each time, so that both workers get requests and retire.
        httpx.get(f"{server.url}/", headers={"connection": "close"})
        return len(re.findall(r"worker 1 \(pid \d+\) is serving", server.output())) >= 2

    wait_for(worker_1_replaced, server=server, message="a replacement of worker 1 serving")
    server.stop()
    assert server.output().count("--threads 4 does nothing") == 1, server.output()


def test_timeout_worker_boot_without_workers_is_not_warned_of():
    """One process times its own boot when the option is given (it was warned of as doing
    nothing without --workers)."""
    result = cli("--timeout-worker-boot", "5", "--check-config", "--app-dir", str(APPS), APP)
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout + result.stderr
    assert "--timeout-worker-boot" not in result.stderr, result.stderr


def test_lifespan_on_with_an_app_found_to_be_wsgi_is_warned_of_by_check_config():
    result = cli("--check-config", "--app-dir", str(APPS), "sup_wsgi:app", "--lifespan", "on")
    assert result.returncode == 0, result.stderr
    assert "--lifespan on does nothing: sup_wsgi:app is a WSGI app" in result.stderr, result.stderr


def test_lifespan_on_with_an_app_found_to_be_wsgi_is_warned_of_once(run_rsasgi):
    """The interface is found when the app is imported: worker 1 says it, not worker 2."""
    server = run_rsasgi("sup_wsgi:app", "--lifespan", "on", "--workers", "2")
    wait_for(lambda: "All 2 workers serving" in server.output(), server=server, message="both")
    server.stop()
    warning = "--lifespan on does nothing: sup_wsgi:app is a WSGI app"
    assert server.output().count(warning) == 1, server.output()


def test_threads_with_a_wsgi_app_is_not_warned_of(run_rsasgi):
    server = run_rsasgi("sup_wsgi:app", "--threads", "4")
    server.stop()
    assert "does nothing" not in server.output(), server.output()


@pytest.mark.parametrize(
    "app, needle",
    [
        ("err_no_such_module_xyz:app", "err_no_such_module_xyz"),
        ("err_cli_app:nope", "nope"),
        ("err_cli_app:some_int", "some_int"),
    ],
    ids=["module-missing", "attribute-missing", "not-callable"],
)
def test_unloadable_app_exits_3_with_one_line(run_rsasgi, app, needle):
    server = run_rsasgi(app, wait=False)
    assert server.wait_exit() == 3
    assert_one_clear_line(server.output(), needle)


def test_app_without_colon_is_a_usage_error(run_rsasgi):
    """APP must be module:attribute; anything else is a bad command line (exit 2)."""
    server = run_rsasgi("err_cli_app", wait=False)
    assert server.wait_exit() == 2
    assert_one_clear_line(server.output(), "module:attribute")


def test_module_raising_on_import_shows_its_traceback(run_rsasgi):
    server = run_rsasgi("err_cli_import_raises:app", wait=False)
    assert server.wait_exit() == 3
    log = server.output()
    assert "Traceback (most recent call last)" in log
    assert "err_cli_import_raises.py" in log
    assert "RuntimeError: err-import-boom-77" in log
    assert "Listening on" not in log
    assert "panicked" not in log


def test_module_with_missing_dependency_names_the_dependency(run_rsasgi):
    server = run_rsasgi("err_cli_nested_import:app", wait=False)
    assert server.wait_exit() == 3
    log = server.output()
    assert "err_no_such_dependency_xyz" in log
    assert "Listening on" not in log
    assert "panicked" not in log


def test_port_taken_exits_1_naming_the_address(run_rsasgi):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = run_rsasgi(APP, "--port", str(port), wait=False)
        assert server.wait_exit() == 1
    log = server.output()
    lines = [line for line in log.splitlines() if "127.0.0.1" in line and str(port) in line]
    assert len(lines) == 1, log
    assert "Traceback" not in log
    assert "panicked" not in log


def test_missing_env_file_exits_1(run_rsasgi, tmp_path):
    server = run_rsasgi(APP, "--env-file", str(tmp_path / "err-missing.env"), wait=False)
    assert server.wait_exit() == 1
    assert_one_clear_line(server.output(), "err-missing.env")


@pytest.mark.parametrize(
    "line, said",
    [
        ("ERR_CLI_X=two words", '"ERR_CLI_X=two words": a value with spaces must be quoted'),
        ("not a valid line", '"not a valid line": each line must be KEY=VALUE'),
    ],
)
def test_a_bad_env_file_line_is_named_by_its_number(run_rsasgi, tmp_path, line, said):
    """dotenvy's error gave the line's text and "error at line index: 5", a place within it
    that read like a line number."""
    env_file = tmp_path / "bad.env"
    env_file.write_text(f"# settings\nERR_CLI_FOO=bar\n{line}\n")
    server = run_rsasgi(APP, "--env-file", str(env_file), wait=False)
    assert server.wait_exit() == 1
    assert_one_clear_line(server.output(), f"Cannot parse --env-file {env_file}, line 3: {said}")


def test_env_file_values_reach_the_app(run_rsasgi, tmp_path):
    env_file = tmp_path / "app.env"
    env_file.write_text('# a comment\nERR_CLI_FOO=bar\nERR_CLI_QUOTED="hello world"\n')
    server = run_rsasgi(APP, "--env-file", str(env_file))
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.get("/", params={"name": "ERR_CLI_FOO"}).text == "bar"
        assert client.get("/", params={"name": "ERR_CLI_QUOTED"}).text == "hello world"
        assert client.get("/", params={"name": "ERR_CLI_UNSET"}).text == "<unset>"


@pytest.fixture
def bare_server(tmp_path):
    """Start rsasgi with exactly the given arguments (no --port added)."""
    servers: list[Server] = []

    def start(*args: str, env: dict | None = None) -> Server:
        server = Server(list(args), tmp_path, tmp_path / f"bare-{len(servers)}.log", env)
        servers.append(server)
        server.wait_listening()
        return server

    yield start
    for server in servers:
        server.kill()


def test_rsasgi_port_env_var_is_honoured(bare_server):
    port = free_port()
    server = bare_server("--app-dir", str(APPS), APP, env={"RSASGI_PORT": str(port)})
    assert server.port == port
    response = httpx.get(f"http://127.0.0.1:{port}/", params={"name": "RSASGI_PORT"}, timeout=10)
    assert response.status_code == 200


def test_command_line_beats_env_var(bare_server):
    env_port = free_port()
    server = bare_server(
        "--app-dir", str(APPS), "--port", "0", APP, env={"RSASGI_PORT": str(env_port)}
    )
    assert server.port != env_port


def test_factory(run_rsasgi):
    server = run_rsasgi("err_cli_app:make_app", "--factory")
    response = httpx.get(server.url + "/", timeout=10)
    assert response.status_code == 200
    assert response.text == "from-factory"


def test_a_factory_named_without_the_flag_is_called_with_a_warning(run_rsasgi):
    """`rsasgi main:create_app` as uvicorn takes it: a function that takes no arguments can
    only be a factory. It used to be taken for the app itself, the lifespan said it was not
    supported, and every request got a 500."""
    server = run_rsasgi("err_cli_app:make_app")
    response = httpx.get(server.url + "/", timeout=10)
    assert (response.status_code, response.text) == (200, "from-factory")
    assert "taken for an application factory and called" in server.output()


def test_dotted_attribute(run_rsasgi):
    server = run_rsasgi("err_cli_app:holder.inner.app")
    response = httpx.get(server.url + "/", timeout=10)
    assert response.status_code == 200
    assert response.text == "from-dotted"


def test_app_dir_env_var(bare_server):
    env = {"RSASGI_APP_DIR": str(APPS), "RSASGI_PORT": "0"}
    server = bare_server("err_cli_app:holder.inner.app", env=env)
    assert httpx.get(server.url + "/", timeout=10).text == "from-dotted"
    assert os.environ.get("RSASGI_APP_DIR") is None


def check_config(app_dir, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rsasgi", "--check-config", "--app-dir", str(app_dir), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    "source, args, message",
    [
        (
            "import sys\n\n\ndef create():\n    sys.exit(0)\n",
            ["--factory"],
            '--factory: "check_app:create" called sys.exit(0).',
        ),
        (
            "class Boom(BaseException):\n    pass\n\n\nraise Boom('base')\n",
            [],
            'Error while importing module "check_app": check_app.Boom: base',
        ),
    ],
    ids=["sys-exit-in-factory", "base-exception"],
)
def test_check_config_says_what_the_app_raised(tmp_path, source, args, message):
    """It printed the exception's message alone: "rsasgi: 0"."""
    (tmp_path / "check_app.py").write_text(source)
    result = check_config(tmp_path, "check_app:create" if args else "check_app:app", *args)
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith(f"rsasgi: {message}\n"), result.stderr
    assert result.stdout == ""


def test_check_config_interrupted_says_the_check_did_not_complete(tmp_path):
    """CTRL+C while the app is imported: it said "rsasgi: " and exit 3, a failed app."""
    marker = tmp_path / "importing"
    (tmp_path / "check_slow.py").write_text(
        f"import pathlib\nimport time\n\npathlib.Path({str(marker)!r}).touch()\ntime.sleep(30)\n"
    )
    command = [sys.executable, "-m", "rsasgi", "--check-config", "--app-dir", str(tmp_path)]
    with subprocess.Popen(
        [*command, "check_slow:app"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as check:
        wait_for(marker.exists, message="the import to begin")
        check.send_signal(signal.SIGINT)
        stdout, stderr = check.communicate(timeout=10)
    assert check.returncode == 130, stderr
    assert stderr == (
        "rsasgi: interrupted (SIGINT) while loading check_slow:app: the check did not complete\n"
    )
    assert stdout == ""


def test_check_config_ends_once_it_has_said_ok_though_the_app_left_a_thread(tmp_path):
    """A thread the import started, and no daemon, kept it running after "configuration OK",
    for ever. What the app printed comes first."""
    (tmp_path / "check_thread.py").write_text(
        "import threading\n\n"
        "threading.Thread(target=threading.Event().wait, name='scheduler').start()\n"
        "print('imported')\n\n\n"
        "async def app(scope, receive, send):\n    pass\n"
    )
    result = check_config(tmp_path, "check_thread:app", timeout=15)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "imported\nrsasgi: configuration OK: check_thread:app (asgi3), no configuration file\n"
    )


def test_check_config_fails_when_the_app_ends_the_process(tmp_path):
    """os._exit(0) while imported ended the check with exit 0 and no result: a pass."""
    (tmp_path / "check_exit.py").write_text("import os\n\nos._exit(0)\n")
    result = check_config(tmp_path, "check_exit:app")
    assert result.returncode == 3, result.stderr
    assert result.stderr == 'rsasgi: "check_exit:app" called os._exit(0) while being loaded\n'
    assert "configuration OK" not in result.stdout
