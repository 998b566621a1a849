"""SQS queue mappings against a real SQS-API server (moto's, started by the tests) and a real worker: batches with
Lambda's SQS records, messages deleted only after success, partial batch responses, failures left to the queue."""

from __future__ import annotations

import json
import time
from typing import Any

import boto3
import pytest

from functions_app import queue_sources
from functions_app.models import EventSourceMapping, Invocation

pytestmark = [pytest.mark.django_db(transaction=True)]

BODIES = "def handler(event, context):\n    return [r['body'] for r in event['Records']]\n"
CHOOSY = (
    "def handler(event, context):\n"
    "    bad = [r['messageId'] for r in event['Records'] if 'poison' in r['body']]\n"
    "    if bad and context.function_name == 'strict':\n"
    "        raise ValueError('poison')\n"
    "    return {'batchItemFailures': [{'itemIdentifier': m} for m in bad]}\n"
)
KEYS = {"access_key_id": "AKIATEST", "secret_access_key": "s"}


@pytest.fixture
def sqs(aws_server: str, settings: Any) -> Any:
    settings.SOURCE_ENDPOINT_ALLOW_PRIVATE = True  # the server is on loopback
    client = boto3.client(
        "sqs", endpoint_url=aws_server, region_name="us-east-1", aws_access_key_id="AKIATEST", aws_secret_access_key="s"
    )
    name = f"queue-{time.monotonic_ns()}"
    client.queue_url = client.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "1"})["QueueUrl"]
    return client


def make(api: Any, name: str, source: str) -> None:
    body = {"name": name, "handler": "app.handler", "code": {"files": {"app.py": source}}}
    assert api.post("/api/v1/functions/", body, format="json").status_code == 201


def mapping(api: Any, **fields: Any) -> dict[str, Any]:
    created = api.post("/api/v1/event-source-mappings/", {**KEYS, **fields}, format="json")
    assert created.status_code == 201, created.content
    return created.json()


def row(created: dict[str, Any]) -> EventSourceMapping:
    return EventSourceMapping.objects.select_related("function__owner").get(uuid=created["uuid"])


def waiting(sqs: Any) -> int:
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    found = sqs.get_queue_attributes(QueueUrl=sqs.queue_url, AttributeNames=names)["Attributes"]
    return sum(int(found[name]) for name in names)


def test_a_worker_drains_a_queue_in_batches_with_lambdas_sqs_records(api, module_worker, sqs):
    make(api, "reader", BODIES)
    created = mapping(api, function="reader", queue_url=sqs.queue_url, batch_size=5)
    assert created["kind"] == "sqs" and created["queue_url"] == sqs.queue_url and created["stream"] is None
    for number in range(7):
        sqs.send_message(
            QueueUrl=sqs.queue_url,
            MessageBody=json.dumps({"n": number}),
            MessageAttributes={"tenant": {"DataType": "String", "StringValue": "eu"}},
        )
    deadline = time.monotonic() + 30
    while row(created).records < 7:
        assert time.monotonic() < deadline, "the queue was not drained within 30 s"
        time.sleep(0.2)
    assert waiting(sqs) == 0
    calls = list(Invocation.objects.filter(trigger__type="event-source-mapping"))
    bodies = sorted(body for call in calls for body in json.loads(call.result))
    assert bodies == sorted(json.dumps({"n": number}) for number in range(7))
    record = json.loads(calls[0].payload)["Records"][0]
    assert record["eventSource"] == "aws:sqs" and record["awsRegion"] == "us-east-1"
    assert record["eventSourceARN"] == f"arn:aws:sqs:us-east-1:123456789012:{sqs.queue_url.rsplit('/', 1)[1]}"
    assert record["messageId"] and record["receiptHandle"] and record["md5OfBody"]
    assert record["attributes"]["ApproximateReceiveCount"] == "1" and record["attributes"]["SentTimestamp"]
    assert record["messageAttributes"]["tenant"]["stringValue"] == "eu"
    assert record["messageAttributes"]["tenant"]["dataType"] == "String"
    deadline = time.monotonic() + 15  # what waits is counted by the poller (at most every 5 s), never by a page
    while api.get(f"/api/v1/event-source-mappings/{created['uuid']}/").json()["lag"] != 0:
        assert time.monotonic() < deadline, "the lag was not sampled"
        time.sleep(0.2)
    shown = api.get(f"/api/v1/event-source-mappings/{created['uuid']}/").json()
    assert shown["state"] == "Enabled" and shown["last_processing_result"] == "OK"


def test_a_partial_batch_response_deletes_all_but_the_failed_messages(api, module_worker, sqs):
    make(api, "choosy", CHOOSY)
    created = mapping(
        api, function="choosy", queue_url=sqs.queue_url, batch_size=10, enabled=False, report_batch_item_failures=True
    )
    for body in ("a", "poison", "c"):
        sqs.send_message(QueueUrl=sqs.queue_url, MessageBody=body)
    assert queue_sources.queue_batch(mapping=row(created)) == 2
    time.sleep(1.5)  # the queue's visibility timeout: the failed message shows again
    left = sqs.receive_message(QueueUrl=sqs.queue_url, AttributeNames=["All"])["Messages"]
    assert [m["Body"] for m in left] == ["poison"] and left[0]["Attributes"]["ApproximateReceiveCount"] == "2"
    assert row(created).last_processing_result == "PARTIAL"


def test_a_failed_batch_is_left_to_the_queue_and_the_mapping_is_failing(api, module_worker, sqs):
    make(api, "strict", CHOOSY)
    created = mapping(api, function="strict", queue_url=sqs.queue_url, enabled=False)
    sqs.send_message(QueueUrl=sqs.queue_url, MessageBody="poison")
    assert queue_sources.queue_batch(mapping=row(created)) == 0
    shown = api.get(f"/api/v1/event-source-mappings/{created['uuid']}/").json()
    assert shown["last_processing_result"] == "FAILED" and "1 of 1 messages failed (ValueError)" in shown["last_error"]
    assert waiting(sqs) == 1  # in flight until its visibility timeout, then the queue's redrive policy decides


def test_a_queue_that_cannot_be_read_is_a_visible_failing_state(api, make_function, aws_server, settings):
    settings.SOURCE_ENDPOINT_ALLOW_PRIVATE = True
    make_function()
    created = mapping(api, function="hello", queue_url=f"{aws_server}/123456789012/missing", enabled=False)
    assert queue_sources.queue_batch(mapping=row(created)) == 0
    shown = api.get(f"/api/v1/event-source-mappings/{created['uuid']}/").json()
    assert shown["last_error"].startswith("queue: AWS.SimpleQueueService.NonExistentQueue") and shown["lag"] is None


@pytest.mark.parametrize(
    ("fields", "detail"),
    [
        ({"queue_url": "not a url"}, "queue_url"),
        ({"access_key_id": ""}, "access_key_id"),
        ({"batch_size": 11}, "batching_window_s"),
        ({"max_retry_attempts": 3}, "max_retry_attempts"),
        ({"bisect_on_error": True}, "bisect_on_error"),
        ({"max_concurrency": 1}, "max_concurrency"),
        ({"region": "moon"}, "region"),
        ({"stream": "also"}, "stream"),
    ],
)
def test_bad_queue_configuration_gets_a_clear_error_and_saves_nothing(api, make_function, sqs, fields, detail):
    make_function()
    body = {"function": "hello", "queue_url": sqs.queue_url, **KEYS, **fields}
    refused = api.post("/api/v1/event-source-mappings/", body, format="json")
    assert refused.status_code == 400, refused.content
    assert detail in refused.json()["details"] and not EventSourceMapping.objects.exists()


def test_a_queue_on_the_platforms_own_network_is_refused_unless_allowed(api, make_function, settings):
    make_function()
    settings.SOURCE_ENDPOINT_ALLOW_PRIVATE = False
    body = {"function": "hello", "queue_url": "http://127.0.0.1:9324/000000000000/orders", **KEYS}
    refused = api.post("/api/v1/event-source-mappings/", body, format="json")
    assert refused.status_code == 400 and "private network" in refused.json()["message"]
