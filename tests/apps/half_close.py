"""Apps for tests/test_half_close.py: clients that shut down their sending side.

ASGI `app` and WSGI `wsgi_app`, the same routes:
- any path: "<path> <body length>" once the whole body is read;
- /slow?S: the same after S seconds;
- /listen (ASGI only): after the body, waits for the next message and answers with its type;
- /unread: "<path>" without reading the body;
- /late?S: the same as any path, reading the body only after S seconds;
- /done: the paths whose response the app sent, as JSON.
"""

from __future__ import annotations

import asyncio
import json
import time

done: list[str] = []


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
    size = 0
    if path == "/late":
        await asyncio.sleep(float(scope["query_string"] or 0))
    while path != "/unread":
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    if path == "/done":
        body = json.dumps(done).encode()
    elif path == "/listen":
        heard = await receive()
        body = heard["type"].encode()
    elif path == "/unread":
        body = path.encode()
    else:
        if path == "/slow":
            await asyncio.sleep(float(scope["query_string"] or 0))
        body = f"{path} {size}".encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": body})
    done.append(path)


def wsgi_app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/unread":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "7")])
        done.append(path)
        return [path.encode()]
    if path == "/late":
        time.sleep(float(environ.get("QUERY_STRING") or 0))
    size = len(environ["wsgi.input"].read())
    if path == "/done":
        body = json.dumps(done).encode()
    else:
        if path == "/slow":
            time.sleep(float(environ.get("QUERY_STRING") or 0))
        body = f"{path} {size}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    done.append(path)
    return [body]
