"""An ASGI app for tests/test_logs.py: responses with known headers and bodies, the request
headers it saw, and WebSockets closed by either side.

Routes:
  /hello           "hello" (5 bytes), content-type text/plain, x-served-by: logs-app
  /headers         the request headers as JSON, names lower-cased
  /empty           204, no body
  /ws/echo         WebSocket: accepts, echoes text until the client closes
  /ws/app-close    WebSocket: accepts, receives one message, closes with 4001
"""

from __future__ import annotations

import json


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await websocket(scope, receive, send)
        return
    path = scope["path"]
    if path == "/headers":
        seen = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        body = json.dumps(seen).encode()
        headers = [(b"content-type", b"application/json")]
        status = 200
    elif path == "/empty":
        body, headers, status = b"", [], 204
    else:
        body = b"hello"
        headers = [(b"content-type", b"text/plain"), (b"x-served-by", b"logs-app")]
        status = 200
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def websocket(scope, receive, send):
    message = await receive()
    assert message["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if scope["path"] == "/ws/app-close":
            await send({"type": "websocket.close", "code": 4001})
            return
        await send({"type": "websocket.send", "text": message.get("text") or ""})
