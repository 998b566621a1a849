from __future__ import annotations

from decimal import Decimal

import pytest

from metrics_app.pricing import billed_ms, invocation_cost


@pytest.mark.parametrize(("init", "run", "billed"), [(0, 0.2, 1), (0, 1.0, 1), (0, 1.01, 2), (12.4, 30.1, 43)])
def test_duration_is_billed_up_to_the_next_millisecond_with_init_included(init, run, billed):
    assert billed_ms(init, run) == billed


def test_it_matches_lambdas_published_example():
    # AWS pricing page example: 512 MB, 3M requests of 1 s each -> 1.5M GB-s -> $25.00 compute + $0.60 requests
    one = invocation_cost(memory_mb=512, init_ms=0, duration_ms=1000)
    compute = (one.run_usd + one.init_usd) * 3_000_000
    assert compute.quantize(Decimal("0.01")) == Decimal("25.00")
    assert (one.request_usd * 3_000_000).quantize(Decimal("0.01")) == Decimal("0.60")


def test_the_cold_start_share_is_the_init_part_of_billed_compute():
    cost = invocation_cost(memory_mb=1024, init_ms=100, duration_ms=300)
    assert cost.billed_ms == 400
    assert cost.init_usd / (cost.init_usd + cost.run_usd) == Decimal("0.25")
    assert cost.total_usd == cost.request_usd + cost.run_usd + cost.init_usd
