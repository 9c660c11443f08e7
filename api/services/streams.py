"""Streams: a continual-learning lineage (base model, strategy, config, its tree versions)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from sqlalchemy import or_, select
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
) -> Stream:
    check_name(name)
    model = base_model or settings.default_model
    if model not in settings.model_choices():
        choices = ", ".join(sorted(settings.model_choices()))
        raise Invalid(f"unknown base model {model!r}; this service offers: {choices}", param="base_model")
    try:
        cfg = config_from_dict({**(config or {}), "strategy": strategy})
    except ConfigError as exc:
        raise Invalid(str(exc), param=exc.param) from None
    if session.scalar(select(Stream.id).where(Stream.name == name)) is not None:
        raise Conflict(f"a stream named {name!r} already exists", param="name")
    stream = Stream(id=new_id("str"), name=name, base_model=model, strategy=strategy, config=asdict(cfg))
    session.add(stream)
    session.commit()
    return stream


def get_stream(*, session: Session, stream_id: str) -> Stream:
    """By id or by name."""
    stream = session.scalar(select(Stream).where(or_(Stream.id == stream_id, Stream.name == stream_id)))
    if stream is None:
        raise NotFound(f"no stream {stream_id!r}", param="stream_id")
    return stream


def list_streams(*, session: Session, after: str | None, limit: int) -> tuple[list[Stream], bool]:
    return page(session, select(Stream), Stream.id, after=after, limit=limit)
