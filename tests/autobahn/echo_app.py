"""The ASGI app Autobahn|Testsuite's fuzzing client talks to (tests/autobahn/run.sh).

Every websocket is accepted and each message is sent back as it came, text as text and bytes as
bytes, until the client disconnects. Plain HTTP requests get a short text answer, so a script can
tell that the server is up. Plain ASGI 3, no framework, so it runs on any ASGI server.
"""


async def app(scope, receive, send):
    if scope["type"] == "websocket":
        await websocket_echo(receive, send)
    elif scope["type"] == "http":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": b"autobahn echo app\n"})
    elif scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


async def websocket_echo(receive, send):
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.receive":
            # Servers may put both keys in the message with the unused one None.
            text = message.get("text")
            if text is not None:
                await send({"type": "websocket.send", "text": text})
            else:
                await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})
        elif message["type"] == "websocket.disconnect":
            return
