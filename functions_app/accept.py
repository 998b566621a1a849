"""Accepting an invocation: validate the event, resolve the qualifier, admit it (concurrency), persist the row, and
publish its id once committed. The row is the source of truth; the message is only a doorbell (docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

from celery import current_app
from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

from console.exceptions import RequestTooLarge, ResourceConflict, ServiceError, TooManyRequests
from console.json_api import json_strict_loads
from console.processes import INVOCATION_QUEUE, SYNC_QUEUE
from console.timing import phase
from functions_app import concurrency
from functions_app.lane import lane_publish, lane_publish_many, lane_served
from functions_app.models import LATEST, Function, Invocation, InvocationType
from functions_app.runtime import INIT_TIMEOUT_S
from functions_app.selectors import ResolvedTarget, qualifier_resolve
from metrics_app.services import invocation_record

logger = logging.getLogger(__name__)


# The task that runs an invocation (functions_app.tasks).
EXECUTE_TASK = "ephemera.invocation_execute"
SYNC_PAYLOAD_MAX_BYTES = 6 * 1024 * 1024  # Lambda: 6 MB request and response (sync)
ASYNC_PAYLOAD_MAX_BYTES = 1024 * 1024  # Lambda: 1 MB (Event)
DRY_RUN = "DryRun"


class InvalidRequestContent(ServiceError):
    type = "InvalidRequestContent"


class IdempotencyConflict(ResourceConflict):
    type = "IdempotencyConflict"


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


def invocation_validate(
    *, function: Function, qualifier: str, raw_payload: bytes, invocation_type: str
) -> tuple[str, ResolvedTarget]:
    """The event as JSON text and what the qualifier resolves to, or the error the call gets: all a dry run does."""
    is_async = invocation_type == InvocationType.ASYNC
    with phase("validate"):
        payload = payload_validate(raw_payload, limit=ASYNC_PAYLOAD_MAX_BYTES if is_async else SYNC_PAYLOAD_MAX_BYTES)
        target = qualifier_resolve(function=function, qualifier=qualifier or LATEST)
    return payload, target


def invocation_accept(
    *,
    owner: User,
    function: Function,
    qualifier: str,
    raw_payload: bytes,
    invocation_type: str,
    idempotency_key: str = "",
    client_context: str = "",
    chain_depth: int = 0,
    trigger: dict[str, Any] | None = None,
    due_at: datetime | None = None,
) -> Invocation:
    """Validate, admit and persist an invocation (sync or async), publishing its id after commit.

    A repeated ``idempotency_key`` returns the invocation it first created (409 if the payload differs).
    ``chain_depth`` counts the destination hops that led to this call (see ``destination_deliver``); ``trigger``
    names the HTTP trigger that made it (see ``functions_app.http_triggers``). An event with ``due_at`` is
    accepted ahead of its time and not published: its caller publishes it when it is due (``invocations_publish``),
    and should the caller not, the sweeper does (a schedule's tick, ``functions_app.schedules``).
    """
    is_async = invocation_type == InvocationType.ASYNC
    payload, target = invocation_validate(
        function=function, qualifier=qualifier, raw_payload=raw_payload, invocation_type=invocation_type
    )
    payload_sha = hashlib.sha256(payload.encode()).hexdigest()
    if idempotency_key:
        existing = _idempotent_match(owner, function, idempotency_key, payload_sha)
        if existing:
            return existing
    config = target.version or function
    invocation_id = uuid.uuid4()
    if not is_async:
        with phase("admission"):
            _admit_or_throttle(function, owner.pk, str(invocation_id), config.timeout_s)
    now = due_at if is_async and due_at is not None else timezone.now()
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
        "trigger": trigger,
        "idempotency_key": idempotency_key,
        "client_context": client_context,
        "memory_mb": config.memory_mb,
        "timeout_s": config.timeout_s,
        "chain_depth": chain_depth,
        "max_attempts": 1 + function.max_retry_attempts if is_async else 1,
        "expires_at": now + timedelta(seconds=function.max_event_age_s) if is_async else None,
        "queued_at": now,
        "available_at": now,
        # Unpublished until its caller rings it (a row due later without a message: see sweeper._republish_due).
        "published_at": now if due_at is None else None,
    }
    try:
        with phase("persist"), transaction.atomic():
            invocation = Invocation.objects.create(**fields)
    except IntegrityError:
        # Two requests raced with one idempotency key: the loser answers with the winner's invocation.
        concurrency.slot_release(function_id=function.pk, owner_id=owner.pk, member=str(invocation_id))
        existing = _idempotent_match(owner, function, idempotency_key, payload_sha)
        if existing is None:
            raise
        return existing
    if due_at is None:
        # At once, or, inside a caller's transaction (a dead letter's replay), once it commits.
        transaction.on_commit(lambda: invocation_publish(invocation_id=str(invocation_id), sync=not is_async))
    return invocation


def _idempotent_match(owner: User, function: Function, key: str, payload_sha: str) -> Invocation | None:
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
        hold_s=slot_hold_s(timeout_s),
        reserved=function.reserved_concurrency,
        account_limit=settings.ACCOUNT_CONCURRENCY_LIMIT,
    )
    if not admission.admitted:
        invocation_record(event="throttled", function=function)
        raise TooManyRequests(
            f"Rate exceeded: {admission.reason}.",
            details={"reason": admission.reason, "retry_after_s": 1},
            headers={"Retry-After": "1"},
        )


def invocation_publish(*, invocation_id: str, sync: bool = False, countdown: float | None = None) -> None:
    """Ring the doorbell: the fast lane (functions_app.lane), or Celery for a delayed retry (a countdown) and with
    FAST_LANE=0. A sync call goes where executors look first (the sync lane, or Celery's `sync` queue), so that a
    caller waiting on the line never queues behind a backlog of events. Tasks are sent by name: accepting never
    imports the worker's side."""
    queue = SYNC_QUEUE if sync else INVOCATION_QUEUE
    try:
        with phase("publish"):
            if countdown is None and settings.FAST_LANE and lane_served():
                lane_publish(invocation_id=invocation_id, sync=sync)
            else:
                current_app.send_task(EXECUTE_TASK, (invocation_id,), countdown=countdown, queue=queue)
    except (KombuOperationalError, RedisError, OSError) as exc:  # Redis is unreachable: an outage, not a bug
        logger.warning("Publishing invocation %s failed (%r); the sweeper will republish it", invocation_id, exc)
    except Exception:
        logger.exception("Publishing invocation %s failed; the sweeper will republish it", invocation_id)


def invocations_publish(*, invocation_ids: list[str]) -> None:
    """Ring the doorbells of many events at once: one round trip to the fast lane (else one Celery message each).
    A failure is logged; the sweeper republishes what was not."""
    try:
        if settings.FAST_LANE and lane_served():
            lane_publish_many(invocation_ids=invocation_ids)
            return
    except (RedisError, OSError) as exc:
        logger.warning(
            "Publishing %d invocations failed (%r); the sweeper will republish them", len(invocation_ids), exc
        )
        return
    for invocation_id in invocation_ids:
        invocation_publish(invocation_id=invocation_id)


def slot_hold_s(timeout_s: int) -> float:
    """How long one call's concurrency slot lasts unless released: the wait of a sync call in the queue (after
    INIT_TIMEOUT_S it takes a fresh slot when it starts), its init, its run, and a lease past that in which the loss
    of its worker is noticed. The slot is released when the call ends; expiry only keeps a lost one from leaking."""
    return timeout_s + 2 * INIT_TIMEOUT_S + settings.LEASE_S
