"""Real nginx in front of rsasgi, configured by the shipped deploy/nginx.conf.

`site_config` reads deploy/nginx.conf and replaces, each by its exact text, what a test must
change: the listen addresses (ephemeral ports on 127.0.0.1; the IPv6 ones are dropped), the
upstream server (a TCP port or a Unix socket), the certificate paths, the static directory and,
when asked, the upstream keepalive_timeout. A line that is no longer in the file fails loudly,
so the tests always run the configuration an operator copies.

`Nginx` runs one nginx master (`nginx -p ROOT -c ROOT/nginx.conf -g 'daemon off; ...'`) in its
own session, with one worker and every path it writes under ROOT, and kills the whole process
group when stopped. When the tests run as root the worker runs as www-data, as on a Debian
server, so ROOT must be a directory www-data can reach: `nginx_root` makes one.

Used by tests/test_nginx.py and benches/nginx_keepalive_race.py.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
DEPLOY_CONF = REPO / "deploy" / "nginx.conf"
# nginx lives in /usr/sbin, which an unprivileged user's PATH may lack.
NGINX = shutil.which("nginx", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
# The account Debian's nginx workers run as.
WORKER_USER = "www-data"

# What deploy/nginx.conf says, as the replacements below find it.
SHIPPED_UPSTREAM = "    server 127.0.0.1:8000;\n"
SHIPPED_UNIX_UPSTREAM = "    # server unix:/run/rsasgi/rsasgi.sock;\n"
SHIPPED_UPSTREAM_KEEPALIVE_TIMEOUT = "    keepalive_timeout 4s;\n"


def missing_nginx_reason() -> str | None:
    """Why the nginx tests cannot run here, or None when they can."""
    if NGINX is None:
        return "nginx is not installed (apt-get install -y nginx; tests/run-all.sh does it as root)"
    return None


def worker_user() -> str | None:
    """The user nginx workers run as: www-data when we are root (and it exists), else none."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(WORKER_USER)
    except KeyError:
        return None
    return WORKER_USER


@contextmanager
def nginx_root(fallback: Path):
    """A directory for nginx's files, removed afterwards.

    Without a worker user that is `fallback` (the test's tmp_path). As root it is a fresh
    directory in the system's temporary directory with mode 755: pytest's tmp_path lies under a
    directory only root may enter, and the www-data worker must reach the Unix socket, the
    static files and its temporary files.
    """
    if worker_user() is None:
        fallback.mkdir(parents=True, exist_ok=True)
        yield fallback
        return
    root = Path(tempfile.mkdtemp(prefix="rsasgi-nginx-"))
    try:
        root.chmod(0o755)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _replace_once(text: str, old: str, new: str) -> str:
    count = text.count(old)
    if count != 1:
        raise AssertionError(
            f"deploy/nginx.conf has {old!r} {count} times; tests/nginx_support.py expects it once"
        )
    return text.replace(old, new)


@dataclass
class Site:
    """What a test changes in deploy/nginx.conf."""

    http_port: int
    https_port: int
    certificate: Path
    key: Path
    static_dir: Path
    # "127.0.0.1:PORT" or "unix:/PATH"
    upstream: str
    # nginx's upstream keepalive_timeout ("800ms"); None keeps the shipped 4s.
    upstream_keepalive_timeout: str | None = None


def site_config(site: Site) -> str:
    """deploy/nginx.conf with the site's ports, paths and upstream."""
    text = DEPLOY_CONF.read_text()
    replacements = [
        ("    listen 80;\n", f"    listen 127.0.0.1:{site.http_port};\n"),
        ("    listen [::]:80;\n", ""),
        ("    listen 443 ssl http2;\n", f"    listen 127.0.0.1:{site.https_port} ssl http2;\n"),
        ("    listen [::]:443 ssl http2;\n", ""),
        ("/etc/letsencrypt/live/example.com/fullchain.pem", str(site.certificate)),
        ("/etc/letsencrypt/live/example.com/privkey.pem", str(site.key)),
        ("    alias /srv/mysite/static/;\n", f"    alias {site.static_dir}/;\n"),
    ]
    if site.upstream.startswith("unix:"):
        replacements += [
            (SHIPPED_UPSTREAM, ""),
            (SHIPPED_UNIX_UPSTREAM, f"    server {site.upstream};\n"),
        ]
    else:
        replacements.append((SHIPPED_UPSTREAM, f"    server {site.upstream};\n"))
    if site.upstream_keepalive_timeout is not None:
        replacements.append(
            (
                SHIPPED_UPSTREAM_KEEPALIVE_TIMEOUT,
                f"    keepalive_timeout {site.upstream_keepalive_timeout};\n",
            )
        )
    for old, new in replacements:
        text = _replace_once(text, old, new)
    return text


def _mime_types() -> str | None:
    """The mime.types next to nginx's compiled-in nginx.conf, when it is there."""
    built = subprocess.run([NGINX, "-V"], capture_output=True, text=True, timeout=10).stderr
    match = re.search(r"--conf-path=(\S+)", built)
    conf_dir = Path(match.group(1)).parent if match else Path("/etc/nginx")
    mime_types = conf_dir / "mime.types"
    return str(mime_types) if mime_types.is_file() else None


def main_config(root: Path, site_path: Path) -> str:
    """The nginx.conf around the site: what Debian's own nginx.conf provides, with every file
    nginx writes under `root`."""
    user = worker_user()
    mime_types = _mime_types()
    lines = [
        f"user {user};" if user else "",
        "worker_processes 1;",
        "events { worker_connections 256; }",
        "http {",
        f"    include {mime_types};" if mime_types else "",
        "    default_type application/octet-stream;",
        f"    access_log {root}/access.log;",
        *(
            f"    {kind}_temp_path {root}/temp/{kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        ),
        f"    include {site_path};",
        "}",
    ]
    return "\n".join(line for line in lines if line) + "\n"


class Nginx:
    """One nginx master with its worker, serving `site` from `root`."""

    def __init__(self, root: Path, site: Site):
        self.root = root
        self.site = site
        (root / "temp").mkdir(exist_ok=True)
        self.site_path = root / "site.conf"
        self.site_path.write_text(site_config(site))
        self.conf_path = root / "nginx.conf"
        self.conf_path.write_text(main_config(root, self.site_path))
        self.error_log_path = root / "error.log"
        self._output = open(root / "nginx.out", "wb")
        self.proc = subprocess.Popen(
            [
                NGINX,
                "-p",
                f"{root}/",
                "-e",
                str(self.error_log_path),
                "-c",
                str(self.conf_path),
                "-g",
                f"daemon off; pid {root}/nginx.pid; error_log {self.error_log_path} info;",
            ],
            stdout=self._output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.site.http_port}"

    @property
    def https_url(self) -> str:
        """The TLS server, by a name its certificate holds."""
        return f"https://localhost:{self.site.https_port}"

    def log(self) -> str:
        """nginx's error log and whatever it printed."""
        parts = [self.error_log_path, self.root / "nginx.out"]
        return "\n".join(p.read_text(errors="replace") for p in parts if p.exists())

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until the plain HTTP server answers (its redirect to HTTPS)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.http_url + "/", timeout=2).status_code == 301:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"nginx did not answer within {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        """Kill the master and its worker (the whole process group)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)
        self._output.close()
