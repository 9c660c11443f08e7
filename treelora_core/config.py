"""Configuration dataclasses. Each field says why it exists; all validate in __post_init__."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from .bounds import bounded, check_bounds
from .errors import ConfigError
from .lora import LoraConfig
from .strategies import REGISTRY, strategy_class
from .strategies.ewc import EWCOptions
from .strategies.o_lora import OLoRAOptions
from .strategies.per_task_lora import LoraTopOptions
from .strategies.treelora import TreeConfig
from .strategies.treelora_paper import PaperConfig


@dataclass
class TrainConfig:
    """How one task trains. Every field has bounds; a value outside them, NaN or infinite is
    refused, naming the field."""

    epochs: int = bounded(3, ge=1, le=100)  # the epoch budget, identical for every method in a comparison
    batch_size: int = bounded(8, ge=1, le=256)  # examples per optimiser step
    lr: float = bounded(1e-3, gt=0, le=1)  # AdamW learning rate for adapter weights
    weight_decay: float = bounded(0.0, ge=0, le=1)  # adapters are small; decay only slows learning here
    # tokens per example (prompt is cut in the middle, completion kept); at least 16 so that a
    # prompt keeps some tokens beside the answer
    max_length: int = bounded(128, ge=16, le=4096)
    seed: int = bounded(0, ge=0, le=2**32 - 1)  # seeds data order and adapter init
    patience: int = bounded(1, ge=0, le=100)  # early stop: epochs without validation-loss gain before stopping
    min_delta: float = bounded(0.01, ge=0, le=10)  # a validation-loss gain smaller than this counts as no gain
    val_examples: int = bounded(32, ge=0, le=1000)  # held-out training examples used by the early-stopping rule

    def __post_init__(self) -> None:
        check_bounds(self)


@dataclass
class StreamConfig:
    """Everything that defines a continual-learning run except the data."""

    strategy: str = "treelora"
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    chat_template: bool = False  # format prompts with the tokenizer's chat template
    # each method's own knobs, in the section its class names (`Strategy.section`)
    tree: TreeConfig = field(default_factory=TreeConfig)
    paper: PaperConfig = field(default_factory=PaperConfig)
    ewc: EWCOptions = field(default_factory=EWCOptions)
    o_lora: OLoRAOptions = field(default_factory=OLoRAOptions)
    lora_top: LoraTopOptions = field(default_factory=LoraTopOptions)

    def __post_init__(self) -> None:
        strategy_class(self.strategy)  # an unknown name is a ConfigError naming the choices


def strategy_options(cfg: StreamConfig) -> Any:
    """The chosen strategy's own knobs (its section of the config), or None if it has none."""
    section = REGISTRY[cfg.strategy].section
    return None if section is None else getattr(cfg, section)


def _build(cls: type, d: Any, section: str) -> Any:
    """A config dataclass from a dict; unknown or mistyped fields are a ConfigError naming them."""
    if not isinstance(d, dict):
        raise ConfigError(f"{section} must be an object", param=section)
    known = {f.name: f for f in fields(cls)}
    pre = "" if section == "config" else f"{section}."
    for key, value in d.items():
        if key not in known:
            raise ConfigError(f"unknown field {key!r} in {section}", param=f"{pre}{key}")
        want = known[key].type
        ok = {
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, int | float) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
            "str": isinstance(value, str),
        }.get(str(want), True)
        if not ok:
            raise ConfigError(f"{pre}{key} must be of type {want}", param=f"{pre}{key}")
    try:
        return cls(**d)
    except ConfigError as exc:
        msg = str(exc)
        if exc.param and msg.startswith(exc.param) and not msg.startswith(pre):
            msg = pre + msg  # "train.lr must be ..."
        raise ConfigError(msg, param=f"{pre}{exc.param}" if exc.param else section) from None


def config_from_dict(d: dict[str, Any]) -> StreamConfig:
    """A StreamConfig from nested dicts (JSON), validated field by field."""
    d = dict(d)
    lora = dict(d.pop("lora", None) or {})
    if isinstance(lora.get("target_modules"), list):  # JSON has no tuples; LoraConfig checks the names
        lora["target_modules"] = tuple(lora["target_modules"])
    sections = {
        "lora": _build(LoraConfig, lora, "lora"),
        "train": _build(TrainConfig, d.pop("train", None) or {}, "train"),
    }
    for cls in REGISTRY.values():
        if cls.section is not None and cls.section not in sections:
            sections[cls.section] = _build(cls.Options, d.pop(cls.section, None) or {}, cls.section)
    top = _build(StreamConfig, d, "config")
    for name, value in sections.items():
        setattr(top, name, value)
    return top  # type: ignore[no-any-return]
