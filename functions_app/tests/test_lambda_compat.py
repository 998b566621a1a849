"""The AWS toolchain against the real server `make run` starts, changed only in its endpoint and credentials: the
real boto3 client through Lambda's whole workflow (waiters and paginators included), the AWS CLI v1 running the
README's session as it is written, the calls Terraform's provider makes for aws_lambda_function, aws_lambda_alias
and aws_lambda_permission, and AWS's exact errors for bad signatures, unknown keys, another tenant and bad bodies."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest.mock import patch

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from console.tests.test_standalone import (
    BASE_DIR,
    Output,
    free_port,
    read_until_running,
    start_platform,
    stop_platform,
)

# The platform these tests start is always the embedded one (start_platform drops DATABASE_URL and REDIS_URL): CI
# runs them once, not again in its PostgreSQL + Redis server run.
pytestmark = [pytest.mark.slow, pytest.mark.backend_free]

ROLE = "arn:aws:iam::123456789012:role/lambda-role"
SOURCE = """
import time

def handler(event, context):
    print("hello from", context.function_name)
    if event.get("fail"):
        raise ValueError("boom: " + str(event["fail"]))
    if event.get("sleep"):
        time.sleep(event["sleep"])
    custom = context.client_context.custom if context.client_context else None
    return {"got": event, "arn": context.invoked_function_arn, "custom": custom, "version": context.function_version}
"""
AWS_CLI = BASE_DIR / ".venv" / "awscli" / "bin" / "aws"


def package(source: str = SOURCE) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("app.py", source)
    return buffer.getvalue()


def native(base: str, token: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
    with urllib.request.urlopen(urllib.request.Request(f"{base}{path}", data, headers), timeout=30) as answer:
        return json.load(answer)


class Platform:
    def __init__(self, base: str, var_dir: Path, keys: dict[str, str], other_keys: dict[str, str]) -> None:
        self.base, self.var_dir, self.keys, self.other_keys = base, var_dir, keys, other_keys

    def client(self, keys: dict[str, str] | None = None, **config: Any) -> Any:
        keys = keys or self.keys
        return boto3.client(
            "lambda",
            endpoint_url=self.base,
            region_name="us-east-1",
            aws_access_key_id=keys["access_key_id"],
            aws_secret_access_key=keys["secret_access_key"],
            config=Config(retries={"total_max_attempts": 1}, read_timeout=70, **config),
        )


def _second_tenant(var_dir: Path) -> dict[str, str]:
    """Another user with an access key, made in the platform's own database."""
    script = (
        "from django.contrib.auth.models import User; from console.access_keys import access_key_create; "
        "import json; u = User.objects.create_user('tenant-b', password='pw-for-tests-only'); "
        "k, s = access_key_create(owner=u, name='b'); "
        "print(json.dumps({'access_key_id': k.access_key_id, 'secret_access_key': s}))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["EPHEMERA_VAR_DIR"] = str(var_dir)
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    port = free_port()
    var_dir = tmp_path_factory.mktemp("lambda") / "var"
    process = start_platform(var_dir, port)
    try:
        banner = read_until_running(process, Output(process))
        token = re.search(r"API key:\s+(eph_\S+)", banner).group(1)
        base = f"http://127.0.0.1:{port}"
        keys = native(base, token, "/api/v1/access-keys/", {"name": "compat"})
        yield Platform(base, var_dir, keys, _second_tenant(var_dir))
    finally:
        stop_platform(process)


def error_code(call: Any, *args: Any, **kwargs: Any) -> tuple[str, str, int]:
    with pytest.raises(ClientError) as raised:
        call(*args, **kwargs)
    error = raised.value.response
    return error["Error"]["Code"], error["Error"]["Message"], error["ResponseMetadata"]["HTTPStatusCode"]


def create(client: Any, name: str, **fields: Any) -> dict:
    return client.create_function(
        FunctionName=name, Runtime="python3.12", Role=ROLE, Handler="app.handler", Code={"ZipFile": package()}, **fields
    )


# ---- boto3 -----------------------------------------------------------------------------------------------------


def test_boto3_runs_lambdas_workflow_from_create_to_delete(platform):
    aws = platform.client()
    created = create(aws, "compat", Timeout=10, MemorySize=256, Environment={"Variables": {"GREETING": "hi"}})
    assert created["State"] == "Active" and created["FunctionArn"].endswith(":function:compat")
    aws.get_waiter("function_active_v2").wait(FunctionName="compat")

    context = base64.b64encode(json.dumps({"custom": {"k": "v"}}).encode()).decode()
    answer = aws.invoke(FunctionName="compat", Payload=b'{"x": 1}', LogType="Tail", ClientContext=context)
    assert answer["StatusCode"] == 200 and answer["ExecutedVersion"] == "$LATEST"
    result = json.load(answer["Payload"])
    assert result["got"] == {"x": 1} and result["custom"] == {"k": "v"}
    log = base64.b64decode(answer["LogResult"]).decode()
    assert "START RequestId:" in log and "hello from compat" in log and "REPORT RequestId:" in log

    failed = aws.invoke(FunctionName="compat", Payload=b'{"fail": "x"}')
    assert failed["FunctionError"] == "Unhandled"
    error = json.load(failed["Payload"])
    assert (error["errorType"], error["errorMessage"]) == ("ValueError", "boom: x")

    event = aws.invoke(FunctionName="compat", InvocationType="Event", Payload=b"{}")
    assert event["StatusCode"] == 202
    assert aws.invoke(FunctionName="compat", InvocationType="DryRun")["StatusCode"] == 204

    revision = aws.get_function_configuration(FunctionName="compat")["RevisionId"]
    updated = aws.update_function_configuration(FunctionName="compat", Timeout=20, RevisionId=revision)
    assert updated["Timeout"] == 20
    aws.get_waiter("function_updated_v2").wait(FunctionName="compat")
    code, _, status = error_code(
        aws.update_function_configuration, FunctionName="compat", Timeout=5, RevisionId=revision
    )
    assert (code, status) == ("PreconditionFailedException", 412)
    one = aws.publish_version(FunctionName="compat")["Version"]
    aws.update_function_code(FunctionName="compat", ZipFile=package(SOURCE + "\n# two\n"))
    aws.get_waiter("function_updated_v2").wait(FunctionName="compat")
    two = aws.publish_version(FunctionName="compat", Description="second")["Version"]
    assert (one, two) == ("1", "2")
    aws.get_waiter("published_version_active").wait(FunctionName="compat", Qualifier=two)

    alias = aws.create_alias(
        FunctionName="compat", Name="live", FunctionVersion=one, RoutingConfig={"AdditionalVersionWeights": {two: 0.5}}
    )
    assert alias["RoutingConfig"]["AdditionalVersionWeights"] == {two: 0.5}
    ran = {aws.invoke(FunctionName="compat", Qualifier="live", Payload=b"{}")["ExecutedVersion"] for _ in range(12)}
    assert ran <= {one, two} and ran
    through_alias = json.load(aws.invoke(FunctionName="compat:live", Payload=b"{}")["Payload"])
    assert through_alias["arn"].endswith(":function:compat:live")

    aws.put_function_concurrency(FunctionName="compat", ReservedConcurrentExecutions=3)
    assert aws.get_function(FunctionName="compat")["Concurrency"] == {"ReservedConcurrentExecutions": 3}
    account = aws.get_account_settings()
    limit = account["AccountLimit"]
    assert limit["UnreservedConcurrentExecutions"] == limit["ConcurrentExecutions"] - 3
    assert account["AccountUsage"]["FunctionCount"] >= 1

    for name in ("page-a", "page-b"):
        create(aws, name)
    pages = list(aws.get_paginator("list_functions").paginate(PaginationConfig={"PageSize": 1}))
    names = [config["FunctionName"] for page in pages for config in page["Functions"]]
    assert len(pages) >= 3 and {"compat", "page-a", "page-b"} <= set(names) and len(names) == len(set(names))
    versions = aws.list_versions_by_function(FunctionName="compat")["Versions"]
    assert [v["Version"] for v in versions] == ["$LATEST", "1", "2"]

    aws.delete_function(FunctionName="compat")
    code, message, status = error_code(aws.get_function, FunctionName="compat")
    assert (code, status) == ("ResourceNotFoundException", 404) and message.startswith("Function not found:")


def test_signatures_keys_and_tenancy_get_awss_exact_errors(platform):
    aws = platform.client()
    create(aws, "guarded")
    wrong = platform.client({**platform.keys, "secret_access_key": "0" * 40})
    code, message, status = error_code(wrong.list_functions)
    assert (code, status) == ("InvalidSignatureException", 403)
    assert message.startswith("The request signature we calculated does not match")
    unknown = platform.client({"access_key_id": "EPHAUNKNOWNUNKNOWN22", "secret_access_key": "x" * 40})
    assert error_code(unknown.list_functions)[:3] == (
        "UnrecognizedClientException",
        "The security token included in the request is invalid.",
        403,
    )
    twenty_minutes_ago = datetime.now(UTC) - timedelta(minutes=20)
    with patch("botocore.auth.get_current_datetime", return_value=twenty_minutes_ago.replace(tzinfo=None)):
        code, message, status = error_code(aws.list_functions)
    assert (code, status) == ("InvalidSignatureException", 403) and message.startswith("Signature expired:")

    other = platform.client(platform.other_keys)
    assert error_code(other.get_function, FunctionName="guarded")[0] == "ResourceNotFoundException"
    assert error_code(other.invoke, FunctionName="guarded", Payload=b"{}")[0] == "ResourceNotFoundException"
    owner_arn = aws.get_function(FunctionName="guarded")["Configuration"]["FunctionArn"]
    assert error_code(other.delete_function, FunctionName=owner_arn)[0] == "ResourceNotFoundException"
    assert "guarded" not in [f["FunctionName"] for f in other.list_functions()["Functions"]]

    too_big = b'"' + b"x" * (6 * 1024 * 1024) + b'"'
    assert error_code(aws.invoke, FunctionName="guarded", Payload=too_big)[:3:2] == ("RequestTooLargeException", 413)
    assert error_code(aws.invoke, FunctionName="guarded", Payload=b"{not json")[0] == "InvalidRequestContentException"
    assert error_code(aws.get_layer_version, LayerName="l", VersionNumber=1)[::2] == ("NotImplemented", 501)


def _signed(platform: Platform, method: str, path: str, body: bytes, content_type: str) -> tuple[int, dict, str]:
    request = AWSRequest(method=method, url=f"{platform.base}{path}", data=body, headers={"Content-Type": content_type})
    keys = platform.keys
    SigV4Auth(Credentials(keys["access_key_id"], keys["secret_access_key"]), "lambda", "us-east-1").add_auth(request)
    prepared = urllib.request.Request(request.url, body, dict(request.headers.items()), method=method)
    try:
        with urllib.request.urlopen(prepared, timeout=30) as answer:
            return answer.status, json.load(answer), answer.headers["x-amzn-ErrorType"] or ""
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers["x-amzn-ErrorType"]


def test_malformed_bodies_get_awss_errors_and_change_nothing(platform):
    status, body, code = _signed(
        platform, "POST", "/2015-03-31/functions", b'{"FunctionName": "half', "application/json"
    )
    assert (status, code, body["Type"]) == (400, "InvalidRequestContentException", "User")
    status, body, code = _signed(platform, "POST", "/2015-03-31/functions", b'["a", "list"]', "application/json")
    assert (status, code) == (400, "InvalidRequestContentException")
    wrong_types = json.dumps({"FunctionName": "t", "Role": ROLE, "Code": {"ZipFile": "!!"}, "MemorySize": "big"})
    status, body, code = _signed(platform, "POST", "/2015-03-31/functions", wrong_types.encode(), "application/json")
    assert (status, code) == (400, "ValidationException") and body["message"].startswith("2 validation errors detected")
    names = [f["FunctionName"] for f in platform.client().list_functions()["Functions"]]
    assert "t" not in names
    # An encoded "/" stays inside the function's name: never another operation (ListVersionsByFunction here).
    status, body, code = _signed(platform, "GET", "/2015-03-31/functions/any%2Fversions", b"", "application/json")
    assert (status, code) == (400, "ValidationException") and "functionName" in body["message"]


# ---- Terraform's provider, replayed ------------------------------------------------------------------------------


def test_terraforms_call_sequence_for_a_function_an_alias_and_a_permission(platform):
    aws = platform.client()
    zip_bytes = package()
    created = create(aws, "tf-fn", Publish=True, Tags={"managed-by": "terraform"})
    assert created["CodeSha256"] == base64.b64encode(__import__("hashlib").sha256(zip_bytes).digest()).decode()
    deadline = time.monotonic() + 60
    while aws.get_function(FunctionName="tf-fn")["Configuration"]["State"] != "Active":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    aws.put_function_concurrency(FunctionName="tf-fn", ReservedConcurrentExecutions=2)
    read = aws.get_function(FunctionName="tf-fn")
    assert read["Code"] and read["Configuration"] and read["Tags"] == {"managed-by": "terraform"}
    assert aws.get_function_code_signing_config(FunctionName="tf-fn")["CodeSigningConfigArn"] == ""
    versions = aws.list_versions_by_function(FunctionName="tf-fn")["Versions"]
    assert versions[-1]["Version"] == "1" and versions[-1]["FunctionArn"].endswith(":tf-fn:1")

    aws.update_function_configuration(FunctionName="tf-fn", MemorySize=512, Environment={"Variables": {"STAGE": "two"}})
    aws.get_waiter("function_updated_v2").wait(FunctionName="tf-fn")
    aws.update_function_code(FunctionName="tf-fn", ZipFile=package(SOURCE + "\n# v2\n"))
    aws.get_waiter("function_updated_v2").wait(FunctionName="tf-fn")
    assert aws.publish_version(FunctionName="tf-fn")["Version"] == "2"

    aws.create_alias(FunctionName="tf-fn", Name="prod", FunctionVersion="2")
    assert aws.get_alias(FunctionName="tf-fn", Name="prod")["FunctionVersion"] == "2"
    aws.update_alias(FunctionName="tf-fn", Name="prod", FunctionVersion="1")
    statement = aws.add_permission(
        FunctionName="tf-fn",
        StatementId="AllowS3",
        Action="lambda:InvokeFunction",
        Principal="s3.amazonaws.com",
        SourceArn="arn:aws:s3:::bucket",
        Qualifier="prod",
    )["Statement"]
    assert json.loads(statement)["Sid"] == "AllowS3"
    policy = json.loads(aws.get_policy(FunctionName="tf-fn", Qualifier="prod")["Policy"])
    assert [s["Sid"] for s in policy["Statement"]] == ["AllowS3"]
    aws.remove_permission(FunctionName="tf-fn", StatementId="AllowS3", Qualifier="prod")
    aws.delete_alias(FunctionName="tf-fn", Name="prod")

    aws.delete_function(FunctionName="tf-fn")
    deadline = time.monotonic() + 60
    while True:
        try:
            aws.get_function(FunctionName="tf-fn")
        except aws.exceptions.ResourceNotFoundException:
            break
        assert time.monotonic() < deadline
        time.sleep(0.5)


# ---- the AWS CLI, through the README ------------------------------------------------------------------------------


def readme_block(heading: str) -> str:
    text = (BASE_DIR / "README.md").read_text()
    section = text[text.index(heading) :]
    return section.split("```sh\n", 1)[1].split("\n```", 1)[0]


def test_the_readmes_aws_cli_session_runs_as_it_is_written(platform, tmp_path):
    script = readme_block("### Using the AWS CLI, boto3 and Terraform").replace("http://127.0.0.1:8000", platform.base)
    env = {
        **os.environ,
        "PATH": f"{AWS_CLI.parent}:{os.environ['PATH']}",
        "EPHEMERA_ACCESS_KEY_ID": platform.keys["access_key_id"],
        "EPHEMERA_SECRET_ACCESS_KEY": platform.keys["secret_access_key"],
        "HOME": str(tmp_path),
    }
    run = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads((tmp_path / "out.json").read_text()) == {"message": "Hello, Ada!"}
    assert '"FunctionError": "Unhandled"' in run.stdout
