"""The Storage interface against its backends: S3 on a real S3-compatible server
(tests/s3.py). One suite for every backend: the same keys, bytes and answers."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest

from enot_builder.storage import s3
from enot_builder.storage.s3 import S3Settings, S3Storage, StorageError


@pytest.fixture(params=["s3"])
async def storage(request: Any, s3_settings: S3Settings) -> AsyncIterator[Any]:
    async with S3Storage(s3_settings) as store:
        await store.check_bucket(create=True)
        yield store


async def read_all(storage: Any, key: str, offset: int = 0) -> bytes:
    return b"".join([chunk async for chunk in storage.read(key, offset)])


def source(tmp_path: Path, data: bytes, name: str = "x.ep") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


async def test_put_stat_read_delete(storage: Any, tmp_path: Path) -> None:
    key = "artifacts/ab/abcd-1234/hello.ep"
    assert await storage.stat(key) is None
    data = os.urandom(200_000)
    path = source(tmp_path, data)
    await storage.put(key, path)
    assert not path.exists(), "put consumes its source"
    found = await storage.stat(key)
    assert (found.key, found.size) == (key, len(data))
    assert await read_all(storage, key) == data
    assert await read_all(storage, key, 150_000) == data[150_000:]
    assert await read_all(storage, key, len(data)) == b""  # a log follower at the end
    await storage.delete(key)
    assert await storage.stat(key) is None
    await storage.delete(key)  # deleting nothing is fine


async def test_put_replaces_whole(storage: Any, tmp_path: Path) -> None:
    key = "logs/ab/abcd.log"
    await storage.put(key, source(tmp_path, b"first version, longer"))
    await storage.put(key, source(tmp_path, b"second"))
    assert await read_all(storage, key) == b"second"


async def test_large_file_goes_in_parts(storage: Any, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # Parts of 5 MiB, S3's least: 11 MiB is three parts, the last a short one.
    monkeypatch.setattr(s3, "PART_SIZE", 5 * 1024 * 1024)
    data = os.urandom(11 * 1024 * 1024)
    await storage.put("erts/otp-25.tar", source(tmp_path, data))
    assert (await storage.stat("erts/otp-25.tar")).size == len(data)
    got = hashlib.sha256(await read_all(storage, "erts/otp-25.tar")).hexdigest()
    assert got == hashlib.sha256(data).hexdigest()


async def test_presigned_url_serves_the_bytes_to_anyone(storage: Any, tmp_path: Path) -> None:
    key = "artifacts/cd/cdef/pkg.ep"
    await storage.put(key, source(tmp_path, b"the package bytes"))
    url = await storage.url(key, 60)
    assert url is not None and "Signature" in url
    async with aiohttp.ClientSession() as session:  # no credentials of its own
        async with session.get(url) as r:
            assert r.status == 200, await r.text()
            assert await r.read() == b"the package bytes"
        plain = url.split("?")[0]
        async with session.get(plain) as r:
            assert r.status == 403, "the bucket is private: only the signed URL opens it"


async def test_keys_stay_under_the_prefix(storage: Any, s3_settings: S3Settings,
                                          tmp_path: Path) -> None:
    await storage.put("logs/ab/x.log", source(tmp_path, b"log"))
    listing = await storage._client.list_objects_v2(Bucket=s3_settings.bucket)
    assert [o["Key"] for o in listing["Contents"]] == ["store/logs/ab/x.log"]
    for bad in ("", "/etc/passwd", "logs/../../x", "logs//x", "./x"):
        assert await storage.stat(bad) is None, bad
        assert await storage.url(bad, 60) is None, bad
        with pytest.raises(ValueError):
            await storage.put(bad, source(tmp_path, b"x"))


async def test_credentials_come_from_the_environment(s3_settings: S3Settings,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    """Without keys in the settings, botocore's chain reads the AWS_* variables."""
    from .s3 import ACCESS_KEY, SECRET_KEY
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    settings = S3Settings(bucket=s3_settings.bucket, endpoint=s3_settings.endpoint)
    async with S3Storage(settings) as store:
        await store.check_bucket(create=True)
        await store.put("a/b", source(tmp_path, b"from env"))
        assert await read_all(store, "a/b") == b"from env"
        creds = await store._client._request_signer._credentials.get_frozen_credentials()
        assert creds.access_key == ACCESS_KEY


async def test_a_missing_bucket_is_refused(s3_settings: S3Settings) -> None:
    """A bucket that is not there is a misconfiguration, said at start-up: a HEAD of
    a key in it is a plain 404, which would otherwise read as "no such build"."""
    async with S3Storage(s3_settings) as store:
        with pytest.raises(StorageError, match=f"S3 bucket '{s3_settings.bucket}' does not exist"):
            await store.check_bucket()
        await store.check_bucket(create=True)
        await store.check_bucket()
