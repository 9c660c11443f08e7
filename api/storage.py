"""The object store behind one interface: a local folder (embedded mode) or S3 (production).

Keys are content addresses (`sha256/ab/abcdef...`): a blob is written before any row points at
it and its bytes never change, so a reader never sees half a blob and a retried job rewrites
nothing. Every read checks the bytes against the address: a missing blob raises `BlobNotFound`,
one whose bytes changed on disk or in the bucket raises `BlobCorrupt`; a store that refuses a
write or a read (down, access denied, disk full) raises `BlobWriteFailed` or `BlobReadFailed`.
All are `BlobError`s, which the API answers with 503 and the worker records as the job's error
code. A put of a blob that
exists refreshes its modification time, the clock the garbage collector's grace period reads
(`api.services.blobs`), so a blob an upload is about to reference is never collected under it.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from .errors import ServiceError
from .settings import Settings

_KEY = re.compile(r"^sha256/[0-9a-f]{2}/[0-9a-f]{64}$")


class BlobError(ServiceError):
    """A blob a row names cannot be read as stored: the store is at fault, not the request."""

    status = 503

    def __init__(self, sha: str, problem: str) -> None:
        self.sha, self.key = sha, key_for(sha)
        super().__init__(f"blob {self.key} {problem}")


class BlobNotFound(BlobError):
    code = "blob_missing"

    def __init__(self, sha: str) -> None:
        super().__init__(sha, "is missing from the object store")


class BlobCorrupt(BlobError):
    code = "blob_corrupt"

    def __init__(self, sha: str, actual: str) -> None:
        super().__init__(sha, f"is corrupt in the object store: its bytes hash to {actual}")


class BlobWriteFailed(BlobError):
    code = "blob_write_failed"

    def __init__(self, sha: str, cause: Exception) -> None:
        super().__init__(sha, f"could not be written: the object store refused it ({_reason(cause)})")


class BlobReadFailed(BlobError):
    code = "blob_read_failed"

    def __init__(self, sha: str, cause: Exception) -> None:
        super().__init__(sha, f"could not be read: the object store failed ({_reason(cause)})")


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


@dataclass(frozen=True)
class BlobInfo:
    sha: str
    modified: datetime  # last write or put (UTC): what the garbage collector's grace period reads
    size: int


def key_for(sha: str) -> str:
    return f"sha256/{sha[:2]}/{sha}"


def _check(key: str) -> str:
    if not _KEY.match(key):
        raise ValueError(f"not a content address: {key!r}")
    return key


def _verified(sha: str, data: bytes) -> bytes:
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha:
        raise BlobCorrupt(sha, actual)
    return data


class BlobStore(Protocol):
    def put(self, data: bytes) -> str:
        """Store `data` under its content address (when it exists, only refresh its modification
        time); return its sha256."""

    def get(self, sha: str) -> bytes:
        """The blob's bytes, checked against `sha`: BlobNotFound or BlobCorrupt otherwise."""

    def exists(self, sha: str) -> bool: ...

    def keys(self) -> list[str]: ...

    def blobs(self) -> Iterator[BlobInfo]:
        """Every content-addressed blob with its modification time and size."""

    def modified(self, sha: str) -> datetime | None:
        """The blob's modification time, None when it does not exist."""

    def delete(self, sha: str) -> None:
        """Remove the blob (a no-op when it does not exist)."""

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
        try:
            try:
                os.utime(path)  # it exists: a reference is on its way, so it is young again
            except FileNotFoundError:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{sha}.{os.getpid()}.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, path)  # atomic: readers see all of the blob or none of it
        except OSError as exc:  # a full disk, a folder we may not write
            raise BlobWriteFailed(sha, exc) from exc
        return sha

    def get(self, sha: str) -> bytes:
        try:
            data = self._path(sha).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(sha) from None
        return _verified(sha, data)

    def exists(self, sha: str) -> bool:
        return self._path(sha).exists()

    def keys(self) -> list[str]:
        return sorted(str(p.relative_to(self.root)) for p in self.root.glob("sha256/*/*") if not p.name.startswith("."))

    def blobs(self) -> Iterator[BlobInfo]:
        for p in self.root.glob("sha256/*/*"):
            if _KEY.match(str(p.relative_to(self.root))):
                try:
                    st = p.stat()
                except FileNotFoundError:  # deleted meanwhile
                    continue
                yield BlobInfo(p.name, datetime.fromtimestamp(st.st_mtime, UTC), st.st_size)

    def modified(self, sha: str) -> datetime | None:
        try:
            return datetime.fromtimestamp(self._path(sha).stat().st_mtime, UTC)
        except FileNotFoundError:
            return None

    def delete(self, sha: str) -> None:
        self._path(sha).unlink(missing_ok=True)

    def ping(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise OSError(f"object store folder {self.root} is not writable")


def _missing(exc: Exception) -> bool:
    return getattr(exc, "response", {}).get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound")


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
        from botocore.exceptions import BotoCoreError, ClientError

        sha = hashlib.sha256(data).hexdigest()
        key = self._key(sha)
        try:
            try:  # it exists: copy it onto itself, which makes it young again (one request, no upload)
                self.client.copy_object(
                    Bucket=self.bucket,
                    Key=key,
                    CopySource={"Bucket": self.bucket, "Key": key},
                    MetadataDirective="REPLACE",
                    Metadata={"touched": datetime.now(UTC).isoformat()},
                )
            except ClientError as exc:
                if not _missing(exc):
                    raise
                self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ChecksumAlgorithm="SHA256")
        except (ClientError, BotoCoreError) as exc:  # refused (access denied) or unreachable, after retries
            raise BlobWriteFailed(sha, exc) from exc
        return sha

    def get(self, sha: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(sha))["Body"].read()
        except ClientError as exc:
            if _missing(exc):
                raise BlobNotFound(sha) from None
            raise BlobReadFailed(sha, exc) from exc
        except BotoCoreError as exc:
            raise BlobReadFailed(sha, exc) from exc
        return _verified(sha, bytes(body))

    def exists(self, sha: str) -> bool:
        return self.modified(sha) is not None

    def keys(self) -> list[str]:
        out: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
            out += [o["Key"][len(self.prefix) :] for o in page.get("Contents", [])]
        return sorted(out)

    def blobs(self) -> Iterator[BlobInfo]:
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
            for o in page.get("Contents", []):
                key = o["Key"][len(self.prefix) :]
                if _KEY.match(key):
                    yield BlobInfo(key.rsplit("/", 1)[1], o["LastModified"].astimezone(UTC), o["Size"])

    def modified(self, sha: str) -> datetime | None:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(sha))
        except ClientError as exc:
            if _missing(exc):
                return None
            raise
        modified: datetime = head["LastModified"]
        return modified.astimezone(UTC)

    def delete(self, sha: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(sha))

    def ping(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)


def make_store(settings: Settings) -> BlobStore:
    if settings.store == "local":
        return LocalStore(settings.objects_dir)
    store = S3Store(settings)  # `Settings.store` admits only the two
    store.ensure_bucket()
    return store
