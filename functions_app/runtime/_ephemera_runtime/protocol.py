"""Length-prefixed framing shared by the worker, the zygote and the bootstrap.

A frame is a 4-byte big-endian length followed by that many bytes. Messages are
pairs of frames: a small JSON header, then a raw body (the event or the result),
so large payloads are never JSON-encoded twice.

Stdlib only: the worker imports it from the package, the sandbox from
/var/runtime/_ephemera_runtime.
"""

from __future__ import annotations

import json
import os
import struct

_HEADER = struct.Struct(">I")
MAX_FRAME = 64 << 20  # larger than any payload limit; guards against a corrupt length
RESPONSE_TOO_LARGE = "Function.ResponseSizeTooLarge"
# A streamed response's data travels in frames of at most this size, whatever the size of the item yielded.
CHUNK_MAX_BYTES = 1 << 20


def error(error_type: str, message: str, stack: list[str] | None = None) -> dict:
    """Lambda's error object, as a function's caller sees it."""
    return {"errorMessage": message, "errorType": error_type, "stackTrace": stack or []}


def response_too_large(size: int | None, limit: int) -> dict:
    """Lambda's error for an oversized result; ``size`` is None when the worker cut it off unmeasured."""
    measured = f" ({size} bytes)" if size is not None else ""
    message = f"Response payload size{measured} exceeded maximum allowed payload size ({limit} bytes)."
    return error(RESPONSE_TOO_LARGE, message)


class ProtocolError(Exception):
    """The peer sent something that is not a frame, or hung up mid-frame."""


class FrameTooLarge(ProtocolError):
    """A frame longer than the reader accepts; ``size`` is the length the peer declared."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds {limit}")
        self.size = size
        self.limit = limit


def encode(header: dict, body: bytes = b"") -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return _HEADER.pack(len(head)) + head + _HEADER.pack(len(body)) + body


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exact(fd: int, n: int) -> bytes:
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_message(fd: int) -> tuple[dict, bytes]:
    """Blocking read of one (header, body) pair; EOFError when the peer is gone."""
    frames = []
    for _ in range(2):
        (size,) = _HEADER.unpack(_read_exact(fd, 4))
        if size > MAX_FRAME:
            raise ProtocolError(f"frame of {size} bytes")
        frames.append(_read_exact(fd, size))
    return json.loads(frames[0]), frames[1]


class MessageBuffer:
    """Incremental decoder for a non-blocking reader (the worker side).

    ``max_header`` and ``max_body`` bound the frames of the next message: a frame
    declared longer is refused as soon as its length prefix arrives, so a hostile
    sandbox cannot make the worker hold a payload it will not accept anyway.
    """

    def __init__(self, max_header: int = MAX_FRAME, max_body: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self.max_header = max_header
        self.max_body = max_body

    def feed(self, data: bytes) -> None:
        self._buf += data
        self._check_lengths()

    def _check_lengths(self) -> None:
        if len(self._buf) < 4:
            return
        (head,) = _HEADER.unpack_from(self._buf, 0)
        if head > self.max_header:
            raise FrameTooLarge(head, self.max_header)
        if len(self._buf) >= 8 + head:
            (body,) = _HEADER.unpack_from(self._buf, 4 + head)
            if body > self.max_body:
                raise FrameTooLarge(body, self.max_body)

    def _frame_at(self, offset: int) -> tuple[bytes, int] | None:
        if len(self._buf) < offset + 4:
            return None
        (size,) = _HEADER.unpack_from(self._buf, offset)
        if size > MAX_FRAME:
            raise ProtocolError(f"frame of {size} bytes")
        end = offset + 4 + size
        if len(self._buf) < end:
            return None
        return bytes(self._buf[offset + 4 : end]), end

    def pop(self) -> tuple[dict, bytes] | None:
        head = self._frame_at(0)
        if head is None:
            return None
        body = self._frame_at(head[1])
        if body is None:
            return None
        del self._buf[: body[1]]
        try:
            return json.loads(head[0]), body[0]
        except ValueError as exc:
            raise ProtocolError("header is not JSON") from exc
