"""Raw HTTP/1.x client helpers for the proto_* tests (not an app).

Imported by tests/test_http_protocol.py, tests/test_streaming.py and tests/test_scope.py as
`apps.proto_raw`. It parses responses strictly enough that framing mistakes in the server
(a body after HEAD, a wrong chunk size, a missing terminator) show up as parse errors.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from dataclasses import dataclass, field


class Closed(Exception):
    """The peer closed the connection before the expected data arrived."""


@dataclass
class Response:
    status_line: bytes
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    chunked: bool = False
    chunk_sizes: list[int] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        values = self.header_all(name)
        assert len(values) <= 1, f"header {name!r} repeated: {values!r}"
        return values[0] if values else None

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k == name]


def recv_until_closed(sock: socket.socket, timeout: float = 10.0, received: bytes = b"") -> bytes:
    """Read until the server closes the connection; fail if it is still open after `timeout`."""
    deadline = time.monotonic() + timeout
    data = bytearray(received)
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"connection still open after {timeout}s; got {bytes(data[-300:])!r}"
        sock.settimeout(remaining)
        try:
            piece = sock.recv(65536)
        except ConnectionResetError:
            return bytes(data)
        except TimeoutError:
            continue
        if not piece:
            return bytes(data)
        data += piece


class RawConn:
    """A buffered reader/writer over one socket."""

    def __init__(self, sock: socket.socket, timeout: float = 10.0):
        self.sock = sock
        self.sock.settimeout(timeout)
        self.buf = bytearray()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(262144)
        if not data:
            raise Closed(f"connection closed; unparsed buffer: {bytes(self.buf[:200])!r}")
        self.buf += data

    def read_until(self, delim: bytes) -> bytes:
        start = 0
        while True:
            idx = self.buf.find(delim, start)
            if idx >= 0:
                out = bytes(self.buf[: idx + len(delim)])
                del self.buf[: idx + len(delim)]
                return out
            start = max(0, len(self.buf) - len(delim) + 1)
            self._fill()

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_to_eof(self) -> bytes:
        while True:
            try:
                self._fill()
            except (Closed, ConnectionResetError):
                break
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def read_until_closed(self, timeout: float = 10.0) -> bytes:
        """Everything until the server closes; fails if it stays open for `timeout` s."""
        received = bytes(self.buf)
        self.buf.clear()
        return recv_until_closed(self.sock, timeout, received)

    def is_closed_by_peer(self, timeout: float) -> bool:
        """True when the peer closes within `timeout` s and sent nothing more before that."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        if data:
            raise AssertionError(f"unexpected bytes instead of close: {data[:200]!r}")
        return True

    def read_head(self) -> Response:
        head = self.read_until(b"\r\n\r\n")
        lines = head[:-4].split(b"\r\n")
        status_line = lines[0]
        parts = status_line.split(b" ", 2)
        assert len(parts) >= 2 and parts[0].startswith(b"HTTP/1."), f"bad status line {head!r}"
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            assert sep, f"bad header line {line!r} in {head!r}"
            headers.append(
                (name.strip().decode("latin-1").lower(), value.strip().decode("latin-1"))
            )
        return Response(
            status_line=status_line,
            version=parts[0].decode(),
            status=int(parts[1]),
            reason=parts[2].decode("latin-1") if len(parts) > 2 else "",
            headers=headers,
        )

    def read_chunk(self) -> bytes:
        """One chunk of a chunked body; b"" for the last chunk (trailers consumed)."""
        size_line = self.read_until(b"\r\n")
        size = int(size_line.split(b";")[0].strip(), 16)
        if size == 0:
            while self.read_until(b"\r\n") != b"\r\n":
                pass
            return b""
        data = self.read_exact(size)
        crlf = self.read_exact(2)
        assert crlf == b"\r\n", f"chunk of {size} bytes not followed by CRLF: {crlf!r}"
        return data

    def iter_body(self, resp: Response, method: str = "GET"):
        """Yield the body of `resp` piece by piece according to its framing."""
        if method == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200:
            return
        te = resp.header("transfer-encoding")
        if te is not None:
            assert te.lower() == "chunked", f"unexpected transfer-encoding {te!r}"
            resp.chunked = True
            while True:
                chunk = self.read_chunk()
                if not chunk:
                    return
                resp.chunk_sizes.append(len(chunk))
                yield chunk
        cl = resp.header("content-length")
        if cl is not None:
            remaining = int(cl)
            while remaining:
                if not self.buf:
                    self._fill()
                n = min(remaining, len(self.buf))
                out = bytes(self.buf[:n])
                del self.buf[:n]
                remaining -= n
                yield out
            return
        yield self.read_to_eof()

    def read_response(self, method: str = "GET") -> Response:
        resp = self.read_head()
        resp.body = b"".join(self.iter_body(resp, method))
        return resp


def request(
    method: str,
    target: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    version: str = "HTTP/1.1",
    host: bool = True,
) -> bytes:
    lines = [f"{method} {target} {version}".encode("latin-1")]
    if host:
        lines.append(b"Host: testserver")
    for name, value in headers or []:
        lines.append(f"{name}: {value}".encode("latin-1"))
    if body and not any(
        n.lower() in ("content-length", "transfer-encoding") for n, _ in headers or []
    ):
        lines.append(f"Content-Length: {len(body)}".encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def wait_for_file(path: os.PathLike, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                return f.read()
        except FileNotFoundError:
            time.sleep(0.02)
    raise AssertionError(f"{path} did not appear within {timeout}s")


def write_marker(name: str, content: str) -> None:
    """Used by the apps: atomically write PROTO_MARKER_DIR/name."""
    directory = os.environ.get("PROTO_MARKER_DIR")
    if not directory:
        return
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w") as f:
        f.write(content)
    os.replace(tmp, os.path.join(directory, name))


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """VmRSS (or another /proc status `field`, such as VmHWM) of `pid` plus all its
    descendants, in KiB."""
    total = 0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    pids.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def read_slowly_then_fast(conn: RawConn, resp: Response, pid: int, peak: int):
    """Reads `resp`'s body slowly for 2 s, then the rest at full speed, sampling the server's
    RSS as it goes. Returns (sha256 hex of the body, its length, the highest RSS in KiB)."""
    digest = hashlib.sha256()
    body = conn.iter_body(resp)
    total = 0
    end = time.monotonic() + 2
    while time.monotonic() < end:
        data = next(body)
        digest.update(data)
        total += len(data)
        peak = max(peak, rss_kib(pid))
        time.sleep(0.02)
    for n, data in enumerate(body, 1):
        digest.update(data)
        total += len(data)
        if n % 200 == 0:
            peak = max(peak, rss_kib(pid))
    return digest.hexdigest(), total, peak
