"""A plain ASGI app for tests/test_browser.py: GET / is an HTML page whose script opens a
websocket to /ws, sends "hello", and writes the reply into the page; /ws answers each text
message with "server echo: <message>" (so the reply cannot come from the page itself).

The page then reports what it shows: it fetches /shown with the text of its two elements in
the query, and the app writes them to its log ("ws_browser: page shows ..."), which the test
waits for. The browser runs in real time: headless Chromium's --dump-dom with
--virtual-time-budget does not count an open websocket as pending work, and it held the
page's websocket traffic while virtual time waited, so a dumped page could lack an echo the
server had sent.
"""

import sys
from urllib.parse import parse_qs

PAGE = b"""<!DOCTYPE html>
<html>
<head><meta charset="utf-8"><title>rsasgi websocket</title></head>
<body>
<div id="status">loading</div>
<div id="out"></div>
<script>
  const status = document.getElementById("status");
  const out = document.getElementById("out");
  let reported = false;
  const report = () => {
    if (reported) return;
    reported = true;
    const shown = new URLSearchParams({out: out.textContent, status: status.textContent});
    fetch(`/shown?${shown}`);
  };
  status.textContent = "connecting";
  const ws = new WebSocket(`ws://${location.host}/ws?from=browser`);
  ws.onopen = () => { status.textContent = "open"; ws.send("hello"); };
  ws.onmessage = (event) => {
    out.textContent = event.data;
    status.textContent = "received";
    report();
    ws.close(1000, "done");
  };
  ws.onerror = () => { status.textContent = "error"; };
  ws.onclose = (event) => { status.textContent += " closed:" + event.code; report(); };
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
        if scope["path"] == "/shown":
            shown = parse_qs(scope["query_string"].decode(), keep_blank_values=True)
            out, status = shown.get("out", ["?"])[0], shown.get("status", ["?"])[0]
            print(
                f"ws_browser: page shows out={out!r} status={status!r}", file=sys.stderr, flush=True
            )
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
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
            # In the server log, so that a page that shows no echo tells whether the server
            # ever had the message.
            print(f"ws_browser: echoed {message['text']!r}", file=sys.stderr, flush=True)
