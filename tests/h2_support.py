"""A plain HTTP/2 exchange with the h2 package, for tests that need one stream at a time."""

from __future__ import annotations

import socket

import h2.connection
import h2.events


def h2_exchange(
    conn: h2.connection.H2Connection,
    sock: socket.socket,
    stream_id: int,
    headers: list,
    end_stream: bool = True,
) -> tuple[bytes, bytes]:
    """Send a request's headers on `stream_id` and read until that stream ends: its status
    and body, or b"reset" for the status if the server reset the stream."""
    conn.send_headers(stream_id, headers, end_stream=end_stream)
    sock.sendall(conn.data_to_send())
    status, body = b"", b""
    while True:
        data = sock.recv(65536)
        assert data, "connection closed"
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                status = dict(event.headers)[b":status"]
            elif isinstance(event, h2.events.DataReceived):
                body += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
            elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream_id:
                return b"reset", body
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                return status, body
        sock.sendall(conn.data_to_send())
