"""The browser console's pages, through Django's test client: tenancy, sign-in, forms and their errors."""

from __future__ import annotations

import io
import re
import zipfile
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from functions_app import services
from functions_app.code_storage import code_store
from functions_app.models import DeadLetter, Function, Invocation, TestEvent, Version
from functions_app.secrets import env_decrypt
from metrics_app.services import invocation_record, metering_flush

pytestmark = pytest.mark.django_db

CREATE = "/functions/+new/"
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


@pytest.mark.parametrize("url", ["/functions/", CREATE, "/dead-letters/", "/account/", *FUNCTION_PAGES])
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


@pytest.mark.parametrize(
    "url",
    ["/functions/", "/functions/hello/test/", "/dead-letters/", "/invocations/x/", "/account/", "/account/password/"],
)
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
    response = signed_in.post(CREATE, create_form())
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
    response = signed_in.post(CREATE, create_form(handler="pkg.handlers.run", source="", zip_file=upload))
    assert response.status_code == 302
    function = Function.objects.get(owner=user, name="fresh")
    assert function.code.file_count == 2 and function.handler == "pkg.handlers.run"


def test_a_memory_of_64_is_shown_next_to_the_memory_field(signed_in, user):
    response = signed_in.post(CREATE, create_form(memory_mb="64"))
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
    response = signed_in.post(CREATE, create_form(**overrides))
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert field in errors and fragment in " ".join(errors[field]), errors


def test_a_duplicate_name_is_a_form_error_not_a_500(signed_in, make_function):
    make_function(name="fresh")
    response = signed_in.post(CREATE, create_form())
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


def test_the_function_list_deletes_a_function_after_asking_and_comes_back_to_the_same_page(signed_in, make_function):
    make_function()
    page = signed_in.get("/functions/?q=hel").content.decode()
    form = page[page.index('action="/functions/hello/delete/"') :]
    form = form[: form.index("</form>")]
    assert 'data-confirm="Delete hello and all its versions' in form and "csrfmiddlewaretoken" in form
    assert "/static/js/console.js" in page  # what asks for the confirmation
    response = signed_in.post("/functions/hello/delete/", {"next": "/functions/?q=hel"}, follow=True)
    assert response.redirect_chain == [("/functions/?q=hel", 302)]
    assert not Function.objects.exists() and "Deleted hello" in response.content.decode()


def test_deleting_from_the_list_never_redirects_off_the_site(signed_in, make_function):
    make_function()
    response = signed_in.post("/functions/hello/delete/", {"next": "https://evil.example/"})
    assert response["Location"] == "/functions/"


# ---- names that look like pages ---------------------------------------------------------------------------------


def test_a_function_named_new_opens_on_its_own_page(signed_in, make_function):
    make_function(name="new")
    listed = signed_in.get("/functions/").content.decode()
    assert 'href="/functions/new/"' in listed
    response = signed_in.get("/functions/new/")
    assert response.status_code == 200 and response.context["function"].name == "new"
    assert signed_in.get(CREATE).context["form"].__class__.__name__ == "FunctionCreateForm"
    assert f'href="{CREATE}"' in listed


FUNCTION_URL_NAMES = [
    "function_code",
    "function_test",
    "function_invoke",
    "test_event_create",
    "function_monitor",
    "function_versions",
    "version_publish",
    "alias_create",
    "function_invocations",
    "function_configuration",
    "function_delete",
]
# Every fixed path segment of the console's function pages, and names that read like one.
PAGE_LIKE_NAMES = ["new", "test", "invoke", "events", "monitor", "versions", "publish", "aliases", "delete", "1", "-"]


@pytest.mark.parametrize("function_name", PAGE_LIKE_NAMES)
def test_no_function_name_is_taken_by_another_page_of_the_console(function_name):
    from django.urls import resolve, reverse

    services.function_name_validate(function_name)  # a name a user may choose
    for url_name in FUNCTION_URL_NAMES:
        match = resolve(reverse(url_name, args=[function_name]))
        assert (match.url_name, match.kwargs["name"]) == (url_name, function_name)
    for url_name, extra in [("test_event_update", "e"), ("alias_update", "a"), ("version_code", 1)]:
        match = resolve(reverse(url_name, args=[function_name, extra]))
        assert (match.url_name, match.kwargs["name"]) == (url_name, function_name)


def test_the_create_page_sits_where_no_function_name_can():
    from django.urls import resolve, reverse

    from console.exceptions import ServiceError

    segment = reverse("function_create").strip("/").split("/")[-1]
    with pytest.raises(ServiceError):
        services.function_name_validate(segment)
    assert resolve(reverse("function_create")).url_name == "function_create"


# ---- the package's files and published versions' code ------------------------------------------------------------


def make_package_function(user, **files):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", "def handler(event, context):\n    return 1\n")
        for name, body in files.items():
            archive.writestr(name.replace("__", "/"), body)
    return services.function_create(
        owner=user, name="hello", handler="app.handler", code=services.CodeUpload(zip_bytes=buffer.getvalue())
    )


def test_every_text_file_of_the_package_can_be_opened_from_the_file_list(signed_in, user):
    make_package_function(user, lib__helper_py="VALUE = 'from the helper'\n", data_bin=b"\x00\x01\x02")
    page = signed_in.get("/functions/hello/").content.decode()
    assert 'href="?file=app.py"' in page and 'href="?file=lib/helper_py"' in page and 'href="?file=data_bin"' in page
    helper = signed_in.get("/functions/hello/?file=lib/helper_py")
    assert helper.context["package"].text == "VALUE = 'from the helper'\n"
    assert "from the helper" in helper.content.decode() and 'data-editor-mode="text/plain"' in helper.content.decode()
    binary = signed_in.get("/functions/hello/?file=data_bin").content.decode()
    assert 'id="file-unreadable"' in binary and "binary" in binary
    assert signed_in.get("/functions/hello/?file=missing.py").status_code == 404


def test_editing_another_file_of_the_package_keeps_the_handler_module(signed_in, user):
    function = make_package_function(user, **{"config.json": '{"colour": "blue"}'})
    response = signed_in.post(
        "/functions/hello/?file=config.json",
        {"source": '{"colour": "red"}', "revision_id": str(function.revision_id)},
    )
    assert response.status_code == 302 and response["Location"] == "/functions/hello/?file=config.json"
    function.refresh_from_db()
    with zipfile.ZipFile(io.BytesIO(code_store().get(function.code.sha256))) as archive:
        assert archive.read("config.json") == b'{"colour": "red"}'
        assert archive.read("app.py") == b"def handler(event, context):\n    return 1\n"


def test_a_published_versions_code_is_shown_read_only_from_the_versions_tab(signed_in, make_function, other_user):
    function = make_function()
    services.version_publish(function=function)
    new_source = "def handler(event, context):\n    return 'changed'\n"
    services.function_update_code(function=function, code=services.CodeUpload(files={"app.py": new_source}))
    assert 'href="/functions/hello/versions/1/"' in signed_in.get("/functions/hello/versions/").content.decode()
    response = signed_in.get("/functions/hello/versions/1/")
    page = response.content.decode()
    assert response.status_code == 200 and response.context["tab"] == "versions"
    assert "return {&#x27;hello&#x27;: event}" in page and "changed" not in page
    assert '<textarea class="code-editor" readonly' in page and "<form" not in page.split('id="version-title"')[1]
    assert signed_in.get("/functions/hello/versions/2/").status_code == 404
    signed_in.force_login(other_user)
    assert signed_in.get("/functions/hello/versions/1/").status_code == 404


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
    assert response.status_code == 200 and "nope is not one of the available choices" in response.content.decode()
    assert not Invocation.objects.exists()


def test_the_test_tab_offers_latest_each_version_and_each_alias_to_invoke(signed_in, make_function):
    function = make_function()
    services.version_publish(function=function)
    services.function_update_configuration(function=function, memory_mb=256)
    services.version_publish(function=function)
    services.alias_create(function=function, name="live", version=1, additional_version=2, additional_weight=0.1)
    response = signed_in.get("/functions/hello/test/")
    field = response.context["invoke_form"]["qualifier"]
    assert field.field.widget.input_type == "select"
    assert [value for value, _ in field.field.choices] == ["$LATEST", "1", "2", "live"]
    assert "Alias live → version 1, 10% to version 2" in response.content.decode()
    assert 'name="qualifier"' in response.content.decode() and '<input type="text" name="qualifier"' not in (
        response.content.decode()
    )


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


@pytest.fixture
def page_of_two(monkeypatch):
    from functions_app import views

    monkeypatch.setattr(views, "PAGE_SIZE", 2)


def test_the_invocations_tab_pages_back_past_its_newest_rows_keeping_the_filters(signed_in, make_function, page_of_two):
    function = make_function()
    now = timezone.now()
    rows = [make_invocation(function, status="succeeded", queued_at=now - timedelta(minutes=m)) for m in range(3)]
    make_invocation(function, status="failed", queued_at=now)
    first = signed_in.get("/functions/hello/invocations/?status=succeeded")
    assert [i.pk for i in first.context["invocations"]] == [rows[0].pk, rows[1].pk]
    page = first.content.decode()
    assert 'href="?status=succeeded&amp;page=2"' in page and 'rel="prev"' not in page
    second = signed_in.get("/functions/hello/invocations/?status=succeeded&page=2")
    assert [i.pk for i in second.context["invocations"]] == [rows[2].pk]
    assert 'href="?status=succeeded&amp;page=1"' in second.content.decode() and 'rel="next"' not in (
        second.content.decode()
    )
    assert signed_in.get("/functions/hello/invocations/?page=nonsense").context["page"].number == 1


def test_the_function_list_pages_and_filters_by_search_and_runtime(signed_in, make_function, page_of_two):
    for name in ("alpha", "beta", "gamma"):
        make_function(name=name, description=f"the {name} function")

    def names(query):
        return [function.name for function, _ in signed_in.get(f"/functions/?{query}").context["rows"]]

    assert names("") == ["alpha", "beta"] and names("page=2") == ["gamma"]
    assert names("q=gam") == ["gamma"] and names("q=function&page=2") == ["gamma"]
    assert names("runtime=python3.11") == ["alpha", "beta"]
    assert names("runtime=cobol") == ["alpha", "beta"]  # an unknown runtime is ignored, not a 500
    page = signed_in.get("/functions/?q=a").content.decode()
    assert '<select name="runtime"' in page and 'href="?q=a&amp;page=2"' in page


def test_dead_letters_filter_by_function_condition_and_replay_and_page(signed_in, make_function, page_of_two):
    hello, other = make_function(), make_function(name="other")
    letters = [make_dead_letter(hello) for _ in range(3)]
    aged = make_dead_letter(other)
    DeadLetter.objects.filter(pk=aged.pk).update(condition="EventAgeExceeded")
    DeadLetter.objects.filter(pk=letters[0].pk).update(replayed_as=make_invocation(hello))

    def shown(query):
        return {letter.pk for letter in signed_in.get(f"/dead-letters/?{query}").context["letters"]}

    assert shown("function=other") == {aged.pk}
    assert shown("condition=EventAgeExceeded") == {aged.pk}
    assert shown("function=hello&replayed=true") == {letters[0].pk}
    assert shown("function=hello&replayed=false") == {letters[1].pk, letters[2].pk}
    assert len(shown("")) == 2 and len(shown("page=2")) == 2 and not shown("page=3")
    assert shown("condition=nonsense") == shown("")  # an invalid filter is ignored, not a 500
    page = signed_in.get("/dead-letters/?function=hello").content.decode()
    assert '<select name="condition"' in page and '<select name="replayed"' in page
    assert 'href="?function=hello&amp;page=2"' in page


def test_deleting_a_dead_letter_returns_to_the_filtered_page(signed_in, make_function):
    letter = make_dead_letter(make_function())
    response = signed_in.post(f"/dead-letters/{letter.pk}/delete/", {"next": "/dead-letters/?function=hello"})
    assert response["Location"] == "/dead-letters/?function=hello" and not DeadLetter.objects.exists()


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


def test_the_timeline_draws_each_phase_of_its_list_in_its_colour(signed_in, make_function, monkeypatch):
    from functions_app import views

    phases = [*views.TIMELINE_PHASES, ("CPU", "cpu_ms", "#123456")]  # as a new phase field would be added
    monkeypatch.setattr(views, "TIMELINE_PHASES", phases)
    invocation = make_invocation(
        make_function(), status="succeeded", queue_wait_ms=1.0, init_ms=0.0, duration_ms=3.0, cpu_ms=4.0
    )
    response = signed_in.get(f"/invocations/{invocation.pk}/")
    assert [phase["label"] for phase in response.context["timeline"]] == ["Queue wait", "Run", "CPU"]  # warm: no init
    page = response.content.decode()
    assert "width: 50.00%; background: #123456" in page and "CPU: 4.00 ms" in page


def finished(function, *, at=None, **fields):
    """A terminal invocation handed to metering, as a worker's completion does."""
    at = at or timezone.now()
    values = {"status": "succeeded", "queued_at": at, "started_at": at, "finished_at": at, "billed_ms": 1, **fields}
    invocation = make_invocation(function, **values)
    invocation_record(event="finished", invocation=invocation)
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


# ---- account: password, API token, metrics -----------------------------------------------------------------------


def test_the_header_links_to_the_account_page_which_makes_a_key_and_shows_it_once_with_a_copy_button(signed_in, user):
    page = signed_in.get("/functions/").content.decode()
    assert '<a href="/account/" id="account-link"' in page
    assert "You have no API key yet" in signed_in.get("/account/").content.decode()
    made = signed_in.post("/account/keys/", {"name": "laptop", "expires": "30"})
    key = re.search(r'<code id="api-token">(eph_[^<]+)</code>', made.content.decode()).group(1)
    assert 'data-copy="api-token"' in made.content.decode() and f"Authorization: Token {key}" in made.content.decode()
    later = signed_in.get("/account/").content.decode()
    assert key not in later and "laptop" in later and f"eph_{key[4:12]}_" in later  # listed by its prefix only
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert api.get("/api/v1/functions/").status_code == 200


def test_revoking_a_key_in_the_console_stops_it_at_once_and_keeps_the_others(signed_in, user):
    from console.accounts import api_key_create

    _, kept_key = api_key_create(owner=user, name="kept")
    revoked, revoked_key = api_key_create(owner=user, name="revoked")
    signed_in.post(f"/account/keys/{revoked.pk}/revoke/")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {revoked_key}")
    assert api.get("/api/v1/functions/").status_code == 401
    api.credentials(HTTP_AUTHORIZATION=f"Token {kept_key}")
    assert api.get("/api/v1/functions/").status_code == 200


def test_a_key_without_a_name_is_refused_next_to_its_field(signed_in):
    response = signed_in.post("/account/keys/", {"name": "", "expires": ""})
    assert response.status_code == 400 and 'id="field-name"' in response.content.decode()


def test_another_tenants_key_cannot_be_revoked(signed_in, other_user):
    from console.accounts import api_key_create

    theirs, _ = api_key_create(owner=other_user, name="theirs")
    assert signed_in.post(f"/account/keys/{theirs.pk}/revoke/").status_code == 404


def test_the_demo_user_changes_their_password_in_the_console(client):
    from console.seed import demo_seed

    seed = demo_seed()
    assert client.login(username="demo", password=seed["password"])
    assert 'href="/account/password/"' in client.get("/account/").content.decode()
    data = {"old_password": seed["password"], "new_password1": "a-new-long-pass", "new_password2": "a-new-long-pass"}
    response = client.post("/account/password/", data, follow=True)
    assert response.redirect_chain == [("/account/", 302)] and "Your password is changed" in response.content.decode()
    client.logout()
    assert client.login(username="demo", password="a-new-long-pass")


def test_a_wrong_old_password_is_shown_on_the_password_form(signed_in):
    data = {"old_password": "nope", "new_password1": "a-new-long-pass", "new_password2": "a-new-long-pass"}
    response = signed_in.post("/account/password/", data)
    assert response.status_code == 200 and "old password was entered incorrectly" in response.content.decode()


def test_the_demo_operator_reads_the_prometheus_metrics_out_of_the_box(client):
    from console.seed import demo_seed

    seed = demo_seed()
    client.login(username="demo", password=seed["password"])
    response = client.get("/metrics")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain")
    assert 'href="/metrics"' in client.get("/account/").content.decode()


def test_a_tenant_who_is_not_staff_is_told_how_metrics_are_reached(signed_in):
    page = signed_in.get("/account/").content.decode()
    assert "is for staff sessions" in page and "METRICS_TOKEN" in page


def test_the_configuration_tab_sets_ephemeral_storage(signed_in, make_function):
    function = make_function()
    page = signed_in.get("/functions/hello/configuration/").content.decode()
    assert 'name="ephemeral_storage_mb"' in page and 'value="512"' in page
    form = {
        "description": "",
        "handler": "app.handler",
        "memory_mb": "128",
        "timeout_s": "3",
        "ephemeral_storage_mb": "2048",
        "max_retry_attempts": "2",
        "max_event_age_s": "21600",
        "on_success_destination": "",
        "on_failure_destination": "dead-letter",
        "revision_id": str(function.revision_id),
    }
    signed_in.post("/functions/hello/configuration/", form)
    function.refresh_from_db()
    assert function.ephemeral_storage_mb == 2048


def test_a_missing_page_is_the_consoles_own_404_not_a_debug_page(signed_in):
    response = signed_in.get("/functions/doesnotexist/")
    page = response.content.decode()
    assert response.status_code == 404 and "Back to your functions" in page and "URLconf" not in page
