"""P3 (async completions/s, records persisted) and P4 (scaling over executor processes), as JSON.

Usage: .venv/bin/python bench/bench_async_throughput.py [--invocations 1000]

Ephemera's executors start and are warmed up (8 events per slot: the environments a backlog keeps busy exist, as in
a steady state; cold starts are P1's figure); then the backlog is handed to them at once and drained. The baseline
(stock Celery, prefork -c 2, a Redis result backend, tasks that return their time) drains a queue filled before its
worker starts. Throughput is counted between the first and the last completion as the records themselves report
them (rows in the database; the tasks' returned times).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.django_env import BASE_DIR, backends, django_setup_in_temp_var_dir, platform_services
from bench.events import accept_events, backlog, drain, rate, wait_serving

VAR_DIR = django_setup_in_temp_var_dir()

from django.contrib.auth.models import User  # noqa: E402
from django.core.management import call_command  # noqa: E402

from console.processes import die_with_parent, stop_all  # noqa: E402
from console.redis import redis_client  # noqa: E402

THREADS = os.environ.get("BENCH_THREADS", "8")  # invocation slots per executor process
NOOP = "def handler(event, context):\n    return None\n"
WORKER_ARGS = ["--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "WARNING"]


def spawn(arguments: list[str], **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "celery", *arguments],
        cwd=BASE_DIR,
        env={**os.environ, **env},
        preexec_fn=die_with_parent,
        stdout=subprocess.DEVNULL,
        stderr=open(VAR_DIR / "celery.log", "ab"),
    )


def ephemera_run(user: User, processes: int, count: int) -> float:
    """Start ``processes`` executors, warm them up, then hand them a backlog of ``count`` async no-op events at once
    and time its drain."""
    from functions_app import services
    from functions_app.models import Invocation

    function = services.function_create(
        owner=user,
        name=f"noop-{processes}-{time.time_ns()}",
        handler="app.handler",
        code=services.CodeUpload(files={"app.py": NOOP}),
    )
    workers = [
        spawn(
            [
                "-A",
                "console",
                "worker",
                "--pool",
                "threads",
                "-c",
                THREADS,
                "-n",
                f"p{i}-{time.time_ns()}@%h",
                *WORKER_ARGS,
            ]
        )
        for i in range(processes)
    ]
    try:
        wait_serving(processes, VAR_DIR / "celery.log")
        # A steady state: the environments a backlog keeps busy exist (their cold starts are P1's figure).
        drain(accept_events(user, function, processes * int(THREADS) * 8), VAR_DIR / "celery.log")
        ids = backlog(user, function, count)
        drain(ids, VAR_DIR / "celery.log")
    finally:
        stop_all(workers)
    finished = Invocation.objects.filter(pk__in=ids).values_list("finished_at", flat=True)
    stamps = [moment.timestamp() for moment in finished if moment is not None]
    assert Invocation.objects.filter(pk__in=ids, status="succeeded").count() == count
    return rate(stamps)


def baseline_run(count: int, broker: str, backend: str) -> float:
    env = {"BENCH_BROKER": broker, "BENCH_BACKEND": backend}
    os.environ.update(env)
    from bench.baseline_app import stamp

    results = [stamp.delay() for _ in range(count)]
    worker = spawn(["-A", "bench.baseline_app", "worker", "--pool", "prefork", "-c", "2", *WORKER_ARGS], **env)
    try:
        stamps = [result.get(timeout=600) for result in results]
    finally:
        stop_all([worker])
    return rate(stamps)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--invocations", type=int, default=1000)
    args = parser.parse_args()
    with platform_services(VAR_DIR) as (broker, backend):
        call_command("migrate", verbosity=0)
        from django.contrib.auth import get_user_model

        user = get_user_model().objects.create_user("bench")
        redis_client().ping()
        baseline = baseline_run(args.invocations, broker, backend)
        scaling = {n: ephemera_run(user, n, args.invocations) for n in (1, 2, 4, 8)}
        p3 = scaling[2]
        result = {
            "P3_async_completions_per_s": p3,
            "baseline_stock_celery_prefork2_per_s": baseline,
            "ratio_P3": round(p3 / baseline, 3),
            "P4_completions_per_s_by_executor_processes": scaling,
            "P4_ratio_2_vs_1": round(scaling[2] / scaling[1], 3),
            "P4_ratio_8_vs_2": round(scaling[8] / scaling[2], 3),
            "goals": "P3 ratio >= 1.5 (>= 1000/s); P4 2-vs-1 >= 1.6, no collapse at 8",
            "setup": f"{args.invocations} no-op async events handed at once to warm executors per run (after a "
            f"warm-up of 8 events per slot); executors: threads c={THREADS} each; "
            f"{backends()}",
        }
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
