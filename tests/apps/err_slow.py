"""App for tests/test_shutdown.py: GET /sleep?s=SECONDS sleeps, then answers "slept".

Lifespan and request events go, one per line, to the file named by $ERR_SLOW_FILE.
"""

from __future__ import annotations

import asyncio
import os
from urllib.parse import parse_qs


def _record(event: str) -> None:
    path = os.environ.get("ERR_SLOW_FILE")
    if path:
        with open(path, "a") as f:
            f.write(event + "\n")


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _record("startup")
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                _record("shutdown")
                await send({"type": "lifespan.shutdown.complete"})
                return
    query = parse_qs(scope["query_string"].decode())
    seconds = float(query.get("s", ["0"])[0])
    _record("request-start")
    await asyncio.sleep(seconds)
    _record("request-done")
    body = b"slept"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"5")],
        }
    )
    await send({"type": "http.response.body", "body": body})
