"""A Starlette page for tests/test_browser_tls.py: it shows the HTTP version the server saw
(scope["http_version"]) and the URL scheme, and its script adds the protocol the browser
says it used to load the page (the navigation entry's nextHopProtocol: "h2" for HTTP/2)."""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

PAGE = """<!DOCTYPE html>
<html>
<head><meta charset="utf-8"><title>rsasgi over HTTP/2</title></head>
<body>
<div id="server-version">{version}</div>
<div id="scheme">{scheme}</div>
<div id="browser-protocol">unknown</div>
<script>
  const [navigation] = performance.getEntriesByType("navigation");
  document.getElementById("browser-protocol").textContent = navigation.nextHopProtocol;
</script>
</body>
</html>
"""


async def page(request: Request) -> HTMLResponse:
    return HTMLResponse(
        PAGE.format(version=request.scope["http_version"], scheme=request.url.scheme)
    )


app = Starlette(routes=[Route("/", page)])
