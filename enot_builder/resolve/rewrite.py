"""Show enot the dependencies the server resolved, in the project file it reads.

enot fetches each dependency from this server's cache by the URL and the tag (or
branch) the project file gives it, and falls back to cloning it. With the network off
that fallback fails, and enot's own readings need it: a registry dependency makes enot
ask the registry, an erlang.mk pin is taken for a branch. So before enot runs, the
project file names every dependency the server built as `URL` + `tag` (a tag, or the
commit a branch was resolved to): enot then asks this server for exactly what it built,
and the finished package's enot_config.json lists those pins.

- enot_config.json: each resolved entry's `url` and `tag` (its `branch` dropped);
- erlang.mk: `dep_NAME = git URL REF` lines appended to the Makefile (a later
  assignment wins, for make and for enot's reading alike);
- rebar.config: written again by rebar_deps.escript, in the sandbox, from the
  evaluated configuration (rebar.config.script included), deps replaced
  (terms_file() writes its input).

The package's files belong to the build: they are opened without following links,
and replaced by a new file renamed over them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from ..domain import BuildFailure, Stage
from . import Resolved

MAX_FILE_BYTES = 1024 * 1024
# What may stand in a Makefile line we write: no spaces, no `$`, no newline, no `#`.
MAKE_WORD = re.compile(r"[A-Za-z0-9_.:/@%+=~-]+")


def confined(directory: Path) -> None:
    """Refuse a directory of the build's that is not where it was: the package's code
    (rebar.config.script) ran before we read or write there, as the build's user, and
    could have replaced it with a link to somewhere of the server's."""
    if os.path.realpath(directory) != str(directory):
        raise BuildFailure(f"the build replaced {directory.name}/ with a link; refusing it",
                           stage=Stage.DEPENDENCIES)


def create(path: Path, data: bytes) -> None:
    """A new file in a confined directory, never through a link (O_EXCL, O_NOFOLLOW)."""
    confined(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def read(path: Path) -> bytes:
    """A file of the build's, from a confined directory, not through a link."""
    confined(path.parent)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        raise BuildFailure(f"cannot read {path.name}: {e.strerror}", stage=Stage.DEPENDENCIES) \
            from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise BuildFailure(f"{path.name} is not a regular file", stage=Stage.DEPENDENCIES)
        return f.read(MAX_FILE_BYTES + 1)[:MAX_FILE_BYTES]


def _replace(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.enot-builder")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)  # unlink never follows a link
    create(temporary, data)
    os.rename(temporary, path)  # rename replaces a link, never writes through it


def enot_config(src: Path, config: dict[str, Any], resolved: list[Resolved]) -> None:
    """Rewrite enot_config.json's deps with the resolved pins (runs in a thread)."""
    by_name = {dep.name: dep for dep in resolved}
    deps = config.get("deps")
    new = []
    for entry in deps if isinstance(deps, list) else []:
        if isinstance(entry, dict) and entry.get("name") in by_name:
            dep = by_name[entry["name"]]
            entry = {key: value for key, value in entry.items() if key != "branch"}
            entry.update(url=dep.clone_url, tag=dep.ref)
        new.append(entry)
    _replace(src / "enot_config.json", json.dumps({**config, "deps": new}, indent=2).encode())


def makefile(src: Path, resolved: list[Resolved]) -> None:
    """Append the resolved pins to the Makefile as dep_NAME lines (runs in a thread)."""
    lines = ["", "# written by enot-builder: the dependencies it resolved and built"]
    for dep in resolved:
        if not all(MAKE_WORD.fullmatch(word) for word in (dep.name, dep.clone_url, dep.ref)):
            raise BuildFailure(f"dependency {dep.name}: {dep.clone_url} {dep.ref} cannot be "
                               "written into a Makefile", stage=Stage.DEPENDENCIES)
        lines.append(f"dep_{dep.name} = git {dep.clone_url} {dep.ref}")
        lines.append(f"dep_{dep.name}_commit = {dep.ref}")
    data = read(src / "Makefile")
    if data and not data.endswith(b"\n"):
        data += b"\n"
    _replace(src / "Makefile", data + "\n".join(lines).encode() + b"\n")
    # enot takes an erlang.mk pin for a branch, and a branch dependency it has fetched
    # for a branch it looks up by its lock only (without one it builds the dependency
    # again from what it fetched, and fails): lock each to the ref built here.
    locks = {fullname(dep.clone_url): dep.ref for dep in resolved}
    _replace(src / "enot_locks.json", json.dumps(locks, indent=2, sort_keys=True).encode())


def fullname(url: str) -> str:
    """The name enot files a dependency under: the URL's last two parts."""
    return "/".join(url.rstrip("/").removesuffix(".git").split("/")[-2:])


def _atom(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def terms_file(resolved: list[Resolved]) -> str:
    """The input of `rebar_deps.escript rewrite`: one {Name, Url, Ref} term a line."""
    for dep in resolved:
        if any(ord(c) < 32 for c in dep.name + dep.clone_url + dep.ref):
            raise BuildFailure(f"dependency {dep.name!r} holds a control character",
                               stage=Stage.DEPENDENCIES)
    return "".join(f"{{{_atom(dep.name)}, {_string(dep.clone_url)}, {_string(dep.ref)}}}.\n"
                   for dep in resolved)
