"""The application every server runs in the benchmark: plain ASGI, no framework.

`hello` answers three routes, one per scenario in run.py:

- `GET /`      -> "Hello, world!" (13 bytes)
- `GET /10k`   -> 10 KiB of text
- `POST /echo` -> the request body, read in full, sent back
"""

HELLO = b"Hello, world!"
TEN_KIB = b"x" * 10 * 1024

TEXT = b"text/plain"
BINARY = b"application/octet-stream"


async def _respond(send, status: int, content_type: bytes, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive) -> bytes:
    chunks = []
    more_body = True
    while more_body:
        message = await receive()
        chunks.append(message.get("body", b""))
        more_body = message.get("more_body", False)
    return b"".join(chunks)


async def _lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def hello(scope, receive, send):
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return

    path = scope["path"]
    if path == "/":
        await _respond(send, 200, TEXT, HELLO)
    elif path == "/10k":
        await _respond(send, 200, TEXT, TEN_KIB)
    elif path == "/echo":
        await _respond(send, 200, BINARY, await _read_body(receive))
    else:
        await _respond(send, 404, TEXT, b"Not Found")


# --------------------------------------------------------------------------- WSGI

_WSGI_TEXT = [("Content-Type", "text/plain")]
_WSGI_BINARY = [("Content-Type", "application/octet-stream")]


def wsgi_hello(environ, start_response):
    """The same three routes as `hello`, for WSGI servers (PEP 3333)."""
    path = environ.get("PATH_INFO", "")
    if path == "/":
        start_response("200 OK", [*_WSGI_TEXT, ("Content-Length", "13")])
        return [HELLO]
    if path == "/10k":
        start_response("200 OK", [*_WSGI_TEXT, ("Content-Length", str(len(TEN_KIB)))])
        return [TEN_KIB]
    if path == "/echo":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        start_response("200 OK", [*_WSGI_BINARY, ("Content-Length", str(len(body)))])
        return [body]
    start_response("404 Not Found", [*_WSGI_TEXT, ("Content-Length", "9")])
    return [b"Not Found"]
