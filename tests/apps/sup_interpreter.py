"""ASGI app for tests/test_supervisor.py: says which interpreter options it runs under.

GET /    "debug=False optimize=1 dev_mode=True" under `python -O -X dev`
"""

import sys


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = f"debug={__debug__} optimize={sys.flags.optimize} dev_mode={sys.flags.dev_mode}"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body.encode()})
