"""Apps for tests/test_app_errors.py: an app that raises while a reference cycle holds its
request, as Werkzeug's `environ["werkzeug.request"]` does, with the cyclic garbage collector
off so that nothing but rsasgi can give the request's place back.

ASGI `app` and WSGI `wsgi`: GET /raise raises; GET / answers "ok".
"""

from __future__ import annotations

import gc

gc.disable()


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/raise":
        scope["cycle"] = (scope, receive, send)
        raise RuntimeError("raised with the request in a reference cycle")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def wsgi(environ, start_response):
    if environ["PATH_INFO"] == "/raise":
        environ["cycle"] = (environ, start_response)
        raise RuntimeError("raised with the request in a reference cycle")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
