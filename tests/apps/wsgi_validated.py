"""A PEP 3333 app wrapped in wsgiref.validate.validator, which fails the request on anything
the spec forbids in the environ or in the server's calls (tests/test_options_asterisk.py).

GET /calls answers the requests the app has been called for, as a JSON list of
"METHOD PATH_INFO"; any other request is added to that list and answered "ok".
"""

from __future__ import annotations

import json
import threading
from wsgiref.validate import validator

_lock = threading.Lock()
_calls: list[str] = []


def counting_app(environ, start_response):
    if environ["PATH_INFO"] == "/calls":
        with _lock:
            body = json.dumps(_calls).encode()
    else:
        with _lock:
            _calls.append(f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}")
        body = b"ok"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


app = validator(counting_app)
