"""A plain ASGI app for tests/test_browser.py: GET / is an HTML page whose script opens a
websocket to /ws, sends "hello", and writes the reply into the page; /ws answers each text
message with "server echo: <message>" (so the reply cannot come from the page itself).

The page also fetches /wait, which the app answers only once the page has shown the echo
and fetched /done (or after 10 s). Headless Chromium's --virtual-time-budget does not count
an open websocket as pending network activity, so without that fetch it may dump the page
before the echo arrived; a pending fetch holds virtual time until the exchange is over.
Chromium sometimes holds the page's later network activity (the /done fetch, the websocket
close) while virtual time waits, so /wait then answers after its limit: the page is dumped
after the echo either way.
"""

import asyncio
import sys

#: Seconds /wait holds its answer at most, should the websocket never close.
WAIT_LIMIT = 10.0

_shown: asyncio.Event | None = None


def _echo_shown() -> asyncio.Event:
    global _shown
    if _shown is None:
        _shown = asyncio.Event()
    return _shown


PAGE = b"""<!DOCTYPE html>
<html>
<head><meta charset="utf-8"><title>rsasgi websocket</title></head>
<body>
<div id="status">loading</div>
<div id="out"></div>
<script>
  const status = document.getElementById("status");
  const out = document.getElementById("out");
  fetch("/wait");
  status.textContent = "connecting";
  const ws = new WebSocket(`ws://${location.host}/ws?from=browser`);
  ws.onopen = () => { status.textContent = "open"; ws.send("hello"); };
  ws.onmessage = (event) => {
    out.textContent = event.data;
    status.textContent = "received";
    fetch("/done");
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
        if scope["path"] == "/done":
            _echo_shown().set()
        if scope["path"] in ("/wait", "/done"):
            if scope["path"] == "/wait":
                try:
                    await asyncio.wait_for(_echo_shown().wait(), WAIT_LIMIT)
                except TimeoutError:
                    pass
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
            # In the server log, so that a page dumped without the echo tells whether the
            # server ever had the message (Chromium may hold a page's network activity while
            # its virtual time waits).
            print(f"ws_browser: echoed {message['text']!r}", file=sys.stderr, flush=True)
