"""A small Django project for benches/realistic_bench.py: one model, a page listing 20 of its
rows read from PostgreSQL through the ORM and rendered with a template, served as WSGI
(`benches.realistic.wsgi:application`, the sync view at /items) and as ASGI
(`benches.realistic.asgi:application`, the async view at /items-async)."""
