"""The smallest ASGI application: `rsasgi --app-dir examples hello:app`."""


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b"Hello, world!"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
