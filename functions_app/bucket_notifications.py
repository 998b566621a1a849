"""Bucket notifications: an object store's events (objects created, removed) run a function, each event one
asynchronous invocation with Lambda's S3 record, so code written for S3 triggers runs unchanged.

Two ways in. A store that can push (MinIO, Ceph RGW, …) posts S3-format records to the configuration's webhook,
with its bearer token; a repeated delivery of one event is one invocation (an idempotency key made of the event).
A store that cannot push is polled: a worker host holding the configuration's lease lists the bucket
(ListObjectsV2), and each object version it has not seen (a ``BucketObject`` row, written by a conditional update
in the same transaction as the event's invocation) is exactly one event; an object gone is one removal.
docs/event-sources.md has the rules.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote_plus, unquote_plus, urlsplit

from django.conf import settings
from django.db import IntegrityError, close_old_connections, transaction
from django.db.models import F
from django.utils import timezone

from console.exceptions import RequestTooLarge, ResourceConflict, ResourceNotFound, ServiceError
from console.json_api import json_strict_loads
from functions_app.accept import IdempotencyConflict, invocation_accept
from functions_app.aws import StoreError, s3_client, s3_endpoint_check, s3_objects
from functions_app.leases import leases_hold, leases_release
from functions_app.models import (
    LATEST,
    BucketNotification,
    BucketNotificationMode,
    BucketObject,
    Function,
    Invocation,
    InvocationType,
)
from functions_app.outages import DATABASE_ERRORS, database_unreachable
from functions_app.outbound import PrivateAddress, host_refuse_private
from functions_app.secrets import secret_decrypt, secret_encrypt
from functions_app.selectors import qualifier_resolve

logger = logging.getLogger(__name__)

BUCKET_NOTIFICATION = "bucket-notification"  # an invocation's trigger type
NAME_PATTERN = re.compile(r"[0-9A-Za-z_][0-9A-Za-z_.-]{0,63}")  # not "." or "..": they would vanish from URLs
# S3's bucket names: 3-63 lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit.
BUCKET_PATTERN = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
REGION_PATTERN = re.compile(r"[a-z]{2}(-[a-z0-9]+){1,3}")
CREATED, REMOVED = "ObjectCreated", "ObjectRemoved"
EVENT_TYPES = frozenset(
    {
        "s3:ObjectCreated:*",
        "s3:ObjectCreated:Put",
        "s3:ObjectCreated:Post",
        "s3:ObjectCreated:Copy",
        "s3:ObjectCreated:CompleteMultipartUpload",
        "s3:ObjectRemoved:*",
        "s3:ObjectRemoved:Delete",
        "s3:ObjectRemoved:DeleteMarkerCreated",
    }
)
# What listing can tell apart: a new version (Put) and a key gone (Delete).
POLL_EVENT_TYPES = frozenset(
    {"s3:ObjectCreated:*", "s3:ObjectCreated:Put", "s3:ObjectRemoved:*", "s3:ObjectRemoved:Delete"}
)
POLL_INTERVAL_MIN_S, POLL_INTERVAL_MAX_S = 1, 3600
WEBHOOK_BODY_MAX_BYTES = 1024 * 1024
WEBHOOK_RECORDS_MAX = 1000
# A store that does not answer within this is failing for this poll (the poller moves on to other buckets).
STORE_TIMEOUT_S = 10.0
# How many poll configurations one host holds at most: the rest wait for another host, or for a later round.
LEASES_PER_HOST = 50
POLL_LOOP_S = 1.0
# Polls run side by side (a slow store holds one thread, not the host's other buckets).
POLL_THREADS = 8


class WebhookUnauthorized(ServiceError):
    status = 401
    type = "Unauthorized"


# ---- configuration ----------------------------------------------------------------------------------------------


def bucket_notification_list(*, function: Function) -> list[BucketNotification]:
    return list(function.bucket_notifications.all())


def bucket_notification_get(*, function: Function, name: str) -> BucketNotification:
    try:
        return function.bucket_notifications.get(name=name)
    except BucketNotification.DoesNotExist:
        raise ResourceNotFound(f"{function.name} has no bucket notification {name!r}.") from None


def bucket_notification_create(
    *,
    function: Function,
    name: str,
    mode: str,
    bucket: str,
    endpoint_url: str = "",
    region: str = "us-east-1",
    access_key_id: str = "",
    secret_access_key: str = "",
    events: list[str] | None = None,
    prefix: str = "",
    suffix: str = "",
    qualifier: str = "",
    enabled: bool = True,
    poll_interval_s: int = 10,
) -> tuple[BucketNotification, str]:
    """The configuration, and its webhook token (shown once; empty for a poll configuration)."""
    if mode not in BucketNotificationMode.values:
        raise ServiceError("mode is webhook or poll.", details={"mode": ["webhook or poll"]})
    notification = BucketNotification(function=function, name=_name(name), mode=mode)
    _configure(
        notification,
        bucket=bucket,
        endpoint_url=endpoint_url,
        region=region,
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        events=["s3:ObjectCreated:*"] if events is None else events,
        prefix=prefix,
        suffix=suffix,
        qualifier=qualifier,
        enabled=enabled,
        poll_interval_s=poll_interval_s,
    )
    token = secrets.token_urlsafe(32) if mode == BucketNotificationMode.WEBHOOK else ""
    notification.baseline_from = timezone.now()
    notification.token_sha256 = _digest(token) if token else ""
    notification.next_poll_at = timezone.now() if mode == BucketNotificationMode.POLL else None
    try:
        with transaction.atomic():
            notification.save()
    except IntegrityError:
        raise ResourceConflict(f"{function.name} already has a bucket notification named {name!r}.") from None
    return notification, token


def bucket_notification_update(*, notification: BucketNotification, **changes: Any) -> BucketNotification:
    """Change any setting but the name and the mode. A new bucket, endpoint or prefix starts the poller afresh (a new
    baseline: what is there then is not sent)."""
    fields = (
        "bucket",
        "endpoint_url",
        "region",
        "access_key_id",
        "secret_access_key",
        "events",
        "prefix",
        "suffix",
        "qualifier",
        "enabled",
        "poll_interval_s",
    )
    unknown = set(changes) - set(fields)
    if unknown:
        raise ServiceError(f"Unknown fields: {', '.join(sorted(unknown))}.")
    current = {field: getattr(notification, field) for field in fields}
    current["secret_access_key"] = None  # unchanged unless given
    # A new place to look, or enabling again, starts afresh: what is there then is the new baseline (a disabled
    # configuration sends nothing, and what changed meanwhile is not sent late).
    where = ("bucket", "endpoint_url", "prefix", "suffix")
    moved = any(changes.get(field, current[field]) != current[field] for field in where)
    moved = moved or (changes.get("enabled") is True and not notification.enabled)
    _configure(
        notification,
        **(current | changes),
        check_qualifier="qualifier" in changes,
        check_endpoint=changes.get("endpoint_url", current["endpoint_url"]) != current["endpoint_url"],
    )
    if moved:
        notification.seen_objects.all().delete()
        notification.baseline_at = None
        notification.baseline_from = timezone.now()
        notification.generation += 1
    if notification.mode == BucketNotificationMode.POLL:
        notification.next_poll_at = timezone.now()
    notification.last_error = ""
    notification.save()
    return notification


def bucket_notification_delete(*, notification: BucketNotification) -> None:
    notification.delete()


def bucket_notification_state(*, notification: BucketNotification) -> str:
    """ENABLED, DISABLED or FAILING (its last poll or delivery failed: ``last_error``)."""
    if not notification.enabled:
        return "DISABLED"
    return "FAILING" if notification.last_error else "ENABLED"


def _configure(
    notification: BucketNotification,
    *,
    bucket: str,
    endpoint_url: str,
    region: str,
    access_key_id: str,
    secret_access_key: str | None,
    events: list[str],
    prefix: str,
    suffix: str,
    qualifier: str,
    enabled: bool,
    poll_interval_s: int,
    check_qualifier: bool = True,
    check_endpoint: bool = True,
) -> None:
    notification.bucket = _checked(bucket, BUCKET_PATTERN, "bucket", "3-63 lowercase letters, digits, '.' or '-'")
    # Checked when set, not on every change: a configuration whose endpoint no longer resolves can be disabled.
    notification.endpoint_url = _endpoint(endpoint_url) if check_endpoint else endpoint_url
    notification.region = _checked(region, REGION_PATTERN, "region", "a region name such as us-east-1")
    notification.access_key_id = _text(access_key_id, "access_key_id", 128)
    if secret_access_key is not None:
        notification.secret_access_key = secret_encrypt(_text(secret_access_key, "secret_access_key", 256))
    notification.events = _events(events, notification.mode)
    if notification.mode == BucketNotificationMode.POLL and not (
        notification.access_key_id and notification.secret_access_key
    ):
        # Never the platform's own credentials (boto3 would find them in the environment or the instance role).
        raise ServiceError(
            "A polled bucket needs access_key_id and secret_access_key.",
            details={"access_key_id": ["required for poll"]},
        )
    notification.prefix, notification.suffix = _text(prefix, "prefix", 1024), _text(suffix, "suffix", 1024)
    if qualifier and qualifier != LATEST and check_qualifier:
        qualifier_resolve(function=notification.function, qualifier=qualifier)  # 404 for an unknown alias
    notification.qualifier = "" if qualifier == LATEST else _text(qualifier, "qualifier", 128)
    if not isinstance(enabled, bool):
        raise ServiceError("enabled is true or false.", details={"enabled": ["a boolean"]})
    notification.enabled = enabled
    interval = poll_interval_s
    if isinstance(interval, bool) or not isinstance(interval, int):
        interval = -1
    if not POLL_INTERVAL_MIN_S <= interval <= POLL_INTERVAL_MAX_S:
        raise ServiceError(
            f"poll_interval_s is {POLL_INTERVAL_MIN_S}-{POLL_INTERVAL_MAX_S} seconds.",
            details={"poll_interval_s": ["out of range"]},
        )
    notification.poll_interval_s = interval


def _name(name: Any) -> str:
    return _checked(name, NAME_PATTERN, "name", "1-64 letters, digits, '-', '_' or '.'")


def _checked(value: Any, pattern: re.Pattern[str], field: str, rule: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ServiceError(f"{field}: {rule}.", details={field: [rule]})
    return value


def _text(value: Any, field: str, longest: int) -> str:
    if not isinstance(value, str) or len(value) > longest:
        raise ServiceError(f"{field} is text of at most {longest} characters.", details={field: ["invalid"]})
    return value


def _events(events: Any, mode: str) -> list[str]:
    if not isinstance(events, list) or not events or not all(isinstance(event, str) for event in events):
        raise ServiceError('events is a list such as ["s3:ObjectCreated:*"].', details={"events": ["required"]})
    types = POLL_EVENT_TYPES if mode == BucketNotificationMode.POLL else EVENT_TYPES
    unknown = sorted(set(events) - types)
    if unknown:
        known = ", ".join(sorted(types)) + (" (what listing a bucket can tell)" if types is POLL_EVENT_TYPES else "")
        raise ServiceError(f"Unknown event types {', '.join(unknown)}; known: {known}.", details={"events": unknown})
    return sorted(set(events))


def _endpoint(url: Any) -> str:
    """An http(s) URL of the store's S3 API (empty: AWS), which boto3 takes. The platform calls it, so never an
    address of its own network unless the operator allows it (SOURCE_ENDPOINT_ALLOW_PRIVATE, for an in-house
    store); checked again at each poll, as a name's addresses may change."""
    url = _text(url, "endpoint_url", 512).strip()
    if not url:
        return ""
    invalid = ServiceError(
        "endpoint_url is http(s)://host[:port][/path] of the store's S3 API.", details={"endpoint_url": ["invalid"]}
    )
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # a port out of range raises here
    except ValueError:
        raise invalid from None
    if parts.scheme not in ("http", "https") or not host or parts.username or parts.query or parts.fragment:
        raise invalid
    try:
        s3_endpoint_check(url)
    except ValueError:
        raise invalid from None
    try:
        _endpoint_refuse_private(url)
    except PrivateAddress as exc:
        raise ServiceError(
            f"endpoint_url: {exc}; see SOURCE_ENDPOINT_ALLOW_PRIVATE.", details={"endpoint_url": ["private address"]}
        ) from None
    return url


def _endpoint_refuse_private(url: str) -> None:
    if url and not settings.SOURCE_ENDPOINT_ALLOW_PRIVATE:
        host_refuse_private(urlsplit(url).hostname or "")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# ---- events -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectEvent:
    """One event of one object, whichever way it came in."""

    name: str  # ObjectCreated:Put, ObjectRemoved:Delete, …
    key: str  # decoded
    size: int
    etag: str
    sequencer: str
    time: datetime
    version_id: str = ""
    principal: str = ""
    source_ip: str = ""
    request_id: str = ""


def subscribed(events: Iterable[str], name: str) -> bool:
    """Whether a configuration's event types (``s3:ObjectCreated:*``, …) take the event ``name``."""
    kind = name.split(":", 1)[0]
    return f"s3:{name}" in events or f"s3:{kind}:*" in events


def s3_record(notification: BucketNotification, event: ObjectEvent) -> dict[str, Any]:
    """Lambda's S3 event record (docs/event-sources.md): the key URL-encoded with spaces as '+', as S3 sends it."""
    account = f"{notification.function.owner_id:012d}"
    obj: dict[str, Any] = {"key": quote_plus(event.key, safe="/"), "size": event.size, "eTag": event.etag}
    if event.version_id:
        obj["versionId"] = event.version_id
    obj["sequencer"] = event.sequencer
    if event.name.startswith(REMOVED):
        obj = {key: value for key, value in obj.items() if key not in ("size", "eTag")}
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": notification.region,
        "eventTime": event.time.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "eventName": event.name,
        "userIdentity": {"principalId": event.principal or f"AWS:{account}"},
        "requestParameters": {"sourceIPAddress": event.source_ip or "127.0.0.1"},
        "responseElements": {"x-amz-request-id": event.request_id or event.sequencer, "x-amz-id-2": event.sequencer},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": notification.name,
            "bucket": {
                "name": notification.bucket,
                "ownerIdentity": {"principalId": account},
                "arn": f"arn:aws:s3:::{notification.bucket}",
            },
            "object": obj,
        },
    }


def _matches(notification: BucketNotification, event: ObjectEvent) -> bool:
    return (
        subscribed(notification.events, event.name)
        and event.key.startswith(notification.prefix)
        and event.key.endswith(notification.suffix)
    )


class EventRefused(ServiceError):
    """The function cannot take an event now (its alias deleted, say): the event is kept for later (a store's
    retry, the next poll), and the configuration shows the reason."""

    status = 503
    type = "FunctionCannotTakeEvents"


def _deliver(notification: BucketNotification, event: ObjectEvent, *, dedupe: str) -> bool:
    """Accept the event's invocation (in the caller's transaction); False when it was delivered before.
    EventRefused when the function cannot take it."""
    function = notification.function
    record = s3_record(notification, event)
    key = "s3:" + hashlib.sha256(f"{notification.pk}\n{dedupe}".encode()).hexdigest()[:40]
    if Invocation.objects.filter(owner=function.owner, function=function, idempotency_key=key).exists():
        return False
    trigger = {"type": BUCKET_NOTIFICATION, "id": notification.pk, "name": notification.name, "key": event.key[:256]}
    try:
        with transaction.atomic():
            invocation_accept(
                owner=function.owner,
                function=function,
                qualifier=notification.qualifier,
                raw_payload=json.dumps({"Records": [record]}).encode(),
                invocation_type=InvocationType.ASYNC,
                trigger=trigger,
                idempotency_key=key,
            )
    except IdempotencyConflict:
        return False
    except ServiceError as exc:
        reason = f"{event.key}: {exc.message}"
        BucketNotification.objects.filter(pk=notification.pk).update(last_error=reason)
        raise EventRefused(f"The function cannot take this event now ({reason}); it is kept.") from None
    BucketNotification.objects.filter(pk=notification.pk).update(
        delivered=F("delivered") + 1, last_event_at=timezone.now()
    )
    return True


# ---- the webhook ------------------------------------------------------------------------------------------------


def bucket_webhook_receive(
    *, notification_id: int, token: str, read_body: Callable[[int], bytes], length: int | None
) -> dict[str, int]:
    """Take a store's posted records ({"Records": [...]}, S3's format, as MinIO and Ceph RGW send it): each one for
    this bucket, of a subscribed event type and key, is one invocation; one delivered before (the store retrying)
    is not sent again; one that cannot be read is counted as invalid. The token is checked before the body is
    read, and no more than WEBHOOK_BODY_MAX_BYTES of it is."""
    notification = _webhook_notification(notification_id, token)
    if length is not None and length > WEBHOOK_BODY_MAX_BYTES:
        raise RequestTooLarge(f"A delivery is at most {WEBHOOK_BODY_MAX_BYTES} bytes.")
    body = read_body(WEBHOOK_BODY_MAX_BYTES + 1)
    if len(body) > WEBHOOK_BODY_MAX_BYTES:
        raise RequestTooLarge(f"A delivery is at most {WEBHOOK_BODY_MAX_BYTES} bytes.")
    counts = {"accepted": 0, "ignored": 0, "invalid": 0, "duplicates": 0}
    # Record by record, each committed on its own: should one be refused (EventRefused, a 503), the store sends the
    # delivery again, and the records taken before are recognised then, not sent twice.
    for record in _records(body):
        try:
            event = _event_from_record(record, notification.bucket)
        except _Unreadable as exc:
            logger.info("Bucket notification %s: a record was not read (%s)", notification.pk, exc)
            counts["invalid"] += 1
            continue
        if event is None or not notification.enabled or not _matches(notification, event):
            counts["ignored"] += 1
            continue
        moment = event.time.isoformat()
        dedupe = f"{event.name}\n{event.key}\n{event.sequencer}\n{event.etag}\n{event.version_id}\n{moment}"
        counts["accepted" if _deliver(notification, event, dedupe=dedupe) else "duplicates"] += 1
    if counts["accepted"]:
        BucketNotification.objects.filter(pk=notification.pk, last_error__gt="").update(last_error="")
    return counts


def _webhook_notification(notification_id: int, token: str) -> BucketNotification:
    notification = (
        BucketNotification.objects.select_related("function__owner")
        .filter(pk=notification_id, mode=BucketNotificationMode.WEBHOOK)
        .first()
    )
    # The same answer for an unknown id and a wrong token: the ids are not secrets, the tokens are.
    if notification is None or not hmac.compare_digest(notification.token_sha256, _digest(token)):
        raise WebhookUnauthorized("Unknown webhook or wrong token (Authorization: Bearer <token>).")
    return notification


def _records(body: bytes) -> list[Any]:
    try:
        document = json_strict_loads(body)
    except (ValueError, RecursionError):
        raise ServiceError("The body is not JSON.", type="InvalidRequestContent") from None
    records = document.get("Records") if isinstance(document, dict) else None
    if not isinstance(records, list):
        raise ServiceError('The body is {"Records": [...]}, S3\'s event format.', type="InvalidRequestContent")
    if len(records) > WEBHOOK_RECORDS_MAX:
        raise ServiceError(f"At most {WEBHOOK_RECORDS_MAX} records per delivery.", type="InvalidRequestContent")
    return records


class _Unreadable(ValueError):
    """A record that says it is an object event of the bucket and cannot be read as one."""


def _event_from_record(record: Any, bucket: str) -> ObjectEvent | None:
    """The event an S3-format record tells; None when it is not an object event of this bucket."""
    try:
        s3 = record["s3"]
        obj = s3["object"]
        if s3["bucket"]["name"] != bucket:
            return None
        name = str(record["eventName"]).removeprefix("s3:")
        raw_key = obj["key"]
    except (KeyError, TypeError):
        return None
    try:
        when = datetime.fromisoformat(str(record.get("eventTime") or timezone.now().isoformat()))
        when = when if when.tzinfo else when.replace(tzinfo=UTC)
        when.astimezone(UTC)  # a time UTC cannot hold (year 1 an hour east) overflows here, not later
        key = unquote_plus(str(raw_key), errors="strict")
        if "\x00" in key or not _is_text(key):
            raise _Unreadable("its key has a NUL or is not text")
        return ObjectEvent(
            name=name,
            key=key,
            size=int(obj.get("size") or 0),
            etag=str(obj.get("eTag") or ""),
            sequencer=str(obj.get("sequencer") or ""),
            version_id=str(obj.get("versionId") or ""),
            time=when,
            principal=str((record.get("userIdentity") or {}).get("principalId") or ""),
            source_ip=str((record.get("requestParameters") or {}).get("sourceIPAddress") or ""),
            request_id=str((record.get("responseElements") or {}).get("x-amz-request-id") or ""),
        )
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:
        raise _Unreadable(str(exc)[:200]) from None


def _is_text(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


# ---- the poller -------------------------------------------------------------------------------------------------


class _Moved(Exception):
    """The configuration changed where it looks (or was enabled again) since this poll began."""


def bucket_poll(*, notification: BucketNotification, now: datetime | None = None) -> int:
    """List the bucket once and send an event for each object version not seen before, and for each object gone
    (when subscribed). The first listing is the baseline: an object last modified before ``baseline_from`` is
    recorded, not sent. A failure is the configuration's last error, the next poll a poll interval later; nothing
    escapes, so that one configuration never stops a host's others."""
    now = now or timezone.now()
    try:
        sent = _poll(notification, now)
    except EventRefused as exc:
        _polled(notification, now, error=exc.message)  # that version stays unseen: a later poll sends it
        return 0
    except (StoreError, PrivateAddress) as exc:
        logger.warning("Polling s3://%s for %s failed: %s", notification.bucket, notification.name, exc)
        _polled(notification, now, error=STORE_ERROR + str(exc)[:1000])
        return 0
    except _Moved:
        return 0  # the next poll starts from the new place
    except DATABASE_ERRORS:
        raise
    except Exception as exc:
        logger.exception("Polling s3://%s for %s failed", notification.bucket, notification.name)
        _polled(notification, now, error=STORE_ERROR + f"{type(exc).__name__}: {str(exc)[:500]}")
        return 0
    _polled(notification, now, error="")
    return sent


STORE_ERROR = "store: "  # the mark of a last error the store gave


def _polled(notification: BucketNotification, now: datetime, *, error: str) -> None:
    fields: dict[str, Any] = {
        "last_poll_at": now,
        "next_poll_at": now + timedelta(seconds=notification.poll_interval_s),
    }
    # A whole poll without an error clears the last one: the store answered, and every event was taken.
    fields["last_error"] = error
    if not error and notification.baseline_at is None:
        fields["baseline_at"] = now
    BucketNotification.objects.filter(pk=notification.pk, generation=notification.generation).update(**fields)


def _poll(notification: BucketNotification, now: datetime) -> int:
    if not (notification.access_key_id and notification.secret_access_key):
        raise StoreError("no access key: a polled bucket needs one")  # never the platform's own credentials
    _endpoint_refuse_private(notification.endpoint_url)  # again: a name's addresses may have changed
    client = s3_client(
        endpoint_url=notification.endpoint_url,
        region=notification.region,
        access_key_id=notification.access_key_id,
        secret_access_key=secret_decrypt(notification.secret_access_key),
        timeout_s=STORE_TIMEOUT_S,
    )
    baseline = notification.baseline_at is None
    listed: set[str] = set()
    sent = 0
    for contents in s3_objects(client, bucket=notification.bucket, prefix=notification.prefix):
        page = [item for item in contents if str(item["Key"]).endswith(notification.suffix)]
        listed.update(str(item["Key"]) for item in page)
        sent += _page_seen(notification, page, baseline)
    if not baseline:
        sent += _removals(notification, listed, listed_from=now)
    return sent


def _fence(notification: BucketNotification) -> None:
    """In the caller's transaction: _Moved unless the configuration is still of this poll's generation (the
    no-op update locks its row, so an update that moves it waits for this transaction, or this one for it)."""
    rows = BucketNotification.objects.filter(pk=notification.pk, generation=notification.generation)
    if not rows.update(generation=F("generation")):
        raise _Moved


def _page_seen(notification: BucketNotification, page: list[dict[str, Any]], baseline: bool) -> int:
    """Record one page's objects; each new version is an ObjectCreated:Put event, in the transaction that records
    it, so that a version is sent exactly once however many pollers race or crash."""
    keys = [str(item["Key"]) for item in page]
    known = {item.key: item for item in BucketObject.objects.filter(notification=notification, key__in=keys)}
    cutoff = notification.baseline_from.replace(microsecond=0)  # to the second, as some stores keep LastModified
    sent = 0
    for item in page:
        key, etag, modified = str(item["Key"]), str(item.get("ETag", "")), item["LastModified"]
        before = known.get(key)
        if before is not None and before.etag == etag and before.last_modified == modified:
            continue
        if "\x00" in key:
            continue  # a key no event can carry (nor the database hold)
        # The version's row and its event commit together; a refused event undoes the row (sent by a later poll).
        with transaction.atomic():
            _fence(notification)
            if not _record_version(notification, before, key, etag, modified, int(item.get("Size", 0))):
                continue  # another poller recorded it (and sent its event)
            if baseline and modified < cutoff:
                continue  # there before the configuration: S3 would not have told either
            event = ObjectEvent(
                name=f"{CREATED}:Put",
                key=key,
                size=int(item.get("Size", 0)),
                etag=etag.strip('"'),
                sequencer=_sequencer(modified),
                time=modified,
            )
            if _matches(notification, event):
                sent += _deliver(notification, event, dedupe=f"{key}\n{etag}\n{modified.isoformat()}")
    return sent


def _record_version(
    notification: BucketNotification, before: BucketObject | None, key: str, etag: str, modified: datetime, size: int
) -> bool:
    version = {"etag": etag, "last_modified": modified, "size": size, "recorded_at": timezone.now()}
    if before is None:
        try:
            with transaction.atomic():
                BucketObject.objects.create(notification=notification, key=key, **version)
        except IntegrityError:
            return False
        return True
    seen = BucketObject.objects.filter(pk=before.pk, etag=before.etag, last_modified=before.last_modified)
    return bool(seen.update(**version))


def _removals(notification: BucketNotification, listed: set[str], *, listed_from: datetime) -> int:
    """Each object known before this listing began and not in it is one ObjectRemoved:Delete event (when
    subscribed); one recorded since (by another poller) is not judged by this listing."""
    sent = 0
    known = BucketObject.objects.filter(notification=notification, recorded_at__lt=listed_from)
    for pk, key, etag, modified in known.values_list("pk", "key", "etag", "last_modified").iterator():
        if key in listed:
            continue
        with transaction.atomic():
            _fence(notification)
            if not BucketObject.objects.filter(pk=pk, etag=etag, last_modified=modified).delete()[0]:
                continue
            now = timezone.now()
            event = ObjectEvent(name=f"{REMOVED}:Delete", key=key, size=0, etag="", sequencer=_sequencer(now), time=now)
            if _matches(notification, event):
                sent += _deliver(notification, event, dedupe=f"removed\n{key}\n{etag}\n{modified.isoformat()}")
    return sent


def _sequencer(moment: datetime) -> str:
    """S3's sequencer orders the events of one key: a hexadecimal count that grows with time."""
    return f"{int(moment.timestamp() * 1_000_000):016X}"


# ---- leases and the polling loop --------------------------------------------------------------------------------


def bucket_pollers_claim(*, host: str, now: datetime | None = None) -> list[BucketNotification]:
    """The poll configurations this host holds (``functions_app.leases``): renewed, and free ones taken."""
    polled = BucketNotification.objects.filter(mode=BucketNotificationMode.POLL, enabled=True)
    held = leases_hold(rows=polled, host=host, now=now or timezone.now(), limit=LEASES_PER_HOST)
    return list(polled.filter(pk__in=[notification.pk for notification in held]).select_related("function__owner"))


def bucket_pollers_release(*, host: str) -> None:
    leases_release(rows=BucketNotification.objects.all(), host=host)


class BucketPollers:
    """A host's pollers: every round renews and takes leases (so a slow poll never loses its lease) and hands each
    due configuration that is not being polled already to a thread of its own (so a slow store holds one
    thread, never the host's other buckets, nor a second poll of itself)."""

    def __init__(self, host: str, threads: int = POLL_THREADS) -> None:
        self.host = host
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="bucket-poll")
        self.polling: set[int] = set()
        self.lock = threading.Lock()

    def round(self, now: datetime | None = None) -> None:
        now = now or timezone.now()
        for notification in bucket_pollers_claim(host=self.host, now=now):
            due = notification.next_poll_at is None or notification.next_poll_at <= now
            with self.lock:
                if not due or notification.pk in self.polling:
                    continue
                self.polling.add(notification.pk)
            self.pool.submit(self._poll, notification)

    def _poll(self, notification: BucketNotification) -> None:
        try:
            close_old_connections()
            bucket_poll(notification=notification)
        except DATABASE_ERRORS as exc:
            logger.warning("Polling s3://%s failed (%r); the next round tries again", notification.bucket, exc)
        finally:
            with self.lock:
                self.polling.discard(notification.pk)
            close_old_connections()

    def stop(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def bucket_pollers_serve(stop: threading.Event, host: str) -> None:
    """The polling loop of an executor host (a thread of the worker): a round a second; leases given up on a clean
    stop, so another host takes over at once."""
    pollers = BucketPollers(host)
    while not stop.is_set():
        close_old_connections()
        try:
            pollers.round()
        except DATABASE_ERRORS as exc:
            logger.warning("Polling buckets failed (%r); trying again in a second", exc)
            database_unreachable(exc)
        except Exception:
            logger.exception("Polling buckets failed; trying again in a second")
        stop.wait(POLL_LOOP_S)
    pollers.stop()
    with contextlib.suppress(*DATABASE_ERRORS):  # else the leases run out by themselves
        bucket_pollers_release(host=host)
