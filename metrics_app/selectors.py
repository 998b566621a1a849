"""Reads over roll-ups (never raw invocation rows): one aggregate query per question, summed in the database,
turned into ``Usage`` values whose derived figures (rates, averages, percentiles) are plain properties."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db.models import F, Max, Q, QuerySet, Sum
from django.utils import timezone

from functions_app.http_gateway import HTTP_API
from functions_app.models import LATEST, Function, FunctionUrl, HttpApi
from metrics_app.histograms import DURATION, INIT, MEMORY, percentile, percentile_upper
from metrics_app.models import (
    ADDITIVE_FIELDS,
    MAX_FIELDS,
    TRIGGER_ADDITIVE_FIELDS,
    TRIGGER_MAX_FIELDS,
    UNRESOLVED,
    Granularity,
    Rollup,
    StreamRollup,
    TriggerRollup,
)
from metrics_app.services import bucket_start

STEP: dict[str, timedelta] = {
    Granularity.MINUTE: timedelta(minutes=1),
    Granularity.HOUR: timedelta(hours=1),
    Granularity.DAY: timedelta(days=1),
}
# Charts pick the finest granularity that keeps a range to a few hundred points and is still retained.
MINUTE_RANGE_MAX = timedelta(hours=6)
HOUR_RANGE_MAX = timedelta(days=14)


@dataclass(frozen=True)
class Usage:
    """Sums over any set of roll-up rows, with the figures derived from them."""

    invocations: int = 0
    errors: int = 0
    timeouts: int = 0
    throttles: int = 0
    cold_starts: int = 0
    runs: int = 0
    duration_ms_sum: float = 0.0
    init_ms_sum: float = 0.0
    queue_wait_ms_sum: float = 0.0
    prepare_ms_sum: float = 0.0
    overhead_ms_sum: float = 0.0
    cpu_ms_sum: float = 0.0
    billed_ms_sum: int = 0
    mb_ms_sum: float = 0.0  # sum of billed ms x memory MB: GB-seconds x 1,024,000
    request_usd: Decimal = Decimal(0)
    run_usd: Decimal = Decimal(0)
    init_usd: Decimal = Decimal(0)
    duration_ms_max: float = 0.0
    peak_memory_mb_max: float = 0.0
    duration_hist: tuple[int, ...] = (0,) * DURATION.count
    init_hist: tuple[int, ...] = (0,) * INIT.count
    memory_hist: tuple[int, ...] = (0,) * MEMORY.count

    @property
    def total_usd(self) -> Decimal:
        return self.request_usd + self.run_usd + self.init_usd

    @property
    def gb_seconds(self) -> float:
        return self.mb_ms_sum / 1024 / 1000

    @property
    def error_rate(self) -> float:
        return self.errors / self.invocations if self.invocations else 0.0

    @property
    def cold_rate(self) -> float:
        return self.cold_starts / self.runs if self.runs else 0.0

    @property
    def avg_duration_ms(self) -> float:
        return self.duration_ms_sum / self.runs if self.runs else 0.0

    @property
    def avg_init_ms(self) -> float:
        """Init time per invocation that ran (the cold starts' cost spread over all calls)."""
        return self.init_ms_sum / self.runs if self.runs else 0.0

    @property
    def avg_queue_wait_ms(self) -> float:
        return self.queue_wait_ms_sum / self.invocations if self.invocations else 0.0

    @property
    def avg_prepare_ms(self) -> float:
        """Claim to sandbox call, outside init (code download and unpacking on a host's first call of new code)."""
        return self.prepare_ms_sum / self.runs if self.runs else 0.0

    @property
    def avg_overhead_ms(self) -> float:
        """Handing the event to the sandbox and the answer back: what no other phase covers."""
        return self.overhead_ms_sum / self.runs if self.runs else 0.0

    @property
    def avg_cpu_ms(self) -> float:
        return self.cpu_ms_sum / self.runs if self.runs else 0.0

    # Percentiles come from log-scale buckets (a bucket's middle or upper edge), so on their own they can exceed
    # the largest value recorded (a p99 of 2.74 MB when the peak was 2.5 MB). No percentile is above the maximum:
    # where one is recorded, they are capped at it here, once, for every chart, table and API that reads them.

    def duration_p(self, q: float) -> float | None:
        return _at_most(percentile(DURATION, self.duration_hist, q), self.duration_ms_max)

    def init_p(self, q: float) -> float | None:
        return percentile(INIT, self.init_hist, q)  # no maximum init time is rolled up to cap it with

    def memory_p_upper(self, q: float) -> float | None:
        """A safe upper bound of the q-th percentile of peak memory (its bucket's upper edge, at most the peak)."""
        return _at_most(percentile_upper(MEMORY, self.memory_hist, q), self.peak_memory_mb_max)


def _at_most(value: float | None, maximum: float) -> float | None:
    """``value`` capped at a recorded maximum (0 means none was recorded: rows from before maxima were kept)."""
    return min(value, maximum) if value is not None and maximum > 0 else value


_SCALAR_FIELDS = [f.name for f in fields(Usage) if not f.name.endswith("_hist")]


def _annotations() -> dict[str, Any]:
    # Aliased (agg_*): an annotation may not share a model field's name.
    sums: dict[str, Any] = {f"agg_{name}": Sum(name) for name in ADDITIVE_FIELDS}
    sums["agg_mb_ms_sum"] = Sum(F("billed_ms_sum") * F("memory_mb"))
    sums.update({f"agg_{name}": Max(name) for name in MAX_FIELDS})
    return sums


def usage_from(aggregates: dict[str, Any]) -> Usage:
    row = {name.removeprefix("agg_"): value for name, value in aggregates.items()}
    scalars: dict[str, Any] = {name: row.get(name) or 0 for name in _SCALAR_FIELDS}
    for name in ("request_usd", "run_usd", "init_usd"):
        scalars[name] = Decimal(str(scalars[name]))
    return Usage(
        **scalars,
        duration_hist=tuple(row.get(name) or 0 for name in DURATION.columns),
        init_hist=tuple(row.get(name) or 0 for name in INIT.columns),
        memory_hist=tuple(row.get(name) or 0 for name in MEMORY.columns),
    )


def usage_merge(items: Iterable[Usage]) -> Usage:
    merged: dict[str, Any] = {}
    for item in items:
        for f in fields(Usage):
            value = getattr(item, f.name)
            if f.name not in merged:
                merged[f.name] = value
            elif f.name.endswith("_hist"):
                merged[f.name] = tuple(a + b for a, b in zip(merged[f.name], value, strict=True))
            elif f.name in MAX_FIELDS:
                merged[f.name] = max(merged[f.name], value)
            else:
                merged[f.name] += value
    return Usage(**merged)


def _grouped(queryset: QuerySet[Rollup], *group_by: str) -> list[dict[str, Any]]:
    if not group_by:
        return [queryset.aggregate(**_annotations())]
    return list(queryset.order_by().values(*group_by).annotate(**_annotations()))


def granularity_for(*, start: datetime, end: datetime, now: datetime | None = None) -> str:
    """Minute up to 6 hours, hour up to 14 days, else day; coarser when the finer rows are past retention."""
    now = now or timezone.now()
    span = end - start
    minute_kept = now - timedelta(days=settings.ROLLUP_MINUTE_RETENTION_DAYS)
    hour_kept = now - timedelta(days=settings.ROLLUP_HOUR_RETENTION_DAYS)
    if span <= MINUTE_RANGE_MAX and start >= minute_kept:
        return Granularity.MINUTE
    if span <= HOUR_RANGE_MAX and start >= hour_kept:
        return Granularity.HOUR
    return Granularity.DAY


def _rollups(granularity: str, start: datetime, end: datetime) -> QuerySet[Rollup]:
    return Rollup.objects.filter(
        granularity=granularity, bucket_start__gte=bucket_start(start, granularity), bucket_start__lt=end
    )


@dataclass(frozen=True)
class Timeseries:
    granularity: str
    step: timedelta
    buckets: list[datetime]
    points: list[Usage]

    def __len__(self) -> int:
        return len(self.buckets)


def function_timeseries(
    *, function: Function, start: datetime, end: datetime, granularity: str | None = None
) -> Timeseries:
    """The function's roll-ups per minute, hour or day over [start, end), all versions together, gaps as zero."""
    granularity = granularity or granularity_for(start=start, end=end)
    rows = _grouped(_rollups(granularity, start, end).filter(function=function), "bucket_start")
    by_time = {row["bucket_start"]: usage_from(row) for row in rows}
    buckets = _bucket_starts(granularity, start, end)
    return Timeseries(granularity, STEP[granularity], buckets, [by_time.get(moment, Usage()) for moment in buckets])


def _bucket_starts(granularity: str, start: datetime, end: datetime) -> list[datetime]:
    buckets, moment = [], bucket_start(start, granularity)
    while moment < end:
        buckets.append(moment)
        moment += STEP[granularity]
    return buckets


def function_versions(*, function: Function, start: datetime, end: datetime) -> dict[str, Usage]:
    """Usage per executed version over the range (throttles, which have no version, left out)."""
    granularity = granularity_for(start=start, end=end)
    rows = _grouped(_rollups(granularity, start, end).filter(function=function).exclude(version=UNRESOLVED), "version")
    return dict(sorted(((row["version"], usage_from(row)) for row in rows), key=lambda item: _version_order(item[0])))


def _version_order(label: str) -> tuple[int, int]:
    return (1, int(label)) if label.isdigit() else (0, 0)


def function_overview(*, function: Function, start: datetime, end: datetime) -> dict[str, Any]:
    """Headline figures of a function over [start, end) for the top of its Monitor page."""
    usage = usage_merge(function_versions(function=function, start=start, end=end).values())
    throttles = sum(p.throttles for p in function_timeseries(function=function, start=start, end=end).points)
    percentiles = {f"p{q}_ms": _rounded(usage.duration_p(q)) for q in (50, 90, 99)}
    compute = usage.run_usd + usage.init_usd
    return {
        "invocations": usage.invocations,
        "errors": usage.errors,
        "throttles": throttles,
        "error_rate": round(usage.error_rate, 4),
        "cold_rate": round(usage.cold_rate, 4),
        "init_p50_ms": _rounded(usage.init_p(50)),
        **percentiles,
        "peak_memory_max_mb": round(usage.peak_memory_mb_max, 1),
        "cost_usd": usage.total_usd,
        "cold_start_cost_share": round(float(usage.init_usd / compute), 4) if compute else 0.0,
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def function_memory_profile(*, function: Function, since: datetime) -> dict[int, Usage]:
    """Usage per configured memory size since a moment (day roll-ups, plus today's hours): for right-sizing."""
    rows = _grouped(
        Rollup.objects.filter(
            function=function, granularity=Granularity.DAY, bucket_start__gte=bucket_start(since, Granularity.DAY)
        ).exclude(version=UNRESOLVED),
        "memory_mb",
    )
    return {row["memory_mb"]: usage_from(row) for row in rows}


def function_summaries(*, owner: User, since: datetime, function_ids: Iterable[int] | None = None) -> dict[int, dict]:
    """For the function list: per function id, its invocations, error rate, p50 duration (ms), cold-start rate
    and cost (USD) since a moment, from one aggregate query over the owner's roll-ups (of only ``function_ids``
    when given: the page shown)."""
    now = timezone.now()
    granularity = granularity_for(start=since, end=now, now=now)
    rollups = _rollups(granularity, since, now + timedelta(days=1)).filter(owner=owner)
    if function_ids is not None:
        rollups = rollups.filter(function_id__in=list(function_ids))
    rows = _grouped(rollups, "function_id")
    out: dict[int, dict] = {}
    for row in rows:
        if row["function_id"] is None:
            continue
        usage = usage_from(row)
        p50 = usage.duration_p(50)
        out[row["function_id"]] = {
            "invocations": usage.invocations,
            "error_rate": round(usage.error_rate, 4),
            "p50_ms": None if p50 is None else round(p50, 1),
            "cold_rate": round(usage.cold_rate, 4),
            "cost_usd": usage.total_usd,
        }
    return out


def _ceil(moment: datetime, granularity: str) -> datetime:
    floor = bucket_start(moment, granularity)
    return floor if floor == moment else floor + STEP[granularity]


def period_segments(*, start: datetime, end: datetime) -> list[tuple[str, datetime, datetime]]:
    """[start, end) as the fewest whole roll-up buckets: minutes up to the first whole hour, hours up to the first
    whole day, days, then hours and minutes to the end. Ends are taken to the minute."""
    start, end = bucket_start(start, Granularity.MINUTE), bucket_start(end, Granularity.MINUTE)
    first_hour, last_hour = _ceil(start, Granularity.HOUR), bucket_start(end, Granularity.HOUR)
    first_day, last_day = _ceil(first_hour, Granularity.DAY), bucket_start(end, Granularity.DAY)
    if first_day <= last_day:
        segments = [
            (Granularity.MINUTE, start, first_hour),
            (Granularity.HOUR, first_hour, first_day),
            (Granularity.DAY, first_day, last_day),
            (Granularity.HOUR, last_day, last_hour),
            (Granularity.MINUTE, last_hour, end),
        ]
    elif first_hour <= last_hour:
        segments = [
            (Granularity.MINUTE, start, first_hour),
            (Granularity.HOUR, first_hour, last_hour),
            (Granularity.MINUTE, last_hour, end),
        ]
    else:
        segments = [(Granularity.MINUTE, start, end)]
    return [(granularity, low, high) for granularity, low, high in segments if low < high]


def usage_by(
    *, owner: User | None, start: datetime, end: datetime, group_by: tuple[str, ...]
) -> list[tuple[dict[str, Any], Usage]]:
    """Usage over [start, end) grouped by roll-up fields (e.g. function_name, version, owner__username), summed
    in one query over day rows for whole days and hour or minute rows at the ragged ends. ``owner=None`` means
    every owner (staff). Minute rows past their retention leave the ragged ends short."""
    period = Q(pk__in=[])
    for granularity, low, high in period_segments(start=start, end=end):
        period |= Q(granularity=granularity, bucket_start__gte=low, bucket_start__lt=high)
    rollups = Rollup.objects.filter(period)
    if owner is not None:
        rollups = rollups.filter(owner=owner)
    rows = _grouped(rollups, *group_by)
    return [({name: row[name] for name in group_by}, usage_from(row)) for row in rows]


def owner_totals(*, granularity: str = Granularity.TOTAL) -> list[dict[str, Any]]:
    """Per function, version and owner: the running totals (for /metrics)."""
    rows = _grouped(
        Rollup.objects.filter(granularity=granularity),
        "function_name",
        "owner__username",
        "version",
    )
    return [{**row, "usage": usage_from(row)} for row in rows]


# ---- HTTP triggers ------------------------------------------------------------------------------------------

TriggerKey = tuple[str, str, str]  # (trigger type, trigger id, route)
_TRIGGER_KEY = ("trigger_type", "trigger_id", "route")


@dataclass(frozen=True)
class TriggerTraffic:
    """Requests to one HTTP trigger over a range: a function URL (route ""), or one route of an HTTP API."""

    trigger_type: str
    trigger_id: str
    route: str
    label: str = ""  # "Function URL", "Function URL · live" or "shop · GET /items/{id}"
    api_name: str | None = None  # to link the HTTP API's page (None for a function URL, or an API deleted since)
    requests: int = 0
    status_4xx: int = 0
    status_5xx: int = 0
    latency_ms_sum: float = 0.0
    latency_ms_max: float = 0.0
    response_bytes_sum: int = 0
    latency_hist: tuple[int, ...] = (0,) * DURATION.count

    @property
    def key(self) -> TriggerKey:
        return (self.trigger_type, self.trigger_id, self.route)

    def latency_p(self, q: float) -> float | None:
        return _at_most(percentile(DURATION, self.latency_hist, q), self.latency_ms_max)

    @property
    def p50_ms(self) -> float | None:
        return _rounded(self.latency_p(50))

    @property
    def p99_ms(self) -> float | None:
        return _rounded(self.latency_p(99))


@dataclass(frozen=True)
class TriggerSeries:
    """Requests per bucket of each HTTP trigger; every list has one count per bucket, gaps as zero."""

    granularity: str
    buckets: list[datetime]
    requests: dict[TriggerKey, list[int]]


def function_http_triggers(*, function: Function, start: datetime, end: datetime) -> list[TriggerTraffic]:
    """Per HTTP trigger that called the function over [start, end) (its URLs, and every API route that counted
    against it, refusals included), busiest first: the Monitor's table, at the charts' granularity."""
    rows = _trigger_rollups(start, end).filter(function=function)
    return _labelled(_traffic(rows), owner_id=function.owner_id)


def http_api_triggers(*, api: HttpApi, start: datetime, end: datetime) -> list[TriggerTraffic]:
    """Per route of an HTTP API over [start, end), UNMATCHED_ROUTE included, busiest first."""
    rows = _trigger_rollups(start, end).filter(owner_id=api.owner_id, trigger_type=HTTP_API, trigger_id=api.api_id)
    return _labelled(_traffic(rows), owner_id=api.owner_id)


def function_http_series(*, function: Function, start: datetime, end: datetime) -> TriggerSeries:
    """Requests per minute, hour or day of each HTTP trigger that called the function, over [start, end)."""
    granularity = granularity_for(start=start, end=end)
    rows = (
        _trigger_rollups(start, end, granularity)
        .filter(function=function)
        .order_by()
        .values(*_TRIGGER_KEY, "bucket_start")
        .annotate(total=Sum("requests"))
    )
    buckets = _bucket_starts(granularity, start, end)
    position = {moment: index for index, moment in enumerate(buckets)}
    requests: dict[TriggerKey, list[int]] = {}
    for row in rows:
        counts = requests.setdefault((row["trigger_type"], row["trigger_id"], row["route"]), [0] * len(buckets))
        counts[position[row["bucket_start"]]] += row["total"]
    return TriggerSeries(granularity, buckets, requests)


def _trigger_rollups(start: datetime, end: datetime, granularity: str | None = None) -> QuerySet[TriggerRollup]:
    granularity = granularity or granularity_for(start=start, end=end)
    return TriggerRollup.objects.filter(
        granularity=granularity, bucket_start__gte=bucket_start(start, granularity), bucket_start__lt=end
    )


def _traffic(rollups: QuerySet[TriggerRollup]) -> list[TriggerTraffic]:
    """Rows summed per trigger in the database (a key may have more than one row: see TriggerRollup)."""
    sums: dict[str, Any] = {f"agg_{name}": Sum(name) for name in TRIGGER_ADDITIVE_FIELDS}
    sums.update({f"agg_{name}": Max(name) for name in TRIGGER_MAX_FIELDS})
    out = []
    for row in rollups.order_by().values(*_TRIGGER_KEY).annotate(**sums):
        scalars: dict[str, Any] = {
            name: row[f"agg_{name}"] or 0 for name in [*TRIGGER_ADDITIVE_FIELDS, *TRIGGER_MAX_FIELDS]
        }
        histogram = tuple(scalars.pop(name) for name in DURATION.columns)
        out.append(TriggerTraffic(**{name: row[name] for name in _TRIGGER_KEY}, **scalars, latency_hist=histogram))
    return out


def _labelled(traffic: list[TriggerTraffic], *, owner_id: int) -> list[TriggerTraffic]:
    """Each trigger named as the console shows it, busiest first. Only the owner's APIs and URLs are looked up;
    one deleted since keeps its id."""
    ids = {item.trigger_id for item in traffic}
    apis = dict(HttpApi.objects.filter(owner_id=owner_id, api_id__in=ids).values_list("api_id", "name"))
    urls = FunctionUrl.objects.select_related("alias").filter(function__owner_id=owner_id, url_id__in=ids)
    qualifiers = {url.url_id: url.qualifier for url in urls}
    labelled = []
    for item in traffic:
        if item.trigger_type == HTTP_API:
            api_name = apis.get(item.trigger_id)
            label = f"{api_name or item.trigger_id} · {item.route}"
        else:
            api_name, qualifier = None, qualifiers.get(item.trigger_id)
            label = f"Function URL · {qualifier or 'deleted'}" if qualifier != LATEST else "Function URL"
        labelled.append(replace(item, label=label, api_name=api_name))
    return sorted(labelled, key=lambda item: (-item.requests, item.label))


@dataclass(frozen=True)
class StreamSeries:
    """Per event source mapping of a function, per bucket: records committed, records per batch, the iterator age
    (its maximum) and the records waiting (the maximum sampled); gaps as zero, or None where nothing was seen."""

    granularity: str
    buckets: list[datetime]
    streams: dict[str, str]  # mapping uuid → its stream's name
    records: dict[str, list[int]]
    records_per_batch: dict[str, list[float | None]]
    iterator_age_ms: dict[str, list[float | None]]
    lag: dict[str, list[float | None]]


def function_stream_series(*, function: Function, start: datetime, end: datetime) -> StreamSeries | None:
    """The Monitor's stream charts over [start, end), from the roll-ups; None when no mapping of the function
    committed a batch in the range."""
    granularity = granularity_for(start=start, end=end)
    rows = (
        StreamRollup.objects.filter(
            function=function,
            granularity=granularity,
            bucket_start__gte=bucket_start(start, granularity),
            bucket_start__lt=end,
        )
        .order_by()
        .values("mapping", "stream", "bucket_start")
        .annotate(
            batches_sum=Sum("batches"),
            records_sum=Sum("records"),
            age_max=Max("iterator_age_ms_max"),
            lag_max_=Max("lag_max"),
        )
    )
    if not rows:
        return None
    buckets = _bucket_starts(granularity, start, end)
    position = {moment: index for index, moment in enumerate(buckets)}
    series = StreamSeries(granularity, buckets, {}, {}, {}, {}, {})
    for row in rows:
        mapping, index = row["mapping"], position[row["bucket_start"]]
        if mapping not in series.streams:
            series.streams[mapping] = row["stream"]
            series.records[mapping] = [0] * len(buckets)
            for values in (series.records_per_batch, series.iterator_age_ms, series.lag):
                values[mapping] = [None] * len(buckets)
        batches = row["batches_sum"] or 0
        series.records[mapping][index] = row["records_sum"] or 0
        series.records_per_batch[mapping][index] = round((row["records_sum"] or 0) / batches, 1) if batches else None
        series.iterator_age_ms[mapping][index] = row["age_max"]
        series.lag[mapping][index] = row["lag_max_"]
    return series
