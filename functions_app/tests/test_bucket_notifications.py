"""Bucket notifications: S3 events run a function with Lambda's S3 record, through the webhook a store posts to
and through the poller, against a real S3-API server (moto's, on a local port) started by the tests."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from django.db import close_old_connections
from django.utils import timezone
from moto.server import ThreadedMotoServer

from functions_app import bucket_notifications as notifications
from functions_app.models import BucketNotification, BucketObject, Invocation, InvocationStatus
from functions_app.secrets import secret_decrypt

pytestmark = [pytest.mark.django_db(transaction=True)]

BASE = "/api/v1/functions/hello/bucket-notifications/"


@pytest.fixture
def store(aws_server: str, settings: Any) -> Any:
    """A fresh bucket on the S3 server, and a client of it."""
    settings.SOURCE_ENDPOINT_ALLOW_PRIVATE = True  # the server is on loopback
    client = boto3.client(
        "s3", endpoint_url=aws_server, region_name="us-east-1", aws_access_key_id="AKIATEST", aws_secret_access_key="s"
    )
    bucket = f"bucket-{time.monotonic_ns()}"
    client.create_bucket(Bucket=bucket)
    client.bucket = bucket
    client.endpoint = aws_server
    return client


def poll_config(api: Any, store: Any, **overrides: Any) -> dict[str, Any]:
    body = {
        "name": "uploads",
        "mode": "poll",
        "bucket": store.bucket,
        "endpoint_url": store.endpoint,
        "access_key_id": "AKIATEST",
        "secret_access_key": "s",
        "events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"],
        "prefix": "in/",
        "suffix": ".csv",
        **overrides,
    }
    created = api.post(BASE, body, format="json")
    assert created.status_code == 201, created.content
    return created.json()


def sent_records() -> list[dict[str, Any]]:
    rows = Invocation.objects.filter(trigger__type="bucket-notification").order_by("queued_at")
    return [json.loads(row.payload)["Records"][0] for row in rows]


def poll(name: str = "uploads") -> int:
    return notifications.bucket_poll(notification=BucketNotification.objects.get(name=name))


def minio_record(bucket: str, key: str, *, event: str = "s3:ObjectCreated:Put", sequencer: str = "17A3") -> dict:
    """A record as MinIO's webhook target posts it (eventSource minio:s3, the event name with its s3: prefix, the
    key URL-encoded)."""
    return {
        "eventVersion": "2.0",
        "eventSource": "minio:s3",
        "awsRegion": "",
        "eventTime": "2026-11-28T10:00:00.123Z",
        "eventName": event,
        "userIdentity": {"principalId": "minioadmin"},
        "requestParameters": {"sourceIPAddress": "10.0.0.7"},
        "responseElements": {"x-amz-request-id": "1800A1B2C3", "x-minio-origin-endpoint": "http://minio:9000"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "Config",
            "bucket": {"name": bucket, "ownerIdentity": {"principalId": "minioadmin"}, "arn": f"arn:aws:s3:::{bucket}"},
            "object": {"key": key, "size": 1305, "eTag": "b21b84d653bb07b05b1e6b33684dc11b", "sequencer": sequencer},
        },
    }


# ---- the webhook ------------------------------------------------------------------------------------------------


def test_a_store_posting_an_event_runs_the_function_once_with_lambdas_s3_record(api, make_function, client):
    make_function()
    body = {"name": "minio", "mode": "webhook", "bucket": "photos", "prefix": "in/", "suffix": ".jpg"}
    created = api.post(BASE, body, format="json").json()
    hook, token = created["webhook_url"], created["token"]
    assert hook.startswith("http://testserver/api/v1/bucket-events/") and len(token) > 30
    delivery = {
        "EventName": "s3:ObjectCreated:Put",
        "Key": "photos/in/a b.jpg",
        "Records": [minio_record("photos", "in/a+b.jpg")],
    }
    posted = client.post(hook, delivery, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert posted.status_code == 200 and posted.json() == {"accepted": 1, "ignored": 0, "invalid": 0, "duplicates": 0}
    (record,) = sent_records()
    assert record == {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": "2026-11-28T10:00:00.123Z",
        "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "minioadmin"},
        "requestParameters": {"sourceIPAddress": "10.0.0.7"},
        "responseElements": {"x-amz-request-id": "1800A1B2C3", "x-amz-id-2": "17A3"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "minio",
            "bucket": {
                "name": "photos",
                "ownerIdentity": {"principalId": f"{Invocation.objects.get().owner_id:012d}"},
                "arn": "arn:aws:s3:::photos",
            },
            "object": {
                "key": "in/a+b.jpg",
                "size": 1305,
                "eTag": "b21b84d653bb07b05b1e6b33684dc11b",
                "sequencer": "17A3",
            },
        },
    }
    again = client.post(hook, delivery, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert again.json() == {"accepted": 0, "ignored": 0, "invalid": 0, "duplicates": 1} and len(sent_records()) == 1


def test_the_webhook_sends_only_subscribed_events_of_its_bucket_and_keys(api, make_function, client):
    make_function()
    body = {"name": "minio", "mode": "webhook", "bucket": "photos", "prefix": "in/", "suffix": ".jpg"}
    created = api.post(BASE, body, format="json").json()
    records = [
        minio_record("photos", "in/x.jpg", event="s3:ObjectRemoved:Delete"),  # not subscribed
        minio_record("photos", "out/x.jpg"),  # outside the prefix
        minio_record("photos", "in/x.png"),  # another suffix
        minio_record("other", "in/x.jpg"),  # another bucket
        {"eventName": "s3:ObjectCreated:Put"},  # no object
        minio_record("photos", "in/y.jpg", sequencer="17A4"),
    ]
    auth = {"HTTP_AUTHORIZATION": f"Bearer {created['token']}"}
    posted = client.post(created["webhook_url"], {"Records": records}, content_type="application/json", **auth)
    assert posted.json() == {"accepted": 1, "ignored": 5, "invalid": 0, "duplicates": 0}
    assert [record["s3"]["object"]["key"] for record in sent_records()] == ["in/y.jpg"]


def test_the_webhook_refuses_a_wrong_token_and_a_malformed_body(api, make_function, client):
    make_function()
    created = api.post(BASE, {"name": "minio", "mode": "webhook", "bucket": "photos"}, format="json").json()
    hook = created["webhook_url"]
    for authorization in ("", "Bearer nope", f"Basic {created['token']}"):
        refused = client.post(hook, {"Records": []}, content_type="application/json", HTTP_AUTHORIZATION=authorization)
        assert refused.status_code == 401 and refused.json()["type"] == "Unauthorized"
    unknown = client.post("/api/v1/bucket-events/999999/", {"Records": []}, content_type="application/json")
    assert unknown.status_code == 401
    auth = {"HTTP_AUTHORIZATION": f"Bearer {created['token']}"}
    for body in (b"not json", b'{"no": "records"}', b"[" * 100_000):
        bad = client.post(hook, body, content_type="application/json", **auth)
        assert bad.status_code == 400 and bad.json()["type"] == "InvalidRequestContent"
    assert sent_records() == []


def test_an_event_the_function_cannot_take_is_kept_for_the_stores_retry(api, make_function, client):
    make_function()
    assert api.post("/api/v1/functions/hello/versions/", {}, format="json").status_code == 201
    assert (
        api.post("/api/v1/functions/hello/aliases/", {"name": "live", "version": 1}, format="json").status_code == 201
    )
    body = {"name": "minio", "mode": "webhook", "bucket": "photos", "qualifier": "live"}
    created = api.post(BASE, body, format="json").json()
    assert api.delete("/api/v1/functions/hello/aliases/live/").status_code == 204
    auth = {"HTTP_AUTHORIZATION": f"Bearer {created['token']}"}
    delivery = {"Records": [minio_record("photos", "a.jpg")]}
    refused = client.post(created["webhook_url"], delivery, content_type="application/json", **auth)
    assert refused.status_code == 503 and refused.json()["type"] == "FunctionCannotTakeEvents"
    shown = api.get(BASE + "minio/").json()
    assert shown["state"] == "FAILING" and "live" in shown["last_error"]
    assert (
        api.post("/api/v1/functions/hello/aliases/", {"name": "live", "version": 1}, format="json").status_code == 201
    )
    retried = client.post(created["webhook_url"], delivery, content_type="application/json", **auth)
    assert retried.json()["accepted"] == 1 and api.get(BASE + "minio/").json()["state"] == "ENABLED"


# ---- the poller -------------------------------------------------------------------------------------------------


def test_polling_sends_each_new_object_version_once_and_each_removal(api, make_function, store):
    make_function()
    store.put_object(Bucket=store.bucket, Key="in/before.csv", Body=b"old")
    BucketNotification.objects.all()  # the object above is older than the configuration
    time.sleep(1.1)  # LastModified has whole seconds
    config = poll_config(api, store)
    assert config["state"] == "ENABLED" and "secret_access_key" not in config
    assert poll() == 0  # the baseline: what was there is not sent
    store.put_object(Bucket=store.bucket, Key="in/a b.csv", Body=b"k,1\n")
    store.put_object(Bucket=store.bucket, Key="in/skip.txt", Body=b"not csv")
    store.put_object(Bucket=store.bucket, Key="other/x.csv", Body=b"elsewhere")
    assert poll() == 1 and poll() == 0
    (created,) = sent_records()
    assert created["eventName"] == "ObjectCreated:Put" and created["eventSource"] == "aws:s3"
    obj = created["s3"]["object"]
    assert obj["key"] == "in/a+b.csv" and obj["size"] == 4 and obj["eTag"] and len(obj["sequencer"]) == 16
    assert created["s3"]["bucket"]["arn"] == f"arn:aws:s3:::{store.bucket}"
    time.sleep(1.1)
    store.put_object(Bucket=store.bucket, Key="in/a b.csv", Body=b"k,2\n")  # a new version
    store.delete_object(Bucket=store.bucket, Key="in/before.csv")
    assert poll() == 2 and poll() == 0
    names = sorted((r["eventName"], r["s3"]["object"]["key"]) for r in sent_records()[1:])
    assert names == [("ObjectCreated:Put", "in/a+b.csv"), ("ObjectRemoved:Delete", "in/before.csv")]


def test_pollers_racing_on_one_bucket_send_each_version_once(api, make_function, store):
    make_function()
    poll_config(api, store)
    poll()
    for number in range(20):
        store.put_object(Bucket=store.bucket, Key=f"in/{number}.csv", Body=b"x")
    start = threading.Barrier(4)

    def racer() -> None:
        start.wait()
        try:
            poll()
        finally:
            close_old_connections()

    threads = [threading.Thread(target=racer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    keys = sorted(record["s3"]["object"]["key"] for record in sent_records())
    assert keys == sorted(f"in/{number}.csv" for number in range(20))


def test_a_store_that_fails_is_a_visible_failing_state_and_recovers(api, make_function, store):
    make_function()
    poll_config(api, store, bucket="not-there-yet")
    assert poll() == 0
    shown = api.get(BASE + "uploads/").json()
    assert shown["state"] == "FAILING" and "NoSuchBucket" in shown["last_error"]
    store.create_bucket(Bucket="not-there-yet")
    poll()
    assert api.get(BASE + "uploads/").json()["state"] == "ENABLED"
    poll_config(api, store, name="down", endpoint_url="http://127.0.0.1:9")  # nothing listens there
    assert poll("down") == 0
    assert api.get(BASE + "down/").json()["state"] == "FAILING"


def test_one_host_holds_a_poller_until_its_lease_runs_out(api, make_function, store, settings):
    make_function()
    poll_config(api, store)
    now = timezone.now()
    assert [n.name for n in notifications.bucket_pollers_claim(host="a", now=now)] == ["uploads"]
    assert notifications.bucket_pollers_claim(host="b", now=now + timedelta(seconds=1)) == []
    later = now + timedelta(seconds=settings.LEASE_S + 1)  # host a stopped renewing
    assert [n.name for n in notifications.bucket_pollers_claim(host="b", now=later)] == ["uploads"]
    assert notifications.bucket_pollers_claim(host="a", now=later) == []
    notifications.bucket_pollers_release(host="b")
    assert BucketNotification.objects.get().lease_owner == ""


def test_the_secret_key_is_stored_encrypted_and_never_shown(api, make_function, store):
    make_function()
    shown = poll_config(api, store, secret_access_key="very-secret")
    stored = BucketNotification.objects.get()
    assert "very-secret" not in stored.secret_access_key and secret_decrypt(stored.secret_access_key) == "very-secret"
    assert "very-secret" not in json.dumps(shown) and "very-secret" not in api.get(BASE).content.decode()


@pytest.mark.parametrize(
    ("fields", "detail"),
    [
        ({"bucket": "Not_A_Bucket"}, "bucket"),
        ({"endpoint_url": "ftp://store.example.com"}, "endpoint_url"),
        ({"events": ["s3:ObjectTouched:*"]}, "events"),
        ({"events": []}, "events"),
        ({"poll_interval_s": 0}, "poll_interval_s"),
        ({"mode": "push"}, "mode"),
        ({"region": "mars"}, "region"),
        ({"qualifier": "nope"}, None),
        ({"access_key_id": "", "secret_access_key": ""}, "access_key_id"),  # never the platform's own keys
        ({"events": ["s3:ObjectCreated:Copy"]}, "events"),  # listing cannot tell a copy
        ({"endpoint_url": "http://[::1"}, "endpoint_url"),
        ({"endpoint_url": "http://" + "a" * 64 + ".example/"}, "endpoint_url"),
        ({"endpoint_url": "http://my_host:9000/"}, "endpoint_url"),
        ({"endpoint_url": "http://store.example:99999/"}, "endpoint_url"),
        ({"name": ".."}, "name"),
    ],
)
def test_bad_configuration_gets_a_clear_error_and_saves_nothing(api, make_function, store, fields, detail):
    make_function()
    body = {"name": "uploads", "mode": "poll", "bucket": store.bucket, "endpoint_url": store.endpoint}
    body |= {"access_key_id": "AKIATEST", "secret_access_key": "s", **fields}
    refused = api.post(BASE, body, format="json")
    assert refused.status_code in (400, 404), refused.content
    if detail:
        assert detail in refused.json()["details"]
    assert not BucketNotification.objects.exists()


def test_an_endpoint_on_the_platforms_own_network_is_refused_unless_allowed(api, make_function, settings):
    make_function()
    settings.SOURCE_ENDPOINT_ALLOW_PRIVATE = False
    private = ["http://127.0.0.1:6379", "http://169.254.169.254/", "http://10.1.2.3:9000", "http://2130706433/"]
    private += ["http://100.100.100.200/", "http://[fec0::1]:6379/", "http://[2002:7f00:1::]/", "http://[::1]/"]
    for endpoint in private:
        body = {"name": "uploads", "mode": "poll", "bucket": "photos", "endpoint_url": endpoint}
        body |= {"access_key_id": "AKIATEST", "secret_access_key": "s"}
        refused = api.post(BASE, body, format="json")
        assert refused.status_code == 400 and "private network" in refused.json()["message"]


def test_another_tenant_sees_none_of_it(api, other_api, make_function):
    make_function()
    assert api.post(BASE, {"name": "minio", "mode": "webhook", "bucket": "photos"}, format="json").status_code == 201
    assert other_api.get(BASE).status_code == 404 and other_api.get(BASE + "minio/").status_code == 404
    listed = api.get("/api/v1/functions/hello/triggers/").json()
    assert [(item["type"], item["id"], item["mode"]) for item in listed] == [
        ("bucket-notification", "minio", "webhook")
    ]


def test_deleting_the_function_deletes_its_notifications_and_what_they_saw(api, make_function, store):
    make_function()
    poll_config(api, store)
    store.put_object(Bucket=store.bucket, Key="in/a.csv", Body=b"x")
    poll()
    assert BucketObject.objects.exists()
    assert api.delete("/api/v1/functions/hello/").status_code == 204
    assert not BucketNotification.objects.exists() and not BucketObject.objects.exists()


ECHO_KEYS = (
    "from urllib.parse import unquote_plus\n"
    "def handler(event, context):\n"
    "    return [unquote_plus(r['s3']['object']['key']) for r in event['Records']]\n"
)


def test_a_worker_polls_the_bucket_and_runs_the_function_for_a_new_object(api, module_worker, store):
    body = {"name": "keys", "handler": "app.handler", "code": {"files": {"app.py": ECHO_KEYS}}}
    assert api.post("/api/v1/functions/", body, format="json").status_code == 201
    config = {"name": "drop", "mode": "poll", "bucket": store.bucket, "endpoint_url": store.endpoint}
    config |= {"access_key_id": "AKIATEST", "secret_access_key": "s", "poll_interval_s": 1}
    assert api.post("/api/v1/functions/keys/bucket-notifications/", config, format="json").status_code == 201
    deadline = time.monotonic() + 30
    while BucketNotification.objects.get().baseline_at is None and time.monotonic() < deadline:
        time.sleep(0.2)
    store.put_object(Bucket=store.bucket, Key="reports/q 3.csv", Body=b"k,1\n")
    done = None
    while done is None and time.monotonic() < deadline:
        done = Invocation.objects.filter(status=InvocationStatus.SUCCEEDED).first()
        time.sleep(0.2)
    assert done is not None, "the worker's poller did not run the function within 30 s"
    assert json.loads(done.result) == ["reports/q 3.csv"]


def test_the_console_creates_lists_toggles_and_deletes_a_bucket_notification(client, user, make_function):
    function = make_function()
    client.force_login(user)
    base = f"/functions/{function.name}/triggers/buckets/"
    form = {"name": "photos", "mode": "webhook", "bucket": "photos", "events": ["s3:ObjectCreated:*"]}
    form |= {"key_prefix": "in/", "key_suffix": "", "qualifier": "", "region": "us-east-1", "poll_interval_s": 10}
    bad = client.post(base, {**form, "bucket": "Bad_Bucket"})
    assert bad.status_code == 400 and "3-63 lowercase letters" in bad.content.decode()
    page = client.post(base, form, follow=True)
    text = page.content.decode()
    assert page.status_code == 200 and "Authorization: Bearer " in text and "shown only now" in text
    assert "s3://photos/in/" in text and "/api/v1/bucket-events/" in text
    stored = BucketNotification.objects.get()
    assert stored.prefix == "in/" and stored.mode == "webhook"
    client.post(f"{base}photos/toggle/")
    assert BucketNotification.objects.get().enabled is False
    client.post(f"{base}photos/delete/")
    assert not BucketNotification.objects.exists()


CSV_SUMMARY = Path(__file__).resolve().parents[2] / "docs" / "examples" / "csv_summary" / "lambda_function.py"


def test_the_readmes_csv_summary_example_runs_end_to_end(api, cluster, settings):
    """README, "Bucket notifications": CSV files dropped into a bucket are summed per key into a summary object, by
    a function that reads and writes the store through its network opt-in (the store allowlisted for it)."""
    from functions_app.soak import host_address

    server = ThreadedMotoServer(ip_address=host_address(), port=0, verbose=False)  # not loopback: see EGRESS_ALLOW
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        cluster.wait_ready(cluster.start_worker(EGRESS_ALLOW=f"{host}:{port}"))
        settings.SOURCE_ENDPOINT_ALLOW_PRIVATE = True
        keys = {"aws_access_key_id": "AKIAEXAMPLE", "aws_secret_access_key": "example-secret"}
        store = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **keys)
        store.create_bucket(Bucket="sales")
        function = {
            "name": "csv-summary",
            "handler": "lambda_function.lambda_handler",
            "code": {"files": {"lambda_function.py": CSV_SUMMARY.read_text()}},
            "network_enabled": True,
            "reserved_concurrency": 1,
            "environment": {
                "STORE_ENDPOINT": endpoint,
                "STORE_ACCESS_KEY_ID": "AKIAEXAMPLE",
                "STORE_SECRET_ACCESS_KEY": "example-secret",
            },
        }
        assert api.post("/api/v1/functions/", function, format="json").status_code == 201
        notification = {"name": "incoming", "mode": "poll", "bucket": "sales", "endpoint_url": endpoint}
        notification |= {"access_key_id": "AKIAEXAMPLE", "secret_access_key": "example-secret"}
        notification |= {"prefix": "incoming/", "suffix": ".csv", "poll_interval_s": 1}
        created = api.post("/api/v1/functions/csv-summary/bucket-notifications/", notification, format="json")
        assert created.status_code == 201, created.content
        deadline = time.monotonic() + 60
        while BucketNotification.objects.get().baseline_at is None and time.monotonic() < deadline:
            time.sleep(0.2)
        store.put_object(Bucket="sales", Key="incoming/monday.csv", Body=b"key,value\napples,3\npears,2\napples,5\n")
        store.put_object(Bucket="sales", Key="incoming/tues day.csv", Body=b"key,value\napples,1\nplums,7\n")
        summary = None
        while time.monotonic() < deadline:
            try:
                summary = json.loads(store.get_object(Bucket="sales", Key="summary/totals.json")["Body"].read())
            except store.exceptions.NoSuchKey:
                summary = None
            if summary and len(summary["files"]) == 2:
                break
            time.sleep(0.3)
        failures = list(
            Invocation.objects.exclude(status=InvocationStatus.SUCCEEDED).values("status", "error_type", "result")
        )
        assert summary and len(summary["files"]) == 2, (summary, failures)
        assert summary["totals"] == {
            "apples": {"count": 3, "sum": 9.0, "min": 1.0, "max": 5.0},
            "pears": {"count": 1, "sum": 2.0, "min": 2.0, "max": 2.0},
            "plums": {"count": 1, "sum": 7.0, "min": 7.0, "max": 7.0},
        }
        assert Invocation.objects.filter(status=InvocationStatus.SUCCEEDED).count() == 2
    finally:
        server.stop()


def test_a_polled_event_the_function_cannot_take_is_failing_and_sent_once_it_can(api, make_function, store):
    make_function()
    assert api.post("/api/v1/functions/hello/versions/", {}, format="json").status_code == 201
    assert (
        api.post("/api/v1/functions/hello/aliases/", {"name": "live", "version": 1}, format="json").status_code == 201
    )
    poll_config(api, store, qualifier="live")
    poll()
    assert api.delete("/api/v1/functions/hello/aliases/live/").status_code == 204
    store.put_object(Bucket=store.bucket, Key="in/a.csv", Body=b"x")
    before = timezone.now()
    assert poll() == 0
    shown = api.get(BASE + "uploads/").json()
    assert shown["state"] == "FAILING" and "live" in shown["last_error"]
    assert BucketNotification.objects.get().next_poll_at > before  # no listing every second meanwhile
    assert (
        api.post("/api/v1/functions/hello/aliases/", {"name": "live", "version": 1}, format="json").status_code == 201
    )
    assert poll() == 1 and api.get(BASE + "uploads/").json()["state"] == "ENABLED"


def test_a_change_before_the_first_listing_loses_no_event(api, make_function, store):
    make_function()
    poll_config(api, store, bucket="made-later")
    assert poll() == 0  # no such bucket yet: FAILING
    store.create_bucket(Bucket="made-later")
    store.put_object(Bucket="made-later", Key="in/a.csv", Body=b"x")
    changed = api.patch(BASE + "uploads/", {"secret_access_key": "s2", "qualifier": "$LATEST"}, format="json")
    assert changed.status_code == 200
    assert poll() == 1  # put after the configuration was made: sent, whatever was edited since


def test_a_listing_older_than_a_row_does_not_judge_it_removed(api, make_function, store):
    make_function()
    poll_config(api, store)
    poll()
    began = timezone.now()  # a slow poll begins its listing here...
    store.put_object(Bucket=store.bucket, Key="in/new.csv", Body=b"x")
    assert poll() == 1  # ...another poll records the new object...
    store.delete_object(Bucket=store.bucket, Key="in/new.csv")
    # ...and the slow poll's listing, without it, says nothing of it; a later poll sends the removal.
    assert notifications.bucket_poll(notification=BucketNotification.objects.get(), now=began) == 0
    assert poll() == 1 and sent_records()[-1]["eventName"] == "ObjectRemoved:Delete"


def test_a_poll_that_began_before_the_configuration_moved_writes_nothing(api, make_function, store):
    make_function()
    poll_config(api, store)
    poll()
    store.put_object(Bucket=store.bucket, Key="in/a.csv", Body=b"x")
    stale = BucketNotification.objects.get()  # a poll takes the configuration...
    api.patch(BASE + "uploads/", {"prefix": "other/"}, format="json")  # ...which moves meanwhile
    assert notifications.bucket_poll(notification=stale) == 0
    assert sent_records() == [] and not BucketObject.objects.exists()


def test_one_broken_configuration_never_stops_a_hosts_others(api, make_function, store, settings):
    make_function()
    poll_config(api, store, name="good")
    poll_config(api, store, name="broken", bucket="other-bucket")
    BucketNotification.objects.filter(name="broken").update(endpoint_url="http://bad_host:9000/")  # boto3 refuses
    pollers = notifications.BucketPollers("host-a", threads=2)
    try:
        pollers.round()
        deadline = time.monotonic() + 10
        while pollers.polling and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        pollers.stop()
    good, broken = BucketNotification.objects.get(name="good"), BucketNotification.objects.get(name="broken")
    assert good.baseline_at is not None and good.last_error == ""
    assert broken.last_error.startswith("store: ") and broken.next_poll_at > timezone.now()


def test_records_that_cannot_be_read_are_counted_invalid_never_a_500(api, make_function, client):
    make_function()
    created = api.post(BASE, {"name": "minio", "mode": "webhook", "bucket": "photos"}, format="json").json()
    auth = {"HTTP_AUTHORIZATION": f"Bearer {created['token']}"}
    good = minio_record("photos", "a.jpg")
    early = {**good, "eventTime": "0001-01-01T00:00:00+01:00"}
    huge = {**good, "s3": {**good["s3"], "object": {**good["s3"]["object"], "size": "1,305"}}}
    lone = {**good, "s3": {**good["s3"], "object": {"key": "\ud800.jpg"}}}
    nul = {**good, "s3": {**good["s3"], "object": {"key": "a%00b.jpg"}}}
    bad_escape = {**good, "s3": {**good["s3"], "object": {"key": "a%ffb.jpg"}}}
    body = json.dumps({"Records": [early, huge, lone, nul, bad_escape, "not a record", good]})
    posted = client.post(created["webhook_url"], body, content_type="application/json", **auth)
    assert posted.status_code == 200, posted.content
    assert posted.json() == {"accepted": 1, "ignored": 1, "invalid": 5, "duplicates": 0}
    infinite = client.post(
        created["webhook_url"], b'{"Records": [{"size": Infinity}]}', content_type="application/json", **auth
    )
    assert infinite.status_code == 400


def test_the_webhook_reads_no_body_before_the_token_holds_and_none_over_its_limit(api, make_function, client):
    make_function()
    created = api.post(BASE, {"name": "minio", "mode": "webhook", "bucket": "photos"}, format="json").json()
    big = b'{"Records": [' + b" " * (notifications.WEBHOOK_BODY_MAX_BYTES + 10) + b"]}"
    refused = client.post(created["webhook_url"], big, content_type="application/json", HTTP_AUTHORIZATION="Bearer x")
    assert refused.status_code == 401
    auth = {"HTTP_AUTHORIZATION": f"Bearer {created['token']}"}
    too_big = client.post(created["webhook_url"], big, content_type="application/json", **auth)
    assert too_big.status_code == 413 and too_big.json()["type"] == "RequestTooLarge"


def test_a_configuration_whose_endpoint_no_longer_resolves_can_still_be_disabled(api, make_function, store):
    make_function()
    poll_config(api, store)
    BucketNotification.objects.update(endpoint_url="http://gone.invalid:9000")
    paused = api.patch(BASE + "uploads/", {"enabled": False}, format="json")
    assert paused.status_code == 200 and paused.json()["state"] == "DISABLED"
