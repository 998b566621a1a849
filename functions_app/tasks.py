"""Celery tasks: thin wrappers that hand an invocation id to the services."""

from __future__ import annotations

from celery import shared_task

from functions_app import worker
from functions_app.invocations import invocation_run, invocations_sweep


@shared_task(name="ephemera.invocation_execute", acks_late=True, ignore_result=True)
def invocation_execute(invocation_id: str) -> None:
    invocation_run(invocation_id=invocation_id, executor=worker.executor())


@shared_task(name="ephemera.invocations_sweep", ignore_result=True)
def invocations_sweep_task() -> dict[str, int]:
    return invocations_sweep()
