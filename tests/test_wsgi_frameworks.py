"""Real WSGI frameworks run unchanged on rsasgi: Flask, Django's WSGI handler, the Flask example.

Nothing is passed to rsasgi but the application: `--interface auto` must recognise a Flask app
and Django's `WSGIHandler` as WSGI. What ASGI and WSGI frameworks must do alike (JSON bodies,
streaming, uploads, the Django pages, admin login and root path) is tested once for both in
tests/test_frameworks.py; this file holds what is particular to Flask and to Django's WSGI
handler (the admin walk runs under both handlers).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import wait_for, wait_for_log
from django_support import DJANGO_ENV, admin_walk, build_django_project

pytest.importorskip("flask")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# What tests/apps/wsgifw_flask.py streams from /stream.
STREAM_CHUNKS = 8
STREAM_CHUNK = b"0123456789abcdef" * 64


def served_as_wsgi(server) -> bool:
    """The startup line names the interface ("interface wsgi")."""
    return re.search(r"interface wsgi\b", server.output()) is not None


# --------------------------------------------------------------------------- Flask


@pytest.fixture
def flask_server(run_rsasgi, tmp_path):
    return run_rsasgi("wsgifw_flask:app", env={"WSGIFW_DOWNLOAD_DIR": str(tmp_path)})


def test_flask_app_is_detected_as_wsgi(flask_server):
    response = httpx.get(f"{flask_server.url}/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["content-length"] == "16"
    assert response.text == "Hello from Flask"
    assert served_as_wsgi(flask_server), flask_server.output()


def test_flask_route_with_converter_and_query(flask_server):
    response = httpx.get(
        f"{flask_server.url}/items/42",
        params=[("q", "a b"), ("q", "é"), ("q", "x&y=z")],
        headers={"user-agent": "wsgifw-test/1.0"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "item_id": 42,
        "q": ["a b", "é", "x&y=z"],
        "user_agent": "wsgifw-test/1.0",
        "script_root": "",
        "path": "/items/42",
        "url": "/items/42",
    }


def test_flask_non_ascii_path(flask_server):
    """PATH_INFO is latin-1 decoded bytes (PEP 3333); Werkzeug turns it back into UTF-8."""
    response = httpx.get(f"{flask_server.url}/greet/caf%C3%A9%20cr%C3%A8me")
    assert response.status_code == 200
    assert response.text == "Hello, café crème!"


def test_flask_unknown_route_is_404(flask_server):
    response = httpx.get(f"{flask_server.url}/no/such/page")
    assert response.status_code == 404
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "<h1>Not Found</h1>" in response.text
    # The converter rejects a non-number: also a 404, from the router.
    assert httpx.get(f"{flask_server.url}/items/forty-two").status_code == 404


def test_flask_abort_status(flask_server):
    response = httpx.get(f"{flask_server.url}/teapot")
    assert response.status_code == 418
    assert response.reason_phrase == "I'M A TEAPOT"


def test_flask_wrong_method_is_405(flask_server):
    response = httpx.get(f"{flask_server.url}/echo")
    assert response.status_code == 405
    assert sorted(response.headers["allow"].split(", ")) == ["OPTIONS", "POST"]


def test_flask_bad_json_is_400(flask_server):
    response = httpx.post(
        f"{flask_server.url}/echo",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400


def test_flask_chunked_request_body(flask_server):
    """No Content-Length: Werkzeug reads to the end because wsgi.input_terminated is set."""
    pieces = [os.urandom(size) for size in (1, 1000, 65536, 300_000, 7)]

    def body():
        yield from pieces

    response = httpx.post(f"{flask_server.url}/digest", content=body(), timeout=30)
    assert response.status_code == 200
    data = b"".join(pieces)
    assert response.json() == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_flask_streaming_response_reads_the_request(flask_server):
    """stream_with_context keeps `request` alive while the server iterates the response."""
    response = httpx.get(f"{flask_server.url}/stream", params={"count": 3})
    assert response.status_code == 200
    assert response.content == b"".join(b"%d:" % n + STREAM_CHUNK + b"\n" for n in range(3))


def download_content(size: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size]


@pytest.mark.parametrize("size", [0, 5000, 20 * 1024 * 1024 + 3])
def test_flask_send_file(flask_server, size):
    """send_file goes through wsgi.file_wrapper; the whole file arrives, with its length."""
    expected = download_content(size)
    response = httpx.get(f"{flask_server.url}/download/{size}", timeout=60)
    assert response.status_code == 200
    assert response.headers["content-length"] == str(size)
    assert response.headers["content-type"] == "application/octet-stream"
    assert len(response.content) == size
    assert hashlib.sha256(response.content).digest() == hashlib.sha256(expected).digest()


def test_flask_send_file_range_and_etag(flask_server):
    size = 1024 * 1024
    expected = download_content(size)
    url = f"{flask_server.url}/download/{size}"
    with httpx.Client() as client:
        first = client.get(url)
        assert first.status_code == 200
        etag = first.headers["etag"]

        part = client.get(url, headers={"range": "bytes=1000-200999"})
        assert part.status_code == 206
        assert part.headers["content-range"] == f"bytes 1000-200999/{size}"
        assert part.headers["content-length"] == "200000"
        assert part.content == expected[1000:201000]

        tail = client.get(url, headers={"range": "bytes=-10"})
        assert tail.status_code == 206
        assert tail.content == expected[-10:]

        cached = client.get(url, headers={"if-none-match": etag})
        assert cached.status_code == 304
        assert cached.content == b""

        # The connection is still usable after each of those.
        assert client.get(url).content == expected


def test_flask_session_cookie_and_redirect(flask_server):
    with httpx.Client(base_url=flask_server.url, follow_redirects=False) as client:
        login = client.get("/login", params={"user": "zoë"})
        assert login.status_code == 302
        assert login.headers["location"] == "/whoami"
        assert "session" in client.cookies
        assert client.get("/whoami").json() == {"user": "zoë"}


def test_flask_head_request(flask_server):
    response = httpx.head(f"{flask_server.url}/")
    assert response.status_code == 200
    assert response.headers["content-length"] == "16"
    assert response.content == b""


def test_flask_upload_the_client_abandons_is_no_logged_error(flask_server):
    """A client that leaves mid-upload (a phone losing signal): with a Content-Length the
    server does not say wsgi.input_terminated, so Werkzeug reads within the length and turns
    the short body into its own quiet 400, as under gunicorn. It used to read the raw input,
    whose OSError made Flask log an ERROR with a traceback for every such client."""
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    length = len(head) + 5_000_000
    with flask_server.connect() as sock:
        sock.sendall(
            b"POST /upload HTTP/1.1\r\nHost: x\r\n"
            + f"Content-Type: multipart/form-data; boundary={boundary}\r\n".encode()
            + f"Content-Length: {length}\r\n\r\n".encode()
            + head
            + b"x" * 1_000_000
        )
    wait_for(
        lambda: "POST /upload" in flask_server.output(),
        server=flask_server,
        message="the upload's access line",
    )
    assert httpx.get(f"{flask_server.url}/items/1").status_code == 200
    log = flask_server.output()
    assert "Traceback" not in log, log
    assert "Exception on /upload" not in log, log


def test_flask_exception_is_500_and_logged(flask_server):
    """Flask answers 500 itself and logs the traceback to wsgi.errors; the server lives on."""
    response = httpx.get(f"{flask_server.url}/boom")
    assert response.status_code == 500
    assert "Internal Server Error" in response.text
    assert httpx.get(f"{flask_server.url}/items/1").status_code == 200
    log = flask_server.output()
    assert "wsgifw_flask boom" in log
    assert "Traceback" in log


def test_flask_log_records_are_one_json_record_each(run_rsasgi):
    """Flask's default handler writes each record, traceback and all, to wsgi.errors in one
    write: each is one JSON record, as is a print() to the stream (its text, then "\n")."""
    server = run_rsasgi("wsgifw_flask:app", "--log-format", "json", "--no-access-log")
    assert httpx.get(f"{server.url}/log-exception").text == "logged"
    assert httpx.get(f"{server.url}/boom").status_code == 500
    wait_for_log(server, "wsgifw_flask boom")
    records = [
        json.loads(line)
        for line in server.output().splitlines()
        if line.startswith("{") and '"wsgi.errors"' in line
    ]
    assert len(records) == 3, records
    printed, logged, boom = (record["message"] for record in records)
    assert printed == "wsgifw_flask printed"
    assert "wsgifw_flask logged\nTraceback (most recent call last):\n" in logged, logged
    assert logged.endswith("ZeroDivisionError: wsgifw_flask caught"), logged
    assert "Exception on /boom [GET]\nTraceback (most recent call last):\n" in boom, boom
    assert boom.endswith("RuntimeError: wsgifw_flask boom"), boom
    assert all(record["level"] == "ERROR" for record in records), records


def test_flask_propagated_exception_is_500_from_the_server(run_rsasgi):
    """With PROPAGATE_EXCEPTIONS the error leaves the WSGI app: rsasgi answers and logs it."""
    server = run_rsasgi("wsgifw_flask:strict_app")
    response = httpx.get(f"{server.url}/boom")
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == "Internal Server Error"
    assert httpx.get(f"{server.url}/").text == "strict"
    log = server.output()
    assert "Exception in WSGI application" in log
    assert "GET /boom" in log
    assert "ValueError: wsgifw_flask strict boom" in log


def test_flask_keep_alive_many_requests(flask_server):
    with httpx.Client(base_url=flask_server.url) as client:
        for number in range(50):
            response = client.get(f"/items/{number}")
            assert response.status_code == 200
            assert response.json()["item_id"] == number


def test_flask_under_root_path(run_rsasgi):
    """--root-path is for a proxy that strips the prefix: SCRIPT_NAME has it, url_for uses it."""
    server = run_rsasgi("wsgifw_flask:app", "--root-path", "/api")
    response = httpx.get(f"{server.url}/items/5")
    assert response.status_code == 200
    body = response.json()
    assert body["item_id"] == 5
    assert body["script_root"] == "/api"
    assert body["path"] == "/items/5"
    assert body["url"] == "/api/items/5"


def test_flask_forced_interface(run_rsasgi):
    server = run_rsasgi("wsgifw_flask:app", "--interface", "wsgi")
    assert httpx.get(f"{server.url}/").text == "Hello from Flask"


# --------------------------------------------------------------------------- Django


@pytest.fixture(scope="session")
def django_project(tmp_path_factory) -> Path:
    return build_django_project(tmp_path_factory)


@pytest.fixture
def django_wsgi(run_rsasgi, django_project):
    return run_rsasgi("mysite.wsgi:application", "--app-dir", str(django_project), env=DJANGO_ENV)


def test_django_admin_walk_under_wsgi(django_wsgi):
    admin_walk(django_wsgi.url)
    assert served_as_wsgi(django_wsgi), django_wsgi.output()


def test_django_admin_walk_under_asgi(run_rsasgi, django_project):
    server = run_rsasgi("mysite.asgi:application", "--app-dir", str(django_project), env=DJANGO_ENV)
    admin_walk(server.url)
    assert not served_as_wsgi(server)


def test_django_wsgi_settings_module_from_wsgi_py(run_rsasgi, django_project):
    """The generated wsgi.py sets DJANGO_SETTINGS_MODULE itself; no environment is needed."""
    if "DJANGO_SETTINGS_MODULE" in os.environ:
        pytest.skip("DJANGO_SETTINGS_MODULE is set in the environment of the tests")
    server = run_rsasgi("mysite.wsgi:application", "--app-dir", str(django_project))
    admin_walk(server.url)


def test_django_wsgi_concurrent_requests(django_wsgi):
    """Pages hitting sqlite from several pool threads at once all come back right."""

    def fetch(number: int) -> tuple[int, str]:
        path = "/hello/" if number % 2 else "/admin/login/"
        response = httpx.get(f"{django_wsgi.url}{path}", timeout=30)
        return response.status_code, response.text

    with ThreadPoolExecutor(max_workers=24) as pool:
        answers = list(pool.map(fetch, range(48)))
    for number, (status, text) in enumerate(answers):
        assert status == 200
        if number % 2:
            assert "users: admin, alice" in text
        else:
            assert "csrfmiddlewaretoken" in text


# --------------------------------------------------------------------------- examples/


def test_example_flask_app(run_rsasgi):
    server = run_rsasgi("flask_app:app", "--app-dir", str(EXAMPLES))
    with httpx.Client(base_url=server.url) as client:
        index = client.get("/")
        assert index.status_code == 200
        assert index.json()["hello"] == "world"
        assert index.json()["multithread"] is True

        stream = client.get("/stream", params={"count": 3, "delay": 0})
        assert stream.text == "line 0\nline 1\nline 2\n"

        assert "multipart/form-data" in client.get("/upload").text
        upload = client.post("/upload", files={"upload": ("notes.txt", b"some notes\n")})
        assert upload.status_code == 200
        assert json.loads(upload.text) == {
            "filename": "notes.txt",
            "size": 11,
            "sha256": hashlib.sha256(b"some notes\n").hexdigest(),
        }
