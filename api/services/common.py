"""Helpers the service functions share: cursor pagination and name checks."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Select
from sqlalchemy.orm import Session

from ..errors import Invalid

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_LIMIT = 100


def check_name(value: Any, param: str = "name") -> str:
    if not isinstance(value, str) or not NAME.match(value):
        raise Invalid(
            f"{param} must be 1-64 characters of letters, digits, '.', '_' or '-', starting with a letter or digit",
            param=param,
        )
    return value


def page(session: Session, query: Select[Any], id_col: Any, *, after: Any, limit: int) -> tuple[list[Any], bool]:
    """Rows after the cursor `after` (an id), in id order: (rows, has_more)."""
    if not 1 <= limit <= MAX_LIMIT:
        raise Invalid(f"limit must be between 1 and {MAX_LIMIT}", param="limit")
    if after is not None:
        query = query.where(id_col > after)
    rows = list(session.scalars(query.order_by(id_col).limit(limit + 1)))
    return rows[:limit], len(rows) > limit
