"""The paper's layer-wise K-D tree of task gradients and its lower-confidence-bound search.

Tasks are leaves. An internal node at depth d splits its tasks on layer d % L: the center is the
members' mean gradient at that layer, the threshold the median L1 distance to it (tasks at or
below go left). New tasks are inserted depth-first: they follow the splits down to a leaf, which
becomes a node with two children.

Search (Eq. 2): every node keeps the distances observed through it; a node's LCB is its mean
minus c * scale * sqrt(log t / n) minus its spread delta (half the range of what was seen under it;
this is our reading of the internal-node rule: it favours subtrees whose members are far apart
and so might hide a closer task). Unvisited children come first. One pull descends by minimum
LCB (O(depth)), compares the query with one leaf, and updates the path. `scale` is the running
mean distance, so that c is unit-free (the paper's bonus assumes distances in [0, 1]).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

Signature = list[torch.Tensor]  # one tensor per layer


def l1(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().sum())


@dataclass
class KDNode:
    tasks: list[int]
    layer: int = 0
    center: torch.Tensor | None = None
    threshold: float = 0.0
    left: KDNode | None = None
    right: KDNode | None = None

    @property
    def is_leaf(self) -> bool:
        return self.left is None


class GradientKDTree:
    def __init__(self, n_layers: int) -> None:
        self.n_layers = n_layers
        self.signatures: list[Signature] = []
        self.root: KDNode | None = None

    def __len__(self) -> int:
        return len(self.signatures)

    def _split(self, node: KDNode, depth: int) -> None:
        if len(node.tasks) < 2:
            return
        layer = depth % self.n_layers
        center = torch.stack([self.signatures[t][layer].float() for t in node.tasks]).mean(0)
        dists = [l1(self.signatures[t][layer], center) for t in node.tasks]
        thr = statistics.median(dists)
        left = [t for t, d in zip(node.tasks, dists, strict=True) if d <= thr]
        right = [t for t, d in zip(node.tasks, dists, strict=True) if d > thr]
        if not right:  # all equally far: split by order so that the tree stays a tree
            left, right = node.tasks[: len(node.tasks) // 2], node.tasks[len(node.tasks) // 2:]
        node.layer, node.center, node.threshold = layer, center, thr
        node.left, node.right = KDNode(left), KDNode(right)
        self._split(node.left, depth + 1)
        self._split(node.right, depth + 1)

    def insert(self, sig: Signature) -> int:
        """Depth-first insertion of a new task; returns its index."""
        if len(sig) != self.n_layers:
            raise ValueError(f"signature has {len(sig)} layers, tree has {self.n_layers}")
        idx = len(self.signatures)
        self.signatures.append(sig)
        if self.root is None:
            self.root = KDNode([idx])
            return idx
        node, depth = self.root, 0
        while not node.is_leaf:
            node.tasks.append(idx)
            assert node.center is not None and node.left is not None and node.right is not None
            go_left = l1(sig[node.layer], node.center) <= node.threshold
            node, depth = (node.left if go_left else node.right), depth + 1
        node.tasks.append(idx)
        self._split(node, depth)
        return idx

    def depth(self) -> int:
        def d(n: KDNode | None) -> int:
            return 0 if n is None or n.is_leaf else 1 + max(d(n.left), d(n.right))
        return d(self.root)

    def nearest(self, dist: Callable[[int], float]) -> int:
        """Brute force: the task with the smallest distance (N comparisons)."""
        return min(range(len(self.signatures)), key=dist)


@dataclass
class _Stats:
    total: float = 0.0
    count: int = 0
    lo: float = math.inf
    hi: float = -math.inf


@dataclass
class LCBSearch:
    """Bandit search on a GradientKDTree; keep one per layer and call `pull` once per step."""

    tree: GradientKDTree
    c: float = 2.0
    stats: dict[int, _Stats] = field(default_factory=dict)  # id(node) -> stats
    leaf_means: dict[int, _Stats] = field(default_factory=dict)  # task -> stats
    t: int = 0
    comparisons: int = 0
    _scale: float = 0.0

    def _lcb(self, node: KDNode) -> float:
        s = self.stats.get(id(node))
        if s is None or s.count == 0:
            return -math.inf
        bonus = self.c * self._scale * math.sqrt(math.log(max(self.t, 2)) / s.count)
        delta = (s.hi - s.lo) / 2 if not node.is_leaf else 0.0
        return s.total / s.count - bonus - delta

    def pull(self, dist: Callable[[int], float]) -> int:
        """One descent by minimum LCB, one comparison at the leaf; returns the best task so far."""
        if self.tree.root is None:
            raise ValueError("empty tree")
        self.t += 1
        node, path = self.tree.root, [self.tree.root]
        while not node.is_leaf:
            assert node.left is not None and node.right is not None
            node = min((node.left, node.right), key=self._lcb)
            path.append(node)
        task = node.tasks[0]
        d = dist(task)
        self.comparisons += 1
        self._scale += (d - self._scale) / self.t
        for n in path:
            s = self.stats.setdefault(id(n), _Stats())
            s.total, s.count, s.lo, s.hi = s.total + d, s.count + 1, min(s.lo, d), max(s.hi, d)
        ls = self.leaf_means.setdefault(task, _Stats())
        ls.total, ls.count = ls.total + d, ls.count + 1
        return self.best()

    def best(self) -> int:
        return min(self.leaf_means, key=lambda k: self.leaf_means[k].total / self.leaf_means[k].count)

    def search(self, dist: Callable[[int], float], pulls: int) -> int:
        for _ in range(pulls):
            self.pull(dist)
        return self.best()
