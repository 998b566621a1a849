"""Every request to an HTTP trigger is metered per function URL and per API route, whatever answered it: requests
driven through the real serving path, metering flushed, the roll-ups read through the Monitor's selectors."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from functions_app.models import Function, HttpApi, Invocation
from functions_app.tests.test_function_urls import create_function, create_url, path_of
from functions_app.tests.test_http_apis import AUTHORIZER, create_api, route
from metrics_app.selectors import function_http_triggers, http_api_triggers
from metrics_app.services import metering_flush


def counted(traffic):
    return {item.label: (item.requests, item.status_4xx, item.status_5xx) for item in traffic}


def last_hour():
    now = timezone.now()
    return {"start": now - timedelta(hours=1), "end": now + timedelta(minutes=1)}


@pytest.mark.django_db
def test_requests_a_function_url_answers_at_the_edge_are_counted_against_it(api):
    create_function(api)
    url = create_url(api, auth_type="TOKEN", cors={"allow_origins": ["https://app.example.com"]})
    base, web = path_of(url["url"]), Client()
    preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "GET"}
    assert web.options(base, headers=preflight).status_code == 204
    assert web.get(base).status_code == 403  # no key
    key = {"Authorization": api._credentials["HTTP_AUTHORIZATION"]}
    assert web.get(base + "a/%2e%2e/b", headers=key).status_code == 400
    metering_flush()
    [traffic] = function_http_triggers(function=Function.objects.get(name="web"), **last_hour())
    assert (traffic.label, traffic.trigger_id, traffic.route) == ("Function URL", url["url_id"], "")
    assert (traffic.requests, traffic.status_4xx, traffic.status_5xx) == (3, 2, 0)
    assert traffic.p50_ms is not None and traffic.response_bytes_sum > 0


@pytest.mark.django_db
def test_api_requests_count_against_their_route_or_as_unmatched_refusals_included(api):
    create_function(api, "echo")
    create_function(api, "gate", AUTHORIZER)
    create_function(api, "gone")
    created = create_api(
        api,
        {
            "authorizers": [{"name": "gate", "type": "REQUEST", "function": "gate"}],
            "routes": [route("GET /private", authorizer="gate"), route("GET /gone", "gone")],
        },
    )
    assert api.delete("/api/v1/functions/gone/").status_code == 204
    base = f"/http/{created['api_id']}"
    assert Client().get(f"{base}/private").status_code == 401  # no identity: the authorizer is not asked
    assert Client().get(f"{base}/nowhere").status_code == 404
    assert Client().get(f"{base}/a/%2e%2e/b").status_code == 400
    assert Client().get(f"{base}/gone").status_code == 500  # a route to a deleted function
    metering_flush()
    by_route = http_api_triggers(api=HttpApi.objects.get(), **last_hour())
    assert counted(by_route) == {
        "shop · $unmatched": (2, 2, 0),
        "shop · GET /private": (1, 1, 0),
        "shop · GET /gone": (1, 0, 1),
    }
    echo = function_http_triggers(function=Function.objects.get(name="echo"), **last_hour())
    assert counted(echo) == {"shop · GET /private": (1, 1, 0)}  # the authorizer's refusal counts against it
    assert echo[0].api_name == "shop"


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_answers_of_a_real_invocation_are_counted_with_their_latency(api, module_worker):
    create_function(api)
    url = create_url(api)
    created = create_api(api, {"routes": [route("GET /items/{id}", "web")]})
    assert Client().get(path_of(url["url"]) + "hello").status_code == 201
    assert Client().get(f"/http/{created['api_id']}/items/7").status_code == 201
    function = Function.objects.get(name="web")
    # Beat flushes metering too, about once a second: wait for both requests to land, whoever applies them.
    deadline = time.monotonic() + 10
    metering_flush()
    while sum(t.requests for t in function_http_triggers(function=function, **last_hour())) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
        metering_flush()
    traffic = function_http_triggers(function=function, **last_hour())
    assert counted(traffic) == {"Function URL": (1, 0, 0), "shop · GET /items/{id}": (1, 0, 0)}
    # The latency is the whole answer's, from arrival to answer: never less than the function's own run.
    runs = Invocation.objects.filter(function=function).values_list("duration_ms", flat=True)
    assert min(t.latency_ms_max for t in traffic) >= min(runs) > 0
    assert all(t.p99_ms is not None for t in traffic)
