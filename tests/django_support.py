"""A Django project made by `django-admin startproject`, shared by the framework tests.

tests/test_frameworks.py serves it through Django's ASGI handler, tests/test_wsgi_frameworks.py
through its WSGI handler (and the ASGI one again for the admin walk). The project is built once
per test session, in a pytest temporary directory, with an sqlite database, two users (`alice`
and the superuser `admin`) and a few views added to the generated urls.py.

tests/test_nginx.py serves it as a deployment would (`deploy_django_project`): DEBUG off,
ALLOWED_HOSTS set, `collectstatic` run into STATIC_ROOT, and behind TLS the secure-cookie
settings of Django's deployment checklist; `static_admin_walk` walks the admin with its
stylesheets and scripts.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

DJANGO_VIEWS = '''
"""Views added to the generated project by tests/django_support.py."""

import asyncio

from django.contrib.auth.models import User
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt


def hello(request):
    names = ", ".join(User.objects.order_by("username").values_list("username", flat=True))
    return HttpResponse(
        f"<html><body><h1>Hello from Django</h1><p>users: {names}</p>"
        f"<p>path: {request.path}</p></body></html>"
    )


async def about(request):
    return JsonResponse(
        {
            "view": "async",
            "name": request.GET.get("name"),
            "method": request.method,
            "script_name": request.META.get("SCRIPT_NAME"),
            "header": request.headers.get("X-Custom"),
        }
    )


@csrf_exempt
def body_digest(request):
    import hashlib

    return JsonResponse(
        {"size": len(request.body), "sha256": hashlib.sha256(request.body).hexdigest()}
    )


async def countdown(request):
    async def lines():
        for number in range(5, 0, -1):
            yield f"{number}\\n"
            await asyncio.sleep(0.01)
        yield "liftoff\\n"

    return StreamingHttpResponse(lines(), content_type="text/plain")


def where(request):
    """What Django makes of the URL the client used: links and redirects are built from it."""
    from django.urls import reverse

    return JsonResponse(
        {
            "absolute": request.build_absolute_uri(),
            "reverse": reverse("where"),
            "host": request.get_host(),
            "secure": request.is_secure(),
        }
    )


def _marker_dir():
    import os

    return os.environ.get("DJANGO_MARKER_DIR")


def _note_finished(sender, **kwargs):
    """request_finished (what closes the request's database connections, or gives them back
    to the pool): a line in DJANGO_MARKER_DIR/finished.log when that is set."""
    if _marker_dir():
        with open(f"{_marker_dir()}/finished.log", "a") as log:
            log.write("finished\\n")


from django.core.signals import request_finished  # noqa: E402

request_finished.connect(_note_finished)


class _NotedResponse(HttpResponse):
    def close(self):
        if _marker_dir():
            open(f"{_marker_dir()}/big.closed", "w").close()
        super().close()


def big(request):
    """8 MiB: more than the server buffers for a client that does not read."""
    if _marker_dir():
        open(f"{_marker_dir()}/big.started", "w").close()
    return _NotedResponse(b"b" * (8 << 20), content_type="application/octet-stream")


def sync_countdown(request):
    import time

    def lines():
        for number in range(5, 0, -1):
            yield f"{number}\\n"
            time.sleep(0.01)
        yield "liftoff\\n"

    return StreamingHttpResponse(lines(), content_type="text/plain")
'''

DJANGO_URLS = """
from mysite import views

urlpatterns += [
    path("hello/", views.hello),
    path("about/", views.about),
    path("digest/", views.body_digest),
    path("countdown/", views.countdown),
    path("sync-countdown/", views.sync_countdown),
    path("where/", views.where, name="where"),
    path("big/", views.big),
]
"""

# Settings modules added to the generated project for tests/test_nginx.py. Nothing in them is
# about the proxy (no SECURE_PROXY_SSL_HEADER, no CSRF_TRUSTED_ORIGINS): rsasgi sets the ASGI
# scope's scheme, and the WSGI environ's wsgi.url_scheme, to https from X-Forwarded-Proto, and
# Django takes request.is_secure() and the CSRF Origin check from them.
DJANGO_DEPLOY_SETTINGS = '''
"""Served as in production, over plain HTTP (added by tests/django_support.py)."""

from .settings import *  # noqa: F403

DEBUG = False
ALLOWED_HOSTS = ["localhost", "127.0.0.1"]
STATIC_ROOT = BASE_DIR / "staticfiles"  # noqa: F405
'''

DJANGO_HTTPS_SETTINGS = '''
"""Served as in production behind TLS (added by tests/django_support.py)."""

from .settings_deploy import *  # noqa: F403

SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
'''

ADMIN_PASSWORD = "correct horse battery staple"

# The project directory, built once per session (tmp_path_factory lives as long as the session).
_project: Path | None = None


def build_django_project(tmp_path_factory) -> Path:
    """`django-admin startproject mysite`, views added, migrated, users created; cached."""
    global _project
    if _project is not None:
        return _project
    pytest.importorskip("django")
    project = tmp_path_factory.mktemp("django_project")
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}

    def manage(*args: str) -> None:
        subprocess.run(
            [sys.executable, "manage.py", *args], cwd=project, env=env, check=True, timeout=120
        )

    # `python -m django` is django-admin, run by the interpreter that runs the tests.
    subprocess.run(
        [sys.executable, "-m", "django", "startproject", "mysite", str(project)],
        env=env,
        check=True,
        timeout=60,
    )
    (project / "mysite" / "views.py").write_text(textwrap.dedent(DJANGO_VIEWS))
    with open(project / "mysite" / "urls.py", "a") as urls:
        urls.write(DJANGO_URLS)
    (project / "mysite" / "settings_deploy.py").write_text(DJANGO_DEPLOY_SETTINGS.lstrip())
    (project / "mysite" / "settings_https.py").write_text(DJANGO_HTTPS_SETTINGS.lstrip())
    manage("migrate", "--noinput", "-v", "0")
    manage(
        "shell",
        "-c",
        "from django.contrib.auth.models import User; User.objects.create_user('alice')",
    )
    # As an operator would: createsuperuser reads the password from the environment.
    env["DJANGO_SUPERUSER_PASSWORD"] = ADMIN_PASSWORD
    manage("createsuperuser", "--noinput", "--username", "admin", "--email", "admin@example.com")
    _project = project
    return project


_static_root: Path | None = None


def deploy_django_project(tmp_path_factory) -> tuple[Path, Path]:
    """The project of `build_django_project` with `collectstatic` run (once per session).

    Returns the project directory and its STATIC_ROOT. Serve it with DJANGO_DEPLOY_ENV (plain
    HTTP) or DJANGO_HTTPS_ENV (behind a proxy that terminates TLS).
    """
    global _static_root
    project = build_django_project(tmp_path_factory)
    if _static_root is None:
        subprocess.run(
            [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
            cwd=project,
            env={**os.environ, **DJANGO_DEPLOY_ENV},
            check=True,
            timeout=120,
        )
        _static_root = project / "staticfiles"
    return project, _static_root


DJANGO_ENV = {"DJANGO_SETTINGS_MODULE": "mysite.settings"}
DJANGO_DEPLOY_ENV = {"DJANGO_SETTINGS_MODULE": "mysite.settings_deploy"}
DJANGO_HTTPS_ENV = {"DJANGO_SETTINGS_MODULE": "mysite.settings_https"}
STATIC_URL = "/static/"


def admin_walk(base_url: str) -> None:
    """What a new user of the admin does, asserting every step.

    GET /admin/ -> 302 to the login page; the login page -> 200 with a CSRF cookie and token;
    POST the form with the token -> 302 back to /admin/ with a session cookie; GET /admin/ -> 200
    "Site administration". Redirects are checked, never followed.
    """
    with httpx.Client(base_url=base_url, follow_redirects=False, timeout=30) as client:
        first = client.get("/admin/")
        assert first.status_code == 302, first.text
        assert first.headers["location"] == "/admin/login/?next=/admin/"

        page = client.get(first.headers["location"])
        assert page.status_code == 200, page.text
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert "csrftoken" in client.cookies
        match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        assert match, "no csrfmiddlewaretoken in the login form"
        token = match.group(1)

        login = client.post(
            "/admin/login/?next=/admin/",
            data={
                "csrfmiddlewaretoken": token,
                "username": "admin",
                "password": ADMIN_PASSWORD,
                "next": "/admin/",
            },
        )
        assert login.status_code == 302, login.text
        assert login.headers["location"] == "/admin/"
        assert "sessionid" in client.cookies

        admin = client.get("/admin/")
        assert admin.status_code == 200, admin.text
        assert "Site administration" in admin.text

        # The session is real: a page only a logged-in staff user sees.
        users = client.get("/admin/auth/user/")
        assert users.status_code == 200
        assert "alice" in users.text


class _StaticReferences(HTMLParser):
    """Collects the stylesheet, script and image URLs of a page that start with `prefix`."""

    ATTRIBUTES = {"link": "href", "script": "src", "img": "src"}

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = self.ATTRIBUTES.get(tag)
        url = dict(attrs).get(wanted) if wanted else None
        if url and url.startswith(self.prefix):
            self.urls.append(url)


def static_references(html: str) -> list[str]:
    """The URLs under STATIC_URL that `html` links, scripts and images point to."""
    parser = _StaticReferences(STATIC_URL)
    parser.feed(html)
    parser.close()
    return parser.urls


def static_admin_walk(client: httpx.Client, origin: str) -> list[str]:
    """A browser's first visit to the deployed admin, asserting every step; returns the static
    URLs the login page references.

    `client` has the site's base_url and `origin` is its scheme://host[:port], which a browser
    sends as Origin and in the Referer of the login POST. GET /admin/login/ -> 200; every
    stylesheet, script and image under STATIC_URL on it -> 200 and not empty; POST the form
    with its csrfmiddlewaretoken (and the csrftoken cookie) -> 302 to /admin/; GET /admin/
    -> 200 with the site administration title. Redirects are checked, never followed.
    """
    login_url = "/admin/login/?next=/admin/"
    page = client.get(login_url)
    assert page.status_code == 200, page.text
    assert "csrftoken" in client.cookies

    assets = static_references(page.text)
    assert any(url.endswith(".css") for url in assets), f"no stylesheet on the login page: {assets}"
    for url in assets:
        asset = client.get(url)
        assert asset.status_code == 200, f"{url}: {asset.status_code}"
        assert asset.content, f"{url} is empty"

    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert match, "no csrfmiddlewaretoken in the login form"
    login = client.post(
        login_url,
        data={
            "csrfmiddlewaretoken": match.group(1),
            "username": "admin",
            "password": ADMIN_PASSWORD,
            "next": "/admin/",
        },
        headers={"Origin": origin, "Referer": origin + login_url},
    )
    assert login.status_code == 302, login.text
    assert login.headers["location"] == "/admin/"
    assert "sessionid" in client.cookies

    admin = client.get("/admin/")
    assert admin.status_code == 200, admin.text
    assert "<title>Site administration | Django site admin</title>" in admin.text
    return assets
