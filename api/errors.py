"""Service errors: one shape on the wire, `{"error": {"code", "message", "param"?, "line"?}}`, and
OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, on the OpenAI-compatible routes.
Service functions raise these; the HTTP layer only maps them to a status and a JSON body."""

from __future__ import annotations

import re
from typing import Any

# the OpenAI-compatible routes (api/routes/openai_compat.py): their errors take OpenAI's shape
OPENAI_PATHS = re.compile(r"/v1/(models|completions|chat/completions)(/.*)?")


class ServiceError(Exception):
    status = 400
    code = "bad_request"
    headers: dict[str, str] = {}  # noqa: RUF012  (read only: extra response headers, e.g. WWW-Authenticate)

    def __init__(
        self, message: str, *, code: str | None = None, param: str | None = None, line: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.code
        self.param, self.line = param, line


def error_body(code: str, message: str, *, param: str | None = None, line: int | None = None) -> dict[str, Any]:
    """The one error shape on the wire; `param` and `line` appear only when known."""
    err: dict[str, Any] = {"code": code, "message": message}
    if param is not None:
        err["param"] = param
    if line is not None:
        err["line"] = line
    return {"error": err}


class Unauthorized(ServiceError):
    """No API key, or one that is not valid (unknown, revoked or malformed): RFC 6750's challenge."""

    status, code = 401, "unauthorized"
    headers = {"WWW-Authenticate": 'Bearer realm="treelora"'}  # noqa: RUF012


class InvalidToken(Unauthorized):
    """A key was sent but is not valid."""

    headers = {"WWW-Authenticate": 'Bearer realm="treelora", error="invalid_token"'}  # noqa: RUF012


class Forbidden(ServiceError):
    """A valid key asking for what only the admin key may do."""

    status, code = 403, "forbidden"


def openai_error_body(status: int, code: str, message: str, *, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape: the same status and code as the service's, and OpenAI's `type`."""
    kinds = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
    kind = kinds.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def wire_error(
    path: str, status: int, code: str, message: str, *, param: str | None = None, line: int | None = None
) -> dict[str, Any]:
    """The error body a request to `path` gets: OpenAI's shape on its routes, else the service's."""
    if OPENAI_PATHS.fullmatch(path):
        return openai_error_body(status, code, message, param=param)
    return error_body(code, message, param=param, line=line)


class Invalid(ServiceError):
    status, code = 422, "invalid"


class NotFound(ServiceError):
    status, code = 404, "not_found"


class Conflict(ServiceError):
    status, code = 409, "conflict"


class TooLarge(ServiceError):
    status, code = 413, "too_large"


class Gone(ServiceError):
    status, code = 410, "gone"


class Unsupported(ServiceError):
    """A request parameter this service does not implement (OpenAI's `logprobs`, say)."""

    status, code = 400, "unsupported_parameter"


class Internal(ServiceError):
    """The service failed, not the request; the cause is logged where it happened."""

    status, code = 500, "internal"
