"""Get the dependencies' packages from this server's cache: run inside the sandbox.

    python3 fetch_deps.py SOCKET ERL_VERSION LIBS WANTED_JSON

WANTED_JSON is `[[name, full_name, ref], ...]`. Each is asked of the server's cache
socket (the one the enot relay uses) as the enot client asks: `POST /get` for that
full name, ref and Erlang release; a package that is there is unpacked into
LIBS/<name> (the compiler's ERL_LIBS), one that is not is reported and skipped (the
compiler then says what it misses). Standard library only; the sandbox has no
network, and the socket leads only to the server's read-only cache endpoints.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import sys
import tarfile

MAX_PACKAGE = 256 * 1024 * 1024


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=60)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(self.path)


def fetch(path: str, full_name: str, ref: str, erl_version: str) -> bytes | None:
    connection = UnixConnection(path)
    try:
        body = json.dumps({"full_name": full_name,
                           "versions": [{"ref": ref, "erl_version": erl_version}]})
        connection.request("POST", "/get", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        data = response.read(MAX_PACKAGE + 1)
        if response.status != 200 or data.startswith(b"No such build") or len(data) > MAX_PACKAGE:
            return None
        return data
    finally:
        connection.close()


def unpack(data: bytes, target: str) -> None:
    os.makedirs(target)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            parts = member.name.split("/")
            if not (member.isfile() or member.isdir()) or member.name.startswith("/") or ".." in parts:
                continue  # the server's own packages hold nothing else; never trust that here
            tar.extract(member, target)


def main(argv: list[str]) -> int:
    path, erl_version, libs, wanted_json = argv
    os.makedirs(libs, exist_ok=True)
    for name, full_name, ref in json.loads(wanted_json):
        target = os.path.join(libs, name)
        if os.path.exists(target):
            continue
        try:
            data = fetch(path, full_name, ref, erl_version)
        except OSError as e:
            print(f"dependency {name}: {full_name} {ref} could not be asked for: {e}")
            continue
        if data is None:
            print(f"dependency {name}: {full_name} {ref} (Erlang {erl_version}) is not built here")
            continue
        unpack(data, target)
        print(f"dependency {name}: {full_name} {ref} from this server")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
