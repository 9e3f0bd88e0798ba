"""ASGI app for tests/test_tls.py's certificate rotation: which worker answered, and with which
certificate.

GET /   JSON {"pid": the worker's pid, "server_cert": scope["extensions"]["tls"]["server_cert"]}
"""

from __future__ import annotations

import json
import os


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    tls = scope["extensions"].get("tls") or {}
    body = json.dumps({"pid": os.getpid(), "server_cert": tls.get("server_cert")}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
