"""A plain ASGI 3 application with one WebSocket behaviour per path, for tests/test_websocket.py.

Endpoints that report what they saw (the disconnect message, the exception raised by a late
send()) write it as JSON to `$WS_MARKER_DIR/<name>.json`, where <name> is the query string's
`id` parameter (default: the endpoint's name). The file is written to a temporary name and
renamed, so a test that sees it sees all of it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from urllib.parse import parse_qs

import rsasgi


def _text(value):
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return value


def describe_scope(scope: dict) -> dict:
    """The scope as JSON-able data, plus the Python types of the interesting values."""
    headers = scope.get("headers")
    return {
        "keys": sorted(scope),
        "type": scope["type"],
        "asgi": scope.get("asgi"),
        "http_version": scope.get("http_version"),
        "scheme": scope.get("scheme"),
        "path": scope.get("path"),
        "raw_path": _text(scope.get("raw_path")),
        "raw_path_type": type(scope.get("raw_path")).__name__,
        "query_string": _text(scope.get("query_string")),
        "query_string_type": type(scope.get("query_string")).__name__,
        "root_path": scope.get("root_path"),
        "headers": [[_text(name), _text(value)] for name, value in headers or []],
        "headers_are_byte_pairs": isinstance(headers, (list, tuple))
        and all(
            isinstance(pair, (list, tuple))
            and len(pair) == 2
            and isinstance(pair[0], bytes)
            and isinstance(pair[1], bytes)
            for pair in headers
        ),
        "client": list(scope["client"]) if scope.get("client") else None,
        "server": list(scope["server"]) if scope.get("server") else None,
        "subprotocols": scope.get("subprotocols"),
        "subprotocols_type": type(scope.get("subprotocols")).__name__,
        "state": dict(scope["state"]) if isinstance(scope.get("state"), dict) else None,
        "state_type": type(scope.get("state")).__name__,
        "extensions": scope.get("extensions"),
    }


def record(scope: dict, default_name: str, data) -> None:
    directory = os.environ.get("WS_MARKER_DIR")
    if not directory:
        return
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    name = query.get("id", [default_name])[0]
    path = os.path.join(directory, f"{name}.json")
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as out:
        json.dump(data, out)
    os.replace(tmp, path)


async def lifespan(scope, receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if "state" in scope:
                scope["state"]["started_by"] = "ws_app lifespan"
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def http(scope, receive, send):
    """Plain HTTP: /ping answers "pong"; anything else answers with the scope as JSON."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            break
    if scope["path"] == "/ping":
        body = b"pong"
        content_type = b"text/plain"
    else:
        body = json.dumps(describe_scope(scope), default=repr).encode()
        content_type = b"application/json"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", content_type), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def wait_disconnect(receive) -> dict:
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return message


async def ws_scope(scope, receive, send):
    """Accept, send the scope as JSON text, then wait for the client to go."""
    await receive()
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": json.dumps(describe_scope(scope), default=repr)})
    await wait_disconnect(receive)


async def ws_echo(scope, receive, send):
    """Echo every message back as it came (text as text, bytes as bytes)."""
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


async def ws_describe(scope, receive, send):
    """Echo a description of each message: its keys and which of text/bytes is set, and lengths."""
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        text, data = message.get("text"), message.get("bytes")
        await send(
            {
                "type": "websocket.send",
                "text": json.dumps(
                    {
                        "type": message["type"],
                        "text": text,
                        "bytes_len": None if data is None else len(data),
                        "bytes_type": type(data).__name__,
                    }
                ),
            }
        )


async def ws_subprotocol(scope, receive, send):
    """Pick "b" when the client offers it (or ?force=NAME, whatever the offer); tell the
    client what was offered."""
    await receive()
    offered = scope.get("subprotocols") or []
    forced = parse_qs(scope["query_string"].decode()).get("force")
    chosen = forced[0] if forced else "b" if "b" in offered else None
    await send({"type": "websocket.accept", "subprotocol": chosen})
    await send({"type": "websocket.send", "text": json.dumps(offered)})
    await wait_disconnect(receive)


async def ws_accept_headers(scope, receive, send):
    await receive()
    await send(
        {
            "type": "websocket.accept",
            "headers": [(b"x-ws-extra", b"yes"), (b"set-cookie", b"session=abc; Path=/")],
        }
    )
    await send({"type": "websocket.send", "text": "accepted"})
    await wait_disconnect(receive)


async def ws_accept_extension(scope, receive, send):
    """Accepts naming an extension itself, which only the server may answer; then says
    "accepted" and echoes text until the client goes."""
    await receive()
    await send(
        {
            "type": "websocket.accept",
            "headers": [(b"sec-websocket-extensions", b"x-made-up-extension")],
        }
    )
    await send({"type": "websocket.send", "text": "accepted"})
    while (message := await receive())["type"] != "websocket.disconnect":
        await send({"type": "websocket.send", "text": message.get("text") or ""})


async def ws_app_close(scope, receive, send):
    await receive()
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": "closing soon"})
    await send({"type": "websocket.close", "code": 4321, "reason": "custom reason"})


async def ws_deny(scope, receive, send):
    await receive()
    await send({"type": "websocket.close"})


async def ws_http_response(scope, receive, send):
    """The websocket.http.response extension: answer the upgrade with a 401 of our own, its
    body b"auth required" in two pieces (with ?length=N, under a Content-Length of N)."""
    await receive()
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1000})
        return
    headers = [(b"content-type", b"text/plain"), (b"www-authenticate", b'Bearer realm="ws"')]
    length = parse_qs(scope["query_string"].decode()).get("length")
    if length:
        headers.append((b"content-length", length[0].encode()))
    await send({"type": "websocket.http.response.start", "status": 401, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": b"auth ", "more_body": True})
    await send({"type": "websocket.http.response.body", "body": b"required"})


async def ws_accept_misuse(scope, receive, send):
    """?what=after-denial: accept once a denial response has begun; ?what=subprotocol: accept
    naming a subprotocol that is not a token; ?what=status-101: a denial response of status
    101. The error the accept raised (or "accepted") is the body of the denial response the
    app then sends."""
    await receive()
    what = parse_qs(scope["query_string"].decode())["what"][0]
    started = False
    try:
        if what == "after-denial":
            await send({"type": "websocket.http.response.start", "status": 401, "headers": []})
            started = True
            await send({"type": "websocket.accept"})
        elif what == "status-101":
            await send({"type": "websocket.http.response.start", "status": 101, "headers": []})
        else:
            await send({"type": "websocket.accept", "subprotocol": "chat\nx"})
        outcome = "accepted"
    except Exception as err:  # noqa: BLE001 - what was raised is the answer
        outcome = f"{type(err).__name__}: {err}"
    if not started:
        await send({"type": "websocket.http.response.start", "status": 409, "headers": []})
    await send({"type": "websocket.http.response.body", "body": outcome.encode()})


async def ws_send_surrogate(scope, receive, send):
    """Accepts, sends text with a lone surrogate (no UTF-8 can carry it), then sends what
    that raised as a message of its own."""
    await receive()
    await send({"type": "websocket.accept"})
    try:
        await send({"type": "websocket.send", "text": "a\ud800b"})
        outcome = "sent"
    except Exception as err:  # noqa: BLE001 - what was raised is the answer
        outcome = f"{type(err).__name__}: {err}"
    await send({"type": "websocket.send", "text": outcome})
    await send({"type": "websocket.close"})


async def ws_http_response_unfinished(scope, receive, send):
    """A denial response begun, one body message with more_body=True, and then the app
    returns: it never finished its response."""
    await receive()
    await send({"type": "websocket.http.response.start", "status": 401, "headers": []})
    await send({"type": "websocket.http.response.body", "body": b"auth ", "more_body": True})


async def ws_raise_after_accept(scope, receive, send):
    await receive()
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": "about to fail"})
    raise RuntimeError("ws_app boom after accept")


async def ws_cancel_after_accept(scope, receive, send):
    await receive()
    await send({"type": "websocket.accept"})
    # The app's own CancelledError: no shutdown asked for it.
    raise asyncio.CancelledError("ws_app cancelled itself")


async def ws_raise_before_accept(scope, receive, send):
    await receive()
    raise RuntimeError("ws_app boom before accept")


async def ws_raise_after_disconnect(scope, receive, send):
    await receive()
    await send({"type": "websocket.accept"})
    await wait_disconnect(receive)
    raise RuntimeError("ws_app boom after the disconnect")


async def ws_return_after_accept(scope, receive, send):
    await receive()
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": "bye"})


async def ws_record_disconnect(scope, receive, send):
    """Accept, echo until the client goes, then record the disconnect message."""
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            record(scope, "record_disconnect", message)
            return
        await send({"type": "websocket.send", "text": message.get("text") or "bytes"})


def _exception_info(exc: BaseException | None) -> dict:
    if exc is None:
        return {"raised": False}
    return {
        "raised": True,
        "type": type(exc).__name__,
        "module": type(exc).__module__,
        "is_oserror": isinstance(exc, OSError),
        "message": str(exc),
    }


async def ws_send_after_disconnect(scope, receive, send):
    """Wait for websocket.disconnect, then send(); record what send() raised."""
    await receive()
    await send({"type": "websocket.accept"})
    message = await wait_disconnect(receive)
    try:
        await send({"type": "websocket.send", "text": "too late"})
    except BaseException as exc:  # noqa: BLE001 - recording whatever it is
        record(scope, "send_after_disconnect", {"disconnect": message, **_exception_info(exc)})
        return
    record(scope, "send_after_disconnect", {"disconnect": message, **_exception_info(None)})


async def send_until_error(send, message: dict, seconds: float = 60) -> dict:
    """Send `message` as fast as send() returns until it raises (for up to `seconds`); what it
    raised, and how many sends were taken."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    error, sent = None, 0
    while loop.time() < deadline:
        try:
            await send(message)
        except BaseException as exc:  # noqa: BLE001 - recording whatever it is
            error = exc
            break
        sent += 1
    info = _exception_info(error)
    info["client_disconnected"] = isinstance(error, rsasgi.ClientDisconnected)
    info["sent"] = sent
    return info


async def ws_busy_when_closed(scope, receive, send):
    """A handler busy when the client leaves (a Channels consumer's pattern): take one
    message, wait until ?gone= names a file (the client wrote it after closing), send three
    replies without receiving, then receive(). Record what the sends raised and what receive()
    returned."""
    await receive()
    await send({"type": "websocket.accept"})
    await receive()
    gone = parse_qs(scope["query_string"].decode())["gone"][0]
    for _ in range(200):
        if os.path.exists(gone):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # the close reaches the server
    try:
        for number in range(3):
            await send({"type": "websocket.send", "text": f"reply {number}"})
    except BaseException as exc:  # noqa: BLE001 - recording whatever it is
        sent = _exception_info(exc)
    else:
        sent = _exception_info(None)
    received = await asyncio.wait_for(receive(), 5)
    record(scope, "busy_when_closed", {"send": sent, "received": received})


async def ws_spin_after_close(scope, receive, send):
    """Echo one message, then send in a loop that awaits nothing but send() until it raises
    (for up to 60 s): once the client has gone, sends are dropped until the grace is over.
    Record the error and how many sends were taken after the first reply."""
    await receive()
    await send({"type": "websocket.accept"})
    message = await receive()
    await send({"type": "websocket.send", "text": message.get("text") or "bytes"})
    info = await send_until_error(send, {"type": "websocket.send", "text": "spin"})
    record(scope, "spin_after_close", info)


async def ws_close_after_disconnect(scope, receive, send):
    """Wait for websocket.disconnect, then send websocket.close; record what it raised."""
    await receive()
    await send({"type": "websocket.accept"})
    message = await wait_disconnect(receive)
    try:
        await send({"type": "websocket.close", "code": 1000})
    except BaseException as exc:  # noqa: BLE001 - recording whatever it is
        record(scope, "close_after_disconnect", {"disconnect": message, **_exception_info(exc)})
        return
    record(scope, "close_after_disconnect", {"disconnect": message, **_exception_info(None)})


async def ws_send_until_error(scope, receive, send):
    """Never receive; keep sending every 50 ms for up to 10 s and record the first error."""
    await receive()
    await send({"type": "websocket.accept"})
    error = None
    for number in range(200):
        try:
            await send({"type": "websocket.send", "text": f"tick {number}"})
        except BaseException as exc:  # noqa: BLE001 - recording whatever it is
            error = exc
            break
        await asyncio.sleep(0.05)
    record(scope, "send_until_error", _exception_info(error))


async def ws_flood(scope, receive, send):
    """Never receive; send 64 KiB binary messages as fast as send() returns (for up to 60 s)
    and record what the first failing send() raised."""
    await receive()
    await send({"type": "websocket.accept"})
    info = await send_until_error(send, {"type": "websocket.send", "bytes": b"\x00" * 65536})
    record(scope, "flood", info)


async def ws_close_attempts(scope, receive, send):
    """Accept, then send websocket.close for each ?try=CODE:REASON in order until one is
    taken; record, per attempt, whether send() raised and what."""
    await receive()
    await send({"type": "websocket.accept"})
    outcomes = []
    for attempt in parse_qs(scope["query_string"].decode())["try"]:
        code, _, reason = attempt.partition(":")
        try:
            await send({"type": "websocket.close", "code": int(code), "reason": reason})
        except BaseException as exc:  # noqa: BLE001 - recording whatever it is
            outcomes.append(_exception_info(exc))
            continue
        outcomes.append(_exception_info(None))
        break
    record(scope, "close_attempts", outcomes)


async def ws_never_read(scope, receive, send):
    """Accept and then never call receive() again (for a bounded time)."""
    await receive()
    await send({"type": "websocket.accept"})
    await asyncio.sleep(120)


async def ws_two_receivers(scope, receive, send):
    """One task waits in receive() while another receive() is made and cancelled at once (how
    anyio cancel scopes and Starlette's disconnect polling use it); then "ready". The waiting
    task echoes the next message as "got <text>"."""
    await receive()
    await send({"type": "websocket.accept"})
    waiting = asyncio.ensure_future(receive())
    await asyncio.sleep(0)
    for _ in range(3):
        polled = asyncio.ensure_future(receive())
        await asyncio.sleep(0)
        polled.cancel()
        await asyncio.sleep(0)
    await send({"type": "websocket.send", "text": "ready"})
    message = await waiting
    await send({"type": "websocket.send", "text": f"got {message.get('text')}"})
    await wait_disconnect(receive)


async def ws_two_senders(scope, receive, send):
    """Two tasks each send four 1 MiB messages to a client that is not reading yet, so both
    wait in send() at once; then "done"."""
    await receive()
    await send({"type": "websocket.accept"})

    async def sender(fill: bytes):
        for _ in range(4):
            await send({"type": "websocket.send", "bytes": fill * (1024 * 1024)})

    await asyncio.gather(sender(b"a"), sender(b"b"))
    await send({"type": "websocket.send", "text": "done"})
    await wait_disconnect(receive)


async def ws_slow_reader(scope, receive, send):
    """Accept, do not read for 1.5 s (or ?sleep= seconds), then read every message until the
    text "end" and answer with how many arrived and a digest of them in order."""
    import hashlib

    await receive()
    await send({"type": "websocket.accept"})
    await asyncio.sleep(float(parse_qs(scope["query_string"].decode()).get("sleep", ["1.5"])[0]))
    digest, count = hashlib.sha256(), 0
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") == "end":
            break
        data = message.get("bytes")
        if data is None:
            data = message["text"].encode()
        digest.update(data)
        count += 1
    await send({"type": "websocket.send", "text": json.dumps([count, digest.hexdigest()])})
    await wait_disconnect(receive)


async def ws_close_then_count(scope, receive, send):
    """Accept and close at once, wait ?sleep= seconds without reading, then count the messages
    receive() still hands over before websocket.disconnect; record the count and the
    disconnect."""
    await receive()
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": 1000})
    await asyncio.sleep(float(parse_qs(scope["query_string"].decode())["sleep"][0]))
    count = 0
    while (message := await receive())["type"] != "websocket.disconnect":
        count += 1
    record(scope, "close_then_count", {"count": count, "disconnect": message})


async def ws_refuse_then_use(scope, receive, send):
    """Refuse the handshake (?how=close for a 403, ?how=response for a denial response), then
    call receive() (bounded by 5 s) and websocket.send; record what each gave."""
    await receive()
    how = parse_qs(scope["query_string"].decode())["how"][0]
    if how == "close":
        await send({"type": "websocket.close"})
    else:
        await send({"type": "websocket.http.response.start", "status": 401, "headers": []})
        await send({"type": "websocket.http.response.body", "body": b"no"})
    try:
        received = await asyncio.wait_for(receive(), 5)
    except asyncio.TimeoutError:
        received = "receive() still waiting after 5 s"
    try:
        await send({"type": "websocket.send", "text": "too late"})
    except BaseException as exc:  # noqa: BLE001 - recording whatever it is
        sent = _exception_info(exc)
    else:
        sent = _exception_info(None)
    record(scope, "refuse_then_use", {"received": received, "send": sent})


async def ws_hold(scope, receive, send):
    """Accept and wait for the disconnect, recording it (used for the shutdown test)."""
    await receive()
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": "holding"})
    message = await wait_disconnect(receive)
    record(scope, "hold", message)


async def ws_clean_up_on_disconnect(scope, receive, send):
    """Accept and wait for the disconnect; then a clean-up that takes 1.5 s (a Channels
    `disconnect()` leaving its groups): it records the disconnect as it starts, and at its end
    whether the client had its close frame by then (the test leaves `client_closed` in the
    marker directory when it has)."""
    await receive()
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": "holding"})
    message = await wait_disconnect(receive)
    record(scope, "clean_up_started", message)
    directory = os.environ["WS_MARKER_DIR"]
    await asyncio.sleep(1.5)
    client_closed = os.path.exists(os.path.join(directory, "client_closed"))
    record(scope, "clean_up_done", {"client_closed": client_closed})


#: `websocket.close` messages whose code or reason no close frame could carry.
UNSENDABLE_CLOSES = {
    # FastAPI's handler for a WebSocket's validation error.
    "list-reason": {"code": 1008, "reason": [{"loc": ["query", "q"], "msg": "field required"}]},
    "long-reason": {"code": 1008, "reason": "x" * 124},
    "bytes-reason": {"code": 1000, "reason": b"bye"},
    "code-1005": {"code": 1005},
    "code-1006": {"code": 1006},
    "code-1015": {"code": 1015},
    "bytes-code": {"code": b"1000"},
}


async def ws_unsendable_close(scope, receive, send):
    """Send the `variant` of UNSENDABLE_CLOSES, before accept (after it with `accept=1`)."""
    query = parse_qs(scope["query_string"].decode())
    await receive()
    if "accept" in query:
        await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", **UNSENDABLE_CLOSES[query["variant"][0]]})


async def ws_accept_on_marker(scope, receive, send):
    """Record the handshake, accept it once the test leaves `accept` in the marker directory,
    then record the disconnect."""
    await receive()
    record(scope, "accept_on_marker_connect", {})
    accept = os.path.join(os.environ["WS_MARKER_DIR"], "accept")
    for _ in range(1000):
        if os.path.exists(accept):
            break
        await asyncio.sleep(0.02)
    await send({"type": "websocket.accept"})
    record(scope, "accept_on_marker", await wait_disconnect(receive))


WEBSOCKET_ROUTES = {
    "/echo": ws_echo,
    "/describe": ws_describe,
    "/subprotocol": ws_subprotocol,
    "/accept-headers": ws_accept_headers,
    "/accept-extension": ws_accept_extension,
    "/app-close": ws_app_close,
    "/deny": ws_deny,
    "/http-response": ws_http_response,
    "/http-response-unfinished": ws_http_response_unfinished,
    "/accept-misuse": ws_accept_misuse,
    "/send-surrogate": ws_send_surrogate,
    "/raise-after-accept": ws_raise_after_accept,
    "/cancel-after-accept": ws_cancel_after_accept,
    "/raise-before-accept": ws_raise_before_accept,
    "/raise-after-disconnect": ws_raise_after_disconnect,
    "/return-after-accept": ws_return_after_accept,
    "/record-disconnect": ws_record_disconnect,
    "/send-after-disconnect": ws_send_after_disconnect,
    "/busy-when-closed": ws_busy_when_closed,
    "/spin-after-close": ws_spin_after_close,
    "/close-after-disconnect": ws_close_after_disconnect,
    "/send-until-error": ws_send_until_error,
    "/flood": ws_flood,
    "/close-attempts": ws_close_attempts,
    "/never-read": ws_never_read,
    "/hold": ws_hold,
    "/accept-on-marker": ws_accept_on_marker,
    "/unsendable-close": ws_unsendable_close,
    "/clean-up-on-disconnect": ws_clean_up_on_disconnect,
    "/close-then-count": ws_close_then_count,
    "/refuse-then-use": ws_refuse_then_use,
    "/slow-reader": ws_slow_reader,
    "/two-receivers": ws_two_receivers,
    "/two-senders": ws_two_senders,
}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await lifespan(scope, receive, send)
    elif scope["type"] == "http":
        await http(scope, receive, send)
    elif scope["type"] == "websocket":
        root = scope.get("root_path", "")
        path = scope["path"]
        if root and path.startswith(root):
            path = path[len(root) :]
        if path.startswith("/scope"):
            await ws_scope(scope, receive, send)
            return
        handler = WEBSOCKET_ROUTES.get(path)
        if handler is None:
            print(f"ws_app: no websocket route for {path!r}", file=sys.stderr)
            await receive()
            await send({"type": "websocket.close", "code": 1000})
            return
        await handler(scope, receive, send)
