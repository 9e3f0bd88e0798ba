"""Plain PEP 3333 app for tests/test_wsgi_streaming.py. Markers go to $WSGI_MARKER_DIR.

Routes (by PATH_INFO):
  /write?mode=only|mixed|cl|empty-then
                        the write() callable alone, mixed with the returned iterable, with a
                        Content-Length, and an empty write before the data
  /write-wait?tag=T     write(b"first"), waits for the marker T.go, write(b"second")
  /yield-wait?tag=T     yields b"first", waits for the marker T.go, yields b"second"
  /write-empty-wait?tag=T
                        write(b""), waits for the marker T.go, returns [b"late"]
  /close?mode=full|raise|raise-first|disconnect|head&tag=T
                        returns an iterable object whose close() appends "close" to T.log;
                        every yielded chunk appends "yield N"; "raise" raises after 2 chunks,
                        "raise-first" before the first, "disconnect" yields 64 KiB forever
                        (up to 60 s), "head" yields "hello world" with Content-Length
  /close-list?tag=T     returns a list subclass with a close() method
  /read-in-close?tag=T  answers "ok" (Content-Length: 2) without reading the body, then reads
                        all of wsgi.input in the iterable's close(): T.log gets "read N SHA256"
                        or the error
  /write-in-close?data=D&tag=T
                        yields b"a" and b"b" (no Content-Length); close() calls write(D) and
                        logs "write ok" or the error to T.log
  /write-bodiless?status=204|304&tag=T
                        write(b"") twice, 50 ms apart, on a bodiless status; T.log gets "done"
                        or the error
  /upper-list           a one-item list subclass whose __iter__ upper-cases its items
  /file?path=P&cl=0|1|N&seek=S&blk=B&tag=T
                        wsgi.file_wrapper over the file P (an io.FileIO subclass whose close()
                        appends "file-close" to T.log), seeked to S; cl=1 sets Content-Length
                        to the remaining size, cl=N (N > 1) sets Content-Length: N; write=W
                        write()s W before returning the wrapper
  /file-bytesio?size=N  wsgi.file_wrapper over an io.BytesIO (no fileno) of block(0, N)
  /file-open?path=P&open=rb|proxy|named-temp|gzip|bz2|lzma&skip=N&blk=B
                        wsgi.file_wrapper over P opened with open(P, "rb"), wrapped in a
                        Django-like File (`proxy`: its read is the file's), copied into a
                        tempfile.NamedTemporaryFile, or opened with gzip/bz2/lzma.open, after
                        reading N bytes of it; no Content-Length
  /gen?size=N&chunk=C&tag=T
                        generator of N bytes (block(i, C) for the i-th chunk), no
                        Content-Length; T.progress holds the bytes yielded so far (every MiB)
  /sleep?s=S&tag=T      sleeps S s, answers T; tracks in-flight requests and pool threads;
                        T.started is written on entry
  /hold?tag=T           writes T.started, waits (up to 30 s) for the marker T.go, answers T
                        (or "timeout"); holds a pool thread for as long as the test wants
  /stats                JSON {"max_inflight", "inflight", "threads", "count"}
  /                     "ok"
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import tempfile
import threading
import time

from wsgi_common import block, mark, put, query, wait_marker


class FileProxy:
    """As Django's File (FileProxyMixin): its read, seek and tell are its file's."""

    def __init__(self, file):
        self.file = file

    read = property(lambda self: self.file.read)
    tell = property(lambda self: self.file.tell)
    seek = property(lambda self: self.file.seek)

    def close(self):
        self.file.close()


def named_temporary_copy(path, mode):
    copy = tempfile.NamedTemporaryFile()
    with open(path, mode) as original:
        copy.write(original.read())
    copy.seek(0)
    return copy


_lock = threading.Lock()
_stats = {"inflight": 0, "max_inflight": 0, "threads": set(), "count": 0}


def text(start_response, body: bytes, status: str = "200 OK"):
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


class Tracked:
    """A response iterable that records its life in T.log."""

    def __init__(self, tag: str, mode: str):
        self.tag = tag
        self.mode = mode

    def __iter__(self):
        log = f"{self.tag}.log"
        if self.mode == "raise-first":
            mark(log, "raising")
            raise RuntimeError("wsgi-close-raise-first")
        if self.mode == "head":
            mark(log, "yield 0")
            yield b"hello world"
            return
        if self.mode == "disconnect":
            deadline = time.monotonic() + 60
            i = 0
            while time.monotonic() < deadline:
                yield block(i, 65536)
                mark(log, f"yield {i}")
                i += 1
                time.sleep(0.005)
            mark(log, "gave up")
            return
        for i in range(4):
            if self.mode == "raise" and i == 2:
                mark(log, "raising")
                raise RuntimeError("wsgi-close-raise-midway")
            mark(log, f"yield {i}")
            yield f"part{i};".encode()

    def close(self):
        mark(f"{self.tag}.log", "close")


class TrackedList(list):
    tag = ""

    def close(self):
        mark(f"{self.tag}.log", "close")


class ReadInClose:
    """A complete response whose close() reads the request body the app left unread."""

    def __init__(self, environ, tag: str):
        self.environ = environ
        self.tag = tag

    def __iter__(self):
        yield b"ok"

    def close(self):
        try:
            body = self.environ["wsgi.input"].read()
        except Exception as exc:  # noqa: BLE001 - recorded for the test to see
            mark(f"{self.tag}.log", f"error {type(exc).__name__}: {exc}")
            return
        mark(f"{self.tag}.log", f"read {len(body)} {hashlib.sha256(body).hexdigest()}")


class WriteInClose:
    """Two chunks, then a write() from close(), after the iterable is exhausted."""

    def __init__(self, write, data: bytes, tag: str):
        self.write = write
        self.data = data
        self.tag = tag

    def __iter__(self):
        yield b"a"
        yield b"b"

    def close(self):
        try:
            self.write(self.data)
        except Exception as exc:  # noqa: BLE001 - recorded for the test to see
            mark(f"{self.tag}.log", f"error {type(exc).__name__}: {exc}")
        else:
            mark(f"{self.tag}.log", "write ok")


class UpperList(list):
    def __iter__(self):
        return (item.upper() for item in super().__iter__())


class RecordingFile(io.FileIO):
    tag = ""

    def close(self):
        if not self.closed:
            mark(f"{self.tag}.log", "file-close")
        super().close()


def app(environ, start_response):
    path = environ["PATH_INFO"]
    q = query(environ)
    tag = q.get("tag", "t")

    if path == "/write":
        mode = q["mode"]
        if mode == "only":
            write = start_response("200 OK", [("Content-Type", "text/plain")])
            write(b"hello ")
            write(b"world")
            return []
        if mode == "mixed":
            write = start_response("200 OK", [("Content-Type", "text/plain")])
            write(b"one-")
            write(b"two-")
            return [b"three-", b"", b"four"]
        if mode == "cl":
            write = start_response(
                "200 OK", [("Content-Type", "text/plain"), ("Content-Length", "11")]
            )
            write(b"hello ")
            return [b"world"]
        if mode == "empty-then":
            write = start_response("200 OK", [("Content-Type", "text/plain")])
            write(b"")
            return [b"after empty write"]
        raise ValueError(mode)

    if path == "/write-wait":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"first")
        mark(f"{tag}.log", "first written")
        ok = wait_marker(f"{tag}.go")
        write(b"second" if ok else b"timeout")
        return []

    if path == "/write-empty-wait":
        write = start_response("200 OK", [("Content-Type", "text/event-stream")])
        write(b"")  # PEP 3333: the head goes out at the first write() call
        return [b"late" if wait_marker(f"{tag}.go") else b"timeout"]

    if path == "/yield-wait":
        start_response("200 OK", [("Content-Type", "text/plain")])

        def gen():
            yield b"first"
            mark(f"{tag}.log", "first yielded")
            yield b"second" if wait_marker(f"{tag}.go") else b"timeout"

        return gen()

    if path == "/close":
        mode = q["mode"]
        headers = [("Content-Type", "text/plain")]
        if mode == "head":
            headers.append(("Content-Length", "11"))
        start_response("200 OK", headers)
        return Tracked(tag, mode)

    if path == "/read-in-close":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return ReadInClose(environ, tag)

    if path == "/write-in-close":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        return WriteInClose(write, q.get("data", "").encode(), tag)

    if path == "/write-bodiless":
        status = {"204": "204 No Content", "304": "304 Not Modified"}[q["status"]]
        write = start_response(status, [])
        try:
            write(b"")
            time.sleep(0.05)
            write(b"")
        except Exception as exc:  # noqa: BLE001 - recorded for the test to see
            mark(f"{tag}.log", f"error {type(exc).__name__}: {exc}")
        else:
            mark(f"{tag}.log", "done")
        return []

    if path == "/upper-list":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return UpperList([b"lower"])

    if path == "/close-list":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "9")])
        result = TrackedList([b"list-", b"body"])
        result.tag = tag
        return result

    if path == "/file":
        f = RecordingFile(q["path"], "rb")
        f.tag = tag
        seek = int(q.get("seek", "0"))
        if seek:
            f.seek(seek)
        remaining = f.seek(0, io.SEEK_END) - seek
        f.seek(seek)
        headers = [("Content-Type", "application/octet-stream")]
        cl = int(q.get("cl", "0"))
        if cl == 1:
            headers.append(("Content-Length", str(remaining)))
        elif cl > 1:
            headers.append(("Content-Length", str(cl)))
        write = start_response("200 OK", headers)
        if "write" in q:
            write(q["write"].encode())  # PEP 3333 allows write() before the iterable
        wrapper = environ["wsgi.file_wrapper"]
        if "blk" in q:
            return wrapper(f, int(q["blk"]))
        return wrapper(f)

    if path == "/file-bytesio":
        size = int(q["size"])
        start_response(
            "200 OK",
            [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))],
        )
        return environ["wsgi.file_wrapper"](io.BytesIO(block(0, size)), 10000)

    if path == "/file-open":
        opener = {
            "rb": open,
            "proxy": lambda path, mode: FileProxy(open(path, mode)),
            "named-temp": named_temporary_copy,
            "gzip": gzip.open,
            "bz2": bz2.open,
            "lzma": lzma.open,
        }[q["open"]]
        f = opener(q["path"], "rb")
        f.read(int(q.get("skip", "0")))
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](f, int(q.get("blk", "8192")))

    if path == "/gen":
        size = int(q["size"])
        chunk = int(q.get("chunk", "65536"))
        start_response("200 OK", [("Content-Type", "application/octet-stream")])

        def gen():
            sent = i = 0
            next_report = 0
            while sent < size:
                n = min(chunk, size - sent)
                yield block(i, n)
                sent += n
                i += 1
                if sent >= next_report:
                    put(f"{tag}.progress", str(sent))
                    next_report = sent + (1 << 20)
            put(f"{tag}.progress", str(sent))

        return gen()

    if path == "/sleep":
        with _lock:
            _stats["inflight"] += 1
            _stats["count"] += 1
            _stats["max_inflight"] = max(_stats["max_inflight"], _stats["inflight"])
            _stats["threads"].add(threading.get_ident())
        put(f"{tag}.started", str(time.time()))
        try:
            time.sleep(float(q.get("s", "0.2")))
        finally:
            with _lock:
                _stats["inflight"] -= 1
        return text(start_response, tag.encode())

    if path == "/hold":
        put(f"{tag}.started", str(time.time()))
        released = wait_marker(f"{tag}.go", timeout=30)
        return text(start_response, tag.encode() if released else b"timeout")

    if path == "/stats":
        with _lock:
            data = {
                "max_inflight": _stats["max_inflight"],
                "inflight": _stats["inflight"],
                "threads": len(_stats["threads"]),
                "count": _stats["count"],
            }
        return text(start_response, json.dumps(data).encode())

    return text(start_response, b"ok")
