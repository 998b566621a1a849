"""The browser console's pages, through Django's test client: tenancy, sign-in, forms and their errors."""

from __future__ import annotations

import io
import zipfile
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from functions_app import services
from functions_app.code_storage import code_store
from functions_app.models import DeadLetter, Function, Invocation, TestEvent, Version
from functions_app.secrets import env_decrypt
from metrics_app.services import invocation_finished, metering_flush

pytestmark = pytest.mark.django_db

FUNCTION_PAGES = [
    "/functions/hello/",
    "/functions/hello/test/",
    "/functions/hello/monitor/",
    "/functions/hello/monitor/?range=7d",
    "/functions/hello/versions/",
    "/functions/hello/invocations/",
    "/functions/hello/configuration/",
]


@pytest.fixture
def signed_in(client, user):
    client.force_login(user)
    return client


def make_invocation(function, **fields):
    values = {"owner": function.owner, "function": function, "payload": "{}", "memory_mb": 128, **fields}
    return Invocation.objects.create(**values)


def make_dead_letter(function):
    invocation = make_invocation(function, status="failed", invocation_type="async", error_type="Boom")
    return DeadLetter.objects.create(
        owner=function.owner,
        function=function,
        invocation=invocation,
        condition="RetriesExhausted",
        request_payload='{"n": 1}',
        error_type="Boom",
        attempts=3,
    )


def create_form(**overrides):
    data = {
        "name": "fresh",
        "handler": "lambda_function.lambda_handler",
        "source": "def lambda_handler(event, context):\n    return 1\n",
        "memory_mb": "256",
        "timeout_s": "5",
        "max_retry_attempts": "1",
        "max_event_age_s": "600",
        "on_failure_destination": "dead-letter",
        "environment": "GREETING=hello\nCOLOUR=blue",
    }
    return {**data, **overrides}


def config_form(function, **overrides):
    data = {
        "revision_id": str(function.revision_id),
        "handler": function.handler,
        "description": function.description,
        "memory_mb": str(function.memory_mb),
        "timeout_s": str(function.timeout_s),
        "max_retry_attempts": str(function.max_retry_attempts),
        "max_event_age_s": str(function.max_event_age_s),
        "on_failure_destination": function.on_failure_destination,
    }
    return {**data, **overrides}


# ---- access -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["/functions/", "/functions/new/", "/dead-letters/", *FUNCTION_PAGES])
def test_every_page_renders_for_its_owner(signed_in, make_function, url):
    make_function()
    assert signed_in.get(url).status_code == 200


@pytest.mark.parametrize("url", FUNCTION_PAGES)
def test_another_tenants_function_is_404_on_every_tab(client, other_user, make_function, url):
    make_function()
    client.force_login(other_user)
    assert client.get(url).status_code == 404


def test_another_tenants_function_cannot_be_changed_or_invoked(client, other_user, make_function):
    function = make_function()
    client.force_login(other_user)
    posts = [
        ("/functions/hello/", {"source": "x = 1"}),
        ("/functions/hello/test/invoke/", {"event": "{}"}),
        ("/functions/hello/test/events/", {"name": "e", "event": "{}"}),
        ("/functions/hello/versions/publish/", {}),
        ("/functions/hello/configuration/", config_form(function, memory_mb="512")),
        ("/functions/hello/delete/", {}),
    ]
    for url, data in posts:
        assert client.post(url, data).status_code == 404, url
    function.refresh_from_db()
    assert function.memory_mb == 128 and not function.versions.exists() and not function.test_events.exists()


def test_another_tenants_invocation_and_dead_letter_are_404(client, other_user, make_function):
    function = make_function()
    invocation = make_invocation(function)
    letter = make_dead_letter(function)
    client.force_login(other_user)
    assert client.get(f"/invocations/{invocation.pk}/").status_code == 404
    assert client.get(f"/invocations/{invocation.pk}/row/").status_code == 404
    assert client.post(f"/dead-letters/{letter.pk}/replay/").status_code == 404
    assert client.post(f"/dead-letters/{letter.pk}/delete/").status_code == 404
    assert "hello" not in client.get("/functions/").content.decode()
    assert "Boom" not in client.get("/dead-letters/").content.decode()
    assert DeadLetter.objects.filter(pk=letter.pk, replayed_as=None).exists()


def test_a_malformed_invocation_id_is_404(signed_in):
    assert signed_in.get("/invocations/not-a-uuid/").status_code == 404


@pytest.mark.parametrize("url", ["/functions/", "/functions/hello/test/", "/dead-letters/", "/invocations/x/"])
def test_anonymous_visitors_are_sent_to_sign_in(client, url):
    response = client.get(url)
    assert response.status_code == 302 and response["Location"].startswith(f"/login/?next={url}")


def test_signing_in_lands_on_the_function_list_and_signing_out_returns_to_sign_in(client, user):
    response = client.post("/login/", {"username": "alice", "password": "pw-for-tests-only"})
    assert response.status_code == 302 and response["Location"] == "/functions/"
    page = client.get("/functions/").content.decode()
    assert "Signed in as <strong>alice</strong>" in page and 'href="/reports/"' in page
    response = client.post("/logout/")
    assert response.status_code == 302 and response["Location"] == "/login/"
    assert client.get("/functions/").status_code == 302


def test_a_wrong_password_is_shown_on_the_sign_in_form(client, user):
    response = client.post("/login/", {"username": "alice", "password": "nope"})
    assert response.status_code == 200 and "correct username and password" in response.content.decode()


# ---- create and edit --------------------------------------------------------------------------------------------


def test_creating_a_function_stores_its_code_and_configuration(signed_in, user):
    response = signed_in.post("/functions/new/", create_form())
    assert response.status_code == 302 and response["Location"] == "/functions/fresh/"
    function = Function.objects.get(owner=user, name="fresh")
    assert (function.memory_mb, function.timeout_s, function.max_retry_attempts, function.max_event_age_s) == (
        256,
        5,
        1,
        600,
    )
    assert function.reserved_concurrency is None and not function.network_enabled
    assert env_decrypt(function.environment_ciphertext) == {"GREETING": "hello", "COLOUR": "blue"}
    page = signed_in.get("/functions/fresh/").content.decode()
    assert "lambda_function.py" in page and "return 1" in page


def test_environment_values_are_never_shown_only_their_names(signed_in, make_function):
    make_function(environment={"API_TOKEN": "s3cr3t-value"})
    for url in FUNCTION_PAGES:
        page = signed_in.get(url).content.decode()
        assert "s3cr3t-value" not in page, url
    assert "API_TOKEN" in signed_in.get("/functions/hello/configuration/").content.decode()


def test_creating_a_function_from_a_zip_upload(signed_in, user):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("pkg/handlers.py", "def run(event, context):\n    return 'zip'\n")
        archive.writestr("data.bin", b"\x00\x01")
    upload = io.BytesIO(buffer.getvalue())
    upload.name = "code.zip"
    response = signed_in.post("/functions/new/", create_form(handler="pkg.handlers.run", source="", zip_file=upload))
    assert response.status_code == 302
    function = Function.objects.get(owner=user, name="fresh")
    assert function.code.file_count == 2 and function.handler == "pkg.handlers.run"


def test_a_memory_of_64_is_shown_next_to_the_memory_field(signed_in, user):
    response = signed_in.post("/functions/new/", create_form(memory_mb="64"))
    assert response.status_code == 200
    assert response.context["form"].errors["memory_mb"] == ["Must be an integer from 128 to 10240."]
    assert 'id="field-memory_mb"' in response.content.decode()
    assert not Function.objects.filter(owner=user).exists()


@pytest.mark.parametrize(
    ("overrides", "field", "fragment"),
    [
        ({"timeout_s": "901"}, "timeout_s", "1 to 900"),
        ({"memory_mb": "lots"}, "memory_mb", "whole number"),
        ({"name": "bad name!"}, "name", "letters, digits"),
        ({"environment": "AWS_REGION=x"}, "environment", "reserved"),
        ({"environment": "no equals sign"}, "environment", "NAME=value"),
        ({"on_failure_destination": "queue:x"}, "on_failure_destination", "function:<name>"),
        ({"max_event_age_s": "5"}, "max_event_age_s", "60 to 21600"),
        ({"handler": "nodot"}, "handler", "module.function"),
        ({"source": "def lambda_handler(:\n"}, "source", "syntax error"),
        ({"source": ""}, "source", "upload a zip"),
    ],
)
def test_bad_input_is_shown_next_to_its_field(signed_in, overrides, field, fragment):
    response = signed_in.post("/functions/new/", create_form(**overrides))
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert field in errors and fragment in " ".join(errors[field]), errors


def test_a_duplicate_name_is_a_form_error_not_a_500(signed_in, make_function):
    make_function(name="fresh")
    response = signed_in.post("/functions/new/", create_form())
    assert response.status_code == 200
    assert "already exists" in response.context["form"].errors["name"][0]


def test_editing_the_configuration_keeps_the_values_it_does_not_show(signed_in, make_function):
    function = make_function(environment={"KEEP": "kept", "DROP": "dropped"})
    data = config_form(function, memory_mb="512", env_remove=["DROP"], environment="NEW=fresh")
    response = signed_in.post("/functions/hello/configuration/", data)
    assert response.status_code == 302
    function.refresh_from_db()
    assert function.memory_mb == 512
    assert env_decrypt(function.environment_ciphertext) == {"KEEP": "kept", "NEW": "fresh"}


def test_a_stale_configuration_form_is_refused_with_a_message(signed_in, make_function):
    function = make_function()
    data = config_form(function, memory_mb="512")
    services.function_update_configuration(function=function, timeout_s=10)
    response = signed_in.post("/functions/hello/configuration/", data)
    assert response.status_code == 200 and "changed since you read it" in response.content.decode()
    function.refresh_from_db()
    assert function.memory_mb == 128


def test_a_bad_configuration_is_shown_next_to_its_field(signed_in, make_function):
    function = make_function()
    response = signed_in.post("/functions/hello/configuration/", config_form(function, timeout_s="0"))
    assert response.status_code == 200 and "1 to 900" in response.context["form"].errors["timeout_s"][0]


def test_saving_the_editor_replaces_the_handler_module_and_keeps_other_files(signed_in, user):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", "def handler(event, context):\n    return 1\n")
        archive.writestr("helper.txt", "kept")
    services.function_create(
        owner=user, name="hello", handler="app.handler", code=services.CodeUpload(zip_bytes=buffer.getvalue())
    )
    source = "def handler(event, context):\n    return 2\n"
    response = signed_in.post("/functions/hello/", {"source": source})
    assert response.status_code == 302
    function = Function.objects.get(owner=user, name="hello")
    with zipfile.ZipFile(io.BytesIO(code_store().get(function.code.sha256))) as archive:
        assert archive.read("app.py").decode() == source and archive.read("helper.txt") == b"kept"


def test_uploading_a_zip_on_the_code_tab_replaces_the_package(signed_in, make_function):
    function = make_function()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", "def handler(event, context):\n    return 'from zip'\n")
    upload = io.BytesIO(buffer.getvalue())
    upload.name = "new.zip"
    response = signed_in.post("/functions/hello/", {"zip_file": upload, "revision_id": str(function.revision_id)})
    assert response.status_code == 302
    assert "from zip" in signed_in.get("/functions/hello/").content.decode()


def test_a_zip_with_a_path_outside_the_package_is_refused_on_the_code_tab(signed_in, make_function):
    make_function()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../evil.py", "x = 1")
        archive.writestr("app.py", "def handler(event, context):\n    return 1\n")
    upload = io.BytesIO(buffer.getvalue())
    upload.name = "evil.zip"
    response = signed_in.post("/functions/hello/", {"zip_file": upload})
    assert response.status_code == 200 and "outside the package" in response.content.decode()


def test_anonymous_posts_change_nothing(client, make_function):
    function = make_function()
    assert client.post("/functions/hello/delete/")["Location"].startswith("/login/")
    assert client.post("/functions/hello/versions/publish/")["Location"].startswith("/login/")
    assert Function.objects.filter(pk=function.pk).exists() and not function.versions.exists()


def test_a_syntax_error_in_the_editor_is_shown_under_it_and_nothing_changes(signed_in, make_function):
    function = make_function()
    response = signed_in.post("/functions/hello/", {"source": "def handler(:\n"})
    assert response.status_code == 200 and "syntax error" in response.context["form"].errors["source"][0]
    assert Function.objects.get(pk=function.pk).code_id == function.code_id


def test_deleting_a_function(signed_in, make_function):
    make_function()
    assert signed_in.post("/functions/hello/delete/")["Location"] == "/functions/"
    assert not Function.objects.exists()


# ---- versions and aliases ---------------------------------------------------------------------------------------


def test_publishing_versions_and_an_alias_with_a_canary(signed_in, make_function):
    function = make_function()
    assert signed_in.post("/functions/hello/versions/publish/", {"description": "first"}).status_code == 302
    services.function_update_configuration(function=function, memory_mb=256)
    signed_in.post("/functions/hello/versions/publish/", {})
    assert list(function.versions.values_list("number", "description")) == [(1, "first"), (2, "")]

    data = {"name": "live", "version": "1", "additional_version": "2", "additional_weight": "0.25"}
    assert signed_in.post("/functions/hello/aliases/", data).status_code == 302
    alias = function.aliases.get(name="live")
    assert (alias.version.number, alias.additional_version.number, alias.additional_weight) == (1, 2, 0.25)
    assert "25% to version 2" in signed_in.get("/functions/hello/versions/").content.decode()

    update = {"alias-live-version": "2", "alias-live-revision_id": str(alias.revision_id)}
    assert signed_in.post("/functions/hello/aliases/live/", update).status_code == 302
    alias.refresh_from_db()
    assert alias.version.number == 2 and alias.additional_version is None and alias.additional_weight == 0.0

    assert signed_in.post("/functions/hello/aliases/live/delete/").status_code == 302
    assert not function.aliases.exists()


def test_an_alias_to_a_missing_version_or_a_bad_weight_is_a_form_error(signed_in, make_function):
    function = make_function()
    services.version_publish(function=function)
    response = signed_in.post("/functions/hello/aliases/", {"name": "live", "version": "7"})
    assert response.status_code == 400 and response.context["alias_form"].errors["version"] == ["No such version."]
    services.function_update_configuration(function=function, memory_mb=256)
    services.version_publish(function=function)
    data = {"name": "live", "version": "1", "additional_version": "2", "additional_weight": "1.5"}
    response = signed_in.post("/functions/hello/aliases/", data)
    assert "0.0 to 1.0" in response.context["alias_form"].errors["additional_weight"][0]
    assert not function.aliases.exists()


# ---- test events ------------------------------------------------------------------------------------------------


def test_test_events_are_created_edited_and_deleted(signed_in, make_function):
    function = make_function()
    assert signed_in.post("/functions/hello/test/events/", {"name": "ping", "event": '{"n": 1}'}).status_code == 302
    assert TestEvent.objects.get(function=function, name="ping").event_json == '{"n": 1}'
    assert "ping" in signed_in.get("/functions/hello/test/").content.decode()

    response = signed_in.post("/functions/hello/test/events/ping/", {"ping-event": '{"n": 2}'})
    assert response.status_code == 302
    assert TestEvent.objects.get(function=function, name="ping").event_json == '{"n": 2}'

    assert signed_in.post("/functions/hello/test/events/ping/delete/").status_code == 302
    assert not TestEvent.objects.filter(function=function).exists()


def test_a_test_event_that_is_not_json_or_badly_named_is_a_form_error(signed_in, make_function):
    make_function()
    response = signed_in.post("/functions/hello/test/events/", {"name": "ping", "event": "{nope"})
    assert response.status_code == 400 and "Not valid JSON" in response.context["new_form"].errors["event"][0]
    response = signed_in.post("/functions/hello/test/events/", {"name": "no spaces", "event": "{}"})
    assert "letters, digits" in response.context["new_form"].errors["name"][0]
    assert not TestEvent.objects.exists()


def test_invoking_with_an_unknown_qualifier_is_an_error_on_the_page(signed_in, make_function):
    make_function()
    response = signed_in.post("/functions/hello/test/invoke/", {"event": "{}", "qualifier": "nope"})
    assert response.status_code == 200 and "no alias" in response.content.decode()
    assert not Invocation.objects.exists()


# ---- invocations ------------------------------------------------------------------------------------------------


def test_the_invocation_list_filters_by_status_cold_version_and_time(signed_in, make_function):
    function = make_function()
    now = timezone.now()
    ok = make_invocation(function, status="succeeded", is_cold=True, executed_version="1", duration_ms=5)
    failed = make_invocation(function, status="failed", error_type="Boom")
    old = make_invocation(function, status="succeeded", queued_at=now - timedelta(days=2))

    def shown(query):
        invocations = signed_in.get(f"/functions/hello/invocations/?{query}").context["invocations"]
        return {invocation.pk for invocation in invocations}

    assert shown("") == {ok.pk, failed.pk, old.pk}
    assert shown("status=failed") == {failed.pk}
    assert shown("cold=true") == {ok.pk}
    assert shown("cold=false") == {failed.pk, old.pk}
    assert shown("version=1") == {ok.pk}
    assert shown("since=24h") == {ok.pk, failed.pk}
    assert shown("status=nonsense") == {ok.pk, failed.pk, old.pk}  # an invalid filter is ignored, not a 500


def test_a_running_invocation_polls_until_it_is_terminal(signed_in, make_function):
    function = make_function()
    invocation = make_invocation(function, status="running")
    row = signed_in.get(f"/invocations/{invocation.pk}/row/").content.decode()
    assert 'hx-trigger="every 1s"' in row and "Running" in row
    assert 'hx-trigger="every 1s"' in signed_in.get(f"/invocations/{invocation.pk}/").content.decode()
    Invocation.objects.filter(pk=invocation.pk).update(status="succeeded", duration_ms=3.5)
    row = signed_in.get(f"/invocations/{invocation.pk}/row/").content.decode()
    assert "hx-trigger" not in row and "Succeeded" in row and "badge green" in row
    body = signed_in.get(f"/invocations/{invocation.pk}/", HTTP_HX_REQUEST="true").content.decode()
    assert body.lstrip().startswith('<div id="invocation-body"') and "hx-trigger" not in body


def test_the_invocation_page_shows_its_timeline_result_log_attempts_and_cost(signed_in, make_function):
    function = make_function()
    now = timezone.now()
    invocation = make_invocation(
        function,
        status="succeeded",
        queued_at=now,
        started_at=now,
        finished_at=now,
        queue_wait_ms=2.0,
        is_cold=True,
        init_ms=6.0,
        duration_ms=12.0,
        billed_ms=18,
        attempt=1,
        result='{"hello": 1}',
        log="printed line",
        cost_usd=Decimal("0.0000000375"),
    )
    response = signed_in.get(f"/invocations/{invocation.pk}/")
    page = response.content.decode()
    assert [phase["label"] for phase in response.context["timeline"]] == ["Queue wait", "Init", "Run"]
    assert "width: 60.00%" in page  # 12 of 20 ms running
    assert "printed line" in page and "&quot;hello&quot;: 1" in page
    assert "1 of 1" in page and "$0.0000000375" in page and "cold start" in page


def finished(function, *, at=None, **fields):
    """A terminal invocation handed to metering, as a worker's completion does."""
    at = at or timezone.now()
    values = {"status": "succeeded", "queued_at": at, "started_at": at, "finished_at": at, "billed_ms": 1, **fields}
    invocation = make_invocation(function, **values)
    invocation_finished(invocation=invocation)
    metering_flush()
    return invocation


def test_the_function_list_shows_the_last_24_hours_from_metrics(signed_in, make_function):
    function = make_function()
    make_function(name="idle")
    for ms, cold in [(10, True), (20, False), (30, False)]:
        finished(function, duration_ms=ms, is_cold=cold, cost_usd=Decimal("0.001"))
    finished(function, status="failed", duration_ms=40, cost_usd=Decimal("0.001"))
    finished(function, status="failed", duration_ms=999, at=timezone.now() - timedelta(days=2))
    response = signed_in.get("/functions/")
    summaries = {row[0].name: row[1] for row in response.context["rows"]}
    assert summaries["idle"] is None
    hello = summaries["hello"]
    assert hello["invocations"] == 4 and hello["error_rate"] == 0.25 and hello["cold_rate"] == 0.25
    assert 10 <= hello["p50_ms"] <= 40
    page = response.content.decode()
    assert "25%" in page


def test_the_monitor_tab_draws_each_chart_with_the_local_plotly(signed_in, make_function):
    function = make_function()
    finished(function, duration_ms=12, is_cold=True)
    response = signed_in.get("/functions/hello/monitor/?range=1h")
    page = response.content.decode()
    assert response.context["figures"] and 'id="figure-invocations"' in page
    assert "/static/vendor/plotly.min.js" in page and "cdn" not in page.lower()
    assert 'class="active">1h' in page


def test_an_unknown_time_range_falls_back_to_24_hours(signed_in, make_function):
    make_function()
    assert signed_in.get("/functions/hello/monitor/?range=1y").context["range"] == "24h"


# ---- dead letters -----------------------------------------------------------------------------------------------


def test_replaying_a_dead_letter_opens_the_new_invocation(signed_in, make_function):
    letter = make_dead_letter(make_function())
    assert "Retries exhausted" in signed_in.get("/dead-letters/").content.decode()
    response = signed_in.post(f"/dead-letters/{letter.pk}/replay/")
    letter.refresh_from_db()
    assert letter.replayed_as is not None and letter.replayed_as.payload == '{"n": 1}'
    assert response["Location"] == f"/invocations/{letter.replayed_as.pk}/"
    assert "replayed" in signed_in.get("/dead-letters/").content.decode()
    assert signed_in.post(f"/dead-letters/{letter.pk}/delete/").status_code == 302
    assert not DeadLetter.objects.exists()


# ---- end to end with a worker -----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_invoking_from_the_test_tab_shows_the_result_and_the_log(client, user, make_function, worker):
    source = "def handler(event, context):\n    print('got', event['n'])\n    return {'doubled': event['n'] * 2}\n"
    make_function(code=services.CodeUpload(files={"app.py": source}))
    client.force_login(user)
    response = client.post("/functions/hello/test/invoke/", {"event": '{"n": 21}'}, HTTP_HX_REQUEST="true")
    fragment = response.content.decode()
    assert response.status_code == 200 and "<html" not in fragment
    assert "succeeded" in fragment and "&quot;doubled&quot;: 42" in fragment and "got 21" in fragment
    assert response.context["outcome"].is_cold

    page = client.post("/functions/hello/test/invoke/", {"event": '{"n": 1}', "qualifier": "$LATEST"})
    assert "<html" in page.content.decode() and not page.context["outcome"].is_cold
    assert page.context["outcome"].result == '{"doubled": 2}'
    assert Invocation.objects.filter(status="succeeded").count() == 2
    assert not Version.objects.exists()


def test_a_throttled_invoke_says_why_on_the_test_tab(signed_in, make_function, redis_server):
    make_function(reserved_concurrency=0)
    response = signed_in.post("/functions/hello/test/invoke/", {"event": "{}"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and "Rate exceeded" in response.content.decode()
    assert not Invocation.objects.exists()
