"""Latency at equal load: each server's p50, p99 and p99.9 on the hello world at one fixed
offered rate, the same for every server of a group.

wrk measures at saturation, where each server's latency is set by how far behind it falls; a
p99 compared there says little. Here every server is offered the same rate, open loop (oha
`-q RATE --latency-correction`: a request is timed from when it was due, so a server that
stalls pays for the queue it builds), at a share of the slowest server's saturation rate as
oha measures it first in the same run (30% by default: oha on one core saturates near 30-35k
requests/s and falls behind a `-q` rate well before that, so a higher share measures oha).
Rounds take turns between the servers, and each server's median round is reported.

On a shared virtual machine the tail is mostly the hypervisor's: the slow requests of a run
come in the tenths of a second in which it gave the cores to another guest ("steal" in
/proc/stat). A run in which it took more than `--max-steal` (0.5%) of the server's or oha's
core is run again (`--steal-reruns` times at most), and the median is taken over the rounds
that stayed under it when a server has any.

    python benches/latency.py                      # ASGI and WSGI groups
    python benches/latency.py --group asgi --servers rsasgi h2corn granian --rounds 5
    python benches/latency.py --rate 8000           # a rate of your choosing

The servers are started as benches/run.py starts them (one worker, on core 0; oha on core 1).
Needs oha (`cargo install oha --locked`) and the peers (`pip install -r
benches/requirements.txt`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benches.realistic_bench import oha_path  # noqa: E402
from benches.run import (  # noqa: E402  (the repository root goes on sys.path first)
    HOST,
    SCENARIOS,
    SERVERS,
    RunningServer,
    add_steal_options,
    available_servers,
    check_answer,
    core_steal_seconds,
    cpu_model,
    pinned,
    stolen_share,
    versions,
    wait_for_port,
)

RESULTS = REPO / "benches" / "results" / "latency_latest.json"
GROUPS = ("asgi", "wsgi")
DEFAULT_SERVERS = {
    "asgi": ["rsasgi", "h2corn", "granian", "uvicorn"],
    "wsgi": ["rsasgi", "granian", "gunicorn", "uwsgi"],
}
SCENARIO = SCENARIOS["hello"]
RATE_SHARE = 0.3
PERCENTILES = {"p50": "p50", "p99": "p99", "p99.9": "p99.9"}


def run_oha(args, oha: str, port: int, seconds: float, rate: float | None) -> dict:
    """oha's JSON report of one run: at saturation, or `rate` requests/s offered."""
    command = [
        oha, "--no-tui", "--output-format", "json", "-z", f"{seconds}s",
        "-c", str(args.connections),
    ]  # fmt: skip
    if rate is not None:
        command += ["-q", str(rate), "--latency-correction"]
    done = subprocess.run(
        pinned(args.load_cpu, [*command, f"http://{HOST}:{port}{SCENARIO.path}"]),
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"oha failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout)


def summarize(report: dict) -> dict:
    """Requests/s answered 200, latency percentiles in ms, and anything that was not a 200."""
    summary = report["summary"]
    seconds = summary.get("total") or 1.0
    codes = {str(k): v for k, v in (report.get("statusCodeDistribution") or {}).items()}
    latencies = report.get("latencyPercentiles") or {}
    result = {"requests_per_sec": round(codes.get("200", 0) / seconds, 1)}
    for name, key in PERCENTILES.items():
        value = latencies.get(key)
        result[f"{name}_ms"] = None if value is None else round(value * 1000, 3)
    # oha ends a timed run by aborting what is in flight: not the server's errors.
    errors = {
        k: v
        for k, v in (report.get("errorDistribution") or {}).items()
        if k != "aborted due to deadline"
    }
    others = {k: v for k, v in codes.items() if k != "200"}
    if errors or others:
        result["errors"] = {**errors, **{f"status {k}": v for k, v in others.items()}}
    return result


def measure(args, oha: str, group: str, name: str, work: Path, rate: float | None) -> dict:
    """Starts the server, checks its answer, warms it up, and measures one run."""
    server = RunningServer(SERVERS[group][name], args.server_cpu, 1, work)
    try:
        wait_for_port(server.port, server.proc)
        check_answer(server.port, SCENARIO)
        run_oha(args, oha, server.port, args.warmup, rate)
        rerun = 0
        while True:
            before, started = core_steal_seconds(), time.monotonic()
            report = run_oha(args, oha, server.port, args.duration, rate)
            elapsed, after = time.monotonic() - started, core_steal_seconds()
            if server.proc.poll() is not None:
                raise RuntimeError("the server exited during the run")
            # A tail is made of stalls: time the hypervisor gives another guest delays
            # whatever was due then, on the server's core or on oha's.
            stolen = max(
                stolen_share(before, after, args.server_cpu, elapsed),
                stolen_share(before, after, args.load_cpu, elapsed),
            )
            if stolen <= args.max_steal or rerun >= args.steal_reruns:
                break
            rerun += 1
            print(
                f"  {name:<10} not counted: the hypervisor took {stolen:.1%} of a core"
                f" (steal); run again ({rerun} of at most {args.steal_reruns})",
                flush=True,
            )
        result = summarize(report)
        result["steal"] = round(stolen, 4)
        result["steal_reruns"] = rerun
        return result
    except Exception as error:
        return {"error": f"{error}\n{server.log_tail()}"}
    finally:
        server.stop()


def median_run(runs: list[dict], max_steal: float) -> dict:
    """The run with the median p99 among those that did not fail (the first failure if all
    did), and among those, the ones the hypervisor left alone (steal at most `max_steal`)
    when there are any: a stolen run's tail is the hypervisor's, and a server must not
    lose or win by its luck in the draw."""
    good = [run for run in runs if "error" not in run and run.get("p99_ms") is not None]
    if not good:
        return runs[0]
    clean = [run for run in good if run.get("steal", 0.0) <= max_steal]
    pool = sorted(clean or good, key=lambda run: run["p99_ms"])
    # Of two middle rounds, the worse: the same rule for every server, whatever the number
    # of its rounds without steal, and none gains by having fewer.
    chosen = dict(pool[len(pool) // 2])
    chosen["rounds_p99_ms"] = [run.get("p99_ms") for run in runs]
    chosen["rounds_steal"] = [run.get("steal") for run in runs]
    chosen["clean_rounds"] = len(clean)
    return chosen


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def bench_group(args, oha: str, group: str, work: Path) -> dict:
    names = available_servers(group, args.servers or DEFAULT_SERVERS[group], 1)
    if "rsasgi" not in names:
        print(f"{group}: rsasgi cannot run here; skipping the group")
        return {}
    print(f"\n{group}: saturation (oha -c {args.connections}, {args.duration:g} s)", flush=True)
    saturation = {}
    for name in names:
        saturation[name] = measure(args, oha, group, name, work, None)
        run = saturation[name]
        text = (
            run.get("error", "").splitlines()[0]
            if "error" in run
            else (f"{run['requests_per_sec']:>10,.0f} req/s")
        )
        print(f"  {name:<10} {text}", flush=True)
    served = [run["requests_per_sec"] for run in saturation.values() if "error" not in run]
    if not served:
        return {"saturation": saturation}
    rate = args.rate or max(100, round(min(served) * args.share, -2))
    print(
        f"{group}: {rate:,.0f} req/s offered to each, open loop "
        f"({args.rounds} round{'s' * (args.rounds > 1)}, taking turns)",
        flush=True,
    )
    rounds: dict[str, list[dict]] = {name: [] for name in names}
    for round_number in range(1, args.rounds + 1):
        for name in names:
            run = measure(args, oha, group, name, work, rate)
            rounds[name].append(run)
            if "error" in run:
                text = "FAILED: " + run["error"].splitlines()[0]
            else:
                text = (
                    f"got {run['requests_per_sec']:>9,.0f} req/s  p50 {fmt(run['p50_ms'])} ms  "
                    f"p99 {fmt(run['p99_ms'])} ms  p99.9 {fmt(run['p99.9_ms'])} ms"
                )
                if run.get("steal"):
                    text += f"  steal {run['steal']:.1%}"
                if run.get("errors"):
                    text += f"  errors {run['errors']}"
            print(f"  round {round_number} {name:<10} {text}", flush=True)
    fixed = {name: median_run(runs, args.max_steal) for name, runs in rounds.items()}
    print_table(group, rate, saturation, fixed)
    return {"rate": rate, "saturation": saturation, "fixed": fixed, "rounds": rounds}


def print_table(group: str, rate: float, saturation: dict, fixed: dict) -> None:
    print(
        f"\n{group.upper()}: hello at {rate:,.0f} req/s each, median round by p99"
        " (of the rounds without steal when there are any)"
    )
    print(
        f"{'server':<10} {'saturation':>11} {'got':>9} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9}"
        "  rounds without steal"
    )
    for name, run in fixed.items():
        sat = saturation.get(name, {}).get("requests_per_sec")
        if "error" in run:
            print(f"{name:<10} {fmt(sat, 0):>11}  FAILED")
            continue
        print(
            f"{name:<10} {fmt(sat, 0):>11} {fmt(run['requests_per_sec'], 0):>9} "
            f"{fmt(run['p50_ms']):>8} {fmt(run['p99_ms']):>8} {fmt(run['p99.9_ms']):>9}"
            f"  {run.get('clean_rounds', 0)} of {len(run.get('rounds_p99_ms', []))}"
        )
    ours = fixed.get("rsasgi", {}).get("p99_ms")
    peers = {
        name: run["p99_ms"]
        for name, run in fixed.items()
        if name != "rsasgi" and "error" not in run and run.get("p99_ms")
    }
    if ours and peers:
        best = min(peers, key=peers.get)
        verdict = "met" if ours <= peers[best] else "MISSED"
        print(
            f"{group.upper()} p99 bar (rsasgi's p99 no worse than the best peer's): {verdict}: "
            f"rsasgi {ours:.2f} ms, {best} {peers[best]:.2f} ms "
            f"(rsasgi ÷ {best} {ours / peers[best]:.2f})"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--group", choices=GROUPS, nargs="+", default=list(GROUPS))
    parser.add_argument("--servers", nargs="+", help="only these (names as in benches/run.py)")
    parser.add_argument("--rate", type=float, help="requests/s offered to each server")
    parser.add_argument(
        "--share",
        type=float,
        default=RATE_SHARE,
        help=f"without --rate: this share of the slowest server's saturation rate ({RATE_SHARE})",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run (10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up (2)")
    parser.add_argument("--rounds", type=int, default=3, help="fixed-rate rounds per server (3)")
    parser.add_argument("--connections", type=int, default=64, help="oha connections (64)")
    parser.add_argument("--server-cpu", default="0", help="the server's core (0)")
    parser.add_argument("--load-cpu", default="1", help="oha's core (1)")
    add_steal_options(parser, 0.005, "the server's or oha's core")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON file ({RESULTS})")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration <= 0 or not 0 < args.share <= 1:
        parser.error("--rounds must be at least 1, --duration positive, --share in (0, 1]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    oha = oha_path()
    if oha is None:
        print("oha not found: cargo install oha --locked", file=sys.stderr)
        return 2
    report = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": sys.argv,
        "machine": cpu_model(),
        "settings": {
            key: str(value) if isinstance(value, Path) else value
            for key, value in vars(args).items()
        },
        "groups": {},
    }
    with tempfile.TemporaryDirectory(prefix="rsasgi-latency-") as tmp:
        for group in args.group:
            report["groups"][group] = bench_group(args, oha, group, Path(tmp))
    report["versions"] = versions(
        sorted({name for group in args.group for name in DEFAULT_SERVERS[group]}), wrk=False
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
