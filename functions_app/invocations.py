"""Invocation services: accept (persist, then publish the id), claim, run through the executor, complete, sweep.

The database row is the source of truth and Celery only a doorbell (shared/reference/isolation-and-delivery.md
§7). A claim is a compare-and-set on ``attempt``; completion is written only while that attempt still holds the
row (the fence), so a duplicate, late or zombie delivery never produces a second visible result. A running
attempt holds a lease its worker renews; the sweeper takes back what a dead or paused worker held.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import DatabaseError, IntegrityError, InterfaceError, OperationalError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

from console.exceptions import (
    OUTAGE_MESSAGE,
    RequestTooLarge,
    ResourceConflict,
    ResourceNotFound,
    ServiceError,
    ServiceUnavailable,
    TooManyRequests,
)
from console.json_api import json_strict_loads
from console.processes import INVOCATION_QUEUE, SYNC_QUEUE
from console.redis import blocking_pop, redis_client
from functions_app import concurrency
from functions_app.code_storage import code_extracted_dir
from functions_app.models import (
    DEAD_LETTER,
    LATEST,
    DeadLetter,
    DeadLetterCondition,
    Function,
    Invocation,
    InvocationStatus,
    InvocationType,
    Version,
)
from functions_app.runtime import CapacityError, FunctionSpec, InvokeRequest, InvokeResult
from functions_app.secrets import env_decrypt
from functions_app.selectors import SWEPT_AT_KEY, qualifier_resolve
from metrics_app.services import (
    invocation_attempt_failed,
    invocation_finished,
    invocation_meter,
    invocation_throttled,
)

logger = logging.getLogger(__name__)

SYNC_PAYLOAD_MAX_BYTES = 6 * 1024 * 1024  # Lambda: 6 MB request and response (sync)
ASYNC_PAYLOAD_MAX_BYTES = 1024 * 1024  # Lambda: 1 MB (Event)
# Lambda's response limit, for async calls too (a result past it is Function.ResponseSizeTooLarge, never stored);
# an async result reaches a destination inside its record, which destination_payload keeps within 1 MB.
RESPONSE_MAX_BYTES = SYNC_PAYLOAD_MAX_BYTES
LOG_TAIL_BYTES = 4096  # Lambda's LogType=Tail
REPLY_KEY = "ephemera:reply:{id}"
REPLY_TTL_S = 120
INIT_GRACE_S = 10  # Lambda's init phase limit
SWEEP_BATCH = 500
WORKER_LOST = "Platform.WorkerLost"
EXECUTOR_FAILED = "Platform.ExecutorError"
# Deliveries the claim turned away (duplicates, late redeliveries): a counter for operators and tests.
SKIPPED_DELIVERIES_KEY = "ephemera:stats:skipped_deliveries"
DRY_RUN = "DryRun"

_STATUS_BY_RESULT = {"succeeded": InvocationStatus.SUCCEEDED, "timed_out": InvocationStatus.TIMED_OUT}


# ---- outages of the platform's own dependencies -----------------------------------------------------------

# What the database raises while it is unreachable (a restart, a failover, a broken connection).
DATABASE_ERRORS = (OperationalError, InterfaceError)
# How often a worker retries a write that an unreachable database refused.
DATABASE_RETRY_S = 0.5
# A finished run's result is worth waiting for: the worker retries its write this long before giving up (and
# leaving the invocation to its lease). A database restart takes seconds.
RESULT_WRITE_RETRY_MAX_S = 300.0
# Redis's identity (INFO run_id), as the sweeper last saw it: a different one means Redis restarted, and any
# message it held may be gone.
BROKER_RUN_ID_KEY = "ephemera:control:broker_run_id"

T = TypeVar("T")


class _OutageClock:
    """When this process last found the database unreachable. While no lease can be renewed, leases run out
    although their workers are fine: for a grace after an outage, an expired lease is not yet taken as a dead
    worker (the heartbeats renew them first; see ``leases_settled``)."""

    def __init__(self) -> None:
        self._last_failure = -math.inf

    def failed(self) -> None:
        self._last_failure = time.monotonic()

    def seconds_since(self) -> float:
        return time.monotonic() - self._last_failure


database_outage = _OutageClock()


def leases_settled() -> bool:
    """Whether an expired lease now means a dead or stalled worker: not within half a lease of this process
    seeing the database unreachable (a worker's heartbeat renews within a second of the database's return)."""
    return database_outage.seconds_since() > settings.LEASE_S / 2


def database_unreachable(exc: Exception) -> None:
    """Note an outage and drop this thread's connection, so that the next query opens a new one."""
    database_outage.failed()
    if not connection.in_atomic_block:
        with contextlib.suppress(DatabaseError):  # closing a dead socket may fail; it is dropped all the same
            connection.close()


def database_retry(action: Callable[[], T], *, what: str, give_up_s: float = RESULT_WRITE_RETRY_MAX_S) -> T:
    """``action()``, retried every DATABASE_RETRY_S while the database is unreachable, for up to ``give_up_s``."""
    deadline = time.monotonic() + give_up_s
    while True:
        try:
            return action()
        except DATABASE_ERRORS as exc:
            if time.monotonic() >= deadline:
                raise
            logger.warning("%s: the database is unreachable (%r); retrying", what, exc)
            database_unreachable(exc)
            time.sleep(DATABASE_RETRY_S)


class InvalidRequestContent(ServiceError):
    type = "InvalidRequestContent"


class IdempotencyConflict(ResourceConflict):
    type = "IdempotencyConflict"


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

    @property
    def finished(self) -> bool:
        return self.status not in (InvocationStatus.QUEUED, InvocationStatus.RUNNING)

    @property
    def platform_error(self) -> bool:
        """The platform failed the call (the worker was lost, the executor broke): not the function's error."""
        return self.error_type.startswith("Platform.")


# ---- accepting ----------------------------------------------------------------------------------------------


def payload_validate(raw: bytes, *, limit: int) -> str:
    """The event as JSON text: at most ``limit`` bytes, valid JSON, empty meaning ``{}`` (as Lambda)."""
    if len(raw) > limit:
        raise RequestTooLarge(f"The payload is {len(raw)} bytes; the limit is {limit} bytes.")
    if not raw.strip():
        return "{}"
    try:
        text = raw.decode("utf-8")
        json_strict_loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequestContent(f"The payload is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequestContent("The payload is nested too deeply to be read as JSON.") from None
    return text


def invocation_accept(
    *,
    owner: AbstractBaseUser,
    function: Function,
    qualifier: str,
    raw_payload: bytes,
    invocation_type: str,
    idempotency_key: str = "",
    chain_depth: int = 0,
) -> Invocation | None:
    """Validate, admit and persist an invocation, publishing its id after commit. None for a dry run.

    A repeated ``idempotency_key`` returns the invocation it first created (409 if the payload differs).
    ``chain_depth`` counts the destination hops that led to this call (see ``destination_deliver``).
    """
    is_async = invocation_type == InvocationType.ASYNC
    payload = payload_validate(raw_payload, limit=ASYNC_PAYLOAD_MAX_BYTES if is_async else SYNC_PAYLOAD_MAX_BYTES)
    target = qualifier_resolve(function=function, qualifier=qualifier or LATEST)
    if invocation_type == DRY_RUN:
        return None
    payload_sha = hashlib.sha256(payload.encode()).hexdigest()
    if idempotency_key:
        existing = _idempotent_match(owner, function, idempotency_key, payload_sha)
        if existing:
            return existing
    config = target.version or function
    invocation_id = uuid.uuid4()
    if not is_async:
        _admit_or_throttle(function, owner.pk, str(invocation_id), config.timeout_s)
    now = timezone.now()
    fields: dict[str, Any] = {
        "id": invocation_id,
        "owner": owner,
        "function": function,
        "version": target.version,
        "qualifier": target.qualifier,
        "config_revision": function.revision_id,
        "executed_version": target.version_label,
        "invocation_type": invocation_type,
        "payload": payload,
        "payload_sha256": payload_sha,
        "idempotency_key": idempotency_key,
        "memory_mb": config.memory_mb,
        "timeout_s": config.timeout_s,
        "chain_depth": chain_depth,
        "max_attempts": 1 + function.max_retry_attempts if is_async else 1,
        "expires_at": now + timedelta(seconds=function.max_event_age_s) if is_async else None,
        "queued_at": now,
        "available_at": now,
        "published_at": now,
    }
    try:
        with transaction.atomic():
            invocation = Invocation.objects.create(**fields)
            transaction.on_commit(lambda: invocation_publish(invocation_id=str(invocation_id), sync=not is_async))
    except IntegrityError:
        # Two requests raced with one idempotency key: the loser answers with the winner's invocation.
        concurrency.slot_release(function_id=function.pk, owner_id=owner.pk, member=str(invocation_id))
        existing = _idempotent_match(owner, function, idempotency_key, payload_sha)
        if existing is None:
            raise
        return existing
    return invocation


def _idempotent_match(owner: AbstractBaseUser, function: Function, key: str, payload_sha: str) -> Invocation | None:
    existing = Invocation.objects.filter(owner=owner, function=function, idempotency_key=key).first()
    if existing is not None and existing.payload_sha256 != payload_sha:
        raise IdempotencyConflict(
            "This Idempotency-Key was used with a different payload.", details={"invocation_id": str(existing.id)}
        )
    return existing


def _admit_or_throttle(function: Function, owner_id: int, member: str, timeout_s: int) -> None:
    admission = concurrency.slot_acquire(
        function_id=function.pk,
        owner_id=owner_id,
        member=member,
        hold_s=timeout_s + 2 * INIT_GRACE_S + settings.LEASE_S,
        reserved=function.reserved_concurrency,
        account_limit=settings.ACCOUNT_CONCURRENCY_LIMIT,
    )
    if not admission.admitted:
        invocation_throttled(function=function, reason=admission.reason)
        raise TooManyRequests(
            f"Rate exceeded: {admission.reason}.",
            details={"reason": admission.reason, "retry_after_s": 1},
            headers={"Retry-After": "1"},
        )


def invocation_publish(*, invocation_id: str, sync: bool = False, countdown: float | None = None) -> None:
    """Ring the doorbell. A sync call goes to the queue executors drain first, so that a caller waiting on the
    line never queues behind a backlog of events."""
    from functions_app.tasks import invocation_execute

    queue = SYNC_QUEUE if sync else INVOCATION_QUEUE
    try:
        invocation_execute.apply_async((invocation_id,), countdown=countdown, queue=queue)
    except (KombuOperationalError, RedisError, OSError) as exc:  # Redis is unreachable: an outage, not a bug
        logger.warning("Publishing invocation %s failed (%r); the sweeper will republish it", invocation_id, exc)
    except Exception:
        logger.exception("Publishing invocation %s failed; the sweeper will republish it", invocation_id)


def invocation_wait(*, invocation: Invocation, wait_s: float) -> InvocationOutcome:
    """Block on the invocation's reply key; past ``wait_s`` the caller gets its current state to poll.

    Between waits the caller checks the lease itself: if the worker died and no sweeper runs (a one-worker
    deployment), the caller still learns of it within a lease, not at the end of its wait. While Redis is down
    the row is polled instead (the worker writes it before it replies). The caller rides out a database restart
    (the worker retries its result until the database is back); once the database has been unreachable for a
    lease, or at the end of the wait, the caller gets 503 with the invocation's id, so that a retry can look the
    call up instead of running it twice.
    """
    deadline = time.monotonic() + wait_s
    key = REPLY_KEY.format(id=invocation.id)
    unreachable_since = None
    while not invocation.is_terminal and (remaining := deadline - time.monotonic()) > 0:
        try:
            reply = blocking_pop([key], min(remaining, max(settings.LEASE_S, 0.5)))
        except RedisError as exc:
            logger.warning("The reply channel of %s is unavailable (%r); polling the row instead", key, exc)
            reply = None
            time.sleep(min(remaining, REPLY_POLL_S))
        if reply is not None:
            return InvocationOutcome(**json.loads(reply[1]))
        if not _refresh_or_gone(invocation):
            unreachable_since = unreachable_since or time.monotonic()
            if time.monotonic() - unreachable_since >= settings.LEASE_S:
                break
            continue
        unreachable_since = None
        now = timezone.now()
        if (
            invocation.status == InvocationStatus.RUNNING
            and invocation.lease_until
            and invocation.lease_until < now
            and leases_settled()
        ):
            _reclaim(invocation, now)
            _refresh_or_gone(invocation)
    if unreachable_since is not None:
        raise ServiceUnavailable(
            f"{OUTAGE_MESSAGE} Invocation {invocation.pk} was accepted: read its result at "
            f"/api/v1/invocations/{invocation.pk}/ rather than invoking again.",
            details={"invocation_id": str(invocation.pk)},
        )
    return outcome_from_row(invocation)


# How often a sync caller reads the row while Redis (its reply channel) is down.
REPLY_POLL_S = 0.5


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
    return min(
        invocation.timeout_s + INIT_GRACE_S + settings.LEASE_S + settings.SWEEP_INTERVAL_S, settings.SYNC_WAIT_MAX_S
    )


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


# ---- the worker's side: claim, run, complete ------------------------------------------------------------------


class _ConfigCache:
    """Function and version rows by (function, version, current revision): a warm invocation needs no join to run.

    Every configuration change gives the function a new revision_id, and the claim reads the function's current
    revision with the row, so an entry is never stale: a change made while an event waits in the queue (reserved
    concurrency raised, say) applies to it at once.
    """

    def __init__(self, size: int = 512) -> None:
        self._entries: OrderedDict[tuple, tuple[Function, Any]] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def attach(self, invocation: Invocation, revision: Any) -> None:
        key = (invocation.function_id, invocation.version_id, revision)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
        if entry is None:
            entry = self._load(invocation)
            with self._lock:
                self._entries[key] = entry
                while len(self._entries) > self._size:
                    self._entries.popitem(last=False)
        invocation.function, version = entry
        if version is not None:
            invocation.version = version

    def _load(self, invocation: Invocation) -> tuple[Function, Any]:
        function = Function.objects.select_related("code").get(pk=invocation.function_id)
        version = None
        if invocation.version_id is not None:
            version = Version.objects.select_related("code").get(pk=invocation.version_id)
        return function, version


configs = _ConfigCache()


class _Leases:
    """The attempts this process is running, so its heartbeat can renew their leases."""

    def __init__(self) -> None:
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, invocation_id: str, attempt: int) -> None:
        with self._lock:
            self._held[invocation_id] = attempt

    def remove(self, invocation_id: str) -> None:
        with self._lock:
            self._held.pop(invocation_id, None)

    def held(self) -> list[tuple[str, int]]:
        with self._lock:
            return list(self._held.items())


leases = _Leases()


def leases_renew() -> int:
    """Extend the leases this process holds; a fenced update, so a lease already taken over stays lost."""
    until = timezone.now() + timedelta(seconds=settings.LEASE_S)
    renewed = 0
    for invocation_id, attempt in leases.held():
        renewed += Invocation.objects.filter(pk=invocation_id, status=InvocationStatus.RUNNING, attempt=attempt).update(
            lease_until=until
        )
    return renewed


class Capacity(Protocol):
    """What the claim asks of the executor before it takes work (functions_app.runtime.Executor has both)."""

    def has_room(self, memory_mb: int) -> bool: ...

    def can_ever_host(self, memory_mb: int) -> bool: ...


def invocation_claim(*, invocation_id: str, host: str, capacity: Capacity | None = None) -> Invocation | None:
    """Take the invocation for one attempt, or return None when it is not ours to run now.

    Of two deliveries racing for the same row exactly one compare-and-set on ``attempt`` matches. With
    ``capacity``, work that the host has no room for is refused before it is claimed (see
    ``_refused_for_capacity``), so a refusal never uses up an attempt.
    """
    # order_by() drops the model's default ordering: this is the hot path, and one row has no order.
    invocation = (
        Invocation.objects.filter(pk=invocation_id)
        .annotate(current_revision=F("function__revision_id"))
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
        return invocation.available_at <= now  # an early duplicate of a delayed retry waits for the sweeper
    return (
        invocation.status == InvocationStatus.RUNNING
        and invocation.lease_until is not None
        and (invocation.lease_until < now)
    )


def _refused_for_capacity(invocation: Invocation, capacity: Capacity) -> bool:
    """A function larger than the host's whole memory budget can never run here: a clear error at once, sync or
    async. One that does not fit now (every environment busy) is refused as a throttle: a sync caller hears it at
    once (429, retryable), an event waits in the queue; neither was claimed, so no attempt is used up."""
    fenced = {"pk": invocation.pk, "attempt": invocation.attempt, "status": invocation.status}
    if not capacity.can_ever_host(invocation.memory_mb):
        message = (
            f"This function needs {invocation.memory_mb} MB of memory, more than an executor host offers "
            "(RUNTIME_MEMORY_BUDGET_MB); lower its memory size or raise the hosts' budget."
        )
        _finish_platform_failure(invocation, TOO_LARGE_FOR_HOSTS, message)
        return True
    if capacity.has_room(invocation.memory_mb):
        return False
    invocation_throttled(function=invocation.function, reason=CAPACITY_EXCEEDED.removeprefix("Throttled."))
    if invocation.invocation_type == InvocationType.ASYNC:
        _requeue(invocation, fenced, delay_s=settings.THROTTLE_RETRY_S, error_type=CAPACITY_EXCEEDED)
    else:
        _finish_refused_sync(invocation, fenced, "every environment of the host is busy")
    return True


def _admitted_for_run(invocation: Invocation, now: datetime) -> bool:
    """Sync calls were admitted at the door (a long wait in the queue extends their slot); async events are
    admitted here, and an event over the limit waits in the queue and tries again, until its maximum age."""
    is_sync = invocation.invocation_type == InvocationType.SYNC
    if is_sync and (now - invocation.queued_at).total_seconds() < INIT_GRACE_S:
        return True  # the slot taken at the door still covers the whole run
    try:
        admission = concurrency.slot_acquire(
            function_id=invocation.function_id,
            owner_id=invocation.owner_id,
            member=str(invocation.id),
            hold_s=invocation.timeout_s + INIT_GRACE_S + settings.LEASE_S,
            reserved=None if is_sync else invocation.function.reserved_concurrency,
            account_limit=1 << 30 if is_sync else settings.ACCOUNT_CONCURRENCY_LIMIT,
        )
    except RedisError as exc:
        # The row stays queued; the sweeper publishes it again once Redis is back (see _forget_lost_publishes).
        logger.warning("Invocation %s waits: its concurrency cannot be counted (%r)", invocation.pk, exc)
        return False
    if admission.admitted:
        return True
    invocation_throttled(function=invocation.function, reason=admission.reason)
    fenced = {"pk": invocation.pk, "attempt": invocation.attempt, "status": invocation.status}
    _requeue(invocation, fenced, delay_s=settings.THROTTLE_RETRY_S, error_type=f"Throttled.{admission.reason}")
    return False


def _requeue(invocation: Invocation, fenced: dict[str, Any], *, delay_s: float, **fields: Any) -> bool:
    """Put the invocation back in the queue, due in ``delay_s``, if ``fenced`` still matches its row.

    Published at once with a countdown; should that message be lost, the sweeper publishes it once it is stale.
    """
    due = timezone.now() + timedelta(seconds=delay_s)
    requeued = bool(
        Invocation.objects.filter(**fenced).update(
            status=InvocationStatus.QUEUED, available_at=due, published_at=due, lease_until=None, **fields
        )
    )
    if requeued:
        invocation_publish(
            invocation_id=str(invocation.id),
            sync=invocation.invocation_type == InvocationType.SYNC,
            countdown=delay_s,
        )
    return requeued


def function_spec(invocation: Invocation) -> FunctionSpec:
    """The sandbox's view of what to run: never shared across versions, configurations or tenants.

    Memory and timeout come from the invocation row (what was configured when it was accepted, and what it is
    billed for); code, handler and environment from the version, or from `$LATEST` as it is now.
    """
    function = invocation.function
    config = invocation.version or function
    identity = (
        f"v{config.number}:{config.config_sha256[:16]}" if invocation.version else f"latest:{function.revision_id}"
    )
    key = f"{function.pk}:{identity}:{invocation.memory_mb}mb:{invocation.timeout_s}s"  # see environment_key_owner
    with _specs_lock:
        spec = _specs.get(key)
    if spec is None:
        spec = _spec_build(invocation, key)
        with _specs_lock:
            _specs[key] = spec
            while len(_specs) > 512:
                _specs.popitem(last=False)
    return spec


def environment_key_owner(key: str) -> tuple[int, str | None]:
    """(function id, the `$LATEST` revision it was built from, or None for a published version) of a key that
    ``function_spec`` made: versions never change, `$LATEST` environments go stale with every change."""
    function_id, kind, detail, *_ = key.split(":")
    return int(function_id), detail if kind == "latest" else None


# Built specs by environment key (which changes with every configuration change): a warm call decrypts nothing.
_specs: OrderedDict[str, FunctionSpec] = OrderedDict()
_specs_lock = threading.Lock()


def _spec_build(invocation: Invocation, key: str) -> FunctionSpec:
    function = invocation.function
    config = invocation.version or function
    return FunctionSpec(
        environment_key=key,
        function_name=function.name,
        function_version=invocation.executed_version,
        code_dir=str(code_extracted_dir(config.code.sha256)),
        handler=config.handler,
        memory_mb=invocation.memory_mb,
        timeout_s=float(invocation.timeout_s),
        env=env_decrypt(config.environment_ciphertext),
        network=config.network_enabled,
        tmp_mb=config.ephemeral_storage_mb,
        tenant=str(invocation.owner_id),
    )


def function_arn(invocation: Invocation) -> str:
    account = f"{invocation.owner_id:012d}"
    base = f"arn:aws:lambda:{settings.AWS_REGION}:{account}:function:{invocation.function.name}"
    return base if invocation.qualifier == LATEST else f"{base}:{invocation.qualifier}"


def invocation_run(*, invocation_id: str, executor: Any) -> Invocation | None:
    """Claim, execute in a sandbox, write the fenced result and answer a waiting caller."""
    host = f"{socket.gethostname()}:{os.getpid()}"
    invocation = invocation_claim(invocation_id=invocation_id, host=host, capacity=executor)
    if invocation is None:
        logger.info("Invocation %s is not ours to run now (duplicate, finished or not due); skipped", invocation_id)
        with contextlib.suppress(RedisError):
            redis_client().incr(SKIPPED_DELIVERIES_KEY)
        return None
    claimed_at = time.perf_counter()
    leases.add(str(invocation.id), invocation.attempt)
    try:
        request = InvokeRequest(
            request_id=str(invocation.id),
            event=invocation.payload.encode(),
            invoked_function_arn=function_arn(invocation),
            attempt=invocation.attempt,
            response_max_bytes=RESPONSE_MAX_BYTES,
        )
        try:
            spec = function_spec(invocation)  # on a host's first call of new code: its download and extraction
            invocation.prepare_ms = (time.perf_counter() - claimed_at) * 1000
            result = executor.invoke(spec, request)
        except CapacityError as exc:
            refuse = functools.partial(invocation_refuse_for_capacity, invocation=invocation, reason=str(exc))
            database_retry(refuse, what=f"Invocation {invocation.pk}")
            return invocation
        except Exception as exc:  # preparing (the code store, unpacking) or the executor itself
            logger.exception("The executor failed invocation %s", invocation.pk)
            fail = functools.partial(invocation_fail_for_executor, invocation=invocation, error=exc)
            database_retry(fail, what=f"Invocation {invocation.pk}")
            return invocation
        # The run is over: its result is written even across a database restart (the lease stays renewed).
        database_retry(
            lambda: invocation_complete(invocation=invocation, result=result), what=f"Invocation {invocation.pk}"
        )
    finally:
        leases.remove(str(invocation.id))
    return invocation


CAPACITY_EXCEEDED = "Throttled.ExecutorCapacityExceeded"
TOO_LARGE_FOR_HOSTS = "Platform.FunctionTooLarge"


def invocation_refuse_for_capacity(*, invocation: Invocation, reason: str) -> None:
    """The host had no room for another environment after all (the claim's check raced another call): nothing
    ran. A sync caller hears it at once as a throttle it may retry; an async event goes back to the queue, its
    attempt number moved on (fencing needs that) but not its retry budget."""
    fenced = {"pk": invocation.pk, "status": InvocationStatus.RUNNING, "attempt": invocation.attempt}
    invocation_throttled(function=invocation.function, reason=CAPACITY_EXCEEDED.removeprefix("Throttled."))
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
    now = timezone.now()
    cost = invocation_meter(memory_mb=invocation.memory_mb, init_ms=result.init_ms, duration_ms=result.duration_ms)
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
        "queue_wait_ms": (invocation.started_at - invocation.queued_at).total_seconds() * 1000,
        "prepare_ms": invocation.prepare_ms,
        "overhead_ms": _overhead_ms(invocation, now, result),
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
    fenced = {"pk": invocation.pk, "status": InvocationStatus.RUNNING, "attempt": invocation.attempt}
    if not retry:
        fields.update(status=_STATUS_BY_RESULT.get(result.status, InvocationStatus.FAILED), finished_at=now)
        written = _terminal_write(invocation, fenced, fields, DeadLetterCondition.RETRIES_EXHAUSTED)
    else:
        backoff = settings.RETRY_BACKOFF_S * 2 ** (invocation.attempt - 1)
        written = _requeue(invocation, fenced, delay_s=backoff, **_without(fields, "lease_until"))
        if written:
            for name, value in fields.items():
                setattr(invocation, name, value)
            _release(invocation)
            invocation_attempt_failed(invocation=invocation)  # Lambda bills every attempt, not only the last
    if not written:
        logger.warning(
            "Invocation %s attempt %s lost its lease; its result is discarded", invocation.pk, invocation.attempt
        )
    return written


def _overhead_ms(invocation: Invocation, now: datetime, result: InvokeResult) -> float:
    elapsed_ms = (now - invocation.started_at).total_seconds() * 1000
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
    with transaction.atomic():
        written = Invocation.objects.filter(**fenced).update(**fields, terminal_writes=F("terminal_writes") + 1)
        if not written:
            return False
        for name, value in fields.items():
            setattr(invocation, name, value)
        if invocation.invocation_type == InvocationType.ASYNC:
            succeeded = invocation.status == InvocationStatus.SUCCEEDED
            function = invocation.function
            destination_deliver(
                invocation=invocation,
                destination=function.on_success_destination if succeeded else function.on_failure_destination,
                condition="Success" if succeeded else failure_condition,
            )
    _release(invocation)
    if invocation.invocation_type == InvocationType.SYNC:
        invocation_reply(invocation=invocation)
    if metered:
        invocation_finished(invocation=invocation)
    return True


def invocation_reply(*, invocation: Invocation) -> None:
    """Hand the outcome to a synchronous caller blocked on the reply key (it expires if nobody waits). With
    Redis down the caller reads the row instead, which is already written."""
    key = REPLY_KEY.format(id=invocation.id)
    pipeline = redis_client().pipeline()
    pipeline.rpush(key, json.dumps(asdict(outcome_from_row(invocation))))
    pipeline.expire(key, REPLY_TTL_S)
    try:
        pipeline.execute()
    except RedisError as exc:
        logger.warning("Could not reply to the caller of %s (%r); it reads the row instead", invocation.pk, exc)


# ---- destinations and the dead-letter inbox -----------------------------------------------------------------


def destination_record(invocation: Invocation, condition: str) -> dict[str, Any]:
    """Lambda's destination record: requestContext, requestPayload, responseContext, responsePayload."""
    try:
        response_payload = json.loads(invocation.result) if invocation.result else None
    except ValueError:
        response_payload = invocation.result
    return {
        "version": "1.0",
        "timestamp": timezone.now().isoformat(),
        "requestContext": {
            "requestId": str(invocation.id),
            "functionArn": function_arn(invocation),
            "condition": condition,
            "approximateInvokeCount": invocation.attempt,
        },
        "requestPayload": json.loads(invocation.payload),
        "responseContext": {
            "statusCode": 200,
            "executedVersion": invocation.executed_version,
            **({"functionError": "Unhandled"} if invocation.function_error else {}),
        },
        "responsePayload": response_payload,
    }


def destination_payload(record: dict[str, Any]) -> bytes:
    """The record as an async payload: within the 1 MB limit and always valid JSON. A record too large keeps its
    contexts and says which payload it left out (the response first, then the request)."""
    encoded = json.dumps(record).encode()
    for part in ("responsePayload", "requestPayload"):
        if len(encoded) <= ASYNC_PAYLOAD_MAX_BYTES:
            break
        size = len(json.dumps(record[part]).encode())
        record = {**record, part: None, f"{part}Omitted": f"{size} bytes, over the async payload limit"}
        encoded = json.dumps(record).encode()
    return encoded


# Lambda stops a loop after about 16 calls in one chain; a destination hop beyond this is not made.
CHAIN_DEPTH_MAX = 16


def destination_deliver(*, invocation: Invocation, destination: str, condition: str) -> None:
    """Send the event on: to another function of the same owner, or to the dead-letter inbox.

    A failure with a destination that no longer exists lands in the inbox, so nothing is dropped silently. A
    chain of destinations (a function naming itself, or A -> B -> A) stops after CHAIN_DEPTH_MAX hops: the record
    that would have been sent waits in the dead-letter inbox, addressed to the function it was meant for.
    """
    if destination.startswith("function:"):
        target = Function.objects.filter(owner_id=invocation.owner_id, name=destination.split(":", 1)[1]).first()
        if target is not None:
            record = destination_payload(destination_record(invocation, condition))
            if invocation.chain_depth >= CHAIN_DEPTH_MAX:
                _dead_letter(
                    invocation,
                    function_id=target.pk,
                    condition=DeadLetterCondition.RECURSIVE_LOOP,
                    payload=record.decode(),
                    error_type="RecursiveInvocationDropped",
                )
                return
            invocation_accept(
                owner=invocation.owner,
                function=target,
                qualifier=LATEST,
                raw_payload=record,
                invocation_type=InvocationType.ASYNC,
                chain_depth=invocation.chain_depth + 1,
            )
            return
        destination = DEAD_LETTER if condition != "Success" else ""
    if destination == DEAD_LETTER and condition != "Success":
        _dead_letter(invocation, function_id=invocation.function_id, condition=condition, payload=invocation.payload)


def _dead_letter(invocation: Invocation, *, function_id: int, condition: str, payload: str, **extra: Any) -> None:
    DeadLetter.objects.get_or_create(
        invocation=invocation,
        defaults={
            "owner_id": invocation.owner_id,
            "function_id": function_id,
            "condition": condition,
            "request_payload": payload,
            "error_type": invocation.error_type,
            "error_result": invocation.result,
            "attempts": invocation.attempt,
            **extra,
        },
    )


def dead_letter_replay(*, dead_letter: DeadLetter) -> Invocation:
    """Run the stored event again as a new async invocation of the function's `$LATEST`, once: a letter that was
    replayed already answers with the invocation of its first replay."""
    return dead_letter_replay_once(dead_letter=dead_letter)[0]


def dead_letter_replay_once(*, dead_letter: DeadLetter) -> tuple[Invocation, bool]:
    """The replay's invocation, and whether this call created it. The letter is claimed by a conditional update
    on ``replayed_as IS NULL`` in the transaction that creates the invocation: of two racing replays one claims
    it, the other rolls back its invocation (and so its publish) and answers with the winner's."""
    if dead_letter.replayed_as_id is None:
        with transaction.atomic():
            replayed = invocation_accept(
                owner=dead_letter.owner,
                function=dead_letter.function,
                qualifier=LATEST,
                raw_payload=dead_letter.request_payload.encode(),
                invocation_type=InvocationType.ASYNC,
            )
            claimed = DeadLetter.objects.filter(pk=dead_letter.pk, replayed_as__isnull=True).update(
                replayed_as=replayed
            )
            if not claimed:
                transaction.set_rollback(True)
        if claimed:
            dead_letter.replayed_as = replayed
            return replayed, True
    current = DeadLetter.objects.select_related("replayed_as").filter(pk=dead_letter.pk).first()
    if current is None or current.replayed_as is None:
        raise ResourceConflict("The dead letter was deleted while it was being replayed.")
    return current.replayed_as, False


def dead_letter_delete(*, dead_letter: DeadLetter) -> None:
    dead_letter.delete()


# ---- the sweeper --------------------------------------------------------------------------------------------


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


def _finish_worker_lost(invocation: Invocation) -> bool:
    return _finish_platform_failure(invocation, WORKER_LOST, "The worker running this invocation was lost.")


def _finish_platform_failure(invocation: Invocation, error_type: str, message: str) -> bool:
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
    fenced = {"pk": invocation.pk, "status": invocation.status, "attempt": invocation.attempt}
    return _terminal_write(invocation, fenced, fields, DeadLetterCondition.RETRIES_EXHAUSTED)


def invocation_fail_for_executor(*, invocation: Invocation, error: Exception) -> None:
    """The executor raised instead of answering (a bug, or the host out of a resource): the caller hears it now
    rather than at the end of the lease. An async event with attempts left is retried after the usual backoff."""
    message = f"The executor could not run this invocation: {error!r}"
    if invocation.invocation_type == InvocationType.ASYNC and invocation.attempt < invocation.max_attempts:
        fenced = {"pk": invocation.pk, "status": InvocationStatus.RUNNING, "attempt": invocation.attempt}
        backoff = settings.RETRY_BACKOFF_S * 2 ** (invocation.attempt - 1)
        if _requeue(invocation, fenced, delay_s=backoff, error_type=EXECUTOR_FAILED):
            _release(invocation)
        return
    _finish_platform_failure(invocation, EXECUTOR_FAILED, message)


def _reclaim(invocation: Invocation, now: datetime) -> str:
    """A lease ran out: its worker died or stalled. Sync calls fail (no platform retries); async retry."""
    if invocation.invocation_type == InvocationType.ASYNC and invocation.attempt < invocation.max_attempts:
        fenced = {
            "pk": invocation.pk,
            "status": InvocationStatus.RUNNING,
            "attempt": invocation.attempt,
            "lease_until__lt": now,
        }
        return "requeued" if _requeue(invocation, fenced, delay_s=0) else "raced"
    return "lost" if _finish_worker_lost(invocation) else "raced"


def invocations_sweep() -> dict[str, int]:
    """Expire old events, take back expired leases, (re)publish due queued rows, forget old idempotency keys.

    An outage of the database or Redis skips the sweep (the next one, SWEEP_INTERVAL_S later, does its work)."""
    try:
        counts = _sweep()
        redis_client().set(SWEPT_AT_KEY, time.time(), ex=3600)
    except DATABASE_ERRORS as exc:
        logger.warning("Sweep skipped: the database is unreachable (%r)", exc)
        database_unreachable(exc)
        return {}
    except RedisError as exc:
        logger.warning("Sweep skipped: Redis is unreachable (%r)", exc)
        return {}
    return counts


def _sweep() -> dict[str, int]:
    now = timezone.now()
    counts = {"expired": 0, "requeued": 0, "lost": 0, "published": 0, "leases_held": 0}
    related = ("owner", "function")
    _forget_lost_publishes()
    for invocation in Invocation.objects.select_related(*related).filter(
        status=InvocationStatus.QUEUED, expires_at__lt=now
    )[:SWEEP_BATCH]:
        counts["expired"] += invocation_expire(invocation=invocation)
    expired_leases = Invocation.objects.select_related(*related).filter(
        status=InvocationStatus.RUNNING, lease_until__lt=now
    )[:SWEEP_BATCH]
    if not leases_settled():
        # Just after an outage of the database no worker could renew its leases: wait for their heartbeats.
        counts["leases_held"] = len(expired_leases)
        expired_leases = []
    for invocation in expired_leases:
        outcome = _reclaim(invocation, now)
        if outcome in counts:
            counts[outcome] += 1
    counts["published"] = _republish_due(now)
    Invocation.objects.filter(
        queued_at__lt=now - timedelta(seconds=settings.IDEMPOTENCY_TTL_S), idempotency_key__gt=""
    ).update(idempotency_key="")
    return counts


def _republish_due(now: datetime) -> int:
    """Publish due queued rows whose message may be lost (never published, forgotten after a Redis restart, or
    published longer than REPUBLISH_AFTER_S ago), but only as many as the broker is short of: every queued or
    running row has a message in Redis (waiting, or delivered and not yet acked), so fewer messages than rows is
    the number lost. A backlog is not a loss: republishing every stale row would, under a backlog that takes
    longer than REPUBLISH_AFTER_S to drain, put the whole backlog in the queue again and again."""
    stale = now - timedelta(seconds=settings.REPUBLISH_AFTER_S)
    candidates = Invocation.objects.filter(status=InvocationStatus.QUEUED, available_at__lte=now).filter(
        Q(published_at__isnull=True) | Q(published_at__lt=stale)
    )
    if not candidates.exists():
        return 0
    live = Invocation.objects.filter(status__in=(InvocationStatus.QUEUED, InvocationStatus.RUNNING)).count()
    missing = live - _messages_in_broker()
    if missing <= 0:
        return 0
    oldest = candidates.order_by(F("published_at").asc(nulls_first=True)).values_list("pk", "invocation_type")
    published = 0
    for invocation_id, kind in list(oldest[: min(missing, SWEEP_BATCH)]):
        if Invocation.objects.filter(pk=invocation_id, status=InvocationStatus.QUEUED).update(published_at=now):
            invocation_publish(invocation_id=str(invocation_id), sync=kind == InvocationType.SYNC)
            published += 1
    return published


def _messages_in_broker() -> int:
    """Invocation messages Redis holds: waiting in the two queues, or delivered to a worker and not yet acked
    (kombu's `unacked` hash, which also holds the messages of delayed retries). The hash holds the control queue's
    messages too (this sweep's own, while it runs), so its entries are counted by queue: counting them all would
    hide a lost invocation message behind every running control task."""
    pipeline = redis_client().pipeline(transaction=False)
    pipeline.llen(SYNC_QUEUE)
    pipeline.llen(INVOCATION_QUEUE)
    pipeline.hvals(KOMBU_UNACKED_KEY)
    waiting_sync, waiting, unacked = pipeline.execute()
    return waiting_sync + waiting + sum(1 for entry in unacked if _unacked_queue(entry) in INVOCATION_QUEUES)


INVOCATION_QUEUES = frozenset({SYNC_QUEUE, INVOCATION_QUEUE})


def _unacked_queue(entry: bytes) -> str:
    """The routing key of one entry of kombu's unacked hash: a JSON list [message, exchange, routing key]."""
    try:
        return str(json.loads(entry)[2])
    except (ValueError, IndexError, TypeError):
        return ""


# Where kombu's Redis transport keeps delivered, unacknowledged messages (its `unacked_key` default).
KOMBU_UNACKED_KEY = "unacked"


def _forget_lost_publishes() -> None:
    """After a Redis restart, count every queued invocation as never published, so that this sweep publishes
    the due ones at once (as many as the broker lacks) instead of REPUBLISH_AFTER_S later: the restart may have
    dropped their messages (the last second of writes, without appendfsync always; all of them, without
    persistence; and those a worker had reserved). A duplicate message costs one claim that finds nothing to do."""
    client = redis_client()
    run_id = client.info("server").get("run_id", "")
    if client.getset(BROKER_RUN_ID_KEY, run_id) in (run_id, run_id.encode()):
        return
    forgotten = Invocation.objects.filter(status=InvocationStatus.QUEUED).update(published_at=None)
    if forgotten:
        logger.warning("Redis restarted (run id %s): %d queued invocations will be published again", run_id, forgotten)
