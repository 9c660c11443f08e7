"""The object store: a local folder and a real S3 server behave the same."""

from __future__ import annotations

import hashlib
import time
from datetime import timedelta
from pathlib import Path

import pytest

from api.settings import Settings
from api.storage import BlobCorrupt, BlobNotFound, BlobStore, LocalStore, S3Store, key_for


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
    with pytest.raises(BlobCorrupt, match="corrupt") as err:
        s3.get(sha)
    assert err.value.code == "blob_corrupt" and err.value.key == key_for(sha) and err.value.status == 503


def test_local_store_detects_a_flipped_byte(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "objects")
    sha = store.put(b"adapter weights \x00\x01\x02")
    path = tmp_path / "objects" / key_for(sha)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BlobCorrupt, match=key_for(sha)):
        store.get(sha)
    path.unlink()
    with pytest.raises(BlobNotFound, match=key_for(sha)) as err:
        store.get(sha)
    assert err.value.code == "blob_missing" and err.value.status == 503


def test_put_of_an_existing_blob_refreshes_its_age_and_delete_removes_it(store: BlobStore) -> None:
    sha = store.put(b"shared by two uploads")
    first = store.modified(sha)
    assert first is not None and [b.sha for b in store.blobs()] == [sha]
    time.sleep(1.1)  # S3 keeps modification times to the second
    assert store.put(b"shared by two uploads") == sha  # a dedup hit: the blob is young again
    second = store.modified(sha)
    assert second is not None and second > first and store.get(sha) == b"shared by two uploads"
    (info,) = store.blobs()
    assert (
        info.sha == sha
        and info.size == len(b"shared by two uploads")
        and abs(info.modified - second) < timedelta(seconds=1)
    )
    store.delete(sha)
    store.delete(sha)  # deleting a missing blob is a no-op
    assert store.modified(sha) is None and not store.exists(sha) and list(store.blobs()) == []
