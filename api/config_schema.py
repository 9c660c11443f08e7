"""Request models of a stream's config sections, generated from the engine's config dataclasses
(`treelora_core.config`): the same fields, types, defaults and bounds (`treelora_core.bounds`),
so the OpenAPI spec states the limits the engine enforces and the two cannot drift apart.

Values are strict (an integer field takes no float, string or bool) and finite; the engine checks
them again when it builds the config (`config_from_dict`), for callers that skip HTTP.
"""

from __future__ import annotations

from dataclasses import MISSING, Field, fields
from typing import TYPE_CHECKING, Annotated, Any, get_type_hints

from pydantic import BaseModel, ConfigDict, StringConstraints, create_model
from pydantic import Field as PydanticField

from treelora_core.bounds import bounds_of
from treelora_core.config import LoraConfig, TrainConfig
from treelora_core.lora import MAX_TARGET_MODULES, MODULE_NAME
from treelora_core.strategies import REGISTRY

ModuleName = Annotated[str, StringConstraints(strict=True, pattern=f"^{MODULE_NAME.pattern}$")]


def _field(f: Field[Any], hint: Any) -> tuple[Any, Any]:
    default: Any = f.default_factory() if f.default is MISSING and f.default_factory is not MISSING else f.default
    b = bounds_of(f)
    limits: dict[str, Any] = {} if b is None else {"ge": b.ge, "gt": b.gt, "le": b.le, "lt": b.lt}
    if hint is float:
        return float, PydanticField(default, strict=True, allow_inf_nan=False, **limits)
    if hint in (int, bool, str):
        return hint, PydanticField(default, strict=True, **limits)
    if f.name == "target_modules":  # tuple[str, ...] in the engine, a JSON array here
        return list[ModuleName], PydanticField(
            list(default), min_length=1, max_length=MAX_TARGET_MODULES, description="Linear layers of the base model"
        )
    return hint, PydanticField(default)  # a Literal of choices


def section_model(cls: type, name: str) -> type[BaseModel]:
    """A pydantic model with the fields of the config dataclass `cls` (unknown fields refused)."""
    hints = get_type_hints(cls)
    spec = {f.name: _field(f, hints[f.name]) for f in fields(cls)}
    doc = (cls.__doc__ or "").strip()
    if doc.startswith(f"{cls.__name__}("):  # the signature a dataclass without a docstring gets
        doc = ""
    return create_model(name, __config__=ConfigDict(extra="forbid"), __doc__=doc or None, **spec)  # type: ignore[call-overload, no-any-return]


SECTION_CLASSES: dict[str, type] = {"lora": LoraConfig, "train": TrainConfig} | {
    c.section: c.Options for c in REGISTRY.values() if c.section is not None
}

if TYPE_CHECKING:  # what the request schema needs to name; built from the dataclasses below
    LoraSection = BaseModel
    TrainSection = BaseModel
    TreeSection = BaseModel
    PaperSection = BaseModel
    EWCSection = BaseModel
    OLoRASection = BaseModel
    LoraTopSection = BaseModel
else:
    LoraSection = section_model(LoraConfig, "LoraSection")
    TrainSection = section_model(TrainConfig, "TrainSection")
    TreeSection = section_model(SECTION_CLASSES["tree"], "TreeSection")
    PaperSection = section_model(SECTION_CLASSES["paper"], "PaperSection")
    EWCSection = section_model(SECTION_CLASSES["ewc"], "EWCSection")
    OLoRASection = section_model(SECTION_CLASSES["o_lora"], "OLoRASection")
    LoraTopSection = section_model(SECTION_CLASSES["lora_top"], "LoraTopSection")
