"""logs_wsgi's app behind an import that waits, so that a test can signal a process still
loading its app (tests/test_logs.py): the import creates the file named by $LOGS_IMPORTING,
then waits for the file named by $LOGS_IMPORT_GO to appear (30 s at most).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from logs_wsgi import app

__all__ = ["app"]

Path(os.environ["LOGS_IMPORTING"]).touch()
_go = Path(os.environ["LOGS_IMPORT_GO"])
_deadline = time.monotonic() + 30
while not _go.exists() and time.monotonic() < _deadline:
    time.sleep(0.02)
