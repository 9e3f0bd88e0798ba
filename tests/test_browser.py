"""A real browser: headless Chromium loads a page from rsasgi whose script opens a websocket,
sends "hello", writes the server's reply into the page, and reports what the page shows back
to the server (tests/apps/ws_browser.py).

Chromium is the Debian package `chromium` (`apt-get install -y chromium`). When it is missing
the test fails if it runs as root (the machine could have installed it) and is skipped
otherwise.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import kill_process_group, wait_for_log

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def chromium() -> str:
    if CHROMIUM is None:
        message = "chromium is not installed (apt-get install -y chromium)"
        if os.geteuid() == 0:
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


#: Headless, and nothing but the page: no sandbox (root in CI), no GPU, no background traffic.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


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
            *CHROMIUM_FLAGS,
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


@contextmanager
def browsing(chromium: str, url: str, profile: str):
    """Headless Chromium showing `url` in real time, for as long as the block runs. Should the
    block fail, the error says what Chromium printed (it writes to a file beside the profile,
    as a pipe nobody read could fill and stall it)."""
    errors = Path(profile + ".stderr")
    with errors.open("wb") as stderr:
        proc = subprocess.Popen(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", url],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        yield proc
    except AssertionError as e:
        tail = errors.read_text(errors="replace")[-3000:]
        raise AssertionError(f"{e}\n--- chromium's stderr ---\n{tail}") from None
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
        # Its renderer and helper processes too, should any outlive it.
        kill_process_group(proc)


def test_browser_websocket_echo(run_rsasgi, chromium, tmp_path):
    server = run_rsasgi("ws_browser:app")
    with browsing(chromium, f"{server.url}/", str(tmp_path / "profile")):
        log = wait_for_log(server, "ws_browser: page shows", timeout=60)
        # The page closes the websocket with 1000 once it has the echo.
        wait_for_log(server, "closed by the client with 1000", timeout=20)
    shown = re.search(r"ws_browser: page shows out=(.*) status=(.*)", log)
    assert shown, log
    # What the page wrote into its elements: the server's echo, received (and perhaps
    # already closed, should the close have come first).
    assert shown.group(1) == repr("server echo: hello"), log
    assert shown.group(2).startswith("'received"), log
    assert server.proc.poll() is None
