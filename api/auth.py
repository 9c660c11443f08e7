"""Who is asking: a request's bearer key, checked before anything of its body is read.

`Authenticate` (pure ASGI middleware) decides, per path, whether a key is needed, looks the key up
(`services.keys.authenticate`, in a thread: one indexed read) and puts the caller in the request's
state; a request that needs a key and has none, or a bad one, gets 401 with `WWW-Authenticate:
Bearer` at once, so a cross-origin form (which cannot carry the header) is refused before its
upload is parsed. Routes take the caller through `CallerDep` (or `AdminDep`), which also declares
the bearer scheme in the OpenAPI spec. With authentication off every request is the admin.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

import anyio.to_thread
from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic.json_schema import models_json_schema
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from .db import session_factory
from .errors import Forbidden, InvalidToken, Unauthorized, wire_error
from .schemas import ERRORS, ErrorOut
from .services.keys import authenticate
from .services.owners import ADMIN, Caller
from .settings import Settings

log = logging.getLogger(__name__)
Access = Literal["public", "page", "key"]
DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
PUBLIC_PREFIXES = ("/static/", "/static-offline-docs/")  # the page's script and style, Swagger UI's
BEARER = HTTPBearer(
    auto_error=False,  # the middleware has answered already; this declares the scheme in the spec
    scheme_name="api_key",
    description="an API key (`tlk_...`, or the admin key), as `Authorization: Bearer <key>`",
)
MISSING = "missing API key: send 'Authorization: Bearer <key>'"
UNAUTHORIZED = {
    "description": ERRORS[401],
    "headers": {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}},
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}},
}
ERROR_SCHEMAS = models_json_schema([(ErrorOut, "serialization")], ref_template="#/components/schemas/{model}")[1][
    "$defs"
]


def access(settings: Settings, path: str) -> Access:
    """What a path needs: nothing (health checks, static files, the docs and metrics when
    public), a key if one is sent (the web page, which asks for one when none is), or a key."""
    if path in ("/healthz", "/readyz") or path.startswith(PUBLIC_PREFIXES):
        return "public"
    if path in DOCS_PATHS:
        return "public" if settings.public_docs else "key"
    if path == "/metrics":
        return "public" if settings.public_metrics else "key"
    if path == "/" or path.startswith("/streams/"):
        return "page"
    return "key"


def bearer_token(header: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header (its form is checked on lookup)."""
    if header is None:
        raise Unauthorized(MISSING)
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        raise InvalidToken("the Authorization header must be 'Bearer <key>'")
    token = token.strip(" ")
    if not token:
        raise InvalidToken("the Authorization header has no key after 'Bearer'")
    return token


class Authenticate:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings
        self.admin_key = settings.admin_key.get_secret_value() if settings.admin_key is not None else None

    def _lookup(self, token: str) -> Caller:
        with session_factory(self.settings.db_url)() as session:
            return authenticate(session=session, token=token, admin_key=self.admin_key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        if not self.settings.auth:
            state["caller"] = ADMIN
            await self.app(scope, receive, send)
            return
        need = access(self.settings, scope["path"])
        header = Headers(scope=scope).get("authorization")
        if need == "public" or (need == "page" and header is None):
            state["caller"] = None
            await self.app(scope, receive, send)
            return
        try:
            state["caller"] = await anyio.to_thread.run_sync(self._lookup, bearer_token(header))
        except Unauthorized as exc:
            body = wire_error(scope["path"], exc.status, exc.code, exc.message)  # OpenAI's shape on its routes
            await JSONResponse(body, status_code=exc.status, headers=exc.headers)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def declare_auth(spec: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI spec with a 401 (the error shape, `WWW-Authenticate: Bearer`) on every
    operation that takes the bearer key and does not declare its own."""
    for item in spec.get("paths", {}).values():
        for op in item.values():
            if isinstance(op, dict) and op.get("security"):
                op.setdefault("responses", {}).setdefault("401", UNAUTHORIZED)
    spec.setdefault("components", {}).setdefault("schemas", {}).update(
        {name: model for name, model in ERROR_SCHEMAS.items() if name not in spec["components"]["schemas"]}
    )
    return spec


def page_caller(request: Request) -> Caller | None:
    """The caller of a web page: None when authentication is on and no key was sent."""
    caller: Caller | None = getattr(request.state, "caller", None)
    return caller


def get_caller(request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> Caller:
    caller = page_caller(request)
    if caller is None:  # a route reached without the middleware's say (it answers 401 itself)
        raise Unauthorized(MISSING)
    return caller


def get_admin(caller: Annotated[Caller, Depends(get_caller)]) -> Caller:
    if not caller.is_admin:
        raise Forbidden("only the admin key may do this")
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]
AdminDep = Annotated[Caller, Depends(get_admin)]
PageCallerDep = Annotated[Caller | None, Depends(page_caller)]
