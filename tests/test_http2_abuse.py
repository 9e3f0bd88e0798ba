"""HTTP/2 abuse (cleartext, prior knowledge): the frame sequences behind the published denial
of service attacks, sent to a real rsasgi process; app: tests/apps/h2_abuse.py.

Each attack comes from a raw socket that writes frames exactly as the test builds them
(`hyperframe` frames, header blocks HPACK-encoded with `hpack`), with no state machine in
the way, so sequences a correct client never sends go out as written. Meanwhile a
bystander, an ordinary HTTP/2 client (httpx), keeps making requests that must all succeed,
and the server's RSS (VmRSS of the process and its children) must stay within a bound.

What the defences are, where they live:

* hyper 1 / h2 0.4: a remote reset of a stream not yet accepted counts towards
  `max_pending_accept_reset_streams` (20); a stream the server has to reset because of the
  peer's frames counts towards `max_local_error_reset_streams` (1024 per connection);
  more than `max_header_list_size / max_frame_size` CONTINUATION frames (plus 25 %, at
  least 5) end the connection; an unacknowledged SETTINGS or PING stops the reading of
  further frames until its acknowledgement is written. All of these end in GOAWAY
  ENHANCE_YOUR_CALM or in back-pressure.
* rsasgi: the keep-alive PINGs (`--http2-keep-alive-interval/-timeout`), the idle
  deadlines (`--timeout-request-header`, `--timeout-keep-alive`) and `--timeout-request`.

A paced rapid reset (streams reset once their heads arrive, while their app tasks work on)
is held too: a connection gets no more live app tasks than --http2-max-concurrent-streams,
and --limit-concurrency counts a task until it returns.

A peer that answers PINGs but never opens its window has its stream reset at --timeout-send;
one that never finishes its request body gets 408 at --timeout-request-body; --timeout-request cuts
a response stalled on flow control.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

import hpack
import httpx
import pytest
from apps.proto_raw import rss_kib
from conftest import wait_for, wait_for_log
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER = 9
# RFC 9113 §7 error codes.
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
CANCEL = 0x8
ENHANCE_YOUR_CALM = 0xB
# hyper's default for `max_local_error_reset_streams`, which rsasgi does not change.
MAX_LOCAL_ERROR_RESETS = 1024
MIB = 1024 * 1024

# Every test sets timeouts this short; a connection the server means to close is gone well
# within CLOSE_DEADLINE, and one still open after it is held for good.
SHORT_TIMEOUTS = (
    "--timeout-request-header",
    "1",
    "--timeout-keep-alive",
    "1",
    "--http2-keep-alive-interval",
    "1",
    "--http2-keep-alive-timeout",
    "1",
)
CLOSE_DEADLINE = 15.0


class RawClient:
    """One HTTP/2 connection whose frames go out exactly as given.

    It reads what the server sends, acknowledges the server's SETTINGS, and answers its
    PINGs when `answer_pings` is true (a peer that does not is one the server's keep-alive
    PINGs will find dead). Writes from the reading thread and a background sender never
    interleave inside a frame.
    """

    def __init__(self, server, settings: dict[int, int] | None = None, answer_pings: bool = True):
        self.sock = server.connect()
        self.authority = f"127.0.0.1:{server.port}"
        self.answer_pings = answer_pings
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.buffer = b""
        self.frames: list[Frame] = []
        # The decoded response header blocks, by stream.
        self.responses: dict[int, dict[str, str]] = {}
        self.closed = False
        self._write_lock = threading.Lock()
        self.send(PREFACE + SettingsFrame(0, settings=settings or {}).serialize())

    def request(self, stream_id: int, path: str, *, end_stream: bool = True) -> bytes:
        """A GET's HEADERS frame (END_HEADERS; END_STREAM unless told otherwise)."""
        flags = ["END_HEADERS", "END_STREAM"] if end_stream else ["END_HEADERS"]
        return HeadersFrame(stream_id, self.header_block(path), flags=flags).serialize()

    def header_block(self, path: str) -> bytes:
        return self.encoder.encode(
            [
                (":method", "GET"),
                (":scheme", "http"),
                (":path", path),
                (":authority", self.authority),
            ]
        )

    def send(self, data: bytes) -> None:
        with self._write_lock:
            self.sock.sendall(data)

    def send_in_background(self, batches: list[bytes]) -> Sender:
        """Write each batch (whole frames) from another thread, until one fails."""
        return Sender(self, batches)

    def _fill(self, deadline: float, what: str) -> None:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"timed out waiting for {what}; frames so far: {self.frames[-20:]}"
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
        self.buffer += data

    def _parse(self) -> None:
        while len(self.buffer) >= FRAME_HEADER:
            frame, length = Frame.parse_frame_header(memoryview(self.buffer[:FRAME_HEADER]))
            end = FRAME_HEADER + length
            if len(self.buffer) < end:
                return
            frame.parse_body(memoryview(self.buffer[FRAME_HEADER:end]))
            self.buffer = self.buffer[end:]
            self.frames.append(frame)
            if isinstance(frame, HeadersFrame):
                fields = self.decoder.decode(frame.data)
                self.responses[frame.stream_id] = {str(k): str(v) for k, v in fields}
            elif isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
                self._reply(SettingsFrame(0, flags=["ACK"]))
            elif isinstance(frame, PingFrame) and "ACK" not in frame.flags and self.answer_pings:
                self._reply(PingFrame(0, flags=["ACK"], opaque_data=frame.opaque_data))

    def _reply(self, frame: Frame) -> None:
        try:
            self.send(frame.serialize())
        except OSError:
            self.closed = True

    def read_until(self, condition: Callable[[], object], timeout: float, what: str) -> None:
        """Read frames until `condition()` holds; fails when the server closes first."""
        deadline = time.monotonic() + timeout
        while True:
            self._parse()
            if condition():
                return
            assert not self.closed, f"the server closed the connection before {what}"
            self._fill(deadline, what)

    def read_until_closed(self, timeout: float = CLOSE_DEADLINE) -> list[Frame]:
        """Every frame until the server closes the connection; fails after `timeout` s."""
        deadline = time.monotonic() + timeout
        while not self.closed:
            self._parse()
            self._fill(deadline, "the server to close the connection")
        self._parse()
        return self.frames

    def of_type(self, kind: type[Frame]) -> list[Frame]:
        return [frame for frame in self.frames if isinstance(frame, kind)]

    def close(self) -> None:
        self.sock.close()


class Sender(threading.Thread):
    """Writes batches of frames to a RawClient's socket until they run out or the server
    closes the connection (`refused` then holds the error)."""

    def __init__(self, client: RawClient, batches: list[bytes]):
        super().__init__(daemon=True)
        self.client = client
        self.batches = batches
        self.sent = 0
        self.refused: OSError | None = None
        self.start()

    def run(self) -> None:
        for batch in self.batches:
            try:
                self.client.send(batch)
            except OSError as err:
                self.refused = err
                return
            self.sent += 1


class Flooder(threading.Thread):
    """Writes the same batch of frames over and over, never reading, until the server closes
    the connection or `give_up_after` seconds pass."""

    def __init__(self, client: RawClient, batch: bytes, give_up_after: float = 30.0):
        super().__init__(daemon=True)
        self.client = client
        self.batch = batch
        self.batches = 0
        self.refused: OSError | None = None
        self.give_up_at = time.monotonic() + give_up_after
        self.client.sock.settimeout(give_up_after)
        self.start()

    def run(self) -> None:
        while time.monotonic() < self.give_up_at:
            try:
                self.client.sock.sendall(self.batch)
            except OSError as err:
                self.refused = err
                return
            self.batches += 1


class Bystander(threading.Thread):
    """An ordinary client: GET / over a fresh HTTP/2 connection, again and again, until
    stopped. Every answer must be a 200 "ok"."""

    def __init__(self, server, busy_is_ok: bool = False):
        super().__init__(daemon=True)
        self.url = f"{server.url}/"
        # A 503 is the right answer while a worker-wide limit is taken up.
        self.busy_is_ok = busy_is_ok
        self.answered = 0
        self.failures: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                with httpx.Client(http1=False, http2=True, timeout=10) as client:
                    response = client.get(self.url)
                assert response.http_version == "HTTP/2", response.http_version
                if not (self.busy_is_ok and response.status_code == 503):
                    assert (response.status_code, response.text) == (200, "ok"), response
                self.answered += 1
            except Exception as err:  # noqa: BLE001 - every failure is reported
                self.failures.append(repr(err))
            # Pace the requests so that they do not compete with the attack for the CPU.
            self.stopping.wait(0.05)

    def wait_answered(self, count: int, server) -> None:
        """Wait until `count` more requests have been answered."""
        target = self.answered + count
        wait_for(lambda: self.answered >= target or self.failures, 30, server=server)
        assert not self.failures, self.failures

    def __enter__(self) -> Bystander:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.join(15)
        assert not self.failures, self.failures


def stats(server) -> dict:
    """The app's counters (see tests/apps/h2_abuse.py)."""
    with httpx.Client(http1=False, http2=True, timeout=10) as client:
        return client.get(f"{server.url}/stats").json()


def stats_if_free(server) -> dict | None:
    """The app's counters, or None while the worker answers 503 (its limit taken up)."""
    with httpx.Client(http1=False, http2=True, timeout=10) as client:
        response = client.get(f"{server.url}/stats")
    return response.json() if response.status_code == 200 else None


def settled(read: Callable[[], int], server, polls: int = 5, interval: float = 0.1) -> int:
    """Wait until `read()` returns the same value `polls` times in a row; return it."""
    history: list[int] = []

    def steady() -> bool:
        history.append(read())
        time.sleep(interval)
        return len(history) >= polls and len(set(history[-polls:])) == 1

    wait_for(steady, 30, message="the value to settle", server=server)
    return history[-1]


class RssPeak(threading.Thread):
    """The server's highest RSS (KiB) while the block runs, sampled every 20 ms."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid = pid
        self.baseline = self.peak = rss_kib(pid)
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.02):
            self.peak = max(self.peak, rss_kib(self.pid))

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.baseline) / 1024

    def __enter__(self) -> RssPeak:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.join()
        self.peak = max(self.peak, rss_kib(self.pid))


def start(run_rsasgi, *args: str):
    """rsasgi serving the abuse app with the short timeouts, warmed up by one request."""
    server = run_rsasgi("h2_abuse:app", *SHORT_TIMEOUTS, *args)
    stats(server)
    return server


def streams(count: int) -> range:
    """The first `count` client stream identifiers."""
    return range(1, 2 * count, 2)


def in_batches(frames: list[bytes], size: int = 500) -> list[bytes]:
    return [b"".join(frames[i : i + size]) for i in range(0, len(frames), size)]


def goaway_code(client: RawClient) -> int | None:
    goaways = client.of_type(GoAwayFrame)
    return goaways[-1].error_code if goaways else None


# ---------------------------------------------------------------------------------------
# Rapid reset (CVE-2023-44487)
# ---------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_rapid_reset_burst_gets_goaway(run_rsasgi):
    """5,000 streams, each opened and at once cancelled, in one burst: the server ends the
    connection with ENHANCE_YOUR_CALM long before the app has been called for all."""
    server = start(run_rsasgi)
    client = RawClient(server, answer_pings=False)
    burst = [
        client.request(stream, "/count") + RstStreamFrame(stream, error_code=CANCEL).serialize()
        for stream in streams(5000)
    ]
    with RssPeak(server.proc.pid) as rss, Bystander(server) as bystander:
        sender = client.send_in_background(in_batches(burst))
        client.read_until_closed()
        sender.join(30)
        bystander.wait_answered(3, server)
    calls = stats(server)["calls"]
    print(f"rapid reset burst: {calls} app calls, RSS {rss.baseline} KiB +{rss.growth_mib:.1f} MiB")
    assert goaway_code(client) == ENHANCE_YOUR_CALM, client.of_type(GoAwayFrame)
    assert client.of_type(GoAwayFrame)[-1].additional_data == b"too_many_resets"
    # Not thousands: the streams reset before they were accepted never reach the app.
    assert calls < 1000
    assert rss.growth_mib < 20


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "limit_option, limit",
    # --limit-concurrency leaves room for the bystander beside a batch of streams.
    [("--http2-max-concurrent-streams", 10), ("--limit-concurrency", 20)],
)
def test_paced_rapid_reset_keeps_app_tasks_within_the_limit(run_rsasgi, limit_option, limit):
    """The reset that hyper's pending-accept limit does not see: each stream is reset only
    after the app has answered its headers, so every reset is of an accepted stream. The
    app keeps working after the reset (as one in a database query would); the number of
    app tasks running should stay within the limit set for requests in flight, be it the
    connection's concurrent streams or the worker's --limit-concurrency."""
    server = start(run_rsasgi, limit_option, str(limit))
    client = RawClient(server)
    client.read_until(lambda: client.of_type(SettingsFrame), 10, "the server's SETTINGS")
    rounds, size = 10, 10
    # The worker-wide --limit-concurrency is the attacker's to take up: the bystander may
    # then get 503s (what the limit is for), but never a hang or an error.
    with Bystander(server, busy_is_ok=limit_option == "--limit-concurrency"):
        for round_ in range(rounds):
            batch = list(streams(size * (round_ + 1)))[-size:]
            client.send(b"".join(client.request(stream, "/slow?s=8") for stream in batch))
            client.read_until(
                lambda batch=batch: all(stream in client.responses for stream in batch),
                10,
                f"the response headers of streams {batch}",
            )
            resets = [RstStreamFrame(stream, error_code=CANCEL).serialize() for stream in batch]
            client.send(b"".join(resets))
    # With --limit-concurrency taken up, /stats itself waits for a slot: the slow tasks end
    # after 8 s.
    counters = wait_for(lambda: stats_if_free(server), 30, server=server)
    peak = counters["peak_running"]
    print(f"paced rapid reset: at most {peak} app tasks running during {rounds * size} streams")
    assert peak <= limit


@pytest.mark.timeout(90)
def test_paced_rapid_reset_of_websocket_streams_keeps_app_tasks_within_the_limit(run_rsasgi):
    """The same with extended CONNECT (RFC 8441): each WebSocket stream is reset while its app
    works on the handshake. The WebSocket path also counts its app tasks against the
    connection's streams."""
    limit = 10
    server = start(run_rsasgi, "--http2-max-concurrent-streams", str(limit))
    client = RawClient(server)
    client.read_until(lambda: client.of_type(SettingsFrame), 10, "the server's SETTINGS")
    rounds, size = 10, 10
    for round_ in range(rounds):
        batch = list(streams(size * (round_ + 1)))[-size:]
        block = client.encoder.encode(
            [
                (":method", "CONNECT"),
                (":protocol", "websocket"),
                (":scheme", "http"),
                (":path", "/ws-slow?s=4"),
                (":authority", client.authority),
                ("sec-websocket-version", "13"),
            ]
        )
        client.send(
            b"".join(HeadersFrame(s, block, flags=["END_HEADERS"]).serialize() for s in batch)
        )
        time.sleep(0.1)  # Long enough for the app to be working on each.
        resets = [RstStreamFrame(stream, error_code=CANCEL).serialize() for stream in batch]
        client.send(b"".join(resets))
    counters = wait_for(lambda: stats_if_free(server), 30, server=server)
    peak = counters["peak_running"]
    print(f"paced rapid reset: at most {peak} websocket app tasks during {rounds * size} streams")
    assert 0 < peak <= limit


# ---------------------------------------------------------------------------------------
# CONTINUATION flood (CVE-2024-27316 and its kin)
# ---------------------------------------------------------------------------------------


def many_small_continuations(client: RawClient) -> list[bytes]:
    """HEADERS without END_HEADERS, then 10,000 CONTINUATION frames of one field each, none
    of them ending the header block."""
    frames = [HeadersFrame(1, client.header_block("/count"), flags=["END_STREAM"]).serialize()]
    field = client.encoder.encode([("x-pad", "a" * 16)])
    frames += [ContinuationFrame(1, field).serialize() for _ in range(10_000)]
    return frames


def one_growing_field(client: RawClient) -> list[bytes]:
    """HEADERS without END_HEADERS, then one 16 MiB field value in 16 KiB CONTINUATION
    frames: far beyond --http2-max-header-list-size (64 KiB here)."""
    frames = [HeadersFrame(1, client.header_block("/count"), flags=["END_STREAM"]).serialize()]
    field = client.encoder.encode([("x-big", "a" * (16 * MIB))], huffman=False)
    step = 16 * 1024
    frames += [
        ContinuationFrame(1, field[i : i + step]).serialize() for i in range(0, len(field), step)
    ]
    return frames


@pytest.mark.timeout(90)
@pytest.mark.parametrize("flood", [many_small_continuations, one_growing_field])
def test_continuation_flood_gets_goaway(run_rsasgi, flood):
    server = start(run_rsasgi)
    client = RawClient(server, answer_pings=False)
    with RssPeak(server.proc.pid) as rss, Bystander(server) as bystander:
        sender = client.send_in_background(in_batches(flood(client), 50))
        client.read_until_closed()
        sender.join(30)
        bystander.wait_answered(3, server)
    print(f"CONTINUATION flood: {sender.sent} batches sent, RSS +{rss.growth_mib:.1f} MiB")
    assert goaway_code(client) == ENHANCE_YOUR_CALM, client.of_type(GoAwayFrame)
    assert client.of_type(GoAwayFrame)[-1].additional_data == b"too_many_continuations"
    assert stats(server)["calls"] == 0
    assert rss.growth_mib < 20


# ---------------------------------------------------------------------------------------
# MadeYouReset (CVE-2025-8671)
# ---------------------------------------------------------------------------------------


def priority_on_itself(stream: int) -> bytes:
    """A stream that depends on itself: a stream error (PROTOCOL_ERROR, RFC 9113 §5.3.1)."""
    return PriorityFrame(stream, depends_on=stream, stream_weight=15).serialize()


def window_update_overflow(stream: int) -> bytes:
    """A stream window pushed past 2^31-1: a stream error (FLOW_CONTROL_ERROR, §6.9.1)."""
    return WindowUpdateFrame(stream, window_increment=2**31 - 1).serialize()


def data_on_a_half_closed_stream(stream: int) -> bytes:
    """DATA after END_STREAM: a stream error (STREAM_CLOSED, §6.1)."""
    return DataFrame(stream, b"x").serialize()


def window_update_of_zero(stream: int) -> bytes:
    """A stream WINDOW_UPDATE of 0: a stream error (PROTOCOL_ERROR, §6.9)."""
    return WindowUpdateFrame(stream, window_increment=0).serialize()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("provoke", [priority_on_itself, window_update_overflow])
def test_made_you_reset_gets_goaway(run_rsasgi, provoke):
    """2,000 requests, each followed by a frame that obliges the server to reset the stream
    itself: after at most 1024 such resets the connection ends with ENHANCE_YOUR_CALM."""
    server = start(run_rsasgi)
    client = RawClient(server, answer_pings=False)
    attack = [client.request(stream, "/count") + provoke(stream) for stream in streams(2000)]
    with RssPeak(server.proc.pid) as rss, Bystander(server) as bystander:
        sender = client.send_in_background(in_batches(attack))
        client.read_until_closed()
        sender.join(30)
        bystander.wait_answered(3, server)
    resets = client.of_type(RstStreamFrame)
    calls = stats(server)["calls"]
    print(
        f"MadeYouReset ({provoke.__name__}): {len(resets)} RST_STREAM, {calls} app calls, "
        f"RSS +{rss.growth_mib:.1f} MiB, {client.of_type(GoAwayFrame)}",
    )
    assert goaway_code(client) == ENHANCE_YOUR_CALM, client.of_type(GoAwayFrame)
    assert client.of_type(GoAwayFrame)[-1].additional_data == b"too_many_internal_resets"
    assert len(resets) <= MAX_LOCAL_ERROR_RESETS
    assert calls <= MAX_LOCAL_ERROR_RESETS
    assert rss.growth_mib < 20


@pytest.mark.timeout(60)
@pytest.mark.parametrize("provoke", [data_on_a_half_closed_stream, window_update_of_zero])
def test_made_you_reset_primitives_h2_treats_as_connection_errors(run_rsasgi, provoke):
    """h2 is stricter than RFC 9113 here: these stream errors end the whole connection
    (GOAWAY PROTOCOL_ERROR) at the first one, so no stream is ever reset for them."""
    server = start(run_rsasgi)
    client = RawClient(server, answer_pings=False)
    attack = [client.request(stream, "/count") + provoke(stream) for stream in streams(2000)]
    with Bystander(server) as bystander:
        sender = client.send_in_background(in_batches(attack))
        client.read_until_closed()
        sender.join(30)
        bystander.wait_answered(3, server)
    assert goaway_code(client) == PROTOCOL_ERROR, client.of_type(GoAwayFrame)
    assert client.of_type(GoAwayFrame)[-1].last_stream_id == 1
    assert client.of_type(RstStreamFrame) == []
    assert stats(server)["calls"] <= 1


# ---------------------------------------------------------------------------------------
# SETTINGS and PING floods
# ---------------------------------------------------------------------------------------


def settings_batch() -> bytes:
    frame = SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 65_535})
    return frame.serialize() * 1000


def ping_batch() -> bytes:
    return PingFrame(0, opaque_data=b"abusive!").serialize() * 1000


@pytest.mark.timeout(90)
@pytest.mark.parametrize("batch", [settings_batch, ping_batch], ids=["SETTINGS", "PING"])
def test_control_frame_flood_is_closed_in_bounded_memory(run_rsasgi, batch):
    """Frames that each demand an acknowledgement, sent without end and never read, while a
    request is in flight (so no idle deadline applies): the server stops reading while an
    acknowledgement is unwritten, and its keep-alive PING, never answered, ends the request.
    The connection, whose client takes none of its output, is then closed at --timeout-send
    (not at --timeout-keep-alive: output the client has yet to take is not idleness)."""
    server = start(run_rsasgi, "--timeout-send", "2")
    client = RawClient(server, answer_pings=False)
    client.send(client.request(1, "/hold", end_stream=False))
    wait_for(lambda: stats(server)["running"] == 1, message="the app to start", server=server)
    frame = batch()
    with RssPeak(server.proc.pid) as rss, Bystander(server) as bystander:
        flooder = Flooder(client, frame)
        bystander.wait_answered(3, server)
        flooder.join(60)
    sent = flooder.batches * 1000
    print(f"control frame flood: {sent} frames written, RSS +{rss.growth_mib:.1f} MiB")
    assert isinstance(flooder.refused, ConnectionError), flooder.refused
    assert sent >= 20_000
    assert rss.growth_mib < 20
    wait_for(lambda: stats(server)["running"] == 0, message="the app to end", server=server)


# ---------------------------------------------------------------------------------------
# A peer that never opens its flow-control window
# ---------------------------------------------------------------------------------------

DOWNLOAD = f"/download?size={50 * MIB}"


def stalled_download(server, window: int | None, answer_pings: bool) -> RawClient:
    """GET a 50 MiB response with a stream window of `window` bytes (None: the default
    65,535) that the client never opens further; returns once the response has started."""
    settings = {} if window is None else {SettingsFrame.INITIAL_WINDOW_SIZE: window}
    client = RawClient(server, settings=settings, answer_pings=answer_pings)
    client.send(client.request(1, DOWNLOAD))
    client.read_until(lambda: 1 in client.responses, 10, "the response headers")
    return client


@pytest.mark.timeout(90)
@pytest.mark.parametrize("window", [0, None], ids=["window-0", "default-window-never-updated"])
def test_a_peer_that_never_opens_its_window_costs_bounded_memory(run_rsasgi, window):
    server = start(run_rsasgi)
    with RssPeak(server.proc.pid) as rss, Bystander(server) as bystander:
        client = stalled_download(server, window, answer_pings=True)
        sent = settled(lambda: stats(server)["sent"], server)
        bystander.wait_answered(3, server)
    received = sum(len(frame.data) for frame in client.of_type(DataFrame))
    print(
        f"stalled window {window}: the app handed {sent} bytes to send(), {received} "
        f"reached the client, RSS +{rss.growth_mib:.1f} MiB"
    )
    assert received <= (window if window is not None else 65_535)
    assert sent < 4 * MIB
    assert rss.growth_mib < 20
    client.close()


@pytest.mark.timeout(60)
def test_a_peer_that_never_opens_its_window_nor_answers_pings_is_closed(run_rsasgi):
    server = start(run_rsasgi)
    client = stalled_download(server, 0, answer_pings=False)
    client.read_until_closed()
    assert client.of_type(PingFrame), "closed, but not by the keep-alive PING"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("window", [0, None], ids=["window-0", "default-window-never-updated"])
def test_a_peer_that_never_opens_its_window_has_its_stream_reset_at_the_send_timeout(
    run_rsasgi, window
):
    """The peer answers the keep-alive PINGs, so only --timeout-send ends the response: its
    stream is reset with CANCEL, the app's pending send() fails, other clients are served
    meanwhile, and the connection, idle then, is closed with GOAWAY."""
    server = start(run_rsasgi, "--timeout-send", "2")
    with Bystander(server) as bystander:
        client = stalled_download(server, window, answer_pings=True)
        bystander.wait_answered(3, server)
        client.read_until_closed()
    resets = client.of_type(RstStreamFrame)
    assert [(frame.stream_id, frame.error_code) for frame in resets] == [(1, CANCEL)]
    assert goaway_code(client) == 0, client.of_type(GoAwayFrame)
    wait_for_log(server, "the client took no bytes of the response for --timeout-send 2s")
    sent = settled(lambda: stats(server)["sent"], server)
    assert sent < 4 * MIB


@pytest.mark.timeout(60)
def test_a_stalled_response_does_not_hold_a_shutdown_past_the_send_timeout(run_rsasgi):
    """A connection that is closing (here: the server drains at SIGTERM) still has its stalled
    responses cut at --timeout-send, so a client that never opens its window holds the
    shutdown for that long, not for all of --timeout-graceful-shutdown."""
    server = start(run_rsasgi, "--timeout-send", "2", "--timeout-graceful-shutdown", "30")
    client = stalled_download(server, 0, answer_pings=True)
    server.proc.send_signal(signal.SIGTERM)
    client.read_until_closed()
    resets = client.of_type(RstStreamFrame)
    assert [(frame.stream_id, frame.error_code) for frame in resets] == [(1, CANCEL)]
    assert server.wait_exit(20) == 0
    assert "still open after --timeout-graceful-shutdown" not in server.output()


@pytest.mark.timeout(60)
def test_responses_sent_whole_to_a_shut_window_are_reset_at_the_send_timeout(run_rsasgi):
    """Each body is sent in one message (/whole), and the client never opens its window
    while a request of its own (/hold) keeps the connection busy. hyper gave h2 the first
    stream's 5 MiB whole, with one byte of window, and let go of the body: nothing timed
    that stream again, and such streams held their bodies in the worker for as long as the
    client liked. Handed over in pieces, every one of them is reset at --timeout-send."""
    server = start(run_rsasgi, "--timeout-send", "2")
    client = RawClient(server)
    whole = (3, 5, 7)
    client.send(client.request(1, "/hold", end_stream=False))
    for stream in whole:
        client.send(client.request(stream, f"/whole?size={5 * MIB}"))

    def reset() -> set[int]:
        return {frame.stream_id for frame in client.of_type(RstStreamFrame)}

    client.read_until(lambda: set(whole) <= reset(), 20, "every /whole stream reset")
    assert 1 not in reset()
    codes = {frame.error_code for frame in client.of_type(RstStreamFrame)}
    assert codes == {CANCEL}
    wait_for_log(server, "the client took no bytes of the response for --timeout-send 2s")
    client.close()


@pytest.mark.timeout(60)
def test_a_slow_reader_gets_the_whole_of_a_response_sent_in_one_message(run_rsasgi):
    """The client opens its window 64 KiB at a time, four times a second, for a 1 MiB body
    the app sent in one message. Given to h2 whole, the response was done for the server at
    once: the connection counted as idle, --timeout-keep-alive (1 s here) sent GOAWAY, and a
    second later the connection was dropped under the download, half of it sent (while the
    access log said 200 complete). The whole body arrives now."""
    server = start(run_rsasgi)
    client = RawClient(server)
    size = MIB
    client.send(client.request(1, f"/whole?size={size}"))
    deadline = time.monotonic() + 30
    acked, next_update, ended = 0, 0.0, False
    while not ended:
        client._parse()
        data = [frame for frame in client.of_type(DataFrame) if frame.stream_id == 1]
        received = sum(len(frame.data) for frame in data)
        ended = any("END_STREAM" in frame.flags for frame in data)
        if ended:
            break
        assert not client.closed, f"the connection closed after {received} of {size} bytes"
        now = time.monotonic()
        if received > acked and now >= next_update:
            increment = received - acked
            client.send(
                WindowUpdateFrame(0, window_increment=increment).serialize()
                + WindowUpdateFrame(1, window_increment=increment).serialize()
            )
            acked, next_update = received, now + 0.25
        client._fill(min(deadline, now + 0.05), "the rest of the body")
    assert received == size
    client.close()


@pytest.mark.timeout(60)
def test_the_last_byte_the_window_never_takes_keeps_the_request_going(run_rsasgi):
    """The client opens its window for all of a 100,000-byte body sent in one message but its
    last byte. Handed to h2 with the end of the stream, that byte ended the request for the
    server: the connection, idle to it, was closed by --timeout-keep-alive (1 s) a byte short,
    and the access log said complete. The last byte goes alone now, once the window has
    taken the rest: the request lasts until then, and here --timeout-send resets the stream
    (the client took none of it for 3 s) and the access log says incomplete."""
    server = start(run_rsasgi, "--timeout-send", "3")
    client = RawClient(server)
    size = 100_000
    client.send(client.request(1, f"/whole?size={size}"))
    more = size - 65_535 - 1
    client.send(
        WindowUpdateFrame(0, window_increment=more).serialize()
        + WindowUpdateFrame(1, window_increment=more).serialize()
    )
    client.read_until(lambda: client.of_type(RstStreamFrame), 20, "the stream reset")
    (reset,) = client.of_type(RstStreamFrame)
    assert (reset.stream_id, reset.error_code) == (1, CANCEL)
    received = sum(len(f.data) for f in client.of_type(DataFrame) if f.stream_id == 1)
    assert received == size - 1
    wait_for_log(server, f'"GET /whole?size={size} HTTP/2.0" 200', "(incomplete)")
    client.close()


@pytest.mark.timeout(60)
def test_timeout_request_cuts_a_response_whose_window_never_opens(run_rsasgi):
    """--timeout-request cuts a response that has started by resetting its stream, though
    hyper never polls its body (no window): the connection's timer does it."""
    server = start(run_rsasgi, "--timeout-request", "2")
    client = stalled_download(server, 0, answer_pings=True)
    client.read_until(lambda: client.of_type(RstStreamFrame), CLOSE_DEADLINE, "RST_STREAM")
    assert [frame.stream_id for frame in client.of_type(RstStreamFrame)] == [1]
    wait_for_log(server, "ran longer than --timeout-request 2s; its response is cut")


# ---------------------------------------------------------------------------------------
# A request that sends its headers and nothing else
# ---------------------------------------------------------------------------------------


def headers_only(server, answer_pings: bool) -> RawClient:
    """HEADERS without END_STREAM for /hold, whose app waits for the body; then silence."""
    client = RawClient(server, answer_pings=answer_pings)
    client.send(client.request(1, "/hold", end_stream=False))
    wait_for(lambda: stats(server)["running"] == 1, message="the app to start", server=server)
    return client


@pytest.mark.timeout(60)
def test_a_silent_request_whose_peer_does_not_answer_pings_is_closed(run_rsasgi):
    """The keep-alive PING goes unanswered: the connection is closed and the app's task
    ends."""
    server = start(run_rsasgi)
    with Bystander(server) as bystander:
        client = headers_only(server, answer_pings=False)
        bystander.wait_answered(3, server)
        client.read_until_closed()
    assert client.of_type(PingFrame), "closed, but not by the keep-alive PING"
    wait_for(lambda: stats(server)["running"] == 0, message="the app to end", server=server)


@pytest.mark.timeout(60)
def test_a_silent_request_body_is_answered_408_at_the_request_body_timeout(run_rsasgi):
    """The peer answers PINGs but sends no body: --timeout-request-body answers 408 on the
    stream, the app's receive() gets http.disconnect, and the connection, idle then, is
    closed with GOAWAY."""
    server = start(run_rsasgi, "--timeout-request-body", "2")
    client = headers_only(server, answer_pings=True)
    client.read_until_closed()
    assert client.responses[1][":status"] == "408"
    assert goaway_code(client) == 0, client.of_type(GoAwayFrame)
    wait_for(lambda: stats(server)["running"] == 0, message="the app to end", server=server)
    assert stats(server)["hold"] == ["http.disconnect"]
    wait_for_log(server, "408: no bytes of the request body of")


@pytest.mark.timeout(60)
def test_timeout_request_answers_a_silent_request_with_504(run_rsasgi):
    """With --timeout-request the request is answered 504 on its stream and its app task
    cancelled; the connection, idle then, is closed with GOAWAY."""
    server = start(run_rsasgi, "--timeout-request", "2")
    client = headers_only(server, answer_pings=True)
    client.read_until_closed()
    assert client.responses[1][":status"] == "504"
    assert goaway_code(client) == 0, client.of_type(GoAwayFrame)
    wait_for(lambda: stats(server)["running"] == 0, message="the app to end", server=server)


def cancel_the_stream(client: RawClient) -> None:
    client.send(RstStreamFrame(1, error_code=CANCEL).serialize())


def close_the_socket(client: RawClient) -> None:
    client.close()


def reset_the_stream_with_no_error(client: RawClient) -> None:
    client.send(RstStreamFrame(1, error_code=NO_ERROR).serialize())


def leave_the_pings_unanswered(client: RawClient) -> None:
    """Nothing more: the client never reads, so the keep-alive PING closes the connection."""


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "end",
    [
        cancel_the_stream,
        close_the_socket,
        # hyper ends the body with None whether END_STREAM arrived or the stream was
        # reset with NO_ERROR (by the client, or by hyper's keep-alive shutdown);
        # pump_body tells them apart with is_end_stream().
        reset_the_stream_with_no_error,
        leave_the_pings_unanswered,
    ],
)
def test_a_body_that_never_ends_is_a_disconnect_for_the_app(run_rsasgi, end):
    """Part of a body, then the stream goes without END_STREAM: the app must hear
    http.disconnect, not take the part it has for the whole body."""
    server = start(run_rsasgi)
    client = headers_only(server, answer_pings=False)
    client.send(DataFrame(1, b"partial").serialize())
    end(client)
    wait_for(lambda: stats(server)["running"] == 0, message="the app to end", server=server)
    assert stats(server)["hold"][-1] == "http.disconnect", stats(server)["hold"]
