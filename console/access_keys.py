"""Access keys: the AWS-style credentials of Lambda's API (docs/lambda-api.md). A key is an id (``EPHA`` + 16
characters of base32, like AWS's ``AKIA…``) and a 40-character secret, shown once; the secret is stored encrypted,
because a SigV4 signature is checked by computing it again with the secret. A user holds several keys, each with a
name, a last-used time, and, once rotated, an expiry."""

from __future__ import annotations

import base64
import copy
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from console.accounts import (
    CHECKED_MAX,
    LAST_USED_RESOLUTION,
    NAME_MAX,
    api_keys_forget_checked,
    remembered_key_good,
)
from console.exceptions import ResourceNotFound, ServiceError
from console.models import AccessKey

ACCESS_KEY_PREFIX = "EPHA"
ACCESS_KEYS_PER_USER_MAX = 10
ROTATION_GRACE_MAX_S = 7 * 24 * 3600
_SECRET_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/+"  # noqa: S105 - the characters of a secret, not one


def account_id_of(user: User) -> str:
    """The user's 12-digit account id in ARNs (the same in every event and in Lambda's API)."""
    return f"{user.pk:012d}"


def _new_id() -> str:
    return ACCESS_KEY_PREFIX + base64.b32encode(secrets.token_bytes(10)).decode()


def _new_secret() -> str:
    return "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(40))


def access_key_create(*, owner: User, name: str) -> tuple[AccessKey, str]:
    """A new key for ``owner``: the row, and the secret (shown this once; stored encrypted)."""
    from functions_app.secrets import secret_encrypt  # the platform's Fernet keys

    name = name.strip() if isinstance(name, str) else name
    if not isinstance(name, str) or not name or len(name) > NAME_MAX:
        raise ServiceError(f"name: Give the key a name of 1 to {NAME_MAX} characters.", details={"name": ["Required."]})
    if access_key_list(owner=owner, active_only=True).count() >= ACCESS_KEYS_PER_USER_MAX:
        raise ServiceError(
            f"You hold {ACCESS_KEYS_PER_USER_MAX} active access keys; revoke one first.", type="LimitExceeded"
        )
    secret = _new_secret()
    key = AccessKey.objects.create(
        owner=owner, name=name, access_key_id=_new_id(), secret_ciphertext=secret_encrypt(secret)
    )
    return key, secret


def access_key_list(*, owner: User, active_only: bool = False) -> QuerySet[AccessKey]:
    keys = AccessKey.objects.filter(owner=owner)
    if active_only:
        keys = keys.filter(revoked_at__isnull=True).exclude(expires_at__lte=timezone.now())
    return keys


def access_key_get(*, owner: User, access_key_id: str) -> AccessKey:
    key = AccessKey.objects.filter(owner=owner, access_key_id=access_key_id).first()
    if key is None:
        raise ResourceNotFound(f"Access key not found: {access_key_id}")
    return key


def access_key_revoke(*, access_key: AccessKey) -> AccessKey:
    """The key stops working at once, on every web process; its row stays (when it was last used)."""
    if access_key.revoked_at is None:
        access_key.revoked_at = timezone.now()
        AccessKey.objects.filter(pk=access_key.pk, revoked_at__isnull=True).update(revoked_at=access_key.revoked_at)
        access_keys_forget_checked()
    return access_key


def access_key_rotate(*, access_key: AccessKey, grace_s: int = 0) -> tuple[AccessKey, str]:
    """A new key of the same name; the old one works ``grace_s`` seconds more (0: it is revoked now), time to move
    the clients over. Returns the new key and its secret."""
    if isinstance(grace_s, bool) or not isinstance(grace_s, int) or not 0 <= grace_s <= ROTATION_GRACE_MAX_S:
        raise ServiceError(
            f"grace_s: Give a whole number of seconds from 0 to {ROTATION_GRACE_MAX_S}.",
            details={"grace_s": ["Out of range."]},
        )
    if not access_key.is_active:
        raise ServiceError("This key is no longer active: make a new one instead.", type="InvalidState")
    with transaction.atomic():
        new_key, secret = access_key_create(owner=access_key.owner, name=access_key.name)
        if grace_s == 0:
            access_key_revoke(access_key=access_key)
        else:
            ends = timezone.now() + timedelta(seconds=grace_s)
            if access_key.expires_at is None or access_key.expires_at > ends:
                access_key.expires_at = ends
                AccessKey.objects.filter(pk=access_key.pk).update(expires_at=ends)
                access_keys_forget_checked()
    return new_key, secret


def access_keys_forget_checked() -> None:
    """Every web process looks its remembered keys up again (the stamp API keys use, console/accounts.py)."""
    _checked.clear()
    api_keys_forget_checked()


def access_key_secret(*, access_key_id: str) -> tuple[User, str] | None:
    """The owner and the secret of an active key of an active user, or None: what a SigV4 check needs.

    Remembered in this process for CHECKED_FOR_S (up to CHECKED_MAX keys), as API keys are (console/accounts.py):
    each revocation stamps Redis, and a key remembered before the latest stamp is looked up again, so a revoked key
    stops working at once.
    """
    from functions_app.secrets import secret_decrypt

    checked = _checked.get(access_key_id)
    if checked is not None and checked.still_good():
        return copy.copy(checked.owner), checked.secret
    key = AccessKey.objects.select_related("owner").filter(access_key_id=access_key_id).first()
    if key is None or not key.is_active or not key.owner.is_active:
        return None
    now = timezone.now()
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
        AccessKey.objects.filter(pk=key.pk).update(last_used_at=now)
    secret = secret_decrypt(key.secret_ciphertext)
    if len(_checked) >= CHECKED_MAX:
        _checked.clear()
    _checked[access_key_id] = _CheckedAccessKey(copy.copy(key.owner), secret, key.expires_at, time.time())
    return key.owner, secret


@dataclass(frozen=True)
class _CheckedAccessKey:
    owner: User
    secret: str
    expires_at: datetime | None
    checked_at: float

    def still_good(self) -> bool:
        return remembered_key_good(self.checked_at, self.expires_at)


_checked: dict[str, _CheckedAccessKey] = {}
