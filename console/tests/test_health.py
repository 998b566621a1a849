from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def test_health_reports_the_database_and_redis_up(client, redis_server):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert response.json()["checks"] == {"database": True, "redis": True}


@pytest.mark.django_db(transaction=True)
def test_health_shows_each_workers_sandbox_tier(client, worker):
    executors = client.get("/healthz").json()["executors"]
    assert executors and executors[0]["tier"] == worker["tier"]
    assert executors[0]["tier"] == "namespaces" and executors[0]["secure"] is True


def test_health_reports_degraded_when_redis_is_unreachable(client, settings, tmp_path):
    from console.redis import redis_client

    settings.REDIS_URL = f"unix://{tmp_path / 'nobody-listens.sock'}"
    redis_client.cache_clear()
    try:
        response = client.get("/healthz")
    finally:
        redis_client.cache_clear()
    assert response.status_code == 503
    assert response.json()["checks"]["redis"] is False


@pytest.mark.django_db
def test_an_outage_of_the_database_or_redis_is_a_503_with_retry_after_on_the_api_and_the_pages(user, monkeypatch):
    import redis
    from django.db import OperationalError
    from django.test import Client

    from functions_app import selectors

    client = Client(raise_request_exception=False)  # as a real server: the exception becomes a response
    client.force_login(user)

    def database_down(**kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    def redis_down(**kwargs):
        raise redis.ConnectionError("Connection refused")

    monkeypatch.setattr(selectors, "function_list", database_down)
    api = client.get("/api/v1/functions/")
    assert api.status_code == 503 and api["Retry-After"] == "5"
    assert api.json()["type"] == "ServiceUnavailable"
    page = client.get("/functions/")
    assert page.status_code == 503 and page["Retry-After"] == "5" and b"Unavailable" in page.content
    monkeypatch.setattr(selectors, "function_list", redis_down)
    assert client.get("/api/v1/functions/").status_code == 503
