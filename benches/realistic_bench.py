"""A benchmark that is not hello world: Django with PostgreSQL, as WSGI and as ASGI.

Every server runs the same small Django project (benches/realistic/): a page that reads the 20
newest rows of a 10,000-row table from PostgreSQL through the ORM and renders them with a
template (about 5 KB of HTML). The WSGI servers serve the sync view (`/items`) of
`benches.realistic.wsgi:application`; the ASGI servers the async view (`/items-async`, the same
query through Django's async ORM) of `benches.realistic.asgi:application`.

    WSGI: rsasgi (8 threads), gunicorn (gthread, 8 threads), granian (wsgi, 8 blocking
          threads), uwsgi (--http router, 8 threads)
    ASGI: rsasgi, uvicorn (uvloop + httptools), granian (asgi, uvloop), h2corn (uvloop)

each with 1 and then 2 worker processes. For each group and worker count the script measures

1. saturation: oha with 64 connections as fast as the server answers: requests/s and p99;
2. a fixed offered rate, the same for every server of the group and worker count (by default
   70% of the slowest server's saturation rate there): oha -q RATE with latency correction
   (each request's latency counts from when it was due, not from when oha got to send it, so
   a server that falls behind pays for the queue): p50 and p99, and the rate achieved.

Each measured run follows a warm-up run on the same server process. With --rounds N every
server is measured N times, the servers taking turns in an order that rotates each round, and
the table gives each one's median round (by req/s at saturation, by p99 at the fixed rate):
a shared host's slow phases last minutes, long enough to rank the servers of one round by
when each one ran. PostgreSQL is the OS's
(Debian's `postgresql`; installed with apt-get when missing and the script runs as root): a
throwaway cluster made with initdb in a temporary directory, owned by the `postgres` user when
the script runs as root, listening on a Unix socket only, seeded, and removed at the end.

Database connections: the WSGI servers run Django with persistent connections (CONN_MAX_AGE =
None: each of a worker's 8 threads keeps one connection). Under ASGI Django runs each request's
ORM calls on a thread made for that request, so a persistent connection would be left behind
with its thread; Django's documentation says to disable persistent connections under ASGI and
use the backend's pool, so the ASGI servers run CONN_MAX_AGE = 0 with Django's PostgreSQL pool
(psycopg_pool) of 8 connections per worker (min = max): 8 connections per worker either way.

CPUs: with 1 worker the server (all its processes and threads) is pinned to the first CPU, and
oha and PostgreSQL to the second. With 2 workers on a 2-CPU machine nothing is pinned: both
workers, PostgreSQL and oha share both CPUs, so those numbers measure the whole stack. With
more CPUs, the server gets N CPUs and oha and PostgreSQL the next one.

    pip install -r benches/requirements.txt     # Django, psycopg, the servers
    cargo install oha --locked                   # the load generator (the script runs this when
                                                 # oha is missing and cargo is there)
    python benches/realistic_bench.py            # from the repository root, as root or not
    python benches/realistic_bench.py --workers 1 --group wsgi --servers rsasgi gunicorn
    python benches/realistic_bench.py --duration 10 --rate 1500
    python benches/realistic_bench.py --rounds 3  # the table to quote; about 20 minutes

Results also go to benches/results/realistic_latest.json.
"""

from __future__ import annotations

import argparse
import glob
import importlib.metadata
import importlib.util
import json
import os
import platform
import pwd
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benches.run import (  # noqa: E402  (the repository root goes on sys.path first)
    RunningServer,
    core_seconds,
    descendants,
    free_port,
    pinned,
    program,
    tree_cpu_seconds,
    wait_for_port,
)

HOST = "127.0.0.1"
RESULTS = REPO / "benches" / "results" / "realistic_latest.json"
SETTINGS = "benches.realistic.settings"
WSGI_APP = "benches.realistic.wsgi:application"
ASGI_APP = "benches.realistic.asgi:application"
GROUPS = ("wsgi", "asgi")
PATHS = {"wsgi": "/items", "asgi": "/items-async"}
# How Django holds its database connections in each group (see benches/realistic/settings.py).
DB_MODE = {"wsgi": "persistent", "asgi": "pool"}

# Threads per WSGI worker (rsasgi's default --threads), and database connections per worker.
THREADS = 8
ROWS_IN_TABLE = 10_000
ROWS_PER_PAGE = 20
CONNECTIONS = 64
RATE_SHARE = 0.7
# The user that owns the PostgreSQL cluster when the script runs as root (initdb refuses root).
PG_OWNER = "postgres"


# --------------------------------------------------------------------------- servers


def _has_uvloop() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def _rsasgi(app: str, interface: str) -> Callable[[int, int], list[str]]:
    def argv(port: int, workers: int) -> list[str]:
        # One worker: a single process, no supervisor (rsasgi's default). More: the supervisor.
        supervisor = ["--workers", str(workers)] if workers > 1 else []
        threads = ["--threads", str(THREADS)] if interface == "wsgi" else []
        return [
            sys.executable, "-m", "rsasgi", app, "--interface", interface,
            "--host", HOST, "--port", str(port), *supervisor, *threads,
            "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip

    return argv


def _gunicorn(port: int, workers: int) -> list[str]:
    return [
        sys.executable, "-m", "gunicorn", WSGI_APP,
        "--bind", f"{HOST}:{port}", "--workers", str(workers),
        "--worker-class", "gthread", "--threads", str(THREADS),
        "--log-level", "warning",
    ]  # fmt: skip


def _granian(app: str, interface: str) -> Callable[[int, int], list[str]]:
    def argv(port: int, workers: int) -> list[str]:
        if interface == "wsgi":
            extra = ["--blocking-threads", str(THREADS)]
        else:
            extra = ["--loop", "uvloop"] if _has_uvloop() else []
        return [
            sys.executable, "-m", "granian", "--interface", interface,
            "--host", HOST, "--port", str(port),
            "--workers", str(workers), "--runtime-threads", "1", *extra,
            "--no-ws", "--no-access-log", "--log-level", "warning",
            app,
        ]  # fmt: skip

    return argv


def _uwsgi(port: int, workers: int) -> list[str]:
    # Its --http router (a second process) in front of the workers, with keep-alive and a
    # 64 KiB buffer, as in benches/run.py (see the notes there).
    return [
        program("uwsgi") or "uwsgi",
        "--http", f"{HOST}:{port}", "--http-keepalive", "--http-buffer-size", "65536",
        "--module", WSGI_APP, "--pythonpath", str(REPO),
        "--master", "--processes", str(workers), "--threads", str(THREADS),
        "--disable-logging", "--die-on-term", "--need-app",
    ]  # fmt: skip


def _uvicorn(port: int, workers: int) -> list[str]:
    processes = ["--workers", str(workers)] if workers > 1 else []
    return [
        sys.executable, "-m", "uvicorn", ASGI_APP,
        "--host", HOST, "--port", str(port), *processes,
        "--loop", "uvloop", "--http", "httptools",
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip


def _h2corn(port: int, workers: int) -> list[str]:
    loop = ["--loop", "uvloop"] if _has_uvloop() else []
    return [
        sys.executable, "-m", "h2corn", ASGI_APP,
        "--host", HOST, "--port", str(port),
        "--workers", str(workers), "--runtime-threads", "1", *loop,
        "--no-access-log",
    ]  # fmt: skip


@dataclass
class Server:
    name: str
    group: str
    argv: Callable[[int, int], list[str]]
    requires: tuple[str, ...] = ()
    programs: tuple[str, ...] = ()
    notes: str = ""

    def missing(self) -> list[str]:
        modules = [m for m in self.requires if importlib.util.find_spec(m) is None]
        return modules + [p for p in self.programs if program(p) is None]


SERVERS = [
    Server("rsasgi", "wsgi", _rsasgi(WSGI_APP, "wsgi"), ("rsasgi",), notes=f"{THREADS} threads"),
    Server(
        "gunicorn", "wsgi", _gunicorn, ("gunicorn",), notes=f"gthread, {THREADS} threads"
    ),
    Server(
        "granian", "wsgi", _granian(WSGI_APP, "wsgi"), ("granian",),
        notes=f"1 runtime thread, {THREADS} blocking threads",
    ),
    Server(
        "uwsgi", "wsgi", _uwsgi, programs=("uwsgi",),
        notes=f"--http router + master, {THREADS} threads",
    ),
    Server("rsasgi", "asgi", _rsasgi(ASGI_APP, "asgi"), ("rsasgi",), notes="loop auto (uvloop)"),
    Server(
        "uvicorn", "asgi", _uvicorn, ("uvicorn", "uvloop", "httptools"),
        notes="uvloop + httptools",
    ),
    Server(
        "granian", "asgi", _granian(ASGI_APP, "asgi"), ("granian",),
        notes="1 runtime thread, uvloop",
    ),
    Server("h2corn", "asgi", _h2corn, ("h2corn",), notes="1 runtime thread, uvloop"),
]  # fmt: skip


# --------------------------------------------------------------------------- PostgreSQL


def as_root() -> bool:
    return os.geteuid() == 0


def postgres_bin() -> Path | None:
    """The directory of initdb, pg_ctl and postgres: Debian's newest /usr/lib/postgresql/N/bin,
    else wherever initdb is on PATH."""

    def version(path: str) -> int:
        found = re.search(r"/postgresql/(\d+)/", path)
        return int(found.group(1)) if found else 0

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def install_postgres() -> None:
    """apt-get install postgresql, as root. Its package would start the system's cluster unless
    a policy-rc.d forbids it, as containers' usually does; where none is there, one is for the
    install (as tests/run-all.sh does for nginx)."""
    print("== installing PostgreSQL (apt-get install postgresql)", flush=True)
    policy = Path("/usr/sbin/policy-rc.d")
    made = not policy.exists()
    if made:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "postgresql"],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
    finally:
        if made:
            policy.unlink(missing_ok=True)


class Postgres:
    """A throwaway cluster in `root`, on a Unix socket only, owned by PG_OWNER under root."""

    def __init__(self, root: Path):
        self.bin = postgres_bin()
        if self.bin is None:
            if not (as_root() and shutil.which("apt-get")):
                raise SystemExit(
                    "PostgreSQL's initdb not found: apt-get install postgresql (as root), "
                    "or run this script as root to have it installed"
                )
            install_postgres()
            self.bin = postgres_bin()
            if self.bin is None:
                raise SystemExit("initdb still not found after apt-get install postgresql")
        self.root = root
        self.data = root / "data"
        self.socket_dir = root / "socket"
        self.log = root / "postgres.log"
        self.started = False
        root.mkdir()
        self.socket_dir.mkdir()
        if as_root():
            owner = pwd.getpwnam(PG_OWNER)
            for path in (root, self.socket_dir):
                os.chown(path, owner.pw_uid, owner.pw_gid)

    def _run(self, command: list[str]) -> None:
        if as_root():
            command = ["runuser", "-u", PG_OWNER, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, cwd=self.root)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")

    def version(self) -> str:
        out = subprocess.run([self.bin / "postgres", "--version"], capture_output=True, text=True)
        return out.stdout.strip()

    def start(self) -> None:
        self._run([
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "bench", "--auth=trust",
            "-E", "UTF8", "--locale=C", "--no-sync",
        ])  # fmt: skip
        # No TCP at all; the socket in the cluster's own directory. Durability is not measured
        # (the table is only read), autovacuum would only add noise.
        options = " ".join([
            "-c listen_addresses=''",
            f"-c unix_socket_directories='{self.socket_dir}'",
            "-c max_connections=200",
            "-c shared_buffers=128MB",
            "-c fsync=off",
            "-c synchronous_commit=off",
            "-c full_page_writes=off",
            "-c autovacuum=off",
        ])  # fmt: skip
        self._run([
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
            "-o", options, "start",
        ])  # fmt: skip
        self.started = True
        self._run([str(self.bin / "createdb"), "-h", str(self.socket_dir), "-U", "bench", "bench"])

    def postmaster(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def pin(self, cpus: set[int]) -> None:
        """Every process of the cluster on `cpus`; the backends forked later inherit it."""
        pid = self.postmaster()
        for process in [pid, *descendants(pid)]:
            try:
                os.sched_setaffinity(process, cpus)
            except OSError:
                pass

    def connections(self) -> int:
        """Connections to the benchmark's database open now."""
        import psycopg

        query = "SELECT count(*) FROM pg_stat_activity WHERE datname = 'bench'"
        with psycopg.connect(host=str(self.socket_dir), dbname="postgres", user="bench") as conn:
            return conn.execute(query).fetchone()[0]

    def stop(self) -> None:
        if self.started:
            self.started = False
            self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])


# --------------------------------------------------------------------------- oha


def oha_path() -> str | None:
    return program("oha") or shutil.which("oha", path=str(Path.home() / ".cargo" / "bin"))


def ensure_oha() -> str:
    found = oha_path()
    if found:
        return found
    if not shutil.which("cargo"):
        raise SystemExit("oha not found and no cargo to build it: cargo install oha --locked")
    print("== oha not found: cargo install oha --locked (a few minutes)", flush=True)
    subprocess.run(["cargo", "install", "oha", "--locked"], check=True)
    found = oha_path()
    if not found:
        raise SystemExit("oha still not found after cargo install oha (is ~/.cargo/bin there?)")
    return found


def run_oha(
    oha: str,
    url: str,
    duration: float,
    cpus: str | None,
    rate: float | None = None,
    midway: Callable[[], object] | None = None,
) -> tuple[dict, float, object]:
    """oha's JSON summary of one run (saturation, or `rate` requests/s offered: open loop,
    latency counted from each request's due time), the CPU seconds oha used, and what
    `midway()` returned when called halfway through the run (None without it)."""
    command = [
        oha, "--no-tui", "--output-format", "json", "-z", f"{duration}s",
        "-c", str(CONNECTIONS),
    ]  # fmt: skip
    if rate is not None:
        command += ["-q", str(rate), "--latency-correction"]
    # oha is the only child waited for while it runs (the server is waited for when it stops),
    # so the children's usage grows by oha's alone.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with subprocess.Popen(
        pinned(cpus, [*command, url]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        seen = None
        if midway is not None:
            time.sleep(duration / 2)
            seen = midway()
        try:
            out, err = proc.communicate(timeout=duration + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"oha failed ({proc.returncode}): {err.strip()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads(out), cpu, seen


ABORTED = "aborted due to deadline"
# The table's name for the in-process baseline (benches/realistic/baseline.py).
NO_SERVER = "no server"


def summarize(report: dict, seconds: float) -> dict:
    """Requests/s (answered 200), latency percentiles and errors from oha's JSON."""
    summary = report["summary"]
    seconds = summary.get("total") or seconds
    percentiles = report.get("latencyPercentiles") or {}
    codes = {str(k): v for k, v in (report.get("statusCodeDistribution") or {}).items()}
    ok = codes.get("200", 0)

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 3)

    return {
        "requests": ok,
        "requests_per_sec": round(ok / seconds, 1),
        "oha_requests_per_sec": summary.get("requestsPerSec"),
        "success_rate": summary.get("successRate"),
        "p50_ms": ms(percentiles.get("p50")),
        "p99_ms": ms(percentiles.get("p99")),
        "max_ms": ms(summary.get("slowest")),
        "status_codes": codes,
        # oha ends a timed run by aborting the requests in flight (one per connection at
        # saturation): not the server's errors.
        "aborted_at_deadline": (report.get("errorDistribution") or {}).get(ABORTED, 0),
        "errors": {
            name: count
            for name, count in (report.get("errorDistribution") or {}).items()
            if name != ABORTED
        },
    }


# --------------------------------------------------------------------------- running


def check_page(port: int, path: str) -> int:
    """Raises unless the page answers 200 with the 20 rows; returns its size in bytes."""
    with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=10) as response:
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path} -> {response.status}")
    rows = body.count(b'<tr class="item ')
    if rows != ROWS_PER_PAGE:
        raise RuntimeError(f"GET {path}: {rows} rows in the page, {ROWS_PER_PAGE} expected")
    return len(body)


class Running(RunningServer):
    """One server process (its own session), pinned; its output goes to a log file. Started
    from this script's `Server`; stopped (and its log read) as run.py's servers are."""

    def __init__(self, server: Server, workers: int, cpus: str | None, work: Path, env: dict):
        self.port = free_port()
        self.log_path = work / f"{server.group}-{server.name}-{workers}w.log"
        self._log = open(self.log_path, "ab")
        self.command = pinned(cpus, server.argv(self.port, workers))
        self.proc = subprocess.Popen(
            self.command,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@dataclass
class Layout:
    """Which CPUs the server, and oha with PostgreSQL, run on (None: not pinned)."""

    server: str | None
    others: str | None
    note: str


def layout(workers: int) -> Layout:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= workers + 1:
        server = ",".join(map(str, cpus[:workers]))
        other = str(cpus[workers])
        return Layout(server, other, f"server on CPU {server}, oha and PostgreSQL on CPU {other}")
    return Layout(None, None, f"{len(cpus)} CPUs for {workers} workers: nothing pinned")


def server_env(group: str, postgres: Postgres) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["DJANGO_SETTINGS_MODULE"] = SETTINGS
    env["REALISTIC_DB_SOCKET_DIR"] = str(postgres.socket_dir)
    env["REALISTIC_DB_MODE"] = DB_MODE[group]
    env["REALISTIC_DB_CONNECTIONS"] = str(THREADS)
    env.pop("WEB_CONCURRENCY", None)  # the command line decides
    return env


def measure(
    args, oha: str, server: Server, workers: int, place: Layout, postgres: Postgres,
    work: Path, rate: float | None,
) -> dict:  # fmt: skip
    """Starts `server`, checks the page, warms up, runs the measured load, stops it."""
    postgres.pin(
        set(map(int, place.others.split(","))) if place.others else os.sched_getaffinity(0)
    )
    running = Running(server, workers, place.server, work, server_env(server.group, postgres))
    path = PATHS[server.group]
    url = f"http://{HOST}:{running.port}{path}"
    try:
        wait_for_port(running.port, running.proc, timeout=60)
        size = check_page(running.port, path)
        run_oha(oha, url, args.warmup, place.others, rate)
        postmaster = postgres.postmaster()
        cpu_before, cores_before = tree_cpu_seconds(running.proc.pid), core_seconds()
        db_before = tree_cpu_seconds(postmaster)
        started = time.monotonic()
        report, oha_cpu, connections = run_oha(
            oha, url, args.duration, place.others, rate, midway=postgres.connections
        )
        elapsed = time.monotonic() - started
        cpu = tree_cpu_seconds(running.proc.pid) - cpu_before
        db_cpu = tree_cpu_seconds(postmaster) - db_before
        cores_after = core_seconds()
        busy = sum(cores_after.values()) - sum(cores_before.values())
        result = summarize(report, args.duration)
        result |= {
            # CPU seconds per second: the server's processes, oha, PostgreSQL, and everything
            # else on the machine (other people's work: the noise).
            "server_cpu": round(cpu / elapsed, 2),
            # The server's CPU time per request served: less at the mercy of other processes
            # taking the server's CPU than requests/s is.
            "cpu_ms_per_request": (
                round(cpu * 1000 / result["requests"], 3) if result["requests"] else None
            ),
            "oha_cpu": round(oha_cpu / elapsed, 2),
            "postgres_cpu": round(db_cpu / elapsed, 2),
            "other_cpu": round(max(0.0, busy - cpu - oha_cpu - db_cpu) / elapsed, 2),
            "cores_busy": {
                core: round((cores_after[core] - cores_before.get(core, 0)) / elapsed, 2)
                for core in cores_after
            },
            # Counted halfway through the measured run.
            "db_connections": connections,
            "page_bytes": size,
            "command": running.command,
        }
        if running.proc.poll() is not None:
            raise RuntimeError(f"exited with code {running.proc.returncode} during the run")
        return result
    except Exception as error:
        raise RuntimeError(f"{error}\n--- server log ---\n{running.log_tail()}") from error
    finally:
        running.stop()


def baseline(args, group: str, place: Layout, postgres: Postgres) -> dict:
    """The page's CPU cost without a server (benches/realistic/baseline.py: the Django app
    called in-process, one request after another), on the server's CPU."""
    postgres.pin(
        set(map(int, place.others.split(","))) if place.others else os.sched_getaffinity(0)
    )
    command = pinned(
        place.server.split(",")[0] if place.server else None,
        [sys.executable, "-m", "benches.realistic.baseline", group, str(args.duration)],
    )
    result = subprocess.run(
        command, cwd=REPO, env=server_env(group, postgres), capture_output=True, text=True,
        timeout=args.duration + 120, check=True,
    )  # fmt: skip
    found = json.loads(result.stdout.strip().splitlines()[-1])
    return {
        "requests": found["requests"],
        "cpu_ms_per_request": round(found["cpu_seconds"] * 1000 / found["requests"], 3),
        "requests_per_cpu_second": round(found["requests"] / found["cpu_seconds"], 1),
        "command": command,
    }


def versions() -> dict:
    found = {}
    for name in ("rsasgi", "Django", "psycopg", "psycopg-pool", "granian", "gunicorn", "uWSGI",
                 "uvicorn", "h2corn", "uvloop", "asgiref"):  # fmt: skip
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


LEGEND = f"""
sat: saturation ({CONNECTIONS} connections); ±: with --rounds, half the range of the rounds'
req/s over their median (every figure is the median round's: by req/s at saturation, by p99
at the fixed rate); cpu: the server's CPU seconds per second; ms/req: its CPU milliseconds per
request served (all its processes and threads); other: CPU seconds per second used meanwhile
by processes other than the server, oha and PostgreSQL (the noise); rsasgi ÷: rsasgi's
saturation req/s over the server's; rate: the offered rate; got: the rate served at it; p50
and p99 at the fixed rate count from when each request was due.
{NO_SERVER}: the Django app called in-process one request at a time, no HTTP: requests per CPU
second and CPU ms per request, the floor under every server's.
"""


def spread(run: dict, key: str) -> str:
    """How far the rounds' `key` lay apart: half their range over the median, in percent
    ("" for one round)."""
    values = run.get(f"rounds_{key}")
    if not values or not run.get(key):
        return ""
    return f"{(max(values) - min(values)) / 2 / run[key]:.0%}"


def print_table(results: list[dict]) -> None:
    header = (
        f"{'group':<5} {'w':>1} {'server':<9} {'sat req/s':>10} {'±':>4} {'sat p99':>9} {'cpu':>5} "
        f"{'ms/req':>6} {'other':>5} "
        f"{'rsasgi ÷':>8} | {'rate':>6} {'got':>7} {'p50':>8} {'p99':>9} {'errors':>6}"
    )
    print(header)
    print("-" * len(header))
    for row in results:
        if "baseline" in row:
            floor = row["baseline"]
            print(
                f"{row['group']:<5} {row['workers']:>1} {row['server']:<9} "
                f"{fmt(floor['requests_per_cpu_second'], 0):>10} "
                f"{spread(floor, 'requests_per_cpu_second'):>4} "
                f"{'':>9} {'':>5} "
                f"{fmt(floor['cpu_ms_per_request'], 2):>6}   (in-process, per CPU second)"
            )
            continue
        sat, fixed = row.get("saturation") or {}, row.get("fixed") or {}
        if "error" in row:
            print(f"{row['group']:<5} {row['workers']:>1} {row['server']:<9} failed: "
                  f"{row['error'].splitlines()[0][:70]}")  # fmt: skip
            continue
        errors = sum((sat.get("errors") or {}).values()) + sum((fixed.get("errors") or {}).values())
        errors += sum(v for k, v in (sat.get("status_codes") or {}).items() if k != "200")
        errors += sum(v for k, v in (fixed.get("status_codes") or {}).items() if k != "200")
        ratio = row.get("rsasgi_ratio")
        print(
            f"{row['group']:<5} {row['workers']:>1} {row['server']:<9} "
            f"{fmt(sat.get('requests_per_sec'), 0):>10} {spread(sat, 'requests_per_sec'):>4} "
            f"{fmt(sat.get('p99_ms'), 2):>7}ms "
            f"{fmt(sat.get('server_cpu'), 2):>5} {fmt(sat.get('cpu_ms_per_request'), 2):>6} "
            f"{fmt(sat.get('other_cpu'), 2):>5} "
            f"{fmt(ratio, 2):>8} | "
            f"{fmt(row.get('rate'), 0):>6} {fmt(fixed.get('requests_per_sec'), 0):>7} "
            f"{fmt(fixed.get('p50_ms'), 2):>6}ms {fmt(fixed.get('p99_ms'), 2):>7}ms {errors:>6}"
        )


def median_run(runs: list[dict], key: str) -> dict:
    """The run with the median `key` (the lower middle one for an even count), with every
    round's value of it (and of requests/s, where there is one) beside it; one run as it is."""
    if len(runs) == 1:
        return runs[0]
    ordered = sorted(runs, key=lambda run: run[key])
    median = dict(ordered[(len(ordered) - 1) // 2])
    median["rounds"] = len(runs)
    median[f"rounds_{key}"] = [run[key] for run in runs]
    if all("requests_per_sec" in run for run in runs):
        median["rounds_requests_per_sec"] = [run["requests_per_sec"] for run in runs]
    return median


def rotated(items: list, shift: int) -> list:
    """`items` starting at `shift` (modulo its length): round r runs the servers in this
    order, so that no server always runs first or right after the same one."""
    shift %= len(items)
    return items[shift:] + items[:shift]


def run_case(
    args, oha: str, group: str, workers: int, chosen: list[Server], place: Layout,
    postgres: Postgres, work: Path, results: list[dict],
) -> None:  # fmt: skip
    """One group and worker count: the in-process floor, every server's saturation run and
    then its run at the fixed rate, each `args.rounds` times, taking turns. The table's rows
    (the median round of each) go into `results` at once and fill in as the runs end, so an
    interrupted run still prints what it measured."""
    print(f"\n== {group}, {workers} worker(s): {place.note}", flush=True)
    rounds = args.rounds
    floor_row = {"group": group, "workers": workers, "server": NO_SERVER}
    if workers == 1 and not args.no_baseline:
        results.append(floor_row)
    rows: dict[str, dict] = {}
    for server in chosen:
        rows[server.name] = {"group": group, "workers": workers, "server": server.name,
                             "notes": server.notes}  # fmt: skip
        results.append(rows[server.name])
    floors: list[dict] = []
    # Each server's runs so far, by kind ("saturation", "fixed").
    runs: dict[str, dict[str, list[dict]]] = {"saturation": {}, "fixed": {}}

    def of(number: int) -> str:
        return f" (round {number + 1} of {rounds})" if rounds > 1 else ""

    def take_turn(server, number, rate, kind, median_of, describe) -> None:
        """One measured run of `server` (at `rate`, or saturation): kept among its runs of
        this `kind`, the row showing their median by `median_of`; a failure ends its turns."""
        row = rows[server.name]
        if "error" in row:
            return
        try:
            run = measure(args, oha, server, workers, place, postgres, work, rate)
            runs[kind].setdefault(server.name, []).append(run)
            row[kind] = median_run(runs[kind][server.name], median_of)
            print(f"  {server.name:<9} {describe(run)}{of(number)}", flush=True)
        except Exception as error:  # noqa: BLE001 (reported, the run goes on)
            row["error"] = str(error)
            print(f"  {server.name:<9} FAILED: {error}", flush=True)

    def saturated(run: dict) -> str:
        return (f"saturation {run['requests_per_sec']:>8,.0f} req/s  p99 {run['p99_ms']:.2f} ms"
                f"  server cpu {run['server_cpu']:.2f} postgres {run['postgres_cpu']:.2f} oha "
                f"{run['oha_cpu']:.2f} other {run['other_cpu']:.2f}  db connections "
                f"{run['db_connections']}")  # fmt: skip

    def at_rate(run: dict) -> str:
        return (f"at {rate:,.0f} req/s: got {run['requests_per_sec']:,.0f}  p50 "
                f"{run['p50_ms']:.2f} ms  p99 {run['p99_ms']:.2f} ms  server cpu "
                f"{run['server_cpu']:.2f} other {run['other_cpu']:.2f}")  # fmt: skip

    for number in range(rounds):
        if workers == 1 and not args.no_baseline:
            try:
                floor = baseline(args, group, place, postgres)
                floors.append(floor)
                floor_row["baseline"] = median_run(floors, "requests_per_cpu_second")
                print(f"  {NO_SERVER:<9} {floor['cpu_ms_per_request']:.2f} CPU ms per request, "
                      f"the Django app called in-process (no server, no HTTP): "
                      f"{floor['requests_per_cpu_second']:,.0f} requests per CPU second"
                      f"{of(number)}", flush=True)  # fmt: skip
            except (subprocess.SubprocessError, ValueError, KeyError) as error:
                print(f"  {NO_SERVER} baseline failed: {error}", flush=True)
        for server in rotated(chosen, number):
            take_turn(server, number, None, "saturation", "requests_per_sec", saturated)
    done = [row for row in rows.values() if "error" not in row]
    if not done:
        return
    slowest = min(row["saturation"]["requests_per_sec"] for row in done)
    rate = args.rate or max(1, round(slowest * RATE_SHARE, -1))
    base = rows.get("rsasgi", {}).get("saturation", {}).get("requests_per_sec")
    for row in done:
        row["rate"] = rate
        if base:
            row["rsasgi_ratio"] = round(base / row["saturation"]["requests_per_sec"], 3)
    print(f"  fixed rate: {rate:,.0f} req/s for every server", flush=True)
    servers = [server for server in chosen if "error" not in rows[server.name]]
    for number in range(rounds):
        for server in rotated(servers, number):
            take_turn(server, number, rate, "fixed", "p99_ms", at_rate)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", choices=GROUPS, nargs="+", default=list(GROUPS))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--servers", nargs="+", help="only these (names as in the table)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per run")
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the in-process run (no server)"
    )
    parser.add_argument(
        "--rate", type=float, help="the fixed offered rate (default: 70%% of the slowest)"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, metavar="N",
        help="measure every server N times, taking turns in an order that rotates each round, "
        "and report each one's median run (1); the host's slow phases last minutes, so one "
        "round can rank the servers by when each ran",
    )  # fmt: skip
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    servers = [
        s for s in SERVERS if s.group in args.group and (not args.servers or s.name in args.servers)
    ]
    for server in list(servers):
        missing = server.missing()
        if missing:
            print(f"skipping {server.group} {server.name}: missing {', '.join(missing)}")
            servers.remove(server)
    if importlib.util.find_spec("psycopg") is None or importlib.util.find_spec("django") is None:
        raise SystemExit("Django and psycopg missing: pip install -r benches/requirements.txt")
    oha = ensure_oha()

    # SIGTERM (and SIGHUP) end the run like Ctrl-C: the finally blocks stop every process.
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)

    work = Path(tempfile.mkdtemp(prefix="rsasgi-realistic-"))
    work.chmod(0o755)  # the cluster's owner must reach its directory in it
    postgres = Postgres(work / "pg")
    results: list[dict] = []
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    try:
        postgres.start()
        print(f"{postgres.version()}: cluster on {postgres.socket_dir}", flush=True)
        env = server_env("wsgi", postgres)
        subprocess.run(
            [sys.executable, "-m", "benches.realistic.seed", str(ROWS_IN_TABLE)],
            cwd=REPO, env=env, check=True,
        )  # fmt: skip
        for group in args.group:
            for workers in args.workers:
                place = layout(workers)
                chosen = [s for s in servers if s.group == group]
                run_case(args, oha, group, workers, chosen, place, postgres, work, results)
    except KeyboardInterrupt:
        print("interrupted: stopping", flush=True)
    finally:
        try:
            postgres.stop()
        finally:
            shutil.rmtree(work, ignore_errors=True)

    load = os.getloadavg()
    print(f"\nload average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(LEGEND)
    print_table(results)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                "postgres": postgres.version(),
                "versions": versions(),
                "connections": CONNECTIONS,
                "duration": args.duration,
                "warmup": args.warmup,
                "results": results,
            },
            indent=2,
        )
    )
    print(f"\nresults: {RESULTS.relative_to(REPO)}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
