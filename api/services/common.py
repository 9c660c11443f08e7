"""Helpers the service functions share: cursor pagination and name checks."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Select
from sqlalchemy.orm import Session

from ..errors import Invalid

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # also the request schemas' pattern
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # matched whole (fullmatch): no trailing newline
# ids are `str_`, `tsk_` or `job_` and 22 hex digits (models.new_id): a name of that shape could
# be another row's id, and streams and tasks are looked up by id or name
ID_LIKE = re.compile(r"(str|tsk|job)_[0-9a-f]{22}", re.IGNORECASE)
MAX_LIMIT = 100


def check_name(value: Any, param: str = "name", reserved: tuple[str, ...] = ()) -> str:
    """A stream or task name: 1-64 letters, digits, '.', '_' or '-', starting with a letter or
    digit; never the shape of an id, nor one of `reserved` (e.g. "auto" for tasks)."""
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise Invalid(
            f"{param} must be 1-64 characters of letters, digits, '.', '_' or '-', starting with a letter or digit",
            param=param,
        )
    if ID_LIKE.fullmatch(value):
        raise Invalid(f"{param} must not look like an id (str_, tsk_ or job_ and 22 hex digits)", param=param)
    if value in reserved:
        raise Invalid(f"{param} {value!r} is reserved", param=param)
    return value


def page(
    session: Session, query: Select[Any], id_col: Any, *, after: Any, limit: int, newest_first: bool = False
) -> tuple[list[Any], bool]:
    """Rows after the cursor `after` (an id), in id order (ids are time-ordered, so oldest first;
    `newest_first`: the reverse, and "after" means older): (rows, has_more)."""
    if not 1 <= limit <= MAX_LIMIT:
        raise Invalid(f"limit must be between 1 and {MAX_LIMIT}", param="limit")
    if after is not None:
        query = query.where(id_col < after if newest_first else id_col > after)
    rows = list(session.scalars(query.order_by(id_col.desc() if newest_first else id_col).limit(limit + 1)))
    return rows[:limit], len(rows) > limit
