"""`treelora`: a tree of layer-wise adapters. A new task descends the tree with a lower-confidence-
bound bandit over probe-gradient signatures, shares its relative's blocks while they are similar
enough, and trains only its own branch (earlier blocks frozen, so old tasks never change)."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..adapter_tree import ROOT, AdapterTree
from ..models import Encoded
from ..signatures import Prober, block_cosines, depth_weights, similarity
from .base import Path, Strategy, TrainSetup

MIN_PULLS = 1  # one minibatch finds the nearest task for most tasks; LCB asks for more on close calls
WARM_THRESHOLD = 0.3  # below this overall similarity a relative is no better than a fresh start


class TreeLoRA(Strategy):
    name = "treelora"
    needs_task_id = True

    def __init__(self, learner: Any) -> None:
        super().__init__(learner)
        self.tc = learner.cfg.tree
        self.tree = AdapterTree(0, self.n_blocks)
        self.signatures: dict[str, torch.Tensor] = {}  # task -> (blocks, dim) fp16
        self.prober = Prober(learner, seed=self.tc.probe_seed, dim=self.tc.projection_dim)
        self.weights = depth_weights(self.n_blocks, self.tc.deep_weight)
        self._pending: torch.Tensor | None = None
        self.comparisons = 0  # signature comparisons made by placement (for reports)

    # -- placement ------------------------------------------------------------------------------
    def _distances(self, pulls: torch.Tensor, task: str) -> torch.Tensor:
        """Per-pull distance 1 - weighted similarity to `task`: (n,)."""
        self.comparisons += len(pulls)
        return torch.tensor([1.0 - similarity(p, self.signatures[task], self.weights) for p in pulls])

    def _lcb(self, pulls: torch.Tensor, node: str) -> tuple[float, float, str]:
        """(LCB, UCB, nearest member) of a subtree: its closest member, widened by the pull noise."""
        best = None
        for task in self.tree.members(node):
            d = self._distances(pulls, task)
            if best is None or d.mean() < best[0].mean():
                best = (d, task)
        assert best is not None
        d, task = best
        n = len(d)
        t = len(self.tree.leaves) * n  # observations so far: every task compared with every pull
        radius = max(float(d.std()) if n > 1 else 0.05, 0.02) * math.sqrt(2 * math.log(max(t, 2)) / n)
        return float(d.mean()) - radius, float(d.mean()) + radius, task

    def place(self, train: list[Encoded]) -> tuple[str | None, int, torch.Tensor, dict[str, Any]]:
        pulls = self.prober.pulls(train, MIN_PULLS)
        if not self.signatures:
            return None, self.tree.start, pulls.mean(0), {"pulls": len(pulls)}
        node = ROOT
        while self.tree.nodes[node].task is None:
            while True:
                scored = sorted((*self._lcb(pulls, c), c) for c in self.tree.nodes[node].children)
                clear = len(scored) == 1 or scored[0][1] <= scored[1][0]
                if clear or len(pulls) >= self.tc.max_pulls:
                    break
                pulls = torch.cat([pulls, self.prober.pulls(train, 1, first=len(pulls))])
            node = scored[0][3]
        relative = self.tree.nodes[node].task
        assert relative is not None
        sig = pulls.mean(0)
        cos = block_cosines(sig, self.signatures[relative])
        shared = 0
        for c in cos[self.tree.start :].tolist():
            if c < self.tc.share_threshold:
                break
            shared += 1
        b = self.tree.start + min(shared, self.tree.end - self.tree.start - self.tc.min_own_blocks)
        sim = similarity(sig, self.signatures[relative], self.weights)
        info = {
            "relative": relative,
            "similarity": round(sim, 4),
            "pulls": len(pulls),
            "block_cosines": [round(c, 3) for c in cos.tolist()],
            "branch_at": max(b, self.tree.start),
        }
        return relative, max(b, self.tree.start), sig, info

    # -- the three hooks ------------------------------------------------------------------------
    def begin_task(self, name: str, train: list[Encoded]) -> TrainSetup:
        relative, b, sig, info = self.place(train)
        self._pending = sig
        split = self.tree.insert(name, relative=relative if b > self.tree.start else None, branch_at=b)
        if split.moved is not None:
            old, new, blocks = split.moved
            self.bank.rename(old, new, blocks)
        own = range(b, self.tree.end)
        self.bank.add(split.leaf, own, seed=self.learner.cfg.train.seed)
        warm = relative is not None and self.tc.warm_start and info["similarity"] >= WARM_THRESHOLD
        if warm:
            assert relative is not None
            rel_map = self.tree.block_map(relative)
            for (blk, _), mod in self.bank.targets(own):
                mod.lora_A[split.leaf].data.copy_(mod.lora_A[rel_map[blk]].data)
                mod.lora_B[split.leaf].data.copy_(mod.lora_B[rel_map[blk]].data)
        info.update(leaf=split.leaf, warm_start=warm, shared_blocks=b - self.tree.start)
        return TrainSetup({split.leaf}, self.path(name), start_block=b, info=info)

    def end_task(self, name: str, train: list[Encoded]) -> None:
        assert self._pending is not None
        self.signatures[name] = self._pending.half()
        self._pending = None

    def path(self, task: str | None) -> Path:
        if task is None:
            raise ValueError("treelora needs a task id or the router")
        return {b: (n,) for b, n in self.tree.block_map(task).items()}

    # -- persistence ----------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"tree": self.tree.to_json()}

    def load_json(self, state: dict[str, Any]) -> None:
        self.tree = AdapterTree.from_json(state["tree"])

    def extra_tensors(self) -> dict[str, torch.Tensor]:
        return {f"sig.{t}": s for t, s in self.signatures.items()}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.signatures = {k[4:]: v for k, v in tensors.items() if k.startswith("sig.")}
