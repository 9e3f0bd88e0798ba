"""A WSGI app for tests/test_logs.py.

Routes:
  /request-id   the X-Request-ID the environ carries (HTTP_X_REQUEST_ID), or "none"
  /errors       writes a line to wsgi.errors, answers "logged"
  /lines?N      writes N lines to wsgi.errors ("wsgi.errors line 0" and on), answers "logged"
"""

from __future__ import annotations


def app(environ, start_response):
    if environ["PATH_INFO"] == "/errors":
        environ["wsgi.errors"].write("a line for wsgi.errors\n")
        body = b"logged"
    elif environ["PATH_INFO"] == "/lines":
        errors = environ["wsgi.errors"]
        for number in range(int(environ["QUERY_STRING"])):
            errors.write(f"wsgi.errors line {number}\n")
        body = b"logged"
    else:
        body = environ.get("HTTP_X_REQUEST_ID", "none").encode("latin-1")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
