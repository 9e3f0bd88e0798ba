"""Benchmark rsasgi's websockets against its peers: echo round trips per second.

Every server runs the same plain ASGI echo app (`app` below, served as `benches.ws_bench:app`)
with one worker pinned to one core; the load client runs pinned to another core. The client
opens 64 websockets and on each one sends a small text message, waits for the echo, and sends
the next, for a fixed time; the result is completed round trips (messages echoed) per second.

    ASGI: rsasgi, uvicorn (websockets), uvicorn-wsproto, granian, h2corn, hypercorn, daphne

    pip install -r benches/requirements.txt     # the peers and picows; this installs nothing
    python benches/ws_bench.py                   # from the repository root
    python benches/ws_bench.py --duration 5 --servers rsasgi uvicorn

The client is picows (a Cython websocket library) on uvloop, in one process by default: it
needs a fraction of the CPU time a server needs per message, which the script checks by
reporting both sides' CPU use during the measured run (a client near 100% of its core would
be the bottleneck, and the run is flagged). Without picows the `websockets` library is used,
which is slower and is flagged too. Results also go to benches/results/ws_latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
APP = "benches.ws_bench:app"
RESULTS = REPO / "benches" / "results" / "ws_latest.json"
HOST = "127.0.0.1"

# A client process using more than this share of its core may be what limits the run.
CLIENT_BOUND = 0.90
# Other processes using more than this share of the server's or the client's core during the
# measured run: the numbers are not trustworthy.
BUSY = 0.10


# --------------------------------------------------------------------------- the app


async def app(scope, receive, send):
    """Accepts every websocket and echoes each message back as it came (text or bytes)."""
    if scope["type"] == "websocket":
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.receive":
                text = message.get("text")
                if text is not None:
                    await send({"type": "websocket.send", "text": text})
                else:
                    await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})
            elif message["type"] == "websocket.disconnect":
                return
    elif scope["type"] == "http":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": b"websocket echo benchmark\n"})
    elif scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


# --------------------------------------------------------------------------- servers


@dataclass
class ServerSpec:
    """How to start one server on a port; `requires` are the modules it needs importable."""

    name: str
    requires: tuple[str, ...]
    argv: Callable[[int], list[str]] = field(repr=False)
    notes: str = ""
    install: str = "pip install -r benches/requirements.txt"
    package: str = ""  # distribution name for the version, when it differs from `name`

    def missing(self) -> list[str]:
        return [m for m in self.requires if importlib.util.find_spec(m) is None]


def _has_uvloop() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def _rsasgi_argv(port: int) -> list[str]:
    return [
        sys.executable, "-m", "rsasgi", APP,
        "--host", HOST, "--port", str(port),
        "--no-access-log",
    ]  # fmt: skip


def _uvicorn_argv(ws: str) -> Callable[[int], list[str]]:
    def argv(port: int) -> list[str]:
        return [
            sys.executable, "-m", "uvicorn", APP,
            "--host", HOST, "--port", str(port),
            "--loop", "uvloop", "--http", "httptools", "--ws", ws,
            "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip

    return argv


def _granian_argv(port: int) -> list[str]:
    loop = ["--loop", "uvloop"] if _has_uvloop() else []
    return [
        sys.executable, "-m", "granian", "--interface", "asgi",
        "--host", HOST, "--port", str(port),
        "--workers", "1", "--runtime-threads", "1", "--ws", *loop,
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


def _h2corn_argv(port: int) -> list[str]:
    # One Tokio runtime thread, as granian gets (h2corn's default is 2), as in benches/run.py.
    loop = ["--loop", "uvloop"] if _has_uvloop() else []
    return [
        sys.executable, "-m", "h2corn", APP,
        "--host", HOST, "--port", str(port),
        "--workers", "1", "--runtime-threads", "1", *loop,
        "--no-access-log",
    ]  # fmt: skip


def _daphne_argv(port: int) -> list[str]:
    return [
        sys.executable, "-m", "daphne", "-b", HOST, "-p", str(port),
        "-v", "0",
        APP,
    ]  # fmt: skip


SERVER_SPECS = [
    ServerSpec("rsasgi", ("rsasgi",), _rsasgi_argv, "loop auto", install="pip install ."),
    ServerSpec(
        "uvicorn", ("uvicorn", "uvloop", "httptools", "websockets"), _uvicorn_argv("auto"),
        "--ws auto (websockets-sansio), uvloop + httptools",
    ),
    ServerSpec(
        "uvicorn-wsproto", ("uvicorn", "uvloop", "httptools", "wsproto"), _uvicorn_argv("wsproto"),
        "--ws wsproto, uvloop + httptools", package="uvicorn",
    ),
    ServerSpec("granian", ("granian",), _granian_argv, "asgi, 1 runtime thread, uvloop"),
    ServerSpec(
        "h2corn", ("h2corn",), _h2corn_argv, "1 runtime thread, uvloop",
        install="pip install h2corn",
    ),
    ServerSpec("hypercorn", ("hypercorn",), _hypercorn_argv, "uvloop worker"),
    ServerSpec("daphne", ("daphne",), _daphne_argv, "Twisted, single process"),
]  # fmt: skip
SERVERS = {spec.name: spec for spec in SERVER_SPECS}


def upgrade_request(offer_deflate: bool) -> bytes:
    """A raw client's upgrade request for `/`, offering permessage-deflate (as browsers do)
    when asked."""
    key = base64.b64encode(os.urandom(16))
    offer = b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    return (
        b"GET / HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: "
        + key
        + b"\r\nSec-WebSocket-Version: 13\r\n"
        + (offer if offer_deflate else b"")
        + b"\r\n"
    )


def read_upgrade(sock: socket.socket) -> tuple[bytes, bool]:
    """Reads the answer to `upgrade_request` and checks it is a 101; returns the bytes read
    past its head and whether the server agreed to permessage-deflate."""
    received = b""
    while b"\r\n\r\n" not in received:
        data = sock.recv(65536)
        if not data:
            raise RuntimeError(f"closed during the handshake: {received[:200]!r}")
        received += data
    head, _, rest = received.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"no upgrade: {head[:200]!r}")
    return rest, b"permessage-deflate" in head.lower()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} before listening")
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout:.0f}s")


class RunningServer:
    """One server process (pinned with taskset) in its own session, logging to a file."""

    def __init__(self, spec: ServerSpec, cpu: str, work: Path):
        self.port = free_port()
        self.command = spec.argv(self.port)
        self.log_path = work / f"{spec.name}.log"
        self._log = open(self.log_path, "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            ["taskset", "-c", cpu, *self.command],
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

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by every live process of the server's session."""
        total = 0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[3]) == self.proc.pid:  # session id
                total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """SIGINT for a graceful exit, then SIGKILL to the whole session (workers included)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(timeout=10)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self._log.close()


def core_seconds() -> dict[str, float]:
    """User + system CPU seconds spent so far on each core, from /proc/stat ({"0": ...})."""
    found = {}
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return found
    tick = os.sysconf("SC_CLK_TCK")
    for line in lines:
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            user, nice, system = (int(v) for v in values[:3])
            found[name[3:]] = (user + nice + system) / tick
    return found


# --------------------------------------------------------------------------- the load client
#
# Runs as `python benches/ws_bench.py _client ...` in its own process(es), pinned with taskset.
# Each connection sends a message, waits for its echo, checks it, and sends the next one, from
# the moment it is connected until `--stop-at` (wall-clock time, shared by every client
# process); the round trips completed between `--measure-at` and `--stop-at` are the result.
# It prints one JSON line.


def client_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ws_bench.py _client")
    parser.add_argument("--url", required=True)
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--binary", action="store_true")
    parser.add_argument("--measure-at", type=float, required=True)
    parser.add_argument("--stop-at", type=float, required=True)
    parser.add_argument("--library", choices=["picows", "websockets"], required=True)
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
        loop_name = "uvloop"
    except ImportError:
        loop_name = "asyncio"
    payload = b"m" * args.size
    run = _picows_client if args.library == "picows" else _websockets_client
    try:
        result = asyncio.run(run(args, payload))
    except Exception as error:
        result = {"error": f"{type(error).__name__}: {error}"}
    result["loop"] = loop_name
    print(json.dumps(result), flush=True)
    return 0


async def _sleep_until(wall_time: float) -> None:
    await asyncio.sleep(max(0.0, wall_time - time.time()))


async def _measure(args, counts: Callable[[], int], errors: list[str]) -> dict:
    """Snapshots the round-trip count and this process's CPU time at measure-at and stop-at."""
    await _sleep_until(args.measure_at)
    if time.time() > args.measure_at + 0.5:
        errors.append("the connections were not all open by the start of the measured run")
    start_count, start_cpu, start_time = counts(), time.process_time(), time.time()
    await _sleep_until(args.stop_at)
    end_count, end_cpu, end_time = counts(), time.process_time(), time.time()
    return {
        "round_trips": end_count - start_count,
        "seconds": end_time - start_time,
        "cpu_seconds": end_cpu - start_cpu,
    }


async def _picows_client(args, payload: bytes) -> dict:
    from picows import WSListener, WSMsgType, ws_connect

    msg_type = WSMsgType.BINARY if args.binary else WSMsgType.TEXT
    state = {"running": True}
    errors: list[str] = []

    class Echo(WSListener):
        def __init__(self):
            self.count = 0
            self.transport = None

        def on_ws_connected(self, transport):
            self.transport = transport

        def on_ws_frame(self, transport, frame):
            kind = frame.msg_type
            if kind == msg_type and frame.fin:
                if frame.get_payload_as_memoryview() != payload:
                    errors.append(f"wrong echo ({frame.payload_size} bytes)")
                    transport.disconnect()
                    return
                self.count += 1
                if state["running"]:
                    transport.send(msg_type, payload)
            elif kind == WSMsgType.CLOSE:
                if state["running"]:
                    errors.append(f"the server closed a websocket ({frame.get_close_code()})")
                transport.disconnect()
            elif kind in (WSMsgType.PING, WSMsgType.PONG):
                pass  # picows answers pings itself
            else:
                errors.append(f"unexpected frame {kind!r} (fin={frame.fin})")
                transport.disconnect()

        def on_ws_disconnected(self, transport):
            if state["running"]:
                errors.append("a websocket was disconnected during the run")

    connected = await asyncio.gather(
        *(ws_connect(Echo, args.url) for _ in range(args.connections)), return_exceptions=True
    )
    listeners = []
    for item in connected:
        if isinstance(item, BaseException):
            errors.append(f"connect failed: {type(item).__name__}: {item}")
        else:
            listeners.append(item[1])
    for listener in listeners:
        listener.transport.send(msg_type, payload)
    result = await _measure(args, lambda: sum(lis.count for lis in listeners), errors)
    state["running"] = False
    await asyncio.sleep(0.2)  # let the last echoes arrive
    # A clean closing handshake: the server answers the close frame, the listener disconnects.
    for listener in listeners:
        listener.transport.send_close()
    waits = [lis.transport.wait_disconnected() for lis in listeners]
    try:
        await asyncio.wait_for(asyncio.gather(*waits), 10)
    except asyncio.TimeoutError:
        for listener in listeners:
            listener.transport.disconnect()
    result.update(connections=len(listeners), errors=sorted(set(errors))[:10])
    return result


async def _websockets_client(args, payload: bytes) -> dict:
    from websockets.asyncio.client import connect

    message: bytes | str = payload if args.binary else payload.decode()
    state = {"running": True}
    counts = [0] * args.connections
    errors: list[str] = []

    async def one(index: int, ready: asyncio.Event) -> None:
        try:
            async with connect(args.url, compression=None, ping_interval=None) as ws:
                ready.set()
                while state["running"]:
                    await ws.send(message)
                    if await ws.recv() != message:
                        errors.append("wrong echo")
                        return
                    counts[index] += 1
        except Exception as error:
            ready.set()
            if state["running"]:
                errors.append(f"{type(error).__name__}: {error}")

    readies = [asyncio.Event() for _ in range(args.connections)]
    tasks = [asyncio.create_task(one(i, readies[i])) for i in range(args.connections)]
    await asyncio.gather(*(ready.wait() for ready in readies))
    result = await _measure(args, lambda: sum(counts), errors)
    state["running"] = False
    await asyncio.wait(tasks, timeout=10)
    result.update(connections=args.connections, errors=sorted(set(errors))[:10])
    return result


def check_echo(port: int) -> None:
    """Raises unless the server accepts a websocket and echoes a text and a binary message."""

    async def check() -> None:
        from websockets.asyncio.client import connect

        async with connect(f"ws://{HOST}:{port}/", open_timeout=10, ping_interval=None) as ws:
            for message in ("hello websocket", b"\x00\x01binary\xff"):
                await ws.send(message)
                reply = await asyncio.wait_for(ws.recv(), 10)
                if reply != message:
                    raise RuntimeError(f"sent {message!r}, got back {reply!r}")

    if importlib.util.find_spec("websockets") is None:
        return  # the run itself checks every echo
    asyncio.run(check())


@dataclass
class Load:
    """Client processes started against one server, with their shared measurement window."""

    procs: list[subprocess.Popen]
    measure_at: float
    stop_at: float


def start_load(args, port: int, duration: float, warmup: float) -> Load:
    """Starts the client process(es) pinned to the client core; they connect, load the server
    for `warmup` seconds, then measure for `duration` seconds."""
    count = max(1, args.client_procs)
    per_proc = [args.connections // count + (i < args.connections % count) for i in range(count)]
    measure_at = time.time() + args.connect_time + warmup
    stop_at = measure_at + duration
    procs = []
    for connections in per_proc:
        command = [
            "taskset", "-c", args.client_cpu,
            sys.executable, str(Path(__file__).resolve()), "_client",
            "--url", f"ws://{HOST}:{port}/", "--connections", str(connections),
            "--size", str(args.size), "--library", args.library,
            "--measure-at", repr(measure_at), "--stop-at", repr(stop_at),
        ]  # fmt: skip
        if args.binary:
            command.append("--binary")
        procs.append(
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    return Load(procs, measure_at, stop_at)


def finish_load(load: Load) -> list[dict]:
    """Waits for the client processes; one result dict per process ({"error": ...} on failure)."""
    results = []
    for proc in load.procs:
        try:
            out, err = proc.communicate(timeout=max(0.0, load.stop_at - time.time()) + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            results.append({"error": "the load client did not finish in time"})
            continue
        try:
            results.append(json.loads(out.strip().splitlines()[-1]))
        except (ValueError, IndexError):
            results.append({"error": f"load client exited {proc.returncode}: {err.strip()[-800:]}"})
    return results


def _first_error(results: list[dict]) -> str | None:
    for result in results:
        if "error" in result:
            return result["error"]
        if result.get("errors"):
            return result["errors"][0]
        if not result.get("round_trips"):
            return "no round trip completed"
    return None


def bench_server(args, spec: ServerSpec, work: Path) -> dict:
    """Starts `spec`, checks its echo, warms it up, and measures it once."""
    server = RunningServer(spec, args.server_cpu, work)
    result: dict = {"command": server.command}
    try:
        wait_for_port(server.port, server.proc)
        check_echo(server.port)
        if args.warmup > 0:
            error = _first_error(finish_load(start_load(args, server.port, args.warmup, 0)))
            if error:
                raise RuntimeError(f"warm-up: {error}")
        load = start_load(args, server.port, args.duration, 0)
        time.sleep(max(0.0, load.measure_at - time.time()))
        cpu_start, time_start = server.cpu_seconds(), time.time()
        cores_start = core_seconds()
        time.sleep(max(0.0, load.stop_at - time.time()))
        cpu_end, time_end = server.cpu_seconds(), time.time()
        cores_end = core_seconds()
        results = finish_load(load)
        if server.proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.proc.returncode}")
        error = _first_error(results)
        if error:
            raise RuntimeError(error)
        round_trips = sum(r["round_trips"] for r in results)
        seconds = max(r["seconds"] for r in results)
        elapsed = time_end - time_start
        server_cpu = (cpu_end - cpu_start) / elapsed
        client_cpu = [r["cpu_seconds"] / r["seconds"] for r in results]
        # CPU time other processes took on the two cores during the measured run.
        others = {}
        for core, ours in ((args.server_cpu, server_cpu), (args.client_cpu, sum(client_cpu))):
            if core in cores_start and core in cores_end:
                used = (cores_end[core] - cores_start[core]) / elapsed
                others[core] = round(max(0.0, used - ours), 3)
        result.update(
            messages_per_sec=round_trips / seconds,
            round_trips=round_trips,
            seconds=round(seconds, 3),
            connections=sum(r["connections"] for r in results),
            server_cpu=round(server_cpu, 3),
            client_cpu=[round(c, 3) for c in client_cpu],
            other_cpu=others,
            client_loop=results[0].get("loop"),
        )
    except Exception as error:  # one failing server must not end the whole benchmark
        result.update(error=str(error), log_tail=server.log_tail())
    finally:
        server.stop()
    return result


# --------------------------------------------------------------------------- report


#: Issue 12's bar: rsasgi's messages/s at least this many times h2corn's.
H2CORN_BAR = 1.2


def median_run(server_runs: list[dict]) -> dict:
    """One server's run with the median messages/s (the lower middle of an even count), with
    every run's figure beside it; a failed run counts as one, so the result is the first
    failure's when half the runs or more failed."""
    measured = sorted(
        (r for r in server_runs if "messages_per_sec" in r), key=lambda r: r["messages_per_sec"]
    )
    failed = [r for r in server_runs if "messages_per_sec" not in r]
    if len(failed) * 2 >= len(server_runs):
        result = dict(failed[0])
    else:
        result = dict(measured[(len(measured) - 1) // 2])
    if len(server_runs) > 1:
        result["rounds_messages_per_sec"] = [
            round(r["messages_per_sec"]) if "messages_per_sec" in r else None for r in server_runs
        ]
    return result


def _client_note(result: dict, library: str) -> str:
    notes = []
    if max(result.get("client_cpu") or [0]) >= CLIENT_BOUND:
        notes.append("client-bound")
    busy = {core: share for core, share in result.get("other_cpu", {}).items() if share >= BUSY}
    if busy:
        notes.append(
            "busy machine: " + ", ".join(f"others {v:.0%} of core {c}" for c, v in busy.items())
        )
    if library != "picows":
        notes.append(f"{library} client")
    return "   !! " + ", ".join(notes) if notes else ""


def print_report(args, results: dict, servers: list[str]) -> dict:
    """Prints messages/s per server, rsasgi's ratio to each peer and the bar; returns ratios."""
    print()
    print(
        f"websocket echo, {args.connections} connections, {args.size}-byte "
        f"{'binary' if args.binary else 'text'} messages: round trips per second"
    )
    print(f"{'server':<18}{'messages/s':>14}{'server CPU':>13}{'client CPU':>13}")
    for name in servers:
        result = results[name]
        if "messages_per_sec" not in result:
            print(f"{name:<18}{'failed':>14}   {result.get('error', '')[:100]}")
            continue
        client = "+".join(f"{c:.0%}" for c in result["client_cpu"])
        print(
            f"{name:<18}{result['messages_per_sec']:>14,.0f}{result['server_cpu']:>13.0%}"
            f"{client:>13}{_client_note(result, args.library)}"
        )
    if args.rounds > 1:
        print(f"(each server's median of {args.rounds} runs, taken in turns; every run:)")
        for name in servers:
            figures = results[name].get("rounds_messages_per_sec") or []
            shown = ", ".join("failed" if f is None else f"{f:,}" for f in figures)
            print(f"  {name:<16}{shown}")

    ratios: dict[str, float] = {}
    peers = [name for name in servers if name != "rsasgi"]
    ours = results.get("rsasgi", {}).get("messages_per_sec")
    if "rsasgi" not in servers or not peers:
        return ratios
    print()
    print("rsasgi messages/s ÷ peer messages/s (above 1.00x: rsasgi is faster)")
    for peer in peers:
        theirs = results[peer].get("messages_per_sec")
        if ours and theirs:
            ratios[peer] = round(ours / theirs, 3)
            print(f"  {peer:<18}{ours / theirs:>8.2f}x")
        else:
            print(f"  {peer:<18}{'-':>8}")

    measured = {
        p: results[p]["messages_per_sec"] for p in peers if "messages_per_sec" in results[p]
    }
    print()
    if not ours:
        print("bar rsasgi >= best peer: NOT MEASURED (the rsasgi run failed)")
    elif not measured:
        print("bar rsasgi >= best peer: NOT MEASURED (no peer run succeeded)")
    else:
        best = max(measured, key=measured.get)
        verdict = "met" if ours >= measured[best] else "MISSED"
        print(
            f"bar rsasgi >= best peer: {verdict}: {ours / measured[best]:.2f}x {best} "
            f"({ours:,.0f} vs {measured[best]:,.0f} messages/s)"
        )
    if ours and "h2corn" in measured:
        ratio = ours / measured["h2corn"]
        verdict = "met" if ratio >= H2CORN_BAR else "MISSED"
        print(f"bar rsasgi >= {H2CORN_BAR}x h2corn (issue 12): {verdict}: {ratio:.2f}x")
    notes = " ".join(_client_note(results[n], args.library) for n in servers)
    if "client-bound" in notes:
        print(
            f"!! client-bound = a load client process used >= {CLIENT_BOUND:.0%} of its core: "
            "that number may be the client's limit, not the server's"
        )
    if "busy machine" in notes:
        print(
            f"!! busy machine = other processes took >= {BUSY:.0%} of the server's or the "
            "client's core during the run: rerun on a quiet machine"
        )
    return ratios


def versions(servers: list[str]) -> dict:
    found = {}
    names = [SERVERS[name].package or name for name in servers]
    for name in dict.fromkeys([*names, "uvloop", "httptools", "websockets", "wsproto", "picows"]):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark rsasgi's websocket echo throughput against its ASGI peers.",
        epilog="Peers and the client: pip install -r benches/requirements.txt.",
    )
    names = list(SERVERS)
    parser.add_argument("--duration", type=float, default=10, help="seconds measured (10)")
    parser.add_argument(
        "--warmup", type=float, default=2, help="seconds of unmeasured load first (2)"
    )
    parser.add_argument(
        "--rounds", type=int, default=1,
        help="measure every server N times, taking turns, and report each one's median run (1); "
        "the host's speed drifts between runs, and turns spread that drift over all the servers",
    )  # fmt: skip
    parser.add_argument("--connections", type=int, default=64, help="websockets (64)")
    parser.add_argument("--size", type=int, default=32, help="message size in bytes (32)")
    parser.add_argument("--binary", action="store_true", help="binary messages (default: text)")
    parser.add_argument(
        "--client", choices=["auto", "picows", "websockets"], default="auto",
        help="client library (auto: picows when installed, else websockets)",
    )  # fmt: skip
    parser.add_argument(
        "--client-procs", type=int, default=1,
        help="client processes, all on the client core (1)",
    )  # fmt: skip
    parser.add_argument(
        "--servers", nargs="+", default=names, metavar="NAME",
        help=f"subset of: {', '.join(names)} (all)",
    )  # fmt: skip
    parser.add_argument("--server-cpu", default="0", help="core the server is pinned to (0)")
    parser.add_argument("--client-cpu", default="1", help="core the client is pinned to (1)")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON file ({RESULTS})")
    parser.add_argument("--connect-time", type=float, default=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    args.servers = [n for value in args.servers for n in value.split(",") if n]
    unknown = [n for n in args.servers if n not in SERVERS]
    if unknown:
        parser.error(f"unknown server: {', '.join(unknown)} (choose from {', '.join(names)})")
    if args.client == "auto":
        args.library = "picows" if importlib.util.find_spec("picows") else "websockets"
    else:
        args.library = args.client
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_client"]:
        return client_main(argv[1:])
    args = parse_args(argv)
    if shutil.which("taskset") is None:
        print("taskset is not installed; it comes with util-linux.", file=sys.stderr)
        return 1
    if importlib.util.find_spec(args.library) is None:
        print(f"the client library {args.library} is not installed", file=sys.stderr)
        return 1
    if (os.cpu_count() or 1) < 2:
        print("note: fewer than two CPUs, the server and the client share a core", file=sys.stderr)
    if args.library != "picows":
        print("note: picows is not installed; the websockets client is slower and may be the "
              "bottleneck (pip install picows)", file=sys.stderr)  # fmt: skip

    servers = []
    for name in args.servers:
        missing = SERVERS[name].missing()
        if missing:
            print(f"skipping {name}: {', '.join(missing)} not found ({SERVERS[name].install})")
        else:
            servers.append(name)
    if not servers:
        print("no server to benchmark", file=sys.stderr)
        return 1

    print(
        f"{args.library} client ({args.client_procs} process(es)) on core {args.client_cpu}: "
        f"{args.connections} websockets, {args.size}-byte messages, send/wait echo/repeat, "
        f"{args.duration:g}s measured after {args.warmup:g}s warm-up; each server one worker "
        f"on core {args.server_cpu}"
    )
    runs: dict[str, list[dict]] = {name: [] for name in servers}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rsasgi-ws-bench-") as work:
        for round_number in range(1, args.rounds + 1):
            for name in servers:
                spec = SERVERS[name]
                heading = f"round {round_number}: {name}" if args.rounds > 1 else name
                print(f"\n{heading} ({spec.notes})", flush=True)
                result = bench_server(args, spec, Path(work))
                runs[name].append(result)
                if "messages_per_sec" in result:
                    client = "+".join(f"{c:.0%}" for c in result["client_cpu"])
                    print(
                        f"  {result['messages_per_sec']:>12,.0f} messages/s   server CPU "
                        f"{result['server_cpu']:.0%}   client CPU {client}"
                        f"{_client_note(result, args.library)}",
                        flush=True,
                    )
                else:
                    print(f"  FAILED: {result['error']}", flush=True)
                    print("\n".join("    " + line for line in result["log_tail"].splitlines()))
    results = {name: median_run(server_runs) for name, server_runs in runs.items()}

    ratios = print_report(args, results, servers)
    report = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": [Path(sys.argv[0]).name, *argv],
        "settings": {
            "duration_s": args.duration,
            "rounds": args.rounds,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "message_bytes": args.size,
            "message_type": "binary" if args.binary else "text",
            "client": args.library,
            "client_procs": args.client_procs,
            "server_cpu": args.server_cpu,
            "client_cpu": args.client_cpu,
        },
        "machine": {
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "versions": versions(servers),
        "results": results,
        "rsasgi_ratio": ratios,
        "bar": "rsasgi messages/s >= the best peer's",
        "h2corn_bar": H2CORN_BAR,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output} ({report['wall_seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
