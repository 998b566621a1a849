from __future__ import annotations

import json
from datetime import timedelta
from itertools import pairwise

import pytest
from django.utils import timezone

from functions_app.models import InvocationStatus
from metrics_app.charts import monitor_figures
from metrics_app.models import Granularity
from metrics_app.selectors import function_summaries, function_timeseries, granularity_for
from metrics_app.services import invocation_record, metering_flush
from metrics_app.tests.factories import T0, finish

pytestmark = pytest.mark.django_db


def by_id(figures):
    return {item["id"]: item for item in figures}


def trace(figure, name):
    return next(t for t in figure["data"] if t["name"] == name)


@pytest.mark.parametrize(
    ("span", "expected"),
    [
        (timedelta(hours=1), "minute"),
        (timedelta(hours=6), "minute"),
        (timedelta(days=1), "hour"),
        (timedelta(days=30), "day"),
    ],
)
def test_the_granularity_follows_the_length_of_the_range(span, expected):
    assert granularity_for(start=T0 - span, end=T0, now=T0) == expected


def test_a_recent_short_range_falls_back_to_hours_once_minutes_are_past_retention():
    assert granularity_for(start=T0 - timedelta(days=5), end=T0 - timedelta(days=5, hours=-1), now=T0) == "hour"


def test_the_timeseries_fills_quiet_minutes_with_zeros(make_function):
    function = make_function()
    finish(function, at=T0 + timedelta(minutes=2))
    series = function_timeseries(function=function, start=T0, end=T0 + timedelta(minutes=5))
    assert series.granularity == Granularity.MINUTE
    assert [p.invocations for p in series.points] == [0, 0, 1, 0, 0]


def test_the_monitor_page_gets_every_chart_as_json(make_function):
    function = make_function(memory_mb=512)
    for second in range(0, 60, 10):
        finish(function, at=T0 + timedelta(seconds=second), duration_ms=100.0 + second)
    finish(function, at=T0 + timedelta(seconds=5), is_cold=True, init_ms=250.0, executed_version="1")
    finish(function, at=T0 + timedelta(minutes=1), status=InvocationStatus.FAILED)
    invocation_record(event="throttled", function=function)  # now, outside the range: not in the charts
    metering_flush()
    figures = monitor_figures(function=function, start=T0, end=T0 + timedelta(minutes=3))
    assert [f["id"] for f in figures] == [
        "invocations",
        "duration",
        "cold-starts",
        "concurrency",
        "cost",
        "phases",
        "versions",
    ]
    assert all(f["title"] and f["figure"]["data"] for f in figures)
    json.dumps(figures)  # plain JSON, ready for Plotly.newPlot
    charts = by_id(figures)
    invocations = charts["invocations"]["figure"]
    assert trace(invocations, "Succeeded")["y"] == [7, 0, 0] and trace(invocations, "Errors")["y"] == [0, 1, 0]
    assert trace(charts["cold-starts"]["figure"], "Cold-start rate")["y"][0] == pytest.approx(100 / 7, abs=0.01)
    # Runs of 100, 110 … 150 ms and one of 100 ms with 250 ms of init in the first minute, over 60,000 ms.
    concurrency = trace(charts["concurrency"]["figure"], "Average concurrency")["y"][0]
    assert concurrency == pytest.approx((750 + 100 + 250) / 60000, abs=1e-3)
    assert "cold starts are" in charts["cost"]["title"]
    assert trace(charts["versions"]["figure"], "p50")["x"] == ["$LATEST", "1"]


def test_duration_percentiles_in_the_chart_are_within_the_bucket_error(make_function):
    function = make_function()
    for ms in range(1, 101):
        finish(function, duration_ms=float(ms))
    figure = by_id(monitor_figures(function=function, start=T0, end=T0 + timedelta(minutes=1)))["duration"]
    assert trace(figure["figure"], "p50")["y"][0] == pytest.approx(50, rel=0.13)
    assert trace(figure["figure"], "p99")["y"][0] == pytest.approx(99, rel=0.13)


def test_function_summaries_cover_only_the_owners_functions(make_function, other_user):
    mine = make_function()
    theirs = make_function(owner=other_user, name="other")
    now = timezone.now()
    finish(mine, at=now - timedelta(minutes=5), duration_ms=20.0)
    finish(mine, at=now - timedelta(minutes=4), status=InvocationStatus.FAILED, is_cold=True, init_ms=5.0)
    finish(theirs, at=now - timedelta(minutes=5))
    summaries = function_summaries(owner=mine.owner, since=now - timedelta(days=1))
    assert set(summaries) == {mine.pk}
    summary = summaries[mine.pk]
    assert summary["invocations"] == 2 and summary["error_rate"] == 0.5 and summary["cold_rate"] == 0.5
    assert summary["p50_ms"] == pytest.approx(20, rel=0.13) and summary["cost_usd"] > 0


def test_the_overview_has_the_headline_figures_of_the_range(make_function):
    from metrics_app.selectors import function_overview

    function = make_function()
    finish(function, at=T0, is_cold=True, init_ms=100.0, duration_ms=100.0)
    finish(function, at=T0, status=InvocationStatus.FAILED, duration_ms=100.0)
    overview = function_overview(function=function, start=T0, end=T0 + timedelta(hours=1))
    assert (overview["invocations"], overview["errors"], overview["cold_rate"]) == (2, 1, 0.5)
    assert overview["p50_ms"] == pytest.approx(100, rel=0.13) and overview["cold_start_cost_share"] > 0


def scatter_traces(figure):
    return [trace for trace in figure["data"] if trace["type"] == "scatter"]


def test_every_line_series_marks_its_points_so_traffic_in_a_single_hour_still_shows(make_function):
    from metrics_app.charts import rightsizing_figure
    from metrics_app.rightsizing import function_rightsizing

    function = make_function()
    finish(function, at=timezone.now() - timedelta(minutes=30), is_cold=True, init_ms=40.0, duration_ms=120.0)
    end = timezone.now()
    figures = [f["figure"] for f in monitor_figures(function=function, start=end - timedelta(hours=24), end=end)]
    figures.append(rightsizing_figure(function_rightsizing(function=function)))
    lines = [trace for figure in figures for trace in scatter_traces(figure)]
    assert lines and all("markers" in trace["mode"] for trace in lines)
    duration = by_id(monitor_figures(function=function, start=end - timedelta(hours=24), end=end))["duration"]
    p50 = trace(duration["figure"], "p50")["y"]
    assert sum(value is not None for value in p50) == 1  # one point between gaps: only its marker draws it


def test_every_axis_makes_room_for_its_tick_labels_and_title(make_function):
    from metrics_app.charts import rightsizing_figure
    from metrics_app.rightsizing import function_rightsizing

    function = make_function()
    finish(function, is_cold=True, init_ms=40.0)
    figures = [f["figure"] for f in monitor_figures(function=function, start=T0, end=T0 + timedelta(hours=1))]
    figures.append(rightsizing_figure(function_rightsizing(function=function, now=T0 + timedelta(hours=1))))
    for figure in figures:
        axes = [value for key, value in figure["layout"].items() if key.startswith(("xaxis", "yaxis"))]
        assert axes and all(axis.get("automargin") for axis in axes), figure["layout"]["title"]["text"]
    cold = by_id(monitor_figures(function=function, start=T0, end=T0 + timedelta(hours=1)))["cold-starts"]
    assert cold["figure"]["layout"]["yaxis2"]["side"] == "right"


def test_the_right_sizing_axis_labels_only_sizes_far_enough_apart_not_to_overlap(make_function):
    from metrics_app.charts import rightsizing_figure
    from metrics_app.rightsizing import function_rightsizing

    function = make_function()
    finish(function)
    figure = rightsizing_figure(function_rightsizing(function=function, now=T0 + timedelta(hours=1)))
    ticks = figure["layout"]["xaxis"]["tickvals"]
    assert ticks[0] == 128 and all(later / earlier >= 2 for earlier, later in pairwise(ticks))
    assert len(figure["data"][0]["x"]) > len(ticks)  # every size keeps its point


def test_no_percentile_is_above_the_largest_value_recorded(make_function):
    from metrics_app.rightsizing import function_rightsizing
    from metrics_app.selectors import function_memory_profile

    function = make_function()
    for _ in range(5):
        finish(function, at=timezone.now() - timedelta(minutes=5), peak_memory_mb=2.5, duration_ms=1.2)
    usage = function_memory_profile(function=function, since=timezone.now() - timedelta(days=1))[128]
    assert usage.peak_memory_mb_max == 2.5 and usage.memory_p_upper(99) == 2.5  # the bucket's edge is 2.74
    assert usage.duration_p(99) <= 1.2 and usage.duration_p(50) <= 1.2
    analysis = function_rightsizing(function=function)
    assert analysis.peak_memory_p99_mb <= analysis.peak_memory_max_mb == 2.5


def test_the_phase_breakdown_covers_prepare_and_overhead_too():
    from metrics_app.charts import phases_figure
    from metrics_app.selectors import Timeseries, Usage

    point = Usage(invocations=2, runs=2, queue_wait_ms_sum=4.0, prepare_ms_sum=60.0, overhead_ms_sum=1.0)
    series = Timeseries(granularity="hour", step=timedelta(hours=1), buckets=[T0], points=[point])
    bars = {trace["name"]: trace["y"] for trace in phases_figure(series)["data"]}
    assert list(bars) == ["Queue wait", "Prepare", "Init", "Run", "Overhead"]
    assert bars["Prepare"] == [30.0] and bars["Overhead"] == [0.5]
