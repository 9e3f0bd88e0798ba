"""Files an app asks the server to send: the ASGI http.response.pathsend and
http.response.zerocopysend extensions (by hand, and through Starlette's FileResponse), and WSGI's
wsgi.file_wrapper; each delivers the file's bytes under the app's own status and headers.

Apps: tests/apps/file_send.py (pathsend and zerocopy messages, and what send() raised),
file_starlette.py (FileResponse, with the message types it sent), wsgi_stream.py (/file:
wsgi.file_wrapper; its finer points are in tests/test_wsgi_streaming.py).
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from apps.proto_raw import RawConn, Response, recv_until_closed, request
from conftest import wait_for_log

APP = "file_send:app"
MiB = 1 << 20
DATA = bytes(range(256)) * 40  # 10240 bytes, every offset within 256 distinct


@pytest.fixture
def server(run_rsasgi):
    return run_rsasgi(APP)


@pytest.fixture
def data_file(tmp_path) -> Path:
    path = tmp_path / "data.bin"
    path.write_bytes(DATA)
    return path


@pytest.fixture
def big_file(tmp_path) -> tuple[Path, bytes]:
    path = tmp_path / "big.bin"
    data = random.Random(20).randbytes(20 * MiB)
    path.write_bytes(data)
    return path, data


def target(route: str, **params) -> str:
    return f"{route}?{urlencode({k: str(v) for k, v in params.items()})}"


def get(server, route: str, headers: list[tuple[str, str]] | None = None, **params) -> Response:
    """GET route?params on a connection that must stay usable afterwards."""
    conn = RawConn(server.connect(), timeout=30)
    conn.send(request("GET", target(route, **params), headers))
    resp = conn.read_response()
    conn.send(request("GET", "/"))
    after = conn.read_response()
    assert (after.status, after.body) == (200, b"ok"), "the connection is out of step"
    conn.sock.close()
    return resp


def observed(server) -> dict[str, str]:
    return httpx.get(f"{server.url}/observed", timeout=10).json()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the scope -------------------------------------------------------------------------------


def test_http_scope_advertises_pathsend_and_zerocopy(server):
    extensions = httpx.get(f"{server.url}/extensions", timeout=10).json()
    assert extensions["http.response.pathsend"] == {}
    assert extensions["http.response.zerocopysend"] == {}


# --- http.response.pathsend ------------------------------------------------------------------


def test_pathsend_sends_the_file_with_the_apps_head(server, data_file):
    resp = get(server, "/pathsend", path=data_file, tag="whole")
    assert resp.status == 200
    assert resp.header("x-app") == "file_send"
    assert resp.header("content-type") == "application/octet-stream"
    assert resp.header("content-length") == str(len(DATA))
    assert resp.body == DATA
    assert observed(server)["whole"] == "NO-EXCEPTION"


def test_pathsend_keeps_the_apps_status(server, tmp_path):
    page = tmp_path / "404.html"
    page.write_bytes(b"<h1>custom not found page</h1>\n")
    resp = get(server, "/pathsend", path=page, status=404)
    assert resp.status == 404
    assert resp.body == b"<h1>custom not found page</h1>\n"


def test_pathsend_head_sends_no_body(server, data_file):
    conn = RawConn(server.connect())
    conn.send(request("HEAD", target("/pathsend", path=data_file, tag="head")))
    resp = conn.read_response("HEAD")
    assert resp.status == 200
    assert resp.header("content-length") == str(len(DATA))
    conn.send(request("GET", "/"))
    assert conn.read_response().body == b"ok"
    conn.sock.close()


@pytest.mark.parametrize("case", ["relative", "missing"])
def test_pathsend_of_a_file_it_cannot_send_raises_in_the_app(server, tmp_path, case):
    """send() raises; the app lets the exception escape, and the client never gets a complete
    response (the head was already sent: the connection is cut short)."""
    path = "data.bin" if case == "relative" else str(tmp_path / "missing.bin")
    (tmp_path / "data.bin").write_bytes(DATA)
    sock = server.connect()
    headers = [("Connection", "close")]
    sock.sendall(request("GET", target("/pathsend", path=path, length=5, tag=case), headers))
    received = recv_until_closed(sock, timeout=10)
    sock.close()
    head, _, body = received.partition(b"\r\n\r\n")
    assert not (head.startswith(b"HTTP/1.1 200") and len(body) >= 5), received[:300]
    outcome = observed(server)[case]
    assert outcome != "NO-EXCEPTION", "send() accepted a file it could not send"
    wait_for_log(server, "Exception in ASGI application")
    assert httpx.get(f"{server.url}/", timeout=10).text == "ok"


# --- http.response.zerocopysend ------------------------------------------------------------------


def test_zerocopy_sends_the_whole_file(server, data_file):
    resp = get(server, "/zerocopy", path=data_file, length=len(DATA), tag="zc")
    assert resp.status == 200
    assert resp.header("content-length") == str(len(DATA))
    assert resp.body == DATA
    assert observed(server)["zc"] == "NO-EXCEPTION"


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"offset": 1000, "count": 300}, DATA[1000:1300]),
        ({"offset": 1000}, DATA[1000:]),
        ({"count": 300}, DATA[:300]),
        ({"seek": 100}, DATA[100:]),
        ({"seek": 100, "count": 50}, DATA[100:150]),
    ],
    ids=[
        "offset-and-count",
        "offset-to-eof",
        "count-from-start",
        "from-position",
        "position-and-count",
    ],
)
def test_zerocopy_sends_a_region(server, data_file, params, expected):
    """No offset: from the file's current position; no count: to the end of the file."""
    resp = get(server, "/zerocopy", path=data_file, length=len(expected), **params)
    assert resp.status == 200
    assert resp.header("content-length") == str(len(expected))
    assert resp.body == expected


def test_zerocopy_between_body_messages(server, data_file):
    resp = get(server, "/zerocopy", path=data_file, offset=2000, count=1000, wrap=1)
    assert resp.status == 200
    assert resp.body == b"head-" + DATA[2000:3000] + b"-tail"


def test_zerocopy_between_body_messages_with_a_content_length(server, data_file):
    length = len(b"head-") + 1000 + len(b"-tail")
    resp = get(server, "/zerocopy", path=data_file, offset=2000, count=1000, wrap=1, length=length)
    assert resp.header("content-length") == str(length)
    assert resp.header("transfer-encoding") is None
    assert resp.body == b"head-" + DATA[2000:3000] + b"-tail"


# --- Starlette's FileResponse ----------------------------------------------------------------


@pytest.fixture
def starlette_server(run_rsasgi):
    return run_rsasgi("file_starlette:app")


def sent_types(server) -> dict[str, list[str]]:
    return httpx.get(f"{server.url}/sent", timeout=10).json()


def test_starlette_file_response_goes_through_pathsend(starlette_server, big_file):
    path, data = big_file
    with httpx.Client(base_url=starlette_server.url, timeout=30) as client:
        r = client.get("/file", params={"path": str(path)}, headers={"X-Tag": "whole"})
    assert r.status_code == 200
    assert r.headers["content-length"] == str(len(data))
    assert r.headers["etag"] and r.headers["last-modified"]
    assert sha(r.content) == sha(data)
    assert sent_types(starlette_server)["whole"] == [
        "http.response.start",
        "http.response.pathsend",
    ]


def test_starlette_file_response_ranges(starlette_server, data_file):
    headers = {"Range": "bytes=100-199", "X-Tag": "range"}
    r = httpx.get(f"{starlette_server.url}/file", params={"path": str(data_file)}, headers=headers)
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes 100-199/{len(DATA)}"
    assert r.content == DATA[100:200]


def test_starlette_file_response_head(starlette_server, data_file):
    conn = RawConn(starlette_server.connect())
    conn.send(request("HEAD", target("/file", path=data_file)))
    resp = conn.read_response("HEAD")
    assert resp.status == 200
    assert resp.header("content-length") == str(len(DATA))
    conn.sock.close()


# --- wsgi.file_wrapper -----------------------------------------------------------------------


@pytest.fixture
def wsgi_server(run_rsasgi):
    return run_rsasgi("wsgi_stream:app")


def test_file_wrapper_sends_the_file_with_the_apps_headers(wsgi_server, data_file):
    resp = wsgi_server_get(wsgi_server, path=data_file, cl=1)
    assert resp.status == 200
    assert resp.header("content-type") == "application/octet-stream"
    assert resp.header("content-length") == str(len(DATA))
    assert resp.body == DATA


def test_file_wrapper_stops_at_a_shorter_content_length(wsgi_server, data_file):
    resp = wsgi_server_get(wsgi_server, path=data_file, cl=1000)
    assert resp.header("content-length") == "1000"
    assert resp.body == DATA[:1000]


def test_file_wrapper_starts_at_the_file_position(wsgi_server, data_file):
    resp = wsgi_server_get(wsgi_server, path=data_file, cl=1, seek=100)
    assert resp.header("content-length") == str(len(DATA) - 100)
    assert resp.body == DATA[100:]


def wsgi_server_get(server, **params) -> Response:
    conn = RawConn(server.connect(), timeout=30)
    conn.send(request("GET", target("/file", **params)))
    resp = conn.read_response()
    conn.send(request("GET", "/"))
    assert conn.read_response().body == b"ok", "the connection is out of step"
    conn.sock.close()
    return resp


# --- a large file through each path ----------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["pathsend", "zerocopy", "file_wrapper"])
def test_a_20_mib_file_arrives_byte_identical(run_rsasgi, big_file, kind):
    path, data = big_file
    if kind == "file_wrapper":
        server = run_rsasgi("wsgi_stream:app")
        resp = wsgi_server_get(server, path=path, cl=1)
    else:
        server = run_rsasgi(APP)
        resp = get(server, f"/{kind}", path=path, length=len(data))
    assert resp.status == 200
    assert resp.header("content-length") == str(len(data))
    assert len(resp.body) == len(data)
    assert sha(resp.body) == sha(data)
