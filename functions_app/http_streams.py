"""Function URLs in RESPONSE_STREAM mode: the response goes out as the handler produces it.

A handler streams by yielding (or returning any iterator): each ``bytes`` or ``str`` item is sent to the client
as soon as it is produced; a first item that is a dict gives the response's ``statusCode``, ``headers`` and
``cookies`` (else 200, ``application/octet-stream``). A handler that returns a value is answered whole, as in
BUFFERED mode. The sandbox sends the items ahead of its result (functions_app/runtime), the worker puts them on
the call's reply key in order (``functions_app.lifecycle.CHUNK_MARKS``), and the web, waiting on that key, sends
each one on (``invocation_wait_async``). docs/http-endpoints.md describes it for users.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator

from redis.exceptions import RedisError

from console.exceptions import ServiceError
from console.redis import flag_set_async
from functions_app.http_events import HttpAnswer, MalformedResponse, stream_head
from functions_app.http_triggers import PendingCall, message_answer
from functions_app.invoke import Chunk, DatabaseRunner, InvokeAnswer, function_invoke, sync_call_accept, sync_call_await
from functions_app.lifecycle import REPLY_TTL_S, STREAM_GONE_KEY
from functions_app.models import Invocation, InvocationType

logger = logging.getLogger(__name__)
# Chunks the web holds for a client at most (each up to 1 MB; more wait in Redis, within the worker's backlog).
CHUNKS_AHEAD = 4


async def stream_answer_async(plan: PendingCall, *, db: DatabaseRunner) -> HttpAnswer:
    """The answer of a streamed call on an event loop: once its first chunk arrives, an answer whose body is the
    stream of the rest; a call that ends without a chunk (an error, a value returned) is answered whole."""
    arguments = plan.invoke_arguments()
    wait_s = arguments.pop("wait_s")
    try:
        invocation = await db(functools.partial(sync_call_accept, **arguments))
    except ServiceError as exc:
        return await db(functools.partial(plan.refused, exc))
    # Bounded: a client that reads slowly holds back the wait, then the worker, then the handler (backpressure).
    chunks: asyncio.Queue[Chunk | None] = asyncio.Queue(maxsize=CHUNKS_AHEAD)

    async def wait() -> InvokeAnswer:
        try:
            return await sync_call_await(invocation=invocation, db=db, wait_s=wait_s, on_chunk=chunks.put)
        finally:
            await chunks.put(None)  # the end, after every chunk

    waiting = asyncio.ensure_future(wait())
    first = await chunks.get()
    if first is None:
        await asyncio.wait({waiting})
        return await db(functools.partial(_whole_answer, plan, waiting))
    kind, body = first
    head, streamable = _head(invocation, body if kind == "prelude" else None)
    if not streamable:
        waiting.cancel()
    else:
        head.stream = ChunkStream([body] if kind == "data" else [], chunks, waiting, str(invocation.pk))
    return await db(functools.partial(plan.finish, head, invocation))


def _whole_answer(plan: PendingCall, waiting: asyncio.Future[InvokeAnswer]) -> HttpAnswer:
    try:
        invoked = waiting.result()
    except ServiceError as exc:
        return plan.refused(exc)
    return plan.answered(invoked)


def _head(invocation: Invocation, prelude: bytes | None) -> tuple[HttpAnswer, bool]:
    """The streamed response's status and headers, and True; or a 502 and False when the prelude cannot be a
    response (the reason recorded on the invocation)."""
    try:
        head, streamable = stream_head(prelude), True
    except MalformedResponse as exc:
        invocation.trigger = {**(invocation.trigger or {}), "error": str(exc)}
        head, streamable = message_answer(502, "Internal Server Error"), False
    head.headers.append(("X-Invocation-Id", str(invocation.pk)))
    return head, streamable


class ChunkStream:
    """The body of a streamed response: its first piece, then each data chunk as it arrives, until the call's
    reply. A call that fails once its response has begun cannot change the status any more: the stream ends with
    an error (``StreamBroken``), so that the server cuts the connection and the client sees the body incomplete."""

    def __init__(
        self, first: list[bytes], chunks: asyncio.Queue[Chunk | None], waiting: asyncio.Future, invocation_id: str
    ) -> None:
        self.sent = 0
        self._first, self._chunks, self._waiting, self._invocation_id = first, chunks, waiting, invocation_id

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self._first:
            yield piece
            self.sent += len(piece)
        while (chunk := await self._chunks.get()) is not None:
            kind, body = chunk
            if kind == "data" and body:
                yield body
                self.sent += len(body)
        await asyncio.wait({self._waiting})
        self._check_ended_well()

    def _check_ended_well(self) -> None:
        try:
            outcome = self._waiting.result().outcome
        except (ServiceError, asyncio.CancelledError) as exc:
            raise StreamBroken(f"invocation {self._invocation_id}: {exc}") from None
        if outcome is None or not outcome.finished or outcome.function_error or outcome.platform_error:
            error = outcome.error_type if outcome and outcome.finished else "the wait ended first"
            raise StreamBroken(f"invocation {self._invocation_id} failed after its response began ({error})")

    async def aclose(self) -> None:
        """The response is over: stop waiting, and should the client have left before its end, tell the worker
        (which then stops handing chunks on; the call runs on, and is recorded)."""
        if not self._waiting.done():
            self._waiting.cancel()
            with contextlib.suppress(RedisError):
                await flag_set_async(STREAM_GONE_KEY.format(id=self._invocation_id), REPLY_TTL_S)


class StreamBroken(Exception):
    """A streamed response's call failed after the response began."""


def stream_answer(plan: PendingCall) -> HttpAnswer:
    """A streamed call answered in this thread (the WSGI path: Django's test client, the development server):
    its chunks gathered into one body, then answered as one response; a call that fails is answered as a
    buffered call would be."""
    pieces: list[Chunk] = []
    try:
        invoked = function_invoke(
            invocation_type=InvocationType.SYNC, on_chunk=pieces.append, **plan.invoke_arguments()
        )
    except ServiceError as exc:
        return plan.refused(exc)
    outcome, invocation = invoked.outcome, invoked.invocation
    failed = outcome is None or not outcome.finished or outcome.function_error or outcome.platform_error
    if not pieces or failed or invocation is None:
        return plan.answered(invoked)
    prelude = pieces[0][1] if pieces[0][0] == "prelude" else None
    head, streamable = _head(invocation, prelude)
    if streamable:
        head.body = b"".join(body for kind, body in pieces if kind == "data")
    return plan.finish(head, invocation)
