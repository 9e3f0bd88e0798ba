"""WSGI (PEP 3333) environ, wsgi.input, wsgi.errors and response framing, end to end.

App: tests/apps/wsgi_env.py (a plain WSGI function). Every environ key is checked against the
request that was actually sent, with httpx and with raw sockets (tests/apps/proto_raw.py).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import random
import re
import time

import httpx
import pytest
from apps.proto_raw import Closed, RawConn, request
from apps.wsgi_common import apply_op
from conftest import access_log, wait_for, wait_for_log

APP = "wsgi_env:app"

CGI_KEYS = {
    "REQUEST_METHOD",
    "SCRIPT_NAME",
    "PATH_INFO",
    "QUERY_STRING",
    "SERVER_NAME",
    "SERVER_PORT",
    "SERVER_PROTOCOL",
    "REMOTE_ADDR",
    "REMOTE_PORT",
}
WSGI_KEYS = {
    "wsgi.version",
    "wsgi.url_scheme",
    "wsgi.input",
    "wsgi.errors",
    "wsgi.multithread",
    "wsgi.multiprocess",
    "wsgi.run_once",
    "wsgi.file_wrapper",
    "wsgi.input_terminated",
}


@pytest.fixture
def server(run_rsasgi):
    return run_rsasgi(APP)


def raw(server) -> RawConn:
    return RawConn(server.connect())


def env_over(conn: RawConn, data: bytes, method: str = "GET") -> dict:
    conn.send(data)
    resp = conn.read_response(method)
    assert resp.status == 200, (resp.status_line, resp.body[:500])
    return json.loads(resp.body)


def env_raw(server, data: bytes) -> dict:
    conn = raw(server)
    try:
        return env_over(conn, data)
    finally:
        conn.sock.close()


def chunked(pieces: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p) + b"0\r\n\r\n"


# --- the environ -----------------------------------------------------------------------------


def test_each_response_has_its_own_status_line_when_statuses_alternate(server):
    # start_response keeps the last status str it parsed: a literal sent again, a different
    # one, and equal text in a new str must each come out as their own status line.
    conn = raw(server)
    try:
        for ask, line in [
            ("name=ok", "200 OK"),
            ("name=teapot", "418 I'M A TEAPOT"),
            ("name=teapot", "418 I'M A TEAPOT"),
            ("name=ok", "200 OK"),
            ("s=200+OK", "200 OK"),
            ("s=299+Custom+Thing", "299 Custom Thing"),
            ("name=gone", "410 Gone"),
            ("name=ok", "200 OK"),
        ]:
            conn.send(f"GET /status?{ask} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            resp = conn.read_response("GET")
            assert (resp.status, resp.reason) == (int(line[:3]), line[4:]), resp.status_line
            assert resp.body == line.encode()
    finally:
        conn.sock.close()


def test_every_key_present_with_its_type(server):
    r = httpx.get(f"{server.url}/env?x=1", timeout=10)
    assert r.status_code == 200, r.text
    out = r.json()
    env, types = out["environ"], out["types"]
    missing = (CGI_KEYS | WSGI_KEYS) - set(types)
    assert not missing, f"environ lacks {sorted(missing)}; it has {sorted(types)}"
    assert out["key_types"] == ["str"]
    # CGI variables (no dot in the name) are native strings, per PEP 3333.
    not_str = {k: t for k, t in types.items() if "." not in k and t != "str"}
    assert not_str == {}, not_str
    assert types["wsgi.version"] == "tuple"
    assert env["wsgi.version"] == [1, 0]
    assert env["wsgi.url_scheme"] == "http"
    for key, value in [
        ("wsgi.multithread", True),
        ("wsgi.multiprocess", False),
        ("wsgi.run_once", False),
        ("wsgi.input_terminated", True),
    ]:
        assert types[key] == "bool", (key, types[key])
        assert env[key] is value, (key, env[key])
    assert out["input"] == ["__iter__", "read", "readline", "readlines"]
    assert out["errors"] == ["flush", "write", "writelines"]
    assert out["file_wrapper_callable"] is True
    assert env["REQUEST_METHOD"] == "GET"
    assert env["SCRIPT_NAME"] == ""
    assert env["PATH_INFO"] == "/env"
    assert env["QUERY_STRING"] == "x=1"
    assert env["SERVER_PORT"] == str(server.port)
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    # CGI's, as gunicorn, uWSGI and waitress set it (it was missing).
    assert re.fullmatch(r"rsasgi/\d+\.\d+\.\d+\S*", env["SERVER_SOFTWARE"])
    assert env["SERVER_NAME"] == "127.0.0.1"
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["REMOTE_PORT"].isdigit() and 0 < int(env["REMOTE_PORT"]) < 65536
    assert env["HTTP_HOST"] == f"127.0.0.1:{server.port}"
    assert "CONTENT_TYPE" not in env and "CONTENT_LENGTH" not in env, env
    # No placeholder of the base environ is left unset.
    assert "NoneType" not in types.values(), types
    assert out["body"] == ""


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PURGE"])
def test_request_method(server, method):
    body = b"payload-" + method.encode() if method in ("POST", "PUT", "PATCH") else b""
    out = env_raw(server, request(method, "/m", body=body))
    env = out["environ"]
    assert env["REQUEST_METHOD"] == method
    assert out["body"] == body.decode()
    if body:
        assert env["CONTENT_LENGTH"] == str(len(body))
    else:
        assert "CONTENT_LENGTH" not in env


def test_head_method_reaches_the_app_and_gets_no_body(server):
    conn = raw(server)
    conn.send(request("HEAD", "/env"))
    head = conn.read_response("HEAD")
    assert head.status == 200
    assert head.header("x-method") == "HEAD"
    cl = head.header("content-length")
    assert cl is not None and int(cl) > 100, head.headers
    assert head.header("transfer-encoding") is None
    # a leaked HEAD body would break the parse of the next response
    out = env_over(conn, request("GET", "/after-head"))
    assert out["environ"]["PATH_INFO"] == "/after-head"


@pytest.mark.parametrize(
    "target, path_info, query_string",
    [
        ("/", "/", ""),
        ("/caf%C3%A9/a%20b", "/caf\xc3\xa9/a b", ""),
        ("/a%2Fb/c", "/a/b/c", ""),
        ("/%7Euser/%25percent", "/~user/%percent", ""),
        ("/%E2%9C%93?x=%E2%9C%93", "/\xe2\x9c\x93", "x=%E2%9C%93"),
        ("/%ff%FE/bytes", "/\xff\xfe/bytes", ""),
        ("//double//slash", "//double//slash", ""),
        ("/x?a=1&b=%20", "/x", "a=1&b=%20"),
        ("/x?", "/x", ""),
        (
            "/search?q=caf%C3%A9&plus=a+b&empty=&flag&slash=%2F",
            "/search",
            "q=caf%C3%A9&plus=a+b&empty=&flag&slash=%2F",
        ),
        ("/x?a=1&a=2", "/x", "a=1&a=2"),
    ],
)
def test_path_info_and_query_string(server, target, path_info, query_string):
    env = env_raw(server, request("GET", target))["environ"]
    assert env["PATH_INFO"] == path_info
    assert env["QUERY_STRING"] == query_string
    assert env["SCRIPT_NAME"] == ""
    # PEP 3333: a latin-1 str, i.e. the decoded bytes one per code point.
    assert all(ord(c) < 256 for c in env["PATH_INFO"])


def test_utf8_path_via_httpx_is_latin1_str(server):
    r = httpx.get(f"{server.url}/caf\u00e9/\u2713?q=\u00e9", timeout=10)
    env = r.json()["environ"]
    assert env["PATH_INFO"] == "/caf\u00e9/\u2713".encode().decode("latin-1")
    assert env["PATH_INFO"] == "/caf\xc3\xa9/\xe2\x9c\x93"
    assert env["QUERY_STRING"] == "q=%C3%A9"


def test_content_type_and_length_only_when_sent(server):
    conn = raw(server)
    env = env_over(conn, request("GET", "/plain"))["environ"]
    assert "CONTENT_TYPE" not in env and "CONTENT_LENGTH" not in env

    out = env_over(
        conn,
        request(
            "POST", "/typed", headers=[("Content-Type", "text/plain; charset=utf-8")], body=b"abc"
        ),
    )
    env = out["environ"]
    assert env["CONTENT_TYPE"] == "text/plain; charset=utf-8"
    assert env["CONTENT_LENGTH"] == "3"
    assert out["body"] == "abc"
    # PEP 3333: these two are never duplicated as HTTP_ variables
    assert "HTTP_CONTENT_TYPE" not in env and "HTTP_CONTENT_LENGTH" not in env

    env = env_over(conn, request("POST", "/zero", headers=[("Content-Length", "0")]))["environ"]
    assert env["CONTENT_LENGTH"] == "0"
    # A body of known length is not "terminated": Werkzeug then reads within the length.
    assert "wsgi.input_terminated" not in env
    assert "CONTENT_TYPE" not in env

    env = env_over(conn, request("POST", "/type-only", headers=[("Content-Type", "a/b")]))[
        "environ"
    ]
    assert env["CONTENT_TYPE"] == "a/b"
    assert "CONTENT_LENGTH" not in env


def test_chunked_upload_has_no_content_length(server):
    conn = raw(server)
    data = (
        b"POST /chunked HTTP/1.1\r\nHost: testserver\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/octet-stream\r\n\r\n"
        + chunked([b"hello ", b"chunked ", b"world"])
    )
    out = env_over(conn, data)
    env = out["environ"]
    assert out["body"] == "hello chunked world"
    assert "CONTENT_LENGTH" not in env, env
    assert env["CONTENT_TYPE"] == "application/octet-stream"
    assert env["HTTP_TRANSFER_ENCODING"] == "chunked"
    assert env["wsgi.input_terminated"] is True


def test_headers_map_to_http_variables(server):
    data = (
        b"GET /h HTTP/1.1\r\n"
        b"Host: testserver\r\n"
        b"X-Custom-Header: Value Case\r\n"
        b"X-Dup: one\r\n"
        b"X-Other: o\r\n"
        b"X-Dup: two\r\n"
        b"x-dup: three\r\n"
        b"X-Latin: caf\xe9 \xff\r\n"
        b"X-Spaces:    padded value   \r\n"
        b"X_Forwarded_For: 6.6.6.6\r\n"
        b"X-Forwarded-For: 10.0.0.1\r\n"
        b"X_Only_Underscore: dropped\r\n"
        b"Content_Type: spoofed\r\n"
        b"accept: */*\r\n"
        b"\r\n"
    )
    env = env_raw(server, data)["environ"]
    http = {k: v for k, v in env.items() if k.startswith("HTTP_")}
    assert http == {
        "HTTP_HOST": "testserver",
        "HTTP_X_CUSTOM_HEADER": "Value Case",
        "HTTP_X_DUP": "one, two, three",
        "HTTP_X_OTHER": "o",
        "HTTP_X_LATIN": "caf\xe9 \xff",
        "HTTP_X_SPACES": "padded value",
        "HTTP_X_FORWARDED_FOR": "10.0.0.1",
        "HTTP_ACCEPT": "*/*",
    }
    assert "CONTENT_TYPE" not in env, "a header with '_' in its name spoofed CONTENT_TYPE"


def test_several_cookie_lines_are_joined_as_one_cookie_header(server):
    """Cookie pairs are separated by "; " (RFC 6265): joined with ", " as other headers are,
    Django's and Werkzeug's parsers would read the second pair into the first one's value."""
    data = b"GET /h HTTP/1.1\r\nHost: testserver\r\nCookie: a=1\r\nCookie: b=2; c=3\r\n\r\n"
    env = env_raw(server, data)["environ"]
    assert env["HTTP_COOKIE"] == "a=1; b=2; c=3"


def test_underscore_header_does_not_spoof_when_alone(server):
    data = (
        b"GET /h HTTP/1.1\r\nHost: testserver\r\nX_Forwarded_For: 6.6.6.6\r\n"
        b"Remote_Addr: 6.6.6.6\r\n\r\n"
    )
    env = env_raw(server, data)["environ"]
    assert "HTTP_X_FORWARDED_FOR" not in env
    assert "HTTP_REMOTE_ADDR" not in env
    assert env["REMOTE_ADDR"] == "127.0.0.1"


def test_root_path_is_script_name(run_rsasgi):
    server = run_rsasgi("--root-path", "/api", APP)
    env = env_raw(server, request("GET", "/items/caf%C3%A9?x=1"))["environ"]
    assert env["SCRIPT_NAME"] == "/api"
    assert env["PATH_INFO"] == "/items/caf\xc3\xa9"
    assert env["QUERY_STRING"] == "x=1"


def test_root_path_prefix_is_taken_out_of_path_info(run_rsasgi):
    """Behind a proxy that passes the prefix on, /api/x is the app's /x: SCRIPT_NAME +
    PATH_INFO is the whole path (PEP 3333). A path outside the prefix keeps its PATH_INFO."""
    server = run_rsasgi("--root-path", "/api", APP)
    targets = ["/api/x", "/api/", "/other", "/apiary"]
    environs = {target: env_raw(server, request("GET", target))["environ"] for target in targets}
    assert {target: env["PATH_INFO"] for target, env in environs.items()} == {
        "/api/x": "/x",
        "/api/": "/",
        "/other": "/other",
        "/apiary": "/apiary",
    }
    assert environs["/api/x"]["SCRIPT_NAME"] == "/api"


def test_root_path_from_env_var(run_rsasgi):
    server = run_rsasgi(APP, env={"RSASGI_ROOT_PATH": "/mounted"})
    env = httpx.get(f"{server.url}/a%20b", timeout=10).json()["environ"]
    assert env["SCRIPT_NAME"] == "/mounted"
    assert env["PATH_INFO"] == "/a b"


def test_remote_and_server_addresses_match_the_sockets(server):
    ports = []
    for _ in range(2):
        sock = server.connect()
        try:
            env = env_over(RawConn(sock), request("GET", "/addr"))["environ"]
            local_host, local_port = sock.getsockname()[:2]
        finally:
            sock.close()
        assert env["REMOTE_ADDR"] == local_host == "127.0.0.1"
        assert env["REMOTE_PORT"] == str(local_port)
        assert env["SERVER_PORT"] == str(server.port)
        ports.append(env["REMOTE_PORT"])
    assert ports[0] != ports[1]


def test_server_protocol_http_1_0(server):
    conn = raw(server)
    conn.send(request("GET", "/ten", version="HTTP/1.0", host=False))
    resp = conn.read_response()
    assert resp.status == 200
    env = json.loads(resp.body)["environ"]
    assert env["SERVER_PROTOCOL"] == "HTTP/1.0"
    assert "HTTP_HOST" not in env
    assert env["PATH_INFO"] == "/ten"


def test_server_protocol_http_1_1(server):
    env = env_raw(server, request("GET", "/eleven"))["environ"]
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"


def test_environ_is_fresh_on_a_keep_alive_connection(server):
    conn = raw(server)
    first = env_over(
        conn, request("POST", "/one?a=1", headers=[("X-First", "1")], body=b"first-body")
    )
    second = env_over(conn, request("GET", "/two?b=2", headers=[("X-Second", "2")]))
    assert first["environ"]["HTTP_X_FIRST"] == "1"
    assert first["body"] == "first-body"
    env = second["environ"]
    assert (env["PATH_INFO"], env["QUERY_STRING"]) == ("/two", "b=2")
    assert env["HTTP_X_SECOND"] == "2"
    assert "HTTP_X_FIRST" not in env
    assert "CONTENT_LENGTH" not in env
    assert second["body"] == ""
    assert env["REMOTE_PORT"] == first["environ"]["REMOTE_PORT"]


def test_changes_an_app_makes_to_its_environ_do_not_reach_later_requests(server):
    # Every environ starts as a copy of one the worker keeps: a change must
    # stay in the request that made it, on its connection and on others.
    before = env_raw(server, request("GET", "/before"))["environ"]
    conn = raw(server)
    conn.send(request("GET", "/scribble"))
    assert conn.read_response("GET").body == b"scribbled"
    again = env_over(conn, request("GET", "/after"))["environ"]
    other = env_raw(server, request("GET", "/after"))["environ"]
    for env in (again, other):
        assert env["SERVER_NAME"] == before["SERVER_NAME"] == "127.0.0.1"
        assert env["wsgi.url_scheme"] == "http"
        assert "app.note" not in env
        assert CGI_KEYS <= env.keys()


def test_wsgi_errors_lines_appear_in_the_log(server):
    r = httpx.get(f"{server.url}/errors", timeout=10)
    assert r.status_code == 200 and r.content == b"logged"
    wait_for_log(
        server,
        "wsgi-errors-line-one from the app",
        "wsgi-errors-line-two via writelines",
        "wsgi-errors-line-three from a generator",
    )


def test_server_protocol_over_http2_is_cgi_s_major_dot_minor(server):
    """RFC 3875 4.1.16: "HTTP/" digit "." digit, as nginx and Apache's mod_http2 pass it."""
    with httpx.Client(http1=False, http2=True, timeout=10) as client:
        env = client.get(f"{server.url}/env").json()["environ"]
    assert env["SERVER_PROTOCOL"] == "HTTP/2.0"


@pytest.fixture
def one_thread(run_rsasgi):
    """One pool thread: every request meets the callables the one before used."""
    return run_rsasgi(APP, "--threads", "1")


def test_a_partial_wsgi_errors_line_is_logged_when_its_request_ends(one_thread):
    server = one_thread
    r = httpx.get(f"{server.url}/errors-partial", timeout=10)
    assert r.status_code == 200 and r.content == b"logged"
    assert httpx.get(f"{server.url}/errors", timeout=10).status_code == 200
    log = wait_for_log(server, "wsgi-errors-partial-line", "wsgi-errors-line-one from the app")
    assert any(line.endswith("wsgi-errors-partial-line") for line in log.splitlines()), log


def test_each_complete_write_to_wsgi_errors_is_one_record(run_rsasgi):
    """A record ends with a write that leaves the text ending in a newline (print writes the
    newline on its own), inner newlines kept; text past 64 KiB without one is logged as it is,
    the rest on flush(), and what is unfinished at the end of the request then."""
    server = run_rsasgi(APP, "--log-format", "json", "--no-access-log")
    r = httpx.get(f"{server.url}/errors-records", timeout=10)
    assert r.status_code == 200 and r.content == b"logged"
    wait_for_log(server, "wsgi-errors-unended")
    records = [
        json.loads(line)
        for line in server.output().splitlines()
        if line.startswith("{") and '"wsgi.errors"' in line
    ]
    assert all(record["level"] == "ERROR" for record in records), records
    assert [record["message"] for record in records] == [
        "wsgi-errors-printed 42",
        "wsgi-errors-record first line\n  second line",
        "wsgi-errors-writelines one\nwsgi-errors-writelines two",
        "x" * 66_000,
        "x" * 34_000,
        "wsgi-errors-unended",
    ]


def test_text_written_to_wsgi_errors_between_requests_is_not_the_next_ones(one_thread, tmp_path):
    """An app's thread writes to a request's wsgi.errors after it ended, and lets it go: the pool
    thread reuses the stream, but the next request's records do not begin with that text."""
    server = one_thread
    go = tmp_path / "late-go"
    assert httpx.get(f"{server.url}/errors-late?{go}", timeout=10).text == "started"
    go.touch()
    wait_for(lambda: (tmp_path / "late-go.done").exists(), timeout=10)
    assert httpx.get(f"{server.url}/errors", timeout=10).status_code == 200
    log = wait_for_log(server, "wsgi-errors-late-partial", "wsgi-errors-line-one from the app")
    lines = log.splitlines()
    assert any(line.endswith(" wsgi-errors-late-partial") for line in lines), log
    assert any(line.endswith(" wsgi-errors-line-one from the app") for line in lines), log


def test_a_pool_thread_reuses_its_callables_and_starts_each_request_afresh(one_thread):
    server = one_thread
    first = httpx.get(f"{server.url}/ids", timeout=10).json()
    # start_response called, then the app raised: none of it may reach the next request.
    r = httpx.get(f"{server.url}/start-then-raise", timeout=10)
    assert r.status_code == 500 and "x-stale" not in r.headers
    r = httpx.get(f"{server.url}/framing/cl", timeout=10)
    assert r.status_code == 200 and r.content == b"hello world"
    assert "x-stale" not in r.headers
    assert httpx.get(f"{server.url}/ids", timeout=10).json() == first


def test_callables_kept_from_an_ended_request_raise_and_touch_no_other(one_thread):
    # The pool reuses start_response and write from request to request, but
    # not ones the app kept: those raise, and the request using them is whole.
    server = one_thread
    for _ in range(3):
        r = httpx.get(f"{server.url}/keep", timeout=10)
        assert r.status_code == 200 and r.content == b"kept"
        conn = raw(server)
        conn.send(request("GET", "/use-kept"))
        resp = conn.read_response()
        assert resp.status == 200, resp.status_line
        out = json.loads(resp.body)
        assert out == {
            "same": False,
            "write": "RuntimeError('write() called after its request ended')",
            "start_response": "RuntimeError('start_response() called after its request ended')",
        }
        assert b"leak" not in resp.body
    assert httpx.get(f"{server.url}/framing/cl", timeout=10).content == b"hello world"


def test_a_weak_reference_to_start_response_never_reaches_a_later_request(one_thread):
    """start_response is a bound method, and a method can be referred to weakly, which the
    reuse check (strong references only) missed: a weak reference kept by one request (a
    WeakKeyDictionary of per-request context, say) resolved to the next request's
    start_response and answered it. Now a weakly held one is not reused either: gunicorn
    makes one per request, whose weak references die with it."""
    server = one_thread
    for _ in range(3):
        r = httpx.get(f"{server.url}/keep-weak", timeout=10)
        assert r.status_code == 200 and r.content == b"kept"
        r = httpx.get(f"{server.url}/use-weak-kept", timeout=10)
        assert r.status_code == 200
        out = r.json()
        assert out["same"] is False, out
        assert out == {"alive": False, "same": False, "call": None} or out["call"] == (
            "RuntimeError('start_response() called after its request ended')"
        ), out
    assert httpx.get(f"{server.url}/framing/cl", timeout=10).content == b"hello world"


def test_access_log_line_for_a_wsgi_request(server):
    r = httpx.get(f"{server.url}/framing/cl", timeout=10)
    assert r.status_code == 200
    lines = wait_for(
        lambda: access_log(server.output(), "/framing/cl"), message="the access log line"
    )
    assert [(line["client"].split(":")[0], line["status"]) for line in lines] == [
        ("127.0.0.1", "200")
    ], server.output()


# --- wsgi.input ------------------------------------------------------------------------------

BODY = (
    b"first line\nsecond\n\ncrlf line\r\n"
    + b"x" * 300
    + b"\n"
    + b"".join(b"line %d\n" % i for i in range(40))
    + b"tail without newline"
)

OP_CASES = [
    ("read_n", 7),
    ("read_n", 1),
    ("read_n", 4096),
    ("read", 0),
    ("read_neg", 0),
    ("read_none", 0),
    ("readline", 0),
    ("readline_limit", 5),
    ("readline_limit", 1),
    ("readlines", 0),
    ("readlines_hint", 20),
    ("iter", 0),
    ("mixed", 0),
    ("read_cl", len(BODY)),
]


def expected_parts(op: str, n: int, body: bytes) -> list[bytes]:
    return apply_op(io.BytesIO(body), op, n)


def summary(parts: list[bytes]) -> dict:
    return {
        "lengths": [len(p) for p in parts],
        "sha256": hashlib.sha256(b"".join(parts)).hexdigest(),
        "types": ["bytes"] if parts else [],
        "error": None,
    }


def check_op(out: dict, op: str, n: int, body: bytes) -> None:
    # PEP 3333 lets a server ignore readlines()'s hint; rsasgi honours it as io does.
    assert out == summary(expected_parts(op, n, body))


def send_in_pieces(conn: RawConn, head: bytes, body: bytes, use_chunked: bool) -> None:
    """Send the body in odd-sized pieces with pauses, so reads straddle network packets."""
    cuts = [0, 1, 4, 11, 12, 30, 31, 200, 333, 334, 400, len(body)]
    pieces = [body[a:b] for a, b in itertools.pairwise(cuts) if body[a:b]]
    assert b"".join(pieces) == body
    conn.send(head)
    for piece in pieces:
        time.sleep(0.02)
        conn.send(b"%x\r\n%s\r\n" % (len(piece), piece) if use_chunked else piece)
    if use_chunked:
        conn.send(b"0\r\n\r\n")


def input_via(server, transport: str, op: str, n: int, body: bytes) -> dict:
    target = f"/input?op={op}&n={n}"
    if transport == "httpx":
        r = httpx.post(f"{server.url}{target}", content=body, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()
    conn = raw(server)
    if transport == "raw-length":
        head = request("POST", target, headers=[("Content-Length", str(len(body)))])
    else:
        head = request("POST", target, headers=[("Transfer-Encoding", "chunked")])
    send_in_pieces(conn, head, body, use_chunked=transport == "raw-chunked")
    resp = conn.read_response()
    assert resp.status == 200, (resp.status_line, resp.body)
    # the connection stays usable: the server consumed exactly this body
    conn.send(request("GET", "/framing/cl"))
    assert conn.read_response().body == b"hello world"
    conn.sock.close()
    return json.loads(resp.body)


@pytest.mark.parametrize("transport", ["httpx", "raw-length", "raw-chunked"])
@pytest.mark.parametrize("op, n", OP_CASES, ids=[f"{op}-{n}" for op, n in OP_CASES])
def test_input_method(server, transport, op, n):
    out = input_via(server, transport, op, n, BODY)
    check_op(out, op, n, BODY)


NO_BODY_CASES = [(op, n) for op, n in OP_CASES if op != "read_cl"]


@pytest.mark.parametrize("op, n", NO_BODY_CASES, ids=[f"{op}-{n}" for op, n in NO_BODY_CASES])
@pytest.mark.parametrize("how", ["get", "empty-chunked", "length-0"])
def test_input_without_body_returns_eof_at_once(server, how, op, n):
    """A request without a body reads EOF at once, whichever input it gets (one shared by
    the requests known to have none when the app starts, or its own)."""
    target = f"/input?op={op}&n={n}"
    if how == "get":
        data = request("GET", target)
    elif how == "empty-chunked":
        data = request("POST", target, headers=[("Transfer-Encoding", "chunked")]) + b"0\r\n\r\n"
    else:
        data = request("POST", target, headers=[("Content-Length", "0")])
    conn = raw(server)
    conn.send(data)
    # A read that blocked would leave the response out past the connection's 10 s timeout.
    resp = conn.read_response()
    assert resp.status == 200
    check_op(json.loads(resp.body), op, n, b"")


def random_lines(seed: int, size: int) -> bytes:
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += rng.randbytes(rng.choice([0, 1, 10, 80, 500, 5000])).replace(b"\n", b"") + b"\n"
    return bytes(out[:size])


@pytest.mark.parametrize(
    "op, n",
    [("readline", 0), ("readline_limit", 100), ("read_n", 65536), ("read_n", 1000), ("iter", 0)],
)
def test_input_methods_on_a_1mb_chunked_upload(server, op, n):
    body = random_lines(7, 1 << 20)

    def gen():
        for i in range(0, len(body), 8191):
            yield body[i : i + 8191]

    r = httpx.post(f"{server.url}/input?op={op}&n={n}", content=gen(), timeout=30)
    assert r.status_code == 200, r.text
    check_op(r.json(), op, n, body)


def test_read_content_length_returns_the_whole_body_sent_slowly(server):
    """`read(int(CONTENT_LENGTH))` (what most apps do) gets every byte, not the first packet."""
    body = bytes(range(256)) * 40
    conn = raw(server)
    conn.send(
        request(
            "POST", f"/input?op=read_cl&n={len(body)}", headers=[("Content-Length", str(len(body)))]
        )
    )
    for i in range(0, len(body), 2000):
        time.sleep(0.1)
        conn.send(body[i : i + 2000])
    resp = conn.read_response()
    out = json.loads(resp.body)
    assert out["lengths"] == [len(body), 0]
    assert out["sha256"] == hashlib.sha256(body).hexdigest()


def test_pipelined_request_behind_a_body_is_not_read_as_body(server):
    conn = raw(server)
    conn.send(
        request("POST", "/first", body=b"exactly this")
        + request("POST", "/second", headers=[("Transfer-Encoding", "chunked")])
        + chunked([b"chunked ", b"body"])
        + request("GET", "/third")
    )
    first = json.loads(conn.read_response().body)
    second = json.loads(conn.read_response().body)
    third = json.loads(conn.read_response().body)
    assert (first["environ"]["PATH_INFO"], first["body"]) == ("/first", "exactly this")
    assert (second["environ"]["PATH_INFO"], second["body"]) == ("/second", "chunked body")
    assert (third["environ"]["PATH_INFO"], third["body"]) == ("/third", "")


@pytest.mark.parametrize("use_chunked", [False, True])
def test_unread_body_is_discarded_before_the_next_request(server, use_chunked):
    """The app ignores a 100 KB body: the server drains it and answers the pipelined request,
    or says "Connection: close" and closes. Repeated, since the outcome can depend on timing."""
    body = b"z" * 100_000
    if use_chunked:
        data = request("POST", "/ignore-body", headers=[("Transfer-Encoding", "chunked")])
        data += chunked([body[:50_000], body[50_000:]])
    else:
        data = request("POST", "/ignore-body", body=body)
    outcomes = []
    for _ in range(30):
        conn = raw(server)
        conn.send(data + request("GET", "/next"))
        first = conn.read_response()
        assert first.status == 200 and first.body == b"ignored"
        announced_close = (first.header("connection") or "").lower() == "close"
        try:
            second = conn.read_response()
            outcome = ("answered", json.loads(second.body)["environ"]["PATH_INFO"])
        except Closed:
            outcome = ("closed", "announced" if announced_close else "without Connection: close")
        conn.sock.close()
        outcomes.append(outcome)
    bad = [o for o in outcomes if o not in (("answered", "/next"), ("closed", "announced"))]
    assert bad == [], f"{len(bad)} of 30 connections: {sorted(set(bad))}"


def test_waiting_for_body_data_does_not_block_other_requests(run_rsasgi, tmp_path):
    """An app blocked in wsgi.input.read() on a slow upload leaves the GIL to the others."""
    markers = tmp_path
    server = run_rsasgi("--threads", "2", APP, env={"WSGI_MARKER_DIR": str(markers)})
    slow = raw(server)
    slow.send(
        request("POST", "/sha256?chunk=5&tag=slow", headers=[("Content-Length", "10")]) + b"12345"
    )
    progress = markers / "slow.progress"
    wait_for(lambda: progress.exists() and progress.read_text() == "5", message="5 bytes read")
    # The app now waits in read() for the other 5 bytes; the other thread serves.
    with httpx.Client(base_url=server.url, timeout=5) as client:
        for _ in range(10):
            assert client.get("/framing/cl").content == b"hello world"
    slow.send(b"67890")
    out = json.loads(slow.read_response().body)
    assert out["size"] == 10
    assert out["sha256"] == hashlib.sha256(b"1234567890").hexdigest()
