"""App for tests/test_dispatch.py: the server cannot start it for /dispatch-fails.

Importing this module makes asyncio's task creation refuse the task of a request to
/dispatch-fails, the way a broken event loop or an exhausted interpreter would, so the
server's own step of starting the app fails.
"""

from __future__ import annotations

import asyncio


def _refused(coro) -> bool:
    """Whether `coro` is the request to /dispatch-fails (then closed, to be refused)."""
    frame = getattr(coro, "cr_frame", None)
    scope = frame.f_locals.get("scope") if frame is not None else None
    if isinstance(scope, dict) and scope.get("path") == "/dispatch-fails":
        coro.close()
        return True
    return False


# rsasgi makes a request's task with asyncio.Task (directly when the loop has no task
# factory, else the factory's way): refuse it there.
class _RefusingTask(asyncio.Task):
    def __init__(self, coro, **kwargs):
        if _refused(coro):
            raise RuntimeError("task creation refused by the test app")
        super().__init__(coro, **kwargs)


asyncio.Task = _RefusingTask

_factory_tasks = 0


def _counting_factory(loop, coro, **kwargs):
    global _factory_tasks
    _factory_tasks += 1
    return asyncio.Task(coro, loop=loop, **kwargs)


async def factory_app(scope, receive, send):
    """`app`, with a task factory the app installs at startup (as eager-task or tracing
    setups do): rsasgi must make its request tasks through it. /factory-tasks answers how
    many tasks it has made."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                asyncio.get_running_loop().set_task_factory(_counting_factory)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/factory-tasks":
        body = str(_factory_tasks).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
        return
    await app(scope, receive, send)


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
