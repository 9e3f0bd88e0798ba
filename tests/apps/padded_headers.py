"""Apps whose response header values carry spaces and tabs around them, as Django's WSGI
handler sends every Set-Cookie (`c.output(header="")` begins with a space)."""

from __future__ import annotations

HEADERS = [("Set-Cookie", " c1=x; Path=/"), ("X-Tab", "\tv \t"), ("X-Blank", "  ")]


def wsgi_app(environ, start_response):
    start_response("200 OK", [*HEADERS, ("Content-Length", "2")])
    return [b"ok"]


async def asgi_app(scope, receive, send):
    if scope["type"] != "http":
        return
    headers = [(name.lower().encode(), value.encode()) for name, value in HEADERS]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})
