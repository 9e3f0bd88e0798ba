"""A --factory whose call raises, two calls deep."""

from __future__ import annotations


def _settings() -> dict:
    return {"debug": True}


def make_app():
    return _settings()["database_url"]


def make_app_for(settings):
    """A factory that needs an argument --factory does not give."""
    return settings
