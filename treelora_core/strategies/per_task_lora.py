"""`per_task_lora`: an independent LoRA per task on every block (with the true task id, the upper
bound), and `lora_top`: the same on the last blocks only, the blocks `treelora` owns by default
(no sharing, no warm start): the ablation that tells whether the tree adds anything to "train
fewer blocks"."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..bounds import bounded, check_bounds
from ..errors import UnknownTaskError
from ..models import Encoded
from ..types import Path
from .base import Context, Strategy, TrainSetup


class PerTaskLoRA(Strategy):
    name = "per_task_lora"
    needs_task_id = True
    frozen_paths = True

    def __init__(self, ctx: Context, options: Any = None) -> None:
        super().__init__(ctx, options)
        self.tasks: list[str] = []

    def blocks(self) -> range:
        return range(self.n_blocks)

    def begin_task(self, name: str, train: list[Encoded]) -> TrainSetup:
        self.bank.add(name, self.blocks(), seed=self.ctx.seed)  # adapters never interact: one init serves all
        blocks = self.blocks()
        return TrainSetup({name}, {b: (name,) for b in blocks}, start_block=blocks.start)

    def end_task(self, name: str, train: list[Encoded]) -> None:
        self.tasks.append(name)

    def path(self, task: str | None) -> Path:
        if task is None:
            raise UnknownTaskError(f"{self.name} needs a task id or the router")
        return {b: (task,) for b in self.bank.blocks_of(task)}

    def to_json(self) -> dict[str, list[str]]:
        return {"tasks": self.tasks}

    def load_json(self, state: dict[str, list[str]]) -> None:
        self.tasks = list(state.get("tasks", []))


@dataclass
class LoraTopOptions:
    own_blocks: int = bounded(10, ge=1, le=1024)  # adapters on the last this many blocks (treelora's `min_own_blocks`)

    def __post_init__(self) -> None:
        check_bounds(self)


class LoraTop(PerTaskLoRA):
    name = "lora_top"
    section = "lora_top"
    Options = LoraTopOptions

    def blocks(self) -> range:
        return range(max(0, self.n_blocks - self.opts.own_blocks), self.n_blocks)
