from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from functions_app.models import Function
from metrics_app.charts import rightsizing_figure
from metrics_app.histograms import MEMORY
from metrics_app.rightsizing import function_rightsizing, rightsizing_analyse, run_ms_at
from metrics_app.selectors import Usage
from metrics_app.tests.factories import finish


def observed(*, runs=1000, run_ms=200.0, cpu_ms=150.0, peak_mb=60.0, init_ms=0.0):
    hist = [0] * MEMORY.count
    hist[MEMORY.index(peak_mb)] = runs
    return Usage(
        invocations=runs,
        runs=runs,
        duration_ms_sum=run_ms * runs,
        cpu_ms_sum=cpu_ms * runs,
        init_ms_sum=init_ms * runs,
        peak_memory_mb_max=peak_mb,
        memory_hist=tuple(hist),
    )


def row(analysis, size):
    return next(r for r in analysis.rows if r.memory_mb == size)


def test_cpu_bound_time_scales_with_the_cpu_share_up_to_one_vcpu():
    # 50 ms waiting + 150 ms on CPU at 512 MB
    assert run_ms_at(memory_mb=1024, baseline_mb=512, run_ms=200, cpu_ms=150) == pytest.approx(125)
    assert run_ms_at(memory_mb=256, baseline_mb=512, run_ms=200, cpu_ms=150) == pytest.approx(350)
    assert run_ms_at(memory_mb=1769, baseline_mb=512, run_ms=200, cpu_ms=150) == pytest.approx(50 + 150 * 512 / 1769)
    assert run_ms_at(memory_mb=10240, baseline_mb=512, run_ms=200, cpu_ms=150) == run_ms_at(
        memory_mb=1769, baseline_mb=512, run_ms=200, cpu_ms=150
    )


def test_a_function_that_mostly_waits_is_cheapest_at_the_smallest_safe_size():
    analysis = rightsizing_analyse(usage=observed(run_ms=200, cpu_ms=10), baseline_mb=512, window_days=10)
    assert analysis.recommended_mb == 128
    current, best = row(analysis, 512), row(analysis, 128)
    # 1000 runs in 10 days = 3000 a month
    assert analysis.monthly_invocations == pytest.approx(3000)
    assert current.monthly_cost_usd == pytest.approx(3000 * (2e-7 + 0.5 * 0.2005 * 0.0000166667))
    assert analysis.expected_monthly_saving_usd == pytest.approx(current.monthly_cost_usd - best.monthly_cost_usd)
    assert analysis.expected_monthly_saving_usd > 0 and "cheapest" in analysis.reason
    assert "1769" in analysis.model


def test_sizes_near_the_observed_peak_memory_are_flagged_and_never_recommended():
    analysis = rightsizing_analyse(usage=observed(run_ms=200, cpu_ms=10, peak_mb=240), baseline_mb=512, window_days=14)
    assert row(analysis, 128).oom_risk and row(analysis, 256).oom_risk and not row(analysis, 512).oom_risk
    assert analysis.recommended_mb == 512


def test_a_function_at_risk_of_oom_is_told_to_grow_even_at_a_cost():
    analysis = rightsizing_analyse(usage=observed(run_ms=100, cpu_ms=1, peak_mb=125), baseline_mb=128, window_days=14)
    assert row(analysis, 128).oom_risk and analysis.recommended_mb == 256
    assert analysis.expected_monthly_saving_usd < 0 and "within 10%" in analysis.reason


def test_a_cpu_bound_function_is_recommended_the_fastest_size_within_one_percent_of_the_cheapest():
    # Pure CPU: duration halves as memory doubles up to 1769 MB, so cost is flat there and speed decides.
    analysis = rightsizing_analyse(usage=observed(run_ms=1000, cpu_ms=1000), baseline_mb=128, window_days=14)
    assert analysis.recommended_mb == 1769
    assert row(analysis, 1769).duration_ms == pytest.approx(1000 * 128 / 1769)


def test_the_figure_plots_duration_and_cost_per_size_and_marks_oom_risk():
    analysis = rightsizing_analyse(usage=observed(peak_mb=240), baseline_mb=512, window_days=14)
    figure = rightsizing_figure(analysis)
    names = [trace["name"] for trace in figure["data"]]
    assert names == ["Duration (ms)", "Cost per 1M invocations (USD)", "OOM risk"]
    assert figure["data"][2]["x"] == [128, 256]
    assert figure["layout"]["shapes"][0]["x0"] == analysis.recommended_mb


@pytest.mark.django_db
def test_function_rightsizing_reads_the_day_roll_ups_at_the_configured_size(make_function):
    function = make_function(memory_mb=1024)
    now = timezone.now()
    for minutes in range(20):
        finish(function, at=now - timedelta(minutes=minutes), duration_ms=300.0, cpu_ms=20.0, peak_memory_mb=50.0)
    finish(function, at=now, memory_mb=512, duration_ms=400.0)  # ran at another size before: not the baseline
    analysis = function_rightsizing(function=function, now=now)
    assert analysis.baseline_memory_mb == 1024 and analysis.invocations_observed == 20
    assert analysis.avg_duration_ms == pytest.approx(300)
    assert analysis.recommended_mb == 128 and analysis.expected_monthly_saving_usd > 0


@pytest.mark.django_db
def test_traffic_from_before_midnight_counts_for_a_function_created_the_day_before(make_function):
    midnight = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    function = make_function()
    Function.objects.filter(pk=function.pk).update(created_at=midnight - timedelta(minutes=10))
    function.refresh_from_db()
    for minutes in (5, 3):
        finish(function, at=midnight - timedelta(minutes=minutes))
    finish(function, at=midnight + timedelta(minutes=1))
    analysis = function_rightsizing(function=function, now=midnight + timedelta(minutes=5))
    assert analysis.invocations_observed == 3


@pytest.mark.django_db
def test_a_function_without_telemetry_gets_no_recommendation(make_function):
    analysis = function_rightsizing(function=make_function())
    assert analysis.recommended_mb is None and analysis.rows == [] and "No invocations" in analysis.reason
