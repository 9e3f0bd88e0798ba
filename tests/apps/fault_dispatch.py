"""App for tests/test_dispatch.py: the server cannot start it for /dispatch-fails.

Importing this module makes asyncio's task creation refuse the task of a request to
/dispatch-fails, the way a broken event loop or an exhausted interpreter would, so the
server's own step of starting the app fails (run it with --loop asyncio).
"""

from __future__ import annotations

import asyncio

_create_task = asyncio.BaseEventLoop.create_task


def _refusing_create_task(self, coro, **kwargs):
    frame = getattr(coro, "cr_frame", None)
    scope = frame.f_locals.get("scope") if frame is not None else None
    if isinstance(scope, dict) and scope.get("path") == "/dispatch-fails":
        coro.close()
        raise RuntimeError("task creation refused by the test app")
    return _create_task(self, coro, **kwargs)


asyncio.BaseEventLoop.create_task = _refusing_create_task


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
