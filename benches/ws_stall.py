"""How long one large compressed WebSocket message holds the other WebSockets of a worker.

Every server runs benches/ws_bench.py's echo app (one worker, pinned to core 0, started with
ws_bench.py's commands). A probe WebSocket (the `websockets` library, no compression) sends
10-byte messages one after another and times each echo, while a second connection echoes
`--rounds` large text messages (`--size` bytes of random base64: deflate works hard on it) with
permessage-deflate. The big client is a raw socket sending a message compressed once in
advance, in 64 KiB fragments (one frame with `--one-frame`, as browsers and the `websockets`
library send), so that its own CPU use is negligible; both clients are pinned to core 1. The
probe's echo times during the big echoes say how long the big message held the server: p50,
p99 and the longest.

    python benches/ws_stall.py                           # 8 MiB messages, every server
    python benches/ws_stall.py --one-frame               # each message sent as one frame
    python benches/ws_stall.py --size 1048576 --servers rsasgi uvicorn

A server that declines permessage-deflate is reported as such and measured with the message
sent plain. Results go to benches/results/ws_stall_latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import socket
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ws_bench  # noqa: E402  (the servers' commands and the echo app)

RESULTS = ws_bench.REPO / "benches" / "results" / "ws_stall_latest.json"
FRAGMENT = 64 * 1024
PROBE = "0123456789"
SERVERS = ["rsasgi", "uvicorn", "hypercorn", "h2corn", "granian"]


def client_frame(first_byte: int, payload: bytes) -> bytes:
    """A client frame with a zero masking key (valid, and it spares masking in Python)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", first_byte, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", first_byte, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", first_byte, 0x80 | 127, n)
    return head + b"\0\0\0\0" + payload


def message_frames(message: bytes, compressed: bool, fragment: int) -> bytes:
    """`message` as a text message in fragments of `fragment` bytes, compressed as RFC 7692
    says when `compressed` (RSV1 on the first frame only)."""
    if compressed:
        compressor = zlib.compressobj(wbits=-15)
        data = (compressor.compress(message) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
    else:
        data = message
    chunks = [data[i : i + fragment] for i in range(0, len(data), fragment)]
    frames = []
    for index, chunk in enumerate(chunks):
        first = 0x80 if index == len(chunks) - 1 else 0
        if index == 0:
            first |= 0x1 | (0x40 if compressed else 0)
        frames.append(client_frame(first, chunk))
    return b"".join(frames)


def handshake(port: int, offer_deflate: bool) -> tuple[socket.socket, bytes, bool]:
    """A raw WebSocket: the socket, bytes read past the response head, and whether the
    server agreed to permessage-deflate."""
    sock = socket.create_connection((ws_bench.HOST, port))
    sock.sendall(ws_bench.upgrade_request(offer_deflate))
    return sock, *ws_bench.read_upgrade(sock)


def big_client(port: int, size: int, rounds: int, fragment: int, ready, go, agreed) -> None:
    """Runs in its own process: echoes `rounds` large messages, reading each echo whole."""
    message = base64.b64encode(os.urandom(size * 3 // 4))[:size]
    sock, buffer, deflate = handshake(port, True)
    with sock:
        agreed.value = deflate
        wire = message_frames(message, deflate, fragment)
        ready.set()
        go.wait()

        def take(count: int) -> bytes:
            nonlocal buffer
            while len(buffer) < count:
                data = sock.recv(1 << 20)
                if not data:
                    raise RuntimeError("the server closed the big connection")
                buffer += data
            taken, buffer = buffer[:count], buffer[count:]
            return taken

        for _ in range(rounds):
            sock.sendall(wire)
            done = False
            while not done:
                first, second = take(2)
                length = second & 0x7F
                if length == 126:
                    (length,) = struct.unpack("!H", take(2))
                elif length == 127:
                    (length,) = struct.unpack("!Q", take(8))
                take(length)
                # The echo ends with a data frame with FIN set (a ping is not part of it).
                done = bool(first & 0x80) and not first & 0x08


async def probe(port: int, size: int, rounds: int, fragment: int) -> dict:
    from websockets.asyncio.client import connect

    context = multiprocessing.get_context("fork")
    ready, go, agreed = context.Event(), context.Event(), context.Value("b", 0)
    # Forked before the probe connects, so that it holds none of the probe's state.
    big = context.Process(target=big_client, args=(port, size, rounds, fragment, ready, go, agreed))
    big.start()
    try:
        while not ready.is_set():
            if not big.is_alive():
                raise RuntimeError(f"the big client failed (exit code {big.exitcode})")
            await asyncio.sleep(0.01)
        async with connect(f"ws://{ws_bench.HOST}:{port}/", compression=None) as ws:
            for _ in range(100):  # warm up
                await ws.send(PROBE)
                await ws.recv()
            go.set()
            started = time.perf_counter()
            times = []
            while big.is_alive():
                sent = time.perf_counter()
                await ws.send(PROBE)
                if await ws.recv() != PROBE:
                    raise RuntimeError("the probe's echo differs")
                times.append(time.perf_counter() - sent)
            elapsed = time.perf_counter() - started
        big.join()
        if big.exitcode != 0:
            raise RuntimeError(f"the big client failed (exit code {big.exitcode})")
    finally:
        if big.is_alive():
            big.terminate()
        big.join()
    if not times:
        raise RuntimeError("the big echoes ended before the probe's first echo")
    times.sort()
    return {
        "deflate": bool(agreed.value),
        "seconds": round(elapsed, 3),
        "probes": len(times),
        "p50_ms": round(times[len(times) // 2] * 1e3, 2),
        "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))] * 1e3, 2),
        "max_ms": round(times[-1] * 1e3, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=8 * 1024 * 1024, help="bytes per message")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--servers", nargs="+", default=SERVERS)
    parser.add_argument(
        "--one-frame", action="store_true", help="send each large message as one frame"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.sched_setaffinity(0, {1})  # the clients on core 1, the server on core 0
    results = {}
    with tempfile.TemporaryDirectory(prefix="rsasgi-ws-stall-") as tmp:
        for name in args.servers:
            spec = ws_bench.SERVERS.get(name)
            if spec is None:
                print(f"{name}: not a server of ws_bench.py", file=sys.stderr)
                continue
            missing = spec.missing()
            if missing:
                print(f"{name}: skipped, missing {', '.join(missing)} ({spec.install})")
                continue
            server = ws_bench.RunningServer(spec, "0", Path(tmp))
            try:
                ws_bench.wait_for_port(server.port, server.proc)
                fragment = args.size + 1 if args.one_frame else FRAGMENT
                results[name] = asyncio.run(probe(server.port, args.size, args.rounds, fragment))
            except Exception as error:  # one server failing must not end the run
                results[name] = {"error": f"{type(error).__name__}: {error}"}
                print(f"{name}: failed: {error}\n{server.log_tail()}")
            finally:
                server.stop()
    framing = "one frame each" if args.one_frame else "64 KiB fragments"
    print(
        f"\n{args.rounds} text messages of {args.size:,} bytes ({framing}) echoed on one "
        "connection:"
    )
    print(
        f"{'server':<10} {'deflate':>8} {'seconds':>8} {'probes':>7} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
    )
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<10} failed: {r['error']}")
            continue
        print(
            f"{name:<10} {'agreed' if r['deflate'] else 'declined':>8} {r['seconds']:>8.2f} "
            f"{r['probes']:>7} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['max_ms']:>8.2f}"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    settings = {"size": args.size, "rounds": args.rounds, "one_frame": args.one_frame}
    args.output.write_text(json.dumps({"settings": settings, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
