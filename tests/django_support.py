"""A Django project made by `django-admin startproject`, shared by the framework tests.

tests/test_frameworks.py serves it through Django's ASGI handler, tests/test_wsgi_frameworks.py
through its WSGI handler (and the ASGI one again for the admin walk). The project is built once
per test session, in a pytest temporary directory, with an sqlite database, two users (`alice`
and the superuser `admin`) and a few views added to the generated urls.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
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
]
"""

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
    manage("migrate", "--noinput", "-v", "0")
    manage(
        "shell",
        "-c",
        "from django.contrib.auth.models import User; "
        "User.objects.create_user('alice'); "
        f"User.objects.create_superuser('admin', 'admin@example.com', {ADMIN_PASSWORD!r})",
    )
    _project = project
    return project


DJANGO_ENV = {"DJANGO_SETTINGS_MODULE": "mysite.settings"}


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
