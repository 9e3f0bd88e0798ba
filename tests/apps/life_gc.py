"""Apps for the `--gc-freeze` tests in tests/test_worker_lifecycle.py.

`app` (ASGI) and `wsgi_app` answer every request with JSON about the garbage collector:

- `freeze_count`: what `gc.get_freeze_count()` says;
- `startup_frozen`: whether an object made at import, and (ASGI) one made during the
  lifespan startup, are out of the collector's reach;
- `request_cycle_collected`: whether a reference cycle made and dropped during the
  request is still found and freed by `gc.collect()`.
"""

from __future__ import annotations

import gc
import json
import weakref


class Node:
    """A container the collector tracks, able to sit in a reference cycle."""

    def __init__(self) -> None:
        self.other: Node | None = None


AT_IMPORT = Node()
AT_STARTUP: list[Node] = []


def frozen(obj: object) -> bool:
    """Whether a tracked object is in the permanent generation: gc.get_objects() lists
    the objects of the three collected generations only."""
    return gc.is_tracked(obj) and not any(other is obj for other in gc.get_objects())


def report() -> bytes:
    first, second = Node(), Node()
    first.other, second.other = second, first
    gone = weakref.ref(first)
    del first, second
    gc.collect()
    startup = [AT_IMPORT, *AT_STARTUP]
    return json.dumps(
        {
            "freeze_count": gc.get_freeze_count(),
            "startup_frozen": all(frozen(obj) for obj in startup),
            "request_cycle_collected": gone() is None,
        }
    ).encode()


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                AT_STARTUP.append(Node())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = report()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def wsgi_app(environ, start_response):
    body = report()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
