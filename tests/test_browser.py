"""A real browser: headless Chromium loads a page from rsasgi whose script opens a websocket,
sends "hello", and writes the server's reply into the page (tests/apps/ws_browser.py).

Chromium is the Debian package `chromium` (`apt-get install -y chromium`). When it is missing
the test fails if it runs as root (the machine could have installed it) and is skipped
otherwise.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def chromium() -> str:
    if CHROMIUM is None:
        message = "chromium is not installed (apt-get install -y chromium)"
        if os.geteuid() == 0:
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


def dump_dom(chromium: str, url: str, profile: str) -> str:
    try:
        return _dump_dom(chromium, url, profile + "-1")
    except subprocess.TimeoutExpired:
        # A headless Chromium that hangs on a loaded machine is Chromium's problem, not the
        # server's: try once more with a fresh profile before failing.
        return _dump_dom(chromium, url, profile + "-2")


def _dump_dom(chromium: str, url: str, profile: str) -> str:
    result = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--dump-dom",
            "--virtual-time-budget=5000",
            url,
        ],
        capture_output=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-3000:]
    return result.stdout.decode(errors="replace")


def test_browser_websocket_echo(run_rsasgi, chromium, tmp_path):
    server = run_rsasgi("ws_browser:app")
    dom = dump_dom(chromium, f"{server.url}/", str(tmp_path / "profile"))
    out = re.search(r'<div id="out">(.*?)</div>', dom, re.S)
    status = re.search(r'<div id="status">(.*?)</div>', dom, re.S)
    assert out and status, dom
    assert out.group(1) == "server echo: hello", (
        f"page status {status.group(1)!r}; server log:\n{server.output()}"
    )
    assert status.group(1).startswith("received"), status.group(1)
    # The server saw the page load and the upgrade (access log or not, it answered both).
    assert server.proc.poll() is None
