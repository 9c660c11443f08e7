"""`treelora`: a tree of layer-wise adapters. A new task descends the tree with a lower-confidence-
bound bandit over probe-gradient signatures, shares its relative's blocks while they are similar
enough, and trains only its own branch (earlier blocks frozen, so old tasks never change)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..adapter_tree import ROOT, AdapterTree
from ..bounds import bounded, check_bounds
from ..errors import ConfigError, UnknownTaskError
from ..models import Encoded
from ..signatures import Prober, block_cosines, depth_weights, similarity
from ..types import Path
from .base import Context, Strategy, TrainSetup

MIN_PULLS = 1  # one minibatch finds the nearest task for most tasks; LCB asks for more on close calls
WARM_THRESHOLD = 0.3  # below this overall similarity a relative is no better than a fresh start
# a "clear stranger" for the settled pull stop: a candidate whose first-block cosine is this far
# below `share_threshold` branches at the root however many pulls follow: probe noise lowers a
# cosine, but not by half (two halves of a long-stream task's four pulls agree at 0.86 on block 0,
# which puts a one-pull cosine at about 0.9 of a four-pull one)
STRANGER_MARGIN = 0.25

Placement = Literal["search", "random", "always_share"]
BranchRule = Literal["first_below", "best_prefix", "median_below"]
PullStop = Literal["separated", "decided", "settled"]


@dataclass
class TreeConfig:
    """How `treelora` places a new task in its tree of layer-wise adapters."""

    share_threshold: float = bounded(0.5, ge=-1, le=1)  # min probe-gradient cosine with the relative to share a block
    min_own_blocks: int = bounded(10, ge=1, le=1024)  # every task trains at least its last this many blocks itself
    max_pulls: int = bounded(4, ge=1, le=64)  # probe minibatches per task at most (LCB stops earlier on clear calls)
    probe_batch: int = bounded(8, ge=1, le=256)  # examples per probe minibatch (one "pull")
    projection_dim: int = bounded(256, ge=1, le=4096)  # signatures are stored as fp16 random projections of this size
    deep_weight: float = bounded(2.0, ge=0, le=100)  # weight of the deepest block relative to the first in similarity
    warm_start: bool = True  # initialise a new branch from its closest relative's adapters
    share: bool = True  # False: every task owns every block (warm start only; an ablation)
    # "search": LCB descent over signatures picks the relative, the share threshold the branch
    # block; "random": a uniformly random earlier task, then the same branch rule; "always_share":
    # a random earlier task, sharing all but the last `min_own_blocks` (the last two: ablations)
    placement: Placement = "search"
    # where the branch starts: "median_below" (the default) shares blocks up to the first whose
    # cosine, median-filtered over the block and its two neighbours (an edge block repeats
    # itself), is below `share_threshold`, so a single block's dip between two blocks above the
    # threshold does not end sharing while a low first block, or two low blocks in a row, do;
    # "first_below" reads the raw cosines (one low block ends sharing); "best_prefix" shares the
    # prefix whose summed margin (cosine minus the threshold) is largest
    branch_rule: BranchRule = "median_below"
    # when the descent stops taking probe pulls at a close call (always by `max_pulls`):
    # "separated" once the best child's UCB is below the runner-up's LCB; "decided" also once every
    # child the bound cannot rule out would give the same branch block (more pulls could then only
    # change which of near-equal relatives warm-starts the branch, not the tree's shape);
    # "settled" (the default) stops early on a decided share up to `min_own_blocks` and on a clear
    # stranger (every candidate branches at the root with a first-block cosine `STRANGER_MARGIN`
    # below the threshold), and takes every pull for a close call between those (a branch above
    # the cap, or at the root by a small margin) and for the first task's signature (probe noise
    # pulls a cosine towards zero on average: a high cosine on one pull is evidence, a low one
    # near the threshold may be noise)
    pull_stop: PullStop = "settled"
    cache_prefix: bool = True  # reuse the frozen prefix's hidden states after the first epoch
    # seed of the shared probe A (same for every task, so comparable)
    probe_seed: int = bounded(1234, ge=0, le=2**32 - 1)

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.placement not in ("search", "random", "always_share"):
            raise ConfigError("placement must be search, random or always_share", param="placement")
        if self.branch_rule not in ("first_below", "best_prefix", "median_below"):
            raise ConfigError("branch_rule must be first_below, best_prefix or median_below", param="branch_rule")
        if self.pull_stop not in ("separated", "decided", "settled"):
            raise ConfigError("pull_stop must be separated, decided or settled", param="pull_stop")


def shared_blocks(cosines: list[float], threshold: float, rule: BranchRule) -> int:
    """How many leading blocks a new task shares with its relative, from their block cosines."""
    if rule == "median_below":
        n = len(cosines)
        cosines = [sorted((cosines[max(k - 1, 0)], c, cosines[min(k + 1, n - 1)]))[1] for k, c in enumerate(cosines)]
        rule = "first_below"
    if rule == "first_below":
        return next((k for k, c in enumerate(cosines) if c < threshold), len(cosines))
    best, total, shared = 0.0, 0.0, 0
    for k, c in enumerate(cosines):
        total += c - threshold
        if total > best:
            best, shared = total, k + 1
    return shared


class TreeLoRA(Strategy):
    name = "treelora"
    needs_task_id = True
    section = "tree"
    frozen_paths = True
    Options = TreeConfig

    def __init__(self, ctx: Context, options: Any = None) -> None:
        super().__init__(ctx, options)
        self.tc: TreeConfig = self.opts
        self.tree = AdapterTree(0, self.n_blocks)
        self.signatures: dict[str, torch.Tensor] = {}  # task -> (blocks, dim) fp16
        self.prober = Prober(ctx, seed=self.tc.probe_seed, dim=self.tc.projection_dim, batch_size=self.tc.probe_batch)
        self.weights = depth_weights(self.n_blocks, self.tc.deep_weight)
        self.rng = random.Random(ctx.seed)
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

    def _deepest_branch(self, last_owned: int) -> int:
        """The deepest block a new task may branch at: the cap, or the root when nothing is shared."""
        return last_owned if self.tc.share else self.tree.start

    def _branch(self, sig: torch.Tensor, relative: str, last_owned: int) -> tuple[int, list[float]]:
        """(branch block, block cosines) of a new task with signature `sig` under `relative`."""
        cos = block_cosines(sig, self.signatures[relative])
        shared = shared_blocks(cos[self.tree.start :].tolist(), self.tc.share_threshold, self.tc.branch_rule)
        b = min(self.tree.start + shared, self._deepest_branch(last_owned))
        return b, cos.tolist()

    def _contender_branches(
        self, pulls: torch.Tensor, scored: list[tuple[float, float, str, str]], last_owned: int
    ) -> list[tuple[int, list[float]]]:
        """(branch block, block cosines), with the signature so far, under the closest member of
        every child the bound cannot rule out (LCB at most the best child's UCB)."""
        contenders = [member for lcb, _, member, _ in scored if lcb <= scored[0][1]]
        sig = pulls.mean(0)
        return [self._branch(sig, member, last_owned) for member in contenders]

    def _decided(self, pulls: torch.Tensor, scored: list[tuple[float, float, str, str]], last_owned: int) -> bool:
        """Whether every child the bound cannot rule out gives the same branch block."""
        return len({b for b, _ in self._contender_branches(pulls, scored, last_owned)}) == 1

    def _settled(self, branches: list[tuple[int, list[float]]], last_owned: int) -> bool:
        """Whether more pulls could not change the branch: every contender shares up to the cap, or
        every one is a clear stranger (a root branch with its first block far below the threshold)."""
        if {b for b, _ in branches} == {self._deepest_branch(last_owned)}:
            return True
        start, floor = self.tree.start, self.tc.share_threshold - STRANGER_MARGIN
        return all(b == start and cos[start] < floor for b, cos in branches)

    def _stop(
        self, pulls: torch.Tensor, scored: list[tuple[float, float, str, str]], clear: bool, last_owned: int
    ) -> bool:
        """Whether the descent at this node takes no more probe pulls (below `max_pulls`)."""
        if self.tc.pull_stop == "separated":
            return clear
        if self.tc.pull_stop == "decided":
            return clear or self._decided(pulls, scored, last_owned)
        return self._settled(self._contender_branches(pulls, scored[:1] if clear else scored, last_owned), last_owned)

    def place(self, train: list[Encoded]) -> tuple[str | None, int, torch.Tensor | None, dict[str, Any]]:
        """(relative, branch block, signature, report) for a new task."""
        last_owned = max(self.tree.start, self.tree.end - self.tc.min_own_blocks)
        if self.tc.placement == "always_share" and self.tree.leaves:
            pick = self.rng.choice(list(self.tree.leaves))  # no probe at all: the cheapest rule
            b = self._deepest_branch(last_owned)
            return pick, b, None, {"relative": pick, "pulls": 0, "branch_at": b, "similarity": None}
        known = [t for t in self.tree.leaves if t in self.signatures]
        first = self.tc.max_pulls if not known and self.tc.pull_stop == "settled" else MIN_PULLS
        pulls = self.prober.pulls(train, first)
        if not known:
            return None, self.tree.start, pulls.mean(0), {"pulls": len(pulls)}
        relative: str | None
        if self.tc.placement == "random":
            relative = self.rng.choice(known)
        else:
            node = ROOT
            while self.tree.nodes[node].task is None:
                while True:
                    scored = sorted((*self._lcb(pulls, c), c) for c in self.tree.nodes[node].children)
                    clear = len(scored) == 1 or scored[0][1] <= scored[1][0]
                    if len(pulls) >= self.tc.max_pulls or self._stop(pulls, scored, clear, last_owned):
                        break
                    pulls = torch.cat([pulls, self.prober.pulls(train, 1, first=len(pulls))])
                node = scored[0][3]
            relative = self.tree.nodes[node].task
        assert relative is not None
        sig = pulls.mean(0)
        b, cos = self._branch(sig, relative, last_owned)
        sim = similarity(sig, self.signatures[relative], self.weights)
        info = {
            "relative": relative,
            "similarity": round(sim, 4),
            "pulls": len(pulls),
            "block_cosines": [round(c, 3) for c in cos],
            "branch_at": b,
        }
        return relative, b, sig, info

    # -- the three hooks ------------------------------------------------------------------------
    def begin_task(self, name: str, train: list[Encoded]) -> TrainSetup:
        before = self.comparisons
        relative, b, sig, info = self.place(train)
        info["comparisons"] = self.comparisons - before  # signature comparisons this placement made
        self._pending = sig
        split = self.tree.insert(name, relative=relative if b > self.tree.start else None, branch_at=b)
        if split.moved is not None:
            old, new, blocks = split.moved
            self.bank.rename(old, new, blocks)
        own = range(b, self.tree.end)
        self.bank.add(split.leaf, own, seed=self.ctx.seed)
        sim = info.get("similarity")  # None: no probe was taken (always_share)
        warm = relative is not None and self.tc.warm_start and (sim is None or sim >= WARM_THRESHOLD)
        if warm:
            assert relative is not None
            rel_map = self.tree.block_map(relative)
            for (blk, _), mod in self.bank.targets(own):
                mod.lora_A[split.leaf].data.copy_(mod.lora_A[rel_map[blk]].data)
                mod.lora_B[split.leaf].data.copy_(mod.lora_B[rel_map[blk]].data)
        info.update(leaf=split.leaf, warm_start=warm, shared_blocks=b - self.tree.start)
        return TrainSetup({split.leaf}, self.path(name), start_block=b, cache_prefix=self.tc.cache_prefix, info=info)

    def end_task(self, name: str, train: list[Encoded]) -> None:
        if self._pending is not None:  # always_share placements take no signature
            self.signatures[name] = self._pending.half()
        self._pending = None

    def path(self, task: str | None) -> Path:
        if task is None:
            raise UnknownTaskError("treelora needs a task id or the router")
        return {b: (n,) for b, n in self.tree.block_map(task).items()}

    # -- views ----------------------------------------------------------------------------------
    def tree_nodes(self) -> list[dict[str, Any]]:
        return self.tree.view_nodes()

    def similarities(self, tasks: list[str]) -> dict[str, dict[str, float]]:
        sigs = self.signatures
        names = [t for t in tasks if t in sigs]
        return {a: {b: round(similarity(sigs[a], sigs[b], self.weights), 4) for b in names if b != a} for a in names}

    # -- persistence ----------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"tree": self.tree.to_json()}

    def load_json(self, state: dict[str, Any]) -> None:
        self.tree = AdapterTree.from_json(state["tree"])

    def extra_tensors(self) -> dict[str, torch.Tensor]:
        return {f"sig.{t}": s for t, s in self.signatures.items()}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.signatures = {k[4:]: v for k, v in tensors.items() if k.startswith("sig.")}
