"""A user module that fails while being imported."""

from __future__ import annotations


def _configure():
    raise RuntimeError("err-import-boom-77")


_configure()


async def app(scope, receive, send):  # never reached
    pass
