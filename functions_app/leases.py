"""Leases on poller rows (bucket notifications, event source mappings): each row is worked by one executor host at a
time, and moves to another host within LEASE_S of its host's death. A row's model has ``lease_owner`` (a host's
name, or empty) and ``lease_until``."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TypeVar

from django.conf import settings
from django.db import models
from django.db.models import Q

Leased = TypeVar("Leased", bound=models.Model)


def leases_hold(*, rows: models.QuerySet[Leased], host: str, now: datetime, limit: int) -> list[Leased]:
    """The rows of ``rows`` this host holds: those it held, renewed, and free or expired ones taken, up to
    ``limit`` in all. A take is a conditional update: of two hosts reaching for one lease, one gets it."""
    until = now + timedelta(seconds=settings.LEASE_S)
    # Renewed once half spent, not on every round (a round may come many times a second).
    rows.filter(lease_owner=host, lease_until__lt=now + timedelta(seconds=settings.LEASE_S / 2)).update(
        lease_until=until
    )
    held = rows.filter(lease_owner=host).count()
    free = rows.filter(Q(lease_owner="") | Q(lease_until__lt=now)).exclude(lease_owner=host)
    for pk, owner in list(free.values_list("pk", "lease_owner")[: max(limit - held, 0)]):
        expired = Q(lease_owner="") | Q(lease_until__lt=now)
        rows.filter(expired, pk=pk, lease_owner=owner).update(lease_owner=host, lease_until=until)
    return list(rows.filter(lease_owner=host))


def leases_release(*, rows: models.QuerySet[Leased], host: str) -> None:
    """Give the host's leases up (a clean stop): another host takes them at once, not a lease later."""
    rows.filter(lease_owner=host).update(lease_owner="", lease_until=None)
