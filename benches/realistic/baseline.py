"""The page's cost without a server: `python -m benches.realistic.baseline wsgi|asgi SECONDS`
calls the Django application in-process, one request after another (a WSGI call, or an ASGI
call on an asyncio loop, uvloop when installed), for SECONDS after a warm-up, and prints one
JSON line: requests, seconds, and the CPU seconds used (the process's, its threads' included).

No HTTP, no sockets to a client: its CPU milliseconds per request are the floor under any
server's, so a server's own cost is its CPU per request less this. The environment is the
servers' (settings, database socket, connection mode).
"""

import asyncio
import io
import json
import os
import sys
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benches.realistic.settings")

WARMUP = 100


def wsgi_caller():
    from benches.realistic.wsgi import application

    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/items",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }

    def call() -> None:
        status = []
        body = application(
            dict(environ, **{"wsgi.input": io.BytesIO()}),
            lambda code, headers, exc_info=None: status.append(code),
        )
        try:
            b"".join(body)
        finally:
            getattr(body, "close", lambda: None)()
        if not status[0].startswith("200"):
            raise RuntimeError(f"GET /items -> {status[0]}")

    return call


def asgi_caller():
    from benches.realistic.asgi import application

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/items-async",
        "raw_path": b"/items-async",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8000")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }

    async def call() -> None:
        sent = []
        requested = []

        async def receive():
            # The request once; then, as a client that stays, nothing until the app is done
            # (Django waits for a disconnect while the view runs, and cancels that wait).
            if not requested:
                requested.append(True)
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.Event().wait()

        async def send(message):
            sent.append(message)

        await application(dict(scope), receive, send)
        if sent[0].get("status") != 200:
            raise RuntimeError(f"GET /items-async -> {sent[0].get('status')}")

    return call


def main(interface: str, seconds: float) -> None:
    if interface == "wsgi":
        call = wsgi_caller()
        run_one = call
    else:
        try:
            import uvloop

            loop = uvloop.new_event_loop()
        except ImportError:
            loop = asyncio.new_event_loop()
        call = asgi_caller()

        def run_one() -> None:
            loop.run_until_complete(call())

    for _ in range(WARMUP):
        run_one()
    requests = 0
    started, cpu = time.monotonic(), time.process_time()
    while time.monotonic() - started < seconds:
        run_one()
        requests += 1
    elapsed, used = time.monotonic() - started, time.process_time() - cpu
    print(json.dumps({"requests": requests, "seconds": elapsed, "cpu_seconds": used}))


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
