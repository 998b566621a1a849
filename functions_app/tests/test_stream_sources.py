"""Stream event sources: a Redis Stream read in batches by a function through a real worker, with Kinesis's record
shape, the checkpoint moved only after success, partial batch responses, bisecting, retries and the on-failure
destination, leases between hosts, and at-least-once redelivery of a batch whose host died."""

from __future__ import annotations

import base64
import json
import time
from datetime import timedelta
from typing import Any

import pytest
from django.db.models import Sum
from django.utils import timezone

from functions_app import stream_sources as streams
from functions_app.models import DeadLetter, EventSourceMapping, Invocation

pytestmark = [pytest.mark.django_db(transaction=True)]

RECORDS = "def handler(event, context):\n    return [r['kinesis']['data'] for r in event['Records']]\n"
POISON = (
    "import base64, json\n"
    "def handler(event, context):\n"
    "    items = [json.loads(base64.b64decode(r['kinesis']['data'])) for r in event['Records']]\n"
    "    bad = [r['kinesis']['sequenceNumber'] for r, item in zip(event['Records'], items) if item.get('poison')]\n"
    "    if bad and context.function_name == 'choosy':\n"
    "        return {'batchItemFailures': [{'itemIdentifier': s} for s in bad]}\n"
    "    if bad:\n"
    "        raise ValueError('poison')\n"
    "    return {'batchItemFailures': []}\n"
)


@pytest.fixture
def no_backoff(monkeypatch: Any) -> None:
    """Failed batches retried at once (their backoff has a test of its own)."""
    monkeypatch.setattr(streams, "RETRY_BACKOFF_FIRST_S", 0.0)


def make(api: Any, name: str, source: str) -> None:
    body = {"name": name, "handler": "app.handler", "code": {"files": {"app.py": source}}}
    assert api.post("/api/v1/functions/", body, format="json").status_code == 201


def put(api: Any, stream: str, *items: Any) -> list[str]:
    answer = api.post(f"/api/v1/streams/{stream}/records/", {"records": [{"data": i} for i in items]}, format="json")
    assert answer.status_code == 200, answer.content
    return answer.json()["sequence_numbers"]


def mapping(api: Any, **fields: Any) -> dict[str, Any]:
    created = api.post("/api/v1/event-source-mappings/", fields, format="json")
    assert created.status_code == 201, created.content
    return created.json()


def row(created: dict[str, Any]) -> EventSourceMapping:
    return EventSourceMapping.objects.select_related("function__owner").get(uuid=created["uuid"])


def wait_for(condition: Any, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_worker_drains_a_stream_in_batches_with_kinesis_records(api, module_worker, client, user):
    make(api, "reader", RECORDS)
    sequences = put(api, "orders", {"n": 1}, {"n": 2})  # before the mapping: TRIM_HORIZON reads them too
    created = mapping(api, function="reader", stream="orders", starting_position="TRIM_HORIZON", batch_size=2)
    assert created["state"] == "Enabled" and created["kind"] == "redis-stream"
    sequences += put(api, "orders", {"n": 3})
    wait_for(lambda: row(created).records == 3)
    calls = list(Invocation.objects.filter(trigger__type="event-source-mapping").order_by("queued_at"))
    assert [call.trigger["records"] for call in calls] == [2, 1]
    record = json.loads(calls[0].payload)["Records"][0]
    assert record["eventSource"] == "aws:kinesis" and record["eventName"] == "aws:kinesis:record"
    assert record["eventID"] == f"shardId-000000000000:{sequences[0]}"
    assert record["kinesis"]["sequenceNumber"] == sequences[0]
    assert json.loads(base64.b64decode(record["kinesis"]["data"])) == {"n": 1}
    assert record["eventSourceARN"].endswith(":stream/orders")
    # What waits is counted by the poller (at most every 5 s), never by a page.
    wait_for(lambda: api.get(f"/api/v1/event-source-mappings/{created['uuid']}/").json()["lag"] == 0, 15)
    shown = api.get(f"/api/v1/event-source-mappings/{created['uuid']}/").json()
    assert shown["checkpoint"] == sequences[-1] and shown["last_processing_result"] == "OK"
    listed = api.get("/api/v1/functions/reader/triggers/").json()
    assert [(item["type"], item["stream"], item["state"]) for item in listed] == [
        ("event-source-mapping", "orders", "Enabled")
    ]
    # The console: the Triggers tab lists the mapping; Monitor charts its batches (from the roll-ups).
    from metrics_app.models import StreamRollup
    from metrics_app.services import metering_flush

    metering_flush()
    minutes = StreamRollup.objects.filter(granularity="minute")  # one or two: the drain may straddle a minute
    totals = minutes.aggregate(records=Sum("records"), batches=Sum("batches"))
    assert totals == {"records": 3, "batches": 2} and {row.stream for row in minutes} == {"orders"}
    client.force_login(user)
    triggers = client.get("/functions/reader/triggers/").content.decode()
    assert f"mapping-{created['uuid']}" in triggers and "orders" in triggers
    monitor = client.get("/functions/reader/monitor/?range=1h").content.decode()
    assert 'id="figure-stream-throughput"' in monitor and "orders: per batch" in monitor


def test_latest_starts_at_the_end_of_the_stream(api, module_worker):
    make(api, "reader", RECORDS)
    put(api, "late", {"n": 0})
    created = mapping(api, function="reader", stream="late", enabled=False)
    put(api, "late", {"n": 1})
    current = row(created)
    assert streams.mapping_poll(mapping=current) == 1
    (call,) = Invocation.objects.all()
    data = [json.loads(base64.b64decode(r["kinesis"]["data"])) for r in json.loads(call.payload)["Records"]]
    assert data == [{"n": 1}]


def test_a_partial_batch_response_commits_up_to_the_first_failure_and_retries_from_it(api, module_worker, no_backoff):
    make(api, "choosy", POISON)
    created = mapping(
        api, function="choosy", stream="jobs", enabled=False, report_batch_item_failures=True, max_retry_attempts=1
    )
    sequences = put(api, "jobs", {"n": 1}, {"n": 2}, {"n": 3, "poison": True}, {"n": 4})
    current = row(created)
    assert streams.mapping_poll(mapping=current) == 2  # 1 and 2 committed; 3 failed
    assert current.checkpoint == sequences[1] and current.batch_attempts == 1
    # Its one retry fails too: 3 and 4 (the rest of the failed batch) go to the inbox, and the stream moves on.
    assert streams.mapping_poll(mapping=current) == 2
    assert current.checkpoint == sequences[3] and streams.mapping_poll(mapping=current) == 0
    letter = DeadLetter.objects.get()
    assert letter.condition == "RetriesExhausted"
    assert [r["kinesis"]["sequenceNumber"] for r in json.loads(letter.request_payload)["Records"]] == sequences[2:]
    assert streams.mapping_lag(mapping=current) == 0


def test_bisecting_a_failed_batch_isolates_the_poison_record(api, module_worker, no_backoff):
    make(api, "strict", POISON)
    created = mapping(
        api, function="strict", stream="bisect", enabled=False, bisect_on_error=True, max_retry_attempts=0
    )
    sequences = put(api, "bisect", {"n": 1}, {"n": 2}, {"n": 3, "poison": True}, {"n": 4})
    current = row(created)
    committed = [streams.mapping_poll(mapping=current) for _ in range(8)]
    assert sum(committed) == 4 and current.checkpoint == sequences[-1]
    letter = DeadLetter.objects.get()
    assert [r["kinesis"]["sequenceNumber"] for r in json.loads(letter.request_payload)["Records"]] == [sequences[2]]


def test_a_batch_in_flight_when_its_host_died_is_delivered_again_and_nothing_skipped(api, module_worker, settings):
    make(api, "reader", RECORDS)
    created = mapping(api, function="reader", stream="crash", enabled=False, batch_size=10)
    sequences = put(api, "crash", *[{"n": n} for n in range(5)])
    current = row(created)
    assert [r.sequence for r in streams._read(current, 3)] == sequences[:3]  # host a took them, then died
    now = timezone.now()
    EventSourceMapping.objects.filter(pk=current.pk).update(enabled=True)
    assert streams.leases_hold(rows=EventSourceMapping.objects.all(), host="a", now=now, limit=5)
    later = now + timedelta(seconds=settings.LEASE_S + 1)
    (taken,) = streams.leases_hold(rows=EventSourceMapping.objects.all(), host="b", now=later, limit=5)
    EventSourceMapping.objects.filter(pk=current.pk).update(enabled=False)  # the worker's own loop stays out
    assert taken.pk == current.pk and streams.mapping_poll(mapping=row(created), host="b") == 5
    (call,) = Invocation.objects.all()
    assert [r["kinesis"]["sequenceNumber"] for r in json.loads(call.payload)["Records"]] == sequences
    # Host a comes back with its stale view: it commits nothing, and the checkpoint stays where b put it.
    assert streams._commit(current, [streams.StreamRecord(sequences[0], b"", "")], "a", result="OK") == 0
    assert row(created).checkpoint == sequences[-1]


def test_the_checkpoint_never_goes_backwards(api, module_worker):
    make(api, "reader", RECORDS)
    created = mapping(api, function="reader", stream="forward", enabled=False)
    sequences = put(api, "forward", {"n": 1}, {"n": 2})
    current = row(created)
    streams._commit(current, [streams.StreamRecord(sequences[1], b"", "")], "", result="OK")
    streams._commit(current, [streams.StreamRecord(sequences[0], b"", "")], "", result="OK")
    assert row(created).checkpoint == sequences[1]


@pytest.mark.parametrize(
    ("fields", "detail"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 10_001}, "batch_size"),
        ({"batching_window_s": 301}, "batching_window_s"),
        ({"max_record_age_s": 30}, "max_record_age_s"),
        ({"max_retry_attempts": -2}, "max_retry_attempts"),
        ({"on_failure": "function:nope"}, "on_failure"),
        ({"on_failure": "sqs:queue"}, "on_failure"),
        ({"stream": "no spaces"}, "stream"),
        ({"starting_position": "AT_TIMESTAMP"}, "starting_position"),
        ({"batch_size": "10"}, "batch_size"),
    ],
)
def test_bad_configuration_gets_a_clear_error_and_saves_nothing(api, make_function, fields, detail):
    make_function()
    refused = api.post("/api/v1/event-source-mappings/", {"function": "hello", "stream": "s", **fields}, format="json")
    assert refused.status_code == 400, refused.content
    assert detail in refused.json()["details"] and not EventSourceMapping.objects.exists()


def test_bad_records_are_refused_and_nothing_is_written(api):
    for body in (
        {"records": []},
        {"records": [{"data": 1, "data_base64": "AA=="}]},
        {"records": [{"data_base64": "not base64!"}]},
        {"records": [{"data": 1, "extra": 2}]},
        {"records": [{"data": "x" * (1024 * 1024 + 1)}]},
        {"records": [{"data": 1}] * 501},
    ):
        refused = api.post("/api/v1/streams/s/records/", body, format="json")
        assert refused.status_code == 400, (body, refused.content)
    assert api.post("/api/v1/streams/bad name/records/", {"records": [{"data": 1}]}, format="json").status_code == 400


def test_another_tenant_sees_none_of_it(api, other_api, make_function):
    make_function()
    created = mapping(api, function="hello", stream="mine", enabled=False)
    assert other_api.get(f"/api/v1/event-source-mappings/{created['uuid']}/").status_code == 404
    assert other_api.delete(f"/api/v1/event-source-mappings/{created['uuid']}/").status_code == 404
    assert other_api.get("/api/v1/event-source-mappings/").json() == []
    assert (
        other_api.post(
            "/api/v1/event-source-mappings/", {"function": "hello", "stream": "x"}, format="json"
        ).status_code
        == 404
    )
    # Streams are per tenant: the same name is another stream.
    put(api, "mine", {"n": 1})
    assert streams.mapping_lag(mapping=row(created)) == 1
    put(other_api, "mine", {"n": 2}, {"n": 3})
    assert streams.mapping_lag(mapping=row(created)) == 1


def test_a_mapping_is_changed_and_deleted_through_the_api(api, make_function):
    make_function()
    created = mapping(api, function="hello", stream="s1", enabled=False)
    changed = api.patch(f"/api/v1/event-source-mappings/{created['uuid']}/", {"batch_size": 500}, format="json")
    assert changed.status_code == 200 and changed.json()["batch_size"] == 500
    assert api.delete(f"/api/v1/event-source-mappings/{created['uuid']}/").status_code == 204
    assert api.get(f"/api/v1/event-source-mappings/{created['uuid']}/").status_code == 404
    assert api.get("/api/v1/event-source-mappings/not-a-uuid/").status_code == 404


SLOW = "import time\ndef handler(event, context):\n    time.sleep(4)\n    return None\n"
LISTING = "def handler(event, context):\n    return [1, 2]\n"


def test_a_batch_whose_call_outlasts_the_sync_wait_is_waited_for_never_called_again(api, module_worker, settings):
    settings.SYNC_WAIT_MAX_S = 2  # a web caller would be answered 202 here; the poller waits on
    body = {"name": "slow", "handler": "app.handler", "timeout_s": 10, "code": {"files": {"app.py": SLOW}}}
    assert api.post("/api/v1/functions/", body, format="json").status_code == 201
    created = mapping(api, function="slow", stream="slow", enabled=False)
    put(api, "slow", {"n": 1})
    assert streams.mapping_poll(mapping=row(created)) == 1
    assert Invocation.objects.count() == 1 and row(created).last_processing_result == "OK"


def test_an_answer_that_is_not_a_partial_batch_response_fails_the_batch(api, module_worker):
    make(api, "lists", LISTING)
    created = mapping(api, function="lists", stream="lists", enabled=False, report_batch_item_failures=True)
    put(api, "lists", {"n": 1})
    current = row(created)
    assert streams.mapping_poll(mapping=current) == 0 and current.batch_attempts == 1


def test_a_failed_batch_waits_before_its_retry(api, module_worker):
    make(api, "strict", POISON)
    created = mapping(api, function="strict", stream="backoff", enabled=False)
    put(api, "backoff", {"poison": True})
    current = row(created)
    assert streams.mapping_poll(mapping=current) == 0
    assert streams.mapping_poll(mapping=current) == 0 and Invocation.objects.count() == 1  # not at once
    time.sleep(1.1)
    assert streams.mapping_poll(mapping=current) == 0 and Invocation.objects.count() == 2
    assert current.batch_attempts == 2


def test_records_trimmed_while_pending_are_acknowledged_and_block_nothing(api, module_worker):
    from console.redis import redis_client

    make(api, "reader", RECORDS)
    created = mapping(api, function="reader", stream="trimmed", enabled=False)
    sequences = put(api, "trimmed", *[{"n": n} for n in range(4)])
    current = row(created)
    streams._read(current, 4)  # delivered, then the host died
    key = streams.stream_key(owner_id=current.function.owner_id, name="trimmed")
    redis_client().xtrim(key, minid=sequences[2], approximate=False)  # the two oldest age out meanwhile
    assert streams.mapping_poll(mapping=current) == 2 and current.checkpoint == sequences[3]
    assert redis_client().xpending(key, streams._group(current))["pending"] == 0


def test_a_batch_is_cut_at_the_payload_limit(api, module_worker):
    make(api, "reader", RECORDS)
    created = mapping(api, function="reader", stream="big", enabled=False, batch_size=10)
    for _ in range(2):
        put(api, "big", *["x" * 1_000_000] * 3)
    current = row(created)
    assert streams.mapping_poll(mapping=current) == 4  # 4 MB of data; the rest stays pending, read first next
    assert streams.mapping_poll(mapping=current) == 2


def test_deleting_the_function_removes_its_mappings_consumer_groups(api, make_function):
    from console.redis import redis_client

    make_function()
    created = mapping(api, function="hello", stream="gone", enabled=False)
    key = streams.stream_key(owner_id=row(created).function.owner_id, name="gone")
    assert len(redis_client().xinfo_groups(key)) == 1
    assert api.delete("/api/v1/functions/hello/").status_code == 204
    assert redis_client().xinfo_groups(key) == []


def test_a_stream_takes_at_most_its_limits(api, monkeypatch):
    too_much = {"records": [{"data": "x" * 1_000_000}] * 6}
    refused = api.post("/api/v1/streams/s/records/", too_much, format="json")
    assert refused.status_code == 413 and refused.json()["type"] == "RequestTooLarge"
    monkeypatch.setattr(streams, "STREAM_RECORDS_MAX", 2)
    put(api, "full", 1, 2)
    full = api.post("/api/v1/streams/full/records/", {"records": [{"data": 3}]}, format="json")
    assert full.status_code == 429 and full.json()["type"] == "StreamFull"


def test_one_mappings_failure_never_holds_up_another_on_the_same_host(api, module_worker, monkeypatch):
    from redis.exceptions import TimeoutError as RedisTimeout

    make(api, "reader", RECORDS)
    broken = mapping(api, function="reader", stream="broken", enabled=False)
    healthy = mapping(api, function="reader", stream="healthy", enabled=False)
    put(api, "healthy", {"n": 1})
    real_poll = streams.mapping_poll

    def poll(*, mapping, host=""):
        if str(mapping.uuid) == broken["uuid"]:
            raise RedisTimeout("Timeout reading from socket")
        return real_poll(mapping=mapping, host=host)

    monkeypatch.setattr(streams, "mapping_poll", poll)
    EventSourceMapping.objects.update(
        enabled=True, lease_owner="host-x", lease_until=timezone.now() + timedelta(minutes=5)
    )
    pollers = streams.StreamPollers("host-x", threads=2)
    try:
        pollers.round()
        wait_for(lambda: row(healthy).records == 1, 15)
    finally:
        pollers.stop()
        EventSourceMapping.objects.update(enabled=False)
    assert row(broken).last_error.startswith("redis: ")
