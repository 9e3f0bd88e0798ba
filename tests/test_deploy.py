"""deploy/rsasgi.service: the systemd unit README and deploy/nginx.conf point to."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import APPS, cli

UNIT = Path(__file__).resolve().parent.parent / "deploy" / "rsasgi.service"


def exec_start() -> list[str]:
    """ExecStart's words, its continuation lines joined."""
    text = UNIT.read_text().replace("\\\n", " ")
    (line,) = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart="))


def setting(name: str) -> str:
    (value,) = re.findall(rf"^{name}=(.*)$", UNIT.read_text(), re.M)
    return value


def test_its_command_line_is_one_rsasgi_takes(tmp_path):
    """Every option of ExecStart exists and goes with the others: --check-config with the
    app and the socket's directory replaced by the test's."""
    words = exec_start()
    assert words[0].endswith("/rsasgi") and words[1] == "mysite.asgi:application"
    options = [
        str(tmp_path / "rsasgi.sock") if word == "/run/rsasgi/rsasgi.sock" else word
        for word in words[2:]
    ]
    result = cli("--check-config", "--app-dir", str(APPS), "proto_scope:app", *options)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr, result.stderr


def test_systemd_waits_long_enough_for_a_graceful_stop():
    """TimeoutStopSec must exceed --timeout-graceful-shutdown and the 13 s a worker's own stop
    may take after it, or systemd kills a stop in progress."""
    words = exec_start()
    grace = float(words[words.index("--timeout-graceful-shutdown") + 1])
    assert float(setting("TimeoutStopSec")) > grace + 13
    assert setting("Type") == "notify"
    assert setting("KillMode") == "mixed"
    assert setting("RuntimeDirectory") == "rsasgi"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd is not installed")
def test_systemd_reads_it_without_complaint(tmp_path):
    """systemd-analyze verify, with the paths it checks made to exist."""
    unit = tmp_path / "mysite.service"
    program = tmp_path / "rsasgi"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    text = UNIT.read_text().replace("/srv/mysite/.venv/bin/rsasgi", str(program))
    unit.write_text(text.replace("WorkingDirectory=/srv/mysite", f"WorkingDirectory={tmp_path}"))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    complaints = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if str(unit) in line or "mysite.service" in line
    ]
    assert complaints == [], result.stdout + result.stderr
