"""Configuration dataclasses. Each field says why it exists; all validate in __post_init__."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from .errors import ConfigError

STRATEGIES = ("treelora", "treelora_paper", "seq_lora", "o_lora", "per_task_lora", "ewc")


@dataclass
class LoraConfig:
    r: int = 8  # rank of every adapter (paper, LLM setting)
    alpha: float = 32.0  # scaling = alpha / r, as in PEFT and the paper
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")  # linear layers that get adapters
    dropout: float = 0.0  # kept at 0 so composed and exported outputs match exactly

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ConfigError(f"LoRA rank must be positive, got {self.r}", param="r")
        if self.alpha <= 0:
            raise ConfigError(f"LoRA alpha must be positive, got {self.alpha}", param="alpha")
        if not self.target_modules:
            raise ConfigError("target_modules must name at least one module", param="target_modules")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout must be in [0, 1)", param="dropout")
        self.target_modules = tuple(self.target_modules)

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


@dataclass
class TrainConfig:
    epochs: int = 3  # the epoch budget, identical for every method in a comparison
    batch_size: int = 8  # examples per optimiser step
    lr: float = 1e-3  # AdamW learning rate for adapter weights
    weight_decay: float = 0.0  # adapters are small; decay only slows learning here
    max_length: int = 128  # tokens per example (prompt is cut in the middle, completion kept)
    seed: int = 0  # seeds data order and adapter init
    patience: int = 1  # early stop: epochs without validation-loss gain before stopping
    min_delta: float = 0.01  # a validation-loss gain smaller than this counts as no gain
    val_examples: int = 32  # held-out training examples used by the early-stopping rule

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "max_length"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive", param=name)
        if self.lr <= 0:
            raise ConfigError("lr must be positive", param="lr")
        if self.patience < 0 or self.val_examples < 0:
            raise ConfigError("patience and val_examples must be >= 0", param="patience")


@dataclass
class TreeConfig:
    """How `treelora` places a new task in its tree of layer-wise adapters."""

    share_threshold: float = 0.5  # min probe-gradient cosine with the relative to share a block
    min_own_blocks: int = 10  # every task trains at least its last this many blocks itself
    max_pulls: int = 4  # probe minibatches per task at most (LCB stops earlier on clear calls)
    probe_batch: int = 8  # examples per probe minibatch (one "pull")
    projection_dim: int = 256  # signatures are stored as fp16 random projections of this size
    deep_weight: float = 2.0  # weight of the deepest block relative to the first in similarity
    warm_start: bool = True  # initialise a new branch from its closest relative's adapters
    cache_prefix: bool = True  # reuse the frozen prefix's hidden states after the first epoch
    probe_seed: int = 1234  # seed of the shared probe A (same for every task, so comparable)

    def __post_init__(self) -> None:
        if not -1.0 <= self.share_threshold <= 1.0:
            raise ConfigError("share_threshold must be a cosine in [-1, 1]", param="share_threshold")
        if self.min_own_blocks < 1:
            raise ConfigError("min_own_blocks must be >= 1", param="min_own_blocks")
        if self.max_pulls < 1 or self.probe_batch < 1:
            raise ConfigError("max_pulls and probe_batch must be >= 1", param="max_pulls")


@dataclass
class PaperConfig:
    """`treelora_paper`: the paper's algorithm (shared LoRA + K-D tree + LCB + sparse updates)."""

    reg_lambda: float = 0.5  # weight of the L1 gradient-difference penalty (paper: 0.5 for LLMs)
    sparsity: float = 0.5  # fraction of gradient entries kept by the sparse operator S (top-k)
    search: str = "lcb"  # "lcb" (paper), "random" (ablation) or "none" (no penalty, ablation)
    lcb_c: float = 2.0  # exploration constant of Eq. 2
    signature_batches: int = 4  # minibatches averaged into a finished task's gradient signature

    def __post_init__(self) -> None:
        if self.search not in ("lcb", "random", "none"):
            raise ConfigError("search must be lcb, random or none", param="search")
        if not 0.0 < self.sparsity <= 1.0:
            raise ConfigError("sparsity must be in (0, 1]", param="sparsity")


@dataclass
class StreamConfig:
    """Everything that defines a continual-learning run except the data."""

    strategy: str = "treelora"
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tree: TreeConfig = field(default_factory=TreeConfig)
    paper: PaperConfig = field(default_factory=PaperConfig)
    chat_template: bool = False  # format prompts with the tokenizer's chat template
    ewc_lambda: float = 100.0  # EWC penalty weight (diagonal Fisher on the LoRA params)
    olora_lambda: float = 0.5  # O-LoRA orthogonality weight lambda1

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(
                f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}", param="strategy"
            )


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
        raise ConfigError(str(exc), param=f"{pre}{exc.param}" if exc.param else section) from None


def config_from_dict(d: dict[str, Any]) -> StreamConfig:
    """A StreamConfig from nested dicts (JSON), validated field by field."""
    d = dict(d)
    lora = dict(d.pop("lora", None) or {})
    if "target_modules" in lora:
        tm = lora["target_modules"]
        if not isinstance(tm, list | tuple) or not all(isinstance(t, str) and t.isidentifier() for t in tm):
            raise ConfigError("lora.target_modules must be a list of module names", param="lora.target_modules")
        lora["target_modules"] = tuple(tm)
    sections = {
        "lora": _build(LoraConfig, lora, "lora"),
        "train": _build(TrainConfig, d.pop("train", None) or {}, "train"),
        "tree": _build(TreeConfig, d.pop("tree", None) or {}, "tree"),
        "paper": _build(PaperConfig, d.pop("paper", None) or {}, "paper"),
    }
    top = _build(StreamConfig, d, "config")
    for name, value in sections.items():
        setattr(top, name, value)
    return top  # type: ignore[no-any-return]
