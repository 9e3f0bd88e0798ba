"""Apps for tests/test_http_protocol.py's framing tests: responses whose Content-Length
header disagrees with the body the app sends in one piece, or that carry framing headers the
server owns.

ASGI `app` and WSGI `wsgi`, both:
    GET /long          declares Content-Length 5, sends the 12 bytes b"hello world!"
    GET /short         declares Content-Length 20, sends the same 12 bytes
    GET /cl-twice      Content-Length 12 twice, the 12 bytes
    GET /cl-space      Content-Length " 12 ", the 12 bytes
    GET /cl-conflict   Content-Length 12 and 5
    GET /cl-text       Content-Length "twelve"
    GET /te-cl         Transfer-Encoding: chunked and Content-Length 12
    GET /hop           Connection: close, Keep-Alive, Upgrade and TE, the 12 bytes
    GET /              "ok" with the right length
"""

from __future__ import annotations

BODY = b"hello world!"
FRAMING = {
    "/long": [("Content-Length", "5")],
    "/short": [("Content-Length", "20")],
    "/cl-twice": [("Content-Length", "12"), ("Content-Length", "12")],
    "/cl-space": [("Content-Length", " 12 ")],
    "/cl-conflict": [("Content-Length", "12"), ("Content-Length", "5")],
    "/cl-text": [("Content-Length", "twelve")],
    "/te-cl": [("Transfer-Encoding", "chunked"), ("Content-Length", "12")],
    "/hop": [
        ("Connection", "close"),
        ("Keep-Alive", "timeout=5"),
        ("Upgrade", "h2c"),
        ("TE", "trailers"),
        ("Content-Length", "12"),
    ],
}


def _response(path: str) -> tuple[list[tuple[str, str]], bytes]:
    if path in FRAMING:
        return FRAMING[path], BODY
    return [("Content-Length", "2")], b"ok"


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    framing, body = _response(scope["path"])
    headers = [(b"content-type", b"text/plain")]
    headers += [(name.lower().encode(), value.encode()) for name, value in framing]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def wsgi(environ, start_response):
    framing, body = _response(environ["PATH_INFO"])
    start_response("200 OK", [("Content-Type", "text/plain"), *framing])
    return [body]
