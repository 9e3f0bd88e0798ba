"""ASGI apps for tests/test_dispatch.py that are not plain coroutine functions: a request's
task must await whatever calling the app gives, as `await app(scope, receive, send)` does.

- `awaitable_app`: calling it returns an object with `__await__` (no coroutine).
- `not_awaitable_app`: calling it returns None, which cannot be awaited: a 500 and a log.
- `raising_app`: calling it raises at once, before any awaiting: a 500 and a log.
- `introspecting_app`: a coroutine function that looks at its own task while it runs, as
  anyio's cancel scopes and debuggers do (the task's repr, its coroutine's state, its stack).
"""

from __future__ import annotations

import asyncio
import inspect


async def _respond(send, text: str) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": text.encode()})


class _Awaitable:
    def __init__(self, send):
        self.send = send

    def __await__(self):
        return _respond(self.send, "awaited").__await__()


class _AwaitableApp:
    def __call__(self, scope, receive, send):
        return _Awaitable(send)


class _NotAwaitableApp:
    def __call__(self, scope, receive, send):
        return None


class _RaisingApp:
    def __call__(self, scope, receive, send):
        raise LookupError("raised before any await")


awaitable_app = _AwaitableApp()
not_awaitable_app = _NotAwaitableApp()
raising_app = _RaisingApp()


async def introspecting_app(scope, receive, send):
    task = asyncio.current_task()
    coro = task.get_coro()
    seen = [
        "task" if repr(task).startswith("<Task") else repr(task),
        inspect.getcoroutinestate(coro),
        "stack" if task.get_stack() else "no stack",
    ]
    await asyncio.sleep(0)
    seen.append(inspect.getcoroutinestate(coro))
    await _respond(send, " ".join(seen))
