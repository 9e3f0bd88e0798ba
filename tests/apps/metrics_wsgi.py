"""WSGI app for tests/test_metrics.py.

/       200 "ok"
/hold   creates $METRICS_MARKERS/held, then answers 200 once $METRICS_MARKERS/release exists
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def app(environ, start_response):
    if environ["PATH_INFO"] == "/hold":
        markers = Path(os.environ["METRICS_MARKERS"])
        (markers / "held").touch()
        while not (markers / "release").exists():
            time.sleep(0.02)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
