"""API keys: created and revoked by the admin key, sent as `Authorization: Bearer <secret>`.

A secret is 256 random bits (`tlk_` + 43 URL-safe characters), shown once when its key is
created; only its sha256 is stored. A high-entropy secret needs no slow hash: its digest cannot
be inverted, and the lookup by digest leaks nothing about secrets that exist. The admin key comes
from the settings and is compared, digest to digest, in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..errors import InvalidToken, NotFound
from ..models import ApiKey, new_id, now
from .common import page
from .owners import ADMIN, Caller

SECRET_PREFIX = "tlk_"
KEY_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,63}$"  # also the request schema's pattern
KEY_NAME = re.compile(KEY_NAME_PATTERN.strip("^$"))
# RFC 6750's b64token, and no longer than any secret this service makes or accepts as admin key
TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")
MAX_TOKEN_CHARS = 256
SHOWN_CHARS = 8  # of a secret, kept as the key's prefix so people can tell keys apart


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(*, session: Session, name: str) -> tuple[ApiKey, str]:
    """A new key and its secret (the only time the secret is seen)."""
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        id=new_id("key"), name=name, prefix=secret[: len(SECRET_PREFIX) + SHOWN_CHARS], secret_sha256=digest(secret)
    )
    session.add(key)
    session.commit()
    return key, secret


def list_keys(*, session: Session, after: str | None, limit: int) -> tuple[list[ApiKey], bool]:
    return page(session, select(ApiKey), ApiKey.id, after=after, limit=limit)


def revoke_key(*, session: Session, key_id: str) -> ApiKey:
    """Revoke a key: from the next request on, its secret is refused (401). Its streams stay (the
    admin key still sees them). Revoking twice keeps the first time."""
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFound(f"no key {key_id!r}", param="key_id")
    if key.revoked_at is None:
        key.revoked_at = now()
        session.commit()
    return key


def authenticate(*, session: Session, token: str, admin_key: str | None) -> Caller:
    """The caller a bearer token stands for: the admin, or a key that is not revoked."""
    if len(token) > MAX_TOKEN_CHARS or not TOKEN.fullmatch(token):
        raise InvalidToken(f"malformed API key: at most {MAX_TOKEN_CHARS} characters of A-Z a-z 0-9 . _ ~ + / - =")
    d = digest(token)
    if admin_key is not None and hmac.compare_digest(d, digest(admin_key)):
        return ADMIN
    key = session.scalar(select(ApiKey).where(ApiKey.secret_sha256 == d))
    if key is None or key.revoked_at is not None or not hmac.compare_digest(key.secret_sha256, d):
        raise InvalidToken("invalid API key: unknown or revoked")
    return Caller(key.id)
