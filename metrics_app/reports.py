"""Cost and usage reports by function, version or owner for any period, from roll-ups, with totals, a month-end
forecast, and CSV / JSON renderings shared by the API and the ``usage_report`` command.

Money is reported as decimal strings with 12 places, the precision of the roll-ups (1 ms at 128 MB costs
$0.000000002). The forecast is linear: the current calendar month's cost so far divided by the elapsed fraction
of the month (UTC); it is given only when the report's period includes the present.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import User
from django.utils import timezone

from console.exceptions import ServiceError
from metrics_app import selectors
from metrics_app.models import Granularity
from metrics_app.pricing import compute_cost_tiered, price_table
from metrics_app.selectors import Usage, usage_merge

USD = Decimal("1e-12")
GROUPINGS = {
    "function": ("owner__username", "function_name"),
    "version": ("owner__username", "function_name", "version"),
    "owner": ("owner__username",),
}
KEY_LABELS = {"owner__username": "owner", "function_name": "function", "version": "version"}
MEASURES = [
    "invocations",
    "errors",
    "throttles",
    "cold_starts",
    "gb_seconds",
    "request_usd",
    "run_usd",
    "init_usd",
    "total_usd",
    "cold_start_share",
]
MAX_PERIOD = timedelta(days=800)


class InvalidReportPeriod(ServiceError):
    type = "InvalidReportPeriod"


@dataclass(frozen=True)
class UsageReport:
    start: datetime
    end: datetime
    group_by: str
    granularity: str
    scope: str  # "own" or "all"
    rows: list[dict[str, Any]]
    totals: dict[str, Any]
    forecast: dict[str, Any] | None


def month_period(month: str) -> tuple[datetime, datetime]:
    """ "2026-11" -> [2026-11-01, 2026-12-01) in UTC."""
    try:
        start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        raise InvalidReportPeriod(f"month must look like 2026-11, not {month!r}.") from None
    return start, _next_month(start)


def _next_month(moment: datetime) -> datetime:
    return (moment.replace(day=1) + timedelta(days=32)).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def report_granularity(start: datetime, end: datetime) -> str:
    """The roll-ups a period is summed from, coarsest first, e.g. "day" for whole days or "day+hour+minute"."""
    used = {granularity for granularity, _, _ in selectors.period_segments(start=start, end=end)}
    return "+".join(g for g in (Granularity.DAY, Granularity.HOUR, Granularity.MINUTE) if g in used)


def usage_report(
    *,
    owner: User | None,
    start: datetime,
    end: datetime,
    group_by: str = "function",
    now: datetime | None = None,
) -> UsageReport:
    """Usage and cost over [start, end) grouped by function, version or owner; ``owner=None`` reports everyone."""
    if group_by not in GROUPINGS:
        raise ServiceError(f"group_by must be one of {', '.join(GROUPINGS)}.", details={"group_by": [group_by]})
    if end <= start:
        raise InvalidReportPeriod("end must be after start.")
    if end - start > MAX_PERIOD:
        raise InvalidReportPeriod("A report covers at most 800 days.")
    start, end = start.replace(second=0, microsecond=0), end.replace(second=0, microsecond=0)
    granularity = report_granularity(start, end)
    groups = selectors.usage_by(owner=owner, start=start, end=end, group_by=GROUPINGS[group_by])
    groups.sort(key=lambda item: (-item[1].total_usd, [str(value) for value in item[0].values()]))
    rows = [{**{KEY_LABELS[k]: v for k, v in key.items()}, **measures(usage)} for key, usage in groups]
    totals = measures(usage_merge(usage for _, usage in groups))
    totals["volume_discount_usd"] = _money(_volume_discount(groups, group_by, owner, start, end))
    now = now or timezone.now()
    forecast = month_forecast(owner=owner, now=now) if start <= now < end else None
    return UsageReport(start, end, group_by, granularity, "all" if owner is None else "own", rows, totals, forecast)


def measures(usage: Usage) -> dict[str, Any]:
    share = usage.init_usd / (usage.run_usd + usage.init_usd) if usage.run_usd + usage.init_usd else Decimal(0)
    return {
        "invocations": usage.invocations,
        "errors": usage.errors,
        "throttles": usage.throttles,
        "cold_starts": usage.cold_starts,
        "gb_seconds": round(usage.gb_seconds, 3),
        "request_usd": _money(usage.request_usd),
        "run_usd": _money(usage.run_usd),
        "init_usd": _money(usage.init_usd),
        "total_usd": _money(usage.total_usd),
        "cold_start_share": round(float(share), 4),
    }


def _money(value: Decimal) -> str:
    """Fixed-point, never exponent notation ("0.000000000000", not "0E-12")."""
    return format(Decimal(value).quantize(USD), "f")


def _volume_discount(
    groups: list[tuple[dict, Usage]],
    group_by: str,
    owner: User | None,
    start: datetime,
    end: datetime,
) -> Decimal:
    """What Lambda's monthly volume tiers would take off the compute, per owner, treating the period as one month
    (exact for a calendar month; every owner below 6 billion GB-s gets nothing off)."""
    per_owner: dict[str, Usage] = {}
    if group_by != "owner":
        owner_groups = selectors.usage_by(owner=owner, start=start, end=end, group_by=("owner__username",))
    else:
        owner_groups = groups
    for key, usage in owner_groups:
        per_owner[key["owner__username"]] = usage
    flat_rate = price_table().gb_second_usd["x86_64"]
    discount = Decimal(0)
    for usage in per_owner.values():
        seconds = Decimal(str(usage.gb_seconds))
        discount += seconds * flat_rate - compute_cost_tiered(gb_seconds=seconds)
    return discount


def month_forecast(*, owner: User | None, now: datetime) -> dict[str, Any]:
    """The current month's cost so far and a linear month-end forecast (so far / elapsed fraction of the month)."""
    month_start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    month_end = _next_month(month_start)
    so_far = usage_merge(
        usage
        for _, usage in selectors.usage_by(owner=owner, start=month_start, end=now + timedelta(minutes=1), group_by=())
    ).total_usd
    elapsed = (now - month_start) / (month_end - month_start)
    forecast = so_far / Decimal(str(elapsed)) if elapsed > 0 else so_far
    return {
        "month": f"{month_start:%Y-%m}",
        "month_to_date_usd": _money(so_far),
        "elapsed_fraction": round(elapsed, 4),
        "forecast_usd": _money(forecast),
        "method": "linear: month-to-date cost / elapsed fraction of the month (UTC)",
    }


def report_json(report: UsageReport) -> dict[str, Any]:
    return {
        "start": report.start.isoformat(),
        "end": report.end.isoformat(),
        "group_by": report.group_by,
        "granularity": report.granularity,
        "scope": report.scope,
        "rows": report.rows,
        "totals": report.totals,
        "forecast": report.forecast,
        "notes": "Costs at the configured price table's first tier per invocation; volume_discount_usd is what "
        "monthly GB-s tiers would take off. No free tier is applied.",
    }


def report_csv(report: UsageReport) -> str:
    """One line per group, then a TOTAL line; the forecast, when there is one, as a last line."""
    keys = [KEY_LABELS[name] for name in GROUPINGS[report.group_by]]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*keys, *MEASURES])
    for row in report.rows:
        writer.writerow([row[k] for k in keys] + [row[m] for m in MEASURES])
    writer.writerow(["TOTAL"] + [""] * (len(keys) - 1) + [report.totals[m] for m in MEASURES])
    if report.forecast:
        label = f"FORECAST {report.forecast['month']}"
        total_column = MEASURES.index("total_usd")
        cells = [""] * len(MEASURES)
        cells[total_column] = report.forecast["forecast_usd"]
        writer.writerow([label] + [""] * (len(keys) - 1) + cells)
    return out.getvalue()
