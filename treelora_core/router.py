"""Routing without a task id: task prototypes, centroids and a linear discriminant in the frozen
model's hidden space.

Each task keeps a few prototypes (k-means centroids of its training prompts' mean-pooled hidden
states, L2-normalised), the mean of those prompts, and up to `heldout` of their embeddings. The
router also keeps one pooled within-task scatter matrix (the sum over tasks of each task's
prompts' outer products about their own mean, over the prompts it does not keep for
calibration), which a new task adds to: so the discriminant
view, linear discriminant analysis with a shared covariance shrunk towards a scaled identity
(by Ledoit and Wolf's estimate of the best amount, which needs one more running sum: each
prompt's squared norm about its task's mean, squared), is updated task by task without the old
tasks' prompts. It scores an input by the
log-likelihood of each task's Gaussian, up to a constant: x P m - m P m / 2, with P the shrunk
covariance's inverse. Where the tasks share large directions (a template, a topic) and differ
along small ones, it weighs the small ones by how little they vary within a task, which nearest
prototypes cannot (measured on the long stream of task families: docs/benchmarks.md, Routing).

A request goes to the best task of the route view: the one of the three (prototypes, centroid,
discriminant) that routes the kept prompts best, cross-fitted (ties go to the discriminant). With
`head=True` (an option, off by default), once two tasks have kept prompts, a linear head
(`linear_head.LinearHead`, softmax regression over all kept prompts, refitted when a task is
added) is fitted; where it routes the kept prompts better than the route view does, out of fold
and by a significant margin (`HEAD_MARGIN`), a request goes to the task with the largest logit.

The confidence is a calibrated probability that the route is right (`calibration.Calibrator`),
read from the views of the input: its per-task best prototype similarities, its similarity to
each task's centroid (the mean of all its prompts: a second opinion that weighs what all of a
task's prompts share, such as an instruction or a label list, over the topic of the nearest
few), its discriminant scores and the head's logits. It is refitted whenever a task is added,
on the kept prompts, cross-fitted: each fold's prompts are scored against their own task's
prototypes, centroid and mean rebuilt without them and against the other tasks' (which never
held them), and by a head fitted without their fold; the pooled scatter never holds them. A
router with one task is always right (confidence 1); one saved before calibration existed falls
back to a softmax over per-task best similarities at a fixed temperature.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Collection
from typing import Any

import torch
import torch.nn.functional as F

from .calibration import MIN_THRESHOLD, Calibrator
from .errors import StateError
from .linear_head import LinearHead

# the head routes when, on the prompts where it and the prototypes disagree out of fold, it is
# right more often by this many standard errors (McNemar's test, about 97.5% one-sided): a head
# that only fits the kept prompts better, which may not carry to new prompts, does not route
HEAD_MARGIN = 1.96


def kmeans(x: torch.Tensor, k: int, iters: int = 20, seed: int = 0) -> torch.Tensor:
    """Spherical k-means on rows of x (N, C) -> (k, C) unit centroids."""
    k = min(k, x.shape[0])
    g = torch.Generator().manual_seed(seed)
    cent = x[torch.randperm(x.shape[0], generator=g)[:k]].clone()
    for _ in range(iters):
        assign = (x @ cent.T).argmax(1)
        for j in range(k):
            members = x[assign == j]
            if len(members):
                cent[j] = F.normalize(members.mean(0), dim=0)
    return cent


def kmeans_batched(x: torch.Tensor, k: int, iters: int = 20, seed: int = 0) -> torch.Tensor:
    """`kmeans` with each update done at once for all centroids (same start, same steps; sums
    in another order, so not bit-identical): for the cross-fitted prototypes, which are many."""
    k = min(k, x.shape[0])
    g = torch.Generator().manual_seed(seed)
    cent = x[torch.randperm(x.shape[0], generator=g)[:k]].clone()
    for _ in range(iters):
        assign = (x @ cent.T).argmax(1)
        sums = torch.zeros_like(cent).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        filled = counts > 0
        cent[filled] = F.normalize(sums[filled] / counts[filled].unsqueeze(1), dim=1)
    return cent


class PrototypeRouter:
    VIEWS = ("prototypes", "centroid", "discriminant", "linear")  # what `views` returns (linear: with a head)
    DISCRIMINANT = 2
    LINEAR = 3  # the view routes are picked from when the router's linear head beats the others

    def __init__(
        self, per_task: int = 16, temperature: float = 0.02, heldout: int = 64, folds: int = 8, head: bool = False
    ) -> None:
        self.per_task, self.temperature = per_task, temperature
        self.heldout_cap, self.folds = heldout, folds  # held-out prompts kept per task, cross-fit folds
        self.use_head = head  # fit a linear head (`linear_head`) on the kept prompts and route by it
        self.head: LinearHead | None = None
        self.head_names: list[str] = []  # the tasks of the head's columns, in order
        self.head_routes = False  # the head routes held-out prompts better than the prototypes do
        self._head_oof: torch.Tensor | None = None  # out-of-fold head logits of the kept prompts
        self.names: list[str] = []
        self.protos: list[torch.Tensor] = []  # per task (k, C), unit rows
        self.means: list[torch.Tensor] = []  # per task (C,): the mean of its unit embeddings
        self.scatter: torch.Tensor | None = None  # (C, C) float64: pooled within-task scatter
        self.scatter_n = 0  # prompts summed into it
        self.scatter_q4 = 0.0  # the sum of those prompts' |x - task mean|^4 (Ledoit-Wolf)
        self._precision: torch.Tensor | None = None  # cached inverse of the shrunk covariance
        # per task: held-out prompts' embeddings (n, C) in float16, and their score in the
        # prototype and centroid views against their own task rebuilt without them (n, 2)
        self.heldout: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        # per task: its mean rebuilt without each fold of its held-out prompts (folds, C), for
        # their own score in the discriminant view (computed with the precision of the moment)
        self.fold_means: dict[str, torch.Tensor] = {}
        self.base_view = self.DISCRIMINANT  # the view of the three that routes the kept prompts best
        self.calibrator: Calibrator | None = None
        self._stack: tuple[Any, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None  # see `_stacked`
        self._weights: tuple[torch.Tensor, ...] | None = None  # see `discriminant_scores`

    def add(self, name: str, embeddings: torch.Tensor, calibrate: bool = True) -> None:
        """Learn (or replace) a task's prototypes from its training prompts' embeddings, keep
        some of them as cross-fitted held-out prompts, and refit the calibration (`calibrate`;
        False: the caller adds many tasks and calls `calibrate()` once at the end, since a refit
        reads every task's held-out prompts against every task)."""
        x = F.normalize(embeddings.float(), dim=-1)
        cent = kmeans(x, self.per_task)
        mean = x.mean(0)
        if name in self.names:  # its earlier prompts stay in the pooled scatter: one task's share
            i = self.names.index(name)
            self.protos[i], self.means[i] = cent, mean
        else:
            self.names.append(name)
            self.protos.append(cent)
            self.means.append(mean)
        n, m = len(x), min(self.heldout_cap, len(x) // 2)
        sub = torch.randperm(n, generator=torch.Generator().manual_seed(zlib.crc32(name.encode())))[:m]
        # the pooled scatter takes the prompts the task does not keep for calibration, so that the
        # kept ones are scored by a covariance that never held them (half the prompts estimate it
        # as well as all of them: docs/benchmarks/routing-notes.md)
        fit = torch.ones(n, dtype=torch.bool)
        fit[sub] = False
        centred = (x[fit] - x[fit].mean(0)).double()
        scatter = centred.T @ centred + (self.scatter if self.scatter is not None else 0.0)
        self.scatter = scatter.float().double()  # as saved (float32): a reloaded router refits alike
        self.scatter_n += len(centred)
        self.scatter_q4 += float(centred.pow(2).sum(1).pow(2).sum())
        self._precision = None
        self.heldout.pop(name, None)
        self.fold_means.pop(name, None)
        if m:
            held = x[sub].half()
            own = torch.empty(m, 2)
            rest = []
            for fold in torch.arange(m).chunk(self.folds):
                keep = torch.ones(n, dtype=torch.bool)
                keep[sub[fold]] = False
                h = F.normalize(held[fold].float(), dim=-1)
                own[fold, 0] = (h @ kmeans_batched(x[keep], self.per_task).T).max(1).values
                rest.append(x[keep].mean(0))
                own[fold, 1] = h @ F.normalize(rest[-1], dim=0)
            self.heldout[name] = (held, own)
            self.fold_means[name] = torch.stack(rest)
        if calibrate:
            self.calibrate()

    def heldout_views(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Every task's held-out prompts as score views (each (N, tasks), each row's own task
        scored as it was cross-fitted; the linear view out of fold), and their true task
        indices (N,). The views of all prompts are computed at once, then each row's own score
        replaced: the cost grows with tasks x prompts, not tasks squared x calls."""
        kept = [(i, name) for i, name in enumerate(self.names) if name in self.heldout]
        if not kept:
            return [torch.empty(0, len(self.names))] * 3, torch.empty(0, dtype=torch.long)
        embs = [self.heldout[name][0] for _, name in kept]
        views = self.views(torch.cat(embs))[:3]
        start = 0
        for (i, name), emb in zip(kept, embs, strict=True):
            rows = torch.arange(start, start + len(emb))
            own = self.heldout[name][1]
            for v in range(2):
                views[v][rows, i] = own[:, v]
            if name in self.fold_means:  # else (saved before the discriminant): its full mean
                rest = self.fold_means[name]
                folds = torch.arange(len(emb)).chunk(len(rest))
                fold = torch.cat([torch.full((len(f),), k) for k, f in enumerate(folds)])
                views[2][rows, i] = self._discriminant(emb, rest)[torch.arange(len(emb)), fold]
            start += len(emb)
        labels = torch.cat([torch.full((len(e),), i) for (i, _), e in zip(kept, embs, strict=True)])
        if self._head_oof is not None and len(self._head_oof) == len(views[0]):
            views.append(self._head_oof)
        return views, labels

    def _fit_head(self) -> None:
        """Fit the linear head on every task's kept prompts, and its out-of-fold logits for them
        (`folds` folds, every task in every fold) for the calibration. No head below two tasks."""
        self.head, self.head_names, self._head_oof, self.head_routes = None, [], None, False
        kept = [(i, self.heldout[n][0].float()) for i, n in enumerate(self.names) if n in self.heldout]
        if not self.use_head or len(kept) < 2 or len(kept) < len(self.names):
            return
        x = torch.cat([e for _, e in kept])
        y = torch.cat([torch.full((len(e),), i) for i, e in kept])
        fold = torch.cat([torch.arange(len(e)) % self.folds for _, e in kept])
        oof = torch.empty(len(x), len(self.names))
        for k in range(self.folds):
            test = fold == k
            if test.any():
                oof[test] = LinearHead.fit(x[~test], y[~test], len(self.names)).scores(x[test])
        self.head, self.head_names, self._head_oof = LinearHead.fit(x, y, len(self.names)), list(self.names), oof

    def calibrate(self) -> None:
        """Refit the linear head, then the calibrator on the held-out prompts, routed flat (none
        with fewer than two tasks, or no held-out prompt)."""
        self._fit_head()
        views, labels = self.heldout_views()
        if len(self.names) < 2 or not len(labels):
            self.calibrator = None
            return
        right = [int((views[v].argmax(1) == labels).sum()) for v in range(3)]
        self.base_view = max(range(3), key=lambda v: (right[v], v == self.DISCRIMINANT))
        if len(views) > self.LINEAR:  # route by the head only where it beats the base view out of fold
            base, head = (views[v].argmax(1) == labels for v in (self.base_view, self.LINEAR))
            wins, losses = int((head & ~base).sum()), int((base & ~head).sum())
            self.head_routes = wins - losses > HEAD_MARGIN * math.sqrt(wins + losses)  # McNemar, one-sided
        picks = views[self.route_view].argmax(1)
        self.calibrator = Calibrator.fit(views, picks, picks == labels, first=self.route_view)

    @property
    def route_view(self) -> int:
        """The index in `views` that routes are picked from: the linear head's when it has one that
        routed the held-out prompts better than the base view, else the base view's."""
        return self.LINEAR if self.head_routes and self._head_columns() is not None else self.base_view

    def _head_columns(self) -> list[int] | None:
        if self.head is None or any(n not in self.head_names for n in self.names):
            return None
        return [self.head_names.index(n) for n in self.names]

    def views(self, embeddings: torch.Tensor) -> list[torch.Tensor]:
        """The score views the calibration reads (`VIEWS`): `scores`, `centroid_scores`,
        `discriminant_scores` and, with a head, its logits."""
        out = [self.scores(embeddings), self.centroid_scores(embeddings), self.discriminant_scores(embeddings)]
        cols = self._head_columns()
        if cols is not None:
            assert self.head is not None
            out.append(self.head.scores(embeddings, cols))
        return out

    @property
    def centroids(self) -> list[torch.Tensor]:
        """Per task (C,): its mean, L2-normalised."""
        return list(F.normalize(self._stacked()[2], dim=1))

    def centroid_scores(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N, C) -> (N, tasks): similarity to each task's centroid."""
        return F.normalize(embeddings.float(), dim=-1) @ F.normalize(self._stacked()[2], dim=1).T

    def precision(self) -> torch.Tensor:
        """(C, C): the inverse of the pooled within-task covariance shrunk towards a scaled identity
        (the identity for a router saved before the scatter was kept: nearest mean)."""
        if self._precision is None:
            c = self.means[0].shape[0]
            cov = self.scatter / max(self.scatter_n, 1) if self.scatter is not None else None
            scale = float(cov.diagonal().mean()) if cov is not None else 0.0
            if cov is None or scale <= 1e-12:  # no scatter, or one prompt per task: no spread yet
                self._precision = torch.eye(c)
            else:
                target = scale * torch.eye(c, dtype=cov.dtype)
                lam = self.shrinkage(cov, target)
                self._precision = torch.linalg.inv((1 - lam) * cov + lam * target).float()
        return self._precision

    def shrinkage(self, cov: torch.Tensor, target: torch.Tensor) -> float:
        """Ledoit and Wolf's shrinkage intensity towards `target`, from the running sums (1 for
        a router saved without them)."""
        if self.scatter_q4 <= 0:
            return 1.0
        n = self.scatter_n
        beta2 = (self.scatter_q4 / n - float((cov * cov).sum())) / n  # the noise of the estimate
        delta2 = float(((cov - target) ** 2).sum())  # its distance from the target
        return min(max(beta2 / delta2, 0.0), 1.0) if delta2 > 0 else 1.0

    def _discriminant(self, embeddings: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
        x = F.normalize(embeddings.float(), dim=-1)
        pm = means @ self.precision()
        return x @ pm.T - 0.5 * (pm * means).sum(1)

    def discriminant_scores(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N, C) -> (N, tasks): each task's linear discriminant (see the module's note); its
        weights (the means times the precision) are kept while neither changes."""
        means, precision = self._stacked()[2], self.precision()
        if self._weights is None or self._weights[0] is not means or self._weights[1] is not precision:
            pm = means @ precision
            self._weights = (means, precision, pm, 0.5 * (pm * means).sum(1))
        _, _, pm, bias = self._weights
        return F.normalize(embeddings.float(), dim=-1) @ pm.T - bias

    def confidence(self, views: list[torch.Tensor], picks: torch.Tensor) -> torch.Tensor:
        """Score `views` of N inputs and (N,) picked task indices -> (N,) probability that each
        pick is right (see the module's note)."""
        n = len(views[0])
        if len(self.names) == 1:
            return torch.ones(n, dtype=torch.float64)
        if self.calibrator is not None:
            return self.calibrator.predict(views, picks)
        probs = torch.softmax(views[0] / self.temperature, dim=1)
        return probs[torch.arange(n), picks].double()

    @property
    def threshold(self) -> float:
        """The default `low_confidence` threshold: the calibration's, or 0.5 without one."""
        return self.calibrator.threshold if self.calibrator is not None else MIN_THRESHOLD

    def calibration_json(self) -> dict[str, Any] | None:
        """The calibrator as plain data, with the names of the views its features index."""
        if self.calibrator is None:
            return None
        views = {
            "views": list(self.VIEWS),
            "base_view": self.VIEWS[self.base_view],
            "route_view": self.VIEWS[self.route_view],
        }
        return {**self.calibrator.to_json(), **views}

    def without(self, names: Collection[str]) -> PrototypeRouter:
        """A router over every task but `names` (sharing the prototypes): routing never picks
        those. It keeps this router's calibration (fitted with them among the competitors: a
        left-out task only widens the margins it used to narrow)."""
        out = PrototypeRouter(self.per_task, self.temperature, self.heldout_cap, self.folds, self.use_head)
        keep = [i for i, n in enumerate(self.names) if n not in names]
        out.names = [self.names[i] for i in keep]
        out.protos = [self.protos[i] for i in keep]
        out.means = [self.means[i] for i in keep]
        out.scatter, out.scatter_n, out.scatter_q4 = self.scatter, self.scatter_n, self.scatter_q4
        out._precision = self.precision() if self.means else None
        out.heldout = {n: v for n, v in self.heldout.items() if n in out.names}
        out.fold_means = {n: v for n, v in self.fold_means.items() if n in out.names}
        out.base_view = self.base_view
        out.head, out.head_names = self.head, self.head_names  # its columns for the kept tasks
        out.head_routes = self.head_routes
        out.calibrator = self.calibrator
        return out

    def scores(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N, C) -> (N, tasks): each task's best prototype similarity (one product with every
        prototype at once: routing among 1,000 tasks is one GEMM, not 1,000)."""
        x = F.normalize(embeddings.float(), dim=-1)
        protos, pad = self._stacked()[:2]
        sims = (x @ protos.flatten(0, 1).T).view(len(x), *pad.shape).masked_fill(pad, -math.inf)
        return sims.max(2).values

    def _stacked(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every task's prototypes (tasks, k, C) zero-padded to the most any task has, which of
        them are padding (tasks, k), and the means (tasks, C); rebuilt when a task's prototypes
        or mean is replaced."""
        key = (*self.protos, *self.means)  # the tensors themselves: replaced ones are never the same
        cached = self._stack
        if cached is None or len(cached[0]) != len(key) or any(a is not b for a, b in zip(cached[0], key, strict=True)):
            k = max(len(p) for p in self.protos)
            protos = torch.zeros(len(self.protos), k, self.protos[0].shape[1])
            pad = torch.ones(len(self.protos), k, dtype=torch.bool)
            for i, p in enumerate(self.protos):
                protos[i, : len(p)], pad[i, : len(p)] = p, False
            cached = self._stack = (key, (protos, pad, torch.stack(self.means)))
        return cached[1]

    def route(self, embeddings: torch.Tensor, nodes: list[dict] | None = None) -> list[tuple[str, float]]:
        """(task, confidence) per input: the best prototype's task, or with a tree view's `nodes`
        the leaf that `descend` reaches; confidence is `confidence()` of that pick."""
        if not self.names:
            raise StateError("the router knows no task yet")
        views = self.views(embeddings)
        v = self.route_view
        picks = [self.descend(row, nodes) if nodes is not None else int(row.argmax()) for row in views[v]]
        conf = self.confidence(views, torch.tensor(picks, dtype=torch.long))
        return [(self.names[k], float(c)) for k, c in zip(picks, conf, strict=True)]

    def descend(self, scores: torch.Tensor, nodes: list[dict]) -> int:
        """Tree routing for one input: from the top level of a tree view (`views.tree_view`
        nodes), take at each level the child whose member tasks score best on average, down to a
        leaf; -> the index of its task in `names`. scores: (tasks,) from the routing view. Nodes with
        no member among `names` (tasks this router leaves out) are never taken."""
        by_id = {n["id"]: n for n in nodes}

        def known(node_id: str) -> list[int]:
            return [self.names.index(t) for t in by_id[node_id]["members"] if t in self.names]

        level = [n["id"] for n in nodes if n["parent"] is None and known(n["id"])]
        if not level:
            return int(scores.argmax())
        while True:
            best = by_id[max(level, key=lambda i: float(scores[known(i)].mean()))]
            children = [c for c in best["children"] if known(c)]
            if best["task"] in self.names or not children:
                return self.names.index(best["task"]) if best["task"] in self.names else known(best["id"])[0]
            level = children

    def state(self) -> dict[str, torch.Tensor]:
        """Prototypes, means (the centroids are derived from them), the pooled scatter and held-out
        prompts; the calibrator is plain data
        (`calibration_json`)."""
        out = {f"proto.{n}": p for n, p in zip(self.names, self.protos, strict=True)}
        out.update({f"mean.{n}": m for n, m in zip(self.names, self.means, strict=True)})
        if self.scatter is not None:
            out["scatter"] = self.scatter.float()  # 1.3 MB at C = 576, for any number of tasks
            out["scatter_n"] = torch.tensor([self.scatter_n, self.scatter_q4], dtype=torch.float64)
        for n, (emb, own) in self.heldout.items():
            out[f"heldout.{n}"], out[f"heldout_own.{n}"] = emb, own
        out.update({f"heldout_means.{n}": m for n, m in self.fold_means.items()})
        if self.head is not None and self.head_names == self.names:
            out.update({f"head.{k}": v for k, v in self.head.state().items()})
            out["head.routes"] = torch.tensor([float(self.head_routes)])
        return out

    def load(
        self, names: list[str], tensors: dict[str, torch.Tensor], calibration: dict[str, Any] | None = None
    ) -> None:
        """From `state()` and `calibration_json()` (None: uncalibrated, as saved before calibration
        existed). Held-out prompts absent from `tensors` are simply not kept: the calibration
        still applies, and the next `add` refits it on the tasks that have some. A task saved
        without a centroid gets the mean of its prototypes; one saved without a mean, its
        centroid; a router saved without a scatter routes the discriminant view by nearest mean
        (its calibration, fitted before that view existed, reads the views it was fitted on)."""
        self.names = list(names)
        self.protos = [tensors[f"proto.{n}"].float() for n in names]
        saved_before = [  # a router saved before means: its centroid, or before centroids: its prototypes'
            tensors.get(f"centroid.{n}", F.normalize(p.mean(0), dim=0)) for n, p in zip(names, self.protos, strict=True)
        ]
        self.means = [tensors.get(f"mean.{n}", c).float() for n, c in zip(names, saved_before, strict=True)]
        self.scatter = tensors["scatter"].double() if "scatter" in tensors else None
        sums = tensors.get("scatter_n", torch.zeros(2, dtype=torch.float64))
        self.scatter_n, self.scatter_q4 = int(sums[0]), float(sums[1])
        self._precision = None
        self.heldout = {
            n: (tensors[f"heldout.{n}"], tensors[f"heldout_own.{n}"].float())
            for n in names
            if f"heldout.{n}" in tensors
        }
        self.fold_means = {n: tensors[f"heldout_means.{n}"].float() for n in names if f"heldout_means.{n}" in tensors}
        self.calibrator = Calibrator.from_json(_renamed(calibration, self.VIEWS)) if calibration else None
        base = (calibration or {}).get("base_view", "prototypes")  # saved before: prototypes routed
        self.base_view = self.VIEWS.index(base) if base in self.VIEWS[:3] else 0
        head = {k[5:]: v for k, v in tensors.items() if k.startswith("head.")}
        fits = head and head["weight"].shape[1] == len(names)  # saved with one column per task
        self.head = LinearHead.from_state(head) if fits else None  # none: saved before heads existed
        self.head_names, self._head_oof = (list(names) if fits else []), None
        self.head_routes = bool(fits and float(head.get("routes", torch.ones(1))[0]) > 0)


def _renamed(calibration: dict[str, Any], views: tuple[str, ...]) -> dict[str, Any]:
    """A saved calibration with its features' view indices read by name against `views` (a
    calibration saved before the discriminant view existed named the head's view 2)."""
    saved = calibration.get("views") or ["prototypes", "centroid", "linear"]
    features = [[views.index(saved[v]), f] for v, f in calibration["features"]]
    return {**calibration, "features": features}
