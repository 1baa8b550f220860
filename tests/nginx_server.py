"""A real nginx for the tests: the deployment page's recipe (deploy/nginx.conf) on a free port, in its own prefix."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.processes import stop

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "deploy" / "nginx.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def recipe_for(listen_port: int, upstream_ports: list[int], text: str | None = None) -> str:
    """The recipe as shipped, with only its listen port and upstream servers changed."""
    text = RECIPE.read_text() if text is None else text
    text = text.replace("listen 80;", f"listen 127.0.0.1:{listen_port};")
    servers = "".join(f"    server 127.0.0.1:{port};\n" for port in upstream_ports)
    text, count = re.subn(r"    server 127\.0\.0\.1:5000;\n", servers, text)
    assert count == 1, "the recipe's upstream block changed shape"
    return text


class NginxServer:
    """nginx in the foreground with its own prefix, temp and log files; as root it needs no `user`."""

    def __init__(self, directory: Path, site: str) -> None:
        self.directory = directory
        self.site = site
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def error_log(self) -> str:
        path = self.directory / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, port: int, timeout: float = 30.0) -> None:
        d = self.directory
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "site.conf").write_text(self.site)
        (d / "nginx.conf").write_text(f"""
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 512; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    include {d}/site.conf;
}}
""")
        self.process = subprocess.Popen(
            [NGINX, "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"nginx exited: {self.process.stderr.read().decode(errors='replace')}"
                                     f"{self.error_log[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("nginx did not listen")

    def stop(self) -> None:
        stop(self.process)
        self.process = None
