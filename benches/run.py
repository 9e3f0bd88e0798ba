"""Benchmark rsasgi against uvicorn, granian and hypercorn with wrk, side by side.

Each server runs one worker pinned to one CPU core; wrk runs pinned to another. Every server
serves the same plain ASGI app (benches/apps.py) on three scenarios, and the script prints
requests/s and p99 latency per server, then rsasgi's requests/s divided by each peer's.

    pip install -r benches/requirements.txt     # the peers; this script installs nothing
    apt-get install wrk
    python benches/run.py                        # from the repository root
    python benches/run.py --duration 5 --servers rsasgi uvicorn --scenarios hello

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
APP = "benches.apps:hello"
RESULTS = REPO / "benches" / "results" / "latest.json"
HOST = "127.0.0.1"

# The bar set for rsasgi on the hello-world scenario (issue 2): its req/s over each peer's.
BAR = {"granian": 1.0, "uvicorn": 1.3}

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
    """How to start one server on a port; `requires` are the modules it needs importable."""

    name: str
    requires: tuple[str, ...]
    argv: Callable[[int], list[str]] = field(repr=False)
    notes: str = ""


def _has_uvloop() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def _rsasgi_argv(port: int) -> list[str]:
    return [
        sys.executable, "-m", "rsasgi", APP,
        "--host", HOST, "--port", str(port),
        "--no-access-log",
    ]  # fmt: skip


def _uvicorn_argv(port: int) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", APP,
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
        APP,
    ]  # fmt: skip


def _hypercorn_argv(port: int) -> list[str]:
    worker_class = ["--worker-class", "uvloop"] if _has_uvloop() else []
    return [
        sys.executable, "-m", "hypercorn", APP,
        "--bind", f"{HOST}:{port}", "--workers", "1", *worker_class,
        "--log-level", "warning",
    ]  # fmt: skip


SERVERS = {
    spec.name: spec
    for spec in [
        ServerSpec("rsasgi", ("rsasgi",), _rsasgi_argv, "loop auto: uvloop when installed"),
        ServerSpec(
            "uvicorn", ("uvicorn", "uvloop", "httptools"), _uvicorn_argv, "uvloop + httptools"
        ),
        ServerSpec("granian", ("granian",), _granian_argv, "asgi, 1 runtime thread, uvloop"),
        ServerSpec("hypercorn", ("hypercorn",), _hypercorn_argv, "uvloop worker"),
    ]
}


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
    requests = re.search(r"(\d+) requests in", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    errors = dict.fromkeys(("connect", "read", "write", "timeout"), 0)
    if socket_errors:
        errors = dict(zip(errors, map(int, socket_errors.groups())))
    return {
        "requests_per_sec": float(rps.group(1)),
        "p99_ms": parse_duration_ms(p99.group(1)),
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
        self.log_path = log_dir / f"{spec.name}.log"
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
    return "   !! " + "; ".join(notes) if notes else ""


# --------------------------------------------------------------------------- report


def print_table(results: dict, servers: list[str], scenarios: list[Scenario]) -> dict:
    """Prints req/s and p99 per scenario and server, then rsasgi's ratios; returns the ratios."""
    width = 22
    print()
    print("Requests/s (p99 latency)")
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

    ratios: dict[str, dict[str, float]] = {}
    peers = [name for name in servers if name != "rsasgi"]
    if "rsasgi" not in servers or not peers:
        return ratios
    print()
    print("rsasgi req/s ÷ peer req/s (above 1.00x: rsasgi is faster)")
    print(f"{'scenario':<10}" + "".join(f"{name:>{width}}" for name in peers))
    for scenario in scenarios:
        ours = results["rsasgi"].get(scenario.name, {}).get("requests_per_sec")
        cells = []
        for peer in peers:
            theirs = results[peer].get(scenario.name, {}).get("requests_per_sec")
            if ours and theirs:
                ratio = ours / theirs
                ratios.setdefault(scenario.name, {})[peer] = round(ratio, 3)
                cells.append(f"{ratio:.2f}x")
            else:
                cells.append("-")
        print(f"{scenario.name:<10}" + "".join(f"{cell:>{width}}" for cell in cells))

    hello = ratios.get("hello", {})
    checks = [
        f"{'met' if hello[peer] >= bar else 'MISSED'}: {hello[peer]:.2f}x {peer} (bar {bar:.2f}x)"
        for peer, bar in BAR.items()
        if peer in hello
    ]
    if checks:
        print()
        print("hello-world bar: " + "; ".join(checks))
    if any(_error_note(r) for per in results.values() for r in per.values()):
        print("! = wrk saw non-2xx/3xx responses or socket errors in that run (see the JSON)")
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


def _names(values: list[str], known: dict, what: str) -> list[str]:
    names = [name for value in values for name in value.split(",") if name]
    unknown = [name for name in names if name not in known]
    if unknown:
        sys.exit(f"unknown {what}: {', '.join(unknown)} (choose from {', '.join(known)})")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark rsasgi against uvicorn, granian and hypercorn with wrk.",
        epilog="Peers: pip install -r benches/requirements.txt; wrk: apt-get install wrk.",
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per run (10)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1)")
    parser.add_argument(
        "--warmup", type=int, default=2, help="seconds of unmeasured load before each run (2)"
    )
    parser.add_argument(
        "--servers", nargs="+", default=list(SERVERS), metavar="NAME",
        help=f"subset of: {', '.join(SERVERS)} (all)",
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
    args.servers = _names(args.servers, SERVERS, "server")
    args.scenarios = _names(args.scenarios, SCENARIOS, "scenario")
    return args


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

    servers = []
    for name in args.servers:
        missing = [m for m in SERVERS[name].requires if importlib.util.find_spec(m) is None]
        if missing:
            how = "pip install ." if name == "rsasgi" else "pip install -r benches/requirements.txt"
            print(f"skipping {name}: {', '.join(missing)} not importable ({how})")
        else:
            servers.append(name)
    if not servers:
        print("no server to benchmark", file=sys.stderr)
        return 1
    scenarios = [SCENARIOS[name] for name in args.scenarios]

    print(
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency on core "
        f"{args.wrk_cpu}; each server one worker on core {args.server_cpu}; "
        f"{args.warmup}s warm-up"
    )
    results: dict[str, dict] = {}
    commands: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="rsasgi-bench-") as work:
        for name in servers:
            spec = SERVERS[name]
            print(f"\n{name} ({spec.notes})", flush=True)
            commands[name], results[name] = bench_server(args, spec, scenarios, Path(work))

    ratios = print_table(results, servers, scenarios)

    report = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])],
        "settings": {
            "duration_s": args.duration,
            "connections": args.connections,
            "wrk_threads": args.threads,
            "warmup_s": args.warmup,
            "server_cpu": args.server_cpu,
            "wrk_cpu": args.wrk_cpu,
        },
        "machine": {
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "versions": versions(servers),
        "server_commands": commands,
        "scenarios": {s.name: s.description for s in scenarios},
        "results": results,
        "rsasgi_ratio": ratios,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
