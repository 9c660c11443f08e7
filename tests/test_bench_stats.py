"""The benchmark's intervals: paired bootstrap verdicts on synthetic scores with known answers."""

from __future__ import annotations

import numpy as np

from benchmarks import stats


def matrix(final: list[float], diag: list[float], n: int = 200, seeds: int = 3) -> np.ndarray:
    """Per-example 0/100 scores with the given final-row and diagonal accuracies."""
    rng = np.random.default_rng(0)
    T = len(final)
    x = np.full((seeds, T, T, n), np.nan)
    for t in range(T):
        for i in range(t + 1):
            p = final[i] if t == T - 1 else diag[i]
            x[:, t, i] = (rng.random((seeds, n)) < p) * 100.0
    return x


def test_op_and_forgetting_match_their_definitions() -> None:
    x = matrix([0.5, 0.5], [1.0, 1.0])
    op, fg = stats.op_and_forgetting(x)
    assert np.allclose(op, x[:, 1].mean(axis=(1, 2)))
    assert np.all(fg > 40)  # task 0 fell from 100 to about 50


def test_bwt_skips_the_padding_of_a_task_with_fewer_test_examples() -> None:
    x = matrix([0.5, 0.5, 0.5], [1.0, 1.0, 1.0])
    x[:, :, 1, 150:] = np.nan  # task 1 has 150 test examples, padded to 200
    expected = np.mean(
        [np.nanmean(x[:, 2, i], axis=-1) - np.nanmean(x[:, i, i], axis=-1) for i in range(2)], axis=0
    ).mean()
    assert np.isfinite(stats.bwt_stat(x)) and np.isclose(stats.bwt_stat(x), expected) and expected < -40
    assert stats.bwt_stat(x[:, :1, :1]) == 0.0  # one task: nothing to forget


def test_verdicts_follow_the_interval_of_the_paired_difference() -> None:
    strong, weak = matrix([0.9, 0.9], [0.9, 0.9]), matrix([0.6, 0.6], [0.6, 0.6])
    draws = stats.resamples(3, 2, 200, b=200)
    d, ci = stats.bootstrap_diff(stats.op_stat, strong, weak, draws)
    assert d > 20 and stats.verdict(ci) == "beats"
    same = matrix([0.7, 0.7], [0.7, 0.7])
    _, ci = stats.bootstrap_diff(stats.op_stat, same, same.copy(), draws)
    assert ci == [0.0, 0.0] and stats.verdict(ci) == "tie"
    _, ci = stats.bootstrap_diff(stats.op_stat, weak, strong, draws)
    assert stats.verdict(ci) == "loses"


def test_paired_rate_difference_over_the_same_items() -> None:
    a = np.array([1] * 90 + [0] * 10)
    b = np.array([1] * 60 + [0] * 40)
    d = stats.paired_rate_diff(a, b)
    assert d["diff"] == 30.0 and d["ci"][0] > 0 and d["verdict"] == "beats"
    assert stats.paired_rate_diff(b, a)["verdict"] == "loses"
    assert stats.paired_rate_diff(a, a.copy()) == {"diff": 0.0, "ci": [0.0, 0.0], "verdict": "tie"}


def test_time_ratios_divide_by_the_reference_on_the_same_seeds_only() -> None:
    from benchmarks.continual import time_ratios

    secs = {"per_task_lora": {0: 100.0, 1: 100.0, 2: 200.0}, "treelora": {0: 60.0, 1: 70.0}, "ewc": {3: 90.0}}
    units = {"per_task_lora": {"0": 1.0, "1": 1.2, "2": 1.0}, "treelora": {"0": 0.6, "1": 0.6}}
    r = time_ratios(secs, units)
    # seed 2 (the reference's slow one) is not in treelora's denominator: 65 / 100, not 65 / 133
    ratio = r["treelora"].pop("first_task_units_ci")
    assert r["treelora"] == {"seeds": [0, 1], "seconds": 0.65, "first_task_units": round(0.6 / 1.1, 3)}
    assert ratio == [0.5, 0.6]  # the seeds resampled together: 0.6 / 1.2 to 0.6 / 1.0
    assert "ewc" not in r  # no seed in common: no ratio
    assert r["per_task_lora"]["seconds"] == 1.0
