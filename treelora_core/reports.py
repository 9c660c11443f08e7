"""What training a task reports (plain data: no torch, so the service layer can read it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TaskReport:
    name: str
    seconds: float
    epochs_run: int
    steps: int
    trainable_params: int
    final_train_loss: float
    val_losses: list[float]
    placement: dict[str, Any] = field(default_factory=dict)
    phase_seconds: dict[str, float] = field(default_factory=dict)  # place, train, validate, finish
    # CPU time of the calling thread over the same span: with one torch thread it equals `seconds`
    # on an idle machine and, unlike wall time, does not grow when other processes share the cores
    thread_cpu_seconds: float = 0.0
