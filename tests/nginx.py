"""The real nginx (Debian's nginx-light) running deploy/nginx.conf in front of a test
server: the shipped file with its ports and paths replaced, inside a minimal main
configuration of the test's own (pid, logs and temp files in a temp dir)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from enot_builder.config import PROJECT_ROOT

from .conftest import free_port, require, world_readable_tempdir

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SHIPPED = PROJECT_ROOT / "deploy" / "nginx.conf"


def site_config(upstream_port: int, listen_port: int, cache_dir: Path, data_dir: Path) -> str:
    text = SHIPPED.read_text()
    replacements = {
        "proxy_cache_path /var/cache/nginx/enot-builder": f"proxy_cache_path {cache_dir}",
        "server 127.0.0.1:8080;": f"server 127.0.0.1:{upstream_port};",
        "listen 80;": f"listen 127.0.0.1:{listen_port};",
        "alias /var/lib/enot-builder/;": f"alias {data_dir}/;",
    }
    for old, new in replacements.items():
        assert text.count(old) == 1, f"deploy/nginx.conf no longer has {old!r}"
        text = text.replace(old, new)
    return text


@contextmanager
def nginx_in_front(upstream_port: int, data_dir: Path) -> Iterator[str]:
    """Start nginx with the shipped site in front of 127.0.0.1:`upstream_port`;
    yield its base URL."""
    require(os.access(NGINX, os.X_OK), "nginx is not installed (Debian package nginx-light; "
                                       "make test-deps installs it)")
    root = world_readable_tempdir("enot-builder-test-nginx-")
    port = free_port()
    try:
        (root / "cache").mkdir()
        (root / "site.conf").write_text(site_config(upstream_port, port, root / "cache", data_dir))
        # As root, nginx's workers would run as nobody; here they run as the test's user,
        # who owns the temp dirs and the data directory.
        user = "user root root;" if os.getuid() == 0 else ""
        temp = " ".join(f"{kind}_temp_path {root}/{kind};"
                        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (root / "nginx.conf").write_text(f"""
            {user}
            daemon off;
            worker_processes 1;
            pid {root}/nginx.pid;
            error_log {root}/error.log warn;
            events {{ worker_connections 256; }}
            http {{
                access_log off;
                {temp}
                include {root}/site.conf;
            }}
        """)
        test = subprocess.run([NGINX, "-t", "-p", str(root), "-c", str(root / "nginx.conf")],
                              capture_output=True, text=True, timeout=30)
        assert test.returncode == 0, test.stderr
        process = subprocess.Popen([NGINX, "-p", str(root), "-c", str(root / "nginx.conf")],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE)
        try:
            end = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert process.poll() is None and time.monotonic() < end, \
                        (root / "error.log").read_text()
                    time.sleep(0.05)
            yield f"http://127.0.0.1:{port}"
        finally:
            process.terminate()  # fast shutdown of master and workers
            process.wait(30)
    finally:
        shutil.rmtree(root, ignore_errors=True)
