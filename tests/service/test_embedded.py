"""The one-command embedded mode (`python -m api.serve`): SQLite, a local object store, the
filesystem broker and a worker process beside the API, here on a tiny random Llama."""

from __future__ import annotations

from pathlib import Path

import httpx

from .conftest import jsonl
from .procs import Proc, free_port, wait_jobs, wait_ready

ROWS = [{"prompt": f"Item {i} of the list: what is it?", "completion": "apple"} for i in range(30)]


def test_serve_runs_the_whole_service_embedded(tiny_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {"TREELORA_DATA_DIR": str(tmp_path / "var"), "TREELORA_MODELS": f"tiny={tiny_dir}"}
    proc = Proc(["-m", "api.serve", "--port", str(port)], env, tmp_path / "serve.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{base}/readyz", proc)
        assert f"TreeLoRA service: http://127.0.0.1:{port}" in proc.tail(10**6)
        httpx.post(
            f"{base}/v1/streams",
            json={
                "name": "s",
                "base_model": "tiny",
                "train": {"epochs": 1, "batch_size": 4, "max_length": 48},
                "tree": {"min_own_blocks": 2},
            },
        )
        jobs = []
        for name, word in (("a", "apple"), ("b", "pear")):
            rows = [{**r, "completion": word} for r in ROWS]
            resp = httpx.post(
                f"{base}/v1/streams/s/tasks", files={"file": ("t", jsonl(rows), "x")}, data={"name": name}
            )
            jobs.append(resp.json()["job"]["id"])
        done = wait_jobs(base, jobs, [proc], timeout=300)
        assert [j["state"] for j in done] == ["succeeded", "succeeded"]
        pred = httpx.post(
            f"{base}/v1/streams/s/predict",
            json={"inputs": ["Item 3 of the list: what is it?"], "task": "b", "max_new_tokens": 3},
            timeout=60,
        )
        assert pred.status_code == 200 and pred.json()["tree_version"] == 2
        assert (tmp_path / "var" / "treelora.db").exists() and any((tmp_path / "var" / "objects").rglob("*"))
    finally:
        proc.stop()
