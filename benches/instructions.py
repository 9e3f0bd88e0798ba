"""Count the instructions rsasgi spends per request, with valgrind's callgrind.

wrk's requests/s on a shared 2-core machine move by 10-15% from run to run, more than most
changes to the hot path cost. Instruction counts do not depend on what else the machine is
doing, so they answer "did this change make a request cheaper or dearer?" repeatably.

The whole server process runs under `valgrind --tool=callgrind`, once serving no requests
(start and stop only) and once serving exactly N keep-alive `GET /` requests over C
connections; the difference divided by N is the cost of one request, reactor and Python
together. With `--apps ws_echo`, N websocket messages echoed over C websockets, which the idle
run opens and closes too. Compare two builds by running this with each build's interpreter:

    python benches/instructions.py                        # ASGI and WSGI hello, this venv
    /other/venv/bin/python benches/instructions.py --apps hello --requests 4000
    python benches/instructions.py --apps hello --http2   # h2c: h2load, 10 streams a connection
    python benches/instructions.py --apps hello --per-thread   # Python thread and reactor apart
    python benches/instructions.py --apps wsgi_hello --cache-sim  # and simulated cache misses
    python benches/instructions.py --server granian --cache-sim   # granian, as run.py starts it
    python benches/instructions.py --apps ws_echo --requests 4000  # websocket messages echoed

Needs valgrind (apt-get install valgrind), and h2load for --http2 (apt-get install
nghttp2-client). Expect a minute or two per app: the server runs
about 50 times slower under valgrind.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPS = {
    "hello": "benches.apps:hello",
    "wsgi_hello": "benches.apps:wsgi_hello",
    # Not HTTP requests: --requests websocket messages of WS_MESSAGE bytes, each echoed back
    # (ws_bench.py's app and message), over --connections websockets opened first.
    "ws_echo": "benches.ws_bench:app",
}
#: The text each websocket message carries, as ws_bench.py's client sends.
WS_MESSAGE = b"x" * 32
LISTENING = re.compile(r"Listening on http://127\.0\.0\.1:(\d+)")
#: How long the server may take to start under valgrind.
START_TIMEOUT = 300.0


async def _connection(port: int, count: int, path: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    for _ in range(count):
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"unexpected response: {head!r}")
        length = re.search(rb"(?i)content-length:\s*(\d+)", head)
        if length is None:
            raise RuntimeError(f"no Content-Length in {head!r}")
        await reader.readexactly(int(length.group(1)))
    writer.close()
    await writer.wait_closed()


async def _send(port: int, requests: int, connections: int, path: str) -> None:
    share, extra = divmod(requests, connections)
    counts = [share + (1 if i < extra else 0) for i in range(connections)]
    await asyncio.gather(*(_connection(port, count, path) for count in counts if count))


async def _websocket(port: int, count: int) -> None:
    """One websocket: the handshake, `count` masked text messages each awaiting its echo,
    and a clean close (1000) answered by the server."""
    import ws_bench

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(ws_bench.upgrade_request(offer_deflate=False))
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"no upgrade: {head[:200]!r}")
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(WS_MESSAGE))
    frame = bytes([0x81, 0x80 | len(WS_MESSAGE)]) + mask + masked
    echo = bytes([0x81, len(WS_MESSAGE)]) + WS_MESSAGE
    for _ in range(count):
        writer.write(frame)
        answer = await reader.readexactly(len(echo))
        if answer != echo:
            raise RuntimeError(f"unexpected echo: {answer!r}")
    code = bytes(byte ^ mask[i] for i, byte in enumerate((1000).to_bytes(2, "big")))
    writer.write(bytes([0x88, 0x82]) + mask + code)
    closing = await reader.readexactly(2)
    if closing[0] != 0x88:
        raise RuntimeError(f"no close frame in answer to ours: {closing!r}")
    await reader.readexactly(closing[1] & 0x7F)
    writer.close()
    await writer.wait_closed()


async def _send_websocket(port: int, messages: int, connections: int) -> None:
    """Echoes `messages` in all over `connections` websockets. Every websocket is opened and
    closed even with no message to send: the run with none counts the handshakes and closes,
    which the difference then leaves out."""
    share, extra = divmod(messages, connections)
    counts = [share + (1 if i < extra else 0) for i in range(connections)]
    await asyncio.gather(*(_websocket(port, count) for count in counts))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


#: Streams in flight on each HTTP/2 connection with --http2 (h2load -m), as in run.py.
H2_STREAMS = 10


def _send_http2(port: int, requests: int, connections: int, path: str) -> None:
    """`requests` GET `path` over cleartext HTTP/2 (prior knowledge), with h2load."""
    argv = [
        "h2load", "-n", str(requests), "-c", str(connections), "-m", str(H2_STREAMS),
        f"http://127.0.0.1:{port}{path}",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=START_TIMEOUT)
    if f"{requests} succeeded" not in done.stdout:
        raise RuntimeError(f"h2load did not get {requests} answers:\n{done.stdout}{done.stderr}")


def measure(
    app: str,
    requests: int,
    connections: int,
    http2: bool = False,
    path: str = "/",
    keep: str | None = None,
    per_thread: bool = False,
    cache_sim: bool = False,
    server_name: str = "rsasgi",
) -> dict[str, dict[str, int]]:
    """Callgrind's counts of one server run that serves `requests` requests, by event
    (`Ir`, instructions; with `cache_sim` also the simulated cache's misses, `D1mr`...):
    the total under "all", or with `per_thread` one set per thread, keyed by callgrind's
    thread number ("01" is the main thread, where the app's Python runs; the others follow
    in the order they started: the reactor, the log writer, WSGI threads).

    With `server_name` "granian", granian serves the app as benches/run.py starts it, and
    the counts are its processes' (the supervisor and its worker) added up under "all"."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        log = Path(tmp) / "server.log"
        port = _free_port()
        if server_name == "granian":
            # Its worker is a child process; each process writes its own file.
            outputs_of = "callgrind.out.*"
            valgrind = ["--trace-children=yes", f"--callgrind-out-file={out}.%p"]
            server_argv = _granian_argv(app, port)
        else:
            outputs_of = "callgrind.out-*" if per_thread else "callgrind.out"
            valgrind = ["--trace-children=no", f"--callgrind-out-file={out}"]
            server_argv = [sys.executable, "-m", "rsasgi", app, "--no-access-log"]
            server_argv += ["--port", str(port)]
        argv = [
            "valgrind", "--tool=callgrind", *valgrind,
            f"--separate-threads={'yes' if per_thread else 'no'}",
            f"--cache-sim={'yes' if cache_sim else 'no'}",
            *server_argv,
        ]  # fmt: skip
        with open(log, "wb") as sink:
            server = subprocess.Popen(argv, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not _listening(server_name, log, port):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start:\n{log.read_text()}")
                time.sleep(0.2)
            if app == APPS["ws_echo"]:
                asyncio.run(_send_websocket(port, requests, connections))
            elif requests and http2:
                _send_http2(port, requests, connections, path)
            elif requests:
                asyncio.run(_send(port, requests, connections, path))
            server.send_signal(signal.SIGINT)
            server.wait(START_TIMEOUT)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
        # With --separate-threads, one file per thread: callgrind.out-01, -02...
        outputs = sorted(Path(tmp).glob(outputs_of))
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            for output in outputs:
                suffix = output.name.removeprefix("callgrind.out")
                shutil.copy(output, Path(keep) / f"callgrind.{app.rsplit(':', 1)[-1]}.out{suffix}")
        totals = {}
        for output in outputs:
            text = output.read_text()
            events = re.search(r"^events:\s+(.+)$", text, re.MULTILINE)
            summary = re.search(r"^summary:\s+(.+)$", text, re.MULTILINE)
            if events is None or summary is None:
                raise RuntimeError(f"no events or summary line in {output}")
            # Callgrind may leave trailing zero counts out.
            numbers = map(int, summary.group(1).split())
            counts = dict(zip(events.group(1).split(), numbers, strict=False))
            key = output.name.rsplit("-", 1)[-1] if per_thread else "all"
            totals[key] = {e: totals.get(key, {}).get(e, 0) + n for e, n in counts.items()}
        return totals


def _granian_argv(app: str, port: int) -> list[str]:
    """granian serving `app` on `port` with the settings of benches/run.py."""
    import run

    settings = run._granian_wsgi_argv if app == APPS["wsgi_hello"] else run._granian_argv
    argv = settings(port, 1, ROOT)
    # run.py names its own app of the interface; this one serves the app asked for.
    return [*argv[:-1], app]


def _listening(server_name: str, log: Path, port: int) -> bool:
    """Whether the server has said it listens (rsasgi) or takes connections (granian, which
    says nothing at its log level)."""
    if server_name == "rsasgi":
        return LISTENING.search(log.read_text(errors="replace")) is not None
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    # Under valgrind the worker accepts well before it has warmed up: let it settle, so
    # that start-up work lands in both runs alike.
    time.sleep(3)
    return True


#: With --cache-sim: what is printed per request, from which of callgrind's events.
CACHE_EVENTS = {
    "L1 data misses": ("D1mr", "D1mw"),
    "L1 instruction misses": ("I1mr",),
    "last-level misses": ("DLmr", "DLmw", "ILmr"),
}


def _per_request(
    busy: dict[str, int], idle: dict[str, int], events: tuple[str, ...], requests: int
) -> float:
    return sum(busy.get(e, 0) - idle.get(e, 0) for e in events) / requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps", nargs="+", choices=list(APPS), default=["hello", "wsgi_hello"])
    parser.add_argument(
        "--requests",
        type=int,
        default=2000,
        help="requests per run, or messages for ws_echo (2000)",
    )
    parser.add_argument("--connections", type=int, default=16, help="connections (16)")
    parser.add_argument(
        "--http2", action="store_true", help=f"h2c with h2load, {H2_STREAMS} streams a connection"
    )
    parser.add_argument(
        "--path", default="/", help="what to GET: / (13 bytes, default), /10k (10 KiB)"
    )
    parser.add_argument(
        "--keep", metavar="DIR", help="keep the busy run's callgrind.out here, to annotate"
    )
    parser.add_argument(
        "--per-thread",
        action="store_true",
        help="count each thread apart (thread 01 runs the app's Python; 02 or 03 the reactor)",
    )
    parser.add_argument(
        "--server",
        choices=("rsasgi", "granian"),
        default="rsasgi",
        help="the server to count (rsasgi); granian is started as benches/run.py starts it",
    )
    parser.add_argument(
        "--cache-sim",
        action="store_true",
        help="also count misses of callgrind's simulated caches (a model of this machine's L1 "
        "and last level, all threads sharing them), which instructions alone do not show",
    )
    args = parser.parse_args()
    if args.requests < 1 or args.connections < 1:
        parser.error("--requests and --connections must be at least 1")
    if args.server != "rsasgi" and args.per_thread:
        parser.error("--per-thread counts rsasgi's threads only")
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    protocol = "h2c" if args.http2 else "HTTP/1.1"
    if "ws_echo" in args.apps and (args.http2 or args.server != "rsasgi"):
        # granian's count per message under valgrind is ten times its share of a core per
        # message in ws_bench.py: work that runs by the clock, not by the message. h2corn's
        # worker crashes under valgrind (in rustix's reading of the vDSO).
        parser.error("ws_echo counts rsasgi's websockets, over HTTP/1.1")
    for name in args.apps:
        idle = measure(
            APPS[name],
            0,
            args.connections,
            per_thread=args.per_thread,
            cache_sim=args.cache_sim,
            server_name=args.server,
        )
        busy = measure(
            APPS[name],
            args.requests,
            args.connections,
            args.http2,
            args.path,
            args.keep,
            args.per_thread,
            args.cache_sim,
            args.server,
        )
        both = [(busy[thread], idle.get(thread, {})) for thread in busy]
        instructions = sum(_per_request(b, i, ("Ir",), args.requests) for b, i in both)
        if name == "ws_echo":
            what = (
                f"message ({args.server}, {args.requests} messages of {len(WS_MESSAGE)} bytes "
                f"echoed over {args.connections} websockets)"
            )
        else:
            what = (
                f"request ({args.server}, {args.requests} {protocol} GET {args.path} "
                f"over {args.connections} connections)"
            )
        print(f"{name:<11} {instructions:>10,.0f} instructions/{what}")
        if args.cache_sim:
            for label, events in CACHE_EVENTS.items():
                misses = sum(_per_request(b, i, events, args.requests) for b, i in both)
                print(f"{'':<11} {misses:>10,.1f} {label}/{what.split()[0]}")
        if args.per_thread:
            for thread in sorted(busy):
                per_request = _per_request(
                    busy[thread], idle.get(thread, {}), ("Ir",), args.requests
                )
                # Threads that do nothing per request (the log writer) are left out.
                if abs(per_request) >= 10:
                    print(f"  thread {thread} {per_request:>10,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
