"""The one entry point through which functions_app hands finished invocations to metering."""

from __future__ import annotations

from typing import Any

from metrics_app.pricing import InvocationCost, invocation_cost


def invocation_meter(*, memory_mb: int, init_ms: float, duration_ms: float) -> InvocationCost:
    """Billed time and cost of a finished invocation (roll-ups hook in here as they arrive)."""
    return invocation_cost(memory_mb=memory_mb, init_ms=init_ms, duration_ms=duration_ms)


def invocation_finished(*, invocation: Any) -> None:
    """Called by functions_app after every terminal write (succeeded, failed, timed out, expired)."""


def invocation_throttled(*, function: Any, reason: str) -> None:
    """Called by functions_app when a call is refused for concurrency (429, or an async event sent back)."""
