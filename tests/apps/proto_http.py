"""HTTP/1.x protocol behaviour app (tests/test_http_protocol.py).

Routes:
  /               "hello world" with Content-Length: 11 (the body is sent for HEAD too)
  /nolength       "hello world" in three body messages 10 ms apart, no Content-Length
  /nolength-fast  the same three messages sent back to back
  /length-parts   Content-Length: 11, body in two messages
  /list-headers   response headers given as [name, value] lists, x-list twice
  /empty          empty 200 body with Content-Length: 0
  /sleep?ms=N&tag=T   writes marker T.started, sleeps N ms, answers "T"
  /echo           reads the whole request body, answers it with Content-Length
  /app-server     sets its own "server: custom-app" header
  /port           answers the scope's server port
  /status?code=N  status N, with "status N" as the body
  /late-end       without reading the body: Content-Length 5, "hello" with more_body, and the
                  last (empty) message 300 ms later
"""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs

from proto_raw import write_marker


async def read_body(receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return body
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return body


async def respond(send, body: bytes, headers=None, status=200, length=True):
    headers = list(headers or [])
    if length:
        headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


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
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    text = [(b"content-type", b"text/plain")]
    if path == "/":
        await read_body(receive)
        await respond(send, b"hello world", text)
    elif path == "/status":
        code = int(query["code"])
        await respond(send, b"status %d" % code, text, status=code)
    elif path == "/late-end":
        headers = text + [(b"content-length", b"5")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"hello", "more_body": True})
        await asyncio.sleep(0.3)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    elif path == "/noread":
        await respond(send, b"not read", text)
    elif path in ("/nolength", "/nolength-fast"):
        await read_body(receive)
        await send({"type": "http.response.start", "status": 200, "headers": text})
        for part in (b"hel", b"lo ", b"world"):
            if path == "/nolength":
                await asyncio.sleep(0.01)
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    elif path == "/length-parts":
        await read_body(receive)
        headers = text + [(b"content-length", b"11")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"hello ", "more_body": True})
        await send({"type": "http.response.body", "body": b"world", "more_body": False})
    elif path == "/list-headers":
        # The spec types headers as Iterable[[bytes, bytes]]: lists work as well as tuples.
        await read_body(receive)
        headers = [[b"content-type", b"text/plain"], [b"x-list", b"1"], [b"x-list", b"2"]]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"lists"})
    elif path == "/empty":
        await read_body(receive)
        await respond(send, b"", text)
    elif path == "/sleep":
        await read_body(receive)
        tag = query.get("tag", "x")
        write_marker(f"{tag}.started", "1")
        await asyncio.sleep(int(query.get("ms", "0")) / 1000)
        await respond(send, tag.encode(), text)
    elif path == "/echo":
        body = await read_body(receive)
        await respond(send, body, [(b"content-type", b"application/octet-stream")])
    elif path == "/app-server":
        await read_body(receive)
        await respond(send, b"ok", text + [(b"server", b"custom-app")])
    elif path == "/port":
        await read_body(receive)
        await respond(send, str(scope["server"][1]).encode(), text)
    else:
        await read_body(receive)
        await respond(send, b"not found", text, status=404)
