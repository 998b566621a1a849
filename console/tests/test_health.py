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
