"""ASGI app for tests/test_file_responses.py: the http.response.pathsend and
http.response.zerocopysend extensions, sent by hand.

Routes (query values are URL-encoded):
  /extensions           JSON: scope["extensions"] (null when absent)
  /pathsend?path=P&status=S&length=N&tag=T
                        http.response.start (status S, default 200; Content-Type
                        application/octet-stream; X-App: file_send; Content-Length N, default the
                        size of P), then {"type": "http.response.pathsend", "path": P}
  /zerocopy?path=P&seek=S&offset=O&count=C&length=N&wrap=1&tag=T
                        opens P, seeks to S, sends http.response.start (Content-Length N only when
                        given), then {"type": "http.response.zerocopysend", "file": the file} with
                        "offset" O and "count" C only when given; with wrap=1 a body "head-"
                        comes before it and a body "-tail" ends the response after it
  /observed             JSON {T: "ExceptionType: message", or "NO-EXCEPTION" when every send()
                        of the request tagged T returned}; an exception is re-raised after it is
                        recorded, as a real app would let it escape
  /                     "ok"
"""

from __future__ import annotations

import json
import os
from urllib.parse import parse_qs

observed: dict[str, str] = {}


async def respond(send, status: int, body: bytes, content_type: bytes = b"text/plain") -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


def start(status: int, length: int | None) -> dict:
    headers = [(b"content-type", b"application/octet-stream"), (b"x-app", b"file_send")]
    if length is not None:
        headers.append((b"content-length", b"%d" % length))
    return {"type": "http.response.start", "status": status, "headers": headers}


async def pathsend(send, q: dict[str, str]) -> None:
    path = q["path"]
    length = int(q["length"]) if "length" in q else os.stat(path).st_size
    await send(start(int(q.get("status", "200")), length))
    await send({"type": "http.response.pathsend", "path": path})


async def zerocopy(send, q: dict[str, str]) -> None:
    with open(q["path"], "rb") as file:
        file.seek(int(q.get("seek", "0")))
        wrap = q.get("wrap") == "1"
        await send(start(200, int(q["length"]) if "length" in q else None))
        if wrap:
            await send({"type": "http.response.body", "body": b"head-", "more_body": True})
        message = {"type": "http.response.zerocopysend", "file": file, "more_body": wrap}
        for key in ("offset", "count"):
            if key in q:
                message[key] = int(q[key])
        await send(message)
        if wrap:
            await send({"type": "http.response.body", "body": b"-tail", "more_body": False})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    path = scope["path"]
    q = {k: v[-1] for k, v in parse_qs(scope["query_string"].decode()).items()}
    if path == "/extensions":
        body = json.dumps(scope.get("extensions")).encode()
        await respond(send, 200, body, b"application/json")
    elif path == "/observed":
        await respond(send, 200, json.dumps(observed).encode(), b"application/json")
    elif path in ("/pathsend", "/zerocopy"):
        tag = q.get("tag", path)
        try:
            await (pathsend if path == "/pathsend" else zerocopy)(send, q)
        except Exception as exc:
            observed[tag] = f"{type(exc).__name__}: {exc}"
            raise
        observed[tag] = "NO-EXCEPTION"
    else:
        await respond(send, 200, b"ok")
