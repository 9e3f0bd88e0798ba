"""App for tests/test_app_errors.py: one path per way an app can go wrong.

Every invalid `send()` is wrapped so the exception the server raises is recorded
(readable at /observed) and then re-raised, as a real app would let it escape. /slow notes
there that it has started, then sleeps 1 s.
"""

from __future__ import annotations

import asyncio
import json
import sys

observed: dict[str, str] = {}


async def _respond(send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


INVALID = {
    "/bad-type": [{"type": "http.response.bogus"}],
    "/status-str": [{"type": "http.response.start", "status": "200", "headers": []}],
    "/status-1000": [{"type": "http.response.start", "status": 1000, "headers": []}],
    "/headers-str": [
        {"type": "http.response.start", "status": 200, "headers": [("x-err", "value")]}
    ],
    "/header-crlf": [
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"x-err", b"a\r\nx-injected: 1")],
        }
    ],
    "/body-before-start": [{"type": "http.response.body", "body": b"too early"}],
}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if path == "/ok":
        await _respond(send, 200, b"ok")
    elif path == "/slow":
        observed["/slow"] = "started"
        await asyncio.sleep(1.0)
        await _respond(send, 200, b"slow-done")
    elif path == "/observed":
        await _respond(send, 200, json.dumps(observed).encode())
    elif path == "/raise-before":
        raise ValueError("err-boom-before-start")
    elif path.startswith("/raise-quoted"):
        raise ValueError("err-boom-quoted-path")
    elif path == "/exit":
        sys.exit("err-exit-in-a-view")
    elif path == "/cancel":
        # The app's own CancelledError (an anyio scope's leaking out, say), not a shutdown.
        raise asyncio.CancelledError("err-cancelled-by-the-app")
    elif path in ("/whole-length-then-raise", "/whole-length-then-return"):
        # All of the Content-Length sent, but never the last message: the response is
        # complete by its length, whatever the app does next.
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"5")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"hello", "more_body": True})
        await asyncio.sleep(0.2)
        if path.endswith("raise"):
            raise RuntimeError("err-after-the-whole-length")
    elif path == "/oserror-after-response":
        # A background task's failure, after a complete response.
        await _respond(send, 200, b"done")
        await asyncio.sleep(0.3)
        open("/nonexistent/err-background-file")  # noqa: ASYNC230, SIM115
    elif path == "/send-after-response":
        # One more body once the response is complete: at once, and once the reactor has
        # taken the last one. Both are the app's mistake, told the same way.
        await _respond(send, 200, b"done")
        errors = []
        for pause in (0, 0.3):
            await asyncio.sleep(pause)
            try:
                await send({"type": "http.response.body", "body": b"more"})
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(f"{type(exc).__name__}: {exc}")
        observed["/send-after-response"] = errors
    elif path == "/raise-after":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": b"partial-body", "more_body": True})
        # Let the reactor put the chunk on the wire before the app fails.
        await asyncio.sleep(0.3)
        raise RuntimeError("err-boom-after-start")
    elif path == "/no-response":
        return
    elif path in INVALID:
        for message in INVALID[path]:
            try:
                await send(message)
            except Exception as exc:
                observed[path] = f"{type(exc).__name__}: {exc}"
                raise
        observed[path] = "NO-EXCEPTION"
    else:
        await _respond(send, 404, b"not found")
