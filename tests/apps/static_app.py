"""ASGI app behind --static-map for tests/test_static.py: it shows which requests reach it.

Every response carries X-App: static_app, so a test tells the app's answers from the server's.
  GET /                 200 "app ok"
  GET /static/dynamic   200 "app dynamic" (a dynamic route under the static prefix)
  anything else         404 "app 404 METHOD PATH" (the app's own not-found page; the request
                        body, if any, is read first)
"""

from __future__ import annotations


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    method, path = scope["method"], scope["path"]
    if path == "/":
        status, body = 200, b"app ok"
    elif path == "/static/dynamic":
        status, body = 200, b"app dynamic"
    else:
        status, body = 404, f"app 404 {method} {path}".encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", b"%d" % len(body)),
                (b"x-app", b"static_app"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
