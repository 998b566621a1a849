"""The entry points through which functions_app hands invocations (``invocation_record``) and HTTP trigger
requests (``http_request_record``) to metering, and the roll-up maintenance around them (flush, rebuild from raw
rows, retention).

Each finished invocation adds to four roll-up rows (its minute, hour, day and the running total) with
``UPDATE … SET col = col + value`` in one short transaction: no read-modify-write, so concurrent workers never
lose an increment. When the row does not exist yet the UPDATE matches nothing and we INSERT it inside a
savepoint; if another worker inserted the same key in between, the unique constraint refuses ours and the
UPDATE is simply repeated. The four rows are always touched in the same order, so two transactions never wait
on each other in a cycle (PostgreSQL row locks); SQLite serialises writers anyway.
"""

from __future__ import annotations

import json
import logging
import math
import operator
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, cast, overload

from django.conf import settings
from django.db import IntegrityError, InterfaceError, OperationalError, connection, transaction
from django.db.models import F, FloatField, Q, Value
from django.db.models.functions import Greatest
from django.utils import timezone
from redis.exceptions import RedisError

from console.redis import redis_client
from functions_app.models import TERMINAL_STATUSES, Function, Invocation
from metrics_app.histograms import DURATION, INIT, MEMORY
from metrics_app.models import (
    ADDITIVE_FIELDS,
    MAX_FIELDS,
    UNRESOLVED,
    Granularity,
    Rollup,
    StreamRollup,
    TriggerRollup,
)
from metrics_app.pricing import InvocationCost, invocation_cost, price_table

logger = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LIVE_GRANULARITIES = (Granularity.MINUTE, Granularity.HOUR, Granularity.DAY, Granularity.TOTAL)
REBUILD_BATCH = 2000
# Contributions waiting for metering_flush (JSON records); see _add_everywhere.
PENDING_KEY = "ephemera:metering:pending"
# What a contribution adds to: its roll-up table, and the granularities it keeps there (HTTP requests keep no
# running total: nothing reads one). Records queued before kinds existed are invocations'.
INVOCATION, HTTP_REQUEST, STREAM_BATCH = "invocation", "http", "stream"
KINDS: dict[str, tuple[type[Rollup | TriggerRollup | StreamRollup], tuple[str, ...]]] = {
    INVOCATION: (Rollup, LIVE_GRANULARITIES),
    HTTP_REQUEST: (TriggerRollup, LIVE_GRANULARITIES[:3]),
    STREAM_BATCH: (StreamRollup, LIVE_GRANULARITIES[:3]),
}


def bucket_start(moment: datetime, granularity: str) -> datetime:
    """The start (UTC) of the minute, hour or day holding ``moment``; the epoch for the running total."""
    moment = moment.astimezone(UTC)
    if granularity == Granularity.MINUTE:
        return moment.replace(second=0, microsecond=0)
    if granularity == Granularity.HOUR:
        return moment.replace(minute=0, second=0, microsecond=0)
    if granularity == Granularity.DAY:
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return EPOCH


MeteringEvent = Literal["finished", "attempt_failed", "throttled"]


@overload
def invocation_record(*, event: Literal["finished", "attempt_failed"], invocation: Invocation) -> None: ...


@overload
def invocation_record(*, event: Literal["throttled"], function: Function) -> None: ...


def invocation_record(
    *, event: MeteringEvent, invocation: Invocation | None = None, function: Function | None = None
) -> None:
    """The one way functions_app hands an invocation to metering: queue its record (one Redis RPUSH, never a
    database write on the caller's path; ``metering_flush`` applies it).

    - ``finished``, with the invocation, after every terminal write (succeeded, failed, timed out, expired).
    - ``attempt_failed``, with the invocation, after the fenced write that sends a failed async attempt back to
      be retried: its run time and cost count (Lambda bills every attempt) but not as an invocation, which is
      counted once, when it finishes. Raw rows keep only the last attempt's metering, so ``rollups_rebuild``
      cannot recover retried attempts.
    - ``throttled``, with the function, when a call is refused for concurrency (429, or an async event sent
      back). Refusals happen before a qualifier is resolved, so they are counted under the version label "-".

    A metering failure is logged and never breaks the caller's reply; ``rollups_rebuild`` repairs roll-ups.
    """
    if event == "throttled" and function is not None:
        key = {"function_id": function.pk, "version": UNRESOLVED, "memory_mb": function.memory_mb}
        names = {"function_name": function.name, "owner_id": function.owner_id}
        _add_everywhere(key, names, timezone.now(), {"throttles": 1}, {})
    elif event == "finished" and invocation is not None:
        adds, maxes = _contribution(invocation)
        _add_everywhere(*_row_of(invocation), invocation.finished_at or timezone.now(), adds, maxes)
    elif event == "attempt_failed" and invocation is not None:
        adds, maxes = _contribution(invocation)
        for name in ("invocations", "errors", "timeouts", "queue_wait_ms_sum"):
            adds.pop(name, None)
        _add_everywhere(*_row_of(invocation), timezone.now(), adds, maxes)
    else:  # the overloads above make this a type error
        raise TypeError(f"invocation_record(event={event!r}) takes an invocation, or a function when throttled")


def _row_of(invocation: Invocation) -> tuple[dict[str, Any], dict[str, Any]]:
    """The roll-up key of an invocation's record, and the names its row is created with."""
    key = {
        "function_id": invocation.function_id,
        "version": invocation.executed_version or UNRESOLVED,
        "memory_mb": invocation.memory_mb,
    }
    return key, {"function_name": invocation.function.name, "owner_id": invocation.owner_id}


def _contribution(invocation: Invocation) -> tuple[dict[str, Any], dict[str, float]]:
    status = str(invocation.status)
    adds: dict[str, Any] = {
        "invocations": 1,
        "errors": int(status != "succeeded"),
        "timeouts": int(status == "timed_out"),
    }
    maxes: dict[str, float] = {}
    if invocation.queue_wait_ms is not None:
        adds["queue_wait_ms_sum"] = float(invocation.queue_wait_ms)
    for phase in ("prepare_ms", "overhead_ms"):
        if getattr(invocation, phase, None) is not None:
            adds[f"{phase}_sum"] = float(getattr(invocation, phase))
    if invocation.duration_ms is None:  # expired or lost before it ran: nothing was billed
        return adds, maxes
    init_ms = float(invocation.init_ms or 0.0) if invocation.is_cold else 0.0
    duration = float(invocation.duration_ms)
    cost = _stored_cost(invocation) or invocation_cost(
        memory_mb=invocation.memory_mb, init_ms=init_ms, duration_ms=duration
    )
    adds.update(
        runs=1,
        duration_ms_sum=duration,
        billed_ms_sum=cost.billed_ms,
        request_usd=cost.request_usd,
        run_usd=cost.run_usd,
        init_usd=cost.init_usd,
        cpu_ms_sum=float(invocation.cpu_ms or 0.0),
    )
    adds[DURATION.column(duration)] = 1
    maxes["duration_ms_max"] = duration
    if invocation.is_cold:
        adds.update(cold_starts=1, init_ms_sum=init_ms)
        adds[INIT.column(init_ms)] = 1
    if invocation.peak_memory_mb is not None:
        adds[MEMORY.column(float(invocation.peak_memory_mb))] = 1
        maxes["peak_memory_mb_max"] = float(invocation.peak_memory_mb)
    return adds, maxes


def http_request_record(
    *,
    owner_id: int,
    function_id: int | None,
    trigger_type: str,
    trigger_id: str,
    route: str,
    status: int,
    latency_ms: float,
    response_bytes: int,
) -> None:
    """The way functions_app hands one request to an HTTP trigger to metering, whatever answered it (the function,
    a refusal, a CORS preflight, a 404): queued as ``invocation_record`` queues, applied by ``metering_flush``.
    ``route`` is "" for a function URL; ``function_id`` None when no route matched. Requests have no raw rows, so
    a contribution lost to a Redis outage is lost (logged)."""
    adds = {
        "requests": 1,
        "status_4xx": int(400 <= status < 500),
        "status_5xx": int(status >= 500),
        "latency_ms_sum": latency_ms,
        "response_bytes_sum": response_bytes,
        DURATION.column(latency_ms): 1,
    }
    key = {"function_id": function_id, "trigger_type": trigger_type, "trigger_id": trigger_id, "route": route}
    maxes = {"latency_ms_max": latency_ms}
    _add_everywhere(key, {"owner_id": owner_id}, timezone.now(), adds, maxes, kind=HTTP_REQUEST)


def stream_batch_record(
    *,
    owner_id: int,
    function_id: int,
    mapping: str,
    stream: str,
    records: int,
    failed: bool,
    iterator_age_ms: float,
    lag: int | None,
) -> None:
    """The way functions_app hands one batch of an event source mapping to metering (queued as the others are):
    ``records`` committed by it, whether the batch failed, the iterator age at its commit, the records waiting."""
    adds = {"batches": 1, "failed_batches": int(failed), "records": records}
    maxes = {"iterator_age_ms_max": float(iterator_age_ms)}
    if lag is not None:
        maxes["lag_max"] = float(lag)
    key = {"function_id": function_id, "mapping": mapping}
    _add_everywhere(key, {"owner_id": owner_id, "stream": stream}, timezone.now(), adds, maxes, kind=STREAM_BATCH)


def _stored_cost(invocation: Invocation) -> InvocationCost | None:
    """The cost the completion already computed and wrote on the row, so metering does not price it again."""
    request, run, init = invocation.cost_request_usd, invocation.cost_run_usd, invocation.cost_init_usd
    if invocation.billed_ms is None or request is None or run is None or init is None:
        return None
    return InvocationCost(invocation.billed_ms, request, run, init)


def _add_everywhere(
    key: dict[str, Any],
    names: dict[str, Any],
    moment: datetime,
    adds: dict[str, Any],
    maxes: dict[str, float],
    *,
    kind: str = INVOCATION,
) -> None:
    """Queue a contribution for the roll-ups: one Redis RPUSH on the invocation's (or request's) path, so metering
    never costs a worker four database upserts per completion. ``metering_flush`` (beat, every
    METERING_FLUSH_INTERVAL_S) sums what is pending per roll-up row and writes each row once."""
    record = {
        "kind": kind,
        "key": key,
        "names": names,
        "at": moment.isoformat(),
        "adds": {name: str(value) if isinstance(value, Decimal) else value for name, value in adds.items()},
        "maxes": maxes,
    }
    try:
        redis_client().rpush(PENDING_KEY, json.dumps(record))
    except RedisError as exc:  # an outage, not a bug: no traceback
        logger.warning("Metering of %s %s was not queued (%r); run rollups_rebuild to repair", kind, key, exc)
    except Exception:
        logger.exception("Metering of %s %s was not queued; run rollups_rebuild to repair", kind, key)


def metering_flush(*, limit: int = 20_000) -> int:
    """Apply up to ``limit`` pending contributions to the roll-ups; returns how many were taken off the queue.

    The batch is taken off the list atomically and applied in one transaction. Records of functions deleted
    since they were queued land on a tombstone row (function NULL, name and owner kept), as their earlier
    history does. Should the database refuse the batch for what is in it, the records are applied one by one
    and those it still refuses are set aside under REJECTED_KEY, so one bad record never blocks the others;
    should the database be unreachable, the batch goes back for the next flush.
    """
    client = redis_client()
    pipeline = client.pipeline()
    pipeline.lrange(PENDING_KEY, 0, limit - 1)
    pipeline.ltrim(PENDING_KEY, limit, -1)
    raw, _ = pipeline.execute()
    if not raw:
        return 0
    try:
        _apply_records(_readable_records(raw))
    except (OperationalError, InterfaceError) as exc:  # the database is unreachable: an outage, not a bug
        logger.warning("Metering flush failed (%r); %d contributions go back to the queue", exc, len(raw))
        client.rpush(PENDING_KEY, *raw)
        return 0
    except Exception:
        logger.exception("The database refused a metering batch; applying its %d records one by one", len(raw))
        _apply_one_by_one(client, raw)
    return len(raw)


# Contributions the database refused even alone (kept for an operator to inspect; the newest REJECTED_KEEP).
REJECTED_KEY = "ephemera:metering:rejected"
REJECTED_KEEP = 10_000


def _readable_records(raw: list[bytes]) -> list[dict[str, Any]]:
    records = [json.loads(item) for item in raw]
    return _with_living_owners(records)


def _apply_records(records: list[dict[str, Any]]) -> None:
    merged = _merge_pending(records)
    with transaction.atomic():
        for (row_key, order), (names, adds, maxes) in sorted(merged.items(), key=lambda item: item[0][1]):
            rollup_add(key=dict(row_key), names=names, adds=adds, maxes=maxes, model=KINDS[order[0]][0])


def _apply_one_by_one(client: Any, raw: list[bytes]) -> None:
    rejected = []
    for position, item in enumerate(raw):
        try:
            _apply_records(_readable_records([item]))
        except (OperationalError, InterfaceError) as exc:
            logger.warning(
                "Metering flush failed (%r); %d contributions go back to the queue", exc, len(raw) - position
            )
            client.rpush(PENDING_KEY, *raw[position:])
            break
        except Exception:  # this record is the bad one (logged with its traceback)
            logger.exception("A metering record was refused and set aside under %s", REJECTED_KEY)
            rejected.append(item)
    if rejected:
        pipeline = client.pipeline()
        pipeline.rpush(REJECTED_KEY, *rejected)
        pipeline.ltrim(REJECTED_KEY, -REJECTED_KEEP, -1)
        pipeline.execute()


def _with_living_owners(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Point records of deleted functions at their tombstone rows; drop those of deleted owners (whose
    roll-ups were deleted with them)."""
    from django.contrib.auth import get_user_model

    function_ids = {record["key"]["function_id"] for record in records}
    owner_ids = {record["names"]["owner_id"] for record in records}
    living_functions = set(Function.objects.filter(pk__in=function_ids).values_list("pk", flat=True))
    living_owners = set(get_user_model().objects.filter(pk__in=owner_ids).values_list("pk", flat=True))
    kept = []
    for record in records:
        if record["names"]["owner_id"] not in living_owners:
            continue
        if record["key"]["function_id"] not in living_functions:
            # NULL never matches NULL in the unique key, so the name and owner identify the tombstone row.
            record = {**record, "key": {**record["key"], "function_id": None, **record["names"]}, "names": {}}
        kept.append(record)
    return kept


def _merge_pending(records: Iterable[dict[str, Any]]) -> dict[tuple, tuple[dict, dict, dict]]:
    """Sum additive fields and take maxima per roll-up row (its key: function, version and memory for an
    invocation, trigger and route for an HTTP request; granularity; bucket)."""
    merged: dict[tuple, tuple[dict, dict, dict]] = {}
    for record in records:
        kind = record.get("kind", INVOCATION)
        moment = datetime.fromisoformat(record["at"])
        adds = {name: Decimal(value) if name.endswith("_usd") else value for name, value in record["adds"].items()}
        for granularity in KINDS[kind][1]:
            row_key = tuple(
                sorted(
                    {
                        **record["key"],
                        "granularity": granularity,
                        "bucket_start": bucket_start(moment, granularity),
                    }.items()
                )
            )
            order = (
                kind,
                str(record["key"]["function_id"]),
                granularity,
                bucket_start(moment, granularity).isoformat(),
            )
            _names, total_adds, total_maxes = merged.setdefault((row_key, order), (record["names"], {}, {}))
            for name, value in adds.items():
                total_adds[name] = total_adds.get(name, 0) + value
            for name, value in record["maxes"].items():
                total_maxes[name] = max(total_maxes.get(name, value), value)
    return merged


def rollup_add(
    *,
    key: dict[str, Any],
    names: dict[str, Any],
    adds: dict[str, Any],
    maxes: dict[str, float],
    model: type[Rollup | TriggerRollup | StreamRollup] = Rollup,
) -> None:
    """Add to one roll-up row (created on first use): atomic increments, correct under concurrent writers."""
    updates: dict[str, Any] = {name: F(name) + value for name, value in adds.items()}
    for name, value in maxes.items():
        updates[name] = Greatest(F(name), Value(float(value), output_field=FloatField()))
    rows = model._default_manager
    if rows.filter(**key).update(**updates):
        return
    try:
        with transaction.atomic():
            rows.create(**key, **names, **adds, **maxes)
    except IntegrityError:
        # Another writer created the row between our UPDATE and INSERT: now the UPDATE finds it.
        rows.filter(**key).update(**updates)


# ---- rebuild from raw rows ----------------------------------------------------------------------------------

_INDEX = {name: position for position, name in enumerate(ADDITIVE_FIELDS)}
_RAW_FIELDS = (
    "function_id",
    "function__name",
    "owner_id",
    "executed_version",
    "memory_mb",
    "finished_at",
    "status",
    "is_cold",
    "init_ms",
    "duration_ms",
    "queue_wait_ms",
    "prepare_ms",
    "overhead_ms",
    "cpu_ms",
    "peak_memory_mb",
)


def rollups_rebuild(
    *, function_ids: Iterable[int] | None = None, start: datetime | None = None, end: datetime | None = None
) -> dict[str, int]:
    """Recompute the minute, hour and day roll-ups of whole UTC days [start, end) from raw invocation rows, and
    correct the running totals by the difference. Throttle counts (which have no raw rows) are kept; rows that
    retention would delete straight away (minutes older than two days, say) are not written.

    For operators (after a metering outage, or a price table change) and the benchmark. Days whose raw rows
    retention has already deleted would be emptied, so ``start`` defaults to the oldest raw row still kept.
    Run it over a quiet range: invocations finishing during the rebuild of their own day may be counted twice.
    """
    raw = Invocation.objects.filter(status__in=TERMINAL_STATUSES, finished_at__isnull=False)
    if function_ids is not None:
        raw = raw.filter(function_id__in=list(function_ids))
    if start is None:
        oldest = raw.order_by("finished_at").values_list("finished_at", flat=True).first()
        start = oldest or timezone.now()
    start = bucket_start(start, Granularity.DAY)
    end = bucket_start(end or timezone.now(), Granularity.DAY) + timedelta(days=1)
    raw = raw.filter(finished_at__gte=start, finished_at__lt=end).order_by()
    kept_since = _retention_cutoffs(timezone.now())
    minutes_from = bucket_start(kept_since[Granularity.MINUTE], Granularity.HOUR)
    sums, meta, count = _accumulate(raw.values_list(*_RAW_FIELDS).iterator(chunk_size=REBUILD_BATCH), minutes_from)
    levels = _levels(sums, minutes_from, kept_since)
    scope = Q(bucket_start__gte=start, bucket_start__lt=end, granularity__in=LIVE_GRANULARITIES[:3])
    if function_ids is not None:
        scope &= Q(function_id__in=list(function_ids))
    with transaction.atomic():
        old_days = _old_day_sums(scope)
        throttles = list(Rollup.objects.filter(scope, throttles__gt=0).values(*_KEY_FIELDS, "throttles"))
        Rollup.objects.filter(scope).delete()
        written = _insert(levels, meta)
        for item in throttles:
            rollup_add(
                key={name: item[name] for name in _KEY_FIELDS},
                names=meta.get(item["function_id"]) or _names_of(item["function_id"]),
                adds={"throttles": item["throttles"]},
                maxes={},
            )
        _correct_totals(levels[Granularity.DAY], old_days, meta)
    return {"invocations_read": count, "rollups_written": written, "throttle_rows_kept": len(throttles)}


_KEY_FIELDS = ("function_id", "version", "memory_mb", "granularity", "bucket_start")
_WIDTH = len(ADDITIVE_FIELDS)


def _accumulate(rows: Iterable[tuple], minutes_from: datetime) -> tuple[dict[tuple, list], dict[int, dict], int]:
    """Sums per (function, version, memory, bucket) in plain lists: the hot loop of a rebuild. The bucket is the
    row's minute when minute roll-ups are still kept for it, else its hour (fewer keys to merge later)."""
    prices = price_table()
    request, rate = float(prices.request_usd), float(prices.gb_second_usd["x86_64"])
    buckets: dict[tuple, list] = {}
    meta: dict[int, dict] = {}
    count = 0
    idx = _INDEX
    for row in rows:
        fid, fname, owner, version, memory, finished, status, cold, init, duration, wait, prepare, over, cpu, peak = row
        count += 1
        if fid not in meta:
            meta[fid] = {"function_name": fname, "owner_id": owner}
        moment = finished.replace(second=0, microsecond=0)
        if moment < minutes_from:
            moment = moment.replace(minute=0)
        key = (fid, version or UNRESOLVED, memory, moment)
        sums = buckets.get(key)
        if sums is None:
            sums = buckets[key] = [0] * _WIDTH + [0.0, 0.0]
        sums[0] += 1
        if status != "succeeded":
            sums[1] += 1
            sums[2] += status == "timed_out"
        if wait is not None:
            sums[idx["queue_wait_ms_sum"]] += wait
        sums[idx["prepare_ms_sum"]] += prepare or 0.0
        sums[idx["overhead_ms_sum"]] += over or 0.0
        if duration is None:
            continue
        init = (init or 0.0) if cold else 0.0
        billed = max(1, math.ceil(round(init + duration, 6)))
        compute = memory / 1024 * billed / 1000 * rate
        init_part = compute * init / (init + duration) if init + duration > 0 else 0.0
        sums[5] += 1
        sums[idx["duration_ms_sum"]] += duration
        sums[idx["billed_ms_sum"]] += billed
        sums[idx["request_usd"]] += request
        sums[idx["run_usd"]] += compute - init_part
        sums[idx["init_usd"]] += init_part
        sums[idx["cpu_ms_sum"]] += cpu or 0.0
        sums[idx[DURATION.column(duration)]] += 1
        if duration > sums[_WIDTH]:
            sums[_WIDTH] = duration
        if cold:
            sums[4] += 1
            sums[idx["init_ms_sum"]] += init
            sums[idx[INIT.column(init)]] += 1
        if peak is not None:
            sums[idx[MEMORY.column(peak)]] += 1
            if peak > sums[_WIDTH + 1]:
                sums[_WIDTH + 1] = peak
    return buckets, meta, count


def _merge_into(level: dict[tuple, list], key: tuple, sums: list) -> None:
    target = level.get(key)
    if target is None:
        level[key] = list(sums)
        return
    target[:_WIDTH] = map(operator.add, target[:_WIDTH], sums[:_WIDTH])
    target[_WIDTH:] = map(max, target[_WIDTH:], sums[_WIDTH:])


def _levels(
    buckets: dict[tuple, list], minutes_from: datetime, kept_since: dict[str, datetime]
) -> dict[str, dict[tuple, list]]:
    """Minute rows, and hour and day rows merged from the finer ones; none that retention would delete at once."""
    minutes = {key: sums for key, sums in buckets.items() if key[3] >= minutes_from}
    hours: dict[tuple, list] = {}
    for (fid, version, memory, moment), sums in buckets.items():
        _merge_into(hours, (fid, version, memory, moment.replace(minute=0)), sums)
    days: dict[tuple, list] = {}
    for (fid, version, memory, moment), sums in hours.items():
        _merge_into(days, (fid, version, memory, moment.replace(hour=0)), sums)
    levels = {Granularity.MINUTE: minutes, Granularity.HOUR: hours, Granularity.DAY: days}
    return {
        granularity: {key: sums for key, sums in level.items() if _aware(key[3]) >= kept_since[granularity]}
        for granularity, level in levels.items()
    }


def _money(value: float | Decimal) -> Decimal:
    return Decimal(repr(float(value))).quantize(Decimal("1e-12"))


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _insert(levels: dict[str, dict[tuple, list]], meta: dict[int, dict]) -> int:
    """One executemany over every new row: Rollup has ~220 columns, too wide for bulk_create's batches on SQLite."""
    columns = ["granularity", "bucket_start", "function_id", "function_name", "owner_id", "version", "memory_mb"]
    columns += [*ADDITIVE_FIELDS, *MAX_FIELDS]
    fields = {f.attname: f for f in Rollup._meta.concrete_fields}
    # Only dates and decimals need the backend's adaptation; ints and floats go as they are (fast).
    adapt = {position for position, name in enumerate(columns) if name == "bucket_start" or name.endswith("_usd")}
    params = []
    for granularity, level in levels.items():
        for (fid, version, memory, moment), sums in level.items():
            row = [granularity, _aware(moment), fid, meta[fid]["function_name"], meta[fid]["owner_id"], version, memory]
            row += sums
            for position in adapt:
                value = row[position] if position == 1 else _money(row[position])
                row[position] = fields[columns[position]].get_db_prep_save(value, connection)
            params.append(row)
    table = connection.ops.quote_name(Rollup._meta.db_table)
    # A concrete field always has a column (the stubs allow None for the others).
    names = ", ".join(connection.ops.quote_name(cast(str, fields[name].column)) for name in columns)
    sql = f"INSERT INTO {table} ({names}) VALUES ({', '.join(['%s'] * len(columns))})"  # noqa: S608 - our own names
    with connection.cursor() as cursor:
        for offset in range(0, len(params), 500):
            cursor.executemany(sql, params[offset : offset + 500])
    return len(params)


def _old_day_sums(scope: Q) -> dict[tuple, dict[str, Any]]:
    rows = Rollup.objects.filter(scope, granularity=Granularity.DAY).values(
        "function_id", "version", "memory_mb", *ADDITIVE_FIELDS
    )
    out: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        key = (row["function_id"], row["version"], row["memory_mb"])
        sums = out.setdefault(key, dict.fromkeys(ADDITIVE_FIELDS, 0))
        for name in ADDITIVE_FIELDS:
            sums[name] += row[name] or 0
    return out


def _correct_totals(days: dict[tuple, list], old_days: dict[tuple, dict[str, Any]], meta: dict[int, dict]) -> None:
    new_days: dict[tuple, list] = {}
    for (fid, version, memory, _moment), sums in days.items():
        _merge_into(new_days, (fid, version, memory), sums)
    for key in set(new_days) | set(old_days):
        new, old = new_days.get(key, [0] * (_WIDTH + 2)), old_days.get(key, {})
        values = {
            name: _money(new[position]) if name.endswith("_usd") else new[position]
            for position, name in enumerate(ADDITIVE_FIELDS)
        }
        delta = {
            name: value - old.get(name, 0)
            for name, value in values.items()
            if name != "throttles" and value != old.get(name, 0)
        }
        if not delta:
            continue
        fid, version, memory = key
        rollup_add(
            key={
                "function_id": fid,
                "version": version,
                "memory_mb": memory,
                "granularity": Granularity.TOTAL,
                "bucket_start": EPOCH,
            },
            names=meta.get(fid) or _names_of(fid),
            adds=delta,
            maxes=dict(zip(MAX_FIELDS, new[_WIDTH:], strict=True)),
        )


def _names_of(function_id: int | None) -> dict[str, Any]:
    rows = Rollup.objects.filter(function_id=function_id) if function_id else Rollup.objects.filter(function=None)
    return dict(rows.values("function_name", "owner_id").first() or {"function_name": "", "owner_id": None})


# ---- retention ----------------------------------------------------------------------------------------------

RETENTION_SETTINGS = {
    Granularity.MINUTE: "ROLLUP_MINUTE_RETENTION_DAYS",
    Granularity.HOUR: "ROLLUP_HOUR_RETENTION_DAYS",
    Granularity.DAY: "ROLLUP_DAY_RETENTION_DAYS",
}


def _retention_cutoffs(now: datetime) -> dict[str, datetime]:
    """The oldest bucket start each granularity keeps (the running totals are kept forever)."""
    return {
        granularity: now - timedelta(days=getattr(settings, setting))
        for granularity, setting in RETENTION_SETTINGS.items()
    }


def metrics_retention(*, now: datetime | None = None) -> dict[str, int]:
    """Delete roll-ups (of invocations and of HTTP triggers) past their retention (settings, in days); the running
    totals stay. Raw invocation rows are functions_app's to delete (``functions_app.services.invocations_prune``)."""
    deleted: dict[str, int] = dict.fromkeys(RETENTION_SETTINGS, 0)
    for granularity, cutoff in _retention_cutoffs(now or timezone.now()).items():
        for model in (Rollup, TriggerRollup):
            deleted[granularity] += model._default_manager.filter(
                granularity=granularity, bucket_start__lt=cutoff
            ).delete()[0]
    return deleted
