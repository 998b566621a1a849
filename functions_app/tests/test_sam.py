"""Importing AWS SAM templates: functions created and updated, their events as Ephemera's triggers, everything else
reported as skipped with its reason, through the command and the REST API."""

from __future__ import annotations

import io
import json
import re
import zipfile
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from functions_app.models import BucketNotification, EventSourceMapping, Function, HttpApi, Schedule
from functions_app.secrets import env_decrypt

pytestmark = pytest.mark.django_db

TEMPLATE = """
AWSTemplateFormatVersion: '2010-09-09'
Transform: AWS::Serverless-2016-10-31
Description: orders
Parameters:
  Stage:
    Type: String
    Default: prod
  QueueArn:
    Type: String
    Default: arn:aws:sqs:us-east-1:123456789012:orders
Globals:
  Function:
    Runtime: python3.12
    Timeout: 10
    MemorySize: 256
    Environment:
      Variables:
        STAGE: !Ref Stage
Resources:
  Uploads:
    Type: AWS::S3::Bucket
    Properties:
      BucketName: !Sub "uploads-${Stage}"
  OrdersFunction:
    Type: AWS::Serverless::Function
    Properties:
      FunctionName: orders-api
      CodeUri: src/orders/
      Handler: app.handler
      MemorySize: 512
      Environment:
        Variables:
          TABLE: !Sub "orders-${Stage}-${AWS::Region}"
      Layers:
        - arn:aws:lambda:us-east-1:123456789012:layer:deps:1
      Policies:
        - AWSLambdaBasicExecutionRole
      AutoPublishAlias: live
      Tags:
        team: shop
      Events:
        GetOrder:
          Type: HttpApi
          Properties:
            Path: /orders/{id}
            Method: get
        Legacy:
          Type: Api
          Properties:
            Path: /v1/orders
            Method: post
        Nightly:
          Type: Schedule
          Properties:
            Schedule: rate(1 day)
            Input: '{"report": true}'
        Receipts:
          Type: S3
          Properties:
            Bucket: !Ref Uploads
            Events: s3:ObjectCreated:*
            Filter:
              S3Key:
                Rules:
                  - Name: suffix
                    Value: .csv
        Queue:
          Type: SQS
          Properties:
            Queue: !Ref QueueArn
        Topic:
          Type: SNS
          Properties:
            Topic: arn:aws:sns:us-east-1:123456789012:t
        Clicks:
          Type: Kinesis
          Properties:
            Stream: !Sub "arn:aws:kinesis:${AWS::Region}:${AWS::AccountId}:stream/clicks"
            StartingPosition: TRIM_HORIZON
            BatchSize: 50
        Unknowable:
          Type: Kinesis
          Properties:
            Stream: !GetAtt ClickStream.Arn
  PingFunction:
    Type: AWS::Serverless::Function
    Properties:
      Handler: index.handler
      InlineCode: |
        def handler(event, context):
            return "pong"
      ReservedConcurrentExecutions: 2
      EventInvokeConfig:
        MaximumRetryAttempts: 0
  Table:
    Type: AWS::DynamoDB::Table
"""
ORDERS = "import os\n\ndef handler(event, context):\n    return {'table': os.environ['TABLE']}\n"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "src" / "orders").mkdir(parents=True)
    (tmp_path / "src" / "orders" / "app.py").write_text(ORDERS)
    (tmp_path / "template.yaml").write_text(TEMPLATE)
    return tmp_path


def imported(project: Path, *args: str) -> str:
    out = StringIO()
    call_command("import_sam", str(project / "template.yaml"), "--owner", "alice", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_the_command_imports_functions_with_globals_parameters_and_their_triggers(project, user):
    output = imported(project, "--stack-name", "orders")
    orders = Function.objects.get(owner=user, name="orders-api")
    assert (orders.memory_mb, orders.timeout_s, orders.runtime_label) == (512, 10, "python3.12")
    assert env_decrypt(orders.environment_ciphertext) == {"STAGE": "prod", "TABLE": "orders-prod-us-east-1"}
    assert orders.tags == {"team": "shop"} and orders.aliases.get(name="live").version.number == 1
    ping = Function.objects.get(owner=user, name="PingFunction")
    assert (ping.handler, ping.reserved_concurrency, ping.max_retry_attempts) == ("index.handler", 2, 0)

    routes = {
        route["route_key"]: route for route in HttpApi.objects.get(owner=user, name="orders").definition["routes"]
    }
    assert routes["GET /orders/{id}"]["payload_format"] == "2.0" and routes["GET /orders/{id}"]["qualifier"] == "live"
    assert routes["POST /v1/orders"]["payload_format"] == "1.0"
    schedule = Schedule.objects.get(function=orders, name="Nightly")
    assert (schedule.expression, schedule.input) == ("rate(1 day)", {"report": True})
    notification = BucketNotification.objects.get(function=orders)
    assert (notification.bucket, notification.suffix, notification.mode) == ("uploads-prod", ".csv", "webhook")
    mapping = EventSourceMapping.objects.get(function=orders)
    assert (mapping.source, mapping.batch_size, mapping.starting_position) == ("clicks", 50, "TRIM_HORIZON")

    assert "Functions that were created: orders-api, PingFunction" in output
    assert "/api/v1/bucket-events/" in output and "shown once" in output
    for item in (
        "OrdersFunction.Layers",
        "OrdersFunction.Policies",
        "OrdersFunction.Events.Queue",
        "OrdersFunction.Events.Topic",
        "OrdersFunction.Events.Unknowable",
        "Table",
    ):
        assert f"Skipped {item}:" in output, item
    assert "needs the queue's keys" in output and "Fn::GetAtt" in output


def test_importing_again_changes_nothing_and_a_change_updates_only_what_changed(project, user):
    imported(project)
    orders = Function.objects.get(owner=user, name="orders-api")
    revision = orders.revision_id
    again = imported(project)
    assert "Functions that were unchanged: orders-api, PingFunction" in again
    orders.refresh_from_db()
    assert orders.revision_id == revision and orders.versions.count() == 1
    assert Schedule.objects.filter(function=orders).count() == 1 and BucketNotification.objects.count() == 1
    assert len(HttpApi.objects.get(owner=user).definition["routes"]) == 2
    (project / "src" / "orders" / "app.py").write_text(ORDERS + "# v2\n")
    changed = imported(project)
    assert "Functions that were updated: orders-api" in changed
    orders.refresh_from_db()
    assert orders.versions.count() == 2 and orders.aliases.get(name="live").version.number == 2


def test_a_dry_run_says_what_would_change_and_writes_nothing(project, user):
    output = imported(project, "--dry-run")
    assert "Functions that would be created: orders-api, PingFunction" in output
    assert not Function.objects.filter(owner=user).exists()


def test_one_bad_function_leaves_the_whole_template_unimported(project, user):
    (project / "src" / "orders" / "app.py").write_text("def handler(event, context:\n")
    with pytest.raises(CommandError, match=r"app\.py"):
        imported(project)
    assert not Function.objects.filter(owner=user).exists() and not HttpApi.objects.exists()


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("Resources: [", "not YAML or JSON"),
        ("Description: nothing\n", "no Resources"),
        ("Resources:\n  T:\n    Type: AWS::DynamoDB::Table\n", "no AWS::Serverless::Function"),
        (
            "Resources:\n  F:\n    Type: AWS::Serverless::Function\n    Properties:\n      Handler: a.b\n"
            "      CodeUri: ../../etc/\n",
            "outside the template's folder",
        ),
        (
            "Resources:\n  F:\n    Type: AWS::Serverless::Function\n    Properties:\n      Handler: a.b\n"
            "      Runtime: nodejs20.x\n      InlineCode: x\n",
            "not Python",
        ),
        (
            "Resources:\n  F:\n    Type: AWS::Serverless::Function\n    Properties:\n      Handler: a.b\n"
            "      CodeUri: s3://bucket/code.zip\n",
            "is in S3",
        ),
        ("a: &a [x, x]\nb: &b [*a, *a]\nResources: {F: *b}\n", "aliases"),
        ("Resources:\n  F:\n    Type: AWS::Serverless::Function\n    Properties: [1, 2]\n", "must be maps"),
        (
            "Resources:\n  F:\n    Type: AWS::Serverless::Function\n    Properties:\n      Handler: a.b\n"
            "      InlineCode: x\n      Environment: {Variables: [1]}\n",
            "Variables must be a map",
        ),
        ("Resources:\n  F:\n" + "    " * 1 + "[" * 5000 + "\n", "nested too deeply|not YAML"),
    ],
)
def test_bad_templates_get_clear_errors(tmp_path, user, template, message):
    (tmp_path / "template.yaml").write_text(template)
    with pytest.raises(CommandError, match=message):
        call_command(
            "import_sam", str(tmp_path / "template.yaml"), "--owner", "alice", stdout=StringIO(), stderr=StringIO()
        )


def project_zip(project: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in project.rglob("*"):
            if path.is_file():
                archive.write(path, str(path.relative_to(project)))
    return buffer.getvalue()


def test_the_api_imports_a_project_zip_and_a_template_alone(api, project, user):
    upload = io.BytesIO(project_zip(project))
    upload.name = "project.zip"
    answer = api.post("/api/v1/sam-imports/", {"project": upload, "stack_name": "shop"}, format="multipart")
    assert answer.status_code == 200, answer.content
    report = answer.json()
    assert report["created"] == ["orders-api", "PingFunction"]
    assert {"item": "OrdersFunction.Events.Topic", "reason": "Ephemera has no SNS"} in report["skipped"]
    assert HttpApi.objects.filter(owner=user, name="shop").exists()

    inline = "Resources:\n  Echo:\n    Type: AWS::Serverless::Function\n    Properties:\n      Handler: index.h\n"
    inline += "      InlineCode: |\n        def h(event, context):\n            return event\n"
    alone = api.post("/api/v1/sam-imports/", {"template": inline}, format="json")
    assert alone.status_code == 200 and alone.json()["created"] == ["Echo"]
    needs_folder = api.post("/api/v1/sam-imports/", {"template": TEMPLATE}, format="json")
    assert needs_folder.status_code == 400 and "project as a zip" in needs_folder.json()["message"]


def test_the_api_refuses_a_hostile_or_broken_upload_clearly(api, user):
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../template.yaml", "Resources: {}")
    evil.seek(0)
    evil.name = "project.zip"
    refused = api.post("/api/v1/sam-imports/", {"project": evil}, format="multipart")
    assert refused.status_code == 400 and refused.json()["type"]
    not_zip = io.BytesIO(b"not a zip")
    not_zip.name = "project.zip"
    assert api.post("/api/v1/sam-imports/", {"project": not_zip}, format="multipart").status_code == 400
    assert api.post("/api/v1/sam-imports/", {}, format="json").status_code == 400
    assert (
        api.post("/api/v1/sam-imports/", {"template": "Resources: ["}, format="json").json()["type"]
        == "InvalidTemplate"
    )
    assert not Function.objects.filter(owner=user).exists()


def test_the_reports_json_is_what_the_api_returns(api):
    inline = {
        "Resources": {
            "J": {
                "Type": "AWS::Serverless::Function",
                "Properties": {"Handler": "index.h", "InlineCode": "def h(e, c):\n    return 1\n"},
            }
        }
    }
    answer = api.post("/api/v1/sam-imports/", {"template": json.dumps(inline), "dry_run": True}, format="json")
    assert answer.json() == {
        "created": ["J"],
        "updated": [],
        "unchanged": [],
        "triggers": [],
        "skipped": [],
        "notes": [],
        "dry_run": True,
    }


def test_the_console_imports_an_uploaded_project_and_shows_the_report(client, project, user):
    client.force_login(user)
    assert 'id="sam-import-link"' in client.get("/functions/").content.decode()
    upload = io.BytesIO(project_zip(project))
    upload.name = "project.zip"
    page = client.post("/functions/+import-sam/", {"upload": upload, "stack_name": "shop"})
    assert page.status_code == 200
    body = page.content.decode()
    assert "What the import did" in body and "orders-api" in body and "Ephemera has no SNS" in body
    assert Function.objects.filter(owner=user, name="orders-api").exists()
    broken = io.BytesIO(b"Resources: [")
    broken.name = "template.yaml"
    refused = client.post("/functions/+import-sam/", {"upload": broken, "stack_name": "shop"})
    assert refused.status_code == 400 and "not YAML or JSON" in refused.content.decode()


def test_sqs_events_become_queue_mappings_when_the_import_is_given_the_queues_keys(project, user, aws_server, settings):
    settings.SOURCE_ENDPOINT_ALLOW_PRIVATE = True  # the SQS-API server is on loopback
    keys = ["--sqs-access-key-id", "AKIATEST", "--sqs-secret-access-key", "s", "--sqs-endpoint-url", aws_server]
    output = imported(project, *keys)
    mapping = EventSourceMapping.objects.get(function__name="orders-api", kind="sqs")
    assert mapping.source == f"{aws_server}/123456789012/orders" and mapping.batch_size == 10
    assert f"queue mapping {aws_server}/123456789012/orders → orders-api" in output
    imported(project, *keys)
    assert EventSourceMapping.objects.filter(kind="sqs").count() == 1
    with pytest.raises(CommandError, match="together"):
        imported(project, "--sqs-access-key-id", "AKIATEST")


def function_template(properties: str = "", events: str = "") -> str:
    """One inline function, with more properties and events (YAML, indented as the function's properties)."""
    template = (
        "Resources:\n  Fn:\n    Type: AWS::Serverless::Function\n    Properties:\n      Handler: index.h\n"
        "      InlineCode: |\n        def h(event, context):\n            return event\n"
    )
    template += properties
    if events:
        template += "      Events:\n" + events
    return template


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (function_template("      Description: !Ref [a, b]\n"), "!Ref takes a name"),
        (function_template("      Description: !Sub [only]\n"), "!Sub takes"),
        (function_template("      Description: {'Fn::Sub': 5}\n"), "!Sub takes"),
        (function_template("      Description: !Join [',', 5]\n"), "!Join takes"),
        ("Globals: [1]\n" + function_template(), "Globals must be a map"),
        ("Parameters: [1]\n" + function_template(), "Parameters must be a map"),
        (function_template("      Environment: {Variables: {1: x}}\n"), "Environment.Variables"),
        (function_template('      Description: "\\ud800"\n'), "lone surrogate"),
        (function_template("      FunctionName: ééé\n"), "FunctionName"),
        (function_template("      AutoPublishAlias: '123'\n"), "AutoPublishAlias"),
        (
            function_template(events="        S3:\n          Type: S3\n          Properties: {Bucket: 5, Events: 5}\n"),
            "Events.S3",
        ),
        (
            function_template(
                events="        T:\n          Type: Schedule\n          Properties: {Schedule: 'rate(0 minutes)'}\n"
            ),
            "Events.T",
        ),
        (
            function_template(events="        K:\n          Type: Kinesis\n          Properties: {Stream: clicks}\n"),
            "Kinesis stream's ARN",
        ),
        (
            function_template(
                events="        Q:\n          Type: HttpApi\n          Properties: {Path: 5, Method: 7}\n"
            ),
            "Events.Q",
        ),
    ],
)
def test_hostile_templates_are_refused_with_the_item_named_even_in_a_dry_run(api, user, template, message):
    for dry_run in (True, False):
        answer = api.post("/api/v1/sam-imports/", {"template": template, "dry_run": dry_run}, format="json")
        assert answer.status_code == 400, (dry_run, answer.content)
        assert answer.json()["type"] == "InvalidTemplate" and re.search(message, answer.json()["message"]), (
            answer.json()
        )
    assert not Function.objects.filter(owner=user).exists() and not Schedule.objects.exists()


def test_a_dry_run_reports_the_triggers_it_would_make_and_makes_none(api, user):
    events = "        Hourly:\n          Type: Schedule\n          Properties: {Schedule: 'rate(1 hour)'}\n"
    events += "        NoType:\n          Properties: {}\n"
    answer = api.post(
        "/api/v1/sam-imports/", {"template": function_template(events=events), "dry_run": True}, format="json"
    )
    report = answer.json()
    assert report["created"] == ["Fn"] and report["triggers"] == ["schedule Hourly (rate(1 hour)) → Fn"]
    assert {"item": "Fn.Events.NoType", "reason": "the event has no Type"} in report["skipped"]
    assert not Function.objects.filter(owner=user).exists() and not Schedule.objects.exists()
