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
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import close_old_connections
from django.db.models import F
from django.utils import timezone
from redis.exceptions import RedisError, ResponseError

from console.exceptions import ResourceNotFound, ServiceError
from console.redis import as_text, redis_client
from functions_app.destinations import destination_deliver
from functions_app.invoke import InvokeAnswer, function_invoke
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
LEASES_PER_HOST = 50
IDLE_PAUSE_S = 0.2  # between rounds when no mapping had a full batch waiting
LAG_COUNT_MAX = 100_000  # a lag counted record by record (Redis before 7) stops here


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


def mapping_delete(*, mapping: EventSourceMapping) -> None:
    """The mapping and its consumer group (the stream's records stay, for other mappings)."""
    kind, key, group = mapping.kind, _key(mapping), _group(mapping)
    mapping.delete()
    if kind != EventSourceKind.REDIS_STREAM:
        return
    try:
        redis_client().xgroup_destroy(key, group)
    except RedisError as exc:
        logger.warning("Event source mapping deleted; its consumer group %s on %s stays (%r)", group, key, exc)


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
    pipeline = redis_client().pipeline(transaction=False)
    key = stream_key(owner_id=owner_id, name=stream)
    for entry in entries:
        pipeline.xadd(key, entry)
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
    """Up to ``count`` records: first those delivered and not acknowledged (a failed batch, or one in flight when
    its host died), then new ones."""
    client, key, group = redis_client(), _key(mapping), _group(mapping)
    records = _records(client.xreadgroup(group, CONSUMER, {key: "0"}, count=count))
    if len(records) < count:
        records += _records(client.xreadgroup(group, CONSUMER, {key: ">"}, count=count - len(records)))
    return records


def _records(reply: Any) -> list[StreamRecord]:
    found = []
    for _stream, entries in reply or []:
        for sequence, fields in entries:
            if not fields:
                continue  # trimmed away while pending
            found.append(
                StreamRecord(
                    sequence=as_text(sequence),
                    data=fields.get(b"data", b""),
                    partition_key=as_text(fields.get(b"partitionKey", b"")),
                )
            )
    return found


# ---- processing -------------------------------------------------------------------------------------------------


def mapping_poll(*, mapping: EventSourceMapping, host: str = "") -> int:
    """Process one batch of the mapping's stream: records committed (0 when there was nothing, the batching
    window is still open, or the batch failed and waits for its retry)."""
    limit = mapping.retry_batch_size or mapping.batch_size
    try:
        batch = _read(mapping, limit)
    except ResponseError as exc:
        if "NOGROUP" in str(exc):  # the stream was deleted with its group: start again from its end
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
    if not outcome.finished:
        note(mapping, host, last_error="The batch's call outlived its wait; it is delivered again.")
        return 0
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
        failures = json.loads(result).get("batchItemFailures") if result else None
    except (ValueError, AttributeError):
        return None
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


# Records waiting are sampled for the Monitor at most this often per mapping (counting them may take a while).
LAG_SAMPLE_S = 5.0
_lag_sampled: dict[int, float] = {}


def metered(
    mapping: EventSourceMapping, *, records: int, failed: bool, age_ms: int, lag_of: Callable[[], int | None]
) -> None:
    """Hand a batch to metering, with the records waiting (``lag_of``) at most every LAG_SAMPLE_S per mapping."""
    lag = None
    now = time.monotonic()
    if now - _lag_sampled.get(mapping.pk, 0.0) >= LAG_SAMPLE_S:
        _lag_sampled[mapping.pk] = now
        lag = lag_of()
    stream_batch_record(
        owner_id=mapping.function.owner_id,
        function_id=mapping.function_id,
        mapping=str(mapping.uuid),
        stream=(mapping.source.rsplit("/", 1)[-1] if mapping.kind == EventSourceKind.SQS else mapping.source)[:128],
        records=records,
        failed=failed,
        iterator_age_ms=age_ms,
        lag=lag,
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


def stream_pollers_round(*, host: str, now: datetime | None = None) -> int:
    """Renew and take leases, then one batch of each held mapping; records committed."""
    polled = EventSourceMapping.objects.filter(enabled=True, kind=EventSourceKind.REDIS_STREAM)
    held = leases_hold(rows=polled, host=host, now=now or timezone.now(), limit=LEASES_PER_HOST)
    mappings = EventSourceMapping.objects.select_related("function__owner").filter(pk__in=[m.pk for m in held])
    return sum(_poll_one(mapping, host) for mapping in mappings)


def _poll_one(mapping: EventSourceMapping, host: str) -> int:
    """One mapping's batch; whatever goes wrong is its own last error, never a stop for the host's others."""
    try:
        return mapping_poll(mapping=mapping, host=host)
    except (RedisError, *DATABASE_ERRORS):
        raise  # the platform's own outage: the loop pauses
    except Exception as exc:
        logger.exception("Event source mapping %s: polling failed", mapping.uuid)
        note(mapping, host, last_error=f"{type(exc).__name__}: {str(exc)[:500]}")
        return 0


def stream_pollers_serve(stop: threading.Event, host: str) -> None:
    """The stream-polling loop of an executor host (a thread of the worker): rounds back to back while batches are
    waiting, IDLE_PAUSE_S apart otherwise; leases given up on a clean stop."""
    while not stop.is_set():
        close_old_connections()
        committed = 0
        try:
            committed = stream_pollers_round(host=host)
        except DATABASE_ERRORS as exc:
            logger.warning("Polling streams failed (%r); trying again in a second", exc)
            database_unreachable(exc)
            stop.wait(1.0)
        except RedisError as exc:
            logger.warning("Polling streams failed (%r); trying again in a second", exc)
            stop.wait(1.0)
        except Exception:
            logger.exception("Polling streams failed; trying again in a second")
            stop.wait(1.0)
        if not committed:
            stop.wait(IDLE_PAUSE_S)
    try:
        leases_release(rows=EventSourceMapping.objects.filter(kind=EventSourceKind.REDIS_STREAM), host=host)
    except DATABASE_ERRORS:
        logger.info("Stream leases not given up (the database is down); they run out by themselves")
