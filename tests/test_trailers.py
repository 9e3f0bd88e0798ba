"""ASGI's `http.response.trailers` extension: advertised in every http scope; an app that
announces trailers in its start sends them after the body, and they reach the client as an
HTTP/2 HEADERS frame ending the stream, or as the trailer section of a chunked HTTP/1.1 body
when the client said `TE: trailers`. Misuse raises in the app.

App: tests/apps/trailers_app.py. Clients: the `h2` state machine and raw sockets.
"""

from __future__ import annotations

import hashlib
import json

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
from apps.proto_raw import RawConn, request
from conftest import wait_for_log

EXPECTED_SHA = hashlib.sha256(b"hello, trailers").hexdigest()


def test_the_extension_is_advertised(run_rsasgi):
    server = run_rsasgi("trailers_app:app")
    extensions = httpx.get(server.url + "/extensions", timeout=10).json()
    assert "http.response.trailers" in extensions


def get_over_http2(server, path: str) -> tuple[bytes, dict[str, str] | None]:
    """GET `path` on a new HTTP/2 connection: the body and the trailers; fails if the stream
    is reset."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(
        1,
        [
            (":method", "GET"),
            (":path", path),
            (":scheme", "http"),
            (":authority", f"127.0.0.1:{server.port}"),
            ("te", "trailers"),
        ],
        end_stream=True,
    )
    body, trailers = b"", None
    with server.connect() as sock:
        sock.sendall(conn.data_to_send())
        ended = False
        while not ended:
            data = sock.recv(65536)
            assert data
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, h2.events.TrailersReceived):
                    trailers = {k.decode(): v.decode() for k, v in event.headers}
                elif isinstance(event, h2.events.StreamEnded):
                    ended = True
                assert not isinstance(event, h2.events.StreamReset), (event, body, trailers)
            sock.sendall(conn.data_to_send())
    return body, trailers


def test_trailers_over_http2(run_rsasgi):
    server = run_rsasgi("trailers_app:app")
    body, trailers = get_over_http2(server, "/trailers")
    assert body == b"hello, trailers"
    assert trailers == {"grpc-status": "0", "x-sha": EXPECTED_SHA}


@pytest.mark.parametrize(
    "field", ["connection:close", "transfer-encoding:chunked", "content-length:15"]
)
def test_a_field_trailers_must_not_carry_is_dropped_with_a_warning(run_rsasgi, field):
    """HTTP/2 forbids connection-specific fields in any field block: h2 refused the whole
    trailer section, and the stream was cancelled, its body never sent. RFC 9110 §6.5.1
    keeps framing fields such as content-length out of trailers too."""
    server = run_rsasgi("trailers_app:app")
    body, trailers = get_over_http2(server, f"/trailers?extra={field}")
    assert body == b"hello, trailers"
    assert trailers == {"grpc-status": "0", "x-sha": EXPECTED_SHA}
    name = field.partition(":")[0]
    wait_for_log(server, f"the app's trailers carry {name}, which a trailer section must not")


def test_trailers_over_chunked_http1(run_rsasgi):
    server = run_rsasgi("trailers_app:app")
    conn = RawConn(server.connect())
    conn.send(request("GET", "/trailers", [("TE", "trailers")]))
    raw = b""
    while not raw.endswith(b"\r\n\r\n") or b"0\r\n" not in raw:
        chunk = conn.sock.recv(65536)
        assert chunk, raw
        raw += chunk
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    last = rest.index(b"0\r\n")
    trailer_section = rest[last + 3 :]
    fields = dict(line.split(b": ", 1) for line in trailer_section.split(b"\r\n") if line.strip())
    assert fields == {b"grpc-status": b"0", b"x-sha": EXPECTED_SHA.encode()}
    conn.sock.close()


def test_misuse_raises_in_the_app(run_rsasgi):
    server = run_rsasgi("trailers_app:app")
    with httpx.Client(timeout=10) as client:
        for case in ["unannounced", "before-body-end"]:
            client.get(server.url + f"/misuse?{case}")
        observed = client.get(server.url + "/observed").json()
    assert observed["unannounced"].startswith("RuntimeError:")
    assert "did not set 'trailers': True" in observed["unannounced"]
    assert observed["before-body-end"].startswith("RuntimeError:")
    assert "before the last 'http.response.body'" in observed["before-body-end"]
    assert json.dumps(observed)
