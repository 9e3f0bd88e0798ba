"""ASGI app for tests/test_worker_lifecycle.py.

Routes: /unreferenced awaits a future that nothing but the request task holds; /sleep sleeps
60 s; /stubborn never ends, even when cancelled. Lifespan and request events go, one per line,
to the file named by $LIFE_EVENTS; with $LIFE_SHUTDOWN_HANGS set, the lifespan shutdown never
completes, with $LIFE_SHUTDOWN_SECONDS it takes that long, and with $LIFE_SHUTDOWN_RAISES set
it raises.
"""

from __future__ import annotations

import asyncio
import gc
import os
import weakref


def record(event: str) -> None:
    path = os.environ.get("LIFE_EVENTS")
    if path:
        with open(path, "a") as f:
            f.write(event + "\n")


async def lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            record("startup")
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            record("shutdown-start")
            if os.environ.get("LIFE_SHUTDOWN_RAISES"):
                raise RuntimeError("the lifespan shutdown raised")
            if os.environ.get("LIFE_SHUTDOWN_HANGS"):
                await asyncio.get_running_loop().create_future()
            await asyncio.sleep(float(os.environ.get("LIFE_SHUTDOWN_SECONDS", "0")))
            record("shutdown")
            await send({"type": "lifespan.shutdown.complete"})
            return


def _collect_then_resolve(future_ref: weakref.ref) -> None:
    # Only the waiting task holds the future; if nothing holds the task, this
    # collection destroys both and there is no future left to resolve.
    gc.collect()
    future = future_ref()
    if future is not None:
        future.set_result(b"resumed")


async def unreferenced() -> bytes:
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    loop.call_soon(_collect_then_resolve, weakref.ref(future))
    return await future


async def stubborn() -> None:
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            record("cancel-ignored")


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    record("request-start")
    if scope["path"] == "/unreferenced":
        body = await unreferenced()
    elif scope["path"] == "/sleep":
        await asyncio.sleep(60)
        body = b"slept"
    elif scope["path"] == "/stubborn":
        await stubborn()
    else:
        body = b"ok"
    record("request-done")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
