"""Redis clients for the platform's own keys (reply channels, counters, host health), one of each per process.

redis-py gives every read a socket timeout (5 s by default). A blocking pop waits on the server for up to its
own timeout before the server answers, so it must never go through a client whose socket gives up first: that
turned every synchronous call longer than 5 s into a ``TimeoutError``. Ordinary commands use ``redis_client()``;
blocking pops go through ``blocking_pop``, whose client's socket outlasts the longest wait it ever asks for.
"""

from __future__ import annotations

import asyncio
from functools import lru_cache
from typing import cast

import redis
import redis.asyncio
from django.conf import settings

# Ordinary commands answer in milliseconds; a socket silent this long means the server or the network is gone.
COMMAND_TIMEOUT_S = 5.0
# One blocking pop waits at most this long on the server; callers that wait longer loop (and look around
# between pops). The blocking client's socket allows this plus COMMAND_TIMEOUT_S for the answer to arrive.
BLOCKING_POP_MAX_S = 10.0


@lru_cache(maxsize=1)
def redis_client() -> redis.Redis:
    return _client(COMMAND_TIMEOUT_S)


@lru_cache(maxsize=1)
def _blocking_client() -> redis.Redis:
    return _client(BLOCKING_POP_MAX_S + COMMAND_TIMEOUT_S)


def _client(socket_timeout_s: float) -> redis.Redis:
    return redis.Redis.from_url(
        settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=socket_timeout_s, health_check_interval=30
    )


def as_text(reply: bytes | str) -> str:
    """A reply as text (redis-py types replies as bytes or str: decode_responses is a run-time option)."""
    return reply.decode() if isinstance(reply, bytes) else reply


def blocking_pop(keys: list[str], timeout_s: float) -> tuple[bytes, bytes] | None:
    """BLPOP for at most ``min(timeout_s, BLOCKING_POP_MAX_S)`` seconds: (key, value), or None on timeout."""
    wait_s = min(max(timeout_s, 0.01), BLOCKING_POP_MAX_S)
    # These clients never decode (see as_text).
    return cast("tuple[bytes, bytes] | None", _blocking_client().blpop(keys, timeout=wait_s))


# One asyncio client per event loop (a web process under ASGI has one): its pool holds a connection per waiting
# caller, which is what lets one process hold a thousand waits without a thread each.
_async_clients: dict[int, redis.asyncio.Redis] = {}


def _async_blocking_client() -> redis.asyncio.Redis:
    loop = asyncio.get_running_loop()
    client = _async_clients.get(id(loop))
    if client is None:
        client = redis.asyncio.Redis.from_url(
            settings.REDIS_URL,
            socket_connect_timeout=2,
            socket_timeout=BLOCKING_POP_MAX_S + COMMAND_TIMEOUT_S,
            health_check_interval=30,
        )
        _async_clients[id(loop)] = client
    return client


async def blocking_pop_async(keys: list[str], timeout_s: float) -> tuple[bytes, bytes] | None:
    """``blocking_pop`` for an event loop."""
    wait_s = min(max(timeout_s, 0.01), BLOCKING_POP_MAX_S)
    reply = await _async_blocking_client().blpop(keys, timeout=wait_s)
    return cast("tuple[bytes, bytes] | None", reply)


async def flag_set_async(key: str, ttl_s: int) -> None:
    """SET ``key`` (to 1, expiring after ``ttl_s``) from an event loop."""
    await _async_blocking_client().set(key, b"1", ex=ttl_s)
