"""Invocation rows made directly (they are plain rows) and handed to metering, as functions_app does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from functions_app.models import Function, Invocation, InvocationStatus
from metrics_app.pricing import invocation_cost
from metrics_app.services import http_request_record, invocation_record, metering_flush

# A whole hour, three hours ago: recent enough that minute roll-ups are still within retention.
T0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)


def finish(function: Any, *, at: datetime = T0, metered: bool = True, **fields: Any) -> Invocation:
    """A terminal invocation row of ``function`` (succeeded, warm, 100 ms at 128 MB unless overridden)."""
    values: dict[str, Any] = {
        "owner_id": function.owner_id,
        "function": function,
        "status": InvocationStatus.SUCCEEDED,
        "payload": "{}",
        "memory_mb": function.memory_mb,
        "duration_ms": 100.0,
        "queue_wait_ms": 2.0,
        "peak_memory_mb": 40.0,
        "cpu_ms": 50.0,
        "queued_at": at - timedelta(milliseconds=200),
        "started_at": at - timedelta(milliseconds=150),
        "finished_at": at,
    }
    values.update(fields)
    if values["duration_ms"] is not None:
        cost = invocation_cost(
            memory_mb=values["memory_mb"], init_ms=values.get("init_ms", 0.0), duration_ms=values["duration_ms"]
        )
        values.update(billed_ms=cost.billed_ms, cost_usd=cost.total_usd)
    _created_by(function, values["queued_at"])
    invocation = Invocation.objects.create(**values)
    if metered:
        invocation_record(event="finished", invocation=invocation)
        metering_flush()
    return invocation


def _created_by(function: Any, moment: datetime) -> None:
    """Backdate ``function`` so it existed at ``moment``: right-sizing reads from the day the function was
    created, so a row from before its creation would drop out of the window whenever the two fall on
    different days (a test run just after midnight UTC)."""
    if function.created_at > moment:
        Function.objects.filter(pk=function.pk).update(created_at=moment)
        function.created_at = moment


def http_request(
    function: Any,
    *,
    owner_id: int | None = None,
    trigger_type: str = "http-api",
    trigger_id: str = "shop000001",
    route: str = "GET /items/{id}",
    status: int = 200,
    latency_ms: float = 10.0,
    response_bytes: int = 100,
    metered: bool = True,
) -> None:
    """One request to an HTTP trigger handed to metering, as functions_app hands it (``function`` None: no route
    matched, then ``owner_id`` says whose it is)."""
    http_request_record(
        owner_id=owner_id or function.owner_id,
        function_id=function.pk if function else None,
        trigger_type=trigger_type,
        trigger_id=trigger_id,
        route=route,
        status=status,
        latency_ms=latency_ms,
        response_bytes=response_bytes,
    )
    if metered:
        metering_flush()
