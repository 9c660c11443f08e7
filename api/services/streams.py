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
from ..models import ADMIN_OWNER, Stream, new_id
from ..settings import Settings
from .common import check_name, page
from .owners import Caller, owned


def create_stream(
    *,
    session: Session,
    settings: Settings,
    caller: Caller,
    name: str,
    base_model: str | None = None,
    strategy: str = "treelora",
    config: dict[str, Any] | None = None,
    linear_names: Callable[[str], Collection[str]] | None = None,
) -> Stream:
    """A new stream, owned by `caller`. `linear_names(base_model)`, when given, lists the Linear
    layers the model has: `lora.target_modules` must name only those. Names are unique per owner.
    Two requests racing for one name: one gets the stream, the other a 409 (the unique constraint
    decides, not the check before it)."""
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
    taken = select(Stream.id).where(Stream.owner == caller.owner, Stream.name == name)
    if session.scalar(taken) is not None:
        raise Conflict(f"a stream named {name!r} already exists", param="name")
    stream = Stream(
        id=new_id("str"), name=name, owner=caller.owner, base_model=model, strategy=strategy, config=asdict(cfg)
    )
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


def get_stream(*, session: Session, stream_id: str, caller: Caller) -> Stream:
    """A stream `caller` sees, by id or by name; an id wins (no name looks like an id:
    `common.check_name`, but rows older than that rule may). Names are unique per owner: the
    admin's names resolve among its own streams first, then among everyone's, oldest first (name
    another key's stream by its id to be sure). A stream the caller does not see is "not found",
    as one that does not exist."""
    stream = session.scalar(
        owned(select(Stream), caller)
        .where(or_(Stream.id == stream_id, Stream.name == stream_id))
        .order_by(case((Stream.id == stream_id, 0), (Stream.owner == ADMIN_OWNER, 1), else_=2), Stream.id)
        .limit(1)
    )
    if stream is None:
        raise NotFound(f"no stream {stream_id!r}", param="stream_id")
    return stream


def list_streams(*, session: Session, caller: Caller, after: str | None, limit: int) -> tuple[list[Stream], bool]:
    """The streams `caller` sees: its own (the admin: all)."""
    return page(session, owned(select(Stream), caller), Stream.id, after=after, limit=limit)
