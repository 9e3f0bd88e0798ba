"""WSGI twin of static_app.py for tests/test_static.py, with X-App: static_wsgi.
Routes:
  GET /                 200 "app ok"
  GET /static/dynamic   200 "app dynamic"
  anything else         404 "app 404 METHOD PATH" (PATH_INFO decoded as UTF-8)
"""

from __future__ import annotations


def app(environ, start_response):
    environ["wsgi.input"].read()
    method = environ["REQUEST_METHOD"]
    path = environ["PATH_INFO"].encode("latin-1").decode("utf-8", "replace")
    if path == "/":
        status, body = "200 OK", b"app ok"
    elif path == "/static/dynamic":
        status, body = "200 OK", b"app dynamic"
    else:
        status, body = "404 Not Found", f"app 404 {method} {path}".encode()
    start_response(
        status,
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("X-App", "static_wsgi"),
        ],
    )
    return [b"" if method == "HEAD" else body]
