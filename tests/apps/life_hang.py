"""App whose lifespan startup does not end by itself; $LIFE_HANG_MODE says how:

- "async" (the default): it awaits something that never comes (a database that does not
  answer); if cancelled, it writes "cancelled";
- "sync": it blocks the event loop in a system call (a synchronous connect);
- "c": it blocks the event loop in a long call into C code (a key derivation), which
  Python's signal handlers wait for;
- "signal": it sends its own process SIGTERM, then completes the startup at once, before
  the loop can act on the signal; it writes "shutdown" when asked to shut down.

Each writes "startup" to $LIFE_HANG_FILE first."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time


def _record(event: str) -> None:
    with open(os.environ["LIFE_HANG_FILE"], "a") as f:
        f.write(event + "\n")


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        _record("startup")
        mode = os.environ.get("LIFE_HANG_MODE", "async")
        if mode == "sync":
            time.sleep(3600)
        elif mode == "c":
            hashlib.pbkdf2_hmac("sha256", b"secret", b"salt", 300_000_000)
        elif mode == "signal":
            os.kill(os.getpid(), signal.SIGTERM)
            await send({"type": "lifespan.startup.complete"})
            await receive()
            _record("shutdown")
            await send({"type": "lifespan.shutdown.complete"})
            return
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            _record("cancelled")
            raise
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"should never be served"})
