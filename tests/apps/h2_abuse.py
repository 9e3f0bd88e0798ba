"""An app that counts what attackers make it do (tests/test_http2_abuse.py).

Its counters live in the worker process and are read back over HTTP from /stats, so the
test needs no marker files. Run it with one worker.

Routes:
  /               "ok"
  /stats          the counters as JSON (not counted): calls (app calls on the counted
                  routes), running and peak_running (tasks of /slow and /hold alive now, and
                  at most), sent (bytes /download has handed to send()), hold (the message
                  types /hold received, in order)
  /count          counted; reads the body, answers "ok"
  /slow?s=N       counted; starts the response at once, then sleeps N seconds whatever the
                  client does (as an app busy in a database query would), then ends it
  /download?size=N
                  counted; streams N bytes in 64 KiB messages, no Content-Length
  /hold           counted; reads the body until it ends or the client goes, then answers
                  "done"
  /duplex?s=N     counted; reads the first body message, answers it back and then a tick a
                  second for N seconds, never reading again (with &poll=1, after one more
                  receive() it cancels after 0.1 s)
  websocket /ws-slow?s=N
                  counted; running for N seconds before it answers the handshake (it
                  refuses it), whatever the client does
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import parse_qs

STATS = {"calls": 0, "running": 0, "peak_running": 0, "sent": 0, "hold": []}

CHUNK = 64 * 1024


async def read_body(receive) -> list[str]:
    """Receive until the body ends or the client goes; the message types seen."""
    types = []
    while True:
        message = await receive()
        types.append(message["type"])
        if message["type"] != "http.request" or not message.get("more_body", False):
            return types


async def respond(send, body: bytes, content_type: bytes = b"text/plain") -> None:
    headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Running:
    """Counts a task of /slow or /hold as running while inside the block."""

    def __enter__(self):
        STATS["running"] += 1
        STATS["peak_running"] = max(STATS["peak_running"], STATS["running"])

    def __exit__(self, *exc):
        STATS["running"] -= 1


async def slow(seconds: float, send) -> None:
    with Running():
        await send({"type": "http.response.start", "status": 200, "headers": []})
        # The head goes out with the first body message: an empty one sends it now.
        await send({"type": "http.response.body", "body": b"", "more_body": True})
        await asyncio.sleep(seconds)
        try:
            await send({"type": "http.response.body", "body": b"slow"})
        except Exception:  # noqa: BLE001 - the client reset the stream long ago
            pass


async def download(size: int, send) -> None:
    headers = [(b"content-type", b"application/octet-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    block = b"\x5a" * CHUNK
    left = size
    while left > 0:
        part = block[: min(CHUNK, left)]
        await send({"type": "http.response.body", "body": part, "more_body": True})
        STATS["sent"] += len(part)
        left -= len(part)
    await send({"type": "http.response.body", "body": b""})


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
    if scope["type"] == "websocket":
        STATS["calls"] += 1
        with Running():
            await asyncio.sleep(float(query.get("s", "5")))
        return
    if path == "/stats":
        await read_body(receive)
        await respond(send, json.dumps(STATS).encode(), b"application/json")
        return
    if path == "/":
        await read_body(receive)
        await respond(send, b"ok")
        return
    STATS["calls"] += 1
    if path == "/count":
        await read_body(receive)
        await respond(send, b"ok")
    elif path == "/slow":
        await slow(float(query.get("s", "30")), send)
    elif path == "/download":
        await download(int(query.get("size", "0")), send)
    elif path == "/whole":
        # The whole body in one message (Starlette's Response, a WSGI app's [body]): the
        # response is done for the app at once, and hyper holds all of it.
        await read_body(receive)
        await respond(send, b"\x5a" * int(query.get("size", "0")), b"application/octet-stream")
    elif path == "/duplex":
        # Reads the first body message only, then streams a tick a second for s seconds
        # without asking for more: its client may pause the body meanwhile.
        first = await receive()
        if query.get("poll"):
            # A look for more that gives up at once (asyncio.wait_for cancels the receive):
            # the app is not waiting for the body after it.
            try:
                await asyncio.wait_for(receive(), 0.1)
            except asyncio.TimeoutError:
                pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": first["body"], "more_body": True})
        for tick in range(int(query.get("s", "3"))):
            await asyncio.sleep(1)
            await send({"type": "http.response.body", "body": b" %d" % tick, "more_body": True})
        await send({"type": "http.response.body", "body": b" end"})
    elif path == "/hold":
        with Running():
            STATS["hold"] = await read_body(receive)
        if STATS["hold"][-1] == "http.request":
            await respond(send, b"done")
    else:
        await read_body(receive)
        await respond(send, b"not found")
