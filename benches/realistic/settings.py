"""Django settings of the realistic benchmark (benches/realistic_bench.py sets the environment).

The database is the benchmark's own PostgreSQL cluster, reached on a Unix socket:

- REALISTIC_DB_SOCKET_DIR: the cluster's socket directory (required).
- REALISTIC_DB_MODE: how Django holds its connections.
  `persistent` (the WSGI servers): CONN_MAX_AGE = None, one connection per thread, kept for
  the life of the process. `pool` (the ASGI servers): CONN_MAX_AGE = 0 and Django's
  PostgreSQL connection pool (Django 5.1+, psycopg_pool), as Django's documentation asks for
  ASGI ("persistent connections should be disabled; use your database backend's built-in
  connection pooling"): under ASGI each request runs its ORM calls on a thread of its own,
  and a thread's persistent connection would be abandoned with it.
- REALISTIC_DB_CONNECTIONS: the pool's size per worker process (min = max), default 8: the
  same number of connections per worker as the WSGI servers' 8 threads hold.
"""

import os

SECRET_KEY = "benchmark-only-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = ["benches.realistic"]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "benches.realistic.urls"
WSGI_APPLICATION = "benches.realistic.wsgi.application"

# APP_DIRS with DEBUG off: Django wraps the loaders in its cached loader, so each template is
# compiled once per process, as in production.
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {},
    }
]

DB_MODE = os.environ.get("REALISTIC_DB_MODE", "persistent")
if DB_MODE not in ("persistent", "pool"):
    raise ValueError(f"REALISTIC_DB_MODE must be persistent or pool, not {DB_MODE!r}")
POOL_SIZE = int(os.environ.get("REALISTIC_DB_CONNECTIONS", "8"))

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "bench",
        "USER": "bench",
        "HOST": os.environ.get("REALISTIC_DB_SOCKET_DIR", ""),
        "CONN_MAX_AGE": None if DB_MODE == "persistent" else 0,
        "OPTIONS": (
            {"pool": {"min_size": POOL_SIZE, "max_size": POOL_SIZE}} if DB_MODE == "pool" else {}
        ),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"
USE_I18N = False

# Errors to stderr (the server's log); nothing per request.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
