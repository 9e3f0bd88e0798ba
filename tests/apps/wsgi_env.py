"""Plain PEP 3333 app for tests/test_wsgi.py: environ, wsgi.input, wsgi.errors and framing.

Routes (by PATH_INFO, anything not listed below is /env):
  *                     JSON {"environ": {key: value for str/bool/int values, wsgi.version as a
                        list}, "types": {key: type name}, "input": [methods of wsgi.input],
                        "errors": [methods of wsgi.errors], "file_wrapper_callable": bool,
                        "body": the body read with read(), latin-1}; header X-Method = the method
  /input?op=OP&n=N      applies OP to wsgi.input (see OPS) and answers JSON
                        {"lengths": [len of each part], "sha256": sha of the joined parts,
                        "types": sorted type names of the parts, "error": repr or null}
  /sha256?chunk=N&delay=S&tag=T
                        sleeps S s, then reads wsgi.input with read(N) until EOF; JSON
                        {"sha256", "size", "reads"}; T.progress holds the bytes read so far
  /ignore-body          answers "ignored" without reading the body
  /scribble             changes its environ (removes SERVER_NAME, replaces wsgi.url_scheme,
                        adds app.note), then answers "scribbled"
  /errors               writes two lines to wsgi.errors (one with write, one with writelines),
                        then a third with writelines given a generator
  /errors-partial       writes "wsgi-errors-partial-line" to wsgi.errors: no newline, no flush
  /errors-records       writes to wsgi.errors what test_wsgi.py's records test expects, record
                        by record (print, multi-line writes, writelines, 100,000 "x" unbroken)
  /errors-late?PATH     starts a thread that, once PATH exists, writes "wsgi-errors-late-partial"
                        (no newline) to wsgi.errors, lets go of it, then creates PATH.done
  /ids                  JSON {"start_response": id(start_response), "errors": id(wsgi.errors)}
  /start-then-raise     calls start_response("201 Created", [("X-Stale", "yes")]), then raises
  /keep                 keeps its start_response and write callables, answers "kept"
  /keep-weak            keeps a weak reference to its start_response, answers "kept"
  /use-weak-kept        JSON {"alive": the weak reference's start_response lives, "same": it
                        is this request's, "call": error repr of calling it, or null}
  /use-kept             calls the callables /keep kept; JSON {"write": error repr or null,
                        "start_response": error repr or null, "same": whether its own
                        start_response is the kept one}
  /framing/cl           "hello world" with Content-Length
  /framing/nolength     "hello world" in two chunks, no Content-Length
  /framing/empty        empty body with Content-Length: 0
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import weakref

from wsgi_common import apply_op, put, query

#: /keep's start_response and write, for /use-kept.
KEPT = {}


def describe(environ) -> dict:
    env = {}
    types = {}
    for key, value in environ.items():
        types[key] = type(value).__name__
        if isinstance(value, (str, bool, int)):
            env[key] = value
        elif key == "wsgi.version":
            env[key] = list(value) if isinstance(value, tuple) else repr(value)
    inp = environ.get("wsgi.input")
    err = environ.get("wsgi.errors")
    return {
        "environ": env,
        "types": types,
        "key_types": sorted({type(k).__name__ for k in environ}),
        "input": sorted(
            m for m in ("read", "readline", "readlines", "__iter__") if hasattr(inp, m)
        ),
        "errors": sorted(m for m in ("write", "writelines", "flush") if hasattr(err, m)),
        "file_wrapper_callable": callable(environ.get("wsgi.file_wrapper")),
    }


def send_json(start_response, obj, extra=()) -> list[bytes]:
    body = json.dumps(obj).encode()
    start_response(
        "200 OK",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *extra],
    )
    return [body]


def simple(start_response, body: bytes, status: str = "200 OK") -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def app(environ, start_response):
    path = environ["PATH_INFO"]
    q = query(environ)
    inp = environ["wsgi.input"]

    if path == "/status":
        # The same literal on every request (as apps send them), or one made anew from ?s=.
        literals = {"ok": "200 OK", "teapot": "418 I'M A TEAPOT", "gone": "410 Gone"}
        status = literals[q["name"]] if "name" in q else q["s"]
        return simple(start_response, status.encode(), status)

    if path == "/input":
        try:
            parts = apply_op(inp, q["op"], int(q.get("n", "0")))
            error = None
        except Exception as exc:  # noqa: BLE001 - reported to the test
            parts, error = [], repr(exc)
        joined = b"".join(p for p in parts if isinstance(p, bytes))
        return send_json(
            start_response,
            {
                "lengths": [len(p) for p in parts],
                "sha256": hashlib.sha256(joined).hexdigest(),
                "types": sorted({type(p).__name__ for p in parts}),
                "error": error,
            },
        )

    if path == "/sha256":
        time.sleep(float(q.get("delay", "0")))
        chunk = int(q.get("chunk", "65536"))
        tag = q.get("tag")
        digest = hashlib.sha256()
        size = reads = 0
        next_report = 0
        while True:
            data = inp.read(chunk)
            if not data:
                break
            assert len(data) <= chunk, (len(data), chunk)
            digest.update(data)
            size += len(data)
            reads += 1
            if tag and size >= next_report:
                put(f"{tag}.progress", str(size))
                next_report = size + (1 << 20)
        if tag:
            put(f"{tag}.progress", str(size))
        return send_json(
            start_response, {"sha256": digest.hexdigest(), "size": size, "reads": reads}
        )

    if path == "/ignore-body":
        return simple(start_response, b"ignored")

    if path == "/scribble":
        del environ["SERVER_NAME"]
        environ["wsgi.url_scheme"] = "gopher"
        environ["app.note"] = "left behind"
        return simple(start_response, b"scribbled")

    if path == "/errors":
        errors = environ["wsgi.errors"]
        errors.write("wsgi-errors-line-one from the app\n")
        errors.writelines(["wsgi-errors-line-two ", "via writelines\n"])
        errors.writelines(part for part in ("wsgi-errors-line-three ", "from a generator\n"))
        errors.flush()
        return simple(start_response, b"logged")

    if path == "/errors-partial":
        environ["wsgi.errors"].write("wsgi-errors-partial-line")
        return simple(start_response, b"logged")

    if path == "/errors-records":
        errors = environ["wsgi.errors"]
        print("wsgi-errors-printed", 42, file=errors)
        errors.write("wsgi-errors-record first line\n  second line\n")
        errors.writelines(["wsgi-errors-writelines one\n", "wsgi-errors-writelines two\n"])
        for _ in range(100):
            errors.write("x" * 1000)
        errors.flush()
        errors.write("wsgi-errors-unended")
        return simple(start_response, b"logged")

    if path == "/errors-late":
        go = environ["QUERY_STRING"]
        held = [environ["wsgi.errors"]]

        def late() -> None:
            while not os.path.exists(go):
                time.sleep(0.01)
            errors = held.pop()
            errors.write("wsgi-errors-late-partial")
            del errors
            open(go + ".done", "w").close()

        threading.Thread(target=late, daemon=True).start()
        return simple(start_response, b"started")

    if path == "/ids":
        ids = {"start_response": id(start_response), "errors": id(environ["wsgi.errors"])}
        return send_json(start_response, ids)

    if path == "/start-then-raise":
        start_response("201 Created", [("X-Stale", "yes")])
        raise RuntimeError("raised after start_response")

    if path == "/keep":
        KEPT["start_response"] = start_response
        KEPT["write"] = start_response("200 OK", [("Content-Length", "4")])
        return [b"kept"]

    if path == "/keep-weak":
        KEPT["weak"] = weakref.ref(start_response)
        return simple(start_response, b"kept")

    if path == "/use-weak-kept":
        kept = KEPT["weak"]()
        out = {"alive": kept is not None, "same": kept is start_response, "call": None}
        if kept is not None:
            try:
                kept("500 Leaked", [])
            except Exception as exc:  # noqa: BLE001 - reported to the test
                out["call"] = repr(exc)
        return send_json(start_response, out)

    if path == "/use-kept":
        out = {"same": start_response is KEPT["start_response"]}
        for name, call in [
            ("write", lambda: KEPT["write"](b"leak")),
            ("start_response", lambda: KEPT["start_response"]("500 Leaked", [])),
        ]:
            try:
                call()
                out[name] = None
            except Exception as exc:  # noqa: BLE001 - reported to the test
                out[name] = repr(exc)
        return send_json(start_response, out)

    if path == "/framing/cl":
        return simple(start_response, b"hello world")

    if path == "/framing/nolength":
        start_response("200 OK", [("Content-Type", "text/plain")])

        def gen():
            yield b"hello "
            time.sleep(0.05)
            yield b"world"

        return gen()

    if path == "/framing/empty":
        return simple(start_response, b"")

    out = describe(environ)
    out["body"] = inp.read().decode("latin-1")
    return send_json(start_response, out, extra=[("X-Method", environ["REQUEST_METHOD"])])
