"""TLS: `--ssl-certfile` and `--ssl-keyfile` make rsasgi serve HTTPS (HTTP/1.1 or HTTP/2 by
ALPN) and WSS, tell the app what the connection negotiated (the ASGI `tls` extension, the
WSGI environ's mod_ssl names), ask for client certificates on request, and say in one line
what is wrong with a certificate, a key or a password before anything listens.

Certificates come from trustme (a CA, the server's certificate for localhost and 127.0.0.1,
client certificates); keys in each PEM format from the `openssl` command, with self-signed
certificates made for them by `openssl req -x509`. Clients: httpx (verify= an SSLContext
trusting the test CA), curl, the websockets client, and Python ssl sockets where the test
needs to see the handshake itself (ALPN, protocol version, cipher suite, the server's
certificate, an alert).

Apps: tests/apps/proto_scope.py (the ASGI scope as JSON), wsgi_env.py (the WSGI environ),
ws_app.py (the WebSocket scope, an echo), tls_whoami.py (pid and certificate, for the
certificate rotation under the supervisor), and the frameworks of test_frameworks.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import httpx
import pytest
import trustme
from apps.proto_raw import RawConn, request
from conftest import APPS, Server, cli, wait_for, wait_for_log
from django_support import DJANGO_ENV, build_django_project
from test_cli import assert_one_clear_line
from test_supervisor import Outcome, failed, start_supervised, started_workers, wait_gone
from websockets.asyncio.client import connect

TLS12, TLS13 = 0x0303, 0x0304
# The keys of the ASGI tls extension (asgiref's "TLS extension").
TLS_KEYS = {
    "server_cert",
    "client_cert_chain",
    "client_cert_name",
    "client_cert_error",
    "tls_version",
    "cipher_suite",
}
# TLS 1.3 suites by OpenSSL's name (what Python's ssl reports): IANA number, rustls's name.
TLS13_SUITES = {
    "TLS_AES_128_GCM_SHA256": (0x1301, "TLS13_AES_128_GCM_SHA256"),
    "TLS_AES_256_GCM_SHA384": (0x1302, "TLS13_AES_256_GCM_SHA384"),
    "TLS_CHACHA20_POLY1305_SHA256": (0x1303, "TLS13_CHACHA20_POLY1305_SHA256"),
}
# The TLS 1.2 suite the TLS 1.2 clients below insist on (the server's key is ECDSA).
TLS12_CIPHER = "ECDHE-ECDSA-AES128-GCM-SHA256"
TLS12_SUITE = (0xC02B, "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256")
# A TLS alert record: fatal (2), decode_error (50). What a peer that does not speak TLS gets.
DECODE_ERROR_ALERT = b"\x15\x03\x03\x00\x02\x02\x32"
# GOAWAY on stream 0, last stream 0, PROTOCOL_ERROR (RFC 9113 §6.8): a wrong HTTP/2 preface.
GOAWAY_PROTOCOL_ERROR = bytes.fromhex("000008 07 00 00000000 00000000 00000001")
# RFC 4514: the last RDN first; the comma inside a value escaped.
ALICE_DN = "CN=alice,OU=Staff,O=Example\\, Inc"
PASSWORD = "correct horse battery staple"
V1_TCP4 = b"PROXY TCP4 203.0.113.9 192.0.2.1 51234 443\r\n"
LEVEL = re.compile(r"^\S+\s+(TRACE|DEBUG|INFO|WARN|ERROR)\s")


# Certificates, keys and files.


def der(pem: str | bytes) -> bytes:
    """The DER bytes of the (first) certificate in `pem`."""
    text = pem.decode() if isinstance(pem, bytes) else pem
    return ssl.PEM_cert_to_DER_cert(text)


def leaf_der(cert: trustme.LeafCert) -> bytes:
    return der(cert.cert_chain_pems[0].bytes())


@dataclass
class Pki:
    """A test CA and the server's certificate it signed (localhost, 127.0.0.1), as files with
    the key; a CA for clients and a client certificate it signed (alice); a client certificate
    signed by neither (stranger).

    The clients' CA is not the one clients trust for the server, so that OpenSSL, which
    completes a client's chain from the certificates it trusts, sends alice's alone."""

    ca: trustme.CA
    server: trustme.LeafCert
    client_ca: trustme.CA
    alice: trustme.LeafCert
    stranger: trustme.LeafCert
    directory: Path

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def client_ca_file(self) -> Path:
        return self.directory / "client-ca.pem"

    def clients(self, reqs: str) -> list[str]:
        """The options asking for client certificates (`reqs`) signed by the clients' CA."""
        return ["--ssl-ca-certs", str(self.client_ca_file), "--ssl-cert-reqs", reqs]

    @property
    def cert_file(self) -> Path:
        return self.directory / "cert.pem"

    @property
    def key_file(self) -> Path:
        return self.directory / "key.pem"

    def args(self) -> list[str]:
        return ["--ssl-certfile", str(self.cert_file), "--ssl-keyfile", str(self.key_file)]

    def client(
        self,
        cert: trustme.LeafCert | None = None,
        alpn: list[str] | None = None,
        tls12: bool = False,
    ) -> ssl.SSLContext:
        """A client context trusting the test CA (see `client_context`)."""
        return client_context(self.ca.cert_pem.bytes().decode(), cert, alpn, tls12)


def client_context(
    cadata: str,
    cert: trustme.LeafCert | None = None,
    alpn: list[str] | None = None,
    tls12: bool = False,
) -> ssl.SSLContext:
    """A client context trusting `cadata`; with a client certificate and ALPN protocols if
    given; `tls12`: TLS 1.2 at most, and TLS12_CIPHER only (so the suite is known)."""
    ctx = ssl.create_default_context(cadata=cadata)
    if cert is not None:
        cert.configure_cert(ctx)
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(TLS12_CIPHER)
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    return ctx


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client_ca = trustme.CA()
    alice = client_ca.issue_cert(
        "alice@example.com",
        common_name="alice",
        organization_name="Example, Inc",
        organization_unit_name="Staff",
    )
    stranger = trustme.CA().issue_cert("stranger@example.com", common_name="stranger")
    pki = Pki(ca, server, client_ca, alice, stranger, directory)
    ca.cert_pem.write_to_path(pki.ca_file)
    client_ca.cert_pem.write_to_path(pki.client_ca_file)
    server.cert_chain_pems[0].write_to_path(pki.cert_file)
    server.private_key_pem.write_to_path(pki.key_file)
    alice.cert_chain_pems[0].write_to_path(directory / "alice.pem")
    alice.private_key_pem.write_to_path(directory / "alice.key")
    return pki


def openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def self_signed(key: Path, cert: Path, password: str | None = None) -> Path:
    """A certificate for `key`, for localhost and 127.0.0.1, signed by itself."""
    openssl(
        "req",
        "-new",
        "-x509",
        "-key",
        key,
        *(["-passin", f"pass:{password}"] if password else []),
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
        "-days",
        "30",
        "-out",
        cert,
    )
    return cert


# The openssl command that makes each kind of key file (`{plain}`: the pkcs8-rsa key, made
# first), and how the file begins.
KEYS = {
    "pkcs8-rsa": (
        ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "{key}"],
        "-----BEGIN PRIVATE KEY-----",
    ),
    "pkcs8-ec": (
        ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "{key}"],
        "-----BEGIN PRIVATE KEY-----",
    ),
    "pkcs1": (
        ["genrsa", "-traditional", "-out", "{key}", "2048"],
        "-----BEGIN RSA PRIVATE KEY-----",
    ),
    "sec1": (
        ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "{key}"],
        "-----BEGIN EC PRIVATE KEY-----",
    ),
    "pkcs8-encrypted": (
        ["pkcs8", "-topk8", "-v2", "aes-256-cbc", "-in", "{plain}", "-out", "{key}"]
        + ["-passout", f"pass:{PASSWORD}"],
        "-----BEGIN ENCRYPTED PRIVATE KEY-----",
    ),
    "legacy-genrsa": (
        ["genrsa", "-aes256", "-traditional", "-passout", f"pass:{PASSWORD}"]
        + ["-out", "{key}", "2048"],
        "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED",
    ),
    "legacy-rsa": (
        ["rsa", "-aes256", "-traditional", "-in", "{plain}", "-out", "{key}"]
        + ["-passout", f"pass:{PASSWORD}"],
        "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED",
    ),
    # Well formed, and refused by aws-lc-rs: too short, or restricted to PSS signatures.
    "rsa-1024-pkcs1": (
        ["genrsa", "-traditional", "-out", "{key}", "1024"],
        "-----BEGIN RSA PRIVATE KEY-----",
    ),
    "rsa-1024-pkcs8": (
        ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024", "-out", "{key}"],
        "-----BEGIN PRIVATE KEY-----",
    ),
    "rsa-pss": (
        ["genpkey", "-algorithm", "RSA-PSS", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "{key}"],
        "-----BEGIN PRIVATE KEY-----",
    ),
}
# Kinds without a password, that rsasgi serves with.
PLAIN_KEYS = ("pkcs8-rsa", "pkcs8-ec", "pkcs1", "sec1")
ENCRYPTED_KEYS = ("pkcs8-encrypted", "legacy-genrsa", "legacy-rsa")


@dataclass
class KeyFile:
    key: Path
    cert: Path  # self-signed, for the key


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, KeyFile]:
    """Every kind of KEYS, made once, with a self-signed certificate each."""
    directory = tmp_path_factory.mktemp("keys")
    plain = directory / "pkcs8-rsa.key"  # made first
    made: dict[str, KeyFile] = {}
    for kind, (command, beginning) in KEYS.items():
        key = directory / f"{kind}.key"
        openssl(*(part.format(key=key, plain=plain) for part in command))
        assert key.read_text().startswith(beginning), (kind, key.read_text()[:80])
        password = PASSWORD if kind in ENCRYPTED_KEYS else None
        made[kind] = KeyFile(key, self_signed(key, directory / f"{kind}.crt", password))
    return made


# Servers and clients.


@pytest.fixture
def serve_tls(run_rsasgi, pki):
    """rsasgi serving `app` (the scope app unless told) over TLS with the test CA's server
    certificate."""

    def start(*args: str, app: str = "proto_scope:app", **kwargs) -> Server:
        return run_rsasgi(app, *pki.args(), *args, **kwargs)

    return start


def https(server: Server, path: str = "/") -> str:
    return f"https://127.0.0.1:{server.port}{path}"


@contextlib.contextmanager
def tls_connection(server: Server, ctx: ssl.SSLContext) -> Iterator[ssl.SSLSocket]:
    sock = socket.create_connection((server.host, server.port), timeout=10)
    with ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
        yield tls


@dataclass
class Exchange:
    """What the app answered to one request, and what the client's side of the TLS
    connection saw."""

    body: dict
    version: str  # Python's ssl name: "TLSv1.3"
    cipher: str  # OpenSSL's name
    server_cert: bytes  # DER


def exchange(server: Server, ctx: ssl.SSLContext, path: str = "/") -> Exchange:
    """GET `path` over HTTP/1.1 on a TLS connection of its own; the answer must be a 200."""
    with tls_connection(server, ctx) as tls:
        conn = RawConn(tls)
        conn.send(request("GET", path))
        response = conn.read_response()
        assert response.status == 200, response
        return Exchange(
            json.loads(response.body),
            tls.version(),
            tls.cipher()[0],
            tls.getpeercert(binary_form=True),
        )


def tls_scope(server: Server, ctx: ssl.SSLContext) -> dict:
    """The ASGI tls extension of a request over a connection made with `ctx`."""
    return exchange(server, ctx).body["scope"]["extensions"]["tls"]


def refusal(server: Server, ctx: ssl.SSLContext) -> ssl.SSLError:
    """The error of a client whose handshake the server refuses.

    The client reads before it sends anything: in TLS 1.3 its side of the handshake is done
    before the server has judged its certificate, and the server's alert comes with the
    first read (a request sent in the meantime could turn the close into a reset).
    """
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        with pytest.raises(ssl.SSLError) as raised:
            with ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
                tls.recv(1)
    return raised.value


def h2_client(ctx: ssl.SSLContext) -> httpx.Client:
    return httpx.Client(http1=False, http2=True, verify=ctx, timeout=30)


def client_hello(ctx: ssl.SSLContext) -> bytes:
    """The bytes of a ClientHello as `ctx` would send it."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def warnings_and_errors(log: str) -> list[str]:
    return [
        line
        for line in log.splitlines()
        if (level := LEVEL.match(line)) and level.group(1) in ("WARN", "ERROR")
    ]


# Startup: the options, and one clear line for a bad file.


def test_the_listening_line_says_https(serve_tls):
    server = serve_tls()
    wait_for_log(server, f"Listening on https://127.0.0.1:{server.port} ")


@pytest.mark.parametrize(
    "theirs, ours",
    [
        ("--ssl-certificate", "--ssl-certfile"),
        ("--ssl-ca", "--ssl-ca-certs"),
        ("--ssl-protocol-min", "--ssl-min-version"),
        ("--ssl-client-verify", "--ssl-cert-reqs"),
        ("--ssl-version", "--ssl-min-version"),
    ],
)
def test_other_servers_tls_options_point_to_ours(theirs, ours):
    result = cli(theirs, "x", "--app-dir", str(APPS), "proto_scope:app", "--port", "0")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"rsasgi: {theirs} is {ours} in rsasgi (see 'rsasgi --help')"


@dataclass
class Files:
    """The files the bad-file cases are made of."""

    cert: Path
    key: Path
    missing: Path
    other_key: Path  # alice's: a key, but not the certificate's
    encrypted: Path
    legacy_genrsa: Path
    legacy_rsa: Path
    refused: dict[str, KeyFile]  # well formed, and of a size or kind aws-lc-rs refuses


@pytest.fixture
def files(pki, keys, tmp_path) -> Files:
    return Files(
        cert=pki.cert_file,
        key=pki.key_file,
        missing=tmp_path / "missing.pem",
        other_key=pki.directory / "alice.key",
        encrypted=keys["pkcs8-encrypted"].key,
        legacy_genrsa=keys["legacy-genrsa"].key,
        legacy_rsa=keys["legacy-rsa"].key,
        refused={kind: keys[kind] for kind in ("rsa-1024-pkcs1", "rsa-1024-pkcs8", "rsa-pss")},
    )


# Each case: the TLS options, and what the one error line must say (option, file, problem).
BAD_FILES = {
    "missing-certfile": lambda f: (
        ["--ssl-certfile", f.missing, "--ssl-keyfile", f.key],
        ["--ssl-certfile", f.missing, "No such file"],
    ),
    "missing-keyfile": lambda f: (
        ["--ssl-certfile", f.cert, "--ssl-keyfile", f.missing],
        ["--ssl-keyfile", f.missing, "No such file"],
    ),
    "missing-ca-certs": lambda f: (
        ["--ssl-certfile", f.cert, "--ssl-keyfile", f.key]
        + ["--ssl-ca-certs", f.missing, "--ssl-cert-reqs", "required"],
        ["--ssl-ca-certs", f.missing, "No such file"],
    ),
    "no-certificate-in-certfile": lambda f: (
        ["--ssl-certfile", f.key, "--ssl-keyfile", f.key],
        ["--ssl-certfile", f.key, "no certificate"],
    ),
    "certfile-alone-without-a-key": lambda f: (
        ["--ssl-certfile", f.cert],
        ["--ssl-certfile", f.cert, "no private key"],
    ),
    "no-key-in-keyfile": lambda f: (
        ["--ssl-certfile", f.cert, "--ssl-keyfile", f.cert],
        ["--ssl-keyfile", f.cert, "no private key"],
    ),
    "key-of-another-certificate": lambda f: (
        ["--ssl-certfile", f.cert, "--ssl-keyfile", f.other_key],
        ["--ssl-certfile", f.cert, "--ssl-keyfile", f.other_key]
        + ["does not belong to the certificate"],
    ),
    "encrypted-key-without-password": lambda f: (
        ["--ssl-certfile", f.cert, "--ssl-keyfile", f.encrypted],
        ["--ssl-keyfile", f.encrypted, "encrypted", "--ssl-keyfile-password"],
    ),
    "wrong-password": lambda f: (
        ["--ssl-certfile", f.cert, "--ssl-keyfile", f.encrypted]
        + ["--ssl-keyfile-password", "wrong"],
        ["--ssl-keyfile", f.encrypted, "wrong --ssl-keyfile-password"],
    ),
    "legacy-encrypted-genrsa": lambda f: (
        ["--ssl-certfile", f.cert, "--ssl-keyfile", f.legacy_genrsa]
        + ["--ssl-keyfile-password", PASSWORD],
        ["--ssl-keyfile", f.legacy_genrsa, "openssl pkcs8"],
    ),
    "legacy-encrypted-rsa": lambda f: (
        ["--ssl-certfile", f.cert, "--ssl-keyfile", f.legacy_rsa]
        + ["--ssl-keyfile-password", PASSWORD],
        ["--ssl-keyfile", f.legacy_rsa, "openssl pkcs8"],
    ),
    # rustls says "failed to parse private key" of all three: the reason is the size or kind.
    **{
        f"{kind}-key": lambda f, kind=kind, needle=needle: (
            ["--ssl-certfile", f.refused[kind].cert, "--ssl-keyfile", f.refused[kind].key],
            ["--ssl-keyfile", f.refused[kind].key, needle, "make a"],
        )
        for kind, needle in [
            ("rsa-1024-pkcs1", "shorter than 2048 bits"),
            ("rsa-1024-pkcs8", "shorter than 2048 bits"),
            ("rsa-pss", "RSA-PSS key"),
        ]
    },
    # The test certificate's key is ECDSA: an RSA-only TLS 1.2 suite could never be used.
    "ciphers-for-another-key": lambda f: (
        ["--ssl-certfile", f.cert, "--ssl-keyfile", f.key]
        + ["--ssl-ciphers", "ECDHE-RSA-AES128-GCM-SHA256"],
        ["--ssl-ciphers", "ECDHE-RSA-AES128-GCM-SHA256", "--ssl-keyfile", f.key, "RSA key"],
    ),
}


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one-process", "supervisor"])
@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_tls_file_is_one_line_and_exit_1(files, case, workers):
    args, needles = BAD_FILES[case](files)
    result = cli(
        *map(str, args), *workers, "--app-dir", str(APPS), "proto_scope:app", "--port", "0"
    )
    assert result.returncode == 1, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert_one_clear_line(result.stderr, *map(str, needles))


# TLS settings wrong whatever the files hold: settings errors, exit 2 as any other's.
BAD_SETTINGS = {
    "unknown-cipher": (
        ["--ssl-ciphers", "HIGH:!aNULL"],
        # The known ones are listed, by rustls's names and OpenSSL's.
        ["--ssl-ciphers", '"HIGH"']
        + ["TLS13_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]
        + ["ECDHE-RSA-AES128-GCM-SHA256"],
    ),
    "tls12-suites-with-tls13-only": (
        ["--ssl-ciphers", "ECDHE-RSA-AES128-GCM-SHA256", "--ssl-min-version", "1.3"],
        ["--ssl-ciphers", "ECDHE-RSA-AES128-GCM-SHA256", "no suite for TLS 1.3"],
    ),
    "required-without-ca-certs": (
        ["--ssl-cert-reqs", "required"],
        ["--ssl-cert-reqs", "--ssl-ca-certs"],
    ),
}


@pytest.mark.parametrize("check", [[], ["--check-config"]], ids=["start", "check-config"])
@pytest.mark.parametrize("case", list(BAD_SETTINGS))
def test_a_bad_tls_setting_is_one_line_and_exit_2(files, case, check):
    """As README says of every setting; it was exit 1, as for a file, and the files are
    not read: a missing key file is not what gets named."""
    args, needles = BAD_SETTINGS[case]
    tls = ["--ssl-certfile", str(files.cert), "--ssl-keyfile", "/nonexistent/key.pem"]
    result = cli(*tls, *args, *check, "--app-dir", str(APPS), "proto_scope:app", "--port", "0")
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert_one_clear_line(result.stderr, *needles)


@pytest.mark.parametrize("kind", [*PLAIN_KEYS, "pkcs8-encrypted"])
def test_each_key_format_serves(run_rsasgi, keys, kind):
    made = keys[kind]
    password = [] if kind in PLAIN_KEYS else ["--ssl-keyfile-password", PASSWORD]
    files = ["--ssl-certfile", str(made.cert), "--ssl-keyfile", str(made.key)]
    server = run_rsasgi("proto_scope:app", *files, *password)
    seen = exchange(server, client_context(made.cert.read_text()))
    assert seen.server_cert == der(made.cert.read_text())
    assert seen.body["scope"]["scheme"] == "https"


def test_the_short_option_names(run_rsasgi, pki, keys):
    """--certfile, --keyfile, --keyfile-password, --ca-certs and --cert-reqs 2 (gunicorn's
    number for required) are the --ssl-* options."""
    made = keys["pkcs8-encrypted"]
    server = run_rsasgi(
        "proto_scope:app",
        *["--certfile", str(made.cert), "--keyfile", str(made.key)],
        *["--keyfile-password", PASSWORD],
        *["--ca-certs", str(pki.client_ca_file), "--cert-reqs", "2"],
    )
    cadata = made.cert.read_text()
    assert tls_scope(server, client_context(cadata, pki.alice))["client_cert_name"] == ALICE_DN
    assert refusal(server, client_context(cadata)).reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED"


def test_a_certificate_file_with_its_chain_after_it(run_rsasgi, tmp_path):
    """The server sends the intermediate: a client that trusts only the root verifies it."""
    root = trustme.CA()
    intermediate = root.create_child_ca()
    leaf = intermediate.issue_cert("localhost", "127.0.0.1")
    cert_file, key_file = tmp_path / "chain.pem", tmp_path / "key.pem"
    cert_file.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(key_file)
    server = run_rsasgi(
        "proto_scope:app", "--ssl-certfile", str(cert_file), "--ssl-keyfile", str(key_file)
    )
    seen = exchange(server, client_context(root.cert_pem.bytes().decode()))
    assert seen.server_cert == leaf_der(leaf)
    # server_cert is the server's own certificate, without the chain.
    tls = seen.body["scope"]["extensions"]["tls"]
    assert tls["server_cert"].count("-----BEGIN CERTIFICATE-----") == 1
    assert der(tls["server_cert"]) == leaf_der(leaf)


@pytest.mark.parametrize("key_first", [False, True], ids=["cert-then-key", "key-then-cert"])
def test_a_certificate_file_holding_the_key_too(run_rsasgi, pki, tmp_path, key_first):
    bundle = tmp_path / "bundle.pem"
    parts = [pki.server.cert_chain_pems[0].bytes(), pki.server.private_key_pem.bytes()]
    bundle.write_bytes(b"".join(reversed(parts) if key_first else parts))
    server = run_rsasgi("proto_scope:app", "--ssl-certfile", str(bundle))
    assert exchange(server, pki.client()).server_cert == leaf_der(pki.server)


# What the app sees.


def test_an_http11_request_sees_https_and_what_the_connection_negotiated(serve_tls, pki):
    server = serve_tls()
    seen = exchange(server, pki.client())
    scope = seen.body["scope"]
    assert scope["scheme"] == "https"
    assert scope["http_version"] == "1.1"
    tls = scope["extensions"]["tls"]
    assert set(tls) == TLS_KEYS
    assert der(tls["server_cert"]) == seen.server_cert == leaf_der(pki.server)
    assert tls["client_cert_chain"] == []
    assert tls["client_cert_name"] is None
    assert tls["client_cert_error"] is None
    assert (seen.version, tls["tls_version"]) == ("TLSv1.3", TLS13)
    assert tls["cipher_suite"] == TLS13_SUITES[seen.cipher][0]


def test_http2_by_alpn_with_httpx(serve_tls, pki):
    server = serve_tls()
    with h2_client(pki.client()) as client:
        response = client.get(https(server, "/h2"))
    assert response.http_version == "HTTP/2"
    scope = response.json()["scope"]
    assert (scope["scheme"], scope["http_version"], scope["path"]) == ("https", "2", "/h2")
    tls = scope["extensions"]["tls"]
    assert set(tls) == TLS_KEYS
    assert der(tls["server_cert"]) == leaf_der(pki.server)
    assert tls["tls_version"] == TLS13


@pytest.mark.parametrize(
    "http, offered, chosen",
    [
        ("auto", ["h2", "http/1.1"], "h2"),
        ("auto", ["http/1.1"], "http/1.1"),
        ("1", ["h2", "http/1.1"], "http/1.1"),
        ("2", ["h2", "http/1.1"], "h2"),
    ],
    ids=["auto-both", "auto-http1.1", "http-1", "http-2"],
)
def test_alpn_offers_what_http_serves(serve_tls, pki, http, offered, chosen):
    server = serve_tls("--http", http)
    with tls_connection(server, pki.client(alpn=offered)) as tls:
        assert tls.selected_alpn_protocol() == chosen


def test_http_1_serves_an_http2_client_over_http11(serve_tls, pki):
    server = serve_tls("--http", "1")
    with httpx.Client(http2=True, verify=pki.client(), timeout=30) as client:
        response = client.get(https(server))
    assert response.http_version == "HTTP/1.1"
    assert response.json()["scope"]["http_version"] == "1.1"


def served_http2(tls: ssl.SSLSocket) -> bool:
    """Whether the server answers a GET sent as HTTP/2 with prior knowledge (RFC 9113 §3.3)
    on `tls`; reads until the answer or the end of the connection."""
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    headers = [(":method", "GET"), (":path", "/"), (":scheme", "https"), (":authority", "x")]
    connection.send_headers(1, headers, end_stream=True)
    tls.sendall(connection.data_to_send())
    tls.settimeout(10)
    while True:
        try:
            data = tls.recv(65536)
            if not data:
                return False
            events = connection.receive_data(data)
        except (OSError, h2.exceptions.ProtocolError):
            return False
        if any(isinstance(event, h2.events.ResponseReceived) for event in events):
            return True
        tls.sendall(connection.data_to_send())


@pytest.mark.parametrize("alpn", [None, ["http/1.1"]], ids=["no-alpn", "alpn-http1.1"])
def test_http_1_never_serves_http2(serve_tls, pki, alpn):
    """--http 1 serves HTTP/1.1 only: not to a client that did not use ALPN, nor to one that
    agreed on http/1.1 and then speaks HTTP/2 anyway."""
    server = serve_tls("--http", "1")
    with tls_connection(server, pki.client(alpn=alpn)) as tls:
        assert not served_http2(tls)


def test_http_2_answers_http11_without_alpn_with_goaway(serve_tls, pki):
    """--http 2 serves HTTP/2 only: a client that did not use ALPN is taken to speak HTTP/2
    by prior knowledge, and an HTTP/1.1 request is a wrong preface, as in cleartext."""
    server = serve_tls("--http", "2")
    with tls_connection(server, pki.client()) as tls:
        conn = RawConn(tls)
        conn.send(request("GET", "/", [("Connection", "close")]))
        assert conn.read_until_closed(timeout=20) == GOAWAY_PROTOCOL_ERROR


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("flag, version", [("--http1.1", "1.1"), ("--http2", "2")])
def test_curl(serve_tls, pki, flag, version):
    server = serve_tls()
    result = subprocess.run(
        ["curl", "-sS", "--fail", "--max-time", "20", "--cacert", str(pki.ca_file), flag]
        + [https(server, "/curl")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    scope = json.loads(result.stdout)["scope"]
    assert (scope["scheme"], scope["http_version"]) == ("https", version)
    assert scope["extensions"]["tls"]["tls_version"] == TLS13


def test_a_plain_tcp_scope_has_no_tls_extension(run_rsasgi):
    server = run_rsasgi("proto_scope:app")
    scope = httpx.get(server.url + "/", timeout=10).json()["scope"]
    assert scope["scheme"] == "http"
    assert "tls" not in scope["extensions"]


def run_async(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 30))


def test_a_websocket_over_tls_is_wss(serve_tls, pki):
    server = serve_tls(app="ws_app:app")

    async def scope() -> dict:
        url = f"wss://127.0.0.1:{server.port}/scope/x"
        async with connect(url, ssl=pki.client(), open_timeout=10) as ws:
            return json.loads(await ws.recv())

    seen = run_async(scope())
    assert seen["scheme"] == "wss"
    tls = seen["extensions"]["tls"]
    assert set(tls) == TLS_KEYS
    assert der(tls["server_cert"]) == leaf_der(pki.server)
    assert tls["tls_version"] == TLS13


def test_websocket_messages_larger_than_a_tls_record_cross_intact(serve_tls, pki):
    server = serve_tls(app="ws_app:app")
    message = os.urandom(100_000)  # a TLS record holds at most 16 KiB

    async def echo() -> bytes:
        url = f"wss://127.0.0.1:{server.port}/echo"
        async with connect(url, ssl=pki.client(), open_timeout=10) as ws:
            await ws.send(message)
            return await ws.recv()

    assert run_async(echo()) == message


def test_wsgi_environ_over_tls(serve_tls, pki):
    server = serve_tls(app="wsgi_env:app")
    seen = exchange(server, pki.client(), "/env")
    environ = seen.body["environ"]
    assert environ["wsgi.url_scheme"] == "https"
    assert environ["HTTPS"] == "on"
    assert environ["SSL_PROTOCOL"] == "TLSv1.3"
    # OpenSSL's name, as mod_ssl gives it (IANA's, for TLS 1.3).
    assert environ["SSL_CIPHER"] == seen.cipher
    assert environ["SSL_CLIENT_VERIFY"] == "NONE"
    assert "SSL_CLIENT_CERT" not in environ
    assert "SSL_CLIENT_S_DN" not in environ


# Protocol versions and cipher suites.


def test_tls12_is_accepted_by_default(serve_tls, pki):
    server = serve_tls()
    seen = exchange(server, pki.client(tls12=True))
    assert seen.version == "TLSv1.2"
    tls = seen.body["scope"]["extensions"]["tls"]
    assert (tls["tls_version"], tls["cipher_suite"]) == (TLS12, TLS12_SUITE[0])


def test_tls12_in_the_wsgi_environ(serve_tls, pki):
    server = serve_tls(app="wsgi_env:app")
    environ = exchange(server, pki.client(tls12=True), "/env").body["environ"]
    assert (environ["SSL_PROTOCOL"], environ["SSL_CIPHER"]) == ("TLSv1.2", TLS12_CIPHER)


def test_min_version_13_refuses_a_tls12_client(serve_tls, pki):
    server = serve_tls("--ssl-min-version", "1.3")
    error = refusal(server, pki.client(tls12=True))
    assert error.reason == "TLSV1_ALERT_PROTOCOL_VERSION"
    assert tls_scope(server, pki.client())["tls_version"] == TLS13


@pytest.mark.parametrize(
    "ciphers, version, suite",
    [
        ("TLS13_AES_128_GCM_SHA256", ssl.TLSVersion.TLSv1_3, 0x1301),
        (
            "TLS13_AES_128_GCM_SHA256:TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            ssl.TLSVersion.TLSv1_2,
            TLS12_SUITE[0],
        ),
        # OpenSSL's names, as uvicorn's --ssl-ciphers takes them.
        ("TLS_AES_128_GCM_SHA256", ssl.TLSVersion.TLSv1_3, 0x1301),
        (TLS12_CIPHER, ssl.TLSVersion.TLSv1_2, TLS12_SUITE[0]),
    ],
    ids=["tls13-suite", "tls12-suite-after-a-colon", "openssl-tls13-name", "openssl-tls12-name"],
)
def test_ssl_ciphers_chooses_the_suite(serve_tls, pki, ciphers, version, suite):
    """The client offers OpenSSL's default suites, which put AES-256 before AES-128; the
    server allows one per protocol version."""
    server = serve_tls("--ssl-ciphers", ciphers)
    ctx = pki.client()
    ctx.maximum_version = version
    assert tls_scope(server, ctx)["cipher_suite"] == suite


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_ssl_ciphers_tlsv1_means_the_defaults(serve_tls, pki, version):
    """uvicorn's default value of --ssl-ciphers is OpenSSL's "TLSv1"."""
    server = serve_tls("--ssl-ciphers", "TLSv1")
    ctx = pki.client()
    ctx.maximum_version = version
    expected = TLS13 if version == ssl.TLSVersion.TLSv1_3 else TLS12
    assert tls_scope(server, ctx)["tls_version"] == expected


# Client certificates.


def test_required_client_certificate_refuses_a_client_without_one(serve_tls, pki):
    server = serve_tls(*pki.clients("required"))
    assert refusal(server, pki.client()).reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED"


def test_required_client_certificate_refuses_one_from_another_ca(serve_tls, pki):
    server = serve_tls(*pki.clients("required"))
    assert refusal(server, pki.client(pki.stranger)).reason == "TLSV1_ALERT_UNKNOWN_CA"


def test_required_client_certificate_signed_by_the_ca_is_accepted(serve_tls, pki):
    server = serve_tls(*pki.clients("required"))
    tls = tls_scope(server, pki.client(pki.alice))
    assert [der(pem) for pem in tls["client_cert_chain"]] == [leaf_der(pki.alice)]
    assert tls["client_cert_name"] == ALICE_DN
    assert tls["client_cert_error"] is None


@pytest.mark.parametrize("with_cert", [False, True], ids=["without", "with"])
def test_optional_client_certificate(serve_tls, pki, with_cert):
    server = serve_tls(*pki.clients("optional"))
    tls = tls_scope(server, pki.client(pki.alice if with_cert else None))
    expected = [leaf_der(pki.alice)] if with_cert else []
    assert [der(pem) for pem in tls["client_cert_chain"]] == expected
    assert tls["client_cert_name"] == (ALICE_DN if with_cert else None)
    assert tls["client_cert_error"] is None


def test_optional_client_certificate_still_refuses_one_from_another_ca(serve_tls, pki):
    """Optional means a client may send none, not that any certificate will do."""
    server = serve_tls(*pki.clients("optional"))
    assert refusal(server, pki.client(pki.stranger)).reason == "TLSV1_ALERT_UNKNOWN_CA"


def test_client_certificate_chain_is_reported_client_first(serve_tls, pki):
    """A client certificate signed by an intermediate: the client sends both, the server
    trusts only the root."""
    intermediate = pki.client_ca.create_child_ca()
    bob = intermediate.issue_cert("bob@example.com", common_name="bob")
    server = serve_tls(*pki.clients("required"))
    tls = tls_scope(server, pki.client(bob))
    chain = [der(pem) for pem in tls["client_cert_chain"]]
    assert chain == [leaf_der(bob), der(intermediate.cert_pem.bytes())]
    assert tls["client_cert_name"].startswith("CN=bob,")


def test_wsgi_environ_names_the_client_certificate(serve_tls, pki):
    server = serve_tls(*pki.clients("optional"), app="wsgi_env:app")
    environ = exchange(server, pki.client(pki.alice), "/env").body["environ"]
    assert environ["SSL_CLIENT_VERIFY"] == "SUCCESS"
    assert der(environ["SSL_CLIENT_CERT"]) == leaf_der(pki.alice)
    assert environ["SSL_CLIENT_S_DN"] == ALICE_DN


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_with_a_client_certificate(serve_tls, pki):
    server = serve_tls(*pki.clients("required"))
    result = subprocess.run(
        ["curl", "-sS", "--fail", "--max-time", "20", "--cacert", str(pki.ca_file)]
        + ["--cert", str(pki.directory / "alice.pem"), "--key", str(pki.directory / "alice.key")]
        + [https(server)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["scope"]["extensions"]["tls"]["client_cert_name"] == ALICE_DN


# Clients that never finish a handshake, or do not speak TLS.


@pytest.mark.parametrize("sent", ["nothing", "half-a-client-hello"])
def test_an_unfinished_handshake_is_closed_at_the_request_header_timeout(serve_tls, pki, sent):
    server = serve_tls("--timeout-request-header", "1", "--log-level", "debug")
    hello = client_hello(pki.client())
    conn = RawConn(server.connect())
    try:
        conn.send(b"" if sent == "nothing" else hello[: len(hello) // 2])
        assert conn.read_until_closed(timeout=20) == b""
    finally:
        conn.sock.close()
    log = wait_for_log(server, "no TLS handshake within --timeout-request-header 1s; closed")
    assert warnings_and_errors(log) == []


def test_a_client_not_speaking_tls_gets_an_alert_and_is_closed(serve_tls, pki):
    server = serve_tls("--log-level", "debug")
    conn = RawConn(server.connect())
    try:
        conn.send(b"\x00 not TLS at all \xff" * 4)
        assert conn.read_until_closed(timeout=20) == DECODE_ERROR_ALERT
    finally:
        conn.sock.close()
    wait_for_log(server, "TLS handshake failed")
    # The server is fine: the next client is served.
    assert exchange(server, pki.client()).body["scope"]["scheme"] == "https"
    assert warnings_and_errors(server.output()) == []


@pytest.mark.parametrize("proxy", [False, True], ids=["direct", "behind-proxy-protocol"])
def test_plain_http_to_the_tls_port_gets_a_readable_400(serve_tls, pki, proxy):
    """As nginx does: a page saying to use https://, not a TLS alert; then the connection
    is closed."""
    server = serve_tls("--log-level", "debug", *(["--proxy-protocol", "v1"] if proxy else []))
    with server.connect() as sock:
        conn = RawConn(sock)
        conn.send((V1_TCP4 if proxy else b"") + request("GET", "/"))
        response = conn.read_response()
        assert conn.read_until_closed(timeout=20) == b""
    assert response.status == 400
    assert response.header("connection") == "close"
    assert response.header("content-type") == "text/plain; charset=utf-8"
    assert b"this port speaks HTTPS. Use an https:// address" in response.body
    wait_for_log(server, "plain HTTP sent to the TLS port; answered 400")
    assert warnings_and_errors(server.output()) == []
    if not proxy:
        # The server is fine: the next client is served.
        assert exchange(server, pki.client()).body["scope"]["scheme"] == "https"


# Behind a load balancer speaking the PROXY protocol.


def test_proxy_protocol_header_before_the_client_hello(serve_tls, pki):
    server = serve_tls("--proxy-protocol", "v1")
    sock = socket.create_connection((server.host, server.port), timeout=10)
    sock.sendall(V1_TCP4)
    with pki.client().wrap_socket(sock, server_hostname="127.0.0.1") as tls:
        conn = RawConn(tls)
        conn.send(request("GET", "/proxied"))
        response = conn.read_response()
    assert response.status == 200, response
    scope = json.loads(response.body)["scope"]
    assert scope["client"] == ["203.0.113.9", 51234]
    assert scope["server"] == ["192.0.2.1", 443]
    assert scope["scheme"] == "https"
    assert scope["extensions"]["tls"]["tls_version"] == TLS13


def request_through_memory(sock: socket.socket, ctx: ssl.SSLContext, prefix: bytes) -> bytes:
    """TLS through memory buffers, so that `prefix` and the ClientHello leave in one send;
    GET / with Connection: close, and everything the server answers until it closes."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")

    def receive() -> bool:
        data = sock.recv(65536)
        if data:
            incoming.write(data)
        else:
            incoming.write_eof()
        return bool(data)

    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            sock.sendall(prefix + outgoing.read())
            prefix = b""
            assert receive(), "the server closed the connection during the handshake"
    tls.write(request("GET", "/same-segment", [("Connection", "close")]))
    sock.sendall(outgoing.read())
    answer = b""
    while True:
        try:
            data = tls.read(65536)
        except ssl.SSLWantReadError:
            if not receive():
                return answer
            continue
        except ssl.SSLZeroReturnError:
            return answer
        if not data:
            return answer
        answer += data


def test_proxy_protocol_header_and_client_hello_in_one_segment(serve_tls, pki):
    server = serve_tls("--proxy-protocol", "v1")
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        answer = request_through_memory(sock, pki.client(), V1_TCP4)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), answer[:300]
    scope = json.loads(body)["scope"]
    assert scope["client"] == ["203.0.113.9", 51234]
    assert scope["scheme"] == "https"


# Certificate rotation under the supervisor.


def install(cert: trustme.LeafCert, cert_file: Path, key_file: Path) -> None:
    """Replace the files the way a renewal tool does: write aside, then rename over."""
    for blob, path in ((cert.private_key_pem, key_file), (cert.cert_chain_pems[0], cert_file)):
        aside = path.with_suffix(".new")
        blob.write_to_path(aside)
        os.replace(aside, path)


def peer_cert(server: Server, ctx: ssl.SSLContext) -> bytes:
    with tls_connection(server, ctx) as tls:
        return tls.getpeercert(binary_form=True)


class TlsLoad:
    """`clients` threads, each GETting `url` over a new TLS connection per request, until
    stopped or `limit` seconds have passed. Answers are tls_whoami's JSON."""

    def __init__(self, url: str, ctx: ssl.SSLContext, clients: int = 4, limit: float = 60.0):
        self.url = url
        self.ctx = ctx
        self.deadline = time.monotonic() + limit
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def __enter__(self) -> TlsLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)
        return list(self.outcomes)

    def answers(self, after: float = 0.0) -> list[tuple[int, str]]:
        """(pid, server certificate PEM) of each answered request sent after `after`."""
        return [
            (body["pid"], body["server_cert"])
            for body in (json.loads(o.body) for o in list(self.outcomes) if o.started > after)
        ]

    def _client(self) -> None:
        with httpx.Client(
            verify=self.ctx,
            headers={"Connection": "close"},
            limits=httpx.Limits(max_keepalive_connections=0),
            timeout=10,
        ) as client:
            while not self._stop.is_set() and time.monotonic() < self.deadline:
                started = time.monotonic()
                try:
                    response = client.get(self.url)
                except httpx.HTTPError as exc:
                    self.outcomes.append(Outcome(started, None, repr(exc)))
                    continue
                if response.status_code == 200:
                    self.outcomes.append(Outcome(started, response.text, None))
                else:
                    self.outcomes.append(Outcome(started, None, f"status {response.status_code}"))


def test_sighup_serves_a_renewed_certificate_without_failing_a_request(run_rsasgi, pki, tmp_path):
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    install(pki.server, cert_file, key_file)
    server = start_supervised(
        run_rsasgi,
        "tls_whoami:app",
        *("--ssl-certfile", str(cert_file), "--ssl-keyfile", str(key_file)),
        workers=2,
    )
    old_workers = set(started_workers(server.output()))
    assert peer_cert(server, pki.client()) == leaf_der(pki.server)
    renewed = pki.ca.issue_cert("localhost", "127.0.0.1")
    renewed_pem = renewed.cert_chain_pems[0].bytes().decode()

    with TlsLoad(https(server), pki.client()) as load:
        wait_for(lambda: len(load.answers()) >= 20, message="20 answers", server=server)
        install(renewed, cert_file, key_file)
        server.proc.send_signal(signal.SIGHUP)
        wait_for_log(server, "Reload complete")
        wait_gone(old_workers, server)
        reloaded = time.monotonic()
        new_workers = set(started_workers(server.output())) - old_workers
        assert len(new_workers) == 2, server.output()
        # Both new workers answer (each read the files itself), 20 answers at least.
        wait_for(
            lambda: (
                {pid for pid, _ in load.answers(reloaded)} == new_workers
                and len(load.answers(reloaded)) >= 20
            ),
            message="both new workers to answer",
            server=server,
        )
    outcomes = load.stop()

    failures = failed(outcomes)
    assert failures == [], f"{len(failures)} of {len(outcomes)} requests failed"
    assert {der(pem) for _, pem in load.answers(reloaded)} == {der(renewed_pem)}
    assert peer_cert(server, pki.client()) == leaf_der(renewed) != leaf_der(pki.server)


# Frameworks over TLS and HTTP/2.


@pytest.mark.parametrize(
    "app", ["fw_starlette:app", "wsgifw_flask:app"], ids=["starlette", "flask"]
)
def test_framework_answers_over_http2(serve_tls, pki, app):
    server = serve_tls(app=app)
    payload = {"name": "rsasgi", "tags": ["tls", "h2"], "ünï": "cødé"}
    with h2_client(pki.client()) as client:
        response = client.post(https(server, "/echo"), json=payload)
    assert response.http_version == "HTTP/2"
    assert response.status_code == 201, response.text
    assert response.json() == {"received": payload}


@pytest.fixture(scope="module")
def django_project(tmp_path_factory) -> Path:
    return build_django_project(tmp_path_factory)


@pytest.mark.parametrize(
    "app", ["mysite.asgi:application", "mysite.wsgi:application"], ids=["asgi", "wsgi"]
)
def test_django_knows_the_request_is_secure(serve_tls, pki, django_project, app):
    server = serve_tls("--app-dir", str(django_project), app=app, env=DJANGO_ENV)
    with h2_client(pki.client()) as client:
        response = client.get(https(server, "/where/"))
    assert response.http_version == "HTTP/2"
    assert response.status_code == 200, response.text
    where = response.json()
    assert where["secure"] is True
    assert where["absolute"] == f"https://127.0.0.1:{server.port}/where/"


def test_http_1_in_cleartext_never_serves_http2(run_rsasgi):
    """Without TLS too, --http 1 does not take up an HTTP/2 preface: hyper's HTTP/1 server
    closes the connection (no SETTINGS frame comes back), and the next client is served."""
    server = run_rsasgi("proto_scope:app", "--http", "1")
    with server.connect() as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(9))
        sock.settimeout(10)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer == b"" or answer.startswith(b"HTTP/1.1 "), answer[:80]
    assert httpx.get(server.url + "/", timeout=10).status_code == 200


@pytest.mark.skipif(os.geteuid() != 0, reason="--user needs rsasgi started as root")
def test_check_config_finds_a_key_the_workers_user_cannot_read(pki):
    """--check-config read the files as root, which reads them all, and said OK; the workers,
    running as --user, then failed on the key after the sockets were bound."""
    # Where nobody may look (pytest's own directories are root's alone).
    public = Path(tempfile.mkdtemp(prefix="rsasgi-tls-"))
    try:
        public.chmod(0o755)
        cert, key = public / "cert.pem", public / "key.pem"
        shutil.copy(pki.cert_file, cert)
        shutil.copy(pki.key_file, key)
        cert.chmod(0o644)
        key.chmod(0o600)
        args = ["--check-config", "--user", "nobody", "--app-dir", str(APPS), "proto_scope:app"]
        tls = ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
        result = cli(*args, *tls)
        assert result.returncode == 1, result.stderr
        assert f"--ssl-keyfile {key}: the workers run as nobody" in result.stderr
        assert "Permission denied" in result.stderr
        # Serving: the same line, before anything listens.
        result = cli(*args[1:], *tls, "--workers", "1", "--port", "0")
        assert result.returncode == 1, result.stderr
        assert f"--ssl-keyfile {key}: the workers run as nobody" in result.stderr
        assert "Listening" not in result.stderr
        key.chmod(0o644)
        result = cli(*args, *tls)
        assert result.returncode == 0, result.stderr
    finally:
        shutil.rmtree(public)


def test_a_client_cannot_make_the_tls_library_write_warnings(serve_tls):
    """rustls warns of what a peer did (an IP address or a malformed name as SNI, a
    renegotiation), and its lines were passed on at their own level: any client could write a
    warning line per connection, naming neither itself nor anything to do."""
    server = serve_tls()
    address = f"127.0.0.1:{server.port}"
    for name in ["10.0.0.1", "bad name!"]:
        subprocess.run(
            ["openssl", "s_client", "-connect", address, "-servername", name],
            input=b"",
            capture_output=True,
            timeout=10,
        )
    # openssl may wait on after rustls refuses the renegotiation.
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(
            ["openssl", "s_client", "-tls1_2", "-connect", address],
            input=b"R\n",
            capture_output=True,
            timeout=5,
        )
    assert httpx.get(https(server), verify=False).status_code == 200
    assert warnings_and_errors(server.output()) == []


@pytest.mark.parametrize("sends", [b"", b"\x16\x03\x01"], ids=["nothing", "half-a-hello"])
def test_a_silent_client_on_the_tls_port_does_not_hold_a_shutdown(serve_tls, sends):
    """The wait for a ClientHello (and for the handshake) did not watch for shutdown, as the
    wait for a first request in cleartext does: a client that connected and said nothing held
    every stop for all of --timeout-request-header (30 s here)."""
    server = serve_tls("--timeout-request-header", "30")
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(sends)
        time.sleep(0.2)
        assert server.stop(timeout=10) == 0


def test_a_ca_file_without_client_certificates_asked_for_is_checked_and_warned_of(pki):
    """--ssl-ca-certs with the default --ssl-cert-reqs none was not even opened: a missing file
    passed, and an operator who thought client certificates were enforced heard nothing."""
    args = ["--check-config", "--app-dir", str(APPS), "proto_scope:app", *pki.args()]
    result = cli(*args, "--ssl-ca-certs", "/nonexistent/ca.pem")
    assert result.returncode == 1
    assert "--ssl-ca-certs /nonexistent/ca.pem" in result.stderr
    result = cli(*args, "--ssl-ca-certs", str(pki.client_ca_file))
    assert result.returncode == 0, result.stderr
    assert (
        "rsasgi: warning: --ssl-ca-certs does nothing with --ssl-cert-reqs none: no client "
        "certificate is asked for; add --ssl-cert-reqs required (or optional), or drop it"
    ) in result.stderr


def test_a_password_for_a_key_that_is_not_encrypted_is_warned_of(pki):
    """--ssl-keyfile-password given for a plain key did nothing, and said nothing: the key is
    more likely another file than the one meant."""
    args = ["--check-config", "--app-dir", str(APPS), "proto_scope:app", *pki.args()]
    result = cli(*args, "--ssl-keyfile-password", "s3cret")
    assert result.returncode == 0, result.stderr
    assert (
        "rsasgi: warning: --ssl-keyfile-password does nothing: the key in --ssl-keyfile "
    ) in result.stderr
    assert "is not encrypted (is it the file meant?)" in result.stderr
    assert "warning" not in cli(*args).stderr


def test_openssl_suites_rustls_lacks_are_skipped_from_a_list_with_others(serve_tls, pki):
    """Mozilla's "intermediate" list, as gunicorn and uvicorn users have it, names DHE suites
    rustls does not have: OpenSSL skips what it cannot use, and rsasgi refused to start."""
    intermediate = (
        "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
        "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
        "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384"
    )
    server = serve_tls("--ssl-ciphers", intermediate)
    assert httpx.get(https(server), verify=False).status_code == 200
    wait_for_log(
        server,
        "--ssl-ciphers: rsasgi (rustls) has no DHE-RSA-AES128-GCM-SHA256, "
        "DHE-RSA-AES256-GCM-SHA384: skipped",
    )
    # Nothing usable left, or an expression: still refused, as settings are.
    args = ["--check-config", "--app-dir", str(APPS), "proto_scope:app", *pki.args()]
    for ciphers in ["DHE-RSA-AES128-GCM-SHA256", "HIGH:!aNULL"]:
        result = cli(*args, "--ssl-ciphers", ciphers)
        assert result.returncode == 2, ciphers
        assert "--ssl-ciphers" in result.stderr
