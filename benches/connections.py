"""Memory per idle keep-alive connection, and memory after bursts of connections, for rsasgi
and the ASGI peers of benches/run.py, side by side.

Each server runs the ASGI hello world (benches/apps.py), one worker, pinned to core 0, started
by run.py's own commands. For each one the script reads the resident memory of its whole
process tree (RSS, from /proc), idle after a few requests; then opens N connections that each
send one request, read the answer and stay open (keep-alive), and reads it again: the growth
divided by N is the memory per idle connection. It then closes them, opens and closes N more
`--bursts` times, waits for the server to settle and reads it a last time: how far the server
gets back to its idle size.

    python benches/connections.py                         # 5,000 connections, every server
    python benches/connections.py --connections 2000 --servers rsasgi granian

Servers: rsasgi, uvicorn, granian, hypercorn, h2corn (those installed; see run.py). Each
server's keep-alive timeout must outlast the measurement: rsasgi's and uvicorn's are 5 s by
default, so every server gets its option for a longer one where it has one; granian gets room
to serve every connection at once (see KEEP_ALIVE).
"""

from __future__ import annotations

import argparse
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402  (benches/run.py: the server commands and the memory readings)

#: Options that keep N idle connections open through the measurement, per server. granian
#: serves at most --backpressure connections at once (by default its backlog, 1024): the rest
#: wait unanswered in the accept queue, so it is given room for all of them (and the backlog).
KEEP_ALIVE = {
    "rsasgi": ["--timeout-keep-alive", "120"],
    "uvicorn": ["--timeout-keep-alive", "120"],
    "hypercorn": ["--keep-alive", "120"],
    "granian": ["--backlog", "{connections}", "--backpressure", "{connections}"],
    "h2corn": [],
}
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


def tree_rss_kib(pid: int) -> int:
    snapshot = run.memory_snapshot(pid)
    return round(snapshot["total_rss_mib"] * 1024)


def open_connections(port: int, count: int) -> list[socket.socket]:
    """`count` connections that each sent one request and read its whole answer."""
    sockets = []
    for _ in range(count):
        sock = socket.create_connection((run.HOST, port))
        sock.sendall(REQUEST)
        sockets.append(sock)
    for sock in sockets:
        sock.settimeout(10)
        answer = b""
        while not answer.endswith(b"Hello, world!"):
            data = sock.recv(4096)
            if not data:
                raise RuntimeError(f"connection closed after {answer[:200]!r}")
            answer += data
    return sockets


def settle(pid: int, seconds: float) -> int:
    """The tree's RSS once it has not moved by more than 1% for a second (at most `seconds`)."""
    deadline = time.monotonic() + seconds
    last = tree_rss_kib(pid)
    while time.monotonic() < deadline:
        time.sleep(1)
        now = tree_rss_kib(pid)
        if abs(now - last) <= 0.01 * last:
            return now
        last = now
    return last


def measure(spec: run.ServerSpec, args, work: Path) -> dict:
    extra = [o.format(connections=args.connections) for o in KEEP_ALIVE.get(spec.name, [])]
    original = spec.argv
    spec.argv = lambda port, workers, work: [*original(port, workers, work), *extra]
    server = run.RunningServer(spec, "0", 1, work)
    try:
        run.wait_for_port(server.port, server.proc)
        for sock in open_connections(server.port, 20):
            sock.close()
        idle = settle(server.proc.pid, 10)
        sockets = open_connections(server.port, args.connections)
        held = settle(server.proc.pid, 5)
        for sock in sockets:
            sock.close()
        for _ in range(args.bursts):
            settle(server.proc.pid, 3)
            for sock in open_connections(server.port, args.connections):
                sock.close()
        after = settle(server.proc.pid, 15)
        return {
            "idle_mib": idle / 1024,
            "held_mib": held / 1024,
            "per_connection_kib": (held - idle) / args.connections,
            "after_bursts_mib": after / 1024,
            "after_vs_idle": after / idle,
        }
    finally:
        server.stop()
        spec.argv = original


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--servers", nargs="+", default=list(KEEP_ALIVE))
    args = parser.parse_args()
    limit = args.connections + 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < limit:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))
    results = {}
    with tempfile.TemporaryDirectory(prefix="rsasgi-connections-") as tmp:
        for name in args.servers:
            spec = run.SERVERS["asgi"].get(name)
            if spec is None:
                print(f"{name}: not an ASGI server of run.py", file=sys.stderr)
                continue
            missing = spec.missing()
            if missing:
                print(f"{name}: skipped, missing {', '.join(missing)} ({spec.install})")
                continue
            print(f"{name}: {args.connections} connections ...", flush=True)
            try:
                results[name] = measure(spec, args, Path(tmp))
            except Exception as exc:  # one server failing must not end the run
                print(f"{name}: failed: {exc}")
    print()
    print(
        f"{'server':<10} {'idle MiB':>9} {'held MiB':>9} {'KiB/conn':>9} "
        f"{'after MiB':>10} {'after/idle':>10}"
    )
    for name, r in results.items():
        print(
            f"{name:<10} {r['idle_mib']:>9.1f} {r['held_mib']:>9.1f} "
            f"{r['per_connection_kib']:>9.2f} {r['after_bursts_mib']:>10.1f} "
            f"{r['after_vs_idle']:>10.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
