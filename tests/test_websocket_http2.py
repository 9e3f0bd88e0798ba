"""WebSockets over HTTP/2 (RFC 8441): an extended CONNECT with `:protocol websocket` on a
cleartext HTTP/2 connection opens the same `websocket` scope as an HTTP/1.1 upgrade, with
http_version "2", answered 200 instead of 101; the WebSocket frames then travel in the
stream's DATA frames.

The client is the `h2` state machine on a raw socket, with WebSocket frames built by hand
(masked, as a client's must be); app: tests/apps/ws_app.py.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import time
import zlib

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest
from conftest import wait_for_log
from hyperframe.frame import DataFrame, Frame


class H2WebSocket:
    """One WebSocket over an HTTP/2 stream."""

    def __init__(self, server, path: str, headers: list[tuple[str, str]] | None = None):
        self.sock = server.connect()
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.events: list = []
        self.data = b""
        self.ended = False
        # The server must allow extended CONNECT in its SETTINGS first.
        self._pump_until(lambda: self._first(h2.events.RemoteSettingsChanged))
        assert self.conn.remote_settings.enable_connect_protocol == 1
        self.stream = self.conn.get_next_available_stream_id()
        request = [
            (":method", "CONNECT"),
            (":protocol", "websocket"),
            (":scheme", "http"),
            (":path", path),
            (":authority", f"127.0.0.1:{server.port}"),
            ("sec-websocket-version", "13"),
            *(headers or []),
        ]
        self.conn.send_headers(self.stream, request)
        self.sock.sendall(self.conn.data_to_send())
        response = self._pump_until(lambda: self._first(h2.events.ResponseReceived))
        self.headers = {name.decode(): value.decode() for name, value in response.headers}

    def _first(self, kind):
        return next((event for event in self.events if isinstance(event, kind)), None)

    def _pump_until(self, done, limit: int = 200, acknowledge: bool = True):
        """Reads events until `done()` returns something; `acknowledge=False` leaves the data
        read unacknowledged, so the server's flow-control windows stay as they are."""
        for _ in range(limit):
            found = done()
            if found:
                return found
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            for event in self.conn.receive_data(chunk):
                self.events.append(event)
                if isinstance(event, h2.events.DataReceived):
                    if event.stream_id == self.stream:
                        self.data += event.data
                    if acknowledge:
                        self.conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                if isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    self.ended = True
            self.sock.sendall(self.conn.data_to_send())
        raise AssertionError("no progress")

    def send_frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        elif length < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        frame = head + mask + masked
        step = self.conn.max_outbound_frame_size
        for start in range(0, len(frame), step):
            self.conn.send_data(self.stream, frame[start : start + step])
            self.sock.sendall(self.conn.data_to_send())

    def recv_frame(self) -> tuple[int, bytes]:
        def whole():
            if len(self.data) < 2:
                return None
            length = self.data[1] & 0x7F
            offset = 2
            if length == 126:
                (length,) = struct.unpack("!H", self.data[2:4])
                offset = 4
            elif length == 127:
                (length,) = struct.unpack("!Q", self.data[2:10])
                offset = 10
            return len(self.data) >= offset + length and (offset, length)

        offset, length = self._pump_until(whole)
        opcode = self.data[0] & 0x0F
        payload = self.data[offset : offset + length]
        self.data = self.data[offset + length :]
        return opcode, payload

    def close(self) -> None:
        self.sock.close()


def test_echo_over_http2(run_rsasgi):
    server = run_rsasgi("ws_app:app")
    ws = H2WebSocket(server, "/echo?x=1")
    # The access line names the path opened (an extended CONNECT has one), not the host.
    wait_for_log(server, '"CONNECT /echo?x=1 HTTP/2.0" 200')
    try:
        assert ws.headers[":status"] == "200"
        assert "sec-websocket-accept" not in ws.headers
        for message in ["hello", "x" * 70_000]:
            ws.send_frame(0x1, message.encode())
            assert ws.recv_frame() == (0x1, message.encode())
        ws.send_frame(0x8, struct.pack("!H", 1000))
        opcode, payload = ws.recv_frame()
        assert opcode == 0x8 and struct.unpack("!H", payload[:2])[0] == 1000
    finally:
        ws.close()


def test_an_open_websocket_keeps_its_connection_past_the_keep_alive_timeout(run_rsasgi):
    """The WebSocket's request is answered (200) at once, but its stream lives on: the
    connection is not idle, and is not closed under it at --timeout-keep-alive."""
    server = run_rsasgi("ws_app:app", "--timeout-keep-alive", "1")
    ws = H2WebSocket(server, "/echo")
    try:
        for index in range(4):
            time.sleep(0.7)
            ws.send_frame(0x1, b"hello %d" % index)
            assert ws.recv_frame() == (0x1, b"hello %d" % index)
        assert not any(isinstance(event, h2.events.ConnectionTerminated) for event in ws.events)
    finally:
        ws.close()


def test_shutdown_closes_a_websocket_over_http2_with_1012(run_rsasgi):
    """A drain waits for the WebSocket as for a request (before, its connection was dropped
    as idle and the client saw no close), and the WebSocket gets the close every WebSocket
    gets as the drain begins: 1012 (service restart)."""
    server = run_rsasgi("ws_app:app", "--timeout-graceful-shutdown", "1")
    ws = H2WebSocket(server, "/echo")
    try:
        ws.send_frame(0x1, b"before")
        assert ws.recv_frame() == (0x1, b"before")
        server.proc.send_signal(signal.SIGTERM)
        # The h2 package takes a GOAWAY for the end of the connection and refuses the frames
        # after it (hyper's graceful close sends a PING next), so they are read raw here.
        data = read_stream_data_raw(ws.sock, ws.stream)
        close = data.find(b"\x88")  # a ping may come first
        assert close >= 0, data[:40]
        assert struct.unpack("!H", data[close + 2 : close + 4])[0] == 1012, data[:40]
    finally:
        ws.close()


def read_stream_data_raw(sock, stream: int, timeout: float = 20.0) -> bytes:
    """The DATA payloads of `stream` read frame by frame until the connection ends."""
    sock.settimeout(timeout)
    buffer, data = b"", b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        buffer += chunk
        while len(buffer) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(buffer[:9]))
            if len(buffer) < 9 + length:
                break
            frame.parse_body(memoryview(buffer[9 : 9 + length]))
            buffer = buffer[9 + length :]
            if isinstance(frame, DataFrame) and frame.stream_id == stream:
                data += frame.data


def test_a_websocket_dropped_for_a_stalled_client_is_reset_and_its_connection_goes_on(
    run_rsasgi, tmp_path
):
    """The client never opens the WebSocket's flow-control window, and the server drops it
    after --ws-ping-timeout: its stream is reset (RST_STREAM, CANCEL), which frees what hyper
    held for it and its place under --http2-max-concurrent-streams (1 here), so the next
    stream on the same connection is served. Before, hyper kept the stream open until the
    connection ended."""
    (tmp_path / "ping.txt").write_bytes(b"pong")
    server = run_rsasgi(
        "ws_app:app",
        "--ws-ping-interval", "0",
        "--ws-ping-timeout", "1",
        "--http2-max-concurrent-streams", "1",
        "--timeout-keep-alive", "60",
        "--static-map", f"/static={tmp_path}",
    )  # fmt: skip
    ws = H2WebSocket(server, "/flood")
    try:
        assert ws.headers[":status"] == "200"
        # Room on the connection for the next stream's response; the WebSocket's own window
        # stays shut, since none of its data is acknowledged.
        ws.conn.increment_flow_control_window(1 << 20)
        ws.sock.sendall(ws.conn.data_to_send())
        ws.sock.settimeout(10)

        # Without a reset this times out: hyper kept the stream until the connection ended.
        event = ws._pump_until(
            lambda: next((e for e in ws.events if isinstance(e, h2.events.StreamReset)), None),
            acknowledge=False,
        )
        assert (event.stream_id, event.error_code) == (ws.stream, h2.errors.ErrorCodes.CANCEL)
        wait_for_log(server, "read nothing for 1s while the server was sending")

        # The next stream asks for a file the server answers itself: the flood app sends on
        # for --ws-closed-send-grace and, as the app of any reset stream, counts against the
        # connection's app tasks (no more than it may have streams) until it ends.
        stream = ws.conn.get_next_available_stream_id()
        request = [
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/static/ping.txt"),
            (":authority", f"127.0.0.1:{server.port}"),
        ]
        ws.conn.send_headers(stream, request, end_stream=True)
        ws.sock.sendall(ws.conn.data_to_send())

        def ended():
            return any(
                isinstance(e, h2.events.StreamEnded) and e.stream_id == stream for e in ws.events
            )

        ws._pump_until(ended)
        on_stream = [e for e in ws.events if getattr(e, "stream_id", None) == stream]
        response = next(e for e in on_stream if isinstance(e, h2.events.ResponseReceived))
        assert dict(response.headers)[b":status"] == b"200"
        body = b"".join(e.data for e in on_stream if isinstance(e, h2.events.DataReceived))
        assert body == b"pong"
    finally:
        ws.close()


def test_permessage_deflate_over_http2(run_rsasgi):
    """RFC 8441 carries the same extension negotiation (§5): the server compresses its echo."""
    server = run_rsasgi("ws_app:app")
    offer = "permessage-deflate; server_max_window_bits=10"
    ws = H2WebSocket(server, "/echo", [("sec-websocket-extensions", offer)])
    try:
        assert ws.headers[":status"] == "200"
        assert ws.headers["sec-websocket-extensions"] == (
            "permessage-deflate; client_no_context_takeover; server_max_window_bits=10"
        )
        message = b"compress me over HTTP/2 " * 200
        ws.send_frame(0x2, message)
        opcode, payload = ws.recv_frame()
        assert opcode == 0x2 and len(payload) < len(message) // 10
        inflated = zlib.decompressobj(wbits=-10).decompress(payload + b"\x00\x00\xff\xff")
        assert inflated == message
    finally:
        ws.close()


def test_the_scope_is_a_websocket_scope_with_http_version_2(run_rsasgi):
    server = run_rsasgi("ws_app:app")
    ws = H2WebSocket(server, "/scope?x=1", [("sec-websocket-protocol", "chat, superchat")])
    try:
        assert ws.headers[":status"] == "200"
        opcode, payload = ws.recv_frame()
        scope = json.loads(payload)
        assert scope["type"] == "websocket"
        assert scope["http_version"] == "2"
        assert scope["scheme"] == "ws"
        assert scope["path"] == "/scope"
        assert scope["query_string"] == "x=1"
        assert scope["subprotocols"] == ["chat", "superchat"]
        assert ["host", f"127.0.0.1:{server.port}"] in scope["headers"]
    finally:
        ws.close()


def test_a_denied_websocket_is_a_403_on_its_stream_only(run_rsasgi):
    server = run_rsasgi("ws_app:app")
    ws = H2WebSocket(server, "/deny")
    try:
        assert ws.headers[":status"] == "403"
        assert "connection" not in ws.headers
        # The connection still serves other streams.
        other = H2WebSocket(server, "/echo")
        other.send_frame(0x1, b"still here")
        assert other.recv_frame() == (0x1, b"still here")
        other.close()
    finally:
        ws.close()


def test_a_subprotocol_that_is_not_a_token_is_a_400(run_rsasgi):
    """As over HTTP/1.1: the app is not started (it would accept with a 200)."""
    server = run_rsasgi("ws_app:app")
    ws = H2WebSocket(server, "/subprotocol", [("sec-websocket-protocol", "a b, c")])
    try:
        assert ws.headers[":status"] == "400"
    finally:
        ws.close()


@pytest.mark.parametrize("version, status", [("8", "426"), (None, "400")])
def test_a_bad_version_is_refused(run_rsasgi, version, status):
    server = run_rsasgi("ws_app:app")
    sock = server.connect()
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    request = [
        (":method", "CONNECT"),
        (":protocol", "websocket"),
        (":scheme", "http"),
        (":path", "/echo"),
        (":authority", f"127.0.0.1:{server.port}"),
    ]
    if version:
        request.append(("sec-websocket-version", version))
    try:
        sock.sendall(conn.data_to_send())
        # SETTINGS first, so that the server's ENABLE_CONNECT_PROTOCOL is known.
        settings = None
        while settings is None:
            for event in conn.receive_data(sock.recv(65536)):
                if isinstance(event, h2.events.RemoteSettingsChanged):
                    settings = event
        conn.send_headers(1, request)
        sock.sendall(conn.data_to_send())
        while True:
            for event in conn.receive_data(sock.recv(65536)):
                if isinstance(event, h2.events.ResponseReceived):
                    assert dict(event.headers)[b":status"] == status.encode()
                    return
            sock.sendall(conn.data_to_send())
    finally:
        sock.close()
