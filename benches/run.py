"""Benchmark rsasgi against its peers with wrk, side by side, over ASGI and over WSGI.

Each server runs one worker pinned to one CPU core; wrk runs pinned to another. Every server in
a group serves the same plain app (benches/apps.py: `hello` for ASGI, `wsgi_hello` for WSGI) on
three scenarios, and the script prints requests/s and p99 latency per server, then rsasgi's
requests/s divided by each peer's, one table per group.

    ASGI: rsasgi, uvicorn, granian, hypercorn
    WSGI: rsasgi, granian, gunicorn (gthread), uwsgi, waitress

    pip install -r benches/requirements.txt     # the peers; this script installs nothing
    apt-get install wrk
    python benches/run.py                        # from the repository root; both groups
    python benches/run.py --group wsgi --duration 5 --servers rsasgi granian --scenarios hello

Results also go to benches/results/latest.json.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ASGI_APP = "benches.apps:hello"
WSGI_APP = "benches.apps:wsgi_hello"
RESULTS = REPO / "benches" / "results" / "latest.json"
HOST = "127.0.0.1"

GROUPS = ("asgi", "wsgi")

# The bars set for rsasgi on the hello-world scenario (issues 2 and 3): its req/s over each peer's.
BAR = {"asgi": {"granian": 1.0, "uvicorn": 1.3}, "wsgi": {"granian": 1.0}}

# Pool size of the WSGI peers: rsasgi's default --threads, so every server gets the same pool.
WSGI_THREADS = 8

ECHO_BODY_SIZE = 10 * 1024


@dataclass
class Scenario:
    """One wrk workload: a path, an optional wrk Lua script, and a check of the app's answer."""

    name: str
    description: str
    path: str
    lua: str | None = None
    method: str = "GET"
    request_body: bytes | None = None
    expected_body: bytes = b""


SCENARIOS = {
    scenario.name: scenario
    for scenario in [
        Scenario("hello", "GET hello world (13 B)", "/", expected_body=b"Hello, world!"),
        Scenario("10k", "GET 10 KiB response", "/10k", expected_body=b"x" * 10 * 1024),
        Scenario(
            "echo",
            "POST 10 KiB, echoed back",
            "/echo",
            lua=(
                'wrk.method = "POST"\n'
                f'wrk.body = string.rep("e", {ECHO_BODY_SIZE})\n'
                'wrk.headers["Content-Type"] = "application/octet-stream"\n'
            ),
            method="POST",
            request_body=b"e" * ECHO_BODY_SIZE,
            expected_body=b"e" * ECHO_BODY_SIZE,
        ),
    ]
}


@dataclass
class ServerSpec:
    """How to start one server on a port.

    `requires` are the modules it needs importable, `programs` the executables it needs (looked
    up next to the Python interpreter first, then on PATH); `install` says how to get them.
    """

    name: str
    group: str
    requires: tuple[str, ...]
    argv: Callable[[int], list[str]] = field(repr=False)
    notes: str = ""
    programs: tuple[str, ...] = ()
    install: str = "pip install -r benches/requirements.txt"

    def missing(self) -> list[str]:
        modules = [m for m in self.requires if importlib.util.find_spec(m) is None]
        programs = [p for p in self.programs if program(p) is None]
        return modules + programs


def program(name: str) -> str | None:
    """The executable `name` from the interpreter's bin directory (a venv), else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def _has_uvloop() -> bool:
    return importlib.util.find_spec("uvloop") is not None


# ---- ASGI


def _rsasgi_argv(port: int) -> list[str]:
    return [
        sys.executable, "-m", "rsasgi", ASGI_APP,
        "--host", HOST, "--port", str(port),
        "--no-access-log",
    ]  # fmt: skip


def _uvicorn_argv(port: int) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", ASGI_APP,
        "--host", HOST, "--port", str(port),
        "--loop", "uvloop", "--http", "httptools",
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip


def _granian_argv(port: int) -> list[str]:
    loop = ["--loop", "uvloop"] if _has_uvloop() else []
    return [
        sys.executable, "-m", "granian", "--interface", "asgi",
        "--host", HOST, "--port", str(port),
        "--workers", "1", "--runtime-threads", "1", "--no-ws", *loop,
        "--no-access-log", "--log-level", "warning",
        ASGI_APP,
    ]  # fmt: skip


def _hypercorn_argv(port: int) -> list[str]:
    worker_class = ["--worker-class", "uvloop"] if _has_uvloop() else []
    return [
        sys.executable, "-m", "hypercorn", ASGI_APP,
        "--bind", f"{HOST}:{port}", "--workers", "1", *worker_class,
        "--log-level", "warning",
    ]  # fmt: skip


# ---- WSGI


def _rsasgi_wsgi_argv(port: int) -> list[str]:
    return [
        sys.executable, "-m", "rsasgi", WSGI_APP, "--interface", "wsgi",
        "--host", HOST, "--port", str(port),
        "--no-access-log",
    ]  # fmt: skip


def _granian_wsgi_argv(port: int) -> list[str]:
    return [
        sys.executable, "-m", "granian", "--interface", "wsgi",
        "--host", HOST, "--port", str(port),
        "--workers", "1", "--runtime-threads", "1", "--blocking-threads", str(WSGI_THREADS),
        "--no-ws", "--no-access-log", "--log-level", "warning",
        WSGI_APP,
    ]  # fmt: skip


def _gunicorn_argv(port: int) -> list[str]:
    return [
        sys.executable, "-m", "gunicorn", WSGI_APP,
        "--bind", f"{HOST}:{port}", "--workers", "1",
        "--worker-class", "gthread", "--threads", str(WSGI_THREADS),
        "--log-level", "warning",
    ]  # fmt: skip


def _uwsgi_argv(port: int) -> list[str]:
    # --http: uWSGI's HTTP router (a second process, pinned to the same core) in front of the
    # worker, which is how uWSGI serves HTTP clients directly. --http-keepalive lets wrk reuse
    # its connections; with the default page-size router buffer a 10 KiB response stalls ~40 ms
    # on a keep-alive connection (Nagle + delayed ACK: ~1,400 req/s), hence the 64 KiB buffer.
    # Not --http11-socket: there each of the 8 threads holds one keep-alive connection and the
    # other 56 of wrk's 64 connections wait unserved for the whole run.
    return [
        program("uwsgi") or "uwsgi",
        "--http", f"{HOST}:{port}", "--http-keepalive", "--http-buffer-size", "65536",
        "--module", WSGI_APP, "--pythonpath", str(REPO),
        "--master", "--processes", "1", "--threads", str(WSGI_THREADS),
        "--disable-logging", "--die-on-term", "--need-app",
    ]  # fmt: skip


def _waitress_argv(port: int) -> list[str]:
    return [
        sys.executable, "-m", "waitress",
        f"--listen={HOST}:{port}", f"--threads={WSGI_THREADS}",
        WSGI_APP,
    ]  # fmt: skip


SERVER_SPECS = [
    ServerSpec(
        "rsasgi", "asgi", ("rsasgi",), _rsasgi_argv, "loop auto: uvloop when installed",
        install="pip install .",
    ),
    ServerSpec(
        "uvicorn", "asgi", ("uvicorn", "uvloop", "httptools"), _uvicorn_argv,
        "uvloop + httptools",
    ),
    ServerSpec("granian", "asgi", ("granian",), _granian_argv, "asgi, 1 runtime thread, uvloop"),
    ServerSpec("hypercorn", "asgi", ("hypercorn",), _hypercorn_argv, "uvloop worker"),
    ServerSpec(
        "rsasgi", "wsgi", ("rsasgi",), _rsasgi_wsgi_argv, "wsgi, default --threads",
        install="pip install .",
    ),
    ServerSpec(
        "granian", "wsgi", ("granian",), _granian_wsgi_argv,
        f"wsgi, 1 runtime thread, {WSGI_THREADS} blocking threads",
    ),
    ServerSpec(
        "gunicorn", "wsgi", ("gunicorn",), _gunicorn_argv,
        f"1 gthread worker, {WSGI_THREADS} threads",
    ),
    ServerSpec(
        "uwsgi", "wsgi", (), _uwsgi_argv,
        f"--http router + 1 process, {WSGI_THREADS} threads",
        programs=("uwsgi",),
        install="pip install uwsgi; it compiles C: needs gcc and the Python headers, "
        "e.g. apt-get install build-essential python3-dev",
    ),
    ServerSpec(
        "waitress", "wsgi", ("waitress",), _waitress_argv, f"{WSGI_THREADS} threads",
    ),
]  # fmt: skip

# {group: {name: spec}}
SERVERS = {group: {s.name: s for s in SERVER_SPECS if s.group == group} for group in GROUPS}
SERVER_NAMES = list(dict.fromkeys(spec.name for spec in SERVER_SPECS))


# --------------------------------------------------------------------------- wrk output


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def parse_duration_ms(text: str) -> float:
    """'812.00us' / '1.23ms' / '2.00s' / '1.00m' -> milliseconds."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not match:
        raise ValueError(f"unrecognised wrk duration {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> dict:
    """Requests/s, p99 latency, request count and errors from `wrk --latency` output."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p99 = re.search(r"^\s*99%\s+(\S+)", output, re.MULTILINE)
    if not rps or not p99:
        raise ValueError("could not find Requests/sec and the 99% latency in wrk's output")
    average = re.search(r"^\s*Latency\s+(\S+)", output, re.MULTILINE)
    requests = re.search(r"(\d+) requests in", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    errors = dict.fromkeys(("connect", "read", "write", "timeout"), 0)
    if socket_errors:
        errors = dict(zip(errors, map(int, socket_errors.groups()), strict=True))
    return {
        "requests_per_sec": float(rps.group(1)),
        "p99_ms": parse_duration_ms(p99.group(1)),
        "average_ms": parse_duration_ms(average.group(1)) if average else None,
        "requests": int(requests.group(1)) if requests else None,
        "non_2xx_3xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": errors,
    }


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Returns once `port` accepts a connection; raises if the server exits or never listens."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with code {proc.returncode} before listening")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"not listening on port {port} after {timeout:.0f}s")


class RunningServer:
    """A server process in its own session, pinned with taskset; its log goes to a temp file."""

    def __init__(self, spec: ServerSpec, cpu: str, log_dir: Path):
        self.spec = spec
        self.port = free_port()
        self.log_path = log_dir / f"{spec.group}-{spec.name}.log"
        self._log = open(self.log_path, "wb")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        self.command = ["taskset", "-c", cpu, *spec.argv(self.port)]
        self.proc = subprocess.Popen(
            self.command,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log_tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace").strip().splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        """SIGINT for a graceful exit, then SIGKILL to the whole group (workers included)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(timeout=15)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self._log.close()


def check_answer(port: int, scenario: Scenario) -> None:
    """Raises unless the server answers the scenario's request with 200 and the right body."""
    request = urllib.request.Request(
        f"http://{HOST}:{port}{scenario.path}",
        data=scenario.request_body,
        method=scenario.method,
        headers={"Content-Type": "application/octet-stream"} if scenario.request_body else {},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
        if response.status != 200 or body != scenario.expected_body:
            raise RuntimeError(
                f"{scenario.method} {scenario.path} -> {response.status}, {len(body)} bytes"
                f" (expected 200, {len(scenario.expected_body)} bytes)"
            )


def run_wrk(args, port: int, scenario: Scenario, duration: int, script_dir: Path) -> str:
    command = [
        "taskset", "-c", args.wrk_cpu,
        "wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{duration}s", "--latency",
    ]  # fmt: skip
    if scenario.lua:
        script = script_dir / f"{scenario.name}.lua"
        script.write_text(scenario.lua)
        command += ["-s", str(script)]
    command.append(f"http://{HOST}:{port}{scenario.path}")
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=duration + args.timeout_margin
    )
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip()
        raise RuntimeError(f"wrk failed with exit code {result.returncode}: {message}")
    return result.stdout


def bench_server(args, spec: ServerSpec, scenarios: list[Scenario], work: Path):
    """Starts `spec` once and runs every scenario against it.

    Returns the command that started the server and {scenario name: result}; a scenario that
    fails gets {"error": ...} and the run goes on, unless the server has exited.
    """
    results: dict[str, dict] = {}
    server = RunningServer(spec, args.server_cpu, work)
    try:
        for scenario in scenarios:
            try:
                wait_for_port(server.port, server.proc)
                check_answer(server.port, scenario)
                if args.warmup > 0:
                    run_wrk(args, server.port, scenario, args.warmup, work)
                wait_for_port(server.port, server.proc)
                output = run_wrk(args, server.port, scenario, args.duration, work)
                if server.proc.poll() is not None:
                    raise RuntimeError(f"exited with code {server.proc.returncode} during the run")
                result = parse_wrk(output)
            except Exception as error:  # one failure must not end the whole benchmark
                results[scenario.name] = {"error": str(error), "log_tail": server.log_tail()}
                print(f"  {scenario.name:<6} FAILED: {error}", flush=True)
                if server.proc.poll() is not None:
                    print(f"  server log:\n{_indent(server.log_tail())}", flush=True)
                    break
                continue
            # Little's law: how many connections had a request in flight, on average. Far
            # below wrk's connection count means the server left connections waiting.
            if result["average_ms"]:
                busy = result["requests_per_sec"] * result["average_ms"] / 1000
                result["connections_served"] = round(busy, 1)
            result["connections"] = args.connections
            result["wrk_output"] = output
            results[scenario.name] = result
            print(
                f"  {scenario.name:<6} {result['requests_per_sec']:>12,.0f} req/s"
                f"   p99 {result['p99_ms']:8.2f} ms{_error_note(result)}",
                flush=True,
            )
    finally:
        server.stop()
    for scenario in scenarios:
        results.setdefault(scenario.name, {"error": "not run: the server had exited"})
    return server.command, results


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def _error_note(result: dict) -> str:
    notes = []
    if result.get("non_2xx_3xx"):
        notes.append(f"{result['non_2xx_3xx']} non-2xx/3xx")
    errors = {k: v for k, v in result.get("socket_errors", {}).items() if v}
    if errors:
        notes.append("socket errors " + ", ".join(f"{k} {v}" for k, v in errors.items()))
    served, connections = result.get("connections_served"), result.get("connections")
    if served is not None and connections and served < connections / 2:
        notes.append(f"only ~{served:.0f} of {connections} connections served at a time")
    return "   !! " + "; ".join(notes) if notes else ""


# --------------------------------------------------------------------------- report


def print_table(group: str, results: dict, servers: list[str], scenarios: list[Scenario]) -> dict:
    """Prints one group's req/s and p99 per scenario and server, then rsasgi's ratios.

    Returns the ratios, {scenario: {peer: rsasgi req/s / peer req/s}}.
    """
    width = 22
    label = group.upper()
    print()
    print(f"{label}: requests/s (p99 latency)")
    print(f"{'scenario':<10}" + "".join(f"{name:>{width}}" for name in servers))
    for scenario in scenarios:
        cells = []
        for name in servers:
            result = results[name].get(scenario.name, {})
            if "requests_per_sec" in result:
                flag = "!" if _error_note(result) else ""
                cells.append(f"{result['requests_per_sec']:,.0f} ({result['p99_ms']:.2f} ms){flag}")
            else:
                cells.append("failed")
        print(f"{scenario.name:<10}" + "".join(f"{cell:>{width}}" for cell in cells))

    ratios: dict[str, dict[str, float]] = {}  # rounded, for the JSON
    exact: dict[str, dict[str, float]] = {}  # as printed in the table and the bar line
    peers = [name for name in servers if name != "rsasgi"]
    if "rsasgi" not in servers or not peers:
        return ratios
    print()
    print(f"{label}: rsasgi req/s ÷ peer req/s (above 1.00x: rsasgi is faster)")
    print(f"{'scenario':<10}" + "".join(f"{name:>{width}}" for name in peers))
    for scenario in scenarios:
        ours = results["rsasgi"].get(scenario.name, {}).get("requests_per_sec")
        cells = []
        for peer in peers:
            theirs = results[peer].get(scenario.name, {}).get("requests_per_sec")
            if ours and theirs:
                ratio = ours / theirs
                ratios.setdefault(scenario.name, {})[peer] = round(ratio, 3)
                exact.setdefault(scenario.name, {})[peer] = ratio
                cells.append(f"{ratio:.2f}x")
            else:
                cells.append("-")
        print(f"{scenario.name:<10}" + "".join(f"{cell:>{width}}" for cell in cells))

    if any(scenario.name == "hello" for scenario in scenarios):
        hello = exact.get("hello", {})
        checks = []
        for peer, bar in BAR[group].items():
            if peer not in servers:
                continue
            if peer in hello:
                verdict = "met" if hello[peer] >= bar else "MISSED"
                checks.append(f"{verdict}: {hello[peer]:.2f}x {peer} (bar {bar:.2f}x)")
            else:
                checks.append(f"NOT MEASURED: {peer} (bar {bar:.2f}x; a run failed)")
        if checks:
            print()
            print(f"{label} hello-world bar (rsasgi ≥ bar × peer): " + "; ".join(checks))
    if any(_error_note(r) for per in results.values() for r in per.values()):
        print(
            "! = wrk saw non-2xx/3xx responses or socket errors in that run, or the server "
            "left most connections waiting (see the JSON)"
        )
    return ratios


def versions(servers: list[str]) -> dict:
    found = {}
    for name in [*servers, "uvloop", "httptools"]:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    found["wrk"] = (wrk.stdout or wrk.stderr).split("\n")[0].strip()
    return found


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# --------------------------------------------------------------------------- main


def _names(values: list[str], known: list[str], what: str) -> list[str]:
    names = [name for value in values for name in value.split(",") if name]
    unknown = [name for name in names if name not in known]
    if unknown:
        sys.exit(f"unknown {what}: {', '.join(unknown)} (choose from {', '.join(known)})")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark rsasgi against its ASGI and WSGI peers with wrk.",
        epilog="Peers: pip install -r benches/requirements.txt; wrk: apt-get install wrk.",
    )
    parser.add_argument(
        "--group", choices=[*GROUPS, "all"], default="all",
        help="asgi: rsasgi, uvicorn, granian, hypercorn; wsgi: rsasgi, granian, gunicorn, "
        "uwsgi, waitress (all)",
    )  # fmt: skip
    parser.add_argument("--duration", type=int, default=10, help="seconds per run (10)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1)")
    parser.add_argument(
        "--warmup", type=int, default=2, help="seconds of unmeasured load before each run (2)"
    )
    parser.add_argument(
        "--servers", nargs="+", default=SERVER_NAMES, metavar="NAME",
        help=f"subset of: {', '.join(SERVER_NAMES)}; each group runs those it has (all)",
    )  # fmt: skip
    parser.add_argument(
        "--scenarios", nargs="+", default=list(SCENARIOS), metavar="NAME",
        help=f"subset of: {', '.join(SCENARIOS)} (all)",
    )  # fmt: skip
    parser.add_argument("--server-cpu", default="0", help="core the server is pinned to (0)")
    parser.add_argument("--wrk-cpu", default="1", help="core wrk is pinned to (1)")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON file ({RESULTS})")
    parser.add_argument("--timeout-margin", type=float, default=30, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.groups = list(GROUPS) if args.group == "all" else [args.group]
    args.servers = _names(args.servers, SERVER_NAMES, "server")
    args.scenarios = _names(args.scenarios, list(SCENARIOS), "scenario")
    return args


def available_servers(group: str, names: list[str]) -> list[str]:
    """The servers of `group` among `names` that can run here; prints why others are skipped."""
    servers = []
    for name in names:
        spec = SERVERS[group].get(name)
        if spec is None:
            continue
        missing = spec.missing()
        if missing:
            print(f"skipping {group} {name}: {', '.join(missing)} not found ({spec.install})")
        else:
            servers.append(name)
    return servers


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print(
            "wrk is not installed; install it with `apt-get install wrk` (Debian/Ubuntu) "
            "or `brew install wrk` (macOS).",
            file=sys.stderr,
        )
        return 1
    if shutil.which("taskset") is None:
        print("taskset is not installed; it comes with util-linux.", file=sys.stderr)
        return 1
    if (os.cpu_count() or 1) < 2:
        print("note: fewer than two CPUs, the server and wrk share a core", file=sys.stderr)

    plan = {group: available_servers(group, args.servers) for group in args.groups}
    plan = {group: servers for group, servers in plan.items() if servers}
    if not plan:
        print("no server to benchmark", file=sys.stderr)
        return 1
    scenarios = [SCENARIOS[name] for name in args.scenarios]

    print(
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency on core "
        f"{args.wrk_cpu}; each server one worker on core {args.server_cpu}; "
        f"{args.warmup}s warm-up"
    )
    results: dict[str, dict[str, dict]] = {}
    commands: dict[str, dict[str, list[str]]] = {}
    with tempfile.TemporaryDirectory(prefix="rsasgi-bench-") as work:
        for group, servers in plan.items():
            results[group], commands[group] = {}, {}
            for name in servers:
                spec = SERVERS[group][name]
                print(f"\n{group} {name} ({spec.notes})", flush=True)
                commands[group][name], results[group][name] = bench_server(
                    args, spec, scenarios, Path(work)
                )

    ratios = {
        group: print_table(group, results[group], servers, scenarios)
        for group, servers in plan.items()
    }

    all_servers = list(dict.fromkeys(name for servers in plan.values() for name in servers))
    report = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])],
        "settings": {
            "groups": list(plan),
            "duration_s": args.duration,
            "connections": args.connections,
            "wrk_threads": args.threads,
            "warmup_s": args.warmup,
            "server_cpu": args.server_cpu,
            "wrk_cpu": args.wrk_cpu,
            "wsgi_peer_threads": WSGI_THREADS,
        },
        "machine": {
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "versions": versions(all_servers),
        "server_commands": commands,
        "scenarios": {s.name: s.description for s in scenarios},
        "results": results,
        "rsasgi_ratio": ratios,
        "bar": {group: BAR[group] for group in plan},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
