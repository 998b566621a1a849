from __future__ import annotations

import base64
import io

import pytest
from rest_framework.test import APIClient

from functions_app import services
from functions_app.destinations import dead_letter_replay
from functions_app.models import DeadLetter, Function, Invocation, TestEvent
from functions_app.tests.zips import make_zip

pytestmark = pytest.mark.django_db

SOURCE = "def handler(event, context):\n    return event\n"


def create_body(**overrides):
    body = {"name": "echo", "handler": "app.handler", "code": {"files": {"app.py": SOURCE}}}
    body.update(overrides)
    return body


def assert_error(response, status, type_):
    assert response.status_code == status, response.content
    body = response.json()
    assert body["type"] == type_, body
    assert isinstance(body["message"], str) and body["message"]
    assert "details" in body
    return body


@pytest.fixture
def echo(api):
    response = api.post("/api/v1/functions/", create_body(), format="json")
    assert response.status_code == 201, response.content
    return response.json()


@pytest.fixture
def published(api, echo):
    api.post("/api/v1/functions/echo/versions/", {}, format="json")
    api.patch("/api/v1/functions/echo/", {"timeout_s": 9}, format="json")
    api.post("/api/v1/functions/echo/versions/", {}, format="json")
    return echo


# ---- authentication -----------------------------------------------------------------------------------------


def test_it_asks_for_credentials():
    assert_error(APIClient().get("/api/v1/functions/"), 401, "NotAuthenticated")


def test_it_refuses_a_wrong_token():
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert_error(client.get("/api/v1/functions/"), 401, "AuthenticationFailed")


def test_a_session_post_without_csrf_is_refused(user):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    assert client.get("/api/v1/functions/").status_code == 200
    assert_error(client.post("/api/v1/functions/", create_body(), format="json"), 403, "AccessDenied")


# ---- functions ----------------------------------------------------------------------------------------------


def test_it_creates_a_function_from_inline_source(api):
    response = api.post("/api/v1/functions/", create_body(memory_mb=256, environment={"KEY": "v"}), format="json")
    assert response.status_code == 201
    body = response.json()
    assert body["name"] == "echo" and body["memory_mb"] == 256 and body["version"] == "$LATEST"
    assert body["environment"] == {"KEY": "********"}
    assert len(body["code_sha256"]) == 64


def test_it_creates_a_function_from_a_base64_zip(api):
    encoded = base64.b64encode(make_zip({"app.py": SOURCE})).decode()
    response = api.post("/api/v1/functions/", create_body(code={"zip_base64": encoded}), format="json")
    assert response.status_code == 201


def test_api_output_never_contains_an_environment_value(api):
    api.post("/api/v1/functions/", create_body(environment={"SECRET": "s3cr3t-value"}), format="json")
    for url in ["/api/v1/functions/", "/api/v1/functions/echo/"]:
        assert b"s3cr3t-value" not in api.get(url).content
    api.post("/api/v1/functions/echo/versions/", {}, format="json")
    assert b"s3cr3t-value" not in api.get("/api/v1/functions/echo/versions/1/").content


@pytest.mark.parametrize(
    ("body", "status", "type_"),
    [
        (create_body(name="bad name"), 400, "InvalidParameterValue"),
        (create_body(name=""), 400, "InvalidParameterValue"),
        (create_body(memory_mb=64), 400, "InvalidParameterValue"),
        (create_body(memory_mb="lots"), 400, "InvalidParameterValue"),
        (create_body(timeout_s=1000), 400, "InvalidParameterValue"),
        (create_body(runtime="nodejs20.x"), 400, "InvalidParameterValue"),
        (create_body(environment={"A": "x" * 5000}), 400, "InvalidParameterValue"),
        (create_body(environment=["A"]), 400, "InvalidParameterValue"),
        (create_body(handler="nodot"), 400, "InvalidParameterValue"),
        (create_body(handler="missing.handler"), 400, "HandlerModuleNotFound"),
        (create_body(code={"files": {"app.py": "def handler(:\n"}}), 400, "UserCodeSyntaxError"),
        (create_body(code={"zip_base64": "!!!notbase64"}), 400, "InvalidParameterValue"),
        (create_body(code={"zip_base64": base64.b64encode(b"not a zip").decode()}), 400, "InvalidZipFile"),
        (
            create_body(code={"zip_base64": base64.b64encode(make_zip({"../evil.py": "x"})).decode()}),
            400,
            "InvalidZipFile",
        ),
        (create_body(code={}), 400, "InvalidParameterValue"),
        (create_body(code={"files": {"app.py": SOURCE}, "zip_base64": "eA=="}), 400, "InvalidParameterValue"),
        (create_body(surprise=True), 400, "InvalidParameterValue"),
        (create_body(code={"files": {"app.py": SOURCE}, "extra": 1}), 400, "InvalidParameterValue"),
        ({"name": "echo"}, 400, "InvalidParameterValue"),
        (["not", "an", "object"], 400, "InvalidRequestContent"),
    ],
)
def test_create_rejects_bad_input_with_a_stable_type(api, body, status, type_):
    response = api.post("/api/v1/functions/", body, format="json")
    assert_error(response, status, type_)
    assert not Function.objects.exists()


def test_create_rejects_malformed_json(api):
    response = api.post("/api/v1/functions/", "{not json", content_type="application/json")
    assert_error(response, 400, "InvalidRequestContent")


def test_create_rejects_an_unknown_content_type(api):
    response = api.post("/api/v1/functions/", "name=x", content_type="text/plain")
    assert_error(response, 415, "UnsupportedMediaType")


def test_create_rejects_inline_source_over_the_editor_limit(api):
    body = create_body(code={"files": {"app.py": SOURCE, "big.txt": "x" * (3 * 1024 * 1024 + 1)}})
    assert_error(api.post("/api/v1/functions/", body, format="json"), 413, "RequestTooLarge")


def test_create_refuses_a_duplicate_name(api, echo):
    assert_error(api.post("/api/v1/functions/", create_body(), format="json"), 409, "ResourceConflict")


def test_it_lists_only_the_callers_functions_with_pagination_and_filters(api, other_api):
    for name in ["alpha", "beta", "gamma"]:
        api.post("/api/v1/functions/", create_body(name=name), format="json")
    other_api.post("/api/v1/functions/", create_body(name="theirs"), format="json")
    body = api.get("/api/v1/functions/?limit=2").json()
    assert body["count"] == 3 and len(body["results"]) == 2 and body["next"]
    assert [f["name"] for f in api.get("/api/v1/functions/?search=amm").json()["results"]] == ["gamma"]
    assert api.get("/api/v1/functions/?runtime=python3.11").json()["count"] == 3
    assert [f["name"] for f in other_api.get("/api/v1/functions/").json()["results"]] == ["theirs"]


def test_it_updates_the_configuration(api, echo):
    response = api.patch("/api/v1/functions/echo/", {"memory_mb": 512, "description": "d"}, format="json")
    assert response.status_code == 200
    assert response.json()["memory_mb"] == 512
    assert response.json()["revision_id"] != echo["revision_id"]


@pytest.mark.parametrize(
    ("body", "status", "type_"),
    [
        ({"memory_mb": 99999}, 400, "InvalidParameterValue"),
        ({"name": "rename"}, 400, "InvalidParameterValue"),
        ({"handler": "nope.handler"}, 400, "HandlerModuleNotFound"),
        ({"reserved_concurrency": -1}, 400, "InvalidParameterValue"),
        ({"revision_id": "00000000-0000-0000-0000-000000000000"}, 412, "PreconditionFailed"),
        ({"revision_id": "not-a-uuid"}, 400, "InvalidParameterValue"),
    ],
)
def test_update_rejects_bad_input(api, echo, body, status, type_):
    assert_error(api.patch("/api/v1/functions/echo/", body, format="json"), status, type_)


def test_it_deletes_a_function(api, echo):
    assert api.delete("/api/v1/functions/echo/").status_code == 204
    assert_error(api.get("/api/v1/functions/echo/"), 404, "ResourceNotFound")


# ---- code ---------------------------------------------------------------------------------------------------


def test_it_updates_code_from_a_multipart_zip(api, echo):
    upload = io.BytesIO(make_zip({"app.py": "def handler(event, context):\n    return 2\n"}))
    upload.name = "code.zip"
    response = api.put("/api/v1/functions/echo/code/", {"zip": upload}, format="multipart")
    assert response.status_code == 200, response.content
    assert response.json()["code_sha256"] != echo["code_sha256"]


def test_it_updates_code_from_base64_and_inline_source(api, echo):
    encoded = base64.b64encode(make_zip({"app.py": "def handler(e, c):\n    return 3\n"})).decode()
    first = api.put("/api/v1/functions/echo/code/", {"zip_base64": encoded}, format="json")
    second = api.put(
        "/api/v1/functions/echo/code/", {"files": {"app.py": "def handler(e, c):\n    return 4\n"}}, format="json"
    )
    assert first.status_code == second.status_code == 200
    assert first.json()["code_sha256"] != second.json()["code_sha256"]


@pytest.mark.parametrize(
    ("files", "type_"),
    [
        ({"other.py": SOURCE}, "HandlerModuleNotFound"),
        ({"app.py": "def handler(:"}, "UserCodeSyntaxError"),
        ({"/abs/app.py": SOURCE}, "InvalidZipFile"),
    ],
)
def test_code_update_rejects_bad_zips(api, echo, files, type_):
    upload = io.BytesIO(make_zip(files))
    upload.name = "code.zip"
    assert_error(api.put("/api/v1/functions/echo/code/", {"zip": upload}, format="multipart"), 400, type_)
    assert api.get("/api/v1/functions/echo/").json()["code_sha256"] == echo["code_sha256"]


def test_code_update_rejects_a_zip_with_a_link(api, echo):
    upload = io.BytesIO(make_zip({"app.py": SOURCE}, symlinks={"link": "/etc/passwd"}))
    upload.name = "code.zip"
    assert_error(api.put("/api/v1/functions/echo/code/", {"zip": upload}, format="multipart"), 400, "InvalidZipFile")


def test_code_update_rejects_unknown_fields(api, echo):
    assert_error(
        api.put("/api/v1/functions/echo/code/", {"files": {"app.py": SOURCE}, "x": 1}, format="json"),
        400,
        "InvalidParameterValue",
    )


# ---- versions -----------------------------------------------------------------------------------------------


def test_it_publishes_and_lists_versions(api, echo):
    first = api.post("/api/v1/functions/echo/versions/", {"description": "first"}, format="json")
    assert first.status_code == 201 and first.json()["version"] == "1"
    again = api.post("/api/v1/functions/echo/versions/", {}, format="json")
    assert again.status_code == 200 and again.json()["version"] == "1"
    api.patch("/api/v1/functions/echo/", {"memory_mb": 256}, format="json")
    assert api.post("/api/v1/functions/echo/versions/", {}, format="json").json()["version"] == "2"
    listed = api.get("/api/v1/functions/echo/versions/").json()
    assert [(v["version"], v["memory_mb"]) for v in listed["results"]] == [("1", 128), ("2", 256)]
    assert api.get("/api/v1/functions/echo/versions/1/").json()["description"] == "first"


def test_a_published_version_does_not_follow_latest(api, echo):
    api.post("/api/v1/functions/echo/versions/", {}, format="json")
    api.patch("/api/v1/functions/echo/", {"memory_mb": 2048, "handler": "app.handler"}, format="json")
    api.put("/api/v1/functions/echo/code/", {"files": {"app.py": "def handler(e, c):\n    return 9\n"}}, format="json")
    version = api.get("/api/v1/functions/echo/versions/1/").json()
    assert version["memory_mb"] == 128 and version["code_sha256"] == echo["code_sha256"]


def test_versions_have_no_update_or_delete(api, published):
    assert_error(
        api.patch("/api/v1/functions/echo/versions/1/", {"memory_mb": 512}, format="json"), 405, "MethodNotAllowed"
    )
    assert_error(api.delete("/api/v1/functions/echo/versions/1/"), 405, "MethodNotAllowed")


def test_publish_rejects_bad_input(api, echo):
    assert_error(
        api.post("/api/v1/functions/echo/versions/", {"bogus": 1}, format="json"), 400, "InvalidParameterValue"
    )
    assert_error(api.get("/api/v1/functions/echo/versions/7/"), 404, "ResourceNotFound")


# ---- aliases ------------------------------------------------------------------------------------------------


def test_it_manages_an_alias_with_weights(api, published):
    created = api.post(
        "/api/v1/functions/echo/aliases/",
        {"name": "live", "version": 1, "additional_version": 2, "additional_weight": 0.1},
        format="json",
    )
    assert created.status_code == 201
    assert created.json()["additional_version"] == "2"
    moved = api.patch("/api/v1/functions/echo/aliases/live/", {"version": 2, "additional_version": None}, format="json")
    assert moved.status_code == 200
    assert (moved.json()["version"], moved.json()["additional_version"]) == ("2", None)
    assert api.get("/api/v1/functions/echo/aliases/").json()["count"] == 1
    assert api.get("/api/v1/functions/echo/aliases/live/").json()["version"] == "2"
    assert api.delete("/api/v1/functions/echo/aliases/live/").status_code == 204
    assert_error(api.get("/api/v1/functions/echo/aliases/live/"), 404, "ResourceNotFound")


@pytest.mark.parametrize(
    ("body", "status", "type_"),
    [
        ({"name": "live", "version": 1, "additional_version": 2, "additional_weight": 2}, 400, "InvalidParameterValue"),
        (
            {"name": "live", "version": 1, "additional_version": 1, "additional_weight": 0.5},
            400,
            "InvalidParameterValue",
        ),
        ({"name": "live", "version": 99}, 404, "ResourceNotFound"),
        ({"name": "42", "version": 1}, 400, "InvalidParameterValue"),
        ({"name": "live", "version": "one"}, 400, "InvalidParameterValue"),
        ({"name": "live", "version": 1, "color": "blue"}, 400, "InvalidParameterValue"),
    ],
)
def test_alias_create_rejects_bad_input(api, published, body, status, type_):
    assert_error(api.post("/api/v1/functions/echo/aliases/", body, format="json"), status, type_)


def test_alias_names_are_unique_per_function(api, published):
    api.post("/api/v1/functions/echo/aliases/", {"name": "live", "version": 1}, format="json")
    response = api.post("/api/v1/functions/echo/aliases/", {"name": "live", "version": 2}, format="json")
    assert_error(response, 409, "ResourceConflict")


# ---- test events --------------------------------------------------------------------------------------------


def test_it_manages_test_events(api, echo):
    created = api.post("/api/v1/functions/echo/test-events/", {"name": "hello", "event": {"a": [1, 2]}}, format="json")
    assert created.status_code == 201 and created.json()["event"] == {"a": [1, 2]}
    updated = api.put("/api/v1/functions/echo/test-events/hello/", {"event": "just text"}, format="json")
    assert updated.json()["event"] == "just text"
    assert api.get("/api/v1/functions/echo/test-events/").json()["count"] == 1
    assert api.get("/api/v1/functions/echo/test-events/hello/").json()["event"] == "just text"
    assert api.delete("/api/v1/functions/echo/test-events/hello/").status_code == 204
    assert not TestEvent.objects.exists()


@pytest.mark.parametrize(
    ("body", "type_"),
    [
        ({"name": "has space", "event": {}}, "InvalidParameterValue"),
        ({"name": "x" * 26, "event": {}}, "InvalidParameterValue"),
        ({"event": {}}, "InvalidParameterValue"),
        ({"name": "ok", "event": {}, "more": 1}, "InvalidParameterValue"),
    ],
)
def test_test_event_create_rejects_bad_input(api, echo, body, type_):
    assert_error(api.post("/api/v1/functions/echo/test-events/", body, format="json"), 400, type_)


def test_test_events_over_the_size_limit_are_refused(api, echo):
    body = {"name": "big", "event": {"blob": "x" * (1024 * 1024)}}
    assert_error(api.post("/api/v1/functions/echo/test-events/", body, format="json"), 413, "RequestTooLarge")


# ---- tenancy ------------------------------------------------------------------------------------------------


def _theirs(other_user):
    function = services.function_create(
        owner=other_user, name="theirs", handler="app.handler", code=services.CodeUpload(files={"app.py": SOURCE})
    )
    services.version_publish(function=function)
    services.alias_create(function=function, name="live", version=1)
    services.test_event_create(function=function, name="ev", event={})
    return function


CROSS_TENANT_REQUESTS: list[tuple[str, str, dict | None]] = [
    ("get", "/api/v1/functions/theirs/", None),
    ("patch", "/api/v1/functions/theirs/", {"memory_mb": 256}),
    ("delete", "/api/v1/functions/theirs/", None),
    ("put", "/api/v1/functions/theirs/code/", {"files": {"app.py": SOURCE}}),
    ("get", "/api/v1/functions/theirs/versions/", None),
    ("post", "/api/v1/functions/theirs/versions/", {}),
    ("get", "/api/v1/functions/theirs/versions/1/", None),
    ("get", "/api/v1/functions/theirs/aliases/", None),
    ("post", "/api/v1/functions/theirs/aliases/", {"name": "mine", "version": 1}),
    ("get", "/api/v1/functions/theirs/aliases/live/", None),
    ("patch", "/api/v1/functions/theirs/aliases/live/", {"version": 1}),
    ("delete", "/api/v1/functions/theirs/aliases/live/", None),
    ("get", "/api/v1/functions/theirs/test-events/", None),
    ("post", "/api/v1/functions/theirs/test-events/", {"name": "x", "event": {}}),
    ("get", "/api/v1/functions/theirs/test-events/ev/", None),
    ("put", "/api/v1/functions/theirs/test-events/ev/", {"event": {}}),
    ("delete", "/api/v1/functions/theirs/test-events/ev/", None),
]


@pytest.mark.parametrize(("method", "url", "body"), CROSS_TENANT_REQUESTS)
def test_another_tenants_objects_are_not_found(api, other_user, method, url, body):
    function = _theirs(other_user)
    response = getattr(api, method)(url, body, format="json") if body is not None else getattr(api, method)(url)
    assert_error(response, 404, "ResourceNotFound")
    function.refresh_from_db()
    assert function.memory_mb == 128 and function.versions.count() == 1 and function.aliases.count() == 1
    assert function.test_events.count() == 1


def test_lists_never_show_another_tenants_functions(api, other_user):
    _theirs(other_user)
    assert api.get("/api/v1/functions/").json()["count"] == 0
    assert api.get("/api/v1/functions/?search=theirs").json()["count"] == 0


def test_the_owner_cannot_be_assigned_through_the_api(api, user, other_user):
    response = api.post("/api/v1/functions/", create_body(owner=other_user.pk), format="json")
    assert_error(response, 400, "InvalidParameterValue")


# ---- schema and docs ----------------------------------------------------------------------------------------


def test_the_openapi_schema_documents_every_endpoint(api):
    response = api.get("/api/v1/schema/?format=json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in [
        "/api/v1/functions/",
        "/api/v1/functions/{name}/",
        "/api/v1/functions/{name}/code/",
        "/api/v1/functions/{name}/versions/",
        "/api/v1/functions/{name}/aliases/{alias}/",
        "/api/v1/functions/{name}/test-events/{event}/",
    ]:
        assert path in paths


def test_the_docs_page_loads_its_assets_locally(api, client, user):
    client.force_login(user)
    page = client.get("/api/v1/docs/").content.decode()
    assert "swagger-ui" in page
    assert "cdn" not in page.lower() and "unpkg" not in page.lower()
    asset = "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js"
    assert asset in page


def test_an_unknown_api_path_is_a_json_404(api):
    assert_error(api.get("/api/v1/nothing-here/"), 404, "ResourceNotFound")


# ---- paths and the error format -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url", "body", "status"),
    [
        ("post", "/api/v1/functions", create_body(name="other"), 201),
        ("patch", "/api/v1/functions/echo", {"timeout_s": 9}, 200),
        ("put", "/api/v1/functions/echo/code", {"files": {"app.py": SOURCE + "\n"}}, 200),
        ("delete", "/api/v1/functions/echo", None, 204),
    ],
)
def test_a_path_without_its_trailing_slash_is_served_like_the_path_with_it(
    api, echo, settings, method, url, body, status
):
    settings.DEBUG = True  # as in development, where APPEND_SLASH cannot redirect a POST
    response = getattr(api, method)(url, body, format="json") if body is not None else getattr(api, method)(url)
    assert response.status_code == status, response.content


def test_every_api_path_ends_with_a_slash(api):
    paths = api.get("/api/v1/schema/?format=json").json()["paths"]
    assert [path for path in paths if not path.endswith("/")] == []


def test_an_unknown_api_path_is_a_json_404_even_in_debug_mode(api, settings):
    settings.DEBUG = True
    body = assert_error(api.post("/api/v1/nothing-here", {}, format="json"), 404, "ResourceNotFound")
    assert "/api/v1/nothing-here" in body["message"]
    assert_error(api.get("/api/v1/functions/echo/versions/latest/"), 404, "ResourceNotFound")


def test_an_error_django_raises_before_the_api_sees_the_request_is_in_the_error_format(api):
    assert_error(api.get("/api/v1/functions/", HTTP_HOST="evil.example"), 400, "InvalidRequest")


def test_a_bug_behind_the_api_is_a_json_500_without_the_debug_page(api, settings, monkeypatch):
    settings.DEBUG = True
    monkeypatch.setattr("functions_app.selectors.function_list", lambda **kwargs: 1 / 0)
    api.raise_request_exception = False
    body = assert_error(api.get("/api/v1/functions/"), 500, "InternalError")
    assert "ZeroDivisionError" not in body["message"]


# ---- dead letters -------------------------------------------------------------------------------------------


def make_invocation(owner, function=None, **fields):
    function = function or Function.objects.get(owner=owner)
    return Invocation.objects.create(
        **{"owner": owner, "function": function, "payload": "{}", "memory_mb": 128, **fields}
    )


def make_dead_letter(owner, payload='{"n": 1}', result='{"errorType": "Boom"}'):
    function = services.function_create(
        owner=owner, name="failing", handler="app.handler", code=services.CodeUpload(files={"app.py": SOURCE})
    )
    failed = make_invocation(
        owner, function=function, invocation_type="async", status="failed", payload=payload, result=result
    )
    return DeadLetter.objects.create(
        owner=owner,
        function=function,
        invocation=failed,
        condition="RetriesExhausted",
        request_payload=payload,
        error_type="Boom",
        error_result=result,
        attempts=3,
    )


def test_replaying_a_dead_letter_twice_runs_it_once_and_returns_the_first_replay(api, user):
    letter = make_dead_letter(user)
    first = api.post(f"/api/v1/dead-letters/{letter.pk}/replay/")
    assert first.status_code == 202, first.content
    again = api.post(f"/api/v1/dead-letters/{letter.pk}/replay/")
    assert again.status_code == 200, again.content
    assert again.json()["invocation_id"] == first.json()["invocation_id"]
    assert again["Location"] == first["Location"]
    assert Invocation.objects.count() == 2
    assert str(DeadLetter.objects.get(pk=letter.pk).replayed_as_id) == first.json()["invocation_id"]


def test_two_racing_replays_of_one_dead_letter_run_it_once(user):
    letter = make_dead_letter(user)
    read_by_the_other_request = DeadLetter.objects.get(pk=letter.pk)
    first = dead_letter_replay(dead_letter=letter)
    second = dead_letter_replay(dead_letter=read_by_the_other_request)
    assert second.pk == first.pk
    assert Invocation.objects.count() == 2
    assert DeadLetter.objects.get(pk=letter.pk).replayed_as_id == first.pk


# ---- strict JSON input --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "kind"),
    [
        (create_body(network_enabled="yes"), "network_enabled", "boolean"),
        (create_body(network_enabled=1), "network_enabled", "boolean"),
        (create_body(memory_mb="256"), "memory_mb", "integer"),
        (create_body(memory_mb=256.0), "memory_mb", "integer"),
        (create_body(timeout_s=True), "timeout_s", "integer"),
        (create_body(reserved_concurrency="5"), "reserved_concurrency", "integer"),
        (create_body(code={"files": {"app.py": 123}}), "code", "string"),
        (create_body(code={"zip_base64": 5}), "code", "string"),
        (create_body(environment={"KEY": 1}), "environment", "string"),
        (create_body(description=5), "description", "string"),
        (create_body(handler=["app.handler"]), "handler", "string"),
        (create_body(name=12), "name", "string"),
        (create_body(on_failure_destination=False), "on_failure_destination", "string"),
    ],
)
def test_create_takes_only_the_json_type_of_each_field(api, body, field, kind):
    error = assert_error(api.post("/api/v1/functions/", body, format="json"), 400, "InvalidParameterValue")
    assert field in error["details"]
    assert error["message"].startswith(field) and f"Must be a JSON {kind}" in error["message"]
    assert not Function.objects.exists()


@pytest.mark.parametrize(
    ("url", "body", "field"),
    [
        ("/api/v1/functions/echo/", {"max_retry_attempts": "1"}, "max_retry_attempts"),
        ("/api/v1/functions/echo/", {"revision_id": 5}, "revision_id"),
        ("/api/v1/functions/echo/versions/", {"description": 1}, "description"),
        ("/api/v1/functions/echo/code/", {"files": {"app.py": SOURCE}, "revision_id": 5}, "revision_id"),
        ("/api/v1/functions/echo/test-events/", {"name": 1, "event": {}}, "name"),
    ],
)
def test_every_write_takes_only_the_json_type_of_each_field(api, echo, url, body, field):
    method = api.put if url.endswith("/code/") else api.patch if url.endswith("echo/") else api.post
    error = assert_error(method(url, body, format="json"), 400, "InvalidParameterValue")
    assert field in error["details"]
    assert api.get("/api/v1/functions/echo/").json()["revision_id"] == echo["revision_id"]


def test_text_is_taken_as_sent_without_trimming(api):
    body = create_body(environment={"PADDED": "  x  "}, description=" d ")
    assert api.post("/api/v1/functions/", body, format="json").status_code == 201
    function = Function.objects.get()
    assert function.description == " d "
    assert services.env_decrypt(function.environment_ciphertext) == {"PADDED": "  x  "}


def test_a_destination_must_name_an_existing_function_of_the_same_owner(api, other_api, echo):
    other_api.post("/api/v1/functions/", create_body(name="theirs"), format="json")
    for destination in ["function:nosuch", "function:theirs"]:
        body = create_body(name="next", on_failure_destination=destination)
        error = assert_error(api.post("/api/v1/functions/", body, format="json"), 400, "InvalidParameterValue")
        assert "on_failure_destination" in error["details"] and destination[9:] in error["message"]
        response = api.patch("/api/v1/functions/echo/", {"on_success_destination": destination}, format="json")
        assert_error(response, 400, "InvalidParameterValue")
    assert Function.objects.filter(name="next").count() == 0
    assert api.get("/api/v1/functions/echo/").json()["on_success_destination"] == ""


def test_a_destination_may_name_another_function_or_the_function_itself(api, echo):
    body = create_body(name="self", on_success_destination="function:self", on_failure_destination="function:echo")
    assert api.post("/api/v1/functions/", body, format="json").status_code == 201
    response = api.patch("/api/v1/functions/echo/", {"on_failure_destination": "function:self"}, format="json")
    assert response.status_code == 200, response.content


def test_a_function_named_as_a_destination_can_be_deleted_and_the_dangling_name_blocks_no_other_change(api, echo):
    api.post("/api/v1/functions/", create_body(name="next", on_failure_destination="function:echo"), format="json")
    assert api.delete("/api/v1/functions/echo/").status_code == 204
    response = api.patch("/api/v1/functions/next/", {"memory_mb": 256}, format="json")
    assert response.status_code == 200 and response.json()["on_failure_destination"] == "function:echo"


@pytest.mark.parametrize(
    ("method", "url", "content_type", "expected"),
    [
        ("post", "/api/v1/functions/", "application/x-www-form-urlencoded", ["application/json"]),
        ("patch", "/api/v1/functions/echo/", "application/x-www-form-urlencoded", ["application/json"]),
        ("post", "/api/v1/functions/echo/versions/", "text/plain", ["application/json"]),
        ("put", "/api/v1/functions/echo/code/", "text/plain", ["application/json", "multipart/form-data"]),
    ],
)
def test_a_body_that_is_not_json_is_refused_with_the_content_type_to_send(
    api, echo, method, url, content_type, expected
):
    # What `curl -d '{...}'` sends: JSON text labelled as a form.
    response = getattr(api, method)(url, '{"memory_mb": 256}', content_type=content_type)
    error = assert_error(response, 415, "UnsupportedMediaType")
    assert "application/json" in error["message"] and content_type in error["message"]
    assert error["details"] == {"content_type": content_type, "expected": expected}


def dry_run(api, query="", body="{}", content_type="application/json"):
    """An invoke that checks the request and runs nothing (no worker needed)."""
    url = f"/api/v1/functions/echo/invoke/{query}"
    return api.post(url, body, content_type=content_type, HTTP_X_INVOCATION_TYPE="DryRun")


def test_the_invoke_endpoint_takes_the_event_whatever_its_content_type(api, echo):
    response = dry_run(api, body='{"a": 1}', content_type="application/x-www-form-urlencoded")
    assert response.status_code == 204, response.content


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/invocations/?cold=yes",
        "/api/v1/dead-letters/?replayed=1",
        "/api/v1/functions/?limit=ten",
        "/api/v1/functions/?offset=-1",
        "/api/v1/invocations/?limit=0",
    ],
)
def test_a_query_parameter_of_the_wrong_type_is_refused_not_ignored(api, url):
    parameter = url.split("?")[1].split("=")[0]
    error = assert_error(api.get(url), 400, "InvalidParameterValue")
    assert parameter in error["details"]


# ---- response shapes ----------------------------------------------------------------------------------------


def test_version_labels_are_strings_everywhere_in_output(api, published, user):
    api.post(
        "/api/v1/functions/echo/aliases/",
        {"name": "live", "version": 1, "additional_version": 2, "additional_weight": 0.5},
        format="json",
    )
    alias = api.get("/api/v1/functions/echo/aliases/live/").json()
    assert (alias["version"], alias["additional_version"]) == ("1", "2")
    assert [v["version"] for v in api.get("/api/v1/functions/echo/versions/").json()["results"]] == ["1", "2"]
    assert api.get("/api/v1/functions/echo/").json()["version"] == "$LATEST"
    make_invocation(user, executed_version="2")
    assert api.get("/api/v1/invocations/").json()["results"][0]["executed_version"] == "2"


def test_an_alias_takes_a_version_as_its_label_or_its_number(api, published):
    body = {"name": "live", "version": "1", "additional_version": "2", "additional_weight": 0.5}
    created = api.post("/api/v1/functions/echo/aliases/", body, format="json")
    assert created.status_code == 201, created.content
    assert (created.json()["version"], created.json()["additional_version"]) == ("1", "2")
    moved = api.patch("/api/v1/functions/echo/aliases/live/", {"version": 2, "additional_version": 1}, format="json")
    assert (moved.json()["version"], moved.json()["additional_version"]) == ("2", "1")


@pytest.mark.parametrize("version", ["$LATEST", "1.0", "01", "1\n", " 1", "one", True, 1.5, 0, -1, None])
def test_an_alias_refuses_what_is_not_a_published_version_label(api, published, version):
    body = {"name": "live", "version": version}
    error = assert_error(api.post("/api/v1/functions/echo/aliases/", body, format="json"), 400, "InvalidParameterValue")
    assert "version" in error["details"]


def test_a_qualifier_that_is_not_a_plain_number_is_taken_as_an_alias_name(api, echo):
    assert_error(dry_run(api, "?qualifier=%C2%B2"), 404, "ResourceNotFound")  # "²", which int() refuses


def test_an_invocations_payload_and_result_are_json_values_not_json_text(api, user, echo):
    invocation = make_invocation(user, payload='{"a": [1, 2]}', result='"ok"')
    body = api.get(f"/api/v1/invocations/{invocation.pk}/").json()
    assert (body["payload"], body["result"], body["unparsed"]) == ({"a": [1, 2]}, "ok", {})


def test_an_invocation_not_finished_has_a_null_result(api, user, echo):
    invocation = make_invocation(user)
    body = api.get(f"/api/v1/invocations/{invocation.pk}/").json()
    assert (body["payload"], body["result"], body["unparsed"]) == ({}, None, {})


def test_a_stored_text_that_is_not_json_is_null_with_its_text_under_unparsed(api, user, echo):
    invocation = make_invocation(user, result='{"cut short')
    body = api.get(f"/api/v1/invocations/{invocation.pk}/").json()
    assert (body["result"], body["unparsed"]) == (None, {"result": '{"cut short'})


def test_a_dead_letters_payload_and_error_are_json_values_not_json_text(api, user):
    letter = make_dead_letter(user, payload='{"n": 1}', result='{"errorType": "Boom"}')
    body = api.get(f"/api/v1/dead-letters/{letter.pk}/").json()
    assert (body["request_payload"], body["error_result"], body["unparsed"]) == ({"n": 1}, {"errorType": "Boom"}, {})
    listed = api.get("/api/v1/dead-letters/").json()["results"][0]
    assert listed["request_payload"] == {"n": 1}


# A lone surrogate ("\ud800") is valid JSON but not text that UTF-8 can carry: taken in, it used to end in a 500.
LONE_SURROGATE = '"\\ud800"'


@pytest.mark.parametrize(
    ("url", "body"),
    [
        (
            "/api/v1/functions/",
            f'{{"name": "e", "handler": "app.handler", "code": {{"files": {{{LONE_SURROGATE}: ""}}}}}}',
        ),
        ("/api/v1/functions/", f"{{{LONE_SURROGATE}: 1}}"),
        ("/api/v1/functions/echo/test-events/", f'{{"name": "e", "event": {{"a": {LONE_SURROGATE}}}}}'),
    ],
)
def test_a_body_holding_a_lone_surrogate_is_refused_as_invalid_content(api, echo, url, body):
    assert_error(api.post(url, body, content_type="application/json"), 400, "InvalidRequestContent")


def test_stored_json_holding_a_lone_surrogate_is_shown_under_unparsed(api, user, echo):
    invocation = make_invocation(user, payload=f'{{"a": {LONE_SURROGATE}}}', result=LONE_SURROGATE)
    body = api.get(f"/api/v1/invocations/{invocation.pk}/").json()
    assert (body["payload"], body["result"]) == (None, None)
    assert body["unparsed"] == {"payload": f'{{"a": {LONE_SURROGATE}}}', "result": LONE_SURROGATE}
    TestEvent.objects.create(function=Function.objects.get(), name="odd", event_json=LONE_SURROGATE)
    event = api.get("/api/v1/functions/echo/test-events/odd/").json()
    assert (event["event"], event["unparsed"]) == (None, {"event": LONE_SURROGATE})
