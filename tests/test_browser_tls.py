"""A real browser over TLS and HTTP/2: headless Chromium loads a Starlette page from rsasgi
serving test_tls.py's certificate (a trustme CA), and the page says which protocol carried
it, as the server saw it and as the browser did (tests/apps/fw_starlette_page.py).

Chromium trusts the server's certificate by its public key alone: it is started with
--ignore-certificate-errors-spki-list naming the SHA-256 of the certificate's
SubjectPublicKeyInfo, which Chromium honours for that key only (and only with a profile of
its own, --user-data-dir, which test_browser.py always gives), rather than with
--ignore-certificate-errors, which would accept any certificate. The flag goes in through a
small script that runs Chromium with it, so test_browser.py's dump_dom serves as it is.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import test_browser
import test_tls
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from test_browser import dump_dom
from test_tls import https

# The fixtures of test_browser.py and test_tls.py this test uses by name.
chromium = test_browser.chromium
pki = test_tls.pki
serve_tls = test_tls.serve_tls


def spki_sha256(cert_pem: bytes) -> str:
    """The base64 SHA-256 of a certificate's SubjectPublicKeyInfo, as Chromium's
    --ignore-certificate-errors-spki-list takes it."""
    key = x509.load_pem_x509_certificate(cert_pem).public_key()
    spki = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def trusting(chromium: str, cert_pem: bytes, directory: Path) -> str:
    """A script that runs `chromium` trusting the key of the certificate `cert_pem`."""
    script = directory / "chromium-trusting-the-test-key"
    script.write_text(
        "#!/bin/sh\n"
        f'exec "{chromium}" --ignore-certificate-errors-spki-list={spki_sha256(cert_pem)} "$@"\n'
    )
    script.chmod(0o755)
    return str(script)


def text_of(dom: str, element_id: str) -> str | None:
    match = re.search(rf'<div id="{element_id}">(.*?)</div>', dom, re.S)
    return match and match.group(1)


def test_chromium_loads_a_starlette_page_over_http2_and_tls(serve_tls, pki, chromium, tmp_path):
    server = serve_tls(app="fw_starlette_page:app")
    browser = trusting(chromium, pki.server.cert_chain_pems[0].bytes(), tmp_path)
    dom = dump_dom(browser, https(server, "/"), str(tmp_path / "profile"))
    seen = {name: text_of(dom, name) for name in ("server-version", "scheme", "browser-protocol")}
    assert seen == {"server-version": "2", "scheme": "https", "browser-protocol": "h2"}, (
        f"{dom}\n--- server log ---\n{server.output()}"
    )
