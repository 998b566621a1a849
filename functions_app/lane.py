"""The fast lane: invocation ids on plain Redis lists that executor threads block on.

A Celery message costs a millisecond or two of CPU at each end (the message envelope, a new client per publish,
the consumer's dispatch, the late ack): more than a warm call itself, paid by a caller waiting on the line and by
every event of a backlog. A list push and a blocking pop cost a round trip each. The guarantees do not live in the
transport: the row is the truth, the claim and completion are fenced, the lease is renewed, and the sweeper
republishes an id that was lost (a worker killed between its pop and its claim), so the lane keeps every one of
them. Celery stays the transport of delayed retries (a countdown), and of everything with FAST_LANE=0.

Sync calls and events have a list each; a thread takes sync calls first. A sync call can also go to one chosen
host (its own list, served before the others): where a placement that routes a call to the host holding a warm
environment of its version plugs in.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from redis.exceptions import RedisError

from console.redis import as_text, blocking_pop, redis_client

logger = logging.getLogger(__name__)

SYNC_LANE_KEY = "ephemera:lane:sync"
EVENT_LANE_KEY = "ephemera:lane:events"
HOST_LANE_KEY = "ephemera:lane:host:{host}"
# The host lanes in use, so that the sweeper can count what waits in them.
HOST_LANES_KEY = "ephemera:lanes"
# How long an idle lane thread blocks before it looks at its stop flag again.
POP_WAIT_S = 1.0
# Set by every host serving the lanes, renewed with its heartbeat: while it exists, ids pushed on a lane will be
# taken. Without it (no executor serves the lanes: every one is down, or of a version before them) the web sends
# calls through Celery and the sweeper counts no id on a lane as delivered.
SERVED_KEY = "ephemera:lane:served"
SERVED_TTL_S = 30
# How long a process trusts what it last read of SERVED_KEY: one GET per second, not one per call.
SERVED_CHECK_S = 1.0
_served: list[float | bool] = [0.0, False]  # [read at (monotonic), value]


def lane_mark_served() -> None:
    redis_client().set(SERVED_KEY, 1, ex=SERVED_TTL_S)


def lane_served() -> bool:
    read_at, served = _served
    if time.monotonic() - float(read_at) > SERVED_CHECK_S:
        try:
            served = bool(redis_client().exists(SERVED_KEY))
        except RedisError:
            served = False  # Celery will fail alike; the sweeper republishes once Redis is back
        _served[:] = [time.monotonic(), served]
    return bool(served)


def lane_served_forget() -> None:
    """Read SERVED_KEY again at the next call (tests, after they empty Redis)."""
    _served[:] = [0.0, False]


def lane_publish(*, invocation_id: str, sync: bool, host: str | None = None) -> None:
    """An id on its lane: an event's, a sync call's, or (``host``) a sync call's for one host."""
    key = HOST_LANE_KEY.format(host=host) if host else SYNC_LANE_KEY if sync else EVENT_LANE_KEY
    redis_client().rpush(key, invocation_id)


def lane_publish_many(*, invocation_ids: list[str]) -> None:
    """Events' ids on their lane, in one round trip."""
    if invocation_ids:
        redis_client().rpush(EVENT_LANE_KEY, *invocation_ids)


def lane_waiting() -> int:
    """Ids waiting in every lane (not those popped and running: their rows say RUNNING)."""
    client = redis_client()
    keys = [SYNC_LANE_KEY, EVENT_LANE_KEY, *client.smembers(HOST_LANES_KEY)]
    pipeline = client.pipeline(transaction=False)
    for key in keys:
        pipeline.llen(key)
    return sum(pipeline.execute())


def lane_open(host: str) -> None:
    redis_client().sadd(HOST_LANES_KEY, HOST_LANE_KEY.format(host=host))


def lane_wake(host: str, threads: int) -> None:
    """Wake a host's lane threads blocked on their pop, so that a shutdown does not wait out POP_WAIT_S: one empty
    value each at the front of the host's own lane (a thread that pops one looks at its stop flag again)."""
    redis_client().lpush(HOST_LANE_KEY.format(host=host), *([WAKE] * threads))


WAKE = b""


def lane_close(host: str) -> None:
    """Hand what still waits in a host's own lane to every host (wake-ups left over are dropped), then forget it."""
    client = redis_client()
    key = HOST_LANE_KEY.format(host=host)
    client.lrem(key, 0, WAKE)  # type: ignore[arg-type]  # redis-py annotates the value as str; bytes go as they are
    while client.lmove(key, SYNC_LANE_KEY, "LEFT", "RIGHT") is not None:
        pass
    client.srem(HOST_LANES_KEY, key)


def lane_serve(
    *,
    host: str,
    run: Callable[[list[str], bool], object],
    stop: threading.Event,
    event_batch: Callable[[], int] = lambda: 1,
) -> None:
    """Pop ids (this host's lane, then sync calls, then events) and ``run(ids, sync)``, until ``stop``: a sync call
    alone, events up to ``event_batch()`` at a time (whatever waits behind the first, never waiting for more). Ids
    popped after ``stop`` go back to the front of their lane; an outage of Redis is waited out."""
    keys = [HOST_LANE_KEY.format(host=host), SYNC_LANE_KEY, EVENT_LANE_KEY]
    while not stop.is_set():
        try:
            popped = blocking_pop(keys, POP_WAIT_S)
        except RedisError as exc:
            logger.warning("The fast lane is unavailable (%r); trying again in a second", exc)
            stop.wait(POP_WAIT_S)
            continue
        if popped is None or popped[1] == WAKE:
            continue
        key, invocation_ids = popped[0].decode(), [popped[1].decode()]
        batch = event_batch() if key == EVENT_LANE_KEY else 1
        if batch > 1:
            invocation_ids += _pop_more(key, batch - 1)
        if stop.is_set():
            _put_back(key, invocation_ids)
            return
        try:
            run(invocation_ids, key != EVENT_LANE_KEY)
        except Exception:  # the lifecycle records its own failures; this thread must outlive any of them
            logger.exception("The fast lane failed to run invocations %s", invocation_ids)


def _pop_more(key: str, count: int) -> list[str]:
    try:
        popped = redis_client().lpop(key, count)  # a list of what there was, or None
    except RedisError:  # what could not be popped waits for the next pop
        return []
    return [as_text(invocation_id) for invocation_id in popped] if isinstance(popped, list) else []


def _put_back(key: str, invocation_ids: list[str]) -> None:
    try:
        redis_client().lpush(key, *reversed(invocation_ids))
    except RedisError as exc:  # the rows stay queued: the sweeper republishes them
        logger.warning("Could not put invocations %s back on their lane (%r)", invocation_ids, exc)
