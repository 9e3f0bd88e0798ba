"""Every shape of application --interface auto must tell apart (tests/test_interface.py).

Each answers any request with what it was served as and its own name ("asgi3 async_call"),
so a test sees the interface it was called through; shapes that no interface can call are
at the end.
"""

from __future__ import annotations

import functools


async def _asgi(scope, receive, send, name="asgi3"):
    if scope["type"] == "lifespan":
        return  # lifespan unsupported: the server carries on without it
    body = f"{name} asgi {scope['asgi'].get('version', '3.0')}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def _wsgi(environ, start_response, name="wsgi"):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{name} wsgi".encode()]


# ASGI 3
async def asgi3(scope, receive, send):
    await _asgi(scope, receive, send, "asgi3")


class AsyncCall:
    async def __call__(self, scope, receive, send):
        await _asgi(scope, receive, send, "async_call")


async_call = AsyncCall()


class CallReturnsCoroutine:
    def __call__(self, scope, receive, send):
        return _asgi(scope, receive, send, "returns_coroutine")


returns_coroutine = CallReturnsCoroutine()
partial_asgi = functools.partial(_asgi, name="partial_asgi")


class Handler:
    async def handle(self, scope, receive, send):
        await _asgi(scope, receive, send, "bound_method")


bound_method = Handler().handle


class SlotsCall:
    """Sentry's ASGI middleware: __call__ is a slot, set on each instance."""

    __slots__ = ("__call__",)

    def __init__(self):
        self.__call__ = self._run

    async def _run(self, scope, receive, send):
        await _asgi(scope, receive, send, "slots_call")


slots_call = SlotsCall()


def _wrapping(function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        return function(*args, **kwargs)

    return wrapper


wrapped_asgi = _wrapping(asgi3)


class PassThrough:
    """Middleware that hands on whatever it is called with."""

    def __init__(self, app):
        self.app = app

    def __call__(self, scope, *args, **kwargs):
        return self.app(scope, *args, **kwargs)


pass_through = PassThrough(functools.partial(_asgi, name="pass_through"))


# ASGI 2
class Asgi2Class:
    def __init__(self, scope):
        self.scope = scope

    async def __call__(self, receive, send):
        await _asgi(self.scope, receive, send, "asgi2_class")


def asgi2_function(scope):
    async def instance(receive, send):
        await _asgi(scope, receive, send, "asgi2_function")

    return instance


# WSGI
def wsgi(environ, start_response):
    return _wsgi(environ, start_response, "wsgi")


class WsgiObject:
    def __call__(self, environ, start_response):
        return _wsgi(environ, start_response, "wsgi_object")


wsgi_object = WsgiObject()
wrapped_wsgi = _wrapping(wsgi)


class SettingsDelegate:
    """A WSGI app whose unknown attributes come from its settings: a KeyError, not an
    AttributeError, for a name it lacks (inspect asks for several)."""

    def __init__(self):
        self.settings = {"debug": False}

    def __getattr__(self, name):
        return self.__dict__["settings"][name]

    def __call__(self, environ, start_response):
        return _wsgi(environ, start_response, "settings_delegate")


settings_delegate = SettingsDelegate()


class WsgiIterable:
    """PEP 3333's application class: the instance is the response."""

    def __init__(self, environ, start_response):
        self.start_response = start_response

    def __iter__(self):
        yield from _wsgi({}, self.start_response, "wsgi_iterable")


# A signature that does not tell: served as ASGI 3 with a warning.
def _unwrapped(function):
    def wrapper(*args, **kwargs):
        return function(*args, **kwargs)

    return wrapper


unwrapped_asgi = _unwrapped(asgi3)
unwrapped_wsgi = _unwrapped(wsgi)


class Wsgify:
    """webob's wsgify: a request object, or environ and start_response."""

    def __init__(self, function):
        self.function = function

    def __call__(self, req, *args, **kwargs):
        return self.function(req, *args, **kwargs)


wsgify = Wsgify(wsgi)


# No interface can call these.
class AppClass:
    """The class where its instance was meant (app = AppClass())."""

    async def __call__(self, scope, receive, send):
        await _asgi(scope, receive, send, "app_class")


class Asgi2WrongInstance:
    """Built with the scope, but its instances take ASGI 3's arguments."""

    def __init__(self, scope=None):
        self.scope = scope

    async def __call__(self, scope, receive, send):
        await _asgi(scope, receive, send, "asgi2_wrong_instance")


class TakesNothing:
    def __call__(self):
        return asgi3


takes_nothing = TakesNothing()


async def create_app():
    """An async factory, which cannot be awaited before the loop runs."""
    return asgi3


async def one_argument(scope):
    pass


# Werkzeug's @Request.application: a wrapper taking (*args) around a function of the request,
# which inspect reports as (request) through __wrapped__; it is a WSGI application.
try:
    from werkzeug.wrappers import Request as _WerkzeugRequest
    from werkzeug.wrappers import Response as _WerkzeugResponse

    @_WerkzeugRequest.application
    def werkzeug_request_app(request):
        return _WerkzeugResponse(f"werkzeug {request.path}")
except ImportError:  # pragma: no cover - werkzeug comes with flask in the test setup
    pass
