"""Type aliases shared across the engine."""

from __future__ import annotations

Path = dict[int, tuple[str, ...]]  # a task's route through the model: block -> adapters summed at that block
Message = dict[str, str]  # a chat message: {"role": ..., "content": ...}
Prompt = str | tuple[Message, ...]  # plain text, or a conversation the chat template renders
