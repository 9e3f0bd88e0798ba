"""App whose lifespan startup reports failure with a message (and then, with
ERR_LIFESPAN_WAIT set, waits for a shutdown that never comes)."""

from __future__ import annotations

import os


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        message = await receive()
        assert message["type"] == "lifespan.startup"
        await send({"type": "lifespan.startup.failed", "message": "err-db-unreachable-4711"})
        if os.environ.get("ERR_LIFESPAN_WAIT"):
            await receive()
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"should never be served"})
