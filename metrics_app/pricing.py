"""Cost arithmetic, pure functions over a price table (Lambda's us-east-1 model by default).

Lambda bills duration rounded up to 1 ms, and since 2025-08-01 the INIT phase too, at the same GB-second rate:
shared/reference/lambda-contract.md §16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal

MB_PER_GB = Decimal(1024)
MS_PER_S = Decimal(1000)


@dataclass(frozen=True)
class PriceTable:
    request_usd: Decimal = Decimal("0.0000002")
    gb_second_usd: dict[str, Decimal] = field(
        default_factory=lambda: {"x86_64": Decimal("0.0000166667"), "arm64": Decimal("0.0000133334")}
    )


LAMBDA_PRICES = PriceTable()


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


def invocation_cost(
    *, memory_mb: int, init_ms: float, duration_ms: float, arch: str = "x86_64", prices: PriceTable = LAMBDA_PRICES
) -> InvocationCost:
    """One invocation's cost, split into request, run and cold-start (init) parts that add up to the total."""
    billed = billed_ms(init_ms, duration_ms)
    gb = Decimal(memory_mb) / MB_PER_GB
    compute = gb * Decimal(billed) / MS_PER_S * prices.gb_second_usd[arch]
    init_share = (
        Decimal(str(init_ms)) / Decimal(str(init_ms + duration_ms)) if init_ms + duration_ms > 0 else Decimal(0)
    )
    init_usd = compute * init_share
    return InvocationCost(billed, prices.request_usd, compute - init_usd, init_usd)
