from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command

from console.exceptions import ServiceError
from metrics_app.reports import month_forecast, month_period, report_csv, report_json, usage_report
from metrics_app.tests.factories import finish

pytestmark = pytest.mark.django_db

NOV = datetime(2026, 11, 1, tzinfo=UTC)
DEC = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.fixture
def november(make_function, other_user):
    """alice: 'hello' ($LATEST x3, version 1 x1, 1 GB), 'cold' (1 cold start); mallory: 'theirs' x2."""
    hello = make_function(memory_mb=1024)
    cold = make_function(name="cold", memory_mb=1024)
    theirs = make_function(owner=other_user, name="theirs")
    day = datetime(2026, 11, 5, 9, tzinfo=UTC)
    for _ in range(3):
        finish(hello, at=day, duration_ms=1000.0)
    finish(hello, at=day, duration_ms=1000.0, executed_version="1")
    finish(cold, at=day, is_cold=True, init_ms=500.0, duration_ms=500.0)
    finish(theirs, at=day)
    finish(hello, at=datetime(2026, 10, 31, 23, 59, tzinfo=UTC))  # October: outside
    return hello


def test_a_month_is_its_first_day_to_the_first_of_the_next():
    assert month_period("2026-12") == (datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    with pytest.raises(ServiceError):
        month_period("November")


def test_usage_by_function_has_the_owners_functions_with_totals(november, user):
    report = usage_report(owner=user, start=NOV, end=DEC, group_by="function", now=DEC + timedelta(days=3))
    assert report.granularity == "day" and report.scope == "own"
    assert [(row["function"], row["invocations"]) for row in report.rows] == [("hello", 4), ("cold", 1)]
    hello = report.rows[0]
    # 4 calls x 1 GB x 1 s = 4 GB-s x $0.0000166667 + 4 requests x $0.0000002
    assert hello["gb_seconds"] == 4.0
    assert Decimal(hello["total_usd"]) == Decimal("0.000067466800")
    assert report.totals["invocations"] == 5 and report.totals["cold_starts"] == 1
    assert Decimal(report.totals["total_usd"]) == sum(Decimal(row["total_usd"]) for row in report.rows)
    assert report.forecast is None  # a past month has no forecast
    assert Decimal(report.totals["volume_discount_usd"]) == 0


def test_the_cold_start_share_is_the_init_part_of_compute(november, user):
    report = usage_report(owner=user, start=NOV, end=DEC, group_by="function", now=DEC)
    cold = next(row for row in report.rows if row["function"] == "cold")
    assert cold["cold_start_share"] == 0.5
    assert Decimal(cold["init_usd"]) == Decimal(cold["run_usd"])


def test_usage_by_version_splits_latest_from_published_versions(november, user):
    report = usage_report(owner=user, start=NOV, end=DEC, group_by="version", now=DEC)
    assert {(row["function"], row["version"], row["invocations"]) for row in report.rows} == {
        ("hello", "$LATEST", 3),
        ("hello", "1", 1),
        ("cold", "$LATEST", 1),
    }


def test_usage_by_owner_for_everyone_lists_each_owner(november):
    report = usage_report(owner=None, start=NOV, end=DEC, group_by="owner", now=DEC)
    assert {row["owner"]: row["invocations"] for row in report.rows} == {"alice": 5, "mallory": 1}
    assert report.scope == "all"


def test_an_hour_aligned_period_is_summed_from_hour_roll_ups(november, user):
    report = usage_report(
        owner=user, start=datetime(2026, 11, 5, 9, tzinfo=UTC), end=datetime(2026, 11, 5, 10, tzinfo=UTC), now=DEC
    )
    assert report.granularity == "hour" and report.totals["invocations"] == 5


def test_the_forecast_is_linear_on_the_month_so_far(november, user):
    now = datetime(2026, 11, 11, 0, tzinfo=UTC)  # a third of November has passed
    report = usage_report(owner=user, start=NOV, end=DEC, now=now)
    forecast = report.forecast
    assert forecast["month"] == "2026-11" and forecast["elapsed_fraction"] == pytest.approx(1 / 3, abs=1e-4)
    assert Decimal(forecast["forecast_usd"]) == pytest.approx(Decimal(forecast["month_to_date_usd"]) * 3)
    assert month_forecast(owner=user, now=now) == forecast


@pytest.mark.parametrize(
    ("start", "end", "group_by"),
    [(DEC, NOV, "function"), (NOV, DEC, "colour"), (NOV, NOV + timedelta(days=900), "owner")],
)
def test_a_bad_period_or_grouping_is_a_service_error(user, start, end, group_by):
    with pytest.raises(ServiceError):
        usage_report(owner=user, start=start, end=end, group_by=group_by)


def test_the_csv_has_a_header_the_rows_and_a_total_line(november, user):
    report = usage_report(owner=user, start=NOV, end=DEC, group_by="version", now=DEC)
    lines = list(csv.reader(io.StringIO(report_csv(report))))
    assert lines[0][:4] == ["owner", "function", "version", "invocations"]
    assert len(lines) == 1 + 3 + 1 and lines[-1][0] == "TOTAL" and lines[-1][3] == "5"


def test_the_csv_ends_with_the_forecast_when_the_period_is_current(november, user):
    report = usage_report(owner=user, start=NOV, end=DEC, now=datetime(2026, 11, 11, tzinfo=UTC))
    last = list(csv.reader(io.StringIO(report_csv(report))))[-1]
    assert last[0] == "FORECAST 2026-11" and last[-2] == report.forecast["forecast_usd"]


def test_the_json_report_is_plain_json(november, user):
    report = usage_report(owner=user, start=NOV, end=DEC, now=DEC)
    data = json.loads(json.dumps(report_json(report)))
    assert data["totals"]["invocations"] == 5 and data["granularity"] == "day" and "No free tier" in data["notes"]


def test_the_usage_report_command_prints_csv_for_a_month_and_progress_on_stderr(november):
    out, err = io.StringIO(), io.StringIO()
    call_command("usage_report", "--month", "2026-11", "--format", "csv", stdout=out, stderr=err)
    lines = list(csv.reader(io.StringIO(out.getvalue())))
    assert lines[0][:2] == ["owner", "function"]
    rows = [line for line in lines[1:] if not line[0].startswith(("TOTAL", "FORECAST"))]
    assert {(line[0], line[1]) for line in rows} == {("alice", "hello"), ("alice", "cold"), ("mallory", "theirs")}
    total = next(line for line in lines if line[0] == "TOTAL")
    assert total[2] == "6"
    assert "Reporting 2026-11-01" in err.getvalue() and "rows from day roll-ups" in err.getvalue()


def test_the_usage_report_command_prints_json_grouped_by_owner(november):
    out = io.StringIO()
    call_command(
        "usage_report",
        "--month",
        "2026-11",
        "--format",
        "json",
        "--group-by",
        "owner",
        stdout=out,
        stderr=io.StringIO(),
    )
    assert {row["owner"] for row in json.loads(out.getvalue())["rows"]} == {"alice", "mallory"}


def test_the_usage_report_command_refuses_a_bad_month():
    with pytest.raises(CommandError, match="2026-11"):
        call_command("usage_report", "--month", "11/2026", stdout=io.StringIO(), stderr=io.StringIO())


def test_a_ragged_period_is_summed_from_days_with_hours_and_minutes_at_the_ends():
    from metrics_app.selectors import period_segments

    start, end = datetime(2026, 11, 3, 22, 30, tzinfo=UTC), datetime(2026, 11, 6, 1, 15, tzinfo=UTC)
    assert [(g, low.isoformat(), high.isoformat()) for g, low, high in period_segments(start=start, end=end)] == [
        ("minute", "2026-11-03T22:30:00+00:00", "2026-11-03T23:00:00+00:00"),
        ("hour", "2026-11-03T23:00:00+00:00", "2026-11-04T00:00:00+00:00"),
        ("day", "2026-11-04T00:00:00+00:00", "2026-11-06T00:00:00+00:00"),
        ("hour", "2026-11-06T00:00:00+00:00", "2026-11-06T01:00:00+00:00"),
        ("minute", "2026-11-06T01:00:00+00:00", "2026-11-06T01:15:00+00:00"),
    ]


def test_a_ragged_period_counts_each_invocation_once(make_function, user):
    function = make_function()
    for moment in ("2026-11-03T22:40", "2026-11-03T23:10", "2026-11-05T12:00", "2026-11-06T00:30", "2026-11-06T01:05"):
        finish(function, at=datetime.fromisoformat(moment).replace(tzinfo=UTC))
    finish(function, at=datetime(2026, 11, 6, 1, 15, tzinfo=UTC))  # at the exclusive end: outside
    start, end = datetime(2026, 11, 3, 22, 30, tzinfo=UTC), datetime(2026, 11, 6, 1, 15, tzinfo=UTC)
    report = usage_report(owner=user, start=start, end=end, now=DEC)
    assert report.totals["invocations"] == 5 and report.granularity == "day+hour+minute"


def test_money_is_written_in_fixed_point_even_when_zero(user):
    report = usage_report(owner=user, start=NOV, end=DEC, now=DEC)
    assert report.totals["total_usd"] == "0.000000000000"
