"""The local storage and the data layout, alone: no database, no build (fast)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from enot_builder.layout import Layout
from enot_builder.storage.local import LocalStorage

BUILD_ID = "ab12cd34-0000-4000-8000-000000000001"


def test_keys_are_relative_and_older_absolute_paths_resolve(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    layout = Layout(tmp_path)
    key = layout.artifact_key(BUILD_ID, "x.ep")
    assert key == f"artifacts/ab/{BUILD_ID}/x.ep"
    assert layout.log_key(BUILD_ID) == f"logs/ab/{BUILD_ID}.log"
    assert layout.log_file(BUILD_ID) == tmp_path / layout.log_key(BUILD_ID)
    assert storage.key_of(key) == key
    # A row of a build made before keys: an absolute path under the data directory.
    assert storage.key_of(str(tmp_path / key)) == key
    for refused in ("/etc/passwd", str(tmp_path.parent / "elsewhere"), "../outside",
                    "artifacts/../../outside", "", "."):
        assert storage.key_of(refused) is None, refused


async def test_put_stat_read_delete(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "data")
    source = tmp_path / "staged"
    source.write_bytes(b"0123456789")
    key = Layout.artifact_key(BUILD_ID, "pkg.ep")
    assert await storage.stat(key) is None
    await storage.put(key, source)
    assert not source.exists()  # consumed
    stored = await storage.stat(key)
    assert stored is not None
    assert (stored.key, stored.size) == (key, 10)
    assert stored.local_path == tmp_path / "data" / key
    assert b"".join([c async for c in storage.read(key)]) == b"0123456789"
    assert b"".join([c async for c in storage.read(key, 4)]) == b"456789"
    # The same file under its older absolute name.
    assert (await storage.stat(str(tmp_path / "data" / key))).key == key
    assert await storage.url(key, 60) is None
    await storage.delete(key)
    assert await storage.stat(key) is None
    assert await storage.stat("../staged") is None
    with pytest.raises(ValueError):
        await storage.put("../escape", source)


async def test_put_onto_another_filesystem_copies_whole(tmp_path: Path) -> None:
    # /dev/shm is a tmpfs here: os.replace across it fails with EXDEV, so put copies.
    shm = Path("/dev/shm")
    if os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.fail("/dev/shm is on the same filesystem as the test's temporary directory")
    staged = shm / f"enot-builder-test-{os.getpid()}.partial"
    staged.write_bytes(b"x" * 300_000)
    storage = LocalStorage(tmp_path)
    key = Layout.artifact_key(BUILD_ID, "big.ep")
    try:
        await storage.put(key, staged)
    finally:
        staged.unlink(missing_ok=True)
    assert not staged.exists()
    assert (tmp_path / key).read_bytes() == b"x" * 300_000
    assert [p.name for p in (tmp_path / key).parent.iterdir()] == ["big.ep"]


async def test_a_failed_put_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "artifacts").write_text("not a directory")
    storage = LocalStorage(tmp_path)
    source = tmp_path / "staged"
    source.write_bytes(b"data")
    with pytest.raises(OSError):
        await storage.put(Layout.artifact_key(BUILD_ID, "x.ep"), source)
    assert (tmp_path / "artifacts").read_text() == "not a directory"


def test_prepare_dirs_empties_the_transient_ones(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    (layout.work / "old" / "deep").mkdir(parents=True)
    (layout.work / "old" / "deep").chmod(0o500)  # a build made it unwritable
    layout.snapshot("gone").mkdir(parents=True)
    (layout.logs / "ab").mkdir(parents=True)
    (layout.logs / "ab" / "kept.log").write_text("kept")
    layout.prepare_dirs()
    assert list(layout.work.iterdir()) == []
    assert not layout.sources.exists()
    assert (layout.logs / "ab" / "kept.log").read_text() == "kept"
    assert layout.artifacts.is_dir()
    assert layout.work.stat().st_mode & 0o711 == 0o711
