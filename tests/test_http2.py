"""HTTP/2 over cleartext TCP with prior knowledge (RFC 9113 3.3): what the app sees, and how
the server ends connections that are idle or whose peer has stopped answering.

Clients: httpx with `http1=False, http2=True` for ordinary requests, and a raw socket that
sends frames made by the `h2` library and parses what comes back with `hyperframe`, so the
test decides which frames (SETTINGS acknowledgements, PING acknowledgements) go out.
"""

from __future__ import annotations

import json
import socket
import time

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
from conftest import wait_for, wait_for_log
from hyperframe.frame import Frame, GoAwayFrame, HeadersFrame, PingFrame, SettingsFrame

FRAME_HEADER = 9


def h2_client() -> httpx.Client:
    return httpx.Client(http1=False, http2=True, timeout=10)


class FrameReader:
    """Reads HTTP/2 frames from a socket. It acknowledges the server's SETTINGS, and its PINGs
    only when `answer_pings` is true."""

    def __init__(self, sock: socket.socket, answer_pings: bool):
        self.sock = sock
        self.answer_pings = answer_pings
        self.buffer = b""
        self.frames: list[Frame] = []

    def _fill(self, deadline: float) -> bool:
        """Read more bytes; False when the server closed the connection."""
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"connection still open; frames so far: {self.frames}"
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return True
        except ConnectionResetError:
            return False
        self.buffer += data
        return bool(data)

    def read_until_closed(self, timeout: float) -> list[Frame]:
        """Every frame until the server closes the connection; fails after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            while len(self.buffer) >= FRAME_HEADER:
                frame, length = Frame.parse_frame_header(memoryview(self.buffer[:FRAME_HEADER]))
                end = FRAME_HEADER + length
                if len(self.buffer) < end:
                    break
                frame.parse_body(memoryview(self.buffer[FRAME_HEADER:end]))
                self.buffer = self.buffer[end:]
                self.frames.append(frame)
                if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
                    self.sock.sendall(SettingsFrame(0, flags=["ACK"]).serialize())
                if isinstance(frame, PingFrame) and "ACK" not in frame.flags and self.answer_pings:
                    ack = PingFrame(0, flags=["ACK"], opaque_data=frame.opaque_data)
                    self.sock.sendall(ack.serialize())
            if not self._fill(deadline):
                return self.frames


def open_h2(
    server, *requests: tuple[str, str], answer_pings: bool
) -> tuple[socket.socket, FrameReader]:
    """Connect, send the connection preface and SETTINGS, then one GET per (path, authority);
    from then on nothing is sent but acknowledgements (see FrameReader)."""
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    for path, authority in requests:
        stream_id = connection.get_next_available_stream_id()
        connection.send_headers(
            stream_id,
            [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", authority)],
            end_stream=True,
        )
    sock = server.connect()
    sock.sendall(connection.data_to_send())
    return sock, FrameReader(sock, answer_pings)


@pytest.mark.parametrize(
    "app, host_of",
    [
        ("ws_app:app", lambda body: [value for name, value in body["headers"] if name == "host"]),
        ("wsgi_env:app", lambda body: [body["environ"].get("HTTP_HOST")]),
    ],
    ids=["asgi", "wsgi"],
)
def test_authority_is_the_host_header(run_rsasgi, app, host_of):
    """An HTTP/2 request names its host in :authority, not in a Host header; apps and
    frameworks read the host header (ASGI) or HTTP_HOST (WSGI), so the server provides it."""
    server = run_rsasgi(app)
    with h2_client() as client:
        response = client.get(f"{server.url}/scope")
    assert response.http_version == "HTTP/2"
    assert response.status_code == 200
    assert host_of(response.json()) == [f"127.0.0.1:{server.port}"]


def test_the_host_made_from_the_authority_comes_first_in_the_scope(run_rsasgi):
    """The ASGI spec: over HTTP/2 the :authority's value "must be added to the start of the
    iterable with host as the header name". It came after the request's own headers."""
    server = run_rsasgi("ws_app:app")
    with h2_client() as client:
        response = client.get(f"{server.url}/scope", headers={"x-first": "1"})
    assert response.http_version == "HTTP/2"
    names = [name for name, _ in response.json()["headers"]]
    assert names[0] == "host" and names.count("host") == 1, names
    assert "x-first" in names and "user-agent" in names, names


def test_connection_that_never_sends_a_request_gets_goaway(run_rsasgi):
    """Preface and SETTINGS exchanged, no stream ever opened: no request head arrived, so
    the request-header timeout governs it (the keep-alive one is set high to show which)."""
    server = run_rsasgi(
        "proto_http:app", "--timeout-request-header", "1", "--timeout-keep-alive", "60"
    )
    # An ordinary client: it answers PINGs (a graceful GOAWAY may be followed by one).
    sock, reader = open_h2(server, answer_pings=True)
    with sock:
        frames = reader.read_until_closed(timeout=10)
    goaways = [frame for frame in frames if isinstance(frame, GoAwayFrame)]
    assert goaways, frames
    assert goaways[-1].error_code == 0, frames


def test_idle_connection_gets_goaway_after_the_keep_alive_timeout(run_rsasgi):
    """One request answered, then nothing: the connection is idle, so the keep-alive
    timeout governs it (the request-header one is set high to show which acts)."""
    server = run_rsasgi(
        "proto_http:app", "--timeout-keep-alive", "1", "--timeout-request-header", "60"
    )
    sock, reader = open_h2(server, ("/", f"127.0.0.1:{server.port}"), answer_pings=True)
    with sock:
        frames = reader.read_until_closed(timeout=10)
    answered = [frame for frame in frames if isinstance(frame, HeadersFrame)]
    assert answered, frames
    goaways = [frame for frame in frames if isinstance(frame, GoAwayFrame)]
    assert goaways, frames
    assert goaways[-1].error_code == 0, frames


def test_peer_that_never_acknowledges_pings_is_closed(run_rsasgi, tmp_path):
    """A request is in flight (the app sleeps 30 s), so the connection is not idle; the
    client has stopped answering, and the server's keep-alive PINGs find that out."""
    events = tmp_path / "events.txt"
    server = run_rsasgi(
        "err_slow:app",
        "--http2-keep-alive-interval",
        "1",
        "--http2-keep-alive-timeout",
        "1",
        env={"ERR_SLOW_FILE": str(events)},
    )
    sock, reader = open_h2(server, ("/sleep?s=30", f"127.0.0.1:{server.port}"), answer_pings=False)
    with sock:
        wait_for(
            lambda: events.exists() and "request-start" in events.read_text().split(),
            message="the app to start the request",
            server=server,
        )
        frames = reader.read_until_closed(timeout=15)
    pings = [frame for frame in frames if isinstance(frame, PingFrame) and "ACK" not in frame.flags]
    assert pings, f"no PING before the server closed the connection; frames: {frames}"
    assert "request-done" not in events.read_text().split()


def h2_get(
    server, path: str, headers: list[tuple[str, str]], validate: bool = True
) -> tuple[int, bytes]:
    """One GET over a fresh HTTP/2 connection, header fields sent exactly as given
    (with `validate=False` even those the h2 library would refuse to send)."""
    status, _, body = h2_response(server, path, headers, validate)
    return status, body


def pseudo_headers(server, method: str, path: str) -> list[tuple[str, str]]:
    """The pseudo-header fields of a request for `path` on `server`."""
    authority = f"127.0.0.1:{server.port}"
    return [(":method", method), (":path", path), (":scheme", "http"), (":authority", authority)]


def h2_response(
    server, path: str, headers: list[tuple[str, str]] = (), validate: bool = True
) -> tuple[int, dict[bytes, bytes], bytes]:
    """h2_get's status and body, with the response's header fields as they came (the h2
    library checks none of them)."""
    request = pseudo_headers(server, "GET", path) + list(headers)
    status, fields, body, _ = h2_exchange(server, request, validate=validate)
    return status, fields, body


def h2_exchange_fields(
    server, request: list[tuple[str, str]], body: bytes | None = None
) -> tuple[int, bytes, int | None]:
    """One request, its header fields sent exactly as given (pseudo-headers included, values
    not even stripped of whitespace) and then `body` if any: the status, the body, and the
    error code of a RST_STREAM that ended the stream (None when it ended with END_STREAM)."""
    status, _, data, reset = h2_exchange(server, request, body, validate=False, normalize=False)
    return status, data, reset


def h2_exchange(
    server,
    request: list[tuple[str, str]],
    body: bytes | None = None,
    validate: bool = True,
    normalize: bool = True,
) -> tuple[int, dict[bytes, bytes], bytes, int | None]:
    """One request on stream 1 of a fresh connection (`validate` and `normalize`: whether the
    h2 library checks and tidies the fields first): the response's status, header fields and
    body, and the error code of a RST_STREAM that ended the stream (None after END_STREAM)."""
    config = h2.config.H2Configuration(
        client_side=True,
        validate_outbound_headers=validate,
        normalize_outbound_headers=normalize,
        validate_inbound_headers=False,
    )
    connection = h2.connection.H2Connection(config)
    connection.initiate_connection()
    connection.send_headers(1, request, end_stream=body is None)
    if body is not None:
        connection.send_data(1, body, end_stream=True)
    fields, data = {}, b""
    with server.connect() as sock:
        sock.settimeout(10)
        sock.sendall(connection.data_to_send())
        while True:
            received = sock.recv(65536)
            assert received, "the server closed the connection before the stream ended"
            for event in connection.receive_data(received):
                if isinstance(event, h2.events.ResponseReceived):
                    fields = dict(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    data += event.data
                    connection.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    reset = getattr(event, "error_code", None)
                    return int(fields.get(b":status", 0)), fields, data, reset
            sock.sendall(connection.data_to_send())


@pytest.mark.parametrize("app", ["proto_length:app", "proto_length:wsgi"], ids=["asgi", "wsgi"])
def test_a_body_short_of_its_content_length_resets_the_stream(run_rsasgi, app):
    """RFC 9113 §8.1.1: data that ends short of the content-length makes the response
    malformed. The stream ended cleanly (END_STREAM) under the app's header, which a client
    could take for the whole response; it is reset, after the bytes there are."""
    server = run_rsasgi(app)
    request = pseudo_headers(server, "GET", "/short")
    status, body, reset = h2_exchange_fields(server, request)
    assert (status, body) == (200, b"hello world!")
    assert reset is not None
    wait_for_log(
        server, "the app's Content-Length is 20 but its body only 12 bytes; reset the stream"
    )
    # The same app's right length ends its stream as it should.
    request = [(name, "/" if name == ":path" else value) for name, value in request]
    assert h2_exchange_fields(server, request) == (200, b"ok", None)


@pytest.mark.parametrize(
    "fields, reason",
    [
        ([("x-padded", " value")], "a header value begins or ends with whitespace"),
        ([("x-padded", "value\t")], "a header value begins or ends with whitespace"),
        ([("content-length", "5"), ("content-length", "6")], None),
    ],
    ids=["leading-space", "trailing-tab", "content-lengths-differ"],
)
def test_malformed_fields_the_h2_library_lets_through_are_a_400(run_rsasgi, fields, reason):
    """RFC 9113 §8.2.1 (a value with whitespace at either end) and RFC 9110 §8.6 (content-length
    fields that disagree): malformed. The app got the value as it was (HTTP/1 trims it)."""
    server = run_rsasgi("wsgi_env:app", "--log-level", "debug")
    request = pseudo_headers(server, "POST", "/scope")
    status, _, reset = h2_exchange_fields(server, request + fields, b"hello")
    # Content-lengths that disagree may be refused by the h2 library already, with a reset.
    assert status == 400 or (reason is None and reset is not None), (status, reset)
    if reason:
        wait_for_log(server, f"400 Bad Request: {reason}")


def test_equal_content_length_fields_are_one(run_rsasgi):
    """RFC 9110 §8.6 lets a server take them as one: a WSGI app read CONTENT_LENGTH "5, 5",
    which Django takes for no body at all."""
    server = run_rsasgi("wsgi_env:app")
    request = pseudo_headers(server, "POST", "/scope")
    twice = [("content-length", "5"), ("content-length", "5")]
    status, body, reset = h2_exchange_fields(server, request + twice, b"hello")
    assert (status, reset) == (200, None), body
    assert json.loads(body)["environ"]["CONTENT_LENGTH"] == "5"


def test_a_request_with_neither_authority_nor_host_is_a_400(run_rsasgi):
    """RFC 9113 §8.3.1: an http or https request names its authority, in :authority or in
    host. It was served with no host at all (HTTP/1.1 without Host is a 400)."""
    server = run_rsasgi("ws_app:app", "--log-level", "debug")
    request = [(":method", "GET"), (":path", "/scope"), (":scheme", "http")]
    status, _, _ = h2_exchange_fields(server, request)
    assert status == 400
    wait_for_log(server, "400 Bad Request: an HTTP/2 request with neither :authority nor host")
    # A host field in its place will do.
    host = [("host", f"127.0.0.1:{server.port}")]
    assert h2_exchange_fields(server, request + host)[0] == 200


@pytest.mark.parametrize("app", ["ws_app:app", "wsgi_env:app"], ids=["asgi", "wsgi"])
def test_a_host_header_naming_another_host_than_the_authority_is_a_400(run_rsasgi, app):
    """RFC 9113 8.3.1: a host field that names another entity than :authority makes the
    request malformed. Before, the app got `host: evil.example` while the client had asked
    for 127.0.0.1, and Django's ALLOWED_HOSTS or an app's links went by the wrong one."""
    server = run_rsasgi(app, "--log-level", "debug")
    authority = f"127.0.0.1:{server.port}"
    # A port on one side only is the scheme's default there (80 here), not a match.
    for host in ["evil.example", f"127.0.0.1:{server.port + 1}", "127.0.0.1"]:
        status, _ = h2_get(server, "/scope", [("host", host)], validate=False)
        assert status == 400, host
    # Two host fields, even the same: which would the app read?
    status, _ = h2_get(server, "/scope", [("host", authority)] * 2, validate=False)
    assert status == 400
    wait_for_log(server, "host header does not match :authority")
    # The same host in another case is the same host.
    for host in [authority, authority.upper()]:
        status, body = h2_get(server, "/scope", [("host", host)], validate=False)
        assert status == 200, (host, body)


@pytest.mark.parametrize(
    "app, cookies_of",
    [
        (
            "ws_app:app",
            lambda body: [value for name, value in body["headers"] if name == "cookie"],
        ),
        ("wsgi_env:app", lambda body: [body["environ"].get("HTTP_COOKIE")]),
    ],
    ids=["asgi", "wsgi"],
)
def test_split_cookie_fields_are_joined(run_rsasgi, app, cookies_of):
    """RFC 9113 8.2.3: an HTTP/2 client may send each cookie in a field of its own; the app
    gets them as one header joined with "; ", which is what Django and Flask parse."""
    server = run_rsasgi(app)
    cookies = [("cookie", "sessionid=abc"), ("cookie", "csrftoken=x1"), ("cookie", "theme=dark")]
    status, body = h2_get(server, "/scope", cookies)
    assert status == 200, body
    assert cookies_of(json.loads(body)) == ["sessionid=abc; csrftoken=x1; theme=dark"]


@pytest.mark.parametrize("path, status", [("/no-content", 204), ("/not-modified", 304)])
def test_a_body_sent_with_204_or_304_is_dropped_not_sent_as_data(run_rsasgi, path, status):
    """RFC 9110 6.4.1: these responses have no content; DATA frames on one would be a
    protocol error for the client (JSONResponse(None, status_code=204) sends b"null")."""
    server = run_rsasgi("proto_send_edges:app")
    with h2_client() as client:
        response = client.get(f"{server.url}{path}")
        assert (response.http_version, response.status_code) == ("HTTP/2", status)
        assert response.content == b""
        # The connection goes on.
        assert client.get(server.url).text == "ok"


@pytest.mark.parametrize(
    "app, path, status, length",
    [
        ("proto_send_edges:app", "/no-content-length", 204, None),
        ("wsgi_env:app", "/status?s=204%20No%20Content", 204, None),
        ("proto_send_edges:app", "/not-modified-length", 304, b"1234"),
    ],
    ids=["asgi-204", "wsgi-204", "asgi-304"],
)
def test_a_204_loses_the_apps_content_length_a_304_keeps_it(run_rsasgi, app, path, status, length):
    """RFC 9110 8.6: no Content-Length in a 204, which HTTP/2 clients refuse (curl: stream
    PROTOCOL_ERROR). A 304's is the length a GET would get, and stays."""
    server = run_rsasgi(app)
    got, fields, body = h2_response(server, path)
    assert (got, body) == (status, b"")
    assert fields.get(b"content-length") == length


def test_a_client_waiting_for_100_continue_over_http2_gets_408_that_says_why(run_rsasgi):
    """hyper's HTTP/2 server cannot send a 100 Continue (hyperium/hyper#2743): a client that
    waits for one before its body never sends it. The 408 says so, rather than blame the
    client for a body that did not come."""
    server = run_rsasgi("proto_stream:app", "--timeout-request-body", "1")
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    authority = f"127.0.0.1:{server.port}"
    request = [(":method", "POST"), (":path", "/upload"), (":scheme", "http")]
    expect = [("content-length", "5"), ("expect", "100-continue")]
    connection.send_headers(1, [*request, (":authority", authority), *expect])
    status = None
    with server.connect() as sock:
        sock.sendall(connection.data_to_send())
        while status is None:
            data = sock.recv(65536)
            assert data, "the server closed the connection before the response"
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
            sock.sendall(connection.data_to_send())
    assert status == 408
    wait_for_log(server, "(the client asked for a 100 Continue first, which rsasgi cannot send")


@pytest.mark.parametrize("app", ["wsgi_app", "asgi_app"])
def test_response_header_values_lose_the_spaces_around_them(run_rsasgi, app):
    """RFC 9113 §8.2.1: a field value must not begin or end with whitespace, and strict
    clients (the h2 package, nghttp2, Node) refuse such a response. Django's WSGI handler
    gives every Set-Cookie a leading space; the server strips it, as gunicorn does."""
    server = run_rsasgi(f"padded_headers:{app}")
    with h2_client() as client:
        response = client.get(server.url + "/")
    assert (response.http_version, response.status_code) == ("HTTP/2", 200)
    assert response.headers["set-cookie"] == "c1=x; Path=/"
    assert response.headers["x-tab"] == "v"
    assert response.headers["x-blank"] == ""
    with server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        wire = b""
        while chunk := sock.recv(65536):
            wire += chunk
    assert b"\r\nset-cookie: c1=x; Path=/\r\n" in wire, wire
    assert b"\r\nx-tab: v\r\n" in wire, wire
