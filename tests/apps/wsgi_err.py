"""Plain PEP 3333 app that gets things wrong (tests/test_wsgi_errors.py).

Markers go to $WSGI_MARKER_DIR. Routes (by PATH_INFO):
  /ok                       "ok"
  /raise-before             raises before start_response
  /raise-after-start        calls start_response, then raises before returning
  /raise-first-yield        generator raising before its first chunk
  /raise-midway             generator: yields b"partial-body", then raises
  /close-raises             b"whole-body" (with its Content-Length) in a list whose close() raises
  /midway-and-close-raise   iterable: yields b"partial-body", then raises; its close() raises too
  /midway-and-getattr-raise the same, but looking its close() up raises (a __getattr__)
  /return-none              start_response, then returns None
  /no-start-response        returns [b"never started"] without calling start_response
  /yield-str                start_response, then yields a str
  /write-str                start_response, then write("a str")
  /header?case=C            start_response with one bad header (see BAD_HEADERS)
  /latin1-header            "ok" with X-Latin: "caf\xe9 \xff" (PEP 3333: latin-1 str)
  /status?case=C            start_response with a bad status (see BAD_STATUS)
  /exc-before               start_response(200, X-First), then on an exception a second call with
                            exc_info: "500 Internal Server Error" and the page b"error page"
  /exc-after-empty          generator: yields b"", then on an exception start_response with
                            exc_info: "500 Internal Server Error" and the page b"error page"
  /exc-after?tag=T          generator: yields b"partial-body", then calls start_response with
                            exc_info; T.log records whether it re-raised
  /exc-after-write?tag=T    write(b"written-body"), then start_response with exc_info; with
                            &reenter=1 an exc_info whose indexing calls write(b"-reentered")
                            (the app's code, run by the server as it handles exc_info)
  /twice?tag=T              start_response twice without exc_info; T.log records the second call
  /stderr-line              writes a line to wsgi.errors, raises
  /del-reads-input?tag=T    generator yielding a 2 KiB bytes subclass whose __del__ reads
                            wsgi.input and records it in T.log: for HEAD the server drops the
                            chunk unsent, and the app's __del__ runs inside the server
"""

from __future__ import annotations

import sys

from wsgi_common import mark, query

BAD_HEADERS = {
    "name-space": ("Bad Name", "value"),
    "name-colon": ("X-Colon:", "value"),
    "name-empty": ("", "value"),
    "name-newline": ("X-New\r\nInjected", "value"),
    "value-crlf": ("X-Evil", "one\r\nInjected: yes"),
    "value-lf": ("X-Evil-Lf", "one\nInjected: yes"),
    "value-cr": ("X-Evil-Cr", "one\rInjected: yes"),
    "value-nul": ("X-Nul", "a\x00b"),
    "value-del": ("X-Del", "a\x7fb"),
    "value-beyond-latin-1": ("X-Beyond", "caf\u00e9 \u2713"),
    "name-bytes": (b"X-Bytes-Name", "value"),
    "value-bytes": ("X-Bytes-Value", b"value"),
    "value-int": ("X-Int-Value", 5),
}

BAD_STATUS = {
    "bytes": b"200 OK",
    "int": 200,
    "no-code": "OK",
    "short-code": "20 OK",
    "long-code": "2000 OK",
    "letters": "abc Fine",
    "empty": "",
    "crlf": "200 OK\r\nInjected: yes",
    "beyond-latin-1": "200 Ok\u00e9\u20ac",
}


class ReenteringExcInfo:
    """An exc_info that writes to the response when indexed."""

    def __init__(self, info, write):
        self.info = info
        self.write = write

    def __getitem__(self, index):
        self.write(b"-reentered")
        return self.info[index]


class DelBytes(bytes):
    """Bytes whose finaliser calls back into the server (reads wsgi.input)."""

    def __del__(self):
        read = self.environ["wsgi.input"].read()
        mark(f"{self.tag}.log", f"del read {read!r}")


def del_bytes(environ, tag: str) -> DelBytes:
    chunk = DelBytes(b"d" * 2048)
    chunk.environ, chunk.tag = environ, tag
    return chunk


def ok(start_response, body: bytes = b"ok"):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


class _CloseRaises(list):
    def close(self):
        raise RuntimeError("wsgi-boom-in-close")


class _MidwayAndCloseRaise:
    def __iter__(self):
        yield b"partial-body"
        raise RuntimeError("wsgi-boom-midway-before-close")

    def close(self):
        raise RuntimeError("wsgi-boom-in-close-after-midway")


class _MidwayAndGetattrRaise:
    def __iter__(self):
        yield b"partial-body"
        raise RuntimeError("wsgi-boom-midway-before-getattr")

    def __getattr__(self, name):
        raise ValueError(f"wsgi-boom-getattr-{name}")


def app(environ, start_response):
    path = environ["PATH_INFO"]
    q = query(environ)
    tag = q.get("tag", "t")

    if path == "/ok":
        return ok(start_response)

    if path == "/raise-before":
        raise ValueError("wsgi-boom-before-start")

    if path == "/raise-after-start":
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Started", "yes")])
        raise ValueError("wsgi-boom-after-start-response")

    if path == "/raise-first-yield":
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Started", "yes")])

        def gen():
            raise ValueError("wsgi-boom-first-yield")
            yield b"never"  # pragma: no cover

        return gen()

    if path == "/close-raises":
        start_response("200 OK", [("Content-Length", "10")])
        return _CloseRaises([b"whole-body"])
    if path == "/midway-and-getattr-raise":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _MidwayAndGetattrRaise()

    if path == "/midway-and-close-raise":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _MidwayAndCloseRaise()
    if path == "/raise-midway":
        start_response("200 OK", [("Content-Type", "text/plain")])

        def gen():
            yield b"partial-body"
            raise RuntimeError("wsgi-boom-midway")

        return gen()

    if path == "/return-none":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return None

    if path == "/no-start-response":
        return [b"never started"]

    if path == "/yield-str":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return ["a str, not bytes"]

    if path == "/write-str":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write("a str, not bytes")
        return []

    if path == "/header":
        name, value = BAD_HEADERS[q["case"]]
        start_response("200 OK", [("Content-Type", "text/plain"), (name, value)])
        return [b"must not be sent"]

    if path == "/latin1-header":
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Latin", "caf\xe9 \xff")])
        return [b"ok"]

    if path == "/status":
        start_response(BAD_STATUS[q["case"]], [("Content-Type", "text/plain")])
        return [b"must not be sent"]

    if path == "/exc-before":
        start_response(
            "200 OK",
            [("Content-Type", "application/json"), ("X-First", "yes"), ("Content-Length", "99")],
        )
        try:
            raise KeyError("handled-by-error-handler")
        except KeyError:
            start_response(
                "500 Internal Server Error",
                [("Content-Type", "text/plain"), ("X-Error-Page", "yes")],
                sys.exc_info(),
            )
            return [b"error page"]

    if path == "/exc-after-empty":
        start_response("200 OK", [("Content-Type", "application/json"), ("X-First", "yes")])

        def gen():
            yield b""  # no body yet: the head is still the app's to replace
            try:
                raise KeyError("handled-by-error-handler")
            except KeyError:
                start_response(
                    "500 Internal Server Error",
                    [("Content-Type", "text/plain"), ("X-Error-Page", "yes")],
                    sys.exc_info(),
                )
                yield b"error page"

        return gen()

    if path == "/exc-after":
        start_response("200 OK", [("Content-Type", "text/plain")])

        def gen():
            yield b"partial-body"
            try:
                raise KeyError("wsgi-exc-after-sent")
            except KeyError:
                try:
                    start_response(
                        "500 Internal Server Error",
                        [("Content-Type", "text/plain")],
                        sys.exc_info(),
                    )
                except KeyError as exc:
                    mark(f"{tag}.log", f"reraised {type(exc).__name__} {exc}")
                    raise
                mark(f"{tag}.log", "not reraised")
                yield b"error page after headers"

        return gen()

    if path == "/exc-after-write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written-body")
        try:
            raise KeyError("wsgi-exc-after-write")
        except KeyError:
            info = sys.exc_info()
            if "reenter" in q:
                info = ReenteringExcInfo(info, write)
            try:
                start_response("500 Internal Server Error", [("Content-Type", "text/plain")], info)
            except KeyError as exc:
                mark(f"{tag}.log", f"reraised {type(exc).__name__} {exc}")
                raise
            mark(f"{tag}.log", "not reraised")
            return [b"error page after write"]

    if path == "/twice":
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            start_response("201 Created", [("Content-Type", "text/plain")])
        except Exception as exc:
            mark(f"{tag}.log", f"second call raised {type(exc).__name__}")
            raise
        mark(f"{tag}.log", "second call accepted")
        return [b"twice"]

    if path == "/del-reads-input":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2048")])

        def gen():
            # Made in a call, so that the generator's frame keeps no reference:
            # the server's is the last one.
            yield del_bytes(environ, tag)

        return gen()

    if path == "/stderr-line":
        environ["wsgi.errors"].write("wsgi-errors-before-raise\n")
        raise LookupError("wsgi-boom-after-stderr")

    return ok(start_response, b"not found")
