"""HTTP requests as Lambda's payload format 2.0 events and results as responses, against the documented shapes."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from console.exceptions import ServiceError
from functions_app.cors import cors_decorate, cors_preflight, cors_validate
from functions_app.http_events import (
    HttpAnswer,
    HttpRequest,
    HttpTarget,
    MalformedResponse,
    answer_v2,
    event_v2,
    stream_head,
)

pytestmark = pytest.mark.backend_free

RECEIVED = datetime(2020, 3, 4, 19, 3, 58, 390000, tzinfo=UTC)


def request(method="POST", path="/my/path", query="", headers=(), body=b"", source_ip="192.168.0.1"):
    return HttpRequest(
        method=method,
        raw_path=path,
        raw_query=query,
        headers=list(headers),
        body=body,
        source_ip=source_ip,
        received_at=RECEIVED,
    )


TARGET = HttpTarget(api_id="api-id", domain_name="id.example.com", domain_prefix="id", request_id="id")


def test_a_request_becomes_the_documented_version_2_event_field_by_field():
    # API Gateway's own example event (HTTP API, payload format 2.0), made from the request it describes.
    sent = request(
        query="parameter1=value1&parameter1=value2&parameter2=value",
        headers=[
            ("Header1", "value1"),
            ("Header2", "value1"),
            ("header2", "value2"),
            ("Cookie", "cookie1; cookie2"),
            ("User-Agent", "agent"),
            ("Content-Type", "application/json"),
        ],
        body=b'{"message": "hello world"}',
    )
    target = HttpTarget(
        api_id="api-id",
        domain_name="id.execute-api.us-east-1.amazonaws.com",
        domain_prefix="id",
        request_id="id",
        account_id="123456789012",
        path_parameters={"parameter1": "value1"},
        stage_variables={"stageVariable1": "value1"},
        authorizer={"jwt": {"claims": {"claim1": "value1"}, "scopes": ["scope1"]}},
    )
    assert event_v2(sent, target) == {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/my/path",
        "rawQueryString": "parameter1=value1&parameter1=value2&parameter2=value",
        "cookies": ["cookie1", "cookie2"],
        "headers": {
            "header1": "value1",
            "header2": "value1,value2",
            "user-agent": "agent",
            "content-type": "application/json",
        },
        "queryStringParameters": {"parameter1": "value1,value2", "parameter2": "value"},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "api-id",
            "authorizer": {"jwt": {"claims": {"claim1": "value1"}, "scopes": ["scope1"]}},
            "domainName": "id.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "id",
            "http": {
                "method": "POST",
                "path": "/my/path",
                "protocol": "HTTP/1.1",
                "sourceIp": "192.168.0.1",
                "userAgent": "agent",
            },
            "requestId": "id",
            "routeKey": "$default",
            "stage": "$default",
            "time": "04/Mar/2020:19:03:58 +0000",
            "timeEpoch": 1583348638390,
        },
        "body": '{"message": "hello world"}',
        "pathParameters": {"parameter1": "value1"},
        "isBase64Encoded": False,
        "stageVariables": {"stageVariable1": "value1"},
    }


def test_a_function_url_event_leaves_out_what_it_does_not_have():
    event = event_v2(request(method="GET", path="/"), TARGET)
    assert event["requestContext"]["accountId"] == "anonymous"
    for absent in ("body", "cookies", "queryStringParameters", "pathParameters", "stageVariables"):
        assert absent not in event
    assert "authorizer" not in event["requestContext"] and event["isBase64Encoded"] is False


def test_a_binary_body_is_base64_and_a_text_one_is_text():
    png = b"\x89PNG\r\n\x1a\n\x00\xff"
    event = event_v2(request(headers=[("Content-Type", "image/png")], body=png), TARGET)
    assert event["isBase64Encoded"] is True and base64.b64decode(event["body"]) == png
    form = event_v2(request(headers=[("Content-Type", "application/x-www-form-urlencoded")], body=b"a=1"), TARGET)
    assert form["body"] == "a=1" and form["isBase64Encoded"] is False
    not_utf8 = event_v2(request(headers=[("Content-Type", "text/plain")], body=b"\xff\xfe"), TARGET)
    assert not_utf8["isBase64Encoded"] is True


def test_a_query_keeps_blank_values_and_decodes_them():
    event = event_v2(request(query="q=caf%C3%A9+au+lait&empty=&flag"), TARGET)
    assert event["queryStringParameters"] == {"q": "café au lait", "empty": "", "flag": ""}
    assert event["rawQueryString"] == "q=caf%C3%A9+au+lait&empty=&flag"


def test_a_structured_result_becomes_the_response_with_its_cookies_and_headers():
    result = {
        "statusCode": 201,
        "headers": {"Content-Type": "text/plain", "X-Count": 3, "X-Ok": True},
        "cookies": ["a=1; Path=/", "b=2; HttpOnly"],
        "body": "made",
    }
    answer = answer_v2(json.dumps(result))
    assert answer.status == 201 and answer.body == b"made"
    assert ("Content-Type", "text/plain") in answer.headers and ("X-Count", "3") in answer.headers
    assert ("X-Ok", "true") in answer.headers
    assert [value for name, value in answer.headers if name == "Set-Cookie"] == ["a=1; Path=/", "b=2; HttpOnly"]


def test_a_base64_body_is_decoded_and_multi_value_headers_repeat():
    result = {
        "statusCode": 200,
        "isBase64Encoded": True,
        "body": base64.b64encode(b"\x00\x01").decode(),
        "multiValueHeaders": {"X-Many": ["1", "2"]},
    }
    answer = answer_v2(json.dumps(result))
    assert answer.body == b"\x00\x01" and [v for n, v in answer.headers if n == "X-Many"] == ["1", "2"]
    assert ("Content-Type", "application/json") in answer.headers  # the function named none


@pytest.mark.parametrize(
    ("result", "body"),
    [({"message": "hi"}, b'{"message": "hi"}'), ("hello", b"hello"), ([1, 2], b"[1, 2]"), (None, b"null")],
)
def test_a_result_without_status_code_is_a_200_json_response(result, body):
    answer = answer_v2(json.dumps(result))
    assert answer.status == 200 and answer.body == body
    assert answer.headers == [("Content-Type", "application/json")]


@pytest.mark.parametrize(
    ("result", "reason"),
    [
        ({"statusCode": "200"}, "statusCode"),
        ({"statusCode": 700}, "statusCode"),
        ({"statusCode": 200, "body": {"a": 1}}, "json.dumps"),
        ({"statusCode": 200, "headers": ["x"]}, "headers"),
        ({"statusCode": 200, "headers": {"X": {"nested": 1}}}, "X"),
        ({"statusCode": 200, "headers": {"X": "a\r\nInjected: 1"}}, "X"),
        ({"statusCode": 200, "cookies": "a=1"}, "cookies"),
        ({"statusCode": 200, "isBase64Encoded": True, "body": "not base64!"}, "base64"),
    ],
)
def test_a_malformed_result_is_refused_with_its_reason(result, reason):
    with pytest.raises(MalformedResponse, match=reason):
        answer_v2(json.dumps(result))


CORS = {
    "allow_origins": ["https://app.example.com", "https://*.example.org"],
    "allow_methods": ["get", "POST"],
    "allow_headers": ["X-Custom"],
    "expose_headers": ["X-Invocation-Id"],
    "max_age": 600,
    "allow_credentials": True,
}


def test_a_preflight_from_an_allowed_origin_is_answered_with_the_configuration():
    config = cors_validate(CORS)
    preflight = request(
        method="OPTIONS",
        headers=[("Origin", "https://app.example.com"), ("Access-Control-Request-Method", "POST")],
    )
    answer = cors_preflight(config, preflight)
    assert answer is not None and answer.status == 204
    assert dict(answer.headers) == {
        "Vary": "Origin",
        "Access-Control-Allow-Origin": "https://app.example.com",
        "Access-Control-Allow-Methods": "GET, POST",
        "Access-Control-Allow-Headers": "x-custom",
        "Access-Control-Max-Age": "600",
        "Access-Control-Allow-Credentials": "true",
    }
    sub = request(
        method="OPTIONS", headers=[("Origin", "https://a.example.org"), ("Access-Control-Request-Method", "GET")]
    )
    assert ("Access-Control-Allow-Origin", "https://a.example.org") in cors_preflight(config, sub).headers
    stranger = request(
        method="OPTIONS", headers=[("Origin", "https://evil.test"), ("Access-Control-Request-Method", "GET")]
    )
    assert cors_preflight(config, stranger).headers == [("Vary", "Origin")]


def test_without_cors_or_outside_a_preflight_the_function_gets_the_request():
    plain_options = request(method="OPTIONS", headers=[("Origin", "https://app.example.com")])
    assert cors_preflight(cors_validate(CORS), plain_options) is None
    full = request(method="OPTIONS", headers=[("Origin", "https://x.test"), ("Access-Control-Request-Method", "GET")])
    assert cors_preflight({}, full) is None


def test_the_configuration_replaces_the_functions_own_cors_headers():
    answer = HttpAnswer(200, [("Access-Control-Allow-Origin", "*"), ("X-Mine", "1")])
    decorated = cors_decorate(cors_validate(CORS), request(headers=[("Origin", "https://app.example.com")]), answer)
    assert dict(decorated.headers) == {
        "X-Mine": "1",
        "Vary": "Origin",
        "Access-Control-Allow-Origin": "https://app.example.com",
        "Access-Control-Expose-Headers": "x-invocation-id",
        "Access-Control-Allow-Credentials": "true",
    }


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"allow_origins": ["https://app.example.com/path"]}, "cors.allow_origins"),
        ({"allow_origins": ["app.example.com"]}, "cors.allow_origins"),
        ({"allow_origins": ["*"], "allow_credentials": True}, "cors.allow_origins"),
        ({"allow_methods": ["FETCH"]}, "cors.allow_methods"),
        ({"allow_headers": ["bad header"]}, "cors.allow_headers"),
        ({"max_age": 86401}, "cors.max_age"),
        ({"max_age": True}, "cors.max_age"),
        ({"allow_origins": "*"}, "cors.allow_origins"),
        ({"origins": ["*"]}, "cors"),
    ],
)
def test_a_malformed_cors_configuration_is_refused_naming_its_field(config, field):
    with pytest.raises(ServiceError) as refused:
        cors_validate(config)
    assert field in refused.value.details


@pytest.mark.parametrize(
    ("result", "reason"),
    [
        ({"statusCode": 100}, "200 to 599"),
        ({"statusCode": 101, "headers": {"Upgrade": "websocket"}}, "200 to 599"),
        ({"statusCode": 200, "headers": {"X-A\t": "v"}}, "header name"),
        ({"statusCode": 200, "headers": {"X-Ünï": "v"}}, "header name"),
        ({"statusCode": 200, "headers": {"X-A": "a\x0bb"}}, "control character"),
        ({"statusCode": 200, "cookies": ["a=1\r\nX-Injected: yes"]}, "control character"),
    ],
)
def test_a_response_no_http_connection_can_carry_is_refused(result, reason):
    with pytest.raises(MalformedResponse, match=reason):
        answer_v2(json.dumps(result))


def test_the_platform_decides_the_length_and_the_connection_not_the_function():
    result = {
        "statusCode": 200,
        "headers": {
            "Content-Length": "1",
            "Connection": "upgrade",
            "Transfer-Encoding": "chunked",
            "X-Invocation-Id": "forged",  # the platform's own, added to every answer
            "X-Ok": "é",
        },
        "body": "xyz",
    }
    answer = answer_v2(json.dumps(result))
    assert answer.body == b"xyz" and ("X-Ok", "é") in answer.headers
    platform = {"content-length", "connection", "transfer-encoding", "x-invocation-id"}
    assert not platform & {name.lower() for name, _ in answer.headers}


@pytest.mark.parametrize("origin", ["https://a.example.com:99999", "https://*.com", "https://*.com:443"])
def test_an_origin_no_browser_sends_or_a_whole_top_level_domain_is_refused(origin):
    with pytest.raises(ServiceError):
        cors_validate({"allow_origins": [origin]})


def test_methods_and_headers_are_kept_once_whatever_their_case():
    config = cors_validate({"allow_methods": ["get", "GET", "*"], "allow_headers": ["X-A", "x-a"]})
    assert config["allow_methods"] == ["GET", "*"] and config["allow_headers"] == ["x-a"]


def test_a_streams_head_comes_from_its_prelude_and_is_octet_stream_unless_named():
    bare = stream_head(None)
    assert (bare.status, bare.headers) == (200, [("Content-Type", "application/octet-stream")])
    prelude = json.dumps({"statusCode": 206, "headers": {"X-Part": 1}, "cookies": ["a=1"], "body": "ignored"})
    head = stream_head(prelude.encode())
    assert head.status == 206 and head.body == b""
    assert head.headers == [("X-Part", "1"), ("Content-Type", "application/octet-stream"), ("Set-Cookie", "a=1")]
    named = stream_head(b'{"headers": {"content-type": "text/event-stream"}}')
    assert named.headers == [("content-type", "text/event-stream")]


@pytest.mark.parametrize("prelude", [b"[1]", b"not json", b'{"statusCode": 99}', b'{"cookies": "a=1"}'])
def test_a_prelude_that_cannot_be_a_response_head_is_malformed(prelude):
    with pytest.raises(MalformedResponse):
        stream_head(prelude)
