"""API keys: the admin key creates, lists and revokes them (docs/security.md)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from ..auth import AdminDep
from ..deps import SessionDep
from ..schemas import KeyCreate, KeyCreated, KeyOut, Page, errors
from ..services import keys

router = APIRouter(prefix="/v1/keys", tags=["keys"], responses=errors(401, 403))
Limit = Annotated[int, Query(ge=1, le=100)]
KeyId = Annotated[str, Path(max_length=40, description="the key's id (key_...)")]


@router.post("", status_code=201, response_model=KeyCreated)
def create_key(body: KeyCreate, session: SessionDep, _admin: AdminDep) -> KeyCreated:
    """A new key; the answer holds its secret, shown this once (only a hash is kept)."""
    key, secret = keys.create_key(session=session, name=body.name)
    return KeyCreated(**KeyOut.model_validate(key).model_dump(), secret=secret)


@router.get("", response_model=Page[KeyOut])
def list_keys(session: SessionDep, _admin: AdminDep, after: str | None = None, limit: Limit = 20) -> Page[KeyOut]:
    rows, more = keys.list_keys(session=session, after=after, limit=limit)
    return Page(data=[KeyOut.model_validate(r) for r in rows], has_more=more)


@router.delete("/{key_id}", response_model=KeyOut)
def revoke_key(key_id: KeyId, session: SessionDep, _admin: AdminDep) -> KeyOut:
    """Revoke a key: its next request is refused (401). The streams it owns stay; the admin key sees them."""
    return KeyOut.model_validate(keys.revoke_key(session=session, key_id=key_id))
