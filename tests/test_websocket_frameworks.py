"""WebSocket frameworks run unchanged on rsasgi: a Django Channels chat room (the Channels
tutorial, in a copy of the project tests/django_support.py builds) and Starlette websocket
routes (tests/apps/ws_starlette.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import textwrap
from pathlib import Path

import httpx
import pytest
from conftest import wait_for
from django_support import ADMIN_PASSWORD, DJANGO_ENV, build_django_project
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

pytest.importorskip("channels")


def run(coro, timeout: float = 30.0):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def ws_connect(server, path: str, **kwargs):
    kwargs.setdefault("open_timeout", 10)
    kwargs.setdefault("close_timeout", 5)
    return connect(f"ws://127.0.0.1:{server.port}{path}", **kwargs)


async def recv_json(ws, timeout: float = 10.0):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


# --------------------------------------------------------------------------- Django Channels

# The Channels tutorial (https://channels.readthedocs.io/en/latest/tutorial/), parts 1-3: a
# `chat` app with an index and a room page, and the room's consumer in its asynchronous form
# (ws/chat/<room>/) and its first, synchronous form (ws/syncchat/<room>/). Each chat message
# also carries the user name from AuthMiddlewareStack.

CHAT_FILES = {
    "chat/__init__.py": "",
    "chat/apps.py": """
        from django.apps import AppConfig


        class ChatConfig(AppConfig):
            name = "chat"
        """,
    "chat/views.py": """
        from django.shortcuts import render


        def index(request):
            return render(request, "chat/index.html")


        def room(request, room_name):
            return render(request, "chat/room.html", {"room_name": room_name})
        """,
    "chat/urls.py": """
        from django.urls import path

        from . import views

        urlpatterns = [
            path("", views.index, name="index"),
            path("<str:room_name>/", views.room, name="room"),
        ]
        """,
    "chat/consumers.py": """
        import asyncio
        import json
        import os
        import time

        from asgiref.sync import async_to_sync
        from channels.generic.websocket import AsyncWebsocketConsumer, WebsocketConsumer


        def user_name(scope):
            user = scope["user"]
            return "anonymous" if user.is_anonymous else user.username


        class ChatConsumer(AsyncWebsocketConsumer):
            async def connect(self):
                self.room_name = self.scope["url_route"]["kwargs"]["room_name"]
                self.room_group_name = f"chat_{self.room_name}"
                await self.channel_layer.group_add(self.room_group_name, self.channel_name)
                await self.accept()

            async def disconnect(self, close_code):
                await self.channel_layer.group_discard(self.room_group_name, self.channel_name)

            async def receive(self, text_data):
                message = json.loads(text_data)["message"]
                await self.channel_layer.group_send(
                    self.room_group_name,
                    {"type": "chat.message", "message": message, "user": user_name(self.scope)},
                )

            async def chat_message(self, event):
                await self.send(
                    text_data=json.dumps({"message": event["message"], "user": event["user"]})
                )


        class SyncChatConsumer(WebsocketConsumer):
            def connect(self):
                self.room_name = self.scope["url_route"]["kwargs"]["room_name"]
                self.room_group_name = f"syncchat_{self.room_name}"
                async_to_sync(self.channel_layer.group_add)(self.room_group_name, self.channel_name)
                self.accept()

            def disconnect(self, close_code):
                async_to_sync(self.channel_layer.group_discard)(
                    self.room_group_name, self.channel_name
                )

            def receive(self, text_data):
                message = json.loads(text_data)["message"]
                async_to_sync(self.channel_layer.group_send)(
                    self.room_group_name,
                    {"type": "chat.message", "message": message, "user": user_name(self.scope)},
                )

            def chat_message(self, event):
                message = {"message": event["message"], "user": event["user"]}
                self.send(text_data=json.dumps(message))


        # Not the tutorial's: a room's history, 100 messages 10 ms apart, sent when asked, so
        # the consumer is still sending when a client that asked leaves. Its disconnect()
        # notes the close code in DJANGO_MARKER_DIR/<kind>-<room>.disconnect.
        def note_disconnect(kind, room, close_code):
            markers = os.environ.get("DJANGO_MARKER_DIR")
            if markers:
                with open(f"{markers}/{kind}-{room}.disconnect", "w") as marker:
                    marker.write(str(close_code))


        class HistoryConsumer(AsyncWebsocketConsumer):
            async def connect(self):
                self.room_name = self.scope["url_route"]["kwargs"]["room_name"]
                await self.channel_layer.group_add(f"history_{self.room_name}", self.channel_name)
                await self.accept()

            async def receive(self, text_data):
                for number in range(100):
                    await self.send(text_data=json.dumps({"history": number}))
                    await asyncio.sleep(0.01)

            async def disconnect(self, close_code):
                await self.channel_layer.group_discard(
                    f"history_{self.room_name}", self.channel_name
                )
                note_disconnect("history", self.room_name, close_code)


        class SyncHistoryConsumer(WebsocketConsumer):
            def connect(self):
                self.room_name = self.scope["url_route"]["kwargs"]["room_name"]
                self.accept()

            def receive(self, text_data):
                for number in range(100):
                    self.send(text_data=json.dumps({"history": number}))
                    time.sleep(0.01)

            def disconnect(self, close_code):
                note_disconnect("synchistory", self.room_name, close_code)
        """,
    "chat/routing.py": """
        from django.urls import re_path

        from . import consumers

        websocket_urlpatterns = [
            re_path(r"ws/chat/(?P<room_name>\\w+)/$", consumers.ChatConsumer.as_asgi()),
            re_path(r"ws/syncchat/(?P<room_name>\\w+)/$", consumers.SyncChatConsumer.as_asgi()),
            re_path(r"ws/history/(?P<room_name>\\w+)/$", consumers.HistoryConsumer.as_asgi()),
            re_path(
                r"ws/synchistory/(?P<room_name>\\w+)/$", consumers.SyncHistoryConsumer.as_asgi()
            ),
        ]
        """,
    "chat/templates/chat/index.html": """
        <!DOCTYPE html>
        <html>
        <head><meta charset="utf-8"/><title>Chat Rooms</title></head>
        <body>
            What chat room would you like to enter?<br>
            <input id="room-name-input" type="text" size="100"><br>
            <input id="room-name-submit" type="button" value="Enter">
            <script>
                document.querySelector('#room-name-submit').onclick = function(e) {
                    var roomName = document.querySelector('#room-name-input').value;
                    window.location.pathname = '/chat/' + roomName + '/';
                };
            </script>
        </body>
        </html>
        """,
    "chat/templates/chat/room.html": """
        <!DOCTYPE html>
        <html>
        <head><meta charset="utf-8"/><title>Chat Room</title></head>
        <body>
            <textarea id="chat-log" cols="100" rows="20"></textarea><br>
            <input id="chat-message-input" type="text" size="100"><br>
            <input id="chat-message-submit" type="button" value="Send">
            {{ room_name|json_script:"room-name" }}
            <script>
                const roomName = JSON.parse(document.getElementById('room-name').textContent);
                const chatSocket = new WebSocket(
                    'ws://' + window.location.host + '/ws/chat/' + roomName + '/'
                );
                chatSocket.onmessage = function(e) {
                    const data = JSON.parse(e.data);
                    document.querySelector('#chat-log').value += (data.message + '\\n');
                };
                chatSocket.onopen = function(e) {
                    chatSocket.send(JSON.stringify({'message': 'browser joined ' + roomName}));
                };
            </script>
        </body>
        </html>
        """,
}

CHANNELS_ASGI = """
    import os

    from channels.auth import AuthMiddlewareStack
    from channels.routing import ProtocolTypeRouter, URLRouter
    from channels.security.websocket import AllowedHostsOriginValidator
    from django.core.asgi import get_asgi_application

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
    # Initialize Django ASGI application early to ensure the AppRegistry
    # is populated before importing code that may import ORM models.
    django_asgi_app = get_asgi_application()

    from chat.routing import websocket_urlpatterns  # noqa: E402

    application = ProtocolTypeRouter(
        {
            "http": django_asgi_app,
            "websocket": AllowedHostsOriginValidator(
                AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
            ),
        }
    )
    """

CHANNELS_SETTINGS = """

    INSTALLED_APPS += ["channels", "chat"]
    ASGI_APPLICATION = "mysite.asgi.application"
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    """

CHANNELS_URLS = """

    from django.urls import include

    urlpatterns += [path("chat/", include("chat.urls"))]
    """


@pytest.fixture(scope="session")
def channels_project(tmp_path_factory) -> Path:
    """A copy of the shared Django project (so the other tests keep theirs) turned into the
    Channels tutorial's `mysite` with its `chat` app."""
    project = tmp_path_factory.mktemp("channels_project") / "site"
    shutil.copytree(build_django_project(tmp_path_factory), project)
    for name, text in CHAT_FILES.items():
        path = project / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    (project / "mysite" / "asgi.py").write_text(textwrap.dedent(CHANNELS_ASGI).lstrip())
    with open(project / "mysite" / "settings.py", "a") as settings:
        settings.write(textwrap.dedent(CHANNELS_SETTINGS))
    with open(project / "mysite" / "urls.py", "a") as urls:
        urls.write(textwrap.dedent(CHANNELS_URLS))
    return project


@pytest.fixture
def channels_server(run_rsasgi, channels_project):
    return run_rsasgi("mysite.asgi:application", "--app-dir", str(channels_project), env=DJANGO_ENV)


def origin(server) -> dict:
    return {"Origin": f"http://127.0.0.1:{server.port}"}


def test_channels_http_side_serves_pages(channels_server):
    with httpx.Client(base_url=channels_server.url, timeout=30) as client:
        room = client.get("/chat/lobby/")
        assert room.status_code == 200, room.text
        assert room.headers["content-type"] == "text/html; charset=utf-8"
        assert '<script id="room-name" type="application/json">"lobby"</script>' in room.text
        index = client.get("/chat/")
        assert index.status_code == 200
        assert "What chat room would you like to enter?" in index.text
        # The project's own Django views are still there.
        hello = client.get("/hello/")
        assert hello.status_code == 200
        assert "<h1>Hello from Django</h1>" in hello.text


@pytest.mark.parametrize("kind", ["chat", "syncchat"])
def test_channels_chat_room(channels_server, kind):
    """Two clients in one room each see the other's messages; a third in another room sees
    none of them."""

    async def client():
        headers = origin(channels_server)
        async with contextlib.AsyncExitStack() as stack:
            ann, bob, eve = [
                await stack.enter_async_context(
                    ws_connect(channels_server, f"/ws/{kind}/{room}/", additional_headers=headers)
                )
                for room in ["lobby", "lobby", "other"]
            ]
            await ann.send(json.dumps({"message": "hello from ann"}))
            expected = {"message": "hello from ann", "user": "anonymous"}
            assert await recv_json(ann) == expected
            assert await recv_json(bob) == expected

            await bob.send(json.dumps({"message": "hi ann, bob here ✓"}))
            expected = {"message": "hi ann, bob here ✓", "user": "anonymous"}
            assert await recv_json(bob) == expected
            assert await recv_json(ann) == expected

            await eve.send(json.dumps({"message": "anyone?"}))
            assert await recv_json(eve) == {"message": "anyone?", "user": "anonymous"}
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(ann.recv(), 0.5)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(bob.recv(), 0.1)

            # Bob leaves; ann's messages still reach ann and the room carries on.
            await bob.close()
            await ann.send(json.dumps({"message": "bob left"}))
            assert await recv_json(ann) == {"message": "bob left", "user": "anonymous"}

    run(client())


def test_channels_many_messages_in_order(channels_server):
    async def client():
        headers = origin(channels_server)
        async with contextlib.AsyncExitStack() as stack:
            ann, bob = [
                await stack.enter_async_context(
                    ws_connect(channels_server, "/ws/chat/busy/", additional_headers=headers)
                )
                for _ in range(2)
            ]
            for number in range(200):
                await ann.send(json.dumps({"message": f"m{number}"}))
            got_ann = [(await recv_json(ann))["message"] for _ in range(200)]
            got_bob = [(await recv_json(bob))["message"] for _ in range(200)]
            return got_ann, got_bob

    got_ann, got_bob = run(client(), timeout=60)
    expected = [f"m{number}" for number in range(200)]
    assert got_ann == expected
    assert got_bob == expected


@pytest.mark.parametrize("kind", ["history", "synchistory"])
def test_channels_consumer_busy_when_its_client_leaves_still_runs_disconnect(
    run_rsasgi, channels_project, tmp_path, kind
):
    """The client asks for a room's history and leaves after the first message, while the
    consumer is still sending. Its sends after the close must not raise: an exception there
    ends the consumer before Channels calls its disconnect(), so what that cleans up (the group
    membership, the app's own state) is never cleaned up (django/channels#1466)."""
    markers = tmp_path / "markers"
    markers.mkdir()
    server = run_rsasgi(
        "mysite.asgi:application",
        "--app-dir",
        str(channels_project),
        env={**DJANGO_ENV, "DJANGO_MARKER_DIR": str(markers)},
    )

    async def client():
        async with ws_connect(server, f"/ws/{kind}/left/", additional_headers=origin(server)) as ws:
            await ws.send(json.dumps({"message": "history please"}))
            assert await recv_json(ws) == {"history": 0}
            await ws.close(1000)

    run(client())
    marker = markers / f"{kind}-left.disconnect"
    wait_for(marker.exists, 15, message="the consumer's disconnect() ran")
    assert marker.read_text() == "1000"
    assert "Exception in ASGI application" not in server.output()


def test_channels_auth_middleware_sees_the_logged_in_user(channels_server):
    """Log in through the admin over HTTP, then open the websocket with the session cookie:
    AuthMiddlewareStack loads the user from the database."""
    with httpx.Client(base_url=channels_server.url, timeout=30) as http:
        page = http.get("/admin/login/", params={"next": "/admin/"})
        assert page.status_code == 200
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        login = http.post(
            "/admin/login/?next=/admin/",
            data={"csrfmiddlewaretoken": token, "username": "admin", "password": ADMIN_PASSWORD},
        )
        assert login.status_code == 302, login.text
        session = http.cookies["sessionid"]

    async def client():
        headers = {**origin(channels_server), "Cookie": f"sessionid={session}"}
        async with contextlib.AsyncExitStack() as stack:
            admin, guest = [
                await stack.enter_async_context(
                    ws_connect(channels_server, "/ws/chat/staff/", additional_headers=extra)
                )
                for extra in [headers, origin(channels_server)]
            ]
            await admin.send(json.dumps({"message": "admin here"}))
            assert await recv_json(guest) == {"message": "admin here", "user": "admin"}
            await guest.send(json.dumps({"message": "guest here"}))
            assert await recv_json(admin) == {"message": "admin here", "user": "admin"}
            assert await recv_json(admin) == {"message": "guest here", "user": "anonymous"}

    run(client())


@pytest.mark.parametrize("origin_header", [None, "http://evil.example"])
def test_channels_origin_validator_denies_with_403(channels_server, origin_header):
    """AllowedHostsOriginValidator closes before accepting: the handshake gets 403."""

    async def client():
        headers = {"Origin": origin_header} if origin_header else {}
        with pytest.raises(InvalidStatus) as info:
            async with ws_connect(channels_server, "/ws/chat/lobby/", additional_headers=headers):
                pass
        return info.value.response.status_code

    assert run(client()) == 403


def test_channels_unknown_websocket_path_is_refused(channels_server):
    """URLRouter raises ValueError("No route found ...") before accepting: HTTP 500."""

    async def client():
        with pytest.raises(InvalidStatus) as info:
            async with ws_connect(
                channels_server, "/ws/nowhere/", additional_headers=origin(channels_server)
            ):
                pass
        return info.value.response.status_code

    assert run(client()) == 500


# --------------------------------------------------------------------------- Starlette


@pytest.fixture
def starlette_server(run_rsasgi):
    return run_rsasgi("ws_starlette:app")


def test_starlette_websocket_endpoint_echo(starlette_server):
    async def client():
        async with ws_connect(starlette_server, "/ws/echo") as ws:
            replies = []
            for text in ["hello", "wörld ✓", "x" * 100_000]:
                await ws.send(text)
                replies.append(await asyncio.wait_for(ws.recv(), 10))
            await ws.close()
            return replies, ws.close_code

    replies, code = run(client())
    assert replies == [
        "Message text was: hello",
        "Message text was: wörld ✓",
        "Message text was: " + "x" * 100_000,
    ]
    assert code == 1000


def test_starlette_bytes_endpoint(starlette_server):
    async def client():
        async with ws_connect(starlette_server, "/ws/bytes") as ws:
            await ws.send(b"\x00\x01\x02abc")
            return await asyncio.wait_for(ws.recv(), 10)

    assert run(client()) == b"cba\x02\x01\x00"


def test_starlette_wrong_message_type_closes_with_1003(starlette_server):
    """WebSocketEndpoint with encoding="text" closes with 1003 when it receives bytes."""

    async def client():
        async with ws_connect(starlette_server, "/ws/echo") as ws:
            await ws.send(b"bytes, not text")
            try:
                await asyncio.wait_for(ws.recv(), 10)
            except ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd else None
            raise AssertionError("the connection stayed open")

    assert run(client()) == 1003


def test_starlette_function_endpoint_json_params_subprotocol_close(starlette_server):
    async def client():
        async with ws_connect(
            starlette_server,
            "/ws/room/blue?mode=fast",
            subprotocols=["json.v1"],
            additional_headers={"Cookie": "token=t0k"},
        ) as ws:
            assert ws.subprotocol == "json.v1"
            await ws.send(json.dumps({"n": 1}))
            first = json.loads(await asyncio.wait_for(ws.recv(), 10))
            await ws.send(json.dumps("leave"))
            second = json.loads(await asyncio.wait_for(ws.recv(), 10))
            try:
                await asyncio.wait_for(ws.recv(), 10)
            except ConnectionClosed as closed:
                return first, second, closed.rcvd and (closed.rcvd.code, closed.rcvd.reason)
            raise AssertionError("the connection stayed open")

    first, second, close = run(client())
    assert first == {
        "got": {"n": 1},
        "room": "blue",
        "query": {"mode": "fast"},
        "greeting": "hello from lifespan",
        "cookie": "t0k",
    }
    assert second["got"] == "leave"
    assert close == (4400, "left the room")


def test_starlette_denial_response(starlette_server):
    """websocket.send_denial_response() uses the websocket.http.response extension."""

    async def client():
        with pytest.raises(InvalidStatus) as info:
            async with ws_connect(starlette_server, "/ws/private"):
                pass
        denied = info.value.response
        async with ws_connect(starlette_server, "/ws/private?token=sesame") as ws:
            welcome = await asyncio.wait_for(ws.recv(), 10)
        return denied, welcome

    denied, welcome = run(client())
    assert denied.status_code == 401
    assert denied.body == b"no token"
    assert denied.headers.get("content-type", "").startswith("text/plain")
    assert welcome == "welcome"


def test_starlette_endpoint_refusing_in_on_connect_gets_its_on_disconnect(starlette_server):
    """A WebSocketEndpoint whose on_connect closes: the client gets a 403, and the endpoint,
    which then waits in receive(), hears the disconnect and runs on_disconnect."""

    async def client():
        with pytest.raises(InvalidStatus) as info:
            async with ws_connect(starlette_server, "/ws/refuse"):
                pass
        return info.value.response.status_code

    assert run(client()) == 403
    codes = wait_for(
        lambda: httpx.get(f"{starlette_server.url}/refused", timeout=10).json(),
        message="on_disconnect to run",
        server=starlette_server,
    )
    assert codes == [1006]


def test_starlette_http_and_websocket_side_by_side(starlette_server):
    response = httpx.get(f"{starlette_server.url}/", timeout=10)
    assert response.status_code == 200
    assert response.text == "starlette says hello from lifespan"

    async def client():
        async with ws_connect(starlette_server, "/ws/echo") as ws:
            await ws.send("ping")
            return await asyncio.wait_for(ws.recv(), 10)

    assert run(client()) == "Message text was: ping"
