"""Every key of the HTTP connection scope, checked against what the client really sent.

The app (tests/apps/proto_scope.py) returns its scope as JSON; bytes come back base64-encoded
and are decoded here, so values are compared exactly.
"""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from apps.proto_raw import RawConn, request

APP = "proto_scope:app"
REQUIRED_KEYS = {
    "type": "str",
    "asgi": "dict",
    "http_version": "str",
    "method": "str",
    "scheme": "str",
    "path": "str",
    "raw_path": "bytes",
    "query_string": "bytes",
    "root_path": "str",
    "headers": "list",
    "client": ("tuple", "list"),
    "server": ("tuple", "list"),
    "state": "dict",
}


def dec(value):
    if isinstance(value, dict):
        if set(value) == {"b64"}:
            return base64.b64decode(value["b64"])
        return {k: dec(v) for k, v in value.items()}
    if isinstance(value, list):
        return [dec(v) for v in value]
    return value


def parse(body: bytes) -> dict:
    out = json.loads(body)
    return {"scope": dec(out["scope"]), "types": out["_types"], "body": dec(out["body"])}


def raw_scope(server, data: bytes, sock=None) -> tuple[dict, object]:
    sock = sock or server.connect()
    conn = RawConn(sock)
    conn.send(data)
    resp = conn.read_response()
    assert resp.status == 200, (resp.status_line, resp.body[:500], server.output()[-2000:])
    return parse(resp.body), sock


def headers_of(scope) -> list[tuple[bytes, bytes]]:
    return [(bytes(n), bytes(v)) for n, v in scope["headers"]]


@pytest.fixture
def server(run_rsasgi):
    return run_rsasgi(APP)


def test_every_key_present_with_its_type(server):
    r = httpx.get(f"{server.url}/plain?x=1", headers={"X-Custom": "Value"}, timeout=10)
    assert r.status_code == 200
    out = parse(r.content)
    scope, types = out["scope"], out["types"]
    for key, expected_type in REQUIRED_KEYS.items():
        assert key in scope, f"scope lacks {key!r}: {sorted(scope)}"
        got = types["keys"][key]
        if isinstance(expected_type, tuple):
            assert got in expected_type, (key, got)
        else:
            assert got == expected_type, (key, got)
    # The contract: headers are a list of (bytes, bytes) tuples.
    assert types["header_item"] == ["tuple"]
    assert types["header_part"] == ["bytes"]
    assert types["header_item_len"] == [2]
    # Tuples of bytes, str and int cannot be in a reference cycle: the server hands them
    # over untracked, so young collections need not walk them.
    assert types["tuples_tracked"] == [False]

    assert scope["type"] == "http"
    assert scope["asgi"]["version"] == "3.0"
    # uvicorn's: told 2.4, Starlette stops listening for the disconnect beside a stream
    # (see test_frameworks.py's quiet stream).
    assert scope["asgi"]["spec_version"] == "2.3", scope["asgi"]
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "GET"
    assert scope["scheme"] == "http"
    assert scope["path"] == "/plain"
    assert scope["raw_path"] == b"/plain"
    assert scope["query_string"] == b"x=1"
    assert scope["root_path"] == ""
    headers = headers_of(scope)
    assert (b"x-custom", b"Value") in headers
    assert (b"host", f"127.0.0.1:{server.port}".encode()) in headers
    assert list(scope["server"]) == ["127.0.0.1", server.port]
    assert scope["client"][0] == "127.0.0.1"
    assert isinstance(scope["state"], dict)


def test_client_and_server_addresses(server):
    sock = server.connect()
    local_host, local_port = sock.getsockname()[:2]
    out, _ = raw_scope(server, request("GET", "/addr"), sock)
    sock.close()
    assert list(out["scope"]["client"]) == [local_host, local_port]
    assert local_host == "127.0.0.1"
    assert list(out["scope"]["server"]) == ["127.0.0.1", server.port]


def test_client_port_differs_per_connection(server):
    ports = []
    for _ in range(2):
        sock = server.connect()
        out, _ = raw_scope(server, request("GET", "/"), sock)
        assert out["scope"]["client"][1] == sock.getsockname()[1]
        ports.append(out["scope"]["client"][1])
        sock.close()
    assert ports[0] != ports[1]


def test_http_version_1_0(server):
    out, sock = raw_scope(server, request("GET", "/ten", version="HTTP/1.0", host=False))
    sock.close()
    assert out["scope"]["http_version"] == "1.0"
    assert out["scope"]["path"] == "/ten"
    assert out["scope"]["method"] == "GET"


def test_http_version_1_1_raw(server):
    out, sock = raw_scope(server, request("GET", "/eleven"))
    sock.close()
    assert out["scope"]["http_version"] == "1.1"


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PURGE"])
def test_method(server, method):
    body = b"payload-" + method.encode() if method in ("POST", "PUT", "PATCH") else b""
    out, sock = raw_scope(server, request(method, "/m", body=body))
    sock.close()
    assert out["scope"]["method"] == method
    assert out["body"] == body


@pytest.mark.parametrize(
    "target, path, raw_path, query",
    [
        ("/", "/", b"/", b""),
        ("/caf%C3%A9/a%20b", "/café/a b", b"/caf%C3%A9/a%20b", b""),
        ("/a%2Fb/c", "/a/b/c", b"/a%2Fb/c", b""),
        ("/%7Euser/%25percent", "/~user/%percent", b"/%7Euser/%25percent", b""),
        ("/%E2%9C%93?x=%E2%9C%93", "/\u2713", b"/%E2%9C%93", b"x=%E2%9C%93"),
        ("/x?a=1&b=%20", "/x", b"/x", b"a=1&b=%20"),
        ("/x?", "/x", b"/x", b""),
        (
            "/search?q=caf%C3%A9&plus=a+b&empty=&flag&slash=%2F",
            "/search",
            b"/search",
            b"q=caf%C3%A9&plus=a+b&empty=&flag&slash=%2F",
        ),
        ("/x?a=1&a=2", "/x", b"/x", b"a=1&a=2"),
    ],
)
def test_path_raw_path_query_string(server, target, path, raw_path, query):
    out, sock = raw_scope(server, request("GET", target))
    sock.close()
    scope = out["scope"]
    assert scope["path"] == path
    assert scope["raw_path"] == raw_path
    assert scope["query_string"] == query
    assert scope["root_path"] == ""


def test_query_string_via_httpx(server):
    r = httpx.get(f"{server.url}/q?a=1&b=%20", timeout=10)
    scope = parse(r.content)["scope"]
    assert scope["query_string"] == b"a=1&b=%20"
    assert scope["path"] == "/q"


def test_root_path(run_rsasgi):
    server = run_rsasgi("--root-path", "/api", APP)
    out, sock = raw_scope(server, request("GET", "/items/caf%C3%A9?x=1"))
    sock.close()
    scope = out["scope"]
    assert scope["root_path"] == "/api"
    assert scope["path"] == "/api/items/café"
    assert scope["raw_path"] == b"/api/items/caf%C3%A9"
    assert scope["query_string"] == b"x=1"


def test_root_path_from_env(run_rsasgi):
    server = run_rsasgi(APP, env={"RSASGI_ROOT_PATH": "/mounted"})
    r = httpx.get(f"{server.url}/a%20b", timeout=10)
    scope = parse(r.content)["scope"]
    assert scope["root_path"] == "/mounted"
    assert scope["path"] == "/mounted/a b"
    assert scope["raw_path"] == b"/mounted/a%20b"


def test_several_cookie_lines_reach_the_app_as_one_header(server):
    """Starlette and Django read one cookie header: several Cookie lines (from a proxy that
    turned an HTTP/2 request into HTTP/1.1 without joining them) are joined with "; "."""
    data = b"GET /h HTTP/1.1\r\nHost: testserver\r\nCookie: a=1\r\nCookie: b=2; c=3\r\n\r\n"
    out, sock = raw_scope(server, data)
    sock.close()
    cookies = [value for name, value in headers_of(out["scope"]) if name == b"cookie"]
    assert cookies == [b"a=1; b=2; c=3"]


def test_headers_exact(server):
    data = (
        b"GET /h HTTP/1.1\r\n"
        b"Host: testserver\r\n"
        b"X-Custom-Header: Value Case\r\n"
        b"X-Dup: one\r\n"
        b"X-Other: o\r\n"
        b"X-Dup: two\r\n"
        b"x-dup: three\r\n"
        b"X-Latin: caf\xe9 \xff\xfe\r\n"
        b"ACCEPT: */*\r\n"
        b"\r\n"
    )
    out, sock = raw_scope(server, data)
    sock.close()
    headers = headers_of(out["scope"])
    expected = [
        (b"host", b"testserver"),
        (b"x-custom-header", b"Value Case"),
        (b"x-dup", b"one"),
        (b"x-other", b"o"),
        (b"x-dup", b"two"),
        (b"x-dup", b"three"),
        (b"x-latin", b"caf\xe9 \xff\xfe"),
        (b"accept", b"*/*"),
    ]
    # ASGI: the order of values of one name must be kept; order across names is free.
    assert sorted(headers) == sorted(expected)
    assert [v for n, v in headers if n == b"x-dup"] == [b"one", b"two", b"three"]
    assert all(n == n.lower() for n, _ in headers)


def test_headers_with_body_include_content_length(server):
    data = request("POST", "/b", headers=[("Content-Type", "text/plain")], body=b"abc")
    out, sock = raw_scope(server, data)
    sock.close()
    headers = headers_of(out["scope"])
    assert sorted(headers) == sorted(
        [(b"host", b"testserver"), (b"content-type", b"text/plain"), (b"content-length", b"3")]
    )
    assert out["body"] == b"abc"


def test_state_from_lifespan_is_copied_per_request(server):
    for _ in range(3):
        r = httpx.get(f"{server.url}/state", timeout=10)
        scope = parse(r.content)["scope"]
        # The app adds "mutated_by_request" to its scope["state"], ["asgi"] and
        # ["extensions"] after answering: a copy per request means the next request never
        # sees it.
        assert scope["state"] == {"from_lifespan": "yes"}
        assert scope["asgi"] == {"version": "3.0", "spec_version": "2.3"}
        assert "mutated_by_request" not in scope["extensions"]


def test_scope_on_keep_alive_connection(server):
    sock = server.connect()
    first, _ = raw_scope(server, request("GET", "/one?a=1"), sock)
    second, _ = raw_scope(server, request("GET", "/two?b=2", headers=[("X-N", "2")]), sock)
    sock.close()
    assert (first["scope"]["path"], first["scope"]["query_string"]) == ("/one", b"a=1")
    assert (second["scope"]["path"], second["scope"]["query_string"]) == ("/two", b"b=2")
    assert (b"x-n", b"2") in headers_of(second["scope"])
    assert (b"x-n", b"2") not in headers_of(first["scope"])
    assert first["scope"]["client"] == second["scope"]["client"]
