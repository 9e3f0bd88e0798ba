"""Bodies and WebSocket messages an ASGI app sends as buffers other than `bytes`.

Starlette 1.10 renders a `Response` to a memoryview and passes a `StreamingResponse`'s
memoryview chunks on as they are; uvicorn writes whatever has the buffer protocol. rsasgi took
only bytes and bytearray, and such a response was a 500 (tests/apps/body_buffers.py).
"""

from __future__ import annotations

import asyncio
from array import array

import httpx
import pytest
from websockets.asyncio.client import connect

APP = "body_buffers:app"


@pytest.fixture
def server(run_rsasgi):
    return run_rsasgi(APP)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/view", b"hello memoryview"),
        ("/view-stream", b"chunk0\nchunk1\nchunk2\n"),
        # A view that is not contiguous goes out as bytes() of it would.
        ("/strided", b"ace"),
        # Items wider than a byte: their memory, byte for byte, as bytes() of the view gives.
        ("/ints", array("i", [1, 2]).tobytes()),
    ],
)
def test_a_memoryview_body_is_sent(server, path, body):
    response = httpx.get(server.url + path, timeout=10)
    assert response.status_code == 200, response.text
    assert response.content == body


def test_a_memoryview_body_is_copied_when_sent(server):
    """The view's memory belongs to a bytearray the app changes once send() returns."""
    response = httpx.get(server.url + "/view-large", timeout=10)
    assert response.content == b"a" * (64 * 1024)


def test_a_body_that_is_no_buffer_is_a_type_error_naming_its_type(server):
    errors = httpx.get(server.url + "/not-a-buffer", timeout=10).text.splitlines()
    assert len(errors) == 3, errors
    for error, name in zip(errors, ["int", "str", "list"], strict=True):
        assert error.startswith("TypeError: http.response.body 'body' must be bytes"), error
        assert error.endswith(f"got {name}"), error


@pytest.mark.parametrize(
    ("path", "body"),
    [("/response", b"hello memoryview"), ("/stream", b"chunk0\nchunk1\nchunk2\n")],
)
def test_starlette_responses_of_memoryview_are_sent(run_rsasgi, path, body):
    server = run_rsasgi("body_buffers:starlette_app")
    response = httpx.get(server.url + path, timeout=10)
    assert response.status_code == 200, response.text
    assert response.content == body


def test_websocket_send_takes_a_memoryview(server):
    async def messages() -> list:
        url = f"ws://127.0.0.1:{server.port}/ws"
        async with connect(url, open_timeout=10, close_timeout=5) as ws:
            return [await asyncio.wait_for(ws.recv(), 10) for _ in range(2)]

    assert asyncio.run(messages()) == [b"mv-bytes", b"ace"]
    assert "TypeError" not in server.output()
