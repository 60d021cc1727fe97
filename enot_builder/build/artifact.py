"""The artifact step: find the .ep enot made, stamp it with our name, hash it, store it.

Only a renamed, fsynced file is ever put into the storage (and so recorded and
served): the stamped copy is written beside the work trees (layout.staging), which
the build cannot write to, and handed to the storage whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import io
import json
import os
import stat
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from .. import validation
from ..domain import BuildFailure, Outcome, Stage
from ..layout import Layout
from ..storage import Storage
from .context import BuildRun
from .package_files import MAX_CONFIG_BYTES, parse_json, scan

# Direct dependencies of one package that we queue builds for: a bound on what one
# package can make this server do.
MAX_DEPENDENCIES = 100


async def keep(run: BuildRun, layout: Layout, storage: Storage) -> Outcome:
    name, staged, digest, size, config = await asyncio.to_thread(stamp, run, layout)
    key = layout.artifact_key(run.build.id, name)
    try:
        await storage.put(key, staged)
    finally:
        with contextlib.suppress(OSError):  # consumed by put, unless it failed
            staged.unlink()
    return Outcome(True, f"built {name} ({size} bytes)", key, name, digest, size,
                   tagged_dependencies(config))


def stamp(run: BuildRun, layout: Layout) -> tuple[str, Path, str, int, dict[str, Any]]:
    """The package, stamped and fsynced at its staging path: (name, path, sha256, size,
    its enot_config.json)."""
    src = run.src
    # The build owned src/ until now and could have swapped it for a link to a
    # server directory; nothing of it runs any more, so one check holds.
    if os.path.realpath(src) != str(src):
        raise BuildFailure("the build replaced its source directory with a link; refusing it",
                           stage=Stage.ARTIFACT)
    candidates = [entry for entry in scan(src) if entry.name.endswith(".ep")]
    if not candidates:
        raise BuildFailure("enot finished but produced no .ep package", stage=Stage.ARTIFACT)
    if len(candidates) > 1:
        names = ", ".join(sorted(e.name for e in candidates))
        raise BuildFailure(f"enot produced more than one package ({names})", stage=Stage.ARTIFACT)
    name = candidates[0].name
    if not validation.NAME_PART.fullmatch(name[:-3]):
        raise BuildFailure(f"the package file name {name!r} is not acceptable",
                           stage=Stage.ARTIFACT)
    staged = layout.staging(run.build.id, name)
    try:
        source_fd = os.open(src / name, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise BuildFailure(f"{name} is a symbolic link; refusing it",
                               stage=Stage.ARTIFACT) from None
        raise
    try:
        with os.fdopen(source_fd, "rb") as source:
            if not stat.S_ISREG(os.fstat(source.fileno()).st_mode):
                raise BuildFailure(f"{name} is not a regular file", stage=Stage.ARTIFACT)
            with open(staged, "wb") as out:
                config = stamp_package(source, out, run.build.full_name)
                out.flush()
                os.fsync(out.fileno())
        digest, size = sha256_file(staged)
    except BaseException:
        # A full disk or a bad package: nothing half-written stays behind.
        with contextlib.suppress(OSError):
            staged.unlink()
        raise
    return name, staged, digest, size, config


def tagged_dependencies(package_config: dict[str, Any]) -> list[tuple[str, str]]:
    """(url, tag) of each direct dependency pinned to a tag.

    enot writes every project's dependencies into the package's enot_config.json,
    whatever the project's own format (enot_config.json deps, rebar.config git deps
    with {tag, ...}, erlang.mk dep_* lines), so this one reading covers them all.
    """
    pins: list[tuple[str, str]] = []
    deps = package_config.get("deps")
    for dep in (deps if isinstance(deps, list) else [])[:MAX_DEPENDENCIES]:
        if isinstance(dep, dict) and isinstance(dep.get("url"), str) \
                and isinstance(dep.get("tag"), str) and dep["tag"]:
            pins.append((dep["url"], dep["tag"]))
    return pins


def stamp_package(source: BinaryIO, out: BinaryIO, full_name: str) -> dict[str, Any]:
    """Copy an enot package, recording in its enot_config.json the name we serve it as.

    enot clients file a fetched package under the `fullname` of its enot_config.json
    and, without one, under the last two parts of the clone URL, which for a mirror, a
    fork or a file:// URL is not the name the package was asked for by. Copying the
    tar member by member also proves the artifact is a readable package.
    """
    try:
        with tarfile.open(fileobj=source, mode="r:") as package, \
                tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as stamped:
            seen_config: dict[str, Any] | None = None
            for member in package:
                # enot clients unpack with a bare extractall(): an absolute or ../ name,
                # a link or a device in a package would write outside its directory on
                # every machine that installs it.
                parts = PurePosixPath(member.name).parts
                if not (member.isfile() or member.isdir()) or not parts or parts[0] == "/" \
                        or ".." in parts:
                    raise BuildFailure(f"the package holds an unsafe entry {member.name!r} "
                                       "(only plain files and directories inside it are allowed)",
                                       stage=Stage.ARTIFACT)
                data = package.extractfile(member) if member.isfile() else None
                if member.name == "enot_config.json" and data is not None:
                    try:
                        config = parse_json(data.read(MAX_CONFIG_BYTES),
                                            "the package's enot_config.json", Stage.ARTIFACT)
                    except ValueError:
                        raise BuildFailure("the package's enot_config.json is not JSON",
                                           stage=Stage.ARTIFACT) from None
                    if not isinstance(config, dict):
                        raise BuildFailure("the package's enot_config.json is not an object",
                                           stage=Stage.ARTIFACT)
                    config["fullname"] = full_name
                    seen_config = config
                    raw = json.dumps(config, indent=4, sort_keys=True).encode()
                    member.size = len(raw)
                    data = io.BytesIO(raw)
                stamped.addfile(member, data)
            if seen_config is None:
                raise BuildFailure("the package has no enot_config.json", stage=Stage.ARTIFACT)
            return seen_config
    except tarfile.TarError as e:
        raise BuildFailure(f"enot produced an unreadable package: {e}",
                           stage=Stage.ARTIFACT) from None


def sha256_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size
