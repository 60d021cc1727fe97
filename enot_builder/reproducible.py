"""Byte-identical packages from the same tag (issue 12, reproducible builds).

Two things vary between two builds of one tag: the tar enot writes (member order from
the directory listing, mtimes of the build, the build user's uid and name) and the
beams (the compiler records the source's absolute path and its options). The first
is undone by rewriting the .ep here; the second by compiling with `deterministic`,
which ERL_COMPILER_OPTIONS hands to every compile of the build: erlc as enot runs it,
and erlc or compile:file as a Makefile or erlang.mk runs them. A deterministic beam's
compile_info holds the compiler version only (tests/test_reproducible.py checks it
with beam_lib:chunks).
"""

from __future__ import annotations

import io
import tarfile
from pathlib import PurePosixPath
from typing import BinaryIO, Callable

# Tar members are bounded by what stamp_package accepts already; this is a guard for
# a rewrite that holds a package in memory.
MAX_PACKAGE_BYTES = 512 * 1024 * 1024


class UnsafePackage(ValueError):
    """The package holds an entry no client should unpack (a link, a device, ../)."""


def build_env(source_date_epoch: int) -> dict[str, str]:
    """The variables a deterministic build runs with."""
    return {
        # Prepended by the compiler to every compile's options (unless a compile says
        # no_env_compiler_options, which enot and erlang.mk do not).
        "ERL_COMPILER_OPTIONS": "[deterministic]",
        # The convention (reproducible-builds.org) tools that stamp times follow.
        "SOURCE_DATE_EPOCH": str(source_date_epoch),
        "TZ": "UTC",
        "LC_ALL": "C.UTF-8",
    }


def _mode(member: tarfile.TarInfo) -> int:
    if member.isdir() or member.mode & 0o111:
        return 0o755
    return 0o644


def normalise(source: BinaryIO, out: BinaryIO, mtime: int,
              edit: Callable[[str, bytes], bytes] | None = None) -> None:
    """Rewrite the tar in `source` (a seekable file) into `out` deterministically:
    members sorted by name, every mtime `mtime`, uid/gid 0 with empty owner names,
    modes 0644/0755, no PAX headers beyond what a long name needs. `edit(name, data)`
    may change a file's bytes on the way (the stamped enot_config.json). Only plain
    files and directories are accepted; any other entry raises UnsafePackage.
    """
    with tarfile.open(fileobj=source, mode="r:") as package:
        members: dict[str, tarfile.TarInfo] = {}
        for member in package.getmembers():
            parts = PurePosixPath(member.name).parts
            if not (member.isfile() or member.isdir()) or not parts or parts[0] == "/" \
                    or ".." in parts:
                raise UnsafePackage(f"the package holds an unsafe entry {member.name!r}")
            name = str(PurePosixPath(*parts))
            if name in members:
                raise UnsafePackage(f"the package holds {name!r} twice")
            members[name] = member
        if sum(m.size for m in members.values()) > MAX_PACKAGE_BYTES:
            raise UnsafePackage("the package is larger than a package may be")
        # PAX only where a name needs it (longer than ustar holds); no global header,
        # and an int mtime keeps tarfile from adding an "mtime" record.
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT,
                          encoding="utf-8") as written:
            # Sorted, so a directory comes before what it holds.
            for name in sorted(members):
                member = members[name]
                info = tarfile.TarInfo(name)
                info.mode = _mode(member)
                info.mtime = int(mtime)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                if member.isdir():
                    info.type = tarfile.DIRTYPE
                    written.addfile(info)
                    continue
                extracted = package.extractfile(member)
                assert extracted is not None
                if edit is None:
                    info.size = member.size
                    written.addfile(info, extracted)
                else:
                    data = edit(name, extracted.read())
                    info.size = len(data)
                    written.addfile(info, io.BytesIO(data))
