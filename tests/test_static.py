"""Static files: `--static-map PREFIX=DIR` serves DIR's regular files under PREFIX without the
app (conditional requests, ranges, precompressed siblings, large files to slow clients), hands
everything else under PREFIX to the app, and never serves anything outside DIR.

Apps: tests/apps/static_app.py and static_wsgi.py (every answer carries X-App, so a response
from the app is told from one from the server). DIR is built in tmp_path with a secret.txt next
to it that no request may ever read. Raw sockets send targets byte for byte (httpx normalises
`..`); curl --path-as-is does the same for a few of them.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

import httpx
import pytest
from apps.proto_raw import RawConn, Response, request, rss_kib
from conftest import APPS, access_log, cli, resets_on_close, wait_for, wait_for_log
from fuse_support import hung_filesystem
from test_cli import assert_one_clear_line

APP = "static_app:app"
MiB = 1 << 20

# Every file in DIR gets this mtime, so Last-Modified is known exactly.
MTIME = 1_700_000_000
LAST_MODIFIED = formatdate(MTIME, usegmt=True)
EARLIER = formatdate(MTIME - 86400, usegmt=True)
LATER = formatdate(MTIME + 86400, usegmt=True)

SECRET = b"TOP-SECRET-4b1d: outside DIR, never to be served\n"
PASSWD = b"root:x:0:0"
# A strong entity tag (RFC 9110 section 8.8.3): DQUOTE *etagc DQUOTE, no W/ prefix.
STRONG_ETAG = re.compile(r'"[\x21\x23-\x7e\x80-\xff]*"')

JS = b"export const answer = 42; // plain\n" * 40
RANGE_DATA = bytes(range(256)) * 3 + bytes(range(232))  # 1000 bytes, every offset distinct

FILES = {
    "style.css": b"body { color: #123456; }\n",
    "page.html": b"<!doctype html><title>static</title>\n",
    "notes.txt": b"plain text notes\n",
    "data.json": b'{"static": true}\n',
    "logo.svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"/>\n',
    "pixel.png": b"\x89PNG\r\n\x1a\n" + bytes(range(64)),
    "blob.weird": b"\x00\x01\x02 unknown extension",
    "app.js": JS,
    "app.js.br": b"\x1b\x00\xf8 stand-in brotli bytes of app.js",
    "app.js.gz": b"\x1f\x8b\x08\x00 stand-in gzip bytes of app.js",
    "lib.js": b"export const lib = 1;\n",
    "lib.js.gz": b"\x1f\x8b\x08\x00 stand-in gzip bytes of lib.js",
    "bytes.bin": RANGE_DATA,
    "a b.txt": b"a name with a space\n",
    "caf\u00e9 \u2615.txt": b"a UTF-8 name\n",
    "sub/inner.txt": b"inner file\n",
    "foo/x.txt": b"reachable only as /static/foo/x.txt\n",
}


@dataclass
class Site:
    root: Path  # DIR
    secret: Path  # next to DIR, outside it

    def path(self, name: str) -> Path:
        return self.root / name


@pytest.fixture
def site(tmp_path) -> Site:
    root = tmp_path / "site"
    for name, data in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (MTIME, MTIME))
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    (root / "alias.css").symlink_to("style.css")
    (root / "abs-alias.css").symlink_to(root / "style.css")
    (root / "leak.txt").symlink_to("../secret.txt")
    (root / "updir").symlink_to("..")
    return Site(root, secret)


def serve(run_rsasgi, site: Site, *args: str, app: str = APP, **kwargs):
    return run_rsasgi(app, "--static-map", f"/static={site.root}", *args, **kwargs)


def fetch(
    server, target: str, headers: list[tuple[str, str]] | None = None, method: str = "GET"
) -> Response:
    """One request on a new connection, its target sent byte for byte."""
    conn = RawConn(server.connect())
    try:
        conn.send(request(method, target, headers))
        return conn.read_response(method)
    finally:
        conn.sock.close()


def assert_from_app(resp: Response, method: str, path: str) -> None:
    """The request reached the app, which answered with its own 404 page."""
    assert resp.header("x-app") == "static_app", (resp.status, resp.headers, resp.body[:200])
    assert resp.status == 404
    assert resp.body == f"app 404 {method} {path}".encode()


def assert_refused(resp: Response, site: Site) -> None:
    """The server itself answered 404, and gave nothing away."""
    assert resp.status == 404, (resp.status, resp.headers, resp.body[:200])
    assert resp.header("x-app") is None, "the app answered instead of the server"
    assert SECRET not in resp.body
    assert PASSWD not in resp.body
    assert str(site.root.parent).encode() not in resp.body, resp.body


def assert_serves(server, target: str, data: bytes) -> Response:
    resp = fetch(server, target)
    assert resp.status == 200, (target, resp.status, resp.headers, resp.body[:200])
    assert resp.header("x-app") is None
    assert resp.body == data
    assert resp.header("content-length") == str(len(data))
    return resp


def still_serving(server) -> None:
    assert_serves(server, "/static/style.css", FILES["style.css"])
    r = httpx.get(f"{server.url}/", timeout=10)
    assert (r.status_code, r.content) == (200, b"app ok")
    assert "panicked" not in server.output()


# --- serving ---------------------------------------------------------------------------------


def test_a_file_is_served_with_its_headers(run_rsasgi, site):
    server = serve(run_rsasgi, site)
    resp = assert_serves(server, "/static/style.css", FILES["style.css"])
    assert resp.header("content-type") == "text/css; charset=utf-8"
    assert resp.header("accept-ranges") == "bytes"
    assert resp.header("cache-control") == "public, max-age=60"
    assert resp.header("last-modified") == LAST_MODIFIED
    etag = resp.header("etag")
    assert etag is not None and STRONG_ETAG.fullmatch(etag), etag
    assert resp.header("transfer-encoding") is None
    assert resp.header("content-encoding") is None
    assert resp.header("vary") is None
    # The same file, unchanged, keeps its tag.
    assert fetch(server, "/static/style.css").header("etag") == etag


@pytest.mark.parametrize(
    "name, content_type",
    [
        ("style.css", "text/css; charset=utf-8"),
        ("app.js", "text/javascript; charset=utf-8"),
        ("page.html", "text/html; charset=utf-8"),
        ("notes.txt", "text/plain; charset=utf-8"),
        ("data.json", "application/json"),
        ("logo.svg", "image/svg+xml"),
        ("pixel.png", "image/png"),
        ("blob.weird", "application/octet-stream"),
    ],
)
def test_content_type_follows_the_extension(run_rsasgi, site, name, content_type):
    server = serve(run_rsasgi, site)
    resp = assert_serves(server, f"/static/{name}", FILES[name])
    assert resp.header("content-type") == content_type


@pytest.mark.parametrize(
    "mapping",
    ["/static=site", "/static/={root}", "/static={root}/"],
    ids=["relative-dir", "prefix-with-trailing-slash", "dir-with-trailing-slash"],
)
def test_spellings_of_the_mapping(run_rsasgi, site, mapping):
    """DIR relative to the working directory (tmp_path, where `site` is); PREFIX with or
    without its trailing slash."""
    server = run_rsasgi(APP, "--static-map", mapping.format(root=site.root), cwd=site.root.parent)
    assert_serves(server, "/static/style.css", FILES["style.css"])
    assert_serves(server, "/static/sub/inner.txt", FILES["sub/inner.txt"])
    assert_from_app(fetch(server, "/static"), "GET", "/static")
    assert_from_app(fetch(server, "/static/"), "GET", "/static/")


@pytest.mark.parametrize("max_age, expected", [(None, "60"), ("3600", "3600"), ("0", "0")])
def test_cache_control_carries_static_max_age(run_rsasgi, site, max_age, expected):
    args = [] if max_age is None else ["--static-max-age", max_age]
    server = serve(run_rsasgi, site, *args)
    resp = assert_serves(server, "/static/notes.txt", FILES["notes.txt"])
    assert resp.header("cache-control") == f"public, max-age={expected}"


def test_head_has_the_headers_of_get_and_no_body(run_rsasgi, site):
    server = serve(run_rsasgi, site)
    get = fetch(server, "/static/style.css")
    conn = RawConn(server.connect())
    conn.send(request("HEAD", "/static/style.css"))
    head = conn.read_response("HEAD")
    assert head.status == 200
    assert head.body == b""
    for name in (
        "content-length",
        "content-type",
        "etag",
        "last-modified",
        "accept-ranges",
        "cache-control",
    ):
        assert head.header(name) == get.header(name), name
    # A leaked HEAD body would be read as the start of the next response.
    conn.send(request("GET", "/static/notes.txt"))
    after = conn.read_response()
    assert (after.status, after.body) == (200, FILES["notes.txt"])
    conn.sock.close()


def test_a_static_response_has_an_access_log_line(run_rsasgi, site):
    server = serve(run_rsasgi, site)
    assert_serves(server, "/static/style.css", FILES["style.css"])
    wait_for_log(server, '"GET /static/style.css HTTP/1.1" 200')
    (record,) = access_log(server.output(), "/static/style.css")
    assert record["status"] == "200"
    assert record["bytes"] == str(len(FILES["style.css"]))


@pytest.mark.parametrize(
    "target, name",
    [
        ("/static/a%20b.txt", "a b.txt"),
        ("/static/caf%C3%A9%20%E2%98%95.txt", "caf\u00e9 \u2615.txt"),
        ("/static/styl%65.css", "style.css"),
        ("/static/sub/inner.txt", "sub/inner.txt"),
        ("/static/style.css?v=1700000000", "style.css"),
    ],
    ids=["space", "utf-8", "encoded-letter", "subdirectory", "query-string"],
)
def test_names_are_percent_decoded(run_rsasgi, site, target, name):
    server = serve(run_rsasgi, site)
    assert_serves(server, target, FILES[name])


@pytest.mark.parametrize("link", ["alias.css", "abs-alias.css"], ids=["relative", "absolute"])
def test_a_symlink_to_a_file_inside_dir_is_served(run_rsasgi, site, link):
    server = serve(run_rsasgi, site)
    resp = assert_serves(server, f"/static/{link}", FILES["style.css"])
    assert resp.header("content-type") == "text/css; charset=utf-8"


def test_etag_and_last_modified_follow_the_file(run_rsasgi, site):
    server = serve(run_rsasgi, site)
    path = site.path("style.css")
    first = assert_serves(server, "/static/style.css", FILES["style.css"])

    os.utime(path, (MTIME + 10, MTIME + 10))
    touched = assert_serves(server, "/static/style.css", FILES["style.css"])
    assert touched.header("last-modified") == formatdate(MTIME + 10, usegmt=True)
    assert touched.header("etag") != first.header("etag")

    # A new size with the same mtime still changes the tag.
    path.write_bytes(b"body { color: #000; margin: 0; }\n")
    os.utime(path, (MTIME + 10, MTIME + 10))
    resized = assert_serves(server, "/static/style.css", b"body { color: #000; margin: 0; }\n")
    assert resized.header("etag") not in (first.header("etag"), touched.header("etag"))


# --- what falls through to the app -----------------------------------------------------------


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/static/missing.css"),
        ("GET", "/static/sub"),
        ("GET", "/static/sub/"),
        ("GET", "/static"),
        ("GET", "/static/"),
        ("GET", "/staticfoo/x.txt"),
        ("GET", "/other/style.css"),
        ("POST", "/static/style.css"),
        ("PUT", "/static/style.css"),
        ("DELETE", "/static/style.css"),
        ("OPTIONS", "/static/style.css"),
    ],
    ids=[
        "missing-file",
        "directory",
        "directory-slash",
        "prefix-itself",
        "prefix-slash",
        "prefix-without-slash-boundary",
        "outside-every-prefix",
        "post",
        "put",
        "delete",
        "options",
    ],
)
def test_falls_through_to_the_app(run_rsasgi, site, method, path):
    server = serve(run_rsasgi, site)
    body = b"form=1" if method in ("POST", "PUT") else b""
    conn = RawConn(server.connect())
    conn.send(request(method, path, body=body))
    assert_from_app(conn.read_response(method), method, path)
    conn.sock.close()


def test_a_dynamic_route_under_the_prefix_reaches_the_app(run_rsasgi, site):
    server = serve(run_rsasgi, site)
    resp = fetch(server, "/static/dynamic")
    assert (resp.status, resp.header("x-app"), resp.body) == (200, "static_app", b"app dynamic")


# --- never outside DIR -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/static/../secret.txt",
        "/static/sub/../../secret.txt",
        "/static/%2e%2e/secret.txt",
        "/static/%2E%2E%2Fsecret.txt",
        "/static/sub%2f..%2f..%2fsecret.txt",
        "/static/sub/%2e%2e/%2e%2e/secret.txt",
        "/static/..%5csecret.txt",
        "/static/..\\secret.txt",
        "/static/style.css%00.txt",
        "/static//etc/passwd",
        "/static/leak.txt",
        "/static/updir/secret.txt",
    ],
    ids=[
        "dot-dot",
        "dot-dot-twice",
        "encoded-dots",
        "encoded-dots-and-slash",
        "encoded-slashes",
        "encoded-dots-in-subdirectory",
        "encoded-backslash",
        "backslash",
        "nul",
        "absolute-path",
        "symlink-to-outside-file",
        "symlink-to-outside-directory",
    ],
)
def test_nothing_outside_dir_is_served(run_rsasgi, site, target):
    server = serve(run_rsasgi, site)
    assert_refused(fetch(server, target), site)
    still_serving(server)


@pytest.mark.parametrize(
    "target",
    ["/api/users/a%2Fb", "/api//x", "/api/./x", "/../secret.txt", "/%2e%2e/secret.txt"],
)
def test_mapped_at_the_root_a_path_no_file_can_have_is_the_app_s(run_rsasgi, site, target):
    """`--static-map /=DIR` shares every path with the app: a path that cannot name a file (an
    ID with an encoded slash) reaches the app's routes, and still nothing outside DIR is
    served."""
    server = run_rsasgi(APP, "--static-map", f"/={site.root}")
    resp = fetch(server, target)
    assert resp.header("x-app") == "static_app", (resp.status, resp.headers)
    assert resp.body.startswith(b"app 404 GET /"), resp.body
    assert SECRET not in resp.body
    assert_serves(server, "/style.css", FILES["style.css"])


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize(
    "path", ["/static/../secret.txt", "/static/%2e%2e/secret.txt", "/static/..%2fsecret.txt"]
)
def test_curl_path_as_is_gets_404(run_rsasgi, site, tmp_path, path):
    server = serve(run_rsasgi, site)
    body_file, head_file = tmp_path / "curl-body", tmp_path / "curl-head"
    result = subprocess.run(
        [
            "curl",
            "--silent",
            "--show-error",
            "--path-as-is",
            "--max-time",
            "10",
            "--output",
            str(body_file),
            "--dump-header",
            str(head_file),
            "--write-out",
            "%{http_code}",
            server.url + path,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "404", result.stdout
    assert "x-app" not in head_file.read_text().lower()
    body = body_file.read_bytes()
    assert SECRET not in body
    assert str(tmp_path).encode() not in body


def capability_dropping_prefix(probe: Path) -> list[str] | None:
    """A command prefix under which root cannot read the mode-000 file `probe` ([] when not
    root), or None when no tool here can drop the capabilities."""
    if os.geteuid() != 0:
        return []
    caps = "dac_override,dac_read_search"
    candidates = [
        ["setpriv", f"--bounding-set=-{caps}", f"--inh-caps=-{caps}"],
        ["capsh", "--drop=cap_dac_override,cap_dac_read_search", "--", "-c", 'exec "$0" "$@"'],
    ]
    for prefix in candidates:
        if shutil.which(prefix[0]) is None:
            continue
        probe_run = subprocess.run(
            [*prefix, "cat", str(probe)], capture_output=True, timeout=10, stdin=subprocess.DEVNULL
        )
        if probe_run.returncode != 0 and b"Permission denied" in probe_run.stderr:
            return prefix
    return None


def test_an_unreadable_file_is_refused_by_the_server(run_rsasgi, site):
    locked = site.path("locked.txt")
    locked.write_bytes(b"LOCKED CONTENT\n")
    locked.chmod(0)
    prefix = capability_dropping_prefix(locked)
    if prefix is None:
        pytest.skip("running as root and neither setpriv nor capsh can drop CAP_DAC_OVERRIDE")
    server = serve(run_rsasgi, site, prefix=prefix)
    resp = fetch(server, "/static/locked.txt")
    assert resp.status == 403, (resp.status, resp.body[:200])
    assert resp.header("x-app") is None
    assert b"LOCKED" not in resp.body
    assert str(site.root.parent).encode() not in resp.body
    assert "panicked" not in server.output()
    # One warning says what to fix; more requests do not flood the log with it.
    for _ in range(5):
        assert fetch(server, "/static/locked.txt").status == 403
    still_serving(server)
    assert server.output().count("check the permissions of the --static-map") == 1


# --- conditional requests (RFC 9110 section 13) ----------------------------------------------


def etag_of(server, target: str = "/static/style.css") -> str:
    etag = fetch(server, target).header("etag")
    assert etag is not None
    return etag


def conditional(server, headers: list[tuple[str, str]], target: str = "/static/style.css"):
    """The response to a conditional GET, on a connection that must stay usable after it."""
    conn = RawConn(server.connect())
    conn.send(request("GET", target, headers))
    resp = conn.read_response()
    # A 304 carries no body; were one sent, the next response would not parse.
    conn.send(request("GET", "/static/notes.txt"))
    after = conn.read_response()
    assert (after.status, after.body) == (200, FILES["notes.txt"])
    conn.sock.close()
    return resp


@pytest.mark.parametrize(
    "value",
    ["{etag}", '"not-it", {etag}', "*", "W/{etag}"],
    ids=["exact", "in-a-list", "star", "weak-form"],
)
def test_if_none_match_gives_304(run_rsasgi, site, value):
    server = serve(run_rsasgi, site)
    etag = etag_of(server)
    resp = conditional(server, [("If-None-Match", value.format(etag=etag))])
    assert resp.status == 304
    assert resp.body == b""
    assert resp.header("etag") == etag
    assert resp.header("cache-control") == "public, max-age=60"


def test_if_none_match_not_matching_gives_200(run_rsasgi, site):
    server = serve(run_rsasgi, site)
    resp = conditional(server, [("If-None-Match", '"not-it", "nor-this"')])
    assert (resp.status, resp.body) == (200, FILES["style.css"])


@pytest.mark.parametrize(
    "since, status",
    [(LAST_MODIFIED, 304), (LATER, 304), (EARLIER, 200), ("not a date", 200)],
    ids=["equal", "later", "earlier", "invalid-date"],
)
def test_if_modified_since(run_rsasgi, site, since, status):
    server = serve(run_rsasgi, site)
    resp = conditional(server, [("If-Modified-Since", since)])
    assert resp.status == status
    assert resp.body == (b"" if status == 304 else FILES["style.css"])


def test_if_none_match_takes_precedence_over_if_modified_since(run_rsasgi, site):
    server = serve(run_rsasgi, site)
    headers = [("If-None-Match", '"not-it"'), ("If-Modified-Since", LAST_MODIFIED)]
    resp = conditional(server, headers)
    assert (resp.status, resp.body) == (200, FILES["style.css"])


@pytest.mark.parametrize(
    "value, status", [('"not-it"', 412), ("{etag}", 200), ("*", 200)], ids=["other", "own", "star"]
)
def test_if_match(run_rsasgi, site, value, status):
    server = serve(run_rsasgi, site)
    resp = conditional(server, [("If-Match", value.format(etag=etag_of(server)))])
    assert resp.status == status
    if status == 200:
        assert resp.body == FILES["style.css"]


@pytest.mark.parametrize("since, status", [(EARLIER, 412), (LAST_MODIFIED, 200), (LATER, 200)])
def test_if_unmodified_since(run_rsasgi, site, since, status):
    server = serve(run_rsasgi, site)
    resp = conditional(server, [("If-Unmodified-Since", since)])
    assert resp.status == status
    if status == 200:
        assert resp.body == FILES["style.css"]


# --- ranges (RFC 9110 section 14) ------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, first, last",
    [
        ("bytes=0-99", 0, 99),
        ("bytes=100-", 100, 999),
        ("bytes=-50", 950, 999),
        ("bytes=990-5000", 990, 999),
        ("bytes=0-0", 0, 0),
    ],
    ids=["first-100", "from-100", "suffix-50", "end-clamped", "one-byte"],
)
def test_a_single_range_gives_206(run_rsasgi, site, spec, first, last):
    server = serve(run_rsasgi, site)
    resp = fetch(server, "/static/bytes.bin", [("Range", spec)])
    assert resp.status == 206
    assert resp.header("content-range") == f"bytes {first}-{last}/{len(RANGE_DATA)}"
    assert resp.header("content-length") == str(last - first + 1)
    assert resp.header("content-type") == "application/octet-stream"
    assert resp.body == RANGE_DATA[first : last + 1]


def test_a_range_starting_past_the_end_gives_416(run_rsasgi, site):
    server = serve(run_rsasgi, site)
    resp = fetch(server, "/static/bytes.bin", [("Range", f"bytes={len(RANGE_DATA)}-")])
    assert resp.status == 416
    assert resp.header("content-range") == f"bytes */{len(RANGE_DATA)}"
    assert RANGE_DATA[:16] not in resp.body


@pytest.mark.parametrize(
    "spec", ["bytes=0-1,5-6", "bytes=abc", "items=0-1"], ids=["multiple", "garbage", "other-unit"]
)
def test_ranges_not_served_as_a_part_give_the_whole_file(run_rsasgi, site, spec):
    server = serve(run_rsasgi, site)
    resp = fetch(server, "/static/bytes.bin", [("Range", spec)])
    assert resp.status == 200
    assert resp.header("content-range") is None
    assert resp.header("content-length") == str(len(RANGE_DATA))
    assert resp.body == RANGE_DATA


@pytest.mark.parametrize(
    "if_range, partial",
    [("{etag}", True), ('"another"', False), (LAST_MODIFIED, True), ("W/{etag}", False)],
    ids=["current-etag", "other-etag", "last-modified", "weak-etag"],
)
def test_if_range(run_rsasgi, site, if_range, partial):
    """A weak tag never matches If-Range: it needs the strong comparison (RFC 9110 13.1.5)."""
    server = serve(run_rsasgi, site)
    etag = etag_of(server, "/static/bytes.bin")
    headers = [("Range", "bytes=0-99"), ("If-Range", if_range.format(etag=etag))]
    resp = fetch(server, "/static/bytes.bin", headers)
    if partial:
        assert resp.status == 206
        assert resp.body == RANGE_DATA[:100]
    else:
        assert resp.status == 200
        assert resp.body == RANGE_DATA


def test_head_ignores_range(run_rsasgi, site):
    # RFC 9110 §14.2: range handling is defined for GET only, and a server MUST
    # ignore Range on other methods: HEAD describes the whole file.
    server = serve(run_rsasgi, site)
    conn = RawConn(server.connect())
    conn.send(request("HEAD", "/static/bytes.bin", [("Range", "bytes=0-99")]))
    head = conn.read_response("HEAD")
    assert head.status == 200
    assert head.header("content-range") is None
    assert head.header("content-length") == str(len(RANGE_DATA))
    assert head.body == b""
    conn.send(request("GET", "/static/notes.txt"))
    after = conn.read_response()
    assert (after.status, after.body) == (200, FILES["notes.txt"])
    conn.sock.close()


# --- precompressed siblings ------------------------------------------------------------------


@pytest.mark.parametrize(
    "accept, served, encoding",
    [
        ("br", "app.js.br", "br"),
        ("gzip", "app.js.gz", "gzip"),
        ("gzip;q=0, br;q=0", "app.js", None),
        ("identity", "app.js", None),
        (None, "app.js", None),
    ],
    ids=["br", "gzip", "both-refused", "identity", "no-accept-encoding"],
)
def test_a_precompressed_sibling_is_chosen_by_accept_encoding(
    run_rsasgi, site, accept, served, encoding
):
    server = serve(run_rsasgi, site)
    headers = [] if accept is None else [("Accept-Encoding", accept)]
    resp = fetch(server, "/static/app.js", headers)
    assert resp.status == 200
    assert resp.body == FILES[served]
    assert resp.header("content-length") == str(len(FILES[served]))
    assert resp.header("content-encoding") == encoding
    assert resp.header("content-type") == "text/javascript; charset=utf-8"
    assert resp.header("vary") == "Accept-Encoding"


@pytest.mark.parametrize(
    "accept, served, encoding", [("br", "lib.js", None), ("gzip", "lib.js.gz", "gzip")]
)
def test_only_the_siblings_that_exist_are_used(run_rsasgi, site, accept, served, encoding):
    server = serve(run_rsasgi, site)
    resp = fetch(server, "/static/lib.js", [("Accept-Encoding", accept)])
    assert resp.status == 200
    assert resp.body == FILES[served]
    assert resp.header("content-encoding") == encoding
    assert resp.header("vary") == "Accept-Encoding"


def test_a_file_without_siblings_has_no_vary(run_rsasgi, site):
    server = serve(run_rsasgi, site)
    resp = fetch(server, "/static/style.css", [("Accept-Encoding", "gzip, br")])
    assert resp.body == FILES["style.css"]
    assert resp.header("content-encoding") is None
    assert resp.header("vary") is None


def test_a_304_for_a_file_with_siblings_varies_too(run_rsasgi, site):
    server = serve(run_rsasgi, site)
    etag = etag_of(server, "/static/app.js")
    resp = conditional(server, [("If-None-Match", etag)], "/static/app.js")
    assert resp.status == 304
    assert resp.header("vary") == "Accept-Encoding"


# --- large files and slow clients ------------------------------------------------------------


def random_file(path: Path, size: int, seed: int) -> bytes:
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return data


@pytest.mark.timeout(60)
def test_a_5_mib_file_arrives_whole_and_the_connection_stays_usable(run_rsasgi, site):
    data = random_file(site.path("big.bin"), 5 * MiB, 5)
    server = serve(run_rsasgi, site)
    conn = RawConn(server.connect(), timeout=30)
    conn.send(request("GET", "/static/big.bin"))
    resp = conn.read_response()
    assert resp.status == 200
    assert resp.header("content-length") == str(len(data))
    assert hashlib.sha256(resp.body).hexdigest() == hashlib.sha256(data).hexdigest()
    conn.send(request("GET", "/static/style.css"))
    after = conn.read_response()
    assert (after.status, after.body) == (200, FILES["style.css"])
    conn.sock.close()


def slow_reader(server) -> RawConn:
    """A connection with a small receive buffer, so an unread body stays with the server."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(30)
    sock.connect((server.host, server.port))
    return RawConn(sock, timeout=30)


@pytest.mark.timeout(90)
def test_a_stalled_client_gets_50_mib_whole_without_blocking_or_buffering(run_rsasgi, site):
    data = random_file(site.path("huge.bin"), 50 * MiB, 50)
    random_file(site.path("warm.bin"), MiB, 1)
    server = serve(run_rsasgi, site)
    with httpx.stream("GET", f"{server.url}/static/warm.bin", timeout=30) as warm:
        assert sum(len(piece) for piece in warm.iter_raw()) == MiB
    pid = server.proc.pid
    baseline = peak = rss_kib(pid)
    assert baseline > 0

    conn = slow_reader(server)
    conn.send(request("GET", "/static/huge.bin"))
    # Read nothing for 2 s; meanwhile the server answers others, static and dynamic.
    end = time.monotonic() + 2
    while time.monotonic() < end:
        still_serving(server)
        peak = max(peak, rss_kib(pid))
        time.sleep(0.1)

    resp = conn.read_head()
    assert resp.status == 200
    assert resp.header("content-length") == str(len(data))
    digest = hashlib.sha256()
    total = 0
    for n, piece in enumerate(conn.iter_body(resp)):
        digest.update(piece)
        total += len(piece)
        if n % 200 == 0:
            peak = max(peak, rss_kib(pid))
    assert total == len(data)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    growth_mib = (peak - baseline) / 1024
    assert growth_mib < 30, f"server RSS grew by {growth_mib:.1f} MiB (baseline {baseline} KiB)"
    conn.send(request("GET", "/static/style.css"))
    assert conn.read_response().body == FILES["style.css"]
    conn.sock.close()


@pytest.mark.timeout(60)
def test_a_small_file_on_a_hung_filesystem_holds_its_own_response_only(run_rsasgi, site, tmp_path):
    """A file of 64 KiB or less was read on the reactor, with its head: a read that a hung
    network filesystem never answers froze every connection of the worker (the app's, the
    other files'). It is now read there only when the page cache holds it all (a read that
    cannot block), else on the blocking pool, as a large file is."""
    with hung_filesystem(tmp_path, "small.txt", 1000) as hung:
        server = serve(run_rsasgi, site, "--static-map", f"/hung={hung}")
        stuck = server.connect()
        stuck.sendall(request("GET", "/hung/small.txt"))
        time.sleep(0.5)
        assert_serves(server, "/static/style.css", FILES["style.css"])
        assert_from_app(fetch(server, "/x"), "GET", "/x")
        resets_on_close(stuck).close()


@pytest.mark.timeout(60)
def test_a_read_stuck_on_a_hung_filesystem_does_not_hold_the_stop(run_rsasgi, site, tmp_path):
    """A file read cannot be cancelled, and the worker waited for the reads on its blocking
    pool as it stopped: one stuck on a hung filesystem held the stop (the app's lifespan
    shutdown, the "Stopped" line) for as long as the filesystem did, whatever
    --timeout-graceful-shutdown said. It now waits a second for them and goes on, saying so.
    The process itself exits only once the filesystem answers: the kernel keeps a thread
    whose read a filesystem has taken until it is answered."""
    with hung_filesystem(tmp_path, "big.bin", MiB) as hung:
        server = serve(run_rsasgi, site, "--static-map", f"/hung={hung}",
                       "--timeout-graceful-shutdown", "2")  # fmt: skip
        stuck = server.connect()
        stuck.sendall(request("GET", "/hung/big.bin"))
        time.sleep(0.5)
        resets_on_close(stuck).close()
        server.proc.send_signal(signal.SIGTERM)
        # Well within the filesystem's 60 s, which the stop waited for before.
        wait_for_log(server, "still blocked 1s after the last connection closed", timeout=20)
        wait_for_log(server, "Stopped", timeout=10)
    # The filesystem gone, its reads fail and the process exits.
    assert server.wait_exit(timeout=20) == 0, server.output()


@pytest.mark.timeout(60)
def test_a_static_download_counts_against_limit_concurrency(run_rsasgi, site):
    data = random_file(site.path("huge.bin"), 50 * MiB, 50)
    server = serve(run_rsasgi, site, "--limit-concurrency", "1")
    conn = slow_reader(server)
    conn.send(request("GET", "/static/huge.bin"))
    # The head arrived, and most of 50 MiB cannot fit in the socket buffers: the download is
    # in flight until this client reads.
    resp = conn.read_head()
    assert resp.status == 200
    assert httpx.get(f"{server.url}/", timeout=10).status_code == 503
    assert httpx.get(f"{server.url}/static/style.css", timeout=10).status_code == 503

    digest = hashlib.sha256()
    for piece in conn.iter_body(resp):
        digest.update(piece)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    conn.sock.close()

    def answered():
        response = httpx.get(f"{server.url}/static/style.css", timeout=10)
        return response if response.status_code == 200 else None

    assert wait_for(answered, message="the slot to be free").content == FILES["style.css"]


def test_an_http_1_0_client_gets_the_file_and_the_connection_closes(run_rsasgi, site):
    server = serve(run_rsasgi, site)
    conn = RawConn(server.connect())
    conn.send(request("GET", "/static/style.css", version="HTTP/1.0", host=False))
    resp = conn.read_response()
    assert resp.status == 200
    assert resp.header("content-length") == str(len(FILES["style.css"]))
    assert resp.body == FILES["style.css"]
    assert conn.is_closed_by_peer(10), "the server kept an HTTP/1.0 connection open"
    conn.sock.close()


# --- several maps, every kind of app ---------------------------------------------------------


def test_several_prefixes_each_serve_their_own_dir(run_rsasgi, site, tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    (media / "photo.png").write_bytes(b"\x89PNG media")
    server = run_rsasgi(
        APP, "--static-map", f"/static={site.root}", "--static-map", f"/media={media}"
    )
    assert_serves(server, "/static/style.css", FILES["style.css"])
    resp = assert_serves(server, "/media/photo.png", b"\x89PNG media")
    assert resp.header("content-type") == "image/png"
    assert_from_app(fetch(server, "/static/photo.png"), "GET", "/static/photo.png")
    assert_from_app(fetch(server, "/media/style.css"), "GET", "/media/style.css")


@pytest.mark.parametrize(
    "app, workers",
    [
        ("static_app:app", []),
        ("static_app:app", ["--workers", "2"]),
        ("static_wsgi:app", []),
        ("static_wsgi:app", ["--workers", "2"]),
    ],
    ids=["asgi", "asgi-workers", "wsgi", "wsgi-workers"],
)
def test_every_kind_of_app_and_process_model(run_rsasgi, site, app, workers):
    server = serve(run_rsasgi, site, *workers, app=app)
    if workers:
        wait_for_log(server, "All 2 workers serving")
    name = app.split(":")[0]
    for _ in range(4):  # new connections, which may land on either worker
        resp = assert_serves(server, "/static/style.css", FILES["style.css"])
        assert resp.header("etag") is not None
        missing = fetch(server, "/static/missing.css")
        assert (missing.status, missing.header("x-app")) == (404, name)
        assert missing.body == b"app 404 GET /static/missing.css"
        dynamic = fetch(server, "/static/dynamic")
        assert (dynamic.status, dynamic.header("x-app"), dynamic.body) == (
            200,
            name,
            b"app dynamic",
        )


# --- the command line ------------------------------------------------------------------------


def test_help_lists_the_static_options():
    result = cli("--help")
    assert result.returncode == 0, result.stderr
    assert "--static-map" in result.stdout
    assert "--static-max-age" in result.stdout


@pytest.mark.parametrize(
    "value, named",
    [
        ("nodir", "nodir"),
        ("/static=/does/not/exist", "/does/not/exist"),
        ("static={root}", "static={root}"),
        ("/static={root}/style.css", "{root}/style.css"),
    ],
    ids=["no-equals", "missing-dir", "prefix-without-slash", "dir-is-a-file"],
)
def test_a_bad_static_map_is_a_usage_error(site, value, named):
    """Exit 2 with one line that names the option and what is wrong with its value."""
    value, named = value.format(root=site.root), named.format(root=site.root)
    result = cli("--app-dir", str(APPS), APP, "--port", "0", "--static-map", value)
    assert result.returncode == 2, result.stderr
    assert_one_clear_line(result.stderr, "--static-map", named)


def test_one_prefix_mapped_twice_is_a_usage_error(site, tmp_path):
    """The second mount of a prefix never served (a uWSGI habit, where mounts of one prefix
    are tried in turn); it was taken without a word."""
    other = tmp_path / "other"
    other.mkdir()
    result = cli(
        "--app-dir",
        str(APPS),
        APP,
        "--port",
        "0",
        "--static-map",
        f"/static={site.root}",
        "--static-map",
        f"/static/={other}",
    )
    assert result.returncode == 2, result.stderr
    assert_one_clear_line(result.stderr, "--static-map maps /static twice", str(other))


# --- HTTP/2 ------------------------------------------------------------------------------------


def test_files_are_served_over_http2(run_rsasgi, site):
    # Cleartext HTTP/2 with prior knowledge; the same code answers each stream.
    data = random_file(site.path("big.bin"), 2 * MiB, 7)
    server = serve(run_rsasgi, site)
    with httpx.Client(http1=False, http2=True, timeout=20) as client:
        small = client.get(server.url + "/static/style.css")
        assert small.http_version == "HTTP/2"
        assert (small.status_code, small.content) == (200, FILES["style.css"])
        assert small.headers["content-type"] == "text/css; charset=utf-8"
        big = client.get(server.url + "/static/big.bin", headers={"Range": "bytes=10-"})
        assert (big.status_code, big.content) == (206, data[10:])
        tag = small.headers["etag"]
        again = client.get(server.url + "/static/style.css", headers={"If-None-Match": tag})
        assert (again.status_code, again.content) == (304, b"")
        assert client.get(server.url + "/static/missing.css").headers.get("x-app") == "static_app"
