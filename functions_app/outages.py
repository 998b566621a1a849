"""Outages of the platform's own database, as a worker and a waiting caller ride them out: retried writes, and a
clock that keeps an expired lease from being taken for a dead worker just after the database comes back."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import TypeVar

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection

logger = logging.getLogger(__name__)


# What the database raises while it is unreachable (a restart, a failover, a broken connection).
DATABASE_ERRORS = (OperationalError, InterfaceError)
# How often a worker retries a write that an unreachable database refused.
DATABASE_RETRY_S = 0.5
# A finished run's result is worth waiting for: the worker retries its write this long before giving up (and
# leaving the invocation to its lease). A database restart takes seconds.
RESULT_WRITE_RETRY_MAX_S = 300.0
T = TypeVar("T")


class _OutageClock:
    """When this process last found the database unreachable. While no lease can be renewed, leases run out
    although their workers are fine: for a grace after an outage, an expired lease is not yet taken as a dead
    worker (the heartbeats renew them first; see ``leases_settled``)."""

    def __init__(self) -> None:
        self._last_failure = -math.inf

    def failed(self) -> None:
        self._last_failure = time.monotonic()

    def seconds_since(self) -> float:
        return time.monotonic() - self._last_failure


database_outage = _OutageClock()


def leases_settled() -> bool:
    """Whether an expired lease now means a dead or stalled worker: not within half a lease of this process
    seeing the database unreachable (a worker's heartbeat renews within a second of the database's return)."""
    return database_outage.seconds_since() > settings.LEASE_S / 2


def database_unreachable(exc: Exception) -> None:
    """Note an outage and drop this thread's connection, so that the next query opens a new one."""
    database_outage.failed()
    if not connection.in_atomic_block:
        with contextlib.suppress(DatabaseError):  # closing a dead socket may fail; it is dropped all the same
            connection.close()


def database_retry(action: Callable[[], T], *, what: str, give_up_s: float = RESULT_WRITE_RETRY_MAX_S) -> T:
    """``action()``, retried every DATABASE_RETRY_S while the database is unreachable, for up to ``give_up_s``."""
    deadline = time.monotonic() + give_up_s
    while True:
        try:
            return action()
        except DATABASE_ERRORS as exc:
            if time.monotonic() >= deadline:
                raise
            logger.warning("%s: the database is unreachable (%r); retrying", what, exc)
            database_unreachable(exc)
            time.sleep(DATABASE_RETRY_S)
