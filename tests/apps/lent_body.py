"""Large response bodies sent from one long-lived `bytes` object, and a route that says how
many references to it exist: rsasgi writes a large body from the app's object in place and
must release it once written (see tests/test_memory.py).

- `GET /big`  -> BIG (256 KiB), in one body message (`app`) or a one-item list (`wsgi_app`)
- `GET /refs` -> sys.getrefcount(BIG)
- `POST /echo` -> the request body, read whole into a new `bytes` object per request
"""

import sys

BIG = bytes(range(256)) * 1024


def _answer(path: str) -> bytes:
    return BIG if path == "/big" else str(sys.getrefcount(BIG)).encode()


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/echo":
        parts = []
        while True:
            message = await receive()
            parts.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(parts)
    else:
        body = _answer(scope["path"])
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def wsgi_app(environ, start_response):
    if environ["PATH_INFO"] == "/echo":
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    else:
        body = _answer(environ["PATH_INFO"])
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
