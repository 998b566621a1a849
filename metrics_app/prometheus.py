"""The Prometheus text exposition (format 0.0.4), written by hand from the running-total roll-ups: counters never
go down (the totals are never deleted by retention), and a scrape costs one aggregate query, never a raw scan.

Histogram ``le`` edges are every fifth edge of the roll-ups' log scales (about 3.16x apart), so the cumulative
counts are exact, not interpolated.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from console.processes import CONTROL_QUEUE, INVOCATION_QUEUE, SYNC_QUEUE
from metrics_app.histograms import DURATION, INIT, cumulative
from metrics_app.selectors import Usage

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LE_EVERY = 5

COUNTERS = [
    ("ephemera_invocations_total", "Finished invocations (succeeded, failed, timed out or expired).", "invocations"),
    ("ephemera_errors_total", "Invocations that failed, timed out or expired.", "errors"),
    ("ephemera_timeouts_total", "Invocations stopped at their timeout.", "timeouts"),
    ("ephemera_throttles_total", "Calls refused for concurrency (version label '-').", "throttles"),
    ("ephemera_cold_starts_total", "Invocations that started a new environment.", "cold_starts"),
    ("ephemera_billed_gb_seconds_total", "Billed GB-seconds, init included.", "gb_seconds"),
]


def escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def labels(**values: Any) -> str:
    return "{" + ",".join(f'{name}="{escape(value)}"' for name, value in values.items()) + "}"


def number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def exposition(
    *, totals: Iterable[dict[str, Any]], queue_messages: dict[str, int] | None, queued_rows: int, hosts: list[dict]
) -> str:
    """The whole scrape body. ``totals`` are selector rows with function_name, owner__username, version, usage."""
    series = [
        (labels(function=row["function_name"], owner=row["owner__username"], version=row["version"]), row["usage"])
        for row in totals
    ]
    lines: list[str] = []
    for name, help_text, attribute in COUNTERS:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
        lines += [f"{name}{label} {number(getattr(usage, attribute))}" for label, usage in series]
    lines += ["# HELP ephemera_cost_usd_total Cost in USD at the configured price table, by part.",
              "# TYPE ephemera_cost_usd_total counter"]  # fmt: skip
    for label, usage in series:
        for part in ("request", "run", "init"):
            value = float(getattr(usage, f"{part}_usd"))
            lines.append(f'ephemera_cost_usd_total{label[:-1]},part="{part}"}} {number(value)}')
    lines += _histogram(
        "ephemera_invocation_duration_seconds", "Run duration.", series, lambda u: (u.duration_hist, u.duration_ms_sum)
    )
    lines += _histogram(
        "ephemera_init_duration_seconds", "Cold-start init duration.", series, lambda u: (u.init_hist, u.init_ms_sum)
    )
    lines += [
        "# HELP ephemera_queued_invocations Invocation rows waiting to run (status queued).",
        "# TYPE ephemera_queued_invocations gauge",
        f"ephemera_queued_invocations {queued_rows}",
    ]
    if queue_messages is not None:
        lines += [
            "# HELP ephemera_queue_messages Messages waiting in each Celery broker queue.",
            "# TYPE ephemera_queue_messages gauge",
            *(f"ephemera_queue_messages{labels(queue=name)} {count}" for name, count in queue_messages.items()),
        ]
    lines += ["# HELP ephemera_warm_environments Warm environments per executor host.",
              "# TYPE ephemera_warm_environments gauge"]  # fmt: skip
    lines += [f"ephemera_warm_environments{labels(host=h['host'])} {h.get('warm_environments', 0)}" for h in hosts]
    return "\n".join(lines) + "\n"


def _histogram(name: str, help_text: str, series: list[tuple[str, Usage]], pick: Any) -> list[str]:
    scale = DURATION if "invocation" in name else INIT
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
    for label, usage in series:
        counts, sum_ms = pick(usage)
        inner = label[1:-1]
        for edge_ms, count in cumulative(scale, counts, LE_EVERY):
            lines.append(f'{name}_bucket{{{inner},le="{edge_ms / 1000:.6g}"}} {count}')
        lines.append(f'{name}_bucket{{{inner},le="+Inf"}} {sum(counts)}')
        lines.append(f"{name}_sum{label} {number(sum_ms / 1000)}")
        lines.append(f"{name}_count{label} {sum(counts)}")
    return lines


QUEUES = (SYNC_QUEUE, INVOCATION_QUEUE, CONTROL_QUEUE)


def prometheus_scrape() -> str:
    """Gather the figures (running totals, queue depth, warm environments) and render them."""
    import redis

    from console.redis import redis_client
    from functions_app.models import Invocation, InvocationStatus
    from functions_app.selectors import executor_hosts
    from metrics_app.selectors import owner_totals

    try:
        queue_messages: dict[str, int] | None = {name: int(redis_client().llen(name)) for name in QUEUES}
        hosts = executor_hosts()
    except redis.RedisError:  # the database figures are still worth a scrape while Redis is away
        queue_messages, hosts = None, []
    queued_rows = Invocation.objects.filter(status=InvocationStatus.QUEUED).count()  # index invocation_status_due
    return exposition(totals=owner_totals(), queue_messages=queue_messages, queued_rows=queued_rows, hosts=hosts)
