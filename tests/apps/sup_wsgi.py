"""WSGI app for tests/test_supervisor.py: answers with its environ's wsgi.multiprocess."""

from __future__ import annotations


def app(environ, start_response):
    body = str(environ["wsgi.multiprocess"]).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
