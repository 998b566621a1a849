"""Celery tasks of metrics_app: thin wrappers around services."""

from __future__ import annotations

from celery import shared_task

from metrics_app.services import metering_flush, metrics_retention


@shared_task(name="ephemera.metrics_retention", ignore_result=True)
def metrics_retention_task() -> dict[str, int]:
    return metrics_retention()


@shared_task(name="ephemera.metering_flush", ignore_result=True)
def metering_flush_task() -> int:
    return metering_flush()
