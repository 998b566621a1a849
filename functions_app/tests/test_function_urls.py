"""Function URLs: configured through the REST API, served at /fn/{url_id}/ (and on a wildcard domain) by a real
worker running real sandboxes; the handler sees Lambda's 2.0 event and its result becomes the HTTP response."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from functions_app.models import FunctionUrl, Invocation

pytestmark = [pytest.mark.django_db(transaction=True)]

ECHO = """
import json

def handler(event, context):
    if event["rawPath"] == "/fail":
        raise ValueError("asked to fail")
    if event["rawPath"] == "/malformed":
        return {"statusCode": "two hundred"}
    return {
        "statusCode": 201,
        "headers": {"Content-Type": "application/json", "X-Handled-By": context.function_name},
        "cookies": ["seen=1; Path=/", "flavour=oat; HttpOnly"],
        "body": json.dumps(event),
    }
"""


def create_function(api, name="web", source=ECHO):
    body = {"name": name, "handler": "app.handler", "code": {"files": {"app.py": source}}}
    assert api.post("/api/v1/functions/", body, format="json").status_code == 201


def create_url(api, name="web", qualifier="", **fields):
    body = {"auth_type": "NONE", **fields}
    response = api.post(f"/api/v1/functions/{name}/url/?qualifier={qualifier}", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def path_of(url: str) -> str:
    return "/" + url.split("/", 3)[3]


# ---- configuration (no worker: nothing runs) ----------------------------------------------------------------


def test_a_function_url_is_created_read_updated_and_deleted_through_the_api(api):
    create_function(api)
    created = create_url(api, cors={"allow_origins": ["https://app.example.com"], "max_age": 60})
    assert created["url"] == f"http://testserver/fn/{created['url_id']}/"
    assert len(created["url_id"]) == 32 and created["qualifier"] == "$LATEST" and created["auth_type"] == "NONE"
    assert created["cors"]["allow_origins"] == ["https://app.example.com"] and created["cors"]["max_age"] == 60
    assert api.get("/api/v1/functions/web/url/").json()["url_id"] == created["url_id"]
    updated = api.patch("/api/v1/functions/web/url/", {"auth_type": "TOKEN", "cors": {}}, format="json")
    assert updated.status_code == 200 and updated.json()["auth_type"] == "TOKEN" and updated.json()["cors"] == {}
    assert api.delete("/api/v1/functions/web/url/").status_code == 204
    assert api.get("/api/v1/functions/web/url/").status_code == 404


def test_bad_url_configurations_get_a_clear_error_and_change_nothing(api, other_api):
    create_function(api)
    created = create_url(api)
    conflict = api.post("/api/v1/functions/web/url/", {"auth_type": "NONE"}, format="json")
    assert conflict.status_code == 409 and conflict.json()["type"] == "ResourceConflict"
    origin = api.patch("/api/v1/functions/web/url/", {"cors": {"allow_origins": ["example.com/x"]}}, format="json")
    assert origin.status_code == 400 and "cors.allow_origins" in origin.json()["details"]
    auth = api.post("/api/v1/functions/web/url/?qualifier=live", {"auth_type": "OPEN"}, format="json")
    assert auth.status_code == 400 and "auth_type" in auth.json()["details"]
    assert api.post("/api/v1/functions/web/url/?qualifier=1", {"auth_type": "NONE"}, format="json").status_code == 400
    assert (
        api.post("/api/v1/functions/web/url/?qualifier=nope", {"auth_type": "NONE"}, format="json").status_code == 404
    )
    stream = api.patch("/api/v1/functions/web/url/", {"invoke_mode": "STREAMING"}, format="json")
    assert stream.status_code == 400 and "invoke_mode" in stream.json()["details"]
    assert api.post("/api/v1/functions/nope/url/", {"auth_type": "NONE"}, format="json").status_code == 404
    assert other_api.get("/api/v1/functions/web/url/").status_code == 404  # another tenant's: not found
    assert list(FunctionUrl.objects.values_list("url_id", "auth_type", "cors")) == [(created["url_id"], "NONE", {})]


def test_an_alias_has_its_own_url_and_deleting_the_alias_deletes_it(api):
    create_function(api)
    assert api.post("/api/v1/functions/web/versions/", {}, format="json").status_code == 201
    assert api.post("/api/v1/functions/web/aliases/", {"name": "live", "version": 1}, format="json").status_code == 201
    latest, live = create_url(api), create_url(api, qualifier="live")
    assert live["qualifier"] == "live" and live["url_id"] != latest["url_id"]
    assert api.delete("/api/v1/functions/web/aliases/live/").status_code == 204
    assert list(FunctionUrl.objects.values_list("url_id", flat=True)) == [latest["url_id"]]


def test_with_a_wildcard_domain_the_api_gives_the_host_address(api, settings):
    settings.FUNCTION_URL_DOMAIN = "fn.example.com"
    create_function(api)
    created = create_url(api)
    assert created["url"] == f"http://{created['url_id']}.fn.example.com/"


def test_requests_that_never_reach_the_function_are_answered_at_the_edge(api):
    create_function(api)
    url = create_url(api, cors={"allow_origins": ["https://app.example.com"], "allow_methods": ["POST"]})
    web = Client()
    assert web.get("/fn/0123456789abcdef0123456789abcdef/").status_code == 404
    preflight = web.options(
        path_of(url["url"]) + "orders",
        headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 204 and preflight["Access-Control-Allow-Origin"] == "https://app.example.com"
    traversal = web.get(path_of(url["url"]) + "a/%2e%2e/%2e%2e/api/v1/functions/")
    assert traversal.status_code == 400 and ".." in traversal.json()["message"]
    too_large = web.post(path_of(url["url"]), b"x" * (6 * 1024 * 1024 + 1), content_type="application/octet-stream")
    assert too_large.status_code == 413 and too_large.json()["message"].startswith("Request Entity Too Large")
    assert Invocation.objects.count() == 0  # nothing ran, nothing was queued


# ---- serving (a real worker) --------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_request_reaches_the_handler_as_the_2_0_event_and_its_result_is_the_response(api, user, module_worker):
    create_function(api)
    url = create_url(api)
    web = Client()
    web.force_login(user)  # a signed-in console user: their session must not reach the function
    response = web.post(
        path_of(url["url"]) + "orders/7?size=large&size=small",
        data=json.dumps({"item": "tea"}),
        content_type="application/json",
        headers={"Cookie": "theme=dark", "X-Trace": "a"},
    )
    assert response.status_code == 201, response.content
    assert response["X-Handled-By"] == "web" and response["Content-Security-Policy"].startswith("sandbox")
    assert [cookie.OutputString() for cookie in response.cookies.values()] == [  # kept to the URL's own path
        f"seen=1; Path=/fn/{url['url_id']}/",
        f"flavour=oat; HttpOnly; Path=/fn/{url['url_id']}/",
    ]
    event = json.loads(response.content)
    assert event["version"] == "2.0" and event["routeKey"] == "$default"
    assert event["rawPath"] == "/orders/7" and event["rawQueryString"] == "size=large&size=small"
    assert event["queryStringParameters"] == {"size": "large,small"}
    assert event["body"] == '{"item": "tea"}' and event["isBase64Encoded"] is False
    assert event["headers"]["x-trace"] == "a" and event["headers"]["content-type"] == "application/json"
    assert "sessionid" not in json.dumps(event) and "csrftoken" not in json.dumps(event)
    context = event["requestContext"]
    assert context["accountId"] == "anonymous" and context["apiId"] == url["url_id"] == context["domainPrefix"]
    assert context["http"]["method"] == "POST" and context["http"]["path"] == "/orders/7"
    assert context["stage"] == "$default" and isinstance(context["timeEpoch"], int)
    invocation = Invocation.objects.get(pk=response["X-Invocation-Id"])
    assert invocation.status == "succeeded" and invocation.trigger == {
        "type": "function-url",
        "id": url["url_id"],
        "method": "POST",
        "path": "/orders/7",
        "status": 201,
        "response_bytes": len(response.content),
    }


@pytest.mark.slow
def test_a_function_error_or_a_malformed_response_is_a_502_with_the_reason_recorded(api, module_worker):
    create_function(api)
    base = path_of(create_url(api)["url"])
    failed = Client().get(base + "fail")
    assert failed.status_code == 502 and failed.json() == {"message": "Internal Server Error"}
    assert Invocation.objects.get(pk=failed["X-Invocation-Id"]).error_type == "ValueError"
    malformed = Client().get(base + "malformed")
    assert malformed.status_code == 502
    record = Invocation.objects.get(pk=malformed["X-Invocation-Id"]).trigger
    assert record["status"] == 502 and "statusCode" in record["error"]


@pytest.mark.slow
def test_a_token_url_answers_only_its_owner_and_never_passes_the_key_on(api, other_api, module_worker):
    create_function(api)
    base = path_of(create_url(api, auth_type="TOKEN")["url"])
    key = api._credentials["HTTP_AUTHORIZATION"]
    assert Client().get(base).status_code == 403
    assert (
        Client().get(base, headers={"Authorization": other_api._credentials["HTTP_AUTHORIZATION"]}).status_code == 403
    )
    assert Client().get(base, headers={"Authorization": "Token not-a-key"}).status_code == 403
    owner = Client().get(base, headers={"Authorization": key})
    assert owner.status_code == 201 and "authorization" not in json.loads(owner.content)["headers"]
    assert Invocation.objects.count() == 1


@pytest.mark.slow
def test_on_a_wildcard_domain_every_path_of_the_host_is_the_functions(api, settings, module_worker):
    settings.FUNCTION_URL_DOMAIN = "fn.example.com"
    create_function(api)
    url = create_url(api)
    response = Client().get("/api/v1/functions/", headers={"Host": f"{url['url_id']}.fn.example.com"})
    assert response.status_code == 201 and "Content-Security-Policy" not in response
    event = json.loads(response.content)
    assert event["rawPath"] == "/api/v1/functions/" and event["requestContext"]["domainName"] == (
        f"{url['url_id']}.fn.example.com"
    )


# ---- the console's Triggers tab ------------------------------------------------------------------------------


def test_the_triggers_tab_creates_shows_updates_and_deletes_a_function_url(api, user):
    create_function(api)
    page = Client()
    page.force_login(user)
    assert "No function URL yet" in page.get("/functions/web/triggers/").content.decode()
    created = page.post(
        "/functions/web/triggers/urls/",
        {
            "qualifier": "",
            "auth_type": "TOKEN",
            "invoke_mode": "BUFFERED",
            "allow_origins": "https://app.example.com",
            "allow_methods": ["GET"],
        },
    )
    assert created.status_code == 302
    url = FunctionUrl.objects.get()
    assert url.auth_type == "TOKEN" and url.cors["allow_origins"] == ["https://app.example.com"]
    shown = page.get("/functions/web/triggers/").content.decode()
    assert f"http://testserver/fn/{url.url_id}/" in shown and "Authorization: Token YOUR_KEY" in shown
    assert "New function URL" not in shown  # $LATEST has its URL and there is no alias to give one
    assert "streamed</span>" not in shown
    changes = {"auth_type": "NONE", "invoke_mode": "RESPONSE_STREAM", "allow_origins": ""}
    updated = page.post(f"/functions/web/triggers/urls/{url.url_id}/", changes)
    assert updated.status_code == 302
    url.refresh_from_db()
    assert (url.auth_type, url.invoke_mode, url.cors) == ("NONE", "RESPONSE_STREAM", {})
    assert "streamed</span>" in page.get("/functions/web/triggers/").content.decode()
    assert page.post(f"/functions/web/triggers/urls/{url.url_id}/delete/").status_code == 302
    assert not FunctionUrl.objects.exists()


def test_the_triggers_tab_puts_a_bad_origin_next_to_its_field_and_saves_nothing(api, user, other_user):
    create_function(api)
    page = Client()
    page.force_login(user)
    refused = page.post(
        "/functions/web/triggers/urls/",
        {"auth_type": "NONE", "invoke_mode": "BUFFERED", "allow_origins": "example.com/app"},
    )
    assert refused.status_code == 400
    assert "is not an origin" in refused.content.decode() and not FunctionUrl.objects.exists()
    stranger = Client()
    stranger.force_login(other_user)
    assert stranger.get("/functions/web/triggers/").status_code == 404


@pytest.mark.slow
def test_the_invocation_record_shows_its_http_trigger_in_the_api_and_the_console(api, user, module_worker):
    create_function(api)
    response = Client().get(path_of(create_url(api)["url"]) + "hello")
    invocation_id = response["X-Invocation-Id"]
    record = api.get(f"/api/v1/invocations/{invocation_id}/").json()
    assert record["trigger"]["method"] == "GET" and record["trigger"]["path"] == "/hello"
    assert record["trigger"]["status"] == 201 and record["trigger"]["response_bytes"] == len(response.content)
    page = Client()
    page.force_login(user)
    shown = page.get(f"/invocations/{invocation_id}/").content.decode()
    assert "function URL" in shown and "GET /hello" in shown and "→ 201" in shown


MIRROR = """
import json

def handler(event, context):
    if event.get("queryStringParameters", {}).get("mode") == "echo":
        return {"statusCode": 200, "body": json.dumps(event)}
    return json.loads(event["body"])
"""


@pytest.mark.slow
def test_under_the_consoles_origin_a_function_cannot_touch_the_consoles_cookies_or_origin(api, module_worker):
    create_function(api, "mirror", MIRROR)
    url = create_url(api, "mirror")
    result = {
        "statusCode": 200,
        "cookies": ["sessionid=ATTACKER; Path=/; HttpOnly", "csrftoken=x", "theme=dark; Path=/; Domain=example.com"],
        "headers": {"Clear-Site-Data": '"*"', "Strict-Transport-Security": "max-age=1", "X-Mine": "1"},
    }
    response = Client().post(path_of(url["url"]), json.dumps(result), content_type="application/json")
    assert response.status_code == 200, response.content
    assert [cookie.OutputString() for cookie in response.cookies.values()] == [f"theme=dark; Path=/fn/{url['url_id']}/"]
    assert "Clear-Site-Data" not in response and "Strict-Transport-Security" not in response
    assert response["X-Mine"] == "1"


@pytest.mark.slow
def test_odd_requests_and_responses_keep_their_bytes(api, settings, module_worker):
    create_function(api, "mirror", MIRROR)
    base = path_of(create_url(api, "mirror")["url"])
    web = Client()
    accented = web.get(base + "?mode=echo", HTTP_X_NAME="Zoë".encode().decode("latin-1"))
    assert json.loads(accented.content)["headers"]["x-name"] == "Zoë"
    redirect = web.post(
        base, json.dumps({"statusCode": 302, "headers": {"Location": "/fn/x/日本"}}), content_type="application/json"
    )
    assert redirect.status_code == 302 and redirect["Location"].encode("latin-1").decode() == "/fn/x/日本"
    bad = web.post(base, json.dumps({"statusCode": 200, "headers": {"X-Ünï": "v"}}), content_type="application/json")
    assert (
        bad.status_code == 502 and "header name" in Invocation.objects.get(pk=bad["X-Invocation-Id"]).trigger["error"]
    )
    assert Invocation.objects.filter(trigger__status=413).count() == 0  # refused before anything was accepted


STREAMER = """
import time

def handler(event, context):
    if event["rawPath"] == "/plain":
        return {"statusCode": 200, "body": "not streamed"}
    return stream(event)


def stream(event):
    if event["rawPath"] == "/malformed":
        yield {"statusCode": "two hundred"}
        return
    if event["rawPath"] != "/bare":
        yield {"statusCode": 207, "headers": {"Content-Type": "text/plain"}, "cookies": ["step=1"]}
    yield "first,"
    if event["rawPath"] == "/fail":
        raise ValueError("gave up mid-stream")
    yield b"second"
"""


def test_a_streaming_url_answers_with_what_the_handler_yields(api, module_worker):
    create_function(api, source=STREAMER)
    created = create_url(api, invoke_mode="RESPONSE_STREAM")
    assert created["invoke_mode"] == "RESPONSE_STREAM"
    client, path = Client(), path_of(created["url"])
    answer = client.get(f"{path}items")
    assert (answer.status_code, answer.content, answer["Content-Type"]) == (207, b"first,second", "text/plain")
    assert [cookie.OutputString() for cookie in answer.cookies.values()] == [f"step=1; Path={path}"]
    invocation = Invocation.objects.get(pk=answer["X-Invocation-Id"])
    assert invocation.trigger["stream"] is True and invocation.trigger["response_bytes"] == len(b"first,second")
    bare = client.get(f"{path}bare")
    assert (bare.status_code, bare.content, bare["Content-Type"]) == (200, b"first,second", "application/octet-stream")
    plain = client.get(f"{path}plain")
    assert (plain.status_code, plain.content) == (200, b"not streamed")
    failed = client.get(f"{path}fail")
    assert failed.status_code == 502 and failed.json() == {"message": "Internal Server Error"}
    malformed = client.get(f"{path}malformed")
    assert malformed.status_code == 502
    assert "statusCode" in Invocation.objects.get(pk=malformed["X-Invocation-Id"]).trigger["error"]
