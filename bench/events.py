"""Async events handed to executors as a backlog, and their drain: shared by bench_async_throughput (P3, P4) and
bench_streams (P10's baseline). Django is set up by the caller first."""

from __future__ import annotations

import os
import time
from typing import Any


def rate(stamps: list[float]) -> float:
    return round((len(stamps) - 1) / (max(stamps) - min(stamps)), 1)


def wait_serving(processes: int, log: Any) -> None:
    from console.redis import redis_client
    from functions_app.lane import lane_served, lane_served_forget

    deadline = time.monotonic() + 60
    while len(list(redis_client().scan_iter("ephemera:hosts:*"))) < processes or not lane_served():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the executors did not come up; see {log}")
        lane_served_forget()
        time.sleep(0.1)


def accept_events(user: Any, function: Any, count: int) -> list:
    from functions_app.accept import invocation_accept

    return [
        invocation_accept(owner=user, function=function, qualifier="", raw_payload=b"{}", invocation_type="async").pk
        for _ in range(count)
    ]


def backlog(user: Any, function: Any, count: int) -> list:
    """``count`` events accepted with their doorbells held on a list of the bench's own, then rung at once (one
    RENAME onto the events' lane): the executors drain a backlog, not the pace of this process's inserts."""
    from console.redis import redis_client
    from functions_app import lane

    held = "bench:held-events"
    events_lane = lane.EVENT_LANE_KEY
    lane.EVENT_LANE_KEY = held
    try:
        ids = accept_events(user, function, count)
    finally:
        lane.EVENT_LANE_KEY = events_lane
    redis_client().rename(held, events_lane)
    return ids


def drain(ids: list, log: Any) -> None:
    from functions_app.models import Invocation

    deadline = time.monotonic() + float(os.environ.get("BENCH_DRAIN_TIMEOUT_S", 600))
    while Invocation.objects.filter(pk__in=ids, finished_at__isnull=False).count() < len(ids):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the queue did not drain; see {log}")
        time.sleep(0.2)


def completions_per_s(ids: list) -> float:
    from functions_app.models import Invocation

    finished = Invocation.objects.filter(pk__in=ids).values_list("finished_at", flat=True)
    return rate([moment.timestamp() for moment in finished if moment is not None])
