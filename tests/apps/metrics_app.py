"""ASGI app for tests/test_metrics.py.

GET, POST... /          200 "ok"
any /missing            404
any /error              500
GET /hold               creates $METRICS_MARKERS/held, then answers 200 once the file
                        $METRICS_MARKERS/release exists
GET /block              blocks the event loop (time.sleep) until $METRICS_MARKERS/release exists
websocket /ws           echoes text messages until the client closes
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path


async def respond(send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def hold() -> None:
    markers = Path(os.environ["METRICS_MARKERS"])
    (markers / "held").touch()
    while not (markers / "release").exists():
        await asyncio.sleep(0.02)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": message.get("text") or ""})
    path = scope["path"]
    if path == "/block":
        while not (Path(os.environ["METRICS_MARKERS"]) / "release").exists():
            time.sleep(0.02)
    if path == "/missing":
        await respond(send, 404, b"missing")
    elif path == "/error":
        await respond(send, 500, b"error")
    else:
        if path == "/hold":
            await hold()
        await respond(send, 200, b"ok")
