"""A console user's API token: the DRF ``authtoken`` key that ``Authorization: Token …`` carries. One token per
user, shown on the account page; resetting it revokes the old key at once (the row's key is its primary key)."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from rest_framework.authtoken.models import Token


def api_token_get(*, user: AbstractBaseUser) -> str | None:
    token = Token.objects.filter(user=user).first()
    return token.key if token else None


@transaction.atomic
def api_token_reset(*, user: AbstractBaseUser) -> str:
    """A new key for the user (their first, or one replacing the old, which stops working)."""
    Token.objects.filter(user=user).delete()
    return Token.objects.create(user=user).key
