"""HTTP APIs: definitions checked whole, routes picked as API Gateway picks them, and requests served end to end
by a real worker (stages, payload formats 1.0 and 2.0, throttles, a Lambda authorizer, a JWT authorizer)."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from django.test import Client

from console.exceptions import ResourceConflict, ServiceError
from functions_app.http_apis import definition_validate, route_key_parse
from functions_app.http_events import HttpRequest, HttpTarget, event_v1
from functions_app.models import HttpApi, Invocation

ECHO = """
import json

def handler(event, context):
    return {"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": json.dumps(event)}
"""

AUTHORIZER = """
calls = 0

def handler(event, context):
    global calls
    calls += 1
    token = event["headers"].get("authorization", "")
    return {"isAuthorized": token == "let-me-in", "context": {"user": "ada", "calls": calls}}
"""


def route(route_key, function="echo", **fields):
    return {"route_key": route_key, "function": function, **fields}


# ---- definitions and routing (no database) ----------------------------------------------------------------


@pytest.mark.backend_free
@pytest.mark.parametrize(
    "route_key",
    [
        "GET items",
        "FETCH /items",
        "GET /items/{id+}/more",
        "GET /a/{id}/{id}",
        "GET /a//b",
        "GET /a/{bad-name}",
        "GET /a/..",
        "GET /" + "seg/" * 200,  # longer than a route key may be
    ],
)
def test_a_malformed_route_key_is_refused(route_key):
    with pytest.raises(ServiceError) as refused:
        route_key_parse(route_key)
    assert "route_key" in refused.value.details


@pytest.mark.backend_free
def test_routes_that_match_the_same_requests_conflict():
    with pytest.raises(ResourceConflict, match="conflicts"):
        definition_validate({"routes": [route("GET /items/{id}"), route("GET /items/{key}")]})
    definition_validate({"routes": [route("GET /items/{id}"), route("POST /items/{key}"), route("GET /items/new")]})


@pytest.mark.backend_free
def test_the_most_specific_route_wins_as_on_api_gateway():
    definition = definition_validate(
        {
            "routes": [
                route("$default", "fallback"),
                route("ANY /{proxy+}", "proxy"),
                route("GET /items/{id}", "item"),
                route("GET /items/new", "new"),
                route("ANY /items/{id}", "any-item"),
                route("GET /items/{id}/parts/{part+}", "parts"),
            ]
        }
    )

    def taken(method, path):
        route_, parameters = definition.match(method, path.strip("/").split("/") if path != "/" else [])
        return route_.function, parameters

    assert taken("GET", "/items/new") == ("new", {})
    assert taken("GET", "/items/7") == ("item", {"id": "7"})
    assert taken("DELETE", "/items/7") == ("any-item", {"id": "7"})
    assert taken("GET", "/items/7/parts/a/b") == ("parts", {"id": "7", "part": "a/b"})
    assert taken("POST", "/orders/1") == ("proxy", {"proxy": "orders/1"})
    assert taken("GET", "/") == ("fallback", {})


@pytest.mark.backend_free
@pytest.mark.parametrize(
    ("definition", "field"),
    [
        ({"routes": [route("GET /a", authorizer="nope")]}, "routes[0].authorizer"),
        ({"routes": [route("GET /a", payload_format="3.0")]}, "routes[0].payload_format"),
        ({"routes": [route("GET /a", timeout_ms=10)]}, "routes[0].timeout_ms"),
        ({"routes": [route("GET /a", throttle={"rate": 0, "burst": 1})]}, "routes[0].throttle.rate"),
        ({"stages": [{"name": "prod"}, {"name": "prod"}]}, "stages[1].name"),
        ({"stages": [{"name": "p r o d"}]}, "stages[0].name"),
        (
            {"authorizers": [{"name": "a", "type": "JWT", "issuer": "x", "audience": [], "jwks_url": "https://x"}]},
            "authorizers[0].audience",
        ),
        (
            {"authorizers": [{"name": "a", "type": "REQUEST", "function": "f", "identity_sources": ["header.x"]}]},
            "authorizers[0].identity_sources",
        ),
        ({"cors": {"allow_origins": ["nope"]}}, "cors.allow_origins"),
        ({"not_found": {"status": 200}}, "not_found.status"),
        ({"route": []}, "definition"),
    ],
)
def test_a_bad_definition_is_refused_naming_its_field(definition, field):
    with pytest.raises(ServiceError) as refused:
        definition_validate(definition)
    assert field in refused.value.details


@pytest.mark.backend_free
def test_a_1_0_event_has_the_documented_fields():
    request = HttpRequest(
        method="GET",
        raw_path="/prod/items/7",
        raw_query="a=1&a=2&b=",
        headers=[("X-One", "1"), ("x-one", "2"), ("Cookie", "c=1"), ("User-Agent", "curl")],
        body=b"",
        source_ip="10.0.0.1",
        received_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    target = HttpTarget(
        api_id="abcdefghij",
        domain_name="h",
        domain_prefix="abcdefghij",
        request_id="r",
        account_id="000000000001",
        route_key="GET /items/{id}",
        stage="prod",
        path_parameters={"id": "7"},
        stage_variables={"v": "1"},
    )
    event = event_v1(request, target, resource="/items/{id}")
    assert set(event) == {
        "version", "resource", "path", "httpMethod", "headers", "multiValueHeaders", "queryStringParameters",
        "multiValueQueryStringParameters", "requestContext", "pathParameters", "stageVariables", "body",
        "isBase64Encoded",
    }  # fmt: skip
    assert event["headers"]["x-one"] == "2" and event["multiValueHeaders"]["x-one"] == ["1", "2"]
    assert event["headers"]["cookie"] == "c=1"
    assert event["queryStringParameters"] == {"a": "2", "b": ""}
    assert event["multiValueQueryStringParameters"] == {"a": ["1", "2"], "b": [""]}
    assert event["body"] is None and event["isBase64Encoded"] is False
    context = event["requestContext"]
    assert context["identity"]["sourceIp"] == "10.0.0.1" and context["identity"]["userAgent"] == "curl"
    assert context["resourcePath"] == "/items/{id}" and context["stage"] == "prod" and context["httpMethod"] == "GET"
    assert context["requestTimeEpoch"] == 1767323045000 and context["requestTime"] == "02/Jan/2026:03:04:05 +0000"


# ---- the REST API (no worker) -------------------------------------------------------------------------------


def create_function(api, name="echo", source=ECHO):
    body = {"name": name, "handler": "app.handler", "code": {"files": {"app.py": source}}}
    assert api.post("/api/v1/functions/", body, format="json").status_code == 201


def create_api(api, definition, name="shop"):
    response = api.post("/api/v1/http-apis/", {"name": name, "definition": definition}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


@pytest.mark.django_db
def test_an_http_api_is_created_read_replaced_and_deleted_with_its_urls(api, other_api):
    create_function(api)
    created = create_api(
        api, {"routes": [route("GET /items/{id}")], "stages": [{"name": "$default"}, {"name": "prod"}]}
    )
    assert len(created["api_id"]) == 10
    assert created["stages"] == [
        {"name": "$default", "url": f"http://testserver/http/{created['api_id']}/"},
        {"name": "prod", "url": f"http://testserver/http/{created['api_id']}/prod/"},
    ]
    assert created["routes"][0]["curl"] == f"curl -i http://testserver/http/{created['api_id']}/items/1"
    replaced = api.patch("/api/v1/http-apis/shop/", {"definition": {"routes": [route("POST /orders")]}}, format="json")
    assert replaced.status_code == 200 and [r["route_key"] for r in replaced.json()["routes"]] == ["POST /orders"]
    assert other_api.get("/api/v1/http-apis/shop/").status_code == 404
    assert api.delete("/api/v1/http-apis/shop/").status_code == 204 and not HttpApi.objects.exists()


@pytest.mark.django_db
def test_bad_http_api_input_gets_a_clear_error_and_changes_nothing(api):
    create_function(api)
    create_api(api, {"routes": [route("GET /items/{id}")]})
    before = HttpApi.objects.get().definition
    conflict = api.patch(
        "/api/v1/http-apis/shop/",
        {"definition": {"routes": [route("GET /items/{id}"), route("GET /items/{other}")]}},
        format="json",
    )
    assert conflict.status_code == 409 and "conflicts" in conflict.json()["message"]
    unknown = api.patch(
        "/api/v1/http-apis/shop/", {"definition": {"routes": [route("GET /x", "ghost")]}}, format="json"
    )
    assert unknown.status_code == 404 and "ghost" in unknown.json()["message"]
    cors = api.patch("/api/v1/http-apis/shop/", {"definition": {"cors": {"allow_origins": ["*/x"]}}}, format="json")
    assert cors.status_code == 400 and "cors.allow_origins" in cors.json()["details"]
    assert api.post("/api/v1/http-apis/", {"name": "shop"}, format="json").status_code == 409
    assert api.post("/api/v1/http-apis/", {"name": "bad name"}, format="json").status_code == 400
    assert HttpApi.objects.get().definition == before


# ---- serving (a real worker) --------------------------------------------------------------------------------


def call(path, method="get", **kwargs):
    return getattr(Client(), method)(path, **kwargs)


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_routes_stages_and_both_payload_formats_reach_their_functions(api, module_worker):
    create_function(api)
    created = create_api(
        api,
        {
            "routes": [
                route("GET /items/{id}"),
                route("POST /orders", payload_format="1.0"),
                route("ANY /{proxy+}"),
            ],
            "stages": [{"name": "$default"}, {"name": "prod", "variables": {"table": "orders-prod"}}],
            "not_found": {"status": 404, "body": '{"error": "no such route"}', "content_type": "application/json"},
        },
    )
    base = f"/http/{created['api_id']}"
    item = call(f"{base}/prod/items/7?full=1")
    assert item.status_code == 200, item.content
    event = json.loads(item.content)
    assert event["routeKey"] == "GET /items/{id}" and event["pathParameters"] == {"id": "7"}
    assert event["rawPath"] == "/prod/items/7" and event["requestContext"]["stage"] == "prod"
    assert event["stageVariables"] == {"table": "orders-prod"} and event["queryStringParameters"] == {"full": "1"}
    order = call(f"{base}/orders", "post", data='{"tea": 2}', content_type="application/json")
    v1 = json.loads(order.content)
    assert v1["version"] == "1.0" and v1["resource"] == "/orders" and v1["httpMethod"] == "POST"
    assert v1["body"] == '{"tea": 2}' and v1["requestContext"]["stage"] == "$default"
    assert v1["multiValueHeaders"]["content-type"] == ["application/json"]
    proxy = json.loads(call(f"{base}/anything/else", "delete").content)
    assert proxy["routeKey"] == "ANY /{proxy+}" and proxy["pathParameters"] == {"proxy": "anything/else"}
    missing = call(f"{base}/")
    assert missing.status_code == 404 and missing.json() == {"error": "no such route"}
    recorded = Invocation.objects.get(pk=item["X-Invocation-Id"]).trigger
    assert recorded["type"] == "http-api" and recorded["route"] == "GET /items/{id}" and recorded["status"] == 200


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_route_throttle_answers_429_without_running_the_function(api, module_worker):
    create_function(api)
    created = create_api(api, {"routes": [route("GET /hot", throttle={"rate": 0.01, "burst": 2})]})
    statuses = [call(f"/http/{created['api_id']}/hot").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert Invocation.objects.count() == 2


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_lambda_authorizer_decides_passes_its_context_and_is_cached_per_identity(api, module_worker):
    create_function(api)
    create_function(api, "gate", AUTHORIZER)
    created = create_api(
        api,
        {
            "authorizers": [{"name": "gate", "type": "REQUEST", "function": "gate", "ttl_s": 300}],
            "routes": [route("GET /private", authorizer="gate")],
        },
    )
    path = f"/http/{created['api_id']}/private"
    assert call(path).status_code == 401  # no identity: the authorizer is not even asked
    assert call(path, headers={"Authorization": "guess"}).status_code == 403
    allowed = call(path, headers={"Authorization": "let-me-in"})
    assert allowed.status_code == 200
    context = json.loads(allowed.content)["requestContext"]["authorizer"]
    assert context == {"lambda": {"user": "ada", "calls": 2}}
    assert call(path, headers={"Authorization": "let-me-in"}).status_code == 200
    assert call(path, headers={"Authorization": "guess"}).status_code == 403
    assert Invocation.objects.filter(function__name="gate").count() == 2  # each identity asked once


class _KeySet(BaseHTTPRequestHandler):
    document = b"{}"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.document)

    def log_message(self, *args):
        pass


@pytest.fixture
def identity_provider(settings):
    """An OpenID Connect provider's key set served on loopback, and a function that signs its tokens."""
    settings.HTTP_JWKS_ALLOW_PRIVATE = True
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    _KeySet.document = json.dumps({"keys": [{**public, "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KeySet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    issuer = "https://id.example.com/"

    def token(**claims):
        now = int(time.time())
        body = {"iss": issuer, "aud": "shop", "sub": "user-1", "iat": now, "exp": now + 300, **claims}
        return jwt.encode(body, key, algorithm="RS256", headers={"kid": "k1"})

    yield {"issuer": issuer, "jwks_url": f"http://127.0.0.1:{server.server_port}/jwks.json", "token": token}
    server.shutdown()


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_jwt_authorizer_checks_the_token_and_the_routes_scopes(api, module_worker, identity_provider):
    create_function(api)
    authorizer = {
        "name": "oidc",
        "type": "JWT",
        "issuer": identity_provider["issuer"],
        "audience": ["shop"],
        "jwks_url": identity_provider["jwks_url"],
    }
    created = create_api(
        api,
        {
            "authorizers": [authorizer],
            "routes": [
                route("GET /me", authorizer="oidc"),
                route("DELETE /orders/{id}", authorizer="oidc", authorization_scopes=["orders:write"]),
            ],
        },
    )
    base = f"/http/{created['api_id']}"
    token = identity_provider["token"]
    me = call(f"{base}/me", headers={"Authorization": f"Bearer {token(scope='orders:read')}"})
    assert me.status_code == 200, me.content
    jwt_context = json.loads(me.content)["requestContext"]["authorizer"]["jwt"]
    assert jwt_context["claims"]["sub"] == "user-1" and jwt_context["scopes"] == ["orders:read"]
    assert call(f"{base}/me").status_code == 401
    assert call(f"{base}/me", headers={"Authorization": f"Bearer {token(aud='other')}"}).status_code == 401
    expired = token(exp=int(time.time()) - 60)
    assert call(f"{base}/me", headers={"Authorization": f"Bearer {expired}"}).status_code == 401
    read_only = call(f"{base}/orders/1", "delete", headers={"Authorization": f"Bearer {token(scope='orders:read')}"})
    assert read_only.status_code == 403
    writer = call(f"{base}/orders/1", "delete", headers={"Authorization": f"Bearer {token(scope='orders:write')}"})
    assert writer.status_code == 200
    assert Invocation.objects.count() == 2  # refused requests ran nothing


# ---- the console ------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_console_creates_shows_edits_and_deletes_an_http_api(api, user, other_user):
    create_function(api)
    page = Client()
    page.force_login(user)
    assert "New HTTP API" in page.get("/http-apis/").content.decode()
    definition = json.dumps({"routes": [route("GET /items/{id}")], "stages": [{"name": "prod"}]})
    created = page.post("/http-apis/+new/", {"name": "shop", "description": "", "definition": definition})
    assert created.status_code == 302
    api_id = HttpApi.objects.get().api_id
    shown = page.get("/http-apis/shop/").content.decode()
    assert f"http://testserver/http/{api_id}/prod/" in shown and f"/http/{api_id}/prod/items/1" in shown
    triggers = page.get("/functions/echo/triggers/").content.decode()
    assert "GET /items/{id}" in triggers and "/http-apis/shop/" in triggers
    conflict = json.dumps({"routes": [route("GET /a/{x}"), route("GET /a/{y}")]})
    refused = page.post("/http-apis/shop/edit/", {"description": "", "definition": conflict})
    assert refused.status_code == 400 and "routes[1].route_key: Conflicts with" in refused.content.decode()
    assert page.post("/http-apis/shop/edit/", {"description": "", "definition": "{not json"}).status_code == 400
    assert HttpApi.objects.get().definition == json.loads(definition)
    stranger = Client()
    stranger.force_login(other_user)
    assert stranger.get("/http-apis/shop/").status_code == 404
    assert page.post("/http-apis/shop/delete/").status_code == 302 and not HttpApi.objects.exists()
