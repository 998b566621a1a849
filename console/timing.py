"""Server-Timing: where a request's milliseconds went, phase by phase, in the response header that browsers'
developer tools show and `bench/bench_sync_invoke.py` reads (format: https://www.w3.org/TR/server-timing/).

Code on a request's path marks a phase with ``with phase("admission"):`` (or ``phase_record`` for a duration
measured elsewhere, such as the worker's share of a synchronous invoke); outside a request both do nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from django.http import HttpRequest, HttpResponse

_phases: ContextVar[list[tuple[str, float]] | None] = ContextVar("server_timing", default=None)


@contextmanager
def phase(name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        phase_record(name, (time.perf_counter() - started) * 1000)


def phase_record(name: str, duration_ms: float) -> None:
    phases = _phases.get()
    if phases is not None:
        phases.append((name, max(duration_ms, 0.0)))


@contextmanager
def timing_collect() -> Iterator[list[tuple[str, float]]]:
    """Collect the phases marked inside (for a request served outside Django's middleware)."""
    phases: list[tuple[str, float]] = []
    token = _phases.set(phases)
    try:
        yield phases
    finally:
        _phases.reset(token)


def server_timing_header(phases: list[tuple[str, float]], total_ms: float) -> str:
    return ", ".join(f"{name};dur={duration:.3f}" for name, duration in [*phases, ("total", total_ms)])


class ServerTimingMiddleware:
    """Collects the phases a request marked and, if it marked any, sends them with its total."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        token = _phases.set([])
        try:
            response = self.get_response(request)
            phases = _phases.get() or []
        finally:
            _phases.reset(token)
        # Only for callers the platform knows: an unauthenticated request learns nothing of its timings.
        if phases and getattr(getattr(request, "user", None), "is_authenticated", False):
            response["Server-Timing"] = server_timing_header(phases, (time.perf_counter() - started) * 1000)
        return response
