"""P2: warm synchronous invoke through the HTTP API vs a bare Celery `delay().get()` no-op, same run, same Redis.

Usage: .venv/bin/python bench/bench_sync_invoke.py [--runs 300]

Starts, in a temporary var dir, the embedded Redis, gunicorn (2 ASGI workers, as in production) and one Ephemera
worker; a second gunicorn whose sync calls take Celery's sync queue instead of the fast lane; then the baseline's
own Celery worker. Requests alternate between the three paths so that machine noise hits all alike. Each response's
Server-Timing header gives the per-phase breakdown. Prints JSON.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.django_env import backends, django_setup_in_temp_var_dir, free_port, platform_services, spawn, summary

VAR_DIR = django_setup_in_temp_var_dir()

from django.core.management import call_command  # noqa: E402

from console.processes import executor_worker_args, stop_all  # noqa: E402

NOOP = "def handler(event, context):\n    return None\n"


def seed() -> str:
    from django.contrib.auth import get_user_model

    from console.accounts import api_key_create
    from functions_app import services

    user = get_user_model().objects.create_user("bench")
    services.function_create(
        owner=user, name="noop", handler="app.handler", code=services.CodeUpload(files={"app.py": NOOP})
    )
    return api_key_create(owner=user, name="tests")[1]


def invoke_http(port: int, token: str, phases: dict[str, list[float]] | None = None) -> float:
    """One call on a new connection; its Server-Timing phases are appended to ``phases``."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request(
        "POST", "/api/v1/functions/noop/invoke/", body=b"{}", headers={"Authorization": f"Token {token}"}
    )
    response = connection.getresponse()
    response.read()
    connection.close()
    elapsed = (time.perf_counter() - started) * 1000
    if response.status != 200 or response.getheader("X-Function-Error"):
        raise RuntimeError(f"invoke failed: {response.status}")
    if phases is not None:
        server = server_timing(response.getheader("Server-Timing", ""))
        for name, duration in server.items():
            phases.setdefault(name, []).append(duration)
        phases.setdefault("http (client minus server total)", []).append(elapsed - server["total"])
    return elapsed


def dry_run_http(port: int, token: str) -> float:
    """A `DryRun` invoke: the request, the key check, the function's lookup and the payload's validation, then
    204: what a call costs in the web before anything is admitted, stored or sent."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Token {token}", "X-Invocation-Type": "DryRun"}
    connection.request("POST", "/api/v1/functions/noop/invoke/", body=b"{}", headers=headers)
    response = connection.getresponse()
    response.read()
    connection.close()
    if response.status != 204:
        raise RuntimeError(f"dry run failed: {response.status}")
    return (time.perf_counter() - started) * 1000


def server_timing(header: str) -> dict[str, float]:
    entries = (entry.split(";dur=") for entry in header.split(", ") if ";dur=" in entry)
    return {name: float(duration) for name, duration in entries}


def wait_http(port: int, token: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            invoke_http(port, token)
            return
        except (OSError, RuntimeError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def phase_medians(phases: dict[str, list[float]]) -> dict[str, float]:
    """Each phase's median, in the order of the path (web, then the worker's share, then the reply)."""
    return {name: round(statistics.median(values), 3) for name, values in phases.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    processes: list[subprocess.Popen] = []
    with platform_services(VAR_DIR) as (broker, backend):
        try:
            call_command("migrate", verbosity=0)
            token = seed()
            port, celery_port = free_port(), free_port()
            python = sys.executable
            # The web as production runs it (console/gunicorn_conf.py: the ASGI worker), two processes.
            gunicorn = [python, "-m", "gunicorn", "-c", "console/gunicorn_conf.py"]
            web = {"GUNICORN_WORKERS": "2", "GUNICORN_ACCESSLOG": "", "GUNICORN_LOGLEVEL": "warning"}
            processes.append(spawn(gunicorn, GUNICORN_BIND=f"127.0.0.1:{port}", **web))
            # The same platform with sync calls on Celery's sync queue instead of the fast lane: the path before it.
            processes.append(spawn(gunicorn, GUNICORN_BIND=f"127.0.0.1:{celery_port}", FAST_LANE="0", **web))
            # The executor host as `make run` and compose start it (its queues, its pool), with two task slots.
            worker = executor_worker_args(level="WARNING", concurrency=2)
            processes.append(spawn([python, "-m", "celery", "-A", "console", *worker]))
            baseline_env = {"BENCH_BROKER": broker, "BENCH_BACKEND": backend}
            processes.append(
                spawn(
                    [
                        python,
                        "-m",
                        "celery",
                        "-A",
                        "bench.baseline_app",
                        "worker",
                        "--pool",
                        "threads",
                        "-c",
                        "1",
                        "--without-gossip",
                        "--without-mingle",
                        "--without-heartbeat",
                        "--loglevel",
                        "WARNING",
                    ],
                    **baseline_env,
                )
            )
            os.environ.update(baseline_env)
            from bench.baseline_app import noop

            wait_http(port, token)
            wait_http(celery_port, token)
            noop.delay().get(timeout=60)
            for _ in range(30):  # warm every path: connections, the environment, the worker's imports
                invoke_http(port, token)
                invoke_http(celery_port, token)
                noop.delay().get(timeout=10)
            ephemera, ephemera_via_celery, celery, floor = [], [], [], []
            phases: dict[str, list[float]] = {}
            phases_via_celery: dict[str, list[float]] = {}
            for _ in range(args.runs):
                ephemera.append(invoke_http(port, token, phases))
                ephemera_via_celery.append(invoke_http(celery_port, token, phases_via_celery))
                floor.append(dry_run_http(port, token))
                started = time.perf_counter()
                noop.delay().get(timeout=10)
                celery.append((time.perf_counter() - started) * 1000)
            result = {
                "P2_warm_sync_invoke_http_ms": summary(ephemera),
                "phases_p50_ms": phase_medians(phases),
                "sync_via_celery_queue_ms": summary(ephemera_via_celery),
                "sync_via_celery_queue_phases_p50_ms": phase_medians(phases_via_celery),
                "baseline_celery_delay_get_ms": summary(celery),
                "ratio_p50": round(statistics.median(ephemera) / statistics.median(celery), 3),
                "goal": "ratio_p50 <= 1.0",
                "web_floor_ms": summary(floor),
                "web_floor_note": "a DryRun invoke through the same gunicorn (204): HTTP, Django, DRF, the key "
                "check, the function's lookup, the payload's validation; nothing admitted, stored or sent",
                "setup": "gunicorn's ASGI worker x2 (console/gunicorn_conf.py), new connection per request; "
                "Ephemera worker threads c=2 (and as "
                "many fast-lane threads); `sync_via_celery_queue`: the same platform with FAST_LANE=0; "
                f"{backends()}; baseline: Celery threads c=1 with a Redis result backend, same Redis",
            }
            print(json.dumps(result, indent=2))
        finally:
            stop_all(processes)


if __name__ == "__main__":
    main()
