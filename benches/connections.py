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
    python benches/connections.py --websocket deflate --connections 1000

With `--websocket plain` or `--websocket deflate` the connections are WebSockets instead, to
benches/ws_bench.py's echo app (started with ws_bench.py's commands): each one upgrades (offering
permessage-deflate with `deflate`, as browsers do), sends one 1 KiB text message (compressed
when the server agreed to deflate) and reads its echo, then stays open. Whether each server
agreed to deflate is printed with its figures: a server that declines it is measured plain.

Servers: rsasgi, uvicorn, granian, hypercorn, h2corn (those installed; see run.py). Each
server's keep-alive timeout must outlast the measurement: rsasgi's and uvicorn's are 5 s by
default, so every server gets its option for a longer one where it has one; granian gets room
to serve every connection at once (see KEEP_ALIVE).
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402  (benches/run.py: the server commands and the memory readings)
import ws_bench  # noqa: E402  (benches/ws_bench.py: the websocket servers' commands)

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

#: Options that keep idle WebSockets open through the measurement: the raw client never
#: answers a ping, so servers that ping are told not to where they can be (uvicorn's pings,
#: every 20 s with 20 s to answer, leave a connection open for 40 s: enough for 1,000
#: connections, not always for 5,000); granian gets room for every connection, as above.
WS_KEEP_OPEN = {
    "rsasgi": ["--ws-ping-interval", "0"],
    "granian": ["--backlog", "{connections}", "--backpressure", "{connections}"],
}
#: The one message each WebSocket sends: 1 KiB of text that compresses well.
WS_MESSAGE = b'{"user": "ada", "text": "hello there", "seq": 1}\n' * 21


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


def ws_frame(opcode: int, payload: bytes, rsv1: bool) -> bytes:
    """A client frame (masked, as RFC 6455 §5.3 requires), FIN set."""
    first = 0x80 | (0x40 if rsv1 else 0) | opcode
    if len(payload) < 126:
        head = struct.pack("!BB", first, 0x80 | len(payload))
    else:
        head = struct.pack("!BBH", first, 0x80 | 126, len(payload))
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def recv_exactly(sock: socket.socket, count: int, buffer: bytearray) -> bytes:
    while len(buffer) < count:
        data = sock.recv(65536)
        if not data:
            raise RuntimeError(f"connection closed after {bytes(buffer[:200])!r}")
        buffer += data
    taken = bytes(buffer[:count])
    del buffer[:count]
    return taken


def open_websockets(port: int, count: int, deflate: bool) -> tuple[list[socket.socket], bool]:
    """`count` WebSockets that each echoed one message; and whether the server agreed to
    permessage-deflate on every one. On an error the ones opened are closed."""
    sockets: list[socket.socket] = []
    try:
        return sockets, _upgrade_and_echo(port, count, deflate, sockets)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise


def _upgrade_and_echo(port: int, count: int, deflate: bool, sockets: list) -> bool:
    for _ in range(count):
        sock = socket.create_connection((run.HOST, port))
        sockets.append(sock)
        sock.sendall(ws_bench.upgrade_request(deflate))
    every_agreed = True
    for sock in sockets:
        sock.settimeout(10)
        rest, agreed = ws_bench.read_upgrade(sock)
        every_agreed = every_agreed and agreed
        # Each message on its own (no context kept), which every agreement allows.
        if agreed:
            compressor = zlib.compressobj(wbits=-15)
            payload = compressor.compress(WS_MESSAGE) + compressor.flush(zlib.Z_SYNC_FLUSH)
            sock.sendall(ws_frame(0x1, payload[:-4], rsv1=True))
        else:
            sock.sendall(ws_frame(0x1, WS_MESSAGE, rsv1=False))
        buffer = bytearray(rest)
        first, second = recv_exactly(sock, 2, buffer)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", recv_exactly(sock, 2, buffer))
        elif length == 127:
            (length,) = struct.unpack("!Q", recv_exactly(sock, 8, buffer))
        payload = recv_exactly(sock, length, buffer)
        if first & 0x40:
            payload = zlib.decompressobj(wbits=-15).decompress(payload + b"\x00\x00\xff\xff")
        if payload != WS_MESSAGE:
            raise RuntimeError(f"bad echo: {payload[:100]!r}")
    return every_agreed


def settle(pid: int, seconds: float) -> int:
    """The tree's RSS once it has not moved by more than 1% for three seconds (at most
    `seconds`). Three, not one: rsasgi gives freed memory back after it has been free for a
    second, checked once a second, so for up to two seconds after a burst it sits still at its
    peak."""
    deadline = time.monotonic() + seconds
    readings = [tree_rss_kib(pid)]
    while time.monotonic() < deadline:
        time.sleep(1)
        readings.append(tree_rss_kib(pid))
        window = readings[-4:]
        if len(window) == 4 and max(window) - min(window) <= 0.01 * window[-1]:
            return window[-1]
    return readings[-1]


def measure(spec: run.ServerSpec, args, work: Path) -> dict:
    extra = [o.format(connections=args.connections) for o in KEEP_ALIVE.get(spec.name, [])]
    original = spec.argv
    spec.argv = lambda port, workers, work: [*original(port, workers, work), *extra]
    server = run.RunningServer(spec, "0", 1, work)
    try:
        run.wait_for_port(server.port, server.proc)
        return measure_rss(
            server.proc.pid, lambda count: (open_connections(server.port, count), None), args
        )
    finally:
        server.stop()
        spec.argv = original


def measure_websockets(spec: ws_bench.ServerSpec, args, work: Path) -> dict:
    deflate = args.websocket == "deflate"
    extra = [o.format(connections=args.connections) for o in WS_KEEP_OPEN.get(spec.name, [])]
    original = spec.argv
    spec.argv = lambda port: [*original(port), *extra]
    server = ws_bench.RunningServer(spec, "0", work)
    try:
        ws_bench.wait_for_port(server.port, server.proc)
        return measure_rss(
            server.proc.pid, lambda count: open_websockets(server.port, count, deflate), args
        )
    finally:
        server.stop()
        spec.argv = original


def measure_rss(pid: int, connect, args) -> dict:
    """RSS idle, with `args.connections` connections open, and after the bursts; `connect(n)`
    opens n connections and says whether they agreed to deflate (None for HTTP)."""
    sockets, _ = connect(20)
    for sock in sockets:
        sock.close()
    idle = settle(pid, 10)
    sockets, agreed = connect(args.connections)
    try:
        held = settle(pid, 10)
    finally:
        for sock in sockets:
            sock.close()
    for _ in range(args.bursts):
        settle(pid, 5)
        for sock in connect(args.connections)[0]:
            sock.close()
    after = settle(pid, 20)
    return {
        "idle_mib": idle / 1024,
        "held_mib": held / 1024,
        "per_connection_kib": (held - idle) / args.connections,
        "after_bursts_mib": after / 1024,
        "after_vs_idle": after / idle,
        "deflate": agreed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--servers", nargs="+")
    parser.add_argument(
        "--websocket",
        choices=["plain", "deflate"],
        help="WebSockets to ws_bench.py's echo app instead of HTTP keep-alive connections",
    )
    args = parser.parse_args()
    if args.servers is None:
        args.servers = ["rsasgi", "uvicorn", "granian", "hypercorn", "h2corn"]
    limit = args.connections + 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < limit:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))
    results = {}
    with tempfile.TemporaryDirectory(prefix="rsasgi-connections-") as tmp:
        for name in args.servers:
            if args.websocket:
                spec = ws_bench.SERVERS.get(name)
            else:
                spec = run.SERVERS["asgi"].get(name)
            if spec is None:
                print(f"{name}: not a server of this benchmark", file=sys.stderr)
                continue
            missing = spec.missing()
            if missing:
                print(f"{name}: skipped, missing {', '.join(missing)} ({spec.install})")
                continue
            print(f"{name}: {args.connections} connections ...", flush=True)
            try:
                if args.websocket:
                    results[name] = measure_websockets(spec, args, Path(tmp))
                else:
                    results[name] = measure(spec, args, Path(tmp))
            except Exception as exc:  # one server failing must not end the run
                print(f"{name}: failed: {exc}")
    print()
    print(
        f"{'server':<10} {'idle MiB':>9} {'held MiB':>9} {'KiB/conn':>9} "
        f"{'after MiB':>10} {'after/idle':>10}" + ("  deflate" if args.websocket else "")
    )
    for name, r in results.items():
        print(
            f"{name:<10} {r['idle_mib']:>9.1f} {r['held_mib']:>9.1f} "
            f"{r['per_connection_kib']:>9.2f} {r['after_bursts_mib']:>10.1f} "
            f"{r['after_vs_idle']:>10.2f}"
            + (f"  {'agreed' if r['deflate'] else 'declined'}" if args.websocket else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
