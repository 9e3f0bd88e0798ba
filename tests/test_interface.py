"""--interface auto: which interface each shape of application is served as; a signature
that does not tell is a guess said in a warning; and a callable that no interface can call
(a class where its instance was meant, an async factory) is refused at startup with a hint,
where every request would have been a 500.

App: tests/apps/iface_shapes.py, whose apps answer with their name and how they were called.
"""

from __future__ import annotations

import re

import httpx
import pytest
from conftest import APPS, cli, wait_for

# App -> the interface it is served as.
SHAPES = {
    "asgi3": "asgi3",
    "async_call": "asgi3",
    "returns_coroutine": "asgi3",
    "partial_asgi": "asgi3",
    "bound_method": "asgi3",
    "slots_call": "asgi3",
    "wrapped_asgi": "asgi3",
    "Asgi2Class": "asgi2",
    "asgi2_function": "asgi2",
    "wsgi": "wsgi",
    "wsgi_object": "wsgi",
    "wrapped_wsgi": "wsgi",
    "settings_delegate": "wsgi",
    "WsgiIterable": "wsgi",
}

# What each interface's apps answer with, once told their name.
BODIES = {"asgi3": "{} asgi 3.0", "asgi2": "{} asgi 2.0", "wsgi": "{} wsgi"}
NAMES = {"asgi3": "ASGI 3", "asgi2": "ASGI 2", "wsgi": "WSGI"}


def check(*args: str):
    return cli("--check-config", "--app-dir", str(APPS), *args)


# The name an app answers with, where it is not the one it is imported by.
ANSWERS_AS = {
    "Asgi2Class": "asgi2_class",
    "WsgiIterable": "wsgi_iterable",
    "wrapped_asgi": "asgi3",
    "wrapped_wsgi": "wsgi",
}


@pytest.mark.parametrize("name", list(SHAPES))
def test_each_shape_is_served_as_its_interface(run_rsasgi, name):
    """Among them, an object whose __getattr__ raises KeyError for a name it lacks, which
    made the detection crash the worker."""
    interface = SHAPES[name]
    name_in_body = ANSWERS_AS.get(name, name)
    server = run_rsasgi(f"iface_shapes:{name}")
    response = httpx.get(server.url + "/", timeout=10)
    assert (response.status_code, response.text) == (200, BODIES[interface].format(name_in_body))
    assert re.search(rf"interface {interface}\b", server.output()), server.output()
    assert "WARN" not in server.output(), server.output()


def test_check_config_names_the_interface_an_object_with_a_strict_getattr_is_served_as():
    result = check("iface_shapes:settings_delegate")
    assert result.returncode == 0, result.stderr
    assert "iface_shapes:settings_delegate (wsgi)" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize(
    "name, signature",
    [
        ("unwrapped_asgi", "(*args, **kwargs)"),
        ("unwrapped_wsgi", "(*args, **kwargs)"),
        ("wsgify", "(req, *args, **kwargs)"),
        ("pass_through", "(scope, *args, **kwargs)"),
    ],
)
def test_a_signature_that_does_not_tell_is_a_guess_said_in_a_warning(name, signature):
    """A decorator without functools.wraps, webob's wsgify, a middleware that passes on what
    it is given: any interface's arguments fit. They are taken for ASGI 3 (the last two were
    taken for ASGI 2, for their one named parameter), and the operator is told, and how to
    choose."""
    result = check(f"iface_shapes:{name}")
    assert result.returncode == 0, result.stderr
    assert f"iface_shapes:{name} (asgi3)" in result.stdout
    assert (
        f'rsasgi: warning: "iface_shapes:{name}" takes {signature}, which does not tell its '
        "interface: it is taken for ASGI 3 (scope, receive, send); if it is not, say which "
        "with --interface asgi3, asgi2 or wsgi"
    ) in result.stderr


def test_a_wrapper_taking_anything_around_a_function_of_one_argument_is_a_guess(run_rsasgi):
    """Werkzeug's @Request.application: inspect follows __wrapped__ to (request), which only
    ASGI 2 fits, but the wrapper takes (*args) and is WSGI. No signature tells: the guess is
    said, with how to choose, and --interface wsgi serves it."""
    result = check("iface_shapes:werkzeug_request_app")
    assert result.returncode == 0, result.stderr
    assert (
        '"iface_shapes:werkzeug_request_app" takes (*args), around a function that takes '
        "(request), which does not tell its interface"
    ) in result.stderr, result.stderr
    assert "--interface asgi3, asgi2 or wsgi" in result.stderr
    server = run_rsasgi("iface_shapes:werkzeug_request_app", "--interface", "wsgi")
    response = httpx.get(f"{server.url}/x", timeout=10)
    assert (response.status_code, response.text) == (200, "werkzeug /x")


def test_the_guess_is_said_once_and_the_interface_chosen_is_served(run_rsasgi):
    server = run_rsasgi("iface_shapes:pass_through", "--workers", "2")
    wait_for(lambda: server.output().count("is serving") == 2, server=server)
    response = httpx.get(server.url + "/", timeout=10)
    assert (response.status_code, response.text) == (200, "pass_through asgi 3.0")
    assert server.output().count("which does not tell its interface") == 1, server.output()

    chosen = run_rsasgi("iface_shapes:unwrapped_wsgi", "--interface", "wsgi")
    assert httpx.get(chosen.url + "/", timeout=10).text == "wsgi wsgi"
    assert "WARN" not in chosen.output(), chosen.output()


@pytest.mark.parametrize(
    "name, message",
    [
        (
            "AppClass",
            '"iface_shapes:AppClass" is a class that takes (), which ASGI 2 cannot call with '
            "(scope); if an instance is the application, name one (app = AppClass()), or add "
            "--factory to have rsasgi make it",
        ),
        (
            "Asgi2WrongInstance",
            '"iface_shapes:Asgi2WrongInstance" is a class taken for ASGI 2, which calls its '
            "instance with (receive, send), but their __call__ takes (self, scope, receive, "
            "send); if an instance is the application",
        ),
        (
            "takes_nothing",
            '"iface_shapes:takes_nothing" is a callable that takes (), which ASGI 3 cannot call '
            "with (scope, receive, send); if it makes the application, add --factory",
        ),
        (
            "one_argument",
            '"iface_shapes:one_argument" is a callable that takes (scope), which ASGI 3 cannot '
            "call with (scope, receive, send); an async application is ASGI 3's: "
            "async def app(scope, receive, send)",
        ),
        (
            "create_app",
            '"iface_shapes:create_app" is an async application factory (a coroutine function '
            "that takes no arguments), which rsasgi cannot await",
        ),
    ],
)
def test_a_callable_no_interface_can_call_is_refused_at_startup(run_rsasgi, name, message):
    """Each was served, and every request got a 500: --check-config said OK."""
    server = run_rsasgi(f"iface_shapes:{name}", wait=False)
    assert server.wait_exit() == 3
    lines = [line for line in server.output().splitlines() if message in line]
    assert len(lines) == 1, server.output()
    assert "Traceback" not in server.output()

    result = check(f"iface_shapes:{name}")
    assert result.returncode == 3, result.stdout
    assert result.stderr.startswith(f"rsasgi: {message}"), result.stderr
    assert result.stdout == ""


def test_the_class_where_its_instance_was_meant_is_served_with_factory(run_rsasgi):
    server = run_rsasgi("iface_shapes:AppClass", "--factory")
    assert httpx.get(server.url + "/", timeout=10).text == "app_class asgi 3.0"


@pytest.mark.parametrize(
    "name, interface, message",
    [
        (
            "asgi3",
            "wsgi",
            "is async (calling it returns a coroutine), which only ASGI 3 can serve, not WSGI",
        ),
        (
            "wsgi",
            "asgi3",
            "is a callable that takes (environ, start_response), which ASGI 3 cannot call with "
            "(scope, receive, send)",
        ),
    ],
)
def test_a_forced_interface_that_cannot_fit_is_warned_of(name, interface, message):
    """--interface is the way out when a signature misleads, so it is obeyed: with a
    warning, as its every request would otherwise fail without a word before."""
    result = check(f"iface_shapes:{name}", "--interface", interface)
    assert result.returncode == 0, result.stderr
    assert f"iface_shapes:{name} ({interface})" in result.stdout
    assert (
        f'rsasgi: warning: "iface_shapes:{name}" {message}; served as {NAMES[interface]} all '
        f"the same, as --interface {interface} asks"
    ) in result.stderr, result.stderr
