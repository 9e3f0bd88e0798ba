"""WSGI responses and uploads in motion: write(), close(), wsgi.file_wrapper, large uploads,
and the thread pool under load. (A large generator response to a slow client is tested with its
ASGI twin in tests/test_streaming.py.)

Apps: tests/apps/wsgi_stream.py and tests/apps/wsgi_env.py (/sha256). Apps report through
marker files in $WSGI_MARKER_DIR (see tests/apps/wsgi_common.py).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import random
import re
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from apps.proto_raw import RawConn, request, rss_kib
from apps.wsgi_common import block, read_lines, wait_for_line
from conftest import resets_on_close, wait_for, wait_for_log

APP = "wsgi_stream:app"
MiB = 1 << 20


@pytest.fixture
def server(run_rsasgi, markers):
    return run_rsasgi(APP, env={"WSGI_MARKER_DIR": str(markers)})


def raw(server, timeout: float = 10.0) -> RawConn:
    return RawConn(server.connect(), timeout=timeout)


def still_serving(server) -> None:
    r = httpx.get(f"{server.url}/", timeout=10)
    assert r.status_code == 200 and r.content == b"ok", (r.status_code, r.content)
    out = server.output()
    assert "panicked" not in out, out[-3000:]


def first_line(path) -> str:
    """The first line the app marks in `path`, once it has."""
    return wait_for(lambda: next(iter(read_lines(path)), None), message=f"a line in {path}")


def stable_lines(path, settle: float = 0.5) -> list[str]:
    """The marker file's lines once nothing has been added for `settle` s."""
    lines = read_lines(path)
    while True:
        time.sleep(settle)
        again = read_lines(path)
        if again == lines:
            return lines
        lines = again


# --- write() ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, body",
    [
        ("only", b"hello world"),
        ("mixed", b"one-two-three-four"),
        ("cl", b"hello world"),
        ("empty-then", b"after empty write"),
    ],
)
def test_write_callable(server, mode, body):
    conn = raw(server)
    conn.send(request("GET", f"/write?mode={mode}"))
    resp = conn.read_response()
    assert resp.status == 200
    assert resp.body == body
    if mode == "cl":
        assert resp.header("content-length") == "11"
        assert resp.header("transfer-encoding") is None
    # framing was right: the connection is still in sync
    conn.send(request("GET", "/"))
    assert conn.read_response().body == b"ok"


def test_write_callable_via_httpx(server):
    r = httpx.get(f"{server.url}/write?mode=mixed", timeout=10)
    assert r.status_code == 200
    assert r.content == b"one-two-three-four"


@pytest.mark.parametrize("route", ["/write-wait", "/yield-wait"])
def test_first_chunk_reaches_the_client_before_the_app_continues(server, markers, route):
    """write() and each yielded chunk go out at once, not when the app returns."""
    conn = raw(server, timeout=5)
    conn.send(request("GET", f"{route}?tag=w"))
    resp = conn.read_head()
    assert resp.status == 200
    assert resp.header("transfer-encoding") == "chunked", resp.headers
    body = conn.iter_body(resp)
    assert next(body) == b"first"
    (markers / "w.go").write_text("go")
    rest = b"".join(body)
    assert rest == b"second", "the app timed out waiting: the client saw nothing before"


def test_an_empty_write_sends_the_head_before_the_app_continues(server, markers):
    """PEP 3333: the head goes out at the first write() call, even write(b""), which is how an
    app gets it to the client before a slow body (it waited for the body's first bytes)."""
    conn = raw(server, timeout=5)
    conn.send(request("GET", "/write-empty-wait?tag=e"))
    resp = conn.read_head()
    assert resp.status == 200
    assert resp.header("content-type") == "text/event-stream", resp.headers
    (markers / "e.go").write_text("go")
    assert b"".join(conn.iter_body(resp)) == b"late", "the app timed out waiting for the head"


# --- close() ---------------------------------------------------------------------------------


def test_close_called_after_a_full_response(server, markers):
    conn = raw(server)
    conn.send(request("GET", "/close?mode=full&tag=full"))
    resp = conn.read_response()
    assert resp.status == 200
    assert resp.body == b"part0;part1;part2;part3;"
    wait_for_line(markers / "full.log", "close")
    assert stable_lines(markers / "full.log") == [
        "yield 0",
        "yield 1",
        "yield 2",
        "yield 3",
        "close",
    ]


def test_close_called_on_a_list_subclass(server, markers):
    r = httpx.get(f"{server.url}/close-list?tag=lst", timeout=10)
    assert r.content == b"list-body"
    wait_for_line(markers / "lst.log", "close")
    assert stable_lines(markers / "lst.log") == ["close"]


def test_the_body_read_in_close_after_a_complete_response_is_whole(server, markers):
    """An app that answers without reading the body and reads it in its iterable's close()
    (PEP 3333 sets no end to reading wsgi.input) got a truncated body with no error, or a
    ClientDisconnected from a client still sending, as the reactor threw the rest away once
    the response was complete. It gets the whole body, as under gunicorn, and the connection
    carries the next request."""
    body = random.Random(7).randbytes(1_000_000)
    conn = raw(server, timeout=30)
    head = b"POST /read-in-close?tag=ric HTTP/1.1\r\nHost: testserver\r\n"
    conn.send(head + b"Content-Length: %d\r\n\r\n" % len(body))
    sender = threading.Thread(target=conn.send, args=(body + request("GET", "/"),))
    sender.start()
    resp = conn.read_response()
    assert (resp.status, resp.body) == (200, b"ok"), resp.status_line
    sender.join(30)
    assert conn.read_response().body == b"ok"
    line = first_line(markers / "ric.log")
    assert line == f"read {len(body)} {hashlib.sha256(body).hexdigest()}", line


@pytest.mark.parametrize("data", ["", "late"], ids=["empty", "data"])
def test_a_write_after_the_iterable_leaves_the_response_complete(server, markers, data):
    """A write() from close(), after the iterable was exhausted, reopened the complete
    response: its chunked end never went out (curl: "transfer closed with outstanding read
    data remaining"). The response stays complete; an empty write does nothing and one with
    data raises RuntimeError, as data after the body's end has nowhere to go."""
    conn = raw(server)
    conn.send(request("GET", f"/write-in-close?data={data}&tag=wic") + request("GET", "/"))
    resp = conn.read_response()
    assert (resp.status, resp.body) == (200, b"ab"), resp.status_line
    assert conn.read_response().body == b"ok"
    line = first_line(markers / "wic.log")
    if data:
        assert line.startswith("error RuntimeError: write() called after the response"), line
    else:
        assert line == "write ok", line


@pytest.mark.parametrize("status", [204, 304])
def test_write_on_a_bodiless_response_does_not_raise(server, markers, status):
    """A 204 or 304 is over once its head is written, as a HEAD response is: a later write()
    raised ClientDisconnected with the client still there. It returns, as for HEAD."""
    conn = raw(server)
    conn.send(request("GET", f"/write-bodiless?status={status}&tag=wb{status}"))
    assert conn.read_response().status == status
    assert first_line(markers / f"wb{status}.log") == "done"
    conn.send(request("GET", "/"))
    assert conn.read_response().body == b"ok"


def test_a_one_item_list_subclass_is_iterated(server):
    """PEP 3333 has the server iterate the iterable: a one-item list subclass with its own
    __iter__ was sent from its item without calling it."""
    assert httpx.get(f"{server.url}/upper-list", timeout=10).content == b"LOWER"


def test_close_called_after_head(server, markers):
    conn = raw(server)
    conn.send(request("HEAD", "/close?mode=head&tag=head"))
    resp = conn.read_response("HEAD")
    assert resp.status == 200
    assert resp.header("content-length") == "11"
    wait_for_line(markers / "head.log", "close")
    assert stable_lines(markers / "head.log")[-1] == "close"
    assert stable_lines(markers / "head.log").count("close") == 1
    conn.send(request("GET", "/"))
    assert conn.read_response().body == b"ok"


def test_close_called_when_the_iterable_raises_midway(server, markers):
    conn = raw(server)
    conn.send(request("GET", "/close?mode=raise&tag=mid"))
    data = conn.read_until_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data
    assert b"transfer-encoding: chunked" in head.lower(), data
    assert b"part0;" in body and b"part1;" in body, data
    assert not body.endswith(b"0\r\n\r\n"), f"aborted response was terminated: {data!r}"
    wait_for_line(markers / "mid.log", "close")
    assert stable_lines(markers / "mid.log") == ["yield 0", "yield 1", "raising", "close"]
    still_serving(server)


def test_close_called_when_the_iterable_raises_before_the_first_chunk(server, markers):
    r = httpx.get(f"{server.url}/close?mode=raise-first&tag=first", timeout=10)
    assert r.status_code == 500
    wait_for_line(markers / "first.log", "close")
    assert stable_lines(markers / "first.log") == ["raising", "close"]
    still_serving(server)


def test_close_called_when_the_client_disconnects_mid_response(server, markers):
    conn = raw(server)
    conn.send(request("GET", "/close?mode=disconnect&tag=gone"))
    resp = conn.read_head()
    assert resp.status == 200
    body = conn.iter_body(resp)
    got = 0
    while got < 256 * 1024:
        got += len(next(body))
    # abortive close (RST), as a browser tab being closed often does
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.sock.close()
    lines = wait_for_line(markers / "gone.log", "close", timeout=15)
    assert "gave up" not in lines
    final = stable_lines(markers / "gone.log")
    assert final[-1] == "close", final[-5:]
    assert final.count("close") == 1
    still_serving(server)


def test_close_called_when_the_client_disconnects_gracefully(server, markers):
    conn = raw(server)
    conn.send(request("GET", "/close?mode=disconnect&tag=fin"))
    resp = conn.read_head()
    assert resp.status == 200
    next(conn.iter_body(resp))
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.sock.close()
    wait_for_line(markers / "fin.log", "close", timeout=15)
    final = stable_lines(markers / "fin.log")
    assert final[-1] == "close" and final.count("close") == 1
    assert "gave up" not in final
    still_serving(server)


# --- wsgi.file_wrapper -----------------------------------------------------------------------


@pytest.fixture
def big_file(tmp_path):
    rng = random.Random(2024)
    path = tmp_path / "big.bin"
    data = rng.randbytes(20 * MiB)
    path.write_bytes(data)
    return path, data


@pytest.mark.timeout(60)
@pytest.mark.parametrize("with_length", [True, False])
def test_file_wrapper_sends_a_20mb_file(server, markers, big_file, with_length):
    path, data = big_file
    tag = "fw-cl" if with_length else "fw-nocl"
    conn = raw(server, timeout=30)
    conn.send(request("GET", f"/file?path={path}&cl={int(with_length)}&tag={tag}"))
    resp = conn.read_head()
    assert resp.status == 200
    digest = hashlib.sha256()
    total = 0
    for piece in conn.iter_body(resp):
        digest.update(piece)
        total += len(piece)
    assert total == len(data)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    if with_length:
        assert resp.header("content-length") == str(len(data))
        assert resp.header("transfer-encoding") is None
    else:
        # The server knows the file's size, so it sends Content-Length itself.
        assert resp.header("content-length") == str(len(data)), resp.headers
        assert resp.header("transfer-encoding") is None
    # the wrapper's close() closed the file, and the connection is still in sync
    wait_for_line(markers / f"{tag}.log", "file-close")
    conn.send(request("GET", "/"))
    assert conn.read_response().body == b"ok"


def test_file_wrapper_via_httpx(server, big_file):
    path, data = big_file
    r = httpx.get(f"{server.url}/file", params={"path": str(path), "cl": "1"}, timeout=30)
    assert r.status_code == 200
    assert len(r.content) == len(data)
    assert hashlib.sha256(r.content).hexdigest() == hashlib.sha256(data).hexdigest()


def test_file_wrapper_starts_at_the_current_file_position(server, big_file):
    path, data = big_file
    seek = 1_000_003
    conn = raw(server, timeout=30)
    conn.send(request("GET", f"/file?path={path}&cl=1&seek={seek}&tag=seek"))
    resp = conn.read_response()
    assert resp.header("content-length") == str(len(data) - seek)
    assert len(resp.body) == len(data) - seek
    assert resp.body == data[seek:]


def test_file_wrapper_honours_a_shorter_content_length(server, markers, big_file):
    path, data = big_file
    conn = raw(server)
    conn.send(request("GET", f"/file?path={path}&cl=1000&tag=short"))
    resp = conn.read_response()
    assert resp.header("content-length") == "1000"
    assert resp.body == data[:1000]
    # not one byte more: the next response parses
    conn.send(request("GET", "/"))
    after = conn.read_response()
    assert after.status_line.startswith(b"HTTP/1.1 200"), after.status_line
    assert after.body == b"ok"
    wait_for_line(markers / "short.log", "file-close")


def test_file_wrapper_after_write_sends_the_file_after_what_was_written(server, big_file):
    """PEP 3333 lets an app write() some body, then return an iterable: a file wrapper then
    follows what was written (it was refused with a misleading error, the response cut)."""
    path, data = big_file
    conn = raw(server, timeout=30)
    conn.send(request("GET", f"/file?path={path}&write=prefix;&tag=after-write"))
    resp = conn.read_response()
    assert resp.status_line.startswith(b"HTTP/1.1 200"), resp.status_line
    assert resp.body == b"prefix;" + data
    conn.send(request("GET", "/"))
    assert conn.read_response().body == b"ok"


def test_file_wrapper_with_a_block_size(server, big_file):
    path, data = big_file
    conn = raw(server, timeout=30)
    conn.send(request("GET", f"/file?path={path}&cl=1&blk=1000&tag=blk"))
    resp = conn.read_response()
    assert hashlib.sha256(resp.body).hexdigest() == hashlib.sha256(data).hexdigest()


def test_file_wrapper_over_an_object_without_fileno(server):
    size = MiB + 17
    conn = raw(server)
    conn.send(request("GET", f"/file-bytesio?size={size}"))
    resp = conn.read_response()
    assert resp.status == 200
    assert resp.header("content-length") == str(size)
    assert resp.body == block(0, size)


def test_file_wrapper_over_an_open_file_read_from_is_sent_from_its_position(server, big_file):
    """open(path, "rb") is a BufferedReader: its descriptor is ahead of what was read, by what
    the buffer holds; the response starts where read() would go on, with the server's own
    Content-Length (the file is sent from its descriptor)."""
    path, data = big_file
    conn = raw(server, timeout=30)
    conn.send(request("GET", f"/file-open?path={path}&open=rb&skip=10"))
    resp = conn.read_response()
    assert resp.header("content-length") == str(len(data) - 10), resp.headers
    assert resp.body == data[10:]


@pytest.mark.parametrize("opener", ["proxy", "named-temp"])
def test_file_wrapper_over_a_file_reading_through_a_real_one_is_sent_from_it(
    server, big_file, opener
):
    """Django's FileResponse over a storage's File, and tempfile's named files, read through a
    real file: sent from its descriptor too (the server's Content-Length), not through Python,
    where the thread would wait for a slow client to take the whole file."""
    path, data = big_file
    conn = raw(server, timeout=30)
    conn.send(request("GET", f"/file-open?path={path}&open={opener}&skip=10"))
    resp = conn.read_response()
    assert resp.header("content-length") == str(len(data) - 10), resp.headers
    assert resp.body == data[10:]


@pytest.mark.parametrize("opener", ["gzip", "bz2", "lzma"])
def test_file_wrapper_over_a_compressed_file_sends_what_it_reads(server, tmp_path, opener):
    """A gzip/bz2/lzma file's fileno() is the compressed file's: the wrapper must send what
    read() returns, as PEP 3333 has it (it sent the compressed bytes)."""
    text = b"".join(b"line %d of the text\n" % i for i in range(20000))
    path = tmp_path / f"text.{opener}"
    with {"gzip": gzip.open, "bz2": bz2.open, "lzma": lzma.open}[opener](path, "wb") as f:
        f.write(text)
    conn = raw(server)
    conn.send(request("GET", f"/file-open?path={path}&open={opener}&skip=5&blk=4096"))
    resp = conn.read_response()
    assert resp.status == 200
    assert resp.body == text[5:]
    conn.send(request("GET", "/"))
    assert conn.read_response().body == b"ok"


def test_file_wrapper_over_a_proc_file_sends_its_text(server):
    """/proc files have a size of 0 whatever they hold: the wrapper must read them (it sent an
    empty body)."""
    with open("/proc/version", "rb") as f:
        text = f.read()
    conn = raw(server)
    conn.send(request("GET", "/file-open?path=/proc/version&open=rb&blk=16"))
    resp = conn.read_response()
    assert resp.status == 200
    assert text and resp.body == text


def test_file_wrapper_head_has_no_body(server, markers, big_file):
    path, data = big_file
    conn = raw(server)
    conn.send(request("HEAD", f"/file?path={path}&cl=1&tag=fwhead"))
    resp = conn.read_response("HEAD")
    assert resp.status == 200
    assert resp.header("content-length") == str(len(data))
    conn.send(request("GET", "/"))
    after = conn.read_response()
    assert after.status_line.startswith(b"HTTP/1.1 200"), after.status_line
    wait_for_line(markers / "fwhead.log", "file-close")


# --- large uploads ---------------------------------------------------------------------------


@pytest.fixture
def env_server(run_rsasgi, markers):
    return run_rsasgi("wsgi_env:app", env={"WSGI_MARKER_DIR": str(markers)})


class RssSampler:
    def __init__(self, pid: int):
        self.pid = pid
        self.baseline = rss_kib(pid)
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            time.sleep(0.02)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.baseline) / 1024


@pytest.mark.timeout(60)
@pytest.mark.parametrize("use_chunked", [True, False])
def test_10mb_upload_hashed_by_the_app(env_server, use_chunked):
    rng = random.Random(99)
    pieces = [rng.randbytes(64 * 1024) for _ in range(160)]
    payload = b"".join(pieces)
    expected = hashlib.sha256(payload).hexdigest()
    httpx.post(f"{env_server.url}/sha256", content=b"warm-up", timeout=10)
    with RssSampler(env_server.proc.pid) as rss:
        if use_chunked:
            r = httpx.post(f"{env_server.url}/sha256?chunk=65536", content=iter(pieces), timeout=30)
        else:
            r = httpx.post(f"{env_server.url}/sha256?chunk=65536", content=payload, timeout=30)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["size"] == 10 * MiB
    assert out["sha256"] == expected
    assert out["reads"] >= 160
    assert rss.growth_mib < 50, f"server RSS grew by {rss.growth_mib:.0f} MiB for a 10 MiB upload"


@pytest.mark.timeout(90)
def test_upload_is_not_buffered_before_the_app_reads(env_server, markers):
    """The app sleeps 3 s before reading a 96 MiB body: the client must be held back."""
    size = 96 * MiB
    unit = hashlib.sha256(b"unit").digest() * 2048  # 64 KiB
    expected = hashlib.sha256(unit * (size // len(unit))).hexdigest()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sock.connect(("127.0.0.1", env_server.port))
    conn = RawConn(sock, timeout=30)
    conn.send(request("POST", "/sha256?delay=3&tag=up", headers=[("Content-Length", str(size))]))
    pid = env_server.proc.pid
    baseline = rss_kib(pid)
    peak = baseline
    sent = 0
    view = memoryview(unit)
    sock.settimeout(0.05)
    end = time.monotonic() + 2.5
    while time.monotonic() < end and sent < size:
        try:
            n = sock.send(view[sent % len(unit) :])
            sent += n
        except (TimeoutError, BlockingIOError):
            peak = max(peak, rss_kib(pid))
    peak = max(peak, rss_kib(pid))
    assert not (markers / "up.progress").exists(), "the app read before its 3 s delay ended"
    assert sent < 64 * MiB, f"the client could push {sent >> 20} MiB before the app read anything"
    growth = (peak - baseline) / 1024
    assert growth < 50, f"server RSS grew by {growth:.0f} MiB holding an unread upload"
    sock.settimeout(30)
    while sent < size:
        off = sent % len(unit)
        n = sock.send(view[off:])
        sent += n
    resp = conn.read_response()
    assert resp.status == 200, (resp.status_line, resp.body)
    out = json.loads(resp.body)
    assert out["size"] == size
    assert out["sha256"] == expected


# --- the thread pool -------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_50_concurrent_slow_requests_with_4_threads(run_rsasgi, markers):
    server = run_rsasgi("--threads", "4", APP, env={"WSGI_MARKER_DIR": str(markers)})
    results: dict[int, tuple[int, bytes]] = {}
    errors: list[str] = []

    def one(i: int) -> None:
        try:
            r = httpx.get(f"{server.url}/sleep?s=0.2&tag=r{i}", timeout=30)
            results[i] = (r.status_code, r.content)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{i}: {exc!r}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    assert errors == []
    assert sorted(results) == list(range(50))
    bad = {i: r for i, r in results.items() if r != (200, f"r{i}".encode())}
    assert bad == {}
    stats = httpx.get(f"{server.url}/stats", timeout=10).json()
    assert stats["count"] == 50
    assert stats["inflight"] == 0
    assert stats["max_inflight"] == 4, stats
    assert stats["threads"] <= 4, stats


def wait_started(markers, tag: str) -> None:
    wait_for((markers / f"{tag}.started").exists, message=f"{tag} to start")


def release(markers, tag: str) -> None:
    (markers / f"{tag}.go").touch()


@pytest.mark.timeout(60)
def test_busy_pool_queues_requests_but_the_reactor_answers_503(run_rsasgi, markers):
    """Both pool threads are held by the app; a third request waits for one, and a fourth,
    over --limit-concurrency, is answered 503 by the reactor at once."""
    server = run_rsasgi(
        "--threads", "2", "--limit-concurrency", "3", APP, env={"WSGI_MARKER_DIR": str(markers)}
    )
    holders = []
    for tag in ("s1", "s2"):
        conn = raw(server)
        conn.send(request("GET", f"/hold?tag={tag}"))
        holders.append(conn)
    for tag in ("s1", "s2"):
        wait_started(markers, tag)
    queued = raw(server)
    queued.send(request("GET", "/hold?tag=q"))

    # The 503 also shows the queued request is in flight: it is the third of the three.
    r = httpx.get(f"{server.url}/", timeout=10)
    assert r.status_code == 503, (r.status_code, r.content)
    assert not (markers / "q.started").exists(), "a third request ran with --threads 2"

    release(markers, "s1")
    resp = holders[0].read_response()
    assert (resp.status, resp.body) == (200, b"s1")
    wait_started(markers, "q")
    release(markers, "q")
    resp = queued.read_response()
    assert (resp.status, resp.body) == (200, b"q")
    release(markers, "s2")
    resp = holders[1].read_response()
    assert (resp.status, resp.body) == (200, b"s2")
    still_serving(server)


@pytest.mark.timeout(60)
def test_sleeping_app_does_not_block_the_reactor(run_rsasgi, markers):
    server = run_rsasgi("--threads", "1", APP, env={"WSGI_MARKER_DIR": str(markers)})
    holder = raw(server)
    holder.send(request("GET", "/hold?tag=busy"))
    wait_started(markers, "busy")
    # The only thread is held, yet the reactor still accepts and parses: a malformed request
    # is answered.
    bad = raw(server)
    bad.send(b"THIS IS NOT HTTP\r\n\r\n")
    data = bad.read_until_closed(timeout=10)
    assert data.startswith(b"HTTP/1.1 400"), data[:200]
    # A valid request waits for the only thread, then gets its answer.
    waiting = raw(server)
    waiting.send(request("GET", "/sleep?s=0&tag=after"))
    release(markers, "busy")
    first = holder.read_response()
    assert (first.status, first.body) == (200, b"busy")
    second = waiting.read_response()
    assert (second.status, second.body) == (200, b"after")


def test_a_request_whose_client_left_while_queued_is_not_run(run_rsasgi, markers):
    """Every thread busy, three clients give up while their requests wait for one: their app
    is never run (its response could go nowhere), and the thread serves the live ones."""
    server = run_rsasgi("--threads", "1", APP, env={"WSGI_MARKER_DIR": str(markers)})
    holder = server.connect()
    holder.sendall(b"GET /hold?tag=h HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_for(lambda: (markers / "h.started").exists(), message="the thread to be taken")
    for tag in ("gone1", "gone2", "gone3"):
        with resets_on_close(server.connect()) as sock:
            sock.sendall(f"GET /sleep?s=0&tag={tag} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            time.sleep(0.2)  # read and queued by then; then the client gives up
    wait_for(lambda: server.output().count(" 499 ") >= 3, message="three 499s", server=server)
    (markers / "h.go").touch()
    assert RawConn(holder).read_response().body == b"h"
    holder.close()
    assert httpx.get(f"{server.url}/sleep?s=0&tag=live", timeout=10).text == "live"
    for tag in ("gone1", "gone2", "gone3"):
        assert not (markers / f"{tag}.started").exists(), tag
    assert json.loads(httpx.get(f"{server.url}/stats", timeout=10).text)["count"] == 1


def test_requests_stuck_behind_held_threads_are_warned_of(run_rsasgi, markers):
    """Every thread held by a view that does not return, and a request waiting: the worker's
    health check cannot see it, so the log says so (it said nothing, however long the wait),
    naming what to check, and says when threads take requests again."""
    server = run_rsasgi("--threads", "1", APP, env={"WSGI_MARKER_DIR": str(markers)})
    holder = server.connect()
    holder.sendall(b"GET /hold?tag=h HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_for(lambda: (markers / "h.started").exists(), message="the thread to be taken")
    queued = server.connect()
    queued.sendall(b"GET /sleep?s=0&tag=q HTTP/1.1\r\nHost: x\r\n\r\n")
    log = wait_for_log(server, "WSGI requests are stuck", timeout=20)
    warning = next(line for line in log.splitlines() if "WSGI requests are stuck" in line)
    assert "WARN" in warning, warning
    assert "1 waiting" in warning and "(1 of --threads 1 busy in the app)" in warning, warning
    for option in ("--timeout-request", "--threads", "--limit-concurrency"):
        assert option in warning, warning
    (markers / "h.go").touch()
    assert RawConn(holder).read_response().body == b"h"
    assert RawConn(queued).read_response().body == b"q"
    wait_for_log(server, "WSGI threads take requests again")
    holder.close()
    queued.close()


def test_requests_whose_clients_left_leave_the_queue_and_are_not_counted_waiting(
    run_rsasgi, markers
):
    """Every thread held, three uploads whose clients give up, and one request that still
    waits: the stall warning counts the one (it counted every request ever queued, and each
    kept its head and 64 KiB of body read ahead until a thread got to it), and the access
    lines of the three say they never ran."""
    server = run_rsasgi("--threads", "1", APP, env={"WSGI_MARKER_DIR": str(markers)})
    holder = server.connect()
    holder.sendall(b"GET /hold?tag=h HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_for(lambda: (markers / "h.started").exists(), message="the thread to be taken")
    body = b"x" * (64 * 1024)
    for tag in ("gone1", "gone2", "gone3"):
        with resets_on_close(server.connect()) as sock:
            head = f"POST /sleep?s=0&tag={tag} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}"
            sock.sendall(head.encode() + b"\r\n\r\n" + body)
    wait_for(lambda: server.output().count(" 499 ") == 3, message="three 499s", server=server)
    queued = server.connect()
    queued.sendall(b"GET /sleep?s=0&tag=q HTTP/1.1\r\nHost: x\r\n\r\n")
    log = wait_for_log(server, "WSGI requests are stuck", timeout=20)
    warning = next(line for line in log.splitlines() if "WSGI requests are stuck" in line)
    assert "stuck in the queue: 1 waiting" in warning, warning
    assert log.count("before the response; never ran: waited for a WSGI thread)") == 3, log
    (markers / "h.go").touch()
    assert RawConn(holder).read_response().body == b"h"
    assert RawConn(queued).read_response().body == b"q"
    holder.close()
    queued.close()
    for tag in ("gone1", "gone2", "gone3"):
        assert not (markers / f"{tag}.started").exists(), tag


def test_a_pool_short_of_threads_is_warned_of_while_it_moves(run_rsasgi, markers):
    """One thread and eight 0.4 s views at once: the pool keeps taking requests (no stall),
    but they wait seconds for it, and clients that give up first got nothing with nothing in
    the error log. A warning says so, with what to change."""
    server = run_rsasgi("--threads", "1", APP, env={"WSGI_MARKER_DIR": str(markers)})
    with ThreadPoolExecutor(8) as pool:
        views = [
            pool.submit(httpx.get, f"{server.url}/sleep?s=0.4&tag=v{n}", timeout=20)
            for n in range(8)
        ]
        assert [view.result().status_code for view in views] == [200] * 8
    log = wait_for_log(server, "WSGI requests wait for a thread")
    warning = next(line for line in log.splitlines() if "WSGI requests wait for a thread" in line)
    assert "WARN" in warning, warning
    assert re.search(r"the oldest for \d+s or more, with 1 of --threads 1 busy in the app", warning)
    for option in ("--threads", "--workers", "--limit-concurrency"):
        assert option in warning, warning
    assert "WSGI requests are stuck" not in log


def test_pool_threads_are_reused(run_rsasgi, markers):
    server = run_rsasgi("--threads", "2", APP, env={"WSGI_MARKER_DIR": str(markers)})
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for i in range(20):
            assert client.get(f"/sleep?s=0&tag=n{i}").content == f"n{i}".encode()
    stats = httpx.get(f"{server.url}/stats", timeout=10).json()
    assert stats["count"] == 20
    assert stats["threads"] <= 2, stats


def test_pool_threads_are_named_and_run_the_threading_trace_and_profile_hooks(run_rsasgi, markers):
    """threading.settrace()/setprofile() reach each pool thread, the first and one started on
    demand, as they reach a threading.Thread (coverage.py measures threads through them), and
    threading.current_thread() carries the thread's name rather than Dummy-N."""
    server = run_rsasgi("--threads", "2", "wsgi_threads:app", env={"WSGI_MARKER_DIR": str(markers)})
    holder = server.connect()
    holder.sendall(b"GET /?tag=h HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_for(lambda: (markers / "h.started").exists(), message="the first thread to be taken")
    second = httpx.get(server.url, timeout=10).json()
    (markers / "h.go").touch()
    first = json.loads(RawConn(holder).read_response().body)
    holder.close()
    assert first == {"thread": "rsasgi-wsgi-0", "trace": True, "profile": True, "traced": True}
    assert second == {"thread": "rsasgi-wsgi-1", "trace": True, "profile": True, "traced": True}


def test_slow_client_does_not_hold_the_gil(run_rsasgi, markers):
    """A pool thread blocked on a client that reads nothing leaves the other threads running."""
    server = run_rsasgi("--threads", "2", APP, env={"WSGI_MARKER_DIR": str(markers)})
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.connect(("127.0.0.1", server.port))
    stuck = RawConn(sock, timeout=30)
    stuck.send(request("GET", f"/gen?size={512 * MiB}&tag=stuck"))
    progress = markers / "stuck.progress"
    seen: list[str] = []

    def blocked() -> bool:
        """The generator's progress has stopped moving: its thread waits on the full socket."""
        seen.append(progress.read_text() if progress.exists() else "")
        return len(seen) >= 2 and seen[-1] != "" and seen[-1] == seen[-2]

    wait_for(blocked, timeout=20, interval=0.5, message="the generator to block", server=server)
    with httpx.Client(base_url=server.url, timeout=5) as client:
        for i in range(10):
            assert client.get(f"/sleep?s=0&tag=g{i}").content == f"g{i}".encode()
    sock.close()
    still_serving(server)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "args, env, expected",
    [
        ((), {}, 8),
        (("--threads", "3"), {}, 3),
        ((), {"RSASGI_THREADS": "5"}, 5),
    ],
    ids=["default-8", "flag-3", "env-5"],
)
def test_pool_size(run_rsasgi, markers, args, env, expected):
    server = run_rsasgi(*args, APP, env={"WSGI_MARKER_DIR": str(markers), **env})
    n = expected * 2 + 1
    results = []

    def one(i: int) -> None:
        r = httpx.get(f"{server.url}/sleep?s=0.5&tag=p{i}", timeout=30)
        results.append(r.status_code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [200] * n
    stats = httpx.get(f"{server.url}/stats", timeout=10).json()
    assert stats["max_inflight"] == expected, stats
    assert stats["threads"] == expected, stats


def test_threads_zero_is_a_usage_error(run_rsasgi):
    server = run_rsasgi("--threads", "0", APP, wait=False)
    assert server.wait_exit(20) == 2, server.output()
    out = server.output()
    assert "Traceback" not in out, out
    assert "thread" in out.lower(), out


def test_large_thread_count_starts_with_a_warning(run_rsasgi):
    """Contract: more than 256 threads starts, with a warning (threads never spawned unbounded)."""
    server = run_rsasgi("--threads", "1000", APP)
    r = httpx.get(f"{server.url}/", timeout=10)
    assert (r.status_code, r.content) == (200, b"ok")
    log = server.output()
    assert any("WARN" in ln.upper() and "thread" in ln.lower() for ln in log.splitlines()), log


def test_absurd_thread_count_is_a_usage_error(run_rsasgi):
    server = run_rsasgi("--threads", "100000", APP, wait=False)
    assert server.wait_exit(20) == 2, server.output()
    assert "from 1 to 4096" in server.output()


def test_interface_wsgi_forced(run_rsasgi):
    server = run_rsasgi("--interface", "wsgi", APP)
    r = httpx.get(f"{server.url}/", timeout=10)
    assert (r.status_code, r.content) == (200, b"ok")


@pytest.mark.timeout(60)
def test_a_finished_response_is_not_held_back_by_the_next_request(run_rsasgi, markers):
    """One pool thread, three requests queued on it: the first two finish and the third
    blocks in the app. The first two answers reach their clients while the third is still
    blocked, not after it: a pool thread batches the reactor wake-ups of responses it
    finishes only while the requests it runs are quick. (A held-back answer used to go out
    only when the connection's keep-alive timer fired: 120 s here, past the reads' 10 s.)"""
    server = run_rsasgi(
        "--threads", "1", "--timeout-keep-alive", "120", APP, env={"WSGI_MARKER_DIR": str(markers)}
    )
    first = raw(server)
    first.send(request("GET", "/hold?tag=first"))
    wait_started(markers, "first")
    quick, blocked = raw(server), raw(server)
    quick.send(request("GET", "/sleep?s=0&tag=quick"))
    blocked.send(request("GET", "/hold?tag=blocked"))
    # Both wait for the only thread, behind `first`; give the reactor a moment to queue
    # them (if it has not, the thread finds its queue empty and the test proves nothing).
    time.sleep(0.3)
    release(markers, "first")
    wait_started(markers, "blocked")
    answered = first.read_response(), quick.read_response()
    assert [(r.status, r.body) for r in answered] == [(200, b"first"), (200, b"quick")]
    assert not (markers / "blocked.go").exists()
    release(markers, "blocked")
    resp = blocked.read_response()
    assert (resp.status, resp.body) == (200, b"blocked")
