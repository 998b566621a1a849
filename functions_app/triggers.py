"""Every trigger of a function in one list (its function URLs, the HTTP API routes to it, its schedules, its bucket
notifications, its event source mappings): the read behind /api/v1/functions/{name}/triggers/. Each item has a
``type``, a ``state`` and what that type shows."""

from __future__ import annotations

from typing import Any

from functions_app import bucket_notifications, event_sources, http_apis, http_triggers, schedules, stream_sources
from functions_app.models import EventSourceKind, Function

ENABLED = "ENABLED"


def function_triggers(*, function: Function, scheme: str, host: str) -> list[dict[str, Any]]:
    return [
        *_function_urls(function, scheme, host),
        *_api_routes(function, scheme, host),
        *_schedules(function),
        *_bucket_notifications(function),
        *_stream_mappings(function),
    ]


def _function_urls(function: Function, scheme: str, host: str) -> list[dict[str, Any]]:
    return [
        {
            "type": http_triggers.FUNCTION_URL,
            "id": url.url_id,
            "qualifier": url.qualifier,
            "state": ENABLED,
            "url": http_triggers.function_url_address(url=url, scheme=scheme, host=host),
            "auth_type": url.auth_type,
            "invoke_mode": url.invoke_mode,
        }
        for url in http_triggers.function_url_list(function=function)
    ]


def _api_routes(function: Function, scheme: str, host: str) -> list[dict[str, Any]]:
    return [
        {
            "type": "http-api-route",
            "id": api.api_id,
            "api": api.name,
            "route_key": route["route_key"],
            "qualifier": route.get("qualifier") or "$LATEST",
            "state": ENABLED,
            "urls": [address for _, address in http_apis.http_api_stages(api=api, scheme=scheme, host=host)],
        }
        for api, route in http_apis.http_api_routes_to(function=function)
    ]


def _schedules(function: Function) -> list[dict[str, Any]]:
    return [
        {
            "type": schedules.SCHEDULE,
            "id": schedule.name,
            "qualifier": schedule.qualifier or "$LATEST",
            "state": schedules.schedule_state(schedule=schedule),
            "expression": schedule.expression,
            "timezone": schedule.timezone,
            "next_fire_at": schedule.next_fire_at if schedule.enabled else None,
            "last_fired_at": schedule.last_fired_at,
            "last_error": schedule.last_error,
        }
        for schedule in schedules.schedule_list(function=function)
    ]


def _bucket_notifications(function: Function) -> list[dict[str, Any]]:
    return [
        {
            "type": bucket_notifications.BUCKET_NOTIFICATION,
            "id": notification.name,
            "qualifier": notification.qualifier or "$LATEST",
            "state": bucket_notifications.bucket_notification_state(notification=notification),
            "mode": notification.mode,
            "bucket": notification.bucket,
            "events": notification.events,
            "last_poll_at": notification.last_poll_at,
            "last_event_at": notification.last_event_at,
            "last_error": notification.last_error,
        }
        for notification in bucket_notifications.bucket_notification_list(function=function)
    ]


def _stream_mappings(function: Function) -> list[dict[str, Any]]:
    return [
        {
            "type": stream_sources.EVENT_SOURCE_MAPPING,
            "id": str(mapping.uuid),
            "qualifier": mapping.qualifier or "$LATEST",
            "state": stream_sources.mapping_state(mapping=mapping),
            "kind": mapping.kind,
            ("queue_url" if mapping.kind == EventSourceKind.SQS else "stream"): mapping.source,
            "lag": event_sources.mapping_lag(mapping=mapping),
            "last_batch_at": mapping.last_batch_at,
            "last_error": mapping.last_error,
        }
        for mapping in stream_sources.mapping_list(function=function)
    ]
