"""How evenly each server spreads a burst of keep-alive connections over its worker processes.

A load balancer or nginx (`keepalive` in an `upstream`) opens a pool of connections at once
and keeps them: whichever worker accepts a connection serves every request on it for as long
as it lives. With workers that all accept from one socket, the one already awake tends to win
every accept of a burst, and the other workers idle under a full load.

Every server runs the same hello app as `benches/run.py`, with `--workers N` (2 by default).
For each round the script opens C connections at once (asyncio, one `GET /` on each, answered,
then held open), finds which worker process holds the server side of each (the socket's inode,
from /proc/net/tcp, among the descriptors of the server's processes), and closes them. It
reports each round's split and the smallest worker's share, averaged over the rounds (an even
spread gives 1/N).

    python benches/spread.py                                   # every multi-process server
    python benches/spread.py --servers rsasgi uvicorn --workers 4 --connections 128

uWSGI is left out: its --http router holds every client connection, in one process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benches.run import HOST, SERVERS, RunningServer, descendants, wait_for_port  # noqa: E402

#: The servers measured: (group in run.py, name). uWSGI's router holds every connection.
CANDIDATES = [
    ("asgi", "rsasgi"),
    ("asgi", "uvicorn"),
    ("asgi", "granian"),
    ("asgi", "hypercorn"),
    ("asgi", "h2corn"),
    ("asgi", "gunicorn-uvicorn"),
    ("wsgi", "rsasgi"),
    ("wsgi", "granian"),
    ("wsgi", "gunicorn"),
]

#: Seconds every worker gets to start serving after the port first answers.
SETTLE = 3.0


async def _hold(port: int, count: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    async def one():
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length:\s*(\d+)", head)
        if length:
            await reader.readexactly(int(length.group(1)))
        else:  # chunked: the hello body is one chunk and the last one
            await reader.readuntil(b"0\r\n\r\n")
        return reader, writer

    return await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), 30)


def _server_inodes(port: int) -> set[int]:
    """Inodes of established TCP sockets whose local port is `port` (the server's side)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01":  # ESTABLISHED
                inodes.add(int(fields[9]))
    return inodes


def _owners(root: int, inodes: set[int]) -> dict[int, int]:
    """{pid: how many of `inodes` it holds}, over `root` and its descendants."""
    counts: dict[int, int] = {}
    for pid in [root, *descendants(root)]:
        try:
            fds = os.scandir(f"/proc/{pid}/fd")
        except OSError:
            continue
        with fds:
            for fd in fds:
                try:
                    target = os.readlink(fd.path)
                except OSError:
                    continue
                if target.startswith("socket:[") and int(target[8:-1]) in inodes:
                    counts[pid] = counts.get(pid, 0) + 1
    return counts


def measure(group: str, name: str, workers: int, connections: int, rounds: int, work: Path):
    spec = SERVERS[group][name]
    running = RunningServer(spec, None, workers, work)
    try:
        wait_for_port(running.port, running.proc)
        time.sleep(SETTLE)
        splits = []
        for _ in range(rounds):

            async def round_() -> dict[int, int]:
                held = await _hold(running.port, connections)
                owners = _owners(running.proc.pid, _server_inodes(running.port))
                for _, writer in held:
                    writer.close()
                return owners

            splits.append(asyncio.run(round_()))
            time.sleep(0.5)
        seen = set().union(*splits)
        # A worker that held no connection in any round is not among `seen`: it counts as
        # holding none, up to the number of workers asked for.
        shares = []
        for owners in splits:
            counts = sorted(owners.get(pid, 0) for pid in seen)
            counts = [0] * max(0, workers - len(counts)) + counts
            shares.append(counts)
        return shares
    finally:
        running.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", nargs="+", help="only these names (both groups)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rsasgi-spread-"))
    print(
        f"{args.connections} keep-alive connections opened at once, {args.rounds} rounds, "
        f"{args.workers} workers; each round's connections per worker, fewest first"
    )
    for group, name in CANDIDATES:
        if args.servers and name not in args.servers:
            continue
        spec = SERVERS[group][name]
        if spec.missing():
            print(f"{group} {name:<17} skipped: missing {', '.join(spec.missing())}")
            continue
        try:
            shares = measure(group, name, args.workers, args.connections, args.rounds, work)
        except Exception as error:  # noqa: BLE001 (reported, the others still run)
            print(f"{group} {name:<17} FAILED: {error}")
            continue
        smallest = sum(counts[0] / args.connections for counts in shares) / len(shares)
        rounds = "  ".join("/".join(map(str, counts)) for counts in shares)
        print(f"{group} {name:<17} fewest {smallest:5.1%} (even: {1 / args.workers:.1%})  {rounds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
