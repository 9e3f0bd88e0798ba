"""A request whose app the server cannot start is answered, not left hanging."""

from __future__ import annotations

import sys

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


def test_receive_and_send_pass_for_coroutine_functions(run_rsasgi):
    """They act as coroutine functions (each call returns an awaitable) and now say so, as
    uvicorn's `async def` ones do: asgiref's async_to_sync(send), which every Channels sync
    consumer makes, printed a "non-async-marked callable" warning in every worker."""
    import json

    from websockets.sync.client import connect

    server = run_rsasgi("coroutine_marks:app")
    over_http = httpx.get(server.url + "/", timeout=10).json()
    with connect(f"ws://127.0.0.1:{server.port}/") as websocket:
        over_websocket = json.loads(websocket.recv(timeout=10))
    for marks in (over_http, over_websocket):
        assert marks["warnings"] == []
        for name in ("receive", "send"):
            assert marks[name]["asgiref"], marks
            assert marks[name].get("asyncio", True), marks
            # inspect knows of marks from 3.12 on (inspect.markcoroutinefunction).
            assert marks[name]["inspect"] or sys.version_info < (3, 12), marks


def test_an_app_that_returns_an_awaitable_is_awaited(run_rsasgi):
    """`await app(scope, receive, send)`: what calling the app gives need not be a
    coroutine, only awaitable."""
    server = run_rsasgi("awaitable_apps:awaitable_app", "--interface", "asgi3", "--lifespan", "off")
    response = httpx.get(server.url, timeout=10)
    assert (response.status_code, response.text) == (200, "awaited")


@pytest.mark.parametrize(
    "app, error",
    [
        ("not_awaitable_app", "TypeError: object NoneType can't be used in 'await' expression"),
        ("raising_app", "LookupError: raised before any await"),
    ],
)
def test_an_app_that_fails_when_called_gets_a_500(run_rsasgi, app, error):
    server = run_rsasgi(f"awaitable_apps:{app}", "--interface", "asgi3", "--lifespan", "off")
    response = httpx.get(f"{server.url}/called", timeout=10)
    assert response.status_code == 500
    log = wait_for_log(server, error)
    assert "Exception in ASGI application" in log, log
    # The worker goes on.
    assert httpx.get(f"{server.url}/again", timeout=10).status_code == 500
    assert server.proc.poll() is None


def test_an_app_can_look_at_its_own_task(run_rsasgi):
    """anyio's cancel scopes format the running task, debuggers ask for its stack and its
    coroutine's state: all of it works from inside the app."""
    server = run_rsasgi("awaitable_apps:introspecting_app", "--lifespan", "off")
    response = httpx.get(server.url, timeout=10)
    assert response.status_code == 200, server.output()
    assert response.text == "task CORO_RUNNING stack CORO_RUNNING"
