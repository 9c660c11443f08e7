"""Every numeric field of a stream's config is bounded and finite, in the engine itself: a value
out of range, NaN, infinite, of the wrong type or absurdly large is a ConfigError naming the field
(`section.field`), before anything trains. And a run that still diverges fails, never succeeds."""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any, get_type_hints

import pytest

from treelora_core.bounds import Bounds, bounds_of
from treelora_core.config import StreamConfig, TrainConfig, config_from_dict
from treelora_core.errors import ConfigError, Diverged
from treelora_core.lora import LoraConfig
from treelora_core.models import Formatter
from treelora_core.strategies import REGISTRY

from .conftest import toy_task

SECTIONS: dict[str, type] = {"lora": LoraConfig, "train": TrainConfig} | {
    c.section: c.Options for c in REGISTRY.values() if c.section is not None
}
NUMERIC = [
    (section, f, get_type_hints(cls)[f.name])
    for section, cls in SECTIONS.items()
    for f in fields(cls)
    if get_type_hints(cls)[f.name] in (int, float)
]


def rejects(section: str, name: str, value: Any) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        config_from_dict({section: {name: value}})
    assert err.value.param == f"{section}.{name}", err.value
    assert str(err.value).startswith(f"{section}.{name} "), err.value  # the message names the field too
    return err.value


@pytest.mark.parametrize(("section", "f", "kind"), NUMERIC, ids=[f"{s}.{f.name}" for s, f, _ in NUMERIC])
def test_every_numeric_field_is_bounded_and_finite(section: str, f: Any, kind: type) -> None:
    b = bounds_of(f)
    assert isinstance(b, Bounds), f"{section}.{f.name} has no bounds"
    lo = b.ge if b.ge is not None else b.gt
    hi = b.le if b.le is not None else b.lt
    assert lo is not None and hi is not None and lo < hi
    assert b.contains(f.default)  # the default is valid
    config_from_dict({section: {f.name: kind(lo if b.ge is not None else hi)}})  # an edge that is inside
    below = lo - 1 if b.ge is not None else lo
    above = hi + 1 if b.le is not None else hi
    for bad in (below, above, kind(above) * 10**6, -abs(hi) * 10**6):
        rejects(section, f.name, kind(bad) if kind is float else int(bad))
    for bad in (math.nan, math.inf, -math.inf, True, "1", None, [1]):
        rejects(section, f.name, bad)
    if kind is int:
        rejects(section, f.name, float(f.default))  # 8.0 is not an integer here
        rejects(section, f.name, 10**400)  # far past any float: still a clean error
    else:
        rejects(section, f.name, 1e400)  # JSON's 1e400 parses to inf


@pytest.mark.parametrize(
    ("section", "name", "value"),
    [
        ("train", "epochs", 10**12),  # trained "forever" and blocked the worker
        ("train", "lr", math.inf),  # stored as null, then a 500 on PostgreSQL
        ("train", "lr", 1e30),  # NaN weights in a "succeeded" job
        ("lora", "alpha", 1e30),
        ("train", "max_length", 1),  # /score always failed
        ("lora", "r", 2**31),
        ("tree", "projection_dim", -1),
        ("train", "weight_decay", -0.1),
    ],
)
def test_the_reported_values_are_refused(section: str, name: str, value: Any) -> None:
    rejects(section, name, value)


@pytest.mark.parametrize(
    "targets",
    [[], "q_proj", ["q_proj"] * 2, ["q_proj", 3], ["q_proj", "a.b"], ["q_proj\n"], ["x" * 65], ["m"] * 17, [""]],
)
def test_target_modules_are_names(targets: Any) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict({"lora": {"target_modules": targets}})
    assert err.value.param == "lora.target_modules"


@pytest.mark.parametrize("name", ["placement", "branch_rule", "pull_stop"])
@pytest.mark.parametrize("value", ["", "first below", "DECIDED", 1, None, ["search"]])
def test_named_tree_choices_refuse_anything_else(name: str, value: Any) -> None:
    rejects("tree", name, value)


@pytest.mark.parametrize(
    ("name", "value"),
    [("placement", v) for v in ("search", "random", "always_share")]
    + [("branch_rule", v) for v in ("first_below", "best_prefix", "median_below")]
    + [("pull_stop", v) for v in ("separated", "decided", "settled")],
)
def test_named_tree_choices_accept_each_documented_value(name: str, value: str) -> None:
    assert getattr(config_from_dict({"tree": {name: value}}).tree, name) == value


def test_defaults_and_a_full_valid_config_pass() -> None:
    cfg = config_from_dict({})
    assert cfg == StreamConfig()
    cfg = config_from_dict(
        {"lora": {"r": 256, "alpha": 1024, "target_modules": ["q_proj", "o_proj"]}, "train": {"epochs": 100}}
    )
    assert cfg.lora.target_modules == ("q_proj", "o_proj") and cfg.train.epochs == 100
    with pytest.raises(ConfigError):  # the dataclasses check themselves too, not only config_from_dict
        TrainConfig(lr=math.nan)


def test_a_tiny_max_length_still_leaves_a_prompt(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """`max_length` 16 (the lowest allowed) with generation's or scoring's reserve (up to 64
    tokens): the prompt is cut, never emptied, nor left uncut by a negative budget."""
    fmt = Formatter(tokenizer, max_length=16)
    prompt = "Classify the definition into one of the classes below, then answer with one word. " * 4
    for reserve in (8, 16, 64):
        ids = fmt.encode_prompt(prompt, reserve)
        assert 1 <= len(ids) <= 16
    assert fmt.encode_prompt(prompt, 8) == fmt.fit_prompt(fmt.prompt_ids(prompt), 8)  # room left: as before


def test_a_diverging_run_raises_instead_of_learning(tiny_learner) -> None:  # type: ignore[no-untyped-def]
    """A learning rate far past the bounds (a config stored before them: the only way to get one
    now) makes the loss and the weights NaN; `learn` raises Diverged and learns nothing."""
    learner = tiny_learner("treelora", lora=LoraConfig(target_modules=("v_proj", "o_proj", "down_proj")))
    learner.cfg.train.lr = 1e30  # bypasses validation on purpose
    with pytest.raises(Diverged, match="diverged"):
        learner.learn(toy_task("t", "apple"))
    assert learner.task_names == []
