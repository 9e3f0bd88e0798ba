"""rsasgi behind real nginx, configured by the shipped deploy/nginx.conf (tests/nginx_support.py
fills in ports and paths): TLS terminated by nginx, the client and scheme rsasgi derives from
nginx's forwarded headers (ASGI scope, WSGI environ, WebSocket scope), upstream keep-alive over
TCP and over a Unix socket, WebSockets, /static/ served by nginx, and the Django admin deployed
as the Django checklist says. Last, the same admin walk with rsasgi alone serving the static
files (--static-map).

nginx is the Debian package `nginx` (tests/run-all.sh installs it as root). When it is missing
the tests that need it are skipped, except in CI (CI=true) or as root, where they fail: there
nginx could have been installed. Every process runs on 127.0.0.1; nginx's certificate comes from
trustme's test CA.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import trustme
from conftest import Server, access_log, free_port, wait_for, wait_for_log
from django_support import (
    DJANGO_DEPLOY_ENV,
    DJANGO_HTTPS_ENV,
    STATIC_URL,
    deploy_django_project,
    static_admin_walk,
)
from nginx_support import Nginx, Site, missing_nginx_reason, nginx_root
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError


@pytest.fixture
def require_nginx() -> None:
    reason = missing_nginx_reason()
    if reason is None:
        return
    if os.environ.get("CI") == "true" or os.geteuid() == 0:
        pytest.fail(reason)
    pytest.skip(reason)


class Certificates:
    """A test CA and a certificate it signed for localhost and 127.0.0.1."""

    def __init__(self, directory: Path):
        self.ca = trustme.CA()
        issued = self.ca.issue_cert("localhost", "127.0.0.1")
        self.certificate = directory / "localhost.pem"
        self.key = directory / "localhost.key"
        issued.cert_chain_pems[0].write_to_path(str(self.certificate))
        for pem in issued.cert_chain_pems[1:]:
            pem.write_to_path(str(self.certificate), append=True)
        issued.private_key_pem.write_to_path(str(self.key))

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


@pytest.fixture(scope="session")
def certificates(tmp_path_factory) -> Certificates:
    return Certificates(tmp_path_factory.mktemp("tls"))


class Proxy:
    """nginx running deploy/nginx.conf in front of one rsasgi."""

    def __init__(self, nginx: Nginx, context: ssl.SSLContext):
        self.nginx = nginx
        self.context = context
        self.url = nginx.https_url
        self.static_dir = nginx.site.static_dir

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=self.context, timeout=30)


@pytest.fixture
def nginx_dir(require_nginx, tmp_path):
    """Where nginx keeps its files (and where the tests put the Unix socket and static files)."""
    with nginx_root(tmp_path / "nginx") as root:
        (root / "static").mkdir()
        yield root


@pytest.fixture
def start_proxy(nginx_dir, certificates) -> Callable[..., Proxy]:
    """Start nginx in front of `upstream` ("127.0.0.1:PORT" or "unix:PATH"); stopped after the
    test, whatever happened."""
    started: list[Nginx] = []

    def start(upstream: str, upstream_keepalive_timeout: str | None = None) -> Proxy:
        site = Site(
            http_port=free_port(),
            https_port=free_port(),
            certificate=certificates.certificate,
            key=certificates.key,
            static_dir=nginx_dir / "static",
            upstream=upstream,
            upstream_keepalive_timeout=upstream_keepalive_timeout,
        )
        nginx = Nginx(nginx_dir, site)
        started.append(nginx)
        nginx.wait_ready()
        return Proxy(nginx, certificates.client_context())

    yield start
    for nginx in started:
        nginx.stop()


def upstream_of(server: Server, socket_path: Path | None) -> str:
    return f"unix:{socket_path}" if socket_path else f"127.0.0.1:{server.port}"


@pytest.fixture(params=["tcp", "unix"])
def serve(request, run_rsasgi, nginx_dir) -> Callable[..., tuple[Server, Path | None]]:
    """Start rsasgi on a loopback port or on a Unix socket nginx's worker can reach."""

    def start(*args: str, env: dict | None = None) -> tuple[Server, Path | None]:
        if request.param == "tcp":
            return run_rsasgi(*args, env=env), None
        path = nginx_dir / "rsasgi.sock"
        server = run_rsasgi(*args, "--uds", str(path), env=env, wait=False)
        wait_for_log(server, f"Listening on unix:{path}")
        return server, path

    return start


def header_values(scope: dict, name: bytes) -> list[bytes]:
    """The values of header `name` in a scope tests/apps/proto_scope.py reported."""
    decoded = [[base64.b64decode(part["b64"]) for part in item] for item in scope["headers"]]
    return [value for key, value in decoded if key == name]


# --------------------------------------------------------------------------- who the client is


def test_asgi_scope_shows_the_client_and_https(serve, start_proxy):
    server, socket_path = serve("proto_scope:app")
    proxy = start_proxy(upstream_of(server, socket_path))
    with proxy.client() as client:
        response = client.get("/where?x=1")
    assert response.status_code == 200, response.text
    scope = response.json()["scope"]
    assert scope["scheme"] == "https"
    # Port 0: the address came from X-Forwarded-For, not from nginx's connection (which has a
    # port over TCP and no address at all over a Unix socket).
    assert scope["client"] == ["127.0.0.1", 0]
    assert scope["http_version"] == "1.1"
    if socket_path:
        assert scope["server"] == [str(socket_path), None]
    else:
        assert scope["server"] == ["127.0.0.1", server.port]
    # The Host the browser asked for, port included, for Django's CSRF Origin check.
    assert header_values(scope, b"host") == [f"localhost:{proxy.nginx.site.https_port}".encode()]
    assert header_values(scope, b"x-forwarded-proto") == [b"https"]
    assert header_values(scope, b"x-real-ip") == [b"127.0.0.1"]
    # No "Connection: close", so the upstream connection can be reused.
    assert header_values(scope, b"connection") == []


def test_wsgi_environ_shows_the_client_and_https(serve, start_proxy):
    server, socket_path = serve("wsgi_env:app")
    proxy = start_proxy(upstream_of(server, socket_path))
    with proxy.client() as client:
        response = client.get("/env")
    assert response.status_code == 200, response.text
    environ = response.json()["environ"]
    assert environ["REMOTE_ADDR"] == "127.0.0.1"
    assert environ["REMOTE_PORT"] == "0"
    assert environ["wsgi.url_scheme"] == "https"
    assert environ["HTTPS"] == "on"
    assert environ["HTTP_HOST"] == f"localhost:{proxy.nginx.site.https_port}"


def test_plain_http_is_redirected_to_https(run_rsasgi, start_proxy):
    server = run_rsasgi("proto_scope:app")
    proxy = start_proxy(upstream_of(server, None))
    port = proxy.nginx.site.http_port
    response = httpx.get(
        f"http://127.0.0.1:{port}/admin/?next=x", headers={"Host": f"localhost:{port}"}
    )
    assert response.status_code == 301
    assert response.headers["location"] == "https://localhost/admin/?next=x"
    assert access_log(server.output()) == []


# --------------------------------------------------------------------------- upstream keep-alive


def test_sequential_requests_share_one_upstream_connection(serve, start_proxy):
    # Without proxy headers the access log shows each request's connection (nginx's port).
    server, socket_path = serve("proto_http:app", "--no-proxy-headers")
    proxy = start_proxy(upstream_of(server, socket_path))
    # Bodies above nginx's buffer (16 KiB) go through its temporary files first.
    sizes = [0, 1, 1000, 70_000, 1_000_000] * 6
    with proxy.client() as client:
        for number, size in enumerate(sizes):
            assert client.get("/").text == "hello world"
            body = os.urandom(size)
            response = client.post("/echo", content=body)
            assert response.status_code == 200, f"POST {number} ({size} bytes): {response.text}"
            assert response.content == body
    records = wait_for(
        lambda: (lines := access_log(server.output())) and len(lines) == 2 * len(sizes) and lines,
        message=f"{2 * len(sizes)} access log lines",
        server=server,
    )
    assert {record["status"] for record in records} == {"200"}
    # One nginx worker sends one request at a time: one connection carries them all.
    connections = {record["client"] for record in records}
    assert len(connections) == 1, connections


# rsasgi's --timeout-keep-alive in the race test, and nginx's upstream keepalive_timeout below it
# in the same ratio as the shipped 4 s below rsasgi's default 5 s.
KEEP_ALIVE = 1.0
NGINX_KEEPALIVE_TIMEOUT = "800ms"
# How long after rsasgi's keep-alive timeout the requests come: the window in which, with the
# opposite ordering, rsasgi closes the connection as nginx sends a POST on it (a 502 for about 1
# in 180 of them; benches/nginx_keepalive_race.py measures it).
IDLE_OFFSETS = [micros / 1_000_000 for micros in range(-2000, 1001, 250)]


@pytest.mark.timeout(90)
def test_idle_upstream_connections_are_closed_by_nginx_first(serve, start_proxy):
    """With nginx's keepalive_timeout below rsasgi's, no POST ever meets a connection rsasgi is
    closing: nginx closes every idle connection itself, and rsasgi never has to.

    A collision is rare even with the opposite ordering, so besides the zero 502s the test
    checks the cause, which does not depend on chance: rsasgi's log (at trace level) never says
    it closed an idle connection. With the opposite ordering it says so after every pause.
    """
    server, socket_path = serve(
        "proto_http:app", "--timeout-keep-alive", str(KEEP_ALIVE), "--log-level", "trace"
    )
    proxy = start_proxy(upstream_of(server, socket_path), NGINX_KEEPALIVE_TIMEOUT)
    statuses = []
    with proxy.client() as client:
        assert client.post("/echo", content=b"first").status_code == 200
        for offset in IDLE_OFFSETS:
            # The pause is the stimulus, not a wait for a condition: the upstream connection
            # must sit idle this long.
            time.sleep(KEEP_ALIVE + offset)
            statuses.append(client.post("/echo", content=b"payload").status_code)
    assert statuses == [200] * len(IDLE_OFFSETS), proxy.nginx.log()
    assert "closing an idle keep-alive connection" not in server.output()


# --------------------------------------------------------------------------- WebSockets


def test_websocket_through_nginx(serve, start_proxy):
    server, socket_path = serve("ws_app:app")
    proxy = start_proxy(upstream_of(server, socket_path))
    base = proxy.url.replace("https://", "wss://")

    async def talk():
        async with connect(base + "/scope", ssl=proxy.context, open_timeout=10) as ws:
            scope = json.loads(await ws.recv())
        async with connect(base + "/echo", ssl=proxy.context, open_timeout=10) as ws:
            await ws.send("hello through nginx")
            text = await ws.recv()
            await ws.send(b"\x00\x01binary")
            data = await ws.recv()
        async with connect(base + "/app-close", ssl=proxy.context, open_timeout=10) as ws:
            first = await ws.recv()
            with pytest.raises(ConnectionClosedError):
                await ws.recv()
            closed = (ws.close_code, ws.close_reason)
        return scope, text, data, first, closed

    scope, text, data, first, closed = asyncio.run(asyncio.wait_for(talk(), 60))
    assert scope["scheme"] == "wss"
    assert scope["client"] == ["127.0.0.1", 0]
    assert text == "hello through nginx"
    assert data == b"\x00\x01binary"
    assert first == "closing soon"
    assert closed == (4321, "custom reason")


# --------------------------------------------------------------------------- static files


def test_static_files_come_from_nginx_and_the_rest_from_rsasgi(run_rsasgi, start_proxy):
    server = run_rsasgi("proto_http:app")
    proxy = start_proxy(upstream_of(server, None))
    stylesheet = b"body { color: #123456; }\n"
    (proxy.static_dir / "css").mkdir()
    (proxy.static_dir / "css" / "site.css").write_bytes(stylesheet)
    with proxy.client() as client:
        css = client.get("/static/css/site.css")
        missing = client.get("/static/css/missing.css")
        page = client.get("/")
    assert css.status_code == 200
    assert css.headers["content-type"] == "text/css"
    assert css.content == stylesheet
    assert missing.status_code == 404
    assert page.text == "hello world"
    # Only "/" reached rsasgi.
    wait_for_log(server, '"GET / HTTP/1.1" 200')
    assert [record["target"] for record in access_log(server.output())] == ["/"]


# --------------------------------------------------------------------------- Django's admin

DJANGO_HANDLERS = {"asgi": "mysite.asgi:application", "wsgi": "mysite.wsgi:application"}


@pytest.fixture(scope="session")
def deployed_django(tmp_path_factory) -> tuple[Path, Path]:
    """The test Django project, with collectstatic run; (project, STATIC_ROOT)."""
    return deploy_django_project(tmp_path_factory)


@pytest.mark.parametrize("interface", sorted(DJANGO_HANDLERS))
def test_django_admin_behind_nginx_with_tls(interface, run_rsasgi, start_proxy, deployed_django):
    project, static_root = deployed_django
    server = run_rsasgi(DJANGO_HANDLERS[interface], "--app-dir", str(project), env=DJANGO_HTTPS_ENV)
    proxy = start_proxy(upstream_of(server, None))
    # nginx's worker reads the files, so they go where it can (see nginx_support.nginx_root).
    shutil.copytree(static_root, proxy.static_dir, dirs_exist_ok=True)
    with proxy.client() as client:
        assets = static_admin_walk(client, f"https://localhost:{proxy.nginx.site.https_port}")
    # nginx served the static files; rsasgi saw none of them.
    targets = [record["target"] for record in access_log(server.output())]
    assert not [target for target in targets if target.startswith(STATIC_URL)]
    assert assets


@pytest.mark.parametrize("interface", sorted(DJANGO_HANDLERS))
def test_django_admin_alone_with_static_map(interface, run_rsasgi, deployed_django):
    project, static_root = deployed_django
    server = run_rsasgi(
        DJANGO_HANDLERS[interface],
        "--app-dir",
        str(project),
        "--static-map",
        f"{STATIC_URL}={static_root}",
        env=DJANGO_DEPLOY_ENV,
    )
    # Django itself serves no static files with DEBUG off: the walk's 200s come from rsasgi.
    with httpx.Client(base_url=server.url, timeout=30) as client:
        static_admin_walk(client, server.url)
