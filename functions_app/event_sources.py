"""Event source mappings of either kind (a Redis Stream's, ``stream_sources``; an SQS queue's, ``queue_sources``):
what the API, the console and the triggers list call, whichever kind a mapping is."""

from __future__ import annotations

from typing import Any

from console.exceptions import ServiceError
from functions_app import queue_sources, stream_sources
from functions_app.models import EventSourceKind, EventSourceMapping, Function


def mapping_create(*, function: Function, stream: str = "", queue_url: str = "", **fields: Any) -> EventSourceMapping:
    """A mapping of the owner's stream ``stream``, or of the SQS queue at ``queue_url`` (one of the two)."""
    if bool(stream) == bool(queue_url):
        raise ServiceError(
            "A mapping reads a stream (stream) or a queue (queue_url): one of them.", details={"stream": ["one of"]}
        )
    if queue_url:
        return queue_sources.queue_mapping_create(function=function, queue_url=queue_url, **fields)
    queue_only = sorted(set(fields) & {"access_key_id", "secret_access_key", "region", "max_concurrency"})
    if queue_only:
        raise ServiceError(
            f"{', '.join(queue_only)}: for a queue only.", details={name: ["queue only"] for name in queue_only}
        )
    return stream_sources.mapping_create(function=function, stream=stream, **fields)


def mapping_update(*, mapping: EventSourceMapping, **fields: Any) -> EventSourceMapping:
    if mapping.kind == EventSourceKind.SQS:
        return queue_sources.queue_mapping_update(mapping=mapping, **fields)
    return stream_sources.mapping_update(mapping=mapping, **fields)


def mapping_lag(*, mapping: EventSourceMapping) -> int | None:
    """Records of a stream, or messages of a queue, waiting, as the poller last counted them (None before it has):
    never counted on a request's path."""
    return mapping.lag
