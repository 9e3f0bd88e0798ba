"""A user module that raises while being imported, two calls deep."""

from __future__ import annotations


def _ratio(parts: int) -> float:
    return 1 / parts


def _configure() -> float:
    return _ratio(0)


RATIO = _configure()


async def app(scope, receive, send):  # never reached
    pass
