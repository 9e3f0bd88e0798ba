"""Proxy headers: a trusted proxy (by default, one on this host or on a Unix socket) tells the
app who the client is and which scheme it used, through X-Forwarded-For and X-Forwarded-Proto
or (with --proxy-header-format forwarded) RFC 7239 Forwarded, never both, and with
--forwarded-host-headers the host, port and path prefix it used, through X-Forwarded-Host,
-Port and -Prefix; anyone else's headers change nothing.

Apps: tests/apps/proto_scope.py (the ASGI scope as JSON), wsgi_env.py (the WSGI environ as
JSON), ws_app.py (the WebSocket scope), and the Django project of tests/django_support.py.
Clients connect from 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import pytest
from apps.proto_raw import RawConn, request
from conftest import APPS, access_log, cli, wait_for_log
from django_support import DJANGO_ENV, build_django_project
from websockets.asyncio.client import connect

FORWARDED_BY_NGINX = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}


def open_raw(server) -> RawConn:
    return RawConn(server.connect())


def scope_of(server, headers: dict, path: str = "/") -> dict:
    response = httpx.get(server.url + path, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["scope"]


def header_values(scope: dict, name: bytes) -> list[bytes]:
    """The values of header `name` in a scope proto_scope reported (bytes as base64)."""
    decoded = [[base64.b64decode(part["b64"]) for part in item] for item in scope["headers"]]
    return [value for key, value in decoded if key == name]


def environ_of(server, headers: dict, path: str = "/env") -> dict:
    response = httpx.get(server.url + path, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["environ"]


def test_a_local_proxy_is_believed_by_default(run_rsasgi):
    server = run_rsasgi("proto_scope:app")
    scope = scope_of(server, FORWARDED_BY_NGINX, "/seen")
    assert scope["client"] == ["203.0.113.9", 0]
    assert scope["scheme"] == "https"
    # The access log names the real client too.
    wait_for_log(server, '"GET /seen HTTP/1.1" 200')
    (record,) = access_log(server.output(), "/seen")
    assert record["client"] == "203.0.113.9:0"


def test_x_forwarded_for_is_walked_past_trusted_hops(run_rsasgi):
    server = run_rsasgi("proto_scope:app", "--forwarded-allow-ips", "127.0.0.1,10.0.0.0/8")
    # The leftmost entry came from the client itself and may be forged.
    scope = scope_of(server, {"X-Forwarded-For": "6.6.6.6, 198.51.100.7, 10.1.2.3"})
    assert scope["client"] == ["198.51.100.7", 0]


@pytest.mark.parametrize(
    "args, env",
    [
        (["--forwarded-allow-ips", "10.0.0.1"], None),
        ([], {"FORWARDED_ALLOW_IPS": "10.0.0.1"}),
        (["--no-proxy-headers"], None),
        (["--proxy-headers=false"], None),
        # Was ignored: the --no-* switches had no variable.
        ([], {"RSASGI_NO_PROXY_HEADERS": "true", "FORWARDED_ALLOW_IPS": "*"}),
    ],
    ids=[
        "untrusted-peer",
        "env-FORWARDED_ALLOW_IPS",
        "no-proxy-headers",
        "proxy-headers-false",
        "env-RSASGI_NO_PROXY_HEADERS",
    ],
)
def test_headers_change_nothing_when_not_believed(run_rsasgi, args, env):
    server = run_rsasgi("proto_scope:app", *args, env=env)
    headers = {**FORWARDED_BY_NGINX, "Forwarded": "for=198.51.100.7;proto=https;host=evil"}
    scope = scope_of(server, headers)
    assert scope["client"][0] == "127.0.0.1"
    assert scope["scheme"] == "http"
    assert header_values(scope, b"host") == [f"127.0.0.1:{server.port}".encode()]


def test_forwarded_format_reads_quoted_ipv6_and_host(run_rsasgi):
    server = run_rsasgi("proto_scope:app", "--proxy-header-format", "forwarded")
    headers = {
        "X-Forwarded-For": "198.51.100.1",
        "Forwarded": 'for="[2001:db8:cafe::17]:4711";proto=https;host=shop.example',
    }
    response = httpx.get(server.url + "/", headers=headers, timeout=10)
    scope = response.json()["scope"]
    assert scope["client"] == ["2001:db8:cafe::17", 4711]
    assert scope["scheme"] == "https"
    assert header_values(scope, b"host") == [b"shop.example"]


def test_a_client_s_own_forwarded_header_changes_nothing_behind_nginx(run_rsasgi):
    """nginx sets X-Forwarded-* and passes a client's Forwarded on as it came: by default that
    Forwarded is not read, so the client cannot pick its address, its scheme or the Host."""
    server = run_rsasgi("proto_scope:app")
    headers = {
        "X-Forwarded-For": "203.0.113.50",
        "X-Forwarded-Proto": "http",
        "Forwarded": "for=1.2.3.4;proto=https;host=evil.example",
    }
    scope = scope_of(server, headers)
    assert scope["client"] == ["203.0.113.50", 0]
    assert scope["scheme"] == "http"
    assert header_values(scope, b"host") == [f"127.0.0.1:{server.port}".encode()]


@pytest.mark.parametrize(
    "format_, name, line",
    [
        ("x-forwarded", "X-Forwarded-For", "\xff\xfe, 203.0.113.9"),
        ("forwarded", "Forwarded", 'for="\xff", for=203.0.113.9'),
        ("forwarded", "Forwarded", 'for="[::1, for=203.0.113.9'),
    ],
    ids=["x-forwarded-for-obs-text", "forwarded-obs-text", "forwarded-open-quote"],
)
def test_a_client_s_junk_does_not_hide_the_proxy_s_entry(run_rsasgi, format_, name, line):
    """nginx's $proxy_add_x_forwarded_for appends the address it saw to the client's own
    X-Forwarded-For, on the same line. Bytes past ASCII, or a quote the client never closed,
    cost the client's item alone: the line as a whole was dropped, and the client, with
    nothing believed, passed for the proxy at 127.0.0.1 (an allow-list's "internal")."""
    server = run_rsasgi("proto_scope:app", "--proxy-header-format", format_)
    conn = open_raw(server)
    try:
        conn.send(request("GET", "/seen", [(name, line)]))
        response = conn.read_response()
    finally:
        conn.sock.close()
    assert response.status == 200, response
    assert json.loads(response.body)["scope"]["client"] == ["203.0.113.9", 0]
    wait_for_log(server, '"GET /seen HTTP/1.1" 200')
    (record,) = access_log(server.output(), "/seen")
    assert record["client"] == "203.0.113.9:0"


def test_wsgi_remote_addr_behind_a_client_s_junk(run_rsasgi):
    server = run_rsasgi("wsgi_env:app")
    conn = open_raw(server)
    try:
        conn.send(request("GET", "/env", [("X-Forwarded-For", "\xff, 203.0.113.9")]))
        response = conn.read_response()
    finally:
        conn.sock.close()
    assert json.loads(response.body)["environ"]["REMOTE_ADDR"] == "203.0.113.9"


def test_a_proxy_s_forwarded_host_does_not_stand_in_for_a_missing_host(run_rsasgi):
    """RFC 9112 §3.2 is checked on what the client sent: no Host is a 400 whatever the
    proxy's Forwarded says."""
    server = run_rsasgi("proto_scope:app", "--proxy-header-format", "forwarded")
    conn = open_raw(server)
    try:
        conn.send(b"GET / HTTP/1.1\r\nForwarded: for=1.2.3.4;host=a.example\r\n\r\n")
        assert conn.read_response().status == 400
    finally:
        conn.sock.close()


@pytest.mark.parametrize(
    "args, headers",
    [
        ([], {"X-Forwarded-For": "not an address", "X-Forwarded-Proto": "gopher"}),
        ([], {"X-Forwarded-For": ",,,"}),
        (["--proxy-header-format", "forwarded"], {"Forwarded": 'for="[::1'}),
        (["--proxy-header-format", "forwarded"], {"Forwarded": "for=unknown;proto=gopher"}),
        (["--proxy-header-format", "forwarded"], {"Forwarded": ";;;=;"}),
        (["--proxy-header-format", "forwarded"], {"Forwarded": 'for=1.2.3.4;host="a/b c"'}),
    ],
    ids=["garbage", "empty-items", "unterminated-quote", "unknown", "no-pairs", "bad-host"],
)
def test_malformed_values_are_ignored(run_rsasgi, args, headers):
    server = run_rsasgi("proto_scope:app", *args)
    scope = scope_of(server, headers)
    assert scope["client"][0] in ("127.0.0.1", "1.2.3.4")
    assert scope["scheme"] == "http"
    assert header_values(scope, b"host") == [f"127.0.0.1:{server.port}".encode()]


def test_wsgi_environ_sees_the_client_and_https(run_rsasgi):
    server = run_rsasgi("wsgi_env:app")
    environ = environ_of(server, FORWARDED_BY_NGINX)
    assert environ["REMOTE_ADDR"] == "203.0.113.9"
    assert environ["REMOTE_PORT"] == "0"
    assert environ["wsgi.url_scheme"] == "https"
    assert environ["HTTPS"] == "on"
    plain = environ_of(server, {})
    assert plain["REMOTE_ADDR"] == "127.0.0.1"
    assert plain["wsgi.url_scheme"] == "http"
    assert "HTTPS" not in plain


def test_websocket_scope_says_wss(run_rsasgi):
    server = run_rsasgi("ws_app:app")

    async def client():
        url = f"ws://127.0.0.1:{server.port}/scope/x"
        async with connect(url, additional_headers=FORWARDED_BY_NGINX, open_timeout=10) as ws:
            return json.loads(await ws.recv())

    scope = asyncio.run(asyncio.wait_for(client(), 30))
    assert scope["scheme"] == "wss"
    assert scope["client"] == ["203.0.113.9", 0]


def test_unix_socket_peers_are_trusted_by_default(run_rsasgi, tmp_path):
    path = tmp_path / "rsasgi.sock"
    server = run_rsasgi("proto_scope:app", "--uds", str(path), wait=False)
    wait_for_log(server, f"Listening on unix:{path}")
    transport = httpx.HTTPTransport(uds=str(path))
    with httpx.Client(transport=transport, base_url="http://localhost") as client:
        scope = client.get("/", headers=FORWARDED_BY_NGINX, timeout=10).json()["scope"]
    assert scope["client"] == ["203.0.113.9", 0]
    assert scope["scheme"] == "https"


def test_a_list_without_unix_on_unix_sockets_only_is_warned_of(run_rsasgi, tmp_path):
    """A list given replaces the default, `unix` included: naming the remote proxies only
    stops believing nginx on the socket (no client address, scheme http, and Django's
    SECURE_SSL_REDIRECT loops), which went without a word."""
    path = tmp_path / "rsasgi.sock"
    warning = (
        "--forwarded-allow-ips \"10.0.0.5\" has no 'unix', and every socket here is a Unix "
        "socket: the proxy headers of every request are ignored (the client has no address, "
        "the scheme is http); add it: --forwarded-allow-ips 10.0.0.5,unix"
    )
    args = ["proto_scope:app", "--uds", str(path), "--forwarded-allow-ips", "10.0.0.5"]
    result = cli(*args, "--app-dir", str(APPS), "--check-config")
    assert result.returncode == 0, result.stderr
    assert warning in result.stderr, result.stderr
    server = run_rsasgi(*args, wait=False)
    wait_for_log(server, f"Listening on unix:{path}")
    assert warning in server.output()
    result = cli(*args[:-1], "10.0.0.5,unix", "--app-dir", str(APPS), "--check-config")
    assert "has no 'unix'" not in result.stderr, result.stderr


@pytest.mark.parametrize("value", ["10.0.0.0/33", "nginx", "1.2.3"])
def test_a_bad_allow_list_is_a_usage_error(value):
    result = cli("proto_scope:app", "--app-dir", str(APPS), "--forwarded-allow-ips", value)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not an IP address" in lines[0], result.stderr


# ------------------------------------------------------------------- --forwarded-host-headers

# What a proxy that serves https://shop.example:8443/shop/ sends, having stripped /shop.
FORWARDED_URL = {
    "X-Forwarded-For": "203.0.113.9",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "shop.example",
    "X-Forwarded-Port": "8443",
    "X-Forwarded-Prefix": "/shop",
}


def test_host_headers_are_ignored_by_default(run_rsasgi):
    server = run_rsasgi("proto_scope:app")
    scope = scope_of(server, FORWARDED_URL, "/cart")
    assert scope["client"] == ["203.0.113.9", 0]
    assert header_values(scope, b"host") == [f"127.0.0.1:{server.port}".encode()]
    assert scope["server"] == ["127.0.0.1", server.port]
    assert scope["root_path"] == ""
    assert scope["path"] == "/cart"


def test_asgi_scope_tells_the_url_the_client_used(run_rsasgi):
    server = run_rsasgi("proto_scope:app", "--forwarded-host-headers")
    scope = scope_of(server, FORWARDED_URL, "/cart?x=1")
    assert scope["scheme"] == "https"
    assert header_values(scope, b"host") == [b"shop.example:8443"]
    assert scope["server"] == ["127.0.0.1", 8443]
    # ASGI's path includes root_path.
    assert scope["root_path"] == "/shop"
    assert scope["path"] == "/shop/cart"
    assert base64.b64decode(scope["raw_path"]["b64"]) == b"/shop/cart"
    assert base64.b64decode(scope["query_string"]["b64"]) == b"x=1"


def test_the_prefix_goes_in_front_of_root_path_and_is_not_doubled(run_rsasgi):
    server = run_rsasgi("proto_scope:app", "--forwarded-host-headers", "--root-path", "/api")
    scope = scope_of(server, {"X-Forwarded-Prefix": "/shop"}, "/cart")
    assert scope["root_path"] == "/shop/api"
    assert scope["path"] == "/shop/api/cart"
    # A proxy that passed the prefix on rather than stripping it.
    scope = scope_of(server, {"X-Forwarded-Prefix": "/shop"}, "/shop/cart")
    assert scope["path"] == "/shop/api/cart"


def test_wsgi_environ_tells_the_url_the_client_used(run_rsasgi):
    server = run_rsasgi("wsgi_env:app", "--forwarded-host-headers")
    environ = environ_of(server, FORWARDED_URL, "/cart")
    assert environ["wsgi.url_scheme"] == "https"
    assert environ["HTTP_HOST"] == "shop.example:8443"
    assert environ["SERVER_PORT"] == "8443"
    assert environ["SCRIPT_NAME"] == "/shop"
    assert environ["PATH_INFO"] == "/cart"
    # The port the scheme implies is not written into Host.
    environ = environ_of(server, {**FORWARDED_URL, "X-Forwarded-Port": "443"}, "/shop/cart")
    assert environ["HTTP_HOST"] == "shop.example"
    assert environ["SERVER_PORT"] == "443"
    assert environ["SCRIPT_NAME"] == "/shop"
    assert environ["PATH_INFO"] == "/cart"


def test_websocket_scope_gets_host_and_prefix(run_rsasgi):
    server = run_rsasgi("ws_app:app", "--forwarded-host-headers")

    async def client():
        url = f"ws://127.0.0.1:{server.port}/scope/x"
        async with connect(url, additional_headers=FORWARDED_URL, open_timeout=10) as ws:
            return json.loads(await ws.recv())

    scope = asyncio.run(asyncio.wait_for(client(), 30))
    assert scope["scheme"] == "wss"
    assert scope["root_path"] == "/shop"
    assert scope["path"] == "/shop/scope/x"
    assert ["host", "shop.example:8443"] in scope["headers"]


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Forwarded-Host": "evil.example/path"},
        {"X-Forwarded-Host": "user@evil.example"},
        {"X-Forwarded-Host": "evil.example:port"},
        {"X-Forwarded-Port": "http"},
        {"X-Forwarded-Port": "99999"},
        {"X-Forwarded-Prefix": "shop"},
        {"X-Forwarded-Prefix": "/shop/../admin"},
        {"X-Forwarded-Prefix": "//evil.example"},
        {"X-Forwarded-Prefix": "/a\tb"},
        {"X-Forwarded-Prefix": b"/caf\xe9"},
    ],
    ids=[
        "host-path",
        "host-userinfo",
        "host-bad-port",
        "port-word",
        "port-too-big",
        "prefix-relative",
        "prefix-dotdot",
        "prefix-protocol-relative",
        "prefix-control",
        "prefix-latin1",
    ],
)
def test_malformed_host_headers_are_ignored(run_rsasgi, headers):
    server = run_rsasgi("proto_scope:app", "--forwarded-host-headers")
    scope = scope_of(server, headers, "/cart")
    assert header_values(scope, b"host") == [f"127.0.0.1:{server.port}".encode()]
    assert scope["server"] == ["127.0.0.1", server.port]
    assert scope["root_path"] == ""
    assert scope["path"] == "/cart"


def test_host_headers_from_an_untrusted_peer_change_nothing(run_rsasgi):
    server = run_rsasgi(
        "proto_scope:app", "--forwarded-host-headers", "--forwarded-allow-ips", "10.0.0.1"
    )
    scope = scope_of(server, FORWARDED_URL, "/cart")
    assert header_values(scope, b"host") == [f"127.0.0.1:{server.port}".encode()]
    assert scope["server"] == ["127.0.0.1", server.port]
    assert scope["root_path"] == ""


def test_host_headers_need_the_proxy_headers():
    result = cli(
        "proto_scope:app",
        "--app-dir",
        str(APPS),
        "--forwarded-host-headers",
        "--no-proxy-headers",
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        "rsasgi: --forwarded-host-headers needs the proxy headers, which --no-proxy-headers "
        "turns off (see 'rsasgi --help')"
    )


@pytest.fixture(scope="module")
def django_project(tmp_path_factory):
    return build_django_project(tmp_path_factory)


@pytest.mark.parametrize("handler", ["mysite.asgi:application", "mysite.wsgi:application"])
def test_django_builds_links_to_the_url_the_client_used(run_rsasgi, django_project, handler):
    """Without USE_X_FORWARDED_HOST or SECURE_PROXY_SSL_HEADER in its settings."""
    server = run_rsasgi(
        handler, "--app-dir", str(django_project), "--forwarded-host-headers", env=DJANGO_ENV
    )
    # DEBUG's ALLOWED_HOSTS takes *.localhost.
    headers = {**FORWARDED_URL, "X-Forwarded-Host": "shop.localhost"}
    response = httpx.get(server.url + "/where/?x=1", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "absolute": "https://shop.localhost:8443/shop/where/?x=1",
        "reverse": "/shop/where/",
        "host": "shop.localhost:8443",
        "secure": True,
    }
