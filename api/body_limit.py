"""A request body limit counted as the bytes arrive: a declared `Content-Length` over the limit is
refused before anything is read, and a chunked body (no length) is refused the moment it passes
the limit, so neither a JSON body nor an upload is ever read, parsed or spooled to disk beyond it.

The refusal is a 413 in the service's error shape (`too_large`) with `Connection: close`, so the
server stops reading the rest of the body. Task uploads (two files and the form fields) get
`2 * TREELORA_MAX_UPLOAD_BYTES + 1 MiB`; every other request `TREELORA_MAX_JSON_BYTES`.
"""

from __future__ import annotations

import json
import re

from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import wire_error
from .settings import Settings

UPLOAD_PATH = re.compile(r"/v1/streams/[^/]+/tasks/?")  # POST: multipart upload of a task


def upload_limit(settings: Settings) -> int:
    """Bytes of one task upload request at most: two files and the form fields around them."""
    return 2 * settings.max_upload_bytes + (1 << 20)


def limit_for(settings: Settings, method: str, path: str) -> int:
    if method == "POST" and UPLOAD_PATH.fullmatch(path):
        return upload_limit(settings)
    return settings.max_json_bytes


class BodyTooLarge(HTTPException):
    """Raised from `receive` once the body passes its limit: FastAPI lets an HTTPException out
    of body parsing unchanged, and the app's handler answers it in the one error shape."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than {limit} bytes")


class BodyLimit:
    """Pure ASGI middleware (it wraps `receive`; nothing is buffered here)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = limit_for(self.settings, scope["method"], scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _refuse(send, limit, scope["path"])  # nothing read: the client may stop sending
            return
        received, exceeded, started = 0, False, False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise BodyTooLarge(limit)
            return message

        async def closing_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if exceeded:  # the rest of the body is never read: end the connection after this
                    MutableHeaders(scope=message)["connection"] = "close"
            await send(message)

        try:
            await self.app(scope, limited_receive, closing_send)
        except BodyTooLarge:  # read where no handler answers it (outside a route's body parsing)
            if started:
                raise
            await _refuse(send, limit, scope["path"])


async def _refuse(send: Send, limit: int, path: str) -> None:
    body = json.dumps(wire_error(path, 413, "too_large", f"request body is larger than {limit} bytes")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
