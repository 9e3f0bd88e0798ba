"""ASGI app for tests/test_operations.py: what the process serving a request is.

GET /               "VERSION PID" (the test copies this file and rewrites VERSION to reload it)
GET /uid            "UID EUID" of the process
GET /create?PATH    creates the file PATH (open(PATH, "w"): mode 0666 before the umask), "created"
GET /fds            what `ls -l /proc/self/fd` lists in a program the app starts, which
                    inherits every descriptor not marked close-on-exec (as os.system would)
GET /sigign         the SigIgn line of /proc/self/status in a program the app starts: the
                    signals it ignores because it inherited their being ignored
"""

from __future__ import annotations

import os
import subprocess
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
    elif path == "/sigign":
        status = subprocess.run(
            ["grep", "SigIgn", "/proc/self/status"], capture_output=True, check=True
        )
        body = status.stdout.decode()
    elif path == "/fds":
        listing = subprocess.run(
            ["ls", "-l", "/proc/self/fd"], close_fds=False, capture_output=True, check=True
        )
        body = listing.stdout.decode()
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
