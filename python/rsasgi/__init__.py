"""rsasgi: an ASGI application server written in Rust.

Run ``rsasgi module:app`` (or ``python -m rsasgi module:app``); ``--help`` lists
the options.
"""

from rsasgi._rsasgi import ClientDisconnected, __version__
from rsasgi._rsasgi import main as _main

__all__ = ["ClientDisconnected", "__version__", "main"]


def main() -> int:
    """Entry point of the ``rsasgi`` command: parses ``sys.argv`` and serves."""
    code = _main()
    from rsasgi._worker import flush_streams

    if not flush_streams():
        # What the app printed is stuck behind a reader that stalled (a full pipe
        # nobody reads): finalising would flush it again, and wait for good.
        import os

        os._exit(code)
    return code
