"""Layer-wise LoRA that many adapters share: each wrapped Linear holds named (A, B) pairs and a
routing plan that says which adapters apply to which rows of the batch.

A plan is a list of groups `(names, rows)`: the adapters in `names` are summed and added to the
rows `rows` (a LongTensor of batch indices, or None for every row). A batch that mixes tasks runs
once; at each block its rows are grouped by the adapters on their paths.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .bounds import bounded, check_bounds
from .errors import ConfigError, StateError
from .models import blocks
from .types import Path

Plan = list[tuple[tuple[str, ...], torch.Tensor | None]]
# serving: the factors of every adapter a batch uses at one Linear, side by side (A_all (K, in),
# B_all (out, K), scaling folded in), and a (B, 1, K) 0/1 mask of the columns each row's path uses
# (None: every row uses all of them)
Stack = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


MAX_TARGET_MODULES = 16  # names in `LoraConfig.target_modules` at most
MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")  # one attribute name of a Linear in a block


@dataclass
class LoraConfig:
    r: int = bounded(8, ge=1, le=256)  # rank of every adapter (paper, LLM setting)
    alpha: float = bounded(32.0, gt=0, le=1024)  # scaling = alpha / r, as in PEFT and the paper
    # linear layers that get adapters: attribute names of Linear modules inside the blocks (the
    # service checks them against the base model when a stream is created)
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    dropout: float = bounded(0.0, ge=0, lt=1)  # kept at 0 so composed and exported outputs match exactly

    def __post_init__(self) -> None:
        check_bounds(self)
        tm = self.target_modules
        if isinstance(tm, str) or not isinstance(tm, list | tuple) or not tm:
            raise ConfigError("target_modules must name at least one module", param="target_modules")
        if len(tm) > MAX_TARGET_MODULES:
            raise ConfigError(f"target_modules names at most {MAX_TARGET_MODULES} modules", param="target_modules")
        for t in tm:
            if not isinstance(t, str) or not MODULE_NAME.fullmatch(t):
                raise ConfigError(f"target_modules: {t!r} is not a module name", param="target_modules")
        if len(set(tm)) != len(tm):
            raise ConfigError("target_modules names a module twice", param="target_modules")
        self.target_modules = tuple(tm)

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


class MultiLoRALinear(nn.Module):
    """A frozen Linear plus any number of named low-rank updates: y = W x + s * B_n A_n x.

    Two ways to say which adapters a batch uses, never both at once: a `plan` of named adapters
    per group of rows (training, evaluation, export checks) or a `stack` of pooled factors
    (serving, see serving.py). `route()` sets one and clears the other."""

    def __init__(self, base: nn.Linear, scaling: float) -> None:
        super().__init__()
        self.base = base
        self.scaling = scaling
        self.lora_A = nn.ParameterDict()  # name -> (r, in)
        self.lora_B = nn.ParameterDict()  # name -> (out, r)
        self.plan: Plan = []
        self.stack: Stack | None = None

    def add(self, name: str, r: int, generator: torch.Generator | None = None) -> None:
        """A Kaiming-uniform, B zeros: a new adapter starts as the identity (as in PEFT/litgpt)."""
        a = torch.empty(r, self.base.in_features)  # drawn on the CPU: same init on every device
        bound = 1.0 / math.sqrt(self.base.in_features) * math.sqrt(3.0) * math.sqrt(2.0 / (1 + 5))
        a.uniform_(-bound, bound, generator=generator)
        dev = self.base.weight.device
        self.lora_A[name] = nn.Parameter(a.to(dev))
        self.lora_B[name] = nn.Parameter(torch.zeros(self.base.out_features, r, device=dev))

    def delta(self, x: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
        out = None
        for n in names:
            d = F.linear(F.linear(x, self.lora_A[n]), self.lora_B[n])  # (.., r) -> (.., out)
            out = d if out is None else out + d
        assert out is not None
        return out * self.scaling

    def route(self, *, plan: Plan | None = None, stack: Stack | None = None) -> None:
        """Use `plan` or `stack` (or neither: the base model) for the following batches."""
        if plan and stack is not None:
            raise StateError("a Linear routes by a plan or by a stack, not both")
        self.plan, self.stack = plan or [], stack

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, in)
        y = self.base(x)
        if self.stack is not None:
            a, b, mask = self.stack
            h = F.linear(x, a)  # (B, T, K): every adapter's rank-r projection, two dense GEMMs in all
            return y + F.linear(h if mask is None else h * mask, b)
        for names, rows in self.plan:
            if not names:
                continue
            if rows is None:
                y = y + self.delta(x, names)
            else:
                rows = rows.to(y.device)
                y = y.index_add(0, rows, self.delta(x[rows], names))
        return y


class LoRABank:
    """All adapters of a model: `modules[(block, target)]` is the wrapped Linear."""

    def __init__(self, model: nn.Module, cfg: LoraConfig) -> None:
        self.model, self.cfg = model, cfg
        self.modules: dict[tuple[int, str], MultiLoRALinear] = {}
        self.n_blocks = len(blocks(model))
        for i, block in enumerate(blocks(model)):
            for _parent_name, parent in block.named_modules():
                for t in cfg.target_modules:
                    child = getattr(parent, t, None)
                    if isinstance(child, nn.Linear):
                        wrapped = MultiLoRALinear(child, cfg.scaling)
                        setattr(parent, t, wrapped)
                        self.modules[(i, t)] = wrapped
                    elif isinstance(child, MultiLoRALinear):
                        raise StateError("model already carries a LoRABank")
        if not self.modules:
            raise ConfigError(f"no Linear named {cfg.target_modules} in the model's blocks", param="target_modules")

    def targets(self, block_range: range | None = None) -> Iterator[tuple[tuple[int, str], MultiLoRALinear]]:
        for key, mod in self.modules.items():
            if block_range is None or key[0] in block_range:
                yield key, mod

    def add(self, name: str, block_range: range | None = None, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        for _, mod in self.targets(block_range):
            mod.add(name, self.cfg.r, g)

    def remove(self, name: str) -> None:
        for mod in self.modules.values():
            if name in mod.lora_A:
                del mod.lora_A[name], mod.lora_B[name]

    def names(self) -> set[str]:
        return {n for m in self.modules.values() for n in m.lora_A.keys()}

    def blocks_of(self, name: str) -> list[int]:
        return sorted({b for (b, _), m in self.modules.items() if name in m.lora_A})

    def params(self, name: str, block_range: range | None = None) -> list[nn.Parameter]:
        out: list[nn.Parameter] = []
        for _, mod in self.targets(block_range):
            if name in mod.lora_A:
                out += [mod.lora_A[name], mod.lora_B[name]]
        return out

    def state(self, name: str) -> dict[str, torch.Tensor]:
        """Flat tensors of one adapter: '{block}.{target}.A' / '.B' (what gets persisted)."""
        out = {}
        for (b, t), mod in self.modules.items():
            if name in mod.lora_A:
                out[f"{b}.{t}.A"] = mod.lora_A[name].detach().cpu().clone()
                out[f"{b}.{t}.B"] = mod.lora_B[name].detach().cpu().clone()
        return out

    def load(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        for key, value in tensors.items():
            b, t, which = key.rsplit(".", 2)
            mod = self.modules[(int(b), t)]
            store = mod.lora_A if which == "A" else mod.lora_B
            store[name] = nn.Parameter(value.detach().clone().float().to(mod.base.weight.device))

    def rename(self, old: str, new: str, block_range: range) -> None:
        """Move an adapter's blocks in `block_range` to another name (a node split: no maths change)."""
        for _, mod in self.targets(block_range):
            if old in mod.lora_A:
                mod.lora_A[new] = mod.lora_A.pop(old)
                mod.lora_B[new] = mod.lora_B.pop(old)

    def set_trainable(self, names: set[str]) -> list[nn.Parameter]:
        out = []
        for mod in self.modules.values():
            for store in (mod.lora_A, mod.lora_B):
                for n, p in store.items():
                    p.requires_grad_(n in names)
                    if n in names:
                        out.append(p)
        return out

    def set_plan(self, plan_for_block: dict[int, Plan] | Plan) -> None:
        for (b, _), mod in self.modules.items():
            mod.route(plan=plan_for_block.get(b, []) if isinstance(plan_for_block, dict) else plan_for_block)

    @contextmanager
    def routed(self, plan_for_block: dict[int, Plan] | Plan) -> Iterator[None]:
        old = {k: m.plan for k, m in self.modules.items()}
        self.set_plan(plan_for_block)
        try:
            yield
        finally:
            for k, m in self.modules.items():
                m.route(plan=old[k])

    def everywhere(self, names: tuple[str, ...]) -> Path:
        """The path that sums `names` at every block."""
        return {b: names for b in range(self.n_blocks)}

    def routed_path(self, path: Path) -> AbstractContextManager[None]:
        """Every row of the batch follows one path (block -> adapter names)."""
        return self.routed({b: [(names, None)] for b, names in path.items()})

    def nbytes(self, name: str) -> int:
        return sum(t.numel() * 4 for t in self.state(name).values())


def plans_for_rows(paths: list[Path], n_blocks: int) -> dict[int, Plan]:
    """Per-row paths (block -> adapter names) -> per-block plans that group rows sharing adapters."""
    out: dict[int, Plan] = {}
    for b in range(n_blocks):
        groups: dict[tuple[str, ...], list[int]] = {}
        for row, path in enumerate(paths):
            names = path.get(b, ())
            if names:
                groups.setdefault(names, []).append(row)
        if len(groups) == 1 and len(next(iter(groups.values()))) == len(paths):
            out[b] = [(next(iter(groups)), None)]
        else:
            out[b] = [(names, torch.tensor(rows)) for names, rows in groups.items()]
    return out
