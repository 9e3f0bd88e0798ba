"""Apps for tests/test_http_protocol.py's wrong Content-Length tests: responses whose
Content-Length header disagrees with the body the app sends in one piece.

ASGI `app` and WSGI `wsgi`, both:
    GET /long   declares Content-Length 5, sends the 12 bytes b"hello world!"
    GET /short  declares Content-Length 20, sends the same 12 bytes
    GET /       "ok" with the right length
"""

from __future__ import annotations

BODY = b"hello world!"
DECLARED = {"/long": 5, "/short": 20}


def _response(path: str) -> tuple[bytes, bytes]:
    if path in DECLARED:
        return str(DECLARED[path]).encode(), BODY
    return b"2", b"ok"


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    length, body = _response(scope["path"])
    headers = [(b"content-type", b"text/plain"), (b"content-length", length)]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def wsgi(environ, start_response):
    length, body = _response(environ["PATH_INFO"])
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", length.decode())])
    return [body]
