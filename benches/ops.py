"""What rsasgi's operations features cost: the ASGI hello world with the access log (text,
JSON, through --log-config), with --metrics-bind, against the same server with all of them off.

One worker pinned to core 0, wrk pinned to core 1 (`-t1 -c64`), as benches/run.py measures.
The variants run in turn, round after round (`--rounds`), so a slow patch of the machine hits
them all alike; the table gives each one's median requests/s and its ratio to "off".

    python benches/ops.py                        # 5 rounds of 5 s
    python benches/ops.py --rounds 3 --duration 3 --variants off metrics

Access lines go to a file (--access-logfile, or the log config's FileHandler), as in
production: writing them to a terminal or a pipe would measure the reader.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402  (benches/run.py: ports, pinning, wrk's output)


def log_config(work: Path) -> Path:
    """A dictConfig that writes access lines to a file, as an operator's would."""
    path = work / "logging.json"
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "formatters": {"plain": {"format": "%(asctime)s %(name)s %(message)s"}},
                "handlers": {
                    "file": {
                        "class": "logging.FileHandler",
                        "filename": str(work / "python-access.log"),
                        "formatter": "plain",
                    }
                },
                "root": {"handlers": ["file"], "level": "INFO"},
            }
        )
    )
    return path


def variants(work: Path) -> dict[str, list[str]]:
    access = ["--access-logfile", str(work / "access.log")]
    return {
        "off": ["--no-access-log"],
        "access-log": access,
        "access-log-json": [*access, "--log-format", "json"],
        "log-config": ["--log-config", str(log_config(work))],
        "metrics": ["--no-access-log", "--metrics-bind", f"{run.HOST}:{run.free_port()}"],
    }


def measure(options: list[str], args, work: Path) -> float:
    port = run.free_port()
    command = run.pinned(
        args.server_cpu,
        [
            sys.executable, "-m", "rsasgi", run.ASGI_APP,
            "--host", run.HOST, "--port", str(port), *options,
        ],
    )  # fmt: skip
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(run.REPO), env.get("PYTHONPATH")]))
    with open(work / "server.log", "ab") as log:
        proc = subprocess.Popen(
            command, cwd=run.REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            run.wait_for_port(port, proc)
            wrk = ["wrk", "-t1", f"-c{args.connections}", f"-d{args.duration}s", "--latency"]
            url = f"http://{run.HOST}:{port}/"
            # A short warm-up, then the measured run.
            subprocess.run(run.pinned(args.wrk_cpu, [*wrk[:3], "-d1s", url]), capture_output=True)
            result = subprocess.run(
                run.pinned(args.wrk_cpu, [*wrk, url]),
                capture_output=True,
                text=True,
                timeout=args.duration + 30,
            )
            return run.parse_wrk(result.stdout)["requests_per_sec"]
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--server-cpu", default="0")
    parser.add_argument("--wrk-cpu", default="1")
    parser.add_argument("--variants", nargs="+")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rsasgi-ops-") as tmp:
        work = Path(tmp)
        chosen = variants(work)
        if args.variants:
            chosen = {name: chosen[name] for name in args.variants}
        results: dict[str, list[float]] = {name: [] for name in chosen}
        for round_number in range(1, args.rounds + 1):
            for name, options in chosen.items():
                rps = measure(options, args, work)
                results[name].append(rps)
                print(f"round {round_number} {name:<16} {rps:>10.0f} req/s", flush=True)
    print()
    base = statistics.median(results["off"]) if "off" in results else None
    print(f"{'variant':<16} {'median req/s':>12} {'vs off':>8}   every round")
    for name, values in results.items():
        median = statistics.median(values)
        ratio = f"{median / base:.3f}" if base else "-"
        rounds = " ".join(f"{v:.0f}" for v in values)
        print(f"{name:<16} {median:>12.0f} {ratio:>8}   {rounds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
