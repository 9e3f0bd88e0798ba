"""App that does not support lifespan: it raises on any non-HTTP scope."""

from __future__ import annotations


async def app(scope, receive, send):
    if scope["type"] != "http":
        raise RuntimeError("err-lifespan-unsupported-99")
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": b"ok-no-lifespan"})
