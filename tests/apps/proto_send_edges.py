"""An ASGI app for edge cases of `send()` (tests/test_streaming.py, tests/test_http2.py).

GET /large-final       the whole 200 kB body in its one and last `http.response.body`; records
                       whether that send() returned or raised
GET /outcome           what the last /large-final's send() did: "returned" or the exception
GET /raise-after-start sends `http.response.start` (Content-Length 5), waits, then raises
                       before any body: nothing has gone out yet, so the client gets a 500
GET /no-content        204 with a body (b"null", as JSONResponse(None, 204) sends)
GET /not-modified      304 with a body
"""

from __future__ import annotations

import asyncio

LARGE = b"z" * 200_000
OUTCOME = {"large-final": "none"}


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/large-final":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            await send({"type": "http.response.body", "body": LARGE})
        except Exception as exc:
            OUTCOME["large-final"] = f"raised {type(exc).__name__}: {exc}"
            raise
        OUTCOME["large-final"] = "returned"
        return
    if path == "/raise-after-start":
        headers = [(b"content-length", b"5")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await asyncio.sleep(0.2)
        raise RuntimeError("failed between the head and the body")
    if path in ("/no-content", "/not-modified"):
        status = 204 if path == "/no-content" else 304
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"null"})
        return
    body = OUTCOME["large-final"].encode() if path == "/outcome" else b"ok"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
