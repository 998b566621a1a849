"""The one invoke service every caller uses (the REST API, the console's Test tab): accept, then, for a synchronous
call, wait for the outcome on the reply channel."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.conf import settings
from django.contrib.auth.models import User
from django.utils import timezone
from redis.exceptions import RedisError

from console.exceptions import OUTAGE_MESSAGE, ResourceNotFound, ServiceUnavailable
from console.redis import blocking_pop, blocking_pop_async
from console.timing import phase_record
from functions_app.accept import DRY_RUN, invocation_accept, invocation_validate, slot_hold_s
from functions_app.lifecycle import (
    CHUNK_MARKS,
    REPLY_KEY,
    InvocationOutcome,
    invocation_reclaim,
    outcome_from_row,
)
from functions_app.models import Function, Invocation, InvocationStatus, InvocationType
from functions_app.outages import DATABASE_ERRORS, database_unreachable, leases_settled

logger = logging.getLogger(__name__)
T = TypeVar("T")


def invocation_wait(
    *, invocation: Invocation, wait_s: float, on_chunk: Callable[[Chunk], None] | None = None
) -> InvocationOutcome:
    """Block on the invocation's reply key; past ``wait_s`` the caller gets its current state to poll.

    Between waits the caller checks the lease itself: if the worker died and no sweeper runs (a one-worker
    deployment), the caller still learns of it within a lease, not at the end of its wait. While Redis is down
    the row is polled instead (the worker writes it before it replies). The caller rides out a database restart
    (the worker retries its result until the database is back); once the database has been unreachable for a
    lease, or at the end of the wait, the caller gets 503 with the invocation's id, so that a retry can look the
    call up instead of running it twice. (``invocation_wait_async`` is the same wait for an event loop.)
    """
    waiter = _Waiter(invocation, wait_s)
    while (pop_s := waiter.pop_timeout()) is not None:
        try:
            reply = blocking_pop([waiter.key], pop_s)
        except RedisError as exc:
            time.sleep(waiter.reply_channel_down(exc))
            reply = None
        if reply is None:
            waiter.look_around()
        elif (chunk := chunk_from_reply(reply[1])) is None:
            return outcome_from_reply(reply[1])
        elif on_chunk is not None:
            on_chunk(chunk)
    return waiter.outcome()


async def invocation_wait_async(
    *, invocation: Invocation, wait_s: float, db: DatabaseRunner, on_chunk: ChunkTaker | None = None
) -> InvocationOutcome:
    """``invocation_wait`` for an event loop: the pops await Redis, and the reads of the row run through ``db``
    (a thread of the caller's choosing), so a waiting caller holds no thread and no database connection. A
    streamed call's chunks, which come ahead of its reply, go to ``on_chunk`` as they arrive."""
    waiter = _Waiter(invocation, wait_s)
    while (pop_s := waiter.pop_timeout()) is not None:
        try:
            reply = await blocking_pop_async([waiter.key], pop_s)
        except RedisError as exc:
            await asyncio.sleep(waiter.reply_channel_down(exc))
            reply = None
        if reply is None:
            await db(waiter.look_around)
        elif (chunk := chunk_from_reply(reply[1])) is None:
            return outcome_from_reply(reply[1])
        elif on_chunk is not None:
            await on_chunk(chunk)
    return await db(waiter.outcome)


DatabaseRunner = Callable[[Callable[[], T]], Awaitable[T]]
# A streamed call's chunk: its kind ("prelude" or "data") and bytes.
Chunk = tuple[str, bytes]
ChunkTaker = Callable[[Chunk], Awaitable[None]]
_CHUNK_KINDS = {mark: kind for kind, mark in CHUNK_MARKS.items()}


def chunk_from_reply(raw: bytes) -> Chunk | None:
    """A chunk of a streamed call, or None for the reply itself (which is JSON, never behind a chunk's mark)."""
    kind = _CHUNK_KINDS.get(raw[:2])
    return None if kind is None else (kind, raw[2:])


class _Waiter:
    """The decisions of a synchronous caller's wait (see ``invocation_wait``), apart from how it waits."""

    def __init__(self, invocation: Invocation, wait_s: float) -> None:
        self.invocation = invocation
        self.deadline = time.monotonic() + wait_s
        self.key = REPLY_KEY.format(id=invocation.id)
        self.unreachable_since: float | None = None

    def pop_timeout(self) -> float | None:
        """How long the next pop may wait, or None when the wait is over."""
        remaining = self.deadline - time.monotonic()
        if self.invocation.is_terminal or remaining <= 0:
            return None
        if self.unreachable_since is not None and time.monotonic() - self.unreachable_since >= settings.LEASE_S:
            return None
        return min(remaining, max(settings.LEASE_S, 0.5))

    def reply_channel_down(self, exc: RedisError) -> float:
        """How long to pause before reading the row instead (Redis is down)."""
        logger.warning("The reply channel of %s is unavailable (%r); polling the row instead", self.key, exc)
        return max(min(self.deadline - time.monotonic(), REPLY_POLL_S), 0.0)

    def look_around(self) -> None:
        """Between pops: reread the row, and take back a call whose worker's lease ran out."""
        if not _refresh_or_gone(self.invocation):
            self.unreachable_since = self.unreachable_since or time.monotonic()
            return
        self.unreachable_since = None
        invocation, now = self.invocation, timezone.now()
        if (
            invocation.status == InvocationStatus.RUNNING
            and invocation.lease_until
            and invocation.lease_until < now
            and leases_settled()
        ):
            invocation_reclaim(invocation=invocation, now=now)
            _refresh_or_gone(invocation)

    def outcome(self) -> InvocationOutcome:
        if self.unreachable_since is not None:
            raise ServiceUnavailable(
                f"{OUTAGE_MESSAGE} Invocation {self.invocation.pk} was accepted: read its result at "
                f"/api/v1/invocations/{self.invocation.pk}/ rather than invoking again.",
                details={"invocation_id": str(self.invocation.pk)},
            )
        return outcome_from_row(self.invocation)


# How often a sync caller reads the row while Redis (its reply channel) is down.
REPLY_POLL_S = 0.5


def outcome_from_reply(raw: bytes) -> InvocationOutcome:
    """The worker's reply, keeping only the fields this version knows: during a rolling deploy a worker of another
    version may send more (or fewer, defaulted) fields."""
    known = {field.name for field in dataclasses.fields(InvocationOutcome)}
    return InvocationOutcome(**{name: value for name, value in json.loads(raw).items() if name in known})


def _refresh_or_gone(invocation: Invocation) -> bool:
    """Reread the row; False while the database is unreachable."""
    try:
        invocation.refresh_from_db()
    except Invocation.DoesNotExist:
        # Deleting a function deletes its invocations, this one included.
        raise ResourceNotFound(
            f"The function was deleted while invocation {invocation.pk} was running; it has no result."
        ) from None
    except DATABASE_ERRORS as exc:
        logger.warning("Invocation %s: the database is unreachable (%r); waiting on", invocation.pk, exc)
        database_unreachable(exc)
        return False
    return True


def sync_wait_budget(invocation: Invocation) -> float:
    """How long a sync caller waits for its outcome before it is answered 202 (the call goes on): as long as its
    concurrency slot, and a sweep past that in which a lost worker's call is failed."""
    return min(slot_hold_s(invocation.timeout_s) + settings.SWEEP_INTERVAL_S, settings.SYNC_WAIT_MAX_S)


@dataclass(frozen=True)
class InvokeAnswer:
    """What an invoke gives its caller: no row for a dry run; the accepted row for an event; and for a synchronous
    call, its outcome as well (a finished one, or the current state of one that outlived the wait)."""

    invocation: Invocation | None
    outcome: InvocationOutcome | None = None


def function_invoke(
    *,
    owner: User,
    function: Function,
    qualifier: str,
    raw_payload: bytes,
    invocation_type: str,
    idempotency_key: str = "",
    client_context: str = "",
    trigger: dict[str, Any] | None = None,
    wait_s: float | None = None,
    on_chunk: Callable[[Chunk], None] | None = None,
) -> InvokeAnswer:
    """Accept the call and, for a synchronous one, wait for its outcome (see invocation_accept, invocation_wait),
    at most ``wait_s`` when given (an HTTP trigger's integration timeout; the call goes on past it), a streamed
    call's chunks handed to ``on_chunk`` meanwhile. A dry run is only validated: no invocation."""
    if invocation_type == DRY_RUN:
        invocation_validate(
            function=function, qualifier=qualifier, raw_payload=raw_payload, invocation_type=invocation_type
        )
        return InvokeAnswer(None)
    invocation = invocation_accept(
        owner=owner,
        function=function,
        qualifier=qualifier,
        raw_payload=raw_payload,
        invocation_type=invocation_type,
        idempotency_key=idempotency_key,
        client_context=client_context,
        trigger=trigger,
    )
    if invocation_type != InvocationType.SYNC:
        return InvokeAnswer(invocation)
    published_at, waited = time.time(), time.perf_counter()
    budget = sync_wait_budget(invocation)
    outcome = invocation_wait(
        invocation=invocation, wait_s=budget if wait_s is None else min(budget, wait_s), on_chunk=on_chunk
    )
    _record_wait_phases(outcome, published_at, (time.perf_counter() - waited) * 1000)
    return InvokeAnswer(invocation, outcome)


async def function_invoke_async(
    *,
    owner: User,
    function: Function,
    qualifier: str,
    raw_payload: bytes,
    db: DatabaseRunner,
    trigger: dict[str, Any] | None = None,
    wait_s: float | None = None,
) -> InvokeAnswer:
    """``function_invoke`` of a synchronous call for an event loop: accepted the same way (through ``db``, a
    thread of the caller's choosing), then awaited without holding a thread (``invocation_wait_async``)."""
    accept = functools.partial(
        sync_call_accept, owner=owner, function=function, qualifier=qualifier, raw_payload=raw_payload, trigger=trigger
    )
    invocation = await db(accept)
    return await sync_call_await(invocation=invocation, db=db, wait_s=wait_s)


def sync_call_accept(
    *,
    owner: User,
    function: Function,
    qualifier: str,
    raw_payload: bytes,
    trigger: dict[str, Any] | None = None,
    idempotency_key: str = "",
    client_context: str = "",
) -> Invocation:
    """The first half of ``function_invoke_async``: a synchronous call accepted (see invocation_accept)."""
    return invocation_accept(
        owner=owner,
        function=function,
        qualifier=qualifier,
        raw_payload=raw_payload,
        invocation_type=InvocationType.SYNC,
        trigger=trigger,
        idempotency_key=idempotency_key,
        client_context=client_context,
    )


async def sync_call_await(
    *, invocation: Invocation, db: DatabaseRunner, wait_s: float | None = None, on_chunk: ChunkTaker | None = None
) -> InvokeAnswer:
    """The second half of ``function_invoke_async``: the accepted call's outcome, awaited (at most ``wait_s``);
    a streamed call's chunks go to ``on_chunk`` meanwhile."""
    budget = sync_wait_budget(invocation)
    published_at, waited = time.time(), time.perf_counter()
    outcome = await invocation_wait_async(
        invocation=invocation, wait_s=budget if wait_s is None else min(budget, wait_s), db=db, on_chunk=on_chunk
    )
    _record_wait_phases(outcome, published_at, (time.perf_counter() - waited) * 1000)
    return InvokeAnswer(invocation, outcome)


def _record_wait_phases(outcome: InvocationOutcome, published_at: float, wait_ms: float) -> None:
    """The wait for a sync outcome, split by the worker's own account of it: the message's transit to the worker
    (queue), its claim, prepare, run and completion, and the reply's transit back. Without that account (an
    outcome read from the row) the wait is one phase."""
    worker = dict(outcome.phases)
    received_at, replied_at = worker.pop("received_at", None), worker.pop("replied_at", None)
    if received_at is None or replied_at is None:
        phase_record("wait", wait_ms)
        return
    # The worker may take the id before the web has returned from publishing it: that overlap is web time already
    # counted, taken off the worker's first phases, so that the phases add up to the request's time.
    overlap_ms = max(published_at - received_at, 0.0) * 1000
    phase_record("queue", (received_at - published_at) * 1000)
    for name, duration_ms in worker.items():
        counted = min(duration_ms, overlap_ms)
        overlap_ms -= counted
        phase_record(name, duration_ms - counted)
    phase_record("reply", (time.time() - replied_at) * 1000)
