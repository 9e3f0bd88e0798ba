"""A raw RFC 6455 client written out by hand, for what the `websockets` client will not do
(send malformed frames, never read, drop the TCP connection). Not an app.

Imported by the WebSocket tests as `apps.ws_raw`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
import time

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def raw_handshake(server, path: str, extra: bytes = b"") -> tuple[socket.socket, FrameReader]:
    """Open a TCP connection, upgrade it, check the 101 answer; return the socket and a reader
    holding whatever arrived after the response head."""
    sock, rest, _ = upgrade(server, path, extra)
    return sock, FrameReader(sock, rest)


def upgrade(server, path: str, extra: bytes = b"") -> tuple[socket.socket, bytes, dict]:
    """Open a TCP connection, upgrade it, check the 101 answer; return the socket, whatever
    arrived after the response head, and the response's headers (lower-case names, bytes)."""
    sock = server.connect()
    sock.settimeout(10)
    key = base64.b64encode(os.urandom(16))
    sock.sendall(
        b"GET " + path.encode() + b" HTTP/1.1\r\n"
        b"Host: 127.0.0.1:%d\r\n" % server.port + b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\n"
        b"Sec-WebSocket-Version: 13\r\n" + extra + b"\r\n"
    )
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed during the handshake; got {data!r}"
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    assert lines[0].startswith(b"HTTP/1.1 101"), head
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    expected = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
    assert headers.get(b"sec-websocket-accept") == expected, head
    assert headers.get(b"upgrade", b"").lower() == b"websocket", head
    assert b"upgrade" in headers.get(b"connection", b"").lower(), head
    return sock, rest, headers


def encode_frame(
    opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True, rsv: int = 0
) -> bytes:
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if mask else 0
    length = len(payload)
    if length < 126:
        header = bytes([first, mask_bit | length])
    elif length < 65536:
        header = bytes([first, mask_bit | 126]) + struct.pack("!H", length)
    else:
        header = bytes([first, mask_bit | 127]) + struct.pack("!Q", length)
    if not mask:
        return header + payload
    key = os.urandom(4)
    masked = bytes(byte ^ key[i % 4] for i, byte in enumerate(payload))
    return header + key + masked


class FrameReader:
    """Reads server frames (which must not be masked) from a socket."""

    def __init__(self, sock: socket.socket, buffer: bytes = b""):
        self.sock = sock
        self.buffer = buffer

    def _take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("the server closed the TCP connection")
            self.buffer += chunk
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def frame(self) -> tuple[int, bool, bytes]:
        first, second = self._take(2)
        assert not second & 0x80, "the server masked a frame"
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._take(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._take(8))
        return first & 0x0F, bool(first & 0x80), self._take(length)

    def close_code(self, timeout: float = 10.0) -> tuple[int | None, list[int]]:
        """Skip frames until a close frame; return its code (None if the TCP connection ended
        first) and the opcodes seen before it. Fails if neither comes within `timeout` s."""
        deadline = time.monotonic() + timeout
        seen = []
        try:
            while True:
                assert time.monotonic() < deadline, f"no close within {timeout}s; saw {seen}"
                opcode, _, payload = self.frame()
                if opcode == OP_CLOSE:
                    if len(payload) >= 2:
                        return struct.unpack("!H", payload[:2])[0], seen
                    return 1005, seen
                seen.append(opcode)
        except (EOFError, ConnectionResetError):
            return None, seen


def read_http_response(sock: socket.socket) -> tuple[int, dict, bytes]:
    """One HTTP/1.1 response with a Content-Length (or read to EOF without one)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before the response head; got {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode()] = value.strip().decode("latin-1")
    if "content-length" in headers:
        length = int(headers["content-length"])
        while len(body) < length:
            chunk = sock.recv(65536)
            assert chunk, "connection closed inside the body"
            body += chunk
    else:
        while chunk := sock.recv(65536):
            body += chunk
    return status, headers, body
