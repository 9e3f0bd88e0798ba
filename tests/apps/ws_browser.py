"""A plain ASGI app for tests/test_browser.py: GET / is an HTML page whose script opens a
websocket to /ws, sends "hello", and writes the reply into the page; /ws answers each text
message with "server echo: <message>" (so the reply cannot come from the page itself)."""

PAGE = b"""<!DOCTYPE html>
<html>
<head><meta charset="utf-8"><title>rsasgi websocket</title></head>
<body>
<div id="status">loading</div>
<div id="out"></div>
<script>
  const status = document.getElementById("status");
  const out = document.getElementById("out");
  status.textContent = "connecting";
  const ws = new WebSocket(`ws://${location.host}/ws?from=browser`);
  ws.onopen = () => { status.textContent = "open"; ws.send("hello"); };
  ws.onmessage = (event) => {
    out.textContent = event.data;
    status.textContent = "received";
    ws.close(1000, "done");
  };
  ws.onerror = () => { status.textContent = "error"; };
  ws.onclose = (event) => { status.textContent += " closed:" + event.code; };
</script>
</body>
</html>
"""


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    elif scope["type"] == "http":
        await send(
            {
                "type": "http.response.start",
                "status": 200 if scope["path"] == "/" else 404,
                "headers": [(b"content-type", b"text/html; charset=utf-8")],
            }
        )
        await send({"type": "http.response.body", "body": PAGE if scope["path"] == "/" else b""})
    elif scope["type"] == "websocket":
        await receive()
        if scope["path"] != "/ws" or scope["query_string"] != b"from=browser":
            await send({"type": "websocket.close"})
            return
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": f"server echo: {message['text']}"})
