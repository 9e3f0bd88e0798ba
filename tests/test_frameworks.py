"""Real frameworks run unchanged on rsasgi: Starlette, Flask and Django (through both its ASGI
and its WSGI handler), and the examples.

What ASGI and WSGI apps must do alike is tested once, parametrized over both: Starlette and
Flask serve the same /echo, /stream and /upload routes (tests/apps/fw_starlette.py and
tests/apps/wsgifw_flask.py), and the Django project is served through each handler.
Flask-only behaviour is in tests/test_wsgi_frameworks.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import httpx
import pytest
from apps.proto_raw import wait_for_file
from django_support import ADMIN_PASSWORD, DJANGO_ENV, build_django_project

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


# --------------------------------------------------------------------------- Starlette and Flask

# What tests/apps/fw_starlette.py and tests/apps/wsgifw_flask.py stream from /stream.
STREAM_CHUNKS = 8
STREAM_CHUNK = b"0123456789abcdef" * 64


@pytest.fixture(params=["fw_starlette:app", "wsgifw_flask:app"], ids=["starlette", "flask"])
def framework_url(request, run_rsasgi) -> str:
    return run_rsasgi(request.param).url


def test_json_body_in_and_out(framework_url):
    payload = {"name": "rsasgi", "tags": ["asgi", "wsgi", "rust"], "n": 3, "ünï": "cødé"}
    response = httpx.post(f"{framework_url}/echo", json=payload)
    assert response.status_code == 201
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"received": payload}


def test_streaming_response(framework_url):
    expected = b"".join(b"%d:" % number + STREAM_CHUNK + b"\n" for number in range(STREAM_CHUNKS))
    with httpx.stream("GET", f"{framework_url}/stream", timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/octet-stream"
        assert response.headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in response.headers
        pieces = list(response.iter_raw())
    assert b"".join(pieces) == expected
    # The app pauses between chunks, so a streaming server delivers them in several reads.
    assert len(pieces) > 1, "the response arrived in one piece; it was buffered, not streamed"


@pytest.mark.parametrize("size", [0, 1, 300_000, 5 * 1024 * 1024])
def test_multipart_file_upload(framework_url, size):
    data = os.urandom(size)
    response = httpx.post(
        f"{framework_url}/upload",
        files={"file": ("report ü.bin", data, "application/x-test")},
        data={"note": "first upload ü"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "name": "report ü.bin",
        "content_type": "application/x-test",
        "size": size,
        "sha256": hashlib.sha256(data).hexdigest(),
        "note": "first upload ü",
    }


# --------------------------------------------------------------------------- Starlette


@pytest.fixture
def starlette_url(run_rsasgi) -> str:
    return run_rsasgi("fw_starlette:app").url


def test_starlette_json_route(starlette_url):
    response = httpx.get(
        f"{starlette_url}/items/42",
        params=[("q", "a b"), ("q", "é")],
        headers={"user-agent": "fw-test/1.0"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "item_id": 42,
        "q": ["a b", "é"],
        "greeting": "hello from lifespan",
        "user_agent": "fw-test/1.0",
    }


def test_starlette_unknown_route_is_404(starlette_url):
    response = httpx.get(f"{starlette_url}/items/not-a-number")
    assert response.status_code == 404
    assert response.text == "Not Found"


def test_starlette_urlencoded_form(starlette_url):
    response = httpx.post(f"{starlette_url}/login", data={"user": "ann & bob", "remember": "yes"})
    assert response.status_code == 200
    assert response.text == "user=ann & bob remember=yes"


def test_starlette_under_root_path(run_rsasgi):
    """--root-path is for a proxy that strips the prefix: /items/5 arrives, /api/items/5 shown."""
    server = run_rsasgi("fw_starlette:app", "--root-path", "/api")
    response = httpx.get(f"{server.url}/items/5")
    assert response.status_code == 200
    assert response.json()["item_id"] == 5


def test_starlette_error_response_is_delivered_whole(run_rsasgi):
    """Starlette answers 500 itself, then re-raises; the finished response must still arrive."""
    server = run_rsasgi("fw_starlette:app")
    response = httpx.get(f"{server.url}/boom")
    assert response.status_code == 500
    assert response.text == "Internal Server Error"
    # The server may close that connection (uvicorn does); a new one is served.
    assert httpx.get(f"{server.url}/items/1").status_code == 200
    assert "fw_starlette boom" in server.output()


@pytest.mark.parametrize("app", ["app", "behind_middleware"])
def test_starlette_event_stream_stops_when_its_client_leaves(run_rsasgi, markers, app):
    """An event stream that looks with request.is_disconnected() before each event stops once
    its client has left, and gives back its place under --limit-concurrency. Behind a
    BaseHTTPMiddleware (FastAPI's @app.middleware("http")) that look never sees the disconnect:
    the middleware's task group, inside the cancel scope the look runs in, throws the message
    away as it closes. Only send() raising (ASGI 2.4) stops that stream: the look used to make
    the server drop the sends instead, as for an app that listens, and the stream ran on for
    nobody and held its place."""
    server = run_rsasgi(
        f"fw_starlette:{app}",
        "--limit-concurrency",
        "1",
        env={"STARLETTE_MARKER_DIR": str(markers)},
    )
    with httpx.stream("GET", f"{server.url}/events", timeout=10) as response:
        assert response.status_code == 200
        events = response.iter_raw()
        assert next(events).startswith(b"data: 0\n\n")
        assert httpx.get(f"{server.url}/items/1", timeout=10).status_code == 503
    wait_for_file(markers / "events.ended", timeout=10)
    assert httpx.get(f"{server.url}/items/1", timeout=10).status_code == 200


@pytest.mark.parametrize("app", ["app", "behind_middleware"])
def test_a_quiet_starlette_stream_ends_as_its_client_leaves(run_rsasgi, markers, app):
    """A StreamingResponse whose generator waits for its next event (a pub/sub feed on its
    queue) is cancelled as its client leaves, as under uvicorn: Starlette listens for the
    disconnect beside it when the scope's spec_version is below 2.4. Told 2.5, it left the
    stream to send() raising, which a feed with nothing to send never reached: the
    generator, and all it held, stayed until the stop's grace ran out."""
    server = run_rsasgi(f"fw_starlette:{app}", env={"STARLETTE_MARKER_DIR": str(markers)})
    with httpx.stream("GET", f"{server.url}/quiet-events", timeout=10) as response:
        assert next(response.iter_raw()) == b"data: hello\n\n"
    wait_for_file(markers / "quiet.ended", timeout=10)


# --------------------------------------------------------------------------- Django

DJANGO_HANDLERS = {"asgi": "mysite.asgi:application", "wsgi": "mysite.wsgi:application"}


@pytest.fixture(scope="session")
def django_project(tmp_path_factory) -> Path:
    """A project made by `django-admin startproject mysite`, with views added and migrated."""
    return build_django_project(tmp_path_factory)


@pytest.fixture(params=sorted(DJANGO_HANDLERS))
def django_interface(request) -> str:
    return request.param


@pytest.fixture
def django_server(run_rsasgi, django_project, django_interface):
    app = DJANGO_HANDLERS[django_interface]
    return run_rsasgi(app, "--app-dir", str(django_project), env=DJANGO_ENV)


def test_django_page(django_server):
    response = httpx.get(f"{django_server.url}/hello/")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "<h1>Hello from Django</h1>" in response.text
    assert "users: admin, alice" in response.text
    assert "path: /hello/" in response.text


def test_django_ends_a_request_whose_client_left_mid_response(run_rsasgi, django_project, tmp_path):
    """A client takes none of an 8 MiB page and then resets the connection. Django's ASGI
    handler hears of it from receive() while its other task waits in send(): that send must
    not raise, or the handler's end of request is skipped (the response is not closed and
    request_finished is not sent, which is what gives a request's database connection back
    to Django's pool: four of eight were lost in seconds of aborted requests)."""
    import socket
    import time

    from conftest import wait_for

    markers = tmp_path / "markers"
    markers.mkdir()
    server = run_rsasgi(
        DJANGO_HANDLERS["asgi"],
        "--app-dir",
        str(django_project),
        env={**DJANGO_ENV, "DJANGO_MARKER_DIR": str(markers)},
    )
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((server.host, server.port))
    try:
        sock.sendall(b"GET /big/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        wait_for(lambda: (markers / "big.started").exists(), 30, message="the view ran")
        time.sleep(0.5)  # the response fills the buffers; Django waits in send()
        assert not (markers / "big.closed").exists(), "the whole response was taken"
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    wait_for(lambda: (markers / "big.closed").exists(), 10, message="Django closed the response")
    wait_for(lambda: (markers / "finished.log").exists(), 10, message="request_finished was sent")
    assert httpx.get(f"{server.url}/hello/", timeout=10).status_code == 200


def test_django_unknown_path_is_404(django_server):
    response = httpx.get(f"{django_server.url}/no/such/page/")
    assert response.status_code == 404
    assert "no/such/page/" in response.text


def test_django_async_view(django_server):
    response = httpx.get(
        f"{django_server.url}/about/", params={"name": "Zoë"}, headers={"X-Custom": "yes"}
    )
    assert response.status_code == 200
    assert response.json() == {
        "view": "async",
        "name": "Zoë",
        "method": "GET",
        "script_name": "",
        "header": "yes",
    }


def test_django_under_root_path(run_rsasgi, django_project, django_interface):
    server = run_rsasgi(
        DJANGO_HANDLERS[django_interface],
        "--app-dir",
        str(django_project),
        "--root-path",
        "/site",
        env=DJANGO_ENV,
    )
    response = httpx.get(f"{server.url}/about/")
    assert response.status_code == 200
    assert response.json()["script_name"] == "/site"
    page = httpx.get(f"{server.url}/hello/")
    assert page.status_code == 200
    assert "path: /site/hello/" in page.text
    # The admin redirects to its login page under the prefix.
    first = httpx.get(f"{server.url}/admin/")
    assert first.status_code == 302
    assert first.headers["location"] == "/site/admin/login/?next=/site/admin/"


def test_django_request_body(django_server):
    data = os.urandom(2 * 1024 * 1024 + 7)
    response = httpx.post(f"{django_server.url}/digest/", content=data, timeout=60)
    assert response.status_code == 200
    assert response.json() == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_django_streaming_response(django_server, django_interface):
    # An async iterator under ASGI; under WSGI Django wants a plain one.
    path = {"asgi": "/countdown/", "wsgi": "/sync-countdown/"}[django_interface]
    with httpx.stream("GET", f"{django_server.url}{path}") as response:
        assert response.status_code == 200
        assert response.headers.get("transfer-encoding") == "chunked"
        body = response.read()
    assert body == b"5\n4\n3\n2\n1\nliftoff\n"


def test_django_admin_login_with_csrf_and_session(django_server):
    """The admin login: templates, CSRF cookie and token, a POST form, the session, a redirect."""
    with httpx.Client(base_url=django_server.url) as client:
        page = client.get("/admin/login/", params={"next": "/admin/"})
        assert page.status_code == 200
        assert "csrftoken" in client.cookies
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)

        wrong = client.post(
            "/admin/login/?next=/admin/",
            data={"csrfmiddlewaretoken": token, "username": "admin", "password": "nope"},
        )
        assert wrong.status_code == 200
        assert "Please enter the correct username and password" in wrong.text
        assert "sessionid" not in client.cookies

        login = client.post(
            "/admin/login/?next=/admin/",
            data={"csrfmiddlewaretoken": token, "username": "admin", "password": ADMIN_PASSWORD},
        )
        assert login.status_code == 302
        assert login.headers["location"] == "/admin/"
        assert "sessionid" in client.cookies

        admin = client.get("/admin/")
        assert admin.status_code == 200
        assert "Site administration" in admin.text


def test_django_post_without_csrf_token_is_403(django_server):
    response = httpx.post(
        f"{django_server.url}/admin/login/", data={"username": "admin", "password": "x"}
    )
    assert response.status_code == 403


# --------------------------------------------------------------------------- examples/


def test_example_hello(run_rsasgi):
    server = run_rsasgi("hello:app", "--app-dir", str(EXAMPLES))
    response = httpx.get(server.url)
    assert response.status_code == 200
    assert response.text == "Hello, world!"


def test_example_starlette_app(run_rsasgi):
    server = run_rsasgi("starlette_app:app", "--app-dir", str(EXAMPLES))
    with httpx.Client(base_url=server.url) as client:
        index = client.get("/")
        assert index.status_code == 200
        assert index.json()["started_by"] == "lifespan"

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
