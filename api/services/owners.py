"""Who is asking, and which streams they see. Every stream belongs to the key that created it
(`Stream.owner`); a key sees its own streams and what hangs off them (tasks, jobs, events,
adapters, ...) and nothing else: another key's stream is "not found", never "forbidden", so
existence does not leak. The admin key (and every request when authentication is off) sees all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select

from ..models import ADMIN_OWNER, Stream


@dataclass(frozen=True)
class Caller:
    owner: str  # the caller's key id, or ADMIN_OWNER

    @property
    def is_admin(self) -> bool:
        return self.owner == ADMIN_OWNER


ADMIN = Caller(ADMIN_OWNER)  # the admin key; with authentication off, every request


def owned(query: Select[Any], caller: Caller) -> Select[Any]:
    """`query` (which selects from or joins `streams`) narrowed to the streams `caller` sees."""
    return query if caller.is_admin else query.where(Stream.owner == caller.owner)
