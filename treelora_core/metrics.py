"""Scores (percent, 0-100) and continual-learning metrics from one accuracy matrix R.

R[t][i] is the score on task i after training task t (rows in learning order); an optional
zero-shot row z[i] (before any training) gives forward transfer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .errors import StateError


def _norm(s: str) -> str:
    s = s.strip().split("\n")[0].strip().lower()
    return re.sub(r"[\s.。,;:!]+$", "", s)


def exact_match(pred: str, ref: str) -> float:
    """Normalised string equality; numbers compare by value; 'B. hawkish' matches 'B'."""
    p, r = _norm(pred), _norm(ref)
    if p == r:
        return 1.0
    try:
        return float(abs(float(p) - float(r)) < 1e-6)
    except ValueError:
        pass
    if len(r) == 1 and r.isalpha():  # a letter answer: the first letter of the prediction decides
        m = re.match(r"\(?([a-z])\b", p)
        return float(m is not None and m.group(1) == r)
    return 0.0


def rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F1 over whitespace tokens (longest common subsequence)."""
    a, b = pred.split(), ref.split()
    if not a or not b:
        return 0.0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


def example_scores(preds: Sequence[str], refs: Sequence[str], metric: str) -> list[float]:
    """Per-example scores in percent (0 or 100 for exact match), for intervals over examples."""
    fn = exact_match if metric == "exact_match" else rouge_l
    return [100.0 * fn(p, r) for p, r in zip(preds, refs, strict=True)]


def score(preds: Sequence[str], refs: Sequence[str], metric: str) -> float:
    return sum(example_scores(preds, refs, metric)) / max(len(refs), 1)


def summarize(R: Sequence[Sequence[float | None]], zero_shot: Sequence[float] | None = None) -> dict[str, float | None]:
    """OP, BWT (GEM sign: negative = forgetting; paper sign: positive = forgetting), forgetting
    (mean over old tasks of the largest drop from any earlier score to the final one), FWT."""
    T = len(R)

    def r(t: int, i: int) -> float:
        v = R[t][i]
        if v is None:
            raise StateError(f"R[{t}][{i}] is missing: every task must be scored after training it")
        return v

    op = sum(r(T - 1, i) for i in range(T)) / T
    if T > 1:
        bwt = sum(r(T - 1, i) - r(i, i) for i in range(T - 1)) / (T - 1)
        forg = sum(max(r(t, i) for t in range(i, T - 1)) - r(T - 1, i) for i in range(T - 1)) / (T - 1)
    else:
        bwt = forg = 0.0
    fwt = None  # needs scores on tasks not yet trained (R[i-1][i]) and a zero-shot row
    if zero_shot is not None and T > 1 and all(i < len(R[i - 1]) and R[i - 1][i] is not None for i in range(1, T)):
        fwt = sum(r(i - 1, i) - zero_shot[i] for i in range(1, T)) / (T - 1)
    return {"op": op, "bwt_gem": bwt, "bwt_paper": -bwt, "forgetting": forg, "fwt": fwt}
