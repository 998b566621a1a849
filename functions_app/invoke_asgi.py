"""The native synchronous invoke (`POST /api/v1/functions/{name}/invoke/` with an API key) on the event loop
(console/asgi.py): checked and accepted on a database thread, then awaited without a thread of its own, answered
exactly as the REST view answers (functions_app/invocations_api.py). Anything else about the request — another
invocation type, no key or a wrong one, an unknown function, a body without a length — is left to that view."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from django.contrib.auth.models import User
from django.db import DatabaseError
from django.http import HttpResponse
from redis.exceptions import RedisError
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from console.asgi_io import Receive, Send, body_read, response_send
from console.auth import api_key_owner
from console.db_threads import in_db_thread
from console.exceptions import ServiceError, api_exception_handler
from console.timing import server_timing_header, timing_collect
from functions_app.accept import SYNC_PAYLOAD_MAX_BYTES
from functions_app.invocations_api import invoke_response
from functions_app.invoke import function_invoke_async
from functions_app.models import Function

INVOKE_PATH = re.compile(r"^/api/v1/functions/(?P<name>[A-Za-z0-9_-]{1,64})/invoke/?$")


@dataclass(frozen=True)
class _Call:
    owner: User
    function: Function
    qualifier: str
    with_log: bool


async def invoke_serve(scope: dict[str, Any], receive: Receive, send: Send) -> bool:
    """Serve the request if it is a synchronous invoke this path takes (True), else leave it (False)."""
    path = INVOKE_PATH.match(scope["path"])
    headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
    length = headers.get("content-length", "")
    if (
        path is None
        or scope["method"] != "POST"
        or headers.get("x-invocation-type", "RequestResponse") != "RequestResponse"
        or headers.get("idempotency-key")
        or not length.isdigit()
        or int(length) > SYNC_PAYLOAD_MAX_BYTES
    ):
        return False
    query = {name: values[-1] for name, values in parse_qs(scope.get("query_string", b"").decode("latin-1")).items()}
    if query.get("log", "none") not in ("none", "tail"):
        return False
    started = time.perf_counter()
    with timing_collect() as phases:
        call = await in_db_thread(lambda: _call_of(headers.get("authorization", ""), path["name"], query))
        if call is None:
            return False
        body = await body_read(receive, SYNC_PAYLOAD_MAX_BYTES) or b""  # its length was checked above
        try:
            answer = await function_invoke_async(
                owner=call.owner,
                function=call.function,
                qualifier=call.qualifier,
                raw_payload=body,
                db=in_db_thread,
            )
            assert answer.outcome is not None  # a sync call always has one
            response = invoke_response(answer.outcome, with_log=call.with_log)
        except (ServiceError, DatabaseError, RedisError) as exc:  # as the REST view's exception handler answers
            response = _error_response(exc)
        timing = server_timing_header(phases, (time.perf_counter() - started) * 1000)
    await _send(send, _rendered(response), timing)
    return True


def _call_of(authorization: str, name: str, query: dict[str, str]) -> _Call | None:
    """The caller and the function, or None when the REST view should answer (it has the words for it)."""
    owner = api_key_owner(authorization)
    if owner is None:
        return None
    function = Function.objects.select_related("code").filter(owner=owner, name=name).first()
    if function is None:
        return None
    return _Call(owner, function, query.get("qualifier", ""), query.get("log") == "tail")


def _error_response(exc: Exception) -> Response:
    """What the REST view's exception handler answers (the error format, 503 for an outage); anything it does not
    answer is raised on."""
    response = api_exception_handler(exc, {})
    if response is None:
        raise exc
    return response


def _rendered(response: HttpResponse) -> HttpResponse:
    if isinstance(response, Response):
        response.accepted_renderer = JSONRenderer()
        response.accepted_media_type = "application/json"
        response.renderer_context = {}  # type: ignore[attr-defined]  # DRF sets it on the responses it renders
        response.render()
    return response


async def _send(send: Send, response: HttpResponse, timing: str) -> None:
    headers = [*response.items(), ("Server-Timing", timing)]
    await response_send(send, response.status_code, headers, response.content)
