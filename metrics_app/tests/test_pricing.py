from __future__ import annotations

import json
from decimal import Decimal

import pytest

from metrics_app.pricing import (
    LAMBDA_PRICES,
    billed_ms,
    compute_cost_tiered,
    invocation_cost,
    monthly_cost,
    price_table,
    price_table_from_json,
)


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


def test_the_3_million_requests_of_120_ms_at_512_mb_example_costs_3_60_on_x86_and_3_00_on_arm():
    # 3M x 0.12 s x 0.5 GB = 180,000 GB-s; x86 180,000 x 0.0000166667 = $3.00; arm x 0.0000133334 = $2.40.
    for arch, compute in (("x86_64", "3.00"), ("arm64", "2.40")):
        one = invocation_cost(memory_mb=512, init_ms=0, duration_ms=120, arch=arch)
        assert ((one.run_usd + one.init_usd) * 3_000_000).quantize(Decimal("0.01")) == Decimal(compute)
        bill = monthly_cost(requests=3_000_000, gb_seconds=Decimal(180_000), arch=arch)
        assert bill.quantize(Decimal("0.01")) == Decimal(compute) + Decimal("0.60")


def test_volume_tiers_discount_compute_past_6_and_15_billion_gb_seconds_on_x86():
    # 20B GB-s: 6B x 0.0000166667 + 9B x 0.000015 + 5B x 0.0000133334 = 100,000.20 + 135,000 + 66,667
    cost = compute_cost_tiered(gb_seconds=Decimal(20_000_000_000), arch="x86_64")
    assert cost == Decimal("301667.2000000000")


def test_volume_tiers_on_arm_start_at_7_5_and_18_75_billion_gb_seconds():
    # 7.5B x 0.0000133334 + 11.25B x 0.0000120001 + 1.25B x 0.0000106667 = 100,000.5 + 135,001.125 + 13,333.375
    cost = compute_cost_tiered(gb_seconds=Decimal(20_000_000_000), arch="arm64")
    assert cost == Decimal("248335.0000000000")


def test_a_tier_boundary_crossed_mid_month_prices_each_side_at_its_own_rate():
    before = Decimal(5_000_000_000)
    cost = compute_cost_tiered(gb_seconds=Decimal(2_000_000_000), already_used=before)
    assert cost == Decimal(1_000_000_000) * Decimal("0.0000166667") + Decimal(1_000_000_000) * Decimal("0.000015")


def test_below_the_first_tier_the_monthly_bill_is_the_per_invocation_sum():
    one = invocation_cost(memory_mb=1024, init_ms=0, duration_ms=1000)
    assert monthly_cost(requests=1000, gb_seconds=Decimal(1000)) == one.total_usd * 1000


def test_the_operator_can_replace_the_price_table_with_json(settings):
    settings.PRICING_TABLE_JSON = json.dumps(
        {"request_usd": "0.000001", "compute": {"x86_64": [[None, "0.00002"]], "arm64": [[None, "0.00001"]]}}
    )
    table = price_table()
    assert table.request_usd == Decimal("0.000001") and table.gb_second_usd["x86_64"] == Decimal("0.00002")
    cost = invocation_cost(memory_mb=1024, init_ms=0, duration_ms=1000)
    assert cost.run_usd == Decimal("0.00002") and cost.request_usd == Decimal("0.000001")
    assert price_table_from_json(json.dumps(table.as_dict())) == table


def test_the_default_table_round_trips_through_its_json_form():
    assert price_table_from_json(json.dumps(LAMBDA_PRICES.as_dict())) == LAMBDA_PRICES


@pytest.mark.parametrize(
    "text",
    ['{"compute": {"x86_64": [[6e9, "0.1"]]}}', '{"request_usd": "1"}', '{"compute": {"x86_64": [[null, "abc"]]}}'],
)
def test_a_malformed_price_table_is_refused_with_a_value_error(text):
    with pytest.raises(ValueError, match="PRICING_TABLE_JSON"):
        price_table_from_json(text)
