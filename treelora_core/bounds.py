"""Bounds of the numeric config fields, declared once beside each field (`bounded(...)`).

The config dataclasses check them in `__post_init__` (`check_bounds`), and the service's request
schema reads the same metadata (`bounds_of`), so its OpenAPI spec states the real limits. Every
bounded value must be a finite number of the field's type, within both of its bounds.
"""

from __future__ import annotations

import math
from dataclasses import Field, dataclass, field, fields
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class Bounds:
    """A closed or open interval; one lower bound (`ge` or `gt`) and one upper (`le` or `lt`)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def __post_init__(self) -> None:
        if (self.ge is None) == (self.gt is None) or (self.le is None) == (self.lt is None):
            raise TypeError("a field needs exactly one lower bound (ge or gt) and one upper bound (le or lt)")

    def contains(self, value: float) -> bool:
        return (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )

    def describe(self) -> str:
        lo = f"[{_num(self.ge)}" if self.ge is not None else f"({_num(self.gt)}"
        hi = f"{_num(self.le)}]" if self.le is not None else f"{_num(self.lt)})"
        return f"{lo}, {hi}"


def _num(x: float | None) -> str:
    return str(int(x)) if x is not None and float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


def bounded(
    default: float,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A dataclass field with a default and bounds (`ge`/`gt` below, `le`/`lt` above)."""
    return field(default=default, metadata={"bounds": Bounds(ge=ge, gt=gt, le=le, lt=lt)})


def bounds_of(f: Field[Any]) -> Bounds | None:
    return f.metadata.get("bounds")


def check_bounds(obj: Any) -> None:
    """Every bounded field of the dataclass instance `obj` holds a finite number of its type
    (an int field an int, never a bool) within its bounds; else a ConfigError naming the field."""
    for f in fields(obj):
        b = bounds_of(f)
        if b is None:
            continue
        value = getattr(obj, f.name)
        want_int = f.type in (int, "int")
        ok_type = isinstance(value, int) if want_int else isinstance(value, int | float)
        if isinstance(value, bool) or not ok_type:
            kind = "an integer" if want_int else "a number"
            raise ConfigError(f"{f.name} must be {kind} in {b.describe()}, got {_short(value)}", param=f.name)
        if (isinstance(value, float) and not math.isfinite(value)) or not b.contains(value):
            raise ConfigError(f"{f.name} must be in {b.describe()}, got {_short(value)}", param=f.name)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
