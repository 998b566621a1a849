"""SQS queue event sources: a queue that speaks SQS's API (AWS SQS, ElasticMQ, …) read by a function in batches, as
Lambda reads one: long-poll receives, one synchronous call per batch with Lambda's SQS records, the batch's
messages deleted once the call succeeds (with a partial batch response, all but the failed ones), and failed ones
left in the queue, which shows them again after its visibility timeout and moves them to its dead-letter queue by
its own redrive policy. Up to ``max_concurrency`` batches of a mapping run at once. The host holding a mapping's
lease (``functions_app.leases``) polls it. docs/event-sources.md has the rules.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from django.db import close_old_connections
from django.db.models import F
from django.utils import timezone
from redis.exceptions import RedisError

from console.exceptions import ServiceError
from functions_app.aws import StoreError, sqs_client, sqs_delete, sqs_receive, sqs_waiting
from functions_app.leases import leases_hold, leases_release
from functions_app.models import EventSourceKind, EventSourceMapping, Function, InvocationStatus
from functions_app.outages import DATABASE_ERRORS, database_unreachable
from functions_app.outbound import PrivateAddress, host_refuse_private
from functions_app.secrets import secret_decrypt, secret_encrypt
from functions_app.stream_sources import batch_invoke, lag_sample, mapping_configure, metered, note

logger = logging.getLogger(__name__)

QUEUE_URL = re.compile(r"https?://[^/\s]+/(?P<account>[^/\s]+)/(?P<name>[0-9A-Za-z_-]{1,80}(\.fifo)?)")
CONCURRENCY_MIN, CONCURRENCY_MAX = 2, 1000
RECEIVE_MAX = 10  # SQS hands out at most ten messages a call
# What a stream mapping has and a queue mapping does not: the queue's redrive policy retries and dead-letters.
STREAM_ONLY = ("max_retry_attempts", "max_record_age_s", "bisect_on_error", "on_failure", "starting_position")
STORE_TIMEOUT_S = 10.0
POLL_THREADS = 16
POLL_LOOP_S = 1.0


# ---- configuration ----------------------------------------------------------------------------------------------


def queue_mapping_create(
    *,
    function: Function,
    queue_url: str,
    access_key_id: str,
    secret_access_key: str,
    region: str = "us-east-1",
    max_concurrency: int = CONCURRENCY_MIN,
    **fields: Any,
) -> EventSourceMapping:
    """A mapping of an SQS queue to the function, read with the given keys (required: never the platform's own)."""
    refused = sorted(set(fields) & set(STREAM_ONLY))
    if refused:
        raise ServiceError(
            f"{', '.join(refused)}: not for a queue (its redrive policy retries and dead-letters).",
            details={name: ["stream mappings only"] for name in refused},
        )
    mapping = EventSourceMapping(function=function, kind=EventSourceKind.SQS, source=_queue_url(queue_url))
    mapping.batch_size = RECEIVE_MAX  # Lambda's default for a queue
    _keys(mapping, access_key_id, secret_access_key, region)
    mapping.max_concurrency = _concurrency(max_concurrency)
    mapping_configure(mapping, fields)
    _batching(mapping)
    mapping.save()
    return mapping


def queue_mapping_update(*, mapping: EventSourceMapping, **fields: Any) -> EventSourceMapping:
    refused = sorted(set(fields) & set(STREAM_ONLY))
    if refused:
        raise ServiceError(f"{', '.join(refused)}: not for a queue.", details={n: ["stream only"] for n in refused})
    keys = {name: fields.pop(name) for name in ("access_key_id", "secret_access_key", "region") if name in fields}
    if keys:
        _keys(
            mapping,
            keys.get("access_key_id", mapping.access_key_id),
            keys.get("secret_access_key"),
            keys.get("region", mapping.region),
        )
    if "max_concurrency" in fields:
        mapping.max_concurrency = _concurrency(fields.pop("max_concurrency"))
    mapping_configure(mapping, fields)
    _batching(mapping)
    mapping.last_error = "" if mapping.enabled else mapping.last_error
    mapping.save()
    return mapping


def _queue_url(url: Any) -> str:
    """A queue's URL (https://sqs.us-east-1.amazonaws.com/123456789012/orders, http://elasticmq:9324/000000000000/
    orders); its host never one of the platform's own network unless the operator allows it."""
    if not isinstance(url, str) or len(url) > 512 or not QUEUE_URL.fullmatch(url):
        raise ServiceError(
            "queue_url is a queue's URL: http(s)://host/<account>/<queue name>.", details={"queue_url": ["invalid"]}
        )
    try:
        _endpoint_refuse_private(url)
    except PrivateAddress as exc:
        raise ServiceError(
            f"queue_url: {exc}; see SOURCE_ENDPOINT_ALLOW_PRIVATE.", details={"queue_url": ["private address"]}
        ) from None
    return url


def _endpoint_refuse_private(url: str) -> None:
    from django.conf import settings

    if not settings.SOURCE_ENDPOINT_ALLOW_PRIVATE:
        try:
            host = urlsplit(url).hostname or ""
        except ValueError:
            raise PrivateAddress("the URL cannot be read") from None
        host_refuse_private(host)


def _keys(mapping: EventSourceMapping, access_key_id: Any, secret_access_key: Any, region: Any) -> None:
    if not isinstance(access_key_id, str) or not access_key_id or len(access_key_id) > 128:
        raise ServiceError("access_key_id is required for a queue.", details={"access_key_id": ["required"]})
    if secret_access_key is not None:
        if not isinstance(secret_access_key, str) or not secret_access_key or len(secret_access_key) > 256:
            raise ServiceError("secret_access_key is required.", details={"secret_access_key": ["required"]})
        mapping.secret_access_key = secret_encrypt(secret_access_key)
    if not isinstance(region, str) or not re.fullmatch(r"[a-z]{2}(-[a-z0-9]+){1,3}", region):
        raise ServiceError("region: a region name such as us-east-1.", details={"region": ["invalid"]})
    mapping.access_key_id, mapping.region = access_key_id, region


def _concurrency(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not CONCURRENCY_MIN <= value <= CONCURRENCY_MAX:
        raise ServiceError(
            f"max_concurrency is {CONCURRENCY_MIN}-{CONCURRENCY_MAX}.", details={"max_concurrency": ["out of range"]}
        )
    return value


def _batching(mapping: EventSourceMapping) -> None:
    if mapping.batch_size > RECEIVE_MAX and mapping.batching_window_s < 1:
        raise ServiceError(
            f"A batch of more than {RECEIVE_MAX} messages needs batching_window_s of at least 1 (as Lambda).",
            details={"batching_window_s": ["at least 1 for batch_size over 10"]},
        )


def queue_lag(*, mapping: EventSourceMapping) -> int | None:
    """Messages waiting in the queue and in flight (None when the queue cannot be asked)."""
    try:
        return sqs_waiting(_client(mapping), mapping.source)
    except (StoreError, PrivateAddress, ValueError):
        return None


# ---- batches ----------------------------------------------------------------------------------------------------


def sqs_record(mapping: EventSourceMapping, message: dict[str, Any]) -> dict[str, Any]:
    """A message as Lambda's SQS event has it (docs/event-sources.md)."""
    match = QUEUE_URL.fullmatch(mapping.source)
    account, name = (match.group("account"), match.group("name")) if match else ("000000000000", "queue")
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message.get("Body", ""),
        "attributes": message.get("Attributes", {}),
        "messageAttributes": {
            key: {
                "stringValue": value.get("StringValue"),
                "binaryValue": value.get("BinaryValue"),
                "stringListValues": value.get("StringListValues", []),
                "binaryListValues": value.get("BinaryListValues", []),
                "dataType": value.get("DataType", "String"),
            }
            for key, value in message.get("MessageAttributes", {}).items()
        },
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": f"arn:aws:sqs:{mapping.region}:{account}:{name}",
        "awsRegion": mapping.region,
    }


def _client(mapping: EventSourceMapping) -> Any:
    _endpoint_refuse_private(mapping.source)  # again at each use: a name's addresses may change
    return sqs_client(
        queue_url=mapping.source,
        region=mapping.region,
        access_key_id=mapping.access_key_id,
        secret_access_key=secret_decrypt(mapping.secret_access_key),
        timeout_s=STORE_TIMEOUT_S,
    )


def queue_batch(*, mapping: EventSourceMapping, host: str = "", stop: threading.Event | None = None) -> int:
    """Receive one batch (up to batch_size, within the batching window) and run the function with it; messages
    deleted. A store error is the mapping's last error."""
    try:
        client = _client(mapping)
        messages = _receive(client, mapping, stop)
        if not messages:
            return 0
        return _process(client, mapping, messages, host)
    except (StoreError, PrivateAddress) as exc:
        note(mapping, host, last_error=f"queue: {str(exc)[:1000]}")
        return 0


def _receive(client: Any, mapping: EventSourceMapping, stop: threading.Event | None) -> list[dict[str, Any]]:
    messages = sqs_receive(client, mapping.source, mapping.batch_size)
    deadline = time.monotonic() + mapping.batching_window_s
    while messages and len(messages) < mapping.batch_size and time.monotonic() < deadline:
        if stop is not None and stop.is_set():
            break
        more = sqs_receive(client, mapping.source, mapping.batch_size - len(messages))
        messages += more
        if not more and mapping.batching_window_s == 0:
            break
    return messages


def _process(client: Any, mapping: EventSourceMapping, messages: list[dict[str, Any]], host: str) -> int:
    try:
        answer = batch_invoke(mapping, [sqs_record(mapping, message) for message in messages])
    except ServiceError as exc:
        # Throttled, too large, an alias gone: the messages come back after the queue's visibility timeout.
        note(mapping, host, last_error=f"{exc.type}: {exc.message}", last_processing_result="PROBLEM: " + exc.type)
        return 0
    outcome = answer.outcome
    assert outcome is not None
    ok = outcome.finished and outcome.status == InvocationStatus.SUCCEEDED and not outcome.function_error
    failed = _failed_ids(mapping, messages, outcome.result) if ok else {message["MessageId"] for message in messages}
    done = [(m["MessageId"], m["ReceiptHandle"]) for m in messages if m["MessageId"] not in failed]
    sqs_delete(client, mapping.source, done)
    _settled(mapping, host, messages, done=len(done), failed=len(failed), outcome_error=outcome.error_type)
    return len(done)


def _failed_ids(mapping: EventSourceMapping, messages: list[dict[str, Any]], result: str) -> set[str]:
    """The messages a partial batch response names; all of them when it names one not in the batch or is
    malformed (as Lambda)."""
    if not mapping.report_batch_item_failures:
        return set()
    ids = {message["MessageId"] for message in messages}
    try:
        failures = json.loads(result).get("batchItemFailures") if result else None
        named = {str(item["itemIdentifier"]) for item in failures or []}
    except (ValueError, AttributeError, KeyError, TypeError):
        return ids
    return named if named <= ids else ids


def _settled(
    mapping: EventSourceMapping,
    host: str,
    messages: list[dict[str, Any]],
    *,
    done: int,
    failed: int,
    outcome_error: str,
) -> None:
    sent = [int(m.get("Attributes", {}).get("SentTimestamp", 0) or 0) for m in messages]
    age_ms = max(int(timezone.now().timestamp() * 1000) - max(sent), 0) if any(sent) else 0
    fields: dict[str, Any] = {
        "last_processing_result": "OK" if not failed else ("PARTIAL" if done else "FAILED"),
        "last_error": ""
        if not failed
        else f"{failed} of {len(messages)} messages failed ({outcome_error or 'batchItemFailures'})",
        "iterator_age_ms": age_ms,
    }
    note(mapping, host, **fields)
    EventSourceMapping.objects.filter(pk=mapping.pk).update(records=F("records") + done, batches=F("batches") + 1)
    metered(mapping, records=done, failed=bool(failed), age_ms=age_ms, lag_of=lambda: queue_lag(mapping=mapping))


# ---- the polling loop -------------------------------------------------------------------------------------------


class QueuePollers:
    """A host's queue pollers: every round renews and takes leases, and keeps up to max_concurrency batch loops of
    each held mapping running on a pool of threads; a loop takes batches back to back while the queue has
    messages, and ends when it is empty."""

    def __init__(self, host: str, threads: int = POLL_THREADS) -> None:
        self.host = host
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="queue-poll")
        self.running: dict[int, int] = {}
        self.lock = threading.Lock()
        self.stop_event = threading.Event()

    def round(self, now: datetime | None = None) -> None:
        polled = EventSourceMapping.objects.filter(enabled=True, kind=EventSourceKind.SQS)
        held = leases_hold(rows=polled, host=self.host, now=now or timezone.now(), limit=50)
        for mapping in EventSourceMapping.objects.select_related("function__owner").filter(pk__in=[m.pk for m in held]):
            with self.lock:
                free = mapping.max_concurrency - self.running.get(mapping.pk, 0)
                starting = max(min(free, 1), 0)  # one more loop a round: concurrency grows as messages keep coming
                self.running[mapping.pk] = self.running.get(mapping.pk, 0) + starting
            for _ in range(starting):
                self.pool.submit(self._loop, mapping)

    def _loop(self, mapping: EventSourceMapping) -> None:
        try:
            close_old_connections()
            while not self.stop_event.is_set() and queue_batch(mapping=mapping, host=self.host, stop=self.stop_event):
                pass
            lag_sample(mapping, lambda: queue_lag(mapping=mapping))
        except (RedisError, *DATABASE_ERRORS) as exc:
            logger.warning("Polling queue %s failed (%r); the next round tries again", mapping.source, exc)
        except Exception as exc:
            logger.exception("Polling queue %s failed", mapping.source)
            note(mapping, self.host, last_error=f"{type(exc).__name__}: {str(exc)[:500]}")
        finally:
            with self.lock:
                self.running[mapping.pk] -= 1
            close_old_connections()

    def stop(self) -> None:
        self.stop_event.set()
        self.pool.shutdown(wait=False, cancel_futures=True)


def queue_pollers_serve(stop: threading.Event, host: str) -> None:
    """The queue-polling loop of an executor host (a thread of the worker): a round a second; leases given up on a
    clean stop."""
    pollers = QueuePollers(host)
    while not stop.is_set():
        close_old_connections()
        try:
            pollers.round()
        except DATABASE_ERRORS as exc:
            logger.warning("Polling queues failed (%r); trying again in a second", exc)
            database_unreachable(exc)
        except Exception:
            logger.exception("Polling queues failed; trying again in a second")
        stop.wait(POLL_LOOP_S)
    pollers.stop()
    try:
        leases_release(rows=EventSourceMapping.objects.filter(kind=EventSourceKind.SQS), host=host)
    except DATABASE_ERRORS:
        logger.info("Queue leases not given up (the database is down); they run out by themselves")
