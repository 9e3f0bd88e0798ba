"""App for tests/test_cli.py: plain app, factory, dotted attribute, env lookup."""

from __future__ import annotations

import os
from types import SimpleNamespace
from urllib.parse import parse_qs

some_int = 42


def _text_app(text_for_scope):
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = text_for_scope(scope).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


def _env_lookup(scope) -> str:
    name = parse_qs(scope["query_string"].decode()).get("name", [""])[0]
    return os.environ.get(name, "<unset>")


app = _text_app(_env_lookup)


def make_app():
    return _text_app(lambda scope: "from-factory")


holder = SimpleNamespace(inner=SimpleNamespace(app=_text_app(lambda scope: "from-dotted")))
