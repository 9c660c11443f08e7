"""Fixtures on real servers: PostgreSQL, Redis and an S3 server started by `scripts/test`
(`scripts/services`), whose addresses arrive in TREELORA_TEST_* variables."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from api.db import create_database
from api.main import create_app
from api.migrate import upgrade
from api.models import Base
from api.settings import Settings
from api.storage import make_store
from treelora_core.data import load_wordnet, to_jsonl


def need(var: str) -> str:
    value = os.environ.get(var)
    if not value:
        raise RuntimeError(f"{var} is not set: run the suite with ./scripts/test, which starts the servers")
    return value


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    return need("TREELORA_TEST_DATABASE_URL")


def fresh_database(server_url: str) -> str:
    """A new empty database on the test server; its URL."""
    return create_database(server_url)


@pytest.fixture(scope="session")
def pg_url(pg_server_url: str) -> str:
    url = fresh_database(pg_server_url)
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def s3_env() -> dict[str, str]:
    return {
        "s3_endpoint": need("TREELORA_TEST_S3_ENDPOINT"),
        "s3_bucket": need("TREELORA_TEST_S3_BUCKET"),
        "s3_access_key": need("TREELORA_TEST_S3_ACCESS_KEY"),
        "s3_secret_key": need("TREELORA_TEST_S3_SECRET_KEY"),
    }


@pytest.fixture(scope="session")
def redis_url() -> str:
    return need("TREELORA_TEST_REDIS_URL")


def truncate(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
    engine.dispose()


@pytest.fixture
def settings(pg_url: str, s3_env: dict[str, str], redis_url: str, tmp_path: Path) -> Iterator[Settings]:
    """Production mode on the real servers: its own S3 prefix and Redis database, empty tables."""
    truncate(pg_url)
    broker = redis_url.rsplit("/", 1)[0] + "/1"  # no worker consumes this database
    redis.Redis.from_url(broker).flushdb()
    yield Settings(
        data_dir=tmp_path,
        database_url=pg_url,
        broker_url=broker,
        store="s3",
        s3_prefix=f"t-{uuid.uuid4().hex[:8]}/",
        max_upload_bytes=64 * 1024,
        **s3_env,  # type: ignore[arg-type]
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def s3_keys(settings: Settings) -> list[str]:
    return make_store(settings).keys()


def row_counts(url: str) -> dict[str, int]:
    engine = create_engine(url)
    with engine.connect() as conn:
        out = {
            t.name: conn.execute(text(f"select count(*) from {t.name}")).scalar_one()
            for t in Base.metadata.sorted_tables
        }
    engine.dispose()
    return out


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture(scope="session")
def wordnet_tasks() -> list[Any]:
    """Three real WordNet supersense tasks, small enough for a CPU."""
    return load_wordnet(n_tasks=3, n_train=40, n_test=12, seed=5)


def task_files(task: Any) -> dict[str, tuple[str, bytes, str]]:
    return {
        "file": ("train.jsonl", to_jsonl(task.train), "application/jsonl"),
        "eval_file": ("eval.jsonl", to_jsonl(task.test), "application/jsonl"),
    }


@pytest.fixture(scope="session")
def s3_client(s3_env: dict[str, str]) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=s3_env["s3_endpoint"],
        aws_access_key_id=s3_env["s3_access_key"],
        aws_secret_access_key=s3_env["s3_secret_key"],
        region_name="us-east-1",
    )


@pytest.fixture(scope="session")
def tiny_dir(tiny_base, tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_base.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


ROWS = [{"prompt": f"Item {i} of the list: what is it?", "completion": "apple"} for i in range(30)]


@pytest.fixture
def wsettings(settings: Settings, tiny_dir: Path) -> Settings:
    return settings.model_copy(update={"models": f"tiny={tiny_dir}", "heartbeat_s": 0.2, "lease_s": 5.0})


@pytest.fixture
def wclient(wsettings: Settings) -> Any:
    from api.main import create_app

    with TestClient(create_app(wsettings), raise_server_exceptions=False) as c:
        yield c


def make_stream(client: httpx.Client, name: str = "s", **train: Any) -> None:
    cfg = {"epochs": 1, "batch_size": 4, "max_length": 48, "lr": 5e-3, **train}
    resp = client.post(
        "/v1/streams",
        json={
            "name": name,
            "base_model": "tiny",
            "train": cfg,
            "tree": {"min_own_blocks": 2, "max_pulls": 2, "probe_batch": 4},
        },
    )
    assert resp.status_code == 201, resp.text


def submit(client: httpx.Client, name: str, rows: list[dict[str, str]] = ROWS, stream: str = "s") -> dict[str, Any]:
    resp = client.post(f"/v1/streams/{stream}/tasks", files={"file": ("t", jsonl(rows), "x")}, data={"name": name})
    assert resp.status_code == 202, resp.text
    return resp.json()["job"]  # type: ignore[no-any-return]
