"""Returns the request scope as JSON (tests/test_scope.py).

bytes become {"b64": ...}; tuples and lists both become JSON lists, so the Python type of
every scope value and of the header items is reported separately under "_types".
The lifespan startup puts {"from_lifespan": "yes"} into the state; every request mutates its
own scope["state"] after serialising it, so a leak between requests shows up.
"""

from __future__ import annotations

import base64
import gc
import json


def jsonable(value):
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return {"repr": repr(value), "type": type(value).__name__}


def describe(scope) -> dict:
    headers = scope.get("headers")
    item_types = set()
    part_types = set()
    for item in headers or []:
        item_types.add(type(item).__name__)
        for part in item:
            part_types.add(type(part).__name__)
    return {
        "scope": {k: jsonable(v) for k, v in scope.items()},
        "_types": {
            "keys": {k: type(v).__name__ for k, v in scope.items()},
            "header_item": sorted(item_types),
            "header_part": sorted(part_types),
            "header_item_len": sorted({len(item) for item in headers or []}),
            # Whether the garbage collector tracks the header and address tuples.
            "tuples_tracked": sorted(
                {gc.is_tracked(item) for item in headers or []}
                | {gc.is_tracked(scope[key]) for key in ("client", "server") if scope.get(key)}
            ),
        },
    }


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if "state" in scope:
                    scope["state"]["from_lifespan"] = "yes"
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    assert scope["type"] == "http"
    body = b""
    messages = 0
    while True:
        message = await receive()
        messages += 1
        if message["type"] != "http.request":
            break
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    out = describe(scope)
    out["body"] = jsonable(body)
    payload = json.dumps(out).encode()
    # Changes to what the scope holds must stay in this request (each gets its own copies).
    for key in ("state", "asgi", "extensions"):
        if isinstance(scope.get(key), dict):
            scope[key]["mutated_by_request"] = True
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
