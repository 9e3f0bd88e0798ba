"""Apps whose response is complete before they return (tests/test_http_protocol.py): the
last body bytes go out (with a Content-Length), then the app goes on for `?after=MS`
milliseconds (0 by default) before it returns.

app    ASGI: sleeps after its last `send()`, as a view with a background task does
wsgi   WSGI: its response iterable's close() sleeps
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import parse_qs

BODY = b"done"


def _after(query: str) -> float:
    return int(parse_qs(query).get("after", ["0"])[0]) / 1000


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(BODY)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": BODY})
    await asyncio.sleep(_after(scope["query_string"].decode()))


class _SlowClose:
    def __init__(self, after: float):
        self.after = after

    def __iter__(self):
        yield BODY

    def close(self):
        time.sleep(self.after)


def wsgi(environ, start_response):
    start_response("200 OK", [("Content-Length", str(len(BODY)))])
    return _SlowClose(_after(environ.get("QUERY_STRING", "")))
