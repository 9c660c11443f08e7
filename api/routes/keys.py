"""API keys: the admin key creates, lists and revokes them (docs/security.md)."""

from __future__ import annotations

from fastapi import APIRouter

from ..auth import AdminDep
from ..deps import SessionDep
from ..params import Cursor, KeyId, Limit
from ..schemas import KeyCreate, KeyCreated, KeyOut, Page, errors
from ..services import keys

router = APIRouter(prefix="/v1/keys", tags=["keys"], responses=errors(401, 403, 422, 503))


@router.post("", status_code=201, response_model=KeyCreated, responses=errors(413))
def create_key(body: KeyCreate, session: SessionDep, _admin: AdminDep) -> KeyCreated:
    """A new key; the answer holds its secret, shown this once (only a hash is kept)."""
    key, secret = keys.create_key(session=session, name=body.name)
    return KeyCreated(**KeyOut.model_validate(key).model_dump(), secret=secret)


@router.get("", response_model=Page[KeyOut])
def list_keys(session: SessionDep, _admin: AdminDep, after: Cursor = None, limit: Limit = 20) -> Page[KeyOut]:
    rows, more = keys.list_keys(session=session, after=after, limit=limit)
    return Page(data=[KeyOut.model_validate(r) for r in rows], has_more=more)


@router.delete("/{key_id}", response_model=KeyOut, responses=errors(404))
def revoke_key(key_id: KeyId, session: SessionDep, _admin: AdminDep) -> KeyOut:
    """Revoke a key: its next request is refused (401). The streams it owns stay; the admin key sees them."""
    return KeyOut.model_validate(keys.revoke_key(session=session, key_id=key_id))
