"""Reading a request and sending a response in plain ASGI, for what the web serves outside Django's handler
(console/asgi.py, functions_app/http_asgi.py, functions_app/invoke_asgi.py)."""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable, Mapping
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]


async def body_read(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None once it is over ``limit`` bytes (the rest is not read)."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(parts)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


async def response_send(send: Send, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
    """A whole response: header text goes out as UTF-8, and its length is the body's."""
    encoded = [(name.lower().encode("latin-1"), value.encode()) for name, value in headers]
    encoded.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": encoded})
    await send({"type": "http.response.body", "body": body})


async def response_stream_send(
    send: Send, status: int, headers: list[tuple[str, str]], pieces: AsyncIterable[bytes]
) -> None:
    """A response whose body is sent piece by piece as ``pieces`` produces it (chunked: no length). Should
    ``pieces`` raise, the response is left incomplete, so that the server closes the connection without the last
    chunk and the client knows the body is cut short."""
    encoded = [(name.lower().encode("latin-1"), value.encode()) for name, value in headers]
    await send({"type": "http.response.start", "status": status, "headers": encoded})
    async for piece in pieces:
        await send({"type": "http.response.body", "body": piece, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
