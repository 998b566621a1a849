"""The baselines: stock Celery with a Redis result backend and a no-op task, on the same Redis (P2, P3); and beat
with BENCH_BEAT_ENTRIES crontab entries due every minute (P11)."""

from __future__ import annotations

import os

from celery import Celery

# Not the current app: the Ephemera tasks published from the same process must keep going to Ephemera.
app = Celery(
    "baseline", broker=os.environ.get("BENCH_BROKER"), backend=os.environ.get("BENCH_BACKEND"), set_as_current=False
)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_default_queue="bench-baseline",
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench.noop")
def noop() -> None:
    return None


@app.task(name="bench.stamp")
def stamp() -> float:
    """A no-op that reports when it ran, for completions per second from the results themselves."""
    import time

    return time.time()


if os.environ.get("BENCH_BEAT_ENTRIES"):
    from celery.schedules import crontab

    app.conf.beat_schedule = {
        f"entry-{number}": {"task": "bench.stamp", "schedule": crontab(minute="*")}
        for number in range(int(os.environ["BENCH_BEAT_ENTRIES"]))
    }
