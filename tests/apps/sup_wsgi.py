"""WSGI apps for tests/test_supervisor.py.

app      answers with its environ's wsgi.multiprocess
pid_app  answers "1 PID", as sup_app does, naming the worker that answered
"""

from __future__ import annotations

import os


def app(environ, start_response):
    body = str(environ["wsgi.multiprocess"]).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def pid_app(environ, start_response):
    body = f"1 {os.getpid()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
