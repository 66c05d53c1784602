"""Request body limits. Size: a body over ``settings.api_max_body_bytes`` (or a path's own limit, e.g.
``settings.api_max_batch_body_bytes`` for a batch of updates) gets 413, whether it announces its length
(refused before it is read) or streams chunked (refused once it passes). Time: a body that has not
arrived in full ``settings.api_body_timeout_s`` after the application started reading it (e.g. fewer
bytes than its Content-Length) gets 408 and the connection is closed, so a slow or stalled client cannot
hold a request open for ever."""

from __future__ import annotations

import asyncio
import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, per_path: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.per_path = per_path or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.per_path.get(scope["path"], self.max_bytes)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _reply(send, 400, "the Content-Length header is not a number")
                return
            if int(declared) > max_bytes:
                await _reply(send, 413, _too_large(int(declared), max_bytes))
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise HTTPException(413, _too_large(received, max_bytes))
            return message

        await self.app(scope, limited_receive, send)


def _too_large(size: int, max_bytes: int) -> str:
    return f"request body of {size} bytes or more is over the limit of {max_bytes} bytes"


class BodyReadTimeout:
    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline: float | None = None
        complete = False

        async def timed_receive() -> Message:
            nonlocal deadline, complete
            if complete:  # after the body, receive() waits for a disconnect: not limited
                return await receive()
            if deadline is None:
                deadline = asyncio.get_running_loop().time() + self.timeout_s
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise HTTPException(
                    408,
                    f"the request body did not arrive in full within {self.timeout_s:g} s",
                    headers={"Connection": "close"},
                ) from None
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, timed_receive, send)


async def _reply(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
