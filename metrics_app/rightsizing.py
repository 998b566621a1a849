"""Memory right-sizing from recorded telemetry: a what-if table of duration and cost at other memory sizes, OOM
risk flags, and a recommendation with its expected monthly saving.

The model (also returned as ``MODEL`` in every answer):

* CPU share grows with memory as on Lambda: ``vcpu(m) = min(m, 1769) / 1769`` (1,769 MB = one vCPU; a
  single-threaded Python handler gains nothing past one vCPU).
* The observed average run time ``d0`` at size ``m0`` splits into a CPU-bound part ``c = min(cpu_ms, d0)`` and
  the rest ``w = d0 - c`` (waiting on I/O, sleeping), which memory does not change.
* At size ``m`` the run takes ``w + c x vcpu(m0) / vcpu(m)``; init time per invocation is kept as observed.
* Cost per invocation = request price + ``m/1024 x (run + init + 0.5 ms rounding) / 1000 x`` the first tier's
  GB-second rate; monthly cost = that x the invocations per 30 days seen in the window.
* A size is at risk of running out of memory when the observed peak (p99 upper bound or maximum) reaches 90%
  of it. Peak memory is assumed not to depend on the size.
* The recommendation is the cheapest size without OOM risk; among sizes within 1% of the cheapest, the fastest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from functions_app.models import Function
from metrics_app import selectors
from metrics_app.pricing import PriceTable, duration_cost, price_table
from metrics_app.selectors import Usage

ONE_VCPU_MB = 1769
CANDIDATE_MB = (128, 256, 512, 768, 1024, 1536, 1769, 2048, 3008, 4096, 6144, 8192, 10240)
OOM_THRESHOLD = 0.9
WINDOW_DAYS = 14
DAYS_PER_MONTH = 30
NEAR_CHEAPEST = 0.01
MODEL = (
    "vcpu(m) = min(m, 1769)/1769; run(m) = (run - cpu) + cpu x vcpu(m0)/vcpu(m), cpu = min(avg cpu_ms, avg run); "
    "init per invocation unchanged; cost = request + m/1024 x (run + init + 0.5)/1000 x GB-s rate (first tier); "
    "OOM risk when peak memory (p99 upper bound or max) >= 90% of m; monthly = 30 days at the observed rate."
)


@dataclass(frozen=True)
class SizeRow:
    memory_mb: int
    duration_ms: float
    cost_per_invocation_usd: float
    cost_per_million_usd: float
    monthly_cost_usd: float
    oom_risk: bool
    current: bool


@dataclass(frozen=True)
class Analysis:
    baseline_memory_mb: int | None
    window_days: float
    invocations_observed: int
    monthly_invocations: float
    avg_duration_ms: float
    avg_cpu_ms: float
    avg_init_ms: float
    peak_memory_p99_mb: float | None
    peak_memory_max_mb: float
    rows: list[SizeRow] = field(default_factory=list)
    recommended_mb: int | None = None
    expected_monthly_saving_usd: float = 0.0
    reason: str = ""
    model: str = MODEL

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_ms_at(*, memory_mb: int, baseline_mb: int, run_ms: float, cpu_ms: float) -> float:
    cpu = min(cpu_ms, run_ms)
    share = min(baseline_mb, ONE_VCPU_MB) / min(memory_mb, ONE_VCPU_MB)
    return (run_ms - cpu) + cpu * share


def rightsizing_analyse(
    *,
    usage: Usage,
    baseline_mb: int,
    window_days: float,
    arch: str = "x86_64",
    prices: PriceTable | None = None,
    candidates: tuple[int, ...] = CANDIDATE_MB,
) -> Analysis:
    """The what-if table and recommendation for the usage observed at one memory size (pure)."""
    prices = prices or price_table()
    p99 = usage.memory_p_upper(99)
    peak = max(p99 or 0.0, usage.peak_memory_mb_max)
    monthly = usage.runs / window_days * DAYS_PER_MONTH if window_days > 0 else 0.0
    rows = []
    for size in sorted({*candidates, baseline_mb}):
        run = run_ms_at(memory_mb=size, baseline_mb=baseline_mb, run_ms=usage.avg_duration_ms, cpu_ms=usage.avg_cpu_ms)
        each = float(prices.request_usd) + duration_cost(
            memory_mb=size, billed_ms=run + usage.avg_init_ms + 0.5, arch=arch, prices=prices
        )
        rows.append(
            SizeRow(
                memory_mb=size,
                duration_ms=run,
                cost_per_invocation_usd=each,
                cost_per_million_usd=each * 1_000_000,
                monthly_cost_usd=each * monthly,
                oom_risk=peak >= OOM_THRESHOLD * size,
                current=size == baseline_mb,
            )
        )
    base = Analysis(
        baseline_memory_mb=baseline_mb,
        window_days=window_days,
        invocations_observed=usage.runs,
        monthly_invocations=monthly,
        avg_duration_ms=usage.avg_duration_ms,
        avg_cpu_ms=usage.avg_cpu_ms,
        avg_init_ms=usage.avg_init_ms,
        peak_memory_p99_mb=p99,
        peak_memory_max_mb=usage.peak_memory_mb_max,
        rows=rows,
    )
    return _recommend(base)


def _recommend(analysis: Analysis) -> Analysis:
    safe = [row for row in analysis.rows if not row.oom_risk]
    current = next(row for row in analysis.rows if row.current)
    if not safe:
        return _with(analysis, None, 0.0, "Every size is at risk of running out of memory at the observed peak.")
    cheapest = min(row.cost_per_invocation_usd for row in safe)
    near = [row for row in safe if row.cost_per_invocation_usd <= cheapest * (1 + NEAR_CHEAPEST)]
    best = min(near, key=lambda row: (row.duration_ms, row.memory_mb))
    saving = current.monthly_cost_usd - best.monthly_cost_usd
    if best.memory_mb == current.memory_mb:
        reason = "The current size is already the cheapest without memory risk."
    elif current.oom_risk:
        reason = f"Peak memory is within 10% of {current.memory_mb} MB: {best.memory_mb} MB is the cheapest safe size."
    else:
        reason = f"{best.memory_mb} MB is the cheapest size without memory risk (fastest within 1% of the cheapest)."
    return _with(analysis, best.memory_mb, saving, reason)


def _with(analysis: Analysis, recommended: int | None, saving: float, reason: str) -> Analysis:
    values = {**analysis.__dict__, "recommended_mb": recommended, "expected_monthly_saving_usd": saving}
    values["reason"] = reason
    return Analysis(**values)


def function_rightsizing(*, function: Function, now: datetime | None = None) -> Analysis:
    """Right-sizing of a function from its last 14 days of day roll-ups, at its current memory size (or, if it
    has not run at that size, at the size it ran most)."""
    now = now or timezone.now()
    since = max(now - timedelta(days=WINDOW_DAYS), function.created_at)
    window_days = max((now - since).total_seconds() / 86400, 1 / 24)
    profile = selectors.function_memory_profile(function=function, since=since)
    profile = {size: usage for size, usage in profile.items() if usage.runs}
    if not profile:
        return Analysis(
            baseline_memory_mb=function.memory_mb,
            window_days=window_days,
            invocations_observed=0,
            monthly_invocations=0.0,
            avg_duration_ms=0.0,
            avg_cpu_ms=0.0,
            avg_init_ms=0.0,
            peak_memory_p99_mb=None,
            peak_memory_max_mb=0.0,
            reason=f"No invocations with a recorded duration in the last {WINDOW_DAYS} days.",
        )
    baseline = function.memory_mb if function.memory_mb in profile else max(profile, key=lambda s: profile[s].runs)
    return rightsizing_analyse(usage=profile[baseline], baseline_mb=baseline, window_days=window_days)
