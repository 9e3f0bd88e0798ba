"""Whether `receive` and `send` pass for coroutine functions (tests/test_dispatch.py), as
uvicorn's `async def` callables do: asgiref's `async_to_sync(send)`, which every Channels sync
consumer makes, warned of a "non-async-marked callable" otherwise.

Each scope (http, or a websocket it accepts) answers with JSON: for each callable, what
`inspect.iscoroutinefunction`, `asyncio.iscoroutinefunction` (3.10-3.13) and asgiref's
`iscoroutinefunction` say, and the warnings `async_to_sync(send)` raised.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import warnings

from asgiref.sync import async_to_sync
from asgiref.sync import iscoroutinefunction as asgiref_iscoroutinefunction


def marks(receive, send) -> dict:
    result = {}
    for name, fn in (("receive", receive), ("send", send)):
        result[name] = {
            "inspect": inspect.iscoroutinefunction(fn),
            "asgiref": asgiref_iscoroutinefunction(fn),
        }
        if hasattr(asyncio, "iscoroutinefunction"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                result[name]["asyncio"] = asyncio.iscoroutinefunction(fn)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async_to_sync(send)
    result["warnings"] = [str(warning.message) for warning in caught]
    return result


async def app(scope, receive, send):
    if scope["type"] == "http":
        body = json.dumps(marks(receive, send)).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
    elif scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": json.dumps(marks(receive, send))})
        await send({"type": "websocket.close"})
