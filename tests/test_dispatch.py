"""A request whose app the server cannot start is answered, not left hanging."""

from __future__ import annotations

import httpx
from conftest import wait_for_log


def test_a_request_the_app_cannot_be_started_for_gets_500(run_rsasgi):
    server = run_rsasgi("fault_dispatch:app", "--loop", "asyncio", "--lifespan", "off")
    failed = httpx.get(f"{server.url}/dispatch-fails", timeout=10)
    assert failed.status_code == 500
    wait_for_log(server, "Could not start the application", "task creation refused")
    ok = httpx.get(f"{server.url}/", timeout=10)
    assert (ok.status_code, ok.text) == (200, "ok")
