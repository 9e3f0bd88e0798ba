"""A Starlette application served unchanged by rsasgi: JSON, streaming and a form upload.

Run it from the repository root (`pip install starlette python-multipart` first):

    rsasgi --app-dir examples starlette_app:app

Then try:

    curl http://127.0.0.1:8000/
    curl -N http://127.0.0.1:8000/stream?count=5
    curl -F upload=@README.md http://127.0.0.1:8000/upload
"""

import asyncio
import contextlib
import hashlib

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

UPLOAD_FORM = """<!doctype html>
<title>Upload</title>
<form method="post" action="/upload" enctype="multipart/form-data">
  <input type="file" name="upload"> <button>Send</button>
</form>
"""


@contextlib.asynccontextmanager
async def lifespan(app):
    # Whatever is yielded here shows up in every request's `request.state`.
    yield {"started_by": "lifespan"}


async def index(request: Request) -> JSONResponse:
    return JSONResponse(
        {
            "hello": "world",
            "server": request.scope.get("server"),
            "started_by": request.state.started_by,
        }
    )


async def stream(request: Request) -> StreamingResponse:
    """Sends `count` lines, one every `delay` seconds, as a chunked response."""
    count = int(request.query_params.get("count", "10"))
    delay = float(request.query_params.get("delay", "0.2"))

    async def lines():
        for number in range(count):
            yield f"line {number}\n"
            await asyncio.sleep(delay)

    return StreamingResponse(lines(), media_type="text/plain")


async def upload_form(request: Request) -> HTMLResponse:
    return HTMLResponse(UPLOAD_FORM)


async def upload(request: Request) -> JSONResponse:
    """Receives a multipart form with a file field named `upload`."""
    async with request.form() as form:
        uploaded = form["upload"]
        digest = hashlib.sha256()
        size = 0
        while chunk := await uploaded.read(64 * 1024):
            digest.update(chunk)
            size += len(chunk)
        return JSONResponse(
            {"filename": uploaded.filename, "size": size, "sha256": digest.hexdigest()}
        )


app = Starlette(
    routes=[
        Route("/", index),
        Route("/stream", stream),
        Route("/upload", upload_form, methods=["GET"]),
        Route("/upload", upload, methods=["POST"]),
    ],
    lifespan=lifespan,
)
