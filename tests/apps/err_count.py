"""App for tests/test_bad_input.py: counts calls per path, reads the whole body.

GET /count returns the counts as JSON; any other path is counted, its body read
to the end, and answered with "<path> <body length>".
"""

from __future__ import annotations

import json

counts: dict[str, int] = {}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if path == "/count":
        body = json.dumps(counts).encode()
    else:
        counts[path] = counts.get(path, 0) + 1
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = f"{path} {size}".encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
