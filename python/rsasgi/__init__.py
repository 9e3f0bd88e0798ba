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
    from rsasgi import _worker

    if not _worker.flush_streams() or _worker.leave_without_finalising:
        # What the app printed is stuck behind a reader that stalled (a full pipe nobody
        # reads), or threads of the app are still running after the stop (their stacks are
        # in the log): finalising would flush it again, or join them, and wait for good.
        # The server's own files (--pid, --uds) are removed by now.
        import os

        os._exit(code)
    return code
