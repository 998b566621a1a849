"""The console's cost and usage report page, its CSV / JSON downloads, and the Monitor tab's right-sizing."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from functions_app import http_apis
from metrics_app.charts import report_figure
from metrics_app.services import metering_flush
from metrics_app.tests.factories import finish, http_request

pytestmark = pytest.mark.django_db

OCTOBER = datetime(2026, 10, 5, 9, tzinfo=UTC)


@pytest.fixture
def signed_in(client, user):
    client.force_login(user)
    return client


@pytest.fixture
def october(make_function, other_user):
    """alice: 'hello' (4 calls of 1 s at 1 GB, one of them version 1), 'cold' (one cold start); mallory: 'theirs'."""
    hello = make_function(memory_mb=1024)
    cold = make_function(name="cold", memory_mb=1024)
    theirs = make_function(owner=other_user, name="theirs")
    for _ in range(3):
        finish(hello, at=OCTOBER, duration_ms=1000.0)
    finish(hello, at=OCTOBER, duration_ms=1000.0, executed_version="1")
    finish(cold, at=OCTOBER, is_cold=True, init_ms=500.0, duration_ms=500.0)
    finish(theirs, at=OCTOBER)
    return hello


def test_the_report_page_shows_the_owners_functions_with_their_totals(signed_in, october):
    response = signed_in.get("/reports/?month=2026-10")
    assert response.status_code == 200
    report = response.context["report"]
    assert [(row["function"], row["invocations"]) for row in report.rows] == [("hello", 4), ("cold", 1)]
    assert Decimal(report.rows[0]["total_usd"]) == Decimal("0.000067466800")
    page = response.content.decode()
    assert '<td class="num" id="total-invocations">5</td>' in page
    assert 'href="/functions/hello/monitor/"' in page and "theirs" not in page
    assert 'id="figure-report"' in page and "/static/vendor/plotly.min.js" in page and "cdn" not in page.lower()
    assert "does not include today" in page  # a past month has no forecast


def test_the_report_chart_stacks_each_groups_cost_by_part(signed_in, october):
    report = signed_in.get("/reports/?month=2026-10").context["report"]
    figure = report_figure(report)
    assert [trace["name"] for trace in figure["data"]] == ["Requests", "Run (compute)", "Cold-start init"]
    assert figure["data"][0]["x"] == ["hello", "cold"] and figure["layout"]["barmode"] == "stack"
    total = sum(trace["y"][0] for trace in figure["data"])
    assert total == pytest.approx(float(report.rows[0]["total_usd"]))


def test_the_report_page_defaults_to_this_month_with_a_linear_forecast(signed_in, october):
    response = signed_in.get("/reports/")
    assert response.status_code == 200
    assert response.context["report"].start.strftime("%Y-%m") == timezone.now().strftime("%Y-%m")
    page = response.content.decode()
    assert 'id="forecast"' in page and "Linear on the month so far" in page


def test_another_tenant_sees_none_of_the_owners_usage(client, other_user, october):
    client.force_login(other_user)
    response = client.get("/reports/?month=2026-10")
    assert [row["function"] for row in response.context["report"].rows] == ["theirs"]
    assert "hello" not in response.content.decode()


def test_grouping_by_owner_shows_a_tenant_only_themselves_and_staff_everyone(signed_in, user, october):
    own = signed_in.get("/reports/?month=2026-10&group_by=owner").context["report"]
    assert [row["owner"] for row in own.rows] == ["alice"]
    user.is_staff = True
    user.save()
    everyone = signed_in.get("/reports/?month=2026-10&group_by=owner").context["report"]
    assert {row["owner"] for row in everyone.rows} == {"alice", "mallory"}


def test_grouping_by_version_splits_latest_from_published_versions(signed_in, october):
    report = signed_in.get("/reports/?month=2026-10&group_by=version").context["report"]
    assert {(row["function"], row["version"]) for row in report.rows} == {
        ("hello", "$LATEST"),
        ("hello", "1"),
        ("cold", "$LATEST"),
    }


def test_a_custom_period_includes_its_end_day(signed_in, october):
    response = signed_in.get("/reports/?start=2026-10-05&end=2026-10-05")
    assert response.status_code == 200
    assert response.context["report"].totals["invocations"] == 5
    assert signed_in.get("/reports/?start=2026-10-06&end=2026-10-31").context["report"].totals["invocations"] == 0


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("month=2026-13", "month must look like 2026-11"),
        ("start=2026-10-10&end=2026-10-01", "end must be after start"),
        ("start=2026-10-10", "needs both a start and an end"),
        ("start=yesterday&end=2026-10-01", "start must be a date"),
        ("group_by=colour", "group_by must be one of function, version, owner"),
    ],
)
def test_bad_input_is_a_message_on_the_page(signed_in, query, message):
    response = signed_in.get(f"/reports/?{query}")
    assert response.status_code == 400
    assert message in response.content.decode() and 'id="report-error"' in response.content.decode()


def test_the_report_page_needs_a_sign_in(client):
    response = client.get("/reports/?month=2026-10")
    assert response.status_code == 302 and response.url.startswith("/login/?next=/reports/")
    assert client.get("/reports/usage.csv").url.startswith("/login/")


def test_the_csv_download_has_a_row_per_function_and_a_total(signed_in, october):
    response = signed_in.get("/reports/usage.csv?month=2026-10")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"] == 'attachment; filename="usage-20261001-20261101.csv"'
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0][:3] == ["owner", "function", "invocations"]
    assert [row[:2] for row in rows[1:]] == [["alice", "hello"], ["alice", "cold"], ["TOTAL", ""]]
    assert rows[-1][2] == "5"


def test_the_json_download_has_the_rows_and_totals(signed_in, october):
    response = signed_in.get("/reports/usage.json?month=2026-10&group_by=version")
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    body = json.loads(response.content)
    assert body["group_by"] == "version" and len(body["rows"]) == 3
    assert body["totals"]["invocations"] == 5
    assert Decimal(body["totals"]["total_usd"]) == sum(Decimal(row["total_usd"]) for row in body["rows"])


def test_a_download_with_bad_input_is_a_plain_400(signed_in):
    response = signed_in.get("/reports/usage.csv?month=2026-13")
    assert response.status_code == 400 and "month must look like" in response.content.decode()


def test_the_page_links_downloads_for_the_same_query(signed_in, october):
    page = signed_in.get("/reports/?month=2026-10&group_by=version").content.decode()
    assert 'href="/reports/usage.csv?month=2026-10&amp;group_by=version"' in page
    assert 'href="/reports/usage.json?month=2026-10&amp;group_by=version"' in page


# ---- right-sizing on the Monitor tab ----------------------------------------------------------------------------


def test_the_monitor_tab_right_sizes_a_function_with_traffic(signed_in, make_function):
    function = make_function(memory_mb=1024)
    now = timezone.now()
    for minutes in range(5):
        finish(function, at=now - timedelta(minutes=minutes), duration_ms=300.0, cpu_ms=20.0, peak_memory_mb=50.0)
    response = signed_in.get("/functions/hello/monitor/")
    assert response.status_code == 200
    page = response.content.decode()
    assert response.context["rightsizing"].recommended_mb == 128
    assert 'id="rightsizing-table"' in page and 'id="figure-rightsizing"' in page
    assert "Recommended: 128 MB" in page and "expected saving" in page
    assert "too little traffic" in page  # 5 invocations are a rough guide only
    assert "Not enough traffic" not in page


def test_the_monitor_tab_says_plainly_when_there_is_no_traffic_to_right_size(signed_in, make_function):
    make_function()
    page = signed_in.get("/functions/hello/monitor/").content.decode()
    assert "Not enough traffic to right-size" in page and 'id="rightsizing-table"' not in page


def test_another_tenants_function_page_is_404(client, other_user, october):
    client.force_login(other_user)
    assert client.get("/functions/hello/monitor/").status_code == 404


# ---- HTTP triggers on the Monitor tab and the HTTP API page -----------------------------------------------------


@pytest.fixture
def shop(make_function, user):
    """'hello' behind the API 'shop' (GET /items/{id}: 3 requests, one 404 and one 502) and its own URL (1
    request); 2 requests to 'shop' matched no route."""
    hello = make_function()
    api = http_apis.http_api_create(
        owner=user, name="shop", definition={"routes": [{"route_key": "GET /items/{id}", "function": "hello"}]}
    )
    for status in (200, 404, 502):
        http_request(hello, trigger_id=api.api_id, status=status, latency_ms=20.0, metered=False)
    http_request(hello, trigger_type="function-url", trigger_id="f" * 32, route="", latency_ms=5.0, metered=False)
    for _ in range(2):
        http_request(None, owner_id=user.pk, trigger_id=api.api_id, route="$unmatched", status=404, metered=False)
    metering_flush()
    return api


def test_the_monitor_tab_tables_and_charts_requests_per_http_trigger(signed_in, shop):
    response = signed_in.get("/functions/hello/monitor/")
    page = response.content.decode()
    assert 'id="http-triggers-table"' in page and 'id="figure-http-triggers"' in page
    rows = {row.label: row for row in response.context["http_triggers"]}
    assert set(rows) == {"shop · GET /items/{id}", "Function URL · deleted"}  # the URL row has no FunctionUrl
    route = rows["shop · GET /items/{id}"]
    assert (route.requests, route.status_4xx, route.status_5xx) == (3, 1, 1) and route.p50_ms == 20.0
    assert '<a href="/http-apis/shop/">shop · GET /items/{id}</a>' in page
    figure = json.loads(response.context["http_figure"])
    assert [trace["name"] for trace in figure["data"]] == ["shop · GET /items/{id}", "Function URL · deleted"]
    assert sum(figure["data"][0]["y"]) == 3


def test_the_monitor_tab_has_no_http_section_without_http_requests(signed_in, make_function):
    function = make_function()
    finish(function, at=timezone.now())
    page = signed_in.get("/functions/hello/monitor/").content.decode()
    assert 'id="http-triggers"' not in page and "figure-http-triggers" not in page


def test_the_http_api_page_shows_the_last_days_requests_per_route(signed_in, shop):
    response = signed_in.get("/http-apis/shop/")
    page = response.content.decode()
    assert [(t.route, t.requests, t.status_4xx, t.status_5xx) for t in response.context["traffic"]] == [
        ("GET /items/{id}", 3, 1, 1),
        ("$unmatched", 2, 2, 0),
    ]
    assert 'id="http-triggers-table"' in page and "<code>$unmatched</code>" in page


def test_another_tenant_sees_neither_the_http_api_page_nor_its_traffic(client, other_user, shop):
    client.force_login(other_user)
    assert client.get("/http-apis/shop/").status_code == 404
    assert client.get("/functions/hello/monitor/").status_code == 404
