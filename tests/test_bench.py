"""The benchmark pipeline end to end on its smoke profile (real model, real data, a minute)."""

from __future__ import annotations

import json

import pytest

from treelora_core import bench, bench_report

pytestmark = pytest.mark.slow

KEYS = {"op", "bwt_gem", "forgetting", "seconds_per_task", "trainable_params", "stored_bytes", "routing_accuracy"}


def test_smoke_benchmark_writes_the_documented_shape(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bench.main(
        ["--stream", "wordnet", "--profile", "smoke", "--methods", "treelora", "seq_lora", "--out", str(tmp_path)]
    )
    summary = json.loads((tmp_path / "continual.json").read_text())
    assert set(summary) == {"stream", "profile", "model", "epochs", "methods"}
    assert set(summary["methods"]) == {"treelora", "treelora@task_id", "seq_lora"}
    for name, m in summary["methods"].items():
        assert set(m) == KEYS
        assert 0 <= m["op"] <= 100 and m["seconds_per_task"] > 0
        assert (m["routing_accuracy"] is None) == (name != "treelora")
    details = json.loads((tmp_path / "continual.details.json").read_text())
    assert len(details["runs"]["treelora"]["R"]) == 2
    assert (tmp_path / "continual.png").stat().st_size > 1000
    doc = tmp_path / "benchmarks.md"
    bench_report.main(["--folder", str(tmp_path), "--out", str(doc)])
    assert "| treelora |" in doc.read_text()
