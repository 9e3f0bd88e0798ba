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
    GET /empty-short   declares Content-Length 10, sends an empty body
    GET /              "ok" with the right length

and, sent in pieces, each app recording what became of its sends (read back with
GET /outcome?PATH):
    GET /long-stream   Content-Length 5: "hel", "lo wo", "rld!", then the end
    GET /exact-stream  Content-Length 12: "hello ", "world!", then an empty last piece
    GET /big-exact     Content-Length 300000: one piece of 300000 bytes (over the buffer's
                       high-water mark, so the send waits for the reactor), then the end
    GET /exact-then-empty  Content-Length 12: "hello world!", a pause, an empty piece that
                       says more is coming, then the empty last one
WSGI only, with the write() callable:
    GET /write-long    Content-Length 5: write("hel"), write("lo wo"), write("rld!")
    HEAD /write-head   Content-Length 12: write("hello "), write("world!")
"""

from __future__ import annotations

import asyncio
import time

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


STREAMS = {
    "/long-stream": ("5", [b"hel", b"lo wo", b"rld!"]),
    "/exact-stream": ("12", [b"hello ", b"world!"]),
    "/big-exact": ("300000", [b"b" * 300_000]),
    "/exact-then-empty": ("12", [b"hello world!", None, b""]),
    "/write-long": ("5", [b"hel", b"lo wo", b"rld!"]),
    "/write-head": ("12", [b"hello ", b"world!"]),
    "/write-big": ("300000", [b"b" * 300_000]),
}
#: A pause in a list of pieces: the reactor meanwhile sends what it has.
PAUSE = 0.1
#: What became of each streamed response's sends, by path.
OUTCOMES: dict[str, str] = {}


def _response(path: str) -> tuple[list[tuple[str, str]], bytes]:
    if path == "/empty-short":
        return [("Content-Length", "10")], b""
    if path in FRAMING:
        return FRAMING[path], BODY
    return [("Content-Length", "2")], b"ok"


async def _stream(path: str, send) -> None:
    length, pieces = STREAMS[path]
    headers = [(b"content-type", b"text/plain"), (b"content-length", length.encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    sent = 0
    try:
        for piece in pieces:
            if piece is None:
                await asyncio.sleep(PAUSE)
                continue
            await send({"type": "http.response.body", "body": piece, "more_body": True})
            sent += 1
        # As a FileResponse reading its next chunk: the reactor meanwhile sends what it has.
        await asyncio.sleep(PAUSE)
        await send({"type": "http.response.body", "body": b""})
        OUTCOMES[path] = f"all {sent} sent"
    except Exception as exc:
        OUTCOMES[path] = f"{type(exc).__name__} after {sent}: {exc}"


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/outcome":
        body = OUTCOMES.get(scope["query_string"].decode(), "none").encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
        return
    if scope["path"] in STREAMS:
        await _stream(scope["path"], send)
        return
    framing, body = _response(scope["path"])
    headers = [(b"content-type", b"text/plain")]
    headers += [(name.lower().encode(), value.encode()) for name, value in framing]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _pieces(path: str, pieces: list[bytes]):
    given = 0
    try:
        for piece in pieces:
            if piece is None:
                time.sleep(PAUSE)
                continue
            yield piece
            given += 1
        time.sleep(PAUSE)  # the reactor meanwhile sends what it has
        OUTCOMES[path] = f"all {given} given"
    finally:
        if given < len([piece for piece in pieces if piece is not None]):
            OUTCOMES[path] = f"stopped after {given}"


def _writes(path: str, write, pieces: list[bytes]) -> None:
    written = 0
    try:
        for piece in pieces:
            write(piece)
            written += 1
        OUTCOMES[path] = f"all {written} written"
    except Exception as exc:
        OUTCOMES[path] = f"{type(exc).__name__} after {written}: {exc}"


def wsgi(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/outcome":
        start_response("200 OK", [])
        return [OUTCOMES.get(environ["QUERY_STRING"], "none").encode()]
    if path in STREAMS:
        length, pieces = STREAMS[path]
        headers = [("Content-Type", "text/plain"), ("Content-Length", length)]
        if path.startswith("/write"):
            _writes(path, start_response("200 OK", headers), pieces)
            return []
        start_response("200 OK", headers)
        return _pieces(path, pieces)
    framing, body = _response(path)
    start_response("200 OK", [("Content-Type", "text/plain"), *framing])
    return [body]
