"""ASGI app for tests/test_trailers.py: the `http.response.trailers` extension.

/trailers: body in two messages, then trailers in two messages (grpc-status, then a checksum);
  ?extra=NAME:VALUE adds that field to the second.
/misuse?case=...: sends trailers wrongly and reports what send() raised at /observed.
"""

from __future__ import annotations

import hashlib
import json

OBSERVED: dict[str, str] = {}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if path == "/extensions":
        body = json.dumps(sorted(scope.get("extensions", {}))).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
        return
    if path == "/observed":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": json.dumps(OBSERVED).encode()})
        return
    if path == "/trailers":
        parts = [b"hello, ", b"trailers"]
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"trailer", b"grpc-status, x-sha")],
                "trailers": True,
            }
        )
        await send({"type": "http.response.body", "body": parts[0], "more_body": True})
        await send({"type": "http.response.body", "body": parts[1], "more_body": False})
        await send(
            {
                "type": "http.response.trailers",
                "headers": [(b"grpc-status", b"0")],
                "more_trailers": True,
            }
        )
        digest = hashlib.sha256(b"".join(parts)).hexdigest().encode()
        fields = [(b"x-sha", digest)]
        extra = scope["query_string"].partition(b"extra=")[2]
        if extra:
            name, _, value = extra.partition(b":")
            fields.append((name, value))
        await send({"type": "http.response.trailers", "headers": fields})
        return
    if path == "/misuse":
        case = scope["query_string"].decode()
        announced = case != "unannounced"
        await send(
            {"type": "http.response.start", "status": 200, "headers": [], "trailers": announced}
        )
        more = case == "before-body-end"
        await send({"type": "http.response.body", "body": b"x", "more_body": more})
        try:
            await send({"type": "http.response.trailers", "headers": [(b"a", b"b")]})
            OBSERVED[case] = "no error"
        except Exception as exc:  # noqa: BLE001 - the test reads what was raised
            OBSERVED[case] = f"{type(exc).__name__}: {exc}"
        if more:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            await send({"type": "http.response.trailers", "headers": []})
        return
