"""The one invoke service every caller uses (the REST API, the console's Test tab): accept, then, for a synchronous
call, wait for the outcome on the reply channel."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.utils import timezone
from redis.exceptions import RedisError

from console.exceptions import OUTAGE_MESSAGE, ResourceNotFound, ServiceUnavailable
from console.redis import blocking_pop
from console.timing import phase_record
from functions_app.accept import DRY_RUN, invocation_accept, invocation_validate, slot_hold_s
from functions_app.lifecycle import REPLY_KEY, InvocationOutcome, invocation_reclaim, outcome_from_row
from functions_app.models import Function, Invocation, InvocationStatus, InvocationType
from functions_app.outages import DATABASE_ERRORS, database_unreachable, leases_settled

logger = logging.getLogger(__name__)


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
            return outcome_from_reply(reply[1])
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
            invocation_reclaim(invocation=invocation, now=now)
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
    trigger: dict[str, Any] | None = None,
    wait_s: float | None = None,
) -> InvokeAnswer:
    """Accept the call and, for a synchronous one, wait for its outcome (see invocation_accept, invocation_wait),
    at most ``wait_s`` when given (an HTTP trigger's integration timeout; the call goes on past it). A dry run is
    only validated: no invocation."""
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
        trigger=trigger,
    )
    if invocation_type != InvocationType.SYNC:
        return InvokeAnswer(invocation)
    published_at, waited = time.time(), time.perf_counter()
    budget = sync_wait_budget(invocation)
    outcome = invocation_wait(invocation=invocation, wait_s=budget if wait_s is None else min(budget, wait_s))
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
