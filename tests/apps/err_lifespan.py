"""App for tests/test_lifespan.py: records lifespan events and exposes request state.

Events go, one per line, to the file named by $ERR_LIFESPAN_FILE.
"""

from __future__ import annotations

import json
import os

seen_types: list[str] = []
lifespan_asgi: dict = {}


def _record(event: str) -> None:
    path = os.environ.get("ERR_LIFESPAN_FILE")
    if path:
        with open(path, "a") as f:
            f.write(event + "\n")


async def _respond(send, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send):
    seen_types.append(scope["type"])
    if scope["type"] == "lifespan":
        lifespan_asgi.update(scope.get("asgi", {}))
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                scope["state"]["greeting"] = "hello-from-startup"
                scope["state"]["shared_list"] = []
                _record("startup")
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                _record("shutdown")
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if path == "/state":
        state = scope.get("state")
        await _respond(send, json.dumps({"has_state": state is not None, "state": state}).encode())
    elif path == "/mutate":
        scope["state"]["greeting"] = "changed-by-request"
        scope["state"]["added_by_request"] = "leaked"
        scope["state"]["shared_list"].append("appended")
        await _respond(send, b"{}")
    elif path == "/types":
        await _respond(send, json.dumps(seen_types).encode())
    elif path == "/lifespan-asgi":
        await _respond(send, json.dumps(lifespan_asgi).encode())
    else:
        await _respond(send, b'"other"')
