"""Apps for tests/test_timeout_request.py: requests that outlive --timeout-request.

ASGI `app`:  GET /late    answers after 30 s (the server must answer 504 first)
             GET /stream  starts a response, then stalls for 30 s
             GET /block   blocks the event loop for 2 s (time.sleep), then answers
             GET /big     16 MiB in one message: the app is done at once
             GET /        "ok PID" at once
Each stalled ASGI request records, in the directory $TIMEOUT_MARKERS, "started-PATH" when it
begins and "cancelled-PATH" when its task is cancelled.

WSGI `wsgi`: GET /stuck   a thread busy for 30 s in `stuck_in_a_loop` (cannot be stopped)
             GET /hold    records "started-hold", then holds its thread in `stuck_in_a_loop`
                          until the marker "go" exists (30 s at most)
             GET /nap?s=S records "started-nap", sleeps S seconds, then answers "napped"
             GET /big     16 MiB as a one-item list: the app is done at once
             GET /?tag=T  "ok PID" at once, recording "ran-T" when T is given
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

BIG = b"x" * (16 << 20)


def mark(name: str) -> None:
    directory = os.environ.get("TIMEOUT_MARKERS")
    if directory:
        (Path(directory) / name.replace("/", "")).touch()


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path in ("/late", "/stream"):
        mark("started-" + path)
        if path == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"first part", "more_body": True})
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            mark("cancelled-" + path)
            raise
    if path == "/block":
        mark("started-" + path)
        time.sleep(2)
    if path == "/big":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": BIG})
        return
    body = f"ok {os.getpid()}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def released() -> bool:
    directory = os.environ.get("TIMEOUT_MARKERS")
    return bool(directory) and (Path(directory) / "go").exists()


def stuck_in_a_loop() -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not released():
        time.sleep(0.05)


def wsgi(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/stuck":
        stuck_in_a_loop()
    if path == "/hold":
        mark("started-hold")
        stuck_in_a_loop()
    if path == "/nap":
        mark("started-nap")
        time.sleep(float(environ["QUERY_STRING"].removeprefix("s=")))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"napped"]
    if path == "/big":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [BIG]
    if path == "/many":
        # Far more than the socket and the server's buffer hold: the thread waits for room.
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return _many(close_takes=float(environ["QUERY_STRING"].removeprefix("close=") or 0))
    if path == "/trickle":
        # A response that streams for 3 s, a piece every 0.2 s.
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _trickle()
    tag = environ["QUERY_STRING"].removeprefix("tag=")
    if tag:
        mark("ran-" + tag)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"ok {os.getpid()}".encode()]


def _many(close_takes: float):
    try:
        for _ in range(2000):
            yield b"x" * 65536
    finally:
        # A clean-up that blocks, once the response is cut.
        time.sleep(close_takes)


def _trickle():
    for _ in range(15):
        time.sleep(0.2)
        yield b"."
