"""The store in S3-compatible object storage (AWS S3, SeaweedFS, MinIO, Ceph, ...).

Keys are the store's relative keys under an optional prefix in one bucket. An object
is written with one PUT (or a multipart upload for large files), which an object
store makes visible whole or not at all: the atomic rename of the local backend.
Clients may be sent to a presigned GET URL instead of having the bytes go through
the server (`url`).

Credentials come from the settings, else from botocore's usual chain: the
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN variables, the shared
credentials file, an instance role.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
# Files up to this size go in one PUT; larger ones in parts of this size (S3 wants
# parts of at least 5 MiB but the last).
PART_SIZE = 8 * 1024 * 1024


class StorageError(Exception):
    """The store cannot be used as configured; the message says why."""


@dataclass(frozen=True)
class S3Settings:
    bucket: str
    prefix: str = ""
    # Empty: AWS itself. Any other S3-compatible server by its URL, addressed by path
    # (http://host:port/bucket/key), which they all serve.
    endpoint: str = ""
    region: str = "us-east-1"
    # Empty: botocore's chain (AWS_* variables, ~/.aws/credentials, instance role).
    access_key_id: str = ""
    secret_access_key: str = ""


@dataclass(frozen=True)
class StoredObject:
    """A file in the bucket (storage.Stored)."""
    key: str
    size: int
    etag: str = ""
    # Never on this host: handlers stream it or redirect to a presigned URL.
    local_path: Path | None = None


class S3Storage:
    """storage.Storage over one bucket. `async with S3Storage(settings) as store:`, or
    start()/close() from a cleanup context."""

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        self._prefix = settings.prefix.strip("/") + "/" if settings.prefix.strip("/") else ""
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None

    async def start(self) -> None:
        s = self.settings
        kwargs: dict[str, Any] = {"region_name": s.region}
        if s.endpoint:
            kwargs["endpoint_url"] = s.endpoint
        if s.access_key_id:
            kwargs["aws_access_key_id"] = s.access_key_id
            kwargs["aws_secret_access_key"] = s.secret_access_key
        config = AioConfig(s3={"addressing_style": "path" if s.endpoint else "auto"},
                           signature_version="s3v4",
                           retries={"max_attempts": 3, "mode": "standard"})
        self._client = await self._stack.enter_async_context(
            get_session().create_client("s3", config=config, **kwargs))

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None

    async def __aenter__(self) -> S3Storage:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def object_key(self, key: str) -> str | None:
        """The object's name in the bucket: the store's key under the prefix; None for
        what is not a key (a key never climbs out of the prefix: keys are made by the
        server, this is a guard), as the local storage answers."""
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            return None
        return self._prefix + key

    async def check_bucket(self, create: bool = False) -> None:
        """Refuse a bucket that is not there (StorageError naming it), or create it
        (`create`: a fresh test server). Start-up calls this: a HEAD of a missing key
        in a missing bucket is a plain 404, which would read as "no such build"."""
        try:
            await self._client.head_bucket(Bucket=self.settings.bucket)
        except ClientError as e:
            if _code(e) not in ("404", "NoSuchBucket", "NotFound"):
                raise StorageError(f"S3 bucket {self.settings.bucket!r} cannot be used: "
                                   f"{e}") from e
            if not create:
                raise StorageError(f"S3 bucket {self.settings.bucket!r} does not exist at "
                                   f"{self.settings.endpoint or 'AWS'} (storage.bucket)") from e
            log.info("creating bucket %s", self.settings.bucket)
            await self._client.create_bucket(Bucket=self.settings.bucket)

    async def put(self, key: str, source: Path) -> None:
        name = self.object_key(key)
        if name is None:
            raise ValueError(f"not a storage key: {key!r}")
        size = (await asyncio.to_thread(source.stat)).st_size
        if size <= PART_SIZE:
            body = await asyncio.to_thread(source.read_bytes)
            await self._client.put_object(Bucket=self.settings.bucket, Key=name, Body=body)
        else:
            await self._put_in_parts(name, source, size)
        await asyncio.to_thread(source.unlink)

    async def _put_in_parts(self, name: str, source: Path, size: int) -> None:
        bucket = self.settings.bucket
        upload = await self._client.create_multipart_upload(Bucket=bucket, Key=name)
        upload_id = upload["UploadId"]
        try:
            parts = []
            with source.open("rb") as f:
                for number in range(1, -(-size // PART_SIZE) + 1):
                    body = await asyncio.to_thread(f.read, PART_SIZE)
                    answer = await self._client.upload_part(
                        Bucket=bucket, Key=name, UploadId=upload_id, PartNumber=number,
                        Body=body)
                    parts.append({"PartNumber": number, "ETag": answer["ETag"]})
            await self._client.complete_multipart_upload(
                Bucket=bucket, Key=name, UploadId=upload_id,
                MultipartUpload={"Parts": parts})
        except BaseException:
            # Nothing half-written stays behind (it would cost storage, unseen).
            with contextlib.suppress(Exception):
                await self._client.abort_multipart_upload(Bucket=bucket, Key=name,
                                                          UploadId=upload_id)
            raise

    async def stat(self, key: str) -> StoredObject | None:
        name = self.object_key(key)
        if name is None:
            return None
        try:
            head = await self._client.head_object(Bucket=self.settings.bucket, Key=name)
        except ClientError as e:
            if _code(e) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return StoredObject(key=key, size=head["ContentLength"],
                            etag=head.get("ETag", "").strip('"'))

    async def read(self, key: str, offset: int = 0) -> AsyncIterator[bytes]:
        name = self.object_key(key)
        if name is None:
            return
        kwargs: dict[str, Any] = {"Bucket": self.settings.bucket, "Key": name}
        if offset:
            kwargs["Range"] = f"bytes={offset}-"
        try:
            answer = await self._client.get_object(**kwargs)
        except ClientError as e:
            if offset and _code(e) == "InvalidRange":
                return  # at or past the end: nothing more (a log follower catching up)
            raise
        async with answer["Body"] as body:
            async for chunk in body.iter_chunks(CHUNK):
                yield chunk

    async def delete(self, key: str) -> None:
        name = self.object_key(key)
        if name is not None:
            # S3 answers a delete of a missing key with success too.
            await self._client.delete_object(Bucket=self.settings.bucket, Key=name)

    async def url(self, key: str, expires: int) -> str | None:
        name = self.object_key(key)
        if name is None:
            return None
        return await self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.settings.bucket, "Key": name},
            ExpiresIn=expires)


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def settings_from(storage: Any) -> S3Settings:
    """The settings of config.StorageConfig's s3 keys."""
    return S3Settings(bucket=storage.bucket, prefix=storage.prefix, endpoint=storage.endpoint,
                      region=storage.region, access_key_id=storage.access_key_id,
                      secret_access_key=storage.secret_access_key)
