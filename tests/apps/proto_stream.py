"""Streaming app (tests/test_streaming.py). Markers go to $PROTO_MARKER_DIR.

Routes:
  POST /upload            reads the body message by message; JSON {sha256, bytes, messages,
                          max_message}
  GET  /download?size=N&chunk=C&tag=T
                          streams N bytes in C-byte messages (content: block(i, C) for the
                          i-th message), no Content-Length; with a tag, T.progress holds the
                          number of bytes handed to send() so far (updated every 1 MiB)
  POST /echo              starts the response at once, sends back every body message as it
                          arrives
  GET  /wait-disconnect?tag=T
                          writes T.begun on entry and T.started once the body is complete, then
                          waits in receive(); writes T.disconnect with the message types it got
  GET  /send-after-disconnect?tag=T
                          waits for http.disconnect, then calls send() (which does nothing
                          then); T.result holds the outcome
  GET  /stream-until-error?tag=T
                          streams 64 KiB messages until send() raises (or 30 s pass); T.result
                          holds the outcome
  GET  /                  "ok"
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from urllib.parse import parse_qs

from proto_raw import write_marker


def block(i: int, size: int) -> bytes:
    """The i-th message of /download: distinct per index so reordering is detected."""
    unit = i.to_bytes(4, "big")
    return (unit * (size // 4 + 1))[:size]


def outcome(exc: BaseException | None) -> str:
    if exc is None:
        return "no exception"
    return json.dumps(
        {
            "type": type(exc).__name__,
            "mro": [c.__name__ for c in type(exc).__mro__],
            "oserror": isinstance(exc, OSError),
            "message": str(exc),
        }
    )


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    tag = query.get("tag", "x")

    if path == "/upload":
        digest = hashlib.sha256()
        total = messages = max_message = 0
        while True:
            message = await receive()
            assert message["type"] == "http.request", message
            messages += 1
            body = message.get("body", b"")
            digest.update(body)
            total += len(body)
            max_message = max(max_message, len(body))
            if not message.get("more_body", False):
                break
        payload = json.dumps(
            {
                "sha256": digest.hexdigest(),
                "bytes": total,
                "messages": messages,
                "max_message": max_message,
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    elif path == "/download":
        size = int(query.get("size", "0"))
        chunk = int(query.get("chunk", "65536"))
        track = "tag" in query
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/octet-stream")],
            }
        )
        sent = i = 0
        next_report = 0
        while sent < size:
            n = min(chunk, size - sent)
            await send({"type": "http.response.body", "body": block(i, n), "more_body": True})
            sent += n
            i += 1
            if track and sent >= next_report:
                write_marker(f"{tag}.progress", str(sent))
                next_report = sent + (1 << 20)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        if track:
            write_marker(f"{tag}.progress", str(sent))

    elif path == "/echo":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/octet-stream")],
            }
        )
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            body = message.get("body", b"")
            if body:
                await send({"type": "http.response.body", "body": body, "more_body": True})
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    elif path == "/wait-disconnect":
        write_marker(f"{tag}.begun", "1")
        types = []
        started = False
        try:
            while True:
                message = await receive()
                types.append(message["type"])
                if message["type"] == "http.disconnect":
                    break
                if not message.get("more_body", False) and not started:
                    started = True
                    write_marker(f"{tag}.started", "1")
        finally:
            write_marker(f"{tag}.disconnect", json.dumps(types))

    elif path == "/send-after-disconnect":
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            if not message.get("more_body", False):
                write_marker(f"{tag}.started", "1")
        error = None
        try:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"too late"})
        except Exception as exc:  # noqa: BLE001
            error = exc
        write_marker(f"{tag}.result", outcome(error))

    elif path == "/stream-until-error":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        data = b"z" * 65536
        error = None
        first = True
        deadline = time.monotonic() + 30
        try:
            while time.monotonic() < deadline:
                await send({"type": "http.response.body", "body": data, "more_body": True})
                if first:
                    write_marker(f"{tag}.started", "1")
                    first = False
                await asyncio.sleep(0.001)
        except Exception as exc:  # noqa: BLE001
            error = exc
        write_marker(f"{tag}.result", outcome(error))

    else:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"2")],
            }
        )
        await send({"type": "http.response.body", "body": b"ok"})
