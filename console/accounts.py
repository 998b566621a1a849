"""API keys: made, listed, revoked and checked. A key is ``eph_<prefix>_<secret>``; only its SHA-256 and prefix
are stored, so a key is shown once, when it is made, and a database dump holds nothing that authenticates.

A user may hold several keys, each with a name, an optional expiry and a last-used time. Keys made by DRF's
``authtoken`` before these existed (40 hex characters) were moved here by hash, so they keep working.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.utils import timezone
from redis.exceptions import RedisError

from console.exceptions import ResourceNotFound, ServiceError
from console.models import ApiKey
from console.redis import redis_client

logger = logging.getLogger(__name__)

KEY_PREFIX = "eph_"
NAME_MAX = 64
KEYS_PER_USER_MAX = 50
# A key's last-used time is written at most this often: a request per second must not be a write per second.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def key_sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def api_key_create(*, owner: User, name: str, expires_at: datetime | None = None) -> tuple[ApiKey, str]:
    """A new key for ``owner``: the row, and the key itself (shown this once, never stored)."""
    name = name.strip() if isinstance(name, str) else name
    if not isinstance(name, str) or not name or len(name) > NAME_MAX:
        raise ServiceError(f"name: Give the key a name of 1 to {NAME_MAX} characters.", details={"name": ["Required."]})
    if expires_at is not None and expires_at <= timezone.now():
        raise ServiceError("expires_at: Must be in the future.", details={"expires_at": ["Must be in the future."]})
    if api_key_list(owner=owner, active_only=True).count() >= KEYS_PER_USER_MAX:
        raise ServiceError(f"You hold {KEYS_PER_USER_MAX} active API keys; revoke one first.", type="LimitExceeded")
    prefix = secrets.token_hex(4)
    key = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    api_key = ApiKey.objects.create(
        owner=owner, name=name, prefix=prefix, key_sha256=key_sha256(key), expires_at=expires_at
    )
    return api_key, key


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    """The key stops working at once; its row stays (who made it, when it was last used) until the owner goes."""
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=api_key.revoked_at)
        api_keys_forget_checked()
    return api_key


def api_keys_forget_checked(**_: object) -> None:
    """Make every web process look its remembered keys up again (see api_key_authenticate): after a revocation,
    and, through the signals console/apps.py connects, after a key or its owner is deleted or deactivated."""
    _checked.clear()
    try:
        redis_client().set(REVOKED_AT_KEY, time.time())
    except RedisError as exc:
        logger.warning("Other web processes may accept a revoked key for %s s more (%r)", CHECKED_FOR_S, exc)


def api_key_list(*, owner: User, active_only: bool = False) -> QuerySet[ApiKey]:
    keys = ApiKey.objects.filter(owner=owner)
    if active_only:
        now = timezone.now()
        keys = keys.filter(revoked_at__isnull=True).exclude(expires_at__lte=now)
    return keys


def api_key_get(*, owner: User, pk: int) -> ApiKey:
    try:
        return ApiKey.objects.get(owner=owner, pk=pk)
    except ApiKey.DoesNotExist:
        raise ResourceNotFound(f"API key not found: {pk}") from None


def api_key_authenticate(*, key: str) -> User | None:
    """The active user a presented key belongs to, or None. Looked up by hash, so timing says nothing of a key.

    A key found good is remembered in this process for CHECKED_FOR_S, so that a call does not cost a database
    query: every revocation stamps REVOKED_AT_KEY in Redis, and a key remembered before the latest stamp is looked
    up again, which keeps "a revoked key stops working at once" on every web process for the price of one GET.
    (An owner deactivated in the admin loses access within CHECKED_FOR_S.)
    """
    sha256 = key_sha256(key)
    checked = _checked.get(sha256)
    if checked is not None and checked.still_good():
        return copy.copy(checked.owner)  # a request may change its user; the remembered one stays as it was
    api_key = ApiKey.objects.select_related("owner").filter(key_sha256=sha256).first()
    if api_key is None or not api_key.is_active or not api_key.owner.is_active:
        return None
    now = timezone.now()
    if api_key.last_used_at is None or now - api_key.last_used_at > LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
    if len(_checked) >= CHECKED_MAX:
        _checked.clear()
    _checked[sha256] = _CheckedKey(copy.copy(api_key.owner), api_key.expires_at, time.time())
    return api_key.owner


# See api_key_authenticate.
CHECKED_FOR_S = 60.0
CHECKED_MAX = 10_000
REVOKED_AT_KEY = "ephemera:api_keys:revoked_at"


@dataclass(frozen=True)
class _CheckedKey:
    owner: User
    expires_at: datetime | None
    checked_at: float

    def still_good(self) -> bool:
        return remembered_key_good(self.checked_at, self.expires_at)


def remembered_key_good(checked_at: float, expires_at: datetime | None) -> bool:
    """Whether a key this process checked at ``checked_at`` may be taken without asking the database again: not
    too long ago, not expired since, and no revocation stamped since (see api_key_authenticate)."""
    if time.time() - checked_at > CHECKED_FOR_S:
        return False
    if expires_at is not None and expires_at <= timezone.now():
        return False
    try:
        revoked_at = redis_client().get(REVOKED_AT_KEY)
    except RedisError:
        return False  # unsure: ask the database
    return revoked_at is None or float(revoked_at) < checked_at


_checked: dict[str, _CheckedKey] = {}
