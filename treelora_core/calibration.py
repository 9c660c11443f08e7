"""Routing confidence as a calibrated probability that the route is right.

A `Calibrator` reads a router's score matrices (one or more views of the same inputs x tasks,
larger = more alike; one of them is the one the router picks by) and the task each input was routed
to, and gives the probability that the route is right. It is fitted on held-out prompts whose
task is known (a router cross-fits them: see `router.PrototypeRouter`), so nothing in it depends
on how the scores were made: any router's scores can be calibrated.

Features of a row in a view, relative to the picked task p: its margin over the best other task
(s_p - max_{j != p} s_j, negative when p is not that view's best task, as tree descent or a
second view may say), its own score s_p, its score above the row's mean, and the squares of the
first two. A logistic regression (Platt scaling, with Platt's smoothed targets so that a few or no
wrong routes give a finite fit) maps them to a probability. Which features it uses is chosen by
cross-validated log loss among nested sets: the routing view's margin alone, every view's margin,
every view's first three, all five, keeping at least `EVENTS_PER_FEATURE` wrong routes (or right
ones, if fewer) per feature. The reported figures (expected calibration error, AUROC)
are those of the cross-validated predictions, so they are figures on prompts the calibrator was
not fitted on.

The default threshold for `low_confidence`: the larger of 0.5 (a route more likely wrong than
right is always flagged) and the confidence below which `RIGHT_FLAGGED` of the right held-out
routes fall (an easy router, whose right routes are almost all near 1, flags the unusual ones).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

FEATURES = ("margin", "score", "above_mean", "margin_sq", "score_sq")  # of one view, in `pick_features`
Feature = tuple[int, str]  # (view, one of FEATURES)
RIGHT_FLAGGED = 0.03  # share of right held-out routes below the default threshold (measured: docs/benchmarks.md)
MIN_THRESHOLD = 0.5  # a route below this is more likely wrong than right: always flagged
FOLDS = 5
EVENTS_PER_FEATURE = 5
RIDGE = 1e-3  # on standardised coefficients: keeps the Newton steps finite on separable rows


def pick_features(scores: torch.Tensor, picks: torch.Tensor) -> torch.Tensor:
    """(N, T) scores and (N,) picked task indices -> (N, len(FEATURES)) float64 features."""
    s = scores.double()
    rows = torch.arange(len(s))
    own = s[rows, picks]
    if s.shape[1] > 1:
        others = s.clone()
        others[rows, picks] = -math.inf
        margin = own - others.max(1).values
    else:
        margin = torch.ones_like(own)
    out = torch.stack([margin, own, own - s.mean(1), margin * margin, own * own], dim=1)
    return out


def feature_sets(n_views: int, max_features: int | None = None, first: int = 0) -> list[tuple[Feature, ...]]:
    """The nested candidate feature sets, simplest first (see the module's note), of at most
    `max_features` features (the first, view `first`'s margin, always stays)."""
    out: list[tuple[Feature, ...]] = [((first, "margin"),)]
    if n_views > 1:
        out.append(tuple((v, "margin") for v in range(n_views)))
    out.append(tuple((v, f) for v in range(n_views) for f in FEATURES[:3]))
    out.append(tuple((v, f) for v in range(n_views) for f in FEATURES))
    return [f for i, f in enumerate(out) if i == 0 or max_features is None or len(f) <= max_features]


def view_features(views: Sequence[torch.Tensor], picks: torch.Tensor) -> torch.Tensor:
    """Every view's `pick_features`, side by side: (N, views * len(FEATURES))."""
    return torch.cat([pick_features(s, picks) for s in views], dim=1)


def ece(probs: torch.Tensor, right: torch.Tensor, bins: int = 10) -> float:
    """Expected calibration error: the count-weighted gap between mean confidence and accuracy
    over `bins` equal-width confidence bins."""
    p, r = probs.double(), right.double()
    idx = (p * bins).long().clamp(0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += float(m.double().mean()) * abs(float(p[m].mean()) - float(r[m].mean()))
    return total


def auroc(conf: torch.Tensor, right: torch.Tensor) -> float | None:
    """Area under the ROC curve of `conf` for right (positive) against wrong routes (ties count
    half); None without both kinds."""
    r = right.bool()
    n1, n0 = int(r.sum()), int((~r).sum())
    if n1 == 0 or n0 == 0:
        return None
    c = conf.double()
    order = torch.argsort(c, stable=True)
    ranks = torch.empty(len(c), dtype=torch.float64)
    ranks[order] = torch.arange(1, len(c) + 1, dtype=torch.float64)
    uniq, inv = torch.unique(c, return_inverse=True)
    sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, ranks)
    counts = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, torch.ones_like(ranks))
    ranks = (sums / counts)[inv]  # average rank within ties
    return (float(ranks[r].sum()) - n1 * (n1 + 1) / 2) / (n1 * n0)


def _logistic(x: torch.Tensor, targets: torch.Tensor, iters: int = 50) -> torch.Tensor:
    """Weights (d + 1,) of a ridge-logistic regression on x (N, d) with soft targets (Newton's
    method with step halving; the last weight is the intercept)."""
    X = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
    reg = torch.full((X.shape[1],), RIDGE, dtype=torch.float64)
    reg[-1] = 0.0

    def loss(w: torch.Tensor) -> float:
        z = X @ w
        return float((torch.nn.functional.softplus(z) - targets * z).sum() + 0.5 * (reg * w * w).sum())

    w = torch.zeros(X.shape[1], dtype=torch.float64)
    w[-1] = math.log(float(targets.mean()) / max(1 - float(targets.mean()), 1e-12))
    current = loss(w)
    for _ in range(iters):
        p = torch.sigmoid(X @ w)
        grad = X.T @ (p - targets) + reg * w
        hess = (X * (p * (1 - p)).unsqueeze(1)).T @ X + torch.diag(reg) + 1e-9 * torch.eye(X.shape[1])
        step = torch.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-6:
            trial = loss(w - t * step)
            if trial <= current:
                break
            t /= 2
        w, improved = w - t * step, current - trial
        current = trial
        if improved < 1e-10 * max(1.0, abs(current)):
            break
    return w


@dataclass
class Calibrator:
    """A fitted map from (score views, picks) to the probability that each route is right."""

    features: tuple[Feature, ...] = ()
    mean: list[float] = field(default_factory=list)  # of each feature on the fitting rows
    std: list[float] = field(default_factory=list)
    coef: list[float] = field(default_factory=list)  # per standardised feature, then the intercept
    threshold: float = MIN_THRESHOLD
    figures: dict[str, Any] = field(default_factory=dict)  # held-out prompts, wrong routes, ECE, AUROC

    @classmethod
    def fit(
        cls,
        views: Sequence[torch.Tensor],
        picks: torch.Tensor,
        right: torch.Tensor,
        seed: int = 0,
        candidates: Sequence[tuple[Feature, ...]] | None = None,
        first: int = 0,
    ) -> Calibrator:
        """Fit on held-out rows: score `views` (each (N, T)), the task each row was routed to
        (N,), whether that was its true task (N,). `candidates`: the feature sets to choose from
        (default: `feature_sets`, as many features as the wrong routes allow, the simplest being
        the margin of view `first`: the one the routes were picked from)."""
        feats = view_features(views, picks)
        right = right.bool()
        n, wrong = len(right), int((~right).sum())
        if not 0 < wrong < n:
            candidates = [()]  # one kind only: a constant
        elif candidates is None:  # at least EVENTS_PER_FEATURE of the rarer outcome per feature
            candidates = feature_sets(len(views), min(wrong, n - wrong) // EVENTS_PER_FEATURE, first)
        folds = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) % FOLDS
        best: tuple[float, tuple[Feature, ...], torch.Tensor] | None = None
        for names in candidates:
            oof = torch.empty(n, dtype=torch.float64)
            for k in range(FOLDS):
                test = folds == k
                if test.any():
                    oof[test] = cls._fit(feats[~test], right[~test], names).predict_features(feats[test])
            p = oof.clamp(1e-6, 1 - 1e-6)
            nll = -float((right * p.log() + (~right) * (1 - p).log()).mean())
            if best is None or nll < best[0] - 1e-9:  # ties keep the simpler set
                best = (nll, names, oof)
        assert best is not None
        nll, names, oof = best
        cal = cls._fit(feats, right, names)
        fitted = cal.predict_features(feats)
        right_conf = torch.sort(fitted[right]).values
        quantile = float(right_conf[int(RIGHT_FLAGGED * (len(right_conf) - 1))]) if len(right_conf) else 1.0
        cal.threshold = max(MIN_THRESHOLD, quantile)
        a, low = auroc(oof, right), oof < cal.threshold
        cal.figures = {
            "held_out_prompts": n,
            "wrong_routes": wrong,
            "accuracy": round(1 - wrong / max(n, 1), 4),
            "ece": round(ece(oof, right), 4),
            "auroc": None if a is None else round(a, 4),
            "log_loss": round(nll, 4),
            "low_confidence_right": round(float(low[right].double().mean()), 4) if n > wrong else None,
            "low_confidence_wrong": round(float(low[~right].double().mean()), 4) if wrong else None,
        }
        return cal

    @classmethod
    def _fit(cls, feats: torch.Tensor, right: torch.Tensor, names: tuple[Feature, ...]) -> Calibrator:
        x = feats[:, _columns(names)]
        mean, std = (x.mean(0), x.std(0, correction=0)) if names else (torch.zeros(0), torch.ones(0))
        std = torch.where(std > 1e-12, std, torch.ones_like(std))
        n_pos, n_neg = int(right.sum()), int((~right).sum())
        targets = torch.where(right, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2)).double()  # Platt's targets
        w = _logistic((x - mean) / std, targets)
        if names and not bool(torch.isfinite(w).all()):  # never seen; a constant is still a calibration
            return cls._fit(feats, right, ())
        return cls(tuple(names), mean.tolist(), std.tolist(), w.tolist())

    def predict_features(self, feats: torch.Tensor) -> torch.Tensor:
        x = feats[:, _columns(self.features)]
        x = (x - torch.tensor(self.mean, dtype=torch.float64)) / torch.tensor(self.std, dtype=torch.float64)
        w = torch.tensor(self.coef, dtype=torch.float64)
        return torch.sigmoid(x @ w[:-1] + w[-1])

    def predict(self, views: Sequence[torch.Tensor], picks: torch.Tensor) -> torch.Tensor:
        """Score `views` (each (N, T)) and (N,) picked task indices -> (N,) float64
        probabilities that each route is right. Views the calibration does not use may be
        missing at the end."""
        n_views = 1 + max((v for v, _ in self.features), default=0)
        return self.predict_features(view_features(views[:n_views], picks))

    def to_json(self) -> dict[str, Any]:
        return {
            "features": [[v, f] for v, f in self.features],
            "mean": self.mean,
            "std": self.std,
            "coef": self.coef,
            "threshold": self.threshold,
            "figures": self.figures,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Calibrator:
        return cls(
            tuple((int(v), str(f)) for v, f in d["features"]),
            list(d["mean"]),
            list(d["std"]),
            list(d["coef"]),
            float(d["threshold"]),
            dict(d["figures"]),
        )


def _columns(names: Sequence[Feature]) -> list[int]:
    """Columns of `view_features` output holding `names`."""
    return [v * len(FEATURES) + FEATURES.index(f) for v, f in names]
