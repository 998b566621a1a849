"""P6: the Monitor page of a function with 1,000,000 invocation rows renders in < 500 ms.

Usage: .venv/bin/python bench/bench_monitor_page.py [--rows 1000000] [--runs 15]

In a temporary var dir (SQLite, no Redis needed): seeds one function's invocation rows spread over the last 30
days (raw executemany in batches), builds the roll-ups from them with ``metrics_app.services.rollups_rebuild``
(the operators' repair tool), then times, for each of the page's ranges (1h, 24h, 7d, 30d): ``monitor_figures``
alone, the figures serialised to JSON, and a GET of the console's Monitor page through Django's test client;
plus the usage report (JSON) for the month. The baseline is the naive alternative in the same run: one
aggregate over the raw rows for the 30-day range. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.django_env import django_setup_in_temp_var_dir

VAR_DIR = django_setup_in_temp_var_dir()

from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.test import Client  # noqa: E402

BATCH = 50_000
RANGES = {"1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30)}
GOAL_MS = 500


def seed(rows: int, now: datetime) -> tuple:
    from django.contrib.auth import get_user_model

    from functions_app import services
    from functions_app.models import Invocation

    user = get_user_model().objects.create_user("bench", is_staff=True)
    function = services.function_create(
        owner=user,
        name="busy",
        handler="app.handler",
        memory_mb=512,
        code=services.CodeUpload(files={"app.py": "def handler(e, c):\n    return e\n"}),
    )
    columns = [
        "id",
        "owner_id",
        "function_id",
        "qualifier",
        "executed_version",
        "invocation_type",
        "status",
        "payload",
        "result",
        "function_error",
        "error_type",
        "log",
        "attempt",
        "max_attempts",
        "available_at",
        "idempotency_key",
        "payload_sha256",
        "worker_host",
        "environment_id",
        "queued_at",
        "started_at",
        "finished_at",
        "memory_mb",
        "is_cold",
        "queue_wait_ms",
        "init_ms",
        "duration_ms",
        "billed_ms",
        "peak_memory_mb",
        "cpu_ms",
        "cost_usd",
        "terminal_writes",
        "chain_depth",
        "timeout_s",
    ]
    # Identifiers from the model and our own column list, never from input.
    sql = f"INSERT INTO {Invocation._meta.db_table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"  # noqa: S608
    rng = random.Random(6)
    span_s = 30 * 86400
    connection.ensure_connection()
    raw = connection.connection
    written = 0
    while written < rows:
        batch = []
        for _ in range(min(BATCH, rows - written)):
            finished = now - timedelta(seconds=rng.random() * span_s)
            cold = rng.random() < 0.02
            failed = rng.random() < 0.03
            duration = rng.lognormvariate(math.log(80), 0.6)
            init = rng.lognormvariate(math.log(150), 0.3) if cold else 0.0
            wait = rng.expovariate(1 / 3)
            started = finished - timedelta(milliseconds=duration + init)
            queued = started - timedelta(milliseconds=wait)
            billed = max(1, math.ceil(duration + init))
            stamp = "%Y-%m-%d %H:%M:%S.%f"
            batch.append(
                (
                    uuid.uuid4().hex,
                    user.pk,
                    function.pk,
                    "$LATEST",
                    rng.choice(("$LATEST", "$LATEST", "1", "2")),
                    "sync",
                    "failed" if failed else "succeeded",
                    "{}",
                    "null",
                    failed,
                    "Exception" if failed else "",
                    "",
                    1,
                    1,
                    queued.strftime(stamp),
                    "",
                    "",
                    "bench:1",
                    "env",
                    queued.strftime(stamp),
                    started.strftime(stamp),
                    finished.strftime(stamp),
                    512,
                    cold,
                    wait,
                    init,
                    duration,
                    billed,
                    rng.gauss(60, 8),
                    duration * 0.4,
                    str(round(0.0000002 + 0.5 * billed / 1000 * 0.0000166667, 12)),
                    1,
                    0,
                    3,
                )
            )
        with transaction.atomic():
            raw.executemany(sql, batch)
        written += len(batch)
        print(f"seeded {written} rows", file=sys.stderr)
    return user, function


def timed(action, runs: int) -> dict:
    action()  # warm: connection, caches, imports
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {"p50": round(statistics.median(samples), 2), "max": round(samples[-1], 2), "n": runs}


def raw_scan(function, start: datetime) -> None:
    """The baseline: what a page would pay to aggregate raw rows (counts, sums and one percentile) per hour."""
    from django.db.models import Avg, Count, Sum
    from django.db.models.functions import TruncHour

    from functions_app.models import Invocation

    rows = (
        Invocation.objects.filter(function=function, queued_at__gte=start)
        .annotate(hour=TruncHour("finished_at"))
        .values("hour")
        .annotate(n=Count("id"), cost=Sum("cost_usd"), avg=Avg("duration_ms"))
    )
    list(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    from metrics_app import reports
    from metrics_app.charts import monitor_figures
    from metrics_app.models import Rollup
    from metrics_app.services import rollups_rebuild

    call_command("migrate", verbosity=0)
    now = datetime.now(UTC)
    started = time.perf_counter()
    user, function = seed(args.rows, now)
    seed_s = time.perf_counter() - started
    started = time.perf_counter()
    rebuilt = rollups_rebuild(function_ids=[function.pk])
    rebuild_s = time.perf_counter() - started
    print(f"rebuilt roll-ups: {rebuilt} in {rebuild_s:.1f}s", file=sys.stderr)

    client = Client()
    client.force_login(user)
    figures, page, page_status = {}, {}, {}
    for label, span in RANGES.items():
        end = datetime.now(UTC)
        figures[label] = timed(
            lambda span=span, end=end: json.dumps(monitor_figures(function=function, start=end - span, end=end)),
            args.runs,
        )
        url = f"/functions/{function.name}/monitor/?range={label}"
        page_status[label] = client.get(url).status_code
        if page_status[label] == 200:
            page[label] = timed(lambda url=url: client.get(url), args.runs)
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    report = timed(
        lambda: json.dumps(
            reports.report_json(
                reports.usage_report(owner=user, start=month_start, end=now + timedelta(days=1), group_by="version")
            )
        ),
        args.runs,
    )
    report_pages = {}
    for group_by in ("function", "version"):
        url = f"/reports/?month={now:%Y-%m}&group_by={group_by}"
        page_status[f"report-{group_by}"] = client.get(url).status_code
        report_pages[group_by] = timed(lambda url=url: client.get(url), args.runs)
    baseline = timed(lambda: raw_scan(function, now - timedelta(days=30)), 1)
    worst_page = max((v["p50"] for v in [*(page or figures).values(), *report_pages.values()]), default=0.0)
    result = {
        "P6_monitor_page_ms": page,
        "monitor_page_status": page_status,
        "monitor_figures_json_ms": figures,
        "usage_report_json_ms": report,
        "P6_report_page_ms": report_pages,
        "baseline_raw_scan_30d_hourly_aggregate_ms": baseline,
        "worst_p50_ms": worst_page,
        "ratio_worst_p50_to_raw_scan_p50": round(worst_page / baseline["p50"], 4) if baseline["p50"] else None,
        "goal": f"worst_p50_ms (Monitor page over 1h/24h/7d/30d and the report page) < {GOAL_MS}",
        "goal_met": worst_page < GOAL_MS,
        "rows": args.rows,
        "rollup_rows": Rollup.objects.count(),
        "seed_s": round(seed_s, 1),
        "rollups_rebuild_s": round(rebuild_s, 1),
        "setup": "SQLite (WAL) in a temp var dir; 1 function, 3 versions, 30 days of rows; page via Django's test "
        "client with a logged-in session (includes template rendering and plotly JSON); baseline: one hourly "
        "GROUP BY over the raw rows (counts, sum, avg only, no percentiles)",
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
