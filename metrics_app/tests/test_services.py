from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from redis.exceptions import ConnectionError as RedisConnectionError

from functions_app.models import HttpApi, Invocation, InvocationStatus
from metrics_app.histograms import DURATION, INIT, MEMORY, percentile
from metrics_app.models import ADDITIVE_FIELDS, UNMATCHED_ROUTE, Granularity, Rollup, TriggerRollup
from metrics_app.selectors import function_http_triggers, http_api_triggers
from metrics_app.services import (
    invocation_record,
    metering_flush,
    metrics_retention,
    rollups_rebuild,
)
from metrics_app.tests.factories import T0, finish, http_request

pytestmark = pytest.mark.django_db


def counts(row, scale):
    return [getattr(row, name) for name in scale.columns]


def row_of(function, granularity, **filters):
    return Rollup.objects.get(function=function, granularity=granularity, **filters)


def test_a_finished_invocation_adds_to_its_minute_hour_day_and_total(make_function):
    function = make_function()
    finish(function, at=T0 + timedelta(seconds=30))
    finish(function, at=T0 + timedelta(minutes=1, seconds=5), status=InvocationStatus.FAILED)
    minutes = Rollup.objects.filter(function=function, granularity=Granularity.MINUTE).order_by("bucket_start")
    assert [(row.bucket_start.minute, row.invocations, row.errors) for row in minutes] == [(0, 1, 0), (1, 1, 1)]
    for granularity in (Granularity.HOUR, Granularity.DAY, Granularity.TOTAL):
        row = row_of(function, granularity)
        assert (row.invocations, row.errors, row.runs, row.version) == (2, 1, 2, "$LATEST")
        assert row.duration_ms_sum == 200.0 and row.queue_wait_ms_sum == 4.0


def test_cold_starts_count_their_init_time_and_cost_split_adds_up_to_the_row_cost(make_function):
    function = make_function(memory_mb=1024)
    cold = finish(function, is_cold=True, init_ms=100.0, duration_ms=300.0)
    warm = finish(function, duration_ms=50.0)
    row = row_of(function, Granularity.DAY)
    assert (row.cold_starts, row.init_ms_sum, row.billed_ms_sum) == (1, 100.0, 450)
    assert sum(counts(row, INIT)) == 1 and sum(counts(row, DURATION)) == 2
    total = row.request_usd + row.run_usd + row.init_usd
    assert total.quantize(Decimal("1e-10")) == (cold.cost_usd + warm.cost_usd).quantize(Decimal("1e-10"))
    # The init part is a quarter of the cold call's compute: 100 ms of its 400 ms.
    compute = Decimal(1) * Decimal("0.4") * Decimal("0.0000166667")
    assert row.init_usd.quantize(Decimal("1e-12")) == (compute / 4).quantize(Decimal("1e-12"))
    assert row.gb_seconds == pytest.approx(0.45)


def test_percentiles_merged_from_histograms_are_within_the_bucket_error(make_function):
    function = make_function()
    durations = [float(ms) for ms in range(1, 1001)]
    for ms in durations:
        finish(function, duration_ms=ms, at=T0 + timedelta(minutes=ms % 7))
    merged = [0] * DURATION.count
    for row in Rollup.objects.filter(function=function, granularity=Granularity.MINUTE):
        merged = [a + b for a, b in zip(merged, counts(row, DURATION), strict=True)]
    for q, exact in ((50, 500), (90, 900), (99, 990)):
        assert percentile(DURATION, merged, q) == pytest.approx(exact, rel=2 * DURATION.relative_error)
    assert merged == counts(row_of(function, Granularity.DAY), DURATION)


def test_peak_memory_is_kept_as_a_maximum_and_a_histogram(make_function):
    function = make_function()
    for peak in (30.0, 90.0, 60.0):
        finish(function, peak_memory_mb=peak)
    row = row_of(function, Granularity.TOTAL)
    assert row.peak_memory_mb_max == 90.0 and row.duration_ms_max == 100.0
    assert sum(counts(row, MEMORY)) == 3


def test_an_expired_event_counts_as_an_error_without_cost(make_function):
    function = make_function()
    finish(function, status=InvocationStatus.EXPIRED, duration_ms=None, queue_wait_ms=None, peak_memory_mb=None)
    row = row_of(function, Granularity.DAY)
    assert (row.invocations, row.errors, row.runs, row.billed_ms_sum) == (1, 1, 0, 0)
    assert row.request_usd + row.run_usd + row.init_usd == 0


def test_versions_and_memory_sizes_are_kept_apart(make_function):
    function = make_function()
    finish(function)
    finish(function, executed_version="1")
    finish(function, executed_version="1", memory_mb=512)
    keys = set(
        Rollup.objects.filter(function=function, granularity=Granularity.DAY).values_list("version", "memory_mb")
    )
    assert keys == {("$LATEST", 128), ("1", 128), ("1", 512)}


def test_throttles_are_counted_under_the_unresolved_version(make_function):
    function = make_function()
    invocation_record(event="throttled", function=function)
    metering_flush()
    invocation_record(event="throttled", function=function)
    metering_flush()
    row = row_of(function, Granularity.TOTAL)
    assert (row.version, row.throttles, row.invocations) == ("-", 2, 0)


def test_rebuilding_from_raw_rows_reproduces_the_live_roll_ups_and_keeps_throttles(make_function):
    function = make_function()
    for minute in range(5):
        finish(function, at=T0 + timedelta(minutes=minute), is_cold=minute == 0, init_ms=80.0 * (minute == 0))
        finish(function, at=T0 + timedelta(minutes=minute, seconds=9), status=InvocationStatus.TIMED_OUT)
    invocation_record(event="throttled", function=function)
    metering_flush()
    fields = ["granularity", "bucket_start", "version", *ADDITIVE_FIELDS]
    live = sorted(map(repr, Rollup.objects.filter(function=function).exclude(version="-").values_list(*fields)))
    report = rollups_rebuild(function_ids=[function.pk], start=T0, end=T0)
    rebuilt = sorted(map(repr, Rollup.objects.filter(function=function).exclude(version="-").values_list(*fields)))
    assert report["invocations_read"] == 10
    assert _without_money(rebuilt) == _without_money(live)
    assert row_of(function, Granularity.TOTAL, version="$LATEST").invocations == 10
    assert row_of(function, Granularity.TOTAL, version="-").throttles == 1
    assert row_of(function, Granularity.DAY, version="-").throttles == 1
    cost = row_of(function, Granularity.DAY, version="$LATEST")
    assert float(cost.request_usd + cost.run_usd + cost.init_usd) == pytest.approx(
        float(sum(i.cost_usd for i in Invocation.objects.filter(function=function))), rel=1e-5
    )


def _without_money(rows):
    return [row.split("Decimal")[0] for row in rows]


def test_rebuilding_rows_that_were_never_metered_fills_the_totals(make_function):
    function = make_function()
    for _ in range(3):
        finish(function, metered=False)
    rollups_rebuild()
    assert row_of(function, Granularity.TOTAL).invocations == 3
    assert row_of(function, Granularity.MINUTE).invocations == 3


def test_retention_deletes_old_minute_rows_but_keeps_totals_and_leaves_raw_rows_to_functions_app(
    make_function, settings
):
    settings.INVOCATION_RETENTION_DAYS = 30
    function = make_function()
    finish(function, at=T0 - timedelta(days=40))
    finish(function, at=T0)
    deleted = metrics_retention(now=T0 + timedelta(minutes=1))
    assert deleted == {"minute": 1, "hour": 0, "day": 0}
    assert Invocation.objects.count() == 2
    assert row_of(function, Granularity.TOTAL).invocations == 2


def test_a_deleted_function_keeps_its_cost_history_by_name(make_function):
    function = make_function()
    finish(function)
    function.delete()
    row = Rollup.objects.get(granularity=Granularity.TOTAL)
    assert (row.function_id, row.function_name, row.invocations) == (None, "hello", 1)


def test_a_rebuild_writes_no_minute_rows_that_retention_would_delete_at_once(make_function):
    function = make_function()
    finish(function, at=T0 - timedelta(days=10), metered=False)
    finish(function, at=T0, metered=False)
    rollups_rebuild()
    minutes = Rollup.objects.filter(function=function, granularity=Granularity.MINUTE)
    assert [row.bucket_start for row in minutes] == [T0]
    assert Rollup.objects.filter(function=function, granularity=Granularity.HOUR).count() == 2
    assert row_of(function, Granularity.TOTAL).invocations == 2


def test_a_retried_attempt_adds_its_cost_but_not_an_invocation(make_function):
    function = make_function()
    first = finish(function, status=InvocationStatus.QUEUED, metered=False, finished_at=None)
    invocation_record(event="attempt_failed", invocation=first)
    metering_flush()
    row = Rollup.objects.get(function=function, granularity=Granularity.TOTAL)
    assert (row.invocations, row.runs, row.billed_ms_sum) == (0, 1, 100) and row.run_usd > 0


def test_a_function_deleted_before_its_last_record_is_flushed_never_blocks_metering(make_function):
    from metrics_app.services import PENDING_KEY

    doomed = make_function(name="doomed")
    kept = make_function(name="kept")
    finish(doomed, metered=False)
    invocation_record(event="finished", invocation=Invocation.objects.get(function=doomed))
    doomed.delete()  # its record is still pending in Redis
    finish(kept)  # flushes both
    from console.redis import redis_client

    assert redis_client().llen(PENDING_KEY) == 0
    assert row_of(kept, Granularity.TOTAL).invocations == 1
    tombstone = Rollup.objects.get(function=None, function_name="doomed", granularity=Granularity.TOTAL)
    assert tombstone.invocations == 1 and tombstone.run_usd > 0
    finish(kept)
    assert row_of(kept, Granularity.TOTAL).invocations == 2


def test_a_record_the_database_refuses_is_set_aside_and_the_rest_of_the_batch_lands(make_function):
    import json

    from console.redis import redis_client
    from metrics_app.services import PENDING_KEY, REJECTED_KEY

    function = make_function()
    finish(function, metered=False)
    invocation_record(event="finished", invocation=Invocation.objects.get())
    bad = json.loads(redis_client().lindex(PENDING_KEY, 0))
    bad["adds"]["invocations"] = "not a number"
    redis_client().rpush(PENDING_KEY, json.dumps(bad))
    assert metering_flush() == 2
    assert row_of(function, Granularity.TOTAL).invocations == 1
    assert redis_client().llen(PENDING_KEY) == 0 and redis_client().llen(REJECTED_KEY) == 1


def test_prepare_and_overhead_times_are_rolled_up_and_rebuilt_alike(make_function):
    function = make_function()
    finish(function, prepare_ms=40.0, overhead_ms=0.5)
    live = row_of(function, Granularity.HOUR)
    assert (live.prepare_ms_sum, live.overhead_ms_sum) == (40.0, 0.5)
    rollups_rebuild()
    rebuilt = row_of(function, Granularity.HOUR)
    assert (rebuilt.prepare_ms_sum, rebuilt.overhead_ms_sum) == (40.0, 0.5)


# ---- HTTP triggers ------------------------------------------------------------------------------------------


def test_an_http_request_adds_to_its_routes_minute_hour_and_day_with_its_status_class(make_function):
    function = make_function()
    for status, size in ((200, 100), (404, 20), (502, 30), (204, 0)):
        http_request(function, status=status, response_bytes=size, metered=False)
    assert metering_flush() == 4
    rows = TriggerRollup.objects.filter(function=function, route="GET /items/{id}")
    assert sorted(rows.values_list("granularity", flat=True)) == ["day", "hour", "minute"]  # no running total
    for row in rows:
        assert (row.requests, row.status_4xx, row.status_5xx, row.response_bytes_sum) == (4, 1, 1, 150)
        assert (row.trigger_type, row.trigger_id, row.owner_id) == ("http-api", "shop000001", function.owner_id)
        assert row.latency_ms_sum == 40.0 and sum(counts(row, DURATION)) == 4


def test_trigger_percentiles_come_from_the_latency_histogram_capped_at_the_slowest(make_function):
    function = make_function()
    for ms in range(1, 101):
        http_request(function, latency_ms=float(ms), metered=False)
    metering_flush()
    now = timezone.now()
    [traffic] = function_http_triggers(function=function, start=now - timedelta(hours=1), end=now)
    assert traffic.requests == 100 and traffic.latency_ms_max == 100.0
    assert traffic.latency_p(50) == pytest.approx(50, rel=2 * DURATION.relative_error)
    assert traffic.latency_p(99) == pytest.approx(99, rel=2 * DURATION.relative_error)
    assert traffic.latency_p(99) <= 100.0 and traffic.p99_ms == round(traffic.latency_p(99), 1)


def test_unmatched_requests_and_routes_of_a_deleted_function_are_kept_for_the_api(make_function, user):
    function = make_function()
    http_request(None, owner_id=user.pk, route=UNMATCHED_ROUTE, status=404)
    http_request(None, owner_id=user.pk, route=UNMATCHED_ROUTE, status=404)
    http_request(function, metered=False)
    function.delete()  # before its request was flushed
    metering_flush()
    assert TriggerRollup.objects.filter(function=None, granularity=Granularity.MINUTE).count() == 2
    api = HttpApi.objects.create(owner=user, name="shop", api_id="shop000001", definition={})
    now = timezone.now()
    traffic = http_api_triggers(api=api, start=now - timedelta(hours=1), end=now)
    assert [(t.route, t.requests, t.status_4xx, t.label) for t in traffic] == [
        (UNMATCHED_ROUTE, 2, 2, "shop · $unmatched"),
        ("GET /items/{id}", 1, 0, "shop · GET /items/{id}"),
    ]


def test_a_redis_outage_loses_the_request_count_with_a_warning_and_never_raises(make_function, monkeypatch, caplog):
    function = make_function()

    def unreachable():
        raise RedisConnectionError("down")

    monkeypatch.setattr("metrics_app.services.redis_client", unreachable)
    http_request(function, metered=False)
    assert "was not queued" in caplog.text and "shop000001" in caplog.text


def test_retention_deletes_old_trigger_rows_with_the_invocation_rows(make_function):
    function = make_function()
    http_request(function)
    deleted = metrics_retention(now=timezone.now() + timedelta(days=3))
    assert deleted == {"minute": 1, "hour": 0, "day": 0}
    assert set(TriggerRollup.objects.values_list("granularity", flat=True)) == {"hour", "day"}
