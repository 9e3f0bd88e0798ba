"""Apps for tests/test_shutdown.py whose work goes on after a complete response.

`app` (ASGI) answers "ok" at once, then works for ?s=SECONDS in the request's task, as a
Starlette or FastAPI BackgroundTask does. `wsgi_app` answers "ok" with an iterable whose
close() takes ?s=SECONDS. Events go, one per line, to the file named by
$AFTER_RESPONSE_FILE: "background-start", "background-done", "background-cancelled",
"close-start", "close-done", "shutdown".
"""

from __future__ import annotations

import asyncio
import os
import time
from urllib.parse import parse_qs


def _record(event: str) -> None:
    with open(os.environ["AFTER_RESPONSE_FILE"], "a") as f:
        f.write(event + "\n")


def _seconds(query_string: str) -> float:
    return float(parse_qs(query_string)["s"][0])


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                _record("shutdown")
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    seconds = _seconds(scope["query_string"].decode())
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
    _record("background-start")
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        _record("background-cancelled")
        raise
    _record("background-done")


class _SlowClose:
    def __init__(self, seconds: float):
        self.seconds = seconds

    def __iter__(self):
        return iter([b"ok"])

    def close(self):
        _record("close-start")
        time.sleep(self.seconds)
        _record("close-done")


def wsgi_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return _SlowClose(_seconds(environ["QUERY_STRING"]))
