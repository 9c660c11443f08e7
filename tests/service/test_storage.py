"""The object store: a local folder and a real S3 server behave the same."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from api.settings import Settings
from api.storage import BlobNotFound, BlobStore, LocalStore, S3Store, key_for


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path, settings: Settings) -> BlobStore:
    if request.param == "local":
        return LocalStore(tmp_path / "objects")
    s3 = S3Store(settings)
    s3.ensure_bucket()
    return s3


def test_content_addressed_round_trip(store: BlobStore) -> None:
    data = b"adapter bytes \x00\xff"
    sha = store.put(data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert store.exists(sha) and store.get(sha) == data
    assert store.put(data) == sha  # idempotent: nothing rewritten
    assert store.keys() == [key_for(sha)]
    store.ping()


def test_missing_and_malformed_keys(store: BlobStore) -> None:
    with pytest.raises(BlobNotFound):
        store.get("0" * 64)
    assert not store.exists("1" * 64)
    with pytest.raises(ValueError):
        store.get("../../etc/passwd")


def test_s3_detects_a_corrupt_object(settings: Settings, s3_client) -> None:  # type: ignore[no-untyped-def]
    s3 = S3Store(settings)
    s3.ensure_bucket()
    sha = s3.put(b"original")
    s3_client.put_object(Bucket=settings.s3_bucket, Key=settings.s3_prefix + key_for(sha), Body=b"tampered")
    with pytest.raises(OSError, match="corrupt"):
        s3.get(sha)
