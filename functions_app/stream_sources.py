"""Stream event sources: a Redis Stream read in batches by a function, as Lambda reads a Kinesis stream, with its
knobs (batch size, batching window, retries, record age, bisect on error, partial batch responses, an on-failure
destination) and Kinesis's record shape, so that Kinesis handlers run unchanged.

Every install has the stream source: streams live in the platform's Redis, one key space per tenant
(``ephemera:streams:{owner}:{name}``), written through ``POST /api/v1/streams/{name}/records/``. A mapping reads its
stream through a consumer group of its own. The host holding the mapping's lease (``functions_app.leases``) takes
a batch (first what was delivered and not acknowledged: a batch in flight when its host died, then new records),
calls the function synchronously with it, and only after the call succeeds acknowledges the records and moves the
mapping's checkpoint, which never goes backwards. Delivery is at least once: a batch whose host dies mid-call is
delivered again. docs/event-sources.md has the rules.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import close_old_connections
from django.db.models import F
from django.utils import timezone
from redis.exceptions import RedisError, ResponseError

from console.exceptions import RequestTooLarge, ResourceNotFound, ServiceError, TooManyRequests
from console.redis import as_text, redis_client
from functions_app.destinations import destination_deliver
from functions_app.invoke import InvokeAnswer, function_invoke, invocation_wait
from functions_app.leases import leases_hold, leases_release
from functions_app.models import (
    DEAD_LETTER,
    LATEST,
    DeadLetterCondition,
    EventSourceKind,
    EventSourceMapping,
    Function,
    Invocation,
    InvocationStatus,
    InvocationType,
    StartingPosition,
)
from functions_app.outages import DATABASE_ERRORS, database_unreachable
from functions_app.selectors import qualifier_resolve
from metrics_app.services import stream_batch_record

logger = logging.getLogger(__name__)

EVENT_SOURCE_MAPPING = "event-source-mapping"  # an invocation's trigger type
STREAM_NAME = re.compile(r"[0-9A-Za-z_.-]{1,128}")
STREAM_KEY = "ephemera:streams:{owner}:{name}"
CONSUMER = "poller"  # one consumer per group: whichever host holds the lease reads as it
BATCH_SIZE_MAX = 10_000
BATCHING_WINDOW_MAX_S = 300
RETRY_ATTEMPTS_MAX = 10_000
RECORD_AGE_MIN_S, RECORD_AGE_MAX_S = 60, 604_800
# PutRecords' limits, as Kinesis's.
PUT_RECORDS_MAX = 500
RECORD_DATA_MAX_BYTES = 1024 * 1024
PUT_BYTES_MAX = 5 * 1024 * 1024
# A stream keeps its records this long (Kinesis's default), and at most this many: the platform's Redis is shared.
STREAM_RETENTION_S = 24 * 3600
STREAM_RECORDS_MAX = 1_000_000
LEASES_PER_HOST = 50
IDLE_PAUSE_S = 0.2  # between rounds of a host's loop (leases renewed, mappings without a running loop started)
READ_CHUNK = 25
# A batch's records hold at most this much data: base64 makes 6 MB of it, the synchronous payload limit.
BATCH_BYTES_MAX = 4 * 1024 * 1024
POLL_THREADS = 16
# A failed batch is retried after 1, 2, 4 … seconds, at most a minute.
RETRY_BACKOFF_FIRST_S, RETRY_BACKOFF_MAX_S = 1.0, 60.0
LAG_COUNT_MAX = 10_000  # a lag counted record by record (Redis before 7) stops here


# ---- configuration ----------------------------------------------------------------------------------------------


def stream_key(*, owner_id: int, name: str) -> str:
    return STREAM_KEY.format(owner=owner_id, name=name)


def _group(mapping: EventSourceMapping) -> str:
    return f"ephemera:{mapping.uuid}"


def _key(mapping: EventSourceMapping) -> str:
    return stream_key(owner_id=mapping.function.owner_id, name=mapping.source)


def mapping_list(*, function: Function) -> list[EventSourceMapping]:
    return list(function.event_source_mappings.all())


def mapping_get(*, owner_id: int, uuid: str) -> EventSourceMapping:
    mapping = None
    if _is_uuid(uuid):
        mappings = EventSourceMapping.objects.select_related("function__owner")
        mapping = mappings.filter(uuid=uuid, function__owner_id=owner_id).first()
    if mapping is None:
        raise ResourceNotFound(f"No event source mapping {uuid}.")
    return mapping


def _is_uuid(text: str) -> bool:
    return bool(re.fullmatch(r"[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}", text))


SETTINGS = (
    "qualifier",
    "batch_size",
    "batching_window_s",
    "max_retry_attempts",
    "max_record_age_s",
    "bisect_on_error",
    "report_batch_item_failures",
    "on_failure",
    "enabled",
)


def mapping_create(
    *,
    function: Function,
    stream: str,
    starting_position: str = StartingPosition.LATEST,
    **fields: Any,
) -> EventSourceMapping:
    """A mapping of the owner's stream ``stream`` (made empty if it does not exist yet) to the function; its
    consumer group starts at the stream's end (LATEST) or its first record (TRIM_HORIZON)."""
    if not isinstance(stream, str) or not STREAM_NAME.fullmatch(stream):
        raise ServiceError("stream: 1-128 letters, digits, '-', '_' or '.'.", details={"stream": ["invalid name"]})
    if starting_position not in StartingPosition.values:
        raise ServiceError(
            "starting_position is LATEST or TRIM_HORIZON.", details={"starting_position": ["LATEST or TRIM_HORIZON"]}
        )
    mapping = EventSourceMapping(
        function=function, kind=EventSourceKind.REDIS_STREAM, source=stream, starting_position=starting_position
    )
    mapping_configure(mapping, fields)
    mapping.save()
    start = "$" if starting_position == StartingPosition.LATEST else "0"
    try:
        redis_client().xgroup_create(_key(mapping), _group(mapping), id=start, mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            mapping.delete()
            raise
    return mapping


def mapping_update(*, mapping: EventSourceMapping, **fields: Any) -> EventSourceMapping:
    mapping_configure(mapping, fields)
    mapping.last_error = "" if mapping.enabled else mapping.last_error
    mapping.save()
    return mapping


def stream_groups(*, function: Function) -> list[tuple[str, str]]:
    """The (stream key, consumer group) of each of the function's stream mappings."""
    mappings = function.event_source_mappings.filter(kind=EventSourceKind.REDIS_STREAM).select_related("function")
    return [(_key(mapping), _group(mapping)) for mapping in mappings]


def stream_groups_destroy(groups: list[tuple[str, str]]) -> None:
    """Remove consumer groups whose mappings are gone (the streams' records stay, for other mappings)."""
    for key, group in groups:
        try:
            redis_client().xgroup_destroy(key, group)
        except RedisError as exc:
            logger.warning("The consumer group %s on %s stays (%r)", group, key, exc)


def mapping_delete(*, mapping: EventSourceMapping) -> None:
    """The mapping and its consumer group (the stream's records stay, for other mappings)."""
    kind, key, group = mapping.kind, _key(mapping), _group(mapping)
    mapping.delete()
    if kind == EventSourceKind.REDIS_STREAM:
        stream_groups_destroy([(key, group)])


def mapping_configure(mapping: EventSourceMapping, fields: dict[str, Any]) -> None:
    """Set the settings both kinds of mapping have (``SETTINGS``), checked."""
    unknown = set(fields) - set(SETTINGS)
    if unknown:
        raise ServiceError(f"Unknown fields: {', '.join(sorted(unknown))}.")
    values = {name: getattr(mapping, name) for name in SETTINGS} | fields
    mapping.batch_size = _whole(values["batch_size"], "batch_size", 1, BATCH_SIZE_MAX)
    mapping.batching_window_s = _whole(values["batching_window_s"], "batching_window_s", 0, BATCHING_WINDOW_MAX_S)
    mapping.max_retry_attempts = _whole(values["max_retry_attempts"], "max_retry_attempts", -1, RETRY_ATTEMPTS_MAX)
    age = _whole(values["max_record_age_s"], "max_record_age_s", -1, RECORD_AGE_MAX_S)
    if age != -1 and age < RECORD_AGE_MIN_S:
        raise ServiceError(
            f"max_record_age_s is -1 (records never expire) or {RECORD_AGE_MIN_S}-{RECORD_AGE_MAX_S}.",
            details={"max_record_age_s": ["out of range"]},
        )
    mapping.max_record_age_s = age
    for flag in ("bisect_on_error", "report_batch_item_failures", "enabled"):
        if not isinstance(values[flag], bool):
            raise ServiceError(f"{flag} is true or false.", details={flag: ["a boolean"]})
        setattr(mapping, flag, values[flag])
    mapping.on_failure = _on_failure(mapping.function, values["on_failure"])
    qualifier = values["qualifier"]
    if not isinstance(qualifier, str):
        raise ServiceError("qualifier is text.", details={"qualifier": ["text"]})
    if qualifier and qualifier != LATEST and "qualifier" in fields:
        qualifier_resolve(function=mapping.function, qualifier=qualifier)  # 404 for an unknown alias
    mapping.qualifier = "" if qualifier == LATEST else qualifier


def _whole(value: Any, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ServiceError(f"{field} is a whole number from {low} to {high}.", details={field: ["out of range"]})
    return value


def _on_failure(function: Function, value: Any) -> str:
    if value == DEAD_LETTER:
        return value
    if isinstance(value, str) and value.startswith("function:"):
        name = value.split(":", 1)[1]
        if Function.objects.filter(owner_id=function.owner_id, name=name).exists():
            return value
        raise ServiceError(f"on_failure: you have no function {name!r}.", details={"on_failure": ["no such function"]})
    raise ServiceError(
        'on_failure is "dead-letter" (the inbox) or "function:<name>".', details={"on_failure": ["invalid"]}
    )


def mapping_state(*, mapping: EventSourceMapping) -> str:
    """Enabled, Disabled, or Failing (the last batch failed: ``last_error``), as Lambda names them."""
    if not mapping.enabled:
        return "Disabled"
    return "Failing" if mapping.last_error else "Enabled"


def mapping_lag(*, mapping: EventSourceMapping) -> int | None:
    """Records of the stream not yet delivered to the mapping's group (None when Redis cannot tell)."""
    try:
        groups = redis_client().xinfo_groups(_key(mapping))
    except RedisError:
        return None
    for group in groups:
        if as_text(group.get("name", b"")) == _group(mapping):
            pending = int(group.get("pending") or 0)
            lag = group.get("lag")  # Redis 7; before it, counted (up to LAG_COUNT_MAX)
            if lag is None:
                after = "(" + as_text(group.get("last-delivered-id", b"0-0"))
                lag = len(redis_client().xrange(_key(mapping), min=after, max="+", count=LAG_COUNT_MAX) or [])
            return int(lag) + pending
    return None


# ---- writing records --------------------------------------------------------------------------------------------


def stream_records_put(*, owner_id: int, stream: str, records: list[Any]) -> list[str]:
    """Append records (each {"data": any JSON} or {"data_base64": "..."}, and an optional "partition_key") to the
    owner's stream; their sequence numbers (the stream's ids), in order."""
    if not isinstance(stream, str) or not STREAM_NAME.fullmatch(stream):
        raise ServiceError("stream: 1-128 letters, digits, '-', '_' or '.'.", details={"stream": ["invalid name"]})
    if not isinstance(records, list) or not 1 <= len(records) <= PUT_RECORDS_MAX:
        raise ServiceError(f"records is a list of 1-{PUT_RECORDS_MAX} records.", details={"records": ["1-500"]})
    entries = [_entry(record, number) for number, record in enumerate(records)]
    if sum(len(entry["data"]) for entry in entries) > PUT_BYTES_MAX:
        raise RequestTooLarge(f"A request's records hold at most {PUT_BYTES_MAX} bytes of data.")
    client, key = redis_client(), stream_key(owner_id=owner_id, name=stream)
    if client.xlen(key) >= STREAM_RECORDS_MAX:
        raise TooManyRequests(
            f"The stream {stream} holds {STREAM_RECORDS_MAX} records, its most: they leave it as they age "
            f"({STREAM_RETENTION_S // 3600} h) or are read by a mapping.",
            type="StreamFull",
        )
    # Records older than the retention leave the stream (as Kinesis's), trimmed as records are added.
    oldest = int((time.time() - STREAM_RETENTION_S) * 1000)
    pipeline = client.pipeline(transaction=False)
    for entry in entries:
        pipeline.xadd(key, entry, minid=oldest, approximate=True)
    return [as_text(sequence) for sequence in pipeline.execute()]


def _entry(record: Any, number: int) -> dict[Any, Any]:
    where = f"records[{number}]"
    if not isinstance(record, dict) or set(record) - {"data", "data_base64", "partition_key"}:
        raise ServiceError(
            f'{where}: {{"data": any JSON}} or {{"data_base64": "…"}}, and "partition_key".',
            details={where: ["invalid"]},
        )
    if ("data" in record) == ("data_base64" in record):
        raise ServiceError(f"{where}: data or data_base64, one of them.", details={where: ["data"]})
    if "data" in record:
        data = json.dumps(record["data"]).encode()
    else:
        try:
            data = base64.b64decode(str(record["data_base64"]), validate=True)
        except ValueError:
            raise ServiceError(f"{where}: data_base64 is not base64.", details={where: ["base64"]}) from None
    partition_key = record.get("partition_key", "")
    if not isinstance(partition_key, str) or len(partition_key) > 256:
        raise ServiceError(f"{where}: partition_key is text of at most 256 characters.", details={where: ["key"]})
    if len(data) > RECORD_DATA_MAX_BYTES:
        raise ServiceError(f"{where}: over {RECORD_DATA_MAX_BYTES} bytes.", details={where: ["too large"]})
    return {"data": data, "partitionKey": partition_key.encode()}


# ---- reading batches --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamRecord:
    sequence: str  # the stream's id: "<milliseconds>-<n>"
    data: bytes
    partition_key: str

    @property
    def arrived_ms(self) -> int:
        return int(self.sequence.split("-")[0])


def sequence_order(sequence: str) -> tuple[int, int]:
    milliseconds, _, number = sequence.partition("-")
    return int(milliseconds or 0), int(number or 0)


def kinesis_record(mapping: EventSourceMapping, record: StreamRecord) -> dict[str, Any]:
    """A record as Lambda's Kinesis event has it (docs/event-sources.md): the data base64, the stream's id as the
    sequence number and in the event id."""
    account = f"{mapping.function.owner_id:012d}"
    region = settings.AWS_REGION
    return {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": record.partition_key,
            "sequenceNumber": record.sequence,
            "data": base64.b64encode(record.data).decode(),
            "approximateArrivalTimestamp": record.arrived_ms / 1000,
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"shardId-000000000000:{record.sequence}",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": f"arn:aws:iam::{account}:role/ephemera-event-source",
        "awsRegion": region,
        "eventSourceARN": f"arn:aws:kinesis:{region}:{account}:stream/{mapping.source}",
    }


def _read(mapping: EventSourceMapping, count: int) -> list[StreamRecord]:
    """Up to ``count`` records and BATCH_BYTES_MAX of data: first those delivered and not acknowledged (a failed
    batch, or one in flight when its host died), then new ones; read READ_CHUNK at a time. Entries trimmed from the
    stream while pending are acknowledged as they are met (nothing is left to process of them). What a last chunk
    read beyond the cap stays delivered-and-pending, and leads the next read."""
    client, key, group = redis_client(), _key(mapping), _group(mapping)
    records: list[StreamRecord] = []
    size = 0
    for start in ("0", ">"):  # pending from the start, then new
        after = start
        while len(records) < count and size < BATCH_BYTES_MAX:
            reply: Any = client.xreadgroup(group, CONSUMER, {key: after}, count=min(count - len(records), READ_CHUNK))
            entries: list[Any] = [entry for _stream, found in reply or [] for entry in found]
            if not entries:
                break
            trimmed = [sequence for sequence, fields in entries if not fields]
            if trimmed:
                client.xack(key, group, *trimmed)
            for sequence, fields in entries:
                if fields and size < BATCH_BYTES_MAX:
                    record = StreamRecord(
                        as_text(sequence), fields.get(b"data", b""), as_text(fields.get(b"partitionKey", b""))
                    )
                    if records and size + len(record.data) > BATCH_BYTES_MAX:
                        size = BATCH_BYTES_MAX  # full: this one and the rest stay pending, first in the next read
                        continue
                    records.append(record)
                    size += len(record.data)
            if start == "0":
                after = as_text(entries[-1][0])  # the pending entries after the last one read
    return records


# ---- processing -------------------------------------------------------------------------------------------------


def mapping_poll(*, mapping: EventSourceMapping, host: str = "") -> int:
    """Process one batch of the mapping's stream: records committed (0 when there was nothing, the batching
    window is still open, or the batch failed and waits for its retry)."""
    if mapping.batch_attempts and mapping.last_batch_at is not None:
        backoff_s = min(RETRY_BACKOFF_FIRST_S * 2.0 ** (mapping.batch_attempts - 1), RETRY_BACKOFF_MAX_S)
        if (timezone.now() - mapping.last_batch_at).total_seconds() < backoff_s:
            return 0  # a failed batch waits before its retry
    limit = mapping.retry_batch_size or mapping.batch_size
    try:
        batch = _read(mapping, limit)
    except ResponseError as exc:
        # The stream was deleted with its group: start again from its end (unless the mapping is gone too).
        if "NOGROUP" in str(exc) and EventSourceMapping.objects.filter(pk=mapping.pk).exists():
            redis_client().xgroup_create(_key(mapping), _group(mapping), id="$", mkstream=True)
            return 0
        raise
    if not batch:
        return 0
    window_open = (timezone.now().timestamp() * 1000 - batch[0].arrived_ms) < mapping.batching_window_s * 1000
    if len(batch) < mapping.batch_size and not mapping.retry_batch_size and window_open:
        return 0  # they stay delivered-and-pending, and lead the next read
    return _process(mapping, batch, host)


def batch_invoke(mapping: EventSourceMapping, records: list[dict[str, Any]]) -> InvokeAnswer:
    """One synchronous call of the mapping's function with a batch (``{"Records": records}``), through the invoke
    service (admission, limits, metering as any call); a ServiceError when the platform refuses it."""
    return function_invoke(
        owner=mapping.function.owner,
        function=mapping.function,
        qualifier=mapping.qualifier,
        raw_payload=json.dumps({"Records": records}).encode(),
        invocation_type=InvocationType.SYNC,
        trigger={"type": EVENT_SOURCE_MAPPING, "id": str(mapping.uuid), "records": len(records)},
    )


def _process(mapping: EventSourceMapping, batch: list[StreamRecord], host: str) -> int:
    try:
        answer = batch_invoke(mapping, [kinesis_record(mapping, record) for record in batch])
    except ServiceError as exc:
        if exc.status == 413 and len(batch) > 1:  # over the payload limit: a smaller batch next time
            note(mapping, host, retry_batch_size=max(len(batch) // 2, 1), last_error=exc.message)
            return 0
        note(mapping, host, last_error=f"{exc.type}: {exc.message}", last_processing_result="PROBLEM: " + exc.type)
        return 0  # throttled, or the function cannot take it now: the batch waits, pending
    outcome, invocation = answer.outcome, answer.invocation
    assert outcome is not None and invocation is not None  # a synchronous call
    # The call may outlast a web caller's wait (SYNC_WAIT_MAX_S): this loop waits for it to its end, so that a
    # batch is never called again while its call runs. Past its timeout and a lease it is a failed attempt.
    deadline = time.monotonic() + invocation.timeout_s + 2 * settings.LEASE_S
    while not outcome.finished and time.monotonic() < deadline:
        outcome = invocation_wait(invocation=invocation, wait_s=max(deadline - time.monotonic(), 1.0))
    if not outcome.finished:
        return _failed(mapping, batch, invocation, host, "The batch's call did not finish within its timeout.")
    if outcome.status == InvocationStatus.SUCCEEDED and not outcome.function_error:
        failed_from = _first_failure(mapping, batch, outcome.result)
        if failed_from is None:
            return _commit(mapping, batch, host, result="OK")
        done = _commit(mapping, batch[:failed_from], host, result="PARTIAL") if failed_from else 0
        return done + _failed(mapping, batch[failed_from:], invocation, host, "Some records failed (batchItemFailures)")
    return _failed(mapping, batch, invocation, host, f"{outcome.error_type or 'Error'}: {outcome.result[:500]}")


def _first_failure(mapping: EventSourceMapping, batch: list[StreamRecord], result: str) -> int | None:
    """Where the batch failed by the function's partial batch response (the index of the lowest failed record), or
    None. A response that names no record of the batch, or is malformed, fails the whole batch (0), as Lambda."""
    if not mapping.report_batch_item_failures:
        return None
    try:
        answer = json.loads(result) if result else None
    except ValueError:
        return 0
    if answer is None:
        return None
    if not isinstance(answer, dict):
        return 0  # not a partial batch response: the whole batch failed
    failures = answer.get("batchItemFailures")
    if not failures:
        return None
    positions = {record.sequence: index for index, record in enumerate(batch)}
    try:
        indexes = [positions[str(item["itemIdentifier"])] for item in failures]
    except (KeyError, TypeError):
        return 0
    return min(indexes)


def _commit(mapping: EventSourceMapping, records: list[StreamRecord], host: str, *, result: str) -> int:
    """Acknowledge the records and move the checkpoint forward (never back), on the mapping's row fenced by its
    lease: a host that lost the lease moves nothing."""
    if not records:
        return 0
    last = records[-1].sequence
    rows = EventSourceMapping.objects.filter(pk=mapping.pk)
    if host:
        rows = rows.filter(lease_owner=host)
    now = timezone.now()
    age_ms = max(int(now.timestamp() * 1000) - records[-1].arrived_ms, 0)
    forward = not mapping.checkpoint or sequence_order(last) > sequence_order(mapping.checkpoint)
    moved = {
        "records": F("records") + len(records),
        "batches": F("batches") + 1,
        "last_batch_at": now,
        "last_processing_result": result,
        "last_error": "",
        "retry_batch_size": None,
        "batch_attempts": 0,
        "iterator_age_ms": age_ms,
    }
    if not rows.update(**moved, **({"checkpoint": last} if forward else {})):
        return 0  # the lease moved on: the next holder delivers these again (at least once)
    redis_client().xack(_key(mapping), _group(mapping), *[record.sequence for record in records])
    metered(
        mapping,
        records=len(records),
        failed=result.startswith("FAILED"),
        age_ms=age_ms,
        lag_of=lambda: mapping_lag(mapping=mapping),
    )
    mapping.checkpoint = last if forward else mapping.checkpoint
    mapping.retry_batch_size, mapping.batch_attempts = None, 0
    return len(records)


# Records waiting are sampled at most this often per mapping while it has batches (counting them may take a while).
LAG_SAMPLE_S = 5.0


def lag_sample(mapping: EventSourceMapping, lag_of: Callable[[], int | None], *, force: bool = False) -> None:
    """Count the records (or messages) waiting, at most every LAG_SAMPLE_S unless ``force``, into the mapping's
    row: what the API, the console and Monitor show (counting may take a while; no page ever does it)."""
    now = timezone.now()
    if not force and mapping.lag_at is not None and (now - mapping.lag_at).total_seconds() < LAG_SAMPLE_S:
        return
    lag = lag_of()
    EventSourceMapping.objects.filter(pk=mapping.pk).update(lag=lag, lag_at=now)
    mapping.lag, mapping.lag_at = lag, now


def metered(
    mapping: EventSourceMapping, *, records: int, failed: bool, age_ms: int, lag_of: Callable[[], int | None]
) -> None:
    """Hand a batch to metering, with the records waiting (sampled at most every LAG_SAMPLE_S)."""
    sampled_before = mapping.lag_at
    lag_sample(mapping, lag_of)
    stream_batch_record(
        owner_id=mapping.function.owner_id,
        function_id=mapping.function_id,
        mapping=str(mapping.uuid),
        stream=(mapping.source.rsplit("/", 1)[-1] if mapping.kind == EventSourceKind.SQS else mapping.source)[:128],
        records=records,
        failed=failed,
        iterator_age_ms=age_ms,
        lag=mapping.lag if mapping.lag_at != sampled_before else None,
    )


def _failed(
    mapping: EventSourceMapping, batch: list[StreamRecord], invocation: Invocation, host: str, reason: str
) -> int:
    """A batch that failed: retried (halved first when bisecting) until its attempts or its records' age run out,
    then sent to the on-failure destination and committed, so the stream moves on."""
    attempts = mapping.batch_attempts + 1
    oldest_age_s = timezone.now().timestamp() - batch[0].arrived_ms / 1000
    expired = mapping.max_record_age_s != -1 and oldest_age_s > mapping.max_record_age_s
    exhausted = mapping.max_retry_attempts != -1 and attempts > mapping.max_retry_attempts
    bisecting = mapping.bisect_on_error and len(batch) > 1 and not expired
    if bisecting or not (expired or exhausted):
        size = max(len(batch) // 2, 1) if bisecting else len(batch)
        note(mapping, host, retry_batch_size=size, batch_attempts=attempts, last_error=reason)
        age_ms = max(int(timezone.now().timestamp() * 1000) - batch[-1].arrived_ms, 0)
        metered(mapping, records=0, failed=True, age_ms=age_ms, lag_of=lambda: mapping_lag(mapping=mapping))
        return 0
    condition = DeadLetterCondition.EVENT_AGE_EXCEEDED if expired else DeadLetterCondition.RETRIES_EXHAUSTED
    destination_deliver(invocation=invocation, destination=mapping.on_failure, condition=condition)
    logger.warning("Mapping %s: %d records sent to %s (%s)", mapping.uuid, len(batch), mapping.on_failure, condition)
    return _commit(mapping, batch, host, result=f"FAILED: {condition}")


def note(mapping: EventSourceMapping, host: str, **fields: Any) -> None:
    """Write fields of the mapping's row (fenced on the lease when ``host`` is given) and of ``mapping``."""
    rows = EventSourceMapping.objects.filter(pk=mapping.pk)
    if host:
        rows = rows.filter(lease_owner=host)
    fields.setdefault("last_batch_at", timezone.now())
    rows.update(**fields)
    for name, value in fields.items():
        setattr(mapping, name, value)


# ---- the polling loop -------------------------------------------------------------------------------------------


class StreamPollers:
    """A host's stream pollers: every round (IDLE_PAUSE_S) renews and takes leases, so a long call never loses its
    lease, and starts a loop on a thread of its own for each held mapping without one. A mapping's loop takes its
    batches back to back, one at a time (a stream's order), and ends when none is waiting; one mapping's slow
    function, or failure, never holds up another's."""

    def __init__(self, host: str, threads: int = POLL_THREADS) -> None:
        self.host = host
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="stream-poll")
        self.running: set[int] = set()
        self.lock = threading.Lock()
        self.stop_event = threading.Event()

    def round(self, now: datetime | None = None) -> None:
        polled = EventSourceMapping.objects.filter(enabled=True, kind=EventSourceKind.REDIS_STREAM)
        held = leases_hold(rows=polled, host=self.host, now=now or timezone.now(), limit=LEASES_PER_HOST)
        for mapping in EventSourceMapping.objects.select_related("function__owner").filter(pk__in=[m.pk for m in held]):
            with self.lock:
                if mapping.pk in self.running:
                    continue
                self.running.add(mapping.pk)
            self.pool.submit(self._loop, mapping)

    def _loop(self, mapping: EventSourceMapping) -> None:
        try:
            close_old_connections()
            while not self.stop_event.is_set() and _poll_one(mapping, self.host):
                mapping.refresh_from_db()  # its settings may have changed; DoesNotExist once it is deleted
                if not mapping.enabled or mapping.lease_owner != self.host:
                    break
        except EventSourceMapping.DoesNotExist:
            pass
        except DATABASE_ERRORS as exc:
            logger.warning("Stream mapping %s: the database is unreachable (%r)", mapping.uuid, exc)
        finally:
            with self.lock:
                self.running.discard(mapping.pk)
            _idle_lag(mapping, lambda: mapping_lag(mapping=mapping))
            close_old_connections()

    def stop(self) -> None:
        self.stop_event.set()
        self.pool.shutdown(wait=False, cancel_futures=True)


def _idle_lag(mapping: EventSourceMapping, lag_of: Callable[[], int | None]) -> None:
    """A loop that ends has nothing waiting, or is failing: its lag is sampled then, as during batches."""
    try:
        lag_sample(mapping, lag_of)
    except (RedisError, *DATABASE_ERRORS) as exc:
        logger.info("Mapping %s: lag not sampled (%r)", mapping.uuid, exc)


def _poll_one(mapping: EventSourceMapping, host: str) -> int:
    """One mapping's batch; whatever goes wrong is its own last error, never a stop for the host's others."""
    try:
        return mapping_poll(mapping=mapping, host=host)
    except DATABASE_ERRORS:
        raise
    except RedisError as exc:
        note(mapping, host, last_error=f"redis: {str(exc)[:500]}")
        return 0
    except Exception as exc:
        logger.exception("Event source mapping %s: polling failed", mapping.uuid)
        note(mapping, host, last_error=f"{type(exc).__name__}: {str(exc)[:500]}")
        return 0


def stream_pollers_serve(stop: threading.Event, host: str) -> None:
    """The stream-polling loop of an executor host (a thread of the worker); leases given up on a clean stop."""
    pollers = StreamPollers(host)
    while not stop.is_set():
        close_old_connections()
        try:
            pollers.round()
        except DATABASE_ERRORS as exc:
            logger.warning("Polling streams failed (%r); trying again in a second", exc)
            database_unreachable(exc)
            stop.wait(1.0)
        except Exception:
            logger.exception("Polling streams failed; trying again in a second")
            stop.wait(1.0)
        stop.wait(IDLE_PAUSE_S)
    pollers.stop()
    try:
        leases_release(rows=EventSourceMapping.objects.filter(kind=EventSourceKind.REDIS_STREAM), host=host)
    except DATABASE_ERRORS:
        logger.info("Stream leases not given up (the database is down); they run out by themselves")
