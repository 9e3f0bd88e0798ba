"""`OPTIONS * HTTP/1.1` (RFC 9110 9.3.7, RFC 9112 3.2.4) asks about the server, not about a
resource: the server answers it and the app is never called, since an app given a PATH_INFO or
path that does not start with "/" breaks (wsgiref's validator fails the request outright)."""

from __future__ import annotations

import json

import h2.config
import h2.connection
import h2.events
import pytest
from apps.proto_raw import RawConn, request


@pytest.mark.parametrize(
    "app, calls_path, one_call",
    [
        # validator() returns a `(*args, **kw)` function, which no inspection can tell apart.
        (["wsgi_validated:app", "--interface", "wsgi"], "/calls", ["GET /x"]),
        (["err_count:app"], "/count", {"/x": 1}),
    ],
    ids=["wsgi-validated", "asgi"],
)
def test_options_asterisk_is_answered_by_the_server(run_rsasgi, app, calls_path, one_call):
    server = run_rsasgi(*app)
    with server.connect() as sock:
        conn = RawConn(sock)
        conn.send(request("OPTIONS", "*"))
        response = conn.read_response()
        assert response.status == 200, (response, server.output())
        # The same connection goes on; the app sees the next request and only that one.
        conn.send(request("GET", "/x"))
        assert conn.read_response().status == 200
        conn.send(request("GET", calls_path))
        calls = conn.read_response()
    assert calls.status == 200
    assert json.loads(calls.body) == one_call


def test_options_asterisk_over_http2_is_answered_by_the_server(run_rsasgi):
    """RFC 9113 §8.3.1: `:path` is "*" for OPTIONS * over HTTP/2, which hyper gives as a URI
    with the authority in front: the server still answers it, not the app."""
    server = run_rsasgi("err_count:app")
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()

    def exchange(sock, stream_id: int, method: str, path: str) -> tuple[bytes, bytes]:
        headers = [(":method", method), (":path", path), (":scheme", "http"), (":authority", "x")]
        conn.send_headers(stream_id, headers, end_stream=True)
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
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                    return status, body
            sock.sendall(conn.data_to_send())

    with server.connect() as sock:
        assert exchange(sock, 1, "OPTIONS", "*")[0] == b"200", server.output()
        status, counts = exchange(sock, 3, "GET", "/count")
    # The app was never called for OPTIONS *.
    assert (status, json.loads(counts)) == (b"200", {}), server.output()
