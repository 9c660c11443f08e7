"""The paper's layer-wise K-D tree of task gradients and its lower-confidence-bound search.

Tasks are leaves. An internal node at depth d splits its tasks on layer d % L: the members whose
layer-d gradient is within the median L1 distance of their mean go left, the others right. New
tasks are inserted depth-first: they follow the splits down to a leaf, which becomes a node with
two children. Every node also keeps its members' mean signature (`proto`) and, per layer, an
upper bound on their L1 distance to it (`radius`).

Search (Eq. 2, our reading of the internal-node rule): a node's LCB is
    mean_t L1(query_t, proto) - radius - c * scale * sqrt(log t / n)
i.e. the smallest distance any member could have (triangle inequality: the node's spread delta is
its radius) minus the bandit bonus for noisy queries (the mean runs over the steps at which the
node was compared; `scale` is the running mean distance so that c is unit-free). A pull is a
best-first descent: expand the node of smallest LCB until a leaf's distance is no larger than
every LCB left on the frontier. With exact queries this is exact nearest-neighbour search, and
on clustered tasks it compares O(log N) nodes instead of N.
"""

from __future__ import annotations

import heapq
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .errors import StateError

Signature = list[torch.Tensor]  # one tensor per layer
BALANCE = 0.75  # a subtree is rebuilt when one child holds more than this share of its tasks
LayerDist = Callable[[Signature], float]  # distance from the query to a signature


def l1(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().sum())


@dataclass(eq=False)
class KDNode:
    tasks: list[int]
    proto: Signature
    radius: list[float]
    layer: int = 0
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

    def _node(self, tasks: list[int]) -> KDNode:
        sigs = [self.signatures[t] for t in tasks]
        proto = [torch.stack([s[i].float() for s in sigs]).mean(0) for i in range(self.n_layers)]
        radius = [max(l1(s[i], proto[i]) for s in sigs) for i in range(self.n_layers)]
        return KDNode(list(tasks), proto, radius)

    def _split(self, node: KDNode, depth: int) -> None:
        if len(node.tasks) < 2:
            return
        layer = depth % self.n_layers
        dists = [l1(self.signatures[t][layer], node.proto[layer]) for t in node.tasks]
        thr = statistics.median(dists)
        left = [t for t, d in zip(node.tasks, dists, strict=True) if d <= thr]
        right = [t for t, d in zip(node.tasks, dists, strict=True) if d > thr]
        if not right:  # all equally far: split by order so that the tree stays a tree
            left, right = node.tasks[: len(node.tasks) // 2], node.tasks[len(node.tasks) // 2 :]
        node.layer, node.threshold = layer, thr
        node.left, node.right = self._node(left), self._node(right)
        self._split(node.left, depth + 1)
        self._split(node.right, depth + 1)

    def insert(self, sig: Signature) -> int:
        """Depth-first insertion of a new task; returns its index."""
        if len(sig) != self.n_layers:
            raise StateError(f"signature has {len(sig)} layers, tree has {self.n_layers}")
        idx = len(self.signatures)
        self.signatures.append(sig)
        if self.root is None:
            self.root = self._node([idx])
            return idx
        node, depth = self.root, 0
        while True:
            n = len(node.tasks)
            for i in range(self.n_layers):  # running mean; radius stays an upper bound
                new = (node.proto[i] * n + sig[i].float()) / (n + 1)
                node.radius[i] = max(node.radius[i] + l1(new, node.proto[i]), l1(sig[i], new))
                node.proto[i] = new
            node.tasks.append(idx)
            if node.is_leaf:
                break
            assert node.left is not None and node.right is not None
            go_left = l1(sig[node.layer], node.left.proto[node.layer]) <= l1(
                sig[node.layer], node.right.proto[node.layer]
            )
            child = node.left if go_left else node.right
            if len(node.tasks) >= 4 and len(child.tasks) + 1 > BALANCE * len(node.tasks):
                break  # lopsided: rebuild this subtree with median splits (keeps depth O(log N))
            node, depth = child, depth + 1
        self._split(node, depth)
        return idx

    def depth(self) -> int:
        def d(n: KDNode | None) -> int:
            return 0 if n is None or n.is_leaf else 1 + max(d(n.left), d(n.right))

        return d(self.root)

    def nearest(self, dist: LayerDist) -> int:
        """Brute force: the task with the smallest distance (N comparisons)."""
        return min(range(len(self.signatures)), key=lambda k: dist(self.signatures[k]))


@dataclass
class _Stats:
    total: float = 0.0
    count: int = 0


@dataclass
class LCBSearch:
    """Bandit search on a GradientKDTree for one layer (or all, through `radius_of`).

    Keep one per layer while a task trains and call `pull` once per step with that step's
    distance function; `comparisons` counts signature comparisons.
    """

    tree: GradientKDTree
    c: float = 2.0
    layer: int | None = None  # the layer whose radius bounds the distance; None: sum of all
    max_comparisons: int | None = None  # stop a pull early (returns the best leaf so far)
    stats: dict[int, _Stats] = field(default_factory=dict)
    t: int = 0
    comparisons: int = 0
    _scale: float = 0.0
    _leaf: dict[int, _Stats] = field(default_factory=dict)

    def _radius(self, node: KDNode) -> float:
        return sum(node.radius) if self.layer is None else node.radius[self.layer]

    def _lcb(self, node: KDNode, dist: LayerDist) -> tuple[float, float]:
        d = dist(node.proto)
        self.comparisons += 1
        s = self.stats.setdefault(id(node), _Stats())
        s.total, s.count = s.total + d, s.count + 1
        mean = s.total / s.count
        self._scale += (d - self._scale) / max(self.comparisons, 1)
        bonus = self.c * self._scale * math.sqrt(math.log(max(self.t, 2)) / s.count) if self.t > 1 else 0.0
        radius = 0.0 if node.is_leaf else self._radius(node)
        return mean - radius - bonus, mean

    def pull(self, dist: LayerDist) -> int:
        """One best-first descent for this step's query; returns the best task seen so far."""
        if self.tree.root is None:
            raise StateError("empty tree")
        self.t += 1
        start = self.comparisons
        frontier = [(self._lcb(self.tree.root, dist)[0], 0, self.tree.root)]
        best_leaf, best_d, tie = -1, math.inf, 1
        while frontier and frontier[0][0] < best_d:
            if self.max_comparisons is not None and self.comparisons - start >= self.max_comparisons:
                break
            _, _, node = heapq.heappop(frontier)
            if node.is_leaf:
                task = node.tasks[0]
                mean = self.stats[id(node)].total / self.stats[id(node)].count
                self._leaf[task] = self.stats[id(node)]
                if mean < best_d:
                    best_leaf, best_d = task, mean
                continue
            for child in (node.left, node.right):
                assert child is not None
                lcb, _ = self._lcb(child, dist)
                heapq.heappush(frontier, (lcb, tie, child))
                tie += 1
        if best_leaf < 0:  # budget ran out before any leaf: take the most promising subtree's first
            best_leaf = frontier[0][2].tasks[0]
        return best_leaf

    def search(self, dist: LayerDist, pulls: int = 1) -> int:
        out = -1
        for _ in range(pulls):
            out = self.pull(dist)
        return out
