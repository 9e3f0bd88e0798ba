"""ASGI app for tests/test_supervisor.py: each answer names the worker that gave it.

GET /         "VERSION PID" (the test copies this file and rewrites VERSION to reload it)
GET /block    blocks the worker's event loop for 30 s (time.sleep in an async view)
GET /slow     sleeps 30 s without blocking the loop
GET /crash    ends the worker process at once (os._exit(1))
WebSocket     sends "VERSION PID" once accepted, then waits for the client to close

/block and /slow first create the file PID in the directory named by $SUP_MARKERS.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

VERSION = 1


def mark_started() -> None:
    directory = os.environ.get("SUP_MARKERS")
    if directory:
        (Path(directory) / str(os.getpid())).touch()


async def block_the_event_loop() -> None:
    mark_started()
    time.sleep(30)


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
        await send({"type": "websocket.send", "text": f"{VERSION} {os.getpid()}"})
        while (await receive())["type"] != "websocket.disconnect":
            pass
        return
    path = scope["path"]
    if path == "/block":
        await block_the_event_loop()
    elif path == "/slow":
        mark_started()
        await asyncio.sleep(30)
    elif path == "/crash":
        os._exit(1)
    body = f"{VERSION} {os.getpid()}".encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})
