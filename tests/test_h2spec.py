"""HTTP/2 conformance with h2spec (strict mode), over cleartext and over TLS.

h2spec 2.6.0 is at ../shared/tools/h2spec next to the repository on every machine and in CI;
without it these tests skip (and fail under CI=true, where it must be there).

Cleartext runs with `--http 2`: with the default `--http auto`, a connection that does not
open with the HTTP/2 preface is HTTP/1.1 by definition and gets HTTP/1.1's 400, which
h2spec's "invalid connection preface" case (3.5/2) counts as a failure.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

H2SPEC = Path(__file__).resolve().parent.parent.parent / "shared" / "tools" / "h2spec"


def h2spec(*args: str) -> str:
    if not H2SPEC.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{H2SPEC} is missing")
        pytest.skip(f"{H2SPEC} is missing")
    result = subprocess.run(
        [str(H2SPEC), "-S", "-o", "5", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0 and " 0 failed" in summary, result.stdout[-4000:]
    return summary


def test_cleartext_http2(run_rsasgi):
    server = run_rsasgi("proto_scope:app", "--http", "2", "--no-access-log")
    h2spec("-h", "127.0.0.1", "-p", str(server.port))


def test_http2_over_tls(run_rsasgi, tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    cert.private_key_pem.write_to_path(tmp_path / "key.pem")
    server = run_rsasgi(
        "proto_scope:app",
        "--ssl-certfile",
        str(tmp_path / "cert.pem"),
        "--ssl-keyfile",
        str(tmp_path / "key.pem"),
        "--no-access-log",
    )
    h2spec("-t", "-k", "-h", "127.0.0.1", "-p", str(server.port))
