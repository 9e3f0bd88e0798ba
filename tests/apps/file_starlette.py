"""Starlette's FileResponse for tests/test_file_responses.py, with a record of the ASGI
message types each response was sent with.

  GET /file?path=P      FileResponse(P) (header X-Tag T files the record under T, else "/file")
  GET /sent             JSON {T: [message types the last request tagged T sent, in order]}
"""

from __future__ import annotations

import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse
from starlette.routing import Route

sent: dict[str, list[str]] = {}


async def file(request: Request) -> FileResponse:
    return FileResponse(request.query_params["path"])


starlette_app = Starlette(routes=[Route("/file", file, methods=["GET", "HEAD"])])


async def app(scope, receive, send):
    if scope["type"] != "http":
        return await starlette_app(scope, receive, send)
    if scope["path"] == "/sent":
        body = json.dumps(sent).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(body)),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return
    headers = dict(scope["headers"])
    types = sent[headers.get(b"x-tag", scope["path"].encode()).decode()] = []

    async def recording_send(message):
        types.append(message["type"])
        await send(message)

    await starlette_app(scope, receive, recording_send)
