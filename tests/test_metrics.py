from __future__ import annotations

import pytest

from treelora_core.metrics import exact_match, rouge_l, score, summarize


def test_exact_match_rules() -> None:
    assert exact_match(" animal", "animal") == 1.0
    assert exact_match("B. hawkish", "B") == 1.0
    assert exact_match("6.0", "6") == 1.0
    assert exact_match("plant", "animal") == 0.0
    assert exact_match("Because", "B") == 0.0


def test_rouge_l() -> None:
    assert rouge_l("the cat sat", "the cat sat") == 1.0
    assert rouge_l("", "x") == 0.0
    assert rouge_l("a b c d", "a x c y") == pytest.approx(0.5)
    assert score(["a b", "c"], ["a b", "d"], "rouge_l") == pytest.approx(50.0)


def test_summary_signs() -> None:
    R = [[80.0], [60.0, 70.0], [50.0, 70.0, 90.0]]
    s = summarize(R, zero_shot=[10.0, 20.0, 30.0])
    assert s["op"] == pytest.approx(70.0)
    assert s["bwt_gem"] == pytest.approx(((50 - 80) + (70 - 70)) / 2)
    assert s["bwt_paper"] == pytest.approx(-s["bwt_gem"])  # type: ignore[operator]
    assert s["forgetting"] == pytest.approx((30 + 0) / 2)
    assert s["fwt"] is None  # R has no scores on tasks before training them
    full = [[80.0, 25.0, 31.0], [60.0, 70.0, 35.0], [50.0, 70.0, 90.0]]
    assert summarize(full, zero_shot=[10.0, 20.0, 30.0])["fwt"] == pytest.approx((5 + 5) / 2)
    with pytest.raises(ValueError):
        summarize([[None]])
