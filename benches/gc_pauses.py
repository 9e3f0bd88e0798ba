"""Python's garbage collection under load, with `--gc-freeze` on and off.

`python benches/gc_pauses.py` serves the realistic Django project (benches/realistic/, the
page of benches/realistic_bench.py: 20 rows from PostgreSQL through the ORM, rendered with a
template) with rsasgi, one worker on core 0, `RSASGI_GC_FREEZE` false then true, taking turns
for `--rounds` rounds, as WSGI (`/items`) and as ASGI (`/items-async`). wrk (core 1, `-c32`)
loads each for `--duration` seconds after a warm-up. The app is wrapped by
benches/realistic/gc_probe.py, which times every collection from inside the worker.

Each line: requests/s and p99 (wrk's), the full collections during the measured run, the time
they took together and the longest, and the time in collections of any generation per request.
With gc.freeze the full collections no longer walk what the app holds after startup (Django's
modules, models and settings: some 57,000 objects). PostgreSQL is set up as realistic_bench.py
does (a throwaway cluster on a Unix socket, installed with apt-get when missing).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benches.realistic_bench import (  # noqa: E402  (the repository root goes on sys.path first)
    REPO,
    ROWS_IN_TABLE,
    Postgres,
    server_env,
)
from benches.run import free_port, pinned, wait_for_port  # noqa: E402

PATHS = {"wsgi": "/items", "asgi": "/items-async"}
APPS = {group: f"benches.realistic.gc_probe:{group}_app" for group in PATHS}
CONNECTIONS = 32


def read_stats(path: Path, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def wrk(url: str, seconds: float, core: str) -> str:
    command = pinned(core, ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "--latency", url])
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def measure(group: str, freeze: bool, args, postgres: Postgres, work: Path) -> dict:
    out = work / "gc.json"
    out.unlink(missing_ok=True)
    env = dict(server_env(group, postgres), GC_PROBE_OUT=str(out))
    env["RSASGI_GC_FREEZE"] = "true" if freeze else "false"
    port = free_port()
    command = [sys.executable, "-m", "rsasgi", APPS[group], "--no-access-log", "--port", str(port)]
    proc = subprocess.Popen(
        pinned(args.server_cpu, command), cwd=REPO, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port, proc, timeout=60)
        url = f"http://127.0.0.1:{port}{PATHS[group]}"
        wrk(url, args.warmup, args.wrk_cpu)
        time.sleep(1.2)  # the probe writes once a second
        before = read_stats(out)
        output = wrk(url, args.duration, args.wrk_cpu)
        time.sleep(1.2)
        after = read_stats(out)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    requests = int(re.search(r"(\d+) requests in", output).group(1))
    p99 = re.search(r"99%\s+(\S+)", output).group(1)
    full = after["full"][len(before["full"]) :]
    in_gc = sum(
        after["generations"][g]["seconds"] - before["generations"][g]["seconds"]
        for g in after["generations"]
    )
    return {
        "group": group,
        "gc_freeze": freeze,
        "requests_per_sec": round(requests / args.duration, 1),
        "p99": p99,
        "full_collections": len(full),
        "full_ms_total": round(sum(full) * 1000, 1),
        "full_ms_longest": round(max(full, default=0.0) * 1000, 1),
        "gc_ms_per_request": round(in_gc * 1000 / requests, 3) if requests else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", choices=list(PATHS), nargs="+", default=list(PATHS))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up per run")
    parser.add_argument("--server-cpu", default="0", help="taskset list for the server (0)")
    parser.add_argument("--wrk-cpu", default="1", help="taskset list for wrk (1)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rsasgi-gc-"))
    work.chmod(0o755)  # the cluster's owner must reach its directory in it
    postgres = Postgres(work / "pg")
    results = []
    try:
        postgres.start()
        subprocess.run(
            [sys.executable, "-m", "benches.realistic.seed", str(ROWS_IN_TABLE)],
            cwd=REPO, env=server_env("wsgi", postgres), check=True,
        )  # fmt: skip
        print(
            "group freeze   req/s        p99 | full collections  total ms  longest ms"
            " | GC ms per request"
        )
        for group in args.group:
            for _ in range(args.rounds):
                for freeze in (False, True):
                    row = measure(group, freeze, args, postgres, work)
                    results.append(row)
                    print(
                        f"{group:5} {str(freeze).lower():6} {row['requests_per_sec']:7.1f}"
                        f" {row['p99']:>10} | {row['full_collections']:16} "
                        f"{row['full_ms_total']:9.1f} {row['full_ms_longest']:11.1f}"
                        f" | {row['gc_ms_per_request']:.3f}",
                        flush=True,
                    )
    finally:
        postgres.stop()
    output = REPO / "benches" / "results" / "gc_pauses_latest.json"
    output.parent.mkdir(exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults: {output.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
