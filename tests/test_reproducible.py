"""Reproducible packages (reproducible.py, issue 12): the tar rewrite, and real enot
builds of one project in two directories giving the same bytes."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from enot_builder import reproducible
from enot_builder.config import PROJECT_ROOT

from .conftest import require
from .projects import enot_project

ENOT = PROJECT_ROOT / ".venv-enot" / "bin" / "enot"
EPOCH = 1_700_000_000


def make_tar(members: list[tuple[str, bytes | None, int, int, str]]) -> bytes:
    """A tar of (name, data or None for a directory, mode, mtime, owner)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data, mode, mtime, owner in members:
            info = tarfile.TarInfo(name)
            info.mode, info.mtime, info.uname, info.gname = mode, mtime, owner, owner
            info.uid = info.gid = 1000 if owner else 0
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def normalised(raw: bytes, **kwargs: object) -> bytes:
    out = io.BytesIO()
    reproducible.normalise(io.BytesIO(raw), out, EPOCH, **kwargs)  # type: ignore[arg-type]
    return out.getvalue()


def test_rewrite_drops_order_times_owners_and_modes() -> None:
    one = make_tar([("ebin", None, 0o775, 5, "alice"), ("ebin/a.beam", b"A", 0o664, 6, "alice"),
                    ("enot_config.json", b"{}", 0o600, 7, "alice"),
                    ("priv/run.sh", b"#!/bin/sh", 0o700, 8, "alice")])
    two = make_tar([("priv/run.sh", b"#!/bin/sh", 0o755, 9, "bob"),
                    ("enot_config.json", b"{}", 0o644, 10, ""),
                    ("./ebin/a.beam", b"A", 0o644, 11, "bob"), ("ebin/", None, 0o755, 12, "")])
    assert one != two
    assert normalised(one) == normalised(two)
    with tarfile.open(fileobj=io.BytesIO(normalised(one))) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == \
            ["ebin", "ebin/a.beam", "enot_config.json", "priv/run.sh"]
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(EPOCH, 0, 0, "", "")}
        assert [m.mode for m in members] == [0o755, 0o644, 0o644, 0o755]
        assert all(not m.pax_headers for m in members)
    # A name longer than ustar holds still comes out the same each time.
    long_name = "priv/" + "x" * 150
    assert normalised(make_tar([(long_name, b"1", 0o644, 1, "a")])) == \
        normalised(make_tar([(long_name, b"1", 0o600, 2, "b")]))


def test_rewrite_edits_and_refuses_links() -> None:
    raw = make_tar([("enot_config.json", b"{}", 0o644, 1, "")])
    edited = normalised(raw, edit=lambda name, data: b'{"fullname": "ns/x"}')
    with tarfile.open(fileobj=io.BytesIO(edited)) as tar:
        member = tar.extractfile("enot_config.json")
        assert member is not None and member.read() == b'{"fullname": "ns/x"}'
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        link = tarfile.TarInfo("ebin/evil")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(reproducible.UnsafePackage, match="unsafe entry"):
        normalised(buffer.getvalue())


def enot_package(where: Path, files: dict[str, str], deterministic: bool) -> Path:
    """`enot package` of a project made from `files` under `where`; the .ep."""
    project = where / "demo"
    for name, content in files.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(content)
    (where / "home").mkdir()
    env = {"HOME": str(where / "home"), "PATH": os.environ["PATH"]}
    if deterministic:
        env.update(reproducible.build_env(EPOCH))
    done = subprocess.run([str(ENOT), "package", "-l", "info"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return project / "demo.ep"


def rewritten_digest(package: Path) -> str:
    out = io.BytesIO()
    with open(package, "rb") as source:
        reproducible.normalise(source, out, EPOCH)
    return hashlib.sha256(out.getvalue()).hexdigest()


def compile_info(beam: Path) -> str:
    done = subprocess.run(
        ["erl", "-noshell", "-eval",
         f'io:format("~p", [beam_lib:chunks("{beam}", [compile_info])]), halt().'],
        capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


@pytest.fixture
def toolchain() -> None:
    require(ENOT.exists(), f"enot is not installed at {ENOT} (make install)")
    require(shutil.which("erl") is not None, "Erlang (erl) is not installed")


def test_two_builds_in_two_directories_give_one_package(tmp_path: Path, toolchain: None) -> None:
    files = enot_project("demo")
    first = enot_package(tmp_path / "first-build-dir", files, deterministic=True)
    second = enot_package(tmp_path / "another" / "second", files, deterministic=True)
    assert first.read_bytes() != second.read_bytes()  # enot's own tar: times, order
    assert rewritten_digest(first) == rewritten_digest(second)
    # No build path in the beam: compile_info keeps the compiler version only.
    info = compile_info(first.parent / "ebin" / "demo.beam")
    assert "first-build-dir" not in info and "source" not in info and "version" in info, info

    # Without the deterministic compile, the beams name their directory and differ.
    plain = enot_package(tmp_path / "plain", files, deterministic=False)
    assert str(tmp_path / "plain") in compile_info(plain.parent / "ebin" / "demo.beam")
    assert rewritten_digest(plain) != rewritten_digest(first)


def test_a_package_that_writes_the_time_is_not_reproducible(tmp_path: Path,
                                                             toolchain: None) -> None:
    files = enot_project("demo", prebuild=["mkdir -p priv && date +%s%N > priv/built_at"])
    first = enot_package(tmp_path / "a", files, deterministic=True)
    second = enot_package(tmp_path / "b", files, deterministic=True)
    assert rewritten_digest(first) != rewritten_digest(second)
