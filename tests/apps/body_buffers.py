"""Bodies an ASGI app sends as buffers other than bytes (tests/test_body_buffers.py).

`app`, a raw ASGI app:
GET /view            the body as memoryview(b"hello memoryview")
GET /view-large      a 64 KiB memoryview, of a bytearray the app changes once send() returns
GET /view-stream     three memoryview chunks with more_body, then an empty last one
GET /strided         memoryview(b"abcdef")[::2], a view that is not contiguous: b"ace"
GET /ints            memoryview(array("i", [1, 2])): its 8 bytes, in the machine's order
GET /not-a-buffer    tries 5, "text" and [104, 105] as bodies, each refused; answers with
                     the errors, one a line
websocket /ws        sends memoryview(b"mv-bytes"), then a strided view (b"ace"), then closes

`starlette_app`: GET /response is Response(content=memoryview(...)), GET /stream a
StreamingResponse of memoryview chunks (Starlette 1.10 renders bodies so).
"""

from __future__ import annotations

from array import array

from starlette.applications import Starlette
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

LARGE = 64 * 1024


async def _start(send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/octet-stream")],
        }
    )


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "bytes": memoryview(b"mv-bytes")})
        await send({"type": "websocket.send", "bytes": memoryview(b"abcdef")[::2]})
        await send({"type": "websocket.close", "code": 1000})
        return
    path = scope["path"]
    await _start(send)
    if path == "/view":
        await send({"type": "http.response.body", "body": memoryview(b"hello memoryview")})
    elif path == "/view-large":
        data = bytearray(b"a" * LARGE)
        await send({"type": "http.response.body", "body": memoryview(data), "more_body": True})
        data[:] = b"b" * LARGE  # what was sent is what the view held at the send
        await send({"type": "http.response.body", "body": b""})
    elif path == "/view-stream":
        for number in range(3):
            chunk = memoryview(b"chunk%d\n" % number)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": memoryview(b"")})
    elif path == "/strided":
        await send({"type": "http.response.body", "body": memoryview(b"abcdef")[::2]})
    elif path == "/ints":
        await send({"type": "http.response.body", "body": memoryview(array("i", [1, 2]))})
    elif path == "/not-a-buffer":
        errors = []
        for value in (5, "text", [104, 105]):
            try:
                await send({"type": "http.response.body", "body": value, "more_body": True})
            except TypeError as exc:
                errors.append(f"TypeError: {exc}")
            else:
                errors.append(f"accepted {value!r}")
        await send({"type": "http.response.body", "body": "\n".join(errors).encode()})


async def _response(request):
    return Response(content=memoryview(b"hello memoryview"), media_type="text/plain")


async def _stream(request):
    async def chunks():
        for number in range(3):
            yield memoryview(b"chunk%d\n" % number)

    return StreamingResponse(chunks(), media_type="text/plain")


starlette_app = Starlette(routes=[Route("/response", _response), Route("/stream", _stream)])
