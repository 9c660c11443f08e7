"""Blob integrity on real stores: a byte flipped in a stored adapter (in the local folder, and in a
real S3 server) or a deleted one is a clear 503 `blob_corrupt` / `blob_missing` naming the blob,
never a prediction from damaged weights; a job that needs it fails with the same code; a lost eval
split of an old task is skipped with an event instead of failing every later job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import Settings
from api.storage import key_for
from worker.runner import run_job

from .conftest import ROWS, make_stream, submit

PROMPT = "Item 3 of the list: what is it?"


class Blobs:
    """Raw access to the blobs of the store a test's service uses, behind the service's back."""

    def __init__(self, settings: Settings, s3_client: Any) -> None:
        self.settings, self.s3 = settings, s3_client

    def _key(self, sha: str) -> str:
        return self.settings.s3_prefix + key_for(sha)

    def read(self, sha: str) -> bytes:
        if self.settings.store == "local":
            return (self.settings.objects_dir / key_for(sha)).read_bytes()
        return bytes(self.s3.get_object(Bucket=self.settings.s3_bucket, Key=self._key(sha))["Body"].read())

    def write(self, sha: str, data: bytes) -> None:
        if self.settings.store == "local":
            (self.settings.objects_dir / key_for(sha)).write_bytes(data)
        else:
            self.s3.put_object(Bucket=self.settings.s3_bucket, Key=self._key(sha), Body=data)

    def remove(self, sha: str) -> None:
        if self.settings.store == "local":
            (self.settings.objects_dir / key_for(sha)).unlink()
        else:
            self.s3.delete_object(Bucket=self.settings.s3_bucket, Key=self._key(sha))


def check_blob_error(resp: Any, code: str, sha: str) -> None:
    assert resp.status_code == 503, resp.text
    err = resp.json()["error"]
    assert err["code"] == code and key_for(sha) in err["message"], err


@pytest.mark.parametrize("store", ["local", "s3"])
def test_a_flipped_byte_in_an_adapter_is_a_clear_error_not_a_wrong_answer(
    store: str, wsettings: Settings, tmp_path: Path, s3_client: Any
) -> None:
    settings = wsettings
    if store == "local":
        settings = wsettings.model_copy(update={"store": "local", "store_dir": tmp_path / "objects"})
    blobs = Blobs(settings, s3_client)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        make_stream(client)
        assert run_job(submit(client, "a")["id"], settings) == "done"
        node = client.get("/v1/streams/s/tasks/a/path").json()["segments"][0]["adapters"][0]
        sha = next(a["sha256"] for a in client.get("/v1/streams/s/adapters").json()["data"] if a["node"] == node)
        good = blobs.read(sha)
        bad = bytearray(good)
        bad[-1] ^= 0x40  # the high byte of the last weight: a large change, and still a loadable file
        blobs.write(sha, bytes(bad))
        body = {"inputs": [PROMPT], "task": "a", "max_new_tokens": 3}
        check_blob_error(client.post("/v1/streams/s/predict", json=body), "blob_corrupt", sha)
        check_blob_error(client.post("/v1/streams/s/predict", json={**body, "task": "auto"}), "blob_corrupt", sha)
        check_blob_error(client.get("/v1/streams/s/tasks/a/adapter"), "blob_corrupt", sha)
        # a job that builds on the damaged version fails with the same code; the stream stays as it was
        job = submit(client, "b", [{**r, "completion": "pear"} for r in ROWS])
        assert run_job(job["id"], settings) == "done"
        failed = client.get(f"/v1/jobs/{job['id']}").json()
        assert failed["state"] == "failed" and failed["error"]["code"] == "blob_corrupt", failed
        assert key_for(sha) in failed["error"]["message"]
        assert client.get("/v1/streams/s").json()["tree_version"] == 1
        blobs.remove(sha)
        check_blob_error(client.post("/v1/streams/s/predict", json=body), "blob_missing", sha)
        blobs.write(sha, good)  # repaired: served again
        resp = client.post("/v1/streams/s/predict", json=body)
        assert resp.status_code == 200, resp.text


def test_a_lost_eval_split_of_an_old_task_is_skipped_not_fatal(
    wclient: TestClient, wsettings: Settings, s3_client: Any
) -> None:
    make_stream(wclient)
    assert run_job(submit(wclient, "a")["id"], wsettings) == "done"
    sha = wclient.get("/v1/streams/s/tasks/a").json()["eval_sha256"]
    Blobs(wsettings, s3_client).remove(sha)  # a fault we cannot cause otherwise
    jobs = [submit(wclient, name, [{**r, "completion": name} for r in ROWS]) for name in ("b", "c")]
    for job in jobs:
        assert run_job(job["id"], wsettings) == "done"
        done = wclient.get(f"/v1/jobs/{job['id']}").json()
        assert done["state"] == "succeeded", done
        events = wclient.get(f"/v1/jobs/{job['id']}/events").json()["data"]
        skipped = [e["data"] for e in events if e["type"] == "evaluation.skipped"]
        assert skipped == [{"task": "a", "code": "blob_missing", "key": key_for(sha), "message": skipped[0]["message"]}]
    ev = wclient.get("/v1/streams/s/evaluations").json()
    assert ev["tasks"] == ["a", "b", "c"]
    assert ev["R"][0][0] is not None and ev["R"][1][0] is None and ev["R"][2][0] is None
    assert all(v is not None for v in (ev["R"][1][1], ev["R"][2][1], ev["R"][2][2]))
    assert ev["missing"] == [{"tree_version": 2, "task": "a"}, {"tree_version": 3, "task": "a"}]
    assert ev["op"] == round((ev["R"][2][1] + ev["R"][2][2]) / 2, 2)  # over the scores present
    assert ev["bwt"] == round(ev["R"][2][1] - ev["R"][1][1], 2) and set(ev["forgetting_per_task"]) == {"b"}
