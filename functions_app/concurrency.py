"""Concurrency admission: reserved per-function and per-account limits, counted in Redis.

Each running invocation is a member of two sorted sets (its function's and its owner's) scored by the time
its slot expires. Expired members are dropped before every count, so a worker that dies mid-run cannot leak a
slot for longer than its lease. The check and the add are one Lua script: two callers cannot both take the
last slot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis.client import Pipeline

from console.redis import redis_client

FUNCTION_KEY = "ephemera:conc:fn:{id}"
ACCOUNT_KEY = "ephemera:conc:owner:{id}"

_ADMIT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
  return 0
end
local reserved = tonumber(ARGV[4])
if reserved >= 0 and redis.call('ZCARD', KEYS[1]) >= reserved then return 1 end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then return 2 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
return 0
"""

REASONS = {
    1: "ReservedFunctionConcurrentInvocationLimitExceeded",
    2: "ConcurrentInvocationLimitExceeded",
}


@dataclass(frozen=True)
class Admission:
    admitted: bool
    reason: str = ""


def slot_acquire(
    *, function_id: int, owner_id: int, member: str, hold_s: float, reserved: int | None, account_limit: int
) -> Admission:
    """Take a slot for ``member`` for ``hold_s`` seconds (re-taking one it holds extends it)."""
    keys = [FUNCTION_KEY.format(id=function_id), ACCOUNT_KEY.format(id=owner_id)]
    now = time.time()
    code = redis_client().eval(
        _ADMIT, 2, *keys, now, now + hold_s, member, -1 if reserved is None else reserved, account_limit
    )
    return Admission(code == 0, REASONS.get(code, ""))


def slot_release(*, function_id: int, owner_id: int, member: str, pipeline: Pipeline | None = None) -> None:
    """Free a slot; with ``pipeline``, as part of the caller's round trip (it executes it)."""
    commands = pipeline if pipeline is not None else redis_client().pipeline(transaction=False)
    commands.zrem(FUNCTION_KEY.format(id=function_id), member)
    commands.zrem(ACCOUNT_KEY.format(id=owner_id), member)
    if pipeline is None:
        commands.execute()


def slots_in_use(*, function_id: int) -> int:
    key = FUNCTION_KEY.format(id=function_id)
    return redis_client().zcount(key, time.time(), "+inf")


# A token bucket per key: ``burst`` tokens at most, refilled at ``rate`` per second; each request takes one.
_BUCKET = """
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens, at = tonumber(state[1]) or burst, tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local taken = 0
if tokens >= 1 then tokens = tokens - 1; taken = 1 end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return taken
"""


def rate_admit(*, key: str, rate: float, burst: int) -> bool:
    """Whether a request may pass a rate limit (``rate`` per second, ``burst`` at once): one atomic script, so
    web processes share one bucket."""
    return bool(redis_client().eval(_BUCKET, 1, f"ephemera:rate:{key}", rate, burst, time.time()))
