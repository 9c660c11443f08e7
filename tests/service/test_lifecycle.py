"""Deleting streams, collecting orphaned blobs and retiring tasks, on real PostgreSQL and S3:
a deleted stream leaves no row and no blob of its own but keeps the blobs another stream names;
the collector deletes only old blobs no row names; a retired task is 410 by id, never picked by
auto routing, and stays in the tree and in R. Bad input to each new route is a clear 4xx."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from api.db import session_factory
from api.main import create_app
from api.migrate import upgrade
from api.services.blobs import collect_garbage, referenced
from api.settings import Settings
from api.storage import LocalStore, key_for, make_store
from worker.runner import run_job

from .conftest import ROWS, make_stream, row_counts, s3_keys, submit
from .procs import ROOT

FRUIT = [{"prompt": f"Fruit number {i}, name it please!", "completion": "mango"} for i in range(30)]


def stream_rows(url: str, stream_id: str) -> dict[str, int]:
    """Rows that belong to the stream, by table (job events through their jobs' foreign key)."""
    engine = create_engine(url)
    with engine.connect() as conn:
        out = {
            t: conn.execute(text(f"select count(*) from {t} where stream_id = :s"), {"s": stream_id}).scalar_one()
            for t in ("tasks", "jobs", "tree_versions", "adapters", "evaluations")
        }
        out["streams"] = conn.execute(text("select count(*) from streams where id = :s"), {"s": stream_id}).scalar_one()
    engine.dispose()
    return out


def blobs_of(settings: Settings, stream_id: str) -> set[str]:
    with session_factory(settings.db_url)() as s:
        return referenced(session=s, stream_id=stream_id)


def keys(settings: Settings) -> set[str]:
    return set(s3_keys(settings))


# -- deletion -----------------------------------------------------------------------------------


def test_deleting_a_stream_removes_its_rows_and_blobs_but_not_shared_blobs(wsettings: Settings, s3_client: Any) -> None:
    settings = wsettings.model_copy(update={"blob_grace_s": 0.0})  # every blob is old enough
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        make_stream(client, "s")
        make_stream(client, "t")
        assert run_job(submit(client, "a", stream="s")["id"], settings) == "done"
        other = submit(client, "a-too", stream="t")  # the same data in another stream: the same blobs
        s_id, t_id = (client.get(f"/v1/streams/{n}").json()["id"] for n in ("s", "t"))
        own, theirs = blobs_of(settings, s_id), blobs_of(settings, t_id)
        shared = own & theirs
        assert len(shared) == 2 and len(own) > 2  # the splits, and the adapters and extras of s
        assert {key_for(sha) for sha in own | theirs} == keys(settings)

        busy = submit(client, "b", stream="s")  # a queued job: the stream cannot go yet
        resp = client.delete("/v1/streams/s")
        assert resp.status_code == 409 and resp.json()["error"]["code"] == "stream_busy"
        assert busy["id"] in resp.json()["error"]["message"]
        assert client.get("/v1/streams/s").status_code == 200 and blobs_of(settings, s_id) == own
        assert client.post(f"/v1/jobs/{busy['id']}/cancel").json()["state"] == "cancelled"

        resp = client.delete(f"/v1/streams/{s_id}")  # by id (by name works too: below)
        assert resp.status_code == 200, resp.text
        out = resp.json()
        assert (out["id"], out["name"]) == (s_id, "s")
        assert out["rows"]["streams"] == 1 and out["rows"]["tasks"] == 2 and out["rows"]["jobs"] == 2
        assert out["rows"]["tree_versions"] == 1 and out["rows"]["adapters"] >= 1 and out["rows"]["job_events"] >= 4
        assert (out["blobs_deleted"], out["blobs_shared"], out["blobs_young"]) == (len(own) - 2, 2, 0)
        assert set(stream_rows(settings.db_url, s_id).values()) == {0}
        assert keys(settings) == {key_for(sha) for sha in theirs}  # only the other stream's blobs remain
        for path in ("/v1/streams/s", "/v1/streams/s/tree", "/v1/streams/s/tasks/a", f"/v1/jobs/{busy['id']}"):
            assert client.get(path).status_code == 404, path
        assert client.delete("/v1/streams/s").status_code == 404  # gone already
        # the other stream is whole: its task still reads its splits
        task = client.get("/v1/streams/t/tasks/a-too").json()
        assert task["status"] == "pending" and client.get("/v1/streams/t").json()["name"] == "t"
        with session_factory(settings.db_url)() as s:
            store = make_store(settings)
            assert store.get(task["train_sha256"]) and store.get(task["eval_sha256"])
            assert collect_garbage(session=s, store=store, grace_s=0).deleted == []  # nothing orphaned
        # a stream that never learned anything goes as well
        assert client.post(f"/v1/jobs/{other['id']}/cancel").json()["state"] == "cancelled"
        assert client.delete("/v1/streams/t").status_code == 200
        assert keys(settings) == set() and set(row_counts(settings.db_url).values()) == {0}


def test_stream_deletion_leaves_young_blobs_to_the_collector(client: TestClient, settings: Settings) -> None:
    make = client.post("/v1/streams", json={"name": "s"})
    assert make.status_code == 201
    job = client.post(
        "/v1/streams/s/tasks", files={"file": ("t", json.dumps(ROWS).encode(), "x")}, data={"name": "a"}
    ).json()["job"]
    client.post(f"/v1/jobs/{job['id']}/cancel")
    resp = client.delete("/v1/streams/s")  # the default grace period: an hour
    assert resp.status_code == 200 and (resp.json()["blobs_deleted"], resp.json()["blobs_young"]) == (0, 2)
    assert len(keys(settings)) == 2
    with session_factory(settings.db_url)() as s:
        out = collect_garbage(session=s, store=make_store(settings), grace_s=0)
    assert len(out.deleted) == 2 and keys(settings) == set()


def test_deletion_and_collection_on_the_embedded_backends(tiny_dir: Path, tmp_path: Path) -> None:
    """The same on SQLite and a local object folder (the embedded mode)."""
    settings = Settings(data_dir=tmp_path, models=f"tiny={tiny_dir}", heartbeat_s=0.2, lease_s=5.0, blob_grace_s=0.0)
    upgrade(settings.db_url)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        make_stream(client, "s")
        make_stream(client, "t")
        assert run_job(submit(client, "a", stream="s")["id"], settings) == "done"
        other = submit(client, "a", stream="t")
        s_id, t_id = (client.get(f"/v1/streams/{n}").json()["id"] for n in ("s", "t"))
        own, theirs = blobs_of(settings, s_id), blobs_of(settings, t_id)
        assert len(own & theirs) == 2 and len(own) > 3  # the splits; adapters and the extras blob
        stored = set(LocalStore(settings.objects_dir).keys())
        assert stored == {key_for(sha) for sha in own | theirs}
        resp = client.delete("/v1/streams/s")
        assert resp.status_code == 200 and resp.json()["blobs_deleted"] == len(own) - 2, resp.text
        assert set(LocalStore(settings.objects_dir).keys()) == {key_for(sha) for sha in theirs}
        assert set(stream_rows(settings.db_url, s_id).values()) == {0}
        assert client.post(f"/v1/jobs/{other['id']}/cancel").json()["state"] == "cancelled"
        orphan = LocalStore(settings.objects_dir).put(b"left behind")
        with session_factory(settings.db_url)() as session:
            out = collect_garbage(session=session, store=make_store(settings), grace_s=0)
        assert out.deleted == [orphan] and out.referenced == 2


# -- garbage collection -------------------------------------------------------------------------


def gc_cli(settings: Settings, *args: str) -> dict[str, Any]:
    """`python -m api.gc` as its own process, configured by the environment as in production."""
    env = {
        **os.environ,
        "TREELORA_DATABASE_URL": settings.db_url,
        "TREELORA_STORE": "s3",
        "TREELORA_S3_ENDPOINT": str(settings.s3_endpoint),
        "TREELORA_S3_BUCKET": settings.s3_bucket,
        "TREELORA_S3_ACCESS_KEY": str(settings.s3_access_key),
        "TREELORA_S3_SECRET_KEY": str(settings.s3_secret_key),
        "TREELORA_S3_PREFIX": settings.s3_prefix,
        "TREELORA_DATA_DIR": str(settings.data_dir),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "api.gc", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_the_collector_deletes_only_old_unreferenced_blobs(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    client.post("/v1/streams", json={"name": "s"})
    resp = client.post("/v1/streams/s/tasks", files={"file": ("t", json.dumps(ROWS).encode(), "x")}, data={"name": "a"})
    assert resp.status_code == 202
    task = resp.json()["task"]
    referenced_keys = {key_for(task["train_sha256"]), key_for(task["eval_sha256"])}
    store = make_store(settings)
    orphans = [store.put(f"blob {i} a failed job left behind".encode()) for i in range(3)]
    before = keys(settings)
    assert len(before) == 5
    with session_factory(settings.db_url)() as s:
        out = collect_garbage(session=s, store=store, grace_s=3600)  # all of them were written just now
    assert (out.scanned, out.referenced, out.young, out.deleted) == (5, 2, 3, []) and keys(settings) == before

    # the command line, as its own process configured from the environment
    summary = {"dry_run": False, "scanned": 5, "referenced": 2, "young": 3, "deleted": 0, "deleted_bytes": 0}
    assert gc_cli(settings) == summary  # the default grace period: an hour
    dry = gc_cli(settings, "--grace-s", "0", "--dry-run")
    assert (dry["deleted"], dry["young"], dry["deleted_bytes"]) == (3, 0, 3 * len(b"blob 0 a failed job left behind"))
    assert keys(settings) == before  # a dry run deletes nothing
    assert gc_cli(settings, "--grace-s", "0")["deleted"] == 3
    assert keys(settings) == referenced_keys and not any(store.exists(sha) for sha in orphans)
    assert client.get("/v1/streams/s/tasks/a").status_code == 200 and store.get(task["train_sha256"])

    # ages, made exact in a folder store: an old orphan goes; one an upload just put again stays
    local = LocalStore(tmp_path / "objects")
    old, refreshed, young = (local.put(f"orphan {n}".encode()) for n in ("old", "refreshed", "young"))
    two_hours_ago = time.time() - 7200
    for sha in (old, refreshed):
        os.utime(tmp_path / "objects" / key_for(sha), (two_hours_ago, two_hours_ago))
    assert local.put(b"orphan refreshed") == refreshed  # a dedup hit: young again
    with session_factory(settings.db_url)() as s:
        out = collect_garbage(session=s, store=local, grace_s=3600)
    assert out.deleted == [old] and out.young == 2
    assert not local.exists(old) and local.exists(refreshed) and local.exists(young)


def test_the_collector_cli_rejects_bad_arguments(settings: Settings) -> None:
    env = {**os.environ, "TREELORA_DATABASE_URL": settings.db_url, "TREELORA_DATA_DIR": str(settings.data_dir)}
    for args in (["--grace-s", "-1"], ["--grace-s", "nan"], ["--grace-s", "soon"], ["--bogus"]):
        proc = subprocess.run(
            [sys.executable, "-m", "api.gc", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 2 and "usage:" in proc.stderr, (args, proc.stderr)


# -- retirement ---------------------------------------------------------------------------------


def predict(client: TestClient, **body: Any) -> Any:
    return client.post("/v1/streams/s/predict", json={"max_new_tokens": 2, **body})


def test_a_retired_task_is_gone_by_id_skipped_by_auto_and_kept_in_the_tree(
    wclient: TestClient, wsettings: Settings
) -> None:
    make_stream(wclient, epochs=2)
    assert run_job(submit(wclient, "apple")["id"], wsettings) == "done"
    assert run_job(submit(wclient, "mango", FRUIT)["id"], wsettings) == "done"
    pending = submit(wclient, "plum", [{**r, "completion": "plum"} for r in ROWS])
    apple_prompts = [r["prompt"] for r in ROWS[:6]]
    inputs = apple_prompts + [r["prompt"] for r in FRUIT[:6]]
    for routing in ("flat", "tree"):  # before: each style of prompt goes to its own task
        picks = [p["task"] for p in predict(wclient, inputs=inputs, routing=routing).json()["predictions"]]
        assert picks[:6] == ["apple"] * 6 and picks[6:] == ["mango"] * 6, (routing, picks)

    resp = wclient.post("/v1/streams/s/tasks/apple/retire")
    assert resp.status_code == 200, resp.text
    retired_at = resp.json()["retired_at"]
    assert retired_at and resp.json()["status"] == "learned"
    again = wclient.post(f"/v1/streams/s/tasks/{resp.json()['id']}/retire").json()  # by id; idempotent
    assert (
        again["retired_at"] == retired_at
        and wclient.get("/v1/streams/s/tasks/apple").json()["retired_at"] == retired_at
    )

    for resp in (
        predict(wclient, inputs=apple_prompts[:1], task="apple"),
        predict(wclient, inputs=apple_prompts[:1], task=again["id"]),
        wclient.post("/v1/streams/s/score", json={"inputs": apple_prompts[:1], "choices": ["apple"], "task": "apple"}),
        wclient.get("/v1/streams/s/tasks/apple/adapter"),
    ):
        assert resp.status_code == 410 and resp.json()["error"]["code"] == "task_retired", resp.text
    for routing in ("flat", "tree"):  # auto never picks it, even for its own prompts
        preds = predict(wclient, inputs=inputs, routing=routing).json()["predictions"]
        assert [p["task"] for p in preds] == ["mango"] * len(inputs) and all(p["confidence"] == 1.0 for p in preds)
    scored = wclient.post("/v1/streams/s/score", json={"inputs": apple_prompts[:2], "choices": ["apple", "mango"]})
    assert scored.status_code == 200 and {r["task"] for r in scored.json()["results"]} == {"mango"}
    # it stays in the tree, in R and in the registry
    tree = wclient.get("/v1/streams/s/tree").json()
    assert {n["task"] for n in tree["nodes"] if n["task"]} == {"apple", "mango"}
    ev = wclient.get("/v1/streams/s/evaluations").json()
    assert ev["tasks"] == ["apple", "mango"] and ev["R"][1][0] is not None
    assert wclient.get("/v1/streams/s/tasks/apple/path").status_code == 200

    # every task retired: auto has nothing to route to
    assert wclient.post("/v1/streams/s/tasks/mango/retire").status_code == 200
    resp = predict(wclient, inputs=inputs[:1])
    assert resp.status_code == 410 and resp.json()["error"]["code"] == "task_retired"
    # a task not learned yet cannot be retired
    resp = wclient.post(f"/v1/streams/s/tasks/{pending['task_id']}/retire")
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "not_learned"
    # back in service
    resp = wclient.post("/v1/streams/s/tasks/apple/unretire")
    assert resp.status_code == 200 and resp.json()["retired_at"] is None
    assert predict(wclient, inputs=apple_prompts[:1], task="apple").status_code == 200
    assert {p["task"] for p in predict(wclient, inputs=inputs).json()["predictions"]} == {"apple"}


# -- bad input to the new routes ----------------------------------------------------------------

MALFORMED = ["bad name", "a%0A", "-dash-first", "x" * 65, "%E2%80%A8", "a%2Fb"]


@pytest.mark.parametrize(
    "method,path",
    [
        ("delete", "/v1/streams/{s}"),
        ("post", "/v1/streams/{s}/tasks/a/retire"),
        ("post", "/v1/streams/{s}/tasks/a/unretire"),
    ],
)
def test_new_routes_answer_unknown_and_malformed_streams_like_get(client: TestClient, method: str, path: str) -> None:
    client.post("/v1/streams", json={"name": "s"})
    for name in ["nope", "str_0000000000000000000000", *MALFORMED]:
        resp = client.request(method, path.format(s=name))
        expect = client.get(f"/v1/streams/{name}")
        assert resp.status_code == expect.status_code and resp.status_code in (404, 422), (name, resp.text)
        assert resp.json()["error"]["code"] == expect.json()["error"]["code"]
    assert client.get("/v1/streams/s").status_code == 200  # nothing happened to the real one


def test_retire_answers_unknown_and_malformed_tasks_like_get(client: TestClient) -> None:
    client.post("/v1/streams", json={"name": "s"})
    for action in ("retire", "unretire"):
        for name in ["nope", "tsk_0000000000000000000000", *MALFORMED]:
            resp = client.post(f"/v1/streams/s/tasks/{name}/{action}")
            expect = client.get(f"/v1/streams/s/tasks/{name}")
            assert resp.status_code == expect.status_code and resp.status_code in (404, 422), (name, resp.text)
            assert resp.json()["error"]["code"] == expect.json()["error"]["code"]
    for method, path in (("get", "/v1/streams/s/tasks/a/retire"), ("put", "/v1/streams/s"), ("delete", "/v1/streams")):
        assert client.request(method, path).status_code == 405, (method, path)
