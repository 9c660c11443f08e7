"""A real uvicorn process on real PostgreSQL and S3: concurrent requests racing for one stream or
task name (one wins, the rest get 409, no 500, no orphan blob), and request bodies over the limit
refused as they arrive, chunked or not, before they are parsed or written to disk."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from api.settings import Settings
from api.storage import make_store

from .conftest import jsonl, row_counts
from .procs import Service, production_env

MAX_UPLOAD = 64 * 1024  # per file: an upload request may carry 2 * 64 KiB + 1 MiB
MAX_JSON = 96 * 1024  # below one upload's two files: the limits are per route
UPLOAD_LIMIT = 2 * MAX_UPLOAD + (1 << 20)


@pytest.fixture(scope="module")
def server(
    pg_server_url: str, redis_url: str, s3_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("races")
    env, db = production_env(
        pg_server_url=pg_server_url,
        redis_url=redis_url,
        broker_db=3,  # no worker consumes this database
        s3_env=s3_env,
        data_dir=tmp,
        max_upload_bytes=MAX_UPLOAD,
        max_json_bytes=MAX_JSON,
    )
    with Service(env, tmp, workers=0) as svc:
        settings = Settings(
            data_dir=tmp,
            database_url=db,
            store="s3",
            s3_prefix=env["TREELORA_S3_PREFIX"],
            **s3_env,  # type: ignore[arg-type]
        )
        assert svc.api is not None
        yield {"base": svc.base, "proc": svc.api, "db": db, "store": make_store(settings)}


def race(n: int, request: Callable[[httpx.Client, int], httpx.Response]) -> list[httpx.Response]:
    """`n` threads, each with its own connection, released together by a barrier."""
    barrier = threading.Barrier(n)
    out: list[httpx.Response | BaseException] = [RuntimeError("not run")] * n

    def one(i: int) -> None:
        with httpx.Client(timeout=60) as c:
            barrier.wait()
            try:
                out[i] = request(c, i)
            except BaseException as exc:  # reported below
                out[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    errors = [r for r in out if isinstance(r, BaseException)]
    assert not errors, errors
    return out  # type: ignore[return-value]


def test_racing_creations_of_one_stream_name_give_one_201_and_409s(server: dict[str, Any]) -> None:
    base = server["base"]
    for round_ in range(5):  # several rounds: each must hold, not just the luckiest
        name = f"race-{round_}"
        got = race(8, lambda c, i, name=name: c.post(f"{base}/v1/streams", json={"name": name, "train": {"seed": i}}))
        codes = sorted(r.status_code for r in got)
        assert codes == [201] + [409] * 7, [(r.status_code, r.text[:200]) for r in got]
        for r in got:
            if r.status_code == 409:
                assert r.json()["error"]["code"] == "conflict" and r.json()["error"]["param"] == "name"
    assert server["proc"].tail().count("Traceback") == 0, server["proc"].tail()


def test_racing_uploads_of_one_task_name_store_only_the_winners_blobs(server: dict[str, Any]) -> None:
    base, store = server["base"], server["store"]
    assert httpx.post(f"{base}/v1/streams", json={"name": "uploads"}).status_code == 201
    for round_ in range(4):
        before = set(store.keys())
        rows_before = row_counts(server["db"])

        def upload(c: httpx.Client, i: int, round_: int = round_) -> httpx.Response:
            # every request a different file: a loser's blobs would be new keys nobody names
            rows = [{"prompt": f"r{round_} req {i} item {k}: which?", "completion": f"c{i}"} for k in range(20)]
            files = {"file": ("t.jsonl", jsonl(rows), "application/jsonl")}
            return c.post(f"{base}/v1/streams/uploads/tasks", files=files, data={"name": f"task-{round_}"})

        got = race(8, upload)
        codes = sorted(r.status_code for r in got)
        assert codes == [202] + [409] * 7, [(r.status_code, r.text[:200]) for r in got]
        winner = next(r.json() for r in got if r.status_code == 202)["task"]
        added = set(store.keys()) - before
        assert added == {f"sha256/{h[:2]}/{h}" for h in (winner["train_sha256"], winner["eval_sha256"])}
        rows = row_counts(server["db"])
        assert rows["tasks"] == rows_before["tasks"] + 1 and rows["jobs"] == rows_before["jobs"] + 1
    assert server["proc"].tail().count("Traceback") == 0, server["proc"].tail()


class Source:
    """A chunked request body (no Content-Length) that counts what the client managed to send."""

    def __init__(self, total: int, head: bytes = b"", chunk: int = 64 * 1024) -> None:
        self.total, self.head, self.chunk, self.sent = total, head, chunk, 0

    def __iter__(self) -> Iterator[bytes]:
        if self.head:
            self.sent += len(self.head)
            yield self.head
        while self.sent < self.total:
            self.sent += self.chunk
            yield b"x" * self.chunk


def post_chunked(url: str, source: Source, content_type: str) -> tuple[httpx.Response, float]:
    t0 = time.perf_counter()
    resp = httpx.post(url, content=iter(source), headers={"content-type": content_type}, timeout=60)
    return resp, time.perf_counter() - t0


def check_413(resp: httpx.Response, limit: int) -> None:
    assert resp.status_code == 413, resp.text[:300]
    err = resp.json()["error"]
    assert err["code"] == "too_large" and str(limit) in err["message"]


def test_a_chunked_json_body_is_cut_off_at_the_limit(server: dict[str, Any]) -> None:
    """100 MB of JSON with no Content-Length used to be read and parsed in full."""
    base = server["base"]
    assert httpx.post(f"{base}/v1/streams", json={"name": "bodies"}).status_code == 201
    for path in ("/v1/streams/bodies/predict", "/v1/streams"):
        source = Source(100 * 1024 * 1024, head=b'{"inputs": ["')
        resp, _ = post_chunked(f"{base}{path}", source, "application/json")
        check_413(resp, MAX_JSON)
        assert source.sent < MAX_JSON + 16 * 1024 * 1024, source.sent  # the rest was never sent: not 100 MB
    assert httpx.get(f"{base}/healthz").status_code == 200  # the server is fine


def test_a_chunked_upload_is_cut_off_before_it_reaches_the_disk(server: dict[str, Any]) -> None:
    """A 200 MB multipart upload with no Content-Length used to be spooled to disk before the 413."""
    base = server["base"]
    assert httpx.post(f"{base}/v1/streams", json={"name": "big-upload"}).status_code == 201
    head = (
        b'--b\r\nContent-Disposition: form-data; name="name"\r\n\r\nbig\r\n'
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="t.jsonl"\r\n'
        b"Content-Type: application/jsonl\r\n\r\n"
    )
    rows, keys = row_counts(server["db"]), server["store"].keys()
    source = Source(200 * 1024 * 1024, head=head)
    resp, seconds = post_chunked(f"{base}/v1/streams/big-upload/tasks", source, "multipart/form-data; boundary=b")
    check_413(resp, UPLOAD_LIMIT)
    assert source.sent < UPLOAD_LIMIT + 16 * 1024 * 1024, source.sent
    assert seconds < 30
    assert row_counts(server["db"]) == rows and server["store"].keys() == keys
    assert "Traceback" not in server["proc"].tail()


def test_declared_lengths_over_the_limit_are_refused_unread(server: dict[str, Any]) -> None:
    base = server["base"]
    resp = httpx.post(
        f"{base}/v1/streams", content=b"{" + b" " * (MAX_JSON + 10) + b"}", headers={"content-type": "application/json"}
    )
    check_413(resp, MAX_JSON)
    assert resp.headers["connection"] == "close"


def test_bodies_under_the_limit_pass_chunked_or_not(server: dict[str, Any]) -> None:
    """The limit is per route: an upload may be far larger than a JSON body."""
    base = server["base"]
    body = b'{"name": "chunked-ok", "train": {"epochs": 1}}'
    resp = httpx.post(
        f"{base}/v1/streams", content=iter([body[:10], body[10:]]), headers={"content-type": "application/json"}
    )
    assert resp.status_code == 201, resp.text
    rows = [{"prompt": f"Item {i}: " + "w" * 200, "completion": "alpha"} for i in range(250)]
    data = jsonl(rows)
    assert MAX_JSON < 2 * len(data) and len(data) <= MAX_UPLOAD  # over the JSON limit, under the upload one
    files = {"file": ("t.jsonl", data, "application/jsonl"), "eval_file": ("e.jsonl", data, "application/jsonl")}
    resp = httpx.post(f"{base}/v1/streams/chunked-ok/tasks", files=files, data={"name": "t"})
    assert resp.status_code == 202, resp.text
