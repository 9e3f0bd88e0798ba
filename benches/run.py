"""Benchmark rsasgi against its peers with wrk and h2load, side by side: ASGI, WSGI, static
files, and TLS and HTTP/2.

By default each server runs one worker pinned to one CPU core; the load generator (wrk, or
h2load for HTTP/2) runs pinned to another. Every server in the ASGI and WSGI groups serves the
same plain app (benches/apps.py: `hello` for ASGI, `wsgi_hello` for WSGI) on three scenarios;
the static group has every server send the same two files (10 KiB and 1 MiB of random bytes,
written to a temporary directory) from its own static file serving: rsasgi's --static-map,
granian's --static-path-mount, and nginx, the limit. The tls group serves the ASGI hello world
over cleartext HTTP/2 (h2load, prior knowledge), HTTP/2 over TLS (h2load, ALPN h2) and
HTTP/1.1 over TLS (wrk), with a certificate made for the run by trustme. The script prints
requests/s and p99 latency per server, then rsasgi's requests/s divided by each peer's, one
table per group (and MiB/s for the files).

    ASGI:   rsasgi, uvicorn, granian, hypercorn, h2corn, gunicorn-uvicorn
    WSGI:   rsasgi, granian, gunicorn (gthread), uwsgi, waitress
    static: rsasgi, granian, nginx
    tls:    rsasgi, granian, h2corn, hypercorn, uvicorn (HTTP/1.1 over TLS only)

    pip install -r benches/requirements.txt     # the peers, trustme; this script installs nothing
    apt-get install wrk nginx-light              # nginx only for the static group
    apt-get install nghttp2-client curl          # h2load and curl, for the tls group
    python benches/run.py                        # from the repository root; every group
    python benches/run.py --group static --duration 5
    python benches/run.py --group tls --duration 5
    python benches/run.py --group wsgi --duration 5 --servers rsasgi granian --scenarios hello
    python benches/run.py --workers 2            # every server with 2 worker processes
    python benches/run.py --memory-only          # idle resident memory only, no wrk
    python benches/run.py --group asgi --servers rsasgi --scenarios hello --rsasgi-access-log \
        --rsasgi-arg=--access-log-format=combined   # what rsasgi's access log costs

`--workers N` starts every server with N worker processes (rsasgi and h2corn: their
supervisor; uvicorn, granian, hypercorn: --workers; gunicorn: its arbiter; uWSGI: --processes;
nginx: worker_processes; waitress has none and is skipped when N > 1). With N > 1 the server
gets N cores and wrk the next one when the machine has N + 1 cores; with fewer (2 workers on
2 cores) nothing is pinned and wrk shares the cores with the workers, so the numbers measure
the server and the load generator together.

`--memory` adds a memory report: once a server answers and has served a few requests, the
resident memory (RSS and PSS from /proc/PID/smaps_rollup) of its main process (rsasgi's
supervisor, gunicorn's arbiter, uWSGI's master, ...) and of each child process separately,
idle, before the load, and again after the runs. `--memory-only` reports memory without wrk.
The tls group has no memory report (its servers are the ASGI group's).

Results also go to benches/results/latest.json.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ASGI_APP = "benches.apps:hello"
WSGI_APP = "benches.apps:wsgi_hello"
RESULTS = REPO / "benches" / "results" / "latest.json"
HOST = "127.0.0.1"

GROUPS = ("asgi", "wsgi", "static", "tls")

# The bars set for rsasgi (issues 2, 3, 10 and 12): its req/s over each peer's on one scenario
# of the group, BAR_SCENARIO. BEST_PEER stands for whichever peer served the most on it. The
# static group has none: nginx is the limit it is measured against (issue 9).
BEST_PEER = "best peer"
BAR = {
    "asgi": {"granian": 1.0, "uvicorn": 1.3, "h2corn": 1.2},
    "wsgi": {"granian": 1.5},
    "static": {},
    "tls": {BEST_PEER: 1.2},
}
BAR_SCENARIO = {"asgi": "hello", "wsgi": "hello", "static": None, "tls": "h2c-hello"}

# Pool size of the WSGI peers: rsasgi's default --threads, so every server gets the same pool.
WSGI_THREADS = 8

ECHO_BODY_SIZE = 10 * 1024
MIB = 1024 * 1024

# h2load's load for the HTTP/2 scenarios: connections, and streams in flight on each.
H2_CLIENTS = 16
H2_STREAMS = 10

# The URL prefix the static group's servers serve the files under, and the Cache-Control
# max-age all three send (rsasgi's default is 60 s, granian's 86400 s, nginx sends none).
STATIC_PREFIX = "/static"
STATIC_MAX_AGE = 3600


def static_dir(work: Path) -> Path:
    """Where the files of the static scenarios are written, in the run's temporary directory."""
    return work / "static"


def tls_dir(work: Path) -> Path:
    """Where the tls group's CA, certificate and key are written, in the run's temporary
    directory."""
    return work / "tls"


def write_tls_files(work: Path) -> None:
    """A CA and a certificate for 127.0.0.1 signed by it (trustme), and the certificate's key.

    The key is written as PKCS#8 (`BEGIN PRIVATE KEY`): granian reads no other form, and the
    other servers read it too. trustme's default key type, ECDSA P-256, serves everyone.
    """
    import trustme
    from cryptography.hazmat.primitives import serialization

    directory = tls_dir(work)
    directory.mkdir(exist_ok=True)
    ca = trustme.CA()
    leaf = ca.issue_cert(HOST, "localhost")
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    leaf.cert_chain_pems[0].write_to_path(str(directory / "cert.pem"))
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _random_bytes(size: int) -> bytes:
    """`size` incompressible bytes, the same in every run (seeded)."""
    return random.Random(size).randbytes(size)


@dataclass
class Scenario:
    """One workload: a path, an optional wrk Lua script, and a check of the app's answer.

    `groups` are the groups that run it. A scenario with a `file` is a static file: run.py
    writes `expected_body` to that name in the static directory, and the servers serve it
    under STATIC_PREFIX. `tls` scenarios go to the server started with the run's certificate;
    `http2` ones are loaded by h2load instead of wrk (cleartext: prior knowledge, h2c; over
    TLS: ALPN h2).
    """

    name: str
    description: str
    path: str
    lua: str | None = None
    method: str = "GET"
    request_body: bytes | None = None
    expected_body: bytes = b""
    groups: tuple[str, ...] = ("asgi", "wsgi")
    file: str | None = None
    tls: bool = False
    http2: bool = False

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def protocol(self) -> str:
        """The protocol the client must end up speaking, in ALPN's words (h2load's too)."""
        if self.http2:
            return "h2" if self.tls else "h2c"
        return "http/1.1"

    @property
    def client(self) -> str:
        return "h2load" if self.http2 else "wrk"


def _static_file(name: str, description: str, file: str, size: int) -> Scenario:
    # .bin: every server answers application/octet-stream for it without a MIME table, so the
    # headers are alike and none of them could think of compressing it (nor do they, here).
    return Scenario(
        name,
        description,
        f"{STATIC_PREFIX}/{file}",
        expected_body=_random_bytes(size),
        groups=("static",),
        file=file,
    )


SCENARIOS = {
    scenario.name: scenario
    for scenario in [
        Scenario("hello", "GET hello world (13 B)", "/", expected_body=b"Hello, world!"),
        Scenario("10k", "GET 10 KiB response", "/10k", expected_body=b"x" * 10 * 1024),
        Scenario(
            "echo",
            "POST 10 KiB, echoed back",
            "/echo",
            lua=(
                'wrk.method = "POST"\n'
                f'wrk.body = string.rep("e", {ECHO_BODY_SIZE})\n'
                'wrk.headers["Content-Type"] = "application/octet-stream"\n'
            ),
            method="POST",
            request_body=b"e" * ECHO_BODY_SIZE,
            expected_body=b"e" * ECHO_BODY_SIZE,
        ),
        _static_file("static-10k", "GET a 10 KiB static file", "10k.bin", 10 * 1024),
        _static_file("static-1m", "GET a 1 MiB static file", "1m.bin", 1024 * 1024),
        Scenario(
            "h2c-hello",
            "GET hello world over cleartext HTTP/2 (prior knowledge), h2load",
            "/",
            expected_body=b"Hello, world!",
            groups=("tls",),
            http2=True,
        ),
        Scenario(
            "h2-tls-hello",
            "GET hello world over HTTP/2 over TLS (ALPN h2), h2load",
            "/",
            expected_body=b"Hello, world!",
            groups=("tls",),
            tls=True,
            http2=True,
        ),
        Scenario(
            "https1-hello",
            "GET hello world over HTTP/1.1 over TLS, wrk",
            "/",
            expected_body=b"Hello, world!",
            groups=("tls",),
            tls=True,
        ),
    ]
}

# Width of the scenario column in what the script prints.
NAME_WIDTH = max(map(len, SCENARIOS))


@dataclass
class ServerSpec:
    """How to start one server on a port with a number of worker processes.

    `argv(port, workers, work)` is its command line; `work` is the run's temporary directory
    (the static files are in it, nginx writes its configuration there). `requires` are the
    modules it needs importable, `programs` the executables it needs (see `program`);
    `install` says how to get them. `multiprocess` is False for a server that has no
    worker processes (it runs only with --workers 1). `tls_options` name the server's options
    for a certificate file and its key: the server of the `tls` scenarios gets them, with the
    run's files, after the rest of its command line. `lacks` are the scenarios it cannot serve,
    with the reason printed in their place.
    """

    name: str
    group: str
    requires: tuple[str, ...]
    argv: Callable[[int, int, Path], list[str]] = field(repr=False)
    notes: str = ""
    programs: tuple[str, ...] = ()
    install: str = "pip install -r benches/requirements.txt"
    multiprocess: bool = True
    tls_options: tuple[str, str] | None = None
    lacks: dict[str, str] = field(default_factory=dict)

    def missing(self) -> list[str]:
        modules = [m for m in self.requires if importlib.util.find_spec(m) is None]
        programs = [p for p in self.programs if program(p) is None]
        return modules + programs

    def command(self, port: int, workers: int, work: Path, tls: bool) -> list[str]:
        """The command line, serving TLS with the run's certificate when `tls` is true."""
        argv = self.argv(port, workers, work)
        if not tls:
            return argv
        if self.tls_options is None:
            raise RuntimeError(f"{self.name} has no TLS options in run.py")
        cert, key = self.tls_options
        files = tls_dir(work)
        return [*argv, cert, str(files / "cert.pem"), key, str(files / "key.pem")]


# nginx lives in /usr/sbin, which an unprivileged user's PATH may lack.
SBIN = os.pathsep.join(["/usr/local/sbin", "/usr/sbin", "/sbin"])


def program(name: str) -> str | None:
    """The executable `name` from the interpreter's bin directory (a venv), else from PATH,
    else from the sbin directories."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name) or shutil.which(name, path=SBIN)


def _has_uvloop() -> bool:
    return importlib.util.find_spec("uvloop") is not None


# rsasgi's logging options: no access log, like every peer here, unless --rsasgi-access-log asks
# for one (its lines go with the rest of the server's log, to a file in the work directory);
# then the --rsasgi-arg options.
RSASGI_LOGGING = {"access_log": False, "extra": []}


def _rsasgi_logging(work: Path) -> list[str]:
    access = [] if RSASGI_LOGGING["access_log"] else ["--no-access-log"]
    return [*access, *RSASGI_LOGGING["extra"]]


# ---- ASGI


def _rsasgi_argv(port: int, workers: int, work: Path) -> list[str]:
    # One worker: a single process, no supervisor (rsasgi's default). More: the supervisor.
    supervisor = ["--workers", str(workers)] if workers > 1 else []
    return [
        sys.executable, "-m", "rsasgi", ASGI_APP,
        "--host", HOST, "--port", str(port), *supervisor,
        *_rsasgi_logging(work),
    ]  # fmt: skip


def _uvicorn_argv(port: int, workers: int, work: Path) -> list[str]:
    processes = ["--workers", str(workers)] if workers > 1 else []
    return [
        sys.executable, "-m", "uvicorn", ASGI_APP,
        "--host", HOST, "--port", str(port), *processes,
        "--loop", "uvloop", "--http", "httptools",
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip


def _granian_argv(port: int, workers: int, work: Path) -> list[str]:
    loop = ["--loop", "uvloop"] if _has_uvloop() else []
    return [
        sys.executable, "-m", "granian", "--interface", "asgi",
        "--host", HOST, "--port", str(port),
        "--workers", str(workers), "--runtime-threads", "1", "--no-ws", *loop,
        "--no-access-log", "--log-level", "warning",
        ASGI_APP,
    ]  # fmt: skip


def _hypercorn_argv(port: int, workers: int, work: Path) -> list[str]:
    worker_class = ["--worker-class", "uvloop"] if _has_uvloop() else []
    return [
        sys.executable, "-m", "hypercorn", ASGI_APP,
        "--bind", f"{HOST}:{port}", "--workers", str(workers), *worker_class,
        "--log-level", "warning",
    ]  # fmt: skip


def _h2corn_argv(port: int, workers: int, work: Path) -> list[str]:
    # One Tokio runtime thread per worker, as granian gets (h2corn's default is 2); no access
    # log, like the others. h2corn has no log-level option.
    loop = ["--loop", "uvloop"] if _has_uvloop() else []
    return [
        sys.executable, "-m", "h2corn", ASGI_APP,
        "--host", HOST, "--port", str(port),
        "--workers", str(workers), "--runtime-threads", "1", *loop,
        "--no-access-log",
    ]  # fmt: skip


def _gunicorn_uvicorn_argv(port: int, workers: int, work: Path) -> list[str]:
    # uvicorn-worker's UvicornWorker picks uvloop and httptools when installed (loop/http auto).
    # No access log: without --access-logfile gunicorn gives uvicorn's access logger no handler,
    # and uvicorn skips access logging when that logger has none.
    return [
        sys.executable, "-m", "gunicorn", ASGI_APP,
        "--bind", f"{HOST}:{port}", "--workers", str(workers),
        "--worker-class", "uvicorn_worker.UvicornWorker",
        "--log-level", "warning",
    ]  # fmt: skip


# ---- WSGI


def _rsasgi_wsgi_argv(port: int, workers: int, work: Path) -> list[str]:
    supervisor = ["--workers", str(workers)] if workers > 1 else []
    return [
        sys.executable, "-m", "rsasgi", WSGI_APP, "--interface", "wsgi",
        "--host", HOST, "--port", str(port), *supervisor,
        *_rsasgi_logging(work),
    ]  # fmt: skip


def _granian_wsgi_argv(port: int, workers: int, work: Path) -> list[str]:
    return [
        sys.executable, "-m", "granian", "--interface", "wsgi",
        "--host", HOST, "--port", str(port),
        "--workers", str(workers), "--runtime-threads", "1",
        "--blocking-threads", str(WSGI_THREADS),
        "--no-ws", "--no-access-log", "--log-level", "warning",
        WSGI_APP,
    ]  # fmt: skip


def _gunicorn_argv(port: int, workers: int, work: Path) -> list[str]:
    return [
        sys.executable, "-m", "gunicorn", WSGI_APP,
        "--bind", f"{HOST}:{port}", "--workers", str(workers),
        "--worker-class", "gthread", "--threads", str(WSGI_THREADS),
        "--log-level", "warning",
    ]  # fmt: skip


def _uwsgi_argv(port: int, workers: int, work: Path) -> list[str]:
    # --http: uWSGI's HTTP router (a second process, pinned to the same core) in front of the
    # worker, which is how uWSGI serves HTTP clients directly. --http-keepalive lets wrk reuse
    # its connections; with the default page-size router buffer a 10 KiB response stalls ~40 ms
    # on a keep-alive connection (Nagle + delayed ACK: ~1,400 req/s), hence the 64 KiB buffer.
    # Not --http11-socket: there each of the 8 threads holds one keep-alive connection and the
    # other 56 of wrk's 64 connections wait unserved for the whole run.
    return [
        program("uwsgi") or "uwsgi",
        "--http", f"{HOST}:{port}", "--http-keepalive", "--http-buffer-size", "65536",
        "--module", WSGI_APP, "--pythonpath", str(REPO),
        "--master", "--processes", str(workers), "--threads", str(WSGI_THREADS),
        "--disable-logging", "--die-on-term", "--need-app",
    ]  # fmt: skip


def _waitress_argv(port: int, workers: int, work: Path) -> list[str]:
    # One process only: waitress has no worker processes (available_servers skips it for N > 1).
    return [
        sys.executable, "-m", "waitress",
        f"--listen={HOST}:{port}", f"--threads={WSGI_THREADS}",
        WSGI_APP,
    ]  # fmt: skip


# ---- static files


def _rsasgi_static_argv(port: int, workers: int, work: Path) -> list[str]:
    # The files come from the reactor; any other path would go to the ASGI app.
    supervisor = ["--workers", str(workers)] if workers > 1 else []
    return [
        sys.executable, "-m", "rsasgi", ASGI_APP,
        "--host", HOST, "--port", str(port), *supervisor,
        "--static-map", f"{STATIC_PREFIX}={static_dir(work)}",
        "--static-max-age", str(STATIC_MAX_AGE),
        *_rsasgi_logging(work),
    ]  # fmt: skip


def _granian_static_argv(port: int, workers: int, work: Path) -> list[str]:
    loop = ["--loop", "uvloop"] if _has_uvloop() else []
    return [
        sys.executable, "-m", "granian", "--interface", "asgi",
        "--host", HOST, "--port", str(port),
        "--workers", str(workers), "--runtime-threads", "1", "--no-ws", *loop,
        "--static-path-route", STATIC_PREFIX, "--static-path-mount", str(static_dir(work)),
        "--static-path-expires", str(STATIC_MAX_AGE),
        "--no-access-log", "--log-level", "warning",
        ASGI_APP,
    ]  # fmt: skip


def nginx_config(port: int, workers: int, root: Path, files: Path) -> str:
    """A minimal nginx.conf serving `files` under STATIC_PREFIX, with its own files in `root`.

    A master and `workers` worker processes (taskset pins them all: the workers inherit the
    master's affinity; the master only waits). As root, nginx runs its workers as `nobody`,
    so `files` must be readable by all. open_file_cache stays off (nginx's default): rsasgi
    and granian open the file for every request too.
    """
    temp_paths = "\n".join(
        f"    {kind}_temp_path {root}/temp-{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""\
# benches/run.py, static group: nginx as the limit for serving files.
daemon off;
worker_processes {workers};
pid {root}/nginx.pid;
error_log stderr warn;

events {{
    worker_connections 1024;
}}

http {{
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    tcp_nopush on;
    open_file_cache off;
    # nginx closes a keep-alive connection after 1000 requests by default; rsasgi and granian
    # have no such limit, and wrk would pay a reconnect for every 1000 requests to nginx alone.
    keepalive_requests 1000000;
{temp_paths}

    server {{
        listen {HOST}:{port};
        location {STATIC_PREFIX}/ {{
            alias {files}/;
            expires {STATIC_MAX_AGE}s;
        }}
    }}
}}
"""


def _nginx_argv(port: int, workers: int, work: Path) -> list[str]:
    # Writes the configuration first: nginx's files go in their own directory per start.
    root = work / f"nginx-{port}"
    root.mkdir()
    conf = root / "nginx.conf"
    conf.write_text(nginx_config(port, workers, root, static_dir(work)))
    # The error log goes to stderr, into the server's log like the others'; -e from the start,
    # before the configuration is read (nginx 1.19.5+), instead of /var/log/nginx/error.log.
    return [
        program("nginx") or "nginx",
        "-p", f"{root}/", "-e", "stderr", "-c", str(conf),
    ]  # fmt: skip


SERVER_SPECS = [
    ServerSpec(
        "rsasgi", "asgi", ("rsasgi",), _rsasgi_argv,
        "loop auto: uvloop when installed; --workers N > 1: its supervisor",
        install="pip install .",
    ),
    ServerSpec(
        "uvicorn", "asgi", ("uvicorn", "uvloop", "httptools"), _uvicorn_argv,
        "uvloop + httptools",
    ),
    ServerSpec("granian", "asgi", ("granian",), _granian_argv, "asgi, 1 runtime thread, uvloop"),
    ServerSpec("hypercorn", "asgi", ("hypercorn",), _hypercorn_argv, "uvloop worker"),
    ServerSpec(
        "h2corn", "asgi", ("h2corn",), _h2corn_argv, "1 runtime thread per worker, uvloop",
        install="pip install h2corn",
    ),
    ServerSpec(
        "gunicorn-uvicorn", "asgi", ("gunicorn", "uvicorn_worker"), _gunicorn_uvicorn_argv,
        "gunicorn arbiter + uvicorn_worker.UvicornWorker (uvloop + httptools)",
        install="pip install gunicorn uvicorn-worker",
    ),
    ServerSpec(
        "rsasgi", "wsgi", ("rsasgi",), _rsasgi_wsgi_argv, "wsgi, default --threads",
        install="pip install .",
    ),
    ServerSpec(
        "granian", "wsgi", ("granian",), _granian_wsgi_argv,
        f"wsgi, 1 runtime thread, {WSGI_THREADS} blocking threads per worker",
    ),
    ServerSpec(
        "gunicorn", "wsgi", ("gunicorn",), _gunicorn_argv,
        f"gthread workers, {WSGI_THREADS} threads each",
    ),
    ServerSpec(
        "uwsgi", "wsgi", (), _uwsgi_argv,
        f"--http router + master + processes, {WSGI_THREADS} threads each",
        programs=("uwsgi",),
        install="pip install uwsgi; it compiles C: needs gcc and the Python headers, "
        "e.g. apt-get install build-essential python3-dev",
    ),
    ServerSpec(
        "waitress", "wsgi", ("waitress",), _waitress_argv, f"{WSGI_THREADS} threads",
        multiprocess=False,
    ),
    ServerSpec(
        "rsasgi", "static", ("rsasgi",), _rsasgi_static_argv,
        f"--static-map {STATIC_PREFIX}=DIR, served by the reactor",
        install="pip install .",
    ),
    ServerSpec(
        "granian", "static", ("granian",), _granian_static_argv,
        "--static-path-mount DIR, 1 runtime thread",
    ),
    ServerSpec(
        "nginx", "static", (), _nginx_argv,
        "master + worker_processes N, sendfile, no open_file_cache",
        programs=("nginx",),
        install="apt-get install nginx-light (or nginx)",
    ),
    # The tls group: the ASGI group's commands, cleartext for h2c and with a certificate for
    # the TLS scenarios. Every server serves HTTP/1.1 and HTTP/2 on one port, as each does by
    # default: by the connection preface in cleartext and by ALPN (h2, http/1.1) over TLS.
    ServerSpec(
        "rsasgi", "tls", ("rsasgi",), _rsasgi_argv,
        "--http auto: h2c by prior knowledge, ALPN h2/http/1.1 over TLS (rustls)",
        install="pip install .",
        tls_options=("--ssl-certfile", "--ssl-keyfile"),
    ),
    ServerSpec(
        "granian", "tls", ("granian",), _granian_argv,
        "--http auto: h2c by prior knowledge, ALPN h2/http/1.1 over TLS (rustls); "
        "1 runtime thread, uvloop",
        tls_options=("--ssl-certificate", "--ssl-keyfile"),
    ),
    ServerSpec(
        "h2corn", "tls", ("h2corn",), _h2corn_argv,
        "h2c by prior knowledge, ALPN h2/http/1.1 over TLS (rustls); 1 runtime thread, uvloop",
        install="pip install h2corn",
        tls_options=("--certfile", "--keyfile"),
    ),
    ServerSpec(
        "hypercorn", "tls", ("hypercorn",), _hypercorn_argv,
        "h2c by prior knowledge, ALPN h2/http/1.1 over TLS (Python's ssl); uvloop worker",
        tls_options=("--certfile", "--keyfile"),
    ),
    ServerSpec(
        "uvicorn", "tls", ("uvicorn", "uvloop", "httptools"), _uvicorn_argv,
        "HTTP/1.1 (httptools) over TLS (Python's ssl), uvloop",
        tls_options=("--ssl-certfile", "--ssl-keyfile"),
        lacks=dict.fromkeys(
            ("h2c-hello", "h2-tls-hello"),
            "uvicorn with httptools serves HTTP/1.1 only (its HTTP/2 needs the optional "
            "zttp parser, --http zttp --http2, not compared here)",
        ),
    ),
]  # fmt: skip

# {group: {name: spec}}
SERVERS = {group: {s.name: s for s in SERVER_SPECS if s.group == group} for group in GROUPS}
SERVER_NAMES = list(dict.fromkeys(spec.name for spec in SERVER_SPECS))


# --------------------------------------------------------------------------- wrk output


# wrk prints Transfer/sec in powers of 1024.
_BYTES = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def parse_duration_ms(text: str) -> float:
    """'812.00us' / '1.23ms' / '2.00s' / '1.00m' -> milliseconds."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not match:
        raise ValueError(f"unrecognised wrk duration {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> dict:
    """Requests/s, p99 latency, request count and errors from `wrk --latency` output."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p99 = re.search(r"^\s*99%\s+(\S+)", output, re.MULTILINE)
    if not rps or not p99:
        raise ValueError("could not find Requests/sec and the 99% latency in wrk's output")
    average = re.search(r"^\s*Latency\s+(\S+)", output, re.MULTILINE)
    requests = re.search(r"(\d+) requests in", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)([KMGT]?B)", output)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    errors = dict.fromkeys(("connect", "read", "write", "timeout"), 0)
    if socket_errors:
        errors = dict(zip(errors, map(int, socket_errors.groups()), strict=True))
    return {
        "requests_per_sec": float(rps.group(1)),
        "p99_ms": parse_duration_ms(p99.group(1)),
        "average_ms": parse_duration_ms(average.group(1)) if average else None,
        "requests": int(requests.group(1)) if requests else None,
        "transfer_mib_per_sec": (
            float(transfer.group(1)) * _BYTES[transfer.group(2)] / MIB if transfer else None
        ),
        "non_2xx_3xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": errors,
    }


# --------------------------------------------------------------------------- h2load output


def parse_h2load(output: str, log: Path) -> dict:
    """Requests/s, latency and errors from h2load's output, percentiles from its --log-file.

    h2load prints min, max, mean and standard deviation of "time for request" but no
    percentiles; its --log-file has one line per request (start in microseconds since the
    epoch, status, microseconds until the response ended), from which the percentiles come.
    Raises when the output lacks the summary (h2load could not connect or negotiate).
    """
    finished = re.search(r"finished in \S+, ([\d.]+) req/s, ([\d.]+)([KMGT]?B)/s", output)
    requests = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        output,
    )
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output)
    timing = re.search(r"^time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", output, re.MULTILINE)
    if not finished or not requests or not codes or not timing:
        raise ValueError("could not find h2load's summary (req/s, requests, status codes)")
    minimum, maximum, mean, sd = (parse_duration_ms(value) for value in timing.groups())
    _, _, done, _, failed, errored, timeout = map(int, requests.groups())
    status = dict(zip(("2xx", "3xx", "4xx", "5xx"), map(int, codes.groups()), strict=True))
    found = {
        "requests_per_sec": float(finished.group(1)),
        "transfer_mib_per_sec": float(finished.group(2)) * _BYTES[finished.group(3)] / MIB,
        "average_ms": mean,
        "min_ms": minimum,
        "max_ms": maximum,
        "sd_ms": sd,
        "requests": done,
        "status_codes": status,
        "non_2xx_3xx": status["4xx"] + status["5xx"],
        "request_errors": {"failed": failed, "errored": errored, "timeout": timeout},
        "application_protocol": _h2load_field(output, "Application protocol"),
        "tls_protocol": _h2load_field(output, "TLS Protocol"),
        "cipher": _h2load_field(output, "Cipher"),
    }
    percentiles = _percentiles(log)
    if not percentiles:
        raise ValueError("h2load's --log-file holds no request")
    return found | percentiles


def _h2load_field(output: str, name: str) -> str | None:
    match = re.search(rf"^{name}: (.+)$", output, re.MULTILINE)
    return match.group(1).strip() if match else None


def _percentiles(log: Path) -> dict:
    """p50, p90 and p99 (ms) of the request times in an h2load --log-file (nearest rank);
    {} when it holds none."""
    if not log.exists():
        return {}
    times = sorted(
        int(line.split("\t")[2]) for line in log.read_text().splitlines() if line.count("\t") >= 2
    )
    if not times:
        return {}

    def rank(share: float) -> float:
        return times[max(0, math.ceil(share * len(times)) - 1)] / 1000

    return {"p50_ms": rank(0.50), "p90_ms": rank(0.90), "p99_ms": rank(0.99)}


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Returns once `port` accepts a connection; raises if the server exits or never listens."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with code {proc.returncode} before listening")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"not listening on port {port} after {timeout:.0f}s")


def pinned(cpus: str | None, command: list[str]) -> list[str]:
    """`command` under `taskset -c cpus`, or as it is when `cpus` is None (not pinned)."""
    return ["taskset", "-c", cpus, *command] if cpus else command


class RunningServer:
    """A server process in its own session, pinned with taskset; its log goes to a temp file.

    taskset execs the server, so `proc.pid` is the server's main process (rsasgi's supervisor,
    gunicorn's arbiter, uWSGI's master, ...) and its workers are that process's descendants.
    """

    def __init__(
        self, spec: ServerSpec, cpu: str | None, workers: int, work: Path, tls: bool = False
    ):
        self.spec = spec
        self.port = free_port()
        self.log_path = work / f"{spec.group}-{spec.name}{'-tls' if tls else ''}.log"
        self._log = open(self.log_path, "wb")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        # rsasgi, uvicorn and gunicorn read a worker count from it: the command line decides.
        env.pop("WEB_CONCURRENCY", None)
        self.command = pinned(cpu, spec.command(self.port, workers, work, tls))
        self.proc = subprocess.Popen(
            self.command,
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

    def stop(self) -> None:
        """SIGINT for a graceful exit, then SIGKILL to the whole group (workers included)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(timeout=15)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self._log.close()


def check_answer(port: int, scenario: Scenario) -> dict[str, str]:
    """Raises unless the server answers the scenario's request with 200 and the right body, and
    with a Content-Length that is the body's length when it sends one (granian sends its files
    chunked). Returns the response's headers, names in lower case."""
    request = urllib.request.Request(
        f"http://{HOST}:{port}{scenario.path}",
        data=scenario.request_body,
        method=scenario.method,
        headers={"Content-Type": "application/octet-stream"} if scenario.request_body else {},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
        headers = {name.lower(): value for name, value in response.getheaders()}
        expected = len(scenario.expected_body)
        if response.status != 200 or body != scenario.expected_body:
            raise RuntimeError(
                f"{scenario.method} {scenario.path} -> {response.status}, {len(body)} bytes"
                f" (expected 200, {expected} bytes)"
            )
        if headers.get("content-length", str(expected)) != str(expected):
            raise RuntimeError(
                f"{scenario.method} {scenario.path} -> Content-Length "
                f"{headers['content-length']} for a body of {expected} bytes"
            )
    return headers


# The curl options that make it speak a scenario's protocol the way its load generator does:
# h2c by prior knowledge as h2load does; over TLS it offers h2 by ALPN (h2load --npn-list=h2);
# HTTP/1.1 over TLS without ALPN, as wrk sends none.
CURL_PROTOCOL = {
    "h2c": ["--http2-prior-knowledge"],
    "h2": ["--http2"],
    "http/1.1": ["--http1.1", "--no-alpn"],
}
# curl's %{http_version} for each protocol.
CURL_VERSION = {"h2c": "2", "h2": "2", "http/1.1": "1.1"}


def check_answer_curl(port: int, scenario: Scenario, work: Path) -> tuple[dict[str, str], dict]:
    """Like check_answer, with curl speaking the scenario's protocol (HTTP/2, TLS): raises
    unless the answer is 200 with the right body, over that protocol, and over TLS with the
    run's certificate (curl verifies it against the run's CA). Returns the response's headers
    and the handshake curl saw (TLS version and cipher; None in cleartext)."""
    marker = "\n--curl-status--"
    command = [
        "curl", "-sS", "-v", "--max-time", "10", "-D", "-",
        *CURL_PROTOCOL[scenario.protocol],
        "-w", marker + "%{http_code} %{http_version}",
        f"{scenario.scheme}://{HOST}:{port}{scenario.path}",
    ]  # fmt: skip
    if scenario.tls:
        command[1:1] = ["--cacert", str(tls_dir(work) / "ca.pem")]
    result = subprocess.run(command, capture_output=True, timeout=30)
    if result.returncode != 0:
        error = result.stderr.decode(errors="replace").strip().splitlines()[-1:]
        raise RuntimeError(f"curl failed with exit code {result.returncode}: {' '.join(error)}")
    response, _, status = result.stdout.rpartition(marker.encode())
    code, version = status.decode().split()
    head, _, body = response.partition(b"\r\n\r\n")
    headers = {}
    for line in head.decode(errors="replace").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    expected = CURL_VERSION[scenario.protocol]
    if code != "200" or version != expected or body != scenario.expected_body:
        raise RuntimeError(
            f"{scenario.method} {scenario.path} over {scenario.protocol} -> {code}, "
            f"HTTP/{version}, {len(body)} bytes (expected 200, HTTP/{expected}, "
            f"{len(scenario.expected_body)} bytes)"
        )
    handshake = None
    if scenario.tls:
        found = re.search(rb"SSL connection using (\S+) / (\S+)", result.stderr)
        handshake = {
            "tls_protocol": found.group(1).decode() if found else None,
            "cipher": found.group(2).decode() if found else None,
        }
    return headers, handshake


def load_command(
    args, port: int, scenario: Scenario, duration: int, script_dir: Path, log: Path | None
) -> list[str]:
    """The load generator's command line, pinned to its core: wrk for HTTP/1.1 (https:// over
    TLS), h2load for HTTP/2 (`log`: its --log-file, for the percentiles)."""
    url = f"{scenario.scheme}://{HOST}:{port}{scenario.path}"
    if scenario.client == "h2load":
        command = [
            "h2load", f"-t{args.threads}", f"-c{args.h2_clients}", f"-m{args.h2_streams}",
            "-D", str(duration),
        ]  # fmt: skip
        if scenario.tls:
            # h2 only: a server that cannot negotiate it fails instead of falling back.
            command.append("--npn-list=h2")
        if log is not None:
            command += ["--log-file", str(log)]
        return pinned(args.wrk_cpu, [*command, url])
    command = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{duration}s", "--latency"]
    if scenario.lua:
        script = script_dir / f"{scenario.name}.lua"
        script.write_text(scenario.lua)
        command += ["-s", str(script)]
    return pinned(args.wrk_cpu, [*command, url])


def run_load(
    args, port: int, scenario: Scenario, duration: int, script_dir: Path, log: Path | None = None
) -> tuple[str, float, float]:
    """The load generator's output, the CPU seconds it used (user + system) and the seconds it
    ran."""
    if log is not None:
        log.unlink(missing_ok=True)  # h2load appends to its --log-file
    command = load_command(args, port, scenario, duration, script_dir, log)
    # The load generator is the only child this process waits for while it runs (taskset
    # execs it, and the server is waited for only when it stops), so the children's usage
    # grows by its alone.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=duration + args.timeout_margin
    )
    elapsed = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip()
        raise RuntimeError(
            f"{scenario.client} failed with exit code {result.returncode}: {message}"
        )
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result.stdout, cpu, elapsed


def _context_switches(pids: list[int]) -> int:
    """Context switches (voluntary and not, every thread) so far of the processes `pids` that
    are alive; a thread that ended meanwhile takes its count with it."""
    total = 0
    for pid in pids:
        try:
            tasks = list(Path("/proc", str(pid), "task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                status = (task / "status").read_text()
            except OSError:  # the thread ended meanwhile
                continue
            for line in status.splitlines():
                if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                    total += int(line.split()[1])
    return total


def _cpu_seconds(pids: list[int]) -> float:
    """CPU seconds (user + system, every thread) used so far by the processes `pids` that are
    alive."""
    total = 0
    for pid in pids:
        try:
            stat = Path("/proc", str(pid), "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds (user + system, every thread) used so far by `root` and the processes under
    it that are alive."""
    return _cpu_seconds([root, *descendants(root)])


def tree_usage(root: int) -> tuple[float, int]:
    """`tree_cpu_seconds` and the context switches so far, from one walk of the process tree."""
    pids = [root, *descendants(root)]
    return _cpu_seconds(pids), _context_switches(pids)


def _core_seconds_by_column() -> dict[str, list[float]]:
    """Each core's line of /proc/stat ({"0": [user, nice, system, idle, ...]}) in seconds;
    empty when the file cannot be read."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return {}
    tick = os.sysconf("SC_CLK_TCK")
    return {
        name[3:]: [int(value) / tick for value in values]
        for name, *values in (line.split() for line in lines)
        if name.startswith("cpu") and name[3:].isdigit()
    }


def core_seconds(reading: dict[str, list[float]] | None = None) -> dict[str, float]:
    """User + system CPU seconds spent so far on each core, from /proc/stat ({"0": ...}).

    Like a process's own time, it leaves out interrupts and softirqs (the loopback's TCP work
    is largely softirq time on the sending core).
    """
    reading = _core_seconds_by_column() if reading is None else reading
    return {core: sum(columns[:3]) for core, columns in reading.items()}


def core_steal_seconds(reading: dict[str, list[float]] | None = None) -> dict[str, float]:
    """Seconds so far in which the hypervisor ran another guest on each of this virtual
    machine's cores ("steal" in /proc/stat; 0 on bare metal). No process on the core sees
    that time: a server then just serves less, whatever its own merit."""
    return {
        core: columns[7]
        for core, columns in (_core_seconds_by_column() if reading is None else reading).items()
        if len(columns) > 7
    }


# /proc/stat's columns, summed into what the server core's time went to.
CORE_SPLIT = {
    "user": (0, 1),  # user, nice
    "system": (2,),
    "softirq": (5, 6),  # irq, softirq: the loopback's TCP work lands largely here
    "idle": (3, 4),  # idle, iowait: the server waited for the client
    "steal": (7,),  # the hypervisor ran another guest
}


def core_split(before: dict, after: dict, core: str | None) -> dict[str, float]:
    """Seconds of each [`CORE_SPLIT`] part between two `_core_seconds_by_column()` readings
    of `core`; empty when the server is not pinned to that one core."""
    if core not in before or core not in after:
        return {}
    spent = [b - a for a, b in zip(before[core], after[core], strict=True)]
    return {
        part: sum(spent[i] for i in columns if i < len(spent))
        for part, columns in CORE_SPLIT.items()
    }


def add_steal_options(parser: argparse.ArgumentParser, default: float, cores: str) -> None:
    """`--max-steal` and `--steal-reruns`: a run in which the hypervisor took more than that
    share of `cores` is run again, that many times at most."""
    parser.add_argument(
        "--max-steal", type=float, default=default, metavar="SHARE",
        help=f"a run in which the hypervisor took more than this share of {cores} "
        f"(steal time, /proc/stat) is not counted but run again ({default:g})",
    )  # fmt: skip
    parser.add_argument(
        "--steal-reruns", type=int, default=3, metavar="N",
        help="how many times one run is repeated for --max-steal before it counts anyway (3)",
    )  # fmt: skip


def stolen_share(before: dict, after: dict, cores: str | None, elapsed: float) -> float:
    """The share of the run's time the hypervisor took from the cores the server is pinned
    to (their average); 0 when it is not pinned or the kernel does not say."""
    names = [core for core in (cores or "").split(",") if core in before and core in after]
    if not names or elapsed <= 0:
        return 0.0
    return sum(after[core] - before[core] for core in names) / len(names) / elapsed


# --------------------------------------------------------------------------- memory

# Requests sent (all at once, each on its own connection, so that several workers get some)
# per scenario before the idle memory is read.
MEMORY_REQUESTS = 8


def _parents() -> dict[int, int]:
    """{pid: parent pid} of every process, from /proc/PID/stat."""
    parents = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def descendants(root: int) -> list[int]:
    """The pids under `root` (children, grandchildren, ...), parents before their children."""
    children: dict[int, list[int]] = {}
    for pid, parent in _parents().items():
        children.setdefault(parent, []).append(pid)
    found, queue = [], sorted(children.get(root, []))
    while queue:
        pid = queue.pop(0)
        found.append(pid)
        queue.extend(sorted(children.get(pid, [])))
    return found


def process_memory(pid: int) -> dict | None:
    """RSS and PSS (bytes), threads, name and command line of `pid`; None once it has exited.

    RSS counts every page the process maps, shared ones included (forked workers share the
    interpreter's pages with their parent until they write to them); PSS divides each shared
    page among the processes that map it, so PSS adds up to what the processes cost together.
    """
    proc = Path("/proc", str(pid))
    try:
        status = dict(
            line.split(":", 1) for line in (proc / "status").read_text().splitlines() if ":" in line
        )
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        rss = pss = None
        try:
            for line in (proc / "smaps_rollup").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("Rss", "Pss"):
                    kib = int(value.split()[0]) * 1024
                    rss, pss = (kib, pss) if key == "Rss" else (rss, kib)
        except OSError:  # no smaps_rollup (old kernel): VmRSS, no PSS
            pass
        if rss is None:
            rss = int(status.get("VmRSS", "0 kB").split()[0]) * 1024
    except (OSError, ValueError):
        return None
    return {
        "pid": pid,
        "ppid": int(status.get("PPid", "0").strip() or 0),
        "name": status.get("Name", "").strip(),
        "cmdline": cmdline.strip()[:300],
        "threads": int(status.get("Threads", "0").strip() or 0),
        "rss_mib": round(rss / MIB, 2),
        "pss_mib": round(pss / MIB, 2) if pss is not None else None,
    }


def memory_snapshot(root: int) -> dict:
    """The memory of `root` and of each of its descendants, and their totals (MiB)."""
    main = process_memory(root)
    if main is None:
        raise RuntimeError("the server's main process has exited")
    children = [m for m in map(process_memory, descendants(root)) if m is not None]
    everyone = [main, *children]
    pss = [m["pss_mib"] for m in everyone]
    return {
        "main": main,
        "children": children,
        "total_rss_mib": round(sum(m["rss_mib"] for m in everyone), 2),
        "total_pss_mib": round(sum(pss), 2) if None not in pss else None,
    }


def settled_memory(
    server: RunningServer, workers: int, timeout: float = 20.0, quiet: float = 1.0
) -> dict:
    """A memory snapshot once the process tree has settled.

    Settled: with N > 1 workers at least N children exist, and for `quiet` seconds no process
    came or went and the total RSS moved by less than 1 % (a worker still importing the app
    grows). After `timeout` seconds the last snapshot is taken as it is, flagged unsettled.
    """
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(f"exited with code {server.proc.returncode}")
        snapshot = memory_snapshot(server.proc.pid)
        pids = [server.proc.pid, *(child["pid"] for child in snapshot["children"])]
        now = time.monotonic()
        steady = (
            last is not None
            and pids == last[0]
            and abs(snapshot["total_rss_mib"] - last[1]) <= 0.01 * last[1]
            and (workers == 1 or len(snapshot["children"]) >= workers)
        )
        if not steady:
            since = now
        elif now - since >= quiet:
            snapshot["settled"] = True
            return snapshot
        if now >= deadline:
            snapshot["settled"] = False
            return snapshot
        last = (pids, snapshot["total_rss_mib"])
        time.sleep(0.25)


def idle_memory(server: RunningServer, workers: int, scenarios: list[Scenario]) -> dict:
    """Waits until the server answers, sends it a few requests, and reads its memory, idle."""
    wait_for_port(server.port, server.proc)
    requests = [s for s in scenarios for _ in range(MEMORY_REQUESTS)]
    with ThreadPoolExecutor(max_workers=MEMORY_REQUESTS) as pool:
        list(pool.map(lambda scenario: check_answer(server.port, scenario), requests))
    snapshot = settled_memory(server, workers)
    snapshot["requests"] = len(requests)
    return snapshot


def _child(child: dict) -> str:
    """A child's RSS, tagged when it is not a worker but a multiprocessing helper."""
    helper = re.search(r"multiprocessing\.(resource_tracker|forkserver)", child["cmdline"])
    return f"{child['rss_mib']:.1f}" + (f" ({helper.group(1)})" if helper else "")


def _children(snapshot: dict) -> str:
    return ", ".join(map(_child, snapshot["children"])) or "-"


def _memory_line(snapshot: dict) -> str:
    children = _children(snapshot)
    pss = snapshot["total_pss_mib"]
    unsettled = "" if snapshot.get("settled", True) else "  (still changing)"
    return (
        f"main {snapshot['main']['rss_mib']:.1f}, children {children}; "
        f"total RSS {snapshot['total_rss_mib']:.1f}"
        + (f", PSS {pss:.1f}" if pss is not None else "")
        + f" MiB{unsettled}"
    )


# --------------------------------------------------------------------------- one server


# Groups without a memory report: the tls group's servers are the ASGI group's.
NO_MEMORY_GROUPS = ("tls",)


def bench_server(args, spec: ServerSpec, scenarios: list[Scenario], work: Path):
    """Starts `spec`, reads its idle memory (--memory), and runs every scenario against it.

    The server is started once for the cleartext scenarios and once more, with the run's
    certificate, for the TLS ones. Returns the commands that started it ({"cleartext": argv,
    "tls": argv}, those it needed), {scenario name: result} (empty with --memory-only) and the
    memory report ({} without --memory; it is read from the first start). A scenario that fails
    gets {"error": ...}, one the server lacks {"skipped": why}, and the run goes on, unless the
    server has exited.
    """
    results: dict[str, dict] = {}
    memory: dict[str, dict] = {}
    commands: dict[str, list[str]] = {}
    measure_memory = args.memory and spec.group not in NO_MEMORY_GROUPS
    for scenario in scenarios:
        if scenario.name in spec.lacks and not args.memory_only:
            results[scenario.name] = {"skipped": spec.lacks[scenario.name]}
            print(f"  {scenario.name:<{NAME_WIDTH}} skipped: {spec.lacks[scenario.name]}")
    runnable = [s for s in scenarios if s.name not in spec.lacks]
    for tls in sorted({scenario.tls for scenario in runnable}):  # cleartext first
        batch = [scenario for scenario in runnable if scenario.tls == tls]
        server = RunningServer(spec, args.server_cpu, args.workers, work, tls)
        commands["tls" if tls else "cleartext"] = server.command
        try:
            if measure_memory and not memory:
                try:
                    memory["idle"] = idle_memory(server, args.workers, batch)
                    print(f"  memory {_memory_line(memory['idle'])}", flush=True)
                except Exception as error:
                    memory["error"] = str(error)
                    print(f"  memory FAILED: {error}", flush=True)
                    if server.proc.poll() is not None:
                        print(f"  server log:\n{_indent(server.log_tail())}", flush=True)
            if not args.memory_only:
                run_scenarios(args, server, batch, work, results)
                if "idle" in memory and "after_load" not in memory and server.proc.poll() is None:
                    try:
                        memory["after_load"] = settled_memory(server, args.workers, timeout=5)
                        print(f"  memory after the runs: {_memory_line(memory['after_load'])}")
                    except Exception as error:
                        memory["after_load_error"] = str(error)
        finally:
            server.stop()
    if not args.memory_only:
        for scenario in scenarios:
            results.setdefault(scenario.name, {"error": "not run: the server had exited"})
    return commands, results, memory


def run_scenarios(
    args, server: RunningServer, scenarios: list[Scenario], work: Path, results: dict
) -> None:
    for scenario in scenarios:
        if server.proc.poll() is not None:
            break
        log = work / "h2load.log" if scenario.client == "h2load" else None
        try:
            wait_for_port(server.port, server.proc)
            if scenario.tls or scenario.http2:
                headers, handshake = check_answer_curl(server.port, scenario, work)
            else:
                headers, handshake = check_answer(server.port, scenario), None
            if args.warmup > 0:
                run_load(args, server.port, scenario, args.warmup, work)
            wait_for_port(server.port, server.proc)
            rerun = 0
            while True:
                # One reading of /proc/stat before the run and one after serve the core
                # shares, the steal and the split.
                before = _core_seconds_by_column()
                server_cpu, switches = tree_usage(server.proc.pid)
                output, client_cpu, elapsed = run_load(
                    args, server.port, scenario, args.duration, work, log
                )
                cpu_after, switches_after = tree_usage(server.proc.pid)
                server_cpu, switches = cpu_after - server_cpu, switches_after - switches
                after = _core_seconds_by_column()
                split = core_split(before, after, args.server_cpu)
                cores_before = core_seconds(before)
                cores = {
                    core: t - cores_before.get(core, t) for core, t in core_seconds(after).items()
                }
                stolen = stolen_share(
                    core_steal_seconds(before), core_steal_seconds(after), args.server_cpu, elapsed
                )
                if server.proc.poll() is not None:
                    raise RuntimeError(f"exited with code {server.proc.returncode} during the run")
                if stolen <= args.max_steal or rerun >= args.steal_reruns:
                    break
                rerun += 1
                print(
                    f"  {scenario.name:<{NAME_WIDTH}} not counted: the hypervisor took"
                    f" {stolen:.0%} of the server's core (steal); run again"
                    f" ({rerun} of at most {args.steal_reruns})",
                    flush=True,
                )
            result = parse_h2load(output, log) if log else parse_wrk(output)
        except Exception as error:  # one failure must not end the whole benchmark
            results[scenario.name] = {"error": str(error), "log_tail": server.log_tail()}
            print(f"  {scenario.name:<{NAME_WIDTH}} FAILED: {error}", flush=True)
            if server.proc.poll() is not None:
                print(f"  server log:\n{_indent(server.log_tail())}", flush=True)
                break
            continue
        finally:
            if log is not None:
                log.unlink(missing_ok=True)
        client = scenario.client
        result["client"] = client
        if client == "h2load":
            # h2load names the protocol the connections used; a server that fell back to
            # another (HTTP/1.1 instead of h2) served a different benchmark.
            if result["application_protocol"] != scenario.protocol:
                error = (
                    f"h2load spoke {result['application_protocol']!r}, not {scenario.protocol!r}"
                )
                results[scenario.name] = {"error": error, "h2load_output": output}
                print(f"  {scenario.name:<{NAME_WIDTH}} FAILED: {error}", flush=True)
                continue
            result["connections"] = args.h2_clients
            result["streams_per_connection"] = args.h2_streams
            in_flight = args.h2_clients * args.h2_streams
        else:
            result["application_protocol"] = scenario.protocol
            result["connections"] = args.connections
            in_flight = args.connections
        if handshake and client == "wrk":
            # wrk reports no handshake: curl's (no ALPN, OpenSSL's default suites, as wrk's)
            # stands for it. h2load reports its own.
            result.update(handshake)
        # Little's law: how many requests were in flight, on average. Far below what the
        # client keeps in flight (wrk: one per connection; h2load: its streams) means the
        # server left connections or streams waiting.
        if result["average_ms"]:
            busy = result["requests_per_sec"] * result["average_ms"] / 1000
            result["requests_in_flight"] = round(busy, 1)
        result["max_in_flight"] = in_flight
        result["workers"] = args.workers
        # Cores used during the measured run: the server's processes together, and the load
        # generator's. One client thread near a full core means it, not the server, may set
        # the number.
        result["server_cores"] = round(server_cpu / elapsed, 3)
        # The server's CPU time per request served: what other processes on the machine move
        # least (they take the server's core away, not its work), so the steadier comparison
        # on a shared machine.
        served = result["requests_per_sec"] * elapsed
        per_request = round(server_cpu / served * 1e6, 2) if served else None
        result["server_cpu_us_per_request"] = per_request
        # Where the server core's time went, per request: the kernel's share (system and
        # softirq: reading the request, writing the response, the loopback's TCP) is what a
        # server cannot spend less of by doing less itself.
        if served and split:
            result["server_core_us_per_request"] = {
                part: round(seconds / served * 1e6, 2) for part, seconds in split.items()
            }
        # How often the server's threads gave up the CPU or were made to, per request. Where
        # an app thread and the event loop share one core, a hand-over per request costs
        # microseconds on a virtual machine; how often it happens moves with the host's speed
        # (benches/README.md, "Profile-guided builds").
        if served:
            result["context_switches_per_request"] = round(switches / served, 3)
        result[f"{client}_cores"] = round(client_cpu / elapsed, 3)
        result[f"{client}_threads"] = args.threads
        # What other processes took of the server's core and of the client's (when each has one).
        others = {}
        for core, ours in ((args.server_cpu, server_cpu), (args.wrk_cpu, client_cpu)):
            if core in cores:
                others[core] = round(max(0.0, cores[core] - ours) / elapsed, 3)
        result["other_cores"] = others
        result["server_core_steal"] = round(stolen, 3)
        result["steal_reruns"] = rerun
        result["response_headers"] = headers
        result[f"{client}_output"] = output
        results[scenario.name] = result
        transfer = f"   {result['transfer_mib_per_sec']:,.0f} MiB/s" if scenario.file else ""
        protocol = f"   {_protocol(result)}" if scenario.tls or scenario.http2 else ""
        print(
            f"  {scenario.name:<{NAME_WIDTH}} {result['requests_per_sec']:>12,.0f} req/s"
            f"   p99 {result['p99_ms']:8.2f} ms{transfer}{protocol}"
            f"   cpu: server {result['server_cores']:.0%}"
            f" ({_us_per_request(result)}), {client} "
            f"{result[f'{client}_cores']:.0%}"
            + "".join(f", others on core {c} {v:.0%}" for c, v in others.items())
            + (f", steal {stolen:.0%}" if stolen >= 0.005 else "")
            + _error_note(result),
            flush=True,
        )


def median_runs(runs: list[dict]) -> dict:
    """One server's results over the rounds: per scenario, the run with the median req/s
    (the lower middle one for an even count), with every round's req/s beside it."""
    if len(runs) == 1:
        return runs[0]
    merged: dict[str, dict] = {}
    for scenario in runs[0]:
        measured = [run[scenario] for run in runs if "requests_per_sec" in run.get(scenario, {})]
        if not measured:
            merged[scenario] = runs[0][scenario]
            continue
        ordered = sorted(measured, key=lambda result: result["requests_per_sec"])
        median = dict(ordered[(len(ordered) - 1) // 2])
        median["rounds_requests_per_sec"] = [result["requests_per_sec"] for result in measured]
        merged[scenario] = median
    return merged


def _us_per_request(result: dict) -> str:
    value = result.get("server_cpu_us_per_request")
    return "-" if value is None else f"{value:.1f} µs/request"


# Above this share of its core, one wrk thread is flagged as possibly the limit of a run.
WRK_BOUND = 0.9
# Other processes that take this share of the server's or wrk's core make a run not worth
# comparing (flagged "busy machine").
BUSY = 0.10


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def _protocol(result: dict) -> str:
    """The protocol a run spoke, and over TLS the version and cipher: 'h2 TLSv1.3 TLS_...'."""
    parts = [result.get("application_protocol"), result.get("tls_protocol"), result.get("cipher")]
    return " ".join(part for part in parts if part)


def _error_note(result: dict) -> str:
    notes = []
    if result.get("non_2xx_3xx"):
        notes.append(f"{result['non_2xx_3xx']} non-2xx/3xx")
    errors = {k: v for k, v in result.get("socket_errors", {}).items() if v}
    if errors:
        notes.append("socket errors " + ", ".join(f"{k} {v}" for k, v in errors.items()))
    failed = {k: v for k, v in result.get("request_errors", {}).items() if v}
    if failed:
        notes.append("requests " + ", ".join(f"{k} {v}" for k, v in failed.items()))
    client = result.get("client", "wrk")
    cores = result.get(f"{client}_cores", 0)
    if result.get(f"{client}_threads") == 1 and cores > WRK_BOUND:
        notes.append(f"{client} used {cores:.0%} of its core: it may be the limit")
    busy = {core: share for core, share in result.get("other_cores", {}).items() if share >= BUSY}
    if busy:
        notes.append(
            "busy machine: " + ", ".join(f"others {v:.0%} of core {c}" for c, v in busy.items())
        )
    busy, most = result.get("requests_in_flight"), result.get("max_in_flight")
    if busy is not None and most and busy < most / 2:
        notes.append(f"only ~{busy:.0f} of {most} requests in flight at a time")
    return "   !! " + "; ".join(notes) if notes else ""


# --------------------------------------------------------------------------- report


def print_table(group: str, results: dict, servers: list[str], scenarios: list[Scenario]) -> dict:
    """Prints one group's req/s and p99 per scenario and server, then rsasgi's ratios.

    Returns the ratios, {scenario: {peer: rsasgi req/s / peer req/s}}.
    """
    width = 22
    label = group.upper()
    head = f"{'scenario':<{NAME_WIDTH}}"
    print()
    print(f"{label}: requests/s (p99 latency)")
    print(head + "".join(f"{name:>{width}}" for name in servers))
    skipped: dict[str, str] = {}
    for scenario in scenarios:
        cells = []
        for name in servers:
            result = results[name].get(scenario.name, {})
            if "requests_per_sec" in result:
                flag = "!" if _error_note(result) else ""
                cells.append(f"{result['requests_per_sec']:,.0f} ({result['p99_ms']:.2f} ms){flag}")
            elif "skipped" in result:
                skipped[name] = result["skipped"]
                cells.append("n/a")
            else:
                cells.append("failed")
        print(f"{scenario.name:<{NAME_WIDTH}}" + "".join(f"{cell:>{width}}" for cell in cells))
    for name, why in skipped.items():
        print(f"n/a: {name}: {why}")

    files = [scenario for scenario in scenarios if scenario.file]
    if files:
        # For a large file the bytes moved per second, not the requests, are what a client sees.
        print()
        print(f"{label}: MiB/s received by wrk (bodies and headers)")
        print(head + "".join(f"{name:>{width}}" for name in servers))
        for scenario in files:
            cells = []
            for name in servers:
                mib = results[name].get(scenario.name, {}).get("transfer_mib_per_sec")
                cells.append(f"{mib:,.0f}" if mib is not None else "-")
            print(f"{scenario.name:<{NAME_WIDTH}}" + "".join(f"{cell:>{width}}" for cell in cells))

    ratios: dict[str, dict[str, float]] = {}  # rounded, for the JSON
    exact: dict[str, dict[str, float]] = {}  # as printed in the table and the bar line
    peers = [name for name in servers if name != "rsasgi"]
    if "rsasgi" not in servers or not peers:
        return ratios
    print()
    print(f"{label}: rsasgi req/s ÷ peer req/s (above 1.00x: rsasgi is faster)")
    print(head + "".join(f"{name:>{width}}" for name in peers))
    for scenario in scenarios:
        ours = results["rsasgi"].get(scenario.name, {}).get("requests_per_sec")
        cells = []
        for peer in peers:
            theirs = results[peer].get(scenario.name, {})
            if ours and theirs.get("requests_per_sec"):
                ratio = ours / theirs["requests_per_sec"]
                ratios.setdefault(scenario.name, {})[peer] = round(ratio, 3)
                exact.setdefault(scenario.name, {})[peer] = ratio
                cells.append(f"{ratio:.2f}x")
            else:
                cells.append("n/a" if "skipped" in theirs else "-")
        print(f"{scenario.name:<{NAME_WIDTH}}" + "".join(f"{cell:>{width}}" for cell in cells))

    print()
    print(
        f"{label}: peer CPU per request ÷ rsasgi's (above 1.00x: rsasgi spends less; the "
        "server's processes only, steadier than req/s on a shared machine)"
    )
    print(head + "".join(f"{name:>{width}}" for name in peers))
    for scenario in scenarios:
        ours = results["rsasgi"].get(scenario.name, {}).get("server_cpu_us_per_request")
        cells = []
        for peer in peers:
            theirs = results[peer].get(scenario.name, {}).get("server_cpu_us_per_request")
            cells.append(f"{theirs / ours:.2f}x" if ours and theirs else "-")
        print(f"{scenario.name:<{NAME_WIDTH}}" + "".join(f"{cell:>{width}}" for cell in cells))

    split_table(label, results, servers, scenarios)

    checks = bar_checks(group, results, servers, scenarios, exact)
    if checks:
        print()
        print(f"{label} {BAR_SCENARIO[group]} bar (rsasgi ≥ bar × peer): " + "; ".join(checks))
    if any(_error_note(r) for per in results.values() for r in per.values()):
        print(
            "! = the load generator saw non-2xx/3xx responses, socket or request errors in that "
            "run, the server left most connections or streams waiting, the load generator used "
            f"most of its core, or other processes took {BUSY:.0%} or more of the server's or "
            "the load generator's core (see the JSON)"
        )
    return ratios


def split_table(label: str, results: dict, servers: list[str], scenarios: list) -> None:
    """Prints where the server core's time went, in µs per request, for each scenario and
    server: user (the server's own code and the app's), system + softirq (the kernel's), and
    idle (waiting for the client)."""
    rows = []
    for scenario in scenarios:
        for name in servers:
            split = results[name].get(scenario.name, {}).get("server_core_us_per_request")
            if split:
                kernel = split["system"] + split["softirq"]
                switches = results[name][scenario.name].get("context_switches_per_request")
                rows.append(
                    f"{scenario.name:<{NAME_WIDTH}}{name:>18}{split['user']:>9.2f}"
                    f"{kernel:>9.2f}{split['idle']:>9.2f}{split['steal']:>9.2f}"
                    + (f"{switches:>10.3f}" if switches is not None else f"{'-':>10}")
                )
    if rows:
        print()
        print(
            f"{label}: the server core's time per request, µs (kernel = system + softirq),"
            " and the server's context switches per request"
        )
        print(
            f"{'':<{NAME_WIDTH}}{'':>18}{'user':>9}{'kernel':>9}{'idle':>9}{'steal':>9}"
            f"{'switches':>10}"
        )
        for row in rows:
            print(row)


def bar_checks(
    group: str,
    results: dict,
    servers: list[str],
    scenarios: list[Scenario],
    exact: dict[str, dict[str, float]],
) -> list[str]:
    """The verdicts on the group's bars, met or MISSED, one per peer the bar names.

    A BEST_PEER bar compares rsasgi with the peer that served the most requests/s among those
    measured (the smallest ratio); peers whose run failed are named, since one of them might
    have been the best.
    """
    scenario = BAR_SCENARIO.get(group)
    if scenario not in [s.name for s in scenarios]:
        return []
    ratios = exact.get(scenario, {})
    checks = []
    for peer, bar in BAR.get(group, {}).items():
        if peer == BEST_PEER:
            lacking = {name for name in servers if "skipped" in results[name].get(scenario, {})}
            failed = [n for n in servers if n != "rsasgi" and n not in ratios and n not in lacking]
            if not ratios:
                checks.append(f"NOT MEASURED: {BEST_PEER} (bar {bar:.2f}x; no run to compare)")
                continue
            best = min(ratios, key=ratios.get)
            verdict = "met" if ratios[best] >= bar else "MISSED"
            unmeasured = f"; not measured: {', '.join(failed)}" if failed else ""
            checks.append(
                f"{verdict}: {ratios[best]:.2f}x {best}, the best peer (bar {bar:.2f}x{unmeasured})"
            )
        elif peer not in servers:
            continue
        elif peer in ratios:
            verdict = "met" if ratios[peer] >= bar else "MISSED"
            checks.append(f"{verdict}: {ratios[peer]:.2f}x {peer} (bar {bar:.2f}x)")
        else:
            checks.append(f"NOT MEASURED: {peer} (bar {bar:.2f}x; a run failed)")
    return checks


def print_memory(group: str, memory: dict, servers: list[str], key: str, when: str) -> None:
    """One group's memory table: main process, each child, totals, one row per server (MiB)."""
    rows = []
    for name in servers:
        report = memory.get(name, {})
        snapshot = report.get(key)
        if snapshot is None:
            error = report.get("error") or report.get(f"{key}_error") or "not measured"
            rows.append((name, "failed", error, "", ""))
            continue
        children = _children(snapshot)
        if not snapshot.get("settled", True):
            children += " (still changing)"
        pss = snapshot["total_pss_mib"]
        rows.append(
            (
                name,
                f"{snapshot['main']['rss_mib']:.1f}",
                children,
                f"{snapshot['total_rss_mib']:.1f}",
                f"{pss:.1f}" if pss is not None else "-",
            )
        )
    if not rows:
        return
    head = ("server", "main", "children, each", "RSS total", "PSS total")
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(5)]
    print()
    print(f"{group.upper()}: resident memory in MiB, {when}")
    for row in [head, *rows]:
        print(
            f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:<{widths[2]}}"
            f"  {row[3]:>{widths[3]}}  {row[4]:>{widths[4]}}"
        )


# Packages whose versions go in the report, for servers whose name is not a package.
# nginx is a program, not a package: its version comes from `nginx -v`.
PACKAGES = {"gunicorn-uvicorn": ("gunicorn", "uvicorn", "uvicorn-worker"), "nginx": ()}


def versions(servers: list[str], wrk: bool = True, tls: bool = False) -> dict:
    """Versions of the servers' packages, of nginx, wrk, and with `tls` of h2load, curl and
    the packages that make the certificate."""
    found = {}
    names = [package for name in servers for package in PACKAGES.get(name, (name,))]
    helpers = ["trustme", "cryptography"] if tls else []
    for name in dict.fromkeys([*names, "uvloop", "httptools", *helpers]):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    if "rsasgi" in servers and (rsasgi := importlib.util.find_spec("rsasgi")) and rsasgi.origin:
        # Where the rsasgi that ran came from: PYTHONPATH may put another build first.
        found["rsasgi_path"] = str(Path(rsasgi.origin).parent)
    nginx = program("nginx") if "nginx" in servers else None
    if nginx:
        nginx_version = subprocess.run([nginx, "-v"], capture_output=True, text=True)
        found["nginx"] = nginx_version.stderr.strip().removeprefix("nginx version: nginx/")
    if wrk:
        wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
        found["wrk"] = (wrk_version.stdout or wrk_version.stderr).split("\n")[0].strip()
    if tls:
        for command in (["h2load", "--version"], ["curl", "--version"]):
            output = subprocess.run(command, capture_output=True, text=True).stdout
            found[command[0]] = output.split("\n")[0].strip()
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


def _names(values: list[str], known: list[str], what: str) -> list[str]:
    names = [name for value in values for name in value.split(",") if name]
    unknown = [name for name in names if name not in known]
    if unknown:
        sys.exit(f"unknown {what}: {', '.join(unknown)} (choose from {', '.join(known)})")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark rsasgi against its ASGI and WSGI peers, and its static file "
        "serving against granian's and nginx, with wrk.",
        epilog="Peers: pip install -r benches/requirements.txt; wrk and nginx: "
        "apt-get install wrk nginx-light.",
    )
    parser.add_argument(
        "--group", choices=[*GROUPS, "all"], default="all",
        help="asgi: rsasgi, uvicorn, granian, hypercorn, h2corn, gunicorn-uvicorn; wsgi: rsasgi, "
        "granian, gunicorn, uwsgi, waitress; static: rsasgi, granian, nginx; tls (HTTP/2 and "
        "TLS): rsasgi, granian, h2corn, hypercorn, uvicorn (all)",
    )  # fmt: skip
    parser.add_argument("--duration", type=int, default=10, help="seconds per run (10)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    parser.add_argument("--threads", type=int, default=1, help="wrk and h2load threads (1)")
    parser.add_argument(
        "--h2-clients", type=int, default=H2_CLIENTS,
        help=f"h2load connections, for the HTTP/2 scenarios ({H2_CLIENTS})",
    )  # fmt: skip
    parser.add_argument(
        "--h2-streams", type=int, default=H2_STREAMS,
        help=f"h2load streams in flight per connection ({H2_STREAMS})",
    )  # fmt: skip
    parser.add_argument(
        "--warmup", type=int, default=2, help="seconds of unmeasured load before each run (2)"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, metavar="N",
        help="run every server N times, taking turns (in the reverse order every other round), "
        "and report each one's median run (1); on a shared machine a single run can be off by "
        "20%% or more",
    )  # fmt: skip
    add_steal_options(parser, 0.05, "the server's core")
    parser.add_argument(
        "--workers", type=int, default=1, metavar="N",
        help="worker processes per server (1); with N > 1 waitress, which has none, is skipped",
    )  # fmt: skip
    parser.add_argument(
        "--memory", action="store_true",
        help="also report each server's resident memory (main process and each child), idle "
        "after a few requests before the load, and again after the runs",
    )  # fmt: skip
    parser.add_argument(
        "--memory-only", action="store_true",
        help="report the idle memory only: start each server, send a few requests, read its "
        "memory, stop it (no wrk)",
    )  # fmt: skip
    parser.add_argument(
        "--servers", nargs="+", default=SERVER_NAMES, metavar="NAME",
        help=f"subset of: {', '.join(SERVER_NAMES)}; each group runs those it has (all)",
    )  # fmt: skip
    parser.add_argument(
        "--scenarios", nargs="+", default=list(SCENARIOS), metavar="NAME",
        help=f"subset of: {', '.join(SCENARIOS)}; each group runs those it has (all)",
    )  # fmt: skip
    parser.add_argument(
        "--server-cpu",
        help="cores the server is pinned to, a taskset list (0; with --workers N > 1: the first "
        "N cores, or not pinned when there are not N + 1)",
    )
    parser.add_argument(
        "--wrk-cpu",
        help="core wrk and h2load are pinned to (1; with --workers N > 1: core N, or not pinned "
        "when there are not N + 1 cores)",
    )
    parser.add_argument(
        "--rsasgi-access-log", action="store_true",
        help="rsasgi logs every request, with the rest of its log to a file in the work "
        "directory (the peers still log none): what the access log costs",
    )  # fmt: skip
    parser.add_argument(
        "--rsasgi-arg", action="append", default=[], metavar="ARG",
        help="one more argument for rsasgi, repeatable: --rsasgi-arg=--log-format=json",
    )  # fmt: skip
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON file ({RESULTS})")
    parser.add_argument("--timeout-margin", type=float, default=30, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    args.memory = args.memory or args.memory_only
    args.groups = list(GROUPS) if args.group == "all" else [args.group]
    args.servers = _names(args.servers, SERVER_NAMES, "server")
    RSASGI_LOGGING["access_log"] = args.rsasgi_access_log
    RSASGI_LOGGING["extra"] = list(args.rsasgi_arg)
    args.scenarios = _names(args.scenarios, list(SCENARIOS), "scenario")
    return args


def assign_cpus(args) -> str | None:
    """Fills in the cores of the server and of wrk; returns a note when they share cores.

    One worker: the server on core 0 and wrk on core 1. N > 1 workers: the server on the
    first N cores this process may use and wrk on the next, when there are N + 1; otherwise
    neither is pinned (pinning the server to fewer cores than it has workers would defeat
    them) and wrk competes with the workers for the cores. --server-cpu/--wrk-cpu win.
    """
    if args.workers == 1:
        args.server_cpu = args.server_cpu or "0"
        args.wrk_cpu = args.wrk_cpu or "1"
        return None
    cores = sorted(os.sched_getaffinity(0))
    note = None
    if len(cores) > args.workers:
        server_cpu = ",".join(map(str, cores[: args.workers]))
        wrk_cpu = str(cores[args.workers])
    else:
        server_cpu = wrk_cpu = None
        note = (
            f"note: {args.workers} workers and only {len(cores)} cores: the server is not "
            "pinned"
            + ("" if args.wrk_cpu else " and neither is wrk")
            + "; wrk shares the cores with the workers, so these numbers measure the server "
            "with its load generator competing for the same CPUs"
        )
    args.server_cpu = args.server_cpu or server_cpu
    args.wrk_cpu = args.wrk_cpu or wrk_cpu
    return note


def available_servers(group: str, names: list[str], workers: int) -> list[str]:
    """The servers of `group` among `names` that can run here; prints why others are skipped."""
    servers = []
    for name in names:
        spec = SERVERS[group].get(name)
        if spec is None:
            continue
        missing = spec.missing()
        if missing:
            print(f"skipping {group} {name}: {', '.join(missing)} not found ({spec.install})")
        elif workers > 1 and not spec.multiprocess:
            print(
                f"skipping {group} {name}: it has no worker processes (one process, threads "
                f"only), so it does not run with --workers {workers}"
            )
        else:
            servers.append(name)
    return servers


def tools_missing(scenarios: list[Scenario]) -> list[str]:
    """What the chosen scenarios need beyond wrk and is not here, each with how to get it:
    h2load for HTTP/2, curl to check HTTP/2 and TLS answers, trustme for the certificate."""
    missing = []
    if any(s.http2 for s in scenarios) and shutil.which("h2load") is None:
        missing.append("h2load not found (apt-get install nghttp2-client)")
    if any(s.http2 or s.tls for s in scenarios) and shutil.which("curl") is None:
        missing.append("curl not found (apt-get install curl)")
    if any(s.tls for s in scenarios) and importlib.util.find_spec("trustme") is None:
        missing.append("trustme not found (pip install trustme)")
    return missing


def write_static_files(work: Path, scenarios: list[Scenario]) -> None:
    """Writes the files of the static scenarios where the servers will find them.

    Readable by all, the directories above them included: nginx started as root runs its
    workers as `nobody`, and the temporary directory is made private (0700).
    """
    files = [scenario for scenario in scenarios if scenario.file]
    if not files:
        return
    work.chmod(0o755)
    directory = static_dir(work)
    directory.mkdir(mode=0o755, exist_ok=True)
    for scenario in files:
        path = directory / scenario.file
        path.write_bytes(scenario.expected_body)
        path.chmod(0o644)


def _where(cpus: str | None) -> str:
    if cpus is None:
        return ", not pinned"
    return f" on core{'s' if any(c in cpus for c in ',-') else ''} {cpus}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.memory_only and shutil.which("wrk") is None:
        print(
            "wrk is not installed; install it with `apt-get install wrk` (Debian/Ubuntu) "
            "or `brew install wrk` (macOS).",
            file=sys.stderr,
        )
        return 1
    note = assign_cpus(args)
    if args.memory_only:
        args.wrk_cpu = None
    if (args.server_cpu or args.wrk_cpu) and shutil.which("taskset") is None:
        print("taskset is not installed; it comes with util-linux.", file=sys.stderr)
        return 1
    if (os.cpu_count() or 1) < 2:
        print("note: fewer than two CPUs, the server and wrk share a core", file=sys.stderr)
    if note and not args.memory_only:
        print(note)

    chosen = [SCENARIOS[name] for name in args.scenarios]
    scenarios = {group: [s for s in chosen if group in s.groups] for group in args.groups}
    for group in args.groups:
        if not scenarios[group]:
            print(f"skipping the {group} group: none of its scenarios was chosen")
        elif group in NO_MEMORY_GROUPS and args.memory_only:
            print(f"skipping the {group} group: it has no memory report")
            scenarios[group] = []
        elif missing := tools_missing(scenarios[group]):
            print(f"skipping the {group} group: {'; '.join(missing)}")
            scenarios[group] = []
    plan = {
        group: available_servers(group, args.servers, args.workers)
        for group in args.groups
        if scenarios[group]
    }
    plan = {group: servers for group, servers in plan.items() if servers}
    if not plan:
        print("no server to benchmark", file=sys.stderr)
        return 1

    workers = "one worker" if args.workers == 1 else f"{args.workers} workers"
    if args.memory_only:
        print(f"memory only: each server {workers}{_where(args.server_cpu)}")
    else:
        h2load = ""
        if any(s.http2 for group in plan for s in scenarios[group]):
            h2load = (
                f" (HTTP/2: h2load -t{args.threads} -c{args.h2_clients} -m{args.h2_streams}"
                f" -D {args.duration})"
            )
        print(
            f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency{h2load}"
            f"{_where(args.wrk_cpu)}; each server {workers}{_where(args.server_cpu)}; "
            f"{args.warmup}s warm-up"
        )
    results: dict[str, dict[str, dict]] = {}
    commands: dict[str, dict[str, list[str] | dict[str, list[str]]]] = {}
    memory: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="rsasgi-bench-") as work:
        planned = [s for group in plan for s in scenarios[group]]
        write_static_files(Path(work), planned)
        if any(s.tls for s in planned):
            write_tls_files(Path(work))
        for group, servers in plan.items():
            results[group], commands[group], memory[group] = {}, {}, {}
            rounds: dict[str, list[dict]] = {name: [] for name in servers}
            for round_number in range(args.rounds):
                # Every other round in the reverse order (A B, B A, A B...): a host that
                # slows or speeds up over the run then weighs on each server alike, where
                # always going first would give one server the start of every round.
                for name in servers if round_number % 2 == 0 else servers[::-1]:
                    spec = SERVERS[group][name]
                    of = f", round {round_number + 1} of {args.rounds}" if args.rounds > 1 else ""
                    print(f"\n{group} {name} ({spec.notes}{of})", flush=True)
                    started, result, memory[group][name] = bench_server(
                        args, spec, scenarios[group], Path(work)
                    )
                    rounds[name].append(result)
                    # One command per server, or in the tls group one per transport it served.
                    commands[group][name] = started if group == "tls" else started["cleartext"]
            for name in servers:
                results[group][name] = median_runs(rounds[name])

    ratios = {}
    if not args.memory_only:
        ratios = {
            group: print_table(group, results[group], servers, scenarios[group])
            for group, servers in plan.items()
        }
    if args.memory and any(group not in NO_MEMORY_GROUPS for group in plan):
        each = f"{args.workers} worker{'s' if args.workers > 1 else ''} per server"
        for group, servers in plan.items():
            if group in NO_MEMORY_GROUPS:
                continue
            idle = f"idle after {MEMORY_REQUESTS} requests per scenario, {each}"
            print_memory(group, memory[group], servers, "idle", idle)
            if not args.memory_only:
                after = f"after the runs, {each}"
                print_memory(group, memory[group], servers, "after_load", after)
        print(
            "main: the process started (supervisor, arbiter, master; the whole server when it "
            "has no children); children: each process under it. RSS counts shared pages in "
            "every process that maps them; PSS splits them, so its total is what they cost "
            "together."
        )

    all_servers = list(dict.fromkeys(name for servers in plan.values() for name in servers))
    report = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])],
        "settings": {
            "groups": list(plan),
            "workers": args.workers,
            "memory": args.memory,
            "memory_only": args.memory_only,
            "duration_s": args.duration,
            "rounds": args.rounds,
            "connections": args.connections,
            "wrk_threads": args.threads,
            "h2load": {
                "threads": args.threads,
                "clients": args.h2_clients,
                "streams_per_client": args.h2_streams,
            },
            "warmup_s": args.warmup,
            "server_cpu": args.server_cpu,  # None: not pinned
            "wrk_cpu": args.wrk_cpu,
            "shared_cores_note": note,
            "wsgi_peer_threads": WSGI_THREADS,
        },
        "machine": {
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "versions": versions(all_servers, wrk=not args.memory_only, tls="tls" in plan),
        "server_commands": commands,
        "scenarios": {s.name: s.description for group in plan for s in scenarios[group]},
        "results": results,
        "rsasgi_ratio": ratios,
        "bar": {group: BAR[group] for group in plan},
        "bar_scenario": {group: BAR_SCENARIO[group] for group in plan},
    }
    if "static" in plan:
        report["static_files"] = {
            "prefix": STATIC_PREFIX,
            "max_age_s": STATIC_MAX_AGE,
            "sizes": {s.file: len(s.expected_body) for s in scenarios["static"]},
        }
    if "tls" in plan:
        report["tls"] = {
            "certificate": "trustme CA and leaf for 127.0.0.1 (ECDSA P-256), key as PKCS#8",
            "protocols": {s.name: s.protocol for s in scenarios["tls"]},
            "lacking": {
                name: SERVERS["tls"][name].lacks
                for name in plan["tls"]
                if SERVERS["tls"][name].lacks
            },
        }
    if args.memory:
        report["memory"] = {g: m for g, m in memory.items() if g not in NO_MEMORY_GROUPS}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
