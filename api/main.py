"""The FastAPI app: routers, the one error shape, request metrics. `uvicorn api.main:app`."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Scope

from .auth import Authenticate, declare_auth
from .body_limit import BodyLimit
from .db import database_unavailable
from .errors import ServiceError, wire_error
from .inference import Inference, widen_threadpool
from .live import LiveEvents
from .origins import add_origin_policy
from .routes import health, jobs, keys, openai_compat, pages, streams, trees
from .schemas import with_limits
from .settings import Settings, get_settings
from .storage import make_store

log = logging.getLogger(__name__)
HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "too_large", 415: "unsupported_media_type"}


def _error(
    request: Request,
    status: int,
    code: str,
    message: str,
    param: str | None = None,
    line: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The error in the shape the route speaks (`errors.wire_error`: OpenAI's on its routes)."""
    body = wire_error(request.url.path, status, code, message, param=param, line=line)
    return JSONResponse(body, status_code=status, headers=headers)


def allowed_methods(app: FastAPI, scope: Scope) -> str:
    """The methods the routes of this path take (each method is a route of its own)."""
    methods: set[str] = set()
    for route in app.routes:
        for r in getattr(getattr(route, "original_router", None), "routes", [route]):
            if getattr(r, "methods", None) and r.matches(scope)[0] != Match.NONE:
                methods |= r.methods
    return ", ".join(sorted(methods))


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        if not settings.auth:
            log.warning(
                "AUTHENTICATION IS OFF: every request acts as the admin (reads, uploads, deletes every "
                "stream). Fine for one person on this machine; anywhere else set TREELORA_AUTH=on and "
                "TREELORA_ADMIN_KEY (docs/security.md)."
            )
        app.state.settings = settings
        app.state.store = make_store(settings)
        app.state.inference = Inference(settings, app.state.store)
        app.state.live = LiveEvents(settings.db_url)  # one poller for every live event stream
        health.DB_COLLECTOR.settings = settings
        health.DB_COLLECTOR.inference = app.state.inference
        widen_threadpool()
        yield

    # /docs and /redoc with their scripts and styles served by the app: they work offline
    app = FastAPIOffline(
        title="TreeLoRA continual fine-tuning",
        version="0.1.0",
        description="POST tasks as they arrive; each is learned with TreeLoRA without forgetting the others.",
        lifespan=lifespan,
        swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from the validator's host
    )
    for r in (
        streams.router,
        trees.router,
        jobs.router,
        keys.router,
        openai_compat.router,
        health.router,
        pages.router,
    ):
        app.include_router(r)
    app.mount("/static", StaticFiles(directory=pages.STATIC_DIR), name="static")
    plain_openapi = app.openapi
    app.openapi = lambda: with_limits(declare_auth(plain_openapi()), settings)  # type: ignore[method-assign]

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return _error(request, exc.status, exc.code, exc.message, exc.param, exc.line, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        # a location is field names (and list indices); a JSON syntax error's position is not one
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
        if first.get("type") == "json_invalid":
            loc = []
        msg = first.get("msg", "invalid request")
        if first.get("type") == "missing":
            msg = f"missing required field {'.'.join(loc)!r}"
        return _error(request, 422, "invalid", msg, ".".join(loc) or None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # keeps the exception's headers (a 405's Allow, with every method the path takes)
        if exc.status_code == 400:
            # only body parsing raises these (FastAPI, Starlette's multipart parser): a broken form
            # is 422, as a JSON syntax error is
            why = exc.__cause__ or exc.detail
            return _error(request, 422, "invalid", f"the request body could not be parsed: {why}")
        if exc.status_code == 405:
            exc.headers = {**(exc.headers or {}), "Allow": allowed_methods(app, request.scope)}
        code = HTTP_CODES.get(exc.status_code, "http_error")
        return _error(request, exc.status_code, code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return _error(request, 500, "internal", "internal error; it has been logged")

    @app.exception_handler(SQLAlchemyError)
    async def database_error(request: Request, exc: SQLAlchemyError) -> JSONResponse:
        if not database_unavailable(exc):
            return await internal_error(request, exc)
        log.warning("database unavailable: %s", exc)  # a restart or an outage, not a bug: no traceback
        message = "the database is unavailable; try again shortly"
        return _error(request, 503, "database_unavailable", message, headers={"Retry-After": "5"})

    # request bodies counted as they arrive (Content-Length or chunked): 413 past the route's limit
    app.add_middleware(BodyLimit, settings=settings)
    # outside it: who is asking, before any of the body is read (401 without a valid key)
    app.add_middleware(Authenticate, settings=settings)
    # outside that: CORS (a preflight carries no key) and cross-origin form posts refused
    add_origin_policy(app, settings)

    @app.middleware("http")  # added after BodyLimit, so it runs outside it and counts its 413s
    async def observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        t0 = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        health.REQUESTS.labels(request.method, route, str(response.status_code)).inc()
        health.LATENCY.labels(route).observe(time.perf_counter() - t0)
        return response

    return app


app = create_app()
