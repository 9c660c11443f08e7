"""The object store behind one interface: a local folder (embedded mode) or S3 (production).

Keys are content addresses (`sha256/ab/abcdef...`): a blob is written before any row points at
it and never overwritten, so a reader never sees half a blob and a retried job rewrites nothing.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Protocol

from .settings import Settings

_KEY = re.compile(r"^sha256/[0-9a-f]{2}/[0-9a-f]{64}$")


class BlobNotFound(KeyError):
    pass


def key_for(sha: str) -> str:
    return f"sha256/{sha[:2]}/{sha}"


def _check(key: str) -> str:
    if not _KEY.match(key):
        raise ValueError(f"not a content address: {key!r}")
    return key


class BlobStore(Protocol):
    def put(self, data: bytes) -> str:
        """Store `data` under its content address (a no-op when it exists); return its sha256."""

    def get(self, sha: str) -> bytes: ...

    def exists(self, sha: str) -> bool: ...

    def keys(self) -> list[str]: ...

    def ping(self) -> None: ...


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, sha: str) -> Path:
        return self.root / _check(key_for(sha))

    def put(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        path = self._path(sha)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{sha}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)  # atomic: readers see all of the blob or none of it
        return sha

    def get(self, sha: str) -> bytes:
        try:
            return self._path(sha).read_bytes()
        except FileNotFoundError as exc:
            raise BlobNotFound(sha) from exc

    def exists(self, sha: str) -> bool:
        return self._path(sha).exists()

    def keys(self) -> list[str]:
        return sorted(str(p.relative_to(self.root)) for p in self.root.glob("sha256/*/*") if not p.name.startswith("."))

    def ping(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise OSError(f"object store folder {self.root} is not writable")


class S3Store:
    def __init__(self, settings: Settings) -> None:
        import boto3
        from botocore.config import Config

        self.bucket, self.prefix = settings.s3_bucket, settings.s3_prefix
        self.client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key,
            aws_secret_access_key=settings.s3_secret_key,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=60),
        )

    def _key(self, sha: str) -> str:
        return self.prefix + _check(key_for(sha))

    def ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)

    def put(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        if not self.exists(sha):
            self.client.put_object(Bucket=self.bucket, Key=self._key(sha), Body=data, ChecksumAlgorithm="SHA256")
        return sha

    def get(self, sha: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(sha))["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise BlobNotFound(sha) from exc
            raise
        if hashlib.sha256(body).hexdigest() != sha:
            raise OSError(f"blob {sha} is corrupt in the store")
        return bytes(body)

    def exists(self, sha: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(sha))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return False
            raise

    def keys(self) -> list[str]:
        out: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
            out += [o["Key"][len(self.prefix) :] for o in page.get("Contents", [])]
        return sorted(out)

    def ping(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)


def make_store(settings: Settings) -> BlobStore:
    if settings.store == "local":
        return LocalStore(settings.objects_dir)
    store = S3Store(settings)  # `Settings.store` admits only the two
    store.ensure_bucket()
    return store
