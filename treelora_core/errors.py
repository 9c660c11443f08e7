"""A small error hierarchy: callers catch TreeLoRAError, or ValueError for bad input."""

from __future__ import annotations


class TreeLoRAError(Exception):
    """Base class of every error this library raises on purpose."""


class ConfigError(TreeLoRAError, ValueError):
    """A configuration value is out of range; `param` names it."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class DataError(TreeLoRAError, ValueError):
    """A dataset is malformed; `line` is the 1-based line (JSONL) or item (JSON array) number."""

    def __init__(self, message: str, *, line: int | None = None, param: str | None = None) -> None:
        super().__init__(message if line is None else f"line {line}: {message}")
        self.line = line
        self.param = param


class UnknownTaskError(TreeLoRAError, KeyError):
    """A task name that the learner has not seen."""


class StateError(TreeLoRAError, ValueError):
    """An operation the object's current state does not allow (a task learned twice, an empty
    tree, a model that already carries adapters, a saved learner of another format)."""


class Diverged(TreeLoRAError):
    """Training produced a non-finite loss or non-finite adapter weights (learning rate or LoRA
    alpha too large for the data): the learner's trainable state is unusable; discard it."""


class Cancelled(TreeLoRAError):
    """Training stopped because the caller's `should_stop` said so (not a failure)."""
