"""Apps that answer only after the client has left (tests/test_streaming.py).

Each writes T.started in $PROTO_MARKER_DIR, waits until the test writes T.go there (after the
client closed the connection and the server logged its 499), then answers:

`app` (raw ASGI), GET /late?tag=T&stream=1: sends http.response.start and one last body (with
stream=1 first a body with more_body, as a stream does), then does what it does after its
response (a background task's work); T.outcome holds what each send() did, one a line, and
"after the response" once the app got there.

`starlette_app`, GET /slowbg?tag=T: a PlainTextResponse with a BackgroundTask (as FastAPI's
BackgroundTasks add theirs), which writes T.background.
"""

from __future__ import annotations

import asyncio
import os
from urllib.parse import parse_qs

from proto_raw import write_marker
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.responses import PlainTextResponse
from starlette.routing import Route


async def _until_told(tag: str) -> None:
    write_marker(f"{tag}.started", "")
    go = os.path.join(os.environ["PROTO_MARKER_DIR"], f"{tag}.go")
    while not os.path.exists(go):
        await asyncio.sleep(0.02)


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    tag = query["tag"]
    await _until_told(tag)
    messages = [{"type": "http.response.start", "status": 200, "headers": []}]
    if query.get("stream") == "1":
        messages.append({"type": "http.response.body", "body": b"part", "more_body": True})
    messages.append({"type": "http.response.body", "body": b"late"})
    outcome = []
    try:
        for message in messages:
            try:
                await send(message)
            except OSError as exc:
                outcome.append(f"{message['type']}: {type(exc).__name__}")
                raise
            outcome.append(f"{message['type']}: sent")
        outcome.append("after the response")
    finally:
        write_marker(f"{tag}.outcome", "\n".join(outcome))


async def _slowbg(request):
    tag = request.query_params["tag"]
    await _until_told(tag)
    task = BackgroundTask(write_marker, f"{tag}.background", "ran")
    return PlainTextResponse("done", background=task)


starlette_app = Starlette(routes=[Route("/slowbg", _slowbg)])
