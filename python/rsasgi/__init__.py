"""rsasgi: an ASGI application server written in Rust.

Run ``rsasgi module:app`` (or ``python -m rsasgi module:app``); ``--help`` lists
the options.
"""

from rsasgi._rsasgi import ClientDisconnected, __version__
from rsasgi._rsasgi import main as _main

__all__ = ["ClientDisconnected", "__version__", "main"]


def main() -> int:
    """Entry point of the ``rsasgi`` command: parses ``sys.argv`` and serves."""
    return _main()
