from __future__ import annotations

import pytest

from metrics_app.histograms import DURATION, MEMORY, cumulative, percentile, percentile_upper


def test_values_land_in_the_decade_buckets_and_clamp_at_both_ends():
    assert DURATION.index(0.0) == 0 and DURATION.index(0.1) == 0
    assert DURATION.index(1.0) == 10 and DURATION.index(1.3) == 11 and DURATION.index(10.0) == 20
    assert DURATION.index(10**9) == DURATION.count - 1
    assert DURATION.column(1.0) == "d10"


def test_a_percentile_is_the_middle_of_its_bucket_within_the_stated_error():
    counts = [0] * DURATION.count
    counts[DURATION.index(42.0)] = 10
    assert percentile(DURATION, counts, 50) == pytest.approx(42.0, rel=DURATION.relative_error * 2)
    assert percentile(DURATION, [0] * DURATION.count, 50) is None


def test_the_upper_percentile_never_understates_peak_memory():
    counts = [0] * MEMORY.count
    counts[MEMORY.index(200.0)] = 1
    assert percentile_upper(MEMORY, counts, 99) >= 200.0


def test_cumulative_counts_at_every_fifth_edge_are_exact():
    counts = [1] * DURATION.count
    edges = cumulative(DURATION, counts, 5)
    assert edges[0] == (pytest.approx(0.1 * 10**0.5), 5) and edges[1][1] == 10
    assert len(edges) == DURATION.count // 5 - 1
