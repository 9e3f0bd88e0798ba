"""A request whose app the server cannot start is answered, not left hanging."""

from __future__ import annotations

import httpx
import pytest
from conftest import wait_for_log


@pytest.mark.parametrize(
    "app, lifespan",
    [("fault_dispatch:app", "off"), ("fault_dispatch:factory_app", "on")],
    ids=["task", "task-factory"],
)
def test_a_request_the_app_cannot_be_started_for_gets_500(run_rsasgi, app, lifespan):
    server = run_rsasgi(app, "--loop", "asyncio", "--lifespan", lifespan)
    failed = httpx.get(f"{server.url}/dispatch-fails", timeout=10)
    assert failed.status_code == 500
    wait_for_log(server, "Could not start the application", "task creation refused")
    ok = httpx.get(f"{server.url}/", timeout=10)
    assert (ok.status_code, ok.text) == (200, "ok")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_request_tasks_go_through_the_loops_task_factory(run_rsasgi, loop):
    """An app that installs a task factory (eager tasks, tracing) gets every request's
    task from it; without one, rsasgi makes them itself, without the factory's cost."""
    server = run_rsasgi("fault_dispatch:factory_app", "--loop", loop)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        first = int(client.get("/factory-tasks").text)
        assert client.get("/").text == "ok"
        second = int(client.get("/factory-tasks").text)
    assert first >= 1
    assert second == first + 2
