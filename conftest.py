"""Shared fixtures: a real Redis (embedded or REDIS_URL), users, API clients and `make_function`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """The embedded redis-server on a socket under var/test, or the server REDIS_URL names (as on CI)."""
    from django.conf import settings

    from console.embedded import redis_start, redis_wait
    from console.processes import stop_all

    if not settings.EMBEDDED_REDIS:
        redis_wait(settings.REDIS_URL, 10)
        yield settings.REDIS_URL
        return
    process = redis_start(settings.VAR_DIR, settings.REDIS_SOCKET)
    yield settings.REDIS_URL
    stop_all([process])


@pytest.fixture(autouse=True)
def fast_password_hashing(settings: Any) -> None:
    # PBKDF2's deliberate slowness costs ~0.3 s per test user and protects nothing here.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def isolated_code_storage(settings: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    from functions_app.code_storage import code_store

    settings.CODE_STORAGE_DIR = tmp_path_factory.mktemp("code")
    code_store.cache_clear()
    yield
    code_store.cache_clear()


@pytest.fixture
def make_user(db: None) -> Any:
    from django.contrib.auth import get_user_model

    counter = iter(range(1, 10_000))

    def make(username: str | None = None) -> Any:
        return get_user_model().objects.create_user(username or f"user{next(counter)}", password="pw-for-tests-only")

    return make


@pytest.fixture
def user(make_user: Any) -> Any:
    return make_user("alice")


@pytest.fixture
def other_user(make_user: Any) -> Any:
    return make_user("mallory")


def _token_client(account: Any) -> Any:
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    client = APIClient()
    token, _ = Token.objects.get_or_create(user=account)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def api(user: Any) -> Any:
    return _token_client(user)


@pytest.fixture
def other_api(other_user: Any) -> Any:
    return _token_client(other_user)


HELLO_SOURCE = "def handler(event, context):\n    return {'hello': event}\n"


@pytest.fixture
def make_function(user: Any) -> Any:
    from functions_app import services

    def make(**overrides: Any) -> Any:
        fields: dict[str, Any] = {
            "owner": user,
            "name": "hello",
            "handler": "app.handler",
            "code": services.CodeUpload(files={"app.py": HELLO_SOURCE}),
        }
        fields.update(overrides)
        return services.function_create(**fields)

    return make
