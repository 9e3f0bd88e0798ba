"""Count the 502s nginx answers when rsasgi closes an idle upstream connection just as nginx
sends a POST on it: the reason deploy/nginx.conf keeps nginx's upstream keepalive_timeout
below rsasgi's --timeout-keep-alive.

For each ordering, one rsasgi (tests/apps/proto_http.py, --timeout-keep-alive T) runs behind
nginx (deploy/nginx.conf as tests/nginx_support.py fills it in, one worker) and one client sends
small POSTs over TLS in sequence, each after a pause of T plus an offset drawn uniformly from a
window around T (by default -2 ms to +1 ms: on loopback, where rsasgi's close and the next
request meet). nginx logs each collision ("upstream prematurely closed connection"); it retries
a GET on a new connection, but not a POST, so each POST that collides is a 502 for the client.

    right  nginx's upstream keepalive_timeout is 0.8 T (as shipped: 4 s under rsasgi's 5 s)
    wrong  nginx's upstream keepalive_timeout is 60 s (nginx's default when the upstream
           block sets none)

    python benches/nginx_keepalive_race.py                  # 3000 POSTs per ordering, T = 50 ms
    python benches/nginx_keepalive_race.py --requests 500 --orderings wrong
    python benches/nginx_keepalive_race.py --method GET     # collisions, but no 502s

It runs for about requests × (T + 3 ms) per ordering (under 6 minutes by default) and prints
the status counts, the collisions nginx logged and the offsets of the 502s. Needs nginx
(`apt-get install nginx`) and trustme (tests/requirements.txt); as root nginx's worker runs as
www-data. The counts depend on the machine; this is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import collections
import random
import ssl
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import httpx  # noqa: E402
import trustme  # noqa: E402
from conftest import APPS, Server, free_port  # noqa: E402
from nginx_support import Nginx, Site, missing_nginx_reason, nginx_root  # noqa: E402

# nginx's own default for the upstream keepalive_timeout.
NGINX_DEFAULT_KEEPALIVE_TIMEOUT = 60.0
ORDERINGS = ("right", "wrong")


def nginx_keepalive_timeout(ordering: str, keep_alive: float) -> str:
    seconds = 0.8 * keep_alive if ordering == "right" else NGINX_DEFAULT_KEEPALIVE_TIMEOUT
    return f"{round(seconds * 1000)}ms"


def run(ordering: str, args: argparse.Namespace, work: Path) -> collections.Counter:
    timeout = nginx_keepalive_timeout(ordering, args.timeout_keep_alive)
    print(
        f"== {ordering}: rsasgi --timeout-keep-alive {args.timeout_keep_alive}s, "
        f"nginx upstream keepalive_timeout {timeout}; {args.requests} {args.method}s, each "
        f"{args.window[0]:+g} to {args.window[1]:+g} ms after rsasgi's timeout",
        flush=True,
    )
    ca = trustme.CA()
    issued = ca.issue_cert("localhost")
    issued.cert_chain_pems[0].write_to_path(str(work / "cert.pem"))
    issued.private_key_pem.write_to_path(str(work / "key.pem"))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    (work / "static").mkdir(exist_ok=True)
    server = Server(
        [
            "proto_http:app",
            "--app-dir",
            str(APPS),
            "--port",
            "0",
            "--timeout-keep-alive",
            str(args.timeout_keep_alive),
            "--no-access-log",
        ],
        work,
        work / f"rsasgi-{ordering}.log",
        None,
    )
    nginx = None
    statuses: collections.Counter = collections.Counter()
    collisions: list[float] = []
    try:
        server.wait_listening()
        site = Site(
            http_port=free_port(),
            https_port=free_port(),
            certificate=work / "cert.pem",
            key=work / "key.pem",
            static_dir=work / "static",
            upstream=f"127.0.0.1:{server.port}",
            upstream_keepalive_timeout=timeout,
        )
        nginx = Nginx(work, site)
        nginx.wait_ready()
        offsets = random.Random(args.seed)
        started = time.monotonic()
        with httpx.Client(base_url=nginx.https_url, verify=context, timeout=10) as client:
            client.post("/echo", content=b"first")
            for _ in range(args.requests):
                offset = offsets.uniform(*args.window) / 1000
                time.sleep(args.timeout_keep_alive + offset)
                if args.method == "POST":
                    status = client.post("/echo", content=b"payload").status_code
                else:
                    status = client.get("/").status_code
                statuses[status] += 1
                if status == 502:
                    collisions.append(offset * 1000)
        elapsed = time.monotonic() - started
        collided = sum("upstream prematurely closed" in line for line in nginx.log().splitlines())
    finally:
        if nginx is not None:
            nginx.stop()
        server.kill()
    bad = statuses[502]
    rate = f"1 in {args.requests / bad:.0f}" if bad else "none"
    print(f"   statuses {dict(sorted(statuses.items()))} in {elapsed:.0f} s: 502s {bad} ({rate})")
    print(f"   collisions nginx logged (upstream prematurely closed connection): {collided}")
    if collisions:
        print("   502 offsets (ms): " + ", ".join(f"{value:+.2f}" for value in collisions))
    return statuses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="POSTs per ordering")
    parser.add_argument(
        "--timeout-keep-alive", type=float, default=0.05, help="rsasgi's, in seconds"
    )
    parser.add_argument(
        "--window",
        type=float,
        nargs=2,
        default=(-2.0, 1.0),
        metavar=("FROM_MS", "TO_MS"),
        help="the pauses' offsets from rsasgi's timeout, in milliseconds",
    )
    parser.add_argument("--orderings", nargs="+", choices=ORDERINGS, default=list(ORDERINGS))
    parser.add_argument("--method", choices=("POST", "GET"), default="POST")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    reason = missing_nginx_reason()
    if reason:
        print(reason, file=sys.stderr)
        return 1
    for ordering in args.orderings:
        with tempfile.TemporaryDirectory(prefix="rsasgi-race-") as scratch:
            with nginx_root(Path(scratch) / "nginx") as work:
                run(ordering, args, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
