"""ASGI app for tests/test_operations.py: what the process serving a request is.

GET /               "VERSION PID" (the test copies this file and rewrites VERSION to reload it)
GET /uid            "UID EUID" of the process
GET /create?PATH    creates the file PATH (open(PATH, "w"): mode 0666 before the umask), "created"
"""

from __future__ import annotations

import os
from urllib.parse import unquote

VERSION = 1


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    path = scope["path"]
    if path == "/uid":
        body = f"{os.getuid()} {os.geteuid()}"
    elif path == "/create":
        with open(unquote(scope["query_string"].decode()), "w") as file:
            file.write("x")
        body = "created"
    else:
        body = f"{VERSION} {os.getpid()}"
    data = body.encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(data))],
        }
    )
    await send({"type": "http.response.body", "body": data})
