"""Environment variables (and a bucket notification's secret key) at rest: a MultiFernet token of their JSON,
keys from settings (never the database).

Rotation: put a new key first in FERNET_KEYS; old tokens still decrypt, and ``env_reencrypt`` re-encrypts.
"""

from __future__ import annotations

import json
from functools import lru_cache

from cryptography.fernet import Fernet, MultiFernet
from django.conf import settings

MASK = "********"


@lru_cache(maxsize=1)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(key.encode()) for key in keys])


def _current() -> MultiFernet:
    return _fernet(tuple(settings.FERNET_KEYS))


def env_encrypt(variables: dict[str, str]) -> str:
    if not variables:
        return ""
    return _current().encrypt(json.dumps(variables, sort_keys=True).encode()).decode()


def env_decrypt(ciphertext: str) -> dict[str, str]:
    if not ciphertext:
        return {}
    return json.loads(_current().decrypt(ciphertext.encode()))


def env_reencrypt(ciphertext: str) -> str:
    return _current().rotate(ciphertext.encode()).decode() if ciphertext else ""


def secret_encrypt(value: str) -> str:
    """One secret (a store's key) at rest."""
    return _current().encrypt(value.encode()).decode() if value else ""


def secret_decrypt(ciphertext: str) -> str:
    return _current().decrypt(ciphertext.encode()).decode() if ciphertext else ""


def env_masked(keys: list[str]) -> dict[str, str]:
    return {key: MASK for key in keys}
