"""Cost arithmetic, pure functions over a price table (Lambda's us-east-1 model by default).

Lambda bills duration rounded up to 1 ms, and since 2025-08-01 the INIT phase too, at the same GB-second rate;
GB-seconds are priced in monthly volume tiers per account and architecture (the default table below is Lambda's
published one). Per-invocation costs (``invocation_cost``) use the first tier's rate; the volume discount of a month is
``compute_cost_tiered`` over that month's GB-seconds. The free tier is not applied (a self-hosted platform has
no free tier to give; the figures stay comparable with a Lambda bill before its free tier).

The operator may replace the table with the ``PRICING_TABLE_JSON`` setting, e.g.::

    {"request_usd": "0.0000002",
     "compute": {"x86_64": [[6e9, "0.0000166667"], [15e9, "0.000015"], [null, "0.0000133334"]],
                 "arm64": [[7.5e9, "0.0000133334"], [18.75e9, "0.0000120001"], [null, "0.0000106667"]]}}

where each tier is [upper bound of monthly GB-seconds or null for "and above", USD per GB-second].
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache

MB_PER_GB = Decimal(1024)
MS_PER_S = Decimal(1000)

Tier = tuple[Decimal | None, Decimal]  # (upper bound in GB-s per month, or None for the last tier; USD per GB-s)


def _lambda_tiers() -> dict[str, tuple[Tier, ...]]:
    return {
        "x86_64": (
            (Decimal(6_000_000_000), Decimal("0.0000166667")),
            (Decimal(15_000_000_000), Decimal("0.000015")),
            (None, Decimal("0.0000133334")),
        ),
        "arm64": (
            (Decimal(7_500_000_000), Decimal("0.0000133334")),
            (Decimal(18_750_000_000), Decimal("0.0000120001")),
            (None, Decimal("0.0000106667")),
        ),
    }


@dataclass(frozen=True)
class PriceTable:
    request_usd: Decimal = Decimal("0.0000002")
    compute_tiers: dict[str, tuple[Tier, ...]] = field(default_factory=_lambda_tiers)

    @property
    def gb_second_usd(self) -> dict[str, Decimal]:
        """The first tier's rate per architecture: what one invocation costs before any volume discount."""
        return {arch: tiers[0][1] for arch, tiers in self.compute_tiers.items()}

    def as_dict(self) -> dict:
        return {
            "request_usd": str(self.request_usd),
            "compute": {
                arch: [[None if bound is None else float(bound), str(rate)] for bound, rate in tiers]
                for arch, tiers in self.compute_tiers.items()
            },
        }


LAMBDA_PRICES = PriceTable()


def price_table_from_json(text: str) -> PriceTable:
    """Parse the operator's table (format in the module docstring); a ValueError names what is wrong."""
    data = json.loads(text)
    try:
        tiers = {
            arch: tuple((None if bound is None else Decimal(str(bound)), Decimal(str(rate))) for bound, rate in rows)
            for arch, rows in data["compute"].items()
        }
        table = PriceTable(request_usd=Decimal(str(data.get("request_usd", "0.0000002"))), compute_tiers=tiers)
    except (KeyError, TypeError, ArithmeticError) as exc:
        raise ValueError(f"PRICING_TABLE_JSON is not a valid price table: {exc!r}") from exc
    for arch, rows in tiers.items():
        if not rows or rows[-1][0] is not None:
            raise ValueError(f"PRICING_TABLE_JSON: the last {arch} tier must have a null bound")
    return table


def price_table() -> PriceTable:
    """The table in force: ``settings.PRICING_TABLE_JSON`` when set, else Lambda's us-east-1 prices."""
    from django.conf import settings

    return _cached_table(settings.PRICING_TABLE_JSON)


@lru_cache(maxsize=4)
def _cached_table(text: str) -> PriceTable:
    return price_table_from_json(text) if text.strip() else LAMBDA_PRICES


@dataclass(frozen=True)
class InvocationCost:
    billed_ms: int
    request_usd: Decimal
    run_usd: Decimal
    init_usd: Decimal

    @property
    def total_usd(self) -> Decimal:
        return self.request_usd + self.run_usd + self.init_usd


def billed_ms(init_ms: float, duration_ms: float) -> int:
    """Init plus run, rounded up to the next whole millisecond (never zero for a call that ran)."""
    return max(1, math.ceil(round(init_ms + duration_ms, 6)))


def gb_seconds(*, memory_mb: float, billed_ms: float) -> Decimal:
    return Decimal(str(memory_mb)) / MB_PER_GB * Decimal(str(billed_ms)) / MS_PER_S


def invocation_cost(
    *, memory_mb: int, init_ms: float, duration_ms: float, arch: str = "x86_64", prices: PriceTable | None = None
) -> InvocationCost:
    """One invocation's cost, split into request, run and cold-start (init) parts that add up to the total."""
    prices = prices or price_table()
    billed = billed_ms(init_ms, duration_ms)
    compute = gb_seconds(memory_mb=memory_mb, billed_ms=billed) * prices.gb_second_usd[arch]
    init_share = (
        Decimal(str(init_ms)) / Decimal(str(init_ms + duration_ms)) if init_ms + duration_ms > 0 else Decimal(0)
    )
    init_usd = compute * init_share
    return InvocationCost(billed, prices.request_usd, compute - init_usd, init_usd)


def compute_cost_tiered(
    *, gb_seconds: Decimal, arch: str = "x86_64", already_used: Decimal = Decimal(0), prices: PriceTable | None = None
) -> Decimal:
    """The compute charge for ``gb_seconds`` of a month in which ``already_used`` GB-s were billed before them."""
    prices = prices or price_table()
    start, end, total, floor = already_used, already_used + gb_seconds, Decimal(0), Decimal(0)
    for bound, rate in prices.compute_tiers[arch]:
        ceiling = end if bound is None else min(bound, end)
        low = max(floor, start)
        if ceiling > low:
            total += (ceiling - low) * rate
        if bound is None or bound >= end:
            break
        floor = bound
    return total


def monthly_cost(
    *, requests: int, gb_seconds: Decimal, arch: str = "x86_64", prices: PriceTable | None = None
) -> Decimal:
    """A month's bill for one account and architecture: requests plus tiered compute (no free tier)."""
    prices = prices or price_table()
    return prices.request_usd * requests + compute_cost_tiered(gb_seconds=gb_seconds, arch=arch, prices=prices)


def duration_cost(
    *, memory_mb: float, billed_ms: float, arch: str = "x86_64", prices: PriceTable | None = None
) -> float:
    """Compute cost at the first tier as a float, for what-if curves (right-sizing) rather than bills."""
    prices = prices or price_table()
    return float(gb_seconds(memory_mb=memory_mb, billed_ms=billed_ms) * prices.gb_second_usd[arch])
