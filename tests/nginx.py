"""One nginx per node, fed by the proxy app's file sink: what tests/integration/test_nginx.py
and benchmarks/sink_bench.py (scripts/bench-sink) both set up.

``find_nginx`` installs Debian's nginx-light when missing (as root); ``start`` writes a
node's nginx.conf and sink config under ``d`` and starts nginx there; ``backend`` is an
HTTP server answering ``backend=<name>``; ``through`` asks nginx for a path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.debian import install

TEMPLATE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "apps", "proxy", "nginx.conf.j2")

NGINX_CONF = """
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    include {d}/conf.d/*.conf;
}}
"""

SINK = """
[[sink]]
name = "nginx"
tables = ["listeners", "routes", "pools", "members"]
path = "conf.d/rdbsync.conf"
template = "{template}"
verify = "{nginx} -t -q -p {d} -c {d}/nginx.conf"
reload = "{nginx} -s reload -p {d} -c {d}/nginx.conf"
check = "kill -0 $(cat {d}/nginx.pid)"
check_interval = 0.2
"""


def _which() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


def find_nginx() -> tuple[str | None, str | None]:
    """``(path, None)``, installing nginx-light when missing, or ``(None, why not)``."""
    found = _which()
    if found is not None:
        return found, None
    problem = install(["nginx-light"])
    found = _which()
    return (found, None) if found is not None else (None, problem or "nginx-light installed no nginx binary")


def start(d: str, nginx: str) -> str:
    """Write ``d``'s nginx.conf and sink.toml, start nginx there; returns the sink config path."""
    for sub in ("conf.d", "tmp", "logs"):
        os.makedirs(os.path.join(d, sub))
    with open(os.path.join(d, "nginx.conf"), "w") as f:
        f.write(NGINX_CONF.format(d=d))
    sink = os.path.join(d, "sink.toml")
    with open(sink, "w") as f:
        f.write(SINK.format(d=d, nginx=nginx, template=TEMPLATE))
    subprocess.run([nginx, "-p", d, "-c", f"{d}/nginx.conf"], check=True, capture_output=True)
    return sink


def stop(d: str, nginx: str) -> None:
    subprocess.run([nginx, "-s", "stop", "-p", d, "-c", f"{d}/nginx.conf"], capture_output=True)


def backend(name: str, port: int) -> ThreadingHTTPServer:
    """An HTTP server on loopback answering ``backend=<name>``, in its own thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"backend={name}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def through(port: int, path: str) -> str | None:
    """nginx's answer body for ``path`` on ``port``, or None."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return str(resp.read().decode())
    except (urllib.error.URLError, OSError):
        return None
