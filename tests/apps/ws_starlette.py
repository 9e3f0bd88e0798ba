"""An ordinary Starlette application with WebSocket routes, written as Starlette users write
them, for tests/test_websocket_frameworks.py."""

import contextlib

from starlette.applications import Starlette
from starlette.endpoints import WebSocketEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect


@contextlib.asynccontextmanager
async def lifespan(app):
    yield {"greeting": "hello from lifespan"}


class Echo(WebSocketEndpoint):
    """The class-based endpoint from Starlette's documentation, echoing text."""

    encoding = "text"

    async def on_connect(self, websocket: WebSocket) -> None:
        await websocket.accept()

    async def on_receive(self, websocket: WebSocket, data: str) -> None:
        await websocket.send_text(f"Message text was: {data}")

    async def on_disconnect(self, websocket: WebSocket, close_code: int) -> None:
        pass


class BytesEcho(WebSocketEndpoint):
    encoding = "bytes"

    async def on_receive(self, websocket: WebSocket, data: bytes) -> None:
        await websocket.send_bytes(data[::-1])


#: The close codes Refuse.on_disconnect was called with, served at /refused.
refused_codes: list[int] = []


class Refuse(WebSocketEndpoint):
    """Turns every connection away in on_connect; the endpoint then waits in receive() for the
    disconnect before it calls on_disconnect."""

    async def on_connect(self, websocket: WebSocket) -> None:
        await websocket.close()

    async def on_disconnect(self, websocket: WebSocket, close_code: int) -> None:
        refused_codes.append(close_code)


async def refused(request: Request) -> JSONResponse:
    return JSONResponse(refused_codes)


async def json_room(websocket: WebSocket) -> None:
    """A function endpoint: path and query parameters, a subprotocol, JSON in and out."""
    protocol = "json.v1" if "json.v1" in websocket.scope["subprotocols"] else None
    await websocket.accept(subprotocol=protocol)
    try:
        while True:
            data = await websocket.receive_json()
            await websocket.send_json(
                {
                    "got": data,
                    "room": websocket.path_params["room"],
                    "query": dict(websocket.query_params),
                    "greeting": websocket.state.greeting,
                    "cookie": websocket.cookies.get("token"),
                }
            )
            if data == "leave":
                await websocket.close(code=4400, reason="left the room")
                return
    except WebSocketDisconnect:
        pass


async def private(websocket: WebSocket) -> None:
    """Deny with a real HTTP response unless a token is given (the http.response extension)."""
    if websocket.query_params.get("token") != "sesame":
        await websocket.send_denial_response(PlainTextResponse("no token", status_code=401))
        return
    await websocket.accept()
    await websocket.send_text("welcome")
    await websocket.close()


async def homepage(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"starlette says {request.state.greeting}")


app = Starlette(
    routes=[
        Route("/", homepage),
        Route("/refused", refused),
        WebSocketRoute("/ws/echo", Echo),
        WebSocketRoute("/ws/bytes", BytesEcho),
        WebSocketRoute("/ws/room/{room}", json_room),
        WebSocketRoute("/ws/private", private),
        WebSocketRoute("/ws/refuse", Refuse),
    ],
    lifespan=lifespan,
)
