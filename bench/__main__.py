"""`make bench`: run every benchmark, print the figures and write them, dated, with the machine, to BENCHMARKS.md.

Each benchmark is a script that prints one JSON object and measures Ephemera against a baseline in the same run.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
BENCHMARKS = [
    ("P1 + P5: zygote cold start, idle warm environment memory", ["bench/bench_cold_start.py"]),
    ("P2: warm synchronous invoke through HTTP", ["bench/bench_sync_invoke.py"]),
    ("P3 + P4: async completions per second and scaling", ["bench/bench_async_throughput.py"]),
    ("P6: monitoring page over one million invocation rows", ["bench/bench_monitor_page.py"]),
    ("P8 + P9: HTTP triggers on the production web server", ["bench/bench_http.py"]),
    ("P10: draining a Redis Stream in batches of 100", ["bench/bench_streams.py"]),
    ("P11: schedule precision with 1,000 schedules", ["bench/bench_schedules.py"]),
    ("P12: Invoke through Lambda's API with SigV4", ["bench/bench_lambda_api.py"]),
]
# The invoke path again on the production backends, when a PostgreSQL and a Redis server answer (as on CI's
# machines): each run gets a fresh database BENCH_DATABASE_URL names and a flushed Redis database.
SERVER_BENCHMARKS = [
    ("P2 on PostgreSQL + Redis server", ["bench/bench_sync_invoke.py"]),
    ("P3 + P4 on PostgreSQL + Redis server", ["bench/bench_async_throughput.py"]),
]
SERVER_DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/ephemera_bench")
SERVER_REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")


def summary_rows(results: dict[str, dict]) -> list[str]:
    """One line per performance goal (the goal column): the figure, its baseline from the same run, and the goal."""
    cold = results["P1 + P5: zygote cold start, idle warm environment memory"]
    sync = results["P2: warm synchronous invoke through HTTP"]
    flow = results["P3 + P4: async completions per second and scaling"]
    page = results["P6: monitoring page over one million invocation rows"]
    p1 = cold["P1"]
    return [
        "| # | figure | baseline (same run) | ratio | goal |",
        "|---|---|---|---|---|",
        f"| P1 | cold start (zygote, boto3 handler, isolation on): init p50 {p1['cold_init_ms']['p50']} ms, "
        f"end to end {p1['cold_invoke_end_to_end_ms']['p50']} ms (network-enabled: init p50 "
        f"{cold['network_enabled_cold_init_ms']['p50']} ms) | fresh `python3 -I -S` + `import boto3`: "
        f"{p1['baseline_fresh_python_import_boto3_ms']['p50']} ms | {p1['ratio_init_p50_to_baseline_p50']}x | "
        "p50 <= 10 ms and <= 0.1x |",
        p2_row("", sync),
        f"| P3 | async completions: {flow['P3_async_completions_per_s']}/s | stock Celery prefork -c 2 with a "
        f"result backend: {flow['baseline_stock_celery_prefork2_per_s']}/s | {flow['ratio_P3']}x | >= 1.5x |",
        f"| P4 | completions/s by executor processes: {flow['P4_completions_per_s_by_executor_processes']} | "
        f"1 process | 2 vs 1: {flow['P4_ratio_2_vs_1']}x, 8 vs 2: {flow['P4_ratio_8_vs_2']}x | >= 1.6x; no collapse |",
        f"| P5 | idle warm environment: {cold['P5']} | | | <= 20 MB PSS |",
        *server_rows(results),
        *p8_p9_rows(results["P8 + P9: HTTP triggers on the production web server"]),
        p10_row(results["P10: draining a Redis Stream in batches of 100"]),
        p11_row(results["P11: schedule precision with 1,000 schedules"]),
        p12_row(results["P12: Invoke through Lambda's API with SigV4"]),
        f"| P6 | Monitor page (1h/24h/7d/30d) and report page with {page['rows']:,} invocation rows, worst p50: "
        f"{page['worst_p50_ms']} ms | one hourly GROUP BY over the raw rows: "
        f"{page['baseline_raw_scan_30d_hourly_aggregate_ms']['p50']} ms | {page['ratio_worst_p50_to_raw_scan_p50']}x | "
        "< 500 ms |",
    ]


def p8_p9_rows(http: dict) -> list[str]:
    load, slow = http["P8_keep_alive_load"], http["P9_one_second_function_at_once"]
    return [
        f"| P8 | warm request through a function URL (keep-alive): p50 {http['P8_function_url_ms']['p50']} ms; "
        f"{load['clients']} keep-alive clients for {load['duration_s']} s: {load['requests_per_s']}/s, p99 "
        f"{(load['latency_ms'] or {}).get('p99')} ms, errors {load['errors'] or 0} | native sync invoke, same server: "
        f"{http['baseline_native_sync_invoke_ms']['p50']} ms | {http['ratio_p50']}x | "
        "<= 1.2x (stretch 1.0x); 0 errors |",
        f"| P9 | {slow['requests']} requests at once to a 1 s function ({slow['executor_slots']} executor slots): "
        f"statuses {slow['statuses']}, all answered in {slow['all_answered_s']} s, web RSS peak "
        f"{slow['web_rss_peak_mb']} MB | | | no 5xx; web memory stated |",
    ]


def p10_row(drain: dict) -> str:
    return (
        f"| P10 | a Redis Stream drained by an event source mapping, batch size 100: "
        f"{drain['P10_stream_records_per_s']} records/s ({drain['batches']} batches; lag over time: JSON below) | "
        f"the per-event async path: {drain['baseline_async_events_completed_per_s']} completions/s | "
        f"{drain['ratio']}x | >= 10x |"
    )


def p11_row(ticks: dict) -> str:
    fired, started, beat = (
        ticks["P11_tick_lateness_ms"],
        ticks["tick_to_run_start_ms"],
        ticks["baseline_celery_beat_tick_to_task_start_ms"],
    )
    return (
        f"| P11 | {fired['n']} schedules due at the same minute: tick lateness (published) p50 {fired['p50']} ms, "
        f"p99 {fired['p99']} ms; tick to run start p50 {started['p50']} ms, p99 {started['p99']} ms | Celery beat, "
        f"as many crontab entries, tick to task start: p50 {beat['p50']} ms, p99 {beat['p99']} ms | run start p99: "
        f"{ticks['ratio_run_start_p99']}x | p99 <= 1 s |"
    )


def p12_row(invoke: dict) -> str:
    return (
        f"| P12 | a synchronous Invoke through Lambda's API, every request SigV4-signed and verified: p50 "
        f"{invoke['P12_lambda_api_invoke_sigv4_ms']['p50']} ms | the native sync invoke, same server: "
        f"{invoke['baseline_native_sync_invoke_ms']['p50']} ms | {invoke['ratio_p50']}x | <= 1.1x |"
    )


def p2_row(label: str, sync: dict) -> str:
    phases = ", ".join(f"{name} {value}" for name, value in sync["phases_p50_ms"].items())
    return (
        f"| P2{label} | warm sync invoke via HTTP: p50 {sync['P2_warm_sync_invoke_http_ms']['p50']} ms (through "
        f"Celery's sync queue instead of the fast lane: {sync['sync_via_celery_queue_ms']['p50']} ms; the web's floor, "
        f"a DryRun invoke: {sync['web_floor_ms']['p50']} ms). Phases, p50 ms: {phases} | Celery "
        f"`delay().get()` no-op: {sync['baseline_celery_delay_get_ms']['p50']} ms | {sync['ratio_p50']}x | <= 1.0x |"
    )


def server_rows(results: dict[str, dict]) -> list[str]:
    sync, flow = results.get("P2 on PostgreSQL + Redis server"), results.get("P3 + P4 on PostgreSQL + Redis server")
    rows = [p2_row(" (PostgreSQL)", sync)] if sync else []
    if flow:
        rows += [
            f"| P3 (PostgreSQL) | async completions: {flow['P3_async_completions_per_s']}/s | stock Celery prefork "
            f"-c 2 with a result backend: {flow['baseline_stock_celery_prefork2_per_s']}/s | {flow['ratio_P3']}x | "
            ">= 1.5x |",
            f"| P4 (PostgreSQL) | completions/s by executor processes: "
            f"{flow['P4_completions_per_s_by_executor_processes']} | 1 process | 2 vs 1: {flow['P4_ratio_2_vs_1']}x, "
            f"8 vs 2: {flow['P4_ratio_8_vs_2']}x | >= 1.6x; >= 1.0x |",
        ]
    return rows


def server_env() -> dict[str, str] | None:
    """The environment of a run on PostgreSQL and a Redis server, each emptied first; None when either is away."""
    import psycopg
    import redis

    name = SERVER_DATABASE_URL.rsplit("/", 1)[1]
    try:
        with psycopg.connect(SERVER_DATABASE_URL.rsplit("/", 1)[0] + "/postgres", autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            connection.execute(f'CREATE DATABASE "{name}"')
        redis.Redis.from_url(SERVER_REDIS_URL).flushdb()
    except (psycopg.Error, redis.RedisError) as exc:
        print(f"  no PostgreSQL + Redis server run: {exc}", flush=True)
        return None
    return {"BENCH_USE_ENV": "1", "DATABASE_URL": SERVER_DATABASE_URL, "REDIS_URL": SERVER_REDIS_URL}


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return (
        f"{platform.node()}: {os.cpu_count()} vCPU ({cpu}), {memory_kb // 1024 // 1024} GiB RAM, "
        f"Linux {platform.release()}, Python {platform.python_version()} (sandbox: /usr/bin/python3)"
    )


def run(command: list[str], env: dict[str, str] | None = None) -> dict:
    started = time.monotonic()
    print(f"running {' '.join(command)} {'on ' + env['DATABASE_URL'] if env else ''}...", flush=True)
    completed = subprocess.run(
        [sys.executable, *command],
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, **(env or {})},
    )
    if completed.returncode != 0:
        raise SystemExit(f"{command[0]} failed:\n{completed.stderr[-3000:]}")
    print(f"  done in {time.monotonic() - started:.0f} s", flush=True)
    return json.loads(completed.stdout[completed.stdout.index("{") :])


def faults_section() -> str:
    """The Faults section `make chaos --record` wrote (the file's last), kept as it is."""
    path = BASE_DIR / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else ""
    heading = "\n## Faults\n"
    return heading.lstrip("\n") + text.split(heading, 1)[1] if heading in text else ""


def main() -> None:
    results = [(title, run(command)) for title, command in BENCHMARKS]
    for title, command in SERVER_BENCHMARKS:
        env = server_env()
        if env is not None:
            results.append((title, run(command, env)))
    by_title = dict(results)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Benchmarks",
        "",
        f"Latest run: **{stamp}** on {machine()}.",
        "",
        "Produced by `make bench` (`python -m bench`); every figure is measured against its baseline in the same run.",
        "The goal column holds the project's performance goals. Raw JSON of each benchmark follows.",
        "",
        *summary_rows(by_title),
        "",
    ]
    for title, result in results:
        lines += [f"## {title}", "", "```json", json.dumps(result, indent=2), "```", ""]
    lines.append(faults_section())
    (BASE_DIR / "BENCHMARKS.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
