"""Errors the client raises. A response with an error status becomes an `APIError` subclass that
carries the service's body, `{"error": {"code", "message", "param"?, "line"?}}`; a request that
never got an answer is an `APIConnectionError` (or `APITimeoutError`), with no status."""

from __future__ import annotations

from typing import Any

import httpx


class APIError(Exception):
    """`status` (None when no response came), `code`, `message`, `param` and `line` (the bad
    record of an uploaded file) as the service sent them; `body` is the whole decoded body."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        param: str | None = None,
        line: int | None = None,
        body: Any = None,
        request: httpx.Request | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.status, self.code = message, status, code
        self.param, self.line, self.body, self.request = param, line, body, request

    def __str__(self) -> str:
        where = [f"{k} {v}" for k, v in (("status", self.status), ("code", self.code), ("param", self.param)) if v]
        return f"{self.message} ({', '.join(where)})" if where else self.message


class APIConnectionError(APIError):
    """The service could not be reached, or the connection broke before an answer came."""


class APITimeoutError(APIConnectionError):
    """No answer within the timeout."""


class BadRequestError(APIError):  # 400
    pass


class AuthenticationError(APIError):  # 401
    pass


class PermissionDeniedError(APIError):  # 403
    pass


class NotFoundError(APIError):  # 404
    pass


class ConflictError(APIError):  # 409: e.g. a task name already taken, cancelling a finished job
    pass


class GoneError(APIError):  # 410: e.g. a task retired from serving
    pass


class PayloadTooLargeError(APIError):  # 413
    pass


class UnprocessableEntityError(APIError):  # 422: invalid input, with `param` (and `line` for a file)
    pass


class RateLimitError(APIError):  # 429
    pass


class InternalServerError(APIError):  # 5xx
    pass


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    410: GoneError,
    413: PayloadTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def from_response(response: httpx.Response) -> APIError:
    """The error a non-2xx response stands for; a body that is not the service's shape (a proxy's
    page, say) still gives its status and the start of its text."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        message, code = err["message"], err.get("code")
        param, line = err.get("param"), err.get("line")
    else:
        text = response.text.strip()
        message = text[:300] or response.reason_phrase or f"HTTP {response.status_code}"
        code, param, line = "http_error", None, None
    status = response.status_code
    cls = _BY_STATUS.get(status, InternalServerError if status >= 500 else APIError)
    return cls(
        message,
        status=status,
        code=code,
        param=param,
        line=line,
        body=body if body is not None else response.text,
        request=response.request,
    )
