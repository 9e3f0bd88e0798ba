"""Apps and logging handlers for tests/test_log_config.py.

Routes of `app` (ASGI) and `wsgi_app` (WSGI):
  /app-log     logs "a line from the app" at WARNING on the logger "app", answers "logged"
  /errors      (WSGI) writes "a line for wsgi.errors" to environ["wsgi.errors"]
  anything     "hello"

`StuckOnAccess` is a handler a log config can name (`log_config_app.StuckOnAccess`): it
writes records to its file as `name|levelname|message`, but blocks forever on the first
access record, as a handler writing to a log reader that stopped reading would.
"""

from __future__ import annotations

import logging
import threading

_never = threading.Event()


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b"hello"
    if scope["path"] == "/app-log":
        logging.getLogger("app").warning("a line from the app")
        body = b"logged"
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def wsgi_app(environ, start_response):
    body = b"hello"
    if environ["PATH_INFO"] == "/errors":
        environ["wsgi.errors"].write("a line for wsgi.errors\n")
        body = b"logged"
    elif environ["PATH_INFO"] == "/app-log":
        logging.getLogger("app").warning("a line from the app")
        body = b"logged"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


class StuckOnAccess(logging.FileHandler):
    def emit(self, record):
        if record.name == "rsasgi.access":
            _never.wait()
        super().emit(record)
