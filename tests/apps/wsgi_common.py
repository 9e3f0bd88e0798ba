"""Helpers shared by the wsgi_* apps and the tests/test_wsgi*.py tests (not an app).

The apps import it as `wsgi_common` (tests/apps is the server's --app-dir); the tests import it
as `apps.wsgi_common`. Markers go to the directory named by $WSGI_MARKER_DIR: `mark()` appends
one line to a file, `put()` replaces a file atomically.
"""

from __future__ import annotations

import os
import threading
import time
from urllib.parse import parse_qs

MARKER_ENV = "WSGI_MARKER_DIR"


def query(environ) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def marker_dir() -> str | None:
    return os.environ.get(MARKER_ENV)


def mark(name: str, line: str) -> None:
    """Append `line` to $WSGI_MARKER_DIR/name (one write, so lines never interleave)."""
    directory = marker_dir()
    if not directory:
        return
    fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def put(name: str, content: str) -> None:
    directory = marker_dir()
    if not directory:
        return
    # Its own temporary name: two threads putting the same marker must not share one (the
    # second os.replace would find it gone).
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w") as f:
        f.write(content)
    os.replace(tmp, os.path.join(directory, name))


def wait_marker(name: str, timeout: float = 10.0) -> bool:
    """Used by the apps: wait until the test creates $WSGI_MARKER_DIR/name."""
    directory = marker_dir()
    if not directory:
        return False
    path = os.path.join(directory, name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return True
        time.sleep(0.01)
    return False


def block(i: int, size: int) -> bytes:
    """The i-th chunk of a generated response: distinct per index so reordering is detected."""
    unit = i.to_bytes(4, "big")
    return (unit * (size // 4 + 1))[:size]


OPS = (
    "read_n",
    "read",
    "read_neg",
    "read_none",
    "readline",
    "readline_limit",
    "readlines",
    "readlines_hint",
    "iter",
    "mixed",
    "read_cl",
)


def apply_op(stream, op: str, n: int) -> list:
    """Apply `op` to wsgi.input (app) or to io.BytesIO (tests: the expected parts)."""
    parts: list = []
    if op == "read_n":
        for _ in range(1_000_000):
            data = stream.read(n)
            parts.append(data)
            if not data:
                break
    elif op == "read":
        parts.append(stream.read())
        parts.append(stream.read())
    elif op == "read_neg":
        parts.append(stream.read(-1))
        parts.append(stream.read(-1))
    elif op == "read_none":
        parts.append(stream.read(None))
    elif op == "readline":
        for _ in range(1_000_000):
            line = stream.readline()
            parts.append(line)
            if not line:
                break
    elif op == "readline_limit":
        for _ in range(1_000_000):
            line = stream.readline(n)
            parts.append(line)
            if not line:
                break
    elif op == "readlines":
        parts.extend(stream.readlines())
        parts.append(stream.read())
    elif op == "readlines_hint":
        parts.extend(stream.readlines(n))
        parts.append(b"--rest--")
        parts.append(stream.read())
    elif op == "iter":
        parts.extend(iter(stream))
    elif op == "mixed":
        parts.append(stream.readline())
        parts.append(stream.read(3))
        parts.append(stream.readline(2))
        parts.append(stream.read(0))
        parts.append(stream.readline())
        parts.append(stream.read())
        parts.append(stream.readline())
    elif op == "read_cl":
        parts.append(stream.read(n))
        parts.append(stream.read(1))
    else:
        raise ValueError(op)
    return parts


# --- used by the tests -----------------------------------------------------------------------


def read_lines(path: os.PathLike) -> list[str]:
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def wait_for_line(path: os.PathLike, line: str, timeout: float = 10.0) -> list[str]:
    """Wait until the marker file `path` contains `line`; returns all its lines."""
    deadline = time.monotonic() + timeout
    while True:
        lines = read_lines(path)
        if line in lines:
            return lines
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} has no line {line!r} after {timeout}s; it has {lines!r}")
        time.sleep(0.02)
