"""Lambda's API through Django's test client, every request signed with botocore's own SigV4 signer: the shapes,
the errors AWS gives, the signature checks and tenancy. (functions_app/tests/test_lambda_compat.py drives a running
server with the real boto3 client and AWS CLI.)"""

from __future__ import annotations

import base64
import hashlib
import json
from contextlib import nullcontext
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest.mock import patch
from urllib.parse import quote

import pytest
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from console.access_keys import access_key_create, access_key_revoke
from functions_app.models import Function, Invocation
from functions_app.tests.zips import make_zip

pytestmark = pytest.mark.django_db

ROLE = "arn:aws:iam::123456789012:role/lambda-role"
SOURCE = "def handler(event, context):\n    return {'got': event}\n"


class Lambda:
    """A signed Lambda API client over Django's test client."""

    def __init__(self, client: Any, key_id: str, secret: str, region: str = "us-east-1") -> None:
        self.client, self.key_id, self.secret, self.region = client, key_id, secret, region

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: str = "",
        headers: dict[str, str] | None = None,
        at: datetime | None = None,
        secret: str | None = None,
        tamper: bytes | None = None,
    ) -> Any:
        data = json.dumps(body).encode() if isinstance(body, dict) else (body or b"")
        all_headers = {"Content-Type": "application/json"} if isinstance(body, dict) else {}
        all_headers.update(headers or {})
        url = f"http://testserver{path}" + (f"?{query}" if query else "")
        aws = AWSRequest(method=method, url=url, data=data, headers=all_headers)
        clock = patch("botocore.auth.get_current_datetime", return_value=at) if at else nullcontext()
        with clock:
            SigV4Auth(Credentials(self.key_id, secret or self.secret), "lambda", self.region).add_auth(aws)
        return self.send(method, path + (f"?{query}" if query else ""), tamper if tamper is not None else data, aws)

    def send(self, method: str, path: str, data: bytes, aws: AWSRequest | None = None) -> Any:
        headers = dict(aws.headers.items()) if aws else {}
        content_type = headers.pop("Content-Type", None)
        meta = {f"HTTP_{name.upper().replace('-', '_')}": value for name, value in headers.items()}
        meta.setdefault("HTTP_HOST", "testserver")
        if content_type:
            meta["CONTENT_TYPE"] = content_type
        return self.client.generic(method, path, data, content_type or "", **meta)

    def create(self, name: str = "hello", **fields: Any) -> Any:
        body = {
            "FunctionName": name,
            "Runtime": "python3.12",
            "Role": ROLE,
            "Handler": "app.handler",
            "Code": {"ZipFile": base64.b64encode(make_zip({"app.py": SOURCE})).decode()},
            **fields,
        }
        return self.request("POST", "/2015-03-31/functions", body)


def error_of(response: Any) -> tuple[int, str, str]:
    body = json.loads(response.content)
    return response.status_code, response["x-amzn-ErrorType"], body.get("message") or body.get("Message")


@pytest.fixture
def aws(client: Any, user: Any) -> Lambda:
    key, secret = access_key_create(owner=user, name="tests")
    return Lambda(client, key.access_key_id, secret)


@pytest.fixture
def other_aws(client: Any, other_user: Any) -> Lambda:
    key, secret = access_key_create(owner=other_user, name="tests")
    return Lambda(client, key.access_key_id, secret)


# ---- functions ---------------------------------------------------------------------------------------------------


def test_create_function_answers_lambdas_function_configuration(aws, user):
    package = make_zip({"app.py": SOURCE})
    response = aws.create(Environment={"Variables": {"GREETING": "hi"}}, MemorySize=256, Timeout=10)
    assert response.status_code == 201, response.content
    config = json.loads(response.content)
    account = f"{user.pk:012d}"
    assert config["FunctionArn"] == f"arn:aws:lambda:us-east-1:{account}:function:hello"
    assert config["CodeSha256"] == base64.b64encode(hashlib.sha256(package).digest()).decode()
    assert config["CodeSize"] == len(package)
    assert (config["Runtime"], config["Role"], config["Handler"]) == ("python3.12", ROLE, "app.handler")
    assert (config["MemorySize"], config["Timeout"], config["Version"]) == (256, 10, "$LATEST")
    assert (config["State"], config["LastUpdateStatus"], config["PackageType"]) == ("Active", "Successful", "Zip")
    assert config["Environment"] == {"Variables": {"GREETING": "hi"}}
    assert datetime.strptime(config["LastModified"], "%Y-%m-%dT%H:%M:%S.%f+0000")
    assert len(config["LastModified"]) == len("2019-07-17T18:39:33.599+0000")
    assert Function.objects.get(owner=user, name="hello").revision_id.hex == config["RevisionId"].replace("-", "")


def test_a_function_is_named_by_name_partial_arn_or_full_arn_and_a_qualifier_must_agree(aws, user):
    aws.create()
    account = f"{user.pk:012d}"
    for name in ("hello", f"{account}:function:hello", f"arn:aws:lambda:us-east-1:{account}:function:hello"):
        response = aws.request("GET", f"/2015-03-31/functions/{quote(name, safe='')}/configuration")
        assert response.status_code == 200, (name, response.content)
        assert json.loads(response.content)["FunctionName"] == "hello"
    mismatch = aws.request("GET", "/2015-03-31/functions/hello%3A1/configuration", query="Qualifier=2")
    assert error_of(mismatch) == (
        400,
        "InvalidParameterValueException",
        "The derived qualifier from the function name does not match the specified qualifier.",
    )


def test_another_tenants_function_is_not_found_whatever_it_is_called(aws, other_aws, user):
    aws.create()
    arn = f"arn:aws:lambda:us-east-1:{user.pk:012d}:function:hello"
    for path in ("/2015-03-31/functions/hello", f"/2015-03-31/functions/{quote(arn, safe='')}"):
        status, code, message = error_of(other_aws.request("GET", path))
        assert (status, code) == (404, "ResourceNotFoundException")
        assert message.startswith("Function not found: arn:aws:lambda:us-east-1:")
    listed = json.loads(other_aws.request("GET", "/2015-03-31/functions").content)
    assert listed == {"Functions": []}


def test_list_functions_pages_with_an_opaque_marker(aws):
    for name in ("a", "b", "c"):
        assert aws.create(name).status_code == 201
    names, marker = [], None
    while True:
        query = "MaxItems=2" + (f"&Marker={quote(marker, safe='')}" if marker else "")
        page = json.loads(aws.request("GET", "/2015-03-31/functions", query=query).content)
        names += [config["FunctionName"] for config in page["Functions"]]
        marker = page.get("NextMarker")
        if marker is None:
            break
    assert names == ["a", "b", "c"]
    bad = aws.request("GET", "/2015-03-31/functions", query="Marker=nonsense")
    assert error_of(bad)[:2] == (400, "InvalidParameterValueException")


def test_updates_change_the_revision_and_a_stale_revision_id_is_412(aws):
    first = json.loads(aws.create().content)
    body = {"MemorySize": 512, "RevisionId": first["RevisionId"]}
    updated = aws.request("PUT", "/2015-03-31/functions/hello/configuration", body)
    assert updated.status_code == 200, updated.content
    second = json.loads(updated.content)
    assert second["MemorySize"] == 512 and second["RevisionId"] != first["RevisionId"]
    stale = aws.request("PUT", "/2015-03-31/functions/hello/configuration", {"Timeout": 5, **body})
    assert error_of(stale)[:2] == (412, "PreconditionFailedException")
    code = base64.b64encode(make_zip({"app.py": SOURCE + "# v2\n"})).decode()
    new_code = aws.request("PUT", "/2015-03-31/functions/hello/code", {"ZipFile": code, "Publish": True})
    assert new_code.status_code == 200
    published = json.loads(new_code.content)
    assert published["Version"] == "1" and published["FunctionArn"].endswith(":function:hello:1")
    assert published["MemorySize"] == 512


def test_bad_values_get_validation_and_parameter_errors_in_awss_words(aws):
    assert aws.create().status_code == 201
    too_big = aws.request("PUT", "/2015-03-31/functions/hello/configuration", {"MemorySize": 99999})
    status, code, message = error_of(too_big)
    assert (status, code) == (400, "ValidationException")
    assert message.startswith("1 validation error detected: Value at 'memorySize' failed to satisfy constraint")
    over_ours = aws.request("PUT", "/2015-03-31/functions/hello/configuration", {"MemorySize": 20000})
    assert error_of(over_ours)[:2] == (400, "InvalidParameterValueException")
    wrong_type = aws.request("PUT", "/2015-03-31/functions/hello/configuration", {"Timeout": "soon"})
    assert error_of(wrong_type)[:2] == (400, "ValidationException")
    bad_name = aws.request("GET", "/2015-03-31/functions/a%20b")
    assert "Member must satisfy regular expression pattern" in error_of(bad_name)[2]
    node = aws.create("node", Runtime="nodejs20.x")
    assert error_of(node)[:2] == (400, "InvalidParameterValueException")
    assert "runs Python functions" in error_of(node)[2]
    duplicate = aws.create()
    assert error_of(duplicate)[:2] == (409, "ResourceConflictException")


def test_a_malformed_body_and_a_broken_zip_are_refused_and_change_nothing(aws, user):
    raw = aws.request(
        "POST", "/2015-03-31/functions", b'{"FunctionName": ', headers={"Content-Type": "application/json"}
    )
    assert error_of(raw)[:2] == (400, "InvalidRequestContentException")
    not_zip = aws.create(Code={"ZipFile": base64.b64encode(b"not a zip").decode()})
    assert error_of(not_zip)[:2] == (400, "InvalidParameterValueException")
    from_s3 = aws.create(Code={"S3Bucket": "my-bucket", "S3Key": "k.zip"})
    assert "ZipFile" in error_of(from_s3)[2]
    assert not Function.objects.filter(owner=user).exists()


def test_unknown_operations_are_501_and_unknown_paths_an_aws_404(aws):
    layers = aws.request("GET", "/2018-10-31/layers")
    assert error_of(layers)[:2] == (501, "NotImplemented")
    nowhere = aws.request("GET", "/2015-03-31/nothing-here")
    assert error_of(nowhere)[:2] == (404, "UnknownOperationException")


def test_delete_function_of_a_version_and_of_the_function(aws):
    aws.create()
    aws.request("POST", "/2015-03-31/functions/hello/versions", {})
    aws.request("POST", "/2015-03-31/functions/hello/aliases", {"Name": "live", "FunctionVersion": "1"})
    in_use = aws.request("DELETE", "/2015-03-31/functions/hello", query="Qualifier=1")
    assert error_of(in_use)[:2] == (409, "ResourceConflictException")
    latest = aws.request("DELETE", "/2015-03-31/functions/hello", query="Qualifier=%24LATEST")
    assert error_of(latest)[:2] == (400, "InvalidParameterValueException")
    assert aws.request("DELETE", "/2015-03-31/functions/hello/aliases/live").status_code == 204
    assert aws.request("DELETE", "/2015-03-31/functions/hello", query="Qualifier=1").status_code == 204
    assert aws.request("DELETE", "/2015-03-31/functions/hello").status_code == 204
    gone = aws.request("GET", "/2015-03-31/functions/hello")
    assert error_of(gone)[:2] == (404, "ResourceNotFoundException")


# ---- versions, aliases, concurrency, account -------------------------------------------------------------------


def test_publish_is_idempotent_and_aliases_carry_weights(aws):
    aws.create()
    one = json.loads(aws.request("POST", "/2015-03-31/functions/hello/versions", {"Description": "v1"}).content)
    again = json.loads(aws.request("POST", "/2015-03-31/functions/hello/versions", {}).content)
    assert one["Version"] == again["Version"] == "1"
    aws.request("PUT", "/2015-03-31/functions/hello/configuration", {"Timeout": 9})
    two = json.loads(aws.request("POST", "/2015-03-31/functions/hello/versions", {}).content)
    assert two["Version"] == "2"
    wrong_sha = aws.request("POST", "/2015-03-31/functions/hello/versions", {"CodeSha256": "AAAA"})
    assert error_of(wrong_sha)[:2] == (412, "PreconditionFailedException")
    routing = {"AdditionalVersionWeights": {"2": 0.25}}
    created = aws.request(
        "POST",
        "/2015-03-31/functions/hello/aliases",
        {"Name": "live", "FunctionVersion": "1", "RoutingConfig": routing},
    )
    assert created.status_code == 201, created.content
    alias = json.loads(created.content)
    assert alias["AliasArn"].endswith(":function:hello:live") and alias["RoutingConfig"] == routing
    duplicate = aws.request("POST", "/2015-03-31/functions/hello/aliases", {"Name": "live", "FunctionVersion": "1"})
    assert error_of(duplicate)[:2] == (409, "ResourceConflictException")
    moved = aws.request(
        "PUT", "/2015-03-31/functions/hello/aliases/live", {"FunctionVersion": "2", "RoutingConfig": {}}
    )
    assert json.loads(moved.content)["FunctionVersion"] == "2" and "RoutingConfig" not in json.loads(moved.content)
    by_alias = json.loads(aws.request("GET", "/2015-03-31/functions/hello%3Alive/configuration").content)
    assert by_alias["Version"] == "2" and by_alias["Timeout"] == 9
    versions = json.loads(aws.request("GET", "/2015-03-31/functions/hello/versions").content)["Versions"]
    assert [v["Version"] for v in versions] == ["$LATEST", "1", "2"]


def test_reserved_concurrency_shows_in_get_function_and_the_account_settings(aws):
    aws.create()
    put = aws.request("PUT", "/2017-10-31/functions/hello/concurrency", {"ReservedConcurrentExecutions": 7})
    assert json.loads(put.content) == {"ReservedConcurrentExecutions": 7}
    assert json.loads(aws.request("GET", "/2015-03-31/functions/hello").content)["Concurrency"] == {
        "ReservedConcurrentExecutions": 7
    }
    settings_now = json.loads(aws.request("GET", "/2016-08-19/account-settings").content)
    limit = settings_now["AccountLimit"]
    assert limit["UnreservedConcurrentExecutions"] == limit["ConcurrentExecutions"] - 7
    assert settings_now["AccountUsage"]["FunctionCount"] == 1 and settings_now["AccountUsage"]["TotalCodeSize"] > 0
    too_many = aws.request("PUT", "/2017-10-31/functions/hello/concurrency", {"ReservedConcurrentExecutions": 10**6})
    assert error_of(too_many)[:2] == (400, "InvalidParameterValueException")
    assert aws.request("DELETE", "/2017-10-31/functions/hello/concurrency").status_code == 204
    assert json.loads(aws.request("GET", "/2019-09-30/functions/hello/concurrency").content) == {}


def test_reserved_concurrency_zero_throttles_an_invoke_with_lambdas_reason(aws):
    aws.create()
    aws.request("PUT", "/2017-10-31/functions/hello/concurrency", {"ReservedConcurrentExecutions": 0})
    throttled = aws.request("POST", "/2015-03-31/functions/hello/invocations", b"{}")
    body = json.loads(throttled.content)
    assert (throttled.status_code, throttled["x-amzn-ErrorType"]) == (429, "TooManyRequestsException")
    assert body == {
        "Type": "User",
        "message": "Rate Exceeded.",
        "Reason": "ReservedFunctionConcurrentInvocationLimitExceeded",
    }
    assert not Invocation.objects.exists()


# ---- invoke without a worker: what happens at the door ---------------------------------------------------------


def test_event_and_dry_run_invokes_answer_202_and_204(aws):
    aws.create()
    context = base64.b64encode(json.dumps({"custom": {"k": "v"}}).encode()).decode()
    event = aws.request(
        "POST",
        "/2015-03-31/functions/hello/invocations",
        b'{"a": 1}',
        headers={"X-Amz-Invocation-Type": "Event", "X-Amz-Client-Context": context},
    )
    assert event.status_code == 202 and event.content == b""
    invocation = Invocation.objects.get()
    assert str(invocation.id) == event["x-amzn-RequestId"]
    assert json.loads(invocation.client_context) == {"custom": {"k": "v"}}
    dry = aws.request(
        "POST", "/2015-03-31/functions/hello/invocations", b"", headers={"X-Amz-Invocation-Type": "DryRun"}
    )
    assert dry.status_code == 204 and Invocation.objects.count() == 1


def test_an_sdk_retry_of_one_call_attaches_to_the_invocation_it_made(aws):
    aws.create()
    retry = {"X-Amz-Invocation-Type": "Event", "amz-sdk-invocation-id": "0b7c3b4e-7a38-4c0e-9d58-5d1f0c7f1e11"}
    first = aws.request("POST", "/2015-03-31/functions/hello/invocations", b"{}", headers=retry)
    second = aws.request("POST", "/2015-03-31/functions/hello/invocations", b"{}", headers=retry)
    assert first["x-amzn-RequestId"] == second["x-amzn-RequestId"] and Invocation.objects.count() == 1


def test_invoke_payloads_that_are_too_large_or_not_json_get_lambdas_errors(aws):
    aws.create()
    not_json = aws.request("POST", "/2015-03-31/functions/hello/invocations", b"{nope")
    assert error_of(not_json)[:2] == (400, "InvalidRequestContentException")
    big = aws.request("POST", "/2015-03-31/functions/hello/invocations", b'"' + b"x" * (6 * 1024 * 1024) + b'"')
    assert error_of(big) == (
        413,
        "RequestTooLargeException",
        "Request must be smaller than 6291456 bytes for the InvokeFunction operation",
    )
    event_big = aws.request(
        "POST",
        "/2015-03-31/functions/hello/invocations",
        b'"' + b"x" * (1024 * 1024 + 1) + b'"',
        headers={"X-Amz-Invocation-Type": "Event"},
    )
    assert error_of(event_big)[:2] == (413, "RequestTooLargeException")
    bad_context = aws.request(
        "POST", "/2015-03-31/functions/hello/invocations", b"{}", headers={"X-Amz-Client-Context": "not base64!"}
    )
    assert error_of(bad_context)[:2] == (400, "InvalidRequestContentException")
    missing = aws.request("POST", "/2015-03-31/functions/nope/invocations", b"{}")
    assert error_of(missing)[:2] == (404, "ResourceNotFoundException")
    assert not Invocation.objects.exists()


def test_a_create_function_over_lambdas_request_limit_is_refused_before_it_is_read(aws, user):
    huge = b"x" * (70_167_211 + 1)
    response = aws.request("POST", "/2015-03-31/functions", huge, headers={"Content-Type": "application/json"})
    assert error_of(response)[:2] == (413, "RequestEntityTooLargeException")
    assert not Function.objects.filter(owner=user).exists()


# ---- tags, policy, code signing, event invoke configs ----------------------------------------------------------


def test_tags_are_set_listed_and_removed_by_arn(aws, user):
    aws.create(Tags={"team": "data"})
    arn = quote(f"arn:aws:lambda:us-east-1:{user.pk:012d}:function:hello", safe="")
    assert aws.request("POST", f"/2017-03-31/tags/{arn}", {"Tags": {"env": "prod"}}).status_code == 204
    assert json.loads(aws.request("GET", f"/2017-03-31/tags/{arn}").content) == {
        "Tags": {"team": "data", "env": "prod"}
    }
    assert aws.request("DELETE", f"/2017-03-31/tags/{arn}", query="tagKeys=team&tagKeys=none").status_code == 204
    assert json.loads(aws.request("GET", "/2015-03-31/functions/hello").content)["Tags"] == {"env": "prod"}


def test_permissions_make_a_policy_and_code_signing_is_none(aws, user):
    aws.create()
    statement = {"StatementId": "s3", "Action": "lambda:InvokeFunction", "Principal": "s3.amazonaws.com"}
    added = aws.request("POST", "/2015-03-31/functions/hello/policy", {**statement, "SourceAccount": "123456789012"})
    assert added.status_code == 201, added.content
    assert json.loads(json.loads(added.content)["Statement"])["Principal"] == {"Service": "s3.amazonaws.com"}
    again = aws.request("POST", "/2015-03-31/functions/hello/policy", statement)
    assert error_of(again)[:2] == (409, "ResourceConflictException")
    policy = json.loads(aws.request("GET", "/2015-03-31/functions/hello/policy").content)
    assert [s["Sid"] for s in json.loads(policy["Policy"])["Statement"]] == ["s3"]
    assert aws.request("DELETE", "/2015-03-31/functions/hello/policy/s3").status_code == 204
    assert error_of(aws.request("GET", "/2015-03-31/functions/hello/policy"))[:2] == (404, "ResourceNotFoundException")
    signing = json.loads(aws.request("GET", "/2020-06-30/functions/hello/code-signing-config").content)
    assert signing == {"CodeSigningConfigArn": "", "FunctionName": "hello"}


def test_event_invoke_configs_map_onto_the_functions_async_settings(aws, user):
    aws.create()
    aws.create("audit")
    missing = aws.request("GET", "/2019-09-25/functions/hello/event-invoke-config")
    assert error_of(missing)[:2] == (404, "ResourceNotFoundException")
    audit = f"arn:aws:lambda:us-east-1:{user.pk:012d}:function:audit"
    body = {"MaximumRetryAttempts": 0, "DestinationConfig": {"OnSuccess": {"Destination": audit}}}
    put = aws.request("PUT", "/2019-09-25/functions/hello/event-invoke-config", body)
    assert put.status_code == 200, put.content
    config = json.loads(put.content)
    assert config["MaximumRetryAttempts"] == 0 and config["MaximumEventAgeInSeconds"] == 21600
    assert config["DestinationConfig"] == {"OnSuccess": {"Destination": audit}}
    function = Function.objects.get(owner=user, name="hello")
    assert (function.max_retry_attempts, function.on_success_destination) == (0, "function:audit")
    update = aws.request("POST", "/2019-09-25/functions/hello/event-invoke-config", {"MaximumEventAgeInSeconds": 60})
    assert json.loads(update.content)["MaximumRetryAttempts"] == 0
    sqs = {"DestinationConfig": {"OnFailure": {"Destination": "arn:aws:sqs:us-east-1:123456789012:q"}}}
    refused = aws.request("PUT", "/2019-09-25/functions/hello/event-invoke-config", sqs)
    assert error_of(refused)[:2] == (400, "InvalidParameterValueException")
    listed = json.loads(aws.request("GET", "/2019-09-25/functions/hello/event-invoke-config/list").content)
    assert len(listed["FunctionEventInvokeConfigs"]) == 1
    assert aws.request("DELETE", "/2019-09-25/functions/hello/event-invoke-config").status_code == 204
    function.refresh_from_db()
    assert (function.max_retry_attempts, function.on_success_destination) == (2, "")


# ---- signatures -------------------------------------------------------------------------------------------------


def test_a_wrong_secret_an_unknown_key_and_no_signature_get_awss_errors(aws, client):
    wrong = aws.request("GET", "/2015-03-31/functions", secret="not-the-secret")
    status, code, message = error_of(wrong)
    assert (status, code) == (403, "InvalidSignatureException")
    assert message.startswith("The request signature we calculated does not match the signature you provided.")
    unknown = Lambda(client, "EPHAAAAAAAAAAAAAAAAA", "x").request("GET", "/2015-03-31/functions")
    assert error_of(unknown) == (
        403,
        "UnrecognizedClientException",
        "The security token included in the request is invalid.",
    )
    unsigned = aws.send("GET", "/2015-03-31/functions", b"")
    assert error_of(unsigned)[:2] == (403, "MissingAuthenticationTokenException")


def test_an_expired_or_future_signature_a_tampered_body_and_another_region_are_refused(aws):
    old = datetime.now(UTC) - timedelta(minutes=16)
    expired = aws.request("GET", "/2015-03-31/functions", at=old.replace(tzinfo=None))
    status, code, message = error_of(expired)
    assert (status, code) == (403, "InvalidSignatureException") and message.startswith("Signature expired:")
    within = aws.request("GET", "/2015-03-31/functions", at=(old + timedelta(minutes=2)).replace(tzinfo=None))
    assert within.status_code == 200
    future = aws.request(
        "GET", "/2015-03-31/functions", at=(datetime.now(UTC) + timedelta(minutes=16)).replace(tzinfo=None)
    )
    assert error_of(future)[:2] == (403, "InvalidSignatureException")
    tampered = aws.request("POST", "/2015-03-31/functions/hello/invocations", b'{"amount": 1}', tamper=b'{"amount": 9}')
    assert error_of(tampered)[:2] == (403, "InvalidSignatureException")
    elsewhere = Lambda(aws.client, aws.key_id, aws.secret, region="eu-west-1").request("GET", "/2015-03-31/functions")
    assert error_of(elsewhere)[:2] == (403, "InvalidSignatureException")


def test_a_presigned_url_is_accepted_until_it_expires(aws):
    aws.create()
    url = "http://testserver/2015-03-31/functions/hello/configuration"
    request = AWSRequest(method="GET", url=url)
    SigV4QueryAuth(Credentials(aws.key_id, aws.secret), "lambda", "us-east-1", expires=60).add_auth(request)
    path = request.url.removeprefix("http://testserver")
    assert aws.send("GET", path, b"").status_code == 200
    later = datetime.now(UTC) + timedelta(seconds=61)
    with patch("functions_app.lambda_api.surface.timezone.now", return_value=later):
        assert error_of(aws.send("GET", path, b""))[:2] == (403, "InvalidSignatureException")


def test_a_revoked_key_stops_working_at_once(aws, user):
    assert aws.request("GET", "/2015-03-31/functions").status_code == 200
    from console.models import AccessKey

    access_key_revoke(access_key=AccessKey.objects.get(access_key_id=aws.key_id))
    assert error_of(aws.request("GET", "/2015-03-31/functions"))[:2] == (403, "UnrecognizedClientException")


def test_with_verification_off_the_key_still_names_the_account(aws, settings):
    settings.LAMBDA_API_VERIFY_SIGNATURES = False
    assert aws.request("GET", "/2015-03-31/functions", secret="anything").status_code == 200
    unknown = Lambda(aws.client, "EPHAAAAAAAAAAAAAAAAA", "x").request("GET", "/2015-03-31/functions")
    assert error_of(unknown)[:2] == (403, "UnrecognizedClientException")


def test_get_function_gives_a_link_that_downloads_the_package_for_ten_minutes(aws, client):
    package = make_zip({"app.py": SOURCE})
    aws.create(Code={"ZipFile": base64.b64encode(package).decode()})
    location = json.loads(aws.request("GET", "/2015-03-31/functions/hello").content)["Code"]["Location"]
    assert location.startswith("http://testserver/code-downloads/")
    path = location.removeprefix("http://testserver")
    download = client.get(path)
    assert download.status_code == 200 and download.content == package
    assert download["Content-Type"] == "application/zip"
    forged = client.get(path.replace("/code-downloads/", "/code-downloads/x"))
    assert forged.status_code == 403
    later = datetime.now(UTC) + timedelta(minutes=11)
    with patch("django.core.signing.time.time", return_value=later.timestamp()):
        assert client.get(path).status_code == 403
    aws.request("DELETE", "/2015-03-31/functions/hello")
    assert client.get(path).status_code == 404


# ---- what a hostile tester found ---------------------------------------------------------------------------------


def test_a_create_function_refused_for_its_tags_creates_nothing(aws, user):
    bad_tags = aws.create(Tags={"aws:reserved": "x"}, Publish=True)
    assert error_of(bad_tags)[:2] == (400, "InvalidParameterValueException")
    too_many = aws.create(Tags={f"t{number}": "x" for number in range(51)})
    assert error_of(too_many)[:2] == (400, "InvalidParameterValueException")
    assert not Function.objects.filter(owner=user).exists()
    assert aws.create().status_code == 201


def test_strings_no_database_can_store_are_refused_not_a_500(aws, user):
    aws.create()
    for body in (
        b'{"Description": "\\ud800"}',
        b'{"Description": "a\\u0000b"}',
        b'{"Environment": {"Variables": {"AB": "\\udfff"}}}',
    ):
        answer = aws.request(
            "PUT", "/2015-03-31/functions/hello/configuration", body, headers={"Content-Type": "application/json"}
        )
        assert error_of(answer)[:2] == (400, "InvalidRequestContentException"), body
    tags = aws.request(
        "POST",
        f"/2017-03-31/tags/{quote(f'arn:aws:lambda:us-east-1:{user.pk:012d}:function:hello', safe='')}",
        b'{"Tags": {"k": "\\ud800"}}',
        headers={"Content-Type": "application/json"},
    )
    assert error_of(tags)[:2] == (400, "InvalidRequestContentException")
    deep = base64.b64encode(b"[" * 1500 + b"]" * 1500).decode()
    nested = aws.request(
        "POST",
        "/2015-03-31/functions/hello/invocations",
        b"{}",
        headers={"X-Amz-Client-Context": deep, "X-Amz-Invocation-Type": "Event"},
    )
    assert error_of(nested)[:2] == (400, "InvalidRequestContentException")
    not_utf8 = aws.request("GET", "/2015-03-31/functions/hello/configuration", query="Qualifier=%ED%A0%80")
    assert error_of(not_utf8)[:2] == (400, "ValidationException")


def test_messages_name_lambdas_members_and_a_null_member_is_an_absent_one(aws):
    aws.create()
    status, code, message = error_of(aws.request("PUT", "/2015-03-31/functions/hello/configuration", {"Timeout": 901}))
    assert (status, code) == (400, "InvalidParameterValueException") and message.startswith("Timeout: ")
    assert aws.request("PUT", "/2015-03-31/functions/hello/configuration", {"MemorySize": None}).status_code == 200
    qualified = aws.request("PUT", "/2017-10-31/functions/hello%3A1/concurrency", {"ReservedConcurrentExecutions": 1})
    assert error_of(qualified)[:2] == (400, "InvalidParameterValueException")
    negative = base64.urlsafe_b64encode(b"-5").decode()
    assert error_of(aws.request("GET", "/2015-03-31/functions", query=f"Marker={quote(negative)}"))[0] == 400


def test_an_sdk_invocation_id_reused_with_another_payload_says_so(aws):
    aws.create()
    retry = {"X-Amz-Invocation-Type": "Event", "amz-sdk-invocation-id": "6d0f0e8a-0000-4000-8000-000000000001"}
    assert aws.request("POST", "/2015-03-31/functions/hello/invocations", b'{"x": 1}', headers=retry).status_code == 202
    other = aws.request("POST", "/2015-03-31/functions/hello/invocations", b'{"x": 2}', headers=retry)
    status, code, message = error_of(other)
    assert (status, code) == (409, "ResourceConflictException") and "amz-sdk-invocation-id" in message


def test_errors_django_makes_on_lambdas_paths_still_come_in_awss_shape(aws, client):
    nul = client.get("/2015-03-31/functions/a%00b")
    assert nul.status_code == 400 and nul["x-amzn-ErrorType"] == "ValidationException"
    assert json.loads(nul.content)["Type"] == "User"
    stranger = client.get("/2015-03-31/functions", HTTP_HOST="not-this-server.example")
    assert stranger.status_code == 400 and stranger["x-amzn-ErrorType"] == "ValidationException"
    aws.create()
    dry = aws.request(
        "POST", "/2015-03-31/functions/hello/invocations", b"", headers={"X-Amz-Invocation-Type": "DryRun"}
    )
    assert dry.status_code == 204 and dry["Content-Type"] == "application/json"
