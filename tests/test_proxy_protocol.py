"""--proxy-protocol: a load balancer in TCP mode (HAProxy send-proxy, AWS NLB) opens every
connection with a PROXY header naming the real client; rsasgi reads it before any HTTP, and
the app, the access log and --forwarded-allow-ips see the client it names. A connection
without a valid header is closed without a response.

Each test plays the load balancer with a raw socket from 127.0.0.1 (trusted by default).
Apps: tests/apps/proto_scope.py (the ASGI scope as JSON), wsgi_env.py (the WSGI environ as
JSON), ws_app.py (the WebSocket scope).
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
from apps.proto_raw import RawConn, request
from conftest import APPS, access_log, cli, wait_for, wait_for_log
from websockets.asyncio.client import connect

V1_TCP4 = b"PROXY TCP4 203.0.113.9 192.0.2.1 51234 443\r\n"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
# Version 2 with the PROXY or the LOCAL command; address family and transport.
V2_PROXY, V2_LOCAL = 0x21, 0x20
TCP_OVER_IPV4, TCP_OVER_IPV6, UNSPEC = 0x11, 0x21, 0x00
PP2_TYPE_AUTHORITY, PP2_TYPE_UNIQUE_ID, PP2_TYPE_SSL, PP2_TYPE_NOOP = 0x02, 0x05, 0x20, 0x04


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def v2(
    client: tuple[str, int] | None = None,
    server: tuple[str, int] | None = None,
    command: int = V2_PROXY,
    tlvs: bytes = b"",
) -> bytes:
    """A version 2 header; IPv4 or IPv6 by the addresses' form, AF_UNSPEC without them."""
    if client is None or server is None:
        family, addresses = UNSPEC, b""
    else:
        ipv6 = ":" in client[0]
        kind = socket.AF_INET6 if ipv6 else socket.AF_INET
        family = TCP_OVER_IPV6 if ipv6 else TCP_OVER_IPV4
        addresses = (
            socket.inet_pton(kind, client[0])
            + socket.inet_pton(kind, server[0])
            + struct.pack("!HH", client[1], server[1])
        )
    body = addresses + tlvs
    return V2_SIGNATURE + bytes([command, family]) + struct.pack("!H", len(body)) + body


#: What a client behind the balancer may claim of itself.
CLIENT_SAYS = [("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-Proto", "https")]


def open_conn(server) -> RawConn:
    sock = server.connect()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return RawConn(sock)


def scope_after(server, header: bytes, path: str = "/", headers=None) -> dict:
    """Send `header` and one request in the same packet; the JSON the app answered."""
    conn = open_conn(server)
    try:
        conn.send(header + request("GET", path, headers))
        response = conn.read_response()
    finally:
        conn.sock.close()
    assert response.status == 200, response
    return json.loads(response.body)["scope"]


def assert_closed_without_response(conn: RawConn) -> None:
    assert conn.read_until_closed(timeout=20) == b""


@pytest.fixture
def proxied(run_rsasgi):
    """rsasgi serving the scope app behind --proxy-protocol (v1 unless told)."""

    def start(*args: str, version: str = "v1", app: str = "proto_scope:app"):
        return run_rsasgi(app, "--proxy-protocol", version, *args)

    return start


def test_v1_tcp4_names_the_client_and_the_address_it_reached(proxied):
    server = proxied()
    scope = scope_after(server, V1_TCP4, "/seen")
    assert scope["client"] == ["203.0.113.9", 51234]
    assert scope["server"] == ["192.0.2.1", 443]
    assert scope["scheme"] == "http"
    # The access log names the real client too.
    wait_for_log(server, '"GET /seen HTTP/1.1" 200')
    (record,) = access_log(server.output(), "/seen")
    assert record["client"] == "203.0.113.9:51234"


def test_v1_tcp6(proxied):
    scope = scope_after(proxied(), b"PROXY TCP6 2001:db8::17 2001:db8::1 4711 8443\r\n")
    assert scope["client"] == ["2001:db8::17", 4711]
    assert scope["server"] == ["2001:db8::1", 8443]


@pytest.mark.parametrize("header", ["v1-unknown", "v2-unspec"])
def test_a_client_the_header_names_no_address_for_is_unnamed_and_not_trusted(proxied, header):
    """v1 UNKNOWN (HAProxy's word where v2 says AF_UNIX) and a v2 PROXY with AF_UNSPEC relay a
    client the balancer cannot name. It is not the balancer: no client address, and the
    X-Forwarded-* it sent itself are not believed although the balancer is a trusted peer."""
    server = proxied(version="v2" if header == "v2-unspec" else "v1")
    sent = b"PROXY UNKNOWN\r\n" if header == "v1-unknown" else v2()
    scope = scope_after(server, sent, headers=CLIENT_SAYS)
    assert scope["client"] is None
    assert scope["scheme"] == "http"
    assert scope["server"] == ["127.0.0.1", server.port]


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_v2_ipv4_with_tlvs_is_read_whichever_version_is_named(proxied, version):
    tlvs = (
        tlv(PP2_TYPE_AUTHORITY, b"shop.example")
        + tlv(PP2_TYPE_UNIQUE_ID, b"req-42")
        + tlv(PP2_TYPE_NOOP, b"\x00" * 9)
    )
    header = v2(("203.0.113.9", 51234), ("192.0.2.1", 443), tlvs=tlvs)
    scope = scope_after(proxied(version=version), header)
    assert scope["client"] == ["203.0.113.9", 51234]
    assert scope["server"] == ["192.0.2.1", 443]
    assert scope["scheme"] == "http"


def test_v1_is_read_under_v2_too(proxied):
    scope = scope_after(proxied(version="v2"), V1_TCP4)
    assert scope["client"] == ["203.0.113.9", 51234]


def test_v2_ipv6(proxied):
    header = v2(("2001:db8::17", 4711), ("2001:db8::1", 8443))
    scope = scope_after(proxied(version="v2"), header)
    assert scope["client"] == ["2001:db8::17", 4711]
    assert scope["server"] == ["2001:db8::1", 8443]


def test_v2_local_keeps_the_socket_addresses(proxied):
    """LOCAL is the proxy speaking for itself (a health check): its own address stays."""
    server = proxied(version="v2")
    header = v2(("203.0.113.9", 51234), ("192.0.2.1", 443), command=V2_LOCAL)
    scope = scope_after(server, header)
    assert scope["client"][0] == "127.0.0.1"
    assert scope["server"] == ["127.0.0.1", server.port]


def test_v2_ssl_tlv_means_https(proxied):
    """HAProxy's send-proxy-v2-ssl: the client spoke TLS to the proxy, which decrypted it."""
    ssl = tlv(PP2_TYPE_SSL, bytes([0x01]) + struct.pack("!I", 0) + tlv(0x21, b"TLSv1.3"))
    header = v2(("203.0.113.9", 51234), ("192.0.2.1", 443), tlvs=ssl)
    scope = scope_after(proxied(version="v2"), header)
    assert scope["scheme"] == "https"


def test_a_header_sent_byte_by_byte_still_works(proxied):
    server = proxied()
    conn = open_conn(server)
    try:
        for byte in V1_TCP4:
            conn.send(bytes([byte]))
            time.sleep(0.005)  # so each byte leaves in its own segment
        conn.send(request("GET", "/"))
        response = conn.read_response()
    finally:
        conn.sock.close()
    assert response.status == 200
    assert json.loads(response.body)["scope"]["client"] == ["203.0.113.9", 51234]


def test_keep_alive_requests_after_the_header_keep_the_client(proxied):
    server = proxied(version="v2")
    conn = open_conn(server)
    try:
        # The header and two pipelined requests in one packet, a third one later.
        header = v2(("203.0.113.9", 51234), ("192.0.2.1", 443))
        conn.send(header + request("GET", "/one") + request("GET", "/two"))
        first, second = conn.read_response(), conn.read_response()
        conn.send(request("GET", "/three"))
        third = conn.read_response()
    finally:
        conn.sock.close()
    scopes = [json.loads(r.body)["scope"] for r in (first, second, third)]
    assert [s["path"] for s in scopes] == ["/one", "/two", "/three"]
    assert all(s["client"] == ["203.0.113.9", 51234] for s in scopes)


@pytest.mark.parametrize(
    "sent",
    [
        request("GET", "/"),
        b"PROXY TCP4 203.0.113.9 192.0.2.1 51234 99999\r\n" + request("GET", "/"),
        b"PROXY TCP4 not-an-address 192.0.2.1 1 2\r\n" + request("GET", "/"),
        b"PROXY UNKNOWN " + b"x" * 120 + b"\r\n",
        V2_SIGNATURE + bytes([0x31, TCP_OVER_IPV4]) + struct.pack("!H", 12) + b"\x00" * 12,
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
    ],
    ids=["no-header", "bad-port", "bad-address", "too-long", "v2-bad-version", "tls-hello"],
)
def test_a_connection_without_a_valid_header_is_closed_without_a_response(proxied, sent):
    server = proxied()
    conn = open_conn(server)
    conn.send(sent)
    assert_closed_without_response(conn)
    conn.sock.close()
    # The server is fine: the next connection with a header is served.
    assert scope_after(server, V1_TCP4)["client"] == ["203.0.113.9", 51234]


def test_a_truncated_header_is_closed_at_the_request_header_timeout(proxied):
    server = proxied("--timeout-request-header", "1", "--log-level", "debug")
    conn = open_conn(server)
    conn.send(V1_TCP4[:20])
    assert_closed_without_response(conn)
    conn.sock.close()
    wait_for_log(server, "no PROXY header within --timeout-request-header 1s")


def test_a_silent_connection_is_closed_at_the_request_header_timeout(proxied):
    server = proxied("--timeout-request-header", "1")
    conn = open_conn(server)
    assert_closed_without_response(conn)
    conn.sock.close()


def test_shutdown_does_not_wait_for_a_header(proxied):
    """A connection still without its header at SIGTERM gets what one without its first
    request gets (a moment), not the whole --timeout-request-header."""
    server = proxied("--timeout-request-header", "60", "--log-level", "debug")
    silent = open_conn(server)
    # Accepted in order: once a later connection is served, the silent one is accepted.
    assert scope_after(server, V1_TCP4)["client"] == ["203.0.113.9", 51234]
    assert server.stop(timeout=20) == 0
    assert_closed_without_response(silent)
    silent.sock.close()
    assert "no PROXY header yet, and the server is shutting down" in server.output()


def test_a_peer_closing_early_is_no_error(proxied):
    """A TCP health check connects and closes; that is logged at debug level only."""
    server = proxied()
    for _ in range(3):
        sock = server.connect()
        sock.sendall(V1_TCP4[:10])
        sock.close()
    assert scope_after(server, V1_TCP4)["client"] == ["203.0.113.9", 51234]
    log = server.output()
    assert "WARN" not in log and "ERROR" not in log, log


def test_only_the_first_connection_without_a_header_is_a_warning(proxied):
    server = proxied()
    for _ in range(3):
        conn = open_conn(server)
        conn.send(request("GET", "/"))
        assert_closed_without_response(conn)
        conn.sock.close()
    log = wait_for_log(server, "Closed a connection from 127.0.0.1")
    warnings = [line for line in log.splitlines() if "Closed a connection from" in line]
    assert len(warnings) == 1, log
    assert "no PROXY protocol header: it begins with" in warnings[0]
    assert "send-proxy" in warnings[0]


def test_a_plain_http_client_gets_no_response(proxied):
    server = proxied()
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(server.url + "/", timeout=10)


def test_http2_after_the_header(proxied):
    """h2c with prior knowledge: hyper tells HTTP/2 from HTTP/1 by bytes behind the header."""
    server = proxied()
    sock = server.connect()
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    headers = [(":method", "GET"), (":path", "/h2"), (":scheme", "http"), (":authority", "x")]
    client.send_headers(1, headers, end_stream=True)
    body = b""
    try:
        sock.sendall(V1_TCP4 + client.data_to_send())
        ended = False
        while not ended:
            data = sock.recv(65536)
            assert data, "the server closed the connection"
            for event in client.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    body += event.data
                    client.acknowledge_received_data(event.flow_controlled_length, 1)
                ended = ended or isinstance(event, h2.events.StreamEnded)
            sock.sendall(client.data_to_send())
    finally:
        sock.close()
    scope = json.loads(body)["scope"]
    assert scope["http_version"] == "2"
    assert scope["client"] == ["203.0.113.9", 51234]


def test_websocket_after_the_header(proxied):
    server = proxied(version="v2", app="ws_app:app")

    async def client():
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(v2(("203.0.113.9", 51234), ("192.0.2.1", 443)))
        sock.setblocking(False)
        url = f"ws://127.0.0.1:{server.port}/scope/x"
        async with connect(url, sock=sock, open_timeout=10) as ws:
            return json.loads(await ws.recv())

    scope = asyncio.run(asyncio.wait_for(client(), 30))
    assert scope["client"] == ["203.0.113.9", 51234]
    assert scope["server"] == ["192.0.2.1", 443]


def test_wsgi_environ_names_the_client(proxied):
    server = proxied(app="wsgi_env:app")
    conn = open_conn(server)
    try:
        conn.send(V1_TCP4 + request("GET", "/env"))
        response = conn.read_response()
    finally:
        conn.sock.close()
    environ = json.loads(response.body)["environ"]
    assert environ["REMOTE_ADDR"] == "203.0.113.9"
    assert environ["REMOTE_PORT"] == "51234"
    assert environ["SERVER_NAME"] == "192.0.2.1"
    assert environ["SERVER_PORT"] == "443"


def test_wsgi_environ_of_a_client_of_the_balancer_s_unix_socket(proxied):
    """Such a client is unnamed, as a peer of a Unix socket is: an empty REMOTE_ADDR and no
    REMOTE_PORT, although it came over TCP, whose requests all have one."""
    server = proxied(version="v2", app="wsgi_env:app")
    unix_source = V2_SIGNATURE + bytes([V2_PROXY, 0x31]) + struct.pack("!H", 216) + b"\x00" * 216
    conn = open_conn(server)
    try:
        conn.send(unix_source + request("GET", "/env"))
        described = json.loads(conn.read_response().body)
        unnamed = described["environ"]
        # The next request on another connection has its port again.
        other = open_conn(server)
        try:
            other.send(v2(("203.0.113.9", 51234), ("192.0.2.1", 443)) + request("GET", "/env"))
            named = json.loads(other.read_response().body)["environ"]
        finally:
            other.sock.close()
    finally:
        conn.sock.close()
    assert unnamed["REMOTE_ADDR"] == ""
    # Not there at all: no placeholder (None, which "environ" would leave out) either.
    assert "REMOTE_PORT" not in described["types"]
    assert "NoneType" not in described["types"].values()
    assert named["REMOTE_ADDR"] == "203.0.113.9"
    assert named["REMOTE_PORT"] == "51234"


def test_forwarded_headers_are_believed_only_from_a_trusted_proxy_source(proxied):
    """HAProxy passes a CDN's connection on: the CDN's X-Forwarded-For counts when the
    PROXY header's source (the CDN) is in --forwarded-allow-ips, and not otherwise."""
    server = proxied("--forwarded-allow-ips", "127.0.0.1,198.51.100.0/24")
    headers = [("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-Proto", "https")]
    trusted_source = b"PROXY TCP4 198.51.100.7 192.0.2.1 40000 443\r\n"
    other_source = b"PROXY TCP4 203.0.113.66 192.0.2.1 40000 443\r\n"
    scopes = []
    for header in (trusted_source, other_source):
        conn = open_conn(server)
        try:
            conn.send(header + request("GET", "/", headers))
            scopes.append(json.loads(conn.read_response().body)["scope"])
        finally:
            conn.sock.close()
    assert scopes[0]["client"] == ["203.0.113.9", 0]
    assert scopes[0]["scheme"] == "https"
    assert scopes[1]["client"] == ["203.0.113.66", 40000]
    assert scopes[1]["scheme"] == "http"


def test_a_client_of_the_balancer_s_unix_socket_is_not_trusted_as_a_unix_peer(proxied):
    """A v2 header whose source is a Unix socket (family 0x31) names a client of the balancer's
    socket, not a peer on ours: the default `unix` entry of --forwarded-allow-ips does not make
    its X-Forwarded-* believed."""
    server = proxied(version="v2")
    unix_source = V2_SIGNATURE + bytes([V2_PROXY, 0x31]) + struct.pack("!H", 216) + b"\x00" * 216
    scope = scope_after(server, unix_source, headers=CLIENT_SAYS)
    assert scope["client"] is None
    assert scope["scheme"] == "http"


def test_an_untrusted_peer_s_header_is_read_but_not_believed(proxied):
    server = proxied("--forwarded-allow-ips", "10.0.0.1")
    scope = scope_after(server, V1_TCP4)
    assert scope["client"][0] == "127.0.0.1"
    assert scope["server"] == ["127.0.0.1", server.port]
    wait_for_log(server, "Ignoring the PROXY header of 127.0.0.1")


def test_proxy_headers_off_still_reads_the_proxy_protocol(proxied):
    """--no-proxy-headers turns off X-Forwarded-*, not the PROXY protocol."""
    server = proxied("--no-proxy-headers")
    conn = open_conn(server)
    try:
        conn.send(V1_TCP4 + request("GET", "/", [("X-Forwarded-For", "198.51.100.1")]))
        scope = json.loads(conn.read_response().body)["scope"]
    finally:
        conn.sock.close()
    assert scope["client"] == ["203.0.113.9", 51234]


def test_a_unix_socket_reads_the_header_too(run_rsasgi, tmp_path):
    path = tmp_path / "rsasgi.sock"
    server = run_rsasgi("proto_scope:app", "--uds", str(path), "--proxy-protocol", "v2", wait=False)
    wait_for_log(server, f"Listening on unix:{path}")
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(path))
    conn = RawConn(sock)
    try:
        conn.send(v2(("203.0.113.9", 51234), ("192.0.2.1", 443)) + request("GET", "/u"))
        scope = json.loads(conn.read_response().body)["scope"]
    finally:
        sock.close()
    assert scope["client"] == ["203.0.113.9", 51234]
    assert scope["server"] == ["192.0.2.1", 443]
    wait_for(lambda: access_log(server.output(), "/u"), message="the access log line")
    (record,) = access_log(server.output(), "/u")
    assert record["client"] == "203.0.113.9:51234"


def test_an_unknown_version_is_a_usage_error():
    result = cli("proto_scope:app", "--app-dir", str(APPS), "--proxy-protocol", "v3")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--proxy-protocol" in lines[0], result.stderr
