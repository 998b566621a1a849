from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from metrics_app.services import invocation_record, metering_flush
from metrics_app.tests.factories import finish

pytestmark = pytest.mark.django_db

PERIOD = "start=2026-11-01T00:00:00Z&end=2026-12-01T00:00:00Z"


@pytest.fixture
def used(make_function, other_user):
    hello = make_function()
    theirs = make_function(owner=other_user, name="theirs")
    day = datetime(2026, 11, 5, 9, tzinfo=UTC)
    finish(hello, at=day)
    finish(hello, at=day, is_cold=True, init_ms=50.0)
    finish(theirs, at=day)
    return hello


def error_type(response):
    return response.json()["type"]


def test_the_usage_report_is_json_with_the_callers_functions_only(api, used):
    response = api.get(f"/api/v1/reports/usage/?{PERIOD}&group_by=function")
    assert response.status_code == 200, response.content
    body = response.json()
    assert [(row["function"], row["invocations"]) for row in body["rows"]] == [("hello", 2)]
    assert body["totals"]["cold_starts"] == 1 and body["scope"] == "own"


def test_another_owner_sees_only_their_own_usage(other_api, used):
    body = other_api.get(f"/api/v1/reports/usage/?{PERIOD}&group_by=version").json()
    assert [(row["function"], row["version"]) for row in body["rows"]] == [("theirs", "$LATEST")]


def test_the_usage_report_comes_as_csv_on_request(api, used):
    response = api.get(f"/api/v1/reports/usage/?{PERIOD}&format=csv")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    lines = list(csv.reader(io.StringIO(response.content.decode())))
    assert lines[0][:2] == ["owner", "function"] and lines[1][:3] == ["alice", "hello", "2"]


def test_grouping_by_owner_shows_a_non_staff_caller_only_themselves(api, used):
    body = api.get(f"/api/v1/reports/usage/?{PERIOD}&group_by=owner").json()
    assert [row["owner"] for row in body["rows"]] == ["alice"]


def test_staff_grouping_by_owner_see_every_owner(api, user, used):
    user.is_staff = True
    user.save()
    body = api.get(f"/api/v1/reports/usage/?{PERIOD}&group_by=owner").json()
    assert sorted(row["owner"] for row in body["rows"]) == ["alice", "mallory"] and body["scope"] == "all"


def test_asking_for_every_owner_without_being_staff_is_403(api, used):
    response = api.get(f"/api/v1/reports/usage/?{PERIOD}&scope=all")
    assert response.status_code == 403 and error_type(response) == "AccessDenied"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("group_by=colour", "InvalidParameterValue"),
        ("start=yesterday", "InvalidParameterValue"),
        ("start=2026-12-01T00:00:00Z&end=2026-11-01T00:00:00Z", "InvalidReportPeriod"),
        ("format=xml", "InvalidParameterValue"),
        ("format=csv&group_by=colour", "InvalidParameterValue"),
    ],
)
def test_bad_report_parameters_are_400_with_a_stable_type(api, query, expected):
    response = api.get(f"/api/v1/reports/usage/?{query}")
    assert response.status_code == 400, response.content
    assert response["Content-Type"].startswith("application/json") and error_type(response) == expected


def test_the_default_period_is_this_month_with_a_forecast(api, make_function):
    finish(make_function(), at=timezone.now() - timedelta(minutes=1))
    body = api.get("/api/v1/reports/usage/").json()
    assert body["totals"]["invocations"] == 1 and body["forecast"]["method"].startswith("linear")


def test_reports_need_authentication(client):
    response = client.get("/api/v1/reports/usage/")
    assert response.status_code == 401 and error_type(response) == "NotAuthenticated"


def test_rightsizing_answers_for_the_callers_function(api, make_function):
    function = make_function(memory_mb=1024)
    for minutes in range(5):
        finish(function, at=timezone.now() - timedelta(minutes=minutes), cpu_ms=5.0)
    response = api.get("/api/v1/functions/hello/rightsizing/")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["function"] == "hello" and body["configured_memory_mb"] == 1024
    assert body["recommended_mb"] == 128 and body["expected_monthly_saving_usd"] > 0
    assert {row["memory_mb"] for row in body["rows"]} >= {128, 1024, 1769, 10240} and "1769" in body["model"]


def test_rightsizing_of_another_owners_function_is_404(other_api, used):
    response = other_api.get("/api/v1/functions/hello/rightsizing/")
    assert response.status_code == 404 and error_type(response) == "ResourceNotFound"


def test_rightsizing_of_a_missing_function_is_404(api):
    assert api.get("/api/v1/functions/nope/rightsizing/").status_code == 404


def test_the_openapi_schema_documents_the_metrics_endpoints(api):
    response = api.get("/api/v1/schema/?format=json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert "/api/v1/reports/usage/" in paths and "/api/v1/functions/{name}/rightsizing/" in paths
    assert paths["/api/v1/reports/usage/"]["get"]["operationId"] == "reports_usage"


# ---- /metrics ------------------------------------------------------------------------------------------------

LINE = re.compile(
    r'^(# (HELP|TYPE) [a-z_]+ .+|[a-z_]+(\{[a-z_]+="([^"\\]|\\.)*"(,[a-z_]+="([^"\\]|\\.)*")*\})? -?[0-9.e+-]+(Inf)?)$'
)


def test_metrics_without_credentials_is_401(client):
    response = client.get("/metrics")
    assert response.status_code == 401 and response["WWW-Authenticate"].startswith("Bearer")


def test_metrics_with_a_wrong_token_is_403(client, settings):
    settings.METRICS_TOKEN = "right-token"
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403


def test_metrics_with_a_token_when_none_is_configured_is_403(client, settings):
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 403


def test_metrics_for_a_non_staff_session_is_403(client, user):
    client.force_login(user)
    assert client.get("/metrics").status_code == 403


def test_metrics_exposes_counters_histograms_and_gauges_in_the_text_format(client, settings, used, redis_server):
    settings.METRICS_TOKEN = "right-token"
    invocation_record(event="throttled", function=used)
    metering_flush()
    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer right-token")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain; version=0.0.4")
    text = response.content.decode()
    bad = [line for line in text.splitlines() if not LINE.match(line)]
    assert bad == []
    assert 'ephemera_invocations_total{function="hello",owner="alice",version="$LATEST"} 2' in text
    assert 'ephemera_cold_starts_total{function="hello",owner="alice",version="$LATEST"} 1' in text
    assert 'ephemera_throttles_total{function="hello",owner="alice",version="-"} 1' in text
    assert 'ephemera_invocations_total{function="theirs",owner="mallory",version="$LATEST"} 1' in text
    assert (
        'ephemera_invocation_duration_seconds_bucket{function="hello",owner="alice",version="$LATEST",le="+Inf"} 2'
        in text
    )
    assert (
        'ephemera_invocation_duration_seconds_bucket{function="hello",owner="alice",version="$LATEST",le="0.1"} 0'
        in text
    )
    assert (
        'ephemera_invocation_duration_seconds_bucket{function="hello",owner="alice",version="$LATEST",le="0.316228"} 2'
        in text
    )
    assert 'ephemera_init_duration_seconds_count{function="hello",owner="alice",version="$LATEST"} 1' in text
    assert 'ephemera_cost_usd_total{function="hello",owner="alice",version="$LATEST",part="init"}' in text
    assert "ephemera_queued_invocations 0" in text and 'ephemera_queue_messages{queue="celery"}' in text
    assert 'ephemera_queue_messages{queue="sync"}' in text and 'ephemera_queue_messages{queue="control"}' in text


def test_metrics_for_a_staff_session_is_200(client, user, redis_server):
    user.is_staff = True
    user.save()
    client.force_login(user)
    assert client.get("/metrics").status_code == 200


def test_metrics_counts_warm_environments_from_executor_heartbeats(client, user, redis_server):
    import json

    from console.redis import redis_client

    redis_client().set("ephemera:hosts:h1:1", json.dumps({"host": "h1:1", "warm_environments": 3}), ex=30)
    user.is_staff = True
    user.save()
    client.force_login(user)
    assert 'ephemera_warm_environments{host="h1:1"} 3' in client.get("/metrics").content.decode()
    redis_client().delete("ephemera:hosts:h1:1")
