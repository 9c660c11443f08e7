"""Serving through the API: concurrent requests for different tasks share batches and answer as
they would alone; a new tree version is seen by the next request while a request already
resolved keeps its version; scoring, routing flags and the cache counters."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.db import session_factory
from api.models import Stream
from api.serving import Batcher, Request, ServedCache
from api.settings import Settings
from api.step_batcher import StepBatcher
from api.storage import BlobNotFound
from treelora_core.serving import GenParams
from treelora_core.step_batch import StepBatch
from worker.runner import run_job

from .conftest import ROWS, make_stream, submit

WORDS = ("apple", "mango", "plum")


def learn(client: TestClient, settings: Settings, words: tuple[str, ...] = WORDS) -> None:
    make_stream(client, epochs=8, patience=0, lr=1e-2)
    for w in words:
        assert run_job(submit(client, w, [{**r, "completion": w} for r in ROWS])["id"], settings) == "done"


def predict(client: TestClient, **body: Any) -> dict[str, Any]:
    resp = client.post("/v1/streams/s/predict", json={"max_new_tokens": 3, **body})
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def test_concurrent_requests_share_batches_and_match_sequential_answers(
    wclient: TestClient, wsettings: Settings
) -> None:
    learn(wclient, wsettings)
    prompts = [f"Item {i} of the list: what is it?" for i in range(4)]
    jobs = [(w, p) for w in WORDS for p in prompts]
    alone = [predict(wclient, inputs=[p], task=w)["predictions"][0]["output"] for w, p in jobs]
    inference = wclient.app.state.inference  # type: ignore[attr-defined]
    before = inference.batcher.batches
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(
            pool.map(lambda j: predict(wclient, inputs=[j[1]], task=j[0])["predictions"][0]["output"], jobs)
        )
    assert together == alone
    assert inference.batcher.batches - before < len(jobs)  # some requests ran in the same batch
    assert [a.strip() for a in alone[::4]] == list(WORDS)  # each task answers with its own word


def test_new_version_is_seen_and_resolved_requests_keep_theirs(wclient: TestClient, wsettings: Settings) -> None:
    learn(wclient, wsettings, WORDS[:2])
    first = predict(wclient, inputs=["Item 1 of the list: what is it?"], task="apple")
    assert first["tree_version"] == 2
    inference = wclient.app.state.inference  # type: ignore[attr-defined]
    with session_factory(wsettings.db_url)() as s:
        stream = s.query(Stream).one()  # at version 2
    served_v2 = inference.served.get(stream)
    assert served_v2.version == 2
    misses = sum(p.misses for p in [srv.pool for srv in inference.servers.values()])
    assert run_job(submit(wclient, "plum", [{**r, "completion": "plum"} for r in ROWS])["id"], wsettings) == "done"
    fresh = predict(wclient, inputs=["Item 1 of the list: what is it?"], task="plum")
    assert fresh["tree_version"] == 3 and fresh["predictions"][0]["output"].strip() == "plum"
    stats = inference.stats()
    assert stats["adapter_cache_misses"] > misses  # the new version's nodes were loaded
    predict(wclient, inputs=["Item 2 of the list: what is it?"], task="plum")
    assert inference.stats()["adapter_cache_hits"] > stats["adapter_cache_hits"]  # and now kept
    # a request that resolved version 2 before the commit still answers on version 2
    old = inference.batcher.submit(
        Request(served_v2, ["Item 1 of the list: what is it?"], "apple", params=GenParams(max_new_tokens=3))
    )
    assert old[0]["path"] == served_v2.segments["apple"] and old[0]["output"] == first["predictions"][0]["output"]


def test_scoring_routing_and_threshold(wclient: TestClient, wsettings: Settings) -> None:
    learn(wclient, wsettings)
    resp = wclient.post(
        "/v1/streams/s/score",
        json={"inputs": ["Item 2 of the list: what is it?"], "choices": list(WORDS), "task": "mango"},
    )
    assert resp.status_code == 200, resp.text
    result = resp.json()["results"][0]
    assert result["best"] == "mango" and {c["choice"] for c in result["choices"]} == set(WORDS)
    for routing in ("flat", "tree"):
        auto = predict(wclient, inputs=["Item 2 of the list: what is it?"], task="auto", routing=routing)
        p = auto["predictions"][0]
        assert p["task"] in WORDS and 0 < p["confidence"] <= 1 and p["path"]
    sure = predict(wclient, inputs=["Item 2 of the list: what is it?"], min_confidence=0.0)["predictions"][0]
    unsure = predict(wclient, inputs=["Item 2 of the list: what is it?"], min_confidence=1.0)["predictions"][0]
    assert sure["low_confidence"] is False and unsure["low_confidence"] is (unsure["confidence"] < 1.0)
    sampled = [
        predict(
            wclient, inputs=["Item 2 of the list: what is it?"], task="plum", do_sample=True, temperature=2.0, seed=3
        )["predictions"][0]["output"]
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]
    metrics = wclient.get("/metrics").text
    assert "treelora_adapter_cache_bytes" in metrics and "treelora_batches" in metrics


@pytest.mark.parametrize("policy", ["step", "request"])
def test_a_request_that_cannot_run_fails_alone_under_either_batching(
    wclient: TestClient, wsettings: Settings, policy: str
) -> None:
    """Requests arriving together, one of them on a path whose adapter is not in the object
    store: that one gets the store's error, the others their answers as they get them alone
    (request-level batching runs the failed batch again request by request; step-level batching
    fails the request when it is admitted, before it joins)."""
    learn(wclient, wsettings, WORDS[:2])
    inference = wclient.app.state.inference  # type: ignore[attr-defined]
    with session_factory(wsettings.db_url)() as s:
        served = inference.served.get(s.query(Stream).one())
    missing = "0" * 64
    broken = replace(served, paths={**served.paths, "apple": {b: (missing,) for b in served.paths["apple"]}})
    settings = wsettings.model_copy(update={"batching": policy, "batch_window_ms": 200.0, "batch_max_wait_ms": 500.0})
    batcher = (StepBatcher if policy == "step" else Batcher)(settings, inference.store, inference.server)
    prompt = "Item 1 of the list: what is it?"
    alone = predict(wclient, inputs=[prompt], task="mango")["predictions"][0]
    reqs = [Request(served, [prompt], "mango", params=GenParams(max_new_tokens=3)) for _ in range(3)]
    reqs.insert(1, Request(broken, [prompt], "apple", params=GenParams(max_new_tokens=3)))
    for r in reqs:
        batcher.put(r)
    assert [r.future.result(timeout=120)[0]["output"] for r in reqs if r.served is served] == [alone["output"]] * 3
    with pytest.raises(BlobNotFound):
        reqs[1].future.result(timeout=120)
    assert batcher.rows == 3  # rows decoded to the end: the good ones
    assert batcher.batches == (1 if policy == "step" else 1 + 4)  # request-level: the batch, then each apart


def test_a_failed_decoding_step_runs_its_requests_again_apart(
    wclient: TestClient, wsettings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step-level batch whose decoding step raises (a fault injected once: nothing here can
    make a real step fail) answers each of its requests by running it again alone."""
    learn(wclient, wsettings, WORDS[:2])
    inference = wclient.app.state.inference  # type: ignore[attr-defined]
    with session_factory(wsettings.db_url)() as s:
        served = inference.served.get(s.query(Stream).one())
    prompts = [f"Item {i} of the list: what is it?" for i in range(3)]
    tasks = ["apple", "mango", "apple"]
    pairs = list(zip(prompts, tasks, strict=True))
    alone = [predict(wclient, inputs=[p], task=w)["predictions"][0]["output"] for p, w in pairs]
    settings = wsettings.model_copy(update={"batch_window_ms": 200.0, "batch_max_wait_ms": 500.0})
    batcher = StepBatcher(settings, inference.store, inference.server)
    real, failed = StepBatch.step, []

    def once(self: StepBatch[Any]) -> Any:
        if not failed:
            failed.append(len(self))
            raise RuntimeError("injected")
        return real(self)

    monkeypatch.setattr(StepBatch, "step", once)
    reqs = [Request(served, [p], w, params=GenParams(max_new_tokens=3)) for p, w in pairs]
    for r in reqs:
        batcher.put(r)
    assert [r.future.result(timeout=120)[0]["output"] for r in reqs] == alone
    assert failed == [len(reqs)]  # the three shared the step that failed


def test_a_stream_of_many_registered_tasks_serves_each_of_them(wclient: TestClient, wsettings: Settings) -> None:
    """`benchmarks.many_tasks` (the serving benchmark's 1,000-task stream, here 40 tasks) commits a
    version the service serves: any task by name through its own path, `auto` routing among all,
    each distinct node loaded into the pool once."""
    from benchmarks.many_tasks import register

    inference = wclient.app.state.inference  # type: ignore[attr-defined]
    names = register(wsettings, inference.store, "many", 40, families=4, own=1, shared=1, base_model="tiny")
    assert len(names) == 40 and wclient.get("/v1/streams/many").json()["tree_version"] == 1
    body = {"inputs": ["Item 1 of the list: what is it?"], "max_new_tokens": 2}
    misses = inference.stats()["adapter_cache_misses"]
    for task in names[::7]:
        resp = wclient.post("/v1/streams/many/predict", json={**body, "task": task})
        assert resp.status_code == 200, resp.text
        assert resp.json()["predictions"][0]["task"] == task and len(resp.json()["predictions"][0]["path"]) == 3
    loaded = inference.stats()["adapter_cache_misses"] - misses
    assert loaded == 1 + 4 + len(names[::7])  # the root, the families, each task's own node: no node twice
    routed = wclient.post("/v1/streams/many/predict", json={**body, "task": "auto"}).json()["predictions"][0]
    assert routed["task"] in names and 0 <= routed["confidence"] <= 1


def test_torch_threads_are_pinned_by_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """`TREELORA_TORCH_THREADS` reaches torch before a process loads its first model; unset, torch
    keeps its own default."""
    import torch

    from api.learners import use_threads

    monkeypatch.setenv("TREELORA_TORCH_THREADS", "1")
    pinned = Settings()
    assert pinned.torch_threads == 1
    monkeypatch.delenv("TREELORA_TORCH_THREADS")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        use_threads(Settings())
        assert torch.get_num_threads() == 2
        use_threads(pinned)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_concurrent_first_requests_build_a_version_once(
    wclient: TestClient, wsettings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests that arrive together for a version not served yet wait for one build of it,
    instead of each building it (a thundering herd on every commit)."""
    learn(wclient, wsettings, WORDS[:1])
    inference = wclient.app.state.inference  # type: ignore[attr-defined]
    with session_factory(wsettings.db_url)() as s:
        stream = s.query(Stream).one()
    cache = ServedCache(wsettings, inference.store)
    real, builds = cache._build, []

    def counted(*args: Any) -> Any:
        builds.append(1)
        time.sleep(0.3)  # long enough for every thread to arrive while it runs
        return real(*args)

    monkeypatch.setattr(cache, "_build", counted)
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda _: cache.get(stream), range(8)))
    assert len(builds) == 1 and all(g is got[0] for g in got) and got[0].version == stream.tree_version


def test_a_prefill_budget_lets_one_row_join_per_step(wclient: TestClient, wsettings: Settings) -> None:
    """With `prefill_tokens_per_step` below one prompt, requests that arrive together join the
    running batch one per decoding step (one prefill each) and answer as they do alone."""
    learn(wclient, wsettings, WORDS[:2])
    inference = wclient.app.state.inference  # type: ignore[attr-defined]
    with session_factory(wsettings.db_url)() as s:
        served = inference.served.get(s.query(Stream).one())
    pairs = [(f"Item {i} of the list: what is it?", w) for i, w in enumerate(["apple", "mango"] * 2)]
    alone = [predict(wclient, inputs=[p], task=w, ignore_eos=True)["predictions"][0]["output"] for p, w in pairs]
    for budget, joins in ((1, len(pairs)), (0, 1)):
        settings = wsettings.model_copy(
            update={"prefill_tokens_per_step": budget, "batch_window_ms": 200.0, "batch_max_wait_ms": 500.0}
        )
        batcher = StepBatcher(settings, inference.store, inference.server)
        reqs = [Request(served, [p], w, params=GenParams(max_new_tokens=3, ignore_eos=True)) for p, w in pairs]
        for r in reqs:
            batcher.put(r)
        assert [r.future.result(timeout=120)[0]["output"] for r in reqs] == alone
        assert batcher.batches == joins  # prefills: one per row under the budget, one for all without
