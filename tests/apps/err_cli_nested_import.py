"""A user module that exists but imports a module that does not."""

from __future__ import annotations

import err_no_such_dependency_xyz  # noqa: F401


async def app(scope, receive, send):  # never reached
    pass
