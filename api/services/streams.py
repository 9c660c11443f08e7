"""Streams: a continual-learning lineage (base model, strategy, config, its tree versions)."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import asdict
from typing import Any

from sqlalchemy import case, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from treelora_core.config import config_from_dict
from treelora_core.errors import ConfigError

from ..errors import Conflict, Invalid, NotFound
from ..models import Stream, new_id
from ..settings import Settings
from .common import check_name, page


def create_stream(
    *,
    session: Session,
    settings: Settings,
    name: str,
    base_model: str | None = None,
    strategy: str = "treelora",
    config: dict[str, Any] | None = None,
    linear_names: Callable[[str], Collection[str]] | None = None,
) -> Stream:
    """A new stream. `linear_names(base_model)`, when given, lists the Linear layers the model has:
    `lora.target_modules` must name only those. Two requests racing for one name: one gets the
    stream, the other a 409 (the unique constraint decides, not the check before it)."""
    check_name(name)
    model = base_model or settings.default_model
    if model not in settings.model_choices():
        choices = ", ".join(sorted(settings.model_choices()))
        raise Invalid(f"unknown base model {model!r}; this service offers: {choices}", param="base_model")
    try:
        cfg = config_from_dict({**(config or {}), "strategy": strategy})
    except ConfigError as exc:
        raise Invalid(str(exc), param=exc.param) from None
    if linear_names is not None:
        _check_targets(model, cfg.lora.target_modules, linear_names)
    if session.scalar(select(Stream.id).where(Stream.name == name)) is not None:
        raise Conflict(f"a stream named {name!r} already exists", param="name")
    stream = Stream(id=new_id("str"), name=name, base_model=model, strategy=strategy, config=asdict(cfg))
    session.add(stream)
    try:
        session.commit()
    except IntegrityError:  # a concurrent request took the name between the check and the insert
        session.rollback()
        raise Conflict(f"a stream named {name!r} already exists", param="name") from None
    return stream


def _check_targets(model: str, targets: Collection[str], linear_names: Callable[[str], Collection[str]]) -> None:
    try:
        names = linear_names(model)
    except (OSError, ValueError) as exc:  # a configured model whose files cannot be read
        raise Invalid(f"base model {model!r} cannot be read: {exc}", param="base_model") from None
    unknown = [t for t in targets if t not in names]
    if unknown:
        raise Invalid(
            f"lora.target_modules: {', '.join(map(repr, unknown))} is not a Linear layer of {model!r}; "
            f"it has {', '.join(sorted(names))}",
            param="lora.target_modules",
        )


def get_stream(*, session: Session, stream_id: str) -> Stream:
    """By id or by name; an id wins (no name looks like an id: `common.check_name`, but rows
    older than that rule may)."""
    stream = session.scalar(
        select(Stream)
        .where(or_(Stream.id == stream_id, Stream.name == stream_id))
        .order_by(case((Stream.id == stream_id, 0), else_=1))
        .limit(1)
    )
    if stream is None:
        raise NotFound(f"no stream {stream_id!r}", param="stream_id")
    return stream


def list_streams(*, session: Session, after: str | None, limit: int) -> tuple[list[Stream], bool]:
    return page(session, select(Stream), Stream.id, after=after, limit=limit)
