"""WSGI pool threads as Python code sees them (tests/test_wsgi.py): their names, and the hooks
of threading.settrace() and threading.setprofile().

The hooks are set at import, before the server starts its pool threads, as coverage.py or a
profiler started ahead of the server sets them. Markers go to $WSGI_MARKER_DIR.

Route (any path): JSON {"thread": threading.current_thread().name, "trace": whether
sys.gettrace() is the hook set here, "profile": the same for sys.getprofile(), "traced": whether
the trace hook saw this request's view run}. With ?tag=T it first writes T.started and waits for
the marker T.go, holding its thread so that the next request needs another.
"""

from __future__ import annotations

import json
import sys
import threading

from wsgi_common import put, query, wait_marker

_calls = threading.local()


def tracer(frame, event, arg):
    if event == "call" and frame.f_code.co_name == "view":
        _calls.traced = True
    return None


def profiler(frame, event, arg):
    return None


threading.settrace(tracer)
threading.setprofile(profiler)


def view() -> None:
    pass


def app(environ, start_response):
    tag = query(environ).get("tag")
    if tag:
        put(f"{tag}.started", "")
        wait_marker(f"{tag}.go")
    _calls.traced = False
    view()
    body = json.dumps(
        {
            "thread": threading.current_thread().name,
            "trace": sys.gettrace() is tracer,
            "profile": sys.getprofile() is profiler,
            "traced": _calls.traced,
        }
    ).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
