"""Celery tasks: thin wrappers that hand an invocation id to the services."""

from __future__ import annotations

from celery import shared_task

from functions_app import worker
from functions_app.lifecycle import invocation_run
from functions_app.outages import DATABASE_ERRORS, DATABASE_RETRY_S
from functions_app.sweeper import invocations_sweep


# A delivery that finds the database unreachable (its claim failed: nothing ran) comes back a moment later rather
# than waiting for the sweeper's republish; Celery logs the retry without a traceback. Should Redis be down too,
# the retry cannot be sent and the sweeper republishes the queued row.
@shared_task(
    name="ephemera.invocation_execute",
    acks_late=True,
    ignore_result=True,
    autoretry_for=DATABASE_ERRORS,
    default_retry_delay=DATABASE_RETRY_S * 2,
    max_retries=None,
)
def invocation_execute(invocation_id: str) -> None:
    invocation_run(invocation_id=invocation_id, executor=worker.executor())


@shared_task(name="ephemera.invocations_sweep", ignore_result=True)
def invocations_sweep_task() -> dict[str, int]:
    return invocations_sweep()
