"""WSGI app for tests/test_worker_lifecycle.py: each request blocks its thread for 60 s.

Request events go, one per line, to the file named by $LIFE_EVENTS.
"""

from __future__ import annotations

import time

from life_app import record


def app(environ, start_response):
    record("request-start")
    time.sleep(60)
    record("request-done")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"slept"]
