"""Type aliases shared across the engine."""

from __future__ import annotations

Path = dict[int, tuple[str, ...]]  # a task's route through the model: block -> adapters summed at that block
