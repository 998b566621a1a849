"""Length-prefixed framing shared by the worker, the zygote and the bootstrap.

A frame is a 4-byte big-endian length followed by that many bytes. Messages are
pairs of frames: a small JSON header, then a raw body (the event or the result),
so large payloads are never JSON-encoded twice.

Stdlib only, no package-relative imports: the zygote imports this module as a
top-level module under ``python3 -I -S``.
"""

from __future__ import annotations

import json
import os
import struct

_HEADER = struct.Struct(">I")
MAX_FRAME = 64 << 20  # larger than any payload limit; guards against a corrupt length


class ProtocolError(Exception):
    """The peer sent something that is not a frame, or hung up mid-frame."""


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
    """Incremental decoder for a non-blocking reader (the worker side)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

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
