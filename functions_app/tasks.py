"""Celery tasks: thin wrappers that hand an invocation id to the services."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from celery import Task, shared_task, signals
from django.conf import settings
from django.db import close_old_connections

from console.processes import SYNC_QUEUE
from functions_app import worker
from functions_app.lifecycle import event_pace, invocation_run, invocation_run_events
from functions_app.outages import DATABASE_ERRORS, DATABASE_RETRY_S, database_retry
from functions_app.services import invocations_prune
from functions_app.sweeper import invocations_sweep


# A delivery that finds the database unreachable (its claim failed: nothing ran) comes back a moment later rather
# than waiting for the sweeper's republish; Celery logs the retry without a traceback. Should Redis be down too,
# the retry cannot be sent and the sweeper republishes the queued row.
@shared_task(
    name="ephemera.invocation_execute",
    bind=True,
    acks_late=True,
    ignore_result=True,
    autoretry_for=DATABASE_ERRORS,
    default_retry_delay=DATABASE_RETRY_S * 2,
    max_retries=None,
)
def invocation_execute(self: Task, invocation_id: str) -> None:
    sync = (self.request.delivery_info or {}).get("routing_key") == SYNC_QUEUE
    invocation_run(invocation_id=invocation_id, executor=worker.executor(), sync=sync)


@shared_task(name="ephemera.invocations_sweep", ignore_result=True)
def invocations_sweep_task() -> dict[str, int]:
    return invocations_sweep()


@shared_task(name="ephemera.invocations_prune", ignore_result=True)
def invocations_prune_task() -> int:
    return invocations_prune()


def lane_run(invocation_ids: list[str], sync: bool) -> None:
    """Calls from the fast lane (a sync call, or a batch of events), as a task runs one: fresh database connections,
    and a claim that found the database unreachable (nothing ran) tried again for a while, unless the host is
    shutting down (the sweeper republishes the calls)."""
    close_old_connections()
    executor = worker.executor()
    run: Callable[[], object]
    if sync:
        (invocation_id,) = invocation_ids
        run = functools.partial(invocation_run, invocation_id=invocation_id, executor=executor, sync=True)
    else:
        run = functools.partial(invocation_run_events, invocation_ids=invocation_ids, executor=executor)
    give_up_s = 0 if worker.lane_stopping.is_set() else LANE_CLAIM_RETRY_MAX_S
    database_retry(run, what=f"Invocations {invocation_ids}", give_up_s=give_up_s)


LANE_CLAIM_RETRY_MAX_S = 60.0


@signals.worker_ready.connect
def _serve_the_fast_lane(sender: Any = None, **_: Any) -> None:
    """An executor host serves the fast lane with as many threads as it has task slots (after the worker's own
    handler, connected first when this module imported it, started the executor)."""
    if sender is None or not worker.runs_invocations(sender) or not worker.executor_started():
        return
    threads = settings.SYNC_LANE_THREADS or sender.pool.limit or 1
    worker.lanes_serve(lane_run, threads=threads, event_batch=event_pace.batch_size)
