"""App whose lifespan startup never ends (a database that does not answer): it writes
"startup" to $LIFE_HANG_FILE, then waits; if cancelled, it writes "cancelled"."""

from __future__ import annotations

import asyncio
import os


def _record(event: str) -> None:
    with open(os.environ["LIFE_HANG_FILE"], "a") as f:
        f.write(event + "\n")


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        _record("startup")
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            _record("cancelled")
            raise
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"should never be served"})
