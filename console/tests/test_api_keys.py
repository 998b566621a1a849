"""API keys: stored as hashes, several per user, named, expiring, revocable, through the API and by hash only."""

from __future__ import annotations

import hashlib
import time
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from console.accounts import REVOKED_AT_KEY, api_key_authenticate, api_key_create
from console.models import ApiKey
from console.redis import redis_client

pytestmark = pytest.mark.django_db


def client_with(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def test_a_key_is_stored_only_as_its_hash_and_a_short_prefix(user):
    api_key, key = api_key_create(owner=user, name="laptop")
    row = ApiKey.objects.values().get(pk=api_key.pk)
    assert key not in str(row) and key.startswith(f"eph_{row['prefix']}_")
    assert row["key_sha256"] == hashlib.sha256(key.encode()).hexdigest()


def test_the_api_makes_lists_and_revokes_keys_and_shows_a_key_only_when_it_is_made(api):
    made = api.post("/api/v1/api-keys/", {"name": "ci"}, format="json")
    assert made.status_code == 201 and made.json()["key"].startswith("eph_")
    key, key_id = made.json()["key"], made.json()["id"]
    assert client_with(key).get("/api/v1/functions/").status_code == 200
    listed = api.get("/api/v1/api-keys/").json()["results"]
    assert {item["name"] for item in listed} == {"tests", "ci"} and all("key" not in item for item in listed)
    assert api.get(f"/api/v1/api-keys/{key_id}/").json()["last_used_at"] is not None
    assert api.delete(f"/api/v1/api-keys/{key_id}/").status_code == 204
    assert client_with(key).get("/api/v1/functions/").status_code == 401
    assert api.get(f"/api/v1/api-keys/{key_id}/").json()["active"] is False


def test_an_expired_key_no_longer_authenticates(user, monkeypatch):
    _, key = api_key_create(owner=user, name="short", expires_at=timezone.now() + timedelta(hours=1))
    assert client_with(key).get("/api/v1/functions/").status_code == 200
    later = timezone.now() + timedelta(hours=1, seconds=1)
    monkeypatch.setattr(timezone, "now", lambda: later)
    response = client_with(key).get("/api/v1/functions/")
    assert response.status_code == 401 and response.json()["type"] == "AuthenticationFailed"


def test_another_tenant_sees_and_revokes_none_of_my_keys(api, other_api):
    key_id = api.post("/api/v1/api-keys/", {"name": "mine"}, format="json").json()["id"]
    assert other_api.get(f"/api/v1/api-keys/{key_id}/").status_code == 404
    assert other_api.delete(f"/api/v1/api-keys/{key_id}/").status_code == 404
    assert [item["name"] for item in other_api.get("/api/v1/api-keys/").json()["results"]] == ["tests"]


def test_a_key_without_a_name_or_expiring_in_the_past_is_refused(api):
    assert api.post("/api/v1/api-keys/", {"name": ""}, format="json").status_code == 400
    past = (timezone.now() - timedelta(days=1)).isoformat()
    refused = api.post("/api/v1/api-keys/", {"name": "x", "expires_at": past}, format="json")
    assert refused.status_code == 400 and "future" in refused.json()["message"]


def test_a_bearer_header_works_too_and_a_malformed_one_is_refused_clearly(user):
    _, key = api_key_create(owner=user, name="bearer")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert client.get("/api/v1/functions/").status_code == 200
    client.credentials(HTTP_AUTHORIZATION=f"Token {key} extra")
    assert client.get("/api/v1/functions/").json()["type"] == "AuthenticationFailed"


def test_tokens_of_the_former_plaintext_table_become_hashed_keys_that_still_work(user, django_db_blocker):
    import importlib

    from django.db import connection

    migration = importlib.import_module("console.migrations.0002_api_keys_from_authtoken")
    legacy = "0123456789abcdef0123456789abcdef01234567"
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE authtoken_token (key varchar(40) PRIMARY KEY, user_id integer, created timestamp)")
        cursor.execute("INSERT INTO authtoken_token VALUES (%s, %s, %s)", [legacy, user.pk, timezone.now()])

    class Editor:
        pass

    editor = Editor()
    editor.connection = connection
    from django.apps import apps

    migration.tokens_to_api_keys(apps, editor)
    assert "authtoken_token" not in connection.introspection.table_names()
    assert ApiKey.objects.get(owner=user, prefix=legacy[:8]).name == "API token"
    assert client_with(legacy).get("/api/v1/functions/").status_code == 200


def test_a_key_checked_once_costs_no_database_query_on_the_next_call(user, django_assert_num_queries):
    _, key = api_key_create(owner=user, name="laptop")
    assert api_key_authenticate(key=key) == user
    with django_assert_num_queries(0):
        assert api_key_authenticate(key=key) == user


def test_a_key_revoked_by_another_web_process_stops_working_at_once(user):
    api_key, key = api_key_create(owner=user, name="laptop")
    assert api_key_authenticate(key=key) == user  # remembered here
    # What api_key_revoke does in another process: the row, then the stamp in Redis (this process's memory stays).
    ApiKey.objects.filter(pk=api_key.pk).update(revoked_at=timezone.now())
    redis_client().set(REVOKED_AT_KEY, time.time())
    assert api_key_authenticate(key=key) is None


def test_a_remembered_key_stops_working_when_its_owner_is_deactivated_or_deleted(user, other_user):
    _, key = api_key_create(owner=user, name="laptop")
    _, other_key = api_key_create(owner=other_user, name="laptop")
    assert api_key_authenticate(key=key) == user and api_key_authenticate(key=other_key) == other_user
    user.is_active = False
    user.save()
    assert api_key_authenticate(key=key) is None
    other_user.delete()
    assert api_key_authenticate(key=other_key) is None


def test_a_remembered_key_stops_working_when_it_expires(user, monkeypatch):
    _, key = api_key_create(owner=user, name="laptop", expires_at=timezone.now() + timedelta(minutes=1))
    assert api_key_authenticate(key=key) == user
    later = timezone.now() + timedelta(minutes=2)
    monkeypatch.setattr(timezone, "now", lambda: later)
    assert api_key_authenticate(key=key) is None
