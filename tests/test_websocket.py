"""WebSockets end to end: the `websockets` client (asyncio API) and raw sockets against
tests/apps/ws_app.py served by rsasgi.

Every network wait is bounded: client coroutines run under `asyncio.wait_for`, raw sockets have
timeouts, and files the app writes are polled with a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import signal
import socket
import struct
import time
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from apps.proto_raw import RawConn, recv_until_closed, request
from apps.ws_raw import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameReader,
    encode_frame,
    raw_handshake,
    read_http_response,
    upgrade,
)
from conftest import wait_for, wait_for_log
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

APP = "ws_app:app"


# --------------------------------------------------------------------------- helpers


def run(coro, timeout: float = 30.0):
    """Run one client coroutine to completion, failing if it takes longer than `timeout`."""

    async def bounded():
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def ws_url(server, path: str) -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


def ws_connect(server, path: str, **kwargs):
    kwargs.setdefault("open_timeout", 10)
    kwargs.setdefault("close_timeout", 5)
    kwargs.setdefault("max_size", 8 * 1024 * 1024)
    return connect(ws_url(server, path), **kwargs)


async def expect_close(ws, timeout: float = 10.0) -> tuple[int | None, str | None]:
    """Read until the server closes; return the code and reason of the close frame it sent
    (None, None when the connection ended without a close frame)."""

    async def drain():
        while True:
            await ws.recv()

    try:
        await asyncio.wait_for(drain(), timeout)
    except ConnectionClosed as closed:
        if closed.rcvd is None:
            return None, None
        return closed.rcvd.code, closed.rcvd.reason
    raise AssertionError("unreachable")


async def send_expect_close(ws, message, timeout: float = 10.0) -> tuple[int | None, str | None]:
    """Send a message the server must refuse, then return its close code and reason. The
    server may close before the client has finished writing a big message, so send() itself
    may see the close."""
    try:
        await ws.send(message)
    except ConnectionClosed as closed:
        if closed.rcvd is None:
            return None, None
        return closed.rcvd.code, closed.rcvd.reason
    return await expect_close(ws, timeout)


@pytest.fixture
def ws_server(run_rsasgi, markers):
    """rsasgi serving ws_app with default options."""
    return run_rsasgi(APP, env={"WS_MARKER_DIR": str(markers)})


def wait_marker(directory: Path, name: str, timeout: float = 10.0) -> dict:
    path = directory / f"{name}.json"
    wait_for(path.exists, timeout, message=f"the app to write {path.name}")
    return json.loads(path.read_text())


def memory_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (rsasgi may run worker processes)."""
    pids, index = [pid], 0
    while index < len(pids):
        for task in Path(f"/proc/{pids[index]}/task").iterdir():
            children = (task / "children").read_text().split()
            pids.extend(int(child) for child in children)
        index += 1
    return pids


def tree_memory_kib(pid: int, field: str = "VmRSS") -> int:
    return sum(memory_kib(p, field) for p in process_tree(pid))


# --------------------------------------------------------------------------- scope


def test_scope(ws_server):
    async def client():
        async with ws_connect(
            ws_server,
            "/scope/x%20y?a=1&b=%C3%A9",
            subprotocols=["chat", "superchat"],
            additional_headers={"X-Custom": "yes"},
        ) as ws:
            # The app accepted without a subprotocol, so the client got none.
            assert ws.subprotocol is None
            return json.loads(await ws.recv())

    scope = run(client())
    assert scope["type"] == "websocket"
    assert scope["asgi"]["version"] == "3.0"
    assert scope["asgi"].get("spec_version") == "2.5"
    assert scope["http_version"] == "1.1"
    assert scope["scheme"] == "ws"
    assert scope["path"] == "/scope/x y"
    assert scope["raw_path"] == "/scope/x%20y"
    assert scope["raw_path_type"] == "bytes"
    assert scope["query_string"] == "a=1&b=%C3%A9"
    assert scope["query_string_type"] == "bytes"
    assert scope["root_path"] == ""
    assert scope["headers_are_byte_pairs"] is True
    headers = scope["headers"]
    assert all(name == name.lower() for name, _ in headers), headers
    header_map = dict(headers)
    assert header_map["x-custom"] == "yes"
    assert header_map["host"] == f"127.0.0.1:{ws_server.port}"
    assert header_map["upgrade"].lower() == "websocket"
    assert header_map["sec-websocket-version"] == "13"
    assert "sec-websocket-key" in header_map
    assert header_map["sec-websocket-protocol"] == "chat, superchat"
    assert scope["client"][0] == "127.0.0.1"
    assert isinstance(scope["client"][1], int) and scope["client"][1] > 0
    assert scope["server"] == ["127.0.0.1", ws_server.port]
    assert scope["subprotocols"] == ["chat", "superchat"]
    assert scope["subprotocols_type"] == "list"
    assert scope["state"] == {"started_by": "ws_app lifespan"}
    assert "websocket.http.response" in scope["extensions"]
    for key in ("type", "asgi", "http_version", "scheme", "path", "raw_path", "query_string"):
        assert key in scope["keys"]
    for key in ("root_path", "headers", "client", "server", "subprotocols", "state"):
        assert key in scope["keys"]


def test_scope_under_root_path(run_rsasgi):
    server = run_rsasgi(APP, "--root-path", "/api")

    async def client():
        async with ws_connect(server, "/scope/here") as ws:
            return json.loads(await ws.recv())

    scope = run(client())
    assert scope["root_path"] == "/api"
    assert scope["path"] == "/api/scope/here"
    assert scope["raw_path"] == "/api/scope/here"
    assert scope["subprotocols"] == []


# --------------------------------------------------------------------------- messages


def test_echo_text_and_bytes(ws_server):
    big_text = "".join(chr(0x20 + (i % 90)) for i in range(1024 * 1024 - 3)) + "é✓"
    big_bytes = os.urandom(1024 * 1024)

    async def client():
        async with ws_connect(ws_server, "/echo") as ws:
            for message in ["hello", "héllo ✓ 😀", "", b"\x00\x01\xff", b"", big_text, big_bytes]:
                await ws.send(message)
                echoed = await ws.recv()
                assert type(echoed) is type(message), (type(echoed), type(message))
                assert echoed == message, f"echo of a {len(message)}-long message differs"
            await ws.close()
            return ws.close_code

    assert run(client()) == 1000


def test_message_type_reaches_the_app(ws_server):
    async def client():
        async with ws_connect(ws_server, "/describe") as ws:
            await ws.send("text here")
            as_text = json.loads(await ws.recv())
            await ws.send(b"12345")
            as_bytes = json.loads(await ws.recv())
            return as_text, as_bytes

    as_text, as_bytes = run(client())
    assert as_text["type"] == "websocket.receive"
    assert as_text["text"] == "text here"
    assert as_text["bytes_len"] is None
    assert as_bytes["type"] == "websocket.receive"
    assert as_bytes["text"] is None
    assert as_bytes["bytes_len"] == 5
    assert as_bytes["bytes_type"] == "bytes"


def test_fragmented_messages_are_reassembled(ws_server):
    async def client():
        async with ws_connect(ws_server, "/describe") as ws:
            # An iterable makes `websockets` send one message as several frames.
            await ws.send(["frag-1 ", "frag-2 ", "frag-3 é"])
            text = json.loads(await ws.recv())
            await ws.send([b"a" * 1000, b"b" * 70000, b"c"])
            data = json.loads(await ws.recv())
            return text, data

    text, data = run(client())
    assert text["text"] == "frag-1 frag-2 frag-3 é"
    assert data["bytes_len"] == 71001


def test_fragmented_message_over_raw_socket_with_ping_between(ws_server):
    """A text message in three frames with a ping between them arrives whole; the ping is
    answered in the middle of it."""
    sock, reader = raw_handshake(ws_server, "/echo")
    with sock:
        sock.sendall(
            encode_frame(OP_TEXT, "hé".encode()[:2], fin=False)
            + encode_frame(OP_PING, b"mid", fin=True)
            + encode_frame(OP_CONT, "hé".encode()[2:] + b"l", fin=False)
            + encode_frame(OP_CONT, b"lo", fin=True)
        )
        frames = [reader.frame(), reader.frame()]
        assert (OP_PONG, True, b"mid") in frames, frames
        assert (OP_TEXT, True, "héllo".encode()) in frames, frames
        sock.sendall(encode_frame(OP_CLOSE, struct.pack("!H", 1000)))
        code, _ = reader.close_code()
        assert code == 1000


# --------------------------------------------------------------------------- handshake


def test_subprotocol_negotiation(ws_server):
    async def client():
        async with ws_connect(ws_server, "/subprotocol", subprotocols=["a", "b"]) as ws:
            offered = json.loads(await ws.recv())
            return ws.subprotocol, offered, ws.response.headers.get("sec-websocket-protocol")

    chosen, offered, header = run(client())
    assert offered == ["a", "b"]
    assert chosen == "b"
    assert header == "b"


def test_a_subprotocol_the_client_did_not_offer_goes_out_with_a_warning(ws_server):
    """RFC 6455 §4.2.2: the server picks one of the client's offers, and a client that keeps
    to §4.1 fails a connection whose 101 names another. It goes out as the app asked (as
    uvicorn sends it), and the log says why such clients fail, once."""
    for _ in range(2):
        sock, _, headers = upgrade(
            ws_server, "/subprotocol?force=other", b"Sec-WebSocket-Protocol: chat\r\n"
        )
        sock.close()
        assert headers.get(b"sec-websocket-protocol") == b"other", headers
    log = wait_for_log(
        ws_server,
        'websocket /subprotocol?force=other: the app accepted with subprotocol "other", which '
        "the client did not offer (it offered chat)",
    )
    assert log.count("which the client did not offer") == 1, log


def test_no_subprotocol_header_when_app_picks_none(ws_server):
    async def client():
        async with ws_connect(ws_server, "/subprotocol", subprotocols=["x"]) as ws:
            await ws.recv()
            return ws.subprotocol, ws.response.headers.get("sec-websocket-protocol")

    assert run(client()) == (None, None)


def test_accept_headers(ws_server):
    async def client():
        async with ws_connect(ws_server, "/accept-headers") as ws:
            assert await ws.recv() == "accepted"
            return ws.response.status_code, ws.response.headers

    status, headers = run(client())
    assert status == 101
    assert headers.get("x-ws-extra") == "yes"
    assert headers.get("set-cookie") == "session=abc; Path=/"
    assert headers.get("upgrade", "").lower() == "websocket"


def test_close_before_accept_is_403(ws_server):
    async def client():
        with pytest.raises(InvalidStatus) as info:
            async with ws_connect(ws_server, "/deny"):
                pass
        return info.value.response

    response = run(client())
    assert response.status_code == 403
    # The server still serves HTTP after the denial.
    assert httpx.get(f"{ws_server.url}/ping", timeout=10).text == "pong"


UNSENDABLE_CLOSES = [
    "list-reason",
    "long-reason",
    "bytes-reason",
    "code-1005",
    "code-1006",
    "code-1015",
    "bytes-code",
]


def test_a_close_before_accept_is_403_whatever_its_code_and_reason(ws_server):
    """Before accept no close frame goes out, so a code or reason no frame could carry is no
    error: the handshake gets its 403, quietly, as from uvicorn. FastAPI closes with a list of
    errors for the reason on every WebSocket validation error: that was a 500 and an ERROR
    traceback."""

    async def status(variant: str) -> int:
        with pytest.raises(InvalidStatus) as info:
            async with ws_connect(ws_server, f"/unsendable-close?variant={variant}"):
                pass
        return info.value.response.status_code

    statuses = {variant: run(status(variant)) for variant in UNSENDABLE_CLOSES}
    assert statuses == dict.fromkeys(UNSENDABLE_CLOSES, 403)
    output = ws_server.output()
    assert "ERROR" not in output, output
    assert "Exception in ASGI application" not in output, output


def test_after_accept_a_close_no_frame_can_carry_still_raises(ws_server):
    async def client():
        async with ws_connect(ws_server, "/unsendable-close?variant=long-reason&accept=1") as ws:
            return await expect_close(ws)

    code, _ = run(client())
    assert code == 1011
    wait_for_log(ws_server, "ValueError: websocket.close 'reason' is 124 bytes")


def test_http_response_extension(ws_server):
    async def client():
        with pytest.raises(InvalidStatus) as info:
            async with ws_connect(ws_server, "/http-response"):
                pass
        return info.value.response

    response = run(client())
    assert response.status_code == 401
    assert response.headers.get("www-authenticate") == 'Bearer realm="ws"'
    assert response.headers.get("content-type") == "text/plain"
    assert response.body == b"auth required"


def test_a_denial_response_closes_the_connection(ws_server):
    """The spec's denial response: "send a HTTP response and then close the connection" (as
    uvicorn does). It went out keep-alive, and a second request on the socket was served."""
    with ws_server.connect() as sock:
        conn = RawConn(sock)
        conn.send(
            request(
                "GET",
                "/http-response",
                [
                    ("Upgrade", "websocket"),
                    ("Connection", "Upgrade"),
                    ("Sec-WebSocket-Key", base64.b64encode(os.urandom(16)).decode()),
                    ("Sec-WebSocket-Version", "13"),
                ],
            )
        )
        response = conn.read_response()
        assert (response.status, response.body) == (401, b"auth required")
        assert response.header("connection") == "close", response.headers
        conn.send(request("GET", "/"))
        assert conn.read_until_closed(timeout=10) == b""


def test_a_denial_response_the_app_did_not_finish_is_a_500(ws_server):
    """Not the 403 of an app that closed before accepting: it meant to answer, and failed
    to (the denial goes out only once its last body message has come)."""

    async def client():
        with pytest.raises(InvalidStatus) as info:
            async with ws_connect(ws_server, "/http-response-unfinished"):
                pass
        return info.value.response

    assert run(client()).status_code == 500
    wait_for_log(ws_server, "without finishing its websocket.http.response")


def upgrade_answer(server, path: str, key_lines: bytes | None = None):
    """The head and body the server answers an upgrade request with (not a 101)."""
    if key_lines is None:
        key_lines = b"Sec-WebSocket-Key: %s\r\n" % base64.b64encode(os.urandom(16))
    conn = RawConn(server.connect())
    try:
        conn.send(
            b"GET %s HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            % path.encode()
            + key_lines
            + b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        head = conn.read_head()
        return head, conn.read_exact(int(head.header("content-length")))
    finally:
        conn.sock.close()


@pytest.mark.parametrize(
    ("what", "status", "raised"),
    [
        ("after-denial", 401, "RuntimeError: the websocket handshake was already answered"),
        ("subprotocol", 409, "ValueError: websocket.accept 'subprotocol' must be a token"),
        # The message named was http.response.start.
        (
            "status-101",
            409,
            "ValueError: websocket.http.response.start 'status' must be between 200 and 599, "
            "got 101",
        ),
    ],
)
def test_an_accept_the_server_cannot_honour_raises(ws_server, what, status, raised):
    """accept after a denial response began went out as a 101 after all; a subprotocol that
    is not a token was left out of the 101 without a word. Both raise now, and the app's
    denial (with the error as its body) is what the client gets."""
    head, body = upgrade_answer(ws_server, f"/accept-misuse?what={what}")
    assert head.status == status, (head.status_line, body)
    assert body.decode().startswith(raised), body


def test_text_with_a_lone_surrogate_raises_the_encoding_error(ws_server):
    """No UTF-8 carries a lone surrogate: send() raised "text must be a str" for a str."""

    async def client():
        async with ws_connect(ws_server, "/send-surrogate") as ws:
            return await ws.recv()

    assert run(client()).startswith(
        "UnicodeEncodeError: 'utf-8' codec can't encode character '\\ud800'"
    )


@pytest.mark.parametrize(
    "key_lines",
    [
        b"Sec-WebSocket-Key: x\r\n",
        b"Sec-WebSocket-Key: not base64 at all!\r\n",
        b"Sec-WebSocket-Key: AAAAAAAAAAA=\r\n",
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" * 2,
    ],
    ids=["short", "not-base64", "8-bytes", "twice"],
)
def test_a_key_that_is_not_16_bytes_in_base64_is_a_400(ws_server, key_lines):
    """RFC 6455 §4.2.1: the key is a random 16-byte value in base64, sent once; anything
    else is not a handshake (the websockets library and wsproto answer 400 too)."""
    head, body = upgrade_answer(ws_server, "/echo", key_lines)
    assert head.status == 400, (head.status_line, body)


@pytest.mark.parametrize("offer", [b"a b, c", b'x"y', b"chat, caf\xc3\xa9"])
def test_a_subprotocol_that_is_not_a_token_is_a_400(ws_server, offer):
    """RFC 6455 §4.1: each subprotocol is a token. `a b, c` reached the app as "a b", and an
    app that accepted the first offer raised: a 500 and a traceback per request. The app is
    not started (it would accept: none of these offers "b")."""
    key = b"Sec-WebSocket-Key: %s\r\n" % base64.b64encode(os.urandom(16))
    head, body = upgrade_answer(
        ws_server, "/subprotocol", key + b"Sec-WebSocket-Protocol: " + offer + b"\r\n"
    )
    assert head.status == 400, (head.status_line, body)


@pytest.mark.parametrize(("declared", "sent"), [(5, b"auth "), (50, b"auth required")])
def test_a_denial_response_is_framed_by_its_own_length(ws_server, declared, sent):
    """A denial whose Content-Length disagrees with its body would mis-frame the response:
    the client would read part of the body as something else, or wait for bytes that never
    come. The body is cut to a shorter header; a longer header is put right. Then the
    connection closes, as after any denial, with no more bytes than the header says (a
    request pipelined behind the handshake is not answered)."""
    key = base64.b64encode(os.urandom(16))
    conn = RawConn(ws_server.connect())
    conn.send(
        b"GET /http-response?length=%d HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
        % (declared, key)
        + request("GET", "/ping")
    )
    head = conn.read_head()
    assert (head.status, head.header("content-length")) == (401, str(len(sent)))
    assert conn.read_exact(len(sent)) == sent
    assert conn.read_until_closed(timeout=10) == b""
    wait_for_log(ws_server, f"websocket.http.response has Content-Length {declared} but a body")


@pytest.mark.parametrize(("how", "status"), [("close", 403), ("response", 401)])
def test_after_a_refused_handshake_receive_is_a_disconnect_and_send_raises(
    ws_server, markers, how, status
):
    """An app that refused the handshake (websocket.close before accept, or a denial response)
    and then calls receive(), as Starlette's WebSocketEndpoint does, is told at once that the
    connection is over (1006, as uvicorn says), and websocket.send raises an OSError, as on any
    closed connection."""
    sock = ws_server.connect()
    with sock:
        sock.sendall(
            f"GET /refuse-then-use?how={how} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        assert read_http_response(sock)[0] == status
    info = wait_marker(markers, "refuse_then_use")
    assert info["received"] == {"type": "websocket.disconnect", "code": 1006, "reason": ""}
    assert info["send"]["is_oserror"], info


def test_app_exception_before_accept_is_500(ws_server):
    async def client():
        with pytest.raises(InvalidStatus) as info:
            async with ws_connect(ws_server, "/raise-before-accept"):
                pass
        return info.value.response

    assert run(client()).status_code == 500
    wait_for_log(ws_server, "ws_app boom before accept")


def test_upgrade_after_a_keep_alive_request_on_the_same_connection(ws_server):
    sock = ws_server.connect()
    with sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, _, body = read_http_response(sock)
        assert (status, body) == (200, b"pong")
        key = base64.b64encode(os.urandom(16))
        sock.sendall(
            b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        head, rest = data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head
        reader = FrameReader(sock, rest)
        sock.sendall(encode_frame(OP_TEXT, b"same connection"))
        assert reader.frame() == (OP_TEXT, True, b"same connection")


def test_upgrade_handshake_over_raw_socket(ws_server):
    """Sec-WebSocket-Accept is computed from the key (checked in raw_handshake), and frames
    flow right after the 101."""
    sock, reader = raw_handshake(ws_server, "/echo")
    with sock:
        sock.sendall(encode_frame(OP_TEXT, b"raw hello") + encode_frame(OP_BINARY, b"\x00raw"))
        assert reader.frame() == (OP_TEXT, True, b"raw hello")
        assert reader.frame() == (OP_BINARY, True, b"\x00raw")
        sock.sendall(encode_frame(OP_CLOSE, struct.pack("!H", 1000) + b"done"))
        code, seen = reader.close_code()
        assert code == 1000, seen


# --------------------------------------------------------------------------- closing


def test_app_close_code_and_reason(ws_server):
    async def client():
        async with ws_connect(ws_server, "/app-close") as ws:
            assert await ws.recv() == "closing soon"
            return await expect_close(ws)

    assert run(client()) == (4321, "custom reason")


def test_app_exception_after_accept_is_1011(ws_server):
    async def client():
        async with ws_connect(ws_server, "/raise-after-accept") as ws:
            assert await ws.recv() == "about to fail"
            return await expect_close(ws)

    code, _ = run(client())
    assert code == 1011
    wait_for_log(ws_server, "ws_app boom after accept")
    # The server is still serving.
    assert httpx.get(f"{ws_server.url}/ping", timeout=10).text == "pong"


def test_an_app_that_raises_after_the_client_closed_is_not_said_to_close_with_1011(ws_server):
    """The client closed first (4000): the line says so, where it said "(closed with 1011)" of
    a connection that was over, perhaps long before."""

    async def client():
        async with ws_connect(ws_server, "/raise-after-disconnect") as ws:
            await ws.close(4000)

    run(client())
    log = wait_for_log(ws_server, "ws_app boom after the disconnect")
    assert (
        'Exception in ASGI application on websocket "/raise-after-disconnect" '
        "(the connection had already closed with 4000)"
    ) in log, log


def test_a_cancelled_error_the_app_raises_is_logged_as_its_error(ws_server):
    """It was not logged at all, as if a shutdown had cancelled the app."""

    async def client():
        async with ws_connect(ws_server, "/cancel-after-accept") as ws:
            return await expect_close(ws)

    code, _ = run(client())
    assert code == 1011
    log = wait_for_log(ws_server, "CancelledError: ws_app cancelled itself")
    assert 'Exception in ASGI application on websocket "/cancel-after-accept"' in log


def test_app_returning_without_close_is_1000(ws_server):
    async def client():
        async with ws_connect(ws_server, "/return-after-accept") as ws:
            assert await ws.recv() == "bye"
            return await expect_close(ws)

    code, _ = run(client())
    assert code == 1000


# RFC 6455 7.4: 1004-1006 and 1015 are reserved and never sent; 1016-2999 belong to future
# versions of the protocol; a close code is 1000-4999. 7.1.6 / 5.5: the reason fits in a
# control frame, 125 bytes less the two of the code.
REFUSED_CLOSE_CODES = [999, 1004, 1005, 1006, 1015, 2999, 5000]
SENT_CLOSE_CODES = [1000, 1001, 1011, 3000, 4999]
LONGEST_REASON = "é" * 61 + "r"  # 123 bytes in UTF-8
TOO_LONG_REASON = "é" * 62  # 124 bytes in UTF-8, only 62 characters


def close_attempts(server, markers, name: str, attempts: list[tuple[int, str]]):
    """Have /close-attempts try each (code, reason) in turn; return what the client received
    and what the app recorded for each attempt."""
    query = urlencode([("id", name)] + [("try", f"{code}:{reason}") for code, reason in attempts])

    async def client():
        async with ws_connect(server, f"/close-attempts?{query}") as ws:
            return await expect_close(ws)

    received = run(client())
    return received, wait_marker(markers, name)


@pytest.mark.parametrize(
    "code, then",
    [
        (code, SENT_CLOSE_CODES[n % len(SENT_CLOSE_CODES)])
        for n, code in enumerate(REFUSED_CLOSE_CODES)
    ],
)
def test_close_with_a_code_rfc_6455_forbids_raises_value_error(ws_server, markers, code, then):
    """The refused close leaves the connection open: a valid close after it reaches the client."""
    received, outcomes = close_attempts(
        ws_server, markers, f"refused-{code}", [(code, ""), (then, LONGEST_REASON)]
    )
    refused, *after = outcomes
    assert refused.get("type") == "ValueError", outcomes
    assert "RFC 6455" in refused["message"], outcomes
    assert after == [{"raised": False}], outcomes
    assert received == (then, LONGEST_REASON)


def test_close_reason_over_123_bytes_raises_value_error(ws_server, markers):
    received, outcomes = close_attempts(
        ws_server, markers, "long-reason", [(1000, TOO_LONG_REASON), (1000, LONGEST_REASON)]
    )
    refused, *after = outcomes
    assert refused.get("type") == "ValueError", outcomes
    assert "RFC 6455" in refused["message"], outcomes
    assert after == [{"raised": False}], outcomes
    assert received == (1000, LONGEST_REASON)


@pytest.mark.parametrize("code, reason", [(4001, "bye"), (1000, ""), (1001, "going away é")])
def test_client_close_code_seen_by_app(ws_server, markers, code, reason):
    name = f"client-close-{code}"

    async def client():
        async with ws_connect(ws_server, f"/record-disconnect?id={name}") as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
            await ws.close(code, reason)
            # The server answers the close handshake with the same code.
            return ws.close_code

    assert run(client()) == code
    message = wait_marker(markers, name)
    assert message["type"] == "websocket.disconnect"
    assert message["code"] == code
    assert message.get("reason", "") == reason


@pytest.mark.parametrize("how", ["fin", "rst", "abort"])
def test_abrupt_tcp_drop_is_disconnect_1006(ws_server, markers, how):
    name = f"drop-{how}"
    if how == "abort":

        async def client():
            ws = await ws_connect(ws_server, f"/record-disconnect?id={name}")
            await ws.send("hi")
            assert await ws.recv() == "hi"
            ws.transport.abort()

        run(client())
    else:
        sock, reader = raw_handshake(ws_server, f"/record-disconnect?id={name}")
        sock.sendall(encode_frame(OP_TEXT, b"hi"))
        assert reader.frame() == (OP_TEXT, True, b"hi")
        if how == "rst":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    message = wait_marker(markers, name)
    assert message["type"] == "websocket.disconnect"
    assert message["code"] == 1006


def test_send_after_disconnect_is_dropped_quietly_within_the_grace(ws_server, markers):
    """Within --ws-closed-send-grace (10 s) of the close, send() drops its message and returns,
    as Daphne, Hypercorn and granian do."""

    async def client():
        async with ws_connect(ws_server, "/send-after-disconnect") as ws:
            await ws.close(1000)

    run(client())
    info = wait_marker(markers, "send_after_disconnect")
    assert info["disconnect"]["code"] == 1000
    assert not info["raised"], info


def test_send_after_disconnect_raises_oserror_without_a_grace(run_rsasgi, markers):
    """--ws-closed-send-grace 0: send() on a closed connection raises at once, as uvicorn's does
    (ASGI 2.4: a server-specific OSError)."""
    server = run_rsasgi(APP, "--ws-closed-send-grace", "0", env={"WS_MARKER_DIR": str(markers)})

    async def client():
        async with ws_connect(server, "/send-after-disconnect") as ws:
            await ws.close(1000)

    run(client())
    info = wait_marker(markers, "send_after_disconnect")
    assert info["disconnect"]["code"] == 1000
    assert info["raised"], "send() after websocket.disconnect did not raise"
    assert info["is_oserror"], info
    assert info["module"] == "rsasgi", info
    assert "Exception in ASGI application" not in server.output()


@pytest.mark.parametrize("how", ["close-frame", "tcp-drop"])
def test_a_handler_busy_when_the_client_left_gets_back_to_receive(
    ws_server, markers, tmp_path, how
):
    """An app busy with a message when the client leaves (a Channels consumer replying) sends
    without receiving in between: the sends return, and its next receive() is the
    websocket.disconnect, so its disconnect handler runs. A send that raised would have ended
    the consumer before it."""
    gone = tmp_path / f"gone-{how}"
    name = f"busy-{how}"
    sock, reader = raw_handshake(ws_server, f"/busy-when-closed?id={name}&gone={gone}")
    with sock:
        sock.sendall(encode_frame(OP_TEXT, b"work"))
        if how == "close-frame":
            sock.sendall(encode_frame(OP_CLOSE, struct.pack("!H", 1001)))
            assert reader.close_code()[0] == 1001
    gone.touch()
    info = wait_marker(markers, name)
    assert not info["send"]["raised"], info
    assert info["received"]["type"] == "websocket.disconnect", info
    assert info["received"]["code"] == (1001 if how == "close-frame" else 1006), info


def test_a_send_loop_after_the_close_leaves_the_worker_to_others_and_then_raises(
    run_rsasgi, markers
):
    """An app that sends in a loop awaiting nothing else keeps sending after the client left:
    its dropped sends give the event loop a turn each, so the worker's other connections are
    served meanwhile, and once the grace is over send() raises ClientDisconnected and the app
    ends."""
    server = run_rsasgi(APP, "--ws-closed-send-grace", "3", env={"WS_MARKER_DIR": str(markers)})

    async def client():
        async with ws_connect(server, "/spin-after-close?id=spin") as spinning:
            await spinning.send("go")
            assert await spinning.recv() == "go"
        # The app now spins on a closed connection; the worker still answers others.
        for attempt in range(3):
            async with ws_connect(server, "/echo") as other:
                await other.send(f"still there {attempt}?")
                assert await asyncio.wait_for(other.recv(), 5) == f"still there {attempt}?"
            async with httpx.AsyncClient(timeout=5) as http:
                assert (await http.get(f"{server.url}/ping")).text == "pong"
            await asyncio.sleep(0.3)

    run(client())
    info = wait_marker(markers, "spin", timeout=30)
    assert info["client_disconnected"], info
    assert "Exception in ASGI application" not in server.output()


def test_close_after_disconnect_returns_quietly(ws_server, markers):
    """websocket.close on a connection the client closed does not raise (websocket.send there
    does): the connection is closed, as the app asks, and an app that closes in a `finally`
    after the disconnect goes on."""

    async def client():
        async with ws_connect(ws_server, "/close-after-disconnect") as ws:
            await ws.close(1000)

    run(client())
    info = wait_marker(markers, "close_after_disconnect")
    assert info["disconnect"]["code"] == 1000
    assert not info["raised"], info


@pytest.mark.parametrize("how", ["close-frame", "tcp-drop"])
def test_send_to_gone_client_raises_oserror_after_the_grace(run_rsasgi, markers, how):
    """The app never calls receive(); it keeps sending every 50 ms after the client went away.
    Once --ws-closed-send-grace is over, send() raises and the app stops."""
    server = run_rsasgi(APP, "--ws-closed-send-grace", "1", env={"WS_MARKER_DIR": str(markers)})
    name = f"gone-{how}"
    sock, reader = raw_handshake(server, f"/send-until-error?id={name}")
    opcode, _, payload = reader.frame()
    assert (opcode, payload) == (OP_TEXT, b"tick 0")
    if how == "close-frame":
        sock.sendall(encode_frame(OP_CLOSE, struct.pack("!H", 1000)))
        code, _ = reader.close_code()
        assert code == 1000
    sock.close()
    info = wait_marker(markers, name, timeout=15)
    assert info["raised"], "send() kept succeeding for 10 s after the client went away"
    assert info["is_oserror"], info


def test_client_that_stops_reading_is_closed_and_the_pending_send_raises(run_rsasgi, markers):
    """The client completes the handshake and never reads again: the TCP buffers fill, the
    app's send() waits, and the client cannot answer pings. The ping timeout ends it: the
    server closes the connection, and the app's sends raise rsasgi.ClientDisconnected (once
    --ws-closed-send-grace is over: no grace here)."""
    server = run_rsasgi(
        APP,
        "--ws-ping-interval",
        "1",
        "--ws-ping-timeout",
        "1",
        "--ws-closed-send-grace",
        "0",
        env={"WS_MARKER_DIR": str(markers)},
    )
    sock, _ = raw_handshake(server, "/flood")
    with sock:
        info = wait_marker(markers, "flood", timeout=20)
        assert info["client_disconnected"], info
        # Draining what the server had sent before it gave up reaches the end of the stream.
        recv_until_closed(sock, timeout=10)


# --------------------------------------------------------------------------- limits


def test_max_size_closes_with_1009(run_rsasgi):
    server = run_rsasgi(APP, "--ws-max-size", "1024")

    async def client():
        async with ws_connect(server, "/echo") as ws:
            exact = b"x" * 1024
            await ws.send(exact)
            assert await ws.recv() == exact
            return await send_expect_close(ws, b"y" * 2048)

    code, _ = run(client())
    assert code == 1009
    # The line names the setting to raise: it said only "Frame too large".
    wait_for_log(
        server,
        "closing websocket /echo with 1009: a message over --ws-max-size 1024 bytes; "
        "raise --ws-max-size",
    )


def test_max_size_counts_the_whole_fragmented_message(run_rsasgi):
    server = run_rsasgi(APP, "--ws-max-size", "1024")

    async def client():
        async with ws_connect(server, "/echo") as ws:
            return await send_expect_close(ws, ["a" * 600, "b" * 600])

    code, _ = run(client())
    assert code == 1009
    wait_for_log(server, "with 1009: a message (1200 bytes so far) over --ws-max-size 1024 bytes")


def test_default_max_size_is_16_mib(ws_server):
    async def client():
        async with ws_connect(ws_server, "/describe", max_size=None) as ws:
            await ws.send(b"z" * (16 * 1024 * 1024))
            assert json.loads(await ws.recv())["bytes_len"] == 16 * 1024 * 1024
            return await send_expect_close(ws, b"z" * (16 * 1024 * 1024 + 1), timeout=20)

    code, _ = run(client(), timeout=60)
    assert code == 1009


def test_100_concurrent_connections(ws_server):
    count = 100

    async def client():
        connections = await asyncio.gather(*(ws_connect(ws_server, "/echo") for _ in range(count)))
        try:
            # All 100 are open at once; each echoes its own messages.
            async def exchange(index, ws):
                for round_ in range(5):
                    message = f"conn {index} round {round_}"
                    await ws.send(message)
                    assert await ws.recv() == message
                await ws.send(index.to_bytes(4, "big") * 1000)
                assert await ws.recv() == index.to_bytes(4, "big") * 1000

            await asyncio.gather(*(exchange(i, ws) for i, ws in enumerate(connections)))
        finally:
            await asyncio.gather(*(ws.close() for ws in connections), return_exceptions=True)
        return [ws.close_code for ws in connections]

    assert run(client(), timeout=60) == [1000] * count


def test_app_that_never_reads_keeps_memory_bounded(run_rsasgi):
    """The client floods 256 MiB at an app that never reads. With --ws-max-queue 4 the server
    must stop reading the socket, so the client's sends stall, and the server's memory grows
    by far less than what the client tried to send. Other connections are still served."""
    server = run_rsasgi(APP, "--ws-max-queue", "4")
    pid = server.proc.pid
    chunk_size, chunks = 64 * 1024, 4096
    chunk = os.urandom(chunk_size)

    async def warm_up():
        async with ws_connect(server, "/echo") as ws:
            await ws.send(chunk)
            assert await ws.recv() == chunk

    run(warm_up())
    baseline = tree_memory_kib(pid)

    async def flood():
        ws = await ws_connect(server, "/never-read", compression=None, ping_interval=None)
        sent, stalled = 0, False
        started = time.monotonic()
        try:
            for _ in range(chunks):
                try:
                    await asyncio.wait_for(ws.send(chunk), 3)
                except asyncio.TimeoutError:
                    stalled = True
                    break
                sent += 1
                if time.monotonic() - started > 40:
                    break
            await asyncio.sleep(1)  # let the server take in whatever it is going to take
            peak = max(tree_memory_kib(pid), tree_memory_kib(pid, "VmHWM"))
            # The server still serves other clients while this one is stuck.
            async with httpx.AsyncClient(timeout=10) as http:
                assert (await http.get(f"{server.url}/ping")).text == "pong"
            async with ws_connect(server, "/echo") as other:
                await other.send("still there?")
                assert await asyncio.wait_for(other.recv(), 10) == "still there?"
            return sent, stalled, peak
        finally:
            ws.transport.abort()

    sent, stalled, peak = run(flood(), timeout=90)
    growth_mb = (peak - baseline) / 1024
    assert stalled, (
        f"all {sent} x 64 KiB messages were taken by the server: it kept reading the socket "
        f"for an app that never reads (memory growth {growth_mb:.0f} MB)"
    )
    assert sent < chunks // 2, f"{sent} x 64 KiB messages were accepted before the stall"
    assert growth_mb < 150, f"server memory grew by {growth_mb:.0f} MB (sent {sent} messages)"
    assert server.proc.poll() is None


def test_backpressure_loses_nothing(run_rsasgi):
    """With --ws-max-queue 4 the app reads nothing for 1.5 s while the client sends 300
    messages; when it starts reading, every message arrives, in order."""
    server = run_rsasgi(APP, "--ws-max-queue", "4")
    messages = [os.urandom(1000 + index) for index in range(300)]

    async def client():
        async with ws_connect(server, "/slow-reader") as ws:
            for message in messages:
                await ws.send(message)
            await ws.send("end")
            return json.loads(await asyncio.wait_for(ws.recv(), 20))

    count, digest = run(client())
    assert count == len(messages)
    assert digest == hashlib.sha256(b"".join(messages)).hexdigest()


def zero_key_frame(opcode: int, payload: bytes) -> bytes:
    """A client frame with a payload over 64 KiB, masked with an all-zero key, which leaves the
    payload as it is: no masking loop in Python over megabytes."""
    return (
        bytes([0x80 | opcode, 0x80 | 127]) + struct.pack("!Q", len(payload)) + b"\0\0\0\0" + payload
    )


def test_a_client_ignoring_the_apps_close_cannot_fill_memory(run_rsasgi, markers):
    """The app closes and does not read; the client ignores the close frame and keeps sending
    1 MiB messages until the server gives up waiting for its close reply. The server reads
    them (it must, to see a close reply) but drops them: its memory does not grow with what
    the client sent, and the app is handed none of them after its close."""
    server = run_rsasgi(APP, env={"WS_MARKER_DIR": str(markers)})
    pid = server.proc.pid
    frame = zero_key_frame(OP_BINARY, os.urandom(1 << 20))

    async def warm_up():
        async with ws_connect(server, "/echo") as ws:
            await ws.send(b"x" * (1 << 20))
            await ws.recv()

    run(warm_up())
    baseline = tree_memory_kib(pid)
    sock, reader = raw_handshake(server, "/close-then-count?sleep=8")
    sent = 0
    with sock:
        assert reader.close_code()[0] == 1000
        sock.settimeout(3)
        started = time.monotonic()
        try:
            while time.monotonic() - started < 15:
                sock.sendall(frame)
                sent += 1
        except OSError:
            pass  # the server stopped waiting for the close reply and dropped the connection
        peak = max(tree_memory_kib(pid), tree_memory_kib(pid, "VmHWM"))
    growth_mb = (peak - baseline) / 1024
    assert sent >= 100, f"only {sent} MiB went out: the server stopped reading"
    assert growth_mb < 64, f"server memory grew by {growth_mb:.0f} MB for {sent} MiB sent"
    info = wait_marker(markers, "close_then_count", timeout=20)
    assert info["count"] == 0, info
    assert info["disconnect"]["code"] == 1000, info


def test_a_receive_made_and_cancelled_does_not_take_the_place_of_one_waiting(ws_server):
    """A task waits in receive() while others are made and cancelled at once (anyio cancel
    scopes, Starlette's disconnect polling): the waiting one still gets the next message."""

    async def client():
        async with ws_connect(ws_server, "/two-receivers") as ws:
            assert await asyncio.wait_for(ws.recv(), 10) == "ready"
            await ws.send("hello")
            return await asyncio.wait_for(ws.recv(), 10)

    assert run(client()) == "got hello"


def test_two_tasks_waiting_in_send_both_go_on(ws_server):
    """Two tasks of one app wait in send() at once for a client that is not reading yet; when
    it reads, both finish and every message arrives."""
    sock, reader = raw_handshake(ws_server, "/two-senders")
    with sock:
        time.sleep(1)  # Not reading: the server's buffers fill and both senders wait.
        received = []
        while True:
            opcode, fin, payload = reader.frame()
            assert fin
            if opcode == OP_TEXT:
                assert payload == b"done"
                break
            assert opcode == OP_BINARY, opcode
            assert len(payload) == 1024 * 1024 and len(set(payload)) == 1
            received.append(payload[:1])
    assert sorted(received) == [b"a"] * 4 + [b"b"] * 4


def test_many_pipelined_messages_echo_in_order(ws_server):
    count = 5000

    async def client():
        async with ws_connect(ws_server, "/echo") as ws:

            async def sender():
                for index in range(count):
                    await ws.send(f"message {index}" if index % 2 else b"%d" % index)

            async def receiver():
                return [await ws.recv() for _ in range(count)]

            _, received = await asyncio.gather(sender(), receiver())
            return received

    received = run(client(), timeout=60)
    expected = [f"message {index}" if index % 2 else b"%d" % index for index in range(count)]
    assert received == expected


def test_ws_options_from_environment(run_rsasgi):
    server = run_rsasgi(APP, env={"RSASGI_WS_MAX_SIZE": "1024"})

    async def client():
        async with ws_connect(server, "/echo") as ws:
            await ws.send(b"x" * 1024)
            assert await ws.recv() == b"x" * 1024
            return await send_expect_close(ws, b"y" * 1025)

    code, _ = run(client())
    assert code == 1009


@pytest.mark.parametrize(
    "args",
    [
        ["--ws", "bogus"],
        ["--ws-max-size", "lots"],
        ["--ws-max-queue", "many"],
        ["--ws-ping-interval", "soon"],
    ],
)
def test_bad_ws_option_values_exit_2(run_rsasgi, args):
    server = run_rsasgi(APP, *args, wait=False)
    assert server.wait_exit(20) == 2, server.output()
    output = server.output()
    assert "Traceback" not in output and "panicked" not in output, output
    assert args[0] in output, output


@pytest.mark.parametrize(
    "headers, status, version_header",
    [
        pytest.param(
            b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n",
            400,
            None,
            id="no-key",
        ),
        pytest.param(
            b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n",
            426,
            "13",
            id="version-8",
        ),
        # Sent once, as the key (RFC 6455 §11.3.5); it was read from the first field only.
        pytest.param(
            b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Version: 13\r\n",
            400,
            None,
            id="version-twice",
        ),
    ],
)
def test_bad_upgrade_request_is_refused(ws_server, headers, status, version_header):
    """RFC 6455 4.2.1/4.4: a handshake the server cannot complete is answered with an HTTP
    error, never 101; a version it does not speak gets 426 Upgrade Required and the version it
    does speak (4.2.2 step 4: the Sec-WebSocket-Version header is a MUST)."""
    sock = ws_server.connect()
    with sock:
        sock.sendall(
            b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + b"Content-Length: 0\r\n\r\n"
        )
        got_status, response_headers, body = read_http_response(sock)
    assert got_status == status, (got_status, response_headers, body)
    assert response_headers.get("sec-websocket-version") == version_header, response_headers
    if status == 400:
        # What was wrong, for the client's developer, who cannot read the server's log.
        assert body.startswith(b"Bad Request: websocket handshake: "), body


def test_upgrade_request_over_http_1_0_is_refused_with_400(ws_server):
    """RFC 6455 §4.1: the opening handshake is an HTTP/1.1 request. One made in HTTP/1.0 gets
    400 before the app is started (it got a 500 after the app had accepted)."""
    sock = ws_server.connect()
    with sock:
        sock.sendall(
            b"GET /echo HTTP/1.0\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        got_status, response_headers, body = read_http_response(sock)
    assert got_status == 400, (got_status, response_headers, body)


# --------------------------------------------------------------------------- protocol


def test_invalid_utf8_text_closes_with_1007(ws_server):
    sock, reader = raw_handshake(ws_server, "/echo")
    with sock:
        sock.sendall(encode_frame(OP_TEXT, b"valid then \xff\xfe invalid"))
        code, seen = reader.close_code()
    assert code == 1007, f"expected close 1007, got {code} after frames {seen}"


def test_invalid_utf8_split_across_fragments_closes_with_1007(ws_server):
    sock, reader = raw_handshake(ws_server, "/echo")
    with sock:
        # "é" is C3 A9: the first fragment ends inside it, which is fine; the second fragment
        # continues with a byte that is not a continuation byte.
        sock.sendall(
            encode_frame(OP_TEXT, b"ok \xc3", fin=False) + encode_frame(OP_CONT, b"(", fin=True)
        )
        code, seen = reader.close_code()
    assert code == 1007, f"expected close 1007, got {code} after frames {seen}"


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(encode_frame(OP_TEXT, b"unmasked", mask=False), id="unmasked"),
        pytest.param(encode_frame(OP_TEXT, b"rsv1", rsv=4), id="rsv-bit"),
        pytest.param(encode_frame(OP_CONT, b"nothing to continue"), id="orphan-continuation"),
        pytest.param(encode_frame(OP_PING, b"p" * 126), id="long-control-frame"),
        # RFC 6455 §5.2 and RFC 7692 §6: the engine took RSV1 on control frames.
        pytest.param(encode_frame(OP_PING, b"p", rsv=4), id="rsv1-ping"),
        pytest.param(encode_frame(OP_CLOSE, struct.pack("!H", 1000), rsv=4), id="rsv1-close"),
        pytest.param(encode_frame(OP_PING, b"frag", fin=False), id="fragmented-control-frame"),
        pytest.param(encode_frame(OP_CLOSE, b"\x03"), id="one-byte-close-payload"),
        pytest.param(encode_frame(OP_CLOSE, struct.pack("!H", 1005)), id="close-code-1005"),
        pytest.param(encode_frame(OP_CLOSE, struct.pack("!H", 999)), id="close-code-999"),
    ],
)
def test_protocol_violation_closes_with_1002(ws_server, frame):
    sock, reader = raw_handshake(ws_server, "/echo")
    with sock:
        sock.sendall(frame)
        code, seen = reader.close_code()
    assert code == 1002, f"expected close 1002, got {code} after frames {seen}"


def test_close_frame_over_125_bytes_closes_with_1002(ws_server):
    """A control frame carries at most 125 bytes (RFC 6455 §5.5). The engine would echo such
    a close back, so the server dropped the connection with no close frame (while its access
    line said 1002); it now fails the connection with 1002, as for other protocol errors
    (§7.1.7)."""
    sock, reader = raw_handshake(ws_server, "/echo")
    with sock:
        sock.sendall(encode_frame(OP_CLOSE, struct.pack("!H", 1000) + b"r" * 124))
        code, seen = reader.close_code()
    assert (code, seen) == (1002, [])
    wait_for_log(ws_server, "with 1002: control frame over 125 bytes")


def test_reserved_opcode_closes_with_1003(ws_server):
    """RFC 6455 §5.2 leaves the code open; the engine (yawc) answers a frame type it cannot
    accept with 1003, as §7.4.1 describes that code."""
    sock, reader = raw_handshake(ws_server, "/echo")
    with sock:
        sock.sendall(encode_frame(0x3, b"reserved opcode"))
        code, seen = reader.close_code()
    assert code == 1003, f"expected close 1003, got {code} after frames {seen}"


def test_client_ping_gets_pong(ws_server):
    async def client():
        async with ws_connect(ws_server, "/echo") as ws:
            pong = await ws.ping(b"ping payload")
            latency = await asyncio.wait_for(pong, 5)
            await ws.send("after ping")
            assert await ws.recv() == "after ping"
            return latency

    assert run(client()) >= 0


def test_raw_ping_gets_pong_with_same_payload(ws_server):
    sock, reader = raw_handshake(ws_server, "/echo")
    with sock:
        sock.sendall(encode_frame(OP_PING, b"are you there?"))
        assert reader.frame() == (OP_PONG, True, b"are you there?")
        sock.sendall(encode_frame(OP_PING, b""))
        assert reader.frame() == (OP_PONG, True, b"")


def test_a_pong_over_125_bytes_closes_with_1002(ws_server):
    """RFC 6455 §5.5: a control frame is 125 bytes at most. The engine refused such a ping
    but took such a pong: a large frame read and dropped, which a client could use to make
    the server's read buffer grow for nothing."""
    sock, reader = raw_handshake(ws_server, "/echo")
    with sock:
        sock.sendall(encode_frame(OP_PONG, b"p" * 125))
        sock.sendall(encode_frame(OP_TEXT, b"still open"))
        assert reader.frame() == (OP_TEXT, True, b"still open")
        sock.sendall(encode_frame(OP_PONG, b"p" * 126))
        code, _ = reader.close_code()
    assert code == 1002
    wait_for_log(ws_server, "with 1002: control frame over 125 bytes")


def test_a_pong_over_125_bytes_after_our_close_gets_no_second_close(ws_server):
    """The app closed (4321); a client that answers with an oversized pong instead of its
    close reply has its connection dropped. A second close frame would break the protocol
    in turn (RFC 6455 §5.5.1: one close each way)."""
    sock, reader = raw_handshake(ws_server, "/app-close")
    with sock:
        assert reader.frame() == (OP_TEXT, True, b"closing soon")
        code, _ = reader.close_code()
        assert code == 4321
        sock.sendall(encode_frame(OP_PONG, b"p" * 200))
        with pytest.raises((EOFError, ConnectionResetError)):
            frame = reader.frame()
            pytest.fail(f"a frame after our close: {frame}")


def test_a_client_that_pings_instead_of_answering_our_close_is_dropped_at_the_close_wait(
    run_rsasgi,
):
    """The app closed; the client sends pings and reads nothing, so the pongs cannot go out.
    The wait for a pong's room is bounded by the wait for the close reply (5 s), not by
    --ws-ping-timeout (30 s here), which held the connection six times as long."""
    server = run_rsasgi(APP, "--ws-ping-timeout", "30")
    sock, reader = raw_handshake(server, "/app-close")
    with sock:
        assert reader.frame() == (OP_TEXT, True, b"closing soon")
        code, _ = reader.close_code()
        assert code == 4321
        batch = encode_frame(OP_PING, b"") * 50_000
        sock.settimeout(1)
        started = time.monotonic()
        ended = None
        while time.monotonic() - started < 40:
            try:
                sock.sendall(batch)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                ended = time.monotonic() - started
                break
    assert ended is not None and ended < 20, f"still open after {time.monotonic() - started:.0f}s"


def test_a_ping_flood_from_a_client_that_reads_nothing_is_bounded(run_rsasgi):
    """A client sends pings as fast as it can and reads none of the pongs. The engine queued
    a pong per ping and wrote them only when a read found nothing, which never happened: the
    worker took all 24 MB of pings and grew by hundreds of MiB. Now each pong goes out before
    the next frame is read, so the server stops reading when the client's buffers are full,
    and ends the connection as one that stopped reading (--ws-ping-timeout here)."""
    server = run_rsasgi(APP, "--ws-ping-interval", "0", "--ws-ping-timeout", "2")
    sock, _ = raw_handshake(server, "/echo")
    before = memory_kib(server.proc.pid)
    ping = encode_frame(OP_PING, b"")
    batch = ping * 50_000
    sent, stalled, ended = 0, False, False
    with sock:
        sock.settimeout(5)
        started = time.monotonic()
        while sent < 4_000_000 and time.monotonic() - started < 30:
            try:
                sock.sendall(batch)
            except TimeoutError:
                stalled = True
                break
            except (BrokenPipeError, ConnectionResetError):
                ended = True
                break
            sent += 50_000
        grown = memory_kib(server.proc.pid) - before
        assert stalled or ended, f"the server took all {sent} pings from a client reading nothing"
        assert grown < 64 * 1024, f"the worker grew by {grown} KiB"
        # Reading now drains the pongs sent before the server gave up, then the end.
        recv_until_closed(sock, timeout=20)
    assert httpx.get(f"{server.url}/ping", timeout=10).text == "pong"


def test_server_pings_and_closes_a_silent_peer_with_1011(run_rsasgi):
    """A raw client that never answers pings: the server pings it, then gives up with 1011."""
    server = run_rsasgi(APP, "--ws-ping-interval", "1", "--ws-ping-timeout", "1")
    sock, reader = raw_handshake(server, "/never-read")
    with sock:
        code, seen = reader.close_code(timeout=10)
    assert OP_PING in seen, f"no ping frame before the close; frames: {seen}"
    assert code == 1011, f"expected close 1011, got {code}"


def test_a_pong_timeout_shorter_than_the_interval_is_kept(run_rsasgi):
    """--ws-ping-interval 5 --ws-ping-timeout 1: a client that never answers is closed about
    a second after the first ping, not at the next ping 5 s later, when the deadline was
    looked at."""
    server = run_rsasgi(APP, "--ws-ping-interval", "5", "--ws-ping-timeout", "1")
    sock, reader = raw_handshake(server, "/never-read")
    with sock:
        opcode, _, _ = reader.frame()
        assert opcode == OP_PING
        pinged = time.monotonic()
        code, seen = reader.close_code(timeout=20)
        waited = time.monotonic() - pinged
    assert code == 1011
    assert OP_PING not in seen, "a second ping went out before the close"
    assert waited < 4, f"closed {waited:.1f}s after the ping, at the next one"


def test_server_pings_keep_a_live_peer_open(run_rsasgi):
    """A raw client that answers every ping: after three of them the connection still echoes."""
    server = run_rsasgi(APP, "--ws-ping-interval", "1", "--ws-ping-timeout", "1")
    sock, reader = raw_handshake(server, "/echo")
    pings = 0
    with sock:
        while pings < 3:
            opcode, _, payload = reader.frame()
            assert opcode == OP_PING, f"expected a ping, got opcode {opcode}"
            sock.sendall(encode_frame(OP_PONG, payload))
            pings += 1
        sock.sendall(encode_frame(OP_TEXT, b"still open"))
        while (frame := reader.frame())[0] == OP_PING:
            sock.sendall(encode_frame(OP_PONG, frame[2]))
    assert frame == (OP_TEXT, True, b"still open")


def test_pings_do_not_close_a_live_client_while_the_app_is_slow_to_read(run_rsasgi):
    """The app reads nothing for 4 s while the client sends 40 messages: the queue fills
    (--ws-max-queue 32) and the server stops reading the socket, so the client's pongs wait
    behind its messages. That is the app being slow, not the client: the connection stays open
    through the 1 s ping timeout, and every message arrives."""
    server = run_rsasgi(APP, "--ws-ping-interval", "1", "--ws-ping-timeout", "1")
    messages = [os.urandom(100 + index) for index in range(40)]

    async def client():
        async with ws_connect(server, "/slow-reader?sleep=4", ping_interval=None) as ws:
            for message in messages:
                await ws.send(message)
            await ws.send("end")
            return json.loads(await asyncio.wait_for(ws.recv(), 20))

    count, digest = run(client())
    assert count == len(messages)
    assert digest == hashlib.sha256(b"".join(messages)).hexdigest()


# --------------------------------------------------------------------------- shutdown


def test_sigterm_closes_open_websocket_with_1012(run_rsasgi, markers):
    server = run_rsasgi(
        APP, "--timeout-graceful-shutdown", "1", env={"WS_MARKER_DIR": str(markers)}
    )

    async def client():
        async with ws_connect(server, "/hold") as ws:
            assert await ws.recv() == "holding"
            server.proc.send_signal(signal.SIGTERM)
            code, _ = await expect_close(ws, timeout=15)
            return code

    code = run(client())
    assert code == 1012, f"expected close 1012 on shutdown, got {code}"
    assert server.wait_exit(20) == 0, server.output()
    assert wait_marker(markers, "hold", timeout=2)["code"] == 1012


def test_sigterm_closes_websockets_at_once_and_waits_for_the_apps_clean_up(run_rsasgi, markers):
    """As uvicorn does: the drain begins by closing open WebSockets (1012), and the app hears
    of it at once. Its clean-up (1.5 s) runs while the client already has its close frame, and
    the stop waits for it to finish instead of cancelling it. Before, the WebSocket stayed open
    until --timeout-graceful-shutdown had passed, and its clean-up was cancelled 1 s later."""
    server = run_rsasgi(
        APP, "--timeout-graceful-shutdown", "5", env={"WS_MARKER_DIR": str(markers)}
    )

    async def client():
        async with ws_connect(server, "/clean-up-on-disconnect") as ws:
            assert await ws.recv() == "holding"
            server.proc.send_signal(signal.SIGTERM)
            code, _ = await expect_close(ws, timeout=15)
            (markers / "client_closed").touch()
            return code

    assert run(client()) == 1012
    started = wait_marker(markers, "clean_up_started")
    assert started == {"type": "websocket.disconnect", "code": 1012, "reason": started["reason"]}
    assert server.wait_exit(20) == 0, server.output()
    done = wait_marker(markers, "clean_up_done", timeout=2)
    assert done == {"client_closed": True}, "the client had no close before the clean-up ended"
    output = server.output()
    assert "Waiting for 1 request task(s) still running" in output, output
    assert "Connections still open after --timeout-graceful-shutdown" not in output, output
    assert "Cancelling" not in output, output


def test_sigterm_tells_the_app_even_when_the_client_never_answers_the_close(run_rsasgi, markers):
    """A client that never answers the 1012 close frame (a peer gone quiet): the app hears
    `websocket.disconnect` with 1012 all the same, and the access log has the WebSocket's
    closing line, though the connection is cut at the end of the stop with its close handshake
    still under way. Before, the app never heard of the disconnect, and no line was written."""
    server = run_rsasgi(
        APP, "--timeout-graceful-shutdown", "1", env={"WS_MARKER_DIR": str(markers)}
    )
    sock, reader = raw_handshake(server, "/hold")
    with sock:
        assert reader.frame() == (OP_TEXT, True, b"holding")
        server.proc.send_signal(signal.SIGTERM)
        code, _ = reader.close_code(timeout=15)
        assert code == 1012
        assert wait_marker(markers, "hold")["code"] == 1012
        assert server.wait_exit(20) == 0, server.output()
    wait_for_log(server, "WebSocket /hold closed by the server with 1012")


def test_a_client_that_never_answers_the_close_holds_the_stop_2_s_not_the_grace(
    run_rsasgi, markers
):
    """The close handshake of a shutdown waits 2 s for the client's answer, where it waited
    5 s: with --timeout-graceful-shutdown 4 the connection is closed before the grace period
    ends (no line says connections were still open), with its closing line."""
    server = run_rsasgi(
        APP, "--timeout-graceful-shutdown", "4", env={"WS_MARKER_DIR": str(markers)}
    )
    sock, reader = raw_handshake(server, "/hold")
    with sock:
        assert reader.frame() == (OP_TEXT, True, b"holding")
        server.proc.send_signal(signal.SIGTERM)
        code, _ = reader.close_code(timeout=15)
        assert code == 1012
        assert server.wait_exit(20) == 0, server.output()
    output = wait_for_log(server, "WebSocket /hold closed by the server with 1012")
    assert "Connections still open after --timeout-graceful-shutdown" not in output, output


def test_a_handshake_answered_during_the_drain_gets_a_101_with_connection_upgrade(
    run_rsasgi, markers
):
    """The app accepts a handshake that was waiting for it when SIGTERM came: its 101 says
    `Connection: Upgrade`, not `Upgrade, close` (hyper adds `close` to every response once a
    drain has turned its connection's keep-alive off), and the WebSocket is closed with 1012
    as it opens."""
    server = run_rsasgi(
        APP, "--timeout-graceful-shutdown", "5", env={"WS_MARKER_DIR": str(markers)}
    )
    sock = server.connect()
    with sock:
        sock.settimeout(10)
        sock.sendall(
            b"GET /accept-on-marker HTTP/1.1\r\n"
            b"Host: 127.0.0.1\r\n"
            b"Upgrade: websocket\r\n"
            b"Connection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        wait_marker(markers, "accept_on_marker_connect")
        server.proc.send_signal(signal.SIGTERM)

        def draining() -> bool:
            try:
                socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
            except ConnectionRefusedError:
                return True
            return False

        # The listener closes as the drain begins.
        wait_for(draining, message="the drain to begin")
        (markers / "accept").touch()
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            assert chunk, head
            head += chunk
        head, rest = head.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        assert lines[0].startswith(b"HTTP/1.1 101"), head
        connection = [line for line in lines if line.lower().startswith(b"connection:")]
        assert connection == [b"connection: Upgrade"], head
        code, _ = FrameReader(sock, rest).close_code(timeout=15)
    assert code == 1012
    assert wait_marker(markers, "accept_on_marker")["code"] == 1012
    assert server.wait_exit(20) == 0, server.output()


def test_sigterm_with_idle_websocket_does_not_hang(run_rsasgi):
    """An app that never reads: shutdown still closes the connection and exits."""
    server = run_rsasgi(APP, "--timeout-graceful-shutdown", "1")

    async def client():
        async with ws_connect(server, "/never-read") as ws:
            server.proc.send_signal(signal.SIGTERM)
            return await expect_close(ws, timeout=15)

    code, _ = run(client())
    assert code == 1012
    assert server.wait_exit(20) == 0, server.output()


# --------------------------------------------------------------------------- --ws none


def test_ws_none_gives_the_app_an_http_scope(run_rsasgi):
    server = run_rsasgi(APP, "--ws", "none")
    sock = server.connect()
    with sock:
        sock.sendall(
            b"GET /upgrade-check HTTP/1.1\r\n"
            b"Host: 127.0.0.1\r\n"
            b"Upgrade: websocket\r\n"
            b"Connection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        status, headers, body = read_http_response(sock)
    assert status == 200, body
    scope = json.loads(body)
    assert scope["type"] == "http"
    assert scope["path"] == "/upgrade-check"
    assert dict(scope["headers"])["upgrade"] == "websocket"

    async def client():
        with pytest.raises(InvalidStatus) as info:
            async with ws_connect(server, "/echo"):
                pass
        return info.value.response.status_code

    assert run(client()) == 200


def test_ws_auto_still_serves_plain_http(ws_server):
    response = httpx.get(f"{ws_server.url}/ping", timeout=10)
    assert response.status_code == 200
    assert response.text == "pong"


BURST_APP = """\
import asyncio, pathlib

async def app(scope, receive, send):
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    sent = 0
    async def hear():
        await receive()
        pathlib.Path(scope["query_string"].decode()).write_text(str(sent))
    heard = asyncio.ensure_future(hear())
    while not heard.done():
        await send({"type": "websocket.send", "text": f"{sent:08d}" + "x" * 4000})
        sent += 1
        await asyncio.sleep(0)
"""


def test_what_the_app_sent_before_a_shutdown_goes_out_before_its_1012(run_rsasgi, tmp_path):
    """The shutdown's close raced the app's queued messages, and won half the time: messages
    whose send() had returned (a full --ws-max-queue of them) were dropped, and the close
    went out in their place. RFC 6455 lets nothing follow a close frame, and all that came
    before it should be written. Clients that read nothing for a second fill their queues;
    each then gets what the app sent before it heard of the disconnect (less the few sends
    the app made before its disconnect task ran, dropped as they come after it), then
    1012. Before, a whole queue's worth (some 64 of these messages) went missing."""
    (tmp_path / "burst_app.py").write_text(BURST_APP)
    server = run_rsasgi(
        "burst_app:app", "--app-dir", str(tmp_path), "--lifespan", "off",
        "--ws-max-queue", "200", "--timeout-graceful-shutdown", "10",
    )  # fmt: skip
    counts = [tmp_path / f"sent-{i}" for i in range(8)]
    clients = [raw_handshake(server, f"/?{count}") for count in counts]
    time.sleep(1)  # the clients read nothing meanwhile: their queues fill
    server.proc.send_signal(signal.SIGTERM)
    for (sock, reader), count in zip(clients, counts, strict=True):
        with sock:
            received = 0
            while True:
                opcode, _, payload = reader.frame()
                if opcode == OP_CLOSE:
                    assert struct.unpack("!H", payload[:2])[0] == 1012
                    break
                assert int(payload[:8]) == received
                received += 1
        sent = int(wait_for(lambda count=count: count.exists() and count.read_text()))
        # One more may arrive than counted: a send waiting for room in the queue returns
        # only after the shutdown took the queue, behind the app's hearing of it. How many
        # sends the eight apps make before their disconnect tasks run is the event loop's
        # scheduling (17 seen once in CI on Python 3.10); the bug dropped a queue's worth.
        assert -1 <= sent - received <= 32, (received, sent)
    assert server.wait_exit(20) == 0, server.output()
