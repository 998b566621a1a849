"""The fast lane for synchronous calls: the invocation id on a plain Redis list that executor threads block on.

A Celery message costs a caller who waits on the line a millisecond or two at each end (the message envelope, the
consumer's dispatch, the late ack); a list push and a blocking pop cost a round trip each. The guarantees do not
live in the transport: the row is the truth, the claim and completion are fenced, the lease is renewed, and the
sweeper republishes a call whose id was lost (a worker killed between its pop and its claim), so the lane keeps
every one of them. Celery stays the transport of events, of delayed retries, and the fallback (SYNC_FAST_LANE=0).

A call can go to any executor host (``LANE_KEY``) or to one chosen host (its own lane, served first), which is
where a placement that routes a call to the host holding a warm environment of its version plugs in.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from redis.exceptions import RedisError

from console.redis import blocking_pop, redis_client

logger = logging.getLogger(__name__)

LANE_KEY = "ephemera:lane"
HOST_LANE_KEY = "ephemera:lane:{host}"
# The host lanes in use, so that the sweeper can count what waits in them.
HOST_LANES_KEY = "ephemera:lanes"
# How long an idle lane thread blocks before it looks at its stop flag again.
POP_WAIT_S = 1.0


def lane_publish(*, invocation_id: str, host: str | None = None) -> None:
    redis_client().rpush(HOST_LANE_KEY.format(host=host) if host else LANE_KEY, invocation_id)


def lane_waiting() -> int:
    """Ids waiting in every lane (not those popped and running: their rows say RUNNING)."""
    client = redis_client()
    keys = [LANE_KEY, *(key.decode() for key in client.smembers(HOST_LANES_KEY))]
    pipeline = client.pipeline(transaction=False)
    for key in keys:
        pipeline.llen(key)
    return sum(pipeline.execute())


def lane_open(host: str) -> None:
    redis_client().sadd(HOST_LANES_KEY, HOST_LANE_KEY.format(host=host))


def lane_close(host: str) -> None:
    """Hand what still waits in a host's own lane to every host, then forget the lane."""
    client = redis_client()
    key = HOST_LANE_KEY.format(host=host)
    while client.lmove(key, LANE_KEY, "LEFT", "RIGHT") is not None:
        pass
    client.srem(HOST_LANES_KEY, key)


def lane_serve(*, host: str, run: Callable[[str], object], stop: threading.Event) -> None:
    """Pop ids (this host's lane first) and run each, until ``stop``. An id popped after ``stop`` goes back to the
    front of its lane; an outage of Redis is waited out."""
    keys = [HOST_LANE_KEY.format(host=host), LANE_KEY]
    while not stop.is_set():
        try:
            popped = blocking_pop(keys, POP_WAIT_S)
        except RedisError as exc:
            logger.warning("The fast lane is unavailable (%r); trying again in a second", exc)
            stop.wait(POP_WAIT_S)
            continue
        if popped is None:
            continue
        key, invocation_id = popped[0].decode(), popped[1].decode()
        if stop.is_set():
            redis_client().lpush(key, invocation_id)
            return
        try:
            run(invocation_id)
        except Exception:  # the lifecycle records its own failures; this thread must outlive any of them
            logger.exception("The fast lane failed to run invocation %s", invocation_id)
