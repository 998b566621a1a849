"""P11: schedule precision with many schedules, as JSON.

Usage: .venv/bin/python bench/bench_schedules.py [--schedules 1000]

``--schedules`` schedules, all `cron(* * * * ? *)`, fire at the same minute on one executor host (whose loop fires
them, functions_app/schedules.py). A tick's lateness is its fire time (its invocation published, on the fast lane)
minus its scheduled time; and, to compare with the baseline, its invocation's start on the executor minus the
scheduled time (1,000 calls at once queue behind one another: that part is P3's throughput). The baseline, in the
same run on another minute: stock Celery beat with as many crontab entries due every minute, each sending a no-op
task to a prefork -c 2 worker; its lateness is the task's start minus the minute (beat's own send time is not
observable from outside).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.django_env import backends, django_setup_in_temp_var_dir, platform_services, spawn, summary

VAR_DIR = django_setup_in_temp_var_dir()

from django.core.management import call_command  # noqa: E402

from console.processes import stop_all  # noqa: E402

NOOP = "def handler(event, context):\n    return None\n"
WORKER_ARGS = ["--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "WARNING"]


def celery(arguments: list[str], **env: str):
    return spawn([sys.executable, "-m", "celery", *arguments], **env)


def wait_serving() -> None:
    from console.redis import redis_client

    deadline = time.monotonic() + 60
    while not list(redis_client().scan_iter("ephemera:hosts:*")):
        if time.monotonic() > deadline:
            raise RuntimeError("the executor did not come up")
        time.sleep(0.1)


def until_next_minute(margin_s: float) -> None:
    """Sleep until the current minute has at least ``margin_s`` left, so that starting up never straddles a tick."""
    left = 60 - time.time() % 60
    if left < margin_s:
        time.sleep(left + 0.5)


def ephemera_run(count: int) -> tuple[list[float], list[float]]:
    """Each tick's lateness: to its invocation's publishing (the fire time), and to its start on the executor."""
    from django.contrib.auth import get_user_model

    from functions_app import schedules, services
    from functions_app.models import ScheduleTick

    user = get_user_model().objects.create_user("bench")
    function = services.function_create(
        owner=user, name="noop", handler="app.handler", code=services.CodeUpload(files={"app.py": NOOP})
    )
    worker = celery(["-A", "console", "worker", "--pool", "threads", "-c", "8", "-n", "p11@%h", *WORKER_ARGS])
    try:
        wait_serving()
        until_next_minute(margin_s=25)
        for number in range(count):
            schedules.schedule_create(function=function, name=f"s{number}", expression="cron(* * * * ? *)")
        deadline = time.monotonic() + 150
        fired = ScheduleTick.objects.filter(fired_at__isnull=False, invocation__started_at__isnull=False)
        while fired.count() < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{fired.count()} of {count} ticks fired and started; see {VAR_DIR}")
            time.sleep(0.5)
    finally:
        stop_all([worker])
    ticks = list(fired.select_related("invocation"))
    published = [tick.late_ms for tick in ticks if tick.late_ms is not None]
    runs = [(tick.tick_at, tick.invocation.started_at) for tick in ticks if tick.invocation is not None]
    started = [(start - tick_at).total_seconds() * 1000 for tick_at, start in runs if start is not None]
    return published, started


def baseline_run(count: int, broker: str, backend: str) -> list[float]:
    env = {"BENCH_BROKER": broker, "BENCH_BACKEND": backend, "BENCH_BEAT_ENTRIES": str(count)}
    os.environ.update(env)
    from bench.baseline_app import app

    worker = celery(["-A", "bench.baseline_app", "worker", "--pool", "prefork", "-c", "2", *WORKER_ARGS], **env)
    until_next_minute(margin_s=25)
    minute = math.ceil(time.time() / 60) * 60
    schedule = str(VAR_DIR / "baseline-beat")
    beat = celery(["-A", "bench.baseline_app", "beat", "-s", schedule, "--loglevel", "WARNING"], **env)
    try:
        started = collect_stamps(app, count, since=minute)
    finally:
        stop_all([beat, worker])
    return [(stamp - minute) * 1000 for stamp in started]


def collect_stamps(app, count: int, since: float) -> list[float]:
    """The start times the baseline's tasks reported for the minute ``since`` (read back from the result backend)."""
    backend = app.backend
    deadline = time.monotonic() + 150
    while True:
        keys = list(backend.client.scan_iter("celery-task-meta-*"))
        stamps = [json.loads(backend.client.get(key))["result"] for key in keys]
        stamps = [stamp for stamp in stamps if isinstance(stamp, float) and stamp >= since]
        if len(stamps) >= count:
            return stamps[:count]
        if time.monotonic() > deadline:
            raise RuntimeError(f"beat fired {len(stamps)} of {count} entries")
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--schedules", type=int, default=1000)
    args = parser.parse_args()
    with platform_services(VAR_DIR) as (broker, backend):
        call_command("migrate", verbosity=0)
        baseline = summary(baseline_run(args.schedules, broker, backend))
        published, started = (summary(values) for values in ephemera_run(args.schedules))
        print(
            json.dumps(
                {
                    "P11_tick_lateness_ms": published,
                    "tick_to_run_start_ms": started,
                    "baseline_celery_beat_tick_to_task_start_ms": baseline,
                    "ratio_run_start_p99": round(started["p99"] / baseline["p99"], 3) if baseline["p99"] else None,
                    "goal": "p99 lateness <= 1000 ms with 1,000 schedules",
                    "setup": f"{args.schedules} schedules cron(* * * * ? *) on one executor host (threads c=8) "
                    f"firing at the same minute, each an async no-op invocation; baseline: Celery beat with "
                    f"{args.schedules} crontab(minute='*') entries and a prefork -c 2 worker; {backends()}",
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
