"""An invocation's life on the worker's side: claim, run through the executor, complete, and every other way a row
leaves RUNNING (requeue, reclaim, expiry, platform failures). Every write here is fenced.

A claim is a compare-and-set on ``attempt``; completion is written only while that attempt still holds the row (the
fence), so a duplicate, late or zombie delivery never produces a second visible result. A running attempt holds a
lease its worker renews (functions_app.worker); the sweeper takes back what a dead or paused worker held. The
states and the guarantees are drawn in docs/architecture.md.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol, cast

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone
from redis.exceptions import RedisError

from console.redis import redis_client
from functions_app import concurrency
from functions_app.accept import invocation_publish, slot_hold_s
from functions_app.destinations import destination_deliver
from functions_app.models import DeadLetterCondition, Function, Invocation, InvocationStatus, InvocationType
from functions_app.outages import database_retry
from functions_app.runtime import (
    INIT_TIMEOUT_S,
    SYNC_RESPONSE_MAX_BYTES,
    CapacityError,
    FunctionSpec,
    InvokeRequest,
    InvokeResult,
)
from functions_app.worker import configs, function_spec, host_name, leases
from metrics_app.pricing import invocation_cost
from metrics_app.services import invocation_record

logger = logging.getLogger(__name__)


# Lambda's response limit, for async calls too (a result past it is Function.ResponseSizeTooLarge, never stored);
# an async result reaches a destination inside its record, which destination_payload keeps within 1 MB.
RESPONSE_MAX_BYTES = SYNC_RESPONSE_MAX_BYTES
LOG_TAIL_BYTES = 4096  # Lambda's LogType=Tail
REPLY_KEY = "ephemera:reply:{id}"
REPLY_TTL_S = 120
# A streamed call's chunks go ahead of its reply on the reply key, in order, each behind a mark no JSON reply
# starts with: "\0P" the response's prelude (status, headers, cookies as JSON), "\0D" a piece of its body.
CHUNK_MARKS = {"prelude": b"\x00P", "data": b"\x00D"}
# Set by the web when a streamed call's client has left: the worker stops handing its chunks on.
STREAM_GONE_KEY = "ephemera:reply:{id}:gone"
# A streamed call's chunks waiting for its client at most (each up to 1 MB): past it the worker stops reading the
# sandbox until the client catches up, so the handler waits at its next yield (backpressure, end to end).
STREAM_BACKLOG_MAX = 8
STREAM_BACKLOG_POLL_S = 0.01
WORKER_LOST = "Platform.WorkerLost"
EXECUTOR_FAILED = "Platform.ExecutorError"
# Deliveries the claim turned away (duplicates, late redeliveries): a counter for operators and tests.
SKIPPED_DELIVERIES_KEY = "ephemera:stats:skipped_deliveries"
_STATUS_BY_RESULT = {"succeeded": InvocationStatus.SUCCEEDED, "timed_out": InvocationStatus.TIMED_OUT}


@dataclass(frozen=True)
class InvocationOutcome:
    """What a synchronous caller gets back: from the worker's reply, or from the row."""

    invocation_id: str
    status: str
    executed_version: str
    result: str
    function_error: bool
    error_type: str
    log_tail: str
    is_cold: bool
    duration_ms: float | None
    # The worker's side of the call, for the caller's Server-Timing (see RunTimings.phases); empty from the row.
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status not in (InvocationStatus.QUEUED, InvocationStatus.RUNNING)

    @property
    def platform_error(self) -> bool:
        """The platform failed the call (the worker was lost, the executor broke): not the function's error."""
        return self.error_type.startswith("Platform.")


def outcome_from_row(invocation: Invocation) -> InvocationOutcome:
    return InvocationOutcome(
        invocation_id=str(invocation.id),
        status=invocation.status,
        executed_version=invocation.executed_version,
        result=invocation.result,
        function_error=invocation.function_error,
        error_type=invocation.error_type,
        log_tail=invocation.log.encode()[-LOG_TAIL_BYTES:].decode("utf-8", errors="ignore"),
        is_cold=invocation.is_cold,
        duration_ms=invocation.duration_ms,
    )


class Capacity(Protocol):
    """What the claim asks of the executor before it takes work."""

    def has_room(self, memory_mb: int) -> bool: ...

    def can_ever_host(self, memory_mb: int) -> bool: ...


class ExecutorHost(Capacity, Protocol):
    """The executor as the lifecycle uses it (functions_app.runtime.Executor; a fake one in the tests)."""

    def invoke(self, spec: FunctionSpec, request: InvokeRequest) -> InvokeResult: ...


def invocation_claim_sync(*, invocation_id: str, host: str, capacity: Capacity) -> Invocation | None:
    """Claim a synchronous call the way most are claimed: one conditional UPDATE … RETURNING the row, where the
    general claim reads it first. It matches only the plain case (queued, due, attempts left, still within the
    slot taken at the door); anything else (a duplicate, a late or unusual delivery) takes the general claim.
    A host without room learns it after the claim, which for a sync call ends the same way: refused, terminal.
    """
    now = timezone.now()
    claimed = list(Invocation.objects.raw(_claim_sync_sql(), _claim_sync_params(invocation_id, host, now)))
    if not claimed:
        return invocation_claim(invocation_id=invocation_id, host=host, capacity=capacity)
    invocation = claimed[0]
    _take_over(claimed)
    try:
        if not capacity.can_ever_host(invocation.memory_mb):
            _fail_too_large(invocation, _own_fence(invocation))
            leases.remove(str(invocation.id))
            return None
        if not capacity.has_room(invocation.memory_mb):
            invocation_refuse_for_capacity(invocation=invocation, reason="every environment of the host is busy")
            leases.remove(str(invocation.id))
            return None
    except BaseException:
        leases.remove(str(invocation.id))
        raise
    return invocation


@functools.cache
def _claim_sync_sql() -> str:
    table = connection.ops.quote_name(Invocation._meta.db_table)
    # Only the models' own quoted table and column names are formatted in; every value is a parameter.
    return (
        f"UPDATE {table} SET status = %s, attempt = attempt + 1, lease_until = %s, started_at = %s, "  # noqa: S608
        "worker_host = %s "
        "WHERE id = %s AND status = %s AND invocation_type = %s AND queued_at > %s "
        f"AND attempt < max_attempts RETURNING {_returned_columns()}"
    )


def _claim_sync_params(invocation_id: str, host: str, now: datetime) -> list[Any]:
    at = connection.ops.adapt_datetimefield_value
    lease = now + timedelta(seconds=settings.LEASE_S)
    # Older calls take a fresh slot: the general claim. (A sync call is due when it is made: no `available_at` test,
    # which a web host's clock ahead of this one's would fail.)
    door_slot_from = now - timedelta(seconds=INIT_TIMEOUT_S)
    pk = Invocation._meta.pk.get_db_prep_value(uuid.UUID(invocation_id), connection)
    return [
        InvocationStatus.RUNNING.value,
        at(lease),
        at(now),
        host,
        pk,
        InvocationStatus.QUEUED.value,
        InvocationType.SYNC.value,
        at(door_slot_from),
    ]


def invocation_claim_events(*, invocation_ids: list[str], host: str) -> list[Invocation]:
    """Claim a batch of events in one conditional UPDATE … RETURNING, in the plain case: queued, due, attempts left,
    not past their maximum age (on PostgreSQL the rows another host is claiming are skipped, not waited for). The
    ids it does not match take the general claim. Admission to the function's concurrency comes after, just before
    each one runs (``_admitted_now``). The caller removes the leases taken here once it has run them."""
    if not invocation_ids:
        return []
    now = timezone.now()
    claimed = list(
        Invocation.objects.raw(_claim_events_sql(len(invocation_ids)), _claim_events_params(invocation_ids, host, now))
    )
    arrival = {invocation_id: position for position, invocation_id in enumerate(invocation_ids)}
    claimed.sort(key=lambda invocation: arrival[str(invocation.id)])  # RETURNING keeps no order; the lane's is FIFO
    _take_over(claimed)
    return claimed


def _take_over(claimed: list[Invocation]) -> None:
    """Rows a one-statement claim just took: from here each attempt is this worker's to finish, its lease renewed
    meanwhile, and its configuration attached (a database failing that read is waited for, as a result's write
    is). Should it fail after all, the leases are let go."""
    for invocation in claimed:
        leases.add(str(invocation.id), invocation.attempt)
    try:
        for invocation in claimed:
            attach = functools.partial(configs.attach, invocation, invocation.current_revision)
            database_retry(attach, what=f"Invocation {invocation.pk}")
    except BaseException:
        for invocation in claimed:
            leases.remove(str(invocation.id))
        raise


@functools.cache
def _claim_events_sql(count: int) -> str:
    quote = connection.ops.quote_name
    table = quote(Invocation._meta.db_table)
    ids = ", ".join(["%s"] * count)
    # The rows are found by their ids. `status || ''` keeps the planner off the status indexes, which it would
    # otherwise pick (SQLite does, having no statistics) and walk every queued row of a backlog for each batch.
    # Only the models' own quoted table and column names are formatted in; every value is a parameter.
    plain = (
        f"id IN ({ids}) AND status || '' = %s AND invocation_type = %s "
        "AND available_at <= %s AND attempt < max_attempts AND (expires_at IS NULL OR expires_at >= %s)"
    )
    if connection.vendor == "postgresql":  # rows another host is claiming are skipped, not waited for
        plain = f"id IN (SELECT id FROM {table} WHERE {plain} FOR UPDATE SKIP LOCKED)"  # noqa: S608
    return (
        f"UPDATE {table} SET status = %s, attempt = attempt + 1, lease_until = %s, started_at = %s, "  # noqa: S608
        f"worker_host = %s WHERE {plain} RETURNING {_returned_columns()}"
    )


def _claim_events_params(invocation_ids: list[str], host: str, now: datetime) -> list[Any]:
    at = connection.ops.adapt_datetimefield_value
    pk = Invocation._meta.pk
    return [
        InvocationStatus.RUNNING.value,
        at(now + timedelta(seconds=settings.LEASE_S)),
        at(now),
        host,
        *(pk.get_db_prep_value(uuid.UUID(invocation_id), connection) for invocation_id in invocation_ids),
        InvocationStatus.QUEUED.value,
        InvocationType.ASYNC.value,
        at(now + timedelta(seconds=CLOCK_SKEW_S)),
        at(now),
    ]


def _returned_columns() -> str:
    """The invocation's columns and its function's current revision (the configuration cache's key)."""
    quote = connection.ops.quote_name
    table, functions = quote(Invocation._meta.db_table), quote(Function._meta.db_table)
    # A concrete field always has a column (the stubs allow None for the others).
    columns = ", ".join(quote(cast(str, field.column)) for field in Invocation._meta.concrete_fields)
    # Only the models' own quoted table and column names are formatted in.
    return (
        f"{columns}, (SELECT revision_id FROM {functions} WHERE {functions}.id = {table}.function_id) "  # noqa: S608
        "AS current_revision"
    )


def invocation_claim(*, invocation_id: str, host: str, capacity: Capacity | None = None) -> Invocation | None:
    """Take the invocation for one attempt, or return None when it is not ours to run now.

    Of two deliveries racing for the same row exactly one compare-and-set on ``attempt`` matches. With
    ``capacity``, work that the host has no room for is refused before it is claimed (see
    ``_refused_for_capacity``), so a refusal never uses up an attempt.
    """
    # order_by() drops the model's default ordering: this is the hot path, and one row has no order.
    invocation = (
        Invocation.objects.filter(pk=invocation_id)
        # Fills the in-memory attribute the model declares (for the raw claim too); the plugin sees a clash.
        .annotate(current_revision=F("function__revision_id"))  # type: ignore[no-redef]
        .order_by()
        .first()
    )
    now = timezone.now()
    if invocation is None or not _claimable(invocation, now):
        return None
    configs.attach(invocation, invocation.current_revision)
    if invocation.expires_at and invocation.expires_at < now:
        invocation_expire(invocation=invocation)
        return None
    if invocation.attempt >= invocation.max_attempts:
        _finish_worker_lost(invocation)  # a poison message redelivered after its last attempt died
        return None
    if capacity is not None and _refused_for_capacity(invocation, capacity):
        return None
    if not _admitted_for_run(invocation, now):
        return None
    lease = now + timedelta(seconds=settings.LEASE_S)
    claimed = Invocation.objects.filter(
        Q(status=InvocationStatus.QUEUED) | Q(status=InvocationStatus.RUNNING, lease_until__lt=now),
        pk=invocation_id,
        attempt=invocation.attempt,
    ).update(
        status=InvocationStatus.RUNNING,
        attempt=invocation.attempt + 1,
        lease_until=lease,
        started_at=now,
        worker_host=host,
    )
    if not claimed:
        return None
    invocation.status, invocation.attempt, invocation.lease_until = (
        InvocationStatus.RUNNING,
        invocation.attempt + 1,
        lease,
    )
    invocation.started_at, invocation.worker_host = now, host
    return invocation


def _claimable(invocation: Invocation, now: datetime) -> bool:
    if invocation.status == InvocationStatus.QUEUED:
        # An early duplicate of a delayed retry waits for the sweeper; "early" allows for the web's clock running
        # a little ahead of this host's (ids arrive within a millisecond on the fast lane).
        return invocation.available_at <= now + timedelta(seconds=CLOCK_SKEW_S)
    return (
        invocation.status == InvocationStatus.RUNNING
        and invocation.lease_until is not None
        and (invocation.lease_until < now)
    )


def _refused_for_capacity(invocation: Invocation, capacity: Capacity) -> bool:
    """A function larger than the host's whole memory budget can never run here: a clear error at once, sync or
    async. One that does not fit now (every environment busy) is refused as a throttle: a sync caller hears it at
    once (429, retryable), an event waits in the queue; neither was claimed, so no attempt is used up."""
    fenced = _fence_as_read(invocation)
    if not capacity.can_ever_host(invocation.memory_mb):
        _fail_too_large(invocation, fenced)
        return True
    if capacity.has_room(invocation.memory_mb):
        return False
    invocation_record(event="throttled", function=invocation.function)
    if invocation.invocation_type == InvocationType.ASYNC:
        _requeue(invocation, fenced, delay_s=settings.THROTTLE_RETRY_S, error_type=CAPACITY_EXCEEDED)
    else:
        _finish_refused_sync(invocation, fenced, "every environment of the host is busy")
    return True


# How far the web's and the executor hosts' clocks may disagree before a just-made call looks not yet due.
CLOCK_SKEW_S = 1.0


def _fail_too_large(invocation: Invocation, fenced: dict[str, Any]) -> bool:
    """A function larger than a host's whole memory budget can never run: a clear platform error at once."""
    message = (
        f"This function needs {invocation.memory_mb} MB of memory, more than an executor host offers "
        "(RUNTIME_MEMORY_BUDGET_MB); lower its memory size or raise the hosts' budget."
    )
    return _finish_platform_failure(invocation, TOO_LARGE_FOR_HOSTS, message, fenced)


def _admitted_for_run(invocation: Invocation, now: datetime) -> bool:
    """Sync calls were admitted at the door (a long wait in the queue extends their slot); async events are
    admitted here, and an event over the limit waits in the queue and tries again, until its maximum age."""
    is_sync = invocation.invocation_type == InvocationType.SYNC
    if is_sync and (now - invocation.queued_at).total_seconds() < INIT_TIMEOUT_S:
        return True  # the slot taken at the door still covers the whole run
    try:
        admission = _slot_take(invocation)
    except RedisError as exc:
        # The row stays queued; the sweeper publishes it again once Redis is back (see _forget_lost_publishes).
        logger.warning("Invocation %s waits: its concurrency cannot be counted (%r)", invocation.pk, exc)
        return False
    if admission.admitted:
        return True
    invocation_record(event="throttled", function=invocation.function)
    fenced = _fence_as_read(invocation)
    _requeue(invocation, fenced, delay_s=settings.THROTTLE_RETRY_S, error_type=f"Throttled.{admission.reason}")
    return False


def _slot_take(invocation: Invocation) -> concurrency.Admission:
    """A concurrency slot for a run: an event's within its function's reservation and the account's limit; a sync
    call's (admitted at the door, its slot lapsed in a long wait) within the account's count only."""
    is_sync = invocation.invocation_type == InvocationType.SYNC
    return concurrency.slot_acquire(
        function_id=invocation.function_id,
        owner_id=invocation.owner_id,
        member=str(invocation.id),
        hold_s=slot_hold_s(invocation.timeout_s),
        reserved=None if is_sync else invocation.function.reserved_concurrency,
        account_limit=1 << 30 if is_sync else settings.ACCOUNT_CONCURRENCY_LIMIT,
    )


def _requeue(invocation: Invocation, fenced: dict[str, Any], *, delay_s: float, **fields: Any) -> bool:
    """Put the invocation back in the queue, due in ``delay_s``, if ``fenced`` still matches its row.

    Published at once (with a countdown, unless due now); should that message be lost, the sweeper publishes it once
    it is stale.
    """
    due = timezone.now() + timedelta(seconds=delay_s)
    requeued = bool(
        Invocation.objects.filter(**fenced).update(
            status=InvocationStatus.QUEUED, available_at=due, published_at=due, lease_until=None, **fields
        )
    )
    if requeued:
        sync = invocation.invocation_type == InvocationType.SYNC
        countdown = delay_s if delay_s > 0 else None  # due now: the fast lane, as a new call (a countdown is Celery's)
        _after_write(
            functools.partial(invocation_publish, invocation_id=str(invocation.id), sync=sync, countdown=countdown)
        )
    return requeued


@dataclass
class RunTimings:
    """Where a worker's time went on one call, handed to a synchronous caller with the outcome: wall-clock stamps
    of receipt and reply (the caller turns them into queue and reply transit), and the phases in between."""

    received_at: float = field(default_factory=time.time)
    mark: float = field(default_factory=time.perf_counter)
    spent_ms: dict[str, float] = field(default_factory=dict)

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.spent_ms[name] = (now - self.mark) * 1000
        self.mark = now

    def phases(self) -> dict[str, float]:
        self.lap("complete")
        return {"received_at": self.received_at, **self.spent_ms, "replied_at": time.time()}


def invocation_run(*, invocation_id: str, executor: ExecutorHost, sync: bool = False) -> Invocation | None:
    """Claim, execute in a sandbox, write the fenced result and answer a waiting caller. ``sync`` says the id came
    by a sync call's transport (the fast lane), where the one-statement claim is tried first."""
    timings = RunTimings()
    claim = invocation_claim_sync if sync else invocation_claim
    invocation = claim(invocation_id=invocation_id, host=host_name(), capacity=executor)
    if invocation is None:
        _count_skipped(invocation_id)
        return None
    timings.lap("claim")
    invocation.timings = timings
    leases.add(str(invocation.id), invocation.attempt)
    try:
        result = _execute(invocation, executor)
        if result is not None:
            # The run is over: its result is written even across a database restart (the lease stays renewed).
            database_retry(
                lambda: invocation_complete(invocation=invocation, result=result), what=f"Invocation {invocation.pk}"
            )
    finally:
        leases.remove(str(invocation.id))
    return invocation


def _count_skipped(invocation_id: str) -> None:
    logger.info("Invocation %s is not ours to run now (duplicate, finished or not due); skipped", invocation_id)
    with contextlib.suppress(RedisError):
        redis_client().incr(SKIPPED_DELIVERIES_KEY)


def _execute(invocation: Invocation, executor: ExecutorHost) -> InvokeResult | None:
    """Run a claimed attempt in a sandbox: its result, or None when the attempt ended otherwise (no room after all,
    the executor failed), which is then already written."""
    timings = getattr(invocation, "timings", None) or RunTimings()
    request = InvokeRequest(
        request_id=str(invocation.id),
        event=invocation.payload.encode(),
        invoked_function_arn=invocation.function_arn,
        attempt=invocation.attempt,
        client_context=invocation.client_context,
        response_max_bytes=RESPONSE_MAX_BYTES,
        on_chunk=_ChunkSender(invocation) if is_streamed(invocation) else None,
    )
    try:
        spec = function_spec(invocation)  # on a host's first call of new code: its download and extraction
        timings.lap("prepare")
        invocation.prepare_ms = timings.spent_ms["prepare"]
        result = executor.invoke(spec, request)
        timings.lap("run")
    except CapacityError as exc:
        refuse = functools.partial(invocation_refuse_for_capacity, invocation=invocation, reason=str(exc))
        database_retry(refuse, what=f"Invocation {invocation.pk}")
        return None
    except Exception as exc:  # preparing (the code store, unpacking) or the executor itself
        logger.exception("The executor failed invocation %s", invocation.pk)
        fail = functools.partial(invocation_fail_for_executor, invocation=invocation, error=exc)
        database_retry(fail, what=f"Invocation {invocation.pk}")
        return None
    return result


def is_streamed(invocation: Invocation) -> bool:
    """A synchronous call whose caller takes its response as it is produced (a RESPONSE_STREAM function URL)."""
    return invocation.invocation_type == InvocationType.SYNC and bool((invocation.trigger or {}).get("stream"))


class _ChunkSender:
    """Puts a streamed call's chunks on its reply key as the sandbox produces them, no further ahead of the client
    than STREAM_BACKLOG_MAX chunks: while the backlog is full it waits (and so does the handler), until the client
    catches up, leaves (then the rest is dropped, and the call runs on to its end), or the call's time is up.
    Should Redis fail, the rest of the stream is dropped too (the response ends short, logged)."""

    def __init__(self, invocation: Invocation) -> None:
        self.key = REPLY_KEY.format(id=invocation.id)
        self.gone_key = STREAM_GONE_KEY.format(id=invocation.id)
        self.deadline = time.monotonic() + invocation.timeout_s
        self.broken = False

    def __call__(self, kind: str, body: bytes) -> None:
        if self.broken:
            return
        pipeline = redis_client().pipeline(transaction=False)
        pipeline.rpush(self.key, CHUNK_MARKS[kind] + body)
        pipeline.expire(self.key, REPLY_TTL_S)
        try:
            backlog, _ = pipeline.execute()
            if backlog >= STREAM_BACKLOG_MAX:
                self._wait_for_the_client()
        except RedisError as exc:
            self.broken = True
            logger.warning("The stream of %s was cut short: Redis refused a chunk (%r)", self.key, exc)

    def _wait_for_the_client(self) -> None:
        client = redis_client()
        while time.monotonic() < self.deadline:
            if client.exists(self.gone_key):
                self.broken = True
                client.delete(self.key)  # what the client will never read
                return
            if client.llen(self.key) < STREAM_BACKLOG_MAX // 2:
                return
            time.sleep(STREAM_BACKLOG_POLL_S)


def invocation_run_events(*, invocation_ids: list[str], executor: ExecutorHost) -> None:
    """Events taken from the fast lane together: claimed in one statement, run in turn (each admitted to its
    function's concurrency just before it starts), and their results written in one transaction, so that a backlog
    costs two commits per batch rather than two per event. An id the batch claim does not match (a duplicate, a
    retry not yet due, an event past its maximum age) takes the general path."""
    claimed = invocation_claim_events(invocation_ids=invocation_ids, host=host_name())
    try:
        _run_claimed_events(claimed, executor)
    finally:
        for invocation in claimed:
            if invocation.status != InvocationStatus.QUEUED:  # an unclaimed one's lease is gone already
                leases.remove(str(invocation.id))
    ours = {str(invocation.id) for invocation in claimed}
    for invocation_id in invocation_ids:
        if invocation_id not in ours:
            run = functools.partial(invocation_run, invocation_id=invocation_id, executor=executor)
            database_retry(run, what=f"Invocation {invocation_id}")


# The work a batch may hold: a batch is sized so that its events take about this long together, a finished event's
# result waits at most this long for the next ones' (a worker lost meanwhile would run them again), and the events
# behind one that ran longer go back to the queue for the host's other threads rather than wait for this one.
EVENT_BATCH_BUDGET_S = 0.05


class _EventPace:
    """How long this host's events have lately taken to run (a moving average), which sizes the next batches: fast
    events go many at a time, slow ones one by one, so a batch never keeps the host's other threads idle."""

    def __init__(self) -> None:
        self.run_s = 0.0

    def record(self, seconds: float) -> None:
        self.run_s = 0.8 * self.run_s + 0.2 * seconds

    def batch_size(self) -> int:
        if self.run_s * settings.EVENT_BATCH_SIZE <= EVENT_BATCH_BUDGET_S:
            return settings.EVENT_BATCH_SIZE
        return max(1, int(EVENT_BATCH_BUDGET_S / self.run_s))


event_pace = _EventPace()


def _run_claimed_events(claimed: list[Invocation], executor: ExecutorHost) -> None:
    """Each claimed event in turn, its result held for the next runs' (up to EVENT_BATCH_BUDGET_S) and written
    with theirs; after a run longer than that, the events not yet started go back to the queue."""
    finished: list[tuple[Invocation, InvokeResult]] = []
    first_finished_at = 0.0
    for index, invocation in enumerate(claimed):
        if finished and time.monotonic() - first_finished_at >= EVENT_BATCH_BUDGET_S:
            _complete_together(finished)
            finished = []
        if not executor.can_ever_host(invocation.memory_mb):
            too_large = functools.partial(_fail_too_large, invocation, _own_fence(invocation))
            database_retry(too_large, what=f"Invocation {invocation.pk}")
            continue
        if not _admitted_now(invocation):
            continue
        invocation.started_at = timezone.now()  # it waited its turn in the batch: queue time, not overhead
        started = time.monotonic()
        result = _execute(invocation, executor)
        _release(invocation)  # its run is over: the next event of this function, in this batch too, may start
        invocation.slot_released = True
        event_pace.record(time.monotonic() - started)
        if result is not None:
            first_finished_at = first_finished_at if finished else time.monotonic()
            finished.append((invocation, result))
        if time.monotonic() - started > EVENT_BATCH_BUDGET_S:
            for waiting in claimed[index + 1 :]:
                database_retry(functools.partial(_unclaim, waiting, delay_s=0), what=f"Invocation {waiting.pk}")
            break
    if finished:
        _complete_together(finished)


def _admitted_now(invocation: Invocation) -> bool:
    """A claimed event within its function's reserved concurrency and the account's limit, or given back to the
    queue to try again shortly, its retry budget untouched (nothing ran)."""
    try:
        admission = _slot_take(invocation)
    except RedisError as exc:
        logger.warning("Invocation %s waits: its concurrency cannot be counted (%r)", invocation.pk, exc)
        unclaim = functools.partial(_unclaim, invocation, delay_s=settings.THROTTLE_RETRY_S)
        database_retry(unclaim, what=f"Invocation {invocation.pk}")
        return False
    if admission.admitted:
        return True
    invocation_record(event="throttled", function=invocation.function)
    unclaim = functools.partial(
        _unclaim, invocation, delay_s=settings.THROTTLE_RETRY_S, error_type=f"Throttled.{admission.reason}"
    )
    database_retry(unclaim, what=f"Invocation {invocation.pk}")
    return False


def _unclaim(invocation: Invocation, *, delay_s: float, error_type: str | None = None) -> bool:
    """Put back a claimed event that nothing was handed to, due in ``delay_s``, as it was before the claim: its
    attempt number too, so that neither its retry budget nor the attempt its handler sees counts a run that never
    happened (safe for fencing: this worker never writes for that attempt again, and whoever claims the row next
    takes the attempt afresh). ``error_type`` says why, if it is news."""
    fields: dict[str, Any] = {"attempt": F("attempt") - 1}
    if invocation.attempt == 1:
        fields.update(started_at=None, worker_host="")
    if error_type is not None:
        fields["error_type"] = error_type
    # Its lease goes first: once requeued, another thread of this host may claim it, under the same attempt number.
    leases.remove(str(invocation.id))
    requeued = _requeue(invocation, _own_fence(invocation), delay_s=delay_s, **fields)
    invocation.status = InvocationStatus.QUEUED  # not ours any more (or, if the fence failed, never was)
    return requeued


_deferred = threading.local()


def _complete_together(finished: list[tuple[Invocation, InvokeResult]]) -> None:
    """Write the results of several runs in one transaction; what follows each write (freeing its slot, answering,
    metering, publishing a retry) happens once the transaction has committed, as it would after a single write."""

    def write() -> list[Callable[[], object]]:
        _deferred.actions = []
        try:
            with transaction.atomic():
                for invocation, result in finished:
                    invocation_complete(invocation=invocation, result=result)
            return _deferred.actions
        finally:
            _deferred.actions = None

    for action in database_retry(write, what=f"{len(finished)} invocations"):
        action()


def _after_write(action: Callable[[], object]) -> None:
    """A write's side effects in Redis: at once, or after the transaction of ``_complete_together`` commits (a batch
    rolled back must neither answer, meter nor publish what it did not write)."""
    actions = getattr(_deferred, "actions", None)
    if actions is None:
        action()
    else:
        actions.append(action)


CAPACITY_EXCEEDED = "Throttled.ExecutorCapacityExceeded"
TOO_LARGE_FOR_HOSTS = "Platform.FunctionTooLarge"


def invocation_refuse_for_capacity(*, invocation: Invocation, reason: str) -> None:
    """The host had no room for another environment after all (the claim's check raced another call): nothing
    ran. A sync caller hears it at once as a throttle it may retry; an async event goes back to the queue, its
    attempt number moved on (fencing needs that) but not its retry budget."""
    fenced = _own_fence(invocation)
    invocation_record(event="throttled", function=invocation.function)
    if invocation.invocation_type == InvocationType.ASYNC:
        if _requeue(
            invocation,
            fenced,
            delay_s=settings.THROTTLE_RETRY_S,
            error_type=CAPACITY_EXCEEDED,
            max_attempts=F("max_attempts") + 1,  # the attempt number moves on (fencing); the budget does not
        ):
            _release(invocation)
        return
    _finish_refused_sync(invocation, fenced, reason)


def _finish_refused_sync(invocation: Invocation, fenced: dict[str, Any], reason: str) -> None:
    body = {"errorType": CAPACITY_EXCEEDED, "errorMessage": f"No executor capacity: {reason}.", "stackTrace": []}
    fields = {
        "status": InvocationStatus.FAILED,
        "finished_at": timezone.now(),
        "error_type": CAPACITY_EXCEEDED,
        "result": json.dumps(body),
        "lease_until": None,
    }
    _terminal_write(invocation, fenced, fields, DeadLetterCondition.RETRIES_EXHAUSTED, metered=False)


def invocation_complete(*, invocation: Invocation, result: InvokeResult) -> bool:
    """Write this attempt's outcome if it still holds the row (the fence); False for a zombie attempt.

    A failed async attempt with attempts left goes back to the queue after a backoff; anything else is final.
    """
    now, started_at = timezone.now(), invocation.started_at
    assert started_at is not None, "only a claimed invocation completes"  # every claim stamps started_at
    cost = invocation_cost(memory_mb=invocation.memory_mb, init_ms=result.init_ms, duration_ms=result.duration_ms)
    succeeded = result.status == "succeeded"
    retry = (
        not succeeded
        and invocation.invocation_type == InvocationType.ASYNC
        and invocation.attempt < invocation.max_attempts
        and not (invocation.expires_at and invocation.expires_at < now)
    )
    fields: dict[str, Any] = {
        "result": result.payload.decode("utf-8", errors="replace"),
        "function_error": not succeeded,
        "error_type": result.error_type or "",
        "log": invocation_log(invocation=invocation, result=result, billed_ms=cost.billed_ms),
        "is_cold": result.is_cold,
        "started_at": started_at,
        "queue_wait_ms": (started_at - invocation.queued_at).total_seconds() * 1000,
        "prepare_ms": invocation.prepare_ms,
        "overhead_ms": _overhead_ms(invocation, now - started_at, result),
        "init_ms": result.init_ms,
        "duration_ms": result.duration_ms,
        "billed_ms": cost.billed_ms,
        "peak_memory_mb": result.peak_memory_mb,
        "cpu_ms": result.cpu_ms,
        "environment_id": result.environment_id,
        "cost_usd": cost.total_usd,
        "cost_request_usd": cost.request_usd,
        "cost_run_usd": cost.run_usd,
        "cost_init_usd": cost.init_usd,
        "lease_until": None,
    }
    fenced = _own_fence(invocation)
    if not retry:
        fields.update(status=_STATUS_BY_RESULT.get(result.status, InvocationStatus.FAILED), finished_at=now)
        written = _terminal_write(invocation, fenced, fields, DeadLetterCondition.RETRIES_EXHAUSTED)
    else:
        backoff = settings.RETRY_BACKOFF_S * 2 ** (invocation.attempt - 1)
        written = _requeue(invocation, fenced, delay_s=backoff, **_without(fields, "lease_until"))
        if written:
            for name, value in fields.items():
                setattr(invocation, name, value)
            _after_write(functools.partial(_release, invocation))
            # Lambda bills every attempt, not only the last.
            _after_write(functools.partial(invocation_record, event="attempt_failed", invocation=invocation))
    if not written:
        logger.warning(
            "Invocation %s attempt %s lost its lease; its result is discarded", invocation.pk, invocation.attempt
        )
    return written


def _overhead_ms(invocation: Invocation, elapsed: timedelta, result: InvokeResult) -> float:
    elapsed_ms = elapsed.total_seconds() * 1000
    return max(elapsed_ms - (invocation.prepare_ms or 0.0) - result.init_ms - result.duration_ms, 0.0)


def _without(fields: dict[str, Any], *names: str) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if name not in names}


def invocation_log(*, invocation: Invocation, result: InvokeResult, billed_ms: int) -> str:
    """The sandbox's output between Lambda's START, END and REPORT lines (what `?log=tail` shows the end of)."""
    request_id = invocation.pk
    lines = [f"START RequestId: {request_id} Version: {invocation.executed_version}\n", result.log]
    if result.log and not result.log.endswith("\n"):
        lines.append("\n")
    if result.status == "timed_out":
        lines.append(
            f"{timezone.now():%Y-%m-%dT%H:%M:%S.%fZ} {request_id} Task timed out after "
            f"{invocation.timeout_s:.2f} seconds\n"
        )
    report = [
        f"REPORT RequestId: {request_id}",
        f"Duration: {result.duration_ms:.2f} ms",
        f"Billed Duration: {billed_ms} ms",
        f"Memory Size: {invocation.memory_mb} MB",
        f"Max Memory Used: {math.ceil(result.peak_memory_mb or 0)} MB",
    ]
    if result.is_cold:
        report.append(f"Init Duration: {result.init_ms:.2f} ms")
    lines += [f"END RequestId: {request_id}\n", "\t".join(report) + "\n"]
    return "".join(lines)


def _release(invocation: Invocation) -> None:
    try:
        concurrency.slot_release(
            function_id=invocation.function_id, owner_id=invocation.owner_id, member=str(invocation.id)
        )
    except RedisError as exc:  # the slot expires on its own (see functions_app.concurrency)
        logger.warning("Could not release the concurrency slot of %s (%r)", invocation.pk, exc)


def _terminal_write(
    invocation: Invocation,
    fenced: dict[str, Any],
    fields: dict[str, Any],
    failure_condition: str,
    *,
    metered: bool = True,
) -> bool:
    """Make the invocation terminal, if ``fenced`` still matches, together with its destination in one
    transaction: a worker dying in between can leave neither a result without its dead letter nor the reverse.
    ``terminal_writes`` counts these writes so that the chaos checker can prove there was exactly one.

    Then, after the commit: free the concurrency slot, answer a sync caller, and queue the metering (a crash
    between the commit and these loses at most one roll-up contribution, which rollups_rebuild repairs).
    """
    is_async = invocation.invocation_type == InvocationType.ASYNC
    # A sync call has no destination: its one UPDATE is its own transaction. (Inside _complete_together's
    # transaction this one joins it: a batch is written whole or not at all.)
    with transaction.atomic(savepoint=False) if is_async else contextlib.nullcontext():
        written = Invocation.objects.filter(**fenced).update(**fields, terminal_writes=F("terminal_writes") + 1)
        if not written:
            return False
        for name, value in fields.items():
            setattr(invocation, name, value)
        if is_async:
            succeeded = invocation.status == InvocationStatus.SUCCEEDED
            function = invocation.function
            destination_deliver(
                invocation=invocation,
                destination=function.on_success_destination if succeeded else function.on_failure_destination,
                condition="Success" if succeeded else failure_condition,
            )
    _after_write(functools.partial(_release_and_reply, invocation))
    if metered:
        _after_write(functools.partial(invocation_record, event="finished", invocation=invocation))
    return True


def _release_and_reply(invocation: Invocation) -> None:
    """Free the concurrency slot and hand a synchronous caller its outcome, in one round trip to Redis: the release
    first, so that a caller who calls again at once finds its slot free. The reply key expires if nobody waits;
    with Redis down the slot expires on its own and the caller reads the row, which is already written."""
    if invocation.slot_released and invocation.invocation_type == InvocationType.ASYNC:
        return  # freed when its run ended, and nobody waits on the line
    pipeline = redis_client().pipeline(transaction=False)
    concurrency.slot_release(
        function_id=invocation.function_id, owner_id=invocation.owner_id, member=str(invocation.id), pipeline=pipeline
    )
    if invocation.invocation_type == InvocationType.SYNC:
        outcome = outcome_from_row(invocation)
        if invocation.timings is not None:
            outcome = replace(outcome, phases=invocation.timings.phases())
        key = REPLY_KEY.format(id=invocation.id)
        pipeline.rpush(key, json.dumps(asdict(outcome)))
        pipeline.expire(key, REPLY_TTL_S)
    try:
        pipeline.execute()
    except RedisError as exc:
        logger.warning(
            "Could not release or answer invocation %s (%r); the slot expires, the row answers", invocation.pk, exc
        )


def invocation_expire(*, invocation: Invocation) -> bool:
    """An async event past its maximum age: EXPIRED without running, then to its failure destination."""
    fields = {
        "status": InvocationStatus.EXPIRED,
        "finished_at": timezone.now(),
        "error_type": "EventAgeExceeded",
        "lease_until": None,
    }
    fenced = {"pk": invocation.pk, "status": InvocationStatus.QUEUED}
    return _terminal_write(invocation, fenced, fields, DeadLetterCondition.EVENT_AGE_EXCEEDED)


def _fence_as_read(invocation: Invocation) -> dict[str, Any]:
    """The fence of a write to a row as another party read it (a redelivery, the sweeper, a waiting caller): its
    status and attempt unchanged and, if it was running, its lease still expired. A worker that was only slow
    renews its lease with its heartbeat; once it has, its attempt is live again and nobody else may end it."""
    fenced = {"pk": invocation.pk, "status": invocation.status, "attempt": invocation.attempt}
    if invocation.status == InvocationStatus.RUNNING:
        fenced["lease_until__lt"] = timezone.now()
    return fenced


def _own_fence(invocation: Invocation) -> dict[str, Any]:
    """The fence of a write by the worker running the attempt: the attempt still holds the row."""
    return {"pk": invocation.pk, "status": InvocationStatus.RUNNING, "attempt": invocation.attempt}


def _finish_worker_lost(invocation: Invocation) -> bool:
    message = "The worker running this invocation was lost."
    return _finish_platform_failure(invocation, WORKER_LOST, message, _fence_as_read(invocation))


def _finish_platform_failure(invocation: Invocation, error_type: str, message: str, fenced: dict[str, Any]) -> bool:
    """The platform, not the function, failed this attempt: a terminal error the caller can tell apart."""
    body = {"errorType": error_type, "errorMessage": message, "stackTrace": []}
    fields = {
        "status": InvocationStatus.FAILED,
        "finished_at": timezone.now(),
        "error_type": error_type,
        "result": json.dumps(body),
        "function_error": True,
        "lease_until": None,
    }
    return _terminal_write(invocation, fenced, fields, DeadLetterCondition.RETRIES_EXHAUSTED)


def invocation_fail_for_executor(*, invocation: Invocation, error: Exception) -> None:
    """The executor raised instead of answering (a bug, or the host out of a resource): the caller hears it now
    rather than at the end of the lease. An async event with attempts left is retried after the usual backoff."""
    message = f"The executor could not run this invocation: {error!r}"
    if invocation.invocation_type == InvocationType.ASYNC and invocation.attempt < invocation.max_attempts:
        backoff = settings.RETRY_BACKOFF_S * 2 ** (invocation.attempt - 1)
        if _requeue(invocation, _own_fence(invocation), delay_s=backoff, error_type=EXECUTOR_FAILED):
            _release(invocation)
        return
    _finish_platform_failure(invocation, EXECUTOR_FAILED, message, _own_fence(invocation))


def invocation_reclaim(*, invocation: Invocation, now: datetime) -> str:
    """A lease ran out: its worker died or stalled. Sync calls fail (no platform retries); async retry.

    The sweeper calls this for every expired lease, and a waiting sync caller for its own call (a deployment
    without a sweeper still answers its callers). Returns "requeued", "lost", or "raced" (someone else did it)."""
    if invocation.invocation_type == InvocationType.ASYNC and invocation.attempt < invocation.max_attempts:
        return "requeued" if _requeue(invocation, _fence_as_read(invocation), delay_s=0) else "raced"
    return "lost" if _finish_worker_lost(invocation) else "raced"
