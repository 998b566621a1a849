from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.django_db


def test_health_reports_a_missing_executor_and_a_silent_sweeper(client, redis_server):
    response = client.get("/healthz")
    assert response.status_code == 503 and response.json()["status"] == "degraded"
    assert response.json()["checks"] == {"database": True, "redis": True, "executors": False, "sweeper": False}


@pytest.mark.django_db(transaction=True)
def test_health_is_ok_with_a_worker_and_the_sweeper_running_and_shows_each_workers_sandbox_tier_to_staff(
    client, worker, make_user
):
    deadline = time.monotonic() + 20
    while (response := client.get("/healthz")).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert response.json()["checks"] == {"database": True, "redis": True, "executors": True, "sweeper": True}
    assert "executors" not in response.json()  # anonymous: liveness only
    staff = make_user("operator")
    staff.is_staff = True
    staff.save()
    client.force_login(staff)
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


def test_each_services_health_check_looks_at_its_own_part(redis_server):
    from django.core.management import CommandError, call_command

    from console.redis import redis_client
    from functions_app.selectors import SWEPT_AT_KEY

    with pytest.raises(CommandError, match="has reported its health"):
        call_command("healthcheck", "worker")
    with pytest.raises(CommandError, match="the sweeper has not run for ever"):
        call_command("healthcheck", "control")
    redis_client().set(SWEPT_AT_KEY, time.time())
    call_command("healthcheck", "control")
    with pytest.raises(CommandError, match="does not answer on port 1"):
        call_command("healthcheck", "web", "--port", "1")
