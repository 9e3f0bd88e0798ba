"""App for tests/test_shutdown.py: views that run on threads, as a framework runs its sync
views (asgiref's sync_to_async, anyio's to_thread).

GET /sleep?s=SECONDS sleeps on a thread of the event loop's pool, then answers "slept";
cancelling the request's task does not stop that thread. GET /pool runs nothing much on a
thread pool of the app's own, whose thread then idles. Events go, one per line, to the file
named by $SYNC_VIEWS_FILE: "sleep-start SECONDS", "sleep-done SECONDS", "shutdown".
"""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs

POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="app-pool")


def _record(event: str) -> None:
    with open(os.environ["SYNC_VIEWS_FILE"], "a") as f:
        f.write(event + "\n")


def sleep_view(seconds: str) -> bytes:
    _record(f"sleep-start {seconds}")
    time.sleep(float(seconds))
    _record(f"sleep-done {seconds}")
    return b"slept"


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                _record("shutdown")
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    loop = asyncio.get_running_loop()
    if scope["path"] == "/pool":
        body = await loop.run_in_executor(POOL, bytes)
    else:
        seconds = parse_qs(scope["query_string"].decode())["s"][0]
        body = await loop.run_in_executor(None, sleep_view, seconds)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
