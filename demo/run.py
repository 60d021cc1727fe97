"""`make demo`: the whole path offline, from a tagged repository to `enot fetch`.

Each step prints the command a person would type for it. Everything lives in one
world-readable temp directory (the builds and the private PostgreSQL run as
unprivileged users when this runs as root, and must reach it); `--keep` leaves it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / ".venv" / "bin" / "enot-builder"
ENOT = ROOT / ".venv-enot" / "bin" / "enot"
PACKAGE = "demo/hello"
TAG = "1.0.0"
# A small enot project: enot_config.json, an .app.src and a module.
PROJECT = {
    "enot_config.json": json.dumps({"name": "hello", "app_vsn": TAG, "deps": []}, indent=2) + "\n",
    "src/hello.app.src": ('{application, hello, [{description, "hello"}, {vsn, "{{ app.vsn }}"}, '
                          "{registered, []}, {applications, {{ app.std_apps + app.apps }}}, "
                          "{modules, {{ modules }}}, {env, []}]}.\n"),
    "src/hello.erl": "-module(hello).\n-export([hi/0]).\nhi() -> world.\n",
}


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def shown(argv: list[str], env: dict[str, str] | None = None) -> None:
    prefix = "".join(f"{k}={shlex.quote(v)} " for k, v in (env or {}).items())
    print(f"$ {prefix}{shlex.join(argv)}", flush=True)


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Run one step in `cwd` with only `env` (and PATH): printed as a person would type it."""
    shown(argv, env)
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300,
                            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **env})
    output = (result.stdout + result.stderr).strip()
    if output:
        print(output, flush=True)
    if result.returncode != 0:
        raise SystemExit(f"demo: `{argv[0]} {argv[1]}` failed (exit status {result.returncode})")
    return output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_repository(base: Path) -> str:
    step("1. A tagged git repository of a small Erlang project")
    repo = base / "repos" / "hello"
    for name, content in PROJECT.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(content)
        print(f"wrote {repo / name}")
    print(f"$ cd {repo}")
    for argv in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"],
                 ["git", "-c", "user.name=Demo", "-c", "user.email=demo@example.org",
                  "commit", "-q", "-m", "hello"], ["git", "tag", TAG]):
        run(argv, repo, {})
    print(f"clone URL: file://{repo}")
    return f"file://{repo}"


def write_config(base: Path, port: int) -> Path:
    step("2. A server configuration that allows file:// clone URLs")
    config = base / "server.toml"
    config.write_text(f'[server]\nport = {port}\n\n[storage]\ndata_dir = "{base / "data"}"\n\n'
                      '[git]\nallowed_schemes = ["https", "file"]\n')
    print(f"{config}:\n{config.read_text()}", end="")
    return config


def start_server(config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    step("3. Start the server (a private PostgreSQL in the data directory, migrations)")
    argv = [str(SERVER), "serve", "--config", str(config)]
    shown(argv)
    with log_path.open("wb") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def wait_ready(server: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + 120
    while True:
        if server.poll() is not None:
            raise SystemExit(f"demo: the server stopped (exit status {server.returncode}):\n"
                             + log_path.read_text(errors="replace")[-3000:])
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                status = json.load(r)["response"]["status"]
            print(f"$ curl -s {url}/health\n... \"status\": \"{status}\" ... (server log: {log_path})")
            return
        except (OSError, ValueError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: the server did not answer within 120 s; see {log_path}")
        time.sleep(0.5)


def build(url: str, clone_url: str) -> None:
    step(f"4. Build {PACKAGE} {TAG} (POST /buildSync answers when the build has ended)")
    body = json.dumps({"full_name": PACKAGE, "clone_url": clone_url, "versions": [{"ref": TAG}]})
    print(f"$ curl -s -XPOST {url}/buildSync -d {shlex.quote(body)}")
    request = urllib.request.Request(f"{url}/buildSync", data=body.encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=600) as r:
            answer = json.load(r)
    except urllib.error.HTTPError as e:
        raise SystemExit(f"demo: the build failed ({e.code}): {e.read().decode(errors='replace')}") \
            from None
    print(json.dumps(answer, indent=2))
    for result in answer["response"]:
        print(f"build page: {url}/ui/builds/{result['build_id']}")


def fetch(base: Path, url: str) -> None:
    step("5. Fetch it with the enot client, this server as its remote cache")
    home = base / "client"
    conf = home / ".config" / "enot" / "global_config.json"
    conf.parent.mkdir(parents=True)
    # Every key enot reads: with `cache` alone it fails with KeyError: 'temp_dir'.
    conf.write_text(json.dumps({
        "compiler": "enot",
        "temp_dir": str(home / "tmp"),
        "cache": [
            {"name": "local", "type": "local", "url": f"file://{home}/.cache/enot"},
            {"name": "enot-builder", "type": "enot", "url": url},
        ],
    }, indent=2) + "\n")
    print(f"{conf}:\n{conf.read_text()}", end="")
    run([str(ENOT), "fetch", PACKAGE, TAG], home, {"HOME": str(home)})
    cached = sorted(p for p in (home / ".cache" / "enot").rglob("*") if p.is_file())
    print("in the client's cache:\n" + "\n".join(f"  {p}" for p in cached))
    if not any(p.name == "hello.beam" for p in cached):
        raise SystemExit("demo: enot fetch put no hello.beam into the cache")


def stop(server: subprocess.Popen[bytes]) -> int:
    """SIGTERM: running builds finish, PostgreSQL stops. Prints nothing: it also runs
    when the demo fails, and stdout may be gone (`make demo | head`)."""
    server.send_signal(signal.SIGTERM)
    try:
        return server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
        return server.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = parser.parse_args()
    for tool in (SERVER, ENOT):
        if not tool.exists():
            raise SystemExit(f"demo: {tool} is missing; run `make install` first")
    base = Path(tempfile.mkdtemp(prefix="enot-builder-demo-"))
    base.chmod(0o755)  # the build and cluster users must reach it
    print(f"demo directory: {base}")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = None
    # Killed (SIGTERM) or interrupted, the demo still stops its server: via finally.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        clone_url = make_repository(base)
        config = write_config(base, port)
        server = start_server(config, base / "server.log")
        wait_ready(server, url, base / "server.log")
        build(url, clone_url)
        fetch(base, url)
        step("6. Stop the server (SIGTERM: running builds finish, PostgreSQL stops)")
        code, server = stop(server), None
        print(f"stopped (exit status {code})")
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the reader left
        return 1
    finally:
        if server is not None:
            stop(server)
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print(f"\nkept {base}" if args.keep else "")
    print("demo done: built by the server, fetched by the enot client, nothing downloaded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
