"""Which browser pages may call the API: an explicit CORS policy, none by default.

- **CORS**: with no `TREELORA_CORS_ORIGINS` (the default) no response carries any CORS header, so
  a page of another origin can read nothing the API answers (a preflight gets none of the allow
  headers and the browser stops there). Listed origins may call it with a bearer key (the
  `Authorization` header; no cookies are used, so no credentials mode).
- **Cross-origin writes** that need no preflight (an HTML form's POST, multipart included) are
  refused with 403 `cross_origin` when their `Origin` is neither the service's own host nor a
  listed origin, before the body is read. With authentication on such a form could not carry a
  key anyway (401); with it off this is what keeps a page on another site from posting training
  data to a service on the user's machine. Requests without `Origin` (curl, the SDK) are not
  browser pages and pass.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import error_body
from .settings import Settings

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ALLOW_HEADERS = ["authorization", "content-type", "accept", "last-event-id"]
EXPOSE_HEADERS = ["content-disposition", "x-tree-version", "www-authenticate"]


class CrossOriginWrites:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.allowed = app, frozenset(settings.cors_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            if origin is not None and origin not in self.allowed and urlsplit(origin).netloc != headers.get("host"):
                body = error_body("cross_origin", f"requests from pages of {origin[:100]!r} are not allowed")
                await JSONResponse(body, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def add_origin_policy(app: FastAPI, settings: Settings) -> None:
    """CrossOriginWrites inside, CORS (when origins are listed) outside it: a preflight is answered
    by CORS before any other check, and every answer to a listed origin carries its headers."""
    app.add_middleware(CrossOriginWrites, settings=settings)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=ALLOW_HEADERS,
            expose_headers=EXPOSE_HEADERS,
            allow_credentials=False,
            max_age=600,
        )
