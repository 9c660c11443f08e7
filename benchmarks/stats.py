"""Intervals for benchmark claims: a paired bootstrap over seeds and test examples.

Every method of a stream is scored on the same test examples, so one resample (which seeds,
which examples of each task) is applied to all methods at once: the interval of a difference
between two methods comes from the same resamples (paired), which is what "beats" needs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

# X[s, t, i, e]: per-example score (percent) on task i after training task t, seed s, example e;
# NaN where t < i (a task not yet trained).
Scores = np.ndarray


def op_and_forgetting(x: Scores) -> tuple[np.ndarray, np.ndarray]:
    """Per seed: OP (mean final score) and forgetting (mean over old tasks of the largest drop
    from an earlier score to the final one). x: (S, T, T, n) -> (S,), (S,)."""
    T = x.shape[1]
    final = np.nanmean(x[:, T - 1], axis=-1)  # (S, T): the last row scores every task
    op = final.mean(axis=1)
    if T == 1:
        return op, np.zeros_like(op)
    drops = [np.nanmean(x[:, i : T - 1, i], axis=-1).max(axis=1) - final[:, i] for i in range(T - 1)]
    return op, np.mean(drops, axis=0)


def resamples(n_seeds: int, n_tasks: int, n_examples: int | list[int], b: int = 1000, seed: int = 0) -> list[tuple]:
    """`b` (seed indices (S,), example indices per task (T, n)) drawn with replacement. With a
    count per task (tasks with fewer test examples, NaN-padded to the longest), task i draws its
    own n_i examples and keeps pointing its padding at the NaN slots, which the statistics skip."""
    rng = np.random.default_rng(seed)
    if isinstance(n_examples, int) or len(set(n_examples)) == 1:
        n = n_examples if isinstance(n_examples, int) else n_examples[0]
        return [(rng.integers(0, n_seeds, n_seeds), rng.integers(0, n, (n_tasks, n))) for _ in range(b)]
    n_max = max(n_examples)
    pads = [np.arange(k, n_max) for k in n_examples]
    out = []
    for _ in range(b):
        ex = np.stack([np.concatenate([rng.integers(0, k, k), pad]) for k, pad in zip(n_examples, pads, strict=True)])
        out.append((rng.integers(0, n_seeds, n_seeds), ex))
    return out


def _take(x: Scores, seeds: np.ndarray, ex: np.ndarray) -> Scores:
    x = x[seeds]  # (S, T, T, n)
    idx = np.broadcast_to(ex[None, None, :, :], x.shape)  # same examples of task i in every row t
    return np.take_along_axis(x, idx, axis=-1)


def bootstrap(
    stat: Callable[[Scores], float], x: Scores, draws: list[tuple], level: float = 0.95
) -> tuple[float, list[float]]:
    """(point estimate, [lo, hi]) of `stat` over the paired resamples."""
    vals = np.array([stat(_take(x, s, e)) for s, e in draws])
    lo, hi = np.percentile(vals, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(stat(x)), [round(float(lo), 2), round(float(hi), 2)]


def bootstrap_diff(
    stat: Callable[[Scores], float], a: Scores, b: Scores, draws: list[tuple], level: float = 0.95
) -> tuple[float, list[float]]:
    """(stat(a) - stat(b), [lo, hi]) with the same resample applied to both (paired)."""
    vals = np.array([stat(_take(a, s, e)) - stat(_take(b, s, e)) for s, e in draws])
    lo, hi = np.percentile(vals, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(stat(a) - stat(b)), [round(float(lo), 2), round(float(hi), 2)]


def mean_ci(values: np.ndarray, b: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, list[float]]:
    """Mean of seconds (S, T) with a bootstrap interval over seeds and tasks."""
    rng = np.random.default_rng(seed)
    s, t = values.shape
    vals = [values[rng.integers(0, s, s)][:, rng.integers(0, t, t)].mean() for _ in range(b)]
    lo, hi = np.percentile(vals, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(values.mean()), [round(float(lo), 2), round(float(hi), 2)]


def paired_interval(
    a: np.ndarray, b: np.ndarray, stat: Callable[[np.ndarray, np.ndarray], float], b_draws: int = 1000, seed: int = 0
) -> list[float]:
    """95% bootstrap interval of stat(a, b) for values paired by position (seeds or items): the
    same resample of positions for both."""
    rng = np.random.default_rng(seed)
    vals = [stat(a[d], b[d]) for d in (rng.integers(0, len(a), len(a)) for _ in range(b_draws))]
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return [float(lo), float(hi)]


def ratio_ci(a: np.ndarray, b: np.ndarray) -> list[float]:
    """Interval of mean(a) / mean(b) for values paired by seed (with a handful of seeds it is
    wide, which is the point)."""
    return [round(v, 3) for v in paired_interval(a, b, lambda x, y: x.mean() / y.mean())]


def bwt_stat(x: Scores) -> float:
    """BWT in GEM's sign (negative = forgetting): the mean over old tasks of the final score minus
    the score just after learning the task, averaged over seeds. NaN padding (a task with fewer
    test examples) is skipped."""
    T = x.shape[1]
    if T == 1:
        return 0.0
    final = np.nanmean(x[:, T - 1, : T - 1], axis=-1)  # (S, T-1)
    diag = np.nanmean(x[:, np.arange(T - 1), np.arange(T - 1)], axis=-1)
    return float((final - diag).mean())


def op_stat(x: Scores) -> float:
    return float(op_and_forgetting(x)[0].mean())


def forgetting_stat(x: Scores) -> float:
    return float(op_and_forgetting(x)[1].mean())


def verdict(diff_ci: list[float], higher_is_better: bool = True) -> str:
    """'beats', 'loses' or 'tie' from the interval of a paired difference (a minus b)."""
    lo, hi = diff_ci
    if lo > 0:
        return "beats" if higher_is_better else "loses"
    if hi < 0:
        return "loses" if higher_is_better else "beats"
    return "tie"


def adjusted_rand(a: list, b: list) -> float:
    """Adjusted Rand index of two labelings of the same items (1: identical groupings, about 0:
    as similar as chance)."""
    from math import comb

    pairs: dict[tuple, int] = {}
    for x, y in zip(a, b, strict=True):
        pairs[(x, y)] = pairs.get((x, y), 0) + 1
    rows: dict = {}
    cols: dict = {}
    for (x, y), k in pairs.items():
        rows[x] = rows.get(x, 0) + k
        cols[y] = cols.get(y, 0) + k
    index = sum(comb(k, 2) for k in pairs.values())
    sum_rows, sum_cols = sum(comb(k, 2) for k in rows.values()), sum(comb(k, 2) for k in cols.values())
    expected = sum_rows * sum_cols / comb(len(a), 2)
    top = (sum_rows + sum_cols) / 2
    return 1.0 if top == expected else (index - expected) / (top - expected)


def paired_rate_diff(a: np.ndarray, b: np.ndarray, b_draws: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Percentage points of a's hit rate minus b's over the same items, with a 95% bootstrap
    interval (items resampled, both rates from the same draw) and its verdict."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)

    def points(x: np.ndarray, y: np.ndarray) -> float:
        return 100 * (x.mean() - y.mean())

    ci = [round(v, 2) for v in paired_interval(a, b, points, b_draws, seed)]
    return {"diff": round(float(100 * (a.mean() - b.mean())), 2), "ci": ci, "verdict": verdict(ci)}
