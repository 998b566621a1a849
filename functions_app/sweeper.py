"""The sweeper, beat's safety net for delivery: it expires events past their maximum age, takes back expired
leases, republishes queued rows whose message was lost, and forgets old idempotency keys."""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import F, Q
from django.utils import timezone
from redis.exceptions import RedisError

from console.processes import INVOCATION_QUEUE, SYNC_QUEUE
from console.redis import redis_client
from functions_app.accept import invocation_publish
from functions_app.lane import lane_served, lane_waiting
from functions_app.lifecycle import invocation_expire, invocation_reclaim
from functions_app.models import Invocation, InvocationStatus, InvocationType
from functions_app.outages import DATABASE_ERRORS, database_unreachable, leases_settled
from functions_app.selectors import SWEPT_AT_KEY

logger = logging.getLogger(__name__)


SWEEP_BATCH = 500
# Redis's identity (INFO run_id), as the sweeper last saw it: a different one means Redis restarted, and any
# message it held may be gone.
BROKER_RUN_ID_KEY = "ephemera:control:broker_run_id"


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
    running = Invocation.objects.select_related(*related).filter(status=InvocationStatus.RUNNING, lease_until__lt=now)
    expired_leases = list(running[:SWEEP_BATCH])
    if not leases_settled():
        # Just after an outage of the database no worker could renew its leases: wait for their heartbeats.
        counts["leases_held"] = len(expired_leases)
        expired_leases = []
    for invocation in expired_leases:
        outcome = invocation_reclaim(invocation=invocation, now=now)
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
    # Rows accepted ahead of their time (a schedule's tick, unpublished until then) have no message yet; a delayed
    # retry (published, due later) has one: Celery's countdown message, held in the unacked hash.
    live = (
        Invocation.objects.filter(status__in=(InvocationStatus.QUEUED, InvocationStatus.RUNNING))
        .exclude(published_at__isnull=True, available_at__gt=now)
        .count()
    )
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
    """Invocation messages Redis holds: waiting in the fast lane or the two queues, or delivered to a worker and
    not yet acked (kombu's `unacked` hash, which also holds the messages of delayed retries). The hash holds the
    control queue's messages too (this sweep's own, while it runs), so its entries are counted by queue: counting
    them all would hide a lost invocation message behind every running control task."""
    pipeline = redis_client().pipeline(transaction=False)
    pipeline.llen(SYNC_QUEUE)
    pipeline.llen(INVOCATION_QUEUE)
    pipeline.hvals(KOMBU_UNACKED_KEY)
    waiting_sync, waiting, unacked = pipeline.execute()
    delivered = sum(1 for entry in unacked if _unacked_queue(entry) in INVOCATION_QUEUES)
    return waiting_sync + waiting + delivered + (lane_waiting() if lane_served() else 0)


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
