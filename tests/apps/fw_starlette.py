"""An ordinary Starlette application, written as its users write them, for test_frameworks.py.

`app` serves the routes; `behind_middleware` serves them behind a BaseHTTPMiddleware, which is
what FastAPI's @app.middleware("http") makes. GET /events and /quiet-events leave events.ended
and quiet.ended in STARLETTE_MARKER_DIR, when that is set, once their streams have stopped.
"""

import asyncio
import contextlib
import hashlib
import os

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

STREAM_CHUNKS = 8
STREAM_CHUNK = b"0123456789abcdef" * 64


@contextlib.asynccontextmanager
async def lifespan(app):
    yield {"greeting": "hello from lifespan"}


async def items(request: Request) -> JSONResponse:
    return JSONResponse(
        {
            "item_id": request.path_params["item_id"],
            "q": request.query_params.getlist("q"),
            "greeting": request.state.greeting,
            "user_agent": request.headers.get("user-agent"),
        }
    )


async def echo_json(request: Request) -> JSONResponse:
    return JSONResponse({"received": await request.json()}, status_code=201)


async def stream(request: Request) -> StreamingResponse:
    """STREAM_CHUNKS numbered chunks with a pause between them, so each leaves on its own."""

    async def chunks():
        for number in range(STREAM_CHUNKS):
            yield b"%d:" % number + STREAM_CHUNK + b"\n"
            await asyncio.sleep(0.02)

    return StreamingResponse(chunks(), media_type="application/octet-stream")


async def events(request: Request) -> StreamingResponse:
    """Server-sent events until the client leaves, looking with is_disconnected() before each
    one, as many SSE examples do."""

    async def ticks():
        number = 0
        try:
            while not await request.is_disconnected():
                yield f"data: {number}\n\n"
                number += 1
                await asyncio.sleep(0.05)
        finally:
            markers = os.environ.get("STARLETTE_MARKER_DIR")
            if markers:
                with open(os.path.join(markers, "events.ended"), "w") as f:
                    f.write(f"after {number} events")

    return StreamingResponse(ticks(), media_type="text/event-stream")


async def quiet_events(request: Request) -> StreamingResponse:
    """One event, then none until one is published (never, here), as a pub/sub feed waits
    on its queue: only a listen for the disconnect can end the stream once its client
    leaves. Leaves quiet.ended in STARLETTE_MARKER_DIR when it ends."""

    async def feed():
        try:
            yield "data: hello\n\n"
            await asyncio.Event().wait()
        finally:
            markers = os.environ.get("STARLETTE_MARKER_DIR")
            if markers:
                with open(os.path.join(markers, "quiet.ended"), "w") as f:
                    f.write("ended")

    return StreamingResponse(feed(), media_type="text/event-stream")


async def upload(request: Request) -> JSONResponse:
    async with request.form() as form:
        uploaded = form["file"]
        data = await uploaded.read()
        return JSONResponse(
            {
                "name": uploaded.filename,
                "content_type": uploaded.content_type,
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "note": form.get("note"),
            }
        )


async def login(request: Request) -> PlainTextResponse:
    form = await request.form()
    return PlainTextResponse(f"user={form['user']} remember={form.get('remember', 'no')}")


async def boom(request: Request) -> PlainTextResponse:
    raise RuntimeError("fw_starlette boom")


app = Starlette(
    routes=[
        Route("/items/{item_id:int}", items),
        Route("/echo", echo_json, methods=["POST"]),
        Route("/stream", stream),
        Route("/events", events),
        Route("/quiet-events", quiet_events),
        Route("/upload", upload, methods=["POST"]),
        Route("/login", login, methods=["POST"]),
        Route("/boom", boom),
    ],
    lifespan=lifespan,
)


class Passthrough(BaseHTTPMiddleware):
    async def dispatch(self, request, call_next):
        return await call_next(request)


behind_middleware = Starlette(
    routes=app.routes, middleware=[Middleware(Passthrough)], lifespan=lifespan
)
