"""HTTP/2 for real (issue 10): every ASGI behaviour of the HTTP/1.1 path holds per stream of
one connection, WSGI apps work over HTTP/2 unchanged, and ordinary HTTP/2 clients reach
Starlette, Flask and Django.

Per stream: streaming both ways under flow control (a stream whose window stays closed does
not hold back the others), http.disconnect on RST_STREAM, send() raising once the stream is
gone, --limit-concurrency, --limit-request-body, and the access log's protocol name.

Clients: the `h2` state machine on a raw socket (`H2Client`) where the test decides which
stream's data is acknowledged and when a stream is reset; httpx with `http1=False,
http2=True` for ordinary requests; curl (--http2-prior-knowledge in cleartext, --http2 over
TLS) and h2load (Debian's nghttp2-client; skipped when missing, except under CI=true).
TLS uses test_tls.py's `pki` (a trustme CA) and `serve_tls`.

Apps: tests/apps/proto_stream.py (streaming, disconnects; markers in PROTO_MARKER_DIR),
proto_http.py (whole-body echo), wsgi_stream.py and wsgi_env.py (a WSGI generator, wsgi.input
read as it arrives; markers in WSGI_MARKER_DIR), fw_starlette.py, wsgifw_flask.py and the
Django project of django_support.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.errors
import h2.events
import httpx
import pytest
import test_tls
from apps.proto_raw import wait_for_file
from apps.wsgi_common import wait_for_line
from conftest import Server, access_log, wait_for
from django_support import DJANGO_ENV, build_django_project
from test_streaming import download_sha
from test_tls import https
from test_wsgi_frameworks import STREAM_CHUNK, STREAM_CHUNKS
from test_wsgi_streaming import stable_lines

# test_tls.py's fixtures, used here by name: the test CA with the server's certificate, and
# rsasgi serving over TLS with it.
pki = test_tls.pki
serve_tls = test_tls.serve_tls

MiB = 1 << 20
# The connection-level window the client grants at once: large enough for every test here,
# so that only a stream's own window ever holds its data back.
CONNECTION_WINDOW = 1 << 30
H2LOAD = shutil.which("h2load")
CURL = shutil.which("curl")


# --- an HTTP/2 client whose flow control the test drives ----------------------------------


@dataclass
class Stream:
    """What the client has received on one stream."""

    status: int | None = None
    data: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: h2.errors.ErrorCodes | int | None = None
    # Bytes received but not acknowledged (no WINDOW_UPDATE sent for them yet).
    held: int = 0

    @property
    def done(self) -> bool:
        return self.ended or self.reset is not None


class H2Client:
    """One HTTP/2 connection with prior knowledge (RFC 9113 §3.3) on a raw socket.

    Data received is acknowledged (the stream's window reopened) as it arrives, except on
    streams the test holds: their window closes once the server has filled it. The whole
    connection's window is opened wide at the start, so that one held stream cannot stall
    the others through it. Every wait has a deadline and fails with what arrived so far.
    """

    def __init__(self, server: Server):
        self.sock = server.connect()
        self.authority = f"127.0.0.1:{server.port}"
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config)
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(CONNECTION_WINDOW)
        self.streams: dict[int, Stream] = {}
        self.held: set[int] = set()
        self.goaway: h2.events.ConnectionTerminated | None = None
        self._flush()

    def __enter__(self) -> H2Client:
        return self

    def __exit__(self, *exc_info) -> None:
        self.sock.close()

    @property
    def stream_window(self) -> int:
        """The window each stream starts with (our SETTINGS_INITIAL_WINDOW_SIZE)."""
        return self.conn.local_settings.initial_window_size

    def request(
        self,
        method: str,
        path: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        end: bool = True,
    ) -> int:
        """Open a stream; `end=False` leaves the request body open for `send`."""
        stream_id = self.conn.get_next_available_stream_id()
        self.streams[stream_id] = Stream()
        head = [
            (":method", method),
            (":path", path),
            (":scheme", "http"),
            (":authority", self.authority),
            *(headers or []),
        ]
        self.conn.send_headers(stream_id, head, end_stream=end and not body)
        self._flush()
        if body:
            self.send(stream_id, body, end=end)
        return stream_id

    def send(self, stream_id: int, data: bytes, end: bool = False) -> None:
        """Send `data` on the stream as its window allows (waiting for WINDOW_UPDATEs)."""
        view = memoryview(data)
        while view:
            window = self.wait(
                lambda: self.conn.local_flow_control_window(stream_id),
                message=f"the server to open the window of stream {stream_id}",
            )
            size = min(window, self.conn.max_outbound_frame_size, len(view))
            self.conn.send_data(stream_id, bytes(view[:size]))
            view = view[size:]
            self._flush()
        if end:
            self.conn.end_stream(stream_id)
            self._flush()

    def send_in_turn(self, bodies: dict[int, bytes], until: int) -> dict[int, bytes]:
        """Send the streams' bodies in turn, each as far as its window allows, as browsers and
        nghttp send parallel uploads: the connection's window goes to whichever stream comes
        next, in the order of `bodies`. Once stream `until`'s body is all sent, end it; return
        what is left of the others."""
        left = {stream_id: memoryview(body) for stream_id, body in bodies.items()}

        def send_rounds() -> bool:
            """A frame per stream a round, until no window has room."""
            sent = True
            while sent and left[until]:
                sent = False
                for stream_id, view in left.items():
                    window = self.conn.local_flow_control_window(stream_id)
                    size = min(window, self.conn.max_outbound_frame_size, len(view))
                    if size > 0:
                        self.conn.send_data(stream_id, bytes(view[:size]))
                        left[stream_id] = view[size:]
                        sent = True
                self._flush()
            return not left[until]

        self.wait(send_rounds, message=f"the server to take the body of stream {until}")
        self.conn.end_stream(until)
        self._flush()
        return {stream_id: bytes(view) for stream_id, view in left.items() if stream_id != until}

    def reset(self, stream_id: int) -> None:
        """RST_STREAM with CANCEL, as a browser sends when a page no longer wants a response."""
        self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        self._flush()

    def hold(self, stream_id: int) -> None:
        """Stop acknowledging the stream's data: its window closes once filled."""
        self.held.add(stream_id)

    def release(self, stream_id: int) -> None:
        """Acknowledge what the stream holds and whatever comes after it."""
        self.held.discard(stream_id)
        stream = self.streams[stream_id]
        if stream.held:
            self.conn.acknowledge_received_data(stream.held, stream_id)
            stream.held = 0
            self._flush()

    def response(self, stream_id: int, timeout: float = 30.0) -> Stream:
        """The stream, once it has ended or been reset."""
        stream = self.streams[stream_id]
        return self.wait(
            lambda: stream.done and stream, timeout, f"stream {stream_id} to end or be reset"
        )

    def wait(self, condition, timeout: float = 30.0, message: str = "condition"):
        """Read frames until `condition()` is truthy, and return it."""
        deadline = time.monotonic() + timeout
        while not (result := condition()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {message}; {self.summary()}"
                )
            self._read(remaining)
        return result

    def summary(self) -> str:
        streams = {
            stream_id: (s.status, len(s.data), s.ended, s.reset, s.held)
            for stream_id, s in self.streams.items()
        }
        return f"streams (status, bytes, ended, reset, held): {streams}, goaway: {self.goaway}"

    def _read(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return
        if not data:
            raise AssertionError(f"the server closed the connection; {self.summary()}")
        for event in self.conn.receive_data(data):
            self._handle(event)
        self._flush()

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event
            return
        stream = self.streams.get(getattr(event, "stream_id", 0))
        if stream is None:
            return
        if isinstance(event, h2.events.ResponseReceived):
            stream.status = int(dict(event.headers)[b":status"])
        elif isinstance(event, h2.events.DataReceived):
            stream.data += event.data
            if event.stream_id in self.held:
                stream.held += event.flow_controlled_length
            elif event.flow_controlled_length:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            stream.ended = True
        elif isinstance(event, h2.events.StreamReset):
            stream.reset = event.error_code

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)


def sha256(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


def h2_client(**kwargs) -> httpx.Client:
    return httpx.Client(http1=False, http2=True, timeout=30, **kwargs)


@pytest.fixture
def stream_server(run_rsasgi, markers) -> Server:
    return run_rsasgi("proto_stream:app", env={"PROTO_MARKER_DIR": str(markers)})


def assert_connection_carries_on(client: H2Client) -> None:
    """A new stream on the same connection is answered in full, and no GOAWAY came."""
    other = client.response(client.request("GET", "/"))
    assert (other.status, bytes(other.data), other.ended) == (200, b"ok", True)
    assert client.goaway is None, client.goaway


# --- flow control ----------------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "app, route",
    [("proto_stream:app", "/download"), ("wsgi_stream:app", "/gen")],
    ids=["asgi", "wsgi-generator"],
)
def test_a_stream_whose_window_stays_closed_does_not_hold_back_another(
    run_rsasgi, markers, app, route
):
    """Stream 1 streams 8 MiB to a client that acknowledges none of it (its window, 65,535
    bytes, closes once filled); stream 3, opened then, gets its whole 1 MiB response on the
    same connection. Reopened, stream 1 then completes, every byte in order. Both routes
    send block(i, chunk) for the i-th piece."""
    server = run_rsasgi(
        app, env={"PROTO_MARKER_DIR": str(markers), "WSGI_MARKER_DIR": str(markers)}
    )
    size, chunk = 8 * MiB, 65536
    with H2Client(server) as client:
        stalled = client.request("GET", f"{route}?size={size}&chunk={chunk}")
        client.hold(stalled)
        client.wait(
            lambda: client.streams[stalled].held == client.stream_window,
            message="the server to fill the held stream's window",
        )

        quick = client.response(client.request("GET", f"{route}?size={MiB}&chunk={chunk}"))
        assert (quick.status, quick.ended, len(quick.data)) == (200, True, MiB)
        assert sha256(quick.data) == download_sha(MiB, chunk)
        assert not client.streams[stalled].done
        assert len(client.streams[stalled].data) == client.stream_window

        client.release(stalled)
        resumed = client.response(stalled, timeout=60)
        assert (resumed.status, resumed.ended, len(resumed.data)) == (200, True, size)
        assert sha256(resumed.data) == download_sha(size, chunk)


@pytest.mark.timeout(120)
def test_uploads_waiting_for_a_wsgi_thread_do_not_stall_the_one_being_read(run_rsasgi):
    """With one WSGI thread, stream 1's upload is read by the app while streams 3 and 5 wait
    for the thread, their bodies unread. The client sends the three bodies in turn, as far
    as the windows allow: what the waiting streams hold must not shut the connection's
    window on stream 1 (with a connection window no larger than a stream's, it did, and
    stream 1 got 408 after --timeout-request-body). Then 3 and 5 get the thread in turn."""
    server = run_rsasgi("wsgi_env:app", "--threads", "1")
    with H2Client(server) as client:
        # The server's SETTINGS, then the WINDOW_UPDATE that opens its connection window.
        client.wait(
            lambda: client.conn.outbound_flow_control_window > 65_535,
            message="the server to open its connection window",
        )
        reading = client.request("POST", "/sha256", end=False)
        waiting = [client.request("POST", "/sha256", end=False) for _ in range(2)]
        # The waiting streams' turns first: each round, they take what the connection's
        # window has before stream 1 can.
        bodies = {stream_id: random.randbytes(4 * MiB) for stream_id in [*waiting, reading]}
        left = client.send_in_turn(bodies, until=reading)
        read = client.response(reading)
        assert read.status == 200, client.summary()
        assert json.loads(read.data)["sha256"] == sha256(bodies[reading])

        for stream_id in waiting:
            client.send(stream_id, left[stream_id], end=True)
            answer = client.response(stream_id)
            assert answer.status == 200, client.summary()
            assert json.loads(answer.data)["sha256"] == sha256(bodies[stream_id])


# --- streaming both ways ---------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_echo_streams_both_ways_on_several_streams_at_once(stream_server):
    """Four POST /echo streams on one connection, their request bodies sent piece by piece in
    turn: each piece comes back on its own stream before the next is sent (the app reads
    each as it arrives and answers at once), and each whole body comes back byte for byte.
    Pieces straddle the frame size (16 KiB) and the client's stream window (65,535 bytes)."""
    rng = random.Random(10)
    sizes = [1, 1000, 16384, 16385, 70_000, 5, 200_000, 4096]
    with H2Client(stream_server) as client:
        streams = [client.request("POST", "/echo", end=False) for _ in range(4)]
        sent = {stream_id: bytearray() for stream_id in streams}
        for turn, size in enumerate(sizes):
            for stream_id in streams:
                piece = rng.randbytes(size)
                client.send(stream_id, piece)
                sent[stream_id] += piece
            client.wait(
                lambda: all(len(client.streams[s].data) >= len(sent[s]) for s in streams),
                message=f"piece {turn} to come back on every stream",
            )
            for stream_id in streams:
                assert client.streams[stream_id].data == sent[stream_id], (turn, stream_id)
        for stream_id in streams:
            client.send(stream_id, b"", end=True)
        for stream_id in streams:
            echoed = client.response(stream_id)
            assert (echoed.status, echoed.ended) == (200, True)
            assert sha256(echoed.data) == sha256(sent[stream_id])
        assert client.goaway is None


@pytest.mark.timeout(120)
def test_concurrent_uploads_and_downloads_on_one_connection_are_byte_identical(stream_server):
    """httpx, one HTTP/2 connection: three 8 MiB uploads without a length (the app reads
    them message by message) and three 8 MiB streamed downloads at the same time.

    The client is httpx's AsyncClient on one event loop. A sync Client shared by threads
    is not safe on HTTP/2: httpcore can hand two threads the same stream ID, and the
    connection then fails on the client's side (h2 raises SEND_HEADERS in HALF_CLOSED_LOCAL).
    """
    size, piece = 8 * MiB, 64 * 1024

    async def upload(client: httpx.AsyncClient, seed: int) -> tuple[str, dict]:
        rng = random.Random(seed)
        pieces = [rng.randbytes(piece) for _ in range(size // piece)]

        async def body():
            for data in pieces:
                yield data

        response = await client.post("/upload", content=body())
        assert (response.http_version, response.status_code) == ("HTTP/2", 200), response.text
        return sha256(b"".join(pieces)), response.json()

    async def download(client: httpx.AsyncClient) -> str:
        digest, total = hashlib.sha256(), 0
        async with client.stream("GET", f"/download?size={size}&chunk={piece}") as response:
            assert (response.http_version, response.status_code) == ("HTTP/2", 200)
            async for data in response.aiter_raw():
                digest.update(data)
                total += len(data)
        assert total == size
        return digest.hexdigest()

    async def exchange() -> tuple[list, list]:
        async with httpx.AsyncClient(
            http1=False, http2=True, timeout=30, base_url=stream_server.url
        ) as client:
            assert (await client.get("/")).content == b"ok"  # the connection the others share
            work = asyncio.gather(
                asyncio.gather(*(upload(client, seed) for seed in range(3))),
                asyncio.gather(*(download(client) for _ in range(3))),
            )
            return tuple(await asyncio.wait_for(work, 90))

    uploads, downloads = asyncio.run(exchange())
    for expected, result in uploads:
        assert (result["sha256"], result["bytes"]) == (expected, size)
        assert result["messages"] > 1, result
    assert downloads == [download_sha(size, piece)] * 3

    records = wait_for(
        lambda: (records := access_log(stream_server.output())) and len(records) == 7 and records,
        message="seven access log lines",
        server=stream_server,
    )
    assert len({record["client"] for record in records}) == 1, records


# --- disconnects -----------------------------------------------------------------------------


def test_rst_stream_while_the_app_waits_in_receive_is_http_disconnect(stream_server, markers):
    with H2Client(stream_server) as client:
        stream_id = client.request("GET", "/wait-disconnect?tag=idle")
        wait_for_file(markers / "idle.started")
        client.reset(stream_id)
        types = json.loads(wait_for_file(markers / "idle.disconnect"))
        assert types == ["http.request", "http.disconnect"]
        assert_connection_carries_on(client)


def test_access_log_tells_a_reset_stream_from_a_closed_connection(stream_server, markers):
    """A request left without a response is 499 either way; over HTTP/2 the line says
    whether the client reset its stream (the connection carrying on) or closed the
    connection."""
    with H2Client(stream_server) as client:
        reset = client.request("GET", "/wait-disconnect?tag=reset")
        wait_for_file(markers / "reset.started")
        client.reset(reset)
        wait_for_file(markers / "reset.disconnect")
        client.request("GET", "/wait-disconnect?tag=closed")
        wait_for_file(markers / "closed.started")

    def line(tag: str) -> str:
        target = f"/wait-disconnect?tag={tag} HTTP/2.0"
        return next((line for line in stream_server.output().splitlines() if target in line), "")

    reset_line = wait_for(lambda: line("reset"), message="the reset request's line")
    assert " 499 0 " in reset_line
    assert reset_line.endswith("(client reset the stream before the response)")
    closed_line = wait_for(lambda: line("closed"), message="the closed request's line")
    assert " 499 0 " in closed_line
    assert closed_line.endswith("(client closed the connection before the response)")


def test_rst_stream_in_the_middle_of_the_body_is_http_disconnect(stream_server, markers):
    """Content-Length 100, 10 bytes sent, then RST_STREAM: the app never sees a complete
    body, and its receive() returns http.disconnect."""
    with H2Client(stream_server) as client:
        stream_id = client.request(
            "POST",
            "/wait-disconnect?tag=mid",
            headers=[("content-length", "100")],
            body=b"0123456789",
            end=False,
        )
        wait_for_file(markers / "mid.begun")
        client.reset(stream_id)
        types = json.loads(wait_for_file(markers / "mid.disconnect"))
        assert types[-1] == "http.disconnect", types
        assert set(types[:-1]) <= {"http.request"}, types
        assert not (markers / "mid.started").exists(), "a truncated body was reported whole"
        assert_connection_carries_on(client)


def assert_client_disconnected(result: str) -> None:
    """The outcome proto_stream recorded: send() raised rsasgi.ClientDisconnected, an
    OSError."""
    assert result != "no exception", "send() kept succeeding after the stream was reset"
    info = json.loads(result)
    assert (info["type"], "OSError" in info["mro"]) == ("ClientDisconnected", True), info


def test_send_raises_when_the_stream_is_reset_while_the_app_sends(stream_server, markers):
    """The app streams until send() raises; the client holds the stream's window closed so
    that send() is waiting on a full buffer when RST_STREAM arrives."""
    with H2Client(stream_server) as client:
        stream_id = client.request("GET", "/stream-until-error?tag=gone")
        client.hold(stream_id)
        wait_for_file(markers / "gone.started")
        client.wait(
            lambda: client.streams[stream_id].held == client.stream_window,
            message="the server to fill the held stream's window",
        )
        client.reset(stream_id)
        assert_client_disconnected(wait_for_file(markers / "gone.result", timeout=15))
        assert_connection_carries_on(client)


def test_send_after_the_app_heard_http_disconnect_does_nothing(stream_server, markers):
    """The app waits for http.disconnect (RST_STREAM), then calls send(): it knows the
    stream is gone, and the send is dropped without raising (as over HTTP/1.1, see
    test_streaming.py); the connection's other streams carry on."""
    with H2Client(stream_server) as client:
        stream_id = client.request("GET", "/send-after-disconnect?tag=late")
        wait_for_file(markers / "late.started")
        client.reset(stream_id)
        result = wait_for_file(markers / "late.result", timeout=15)
        assert result == "no exception", f"send() after http.disconnect raised {result}"
        assert_connection_carries_on(client)


def test_rst_stream_closes_a_wsgi_response_iterable(run_rsasgi, markers):
    """The WSGI counterpart of send() raising: the app's iterable yields 64 KiB pieces until
    the stream is reset, then the server stops iterating and calls its close() once."""
    server = run_rsasgi("wsgi_stream:app", env={"WSGI_MARKER_DIR": str(markers)})
    with H2Client(server) as client:
        stream_id = client.request("GET", "/close?mode=disconnect&tag=gone")
        client.hold(stream_id)
        client.wait(
            lambda: client.streams[stream_id].held == client.stream_window,
            message="the server to fill the held stream's window",
        )
        client.reset(stream_id)
        wait_for_line(markers / "gone.log", "close", timeout=15)
        lines = stable_lines(markers / "gone.log")
        assert (lines[-1], lines.count("close"), "gave up" in lines) == ("close", 1, False)
        assert_connection_carries_on(client)


# --- limits ----------------------------------------------------------------------------------


def test_limit_concurrency_answers_503_to_a_second_stream_while_the_first_is_in_flight(
    run_rsasgi, markers
):
    """--limit-concurrency 1, one connection: stream 1's request body is still open (the app
    has echoed its first piece), so stream 3 gets 503; stream 1 then completes."""
    server = run_rsasgi(
        "--limit-concurrency", "1", "proto_stream:app", env={"PROTO_MARKER_DIR": str(markers)}
    )
    with H2Client(server) as client:
        first = client.request("POST", "/echo", end=False)
        client.send(first, b"in flight")
        client.wait(lambda: client.streams[first].data == b"in flight", message="the first echo")

        second = client.response(client.request("GET", "/"))
        assert (second.status, second.ended) == (503, True)

        client.send(first, b"", end=True)
        done = client.response(first)
        assert (done.status, bytes(done.data), done.ended) == (200, b"in flight", True)

        # The slot is free again once the first response is over.
        def answered() -> Stream | None:
            again = client.response(client.request("GET", "/"))
            return again if again.status == 200 else None

        assert bytes(wait_for(answered, message="the slot to be free", server=server).data) == (
            b"ok"
        )
        assert client.goaway is None


@pytest.mark.parametrize("framing", ["content-length", "no-length"])
def test_limit_request_body_answers_413_on_its_stream_only(run_rsasgi, framing):
    """--limit-request-body 1000: a 1001-byte body gets 413 (before the app sees it when
    Content-Length says so, as it arrives otherwise), while a stream opened before it, its
    body still arriving, and one opened after it are answered in full."""
    server = run_rsasgi("--limit-request-body", "1000", "proto_http:app")
    with H2Client(server) as client:
        before = client.request("POST", "/echo", body=b"a" * 500, end=False)
        length = [("content-length", "1001")] if framing == "content-length" else []
        over = client.response(client.request("POST", "/echo", headers=length, body=b"x" * 1001))
        assert over.status == 413

        client.send(before, b"b" * 500, end=True)
        whole = client.response(before)
        assert (whole.status, bytes(whole.data)) == (200, b"a" * 500 + b"b" * 500)
        after = client.response(client.request("POST", "/echo", body=b"c" * 1000))
        assert (after.status, bytes(after.data)) == (200, b"c" * 1000)
        assert client.goaway is None


# --- access log ------------------------------------------------------------------------------


def test_access_log_names_http2(run_rsasgi):
    """The access log line of an HTTP/2 request says HTTP/2.0 (http::Version's name), as an
    HTTP/1.1 one says HTTP/1.1."""
    server = run_rsasgi("proto_http:app")
    with h2_client(base_url=server.url) as client:
        assert client.get("/").http_version == "HTTP/2"
        assert client.post("/echo", content=b"hello").content == b"hello"
    records = wait_for(
        lambda: (records := access_log(server.output())) and len(records) == 2 and records,
        message="two access log lines",
        server=server,
    )
    seen = {r["target"]: (r["method"], r["version"], r["status"], r["bytes"]) for r in records}
    assert seen == {
        "/": ("GET", "HTTP/2.0", "200", "11"),
        "/echo": ("POST", "HTTP/2.0", "200", "5"),
    }


# --- WSGI ------------------------------------------------------------------------------------


def test_flask_streams_a_response_over_http2(run_rsasgi):
    server = run_rsasgi("wsgifw_flask:app")
    with h2_client(base_url=server.url) as client:
        hello = client.get("/")
        streamed = client.get("/stream")
    assert (hello.http_version, hello.status_code, hello.text) == (
        "HTTP/2",
        200,
        "Hello from Flask",
    )
    assert streamed.status_code == 200
    assert streamed.content == b"".join(
        b"%d:" % number + STREAM_CHUNK + b"\n" for number in range(STREAM_CHUNKS)
    )


def test_flask_reads_a_streamed_request_body_over_http2(run_rsasgi):
    """A body without a length, as an HTTP/2 client streams it: Flask reads it to its end
    (the server says wsgi.input_terminated)."""
    server = run_rsasgi("wsgifw_flask:app")
    rng = random.Random(3)
    pieces = [rng.randbytes(50_000) for _ in range(40)]
    with h2_client(base_url=server.url) as client:
        response = client.post("/digest", content=iter(pieces))
    assert (response.http_version, response.status_code) == ("HTTP/2", 200), response.text
    body = b"".join(pieces)
    assert response.json() == {"size": len(body), "sha256": sha256(body)}


def test_wsgi_generator_streams_a_response_over_http2(run_rsasgi):
    server = run_rsasgi("wsgi_stream:app")
    size, chunk = 4 * MiB, 10_000
    digest, total = hashlib.sha256(), 0
    with h2_client(base_url=server.url) as client:
        with client.stream("GET", f"/gen?size={size}&chunk={chunk}") as response:
            assert (response.http_version, response.status_code) == ("HTTP/2", 200)
            for data in response.iter_raw():
                digest.update(data)
                total += len(data)
    assert total == size
    assert digest.hexdigest() == download_sha(size, chunk)


def test_wsgi_input_reads_the_body_as_it_arrives_over_http2(run_rsasgi, markers):
    """The app reads wsgi.input in 64 KiB reads; the client sends the second half of the
    body only once the app has read from the first (so nothing waited for the whole body)."""
    server = run_rsasgi("wsgi_env:app", env={"WSGI_MARKER_DIR": str(markers)})
    rng = random.Random(4)
    pieces = [rng.randbytes(100_000) for _ in range(20)]

    def body():
        yield from pieces[:10]
        wait_for(
            (markers / "up.progress").exists,
            message="the app to read the first half while the rest is unsent",
            server=server,
        )
        yield from pieces[10:]

    with h2_client(base_url=server.url) as client:
        response = client.post("/sha256?chunk=65536&tag=up", content=body())
    assert (response.http_version, response.status_code) == ("HTTP/2", 200), response.text
    whole = b"".join(pieces)
    result = response.json()
    assert (result["sha256"], result["size"]) == (sha256(whole), len(whole))
    assert result["reads"] > 1, result


# --- frameworks through curl and h2load ------------------------------------------------------


@pytest.fixture(scope="module")
def django_project(tmp_path_factory) -> Path:
    return build_django_project(tmp_path_factory)


# What each framework answers on one of its pages: (app, path, text the body holds).
FRAMEWORK_PAGES = {
    "starlette": ("fw_starlette:app", "/items/7?q=h2", '"item_id":7'),
    "flask": ("wsgifw_flask:app", "/greet/h2", "Hello, h2!"),
    "django-asgi": ("mysite.asgi:application", "/hello/", "users: admin, alice"),
    "django-wsgi": ("mysite.wsgi:application", "/hello/", "users: admin, alice"),
}


def start_framework(request: pytest.FixtureRequest, name: str, tls: bool) -> Server:
    """rsasgi serving the framework `name` of FRAMEWORK_PAGES, over TLS when `tls`."""
    app = FRAMEWORK_PAGES[name][0]
    args: list[str] = []
    env = None
    if name.startswith("django"):
        args = ["--app-dir", str(request.getfixturevalue("django_project"))]
        env = DJANGO_ENV
    if tls:
        return request.getfixturevalue("serve_tls")(*args, app=app, env=env)
    return request.getfixturevalue("run_rsasgi")(app, *args, env=env)


def curl(*args: str) -> tuple[str, str]:
    """curl's body and the HTTP version it used (curl's %{http_version}: "2", "1.1")."""
    result = subprocess.run(
        [CURL, "-sS", "--fail", "--max-time", "20", "-w", "\n%{http_version}", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    body, _, version = result.stdout.rpartition("\n")
    return body, version


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
@pytest.mark.parametrize("name", list(FRAMEWORK_PAGES))
def test_curl_http2_prior_knowledge_reaches_the_framework(request, name):
    server = start_framework(request, name, tls=False)
    _, path, expected = FRAMEWORK_PAGES[name]
    body, version = curl("--http2-prior-knowledge", server.url + path)
    assert version == "2"
    assert expected in body, body


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
@pytest.mark.parametrize("name", list(FRAMEWORK_PAGES))
def test_curl_http2_over_tls_reaches_the_framework(pki, request, name):
    server = start_framework(request, name, tls=True)
    _, path, expected = FRAMEWORK_PAGES[name]
    body, version = curl("--http2", "--cacert", str(pki.ca_file), https(server, path))
    assert version == "2"
    assert expected in body, body


@pytest.fixture
def h2load() -> str:
    if H2LOAD is None:
        message = "h2load is not installed (apt-get install -y nghttp2-client)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return H2LOAD


@pytest.mark.timeout(240)
@pytest.mark.parametrize("tls", [False, True], ids=["cleartext", "tls"])
def test_h2load_against_starlette_gets_only_2xx(run_rsasgi, serve_tls, h2load, tls):
    """2000 requests, 4 connections, up to 10 streams at once on each."""
    if tls:
        server = serve_tls(app="fw_starlette:app")
        url, protocol = https(server, "/items/1"), "h2"
    else:
        server = run_rsasgi("fw_starlette:app")
        url, protocol = f"{server.url}/items/1", "h2c"
    result = subprocess.run(
        [h2load, "-n", "2000", "-c", "4", "-m", "10", url],
        capture_output=True,
        text=True,
        timeout=200,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert f"Application protocol: {protocol}\n" in out, out
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    assert codes, out
    assert [int(n) for n in codes.groups()] == [2000, 0, 0, 0], out
