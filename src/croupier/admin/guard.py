"""What the admin API refuses before a route, or FastAPI, reads a byte of a body.

FastAPI reads and parses a body before it runs the dependencies that check the token, so a
route-level check lets anyone make the process hold whatever they send (with `workers = 1`
that process is the data plane). This pure ASGI middleware runs first:
- a change (any method but GET, HEAD and OPTIONS) without the right bearer token gets 401
  from its headers alone;
- a body over `max_body` gets 413, from its Content-Length or as it streams, whoever sent it.
Either answer closes the connection, so the rest of the body is never read.
"""

from __future__ import annotations

import hmac
from typing import Final

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_BODY: Final = 65536
NEEDS_TOKEN: Final = "a change needs the admin token: Authorization: Bearer <token>"


def token_matches(authorization: str | None, token: str) -> bool:
    """Whether an Authorization value carries the bearer `token` (compared in constant time)."""
    if not authorization:
        return False
    scheme, _, credentials = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        credentials.strip().encode(), token.encode())


class AdminGuard:
    def __init__(self, app: ASGIApp, token: str, max_body: int = MAX_BODY) -> None:
        self.app = app
        self.token = token
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if scope["method"] not in SAFE_METHODS and not token_matches(
                headers.get("authorization"), self.token):
            await _refuse(scope, receive, send, 401, NEEDS_TOKEN,
                          {"WWW-Authenticate": "Bearer"})
            return
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await self._too_large(scope, receive, send)
            return
        # The body is read here, within the limit, and handed on whole: a limit enforced
        # inside the app's own reading would surface as a 500 from Starlette's error layer.
        body: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return                  # the client left
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await self._too_large(scope, receive, send)
                return
            body.append(chunk)
            more = message.get("more_body", False)
        await self.app(scope, _replay(b"".join(body), receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _refuse(scope, receive, send, 413,
                      f"a request body may hold at most {self.max_body} bytes")


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the app the body read already, then what the client does next
    (a disconnect)."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replay


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, detail: str,
                  headers: dict[str, str] | None = None) -> None:
    response = JSONResponse({"detail": detail}, status_code=status,
                            headers={**(headers or {}), "Connection": "close"})
    await response(scope, receive, send)
