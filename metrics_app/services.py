"""The one entry point through which functions_app hands finished invocations to metering."""

from __future__ import annotations

from metrics_app.pricing import InvocationCost, invocation_cost


def invocation_meter(*, memory_mb: int, init_ms: float, duration_ms: float) -> InvocationCost:
    """Billed time and cost of a finished invocation (roll-ups hook in here as they arrive)."""
    return invocation_cost(memory_mb=memory_mb, init_ms=init_ms, duration_ms=duration_ms)
