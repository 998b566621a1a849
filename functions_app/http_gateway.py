"""Serving HTTP APIs: a request finds its stage and route, passes the route's throttle and authorizer, and runs
the route's function with the route's payload format, through the one invoke service (docs/http-endpoints.md)."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from console.exceptions import ServiceError
from functions_app.authorizers import Verdict, identity_values, jwt_authorize, lambda_authorize
from functions_app.concurrency import rate_admit
from functions_app.cors import cors_decorate, cors_preflight
from functions_app.http_apis import DEFAULT_STAGE, Definition, Route, Stage, definition_validate
from functions_app.http_events import HttpAnswer, HttpRequest, HttpTarget, answer_v1, answer_v2, event_v1, event_v2
from functions_app.http_triggers import (
    PendingCall,
    TriggerMeter,
    answer_logged,
    message_answer,
    refused_answer,
    request_for_function,
    request_refusal,
)
from functions_app.models import Function, HttpApi, Invocation
from metrics_app.models import UNMATCHED_ROUTE

API_PREFIX = "/http/"
HTTP_API = "http-api"
# Compiled definitions by API, kept while the API's revision is the same (a save gives it a new one).
_compiled: dict[int, tuple[Any, Definition]] = {}


def http_api_find(*, api_id: str) -> HttpApi | None:
    if len(api_id) != 10 or not api_id.isalnum():
        return None
    return HttpApi.objects.select_related("owner").filter(api_id=api_id).first()


def _definition(api: HttpApi) -> Definition:
    cached = _compiled.get(api.pk)
    if cached is None or cached[0] != api.revision_id:
        cached = (api.revision_id, definition_validate(api.definition))
        _compiled[api.pk] = cached
    return cached[1]


def stage_and_path(definition: Definition, raw_path: str) -> tuple[Stage, str] | None:
    """The stage a path names in its first segment (then the rest is the route's path), else $default's."""
    first, _, rest = raw_path.lstrip("/").partition("/")
    if first and first in definition.stages and first != DEFAULT_STAGE:
        return definition.stages[first], "/" + rest
    if DEFAULT_STAGE in definition.stages:
        return definition.stages[DEFAULT_STAGE], raw_path
    return None


def http_api_plan(*, api: HttpApi, request: HttpRequest, domain_name: str) -> HttpAnswer | PendingCall:
    """What a request to an HTTP API needs (``request.raw_path`` is what follows the API's address: the stage,
    if not $default, then the route's path): an answer at once, or a call of the route's function."""
    started = time.perf_counter()
    label = API_PREFIX + api.api_id
    definition = _definition(api)
    # Filled in by _routed once a route matches, so that what answers from then on counts against the route.
    meter = TriggerMeter(HTTP_API, api.api_id, api.owner_id, route=UNMATCHED_ROUTE)

    def finish(answer: HttpAnswer, invocation: Invocation | None) -> HttpAnswer:
        decorated = cors_decorate(definition.cors, request, answer)
        return answer_logged(label, meter, request, decorated, started, invocation)

    preflight = cors_preflight(definition.cors, request)
    if preflight is not None:
        return answer_logged(label, meter, request, preflight, started, None)
    try:
        planned = _routed(api, definition, request, domain_name, meter, finish)
    except ServiceError as exc:
        planned = refused_answer(exc)
    return finish(planned, None) if isinstance(planned, HttpAnswer) else planned


def _routed(
    api: HttpApi,
    definition: Definition,
    request: HttpRequest,
    domain_name: str,
    meter: TriggerMeter,
    finish: Callable[[HttpAnswer, Invocation | None], HttpAnswer],
) -> HttpAnswer | PendingCall:
    refusal = request_refusal(request)
    if refusal is not None:
        return refusal
    staged = stage_and_path(definition, request.raw_path)
    if staged is None:
        return message_answer(404, "Not Found")
    stage, path = staged
    segments = [unquote(part) for part in path[1:].split("/")] if path != "/" else []
    matched = definition.match(request.method, segments)
    if matched is None:
        return _not_found(definition)
    route, parameters = matched
    # Looked up before the throttle and the authorizer so that their refusals count against the route's function.
    function = Function.objects.filter(owner_id=api.owner_id, name=route.function).first()
    meter.route, meter.function_id = route.route_key, function.pk if function else None
    throttle = route.throttle or stage.throttle
    bucket = f"{api.api_id}:{stage.name}:{route.route_key}"
    if throttle and not rate_admit(key=bucket, rate=throttle.rate, burst=throttle.burst):
        return message_answer(429, "Too Many Requests")
    target = HttpTarget(
        api_id=api.api_id,
        domain_name=domain_name,
        domain_prefix=api.api_id,
        request_id=str(uuid.uuid4()),
        account_id=f"{api.owner_id:012d}",
        route_key=route.route_key,
        stage=stage.name,
        path_parameters=parameters,
        stage_variables=stage.variables,
    )
    for_function = request_for_function(request, strip_authorization=False)
    verdict = _authorize(api, definition, route, stage, for_function, target)
    if verdict.status:
        headers = [("WWW-Authenticate", 'Bearer error="invalid_token"')] if verdict.status == 401 else []
        return message_answer(verdict.status, verdict.message, headers)
    target = _with_authorizer(target, route, definition, verdict)
    is_v1 = route.payload_format == "1.0"
    event = event_v1(for_function, target, resource=route.resource) if is_v1 else event_v2(for_function, target)
    if function is None:  # a route to a function deleted since: API Gateway's answer to a broken integration
        return message_answer(500, "Internal Server Error")
    trigger = {
        "type": HTTP_API,
        "id": api.api_id,
        "stage": stage.name,
        "route": route.route_key,
        "method": request.method,
        "path": request.raw_path,
    }
    return PendingCall(
        owner=api.owner,
        function=function,
        qualifier=route.qualifier,
        event=event,
        trigger=trigger,
        finish=finish,
        to_answer=answer_v1 if is_v1 else answer_v2,
        wait_s=route.timeout_ms / 1000,
    )


def _not_found(definition: Definition) -> HttpAnswer:
    custom = definition.not_found
    if not custom:
        return message_answer(404, "Not Found")
    return HttpAnswer(custom["status"], [("Content-Type", custom["content_type"])], custom["body"].encode())


def _authorize(
    api: HttpApi, definition: Definition, route: Route, stage: Stage, request: HttpRequest, target: HttpTarget
) -> Verdict:
    if not route.authorizer:
        return Verdict(0)
    authorizer = definition.authorizers[route.authorizer]
    if authorizer.type == "JWT":
        header = authorizer.identity_sources[0].removeprefix("$request.header.").lower()
        return jwt_authorize(authorizer=authorizer, route=route, token_header=request.header(header) or "")
    identity = identity_values(authorizer, request, stage.variables, route.route_key)
    if identity is None:
        return Verdict(401, message="Unauthorized")
    event = event_v2(request, target)
    event["routeArn"] = (
        f"arn:aws:execute-api:{target.domain_name}:{target.account_id}:{api.api_id}/{stage.name}/{route.route_key}"
    )
    return lambda_authorize(owner=api.owner, api_id=api.api_id, authorizer=authorizer, identity=identity, event=event)


def _with_authorizer(target: HttpTarget, route: Route, definition: Definition, verdict: Verdict) -> HttpTarget:
    """The authorizer's word in the event: 2.0 has ``lambda`` (a Lambda authorizer's context) or ``jwt``
    (claims and scopes); 1.0 has the context itself, or ``claims`` and ``scopes``."""
    if not route.authorizer:
        return target
    is_jwt = definition.authorizers[route.authorizer].type == "JWT"
    if route.payload_format == "1.0":
        authorizer: dict[str, Any] = (
            {"claims": verdict.context["claims"], "scopes": verdict.scopes} if is_jwt else dict(verdict.context)
        )
    elif is_jwt:
        authorizer = {"jwt": {"claims": verdict.context["claims"], "scopes": verdict.scopes}}
    else:
        authorizer = {"lambda": dict(verdict.context)}
    return dataclasses.replace(target, authorizer=authorizer)
