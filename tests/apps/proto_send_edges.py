"""An ASGI app for edge cases of `send()` (tests/test_streaming.py, tests/test_http2.py).

GET /large-final       the whole 200 kB body in its one and last `http.response.body`; records
                       whether that send() returned or raised
GET /outcome           what the last /large-final's send() did: "returned" or the exception
GET /watch             streams ticks while one task waits in receive() for the disconnect and
                       another receive() is made and cancelled at once (Starlette's
                       is_disconnected); records whether the watcher saw the disconnect
GET /watched           what the last /watch's watcher saw
GET /ticks             streams ticks until send() raises (a HEAD request: once its head is out)
GET /ticked            how the last /ticks ended
GET /checked-ticks     reads the body, makes one receive() and cancels it (Starlette's
                       is_disconnected), then streams ticks as /ticks does
GET /raise-after-start sends `http.response.start` (Content-Length 5), waits, then raises
                       before any body: nothing has gone out yet, so the client gets a 500
GET /no-content        204 with a body (b"null", as JSONResponse(None, 204) sends)
GET /not-modified      304 with a body
GET /not-modified-length  304 with the Content-Length of the representation, and no body
GET /no-content-length  204 with a Content-Length of 4 and a body (b"null")
POST /finalizer        a receive() made while the body has not come, with a weakref.finalize
                       that calls send(), then cancelled and forgotten: the server's reference
                       is the last, and the next receive() that waits releases it; the
                       response is b"from-finalizer\n" (sent by the finalizer) then
                       b"body:" + the request body
GET /finalized         whether the last /finalizer's finalizer ran
GET /spin              listens for the disconnect through receive() (as Django's handler
                       does), then sends body messages in a loop that awaits nothing else,
                       until GET /stop; each send after the client left goes nowhere
GET /stop              ends /spin's loop; GET /spun says how many sends it made
"""

from __future__ import annotations

import asyncio
import weakref

LARGE = b"z" * 200_000
OUTCOME = {
    "large-final": "none",
    "watch": "none",
    "ticks": "none",
    "finalizer": "none",
    "spin": "none",
}
STOP_SPINNING = asyncio.Event()


async def _spin(receive, send) -> None:
    """Only send() awaits in the loop: if a send that goes nowhere never let the event loop
    run, nothing else would, and GET /stop would never be answered."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await receive()  # the request's (empty) body
    # Listening, as Django's handler does: a receive() that waits for the disconnect.
    listener = asyncio.ensure_future(receive())
    await asyncio.sleep(0)
    sends = 0
    OUTCOME["spin"] = "spinning"
    while not STOP_SPINNING.is_set():
        await send({"type": "http.response.body", "body": b"x" * 1024, "more_body": True})
        sends += 1
    OUTCOME["spin"] = f"stopped after {sends} sends"
    listener.cancel()


async def _ticks(send) -> None:
    OUTCOME["ticks"] = "ticking"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    try:
        for _ in range(200):  # 10 s at most
            await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
            await asyncio.sleep(0.05)
    except OSError as exc:
        OUTCOME["ticks"] = f"stopped: {type(exc).__name__}"
        raise
    OUTCOME["ticks"] = "ran to the end"
    await send({"type": "http.response.body", "body": b""})


async def _watch(scope, receive, send) -> None:
    async def watcher():
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return

    OUTCOME["watch"] = "watching"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    watching = asyncio.ensure_future(watcher())
    await asyncio.sleep(0.05)  # the watcher now waits in receive()
    polled = asyncio.ensure_future(receive())
    await asyncio.sleep(0)
    polled.cancel()
    try:
        while not watching.done():
            await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
            await asyncio.sleep(0.05)
    except OSError:
        pass  # the client is gone; the watcher should hear of it too
    try:
        await asyncio.wait_for(watching, 3)
        OUTCOME["watch"] = "disconnect seen"
    except asyncio.TimeoutError:
        OUTCOME["watch"] = "the watcher never heard of the disconnect"


async def _finalizer(receive, send) -> None:
    OUTCOME["finalizer"] = "not run"
    await send({"type": "http.response.start", "status": 200, "headers": []})

    def finalize():
        OUTCOME["finalizer"] = "ran"
        send({"type": "http.response.body", "body": b"from-finalizer\n", "more_body": True})

    waiter = receive()  # the client holds its body back: this one waits
    weakref.finalize(waiter, finalize)
    waiter.cancel()
    del waiter
    body = b""
    more = True
    while more:  # the first of these waits too, and lets go of the cancelled one
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    await send({"type": "http.response.body", "body": b"body:" + body})


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
    if path == "/ticks":
        await _ticks(send)
        return
    if path == "/checked-ticks":
        # Starlette's `await request.body()` then one `is_disconnected()`: a receive()
        # made and cancelled; no one listens afterwards.
        await receive()
        try:
            await asyncio.wait_for(receive(), 0.01)
        except asyncio.TimeoutError:
            pass
        await _ticks(send)
        return
    if path == "/watch":
        await _watch(scope, receive, send)
        return
    if path == "/raise-after-start":
        headers = [(b"content-length", b"5")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await asyncio.sleep(0.2)
        raise RuntimeError("failed between the head and the body")
    if path == "/finalizer":
        await _finalizer(receive, send)
        return
    if path == "/spin":
        await _spin(receive, send)
        return
    if path == "/stop":
        STOP_SPINNING.set()
    if path == "/not-modified-length":
        headers = [(b"content-length", b"1234")]
        await send({"type": "http.response.start", "status": 304, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/no-content-length":
        headers = [(b"content-length", b"4")]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b"null"})
        return
    if path in ("/no-content", "/not-modified"):
        status = 204 if path == "/no-content" else 304
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"null"})
        return
    outcome = {
        "/outcome": "large-final",
        "/watched": "watch",
        "/ticked": "ticks",
        "/finalized": "finalizer",
        "/spun": "spin",
    }.get(path)
    body = OUTCOME[outcome].encode() if outcome else b"ok"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
